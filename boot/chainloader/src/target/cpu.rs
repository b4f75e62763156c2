//! The generic timer and cache maintenance, with the MMU off.

use core::arch::asm;

/// CNTFRQ_EL0 as the firmware left it; if it is 0 (no firmware set it), the BCM2711's 54 MHz
/// crystal, which the Pi 4 stub programs (`raspberrypi/tools` `armstubs/armstub8.S`).
fn counter_hz() -> u64 {
    let hz: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects and is allowed at EL1 and EL2.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) hz, options(nomem, nostack)) };
    if hz == 0 {
        54_000_000
    } else {
        hz
    }
}

fn ticks() -> u64 {
    let t: u64;
    // SAFETY: reading CNTPCT_EL0 has no side effects (the Pi stub and QEMU allow it below EL3).
    unsafe { asm!("isb", "mrs {}, cntpct_el0", out(reg) t, options(nomem, nostack)) };
    t
}

/// A point in time some milliseconds from now.
#[derive(Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    pub fn after_ms(ms: u32) -> Self {
        Deadline(ticks().saturating_add(counter_hz() / 1000 * u64::from(ms)))
    }

    pub fn expired(&self) -> bool {
        ticks() >= self.0
    }
}

/// Busy-waits about `us` microseconds on the counter (no memory accesses).
pub fn delay_us(us: u32) {
    let end = ticks().saturating_add(counter_hz() / 1_000_000 * u64::from(us));
    while ticks() < end {
        core::hint::spin_loop();
    }
}

/// Smallest data cache line (CTR_EL0.DminLine, Arm ARM D19.2 "CTR_EL0": log2 of words).
fn dcache_line() -> u64 {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    4 << ((ctr >> 16) & 0xf)
}

/// DC CIVAC over [base, base + len) to the point of coherency (with the MMU off, VA = PA).
pub fn clean_invalidate_dcache(base: u64, len: u64) {
    let line = dcache_line();
    let mut a = base & !(line - 1);
    let end = base.saturating_add(len);
    while a < end {
        // SAFETY: cache maintenance by address does not change memory contents seen by
        // software; the range is RAM the device tree describes.
        unsafe { asm!("dc civac, {}", in(reg) a, options(nostack)) };
        a += line;
    }
    // SAFETY: a barrier.
    unsafe { asm!("dsb sy", options(nostack)) };
}
