//! Fault injection (see `crate::workload::fault`): each injectable failure on the board's own address
//! spaces and SMMU (QEMU's SMMUv3 behind the backend-boundary injector on `virt-smmu`, the model
//! on the Pi). For each: the documented error or recovery, nothing half-mapped, no stale
//! access, the kernel (and the SMMU) still working afterwards, the failure reported once.
//! The last case runs the soak with every fault kind.

use alloc::sync::Arc;
use alloc::vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::aarch64::aspace;
use crate::arch::aarch64::{cpu_id, smp};
use crate::iommu::backend::model::Knobs;
use crate::iommu::probe::{self, BoardDomain};
use crate::iommu::spec::event::{AccessKind, EventKind};
use crate::iommu::spec::regs::CommandErrorCode;
use crate::iommu::sva::{self, ContextState, SvaDebugKnobs};
use crate::ktest::TestError;
use crate::mm::aspace::{Backing, MmError, Placement};
use crate::mm::notifier::{IntervalNotifier, IntervalNotifierOps, NotifierRange};
use crate::mm::pgtable::descriptor::MAIR_VALUE;
use crate::mm::ram::frames;
use crate::mm::VirtAddr;
use crate::rig::*;
use crate::workload::fault::{Fault, FaultConfig};
use crate::workload::soak::{self, SoakParams};
use crate::{kassert, kassert_eq, kskip, ktest};

const LEN: usize = 16;

ktest!(faults, alloc_failure_mid_map_rolls_back, |_t| {
    let space = aspace::create().map_err(fail)?;
    let frames = frames().ok_or_else(|| fail("no frames"))?;
    let va = 0x4000_0000u64;
    let pages = 8u64;
    let me = cpu_id();
    // The first allocation is a table, the last a data frame: every position fails cleanly.
    for nth in 1..=pages as u32 + 3 {
        let used = frames.bitmap().used_frames();
        crate::mm::inject::arm_alloc_failure(me, nth);
        let r = space.mmap(
            Placement::Fixed(VirtAddr(va)),
            (pages * PAGE) as usize,
            RW,
            Backing::Anonymous,
        );
        let pending = crate::mm::inject::disarm_alloc_failure(me);
        kassert!(!pending, "allocation {nth} was never made");
        kassert_eq!(r, Err(MmError::OutOfMemory), "allocation {nth}");
        kassert!(space.regions().is_empty(), "a region was left behind");
        for p in 0..pages {
            kassert!(
                space.translate(VirtAddr(va + p * PAGE)).is_none(),
                "page {p} left mapped after allocation {nth} failed"
            );
        }
        kassert_eq!(
            frames.bitmap().used_frames(),
            used,
            "frames leaked after allocation {nth} failed"
        );
    }
    // Disarmed, the same mmap works.
    let at = space
        .mmap(
            Placement::Fixed(VirtAddr(va)),
            (pages * PAGE) as usize,
            RW,
            Backing::Anonymous,
        )
        .map_err(fail)?;
    kassert_eq!(at, VirtAddr(va));
    Ok(())
});

/// An interval subscriber that refuses every non-blockable invalidation.
struct Refuser {
    refused: AtomicU64,
    seen: AtomicU64,
    lock: spin::Mutex<()>,
}

impl IntervalNotifierOps for Refuser {
    fn invalidate(&self, sub: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
        if !range.is_blockable() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let _user = self.lock.lock();
        sub.set_seq(cur_seq);
        self.seen.fetch_add(1, Ordering::Relaxed);
        true
    }
}

ktest!(faults, refused_nonblocking_unmap_changes_nothing, |_t| {
    let mut r = Rig::board()?;
    let frame = r.map(VA, 2, RW, 0x5a)?[0];
    r.bind()?;
    let refuser = Arc::new(Refuser {
        refused: AtomicU64::new(0),
        seen: AtomicU64::new(0),
        lock: spin::Mutex::new(()),
    });
    let sub = IntervalNotifier::insert(r.mm(), VA, 2 * PAGE, refuser.clone()).map_err(fail)?;
    r.dev.fetch(VA, LEN)?; // cached in the IOTLB
    let before = r.space().translate(VirtAddr(VA));
    let result = r.space().munmap_nonblocking(VirtAddr(VA), PAGE as usize);
    kassert_eq!(result, Err(MmError::WouldBlock));
    kassert_eq!(refuser.refused.load(Ordering::Relaxed), 1, "refused once");
    kassert_eq!(refuser.seen.load(Ordering::Relaxed), 0);
    kassert!(before.is_some());
    kassert_eq!(
        r.space().translate(VirtAddr(VA)),
        before,
        "the CPU mapping changed"
    );
    kassert_eq!(r.space().regions().len(), 3, "a region changed"); // staging + 2 pages
                                                                   // The device still reads the page, without a fault.
    kassert!(r.dev.fetch(VA, LEN)? != Outcome::Faulted);
    kassert_eq!(r.read_buffer(LEN)?, vec![0x5au8; LEN]);
    kassert!(r.drain_events().is_empty());
    // The blocking unmap goes through, and reaches both the subscriber and the device.
    r.unmap(VA, 1)?;
    kassert_eq!(refuser.seen.load(Ordering::Relaxed), 1);
    r.load_buffer(&[0xee; LEN])?;
    r.dev.store(VA, LEN)?;
    kassert_eq!(
        read(frame, LEN)?,
        vec![0x5au8; LEN],
        "a write through the old entry"
    );
    sub.remove();
    kassert_eq!(r.stale_translation_count(), 0);
    Ok(())
});

ktest!(
    faults,
    cmd_sync_timeout_breaks_the_context_not_the_kernel,
    |_t| {
        let Some(inject) = probe::injector() else {
            kskip!("no SMMU on this board");
        };
        let mut r = Rig::board()?;
        let frame = r.map(VA, 1, RW, 0x33)?[0];
        r.bind()?;
        r.dev.fetch(VA, LEN)?; // cached
        let before = r.smmu.stats();
        let failures = r.sva.stats().failures;
        inject.arm_sync_timeout();
        let unmapped = r.unmap(VA, 1);
        kassert!(!inject.disarm(), "the injected timeout never fired");
        kassert!(unmapped.is_ok(), "munmap must still succeed: {unmapped:?}");
        let after = r.smmu.stats();
        kassert_eq!(after.sync_timeouts, before.sync_timeouts + 1);
        kassert_eq!(r.sva.stats().failures, failures + 1, "reported once");
        kassert_eq!(r.bond().map(|b| b.state()), Some(ContextState::Broken));
        kassert!(
            !r.smmu.is_disabled(),
            "the quiesce completed: the SMMU stays up"
        );
        // The broken context is quiesced: nothing goes through it, quietly.
        r.load_buffer(&[0xee; LEN])?;
        r.dev.store(VA, LEN)?;
        kassert_eq!(read(frame, LEN)?, vec![0x33u8; LEN]);
        kassert_eq!(r.stale_translation_count(), 0);
        r.unbind()?;
        // The kernel and the SMMU keep working: a new binding translates.
        let mut again = Rig::board()?;
        let frame = again.map(VA, 1, RW, 0)?[0];
        again.bind()?;
        again.load_buffer(&[0x21; LEN])?;
        again.dev.store(VA, LEN)?;
        kassert_eq!(read(frame, LEN)?, vec![0x21u8; LEN]);
        kassert!(again.drain_events().is_empty());
        Ok(())
    }
);

ktest!(
    faults,
    command_error_falls_back_to_asid_invalidation,
    |_t| {
        let mut r = Rig::board()?;
        let frame = r.map(VA, 2, RW, 0x44)?[0];
        r.bind()?;
        r.dev.fetch(VA, LEN)?;
        r.dev.fetch(VA + PAGE, LEN)?;
        let before = r.smmu.stats();
        // The model refuses the command itself (its CMDQ_CONS.ERR path); in front of QEMU's SMMU
        // the backend-boundary injector holds the queue before the TLBI and reports it refused.
        match r.model {
            Some(m) => m.set_knobs(Knobs {
                fail_command: Some((None, CommandErrorCode::Illegal)),
                ..m.knobs()
            }),
            None => probe::injector()
                .ok_or_else(|| fail("no injector"))?
                .arm_command_error(),
        }
        r.unmap(VA, 1)?;
        let after = r.smmu.stats();
        kassert_eq!(
            after.command_errors,
            before.command_errors + 1,
            "reported once"
        );
        kassert_eq!(
            after.invalidation_fallbacks,
            before.invalidation_fallbacks + 1
        );
        let failure = after
            .last_command_error
            .ok_or_else(|| fail("no error recorded"))?;
        kassert_eq!(failure.code, CommandErrorCode::Illegal);
        kassert_eq!(r.bond().map(|b| b.state()), Some(ContextState::Live));
        // The unmapped page faults; the other page was invalidated too (whole ASID) and still works.
        r.load_buffer(&[0xee; LEN])?;
        r.dev.store(VA, LEN)?;
        kassert_eq!(read(frame, LEN)?, vec![0x44u8; LEN], "a stale write");
        let ev = r.drain_events();
        kassert!(
            faults(
                &ev,
                EventKind::Translation,
                r.sid,
                VA,
                VA + PAGE,
                AccessKind::Write
            ) >= 1,
            "{ev:?}"
        );
        kassert!(r.dev.fetch(VA + PAGE, LEN)? != Outcome::Faulted);
        kassert_eq!(r.read_buffer(LEN)?, vec![0x44u8; LEN]);
        kassert_eq!(r.stale_translation_count(), 0);
        if let Some(m) = r.model {
            kassert_eq!(m.knobs().fail_command, None);
        }
        Ok(())
    }
);

/// The event queue shrunk for the overflow test: 128 entries, fewer than one faulting page's
/// transactions, more than [`LEN`]'s.
const TINY_EVENTQ_LOG2: u8 = 7;

ktest!(faults, event_queue_overflow_is_reported_once, |_t| {
    let mut r = Rig::board()?;
    r.bind()?;
    let hole = VA + 0x20_0000;
    let per_page = PAGE as usize / r.dev.transaction_size();
    let tiny = 1usize << TINY_EVENTQ_LOG2;
    kassert!(per_page > tiny && LEN / r.dev.transaction_size() <= tiny);
    r.drain_events();
    let losses = r.smmu.stats();
    r.with_event_queue(TINY_EVENTQ_LOG2, || overflow_once(&r, hole, per_page))??;
    let after = r.smmu.stats();
    kassert_eq!(
        (after.event_overflows - losses.event_overflows)
            + (after.event_write_aborts - losses.event_write_aborts),
        1,
        "the loss is counted once"
    );
    // The full queue holds a whole faulting page again.
    r.dev.fetch(hole, PAGE as usize)?;
    let (events, drain) = r.drain_events_reporting();
    kassert!(!drain.overflowed && !drain.write_aborted, "{drain:?}");
    kassert_eq!(events.len(), per_page);
    Ok(())
});

/// A faulting page read into the tiny queue: the loss is reported once, then a short faulting
/// read is recorded in full.
fn overflow_once(r: &Rig<BoardDomain>, hole: u64, per_page: usize) -> Result<(), TestError> {
    let tiny = r.smmu.event_queue_size().in_use.entries() as usize;
    kassert_eq!(tiny, 1 << TINY_EVENTQ_LOG2);
    r.dev.fetch(hole, PAGE as usize)?;
    let (events, drain) = r.drain_events_reporting();
    kassert!(drain.overflowed || drain.write_aborted, "{drain:?}");
    kassert!(
        events.len() <= tiny && events.len() < per_page,
        "{} events kept in a queue of {tiny}: nothing was lost?",
        events.len()
    );
    let reads_faulted = |events: &[crate::iommu::spec::event::EventRecord], len: u64| {
        faults(
            events,
            EventKind::Translation,
            r.sid,
            hole,
            hole + len,
            AccessKind::Read,
        )
    };
    kassert_eq!(reads_faulted(&events, PAGE), events.len());
    // Reported once: the next drain has nothing more to say.
    let (none, quiet) = r.drain_events_reporting();
    kassert!(
        none.is_empty() && !quiet.overflowed && !quiet.write_aborted,
        "{quiet:?}"
    );
    // And the queue works again.
    r.dev.fetch(hole, LEN)?;
    let (events, drain) = r.drain_events_reporting();
    kassert!(!drain.overflowed && !drain.write_aborted);
    let per_len = LEN / r.dev.transaction_size();
    kassert_eq!(reads_faulted(&events, LEN as u64), per_len);
    kassert_eq!(events.len(), per_len);
    Ok(())
}

/// Runs the soak's teardown race on a fresh rig, with release's quiesce skipped if `skip`.
fn teardown_race(skip: bool) -> Result<Result<(), alloc::string::String>, TestError> {
    let mut r = Rig::board()?;
    let root = r.root().ok_or_else(|| fail("no root"))?;
    let bond = sva::bind::<BoardDomain>(r.sid, r.mm(), root, MAIR_VALUE).map_err(fail)?;
    r.sva.set_debug_knobs(SvaDebugKnobs {
        skip_release_quiesce: skip,
        ..SvaDebugKnobs::default()
    });
    let result = soak::teardown_race(&mut r, bond, smp::online_count());
    r.sva.set_debug_knobs(SvaDebugKnobs::default());
    if let Some(m) = r.model {
        let _ = m.take_stale_translations();
    }
    Ok(result?)
}

ktest!(faults, dma_racing_teardown_never_lands, |_t| {
    let outcome = teardown_race(false)?;
    kassert!(outcome.is_ok(), "{outcome:?}");
    Ok(())
});

ktest!(faults, dma_racing_teardown_caught_without_quiesce, |_t| {
    // The same race with release's quiesce switched off: the check must notice.
    let outcome = teardown_race(true)?;
    kassert!(
        outcome.is_err(),
        "the teardown race went unnoticed without the quiesce"
    );
    Ok(())
});

ktest!(faults, soak_survives_every_fault_kind, |t| {
    if probe::smmu().is_none() {
        kskip!("no SMMU on this board");
    }
    let faults = FaultConfig::new(Some("all"), Some(t.seed), Some(1000)).map_err(fail)?;
    let params = SoakParams {
        seed: t.seed,
        rounds: 2,
        faults,
        churn: 1,
        verbose: false,
    };
    let report = soak::soak(params)?;
    let (injected, survived) = report.faults_total();
    crate::println!(
        "    # soak: {} operations, {} DMAs, stale {}, faults injected {injected} survived {survived} {:?}",
        report.operations(),
        report.dma_reads + report.dma_writes,
        report.stale(),
        report.injected
    );
    kassert!(report.errors.is_empty(), "{:?}", report.errors);
    kassert_eq!(report.stale(), 0);
    kassert!(
        injected >= report.cpus as u64,
        "every round should get a fault"
    );
    kassert_eq!(injected, survived);
    kassert!(report
        .injected
        .iter()
        .any(|(f, _, _)| *f == Fault::TeardownRace));
    kassert!(report.passed());
    Ok(())
});
