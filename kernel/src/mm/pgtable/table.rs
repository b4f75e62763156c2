//! The page-table engine: map, unmap, protect and age ranges of one stage-1 table.
//!
//! See the module documentation of [`super`] for the protocol (dry run, reservation, commit,
//! break-before-make, deferred freeing of table pages).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use super::descriptor::{
    is_lower_half, Attributes, Descriptor, DescriptorKind, Level, MemoryType, Permissions,
    ENTRIES_PER_TABLE, PA_BITS, VA_BITS,
};
use super::error::PageTableError;
use super::range::VaRange;
use super::tlb::{Invalidate, TlbInvalidation};
use super::walk::{self, Mapping, Translation};
use crate::mm::addr::{PhysAddr, VirtAddr, PAGE_SIZE};
use crate::mm::phys::{FrameAllocator, PhysMemory};

/// Whether `map` may use 1 GiB and 2 MiB block descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocks {
    /// Use a block wherever VA, PA and length are aligned to it.
    Allowed,
    /// Map everything with 4 KiB pages.
    Forbidden,
}

/// What `unmap` and `protect` do with unmapped pages inside their range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holes {
    /// The first hole fails the whole operation with [`PageTableError::NotMapped`], and nothing
    /// changes.
    Reject,
    /// Holes are skipped; only mapped pages are affected.
    Skip,
}

/// How a table is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// First virtual address the table may map.
    pub va_start: VirtAddr,
    /// First virtual address past the ones the table may map (at most 2^48).
    pub va_end: VirtAddr,
    /// Block mappings allowed or not.
    pub blocks: Blocks,
    /// Leaves are global (nG = 0; kernel mappings shared by all ASIDs) or per-ASID (nG = 1).
    pub global: bool,
}

impl Config {
    /// A user address space: the whole lower half, blocks allowed, per-ASID entries.
    pub const USER: Config = Config {
        va_start: VirtAddr(0),
        va_end: VirtAddr(1 << VA_BITS),
        blocks: Blocks::Allowed,
        global: false,
    };

    /// The kernel's own table: the whole lower half, blocks allowed, global entries.
    pub const KERNEL: Config = Config {
        global: true,
        ..Config::USER
    };
}

/// The outcome of an operation: what changed, and what must happen before it is complete.
///
/// Pass it to [`PageTable::complete`], which invalidates the TLBs (CPU and, through the
/// [`Invalidate`] implementation, secondary) and only then frees the table pages the operation
/// emptied: walk caches may still hold their addresses until the invalidation is done. Several
/// changes can be [`merge`](Change::merge)d and completed once.
#[must_use = "a Change must be completed: TLBs invalidated, freed tables released"]
#[derive(Debug, Default)]
pub struct Change {
    changed: Option<VaRange>,
    invalidation: Option<TlbInvalidation>,
    freed: FreedTables,
    splits: usize,
    was_young: bool,
    pages: u64,
}

impl Change {
    /// The range whose translations changed, or `None` if nothing did. For `unmap`, `protect`
    /// and ageing it is exactly the invalidation range, which is what
    /// `arch_invalidate_secondary_tlbs` must be given.
    pub fn changed_range(&self) -> Option<VaRange> {
        self.changed
    }

    /// What must leave the TLBs, or `None` if only new entries were written.
    pub fn invalidation(&self) -> Option<&TlbInvalidation> {
        self.invalidation.as_ref()
    }

    /// Table frames the operation unlinked; freed by [`PageTable::complete`].
    pub fn freed_tables(&self) -> &[PhysAddr] {
        self.freed.as_slice()
    }

    /// Number of blocks the operation split (each already went through break-before-make).
    pub fn splits(&self) -> usize {
        self.splits
    }

    /// Pages whose leaves the operation wrote: mapped by `map`, unmapped by `unmap` (holes
    /// and the parts of split blocks outside the range are not counted), rewritten by
    /// `protect` and ageing.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// For [`PageTable::clear_young`]: whether any leaf had its access flag set.
    pub fn was_young(&self) -> bool {
        self.was_young
    }

    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changed.is_none() && self.freed.is_empty()
    }

    /// Folds `other` into `self`, to complete both with one invalidation.
    pub fn merge(&mut self, mut other: Change) {
        self.changed = match (self.changed, other.changed) {
            (Some(a), Some(b)) => Some(a.hull(&b)),
            (a, b) => a.or(b),
        };
        self.invalidation = match (self.invalidation, other.invalidation) {
            (Some(mut a), Some(b)) => {
                a.merge(&b);
                Some(a)
            }
            (a, b) => a.or(b),
        };
        self.freed.append(&mut other.freed);
        self.splits += other.splits;
        self.was_young |= other.was_young;
        self.pages += other.pages;
    }

    fn record_leaf(&mut self, range: VaRange, level: Level) {
        match &mut self.invalidation {
            Some(inv) => inv.add_leaf(range, level),
            None => self.invalidation = Some(TlbInvalidation::leaf(range, level)),
        }
        self.changed = Some(self.changed.map_or(range, |c| c.hull(&range)));
    }
}

/// Table frames a change unlinked: inline up to the three an unmap inside one level-3 table
/// can empty (levels 1 to 3), so the common small unmap does not allocate; on the heap beyond.
#[derive(Debug, Default)]
struct FreedTables {
    inline: [PhysAddr; FREED_INLINE],
    len: usize,
    spilled: Vec<PhysAddr>,
}

const FREED_INLINE: usize = 3;

impl FreedTables {
    fn push(&mut self, table: PhysAddr) {
        if self.len < FREED_INLINE {
            self.inline[self.len] = table;
        } else {
            if self.spilled.is_empty() {
                self.spilled.extend_from_slice(&self.inline);
            }
            self.spilled.push(table);
        }
        self.len += 1;
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn as_slice(&self) -> &[PhysAddr] {
        if self.len <= FREED_INLINE {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }

    /// Moves `other`'s tables after ours.
    fn append(&mut self, other: &mut FreedTables) {
        for &table in other.as_slice() {
            self.push(table);
        }
        *other = FreedTables::default();
    }
}

/// Counts describing a table's shape, from [`PageTable::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Table frames, root included.
    pub tables: usize,
    /// Non-root tables without a single valid entry (always 0 after every operation).
    pub empty_tables: usize,
    /// Leaf descriptors per level (index 0 is always 0).
    pub leaves: [usize; 4],
}

/// Debug knobs that deliberately break the engine, so tests can show that their checks catch
/// the breakage. Never set outside tests.
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Knobs {
    /// Split a block without first invalidating its entry (break-before-make violated).
    pub skip_break: bool,
    /// Free unlinked tables before the TLB invalidation.
    pub release_before_flush: bool,
    /// Leave emptied tables linked (leak them).
    pub keep_empty_tables: bool,
    /// Allocate tables while committing instead of reserving them first.
    pub no_reservation: bool,
    /// Send every edit down the general path (dry run over all levels, then commit), never
    /// the leaf-table shortcut: the reference the shortcut is compared with.
    pub general_path_only: bool,
}

/// A table while an operation walks it: a real one, or the one a block split will create.
#[derive(Clone, Copy, Debug)]
enum Node {
    /// A table in memory.
    Table(PhysAddr),
    /// A table a block split will create: entry `i` maps `base + i * entry_size` with the
    /// attributes of `block`.
    Split { block: Descriptor, base: u64 },
}

/// Where [`PageTable::leaf_table_path`] found a range: the tables from the root (level 0) down
/// to the level-3 table, each with its entries.
struct LeafPath<'m> {
    tables: [(PhysAddr, &'m [AtomicU64; ENTRIES_PER_TABLE]); 4],
}

/// The entries of a [`Node`] while a loop indexes them: a table's words, reached once per table
/// rather than once per entry (the kernel's accessor searches the RAM ranges on every call),
/// or the leaves a split will write.
#[derive(Clone, Copy)]
enum Entries<'m> {
    Table(&'m [AtomicU64; ENTRIES_PER_TABLE]),
    Split { block: Descriptor, base: u64 },
}

impl Entries<'_> {
    /// Entry `index` (we are the only writer: our own earlier stores are visible to us without
    /// ordering).
    #[inline]
    fn load(&self, level: Level, index: usize) -> Descriptor {
        match self {
            Entries::Table(words) => Descriptor::from_bits(words[index].load(Ordering::Relaxed)),
            Entries::Split { block, base } => {
                block.leaf_like(level, PhysAddr(base + index as u64 * level.entry_size()))
            }
        }
    }

    /// Stores into a live table. Release: a walker that sees a new table descriptor also sees
    /// the table's contents (on arm64 an STLR, which orders the earlier stores before it for
    /// every observer, as the `smp_wmb()` Linux issues before linking a new page table).
    #[inline]
    fn store(&self, index: usize, desc: Descriptor) {
        match self {
            Entries::Table(words) => words[index].store(desc.bits(), Ordering::Release),
            // Only dry runs walk virtual tables, and they never store.
            Entries::Split { .. } => debug_assert!(false, "store into a virtual table"),
        }
    }
}

/// What `modify` does to each covered leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edit {
    Unmap,
    Protect(Permissions),
    ClearYoung,
}

/// State of one operation's walk: the dry run counts, the commit changes.
struct Pass<'i> {
    commit: bool,
    holes: Holes,
    tables_needed: usize,
    reserve: Vec<PhysAddr>,
    change: Change,
    inv: Option<&'i mut dyn Invalidate>,
    /// Nothing is mapped here outside the range being unmapped: a table inside it is empty
    /// once the unmap passed, without a scan. At least the range itself.
    vacant: VaRange,
}

impl<'i> Pass<'i> {
    fn dry_run(holes: Holes, vacant: VaRange) -> Self {
        Pass {
            commit: false,
            vacant,
            holes,
            tables_needed: 0,
            reserve: Vec::new(),
            change: Change::default(),
            inv: None,
        }
    }
}

/// One stage-1 translation table (TTBR0 regime), with the memory accessor and the frame
/// allocator it lives in.
///
/// Writers are serialized by `&mut self` (the owner's page-table lock); readers on other CPUs,
/// hardware walkers and the SMMU may walk concurrently (see [`walk::translate`]).
pub struct PageTable<M: PhysMemory, F: FrameAllocator> {
    mem: M,
    frames: F,
    root: PhysAddr,
    config: Config,
    /// Set once the tables were freed by [`PageTable::destroy`].
    destroyed: bool,
    #[cfg(test)]
    pub(crate) knobs: Knobs,
    /// Entries visited (or counted) by `map` and `modify`, dry runs included (tests bound the
    /// work).
    #[cfg(test)]
    pub(crate) entries_walked: core::sync::atomic::AtomicUsize,
}

impl<M: PhysMemory, F: FrameAllocator> PageTable<M, F> {
    /// An empty table: allocates the root frame.
    pub fn new(mem: M, frames: F, config: Config) -> Result<Self, PageTableError> {
        let window_ok = config.va_start < config.va_end
            && config.va_start.is_page_aligned()
            && config.va_end.is_page_aligned()
            && config.va_end.as_u64() <= 1 << VA_BITS;
        if !window_ok {
            return Err(PageTableError::VaOutOfRange {
                start: config.va_start,
                len: config
                    .va_end
                    .as_u64()
                    .wrapping_sub(config.va_start.as_u64()) as usize,
            });
        }
        let root = frames.alloc_zeroed()?;
        if mem.bytes(root, PAGE_SIZE).is_none() {
            frames.free(root);
            return Err(PageTableError::Unreachable(root));
        }
        Ok(PageTable {
            mem,
            frames,
            root,
            config,
            destroyed: false,
            #[cfg(test)]
            knobs: Knobs::default(),
            #[cfg(test)]
            entries_walked: core::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The root table's physical address (for `TTBR0_EL1`, or the SMMU's context descriptor).
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The table's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The memory accessor the table lives in.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Maps `len` bytes at `va` to `pa` with `attrs`, using blocks where allowed and aligned.
    ///
    /// Fails without changing anything if the range is unaligned, empty, overflowing or outside
    /// the table, if any page in it is already mapped ([`PageTableError::AlreadyMapped`]), or if
    /// the tables it needs cannot all be allocated. Only invalid entries are written, so no
    /// break-before-make and no TLB invalidation is needed: the [`Change`] asks only for the
    /// publishing barrier.
    pub fn map(
        &mut self,
        va: VirtAddr,
        pa: PhysAddr,
        len: usize,
        attrs: Attributes,
    ) -> Result<Change, PageTableError> {
        let range = self.check_range(va, len)?;
        if !pa.is_page_aligned() {
            return Err(PageTableError::UnalignedPa(pa));
        }
        match pa.checked_add(len as u64) {
            Some(end) if end.as_u64() <= 1 << PA_BITS => {}
            _ => {
                return Err(PageTableError::PaOutOfRange(PhysAddr(
                    pa.as_u64().saturating_add(len as u64),
                )))
            }
        }
        attrs.validate()?;

        let mut pass = Pass::dry_run(Holes::Reject, range);
        let (start, end) = (range.start().as_u64(), range.end().as_u64());
        self.map_level(
            Node::Table(self.root),
            Level::ROOT,
            start,
            end,
            pa.as_u64(),
            attrs,
            &mut pass,
        )?;
        self.reserve(&mut pass)?;
        pass.commit = true;
        // The dry run visited the same entries and found no error; the reservation holds
        // exactly the tables the commit will take. The commit cannot fail.
        self.map_level(
            Node::Table(self.root),
            Level::ROOT,
            start,
            end,
            pa.as_u64(),
            attrs,
            &mut pass,
        )?;
        pass.change.changed = Some(range);
        pass.change.pages = range.pages();
        Ok(self.finish(pass))
    }

    /// Unmaps `len` bytes at `va`. Blocks only partly inside the range are split first (with
    /// break-before-make, invalidating through `inv`); tables left empty are unlinked and
    /// returned in the [`Change`] for [`PageTable::complete`] to free after the invalidation.
    ///
    /// With [`Holes::Reject`] an unmapped page in the range fails the call and nothing
    /// changes; with [`Holes::Skip`] holes are ignored. Running out of frames for a split
    /// also changes nothing.
    pub fn unmap(
        &mut self,
        va: VirtAddr,
        len: usize,
        holes: Holes,
        inv: &mut dyn Invalidate,
    ) -> Result<Change, PageTableError> {
        let range = self.check_range(va, len)?;
        self.modify(range, Edit::Unmap, holes, range, inv)
    }

    /// [`unmap`](Self::unmap) for a caller that knows that nothing is mapped in `vacant` outside
    /// `[va, va + len)` (an address space: no region there). Every table whose whole span lies
    /// in `vacant` is then empty after the unmap, and is unlinked without scanning its 512
    /// entries; tables reaching outside are scanned as by `unmap`. Linux's `free_pgtables`
    /// takes the same knowledge from the neighbouring VMAs (its floor and ceiling).
    ///
    /// A `vacant` that does not contain the range is refused ([`PageTableError::VaOutOfRange`]).
    /// One that is wrong about what is mapped frees live tables: debug builds check each claim.
    pub fn unmap_in_vacancy(
        &mut self,
        va: VirtAddr,
        len: usize,
        holes: Holes,
        vacant: VaRange,
        inv: &mut dyn Invalidate,
    ) -> Result<Change, PageTableError> {
        let range = self.check_range(va, len)?;
        if !vacant.covers(&range) {
            return Err(PageTableError::VaOutOfRange { start: va, len });
        }
        self.modify(range, Edit::Unmap, holes, vacant, inv)
    }

    /// Changes the permissions of `len` bytes at `va` to `perms` (memory type unchanged).
    ///
    /// Only AP\[2\] and PXN/UXN change, which the architecture allows on live entries without
    /// break-before-make (D8.16.1); the TLBs are invalidated once, by [`PageTable::complete`].
    /// Blocks partly inside the range are split (with break-before-make). Moving a page
    /// between user and kernel ownership is refused ([`PageTableError::OwnerChange`]), as is
    /// making Device memory executable. Holes as for [`PageTable::unmap`].
    pub fn protect(
        &mut self,
        va: VirtAddr,
        len: usize,
        perms: Permissions,
        holes: Holes,
        inv: &mut dyn Invalidate,
    ) -> Result<Change, PageTableError> {
        let range = self.check_range(va, len)?;
        perms.validate()?;
        self.modify(range, Edit::Protect(perms), holes, range, inv)
    }

    /// Clears the access flag of every leaf touching the range (whole leaves: a block is
    /// aged as one), skipping holes. [`Change::was_young`] tells whether any was set. The
    /// next access to a cleared page takes an Access flag fault, which the kernel answers with
    /// [`PageTable::set_young`]. Clearing AF needs no break-before-make. Completing the
    /// [`Change`] invalidates the TLBs (Linux's `clear_flush_young`); ageing never unlinks a
    /// table, so a caller that wants `clear_young` semantics (no invalidation) may drop it.
    pub fn clear_young(
        &mut self,
        va: VirtAddr,
        len: usize,
        inv: &mut dyn Invalidate,
    ) -> Result<Change, PageTableError> {
        let range = self.check_range(va, len)?;
        self.modify(range, Edit::ClearYoung, Holes::Skip, range, inv)
    }

    /// True if any leaf touching the range has its access flag set.
    pub fn test_young(&self, va: VirtAddr, len: usize) -> Result<bool, PageTableError> {
        let mut young = false;
        self.walk(va, len, |m| young |= m.young)?;
        Ok(young)
    }

    /// Sets the access flag of the leaf translating `va` (the Access flag fault handler).
    /// An entry with AF = 0 is never held in a TLB (D8.4), so only the publishing barrier is
    /// needed. Returns an empty change if the flag was already set.
    pub fn set_young(&mut self, va: VirtAddr) -> Result<Change, PageTableError> {
        let range = self.check_range(va.align_down(PAGE_SIZE as u64), PAGE_SIZE)?;
        let mut table = self.root;
        let mut level = Level::ROOT;
        loop {
            let index = level.index(va.as_u64());
            let desc = self.load(table, index)?;
            match desc.kind(level) {
                DescriptorKind::Table(next) => {
                    table = next;
                    level = Self::below(level, va.as_u64(), desc)?;
                }
                DescriptorKind::Leaf(_) => {
                    let mut change = Change::default();
                    if !desc.is_young() {
                        self.store(table, index, desc.with_young(true));
                        let start = range.start().as_u64() & !(level.entry_size() - 1);
                        change.changed = Some(VaRange::between(start, start + level.entry_size()));
                    }
                    return Ok(change);
                }
                DescriptorKind::Invalid => return Err(PageTableError::NotMapped(va)),
                DescriptorKind::Reserved => {
                    return Err(PageTableError::Corrupt {
                        va,
                        level,
                        bits: desc.bits(),
                    })
                }
            }
        }
    }

    /// Finishes an operation: invalidates what `change` asks for through `inv` (or just
    /// publishes new entries), then frees the tables it unlinked. Freeing before the
    /// invalidation would let a walk cache follow a table pointer into a reused frame.
    pub fn complete(&self, change: Change, inv: &mut dyn Invalidate) {
        #[cfg(test)]
        if self.knobs.release_before_flush {
            for &table in change.freed.as_slice() {
                self.frames.free(table);
            }
            Self::flush(&change, inv);
            return;
        }
        Self::flush(&change, inv);
        for &table in change.freed.as_slice() {
            self.frames.free(table);
        }
    }

    fn flush(change: &Change, inv: &mut dyn Invalidate) {
        match (&change.invalidation, change.changed) {
            (Some(invalidation), _) => inv.invalidate(invalidation),
            (None, Some(_)) => inv.publish(),
            (None, None) => {}
        }
    }

    /// The translation of `va`, if mapped.
    pub fn query(&self, va: VirtAddr) -> Option<Translation> {
        walk::translate(&self.mem, self.root, va)
    }

    /// Calls `f` for each leaf inside `[va, va + len)`, clipped to it, in address order.
    pub fn walk(
        &self,
        va: VirtAddr,
        len: usize,
        mut f: impl FnMut(Mapping),
    ) -> Result<(), PageTableError> {
        let range = self.check_range(va, len)?;
        walk::walk_leaves(&self.mem, self.root, Level::ROOT, range, &mut f)
    }

    /// `[va, va + len)` widened to the whole of any block that only partly overlaps it: the
    /// range that a split during `unmap` or `protect` will briefly make invalid, and so the
    /// range an address space announces to `invalidate_range_start` (as Linux does for the
    /// whole huge page when it splits one).
    pub fn affected_range(&self, va: VirtAddr, len: usize) -> Result<VaRange, PageTableError> {
        let range = self.check_range(va, len)?;
        // The leaf at `va` as (its start, its size), if mapped.
        let leaf_of = |va: u64| {
            self.query(VirtAddr(va)).map(|t| {
                let size = t.level.entry_size();
                (va & !(size - 1), size)
            })
        };
        let (first, last) = (
            range.start().as_u64(),
            range.end().as_u64() - PAGE_SIZE as u64,
        );
        let first_leaf = leaf_of(first);
        // One walk for a one-page range.
        let last_leaf = if last == first {
            first_leaf
        } else {
            leaf_of(last)
        };
        let start = first_leaf.map_or(first, |(start, _)| start);
        let end = last_leaf.map_or(range.end().as_u64(), |(start, size)| start + size);
        Ok(VaRange::between(start, end))
    }

    /// Counts tables and leaves, and checks that no reserved descriptor is reachable.
    pub fn stats(&self) -> Result<TableStats, PageTableError> {
        let mut stats = TableStats::default();
        self.stats_of(self.root, Level::ROOT, 0, true, &mut stats)?;
        Ok(stats)
    }

    /// Frees every table, root included, after `flush_all` ran. For a table that was live,
    /// `flush_all` must invalidate everything it may have left in any TLB (the whole ASID,
    /// CPU and secondary). Leaf frames are not touched: their owner frees them.
    pub fn destroy(mut self, flush_all: impl FnOnce()) {
        let mut tables = Vec::new();
        self.collect_tables(self.root, Level::ROOT, &mut tables);
        flush_all();
        for table in tables {
            self.frames.free(table);
        }
        self.destroyed = true;
    }

    // ---- internals -----------------------------------------------------------------------

    fn check_range(&self, va: VirtAddr, len: usize) -> Result<VaRange, PageTableError> {
        let range = VaRange::new(va, len)?;
        if !is_lower_half(range.start())
            || range.start() < self.config.va_start
            || range.end() > self.config.va_end
        {
            return Err(PageTableError::VaOutOfRange { start: va, len });
        }
        Ok(range)
    }

    /// The level below `level`; a table descriptor at level 3 would be a page, so this only
    /// fails on a corrupt walk.
    fn below(level: Level, va: u64, desc: Descriptor) -> Result<Level, PageTableError> {
        level.next().ok_or(PageTableError::Corrupt {
            va: VirtAddr(va),
            level,
            bits: desc.bits(),
        })
    }

    fn load(&self, table: PhysAddr, index: usize) -> Result<Descriptor, PageTableError> {
        // We are the only writer: our own earlier stores are visible to us without ordering.
        walk::load(&self.mem, table, index, Ordering::Relaxed)
            .ok_or(PageTableError::Unreachable(table))
    }

    /// The entries of `node`, reachable as a whole (the dry run checked every table it enters,
    /// the engine allocated the rest).
    fn entries(&self, node: Node) -> Result<Entries<'_>, PageTableError> {
        match node {
            Node::Table(table) => self.table_entries(table).map(Entries::Table),
            Node::Split { block, base } => Ok(Entries::Split { block, base }),
        }
    }

    fn table_entries(
        &self,
        table: PhysAddr,
    ) -> Result<&[AtomicU64; ENTRIES_PER_TABLE], PageTableError> {
        self.mem
            .words(table, ENTRIES_PER_TABLE)
            .and_then(|words| words.try_into().ok())
            .ok_or(PageTableError::Unreachable(table))
    }

    /// Stores a descriptor into a live table (see [`Entries::store`] for the ordering).
    fn store(&self, table: PhysAddr, index: usize, desc: Descriptor) {
        match self.mem.word(PhysAddr(table.as_u64() + 8 * index as u64)) {
            Some(word) => word.store(desc.bits(), Ordering::Release),
            // The dry run (or the reservation) checked the whole table frame.
            None => debug_assert!(false, "table {table:?} unreachable after it was checked"),
        }
    }

    /// Checks, during a dry run, that a whole table is reachable, so that the commit (which
    /// may scan all of it) cannot meet an unreachable word.
    fn check_table(&self, table: PhysAddr) -> Result<(), PageTableError> {
        match self.mem.bytes(table, PAGE_SIZE) {
            Some(_) => Ok(()),
            None => Err(PageTableError::Unreachable(table)),
        }
    }

    /// Allocates the frames the dry run counted, or none at all.
    fn reserve(&self, pass: &mut Pass<'_>) -> Result<(), PageTableError> {
        #[cfg(test)]
        if self.knobs.no_reservation {
            return Ok(());
        }
        // The list grows with the frames actually obtained: a count of millions (a huge map
        // into empty space) fails at the first missing frame, not by asking the heap for room
        // for millions of addresses.
        for _ in 0..pass.tables_needed {
            let error = match self.frames.alloc_zeroed() {
                Ok(frame) if self.mem.bytes(frame, PAGE_SIZE).is_some() => {
                    if pass.reserve.try_reserve(1).is_ok() {
                        pass.reserve.push(frame);
                        continue;
                    }
                    self.frames.free(frame);
                    PageTableError::OutOfFrames
                }
                Ok(frame) => {
                    self.frames.free(frame);
                    PageTableError::Unreachable(frame)
                }
                Err(e) => e.into(),
            };
            // Never linked anywhere, so no walker can have seen them: free at once.
            for frame in pass.reserve.drain(..) {
                self.frames.free(frame);
            }
            return Err(error);
        }
        Ok(())
    }

    fn take_frame(&self, pass: &mut Pass<'_>) -> Result<PhysAddr, PageTableError> {
        #[cfg(test)]
        if self.knobs.no_reservation {
            return Ok(self.frames.alloc_zeroed()?);
        }
        pass.reserve.pop().ok_or(PageTableError::OutOfFrames)
    }

    fn finish(&self, mut pass: Pass<'_>) -> Change {
        debug_assert!(pass.reserve.is_empty(), "dry run over-counted tables");
        for frame in pass.reserve.drain(..) {
            self.frames.free(frame);
        }
        pass.change
    }

    /// True if `map` puts one leaf at `level` for `[va, end)` (inside one entry) from `pa`:
    /// the range is the whole entry, `pa` is aligned to it, and the level may hold a leaf
    /// (pages always; blocks if the config allows them).
    fn leaf_fits(&self, level: Level, va: u64, end: u64, pa: u64) -> bool {
        let size = level.entry_size();
        let whole = va & (size - 1) == 0 && end - va == size && pa & (size - 1) == 0;
        whole
            && (level == Level::L3
                || (level.can_hold_leaf() && self.config.blocks == Blocks::Allowed))
    }

    /// The tables `map` creates below a new table at `level` that is to map `[start, end)`
    /// (inside one entry of the level above) from `pa`. Computed, not walked: a request can
    /// span far more entries than there are frames, and the dry run must fail in time
    /// proportional to the levels, not to the pages asked for. The entries wholly inside the
    /// range all have the same PA alignment, so the first stands for all of them; only the
    /// partial first and last entries differ. At most three calls per level.
    fn tables_below_new(&self, level: Level, start: u64, end: u64, pa: u64) -> usize {
        let size = level.entry_size();
        let tables_for_entry = |va: u64, entry_end: u64| -> usize {
            #[cfg(test)]
            self.entries_walked.fetch_add(1, Ordering::Relaxed);
            let entry_pa = pa + (va - start);
            match level.next() {
                _ if self.leaf_fits(level, va, entry_end, entry_pa) => 0,
                Some(next) => {
                    1usize.saturating_add(self.tables_below_new(next, va, entry_end, entry_pa))
                }
                // A page-aligned range always fills whole level-3 entries.
                None => 0,
            }
        };
        let first_end = end.min((start & !(size - 1)) + size);
        let mut tables = tables_for_entry(start, first_end);
        if first_end == end {
            return tables;
        }
        let last_start = (end - 1) & !(size - 1);
        let middle = usize::try_from((last_start - first_end) / size).unwrap_or(usize::MAX);
        if middle > 0 {
            let each = tables_for_entry(first_end, first_end + size);
            tables = tables.saturating_add(each.saturating_mul(middle));
        }
        tables.saturating_add(tables_for_entry(last_start, end))
    }

    #[allow(clippy::too_many_arguments)]
    fn map_level(
        &self,
        node: Node,
        level: Level,
        start: u64,
        end: u64,
        pa_start: u64,
        attrs: Attributes,
        pass: &mut Pass<'_>,
    ) -> Result<(), PageTableError> {
        let size = level.entry_size();
        let entries = self.entries(node)?;
        if let (Level::L3, Entries::Table(words)) = (level, entries) {
            return self.map_pages(words, start, end, pa_start, attrs, pass);
        }
        let mut va = start;
        while va < end {
            #[cfg(test)]
            self.entries_walked.fetch_add(1, Ordering::Relaxed);
            let index = level.index(va);
            let entry_start = va & !(size - 1);
            let chunk_end = end.min(entry_start + size);
            let pa = pa_start + (va - start);
            let desc = entries.load(level, index);
            match desc.kind(level) {
                DescriptorKind::Invalid => {
                    if self.leaf_fits(level, va, chunk_end, pa) {
                        if pass.commit {
                            let leaf =
                                Descriptor::leaf(level, PhysAddr(pa), attrs, self.config.global);
                            entries.store(index, leaf);
                        }
                    } else {
                        let next = Self::below(level, va, desc)?;
                        if pass.commit {
                            let table = self.take_frame(pass)?;
                            self.map_level(
                                Node::Table(table),
                                next,
                                va,
                                chunk_end,
                                pa,
                                attrs,
                                pass,
                            )?;
                            // Link the table only once it is complete.
                            entries.store(index, Descriptor::table(table));
                        } else {
                            let below = self.tables_below_new(next, va, chunk_end, pa);
                            pass.tables_needed =
                                pass.tables_needed.saturating_add(1).saturating_add(below);
                        }
                    }
                }
                DescriptorKind::Table(table) => {
                    let next = Self::below(level, va, desc)?;
                    if !pass.commit {
                        self.check_table(table)?;
                    }
                    self.map_level(Node::Table(table), next, va, chunk_end, pa, attrs, pass)?;
                }
                DescriptorKind::Leaf(_) => return Err(PageTableError::AlreadyMapped(VirtAddr(va))),
                DescriptorKind::Reserved => {
                    return Err(PageTableError::Corrupt {
                        va: VirtAddr(va),
                        level,
                        bits: desc.bits(),
                    })
                }
            }
            va = chunk_end;
        }
        Ok(())
    }

    /// [`map_level`](Self::map_level) inside one level-3 table: every entry is a whole page,
    /// so the loop only checks that each is free (dry run) or writes it (commit).
    fn map_pages(
        &self,
        words: &[AtomicU64; ENTRIES_PER_TABLE],
        start: u64,
        end: u64,
        pa_start: u64,
        attrs: Attributes,
        pass: &mut Pass<'_>,
    ) -> Result<(), PageTableError> {
        let words = self.pages_of(words, start, end);
        if pass.commit {
            let leaf = Descriptor::leaf(Level::L3, PhysAddr(pa_start), attrs, self.config.global);
            let mut pa = pa_start;
            for word in words {
                word.store(
                    leaf.leaf_like(Level::L3, PhysAddr(pa)).bits(),
                    Ordering::Release,
                );
                pa += PAGE_SIZE as u64;
            }
            return Ok(());
        }
        for (i, word) in words.iter().enumerate() {
            let va = start + i as u64 * PAGE_SIZE as u64;
            let desc = Descriptor::from_bits(word.load(Ordering::Relaxed));
            match desc.kind(Level::L3) {
                DescriptorKind::Invalid => {}
                DescriptorKind::Leaf(_) => return Err(PageTableError::AlreadyMapped(VirtAddr(va))),
                DescriptorKind::Table(_) | DescriptorKind::Reserved => {
                    return Err(corrupt_page(va, desc))
                }
            }
        }
        Ok(())
    }

    /// The entries of a level-3 table for the pages `[start, end)` (inside it).
    fn pages_of<'w>(
        &self,
        words: &'w [AtomicU64; ENTRIES_PER_TABLE],
        start: u64,
        end: u64,
    ) -> &'w [AtomicU64] {
        let first = Level::L3.index(start);
        let words = &words[first..first + ((end - start) / PAGE_SIZE as u64) as usize];
        #[cfg(test)]
        self.entries_walked
            .fetch_add(words.len(), Ordering::Relaxed);
        words
    }

    /// Dry run, reservation and commit of an edit of existing leaves.
    fn modify(
        &mut self,
        range: VaRange,
        edit: Edit,
        holes: Holes,
        vacant: VaRange,
        inv: &mut dyn Invalidate,
    ) -> Result<Change, PageTableError> {
        let (start, end) = (range.start().as_u64(), range.end().as_u64());
        #[cfg(test)]
        let shortcut = !self.knobs.general_path_only;
        #[cfg(not(test))]
        let shortcut = true;
        if shortcut {
            if let Some(path) = self.leaf_table_path(start, end)? {
                return self.modify_in_leaf_table(path, start, end, edit, holes, vacant, inv);
            }
        }
        let mut pass = Pass::dry_run(holes, vacant);
        self.modify_level(
            Node::Table(self.root),
            Level::ROOT,
            start,
            end,
            edit,
            &mut pass,
        )?;
        self.reserve(&mut pass)?;
        pass.commit = true;
        pass.inv = Some(inv);
        // As for map: the dry run proved the commit cannot fail.
        self.modify_level(
            Node::Table(self.root),
            Level::ROOT,
            start,
            end,
            edit,
            &mut pass,
        )?;
        Ok(self.finish(pass))
    }

    /// The tables from the root down to the level-3 table holding `[start, end)`, if the
    /// range lies inside one level-3 table that table descriptors lead to. An edit there
    /// splits no block and allocates nothing: [`modify`](Self::modify) then checks and
    /// rewrites the pages without walking the levels twice (small unmaps and protection
    /// changes). `None` sends the edit down the general path, which also reports whatever
    /// stopped this descent.
    fn leaf_table_path(&self, start: u64, end: u64) -> Result<Option<LeafPath<'_>>, PageTableError> {
        let span = Level::L2.entry_size();
        if start & !(span - 1) != (end - 1) & !(span - 1) {
            return Ok(None);
        }
        let root = self.table_entries(self.root)?;
        let mut path = LeafPath {
            tables: [(self.root, root); 4],
        };
        for (i, level) in [Level::L0, Level::L1, Level::L2].into_iter().enumerate() {
            let desc = path.tables[i].1[level.index(start)].load(Ordering::Relaxed);
            let DescriptorKind::Table(next) = Descriptor::from_bits(desc).kind(level) else {
                return Ok(None);
            };
            path.tables[i + 1] = (next, self.table_entries(next)?);
        }
        Ok(Some(path))
    }

    /// [`modify`](Self::modify) along a [`LeafPath`]: a checking pass that stores nothing,
    /// the rewrite, then (for an unmap) the tables it emptied, from the bottom up.
    #[allow(clippy::too_many_arguments)]
    fn modify_in_leaf_table(
        &self,
        path: LeafPath<'_>,
        start: u64,
        end: u64,
        edit: Edit,
        holes: Holes,
        vacant: VaRange,
        inv: &mut dyn Invalidate,
    ) -> Result<Change, PageTableError> {
        let [.., (_, pages)] = path.tables;
        let mut pass = Pass::dry_run(holes, vacant);
        self.modify_pages(pages, start, end, edit, &mut pass)?;
        pass.commit = true;
        pass.inv = Some(inv);
        self.modify_pages(pages, start, end, edit, &mut pass)?;
        if edit == Edit::Unmap {
            let levels = [Level::L0, Level::L1, Level::L2];
            for (i, level) in levels.into_iter().enumerate().rev() {
                let (parent, child) = (path.tables[i].1, path.tables[i + 1].0);
                let entry_start = start & !(level.entry_size() - 1);
                let span = VaRange::between(entry_start, entry_start + level.entry_size());
                let freed = pass.change.freed.len();
                self.unlink_if_empty(Entries::Table(parent), level.index(start), child, span, &mut pass)?;
                if pass.change.freed.len() == freed {
                    // The child stays linked, so its parent is not empty either.
                    break;
                }
            }
        }
        Ok(self.finish(pass))
    }

    fn modify_level(
        &self,
        node: Node,
        level: Level,
        start: u64,
        end: u64,
        edit: Edit,
        pass: &mut Pass<'_>,
    ) -> Result<(), PageTableError> {
        let size = level.entry_size();
        let entries = self.entries(node)?;
        if let (Level::L3, Entries::Table(words)) = (level, entries) {
            return self.modify_pages(words, start, end, edit, pass);
        }
        // The leaves this call rewrites, recorded once at the end: the invalidation is their
        // hull anyway, and recording each of 512 pages costs more than rewriting it.
        let mut rewritten: Option<(u64, u64)> = None;
        let mut va = start;
        while va < end {
            #[cfg(test)]
            self.entries_walked.fetch_add(1, Ordering::Relaxed);
            let index = level.index(va);
            let entry_start = va & !(size - 1);
            let entry_end = entry_start + size;
            let chunk_end = end.min(entry_end);
            let desc = entries.load(level, index);
            match desc.kind(level) {
                DescriptorKind::Invalid => {
                    if pass.holes == Holes::Reject {
                        return Err(PageTableError::NotMapped(VirtAddr(va)));
                    }
                }
                DescriptorKind::Reserved => {
                    return Err(PageTableError::Corrupt {
                        va: VirtAddr(va),
                        level,
                        bits: desc.bits(),
                    })
                }
                DescriptorKind::Table(table) => {
                    let next = Self::below(level, va, desc)?;
                    if !pass.commit {
                        self.check_table(table)?;
                    }
                    self.modify_level(Node::Table(table), next, va, chunk_end, edit, pass)?;
                    if pass.commit && edit == Edit::Unmap {
                        let span = VaRange::between(entry_start, entry_end);
                        self.unlink_if_empty(entries, index, table, span, pass)?;
                    }
                }
                DescriptorKind::Leaf(base) => {
                    let new = Self::edited(desc, edit, VirtAddr(va))?;
                    if desc.is_young() {
                        pass.change.was_young = true;
                    }
                    let whole = va == entry_start && chunk_end == entry_end;
                    if new == desc {
                        // Nothing to change, and no reason to split.
                    } else if whole || edit == Edit::ClearYoung {
                        if pass.commit {
                            entries.store(index, new);
                            rewritten = Some((rewritten.map_or(entry_start, |r| r.0), entry_end));
                            pass.change.pages += size / PAGE_SIZE as u64;
                        }
                    } else {
                        let next = Self::below(level, va, desc)?;
                        if pass.commit {
                            let table =
                                self.split(entries, index, level, desc, base, entry_start, pass)?;
                            self.modify_level(Node::Table(table), next, va, chunk_end, edit, pass)?;
                        } else {
                            pass.tables_needed += 1;
                            let split = Node::Split {
                                block: desc,
                                base: base.as_u64(),
                            };
                            self.modify_level(split, next, va, chunk_end, edit, pass)?;
                        }
                    }
                }
            }
            va = chunk_end;
        }
        if let Some((first, end)) = rewritten {
            pass.change.record_leaf(VaRange::between(first, end), level);
        }
        Ok(())
    }

    /// [`modify_level`](Self::modify_level) inside one level-3 table: every entry is a whole
    /// page (nothing to split), so the loop edits the entries in place and records the
    /// rewritten run once.
    fn modify_pages(
        &self,
        words: &[AtomicU64; ENTRIES_PER_TABLE],
        start: u64,
        end: u64,
        edit: Edit,
        pass: &mut Pass<'_>,
    ) -> Result<(), PageTableError> {
        let words = self.pages_of(words, start, end);
        let mut rewritten: Option<(u64, u64)> = None;
        for (i, word) in words.iter().enumerate() {
            let va = start + i as u64 * PAGE_SIZE as u64;
            let desc = Descriptor::from_bits(word.load(Ordering::Relaxed));
            match desc.kind(Level::L3) {
                DescriptorKind::Leaf(_) => {}
                DescriptorKind::Invalid if pass.holes == Holes::Skip => continue,
                DescriptorKind::Invalid => return Err(PageTableError::NotMapped(VirtAddr(va))),
                DescriptorKind::Table(_) | DescriptorKind::Reserved => {
                    return Err(corrupt_page(va, desc))
                }
            }
            let new = Self::edited(desc, edit, VirtAddr(va))?;
            pass.change.was_young |= desc.is_young();
            if pass.commit && new != desc {
                word.store(new.bits(), Ordering::Release);
                rewritten = Some((rewritten.map_or(va, |r| r.0), va + PAGE_SIZE as u64));
                pass.change.pages += 1;
            }
        }
        if let Some((first, end)) = rewritten {
            pass.change
                .record_leaf(VaRange::between(first, end), Level::L3);
        }
        Ok(())
    }

    /// The leaf after `edit`, or why the edit is refused.
    fn edited(desc: Descriptor, edit: Edit, va: VirtAddr) -> Result<Descriptor, PageTableError> {
        match edit {
            Edit::Unmap => Ok(Descriptor::INVALID),
            Edit::ClearYoung => Ok(desc.with_young(false)),
            Edit::Protect(perms) => {
                if desc.permissions().user != perms.user {
                    return Err(PageTableError::OwnerChange(va));
                }
                let device = desc.attributes().map(|a| a.memory) == Some(MemoryType::Device);
                if device && perms.exec {
                    return Err(PageTableError::Attributes(
                        super::descriptor::AttributeError::ExecutableDevice,
                    ));
                }
                Ok(desc.with_permissions(perms))
            }
        }
    }

    /// Replaces the block at `entries[index]` by a table of next-level leaves with the same
    /// translation, by break-before-make (D8.16.1: changing the block size of a live
    /// translation requires it): invalid entry, TLB invalidation of the block, table entry.
    #[allow(clippy::too_many_arguments)]
    fn split(
        &self,
        entries: Entries<'_>,
        index: usize,
        level: Level,
        block: Descriptor,
        base: PhysAddr,
        entry_start: u64,
        pass: &mut Pass<'_>,
    ) -> Result<PhysAddr, PageTableError> {
        let next = Self::below(level, entry_start, block)?;
        let table = self.take_frame(pass)?;
        // The new table is not linked yet: nobody else can see these stores.
        match self.mem.words(table, ENTRIES_PER_TABLE) {
            Some(words) => {
                for (i, word) in words.iter().enumerate() {
                    let pa = PhysAddr(base.as_u64() + i as u64 * next.entry_size());
                    word.store(block.leaf_like(next, pa).bits(), Ordering::Relaxed);
                }
            }
            None => debug_assert!(false, "reserved frame {table:?} unreachable"),
        }
        let block_range = VaRange::between(entry_start, entry_start + level.entry_size());
        #[cfg(test)]
        let skip_break = self.knobs.skip_break;
        #[cfg(not(test))]
        let skip_break = false;
        if !skip_break {
            entries.store(index, Descriptor::INVALID);
        }
        if let Some(inv) = pass.inv.as_deref_mut() {
            inv.invalidate(&TlbInvalidation::leaf(block_range, level));
        }
        entries.store(index, Descriptor::table(table));
        pass.change.splits += 1;
        Ok(table)
    }

    /// After an unmap inside `table` (linked at `entries[index]`, translating `span`): unlinks
    /// it if it is now empty and queues it for freeing after the invalidation.
    fn unlink_if_empty(
        &self,
        entries: Entries<'_>,
        index: usize,
        table: PhysAddr,
        span: VaRange,
        pass: &mut Pass<'_>,
    ) -> Result<(), PageTableError> {
        #[cfg(test)]
        if self.knobs.keep_empty_tables {
            return Ok(());
        }
        let empty = if pass.vacant.covers(&span) {
            debug_assert!(
                walk::table_is_empty(&self.mem, table)?,
                "table {table:?} for {span:?} in the vacancy {:?} still maps something",
                pass.vacant
            );
            true
        } else {
            walk::table_is_empty(&self.mem, table)?
        };
        if !empty {
            return Ok(());
        }
        entries.store(index, Descriptor::INVALID);
        pass.change.freed.push(table);
        // The table held a leaf that this operation removed, so an invalidation exists; it
        // must now reach the walk caches too.
        if let Some(inv) = &mut pass.change.invalidation {
            inv.add_table_change();
        }
        Ok(())
    }

    fn stats_of(
        &self,
        table: PhysAddr,
        level: Level,
        base: u64,
        is_root: bool,
        stats: &mut TableStats,
    ) -> Result<(), PageTableError> {
        stats.tables += 1;
        let mut valid = 0;
        for index in 0..ENTRIES_PER_TABLE {
            let va = base + index as u64 * level.entry_size();
            let desc = self.load(table, index)?;
            match desc.kind(level) {
                DescriptorKind::Invalid => continue,
                DescriptorKind::Table(next) => {
                    let next_level = Self::below(level, va, desc)?;
                    self.stats_of(next, next_level, va, false, stats)?;
                }
                DescriptorKind::Leaf(_) if desc.attributes().is_some() => {
                    stats.leaves[level as usize] += 1;
                }
                DescriptorKind::Leaf(_) | DescriptorKind::Reserved => {
                    return Err(PageTableError::Corrupt {
                        va: VirtAddr(va),
                        level,
                        bits: desc.bits(),
                    })
                }
            }
            valid += 1;
        }
        if valid == 0 && !is_root {
            stats.empty_tables += 1;
        }
        Ok(())
    }

    /// Every table reachable from `table`, children before parents. Unreachable or corrupt
    /// parts are skipped: this runs on teardown, which must not fail.
    fn collect_tables(&self, table: PhysAddr, level: Level, out: &mut Vec<PhysAddr>) {
        if let Some(next_level) = level.next() {
            for index in 0..ENTRIES_PER_TABLE {
                if let Ok(desc) = self.load(table, index) {
                    if let DescriptorKind::Table(next) = desc.kind(level) {
                        self.collect_tables(next, next_level, out);
                    }
                }
            }
        }
        out.push(table);
    }
}

/// A level-3 entry that is neither invalid nor a page (the engine never writes one).
fn corrupt_page(va: u64, desc: Descriptor) -> PageTableError {
    PageTableError::Corrupt {
        va: VirtAddr(va),
        level: Level::L3,
        bits: desc.bits(),
    }
}

impl<M: PhysMemory, F: FrameAllocator> Drop for PageTable<M, F> {
    /// Frees the tables at once. Only correct for a table that is not live (never installed,
    /// or already flushed from every TLB); live tables go through [`PageTable::destroy`].
    fn drop(&mut self) {
        if self.destroyed {
            return;
        }
        let mut tables = Vec::new();
        self.collect_tables(self.root, Level::ROOT, &mut tables);
        for table in tables {
            self.frames.free(table);
        }
    }
}

#[cfg(test)]
mod freed_tables_tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// Past the inline three the list spills to the heap, in order; `append` keeps the order
    /// and empties its source.
    #[test]
    fn keeps_every_table_in_order_across_the_spill() {
        let frames = |r: core::ops::Range<u64>| r.map(|i| PhysAddr(i << 12)).collect::<Vec<_>>();
        for n in 0..8u64 {
            let mut list = FreedTables::default();
            for &t in &frames(0..n) {
                list.push(t);
            }
            assert_eq!(list.as_slice(), frames(0..n));
            assert_eq!((list.len(), list.is_empty()), (n as usize, n == 0));
            let mut more = FreedTables::default();
            for &t in &frames(100..100 + n) {
                more.push(t);
            }
            list.append(&mut more);
            let mut all = frames(0..n);
            all.extend(frames(100..100 + n));
            assert_eq!(list.as_slice(), all);
            assert!(more.is_empty() && more.as_slice().is_empty());
        }
    }
}
