//! A software SMMUv3: the same register interface, in-memory structures and commands as the
//! real thing, so that the one driver runs unchanged on it (Raspberry Pi 4, host tests).
//!
//! What it models, and where it is stricter than QEMU on purpose:
//!
//! * **Registers** (§6.3): ID registers describing a stage-1 SMMU with 16-bit ASIDs/VMIDs, RIL,
//!   4 KiB granule and a linear stream table only; CR0/CR0ACK (optionally lagging, to exercise
//!   the driver's polling), GBPA with UPDATE, GERROR/GERRORN toggles, the queue registers with
//!   the event-queue indexes on page 1 only. Accesses to anything else, or base-register writes
//!   while the queue/table is enabled, are ignored and counted in
//!   [`ModelStats::bad_register_accesses`].
//! * **Command queue** (§4): consumed synchronously when CMDQ_PROD is written (as QEMU does),
//!   but TLBI and CFGI commands take effect only when a later CMD_SYNC completes — hardware is
//!   allowed to delay them until then, so a forgotten CMD_SYNC shows up as a stale translation
//!   here, which QEMU cannot show. Hardware may also act at once, so at the SYNC a command
//!   removes only what was cached when it was consumed: an entry refilled in between survives,
//!   as it does on QEMU. Illegal commands (unknown opcode, the reserved range
//!   encoding, SSEC) stop the queue with CMDQ_CONS.ERR = CERROR_ILL and GERROR.CMDQ_ERR until
//!   software acknowledges through GERRORN (§7.1).
//! * **Decoding** ([`decode`]): commands, STEs and CDs are decoded by the model's own reading
//!   of the spec tables, not by the driver's encoders, so a misplaced field in the driver is
//!   not cancelled out by decoding it with the same layout.
//! * **Configuration** (§5.2, §5.4): invalid STEs/CDs raise C_BAD_STE / C_BAD_CD. STEs and CDs
//!   are cached apart, and each CFGI drops exactly what §4.3 names (an STE change followed only
//!   by CFGI_CD keeps the old STE; QEMU drops the whole stream on any CFGI).
//! * **Translation**: an independent stage-1 walker ([`walk`]), an IOTLB ([`iotlb`]) tagged
//!   (ASID, VMID, VA, size) with global (nG = 0) leaves matching every ASID, and a walk cache
//!   ([`walkcache`]) of table descriptors that only Leaf = 0 (or wider) TLBIs remove. VMID is
//!   taken from STE.S2VMID like QEMU ≥ 9.2's nested SMMU. Faults are recorded as events only
//!   when CD.R = 1.
//!
//! Where the model and QEMU differ, and so how Pi and QEMU figures compare: see
//! `docs/smmu-model.md`.
//! * **Event queue** (§7.3, §7.4): records written at EVENTQ_PROD; when full, events are lost
//!   and EVENTQ_PROD.OVFLG toggles (if no overflow is already pending).
//! * **Coherence checker** ([`checker`]): see there.
//! * **Fault injection** ([`Knobs`]): a stalled command queue, a CMD_SYNC that never
//!   completes, a one-shot command error, a lagging CR0ACK, aborting event-queue writes.
//!   (Event-queue overflow needs no knob: a small queue and an edu-like device do it.)

pub mod checker;
pub mod decode;
pub mod dma;
pub mod iotlb;
pub mod master;
pub mod walk;
pub mod walkcache;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use tock_registers::LocalRegisterCopy;

use crate::iommu::backend::SmmuBackend;
use crate::iommu::spec::cd::{BadCd, CdGranule, Stage1Config, CD_WORDS};
use crate::iommu::spec::command::{Command, CommandCounts, Granule, TlbiVa};
use crate::iommu::spec::event::{AccessKind, EventKind, EventRecord, FaultClass, EVENT_SIZE};
use crate::iommu::physmem;
use crate::iommu::spec::queue::QueueGeometry;
use crate::iommu::spec::regs::{
    self, offset, CommandErrorCode, CR0, CR2, EVENTQ_CONS, EVENTQ_PROD, GBPA, Q_BASE, STRTAB_BASE,
    STRTAB_BASE_CFG,
};
use crate::iommu::spec::ste::{BadSte, StreamConfig, STE_SIZE, STE_WORDS};
use crate::mm::phys::PhysMemory;
use crate::mm::{PhysAddr, VirtAddr};
use crate::sync::atomic::Ordering;

use checker::{Cached as CachedEntry, Checker, Entry, StaleTranslation, UnmapNote};
use iotlb::{Iotlb, IotlbConfig, IotlbTag};
use walk::{Leaf, TableStep, WalkFault};
use walkcache::WalkCache;

/// What the model implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    /// SMMU_IDR1.SIDSIZE.
    pub sid_bits: u8,
    /// SMMU_IDR1.CMDQS.
    pub cmdq_max_log2: u8,
    /// SMMU_IDR1.EVENTQS.
    pub eventq_max_log2: u8,
    /// SMMU_IDR5.OAS encoding (4 = 44 bits, like QEMU).
    pub oas: u8,
    /// SMMU_IDR3.RIL.
    pub range_invalidation: bool,
    /// SMMU_IDR0.ASID16 (else 8-bit ASIDs).
    pub asid16: bool,
    /// Tag IOTLB entries with STE.S2VMID and match TLBI VMIDs (QEMU ≥ 9.2's nested SMMU, which
    /// also advertises stage 2 in SMMU_IDR0; stage-2 STEs themselves are not modelled).
    pub vmid_tagging: bool,
    pub iotlb: IotlbConfig,
    /// Run the coherence checker on every cached translation.
    pub checker: bool,
}

impl Default for ModelConfig {
    /// Like QEMU 10's `virt` SMMU: 16-bit StreamIDs, 2^19-entry queues, 44-bit OAS, RIL, VMID
    /// tagging, a 256-entry IOTLB flushed when full — with the checker on.
    fn default() -> Self {
        Self {
            sid_bits: 16,
            cmdq_max_log2: 19,
            eventq_max_log2: 19,
            oas: 4,
            range_invalidation: true,
            asid16: true,
            vmid_tagging: true,
            iotlb: IotlbConfig::QEMU,
            checker: true,
        }
    }
}

/// A [`ModelConfig`] that describes no possible SMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelConfigError {
    SidBits(u8),
    QueueSize(u8),
    Oas(u8),
}

impl fmt::Display for ModelConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SidBits(b) => write!(f, "SIDSIZE {b} exceeds 32"),
            Self::QueueSize(b) => write!(f, "queue size 2^{b} exceeds 2^19"),
            Self::Oas(o) => write!(f, "OAS encoding {o} is reserved"),
        }
    }
}

/// Fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Knobs {
    /// The SMMU consumes no commands at all (a wedged SMMU: the queue fills up).
    pub stall_command_queue: bool,
    /// A CMD_SYNC at the head of the queue never completes (and nothing after it runs).
    pub stall_sync: bool,
    /// The next command (of the given opcode, or any if `None`) fails with this error.
    pub fail_command: Option<(Option<u8>, CommandErrorCode)>,
    /// After each CR0 write, this many CR0ACK reads still return the old value.
    pub cr0ack_lag: u32,
    /// Event-queue writes abort (the SMMU raises GERROR.EVENTQ_ABT_ERR, the event is lost).
    pub abort_event_writes: bool,
}

/// Why a translation failed (the model's view; [`FaultKind::event`] gives the event number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// SMMUEN = 0 and GBPA.ABORT = 1.
    GlobalAbort,
    /// STE.Config = abort.
    StreamAbort,
    BadStreamId,
    SteFetch(PhysAddr),
    BadSte(BadSte),
    CdFetch(PhysAddr),
    BadCd(BadCd),
    Translation {
        level: u8,
    },
    AccessFlag {
        level: u8,
    },
    AddressSize {
        level: u8,
    },
    Permission {
        level: u8,
    },
    WalkAbort {
        level: u8,
        pa: PhysAddr,
    },
}

impl FaultKind {
    /// The event this fault is reported with, if any.
    pub fn event(&self) -> Option<EventKind> {
        Some(match self {
            Self::GlobalAbort | Self::StreamAbort => return None,
            Self::BadStreamId => EventKind::BadStreamId,
            Self::SteFetch(_) => EventKind::SteFetch,
            Self::BadSte(_) => EventKind::BadSte,
            Self::CdFetch(_) => EventKind::CdFetch,
            Self::BadCd(_) => EventKind::BadCd,
            Self::Translation { .. } => EventKind::Translation,
            Self::AccessFlag { .. } => EventKind::Access,
            Self::AddressSize { .. } => EventKind::AddrSize,
            Self::Permission { .. } => EventKind::Permission,
            Self::WalkAbort { .. } => EventKind::WalkEabt,
        })
    }

    fn from_walk(f: WalkFault) -> Self {
        match f {
            WalkFault::Translation { level } => Self::Translation { level },
            WalkFault::AccessFlag { level } => Self::AccessFlag { level },
            WalkFault::AddressSize { level } => Self::AddressSize { level },
            WalkFault::External { level, pa } => Self::WalkAbort { level, pa },
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GlobalAbort => f.write_str("aborted (SMMU disabled, GBPA.ABORT)"),
            Self::StreamAbort => f.write_str("aborted (STE.Config = abort)"),
            Self::BadStreamId => f.write_str("C_BAD_STREAMID"),
            Self::SteFetch(pa) => write!(f, "F_STE_FETCH at {pa}"),
            Self::BadSte(e) => write!(f, "C_BAD_STE: {e}"),
            Self::CdFetch(pa) => write!(f, "F_CD_FETCH at {pa}"),
            Self::BadCd(e) => write!(f, "C_BAD_CD: {e}"),
            Self::Translation { level } => write!(f, "F_TRANSLATION (level {level})"),
            Self::AccessFlag { level } => write!(f, "F_ACCESS (level {level})"),
            Self::AddressSize { level } => write!(f, "F_ADDR_SIZE (level {level})"),
            Self::Permission { level } => write!(f, "F_PERMISSION (level {level})"),
            Self::WalkAbort { level, pa } => write!(f, "F_WALK_EABT (level {level}, {pa})"),
        }
    }
}

/// A failed translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranslationFault {
    pub kind: FaultKind,
    /// An event record was written to the event queue for it.
    pub recorded: bool,
}

impl fmt::Display for TranslationFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            self.kind,
            if self.recorded {
                " (event recorded)"
            } else {
                ""
            }
        )
    }
}

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub pa: PhysAddr,
    /// Bytes from `pa` to the end of the page/block (for bypass: to the end of the 4 KiB page).
    pub contiguous: u64,
    /// Served from the IOTLB.
    pub iotlb_hit: bool,
}

/// Counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelStats {
    pub translations: u64,
    pub iotlb_hits: u64,
    pub iotlb_misses: u64,
    pub iotlb_evictions: u64,
    pub iotlb_capacity_flushes: u64,
    /// IOTLB entries removed by TLBI commands.
    pub iotlb_invalidated: u64,
    pub config_hits: u64,
    pub config_misses: u64,
    pub faults: u64,
    pub events_recorded: u64,
    /// Events dropped because the event queue was full (each may toggle OVFLG).
    pub events_lost: u64,
    pub commands: CommandCounts,
    pub syncs_completed: u64,
    pub command_errors: u64,
    /// Cached translations that disagreed with the tables outside any open unmap window, and
    /// walks through a cached table descriptor that memory no longer holds. Spurious faults are
    /// not counted here.
    pub stale_translations: u64,
    /// Accesses that faulted on cached state although the tables now allow them (a read-only
    /// entry cached before an upgrade): lost work, not a safety violation.
    pub spurious_faults: u64,
    /// Walks that started from a cached table descriptor.
    pub walk_cache_hits: u64,
    /// Walk-cache entries removed by TLBI commands.
    pub walk_cache_invalidated: u64,
    /// Disagreements inside an open unmap window (allowed races, see [`checker`]).
    pub raced_translations: u64,
    pub bad_register_accesses: u64,
}

impl ModelStats {
    /// IOTLB hits per thousand stage-1 lookups, or `None` before any lookup (integer: the
    /// kernel does not use the FPU).
    pub fn iotlb_hits_per_mille(&self) -> Option<u64> {
        let n = self.iotlb_hits + self.iotlb_misses;
        (n != 0).then(|| self.iotlb_hits * 1000 / n)
    }
}

/// A decoded stream configuration: the STE and, for stage 1, its CD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamCfg {
    Abort,
    Bypass,
    Stage1 { s1: Stage1Config, vmid: u16 },
}

/// A decoded STE, as the configuration cache keeps it (§3.17: STEs and CDs are cached apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SteCfg {
    Abort,
    Bypass,
    Stage1 { cd: PhysAddr, vmid: u16 },
}

/// A configuration-cache entry and when it was filled (the model's clock).
#[derive(Debug, Clone, Copy)]
struct Cached<T> {
    value: T,
    born: u64,
}

/// A TLBI or CFGI consumed from the queue, waiting for a CMD_SYNC.
#[derive(Debug, Clone, Copy)]
struct Pending {
    cmd: Command,
    /// The model's clock when the command was consumed: hardware may act on it from then on,
    /// so at the SYNC it is known to have removed only entries filled before this.
    consumed_at: u64,
}

/// Which cached leaf or table descriptor a translation relied on, for the checker.
#[derive(Debug, Clone, Copy)]
struct CacheUse {
    cached: CachedEntry,
    /// A walk went through a cached table descriptor that memory no longer holds.
    table_gone: bool,
}

#[derive(Debug, Default)]
struct Regs {
    cr0: u32,
    cr0ack: u32,
    cr0ack_target: u32,
    cr0ack_lag_left: u32,
    cr1: u32,
    cr2: u32,
    gbpa: u32,
    irq_ctrl: u32,
    gerror: u32,
    gerrorn: u32,
    strtab_base: u64,
    strtab_base_cfg: u32,
    cmdq_base: u64,
    cmdq_prod: u32,
    /// Read index, plus ERR in bits `[30:24]`.
    cmdq_cons: u32,
    eventq_base: u64,
    /// Write index, plus OVFLG in bit 31.
    eventq_prod: u32,
    /// Read index, plus OVACKFLG in bit 31.
    eventq_cons: u32,
    /// IRQ configuration registers: stored, never used (no MSIs).
    irq_cfg: BTreeMap<usize, u64>,
}

struct State {
    cfg: ModelConfig,
    regs: Regs,
    knobs: Knobs,
    /// TLBI/CFGI commands consumed and waiting for a CMD_SYNC.
    pending: Vec<Pending>,
    /// Cached STEs by StreamID.
    stes: BTreeMap<u32, Cached<SteCfg>>,
    /// Cached CDs by (StreamID, SubstreamID); only SubstreamID 0 exists (SSIDSIZE = 0).
    cds: BTreeMap<(u32, u32), Cached<Stage1Config>>,
    iotlb: Iotlb,
    walk_cache: WalkCache,
    /// Orders cache fills, command consumption and unmap notes.
    clock: u64,
    checker: Checker,
    stats: ModelStats,
}

/// The software SMMUv3.
pub struct SmmuModel<'m> {
    mem: &'m dyn PhysMemory,
    state: spin::Mutex<State>,
}

/// The GERROR bits the model can raise.
const GERROR_CMDQ_ERR: u32 = 1 << 0;
const GERROR_EVENTQ_ABT_ERR: u32 = 1 << 2;
const EVENTQ_OVFLG: u32 = 1 << 31;
const CMDQ_ERR_SHIFT: u32 = 24;
const CMDQ_ERR_MASK: u32 = 0x7f << CMDQ_ERR_SHIFT;

impl<'m> SmmuModel<'m> {
    /// A reset SMMU reaching memory through `mem`.
    pub fn new(mem: &'m dyn PhysMemory, cfg: ModelConfig) -> Result<Self, ModelConfigError> {
        if cfg.sid_bits > 32 {
            return Err(ModelConfigError::SidBits(cfg.sid_bits));
        }
        for q in [cfg.cmdq_max_log2, cfg.eventq_max_log2] {
            QueueGeometry::new(q).map_err(|_| ModelConfigError::QueueSize(q))?;
        }
        if regs::oas_bits(cfg.oas).is_none() {
            return Err(ModelConfigError::Oas(cfg.oas));
        }
        let state = State {
            cfg,
            regs: Regs {
                gbpa: 0x1000,
                ..Regs::default()
            },
            knobs: Knobs::default(),
            pending: Vec::new(),
            stes: BTreeMap::new(),
            cds: BTreeMap::new(),
            iotlb: Iotlb::new(cfg.iotlb),
            // As many table descriptors as leaves: no walk cache when nothing is cached.
            walk_cache: WalkCache::new(cfg.iotlb.capacity),
            clock: 0,
            checker: Checker::new(cfg.checker),
            stats: ModelStats::default(),
        };
        Ok(Self {
            mem,
            state: spin::Mutex::new(state),
        })
    }

    /// The physical memory the model reaches.
    pub fn memory(&self) -> &'m dyn PhysMemory {
        self.mem
    }

    /// The configuration.
    pub fn config(&self) -> ModelConfig {
        self.state.lock().cfg
    }

    /// Counters so far.
    pub fn stats(&self) -> ModelStats {
        let s = self.state.lock();
        let mut stats = s.stats;
        stats.iotlb_evictions = s.iotlb.evictions;
        stats.iotlb_capacity_flushes = s.iotlb.capacity_flushes;
        stats.stale_translations = s.checker.total();
        stats.spurious_faults = s.checker.spurious();
        stats.raced_translations = s.checker.raced();
        stats
    }

    /// Zeroes the counters (the stale-translation records are kept).
    pub fn reset_stats(&self) {
        let mut s = self.state.lock();
        s.stats = ModelStats::default();
        s.iotlb.evictions = 0;
        s.iotlb.capacity_flushes = 0;
    }

    /// The current fault-injection settings.
    pub fn knobs(&self) -> Knobs {
        self.state.lock().knobs
    }

    /// Changes the fault-injection settings; a queue that was held up resumes.
    pub fn set_knobs(&self, knobs: Knobs) {
        let mut s = self.state.lock();
        s.knobs = knobs;
        s.consume_commands(self.mem);
    }

    /// Turns the coherence checker on or off.
    pub fn set_checker(&self, enabled: bool) {
        self.state.lock().checker.enabled = enabled;
    }

    /// Tells the checker the kernel unmapped (or changed the protection of) `[start, end)` in
    /// `asid` as operation `id`, and that the operation has completed (or, single-threaded, is
    /// about to): from now on a cached translation that disagrees there is a violation.
    pub fn note_unmap(&self, asid: u16, start: VirtAddr, end: VirtAddr, id: u64) {
        let mut s = self.state.lock();
        let (note, now) = s.unmap_note(asid, start, end, id);
        s.checker.note_unmap(note, now);
    }

    /// Opens the window of unmap `id` (call before the kernel changes the PTEs or CD): until
    /// [`SmmuModel::end_unmap`], a device still using the old translation is an allowed race.
    pub fn begin_unmap(&self, asid: u16, start: VirtAddr, end: VirtAddr, id: u64) {
        let mut s = self.state.lock();
        let (note, now) = s.unmap_note(asid, start, end, id);
        let stale = if s.checker.enabled {
            s.stale_entries(self.mem, &note)
        } else {
            Vec::new()
        };
        s.checker.begin_unmap(note, now, stale);
    }

    /// Closes the window of unmap `id` (call when the unmap returns, i.e. after its
    /// invalidation completed). Returns false if no such window was open.
    pub fn end_unmap(&self, id: u64) -> bool {
        self.state.lock().checker.end_unmap(id)
    }

    /// How many unmap windows are open ([`SmmuModel::begin_unmap`] without its
    /// [`SmmuModel::end_unmap`]); a run must end with none.
    pub fn open_unmaps(&self) -> usize {
        self.state.lock().checker.open_unmaps()
    }

    /// The stale translations recorded so far (up to [`checker::RECORD_CAPACITY`]).
    pub fn stale_translations(&self) -> Vec<StaleTranslation> {
        self.state.lock().checker.records().to_vec()
    }

    /// Takes the recorded stale translations.
    pub fn take_stale_translations(&self) -> Vec<StaleTranslation> {
        self.state.lock().checker.take()
    }

    /// Every IOTLB entry.
    pub fn iotlb_entries(&self) -> Vec<(IotlbTag, Leaf)> {
        self.state.lock().iotlb.entries().collect()
    }

    /// Every walk-cache entry (cached table descriptors).
    pub fn walk_cache_entries(&self) -> Vec<(walkcache::WalkTag, walkcache::WalkEntry)> {
        self.state.lock().walk_cache.entries().collect()
    }

    /// Commands consumed but waiting for a CMD_SYNC to take effect.
    pub fn pending_commands(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// Translates one access of `sid` to `va`, as a DMA transaction would.
    pub fn translate(
        &self,
        sid: u32,
        va: VirtAddr,
        access: AccessKind,
    ) -> Result<Translation, TranslationFault> {
        self.state.lock().translate(self.mem, sid, va, access)
    }

    /// Translates one access and, on success, performs it with `f(pa, contiguous_bytes)` while
    /// the SMMU cannot complete a CMD_SYNC: like hardware, an invalidation's completion covers
    /// every transaction that used the old translation.
    pub fn access<R>(
        &self,
        sid: u32,
        va: VirtAddr,
        access: AccessKind,
        f: impl FnOnce(PhysAddr, u64) -> R,
    ) -> Result<R, TranslationFault> {
        let mut s = self.state.lock();
        let t = s.translate(self.mem, sid, va, access)?;
        Ok(f(t.pa, t.contiguous))
    }

    /// Translates the transactions of one transfer, in order, and runs `f` with their outcomes
    /// while the SMMU cannot complete a CMD_SYNC: a master that moves a whole transfer as one
    /// unit (a DMA controller walking a chain of control blocks) has used every translation
    /// before an invalidation's completion can be observed, as [`SmmuModel::access`] ensures
    /// for one transaction.
    pub fn access_all<R>(
        &self,
        sid: u32,
        vas: &[VirtAddr],
        access: AccessKind,
        f: impl FnOnce(&[Result<Translation, TranslationFault>]) -> R,
    ) -> R {
        let mut s = self.state.lock();
        let outcomes: Vec<_> = vas
            .iter()
            .map(|&va| s.translate(self.mem, sid, va, access))
            .collect();
        f(&outcomes)
    }
}

impl State {
    /// Advances the model's clock and returns the new time.
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// An unmap note, taken now.
    fn unmap_note(
        &mut self,
        asid: u16,
        start: VirtAddr,
        end: VirtAddr,
        id: u64,
    ) -> (UnmapNote, u64) {
        let note = UnmapNote {
            id,
            asid,
            start,
            end,
        };
        (note, self.tick())
    }

    /// The cached configurations and table descriptors of `note`'s ASID, and its leaves in
    /// `note`'s range, that memory no longer agrees with: an unmap window opening now cannot be
    /// what made them stale.
    fn stale_entries(&self, mem: &dyn PhysMemory, note: &UnmapNote) -> Vec<CachedEntry> {
        let asid = note.asid;
        let configs = self.stes.keys().filter_map(|&sid| {
            let (cfg, born) = self.cached_view(mem, sid)?;
            let of_asid = matches!(cfg, StreamCfg::Stage1 { s1, .. } if s1.asid == asid);
            (of_asid && self.decode_config(mem, sid) != Ok(cfg)).then_some(CachedEntry {
                entry: Entry::Config { sid },
                born,
            })
        });
        let tables = self
            .walk_cache
            .entries()
            .filter(|(tag, e)| tag.asid == asid && !still_reached(mem, e))
            .map(|(tag, e)| CachedEntry {
                entry: table_entry(tag.level, tag.va_base, e.step.span_log2),
                born: e.born,
            });
        configs
            .chain(tables)
            .chain(self.stale_leaves(mem, note))
            .collect()
    }

    /// The cached leaves of `note`'s ASID (or global) overlapping its range that a walk of
    /// memory, through a configuration in memory with that ASID, no longer gives.
    fn stale_leaves<'s>(
        &'s self,
        mem: &'s dyn PhysMemory,
        note: &'s UnmapNote,
    ) -> impl Iterator<Item = CachedEntry> + 's {
        let now: Vec<(Stage1Config, u16)> = self
            .stes
            .keys()
            .filter_map(|&sid| match self.decode_config(mem, sid) {
                Ok(StreamCfg::Stage1 { s1, vmid }) if s1.asid == note.asid => Some((s1, vmid)),
                _ => None,
            })
            .collect();
        let (start, end) = (note.start.as_u64(), note.end.as_u64());
        self.iotlb
            .fills()
            .filter(move |(tag, leaf, _)| {
                let leaf_end = leaf.va_base.saturating_add(1 << leaf.size_log2);
                (tag.global || tag.asid == note.asid) && leaf.va_base < end && start < leaf_end
            })
            .filter(move |(tag, leaf, _)| {
                now.iter().any(|(s1, vmid)| {
                    *vmid == tag.vmid && walk::walk(mem, s1, leaf.va_base) != Ok(*leaf)
                })
            })
            .map(|(_, _, born)| CachedEntry {
                entry: Entry::Leaf,
                born,
            })
    }

    fn oas_bits(&self) -> u8 {
        regs::oas_bits(self.cfg.oas).unwrap_or(44)
    }

    fn cmdq(&self) -> QueueGeometry {
        let log2 = LocalRegisterCopy::<u64, Q_BASE::Register>::new(self.regs.cmdq_base)
            .read(Q_BASE::LOG2SIZE);
        QueueGeometry::clamped((log2 as u8).min(self.cfg.cmdq_max_log2))
    }

    fn eventq(&self) -> QueueGeometry {
        let log2 = LocalRegisterCopy::<u64, Q_BASE::Register>::new(self.regs.eventq_base)
            .read(Q_BASE::LOG2SIZE);
        QueueGeometry::clamped((log2 as u8).min(self.cfg.eventq_max_log2))
    }

    /// Queue memory base: ADDR aligned down to the queue size (at least 32 bytes).
    fn queue_base(raw: u64, bytes: usize) -> u64 {
        let addr = LocalRegisterCopy::<u64, Q_BASE::Register>::new(raw).read(Q_BASE::ADDR) << 5;
        addr & !((bytes.max(32) as u64) - 1)
    }

    fn cr0(&self) -> LocalRegisterCopy<u32, CR0::Register> {
        LocalRegisterCopy::new(self.regs.cr0)
    }

    fn gerror_active(&self) -> u32 {
        self.regs.gerror ^ self.regs.gerrorn
    }

    /// Raises a global error unless it is already active.
    fn raise_gerror(&mut self, bit: u32) {
        if self.gerror_active() & bit == 0 {
            self.regs.gerror ^= bit;
        }
    }

    // ---- registers ----

    fn read32(&mut self, off: usize) -> u32 {
        let c = &self.cfg;
        match off {
            offset::IDR0 => {
                let mut v = LocalRegisterCopy::<u32, regs::IDR0::Register>::new(0);
                v.modify(
                    regs::IDR0::S1P::SET
                        + regs::IDR0::S2P.val(u32::from(c.vmid_tagging))
                        + regs::IDR0::TTF.val(2)
                        + regs::IDR0::COHACC::SET
                        + regs::IDR0::ASID16.val(u32::from(c.asid16))
                        + regs::IDR0::VMID16::SET
                        + regs::IDR0::TTENDIAN.val(2)
                        + regs::IDR0::STALL_MODEL.val(1)
                        + regs::IDR0::TERM_MODEL::SET,
                );
                v.get()
            }
            offset::IDR1 => {
                let mut v = LocalRegisterCopy::<u32, regs::IDR1::Register>::new(0);
                v.modify(
                    regs::IDR1::SIDSIZE.val(c.sid_bits.into())
                        + regs::IDR1::EVENTQS.val(c.eventq_max_log2.into())
                        + regs::IDR1::CMDQS.val(c.cmdq_max_log2.into()),
                );
                v.get()
            }
            offset::IDR3 => {
                let mut v = LocalRegisterCopy::<u32, regs::IDR3::Register>::new(0);
                v.modify(
                    regs::IDR3::HAD::SET + regs::IDR3::RIL.val(u32::from(c.range_invalidation)),
                );
                v.get()
            }
            offset::IDR5 => {
                let mut v = LocalRegisterCopy::<u32, regs::IDR5::Register>::new(0);
                v.modify(regs::IDR5::OAS.val(c.oas.into()) + regs::IDR5::GRAN4K::SET);
                v.get()
            }
            offset::AIDR => 0x1,     // SMMUv3.1
            0x08 | 0x10 | 0x18 => 0, // IDR2, IDR4, IIDR
            offset::CR0 => self.regs.cr0,
            offset::CR0ACK => {
                if self.regs.cr0ack_lag_left > 0 {
                    self.regs.cr0ack_lag_left -= 1;
                } else {
                    self.regs.cr0ack = self.regs.cr0ack_target;
                }
                self.regs.cr0ack
            }
            offset::CR1 => self.regs.cr1,
            offset::CR2 => self.regs.cr2,
            0x40 => 0, // STATUSR
            offset::GBPA => self.regs.gbpa,
            offset::IRQ_CTRL | offset::IRQ_CTRLACK => self.regs.irq_ctrl,
            offset::GERROR => self.regs.gerror,
            offset::GERRORN => self.regs.gerrorn,
            offset::STRTAB_BASE_CFG => self.regs.strtab_base_cfg,
            offset::CMDQ_PROD => self.regs.cmdq_prod,
            offset::CMDQ_CONS => self.regs.cmdq_cons,
            offset::EVENTQ_PROD => self.regs.eventq_prod,
            offset::EVENTQ_CONS => self.regs.eventq_cons,
            0x70 | 0x74 | 0xb8 | 0xbc => *self.regs.irq_cfg.get(&off).unwrap_or(&0) as u32,
            _ => {
                self.stats.bad_register_accesses += 1;
                0
            }
        }
    }

    fn write32(&mut self, mem: &dyn PhysMemory, off: usize, v: u32) {
        match off {
            offset::CR0 => {
                let was = self.cr0();
                self.regs.cr0 = v;
                self.regs.cr0ack_target = v;
                self.regs.cr0ack_lag_left = self.knobs.cr0ack_lag;
                if self.knobs.cr0ack_lag == 0 {
                    self.regs.cr0ack = v;
                }
                if !was.is_set(CR0::CMDQEN) && self.cr0().is_set(CR0::CMDQEN) {
                    self.consume_commands(mem);
                }
            }
            offset::CR1 => self.regs.cr1 = v,
            offset::CR2 => self.regs.cr2 = v,
            offset::GBPA => {
                // A write only takes effect with UPDATE set; it completes at once here.
                if LocalRegisterCopy::<u32, GBPA::Register>::new(v).is_set(GBPA::UPDATE) {
                    self.regs.gbpa = v & !(1 << 31);
                }
            }
            offset::IRQ_CTRL => self.regs.irq_ctrl = v,
            offset::GERRORN => {
                self.regs.gerrorn = v;
                if self.gerror_active() & GERROR_CMDQ_ERR == 0
                    && self.regs.cmdq_cons & CMDQ_ERR_MASK != 0
                {
                    // Acknowledged: clear ERR and retry the command at CONS (§7.1).
                    self.regs.cmdq_cons &= !CMDQ_ERR_MASK;
                    self.consume_commands(mem);
                }
            }
            offset::STRTAB_BASE_CFG if !self.cr0().is_set(CR0::SMMUEN) => {
                self.regs.strtab_base_cfg = v
            }
            offset::CMDQ_PROD => {
                self.regs.cmdq_prod = v & self.cmdq().ptr_mask();
                self.consume_commands(mem);
            }
            offset::CMDQ_CONS if !self.cr0().is_set(CR0::CMDQEN) => {
                self.regs.cmdq_cons = v & self.cmdq().ptr_mask();
            }
            offset::EVENTQ_PROD if !self.cr0().is_set(CR0::EVENTQEN) => {
                self.regs.eventq_prod = v & (self.eventq().ptr_mask() | EVENTQ_OVFLG);
            }
            offset::EVENTQ_CONS => {
                let ptr = self.eventq().ptr(v);
                self.regs.eventq_cons = ptr | (v & (1 << 31));
            }
            0x70 | 0x74 | 0xb8 | 0xbc => {
                self.regs.irq_cfg.insert(off, v.into());
            }
            _ => self.stats.bad_register_accesses += 1,
        }
    }

    fn read64(&mut self, off: usize) -> u64 {
        match off {
            offset::STRTAB_BASE => self.regs.strtab_base,
            offset::CMDQ_BASE => self.regs.cmdq_base,
            offset::EVENTQ_BASE => self.regs.eventq_base,
            0x68 | 0xb0 => *self.regs.irq_cfg.get(&off).unwrap_or(&0),
            _ => {
                self.stats.bad_register_accesses += 1;
                0
            }
        }
    }

    fn write64(&mut self, off: usize, v: u64) {
        let cr0 = self.cr0();
        match off {
            offset::STRTAB_BASE if !cr0.is_set(CR0::SMMUEN) => self.regs.strtab_base = v,
            offset::CMDQ_BASE if !cr0.is_set(CR0::CMDQEN) => self.regs.cmdq_base = v,
            offset::EVENTQ_BASE if !cr0.is_set(CR0::EVENTQEN) => self.regs.eventq_base = v,
            0x68 | 0xb0 => {
                self.regs.irq_cfg.insert(off, v);
            }
            _ => self.stats.bad_register_accesses += 1,
        }
    }

    // ---- command queue ----

    /// Runs commands from CONS up to PROD until the queue is empty, an error stops it, or a
    /// knob holds it.
    fn consume_commands(&mut self, mem: &dyn PhysMemory) {
        if !self.cr0().is_set(CR0::CMDQEN) || self.knobs.stall_command_queue {
            return;
        }
        let q = self.cmdq();
        let base = Self::queue_base(self.regs.cmdq_base, q.bytes(16));
        loop {
            if self.gerror_active() & GERROR_CMDQ_ERR != 0 {
                return;
            }
            let cons = q.ptr(self.regs.cmdq_cons);
            let prod = q.ptr(self.regs.cmdq_prod);
            if q.is_empty(prod, cons) {
                return;
            }
            let slot = PhysAddr(base + 16 * u64::from(q.index(cons)));
            let decoded = match physmem::load_words::<2>(mem, slot) {
                Err(_) => Err(CommandErrorCode::Abort),
                Ok(words) => decode::command(words).map_err(|_| CommandErrorCode::Illegal),
            };
            let injected = match (self.knobs.fail_command, &decoded) {
                (Some((None, code)), _) => Some(code),
                (Some((Some(op), code)), Ok(cmd)) if cmd.opcode() == op => Some(code),
                _ => None,
            };
            let cmd = match (decoded, injected) {
                (_, Some(code)) => {
                    self.knobs.fail_command = None;
                    Err(code)
                }
                (d, None) => d,
            };
            let cmd = match cmd {
                Ok(cmd) => cmd,
                Err(code) => {
                    self.stats.command_errors += 1;
                    self.regs.cmdq_cons = cons | u32::from(code.raw()) << CMDQ_ERR_SHIFT;
                    self.raise_gerror(GERROR_CMDQ_ERR);
                    return;
                }
            };
            match cmd {
                Command::Sync { .. } => {
                    if self.knobs.stall_sync {
                        return;
                    }
                    self.complete_sync();
                }
                Command::PrefetchConfig { .. } => {}
                other => {
                    let consumed_at = self.tick();
                    self.pending.push(Pending {
                        cmd: other,
                        consumed_at,
                    });
                }
            }
            self.stats.commands.add(cmd.kind());
            self.regs.cmdq_cons = q.advance(cons, 1);
        }
    }

    /// A CMD_SYNC completes: every TLBI and CFGI consumed before it takes effect, on what was
    /// cached when it was consumed (an entry filled since survives, as on QEMU and hardware).
    fn complete_sync(&mut self) {
        for Pending { cmd, consumed_at } in core::mem::take(&mut self.pending) {
            let (leaves, tables) = self.invalidate_tlb(&cmd, consumed_at);
            self.stats.iotlb_invalidated += leaves as u64;
            self.stats.walk_cache_invalidated += tables as u64;
            self.invalidate_config(&cmd, consumed_at);
        }
        self.stats.syncs_completed += 1;
    }

    /// A TLBI's effect (§4.4): (leaf entries, walk-cache entries) removed. Global leaves match
    /// every ASID but survive by-ASID invalidation (§4.4.2.2); table entries go only with
    /// Leaf = 0 (§4.4.1).
    fn invalidate_tlb(&mut self, cmd: &Command, before: u64) -> (usize, usize) {
        let vmid_tagging = self.cfg.vmid_tagging;
        let vmid_ok = move |tag_vmid: u16, vmid: u16| !vmid_tagging || tag_vmid == vmid;
        match *cmd {
            Command::TlbiNhVa(va) | Command::TlbiNhVaa(va) => {
                let by_asid = matches!(cmd, Command::TlbiNhVa(_));
                let asid_ok = move |asid: u16, global: bool| !by_asid || global || asid == va.asid;
                let leaves = self.iotlb.invalidate(before, |t, l| {
                    asid_ok(t.asid, t.global)
                        && vmid_ok(t.vmid, va.vmid)
                        && va_covers(&va, t.va_base, t.size_log2, Some(l.level))
                });
                let tables = if va.leaf {
                    0
                } else {
                    self.walk_cache.invalidate(before, |t, step| {
                        asid_ok(t.asid, false)
                            && vmid_ok(t.vmid, va.vmid)
                            && va_covers(&va, t.va_base, step.span_log2, None)
                    })
                };
                (leaves, tables)
            }
            Command::TlbiNhAsid { vmid, asid } => (
                self.iotlb.invalidate(before, |t, _| {
                    !t.global && t.asid == asid && vmid_ok(t.vmid, vmid)
                }),
                self.walk_cache
                    .invalidate(before, |t, _| t.asid == asid && vmid_ok(t.vmid, vmid)),
            ),
            Command::TlbiNhAll { vmid } => (
                self.iotlb.invalidate(before, |t, _| vmid_ok(t.vmid, vmid)),
                self.walk_cache
                    .invalidate(before, |t, _| vmid_ok(t.vmid, vmid)),
            ),
            Command::TlbiNsnhAll => (
                self.iotlb.invalidate(before, |_, _| true),
                self.walk_cache.invalidate(before, |_, _| true),
            ),
            _ => (0, 0),
        }
    }

    /// A CFGI's effect (§4.3): exactly the configuration it names. An STE invalidation also
    /// drops the CDs fetched through that STE (§4.3.1, §4.3.2); a CD invalidation leaves the
    /// STE (§4.3.3, §4.3.4), so an STE change followed only by CFGI_CD keeps the old STE.
    fn invalidate_config(&mut self, cmd: &Command, before: u64) {
        let stale = |born: u64| born < before;
        let sids: Option<core::ops::RangeInclusive<u64>> = match *cmd {
            Command::CfgiSte { sid, .. } => Some(u64::from(sid)..=u64::from(sid)),
            Command::CfgiSteRange { sid, range } => {
                let mask = (1u64 << (u32::from(range) + 1)) - 1;
                let first = u64::from(sid) & !mask;
                Some(first..=first + mask)
            }
            Command::CfgiAll => Some(0..=u64::from(u32::MAX)),
            Command::CfgiCd { sid, ssid, .. } => {
                self.cds
                    .retain(|&key, c| !(key == (sid, ssid) && stale(c.born)));
                None
            }
            Command::CfgiCdAll { sid } => {
                self.cds.retain(|&(s, _), c| !(s == sid && stale(c.born)));
                None
            }
            _ => None,
        };
        if let Some(sids) = sids {
            self.stes
                .retain(|&s, c| !(sids.contains(&u64::from(s)) && stale(c.born)));
            self.cds
                .retain(|&(s, _), c| !(sids.contains(&u64::from(s)) && stale(c.born)));
        }
    }

    // ---- event queue ----

    fn record_event(&mut self, mem: &dyn PhysMemory, ev: &EventRecord) -> bool {
        if !self.cr0().is_set(CR0::EVENTQEN) {
            return false;
        }
        let q = self.eventq();
        let prod = q.ptr(self.regs.eventq_prod);
        let cons = q.ptr(self.regs.eventq_cons);
        let ovflg = self.regs.eventq_prod & EVENTQ_OVFLG;
        if q.is_full(prod, cons) {
            self.stats.events_lost += 1;
            // §7.4: toggle OVFLG unless an overflow is already pending acknowledgement.
            let ovack = LocalRegisterCopy::<u32, EVENTQ_CONS::Register>::new(self.regs.eventq_cons)
                .read(EVENTQ_CONS::OVACKFLG);
            let pending =
                LocalRegisterCopy::<u32, EVENTQ_PROD::Register>::new(self.regs.eventq_prod)
                    .read(EVENTQ_PROD::OVFLG)
                    != ovack;
            if !pending {
                self.regs.eventq_prod ^= EVENTQ_OVFLG;
            }
            return false;
        }
        if self.knobs.abort_event_writes {
            self.stats.events_lost += 1;
            self.raise_gerror(GERROR_EVENTQ_ABT_ERR);
            return false;
        }
        let base = Self::queue_base(self.regs.eventq_base, q.bytes(EVENT_SIZE));
        let slot = base + (EVENT_SIZE as u64) * u64::from(q.index(prod));
        for (i, w) in ev.encode().iter().enumerate() {
            if physmem::store(mem, PhysAddr(slot + 8 * i as u64), *w, Ordering::Release).is_err() {
                self.raise_gerror(GERROR_EVENTQ_ABT_ERR);
                return false;
            }
        }
        self.regs.eventq_prod = q.advance(prod, 1) | ovflg;
        self.stats.events_recorded += 1;
        true
    }

    // ---- configuration ----

    fn decode_config(&self, mem: &dyn PhysMemory, sid: u32) -> Result<StreamCfg, FaultKind> {
        Ok(match self.decode_ste(mem, sid)? {
            SteCfg::Abort => StreamCfg::Abort,
            SteCfg::Bypass => StreamCfg::Bypass,
            SteCfg::Stage1 { cd, vmid } => StreamCfg::Stage1 {
                s1: self.decode_cd(mem, cd)?,
                vmid,
            },
        })
    }

    fn decode_ste(&self, mem: &dyn PhysMemory, sid: u32) -> Result<SteCfg, FaultKind> {
        let cfg =
            LocalRegisterCopy::<u32, STRTAB_BASE_CFG::Register>::new(self.regs.strtab_base_cfg);
        let log2 = cfg
            .read(STRTAB_BASE_CFG::LOG2SIZE)
            .min(u32::from(self.cfg.sid_bits));
        // Only the linear format is implemented (SMMU_IDR0.ST_LEVEL = 0).
        if cfg.read(STRTAB_BASE_CFG::FMT) != 0 || u64::from(sid) >> log2 != 0 {
            return Err(FaultKind::BadStreamId);
        }
        let table_bytes = (STE_SIZE as u64) << cfg.read(STRTAB_BASE_CFG::LOG2SIZE);
        let addr = LocalRegisterCopy::<u64, STRTAB_BASE::Register>::new(self.regs.strtab_base)
            .read(STRTAB_BASE::ADDR)
            << 6;
        let ste_pa = PhysAddr((addr & !(table_bytes - 1)) + STE_SIZE as u64 * u64::from(sid));
        let words = physmem::load_words::<STE_WORDS>(mem, ste_pa)
            .map_err(|_| FaultKind::SteFetch(ste_pa))?;
        let ste = decode::ste(&words, self.oas_bits()).map_err(FaultKind::BadSte)?;
        let vmid = if self.cfg.vmid_tagging { ste.s2vmid } else { 0 };
        Ok(match ste.config {
            StreamConfig::Abort => SteCfg::Abort,
            StreamConfig::Bypass => SteCfg::Bypass,
            StreamConfig::Stage1 { cd } => SteCfg::Stage1 { cd, vmid },
        })
    }

    fn decode_cd(&self, mem: &dyn PhysMemory, cd_pa: PhysAddr) -> Result<Stage1Config, FaultKind> {
        let words =
            physmem::load_words::<CD_WORDS>(mem, cd_pa).map_err(|_| FaultKind::CdFetch(cd_pa))?;
        let s1 = decode::cd(&words, self.oas_bits()).map_err(FaultKind::BadCd)?;
        if s1.ttb0.is_some() && s1.granule != CdGranule::K4 {
            // SMMU_IDR5 advertises the 4 KiB granule only.
            return Err(FaultKind::BadCd(BadCd::Granule { table: 0 }));
        }
        Ok(s1)
    }

    /// The configuration a translation of `sid` would use now and the fill time of its oldest
    /// cached part, without filling anything; `None` if no STE is cached (or a fetch fails).
    fn cached_view(&self, mem: &dyn PhysMemory, sid: u32) -> Option<(StreamCfg, u64)> {
        let ste = self.stes.get(&sid)?;
        Some(match ste.value {
            SteCfg::Abort => (StreamCfg::Abort, ste.born),
            SteCfg::Bypass => (StreamCfg::Bypass, ste.born),
            SteCfg::Stage1 { cd, vmid } => {
                let (s1, born) = match self.cds.get(&(sid, 0)) {
                    Some(c) => (c.value, c.born.min(ste.born)),
                    None => (self.decode_cd(mem, cd).ok()?, ste.born),
                };
                (StreamCfg::Stage1 { s1, vmid }, born)
            }
        })
    }

    /// The stream's configuration through the configuration cache: (configuration, fill time
    /// of the oldest cached part used, or `None` if nothing came from the cache).
    fn cached_config(
        &mut self,
        mem: &dyn PhysMemory,
        sid: u32,
    ) -> Result<(StreamCfg, Option<u64>), FaultKind> {
        let mut oldest: Option<u64> = None;
        let ste = match self.stes.get(&sid) {
            Some(c) => {
                oldest = Some(c.born);
                c.value
            }
            None => {
                let value = self.decode_ste(mem, sid)?;
                let born = self.tick();
                self.stes.insert(sid, Cached { value, born });
                value
            }
        };
        let cfg = match ste {
            SteCfg::Abort => StreamCfg::Abort,
            SteCfg::Bypass => StreamCfg::Bypass,
            SteCfg::Stage1 { cd, vmid } => {
                let s1 = match self.cds.get(&(sid, 0)) {
                    Some(c) => {
                        oldest = Some(oldest.map_or(c.born, |o| o.min(c.born)));
                        c.value
                    }
                    None => {
                        let value = self.decode_cd(mem, cd)?;
                        let born = self.tick();
                        self.cds.insert((sid, 0), Cached { value, born });
                        value
                    }
                };
                StreamCfg::Stage1 { s1, vmid }
            }
        };
        Ok((cfg, oldest))
    }

    fn fault_event(
        &self,
        sid: u32,
        va: VirtAddr,
        access: AccessKind,
        kind: FaultKind,
    ) -> Option<EventRecord> {
        let mut ev = EventRecord::new(kind.event()?, sid);
        match kind {
            FaultKind::SteFetch(pa) | FaultKind::CdFetch(pa) => ev.addr2 = pa.as_u64(),
            FaultKind::Translation { .. }
            | FaultKind::AccessFlag { .. }
            | FaultKind::AddressSize { .. }
            | FaultKind::Permission { .. } => {
                ev.input_addr = va.as_u64();
                ev.access = access;
                ev.class = FaultClass::Input;
            }
            FaultKind::WalkAbort { pa, .. } => {
                ev.input_addr = va.as_u64();
                ev.access = access;
                ev.class = FaultClass::TableWalk;
                ev.addr2 = pa.as_u64();
            }
            _ => {}
        }
        Some(ev)
    }

    /// The translation from scratch: no caches, no events, no statistics.
    fn fresh(
        &self,
        mem: &dyn PhysMemory,
        sid: u32,
        va: VirtAddr,
        access: AccessKind,
    ) -> Result<PhysAddr, FaultKind> {
        if !self.cr0().is_set(CR0::SMMUEN) {
            return self.disabled_outcome(va);
        }
        match self.decode_config(mem, sid)? {
            StreamCfg::Abort => Err(FaultKind::StreamAbort),
            StreamCfg::Bypass => Ok(PhysAddr(va.as_u64())),
            StreamCfg::Stage1 { s1, .. } => {
                let leaf = walk::walk(mem, &s1, va.as_u64()).map_err(FaultKind::from_walk)?;
                permit(&leaf, access)?;
                Ok(leaf.output(va.as_u64()))
            }
        }
    }

    fn disabled_outcome(&self, va: VirtAddr) -> Result<PhysAddr, FaultKind> {
        if LocalRegisterCopy::<u32, GBPA::Register>::new(self.regs.gbpa).is_set(GBPA::ABORT) {
            Err(FaultKind::GlobalAbort)
        } else {
            Ok(PhysAddr(va.as_u64()))
        }
    }

    fn translate(
        &mut self,
        mem: &dyn PhysMemory,
        sid: u32,
        va: VirtAddr,
        access: AccessKind,
    ) -> Result<Translation, TranslationFault> {
        self.stats.translations += 1;
        let page_left = 0x1000 - va.page_offset();
        if !self.cr0().is_set(CR0::SMMUEN) {
            return self
                .disabled_outcome(va)
                .map(|pa| Translation {
                    pa,
                    contiguous: page_left,
                    iotlb_hit: false,
                })
                .map_err(|kind| self.fail(mem, sid, va, access, kind, false));
        }
        let (cfg, config_born) = match self.cached_config(mem, sid) {
            Ok(c) => c,
            Err(kind) => {
                self.stats.config_misses += 1;
                let record = kind != FaultKind::BadStreamId
                    || LocalRegisterCopy::<u32, CR2::Register>::new(self.regs.cr2)
                        .is_set(CR2::RECINVSID);
                return Err(self.fail(mem, sid, va, access, kind, record));
            }
        };
        if config_born.is_some() {
            self.stats.config_hits += 1;
        } else {
            self.stats.config_misses += 1;
        }
        let (outcome, asid, vmid, cache_use) = match cfg {
            StreamCfg::Abort => (Err((FaultKind::StreamAbort, false)), None, 0, None),
            StreamCfg::Bypass => (Ok((PhysAddr(va.as_u64()), page_left)), None, 0, None),
            StreamCfg::Stage1 { s1, vmid } => {
                let (o, used) = self.stage1(mem, &s1, vmid, va, access);
                (o, Some(s1.asid), vmid, used)
            }
        };
        let iotlb_hit = cache_use.is_some_and(|u| u.cached.entry == Entry::Leaf);
        // Only cached state is checked: a cached configuration against a fresh decode, a
        // cached leaf or table descriptor against a fresh walk. A walk done just now from the
        // root is fresh by definition, and walking twice would race with table writes the
        // kernel may legitimately make concurrently (new mappings need no invalidation).
        if self.checker.enabled && (config_born.is_some() || cache_use.is_some()) {
            let config_now = self.decode_config(mem, sid);
            let config_stale = config_born.is_some() && config_now != Ok(cfg);
            // A stale configuration takes the blame; a leaf or table descriptor used through it
            // is judged along with it.
            let used_cache = match (config_stale, config_born, cache_use) {
                (true, Some(born), u) => Some((
                    CacheUse {
                        cached: CachedEntry {
                            entry: Entry::Config { sid },
                            born,
                        },
                        table_gone: false,
                    },
                    u.map(|u| u.cached),
                )),
                (_, _, u) => u.map(|u| (u, None)),
            };
            if let Some((u, with)) = used_cache {
                let fresh = self.fresh(mem, sid, va, access);
                let used = outcome.map(|(pa, _)| pa).map_err(|(k, _)| k);
                self.checker.check(
                    checker::Use {
                        sid,
                        asid,
                        vmid,
                        va,
                        access,
                        cached: u.cached,
                        with,
                        table_gone: u.table_gone,
                        config_off: translates_nothing(&config_now),
                    },
                    used,
                    fresh,
                );
            }
        }
        match outcome {
            Ok((pa, contiguous)) => Ok(Translation {
                pa,
                contiguous,
                iotlb_hit,
            }),
            Err((kind, record)) => Err(self.fail(mem, sid, va, access, kind, record)),
        }
    }

    /// Stage-1 translation through the IOTLB and the walk cache: (outcome, the cached entry
    /// relied on, if any). A fault carries whether CD.R asks for it to be recorded.
    #[allow(clippy::type_complexity)]
    fn stage1(
        &mut self,
        mem: &dyn PhysMemory,
        s1: &Stage1Config,
        vmid: u16,
        va: VirtAddr,
        access: AccessKind,
    ) -> (Result<(PhysAddr, u64), (FaultKind, bool)>, Option<CacheUse>) {
        let record = s1.record_faults;
        let (leaf, used) = match self.iotlb.lookup(s1.asid, vmid, va.as_u64()) {
            Some(hit) => {
                self.stats.iotlb_hits += 1;
                let used = CacheUse {
                    cached: CachedEntry {
                        entry: Entry::Leaf,
                        born: hit.born,
                    },
                    table_gone: false,
                };
                (hit.leaf, Some(used))
            }
            None => {
                self.stats.iotlb_misses += 1;
                let cached_table = self.walk_cache.lookup(s1.asid, vmid, va.as_u64());
                if cached_table.is_some() {
                    self.stats.walk_cache_hits += 1;
                }
                // A walk resumed from a descriptor memory still holds (with every one above it)
                // is a fresh walk: checking
                // it would only race with concurrent table writes (as walking twice does).
                let used = cached_table
                    .filter(|e| !still_reached(mem, e))
                    .map(|e| CacheUse {
                        cached: CachedEntry {
                            entry: table_entry(e.step.level, va.as_u64(), e.step.span_log2),
                            born: e.born,
                        },
                        table_gone: true,
                    });
                let born = self.tick();
                let mut steps: Vec<TableStep> = Vec::new();
                let walked = walk::walk_from(
                    mem,
                    s1,
                    va.as_u64(),
                    cached_table.map(|e| e.resume()),
                    &mut |step| steps.push(step),
                );
                let mut above = cached_table.map_or([None; 2], |e| e.path());
                for step in steps {
                    self.walk_cache
                        .insert(s1.asid, vmid, va.as_u64(), (above, step), born);
                    above = walkcache::extend(above, step);
                }
                match walked {
                    Ok(leaf) => {
                        self.iotlb.insert(s1.asid, vmid, leaf, born);
                        (leaf, used)
                    }
                    Err(f) => return (Err((FaultKind::from_walk(f), record)), used),
                }
            }
        };
        let outcome = permit(&leaf, access).map_err(|k| (k, record)).map(|()| {
            let pa = leaf.output(va.as_u64());
            let end = leaf.pa_base + (1u64 << leaf.size_log2);
            (pa, end - pa.as_u64())
        });
        (outcome, used)
    }

    fn fail(
        &mut self,
        mem: &dyn PhysMemory,
        sid: u32,
        va: VirtAddr,
        access: AccessKind,
        kind: FaultKind,
        record: bool,
    ) -> TranslationFault {
        self.stats.faults += 1;
        let recorded = record
            && match self.fault_event(sid, va, access, kind) {
                Some(ev) => {
                    self.record_event(mem, &ev);
                    true
                }
                None => false,
            };
        TranslationFault { kind, recorded }
    }
}

/// The permission check against a leaf: writes need `AP[2]` = 0 (everything is privileged).
fn permit(leaf: &Leaf, access: AccessKind) -> Result<(), FaultKind> {
    if access == AccessKind::Write && !leaf.writable {
        Err(FaultKind::Permission { level: leaf.level })
    } else {
        Ok(())
    }
}

/// Whether a VA-based TLBI covers the cached region `[va_base, va_base + 2^size_log2)`
/// (§4.4.1.1, §4.4.2.3-4): a single-address one any region containing the address; a range
/// one, only regions cached with its TG granule and, for leaves with a TTL hint, at that level.
/// `leaf_level` is `None` for a table (walk-cache) entry.
fn va_covers(cmd: &TlbiVa, va_base: u64, size_log2: u8, leaf_level: Option<u8>) -> bool {
    let entry_end = va_base.saturating_add(1 << size_log2);
    let addr = cmd.addr.as_u64();
    match cmd.range {
        None => va_base <= addr && addr < entry_end,
        Some(r) => {
            let ttl_mismatch = r.ttl != 0 && leaf_level.is_some_and(|l| l != r.ttl);
            if r.tg != Granule::K4 || ttl_mismatch {
                return false;
            }
            let end = addr.saturating_add(r.bytes());
            va_base < end && addr < entry_end
        }
    }
}

/// Whether a stream configured so translates nothing: STE invalid or abort, CD invalid or
/// TTB0 walks disabled (what release's quiesce and detach leave).
fn translates_nothing(cfg: &Result<StreamCfg, FaultKind>) -> bool {
    match cfg {
        Err(_) | Ok(StreamCfg::Abort) => true,
        Ok(StreamCfg::Bypass) => false,
        Ok(StreamCfg::Stage1 { s1, .. }) => s1.ttb0.is_none(),
    }
}

/// The checker's name for a table descriptor held at `level`, on the walk of `va`, mapping
/// `2^span_log2` bytes.
fn table_entry(level: u8, va: u64, span_log2: u8) -> Entry {
    Entry::Table {
        level,
        base: va & !((1u64 << span_log2) - 1),
        span_log2,
    }
}

/// True if memory still holds the table descriptor a walk-cache entry was filled from, and
/// every one the walk read above it: a walk from the root still reaches it.
fn still_reached(mem: &dyn PhysMemory, e: &walkcache::WalkEntry) -> bool {
    e.chain()
        .all(|s| physmem::load(mem, s.slot, Ordering::Acquire).is_ok_and(|d| d == s.desc))
}

impl SmmuBackend for SmmuModel<'_> {
    fn read32(&self, offset: usize) -> u32 {
        self.state.lock().read32(offset)
    }

    fn write32(&self, offset: usize, value: u32) {
        self.state.lock().write32(self.mem, offset, value)
    }

    fn read64(&self, offset: usize) -> u64 {
        self.state.lock().read64(offset)
    }

    fn write64(&self, offset: usize, value: u64) {
        self.state.lock().write64(offset, value)
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
