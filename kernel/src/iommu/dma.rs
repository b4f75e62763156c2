//! The DMA API of a device driver: the bus address a device must use for a buffer in RAM, and
//! taking it away again.
//!
//! * **Behind an SMMU** (Linux's dma-iommu): the device's stream is bound to a kernel address
//!   space of its own (its *DMA domain*). [`DmaDomain::map`] takes an IOVA *below the device's
//!   DMA mask* from [`IovaAllocator`], maps the buffer's pages there and returns that IOVA;
//!   [`DmaDomain::unmap`] unmaps them, which reaches the SMMU through the notifier (TLBI +
//!   CMD_SYNC) before it returns, and only then frees the IOVA. A device with a 28-bit mask thus
//!   reaches RAM at any physical address. A mapping knows the domain that made it: another
//!   domain refuses it ([`DmaError::Foreign`]) and hands it back, as every failed unmap does.
//! * **Without an SMMU** (dma-direct): the bus address is the physical address, and a buffer the
//!   mask cannot reach is refused ([`DmaError::BeyondMask`]): there is nothing to remap it with.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

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
    /// The mapping (at this bus address) was not made by the domain asked to unmap it.
    Foreign {
        /// The mapping's bus address.
        bus: u64,
    },
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
            Self::Foreign { bus } => write!(
                f,
                "dma: the mapping at bus address {bus:#x} belongs to another domain \
                 (or to dma-direct)"
            ),
        }
    }
}

/// An unmap that did not happen: why, and the mapping, handed back still mapped (the device
/// still reaches the buffer) so that the caller can give it to the right domain or retry.
#[derive(Debug, PartialEq, Eq)]
pub struct UnmapError {
    /// Why.
    pub error: DmaError,
    /// The mapping, unchanged.
    pub mapping: DmaMapping,
}

impl fmt::Display for UnmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (still mapped)", self.error)
    }
}

/// Names a domain, so that a mapping knows which one made it (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DomainId(u64);

impl DomainId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        DomainId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Where a translated mapping lives: the domain that made it and its page-aligned IOVA range.
#[derive(Debug, PartialEq, Eq)]
struct Translated {
    domain: DomainId,
    iova: u64,
    span: u64,
}

/// A buffer made reachable: the device uses [`DmaMapping::bus`]. Give it back with
/// [`DmaDomain::unmap`] (dropping it leaves the pages mapped until the domain goes).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "the device keeps reaching the buffer until it is unmapped"]
pub struct DmaMapping {
    bus: u64,
    /// `None` for dma-direct.
    translated: Option<Translated>,
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
    id: DomainId,
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
            id: DomainId::next(),
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
            translated: Some(Translated {
                domain: self.id,
                iova,
                span,
            }),
        })
    }

    /// Takes the mapping away: when this returns `Ok`, the SMMU has dropped every cached
    /// translation of it (the unmap's invalidation completed), and the IOVA is free again. On
    /// an error nothing changed and the mapping comes back in the [`UnmapError`]: one another
    /// domain (or dma-direct) made is [`DmaError::Foreign`].
    pub fn unmap(&self, mapping: DmaMapping) -> Result<(), UnmapError> {
        let (iova, span) = match &mapping.translated {
            Some(t) if t.domain == self.id => (t.iova, t.span),
            _ => {
                let error = DmaError::Foreign { bus: mapping.bus };
                return Err(UnmapError { error, mapping });
            }
        };
        // A failed munmap changed nothing: the mapping is still whole.
        if let Err(e) = self.space.munmap(VirtAddr(iova), span as usize) {
            let error = DmaError::Map(e);
            return Err(UnmapError { error, mapping });
        }
        // Only after the invalidation: a freed IOVA may be handed out again at once. This
        // domain handed out exactly this range, and only this (unique) mapping gives it back.
        if let Err(e) = self.iovas.lock().free(iova, span) {
            log::error!("dma: stream {:#x}: {e} after its unmap", self.sid);
        }
        Ok(())
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
        translated: None,
    })
}
