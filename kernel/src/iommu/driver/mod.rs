//! The SMMUv3 driver core, written once against [`SmmuBackend`]: the [`Smmu`] type and its
//! state here, one file per family of operations (`init`, `cmdq`, `strtab`, `context`,
//! `invalidate` with the [`planner`], `evtq`, `error`).
//!
//! # How the driver talks to the SMMU
//!
//! The SMMU reads three kinds of structures from memory: the **stream table** (one STE per
//! StreamID, linear, sized from the largest StreamID the platform uses and aligned to its own
//! size), **context descriptors** (one CD per address space: page-table root, VA size, ASID)
//! and the **command queue**; it writes the **event queue**. The driver owns all of them and
//! changes them only under these rules:
//!
//! * **Default deny.** Before anything is enabled, SMMU_GBPA.ABORT makes all traffic abort
//!   while translation is off. The stream table starts zeroed, so a StreamID nobody attached
//!   has an invalid STE: its traffic is terminated and C_BAD_STE recorded.
//! * **Structures before pointers.** An STE or CD is written with its valid dword 0 last, and
//!   an STE that is already valid is first made invalid (break-before-make) unless only dword 0
//!   changes. Every change is followed by the matching CMD_CFGI_* and a CMD_SYNC, because the
//!   SMMU may cache configuration (§4.3: edits are invisible until invalidated).
//! * **Every submission ends with a CMD_SYNC that is waited for.** Commands are written to the
//!   queue in batches (one CMDQ_PROD write per batch); the caller returns only once
//!   SMMU_CMDQ_CONS has passed a CMD_SYNC written after all of them, which means every one of
//!   them has completed (§4.7.3). Alone, a caller writes its own CMD_SYNC with its last batch;
//!   when CPUs submit at once, one CMD_SYNC serves all whose commands precede it
//!   ([`coalesce`] argues the ordering; loom checks it). The wait polls a [`Clock`] and gives
//!   up with [`SmmuError::SyncTimeout`] — it never hangs — and a CMD_SYNC given up on fails
//!   every caller waiting for it.
//! * **Command errors are recovered.** If the SMMU stops on a bad command (SMMU_GERROR.CMDQ_ERR
//!   with SMMU_CMDQ_CONS.ERR), the driver records it, replaces the command with a CMD_SYNC
//!   (CERROR_ILL; a CERROR_ABT fetch is simply retried), acknowledges by toggling the bit in
//!   SMMU_GERRORN, and lets the queue run on; the submission that queued the command (whoever
//!   found the error) then fails with [`SmmuError::CommandFailed`] after its CMD_SYNC completed. An invalidation that fails this
//!   way falls back to a whole-ASID invalidation, so coherence never depends on the bad
//!   command.
//! * **Invalidation** of `[start, end)` in an address space follows the
//!   [`crate::iommu::driver::planner`] strategy (per page, range, ASID-wide or Linux's policy), with
//!   VMID 0 everywhere (STE.S2VMID is 0 too: QEMU ≥ 9.2 tags IOTLB entries with it).
//! * **Release** ([`Smmu::quiesce`]) keeps the CD valid but disables TTB0 walks (EPD0 = 1) and
//!   fault recording (R = 0), then invalidates the CD for every attached stream and the whole
//!   ASID: in-flight DMA aborts quietly, and the page tables can be freed afterwards.
//! * **Last resort.** If the SMMU stops answering (a CMD_SYNC timed out and a quiesce did too),
//!   [`Smmu::abort_all_traffic`] turns translation off with SMMU_GBPA.ABORT set, which needs no
//!   command: every transaction of every stream then aborts, so nothing cached can be used.
//!   Later submissions fail at once with [`SmmuError::Disabled`] instead of timing out.
//! * **Events** are decoded on request ([`Smmu::drain_events`]), by SVA's `Sva::handle_events`
//!   after each transfer that may fault (it answers the Access-flag faults, F_ACCESS, of bound
//!   streams). Where the board wires the SMMU's eventq interrupt, the kernel enables it
//!   (SMMU_IRQ_CTRL, [`Smmu::set_interrupts`]) and its handler only moves raw records from the
//!   queue into a bounded software log ([`Smmu::collect_events`]), so the SMMU's queue empties
//!   as events arrive; a drain reads the log first, then the queue. Without the interrupt the
//!   drain alone empties the queue (polling). The queue is as large as SMMU_IDR1.EVENTQS allows
//!   within a memory budget ([`SmmuConfig::eventq_budget`]), the log as large as the queue in
//!   use. A full queue loses events, which the SMMU signals with SMMU_EVENTQ_PROD.OVFLG
//!   (acknowledged through OVACKFLG, §7.4) or, on QEMU, with GERROR.EVENTQ_ABT_ERR; both are
//!   acknowledged, counted and reported as lost. A full log loses nothing: the handler moves
//!   only what it has room for and the rest waits in the queue for a drain.

mod cmdq;
pub mod coalesce;
mod context;
mod cover;
mod error;
mod evtq;
mod init;
mod invalidate;
pub mod planner;
mod strtab;

pub use context::ContextParams;
pub use error::{CommandFailure, SmmuError};
pub use evtq::{EventDrain, EventQueueResize, EventQueueSize};
pub use invalidate::InvalidationReport;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use tock_registers::LocalRegisterCopy;

use crate::iommu::backend::{Clock, ContiguousFrameAllocator, SmmuBackend};
use crate::iommu::driver::planner::{PlanError, PlanKind, PlannerConfig, Strategy, VMID};
use crate::iommu::physmem::{self, Unreachable};
use crate::iommu::spec::cd::{CdBuildError, CdFields, ContextDescriptor, CD_WORDS};
use crate::iommu::spec::command::{Command, CommandCounts, CommandError};
use crate::iommu::spec::event::{EventKind, EventRecord, EVENT_SIZE, EVENT_WORDS};
use crate::iommu::spec::features::Features;
use crate::iommu::spec::queue::{QueueGeometry, QueuePtr, MAX_LOG2_ENTRIES};
use crate::iommu::spec::regs::{
    offset, CommandErrorCode, CMDQ_CONS, CR0, CR1, CR2, EVENTQ_CONS, EVENTQ_PROD, GBPA, GERROR,
    IRQ_CTRL, Q_BASE, STRTAB_BASE, STRTAB_BASE_CFG,
};
use crate::iommu::spec::ste::{Ste, STE_SIZE, STE_WORDS};
use crate::mm::phys::PhysMemory;
use crate::mm::{PhysAddr, VirtAddr, PAGE_SHIFT};
use crate::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};

/// Command-queue entry size (§4.1).
const CMD_SIZE: usize = 16;
/// 64-bit words per command-queue entry.
const CMD_WORDS: usize = CMD_SIZE / 8;

/// The event queue's default memory budget: 256 KiB, 8192 records. A faulting 4 KiB transfer
/// of 4-byte transactions (QEMU's `edu`, the model's engine) records 1024 events, so the queue
/// holds eight such transfers between two drains. (Linux caps every queue at 4 MiB,
/// `Q_MAX_SZ_SHIFT` in `arm-smmu-v3.h`; our drains are frequent and our RAM small.)
pub const EVENTQ_BUDGET: usize = 256 * 1024;

/// Driver settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmmuConfig {
    /// The largest StreamID that will be attached (sizes the linear stream table).
    pub max_sid: u32,
    /// log2 of the command-queue entries wanted (capped by SMMU_IDR1.CMDQS).
    pub cmdq_log2: u8,
    /// log2 of the event-queue entries wanted: the queue gets the least of this,
    /// SMMU_IDR1.EVENTQS (§6.3.2) and what fits in `eventq_budget`.
    pub eventq_log2: u8,
    /// Bytes the event queue may take (32 per record, §7.3).
    pub eventq_budget: usize,
    /// Invalidation strategy.
    pub strategy: Strategy,
    /// VA size of the address spaces bound (TTB0 region).
    pub va_bits: u8,
    /// How long to wait for a CMD_SYNC or queue space.
    pub sync_timeout_ns: u64,
    /// How long to wait for CR0ACK / GBPA.UPDATE.
    pub ack_timeout_ns: u64,
    /// Commands published per CMDQ_PROD write (Linux's CMDQ_BATCH_ENTRIES).
    pub batch: u32,
}

impl Default for SmmuConfig {
    /// 256 StreamIDs (PCIe bus 0), 256 commands, as many events as the SMMU allows within
    /// [`EVENTQ_BUDGET`], Linux's invalidation policy, 48-bit VAs, Linux's 1 s poll timeout,
    /// 64-command batches.
    fn default() -> Self {
        Self {
            max_sid: 0xff,
            cmdq_log2: 8,
            eventq_log2: MAX_LOG2_ENTRIES,
            eventq_budget: EVENTQ_BUDGET,
            strategy: Strategy::Auto,
            va_bits: 48,
            sync_timeout_ns: 1_000_000_000,
            ack_timeout_ns: 1_000_000_000,
            batch: 64,
        }
    }
}

/// Identifies a context (one CD, one ASID, one address space) of an [`Smmu`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContextId(u32);

impl ContextId {
    /// The context's number (for reports; numbers are never reused).
    pub const fn index(self) -> u32 {
        self.0
    }

    /// A context numbered `index`, for test doubles of the driver (an
    /// [`SvaIommu`](crate::iommu::sva::SvaIommu) that models the SMMU); the driver numbers its
    /// own contexts.
    pub const fn from_index(index: u32) -> Self {
        Self(index)
    }
}

/// Counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DriverStats {
    /// Commands submitted, by kind.
    pub commands: CommandCounts,
    /// CMDQ_PROD writes.
    pub prod_writes: u64,
    pub sync_timeouts: u64,
    pub queue_full_timeouts: u64,
    pub command_errors: u64,
    pub last_command_error: Option<CommandFailure>,
    /// Calls of [`Smmu::invalidate_range`], by what they did.
    pub invalidations_per_page: u64,
    pub invalidations_range: u64,
    /// Of `invalidations_range`, those sent as one command over a free cover.
    pub invalidations_covered: u64,
    pub invalidations_asid: u64,
    pub invalidations_empty: u64,
    pub invalidations_skipped: u64,
    pub invalidation_fallbacks: u64,
    /// Submissions that waited for another CPU's CMD_SYNC instead of writing their own.
    pub syncs_shared: u64,
    /// The longest successful [`Smmu::invalidate_range`] that reached the SMMU: waiting for the
    /// command queue, the TLBIs and the CMD_SYNC (the driver's clock, ns).
    pub slowest_invalidation_ns: u64,
    pub events: u64,
    pub events_by_kind: BTreeMap<EventKind, u64>,
    /// Drains that found EVENTQ_PROD.OVFLG toggled (the SMMU dropped events, §7.4).
    pub event_overflows: u64,
    /// Drains that found GERROR.EVENTQ_ABT_ERR active (an event write failed; QEMU's SMMU
    /// reports a full queue this way).
    pub event_write_aborts: u64,
}

/// Debug-only knobs that break the driver on purpose, so tests can show what they catch.
/// Never enabled by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DebugKnobs {
    /// `invalidate_range` does nothing at all.
    pub skip_invalidation: bool,
    /// `invalidate_range` queues its TLBIs but no CMD_SYNC and does not wait.
    pub skip_sync: bool,
    /// A submission may wait for the newest CMD_SYNC even if it was written before its own
    /// commands (the wrong sharing rule, for the twin tests of [`coalesce`]).
    pub adopt_earlier_sync: bool,
    /// The free cover is taken without asking the page tables, even over mapped neighbours
    /// (the twin of the IOTLB hit-rate checks).
    pub cover_ignores_tables: bool,
}

impl DebugKnobs {
    /// One bit per knob, in declaration order: the knobs live in one atomic word, so every
    /// submission reads them with a single load instead of a lock.
    fn to_bits(self) -> u32 {
        [
            self.skip_invalidation,
            self.skip_sync,
            self.adopt_earlier_sync,
            self.cover_ignores_tables,
        ]
        .iter()
        .enumerate()
        .fold(0, |bits, (i, &on)| bits | u32::from(on) << i)
    }

    fn from_bits(bits: u32) -> Self {
        let on = |i: usize| bits & (1 << i) != 0;
        Self {
            skip_invalidation: on(0),
            skip_sync: on(1),
            adopt_earlier_sync: on(2),
            cover_ignores_tables: on(3),
        }
    }
}

struct CommandQueue<'a> {
    base: PhysAddr,
    /// The queue's memory, [`CMD_WORDS`] words per entry (the accessor's own atomics, which
    /// the SMMU model reads too: `core`'s even under loom).
    words: &'a [core::sync::atomic::AtomicU64],
    geo: QueueGeometry,
    /// Our copy of CMDQ_PROD (we are the only producer).
    prod: QueuePtr,
    /// CMDQ_CONS at its last read.
    cons: QueuePtr,
    ledger: coalesce::SyncLedger,
    stats: DriverStats,
}

struct EventQueue {
    base: PhysAddr,
    /// The entries in use (at most `allocated`; fewer only while a test shrinks it).
    geo: QueueGeometry,
    /// The entries the memory at `base` holds.
    allocated: QueueGeometry,
    cons: QueuePtr,
    /// The OVFLG value last acknowledged.
    ovack: u32,
    /// An overflow acknowledged (by the interrupt, or a drain's own pass) and not yet reported
    /// by a drain.
    overflow_unreported: bool,
    /// Records moved out of the queue, not yet decoded.
    log: evtq::EventLog,
}

struct Context {
    asid: u16,
    cd: PhysAddr,
    fields: CdFields,
    sids: Vec<u32>,
    quiesced: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attachment {
    Context(ContextId),
    Bypass,
    Abort,
}

struct Streams {
    contexts: BTreeMap<ContextId, Context>,
    next_context: u32,
    attached: BTreeMap<u32, Attachment>,
    asids: Vec<u64>,
    asid_cursor: usize,
}

/// An SMMUv3 driven through backend `B`, timing out with clock `C`.
pub struct Smmu<'a, B: SmmuBackend, C: Clock> {
    regs: B,
    clock: C,
    mem: &'a dyn PhysMemory,
    frames: &'a dyn ContiguousFrameAllocator,
    features: Features,
    config: SmmuConfig,
    strtab: PhysAddr,
    strtab_order: u32,
    sid_log2: u8,
    cmdq_order: u32,
    eventq_order: u32,
    cmdq: coalesce::SharedQueue<CommandQueue<'a>>,
    /// CPUs submitting at once share CMD_SYNCs (else each writes its own, as Linux).
    share_syncs: AtomicBool,
    eventq: spin::Mutex<EventQueue>,
    streams: spin::Mutex<Streams>,
    planner: spin::Mutex<PlannerConfig>,
    /// [`DebugKnobs`] as bits (`DebugKnobs::to_bits`).
    debug: AtomicU32,
    /// Set by [`Smmu::abort_all_traffic`].
    disabled: AtomicBool,
    /// Serializes SMMU_CR0 changes made after probe (a resize turning the event queue off and
    /// on, the last resort turning translation off), so neither writes back a stale CR0. Its
    /// holders take no other lock (a resize takes it under the event queue's).
    cr0: spin::Mutex<()>,
}

impl<'a, B: SmmuBackend, C: Clock> Smmu<'a, B, C> {
    /// The features read at probe time.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The settings.
    pub fn config(&self) -> &SmmuConfig {
        &self.config
    }

    /// The largest StreamID the stream table covers.
    pub fn max_sid(&self) -> u32 {
        ((1u64 << self.sid_log2) - 1) as u32
    }

    /// The invalidation planner in use.
    pub fn planner(&self) -> PlannerConfig {
        *self.planner.lock()
    }

    /// The invalidation strategy in use.
    pub fn strategy(&self) -> Strategy {
        self.planner.lock().strategy()
    }

    /// Selects the invalidation strategy (`Range` needs SMMU_IDR3.RIL).
    pub fn set_strategy(&self, strategy: Strategy) -> Result<(), SmmuError> {
        let mut p = self.planner.lock();
        *p = p.with_strategy(strategy)?;
        Ok(())
    }

    /// Whether range invalidations may take a free cover (on by default; off is Linux's
    /// exact encoding, for comparison). See [`planner::Plan::cover`].
    pub fn set_free_cover(&self, free_cover: bool) {
        let mut p = self.planner.lock();
        *p = p.with_free_cover(free_cover);
    }

    /// Debug-only: sets knobs that deliberately break invalidation.
    pub fn set_debug_knobs(&self, knobs: DebugKnobs) {
        self.debug.store(knobs.to_bits(), Ordering::Release);
    }

    /// Whether CPUs submitting at once share CMD_SYNCs (on by default; off is Linux's way,
    /// for comparison).
    pub fn set_sync_sharing(&self, share: bool) {
        self.share_syncs.store(share, Ordering::Relaxed);
    }

    /// The debug knobs in force.
    pub fn debug_knobs(&self) -> DebugKnobs {
        DebugKnobs::from_bits(self.debug.load(Ordering::Acquire))
    }

    /// The last resort when the SMMU stops completing commands: translation off with
    /// SMMU_GBPA.ABORT set (§6.3.2, §6.3.9), which aborts every transaction of every stream
    /// and needs no command queue. The tables and queues stay allocated (the SMMU may still
    /// read them); later commands fail with [`SmmuError::Disabled`]. Idempotent.
    pub fn abort_all_traffic(&self) -> Result<(), SmmuError> {
        self.disabled.store(true, Ordering::SeqCst);
        self.disable()
    }

    /// True once [`Smmu::abort_all_traffic`] was called.
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Acquire)
    }

    /// Counters so far.
    pub fn stats(&self) -> DriverStats {
        self.cmdq.lock().stats.clone()
    }
}
