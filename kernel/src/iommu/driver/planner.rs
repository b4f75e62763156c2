//! Which TLB invalidation commands to send for `arch_invalidate_secondary_tlbs(start, end)`.
//!
//! The notifier hands the SMMU a VA range `[start, end)` of one address space (one ASID) whose
//! translations changed. Any set of commands that covers every 4 KiB page of the range is
//! correct; the strategies differ in how many commands they send and how much unrelated
//! cached state they throw away:
//!
//! * [`Strategy::PerPage`]: one `CMD_TLBI_NH_VA` (TG = 0) per page. Exact, but linear in the
//!   range.
//! * [`Strategy::Range`]: range `CMD_TLBI_NH_VA` (SMMU_IDR3.RIL, §4.4.1.1), each covering
//!   `(NUM+1) << SCALE` pages. The range is consumed low bits first, as Linux's
//!   `__arm_smmu_tlb_inv_range()` does: every command takes the lowest set bit of the remaining
//!   page count as SCALE and the next five bits as NUM, so a range of `n` pages needs at most
//!   ⌈log2 n⌉ + 1 commands. TTL is always 0 because the notifier cannot know at which level the
//!   leaf entries were (blocks or pages); TG ≠ 0 with TTL = NUM = SCALE = 0 is a reserved
//!   encoding (CERROR_ILL), so, as Linux commit eb6c97647be2 does, a page count whose low five
//!   bits are 1 is rounded up by one page: at most one page is over-invalidated.
//! * [`Strategy::Asid`]: one `CMD_TLBI_NH_ASID`. Constant cost, but every cached translation of
//!   the address space is lost.
//! * [`Strategy::Auto`] (Linux 6.6+ `arm_smmu_mm_arch_invalidate_secondary_tlbs()`): without
//!   RIL, per-page below [`LINUX_MAX_TLBI_OPS`] (512) pages and ASID-wide from there on (commit
//!   d5afb4b47e13, which fixed a soft lockup from per-page loops over huge ranges); with RIL,
//!   range commands for every range except the whole address space.
//!
//! Every strategy sends a single `CMD_TLBI_NH_ASID` for the whole address space (`0..u64::MAX`,
//! Linux's `flush_tlb_mm()` case) or a range covering the whole TTB0 region. `PerPage` also
//! falls back to the ASID-wide command beyond [`PER_PAGE_HARD_LIMIT`] pages rather than queue
//! millions of commands. Ranges are rounded out to whole pages and clipped to the TTB0 region
//! (`[0, 2^va_bits)`): the CD disables TTB1 walks (EPD1 = 1), so nothing above can be cached.
//!
//! The plan yields its commands lazily ([`Plan::commands`]) and never contains the CMD_SYNC:
//! the driver queues them in batches and then exactly one CMD_SYNC, which it waits for. VMID is
//! always 0 (see [`crate::iommu::spec::ste`]).

use core::fmt;

use crate::iommu::spec::command::{
    Command, CommandCounts, Granule, TlbiRange, TlbiVa, TLBI_RANGE_FIELD_MAX,
};
use crate::mm::{VirtAddr, PAGE_SHIFT, PAGE_SIZE};

/// Linux's `CMDQ_MAX_TLBI_OPS` for 4 KiB pages (`1 << (PAGE_SHIFT - 3)`): the page count from
/// which `Auto` without RIL switches to an ASID-wide invalidation.
pub const LINUX_MAX_TLBI_OPS: u64 = 1 << (PAGE_SHIFT - 3);

/// `PerPage` never queues more commands than this (1 GiB of 4 KiB pages) for one call.
pub const PER_PAGE_HARD_LIMIT: u64 = 1 << 18;

/// The VMID every TLBI carries (and every STE's S2VMID holds).
pub const VMID: u16 = 0;

const PAGE: u64 = PAGE_SIZE as u64;

/// How to turn a VA range into invalidation commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// One TLBI_NH_VA per page.
    PerPage,
    /// Range TLBI_NH_VA (needs SMMU_IDR3.RIL).
    Range,
    /// One TLBI_NH_ASID.
    Asid,
    /// Linux's policy (see the module documentation).
    Auto,
}

impl Strategy {
    /// Every strategy, for benchmarks and tests.
    pub const ALL: [Strategy; 4] = [Self::PerPage, Self::Range, Self::Asid, Self::Auto];

    /// The strategy called `name` (as [`Strategy::name`] spells it; `per_page` and `perpage`
    /// also accepted), for boot arguments.
    pub fn from_name(name: &str) -> Option<Strategy> {
        match name {
            "per-page" | "per_page" | "perpage" => Some(Self::PerPage),
            "range" => Some(Self::Range),
            "asid" => Some(Self::Asid),
            "auto" => Some(Self::Auto),
            _ => None,
        }
    }

    /// A short name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PerPage => "per-page",
            Self::Range => "range",
            Self::Asid => "asid",
            Self::Auto => "auto",
        }
    }
}

/// Planner settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannerConfig {
    strategy: Strategy,
    range_supported: bool,
    /// `Auto` without RIL goes ASID-wide from this many pages on.
    pub asid_threshold_pages: u64,
    /// Size of the TTB0 region in bits.
    pub va_bits: u8,
    /// Set Leaf = 1 in VA invalidations (only when the caller knows no table was freed).
    pub leaf: bool,
}

/// The planner cannot be configured or used as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanError {
    /// `Range` was requested but the SMMU does not implement range invalidation.
    RangeUnsupported,
    /// The range ends before it starts.
    EndBeforeStart { start: VirtAddr, end: VirtAddr },
    /// `va_bits` is outside 25..=48.
    VaBits(u8),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RangeUnsupported => {
                f.write_str("range invalidation requested but SMMU_IDR3.RIL is 0")
            }
            Self::EndBeforeStart { start, end } => {
                write!(f, "invalidation range {start}..{end} ends before it starts")
            }
            Self::VaBits(b) => write!(f, "a {b}-bit VA space is not supported (25..=48)"),
        }
    }
}

impl PlannerConfig {
    /// A planner using `strategy` on an SMMU with (`range_supported`) or without range
    /// invalidation, for a 48-bit TTB0 region, with Linux's 512-page threshold.
    pub fn new(strategy: Strategy, range_supported: bool) -> Result<Self, PlanError> {
        if strategy == Strategy::Range && !range_supported {
            return Err(PlanError::RangeUnsupported);
        }
        Ok(Self {
            strategy,
            range_supported,
            asid_threshold_pages: LINUX_MAX_TLBI_OPS,
            va_bits: 48,
            leaf: false,
        })
    }

    /// The same settings for a `va_bits`-bit TTB0 region.
    pub fn with_va_bits(self, va_bits: u8) -> Result<Self, PlanError> {
        if !(25..=48).contains(&va_bits) {
            return Err(PlanError::VaBits(va_bits));
        }
        Ok(Self { va_bits, ..self })
    }

    /// The same settings with another strategy.
    pub fn with_strategy(self, strategy: Strategy) -> Result<Self, PlanError> {
        if strategy == Strategy::Range && !self.range_supported {
            return Err(PlanError::RangeUnsupported);
        }
        Ok(Self { strategy, ..self })
    }

    /// The selected strategy.
    pub const fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Whether the SMMU implements range invalidation.
    pub const fn range_supported(&self) -> bool {
        self.range_supported
    }

    /// Plans the invalidation of `[start, end)` in `asid`.
    pub fn plan(&self, asid: u16, start: VirtAddr, end: VirtAddr) -> Result<Plan, PlanError> {
        if end < start {
            return Err(PlanError::EndBeforeStart { start, end });
        }
        let limit = 1u64 << self.va_bits;
        let first = start.align_down(PAGE).as_u64();
        // Rounding `end` up may overflow only near u64::MAX, far above the TTB0 region anyway.
        let last = end
            .checked_align_up(PAGE)
            .map_or(u64::MAX, |e| e.as_u64())
            .min(limit);
        let shape = if first == 0 && last == limit {
            Shape::Asid(AsidReason::WholeAddressSpace)
        } else if first >= last {
            Shape::Nothing
        } else {
            let pages = (last - first) >> PAGE_SHIFT;
            self.choose(pages)
        };
        Ok(Plan {
            shape,
            asid,
            start: first,
            end: last.max(first),
            leaf: self.leaf,
        })
    }

    fn choose(&self, pages: u64) -> Shape {
        match self.strategy {
            Strategy::Asid => Shape::Asid(AsidReason::Strategy),
            Strategy::PerPage if pages > PER_PAGE_HARD_LIMIT => {
                Shape::Asid(AsidReason::PerPageHardLimit)
            }
            Strategy::PerPage => Shape::PerPage,
            Strategy::Range => Shape::Range,
            Strategy::Auto if self.range_supported => Shape::Range,
            Strategy::Auto if pages >= self.asid_threshold_pages => {
                Shape::Asid(AsidReason::AboveThreshold)
            }
            Strategy::Auto => Shape::PerPage,
        }
    }
}

/// Why a plan invalidates the whole ASID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AsidReason {
    /// The request covered the whole address space.
    WholeAddressSpace,
    /// The strategy is `Asid`.
    Strategy,
    /// `Auto` without RIL and at least the threshold number of pages.
    AboveThreshold,
    /// `PerPage` beyond [`PER_PAGE_HARD_LIMIT`].
    PerPageHardLimit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Nothing,
    PerPage,
    Range,
    Asid(AsidReason),
}

/// What a plan does, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanKind {
    /// The range was empty (or entirely outside the TTB0 region): no command at all.
    Nothing,
    /// Single-page TLBI_NH_VA commands.
    PerPage { pages: u64 },
    /// Range TLBI_NH_VA commands.
    Range { pages: u64 },
    /// One TLBI_NH_ASID.
    Asid(AsidReason),
}

/// The invalidation commands for one `[start, end)` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    shape: Shape,
    asid: u16,
    /// Page-aligned, clipped bounds.
    start: u64,
    end: u64,
    leaf: bool,
}

impl Plan {
    /// What the plan does.
    pub fn kind(&self) -> PlanKind {
        let pages = (self.end - self.start) >> PAGE_SHIFT;
        match self.shape {
            Shape::Nothing => PlanKind::Nothing,
            Shape::PerPage => PlanKind::PerPage { pages },
            Shape::Range => PlanKind::Range { pages },
            Shape::Asid(r) => PlanKind::Asid(r),
        }
    }

    /// The ASID the plan invalidates in.
    pub const fn asid(&self) -> u16 {
        self.asid
    }

    /// The commands, without the final CMD_SYNC.
    pub fn commands(&self) -> PlanCommands {
        let state = match self.shape {
            Shape::Nothing => State::Done,
            Shape::Asid(_) => State::Asid,
            Shape::PerPage => State::PerPage { next: self.start },
            Shape::Range => {
                let mut pages = (self.end - self.start) >> PAGE_SHIFT;
                // eb6c97647be2: never leave a first command with NUM = SCALE = 0 (TTL is 0).
                if pages & u64::from(TLBI_RANGE_FIELD_MAX) == 1 {
                    pages += 1;
                }
                State::Range {
                    next: self.start,
                    pages,
                }
            }
        };
        PlanCommands { plan: *self, state }
    }

    /// Number of commands (without the CMD_SYNC) by kind.
    pub fn counts(&self) -> CommandCounts {
        let mut counts = CommandCounts::default();
        for c in self.commands() {
            counts.add(c.kind());
        }
        counts
    }

    /// Number of commands, without the CMD_SYNC.
    pub fn len(&self) -> u64 {
        match self.shape {
            Shape::Nothing => 0,
            Shape::Asid(_) => 1,
            Shape::PerPage => (self.end - self.start) >> PAGE_SHIFT,
            Shape::Range => self.commands().count() as u64,
        }
    }

    /// True if the plan sends no command at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Done,
    Asid,
    PerPage { next: u64 },
    Range { next: u64, pages: u64 },
}

/// Iterator over a plan's commands.
#[derive(Debug, Clone)]
pub struct PlanCommands {
    plan: Plan,
    state: State,
}

impl PlanCommands {
    fn va(&self, addr: u64, range: Option<TlbiRange>) -> Command {
        Command::TlbiNhVa(TlbiVa {
            vmid: VMID,
            asid: self.plan.asid,
            addr: VirtAddr(addr),
            leaf: self.plan.leaf,
            range,
        })
    }
}

impl Iterator for PlanCommands {
    type Item = Command;

    fn next(&mut self) -> Option<Command> {
        match self.state {
            State::Done => None,
            State::Asid => {
                self.state = State::Done;
                Some(Command::TlbiNhAsid {
                    vmid: VMID,
                    asid: self.plan.asid,
                })
            }
            State::PerPage { next } => {
                if next >= self.plan.end {
                    self.state = State::Done;
                    return None;
                }
                self.state = State::PerPage { next: next + PAGE };
                Some(self.va(next, None))
            }
            State::Range { next, pages } => {
                if pages == 0 {
                    self.state = State::Done;
                    return None;
                }
                let (scale, num) = range_step(pages);
                let Ok(range) = TlbiRange::new(Granule::K4, (num - 1) as u8, scale as u8, 0) else {
                    unreachable!("range_step yields 1 <= num <= 32, scale <= 31, not both minimal")
                };
                let covered = num << scale;
                self.state = State::Range {
                    next: next + (covered << PAGE_SHIFT),
                    pages: pages - covered,
                };
                Some(self.va(next, Some(range)))
            }
        }
    }
}

/// The next range command for `pages` remaining pages: `(SCALE, NUM + 1)`.
///
/// SCALE is the lowest set bit of the count and NUM + 1 the five bits from there, so each step
/// clears at least one set bit and at most five bits' worth. SCALE is a 5-bit field; counts
/// whose lowest set bit is above 31 are taken 32 << 31 pages (2^48 bytes) at a time.
fn range_step(pages: u64) -> (u32, u64) {
    const MAX: u64 = TLBI_RANGE_FIELD_MAX as u64;
    let scale = pages.trailing_zeros();
    if scale > MAX as u32 {
        (MAX as u32, (pages >> MAX).min(MAX + 1))
    } else {
        (scale, (pages >> scale) & MAX)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Strategy; // not proptest's
    use super::*;
    use crate::iommu::spec::command::CommandKind;
    use proptest::prelude::*;

    #[test]
    fn strategy_names_round_trip() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::from_name(s.name()), Some(s));
        }
        assert_eq!(Strategy::from_name("per_page"), Some(Strategy::PerPage));
        assert_eq!(Strategy::from_name("Range"), None);
        assert_eq!(Strategy::from_name(""), None);
    }

    /// What a list of commands invalidates, in pages: `None` = everything in the ASID.
    fn covered(plan: &Plan) -> Option<alloc::vec::Vec<(u64, u64)>> {
        let mut spans = alloc::vec::Vec::new();
        for c in plan.commands() {
            match c {
                Command::TlbiNhAsid { vmid, asid } => {
                    assert_eq!((vmid, asid), (VMID, plan.asid()));
                    return None;
                }
                Command::TlbiNhVa(va) => {
                    assert_eq!((va.vmid, va.asid), (VMID, plan.asid()));
                    c.encode().expect("every planned command is encodable");
                    let first = va.addr.as_u64() >> PAGE_SHIFT;
                    let n = va.range.map_or(1, |r| r.granules());
                    if let Some(r) = va.range {
                        assert_eq!(r.ttl, 0);
                        assert!(r.num != 0 || r.scale != 0, "reserved encoding emitted");
                    }
                    spans.push((first, first + n));
                }
                other => panic!("unexpected command {other:?}"),
            }
        }
        Some(spans)
    }

    fn check(cfg: &PlannerConfig, start: u64, pages: u64) -> Plan {
        let plan = cfg
            .plan(3, VirtAddr(start), VirtAddr(start + pages * PAGE))
            .unwrap();
        if let Some(mut spans) = covered(&plan) {
            spans.sort_unstable();
            let first = start >> PAGE_SHIFT;
            // Contiguous from the first page, with at most one page of excess.
            let mut at = first;
            for (s, e) in &spans {
                assert_eq!(*s, at, "gap or overlap in {spans:?}");
                at = *e;
            }
            assert!(
                at >= first + pages,
                "range not covered: {spans:?} for {pages} pages"
            );
            assert!(
                at <= first + pages + 1,
                "over-invalidation beyond one page: {spans:?}"
            );
        }
        plan
    }

    fn log2_ceil(n: u64) -> u64 {
        u64::from(64 - (n - 1).leading_zeros())
    }

    #[test]
    fn per_page_sends_one_command_per_page() {
        let cfg = PlannerConfig::new(Strategy::PerPage, true).unwrap();
        for pages in [1, 16, 512, 4096] {
            let plan = check(&cfg, 0x7f00_0000, pages);
            assert_eq!(plan.len(), pages);
            assert_eq!(plan.counts().get(CommandKind::TlbiNhVa), pages);
            assert_eq!(plan.kind(), PlanKind::PerPage { pages });
        }
    }

    #[test]
    fn range_commands_are_logarithmic() {
        let cfg = PlannerConfig::new(Strategy::Range, true).unwrap();
        for pages in [1, 2, 3, 16, 31, 32, 33, 63, 512, 4095, 4096, 1 << 30] {
            let plan = check(&cfg, 0x10_0000, pages);
            assert!(
                plan.len() <= log2_ceil(pages.max(2)) + 1,
                "{pages} pages: {}",
                plan.len()
            );
            assert_eq!(plan.counts().get(CommandKind::TlbiNhVaRange), plan.len());
        }
        // 4096 pages is a single command: NUM = 0, SCALE = 12.
        let plan = check(&cfg, 0, 4096);
        let cmds: alloc::vec::Vec<_> = plan.commands().collect();
        assert_eq!(cmds.len(), 1);
        let Command::TlbiNhVa(va) = cmds[0] else {
            panic!()
        };
        assert_eq!(
            va.range,
            Some(TlbiRange::new(Granule::K4, 0, 12, 0).unwrap())
        );
    }

    #[test]
    fn single_page_range_is_widened_not_reserved() {
        // One page would be NUM = SCALE = TTL = 0: the planner invalidates two pages instead.
        let cfg = PlannerConfig::new(Strategy::Range, true).unwrap();
        let plan = check(&cfg, 0x5000, 1);
        let cmds: alloc::vec::Vec<_> = plan.commands().collect();
        let Command::TlbiNhVa(va) = cmds[0] else {
            panic!()
        };
        assert_eq!(va.range.map(|r| (r.num, r.scale)), Some((0, 1)));
        // 33 pages = 0b100001 → 34 pages, one command (NUM = 16, SCALE = 1).
        let plan = check(&cfg, 0x5000, 33);
        assert_eq!(plan.len(), 1);
    }

    #[test]
    fn range_step_handles_scales_beyond_the_field() {
        assert_eq!(range_step(1 << 35), (31, 16));
        assert_eq!(range_step(1 << 40), (31, 32));
        assert_eq!(range_step(0b1011_0000), (4, 0b1011));
        let cfg = PlannerConfig::new(Strategy::Range, true).unwrap();
        check(&cfg, 0x1000, 1 << 35);
        check(&cfg, 1 << 47, (1 << 35) - 1);
    }

    #[test]
    fn asid_strategy_is_one_command() {
        let cfg = PlannerConfig::new(Strategy::Asid, false).unwrap();
        for pages in [1, 4096] {
            let plan = check(&cfg, 0x1000, pages);
            assert_eq!(plan.len(), 1);
            assert_eq!(plan.counts().get(CommandKind::TlbiNhAsid), 1);
            assert_eq!(plan.kind(), PlanKind::Asid(AsidReason::Strategy));
        }
    }

    #[test]
    fn auto_follows_linux() {
        let no_ril = PlannerConfig::new(Strategy::Auto, false).unwrap();
        assert_eq!(
            check(&no_ril, 0, 511).kind(),
            PlanKind::PerPage { pages: 511 }
        );
        assert_eq!(
            check(&no_ril, 0, 512).kind(),
            PlanKind::Asid(AsidReason::AboveThreshold)
        );
        let ril = PlannerConfig::new(Strategy::Auto, true).unwrap();
        assert_eq!(check(&ril, 0, 512).kind(), PlanKind::Range { pages: 512 });
        assert_eq!(
            check(&ril, 0, 1 << 20).kind(),
            PlanKind::Range { pages: 1 << 20 }
        );
        for cfg in [no_ril, ril] {
            let whole = cfg.plan(1, VirtAddr(0), VirtAddr(u64::MAX)).unwrap();
            assert_eq!(whole.kind(), PlanKind::Asid(AsidReason::WholeAddressSpace));
            assert_eq!(whole.len(), 1);
        }
    }

    #[test]
    fn every_strategy_sends_asid_for_the_whole_space() {
        for s in [Strategy::PerPage, Strategy::Range, Strategy::Auto] {
            let cfg = PlannerConfig::new(s, true).unwrap();
            let whole = cfg.plan(1, VirtAddr(0), VirtAddr(1 << 48)).unwrap();
            assert_eq!(
                whole.kind(),
                PlanKind::Asid(AsidReason::WholeAddressSpace),
                "{s:?}"
            );
        }
        let per_page = PlannerConfig::new(Strategy::PerPage, false).unwrap();
        let huge = per_page
            .plan(1, VirtAddr(0x1000), VirtAddr(1 << 40))
            .unwrap();
        assert_eq!(huge.kind(), PlanKind::Asid(AsidReason::PerPageHardLimit));
    }

    #[test]
    fn edges_and_bad_input() {
        let cfg = PlannerConfig::new(Strategy::PerPage, false).unwrap();
        // Empty range: nothing at all.
        let p = cfg.plan(1, VirtAddr(0x3000), VirtAddr(0x3000)).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.kind(), PlanKind::Nothing);
        // Unaligned bounds round outwards.
        let p = cfg.plan(1, VirtAddr(0x3fff), VirtAddr(0x4001)).unwrap();
        assert_eq!(p.kind(), PlanKind::PerPage { pages: 2 });
        // Above the TTB0 region there is nothing to invalidate.
        let p = cfg.plan(1, VirtAddr(1 << 48), VirtAddr(1 << 49)).unwrap();
        assert!(p.is_empty());
        // A range straddling the top is clipped.
        let p = cfg
            .plan(1, VirtAddr((1 << 48) - 0x2000), VirtAddr(1 << 50))
            .unwrap();
        assert_eq!(p.kind(), PlanKind::PerPage { pages: 2 });
        assert_eq!(
            cfg.plan(1, VirtAddr(0x2000), VirtAddr(0x1000)),
            Err(PlanError::EndBeforeStart {
                start: VirtAddr(0x2000),
                end: VirtAddr(0x1000)
            })
        );
        assert_eq!(
            PlannerConfig::new(Strategy::Range, false),
            Err(PlanError::RangeUnsupported)
        );
        assert_eq!(cfg.with_va_bits(49), Err(PlanError::VaBits(49)));
        let small = cfg.with_va_bits(39).unwrap();
        let p = small.plan(1, VirtAddr(0), VirtAddr(1 << 39)).unwrap();
        assert_eq!(p.kind(), PlanKind::Asid(AsidReason::WholeAddressSpace));
    }

    proptest! {
        #[test]
        fn every_strategy_covers_every_page(start_page in 0u64..(1 << 30), pages in 1u64..5000,
                                            s in 0usize..4, ril in any::<bool>()) {
            let strategy = Strategy::ALL[s];
            prop_assume!(strategy != Strategy::Range || ril);
            let cfg = PlannerConfig::new(strategy, ril).unwrap();
            let plan = check(&cfg, start_page << PAGE_SHIFT, pages);
            if let PlanKind::Range { .. } = plan.kind() {
                prop_assert!(plan.len() <= log2_ceil(pages.max(2)) + 1);
            }
        }

        #[test]
        fn huge_ranges_stay_bounded(start_page in 0u64..(1 << 35), pages in 1u64..(1 << 35)) {
            let cfg = PlannerConfig::new(Strategy::Range, true).unwrap();
            let plan = check(&cfg, start_page << PAGE_SHIFT, pages);
            prop_assert!(plan.len() <= log2_ceil(pages.max(2)) + 1);
        }
    }
}
