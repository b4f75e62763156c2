//! The DMA API of a device driver: the bus address a device must use for a buffer in RAM, and
//! taking it away again.
//!
//! * **Behind an SMMU** (Linux's dma-iommu): the device's stream is bound to a kernel address
//!   space of its own (its *DMA domain*). [`DmaDomain::map`] takes an IOVA *below the device's
//!   DMA mask* from [`IovaAllocator`], maps the buffer's pages there and returns that IOVA;
//!   [`DmaDomain::unmap`] unmaps them, which reaches the SMMU through the notifier (TLBI +
//!   CMD_SYNC) before it returns, and only then frees the IOVA. A device with a 28-bit mask thus
//!   reaches RAM at any physical address.
//! * **Without an SMMU** (dma-direct): the bus address is the physical address, and a buffer the
//!   mask cannot reach is refused ([`DmaError::BeyondMask`]): there is nothing to remap it with.

use core::fmt;

use crate::arch::aarch64::aspace::{self, CpuMm};
use crate::iommu::iova::{IovaAllocator, IovaError};
use crate::iommu::probe::BoardDomain;
use crate::iommu::sva::{self, Bond, SvaError};
use crate::mm::aspace::{Backing, MmError, MmUser, Placement, USER_END, USER_START};
use crate::mm::pgtable::descriptor::{MemoryType, Permissions, MAIR_VALUE};
use crate::mm::{PhysAddr, VirtAddr, PAGE_SIZE};

const PAGE: u64 = PAGE_SIZE as u64;

/// Which way the device moves the data (what the mapping lets it do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaDirection {
    /// The device reads the buffer.
    ToDevice,
    /// The device writes the buffer.
    FromDevice,
    /// Both.
    Bidirectional,
}

impl DmaDirection {
    fn permissions(self) -> Permissions {
        match self {
            Self::ToDevice => Permissions::KERNEL_RO,
            Self::FromDevice | Self::Bidirectional => Permissions::KERNEL_RW,
        }
    }
}

/// Why a buffer could not be made reachable (or unreachable again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmaError {
    /// No SMMU translates this device, and the buffer lies beyond its DMA mask.
    BeyondMask {
        /// The buffer's last byte.
        last: u64,
        /// The device's mask.
        mask: u64,
    },
    /// A buffer of zero bytes, or one that wraps the address space.
    BadLength {
        /// The buffer's physical address.
        pa: u64,
        /// Its length.
        len: usize,
    },
    /// No IOVA below the mask is left, or the mask leaves none.
    Iova(IovaError),
    /// The domain's page tables refused the mapping.
    Map(MmError),
    /// Binding the stream to its domain failed.
    Bind(SvaError),
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BeyondMask { last, mask } => write!(
                f,
                "dma: no IOMMU translates this device and its DMA mask {mask:#x} does not \
                 reach RAM up to {last:#x}"
            ),
            Self::BadLength { pa, len } => write!(f, "dma: {len} bytes at {pa:#x}"),
            Self::Iova(e) => write!(f, "dma: {e}"),
            Self::Map(e) => write!(f, "dma: mapping the IOVA: {e}"),
            Self::Bind(e) => write!(f, "dma: attaching the stream: {e}"),
        }
    }
}

/// A buffer made reachable: the device uses [`DmaMapping::bus`]. Give it back with
/// [`DmaDomain::unmap`] (dropping it leaves the pages mapped until the domain goes).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "the device keeps reaching the buffer until it is unmapped"]
pub struct DmaMapping {
    bus: u64,
    /// The page-aligned IOVA range, when translated.
    iova: Option<(u64, u64)>,
}

impl DmaMapping {
    /// The address the device must use.
    pub fn bus(&self) -> u64 {
        self.bus
    }
}

/// `[pa, pa + len)` as whole pages: (first page, page-rounded length, offset into it).
fn page_span(pa: PhysAddr, len: usize) -> Result<(PhysAddr, u64, u64), DmaError> {
    let bad = DmaError::BadLength { pa: pa.0, len };
    let end =
        pa.0.checked_add(len as u64)
            .filter(|_| len > 0)
            .ok_or(bad.clone())?;
    let first = pa.0 & !(PAGE - 1);
    let span = end.checked_next_multiple_of(PAGE).ok_or(bad)? - first;
    Ok((PhysAddr(first), span, pa.0 - first))
}

/// A device stream bound to an address space of its own, in which buffers get IOVAs below the
/// device's mask.
pub struct DmaDomain {
    sid: u32,
    /// Dropped after `bond` (field order): the stream is detached before its tables go.
    bond: Option<Bond<BoardDomain>>,
    space: MmUser<CpuMm>,
    iovas: spin::Mutex<IovaAllocator>,
}

impl DmaDomain {
    /// Attaches stream `sid` of the board's SMMU to a fresh domain for a device whose DMA
    /// reaches `mask`. Fails with [`SvaError::NoSmmu`] inside [`DmaError::Bind`] without one.
    pub fn attach(sid: u32, mask: u64) -> Result<Self, DmaError> {
        let iovas = IovaAllocator::new(mask, USER_START, USER_END, PAGE).map_err(DmaError::Iova)?;
        let space = aspace::create().map_err(DmaError::Map)?;
        let root = space.root().ok_or(DmaError::Map(MmError::Exited))?;
        let bond =
            sva::bind::<BoardDomain>(sid, space.mm(), root, MAIR_VALUE).map_err(DmaError::Bind)?;
        Ok(Self {
            sid,
            bond: Some(bond),
            space,
            iovas: spin::Mutex::new(iovas),
        })
    }

    /// The stream this domain translates.
    pub fn sid(&self) -> u32 {
        self.sid
    }

    /// The highest IOVA the domain hands out (the mask, clamped to the address space).
    pub fn limit(&self) -> u64 {
        self.iovas.lock().limit()
    }

    /// Makes `len` bytes at `pa` reachable for the device in direction `dir`.
    pub fn map(&self, pa: PhysAddr, len: usize, dir: DmaDirection) -> Result<DmaMapping, DmaError> {
        let (first, span, offset) = page_span(pa, len)?;
        let iova = self.iovas.lock().alloc(span).map_err(DmaError::Iova)?;
        let mapped = self.space.mmap(
            Placement::Fixed(VirtAddr(iova)),
            span as usize,
            dir.permissions(),
            Backing::Physical(first, MemoryType::Normal),
        );
        if let Err(e) = mapped {
            // Nothing was mapped: the IOVA goes straight back.
            let _ = self.iovas.lock().free(iova, span);
            return Err(DmaError::Map(e));
        }
        Ok(DmaMapping {
            bus: iova + offset,
            iova: Some((iova, span)),
        })
    }

    /// Takes the mapping away: when this returns, the SMMU has dropped every cached
    /// translation of it (the unmap's invalidation completed), and the IOVA is free again.
    pub fn unmap(&self, mapping: DmaMapping) -> Result<(), DmaError> {
        let Some((iova, span)) = mapping.iova else {
            return Ok(());
        };
        self.space
            .munmap(VirtAddr(iova), span as usize)
            .map_err(DmaError::Map)?;
        // Only after the invalidation: a freed IOVA may be handed out again at once.
        self.iovas.lock().free(iova, span).map_err(DmaError::Iova)
    }

    /// Detaches the stream (its traffic aborts again) and frees the domain.
    pub fn detach(mut self) -> Result<(), DmaError> {
        match self.bond.take() {
            Some(b) => b.unbind().map_err(DmaError::Bind),
            None => Ok(()),
        }
    }
}

/// dma-direct: the bus address is the physical one, if the mask reaches the whole buffer.
pub fn map_direct(pa: PhysAddr, len: usize, mask: u64) -> Result<DmaMapping, DmaError> {
    let (_, _, _) = page_span(pa, len)?;
    let last = pa.0 + len as u64 - 1;
    if last & !mask != 0 {
        return Err(DmaError::BeyondMask { last, mask });
    }
    Ok(DmaMapping {
        bus: pa.0,
        iova: None,
    })
}
