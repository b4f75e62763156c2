//! Shared virtual addressing on the board's SMMU: a device doing DMA through the virtual
//! addresses of a kernel address space (`AddressSpace`), while that space is unmapped,
//! protected and torn down. QEMU `virt`: `edu` behind the real SMMUv3; Raspberry Pi 4: the
//! model DMA engine behind the SMMU model; plain `virt`: skipped.
//!
//! Every safety property is also run with its protection switched off by the test itself (the
//! driver's skip-invalidation knob, SVA's skip-release-quiesce knob), asserting that the stale
//! access *is* then observed: on QEMU the real IOTLB keeps the old entry (each test uses a new
//! ASID and a handful of pages, far below QEMU's 256-entry flush), on the model the coherence
//! checker names it.

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::arch::aarch64::{smp, timer};
use crate::board::bootargs;
use crate::iommu::backend::model::checker::StaleKind;
use crate::iommu::backend::model::iotlb::IotlbConfig;
use crate::iommu::backend::model::ModelConfig;
use crate::iommu::driver::planner::Strategy;
use crate::iommu::driver::SmmuError;
use crate::iommu::physmem;
use crate::iommu::probe::BoardDomain;
use crate::iommu::spec::event::{AccessKind, EventKind};
use crate::iommu::sva::{self, ContextState, SvaDebugKnobs, SvaError};
use crate::ktest::TestError;
use crate::mm::pgtable::descriptor::MAIR_VALUE;
use crate::mm::ram::frames;
use crate::mm::{PhysAddr, VirtAddr};
use crate::rig::*;
use crate::{kassert, kassert_eq, ktest};

const LEN: usize = 16;

/// Unmap operations noted to the model's checker.
static NEXT_UNMAP: AtomicU64 = AtomicU64::new(1);

/// `munmap` of one page, announced to the model's checker (which then names it in a report).
fn unmap_noted<D: crate::iommu::sva::SvaDomain>(r: &Rig<D>, va: u64) -> Result<(), TestError> {
    let asid = r.bond().and_then(|b| b.asid()).unwrap_or(0);
    let id = NEXT_UNMAP.fetch_add(1, Ordering::Relaxed);
    if let Some(m) = r.model {
        m.begin_unmap(asid, VirtAddr(va), VirtAddr(va + PAGE), id);
    }
    let result = r.unmap(va, 1);
    if let Some(m) = r.model {
        m.end_unmap(id);
    }
    Ok(result?)
}

ktest!(sva, dma_moves_the_right_bytes_through_shared_vas, |t| {
    let mut r = Rig::board()?;
    let frames = r.map(VA, 2, RW, 0)?;
    let out: Vec<u8> = (0..64).map(|_| t.rand() as u8).collect();
    write(PhysAddr(frames[0].as_u64() + 0x100), &out)?;
    r.bind()?;
    // Read: memory at a VA into the device.
    kassert!(r.dev.fetch(VA + 0x100, 64)? != Outcome::Faulted);
    kassert_eq!(r.read_buffer(64)?, out);
    // Write: the device into memory at another VA, and nowhere else.
    let back: Vec<u8> = (0..64).map(|_| t.rand() as u8 | 1).collect();
    r.load_buffer(&back)?;
    kassert!(r.dev.store(VA + PAGE + 0x80, 64)? != Outcome::Faulted);
    kassert_eq!(read(PhysAddr(frames[1].as_u64() + 0x80), 64)?, back);
    kassert!(read(frames[1], 0x80)?.iter().all(|&b| b == 0));
    kassert!(read(PhysAddr(frames[1].as_u64() + 0xc0), 64)?
        .iter()
        .all(|&b| b == 0));
    let events = r.drain_events();
    kassert!(events.is_empty(), "unexpected SMMU events: {events:?}");
    kassert_eq!(r.stale_translation_count(), 0);
    Ok(())
});

/// What a device saw after the page it had cached was unmapped.
struct AfterUnmap {
    /// The device buffer after a DMA read of the VA.
    read: Vec<u8>,
    /// The old frame after a DMA write of 0xee to the VA.
    frame: Vec<u8>,
    events: Vec<crate::iommu::spec::event::EventRecord>,
    stale: Vec<crate::iommu::backend::model::checker::StaleTranslation>,
    asid: u16,
    sid: u32,
    on_model: bool,
}

/// Maps a page of 0x5a, lets the device cache it, unmaps it (the invalidation skipped if
/// `skip`), then has the device read and write there.
fn dma_after_unmap(skip: bool) -> Result<AfterUnmap, TestError> {
    let mut r = Rig::board()?;
    let frame = r.map(VA, 1, RW, 0x5a)?[0];
    r.bind()?;
    let asid = r.bond().and_then(|b| b.asid()).unwrap_or(0);
    r.dev.fetch(VA, LEN)?; // the IOTLB now holds VA
    if skip {
        r.without_invalidation(|| unmap_noted(&r, VA))?;
    } else {
        unmap_noted(&r, VA)?;
    }
    r.dev.fetch(VA, LEN)?;
    let read_back = r.read_buffer(LEN)?;
    r.load_buffer(&[0xee; LEN])?;
    r.dev.store(VA, LEN)?;
    let frame_now = read(frame, LEN)?;
    let events = r.drain_events();
    let stale = r
        .model
        .map(|m| m.take_stale_translations())
        .unwrap_or_default();
    // Unbinding invalidates the whole ASID: a stale entry is gone before the frame is freed.
    r.unbind()?;
    Ok(AfterUnmap {
        read: read_back,
        frame: frame_now,
        events,
        stale,
        asid,
        sid: r.sid,
        on_model: r.model.is_some(),
    })
}

ktest!(sva, dma_after_munmap_faults_and_touches_nothing, |_t| {
    let a = dma_after_unmap(false)?;
    let sid = a.sid;
    kassert_eq!(
        a.read,
        vec![0u8; LEN],
        "a faulting read must deliver zeros, not the old frame"
    );
    kassert_eq!(
        a.frame,
        vec![0x5au8; LEN],
        "the write reached the unmapped frame"
    );
    let reads = faults(
        &a.events,
        EventKind::Translation,
        sid,
        VA,
        VA + LEN as u64,
        AccessKind::Read,
    );
    let writes = faults(
        &a.events,
        EventKind::Translation,
        sid,
        VA,
        VA + LEN as u64,
        AccessKind::Write,
    );
    kassert!(
        reads >= 1 && writes >= 1,
        "no F_TRANSLATION for SID {sid:#x} at {VA:#x}: {:?}",
        a.events
    );
    kassert_eq!(
        reads + writes,
        a.events.len(),
        "other events: {:?}",
        a.events
    );
    kassert!(a.stale.is_empty(), "checker: {:?}", a.stale);
    Ok(())
});

ktest!(
    sva,
    stale_translation_observed_when_invalidation_skipped,
    |_t| {
        // The same sequence with the invalidation switched off by the test: this is what the test
        // above would see if munmap did not reach the IOTLB.
        let a = dma_after_unmap(true)?;
        kassert_eq!(
            a.read,
            vec![0x5au8; LEN],
            "the stale entry should have served the old frame"
        );
        kassert_eq!(
            a.frame,
            vec![0xeeu8; LEN],
            "the stale entry should have let the write through"
        );
        kassert!(
            !a.events.iter().any(|e| e.kind == EventKind::Translation),
            "a stale hit raises no fault: {:?}",
            a.events
        );
        if a.on_model {
            let s = a
                .stale
                .first()
                .ok_or_else(|| fail("the checker saw nothing"))?;
            kassert_eq!(s.kind, StaleKind::UseAfterUnmap);
            kassert_eq!((s.asid, s.va.as_u64() & !(PAGE - 1)), (Some(a.asid), VA));
            kassert!(s.last_unmap.is_some(), "the unmap should be named: {s}");
        }
        Ok(())
    }
);

ktest!(sva, mprotect_read_only_then_writable_again, |_t| {
    let mut r = Rig::board()?;
    let frame = r.map(VA, 1, RW, 0)?[0];
    r.bind()?;
    r.load_buffer(&[0x21; LEN])?;
    r.dev.store(VA, LEN)?; // caches a writable entry
    kassert_eq!(read(frame, LEN)?, vec![0x21u8; LEN]);
    r.protect(VA, 1, RO)?;
    r.load_buffer(&[0x42; LEN])?;
    r.dev.store(VA, LEN)?;
    kassert_eq!(
        read(frame, LEN)?,
        vec![0x21u8; LEN],
        "write through a read-only mapping"
    );
    let ev = r.drain_events();
    let perm = faults(
        &ev,
        EventKind::Permission,
        r.sid,
        VA,
        VA + LEN as u64,
        AccessKind::Write,
    );
    kassert!(
        perm >= 1 && perm == ev.len(),
        "expected F_PERMISSION writes only: {ev:?}"
    );
    r.dev.fetch(VA, LEN)?;
    kassert_eq!(
        r.read_buffer(LEN)?,
        vec![0x21u8; LEN],
        "reads must still work"
    );
    // Upgrade: a read-only entry the SMMU cached must not keep faulting writes.
    r.protect(VA, 1, RW)?;
    r.load_buffer(&[0x63; LEN])?;
    r.dev.store(VA, LEN)?;
    kassert_eq!(
        read(frame, LEN)?,
        vec![0x63u8; LEN],
        "the upgrade was not seen"
    );
    let ev = r.drain_events();
    kassert!(ev.is_empty(), "{ev:?}");
    kassert_eq!(r.stale_translation_count(), 0);
    Ok(())
});

ktest!(
    sva,
    permission_upgrade_unseen_when_invalidation_skipped,
    |_t| {
        // The 2023 permission-upgrade bug: the SMMU cached the read-only entry and nothing told it
        // about the upgrade, so device writes keep faulting.
        let mut r = Rig::board()?;
        let frame = r.map(VA, 1, RO, 0x10)?[0];
        r.bind()?;
        r.dev.fetch(VA, LEN)?; // caches the read-only entry
        r.without_invalidation(|| r.protect(VA, 1, RW))?;
        r.load_buffer(&[0x77; LEN])?;
        r.dev.store(VA, LEN)?;
        kassert_eq!(
            read(frame, LEN)?,
            vec![0x10u8; LEN],
            "the stale read-only entry should have refused the write"
        );
        let ev = r.drain_events();
        kassert!(
            faults(
                &ev,
                EventKind::Permission,
                r.sid,
                VA,
                VA + LEN as u64,
                AccessKind::Write
            ) >= 1,
            "{ev:?}"
        );
        if let Some(m) = r.model {
            let stale = m.take_stale_translations();
            kassert!(
                stale.iter().any(|s| s.kind == StaleKind::SpuriousFault),
                "{stale:?}"
            );
        }
        Ok(())
    }
);

/// What a device saw writing to a page aged by `clear_flush_young`: the frame after the
/// first write and after the re-issued one, the events drained after each, and whether the
/// page was young at the end.
struct AfterAgeing {
    first: Vec<u8>,
    first_events: Vec<crate::iommu::spec::event::EventRecord>,
    reissued: Vec<u8>,
    reissued_events: Vec<crate::iommu::spec::event::EventRecord>,
    young: bool,
    answered: u64,
    sid: u32,
    stale: usize,
}

/// Maps a page of 0x5a, lets the device cache it, ages it, then has the device write 0xa1
/// there; drains the events through SVA (which answers F_ACCESS unless `answer` is off) and
/// has the device re-issue the write, as its driver would: the SMMU terminated the first one.
fn device_write_after_ageing(answer: bool) -> Result<AfterAgeing, TestError> {
    let mut r = Rig::board()?;
    let frame = r.map(VA, 1, RW, 0x5a)?[0];
    r.bind()?;
    r.dev.fetch(VA, LEN)?; // the IOTLB now holds VA
    let aged = r
        .space()
        .clear_flush_young(VirtAddr(VA), PAGE as usize)
        .map_err(fail)?;
    kassert!(aged, "a fresh mapping was not young");
    r.load_buffer(&[0xa1; LEN])?;
    let before = r.sva.debug_knobs();
    r.sva.set_debug_knobs(SvaDebugKnobs {
        skip_access_fault_answer: !answer,
        ..before
    });
    let answered_before = r.sva.stats().access_faults_answered;
    let result = (|| {
        r.dev.store(VA, LEN)?;
        let first = read(frame, LEN)?;
        let first_events = r.drain_events();
        r.dev.store(VA, LEN)?;
        Ok::<_, TestError>(AfterAgeing {
            first,
            first_events,
            reissued: read(frame, LEN)?,
            reissued_events: r.drain_events(),
            young: r.space().test_young(VirtAddr(VA)).map_err(fail)?,
            answered: r.sva.stats().access_faults_answered - answered_before,
            sid: r.sid,
            stale: r.stale_translation_count(),
        })
    })();
    r.sva.set_debug_knobs(before);
    result
}

/// The F_ACCESS writes of `sid` to `[VA, VA + LEN)`, checked to be all of `events`.
fn access_writes(
    events: &[crate::iommu::spec::event::EventRecord],
    sid: u32,
) -> Result<usize, TestError> {
    let n = faults(events, EventKind::Access, sid, VA, VA + LEN as u64, AccessKind::Write);
    kassert!(n >= 1, "no F_ACCESS for SID {sid:#x} at {VA:#x}: {events:?}");
    kassert_eq!(n, events.len(), "other events: {:?}", events);
    Ok(n)
}

ktest!(sva, device_access_after_ageing_faults_until_the_event_is_answered, |_t| {
    let a = device_write_after_ageing(true)?;
    kassert_eq!(a.first, vec![0x5au8; LEN], "a write reached the aged page");
    let faults = access_writes(&a.first_events, a.sid)?;
    kassert_eq!(a.answered, faults as u64, "every F_ACCESS is answered");
    kassert_eq!(a.reissued, vec![0xa1u8; LEN], "the re-issued write did not land");
    kassert!(a.reissued_events.is_empty(), "{:?}", a.reissued_events);
    kassert!(a.young, "the answer left the page old");
    kassert_eq!(a.stale, 0);
    Ok(())
});

ktest!(sva, device_access_after_ageing_keeps_faulting_when_unanswered, |_t| {
    // The failing twin: nothing makes the page young, so every re-issue faults again.
    let a = device_write_after_ageing(false)?;
    kassert_eq!(a.first, vec![0x5au8; LEN]);
    access_writes(&a.first_events, a.sid)?;
    kassert_eq!(a.answered, 0);
    kassert_eq!(a.reissued, vec![0x5au8; LEN], "the re-issued write reached an old page");
    access_writes(&a.reissued_events, a.sid)?;
    kassert!(!a.young);
    Ok(())
});

/// The four table frames a walk of `va` from `root` goes through (levels 0-3).
fn table_frames(root: PhysAddr, va: u64) -> Vec<PhysAddr> {
    let mut out = vec![root];
    let mut table = root;
    for level in 0..3 {
        let index = (va >> (39 - 9 * level)) & 0x1ff;
        let Ok(d) = physmem::load(
            &LINEAR,
            PhysAddr(table.as_u64() + 8 * index),
            Ordering::Acquire,
        ) else {
            break;
        };
        if d & 0b11 != 0b11 {
            break;
        }
        table = PhysAddr(d & 0x0000_ffff_ffff_f000);
        out.push(table);
    }
    out
}

struct AfterTeardown {
    state: ContextState,
    frame: Vec<u8>,
    /// Freed table frames whose scribble changed (the SMMU wrote through one).
    scribbles_touched: usize,
    events: Vec<crate::iommu::spec::event::EventRecord>,
    stale: usize,
    on_model: bool,
}

/// Tears the address space down under a bound device (release quiesce skipped if `skip`),
/// scribbles over the freed table frames as a reuse would, then has the device write.
fn teardown_while_bound(skip: bool) -> Result<AfterTeardown, TestError> {
    let mut r = Rig::board()?;
    let frame = r.map(VA, 1, RW, 0x33)?[0];
    r.bind()?;
    r.load_buffer(&[0x44; LEN])?;
    r.dev.store(VA, LEN)?; // caches VA
    kassert_eq!(read(frame, LEN)?, vec![0x44u8; LEN]);
    r.load_buffer(&[0xee; LEN])?; // the last use of the staging page
    let tables = table_frames(r.root().ok_or_else(|| fail("no root"))?, VA);
    kassert_eq!(tables.len(), 4);
    r.sva.set_debug_knobs(SvaDebugKnobs {
        skip_release_quiesce: skip,
        ..SvaDebugKnobs::default()
    });
    r.teardown(); // the last user: release, then the page tables are freed
    r.sva.set_debug_knobs(SvaDebugKnobs::default());
    let state = r.bond().map_or(ContextState::Gone, |b| b.state());
    // Reuse of the freed tables, as another owner would: every word a valid descriptor
    // pointing at its own frame (a table at levels 0-2, a writable page at level 3). Frames
    // that were already handed out again are left alone.
    let bitmap = frames().ok_or_else(|| fail("no frames"))?.bitmap();
    let mut scribbled = Vec::new();
    for &t in &tables {
        if bitmap.is_allocated(t) == Ok(false) {
            let d = t.as_u64() | 0b11 | (1 << 10);
            for i in 0..512 {
                physmem::store(&LINEAR, PhysAddr(t.as_u64() + 8 * i), d, Ordering::Release)
                    .map_err(fail)?;
            }
            scribbled.push(t);
        }
    }
    // The cached page, and its neighbour, which only a walk of the freed tables could reach.
    r.dev.store(VA, LEN)?;
    r.dev.store(VA + PAGE, LEN)?;
    let frame_now = read(frame, LEN)?;
    let mut touched = 0;
    for &t in &scribbled {
        let d = t.as_u64() | 0b11 | (1 << 10);
        let changed = (0..512).any(|i| {
            physmem::load(&LINEAR, PhysAddr(t.as_u64() + 8 * i), Ordering::Acquire) != Ok(d)
        });
        touched += usize::from(changed);
        // Leave free frames as the allocator expects nothing of them (zeroed on allocation).
        physmem::fill(&LINEAR, t, PAGE as usize, 0).map_err(fail)?;
    }
    let events = r.drain_events();
    let stale = r.model.map_or(0, |m| m.take_stale_translations().len());
    r.unbind()?;
    if skip {
        // Without the quiesce the device walked the scribbled tables, whose leaves are global
        // (nG = 0): such IOTLB entries match every ASID and survive the unbind's TLBI by ASID
        // (Arm ARM D8.4.3, SMMUv3 §4.4.2.2), so a later address space would hit them. Only an
        // invalidation of everything removes the damage this twin does on purpose.
        r.smmu.invalidate_all().map_err(fail)?;
    }
    Ok(AfterTeardown {
        state,
        frame: frame_now,
        scribbles_touched: touched,
        events,
        stale,
        on_model: r.model.is_some(),
    })
}

ktest!(
    sva,
    teardown_while_bound_quiesces_and_faults_quietly,
    |_t| {
        let a = teardown_while_bound(false)?;
        kassert_eq!(a.state, ContextState::Released);
        kassert_eq!(a.frame, vec![0x44u8; LEN], "the device wrote after release");
        kassert_eq!(a.scribbles_touched, 0, "the SMMU walked freed page tables");
        kassert!(
            a.events.is_empty(),
            "release faults must be quiet: {:?}",
            a.events
        );
        kassert_eq!(a.stale, 0);
        Ok(())
    }
);

ktest!(
    sva,
    teardown_without_quiesce_leaves_the_device_translating,
    |_t| {
        let a = teardown_while_bound(true)?;
        kassert_eq!(
            a.frame,
            vec![0xeeu8; LEN],
            "without the quiesce the cached entry should still be used"
        );
        if a.on_model {
            kassert!(a.stale > 0, "the checker should have seen it");
        }
        Ok(())
    }
);

ktest!(sva, bad_dma_and_bad_binds_are_errors, |_t| {
    let mut r = Rig::board()?;
    let root = r.root().ok_or_else(|| fail("no root"))?;
    r.bind()?;
    // DMA to a VA that was never mapped.
    let hole = VA + 0x40_0000;
    r.dev.fetch(hole, LEN)?;
    kassert_eq!(r.read_buffer(LEN)?, vec![0u8; LEN]);
    let ev = r.drain_events();
    kassert!(
        faults(
            &ev,
            EventKind::Translation,
            r.sid,
            hole,
            hole + LEN as u64,
            AccessKind::Read
        ) >= 1,
        "{ev:?}"
    );
    // The same stream again, in this or another address space.
    let err = sva::bind::<BoardDomain>(r.sid, r.mm(), root, MAIR_VALUE).map(|_| ());
    kassert_eq!(err, Err(SvaError::Smmu(SmmuError::StreamBusy(r.sid))));
    let other = Rig::board()?;
    let other_root = other.root().ok_or_else(|| fail("no root"))?;
    let err = sva::bind::<BoardDomain>(r.sid, other.mm(), other_root, MAIR_VALUE).map(|_| ());
    kassert_eq!(err, Err(SvaError::Smmu(SmmuError::StreamBusy(r.sid))));
    // A StreamID beyond the stream table.
    let err = sva::bind::<BoardDomain>(0x1_0000, other.mm(), other_root, MAIR_VALUE).map(|_| ());
    kassert!(
        matches!(
            err,
            Err(SvaError::Smmu(SmmuError::SidOutOfRange {
                sid: 0x1_0000,
                ..
            }))
        ),
        "{err:?}"
    );
    // Another page-table root for an address space that is already bound.
    let err = sva::bind::<BoardDomain>(r.sid + 1, r.mm(), other_root, MAIR_VALUE).map(|_| ());
    kassert!(matches!(err, Err(SvaError::RootMismatch { .. })), "{err:?}");
    // Nothing above changed the binding.
    kassert_eq!(
        r.bond().map(|b| b.subscription().map(|s| s.users())),
        Some(Some(1))
    );
    kassert!(r.drain_events().is_empty());
    Ok(())
});

ktest!(sva, unrelated_mappings_stay_cached_after_an_unmap, |_t| {
    // Needs the model's IOTLB counters: a private model SMMU, with Linux's policy and with the
    // ASID-wide strategy for contrast.
    for (strategy, hits) in [(Strategy::Auto, 8), (Strategy::Asid, 0)] {
        let cfg = crate::iommu::driver::SmmuConfig {
            strategy,
            ..Rig::small_config()
        };
        let model_cfg = ModelConfig {
            iotlb: IotlbConfig::QEMU,
            ..ModelConfig::default()
        };
        let mut r = Rig::model(model_cfg, cfg)?;
        let (a, b) = (VA, VA + 0x10_0000);
        r.map(a, 8, RW, 1)?;
        r.map(b, 8, RW, 2)?;
        r.bind()?;
        for i in 0..8 {
            r.dev.fetch(a + i * PAGE, 4)?;
            r.dev.fetch(b + i * PAGE, 4)?;
        }
        r.unmap(b, 8)?;
        let m = r.model.ok_or_else(|| fail("no model"))?;
        m.reset_stats();
        for i in 0..8 {
            kassert_eq!(r.dev.fetch(a + i * PAGE, 4)?, Outcome::Clean);
        }
        let s = m.stats();
        kassert_eq!(
            (s.iotlb_hits, s.iotlb_misses),
            (hits, 8 - hits),
            "strategy {}",
            strategy.name()
        );
        for i in 0..8 {
            kassert_eq!(r.dev.fetch(b + i * PAGE, 4)?, Outcome::Faulted);
        }
        kassert!(m.stale_translations().is_empty());
        kassert_eq!(m.open_unmaps(), 0, "an unmap window left open excuses later changes");
    }
    Ok(())
});

// One page per (CPU, slot); page `p` is unmapped by CPU `p % cpus`.
ktest!(sva, smp_unmaps_on_every_cpu_while_dma_runs, |_t| {
    let mut r = Rig::board()?;
    // The kernel SMMU's counters run since boot (the `faults` suite times out on purpose).
    let timeouts_before = r.smmu.stats().sync_timeouts;
    let cpus = smp::online_count().clamp(1, 4);
    let rounds_factor = bootargs().sva_smp_rounds.unwrap_or(1);
    // edu: one page per CPU and 3 laps (12 transfers, ~1.2 s of virtual time).
    let (per_cpu, laps) = if r.dev.is_edu() { (1, 3) } else { (16, 8) };
    let pages = (cpus * per_cpu) as u64;
    let laps = laps * rounds_factor;
    let dmas = pages * laps;
    let frames = r.map(VA, pages, RW, 0)?;
    r.load_buffer(&[0xee; LEN])?;
    r.bind()?;
    let asid = r.bond().and_then(|b| b.asid()).unwrap_or(0);
    let issued = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    // DMA index issued last before page p's unmap returned (u64::MAX: not unmapped yet).
    let snapshot: Vec<AtomicU64> = (0..pages).map(|_| AtomicU64::new(u64::MAX)).collect();
    let post_unmap_hits = AtomicUsize::new(0);
    let errors = spin::Mutex::new(Vec::new());
    // F_TRANSLATION events of each DMA (one transfer runs at a time, and its events are
    // drained right after it, so they are its own; the queue never overflows).
    let dma_faults: Vec<AtomicU64> = (0..dmas).map(|_| AtomicU64::new(0)).collect();
    let va = |p: u64| VA + p * PAGE;
    // The first lap caches every page in the IOTLB. Page p is unmapped once DMA number
    // `trigger(p)` was issued (the first unmap races with a transfer to its own page), spread
    // over the middle laps; the last lap comes entirely after every unmap.
    let trigger = |p: u64| pages + 1 + p * (laps - 2);
    let unmap_page = |p: u64| {
        let id = NEXT_UNMAP.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = r.model {
            m.begin_unmap(asid, VirtAddr(va(p)), VirtAddr(va(p) + PAGE), id);
        }
        if let Err(e) = r.unmap(va(p), 1) {
            errors
                .lock()
                .push(alloc::format!("unmap of page {p}: {e:?}"));
        }
        snapshot[p as usize].store(issued.load(Ordering::SeqCst), Ordering::SeqCst);
        if let Some(m) = r.model {
            m.end_unmap(id);
        }
        // Completed before returning: the very next access on this CPU must fault (at an
        // offset no DMA uses, so its event is not mistaken for one of a transfer).
        if let Some(Ok(_)) = r.dev.touch(VirtAddr(va(p) + PAGE / 2), AccessKind::Write) {
            post_unmap_hits.fetch_add(1, Ordering::Relaxed);
        }
    };
    let drain = |k: u64| {
        let target = va(k % pages);
        let n = faults(
            &r.drain_events(),
            EventKind::Translation,
            r.sid,
            target,
            target + LEN as u64,
            AccessKind::Write,
        );
        dma_faults[k as usize].store(n as u64, Ordering::Relaxed);
    };
    let start = timer::now_ns();
    smp::on_each_cpu(&|cpu| {
        if cpu >= cpus {
            return;
        }
        let mine = (0..pages).filter(|p| *p as usize % cpus == cpu);
        if cpu == 0 {
            // CPU 0 drives the device, and unmaps its own pages between transfers.
            let mut own: Vec<u64> = mine.collect();
            own.reverse();
            for k in 0..dmas {
                issued.store(k + 1, Ordering::SeqCst);
                if let Err(e) = r.dev.start_store(va(k % pages), LEN) {
                    errors.lock().push(alloc::format!("DMA {k}: {e:?}"));
                    break;
                }
                while own.last().is_some_and(|p| trigger(*p) <= k + 1) {
                    let p = own.pop().unwrap_or_default();
                    unmap_page(p);
                }
                if let Err(e) = r.dev.wait() {
                    errors.lock().push(alloc::format!("DMA {k}: {e:?}"));
                    break;
                }
                drain(k);
            }
            for p in own {
                unmap_page(p);
            }
            done.store(true, Ordering::SeqCst);
        } else {
            for p in mine {
                while issued.load(Ordering::SeqCst) < trigger(p) && !done.load(Ordering::SeqCst) {
                    core::hint::spin_loop();
                }
                unmap_page(p);
            }
        }
    });
    let elapsed_ms = (timer::now_ns() - start) / 1_000_000;
    let errors = errors.into_inner();
    kassert!(errors.is_empty(), "{errors:?}");
    kassert_eq!(
        post_unmap_hits.load(Ordering::Relaxed),
        0,
        "a translation survived its unmap"
    );
    // A DMA issued after its page's unmap returned must fault in every 4-byte transaction.
    // The frame may hold the pattern only if a DMA issued before had a transaction through.
    let words = (LEN / 4) as u64;
    for p in 0..pages {
        let s = snapshot[p as usize].load(Ordering::SeqCst);
        kassert!(s != u64::MAX, "page {p} was never unmapped");
        let mut wrote_before = false;
        for k in (p..dmas).step_by(pages as usize) {
            let faulted = dma_faults[k as usize].load(Ordering::Relaxed);
            if k < s {
                wrote_before |= faulted < words;
            } else {
                kassert_eq!(
                    faulted,
                    words,
                    "DMA {k} to page {p} issued after its unmap returned (DMA {s})"
                );
            }
        }
        let bytes = read(frames[p as usize], LEN)?;
        kassert!(
            bytes.iter().all(|&b| b == 0 || b == 0xee),
            "page {p}: {bytes:?}"
        );
        kassert!(
            wrote_before || bytes == vec![0u8; LEN],
            "page {p} written, but every DMA that got through to it came after its unmap"
        );
    }
    if let Some(m) = r.model {
        kassert_eq!(m.open_unmaps(), 0, "an unmap window left open excuses later changes");
        let stale = m.take_stale_translations();
        kassert!(
            stale.is_empty(),
            "{} stale translations, first {}",
            stale.len(),
            stale[0]
        );
    }
    kassert_eq!(r.smmu.stats().sync_timeouts, timeouts_before);
    crate::println!(
        "    # smp: {cpus} CPUs unmapped {pages} pages during {dmas} DMAs in {elapsed_ms} ms"
    );
    Ok(())
});
