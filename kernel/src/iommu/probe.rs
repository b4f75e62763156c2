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

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::board::bootargs::SmmuStrategy;
use crate::board::dt::Range;
use crate::board::interrupts::{named, GicInterrupt, InterruptError, NamedInterrupt, Trigger};
use crate::board::{Bdf, BootArgs, IommuMap};
use crate::iommu::backend::inject::InjectingBackend;
use crate::iommu::backend::mmio::{GenericTimerClock, MmioSmmu};
use crate::iommu::backend::model::dma::{DmaEngine, FaultPolicy};
use crate::iommu::backend::model::master::CopierEngine;
use crate::iommu::backend::model::{ModelConfig, SmmuModel};
use crate::iommu::backend::SmmuBackend;
use crate::iommu::driver::planner::Strategy;
use crate::iommu::driver::{DebugKnobs, Smmu, SmmuConfig, SmmuError};
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
                _ => String::from("(software model over RAM)"),
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

/// How the SMMU's event records reach the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventDelivery {
    /// The eventq interrupt moves records from the SMMU's queue to the driver's software log
    /// as they arrive ([`Smmu::collect_events`]); the drains decode and answer them.
    Interrupt {
        /// The eventq line.
        eventq: GicInterrupt,
        /// The gerror line, if it is enabled too.
        gerror: Option<GicInterrupt>,
        /// The controller, e.g. `GICv3`.
        controller: String,
    },
    /// Only the drains move records (polling), for this reason.
    Polling(String),
}

/// An interrupt controller as the probe needs it: the composition root adapts the GIC driver.
pub trait InterruptController {
    /// Its name for the banner (`GICv2`, `GICv3`).
    fn name(&self) -> String;
    /// Enables `irq`, routed to the calling CPU, with `handler`.
    fn enable(&self, irq: GicInterrupt, handler: fn(u32)) -> Result<(), String>;
}

static DELIVERY: spin::Once<EventDelivery> = spin::Once::new();
static EVENTQ_IRQS: AtomicU64 = AtomicU64::new(0);
static EVENTQ_IRQ_ERRORS: AtomicU64 = AtomicU64::new(0);
static GERROR_IRQS: AtomicU64 = AtomicU64::new(0);
/// Every SMMU_GERROR bit the gerror interrupt found active (acknowledged in thread context).
static GERRORS_SEEN: AtomicU32 = AtomicU32::new(0);

/// Wires the SMMU's `eventq` (and, if edge-triggered, `gerror`) interrupt when the device tree
/// names one and an interrupt controller comes up (`controller` is called only then), and
/// enables them in SMMU_IRQ_CTRL; otherwise the events are drained by polling. Once, on the
/// boot CPU (the lines are routed to it), after [`init`].
pub fn connect_interrupts(
    irqs: &Result<Vec<NamedInterrupt>, InterruptError>,
    controller: &dyn Fn() -> Result<&'static dyn InterruptController, String>,
) -> &'static EventDelivery {
    DELIVERY.call_once(|| match connect(irqs, controller) {
        Ok(delivery) => delivery,
        Err(why) => EventDelivery::Polling(why),
    })
}

fn connect(
    irqs: &Result<Vec<NamedInterrupt>, InterruptError>,
    controller: &dyn Fn() -> Result<&'static dyn InterruptController, String>,
) -> Result<EventDelivery, String> {
    let smmu = match (probe_outcome(), SMMU.get()) {
        (Probe::Mmio { .. }, Some(smmu)) => smmu,
        (Probe::Model, _) => return Err("a model raises no interrupt".into()),
        _ => return Err("no SMMU".into()),
    };
    let irqs = irqs
        .as_ref()
        .map_err(|e| alloc::format!("its interrupts in the device tree are unusable: {e}"))?;
    let eventq = *named(irqs, "eventq").ok_or("no eventq interrupt in the device tree")?;
    let chip = controller()?;
    chip.enable(eventq, eventq_interrupt)
        .map_err(|e| alloc::format!("{} refused {eventq}: {e}", chip.name()))?;
    // A level-triggered gerror line would stay asserted until thread context acknowledges the
    // error (the handler only records it): such a line is left to polling.
    let gerror = named(irqs, "gerror")
        .filter(|g| g.trigger == Trigger::Edge)
        .copied()
        .filter(|g| chip.enable(*g, gerror_interrupt).is_ok());
    smmu.set_interrupts(true, gerror.is_some())
        .map_err(|e| alloc::format!("SMMU_IRQ_CTRL: {e}"))?;
    Ok(EventDelivery::Interrupt {
        eventq,
        gerror,
        controller: chip.name(),
    })
}

/// The eventq interrupt (IRQ context, boot CPU): moves the records to the software log and
/// hands the slots back. Decoding and answering wait for the next drain.
fn eventq_interrupt(_intid: u32) {
    EVENTQ_IRQS.fetch_add(1, Ordering::Relaxed);
    if let Some(smmu) = SMMU.get() {
        if smmu.collect_events().is_err() {
            EVENTQ_IRQ_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The gerror interrupt (IRQ context): records which errors are active. Acknowledging them
/// writes SMMU_GERRORN, which the command queue's lock guards, so that is left to thread
/// context as when polling: the next drain acknowledges EVENTQ_ABT_ERR, a submission CMDQ_ERR.
fn gerror_interrupt(_intid: u32) {
    GERROR_IRQS.fetch_add(1, Ordering::Relaxed);
    if let Some(smmu) = SMMU.get() {
        GERRORS_SEEN.fetch_or(smmu.active_global_errors(), Ordering::Relaxed);
    }
}

/// How events are delivered (polling before [`connect_interrupts`]).
pub fn event_delivery() -> EventDelivery {
    DELIVERY
        .get()
        .cloned()
        .unwrap_or_else(|| EventDelivery::Polling("interrupts not connected".into()))
}

/// Interrupt counts so far: (eventq interrupts, of which failed to read the queue, gerror
/// interrupts, GERROR bits they saw).
pub fn interrupt_counts() -> (u64, u64, u64, u32) {
    (
        EVENTQ_IRQS.load(Ordering::Relaxed),
        EVENTQ_IRQ_ERRORS.load(Ordering::Relaxed),
        GERROR_IRQS.load(Ordering::Relaxed),
        GERRORS_SEEN.load(Ordering::Relaxed),
    )
}

/// **Debug and tests only**: turns the eventq interrupt off (SMMU_IRQ_CTRL.EVENTQ_IRQEN = 0)
/// or back on, leaving gerror as connected. Off, records stay in the SMMU's queue until a
/// drain polls them. Only where the interrupt was connected.
pub fn set_event_interrupt(enabled: bool) -> Result<(), SmmuError> {
    let (Some(smmu), EventDelivery::Interrupt { gerror, .. }) = (SMMU.get(), event_delivery())
    else {
        return Err(SmmuError::Disabled);
    };
    smmu.set_interrupts(enabled, gerror.is_some())
}

/// The boot banner's SMMU line: what the SMMU is, its event queue, and how its events reach
/// the kernel ([`event_delivery`]).
pub fn banner_line() -> Option<String> {
    let smmu = SMMU.get()?;
    let what = match probe_outcome() {
        Probe::Mmio { pa } => alloc::format!("SMMUv3 at {pa:#x}"),
        _ => "SMMUv3 model".into(),
    };
    let q = smmu.event_queue_size().allocated;
    let delivery = match event_delivery() {
        EventDelivery::Interrupt {
            eventq, controller, ..
        } => alloc::format!(
            "drained by the eventq interrupt (SPI {}, {controller}), decoded after each transfer",
            eventq.number
        ),
        EventDelivery::Polling(why) => {
            alloc::format!("drained by polling after each transfer ({why})")
        }
    };
    Some(alloc::format!(
        "{what}; event queue {} entries ({} KiB; the SMMU allows 2^{}), {delivery}",
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
pub fn drain_events() -> Vec<EventRecord> {
    let Some(sva) = sva() else {
        return Vec::new();
    };
    match sva.handle_events() {
        Ok(handled) => {
            if handled.drain.lost_events() {
                log::warn!("smmu: events lost: {:?}", handled.drain);
            }
            for (e, why) in &handled.unanswered {
                log::warn!("smmu: {e} unanswered: {why}");
            }
            handled.events
        }
        Err(e) => {
            log::error!("smmu: draining events failed: {e}");
            Vec::new()
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
