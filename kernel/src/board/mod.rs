//! What differs between the boards we run on (QEMU `virt`, QEMU `raspi4b`, a real Raspberry Pi 4),
//! found from the device tree the firmware or QEMU hands over.
