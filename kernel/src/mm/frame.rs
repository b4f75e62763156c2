//! The physical frame allocator: one bit per 4 KiB frame of RAM.
//!
//! The kernel builds it from the device tree's memory ranges minus the reserved ones (kernel
//! image, DTB, boot tables, firmware). A set bit means "in use". Allocation and freeing are
//! lock-free: a frame is claimed by a compare-and-swap on its bitmap word and released by an
//! atomic AND, so any CPU may allocate or free at any time, including from the page-table code
//! that runs under an address space's locks.
//!
//! Ordering: freeing is a Release and allocating an Acquire on the same bitmap word, so
//! whatever the previous owner wrote to a frame happens before the next owner zeroes it.
//!
//! Freeing a frame that is not allocated (double free) or not managed here is detected and
//! leaves the bitmap unchanged: [`FrameBitmap::try_free`] returns the error, the
//! [`FrameAllocator`] implementation (whose `free` cannot fail) counts it in
//! [`BitmapFrameAllocator::bad_frees`] and logs it, like Linux's `bad_page()` report.
//!
//! Runs of 2^order frames aligned to their own size (physically: the SMMU aligns its stream
//! table and queues down to their size, SMMUv3 §6.3.24/§6.3.26) come from
//! [`FrameBitmap::alloc_contiguous`]: first fit over the aligned candidates of each region,
//! claimed word by word with compare-and-swap and rolled back if another CPU got one of the
//! frames first, so single-frame allocations stay lock-free beside it.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crate::mm::addr::{PhysAddr, PAGE_SIZE};
use crate::mm::phys::{ContiguousFrameAllocator, FrameAllocator, OutOfFrames, PhysMemory};
use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const FRAME: u64 = PAGE_SIZE as u64;
const BITS_PER_WORD: usize = 64;

/// The largest run [`FrameBitmap::alloc_contiguous`] hands out: 2^18 frames (1 GiB).
pub const MAX_CONTIGUOUS_ORDER: u32 = 18;

/// Why a frame could not be freed. The bitmap is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The address is not frame aligned.
    Misaligned(PhysAddr),
    /// The frame is not in any RAM range this allocator manages.
    NotManaged(PhysAddr),
    /// The frame is managed but not allocated: a double free.
    NotAllocated(PhysAddr),
    /// A run of 2^order frames is not aligned to its size, or `order` is too large.
    BadRun { base: PhysAddr, order: u32 },
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeError::Misaligned(pa) => write!(f, "freeing unaligned frame address {pa}"),
            FreeError::NotManaged(pa) => write!(f, "freeing frame {pa} that is not managed RAM"),
            FreeError::NotAllocated(pa) => write!(f, "double free of frame {pa}"),
            FreeError::BadRun { base, order } => {
                write!(f, "{base} does not start a run of 2^{order} managed frames")
            }
        }
    }
}

/// The RAM description handed to [`FrameBitmap::new`] is unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameInitError {
    /// A RAM range ends before it starts.
    Reversed(Range<PhysAddr>),
    /// Two RAM ranges overlap.
    Overlap(Range<PhysAddr>, Range<PhysAddr>),
    /// A RAM range is not reachable through the physical memory accessor.
    Unreachable(Range<PhysAddr>),
}

impl fmt::Display for FrameInitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameInitError::Reversed(r) => {
                write!(f, "RAM range {:?}..{:?} is reversed", r.start, r.end)
            }
            FrameInitError::Overlap(a, b) => write!(
                f,
                "RAM ranges {:?}..{:?} and {:?}..{:?} overlap",
                a.start, a.end, b.start, b.end
            ),
            FrameInitError::Unreachable(r) => {
                write!(f, "RAM range {:?}..{:?} is not reachable", r.start, r.end)
            }
        }
    }
}

/// One contiguous run of managed frames, with its slice of the bitmap.
#[derive(Clone, Debug)]
struct Region {
    start: u64,
    frames: usize,
    first_word: usize,
}

impl Region {
    fn end(&self) -> u64 {
        self.start + self.frames as u64 * FRAME
    }

    fn words(&self) -> usize {
        self.frames.div_ceil(BITS_PER_WORD)
    }
}

/// Frame bookkeeping without memory access: which frames of a set of RAM ranges are in use.
pub struct FrameBitmap {
    /// Sorted by start address, disjoint; each begins on a bitmap word.
    regions: Vec<Region>,
    words: Box<[AtomicU64]>,
    free: AtomicUsize,
    total: usize,
    /// Word where the next search starts (the last word something was allocated from).
    hint: AtomicUsize,
}

/// Removes `[cut.start, cut.end)` from every piece.
fn subtract(pieces: Vec<(u64, u64)>, cut: (u64, u64)) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(pieces.len() + 1);
    for (start, end) in pieces {
        if cut.1 <= start || end <= cut.0 {
            out.push((start, end));
            continue;
        }
        if start < cut.0 {
            out.push((start, cut.0));
        }
        if cut.1 < end {
            out.push((cut.1, end));
        }
    }
    out
}

impl FrameBitmap {
    /// Manages the whole frames inside `ram` that do not touch any `reserved` range. RAM
    /// ranges are rounded inwards to frame boundaries, reserved ranges outwards.
    pub fn new(
        ram: &[Range<PhysAddr>],
        reserved: &[Range<PhysAddr>],
    ) -> Result<Self, FrameInitError> {
        let mut sorted: Vec<Range<PhysAddr>> = ram.to_vec();
        sorted.sort_by_key(|r| r.start);
        for r in &sorted {
            if r.end < r.start {
                return Err(FrameInitError::Reversed(r.clone()));
            }
        }
        for pair in sorted.windows(2) {
            if pair[1].start < pair[0].end {
                return Err(FrameInitError::Overlap(pair[0].clone(), pair[1].clone()));
            }
        }

        let mut pieces: Vec<(u64, u64)> = sorted
            .iter()
            .filter_map(|r| {
                let start = r.start.checked_align_up(FRAME)?.as_u64();
                let end = r.end.align_down(FRAME).as_u64();
                (start < end).then_some((start, end))
            })
            .collect();
        for cut in reserved {
            let start = cut.start.align_down(FRAME).as_u64();
            let end = cut
                .end
                .checked_align_up(FRAME)
                .map_or(u64::MAX, |a| a.as_u64());
            if start < end {
                pieces = subtract(pieces, (start, end));
            }
        }
        pieces.sort_unstable();

        let mut regions = Vec::with_capacity(pieces.len());
        let mut first_word = 0;
        let mut total = 0;
        for (start, end) in pieces {
            let frames = ((end - start) / FRAME) as usize;
            let region = Region {
                start,
                frames,
                first_word,
            };
            first_word += region.words();
            total += frames;
            regions.push(region);
        }
        let words: Box<[AtomicU64]> = (0..first_word).map(|_| AtomicU64::new(0)).collect();
        // Bits past the end of each region stand for frames that do not exist: mark them used
        // so that they are never handed out.
        for region in &regions {
            let tail = region.frames % BITS_PER_WORD;
            if tail != 0 {
                let last = region.first_word + region.words() - 1;
                words[last].store(!0u64 << tail, Ordering::Relaxed);
            }
        }
        Ok(FrameBitmap {
            regions,
            words,
            free: AtomicUsize::new(total),
            total,
            hint: AtomicUsize::new(0),
        })
    }

    /// The managed ranges, as `[start, end)` pairs in address order.
    pub fn ranges(&self) -> impl Iterator<Item = Range<PhysAddr>> + '_ {
        self.regions
            .iter()
            .map(|r| PhysAddr(r.start)..PhysAddr(r.end()))
    }

    /// Number of managed frames.
    pub fn total_frames(&self) -> usize {
        self.total
    }

    /// Number of frames not allocated (exact when no allocation or free is in flight).
    pub fn free_frames(&self) -> usize {
        self.free.load(Ordering::Relaxed)
    }

    /// Number of allocated frames (exact when no allocation or free is in flight).
    pub fn used_frames(&self) -> usize {
        self.total - self.free_frames()
    }

    /// Claims a free frame, or `None` if there is none. The frame's contents are whatever the
    /// previous owner left.
    pub fn alloc(&self) -> Option<PhysAddr> {
        let count = self.words.len();
        if count == 0 {
            return None;
        }
        let start = self.hint.load(Ordering::Relaxed) % count;
        for step in 0..count {
            let index = (start + step) % count;
            if let Some(frame) = self.claim_in_word(index, !0) {
                self.hint.store(index, Ordering::Relaxed);
                return Some(frame);
            }
        }
        None
    }

    /// Claims the lowest free frame among the `allowed` bits of bitmap word `index`.
    fn claim_in_word(&self, index: usize, allowed: u64) -> Option<PhysAddr> {
        let word = &self.words[index];
        let mut current = word.load(Ordering::Relaxed);
        while !current & allowed != 0 {
            let bit = (!current & allowed).trailing_zeros();
            match word.compare_exchange_weak(
                current,
                current | (1 << bit),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.free.fetch_sub(1, Ordering::Relaxed);
                    return Some(self.frame_at(index, bit as usize));
                }
                Err(seen) => current = seen,
            }
        }
        None
    }

    /// Claims a free frame lying wholly below `limit` (lowest first), or `None`: for devices
    /// that reach only part of RAM (a DMA controller behind a bus window).
    pub fn alloc_below(&self, limit: PhysAddr) -> Option<PhysAddr> {
        let limit = limit.as_u64();
        for region in self.regions.iter().take_while(|r| r.start < limit) {
            let frames = ((limit.min(region.end()) - region.start) / FRAME) as usize;
            for w in 0..frames.div_ceil(BITS_PER_WORD) {
                let bits = (frames - w * BITS_PER_WORD).min(BITS_PER_WORD);
                let allowed = if bits == BITS_PER_WORD {
                    !0
                } else {
                    (1u64 << bits) - 1
                };
                if let Some(frame) = self.claim_in_word(region.first_word + w, allowed) {
                    return Some(frame);
                }
            }
        }
        None
    }

    /// Releases `frame`. Errors (misaligned, unmanaged, double free) change nothing.
    pub fn try_free(&self, frame: PhysAddr) -> Result<(), FreeError> {
        let (word, mask) = self.locate(frame)?;
        let previous = self.words[word].fetch_and(!mask, Ordering::Release);
        if previous & mask == 0 {
            // The bit was already clear, and clearing it again changed nothing.
            return Err(FreeError::NotAllocated(frame));
        }
        self.free.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether `frame` is allocated, or why the question makes no sense.
    pub fn is_allocated(&self, frame: PhysAddr) -> Result<bool, FreeError> {
        let (word, mask) = self.locate(frame)?;
        Ok(self.words[word].load(Ordering::Relaxed) & mask != 0)
    }

    /// The bitmap word and bit mask of `frame`.
    fn locate(&self, frame: PhysAddr) -> Result<(usize, u64), FreeError> {
        if !frame.is_page_aligned() {
            return Err(FreeError::Misaligned(frame));
        }
        let pa = frame.as_u64();
        // The last region starting at or below `pa`.
        let after = self.regions.partition_point(|r| r.start <= pa);
        let region = match after.checked_sub(1).map(|i| &self.regions[i]) {
            Some(r) if pa < r.end() => r,
            _ => return Err(FreeError::NotManaged(frame)),
        };
        let index = ((pa - region.start) / FRAME) as usize;
        Ok((
            region.first_word + index / BITS_PER_WORD,
            1 << (index % BITS_PER_WORD),
        ))
    }

    /// Claims 2^`order` free frames that are physically contiguous and aligned to 2^`order`
    /// frames (first fit), or returns `None`. Contents as left by previous owners.
    pub fn alloc_contiguous(&self, order: u32) -> Option<PhysAddr> {
        if order == 0 {
            return self.alloc();
        }
        if order > MAX_CONTIGUOUS_ORDER {
            return None;
        }
        let count = 1usize << order;
        let align = FRAME << order;
        for region in &self.regions {
            let Some(mut pa) = region.start.checked_next_multiple_of(align) else {
                continue;
            };
            while pa + count as u64 * FRAME <= region.end() {
                let first = ((pa - region.start) / FRAME) as usize;
                if self.claim_run(region, first, count) {
                    self.free.fetch_sub(count, Ordering::Relaxed);
                    return Some(PhysAddr(pa));
                }
                pa += align;
            }
        }
        None
    }

    /// Releases a run from [`FrameBitmap::alloc_contiguous`] with the same `order`. The whole
    /// run is checked before anything changes: a misaligned, foreign or partly free run is
    /// refused and the bitmap stays as it was.
    pub fn try_free_contiguous(&self, base: PhysAddr, order: u32) -> Result<(), FreeError> {
        if order == 0 {
            return self.try_free(base);
        }
        if order > MAX_CONTIGUOUS_ORDER || !base.is_aligned(FRAME << order) {
            return Err(FreeError::BadRun { base, order });
        }
        let count = 1usize << order;
        let pa = base.as_u64();
        let after = self.regions.partition_point(|r| r.start <= pa);
        let region = match after.checked_sub(1).map(|i| &self.regions[i]) {
            Some(r) if pa < r.end() => r,
            _ => return Err(FreeError::NotManaged(base)),
        };
        if pa + count as u64 * FRAME > region.end() {
            return Err(FreeError::BadRun { base, order });
        }
        let first = ((pa - region.start) / FRAME) as usize;
        let mut missing = None;
        Self::for_each_run_word(first, count, |word, mask| {
            let held = self.words[region.first_word + word].load(Ordering::Relaxed) & mask;
            if held != mask && missing.is_none() {
                let bit = (!held & mask).trailing_zeros() as usize;
                missing = Some(word * BITS_PER_WORD + bit);
            }
            true
        });
        if let Some(index) = missing {
            return Err(FreeError::NotAllocated(PhysAddr(
                region.start + index as u64 * FRAME,
            )));
        }
        self.release_run(region, first, count);
        self.free.fetch_add(count, Ordering::Relaxed);
        Ok(())
    }

    /// Calls `f(word index within the region, mask)` for each bitmap word covering bits
    /// `[first, first + count)` of a region, in order, until it returns false.
    fn for_each_run_word(first: usize, count: usize, mut f: impl FnMut(usize, u64) -> bool) {
        let end = first + count;
        let mut bit = first;
        while bit < end {
            let lo = bit % BITS_PER_WORD;
            let n = (BITS_PER_WORD - lo).min(end - bit);
            let mask = if n == BITS_PER_WORD {
                !0
            } else {
                ((1u64 << n) - 1) << lo
            };
            if !f(bit / BITS_PER_WORD, mask) {
                return;
            }
            bit += n;
        }
    }

    /// Sets bits `[first, first + count)` of `region` if all are clear, all or nothing: each
    /// word is claimed with a compare-and-swap, and a word found partly taken releases the
    /// words claimed before it.
    fn claim_run(&self, region: &Region, first: usize, count: usize) -> bool {
        let mut claimed = 0;
        let mut ok = true;
        Self::for_each_run_word(first, count, |word, mask| {
            let cell = &self.words[region.first_word + word];
            let mut current = cell.load(Ordering::Relaxed);
            loop {
                if current & mask != 0 {
                    ok = false;
                    return false;
                }
                match cell.compare_exchange_weak(
                    current,
                    current | mask,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(seen) => current = seen,
                }
            }
            claimed += mask.count_ones() as usize;
            true
        });
        if !ok && claimed > 0 {
            self.release_run(region, first, claimed);
        }
        ok
    }

    /// Clears bits `[first, first + count)` of `region`.
    fn release_run(&self, region: &Region, first: usize, count: usize) {
        Self::for_each_run_word(first, count, |word, mask| {
            self.words[region.first_word + word].fetch_and(!mask, Ordering::Release);
            true
        });
    }

    /// The frame of bit `bit` in bitmap word `word`.
    fn frame_at(&self, word: usize, bit: usize) -> PhysAddr {
        let after = self.regions.partition_point(|r| r.first_word <= word);
        let region = &self.regions[after - 1];
        let index = (word - region.first_word) * BITS_PER_WORD + bit;
        PhysAddr(region.start + index as u64 * FRAME)
    }
}

/// The kernel's [`FrameAllocator`]: a [`FrameBitmap`] plus the memory accessor used to zero
/// frames before handing them out.
pub struct BitmapFrameAllocator<M: PhysMemory> {
    bitmap: FrameBitmap,
    mem: M,
    bad_frees: AtomicUsize,
}

impl<M: PhysMemory> BitmapFrameAllocator<M> {
    /// Manages `ram` minus `reserved` (see [`FrameBitmap::new`]); every managed frame must be
    /// reachable through `mem`.
    pub fn new(
        mem: M,
        ram: &[Range<PhysAddr>],
        reserved: &[Range<PhysAddr>],
    ) -> Result<Self, FrameInitError> {
        let bitmap = FrameBitmap::new(ram, reserved)?;
        for range in bitmap.ranges() {
            let len = (range.end.as_u64() - range.start.as_u64()) as usize;
            if mem.bytes(range.start, len).is_none() {
                return Err(FrameInitError::Unreachable(range));
            }
        }
        Ok(BitmapFrameAllocator {
            bitmap,
            mem,
            bad_frees: AtomicUsize::new(0),
        })
    }

    /// The bookkeeping (counts, `is_allocated`).
    pub fn bitmap(&self) -> &FrameBitmap {
        &self.bitmap
    }

    /// Frees detected as invalid (double, unaligned or foreign) since boot.
    pub fn bad_frees(&self) -> usize {
        self.bad_frees.load(Ordering::Relaxed)
    }

    /// A zeroed frame lying wholly below `limit` (see [`FrameBitmap::alloc_below`]); give it
    /// back with [`FrameAllocator::free`].
    pub fn alloc_zeroed_below(&self, limit: PhysAddr) -> Result<PhysAddr, OutOfFrames> {
        let frame = self.bitmap.alloc_below(limit).ok_or(OutOfFrames)?;
        if zero_frame(&self.mem, frame).is_err() {
            let _ = self.bitmap.try_free(frame);
            return Err(OutOfFrames);
        }
        Ok(frame)
    }
}

/// Zeroes a frame with word stores: the frame may later be read as page-table entries through
/// `AtomicU64`s, and plain stores through the same accessor keep every access atomic.
pub(crate) fn zero_frame<M: PhysMemory + ?Sized>(
    mem: &M,
    frame: PhysAddr,
) -> Result<(), OutOfFrames> {
    // One reachability check for the frame, not one per word (12k instructions per frame
    // through the kernel's linear map, 1.5k this way: `make bench`, mm.map_unmap).
    let words = mem.words(frame, (FRAME / 8) as usize).ok_or(OutOfFrames)?;
    for w in words {
        w.store(0, Ordering::Relaxed);
    }
    Ok(())
}

impl<M: PhysMemory> ContiguousFrameAllocator for BitmapFrameAllocator<M> {
    fn alloc_contiguous_zeroed(&self, order: u32) -> Result<PhysAddr, OutOfFrames> {
        let base = self.bitmap.alloc_contiguous(order).ok_or(OutOfFrames)?;
        for i in 0..1u64 << order {
            if zero_frame(&self.mem, PhysAddr(base.as_u64() + i * FRAME)).is_err() {
                let _ = self.bitmap.try_free_contiguous(base, order);
                return Err(OutOfFrames);
            }
        }
        Ok(base)
    }

    fn free_contiguous(&self, base: PhysAddr, order: u32) {
        if let Err(e) = self.bitmap.try_free_contiguous(base, order) {
            self.bad_frees.fetch_add(1, Ordering::Relaxed);
            log::error!("frame allocator: {e}");
        }
    }
}

impl<M: PhysMemory> FrameAllocator for BitmapFrameAllocator<M> {
    fn alloc_zeroed(&self) -> Result<PhysAddr, OutOfFrames> {
        let frame = self.bitmap.alloc().ok_or(OutOfFrames)?;
        if zero_frame(&self.mem, frame).is_err() {
            // Checked reachable at construction; a broken accessor loses the frame, not the
            // kernel.
            let _ = self.bitmap.try_free(frame);
            return Err(OutOfFrames);
        }
        Ok(frame)
    }

    fn free(&self, frame: PhysAddr) {
        if let Err(e) = self.bitmap.try_free(frame) {
            self.bad_frees.fetch_add(1, Ordering::Relaxed);
            log::error!("frame allocator: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::fake::TestMemory;
    use std::collections::HashSet;

    fn pa(v: u64) -> PhysAddr {
        PhysAddr(v)
    }

    #[test]
    fn ranges_are_rounded_and_reserved_parts_removed() {
        let ram = [
            pa(0x4000_0800)..pa(0x4010_0000),
            pa(0x8000_0000)..pa(0x8000_3fff),
        ];
        let reserved = [pa(0x4008_0000)..pa(0x4008_0001)];
        let bitmap = FrameBitmap::new(&ram, &reserved).unwrap();
        let ranges: Vec<_> = bitmap.ranges().collect();
        assert_eq!(
            ranges,
            vec![
                pa(0x4000_1000)..pa(0x4008_0000),
                pa(0x4008_1000)..pa(0x4010_0000),
                pa(0x8000_0000)..pa(0x8000_3000),
            ]
        );
        assert_eq!(bitmap.total_frames(), 0x7f + 0x7f + 3);
        assert_eq!(bitmap.free_frames(), bitmap.total_frames());
    }

    #[test]
    fn rejects_overlapping_and_reversed_ram() {
        let overlap = [pa(0x1000)..pa(0x5000), pa(0x4000)..pa(0x9000)];
        assert!(matches!(
            FrameBitmap::new(&overlap, &[]),
            Err(FrameInitError::Overlap(..))
        ));
        let reversed = [pa(0x5000)..pa(0x1000)];
        assert!(matches!(
            FrameBitmap::new(&reversed, &[]),
            Err(FrameInitError::Reversed(_))
        ));
    }

    #[test]
    fn alloc_below_stays_under_the_limit_until_none_is_left() {
        // 70 frames in the first region (a full word and part of one), 3 in the second; the
        // limit cuts the first region after 66 frames.
        let ram = [
            pa(0x10_0000)..pa(0x10_0000 + 70 * FRAME),
            pa(0x20_0000)..pa(0x20_3000),
        ];
        let bitmap = FrameBitmap::new(&ram, &[]).unwrap();
        let limit = pa(0x10_0000 + 66 * FRAME);
        let first = bitmap.alloc().unwrap(); // taken already: skipped
        let mut got = HashSet::new();
        while let Some(frame) = bitmap.alloc_below(limit) {
            assert!(frame.as_u64() + FRAME <= limit.as_u64(), "{frame} crosses the limit");
            assert!(got.insert(frame), "{frame} handed out twice");
        }
        assert_eq!(got.len(), 65);
        assert!(!got.contains(&first));
        assert_eq!(bitmap.free_frames(), 4 + 3, "frames above the limit stay free");
        assert_eq!(bitmap.alloc_below(pa(0x10_0000)), None, "nothing lies below the RAM");
    }

    #[test]
    fn allocates_every_frame_once_then_runs_out() {
        // 70 frames: one full word and a partial one, plus a second region.
        let ram = [
            pa(0x10_0000)..pa(0x10_0000 + 70 * FRAME),
            pa(0x20_0000)..pa(0x20_3000),
        ];
        let bitmap = FrameBitmap::new(&ram, &[]).unwrap();
        let mut seen = HashSet::new();
        while let Some(frame) = bitmap.alloc() {
            assert!(frame.is_page_aligned());
            assert!(
                ram.iter().any(|r| r.start <= frame && frame < r.end),
                "{frame:?}"
            );
            assert!(seen.insert(frame), "frame {frame:?} handed out twice");
        }
        assert_eq!(seen.len(), 73);
        assert_eq!(bitmap.free_frames(), 0);
        assert_eq!(bitmap.used_frames(), 73);
        // Freeing one makes exactly that one available again.
        let back = pa(0x10_0000 + 65 * FRAME);
        bitmap.try_free(back).unwrap();
        assert_eq!(bitmap.alloc(), Some(back));
        assert_eq!(bitmap.alloc(), None);
    }

    #[test]
    fn detects_double_and_foreign_frees() {
        let bitmap = FrameBitmap::new(&[pa(0x1000)..pa(0x5000)], &[]).unwrap();
        let frame = bitmap.alloc().unwrap();
        assert_eq!(bitmap.try_free(frame), Ok(()));
        assert_eq!(bitmap.try_free(frame), Err(FreeError::NotAllocated(frame)));
        assert_eq!(
            bitmap.free_frames(),
            4,
            "a double free must not inflate the count"
        );
        assert_eq!(
            bitmap.try_free(pa(0x1008)),
            Err(FreeError::Misaligned(pa(0x1008)))
        );
        assert_eq!(
            bitmap.try_free(pa(0x9000)),
            Err(FreeError::NotManaged(pa(0x9000)))
        );
        assert_eq!(
            bitmap.try_free(pa(0x0)),
            Err(FreeError::NotManaged(pa(0x0)))
        );
    }

    #[test]
    fn reserved_frames_are_never_handed_out() {
        let reserved = [pa(0x2000)..pa(0x3000)];
        let bitmap = FrameBitmap::new(&[pa(0x1000)..pa(0x4000)], &reserved).unwrap();
        let got: HashSet<_> = core::iter::from_fn(|| bitmap.alloc()).collect();
        assert_eq!(got, HashSet::from([pa(0x1000), pa(0x3000)]));
        assert_eq!(
            bitmap.try_free(pa(0x2000)),
            Err(FreeError::NotManaged(pa(0x2000)))
        );
    }

    #[test]
    fn concurrent_alloc_and_free_never_share_a_frame() {
        let bitmap = FrameBitmap::new(&[pa(0x10_0000)..pa(0x10_0000 + 256 * FRAME)], &[]).unwrap();
        let per_thread: Vec<Vec<PhysAddr>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut kept = Vec::new();
                        for round in 0..200 {
                            if let Some(f) = bitmap.alloc() {
                                if round % 3 == 0 {
                                    bitmap.try_free(f).unwrap();
                                } else {
                                    kept.push(f);
                                }
                            }
                        }
                        kept
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let all: Vec<_> = per_thread.into_iter().flatten().collect();
        let unique: HashSet<_> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "a frame was owned by two threads");
        assert_eq!(bitmap.used_frames(), all.len());
    }

    /// `alloc_below` and `alloc` share the claim loop: raced on the same words, with a limit
    /// that is not frame-aligned, they never hand out a frame twice, `alloc_below` never one
    /// crossing the limit, and between them every frame is claimed.
    #[test]
    fn alloc_below_races_alloc_without_sharing_or_crossing() {
        let ram = [pa(0x10_0000)..pa(0x10_0000 + 200 * FRAME)];
        let bitmap = FrameBitmap::new(&ram, &[]).unwrap();
        let limit = pa(0x10_0000 + 100 * FRAME + 0x800);
        let bitmap = &bitmap;
        let runs: Vec<(bool, Vec<PhysAddr>)> = std::thread::scope(|s| {
            let handles: Vec<_> = [true, false, true, false]
                .into_iter()
                .map(|low| {
                    s.spawn(move || {
                        let next = || match low {
                            true => bitmap.alloc_below(limit),
                            false => bitmap.alloc(),
                        };
                        (low, core::iter::from_fn(next).collect())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let below = runs.iter().filter(|(low, _)| *low).flat_map(|(_, f)| f);
        for f in below {
            assert!(f.as_u64() + FRAME <= limit.as_u64(), "{f} crosses {limit}");
        }
        let all: Vec<_> = runs.into_iter().flat_map(|(_, f)| f).collect();
        let unique: HashSet<_> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "a frame was handed out twice");
        assert_eq!(all.len(), 200, "every frame was claimed");
        assert_eq!(bitmap.free_frames(), 0);
        assert_eq!(bitmap.alloc_below(limit), None);
    }

    #[test]
    fn allocator_zeroes_frames_and_counts_bad_frees() {
        let mem = TestMemory::new(8);
        let ram = [mem.base()..PhysAddr(mem.base().as_u64() + 8 * FRAME)];
        let frames = BitmapFrameAllocator::new(&mem, &ram, &[]).unwrap();
        let frame = frames.alloc_zeroed().unwrap();
        mem.word(PhysAddr(frame.as_u64() + 64))
            .unwrap()
            .store(0x55, Ordering::Relaxed);
        frames.free(frame);
        let again = frames.alloc_zeroed().unwrap();
        assert_eq!(again, frame, "the hint hands back the freed frame first");
        assert_eq!(
            mem.word(PhysAddr(again.as_u64() + 64))
                .unwrap()
                .load(Ordering::Relaxed),
            0
        );
        frames.free(again);
        frames.free(again);
        assert_eq!(frames.bad_frees(), 1);
        assert_eq!(frames.bitmap().used_frames(), 0);
    }

    #[test]
    fn contiguous_runs_are_aligned_disjoint_and_all_or_nothing() {
        // A region starting off any large alignment, with a tail that is not a whole word.
        let start = 0x4000_3000;
        let bitmap = FrameBitmap::new(&[pa(start)..pa(start + 200 * FRAME)], &[]).unwrap();
        let mut runs = Vec::new();
        for order in [3, 0, 2, 5, 1, 4, 6] {
            let base = bitmap.alloc_contiguous(order).unwrap();
            assert!(base.is_aligned(FRAME << order), "{base:?} order {order}");
            assert!(base.as_u64() >= start);
            assert!(base.as_u64() + (FRAME << order) <= start + 200 * FRAME);
            runs.push((base, order));
        }
        let mut frames = HashSet::new();
        for &(base, order) in &runs {
            for i in 0..1u64 << order {
                let f = pa(base.as_u64() + i * FRAME);
                assert!(frames.insert(f), "frame {f:?} in two runs");
                assert_eq!(bitmap.is_allocated(f), Ok(true));
            }
        }
        assert_eq!(bitmap.used_frames(), frames.len());
        // 200 frames cannot hold an aligned run of 256.
        assert_eq!(bitmap.alloc_contiguous(8), None);
        assert_eq!(bitmap.alloc_contiguous(MAX_CONTIGUOUS_ORDER + 1), None);
        for &(base, order) in &runs {
            bitmap.try_free_contiguous(base, order).unwrap();
        }
        assert_eq!(bitmap.used_frames(), 0);
    }

    #[test]
    fn contiguous_allocation_skips_taken_frames_and_rolls_back() {
        let base = 0x10_0000;
        let bitmap = FrameBitmap::new(&[pa(base)..pa(base + 256 * FRAME)], &[]).unwrap();
        // Take frame 70: the aligned 128-frame run at 0 is impossible, the one at 128 is free.
        let mut taken = Vec::new();
        while let Some(f) = bitmap.alloc() {
            taken.push(f);
            if f == pa(base + 70 * FRAME) {
                break;
            }
        }
        for f in taken.iter().filter(|f| **f != pa(base + 70 * FRAME)) {
            bitmap.try_free(*f).unwrap();
        }
        assert_eq!(bitmap.used_frames(), 1);
        let run = bitmap.alloc_contiguous(7).unwrap();
        assert_eq!(run, pa(base + 128 * FRAME));
        // The failed candidate at 0 claimed frames 0..64 before meeting frame 70: rolled back.
        for i in 0..64 {
            assert_eq!(bitmap.is_allocated(pa(base + i * FRAME)), Ok(false));
        }
        assert_eq!(bitmap.used_frames(), 129);
        assert_eq!(bitmap.alloc_contiguous(7), None);
    }

    #[test]
    fn bad_contiguous_frees_change_nothing() {
        let base = 0x20_0000;
        let bitmap = FrameBitmap::new(&[pa(base)..pa(base + 64 * FRAME)], &[]).unwrap();
        let run = bitmap.alloc_contiguous(3).unwrap();
        let used = bitmap.used_frames();
        assert_eq!(
            bitmap.try_free_contiguous(pa(run.as_u64() + FRAME), 3),
            Err(FreeError::BadRun {
                base: pa(run.as_u64() + FRAME),
                order: 3
            })
        );
        // A larger order than allocated: the frames past the run are free, nothing changes.
        assert_eq!(
            bitmap
                .try_free_contiguous(run, 4)
                .map_err(|e| matches!(e, FreeError::NotAllocated(_))),
            Err(true)
        );
        assert_eq!(
            bitmap.try_free_contiguous(pa(0x9000_0000), 1),
            Err(FreeError::NotManaged(pa(0x9000_0000)))
        );
        assert_eq!(
            bitmap.try_free_contiguous(pa(base + 48 * FRAME), 5),
            Err(FreeError::BadRun {
                base: pa(base + 48 * FRAME),
                order: 5
            })
        );
        assert_eq!(bitmap.used_frames(), used);
        bitmap.try_free_contiguous(run, 3).unwrap();
        assert_eq!(
            bitmap.try_free_contiguous(run, 3),
            Err(FreeError::NotAllocated(run))
        );
        assert_eq!(bitmap.used_frames(), 0);
    }

    #[test]
    fn concurrent_runs_and_frames_never_overlap() {
        let bitmap = FrameBitmap::new(&[pa(0x10_0000)..pa(0x10_0000 + 1024 * FRAME)], &[]).unwrap();
        let owned: Vec<Vec<(PhysAddr, u32)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u32)
                .map(|t| {
                    let bitmap = &bitmap;
                    s.spawn(move || {
                        let mut kept = Vec::new();
                        for round in 0..150u32 {
                            let order = (round + t) % 4;
                            if let Some(f) = bitmap.alloc_contiguous(order) {
                                if round % 3 == 0 {
                                    bitmap.try_free_contiguous(f, order).unwrap();
                                } else {
                                    kept.push((f, order));
                                }
                            }
                        }
                        kept
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut frames = HashSet::new();
        let mut count = 0;
        for (base, order) in owned.into_iter().flatten() {
            for i in 0..1u64 << order {
                assert!(frames.insert(base.as_u64() + i * FRAME), "shared frame");
                count += 1;
            }
        }
        assert_eq!(bitmap.used_frames(), count);
    }

    #[test]
    fn contiguous_allocator_zeroes_every_frame() {
        let mem = TestMemory::new(16);
        let ram = [mem.base()..PhysAddr(mem.base().as_u64() + 16 * FRAME)];
        let frames = BitmapFrameAllocator::new(&mem, &ram, &[]).unwrap();
        let run = frames.alloc_contiguous_zeroed(2).unwrap();
        for i in 0..4 * PAGE_SIZE as u64 / 8 {
            let w = mem.word(PhysAddr(run.as_u64() + 8 * i)).unwrap();
            assert_eq!(w.load(Ordering::Relaxed), 0);
            w.store(0x77, Ordering::Relaxed);
        }
        frames.free_contiguous(run, 2);
        frames.free_contiguous(run, 2);
        assert_eq!(frames.bad_frees(), 1);
        assert_eq!(frames.bitmap().used_frames(), 0);
        assert_eq!(frames.alloc_contiguous_zeroed(5), Err(OutOfFrames));
    }

    #[test]
    fn allocator_rejects_unreachable_ram() {
        let mem = TestMemory::new(4);
        let beyond = PhysAddr(mem.base().as_u64() + 4 * FRAME);
        let ram = [mem.base()..PhysAddr(beyond.as_u64() + FRAME)];
        assert!(matches!(
            BitmapFrameAllocator::new(&mem, &ram, &[]),
            Err(FrameInitError::Unreachable(_))
        ));
    }
}
