//! The kernel's IOMMU, probed once at boot.
//!
//! * **QEMU `virt,iommu=smmuv3`**: the SMMUv3 the device tree describes (`arm,smmu-v3`), driven
//!   through its registers ([`MmioSmmu`]). PCIe requesters reach it with the StreamID the host
//!   bridge's `iommu-map` gives ([`stream_id`]).
//! * **Raspberry Pi 4 (QEMU `raspi4b` or real)**: no SMMU exists, so the software SMMUv3 model
//!   runs as the backend over real RAM (the linear map), and a model DMA engine
//!   ([`model_dma_engine`], StreamID [`MODEL_DMA_SID`]) stands in for a PCIe device. The driver,
//!   SVA and the tests are the same code.
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

use core::fmt;

use crate::drivers::pcie::Bdf;
use crate::drivers::smmuv3::{GenericTimerClock, MmioSmmu};
use crate::iommu::backend::SmmuBackend;
use crate::iommu::driver::{DebugKnobs, Smmu, SmmuConfig, SmmuError};
use crate::iommu::event::EventRecord;
use crate::iommu::inject::InjectingBackend;
use crate::iommu::model::dma::{DmaEngine, FaultPolicy};
use crate::iommu::model::{ModelConfig, SmmuModel};
use crate::iommu::planner::Strategy;
use crate::iommu::sva::{Sva, SvaDomain};
use crate::kernel::{board, bootargs, frames, LinearMap};

/// The driver type of the kernel's SMMU, whatever the backend.
pub type KernelSmmu = Smmu<'static, &'static dyn SmmuBackend, GenericTimerClock>;

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
    /// The frame allocator does not exist yet.
    NoFrames,
    /// The register window could not be mapped.
    Map(crate::arch::aarch64::mmu::KernelMapError),
    /// The model refused its configuration.
    Model(crate::iommu::model::ModelConfigError),
    /// The driver failed (unsupported SMMU, timeout, no memory).
    Driver(SmmuError),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoFrames => f.write_str("no frame allocator"),
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
static SMMU: spin::Once<KernelSmmu> = spin::Once::new();
static SVA: spin::Once<Sva> = spin::Once::new();
static PROBE: spin::Once<Probe> = spin::Once::new();

/// The kernel's SMMU as an SVA domain: `sva::bind::<KernelDomain>(...)`.
pub struct KernelDomain;

impl SvaDomain for KernelDomain {
    fn sva() -> Option<&'static Sva> {
        SVA.get()
    }
}

/// The driver settings for this boot: 256 StreamIDs (PCIe bus 0), the strategy from the boot
/// arguments, the driver's default queue sizes and 1 s timeouts.
fn config() -> SmmuConfig {
    let args = bootargs();
    let strategy = match args.get("smmu.strategy").or_else(|| args.get("strategy")) {
        None => Strategy::Auto,
        Some(name) => Strategy::from_name(name).unwrap_or_else(|| {
            log::warn!("smmu: unknown strategy {name:?} (per-page, range, asid, auto): using auto");
            Strategy::Auto
        }),
    };
    SmmuConfig {
        strategy,
        ..SmmuConfig::default()
    }
}

/// Brings up the board's SMMU (or the model) and reports its features. Runs once, on the boot
/// CPU, after the frame allocator and `ioremap` work.
pub fn init() {
    let outcome = PROBE.call_once(probe);
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
            if bootargs().flag("smmu.skip_invalidate") {
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

fn probe() -> Probe {
    let info = board();
    let backend: &'static dyn SmmuBackend = match (info.smmu, info.kind) {
        (Some(regs), _) => match MmioSmmu::map(regs.base, regs.size) {
            Ok(m) => MMIO.call_once(|| m),
            Err(e) => return Probe::Failed(ProbeError::Map(e)),
        },
        (None, crate::board::BoardKind::RaspberryPi4) => {
            match SmmuModel::new(&LINEAR, ModelConfig::default()) {
                Ok(m) => MODEL.call_once(|| m),
                Err(e) => return Probe::Failed(ProbeError::Model(e)),
            }
        }
        (None, _) => return Probe::Absent,
    };
    // The driver talks to the SMMU through the fault injector, a pass-through unless a test or
    // the soak arms it (crate::fault).
    let backend: &'static dyn SmmuBackend =
        INJECTOR.call_once(|| InjectingBackend::new(backend, &LINEAR));
    let Some(frames) = frames() else {
        return Probe::Failed(ProbeError::NoFrames);
    };
    match Smmu::new(backend, GenericTimerClock, &LINEAR, frames, config()) {
        Ok(smmu) => {
            let smmu = SMMU.call_once(|| smmu);
            SVA.call_once(|| Sva::new(smmu, "smmu0"));
            match info.smmu {
                Some(regs) => Probe::Mmio { pa: regs.base },
                None => Probe::Model,
            }
        }
        Err(e) => Probe::Failed(ProbeError::Driver(e)),
    }
}

/// What the probe found (`Absent` before [`init`]).
pub fn probe_outcome() -> Probe {
    PROBE.get().copied().unwrap_or(Probe::Absent)
}

/// The kernel's SMMU driver, if there is one.
pub fn smmu() -> Option<&'static KernelSmmu> {
    SMMU.get()
}

/// The kernel's SVA layer, if there is an SMMU.
pub fn sva() -> Option<&'static Sva> {
    SVA.get()
}

/// The fault injector between the kernel's driver and its SMMU (disarmed unless asked).
pub fn injector() -> Option<&'static InjectingBackend<'static>> {
    INJECTOR.get()
}

/// The software model, when it is the kernel's SMMU (Raspberry Pi 4).
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

/// A PCIe requester has no StreamID on this SMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamIdError {
    /// No SMMU, or the device tree does not say which node it is.
    NoSmmu,
    /// No PCIe host bridge in the device tree.
    NoHostBridge,
    /// The host bridge's `iommu-map` does not cover this requester for our SMMU.
    NotMapped(Bdf),
}

impl fmt::Display for StreamIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSmmu => f.write_str("no SMMU (or it has no phandle)"),
            Self::NoHostBridge => f.write_str("no PCIe host bridge"),
            Self::NotMapped(bdf) => write!(f, "iommu-map has no StreamID for {bdf}"),
        }
    }
}

/// The StreamID of PCIe function `bdf` on the kernel's SMMU, from the `iommu-map` of the host
/// bridge (never assumed to be the requester ID).
pub fn stream_id(bdf: Bdf) -> Result<u32, StreamIdError> {
    let info = board();
    let phandle = info.smmu_phandle.ok_or(StreamIdError::NoSmmu)?;
    let host = info.pcie.as_ref().ok_or(StreamIdError::NoHostBridge)?;
    host.stream_id(phandle, bdf.requester_id())
        .ok_or(StreamIdError::NotMapped(bdf))
}

/// Every pending event record of the kernel's SMMU (an overflow is logged).
pub fn drain_events() -> alloc::vec::Vec<EventRecord> {
    let mut out = alloc::vec::Vec::new();
    if let Some(smmu) = smmu() {
        match smmu.drain_events(|e| out.push(*e)) {
            Ok(d) if d.overflowed => log::warn!("smmu: event queue overflowed, events lost"),
            Ok(_) => {}
            Err(e) => log::error!("smmu: draining events failed: {e}"),
        }
    }
    out
}

/// A stream let through untranslated (bus address = physical address) while this lives; its
/// STE is made invalid again (default deny) on drop. For device tests that predate SVA.
pub struct Bypass {
    sid: u32,
}

impl Bypass {
    /// Lets stream `sid` bypass the kernel's SMMU, or `Ok(None)` if there is no SMMU (then
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
