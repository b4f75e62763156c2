//! Unmaps on four threads while a device does DMA all the time (host threads standing in for
//! CPUs): every invalidation must have completed when its unmap returns, and the device must
//! never reach a frame after the unmap that removed it returned — not even a frame that was
//! freed and scribbled over right after. The same run with the invalidation switched off shows
//! all three checks firing.

#[path = "smmu_support.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use shootdown::iommu::backend::model::{Knobs, SmmuModel};
use shootdown::iommu::driver::{CommandFailure, DebugKnobs, SmmuError};
use shootdown::iommu::spec::command::{opcode, Command};
use shootdown::iommu::spec::regs::CommandErrorCode;
use shootdown::iommu::fake::LeafAttrs;
use shootdown::iommu::backend::model::dma::DmaEngine;
use shootdown::iommu::spec::event::AccessKind;
use shootdown::mm::phys::FrameAllocator;
use shootdown::mm::{VirtAddr, PAGE_SIZE};
use support::*;

const PAGE: u64 = PAGE_SIZE as u64;
const CPUS: u64 = 4;
const PAGES_PER_CPU: u64 = 8;
const ITERATIONS: u64 = 100;
/// What a frame is filled with once it has been freed.
const POISON: u8 = 0xdd;

fn region(cpu: u64) -> u64 {
    VA + cpu * 0x10_0000
}

#[derive(Debug, Default)]
struct Outcome {
    /// Translations still usable right after their unmap returned.
    post_unmap_hits: u64,
    /// Successful DMA reads that returned poison (a freed frame).
    poisoned_reads: u64,
    /// Checker violations.
    violations: usize,
    /// Checker races inside open unmap windows (allowed; reported for information).
    #[allow(dead_code)]
    races: u64,
    /// DMA reads attempted (most fault: each page is mapped only briefly).
    dma_reads: u64,
    /// Invalidations that timed out (and were retried).
    #[allow(dead_code)]
    sync_timeouts: u64,
    /// Commands the model refused.
    command_errors: u64,
    /// Invalidations that reported a refused command (and fell back to the whole ASID).
    recovered: u64,
    /// Of those, reports naming a command that was not the reporting CPU's.
    misattributed: u64,
}

/// The refused command is a TLBI of `cpu`'s region.
fn refused_in(f: &CommandFailure, cpu: u64) -> bool {
    match f.command {
        Ok(Command::TlbiNhVa(t)) => (region(cpu)..region(cpu + 1)).contains(&t.addr.as_u64()),
        _ => false,
    }
}

fn run(knobs: DebugKnobs) -> Outcome {
    run_with(knobs, Chaos::None)
}

/// What a fifth thread does to the SMMU while the CPUs unmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chaos {
    None,
    /// CMD_SYNCs stop completing for a while, again and again: waits overlap, CPUs publish
    /// behind a pending CMD_SYNC and share the next one.
    StallSyncs,
    /// The next TLBI_NH_VA is refused (CERROR_ILL), again and again, whichever CPU sent it.
    RefuseTlbis,
}

impl Chaos {
    /// Unmaps per CPU: fewer under chaos, where every one is slow.
    fn iterations(self) -> u64 {
        match self {
            Chaos::None => ITERATIONS,
            _ => ITERATIONS / 4,
        }
    }

    /// One disturbance, then a pause.
    fn strike(self, model: &SmmuModel<'_>) {
        let knobs = model.knobs();
        match self {
            Chaos::None => {}
            Chaos::StallSyncs => {
                model.set_knobs(Knobs { stall_sync: true, ..knobs });
                pause(50);
                model.set_knobs(Knobs { stall_sync: false, ..knobs });
            }
            Chaos::RefuseTlbis if knobs.fail_command.is_none() => {
                let refuse = Some((Some(opcode::TLBI_NH_VA), CommandErrorCode::Illegal));
                model.set_knobs(Knobs { fail_command: refuse, ..knobs });
            }
            Chaos::RefuseTlbis => {}
        }
        pause(50);
    }
}

fn pause(yields: u32) {
    for _ in 0..yields {
        thread::yield_now();
    }
}

fn run_with(knobs: DebugKnobs, chaos: Chaos) -> Outcome {
    with_default_world(|w| {
        // Build every intermediate table up front, so that the threads only touch leaves.
        let placeholder = w.mem.alloc_zeroed().unwrap();
        for cpu in 0..CPUS {
            for p in 0..PAGES_PER_CPU {
                let va = VirtAddr(region(cpu) + p * PAGE);
                w.tables.map(va, placeholder, LeafAttrs::RW).unwrap();
                w.tables.unmap(va).unwrap();
            }
        }
        w.smmu.set_debug_knobs(knobs);
        let (mem, model, smmu, tables, ctx, asid) =
            (w.mem, w.model, w.smmu, w.tables, w.ctx, w.asid);
        let stop = AtomicBool::new(false);
        let post_unmap_hits = AtomicU64::new(0);
        let poisoned = AtomicU64::new(0);
        let reads = AtomicU64::new(0);
        let (timeouts, recovered, misattributed) =
            (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
        thread::scope(|s| {
            if chaos != Chaos::None {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        chaos.strike(model);
                    }
                });
            }
            s.spawn(|| {
                let dma = DmaEngine::new(model, SID);
                while !stop.load(Ordering::Relaxed) {
                    for cpu in 0..CPUS {
                        for p in 0..PAGES_PER_CPU {
                            let mut buf = [0u8; 16];
                            reads.fetch_add(1, Ordering::Relaxed);
                            let ok = dma.read(VirtAddr(region(cpu) + p * PAGE), &mut buf).is_ok();
                            if ok && buf.contains(&POISON) {
                                poisoned.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
            let unmappers: Vec<_> = (0..CPUS)
                .map(|cpu| {
                    let post_unmap_hits = &post_unmap_hits;
                    let (timeouts, recovered, misattributed) =
                        (&timeouts, &recovered, &misattributed);
                    s.spawn(move || {
                        let dma = DmaEngine::new(model, SID);
                        for k in 0..chaos.iterations() {
                            let va = VirtAddr(region(cpu) + (k % PAGES_PER_CPU) * PAGE);
                            let frame = mem.alloc_zeroed().unwrap();
                            mem.fill_frame(frame, (cpu * 16 + k % 16) as u8).unwrap();
                            tables.map(va, frame, LeafAttrs::RW).unwrap();
                            // The device uses (and caches) the mapping.
                            dma.touch(va, AccessKind::Read).unwrap();
                            let id = cpu << 32 | k;
                            let end = VirtAddr(va.as_u64() + PAGE);
                            model.begin_unmap(asid, va, end, id);
                            tables.unmap(va).unwrap();
                            // A timed-out invalidation is retried: its CMD_SYNC was given
                            // up on, a new one follows the retried commands.
                            let report = loop {
                                match smmu.invalidate_range(ctx, va, end) {
                                    Ok(r) => break r,
                                    Err(SmmuError::SyncTimeout { .. }) => {
                                        timeouts.fetch_add(1, Ordering::Relaxed)
                                    }
                                    Err(e) => panic!("CPU {cpu}: {e}"),
                                };
                            };
                            if let Some(f) = report.recovered {
                                recovered.fetch_add(1, Ordering::Relaxed);
                                if !refused_in(&f, cpu) {
                                    misattributed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            model.end_unmap(id);
                            // The unmap has returned: the device must not get through.
                            if model.translate(SID, va, AccessKind::Read).is_ok() {
                                post_unmap_hits.fetch_add(1, Ordering::Relaxed);
                            }
                            mem.fill_frame(frame, POISON).unwrap();
                            mem.free(frame);
                        }
                    })
                })
                .collect();
            for u in unmappers {
                u.join().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
        let stats = model.stats();
        Outcome {
            post_unmap_hits: post_unmap_hits.into_inner(),
            poisoned_reads: poisoned.into_inner(),
            violations: model.stale_translations().len(),
            races: stats.raced_translations,
            dma_reads: reads.into_inner(),
            sync_timeouts: timeouts.into_inner(),
            command_errors: stats.command_errors,
            recovered: recovered.into_inner(),
            misattributed: misattributed.into_inner(),
        }
    })
}

#[test]
fn concurrent_unmaps_complete_before_returning() {
    let o = run(DebugKnobs::default());
    assert!(o.dma_reads > 0, "the device was busy: {o:?}");
    assert_eq!(o.post_unmap_hits, 0, "{o:?}");
    assert_eq!(o.poisoned_reads, 0, "{o:?}");
    assert_eq!(o.violations, 0, "{o:?}");
    eprintln!("{o:?}");
}

#[test]
fn concurrent_unmaps_without_invalidation_are_caught() {
    let o = run(DebugKnobs {
        skip_invalidation: true,
        ..DebugKnobs::default()
    });
    assert!(o.post_unmap_hits > 0, "{o:?}");
    assert!(o.violations > 0, "{o:?}");
    eprintln!("{o:?}");
}

/// Waits overlap (the SMMU holds CMD_SYNCs now and then), so CPUs share CMD_SYNCs written
/// while their commands were still pending: none may return before its own commands completed.
#[test]
fn shared_syncs_under_stalls_complete_before_returning() {
    let o = run_with(DebugKnobs::default(), Chaos::StallSyncs);
    eprintln!("{o:?}");
    assert_eq!(o.post_unmap_hits, 0, "{o:?}");
    assert_eq!(o.poisoned_reads, 0, "{o:?}");
    assert_eq!(o.violations, 0, "{o:?}");
}

/// The failing twin: waiting for the newest CMD_SYNC even when it precedes our commands.
#[test]
fn adopting_an_earlier_sync_is_caught_on_the_model() {
    let o = run_with(
        DebugKnobs {
            adopt_earlier_sync: true,
            ..DebugKnobs::default()
        },
        Chaos::StallSyncs,
    );
    eprintln!("{o:?}");
    assert!(o.post_unmap_hits > 0 || o.violations > 0, "{o:?}");
}

/// TLBIs are refused in the middle of other CPUs' traffic: each refusal is reported once, to
/// the CPU whose command it was, and every unmap still completes (the ASID-wide fallback).
#[test]
fn refused_commands_are_reported_to_their_owner() {
    let o = run_with(DebugKnobs::default(), Chaos::RefuseTlbis);
    eprintln!("{o:?}");
    assert!(o.command_errors > 0, "nothing was refused: {o:?}");
    assert_eq!(o.recovered, o.command_errors, "{o:?}");
    assert_eq!(o.misattributed, 0, "{o:?}");
    assert_eq!(o.post_unmap_hits, 0, "{o:?}");
    assert_eq!(o.violations, 0, "{o:?}");
}
