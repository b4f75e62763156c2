//! Test rigs: a DMA master bound to a fresh address space: what the SMMU/SVA tests and the main job
//! (the SVA coherence workload) run on.
//!
//! * On QEMU `virt,iommu=smmuv3` the master is QEMU's `edu` behind the real SMMUv3; its
//!   StreamID comes from the host bridge's `iommu-map`. `edu` cannot report faults (the SMMU
//!   records them as events), its 4 KiB buffer is only reachable by DMA, and every transfer
//!   takes ~100 ms of virtual time, so tests use few transfers: the buffer is filled and read
//!   back through a *staging page* mapped in the same address space.
//! * On the Raspberry Pi 4 the master sits behind the kernel's SMMU model (4-byte transactions
//!   carrying on after a fault, like `edu`); the board's DMA controller moves its bytes between
//!   the translated addresses, or the CPU does (`dma.engine=cpu`, and always for the second
//!   master, so two masters with two StreamIDs exist).
//! * [`Rig::model`] builds a private model SMMU over RAM (on any board): for the model-only
//!   checks (IOTLB hit counts, fault injection) without disturbing the kernel's SMMU.
//!
//! Data pages are mapped as physical regions over frames the rig owns, so after an unmap the
//! test can still look at the old frame (an anonymous frame would be freed by `munmap`).
#![forbid(unsafe_code)]

mod device;
mod memory;
mod model;

pub use device::{CopierMaster, Device, Outcome};
pub use memory::{fill, read, write};
pub use model::TestModelDomain;

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::aarch64::aspace::{self, CpuMm};
use crate::board;
use crate::board::bootargs::CopyEngine;
use crate::board::bootargs;
use crate::drivers::edu::{self, Direction, Edu};
use crate::drivers::pcie::PcieBus;
use crate::iommu::backend::mmio::GenericTimerClock;
use crate::iommu::backend::model::dma::{DmaEngine, DmaError, FaultPolicy};
use crate::iommu::backend::model::master::CopierEngine;
use crate::iommu::backend::model::TranslationFault;
use crate::iommu::backend::model::{ModelConfig, SmmuModel};
use crate::iommu::backend::SmmuBackend;
use crate::iommu::driver::{DebugKnobs, EventDrain, Smmu, SmmuConfig};
use crate::iommu::physmem;
use crate::iommu::probe::{self, BoardDomain, BoardSmmu, MODEL_DMA_SID};
use crate::iommu::spec::event::{AccessKind, EventKind, EventRecord};
use crate::iommu::sva::{self, Bond, Sva, SvaDomain};
use crate::mm::aspace::{Backing, MmUser, Placement};
use crate::mm::notifier::MmCore;
use crate::mm::pgtable::descriptor::{MemoryType, Permissions, MAIR_VALUE};
use crate::mm::phys::FrameAllocator;
use crate::mm::ram::{frames, LinearMap};
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

/// The DMA mask `edu` is driven with: QEMU's default of 28 bits, which the device cannot
/// report, unless the boot says it was given a wider one (`edu.dma_mask=`).
pub fn edu_dma_mask() -> u64 {
    bootargs().edu_dma_mask.unwrap_or(edu::DEFAULT_DMA_MASK)
}

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

/// A board without an SMMU or DMA master skips the test; any other rig failure fails it.
impl From<RigError> for crate::ktest::TestError {
    fn from(e: RigError) -> Self {
        match e {
            RigError::Unavailable(why) => Self::Skip(why),
            RigError::Failed(why) => Self::Fail(why),
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

/// A device bound to a fresh address space, on the SMMU named by `D`.
pub struct Rig<D: SvaDomain> {
    pub smmu: &'static BoardSmmu,
    pub sva: &'static Sva,
    /// The model, when the SMMU is one.
    pub model: Option<&'static SmmuModel<'static>>,
    pub dev: Device,
    pub sid: u32,
    space: Option<MmUser<CpuMm>>,
    mm: Arc<MmCore>,
    bond: Option<Bond<D>>,
    staging: PhysAddr,
    owned: Vec<PhysAddr>,
    /// Drains that found events lost; only the first is logged as a warning (a test that
    /// overflows the queue on purpose would otherwise warn once per transfer).
    event_losses: AtomicU64,
    _domain: PhantomData<D>,
}

impl Rig<BoardDomain> {
    /// The board's SMMU and DMA master (skips on boards with neither).
    pub fn board() -> Result<Self, RigError> {
        let (smmu, sva) = Self::board_smmu()?;
        let (dev, sid) = Device::board()?;
        Rig::new(smmu, sva, probe::model(), dev, sid)
    }

    /// One rig per DMA master of the board (each with its own address space): every `edu`
    /// on QEMU virt, the model's two engines on the Pi.
    pub fn board_all() -> Result<Vec<Self>, RigError> {
        let (smmu, sva) = Self::board_smmu()?;
        Device::board_all()?
            .into_iter()
            .map(|(dev, sid)| Rig::new(smmu, sva, probe::model(), dev, sid))
            .collect()
    }

    fn board_smmu() -> Result<(&'static BoardSmmu, &'static Sva), RigError> {
        match (probe::smmu(), probe::sva()) {
            (Some(smmu), Some(sva)) => Ok((smmu, sva)),
            _ => Err(RigError::Unavailable(alloc::format!(
                "no SMMU on this board ({:?})",
                probe::probe_outcome()
            ))),
        }
    }
}

impl<D: SvaDomain> Rig<D> {
    fn new(
        smmu: &'static BoardSmmu,
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
    pub fn space(&self) -> &MmUser<CpuMm> {
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
    pub fn take_space(&mut self) -> Option<MmUser<CpuMm>> {
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

    /// A zeroed frame the device reaches (below its DMA controller's bus window, on the Pi);
    /// the caller frees it.
    pub fn alloc_device_frame(&self) -> Result<PhysAddr, RigError> {
        let frames = frames().ok_or_else(|| fail("no frames"))?;
        match self.dev.reach() {
            Some(limit) => frames.alloc_zeroed_below(limit),
            None => frames.alloc_zeroed(),
        }
        .map_err(fail)
    }

    /// Maps a fresh frame the device reaches at `va`, filled with `byte`.
    fn map_frame(&mut self, va: u64, perms: Permissions, byte: u8) -> Result<PhysAddr, RigError> {
        let frame = self.alloc_device_frame()?;
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
        if self.dev.load_model_buffer(data)? {
            return Ok(());
        }
        write(self.staging, data)?;
        self.dev.fetch(STAGING_VA, data.len()).map(|_| ())
    }

    /// The first `len` bytes of the device buffer (edu: through the staging page).
    pub fn read_buffer(&self, len: usize) -> Result<Vec<u8>, RigError> {
        if let Some(bytes) = self.dev.model_buffer(len)? {
            return Ok(bytes);
        }
        fill(self.staging, 0x77)?;
        self.dev.store(STAGING_VA, len)?;
        read(self.staging, len)
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
    /// ([`Rig::event_losses`]); the first is a warning, later ones are debug messages. The
    /// drain is SVA's ([`Sva::handle_events`]): an F_ACCESS of a bound stream is answered, so
    /// the device may re-issue what faulted.
    pub fn drain_events_reporting(&self) -> (Vec<EventRecord>, EventDrain) {
        let (out, drain) = match self.sva.handle_events() {
            Ok(handled) => {
                for (e, why) in &handled.unanswered {
                    log::warn!("sva: {e} unanswered: {why}");
                }
                (handled.events, handled.drain)
            }
            Err(e) => {
                log::error!("draining SMMU events: {e}");
                (Vec::new(), EventDrain::default())
            }
        };
        if drain.lost_events() {
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

    /// Runs `f` with the SMMU's event queue (and its software log) shrunk to 2^`log2` entries
    /// (test-only: so a few faulting transfers overflow it), then gives the queue its full size
    /// back. Records pending at either change are dropped (and logged): drain first; an
    /// overflow not yet reported is kept for the next drain. No device may fault meanwhile
    /// except in `f`.
    pub fn with_event_queue<R>(&self, log2: u8, f: impl FnOnce() -> R) -> Result<R, RigError> {
        let full = self.smmu.event_queue_size().allocated;
        let resize = |log2| {
            let r = self.smmu.resize_event_queue(log2).map_err(fail)?;
            if r.dropped > 0 {
                log::debug!("smmu: resizing the event queue dropped {} records", r.dropped);
            }
            Ok::<_, RigError>(())
        };
        resize(log2)?;
        let r = f();
        resize(full.log2_entries())?;
        Ok(r)
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
