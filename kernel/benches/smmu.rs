//! SMMU invalidation cost per unmap, for each strategy, on the driver + model.
//!
//! Two parts:
//!
//! 1. A table (printed before the timings) of what one unmap of 1, 16, 512 and 4096 pages
//!    costs in SMMU commands for each strategy (TLBIs, CMD_SYNCs, CMDQ_PROD writes), and the
//!    model's IOTLB hit rate for 64 *unrelated* cached mappings touched again right after the
//!    unmap — the price an ASID-wide invalidation makes everyone else pay.
//! 2. Criterion timings of `Smmu::invalidate_range` (driver + model) for the same grid.
//!
//! Instruction counts under QEMU `-icount` belong to the in-kernel benchmark on `virt`; this
//! host benchmark measures the portable part.

#[path = "../tests/smmu_support.rs"]
mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use shootdown::iommu::driver::planner::Strategy;
use shootdown::iommu::driver::SmmuConfig;
use shootdown::iommu::fake::LeafAttrs;
use shootdown::iommu::backend::model::iotlb::{IotlbConfig, Replacement};
use shootdown::iommu::backend::model::ModelConfig;
use shootdown::iommu::spec::command::CommandKind;
use shootdown::iommu::spec::event::AccessKind;
use shootdown::mm::phys::FrameAllocator;
use shootdown::mm::{VirtAddr, PAGE_SIZE};
use support::*;

const PAGE: u64 = PAGE_SIZE as u64;
const SIZES: [u64; 4] = [1, 16, 512, 4096];
/// Unrelated mappings kept warm in the IOTLB.
const UNRELATED: u64 = 64;
const UNRELATED_VA: u64 = VA + 0x4000_0000;

/// The strategies measured: each with range invalidation available, plus Linux's policy on
/// an SMMU without RIL (per page below 512 pages, ASID-wide from there).
const CASES: [(Strategy, bool); 5] = [
    (Strategy::PerPage, true),
    (Strategy::Range, true),
    (Strategy::Asid, true),
    (Strategy::Auto, true),
    (Strategy::Auto, false),
];

fn case_name(strategy: Strategy, ril: bool) -> String {
    if ril {
        strategy.name().to_string()
    } else {
        format!("{}-noRIL", strategy.name())
    }
}

fn model(ril: bool) -> ModelConfig {
    // Big enough to hold the unrelated set and the unmapped range's cached part.
    ModelConfig {
        iotlb: IotlbConfig {
            capacity: 1024,
            replacement: Replacement::Lru,
        },
        range_invalidation: ril,
        ..ModelConfig::default()
    }
}

fn config(strategy: Strategy) -> SmmuConfig {
    SmmuConfig {
        strategy,
        ..smmu_config()
    }
}

/// Maps `pages` pages from `va`, all onto one frame (the content does not matter here).
fn map_range(w: &World<'_>, va: u64, pages: u64) {
    let frame = w.mem.alloc_zeroed().unwrap();
    for i in 0..pages {
        w.tables
            .map(VirtAddr(va + i * PAGE), frame, LeafAttrs::RW)
            .unwrap();
    }
}

struct Row {
    name: String,
    pages: u64,
    tlbi: u64,
    syncs: u64,
    total: u64,
    prod_writes: u64,
    hit_rate: f64,
}

fn measure(strategy: Strategy, ril: bool, pages: u64) -> Row {
    with_world(model(ril), config(strategy), |w| {
        map_range(w, UNRELATED_VA, UNRELATED);
        map_range(w, VA, pages);
        let dma = w.dma();
        for i in 0..UNRELATED {
            dma.touch(VirtAddr(UNRELATED_VA + i * PAGE), AccessKind::Read)
                .unwrap();
        }
        for i in 0..pages.min(256) {
            dma.touch(VirtAddr(VA + i * PAGE), AccessKind::Read)
                .unwrap();
        }
        let prod_before = w.smmu.stats().prod_writes;
        let report = w.unmap(VA, pages);
        let prod_writes = w.smmu.stats().prod_writes - prod_before;
        w.model.reset_stats();
        for i in 0..UNRELATED {
            dma.touch(VirtAddr(UNRELATED_VA + i * PAGE), AccessKind::Read)
                .unwrap();
        }
        let hit_rate = w.model.stats().iotlb_hits_per_mille().unwrap_or(0) as f64 / 10.0;
        // The benchmark is only meaningful if the invalidation was complete.
        assert!(dma.touch(VirtAddr(VA), AccessKind::Read).is_err());
        assert!(w.model.stale_translations().is_empty());
        Row {
            name: case_name(strategy, ril),
            pages,
            tlbi: report.commands.tlbi(),
            syncs: report.commands.get(CommandKind::Sync),
            total: report.commands.total(),
            prod_writes,
            hit_rate,
        }
    })
}

fn print_table() {
    println!();
    println!("SMMU commands per unmap (driver + model, 4 KiB pages)");
    println!(
        "{:<12} {:>6} {:>6} {:>6} {:>7} {:>11} {:>22}",
        "strategy", "pages", "TLBIs", "syncs", "total", "PROD writes", "unrelated IOTLB hits"
    );
    for (strategy, ril) in CASES {
        for pages in SIZES {
            let r = measure(strategy, ril, pages);
            println!(
                "{:<12} {:>6} {:>6} {:>6} {:>7} {:>11} {:>21.0}%",
                r.name, r.pages, r.tlbi, r.syncs, r.total, r.prod_writes, r.hit_rate
            );
        }
    }
    println!();
}

fn bench_invalidate(c: &mut Criterion) {
    let mut group = c.benchmark_group("smmu_invalidate_range");
    for (strategy, ril) in CASES {
        for pages in SIZES {
            with_world(model(ril), config(strategy), |w| {
                map_range(w, UNRELATED_VA, UNRELATED);
                let dma = w.dma();
                for i in 0..UNRELATED {
                    dma.touch(VirtAddr(UNRELATED_VA + i * PAGE), AccessKind::Read)
                        .unwrap();
                }
                let (start, end) = (VirtAddr(VA), VirtAddr(VA + pages * PAGE));
                group.bench_with_input(
                    BenchmarkId::new(case_name(strategy, ril), pages),
                    &pages,
                    |b, _| {
                        b.iter(|| black_box(w.smmu.invalidate_range(w.ctx, start, end).unwrap()))
                    },
                );
            });
        }
    }
    group.finish();
}

fn main() {
    print_table();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    bench_invalidate(&mut c);
    c.final_summary();
}
