//! Property tests: random map/unmap/protect sequences against a reference model.
//!
//! The model is a plain list of non-overlapping segments (VA range → PA, attributes), with no
//! notion of levels or blocks. After every operation the engine must agree with it on:
//! - the result (the same error, or success; out of frames only when a budget was set);
//! - every translation (all leaves, merged into maximal segments, equal the model's), plus
//!   point queries at segment edges;
//! - its shape: no empty table, no leaked frame, no bad free;
//! - the TLB record: the exact changed range; splits done by break-before-make; tables freed
//!   only after the final invalidation;
//! - and a failed operation leaves the table bit-for-bit unchanged.
//!
//! `PROPTEST_CASES=<n>` (proptest's own variable, as for every property test here) runs more
//! cases than the default 64.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::descriptor::{AttributeError, Attributes, MemoryType, Permissions};
use super::error::PageTableError;
use super::range::VaRange;
use super::table::{Blocks, Config, Holes, Knobs};
use super::tests::{new_table, snapshot, va, Checker, TestTable, G1, K4, M2};
use super::walk::maps_anything;
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::fake::TestMemory;

/// Operations stay inside [0, WINDOW): four 1 GiB regions, enough for every block size.
const WINDOW: u64 = 4 * G1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seg {
    start: u64,
    end: u64,
    pa: u64,
    attrs: Attributes,
}

impl Seg {
    /// The part of the segment inside `[start, end)`.
    fn clip(&self, start: u64, end: u64) -> Seg {
        let s = self.start.max(start);
        Seg {
            start: s,
            end: self.end.min(end),
            pa: self.pa + (s - self.start),
            attrs: self.attrs,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Model {
    segs: BTreeMap<u64, Seg>,
}

impl Model {
    fn overlapping(&self, start: u64, end: u64) -> Vec<Seg> {
        self.segs
            .values()
            .filter(|s| s.start < end && start < s.end)
            .copied()
            .collect()
    }

    fn lookup(&self, va: u64) -> Option<(u64, Attributes)> {
        let (_, seg) = self.segs.range(..=va).next_back()?;
        (va < seg.end).then(|| (seg.pa + (va - seg.start), seg.attrs))
    }

    fn map(
        &mut self,
        start: u64,
        end: u64,
        pa: u64,
        attrs: Attributes,
    ) -> Result<(), PageTableError> {
        attrs.validate()?;
        if let Some(first) = self.overlapping(start, end).first() {
            return Err(PageTableError::AlreadyMapped(VirtAddr(
                first.start.max(start),
            )));
        }
        self.segs.insert(
            start,
            Seg {
                start,
                end,
                pa,
                attrs,
            },
        );
        Ok(())
    }

    /// The first error a walk of `[start, end)` in address order meets.
    fn check_modify(
        &self,
        start: u64,
        end: u64,
        holes: Holes,
        perms: Option<Permissions>,
    ) -> Result<(), PageTableError> {
        let mut cursor = start;
        for seg in self.overlapping(start, end) {
            if holes == Holes::Reject && seg.start > cursor {
                return Err(PageTableError::NotMapped(VirtAddr(cursor)));
            }
            if let Some(p) = perms {
                let at = VirtAddr(seg.start.max(start));
                if seg.attrs.perms.user != p.user {
                    return Err(PageTableError::OwnerChange(at));
                }
                if seg.attrs.memory == MemoryType::Device && p.exec {
                    return Err(PageTableError::Attributes(AttributeError::ExecutableDevice));
                }
            }
            cursor = seg.end;
        }
        if holes == Holes::Reject && cursor < end {
            return Err(PageTableError::NotMapped(VirtAddr(cursor)));
        }
        Ok(())
    }

    /// Replaces the part of every segment inside `[start, end)` by `f(part)`. Returns the hull
    /// of the parts `f` changed.
    fn carve(
        &mut self,
        start: u64,
        end: u64,
        f: impl Fn(Seg) -> Option<Seg>,
    ) -> Option<(u64, u64)> {
        let mut hull: Option<(u64, u64)> = None;
        for seg in self.overlapping(start, end) {
            self.segs.remove(&seg.start);
            if seg.start < start {
                self.segs.insert(seg.start, Seg { end: start, ..seg });
            }
            if end < seg.end {
                self.segs.insert(end, seg.clip(end, seg.end));
            }
            let middle = seg.clip(start, end);
            let replaced = f(middle);
            if replaced != Some(middle) {
                hull = Some(hull.map_or((middle.start, middle.end), |(s, _)| (s, middle.end)));
            }
            if let Some(new) = replaced {
                self.segs.insert(new.start, new);
            }
        }
        hull
    }

    /// Segments with adjacent, physically contiguous, equal-attribute neighbours merged.
    fn normalized(segs: impl IntoIterator<Item = Seg>) -> Vec<Seg> {
        let mut out: Vec<Seg> = Vec::new();
        for seg in segs {
            match out.last_mut() {
                Some(last)
                    if last.end == seg.start
                        && last.pa + (last.end - last.start) == seg.pa
                        && last.attrs == seg.attrs =>
                {
                    last.end = seg.end
                }
                _ => out.push(seg),
            }
        }
        out
    }
}

#[derive(Clone, Debug)]
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
    Protect {
        start: u64,
        len: u64,
        perms: Permissions,
        holes: Holes,
    },
}

fn perms() -> impl Strategy<Value = Permissions> {
    prop_oneof![
        4 => Just(Permissions::USER_RW),
        3 => Just(Permissions::USER_RO),
        2 => Just(Permissions::USER_RX),
        1 => Just(Permissions::KERNEL_RW),
    ]
}

fn attrs() -> impl Strategy<Value = Attributes> {
    (perms(), prop_oneof![6 => Just(MemoryType::Normal), 1 => Just(MemoryType::NormalNonCacheable), 1 => Just(MemoryType::Device)])
        .prop_map(|(perms, memory)| Attributes { memory, perms })
}

/// A page-aligned range in the window, sized and aligned to a random unit so that blocks
/// appear, plus a page-sized jitter so that some ranges cut blocks.
fn range(max_unit: u64) -> impl Strategy<Value = (u64, u64)> {
    let units: Vec<u64> = [K4, M2, G1]
        .into_iter()
        .filter(|&u| u <= max_unit)
        .collect();
    (
        proptest::sample::select(units),
        0u64..4,
        1u64..4,
        any::<bool>(),
        0u64..4,
    )
        .prop_map(|(unit, index, count, jitter, jitter_pages)| {
            let mut start = (index * unit) % WINDOW;
            let mut len = count * unit;
            if jitter && unit > K4 {
                start += jitter_pages * K4 * 37 % unit;
                len -= (jitter_pages * K4 * 11 % unit).min(len - K4);
            }
            (start, len.min(WINDOW - start))
        })
}

fn holes() -> impl Strategy<Value = Holes> {
    prop_oneof![Just(Holes::Reject), Just(Holes::Skip)]
}

fn op(max_unit: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (range(max_unit), attrs(), prop_oneof![3 => Just(0u64), 1 => Just(8 * G1), 1 => (1u64..16).prop_map(|p| p * K4)])
            .prop_map(|((start, len), attrs, pa_offset)| {
                // A PA misaligned to 2 MiB forces 4 KiB pages: keep such maps small.
                let pa_offset = if len > 8 * M2 { pa_offset - pa_offset % G1 } else { pa_offset };
                Op::Map { start, len, pa: start + pa_offset + G1, attrs }
            }),
        2 => (range(max_unit), holes()).prop_map(|((start, len), holes)| Op::Unmap { start, len, holes }),
        2 => (range(max_unit), perms(), holes())
            .prop_map(|((start, len), perms, holes)| Op::Protect { start, len, perms, holes }),
    ]
}

/// A sequence of operations, each with an optional frame budget (to fail it midway).
fn scenario() -> impl Strategy<Value = (Blocks, Vec<(Op, Option<usize>)>)> {
    let budget = prop_oneof![6 => Just(None), 1 => (0usize..3).prop_map(Some)];
    prop_oneof![
        3 => proptest::collection::vec((op(G1), budget.clone()), 1..24).prop_map(|ops| (Blocks::Allowed, ops)),
        1 => proptest::collection::vec((op(M2), budget), 1..16).prop_map(|ops| (Blocks::Forbidden, ops)),
    ]
}

fn engine_segments(table: &TestTable<'_>) -> Vec<Seg> {
    let mut leaves = Vec::new();
    table
        .walk(va(0), WINDOW as usize, |m| {
            leaves.push(Seg {
                start: m.va.start().as_u64(),
                end: m.va.end().as_u64(),
                pa: m.pa.as_u64(),
                attrs: m.attributes,
            })
        })
        .expect("walk");
    Model::normalized(leaves)
}

/// `walk::maps_anything` agrees with the model on every segment, every gap between segments
/// and the pages around each edge; with a small budget it answers right or not at all.
fn check_maps_anything(
    mem: &TestMemory,
    root: PhysAddr,
    model: &Model,
    step: usize,
) -> Result<(), TestCaseError> {
    let mut edges = alloc::vec![0, WINDOW];
    for seg in model.segs.values() {
        edges.extend([seg.start, seg.end]);
    }
    edges.sort_unstable();
    edges.dedup();
    let mut ranges: Vec<(u64, u64)> = edges.windows(2).map(|w| (w[0], w[1])).collect();
    for &e in &edges {
        ranges.push((e.saturating_sub(K4), (e + K4).min(WINDOW)));
    }
    for (start, end) in ranges {
        let Some(range) = VaRange::from_bounds(VirtAddr(start), VirtAddr(end)) else {
            continue;
        };
        let expected = !model.overlapping(start, end).is_empty();
        let mut budget = u32::MAX;
        let got = maps_anything(mem, root, range, &mut budget);
        prop_assert_eq!(
            got,
            Some(expected),
            "step {}: maps_anything {:#x}..{:#x}",
            step,
            start,
            end
        );
        let mut small = 3;
        let got = maps_anything(mem, root, range, &mut small);
        prop_assert!(
            got.is_none() || got == Some(expected),
            "step {}: budgeted {:#x}..{:#x}",
            step,
            start,
            end
        );
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn run(blocks: Blocks, ops: &[(Op, Option<usize>)], knobs: Knobs) -> Result<(), TestCaseError> {
    let mem = TestMemory::new(1024);
    let mut table = new_table(
        &mem,
        Config {
            blocks,
            ..Config::USER
        },
    );
    table.knobs = knobs;
    let mut checker = Checker::new(&mem, table.root());
    let mut model = Model::default();

    for (step, (op, budget)) in ops.iter().enumerate() {
        let before = snapshot(&table, &mem);
        let splits_seen = checker.seen.len();
        mem.set_alloc_budget(*budget);
        let mut next = model.clone();
        let (expected, hull, result) = match *op {
            Op::Map {
                start,
                len,
                pa,
                attrs,
            } => {
                let expected = next.map(start, start + len, pa, attrs);
                let result = table.map(va(start), PhysAddr(pa), len as usize, attrs);
                (expected, Some((start, start + len)), result)
            }
            Op::Unmap { start, len, holes } => {
                let expected = model.check_modify(start, start + len, holes, None);
                let hull = next.carve(start, start + len, |_| None);
                (
                    expected,
                    hull,
                    table.unmap(va(start), len as usize, holes, &mut checker),
                )
            }
            Op::Protect {
                start,
                len,
                perms,
                holes,
            } => {
                let expected = model.check_modify(start, start + len, holes, Some(perms));
                let hull = next.carve(start, start + len, |s| {
                    Some(Seg {
                        attrs: Attributes { perms, ..s.attrs },
                        ..s
                    })
                });
                (
                    expected,
                    hull,
                    table.protect(va(start), len as usize, perms, holes, &mut checker),
                )
            }
        };
        mem.set_alloc_budget(None);

        match (expected, result) {
            (Ok(()), Ok(change)) => {
                // Splits happened inside the operation, each with its entry invalid.
                for seen in &checker.seen[splits_seen..] {
                    prop_assert!(
                        !seen.start_mapped,
                        "step {}: split without break: {:?}",
                        step,
                        seen.inv
                    );
                    let len = seen.inv.range().len();
                    prop_assert!(
                        len == G1 || len == M2,
                        "step {}: split of a {:#x} range",
                        step,
                        len
                    );
                }
                prop_assert_eq!(change.splits(), checker.seen.len() - splits_seen);
                // Map writes every page; unmap removes exactly the mapped ones (the address
                // space's page count comes from here).
                let written = match *op {
                    Op::Map { len, .. } => Some(len / K4),
                    Op::Unmap { start, len, .. } => Some(
                        model
                            .overlapping(start, start + len)
                            .iter()
                            .map(|s| {
                                let c = s.clip(start, start + len);
                                (c.end - c.start) / K4
                            })
                            .sum(),
                    ),
                    Op::Protect { .. } => None,
                };
                if let Some(pages) = written {
                    prop_assert_eq!(change.pages(), pages, "step {}: pages of {:?}", step, op);
                }
                let changed = change
                    .changed_range()
                    .map(|r| (r.start().as_u64(), r.end().as_u64()));
                prop_assert_eq!(changed, hull, "step {}: changed range of {:?}", step, op);
                if let Some(inv) = change.invalidation() {
                    prop_assert_eq!(Some(inv.range()), change.changed_range());
                }
                let calls = checker.seen.len();
                checker.complete(&table, change);
                if !matches!(op, Op::Map { .. }) && hull.is_some() {
                    prop_assert_eq!(checker.seen.len(), calls + 1);
                    prop_assert!(checker.seen[calls].already_freed.is_empty());
                }
                model = next;
            }
            (Ok(()), Err(PageTableError::OutOfFrames)) if budget.is_some() => {
                prop_assert_eq!(
                    &snapshot(&table, &mem),
                    &before,
                    "step {}: OOM changed the table",
                    step
                );
                prop_assert_eq!(
                    checker.seen.len(),
                    splits_seen,
                    "step {}: OOM after a split began",
                    step
                );
            }
            (Err(e), Err(got)) => {
                prop_assert_eq!(got, e, "step {}: {:?}", step, op);
                prop_assert_eq!(
                    &snapshot(&table, &mem),
                    &before,
                    "step {}: failed op changed the table",
                    step
                );
                prop_assert_eq!(checker.seen.len(), splits_seen);
            }
            (expected, got) => {
                return Err(TestCaseError::fail(format!(
                    "step {step}: {op:?} (budget {budget:?}): model {expected:?}, engine {:?}",
                    got.map(|c| c.changed_range())
                )));
            }
        }

        // Same translations everywhere.
        let segments = engine_segments(&table);
        let reference = Model::normalized(model.segs.values().copied());
        prop_assert_eq!(&segments, &reference, "step {}: after {:?}", step, op);
        for seg in &reference {
            for probe in [seg.start.wrapping_sub(K4), seg.start, seg.end - K4, seg.end] {
                if probe >= WINDOW {
                    continue;
                }
                let got = table
                    .query(VirtAddr(probe + 0x18))
                    .map(|t| (t.pa.as_u64() - 0x18, t.attributes));
                prop_assert_eq!(
                    got,
                    model.lookup(probe),
                    "step {}: query {:#x}",
                    step,
                    probe
                );
            }
        }
        check_maps_anything(&mem, table.root(), &model, step)?;
        // No empty or leaked table, no bad free.
        let stats = table.stats().expect("stats");
        prop_assert_eq!(stats.empty_tables, 0, "step {}", step);
        prop_assert_eq!(
            stats.tables,
            mem.live_frames(),
            "step {}: leaked frames",
            step
        );
        prop_assert_eq!(mem.bad_frees(), 0);
    }

    // Unmapping everything leaves the root alone; dropping the table frees it.
    let change = table
        .unmap(va(0), WINDOW as usize, Holes::Skip, &mut checker)
        .expect("unmap all");
    checker.complete(&table, change);
    prop_assert_eq!(mem.live_frames(), 1);
    drop(table);
    prop_assert_eq!(mem.live_frames(), 0);
    prop_assert_eq!(mem.bad_frees(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn engine_matches_reference_model((blocks, ops) in scenario()) {
        run(blocks, &ops, Knobs::default())?;
    }
}

/// The model test catches each deliberately broken variant of the engine (a check that
/// cannot fail proves nothing): the same short scenario passes on the real engine and fails
/// with each debug knob set.
#[test]
fn model_test_catches_broken_engines() {
    let rw = Attributes::normal(Permissions::USER_RW);
    let ops = [
        (
            Op::Map {
                start: 0,
                len: M2,
                pa: G1,
                attrs: rw,
            },
            None,
        ),
        (
            Op::Protect {
                start: K4,
                len: K4,
                perms: Permissions::USER_RO,
                holes: Holes::Reject,
            },
            None,
        ),
        (
            Op::Unmap {
                start: 0,
                len: M2,
                holes: Holes::Reject,
            },
            None,
        ),
        (
            Op::Map {
                start: G1,
                len: G1,
                pa: G1,
                attrs: rw,
            },
            None,
        ),
        (
            Op::Unmap {
                start: G1 + K4,
                len: K4,
                holes: Holes::Reject,
            },
            Some(1),
        ),
    ];
    assert!(run(Blocks::Allowed, &ops, Knobs::default()).is_ok());
    let broken = [
        Knobs {
            skip_break: true,
            ..Knobs::default()
        },
        Knobs {
            release_before_flush: true,
            ..Knobs::default()
        },
        Knobs {
            keep_empty_tables: true,
            ..Knobs::default()
        },
        Knobs {
            no_reservation: true,
            ..Knobs::default()
        },
    ];
    for knobs in broken {
        assert!(
            run(Blocks::Allowed, &ops, knobs).is_err(),
            "{knobs:?} went unnoticed"
        );
    }
}
