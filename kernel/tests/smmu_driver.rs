//! The SMMU driver's own duties on top of the model: probe and reset, default deny, stream
//! attach/detach, context lifetime, typed errors for bad input, and recovery from a misbehaving
//! SMMU (command errors, a CMD_SYNC that never completes, a full queue, a CR0ACK that never
//! comes) — always an error, never a hang.

#[path = "smmu_support.rs"]
mod support;

use shootdown::iommu::backend::SmmuBackend;
use shootdown::iommu::spec::command::{opcode, CommandCounts, CommandKind};
use shootdown::iommu::driver::{ContextParams, DebugKnobs, Smmu, SmmuConfig, SmmuError};
use shootdown::iommu::spec::event::{AccessKind, EventKind};
use shootdown::iommu::backend::model::{FaultKind, Knobs, ModelConfig, SmmuModel};
use shootdown::iommu::driver::planner::{PlanError, PlanKind, Strategy};
use shootdown::iommu::spec::regs::{offset, CommandErrorCode};
use shootdown::iommu::spec::ste::BadSte;
use shootdown::iommu::fake::{LeafAttrs, PhysArena, StepClock};
use shootdown::mm::phys::PhysMemory;
use shootdown::mm::{PhysAddr, VirtAddr, PAGE_SIZE};
use std::sync::atomic::AtomicU64;
use support::*;

const PAGE: u64 = PAGE_SIZE as u64;

#[test]
fn probe_reads_features_and_enables_with_everything_denied() {
    let mem = arena();
    let model = SmmuModel::new(&mem, ModelConfig::default()).unwrap();
    let clock = StepClock::new(1_000);
    let smmu = Smmu::new(&model, &clock, &mem, &mem, smmu_config()).unwrap();
    let f = smmu.features();
    assert!(f.stage1 && f.range_invalidation && f.coherent && f.granule_4k);
    assert!(!f.granule_16k && !f.granule_64k);
    assert_eq!(
        (
            f.asid_bits,
            f.vmid_bits,
            f.sid_bits,
            f.ssid_bits,
            f.oas_bits
        ),
        (16, 16, 16, 0, 44)
    );
    assert!(format!("{f}").contains("OAS 44 bits"));
    assert_eq!(smmu.max_sid(), 0xff);
    // Enabled: SMMUEN, EVENTQEN, CMDQEN; GBPA aborts.
    assert_eq!(model.read32(offset::CR0ACK), 0b1101);
    assert_ne!(model.read32(offset::GBPA) & 1 << 20, 0);
    // Reset invalidated every cache: CFGI_ALL + TLBI_NSNH_ALL + CMD_SYNC.
    let s = model.stats();
    assert_eq!(s.commands.get(CommandKind::CfgiAll), 1);
    assert_eq!(s.commands.get(CommandKind::TlbiNsnhAll), 1);
    assert_eq!(s.syncs_completed, 1);
    // A device nobody attached is aborted and reported.
    let fault = model
        .translate(0x20, VirtAddr(0x1000), AccessKind::Read)
        .unwrap_err();
    assert_eq!(fault.kind, FaultKind::BadSte(BadSte::Invalid));
    let fault = model
        .translate(0x100, VirtAddr(0x1000), AccessKind::Read)
        .unwrap_err();
    assert_eq!(fault.kind, FaultKind::BadStreamId);
    let mut kinds = Vec::new();
    smmu.drain_events(|e| kinds.push((e.kind, e.sid))).unwrap();
    assert_eq!(
        kinds,
        [(EventKind::BadSte, 0x20), (EventKind::BadStreamId, 0x100)]
    );
    assert_eq!(
        model.stats().bad_register_accesses,
        0,
        "only architected registers touched"
    );
    // Shutting down aborts everything and returns the memory.
    smmu.shutdown().unwrap();
    assert_eq!(mem.frames_in_use(), 0);
    assert_eq!(
        model
            .translate(0x20, VirtAddr(0), AccessKind::Read)
            .unwrap_err()
            .kind,
        FaultKind::GlobalAbort
    );
}

#[test]
fn the_stream_table_is_sized_from_the_largest_sid() {
    let mem = arena();
    let model = SmmuModel::new(&mem, ModelConfig::default()).unwrap();
    let clock = StepClock::new(1_000);
    let cfg = SmmuConfig {
        max_sid: 0x10,
        ..smmu_config()
    };
    let smmu = Smmu::new(&model, &clock, &mem, &mem, cfg).unwrap();
    assert_eq!(smmu.max_sid(), 0x1f);
    assert_eq!(model.read32(offset::STRTAB_BASE_CFG), 5);
    assert_eq!(
        smmu.attach_bypass(0x20),
        Err(SmmuError::SidOutOfRange {
            sid: 0x20,
            max: 0x1f
        })
    );
    // 2^16 StreamIDs: a 4 MiB table, naturally aligned.
    drop(smmu);
    let big = PhysArena::new(PhysAddr(0x4000_0000), 2048).unwrap();
    let model = SmmuModel::new(&big, ModelConfig::default()).unwrap();
    let cfg = SmmuConfig {
        max_sid: 0xffff,
        ..smmu_config()
    };
    let smmu = Smmu::new(&model, &clock, &big, &big, cfg).unwrap();
    let base = model.read64(offset::STRTAB_BASE) & !(1 << 62);
    assert_eq!(base % (4 << 20), 0, "aligned to its 4 MiB size");
    smmu.attach_bypass(0xfffe).unwrap();
    assert_eq!(
        model
            .translate(0xfffe, VirtAddr(0x1234), AccessKind::Read)
            .unwrap()
            .pa,
        PhysAddr(0x1234)
    );
    // More StreamIDs than the SMMU has: refused before anything is allocated.
    let small = ModelConfig {
        sid_bits: 8,
        ..ModelConfig::default()
    };
    let model = SmmuModel::new(&mem, small).unwrap();
    let used = mem.frames_in_use();
    let cfg = SmmuConfig {
        max_sid: 0x100,
        ..smmu_config()
    };
    assert_eq!(
        Smmu::new(&model, &clock, &mem, &mem, cfg).err(),
        Some(SmmuError::SidOutOfRange {
            sid: 0x100,
            max: 0xff
        })
    );
    assert_eq!(mem.frames_in_use(), used);
}

/// A register file that claims no features at all.
struct NothingImplemented;

impl SmmuBackend for NothingImplemented {
    fn read32(&self, _: usize) -> u32 {
        0
    }
    fn write32(&self, _: usize, _: u32) {}
    fn read64(&self, _: usize) -> u64 {
        0
    }
    fn write64(&self, _: usize, _: u64) {}
}

/// Memory reachable one word at a time only: no range of it resolves as one slice.
struct WordByWord<'a>(&'a PhysArena);

impl PhysMemory for WordByWord<'_> {
    fn word(&self, pa: PhysAddr) -> Option<&AtomicU64> {
        self.0.word(pa)
    }
    fn bytes(&self, _: PhysAddr, _: usize) -> Option<*mut u8> {
        None
    }
}

#[test]
fn probe_refuses_what_it_cannot_drive_and_leaks_nothing() {
    let mem = arena();
    let clock = StepClock::new(1_000);
    let err = Smmu::new(NothingImplemented, &clock, &mem, &mem, smmu_config()).err();
    assert_eq!(
        err,
        Some(SmmuError::Unsupported("stage-1 translation (IDR0.S1P)"))
    );
    // Too little memory for the stream table: out of memory, nothing kept.
    let tiny = PhysArena::new(PhysAddr(0x4000_0000), 2).unwrap();
    let model = SmmuModel::new(&tiny, ModelConfig::default()).unwrap();
    assert_eq!(
        Smmu::new(&model, &clock, &tiny, &tiny, smmu_config()).err(),
        Some(SmmuError::OutOfMemory)
    );
    assert_eq!(tiny.frames_in_use(), 0);
    // A command queue the driver cannot resolve as one slice of words: refused at probe, not
    // at the first command.
    let model = SmmuModel::new(&mem, ModelConfig::default()).unwrap();
    let err = Smmu::new(&model, &clock, &WordByWord(&mem), &mem, smmu_config()).err();
    assert!(matches!(err, Some(SmmuError::Unreachable(_))), "{err:?}");
    assert_eq!(mem.frames_in_use(), 0);
    // Range invalidation on an SMMU without RIL.
    let no_ril = SmmuModel::new(
        &mem,
        ModelConfig {
            range_invalidation: false,
            ..ModelConfig::default()
        },
    )
    .unwrap();
    let cfg = SmmuConfig {
        strategy: Strategy::Range,
        ..smmu_config()
    };
    assert_eq!(
        Smmu::new(&no_ril, &clock, &mem, &mem, cfg).err(),
        Some(SmmuError::Plan(PlanError::RangeUnsupported))
    );
    assert_eq!(mem.frames_in_use(), 0);
    assert!(format!("{}", SmmuError::Plan(PlanError::RangeUnsupported)).contains("RIL"));
}

#[test]
fn a_cr0ack_that_never_comes_is_a_timeout() {
    let mem = arena();
    let model = SmmuModel::new(&mem, ModelConfig::default()).unwrap();
    let clock = StepClock::new(1_000);
    // A slow SMMU is fine...
    model.set_knobs(Knobs {
        cr0ack_lag: 5,
        ..Knobs::default()
    });
    let smmu = Smmu::new(&model, &clock, &mem, &mem, smmu_config()).unwrap();
    smmu.shutdown().unwrap();
    // ...one that never acknowledges is an error after the timeout, not a hang. (CR0ACK
    // still reads 0, so the clean-up's disable is acknowledged and the memory returned.)
    model.set_knobs(Knobs {
        cr0ack_lag: u32::MAX,
        ..Knobs::default()
    });
    let before = clock.reads();
    let err = Smmu::new(&model, &clock, &mem, &mem, smmu_config()).err();
    assert!(
        matches!(
            err,
            Some(SmmuError::AckTimeout {
                register: "SMMU_CR0ACK",
                ..
            })
        ),
        "{err:?}"
    );
    assert!(clock.reads() - before < 10_000, "bounded polling");
    assert_eq!(mem.frames_in_use(), 0);
    // An SMMU that cannot be shut down keeps its memory: it is not handed out again while
    // the SMMU may still write to it.
    model.set_knobs(Knobs::default());
    let smmu = Smmu::new(&model, &clock, &mem, &mem, smmu_config()).unwrap();
    model.set_knobs(Knobs {
        cr0ack_lag: u32::MAX,
        ..Knobs::default()
    });
    let used = mem.frames_in_use();
    assert!(matches!(smmu.shutdown(), Err(SmmuError::AckTimeout { .. })));
    assert_eq!(mem.frames_in_use(), used);
}

#[test]
fn a_cmd_sync_that_never_completes_is_a_timeout_and_recovers() {
    with_default_world(|w| {
        w.map_pages(VA, 1, LeafAttrs::RW, 0);
        w.dma().touch(VirtAddr(VA), AccessKind::Read).unwrap();
        w.tables.unmap(VirtAddr(VA)).unwrap();
        w.model.set_knobs(Knobs {
            stall_sync: true,
            ..Knobs::default()
        });
        let before = w.clock.reads();
        let err = w
            .smmu
            .invalidate_range(w.ctx, VirtAddr(VA), VirtAddr(VA + PAGE))
            .unwrap_err();
        assert!(matches!(err, SmmuError::SyncTimeout { .. }), "{err}");
        assert!(
            w.clock.reads() - before <= 2_100,
            "gave up after the 2 ms timeout"
        );
        assert_eq!(w.smmu.stats().sync_timeouts, 1);
        // The SMMU comes back: the stuck CMD_SYNC completes and the next call works.
        w.model.set_knobs(Knobs::default());
        assert!(w.dma().touch(VirtAddr(VA), AccessKind::Read).is_err());
        w.invalidate(VA, 1);
        assert!(w.model.stale_translations().is_empty());
    });
}

#[test]
fn a_full_command_queue_is_an_error_not_a_hang() {
    let cfg = SmmuConfig {
        cmdq_log2: 4,
        strategy: Strategy::PerPage,
        ..smmu_config()
    };
    with_world(ModelConfig::default(), cfg, |w| {
        w.model.set_knobs(Knobs {
            stall_command_queue: true,
            ..Knobs::default()
        });
        let err = w
            .smmu
            .invalidate_range(w.ctx, VirtAddr(VA), VirtAddr(VA + 64 * PAGE))
            .unwrap_err();
        assert_eq!(
            err,
            SmmuError::CommandQueueFull {
                needed: 16,
                free: 0
            }
        );
        assert_eq!(w.smmu.stats().queue_full_timeouts, 1);
        // Once the SMMU consumes again, the queue drains and work goes on.
        w.model.set_knobs(Knobs::default());
        let report = w
            .smmu
            .invalidate_range(w.ctx, VirtAddr(VA), VirtAddr(VA + 64 * PAGE))
            .unwrap();
        assert_eq!(report.commands.get(CommandKind::TlbiNhVa), 64);
        // 64 per-page commands through a 16-entry queue: batches of 16.
        assert!(w.smmu.stats().prod_writes >= 5);
    });
}

/// The commands the model consumed since it had consumed `before`.
fn consumed_since(w: &World<'_>, before: CommandCounts) -> CommandCounts {
    let now = w.model.stats().commands;
    let mut delta = CommandCounts::default();
    for kind in CommandKind::ALL {
        (before.get(kind)..now.get(kind)).for_each(|_| delta.add(kind));
    }
    delta
}

#[test]
fn a_report_counts_what_the_smmu_consumed_and_the_unmap_path_sends_the_same() {
    with_default_world(|w| {
        w.map_pages(VA, 80, LeafAttrs::RW, 0x33);
        for strategy in [Strategy::PerPage, Strategy::Range, Strategy::Asid, Strategy::Auto] {
            w.smmu.set_strategy(strategy).unwrap();
            for pages in [1, 2, 5, 17, 70] {
                let what = format!("{strategy:?}, {pages} pages");
                let before = w.model.stats().commands;
                let report = w.invalidate(VA, pages);
                let consumed = consumed_since(w, before);
                assert_eq!(report.commands, consumed, "{what}");
                assert_eq!(consumed.get(CommandKind::Sync), 1, "{what}: one CMD_SYNC, its own");
                let before = w.model.stats().commands;
                let (start, end) = (VirtAddr(VA), VirtAddr(VA + pages * PAGE));
                w.smmu.invalidate(w.ctx, start, end).unwrap();
                assert_eq!(consumed_since(w, before), consumed, "{what}: without a report");
            }
        }
        // The fallback after a refused command counts the plan, its CMD_SYNC, the ASID-wide
        // TLBI and its CMD_SYNC: what was published.
        w.smmu.set_strategy(Strategy::PerPage).unwrap();
        w.model.set_knobs(Knobs {
            fail_command: Some((Some(opcode::TLBI_NH_VA), CommandErrorCode::Illegal)),
            ..Knobs::default()
        });
        let report = w.invalidate(VA, 3);
        assert!(report.recovered.is_some());
        let mut published = CommandCounts::default();
        [CommandKind::TlbiNhVa; 3].into_iter().for_each(|k| published.add(k));
        published.add(CommandKind::Sync);
        published.add(CommandKind::TlbiNhAsid);
        published.add(CommandKind::Sync);
        assert_eq!(report.commands, published);
        w.model.set_knobs(Knobs::default());
    });
}

#[test]
fn every_debug_knob_round_trips_and_all_start_off() {
    with_default_world(|w| {
        let off = DebugKnobs {
            skip_invalidation: false,
            skip_sync: false,
            adopt_earlier_sync: false,
            cover_ignores_tables: false,
        };
        assert_eq!(w.smmu.debug_knobs(), off);
        assert_eq!(DebugKnobs::default(), off);
        for bits in 0..16u32 {
            let knobs = DebugKnobs {
                skip_invalidation: bits & 1 != 0,
                skip_sync: bits & 2 != 0,
                adopt_earlier_sync: bits & 4 != 0,
                cover_ignores_tables: bits & 8 != 0,
            };
            w.smmu.set_debug_knobs(knobs);
            assert_eq!(w.smmu.debug_knobs(), knobs);
        }
        w.smmu.set_debug_knobs(off);
        assert_eq!(w.smmu.debug_knobs(), off);
    });
}

#[test]
fn a_refused_command_is_reported_and_coherence_kept() {
    with_default_world(|w| {
        let frame = w.map_pages(VA, 2, LeafAttrs::RW, 0x21)[0];
        let dma = w.dma();
        dma.touch(VirtAddr(VA), AccessKind::Write).unwrap();
        dma.touch(VirtAddr(VA + PAGE), AccessKind::Write).unwrap();
        w.tables.unmap(VirtAddr(VA)).unwrap();
        // The SMMU refuses the range TLBI (CERROR_ILL)...
        let fail = Some((Some(opcode::TLBI_NH_VA), CommandErrorCode::Illegal));
        w.model.set_knobs(Knobs {
            fail_command: fail,
            ..Knobs::default()
        });
        let report = w
            .smmu
            .invalidate_range(w.ctx, VirtAddr(VA), VirtAddr(VA + PAGE))
            .unwrap();
        // ...the driver says so, and invalidated the whole ASID instead.
        let failure = report.recovered.expect("reported");
        assert_eq!(failure.code, CommandErrorCode::Illegal);
        assert_eq!(
            failure.command.map(|c| c.kind()),
            Ok(CommandKind::TlbiNhVaRange)
        );
        assert_eq!(report.commands.get(CommandKind::TlbiNhAsid), 1);
        let s = w.smmu.stats();
        assert_eq!((s.command_errors, s.invalidation_fallbacks), (1, 1));
        assert_eq!(s.last_command_error, Some(failure));
        assert!(format!("{failure}").contains("CERROR_ILL"));
        assert!(dma.write(VirtAddr(VA), &[9]).is_err());
        assert_eq!(w.byte(frame), 0x21);
        assert!(w.model.stale_translations().is_empty());
        assert_eq!(
            w.model.read32(offset::GERROR),
            w.model.read32(offset::GERRORN),
            "acknowledged"
        );
        // A fetch abort on the CMD_SYNC itself is retried (CERROR_ABT): reported, still done.
        let fail = Some((Some(opcode::SYNC), CommandErrorCode::Abort));
        w.model.set_knobs(Knobs {
            fail_command: fail,
            ..Knobs::default()
        });
        let report = w
            .smmu
            .invalidate_range(w.ctx, VirtAddr(VA + PAGE), VirtAddr(VA + 2 * PAGE))
            .unwrap();
        assert_eq!(
            report.recovered.map(|f| f.code),
            Some(CommandErrorCode::Abort)
        );
        assert_eq!(w.smmu.stats().command_errors, 2);
    });
}

#[test]
fn streams_attach_detach_and_bad_input() {
    with_default_world(|w| {
        let s = w.smmu;
        assert_eq!(s.attach(SID, w.ctx), Err(SmmuError::StreamBusy(SID)));
        assert_eq!(
            s.attach(0x100, w.ctx),
            Err(SmmuError::SidOutOfRange {
                sid: 0x100,
                max: 0xff
            })
        );
        assert_eq!(s.detach(0x11), Err(SmmuError::StreamNotAttached(0x11)));
        assert_eq!(
            s.destroy_context(w.ctx),
            Err(SmmuError::ContextInUse(w.ctx))
        );
        assert_eq!(
            s.invalidate_range(w.ctx, VirtAddr(0x2000), VirtAddr(0x1000)),
            Err(SmmuError::Plan(PlanError::EndBeforeStart {
                start: VirtAddr(0x2000),
                end: VirtAddr(0x1000)
            }))
        );
        let bad_root = ContextParams {
            root: PhysAddr(0x1234),
            mair: MAIR,
        };
        assert!(matches!(s.create_context(bad_root), Err(SmmuError::Cd(_))));
        // A second device shares the context (one subscription per address space).
        s.attach(0x11, w.ctx).unwrap();
        assert_eq!(s.context_streams(w.ctx).unwrap(), [SID, 0x11]);
        w.map_pages(VA, 1, LeafAttrs::RW, 7);
        assert!(w
            .model
            .translate(0x11, VirtAddr(VA), AccessKind::Read)
            .is_ok());
        // Detached: the device is aborted and reported again.
        s.detach(0x11).unwrap();
        let f = w
            .model
            .translate(0x11, VirtAddr(VA), AccessKind::Read)
            .unwrap_err();
        assert_eq!(f.kind, FaultKind::BadSte(BadSte::Invalid));
        assert!(f.recorded);
        // Abort and bypass streams; switching needs a detach in between.
        s.attach_abort(0x12).unwrap();
        let f = w
            .model
            .translate(0x12, VirtAddr(VA), AccessKind::Read)
            .unwrap_err();
        assert_eq!((f.kind, f.recorded), (FaultKind::StreamAbort, false));
        assert_eq!(s.attach_bypass(0x12), Err(SmmuError::StreamBusy(0x12)));
        s.detach(0x12).unwrap();
        s.attach_bypass(0x12).unwrap();
        assert_eq!(
            w.model
                .translate(0x12, VirtAddr(0x4000_0000), AccessKind::Write)
                .unwrap()
                .pa,
            PhysAddr(0x4000_0000)
        );
        // Context ids are not reused; a destroyed one is gone.
        s.detach(SID).unwrap();
        s.destroy_context(w.ctx).unwrap();
        assert_eq!(s.context_asid(w.ctx), Err(SmmuError::NoSuchContext(w.ctx)));
        assert_eq!(
            s.invalidate_range(w.ctx, VirtAddr(0), VirtAddr(PAGE)),
            Err(SmmuError::NoSuchContext(w.ctx))
        );
        assert_eq!(w.model.stats().bad_register_accesses, 0);
    });
}

#[test]
fn a_recycled_asid_carries_no_stale_translations() {
    // 8-bit ASIDs, so the allocator comes round quickly.
    let model = ModelConfig {
        asid16: false,
        ..ModelConfig::default()
    };
    with_world(model, smmu_config(), |w| {
        assert_eq!(w.smmu.features().asid_bits, 8);
        let frame = w.map_pages(VA, 1, LeafAttrs::RW, 1)[0];
        w.dma().touch(VirtAddr(VA), AccessKind::Read).unwrap();
        w.smmu.detach(SID).unwrap();
        w.smmu.destroy_context(w.ctx).unwrap();
        // Burn through ASIDs until the old one comes back, with a different address space.
        let other = shootdown::iommu::fake::TestPageTables::new(w.mem).unwrap();
        let params = ContextParams {
            root: other.root(),
            mair: MAIR,
        };
        let mut ctx = w.smmu.create_context(params).unwrap();
        let mut burned = Vec::new();
        while w.smmu.context_asid(ctx).unwrap() != w.asid {
            burned.push(ctx);
            ctx = w.smmu.create_context(params).unwrap();
            assert!(burned.len() < 256, "ASID never recycled");
        }
        w.smmu.attach(SID, ctx).unwrap();
        // Nothing is mapped in the new space: the old translation must be gone.
        assert!(w.dma().touch(VirtAddr(VA), AccessKind::Read).is_err());
        assert!(w.model.stale_translations().is_empty());
        assert_eq!(w.byte(frame), 1);
        for c in burned {
            w.smmu.destroy_context(c).unwrap();
        }
    });
}

#[test]
fn invalidation_plans_are_counted_per_kind() {
    with_default_world(|w| {
        w.smmu.set_strategy(Strategy::PerPage).unwrap();
        w.invalidate(VA, 3);
        w.smmu.set_strategy(Strategy::Asid).unwrap();
        w.invalidate(VA, 3);
        w.smmu.set_strategy(Strategy::Auto).unwrap();
        w.invalidate(VA, 3);
        let empty = w
            .smmu
            .invalidate_range(w.ctx, VirtAddr(VA), VirtAddr(VA))
            .unwrap();
        assert_eq!(empty.plan, PlanKind::Nothing);
        assert_eq!(empty.commands.total(), 0);
        let s = w.smmu.stats();
        assert_eq!(
            (
                s.invalidations_per_page,
                s.invalidations_asid,
                s.invalidations_range,
                s.invalidations_empty
            ),
            (1, 1, 1, 1)
        );
        // Every command the driver sent reached the SMMU, and each batch ended in one sync.
        let m = w.model.stats();
        assert_eq!(m.commands, s.commands);
        assert_eq!(m.syncs_completed, s.commands.get(CommandKind::Sync));
    });
}

#[test]
fn a_failed_attach_is_rolled_back_or_kept_accounted_for() {
    with_default_world(|w| {
        let s = w.smmu;
        // The SMMU refuses the CFGI_STE: the STE is taken back, nothing is attached.
        let fail = Some((Some(opcode::CFGI_STE), CommandErrorCode::Illegal));
        w.model.set_knobs(Knobs {
            fail_command: fail,
            ..Knobs::default()
        });
        assert!(matches!(
            s.attach(0x11, w.ctx),
            Err(SmmuError::CommandFailed(_))
        ));
        assert_eq!(s.context_streams(w.ctx).unwrap(), [SID]);
        let f = w
            .model
            .translate(0x11, VirtAddr(VA), AccessKind::Read)
            .unwrap_err();
        assert_eq!(f.kind, FaultKind::BadSte(BadSte::Invalid));
        s.attach(0x11, w.ctx).unwrap();
        // A wedged SMMU: the attach times out and cannot even be taken back, so the stream
        // stays accounted for and its context cannot be destroyed under it.
        w.model.set_knobs(Knobs {
            stall_sync: true,
            ..Knobs::default()
        });
        let other = s
            .create_context(ContextParams {
                root: w.tables.root(),
                mair: MAIR,
            })
            .unwrap();
        assert!(matches!(
            s.attach(0x12, other),
            Err(SmmuError::SyncTimeout { .. })
        ));
        assert_eq!(s.context_streams(other).unwrap(), [0x12]);
        assert_eq!(
            s.destroy_context(other),
            Err(SmmuError::ContextInUse(other))
        );
        // Once the SMMU recovers, detach cleans up and the context can go.
        w.model.set_knobs(Knobs::default());
        s.detach(0x12).unwrap();
        s.destroy_context(other).unwrap();
    });
}

#[test]
fn event_queue_write_aborts_are_reported_and_acknowledged() {
    with_default_world(|w| {
        w.model.set_knobs(Knobs {
            abort_event_writes: true,
            ..Knobs::default()
        });
        let f = w
            .model
            .translate(0x30, VirtAddr(0), AccessKind::Read)
            .unwrap_err();
        assert_eq!(f.kind, FaultKind::BadSte(BadSte::Invalid));
        let drain = w.smmu.drain_events(|_| {}).unwrap();
        assert_eq!((drain.drained, drain.write_aborted), (0, true));
        assert_eq!(
            w.model.read32(offset::GERROR),
            w.model.read32(offset::GERRORN)
        );
        // The same through the generic acknowledgement.
        let _ = w.model.translate(0x30, VirtAddr(0), AccessKind::Read);
        assert_eq!(w.smmu.acknowledge_global_errors(), 1 << 2, "EVENTQ_ABT_ERR");
        assert_eq!(w.smmu.acknowledge_global_errors(), 0);
        w.model.set_knobs(Knobs::default());
        let _ = w.model.translate(0x30, VirtAddr(0), AccessKind::Read);
        assert_eq!(w.events().len(), 1);
    });
}

/// The model, except that the SMMU consumes a new CMDQ_PROD only after the driver's next read
/// of CMDQ_CONS or GERROR has returned: an error raised between the two reads of one poll.
struct LateConsumer<'a> {
    model: &'a SmmuModel<'a>,
    held_prod: std::sync::Mutex<Option<u32>>,
}

impl SmmuBackend for LateConsumer<'_> {
    fn read32(&self, offset: usize) -> u32 {
        let value = self.model.read32(offset);
        if offset == offset::CMDQ_CONS || offset == offset::GERROR {
            if let Some(prod) = self.held_prod.lock().unwrap().take() {
                self.model.write32(offset::CMDQ_PROD, prod);
            }
        }
        value
    }
    fn write32(&self, offset: usize, value: u32) {
        if offset == offset::CMDQ_PROD && self.model.read32(offset::CR0) & 1 << 3 != 0 {
            *self.held_prod.lock().unwrap() = Some(value);
        } else {
            self.model.write32(offset, value);
        }
    }
    fn read64(&self, offset: usize) -> u64 {
        self.model.read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        self.model.write64(offset, value)
    }
}

/// A command error raised while the driver polls is reported with the failing command's index
/// and opcode: CMDQ_CONS is read after GERROR shows the error (§7.1), never before.
#[test]
fn a_command_error_is_reported_at_the_command_that_failed() {
    let mem = arena();
    let model = SmmuModel::new(&mem, ModelConfig::default()).unwrap();
    let late = LateConsumer {
        model: &model,
        held_prod: std::sync::Mutex::new(None),
    };
    run_world(&mem, &model, &late, smmu_config(), |w| {
        w.map_pages(VA, 2, LeafAttrs::RW, 0x21);
        w.smmu.set_strategy(Strategy::PerPage).unwrap();
        // Two per-page TLBIs, then the CMD_SYNC, which the SMMU refuses.
        w.model.set_knobs(Knobs {
            fail_command: Some((Some(opcode::SYNC), CommandErrorCode::Illegal)),
            ..Knobs::default()
        });
        w.tables.unmap(VirtAddr(VA)).unwrap();
        w.tables.unmap(VirtAddr(VA + PAGE)).unwrap();
        let entries = 1u32 << w.smmu.config().cmdq_log2;
        let first = w.model.read32(offset::CMDQ_PROD) & (entries - 1);
        let report = w
            .smmu
            .invalidate_range(w.ctx, VirtAddr(VA), VirtAddr(VA + 2 * PAGE))
            .unwrap();
        let failure = report.recovered.expect("the refused CMD_SYNC is reported");
        assert_eq!(failure.command.map(|c| c.kind()), Ok(CommandKind::Sync));
        assert_eq!(failure.code, CommandErrorCode::Illegal, "CMDQ_CONS.ERR as raised");
        assert_eq!(failure.index, (first + 2) % entries, "TLBI, TLBI, then the CMD_SYNC");
        assert!(w.model.stale_translations().is_empty());
    });
}

/// A refused CMD_SYNC written apart from any caller's commands (a caller that saw other CPUs
/// submit lately publishes its commands first and writes the CMD_SYNC later, for them to
/// share) has no owner to report to and owes no whole-ASID fallback: the driver runs a
/// CMD_SYNC in its place (§7.1), which completes every command before it (§4.7.3), so the
/// invalidation returns only once its TLBI is done. The soak's `cmdq` fault, which refuses
/// whatever command comes next, hits such CMD_SYNCs.
#[test]
fn a_refused_cmd_sync_written_apart_loses_no_invalidation() {
    with_default_world(|w| {
        let frame = w.map_pages(VA, 2, LeafAttrs::RW, 0x21)[0];
        let dma = w.dma();
        dma.touch(VirtAddr(VA), AccessKind::Write).unwrap();
        let (smmu, ctx) = (w.smmu, w.ctx);
        std::thread::scope(|s| {
            s.spawn(|| {
                let (start, end) = (VirtAddr(VA + PAGE), VirtAddr(VA + 2 * PAGE));
                smmu.invalidate_range(ctx, start, end).unwrap()
            });
        });
        let before = w.smmu.stats();
        w.tables.unmap(VirtAddr(VA)).unwrap();
        w.model.set_knobs(Knobs {
            fail_command: Some((Some(opcode::SYNC), CommandErrorCode::Illegal)),
            ..Knobs::default()
        });
        let report = w.invalidate(VA, 1);
        let after = w.smmu.stats();
        assert_eq!(
            after.prod_writes - before.prod_writes,
            2,
            "the TLBI, then the CMD_SYNC apart"
        );
        let refused = after.last_command_error.expect("the CMD_SYNC was refused");
        assert_eq!(refused.command.map(|c| c.kind()), Ok(CommandKind::Sync));
        assert_eq!(after.command_errors, before.command_errors + 1);
        assert_eq!(report.recovered, None, "nobody's command was lost");
        assert_eq!(after.invalidation_fallbacks, before.invalidation_fallbacks);
        // The TLBI completed all the same.
        assert!(dma.write(VirtAddr(VA), &[9]).is_err());
        assert_eq!(w.byte(frame), 0x21);
        assert!(w.model.stale_translations().is_empty());
    });
}

/// The model, with SMMU_GBPA.UPDATE never clearing once `stuck` is set.
struct StuckGbpa<'a> {
    model: &'a SmmuModel<'a>,
    stuck: std::sync::atomic::AtomicBool,
}

impl SmmuBackend for StuckGbpa<'_> {
    fn read32(&self, offset: usize) -> u32 {
        let v = self.model.read32(offset);
        if offset == offset::GBPA && self.stuck.load(std::sync::atomic::Ordering::Relaxed) {
            v | 1 << 31 // §6.3.14 GBPA.UPDATE
        } else {
            v
        }
    }
    fn write32(&self, offset: usize, value: u32) {
        self.model.write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        self.model.read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        self.model.write64(offset, value)
    }
}

/// The last resort still turns translation off when GBPA never acknowledges: SMMUEN = 0 is
/// written anyway, and the GBPA timeout is what is reported.
#[test]
fn abort_all_traffic_clears_smmuen_even_if_gbpa_never_acknowledges() {
    let mem = arena();
    let model = SmmuModel::new(&mem, ModelConfig::default()).unwrap();
    let stuck = StuckGbpa {
        model: &model,
        stuck: false.into(),
    };
    let clock = StepClock::new(1_000);
    let smmu = Smmu::new(&stuck, &clock, &mem, &mem, smmu_config()).unwrap();
    assert_ne!(model.read32(offset::CR0) & 1, 0, "enabled");
    stuck.stuck.store(true, std::sync::atomic::Ordering::Relaxed);
    let err = smmu.abort_all_traffic().unwrap_err();
    assert!(
        matches!(err, SmmuError::AckTimeout { register: "SMMU_GBPA", .. }),
        "{err}"
    );
    assert_eq!(model.read32(offset::CR0) & 1, 0, "SMMUEN cleared all the same");
    assert!(smmu.is_disabled());
}

/// The model, except that the driver's next write of SMMU_EVENTQ_BASE waits at a gate once
/// armed (so another CPU can act while an event-queue resize has the queue off), and the
/// writes of SMMU_GBPA are counted (another CPU's last resort has begun).
struct GatedEventqBase<'a> {
    model: &'a SmmuModel<'a>,
    armed: std::sync::atomic::AtomicBool,
    arrived: std::sync::atomic::AtomicBool,
    open: std::sync::atomic::AtomicBool,
    gbpa_writes: std::sync::atomic::AtomicU32,
}

impl SmmuBackend for GatedEventqBase<'_> {
    fn read32(&self, offset: usize) -> u32 {
        self.model.read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        if offset == offset::GBPA {
            self.gbpa_writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.model.write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        self.model.read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        if offset == offset::EVENTQ_BASE && self.armed.swap(false, SeqCst) {
            self.arrived.store(true, SeqCst);
            while !self.open.load(SeqCst) {
                std::thread::yield_now();
            }
        }
        self.model.write64(offset, value)
    }
}

/// A test's event-queue resize racing the last resort on another CPU: once
/// `abort_all_traffic` has returned, translation stays off. The resize turns the queue off and
/// on again by writing SMMU_CR0; writing back the CR0 it read before the last resort cleared
/// SMMUEN turned translation on again behind the caller that was told it is off.
#[test]
fn an_event_queue_resize_never_turns_translation_back_on_after_the_last_resort() {
    use std::sync::atomic::Ordering::SeqCst;
    let mem = arena();
    let model = SmmuModel::new(&mem, ModelConfig::default()).unwrap();
    let gated = GatedEventqBase {
        model: &model,
        armed: false.into(),
        arrived: false.into(),
        open: false.into(),
        gbpa_writes: 0.into(),
    };
    let clock = StepClock::new(1_000);
    let smmu = Smmu::new(&gated, &clock, &mem, &mem, smmu_config()).unwrap();
    let smmuen = || model.read32(offset::CR0) & 1;
    assert_eq!(smmuen(), 1, "enabled");
    let gbpa_before = gated.gbpa_writes.load(SeqCst);
    gated.armed.store(true, SeqCst);
    std::thread::scope(|s| {
        let resize = s.spawn(|| smmu.resize_event_queue(3));
        while !gated.arrived.load(SeqCst) {
            std::thread::yield_now();
        }
        // The queue is off, its base being written: the last resort starts on another CPU.
        let abort = s.spawn(|| smmu.abort_all_traffic());
        while gated.gbpa_writes.load(SeqCst) == gbpa_before {
            std::thread::yield_now();
        }
        // Give it the time to clear SMMUEN if nothing holds it back (it takes microseconds).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while smmuen() == 1 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        gated.open.store(true, SeqCst);
        let _ = resize.join().unwrap();
        abort.join().unwrap().unwrap();
    });
    assert!(smmu.is_disabled());
    assert_eq!(
        smmuen(),
        0,
        "translation is on again after the last resort returned"
    );
    // And a resize after it is refused rather than touching CR0.
    assert_eq!(smmu.resize_event_queue(3), Err(SmmuError::Disabled));
    assert_eq!(smmuen(), 0);
}

/// What the eventq interrupt does ([`Smmu::collect_events`]): records leave the SMMU's queue
/// (CONS handed back) into the software log, and the next drain decodes them first, in order.
/// The interrupt moves only what the log has room for: the rest waits in the SMMU's queue, so
/// log and queue together keep two queues' worth, and only beyond that does the SMMU lose
/// records (OVFLG).
#[test]
fn collected_events_wait_in_the_log_and_the_rest_in_the_queue() {
    let mem = arena();
    let model = SmmuModel::new(&mem, ModelConfig::default()).unwrap();
    let clock = StepClock::new(1_000);
    let config = SmmuConfig {
        eventq_log2: 3,
        ..smmu_config()
    };
    let smmu = Smmu::new(&model, &clock, &mem, &mem, config).unwrap();
    let entries = smmu.event_queue_size().in_use.entries();
    assert_eq!(entries, 8);
    let fault = |sid: u32| {
        let _ = model.translate(sid, VirtAddr(0), AccessKind::Read);
    };
    for sid in 0x20..0x25 {
        fault(sid);
    }
    assert_eq!(smmu.queued_events(), 5);
    assert_eq!(smmu.collect_events().unwrap(), 5);
    assert_eq!((smmu.queued_events(), smmu.logged_events()), (0, 5));
    assert_eq!(
        model.read32(offset::EVENTQ_CONS) & 0xf,
        model.read32(offset::EVENTQ_PROD) & 0xf,
        "the slots are handed back to the SMMU"
    );
    // Newer records still in the queue come after the logged ones.
    fault(0x25);
    let mut sids = Vec::new();
    let drain = smmu.drain_events(|e| sids.push(e.sid)).unwrap();
    assert_eq!(sids, (0x20..0x26).collect::<Vec<_>>());
    assert!(!drain.lost_events(), "{drain:?}");
    // Twice six records without a drain: the log takes eight, the queue keeps four, in order.
    let sids_of = |rounds: u32| -> Vec<u32> {
        (0..rounds)
            .flat_map(|round| (0..6).map(move |i| 0x40 + round * 8 + i))
            .collect()
    };
    let collect_rounds = |rounds: u32| {
        for round in 0..rounds {
            for i in 0..6 {
                fault(0x40 + round * 8 + i);
            }
            smmu.collect_events().unwrap();
        }
    };
    collect_rounds(2);
    assert_eq!((smmu.logged_events(), smmu.queued_events()), (8, 4));
    let mut sids = Vec::new();
    let drain = smmu.drain_events(|e| sids.push(e.sid)).unwrap();
    assert_eq!(sids, sids_of(2), "records were lost or reordered");
    assert!(!drain.lost_events(), "{drain:?}");
    // Three times six: sixteen fit (log and queue full), the last two overflow the SMMU's
    // queue, and the drain says so.
    collect_rounds(3);
    assert_eq!((smmu.logged_events(), smmu.queued_events()), (8, 8));
    let mut sids = Vec::new();
    let drain = smmu.drain_events(|e| sids.push(e.sid)).unwrap();
    assert_eq!(sids, sids_of(3)[..16]);
    assert!(drain.overflowed, "{drain:?}");
    assert_eq!(model.stats().events_lost, 2);
    assert_eq!(smmu.drain_events(|_| {}).unwrap(), Default::default());
}

/// A shrunk event queue comes with a log as small: a test that shrinks the queue to overflow
/// it with few faults sees the overflow even though the interrupt empties the queue into the
/// log, which was allocated for the full queue.
#[test]
fn a_shrunk_event_queue_shrinks_the_log_too() {
    let mem = arena();
    let model = SmmuModel::new(&mem, ModelConfig::default()).unwrap();
    let clock = StepClock::new(1_000);
    let config = SmmuConfig {
        eventq_log2: 5,
        ..smmu_config()
    };
    let smmu = Smmu::new(&model, &clock, &mem, &mem, config).unwrap();
    let allocated = smmu.event_queue_size().allocated.entries();
    let resized = smmu.resize_event_queue(2).unwrap();
    let entries = resized.in_use.entries();
    assert!(entries < allocated / 2, "{entries} of {allocated}");
    // Three queues' worth, the interrupt collecting after each: log and queue hold two.
    for round in 0..3 {
        for i in 0..entries {
            let _ = model.translate(0x20 + round * entries + i, VirtAddr(0), AccessKind::Read);
        }
        smmu.collect_events().unwrap();
    }
    assert_eq!(smmu.logged_events(), entries as usize);
    let mut n = 0;
    let drain = smmu.drain_events(|_| n += 1).unwrap();
    assert_eq!(n, 2 * entries as usize);
    assert!(drain.overflowed, "{drain:?}: the shrunk queue never overflowed");
}

/// A resize drops what is pending, in the queue and in the log, and says how much; an
/// overflow the SMMU signalled before it is still reported by the next drain.
#[test]
fn a_resize_counts_what_it_drops_and_keeps_an_unreported_overflow() {
    let mem = arena();
    let model = SmmuModel::new(&mem, ModelConfig::default()).unwrap();
    let clock = StepClock::new(1_000);
    let smmu = Smmu::new(&model, &clock, &mem, &mem, smmu_config()).unwrap();
    let fault = |sid: u32| {
        let _ = model.translate(sid, VirtAddr(0), AccessKind::Read);
    };
    let entries = smmu.resize_event_queue(2).unwrap().in_use.entries();
    for sid in 0..3 {
        fault(0x20 + sid);
    }
    smmu.collect_events().unwrap();
    fault(0x30);
    assert_eq!((smmu.logged_events(), smmu.queued_events()), (3, 1));
    assert_eq!(smmu.resize_event_queue(2).unwrap().dropped, 4);
    assert_eq!(smmu.drain_events(|_| {}).unwrap(), Default::default());
    // Overflow the queue, nobody drains: the resize must not swallow the overflow.
    for i in 0..=entries {
        fault(0x40 + i);
    }
    assert_eq!(model.stats().events_lost, 1);
    let resized = smmu.resize_event_queue(2).unwrap();
    assert_eq!(resized.dropped, entries as usize);
    let drain = smmu.drain_events(|_| {}).unwrap();
    assert_eq!((drain.drained, drain.overflowed), (0, true), "{drain:?}");
    assert!(!smmu.drain_events(|_| {}).unwrap().overflowed, "reported once");
}

#[test]
fn event_interrupts_are_enabled_through_irq_ctrl() {
    with_default_world(|w| {
        assert!(!w.smmu.event_interrupt_enabled(), "the driver alone polls");
        assert_eq!(w.model.read32(offset::IRQ_CTRLACK), 0);
        w.smmu.set_interrupts(true, true).unwrap();
        assert!(w.smmu.event_interrupt_enabled());
        assert_eq!(
            w.model.read32(offset::IRQ_CTRLACK),
            0b101,
            "EVENTQ_IRQEN | GERROR_IRQEN"
        );
        w.smmu.set_interrupts(false, true).unwrap();
        assert!(!w.smmu.event_interrupt_enabled());
        assert_eq!(w.model.read32(offset::IRQ_CTRLACK), 0b001);
    });
}
