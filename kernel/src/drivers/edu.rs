//! QEMU's `edu` teaching device (PCI 1234:11e8): a 4 KiB on-device buffer and a DMA engine that
//! copies between it and memory, through the SMMU when one translates the PCIe bus.
//!
//! Register map: QEMU `docs/specs/edu.rst` and `hw/misc/edu.c`: 0x00 identification
//! (0x010000ed), 0x04 liveness (returns the inverse of what was written), 0x80 DMA source,
//! 0x88 DMA destination, 0x90 DMA count, 0x98 DMA command (bit 0 run, bit 1 direction:
//! 1 = device to memory, bit 2 raise an interrupt). The buffer is at device address 0x40000.
//! A transfer starts 100 ms (QEMU virtual clock) after the command is written.

use alloc::vec::Vec;
use core::fmt;

use crate::arch::aarch64::{mmu, timer};

use super::pcie::{Bdf, PciFunction, PcieBus, PcieError};

/// PCI vendor / device ID of `edu`.
pub const VENDOR: u16 = 0x1234;
/// PCI device ID of `edu`.
pub const DEVICE: u16 = 0x11e8;
/// Size of the on-device buffer.
pub const BUFFER_SIZE: usize = 4096;
/// Device address of the on-device buffer.
const BUFFER_ADDR: u64 = 0x40000;
/// What `edu` masks DMA addresses to unless QEMU is told otherwise (`dma_mask` property).
pub const DEFAULT_DMA_MASK: u64 = (1 << 28) - 1;

const REG_ID: usize = 0x00;
const REG_LIVENESS: usize = 0x04;
const REG_DMA_SRC: usize = 0x80;
const REG_DMA_DST: usize = 0x88;
const REG_DMA_COUNT: usize = 0x90;
const REG_DMA_CMD: usize = 0x98;
const DMA_RUN: u64 = 1;
const DMA_TO_MEMORY: u64 = 2;

/// Errors of the `edu` driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EduError {
    /// Finding or setting up the device failed.
    Pcie(PcieError),
    /// The identification register is not `edu`'s.
    BadId(u32),
    /// Buffer offset + length exceed the 4 KiB device buffer, or length is 0.
    BadLength {
        /// Offset into the device buffer.
        offset: usize,
        /// Requested length.
        len: usize,
    },
    /// The bus address does not fit the device's DMA mask.
    AddressBeyondMask {
        /// The address.
        addr: u64,
        /// The device's mask.
        mask: u64,
    },
    /// The transfer did not finish in time.
    Timeout,
    /// A transfer is still running (the device ignores register writes until it is done).
    Busy,
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EduError::Pcie(e) => write!(f, "edu: {e}"),
            EduError::BadId(id) => write!(f, "edu: identification register reads {id:#x}"),
            EduError::BadLength { offset, len } => write!(
                f,
                "edu: {len} bytes at buffer offset {offset} do not fit the 4 KiB buffer"
            ),
            EduError::AddressBeyondMask { addr, mask } => write!(
                f,
                "edu: bus address {addr:#x} is beyond the DMA mask {mask:#x}"
            ),
            EduError::Timeout => f.write_str("edu: DMA did not complete within the timeout"),
            EduError::Busy => f.write_str("edu: a DMA transfer is still running"),
        }
    }
}

/// Which way a transfer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Memory (at a bus address) into the device buffer.
    FromMemory,
    /// The device buffer out to memory.
    ToMemory,
}

/// An `edu` device with BAR0 mapped.
pub struct Edu {
    regs: u64,
    bdf: Bdf,
    dma_mask: u64,
}

impl Edu {
    /// Finds `edu` on the bus (after enumeration assigned its BAR0) and maps its registers.
    /// `dma_mask` is what QEMU was configured with ([`DEFAULT_DMA_MASK`] by default).
    pub fn probe(bus: &mut PcieBus, dma_mask: u64) -> Result<Self, EduError> {
        Self::probe_all(bus, dma_mask)?
            .into_iter()
            .next()
            .ok_or(EduError::Pcie(PcieError::NotFound {
                vendor: VENDOR,
                device: DEVICE,
            }))
    }

    /// Every `edu` on the bus, in bus order (none is not an error).
    pub fn probe_all(bus: &mut PcieBus, dma_mask: u64) -> Result<Vec<Self>, EduError> {
        let functions = bus.enumerate().map_err(EduError::Pcie)?;
        functions
            .iter()
            .filter(|f| f.vendor == VENDOR && f.device == DEVICE)
            .map(|f| Self::from_function(f, dma_mask))
            .collect()
    }

    fn from_function(f: &PciFunction, dma_mask: u64) -> Result<Self, EduError> {
        let bar =
            f.bars
                .iter()
                .find(|b| b.index == 0)
                .ok_or(EduError::Pcie(PcieError::NotFound {
                    vendor: VENDOR,
                    device: DEVICE,
                }))?;
        let regs =
            mmu::ioremap(bar.cpu_addr, bar.size).map_err(|e| EduError::Pcie(PcieError::Map(e)))?;
        let edu = Self {
            regs,
            bdf: f.bdf,
            dma_mask,
        };
        let id = edu.read32(REG_ID);
        if id & 0xff != 0xed {
            return Err(EduError::BadId(id));
        }
        Ok(edu)
    }

    /// Where the device sits (its requester ID is its StreamID).
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// The DMA mask the driver assumes (the device cannot report its own).
    pub fn dma_mask(&self) -> u64 {
        self.dma_mask
    }

    fn read32(&self, off: usize) -> u32 {
        // SAFETY: BAR0 is mapped (Device memory); offsets below 0x80 take 32-bit accesses.
        unsafe { ((self.regs + off as u64) as *const u32).read_volatile() }
    }

    fn write32(&self, off: usize, v: u32) {
        // SAFETY: as above.
        unsafe { ((self.regs + off as u64) as *mut u32).write_volatile(v) }
    }

    fn read64(&self, off: usize) -> u64 {
        // SAFETY: BAR0 is mapped; the DMA registers at 0x80.. take 64-bit accesses.
        unsafe { ((self.regs + off as u64) as *const u64).read_volatile() }
    }

    fn write64(&self, off: usize, v: u64) {
        // SAFETY: as above.
        unsafe { ((self.regs + off as u64) as *mut u64).write_volatile(v) }
    }

    /// The liveness check: the device returns the inverse of what was written.
    pub fn is_alive(&self) -> bool {
        self.write32(REG_LIVENESS, 0x5a5a_1234);
        self.read32(REG_LIVENESS) == !0x5a5a_1234
    }

    /// Copies `len` bytes between bus address `addr` and the device buffer at `offset`, and
    /// waits (polling, at most `timeout_us`) for the engine to finish. What the device sees at
    /// `addr` is up to the IOMMU: a translation fault shows up as an SMMU event, not here.
    pub fn dma(
        &self,
        dir: Direction,
        addr: u64,
        offset: usize,
        len: usize,
        timeout_us: u64,
    ) -> Result<(), EduError> {
        self.start_dma(dir, addr, offset, len)?;
        self.wait_dma(timeout_us)
    }

    /// Starts a transfer like [`Edu::dma`] and returns at once; [`Edu::wait_dma`] waits for
    /// it. QEMU runs the transfer 100 ms (virtual clock) after this call.
    pub fn start_dma(
        &self,
        dir: Direction,
        addr: u64,
        offset: usize,
        len: usize,
    ) -> Result<(), EduError> {
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > BUFFER_SIZE) {
            return Err(EduError::BadLength { offset, len });
        }
        let last = addr
            .checked_add(len as u64 - 1)
            .ok_or(EduError::AddressBeyondMask {
                addr,
                mask: self.dma_mask,
            })?;
        if addr & !self.dma_mask != 0 || last & !self.dma_mask != 0 {
            return Err(EduError::AddressBeyondMask {
                addr,
                mask: self.dma_mask,
            });
        }
        if self.is_busy() {
            return Err(EduError::Busy);
        }
        let dev = BUFFER_ADDR + offset as u64;
        let (src, dst, cmd) = match dir {
            Direction::FromMemory => (addr, dev, DMA_RUN),
            Direction::ToMemory => (dev, addr, DMA_RUN | DMA_TO_MEMORY),
        };
        crate::arch::aarch64::cpu::dsb_sy(); // memory the device reads is written before it starts
        self.write64(REG_DMA_SRC, src);
        self.write64(REG_DMA_DST, dst);
        self.write64(REG_DMA_COUNT, len as u64);
        self.write64(REG_DMA_CMD, cmd);
        Ok(())
    }

    /// True while a transfer runs.
    pub fn is_busy(&self) -> bool {
        self.read64(REG_DMA_CMD) & DMA_RUN != 0
    }

    /// Waits (polling, at most `timeout_us`) until no transfer runs. Each turn opens an
    /// interrupt window: the SMMU's eventq interrupt drains the records this transfer's faults
    /// write while it runs (this driver takes no lock a handler takes).
    pub fn wait_dma(&self, timeout_us: u64) -> Result<(), EduError> {
        let deadline = timer::Deadline::after_us(timeout_us);
        while self.is_busy() {
            if deadline.expired() {
                return Err(EduError::Timeout);
            }
            crate::arch::aarch64::irq::window();
            core::hint::spin_loop();
        }
        crate::arch::aarch64::cpu::dsb_sy(); // what the device wrote is seen after this
        Ok(())
    }
}
