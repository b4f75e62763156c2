//! The SMMUv3 driver core, written once against [`SmmuBackend`].
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
//! * **Every batch ends with one CMD_SYNC that is waited for.** Commands are written to the
//!   queue in batches (one CMDQ_PROD write per batch), then a CMD_SYNC; the caller returns only
//!   once SMMU_CMDQ_CONS has passed that CMD_SYNC, which means every earlier command has
//!   completed (§4.7.3). The wait polls a [`Clock`] and gives up with
//!   [`SmmuError::SyncTimeout`] — it never hangs. One lock serialises submissions, so each
//!   caller waits for its own CMD_SYNC only.
//! * **Command errors are recovered.** If the SMMU stops on a bad command (SMMU_GERROR.CMDQ_ERR
//!   with SMMU_CMDQ_CONS.ERR), the driver records it, replaces the command with a CMD_SYNC
//!   (CERROR_ILL; a CERROR_ABT fetch is simply retried), acknowledges by toggling the bit in
//!   SMMU_GERRORN, and lets the queue run on; the submission then fails with
//!   [`SmmuError::CommandFailed`] after its CMD_SYNC completed. An invalidation that fails this
//!   way falls back to a whole-ASID invalidation, so coherence never depends on the bad
//!   command.
//! * **Invalidation** of `[start, end)` in an address space follows the
//!   [`crate::iommu::planner`] strategy (per page, range, ASID-wide or Linux's policy), with
//!   VMID 0 everywhere (STE.S2VMID is 0 too: QEMU ≥ 9.2 tags IOTLB entries with it).
//! * **Release** ([`Smmu::quiesce`]) keeps the CD valid but disables TTB0 walks (EPD0 = 1) and
//!   fault recording (R = 0), then invalidates the CD for every attached stream and the whole
//!   ASID: in-flight DMA aborts quietly, and the page tables can be freed afterwards.
//! * **Last resort.** If the SMMU stops answering (a CMD_SYNC timed out and a quiesce did too),
//!   [`Smmu::abort_all_traffic`] turns translation off with SMMU_GBPA.ABORT set, which needs no
//!   command: every transaction of every stream then aborts, so nothing cached can be used.
//!   Later submissions fail at once with [`SmmuError::Disabled`] instead of timing out.
//! * **Events** are drained on request ([`Smmu::drain_events`]); a full queue loses events,
//!   which the SMMU signals with SMMU_EVENTQ_PROD.OVFLG and the driver acknowledges through
//!   OVACKFLG (§7.4) and counts.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use tock_registers::LocalRegisterCopy;

use crate::iommu::backend::{Clock, ContiguousFrameAllocator, SmmuBackend};
use crate::iommu::cd::{CdBuildError, CdFields, ContextDescriptor, CD_WORDS};
use crate::iommu::command::{Command, CommandCounts, CommandError};
use crate::iommu::event::{EventKind, EventRecord, EVENT_SIZE, EVENT_WORDS};
use crate::iommu::features::Features;
use crate::iommu::physmem::{self, Unreachable};
use crate::iommu::planner::{PlanError, PlanKind, PlannerConfig, Strategy, VMID};
use crate::iommu::queue::{QueueGeometry, QueuePtr};
use crate::iommu::regs::{
    offset, CommandErrorCode, CMDQ_CONS, CR0, CR1, CR2, EVENTQ_CONS, EVENTQ_PROD, GBPA, GERROR,
    Q_BASE, STRTAB_BASE, STRTAB_BASE_CFG,
};
use crate::iommu::ste::{Ste, STE_SIZE, STE_WORDS};
use crate::mm::phys::PhysMemory;
use crate::mm::{PhysAddr, VirtAddr, PAGE_SHIFT};
use crate::sync::atomic::{fence, AtomicBool, Ordering};

/// Command-queue entry size (§4.1).
const CMD_SIZE: usize = 16;

/// Driver settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmmuConfig {
    /// The largest StreamID that will be attached (sizes the linear stream table).
    pub max_sid: u32,
    /// log2 of the command-queue entries wanted (capped by SMMU_IDR1.CMDQS).
    pub cmdq_log2: u8,
    /// log2 of the event-queue entries wanted (capped by SMMU_IDR1.EVENTQS).
    pub eventq_log2: u8,
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
    /// 256 StreamIDs (PCIe bus 0), 256 commands, 128 events, Linux's invalidation policy,
    /// 48-bit VAs, Linux's 1 s poll timeout, 64-command batches.
    fn default() -> Self {
        Self {
            max_sid: 0xff,
            cmdq_log2: 8,
            eventq_log2: 7,
            strategy: Strategy::Auto,
            va_bits: 48,
            sync_timeout_ns: 1_000_000_000,
            ack_timeout_ns: 1_000_000_000,
            batch: 64,
        }
    }
}

/// A command the SMMU refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandFailure {
    pub code: CommandErrorCode,
    /// Queue index of the command.
    pub index: u32,
    /// The command as read back from the queue.
    pub command: Result<Command, CommandError>,
}

impl fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at command-queue slot {}", self.code, self.index)?;
        match self.command {
            Ok(c) => write!(f, " ({})", c.kind().name()),
            Err(e) => write!(f, " ({e})"),
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

/// What an address space looks like to the SMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextParams {
    /// The address space's page-table root (the CPU's TTBR0 table).
    pub root: PhysAddr,
    /// The CPU's MAIR_EL1 (the attribute indexes in the shared descriptors refer to it).
    pub mair: u64,
}

/// Everything that can go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmmuError {
    /// The SMMU lacks something the driver needs.
    Unsupported(&'static str),
    /// A setting is out of range.
    BadConfig(&'static str),
    /// No memory for a table or queue.
    OutOfMemory,
    /// Memory the driver must write is not reachable.
    Unreachable(PhysAddr),
    /// A register did not acknowledge an update in time.
    AckTimeout {
        register: &'static str,
        wanted: u32,
        seen: u32,
    },
    /// A CMD_SYNC did not complete in time.
    SyncTimeout {
        prod: QueuePtr,
        cons: QueuePtr,
    },
    /// The command queue did not drain enough to take more commands in time.
    CommandQueueFull {
        needed: u32,
        free: u32,
    },
    /// The SMMU refused a command (recovered: the queue runs on).
    CommandFailed(CommandFailure),
    /// Translation was turned off by [`Smmu::abort_all_traffic`]: all traffic aborts and no
    /// command is sent any more.
    Disabled,
    /// A StreamID beyond the stream table.
    SidOutOfRange {
        sid: u32,
        max: u32,
    },
    /// The stream is already attached (detach it first).
    StreamBusy(u32),
    /// The stream is not attached.
    StreamNotAttached(u32),
    NoSuchContext(ContextId),
    /// The context still has streams attached.
    ContextInUse(ContextId),
    /// The context was quiesced and cannot be attached any more.
    ContextQuiesced(ContextId),
    /// Every ASID is in use.
    AsidsExhausted,
    Plan(PlanError),
    Cd(CdBuildError),
    Command(CommandError),
}

impl fmt::Display for SmmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(what) => write!(f, "the SMMU does not implement {what}"),
            Self::BadConfig(what) => write!(f, "bad SMMU driver setting: {what}"),
            Self::OutOfMemory => f.write_str("out of memory for SMMU tables or queues"),
            Self::Unreachable(pa) => write!(f, "SMMU structure at {pa} is unreachable"),
            Self::AckTimeout {
                register,
                wanted,
                seen,
            } => {
                write!(
                    f,
                    "{register} did not acknowledge {wanted:#x} (reads {seen:#x})"
                )
            }
            Self::SyncTimeout { prod, cons } => {
                write!(
                    f,
                    "CMD_SYNC timed out (CMDQ_PROD {prod:#x}, CMDQ_CONS {cons:#x})"
                )
            }
            Self::CommandQueueFull { needed, free } => {
                write!(f, "command queue full: {needed} slots needed, {free} free")
            }
            Self::CommandFailed(c) => write!(f, "command failed: {c}"),
            Self::Disabled => {
                f.write_str("the SMMU was disabled after a failure: all traffic aborts")
            }
            Self::SidOutOfRange { sid, max } => write!(f, "StreamID {sid:#x} exceeds {max:#x}"),
            Self::StreamBusy(sid) => write!(f, "StreamID {sid:#x} is already attached"),
            Self::StreamNotAttached(sid) => write!(f, "StreamID {sid:#x} is not attached"),
            Self::NoSuchContext(c) => write!(f, "no SMMU context {}", c.0),
            Self::ContextInUse(c) => write!(f, "SMMU context {} still has streams attached", c.0),
            Self::ContextQuiesced(c) => write!(f, "SMMU context {} has been quiesced", c.0),
            Self::AsidsExhausted => f.write_str("no free ASID"),
            Self::Plan(e) => write!(f, "{e}"),
            Self::Cd(e) => write!(f, "{e}"),
            Self::Command(e) => write!(f, "{e}"),
        }
    }
}

impl From<Unreachable> for SmmuError {
    fn from(u: Unreachable) -> Self {
        Self::Unreachable(u.0)
    }
}

impl From<PlanError> for SmmuError {
    fn from(e: PlanError) -> Self {
        Self::Plan(e)
    }
}

/// What one invalidation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidationReport {
    pub plan: PlanKind,
    /// Commands sent, CMD_SYNC included.
    pub commands: CommandCounts,
    /// A command failed and a whole-ASID invalidation was sent instead.
    pub recovered: Option<CommandFailure>,
    /// The debug knob suppressed the invalidation.
    pub skipped: bool,
}

/// What one call of [`Smmu::drain_events`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventDrain {
    /// Records handed to the sink.
    pub drained: usize,
    /// The SMMU lost events since the last drain (EVENTQ_PROD.OVFLG toggled).
    pub overflowed: bool,
    /// An event-queue write aborted (GERROR.EVENTQ_ABT_ERR), acknowledged.
    pub write_aborted: bool,
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
    pub invalidations_asid: u64,
    pub invalidations_empty: u64,
    pub invalidations_skipped: u64,
    pub invalidation_fallbacks: u64,
    /// The longest successful [`Smmu::invalidate_range`] that reached the SMMU: waiting for the
    /// command queue, the TLBIs and the CMD_SYNC (the driver's clock, ns).
    pub slowest_invalidation_ns: u64,
    pub events: u64,
    pub events_by_kind: BTreeMap<EventKind, u64>,
    pub event_overflows: u64,
}

/// Debug-only knobs that break the driver on purpose, so tests can show what they catch.
/// Never enabled by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DebugKnobs {
    /// `invalidate_range` does nothing at all.
    pub skip_invalidation: bool,
    /// `invalidate_range` queues its TLBIs but no CMD_SYNC and does not wait.
    pub skip_sync: bool,
}

struct CommandQueue {
    base: PhysAddr,
    geo: QueueGeometry,
    /// Our copy of CMDQ_PROD (we are the only producer).
    prod: QueuePtr,
    stats: DriverStats,
}

struct EventQueue {
    base: PhysAddr,
    geo: QueueGeometry,
    cons: QueuePtr,
    /// The OVFLG value last acknowledged.
    ovack: u32,
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
    cmdq: spin::Mutex<CommandQueue>,
    eventq: spin::Mutex<EventQueue>,
    streams: spin::Mutex<Streams>,
    planner: spin::Mutex<PlannerConfig>,
    debug: spin::Mutex<DebugKnobs>,
    /// Set by [`Smmu::abort_all_traffic`].
    disabled: AtomicBool,
}

/// Frames needed for `bytes`, as an allocation order.
fn order_for(bytes: usize) -> u32 {
    let frames = bytes.div_ceil(1 << PAGE_SHIFT).max(1);
    frames.next_power_of_two().trailing_zeros()
}

/// Bits needed to number StreamIDs 0..=max_sid.
fn sid_bits_for(max_sid: u32) -> u8 {
    (32 - max_sid.leading_zeros()) as u8
}

impl<'a, B: SmmuBackend, C: Clock> Smmu<'a, B, C> {
    /// Probes the SMMU behind `regs`, allocates its stream table and queues, and enables it
    /// with every stream denied.
    ///
    /// On failure nothing stays allocated — unless the SMMU could not be disabled again, in
    /// which case its memory is leaked rather than handed back while it may still use it.
    pub fn new(
        regs: B,
        clock: C,
        mem: &'a dyn PhysMemory,
        frames: &'a dyn ContiguousFrameAllocator,
        config: SmmuConfig,
    ) -> Result<Self, SmmuError> {
        let features = Features::read(&regs);
        if let Some(missing) = features.missing_requirement() {
            return Err(SmmuError::Unsupported(missing));
        }
        if config.batch == 0 {
            return Err(SmmuError::BadConfig("batch must be at least 1"));
        }
        let planner = PlannerConfig::new(config.strategy, features.range_invalidation)?
            .with_va_bits(config.va_bits)?;
        let sid_log2 = sid_bits_for(config.max_sid);
        if sid_log2 > features.sid_bits {
            return Err(SmmuError::SidOutOfRange {
                sid: config.max_sid,
                max: ((1u64 << features.sid_bits) - 1) as u32,
            });
        }
        let cmdq_geo = QueueGeometry::clamped(config.cmdq_log2.min(features.cmdq_max_log2));
        let eventq_geo = QueueGeometry::clamped(config.eventq_log2.min(features.eventq_max_log2));
        if cmdq_geo.entries() < 2 {
            return Err(SmmuError::BadConfig(
                "the command queue needs at least 2 entries",
            ));
        }

        let strtab_order = order_for(STE_SIZE << sid_log2);
        let cmdq_order = order_for(cmdq_geo.bytes(CMD_SIZE));
        let eventq_order = order_for(eventq_geo.bytes(EVENT_SIZE));
        let strtab = frames
            .alloc_contiguous_zeroed(strtab_order)
            .map_err(|_| SmmuError::OutOfMemory)?;
        let cmdq = match frames.alloc_contiguous_zeroed(cmdq_order) {
            Ok(q) => q,
            Err(_) => {
                frames.free_contiguous(strtab, strtab_order);
                return Err(SmmuError::OutOfMemory);
            }
        };
        let eventq = match frames.alloc_contiguous_zeroed(eventq_order) {
            Ok(q) => q,
            Err(_) => {
                frames.free_contiguous(cmdq, cmdq_order);
                frames.free_contiguous(strtab, strtab_order);
                return Err(SmmuError::OutOfMemory);
            }
        };
        let asid_words = (1usize << features.asid_bits).div_ceil(64);
        let smmu = Smmu {
            regs,
            clock,
            mem,
            frames,
            features,
            config,
            strtab,
            strtab_order,
            sid_log2,
            cmdq_order,
            eventq_order,
            cmdq: spin::Mutex::new(CommandQueue {
                base: cmdq,
                geo: cmdq_geo,
                prod: 0,
                stats: DriverStats::default(),
            }),
            eventq: spin::Mutex::new(EventQueue {
                base: eventq,
                geo: eventq_geo,
                cons: 0,
                ovack: 0,
            }),
            streams: spin::Mutex::new(Streams {
                contexts: BTreeMap::new(),
                next_context: 0,
                attached: BTreeMap::new(),
                // ASID 0 is never handed out (as Linux), so a zeroed CD can never alias one.
                asids: {
                    let mut v = vec![0u64; asid_words];
                    v[0] = 1;
                    v
                },
                asid_cursor: 1,
            }),
            planner: spin::Mutex::new(planner),
            debug: spin::Mutex::new(DebugKnobs::default()),
            disabled: AtomicBool::new(false),
        };
        match smmu.reset() {
            Ok(()) => Ok(smmu),
            Err(e) => {
                if smmu.disable().is_ok() {
                    smmu.free_structures();
                }
                Err(e)
            }
        }
    }

    /// The reset sequence (§3.2 / Linux `arm_smmu_device_reset()`): everything off, traffic
    /// aborted, tables and queues programmed, command queue on, caches invalidated, event
    /// queue on, translation on.
    fn reset(&self) -> Result<(), SmmuError> {
        self.disable()?;
        let mut cr1 = LocalRegisterCopy::<u32, CR1::Register>::new(0);
        // Write-back cacheable, inner shareable table and queue accesses (coherent SMMU).
        cr1.modify(
            CR1::TABLE_SH.val(3)
                + CR1::TABLE_OC.val(1)
                + CR1::TABLE_IC.val(1)
                + CR1::QUEUE_SH.val(3)
                + CR1::QUEUE_OC.val(1)
                + CR1::QUEUE_IC.val(1),
        );
        self.regs.write32(offset::CR1, cr1.get());
        // Record C_BAD_STREAMID; ignore broadcast TLBIs (our ASIDs are private).
        let mut cr2 = LocalRegisterCopy::<u32, CR2::Register>::new(0);
        cr2.modify(CR2::RECINVSID::SET + CR2::PTM::SET);
        self.regs.write32(offset::CR2, cr2.get());

        let mut base = LocalRegisterCopy::<u64, STRTAB_BASE::Register>::new(0);
        base.modify(STRTAB_BASE::ADDR.val(self.strtab.as_u64() >> 6) + STRTAB_BASE::RA::SET);
        self.regs.write64(offset::STRTAB_BASE, base.get());
        let mut cfg = LocalRegisterCopy::<u32, STRTAB_BASE_CFG::Register>::new(0);
        cfg.modify(
            STRTAB_BASE_CFG::FMT::Linear + STRTAB_BASE_CFG::LOG2SIZE.val(self.sid_log2.into()),
        );
        self.regs.write32(offset::STRTAB_BASE_CFG, cfg.get());

        {
            let mut q = self.cmdq.lock();
            self.regs
                .write64(offset::CMDQ_BASE, queue_base(q.base, q.geo));
            self.regs.write32(offset::CMDQ_PROD, 0);
            self.regs.write32(offset::CMDQ_CONS, 0);
            q.prod = 0;
        }
        {
            let mut q = self.eventq.lock();
            self.regs
                .write64(offset::EVENTQ_BASE, queue_base(q.base, q.geo));
            self.regs.write32(offset::EVENTQ_PROD, 0);
            self.regs.write32(offset::EVENTQ_CONS, 0);
            q.cons = 0;
            q.ovack = 0;
        }
        let mut cr0 = LocalRegisterCopy::<u32, CR0::Register>::new(0);
        cr0.modify(CR0::CMDQEN::SET);
        self.write_cr0(cr0.get())?;
        // Nothing cached from before us may survive (§4.3.2 CFGI_ALL, §4.4.4.1 NSNH_ALL).
        self.submit(&[Command::CfgiAll, Command::TlbiNsnhAll], true)?;
        cr0.modify(CR0::EVENTQEN::SET);
        self.write_cr0(cr0.get())?;
        // Polled operation: no interrupts (the kernel may enable the wired ones later).
        self.write_acked(offset::IRQ_CTRL, offset::IRQ_CTRLACK, "SMMU_IRQ_CTRLACK", 0)?;
        cr0.modify(CR0::SMMUEN::SET);
        self.write_cr0(cr0.get())
    }

    /// Turns translation and both queues off, with GBPA aborting all traffic meanwhile. CR0 is
    /// written even if GBPA never acknowledges: SMMUEN = 0 is the last resort's point, and an
    /// SMMU that ignores GBPA may still obey CR0. The first error is reported.
    fn disable(&self) -> Result<(), SmmuError> {
        let gbpa = self.set_gbpa_abort();
        let cr0 = self.write_cr0(0);
        gbpa.and(cr0)
    }

    /// Sets SMMU_GBPA.ABORT (§6.3.14) and waits for UPDATE to clear.
    fn set_gbpa_abort(&self) -> Result<(), SmmuError> {
        let mut gbpa = LocalRegisterCopy::<u32, GBPA::Register>::new(0);
        gbpa.modify(GBPA::ABORT::SET + GBPA::UPDATE::SET);
        self.regs.write32(offset::GBPA, gbpa.get());
        let deadline = self.deadline(self.config.ack_timeout_ns);
        loop {
            let seen = self.regs.read32(offset::GBPA);
            if !LocalRegisterCopy::<u32, GBPA::Register>::new(seen).is_set(GBPA::UPDATE) {
                return Ok(());
            }
            if self.clock.now_ns() >= deadline {
                return Err(SmmuError::AckTimeout {
                    register: "SMMU_GBPA",
                    wanted: gbpa.get(),
                    seen,
                });
            }
            crate::sync::spin_loop();
        }
    }

    fn write_cr0(&self, value: u32) -> Result<(), SmmuError> {
        self.write_acked(offset::CR0, offset::CR0ACK, "SMMU_CR0ACK", value)
    }

    /// Writes a register that has an ACK twin (§6.3.9 CR0/CR0ACK, §6.3.16 IRQ_CTRL/ACK) and
    /// waits until the twin reads the same value.
    fn write_acked(
        &self,
        reg: usize,
        ack: usize,
        name: &'static str,
        value: u32,
    ) -> Result<(), SmmuError> {
        self.regs.write32(reg, value);
        let deadline = self.deadline(self.config.ack_timeout_ns);
        loop {
            let seen = self.regs.read32(ack);
            if seen == value {
                return Ok(());
            }
            if self.clock.now_ns() >= deadline {
                return Err(SmmuError::AckTimeout {
                    register: name,
                    wanted: value,
                    seen,
                });
            }
            crate::sync::spin_loop();
        }
    }

    fn deadline(&self, timeout_ns: u64) -> u64 {
        self.clock.now_ns().saturating_add(timeout_ns)
    }

    fn free_structures(&self) {
        self.frames.free_contiguous(self.strtab, self.strtab_order);
        self.frames
            .free_contiguous(self.cmdq.lock().base, self.cmdq_order);
        self.frames
            .free_contiguous(self.eventq.lock().base, self.eventq_order);
    }

    /// Disables the SMMU (all traffic aborts) and frees its tables and queues. If the SMMU does
    /// not acknowledge, the memory is leaked rather than freed under it.
    pub fn shutdown(self) -> Result<(), SmmuError> {
        self.disable()?;
        let cds: Vec<PhysAddr> = self
            .streams
            .lock()
            .contexts
            .values()
            .map(|c| c.cd)
            .collect();
        for cd in cds {
            self.frames.free(cd);
        }
        self.free_structures();
        Ok(())
    }

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

    /// Selects the invalidation strategy (`Range` needs SMMU_IDR3.RIL).
    /// The invalidation strategy in use.
    pub fn strategy(&self) -> Strategy {
        self.planner.lock().strategy()
    }

    pub fn set_strategy(&self, strategy: Strategy) -> Result<(), SmmuError> {
        let mut p = self.planner.lock();
        *p = p.with_strategy(strategy)?;
        Ok(())
    }

    /// Debug-only: sets knobs that deliberately break invalidation.
    pub fn set_debug_knobs(&self, knobs: DebugKnobs) {
        *self.debug.lock() = knobs;
    }

    /// The debug knobs in force.
    pub fn debug_knobs(&self) -> DebugKnobs {
        *self.debug.lock()
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

    // ---- command submission ----

    /// Submits `commands` in batches, then (if `sync`) one CMD_SYNC, and waits for it.
    fn submit(&self, commands: &[Command], sync: bool) -> Result<CommandCounts, SmmuError> {
        self.submit_iter(commands.iter().copied(), sync)
    }

    fn submit_iter(
        &self,
        commands: impl Iterator<Item = Command>,
        sync: bool,
    ) -> Result<CommandCounts, SmmuError> {
        let mut q = self.cmdq.lock();
        if self.disabled.load(Ordering::Acquire) {
            return Err(SmmuError::Disabled);
        }
        let mut counts = CommandCounts::default();
        let mut failure = None;
        let mut batch = Vec::with_capacity(self.config.batch as usize);
        let mut commands = commands.peekable();
        while commands.peek().is_some() {
            batch.clear();
            batch.extend(commands.by_ref().take(self.config.batch as usize));
            for chunk in batch.chunks(q.geo.entries() as usize) {
                self.publish(&mut q, chunk, &mut failure)?;
                counts.add_all(chunk);
            }
        }
        if sync {
            let index = u64::from(q.prod);
            crate::trace::record(crate::trace::Kind::CmdSyncBegin, index, 0);
            self.publish(&mut q, &[Command::SYNC], &mut failure)?;
            counts.add(Command::SYNC.kind());
            let waited = self.wait_consumed(&mut q, &mut failure);
            let failed = waited.is_err() || failure.is_some();
            crate::trace::record(crate::trace::Kind::CmdSyncEnd, index, u64::from(failed));
            waited?;
        }
        match failure {
            Some(f) => Err(SmmuError::CommandFailed(f)),
            None => Ok(counts),
        }
    }

    /// Writes `cmds` (at most a queue's worth) after waiting for room, then CMDQ_PROD.
    fn publish(
        &self,
        q: &mut CommandQueue,
        cmds: &[Command],
        failure: &mut Option<CommandFailure>,
    ) -> Result<(), SmmuError> {
        let needed = cmds.len() as u32;
        self.wait_for_space(q, needed, failure)?;
        for cmd in cmds {
            let words = cmd.encode().map_err(SmmuError::Command)?;
            let slot = q.base.as_u64() + (CMD_SIZE as u64) * u64::from(q.geo.index(q.prod));
            physmem::store(self.mem, PhysAddr(slot), words[0], Ordering::Relaxed)?;
            physmem::store(self.mem, PhysAddr(slot + 8), words[1], Ordering::Relaxed)?;
            q.prod = q.geo.advance(q.prod, 1);
            q.stats.commands.add(cmd.kind());
            crate::trace::record(crate::trace::Kind::SmmuCommand, words[0] & 0xff, words[0]);
        }
        // The entries (and any STE/CD written before) must be visible before PROD moves.
        fence(Ordering::Release);
        self.regs.write32(offset::CMDQ_PROD, q.prod);
        q.stats.prod_writes += 1;
        Ok(())
    }

    fn wait_for_space(
        &self,
        q: &mut CommandQueue,
        needed: u32,
        failure: &mut Option<CommandFailure>,
    ) -> Result<(), SmmuError> {
        let deadline = self.deadline(self.config.sync_timeout_ns);
        loop {
            let cons = self.poll_cons(q, failure)?;
            let free = q.geo.free(q.prod, cons);
            if free >= needed {
                return Ok(());
            }
            if self.clock.now_ns() >= deadline {
                q.stats.queue_full_timeouts += 1;
                return Err(SmmuError::CommandQueueFull { needed, free });
            }
            crate::sync::spin_loop();
        }
    }

    /// Waits until the SMMU has consumed everything up to our PROD (the last entry being our
    /// CMD_SYNC).
    fn wait_consumed(
        &self,
        q: &mut CommandQueue,
        failure: &mut Option<CommandFailure>,
    ) -> Result<(), SmmuError> {
        let deadline = self.deadline(self.config.sync_timeout_ns);
        loop {
            let cons = self.poll_cons(q, failure)?;
            if q.geo.is_empty(q.prod, cons) {
                // Whatever the SMMU wrote before completing is visible after this.
                fence(Ordering::Acquire);
                return Ok(());
            }
            if self.clock.now_ns() >= deadline {
                q.stats.sync_timeouts += 1;
                return Err(SmmuError::SyncTimeout { prod: q.prod, cons });
            }
            crate::sync::spin_loop();
        }
    }

    /// Reads CMDQ_CONS; if the SMMU stopped on an error, records and repairs it (§7.1) and
    /// lets the queue run on. GERROR is read first: a CONS read before it could predate an
    /// error raised in between, and name the wrong command and error code.
    fn poll_cons(
        &self,
        q: &mut CommandQueue,
        failure: &mut Option<CommandFailure>,
    ) -> Result<QueuePtr, SmmuError> {
        let gerror = self.regs.read32(offset::GERROR);
        let gerrorn = self.regs.read32(offset::GERRORN);
        let raw = self.regs.read32(offset::CMDQ_CONS);
        let active = LocalRegisterCopy::<u32, GERROR::Register>::new(gerror ^ gerrorn);
        if !active.is_set(GERROR::CMDQ_ERR) {
            return Ok(q.geo.ptr(raw));
        }
        let err =
            LocalRegisterCopy::<u32, CMDQ_CONS::Register>::new(raw).read(CMDQ_CONS::ERR) as u8;
        let cons = q.geo.ptr(raw);
        let slot = PhysAddr(q.base.as_u64() + (CMD_SIZE as u64) * u64::from(q.geo.index(cons)));
        let command = physmem::load_words::<2>(self.mem, slot).map_err(SmmuError::from)?;
        let code = CommandErrorCode::from_raw(err).unwrap_or(CommandErrorCode::Other(0));
        let f = CommandFailure {
            code,
            index: q.geo.index(cons),
            command: Command::decode(command),
        };
        q.stats.command_errors += 1;
        q.stats.last_command_error = Some(f);
        failure.get_or_insert(f);
        if code != CommandErrorCode::Abort {
            // CERROR_ILL (and anything else): the command cannot be run; a CMD_SYNC in its
            // place keeps the queue's meaning. CERROR_ABT was a fetch abort: retry as is.
            let sync = Command::SYNC.encode().map_err(SmmuError::Command)?;
            physmem::store(self.mem, slot, sync[0], Ordering::Relaxed)?;
            physmem::store(
                self.mem,
                PhysAddr(slot.as_u64() + 8),
                sync[1],
                Ordering::Relaxed,
            )?;
            fence(Ordering::Release);
        }
        // Acknowledge exactly this error by making our GERRORN bit equal GERROR's.
        let bit = 1 << GERROR::CMDQ_ERR.shift;
        self.regs
            .write32(offset::GERRORN, (gerrorn & !bit) | (gerror & bit));
        Ok(q.geo.ptr(self.regs.read32(offset::CMDQ_CONS)))
    }

    // ---- stream table and contexts ----

    fn ste_addr(&self, sid: u32, word: usize) -> PhysAddr {
        PhysAddr(self.strtab.as_u64() + (STE_SIZE as u64) * u64::from(sid) + 8 * word as u64)
    }

    fn check_sid(&self, sid: u32) -> Result<(), SmmuError> {
        if u64::from(sid) >> self.sid_log2 != 0 {
            return Err(SmmuError::SidOutOfRange {
                sid,
                max: self.max_sid(),
            });
        }
        Ok(())
    }

    /// Replaces the STE of `sid` (valid dword 0 last; break-before-make if needed), then
    /// CFGI_STE + CMD_SYNC.
    fn write_ste(&self, sid: u32, ste: &Ste) -> Result<(), SmmuError> {
        let current = Ste(physmem::load_words::<STE_WORDS>(
            self.mem,
            self.ste_addr(sid, 0),
        )?);
        let cfgi = [Command::CfgiSte { sid, leaf: true }];
        if !ste.is_valid() {
            // Turning the stream off: V goes first, so no valid mix is ever visible.
            physmem::store(self.mem, self.ste_addr(sid, 0), ste.0[0], Ordering::Release)?;
            for (i, w) in ste.0.iter().enumerate().skip(1) {
                physmem::store(self.mem, self.ste_addr(sid, i), *w, Ordering::Relaxed)?;
            }
            self.submit(&cfgi, true)?;
            return Ok(());
        }
        if current.is_valid() && current.0[1..] != ste.0[1..] {
            physmem::store(self.mem, self.ste_addr(sid, 0), 0, Ordering::Release)?;
            self.submit(&cfgi, true)?;
        }
        for (i, w) in ste.0.iter().enumerate().skip(1) {
            physmem::store(self.mem, self.ste_addr(sid, i), *w, Ordering::Relaxed)?;
        }
        physmem::store(self.mem, self.ste_addr(sid, 0), ste.0[0], Ordering::Release)?;
        self.submit(&cfgi, true)?;
        Ok(())
    }

    fn alloc_asid(streams: &mut Streams) -> Option<u16> {
        let bits = streams.asids.len() * 64;
        for step in 0..bits {
            let asid = (streams.asid_cursor + step) % bits;
            let (w, b) = (asid / 64, asid % 64);
            if streams.asids[w] & (1 << b) == 0 {
                streams.asids[w] |= 1 << b;
                streams.asid_cursor = asid + 1;
                return Some(asid as u16);
            }
        }
        None
    }

    fn free_asid(streams: &mut Streams, asid: u16) {
        streams.asids[usize::from(asid) / 64] &= !(1 << (asid % 64));
    }

    /// Creates a context for an address space: a fresh ASID and a CD pointing at its page
    /// tables (see [`CdFields::sva`]). No stream uses it yet.
    pub fn create_context(&self, params: ContextParams) -> Result<ContextId, SmmuError> {
        let mut streams = self.streams.lock();
        let asid = Self::alloc_asid(&mut streams).ok_or(SmmuError::AsidsExhausted)?;
        let ips = self.features.oas.min(5); // 4 KiB granule: at most 48 output bits
        let fields = match CdFields::sva(asid, params.root, self.config.va_bits, ips, params.mair) {
            Ok(f) => f,
            Err(e) => {
                Self::free_asid(&mut streams, asid);
                return Err(SmmuError::Cd(e));
            }
        };
        let cd = match self.frames.alloc_zeroed() {
            Ok(cd) => cd,
            Err(_) => {
                Self::free_asid(&mut streams, asid);
                return Err(SmmuError::OutOfMemory);
            }
        };
        if let Err(e) = self.write_cd(cd, &fields) {
            self.frames.free(cd);
            Self::free_asid(&mut streams, asid);
            return Err(e);
        }
        let id = ContextId(streams.next_context);
        streams.next_context += 1;
        streams.contexts.insert(
            id,
            Context {
                asid,
                cd,
                fields,
                sids: Vec::new(),
                quiesced: false,
            },
        );
        Ok(id)
    }

    fn write_cd(&self, cd: PhysAddr, fields: &CdFields) -> Result<(), SmmuError> {
        let words = ContextDescriptor::encode(fields).0;
        for (i, w) in words.iter().enumerate().take(CD_WORDS).skip(1) {
            physmem::store(
                self.mem,
                PhysAddr(cd.as_u64() + 8 * i as u64),
                *w,
                Ordering::Relaxed,
            )?;
        }
        physmem::store(self.mem, cd, words[0], Ordering::Release)?;
        Ok(())
    }

    /// The ASID of a context.
    pub fn context_asid(&self, ctx: ContextId) -> Result<u16, SmmuError> {
        self.streams
            .lock()
            .contexts
            .get(&ctx)
            .map(|c| c.asid)
            .ok_or(SmmuError::NoSuchContext(ctx))
    }

    /// The StreamIDs attached to a context.
    pub fn context_streams(&self, ctx: ContextId) -> Result<Vec<u32>, SmmuError> {
        self.streams
            .lock()
            .contexts
            .get(&ctx)
            .map(|c| c.sids.clone())
            .ok_or(SmmuError::NoSuchContext(ctx))
    }

    /// Points stream `sid` at context `ctx` (stage-1 STE with the context's CD).
    pub fn attach(&self, sid: u32, ctx: ContextId) -> Result<(), SmmuError> {
        self.check_sid(sid)?;
        let mut streams = self.streams.lock();
        if streams.attached.contains_key(&sid) {
            return Err(SmmuError::StreamBusy(sid));
        }
        let c = streams
            .contexts
            .get(&ctx)
            .ok_or(SmmuError::NoSuchContext(ctx))?;
        if c.quiesced {
            return Err(SmmuError::ContextQuiesced(ctx));
        }
        let ste = Ste::stage1(c.cd).map_err(|_| SmmuError::Unreachable(c.cd))?;
        self.install(&mut streams, sid, &ste, Attachment::Context(ctx))
    }

    /// Lets stream `sid` bypass translation.
    pub fn attach_bypass(&self, sid: u32) -> Result<(), SmmuError> {
        self.attach_fixed(sid, Attachment::Bypass, &Ste::bypass())
    }

    /// Aborts all traffic of stream `sid`, silently.
    pub fn attach_abort(&self, sid: u32) -> Result<(), SmmuError> {
        self.attach_fixed(sid, Attachment::Abort, &Ste::abort())
    }

    fn attach_fixed(&self, sid: u32, how: Attachment, ste: &Ste) -> Result<(), SmmuError> {
        self.check_sid(sid)?;
        let mut streams = self.streams.lock();
        if streams.attached.contains_key(&sid) {
            return Err(SmmuError::StreamBusy(sid));
        }
        self.install(&mut streams, sid, ste, how)
    }

    /// Writes the STE of an unattached stream and records the attachment. If that fails, the
    /// STE is taken back; if even that fails, the STE may be live, so the attachment is
    /// recorded anyway (a context cannot be destroyed under it; `detach` retries the clean-up).
    fn install(
        &self,
        streams: &mut Streams,
        sid: u32,
        ste: &Ste,
        how: Attachment,
    ) -> Result<(), SmmuError> {
        let result = self.write_ste(sid, ste);
        if result.is_err() && self.write_ste(sid, &Ste::INVALID).is_ok() {
            return result;
        }
        streams.attached.insert(sid, how);
        if let Attachment::Context(ctx) = how {
            if let Some(c) = streams.contexts.get_mut(&ctx) {
                c.sids.push(sid);
            }
        }
        result
    }

    /// Detaches stream `sid`: its STE becomes invalid again (traffic aborts, C_BAD_STE).
    pub fn detach(&self, sid: u32) -> Result<(), SmmuError> {
        self.check_sid(sid)?;
        let mut streams = self.streams.lock();
        let how = *streams
            .attached
            .get(&sid)
            .ok_or(SmmuError::StreamNotAttached(sid))?;
        self.write_ste(sid, &Ste::INVALID)?;
        streams.attached.remove(&sid);
        if let Attachment::Context(ctx) = how {
            if let Some(c) = streams.contexts.get_mut(&ctx) {
                c.sids.retain(|s| *s != sid);
            }
        }
        Ok(())
    }

    /// Invalidates every IOTLB entry of `ctx` for `[start, end)` (exclusive end; `0..u64::MAX`
    /// is the whole address space) and returns once the SMMU has completed it. This is what
    /// `arch_invalidate_secondary_tlbs` calls.
    pub fn invalidate_range(
        &self,
        ctx: ContextId,
        start: VirtAddr,
        end: VirtAddr,
    ) -> Result<InvalidationReport, SmmuError> {
        let asid = self.context_asid(ctx)?;
        let plan = self.planner.lock().plan(asid, start, end)?;
        let debug = *self.debug.lock();
        let mut report = InvalidationReport {
            plan: plan.kind(),
            commands: CommandCounts::default(),
            recovered: None,
            skipped: false,
        };
        let counted = |stats: &mut DriverStats, kind: PlanKind| match kind {
            PlanKind::Nothing => stats.invalidations_empty += 1,
            PlanKind::PerPage { .. } => stats.invalidations_per_page += 1,
            PlanKind::Range { .. } => stats.invalidations_range += 1,
            PlanKind::Asid(_) => stats.invalidations_asid += 1,
        };
        if debug.skip_invalidation {
            self.cmdq.lock().stats.invalidations_skipped += 1;
            report.skipped = true;
            return Ok(report);
        }
        counted(&mut self.cmdq.lock().stats, plan.kind());
        if plan.is_empty() {
            return Ok(report);
        }
        let started = self.clock.now_ns();
        let result = self.invalidate_with_fallback(&plan, asid, debug, &mut report);
        if result.is_ok() {
            // A timed-out invalidation is counted as such, not as a slow one.
            let took = self.clock.now_ns().saturating_sub(started);
            let mut q = self.cmdq.lock();
            q.stats.slowest_invalidation_ns = q.stats.slowest_invalidation_ns.max(took);
        }
        result.map(|()| report)
    }

    /// Sends `plan`; if the SMMU refused one of its commands, the whole ASID instead.
    fn invalidate_with_fallback(
        &self,
        plan: &crate::iommu::planner::Plan,
        asid: u16,
        debug: DebugKnobs,
        report: &mut InvalidationReport,
    ) -> Result<(), SmmuError> {
        match self.submit_iter(plan.commands(), !debug.skip_sync) {
            Ok(counts) => report.commands = counts,
            Err(SmmuError::CommandFailed(f)) => {
                // The queue ran on, but that invalidation may not have happened: redo it for
                // the whole ASID, which cannot be malformed.
                self.cmdq.lock().stats.invalidation_fallbacks += 1;
                let fallback = [Command::TlbiNhAsid { vmid: VMID, asid }];
                report.commands = plan.counts();
                report.commands.add(Command::SYNC.kind());
                report.commands.merge(&self.submit(&fallback, true)?);
                report.recovered = Some(f);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Invalidates every cached translation and configuration of the SMMU (CFGI_ALL,
    /// TLBI_NSNH_ALL, CMD_SYNC: §4.3.5, §4.4.6), global entries included, which no
    /// invalidation by ASID removes. For clean-up after a test that broke coherence on purpose.
    pub fn invalidate_all(&self) -> Result<(), SmmuError> {
        self.submit(&[Command::CfgiAll, Command::TlbiNsnhAll], true)
            .map(|_| ())
    }

    /// The "release" path: the context stays valid but every access now faults without an
    /// event (CD.EPD0 = 1, CD.R = 0), and nothing of it stays cached. Call before the address
    /// space's page tables are freed.
    pub fn quiesce(&self, ctx: ContextId) -> Result<(), SmmuError> {
        let mut streams = self.streams.lock();
        let c = streams
            .contexts
            .get_mut(&ctx)
            .ok_or(SmmuError::NoSuchContext(ctx))?;
        let quiet = c.fields.quiesced();
        // Only dword 0 changes: a single 64-bit store, so the SMMU sees old or new, never a mix.
        let w0 = ContextDescriptor::encode(&quiet).0[0];
        physmem::store(self.mem, c.cd, w0, Ordering::Release)?;
        c.fields = quiet;
        c.quiesced = true;
        let (asid, sids) = (c.asid, c.sids.clone());
        let cmds = sids
            .iter()
            .map(|&sid| Command::CfgiCd {
                sid,
                ssid: 0,
                leaf: true,
            })
            .chain(core::iter::once(Command::TlbiNhAsid { vmid: VMID, asid }));
        self.submit_iter(cmds, true)?;
        Ok(())
    }

    /// Frees a context whose streams have all been detached: its ASID is invalidated before it
    /// can be reused, then the CD is freed.
    pub fn destroy_context(&self, ctx: ContextId) -> Result<(), SmmuError> {
        let mut streams = self.streams.lock();
        let c = streams
            .contexts
            .get(&ctx)
            .ok_or(SmmuError::NoSuchContext(ctx))?;
        if !c.sids.is_empty() {
            return Err(SmmuError::ContextInUse(ctx));
        }
        self.submit(
            &[Command::TlbiNhAsid {
                vmid: VMID,
                asid: c.asid,
            }],
            true,
        )?;
        let Some(c) = streams.contexts.remove(&ctx) else {
            return Err(SmmuError::NoSuchContext(ctx));
        };
        Self::free_asid(&mut streams, c.asid);
        self.frames.free(c.cd);
        Ok(())
    }

    // ---- events and global errors ----

    /// Hands every pending event record to `sink`, acknowledges an overflow and an
    /// event-queue abort if there was one. Bounded: at most two queues' worth per call.
    pub fn drain_events(
        &self,
        mut sink: impl FnMut(&EventRecord),
    ) -> Result<EventDrain, SmmuError> {
        let mut q = self.eventq.lock();
        let mut result = EventDrain::default();
        let limit = 2 * q.geo.entries() as usize;
        let mut by_kind: Vec<EventKind> = Vec::new();
        let mut ovflg = q.ovack;
        while result.drained < limit {
            let prod_raw = self.regs.read32(offset::EVENTQ_PROD);
            fence(Ordering::Acquire);
            ovflg = LocalRegisterCopy::<u32, EVENTQ_PROD::Register>::new(prod_raw)
                .read(EVENTQ_PROD::OVFLG);
            let prod = q.geo.ptr(prod_raw);
            if q.geo.is_empty(prod, q.cons) {
                break;
            }
            while !q.geo.is_empty(prod, q.cons) && result.drained < limit {
                let slot = q.base.as_u64() + (EVENT_SIZE as u64) * u64::from(q.geo.index(q.cons));
                let words = physmem::load_words::<EVENT_WORDS>(self.mem, PhysAddr(slot))?;
                let ev = EventRecord::decode(words);
                sink(&ev);
                by_kind.push(ev.kind);
                q.cons = q.geo.advance(q.cons, 1);
                result.drained += 1;
            }
            // Hand the slots back (and acknowledge any overflow seen so far).
            let mut cons = LocalRegisterCopy::<u32, EVENTQ_CONS::Register>::new(q.cons);
            cons.modify(EVENTQ_CONS::OVACKFLG.val(ovflg));
            self.regs.write32(offset::EVENTQ_CONS, cons.get());
        }
        if ovflg != q.ovack {
            result.overflowed = true;
            q.ovack = ovflg;
            let mut cons = LocalRegisterCopy::<u32, EVENTQ_CONS::Register>::new(q.cons);
            cons.modify(EVENTQ_CONS::OVACKFLG.val(ovflg));
            self.regs.write32(offset::EVENTQ_CONS, cons.get());
        }
        let gerror = self.regs.read32(offset::GERROR);
        let gerrorn = self.regs.read32(offset::GERRORN);
        let bit = 1 << GERROR::EVENTQ_ABT_ERR.shift;
        if (gerror ^ gerrorn) & bit != 0 {
            result.write_aborted = true;
            self.regs
                .write32(offset::GERRORN, (gerrorn & !bit) | (gerror & bit));
        }
        drop(q);
        let mut c = self.cmdq.lock();
        c.stats.events += result.drained as u64;
        c.stats.event_overflows += u64::from(result.overflowed);
        for k in by_kind {
            *c.stats.events_by_kind.entry(k).or_default() += 1;
        }
        Ok(result)
    }

    /// Global errors other than command-queue errors (those are handled by submissions) that
    /// are active; they are acknowledged. Returns the raw GERROR bits that were active.
    pub fn acknowledge_global_errors(&self) -> u32 {
        let gerror = self.regs.read32(offset::GERROR);
        let gerrorn = self.regs.read32(offset::GERRORN);
        let cmdq = 1 << GERROR::CMDQ_ERR.shift;
        let active = (gerror ^ gerrorn) & !cmdq;
        if active != 0 {
            self.regs.write32(offset::GERRORN, gerrorn ^ active);
        }
        active
    }
}

/// A queue base register value: address, size and the allocate hint.
fn queue_base(base: PhysAddr, geo: QueueGeometry) -> u64 {
    let mut v = LocalRegisterCopy::<u64, Q_BASE::Register>::new(0);
    v.modify(
        Q_BASE::ADDR.val(base.as_u64() >> 5)
            + Q_BASE::LOG2SIZE.val(geo.log2_entries().into())
            + Q_BASE::ALLOC::SET,
    );
    v.get()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(order_for(64), 0);
        assert_eq!(order_for(4096), 0);
        assert_eq!(order_for(4097), 1);
        assert_eq!(order_for(16 * 1024), 2);
        assert_eq!(order_for(12 * 1024), 2);
        assert_eq!(sid_bits_for(0), 0);
        assert_eq!(sid_bits_for(0x10), 5);
        assert_eq!(sid_bits_for(0xff), 8);
        assert_eq!(sid_bits_for(u32::MAX), 32);
        let q = queue_base(PhysAddr(0x4000_1000), QueueGeometry::new(8).unwrap());
        assert_eq!(q, 1 << 62 | 0x4000_1000 | 8);
    }
}
