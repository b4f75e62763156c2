//! The kernel's virtual memory layout (upper half, TTBR1) and boot-time sizes.
//!
//! ```text
//! 0xffff_0000_0000_0000  LINEAR_BASE   all of RAM, PA + LINEAR_BASE, RW, never executable
//! 0xffff_fc00_0000_0000  MMIO_BASE     device registers, mapped on demand, Device-nGnRE
//! 0xffff_ff80_0000_0000  KERNEL_VBASE  the kernel image (text RX, rodata R, data RW),
//!                                      per-CPU stacks with unmapped guard pages
//! 0xffff_ff80_3fe0_0000  FIXMAP_UART   the fallback UART used before the device tree is read
//! ```
//!
//! The lower half (TTBR0) belongs to address spaces ([`crate::mm`]'s `AddressSpace`), which the
//! CPU and, through the SMMU, devices share.

/// Where the kernel image is linked (also in `linker.ld`).
pub const KERNEL_VBASE: u64 = 0xffff_ff80_0000_0000;
/// Base of the linear map: physical address `pa` is at `LINEAR_BASE + pa`.
pub const LINEAR_BASE: u64 = 0xffff_0000_0000_0000;
/// Size of the linear map window (covers any physical address below 64 TiB).
pub const LINEAR_SIZE: u64 = 1 << 46;
/// Base of the window where device MMIO is mapped.
pub const MMIO_BASE: u64 = 0xffff_fc00_0000_0000;
/// Size of the MMIO window.
pub const MMIO_SIZE: u64 = 1 << 40;
/// The fallback UART page mapped by `boot/entry.S` (last 2 MiB slot of the kernel's first GiB).
pub const FIXMAP_UART_VA: u64 = KERNEL_VBASE + 511 * (2 << 20);

/// Most CPUs the kernel brings up (more in the device tree are reported and left off).
pub const MAX_CPUS: usize = 8;
/// Main (SP_EL0) stack per CPU.
pub const MAIN_STACK_SIZE: usize = 128 * 1024;
/// Exception (SP_EL1) stack per CPU.
pub const EXC_STACK_SIZE: usize = 32 * 1024;
/// One CPU's stack block: guard, main stack, guard, exception stack (see `boot/entry.S`).
pub const CPU_STACK_STRIDE: usize = 4096 + MAIN_STACK_SIZE + 4096 + EXC_STACK_SIZE;
/// Offset of the main stack's top within a CPU's stack block.
pub const MAIN_STACK_TOP: usize = 4096 + MAIN_STACK_SIZE;
/// Offset of the exception stack's top within a CPU's stack block.
pub const EXC_STACK_TOP: usize = CPU_STACK_STRIDE;

/// Fallback UART of the Raspberry Pi 4 (BCM2711 PL011 UART0; QEMU `hw/arm/bcm2838_peripherals`).
pub const UART_PA_PI: u64 = 0xfe20_1000;
/// Fallback UART of QEMU `virt` (`VIRT_UART` in QEMU `hw/arm/virt.c`).
pub const UART_PA_VIRT: u64 = 0x0900_0000;

/// The linear-map address of a physical address.
pub const fn phys_to_virt(pa: u64) -> u64 {
    LINEAR_BASE + pa
}

/// The physical address behind a linear-map address, if it is one.
pub const fn linear_to_phys(va: u64) -> Option<u64> {
    if va >= LINEAR_BASE && va < LINEAR_BASE + LINEAR_SIZE {
        Some(va - LINEAR_BASE)
    } else {
        None
    }
}
