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
/// that a CPU running with its MMU off (a secondary being started) or a device that does not
/// snoop the caches sees what we wrote.
pub fn clean_dcache_to_poc(addr: u64, len: usize) {
    for_each_line(addr, len, |p| {
        // SAFETY: DC CVAC on a mapped address only writes back a cache line.
        unsafe { asm!("dc cvac, {}", in(reg) p, options(nostack, preserves_flags)) };
    });
    dsb_sy();
}

/// Cleans and invalidates the data cache lines covering `[addr, addr + len)` to the point of
/// coherency: memory holds the CPU's latest bytes and no line stays cached.
pub fn clean_invalidate_dcache_to_poc(addr: u64, len: usize) {
    for_each_line(addr, len, |p| {
        // SAFETY: DC CIVAC on a mapped address writes back and drops one cache line.
        unsafe { asm!("dc civac, {}", in(reg) p, options(nostack, preserves_flags)) };
    });
    dsb_sy();
}

/// Invalidates the data cache lines covering `[addr, addr + len)` to the point of coherency,
/// so that the CPU's next loads see what a device wrote to memory. A line only partly inside
/// the range is cleaned and invalidated instead: dropping it would lose the CPU's bytes next
/// to the range (Linux's arm64 `dcache_inval_poc` does the same).
pub fn invalidate_dcache_to_poc(addr: u64, len: usize) {
    let line = dcache_line_size();
    let end = addr + len as u64;
    for_each_line(addr, len, |p| {
        if p < addr || p + line > end {
            // SAFETY: as in `clean_invalidate_dcache_to_poc`.
            unsafe { asm!("dc civac, {}", in(reg) p, options(nostack, preserves_flags)) };
        } else {
            // SAFETY: DC IVAC drops one line of a range the caller hands to the device; the
            // line lies wholly inside it, so no byte of anyone else's is lost.
            unsafe { asm!("dc ivac, {}", in(reg) p, options(nostack, preserves_flags)) };
        }
    });
    dsb_sy();
}

/// Calls `f` with the address of every data cache line (CTR_EL0.DminLine granule) that covers
/// part of `[addr, addr + len)`.
fn for_each_line(addr: u64, len: usize, mut f: impl FnMut(u64)) {
    let line = dcache_line_size();
    let mut p = addr & !(line - 1);
    while p < addr + len as u64 {
        f(p);
        p += line;
    }
}

/// Makes `[addr, addr + len)` coherent for instruction fetch: cleans the data cache to the point
/// of unification (`DC CVAU`), then invalidates the instruction cache (`IC IVAU`), each step
/// skipped when CTR_EL0 says the hardware keeps it coherent (IDC, bit 28; DIC, bit 29; Arm ARM
/// D19.2 "CTR_EL0"). The order (clean, DSB, invalidate, DSB, ISB) is the one the Arm ARM
/// gives for making stored instructions visible to instruction fetch, as Linux's
/// `caches_clean_inval_pou`. A Cortex-A72 has neither bit.
pub fn sync_icache(addr: u64, len: usize) {
    let ctr = ctr_el0();
    let end = addr + len as u64;
    if ctr & (1 << 28) == 0 {
        let line = dcache_line_size();
        let mut p = addr & !(line - 1);
        while p < end {
            // SAFETY: DC CVAU on a mapped address only writes back a cache line.
            unsafe { asm!("dc cvau, {}", in(reg) p, options(nostack, preserves_flags)) };
            p += line;
        }
    }
    dsb_ish();
    if ctr & (1 << 29) == 0 {
        let line = 4 << (ctr & 0xf); // IminLine
        let mut p = addr & !(line - 1);
        while p < end {
            // SAFETY: IC IVAU only drops instruction cache lines.
            unsafe { asm!("ic ivau, {}", in(reg) p, options(nostack, preserves_flags)) };
            p += line;
        }
    }
    dsb_ish();
    isb();
}

fn ctr_el0() -> u64 {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    ctr
}

/// The smallest data cache line size (CTR_EL0.DminLine).
pub fn dcache_line_size() -> u64 {
    4 << ((ctr_el0() >> 16) & 0xf)
}

/// Masks IRQs/FIQs/SErrors/debug on this CPU. The kernel keeps them masked: IRQs are taken
/// only inside the windows of [`super::irq`].
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
