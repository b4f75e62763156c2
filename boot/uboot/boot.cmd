# Shootdown from U-Boot's own storage boot (distro boot runs this boot.scr from the first
# partition that holds one): load the arm64 Image beside it and start it with `booti`, handing
# over the device tree U-Boot itself runs on (`fdtcontroladdr`: QEMU's, or the one the Pi's
# firmware prepared). `make uboot-script BOOTARGS=...` replaces @BOOTARGS@.
setenv bootargs "@BOOTARGS@"
load ${devtype} ${devnum}:${distro_bootpart} ${kernel_addr_r} shootdown.img
booti ${kernel_addr_r} - ${fdtcontroladdr}
