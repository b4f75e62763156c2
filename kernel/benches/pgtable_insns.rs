//! One `map` and one `unmap` of 262144 4 KiB pages on the in-memory arena, for counting
//! instructions on the host with callgrind (repeatable, unlike time):
//!
//! ```text
//! cargo bench -p shootdown --bench pgtable_insns --no-run
//! valgrind --tool=callgrind --toggle-collect='*PageTable*map*' <the bench binary>
//! ```
//!
//! `--toggle-collect` limits the count to the engine's `map` and `unmap` (and what they call,
//! completing the change included when done inside them); `callgrind_annotate` then shows the
//! per-function split. The program also prints the arena's frame counts so that a run that
//! leaked tables is visible. The in-kernel figure (QEMU `-icount`) is `mm.map_unmap`.


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

const PAGES: usize = 262_144;

fn main() {
    let policy = TlbPolicy::new(TlbFeatures {
        range: true,
        level_hints: true,
    });
    let scope = TlbScope::Asid(Asid::new(1, AsidBits::Sixteen).expect("ASID 1 fits"));
    let mem = TestMemory::new(1024);
    let config = Config {
        blocks: Blocks::Forbidden,
        ..Config::USER
    };
    let mut table = PageTable::new(&mem, &mem, config).expect("root");
    let mut executor = DiscardTlb;
    let mut tlb = CpuTlb {
        policy: &policy,
        scope,
        executor: &mut executor,
    };
    let (va, pa, len) = (VirtAddr(1 << 30), PhysAddr(1 << 32), PAGES * PAGE_SIZE);
    let change = table
        .map(va, pa, len, Attributes::normal(Permissions::USER_RW))
        .expect("map");
    table.complete(change, &mut tlb);
    let tables = mem.live_frames();
    let change = table
        .unmap(va, len, Holes::Reject, &mut tlb)
        .expect("unmap");
    table.complete(change, &mut tlb);
    println!(
        "{PAGES} pages: {tables} table frames while mapped, {} after unmap",
        mem.live_frames()
    );
    assert_eq!(
        mem.live_frames(),
        1,
        "the unmap must free every table but the root"
    );
}
