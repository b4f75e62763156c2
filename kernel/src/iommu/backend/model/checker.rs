//! The coherence checker: every translation the model serves from a cache (IOTLB or
//! configuration cache) is compared with a translation from scratch — fresh STE, fresh CD,
//! fresh table walk. If the two disagree on the outcome of *this* access (one succeeds and the
//! other faults, or they reach different frames), the device used a stale translation: the
//! software that changed the tables did not invalidate (or did not wait for the invalidation)
//! before letting the change be relied upon.
//!
//! The kernel tells the checker about its unmaps ([`UnmapNote`]) so a record can name the last
//! unmap that covered the VA: that is the operation whose invalidation went missing.
//!
//! Concurrency: while an unmap is in progress (PTEs already cleared, invalidation not yet
//! complete) a device may legitimately still use the old translation — the architecture only
//! promises the invalidation has taken effect once the CMD_SYNC completes, and the kernel only
//! promises it once the unmap returns. The kernel brackets such windows with
//! [`super::SmmuModel::begin_unmap`] / [`super::SmmuModel::end_unmap`]; a mismatch inside an
//! open window of the same ASID is counted as a *race* and not recorded, if that window's
//! operation can be what made the entry stale ([`Checker::racing`]):
//!
//! * an **IOTLB leaf**: the window covers the VA, the leaf was filled after every
//!   *completed* unmap covering the VA began, and it still agreed with memory when the window
//!   opened. An older leaf should have gone with that unmap's invalidation: its use is that
//!   unmap's bug, whatever window happens to be open now; one already stale at the opening
//!   was made so by a change before the window (one no unmap was noted for).
//! * a **table descriptor** (walk cache): the window overlaps the region the descriptor maps
//!   (unlinking a table changes the walk of its whole span, not just the unmapped pages), and
//!   memory still held the descriptor when the window opened. If the walk *reached memory*,
//!   the window must cover the VA: the table still maps it, so only an unmap of the VA can be
//!   taking that translation away (an unlink under a live page, or a table replaced by
//!   another, is no unmap's doing).
//! * a **configuration** (STE/CD): the window covers the VA, and the cached configuration still
//!   agreed with memory when the window opened. If the use reached memory, memory's
//!   configuration must translate nothing now (STE invalid or abort, CD invalid or walks
//!   disabled): an unmap takes a context away (release's quiesce, detach), it never gives the
//!   stream another one.
//!
//! The last two are not judged by the last unmap of the VA: an unmap's TLBIs never remove
//! configuration, and a leaf-only unmap may keep table descriptors, so an entry older than that
//! unmap is no sign of a missed invalidation. What is one is an entry that was already stale
//! when the window opened: the change came before the window, so the window cannot excuse it.
//! A use that relied on a stale configuration *and* a cached leaf or table descriptor races
//! only if both do. Any other mismatch is a violation. (Single-threaded callers can simply call
//! [`super::SmmuModel::note_unmap`] for each unmap.)
//!
//! A walk resumed from a walk-cache entry is checked only when memory no longer holds the
//! cached table descriptor or one the walk that filled it read above it: otherwise it read
//! the same tables a fresh walk would, and walking twice would only race with concurrent
//! mappings.
//!
//! A spurious fault (cached state faults where the tables now allow the access) is recorded
//! but counted apart ([`Checker::spurious`]): it costs a retry, not isolation.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;

use super::FaultKind;
use crate::iommu::spec::event::AccessKind;
use crate::mm::{PhysAddr, VirtAddr};

/// How many unmaps the checker remembers.
pub const UNMAP_LOG_CAPACITY: usize = 4096;
/// How many stale translations are kept for inspection (all are counted).
pub const RECORD_CAPACITY: usize = 1024;

/// An unmap (or protection change) the kernel performed on an address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnmapNote {
    /// The kernel's identifier for the operation (e.g. a sequence number).
    pub id: u64,
    pub asid: u16,
    pub start: VirtAddr,
    /// Exclusive.
    pub end: VirtAddr,
}

/// How a cached translation differed from the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleKind {
    /// The device reached memory through a translation the tables no longer have (or no
    /// longer allow for this access): the dangerous case.
    UseAfterUnmap,
    /// The device reached a frame other than the one the tables map now.
    WrongFrame,
    /// The access faulted on cached state although the tables now allow it (e.g. a read-only
    /// entry cached before a permission upgrade).
    SpuriousFault,
    /// The walk went through a cached table descriptor that memory no longer holds (a table
    /// freed or replaced without a Leaf = 0 invalidation), though this access happened to end
    /// the way a fresh walk does.
    StaleTable,
}

/// Which cache held the stale state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleSource {
    /// An IOTLB entry.
    Iotlb,
    /// The configuration cache (STE/CD decoded before a change that was not invalidated).
    Config,
    /// The walk cache (a table descriptor read before a change that was not invalidated).
    WalkCache,
}

/// A cached entry a translation relied on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// An IOTLB leaf.
    Leaf,
    /// The configuration (STE and CD) of stream `sid`.
    Config { sid: u32 },
    /// A table descriptor held at `level`, mapping `[base, base + 2^span_log2)`.
    Table { level: u8, base: u64, span_log2: u8 },
}

impl Entry {
    /// The cache holding such entries.
    pub const fn source(self) -> StaleSource {
        match self {
            Self::Leaf => StaleSource::Iotlb,
            Self::Config { .. } => StaleSource::Config,
            Self::Table { .. } => StaleSource::WalkCache,
        }
    }
}

/// A cached entry and when it was filled (the model's clock): together they name one fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cached {
    pub entry: Entry,
    pub born: u64,
}

/// One use of cached state, as the model reports it to the checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Use {
    pub sid: u32,
    /// The ASID of the stage-1 configuration (`None` if there was none).
    pub asid: Option<u16>,
    pub vmid: u16,
    pub va: VirtAddr,
    pub access: AccessKind,
    /// The cached state the outcome is blamed on (a stale configuration if there is one).
    pub cached: Cached,
    /// A leaf or table descriptor used through a stale configuration: it must race too.
    pub with: Option<Cached>,
    /// The walk went through a table descriptor memory no longer holds.
    pub table_gone: bool,
    /// The stream's configuration in memory translates nothing now (STE invalid or abort, CD
    /// invalid or TTB0 walks disabled).
    pub config_off: bool,
}

/// One stale translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleTranslation {
    pub sid: u32,
    /// The ASID the cached state was tagged with (`None` if no stage-1 config was involved).
    pub asid: Option<u16>,
    pub vmid: u16,
    pub va: VirtAddr,
    pub access: AccessKind,
    pub kind: StaleKind,
    pub source: StaleSource,
    /// What the model did, using its caches.
    pub used: Result<PhysAddr, FaultKind>,
    /// What the tables say now.
    pub fresh: Result<PhysAddr, FaultKind>,
    /// The completed noted unmap of this ASID covering `va` that began last.
    pub last_unmap: Option<UnmapNote>,
}

impl fmt::Display for StaleTranslation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stale translation ({:?} from {:?}): SID {:#x}",
            self.kind, self.source, self.sid
        )?;
        if let Some(asid) = self.asid {
            write!(f, " ASID {asid}")?;
        }
        write!(f, " VA {} {:?}: ", self.va, self.access)?;
        match self.used {
            Ok(pa) => write!(f, "used {pa}")?,
            Err(k) => write!(f, "faulted ({k})")?,
        }
        match self.fresh {
            Ok(pa) => write!(f, ", tables say {pa}")?,
            Err(k) => write!(f, ", tables say {k}")?,
        }
        match self.last_unmap {
            Some(u) => write!(f, "; last unmap #{} covered {}..{}", u.id, u.start, u.end),
            None => f.write_str("; no noted unmap covers it"),
        }
    }
}

/// An unmap and when (the model's clock) it began changing the tables.
#[derive(Debug, Clone, Copy)]
struct Timed {
    note: UnmapNote,
    began: u64,
}

/// An unmap in progress.
#[derive(Debug, Clone)]
struct Window {
    unmap: Timed,
    /// Configurations and table descriptors of its ASID, and leaves in its range, already
    /// stale when it opened.
    stale_at_open: Vec<Cached>,
}

/// Checker state.
#[derive(Debug, Clone)]
pub struct Checker {
    pub(super) enabled: bool,
    /// Completed unmaps, oldest first.
    unmaps: VecDeque<Timed>,
    in_flight: Vec<Window>,
    records: Vec<StaleTranslation>,
    total: u64,
    spurious: u64,
    raced: u64,
}

impl Checker {
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            unmaps: VecDeque::new(),
            in_flight: Vec::new(),
            records: Vec::new(),
            total: 0,
            spurious: 0,
            raced: 0,
        }
    }

    /// Opens the window of `note`, which began at time `now`; `stale_at_open` are the cached
    /// configurations and table descriptors of its ASID, and leaves in its range, that memory
    /// no longer agreed with.
    pub(super) fn begin_unmap(&mut self, note: UnmapNote, now: u64, stale_at_open: Vec<Cached>) {
        self.in_flight.push(Window {
            unmap: Timed { note, began: now },
            stale_at_open,
        });
    }

    /// Closes the window of unmap `id`; returns false if none was open.
    pub(super) fn end_unmap(&mut self, id: u64) -> bool {
        match self.in_flight.iter().position(|w| w.unmap.note.id == id) {
            Some(i) => {
                let done = self.in_flight.swap_remove(i);
                self.log(done.unmap);
                true
            }
            None => false,
        }
    }

    /// How many unmap windows are open. A window that never closes excuses every later change
    /// in its range, so a run that ends with one open proves less than it says.
    pub(super) fn open_unmaps(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether a mismatch is an allowed race (module documentation): every cached entry the
    /// use relied on could have been made stale by an unmap still in progress. `reached`: the
    /// access reached memory.
    fn racing(&self, u: &Use, reached: bool) -> bool {
        let Some(asid) = u.asid else { return false };
        core::iter::once(u.cached)
            .chain(u.with)
            .all(|c| self.entry_racing(asid, u, c, reached))
    }

    fn entry_racing(&self, asid: u16, u: &Use, c: Cached, reached: bool) -> bool {
        let va = u.va;
        let mut open = self.in_flight.iter().filter(|w| w.unmap.note.asid == asid);
        let fresh_at_open = |w: &Window| !w.stale_at_open.contains(&c);
        match c.entry {
            Entry::Leaf => {
                open.any(|w| covers(&w.unmap.note, asid, va) && fresh_at_open(w))
                    && self
                        .last_completed(asid, va)
                        .is_none_or(|u| c.born > u.began)
            }
            Entry::Config { .. } => {
                (!reached || u.config_off)
                    && open.any(|w| covers(&w.unmap.note, asid, va) && fresh_at_open(w))
            }
            Entry::Table {
                base, span_log2, ..
            } => {
                let end = base.saturating_add(1 << span_log2);
                open.any(|w| {
                    let n = &w.unmap.note;
                    let affects = if reached {
                        covers(n, asid, va)
                    } else {
                        n.start.as_u64() < end && base < n.end.as_u64()
                    };
                    affects && fresh_at_open(w)
                })
            }
        }
    }

    /// Notes an unmap that completed (or, single-threaded, is about to) at time `now`.
    pub(super) fn note_unmap(&mut self, note: UnmapNote, now: u64) {
        self.log(Timed { note, began: now });
    }

    fn log(&mut self, done: Timed) {
        if self.unmaps.len() == UNMAP_LOG_CAPACITY {
            self.unmaps.pop_front();
        }
        self.unmaps.push_back(done);
    }

    /// The completed unmap covering `va` that began last: overlapping unmaps may complete in
    /// another order, and an entry cached before any of them began should have gone with it.
    fn last_completed(&self, asid: u16, va: VirtAddr) -> Option<Timed> {
        self.unmaps
            .iter()
            .copied()
            .filter(|u| covers(&u.note, asid, va))
            .max_by_key(|u| u.began)
    }

    fn last_unmap(&self, asid: Option<u16>, va: VirtAddr) -> Option<UnmapNote> {
        self.last_completed(asid?, va).map(|u| u.note)
    }

    /// Compares the outcome the model produced with the fresh one; records a mismatch.
    pub(super) fn check(
        &mut self,
        u: Use,
        used: Result<PhysAddr, FaultKind>,
        fresh: Result<PhysAddr, FaultKind>,
    ) -> bool {
        let Use {
            sid,
            asid,
            vmid,
            va,
            access,
            cached,
            table_gone,
            ..
        } = u;
        let kind = match (used, fresh) {
            (Ok(a), Ok(b)) if a != b => StaleKind::WrongFrame,
            (Ok(_), Err(_)) => StaleKind::UseAfterUnmap,
            (Err(_), Ok(_)) => StaleKind::SpuriousFault,
            _ if table_gone => StaleKind::StaleTable,
            _ => return false,
        };
        let source = cached.entry.source();
        if self.racing(&u, used.is_ok()) {
            self.raced += 1;
            return false;
        }
        if kind == StaleKind::SpuriousFault {
            self.spurious += 1;
        } else {
            self.total += 1;
        }
        if self.records.len() < RECORD_CAPACITY {
            let last_unmap = self.last_unmap(asid, va);
            self.records.push(StaleTranslation {
                sid,
                asid,
                vmid,
                va,
                access,
                kind,
                source,
                used,
                fresh,
                last_unmap,
            });
        }
        true
    }

    pub(super) fn records(&self) -> &[StaleTranslation] {
        &self.records
    }

    pub(super) fn take(&mut self) -> Vec<StaleTranslation> {
        core::mem::take(&mut self.records)
    }

    pub(super) fn total(&self) -> u64 {
        self.total
    }

    pub(super) fn spurious(&self) -> u64 {
        self.spurious
    }

    pub(super) fn raced(&self) -> u64 {
        self.raced
    }
}

fn covers(note: &UnmapNote, asid: u16, va: VirtAddr) -> bool {
    note.asid == asid && note.start <= va && va < note.end
}
