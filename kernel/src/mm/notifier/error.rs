//! Typed errors of the notifier API, with their Linux errno equivalents.

use core::fmt;

use super::alloc::OutOfMemory;
use crate::mm::VirtAddr;

/// A subscriber (or the core on its behalf) refused a non-blockable invalidation because it
/// would have had to sleep (`-EAGAIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WouldBlock;

impl fmt::Display for WouldBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the invalidation would block in a non-blockable context")
    }
}

/// Why an argument was rejected (`-EINVAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidArgument {
    /// A list subscriber implements `arch_invalidate_secondary_tlbs` together with
    /// `invalidate_range_start`/`end`; it must pick one scheme.
    SecondaryTlbsWithRangeCallbacks,
    /// The address space has no live user (`mm_users == 0`): it is being torn down, and a
    /// registration now would never see `release`.
    NoLiveUsers,
    /// An address range with `start >= end`.
    EmptyRange,
    /// `get` on an ops type whose `alloc_notifier` is not implemented.
    NoAllocNotifier,
}

/// What overflowed (`-EOVERFLOW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// An interval of length zero.
    ZeroLength,
    /// `start + length - 1` does not fit in 64 bits.
    IntervalEnd,
    /// The `get` reference count of a subscriber is saturated.
    Users,
}

/// Errors of the notifier API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifierError {
    /// `-EINVAL`.
    InvalidArgument(InvalidArgument),
    /// `-ENOMEM`.
    OutOfMemory,
    /// `-EOVERFLOW`.
    Overflow(Overflow),
    /// `-EAGAIN`.
    WouldBlock,
}

impl NotifierError {
    /// The Linux errno this error stands for (negative, as the kernel returns it).
    pub fn errno(self) -> i32 {
        match self {
            NotifierError::InvalidArgument(_) => -22,
            NotifierError::OutOfMemory => -12,
            NotifierError::Overflow(_) => -75,
            NotifierError::WouldBlock => -11,
        }
    }
}

impl fmt::Display for NotifierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotifierError::InvalidArgument(why) => {
                let why = match why {
                    InvalidArgument::SecondaryTlbsWithRangeCallbacks => {
                        "a subscriber may implement arch_invalidate_secondary_tlbs or \
                         invalidate_range_start/end, not both"
                    }
                    InvalidArgument::NoLiveUsers => "the address space has no live user",
                    InvalidArgument::EmptyRange => "empty address range (start >= end)",
                    InvalidArgument::NoAllocNotifier => {
                        "the ops type does not implement alloc_notifier"
                    }
                };
                write!(f, "invalid argument: {why}")
            }
            NotifierError::OutOfMemory => OutOfMemory.fmt(f),
            NotifierError::Overflow(what) => f.write_str(match what {
                Overflow::ZeroLength => "overflow: interval of length zero",
                Overflow::IntervalEnd => "overflow: interval end beyond the 64-bit address space",
                Overflow::Users => "overflow: subscriber reference count saturated",
            }),
            NotifierError::WouldBlock => WouldBlock.fmt(f),
        }
    }
}

impl From<OutOfMemory> for NotifierError {
    fn from(_: OutOfMemory) -> Self {
        NotifierError::OutOfMemory
    }
}

impl From<WouldBlock> for NotifierError {
    fn from(_: WouldBlock) -> Self {
        NotifierError::WouldBlock
    }
}

impl From<InvalidArgument> for NotifierError {
    fn from(why: InvalidArgument) -> Self {
        NotifierError::InvalidArgument(why)
    }
}

impl From<Overflow> for NotifierError {
    fn from(what: Overflow) -> Self {
        NotifierError::Overflow(what)
    }
}

/// Why a fault that reached an address space through its core was not answered
/// ([`super::MmCore::mark_young`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    /// No address space answers for this core (none was registered, or it was freed).
    NoHandler,
    /// The address space has exited.
    Exited,
    /// Nothing maps the address any more: a re-issued access takes a translation fault.
    NotMapped(VirtAddr),
    /// The address is outside the address space.
    OutOfRange(VirtAddr),
    /// The page tables refused (a corrupt entry: a bug).
    PageTable(VirtAddr),
}

impl fmt::Display for FaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultError::NoHandler => f.write_str("no address space answers faults for this core"),
            FaultError::Exited => f.write_str("the address space has exited"),
            FaultError::NotMapped(va) => write!(f, "{va} is not mapped"),
            FaultError::OutOfRange(va) => write!(f, "{va} is outside the address space"),
            FaultError::PageTable(va) => write!(f, "the page tables refused {va}"),
        }
    }
}
