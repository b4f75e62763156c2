//! The SMMU driver and the SMMU model together: a device doing DMA through the virtual
//! addresses of a bound address space, and everything that must happen when those mappings
//! change. Each safety property is shown twice: with the driver as it is (the property holds)
//! and with a debug knob that breaks it (the checker or the test catches it).

#[path = "smmu_support.rs"]
mod support;

use shootdown::iommu::driver::planner::{AsidReason, PlanKind, Strategy};
use shootdown::iommu::driver::{DebugKnobs, SmmuConfig};
use shootdown::iommu::fake::LeafAttrs;
use shootdown::iommu::backend::model::checker::{StaleKind, StaleSource};
use shootdown::iommu::backend::model::dma::{DmaEngine, DmaError, FaultPolicy};
use shootdown::iommu::backend::model::iotlb::{IotlbConfig, Replacement};
use shootdown::iommu::backend::model::{FaultKind, ModelConfig};
use shootdown::iommu::spec::command::CommandKind;
use shootdown::iommu::spec::event::{AccessKind, EventKind};
use shootdown::mm::phys::FrameAllocator;
use shootdown::mm::{PhysAddr, VirtAddr, PAGE_SIZE};
use support::*;

const PAGE: u64 = PAGE_SIZE as u64;

#[test]
fn dma_reads_and_writes_through_shared_virtual_addresses() {
    with_default_world(|w| {
        let frames = w.map_pages(VA, 4, LeafAttrs::RW, 0x10);
        let dma = w.dma();
        // Read: the device sees what the CPU put in the frames, across page boundaries.
        let mut buf = vec![0u8; 3 * PAGE_SIZE];
        dma.read(VirtAddr(VA + 0x800), &mut buf).unwrap();
        assert!(buf[..0x800].iter().all(|&b| b == 0x10));
        assert!(buf[0x800..0x1800].iter().all(|&b| b == 0x11));
        assert!(buf[0x2800..].iter().all(|&b| b == 0x13));
        // Write: the bytes land in the right frames, and nowhere else.
        let data: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 7) as u8).collect();
        dma.write(VirtAddr(VA + 2 * PAGE + 0x100), &data[..0x200])
            .unwrap();
        let mut back = [0u8; 0x200];
        w.mem
            .read(PhysAddr(frames[2].as_u64() + 0x100), &mut back)
            .unwrap();
        assert_eq!(back[..], data[..0x200]);
        assert_eq!(w.byte(PhysAddr(frames[2].as_u64() + 0xff)), 0x12);
        assert_eq!(w.byte(PhysAddr(frames[2].as_u64() + 0x300)), 0x12);
        assert!(w.events().is_empty());
        assert!(w.model.stale_translations().is_empty());
    });
}

/// Maps one page, lets the device cache it, unmaps it (with or without invalidation), then has
/// the device write and read there. Returns (write result, read buffer, old frame).
fn dma_after_unmap(w: &World<'_>, knobs: DebugKnobs) -> (Result<(), DmaError>, Vec<u8>, PhysAddr) {
    let frame = w.map_pages(VA, 1, LeafAttrs::RW, 0x5a)[0];
    let dma = w.dma();
    let mut buf = vec![0u8; 64];
    dma.read(VirtAddr(VA), &mut buf).unwrap(); // the IOTLB now holds the translation
    w.smmu.set_debug_knobs(knobs);
    w.unmap(VA, 1);
    w.smmu.set_debug_knobs(DebugKnobs::default());
    let write = dma.write(VirtAddr(VA + 8), &[0xee; 8]);
    let mut after = vec![0x77u8; 64];
    let _ = dma.read(VirtAddr(VA), &mut after);
    (write, after, frame)
}

#[test]
fn dma_after_unmap_faults_and_touches_nothing() {
    with_default_world(|w| {
        let (write, read_back, frame) = dma_after_unmap(w, DebugKnobs::default());
        match write {
            Err(DmaError::Fault { va, fault, .. }) => {
                assert_eq!(va, VirtAddr(VA + 8));
                assert_eq!(fault.kind, FaultKind::Translation { level: 3 });
                assert!(fault.recorded);
            }
            other => panic!("write after unmap must fault, got {other:?}"),
        }
        // The old frame kept its contents; the device got nothing of it.
        assert_eq!(w.byte(PhysAddr(frame.as_u64() + 8)), 0x5a);
        assert!(
            read_back.iter().all(|&b| b == 0),
            "a faulting read delivers zeros"
        );
        let events = w.events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].kind, EventKind::Translation);
        assert_eq!(events[0].sid, SID);
        assert_eq!(events[0].input_addr, VA + 8);
        assert_eq!(events[0].access, AccessKind::Write);
        assert_eq!(
            (events[1].input_addr, events[1].access),
            (VA, AccessKind::Read)
        );
        assert!(w.model.stale_translations().is_empty());
    });
}

#[test]
fn skipping_the_invalidation_is_caught_by_the_checker() {
    with_default_world(|w| {
        let knobs = DebugKnobs {
            skip_invalidation: true,
            ..DebugKnobs::default()
        };
        let (write, read_back, frame) = dma_after_unmap(w, knobs);
        // The stale IOTLB entry let the device into the unmapped frame...
        assert_eq!(write, Ok(()));
        assert_eq!(w.byte(PhysAddr(frame.as_u64() + 8)), 0xee);
        assert_eq!(read_back[0], 0x5a);
        assert!(w.events().is_empty(), "hardware does not notice");
        // ...and the checker names the VA, the ASID and the unmap whose invalidation was lost.
        let stale = w.model.take_stale_translations();
        assert_eq!(stale.len(), 2);
        let s = stale[0];
        assert_eq!(s.kind, StaleKind::UseAfterUnmap);
        assert_eq!(s.source, StaleSource::Iotlb);
        assert_eq!((s.sid, s.asid, s.va), (SID, Some(w.asid), VirtAddr(VA + 8)));
        assert_eq!(s.used, Ok(PhysAddr(frame.as_u64() + 8)));
        assert_eq!(s.fresh, Err(FaultKind::Translation { level: 3 }));
        let unmap = s.last_unmap.expect("the unmap was noted");
        assert_eq!(
            (unmap.id, unmap.start, unmap.end),
            (1, VirtAddr(VA), VirtAddr(VA + PAGE))
        );
        assert!(format!("{s}").contains("last unmap #1"));
        assert_eq!(w.smmu.stats().invalidations_skipped, 1);
    });
}

#[test]
fn a_forgotten_cmd_sync_is_caught_by_the_checker() {
    with_default_world(|w| {
        let knobs = DebugKnobs {
            skip_sync: true,
            ..DebugKnobs::default()
        };
        let (write, _, _) = dma_after_unmap(w, knobs);
        // The TLBI was queued and even consumed, but without a CMD_SYNC nothing says it is done.
        assert_eq!(write, Ok(()));
        assert_eq!(w.model.pending_commands(), 1);
        assert_eq!(
            w.model.take_stale_translations()[0].kind,
            StaleKind::UseAfterUnmap
        );
        // The next synchronised invalidation (of anything) completes it.
        w.invalidate(VA + 0x10_0000, 1);
        assert!(w.dma().write(VirtAddr(VA), &[1]).is_err());
        assert!(w.model.stale_translations().is_empty());
    });
}

#[test]
fn read_only_mapping_faults_writes_and_serves_reads() {
    with_default_world(|w| {
        let frame = w.map_pages(VA, 1, LeafAttrs::RO, 0x33)[0];
        let dma = w.dma();
        let mut buf = [0u8; 16];
        dma.read(VirtAddr(VA + 0x40), &mut buf).unwrap();
        assert_eq!(buf, [0x33; 16]);
        let err = dma.write(VirtAddr(VA + 0x40), &[0; 16]).unwrap_err();
        assert!(
            matches!(err, DmaError::Fault { fault, .. } if fault.kind == FaultKind::Permission { level: 3 })
        );
        assert_eq!(w.byte(PhysAddr(frame.as_u64() + 0x40)), 0x33);
        let ev = w.events();
        assert_eq!(ev.len(), 1);
        assert_eq!(
            (ev[0].kind, ev[0].access, ev[0].input_addr),
            (EventKind::Permission, AccessKind::Write, VA + 0x40)
        );
    });
}

#[test]
fn mprotect_read_only_then_back_to_writable() {
    with_default_world(|w| {
        let frame = w.map_pages(VA, 1, LeafAttrs::RW, 0)[0];
        let dma = w.dma();
        dma.write(VirtAddr(VA), &[1]).unwrap();
        // Downgrade: the cached writable entry must go.
        w.tables.set_writable(VirtAddr(VA), false).unwrap();
        w.invalidate(VA, 1);
        assert!(
            matches!(dma.write(VirtAddr(VA), &[2]), Err(DmaError::Fault { fault, .. }) if fault.kind == FaultKind::Permission { level: 3 })
        );
        let mut b = [0u8];
        dma.read(VirtAddr(VA), &mut b).unwrap();
        assert_eq!(b, [1]);
        // Upgrade: the cached read-only entry must go too (Linux 6.6's permission-upgrade fix).
        w.tables.set_writable(VirtAddr(VA), true).unwrap();
        w.invalidate(VA, 1);
        dma.write(VirtAddr(VA), &[3]).unwrap();
        assert_eq!(w.byte(frame), 3);
        assert!(w.model.stale_translations().is_empty());
    });
}

#[test]
fn permission_upgrade_without_invalidation_faults_spuriously() {
    with_default_world(|w| {
        w.map_pages(VA, 1, LeafAttrs::RO, 0);
        let dma = w.dma();
        dma.read(VirtAddr(VA), &mut [0u8; 1]).unwrap(); // caches the read-only entry
        w.tables.set_writable(VirtAddr(VA), true).unwrap();
        w.smmu.set_debug_knobs(DebugKnobs {
            skip_invalidation: true,
            ..DebugKnobs::default()
        });
        w.invalidate(VA, 1);
        // The device keeps faulting on a page that is writable now (the 2023 bug).
        assert!(dma.write(VirtAddr(VA), &[1]).is_err());
        let stale = w.model.take_stale_translations();
        assert_eq!(stale[0].kind, StaleKind::SpuriousFault);
        assert_eq!(stale[0].used, Err(FaultKind::Permission { level: 3 }));
    });
}

#[test]
fn unrelated_mappings_stay_cached_unless_the_strategy_is_asid_wide() {
    for strategy in Strategy::ALL {
        let cfg = SmmuConfig {
            strategy,
            ..smmu_config()
        };
        with_world(ModelConfig::default(), cfg, |w| {
            let (a, b) = (VA, VA + 0x100_0000);
            w.map_pages(a, 32, LeafAttrs::RW, 0);
            w.map_pages(b, 16, LeafAttrs::RW, 0);
            let dma = w.dma();
            for i in 0..48 {
                let va = if i < 32 {
                    a + i * PAGE
                } else {
                    b + (i - 32) * PAGE
                };
                dma.touch(VirtAddr(va), AccessKind::Read).unwrap();
            }
            w.unmap(b, 16);
            w.model.reset_stats();
            for i in 0..32 {
                dma.touch(VirtAddr(a + i * PAGE), AccessKind::Read).unwrap();
            }
            let s = w.model.stats();
            if strategy == Strategy::Asid {
                assert_eq!(
                    (s.iotlb_hits, s.iotlb_misses),
                    (0, 32),
                    "{strategy:?} drops everything"
                );
            } else {
                assert_eq!(
                    (s.iotlb_hits, s.iotlb_misses),
                    (32, 0),
                    "{strategy:?} over-invalidated"
                );
            }
            for i in 0..16 {
                assert!(dma.touch(VirtAddr(b + i * PAGE), AccessKind::Read).is_err());
            }
            assert!(w.model.stale_translations().is_empty());
        });
    }
}

#[test]
fn every_strategy_invalidates_a_2mib_block_and_sends_one_sync() {
    for strategy in Strategy::ALL {
        let cfg = SmmuConfig {
            strategy,
            ..smmu_config()
        };
        with_world(ModelConfig::default(), cfg, |w| {
            let block = VA + 0x20_0000;
            w.tables
                .map_block_2m(VirtAddr(block), PhysAddr(0x4040_0000), LeafAttrs::RW)
                .unwrap();
            let dma = w.dma();
            dma.touch(VirtAddr(block + 0x1234), AccessKind::Write)
                .unwrap();
            w.tables.unmap(VirtAddr(block)).unwrap();
            let report = w.invalidate(block, 512);
            assert_eq!(report.commands.get(CommandKind::Sync), 1, "{strategy:?}");
            for off in [0, 0x1234, 0x1f_f000] {
                assert!(
                    dma.touch(VirtAddr(block + off), AccessKind::Read).is_err(),
                    "{strategy:?} {off:#x}"
                );
            }
            assert!(w.model.stale_translations().is_empty(), "{strategy:?}");
        });
    }
}

/// Issue 16's free cover on the model: 4095 pages whose neighbours map nothing take one range
/// command; with mapped neighbours the exact encoding stays and their IOTLB entries survive
/// (hit rate 100 %); the twin forces the cover over the mapped neighbours (the debug knob) and
/// the hit rate drops, so the hit-rate check can fail. Turned off, the exact encoding always.
#[test]
fn free_cover_spares_mapped_neighbours_and_its_twin_does_not() {
    const PAGES: u64 = 4095;
    let frame = PhysAddr(0x4080_0000);
    let neighbours = [VA - PAGE, VA + PAGES * PAGE];
    // (neighbours mapped, cover forced, cover on) -> (plan, range commands, neighbour hits)
    let run = |mapped: bool, forced: bool, cover: bool| {
        with_default_world(|w| {
            w.smmu.set_free_cover(cover);
            w.smmu.set_debug_knobs(DebugKnobs {
                cover_ignores_tables: forced,
                ..DebugKnobs::default()
            });
            for i in 0..PAGES {
                w.tables
                    .map(VirtAddr(VA + i * PAGE), frame, LeafAttrs::RW)
                    .unwrap();
            }
            let dma = w.dma();
            if mapped {
                for n in neighbours {
                    w.tables.map(VirtAddr(n), frame, LeafAttrs::RW).unwrap();
                    dma.touch(VirtAddr(n), AccessKind::Read).unwrap();
                }
            }
            for i in [0, 1, PAGES / 2, PAGES - 1] {
                dma.touch(VirtAddr(VA + i * PAGE), AccessKind::Read)
                    .unwrap();
            }
            let report = w.unmap(VA, PAGES);
            assert_eq!(report.commands.get(CommandKind::Sync), 1);
            for i in [0, 1, PAGES / 2, PAGES - 1] {
                assert!(dma
                    .touch(VirtAddr(VA + i * PAGE), AccessKind::Read)
                    .is_err());
            }
            assert!(w.model.stale_translations().is_empty());
            w.model.reset_stats();
            if mapped {
                for n in neighbours {
                    dma.touch(VirtAddr(n), AccessKind::Read).unwrap();
                }
            }
            let ranges = report.commands.get(CommandKind::TlbiNhVaRange);
            assert_eq!(report.commands.total(), ranges + 1, "{report:?}");
            (report.plan, ranges, w.model.stats().iotlb_hits)
        })
    };
    let cover = PlanKind::Cover {
        pages: PAGES,
        covered: 4096,
    };
    let exact = PlanKind::Range { pages: PAGES };
    assert_eq!(
        run(false, false, true),
        (cover, 1, 0),
        "unmapped neighbours: one command"
    );
    assert_eq!(
        run(true, false, true),
        (exact, 3, 2),
        "mapped neighbours: exact, both hit"
    );
    let (plan, ranges, hits) = run(true, true, true);
    assert_eq!((plan, ranges), (cover, 1), "the twin takes the cover");
    assert!(
        hits < 2,
        "the twin over mapped neighbours must lose one of their entries"
    );
    assert_eq!(run(false, false, false), (exact, 3, 0), "cover off: exact");
}

#[test]
fn strategies_send_the_planned_commands() {
    let expect = |strategy: Strategy, pages: u64| -> (PlanKind, u64, CommandKind) {
        match (strategy, pages) {
            (Strategy::PerPage, n) => (PlanKind::PerPage { pages: n }, n, CommandKind::TlbiNhVa),
            (Strategy::Asid, _) => (
                PlanKind::Asid(AsidReason::Strategy),
                1,
                CommandKind::TlbiNhAsid,
            ),
            (Strategy::Range | Strategy::Auto, n) => {
                let cmds = match n {
                    1 | 16 | 512 | 4096 => 1,
                    _ => unreachable!(),
                };
                (
                    PlanKind::Range { pages: n },
                    cmds,
                    CommandKind::TlbiNhVaRange,
                )
            }
        }
    };
    for strategy in Strategy::ALL {
        let cfg = SmmuConfig {
            strategy,
            ..smmu_config()
        };
        with_world(ModelConfig::default(), cfg, |w| {
            for pages in [1u64, 16, 512, 4096] {
                let report = w.invalidate(VA, pages);
                let (plan, n, kind) = expect(strategy, pages);
                assert_eq!(report.plan, plan, "{strategy:?} {pages}");
                assert_eq!(report.commands.get(kind), n, "{strategy:?} {pages}");
                assert_eq!(report.commands.get(CommandKind::Sync), 1);
                assert_eq!(report.commands.total(), n + 1);
                assert!(report.recovered.is_none());
            }
        });
    }
    // Without RIL, Linux's policy: per page below 512 pages, ASID-wide from there.
    let no_ril = ModelConfig {
        range_invalidation: false,
        ..ModelConfig::default()
    };
    with_world(no_ril, smmu_config(), |w| {
        assert_eq!(w.invalidate(VA, 511).plan, PlanKind::PerPage { pages: 511 });
        assert_eq!(
            w.invalidate(VA, 512).plan,
            PlanKind::Asid(AsidReason::AboveThreshold)
        );
        let whole = w
            .smmu
            .invalidate_range(w.ctx, VirtAddr(0), VirtAddr(u64::MAX))
            .unwrap();
        assert_eq!(whole.plan, PlanKind::Asid(AsidReason::WholeAddressSpace));
        let stats = w.smmu.stats();
        assert_eq!(
            (stats.invalidations_per_page, stats.invalidations_asid),
            (1, 2)
        );
    });
}

#[test]
fn release_quiesces_the_context_quietly_before_tables_are_freed() {
    with_default_world(|w| {
        let frames = w.map_pages(VA, 2, LeafAttrs::RW, 0x44);
        let dma = w.dma();
        dma.write(VirtAddr(VA), &[1; 8]).unwrap();
        w.smmu.quiesce(w.ctx).unwrap();
        // Every access now faults, quietly: no event, nothing reached.
        let err = dma.write(VirtAddr(VA + PAGE), &[2; 8]).unwrap_err();
        assert!(
            matches!(err, DmaError::Fault { fault, .. } if !fault.recorded && fault.kind == FaultKind::Translation { level: 0 })
        );
        assert_eq!(w.byte(frames[1]), 0x45, "page 1 holds seed + 1");
        assert!(w.events().is_empty());
        assert!(w.model.stale_translations().is_empty());
        // The page-table frames can now be reused for anything: fill every free frame with
        // descriptor-looking garbage; the device still cannot walk into it.
        let mut grabbed = Vec::new();
        while let Ok(f) = w.mem.alloc_zeroed() {
            w.mem.fill_frame(f, 0xff).unwrap();
            grabbed.push(f);
        }
        assert!(dma.read(VirtAddr(VA), &mut [0u8; 8]).is_err());
        assert!(w.events().is_empty());
        for f in grabbed {
            w.free_frame(f);
        }
        // A quiesced context takes no new streams; tear-down works.
        assert!(w.smmu.attach(SID + 1, w.ctx).is_err());
        w.smmu.detach(SID).unwrap();
        w.smmu.destroy_context(w.ctx).unwrap();
    });
}

#[test]
fn a_faulting_edu_transfer_overflows_the_event_queue_and_the_driver_survives() {
    let cfg = SmmuConfig {
        eventq_log2: 5,
        ..smmu_config()
    }; // 32 records
    with_world(ModelConfig::default(), cfg, |w| {
        // Like QEMU's edu device: 4-byte transactions that carry on after a fault.
        let edu = DmaEngine::new(w.model, SID)
            .with_transactions(4, FaultPolicy::Continue)
            .unwrap();
        let mut buf = vec![0xffu8; PAGE_SIZE];
        let err = edu.read(VirtAddr(VA), &mut buf).unwrap_err();
        assert!(matches!(err, DmaError::Fault { faulted: 1024, .. }));
        assert!(buf.iter().all(|&b| b == 0));
        let s = w.model.stats();
        assert_eq!((s.events_recorded, s.events_lost), (32, 992));
        let mut seen = Vec::new();
        let drain = w.smmu.drain_events(|e| seen.push(*e)).unwrap();
        assert_eq!(drain.drained, 32);
        assert!(drain.overflowed);
        assert!(seen
            .iter()
            .all(|e| e.kind == EventKind::Translation && e.sid == SID));
        assert_eq!(seen[1].input_addr, VA + 4);
        // The queue works after the overflow, and a second overflow is reported again.
        let _ = edu.read(VirtAddr(VA), &mut buf);
        let drain = w.smmu.drain_events(|_| {}).unwrap();
        assert_eq!((drain.drained, drain.overflowed), (32, true));
        let _ = edu.read(VirtAddr(VA), &mut buf[..8]);
        let drain = w.smmu.drain_events(|_| {}).unwrap();
        assert_eq!((drain.drained, drain.overflowed), (2, false));
        let stats = w.smmu.stats();
        assert_eq!(stats.event_overflows, 2);
        assert_eq!(stats.events_by_kind.get(&EventKind::Translation), Some(&66));
    });
}

#[test]
fn fifo_and_lru_iotlbs_stay_coherent_under_churn() {
    for replacement in [Replacement::Lru, Replacement::Fifo, Replacement::FlushAll] {
        let model = ModelConfig {
            iotlb: IotlbConfig {
                capacity: 8,
                replacement,
            },
            ..ModelConfig::default()
        };
        with_world(model, smmu_config(), |w| {
            let frames = w.map_pages(VA, 24, LeafAttrs::RW, 0);
            let dma = w.dma();
            for round in 0..3u64 {
                for i in 0..24 {
                    dma.write(VirtAddr(VA + i * PAGE), &[round as u8]).unwrap();
                }
                // Remap every third page to a new frame.
                for i in (0..24).step_by(3) {
                    let f = w.mem.alloc_zeroed().unwrap();
                    w.tables.remap(VirtAddr(VA + i * PAGE), f).unwrap();
                    w.invalidate(VA + i * PAGE, 1);
                }
            }
            assert!(w.model.stale_translations().is_empty(), "{replacement:?}");
            assert!(w.model.stats().iotlb_evictions > 0);
            assert_eq!(w.byte(frames[1]), 2);
        });
    }
}
