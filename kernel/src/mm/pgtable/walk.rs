//! Read-only walks: lock-free translation of one address, and the leaves over a range.
//!
//! Readers load descriptors with Acquire; writers publish new tables with a Release store of
//! the table descriptor after filling them. A reader racing with a writer therefore sees, for
//! each entry, either the old or the new value, and never a table before its contents.

use core::sync::atomic::Ordering;

use super::descriptor::{Attributes, Descriptor, DescriptorKind, Level, ENTRIES_PER_TABLE};
use super::error::PageTableError;
use super::range::VaRange;
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::phys::PhysMemory;

/// The translation of one virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The physical address the virtual address translates to (page offset included).
    pub pa: PhysAddr,
    /// The level of the leaf: 1 = 1 GiB block, 2 = 2 MiB block, 3 = 4 KiB page.
    pub level: Level,
    /// Memory type and permissions.
    pub attributes: Attributes,
    /// The access flag.
    pub young: bool,
    /// nG clear: shared by all ASIDs.
    pub global: bool,
}

/// A leaf mapping, clipped to the range that was walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The part of the leaf inside the walked range.
    pub va: VaRange,
    /// The physical address of `va.start()`.
    pub pa: PhysAddr,
    /// The leaf's level (a part of a block has level 1 or 2).
    pub level: Level,
    /// Memory type and permissions.
    pub attributes: Attributes,
    /// The access flag.
    pub young: bool,
}

/// Loads entry `index` of the table at `table`, or `None` if it is not reachable.
pub(crate) fn load<M: PhysMemory + ?Sized>(
    mem: &M,
    table: PhysAddr,
    index: usize,
    order: Ordering,
) -> Option<Descriptor> {
    let word = mem.word(PhysAddr(table.as_u64() + 8 * index as u64))?;
    Some(Descriptor::from_bits(word.load(order)))
}

/// Translates `va` through the table rooted at `root`, safely against concurrent updates.
///
/// Returns `None` if `va` is not mapped, outside the lower 48-bit half, or if the walk meets
/// something this engine never writes (an unreachable table or a reserved encoding).
///
/// A software walker is a secondary TLB like any other: a table may be freed (and reused)
/// once the invalidation that follows its unlinking completes, so the owner's
/// [`Invalidate`](super::tlb::Invalidate) implementation must wait for walks in flight, as
/// `arch_invalidate_secondary_tlbs` waits for the SMMU. A walk that loses that race reads
/// stale words through `PhysMemory`, never freed Rust memory.
pub fn translate<M: PhysMemory + ?Sized>(
    mem: &M,
    root: PhysAddr,
    va: VirtAddr,
) -> Option<Translation> {
    if !super::descriptor::is_lower_half(va) {
        return None;
    }
    let mut table = root;
    let mut level = Level::ROOT;
    loop {
        let desc = load(mem, table, level.index(va.as_u64()), Ordering::Acquire)?;
        match desc.kind(level) {
            DescriptorKind::Table(next) => {
                table = next;
                level = level.next()?;
            }
            DescriptorKind::Leaf(base) => {
                let offset = va.as_u64() & (level.entry_size() - 1);
                return Some(Translation {
                    pa: PhysAddr(base.as_u64() + offset),
                    level,
                    attributes: desc.attributes()?,
                    young: desc.is_young(),
                    global: desc.is_global(),
                });
            }
            DescriptorKind::Invalid | DescriptorKind::Reserved => return None,
        }
    }
}

/// Calls `f` for every leaf inside `range`, in address order.
pub(crate) fn walk_leaves<M: PhysMemory + ?Sized>(
    mem: &M,
    table: PhysAddr,
    level: Level,
    range: VaRange,
    f: &mut dyn FnMut(Mapping),
) -> Result<(), PageTableError> {
    let size = level.entry_size();
    // One reachability check per table, not per entry (see PhysMemory::words).
    let entries = mem
        .words(table, ENTRIES_PER_TABLE)
        .ok_or(PageTableError::Unreachable(table))?;
    let mut va = range.start().as_u64();
    let end = range.end().as_u64();
    while va < end {
        let entry_start = va & !(size - 1);
        let chunk_end = end.min(entry_start + size);
        let desc = Descriptor::from_bits(entries[level.index(va)].load(Ordering::Acquire));
        match desc.kind(level) {
            DescriptorKind::Invalid => {}
            DescriptorKind::Table(next) => {
                let sub = VaRange::between(va, chunk_end);
                let next_level = level.next().ok_or(PageTableError::Corrupt {
                    va: VirtAddr(va),
                    level,
                    bits: desc.bits(),
                })?;
                walk_leaves(mem, next, next_level, sub, f)?;
            }
            DescriptorKind::Leaf(base) => {
                let attributes = desc.attributes().ok_or(PageTableError::Corrupt {
                    va: VirtAddr(va),
                    level,
                    bits: desc.bits(),
                })?;
                f(Mapping {
                    va: VaRange::between(va, chunk_end),
                    pa: PhysAddr(base.as_u64() + (va - entry_start)),
                    level,
                    attributes,
                    young: desc.is_young(),
                });
            }
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

/// Whether anything is mapped in `range` of the table rooted at `root`, reading at most
/// `budget` descriptors (each read takes one): `Some(true)` at the first leaf found,
/// `Some(false)` if there is none, `None` once the budget is spent or at something this engine
/// never writes (an unreachable table, a reserved encoding). An invalid entry skips its whole
/// subtree (512 GiB, 1 GiB or 2 MiB at once), so the cost follows the tables present, not the
/// pages. Lock-free, with the guarantees of [`translate`]: each entry is seen old or new.
pub fn maps_anything<M: PhysMemory + ?Sized>(
    mem: &M,
    root: PhysAddr,
    range: VaRange,
    budget: &mut u32,
) -> Option<bool> {
    if !super::descriptor::is_lower_half(VirtAddr(range.end().as_u64() - 1)) {
        return None;
    }
    any_leaf(mem, root, Level::ROOT, range, budget)
}

fn any_leaf<M: PhysMemory + ?Sized>(
    mem: &M,
    table: PhysAddr,
    level: Level,
    range: VaRange,
    budget: &mut u32,
) -> Option<bool> {
    let size = level.entry_size();
    let entries = mem.words(table, ENTRIES_PER_TABLE)?;
    let mut va = range.start().as_u64();
    let end = range.end().as_u64();
    while va < end {
        *budget = budget.checked_sub(1)?;
        let chunk_end = end.min((va & !(size - 1)) + size);
        let desc = Descriptor::from_bits(entries[level.index(va)].load(Ordering::Acquire));
        match desc.kind(level) {
            DescriptorKind::Invalid => {}
            DescriptorKind::Leaf(_) => return Some(true),
            DescriptorKind::Table(next) => {
                let sub = VaRange::between(va, chunk_end);
                if any_leaf(mem, next, level.next()?, sub, budget)? {
                    return Some(true);
                }
            }
            DescriptorKind::Reserved => return None,
        }
        va = chunk_end;
    }
    Some(false)
}

/// True if every entry of the table at `table` is invalid. For the table's writer only (the
/// caller holds the page-table lock): no entry changes during the scan.
///
/// An unmap that empties a table pays for a scan of all 512 entries, so it ORs them a block at
/// a time with plain loads, which compile to load pairs (an atomic load, test and branch per
/// entry cost twice as much). Plain loads are sound because nothing writes the table
/// concurrently: other CPUs and the SMMU only walk it (hardware access-flag and dirty updates
/// are off: TCR_EL1.HA/HD and CD.HA/HD stay 0).
pub(crate) fn table_is_empty<M: PhysMemory + ?Sized>(
    mem: &M,
    table: PhysAddr,
) -> Result<bool, PageTableError> {
    /// Pairs of entries OR-ed before each test: a table that is not empty usually shows it in
    /// the first block.
    const BLOCK: usize = 32;
    // One reachability check for the whole table (see PhysMemory::words).
    let words = mem
        .words(table, ENTRIES_PER_TABLE)
        .ok_or(PageTableError::Unreachable(table))?;
    // Read as 16-byte pairs (the table is page aligned): one load instruction per pair.
    let pairs = words.as_ptr().cast::<u128>();
    if !pairs.is_aligned() {
        return Err(PageTableError::Unreachable(table));
    }
    // SAFETY: the words are reachable while `mem` lives, `pairs` is aligned and covers exactly
    // them, and nobody writes them while this shared view exists (see above).
    let plain = unsafe { core::slice::from_raw_parts(pairs, ENTRIES_PER_TABLE / 2) };
    // Whole words, not just the valid bits: the engine writes every invalid entry as 0, and a
    // test of one bit lets the compiler narrow the loads to one 32-bit load per entry.
    let empty = plain
        .chunks_exact(BLOCK)
        .all(|block| block.iter().fold(0, |acc, &w| acc | w) == 0);
    Ok(empty)
}
