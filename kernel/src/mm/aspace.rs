//! Address spaces: the role of Linux's `mm_struct`.
//!
//! An [`AddressSpace`] owns a user-half page table (TTBR0, per-ASID entries), a list of regions
//! (VMAs), an ASID context, and the notifier core's [`MmCore`] (user and grab counts, the mmap
//! lock, the subscriptions). CPUs run it by loading its root and ASID into `TTBR0_EL1`; devices
//! reach it through the SMMU, whose context descriptor points at the same root (shared virtual
//! addressing). Everything that removes or weakens a translation is therefore a three-party
//! affair, done in the order Linux does it:
//!
//! ```text
//!   mmap write lock
//!   invalidate_range_start(range, event)       list subscribers' start, interval
//!                                              subscribers (collision-retry readers)
//!   page-table lock
//!     change the entries
//!     CPU TLB invalidation (DSB; TLBI ...; DSB; ISB)  ┐ one place: the Invalidate impl
//!     arch_invalidate_secondary_tlbs(exact range)     ┘ (IOTLBs: waits for CMD_SYNC)
//!     free emptied table pages                  only now: walk caches are clean
//!   free the data frames                        no TLB, CPU or device, can reach them
//!   invalidate_range_end(range)
//! ```
//!
//! The secondary invalidation is made from the same place as the CPU's, with exactly the range
//! whose translations changed (arm64's `__flush_tlb_range` calling
//! `mmu_notifier_arch_invalidate_secondary_tlbs`; f7edb07ad7c6 is what happens when that range
//! is lost), so when `munmap`/`mprotect` return, no device can use the old translation.
//!
//! | operation | event | notes |
//! |---|---|---|
//! | [`munmap`](AddressSpace::munmap) | `Unmap` | frees anonymous frames after the flush |
//! | [`mprotect`](AddressSpace::mprotect) | `ProtectionVma` | upgrades are flushed too (a TLB may cache read-only) |
//! | [`discard`](AddressSpace::discard) | `Clear` | drops anonymous pages, keeps the region |
//! | teardown (last [`MmUser`] dropped) | `Release` | after every subscriber's `release` |
//! | [`clear_flush_young`](AddressSpace::clear_flush_young) / [`clear_young`](AddressSpace::clear_young) / [`test_young`](AddressSpace::test_young) | — | access-flag ageing, with the notifier's young ops |
//! | [`mark_young`](AddressSpace::mark_young) | — | the answer to an Access-flag fault, from a CPU or a device |
//!
//! Mapping (`mmap`, `populate`) only turns invalid entries valid: nothing can be cached for an
//! invalid entry, so it publishes the entries and notifies nobody (as Linux). Memory that
//! becomes executable is first made coherent for instruction fetch
//! ([`MmPlatform::sync_icache`]), as Linux's `set_pte_at` does through `__sync_icache_dcache`.
//!
//! # Loaded on a CPU
//!
//! A CPU runs an address space through a [`Loaded`] ([`AddressSpace::load`]): it holds a user
//! reference and sets the CPU's bit in [`active_cpus`](AddressSpace::active_cpus) for as long as
//! the CPU may walk the tables. The protocol:
//!
//! 1. `load`: take a user reference (`mmget_not_zero`; an exited space cannot be loaded), then
//!    set the CPU's bit, then read the root. The CPU writes its TTBR0 only after this. A CPU
//!    loads a space at most once ([`MmError::AlreadyLoaded`]): re-activating what it runs is
//!    not a switch.
//! 2. Unloading: the CPU points its TTBR0 elsewhere (and synchronizes), then drops the
//!    `Loaded`, which clears the bit and only then puts the user reference.
//! 3. Teardown runs only when the last user reference goes, so never while a `Loaded` exists;
//!    it still waits for `active_cpus` to be empty before freeing anything.
//!
//! # Choices
//!
//! - `munmap`, `mprotect` and `discard` need the whole range inside regions; a hole is
//!   [`MmError::NotMapped`] and changes nothing. (Linux's `munmap` skips holes; being strict
//!   here makes every error path "nothing happened".)
//! - Regions never merge; `mprotect` and `munmap` split them at the range's edges.
//! - Every failure is detected before anything changes; the one thing that can fail half-way,
//!   running out of frames while mapping anonymous memory, unmaps what was mapped (through the
//!   full invalidation path) and frees it.
//!
//! # References
//!
//! `users` ([`MmUser`], `mmget`/`mmput`) keep the address space alive: dropping the last one
//! tears it down. `Arc<AddressSpace>` (`mmgrab`/`mmdrop`) only keeps the structure: operations
//! then fail with [`MmError::Exited`].

use alloc::collections::{btree_map, BTreeMap};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::fmt;
use core::ops::Deref;

use super::asid::{AsidAllocator, AsidContext};
use super::notifier::{
    FaultError, MmCore, MmFaultHandler, NotifierError, NotifierRange, NotifyEvent, WouldBlock,
};
use super::pgtable::descriptor::{AttributeError, Attributes, MemoryType, Permissions, PA_BITS};
use super::pgtable::range::VaRange;
use super::pgtable::table::{Config, Holes, PageTable};
use super::pgtable::tlb::{Invalidate, TlbInvalidation, TlbPlan, TlbPolicy, TlbScope};
use super::pgtable::walk::Translation;
use super::pgtable::PageTableError;
use super::phys::{FrameAllocator, PhysMemory};
use super::{PhysAddr, VirtAddr, PAGE_SIZE};
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::SpinLock;
use crate::trace::{self, Kind};

const PAGE: u64 = PAGE_SIZE as u64;

/// Lowest address a region may start at (page 0 stays unmapped so null pointers fault).
pub const USER_START: u64 = 0x1_0000;
/// One past the highest user address (48-bit VAs, TTBR0).
pub const USER_END: u64 = 1 << 48;

/// What an address space needs from the machine it runs on: the kernel gives it RAM through the
/// linear map, its frame allocator and real TLB instructions; host tests give it an arena and a
/// recorder.
pub trait MmPlatform: Send + Sync + 'static {
    /// Reaches physical memory (page tables, frames).
    type Mem: PhysMemory + Clone + Send + Sync + 'static;
    /// Hands out frames for page tables and anonymous memory.
    type Frames: FrameAllocator + Clone + Send + Sync + 'static;

    /// The memory accessor.
    fn memory(&self) -> Self::Mem;
    /// The frame allocator.
    fn frames(&self) -> Self::Frames;
    /// The ASID allocator shared by every address space.
    fn asids(&self) -> &AsidAllocator;
    /// How CPU TLB invalidations are planned on this machine.
    fn tlb_policy(&self) -> TlbPolicy;
    /// Runs a CPU TLB plan.
    fn run_tlb_plan(&self, plan: &TlbPlan);
    /// Orders this CPU's page-table stores before its next load (`DSB ISH`): the invalidation
    /// path reads which ASID to flush after changing entries, and a CPU activating the address
    /// space stores that ASID before walking them, with the same barrier.
    fn full_barrier(&self);
    /// Physical address bits translations can output on this machine (the CPU's
    /// `ID_AA64MMFR0_EL1.PARange`, capped at what a descriptor holds): `mmap` refuses physical
    /// ranges beyond it.
    fn pa_bits(&self) -> u32;
    /// Makes `[pa, pa + len)` coherent for instruction fetch before it becomes executable
    /// (`DC CVAU`, `IC IVAU`: the Cortex-A72 has neither CTR_EL0.IDC nor DIC, so its I-cache may
    /// hold lines of whatever the frame held before).
    fn sync_icache(&self, pa: PhysAddr, len: usize);
}

/// Errors of address-space operations. Whatever the error, nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmError {
    /// An address or length is not a multiple of 4 KiB.
    Misaligned(u64),
    /// The length is zero.
    ZeroLength,
    /// `start + len` overflows.
    Overflow {
        /// Start of the range.
        start: u64,
        /// Its length.
        len: usize,
    },
    /// The range is not inside `[USER_START, USER_END)`.
    OutOfRange {
        /// Start of the range.
        start: u64,
        /// Its length.
        len: usize,
    },
    /// A physical backing reaches beyond the machine's physical address size
    /// ([`MmPlatform::pa_bits`]).
    PhysOutOfRange {
        /// Start of the physical range.
        start: PhysAddr,
        /// Its length.
        len: usize,
        /// The physical address size in bits.
        bits: u32,
    },
    /// A CPU number the address space cannot track (at most 64 CPUs).
    NoSuchCpu(usize),
    /// The address space is already loaded on this CPU: one [`Loaded`] per CPU owns its bit.
    AlreadyLoaded(usize),
    /// `mprotect` would move this page between EL0 and EL1 ownership (`Permissions::user`):
    /// that is not a permission change (the translation's owner changes), do it with `munmap`
    /// and `mmap`.
    OwnerChange(VirtAddr),
    /// A fixed `mmap` overlaps this existing region start.
    Overlap(VirtAddr),
    /// Part of the range is in no region.
    NotMapped(VirtAddr),
    /// No free virtual range of that size.
    NoVirtualSpace(usize),
    /// Frames ran out (page tables or anonymous memory).
    OutOfMemory,
    /// The permissions or memory type cannot be expressed.
    Attributes(AttributeError),
    /// The last user is gone: the address space is being or was torn down.
    Exited,
    /// A non-blockable invalidation was refused by a subscriber; nothing changed.
    WouldBlock,
    /// The page-table engine refused (a bug: the address space validates before calling it).
    Table(PageTableError),
    /// The notifier core refused.
    Notifier(NotifierError),
}

impl fmt::Display for MmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MmError::Misaligned(v) => write!(f, "{v:#x} is not page aligned"),
            MmError::ZeroLength => f.write_str("zero-length range"),
            MmError::Overflow { start, len } => {
                write!(f, "range {start:#x} + {len:#x} overflows")
            }
            MmError::OutOfRange { start, len } => write!(
                f,
                "range {start:#x} + {len:#x} is outside the user address space \
                 [{USER_START:#x}, {USER_END:#x})"
            ),
            MmError::PhysOutOfRange { start, len, bits } => write!(
                f,
                "physical range {start} + {len:#x} is beyond the {bits}-bit physical address size"
            ),
            MmError::NoSuchCpu(cpu) => write!(f, "CPU {cpu} cannot load an address space"),
            MmError::AlreadyLoaded(cpu) => {
                write!(f, "the address space is already loaded on CPU {cpu}")
            }
            MmError::OwnerChange(at) => write!(
                f,
                "{at} would move between user and kernel ownership: unmap and map it instead"
            ),
            MmError::Overlap(at) => write!(f, "overlaps the region at {at}"),
            MmError::NotMapped(at) => write!(f, "{at} is not mapped"),
            MmError::NoVirtualSpace(len) => write!(f, "no free {len:#x}-byte virtual range"),
            MmError::OutOfMemory => f.write_str("out of physical memory"),
            MmError::Attributes(e) => write!(f, "{e}"),
            MmError::Exited => f.write_str("the address space has exited"),
            MmError::WouldBlock => f.write_str("a notifier subscriber refused to block"),
            MmError::Table(e) => write!(f, "page table: {e}"),
            MmError::Notifier(e) => write!(f, "notifier: {e:?}"),
        }
    }
}

impl From<PageTableError> for MmError {
    fn from(e: PageTableError) -> Self {
        match e {
            PageTableError::OutOfFrames => MmError::OutOfMemory,
            PageTableError::Attributes(a) => MmError::Attributes(a),
            other => MmError::Table(other),
        }
    }
}

impl From<NotifierError> for MmError {
    fn from(e: NotifierError) -> Self {
        MmError::Notifier(e)
    }
}

/// What backs a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Zeroed frames owned by the address space, freed when unmapped.
    Anonymous,
    /// A fixed physical range (device memory, or RAM owned by someone else) starting at this
    /// address for the region's first page, with this memory type.
    Physical(PhysAddr, MemoryType),
}

/// Where `mmap` puts a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Exactly here (fails if anything is mapped in the way).
    Fixed(VirtAddr),
    /// The lowest free range that fits.
    Anywhere,
}

/// A region (VMA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First address.
    pub start: VirtAddr,
    /// One past the last address.
    pub end: VirtAddr,
    /// Access permissions.
    pub perms: Permissions,
    /// What is behind it.
    pub backing: Backing,
}

impl Region {
    fn attributes(&self) -> Attributes {
        let memory = match self.backing {
            Backing::Anonymous => MemoryType::Normal,
            Backing::Physical(_, m) => m,
        };
        Attributes::new(memory, self.perms)
    }

    /// The physical address backing `va` for a physical region.
    fn phys_of(&self, va: u64) -> Option<PhysAddr> {
        match self.backing {
            Backing::Physical(pa, _) => Some(PhysAddr(pa.0 + (va - self.start.0))),
            Backing::Anonymous => None,
        }
    }
}

/// Counters (for tests and the workload's summary).
#[derive(Debug, Default)]
pub struct AspaceStats {
    /// Pages mapped.
    pub pages_mapped: AtomicU64,
    /// Pages unmapped (munmap, discard, teardown).
    pub pages_unmapped: AtomicU64,
    /// CPU TLB invalidations run (each one range or one ASID).
    pub cpu_invalidations: AtomicU64,
    /// `arch_invalidate_secondary_tlbs` calls made.
    pub secondary_invalidations: AtomicU64,
    /// `invalidate_range_start` / `invalidate_range_end` pairs (or non-blocking starts refused).
    pub range_invalidations: AtomicU64,
}

struct Inner<P: MmPlatform> {
    /// `None` once torn down.
    table: Option<PageTable<P::Mem, P::Frames>>,
    regions: BTreeMap<u64, Region>,
}

/// An address space. See the module documentation.
pub struct AddressSpace<P: MmPlatform> {
    platform: &'static P,
    mm: Arc<MmCore>,
    asid: AsidContext,
    inner: SpinLock<Inner<P>>,
    stats: AspaceStats,
    /// CPUs that have it loaded (bit n = CPU n), see [`Loaded`].
    active: AtomicU64,
    /// Test knob: how much of the load protocol runs (shows the tests notice).
    #[cfg(test)]
    load_knob: core::sync::atomic::AtomicU8,
    /// Test knob: skip `arch_invalidate_secondary_tlbs` (shows the tests notice).
    #[cfg(test)]
    skip_secondary: core::sync::atomic::AtomicBool,
}

/// A user reference (`mmget`): keeps the address space alive. Dropping the last one runs every
/// subscriber's `release` and tears the page tables down.
pub struct MmUser<P: MmPlatform> {
    aspace: Arc<AddressSpace<P>>,
}

impl<P: MmPlatform> Deref for MmUser<P> {
    type Target = Arc<AddressSpace<P>>;

    fn deref(&self) -> &Self::Target {
        &self.aspace
    }
}

impl<P: MmPlatform> Clone for MmUser<P> {
    fn clone(&self) -> Self {
        self.aspace.mm.mmget();
        MmUser {
            aspace: self.aspace.clone(),
        }
    }
}

impl<P: MmPlatform> Drop for MmUser<P> {
    fn drop(&mut self) {
        if self.aspace.mm.mmput() {
            self.aspace.teardown();
        }
    }
}

/// The load protocol in full (see the module documentation).
#[cfg(test)]
const LOAD_FULL: u8 = 0;
/// Test knob: no user reference; teardown's wait on `active` is the only guard.
#[cfg(test)]
const LOAD_NO_USER: u8 = 1;
/// Test knob: no user reference and no active bit: nothing keeps the tables alive.
#[cfg(test)]
const LOAD_UNPROTECTED: u8 = 2;

/// An address space loaded on a CPU: keeps its tables alive while the CPU may walk them (see
/// "Loaded on a CPU" in the module documentation). Drop it only once the CPU's TTBR0 points
/// elsewhere.
pub struct Loaded<P: MmPlatform> {
    aspace: Arc<AddressSpace<P>>,
    /// `None` only under a test knob.
    user: Option<MmUser<P>>,
    cpu: usize,
    root: PhysAddr,
}

impl<P: MmPlatform> Loaded<P> {
    /// The root table the CPU walks.
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The address space.
    pub fn space(&self) -> &Arc<AddressSpace<P>> {
        &self.aspace
    }

    /// The CPU it is loaded on.
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

impl<P: MmPlatform> Drop for Loaded<P> {
    fn drop(&mut self) {
        // The bit goes before the user reference: a teardown that this drop starts finds no
        // CPU active.
        self.aspace
            .active
            .fetch_and(!(1 << self.cpu), Ordering::Release);
        crate::sync::notify_waiters();
        drop(self.user.take());
    }
}

/// Why `AddressSpace::fill` stopped, and how far it got: every unmapped page of its range
/// below `filled_to` was mapped (the caller undoes them, or keeps them).
struct FillStopped {
    error: MmError,
    filled_to: u64,
}

/// The CPU and secondary TLB maintenance of one address space: the single place both happen.
struct Flush<'a, P: MmPlatform> {
    aspace: &'a AddressSpace<P>,
    /// Notify secondary TLBs too (false only for ageing without flush).
    secondary: bool,
}

impl<P: MmPlatform> Invalidate for Flush<'_, P> {
    fn publish(&mut self) {
        self.aspace.platform.run_tlb_plan(&TlbPlan::publish());
    }

    fn invalidate(&mut self, inv: &TlbInvalidation) {
        let a = self.aspace;
        a.platform.full_barrier();
        // A context that never ran on a CPU has nothing in any CPU TLB (see MmPlatform::full_barrier).
        let range = inv.range();
        let (start, end) = (range.start().as_u64(), range.end().as_u64());
        if let Some(asid) = a.platform.asids().asid_of(&a.asid) {
            let plan = a.platform.tlb_policy().plan(inv, TlbScope::Asid(asid));
            a.platform.run_tlb_plan(&plan);
            a.stats.cpu_invalidations.fetch_add(1, Ordering::Relaxed);
            trace::record(Kind::CpuTlbi, start, end);
        }
        #[cfg(test)]
        if a.skip_secondary.load(Ordering::Relaxed) {
            return;
        }
        if self.secondary {
            trace::record(Kind::SecondaryBegin, start, end);
            let done = a.mm.arch_invalidate_secondary_tlbs(start, end);
            trace::record(Kind::SecondaryEnd, start, end);
            // The engine's ranges are never empty; an error here would be a lost invalidation.
            debug_assert!(done.is_ok(), "empty secondary invalidation of {range:?}");
            a.stats
                .secondary_invalidations
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What an unmap leaves of the regions around its range, which tells the page-table engine
/// which emptied tables it may free without scanning them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vacancy {
    /// `munmap`: the regions in the range go away with the pages. Only regions are ever
    /// mapped, so nothing is mapped between the neighbouring regions.
    RegionsRemoved,
    /// `discard`, or undoing a failed `mmap`: the regions stay (the range is all we know).
    RegionsKept,
}

/// What an unmap of `[start, end)` needs to know of the regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UnmapSite {
    /// Nothing is mapped here outside `[start, end)` once it is unmapped: up to the regions on
    /// either side that keep pages (a region cut by the range keeps the part outside it), or
    /// the range itself when the regions stay.
    vacant: VaRange,
    /// Some region in the range is anonymous: its frames must be collected and freed.
    anonymous: bool,
}

/// The [`UnmapSite`] of `[start, end)`, or [`MmError::NotMapped`] at the first address no
/// region covers. One walk down the regions from `end`, which a small unmap ends after a
/// region or two: the regions in the range, then the one below them (the floor).
fn unmap_site(
    regions: &BTreeMap<u64, Region>,
    start: u64,
    end: u64,
    vacancy: Vacancy,
) -> Result<UnmapSite, MmError> {
    let mut down = regions.range(..end).map(|(_, r)| r).rev().peekable();
    // The region holding `end - 1` keeps what lies past `end`; else the next region up does.
    let ceiling = match down.peek() {
        Some(r) if r.end.0 > end => end,
        _ => regions.range(end..).next().map_or(USER_END, |(_, r)| r.start.0),
    };
    let (mut covered_from, mut hole, mut anonymous, mut floor) = (end, None, false, 0);
    for r in down {
        if r.end.0 <= start {
            floor = r.end.0;
            break;
        }
        if r.end.0 < covered_from {
            hole = Some(r.end.0);
        }
        covered_from = r.start.0;
        anonymous |= r.backing == Backing::Anonymous;
        if r.start.0 < start {
            floor = start;
            break;
        }
    }
    // Holes were found from the top down: the last one is the lowest, unless the regions
    // stopped above `start`.
    if covered_from > start {
        hole = Some(start);
    }
    if let Some(at) = hole {
        return Err(MmError::NotMapped(VirtAddr(at)));
    }
    let vacant = match vacancy {
        Vacancy::RegionsRemoved => VaRange::between(floor, ceiling),
        Vacancy::RegionsKept => VaRange::between(start, end),
    };
    Ok(UnmapSite { vacant, anonymous })
}

/// Checks alignment, length, overflow and the user range; returns `[start, end)`.
fn check_range(va: VirtAddr, len: usize) -> Result<(u64, u64), MmError> {
    if len == 0 {
        return Err(MmError::ZeroLength);
    }
    if !va.is_page_aligned() {
        return Err(MmError::Misaligned(va.0));
    }
    if len % PAGE_SIZE != 0 {
        return Err(MmError::Misaligned(len as u64));
    }
    let end =
        va.0.checked_add(len as u64)
            .ok_or(MmError::Overflow { start: va.0, len })?;
    if va.0 < USER_START || end > USER_END {
        return Err(MmError::OutOfRange { start: va.0, len });
    }
    Ok((va.0, end))
}

impl<P: MmPlatform> AddressSpace<P> {
    /// A new, empty address space with one user.
    pub fn create(platform: &'static P) -> Result<MmUser<P>, MmError> {
        let table = PageTable::new(platform.memory(), platform.frames(), Config::USER)?;
        let aspace = Arc::new_cyclic(|this| AddressSpace {
            platform,
            // Faults arriving through the core (a device's F_ACCESS) reach this space.
            mm: MmCore::owned_by(this.clone() as Weak<dyn MmFaultHandler>),
            asid: AsidContext::new(),
            inner: SpinLock::new(Inner {
                table: Some(table),
                regions: BTreeMap::new(),
            }),
            stats: AspaceStats::default(),
            active: AtomicU64::new(0),
            #[cfg(test)]
            load_knob: core::sync::atomic::AtomicU8::new(LOAD_FULL),
            #[cfg(test)]
            skip_secondary: core::sync::atomic::AtomicBool::new(false),
        });
        Ok(MmUser { aspace })
    }

    /// Another user reference, unless the address space already exited (`mmget_not_zero`).
    pub fn mmget(self: &Arc<Self>) -> Option<MmUser<P>> {
        self.mm.mmget_not_zero().then(|| MmUser {
            aspace: self.clone(),
        })
    }

    /// The notifier core's view (subscriptions, mmap lock, reference counts).
    pub fn mm(&self) -> &Arc<MmCore> {
        &self.mm
    }

    /// The ASID context (the kernel activates it on a CPU).
    pub fn asid_context(&self) -> &AsidContext {
        &self.asid
    }

    /// The platform.
    pub fn platform(&self) -> &'static P {
        self.platform
    }

    /// Physical address of the root table, or `None` after teardown.
    pub fn root(&self) -> Option<PhysAddr> {
        self.inner.lock().table.as_ref().map(|t| t.root())
    }

    /// Loads the address space on `cpu`: the returned [`Loaded`] keeps the tables alive until
    /// it is dropped, which the CPU does only after its TTBR0 stopped selecting them.
    pub fn load(self: &Arc<Self>, cpu: usize) -> Result<Loaded<P>, MmError> {
        if cpu >= u64::BITS as usize {
            return Err(MmError::NoSuchCpu(cpu));
        }
        #[cfg(test)]
        let knob = self.load_knob.load(Ordering::Relaxed);
        #[cfg(not(test))]
        let knob = 0;
        let user = if knob == 0 {
            Some(self.mmget().ok_or(MmError::Exited)?)
        } else {
            None
        };
        if knob < 2 && self.active.fetch_or(1 << cpu, Ordering::AcqRel) & (1 << cpu) != 0 {
            // The bit is the other Loaded's: a second one would clear it when dropped.
            return Err(MmError::AlreadyLoaded(cpu));
        }
        let Some(root) = self.root() else {
            self.active.fetch_and(!(1 << cpu), Ordering::Release);
            crate::sync::notify_waiters();
            return Err(MmError::Exited);
        };
        Ok(Loaded {
            aspace: self.clone(),
            user,
            cpu,
            root,
        })
    }

    /// The CPUs that have this address space loaded (bit n = CPU n).
    pub fn active_cpus(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// Test knob: how much of the load protocol runs.
    #[cfg(test)]
    fn set_load_knob(&self, knob: u8) {
        self.load_knob.store(knob, Ordering::Relaxed);
    }

    /// Counters.
    pub fn stats(&self) -> &AspaceStats {
        &self.stats
    }

    /// The regions, in address order.
    pub fn regions(&self) -> Vec<Region> {
        self.inner.lock().regions.values().copied().collect()
    }

    /// What `va` translates to right now (a software walk of the table).
    pub fn translate(&self, va: VirtAddr) -> Option<Translation> {
        self.inner.lock().table.as_ref()?.query(va)
    }

    fn ensure_live(&self) -> Result<(), MmError> {
        if self.mm.users() == 0 {
            return Err(MmError::Exited);
        }
        Ok(())
    }

    /* ------------------------------------------------------------------------------------ */
    /* Mapping.                                                                              */
    /* ------------------------------------------------------------------------------------ */

    /// Creates a region of `len` bytes and maps it completely (anonymous memory is allocated
    /// and zeroed now: there is no demand paging). Returns its start.
    pub fn mmap(
        &self,
        at: Placement,
        len: usize,
        perms: Permissions,
        backing: Backing,
    ) -> Result<VirtAddr, MmError> {
        let attrs = Attributes::new(
            match backing {
                Backing::Anonymous => MemoryType::Normal,
                Backing::Physical(_, m) => m,
            },
            perms,
        );
        attrs.validate().map_err(MmError::Attributes)?;
        if let Backing::Physical(pa, _) = backing {
            if !pa.is_page_aligned() {
                return Err(MmError::Misaligned(pa.0));
            }
            let end =
                pa.0.checked_add(len as u64)
                    .ok_or(MmError::Overflow { start: pa.0, len })?;
            // Checked here rather than left to the page-table engine (found by the `aspace`
            // fuzz target: it failed half-way through `fill` with `MmError::Table`). The CPU's
            // PA size, not the descriptor's: beyond it a walk takes an Address size fault.
            let bits = self.platform.pa_bits().min(PA_BITS);
            if end > 1 << bits {
                return Err(MmError::PhysOutOfRange {
                    start: pa,
                    len,
                    bits,
                });
            }
        }
        let _mmap = self.mm.mmap_write();
        self.ensure_live()?;
        let start = {
            let inner = self.inner.lock();
            match at {
                Placement::Fixed(va) => {
                    let (s, e) = check_range(va, len)?;
                    if let Some(r) = overlapping(&inner.regions, s, e).next() {
                        return Err(MmError::Overlap(r.start));
                    }
                    s
                }
                Placement::Anywhere => {
                    check_range(VirtAddr(USER_START), len)?;
                    find_gap(&inner.regions, len as u64).ok_or(MmError::NoVirtualSpace(len))?
                }
            }
        };
        let region = Region {
            start: VirtAddr(start),
            end: VirtAddr(start + len as u64),
            perms,
            backing,
        };
        self.inner.lock().regions.insert(start, region);
        if let Err(stop) = self.fill(&region, start, start + len as u64) {
            // Undo through the full unmap path: the pages mapped so far were visible. Nothing
            // past them was, so nothing past them is announced (a huge physical range refused
            // for want of table frames would otherwise cost an ASID-wide SMMU invalidation).
            if stop.filled_to > start {
                let (end, event) = (stop.filled_to, NotifyEvent::Unmap);
                self.unmap_site(start, end, Vacancy::RegionsKept)
                    .and_then(|site| self.unmap_locked(start, end, event, site, true, &_mmap))
                    .expect("unmapping what this call just mapped cannot fail");
            }
            self.inner.lock().regions.remove(&start);
            return Err(stop.error);
        }
        Ok(VirtAddr(start))
    }

    /// Maps every unmapped page of `[start, end)` inside `region`: anonymous regions get a fresh
    /// zeroed frame per page, physical ones their range (in runs, so blocks can be used).
    fn fill(&self, region: &Region, start: u64, end: u64) -> Result<(), FillStopped> {
        let stopped = |error, filled_to| FillStopped { error, filled_to };
        let attrs = region.attributes();
        let frames = self.platform.frames();
        let mut inner = self.inner.lock();
        let table = inner
            .table
            .as_mut()
            .ok_or_else(|| stopped(MmError::Exited, start))?;
        let mut flush = Flush {
            aspace: self,
            secondary: true,
        };
        // The unmapped runs, from one walk over the leaves (a 1 GiB region is not 2^18 walks).
        let mut holes = Vec::new();
        let mut next = start;
        table
            .walk(VirtAddr(start), (end - start) as usize, |m| {
                if m.va.start().0 > next {
                    holes.push((next, m.va.start().0));
                }
                next = m.va.end().0;
            })
            .map_err(|e| stopped(e.into(), start))?;
        if next < end {
            holes.push((next, end));
        }
        for (hole_start, hole_end) in holes {
            let mut va = hole_start;
            while va < hole_end {
                let (pa, len) = match region.phys_of(va) {
                    Some(pa) => (pa, hole_end - va),
                    None => (
                        frames
                            .alloc_zeroed()
                            .map_err(|_| stopped(MmError::OutOfMemory, va))?,
                        PAGE,
                    ),
                };
                if attrs.perms.exec {
                    self.platform.sync_icache(pa, len as usize);
                }
                match table.map(VirtAddr(va), pa, len as usize, attrs) {
                    Ok(change) => table.complete(change, &mut flush),
                    Err(e) => {
                        if region.backing == Backing::Anonymous {
                            frames.free(pa);
                        }
                        return Err(stopped(e.into(), va));
                    }
                }
                self.stats
                    .pages_mapped
                    .fetch_add(len / PAGE, Ordering::Relaxed);
                va += len;
            }
        }
        Ok(())
    }

    /// Maps again the pages of `[va, va + len)` that `discard` dropped.
    pub fn populate(&self, va: VirtAddr, len: usize) -> Result<(), MmError> {
        let (start, end) = check_range(va, len)?;
        let _mmap = self.mm.mmap_write();
        self.ensure_live()?;
        let pieces = self.covering(start, end)?;
        for r in pieces {
            self.fill(&r, r.start.0.max(start), r.end.0.min(end))
                .map_err(|stop| stop.error)?;
        }
        Ok(())
    }

    /// The regions covering `[start, end)` completely, or the first hole.
    fn covering(&self, start: u64, end: u64) -> Result<Vec<Region>, MmError> {
        let inner = self.inner.lock();
        check_covered(&inner.regions, start, end)?;
        Ok(overlapping(&inner.regions, start, end).copied().collect())
    }

    /// What unmapping `[start, end)` needs of the regions, or [`MmError::NotMapped`] at the
    /// first hole.
    fn unmap_site(&self, start: u64, end: u64, vacancy: Vacancy) -> Result<UnmapSite, MmError> {
        unmap_site(&self.inner.lock().regions, start, end, vacancy)
    }

    /* ------------------------------------------------------------------------------------ */
    /* Removing and weakening translations.                                                  */
    /* ------------------------------------------------------------------------------------ */

    /// Unmaps `[va, va + len)`, which must lie entirely inside regions. When it returns, no CPU
    /// and no device behind an SMMU bound to this address space can use the old translations,
    /// and anonymous frames are back in the allocator.
    pub fn munmap(&self, va: VirtAddr, len: usize) -> Result<(), MmError> {
        let (start, end) = check_range(va, len)?;
        let mmap = self.mm.mmap_write();
        self.ensure_live()?;
        let site = self.unmap_site(start, end, Vacancy::RegionsRemoved)?;
        trace::record(Kind::UnmapBegin, start, end);
        let r = self.unmap_locked(start, end, NotifyEvent::Unmap, site, true, &mmap);
        if r.is_ok() {
            split_out(&mut self.inner.lock().regions, start, end, |_| None);
        }
        trace::record(Kind::UnmapEnd, start, end);
        r.map(|_| ())
    }

    /// As [`munmap`](Self::munmap), but with a non-blockable invalidation (the OOM reaper's):
    /// a subscriber that would have to sleep refuses, and then nothing changes.
    pub fn munmap_nonblocking(&self, va: VirtAddr, len: usize) -> Result<(), MmError> {
        let (start, end) = check_range(va, len)?;
        let mmap = self.mm.mmap_write();
        self.ensure_live()?;
        let site = self.unmap_site(start, end, Vacancy::RegionsRemoved)?;
        self.unmap_locked(start, end, NotifyEvent::Unmap, site, false, &mmap)?;
        split_out(&mut self.inner.lock().regions, start, end, |_| None);
        Ok(())
    }

    /// Drops the pages of `[va, va + len)` but keeps the regions (`madvise(DONTNEED)`; the
    /// `Clear` event): anonymous frames are freed, and accesses fault until
    /// [`populate`](Self::populate). Returns the number of pages dropped.
    pub fn discard(&self, va: VirtAddr, len: usize) -> Result<u64, MmError> {
        let (start, end) = check_range(va, len)?;
        let mmap = self.mm.mmap_write();
        self.ensure_live()?;
        let site = self.unmap_site(start, end, Vacancy::RegionsKept)?;
        trace::record(Kind::UnmapBegin, start, end);
        let r = self.unmap_locked(start, end, NotifyEvent::Clear, site, true, &mmap);
        trace::record(Kind::UnmapEnd, start, end);
        r
    }

    /// Unmaps whatever is mapped in `[start, end)` with the full invalidation protocol; the
    /// caller holds the mmap write lock and found the range's `site` under it. Returns the
    /// pages unmapped.
    fn unmap_locked(
        &self,
        start: u64,
        end: u64,
        event: NotifyEvent,
        site: UnmapSite,
        blockable: bool,
        mmap: &super::notifier::MmapWriteGuard<'_>,
    ) -> Result<u64, MmError> {
        let len = (end - start) as usize;
        let announced = {
            let inner = self.inner.lock();
            let table = inner.table.as_ref().ok_or(MmError::Exited)?;
            // Splitting a block briefly invalidates all of it: announce that much.
            table.affected_range(VirtAddr(start), len)?
        };
        let range =
            NotifierRange::new(event, announced.start().as_u64(), announced.end().as_u64())?;
        let inv = if blockable {
            mmap.invalidate_range_start(range)
        } else {
            mmap.invalidate_range_start_nonblock(range)
                .map_err(|WouldBlock| MmError::WouldBlock)?
        };
        trace::record(Kind::NotifierStart, range.start(), range.end());
        self.stats
            .range_invalidations
            .fetch_add(1, Ordering::Relaxed);
        let mut data_frames = Vec::new();
        let pages = {
            let inner = &mut *self.inner.lock();
            let table = inner.table.as_mut().ok_or(MmError::Exited)?;
            if site.anonymous {
                let owned = overlapping(&inner.regions, start, end)
                    .filter(|r| r.backing == Backing::Anonymous)
                    .map(|r| (r.start.0.max(start), r.end.0.min(end)));
                for (s, e) in owned {
                    table.walk(VirtAddr(s), (e - s) as usize, |m| {
                        let mut pa = m.pa.0;
                        for _ in 0..m.va.pages() {
                            data_frames.push(PhysAddr(pa));
                            pa += PAGE;
                        }
                    })?;
                }
            }
            let mut flush = Flush {
                aspace: self,
                secondary: true,
            };
            let change = table.unmap_in_vacancy(
                VirtAddr(start),
                len,
                Holes::Skip,
                site.vacant,
                &mut flush,
            )?;
            let pages = change.pages();
            table.complete(change, &mut flush);
            pages
        };
        // Every TLB, the CPUs' and the devices', has dropped the translations: the frames can
        // go back.
        let frames = self.platform.frames();
        for f in data_frames {
            frames.free(f);
        }
        self.stats
            .pages_unmapped
            .fetch_add(pages, Ordering::Relaxed);
        inv.end();
        trace::record(Kind::NotifierEnd, range.start(), range.end());
        Ok(pages)
    }

    /// Changes the permissions of `[va, va + len)`, which must lie entirely inside regions
    /// owned by the same exception level as `perms` ([`MmError::OwnerChange`] otherwise).
    /// Upgrades are flushed like downgrades: a TLB (the CPU's or the SMMU's) may hold the old
    /// read-only entry and would keep faulting on writes.
    pub fn mprotect(&self, va: VirtAddr, len: usize, perms: Permissions) -> Result<(), MmError> {
        let (start, end) = check_range(va, len)?;
        let mmap = self.mm.mmap_write();
        self.ensure_live()?;
        let pieces = self.covering(start, end)?;
        for r in &pieces {
            Attributes::new(r.attributes().memory, perms)
                .validate()
                .map_err(MmError::Attributes)?;
        }
        // The engine refuses this too, but only after the invalidation was announced (found by
        // the `aspace` fuzz target): refuse it before anything happens.
        if let Some(r) = pieces.iter().find(|r| r.perms.user != perms.user) {
            return Err(MmError::OwnerChange(VirtAddr(r.start.0.max(start))));
        }
        let announced = {
            let inner = self.inner.lock();
            let table = inner.table.as_ref().ok_or(MmError::Exited)?;
            table.affected_range(VirtAddr(start), (end - start) as usize)?
        };
        let range = NotifierRange::new(
            NotifyEvent::ProtectionVma,
            announced.start().as_u64(),
            announced.end().as_u64(),
        )?;
        if perms.exec && pieces.iter().any(|r| !r.perms.exec) {
            self.sync_icache_range(start, end)?;
        }
        trace::record(Kind::ProtectBegin, start, end);
        let inv = mmap.invalidate_range_start(range);
        trace::record(Kind::NotifierStart, range.start(), range.end());
        self.stats
            .range_invalidations
            .fetch_add(1, Ordering::Relaxed);
        {
            let mut inner = self.inner.lock();
            let table = inner.table.as_mut().ok_or(MmError::Exited)?;
            let mut flush = Flush {
                aspace: self,
                secondary: true,
            };
            let change = table.protect(
                VirtAddr(start),
                (end - start) as usize,
                perms,
                Holes::Skip,
                &mut flush,
            )?;
            table.complete(change, &mut flush);
            split_out(&mut inner.regions, start, end, |mut r| {
                r.perms = perms;
                Some(r)
            });
        }
        inv.end();
        trace::record(Kind::NotifierEnd, range.start(), range.end());
        trace::record(Kind::ProtectEnd, start, end);
        Ok(())
    }

    /// Makes every page mapped in `[start, end)` coherent for instruction fetch (before it
    /// becomes executable).
    fn sync_icache_range(&self, start: u64, end: u64) -> Result<(), MmError> {
        let inner = self.inner.lock();
        let table = inner.table.as_ref().ok_or(MmError::Exited)?;
        table.walk(VirtAddr(start), (end - start) as usize, |m| {
            self.platform.sync_icache(m.pa, m.va.len() as usize)
        })?;
        Ok(())
    }

    /* ------------------------------------------------------------------------------------ */
    /* Access-flag ageing.                                                                   */
    /* ------------------------------------------------------------------------------------ */

    /// Test-and-clears the access flag of `[va, va + len)` and flushes the TLBs (CPU and
    /// secondary), then asks the subscribers' `clear_flush_young`. True if anything had been
    /// accessed (`ptep_clear_flush_young_notify`).
    pub fn clear_flush_young(&self, va: VirtAddr, len: usize) -> Result<bool, MmError> {
        self.age(va, len, true)
    }

    /// As [`clear_flush_young`](Self::clear_flush_young) without flushing any TLB: the access
    /// flag is a hint, stale cached copies only delay the next "young" (`clear_young_notify`).
    pub fn clear_young(&self, va: VirtAddr, len: usize) -> Result<bool, MmError> {
        self.age(va, len, false)
    }

    fn age(&self, va: VirtAddr, len: usize, flush: bool) -> Result<bool, MmError> {
        let (start, end) = check_range(va, len)?;
        let _mmap = self.mm.mmap_read();
        self.ensure_live()?;
        let young = {
            let mut inner = self.inner.lock();
            let table = inner.table.as_mut().ok_or(MmError::Exited)?;
            if flush {
                let mut f = Flush {
                    aspace: self,
                    secondary: true,
                };
                let change = table.clear_young(VirtAddr(start), (end - start) as usize, &mut f)?;
                let young = change.was_young();
                table.complete(change, &mut f);
                young
            } else {
                let mut f = NoFlush;
                let change = table.clear_young(VirtAddr(start), (end - start) as usize, &mut f)?;
                let young = change.was_young();
                table.complete(change, &mut f);
                young
            }
        };
        let secondary = if flush {
            self.mm.clear_flush_young(start, end)
        } else {
            self.mm.clear_young(start, end)
        };
        Ok(young | secondary)
    }

    /// Answers an Access-flag fault at `va`, from a CPU (the exception handler) or from a device
    /// (its SMMU event F_ACCESS, through `Sva::handle_events` and [`MmCore::mark_young`]): sets
    /// the access flag of the leaf translating it (Linux's `handle_mm_fault` making the entry
    /// young). Takes the page-table lock, not the mmap lock. An entry with AF = 0 is never cached (Arm ARM D8.4, "The Access
    /// flag"), so publishing the store is enough: the faulting access can be retried at once.
    /// Returns whether the flag was clear (`false`: someone else answered first).
    pub fn mark_young(&self, va: VirtAddr) -> Result<bool, MmError> {
        let (start, _) = check_range(va.align_down(PAGE), PAGE_SIZE)?;
        self.ensure_live()?;
        let mut inner = self.inner.lock();
        let table = inner.table.as_mut().ok_or(MmError::Exited)?;
        let change = table.set_young(VirtAddr(start)).map_err(|e| match e {
            PageTableError::NotMapped(_) => MmError::NotMapped(va),
            other => other.into(),
        })?;
        let was_old = !change.is_empty();
        table.complete(
            change,
            &mut Flush {
                aspace: self,
                secondary: true,
            },
        );
        Ok(was_old)
    }

    /// True if the page at `va` was accessed since its flag was last cleared, by the CPU or by a
    /// secondary user (`mmu_notifier_test_young`).
    pub fn test_young(&self, va: VirtAddr) -> Result<bool, MmError> {
        let (start, _) = check_range(va.align_down(PAGE), PAGE_SIZE)?;
        let _mmap = self.mm.mmap_read();
        self.ensure_live()?;
        let cpu = {
            let inner = self.inner.lock();
            let table = inner.table.as_ref().ok_or(MmError::Exited)?;
            table.test_young(VirtAddr(start), PAGE_SIZE)?
        };
        Ok(cpu || self.mm.test_young(start))
    }

    /* ------------------------------------------------------------------------------------ */
    /* Teardown.                                                                             */
    /* ------------------------------------------------------------------------------------ */

    /// The last user is gone and every subscriber got `release` (in `mmput`): free everything.
    fn teardown(&self) {
        let _mmap = self.mm.mmap_write();
        let mut inner = self.inner.lock();
        let Some(table) = inner.table.take() else {
            return;
        };
        let frames = self.platform.frames();
        let mut data_frames = Vec::new();
        let mut pages = 0;
        for r in inner.regions.values() {
            let anonymous = r.backing == Backing::Anonymous;
            let _ = table.walk(r.start, (r.end.0 - r.start.0) as usize, |m| {
                pages += m.va.pages();
                if anonymous {
                    let mut pa = m.pa.0;
                    for _ in 0..m.va.pages() {
                        data_frames.push(PhysAddr(pa));
                        pa += PAGE;
                    }
                }
            });
        }
        inner.regions.clear();
        drop(inner);
        // No CPU can load it any more (the table is gone: `load` fails); wait for any that
        // loaded it before. With a user reference per `Loaded` there is none: this is the
        // second line of the protocol, not the first.
        crate::sync::wait_until(|| self.active.load(Ordering::Acquire) == 0);
        table.destroy(|| {
            self.platform.full_barrier();
            if let Some(asid) = self.platform.asids().asid_of(&self.asid) {
                self.platform
                    .run_tlb_plan(&TlbPolicy::plan_all(TlbScope::Asid(asid)));
            }
            // Subscribers were released (and unlinked) first: nobody is left to tell, and the
            // SMMU quiesced its context in `release`.
        });
        for f in data_frames {
            frames.free(f);
        }
        self.stats
            .pages_unmapped
            .fetch_add(pages, Ordering::Relaxed);
    }
}

/// A device's Access-flag fault, reaching the space through its core ([`MmCore::mark_young`]).
impl<P: MmPlatform> MmFaultHandler for AddressSpace<P> {
    fn mark_young(&self, va: VirtAddr) -> Result<bool, FaultError> {
        AddressSpace::mark_young(self, va).map_err(|e| match e {
            MmError::Exited => FaultError::Exited,
            MmError::NotMapped(_) => FaultError::NotMapped(va),
            MmError::OutOfRange { .. } | MmError::Overflow { .. } => FaultError::OutOfRange(va),
            _ => FaultError::PageTable(va),
        })
    }
}

/// [`Invalidate`] for ageing without a flush: entries are only published.
struct NoFlush;

impl Invalidate for NoFlush {
    fn publish(&mut self) {}
    fn invalidate(&mut self, _inv: &TlbInvalidation) {}
}

/// The regions intersecting `[start, end)`, in order.
fn overlapping(
    regions: &BTreeMap<u64, Region>,
    start: u64,
    end: u64,
) -> impl Iterator<Item = &Region> {
    let first = regions
        .range(..=start)
        .next_back()
        .filter(|(_, r)| r.end.0 > start)
        .map(|(k, _)| *k)
        .unwrap_or(start);
    regions
        .range(first..end)
        .map(|(_, r)| r)
        .filter(move |r| r.end.0 > start && r.start.0 < end)
}

/// [`MmError::NotMapped`] at the first address of `[start, end)` that no region covers.
fn check_covered(regions: &BTreeMap<u64, Region>, start: u64, end: u64) -> Result<(), MmError> {
    let mut at = start;
    for r in overlapping(regions, start, end) {
        if r.start.0 > at {
            return Err(MmError::NotMapped(VirtAddr(at)));
        }
        at = r.end.0;
    }
    if at < end {
        return Err(MmError::NotMapped(VirtAddr(at)));
    }
    Ok(())
}

/// The lowest gap of `len` bytes in `[USER_START, USER_END)`, keeping a guard page between
/// regions.
fn find_gap(regions: &BTreeMap<u64, Region>, len: u64) -> Option<u64> {
    let mut at = USER_START;
    for r in regions.values() {
        if r.start.0 >= at.checked_add(len)? {
            return Some(at);
        }
        at = at.max(r.end.0.checked_add(PAGE)?);
    }
    (at.checked_add(len)? <= USER_END).then_some(at)
}

/// Splits the regions at `start` and `end` and replaces each piece inside `[start, end)` with
/// `f(piece)` (or removes it). One region at a time, from a cursor past the last one handled,
/// so an unmap or protection change of a region or two allocates nothing.
fn split_out(
    regions: &mut BTreeMap<u64, Region>,
    start: u64,
    end: u64,
    f: impl Fn(Region) -> Option<Region>,
) {
    // The common case, a whole region: one lookup, nothing to split.
    if let btree_map::Entry::Occupied(whole) = regions.entry(start) {
        if whole.get().end.0 == end {
            if let Some(n) = f(whole.remove()) {
                regions.insert(n.start.0, n);
            }
            return;
        }
    }
    let mut at = start;
    while at < end {
        let Some(r) = overlapping(regions, at, end).next().copied() else {
            break;
        };
        at = r.end.0;
        regions.remove(&r.start.0);
        let piece = |s: u64, e: u64| Region {
            start: VirtAddr(s),
            end: VirtAddr(e),
            backing: match r.backing {
                Backing::Physical(pa, m) => Backing::Physical(PhysAddr(pa.0 + (s - r.start.0)), m),
                b => b,
            },
            ..r
        };
        if r.start.0 < start {
            regions.insert(r.start.0, piece(r.start.0, start));
        }
        if r.end.0 > end {
            regions.insert(end, piece(end, r.end.0));
        }
        let inside = piece(r.start.0.max(start), r.end.0.min(end));
        if let Some(n) = f(inside) {
            regions.insert(n.start.0, n);
        }
    }
}

#[cfg(test)]
mod tests;
