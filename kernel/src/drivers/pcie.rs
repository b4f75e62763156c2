//! A generic ECAM PCIe host bridge (`pci-host-ecam-generic`, QEMU virt's GPEX): enumeration of
//! the root bus, BAR sizing and assignment from the bridge's memory window, and the command
//! register. There is no firmware under `-kernel`, so nothing else assigns BARs.
//!
//! Configuration space layout: PCI Local Bus Specification 3.0, 6.1 "Configuration Space
//! Organization" (Type 0 header); ECAM addressing: PCI Express Base Specification, 7.2.2
//! (`bus << 20 | device << 15 | function << 12 | register`).

use alloc::vec::Vec;
use core::fmt;

use crate::arch::aarch64::mmu;
use crate::board::dt::PcieHost;
pub use crate::board::Bdf;

const VENDOR_ID: u16 = 0x00;
const COMMAND: u16 = 0x04;
const CLASS_REV: u16 = 0x08;
const HEADER_TYPE: u16 = 0x0e;
const BAR0: u16 = 0x10;

/// Command register bits (PCI 3.0, 6.2.2).
const CMD_MEMORY: u32 = 1 << 1;
const CMD_BUS_MASTER: u32 = 1 << 2;

/// Errors from the PCIe layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcieError {
    /// The device tree has no generic ECAM host bridge.
    NoHostBridge,
    /// Mapping configuration space or a BAR failed.
    Map(mmu::KernelMapError),
    /// A BAR does not fit in what is left of the memory window.
    WindowFull {
        /// The BAR's size.
        size: u64,
    },
    /// No such device.
    NotFound {
        /// Vendor ID looked for.
        vendor: u16,
        /// Device ID looked for.
        device: u16,
    },
}

impl fmt::Display for PcieError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PcieError::NoHostBridge => {
                f.write_str("no generic ECAM PCIe host bridge in the device tree")
            }
            PcieError::Map(e) => write!(f, "mapping PCIe space failed: {e:?}"),
            PcieError::WindowFull { size } => {
                write!(f, "a {size:#x}-byte BAR does not fit in the memory window")
            }
            PcieError::NotFound { vendor, device } => {
                write!(f, "no PCI device {vendor:04x}:{device:04x}")
            }
        }
    }
}

/// A memory BAR after assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Index (0..6).
    pub index: u8,
    /// CPU physical address.
    pub cpu_addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A function found on the bus.
#[derive(Debug, Clone)]
pub struct PciFunction {
    /// Where it is.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (class, subclass, prog-if).
    pub class: u32,
    /// Assigned memory BARs.
    pub bars: Vec<Bar>,
}

/// The host bridge with bus 0's configuration space mapped.
pub struct PcieBus {
    ecam_va: u64,
    host: PcieHost,
    next_mem32: u64,
}

impl PcieBus {
    /// Maps bus 0's configuration space of `host`.
    pub fn new(host: &PcieHost) -> Result<Self, PcieError> {
        let ecam_va = mmu::ioremap(host.ecam.base, 1 << 20).map_err(PcieError::Map)?;
        let next = host.mem32.map_or(0, |(_, cpu, _)| cpu);
        Ok(Self {
            ecam_va,
            host: host.clone(),
            next_mem32: next,
        })
    }

    fn cfg_addr(&self, bdf: Bdf, reg: u16) -> *mut u32 {
        (self.ecam_va
            + ((u64::from(bdf.device) << 15)
                | (u64::from(bdf.function) << 12)
                | u64::from(reg & !3))) as *mut u32
    }

    /// Reads a 32-bit configuration register.
    pub fn read32(&self, bdf: Bdf, reg: u16) -> u32 {
        // SAFETY: bus 0's ECAM window is mapped as Device memory; `reg` < 4096 stays inside
        // the function's 4 KiB; configuration reads have no side effects.
        unsafe { self.cfg_addr(bdf, reg).read_volatile() }
    }

    /// Writes a 32-bit configuration register.
    pub fn write32(&self, bdf: Bdf, reg: u16, value: u32) {
        // SAFETY: as in `read32`; the caller decides what the write means to the device.
        unsafe { self.cfg_addr(bdf, reg).write_volatile(value) }
    }

    /// Every function on bus 0, with its memory BARs sized and assigned from the 32-bit window
    /// and memory decoding + bus mastering enabled.
    pub fn enumerate(&mut self) -> Result<Vec<PciFunction>, PcieError> {
        let mut found = Vec::new();
        for device in 0..32u8 {
            for function in 0..8u8 {
                let bdf = Bdf {
                    bus: 0,
                    device,
                    function,
                };
                let id = self.read32(bdf, VENDOR_ID);
                if id & 0xffff == 0xffff {
                    if function == 0 {
                        break; // no device here
                    }
                    continue;
                }
                let header = (self.read32(bdf, HEADER_TYPE & !3) >> 16) & 0xff;
                let mut f = PciFunction {
                    bdf,
                    vendor: id as u16,
                    device: (id >> 16) as u16,
                    class: self.read32(bdf, CLASS_REV) >> 8,
                    bars: Vec::new(),
                };
                if header & 0x7f == 0 {
                    f.bars = self.assign_bars(bdf)?;
                }
                found.push(f);
                if function == 0 && header & 0x80 == 0 {
                    break; // single-function device
                }
            }
        }
        Ok(found)
    }

    /// Sizes each memory BAR (write all-ones, read back the mask: PCI 3.0, 6.2.5.1), assigns it
    /// a naturally aligned address, then turns on memory decoding and bus mastering.
    fn assign_bars(&mut self, bdf: Bdf) -> Result<Vec<Bar>, PcieError> {
        let cmd = self.read32(bdf, COMMAND);
        self.write32(bdf, COMMAND, cmd & !(CMD_MEMORY | CMD_BUS_MASTER)); // no decoding while sizing
        let mut bars = Vec::new();
        let mut i = 0u8;
        while i < 6 {
            let reg = BAR0 + u16::from(i) * 4;
            let orig = self.read32(bdf, reg);
            if orig & 1 != 0 {
                i += 1; // I/O BAR: unused here
                continue;
            }
            let is64 = (orig >> 1) & 3 == 2;
            self.write32(bdf, reg, 0xffff_ffff);
            let lo = self.read32(bdf, reg) & !0xf;
            let mut mask = u64::from(lo);
            if is64 {
                self.write32(bdf, reg + 4, 0xffff_ffff);
                mask |= u64::from(self.read32(bdf, reg + 4)) << 32;
            } else {
                mask |= 0xffff_ffff_0000_0000;
            }
            if lo == 0 {
                self.write32(bdf, reg, orig);
                i += if is64 { 2 } else { 1 };
                continue; // unimplemented BAR
            }
            let size = (!mask).wrapping_add(1);
            let (pci_base, cpu_base, win) =
                self.host.mem32.ok_or(PcieError::WindowFull { size })?;
            let cpu = self
                .next_mem32
                .checked_add(size - 1)
                .ok_or(PcieError::WindowFull { size })?
                & !(size - 1);
            if cpu + size > cpu_base + win {
                return Err(PcieError::WindowFull { size });
            }
            let pci = cpu - cpu_base + pci_base;
            self.write32(bdf, reg, pci as u32 | (orig & 0xf));
            if is64 {
                self.write32(bdf, reg + 4, (pci >> 32) as u32);
            }
            self.next_mem32 = cpu + size;
            bars.push(Bar {
                index: i,
                cpu_addr: cpu,
                size,
            });
            i += if is64 { 2 } else { 1 };
        }
        self.write32(bdf, COMMAND, cmd | CMD_MEMORY | CMD_BUS_MASTER);
        Ok(bars)
    }
}
