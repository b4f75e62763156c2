//! Differential property test of `modify`'s leaf-table shortcut: the same operations on two
//! tables in two identical arenas, one taking the shortcut where it applies and one forced down
//! the general path (`Knobs::general_path_only`), must give the same results, the same
//! [`Change`]s (changed range, invalidation, freed tables in order, splits, pages, `was_young`),
//! the same invalidation calls and the same memory, word for word. The ranges crowd the edges
//! the shortcut decides on: the last pages of a 2 MiB window, 1 GiB and 512 GiB boundaries, the
//! top of the address space and a `va_end` inside a table; the operations include vacancy
//! claims, protection errors, ageing, corrupt level-3 entries and unreachable tables.

use alloc::vec::Vec;

use proptest::prelude::*;

use super::descriptor::{Attributes, Descriptor, DescriptorKind, Level, MemoryType, Permissions};
use super::error::PageTableError;
use super::range::VaRange;
use super::table::{Blocks, Change, Config, Holes, Knobs};
use super::tests::{new_table, va, Checker, TestTable, G1, K4, M2};
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::fake::TestMemory;
use crate::mm::phys::PhysMemory;

/// Each test's operations stay in four 1 GiB units from a base: the bottom of the address
/// space, or its top (the last 512 GiB entry of the root).
const WINDOW: u64 = 4 * G1;
const TOP: u64 = 1 << 48;
const FRAMES: usize = 192;

#[derive(Clone, Copy, Debug)]
enum Op {
    Map {
        start: u64,
        len: u64,
        pa: u64,
        attrs: Attributes,
    },
    Unmap {
        start: u64,
        len: u64,
        holes: Holes,
    },
    /// Unmap claiming the widest vacancy the current mappings allow.
    UnmapVacant {
        start: u64,
        len: u64,
        holes: Holes,
    },
    Protect {
        start: u64,
        len: u64,
        perms: Permissions,
        holes: Holes,
    },
    ClearYoung {
        start: u64,
        len: u64,
    },
    SetYoung {
        at: u64,
    },
    /// Writes `bits` into the level-3 entry of `at`, if a level-3 table holds it.
    CorruptPage {
        at: u64,
        bits: u64,
    },
    /// Points the table descriptor at `level` (1 or 2) for `at` outside the arena.
    UnreachableTable {
        at: u64,
        level: u8,
    },
}

/// Offsets (from the window base) where a 2 MiB window of interest starts: the first, one
/// before and after a 1 GiB boundary, the last of the window.
const ANCHORS: [u64; 6] = [0, M2, G1 - M2, G1, 2 * G1 - M2, WINDOW - M2];

/// A page-aligned range near an anchor: mostly inside one 2 MiB window, with its last
/// pages favoured, sometimes across the window's end or a whole 2 MiB.
fn range() -> impl Strategy<Value = (u64, u64)> {
    let page = prop_oneof![3 => 0u64..512, 2 => 508u64..512, 1 => Just(0u64)];
    let pages = prop_oneof![4 => 1u64..4, 1 => 1u64..=513, 1 => Just(512u64)];
    (proptest::sample::select(&ANCHORS[..]), page, pages).prop_map(|(anchor, page, pages)| {
        let start = anchor + page * K4;
        (start, (pages * K4).min(WINDOW - start))
    })
}

fn perms() -> impl Strategy<Value = Permissions> {
    prop_oneof![
        3 => Just(Permissions::USER_RW),
        2 => Just(Permissions::USER_RO),
        2 => Just(Permissions::USER_RX),
        1 => Just(Permissions::KERNEL_RW),
        1 => Just(Permissions::KERNEL_RX),
    ]
}

fn attrs() -> impl Strategy<Value = Attributes> {
    let memory = prop_oneof![4 => Just(MemoryType::Normal), 1 => Just(MemoryType::Device)];
    (perms(), memory).prop_map(|(perms, memory)| Attributes {
        memory,
        perms: if memory == MemoryType::Device {
            Permissions {
                exec: false,
                ..perms
            }
        } else {
            perms
        },
    })
}

fn holes() -> impl Strategy<Value = Holes> {
    prop_oneof![Just(Holes::Reject), Just(Holes::Skip)]
}

fn op() -> impl Strategy<Value = Op> {
    // Whole 2 MiB windows at an anchor, so that blocks (and their splits) appear too.
    let block = (proptest::sample::select(&ANCHORS[..]), 1u64..3)
        .prop_map(|(a, n)| (a, (n * M2).min(WINDOW - a)));
    prop_oneof![
        6 => (prop_oneof![3 => range(), 1 => block], attrs())
            .prop_map(|((start, len), attrs)| Op::Map { start, len, pa: G1 + start % (8 * G1), attrs }),
        3 => (range(), holes()).prop_map(|((start, len), holes)| Op::Unmap { start, len, holes }),
        3 => (range(), holes()).prop_map(|((start, len), holes)| Op::UnmapVacant { start, len, holes }),
        3 => (range(), perms(), holes())
            .prop_map(|((start, len), perms, holes)| Op::Protect { start, len, perms, holes }),
        2 => range().prop_map(|(start, len)| Op::ClearYoung { start, len }),
        2 => range().prop_map(|(start, _)| Op::SetYoung { at: start }),
        1 => (range(), prop_oneof![Just(0b01u64), Just(0x4000_0000_1001), any::<u64>().prop_map(|b| b | 1)])
            .prop_map(|((at, _), bits)| Op::CorruptPage { at, bits }),
        1 => (range(), 1u8..3).prop_map(|((at, _), level)| Op::UnreachableTable { at, level }),
    ]
}

/// The address of the descriptor at `level` for `va`, if table descriptors lead there.
fn entry_at(mem: &TestMemory, root: PhysAddr, va: u64, level: Level) -> Option<PhysAddr> {
    let mut table = root;
    for l in [Level::L0, Level::L1, Level::L2, Level::L3] {
        let entry = PhysAddr(table.as_u64() + 8 * l.index(va) as u64);
        if l == level {
            return Some(entry);
        }
        let bits = mem.word(entry)?.load(core::sync::atomic::Ordering::Relaxed);
        match Descriptor::from_bits(bits).kind(l) {
            DescriptorKind::Table(next) => table = next,
            _ => return None,
        }
    }
    None
}

/// The widest range around `[start, end)` in which nothing outside it is mapped (the claim an
/// address space makes), clipped to the table's window.
fn vacancy(table: &TestTable<'_>, start: u64, end: u64) -> Result<VaRange, PageTableError> {
    let config = *table.config();
    let (lo, hi) = (config.va_start.as_u64(), config.va_end.as_u64());
    let (mut floor, mut ceiling) = (lo, hi);
    table.walk(VirtAddr(lo), (hi - lo) as usize, |m| {
        let (s, e) = (m.va.start().as_u64(), m.va.end().as_u64());
        if e <= start {
            floor = floor.max(e);
        } else if s >= end {
            ceiling = ceiling.min(s);
        } else {
            // A leaf cut by the range keeps its part outside.
            if s < start {
                floor = start;
            }
            if e > end {
                ceiling = end;
            }
        }
    })?;
    Ok(VaRange::between(floor, ceiling))
}

/// Every observable part of a [`Change`], comparable.
type ChangeView = (
    Option<VaRange>,
    Option<super::tlb::TlbInvalidation>,
    Vec<PhysAddr>,
    usize,
    bool,
    u64,
);

fn view(change: &Change) -> ChangeView {
    (
        change.changed_range(),
        change.invalidation().copied(),
        change.freed_tables().to_vec(),
        change.splits(),
        change.was_young(),
        change.pages(),
    )
}

/// Applies `op` (at `base`) to `table`; the changes are completed through `checker`.
fn apply(
    table: &mut TestTable<'_>,
    mem: &TestMemory,
    checker: &mut Checker<'_>,
    base: u64,
    op: Op,
) -> Result<Option<ChangeView>, PageTableError> {
    let change = match op {
        Op::Map {
            start,
            len,
            pa,
            attrs,
        } => table.map(va(base + start), PhysAddr(pa), len as usize, attrs)?,
        Op::Unmap { start, len, holes } => {
            table.unmap(va(base + start), len as usize, holes, checker)?
        }
        Op::UnmapVacant { start, len, holes } => {
            let (s, e) = (base + start, base + start + len);
            let vacant = if e <= table.config().va_end.as_u64() {
                vacancy(table, s, e)?
            } else {
                VaRange::between(s, e) // refused by the range check either way
            };
            table.unmap_in_vacancy(va(s), len as usize, holes, vacant, checker)?
        }
        Op::Protect {
            start,
            len,
            perms,
            holes,
        } => table.protect(va(base + start), len as usize, perms, holes, checker)?,
        Op::ClearYoung { start, len } => {
            table.clear_young(va(base + start), len as usize, checker)?
        }
        Op::SetYoung { at } => table.set_young(va(base + at))?,
        Op::CorruptPage { at, bits } => {
            if let Some(word) =
                entry_at(mem, table.root(), base + at, Level::L3).and_then(|e| mem.word(e))
            {
                word.store(bits, core::sync::atomic::Ordering::Relaxed);
            }
            return Ok(None);
        }
        Op::UnreachableTable { at, level } => {
            let level = if level == 1 { Level::L1 } else { Level::L2 };
            if let Some(word) =
                entry_at(mem, table.root(), base + at, level).and_then(|e| mem.word(e))
            {
                let bits = word.load(core::sync::atomic::Ordering::Relaxed);
                if let DescriptorKind::Table(_) = Descriptor::from_bits(bits).kind(level) {
                    let outside = Descriptor::table(PhysAddr(0x10_0000_0000)).bits();
                    word.store(outside, core::sync::atomic::Ordering::Relaxed);
                }
            }
            return Ok(None);
        }
    };
    let seen = view(&change);
    checker.complete(table, change);
    Ok(Some(seen))
}

/// The arena, word for word, with which frames are allocated.
fn arena(mem: &TestMemory) -> Vec<(bool, Vec<u64>)> {
    let range = mem.range();
    (range.start.as_u64()..range.end.as_u64())
        .step_by(K4 as usize)
        .map(|f| {
            let words = (0..K4 / 8)
                .map(|i| {
                    mem.word(PhysAddr(f + 8 * i))
                        .unwrap()
                        .load(core::sync::atomic::Ordering::Relaxed)
                })
                .collect();
            (mem.is_allocated(PhysAddr(f)), words)
        })
        .collect()
}

fn run(
    top: bool,
    tail_pages: u64,
    blocks: Blocks,
    knobs: Knobs,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let base = if top { TOP - WINDOW } else { 0 };
    let config = Config {
        va_start: VirtAddr(base),
        va_end: VirtAddr(base + WINDOW - tail_pages * K4),
        blocks,
        ..Config::USER
    };
    let (mem_fast, mem_general) = (TestMemory::new(FRAMES), TestMemory::new(FRAMES));
    let mut fast = new_table(&mem_fast, config);
    let mut general = new_table(&mem_general, config);
    fast.knobs = knobs;
    general.knobs = Knobs {
        general_path_only: true,
        ..knobs
    };
    let mut check_fast = Checker::new(&mem_fast, fast.root());
    let mut check_general = Checker::new(&mem_general, general.root());
    for (step, &op) in ops.iter().enumerate() {
        let got_fast = apply(&mut fast, &mem_fast, &mut check_fast, base, op);
        let got_general = apply(&mut general, &mem_general, &mut check_general, base, op);
        prop_assert_eq!(&got_fast, &got_general, "step {}: {:?}", step, op);
        prop_assert_eq!(
            check_fast.seen.len(),
            check_general.seen.len(),
            "step {}: invalidations",
            step
        );
        for (f, g) in check_fast.seen.iter().zip(&check_general.seen) {
            prop_assert_eq!(
                (f.inv, f.start_mapped, &f.already_freed),
                (g.inv, g.start_mapped, &g.already_freed),
                "step {}: {:?}",
                step,
                op
            );
        }
        prop_assert_eq!(check_fast.publishes, check_general.publishes);
        prop_assert!(
            arena(&mem_fast) == arena(&mem_general),
            "step {}: memory differs after {:?}",
            step,
            op
        );
        prop_assert_eq!(mem_fast.bad_frees(), mem_general.bad_frees());
    }
    Ok(())
}

fn knobs() -> impl Strategy<Value = Knobs> {
    prop_oneof![
        6 => Just(Knobs::default()),
        1 => Just(Knobs { keep_empty_tables: true, ..Knobs::default() }),
        1 => Just(Knobs { release_before_flush: true, ..Knobs::default() }),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn leaf_table_shortcut_matches_the_general_path(
        top in any::<bool>(),
        tail_pages in prop_oneof![3 => Just(0u64), 1 => 1u64..4],
        blocks in prop_oneof![Just(Blocks::Allowed), Just(Blocks::Forbidden)],
        knobs in knobs(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run(top, tail_pages, blocks, knobs, &ops)?;
    }
}
