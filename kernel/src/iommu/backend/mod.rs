//! What the SMMU driver needs from its surroundings: a register window, a clock and memory for
//! its tables and queues.
//!
//! The driver core ([`crate::iommu::driver`]) is written once against these traits. Backend 1
//! is the MMIO window of a real SMMUv3 (`mmio`, kernel only); backend 2 is the software model
//! ([`model::SmmuModel`]), which is what runs on the Raspberry Pi 4 and in host tests;
//! [`inject`] wraps either to provoke the failures the driver must survive. The in-memory
//! structures (stream table, CDs, queues) live in physical memory that both the CPU and the
//! SMMU reach: the driver writes them through
//! [`crate::mm::phys::PhysMemory`] and allocates them from a [`ContiguousFrameAllocator`].

pub mod inject;
#[cfg(target_os = "none")]
pub mod mmio;
pub mod model;

pub use crate::mm::phys::ContiguousFrameAllocator;

/// Access to the SMMU's register window (pages 0 and 1, see [`crate::iommu::spec::regs`]).
///
/// Offsets are byte offsets from the start of page 0, always naturally aligned for the access
/// size. Accesses must behave like Linux's `readl`/`writel` on a coherent SMMU:
///
/// * a **write** is ordered after every earlier store to normal memory (queue entries, STEs,
///   CDs), so the SMMU sees them once it sees the register change (`dma_wmb()` before the
///   store: `dmb oshst` on arm64);
/// * a **read** is ordered before every later load from normal memory (event records), so
///   data the SMMU wrote before updating the register is seen (`dma_rmb()` after the load).
///
/// The driver additionally issues `Release`/`Acquire` fences around these calls, which is what
/// the software model relies on; an MMIO backend must still emit the device barriers.
pub trait SmmuBackend: Sync {
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32);
    /// Reads the 64-bit register at `offset`.
    fn read64(&self, offset: usize) -> u64;
    /// Writes the 64-bit register at `offset`.
    fn write64(&self, offset: usize, value: u64);
}

impl<T: SmmuBackend + ?Sized> SmmuBackend for &T {
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        (**self).read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        (**self).write64(offset, value)
    }
}

/// A monotonic clock for polling timeouts, so that no wait on the SMMU can hang.
///
/// The kernel implements it with the generic timer (CNTPCT_EL0 scaled by CNTFRQ_EL0); host
/// tests use [`crate::iommu::fake::StepClock`], which advances on every read so that a
/// timeout is reached after a bounded number of polls.
pub trait Clock: Sync {
    /// Nanoseconds since an arbitrary origin; never decreases.
    fn now_ns(&self) -> u64;
}

impl<T: Clock + ?Sized> Clock for &T {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}
