//! A DMA master behind the SMMU model whose bytes a real engine moves.
//!
//! The model translates the master's transactions exactly as it does for
//! [`DmaEngine`](super::dma::DmaEngine)'s (IOTLB, walk cache, page walk, faults and events with
//! the master's StreamID, the coherence checker); a [`PhysCopier`] (on the Pi 4, the BCM2711
//! DMA controller's driver) then moves the bytes between the translated physical addresses and
//! the master's buffer. A stale IOTLB entry therefore makes the engine read or write the old
//! frame, and the data checks see it.
//!
//! * **Transactions** are 4 bytes, naturally aligned: the 32-bit single-beat reads and writes
//!   the BCM DMA makes without bursts or wide accesses, and the size `edu` uses on QEMU `virt`,
//!   so a faulting 4 KiB transfer makes about 1024 events on both boards. A transfer whose
//!   address, buffer or length is not in whole transactions is refused before it is translated.
//! * **One unit**: every transaction of a transfer is translated under one hold of the model
//!   ([`SmmuModel::access_all`]) and the copier runs the whole chain before the model can
//!   complete a CMD_SYNC, as a DMA controller walking its control blocks does.
//! * **Chunks**: consecutive transactions within one page become one chunk (one control block
//!   per page at most); a chunk ends at a page boundary or where the outcome changes.
//! * **Faults** (like `edu`, [`FaultPolicy::Continue`](super::dma::FaultPolicy)): a faulting
//!   read delivers zeros (the engine writes zeros into the buffer), a faulting write is dropped.

use alloc::vec::Vec;

use super::dma::DmaError;
use super::{SmmuModel, Translation, TranslationFault};
use crate::iommu::spec::event::AccessKind;
use crate::mm::dma::{Chunk, CopyError, PhysCopier, Source};
use crate::mm::{PhysAddr, VirtAddr, PAGE_SIZE};

/// A master with a StreamID whose transfers a [`PhysCopier`] carries out.
pub struct CopierEngine<'a, 'm> {
    smmu: &'a SmmuModel<'m>,
    copier: &'a dyn PhysCopier,
    sid: u32,
}

impl<'a, 'm> CopierEngine<'a, 'm> {
    /// Bytes per transaction.
    pub const TRANSACTION: usize = 4;

    /// A master issuing as StreamID `sid`, its bytes moved by `copier`.
    pub fn new(smmu: &'a SmmuModel<'m>, copier: &'a dyn PhysCopier, sid: u32) -> Self {
        Self { smmu, copier, sid }
    }

    /// The StreamID.
    pub fn sid(&self) -> u32 {
        self.sid
    }

    /// What moves the bytes.
    pub fn copier(&self) -> &'a dyn PhysCopier {
        self.copier
    }

    /// Translates (and so caches) `va` without moving data.
    pub fn touch(&self, va: VirtAddr, access: AccessKind) -> Result<PhysAddr, TranslationFault> {
        self.smmu.translate(self.sid, va, access).map(|t| t.pa)
    }

    /// DMA read: `len` bytes at `va` into the buffer at physical `buffer`.
    pub fn read(&self, va: VirtAddr, buffer: PhysAddr, len: usize) -> Result<(), DmaError> {
        self.transfer(va, buffer, len, AccessKind::Read)
    }

    /// DMA write: `len` bytes of the buffer at physical `buffer` to `va`.
    pub fn write(&self, va: VirtAddr, buffer: PhysAddr, len: usize) -> Result<(), DmaError> {
        self.transfer(va, buffer, len, AccessKind::Write)
    }

    fn transfer(
        &self,
        va: VirtAddr,
        buffer: PhysAddr,
        len: usize,
        access: AccessKind,
    ) -> Result<(), DmaError> {
        if va.checked_add(len as u64).is_none() {
            return Err(DmaError::AddressOverflow(va));
        }
        whole_transactions(va, buffer, len)?;
        let transactions = transactions(va, len);
        let vas: Vec<VirtAddr> = transactions.iter().map(|t| t.0).collect();
        self.smmu.access_all(self.sid, &vas, access, |outcomes| {
            let plan = self.plan(&transactions, outcomes, buffer, access)?;
            self.copier.copy(&plan.chunks).map_err(DmaError::Copy)?;
            match plan.first_fault {
                None => Ok(()),
                Some((va, fault)) => Err(DmaError::Fault {
                    va,
                    access,
                    fault,
                    faulted: plan.faulted,
                    bytes_done: plan.bytes_done,
                }),
            }
        })
    }

    /// The chunks that carry out `transactions` given their translations.
    fn plan(
        &self,
        transactions: &[(VirtAddr, usize)],
        outcomes: &[Result<Translation, TranslationFault>],
        buffer: PhysAddr,
        access: AccessKind,
    ) -> Result<Plan, DmaError> {
        let mut plan = Plan::default();
        let mut off = 0u64;
        for (&(at, n), outcome) in transactions.iter().zip(outcomes) {
            let here = PhysAddr(buffer.as_u64() + off);
            let new_page = at.page_offset() == 0;
            let chunk = match (outcome, access) {
                (Ok(t), _) if self.smmu.memory().bytes(t.pa, n).is_none() => {
                    return Err(DmaError::Bus { va: at, pa: t.pa })
                }
                (Ok(t), AccessKind::Read) => Some(Chunk {
                    src: Source::Phys(t.pa),
                    dst: here,
                    len: n,
                }),
                (Ok(t), AccessKind::Write) => Some(Chunk {
                    src: Source::Phys(here),
                    dst: t.pa,
                    len: n,
                }),
                (Err(fault), _) => {
                    plan.faulted += 1;
                    plan.first_fault.get_or_insert((at, *fault));
                    (access == AccessKind::Read).then_some(Chunk {
                        src: Source::Zeros,
                        dst: here,
                        len: n,
                    })
                }
            };
            if outcome.is_ok() {
                plan.bytes_done += n;
            }
            if let Some(c) = chunk {
                push_merged(&mut plan.chunks, c, new_page);
            }
            off += n as u64;
        }
        Ok(plan)
    }
}

/// What a transfer hands the copier, and what the SMMU refused.
#[derive(Default)]
struct Plan {
    chunks: Vec<Chunk>,
    first_fault: Option<(VirtAddr, TranslationFault)>,
    faulted: u64,
    bytes_done: usize,
}

/// Refuses a transfer that is not whole, aligned transactions before the SMMU sees any of it:
/// the engine moves whole words only and would refuse the chunks after their translation
/// (having left events and IOTLB entries for a transfer that did not happen), or carry out
/// the rest when the partial word faulted.
fn whole_transactions(va: VirtAddr, buffer: PhysAddr, len: usize) -> Result<(), DmaError> {
    let unit = CopierEngine::TRANSACTION;
    let misaligned = |v: u64| v % unit as u64 != 0;
    let addr = if misaligned(buffer.as_u64()) {
        buffer.as_u64()
    } else {
        va.as_u64()
    };
    if misaligned(addr) || len % unit != 0 {
        return Err(DmaError::Copy(CopyError::Unaligned {
            addr,
            len,
            align: unit,
        }));
    }
    Ok(())
}

/// The transactions of `len` bytes at `va`: naturally aligned, at most 4 bytes each.
fn transactions(va: VirtAddr, len: usize) -> Vec<(VirtAddr, usize)> {
    let unit = CopierEngine::TRANSACTION;
    let mut out = Vec::with_capacity(len.div_ceil(unit) + 1);
    let mut off = 0;
    while off < len {
        let at = va.as_u64() + off as u64;
        let n = (len - off).min(unit - (at as usize & (unit - 1)));
        out.push((VirtAddr(at), n));
        off += n;
    }
    out
}

/// Appends `c`, extending the last chunk instead when both sides continue it and `c` does not
/// start a new page.
fn push_merged(chunks: &mut Vec<Chunk>, c: Chunk, new_page: bool) {
    if let Some(last) = chunks.last_mut() {
        let dst_follows = last.dst.as_u64() + last.len as u64 == c.dst.as_u64();
        let src_follows = match (last.src, c.src) {
            (Source::Phys(a), Source::Phys(b)) => a.as_u64() + last.len as u64 == b.as_u64(),
            (Source::Zeros, Source::Zeros) => true,
            _ => false,
        };
        if !new_page && dst_follows && src_follows && last.len + c.len <= PAGE_SIZE {
            last.len += c.len;
            return;
        }
    }
    chunks.push(c);
}
