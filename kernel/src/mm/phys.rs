//! Access to physical memory and physical page frames.
//!
//! Portable code (the page-table walker, the SMMU model, the notifier tests) never dereferences a
//! physical address itself: it asks a [`PhysMemory`]. In the kernel that is the linear map of
//! RAM; on the host it is an in-memory arena that plays "physical memory" in unit tests.

use core::sync::atomic::AtomicU64;

use super::addr::PhysAddr;

/// A physical frame could not be allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfFrames;

impl core::fmt::Display for OutOfFrames {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("out of physical page frames")
    }
}

/// Gives access to physical memory by physical address.
///
/// Page-table entries are accessed as `AtomicU64` because other CPUs and DMA-side walkers (the
/// SMMU, or its model) read them concurrently with updates.
pub trait PhysMemory: Sync {
    /// The 64-bit word at `pa` (8-byte aligned), or `None` if `pa` is not backed by memory this
    /// accessor can reach.
    fn word(&self, pa: PhysAddr) -> Option<&AtomicU64>;

    /// A raw pointer to `len` bytes at `pa`, or `None` if any of them is out of reach.
    fn bytes(&self, pa: PhysAddr, len: usize) -> Option<*mut u8>;
}

/// Hands out and takes back 4 KiB physical page frames.
pub trait FrameAllocator: Sync {
    /// A zeroed, page-aligned frame.
    fn alloc_zeroed(&self) -> Result<PhysAddr, OutOfFrames>;

    /// Returns a frame obtained from [`FrameAllocator::alloc_zeroed`].
    fn free(&self, frame: PhysAddr);
}

// Shared references and `Arc`s to accessors and allocators are accessors and allocators, so
// that page tables and address spaces can hold `&'static KernelMemory` in the kernel and an
// `Arc<TestMemory>` (or a plain borrow) in host tests.

impl<T: PhysMemory + ?Sized> PhysMemory for &T {
    #[inline]
    fn word(&self, pa: PhysAddr) -> Option<&AtomicU64> {
        (**self).word(pa)
    }

    fn bytes(&self, pa: PhysAddr, len: usize) -> Option<*mut u8> {
        (**self).bytes(pa, len)
    }
}

impl<T: PhysMemory + Send + ?Sized> PhysMemory for alloc::sync::Arc<T> {
    #[inline]
    fn word(&self, pa: PhysAddr) -> Option<&AtomicU64> {
        (**self).word(pa)
    }

    fn bytes(&self, pa: PhysAddr, len: usize) -> Option<*mut u8> {
        (**self).bytes(pa, len)
    }
}

impl<T: FrameAllocator + ?Sized> FrameAllocator for &T {
    fn alloc_zeroed(&self) -> Result<PhysAddr, OutOfFrames> {
        (**self).alloc_zeroed()
    }

    fn free(&self, frame: PhysAddr) {
        (**self).free(frame)
    }
}

impl<T: FrameAllocator + Send + ?Sized> FrameAllocator for alloc::sync::Arc<T> {
    fn alloc_zeroed(&self) -> Result<PhysAddr, OutOfFrames> {
        (**self).alloc_zeroed()
    }

    fn free(&self, frame: PhysAddr) {
        (**self).free(frame)
    }
}
