//! The `alloc` fault-injection point: a frame allocation that fails on request, per CPU. The
//! address spaces' allocator asks [`alloc_should_fail`] before each allocation; the soak and
//! the `faults` suite arm it ([`crate::workload::fault`] has the plan).
#![forbid(unsafe_code)]

use crate::mm::layout::MAX_CPUS;
// Core atomics, like `trace`: these are plain counters outside the loom-modelled core, and
// their statics must be const-constructible under `--cfg loom` too.
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Frame-allocation failures armed per CPU: the n-th allocation through an allocator that asks
/// [`alloc_should_fail`] fails, once. Per CPU, so that a fault armed for one `mmap` never hits
/// another CPU's.
static ALLOC_COUNTDOWN: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// Allocation failures delivered (all CPUs).
static ALLOC_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Makes the `nth` (1-based) next checked allocation on `cpu` fail. `nth == 0` disarms.
pub fn arm_alloc_failure(cpu: usize, nth: u32) {
    if let Some(c) = ALLOC_COUNTDOWN.get(cpu) {
        c.store(nth, Ordering::Relaxed);
    }
}

/// Disarms `cpu`; true if the armed failure had not been delivered yet.
pub fn disarm_alloc_failure(cpu: usize) -> bool {
    ALLOC_COUNTDOWN
        .get(cpu)
        .is_some_and(|c| c.swap(0, Ordering::Relaxed) != 0)
}

/// Called by an allocator on `cpu` before it allocates: true if this allocation must fail.
pub fn alloc_should_fail(cpu: usize) -> bool {
    let Some(c) = ALLOC_COUNTDOWN.get(cpu) else {
        return false;
    };
    // Only the owning CPU decrements its slot, so load-then-store is enough.
    match c.load(Ordering::Relaxed) {
        0 => false,
        1 => {
            c.store(0, Ordering::Relaxed);
            ALLOC_FAILURES.fetch_add(1, Ordering::Relaxed);
            true
        }
        n => {
            c.store(n - 1, Ordering::Relaxed);
            false
        }
    }
}

/// Allocation failures delivered so far.
pub fn alloc_failures() -> u64 {
    ALLOC_FAILURES.load(Ordering::Relaxed)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn alloc_failure_fires_once_at_the_nth_allocation_of_its_cpu() {
        let cpu = MAX_CPUS - 1;
        let before = alloc_failures();
        arm_alloc_failure(cpu, 3);
        assert!(!alloc_should_fail(cpu - 1), "another CPU is not affected");
        assert!(!alloc_should_fail(cpu));
        assert!(!alloc_should_fail(cpu));
        assert!(alloc_should_fail(cpu));
        assert!(!alloc_should_fail(cpu));
        assert_eq!(alloc_failures(), before + 1);
        assert!(!disarm_alloc_failure(cpu));
        arm_alloc_failure(cpu, 2);
        assert!(disarm_alloc_failure(cpu));
        assert!(!alloc_should_fail(cpu) && !alloc_should_fail(cpu));
        assert!(!alloc_should_fail(MAX_CPUS), "out-of-range CPUs never fail");
    }
}
