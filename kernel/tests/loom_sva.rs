//! Loom models of the SVA release protocol (`iommu::sva`, issue 20): release, an unmap's
//! invalidation and the last unbind in every interleaving, against an SMMU reduced to what the
//! protocol is about (is the page cached in the IOTLB, is the stream attached, did anyone abort
//! the whole SMMU).
//!
//! ```text
//! LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" cargo test -p shootdown --release --test loom_sva
//! ```
//!
//! The safety model has a `*_fails_*` twin with release marking the context released before
//! its quiesce (the defect issue 20 found), which loom must catch.
#![cfg(loom)]

use std::cell::Cell;

use loom::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use loom::thread;
use shootdown::iommu::spec::command::CommandCounts;
use shootdown::iommu::driver::{
    ContextId, ContextParams, EventDrain, InvalidationReport, SmmuError,
};
use shootdown::iommu::spec::event::EventRecord;
use shootdown::iommu::driver::planner::PlanKind;
use shootdown::iommu::sva::{self, ContextState, Sva, SvaDebugKnobs, SvaDomain, SvaIommu};
use shootdown::mm::notifier::MmCore;
use shootdown::mm::{PhysAddr, VirtAddr};
use shootdown::sync::{set_model_cpu, Srcu};

const VA: u64 = 0x1000;
const PAGE: u64 = 0x1000;
const CTX: ContextId = ContextId::from_index(1);

/// The SMMU as far as the protocol can tell: one context, one stream, one page.
struct Smmu {
    context: AtomicBool,
    attached: AtomicBool,
    /// The CD lets the SMMU walk the page tables (not quiesced).
    walks: AtomicBool,
    /// The IOTLB holds the page's translation.
    cached: AtomicBool,
    aborts: AtomicU32,
}

impl Smmu {
    fn new() -> Self {
        Self {
            context: AtomicBool::new(false),
            attached: AtomicBool::new(false),
            walks: AtomicBool::new(false),
            cached: AtomicBool::new(false),
            aborts: AtomicU32::new(0),
        }
    }

    fn context(&self) -> Result<(), SmmuError> {
        match self.context.load(Ordering::SeqCst) {
            true => Ok(()),
            false => Err(SmmuError::NoSuchContext(CTX)),
        }
    }

    /// The device can still reach the page through a cached translation.
    fn device_can_use_the_page(&self) -> bool {
        self.cached.load(Ordering::SeqCst)
            && self.attached.load(Ordering::SeqCst)
            && self.aborts.load(Ordering::SeqCst) == 0
    }
}

impl SvaIommu for Smmu {
    fn create_context(&self, _: ContextParams) -> Result<ContextId, SmmuError> {
        self.context.store(true, Ordering::SeqCst);
        self.walks.store(true, Ordering::SeqCst);
        Ok(CTX)
    }
    fn destroy_context(&self, _: ContextId) -> Result<(), SmmuError> {
        self.context()?;
        // TLBI by ASID and CMD_SYNC, then the context is gone.
        self.cached.store(false, Ordering::SeqCst);
        self.context.store(false, Ordering::SeqCst);
        Ok(())
    }
    fn context_asid(&self, _: ContextId) -> Result<u16, SmmuError> {
        self.context().map(|()| 1)
    }
    fn attach(&self, _: u32, _: ContextId) -> Result<(), SmmuError> {
        self.context()?;
        self.attached.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn detach(&self, _: u32) -> Result<(), SmmuError> {
        self.attached.store(false, Ordering::SeqCst);
        Ok(())
    }
    fn invalidate_range(
        &self,
        _: ContextId,
        _: VirtAddr,
        _: VirtAddr,
    ) -> Result<InvalidationReport, SmmuError> {
        self.context()?;
        self.cached.store(false, Ordering::SeqCst);
        Ok(InvalidationReport {
            plan: PlanKind::Nothing,
            commands: CommandCounts::default(),
            recovered: None,
            skipped: false,
        })
    }
    fn quiesce(&self, _: ContextId) -> Result<(), SmmuError> {
        self.context()?;
        // Walks off, then TLBI by ASID and CMD_SYNC.
        self.walks.store(false, Ordering::SeqCst);
        self.cached.store(false, Ordering::SeqCst);
        Ok(())
    }
    fn abort_all_traffic(&self) -> Result<(), SmmuError> {
        self.aborts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn drain_events(&self, _: &mut dyn FnMut(&EventRecord)) -> Result<EventDrain, SmmuError> {
        // This SMMU faults no transaction: its queue stays empty.
        Ok(EventDrain::default())
    }
}

std::thread_local! {
    /// The SVA layer of the current model iteration (loom's atomics live only inside one).
    /// Per OS thread: the tests run in parallel, and loom runs a model's threads on its test's
    /// OS thread.
    static CURRENT: Cell<Option<&'static Sva>> = const { Cell::new(None) };
}

struct Domain;

impl SvaDomain for Domain {
    fn sva() -> Option<&'static Sva> {
        CURRENT.with(Cell::get)
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

/// A fresh SMMU and SVA layer for one iteration.
fn fresh(knobs: SvaDebugKnobs) -> &'static Smmu {
    let smmu: &'static Smmu = Box::leak(Box::new(Smmu::new()));
    let sva: &'static Sva = Box::leak(Box::new(Sva::new(smmu, "loom")));
    sva.set_debug_knobs(knobs);
    CURRENT.with(|c| c.set(Some(sva)));
    smmu
}

/// CPU 0 unmaps the page (no user reference held, as the OOM reaper) and then frees its frame;
/// CPU 1 drops the last user; CPU 2 unbinds the stream. When the unmap returns, the device must
/// not reach the page through the IOTLB, and no benign race may abort the whole SMMU.
fn release_vs_unmap_vs_unbind(knobs: SvaDebugKnobs) {
    model(move || {
        let smmu = fresh(knobs);
        let mm = MmCore::with_grace_domain(Box::leak(Box::new(Srcu::new())));
        let bond = sva::bind::<Domain>(1, &mm, PhysAddr(0x8000), 0xff).unwrap();
        // The device used the page before the race.
        smmu.cached.store(true, Ordering::SeqCst);
        let release = {
            let mm = mm.clone();
            thread::spawn(move || {
                set_model_cpu(1);
                assert!(mm.mmput());
            })
        };
        let unbind = thread::spawn(move || {
            set_model_cpu(2);
            bond.unbind().unwrap();
        });
        // CPU 0: the leaf is already cleared; the TLB flush path's call, then the free.
        mm.arch_invalidate_secondary_tlbs(VA, VA + PAGE).unwrap();
        assert!(
            !smmu.device_can_use_the_page(),
            "the unmap returned while the IOTLB still held the page"
        );
        release.join().unwrap();
        unbind.join().unwrap();
        assert_eq!(smmu.aborts.load(Ordering::SeqCst), 0, "an SMMU-wide abort");
        let stats = Domain::sva().unwrap().stats();
        assert_eq!(stats.failures, 0);
    });
}

#[test]
fn release_unmap_and_unbind_leave_nothing_cached_and_abort_nothing() {
    release_vs_unmap_vs_unbind(SvaDebugKnobs::default());
}

#[test]
#[should_panic(expected = "the unmap returned while the IOTLB still held the page")]
fn release_model_fails_when_the_context_is_marked_released_before_its_quiesce() {
    release_vs_unmap_vs_unbind(SvaDebugKnobs {
        release_marks_before_quiesce: true,
        ..SvaDebugKnobs::default()
    });
}

/// The first bind races the last `mmput`: once both returned, no context may translate.
#[test]
fn a_bind_racing_the_last_user_leaves_no_translating_context() {
    model(|| {
        let smmu = fresh(SvaDebugKnobs::default());
        let mm = MmCore::with_grace_domain(Box::leak(Box::new(Srcu::new())));
        let release = {
            let mm = mm.clone();
            thread::spawn(move || {
                set_model_cpu(1);
                assert!(mm.mmput());
            })
        };
        let bound = sva::bind::<Domain>(1, &mm, PhysAddr(0x8000), 0xff);
        release.join().unwrap();
        let translating = smmu.context.load(Ordering::SeqCst)
            && smmu.attached.load(Ordering::SeqCst)
            && smmu.walks.load(Ordering::SeqCst);
        assert!(!translating, "a context translates after the last mmput returned");
        if let Ok(bond) = &bound {
            assert_eq!(bond.state(), ContextState::Released);
        }
        drop(bound);
    });
}
