//! The model's IOTLB: leaf translations tagged like hardware's, with a bounded capacity and a
//! selectable replacement policy.
//!
//! An entry is keyed by (ASID, VMID, VA of the page/block, size) — SMMUv3 §3.17 "TLB tagging"
//! — so a lookup tries each leaf size (4 KiB, 2 MiB, 1 GiB) like QEMU's
//! `smmu_iotlb_lookup()`. A global leaf (nG = 0, Arm ARM D8.4.3) is kept once, with no ASID,
//! and matches every ASID. Each entry remembers when it was filled (`born`, the model's clock)
//! so an invalidation removes only what was cached when the SMMU consumed it. Only successful walks are cached; translation and access-flag faults
//! never are, permission faults are (the entry is cached and the permission check fails
//! against it, which is why a permission *upgrade* needs an invalidation too).

use alloc::collections::BTreeMap;

use super::walk::Leaf;

/// What happens when the IOTLB is full and a new entry must go in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Replacement {
    /// Evict the least recently used entry.
    Lru,
    /// Evict the oldest inserted entry.
    Fifo,
    /// Drop everything (what QEMU does at `SMMU_IOTLB_MAX_SIZE` = 256 entries).
    FlushAll,
}

/// IOTLB settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IotlbConfig {
    /// Maximum number of entries (0: nothing is cached).
    pub capacity: usize,
    pub replacement: Replacement,
}

impl IotlbConfig {
    /// QEMU's IOTLB: 256 entries, flushed entirely when full.
    pub const QEMU: IotlbConfig = IotlbConfig {
        capacity: 256,
        replacement: Replacement::FlushAll,
    };
}

/// The tag of an IOTLB entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IotlbTag {
    /// 0 for a global entry.
    pub asid: u16,
    /// nG = 0: the entry matches every ASID.
    pub global: bool,
    pub vmid: u16,
    pub size_log2: u8,
    pub va_base: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    leaf: Leaf,
    stamp: u64,
    born: u64,
}

/// An IOTLB hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IotlbHit {
    pub tag: IotlbTag,
    pub leaf: Leaf,
    /// When the entry was filled (the model's clock).
    pub born: u64,
}

/// The IOTLB.
#[derive(Debug, Clone)]
pub struct Iotlb {
    cfg: IotlbConfig,
    entries: BTreeMap<IotlbTag, Slot>,
    /// Replacement order: stamp → tag (insertion time for FIFO, last use for LRU).
    order: BTreeMap<u64, IotlbTag>,
    next_stamp: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// Whole-IOTLB flushes caused by [`Replacement::FlushAll`].
    pub capacity_flushes: u64,
}

const LEAF_SIZES: [u8; 3] = [12, 21, 30];

impl Iotlb {
    /// An empty IOTLB.
    pub fn new(cfg: IotlbConfig) -> Self {
        Self {
            cfg,
            entries: BTreeMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
            evictions: 0,
            capacity_flushes: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> IotlbConfig {
        self.cfg
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    /// The cached leaf covering `va` for (`asid`, `vmid`), if any: an entry of that ASID or a
    /// global one.
    pub fn lookup(&mut self, asid: u16, vmid: u16, va: u64) -> Option<IotlbHit> {
        let candidates = LEAF_SIZES.into_iter().flat_map(|size_log2| {
            [(asid, false), (0, true)].map(|(asid, global)| IotlbTag {
                asid,
                global,
                vmid,
                size_log2,
                va_base: va & !((1u64 << size_log2) - 1),
            })
        });
        for tag in candidates {
            if let Some(slot) = self.entries.get(&tag).copied() {
                if self.cfg.replacement == Replacement::Lru {
                    let new = self.stamp();
                    self.order.remove(&slot.stamp);
                    self.order.insert(new, tag);
                    self.entries.insert(tag, Slot { stamp: new, ..slot });
                }
                return Some(IotlbHit {
                    tag,
                    leaf: slot.leaf,
                    born: slot.born,
                });
            }
        }
        None
    }

    /// Caches `leaf` for (`asid`, `vmid`) at time `born`, evicting by the replacement policy if
    /// full.
    pub fn insert(&mut self, asid: u16, vmid: u16, leaf: Leaf, born: u64) {
        if self.cfg.capacity == 0 {
            return;
        }
        let tag = IotlbTag {
            asid: if leaf.global { 0 } else { asid },
            global: leaf.global,
            vmid,
            size_log2: leaf.size_log2,
            va_base: leaf.va_base,
        };
        if let Some(old) = self.entries.remove(&tag) {
            self.order.remove(&old.stamp);
        }
        if self.entries.len() >= self.cfg.capacity {
            match self.cfg.replacement {
                Replacement::FlushAll => {
                    self.evictions += self.entries.len() as u64;
                    self.capacity_flushes += 1;
                    self.entries.clear();
                    self.order.clear();
                }
                Replacement::Lru | Replacement::Fifo => {
                    if let Some((_, victim)) = self.order.pop_first() {
                        self.entries.remove(&victim);
                        self.evictions += 1;
                    }
                }
            }
        }
        let stamp = self.stamp();
        self.order.insert(stamp, tag);
        self.entries.insert(tag, Slot { leaf, stamp, born });
    }

    /// Removes every entry filled before `cached_before` for which `matches` is true; returns
    /// how many.
    pub fn invalidate(
        &mut self,
        cached_before: u64,
        mut matches: impl FnMut(&IotlbTag, &Leaf) -> bool,
    ) -> usize {
        let before = self.entries.len();
        let order = &mut self.order;
        self.entries.retain(|tag, slot| {
            let hit = slot.born < cached_before && matches(tag, &slot.leaf);
            if hit {
                order.remove(&slot.stamp);
            }
            !hit
        });
        before - self.entries.len()
    }

    /// Every cached (tag, leaf), in tag order.
    pub fn entries(&self) -> impl Iterator<Item = (IotlbTag, Leaf)> + '_ {
        self.entries.iter().map(|(t, s)| (*t, s.leaf))
    }

    /// Every cached (tag, leaf, fill time).
    pub fn fills(&self) -> impl Iterator<Item = (IotlbTag, Leaf, u64)> + '_ {
        self.entries.iter().map(|(t, s)| (*t, s.leaf, s.born))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn page(va: u64) -> Leaf {
        Leaf {
            va_base: va,
            pa_base: va + 0x1000_0000,
            size_log2: 12,
            level: 3,
            writable: true,
            global: false,
        }
    }

    #[test]
    fn lookup_finds_pages_and_blocks_by_tag() {
        let mut t = Iotlb::new(IotlbConfig {
            capacity: 8,
            replacement: Replacement::Lru,
        });
        t.insert(1, 0, page(0x5000), 1);
        let block = Leaf {
            va_base: 0x20_0000,
            pa_base: 0x4000_0000,
            size_log2: 21,
            level: 2,
            writable: false,
            global: false,
        };
        t.insert(1, 0, block, 2);
        assert_eq!(t.lookup(1, 0, 0x5abc).map(|h| h.leaf), Some(page(0x5000)));
        assert_eq!(t.lookup(1, 0, 0x2f_ffff).map(|h| h.leaf), Some(block));
        assert!(t.lookup(2, 0, 0x5000).is_none(), "other ASID");
        assert!(t.lookup(1, 1, 0x5000).is_none(), "other VMID");
        assert!(t.lookup(1, 0, 0x6000).is_none());
        assert_eq!(t.invalidate(u64::MAX, |tag, _| tag.size_log2 == 21), 1);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn global_entries_match_every_asid_and_invalidation_spares_younger_entries() {
        let mut t = Iotlb::new(IotlbConfig {
            capacity: 8,
            replacement: Replacement::Lru,
        });
        let global = Leaf {
            global: true,
            ..page(0x7000)
        };
        t.insert(1, 0, global, 3);
        let hit = t
            .lookup(2, 0, 0x7abc)
            .expect("another ASID hits a global entry");
        assert!(hit.tag.global && hit.born == 3);
        assert!(t.lookup(2, 1, 0x7000).is_none(), "but not another VMID");
        t.insert(1, 0, page(0x8000), 9);
        assert_eq!(
            t.invalidate(5, |_, _| true),
            1,
            "only the entry born before 5"
        );
        assert!(t.lookup(1, 0, 0x8000).is_some());
    }

    #[test]
    fn lru_and_fifo_evict_differently() {
        for (policy, survivor) in [(Replacement::Lru, 0x1000), (Replacement::Fifo, 0x2000)] {
            let mut t = Iotlb::new(IotlbConfig {
                capacity: 2,
                replacement: policy,
            });
            t.insert(1, 0, page(0x1000), 0);
            t.insert(1, 0, page(0x2000), 0);
            t.lookup(1, 0, 0x1000); // refreshes 0x1000 under LRU only
            t.insert(1, 0, page(0x3000), 0);
            assert_eq!(t.len(), 2);
            assert!(t.lookup(1, 0, survivor).is_some(), "{policy:?}");
            assert!(t.lookup(1, 0, 0x3000).is_some());
            assert_eq!(t.evictions, 1);
        }
    }

    #[test]
    fn flush_all_mimics_qemu() {
        let mut t = Iotlb::new(IotlbConfig {
            capacity: 3,
            replacement: Replacement::FlushAll,
        });
        for i in 1..=3 {
            t.insert(1, 0, page(i << 12), 0);
        }
        t.insert(1, 0, page(4 << 12), 0);
        assert_eq!(t.len(), 1);
        assert_eq!(t.capacity_flushes, 1);
        assert_eq!(t.evictions, 3);
    }

    #[test]
    fn zero_capacity_caches_nothing_and_reinsert_replaces() {
        let mut t = Iotlb::new(IotlbConfig {
            capacity: 0,
            replacement: Replacement::Lru,
        });
        t.insert(1, 0, page(0x1000), 0);
        assert!(t.is_empty());
        let mut t = Iotlb::new(IotlbConfig {
            capacity: 1,
            replacement: Replacement::Fifo,
        });
        t.insert(1, 0, page(0x1000), 0);
        t.insert(
            1,
            0,
            Leaf {
                writable: false,
                ..page(0x1000)
            },
            0,
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t.evictions, 0);
        assert!(!t.lookup(1, 0, 0x1000).unwrap().leaf.writable);
    }
}
