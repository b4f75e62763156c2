//! Backend 1 of the SMMUv3 driver: the register window of a real SMMU (QEMU `virt`'s
//! `iommu=smmuv3`), plus the generic-timer clock the driver polls its timeouts with.
//!
//! Register accesses are Linux's `readl`/`writel` on arm64 ([`IoWindow`]), which is what
//! [`SmmuBackend`] promises the driver: a write is ordered after every earlier store to normal
//! memory (command-queue entries, STEs, CDs, page-table entries), and no later load from normal
//! memory (event records) passes the register read that announced it. 64-bit registers are
//! accessed with single 64-bit accesses, which SMMUv3 allows for them (§6.2 "Register access").

use crate::arch::aarch64::io::IoWindow;
use crate::arch::aarch64::{mmu, timer};
use crate::iommu::backend::{Clock, SmmuBackend};
use crate::iommu::spec::regs::offset;

/// An SMMUv3 register window (pages 0 and 1) mapped as Device memory.
pub struct MmioSmmu {
    regs: IoWindow,
}

impl MmioSmmu {
    /// Maps the SMMU registers at physical `pa` (the device tree's `reg`, at least 128 KiB).
    pub fn map(pa: u64, size: u64) -> Result<Self, mmu::KernelMapError> {
        let regs = IoWindow::map(pa, size.max(offset::FRAME_SIZE as u64))?;
        Ok(Self { regs })
    }

    /// The virtual address of page 0.
    pub fn base(&self) -> u64 {
        self.regs.base()
    }
}

impl SmmuBackend for MmioSmmu {
    fn read32(&self, off: usize) -> u32 {
        self.regs.read32(off)
    }

    fn write32(&self, off: usize, value: u32) {
        self.regs.write32(off, value)
    }

    fn read64(&self, off: usize) -> u64 {
        self.regs.read64(off)
    }

    fn write64(&self, off: usize, value: u64) {
        self.regs.write64(off, value)
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
