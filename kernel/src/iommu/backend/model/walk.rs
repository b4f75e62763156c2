//! The model's stage-1 table walker: VMSAv8-64, 4 KiB granule, AArch64 descriptors.
//!
//! Source: Arm ARM (DDI 0487) D8.1-D8.4 (translation table walks, descriptor formats, start
//! level from TxSZ, access flag, `AP[2]` and APTable) and SMMUv3 §3.4 (input/output address
//! sizes). As in QEMU's `smmu_ptw_64_s1()`, every transaction is treated as privileged: only
//! `AP[2]` (read-only) and `APTable[1]` (read-only below, unless CD.HAD0) restrict writes, and
//! `AP[1]`/UXN/PXN are ignored. Unlike QEMU, nG is honoured (a global leaf matches every ASID,
//! Arm ARM D8.4.3), and a walk can resume from a cached table descriptor
//! ([`super::walkcache`]); every table descriptor it reads is reported as a [`TableStep`] so the
//! model can cache it.
//!
//! This walker is written independently of the kernel's page-table engine on purpose: it is the
//! reference the coherence checker compares cached translations against.

use crate::iommu::spec::cd::{CdGranule, Stage1Config};
use crate::iommu::physmem;
use crate::mm::phys::PhysMemory;
use crate::mm::PhysAddr;
use crate::sync::atomic::Ordering;

// Descriptor fields (Arm ARM D8.3.1, D8.3.2).
const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
const AP_RO: u64 = 1 << 7;
const AF: u64 = 1 << 10;
const NOT_GLOBAL: u64 = 1 << 11;
const APTABLE_RO: u64 = 1 << 62;
const OA_MASK: u64 = 0x0000_ffff_ffff_f000;

/// A leaf translation: what the walk found and what the IOTLB caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Leaf {
    /// The input address of the start of the page or block.
    pub va_base: u64,
    /// The output address of the start of the page or block.
    pub pa_base: u64,
    /// log2 of the page/block size (12, 21 or 30).
    pub size_log2: u8,
    /// The walk level the leaf was found at (1, 2 or 3).
    pub level: u8,
    /// Writes allowed (`AP[2]` = 0 and no `APTable[1]` above).
    pub writable: bool,
    /// nG = 0: the translation is shared by every ASID.
    pub global: bool,
}

impl Leaf {
    /// The output address for `va` (which must lie in this leaf).
    pub fn output(&self, va: u64) -> PhysAddr {
        PhysAddr(self.pa_base | (va & ((1 << self.size_log2) - 1)))
    }

    /// True if `va` lies in this leaf.
    pub fn contains(&self, va: u64) -> bool {
        va >> self.size_log2 == self.va_base >> self.size_log2
    }
}

/// Why a walk failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalkFault {
    /// F_TRANSLATION: invalid or reserved descriptor, input out of range, walks disabled.
    Translation { level: u8 },
    /// F_ACCESS: AF = 0 and CD.AFFD = 0.
    AccessFlag { level: u8 },
    /// F_ADDR_SIZE: a table or output address beyond the output size.
    AddressSize { level: u8 },
    /// F_WALK_EABT: a descriptor fetch could not be performed.
    External { level: u8, pa: PhysAddr },
}

/// The start level of a 4 KiB-granule walk for a `64 - t0sz`-bit input (Arm ARM D8.2.6).
fn start_level(t0sz: u8) -> u8 {
    let ia_bits = 64 - u32::from(t0sz);
    // Each level resolves 9 bits above the 12-bit page offset.
    (4 - (ia_bits - 12).div_ceil(9)) as u8
}

/// A table descriptor a walk went through: what a walk cache may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TableStep {
    /// The level of the table the descriptor sits in (0, 1 or 2).
    pub level: u8,
    /// log2 of the input region the descriptor covers (39, 30 or 21).
    pub span_log2: u8,
    /// Where the descriptor is.
    pub slot: PhysAddr,
    /// The descriptor as read.
    pub desc: u64,
    /// The next-level table it points to.
    pub next_table: u64,
    /// `APTable[1]` (and every one above it) made the region read-only.
    pub read_only_below: bool,
}

/// Where a walk resumes when a table descriptor came from a walk cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The level of `table`.
    pub level: u8,
    pub table: u64,
    pub read_only_below: bool,
}

impl TableStep {
    /// The resume point this descriptor gives.
    pub fn resume(&self) -> Resume {
        Resume {
            level: self.level + 1,
            table: self.next_table,
            read_only_below: self.read_only_below,
        }
    }
}

/// Walks the TTB0 tables of `cfg` for `va`.
pub fn walk(mem: &dyn PhysMemory, cfg: &Stage1Config, va: u64) -> Result<Leaf, WalkFault> {
    walk_from(mem, cfg, va, None, &mut |_| {})
}

/// Walks the TTB0 tables of `cfg` for `va`, starting at `resume` if given, and reports each
/// table descriptor read to `step`.
pub fn walk_from(
    mem: &dyn PhysMemory,
    cfg: &Stage1Config,
    va: u64,
    resume: Option<Resume>,
    step: &mut dyn FnMut(TableStep),
) -> Result<Leaf, WalkFault> {
    let ia_bits = 64 - u32::from(cfg.t0sz);
    // The TTB0 region is [0, 2^ia_bits); with TBI the top byte is ignored. Anything else
    // belongs to the TTB1 region, which the driver always disables (EPD1 = 1).
    let checked = if cfg.tbi0 { va & ((1 << 56) - 1) } else { va };
    if checked >> ia_bits != 0 {
        return Err(WalkFault::Translation { level: 0 });
    }
    let Some(ttb0) = cfg.ttb0 else {
        return Err(WalkFault::Translation { level: 0 });
    };
    if cfg.granule != CdGranule::K4 {
        // The model implements the 4 KiB granule only (SMMU_IDR5.GRAN4K).
        return Err(WalkFault::Translation { level: 0 });
    }
    let first = start_level(cfg.t0sz);
    let (from, mut table, mut read_only_below) = match resume {
        Some(r) if r.level > first && r.level <= 3 => (r.level, r.table, r.read_only_below),
        _ => (first, ttb0.as_u64() & OA_MASK, false),
    };
    for level in from..=3 {
        let shift = 12 + 9 * u32::from(3 - level);
        let bits = if level == first { ia_bits - shift } else { 9 };
        let index = (checked >> shift) & ((1 << bits) - 1);
        let slot = PhysAddr(table + 8 * index);
        let desc = physmem::load(mem, slot, Ordering::Acquire)
            .map_err(|_| WalkFault::External { level, pa: slot })?;
        if desc & VALID == 0 {
            return Err(WalkFault::Translation { level });
        }
        let is_table = desc & TABLE_OR_PAGE != 0;
        if level < 3 && is_table {
            let next = desc & OA_MASK;
            if next >> cfg.oas_bits != 0 {
                return Err(WalkFault::AddressSize { level });
            }
            if desc & APTABLE_RO != 0 && !cfg.had0 {
                read_only_below = true;
            }
            step(TableStep {
                level,
                span_log2: shift as u8,
                slot,
                desc,
                next_table: next,
                read_only_below,
            });
            table = next;
            continue;
        }
        // A block at level 0, or bit 1 clear at level 3, is reserved with 4 KiB granules.
        if level == 0 || (level == 3 && !is_table) {
            return Err(WalkFault::Translation { level });
        }
        let size_log2 = shift as u8;
        let pa_base = desc & OA_MASK & !((1u64 << shift) - 1);
        if pa_base >> cfg.oas_bits != 0 {
            return Err(WalkFault::AddressSize { level });
        }
        if desc & AF == 0 && !cfg.affd {
            return Err(WalkFault::AccessFlag { level });
        }
        return Ok(Leaf {
            va_base: va & !((1u64 << shift) - 1),
            pa_base,
            size_log2,
            level,
            writable: desc & AP_RO == 0 && !read_only_below,
            global: desc & NOT_GLOBAL == 0,
        });
    }
    unreachable!("the loop returns at level 3")
}

#[cfg(all(test, not(loom)))]
mod tests {
    use alloc::vec::Vec;

    use super::*;
    use crate::iommu::spec::cd::CdFields;
    use crate::iommu::fake::{LeafAttrs, PhysArena, TestPageTables};
    use crate::mm::VirtAddr;

    fn cfg(root: PhysAddr, va_bits: u8) -> Stage1Config {
        CdFields::sva(1, root, va_bits, 4, 0)
            .unwrap()
            .validate(44)
            .unwrap()
    }

    #[test]
    fn start_levels() {
        assert_eq!(start_level(16), 0); // 48-bit
        assert_eq!(start_level(25), 1); // 39-bit
        assert_eq!(start_level(24), 0); // 40-bit
        assert_eq!(start_level(34), 2); // 30-bit
        assert_eq!(start_level(39), 2); // 25-bit
    }

    #[test]
    fn walks_pages_blocks_and_faults() {
        let mem = PhysArena::new(PhysAddr(0x4000_0000), 32).unwrap();
        let t = TestPageTables::new(&mem).unwrap();
        let c = cfg(t.root(), 48);
        t.map(VirtAddr(0x1234_5000), PhysAddr(0x4001_0000), LeafAttrs::RW)
            .unwrap();
        let leaf = walk(&mem, &c, 0x1234_5abc).unwrap();
        assert_eq!(leaf.output(0x1234_5abc), PhysAddr(0x4001_0abc));
        assert_eq!((leaf.level, leaf.size_log2, leaf.writable), (3, 12, true));
        assert!(leaf.contains(0x1234_5fff) && !leaf.contains(0x1234_6000));

        t.map_block_2m(VirtAddr(0x4000_0000), PhysAddr(0x8000_0000), LeafAttrs::RO)
            .unwrap();
        let leaf = walk(&mem, &c, 0x4012_3456).unwrap();
        assert_eq!(leaf.output(0x4012_3456), PhysAddr(0x8012_3456));
        assert_eq!((leaf.level, leaf.size_log2, leaf.writable), (2, 21, false));

        assert_eq!(
            walk(&mem, &c, 0x1234_6000),
            Err(WalkFault::Translation { level: 3 })
        );
        assert_eq!(
            walk(&mem, &c, 0x40_0000_0000),
            Err(WalkFault::Translation { level: 1 })
        );
        assert_eq!(
            walk(&mem, &c, 1 << 48),
            Err(WalkFault::Translation { level: 0 })
        );
        t.set_accessed(VirtAddr(0x1234_5000), false).unwrap();
        assert_eq!(
            walk(&mem, &c, 0x1234_5000),
            Err(WalkFault::AccessFlag { level: 3 })
        );
        let affd = Stage1Config { affd: true, ..c };
        assert!(walk(&mem, &affd, 0x1234_5000).is_ok());
        let disabled = Stage1Config { ttb0: None, ..c };
        assert_eq!(
            walk(&mem, &disabled, 0x1234_5000),
            Err(WalkFault::Translation { level: 0 })
        );
    }

    #[test]
    fn a_resumed_walk_reports_its_tables_and_ng() {
        let mem = PhysArena::new(PhysAddr(0x4000_0000), 32).unwrap();
        let t = TestPageTables::new(&mem).unwrap();
        let c = cfg(t.root(), 48);
        t.map(VirtAddr(0x1234_5000), PhysAddr(0x4001_0000), LeafAttrs::RW)
            .unwrap();
        let global = LeafAttrs {
            global: true,
            ..LeafAttrs::RW
        };
        t.map(VirtAddr(0x1234_6000), PhysAddr(0x4002_0000), global)
            .unwrap();
        let mut steps = Vec::new();
        let leaf = walk_from(&mem, &c, 0x1234_5000, None, &mut |s| steps.push(s)).unwrap();
        assert!(!leaf.global);
        assert_eq!(
            steps
                .iter()
                .map(|s| (s.level, s.span_log2))
                .collect::<Vec<_>>(),
            [(0, 39), (1, 30), (2, 21)]
        );
        // From the cached level-2 descriptor: only the level-3 read is left, same result.
        let mut more = Vec::new();
        let resumed = walk_from(&mem, &c, 0x1234_6000, Some(steps[2].resume()), &mut |s| {
            more.push(s)
        })
        .unwrap();
        assert!(more.is_empty());
        assert_eq!(resumed, walk(&mem, &c, 0x1234_6000).unwrap());
        assert!(resumed.global);
    }

    #[test]
    fn address_size_and_external_faults() {
        let mem = PhysArena::new(PhysAddr(0x4000_0000), 32).unwrap();
        let t = TestPageTables::new(&mem).unwrap();
        let c = cfg(t.root(), 48);
        // Output beyond the 44-bit OAS.
        t.map(VirtAddr(0x1000), PhysAddr(1 << 45), LeafAttrs::RW)
            .unwrap();
        assert_eq!(
            walk(&mem, &c, 0x1000),
            Err(WalkFault::AddressSize { level: 3 })
        );
        // A table pointer to memory that does not exist.
        let bogus = Stage1Config {
            ttb0: Some(PhysAddr(0x1000_0000)),
            ..c
        };
        assert!(matches!(
            walk(&mem, &bogus, 0x1000),
            Err(WalkFault::External { level: 0, .. })
        ));
    }

    #[test]
    fn aptable_makes_everything_below_read_only_unless_had() {
        let mem = PhysArena::new(PhysAddr(0x4000_0000), 32).unwrap();
        let t = TestPageTables::new(&mem).unwrap();
        t.map(VirtAddr(0x1000), PhysAddr(0x4001_0000), LeafAttrs::RW)
            .unwrap();
        let c = cfg(t.root(), 48);
        let slot = t.root();
        let d = physmem::load(&mem, slot, Ordering::Acquire).unwrap();
        physmem::store(&mem, slot, d | APTABLE_RO, Ordering::Release).unwrap();
        assert!(!walk(&mem, &c, 0x1000).unwrap().writable);
        let had = Stage1Config { had0: true, ..c };
        assert!(walk(&mem, &had, 0x1000).unwrap().writable);
    }

    #[test]
    fn smaller_input_ranges_start_lower() {
        // A 39-bit space starts at level 1: build the level-1 table by hand.
        let mem = PhysArena::new(PhysAddr(0x4000_0000), 8).unwrap();
        let l1 = PhysAddr(0x4000_0000);
        let l2 = PhysAddr(0x4000_1000);
        physmem::store(
            &mem,
            PhysAddr(l1.as_u64() + 8),
            l2.as_u64() | 3,
            Ordering::Release,
        )
        .unwrap();
        physmem::store(&mem, l2, 0x4020_0000 | 1 | AF, Ordering::Release).unwrap();
        let c = cfg(l1, 39);
        let leaf = walk(&mem, &c, 0x4000_1234).unwrap();
        assert_eq!(leaf.output(0x4000_1234), PhysAddr(0x4020_1234));
        assert_eq!(
            walk(&mem, &c, 1 << 39),
            Err(WalkFault::Translation { level: 0 })
        );
    }
}
