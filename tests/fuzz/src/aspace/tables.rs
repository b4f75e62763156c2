//! An independent reader of the address space's translation tables (VMSAv8-64, 4 KiB granule,
//! four levels, 48-bit VA: Arm ARM D8.2-D8.3), written from the architecture rather than from
//! the engine: it lists every table frame and every leaf, so the oracles can compare the tables
//! with the reference model, account for every frame, and tell whether a failed operation left
//! the tables bit for bit as they were.

use crate::memory::FuzzMemory;

const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
const OA_MASK: u64 = 0x0000_ffff_ffff_f000;

/// Leaf descriptor fields (D8.3.2, D8.4).
pub mod bits {
    pub const ATTR_INDEX_SHIFT: u32 = 2;
    pub const ATTR_INDEX_MASK: u64 = 0b111 << ATTR_INDEX_SHIFT;
    pub const AP_EL0: u64 = 1 << 6;
    pub const AP_READ_ONLY: u64 = 1 << 7;
    pub const AF: u64 = 1 << 10;
    pub const NOT_GLOBAL: u64 = 1 << 11;
    pub const PXN: u64 = 1 << 53;
    pub const UXN: u64 = 1 << 54;
}

/// A block or page descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    pub va: u64,
    /// 4 KiB, 2 MiB or 1 GiB.
    pub size: u64,
    pub pa: u64,
    /// The whole descriptor.
    pub desc: u64,
}

/// Everything reachable from a root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    /// Table frames, root first.
    pub tables: Vec<u64>,
    /// Leaves in address order.
    pub leaves: Vec<Leaf>,
    /// Every valid descriptor, with the table and index it sits at (compares whole trees).
    pub descriptors: Vec<(u64, u16, u64)>,
}

/// Reads the tree at `root`. Fails on anything the engine must never write or link: a table
/// outside the arena or in a free frame (a use after free), a reserved encoding, a table
/// linked twice.
pub fn dump(mem: &FuzzMemory, root: u64) -> Result<Dump, String> {
    let mut d = Dump::default();
    walk(mem, root, 0, 0, &mut d)?;
    let mut sorted = d.tables.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err("a table frame is linked twice".into());
    }
    Ok(d)
}

fn walk(
    mem: &FuzzMemory,
    table: u64,
    level: u32,
    va_base: u64,
    d: &mut Dump,
) -> Result<(), String> {
    if !mem.is_allocated(shootdown::mm::PhysAddr(table)) {
        return Err(format!(
            "level-{level} table at {table:#x} is not an allocated frame"
        ));
    }
    d.tables.push(table);
    let shift = 12 + 9 * (3 - level);
    for i in 0..512u64 {
        let slot = table + 8 * i;
        let desc = mem
            .load(slot)
            .ok_or_else(|| format!("table slot {slot:#x} is unreachable"))?;
        if desc & VALID == 0 {
            continue;
        }
        d.descriptors.push((table, i as u16, desc));
        let va = va_base | i << shift;
        let is_table = desc & TABLE_OR_PAGE != 0;
        match (level, is_table) {
            (0..=2, true) => walk(mem, desc & OA_MASK, level + 1, va, d)?,
            (1 | 2, false) | (3, true) => {
                let size = 1u64 << shift;
                let pa = desc & OA_MASK;
                if pa & (size - 1) != 0 {
                    return Err(format!(
                        "leaf for {va:#x} has output address {pa:#x} not aligned to its {size:#x} size"
                    ));
                }
                d.leaves.push(Leaf { va, size, pa, desc });
            }
            _ => {
                return Err(format!(
                    "reserved descriptor {desc:#018x} at level {level} for {va:#x}"
                ))
            }
        }
    }
    Ok(())
}
