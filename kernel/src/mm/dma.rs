//! Moving bytes between physical addresses with a device: the seam between whoever decides the
//! addresses (the SMMU model, translating a DMA master's transfer) and whoever moves the bytes
//! (a DMA controller's driver). Nothing here touches hardware: the model calls a
//! [`PhysCopier`], the composition root hands it one a driver implements.
#![forbid(unsafe_code)]

use alloc::string::String;
use core::fmt;

use super::PhysAddr;

/// Where a chunk's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Memory at this physical address.
    Phys(PhysAddr),
    /// Zeros (what a master delivers for a read the IOMMU refused).
    Zeros,
}

/// One run of bytes to move to physical `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub src: Source,
    pub dst: PhysAddr,
    pub len: usize,
}

/// Why a copier refused a request or failed to carry it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyError {
    /// An address or a length is not a multiple of the copier's unit.
    Unaligned { addr: u64, len: usize, align: usize },
    /// One chunk is longer than the engine moves at once.
    TooLong { len: usize, max: usize },
    /// More chunks than the copier can chain in one run.
    TooManyChunks { count: usize, max: usize },
    /// `[pa, pa + len)` is outside what the engine reaches on its bus (`dma-ranges`).
    Unreachable { pa: PhysAddr, len: usize },
    /// The channel is running something else (control/status and control block address).
    Busy { cs: u32, conblk: u32 },
    /// The channel reported an error before this request started; nothing was moved.
    ChannelInError { cs: u32, debug: u32 },
    /// The channel reported an error while moving (status and debug registers).
    Transfer { cs: u32, debug: u32 },
    /// The engine did not finish in time (status register when it gave up).
    Timeout { cs: u32 },
    /// No memory for the engine's descriptors.
    NoMemory,
    /// A failed chain left a channel that would not stop (status register): it may still be
    /// moving bytes and is never used again.
    Wedged { cs: u32 },
}

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Unaligned { addr, len, align } => write!(
                f,
                "{len} bytes at {addr:#x} are not in whole {align}-byte units"
            ),
            Self::TooLong { len, max } => {
                write!(
                    f,
                    "a {len}-byte chunk exceeds the engine's {max}-byte limit"
                )
            }
            Self::TooManyChunks { count, max } => {
                write!(
                    f,
                    "{count} chunks exceed the {max} the engine chains at once"
                )
            }
            Self::Unreachable { pa, len } => write!(
                f,
                "{len} bytes at {pa} are outside the engine's bus window (dma-ranges)"
            ),
            Self::Busy { cs, conblk } => write!(
                f,
                "the channel is busy (CS {cs:#010x}, control block {conblk:#010x})"
            ),
            Self::ChannelInError { cs, debug } => write!(
                f,
                "the channel is in error (CS {cs:#010x}, DEBUG {debug:#010x})"
            ),
            Self::Transfer { cs, debug } => write!(
                f,
                "the transfer failed (CS {cs:#010x}, DEBUG {debug:#010x})"
            ),
            Self::Timeout { cs } => write!(f, "the transfer did not finish (CS {cs:#010x})"),
            Self::NoMemory => f.write_str("no memory for DMA control blocks"),
            Self::Wedged { cs } => write!(
                f,
                "the channel would not stop after a failed transfer (CS {cs:#010x}): taken out of use"
            ),
        }
    }
}

/// Something that moves bytes between physical addresses: a DMA controller's driver.
pub trait PhysCopier: Sync {
    /// Moves every chunk, in order, and returns once the bytes are where the CPUs see them
    /// (the copier does whatever cache maintenance its engine needs). A request the copier
    /// cannot run is refused before anything moves.
    fn copy(&self, chunks: &[Chunk]) -> Result<(), CopyError>;

    /// What moves the bytes, for reports.
    fn name(&self) -> String;

    /// RAM below this address is what the copier reaches (memory it moves must lie there).
    fn reach(&self) -> PhysAddr;
}
