//! Breaker checks for the CMD_SYNC wait's lazy deadline, the inline command batch and the
//! one-hold invalidation counters (commit 105a86a): a CMD_SYNC that never completes times out
//! for every waiter, its own or a shared one; batches of exactly the inline room and one past
//! it reach the SMMU whole; a failed invalidation is counted once, not as a slow one.

#[path = "smmu_support.rs"]
mod support;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use shootdown::iommu::backend::model::{Knobs, ModelConfig};
use shootdown::iommu::driver::planner::Strategy;
use shootdown::iommu::driver::{InvalidationReport, SmmuConfig, SmmuError};
use shootdown::iommu::fake::LeafAttrs;
use shootdown::iommu::spec::command::CommandKind;
use shootdown::iommu::spec::event::AccessKind;
use shootdown::mm::{VirtAddr, PAGE_SIZE};
use support::*;

const PAGE: u64 = PAGE_SIZE as u64;
const WAITERS: u64 = 4;

/// Runs `f` on a thread and fails the test if it has not returned within a generous wall-clock
/// bound: a wait that can never time out shows up as this failure, not as a hung test run.
fn returns_in_time<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what}: still waiting after 60 s - a wait without deadline"))
}

/// From now on the SMMU completes no CMD_SYNC.
fn stall_syncs(w: &World<'_>) {
    w.model.set_knobs(Knobs {
        stall_sync: true,
        ..Knobs::default()
    });
}

/// [`WAITERS`] CPUs each invalidate their own page at once.
fn invalidate_concurrently(w: &World<'_>) -> Vec<Result<InvalidationReport, SmmuError>> {
    let (smmu, ctx) = (w.smmu, w.ctx);
    thread::scope(|s| {
        let waiters: Vec<_> = (0..WAITERS)
            .map(|cpu| {
                s.spawn(move || {
                    let va = VA + cpu * 0x10_0000;
                    smmu.invalidate_range(ctx, VirtAddr(va), VirtAddr(va + PAGE))
                })
            })
            .collect();
        waiters.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// Several CPUs invalidate at once while the SMMU never completes a CMD_SYNC: whoever waits
/// for another CPU's CMD_SYNC must fail with a timeout too (the next test makes sure a shared
/// wait happened).
#[test]
fn every_waiter_on_a_stalled_sync_times_out_shared_or_not() {
    let (errors, shared) = returns_in_time("stalled shared sync", || {
        with_default_world(|w| {
            for cpu in 0..WAITERS {
                let va = VA + cpu * 0x10_0000;
                w.map_pages(va, 1, LeafAttrs::RW, cpu as u8);
                w.dma().touch(VirtAddr(va), AccessKind::Read).unwrap();
                w.tables.unmap(VirtAddr(va)).unwrap();
            }
            stall_syncs(w);
            let errors = invalidate_concurrently(w);
            let stats = w.smmu.stats();
            w.model.set_knobs(Knobs::default());
            (errors, stats.syncs_shared)
        })
    });
    for (cpu, e) in errors.iter().enumerate() {
        assert!(
            matches!(e, Err(SmmuError::SyncTimeout { .. })),
            "CPU {cpu}: {e:?}"
        );
    }
    // Sharing depends on the threads overlapping; report it rather than guess a count.
    eprintln!("waiters on another CPU's CMD_SYNC: {shared}");
}

/// The same, until some CPU did wait on another CPU's CMD_SYNC (rounds with a stalled SMMU,
/// at most 50): that shared wait, which sets no deadline of the CPU that wrote the CMD_SYNC,
/// must time out as well.
#[test]
fn a_shared_wait_on_a_stalled_sync_times_out() {
    let shared = returns_in_time("forced shared wait", || {
        with_default_world(|w| {
            for cpu in 0..WAITERS {
                w.map_pages(VA + cpu * 0x10_0000, 1, LeafAttrs::RW, cpu as u8);
            }
            stall_syncs(w);
            for _round in 0..50 {
                let results = invalidate_concurrently(w);
                for r in &results {
                    assert!(matches!(r, Err(SmmuError::SyncTimeout { .. })), "{r:?}");
                }
                if w.smmu.stats().syncs_shared > 0 {
                    break;
                }
            }
            let shared = w.smmu.stats().syncs_shared;
            w.model.set_knobs(Knobs::default());
            shared
        })
    });
    assert!(
        shared > 0,
        "no waiter ever shared a CMD_SYNC: the test did not test sharing"
    );
}

fn per_page_world<R>(f: impl FnOnce(&World<'_>) -> R) -> R {
    let cfg = SmmuConfig {
        strategy: Strategy::PerPage,
        batch: 64,
        ..smmu_config()
    };
    with_world(ModelConfig::default(), cfg, f)
}

/// `pages` per-page TLBIs and their CMD_SYNC in one PROD write: every page's translation is
/// gone afterwards, and the SMMU saw exactly those commands.
fn one_batch_of(pages: u64) {
    per_page_world(|w| {
        w.map_pages(VA, pages, LeafAttrs::RW, 0);
        for p in 0..pages {
            w.dma()
                .touch(VirtAddr(VA + p * PAGE), AccessKind::Read)
                .unwrap();
        }
        for p in 0..pages {
            w.tables.unmap(VirtAddr(VA + p * PAGE)).unwrap();
        }
        let (model_before, driver_before) = (w.model.stats(), w.smmu.stats());
        let report = w.invalidate(VA, pages);
        let (model_after, driver_after) = (w.model.stats(), w.smmu.stats());
        assert_eq!(report.commands.get(CommandKind::TlbiNhVa), pages);
        assert_eq!(report.commands.get(CommandKind::Sync), 1);
        assert_eq!(
            model_after.commands.get(CommandKind::TlbiNhVa)
                - model_before.commands.get(CommandKind::TlbiNhVa),
            pages,
            "the SMMU consumed every TLBI of the batch"
        );
        assert_eq!(
            driver_after.prod_writes - driver_before.prod_writes,
            1,
            "one PROD write"
        );
        assert!(w.model.stale_translations().is_empty());
        for p in 0..pages {
            assert!(w
                .dma()
                .touch(VirtAddr(VA + p * PAGE), AccessKind::Read)
                .is_err());
        }
    });
}

#[test]
fn a_batch_of_exactly_the_inline_room_reaches_the_smmu_whole() {
    one_batch_of(3); // 3 TLBIs + CMD_SYNC = 4 commands
}

#[test]
fn a_batch_one_past_the_inline_room_reaches_the_smmu_whole() {
    one_batch_of(4); // 4 TLBIs + CMD_SYNC = 5 commands
}

#[test]
fn a_batch_far_past_the_inline_room_reaches_the_smmu_whole() {
    one_batch_of(17);
}

/// A timed-out invalidation is counted once by its kind and never as the slowest one; the
/// next successful invalidation is counted once more.
#[test]
fn a_timed_out_invalidation_is_counted_once_and_not_as_slow() {
    returns_in_time("stalled sync, counters", || {
        per_page_world(|w| {
            w.map_pages(VA, 1, LeafAttrs::RW, 0);
            w.dma().touch(VirtAddr(VA), AccessKind::Read).unwrap();
            w.tables.unmap(VirtAddr(VA)).unwrap();
            stall_syncs(w);
            let before = w.smmu.stats();
            let err = w.try_invalidate(VA, 1).unwrap_err();
            assert!(matches!(err, SmmuError::SyncTimeout { .. }), "{err}");
            let after = w.smmu.stats();
            assert_eq!(
                after.invalidations_per_page - before.invalidations_per_page,
                1
            );
            assert_eq!(after.sync_timeouts - before.sync_timeouts, 1);
            assert_eq!(
                after.slowest_invalidation_ns,
                before.slowest_invalidation_ns
            );
            w.model.set_knobs(Knobs::default());
            w.invalidate(VA, 1);
            let again = w.smmu.stats();
            assert_eq!(
                again.invalidations_per_page - after.invalidations_per_page,
                1
            );
            assert!(w.model.stale_translations().is_empty());
        })
    });
}
