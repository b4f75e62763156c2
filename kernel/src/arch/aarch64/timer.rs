//! Time from the architected generic timer's physical counter (CNTPCT_EL0 / CNTFRQ_EL0).

use aarch64_cpu::registers::{ReadWriteable, Readable, CNTFRQ_EL0, CNTKCTL_EL1, CNTPCT_EL0};

use core::num::NonZeroU32;

use super::cpu::{isb, wfe};

/// The counter bit whose 0-to-1 flips make the event stream's events: one every 2^20 ticks,
/// about 20 ms at the Pi 4's 54 MHz and QEMU's 62.5 MHz.
const EVENT_STREAM_BIT: u64 = 19;

/// Counter ticks per second (set by firmware or QEMU; never 0 on our boards).
pub fn frequency() -> u64 {
    u64::from(frequency_hz().get())
}

/// CNTFRQ_EL0.ClockFreq: its low 32 bits (the rest is RES0), 1 if firmware left it 0.
fn frequency_hz() -> NonZeroU32 {
    NonZeroU32::new(CNTFRQ_EL0.get() as u32).unwrap_or(NonZeroU32::MIN)
}

/// The current counter value.
pub fn ticks() -> u64 {
    // The ISB keeps the read from being speculated before earlier instructions.
    isb();
    CNTPCT_EL0.get()
}

/// Nanoseconds since the counter started (boot, in practice).
pub fn now_ns() -> u64 {
    // Without a 128-bit division: the SMMU driver reads the clock twice per invalidation.
    crate::time::ticks_to_ns(ticks(), frequency_hz())
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

/// Waits until `deadline` asleep: in WFE, woken by the timer's event stream (CNTKCTL_EL1.EVNTEN,
/// EVNTI), so that a CPU with its interrupts masked does not spin. Leaves the stream on (its
/// events only end WFE waits early, which every waiter tolerates).
pub fn sleep_until(deadline: Deadline) {
    CNTKCTL_EL1.modify(CNTKCTL_EL1::EVNTI.val(EVENT_STREAM_BIT) + CNTKCTL_EL1::EVNTEN::SET);
    isb();
    while !deadline.expired() {
        wfe();
    }
}
