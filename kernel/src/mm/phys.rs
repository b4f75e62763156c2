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

    /// A raw pointer to `len` bytes at `pa`, or `None` if any of them is out of reach. The
    /// bytes stay reachable through the pointer for as long as the accessor lives.
    fn bytes(&self, pa: PhysAddr, len: usize) -> Option<*mut u8>;

    /// The `count` consecutive 64-bit words from `pa` (8-byte aligned), or `None` if any of
    /// them is out of reach. Loops over a whole table or frame (zeroing, scanning for a valid
    /// entry) check the range once here instead of once per [`PhysMemory::word`].
    fn words(&self, pa: PhysAddr, count: usize) -> Option<&[AtomicU64]> {
        if !pa.is_aligned(8) {
            return None;
        }
        let p = self.bytes(pa, count.checked_mul(8)?)?;
        if p as usize % core::mem::align_of::<AtomicU64>() != 0 {
            return None;
        }
        // SAFETY: `bytes` vouches for `count * 8` reachable bytes at `p` that live as long as
        // `self`; `p` is aligned for `AtomicU64`, and physical memory is only ever accessed
        // through atomics or raw pointers (interior mutability), never through `&mut`.
        Some(unsafe { core::slice::from_raw_parts(p.cast::<AtomicU64>(), count) })
    }
}

/// Hands out and takes back 4 KiB physical page frames.
pub trait FrameAllocator: Sync {
    /// A zeroed, page-aligned frame.
    fn alloc_zeroed(&self) -> Result<PhysAddr, OutOfFrames>;

    /// Returns a frame obtained from [`FrameAllocator::alloc_zeroed`].
    fn free(&self, frame: PhysAddr);
}

/// A frame allocator that can also hand out naturally aligned runs of frames.
///
/// The SMMU requires a linear stream table and each queue to be aligned to their own size
/// (SMMUv3 §3.3.1 and §6.3.24 SMMU_STRTAB_BASE: "the effective base address is aligned by the
/// SMMU to the table size"; §6.3.26 SMMU_CMDQ_BASE likewise), and a stream table covering 256
/// StreamIDs is already 16 KiB.
pub trait ContiguousFrameAllocator: FrameAllocator {
    /// 2^`order` zeroed, physically contiguous frames, aligned to 2^`order` frames.
    fn alloc_contiguous_zeroed(&self, order: u32) -> Result<PhysAddr, OutOfFrames>;

    /// Returns a run obtained from [`ContiguousFrameAllocator::alloc_contiguous_zeroed`] with
    /// the same `order`.
    fn free_contiguous(&self, base: PhysAddr, order: u32);
}

impl<T: ContiguousFrameAllocator + ?Sized> ContiguousFrameAllocator for &T {
    fn alloc_contiguous_zeroed(&self, order: u32) -> Result<PhysAddr, OutOfFrames> {
        (**self).alloc_contiguous_zeroed(order)
    }

    fn free_contiguous(&self, base: PhysAddr, order: u32) {
        (**self).free_contiguous(base, order)
    }
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
