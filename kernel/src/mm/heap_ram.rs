//! RAM played by a heap array of words at a physical base address: the memory of every
//! in-memory arena (`mm::fake::TestMemory` for host tests, the SMMU tests' `PhysArena`, the
//! fuzz targets' arena), which differ only in how they hand out frames.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering};

use super::addr::{PhysAddr, PAGE_SIZE};
use super::phys::PhysMemory;

const WORDS_PER_FRAME: usize = PAGE_SIZE / 8;

/// RAM played by a heap array of words at a physical base address.
pub struct HeapRam {
    base: PhysAddr,
    words: Box<[AtomicU64]>,
}

impl HeapRam {
    /// `frames` frames at `base`, every word set to `fill`; `None` if `base` is not page
    /// aligned or the RAM would reach past the top of the address space.
    pub fn new(base: PhysAddr, frames: usize, fill: u64) -> Option<Self> {
        let bytes = u64::try_from(frames).ok()?.checked_mul(PAGE_SIZE as u64)?;
        base.as_u64().checked_add(bytes)?;
        if !base.is_page_aligned() {
            return None;
        }
        let words = (0..frames * WORDS_PER_FRAME)
            .map(|_| AtomicU64::new(fill))
            .collect();
        Some(HeapRam { base, words })
    }

    /// First physical address.
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// One past the last physical address.
    pub fn end(&self) -> PhysAddr {
        PhysAddr(self.base.as_u64() + (self.words.len() * 8) as u64)
    }

    /// Number of frames.
    pub fn frames(&self) -> usize {
        self.words.len() / WORDS_PER_FRAME
    }

    /// The index of the frame at `frame`, if that is a page-aligned address inside.
    pub fn frame_index(&self, frame: PhysAddr) -> Option<usize> {
        if !frame.is_page_aligned() {
            return None;
        }
        let index = self.offset(frame)? / PAGE_SIZE;
        (index < self.frames()).then_some(index)
    }

    /// The address of frame `index`.
    pub fn frame(&self, index: usize) -> PhysAddr {
        PhysAddr(self.base.as_u64() + (index * PAGE_SIZE) as u64)
    }

    /// Sets every word of frames `first..first + count` to `value`.
    pub fn fill_frames(&self, first: usize, count: usize, value: u64) {
        let words = &self.words[first * WORDS_PER_FRAME..(first + count) * WORDS_PER_FRAME];
        for word in words {
            word.store(value, Ordering::Relaxed);
        }
    }

    /// The byte offset of `pa` from the base, if `pa` is not below it.
    fn offset(&self, pa: PhysAddr) -> Option<usize> {
        usize::try_from(pa.as_u64().checked_sub(self.base.as_u64())?).ok()
    }
}

impl PhysMemory for HeapRam {
    #[inline]
    fn word(&self, pa: PhysAddr) -> Option<&AtomicU64> {
        if !pa.is_aligned(8) {
            return None;
        }
        self.words.get(self.offset(pa)? / 8)
    }

    fn bytes(&self, pa: PhysAddr, len: usize) -> Option<*mut u8> {
        let offset = self.offset(pa)?;
        if offset.checked_add(len)? > self.words.len() * 8 {
            return None;
        }
        // Derived from the whole slice, so it may reach every byte of the range; the words
        // are atomics (interior mutability), so writing through it is allowed.
        Some(
            self.words
                .as_ptr()
                .cast::<u8>()
                .cast_mut()
                .wrapping_add(offset),
        )
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn heap_ram_refuses_impossible_shapes() {
        assert!(HeapRam::new(PhysAddr(0x1000), 1, 0).is_some());
        assert!(HeapRam::new(PhysAddr(0x1001), 1, 0).is_none());
        assert_eq!(HeapRam::new(PhysAddr(0x1000), 0, 0).unwrap().frames(), 0);
        assert!(HeapRam::new(PhysAddr(u64::MAX - 0xfff), 1, 0).is_none());
        let ram = HeapRam::new(PhysAddr(0x1000), 2, 7).unwrap();
        assert_eq!(ram.frame_index(PhysAddr(0x2000)), Some(1));
        assert_eq!(ram.frame_index(PhysAddr(0x2008)), None);
        assert_eq!(ram.frame_index(PhysAddr(0x3000)), None);
        assert_eq!(ram.frame(1), PhysAddr(0x2000));
        ram.fill_frames(1, 1, 9);
        assert_eq!(
            ram.word(PhysAddr(0x1ff8)).unwrap().load(Ordering::Relaxed),
            7
        );
        assert_eq!(
            ram.word(PhysAddr(0x2000)).unwrap().load(Ordering::Relaxed),
            9
        );
    }
}
