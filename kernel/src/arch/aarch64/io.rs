//! Device register windows: `ioremap` plus accessors with the ordering of Linux's
//! `readl`/`writel` on arm64 (`arch/arm64/include/asm/io.h`):
//!
//! * a write is preceded by `DMB OSHST` (`__iowmb()` = `dma_wmb()`): every earlier store to
//!   normal memory (queue entries, descriptors, page-table entries) is observable by the
//!   device (outer shareable domain) before it can observe the register write;
//! * a read is followed by `DMB OSHLD` (`__iormb()`, whose dependency trick only strengthens it
//!   for `udelay` timing): no later load from normal memory (records the device wrote, the
//!   entry an error points at) is satisfied before the register value that announced it.
//!
//! The window is Device-nGnRE (from `ioremap`), so accesses are neither merged nor reordered
//! with each other. 64-bit registers are accessed with single 64-bit accesses.

use core::arch::asm;

use super::mmu::{self, KernelMapError};

/// A device's registers, mapped for the kernel's life. Every access is bounds- and
/// alignment-checked, so the accessors are safe: an offset outside the window is a driver bug
/// that must not turn into a wild access.
pub struct IoWindow {
    base: u64,
    size: u64,
}

impl IoWindow {
    /// Maps `size` bytes of registers at physical `pa`.
    pub fn map(pa: u64, size: u64) -> Result<Self, KernelMapError> {
        let base = mmu::ioremap(pa, size)?;
        Ok(Self { base, size })
    }

    /// The virtual address of the window's first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn addr(&self, off: usize, size: usize) -> u64 {
        assert!(
            off % size == 0 && (off + size) as u64 <= self.size,
            "register offset {off:#x} (size {size}) outside the {:#x}-byte window",
            self.size
        );
        self.base + off as u64
    }

    /// `readl`: a 32-bit register, then `DMB OSHLD`.
    pub fn read32(&self, off: usize) -> u32 {
        let p = self.addr(off, 4) as *const u32;
        // SAFETY: `p` lies in the mapped window (checked by `addr`), 4-byte aligned.
        let v = unsafe { p.read_volatile() };
        dma_rmb();
        v
    }

    /// `writel`: `DMB OSHST`, then a 32-bit register.
    pub fn write32(&self, off: usize, value: u32) {
        let p = self.addr(off, 4) as *mut u32;
        dma_wmb();
        // SAFETY: as in `read32`; what the write means to the device is its driver's business.
        unsafe { p.write_volatile(value) };
    }

    /// `readq`: a 64-bit register, then `DMB OSHLD`.
    pub fn read64(&self, off: usize) -> u64 {
        let p = self.addr(off, 8) as *const u64;
        // SAFETY: `p` lies in the mapped window (checked by `addr`), 8-byte aligned.
        let v = unsafe { p.read_volatile() };
        dma_rmb();
        v
    }

    /// `writeq`: `DMB OSHST`, then a 64-bit register.
    pub fn write64(&self, off: usize, value: u64) {
        let p = self.addr(off, 8) as *mut u64;
        dma_wmb();
        // SAFETY: as in `read64`.
        unsafe { p.write_volatile(value) };
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
