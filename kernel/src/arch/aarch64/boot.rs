//! Boot glue: assembles `boot/entry.S` and the exception vectors with the constants they share
//! with Rust, and defines the register values the early code programs.

use crate::mm::layout;

use super::smp::SecondaryBoot;

/// MAIR_EL1 attribute index of Normal memory, Inner/Outer Write-Back RA/WA.
pub const MAIR_NORMAL_IDX: u64 = 0;
/// MAIR_EL1 attribute index of Normal memory, Inner/Outer Non-cacheable.
pub const MAIR_NORMAL_NC_IDX: u64 = 1;
/// MAIR_EL1 attribute index of Device-nGnRE memory.
pub const MAIR_DEVICE_IDX: u64 = 2;
/// MAIR_EL1 (Arm ARM D19.2 "MAIR_EL1"): Attr0 = 0xff (Normal WB RA/WA), Attr1 = 0x44
/// (Normal NC), Attr2 = 0x04 (Device-nGnRE).
pub const MAIR: u64 = 0xff | (0x44 << 8) | (0x04 << 16);

/// TCR_EL1 without IPS/AS (entry.S fills those from ID_AA64MMFR0_EL1). Arm ARM D19.2 "TCR_EL1":
/// 48-bit VAs in both halves (T0SZ = T1SZ = 16), 4 KiB granules (TG0 = 0b00, TG1 = 0b10),
/// table walks Inner Shareable, Inner/Outer Write-Back Write-Allocate cacheable.
pub const TCR: u64 = 16 // T0SZ
    | (0b01 << 8) // IRGN0
    | (0b01 << 10) // ORGN0
    | (0b11 << 12) // SH0
    | (16 << 16) // T1SZ
    | (0b01 << 24) // IRGN1
    | (0b01 << 26) // ORGN1
    | (0b11 << 28) // SH1
    | (0b10 << 30); // TG1 = 4 KiB

/// TCR_EL1.EPD0: no walks through TTBR0 (no address space is active on this CPU).
pub const TCR_EPD0: u64 = 1 << 7;

/// SCTLR_EL1 bits that are RES1 in Armv8.0 (and harmless "on" settings later: EOS, TSCXT,
/// EIS, SPAN, nTLSMD, LSMAOE). Arm ARM D19.2 "SCTLR_EL1".
pub const SCTLR_MMU_OFF: u64 =
    (1 << 29) | (1 << 28) | (1 << 23) | (1 << 22) | (1 << 20) | (1 << 11);
/// SCTLR_EL1 with the MMU (M), data cache (C), instruction cache (I) and stack alignment
/// checks (SA, SA0) on.
pub const SCTLR_MMU_ON: u64 = SCTLR_MMU_OFF | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 12);
/// SCTLR_EL1.WXN: writable memory is never executable (turned on with the final tables).
pub const SCTLR_WXN: u64 = 1 << 19;

core::arch::global_asm!(
    include_str!("../../../../boot/entry.S"),
    MAIR_NORMAL_IDX = const MAIR_NORMAL_IDX,
    MAIR_DEVICE_IDX = const MAIR_DEVICE_IDX,
    MAIR = const MAIR,
    TCR = const TCR,
    SCTLR_MMU_OFF = const SCTLR_MMU_OFF,
    SCTLR_MMU_ON = const SCTLR_MMU_ON,
    KERNEL_VBASE = const layout::KERNEL_VBASE,
    LINEAR_BASE = const layout::LINEAR_BASE,
    UART_PA_PI = const layout::UART_PA_PI,
    UART_PA_VIRT = const layout::UART_PA_VIRT,
    MAX_CPUS = const layout::MAX_CPUS,
    CPU_STACK_STRIDE = const layout::CPU_STACK_STRIDE,
    MAIN_STACK_TOP = const layout::MAIN_STACK_TOP,
    EXC_STACK_TOP = const layout::EXC_STACK_TOP,
    SB_TTBR0 = const core::mem::offset_of!(SecondaryBoot, ttbr0),
    SB_TTBR1 = const core::mem::offset_of!(SecondaryBoot, ttbr1),
    SB_MPIDR = const core::mem::offset_of!(SecondaryBoot, mpidr),
    SB_SIZE = const core::mem::size_of::<SecondaryBoot>(),
);

core::arch::global_asm!(include_str!("vectors.S"));

// The kernel's `memcpy`, in place of compiler_builtins' (a weak symbol) that moves a word per
// iteration: struct moves on the unmap path alone cost ~900 instructions with it.
core::arch::global_asm!(include_str!("memcpy.S"));

/// Linker-script and `entry.S` symbols. Only their addresses are meaningful.
pub mod symbols {
    extern "C" {
        pub static __image_start: u8;
        pub static __image_end: u8;
        pub static __text_start: u8;
        pub static __text_end: u8;
        pub static __rodata_start: u8;
        pub static __rodata_end: u8;
        pub static __data_start: u8;
        pub static __data_end: u8;
        pub static __stacks_start: u8;
        pub static __stacks_end: u8;
        pub static __boot_tables_start: u8;
        pub static __boot_tables_end: u8;
        pub static secondary_entry: u8;
        pub static idmap_run_ops: u8;
    }

    /// The link address of a symbol.
    #[macro_export]
    macro_rules! symbol_addr {
        ($sym:ident) => {
            core::ptr::addr_of!($crate::arch::aarch64::boot::symbols::$sym) as u64
        };
    }
}
