//! The model's walk cache: table descriptors (not leaves) remembered per (ASID, VMID, level,
//! input region), so a later walk may start below the root like hardware does.
//!
//! SMMUv3 §3.17 lets an SMMU cache intermediate walk entries, tagged like TLB entries; §4.4.1
//! (Leaf) says an invalidation by address with Leaf = 1 need only remove last-level entries, so
//! such an entry survives `TLBI_NH_VA{,A}` with Leaf = 1 and goes only with Leaf = 0 or a
//! by-ASID / by-VMID / all invalidation. A driver that frees a table and invalidates with
//! Leaf = 1 therefore leaves a pointer to the freed table here, and the next walk goes through
//! it — which the checker reports. QEMU caches no walk entries and cannot show this.

use alloc::collections::BTreeMap;

use super::walk::{Resume, TableStep};

/// The tag of a walk-cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalkTag {
    pub asid: u16,
    pub vmid: u16,
    /// The level of the table holding the descriptor.
    pub level: u8,
    /// The input address of the start of the region the descriptor covers.
    pub va_base: u64,
}

/// A cached table descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkEntry {
    pub step: TableStep,
    /// The table descriptors the walk read above `step`, by level (`None` above the start
    /// level): the entry leads where it did only while memory holds all of them, not just
    /// `step` (a table unlinked higher up leaves the descriptors below it intact).
    pub above: Path,
    /// When the entry was filled (the model's clock).
    pub born: u64,
}

/// Table descriptors read on a walk, by level (0 and 1: those above a level-2 descriptor).
pub type Path = [Option<TableStep>; 2];

/// `path` with `step` read after it.
pub fn extend(mut path: Path, step: TableStep) -> Path {
    if let Some(slot) = path.get_mut(usize::from(step.level)) {
        *slot = Some(step);
    }
    path
}

/// The walk cache.
#[derive(Debug, Clone)]
pub struct WalkCache {
    capacity: usize,
    entries: BTreeMap<WalkTag, WalkEntry>,
    /// Whole-cache flushes for lack of room.
    pub capacity_flushes: u64,
}

impl WalkCache {
    /// An empty walk cache of `capacity` entries (0: nothing is cached).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: BTreeMap::new(),
            capacity_flushes: 0,
        }
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The deepest cached descriptor on the walk of `va` for (`asid`, `vmid`), if any.
    pub fn lookup(&self, asid: u16, vmid: u16, va: u64) -> Option<WalkEntry> {
        (0..=2u8).rev().find_map(|level| {
            let span_log2 = 12 + 9 * (3 - u32::from(level));
            let tag = WalkTag {
                asid,
                vmid,
                level,
                va_base: va & !((1u64 << span_log2) - 1),
            };
            self.entries.get(&tag).copied()
        })
    }

    /// Caches `step`, read on a walk of `va` for (`asid`, `vmid`) after the descriptors
    /// `above`, at time `born`; when full, everything is dropped first (like QEMU's IOTLB, the
    /// simplest policy that never keeps an entry hardware could not).
    pub fn insert(
        &mut self,
        asid: u16,
        vmid: u16,
        va: u64,
        (above, step): (Path, TableStep),
        born: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        let tag = WalkTag {
            asid,
            vmid,
            level: step.level,
            va_base: va & !((1u64 << step.span_log2) - 1),
        };
        if !self.entries.contains_key(&tag) && self.entries.len() >= self.capacity {
            self.entries.clear();
            self.capacity_flushes += 1;
        }
        self.entries.insert(tag, WalkEntry { step, above, born });
    }

    /// Removes every entry filled before `cached_before` for which `matches` is true; returns
    /// how many.
    pub fn invalidate(
        &mut self,
        cached_before: u64,
        mut matches: impl FnMut(&WalkTag, &TableStep) -> bool,
    ) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|tag, e| !(e.born < cached_before && matches(tag, &e.step)));
        before - self.entries.len()
    }

    /// Every cached (tag, entry), in tag order.
    pub fn entries(&self) -> impl Iterator<Item = (WalkTag, WalkEntry)> + '_ {
        self.entries.iter().map(|(t, e)| (*t, *e))
    }
}

impl WalkEntry {
    /// Where a walk resumes from this entry.
    pub fn resume(&self) -> Resume {
        self.step.resume()
    }

    /// The descriptors a walk resumed from this entry has read.
    pub fn path(&self) -> Path {
        extend(self.above, self.step)
    }

    /// Every descriptor the entry depends on, root first.
    pub fn chain(&self) -> impl Iterator<Item = &TableStep> {
        self.above
            .iter()
            .flatten()
            .chain(core::iter::once(&self.step))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mm::PhysAddr;

    fn step(level: u8, next: u64) -> TableStep {
        TableStep {
            level,
            span_log2: (12 + 9 * (3 - u32::from(level))) as u8,
            slot: PhysAddr(0x4000_0000),
            desc: next | 3,
            next_table: next,
            read_only_below: false,
        }
    }

    #[test]
    fn lookup_returns_the_deepest_entry_of_the_asid() {
        let mut c = WalkCache::new(8);
        c.insert(1, 0, 0x1234_5000, ([None; 2], step(0, 0x1000)), 1);
        c.insert(1, 0, 0x1234_5000, ([None; 2], step(2, 0x3000)), 2);
        assert_eq!(
            c.lookup(1, 0, 0x1230_0000).map(|e| e.step.next_table),
            Some(0x3000)
        );
        // Outside the level-2 descriptor's 2 MiB, inside the level-0 one's 512 GiB.
        assert_eq!(
            c.lookup(1, 0, 0x4000_0000).map(|e| e.step.next_table),
            Some(0x1000)
        );
        assert!(c.lookup(2, 0, 0x1234_5000).is_none(), "other ASID");
        assert!(c.lookup(1, 1, 0x1234_5000).is_none(), "other VMID");
    }

    #[test]
    fn invalidation_spares_entries_filled_later_and_full_cache_flushes() {
        let mut c = WalkCache::new(2);
        c.insert(1, 0, 0, ([None; 2], step(1, 0x1000)), 5);
        c.insert(1, 0, 0, ([None; 2], step(2, 0x2000)), 9);
        assert_eq!(c.invalidate(6, |_, _| true), 1);
        assert_eq!(c.len(), 1);
        c.insert(1, 0, 1 << 30, ([None; 2], step(1, 0x3000)), 10);
        c.insert(1, 0, 2 << 30, ([None; 2], step(1, 0x4000)), 11);
        assert_eq!((c.len(), c.capacity_flushes), (1, 1));
    }
}
