//! Backend 1 of the SMMUv3 driver: the register window of a real SMMU (QEMU `virt`'s
//! `iommu=smmuv3`), plus the generic-timer clock the driver polls its timeouts with.
//!
//! Register accesses follow Linux's `readl`/`writel` on arm64 (`arch/arm64/include/asm/io.h`),
//! which is what [`SmmuBackend`] promises the driver:
//!
//! * a write is preceded by `DMB OSHST` (`__iowmb()` = `dma_wmb()`): every earlier store to
//!   normal memory — command-queue entries, STEs, CDs, page-table entries — is observable by
//!   the SMMU (outer shareable domain) before it can observe the register write;
//! * a read is followed by `DMB OSHLD` (`__iormb()`, whose dependency trick only strengthens it
//!   for `udelay` timing): no later load from normal memory — event records, the queue entry
//!   an error points at — is satisfied before the register value that announced it.
//!
//! The window is Device-nGnRE (from `ioremap`), so accesses are neither merged nor reordered
//! with each other. 64-bit registers are accessed with single 64-bit accesses, which SMMUv3
//! allows for them (§6.2 "Register access").

use core::arch::asm;

use crate::arch::aarch64::{mmu, timer};
use crate::iommu::backend::{Clock, SmmuBackend};
use crate::iommu::regs::offset;

/// An SMMUv3 register window (pages 0 and 1) mapped as Device memory.
pub struct MmioSmmu {
    base: u64,
}

impl MmioSmmu {
    /// Maps the SMMU registers at physical `pa` (the device tree's `reg`, at least 128 KiB).
    pub fn map(pa: u64, size: u64) -> Result<Self, mmu::KernelMapError> {
        let va = mmu::ioremap(pa, size.max(offset::FRAME_SIZE as u64))?;
        Ok(Self { base: va })
    }

    /// The virtual address of page 0.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn reg(&self, off: usize, size: usize) -> u64 {
        // The driver only uses the architected offsets; anything else is a driver bug that
        // must not turn into a wild access.
        assert!(
            off % size == 0 && off + size <= offset::FRAME_SIZE,
            "SMMU register offset {off:#x} (size {size}) outside the window"
        );
        self.base + off as u64
    }
}

/// `DMB OSHST`: earlier normal-memory stores are observable before later stores.
fn dma_wmb() {
    // SAFETY: a barrier has no effect other than ordering.
    unsafe { asm!("dmb oshst", options(nostack, preserves_flags)) };
}

/// `DMB OSHLD`: earlier loads complete before later loads and stores.
fn dma_rmb() {
    // SAFETY: a barrier has no effect other than ordering.
    unsafe { asm!("dmb oshld", options(nostack, preserves_flags)) };
}

impl SmmuBackend for MmioSmmu {
    fn read32(&self, off: usize) -> u32 {
        let p = self.reg(off, 4) as *const u32;
        // SAFETY: `p` lies in the mapped register window (checked by `reg`), 4-byte aligned.
        let v = unsafe { p.read_volatile() };
        dma_rmb();
        v
    }

    fn write32(&self, off: usize, value: u32) {
        let p = self.reg(off, 4) as *mut u32;
        dma_wmb();
        // SAFETY: as in `read32`; what the write means to the SMMU is the driver's business.
        unsafe { p.write_volatile(value) };
    }

    fn read64(&self, off: usize) -> u64 {
        let p = self.reg(off, 8) as *const u64;
        // SAFETY: `p` lies in the mapped register window (checked by `reg`), 8-byte aligned.
        let v = unsafe { p.read_volatile() };
        dma_rmb();
        v
    }

    fn write64(&self, off: usize, value: u64) {
        let p = self.reg(off, 8) as *mut u64;
        dma_wmb();
        // SAFETY: as in `read64`.
        unsafe { p.write_volatile(value) };
    }
}

/// The driver's clock: the architected counter (CNTPCT_EL0 scaled by CNTFRQ_EL0), which is
/// monotonic and runs on every CPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenericTimerClock;

impl Clock for GenericTimerClock {
    fn now_ns(&self) -> u64 {
        timer::now_ns()
    }
}
