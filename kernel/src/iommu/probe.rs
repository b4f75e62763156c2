//! The board's IOMMU, probed once at boot from what the composition root hands over
//! ([`Platform`]): the SMMU node, whether the model stands in for one, the host bridge's
//! `iommu-map`, and the frame allocator. It reads no global board state.
//!
//! * **QEMU `virt,iommu=smmuv3`**: the SMMUv3 the device tree describes (`arm,smmu-v3`), driven
//!   through its registers ([`MmioSmmu`]). PCIe requesters reach it with the StreamID the host
//!   bridge's `iommu-map` gives ([`stream_id`]).
//! * **Raspberry Pi 4 (QEMU `raspi4b` or real)**: no SMMU exists, so the software SMMUv3 model
//!   runs as the backend over real RAM (the linear map), and model DMA masters stand in for
//!   PCIe devices: [`copier_engine_at`], whose bytes the board's DMA controller moves (the
//!   [`PhysCopier`] the composition root hands over), and [`model_dma_engine_at`], whose bytes
//!   the CPU copies (StreamIDs [`MODEL_DMA_SIDS`]). The driver, SVA and the tests are the same
//!   code.
//! * **Anything else** (plain `virt`): no IOMMU; SVA binds fail with
//!   [`SvaError::NoSmmu`](crate::iommu::sva::SvaError::NoSmmu).
//!
//! Either way the SMMU starts **default deny**: SMMU_GBPA.ABORT while translation is off, and
//! a zeroed stream table, so every stream nobody attached aborts (C_BAD_STE).
//!
//! Boot arguments:
//!
//! | argument | meaning |
//! |---|---|
//! | `smmu.strategy=per-page\|range\|asid\|auto` (or `strategy=`) | invalidation strategy (default `auto`: Linux's policy) |
//! | `smmu.skip_invalidate=1` | **debug only, breaks coherence**: `arch_invalidate_secondary_tlbs` sends nothing to the SMMU (shows the SVA tests fail without it) |
//! | `smmu.eventq_log2=N` | **debug only**: at most 2^N event-queue entries (default: what SMMU_IDR1.EVENTQS and the driver's budget allow); a small queue loses the events of a faulting page |

use core::fmt;

use crate::board::bootargs::SmmuStrategy;
use crate::board::dt::Range;
use crate::board::{Bdf, BootArgs, IommuMap};
use crate::iommu::backend::inject::InjectingBackend;
use crate::iommu::backend::mmio::{GenericTimerClock, MmioSmmu};
use crate::iommu::backend::model::dma::{DmaEngine, FaultPolicy};
use crate::iommu::backend::model::{ModelConfig, SmmuModel};
use crate::iommu::backend::SmmuBackend;
use crate::iommu::driver::planner::Strategy;
use crate::iommu::driver::{DebugKnobs, Smmu, SmmuConfig, SmmuError};
use crate::iommu::backend::model::master::CopierEngine;
use crate::iommu::spec::event::{EventRecord, EVENT_SIZE};
use crate::iommu::sva::{Sva, SvaDomain};
use crate::mm::dma::PhysCopier;
use crate::mm::ram::{LinearMap, RamFrames};

pub use crate::board::StreamIdError;

/// The driver type of the board's SMMU, whatever the backend.
pub type BoardSmmu = Smmu<'static, &'static dyn SmmuBackend, GenericTimerClock>;

/// The StreamID of the model DMA engine on boards without a real SMMU (the requester ID QEMU's
/// `edu` has at 00:02.0 on `virt`, so both boards bind the same StreamID).
pub const MODEL_DMA_SID: u32 = 0x10;

/// The StreamIDs of the model DMA engines: two masters, like `edu` at 00:02.0 and 00:03.0 on
/// `virt`, so isolation between devices is tested on both boards.
pub const MODEL_DMA_SIDS: [u32; 2] = [MODEL_DMA_SID, 0x18];

/// Transactions of the model DMA engine: 4 bytes each, carrying on after a fault, like QEMU's
/// `edu` (one event per faulting word; a faulting read delivers zeros).
const MODEL_DMA_ACCESS: usize = 4;

/// What the boot-time probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The board has no SMMU and is not one the model stands in for.
    Absent,
    /// The SMMUv3 at this physical address, through its registers.
    Mmio { pa: u64 },
    /// The software SMMUv3 model over RAM.
    Model,
    /// An SMMU was found but could not be brought up.
    Failed(ProbeError),
}

/// Why the SMMU could not be brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeError {
    /// The register window could not be mapped.
    Map(crate::arch::aarch64::mmu::KernelMapError),
    /// The model refused its configuration.
    Model(crate::iommu::backend::model::ModelConfigError),
    /// The driver failed (unsupported SMMU, timeout, no memory).
    Driver(SmmuError),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Map(e) => write!(f, "cannot map the registers: {e}"),
            Self::Model(e) => write!(f, "SMMU model: {e}"),
            Self::Driver(e) => write!(f, "{e}"),
        }
    }
}

static LINEAR: LinearMap = LinearMap;
static MMIO: spin::Once<MmioSmmu> = spin::Once::new();
static MODEL: spin::Once<SmmuModel<'static>> = spin::Once::new();
static INJECTOR: spin::Once<InjectingBackend<'static>> = spin::Once::new();
static SMMU: spin::Once<BoardSmmu> = spin::Once::new();
static SVA: spin::Once<Sva> = spin::Once::new();
static PROBE: spin::Once<Probe> = spin::Once::new();
static STREAMS: spin::Once<Result<IommuMap, StreamIdError>> = spin::Once::new();
static COPIER: spin::Once<Option<&'static dyn PhysCopier>> = spin::Once::new();

/// The board's SMMU as an SVA domain: `sva::bind::<BoardDomain>(...)`.
pub struct BoardDomain;

impl SvaDomain for BoardDomain {
    fn sva() -> Option<&'static Sva> {
        SVA.get()
    }
}

/// What the probe is given: the board's facts about its SMMU, decided by the composition root.
pub struct Platform {
    /// The `arm,smmu-v3` node's registers, if the board has one.
    pub regs: Option<Range>,
    /// Without an SMMU, run the software model over RAM instead (the Raspberry Pi 4).
    pub use_model: bool,
    /// The PCIe host bridge's `iommu-map` for this SMMU.
    pub streams: Result<IommuMap, StreamIdError>,
    /// The boot arguments: the driver reads its `smmu.*` settings there.
    pub args: &'static BootArgs,
    /// The frame allocator for the SMMU's queues and tables.
    pub frames: &'static RamFrames,
    /// What moves the bytes of the model's DMA master: the board's DMA controller, if any.
    pub copier: Option<&'static dyn PhysCopier>,
}

/// The planner's strategy for what `smmu.strategy=` asked (`auto` when nothing was).
pub fn strategy(asked: Option<SmmuStrategy>) -> Strategy {
    match asked {
        Some(SmmuStrategy::PerPage) => Strategy::PerPage,
        Some(SmmuStrategy::Range) => Strategy::Range,
        Some(SmmuStrategy::Asid) => Strategy::Asid,
        Some(SmmuStrategy::Auto) | None => Strategy::Auto,
    }
}

/// Brings up the board's SMMU (or the model) and reports its features. Runs once, on the boot
/// CPU, after the frame allocator and `ioremap` work. The driver gets 256 StreamIDs (PCIe bus
/// 0), the chosen strategy, the driver's default queue sizes and 1 s timeouts.
pub fn init(platform: Platform) {
    STREAMS.call_once(|| platform.streams.clone());
    COPIER.call_once(|| platform.copier);
    let outcome = PROBE.call_once(|| probe(&platform));
    match outcome {
        Probe::Absent => log::info!("smmu: none on this board"),
        Probe::Failed(e) => log::error!("smmu: probe failed: {e}"),
        Probe::Mmio { .. } | Probe::Model => {
            let Some(smmu) = SMMU.get() else { return };
            let what = match outcome {
                Probe::Mmio { pa } => alloc::format!("at {pa:#x}"),
                _ => alloc::string::String::from("(software model over RAM)"),
            };
            log::info!(
                "smmu: {what}: {}; invalidation {}",
                smmu.features(),
                smmu.planner().strategy().name()
            );
            if platform.args.smmu_skip_invalidate {
                log::warn!(
                    "smmu: smmu.skip_invalidate=1: IOTLB invalidations are SKIPPED (debug only: \
                     devices may use stale translations)"
                );
                smmu.set_debug_knobs(DebugKnobs {
                    skip_invalidation: true,
                    ..DebugKnobs::default()
                });
            }
        }
    }
}

fn probe(platform: &Platform) -> Probe {
    let backend: &'static dyn SmmuBackend = match (platform.regs, platform.use_model) {
        (Some(regs), _) => match MmioSmmu::map(regs.base, regs.size) {
            Ok(m) => MMIO.call_once(|| m),
            Err(e) => return Probe::Failed(ProbeError::Map(e)),
        },
        (None, true) => match SmmuModel::new(&LINEAR, ModelConfig::default()) {
            Ok(m) => MODEL.call_once(|| m),
            Err(e) => return Probe::Failed(ProbeError::Model(e)),
        },
        (None, false) => return Probe::Absent,
    };
    // The driver talks to the SMMU through the fault injector, a pass-through unless a test or
    // the soak arms it.
    let backend: &'static dyn SmmuBackend =
        INJECTOR.call_once(|| InjectingBackend::new(backend, &LINEAR));
    let defaults = SmmuConfig::default();
    let config = SmmuConfig {
        strategy: strategy(platform.args.smmu_strategy),
        eventq_log2: platform.args.smmu_eventq_log2.unwrap_or(defaults.eventq_log2),
        ..defaults
    };
    match Smmu::new(backend, GenericTimerClock, &LINEAR, platform.frames, config) {
        Ok(smmu) => {
            let smmu = SMMU.call_once(|| smmu);
            SVA.call_once(|| Sva::new(smmu, "smmu0"));
            match platform.regs {
                Some(regs) => Probe::Mmio { pa: regs.base },
                None => Probe::Model,
            }
        }
        Err(e) => Probe::Failed(ProbeError::Driver(e)),
    }
}

/// The boot banner's SMMU line: what the SMMU is, its event queue, and how its events reach the
/// kernel. `interrupts` are the names the device tree gives the SMMU's wired interrupts.
pub fn banner_line(interrupts: &[alloc::string::String]) -> Option<alloc::string::String> {
    let smmu = SMMU.get()?;
    let (what, delivery) = match probe_outcome() {
        Probe::Mmio { pa } => (alloc::format!("SMMUv3 at {pa:#x}"), "no interrupt wired"),
        _ => ("SMMUv3 model".into(), "a model raises no interrupt"),
    };
    let q = smmu.event_queue_size().allocated;
    let delivery = if interrupts.is_empty() {
        alloc::string::String::from(delivery)
    } else {
        alloc::format!(
            "its {} interrupts unused: no interrupt-controller driver",
            interrupts.join(", ")
        )
    };
    Some(alloc::format!(
        "{what}; event queue {} entries ({} KiB; the SMMU allows 2^{}), drained by polling after \
         each transfer ({delivery})",
        q.entries(),
        q.bytes(EVENT_SIZE) >> 10,
        smmu.features().eventq_max_log2,
    ))
}

/// What the probe found (`Absent` before [`init`]).
pub fn probe_outcome() -> Probe {
    PROBE.get().copied().unwrap_or(Probe::Absent)
}

/// The board's SMMU driver, if there is one.
pub fn smmu() -> Option<&'static BoardSmmu> {
    SMMU.get()
}

/// The board's SVA layer, if there is an SMMU.
pub fn sva() -> Option<&'static Sva> {
    SVA.get()
}

/// The fault injector between the kernel's driver and its SMMU (disarmed unless asked).
pub fn injector() -> Option<&'static InjectingBackend<'static>> {
    INJECTOR.get()
}

/// The software model, when it is the board's SMMU (Raspberry Pi 4).
pub fn model() -> Option<&'static SmmuModel<'static>> {
    MODEL.get()
}

/// The model DMA engine (StreamID [`MODEL_DMA_SID`]) on boards where the model is the SMMU.
pub fn model_dma_engine() -> Option<DmaEngine<'static, 'static>> {
    model_dma_engine_at(MODEL_DMA_SID)
}

/// A model DMA engine issuing as StreamID `sid` (one of [`MODEL_DMA_SIDS`]), on boards where
/// the model is the SMMU.
pub fn model_dma_engine_at(sid: u32) -> Option<DmaEngine<'static, 'static>> {
    DmaEngine::new(MODEL.get()?, sid)
        .with_transactions(MODEL_DMA_ACCESS, FaultPolicy::Continue)
        .ok()
}

/// A model DMA master issuing as StreamID `sid` whose bytes the board's DMA controller moves,
/// on boards where the model is the SMMU and such a controller was brought up.
pub fn copier_engine_at(sid: u32) -> Option<CopierEngine<'static, 'static>> {
    let copier = (*COPIER.get()?)?;
    Some(CopierEngine::new(MODEL.get()?, copier, sid))
}

/// The StreamID of PCIe function `bdf` on the board's SMMU, from the `iommu-map` of the host
/// bridge (never assumed to be the requester ID).
pub fn stream_id(bdf: Bdf) -> Result<u32, StreamIdError> {
    match STREAMS.get() {
        Some(streams) => streams.as_ref().map_err(|e| *e)?.stream_id(bdf),
        None => Err(StreamIdError::NoSmmu),
    }
}

/// Every pending event record of the board's SMMU, each F_ACCESS of a stream bound through SVA
/// answered ([`Sva::handle_events`]); an overflow and unanswered faults are logged.
pub fn drain_events() -> alloc::vec::Vec<EventRecord> {
    let Some(sva) = sva() else {
        return alloc::vec::Vec::new();
    };
    match sva.handle_events() {
        Ok(handled) => {
            if handled.drain.overflowed {
                log::warn!("smmu: event queue overflowed, events lost");
            }
            for (e, why) in &handled.unanswered {
                log::warn!("smmu: {e} unanswered: {why}");
            }
            handled.events
        }
        Err(e) => {
            log::error!("smmu: draining events failed: {e}");
            alloc::vec::Vec::new()
        }
    }
}

/// A stream let through untranslated (bus address = physical address) while this lives; its
/// STE is made invalid again (default deny) on drop. For device tests that predate SVA.
pub struct Bypass {
    sid: u32,
}

impl Bypass {
    /// Lets stream `sid` bypass the board's SMMU, or `Ok(None)` if there is no SMMU (then
    /// everything bypasses anyway).
    pub fn new(sid: u32) -> Result<Option<Self>, SmmuError> {
        let Some(smmu) = smmu() else {
            return Ok(None);
        };
        smmu.attach_bypass(sid)?;
        Ok(Some(Self { sid }))
    }
}

impl Drop for Bypass {
    fn drop(&mut self) {
        if let Some(smmu) = smmu() {
            if let Err(e) = smmu.detach(self.sid) {
                log::error!("smmu: ending the bypass of StreamID {:#x}: {e}", self.sid);
            }
        }
    }
}
