//! Work reaches every online CPU and each knows who it is.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::arch::aarch64::{cpu_id, smp};
use crate::{kassert, kassert_eq, ktest};

ktest!(smp, work_runs_on_every_cpu, |_t| {
    let seen = AtomicU64::new(0);
    let runs = AtomicUsize::new(0);
    smp::on_each_cpu(&|cpu| {
        assert_eq!(cpu, cpu_id());
        seen.fetch_or(1 << cpu, Ordering::Relaxed);
        runs.fetch_add(1, Ordering::Relaxed);
    });
    let n = smp::online_count();
    kassert_eq!(runs.load(Ordering::Relaxed), n);
    kassert_eq!(seen.load(Ordering::Relaxed), (1u64 << n) - 1);
    Ok(())
});

ktest!(smp, cpus_run_concurrently, |_t| {
    // Every CPU waits until all have arrived: only possible if they really run at once.
    let arrived = AtomicUsize::new(0);
    let n = smp::online_count();
    smp::on_each_cpu(&|_cpu| {
        arrived.fetch_add(1, Ordering::AcqRel);
        let deadline = crate::arch::aarch64::timer::Deadline::after_us(2_000_000);
        while arrived.load(Ordering::Acquire) < n && !deadline.expired() {
            core::hint::spin_loop();
        }
    });
    kassert!(
        arrived.load(Ordering::Relaxed) == n,
        "only {} of {n} CPUs met",
        arrived.load(Ordering::Relaxed)
    );
    Ok(())
});
