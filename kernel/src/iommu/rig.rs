//! A DMA master bound to a fresh address space: what the SMMU/SVA tests and the main job
//! (the SVA coherence workload) run on.
//!
//! * On QEMU `virt,iommu=smmuv3` the master is QEMU's `edu` behind the real SMMUv3; its
//!   StreamID comes from the host bridge's `iommu-map`. `edu` cannot report faults (the SMMU
//!   records them as events), its 4 KiB buffer is only reachable by DMA, and every transfer
//!   takes ~100 ms of virtual time, so tests use few transfers: the buffer is filled and read
//!   back through a *staging page* mapped in the same address space.
//! * On the Raspberry Pi 4 the master is the model DMA engine behind the kernel's SMMU model
//!   (4-byte transactions carrying on after a fault, like `edu`).
//! * [`Rig::model`] builds a private model SMMU over RAM (on any board): for the model-only
//!   checks (IOTLB hit counts, fault injection) without disturbing the kernel's SMMU.
//!
//! Data pages are mapped as physical regions over frames the rig owns, so after an unmap the
//! test can still look at the old frame (an anonymous frame would be freed by `munmap`).

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::aarch64::aspace::{self, KernelMm};
use crate::drivers::edu::{self, Direction, Edu};
use crate::drivers::pcie::PcieBus;
use crate::drivers::smmuv3::GenericTimerClock;
use crate::iommu::backend::SmmuBackend;
use crate::iommu::driver::{DebugKnobs, EventDrain, Smmu, SmmuConfig};
use crate::iommu::event::{AccessKind, EventKind, EventRecord};
use crate::iommu::kernel::{self as kiommu, KernelDomain, KernelSmmu, MODEL_DMA_SID};
use crate::iommu::model::dma::{DmaEngine, DmaError, FaultPolicy};
use crate::iommu::model::{ModelConfig, SmmuModel};
use crate::iommu::physmem;
use crate::iommu::sva::{self, Bond, Sva, SvaDomain};
use crate::kernel::{board, bootargs, frames, LinearMap};
use crate::mm::aspace::{Backing, MmUser, Placement};
use crate::mm::notifier::MmCore;
use crate::mm::pgtable::descriptor::{MemoryType, Permissions, MAIR_VALUE};
use crate::mm::phys::FrameAllocator;
use crate::mm::{PhysAddr, VirtAddr, PAGE_SIZE};
use crate::trace::{self, Kind};

pub const PAGE: u64 = PAGE_SIZE as u64;
/// Where test data is mapped: below 2^28, so `edu` reaches it even with its default DMA mask.
pub const VA: u64 = 0x0800_0000;
/// The staging page (edu buffer in and out).
pub const STAGING_VA: u64 = 0x0700_0000;
/// How long one `edu` transfer may take (100 ms of virtual time, on a busy host).
const EDU_TIMEOUT_US: u64 = 5_000_000;

pub static LINEAR: LinearMap = LinearMap;

/// Why a rig operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RigError {
    /// This board lacks what the rig needs (no SMMU, no DMA master).
    Unavailable(alloc::string::String),
    /// An operation failed.
    Failed(alloc::string::String),
}

impl core::fmt::Display for RigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RigError::Unavailable(why) => write!(f, "unavailable: {why}"),
            RigError::Failed(why) => f.write_str(why),
        }
    }
}

/// A failure with `e`'s message.
pub fn fail(e: impl core::fmt::Display) -> RigError {
    RigError::Failed(alloc::format!("{e}"))
}

/// Read-write data for the device (kernel-owned pages: every SMMU access is privileged).
pub const RW: Permissions = Permissions::KERNEL_RW;
/// Read-only data.
pub const RO: Permissions = Permissions::KERNEL_RO;

/// A DMA master.
pub enum Device {
    /// QEMU's `edu` on PCIe.
    Edu(Edu),
    /// A model DMA engine and its 4 KiB buffer.
    Model(DmaEngine<'static, 'static>, spin::Mutex<Vec<u8>>),
}

/// What the device knows about a transfer: `edu` cannot tell whether the SMMU faulted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The transfer completed; whether any transaction faulted is unknown (`edu`).
    Done,
    /// The model engine completed without a fault.
    Clean,
    /// The model engine saw faulting transactions (faulting reads delivered zeros).
    Faulted,
}

impl Device {
    fn model(engine: DmaEngine<'static, 'static>) -> Self {
        Device::Model(engine, spin::Mutex::new(vec![0; edu::BUFFER_SIZE]))
    }

    /// Finds the kernel's DMA master: the first `edu` (QEMU virt) or model engine (Pi).
    fn kernel() -> Result<(Self, u32), RigError> {
        Self::kernel_all()?
            .into_iter()
            .next()
            .ok_or_else(|| RigError::Unavailable("no edu device".into()))
    }

    /// Every DMA master of the kernel with its StreamID: each `edu` on the bus (QEMU virt,
    /// StreamIDs from the `iommu-map`), or the model's engines (Pi).
    fn kernel_all() -> Result<Vec<(Self, u32)>, RigError> {
        if kiommu::model().is_some() {
            return kiommu::MODEL_DMA_SIDS
                .iter()
                .map(|&sid| {
                    let engine = kiommu::model_dma_engine_at(sid)
                        .ok_or_else(|| fail("no model DMA engine"))?;
                    Ok((Self::model(engine), sid))
                })
                .collect();
        }
        let Some(host) = board().pcie.as_ref() else {
            return Err(RigError::Unavailable(
                "no PCIe and no model DMA engine".into(),
            ));
        };
        let mut bus = PcieBus::new(host).map_err(fail)?;
        let mask = bootargs()
            .number("edu.dma_mask")
            .and_then(Result::ok)
            .unwrap_or(edu::DEFAULT_DMA_MASK);
        Edu::probe_all(&mut bus, mask)
            .map_err(fail)?
            .into_iter()
            .map(|edu| {
                let sid = kiommu::stream_id(edu.bdf()).map_err(fail)?;
                Ok((Device::Edu(edu), sid))
            })
            .collect()
    }

    /// True for QEMU's `edu` (slow: ~100 ms per transfer).
    pub fn is_edu(&self) -> bool {
        matches!(self, Device::Edu(_))
    }

    /// DMA read: `len` bytes at `va` into the device buffer.
    pub fn fetch(&self, va: u64, len: usize) -> Result<Outcome, RigError> {
        trace::record(Kind::DmaBegin, va, len as u64);
        let r = self.fetch_untraced(va, len);
        trace::record(
            Kind::DmaEnd,
            va,
            u64::from(!matches!(r, Ok(Outcome::Done | Outcome::Clean))),
        );
        r
    }

    fn fetch_untraced(&self, va: u64, len: usize) -> Result<Outcome, RigError> {
        match self {
            Device::Edu(e) => e
                .dma(Direction::FromMemory, va, 0, len, EDU_TIMEOUT_US)
                .map(|()| Outcome::Done)
                .map_err(fail),
            Device::Model(engine, buf) => {
                model_outcome(engine.read(VirtAddr(va), &mut buf.lock()[..len]))
            }
        }
    }

    /// DMA write: the first `len` bytes of the device buffer to `va`.
    pub fn store(&self, va: u64, len: usize) -> Result<Outcome, RigError> {
        trace::record(Kind::DmaBegin, va, len as u64 | 1 << 63);
        let r = self.store_untraced(va, len);
        trace::record(
            Kind::DmaEnd,
            va,
            u64::from(!matches!(r, Ok(Outcome::Done | Outcome::Clean))),
        );
        r
    }

    fn store_untraced(&self, va: u64, len: usize) -> Result<Outcome, RigError> {
        match self {
            Device::Edu(e) => e
                .dma(Direction::ToMemory, va, 0, len, EDU_TIMEOUT_US)
                .map(|()| Outcome::Done)
                .map_err(fail),
            Device::Model(engine, buf) => {
                model_outcome(engine.write(VirtAddr(va), &buf.lock()[..len]))
            }
        }
    }

    /// Starts a DMA write and returns (the model engine runs it right here).
    pub fn start_store(&self, va: u64, len: usize) -> Result<(), RigError> {
        match self {
            Device::Edu(e) => e.start_dma(Direction::ToMemory, va, 0, len).map_err(fail),
            Device::Model(..) => self.store(va, len).map(|_| ()),
        }
    }

    /// Waits for the transfer [`Device::start_store`] started.
    pub fn wait(&self) -> Result<(), RigError> {
        match self {
            Device::Edu(e) => e.wait_dma(EDU_TIMEOUT_US).map_err(fail),
            Device::Model(..) => Ok(()),
        }
    }
}

fn model_outcome(r: Result<(), DmaError>) -> Result<Outcome, RigError> {
    match r {
        Ok(()) => Ok(Outcome::Clean),
        Err(DmaError::Fault { .. }) => Ok(Outcome::Faulted),
        Err(e) => Err(fail(e)),
    }
}

/// The SMMU of [`Rig::model`] rigs. Each rig leaks its model and driver (a few frames): a
/// subscription may outlive the test by a grace period, and tests are few.
pub struct TestModelDomain;

static TEST_MODEL: spin::Mutex<Option<&'static Sva>> = spin::Mutex::new(None);

impl SvaDomain for TestModelDomain {
    fn sva() -> Option<&'static Sva> {
        *TEST_MODEL.lock()
    }
}

/// A device bound to a fresh address space, on the SMMU named by `D`.
pub struct Rig<D: SvaDomain> {
    pub smmu: &'static KernelSmmu,
    pub sva: &'static Sva,
    /// The model, when the SMMU is one.
    pub model: Option<&'static SmmuModel<'static>>,
    pub dev: Device,
    pub sid: u32,
    space: Option<MmUser<KernelMm>>,
    mm: Arc<MmCore>,
    bond: Option<Bond<D>>,
    staging: PhysAddr,
    owned: Vec<PhysAddr>,
    /// Drains that found events lost; only the first is logged as a warning (a faulting 4 KiB
    /// transfer alone makes ~1024 events for the queue's 128 slots, so a workload that faults
    /// on purpose would otherwise warn once per transfer).
    event_losses: AtomicU64,
    _domain: PhantomData<D>,
}

impl Rig<KernelDomain> {
    /// The kernel's SMMU and DMA master (skips on boards with neither).
    pub fn kernel() -> Result<Self, RigError> {
        let (smmu, sva) = Self::kernel_smmu()?;
        let (dev, sid) = Device::kernel()?;
        Rig::new(smmu, sva, kiommu::model(), dev, sid)
    }

    /// One rig per DMA master of the kernel (each with its own address space): every `edu`
    /// on QEMU virt, the model's two engines on the Pi.
    pub fn kernel_all() -> Result<Vec<Self>, RigError> {
        let (smmu, sva) = Self::kernel_smmu()?;
        Device::kernel_all()?
            .into_iter()
            .map(|(dev, sid)| Rig::new(smmu, sva, kiommu::model(), dev, sid))
            .collect()
    }

    fn kernel_smmu() -> Result<(&'static KernelSmmu, &'static Sva), RigError> {
        match (kiommu::smmu(), kiommu::sva()) {
            (Some(smmu), Some(sva)) => Ok((smmu, sva)),
            _ => Err(RigError::Unavailable(alloc::format!(
                "no SMMU on this board ({:?})",
                kiommu::probe_outcome()
            ))),
        }
    }
}

impl Rig<TestModelDomain> {
    /// A private model SMMU over RAM with its own DMA engine (StreamID [`MODEL_DMA_SID`]),
    /// driven with `cfg` (short timeouts, small queues unless given otherwise).
    pub fn model(model_cfg: ModelConfig, cfg: SmmuConfig) -> Result<Self, RigError> {
        let frames = frames().ok_or_else(|| fail("no frame allocator"))?;
        let model: &'static SmmuModel<'static> = alloc::boxed::Box::leak(alloc::boxed::Box::new(
            SmmuModel::new(&LINEAR, model_cfg).map_err(fail)?,
        ));
        let backend: &'static dyn SmmuBackend = model;
        let smmu: &'static KernelSmmu = alloc::boxed::Box::leak(alloc::boxed::Box::new(
            Smmu::new(backend, GenericTimerClock, &LINEAR, frames, cfg).map_err(fail)?,
        ));
        let sva: &'static Sva =
            alloc::boxed::Box::leak(alloc::boxed::Box::new(Sva::new(smmu, "test-model")));
        *TEST_MODEL.lock() = Some(sva);
        let engine = DmaEngine::new(model, MODEL_DMA_SID)
            .with_transactions(4, FaultPolicy::Continue)
            .map_err(fail)?;
        Rig::new(smmu, sva, Some(model), Device::model(engine), MODEL_DMA_SID)
    }

    /// Driver settings for model rigs: 32 StreamIDs, small queues, 20 ms timeouts.
    pub fn small_config() -> SmmuConfig {
        SmmuConfig {
            max_sid: 0x1f,
            cmdq_log2: 6,
            eventq_log2: 6,
            sync_timeout_ns: 20_000_000,
            ack_timeout_ns: 20_000_000,
            ..SmmuConfig::default()
        }
    }
}

impl<D: SvaDomain> Rig<D> {
    fn new(
        smmu: &'static KernelSmmu,
        sva: &'static Sva,
        model: Option<&'static SmmuModel<'static>>,
        dev: Device,
        sid: u32,
    ) -> Result<Self, RigError> {
        let space = aspace::create().map_err(fail)?;
        let mm = space.mm().clone();
        let mut rig = Rig {
            smmu,
            sva,
            model,
            dev,
            sid,
            space: Some(space),
            mm,
            bond: None,
            staging: PhysAddr(0),
            owned: Vec::new(),
            event_losses: AtomicU64::new(0),
            _domain: PhantomData,
        };
        rig.staging = rig.map_frame(STAGING_VA, RW, 0)?;
        rig.drain_events();
        Ok(rig)
    }

    /// The address space (panics after [`Rig::teardown`]: a test bug).
    pub fn space(&self) -> &MmUser<KernelMm> {
        self.space
            .as_ref()
            .expect("the address space was torn down")
    }

    /// Binds the device to the address space.
    pub fn bind(&mut self) -> Result<(), RigError> {
        let root = self.space().root().ok_or_else(|| fail("no page table"))?;
        self.bond = Some(sva::bind::<D>(self.sid, &self.mm, root, MAIR_VALUE).map_err(fail)?);
        Ok(())
    }

    /// Unbinds the device.
    pub fn unbind(&mut self) -> Result<(), RigError> {
        match self.bond.take() {
            Some(b) => b.unbind().map_err(fail),
            None => Ok(()),
        }
    }

    /// Unbinds the device, returning SVA's own error.
    pub fn unbind_raw(&mut self) -> Result<(), crate::iommu::sva::SvaError> {
        match self.bond.take() {
            Some(b) => b.unbind(),
            None => Ok(()),
        }
    }

    /// The bond (after [`Rig::bind`]).
    pub fn bond(&self) -> Option<&Bond<D>> {
        self.bond.as_ref()
    }

    /// Drops the last user of the address space: `release`, then the page tables are freed.
    pub fn teardown(&mut self) {
        self.space = None;
    }

    /// Hands the address space's user reference to the caller (who tears it down by dropping
    /// it, e.g. while another CPU uses the device). [`Rig::space`] panics afterwards.
    pub fn take_space(&mut self) -> Option<MmUser<KernelMm>> {
        self.space.take()
    }

    /// The root table's physical address.
    pub fn root(&self) -> Option<PhysAddr> {
        self.space.as_ref()?.root()
    }

    /// The notifier core of the address space.
    pub fn mm(&self) -> &Arc<MmCore> {
        &self.mm
    }

    fn map_frame(&mut self, va: u64, perms: Permissions, byte: u8) -> Result<PhysAddr, RigError> {
        let frame = frames()
            .ok_or_else(|| fail("no frames"))?
            .alloc_zeroed()
            .map_err(fail)?;
        self.owned.push(frame);
        fill(frame, byte)?;
        self.space()
            .mmap(
                Placement::Fixed(VirtAddr(va)),
                PAGE_SIZE,
                perms,
                Backing::Physical(frame, MemoryType::Normal),
            )
            .map_err(fail)?;
        Ok(frame)
    }

    /// Maps `pages` pages at `va` over fresh frames filled with `byte`; returns the frames.
    pub fn map(
        &mut self,
        va: u64,
        pages: u64,
        perms: Permissions,
        byte: u8,
    ) -> Result<Vec<PhysAddr>, RigError> {
        (0..pages)
            .map(|i| self.map_frame(va + i * PAGE, perms, byte))
            .collect()
    }

    /// `munmap` of `pages` pages at `va`.
    pub fn unmap(&self, va: u64, pages: u64) -> Result<(), RigError> {
        self.space()
            .munmap(VirtAddr(va), (pages * PAGE) as usize)
            .map_err(fail)
    }

    /// `mprotect` of `pages` pages at `va`.
    pub fn protect(&self, va: u64, pages: u64, perms: Permissions) -> Result<(), RigError> {
        self.space()
            .mprotect(VirtAddr(va), (pages * PAGE) as usize, perms)
            .map_err(fail)
    }

    /// Puts `data` into the device buffer (edu: through the staging page).
    pub fn load_buffer(&self, data: &[u8]) -> Result<(), RigError> {
        match &self.dev {
            Device::Model(_, buf) => {
                buf.lock()[..data.len()].copy_from_slice(data);
                Ok(())
            }
            Device::Edu(_) => {
                write(self.staging, data)?;
                self.dev.fetch(STAGING_VA, data.len()).map(|_| ())
            }
        }
    }

    /// The first `len` bytes of the device buffer (edu: through the staging page).
    pub fn read_buffer(&self, len: usize) -> Result<Vec<u8>, RigError> {
        match &self.dev {
            Device::Model(_, buf) => Ok(buf.lock()[..len].to_vec()),
            Device::Edu(_) => {
                fill(self.staging, 0x77)?;
                self.dev.store(STAGING_VA, len)?;
                read(self.staging, len)
            }
        }
    }

    /// Stale translations the model's coherence checker recorded (always 0 on a real SMMU,
    /// whose IOTLB cannot be inspected).
    pub fn stale_translation_count(&self) -> usize {
        self.model.map_or(0, |m| m.stale_translations().len())
    }

    /// How many drains found events lost (see [`Rig::drain_events_reporting`]).
    pub fn event_losses(&self) -> u64 {
        self.event_losses.load(Ordering::Relaxed)
    }

    /// Every pending event of the rig's SMMU (each traced as a fault).
    pub fn drain_events(&self) -> Vec<EventRecord> {
        self.drain_events_reporting().0
    }

    /// Every pending event, and whether events were lost since the last drain (the queue
    /// overflowed: EVENTQ_PROD.OVFLG, or QEMU's GERROR.EVENTQ_ABT_ERR). A loss is counted
    /// ([`Rig::event_losses`]); the first is a warning, later ones are debug messages.
    pub fn drain_events_reporting(&self) -> (Vec<EventRecord>, EventDrain) {
        let mut out = Vec::new();
        let drain = match self.smmu.drain_events(|e| out.push(*e)) {
            Ok(d) => d,
            Err(e) => {
                log::error!("draining SMMU events: {e}");
                EventDrain::default()
            }
        };
        if drain.overflowed || drain.write_aborted {
            let how = if drain.overflowed {
                "overflowed (OVFLG)"
            } else {
                "write aborted (GERROR.EVENTQ_ABT_ERR)"
            };
            let n = drain.drained;
            if self.event_losses.fetch_add(1, Ordering::Relaxed) == 0 {
                log::warn!(
                    "smmu: event queue {how} after {n} events: later events were lost \
                     (further losses are counted, not warned about)"
                );
            } else {
                log::debug!("smmu: event queue {how} after {n} events: later events were lost");
            }
        }
        for e in &out {
            trace::record(
                Kind::Fault,
                e.input_addr,
                u64::from(e.sid) << 8 | e.kind.code() as u64,
            );
        }
        (out, drain)
    }

    /// Runs `f` with the driver's skip-invalidation knob set (test-controlled), then puts the
    /// knob back as it was (the `smmu.skip_invalidate` boot argument may have set it).
    pub fn without_invalidation<R>(&self, f: impl FnOnce() -> R) -> R {
        let before = self.smmu.debug_knobs();
        self.smmu.set_debug_knobs(DebugKnobs {
            skip_invalidation: true,
            ..before
        });
        let r = f();
        self.smmu.set_debug_knobs(before);
        r
    }
}

impl<D: SvaDomain> Drop for Rig<D> {
    fn drop(&mut self) {
        let _ = self.unbind();
        self.space = None;
        if let Some(f) = frames() {
            for frame in self.owned.drain(..) {
                f.free(frame);
            }
        }
        if let Some(model) = self.model {
            // The next test starts with a clean checker record.
            let _ = model.take_stale_translations();
        }
    }
}

/// Fills a frame with `byte`.
pub fn fill(frame: PhysAddr, byte: u8) -> Result<(), RigError> {
    physmem::fill(&LINEAR, frame, PAGE_SIZE, byte).map_err(fail)
}

/// Writes `data` at physical `pa`.
pub fn write(pa: PhysAddr, data: &[u8]) -> Result<(), RigError> {
    physmem::write_bytes(&LINEAR, pa, data).map_err(fail)
}

/// Reads `len` bytes at physical `pa`.
pub fn read(pa: PhysAddr, len: usize) -> Result<Vec<u8>, RigError> {
    let mut v = vec![0; len];
    physmem::read_bytes(&LINEAR, pa, &mut v).map_err(fail)?;
    Ok(v)
}

/// The events of `kind` from stream `sid` whose input address is in `[start, end)` with the
/// given access direction.
pub fn faults(
    events: &[EventRecord],
    kind: EventKind,
    sid: u32,
    start: u64,
    end: u64,
    access: AccessKind,
) -> usize {
    events
        .iter()
        .filter(|e| {
            e.kind == kind
                && e.sid == sid
                && (start..end).contains(&e.input_addr)
                && e.access == access
        })
        .count()
}
