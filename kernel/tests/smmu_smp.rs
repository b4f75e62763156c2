//! Unmaps on four threads while a device does DMA all the time (host threads standing in for
//! CPUs): every invalidation must have completed when its unmap returns, and the device must
//! never reach a frame after the unmap that removed it returned — not even a frame that was
//! freed and scribbled over right after. The same run with the invalidation switched off shows
//! all three checks firing.

#[path = "smmu_support.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use shootdown::iommu::driver::DebugKnobs;
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
}

fn run(knobs: DebugKnobs) -> Outcome {
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
        thread::scope(|s| {
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
                    s.spawn(move || {
                        let dma = DmaEngine::new(model, SID);
                        for k in 0..ITERATIONS {
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
                            smmu.invalidate_range(ctx, va, end).unwrap();
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
