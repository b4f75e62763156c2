//! Portable TLB maintenance: what changed, and which instructions invalidate it.
//!
//! The engine records *what* changed in a [`TlbInvalidation`]: the exact VA range, whether any
//! table (non-leaf) entry changed, and at which levels leaf entries changed. A [`TlbPolicy`] (the
//! CPU's features plus a threshold) turns that into a [`TlbPlan`], an allocation-free sequence
//! of [`TlbOp`]s that a [`TlbMaintenance`] executor runs: the kernel with real `dsb`/`tlbi`/`isb`
//! instructions, the host tests with [`RecordingTlb`].
//!
//! Choice of instructions (Arm ARM DDI 0487K.a, D8.17 "TLB maintenance" and the TLBI
//! descriptions in C5.5):
//! - leaf-only changes use the "last level" forms (`VALE1IS`), which may keep walk-cache entries;
//!   once a table entry changed (a table was freed) the full forms (`VAE1IS`) are needed, because
//!   walk caches can hold table descriptors;
//! - with FEAT_TLBIRANGE a range of pages is covered by at most five `RVA(L)E1IS` operations;
//!   without it, one operation per `stride` (the smallest leaf size that changed) up to a
//!   threshold, above which the whole ASID goes (`ASIDE1IS`; `VMALLE1IS` for global, kernel,
//!   mappings, which ASID-based operations do not match);
//! - global mappings use the all-ASID forms (`VAAE1IS`, `VAALE1IS`, ...);
//! - every plan starts with `DSB ISHST` (the descriptor writes are visible to the table walkers
//!   of all CPUs before the invalidation) and ends with `DSB ISH; ISB` (the invalidation is
//!   complete everywhere, and this CPU's pipeline sees it).

use core::fmt;

use super::descriptor::Level;
use super::range::VaRange;
use crate::mm::addr::{VirtAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::mm::asid::Asid;

/// TLB maintenance features of the CPU (see [`super::regs::tlb_features`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlbFeatures {
    /// FEAT_TLBIRANGE: `TLBI RVA*` range operations.
    pub range: bool,
    /// FEAT_TTL: the TTL level hint in non-range TLBI operands.
    pub level_hints: bool,
}

/// What must leave the TLBs (CPU and secondary) after valid entries changed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TlbInvalidation {
    range: VaRange,
    leaf_only: bool,
    /// Bit n set: a leaf at level n changed.
    leaf_levels: u8,
}

impl TlbInvalidation {
    /// A change of leaf entries at `level` covering `range`.
    pub const fn leaf(range: VaRange, level: Level) -> Self {
        TlbInvalidation {
            range,
            leaf_only: true,
            leaf_levels: 1 << level as u8,
        }
    }

    /// The exact VA range whose translations changed (never empty). This is also the range to
    /// pass to `arch_invalidate_secondary_tlbs`.
    pub const fn range(&self) -> VaRange {
        self.range
    }

    /// True if only leaf entries changed, so walk caches may be kept.
    pub const fn leaf_only(&self) -> bool {
        self.leaf_only
    }

    /// Records that a table entry covering part of the range was removed.
    pub fn add_table_change(&mut self) {
        self.leaf_only = false;
    }

    /// Adds a changed leaf.
    pub fn add_leaf(&mut self, range: VaRange, level: Level) {
        self.range = self.range.hull(&range);
        self.leaf_levels |= 1 << level as u8;
    }

    /// Folds another invalidation into this one (for batching several operations).
    pub fn merge(&mut self, other: &TlbInvalidation) {
        self.range = self.range.hull(&other.range);
        self.leaf_only &= other.leaf_only;
        self.leaf_levels |= other.leaf_levels;
    }

    /// The level of every changed entry, if they are all leaves at one level: the TTL hint.
    pub fn level_hint(&self) -> Option<Level> {
        if !self.leaf_only || self.leaf_levels.count_ones() != 1 {
            return None;
        }
        match self.leaf_levels.trailing_zeros() {
            1 => Some(Level::L1),
            2 => Some(Level::L2),
            3 => Some(Level::L3),
            _ => None,
        }
    }

    /// The step between by-VA invalidations: the size of the smallest changed leaf. Every
    /// changed leaf is aligned to its own size, which is a multiple of the stride, and the
    /// range starts at a changed leaf, so stepping by the stride hits each of them.
    pub fn stride(&self) -> u64 {
        // The deepest level set has the smallest entries.
        match self.leaf_levels {
            0 => PAGE_SIZE as u64,
            levels => {
                let deepest = 7 - levels.leading_zeros() as u8;
                1 << (PAGE_SHIFT + 9 * (3 - u32::from(deepest)))
            }
        }
    }
}

impl fmt::Debug for TlbInvalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlbInvalidation")
            .field("range", &self.range)
            .field("leaf_only", &self.leaf_only)
            .field("leaf_levels", &format_args!("{:#06b}", self.leaf_levels))
            .finish()
    }
}

/// Which TLB entries a plan targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbScope {
    /// Non-global entries tagged with this ASID (user address spaces; nG = 1).
    Asid(Asid),
    /// Global entries (kernel mappings; nG = 0), which match every ASID.
    Global,
}

/// A TLB invalidation instruction (all Inner Shareable: they reach every CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tlbi {
    /// By VA and ASID, last level only.
    Vale1is,
    /// By VA and ASID, all levels (walk caches too).
    Vae1is,
    /// By VA, any ASID, last level only.
    Vaale1is,
    /// By VA, any ASID, all levels.
    Vaae1is,
    /// Range by ASID, last level only (FEAT_TLBIRANGE).
    Rvale1is,
    /// Range by ASID, all levels (FEAT_TLBIRANGE).
    Rvae1is,
    /// Range, any ASID, last level only (FEAT_TLBIRANGE).
    Rvaale1is,
    /// Range, any ASID, all levels (FEAT_TLBIRANGE).
    Rvaae1is,
    /// Every entry of one ASID (global entries excepted).
    Aside1is,
    /// Every stage-1 EL1&0 entry.
    Vmalle1is,
}

impl Tlbi {
    /// True for the range forms, whose operand uses the range encoding.
    pub const fn is_range(self) -> bool {
        matches!(
            self,
            Tlbi::Rvale1is | Tlbi::Rvae1is | Tlbi::Rvaale1is | Tlbi::Rvaae1is
        )
    }
}

/// One step of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlbOp {
    /// `DSB ISHST`: prior descriptor stores are visible to all table walkers.
    DsbIshst,
    /// `TLBI <op>, <operand>`.
    Tlbi {
        /// The instruction.
        op: Tlbi,
        /// The Xt operand (zero for `VMALLE1IS`).
        operand: u64,
    },
    /// `DSB ISH`: prior invalidations are complete on all CPUs.
    DsbIsh,
    /// `ISB`: this CPU fetches later instructions with the new translations.
    Isb,
}

/// Largest page count one range operation covers: (NUM + 1) * 2^(5 * SCALE + 1) with NUM = 31
/// and SCALE = 3. Ranges of this size or more are flushed by ASID instead.
pub const MAX_RANGE_PAGES: u64 = 32 << 16;

/// Linux's MAX_DVM_OPS: past this many by-VA operations a whole-ASID flush is cheaper.
pub const DEFAULT_MAX_BY_VA_OPS: u64 = 512;

/// Turns invalidation records into plans for one CPU type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbPolicy {
    /// What the CPU implements.
    pub features: TlbFeatures,
    /// Above this many by-VA operations the plan invalidates the whole ASID instead.
    pub max_by_va_ops: u64,
}

impl TlbPolicy {
    /// A policy with the default threshold.
    pub const fn new(features: TlbFeatures) -> Self {
        TlbPolicy {
            features,
            max_by_va_ops: DEFAULT_MAX_BY_VA_OPS,
        }
    }

    /// The plan invalidating `inv` in `scope`.
    pub fn plan(&self, inv: &TlbInvalidation, scope: TlbScope) -> TlbPlan {
        let range = inv.range();
        let leaf = inv.leaf_only();
        let hint = inv.level_hint();
        if self.features.range {
            if range.pages() >= MAX_RANGE_PAGES {
                return Self::plan_all(scope);
            }
            return TlbPlan(PlanKind::Range {
                next: range.start().as_u64(),
                pages: range.pages(),
                single: by_va_op(scope, leaf),
                ranged: range_op(scope, leaf),
                asid: scope_asid(scope),
                ttl_level: hint.map_or(0, |l| l as u8),
                single_ttl: self.ttl(hint),
            });
        }
        let stride = inv.stride();
        let first = range.start().align_down(stride).as_u64();
        let count = (range.end().as_u64() - first).div_ceil(stride);
        if count > self.max_by_va_ops {
            return Self::plan_all(scope);
        }
        TlbPlan(PlanKind::ByVa {
            next: first,
            count,
            stride,
            op: by_va_op(scope, leaf),
            asid: scope_asid(scope),
            ttl: self.ttl(hint),
        })
    }

    /// The plan invalidating everything in `scope` (teardown, ASID reuse).
    pub const fn plan_all(scope: TlbScope) -> TlbPlan {
        TlbPlan(PlanKind::Whole(scope))
    }

    /// The non-range TTL field: granule 0b01 (4 KiB) in TTL\[3:2\] and the level in TTL\[1:0\], or
    /// zero ("no information") without FEAT_TTL or without a single level.
    fn ttl(&self, hint: Option<Level>) -> u8 {
        match hint {
            Some(level) if self.features.level_hints => 0b0100 | level as u8,
            _ => 0,
        }
    }
}

/// The one operation of a whole-scope plan.
const fn whole_op(scope: TlbScope) -> TlbOp {
    match scope {
        TlbScope::Asid(asid) => TlbOp::Tlbi {
            op: Tlbi::Aside1is,
            operand: (asid.get() as u64) << 48,
        },
        TlbScope::Global => TlbOp::Tlbi {
            op: Tlbi::Vmalle1is,
            operand: 0,
        },
    }
}

const fn scope_asid(scope: TlbScope) -> u16 {
    match scope {
        TlbScope::Asid(asid) => asid.get(),
        TlbScope::Global => 0,
    }
}

const fn by_va_op(scope: TlbScope, leaf: bool) -> Tlbi {
    match (scope, leaf) {
        (TlbScope::Asid(_), true) => Tlbi::Vale1is,
        (TlbScope::Asid(_), false) => Tlbi::Vae1is,
        (TlbScope::Global, true) => Tlbi::Vaale1is,
        (TlbScope::Global, false) => Tlbi::Vaae1is,
    }
}

const fn range_op(scope: TlbScope, leaf: bool) -> Tlbi {
    match (scope, leaf) {
        (TlbScope::Asid(_), true) => Tlbi::Rvale1is,
        (TlbScope::Asid(_), false) => Tlbi::Rvae1is,
        (TlbScope::Global, true) => Tlbi::Rvaale1is,
        (TlbScope::Global, false) => Tlbi::Rvaae1is,
    }
}

/// The operand of a by-VA TLBI (C5.5, e.g. "TLBI VAE1IS"): ASID in \[63:48\], TTL in \[47:44\],
/// VA\[55:12\] in \[43:0\]. All-ASID forms leave \[63:48\] zero.
pub const fn va_operand(va: u64, asid: u16, ttl: u8) -> u64 {
    ((asid as u64) << 48) | (((ttl & 0xf) as u64) << 44) | ((va >> PAGE_SHIFT) & ((1 << 44) - 1))
}

/// Fields of a range TLBI operand (C5.5, e.g. "TLBI RVAE1IS"; D8.17 "range-based TLB
/// invalidation"): the range is `(num + 1) * 2^(5 * scale + 1)` pages from `base_page`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeOperand {
    /// ASID, \[63:48\] (zero for all-ASID forms).
    pub asid: u16,
    /// TG, \[47:46\]: 0b01 = 4 KiB. 0b00 is reserved: the operation would be ignored.
    pub tg: u8,
    /// SCALE, \[45:44\].
    pub scale: u8,
    /// NUM, \[43:39\].
    pub num: u8,
    /// TTL, \[38:37\]: the level of the leaf entries (1..=3) or 0 for "any level".
    pub ttl: u8,
    /// BaseADDR, \[36:0\]: VA\[48:12\] for the 4 KiB granule.
    pub base_page: u64,
}

/// TG value for the 4 KiB granule.
pub const RANGE_TG_4K: u8 = 0b01;

impl RangeOperand {
    /// The encoded Xt value.
    pub const fn encode(self) -> u64 {
        ((self.asid as u64) << 48)
            | (((self.tg & 0b11) as u64) << 46)
            | (((self.scale & 0b11) as u64) << 44)
            | (((self.num & 0x1f) as u64) << 39)
            | (((self.ttl & 0b11) as u64) << 37)
            | (self.base_page & ((1 << 37) - 1))
    }

    /// Splits an Xt value into fields.
    pub const fn decode(operand: u64) -> Self {
        RangeOperand {
            asid: (operand >> 48) as u16,
            tg: ((operand >> 46) & 0b11) as u8,
            scale: ((operand >> 44) & 0b11) as u8,
            num: ((operand >> 39) & 0x1f) as u8,
            ttl: ((operand >> 37) & 0b11) as u8,
            base_page: operand & ((1 << 37) - 1),
        }
    }

    /// Number of pages the operation covers.
    pub const fn pages(self) -> u64 {
        (self.num as u64 + 1) << (5 * self.scale as u32 + 1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PlanKind {
    /// No valid entry changed: only make new entries visible to walkers.
    Publish,
    /// `count` operations at `next`, `next + stride`, ...
    ByVa {
        next: u64,
        count: u64,
        stride: u64,
        op: Tlbi,
        asid: u16,
        ttl: u8,
    },
    /// Range operations covering `pages` pages from `next`; an odd page first goes by VA.
    Range {
        next: u64,
        pages: u64,
        single: Tlbi,
        ranged: Tlbi,
        asid: u16,
        ttl_level: u8,
        single_ttl: u8,
    },
    /// One whole-ASID (or whole-TLB) operation.
    Whole(TlbScope),
    /// An iterator's state once a `Whole` operation was produced.
    Exhausted,
}

/// A sequence of barrier and TLBI operations, produced lazily by [`TlbPlan::ops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbPlan(PlanKind);

impl TlbPlan {
    /// The plan after entries were only added (invalid to valid): `DSB ISHST; ISB`. Nothing can
    /// be cached for an invalid entry, so nothing needs invalidating (D8.17).
    pub const fn publish() -> Self {
        TlbPlan(PlanKind::Publish)
    }

    /// The operations, in order.
    pub fn ops(&self) -> TlbOps {
        TlbOps {
            kind: self.0,
            stage: Stage::Start,
        }
    }

    /// True if the plan has a TLBI (what [`TlbPlan::tlbi_count`] > 0 says, without counting).
    pub fn invalidates(&self) -> bool {
        match self.0 {
            PlanKind::Publish | PlanKind::Exhausted => false,
            PlanKind::ByVa { count, .. } => count > 0,
            PlanKind::Range { pages, .. } => pages > 0,
            PlanKind::Whole(_) => true,
        }
    }

    /// The plan's TLBI if it is one page or a whole scope: an executor may then issue
    /// `DSB ISHST; TLBI; DSB ISH; ISB` itself instead of iterating [`TlbPlan::ops`] (the same
    /// operations, for the most common plan of all). `None` says nothing about the count.
    pub fn single_tlbi(&self) -> Option<TlbOp> {
        match self.0 {
            PlanKind::ByVa {
                next,
                count: 1,
                op,
                asid,
                ttl,
                ..
            } => Some(TlbOp::Tlbi {
                op,
                operand: va_operand(next, asid, ttl),
            }),
            PlanKind::Range {
                next,
                pages: 1,
                single,
                asid,
                single_ttl,
                ..
            } => Some(TlbOp::Tlbi {
                op: single,
                operand: va_operand(next, asid, single_ttl),
            }),
            PlanKind::Whole(scope) => Some(whole_op(scope)),
            _ => None,
        }
    }

    /// The number of TLBI operations (barriers excluded).
    pub fn tlbi_count(&self) -> usize {
        self.ops()
            .filter(|op| matches!(op, TlbOp::Tlbi { .. }))
            .count()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Start,
    Invalidate,
    Complete,
    Sync,
    Done,
}

/// Iterator over a plan's operations.
#[derive(Clone, Debug)]
pub struct TlbOps {
    kind: PlanKind,
    stage: Stage,
}

impl TlbOps {
    /// The next TLBI of the invalidation stage, or `None` when it is done.
    fn next_tlbi(&mut self) -> Option<TlbOp> {
        match &mut self.kind {
            PlanKind::Publish | PlanKind::Exhausted => None,
            PlanKind::Whole(scope) => {
                let scope = *scope;
                self.kind = PlanKind::Exhausted;
                Some(whole_op(scope))
            }
            PlanKind::ByVa {
                next,
                count,
                stride,
                op,
                asid,
                ttl,
            } => {
                if *count == 0 {
                    return None;
                }
                let operand = va_operand(*next, *asid, *ttl);
                *next += *stride;
                *count -= 1;
                Some(TlbOp::Tlbi { op: *op, operand })
            }
            PlanKind::Range {
                next,
                pages,
                single,
                ranged,
                asid,
                ttl_level,
                single_ttl,
            } => {
                if *pages == 0 {
                    return None;
                }
                // A range covers an even number of pages; an odd count starts with one page.
                if *pages % 2 == 1 {
                    let operand = va_operand(*next, *asid, *single_ttl);
                    *next += PAGE_SIZE as u64;
                    *pages -= 1;
                    return Some(TlbOp::Tlbi {
                        op: *single,
                        operand,
                    });
                }
                // `pages` < 2^21, so pages / 2 has four base-32 digits: one per SCALE, from
                // the top. Each non-zero digit d becomes NUM = d - 1 at that SCALE.
                for scale in (0..4u8).rev() {
                    let shift = 5 * u32::from(scale) + 1;
                    let digit = (*pages >> shift) & 0x1f;
                    if digit == 0 {
                        continue;
                    }
                    let operand = RangeOperand {
                        asid: *asid,
                        tg: RANGE_TG_4K,
                        scale,
                        num: (digit - 1) as u8,
                        ttl: *ttl_level,
                        base_page: *next >> PAGE_SHIFT,
                    };
                    let covered = digit << shift;
                    *next += covered << PAGE_SHIFT;
                    *pages -= covered;
                    return Some(TlbOp::Tlbi {
                        op: *ranged,
                        operand: operand.encode(),
                    });
                }
                // Unreachable for a policy-built plan (pages even and non-zero has a digit);
                // stop rather than spin.
                *pages = 0;
                None
            }
        }
    }
}

impl Iterator for TlbOps {
    type Item = TlbOp;

    fn next(&mut self) -> Option<TlbOp> {
        loop {
            match self.stage {
                Stage::Start => {
                    // With nothing to invalidate there is nothing to wait for: just the ISB.
                    self.stage = match self.kind {
                        PlanKind::Publish => Stage::Sync,
                        _ => Stage::Invalidate,
                    };
                    return Some(TlbOp::DsbIshst);
                }
                Stage::Invalidate => match self.next_tlbi() {
                    Some(op) => return Some(op),
                    None => self.stage = Stage::Complete,
                },
                Stage::Complete => {
                    self.stage = Stage::Sync;
                    return Some(TlbOp::DsbIsh);
                }
                Stage::Sync => {
                    self.stage = Stage::Done;
                    return Some(TlbOp::Isb);
                }
                Stage::Done => return None,
            }
        }
    }
}

/// Executes TLB plans. The kernel implements it with `dsb`, `tlbi` and `isb` instructions
/// (the range forms need FEAT_TLBIRANGE, which the policy only uses when the CPU has it).
pub trait TlbMaintenance {
    /// Runs every operation of `plan`, in order; the invalidation is complete on return.
    fn execute(&mut self, plan: &TlbPlan);
}

/// What the page-table engine needs from its owner to keep every TLB coherent.
///
/// The owner (an address space, or the kernel's own table) implements it by executing a CPU
/// plan *and* invalidating the secondary TLBs (`arch_invalidate_secondary_tlbs` for the
/// range), the way Linux's arm64 `__flush_tlb_range` does both.
pub trait Invalidate {
    /// Entries were only added: make them visible to table walkers (`DSB ISHST; ISB`).
    fn publish(&mut self);

    /// Entries covering `inv.range()` changed or were removed: on return no TLB or walk
    /// cache, CPU or secondary, may still hold the old entries.
    fn invalidate(&mut self, inv: &TlbInvalidation);
}

/// [`Invalidate`] for the CPU TLBs only: plans with `policy` in `scope`, runs with `executor`.
pub struct CpuTlb<'a, E: TlbMaintenance + ?Sized> {
    /// The CPU's policy.
    pub policy: &'a TlbPolicy,
    /// The ASID (or global) the table is used with.
    pub scope: TlbScope,
    /// Runs the plans.
    pub executor: &'a mut E,
}

impl<E: TlbMaintenance + ?Sized> Invalidate for CpuTlb<'_, E> {
    fn publish(&mut self) {
        self.executor.execute(&TlbPlan::publish());
    }

    fn invalidate(&mut self, inv: &TlbInvalidation) {
        let plan = self.policy.plan(inv, self.scope);
        self.executor.execute(&plan);
    }
}

/// A [`TlbMaintenance`] that records the operations instead of executing them (host tests and
/// in-kernel self-checks).
#[derive(Debug, Default)]
pub struct RecordingTlb {
    /// Every operation executed so far, in order.
    pub ops: alloc::vec::Vec<TlbOp>,
}

impl TlbMaintenance for RecordingTlb {
    fn execute(&mut self, plan: &TlbPlan) {
        self.ops.extend(plan.ops());
    }
}

/// Convenience for tests: the VA a by-VA operand targets.
pub const fn va_of_operand(operand: u64) -> VirtAddr {
    VirtAddr((operand & ((1 << 44) - 1)) << PAGE_SHIFT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::asid::AsidBits;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    const M2: u64 = 2 << 20;

    fn asid(v: u16) -> TlbScope {
        TlbScope::Asid(Asid::new(v, AsidBits::Sixteen).unwrap())
    }

    fn range(start: u64, len: u64) -> VaRange {
        VaRange::new(VirtAddr(start), len as usize).unwrap()
    }

    fn tlbis(plan: &TlbPlan) -> Vec<(Tlbi, u64)> {
        plan.ops()
            .filter_map(|op| match op {
                TlbOp::Tlbi { op, operand } => Some((op, operand)),
                _ => None,
            })
            .collect()
    }

    /// Every plan is `DSB ISHST`, TLBIs, `DSB ISH`, `ISB`.
    fn assert_framed(plan: &TlbPlan) {
        let ops: Vec<_> = plan.ops().collect();
        assert_eq!(ops.first(), Some(&TlbOp::DsbIshst));
        assert_eq!(&ops[ops.len() - 2..], &[TlbOp::DsbIsh, TlbOp::Isb]);
        assert!(ops[1..ops.len() - 2]
            .iter()
            .all(|op| matches!(op, TlbOp::Tlbi { .. })));
    }

    const NO_FEATURES: TlbPolicy = TlbPolicy::new(TlbFeatures {
        range: false,
        level_hints: false,
    });
    const TTL_ONLY: TlbPolicy = TlbPolicy::new(TlbFeatures {
        range: false,
        level_hints: true,
    });
    const RANGE: TlbPolicy = TlbPolicy::new(TlbFeatures {
        range: true,
        level_hints: true,
    });

    #[test]
    fn publish_is_just_barriers() {
        let ops: Vec<_> = TlbPlan::publish().ops().collect();
        assert_eq!(ops, [TlbOp::DsbIshst, TlbOp::Isb]);
        assert!(!TlbPlan::publish().invalidates());
        assert_eq!(TlbPlan::publish().single_tlbi(), None);
    }

    #[test]
    fn leaf_pages_by_va_and_asid() {
        let inv = TlbInvalidation::leaf(range(0x40_0000, 3 * 4096), Level::L3);
        let plan = NO_FEATURES.plan(&inv, asid(5));
        assert_framed(&plan);
        let expected: Vec<_> = (0..3)
            .map(|i| (Tlbi::Vale1is, (5u64 << 48) | ((0x40_0000 >> 12) + i)))
            .collect();
        assert_eq!(tlbis(&plan), expected);
    }

    #[test]
    fn level_hint_only_with_feat_ttl() {
        let inv = TlbInvalidation::leaf(range(0x40_0000, 4096), Level::L3);
        let (_, operand) = tlbis(&TTL_ONLY.plan(&inv, asid(1)))[0];
        assert_eq!((operand >> 44) & 0xf, 0b0111, "4K granule, level 3");
        let (_, operand) = tlbis(&NO_FEATURES.plan(&inv, asid(1)))[0];
        assert_eq!((operand >> 44) & 0xf, 0, "TTL is RES0 without FEAT_TTL");
    }

    #[test]
    fn table_changes_use_all_level_ops_without_hint() {
        let mut inv = TlbInvalidation::leaf(range(0x40_0000, 4096), Level::L3);
        inv.add_table_change();
        assert_eq!(inv.level_hint(), None);
        let ops = tlbis(&TTL_ONLY.plan(&inv, asid(1)));
        assert_eq!(ops, [(Tlbi::Vae1is, (1 << 48) | 0x400)]);
        let ops = tlbis(&RANGE.plan(&inv, TlbScope::Global));
        assert_eq!(ops, [(Tlbi::Vaae1is, 0x400)]);
    }

    #[test]
    fn global_mappings_use_all_asid_ops() {
        let inv = TlbInvalidation::leaf(range(0, 2 * 4096), Level::L3);
        let ops = tlbis(&NO_FEATURES.plan(&inv, TlbScope::Global));
        assert_eq!(ops, [(Tlbi::Vaale1is, 0), (Tlbi::Vaale1is, 1)]);
        let big = TlbInvalidation::leaf(range(0, 1 << 30), Level::L3);
        let ops = tlbis(&NO_FEATURES.plan(&big, TlbScope::Global));
        assert_eq!(
            ops,
            [(Tlbi::Vmalle1is, 0)],
            "ASID-based ops would miss global entries"
        );
    }

    #[test]
    fn threshold_switches_to_whole_asid() {
        let at = TlbInvalidation::leaf(range(0, 512 * 4096), Level::L3);
        assert_eq!(NO_FEATURES.plan(&at, asid(9)).tlbi_count(), 512);
        let over = TlbInvalidation::leaf(range(0, 513 * 4096), Level::L3);
        let plan = NO_FEATURES.plan(&over, asid(9));
        assert_framed(&plan);
        assert_eq!(tlbis(&plan), [(Tlbi::Aside1is, 9 << 48)]);
        let custom = TlbPolicy {
            max_by_va_ops: 2,
            ..NO_FEATURES
        };
        assert_eq!(
            tlbis(&custom.plan(&at, asid(9))),
            [(Tlbi::Aside1is, 9 << 48)]
        );
    }

    #[test]
    fn blocks_are_invalidated_once_each() {
        let inv = TlbInvalidation::leaf(range(8 * M2, 4 * M2), Level::L2);
        let plan = TTL_ONLY.plan(&inv, asid(3));
        let ops = tlbis(&plan);
        assert_eq!(ops.len(), 4);
        for (i, (op, operand)) in ops.into_iter().enumerate() {
            assert_eq!(op, Tlbi::Vale1is);
            assert_eq!(va_of_operand(operand), VirtAddr(8 * M2 + i as u64 * M2));
            assert_eq!((operand >> 44) & 0xf, 0b0110, "level 2 hint");
        }
    }

    #[test]
    fn range_plan_uses_level_hint_and_leaf_op() {
        let inv = TlbInvalidation::leaf(range(8 * M2, 4 * M2), Level::L2);
        let ops = tlbis(&RANGE.plan(&inv, asid(3)));
        assert_eq!(ops.len(), 1);
        let (op, operand) = ops[0];
        assert_eq!(op, Tlbi::Rvale1is);
        let fields = RangeOperand::decode(operand);
        assert_eq!(fields.ttl, 2);
        assert_eq!(fields.asid, 3);
        assert_eq!(fields.pages(), 4 * 512);
        assert_eq!(fields.base_page, (8 * M2) >> 12);
    }

    #[test]
    fn huge_ranges_flush_the_asid_even_with_range_ops() {
        let inv = TlbInvalidation::leaf(range(0, MAX_RANGE_PAGES * 4096), Level::L3);
        assert_eq!(
            tlbis(&RANGE.plan(&inv, asid(2))),
            [(Tlbi::Aside1is, 2 << 48)]
        );
        let inv = TlbInvalidation::leaf(range(0, (MAX_RANGE_PAGES - 1) * 4096), Level::L3);
        assert!(tlbis(&RANGE.plan(&inv, asid(2)))
            .iter()
            .all(|(op, _)| *op != Tlbi::Aside1is));
    }

    #[test]
    fn cpu_tlb_runs_plans() {
        let mut recorder = RecordingTlb::default();
        let mut cpu = CpuTlb {
            policy: &NO_FEATURES,
            scope: asid(4),
            executor: &mut recorder,
        };
        cpu.publish();
        cpu.invalidate(&TlbInvalidation::leaf(range(0x1000, 4096), Level::L3));
        assert_eq!(
            recorder.ops,
            [
                TlbOp::DsbIshst,
                TlbOp::Isb,
                TlbOp::DsbIshst,
                TlbOp::Tlbi {
                    op: Tlbi::Vale1is,
                    operand: (4 << 48) | 1
                },
                TlbOp::DsbIsh,
                TlbOp::Isb
            ]
        );
    }

    #[test]
    fn range_operand_round_trip() {
        let f = RangeOperand {
            asid: 0xbeef,
            tg: RANGE_TG_4K,
            scale: 3,
            num: 31,
            ttl: 3,
            base_page: (1 << 37) - 1,
        };
        assert_eq!(RangeOperand::decode(f.encode()), f);
        assert_eq!(f.pages(), MAX_RANGE_PAGES);
    }

    proptest! {
        /// A range plan covers exactly the requested pages, contiguously, in at most five
        /// operations, each a valid range encoding (TG = 4K, never the reserved TG = 0).
        #[test]
        fn range_plans_cover_exactly(start_page in 0u64..(1 << 36) - MAX_RANGE_PAGES, pages in 1u64..MAX_RANGE_PAGES, leaf in any::<bool>()) {
            let mut inv = TlbInvalidation::leaf(range(start_page << 12, pages << 12), Level::L3);
            if !leaf {
                inv.add_table_change();
            }
            let plan = RANGE.plan(&inv, asid(77));
            assert_framed(&plan);
            let ops = tlbis(&plan);
            prop_assert!(ops.len() <= 5, "{} ops", ops.len());
            let mut next = start_page;
            for (i, (op, operand)) in ops.iter().copied().enumerate() {
                prop_assert_eq!(operand >> 48, 77);
                if op.is_range() {
                    prop_assert_eq!(op, if leaf { Tlbi::Rvale1is } else { Tlbi::Rvae1is });
                    let f = RangeOperand::decode(operand);
                    prop_assert_eq!(f.tg, RANGE_TG_4K);
                    prop_assert_eq!(f.base_page, next);
                    prop_assert_eq!(f.ttl, if leaf { 3 } else { 0 });
                    next += f.pages();
                } else {
                    prop_assert_eq!(i, 0, "only a leading odd page goes by VA");
                    prop_assert_eq!(op, if leaf { Tlbi::Vale1is } else { Tlbi::Vae1is });
                    prop_assert_eq!(operand & ((1 << 44) - 1), next);
                    next += 1;
                }
            }
            prop_assert_eq!(next, start_page + pages);
        }

        /// [`TlbPlan::single_tlbi`] and [`TlbPlan::invalidates`] agree with the operations the
        /// plan iterates, for every policy, scope, level and size (an executor trusts them
        /// instead of iterating), and every one-page plan has its single TLBI.
        #[test]
        fn single_tlbi_is_the_plans_only_tlbi(start_page in 0u64..1 << 30, pages in 1u64..2048, policy in 0usize..3, global in any::<bool>(), leaf in any::<bool>(), block in any::<bool>()) {
            let level = if block { Level::L2 } else { Level::L3 };
            let mut inv = TlbInvalidation::leaf(range(start_page << 12, pages << 12), level);
            if !leaf {
                inv.add_table_change();
            }
            let scope = if global { TlbScope::Global } else { asid(3) };
            let plan = [NO_FEATURES, TTL_ONLY, RANGE][policy].plan(&inv, scope);
            let ops = tlbis(&plan);
            prop_assert_eq!(plan.invalidates(), !ops.is_empty());
            match plan.single_tlbi() {
                Some(TlbOp::Tlbi { op, operand }) => prop_assert_eq!(ops, vec![(op, operand)]),
                Some(other) => prop_assert!(false, "not a TLBI: {:?}", other),
                None => prop_assert!(pages > 1 || block, "a one-page plan not reported: {:?}", ops),
            }
        }

        /// By-VA plans touch every page of a page-level range once, in order, or give up for the
        /// whole ASID above the threshold.
        #[test]
        fn by_va_plans_cover_exactly(start_page in 0u64..1 << 30, pages in 1u64..1024) {
            let inv = TlbInvalidation::leaf(range(start_page << 12, pages << 12), Level::L3);
            let ops = tlbis(&NO_FEATURES.plan(&inv, asid(1)));
            if pages > DEFAULT_MAX_BY_VA_OPS {
                prop_assert_eq!(ops, vec![(Tlbi::Aside1is, 1 << 48)]);
            } else {
                let pages_seen: Vec<u64> = ops.iter().map(|(_, o)| o & ((1 << 44) - 1)).collect();
                let expected: Vec<u64> = (start_page..start_page + pages).collect();
                prop_assert_eq!(pages_seen, expected);
            }
        }
    }
}
