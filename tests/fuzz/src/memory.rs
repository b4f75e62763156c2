//! Physical memory for the address-space target: one arena that holds the page tables, the
//! anonymous frames and the SMMU driver's stream table, queues and context descriptors, so that
//! the SMMU model walks exactly the tables the page-table engine wrote.
//!
//! Its RAM is a [`HeapRam`], as [`TestMemory`](shootdown::mm::fake::TestMemory)'s is; what
//! a fuzzer needs on top:
//!
//! - naturally aligned runs of frames ([`ContiguousFrameAllocator`], for the SMMU driver);
//! - [`FuzzMemory::reset`], because the SMMU driver and the address space's platform need
//!   `'static` memory and one leaked arena per thread is reused for every input;
//! - counters the oracles read: live frames, failed and bad (double or foreign) frees, refused
//!   allocations (so "out of memory" is only accepted when an allocation really failed).
//!
//! Freed frames are filled with [`POISON`], which is a valid-looking block descriptor pointing
//! far outside the arena: a walker (the engine's or the SMMU model's) that follows a freed table
//! reaches unbacked memory and fails loudly, and data read from a freed frame is recognisable.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use shootdown::iommu::backend::ContiguousFrameAllocator;
pub use shootdown::mm::fake::POISON;
use shootdown::mm::heap_ram::HeapRam;
use shootdown::mm::phys::{FrameAllocator, OutOfFrames, PhysMemory};
use shootdown::mm::{PhysAddr, PAGE_SIZE};

const FRAME: u64 = PAGE_SIZE as u64;

/// The arena.
pub struct FuzzMemory {
    ram: HeapRam,
    used: Mutex<Vec<bool>>,
    /// Single-frame allocations still allowed (`usize::MAX`: no limit).
    budget: AtomicUsize,
    refused: AtomicUsize,
    bad_frees: AtomicUsize,
    /// No frame below this index is free (a search hint).
    lowest_free: AtomicUsize,
}

impl FuzzMemory {
    /// `frames` frames of poisoned memory at physical address `base` (page aligned).
    pub fn new(base: PhysAddr, frames: usize) -> Self {
        FuzzMemory {
            ram: HeapRam::new(base, frames, POISON).expect("arena base must be page aligned"),
            used: Mutex::new(vec![false; frames]),
            budget: AtomicUsize::new(usize::MAX),
            refused: AtomicUsize::new(0),
            bad_frees: AtomicUsize::new(0),
            lowest_free: AtomicUsize::new(0),
        }
    }

    /// Back to the state of [`FuzzMemory::new`]: every frame free and poisoned, no budget, zero
    /// counters. Only frames still allocated need re-poisoning (freed ones already are).
    pub fn reset(&self) {
        let mut used = self.used.lock().unwrap();
        for (i, u) in used.iter_mut().enumerate() {
            if *u {
                self.ram.fill_frames(i, 1, POISON);
                *u = false;
            }
        }
        self.budget.store(usize::MAX, Ordering::Relaxed);
        self.refused.store(0, Ordering::Relaxed);
        self.bad_frees.store(0, Ordering::Relaxed);
        self.lowest_free.store(0, Ordering::Relaxed);
    }

    /// The arena's first physical address.
    pub fn base(&self) -> PhysAddr {
        self.ram.base()
    }

    /// One past the arena's last physical address.
    pub fn end(&self) -> PhysAddr {
        self.ram.end()
    }

    /// Number of frames.
    pub fn frames(&self) -> usize {
        self.ram.frames()
    }

    /// Frames allocated now.
    pub fn live_frames(&self) -> usize {
        self.used.lock().unwrap().iter().filter(|u| **u).count()
    }

    /// True if `frame` is an allocated frame of the arena.
    pub fn is_allocated(&self, frame: PhysAddr) -> bool {
        self.ram
            .frame_index(frame)
            .is_some_and(|i| self.used.lock().unwrap()[i])
    }

    /// Allocations refused so far (out of frames or out of budget).
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    /// Frees of frames that were not allocated, or not in the arena.
    pub fn bad_frees(&self) -> usize {
        self.bad_frees.load(Ordering::Relaxed)
    }

    /// Lets only `n` more single-frame allocations succeed (`None`: no limit).
    pub fn set_budget(&self, n: Option<usize>) {
        self.budget
            .store(n.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// The 64-bit word at `pa`, if `pa` is an 8-byte aligned arena address.
    pub fn load(&self, pa: u64) -> Option<u64> {
        self.word(PhysAddr(pa)).map(|w| w.load(Ordering::Acquire))
    }

    fn take_budget(&self) -> bool {
        self.budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| match b {
                usize::MAX => Some(usize::MAX),
                0 => None,
                b => Some(b - 1),
            })
            .is_ok()
    }
}

impl PhysMemory for FuzzMemory {
    fn word(&self, pa: PhysAddr) -> Option<&AtomicU64> {
        self.ram.word(pa)
    }

    fn bytes(&self, pa: PhysAddr, len: usize) -> Option<*mut u8> {
        self.ram.bytes(pa, len)
    }
}

impl FrameAllocator for FuzzMemory {
    fn alloc_zeroed(&self) -> Result<PhysAddr, OutOfFrames> {
        if !self.take_budget() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(OutOfFrames);
        }
        self.alloc_contiguous_zeroed(0)
    }

    fn free(&self, frame: PhysAddr) {
        self.free_contiguous(frame, 0)
    }
}

impl ContiguousFrameAllocator for FuzzMemory {
    fn alloc_contiguous_zeroed(&self, order: u32) -> Result<PhysAddr, OutOfFrames> {
        let Some(count) = 1usize.checked_shl(order) else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(OutOfFrames);
        };
        let mut used = self.used.lock().unwrap();
        let align = count as u64 * FRAME;
        // Lowest first: deterministic, and freed frames are reused at once (a use after free
        // then meets someone else's data). No free frame lies below `lowest_free`.
        let from = self.lowest_free.load(Ordering::Relaxed);
        let found = (from..used.len().saturating_sub(count - 1)).find(|&i| {
            self.ram.frame(i).as_u64() % align == 0 && used[i..i + count].iter().all(|u| !u)
        });
        let Some(first) = found else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(OutOfFrames);
        };
        used[first..first + count]
            .iter_mut()
            .for_each(|u| *u = true);
        if first == from {
            let next = (first..used.len())
                .find(|&i| !used[i])
                .unwrap_or(used.len());
            self.lowest_free.store(next, Ordering::Relaxed);
        }
        drop(used);
        self.ram.fill_frames(first, count, 0);
        Ok(self.ram.frame(first))
    }

    fn free_contiguous(&self, base: PhysAddr, order: u32) {
        let count = 1usize.checked_shl(order).unwrap_or(usize::MAX);
        let mut used = self.used.lock().unwrap();
        let run = self
            .ram
            .frame_index(base)
            .filter(|&i| i.checked_add(count).is_some_and(|end| end <= used.len()));
        match run {
            Some(first) if used[first..first + count].iter().all(|u| *u) => {
                used[first..first + count]
                    .iter_mut()
                    .for_each(|u| *u = false);
                self.lowest_free.fetch_min(first, Ordering::Relaxed);
                drop(used);
                self.ram.fill_frames(first, count, POISON);
            }
            _ => {
                self.bad_frees.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_aligned_runs_tracks_frees_and_resets() {
        let m = FuzzMemory::new(PhysAddr(0x4000_0000), 16);
        let a = m.alloc_zeroed().unwrap();
        assert_eq!(a, PhysAddr(0x4000_0000));
        assert_eq!(m.load(a.as_u64()), Some(0));
        let run = m.alloc_contiguous_zeroed(2).unwrap();
        assert_eq!(run, PhysAddr(0x4000_4000), "4 frames, 16 KiB aligned");
        assert_eq!(m.live_frames(), 5);
        m.free(a);
        assert_eq!(m.load(a.as_u64()), Some(POISON));
        m.free(a);
        m.free_contiguous(PhysAddr(0x4000_1000), 1);
        assert_eq!(
            m.bad_frees(),
            2,
            "double free and free of unallocated frames"
        );
        m.set_budget(Some(1));
        assert!(m.alloc_zeroed().is_ok());
        assert_eq!(m.alloc_zeroed(), Err(OutOfFrames));
        assert_eq!(m.refused(), 1);
        m.reset();
        assert_eq!((m.live_frames(), m.refused(), m.bad_frees()), (0, 0, 0));
        assert_eq!(m.load(run.as_u64()), Some(POISON));
        assert!(m.alloc_zeroed().is_ok(), "reset lifts the budget");
    }
}
