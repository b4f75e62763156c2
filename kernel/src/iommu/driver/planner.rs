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
//! **Free cover.** Range plans (`Range`, and `Auto` with RIL) whose exact encoding takes more
//! than one command may be replaced by one command over a larger range containing the request
//! (a *cover*), when the address space's page tables say the extra pages map nothing: nothing
//! cached is lost, and 4095 pages take 1 command instead of 3. The planner asks through the
//! [`MappedQuery`] seam ([`Plan::cover`]), only when the exact encoding takes more than one
//! command ([`Plan::may_cover`]), and at most [`COVER_QUERY_BUDGET`] descriptor reads per
//! invalidation; an answer it cannot get keeps the exact encoding. See [`Plan::cover`] for
//! the candidates and why any answer, even a wrong one, keeps the invalidation complete.
//! [`PlannerConfig::with_free_cover`] turns it off (Linux's exact encoding always).
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

/// Page-table descriptors the free-cover query may read for one invalidation (all candidates
/// together): a few hundred instructions, about what one more command costs the CPU.
pub const COVER_QUERY_BUDGET: u32 = 64;

/// The input regions of table descriptors at levels 2, 1 and 0 (4 KiB granule): what one
/// walk-cache entry can cover.
const TABLE_SPANS: [u64; 3] = [1 << 21, 1 << 30, 1 << 39];

/// The planner's question to the page tables of the address space whose ASID it invalidates.
pub trait MappedQuery {
    /// Whether anything is mapped in `[start, end)` (page aligned, non-empty, inside the TTB0
    /// region), reading at most `*budget` page-table descriptors (each read takes one).
    /// `Some(false)` only if the tables show every page of it unmapped; `None` if the answer
    /// is not known within the budget.
    fn maps_anything(&self, start: u64, end: u64, budget: &mut u32) -> Option<bool>;
}

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
    /// Range plans may take a free cover ([`Plan::cover`]); off = the exact encoding always.
    free_cover: bool,
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
            free_cover: true,
        })
    }

    /// The same settings with the free cover allowed (the default) or not.
    pub const fn with_free_cover(self, free_cover: bool) -> Self {
        Self { free_cover, ..self }
    }

    /// Whether range plans may take a free cover.
    pub const fn free_cover(&self) -> bool {
        self.free_cover
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
            cover_allowed: self.free_cover,
            limit,
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
    /// One range command over the plan's bounds, which contain the `requested` pages.
    Cover {
        requested: (u64, u64),
    },
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
    /// One range TLBI_NH_VA over `covered` pages that contain the `pages` requested; the
    /// page tables showed the others unmapped.
    Cover { pages: u64, covered: u64 },
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
    /// The configuration allows a free cover.
    cover_allowed: bool,
    /// The end of the TTB0 region.
    limit: u64,
}

impl Plan {
    /// What the plan does.
    pub fn kind(&self) -> PlanKind {
        let pages = (self.end - self.start) >> PAGE_SHIFT;
        match self.shape {
            Shape::Nothing => PlanKind::Nothing,
            Shape::PerPage => PlanKind::PerPage { pages },
            Shape::Range => PlanKind::Range { pages },
            Shape::Cover {
                requested: (first, last),
            } => PlanKind::Cover {
                pages: (last - first) >> PAGE_SHIFT,
                covered: pages,
            },
            Shape::Asid(r) => PlanKind::Asid(r),
        }
    }

    /// True if [`Plan::cover`] might make this plan cheaper: a range plan whose exact encoding
    /// takes more than one command, with the cover allowed. Costs no query, so the driver asks
    /// this before it looks anything up: a plan that is one command already never pays.
    pub fn may_cover(&self) -> bool {
        self.cover_allowed && self.shape == Shape::Range && exact_commands(self.pages()) > 1
    }

    /// This plan, or one range command over a *cover* of it when `tables` say the cover's
    /// extra pages map nothing.
    ///
    /// The cover has the fewest pages one command can cover, `m = (NUM+1) << SCALE >= n`
    /// (`n` the pages requested), and the first candidate whose extra pages are all unmapped
    /// wins: the request extended upwards, downwards, and rounded out to the `m`-block aligned
    /// on `m`'s own power of two, each inside the TTB0 region. Only the extra pages are asked
    /// about, rounded out to the whole region of any table they reach that the request does
    /// not (with Leaf = 0 the cover drops that table's walk-cache entry, which the exact plan
    /// keeps: a live neighbour in it would lose it), within [`COVER_QUERY_BUDGET`] descriptor
    /// reads for all candidates together; without a yes for every extra part, the exact plan
    /// stays.
    ///
    /// Invariants (the tests check each): every candidate contains every requested page, so
    /// the cover invalidates at least what the exact plan does, whatever `tables` answer;
    /// Leaf and TTL are the exact plan's (TTL = 0, Leaf as configured), so walk-cache entries
    /// of freed tables go as before; a plan is covered only once (the result never
    /// [`may_cover`](Self::may_cover)).
    ///
    /// Concurrency: the answer only decides what *else* is dropped, never what the request
    /// needs. A neighbour another CPU maps between the query and the command had nothing
    /// cached before the query, so at worst it loses a fresh entry (a miss, not a stale hit);
    /// a neighbour being unmapped meanwhile is invalidated by its own unmap, whatever this
    /// one covers.
    pub fn cover(self, tables: &dyn MappedQuery) -> Plan {
        if !self.may_cover() {
            return self;
        }
        let m = single_command_pages(self.pages());
        if exact_commands(m) != 1 {
            return self;
        }
        let span = m << PAGE_SHIFT;
        let mut budget = COVER_QUERY_BUDGET;
        for (start, end) in self.cover_candidates(span) {
            let mut free =
                |a: u64, b: u64| a >= b || tables.maps_anything(a, b, &mut budget) == Some(false);
            if free(self.below_touched(start), self.start)
                && free(self.end, self.above_touched(end))
            {
                return Plan {
                    shape: Shape::Cover {
                        requested: (self.start, self.end),
                    },
                    start,
                    end,
                    ..self
                };
            }
        }
        self
    }

    /// Where the tables a cover starting at `start` touches below the request begin: with
    /// Leaf = 0 its command also drops the walk-cache entries of every table whose region it
    /// overlaps (§4.4.1), so a table region that does not reach the request (whose entries
    /// the exact plan keeps) must map nothing either, down to its start.
    fn below_touched(&self, start: u64) -> u64 {
        TABLE_SPANS
            .iter()
            .filter(|&&s| !self.leaf && start < self.start & !(s - 1))
            .map(|&s| start & !(s - 1))
            .fold(start, u64::min)
    }

    /// The end of the table regions a cover ending at `end` touches above the request (see
    /// [`below_touched`](Self::below_touched)), inside the TTB0 region.
    fn above_touched(&self, end: u64) -> u64 {
        TABLE_SPANS
            .iter()
            .filter(|&&s| !self.leaf && self.end.next_multiple_of(s) < end)
            .map(|&s| end.next_multiple_of(s))
            .fold(end, u64::max)
            .min(self.limit)
    }

    /// The `[start, end)` ranges of `span` bytes tried as covers, in order.
    fn cover_candidates(&self, span: u64) -> impl Iterator<Item = (u64, u64)> {
        let (first, last, limit) = (self.start, self.end, self.limit);
        let up = first
            .checked_add(span)
            .filter(|&e| e <= limit)
            .map(|e| (first, e));
        let down = last.checked_sub(span).map(|s| (s, last));
        // Aligned on the largest power of two dividing `span`.
        let align = 1u64 << span.trailing_zeros();
        let base = first & !(align - 1);
        let aligned = Some((base, base + span))
            .filter(|&c| c.1 >= last && c.1 <= limit && Some(c) != up && Some(c) != down);
        [up, down, aligned].into_iter().flatten()
    }

    /// Pages between the plan's bounds.
    fn pages(&self) -> u64 {
        (self.end - self.start) >> PAGE_SHIFT
    }

    /// The ASID the plan invalidates in.
    pub const fn asid(&self) -> u16 {
        self.asid
    }

    /// The commands, without the final CMD_SYNC.
    pub fn commands(&self) -> PlanCommands<'_> {
        let state = match self.shape {
            Shape::Nothing => State::Done,
            Shape::Asid(_) => State::Asid,
            Shape::PerPage => State::PerPage { next: self.start },
            Shape::Range | Shape::Cover { .. } => State::Range {
                next: self.start,
                pages: encoded_pages(self.pages()),
            },
        };
        PlanCommands { plan: self, state }
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
            Shape::Range | Shape::Cover { .. } => exact_commands(self.pages()),
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
pub struct PlanCommands<'p> {
    plan: &'p Plan,
    state: State,
}

impl PlanCommands<'_> {
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

impl Iterator for PlanCommands<'_> {
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

/// The pages the range commands for `pages` pages cover: `pages`, or one more where
/// eb6c97647be2 forbids a first command with NUM = SCALE = 0 (TTL is 0).
fn encoded_pages(pages: u64) -> u64 {
    if pages & u64::from(TLBI_RANGE_FIELD_MAX) == 1 {
        pages + 1
    } else {
        pages
    }
}

/// The number of range commands the exact encoding of `pages` pages takes.
fn exact_commands(pages: u64) -> u64 {
    let mut left = encoded_pages(pages);
    let mut commands = 0;
    while left != 0 {
        let (scale, num) = range_step(left);
        left -= num << scale;
        commands += 1;
    }
    commands
}

/// The fewest pages, at least `pages` (≥ 2), that one range command covers: `(NUM + 1) <<
/// SCALE` with the five significant bits of `pages` rounded up.
fn single_command_pages(pages: u64) -> u64 {
    let bits = u64::BITS - pages.leading_zeros();
    let scale = bits.saturating_sub(TLBI_RANGE_FIELD_MAX.count_ones());
    pages.div_ceil(1 << scale) << scale
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

    /// Page tables as a set of mapped page numbers; each question costs one descriptor read.
    struct FakeTables {
        mapped: alloc::collections::BTreeSet<u64>,
        asked: core::cell::Cell<u32>,
    }

    impl FakeTables {
        fn new(pages: impl IntoIterator<Item = u64>) -> Self {
            Self {
                mapped: pages.into_iter().collect(),
                asked: 0.into(),
            }
        }

        fn mapped_in(&self, start: u64, end: u64) -> bool {
            self.mapped
                .range(start >> PAGE_SHIFT..end >> PAGE_SHIFT)
                .next()
                .is_some()
        }
    }

    impl MappedQuery for FakeTables {
        fn maps_anything(&self, start: u64, end: u64, budget: &mut u32) -> Option<bool> {
            assert!(start < end && start % PAGE == 0 && end % PAGE == 0 && end <= 1 << 48);
            self.asked.set(self.asked.get() + 1);
            *budget = budget.checked_sub(1)?;
            Some(self.mapped_in(start, end))
        }
    }

    /// A query that must not be made.
    struct NoQuery;

    impl MappedQuery for NoQuery {
        fn maps_anything(&self, start: u64, end: u64, _: &mut u32) -> Option<bool> {
            panic!("queried {start:#x}..{end:#x} for a plan that is one command already")
        }
    }

    fn range_plan(start_page: u64, pages: u64) -> Plan {
        let cfg = PlannerConfig::new(Strategy::Range, true).unwrap();
        cfg.plan(
            3,
            VirtAddr(start_page * PAGE),
            VirtAddr((start_page + pages) * PAGE),
        )
        .unwrap()
    }

    /// The pages `plan`'s commands invalidate, as one contiguous span (checked).
    fn span(plan: &Plan) -> (u64, u64) {
        let mut spans = covered(plan).expect("a range plan is not ASID-wide");
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert_eq!(w[0].1, w[1].0, "gap or overlap in {spans:?}");
        }
        (spans[0].0, spans[spans.len() - 1].1)
    }

    #[test]
    fn one_command_plans_never_ask_the_page_tables() {
        for pages in [1, 2, 16, 31, 33, 512, 4096, 1 << 18] {
            let plan = range_plan(0x40_0000, pages);
            assert!(!plan.may_cover(), "{pages} pages");
            assert_eq!(plan.cover(&NoQuery), plan);
        }
        for s in [Strategy::PerPage, Strategy::Asid] {
            let cfg = PlannerConfig::new(s, true).unwrap();
            let plan = cfg
                .plan(3, VirtAddr(0x1000), VirtAddr(0x1000 + 4095 * PAGE))
                .unwrap();
            assert!(!plan.may_cover());
            assert_eq!(plan.cover(&NoQuery), plan);
        }
    }

    #[test]
    fn a_4095_page_range_with_unmapped_neighbours_is_one_command() {
        let first = 0x40_0000; // pages: 16 GiB, 4096-page aligned
        let exact = range_plan(first, 4095);
        assert_eq!(exact.len(), 3);
        let tables = FakeTables::new((first..first + 4095).chain([first + 8192]));
        let plan = exact.cover(&tables);
        assert_eq!(
            plan.kind(),
            PlanKind::Cover {
                pages: 4095,
                covered: 4096
            }
        );
        assert_eq!(plan.len(), 1);
        assert!(!plan.may_cover(), "covered twice");
        let cmds: alloc::vec::Vec<_> = plan.commands().collect();
        let [Command::TlbiNhVa(va)] = cmds[..] else {
            panic!("{cmds:?}")
        };
        assert_eq!((va.addr.as_u64(), va.leaf), (first * PAGE, false));
        assert_eq!(
            va.range,
            Some(TlbiRange::new(Granule::K4, 0, 12, 0).unwrap())
        );
        assert_eq!(tables.asked.get(), 1, "only the extra page is asked about");
    }

    #[test]
    fn mapped_neighbours_keep_the_exact_encoding() {
        let first = 0x40_0001;
        let exact = range_plan(first, 4095);
        // Up: first + 4095 mapped; down: first - 1 mapped; aligned: the same pages.
        let tables = FakeTables::new([first - 1, first + 4095]);
        assert_eq!(exact.cover(&tables), exact);
        // Either side free is enough.
        let up_free = FakeTables::new([first - 1]);
        assert_eq!(span(&exact.cover(&up_free)), (first, first + 4096));
        let down_free = FakeTables::new([first + 4095]);
        assert_eq!(span(&exact.cover(&down_free)), (first - 1, first + 4095));
        // Rounded out on both sides: 4094 pages need 2 more for one command, one on each side.
        let both = range_plan(first, 4094);
        let tables = FakeTables::new([first - 2, first + 4095]);
        assert_eq!(span(&both.cover(&tables)), (first - 1, first + 4095));
    }

    #[test]
    fn the_cover_can_be_turned_off() {
        let cfg = PlannerConfig::new(Strategy::Auto, true)
            .unwrap()
            .with_free_cover(false);
        assert!(!cfg.free_cover());
        let plan = cfg.plan(3, VirtAddr(0), VirtAddr(4095 * PAGE)).unwrap();
        assert!(!plan.may_cover());
        assert_eq!(plan.cover(&NoQuery), plan);
    }

    #[test]
    fn the_cover_keeps_leaf_and_ttl() {
        for leaf in [false, true] {
            let cfg = PlannerConfig {
                leaf,
                ..PlannerConfig::new(Strategy::Range, true).unwrap()
            };
            let exact = cfg
                .plan(3, VirtAddr(0x1000), VirtAddr(0x1000 + 4095 * PAGE))
                .unwrap();
            let plan = exact.cover(&FakeTables::new([]));
            assert!(matches!(plan.kind(), PlanKind::Cover { .. }));
            for c in exact.commands().chain(plan.commands()) {
                let Command::TlbiNhVa(va) = c else { panic!() };
                assert_eq!(va.leaf, leaf);
                assert_eq!(va.range.map(|r| r.ttl), Some(0));
            }
        }
    }

    #[test]
    fn the_query_is_bounded_and_stays_inside_the_ttb0_region() {
        let exact = range_plan(0x40_0001, 4095);
        let tables = FakeTables::new([0x40_0000, 0x40_0001 + 4095]);
        exact.cover(&tables);
        assert!(tables.asked.get() <= COVER_QUERY_BUDGET);
        // Against the top of the region: only downwards (the fake checks every bound).
        let top = (1u64 << 36) - 4095;
        let plan = range_plan(top, 4095).cover(&FakeTables::new([]));
        assert_eq!(span(&plan), (top - 1, 1 << 36));
        // At the bottom: only upwards.
        let plan = range_plan(0, 4095).cover(&FakeTables::new([]));
        assert_eq!(span(&plan), (0, 4096));
        // A query out of budget is a "don't know": exact.
        struct Spent;
        impl MappedQuery for Spent {
            fn maps_anything(&self, _: u64, _: u64, budget: &mut u32) -> Option<bool> {
                *budget = 0;
                None
            }
        }
        let exact = range_plan(0x40_0000, 4095);
        assert_eq!(exact.cover(&Spent), exact);
    }

    #[test]
    fn single_command_pages_is_the_smallest_single_command() {
        for n in 2u64..3000 {
            let m = single_command_pages(n);
            assert!(m >= n && exact_commands(m) == 1, "{n} -> {m}");
            assert!(
                (n..m).all(|k| exact_commands(k) > 1 || encoded_pages(k) != k),
                "{n} -> {m}"
            );
        }
        assert_eq!(single_command_pages(4095), 4096);
        assert_eq!(single_command_pages(5000), 20 << 8);
    }

    proptest! {
        /// For random ranges and random page-table contents around them: the commands cover
        /// the range; with a cover taken every extra page is unmapped; otherwise the plan is
        /// the exact one, and neither the upward nor the downward cover was free.
        #[test]
        fn the_free_cover_contains_the_range_and_only_unmapped_pages(
            start_page in 1u64..(1 << 30), pages in 2u64..70_000,
            near in proptest::collection::vec((any::<bool>(), 0u64..128), 0..4),
        ) {
            let exact = range_plan(start_page, pages);
            let end_page = start_page + pages;
            let mapped = (start_page..end_page).step_by(97).chain(near.iter().map(|&(below, d)| {
                if below { start_page.saturating_sub(d + 1) } else { end_page + d }
            }));
            let tables = FakeTables::new(mapped);
            let plan = exact.cover(&tables);
            let (first, last) = span(&plan);
            prop_assert!(first <= start_page && last >= end_page, "{first}..{last}");
            match plan.kind() {
                PlanKind::Cover { pages: p, covered } => {
                    prop_assert_eq!((p, covered), (pages, last - first));
                    prop_assert_eq!(plan.len(), 1);
                    prop_assert!(exact.len() > 1);
                    let below = exact.below_touched(first * PAGE);
                    let above = exact.above_touched(last * PAGE);
                    prop_assert!(!tables.mapped_in(below, start_page * PAGE));
                    prop_assert!(!tables.mapped_in(end_page * PAGE, above));
                }
                _ => {
                    prop_assert_eq!(plan, exact);
                    if exact.len() > 1 {
                        let m = single_command_pages(pages);
                        let up_end = exact.above_touched((start_page + m) * PAGE);
                        let up_free = !tables.mapped_in(end_page * PAGE, up_end);
                        let down_blocked = m - pages > start_page || {
                            let down_start = exact.below_touched((end_page - m) * PAGE);
                            tables.mapped_in(down_start, start_page * PAGE)
                        };
                        prop_assert!(!up_free && down_blocked, "a free cover was missed");
                    }
                }
            }
            prop_assert!(tables.asked.get() <= COVER_QUERY_BUDGET);
        }

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
