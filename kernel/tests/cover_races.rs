//! The free cover (issue 16 part 3) against page tables that are not what the planner hoped:
//! a 2 MiB block just beside the request (mapped before the query and still mapped after it),
//! and extra pages reached through a table descriptor that points outside RAM or at a frame
//! of junk (a table unlinked and its frame reused, seen by a walk that takes no lock). Whatever
//! the walk meets, the invalidation stays complete and nothing panics.

#[path = "smmu_support.rs"]
mod support;

use shootdown::iommu::driver::planner::{PlanKind, Strategy};
use shootdown::iommu::driver::DebugKnobs;
use shootdown::iommu::fake::LeafAttrs;
use shootdown::iommu::spec::event::AccessKind;
use shootdown::mm::phys::{FrameAllocator, PhysMemory};
use shootdown::mm::{PhysAddr, VirtAddr, PAGE_SIZE};
use std::sync::atomic::Ordering;
use support::*;

const PAGE: u64 = PAGE_SIZE as u64;
const M2: u64 = 2 << 20;
/// Every low bit set: three range commands exactly.
const PAGES: u64 = 4095;
/// The request ends at a 2 MiB boundary: the page above it is the first of the next block.
const START: u64 = VA + PAGE;
/// The first page above the request (the upward cover's extra page).
const ABOVE: u64 = START + PAGES * PAGE;
const DESC_TABLE: u64 = 0b11;
const OA_MASK: u64 = 0x0000_ffff_ffff_f000;

/// Maps the request's pages and the page just below it (so only the upward cover, into the
/// 2 MiB above, can be free), and reads a few requested pages through the device.
fn setup(w: &World<'_>) {
    let frame = w.mem.alloc_zeroed().unwrap();
    for i in 0..=PAGES {
        w.tables
            .map(VirtAddr(VA + i * PAGE), frame, LeafAttrs::RW)
            .unwrap();
    }
    let dma = w.dma();
    for i in [0, PAGES / 2, PAGES - 1] {
        dma.touch(VirtAddr(START + i * PAGE), AccessKind::Read)
            .unwrap();
    }
}

/// Unmaps the request (the page below stays) and checks the invalidation was complete.
fn unmap_and_check(w: &World<'_>) -> PlanKind {
    let report = w.unmap(START, PAGES);
    let dma = w.dma();
    for i in [0, PAGES / 2, PAGES - 1] {
        assert!(
            dma.touch(VirtAddr(START + i * PAGE), AccessKind::Read)
                .is_err(),
            "page {i} still translates"
        );
    }
    assert!(w.model.stale_translations().is_empty());
    report.plan
}

/// The slot of the level-2 entry translating `va` (the tables exist down to level 2).
fn l2_slot(w: &World<'_>, va: u64) -> PhysAddr {
    let mut table = w.tables.root();
    for level in 0..2 {
        let index = (va >> (39 - 9 * level)) & 511;
        let d = w
            .mem
            .word(PhysAddr(table.as_u64() + index * 8))
            .unwrap()
            .load(Ordering::Acquire);
        assert_eq!(d & 0b11, DESC_TABLE, "level {level} of {va:#x}");
        table = PhysAddr(d & OA_MASK);
    }
    PhysAddr(table.as_u64() + ((va >> 21) & 511) * 8)
}

fn set_range(w: &World<'_>) {
    w.smmu.set_strategy(Strategy::Range).unwrap();
    w.smmu.set_free_cover(true);
}

/// A 2 MiB block right above the request was mapped before the query and is still mapped:
/// the walk must find it at level 2, keep the exact plan, and the device's block entry must
/// survive the unmap. The twin (cover forced) loses it, so the hit check can fail.
#[test]
fn a_block_above_the_request_is_never_covered_and_its_entry_survives() {
    let run = |forced: bool| {
        with_default_world(|w| {
            set_range(w);
            w.smmu.set_debug_knobs(DebugKnobs {
                cover_ignores_tables: forced,
                ..DebugKnobs::default()
            });
            w.tables
                .map_block_2m(VirtAddr(ABOVE), PhysAddr(0x4080_0000), LeafAttrs::RW)
                .unwrap();
            setup(w);
            let dma = w.dma();
            dma.touch(VirtAddr(ABOVE + M2 - PAGE), AccessKind::Read)
                .unwrap();
            let plan = unmap_and_check(w);
            w.model.reset_stats();
            dma.touch(VirtAddr(ABOVE + M2 - PAGE), AccessKind::Read)
                .unwrap();
            (plan, w.model.stats().iotlb_hits)
        })
    };
    assert_eq!(run(false), (PlanKind::Range { pages: PAGES }, 1));
    let (plan, hits) = run(true);
    assert_eq!(
        plan,
        PlanKind::Cover {
            pages: PAGES,
            covered: 4096
        }
    );
    assert_eq!(hits, 0, "the forced cover must drop the block's entry");
}

/// The extra page is reached through a level-2 table descriptor pointing outside RAM: the
/// walk cannot read it, so the answer is "don't know" and the exact plan goes out.
#[test]
fn a_table_pointer_outside_ram_gives_no_cover_and_no_fault() {
    with_default_world(|w| {
        set_range(w);
        setup(w);
        let slot = l2_slot(w, ABOVE);
        w.mem
            .word(slot)
            .unwrap()
            .store(0x10_0000_0000 | DESC_TABLE, Ordering::Release);
        assert_eq!(unmap_and_check(w), PlanKind::Range { pages: PAGES });
    });
}

/// The extra page's level-2 entry points at a frame of junk (a freed table reused as data):
/// whatever the walk concludes from it, the requested pages are invalidated.
#[test]
fn a_table_frame_reused_as_data_never_loses_the_request() {
    for junk in [0x00u8, 0x01, 0x03, 0xa5, 0xff] {
        with_default_world(|w| {
            set_range(w);
            setup(w);
            let frame = w.mem.alloc_zeroed().unwrap();
            w.mem.fill_frame(frame, junk).unwrap();
            let slot = l2_slot(w, ABOVE);
            w.mem
                .word(slot)
                .unwrap()
                .store(frame.as_u64() | DESC_TABLE, Ordering::Release);
            // Junk answers "mapped" or "don't know"; zeroes are 512 empty entries to read
            // (the table's whole region is asked about), more than the budget.
            assert_eq!(
                unmap_and_check(w),
                PlanKind::Range { pages: PAGES },
                "junk {junk:#x}"
            );
        });
    }
}

/// The module documentation says a free cover loses "nothing cached". A Leaf = 0 command also
/// removes the walk-cache entries of every table its range touches (§4.4.1), so an unmapped
/// extra page in a level-3 table that maps other, live pages costs those pages the cached
/// level-2 descriptor: their next walk starts from the root instead of the walk cache. The
/// exact encoding never touches that table. The planner now asks about the table's whole
/// region: the cover is refused, and the entry survives.
#[test]
fn the_cover_spares_the_walk_cache_of_live_neighbours() {
    let run = |cover: bool| {
        with_default_world(|w| {
            set_range(w);
            w.smmu.set_free_cover(cover);
            setup(w);
            let frame = w.mem.alloc_zeroed().unwrap();
            for n in [ABOVE + PAGE, ABOVE + 2 * PAGE] {
                w.tables.map(VirtAddr(n), frame, LeafAttrs::RW).unwrap();
            }
            let dma = w.dma();
            dma.touch(VirtAddr(ABOVE + PAGE), AccessKind::Read).unwrap();
            // No device access to the request before the neighbour's: those walks would
            // refill the level-0 and level-1 entries both encodings drop.
            let plan = w.unmap(START, PAGES).plan;
            w.model.reset_stats();
            dma.touch(VirtAddr(ABOVE + 2 * PAGE), AccessKind::Read)
                .unwrap();
            let hits = w.model.stats().walk_cache_hits;
            assert!(w.model.stale_translations().is_empty());
            (plan, hits)
        })
    };
    let (exact, exact_hits) = run(false);
    assert_eq!(exact, PlanKind::Range { pages: PAGES });
    assert_eq!(
        exact_hits, 1,
        "the walk starts from the cached level-2 descriptor"
    );
    assert_eq!(
        run(true),
        (exact, 1),
        "the cover must not cost a live neighbour its walk-cache entry"
    );
}
