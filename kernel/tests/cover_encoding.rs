//! The planner's free cover (issue 16 part 3), checked from the outside: every command a
//! covered plan sends is encoded, decoded back by the SMMU model's own decoder (what the model
//! executes), and the pages the decoded commands invalidate are compared with what the planner
//! believed it covered and with the page tables it was asked about.

use std::collections::BTreeSet;

use proptest::prelude::*;

use shootdown::iommu::backend::model::decode;
use shootdown::iommu::driver::planner::{MappedQuery, PlanKind, PlannerConfig, Strategy};
use shootdown::iommu::spec::command::{Command, Granule};
use shootdown::mm::{VirtAddr, PAGE_SIZE};

const PAGE: u64 = PAGE_SIZE as u64;

/// Page tables as a set of mapped page numbers.
struct Mapped(BTreeSet<u64>);

impl Mapped {
    fn any_in(&self, first_page: u64, end_page: u64) -> bool {
        first_page < end_page && self.0.range(first_page..end_page).next().is_some()
    }
}

impl MappedQuery for Mapped {
    fn maps_anything(&self, start: u64, end: u64, budget: &mut u32) -> Option<bool> {
        *budget = budget.checked_sub(1)?;
        Some(self.any_in(start / PAGE, end / PAGE))
    }
}

/// The `[first, end)` page spans the decoded commands of `plan` invalidate, sorted.
fn decoded_spans(
    commands: impl Iterator<Item = Command>,
    leaf: bool,
) -> Result<Vec<(u64, u64)>, TestCaseError> {
    let mut spans = Vec::new();
    for c in commands {
        let words = c
            .encode()
            .map_err(|e| TestCaseError::fail(format!("{c:?}: {e:?}")))?;
        let decoded =
            decode::command(words).map_err(|e| TestCaseError::fail(format!("{c:?}: {e:?}")))?;
        let Command::TlbiNhVa(va) = decoded else {
            return Err(TestCaseError::fail(format!(
                "not a VA invalidation: {decoded:?}"
            )));
        };
        prop_assert_eq!(va.leaf, leaf);
        let Some(r) = va.range else {
            return Err(TestCaseError::fail(format!("not a range command: {va:?}")));
        };
        prop_assert_eq!(r.tg, Granule::K4);
        prop_assert_eq!(r.ttl, 0, "the notifier never knows the leaf level");
        let first = va.addr.as_u64() / PAGE;
        spans.push((first, first + (r.bytes() / PAGE)));
    }
    spans.sort_unstable();
    Ok(spans)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Random requests, at the bottom, the top or anywhere in a 39- or 48-bit TTB0 region,
    /// with mapped pages just around them: the commands of the covered plan, as the model
    /// decodes them, are one contiguous span that contains every requested page, stays inside
    /// the region, is what the plan's kind says, never uses the reserved encoding, and reaches
    /// no mapped page outside the request.
    #[test]
    fn decoded_cover_commands_contain_the_request_and_reach_no_mapped_neighbour(
        va_bits in prop_oneof![Just(39u8), Just(48u8)],
        place in 0u8..3,
        offset in 0u64..(1 << 20),
        pages in 2u64..200_000,
        near in proptest::collection::vec((any::<bool>(), 0u64..4096), 0..6),
        leaf in any::<bool>(),
        snap in 0u8..3,
    ) {
        let region_pages = 1u64 << (va_bits - 12);
        prop_assume!(pages < region_pages / 2);
        let mut first = match place {
            0 => offset.min(region_pages - pages - 1),
            1 => region_pages - pages - offset.min(region_pages - pages - 1),
            _ => (offset * 4099) % (region_pages - pages),
        };
        // Requests that start or end on a table boundary (512 pages).
        match snap {
            0 => first &= !511,
            1 => first = ((first + pages) & !511).saturating_sub(pages),
            _ => {}
        }
        let end = first + pages;
        let mapped = Mapped(
            near.iter()
                .map(|&(below, d)| if below { first.saturating_sub(d + 1) } else { end + d })
                .filter(|&p| p < region_pages && !(first..end).contains(&p))
                .collect(),
        );
        let mut cfg = PlannerConfig::new(Strategy::Range, true)
            .unwrap()
            .with_va_bits(va_bits)
            .unwrap();
        cfg.leaf = leaf;
        let exact = cfg.plan(7, VirtAddr(first * PAGE), VirtAddr(end * PAGE)).unwrap();
        let plan = exact.cover(&mapped);
        let spans = decoded_spans(plan.commands(), leaf)?;
        for w in spans.windows(2) {
            prop_assert_eq!(w[0].1, w[1].0, "gap or overlap: {:?}", spans);
        }
        let (lo, hi) = (spans[0].0, spans[spans.len() - 1].1);
        prop_assert!(lo <= first && hi >= end, "{lo}..{hi} misses {first}..{end}");
        match plan.kind() {
            PlanKind::Cover { pages: p, covered } => {
                prop_assert_eq!(p, pages);
                prop_assert_eq!(covered, hi - lo, "the planner's idea of the cover");
                prop_assert_eq!(spans.len(), 1);
                prop_assert!(hi <= region_pages, "{lo}..{hi} leaves the TTB0 region");
                prop_assert!(!mapped.any_in(lo, first), "mapped below: {:?}", mapped.0);
                prop_assert!(!mapped.any_in(end, hi), "mapped above: {:?}", mapped.0);
                if !leaf {
                    // Leaf = 0 also drops the walk-cache entry of every table the cover
                    // reaches; one the request does not reach must map nothing (a live
                    // neighbour there keeps its entry under the exact encoding).
                    for table_pages in [1u64 << 9, 1 << 18, 1 << 27] {
                        let below = lo & !(table_pages - 1);
                        if below + table_pages <= first {
                            prop_assert!(!mapped.any_in(below, first), "table below {below:#x}");
                        }
                        let above = (hi - 1) & !(table_pages - 1);
                        if above >= end {
                            let top = (above + table_pages).min(region_pages);
                            prop_assert!(!mapped.any_in(end, top), "table above {above:#x}");
                        }
                    }
                }
            }
            PlanKind::Range { pages: p } => {
                prop_assert_eq!(p, pages);
                prop_assert_eq!(plan, exact);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
