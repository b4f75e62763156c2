//! The world the address-space target runs in: the host [`ArenaPlatform`] over the fuzz arena, the
//! SMMU model with the real driver on top, and the notifier subscribers that connect them.
//!
//! The address space's platform and the SMMU driver need `'static` memory, so every thread owns
//! one leaked [`FuzzMemory`] that is [reset](FuzzMemory::reset) for each input; everything
//! else (model, driver, address spaces, subscribers) is created per input and dropped with it.

use std::sync::{Arc, Mutex};

use shootdown::iommu::backend::SmmuBackend;
use shootdown::iommu::driver::{ContextId, Smmu};
use shootdown::iommu::fake::StepClock;
use shootdown::iommu::backend::model::SmmuModel;
use shootdown::mm::fake::ArenaPlatform;
use shootdown::mm::notifier::{
    MmCore, MmuNotifierOps, NotifierRange, NotifyEvent, OpSet, WouldBlock,
};
use shootdown::mm::{PhysAddr, VirtAddr};

use crate::memory::FuzzMemory;

/// Where the arena sits (QEMU `virt`'s RAM base) and how big it is: 1 MiB, enough for a couple
/// of hundred anonymous pages plus tables, small enough that running out is part of the game.
pub const ARENA_BASE: u64 = 0x4000_0000;
pub const ARENA_FRAMES: usize = 256;

thread_local! {
    static ARENA: &'static FuzzMemory =
        Box::leak(Box::new(FuzzMemory::new(PhysAddr(ARENA_BASE), ARENA_FRAMES)));
}

/// This thread's arena.
pub fn arena() -> &'static FuzzMemory {
    ARENA.with(|a| *a)
}

/// The host platform over this thread's arena, no CPU TLB (address spaces are never activated
/// on a CPU here, so they never get a CPU ASID and no CPU invalidation is planned).
pub type FuzzPlatform = ArenaPlatform<&'static FuzzMemory>;

thread_local! {
    static PLATFORM: &'static FuzzPlatform = Box::leak(Box::new(ArenaPlatform::new(arena())));
}

/// This thread's platform.
pub fn platform() -> &'static FuzzPlatform {
    PLATFORM.with(|p| *p)
}

/// The model as the driver's register window, shared with the harness (which also needs it for
/// DMA and the checker).
pub struct SharedModel(pub Arc<SmmuModel<'static>>);

impl SmmuBackend for SharedModel {
    fn read32(&self, offset: usize) -> u32 {
        self.0.read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.0.write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        self.0.read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        self.0.write64(offset, value)
    }
}

/// The driver over the model.
pub type FuzzSmmu = Smmu<'static, SharedModel, StepClock>;

/// What the subscribers saw, in order (one log per address space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Start {
        event: NotifyEvent,
        start: u64,
        end: u64,
        blockable: bool,
    },
    End {
        event: NotifyEvent,
        start: u64,
        end: u64,
    },
    /// `arch_invalidate_secondary_tlbs(start, end)` reached the SMMU subscriber.
    Secondary {
        start: u64,
        end: u64,
    },
    Release,
    /// The driver failed an invalidation or a quiesce.
    SmmuError(String),
}

pub type Log = Arc<Mutex<Vec<Seen>>>;

/// The SMMU's subscriber (the role of the SVA binding): every secondary-TLB invalidation of the
/// address space becomes a driver invalidation of its context, and `release` quiesces the
/// context before the tables go.
pub struct SmmuSubscriber {
    pub smmu: Arc<FuzzSmmu>,
    pub ctx: ContextId,
    pub log: Log,
}

impl MmuNotifierOps for SmmuSubscriber {
    fn implemented(&self) -> OpSet {
        OpSet::RELEASE | OpSet::ARCH_INVALIDATE_SECONDARY_TLBS
    }

    fn release(&self, _mm: &MmCore) {
        let mut log = self.log.lock().unwrap();
        log.push(Seen::Release);
        if let Err(e) = self.smmu.quiesce(self.ctx) {
            log.push(Seen::SmmuError(format!("quiesce: {e}")));
        }
    }

    fn arch_invalidate_secondary_tlbs(&self, _mm: &MmCore, start: u64, end: u64) {
        let mut log = self.log.lock().unwrap();
        log.push(Seen::Secondary { start, end });
        if let Err(e) = self
            .smmu
            .invalidate_range(self.ctx, VirtAddr(start), VirtAddr(end))
        {
            log.push(Seen::SmmuError(format!(
                "invalidate_range({start:#x}, {end:#x}): {e}"
            )));
        }
    }
}

/// Records the invalidate_range_start/end protocol (a driver keeping shadow mappings).
pub struct RangeRecorder {
    pub log: Log,
}

impl MmuNotifierOps for RangeRecorder {
    fn implemented(&self) -> OpSet {
        OpSet::INVALIDATE_RANGE_START | OpSet::INVALIDATE_RANGE_END
    }

    fn invalidate_range_start(&self, _mm: &MmCore, r: &NotifierRange) -> Result<(), WouldBlock> {
        self.log.lock().unwrap().push(Seen::Start {
            event: r.event(),
            start: r.start(),
            end: r.end(),
            blockable: r.is_blockable(),
        });
        Ok(())
    }

    fn invalidate_range_end(&self, _mm: &MmCore, r: &NotifierRange) {
        self.log.lock().unwrap().push(Seen::End {
            event: r.event(),
            start: r.start(),
            end: r.end(),
        });
    }
}

/// A subscriber that would have to sleep: it refuses every non-blockable invalidation.
pub struct Refuser;

impl MmuNotifierOps for Refuser {
    fn implemented(&self) -> OpSet {
        OpSet::INVALIDATE_RANGE_START
    }

    fn invalidate_range_start(&self, _mm: &MmCore, r: &NotifierRange) -> Result<(), WouldBlock> {
        if r.is_blockable() {
            Ok(())
        } else {
            Err(WouldBlock)
        }
    }
}
