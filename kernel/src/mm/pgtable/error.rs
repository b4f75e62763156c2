//! Errors of the page-table engine. Every error leaves the table exactly as it was.

use core::fmt;

use super::descriptor::{AttributeError, Level};
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::phys::OutOfFrames;

/// Why a page-table operation was refused. The table is unchanged whenever one is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageTableError {
    /// The virtual address is not 4 KiB aligned.
    UnalignedVa(VirtAddr),
    /// The physical address is not 4 KiB aligned.
    UnalignedPa(PhysAddr),
    /// The length is not a multiple of 4 KiB.
    UnalignedLength(usize),
    /// The length is zero.
    ZeroLength,
    /// `start + len` does not fit in 64 bits.
    Overflow {
        /// First address of the range.
        start: u64,
        /// Requested length.
        len: usize,
    },
    /// Part of the virtual range lies outside the addresses this table translates.
    VaOutOfRange {
        /// First address of the range.
        start: VirtAddr,
        /// Requested length.
        len: usize,
    },
    /// Part of the physical range lies above what a descriptor can hold (2^48).
    PaOutOfRange(PhysAddr),
    /// `map` would overwrite the existing translation of this address.
    AlreadyMapped(VirtAddr),
    /// `unmap` or `protect` with [`Holes::Reject`](super::Holes::Reject) found this address
    /// unmapped.
    NotMapped(VirtAddr),
    /// `protect` would move this address between EL0 and EL1 ownership; that changes AP\[1\],
    /// which is not a permission-only change, and must be done by unmap and map.
    OwnerChange(VirtAddr),
    /// The attributes cannot be encoded.
    Attributes(AttributeError),
    /// No frame was available for a translation table.
    OutOfFrames,
    /// A table or frame the walk needs is not reachable through the `PhysMemory` in use (the
    /// table is corrupt or the memory accessor does not cover the frame allocator's RAM).
    Unreachable(PhysAddr),
    /// A descriptor holds an encoding this engine never writes.
    Corrupt {
        /// Where the walk found it.
        va: VirtAddr,
        /// The level of the table holding it.
        level: Level,
        /// Its raw bits.
        bits: u64,
    },
}

impl From<OutOfFrames> for PageTableError {
    fn from(_: OutOfFrames) -> Self {
        PageTableError::OutOfFrames
    }
}

impl From<AttributeError> for PageTableError {
    fn from(e: AttributeError) -> Self {
        PageTableError::Attributes(e)
    }
}

impl fmt::Display for PageTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageTableError::UnalignedVa(va) => {
                write!(f, "virtual address {va} is not page aligned")
            }
            PageTableError::UnalignedPa(pa) => {
                write!(f, "physical address {pa} is not page aligned")
            }
            PageTableError::UnalignedLength(len) => {
                write!(f, "length {len:#x} is not a multiple of the page size")
            }
            PageTableError::ZeroLength => f.write_str("zero-length range"),
            PageTableError::Overflow { start, len } => {
                write!(f, "range {start:#x} + {len:#x} overflows the address space")
            }
            PageTableError::VaOutOfRange { start, len } => {
                write!(
                    f,
                    "range {start} + {len:#x} is outside the table's address space"
                )
            }
            PageTableError::PaOutOfRange(pa) => {
                write!(
                    f,
                    "physical range reaches {pa}, beyond the 48-bit output size"
                )
            }
            PageTableError::AlreadyMapped(va) => write!(f, "{va} is already mapped"),
            PageTableError::NotMapped(va) => write!(f, "{va} is not mapped"),
            PageTableError::OwnerChange(va) => {
                write!(
                    f,
                    "protect cannot move {va} between user and kernel ownership"
                )
            }
            PageTableError::Attributes(e) => write!(f, "invalid attributes: {e}"),
            PageTableError::OutOfFrames => f.write_str("out of frames for translation tables"),
            PageTableError::Unreachable(pa) => {
                write!(
                    f,
                    "frame {pa} is not reachable through the physical memory accessor"
                )
            }
            PageTableError::Corrupt { va, level, bits } => {
                write!(
                    f,
                    "reserved descriptor {bits:#018x} at {level} translating {va}"
                )
            }
        }
    }
}
