//! What differs between the boards we run on (QEMU `virt`, QEMU `raspi4b`, a real Raspberry Pi
//! 4), found from the device tree the firmware or QEMU hands over. The device tree is the
//! source of truth: no board constant is used once it has been read (the fallback UART of
//! `boot/entry.S` exists only to report a missing or corrupt tree).

pub mod bootargs;
pub mod dt;

pub use bootargs::BootArgs;
pub use dt::{BoardInfo, BoardKind, DtError};
