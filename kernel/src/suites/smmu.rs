//! The SMMU itself: probe, StreamIDs, default deny, a wedged SMMU (fault injection on a private
//! model), the commands each strategy sends per unmap (printed as KTAP diagnostics), and the
//! eventq interrupt where the device tree wires one (with its twin: the interrupt off).

use alloc::vec;

use crate::arch::aarch64::{irq, timer};
use crate::board;
use crate::board::bootargs;
use crate::board::interrupts::named;
use crate::drivers::gic;
use crate::iommu::backend::model::dma::{DmaEngine, FaultPolicy};
use crate::iommu::backend::model::{Knobs, ModelConfig};
use crate::iommu::driver::planner::Strategy;
use crate::iommu::driver::{DriverStats, SmmuConfig, SmmuError};
use crate::iommu::probe::{self, EventDelivery, Probe, MODEL_DMA_SID};
use crate::iommu::spec::command::CommandKind;
use crate::iommu::spec::event::{AccessKind, EventKind, EVENT_SIZE};
use crate::iommu::sva::{ContextState, SvaError};
use crate::ktest::TestError;
use crate::mm::aspace::{Backing, Placement};
use crate::mm::pgtable::descriptor::MemoryType;
use crate::mm::phys::ContiguousFrameAllocator;
use crate::mm::ram::frames;
use crate::mm::VirtAddr;
use crate::rig::*;
use crate::{kassert, kassert_eq, kskip, ktest};

const LEN: usize = 16;

ktest!(smmu, probe_reports_sane_features, |_t| {
    let smmu = match probe::probe_outcome() {
        Probe::Absent => kskip!("no SMMU on this board"),
        Probe::Failed(e) => return Err(fail(alloc::format!("probe failed: {e}")).into()),
        Probe::Mmio { .. } | Probe::Model => {
            probe::smmu().ok_or_else(|| fail("probed but absent"))?
        }
    };
    let f = smmu.features();
    kassert!(
        f.stage1 && f.aarch64_tables && f.granule_4k && f.coherent && f.little_endian,
        "{f}"
    );
    kassert!((32..=52).contains(&f.oas_bits), "{f}");
    kassert!(f.asid_bits == 8 || f.asid_bits == 16, "{f}");
    kassert!(f.sid_bits >= 8 && smmu.max_sid() >= 0xff, "{f}");
    kassert!(
        (1..=19).contains(&f.cmdq_max_log2) && (1..=19).contains(&f.eventq_max_log2),
        "{f}"
    );
    kassert!(!smmu.is_disabled());
    let wanted = probe::strategy(bootargs().smmu_strategy);
    kassert_eq!(smmu.planner().strategy(), wanted);
    if let Probe::Mmio { pa } = probe::probe_outcome() {
        let regs = board::info().smmu.ok_or_else(|| fail("no SMMU node"))?;
        kassert_eq!(pa, regs.base);
        kassert!(
            regs.size >= 0x20000,
            "the register window has two 64 KiB pages"
        );
        // QEMU's virt SMMU (hw/arm/smmuv3.c smmuv3_init_regs): RIL, 16-bit ASIDs, 44-bit OAS.
        kassert!(
            f.range_invalidation && f.asid_bits == 16 && f.oas_bits == 44,
            "{f}"
        );
    }
    Ok(())
});

ktest!(smmu, stream_ids_come_from_the_iommu_map, |_t| {
    let (Some(host), Some(phandle)) = (board::info().pcie.as_ref(), board::info().smmu_phandle)
    else {
        kskip!("no PCIe behind an SMMU")
    };
    kassert!(
        host.iommu_map.iter().any(|e| e.1 == phandle),
        "the host bridge's iommu-map does not name the SMMU: {:?}",
        host.iommu_map
    );
    let rigs = Rig::board_all()?;
    if rigs.is_empty() {
        kskip!("no edu device behind the SMMU");
    }
    let mut seen = alloc::vec::Vec::new();
    for r in &rigs {
        let Device::Edu(edu) = &r.dev else {
            kskip!("the DMA master is not a PCIe function")
        };
        let bdf = edu.bdf();
        // Where enumeration found the device, as PCIe encodes a requester.
        let rid = u16::from(bdf.bus) << 8 | u16::from(bdf.device) << 3 | u16::from(bdf.function);
        kassert_eq!(bdf.requester_id(), rid);
        kassert_eq!(Some(r.sid), host.stream_id(phandle, rid), "{bdf}");
        // The device really issues that StreamID: its stream is not attached yet, so a transfer
        // is refused with a C_BAD_STE record naming the StreamID the SMMU saw.
        r.dev.fetch(VA, LEN)?;
        let ev = r.drain_events();
        kassert!(
            ev.iter()
                .any(|e| e.kind == EventKind::BadSte && e.sid == r.sid),
            "{bdf}: no C_BAD_STE from StreamID {:#x}: {ev:?}",
            r.sid
        );
        kassert!(
            !seen.contains(&r.sid),
            "two devices share StreamID {:#x}",
            r.sid
        );
        seen.push(r.sid);
    }
    Ok(())
});

ktest!(smmu, event_queue_holds_a_faulting_page_within_budget, |_t| {
    let mut r = Rig::board()?;
    let (config, f) = (r.smmu.config(), r.smmu.features());
    let size = r.smmu.event_queue_size();
    let q = size.allocated;
    kassert_eq!(size.in_use, q, "the whole queue is in use");
    // Within what SMMU_IDR1.EVENTQS allows and the budget, and the largest such.
    kassert!(q.log2_entries() <= f.eventq_max_log2.min(config.eventq_log2));
    kassert!(q.bytes(EVENT_SIZE) <= config.eventq_budget);
    kassert!(
        q.log2_entries() == f.eventq_max_log2.min(config.eventq_log2)
            || 2 * q.bytes(EVENT_SIZE) > config.eventq_budget,
        "2^{} entries: a queue twice as large would fit",
        q.log2_entries()
    );
    // Every transaction of a faulting page is recorded, none lost.
    r.bind()?;
    let hole = VA + 0x20_0000;
    r.drain_events();
    r.dev.fetch(hole, PAGE as usize)?;
    let (events, drain) = r.drain_events_reporting();
    kassert!(!drain.overflowed && !drain.write_aborted, "{drain:?}");
    let per_page = PAGE as usize / r.dev.transaction_size();
    kassert_eq!(
        faults(
            &events,
            EventKind::Translation,
            r.sid,
            hole,
            hole + PAGE,
            AccessKind::Read
        ),
        per_page
    );
    kassert_eq!(events.len(), per_page);
    Ok(())
});

ktest!(smmu, unbound_and_unknown_streams_are_denied, |t| {
    // The kernel's SMMU: a device whose binding ended is denied (C_BAD_STE) at the IOVA its
    // binding translated, and at the frame's physical address, which bypass would turn into
    // RAM (when the device's mask can emit it at all).
    let mut r = Rig::board()?;
    let pattern = (t.rand() as u8) | 0x81;
    let frame = r.map(VA, 1, RW, pattern)?[0];
    r.bind()?;
    r.load_buffer(&[0x11; LEN])?;
    r.unbind()?;
    let mut iovas = vec![VA];
    if r.dev.reaches(frame.as_u64(), LEN) {
        iovas.push(frame.as_u64());
    }
    for &iova in &iovas {
        r.dev.store(iova, LEN)?;
    }
    kassert_eq!(
        read(frame, LEN)?,
        vec![pattern; LEN],
        "an unbound device wrote RAM"
    );
    r.dev.fetch(VA, LEN)?;
    let ev = r.drain_events();
    kassert!(
        ev.iter()
            .any(|e| e.kind == EventKind::BadSte && e.sid == r.sid),
        "no C_BAD_STE for SID {:#x}: {ev:?}",
        r.sid
    );
    r.bind()?;
    let got = r.read_buffer(LEN)?;
    kassert!(got != vec![pattern; LEN], "an unbound device read RAM");

    // A private model SMMU: a stream never attached, and one beyond the stream table.
    let m = Rig::model(ModelConfig::default(), Rig::small_config())?;
    let model = m.model.ok_or_else(|| fail("no model"))?;
    kassert_eq!(m.dev.fetch(VA, LEN)?, Outcome::Faulted);
    let far = DmaEngine::new(model, 0x40)
        .with_transactions(4, FaultPolicy::Continue)
        .map_err(fail)?;
    kassert!(far.write(VirtAddr(VA), &[1; 4]).is_err());
    let ev = m.drain_events();
    kassert!(
        ev.iter()
            .any(|e| e.kind == EventKind::BadSte && e.sid == MODEL_DMA_SID),
        "{ev:?}"
    );
    kassert!(
        ev.iter()
            .any(|e| e.kind == EventKind::BadStreamId && e.sid == 0x40),
        "{ev:?}"
    );
    Ok(())
});

/// A private model SMMU stops completing commands (per `knobs`) during an unmap of `pages`
/// pages of a bound address space. Returns the driver's counters.
fn wedged(knobs: Knobs, cfg: SmmuConfig, pages: u64) -> Result<DriverStats, TestError> {
    let mut r = Rig::model(ModelConfig::default(), cfg)?;
    let frames = r.map(VA, pages + 1, RW, 0x33)?;
    r.bind()?;
    for p in 0..=pages {
        r.dev.fetch(VA + p * PAGE, LEN)?;
    }
    let model = r.model.ok_or_else(|| fail("no model"))?;
    model.set_knobs(knobs);
    let start = timer::now_ns();
    let unmapped = r.unmap(VA, pages);
    let ms = (timer::now_ns() - start) / 1_000_000;
    kassert!(unmapped.is_ok(), "{unmapped:?}");
    // Timeouts are 20 ms: invalidation, quiesce, then the abort.
    kassert!(ms < 2_000, "the unmap took {ms} ms");
    let state = r.bond().map(|b| b.state());
    kassert_eq!(state, Some(ContextState::Broken));
    kassert!(
        r.smmu.is_disabled(),
        "a wedged SMMU must end up aborting all traffic"
    );
    let s = r.sva.stats();
    kassert!(s.failures >= 1 && s.aborts == 1, "{s:?}");
    // Nothing cached can be used: neither the unmapped pages nor the one still mapped.
    r.load_buffer(&[0xee; LEN])?;
    for p in 0..=pages {
        kassert_eq!(r.dev.store(VA + p * PAGE, LEN)?, Outcome::Faulted);
        kassert_eq!(read(frames[p as usize], LEN)?, vec![0x33u8; LEN]);
    }
    kassert!(model.stale_translations().is_empty());
    // Later unmaps return at once; unbind reports the dead SMMU.
    let before = r.smmu.stats();
    r.unmap(VA + pages * PAGE, 1)?;
    let after = r.smmu.stats();
    kassert_eq!(
        (after.sync_timeouts, after.queue_full_timeouts),
        (before.sync_timeouts, before.queue_full_timeouts)
    );
    model.set_knobs(Knobs::default());
    kassert_eq!(r.unbind_raw(), Err(SvaError::Smmu(SmmuError::Disabled)));
    Ok(after)
}

ktest!(smmu, cmd_sync_timeout_never_hangs_an_unmap, |_t| {
    let knobs = Knobs {
        stall_sync: true,
        ..Knobs::default()
    };
    let stats = wedged(knobs, Rig::small_config(), 1)?;
    // The invalidation's CMD_SYNC, then the quiesce's.
    kassert!(stats.sync_timeouts >= 2, "{stats:?}");
    Ok(())
});

ktest!(smmu, full_command_queue_never_hangs_an_unmap, |_t| {
    // A 4-entry queue the SMMU never drains, and an unmap needing 8 TLBIs + CMD_SYNC.
    let knobs = Knobs {
        stall_command_queue: true,
        ..Knobs::default()
    };
    let cfg = SmmuConfig {
        cmdq_log2: 2,
        strategy: Strategy::PerPage,
        ..Rig::small_config()
    };
    let stats = wedged(knobs, cfg, 8)?;
    kassert!(stats.queue_full_timeouts >= 1, "{stats:?}");
    Ok(())
});

ktest!(smmu, commands_per_unmap_by_strategy, |_t| {
    // Benchmark hook: the commands each strategy sends for an unmap of 1, 16, 512 and 4096
    // pages, through munmap and the notifier, checked against the planner's plan.
    let mut r = Rig::board()?;
    r.bind()?;
    let asid = r
        .bond()
        .and_then(|b| b.asid())
        .ok_or_else(|| fail("no ASID"))?;
    let frames = frames().ok_or_else(|| fail("no frames"))?;
    // 4096 pages of our own memory (the device never touches them).
    let run = frames.alloc_contiguous_zeroed(12).map_err(fail)?;
    let original = r.smmu.planner().strategy();
    let result = (|| {
        for strategy in Strategy::ALL {
            if strategy == Strategy::Range && !r.smmu.features().range_invalidation {
                continue;
            }
            r.smmu.set_strategy(strategy).map_err(fail)?;
            for pages in [1u64, 16, 512, 4096] {
                let va = 0x4000_0000u64;
                let len = (pages * PAGE) as usize;
                r.space()
                    .mmap(
                        Placement::Fixed(VirtAddr(va)),
                        len,
                        RW,
                        Backing::Physical(run, MemoryType::Normal),
                    )
                    .map_err(fail)?;
                let plan = r
                    .smmu
                    .planner()
                    .plan(asid, VirtAddr(va), VirtAddr(va + pages * PAGE))
                    .map_err(fail)?;
                let before = r.smmu.stats();
                let inv_before = r.sva.stats().invalidations;
                r.unmap(va, pages)?;
                let after = r.smmu.stats();
                let c = |k: CommandKind| after.commands.get(k) - before.commands.get(k);
                let (va_cmds, range, asid_cmds, sync) = (
                    c(CommandKind::TlbiNhVa),
                    c(CommandKind::TlbiNhVaRange),
                    c(CommandKind::TlbiNhAsid),
                    c(CommandKind::Sync),
                );
                crate::println!(
                    "    # smmu.bench strategy={} pages={pages} tlbi_va={va_cmds} tlbi_va_range={range} \
                     tlbi_asid={asid_cmds} sync={sync} prod_writes={}",
                    strategy.name(),
                    after.prod_writes - before.prod_writes
                );
                let expect = plan.counts();
                kassert_eq!(
                    r.sva.stats().invalidations - inv_before,
                    1,
                    "one notifier call per munmap"
                );
                kassert_eq!(
                    (va_cmds, range, asid_cmds, sync),
                    (
                        expect.get(CommandKind::TlbiNhVa),
                        expect.get(CommandKind::TlbiNhVaRange),
                        expect.get(CommandKind::TlbiNhAsid),
                        1
                    ),
                    "{} pages with {}",
                    pages,
                    strategy.name()
                );
            }
        }
        Ok(())
    })();
    let restored = r.smmu.set_strategy(original);
    drop(r);
    frames.free_contiguous(run, 12);
    result?;
    restored.map_err(fail)?;
    Ok(())
});

/// Whether the device tree wires the SMMU's eventq interrupt to a GIC the kernel found: where
/// it does, the interrupt must be in use; where it does not, the tests below skip.
fn eventq_interrupt_expected() -> Result<(), alloc::string::String> {
    let info = board::info();
    if !matches!(probe::probe_outcome(), Probe::Mmio { .. }) {
        return Err("no memory-mapped SMMU (a model raises no interrupt)".into());
    }
    if info.gic.is_none() {
        return Err("no interrupt controller in the device tree".into());
    }
    match &info.smmu_interrupts {
        Ok(irqs) if named(irqs, "eventq").is_some() => Ok(()),
        Ok(_) => Err("no eventq interrupt in the device tree".into()),
        Err(e) => Err(alloc::format!("the SMMU's interrupts are unusable: {e}")),
    }
}

/// A faulting edu transfer on the board's SMMU, not drained: returns the rig, the faulting
/// address and how many records it must have produced.
fn faulting_transfer() -> Result<(Rig<probe::BoardDomain>, u64, usize), TestError> {
    let mut r = Rig::board()?;
    r.bind()?;
    r.drain_events();
    let hole = VA + 0x20_0000;
    r.dev.fetch(hole, LEN)?;
    let expected = LEN / r.dev.transaction_size();
    Ok((r, hole, expected))
}

/// Drains `r`'s events: nothing lost, and every transaction of the faulting read at `hole`.
fn drain_the_faults(
    r: &Rig<probe::BoardDomain>,
    hole: u64,
    expected: usize,
) -> Result<(), TestError> {
    let (events, drain) = r.drain_events_reporting();
    kassert!(!drain.lost_events(), "{drain:?}");
    let (end, read) = (hole + LEN as u64, AccessKind::Read);
    kassert_eq!(
        faults(&events, EventKind::Translation, r.sid, hole, end, read),
        expected
    );
    Ok(())
}

ktest!(smmu, eventq_interrupt_moves_events_without_a_drain, |_t| {
    if let Err(why) = eventq_interrupt_expected() {
        kskip!("{why}");
    }
    let EventDelivery::Interrupt { eventq, .. } = probe::event_delivery() else {
        return Err(fail(alloc::format!(
            "the device tree wires an eventq interrupt but events are {:?}",
            probe::event_delivery()
        ))
        .into());
    };
    let (before, ..) = probe::interrupt_counts();
    let dispatched = gic::irq_count(eventq.intid());
    let (r, hole, expected) = faulting_transfer()?;
    // No drain: only the interrupt, taken in these windows, can empty the SMMU's queue.
    let moved = irq::wait_in_window(1_000_000_000, || {
        r.smmu.queued_events() == 0 && r.smmu.logged_events() >= expected
    });
    let (after, errors, ..) = probe::interrupt_counts();
    kassert!(
        moved,
        "queued {}, logged {} of {expected}, {} interrupts",
        r.smmu.queued_events(),
        r.smmu.logged_events(),
        after - before
    );
    kassert!(after > before, "no eventq interrupt");
    kassert_eq!(errors, 0);
    kassert!(
        gic::irq_count(eventq.intid()) > dispatched,
        "the GIC did not dispatch INTID {}",
        eventq.intid()
    );
    // The drain decodes what the interrupt moved, in full.
    drain_the_faults(&r, hole, expected)?;
    kassert_eq!(r.smmu.logged_events(), 0);
    Ok(())
});

/// Turns the eventq interrupt off while it lives (the debug knob), back on when dropped.
struct EventInterruptOff;

impl EventInterruptOff {
    fn new() -> Result<Self, SmmuError> {
        probe::set_event_interrupt(false)?;
        Ok(Self)
    }
}

impl Drop for EventInterruptOff {
    fn drop(&mut self) {
        if let Err(e) = probe::set_event_interrupt(true) {
            log::error!("smmu: turning the eventq interrupt back on: {e}");
        }
    }
}

ktest!(smmu, eventq_interrupt_off_leaves_events_queued_until_polled, |_t| {
    if let Err(why) = eventq_interrupt_expected() {
        kskip!("{why}");
    }
    let off = EventInterruptOff::new().map_err(fail)?;
    kassert!(!probe::smmu().is_some_and(|s| s.event_interrupt_enabled()));
    let (before, ..) = probe::interrupt_counts();
    let (r, hole, expected) = faulting_transfer()?;
    // The same windows as above give an interrupt every chance; none comes.
    let moved = irq::wait_in_window(50_000_000, || r.smmu.queued_events() == 0);
    kassert!(!moved, "the queue emptied with the interrupt off");
    kassert_eq!(probe::interrupt_counts().0, before);
    kassert_eq!(r.smmu.logged_events(), 0);
    kassert_eq!(r.smmu.queued_events() as usize, expected);
    // Polling finds them all.
    drain_the_faults(&r, hole, expected)?;
    drop(off);
    kassert!(probe::smmu().is_some_and(|s| s.event_interrupt_enabled()));
    Ok(())
});
