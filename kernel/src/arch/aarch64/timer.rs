//! Time from the architected generic timer's physical counter (CNTPCT_EL0 / CNTFRQ_EL0).

use aarch64_cpu::registers::{Readable, CNTFRQ_EL0, CNTPCT_EL0};

use super::cpu::isb;

/// Counter ticks per second (set by firmware or QEMU; never 0 on our boards).
pub fn frequency() -> u64 {
    CNTFRQ_EL0.get().max(1)
}

/// The current counter value.
pub fn ticks() -> u64 {
    // The ISB keeps the read from being speculated before earlier instructions.
    isb();
    CNTPCT_EL0.get()
}

/// Nanoseconds since the counter started (boot, in practice).
pub fn now_ns() -> u64 {
    let f = frequency() as u128;
    (ticks() as u128 * 1_000_000_000 / f) as u64
}

/// A point in time after which something gives up.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(u64);

impl Deadline {
    /// `us` microseconds from now.
    pub fn after_us(us: u64) -> Self {
        Self(ticks().saturating_add(frequency().saturating_mul(us) / 1_000_000))
    }

    /// True once the deadline has passed.
    pub fn expired(&self) -> bool {
        ticks() >= self.0
    }
}

/// Busy-waits for `us` microseconds.
pub fn delay_us(us: u64) {
    let d = Deadline::after_us(us);
    while !d.expired() {
        core::hint::spin_loop();
    }
}
