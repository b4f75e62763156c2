//! Page-aligned, non-empty virtual address ranges.

use core::fmt;

use super::error::PageTableError;
use crate::mm::addr::{VirtAddr, PAGE_SIZE};

/// A half-open range `[start, end)` of virtual addresses, page aligned and never empty.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VaRange {
    start: VirtAddr,
    end: VirtAddr,
}

impl VaRange {
    /// The range of `len` bytes at `start`: page aligned, non-empty, not wrapping around.
    pub fn new(start: VirtAddr, len: usize) -> Result<Self, PageTableError> {
        if !start.is_page_aligned() {
            return Err(PageTableError::UnalignedVa(start));
        }
        if len == 0 {
            return Err(PageTableError::ZeroLength);
        }
        if len % PAGE_SIZE != 0 {
            return Err(PageTableError::UnalignedLength(len));
        }
        let end = start
            .checked_add(len as u64)
            .ok_or(PageTableError::Overflow {
                start: start.as_u64(),
                len,
            })?;
        Ok(VaRange { start, end })
    }

    /// `[start, end)`, or `None` if it is empty, reversed or unaligned.
    pub fn from_bounds(start: VirtAddr, end: VirtAddr) -> Option<Self> {
        (start < end && start.is_page_aligned() && end.is_page_aligned())
            .then_some(VaRange { start, end })
    }

    /// `[start, end)` from raw bounds the caller knows to be page aligned with
    /// `start < end` (chunks of a walk).
    pub(crate) fn between(start: u64, end: u64) -> Self {
        debug_assert!(start < end && start % PAGE_SIZE as u64 == 0 && end % PAGE_SIZE as u64 == 0);
        VaRange {
            start: VirtAddr(start),
            end: VirtAddr(end),
        }
    }

    /// First address in the range.
    pub const fn start(&self) -> VirtAddr {
        self.start
    }

    /// First address after the range.
    pub const fn end(&self) -> VirtAddr {
        self.end
    }

    /// Length in bytes (never zero).
    pub const fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }

    /// Always false: the range is never empty. Present for clippy's `len_without_is_empty`.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Number of 4 KiB pages.
    pub const fn pages(&self) -> u64 {
        self.len() / PAGE_SIZE as u64
    }

    /// True if `va` is inside.
    pub const fn contains(&self, va: VirtAddr) -> bool {
        self.start.0 <= va.0 && va.0 < self.end.0
    }

    /// True if `other` lies entirely inside `self`.
    pub const fn covers(&self, other: &VaRange) -> bool {
        self.start.0 <= other.start.0 && other.end.0 <= self.end.0
    }

    /// The smallest range containing both.
    pub fn hull(&self, other: &VaRange) -> VaRange {
        VaRange {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

impl fmt::Debug for VaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start.0, self.end.0)
    }
}

impl fmt::Display for VaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
