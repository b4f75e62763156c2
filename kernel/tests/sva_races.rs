//! Adversarial interleavings of SVA's `control` protocol (review of e74ba6f, issue 20 fix).
//!
//! Each interleaving is forced deterministically. Two kinds of holds are used:
//!
//! * [`HoldClock`]: the driver's clock stops one chosen thread at its first clock read after
//!   the SMMU's `disabled` flag is set. Inside `Smmu::abort_all_traffic` that read is
//!   `disable()`'s deadline: the flag is published, SMMU_CR0.SMMUEN is still 1, so the SMMU
//!   still translates (and hits its IOTLB) exactly as real hardware does until its CR0 write
//!   takes effect and is acknowledged.
//! * [`Double`]: between SVA and the driver, holds the first caller of one operation at its
//!   entry and injects one-shot errors per operation.
//!
//! Tests whose name starts with `finding_` fail on e74ba6f (a defect each); the others pin
//! interleavings the protocol gets right.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, ThreadId};

#[path = "sva_double.rs"]
mod double;

use double::{finishes_alone, Double, Op};
use shootdown::iommu::backend::Clock;
use shootdown::iommu::spec::command::opcode;
use shootdown::iommu::driver::{Smmu, SmmuConfig, SmmuError};
use shootdown::iommu::spec::event::AccessKind;
use shootdown::iommu::backend::model::dma::{DmaEngine, DmaError};
use shootdown::iommu::backend::model::{Knobs, ModelConfig, SmmuModel};
use shootdown::iommu::spec::regs::CommandErrorCode;
use shootdown::iommu::sva::{self, ContextState, Sva, SvaDomain, SvaError, SvaIommu};
use shootdown::iommu::fake::{LeafAttrs, PhysArena, StepClock, TestPageTables};
use shootdown::mm::notifier::MmCore;
use shootdown::mm::phys::FrameAllocator;
use shootdown::mm::{PhysAddr, VirtAddr, PAGE_SIZE};
use shootdown::sync::Srcu;

const PAGE: u64 = PAGE_SIZE as u64;
const VA: u64 = 0x0000_7f00_0000_0000;
const MAIR: u64 = 0xff;

type HSmmu = Smmu<'static, &'static SmmuModel<'static>, &'static HoldClock>;

static SLOTS: [OnceLock<&'static Sva>; 32] = [const { OnceLock::new() }; 32];

struct Domain<const N: usize>;

impl<const N: usize> SvaDomain for Domain<N> {
    fn sva() -> Option<&'static Sva> {
        SLOTS[N].get().copied()
    }
}

fn leak<T>(t: T) -> &'static T {
    Box::leak(Box::new(t))
}

/// A step clock (1 µs per read, as in `sva_bind`) that can stop one thread once a condition
/// holds.
struct HoldClock {
    step: StepClock,
    /// When the armed thread stops: evaluated on each of its reads.
    when: OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
    thread: Mutex<Option<ThreadId>>,
    arrived: AtomicBool,
    open: AtomicBool,
}

impl HoldClock {
    /// Stops the calling thread at its first clock read once `when` is true.
    fn arm_this_thread(&self) {
        *self.thread.lock().unwrap() = Some(thread::current().id());
    }

    fn wait_for_arrival(&self) {
        while !self.arrived.load(Ordering::SeqCst) {
            thread::yield_now();
        }
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Clock for HoldClock {
    fn now_ns(&self) -> u64 {
        let held = {
            let mut t = self.thread.lock().unwrap();
            let me = *t == Some(thread::current().id());
            if me && self.when.get().is_some_and(|w| w()) {
                t.take();
                true
            } else {
                false
            }
        };
        if held {
            self.arrived.store(true, Ordering::SeqCst);
            while !self.open.load(Ordering::SeqCst) {
                thread::yield_now();
            }
        }
        self.step.now_ns()
    }
}

struct World {
    mem: &'static PhysArena,
    model: &'static SmmuModel<'static>,
    smmu: &'static HSmmu,
    clock: &'static HoldClock,
    sva: &'static Sva,
    double: Option<&'static Double>,
}

/// A leaked world for domain `N` (8 MiB of RAM, the model, the driver with 2 ms timeouts);
/// with `double`, SVA reaches the driver through a [`Double`].
fn world<const N: usize>(double: bool) -> World {
    let mem = leak(PhysArena::new(PhysAddr(0x4000_0000), 2048).unwrap());
    let model = leak(SmmuModel::new(mem, ModelConfig::default()).unwrap());
    let clock = leak(HoldClock {
        step: StepClock::new(1_000),
        when: OnceLock::new(),
        thread: Mutex::new(None),
        arrived: AtomicBool::new(false),
        open: AtomicBool::new(false),
    });
    let cfg = SmmuConfig {
        sync_timeout_ns: 2_000_000,
        ack_timeout_ns: 2_000_000,
        ..SmmuConfig::default()
    };
    let smmu: &'static HSmmu = leak(Smmu::new(model, clock, mem, mem, cfg).unwrap());
    let _ = clock.when.set(Box::new(move || smmu.is_disabled()));
    let double = double.then(|| Double::new(smmu));
    let iommu: &'static dyn SvaIommu = match double {
        Some(d) => d,
        None => smmu,
    };
    let sva = leak(Sva::new(iommu, "model"));
    assert!(SLOTS[N].set(sva).is_ok(), "domain {N} used twice");
    World {
        mem,
        model,
        smmu,
        clock,
        sva,
        double,
    }
}

struct Space {
    mm: Arc<MmCore>,
    tables: TestPageTables<'static>,
}

impl World {
    /// An address space with a private grace-period domain: a thread a test holds inside a
    /// read-side section must not stall the grace periods of other tests.
    fn space(&self) -> Space {
        Space {
            mm: MmCore::with_grace_domain(leak(Srcu::new())),
            tables: TestPageTables::new(self.mem).unwrap(),
        }
    }

    fn map(&self, s: &Space, va: u64, byte: u8) -> PhysAddr {
        let f = self.mem.alloc_zeroed().unwrap();
        self.mem.fill_frame(f, byte).unwrap();
        s.tables.map(VirtAddr(va), f, LeafAttrs::RW).unwrap();
        f
    }

    fn device(&self, sid: u32) -> DmaEngine<'static, 'static> {
        DmaEngine::new(self.model, sid)
    }

    fn byte(&self, pa: PhysAddr) -> u8 {
        let mut b = [0u8];
        self.mem.read(pa, &mut b).unwrap();
        b[0]
    }

    fn double(&self) -> &'static Double {
        self.double.expect("a world with a double")
    }
}

impl Space {
    /// The kernel's unmap in miniature, the checker told which ASID and range it covers.
    fn unmap(&self, w: &World, asid: u16, va: u64, id: u64) {
        w.model
            .begin_unmap(asid, VirtAddr(va), VirtAddr(va + PAGE), id);
        self.tables.unmap(VirtAddr(va)).unwrap();
        self.mm.arch_invalidate_secondary_tlbs(va, va + PAGE).unwrap();
        w.model.end_unmap(id);
    }
}

/// Two address spaces A (stream 1) and B (stream 2) bound to one SMMU, each with one page
/// the device has in the IOTLB. Then the SMMU wedges (CMD_SYNC never completes) and A's
/// unbind, on a helper thread, fails to detach, fails to quiesce, and calls
/// `abort_all_traffic`, which the clock holds right after it published the `disabled` flag and
/// before SMMU_CR0 is written (translation still on). `during` runs on the calling thread
/// inside that window; its result is returned after the abort completed.
///
/// (The abort comes from an unbind, which runs in no grace-period read-side section. From an
/// invalidation or a release it would run inside one, and a release of B would then wait in
/// its `synchronize` until the abort completed: that accident closes the window for `mmput`,
/// not for unmaps.)
fn during_another_contexts_abort<const N: usize, R>(
    during: impl FnOnce(&World, &Space, &sva::Bond<Domain<N>>, PhysAddr) -> R,
) -> (World, R) {
    let w = world::<N>(false);
    let a = w.space();
    let b = w.space();
    w.map(&a, VA, 0x11);
    let frame_b = w.map(&b, VA, 0x22);
    let bond_a = sva::bind::<Domain<N>>(1, &a.mm, a.tables.root(), MAIR).unwrap();
    let bond_b = sva::bind::<Domain<N>>(2, &b.mm, b.tables.root(), MAIR).unwrap();
    w.device(1).read(VirtAddr(VA), &mut [0u8; 8]).unwrap();
    w.device(2).read(VirtAddr(VA), &mut [0u8; 8]).unwrap();
    w.model.set_knobs(Knobs {
        stall_sync: true,
        ..Knobs::default()
    });
    let (r, unbound_a) = thread::scope(|scope| {
        let aborting = scope.spawn(|| {
            w.clock.arm_this_thread();
            // Detach times out, quiesce times out, abort_all_traffic: held inside it.
            bond_a.unbind()
        });
        w.clock.wait_for_arrival();
        assert!(w.smmu.is_disabled(), "A is inside abort_all_traffic");
        // Whatever `during` asserts, the held thread must be let go.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            during(&w, &b, &bond_b, frame_b)
        }));
        w.clock.open();
        let unbound_a = aborting.join().unwrap();
        (r, unbound_a)
    });
    let r = r.unwrap_or_else(|p| std::panic::resume_unwind(p));
    assert!(unbound_a.is_err(), "A's unbind failed: {unbound_a:?}");
    w.model.set_knobs(Knobs::default());
    let _ = bond_b.unbind();
    (w, r)
}

/// Review finding 1a (the test failed before the fix). CPU A is recovering its own context and has just called
/// `Smmu::abort_all_traffic`, which sets `disabled` *before* it turns translation off. CPU B
/// unmaps a page of another address space: its TLBI is refused with `Disabled`, `fail` takes
/// B's (free) `control`, `recover`'s quiesce is refused with `Disabled` too, which SVA counts
/// as done: B is `Broken` and B's unmap returns. B frees the frame; the device still hits its
/// IOTLB entry (SMMUEN is still 1, no CFGI/TLBI ever reached the SMMU) and reads the new
/// owner's data.
#[test]
fn an_unmap_during_another_contexts_abort_returns_only_once_translation_is_off() {
    let (w, (read, after_free, state)) =
        during_another_contexts_abort::<0, _>(|w, b, bond_b, frame_b| {
            b.unmap(w, bond_b.asid().unwrap(), VA, 1);
            // B's unmap returned: the frame has a new owner.
            w.mem.fill_frame(frame_b, 0x99).unwrap();
            let mut buf = [0u8; 8];
            let read = w.device(2).read(VirtAddr(VA), &mut buf);
            (read, buf, bond_b.state())
        });
    assert!(
        matches!(read, Err(DmaError::Fault { .. })),
        "B's unmap returned ({state:?}) while the SMMU still translated it: the device read \
         the freed frame: {read:?} {after_free:x?}; stale: {:?}",
        w.model.stale_translations()
    );
}

/// Review finding 1b (failed before the fix). The same window, B's last user goes instead: release's quiesce is refused
/// with `Disabled`, B becomes `Released` and `mmput` returns while B's stream still
/// translates through its IOTLB. The page tables are freed and reused (the leaf now points
/// elsewhere); a device write still lands in B's old frame.
#[test]
fn mmput_during_another_contexts_abort_returns_only_once_translation_is_off() {
    let (w, (write, frame_b, state)) =
        during_another_contexts_abort::<1, _>(|w, b, bond_b, frame_b| {
            assert!(b.mm.mmput(), "B's last user");
            let state = bond_b.state();
            // Teardown: the frame and the table pages go back to the allocator.
            let trap = w.mem.alloc_zeroed().unwrap();
            b.tables.remap(VirtAddr(VA), trap).unwrap();
            (w.device(2).write(VirtAddr(VA), &[0xee; 8]), frame_b, state)
        });
    assert!(
        matches!(write, Err(DmaError::Fault { .. })),
        "mmput returned ({state:?}) while B's context still translated: {write:?}, old frame \
         now {:#x}",
        w.byte(frame_b)
    );
    assert_eq!(w.byte(frame_b), 0x22, "the freed frame was written");
}

/// Review finding 2 (failed before the fix). The last unbind detaches the stream, then
/// `destroy_context` fails (its TLBI_NH_ASID is refused with CERROR_ILL, the queue runs on).
/// Before, SVA quiesced the context and reported success while its CD and ASID stayed
/// allocated for ever. Now the failure is counted, the quiesced context is destroyed once
/// more, and nothing leaks.
#[test]
fn a_failed_destroy_on_the_last_unbind_is_counted_and_retried_so_nothing_leaks() {
    let w = world::<2>(false);
    let s = w.space();
    w.map(&s, VA, 0x5a);
    let before_bind = w.mem.frames_in_use();
    let bond = sva::bind::<Domain<2>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    w.device(1).read(VirtAddr(VA), &mut [0u8; 8]).unwrap();
    w.model.set_knobs(Knobs {
        fail_command: Some((Some(opcode::TLBI_NH_ASID), CommandErrorCode::Illegal)),
        ..Knobs::default()
    });
    let unbound = bond.unbind();
    w.model.set_knobs(Knobs::default());
    let stats = w.sva.stats();
    let leaked = w.mem.frames_in_use() - before_bind;
    assert_eq!(unbound, Ok(()), "destroyed on the second try");
    assert_eq!(
        (stats.failures, stats.contexts_destroyed, stats.aborts, leaked),
        (1, 1, 0, 0),
        "{stats:?}; {leaked} frame(s) of CD leaked"
    );
    assert!(!w.smmu.is_disabled());
}

// ---- interleavings the protocol gets right (these pass on e74ba6f) ------------------------

/// The first bind of an address space has created the context (`Live`) and is attaching its
/// stream when the last user goes; the attach then fails. Release waits for the bind; the bind
/// destroys the context it made (`Gone`) and fails; release finds nothing to do. No abort, no
/// failure, no context left, nothing translates.
#[test]
fn a_failing_first_attach_racing_release_leaves_nothing() {
    let w = world::<8>(true);
    let d = w.double();
    let s = w.space();
    w.map(&s, VA, 0x5a);
    d.hold_at(Op::Attach);
    let (bound, overlapped) = thread::scope(|scope| {
        let bind = scope.spawn(|| sva::bind::<Domain<8>>(1, &s.mm, s.tables.root(), MAIR));
        d.wait_for_arrival();
        let release = scope.spawn(|| assert!(s.mm.mmput()));
        let overlapped = finishes_alone(&release);
        d.fail_next(Op::Attach, SmmuError::Disabled);
        d.open();
        let bound = bind.join().unwrap();
        release.join().unwrap();
        (bound.map(|b| b.state()), overlapped)
    });
    assert!(!overlapped, "release ran while the bind held a fresh context");
    assert_eq!(bound.unwrap_err(), SvaError::Smmu(SmmuError::Disabled));
    let stats = w.sva.stats();
    assert_eq!(
        (stats.contexts_created, stats.contexts_destroyed, stats.failures, stats.aborts),
        (1, 1, 0, 0),
        "{stats:?}"
    );
    assert!(!w.smmu.is_disabled());
    assert!(w.device(1).touch(VirtAddr(VA), AccessKind::Read).is_err());
}

/// Release is inside its quiesce (holding `control`) when an unmap's invalidation fails. The
/// failing CPU must wait for the quiesce, then find the context `Released` and return: no
/// second quiesce, no abort.
#[test]
fn an_invalidation_failing_during_release_waits_for_the_quiesce_and_does_not_escalate() {
    let w = world::<9>(true);
    let d = w.double();
    let s = w.space();
    let frame = w.map(&s, VA, 0x5a);
    let bond = sva::bind::<Domain<9>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    let asid = bond.asid().unwrap();
    w.device(1).read(VirtAddr(VA), &mut [0u8; 8]).unwrap();
    d.hold_at(Op::Quiesce);
    let overlapped = thread::scope(|scope| {
        let release = scope.spawn(|| assert!(s.mm.mmput()));
        d.wait_for_arrival();
        d.fail_next(
            Op::InvalidateRange,
            SmmuError::CommandQueueFull { needed: 3, free: 0 },
        );
        let unmap = scope.spawn(|| s.unmap(&w, asid, VA, 1));
        let overlapped = finishes_alone(&unmap);
        d.open();
        release.join().unwrap();
        unmap.join().unwrap();
        overlapped
    });
    assert!(!overlapped, "the failed invalidation returned before release's quiesce");
    assert_eq!(bond.state(), ContextState::Released);
    w.mem.fill_frame(frame, 0x99).unwrap();
    assert!(w.device(1).read(VirtAddr(VA), &mut [0u8; 8]).is_err());
    let stats = w.sva.stats();
    assert_eq!(stats.aborts, 0, "{stats:?}");
    assert!(!w.smmu.is_disabled());
    assert!(w.model.stale_translations().is_empty());
    bond.unbind().unwrap();
}

/// An invalidation failed and its recovery is quiescing (holding `control`) when the last
/// user goes. Release waits, then finds `Broken` and returns; the context no longer
/// translates when `mmput` returns.
#[test]
fn release_waits_for_a_recovery_in_progress() {
    let w = world::<10>(true);
    let d = w.double();
    let s = w.space();
    w.map(&s, VA, 0x5a);
    w.map(&s, VA + PAGE, 0x5b);
    let bond = sva::bind::<Domain<10>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    let asid = bond.asid().unwrap();
    w.device(1).read(VirtAddr(VA + PAGE), &mut [0u8; 8]).unwrap();
    d.fail_next(Op::InvalidateRange, SmmuError::Disabled);
    d.hold_at(Op::Quiesce);
    let overlapped = thread::scope(|scope| {
        let unmap = scope.spawn(|| s.unmap(&w, asid, VA, 1));
        d.wait_for_arrival();
        let release = scope.spawn(|| assert!(s.mm.mmput()));
        let overlapped = finishes_alone(&release);
        d.open();
        unmap.join().unwrap();
        release.join().unwrap();
        overlapped
    });
    assert!(!overlapped, "release returned while the recovery was quiescing");
    assert_eq!(bond.state(), ContextState::Broken);
    assert!(w.device(1).read(VirtAddr(VA + PAGE), &mut [0u8; 8]).is_err());
    let stats = w.sva.stats();
    assert_eq!(stats.aborts, 0, "{stats:?}");
    assert!(w.model.stale_translations().is_empty());
    let _ = bond.unbind();
}

/// An invalidation without user reference (the OOM reaper's) read `Live` and is about to call
/// the driver when the last unbind destroys the context. The driver answers "no such context",
/// which is not a failure: the destroy invalidated the ASID with every stream detached.
#[test]
fn an_invalidation_overtaken_by_the_last_unbind_is_not_a_failure() {
    let w = world::<11>(true);
    let d = w.double();
    let s = w.space();
    let frame = w.map(&s, VA, 0x5a);
    let bond = sva::bind::<Domain<11>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    let asid = bond.asid().unwrap();
    w.device(1).read(VirtAddr(VA), &mut [0u8; 8]).unwrap();
    d.hold_at(Op::InvalidateRange);
    thread::scope(|scope| {
        let unmap = scope.spawn(|| s.unmap(&w, asid, VA, 1));
        d.wait_for_arrival();
        bond.unbind().unwrap();
        d.open();
        unmap.join().unwrap();
    });
    w.mem.fill_frame(frame, 0x99).unwrap();
    assert!(w.device(1).read(VirtAddr(VA), &mut [0u8; 8]).is_err());
    let stats = w.sva.stats();
    assert_eq!(
        (stats.invalidations, stats.failures, stats.aborts, stats.contexts_destroyed),
        (1, 0, 0, 1),
        "{stats:?}"
    );
    assert!(!w.smmu.is_disabled());
    assert!(w.model.stale_translations().is_empty());
}

/// A second stream is being attached to a live context when the last user goes: release waits
/// and its quiesce covers the new stream too.
#[test]
fn release_racing_a_second_bind_quiesces_both_streams() {
    let w = world::<12>(true);
    let d = w.double();
    let s = w.space();
    w.map(&s, VA, 0x5a);
    let first = sva::bind::<Domain<12>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    w.device(1).read(VirtAddr(VA), &mut [0u8; 8]).unwrap();
    d.hold_at(Op::Attach);
    let (second, overlapped) = thread::scope(|scope| {
        let bind = scope.spawn(|| sva::bind::<Domain<12>>(2, &s.mm, s.tables.root(), MAIR));
        d.wait_for_arrival();
        let release = scope.spawn(|| assert!(s.mm.mmput()));
        let overlapped = finishes_alone(&release);
        d.open();
        let second = bind.join().unwrap().unwrap();
        release.join().unwrap();
        (second, overlapped)
    });
    assert!(!overlapped);
    assert_eq!(second.state(), ContextState::Released);
    for sid in [1u32, 2] {
        let r = w.device(sid).write(VirtAddr(VA), &[0xee]);
        assert!(r.is_err(), "stream {sid} still translates after mmput: {r:?}");
    }
    let stats = w.sva.stats();
    assert_eq!((stats.releases, stats.failures, stats.aborts), (1, 0, 0), "{stats:?}");
    second.unbind().unwrap();
    first.unbind().unwrap();
    assert_eq!(w.sva.stats().contexts_destroyed, 1);
}

/// Unbind racing a failing invalidation: the last unbind holds `control` (held at its detach)
/// when an invalidation without user reference fails. The failing CPU waits for the unbind,
/// finds the context `Gone` (streams detached, ASID invalidated) and returns: no quiesce of a
/// destroyed context, no abort.
#[test]
fn an_invalidation_failing_during_the_last_unbind_waits_and_does_not_escalate() {
    let w = world::<13>(true);
    let d = w.double();
    let s = w.space();
    let frame = w.map(&s, VA, 0x5a);
    let bond = sva::bind::<Domain<13>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    let asid = bond.asid().unwrap();
    w.device(1).read(VirtAddr(VA), &mut [0u8; 8]).unwrap();
    d.hold_at(Op::Detach);
    let (unbound, overlapped) = thread::scope(|scope| {
        let unbind = scope.spawn(|| bond.unbind());
        d.wait_for_arrival();
        d.fail_next(
            Op::InvalidateRange,
            SmmuError::CommandQueueFull { needed: 3, free: 0 },
        );
        let unmap = scope.spawn(|| s.unmap(&w, asid, VA, 1));
        let overlapped = finishes_alone(&unmap);
        d.open();
        let unbound = unbind.join().unwrap();
        unmap.join().unwrap();
        (unbound, overlapped)
    });
    assert!(!overlapped, "the failed invalidation returned while the unbind was detaching");
    assert_eq!(unbound, Ok(()));
    w.mem.fill_frame(frame, 0x99).unwrap();
    assert!(w.device(1).read(VirtAddr(VA), &mut [0u8; 8]).is_err());
    let stats = w.sva.stats();
    assert_eq!((stats.aborts, stats.contexts_destroyed), (0, 1), "{stats:?}");
    assert!(!w.smmu.is_disabled());
    assert!(w.model.stale_translations().is_empty());
}

/// `fail` racing release's own recovery: release's quiesce fails (held first, then refused),
/// and an unmap's invalidation fails meanwhile. The unmap waits for release's recovery (a
/// second quiesce, which succeeds), finds `Broken` and returns; one recovery, no abort.
#[test]
fn an_invalidation_failing_during_releases_recovery_waits_for_it() {
    let w = world::<14>(true);
    let d = w.double();
    let s = w.space();
    let frame = w.map(&s, VA, 0x5a);
    let bond = sva::bind::<Domain<14>>(1, &s.mm, s.tables.root(), MAIR).unwrap();
    let asid = bond.asid().unwrap();
    w.device(1).read(VirtAddr(VA), &mut [0u8; 8]).unwrap();
    d.hold_at(Op::Quiesce);
    d.fail_next(Op::Quiesce, SmmuError::CommandQueueFull { needed: 2, free: 0 });
    let overlapped = thread::scope(|scope| {
        let release = scope.spawn(|| assert!(s.mm.mmput()));
        d.wait_for_arrival();
        d.fail_next(
            Op::InvalidateRange,
            SmmuError::CommandQueueFull { needed: 3, free: 0 },
        );
        let unmap = scope.spawn(|| s.unmap(&w, asid, VA, 1));
        let overlapped = finishes_alone(&unmap);
        d.open();
        release.join().unwrap();
        unmap.join().unwrap();
        overlapped
    });
    assert!(!overlapped, "the failed invalidation returned during release's recovery");
    assert_eq!(bond.state(), ContextState::Broken);
    w.mem.fill_frame(frame, 0x99).unwrap();
    assert!(w.device(1).read(VirtAddr(VA), &mut [0u8; 8]).is_err());
    let stats = w.sva.stats();
    assert_eq!(stats.aborts, 0, "{stats:?}");
    assert!(!w.smmu.is_disabled());
    assert!(w.model.stale_translations().is_empty());
    let _ = bond.unbind();
}

/// Randomised stress (not a proof): binds, unbinds, unlocked unmaps and the last mmput on
/// several threads at once, over many address spaces of one SMMU. Nothing may fail, abort or
/// translate stale, and nothing may translate once mmput and the unbinds returned.
#[test]
fn stress_bind_unbind_unmap_release() {
    let w = world::<15>(false);
    for round in 0..100u64 {
        let s = w.space();
        let frames: Vec<PhysAddr> = (0..4).map(|p| w.map(&s, VA + p * PAGE, p as u8)).collect();
        let warm = sva::bind::<Domain<15>>(3, &s.mm, s.tables.root(), MAIR).ok();
        let asid = warm.as_ref().and_then(|b| b.asid()).unwrap_or(0);
        for p in 0..4 {
            let _ = w.device(3).read(VirtAddr(VA + p * PAGE), &mut [0u8; 4]);
        }
        let next = std::sync::atomic::AtomicU64::new(round * 100);
        thread::scope(|scope| {
            let binder = scope.spawn(|| {
                for _ in 0..3 {
                    if let Ok(b) = sva::bind::<Domain<15>>(1, &s.mm, s.tables.root(), MAIR) {
                        let _ = w.device(1).read(VirtAddr(VA + 3 * PAGE), &mut [0u8; 4]);
                        b.unbind().unwrap();
                    }
                }
            });
            let binder2 = scope.spawn(|| sva::bind::<Domain<15>>(2, &s.mm, s.tables.root(), MAIR));
            let reaper = scope.spawn(|| {
                for p in 0..2 {
                    let id = next.fetch_add(1, Ordering::Relaxed) + 1;
                    s.unmap(&w, asid, VA + p * PAGE, id);
                }
            });
            let dev = scope.spawn(|| {
                for _ in 0..20 {
                    for p in 0..4 {
                        let _ = w.device(2).read(VirtAddr(VA + p * PAGE), &mut [0u8; 4]);
                        let _ = w.device(3).read(VirtAddr(VA + p * PAGE), &mut [0u8; 4]);
                    }
                }
            });
            if round % 2 == 0 {
                thread::yield_now();
            }
            // Release is the unmap of everything: accesses racing it are allowed until it
            // returns, none after.
            let id = round * 100 + 99;
            w.model
                .begin_unmap(asid, VirtAddr(0), VirtAddr(1 << 48), id);
            assert!(s.mm.mmput());
            w.model.end_unmap(id);
            binder.join().unwrap();
            reaper.join().unwrap();
            dev.join().unwrap();
            let b2 = binder2.join().unwrap();
            // After mmput returned nothing translates, whoever won.
            for sid in [2u32, 3] {
                for p in 0..4 {
                    let r = w.device(sid).touch(VirtAddr(VA + p * PAGE), AccessKind::Read);
                    assert!(r.is_err(), "round {round}: stream {sid} page {p} after mmput: {r:?}");
                }
            }
            if let Ok(b) = b2 {
                b.unbind().unwrap();
            }
        });
        let stale = w.model.take_stale_translations();
        assert!(stale.is_empty(), "round {round}: {stale:?}");
        if let Some(b) = warm {
            b.unbind().unwrap();
        }
        let _ = frames;
        let stats = w.sva.stats();
        assert_eq!((stats.failures, stats.aborts), (0, 0), "round {round}: {stats:?}");
    }
    let stats = w.sva.stats();
    assert_eq!(stats.contexts_created, stats.contexts_destroyed, "{stats:?}");
}
