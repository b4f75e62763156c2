//! Fault injection: which failures to provoke, where, and how many were survived.
//!
//! Off by default. The soak (`job=soak`) injects the kinds named by `fault=<kind>[,<kind>…]`
//! (or `fault=all`) at random operations: each operation of a soak round rolls a die seeded by
//! `fault.seed=` and, with probability `fault.rate=` per mille (default 125), arms one fault
//! for that operation only, then checks the documented outcome. The `faults` KTAP suite arms
//! each kind directly. Where each kind is injected:
//!
//! | kind | injected at | documented outcome |
//! |---|---|---|
//! | `alloc` | the address spaces' frame allocator (`CpuMm::frames`), the n-th allocation of one `mmap` on this CPU | `MmError::OutOfMemory`, the region is gone and nothing of it is mapped |
//! | `notifier` | an interval subscriber refusing a non-blockable range (`munmap_nonblocking`) | `MmError::WouldBlock`, nothing changed, the page still translates for CPU and device |
//! | `sync` | the driver/backend boundary ([`crate::iommu::backend::inject`]): CMDQ_CONS stops moving for one CMD_SYNC | `SmmuError::SyncTimeout`; SVA marks the context broken and quiesces it (all DMA faults), the unmap returns; the owner rebinds |
//! | `cmdq` | QEMU: the backend boundary holds CMDQ_PROD before a TLBI and reports CMDQ_CONS.ERR = CERROR_ILL with GERROR.CMDQ_ERR; model: the model's own one-shot command error, on whatever command (any CPU's) it consumes next | the driver replaces the command with a CMD_SYNC and acknowledges GERRORN; a refused TLBI is re-sent for the whole ASID (by the CPU that queued it); a refused CMD_SYNC loses nothing and owes no re-send |
//! | `evtq` | a real overflow: the event queue shrunk to 128 entries while a faulting 4 KiB DMA makes 1024 events | reported once (OVFLG on the model, GERROR.EVENTQ_ABT_ERR on QEMU), later events arrive |
//! | `teardown` | a DMA in flight while the bound address space is torn down | `release` quiesces first: the DMA faults quietly and never lands after the teardown |
//!
//! This module is portable (kinds, boot-argument parsing, counters); the hooks live where the
//! faults happen (the allocation trigger in [`crate::mm::inject`]).

use core::fmt;

// Core atomics, like `trace`: these are plain counters outside the loom-modelled core, and
// their statics must be const-constructible under `--cfg loom` too.
use core::sync::atomic::{AtomicU64, Ordering};

/// A kind of injectable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A frame allocation fails in the middle of an `mmap`.
    Alloc,
    /// An interval subscriber refuses a non-blockable invalidation.
    NotifierRefuse,
    /// A CMD_SYNC never completes (as seen by the driver).
    SyncTimeout,
    /// The SMMU stops on a command with CERROR_ILL.
    CmdqError,
    /// The event queue overflows.
    EventqOverflow,
    /// A DMA races the teardown of its address space.
    TeardownRace,
    /// The last user of a bound address space goes while other CPUs unmap, bind and unbind.
    ReleaseRace,
}

impl Fault {
    /// Every kind, in report order.
    pub const ALL: [Fault; 7] = [
        Fault::Alloc,
        Fault::NotifierRefuse,
        Fault::SyncTimeout,
        Fault::CmdqError,
        Fault::EventqOverflow,
        Fault::TeardownRace,
        Fault::ReleaseRace,
    ];

    /// The name used in `fault=`.
    pub const fn name(self) -> &'static str {
        match self {
            Fault::Alloc => "alloc",
            Fault::NotifierRefuse => "notifier",
            Fault::SyncTimeout => "sync",
            Fault::CmdqError => "cmdq",
            Fault::EventqOverflow => "evtq",
            Fault::TeardownRace => "teardown",
            Fault::ReleaseRace => "release",
        }
    }

    /// The kind called `name` in `fault=`.
    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of fault kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultSet(u8);

impl FaultSet {
    /// No fault.
    pub const NONE: FaultSet = FaultSet(0);

    /// Every kind.
    pub fn all() -> FaultSet {
        Fault::ALL.into_iter().fold(FaultSet::NONE, FaultSet::with)
    }

    /// This set and `f`.
    pub const fn with(self, f: Fault) -> FaultSet {
        FaultSet(self.0 | f.bit())
    }

    /// This set without `f`.
    pub const fn without(self, f: Fault) -> FaultSet {
        FaultSet(self.0 & !f.bit())
    }

    /// True if `f` is in the set.
    pub const fn contains(self, f: Fault) -> bool {
        self.0 & f.bit() != 0
    }

    /// True if the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds in the set, in report order.
    pub fn iter(self) -> impl Iterator<Item = Fault> {
        Fault::ALL.into_iter().filter(move |f| self.contains(*f))
    }

    /// Parses `kind[,kind…]` or `all`.
    pub fn parse(s: &str) -> Result<FaultSet, FaultConfigError> {
        if s == "all" {
            return Ok(FaultSet::all());
        }
        s.split(',')
            .filter(|k| !k.is_empty())
            .try_fold(FaultSet::NONE, |set, k| {
                Fault::from_name(k)
                    .map(|f| set.with(f))
                    .ok_or_else(|| FaultConfigError::UnknownKind(alloc::string::String::from(k)))
            })
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, k) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(k.name())?;
        }
        Ok(())
    }
}

/// A `fault=` / `fault.rate=` boot argument that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultConfigError {
    /// Not one of the kinds of [`Fault::ALL`].
    UnknownKind(alloc::string::String),
    /// `fault.rate=` is not in 1..=1000 (per mille).
    BadRate(u64),
}

impl fmt::Display for FaultConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKind(k) => write!(
                f,
                "unknown fault kind {k:?} (alloc, notifier, sync, cmdq, evtq, teardown, all)"
            ),
            Self::BadRate(r) => write!(f, "fault.rate={r} is not in 1..=1000 (per mille)"),
        }
    }
}

/// What to inject, from the boot arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultConfig {
    pub kinds: FaultSet,
    /// Seed of the dice (independent of the workload's `seed=`, so a fault pattern can be
    /// varied over the same workload).
    pub seed: u64,
    /// Chance, per mille, that an operation gets a fault.
    pub rate_per_mille: u32,
}

impl FaultConfig {
    /// Default chance of a fault per operation: 1 in 8.
    pub const DEFAULT_RATE: u32 = 125;

    /// Nothing injected.
    pub const OFF: FaultConfig = FaultConfig {
        kinds: FaultSet::NONE,
        seed: 0,
        rate_per_mille: Self::DEFAULT_RATE,
    };

    /// From the values of `fault=`, `fault.seed=` and `fault.rate=` (each optional).
    pub fn new(
        kinds: Option<&str>,
        seed: Option<u64>,
        rate: Option<u64>,
    ) -> Result<FaultConfig, FaultConfigError> {
        let kinds = kinds.map_or(Ok(FaultSet::NONE), FaultSet::parse)?;
        let rate = match rate {
            None => Self::DEFAULT_RATE,
            Some(r @ 1..=1000) => r as u32,
            Some(r) => return Err(FaultConfigError::BadRate(r)),
        };
        Ok(FaultConfig {
            kinds,
            seed: seed.unwrap_or(0x5eed_fa17),
            rate_per_mille: rate,
        })
    }

    /// True if any fault is to be injected.
    pub fn enabled(&self) -> bool {
        !self.kinds.is_empty()
    }
}

/// The fault dice of one soak thread (splitmix64: tiny, and the same on every board).
#[derive(Debug, Clone)]
pub struct FaultDice {
    state: u64,
    cfg: FaultConfig,
}

impl FaultDice {
    /// Dice for stream `stream` (e.g. the CPU) of `cfg`.
    pub fn new(cfg: FaultConfig, stream: u64) -> Self {
        Self {
            state: cfg.seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            cfg,
        }
    }

    /// The next random number.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Whether the next operation gets a fault, and which of the enabled kinds in `allowed`.
    pub fn roll(&mut self, allowed: FaultSet) -> Option<Fault> {
        let hit = self.next_u64() % 1000 < u64::from(self.cfg.rate_per_mille);
        let kinds: alloc::vec::Vec<Fault> = self
            .cfg
            .kinds
            .iter()
            .filter(|k| allowed.contains(*k))
            .collect();
        if !hit || kinds.is_empty() {
            return None;
        }
        Some(kinds[(self.next_u64() % kinds.len() as u64) as usize])
    }
}

/// How many faults of each kind were injected, and how many of those the kernel survived with
/// the documented outcome.
#[derive(Debug, Default)]
pub struct FaultCounters {
    injected: [AtomicU64; Fault::ALL.len()],
    survived: [AtomicU64; Fault::ALL.len()],
}

impl FaultCounters {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            injected: [const { AtomicU64::new(0) }; Fault::ALL.len()],
            survived: [const { AtomicU64::new(0) }; Fault::ALL.len()],
        }
    }

    /// Records one injection of `f` and whether it was survived.
    pub fn record(&self, f: Fault, survived: bool) {
        self.injected[f as usize].fetch_add(1, Ordering::Relaxed);
        if survived {
            self.survived[f as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (injected, survived) of `f`.
    pub fn get(&self, f: Fault) -> (u64, u64) {
        (
            self.injected[f as usize].load(Ordering::Relaxed),
            self.survived[f as usize].load(Ordering::Relaxed),
        )
    }

    /// (injected, survived) over every kind.
    pub fn total(&self) -> (u64, u64) {
        Fault::ALL.into_iter().fold((0, 0), |(i, s), f| {
            let (fi, fs) = self.get(f);
            (i + fi, s + fs)
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn parses_kinds_rates_and_refuses_nonsense() {
        let c = FaultConfig::new(Some("alloc,sync"), Some(7), Some(500)).unwrap();
        assert!(c.kinds.contains(Fault::Alloc) && c.kinds.contains(Fault::SyncTimeout));
        assert!(!c.kinds.contains(Fault::CmdqError));
        assert_eq!((c.seed, c.rate_per_mille), (7, 500));
        assert_eq!(alloc::format!("{}", c.kinds), "alloc,sync");
        let all = FaultConfig::new(Some("all"), None, None).unwrap();
        assert_eq!(all.kinds.iter().count(), Fault::ALL.len());
        assert_eq!(all.rate_per_mille, FaultConfig::DEFAULT_RATE);
        assert!(!FaultConfig::new(None, None, None).unwrap().enabled());
        assert_eq!(
            FaultConfig::new(Some("alloc,bogus"), None, None),
            Err(FaultConfigError::UnknownKind("bogus".into()))
        );
        assert_eq!(
            FaultConfig::new(Some("alloc"), None, Some(0)),
            Err(FaultConfigError::BadRate(0))
        );
        assert_eq!(
            FaultConfig::new(Some("alloc"), None, Some(1001)),
            Err(FaultConfigError::BadRate(1001))
        );
        for f in Fault::ALL {
            assert_eq!(Fault::from_name(f.name()), Some(f));
        }
    }

    #[test]
    fn dice_follow_the_rate_and_the_allowed_kinds() {
        let cfg = FaultConfig::new(Some("alloc,cmdq"), Some(1), Some(250)).unwrap();
        let mut d = FaultDice::new(cfg, 0);
        let rolls: alloc::vec::Vec<_> = (0..4000).map(|_| d.roll(FaultSet::all())).collect();
        let hits = rolls.iter().filter(|r| r.is_some()).count();
        assert!((800..1200).contains(&hits), "{hits} hits at 25%");
        assert!(rolls
            .iter()
            .flatten()
            .all(|f| matches!(f, Fault::Alloc | Fault::CmdqError)));
        let only_alloc = FaultSet::NONE.with(Fault::Alloc);
        assert!((0..1000)
            .filter_map(|_| d.roll(only_alloc))
            .all(|f| f == Fault::Alloc));
        assert_eq!(d.roll(FaultSet::NONE.with(Fault::TeardownRace)), None);
        // Same seed and stream, same faults.
        let mut a = FaultDice::new(cfg, 3);
        let mut b = FaultDice::new(cfg, 3);
        assert!((0..100).all(|_| a.roll(FaultSet::all()) == b.roll(FaultSet::all())));
    }

    #[test]
    fn counters_add_up() {
        let c = FaultCounters::new();
        c.record(Fault::Alloc, true);
        c.record(Fault::Alloc, false);
        c.record(Fault::EventqOverflow, true);
        assert_eq!(c.get(Fault::Alloc), (2, 1));
        assert_eq!(c.total(), (3, 2));
    }
}
