//! Host timing of the portable page-table walker: map + unmap (+ completing the TLB plan) of
//! 1, 512 and 262144 pages on the in-memory arena, with 4 KiB pages only and with blocks
//! allowed (where 512 and 262144 pages become one 2 MiB or 1 GiB block).
//!
//! `cargo bench -p shootdown --features bench --bench pgtable` (`make bench` runs it). The
//! instruction counts under QEMU `-icount` come from the in-kernel benchmark, `mm.map_unmap`,
//! which drives the same code.


use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shootdown::mm::asid::{Asid, AsidBits};
use shootdown::mm::fake::TestMemory;
use shootdown::mm::pgtable::{
    Attributes, Blocks, Config, CpuTlb, Holes, PageTable, Permissions, TlbFeatures, TlbPolicy,
    TlbScope,
};
use shootdown::mm::{PhysAddr, VirtAddr, PAGE_SIZE};

#[path = "discard_tlb.rs"]
mod discard_tlb;
use discard_tlb::DiscardTlb;

fn map_unmap(c: &mut Criterion) {
    let mut group = c.benchmark_group("map_unmap");
    let policy = TlbPolicy::new(TlbFeatures {
        range: true,
        level_hints: true,
    });
    let scope = TlbScope::Asid(Asid::new(1, AsidBits::Sixteen).expect("ASID 1 fits"));
    let attrs = Attributes::normal(Permissions::USER_RW);
    for (name, blocks) in [("pages", Blocks::Forbidden), ("blocks", Blocks::Allowed)] {
        for pages in [1usize, 512, 262_144] {
            let mem = TestMemory::new(1024);
            let config = Config {
                blocks,
                ..Config::USER
            };
            let mut table = PageTable::new(&mem, &mem, config).expect("root");
            let mut executor = DiscardTlb;
            let va = VirtAddr(1 << 30);
            let pa = PhysAddr(1 << 32);
            let len = pages * PAGE_SIZE;
            group.throughput(Throughput::Elements(pages as u64));
            group.bench_with_input(BenchmarkId::new(name, pages), &pages, |b, _| {
                b.iter(|| {
                    let mut tlb = CpuTlb {
                        policy: &policy,
                        scope,
                        executor: &mut executor,
                    };
                    let change = table.map(va, pa, len, attrs).expect("map");
                    table.complete(change, &mut tlb);
                    let change = table
                        .unmap(va, len, Holes::Reject, &mut tlb)
                        .expect("unmap");
                    table.complete(change, &mut tlb);
                });
            });
            assert_eq!(mem.live_frames(), 1, "the benchmark must not leak tables");
        }
    }
    group.finish();
}

/// Short enough for `make bench` (262144 pages take milliseconds per iteration).
fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = map_unmap
}
criterion_main!(benches);
