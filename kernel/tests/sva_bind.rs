//! SVA binding on the host: the notifier core, the SMMU driver and the SMMU model together.
//! Page-table changes go through `MmCore::arch_invalidate_secondary_tlbs` exactly as the
//! kernel's TLB flush path calls it; each protection is also shown failing with its debug knob.
//!
//! The SVA layer needs `'static` SMMUs (a subscription outlives any stack frame), so every test
//! leaks its small world and names it with its own domain type `Domain<N>`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;

use shootdown::iommu::backend::SmmuBackend;
use shootdown::iommu::driver::{DebugKnobs, Smmu, SmmuConfig, SmmuError};
use shootdown::iommu::spec::event::{AccessKind, EventKind, EventRecord};
use shootdown::iommu::backend::model::checker::StaleKind;
use shootdown::iommu::backend::model::dma::{DmaEngine, DmaError};
use shootdown::iommu::backend::model::{FaultKind, Knobs, ModelConfig, SmmuModel};
use shootdown::iommu::sva::{
    self, AccessFaultError, ContextState, Sva, SvaDebugKnobs, SvaDomain, SvaError, SvaIommu,
};
use shootdown::iommu::fake::{LeafAttrs, PhysArena, StepClock, TestPageTables};
use shootdown::mm::aspace::{AddressSpace, Backing, Placement};
use shootdown::mm::notifier::{self, FaultError, InvalidArgument, MmCore, NotifierError};
use shootdown::mm::fake::ArenaPlatform;
use shootdown::mm::pgtable::{Permissions, MAIR_VALUE};
use shootdown::mm::phys::FrameAllocator;
use shootdown::mm::{PhysAddr, VirtAddr, PAGE_SIZE};

const PAGE: u64 = PAGE_SIZE as u64;
const VA: u64 = 0x0000_7f00_0000_0000;
const MAIR: u64 = 0xff;

type ModelSmmu = Smmu<'static, &'static SmmuModel<'static>, &'static StepClock>;

static SLOTS: [OnceLock<&'static Sva>; 32] = [const { OnceLock::new() }; 32];

/// The SMMU of test world `N`.
struct Domain<const N: usize>;

impl<const N: usize> SvaDomain for Domain<N> {
    fn sva() -> Option<&'static Sva> {
        SLOTS[N].get().copied()
    }
}

struct World {
    mem: &'static PhysArena,
    model: &'static SmmuModel<'static>,
    smmu: &'static ModelSmmu,
    sva: &'static Sva,
}

fn leak<T>(t: T) -> &'static T {
    Box::leak(Box::new(t))
}

/// A leaked world for domain `N`: 8 MiB of "RAM", the QEMU-like model, the driver with short
/// timeouts (the step clock moves 1 µs per read, so a 2 ms timeout is 2000 polls).
fn world<const N: usize>(model_cfg: ModelConfig) -> World {
    world_through::<N>(model_cfg, |smmu| smmu)
}

/// As [`world`], with SVA reaching the driver through `wrap` (a test double around it).
fn world_through<const N: usize>(
    model_cfg: ModelConfig,
    wrap: impl FnOnce(&'static ModelSmmu) -> &'static dyn SvaIommu,
) -> World {
    let mem = leak(PhysArena::new(PhysAddr(0x4000_0000), 2048).unwrap());
    let model = leak(SmmuModel::new(mem, model_cfg).unwrap());
    let clock = leak(StepClock::new(1_000));
    let cfg = SmmuConfig {
        sync_timeout_ns: 2_000_000,
        ack_timeout_ns: 2_000_000,
        ..SmmuConfig::default()
    };
    let smmu: &'static ModelSmmu = leak(Smmu::new(model, clock, mem, mem, cfg).unwrap());
    let sva = leak(Sva::new(wrap(smmu), "model"));
    assert!(SLOTS[N].set(sva).is_ok(), "domain {N} used twice");
    World {
        mem,
        model,
        smmu,
        sva,
    }
}

/// An address space: its notifier core and its page tables.
struct Space {
    mm: Arc<MmCore>,
    tables: TestPageTables<'static>,
}

impl World {
    fn space(&self) -> Space {
        Space {
            mm: MmCore::new(),
            tables: TestPageTables::new(self.mem).unwrap(),
        }
    }

    /// Maps `pages` fresh frames at `va`, filled with `byte`.
    fn map(&self, s: &Space, va: u64, pages: u64, attrs: LeafAttrs, byte: u8) -> Vec<PhysAddr> {
        (0..pages)
            .map(|i| {
                let f = self.mem.alloc_zeroed().unwrap();
                self.mem.fill_frame(f, byte).unwrap();
                s.tables.map(VirtAddr(va + i * PAGE), f, attrs).unwrap();
                f
            })
            .collect()
    }

    fn device(&self, sid: u32) -> DmaEngine<'static, 'static> {
        DmaEngine::new(self.model, sid)
    }

    /// Every record, through SVA: it owns the queue while streams are bound (it sets aside
    /// the records still queued when a stream is unbound, and answers F_ACCESS).
    fn events(&self) -> Vec<EventRecord> {
        self.sva.handle_events().unwrap().events
    }

    fn byte(&self, pa: PhysAddr) -> u8 {
        let mut b = [0u8];
        self.mem.read(pa, &mut b).unwrap();
        b[0]
    }
}

impl Space {
    /// The kernel's unmap in miniature: clear the leaves, then the TLB flush path's call.
    fn unmap(&self, va: u64, pages: u64) {
        for i in 0..pages {
            self.tables.unmap(VirtAddr(va + i * PAGE)).unwrap();
        }
        self.flush(va, pages);
    }

    fn protect(&self, va: u64, writable: bool) {
        self.tables.set_writable(VirtAddr(va), writable).unwrap();
        self.flush(va, 1);
    }

    fn flush(&self, va: u64, pages: u64) {
        self.mm
            .arch_invalidate_secondary_tlbs(va, va + pages * PAGE)
            .unwrap();
    }
}

#[test]
fn one_context_and_one_subscription_per_address_space() {
    let w = world::<0>(ModelConfig::default());
    let baseline = w.mem.frames_in_use();
    let a = w.space();
    let b = w.space();
    let frames = w.map(&a, VA, 2, LeafAttrs::RW, 0x11);
    w.map(&b, VA, 1, LeafAttrs::RW, 0x22);
    let tables_in_use = w.mem.frames_in_use();

    let a1 = sva::bind::<Domain<0>>(1, &a.mm, a.tables.root(), MAIR).unwrap();
    let a2 = sva::bind::<Domain<0>>(2, &a.mm, a.tables.root(), MAIR).unwrap();
    let b3 = sva::bind::<Domain<0>>(3, &b.mm, b.tables.root(), MAIR).unwrap();
    assert_eq!(
        a1.asid(),
        a2.asid(),
        "streams of one address space share its context"
    );
    assert_ne!(a1.asid(), b3.asid());
    let sub = a1.subscription().unwrap().clone();
    assert!(Arc::ptr_eq(&sub, a2.subscription().unwrap()));
    assert_eq!(
        sub.users(),
        2,
        "one subscription, one reference per bound stream"
    );
    assert_eq!(w.sva.stats().contexts_created, 2);

    let mut buf = [0u8; 16];
    w.device(1).read(VirtAddr(VA + PAGE), &mut buf).unwrap();
    assert_eq!(buf, [0x11; 16]);
    w.device(3).read(VirtAddr(VA), &mut buf).unwrap();
    assert_eq!(buf, [0x22; 16], "the same VA, another address space");
    w.device(2).write(VirtAddr(VA + 8), &[0xab; 4]).unwrap();
    assert_eq!(w.byte(PhysAddr(frames[0].as_u64() + 8)), 0xab);

    // An unmap in one address space is invalidated in its context only.
    w.model.reset_stats();
    w.device(3).touch(VirtAddr(VA), AccessKind::Read).unwrap();
    a.unmap(VA + PAGE, 1);
    assert!(w
        .device(1)
        .touch(VirtAddr(VA + PAGE), AccessKind::Read)
        .is_err());
    w.device(3).touch(VirtAddr(VA), AccessKind::Read).unwrap();
    assert_eq!(
        w.model.stats().iotlb_hits,
        2,
        "b's entry survived a's unmap"
    );
    assert_eq!(w.sva.stats().invalidations, 1);

    // The first unbind keeps the context for the other stream; the last one destroys it.
    let ctx = a1.context().unwrap();
    a1.unbind().unwrap();
    assert_eq!(sub.users(), 1);
    w.device(2).read(VirtAddr(VA), &mut buf).unwrap();
    let err = w.device(1).read(VirtAddr(VA), &mut buf).unwrap_err();
    assert!(
        matches!(err, DmaError::Fault { fault, .. } if matches!(fault.kind, FaultKind::BadSte(_))),
        "an unbound stream is denied: {err:?}"
    );
    a2.unbind().unwrap();
    assert!(!sub.is_linked());
    assert_eq!(w.smmu.context_asid(ctx), Err(SmmuError::NoSuchContext(ctx)));
    assert_eq!(w.sva.stats().contexts_destroyed, 1);
    drop(b3);
    notifier::synchronize();
    assert_eq!(w.sva.stats().notifiers_freed, 2);
    assert_eq!(
        w.mem.frames_in_use(),
        tables_in_use,
        "every CD went back to the allocator"
    );
    assert!(tables_in_use > baseline);
    let ev = w.events();
    assert!(ev.iter().any(|e| e.kind == EventKind::BadSte && e.sid == 1));
    assert!(w.model.stale_translations().is_empty());
}

/// Maps a page, lets stream 1 cache it, unmaps it through the notifier (the driver's skip
/// knob set as given), then has the device write and read there.
fn dma_after_unmap<const N: usize>(skip: bool) -> (World, Result<(), DmaError>, [u8; 8], PhysAddr) {
    let w = world::<N>(ModelConfig::default());
    let s = w.space();
    let frame = w.map(&s, VA, 1, LeafAttrs::RW, 0x5a)[0];
    let bond = sva::bind::<Domain<N>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    let dev = w.device(1);
    dev.read(VirtAddr(VA), &mut [0u8; 8]).unwrap();
    w.smmu.set_debug_knobs(DebugKnobs {
        skip_invalidation: skip,
        ..DebugKnobs::default()
    });
    w.model
        .note_unmap(bond.asid().unwrap(), VirtAddr(VA), VirtAddr(VA + PAGE), 1);
    s.unmap(VA, 1);
    let write = dev.write(VirtAddr(VA), &[0xee; 8]);
    let mut read = [0x77u8; 8];
    let _ = dev.read(VirtAddr(VA), &mut read);
    w.smmu.set_debug_knobs(DebugKnobs::default());
    drop(bond);
    (w, write, read, frame)
}

#[test]
fn dma_after_unmap_faults_and_touches_nothing() {
    let (w, write, read, frame) = dma_after_unmap::<1>(false);
    assert!(
        matches!(write, Err(DmaError::Fault { fault, .. }) if fault.kind == FaultKind::Translation { level: 3 })
    );
    assert_eq!(w.byte(frame), 0x5a, "the old frame was not written");
    assert_eq!(
        read, [0; 8],
        "a faulting read delivers zeros, not the old frame"
    );
    let ev = w.events();
    assert_eq!(ev.len(), 2);
    assert!(ev
        .iter()
        .all(|e| e.kind == EventKind::Translation && e.sid == 1 && e.input_addr == VA));
    assert!(w.model.stale_translations().is_empty());
    assert_eq!(w.smmu.stats().invalidations_skipped, 0);
}

#[test]
fn without_the_invalidation_the_device_uses_the_unmapped_frame() {
    let (w, write, read, frame) = dma_after_unmap::<2>(true);
    assert_eq!(write, Ok(()));
    assert_eq!(
        w.byte(frame),
        0xee,
        "the stale translation reached the old frame"
    );
    assert_eq!(read, [0xee; 8]);
    let stale = w.model.take_stale_translations();
    assert_eq!(stale.len(), 2);
    assert_eq!(stale[0].kind, StaleKind::UseAfterUnmap);
    assert_eq!(stale[0].last_unmap.map(|u| u.id), Some(1));
    assert_eq!(w.smmu.stats().invalidations_skipped, 1);
}

#[test]
fn protection_changes_reach_the_iotlb_both_ways() {
    let w = world::<3>(ModelConfig::default());
    let s = w.space();
    let frame = w.map(&s, VA, 1, LeafAttrs::RW, 0)[0];
    let _bond = sva::bind::<Domain<3>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    let dev = w.device(1);
    dev.write(VirtAddr(VA), &[1]).unwrap();
    s.protect(VA, false);
    let err = dev.write(VirtAddr(VA), &[2]).unwrap_err();
    assert!(
        matches!(err, DmaError::Fault { fault, .. } if fault.kind == FaultKind::Permission { level: 3 })
    );
    let mut b = [0u8];
    dev.read(VirtAddr(VA), &mut b).unwrap();
    assert_eq!((b, w.byte(frame)), ([1], 1));
    // The upgrade must reach the IOTLB too, or the cached read-only entry keeps faulting.
    s.protect(VA, true);
    dev.write(VirtAddr(VA), &[3]).unwrap();
    assert_eq!(w.byte(frame), 3);
    assert!(w.model.stale_translations().is_empty());
    // The same upgrade with the invalidation skipped: the 2023 bug.
    s.protect(VA, false);
    dev.read(VirtAddr(VA), &mut b).unwrap();
    w.smmu.set_debug_knobs(DebugKnobs {
        skip_invalidation: true,
        ..DebugKnobs::default()
    });
    s.protect(VA, true);
    w.smmu.set_debug_knobs(DebugKnobs::default());
    assert!(dev.write(VirtAddr(VA), &[4]).is_err());
    assert_eq!(
        w.model.take_stale_translations()[0].kind,
        StaleKind::SpuriousFault
    );
}

/// Teardown while bound. Returns (write after release, events, old frame, trap frame).
fn teardown_while_bound<const N: usize>(
    skip_quiesce: bool,
) -> (
    World,
    Result<(), DmaError>,
    Vec<EventRecord>,
    PhysAddr,
    PhysAddr,
) {
    let w = world::<N>(ModelConfig::default());
    w.sva.set_debug_knobs(SvaDebugKnobs {
        skip_release_quiesce: skip_quiesce,
        ..SvaDebugKnobs::default()
    });
    let s = w.space();
    let frame = w.map(&s, VA, 1, LeafAttrs::RW, 0x66)[0];
    let bond = sva::bind::<Domain<N>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    let dev = w.device(1);
    dev.write(VirtAddr(VA), &[1]).unwrap();
    assert!(s.mm.mmput(), "the last user: release runs");
    assert_eq!(bond.state(), ContextState::Released);
    // The tables are about to be freed and their frames reused: point the leaf at a trap frame
    // the way a recycled table page would, without any invalidation (nobody is subscribed).
    let trap = w.mem.alloc_zeroed().unwrap();
    s.tables.remap(VirtAddr(VA), trap).unwrap();
    let write = dev.write(VirtAddr(VA), &[0xee; 8]);
    let events = w.events();
    w.sva.set_debug_knobs(SvaDebugKnobs::default());
    bond.unbind().unwrap();
    (w, write, events, frame, trap)
}

#[test]
fn teardown_while_bound_quiesces_the_context_quietly() {
    let (w, write, events, frame, trap) = teardown_while_bound::<4>(false);
    let fault = match write {
        Err(DmaError::Fault { fault, .. }) => fault,
        other => panic!("a DMA after release must fault, got {other:?}"),
    };
    assert!(!fault.recorded, "release faults are quiet");
    assert!(events.is_empty());
    assert_eq!(
        (w.byte(frame), w.byte(trap)),
        (1, 0),
        "neither frame reached"
    );
    assert_eq!(w.sva.stats().releases, 1);
    assert!(w.model.stale_translations().is_empty());
}

#[test]
fn without_the_quiesce_release_leaves_the_device_translating() {
    let (w, write, _, frame, _) = teardown_while_bound::<5>(true);
    assert_eq!(write, Ok(()), "the cached translation was still usable");
    assert_eq!(w.byte(frame), 0xee);
    assert!(!w.model.take_stale_translations().is_empty());
}

#[test]
fn invalidations_after_release_are_skipped() {
    let w = world::<6>(ModelConfig::default());
    let s = w.space();
    w.map(&s, VA, 1, LeafAttrs::RW, 0);
    let bond = sva::bind::<Domain<6>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    s.mm.mmget();
    s.unmap(VA, 1);
    let sent = w.smmu.stats().commands.total();
    // Release through `mmput` (the core unlinks the subscription); a page-table teardown
    // after it reaches nobody, and a stray call on the ops directly is skipped.
    s.mm.mmput();
    assert!(s.mm.mmput());
    let ops = bond
        .subscription()
        .unwrap()
        .ops_as::<sva::SvaNotifier<Domain<6>>>()
        .unwrap();
    use shootdown::mm::notifier::MmuNotifierOps;
    ops.arch_invalidate_secondary_tlbs(&s.mm, VA, VA + PAGE);
    let stats = w.sva.stats();
    assert_eq!((stats.invalidations, stats.invalidations_skipped), (1, 1));
    // The quiesce sent its own commands; nothing else was.
    assert!(w.smmu.stats().commands.total() > sent);
    bond.unbind().unwrap();
}

#[test]
fn bad_binds_are_refused_and_leave_nothing_behind() {
    let w = world::<7>(ModelConfig::default());
    let s = w.space();
    let baseline = w.mem.frames_in_use();
    // A StreamID beyond the stream table (256 entries by default).
    let err = sva::bind::<Domain<7>>(0x1_0000, &s.mm, s.tables.root(), MAIR).unwrap_err();
    assert!(
        matches!(
            err,
            SvaError::Smmu(SmmuError::SidOutOfRange { sid: 0x1_0000, .. })
        ),
        "{err}"
    );
    assert_eq!(
        w.mem.frames_in_use(),
        baseline,
        "the context made for it is gone"
    );
    let stats = w.sva.stats();
    assert_eq!((stats.contexts_created, stats.contexts_destroyed), (1, 1));
    // A misaligned root cannot make a CD.
    let err = sva::bind::<Domain<7>>(1, &s.mm, PhysAddr(0x4000_0800), MAIR).unwrap_err();
    assert!(matches!(err, SvaError::Smmu(SmmuError::Cd(_))), "{err}");
    // The same stream twice.
    let bond = sva::bind::<Domain<7>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    let err = sva::bind::<Domain<7>>(1, &s.mm, s.tables.root(), MAIR).unwrap_err();
    assert_eq!(err, SvaError::Smmu(SmmuError::StreamBusy(1)));
    assert_eq!(
        bond.subscription().unwrap().users(),
        1,
        "the failed bind put its reference"
    );
    // Another root for the same address space.
    let other = TestPageTables::new(w.mem).unwrap();
    let err = sva::bind::<Domain<7>>(2, &s.mm, other.root(), MAIR).unwrap_err();
    assert!(matches!(err, SvaError::RootMismatch { .. }), "{err}");
    let err = sva::bind::<Domain<7>>(2, &s.mm, s.tables.root(), 0x44).unwrap_err();
    assert_eq!(
        err,
        SvaError::MairMismatch {
            bound: MAIR,
            requested: 0x44
        }
    );
    // A domain without SMMU.
    let err = sva::bind::<Domain<15>>(2, &s.mm, s.tables.root(), MAIR).unwrap_err();
    assert_eq!(err, SvaError::NoSmmu);
    // An address space being torn down.
    assert!(s.mm.mmput());
    let err = sva::bind::<Domain<7>>(2, &s.mm, s.tables.root(), MAIR).unwrap_err();
    assert_eq!(
        err,
        SvaError::Notifier(NotifierError::InvalidArgument(InvalidArgument::NoLiveUsers))
    );
    bond.unbind().unwrap();
    assert!(!w.smmu.is_disabled());
    assert!(w.events().is_empty());
}

/// An SMMU that stops completing commands (per `knobs`) during an unmap.
fn wedged_unmap<const N: usize>(knobs: Knobs) -> (World, SmmuError) {
    let w = world::<N>(ModelConfig::default());
    let s = w.space();
    let frame = w.map(&s, VA, 2, LeafAttrs::RW, 0x33)[0];
    let bond = sva::bind::<Domain<N>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    let dev = w.device(1);
    dev.read(VirtAddr(VA), &mut [0u8; 8]).unwrap();
    w.model.set_knobs(knobs);
    s.unmap(VA, 1); // returns: bounded by the driver's timeouts
    assert_eq!(bond.state(), ContextState::Broken);
    let stats = w.sva.stats();
    assert!(stats.failures >= 1 && stats.aborts == 1, "{stats:?}");
    assert!(w.smmu.is_disabled());
    // The SMMU now aborts everything: the device reaches neither the unmapped frame nor any
    // other.
    let err = dev.write(VirtAddr(VA), &[0xee; 8]).unwrap_err();
    assert!(
        matches!(err, DmaError::Fault { fault, .. } if fault.kind == FaultKind::GlobalAbort),
        "{err:?}"
    );
    assert!(dev.read(VirtAddr(VA + PAGE), &mut [0u8; 8]).is_err());
    assert_eq!(w.byte(frame), 0x33);
    // Later unmaps of the broken context return at once; unbind reports the dead SMMU.
    let before = w.smmu.stats().sync_timeouts;
    s.unmap(VA + PAGE, 1);
    assert_eq!(w.smmu.stats().sync_timeouts, before);
    let err = bond.unbind().unwrap_err();
    w.model.set_knobs(Knobs::default());
    match err {
        SvaError::Smmu(e) => (w, e),
        e => panic!("{e}"),
    }
}

#[test]
fn a_cmd_sync_timeout_never_hangs_the_unmap_and_nothing_stale_survives() {
    let (w, unbind_error) = wedged_unmap::<8>(Knobs {
        stall_sync: true,
        ..Knobs::default()
    });
    assert_eq!(unbind_error, SmmuError::Disabled);
    assert!(
        w.smmu.stats().sync_timeouts >= 2,
        "invalidation and quiesce"
    );
}

#[test]
fn a_full_command_queue_never_hangs_the_unmap_either() {
    let (w, unbind_error) = wedged_unmap::<9>(Knobs {
        stall_command_queue: true,
        ..Knobs::default()
    });
    assert_eq!(unbind_error, SmmuError::Disabled);
    assert!(w.smmu.stats().sync_timeouts + w.smmu.stats().queue_full_timeouts >= 1);
}

const CPUS: u64 = 4;
const PAGES: u64 = 16;

/// Unmaps on four threads while a device thread writes every page all the time. Returns
/// (translations usable right after their unmap returned, checker violations, frames written
/// after the last unmap).
fn concurrent_unmaps<const N: usize>(skip: bool) -> (u64, usize, usize) {
    let w = world::<N>(ModelConfig::default());
    w.smmu.set_debug_knobs(DebugKnobs {
        skip_invalidation: skip,
        ..DebugKnobs::default()
    });
    let s = w.space();
    let frames: Vec<Vec<PhysAddr>> = (0..CPUS)
        .map(|c| w.map(&s, VA + c * 0x10_0000, PAGES, LeafAttrs::RW, c as u8))
        .collect();
    let bond = sva::bind::<Domain<N>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    let asid = bond.asid().unwrap();
    // Every page in the IOTLB before the race starts: whether a skipped invalidation is caught
    // must not depend on the device thread being scheduled before the unmappers finish (on a
    // loaded 2-core CI machine it sometimes was not).
    let warm = w.device(1);
    for c in 0..CPUS {
        for p in 0..PAGES {
            warm.write(VirtAddr(VA + c * 0x10_0000 + p * PAGE), &[0xee])
                .unwrap();
        }
    }
    let stop = AtomicBool::new(false);
    let next_id = AtomicU64::new(1);
    let post_unmap_hits = AtomicU64::new(0);
    thread::scope(|scope| {
        // The device: writes every page over and over.
        scope.spawn(|| {
            let dev = w.device(1);
            while !stop.load(Ordering::Relaxed) {
                for c in 0..CPUS {
                    for p in 0..PAGES {
                        let _ = dev.write(VirtAddr(VA + c * 0x10_0000 + p * PAGE), &[0xee]);
                    }
                }
            }
        });
        let unmappers: Vec<_> = (0..CPUS)
            .map(|c| {
                let (w, s, next_id, post) = (&w, &s, &next_id, &post_unmap_hits);
                scope.spawn(move || {
                    let probe = w.device(1);
                    for p in 0..PAGES {
                        let va = VA + c * 0x10_0000 + p * PAGE;
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        // Accesses racing with the unmap are allowed until it returns.
                        w.model
                            .begin_unmap(asid, VirtAddr(va), VirtAddr(va + PAGE), id);
                        s.tables.unmap(VirtAddr(va)).unwrap();
                        s.flush(va, 1);
                        w.model.end_unmap(id);
                        if probe.touch(VirtAddr(va), AccessKind::Read).is_ok() {
                            post.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for u in unmappers {
            u.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(w.sva.stats().invalidations, CPUS * PAGES);
    // After the last unmap nothing may reach the frames any more.
    for f in frames.iter().flatten() {
        w.mem.fill_frame(*f, 0x11).unwrap();
    }
    for c in 0..CPUS {
        for p in 0..PAGES {
            let _ = w
                .device(1)
                .write(VirtAddr(VA + c * 0x10_0000 + p * PAGE), &[0xee]);
        }
    }
    let written = frames
        .iter()
        .flatten()
        .filter(|f| w.byte(**f) != 0x11)
        .count();
    let violations = w.model.stats().stale_translations as usize;
    w.smmu.set_debug_knobs(DebugKnobs::default());
    drop(bond);
    (post_unmap_hits.load(Ordering::Relaxed), violations, written)
}

#[test]
fn concurrent_unmaps_through_the_notifier_leave_nothing_stale() {
    assert_eq!(concurrent_unmaps::<10>(false), (0, 0, 0));
}

#[test]
fn concurrent_unmaps_without_invalidation_are_caught() {
    let (post_unmap_hits, violations, written) = concurrent_unmaps::<11>(true);
    assert!(post_unmap_hits > 0 && violations > 0 && written > 0);
}

// ---- release races ------------------------------------------------------------------------
//
// Each race is replayed deterministically: a [`Double`] between SVA and the driver holds one
// thread at the entry of `quiesce` or `create_context` while the test drives the other side.
// Where the fixed code makes the other side wait for the held one, the test gives it a bounded
// chance to finish first (`finishes_alone`); only a broken protocol lets it.

#[path = "sva_double.rs"]
mod double;

use double::{finishes_alone, Double, Op};
use shootdown::iommu::driver::ContextId;

fn gated_world<const N: usize>(hold: Option<Op>) -> (World, &'static Double) {
    let mut double = None;
    let w = world_through::<N>(ModelConfig::default(), |smmu| {
        let d = Double::new(smmu);
        if let Some(op) = hold {
            d.hold_at(op);
        }
        double = Some(d);
        d
    });
    (w, double.unwrap())
}

/// Race 1: CPU B drops the last user and is inside release's quiesce; CPU A unmaps a page the
/// device has cached and frees its frame. A's invalidation must reach the SMMU: the quiesce has
/// not completed, so the IOTLB still holds the page. Returns (A's device read after the free,
/// the bytes it got, stale uses the model's checker saw, the state at the end).
fn unmap_racing_release<const N: usize>(
    knobs: SvaDebugKnobs,
) -> (Result<(), DmaError>, [u8; 8], usize, ContextState) {
    let (w, gate) = gated_world::<N>(Some(Op::Quiesce));
    w.sva.set_debug_knobs(knobs);
    let s = w.space();
    let frame = w.map(&s, VA, 1, LeafAttrs::RW, 0x5a)[0];
    let bond = sva::bind::<Domain<N>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    let asid = bond.asid().unwrap();
    let dev = w.device(1);
    dev.read(VirtAddr(VA), &mut [0u8; 8]).unwrap();
    let mut after_free = [0u8; 8];
    let read = thread::scope(|scope| {
        let release = scope.spawn(|| assert!(s.mm.mmput(), "the last user"));
        gate.wait_for_arrival();
        // CPU A: the OOM reaper's unmap, which holds no user reference.
        w.model
            .begin_unmap(asid, VirtAddr(VA), VirtAddr(VA + PAGE), 1);
        s.tables.unmap(VirtAddr(VA)).unwrap();
        s.flush(VA, 1);
        w.model.end_unmap(1);
        // The frame has a new owner now.
        w.mem.fill_frame(frame, 0x99).unwrap();
        let read = dev.read(VirtAddr(VA), &mut after_free);
        gate.open();
        release.join().unwrap();
        read
    });
    let stale = w.model.take_stale_translations().len();
    let state = bond.state();
    w.sva.set_debug_knobs(SvaDebugKnobs::default());
    bond.unbind().unwrap();
    (read, after_free, stale, state)
}

#[test]
fn an_unmap_racing_release_still_invalidates_the_iotlb() {
    let (read, bytes, stale, state) = unmap_racing_release::<12>(SvaDebugKnobs::default());
    assert!(
        matches!(read, Err(DmaError::Fault { .. })),
        "the device read the freed frame: {read:?} {bytes:x?}"
    );
    assert_eq!((bytes, stale), ([0; 8], 0));
    assert_eq!(state, ContextState::Released);
}

#[test]
fn marking_the_context_released_before_its_quiesce_lets_the_device_read_a_freed_frame() {
    let (read, bytes, stale, _) = unmap_racing_release::<18>(SvaDebugKnobs {
        release_marks_before_quiesce: true,
        ..SvaDebugKnobs::default()
    });
    assert_eq!(read, Ok(()));
    assert_eq!(bytes, [0x99; 8], "the new owner's bytes");
    assert!(stale > 0);
}

/// Race 2: the first bind is creating the context when the last user goes. Whichever wins,
/// no context may translate once `mmput` has returned.
#[test]
fn a_bind_racing_release_never_leaves_a_translating_context() {
    let (w, gate) = gated_world::<13>(Some(Op::CreateContext));
    let s = w.space();
    w.map(&s, VA, 1, LeafAttrs::RW, 0x5a);
    let (bound, release_overlapped) = thread::scope(|scope| {
        let bind = scope.spawn(|| sva::bind::<Domain<13>>(1, &s.mm, s.tables.root(), MAIR));
        gate.wait_for_arrival();
        let release = scope.spawn(|| assert!(s.mm.mmput(), "the last user"));
        let overlapped = finishes_alone(&release);
        gate.open();
        let bound = bind.join().unwrap();
        release.join().unwrap();
        (bound, overlapped)
    });
    let touch = w.device(1).touch(VirtAddr(VA), AccessKind::Read);
    assert!(touch.is_err(), "the device still translates after mmput returned");
    assert!(!release_overlapped, "release returned while a bind was creating the context");
    match bound {
        Ok(bond) => {
            assert_eq!(bond.state(), ContextState::Released);
            assert_eq!(w.sva.stats().releases, 1);
            bond.unbind().unwrap();
        }
        Err(e) => assert!(
            matches!(e, SvaError::ContextDead(_) | SvaError::Notifier(_)),
            "{e}"
        ),
    }
    assert!(!w.smmu.is_disabled());
}

/// Race 3: the last unbind destroys the context while release is about to quiesce it. That
/// race is harmless and must stay so: no SMMU-wide abort.
#[test]
fn release_racing_the_last_unbind_never_disables_the_smmu() {
    let (w, gate) = gated_world::<14>(Some(Op::Quiesce));
    let s = w.space();
    w.map(&s, VA, 1, LeafAttrs::RW, 0x5a);
    let bond = sva::bind::<Domain<14>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    w.device(1).read(VirtAddr(VA), &mut [0u8; 8]).unwrap();
    // An unrelated device on another address space, which must keep working.
    let other = w.space();
    w.map(&other, VA, 1, LeafAttrs::RW, 0x77);
    let other_bond = sva::bind::<Domain<14>>(2, &other.mm, other.tables.root(), MAIR).unwrap();
    let (unbound, unbind_overlapped) = thread::scope(|scope| {
        let release = scope.spawn(|| assert!(s.mm.mmput(), "the last user"));
        gate.wait_for_arrival();
        let unbind = scope.spawn(|| bond.unbind());
        let overlapped = finishes_alone(&unbind);
        gate.open();
        release.join().unwrap();
        (unbind.join().unwrap(), overlapped)
    });
    assert_eq!(unbound, Ok(()));
    let stats = w.sva.stats();
    assert_eq!((stats.aborts, stats.failures), (0, 0), "{stats:?}");
    assert!(!w.smmu.is_disabled());
    assert!(!unbind_overlapped, "unbind destroyed the context during release's quiesce");
    let mut b = [0u8];
    w.device(2).read(VirtAddr(VA), &mut b).unwrap();
    assert_eq!(b, [0x77]);
    other_bond.unbind().unwrap();
}

/// A context that is already gone leaves release nothing to do; an SMMU that answers
/// "disabled" is being switched off, which release completes before it counts the context as
/// quiet. Neither is a failure, and neither escalates to an abort of SVA's own. Returns the
/// world for the caller's own checks.
fn release_when_quiesce_answers<const N: usize>(error: fn(ContextId) -> SmmuError) -> World {
    let (w, gate) = gated_world::<N>(None);
    let s = w.space();
    w.map(&s, VA, 1, LeafAttrs::RW, 0);
    let bond = sva::bind::<Domain<N>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    gate.fail_next(Op::Quiesce, error(bond.context().unwrap()));
    assert!(s.mm.mmput());
    let stats = w.sva.stats();
    assert_eq!((stats.releases, stats.failures, stats.aborts), (1, 0, 0), "{stats:?}");
    assert_eq!(bond.state(), ContextState::Released);
    let _ = bond.unbind();
    w
}

#[test]
fn release_takes_a_vanished_context_as_done() {
    let w = release_when_quiesce_answers::<16>(SmmuError::NoSuchContext);
    assert!(!w.smmu.is_disabled());
}

#[test]
fn release_completes_a_switch_off_in_progress_before_counting_the_context_quiet() {
    let w = release_when_quiesce_answers::<17>(|_| SmmuError::Disabled);
    assert!(w.smmu.is_disabled());
    let cr0 = w.model.read32(shootdown::iommu::spec::regs::offset::CR0);
    assert_eq!(cr0 & 1, 0, "SMMU_CR0.SMMUEN is off");
}

/// The CD leaves hardware access-flag updates off (module docs of `sva`, "Access flag"): after
/// the CPU side ages a page, a device access faults with F_ACCESS and moves nothing, until the
/// page is young again.
#[test]
fn device_access_to_an_aged_page_faults_until_it_is_young_again() {
    let w = world::<19>(ModelConfig::default());
    let s = w.space();
    let frame = w.map(&s, VA, 1, LeafAttrs::RW, 0x5a)[0];
    let bond = sva::bind::<Domain<19>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    let dev = w.device(1);
    dev.read(VirtAddr(VA), &mut [0u8; 8]).unwrap();
    // clear_flush_young: the access flag goes, and the flush reaches the IOTLB.
    s.tables.set_accessed(VirtAddr(VA), false).unwrap();
    s.flush(VA, 1);
    let write = dev.write(VirtAddr(VA), &[0xee; 8]);
    assert!(
        matches!(write, Err(DmaError::Fault { fault, .. }) if matches!(fault.kind, FaultKind::AccessFlag { .. })),
        "{write:?}"
    );
    assert_eq!(w.byte(frame), 0x5a, "nothing was written");
    let events = w.events();
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::Access && e.sid == 1 && e.input_addr == VA),
        "{events:?}"
    );
    // Young again (invalid to valid needs no invalidation: faults are not cached).
    s.tables.set_accessed(VirtAddr(VA), true).unwrap();
    dev.write(VirtAddr(VA), &[0xee; 8]).unwrap();
    assert_eq!(w.byte(frame), 0xee);
    assert!(w.model.stale_translations().is_empty());
    bond.unbind().unwrap();
}

/// The kernel's address space over the world's RAM, for what needs the whole of it (ageing,
/// the Access-flag answer). No CPU runs it.
type ArenaSpace = shootdown::mm::aspace::MmUser<ArenaPlatform<&'static PhysArena>>;

/// An empty address space over the world's RAM.
fn arena_space(w: &World) -> ArenaSpace {
    AddressSpace::create(leak(ArenaPlatform::new(w.mem))).unwrap()
}

/// Maps one read-write anonymous page at `VA`.
fn map_page(space: &ArenaSpace) -> VirtAddr {
    space
        .mmap(
            Placement::Fixed(VirtAddr(VA)),
            PAGE_SIZE,
            Permissions::new(true, false, false),
            Backing::Anonymous,
        )
        .unwrap()
}

/// An address space over the world's RAM with one read-write anonymous page at `VA`, bound to
/// stream 1 of domain `N`; the device has written 0x11 there, and the page was then aged
/// (`clear_flush_young`). Returns the space, the bond and the page's frame.
fn aged_page<const N: usize>(w: &World) -> (ArenaSpace, sva::Bond<Domain<N>>, PhysAddr) {
    let space = arena_space(w);
    let va = map_page(&space);
    let frame = space.translate(va).unwrap().pa;
    let bond = sva::bind::<Domain<N>>(1, space.mm(), space.root().unwrap(), MAIR_VALUE).unwrap();
    w.device(1).write(va, &[0x11; 8]).unwrap();
    assert_eq!(space.clear_flush_young(va, PAGE_SIZE), Ok(true));
    (space, bond, frame)
}

/// A device write to the aged page: it must take F_ACCESS and move nothing.
fn aged_write_faults(w: &World, frame: PhysAddr, byte: u8) {
    let r = w.device(1).write(VirtAddr(VA), &[byte; 8]);
    assert!(
        matches!(r, Err(DmaError::Fault { fault, .. }) if matches!(fault.kind, FaultKind::AccessFlag { .. })),
        "{r:?}"
    );
    assert_eq!(w.byte(frame), 0x11, "nothing reached the aged page");
}

/// The F_ACCESS records of stream 1 among `events`; each names the page.
fn access_faults(events: &[EventRecord]) -> usize {
    let aged: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::Access && e.sid == 1)
        .collect();
    assert!(aged.iter().all(|e| e.input_addr == VA && e.ssid.is_none()), "{aged:?}");
    aged.len()
}

/// After `clear_flush_young` a device's access takes F_ACCESS and moves no data. The product's
/// event path (`Sva::handle_events`) answers the event by making the page young in the bound
/// address space, and the access the device's driver re-issues goes through.
#[test]
fn a_device_access_to_an_aged_page_goes_through_once_the_event_is_handled() {
    let w = world::<20>(ModelConfig::default());
    let (space, bond, frame) = aged_page::<20>(&w);
    for _ in 0..2 {
        aged_write_faults(&w, frame, 0x22);
    }
    let handled = w.sva.handle_events().unwrap();
    let faults = access_faults(&handled.events);
    assert!(faults >= 2, "{:?}", handled.events);
    assert_eq!(handled.answered, faults);
    assert!(handled.unanswered.is_empty(), "{:?}", handled.unanswered);
    assert_eq!(w.sva.stats().access_faults_answered, faults as u64);
    assert_eq!(space.test_young(VirtAddr(VA)), Ok(true));
    // The transaction was terminated, not stalled: the driver issues it again.
    w.device(1).write(VirtAddr(VA), &[0x33; 8]).unwrap();
    assert_eq!(w.byte(frame), 0x33);
    assert_eq!(w.sva.handle_events().unwrap(), Default::default());
    assert!(w.model.stale_translations().is_empty());
    bond.unbind().unwrap();
}

/// The failing twin: with the answer switched off the event is drained but the page stays
/// old, so every re-issued access faults again.
#[test]
fn with_the_answer_switched_off_an_aged_page_keeps_faulting() {
    let w = world::<21>(ModelConfig::default());
    w.sva.set_debug_knobs(SvaDebugKnobs {
        skip_access_fault_answer: true,
        ..SvaDebugKnobs::default()
    });
    let (space, bond, frame) = aged_page::<21>(&w);
    for _ in 0..3 {
        aged_write_faults(&w, frame, 0x22);
        let handled = w.sva.handle_events().unwrap();
        assert!(access_faults(&handled.events) >= 1, "{:?}", handled.events);
        assert_eq!((handled.answered, handled.unanswered.len()), (0, 0));
    }
    assert_eq!(space.test_young(VirtAddr(VA)), Ok(false));
    bond.unbind().unwrap();
}

/// An F_ACCESS drained after its stream was unbound names an unknown stream: reported with a
/// typed error, and the page stays old.
#[test]
fn an_access_fault_of_a_stream_unbound_since_is_reported_not_answered() {
    let w = world::<22>(ModelConfig::default());
    let (space, bond, frame) = aged_page::<22>(&w);
    aged_write_faults(&w, frame, 0x22);
    bond.unbind().unwrap();
    let handled = w.sva.handle_events().unwrap();
    let faults = access_faults(&handled.events);
    assert!(faults >= 1);
    assert_eq!(handled.answered, 0);
    assert_eq!(handled.unanswered.len(), faults);
    for (_, why) in &handled.unanswered {
        assert_eq!(*why, AccessFaultError::UnknownStream { sid: 1, ssid: None });
    }
    assert_eq!(w.sva.stats().access_faults_unanswered, faults as u64);
    assert_eq!(space.test_young(VirtAddr(VA)), Ok(false));
}

/// A stream bound to a bare notifier core (no address space behind it answers faults): its
/// F_ACCESS is reported as not answered, and nothing changes.
#[test]
fn an_access_fault_with_no_address_space_behind_the_core_is_reported() {
    let w = world::<23>(ModelConfig::default());
    let s = w.space();
    let frame = w.map(&s, VA, 1, LeafAttrs::RW, 0x11)[0];
    let bond = sva::bind::<Domain<23>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    s.tables.set_accessed(VirtAddr(VA), false).unwrap();
    s.flush(VA, 1);
    aged_write_faults(&w, frame, 0x22);
    let handled = w.sva.handle_events().unwrap();
    assert!(access_faults(&handled.events) >= 1);
    assert_eq!(handled.answered, 0);
    for (_, why) in &handled.unanswered {
        assert_eq!(
            *why,
            AccessFaultError::NotAnswered {
                sid: 1,
                va: VirtAddr(VA),
                why: FaultError::NoHandler
            }
        );
    }
    bond.unbind().unwrap();
}

/// Answering events while another thread maps, ages and unmaps the page: the answer takes the
/// page-table lock the unmap holds, so the two must neither deadlock nor let the device use a
/// stale translation. Every unanswered fault names a page that was unmapped meanwhile.
#[test]
fn answering_access_faults_alongside_unmaps_neither_deadlocks_nor_goes_stale() {
    let w = world::<24>(ModelConfig::default());
    let space = arena_space(&w);
    let bond = sva::bind::<Domain<24>>(1, space.mm(), space.root().unwrap(), MAIR_VALUE).unwrap();
    let asid = bond.asid().unwrap();
    // The checker allows a device to use the old translation only while a change is open.
    let noted = |id: u64, change: &dyn Fn()| {
        w.model
            .begin_unmap(asid, VirtAddr(VA), VirtAddr(VA + PAGE), id);
        change();
        w.model.end_unmap(id);
    };
    let done = AtomicBool::new(false);
    let answered = thread::scope(|scope| {
        let cpu = scope.spawn(|| {
            for i in 0..200 {
                let va = map_page(&space);
                noted(2 * i + 1, &|| {
                    space.clear_flush_young(va, PAGE_SIZE).unwrap();
                });
                thread::yield_now();
                noted(2 * i + 2, &|| space.munmap(va, PAGE_SIZE).unwrap());
            }
            done.store(true, Ordering::SeqCst);
        });
        let mut answered = 0;
        while !done.load(Ordering::SeqCst) {
            let _ = w.device(1).write(VirtAddr(VA), &[0x5a; 8]);
            let handled = w.sva.handle_events().unwrap();
            answered += handled.answered;
            for (e, why) in &handled.unanswered {
                assert!(
                    matches!(why, AccessFaultError::NotAnswered { why: FaultError::NotMapped(_), .. }),
                    "{e}: {why}"
                );
            }
        }
        cpu.join().unwrap();
        answered
    });
    assert!(w.model.stale_translations().is_empty(), "{:?}", w.model.stale_translations());
    eprintln!("{answered} access faults answered alongside the unmaps");
    bond.unbind().unwrap();
}

/// An F_ACCESS recorded while stream 1 was bound to one address space, drained after the
/// stream was unbound and bound to another: the record is the old binding's (the SMMU wrote it
/// before the unbind's STE invalidation completed), so it must not be answered in the new
/// space. Answered there, it made a page young that no device of that space had touched (at
/// the same VA of another address space), and `answered` counted an answer the faulting
/// device's space never got.
#[test]
fn an_access_fault_of_an_earlier_binding_is_not_answered_in_the_next_one() {
    let w = world::<25>(ModelConfig::default());
    let (old_space, old_bond, frame) = aged_page::<25>(&w);
    aged_write_faults(&w, frame, 0x22);
    old_bond.unbind().unwrap();
    // The stream is bound again, to another address space with an aged page at the same VA.
    let new_space = arena_space(&w);
    let va = map_page(&new_space);
    assert_eq!(new_space.clear_flush_young(va, PAGE_SIZE), Ok(true));
    assert_eq!(new_space.test_young(va), Ok(false), "the new page is old");
    let new_bond =
        sva::bind::<Domain<25>>(1, new_space.mm(), new_space.root().unwrap(), MAIR_VALUE)
            .unwrap();
    let handled = w.sva.handle_events().unwrap();
    let faults = access_faults(&handled.events);
    assert!(faults >= 1, "{:?}", handled.events);
    assert_eq!(
        handled.answered, 0,
        "the old binding's F_ACCESS was answered in the new address space"
    );
    assert_eq!(new_space.test_young(va), Ok(false), "a page no device touched is young");
    assert_eq!(old_space.test_young(VirtAddr(VA)), Ok(false));
    new_bond.unbind().unwrap();
}

// ---- with the event interrupt (breaker review of fb7a631 merged with f5e1e73) --------------

/// A `handle_events` on one CPU has taken stream 1's F_ACCESS out of the queue and is about to
/// look the stream up; meanwhile another CPU unbinds the stream and binds it to another
/// address space. The record is the old binding's: it must not be answered in the new space.
/// f5e1e73 looked the stream up under the event queue's lock, so the unbind's drain waited
/// for it; with the drain handing records to its sink after dropping that lock (fb7a631),
/// nothing made the unbind wait, and the lookup found the new binding.
#[test]
fn a_rebind_during_a_drain_never_gets_the_old_bindings_access_fault() {
    let (w, gate) = gated_world::<26>(None);
    let (old_space, old_bond, frame) = aged_page::<26>(&w);
    aged_write_faults(&w, frame, 0x22);
    let new_space = arena_space(&w);
    let va = map_page(&new_space);
    assert_eq!(new_space.clear_flush_young(va, PAGE_SIZE), Ok(true));
    gate.hold_at(Op::Drain);
    let (handled, new_bond) = thread::scope(|s| {
        let drain = s.spawn(|| w.sva.handle_events().unwrap());
        gate.wait_for_arrival();
        let rebind = s.spawn(|| {
            old_bond.unbind().unwrap();
            sva::bind::<Domain<26>>(1, new_space.mm(), new_space.root().unwrap(), MAIR_VALUE)
                .unwrap()
        });
        let overlapped = finishes_alone(&rebind);
        gate.open();
        let handled = drain.join().unwrap();
        let new_bond = rebind.join().unwrap();
        eprintln!("the rebind finished while the drain held a record: {overlapped}");
        (handled, new_bond)
    });
    let mut events = handled.events;
    events.extend(w.sva.handle_events().unwrap().events);
    assert!(access_faults(&events) >= 1, "{events:?}");
    assert_eq!(
        new_space.test_young(va),
        Ok(false),
        "the old binding's F_ACCESS was answered in the new address space"
    );
    assert_eq!(old_space.test_young(VirtAddr(VA)), Ok(false));
    new_bond.unbind().unwrap();
}

/// Records the event interrupt could not move into its full software log stay in the SMMU's
/// queue: a drain through SVA delivers them all, none lost.
#[test]
fn records_the_interrupt_leaves_in_the_queue_reach_sva() {
    let w = world::<27>(ModelConfig::default());
    let entries = w.smmu.event_queue_size().in_use.entries();
    let mut written = 0;
    for _ in 0..2 {
        for i in 0..entries {
            let sid = 0x20 + i % 0x80;
            let _ = w.model.translate(sid, VirtAddr(0), AccessKind::Read);
            written += 1;
        }
        w.smmu.collect_events().unwrap();
    }
    assert_eq!(
        w.model.stats().events_lost,
        0,
        "the SMMU's queue lost nothing"
    );
    let handled = w.sva.handle_events().unwrap();
    assert_eq!(
        handled.events.len(),
        written as usize,
        "{:?}",
        handled.drain
    );
    assert!(!handled.drain.lost_events(), "{:?}", handled.drain);
}
