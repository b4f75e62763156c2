//! I/O virtual addresses for a device whose DMA mask cannot reach RAM: page-aligned ranges
//! handed out *below the mask*, top down, as Linux's `drivers/iommu/iova.c` does for dma-iommu
//! (so a 28-bit device gets addresses it can emit, and a 64-bit one keeps low IOVAs free for
//! narrower masters sharing nothing with it).
//!
//! Portable and lock-free by itself: the owner serializes (the DMA domain holds it under a lock).

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

/// Why an IOVA could not be handed out or given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IovaError {
    /// The aperture `[start, mask]` holds fewer than one page.
    ApertureTooSmall {
        /// The device's DMA mask.
        mask: u64,
        /// The lowest IOVA the domain may use.
        start: u64,
    },
    /// A request for zero bytes.
    Empty,
    /// No free range of `len` bytes is left below the mask.
    Exhausted {
        /// The (page-rounded) length asked for.
        len: u64,
        /// The highest usable IOVA.
        limit: u64,
    },
    /// `free` of a range that was not handed out exactly so.
    NotAllocated {
        /// The IOVA given back.
        iova: u64,
        /// Its length.
        len: u64,
    },
}

impl fmt::Display for IovaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ApertureTooSmall { mask, start } => write!(
                f,
                "iova: DMA mask {mask:#x} leaves no page above the domain's first IOVA {start:#x}"
            ),
            Self::Empty => f.write_str("iova: a mapping of 0 bytes"),
            Self::Exhausted { len, limit } => {
                write!(f, "iova: no free {len:#x} bytes at or below {limit:#x}")
            }
            Self::NotAllocated { iova, len } => {
                write!(f, "iova: [{iova:#x}, +{len:#x}) was never handed out")
            }
        }
    }
}

/// Hands out page-aligned IOVA ranges inside `[start, limit]`, highest first.
#[derive(Debug, Clone)]
pub struct IovaAllocator {
    page: u64,
    start: u64,
    /// The last usable byte: the mask, clamped to the address space.
    limit: u64,
    /// Ranges handed out, sorted by start, disjoint.
    used: Vec<Range<u64>>,
}

impl IovaAllocator {
    /// An allocator for a device with DMA `mask`, in a domain whose IOVAs are
    /// `[start, end)`; `page` is the translation granule (a power of two).
    pub fn new(mask: u64, start: u64, end: u64, page: u64) -> Result<Self, IovaError> {
        debug_assert!(page.is_power_of_two());
        let start = start.checked_next_multiple_of(page).unwrap_or(u64::MAX);
        let limit = mask.min(end.saturating_sub(1));
        // One past the highest page that ends at or below `limit` (`limit < u64::MAX`); 0 when
        // the mask is below one page.
        let top_end = (limit + 1) & !(page - 1);
        if top_end < start.saturating_add(page) {
            return Err(IovaError::ApertureTooSmall { mask, start });
        }
        Ok(Self {
            page,
            start,
            limit: top_end - 1,
            used: Vec::new(),
        })
    }

    /// The highest IOVA this allocator can hand out.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// `len` rounded up to whole pages (`None` if that overflows).
    fn pages(&self, len: u64) -> Option<u64> {
        len.checked_next_multiple_of(self.page)
    }

    /// The highest free `len`-byte range (page-rounded); returns its first IOVA.
    pub fn alloc(&mut self, len: u64) -> Result<u64, IovaError> {
        if len == 0 {
            return Err(IovaError::Empty);
        }
        let exhausted = IovaError::Exhausted {
            len,
            limit: self.limit,
        };
        let size = self.pages(len).ok_or(exhausted)?;
        // Walk the gaps from the top: above the last range, then between ranges.
        let mut ceiling = self.limit; // last free byte of the current gap
        for i in (0..=self.used.len()).rev() {
            let floor = match i {
                0 => self.start,
                _ => self.used[i - 1].end,
            };
            if let Some(at) = fit_below(ceiling, floor, size) {
                self.used.insert(i, at..at + size);
                return Ok(at);
            }
            match i.checked_sub(1) {
                Some(prev) if self.used[prev].start > 0 => ceiling = self.used[prev].start - 1,
                _ => break,
            }
        }
        Err(exhausted)
    }

    /// Gives back a range [`IovaAllocator::alloc`] handed out (same IOVA, same length).
    pub fn free(&mut self, iova: u64, len: u64) -> Result<(), IovaError> {
        let wrong = IovaError::NotAllocated { iova, len };
        let size = self.pages(len).ok_or(wrong)?;
        let i = self
            .used
            .binary_search_by_key(&iova, |r| r.start)
            .map_err(|_| wrong)?;
        if self.used[i].end - self.used[i].start != size {
            return Err(wrong);
        }
        self.used.remove(i);
        Ok(())
    }

    /// Ranges currently handed out.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

/// The highest `size`-byte block inside `[floor, ceiling]` (`ceiling` inclusive).
fn fit_below(ceiling: u64, floor: u64, size: u64) -> Option<u64> {
    if ceiling < floor {
        return None;
    }
    let at = ceiling.checked_sub(size - 1)?;
    (at >= floor).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;
    const MASK28: u64 = (1 << 28) - 1;

    fn edu() -> IovaAllocator {
        IovaAllocator::new(MASK28, 0x1_0000, 1 << 48, PAGE).unwrap()
    }

    #[test]
    fn hands_out_pages_below_the_mask_from_the_top() {
        let mut a = edu();
        let x = a.alloc(1).unwrap();
        assert_eq!(x, (1 << 28) - PAGE);
        let y = a.alloc(2 * PAGE + 1).unwrap();
        assert_eq!(y, x - 3 * PAGE);
        assert!(y + 3 * PAGE - 1 <= MASK28 && x + PAGE - 1 <= MASK28);
        assert_eq!(a.in_use(), 2);
    }

    #[test]
    fn a_wide_mask_is_clamped_to_the_address_space() {
        let mut a = IovaAllocator::new(u64::MAX, 0x1_0000, 1 << 48, PAGE).unwrap();
        assert_eq!(a.limit(), (1 << 48) - 1);
        assert_eq!(a.alloc(PAGE).unwrap(), (1 << 48) - PAGE);
    }

    #[test]
    fn a_mask_that_is_not_page_aligned_keeps_every_byte_inside() {
        let mut a = IovaAllocator::new(0x12_3456, 0x1_0000, 1 << 48, PAGE).unwrap();
        let x = a.alloc(PAGE).unwrap();
        assert!(x + PAGE - 1 <= 0x12_3456, "{x:#x}");
        assert_eq!(x % PAGE, 0);
    }

    #[test]
    fn freed_ranges_are_reused_and_holes_are_found() {
        let mut a = edu();
        let x = a.alloc(PAGE).unwrap();
        let y = a.alloc(PAGE).unwrap();
        let z = a.alloc(PAGE).unwrap();
        a.free(y, PAGE).unwrap();
        assert_eq!(a.alloc(PAGE).unwrap(), y, "the hole between x and z");
        a.free(x, PAGE).unwrap();
        assert_eq!(
            a.alloc(2 * PAGE).unwrap(),
            z - 2 * PAGE,
            "too big for x's hole"
        );
        assert_eq!(a.alloc(PAGE).unwrap(), x);
    }

    #[test]
    fn runs_out_with_an_error_naming_the_limit() {
        let mut a = IovaAllocator::new(0x1_ffff, 0x1_0000, 1 << 48, PAGE).unwrap();
        for _ in 0..16 {
            a.alloc(PAGE).unwrap();
        }
        assert_eq!(
            a.alloc(PAGE),
            Err(IovaError::Exhausted {
                len: PAGE,
                limit: 0x1_ffff
            })
        );
        assert!(a.alloc(u64::MAX).is_err());
    }

    #[test]
    fn refuses_bad_requests() {
        let mut a = edu();
        assert_eq!(a.alloc(0), Err(IovaError::Empty));
        let x = a.alloc(2 * PAGE).unwrap();
        assert!(a.free(x, PAGE).is_err(), "wrong length");
        assert!(a.free(x + PAGE, PAGE).is_err(), "not a start");
        assert!(a.free(x, u64::MAX).is_err());
        a.free(x, 2 * PAGE).unwrap();
        assert!(a.free(x, 2 * PAGE).is_err(), "double free");
        assert!(IovaAllocator::new(0xfff, 0x1_0000, 1 << 48, PAGE).is_err());
        assert!(IovaAllocator::new(0x1_0ffe, 0x1_0000, 1 << 48, PAGE).is_err());
        assert!(IovaAllocator::new(0x1_0fff, 0x1_0000, 1 << 48, PAGE).is_ok());
        assert!(IovaAllocator::new(u64::MAX, u64::MAX - 5, u64::MAX, PAGE).is_err());
    }

    /// A mask below one page, in a domain whose IOVAs start at 0: no page fits, so the
    /// allocator must refuse (the highest page's end rounded down to 0 once wrapped to the top
    /// of the address space and handed out IOVAs far beyond the mask).
    #[test]
    fn a_mask_below_one_page_is_refused_from_iova_zero() {
        for mask in [0, 0x7ff, 0xffe] {
            assert_eq!(
                IovaAllocator::new(mask, 0, 1 << 48, PAGE).map(|a| a.limit()),
                Err(IovaError::ApertureTooSmall { mask, start: 0 }),
                "mask {mask:#x}"
            );
        }
        let mut a = IovaAllocator::new(0xfff, 0, 1 << 48, PAGE).unwrap();
        assert_eq!(a.alloc(1), Ok(0));
        assert!(a.alloc(1).is_err());
    }

    #[test]
    fn never_overlaps_under_a_random_mix() {
        let mut a = IovaAllocator::new(0xf_ffff, 0x1_0000, 1 << 48, PAGE).unwrap();
        let mut live: Vec<(u64, u64)> = Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 == 0 && !live.is_empty() {
                let (iova, len) = live.swap_remove((x as usize / 3) % live.len());
                a.free(iova, len).unwrap();
            } else {
                let len = 1 + (x >> 8) % (4 * PAGE);
                if let Ok(iova) = a.alloc(len) {
                    assert!(iova >= 0x1_0000 && iova % PAGE == 0);
                    assert!(iova + len - 1 <= 0xf_ffff);
                    for &(o, ol) in &live {
                        let (e, oe) = (
                            iova + len.next_multiple_of(PAGE),
                            o + ol.next_multiple_of(PAGE),
                        );
                        assert!(
                            e <= o || oe <= iova,
                            "{iova:#x}+{len:#x} overlaps {o:#x}+{ol:#x}"
                        );
                    }
                    live.push((iova, len));
                }
            }
        }
    }
}
