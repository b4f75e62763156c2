//! The reference model: what an address space should contain after a sequence of operations,
//! written from the documented semantics of `mm::aspace` (not from its code): regions that
//! split and never merge, which pages are mapped, what each anonymous page holds, and which
//! error each invalid call must return.

use std::collections::BTreeMap;

use shootdown::mm::aspace::{Backing, MmError, Region, USER_END, USER_START};
use shootdown::mm::pgtable::descriptor::{AttributeError, MemoryType, Permissions};
use shootdown::mm::{PhysAddr, VirtAddr};

pub const PAGE: u64 = 4096;

/// A set of page-aligned addresses, kept as disjoint, non-adjacent runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    runs: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Adds `[start, end)`.
    pub fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        let touching: Vec<(u64, u64)> = self
            .runs
            .range(..=end)
            .filter(|(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.runs.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.runs.insert(start, end);
    }

    /// Removes `[start, end)`.
    pub fn remove(&mut self, start: u64, end: u64) {
        let hit: Vec<(u64, u64)> = self.intersecting(start, end).collect();
        for (s, e) in hit {
            self.runs.remove(&s);
            if s < start {
                self.runs.insert(s, start);
            }
            if e > end {
                self.runs.insert(end, e);
            }
        }
    }

    /// True if `va` is in the set.
    pub fn contains(&self, va: u64) -> bool {
        self.runs
            .range(..=va)
            .next_back()
            .is_some_and(|(_, &e)| e > va)
    }

    /// True if all of `[start, end)` is in the set.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        self.runs
            .range(..=start)
            .next_back()
            .is_some_and(|(_, &e)| e >= end)
    }

    /// The runs intersecting `[start, end)` (whole, not clipped).
    pub fn intersecting(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let first = self
            .runs
            .range(..=start)
            .next_back()
            .map_or(start, |(&s, _)| s);
        self.runs
            .range(first..end)
            .map(|(&s, &e)| (s, e))
            .filter(move |&(s, e)| e > start && s < end)
    }

    /// The parts of `[start, end)` in the set.
    pub fn clipped(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.intersecting(start, end)
            .map(|(s, e)| (s.max(start), e.min(end)))
            .collect()
    }

    /// Bytes in the set.
    pub fn bytes(&self) -> u64 {
        self.runs.iter().map(|(s, e)| e - s).sum()
    }

    /// Every run.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs.iter().map(|(&s, &e)| (s, e))
    }
}

/// The expected state of one address space.
#[derive(Debug, Clone, Default)]
pub struct Reference {
    /// Regions by start.
    pub regions: BTreeMap<u64, Region>,
    /// Pages with a translation.
    pub mapped: RangeSet,
    /// Anonymous pages with a translation, and the value of their tag word.
    pub anon: BTreeMap<u64, u64>,
}

/// `check_range` of the documentation: zero length, alignment, overflow, user range, in that
/// order.
pub fn check_range(va: u64, len: u64) -> Result<(u64, u64), MmError> {
    if len == 0 {
        return Err(MmError::ZeroLength);
    }
    if va % PAGE != 0 {
        return Err(MmError::Misaligned(va));
    }
    if len % PAGE != 0 {
        return Err(MmError::Misaligned(len));
    }
    let end = va.checked_add(len).ok_or(MmError::Overflow {
        start: va,
        len: len as usize,
    })?;
    if va < USER_START || end > USER_END {
        return Err(MmError::OutOfRange {
            start: va,
            len: len as usize,
        });
    }
    Ok((va, end))
}

/// Whether stage 1 can express `perms` on `memory` (Arm ARM D8.4: no write- or execute-only
/// encoding in our regimes; device memory must not be executable).
pub fn validate(memory: MemoryType, perms: Permissions) -> Result<(), MmError> {
    if !perms.read {
        return Err(MmError::Attributes(AttributeError::NotReadable));
    }
    if perms.exec && memory == MemoryType::Device {
        return Err(MmError::Attributes(AttributeError::ExecutableDevice));
    }
    Ok(())
}

/// The memory type a region's pages are mapped with.
pub fn memory_of(backing: Backing) -> MemoryType {
    match backing {
        Backing::Anonymous => MemoryType::Normal,
        Backing::Physical(_, m) => m,
    }
}

/// The physical address of `va` in a physical region.
pub fn phys_of(r: &Region, va: u64) -> Option<u64> {
    match r.backing {
        Backing::Physical(pa, _) => Some(pa.as_u64() + (va - r.start.as_u64())),
        Backing::Anonymous => None,
    }
}

impl Reference {
    /// The region containing `va`.
    pub fn region_at(&self, va: u64) -> Option<&Region> {
        self.regions
            .range(..=va)
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| r.end.as_u64() > va)
    }

    /// The regions intersecting `[start, end)`, in order.
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = &Region> {
        let first = self.region_at(start).map_or(start, |r| r.start.as_u64());
        self.regions
            .range(first..end)
            .map(|(_, r)| r)
            .filter(move |r| r.end.as_u64() > start && r.start.as_u64() < end)
    }

    /// The regions covering `[start, end)` without a hole, or the first hole.
    pub fn covering(&self, start: u64, end: u64) -> Result<Vec<Region>, MmError> {
        let mut at = start;
        let mut out = Vec::new();
        for r in self.overlapping(start, end) {
            if r.start.as_u64() > at {
                return Err(MmError::NotMapped(VirtAddr(at)));
            }
            out.push(*r);
            at = r.end.as_u64();
        }
        if at < end {
            return Err(MmError::NotMapped(VirtAddr(at)));
        }
        Ok(out)
    }

    /// The lowest start for `len` bytes at or above `USER_START` that overlaps no region and
    /// leaves a guard page after every region below it.
    pub fn lowest_gap(&self, len: u64) -> Option<u64> {
        let mut at = USER_START;
        for r in self.regions.values() {
            if r.start.as_u64() >= at.checked_add(len)? {
                return Some(at);
            }
            at = at.max(r.end.as_u64().checked_add(PAGE)?);
        }
        (at.checked_add(len)? <= USER_END).then_some(at)
    }

    /// Splits the regions at `start` and `end`, then replaces every piece inside by `f(piece)`.
    pub fn split_out(&mut self, start: u64, end: u64, f: impl Fn(Region) -> Option<Region>) {
        let hit: Vec<Region> = self.overlapping(start, end).copied().collect();
        for r in hit {
            self.regions.remove(&r.start.as_u64());
            let piece = |s: u64, e: u64| Region {
                start: VirtAddr(s),
                end: VirtAddr(e),
                backing: match r.backing {
                    Backing::Physical(pa, m) => {
                        Backing::Physical(PhysAddr(pa.as_u64() + (s - r.start.as_u64())), m)
                    }
                    b => b,
                },
                ..r
            };
            if r.start.as_u64() < start {
                self.regions
                    .insert(r.start.as_u64(), piece(r.start.as_u64(), start));
            }
            if r.end.as_u64() > end {
                self.regions.insert(end, piece(end, r.end.as_u64()));
            }
            if let Some(n) = f(piece(r.start.as_u64().max(start), r.end.as_u64().min(end))) {
                self.regions.insert(n.start.as_u64(), n);
            }
        }
    }

    /// Maps every page of `[start, end)` that is not mapped (inside regions), as `populate`
    /// and a successful `mmap` do.
    pub fn fill(&mut self, start: u64, end: u64) {
        let pieces: Vec<Region> = self.overlapping(start, end).copied().collect();
        for r in pieces {
            let (s, e) = (r.start.as_u64().max(start), r.end.as_u64().min(end));
            if r.backing == Backing::Anonymous {
                let mut va = s;
                while va < e {
                    if !self.mapped.contains(va) {
                        self.anon.insert(va, 0);
                    }
                    va += PAGE;
                }
            }
            self.mapped.insert(s, e);
        }
    }

    /// Drops every translation in `[start, end)`; returns the number of pages dropped.
    pub fn unmap(&mut self, start: u64, end: u64) -> u64 {
        let pages = self
            .mapped
            .clipped(start, end)
            .iter()
            .map(|(s, e)| (e - s) / PAGE)
            .sum();
        self.mapped.remove(start, end);
        let gone: Vec<u64> = self.anon.range(start..end).map(|(&va, _)| va).collect();
        for va in gone {
            self.anon.remove(&va);
        }
        pages
    }

    /// The first page of `[start, end)` whose region is owned by the other exception level
    /// than `perms` says (`mprotect` must not move pages between EL0 and EL1).
    pub fn owner_change(pieces: &[Region], start: u64, perms: Permissions) -> Option<u64> {
        pieces
            .iter()
            .find(|r| r.perms.user != perms.user)
            .map(|r| r.start.as_u64().max(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_sets_merge_split_and_answer() {
        let mut s = RangeSet::default();
        s.insert(0x1000, 0x3000);
        s.insert(0x5000, 0x6000);
        s.insert(0x3000, 0x4000); // adjacent: merges
        assert_eq!(
            s.runs().collect::<Vec<_>>(),
            vec![(0x1000, 0x4000), (0x5000, 0x6000)]
        );
        s.remove(0x2000, 0x5800);
        assert_eq!(
            s.runs().collect::<Vec<_>>(),
            vec![(0x1000, 0x2000), (0x5800, 0x6000)]
        );
        assert!(s.contains(0x1fff) && !s.contains(0x2000) && s.contains(0x5800));
        assert!(s.covers(0x1000, 0x2000) && !s.covers(0x1000, 0x2001));
        assert_eq!(
            s.clipped(0x1800, 0x5900),
            vec![(0x1800, 0x2000), (0x5800, 0x5900)]
        );
        assert_eq!(s.bytes(), 0x1800);
    }

    #[test]
    fn range_checks_come_in_the_documented_order() {
        assert_eq!(check_range(0x1001, 0), Err(MmError::ZeroLength));
        assert_eq!(
            check_range(0x10_0001, 3),
            Err(MmError::Misaligned(0x10_0001))
        );
        assert_eq!(check_range(0x10_0000, 3), Err(MmError::Misaligned(3)));
        assert!(matches!(
            check_range(!0xfff, 0x2000),
            Err(MmError::Overflow { .. })
        ));
        assert!(matches!(
            check_range(0, 0x1000),
            Err(MmError::OutOfRange { .. })
        ));
        assert_eq!(
            check_range(USER_START, 0x1000),
            Ok((USER_START, USER_START + 0x1000))
        );
    }
}
