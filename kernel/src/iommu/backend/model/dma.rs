//! A DMA engine behind the SMMU model: a device bound to a StreamID that reads and writes
//! memory by (shared virtual) address.
//!
//! A transfer is split into transactions of `access_size` bytes (naturally aligned, so none
//! crosses a page), each translated by the SMMU model and performed while the model cannot
//! complete a CMD_SYNC (see [`SmmuModel::access`]). QEMU's `edu` device issues 4-byte
//! transactions, which is why a faulting 4 KiB transfer produces about 1024 events there; an
//! engine with `access_size` 4 and [`FaultPolicy::Continue`] reproduces that (faulting reads
//! deliver zeros, faulting writes are dropped, like edu's buffer on QEMU).

use core::fmt;

use super::{SmmuModel, TranslationFault};
use crate::iommu::spec::event::AccessKind;
use crate::iommu::physmem::{self, Unreachable};
use crate::mm::dma::CopyError;
use crate::mm::{PhysAddr, VirtAddr, PAGE_SIZE};

/// What the engine does after a faulting transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPolicy {
    /// Abandon the transfer.
    Stop,
    /// Carry on with the next transaction (reads of faulting transactions return zeros).
    Continue,
}

/// A transfer did not complete cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaError {
    /// At least one transaction faulted in the SMMU.
    Fault {
        /// The first faulting transaction.
        va: VirtAddr,
        access: AccessKind,
        fault: TranslationFault,
        /// Number of faulting transactions (1 with [`FaultPolicy::Stop`]).
        faulted: u64,
        /// Bytes transferred successfully.
        bytes_done: usize,
    },
    /// A translation succeeded but its output address is not backed by memory.
    Bus { va: VirtAddr, pa: PhysAddr },
    /// The transfer runs past the top of the address space.
    AddressOverflow(VirtAddr),
    /// `access_size` is not a power of two in 1..=4096.
    BadAccessSize(usize),
    /// The engine that moves the bytes refused or failed ([`super::master::CopierEngine`]).
    Copy(CopyError),
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fault {
                va,
                access,
                fault,
                faulted,
                bytes_done,
            } => write!(
                f,
                "DMA {access:?} at {va} faulted: {fault} ({faulted} faulting transactions, \
                 {bytes_done} bytes done)"
            ),
            Self::Bus { va, pa } => write!(f, "DMA at {va} reached unbacked {pa}"),
            Self::AddressOverflow(va) => {
                write!(f, "DMA transfer from {va} wraps the address space")
            }
            Self::BadAccessSize(n) => {
                write!(f, "DMA transaction size {n} is not a power of two ≤ 4096")
            }
            Self::Copy(e) => write!(f, "DMA engine: {e}"),
        }
    }
}

/// A device doing DMA through the SMMU model.
pub struct DmaEngine<'a, 'm> {
    smmu: &'a SmmuModel<'m>,
    sid: u32,
    access_size: usize,
    policy: FaultPolicy,
}

impl<'a, 'm> DmaEngine<'a, 'm> {
    /// A device with StreamID `sid` doing page-sized transactions and stopping at a fault.
    pub fn new(smmu: &'a SmmuModel<'m>, sid: u32) -> Self {
        Self {
            smmu,
            sid,
            access_size: PAGE_SIZE,
            policy: FaultPolicy::Stop,
        }
    }

    /// The same device with `size`-byte transactions and the given fault policy.
    pub fn with_transactions(self, size: usize, policy: FaultPolicy) -> Result<Self, DmaError> {
        if !size.is_power_of_two() || size > PAGE_SIZE {
            return Err(DmaError::BadAccessSize(size));
        }
        Ok(Self {
            access_size: size,
            policy,
            ..self
        })
    }

    /// The StreamID.
    pub fn sid(&self) -> u32 {
        self.sid
    }

    /// Bytes per transaction.
    pub fn transaction_size(&self) -> usize {
        self.access_size
    }

    /// Reads `buf.len()` bytes at `va` into `buf`.
    pub fn read(&self, va: VirtAddr, buf: &mut [u8]) -> Result<(), DmaError> {
        let mem = self.smmu.memory();
        self.transfer(va, buf.len(), AccessKind::Read, |off, n, pa| match pa {
            Some(pa) => physmem::read_bytes(mem, pa, &mut buf[off..off + n]),
            None => {
                buf[off..off + n].fill(0);
                Ok(())
            }
        })
    }

    /// Writes `data` at `va`.
    pub fn write(&self, va: VirtAddr, data: &[u8]) -> Result<(), DmaError> {
        let mem = self.smmu.memory();
        self.transfer(va, data.len(), AccessKind::Write, |off, n, pa| match pa {
            Some(pa) => physmem::write_bytes(mem, pa, &data[off..off + n]),
            None => Ok(()),
        })
    }

    /// Translates (and so caches) `va` without moving data.
    pub fn touch(&self, va: VirtAddr, access: AccessKind) -> Result<PhysAddr, TranslationFault> {
        self.smmu.translate(self.sid, va, access).map(|t| t.pa)
    }

    /// Runs the transactions of a transfer; `io(offset, len, Some(pa))` moves data for a
    /// translated transaction, `io(offset, len, None)` handles a faulted one.
    fn transfer(
        &self,
        va: VirtAddr,
        len: usize,
        access: AccessKind,
        mut io: impl FnMut(usize, usize, Option<PhysAddr>) -> Result<(), Unreachable>,
    ) -> Result<(), DmaError> {
        if va.checked_add(len as u64).is_none() {
            return Err(DmaError::AddressOverflow(va));
        }
        let mut off = 0;
        let mut first: Option<(VirtAddr, TranslationFault)> = None;
        let mut faulted = 0;
        let mut bytes_done = 0;
        while off < len {
            let at = VirtAddr(va.as_u64() + off as u64);
            let n = (len - off).min(self.access_size - (at.as_usize() & (self.access_size - 1)));
            let result = self.smmu.access(self.sid, at, access, |pa, _| {
                io(off, n, Some(pa)).map_err(|u| u.0)
            });
            match result {
                Ok(Ok(())) => bytes_done += n,
                Ok(Err(pa)) => return Err(DmaError::Bus { va: at, pa }),
                Err(fault) => {
                    faulted += 1;
                    first.get_or_insert((at, fault));
                    // A faulting transaction moves no data; a read returns zeros.
                    let _ = io(off, n, None);
                    if self.policy == FaultPolicy::Stop {
                        break;
                    }
                }
            }
            off += n;
        }
        match first {
            None => Ok(()),
            Some((va, fault)) => Err(DmaError::Fault {
                va,
                access,
                fault,
                faulted,
                bytes_done,
            }),
        }
    }
}
