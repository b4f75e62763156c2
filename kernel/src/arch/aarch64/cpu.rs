//! CPU identity, barriers and the small instructions everything else is built on.

use core::arch::asm;

use aarch64_cpu::registers::{Readable, MPIDR_EL1, TPIDR_EL1};

/// This CPU's logical number (0 = the boot CPU), kept in TPIDR_EL1 by `boot/entry.S`.
#[inline]
pub fn cpu_id() -> usize {
    TPIDR_EL1.get() as usize
}

/// MPIDR_EL1 affinity fields (Aff3..Aff0), the value device trees use in `/cpus/cpu@N/reg`.
pub fn mpidr() -> u64 {
    MPIDR_EL1.get() & 0xff_00ff_ffff
}

/// Waits for an event (SEV from another CPU, or any interrupt/event).
#[inline]
pub fn wfe() {
    // SAFETY: WFE only pauses this CPU until an event; no memory or register effects.
    unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
}

/// `YIELD`: a hint that another thread of this core may run (QEMU's round-robin TCG switches
/// to the next vCPU).
#[inline]
pub fn yield_hint() {
    // SAFETY: YIELD is a hint with no architectural effect.
    unsafe { asm!("yield", options(nomem, nostack, preserves_flags)) };
}

/// Signals an event to every CPU (wakes their WFE).
#[inline]
pub fn sev() {
    // SAFETY: SEV only sets the event register of all PEs.
    unsafe { asm!("sev", options(nomem, nostack, preserves_flags)) };
}

/// `DSB ISH`: all earlier memory accesses complete for the inner shareable domain.
#[inline]
pub fn dsb_ish() {
    // SAFETY: a barrier has no effect other than ordering.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
}

/// `DSB ISHST`: earlier stores complete (e.g. page-table writes before a TLBI).
#[inline]
pub fn dsb_ishst() {
    // SAFETY: a barrier has no effect other than ordering.
    unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
}

/// `DSB SY`: full-system barrier (e.g. before device DMA observes memory).
#[inline]
pub fn dsb_sy() {
    // SAFETY: a barrier has no effect other than ordering.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// `ISB`: the instruction stream sees all earlier context changes.
#[inline]
pub fn isb() {
    // SAFETY: a barrier has no effect other than ordering.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// Cleans the data cache lines covering `[addr, addr + len)` to the point of coherency, so
/// that a CPU running with its MMU off (a secondary being started) sees what we wrote.
pub fn clean_dcache_to_poc(addr: u64, len: usize) {
    let line = dcache_line_size();
    let mut p = addr & !(line - 1);
    while p < addr + len as u64 {
        // SAFETY: DC CVAC on a mapped address only writes back a cache line.
        unsafe { asm!("dc cvac, {}", in(reg) p, options(nostack, preserves_flags)) };
        p += line;
    }
    dsb_sy();
}

/// The smallest data cache line size (CTR_EL0.DminLine).
pub fn dcache_line_size() -> u64 {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    4 << ((ctr >> 16) & 0xf)
}

/// Masks IRQs/FIQs/SErrors/debug on this CPU (the kernel polls; nothing is interrupt driven).
pub fn mask_interrupts() {
    // SAFETY: only changes PSTATE.DAIF of this CPU.
    unsafe {
        asm!(
            "msr daifset, #0xf",
            options(nomem, nostack, preserves_flags)
        )
    };
}

/// Stops this CPU for good.
pub fn halt() -> ! {
    mask_interrupts();
    loop {
        wfe();
    }
}

/// FEAT_PAN, Privileged Access Never (Arm ARM D19.2 "ID_AA64MMFR1_EL1", field PAN [23:20]).
pub fn has_pan() -> bool {
    use aarch64_cpu::registers::ID_AA64MMFR1_EL1;
    ID_AA64MMFR1_EL1.read(ID_AA64MMFR1_EL1::PAN) != 0
}

/// PSTATE.PAN through its system register (op0=3 op1=0 CRn=4 CRm=2 op2=3, bit 22; Arm ARM
/// C5.2 "PAN"), by generic name so the assembler needs no `+pan`. Only with [`has_pan`].
const PAN_BIT: u64 = 1 << 22;

/// Sets or clears PSTATE.PAN on this CPU. The caller checks [`has_pan`]: without FEAT_PAN the
/// register does not exist and the access is UNDEFINED.
pub fn set_pan(on: bool) {
    let v = if on { PAN_BIT } else { 0 };
    // SAFETY: writes PSTATE.PAN only (callers establish FEAT_PAN); no memory is touched.
    unsafe { asm!("msr s3_0_c4_c2_3, {}", "isb", in(reg) v, options(nostack, preserves_flags)) };
}

/// Whether PSTATE.PAN is set on this CPU (false without FEAT_PAN).
pub fn pan_enabled() -> bool {
    if !has_pan() {
        return false;
    }
    let v: u64;
    // SAFETY: reads PSTATE.PAN (FEAT_PAN checked above).
    unsafe { asm!("mrs {}, s3_0_c4_c2_3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v & PAN_BIT != 0
}
