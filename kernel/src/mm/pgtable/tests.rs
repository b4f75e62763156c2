//! Unit tests of the engine on the host arena, and shared test helpers.

use alloc::vec::Vec;

use super::descriptor::{Attributes, Level, MemoryType, Permissions};
use super::error::PageTableError;
use super::range::VaRange;
use super::table::{Blocks, Change, Config, Holes, PageTable, TableStats};
use super::tlb::{Invalidate, TlbInvalidation};
use super::walk::{translate, Mapping};
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::fake::TestMemory;

pub(super) const K4: u64 = 4 << 10;
pub(super) const M2: u64 = 2 << 20;
pub(super) const G1: u64 = 1 << 30;

pub(super) type TestTable<'m> = PageTable<&'m TestMemory, &'m TestMemory>;

pub(super) const RW: Attributes = Attributes::normal(Permissions::USER_RW);
pub(super) const RO: Permissions = Permissions::USER_RO;

pub(super) fn va(v: u64) -> VirtAddr {
    VirtAddr(v)
}

pub(super) fn pa(v: u64) -> PhysAddr {
    PhysAddr(v)
}

pub(super) fn new_table(mem: &TestMemory, config: Config) -> TestTable<'_> {
    PageTable::new(mem, mem, config).expect("root frame")
}

/// One call to [`Invalidate::invalidate`], with what the table looked like at that moment.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    pub inv: TlbInvalidation,
    /// Whether `range.start()` translated when the invalidation ran.
    pub start_mapped: bool,
    /// Frames that had to be still allocated at that moment, and were not.
    pub already_freed: Vec<PhysAddr>,
}

/// An [`Invalidate`] that records every call and checks the ordering rules as it goes.
pub(super) struct Checker<'m> {
    pub mem: &'m TestMemory,
    pub root: PhysAddr,
    pub seen: Vec<Seen>,
    pub publishes: usize,
    /// Frames that must not be freed before the next invalidation (tables being released).
    pub must_be_live: Vec<PhysAddr>,
}

impl<'m> Checker<'m> {
    pub fn new(mem: &'m TestMemory, root: PhysAddr) -> Self {
        Checker {
            mem,
            root,
            seen: Vec::new(),
            publishes: 0,
            must_be_live: Vec::new(),
        }
    }

    /// Completes `change` on `table`, checking that its tables are freed only after the
    /// invalidation.
    pub fn complete(&mut self, table: &TestTable<'_>, change: Change) {
        self.must_be_live = change.freed_tables().to_vec();
        table.complete(change, self);
        self.must_be_live.clear();
    }
}

impl Invalidate for Checker<'_> {
    fn publish(&mut self) {
        self.publishes += 1;
    }

    fn invalidate(&mut self, inv: &TlbInvalidation) {
        let start_mapped = translate(self.mem, self.root, inv.range().start()).is_some();
        let already_freed = self
            .must_be_live
            .iter()
            .copied()
            .filter(|&f| !self.mem.is_allocated(f))
            .collect();
        self.seen.push(Seen {
            inv: *inv,
            start_mapped,
            already_freed,
        });
    }
}

/// Everything observable about a table: its leaves, its shape, the arena's live frames.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Snapshot {
    leaves: Vec<Mapping>,
    stats: TableStats,
    live_frames: usize,
}

pub(super) fn snapshot(table: &TestTable<'_>, mem: &TestMemory) -> Snapshot {
    let mut leaves = Vec::new();
    let config = table.config();
    let len = (config.va_end.as_u64() - config.va_start.as_u64()) as usize;
    table
        .walk(config.va_start, len, |m| leaves.push(m))
        .expect("walk");
    Snapshot {
        leaves,
        stats: table.stats().expect("stats"),
        live_frames: mem.live_frames(),
    }
}

fn leaf_at(table: &TestTable<'_>, v: u64) -> Option<(PhysAddr, Level)> {
    table.query(va(v)).map(|t| (t.pa, t.level))
}

// ---- map and query -------------------------------------------------------------------------

#[test]
fn map_one_page_and_query() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let change = table
        .map(va(0x1234_5000), pa(0x8000_0000), 4096, RW)
        .unwrap();
    assert_eq!(
        change.changed_range(),
        Some(VaRange::new(va(0x1234_5000), 4096).unwrap())
    );
    assert!(change.invalidation().is_none(), "a map replaces nothing");
    assert!(change.freed_tables().is_empty());

    let mut checker = Checker::new(&mem, table.root());
    checker.complete(&table, change);
    assert_eq!(checker.publishes, 1);
    assert!(checker.seen.is_empty());

    let t = table.query(va(0x1234_5678)).unwrap();
    assert_eq!(t.pa, pa(0x8000_0678));
    assert_eq!(t.level, Level::L3);
    assert_eq!(t.attributes, RW);
    assert!(t.young && !t.global);
    assert!(table.query(va(0x1234_4000)).is_none());
    assert!(table.query(va(0x1234_6000)).is_none());
    let stats = table.stats().unwrap();
    assert_eq!(stats.tables, 4, "root + L1 + L2 + L3");
    assert_eq!(stats.leaves, [0, 0, 0, 1]);
    assert_eq!(mem.live_frames(), 4);
}

#[test]
fn map_uses_blocks_where_aligned() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::KERNEL);
    // [2M - 4K, 2G + 2M + 4K): one page, 511 blocks of 2M... laid out so that each level shows.
    let start = 2 * G1 - M2 - K4;
    let len = K4 + M2 + G1 + M2 + K4;
    let c = table
        .map(va(start), pa(start + 0x1_0000_0000), len as usize, RW)
        .unwrap();
    table.complete(c, &mut Checker::new(&mem, table.root()));
    assert_eq!(
        leaf_at(&table, start),
        Some((pa(start + 0x1_0000_0000), Level::L3))
    );
    assert_eq!(leaf_at(&table, start + K4).map(|l| l.1), Some(Level::L2));
    assert_eq!(leaf_at(&table, 2 * G1).map(|l| l.1), Some(Level::L1));
    assert_eq!(leaf_at(&table, 3 * G1).map(|l| l.1), Some(Level::L2));
    assert_eq!(
        leaf_at(&table, 3 * G1 + M2),
        Some((pa(3 * G1 + M2 + 0x1_0000_0000), Level::L3))
    );
    assert!(table.query(va(3 * G1 + M2 + K4)).is_none());
    assert!(table.query(va(start - K4)).is_none());
    assert!(table.query(va(2 * G1)).unwrap().global);
    assert_eq!(table.stats().unwrap().leaves, [0, 1, 2, 2]);
}

#[test]
fn map_needs_pa_alignment_for_blocks() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let c = table.map(va(M2), pa(0x4000_1000), M2 as usize, RW).unwrap();
    table.complete(c, &mut Checker::new(&mem, table.root()));
    assert_eq!(table.stats().unwrap().leaves, [0, 0, 0, 512]);
    assert_eq!(
        leaf_at(&table, M2 + 5 * K4),
        Some((pa(0x4000_6000), Level::L3))
    );
}

#[test]
fn map_without_blocks() {
    let mem = TestMemory::new(16);
    let config = Config {
        blocks: Blocks::Forbidden,
        ..Config::USER
    };
    let mut table = new_table(&mem, config);
    let c = table.map(va(G1), pa(G1), (2 * M2) as usize, RW).unwrap();
    table.complete(c, &mut Checker::new(&mem, table.root()));
    assert_eq!(table.stats().unwrap().leaves, [0, 0, 0, 1024]);
}

#[test]
fn map_errors_change_nothing() {
    let mem = TestMemory::new(16);
    let window = Config {
        va_start: va(G1),
        va_end: va(4 * G1),
        ..Config::USER
    };
    let mut table = new_table(&mem, window);
    let c = table.map(va(G1 + M2), pa(M2), M2 as usize, RW).unwrap();
    table.complete(c, &mut Checker::new(&mem, table.root()));
    let before = snapshot(&table, &mem);

    let device_exec = Attributes::new(MemoryType::Device, Permissions::KERNEL_RX);
    let mut unreadable = RW;
    unreadable.perms.read = false;
    let cases: [(VirtAddr, PhysAddr, usize, Attributes, PageTableError); 13] = [
        (
            va(G1 + 1),
            pa(0),
            4096,
            RW,
            PageTableError::UnalignedVa(va(G1 + 1)),
        ),
        (
            va(G1),
            pa(0x10),
            4096,
            RW,
            PageTableError::UnalignedPa(pa(0x10)),
        ),
        (va(G1), pa(0), 100, RW, PageTableError::UnalignedLength(100)),
        (va(G1), pa(0), 0, RW, PageTableError::ZeroLength),
        (
            va(u64::MAX - 4095),
            pa(0),
            8192,
            RW,
            PageTableError::Overflow {
                start: u64::MAX - 4095,
                len: 8192,
            },
        ),
        (
            va(0),
            pa(0),
            4096,
            RW,
            PageTableError::VaOutOfRange {
                start: va(0),
                len: 4096,
            },
        ),
        (
            va(4 * G1 - K4),
            pa(0),
            8192,
            RW,
            PageTableError::VaOutOfRange {
                start: va(4 * G1 - K4),
                len: 8192,
            },
        ),
        (
            va(1 << 48),
            pa(0),
            4096,
            RW,
            PageTableError::VaOutOfRange {
                start: va(1 << 48),
                len: 4096,
            },
        ),
        (
            va(G1),
            pa((1 << 48) - K4),
            8192,
            RW,
            PageTableError::PaOutOfRange(pa((1 << 48) + K4)),
        ),
        // Overlaps: the tail of the range, then the whole block, then one page inside it.
        (
            va(G1),
            pa(0),
            (M2 + K4) as usize,
            RW,
            PageTableError::AlreadyMapped(va(G1 + M2)),
        ),
        (
            va(G1 + M2 + 5 * K4),
            pa(0),
            4096,
            RW,
            PageTableError::AlreadyMapped(va(G1 + M2 + 5 * K4)),
        ),
        (
            va(G1),
            pa(0),
            4096,
            device_exec,
            PageTableError::Attributes(super::descriptor::AttributeError::ExecutableDevice),
        ),
        (
            va(G1),
            pa(0),
            4096,
            unreadable,
            PageTableError::Attributes(super::descriptor::AttributeError::NotReadable),
        ),
    ];
    for (v, p, len, attrs, expected) in cases {
        assert_eq!(
            table.map(v, p, len, attrs).map(|_| ()),
            Err(expected),
            "map({v:?}, {p:?}, {len:#x})"
        );
        assert_eq!(
            snapshot(&table, &mem),
            before,
            "after failed map({v:?}, {p:?}, {len:#x})"
        );
    }
    // Every error has a message.
    assert_eq!(
        PageTableError::AlreadyMapped(va(0x1000)).to_string(),
        "0x1000 is already mapped"
    );
}

#[test]
fn map_out_of_frames_rolls_back() {
    let mem = TestMemory::new(64);
    let mut table = new_table(&mem, Config::USER);
    let before = snapshot(&table, &mem);
    // Two pages in different 2M regions of a fresh table need L1 + L2 + two L3 tables.
    let len = (M2 + K4) as usize;
    for budget in 0..4 {
        mem.set_alloc_budget(Some(budget));
        assert_eq!(
            table.map(va(M2 - K4), pa(0), len, RW).map(|_| ()),
            Err(PageTableError::OutOfFrames)
        );
        assert_eq!(snapshot(&table, &mem), before, "budget {budget}");
    }
    mem.set_alloc_budget(Some(4));
    let c = table.map(va(M2 - K4), pa(0), len, RW).unwrap();
    table.complete(c, &mut Checker::new(&mem, table.root()));
    assert_eq!(table.stats().unwrap().tables, 5);
}

#[test]
fn map_counts_its_tables_exactly_across_misaligned_blocks() {
    // A PA one page off every block boundary forces pages everywhere. Below the L1 table: the
    // partial GiB [G1 + M2 - K4, 2 G1) takes an L2 table and 512 L3 tables, the whole GiB
    // [2 G1, 3 G1) another L2 table and 512 L3 tables, the partial [3 G1, 3 G1 + M2 - K4) an
    // L2 and one L3 table: 1 + 3 + 1025 = 1029.
    let mem = TestMemory::new(1100);
    let mut table = new_table(&mem, Config::USER);
    let before = snapshot(&table, &mem);
    let (start, len) = (G1 + M2 - K4, (2 * G1) as usize);
    mem.set_alloc_budget(Some(1028));
    assert_eq!(
        table.map(va(start), pa(8 * G1 + K4), len, RW).map(|_| ()),
        Err(PageTableError::OutOfFrames)
    );
    assert_eq!(snapshot(&table, &mem), before);
    mem.set_alloc_budget(Some(1029));
    let c = table.map(va(start), pa(8 * G1 + K4), len, RW).unwrap();
    table.complete(c, &mut Checker::new(&mem, table.root()));
    assert_eq!(table.stats().unwrap().tables, 1 + 1029);
    assert_eq!(
        leaf_at(&table, start + len as u64 - K4),
        Some((pa(10 * G1), Level::L3))
    );
}

#[test]
fn map_larger_than_memory_fails_without_visiting_every_page() {
    // 128 TiB from a PA one page off the VA, so only pages fit: 2^35 pages, 2^26 tables. The
    // dry run counts the tables below each root entry without walking them, so the call fails
    // at once.
    let mem = TestMemory::new(64);
    let mut table = new_table(&mem, Config::USER);
    let before = snapshot(&table, &mem);
    let len = (1u64 << 47) - K4;
    assert_eq!(
        table.map(va(K4), pa(2 * K4), len as usize, RW).map(|_| ()),
        Err(PageTableError::OutOfFrames)
    );
    assert_eq!(snapshot(&table, &mem), before);
    let walked = table
        .entries_walked
        .load(core::sync::atomic::Ordering::Relaxed);
    // 256 root entries, each with at most 3 + 9 + 27 entries counted below it.
    assert!(walked <= 256 * 40, "the dry run visited {walked} entries");

    // Edits of a huge, mostly empty range cost the entries of the tables that exist, not the
    // pages of the range.
    let c = table
        .map(va(G1), pa(G1 + K4), (2 * K4) as usize, RW)
        .unwrap();
    table.complete(c, &mut Checker::new(&mem, table.root()));
    table
        .entries_walked
        .store(0, core::sync::atomic::Ordering::Relaxed);
    let mut checker = Checker::new(&mem, table.root());
    let c = table
        .protect(va(K4), len as usize, RO, Holes::Skip, &mut checker)
        .unwrap();
    checker.complete(&table, c);
    let c = table
        .unmap(va(K4), len as usize, Holes::Skip, &mut checker)
        .unwrap();
    checker.complete(&table, c);
    assert_eq!(snapshot(&table, &mem), before);
    let walked = table
        .entries_walked
        .load(core::sync::atomic::Ordering::Relaxed);
    // Two edits, each a dry run and a commit, over at most the four live tables.
    assert!(
        walked <= 2 * 2 * 4 * 512,
        "two edits visited {walked} entries"
    );
}

#[test]
fn walk_clips_leaves_to_the_range() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let c = table.map(va(M2), pa(4 * M2), M2 as usize, RW).unwrap();
    table.complete(c, &mut Checker::new(&mem, table.root()));
    let mut seen = Vec::new();
    table
        .walk(va(M2 + 3 * K4), (2 * K4) as usize, |m| seen.push(m))
        .unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].va, VaRange::new(va(M2 + 3 * K4), 8192).unwrap());
    assert_eq!(seen[0].pa, pa(4 * M2 + 3 * K4));
    assert_eq!(seen[0].level, Level::L2);
}

/// Descriptors `maps_anything` reads to answer for `[start, end)`, and its answer.
fn probe(table: &TestTable<'_>, mem: &TestMemory, start: u64, end: u64) -> (Option<bool>, u32) {
    let mut budget = u32::MAX;
    let range = VaRange::from_bounds(va(start), va(end)).unwrap();
    let found = super::walk::maps_anything(mem, table.root(), range, &mut budget);
    (found, u32::MAX - budget)
}

#[test]
fn maps_anything_skips_empty_subtrees_and_stops_at_the_first_leaf() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let c = table.map(va(G1 + 5 * K4), pa(G1), 4096, RW).unwrap();
    table.complete(c, &mut Checker::new(&mem, table.root()));
    // An empty 1 GiB and an empty 512 GiB: one invalid entry each, whatever their size.
    assert_eq!(probe(&table, &mem, 2 * G1, 3 * G1), (Some(false), 2));
    assert_eq!(probe(&table, &mem, 512 * G1, 1024 * G1), (Some(false), 1));
    // The pages around the leaf: root, L1, L2 entries, then the L3 entries up to the leaf.
    assert_eq!(probe(&table, &mem, G1, G1 + 5 * K4), (Some(false), 3 + 5));
    assert_eq!(
        probe(&table, &mem, G1 + 6 * K4, G1 + M2),
        (Some(false), 3 + 506)
    );
    assert_eq!(probe(&table, &mem, G1, 2 * G1), (Some(true), 3 + 6));
    // A budget that runs out gives no answer rather than a guess.
    let range = VaRange::from_bounds(va(G1 + 6 * K4), va(G1 + M2)).unwrap();
    assert_eq!(
        super::walk::maps_anything(&mem, table.root(), range, &mut 100),
        None
    );
    // A 2 MiB block is found at level 2.
    let c = table.map(va(4 * G1), pa(4 * G1), M2 as usize, RW).unwrap();
    table.complete(c, &mut Checker::new(&mem, table.root()));
    assert_eq!(
        probe(&table, &mem, 4 * G1 + M2 - K4, 4 * G1 + M2),
        (Some(true), 3)
    );
}

// ---- unmap ---------------------------------------------------------------------------------

#[test]
fn unmap_frees_emptied_tables_after_the_invalidation() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let c = table.map(va(0x40_0000_0000), pa(0), 4096, RW).unwrap();
    let mut checker = Checker::new(&mem, table.root());
    checker.complete(&table, c);
    assert_eq!(mem.live_frames(), 4);

    let change = table
        .unmap(va(0x40_0000_0000), 4096, Holes::Reject, &mut checker)
        .unwrap();
    assert_eq!(change.freed_tables().len(), 3);
    let inv = *change.invalidation().unwrap();
    assert_eq!(inv.range(), VaRange::new(va(0x40_0000_0000), 4096).unwrap());
    assert!(
        !inv.leaf_only(),
        "tables were unlinked: walk caches must go too"
    );
    assert_eq!(change.changed_range(), Some(inv.range()));
    for &frame in change.freed_tables() {
        assert!(mem.is_allocated(frame), "freed before the invalidation");
    }
    assert!(checker.seen.is_empty(), "no invalidation before complete");
    checker.complete(&table, change);
    assert_eq!(checker.seen.len(), 1);
    assert!(checker.seen[0].already_freed.is_empty());
    assert_eq!(mem.live_frames(), 1, "only the root is left");
    assert_eq!(mem.bad_frees(), 0);
}

#[test]
fn releasing_tables_before_the_flush_is_caught() {
    // The same scenario with the engine deliberately freeing first: the checker notices.
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    table.knobs.release_before_flush = true;
    let mut checker = Checker::new(&mem, table.root());
    let c = table.map(va(0), pa(0), 4096, RW).unwrap();
    checker.complete(&table, c);
    let c = table
        .unmap(va(0), 4096, Holes::Reject, &mut checker)
        .unwrap();
    checker.complete(&table, c);
    assert_eq!(checker.seen.len(), 1);
    assert_eq!(
        checker.seen[0].already_freed.len(),
        3,
        "the broken order must be visible"
    );
}

#[test]
fn unmap_partial_block_splits_with_break_before_make() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let mut checker = Checker::new(&mem, table.root());
    let c = table.map(va(M2), pa(8 * M2), M2 as usize, RW).unwrap();
    checker.complete(&table, c);

    let hole = M2 + 7 * K4;
    let change = table
        .unmap(va(hole), 4096, Holes::Reject, &mut checker)
        .unwrap();
    assert_eq!(change.splits(), 1);
    assert_eq!(change.pages(), 1, "the block's other 511 pages stay mapped");
    // The split invalidated the whole block while its entry was invalid...
    assert_eq!(checker.seen.len(), 1);
    let split = &checker.seen[0];
    assert_eq!(
        split.inv.range(),
        VaRange::new(va(M2), M2 as usize).unwrap()
    );
    assert_eq!(split.inv.level_hint(), Some(Level::L2));
    assert!(
        !split.start_mapped,
        "break-before-make: entry invalid during the invalidation"
    );
    // ...and the unmap itself changed exactly one page, a leaf.
    let inv = *change.invalidation().unwrap();
    assert_eq!(inv.range(), VaRange::new(va(hole), 4096).unwrap());
    assert!(inv.leaf_only());
    assert_eq!(inv.level_hint(), Some(Level::L3));
    checker.complete(&table, change);

    assert!(table.query(va(hole)).is_none());
    for probe in [M2, hole - K4, hole + K4, 2 * M2 - K4] {
        assert_eq!(
            leaf_at(&table, probe),
            Some((pa(8 * M2 + probe - M2), Level::L3)),
            "{probe:#x}"
        );
        assert_eq!(table.query(va(probe)).unwrap().attributes, RW);
    }
    assert_eq!(table.stats().unwrap().leaves, [0, 0, 0, 511]);
}

#[test]
fn skipping_the_break_is_caught() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    table.knobs.skip_break = true;
    let mut checker = Checker::new(&mem, table.root());
    let c = table.map(va(M2), pa(8 * M2), M2 as usize, RW).unwrap();
    checker.complete(&table, c);
    let c = table
        .unmap(va(M2 + K4), 4096, Holes::Reject, &mut checker)
        .unwrap();
    checker.complete(&table, c);
    assert!(
        checker.seen[0].start_mapped,
        "the checker must see the block still valid"
    );
}

#[test]
fn unmap_inside_a_gigabyte_block_splits_twice() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let mut checker = Checker::new(&mem, table.root());
    let c = table.map(va(G1), pa(3 * G1), G1 as usize, RW).unwrap();
    checker.complete(&table, c);
    let target = G1 + 5 * M2 + 3 * K4;
    let c = table
        .unmap(va(target), 4096, Holes::Reject, &mut checker)
        .unwrap();
    assert_eq!(c.splits(), 2);
    checker.complete(&table, c);
    assert_eq!(table.stats().unwrap().leaves, [0, 0, 511, 511]);
    assert_eq!(
        leaf_at(&table, target + K4),
        Some((pa(3 * G1 + target + K4 - G1), Level::L3))
    );
    assert_eq!(
        leaf_at(&table, G1 + 6 * M2),
        Some((pa(3 * G1 + 6 * M2), Level::L2))
    );
    assert!(checker.seen[..2].iter().all(|s| !s.start_mapped));
    assert_eq!(checker.seen[0].inv.range().len(), G1);
    assert_eq!(checker.seen[1].inv.range().len(), M2);
}

#[test]
fn unmap_whole_blocks_invalidates_with_block_stride() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let mut checker = Checker::new(&mem, table.root());
    let c = table.map(va(G1), pa(0), (4 * M2) as usize, RW).unwrap();
    checker.complete(&table, c);
    let c = table
        .unmap(va(G1 + M2), (2 * M2) as usize, Holes::Reject, &mut checker)
        .unwrap();
    assert_eq!(c.splits(), 0);
    assert_eq!(c.pages(), 2 * M2 / K4);
    let inv = *c.invalidation().unwrap();
    assert_eq!(inv.stride(), M2);
    assert_eq!(inv.level_hint(), Some(Level::L2));
    checker.complete(&table, c);
    assert!(table.query(va(G1)).is_some() && table.query(va(G1 + 3 * M2)).is_some());
    assert!(table.query(va(G1 + M2)).is_none() && table.query(va(G1 + 2 * M2)).is_none());
}

#[test]
fn unmap_holes_reject_or_skip() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let mut checker = Checker::new(&mem, table.root());
    for page in [0, 2] {
        let c = table.map(va(page * K4), pa(page * K4), 4096, RW).unwrap();
        checker.complete(&table, c);
    }
    let before = snapshot(&table, &mem);
    assert_eq!(
        table
            .unmap(va(0), (3 * K4) as usize, Holes::Reject, &mut checker)
            .map(|_| ()),
        Err(PageTableError::NotMapped(va(K4)))
    );
    assert_eq!(snapshot(&table, &mem), before);
    assert!(checker.seen.is_empty());

    let c = table
        .unmap(va(0), (3 * K4) as usize, Holes::Skip, &mut checker)
        .unwrap();
    assert_eq!(
        c.changed_range(),
        Some(VaRange::new(va(0), (3 * K4) as usize).unwrap())
    );
    assert_eq!(c.pages(), 2, "the hole is not counted");
    checker.complete(&table, c);
    assert_eq!(mem.live_frames(), 1);

    // Skipping over nothing at all changes nothing and asks for nothing.
    let c = table
        .unmap(va(0), (3 * K4) as usize, Holes::Skip, &mut checker)
        .unwrap();
    assert!(c.is_empty() && c.invalidation().is_none() && c.pages() == 0);
    let calls = checker.seen.len();
    checker.complete(&table, c);
    assert_eq!(checker.seen.len(), calls);
}

#[test]
fn split_out_of_frames_changes_nothing() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let mut checker = Checker::new(&mem, table.root());
    let c = table.map(va(G1), pa(0), G1 as usize, RW).unwrap();
    checker.complete(&table, c);
    let before = snapshot(&table, &mem);
    // Needs two tables (1G → 2M → 4K); only one is available.
    mem.set_alloc_budget(Some(1));
    assert_eq!(
        table
            .unmap(va(G1 + K4), 4096, Holes::Reject, &mut checker)
            .map(|_| ()),
        Err(PageTableError::OutOfFrames)
    );
    assert_eq!(snapshot(&table, &mem), before);
    assert!(checker.seen.is_empty(), "no break-before-make started");
    mem.set_alloc_budget(None);
}

#[test]
fn committing_without_a_reservation_is_caught() {
    // The broken variant allocates while committing: running out midway leaves a half-split
    // table behind, which the snapshot comparison used everywhere above detects.
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    table.knobs.no_reservation = true;
    let mut checker = Checker::new(&mem, table.root());
    let c = table.map(va(G1), pa(0), G1 as usize, RW).unwrap();
    checker.complete(&table, c);
    let before = snapshot(&table, &mem);
    mem.set_alloc_budget(Some(1));
    assert!(table
        .unmap(va(G1 + K4), 4096, Holes::Reject, &mut checker)
        .is_err());
    assert_ne!(snapshot(&table, &mem), before);
    mem.set_alloc_budget(None);
}

#[test]
fn keeping_empty_tables_is_caught() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    table.knobs.keep_empty_tables = true;
    let mut checker = Checker::new(&mem, table.root());
    let c = table.map(va(0), pa(0), 4096, RW).unwrap();
    checker.complete(&table, c);
    let c = table
        .unmap(va(0), 4096, Holes::Reject, &mut checker)
        .unwrap();
    checker.complete(&table, c);
    // The empty level-3 table stays linked (so its parents are not empty either): a leak.
    assert_eq!(table.stats().unwrap().empty_tables, 1);
    assert_eq!(mem.live_frames(), 4);
}

#[test]
fn a_vacancy_frees_the_tables_inside_it_and_keeps_those_still_mapping() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let mut checker = Checker::new(&mem, table.root());
    // Two pages in one level-3 table, a third in the next 2 MiB.
    for at in [0, K4, M2] {
        let c = table.map(va(at), pa(at), 4096, RW).unwrap();
        checker.complete(&table, c);
    }
    // The vacancy ends where the page at 4K starts: the level-3 table reaches past it and is
    // scanned (and kept, it still maps that page).
    let vacant = VaRange::between(0, K4);
    let c = table
        .unmap_in_vacancy(va(0), 4096, Holes::Reject, vacant, &mut checker)
        .unwrap();
    assert!(c.freed_tables().is_empty());
    checker.complete(&table, c);
    assert!(table.query(va(K4)).is_some());
    // The second 2 MiB is vacant but for the page unmapped: its table goes, the rest stays.
    let vacant = VaRange::between(M2, G1);
    let c = table
        .unmap_in_vacancy(va(M2), 4096, Holes::Reject, vacant, &mut checker)
        .unwrap();
    assert_eq!(c.freed_tables().len(), 1);
    checker.complete(&table, c);
    assert!(table.query(va(K4)).is_some());
    assert_eq!(table.stats().unwrap().empty_tables, 0);
}

#[test]
fn a_vacancy_that_does_not_hold_the_range_is_refused() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let mut checker = Checker::new(&mem, table.root());
    let c = table.map(va(0), pa(0), 2 * 4096, RW).unwrap();
    checker.complete(&table, c);
    let before = snapshot(&table, &mem);
    let vacant = VaRange::between(K4, M2);
    assert_eq!(
        table
            .unmap_in_vacancy(va(0), 2 * 4096, Holes::Reject, vacant, &mut checker)
            .unwrap_err(),
        PageTableError::VaOutOfRange {
            start: va(0),
            len: 2 * 4096
        }
    );
    assert_eq!(snapshot(&table, &mem), before);
}

/// A caller wrong about its vacancy would free a table that still maps a page: debug builds
/// catch the claim before anything is freed. Release builds trust the claim (that is the
/// point of it), so there is nothing to catch there.
#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "still maps something")]
fn a_wrong_vacancy_is_caught_in_debug_builds() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let mut checker = Checker::new(&mem, table.root());
    let c = table.map(va(0), pa(0), 2 * 4096, RW).unwrap();
    checker.complete(&table, c);
    // Claims nothing else is mapped in the first 2 MiB, but the page at 4K is.
    let vacant = VaRange::between(0, M2);
    let _ = table.unmap_in_vacancy(va(0), 4096, Holes::Reject, vacant, &mut checker);
}

// ---- protect -------------------------------------------------------------------------------

#[test]
fn protect_pages_in_place() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let mut checker = Checker::new(&mem, table.root());
    let c = table
        .map(va(0x10_0000), pa(0x20_0000), (4 * K4) as usize, RW)
        .unwrap();
    checker.complete(&table, c);
    let c = table
        .protect(
            va(0x10_1000),
            (2 * K4) as usize,
            RO,
            Holes::Reject,
            &mut checker,
        )
        .unwrap();
    assert_eq!(c.splits(), 0);
    assert!(
        checker.seen.is_empty(),
        "permission changes need no break-before-make"
    );
    let inv = *c.invalidation().unwrap();
    assert_eq!(inv.range(), VaRange::new(va(0x10_1000), 8192).unwrap());
    assert!(inv.leaf_only());
    checker.complete(&table, c);
    assert_eq!(checker.seen.len(), 1);
    assert!(
        checker.seen[0].start_mapped,
        "protect keeps the translation"
    );
    let perms = |v| table.query(va(v)).unwrap().attributes.perms;
    assert_eq!(perms(0x10_0000), Permissions::USER_RW);
    assert_eq!(perms(0x10_1000), RO);
    assert_eq!(perms(0x10_2000), RO);
    assert_eq!(perms(0x10_3000), Permissions::USER_RW);
    assert_eq!(table.query(va(0x10_2000)).unwrap().pa, pa(0x20_2000));

    // Protecting to what is already there changes nothing.
    let c = table
        .protect(va(0x10_1000), 4096, RO, Holes::Reject, &mut checker)
        .unwrap();
    assert!(c.is_empty());
    table.complete(c, &mut checker);
}

#[test]
fn protect_part_of_a_block_splits_it() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let mut checker = Checker::new(&mem, table.root());
    let c = table.map(va(M2), pa(M2), M2 as usize, RW).unwrap();
    checker.complete(&table, c);
    let c = table
        .protect(
            va(M2),
            K4 as usize,
            Permissions::USER_RX,
            Holes::Reject,
            &mut checker,
        )
        .unwrap();
    assert_eq!(c.splits(), 1);
    checker.complete(&table, c);
    assert_eq!(
        table.query(va(M2)).unwrap().attributes.perms,
        Permissions::USER_RX
    );
    assert_eq!(
        table.query(va(M2 + K4)).unwrap().attributes.perms,
        Permissions::USER_RW
    );
    // Same permissions over part of a block: no split at all.
    let c = table.map(va(4 * M2), pa(4 * M2), M2 as usize, RW).unwrap();
    checker.complete(&table, c);
    let c = table
        .protect(
            va(4 * M2),
            K4 as usize,
            Permissions::USER_RW,
            Holes::Reject,
            &mut checker,
        )
        .unwrap();
    assert!(c.is_empty() && c.splits() == 0);
    table.complete(c, &mut checker);
}

#[test]
fn protect_errors_change_nothing() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::KERNEL);
    let mut checker = Checker::new(&mem, table.root());
    let c = table
        .map(
            va(M2),
            pa(M2),
            M2 as usize,
            Attributes::normal(Permissions::KERNEL_RW),
        )
        .unwrap();
    checker.complete(&table, c);
    let c = table
        .map(va(4 * M2), pa(0x900_0000), 4096, Attributes::DEVICE)
        .unwrap();
    checker.complete(&table, c);
    let before = snapshot(&table, &mem);
    let mut unreadable = Permissions::KERNEL_RO;
    unreadable.read = false;
    let cases = [
        (
            va(M2),
            K4,
            Permissions::USER_RW,
            PageTableError::OwnerChange(va(M2)),
        ),
        (
            va(M2 - K4),
            2 * K4,
            Permissions::KERNEL_RO,
            PageTableError::NotMapped(va(M2 - K4)),
        ),
        (
            va(4 * M2),
            K4,
            Permissions::KERNEL_RX,
            PageTableError::Attributes(super::descriptor::AttributeError::ExecutableDevice),
        ),
        (
            va(M2),
            K4,
            unreadable,
            PageTableError::Attributes(super::descriptor::AttributeError::NotReadable),
        ),
        (
            va(M2),
            0,
            Permissions::KERNEL_RO,
            PageTableError::ZeroLength,
        ),
    ];
    for (v, len, perms, expected) in cases {
        let got = table
            .protect(v, len as usize, perms, Holes::Reject, &mut checker)
            .map(|_| ());
        assert_eq!(got, Err(expected));
        assert_eq!(snapshot(&table, &mem), before);
    }
    assert!(checker.seen.is_empty());
}

// ---- ageing, teardown, helpers -------------------------------------------------------------

#[test]
fn access_flag_ageing() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let mut checker = Checker::new(&mem, table.root());
    let c = table.map(va(M2), pa(M2), M2 as usize, RW).unwrap();
    checker.complete(&table, c);
    assert!(table.test_young(va(M2), 4096).unwrap());
    // Ageing part of a block ages the whole block (no split).
    let c = table.clear_young(va(M2 + K4), 4096, &mut checker).unwrap();
    assert!(c.was_young());
    assert_eq!(c.splits(), 0);
    assert_eq!(
        c.changed_range(),
        Some(VaRange::new(va(M2), M2 as usize).unwrap())
    );
    checker.complete(&table, c);
    assert!(!table.test_young(va(M2), M2 as usize).unwrap());
    let c = table.clear_young(va(M2), 4096, &mut checker).unwrap();
    assert!(!c.was_young() && c.is_empty());
    table.complete(c, &mut checker);
    // The Access flag fault handler sets it again; only a publish is needed.
    let c = table.set_young(va(M2 + 0x123)).unwrap();
    assert!(c.invalidation().is_none());
    let publishes = checker.publishes;
    checker.complete(&table, c);
    assert_eq!(checker.publishes, publishes + 1);
    assert!(table.query(va(2 * M2 - 1)).unwrap().young);
    assert_eq!(
        table.set_young(va(0)).map(|_| ()),
        Err(PageTableError::NotMapped(va(0)))
    );
}

#[test]
fn affected_range_widens_to_partially_covered_blocks() {
    let mem = TestMemory::new(16);
    let mut table = new_table(&mem, Config::USER);
    let mut checker = Checker::new(&mem, table.root());
    let c = table.map(va(M2), pa(M2), (2 * M2) as usize, RW).unwrap();
    checker.complete(&table, c);
    let r = table.affected_range(va(M2 + K4), M2 as usize).unwrap();
    assert_eq!(r, VaRange::new(va(M2), (2 * M2) as usize).unwrap());
    let r = table.affected_range(va(0), 4096).unwrap();
    assert_eq!(r, VaRange::new(va(0), 4096).unwrap());
}

#[test]
fn destroy_flushes_then_frees_every_table() {
    let mem = TestMemory::new(32);
    let mut table = new_table(&mem, Config::USER);
    let mut checker = Checker::new(&mem, table.root());
    for (v, len) in [(0, K4), (G1, M2), (0x80_0000_0000, K4)] {
        let c = table.map(va(v), pa(v), len as usize, RW).unwrap();
        checker.complete(&table, c);
    }
    let live = mem.live_frames();
    assert_eq!(live, table.stats().unwrap().tables);
    let mut flushed_with_live_tables = None;
    table.destroy(|| flushed_with_live_tables = Some(mem.live_frames()));
    assert_eq!(flushed_with_live_tables, Some(live));
    assert_eq!(mem.live_frames(), 0);
    assert_eq!(mem.bad_frees(), 0);

    let mut table = new_table(&mem, Config::USER);
    let c = table.map(va(0), pa(0), 4096, RW).unwrap();
    table.complete(c, &mut Checker::new(&mem, table.root()));
    drop(table);
    assert_eq!(mem.live_frames(), 0);
}

#[test]
fn changes_merge_into_one_invalidation() {
    let mem = TestMemory::new(32);
    let mut table = new_table(&mem, Config::USER);
    let mut checker = Checker::new(&mem, table.root());
    let c = table.map(va(0), pa(0), (4 * M2) as usize, RW).unwrap();
    checker.complete(&table, c);
    let mut all = table
        .unmap(va(0), 4096, Holes::Reject, &mut checker)
        .unwrap();
    let c = table
        .unmap(va(3 * M2), M2 as usize, Holes::Reject, &mut checker)
        .unwrap();
    all.merge(c);
    let inv = *all.invalidation().unwrap();
    assert_eq!(inv.range(), VaRange::new(va(0), (4 * M2) as usize).unwrap());
    assert_eq!(inv.level_hint(), None, "leaves at two levels");
    assert_eq!(inv.stride(), K4);
    let splits = checker.seen.len();
    checker.complete(&table, all);
    assert_eq!(checker.seen.len(), splits + 1);
}

#[test]
fn readers_never_see_a_wrong_translation() {
    // One writer splits, protects and unmaps inside a block while readers translate every page
    // of it: each sees the right PA (or nothing, during break-before-make), never another.
    use std::sync::atomic::{AtomicBool, Ordering};
    let mem = TestMemory::new(64);
    let mut table = new_table(&mem, Config::USER);
    let mut checker = Checker::new(&mem, table.root());
    let base = 4 * M2;
    let c = table
        .map(va(base), pa(16 * M2), (2 * M2) as usize, RW)
        .unwrap();
    checker.complete(&table, c);
    let root = table.root();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (mem, stop) = (&mem, &stop);
                s.spawn(move || {
                    let mut checks = 0u64;
                    while !stop.load(Ordering::Relaxed) || checks < 2048 {
                        let page = (checks * 7 + r) % 1024;
                        let v = base + page * K4;
                        if let Some(t) = translate(mem, root, va(v)) {
                            assert_eq!(t.pa, pa(16 * M2 + page * K4), "wrong PA for {v:#x}");
                        }
                        checks += 1;
                    }
                })
            })
            .collect();
        for i in 0..64 {
            let v = base + (i * 13 % 1024) * K4;
            let c = table
                .protect(va(v), 4096, RO, Holes::Skip, &mut checker)
                .unwrap();
            checker.complete(&table, c);
            let c = table.unmap(va(v), 4096, Holes::Skip, &mut checker).unwrap();
            checker.complete(&table, c);
            let c = table
                .map(va(v), pa(16 * M2 + (v - base)), 4096, RW)
                .unwrap();
            checker.complete(&table, c);
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
    });
    assert_eq!(table.stats().unwrap().empty_tables, 0);
}

#[test]
fn new_table_checks_its_window() {
    let mem = TestMemory::new(4);
    let bad = Config {
        va_start: va(G1),
        va_end: va(G1),
        ..Config::USER
    };
    assert!(matches!(
        PageTable::new(&mem, &mem, bad),
        Err(PageTableError::VaOutOfRange { .. })
    ));
    let too_big = Config {
        va_end: va((1 << 48) + K4),
        ..Config::USER
    };
    assert!(PageTable::new(&mem, &mem, too_big).is_err());
    assert_eq!(mem.live_frames(), 0);
    let empty = TestMemory::new(0);
    assert_eq!(
        PageTable::new(&empty, &empty, Config::USER).map(|_| ()),
        Err(PageTableError::OutOfFrames)
    );
}
