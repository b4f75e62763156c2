//! GICv2 (IHI 0048B): the distributor and the memory-mapped CPU interface (GICC).
//!
//! The interrupts stay in the group reset or firmware gave them: on a GIC without security
//! extensions (QEMU `virt`) that is group 0, which GICC_CTLR.EnableGrp0 signals as IRQ while
//! FIQEn is 0; seen from the Non-secure side of one with them (a Pi's GIC-400 after its
//! firmware), bit 0 of both control registers enables the Non-secure group 1 the firmware put
//! every line in. Linux's `irq-gic.c` writes the same single bit.

use crate::arch::aarch64::io::IoWindow;
use crate::board::dt;

use super::dist::{self, CTLR, ITARGETSR};
use super::{GicError, PRIORITY_MASK};

const GICC_CTLR: usize = 0x00;
const GICC_PMR: usize = 0x04;
const GICC_IAR: usize = 0x0c;
const GICC_EOIR: usize = 0x10;
const ENABLE: u32 = 1;

pub(super) struct GicV2 {
    dist: IoWindow,
    cpu: IoWindow,
    lines: u32,
    /// This CPU interface's bit in GICD_ITARGETSR.
    target: u8,
}

impl GicV2 {
    pub(super) fn init(desc: &dt::Gic) -> Result<Self, GicError> {
        let map = |r: dt::Range| IoWindow::map(r.base, r.size).map_err(GicError::Map);
        let dist = map(desc.distributor)?;
        let cpu = map(desc.cpu_or_redist)?;
        let lines = dist::lines(&dist);
        // GICD_ITARGETSR0-7 (SGIs and PPIs) are banked and read as the reading CPU's own
        // interface bit (IHI 0048B §4.3.12); a uniprocessor GIC may read them as zero.
        let target = (0..32)
            .step_by(4)
            .map(|off| dist.read32(ITARGETSR + off))
            .find(|&w| w != 0)
            .map_or(1, |w| {
                w.to_le_bytes().into_iter().find(|&b| b != 0).unwrap_or(1)
            });
        dist.write32(CTLR, dist.read32(CTLR) | ENABLE);
        cpu.write32(GICC_PMR, u32::from(PRIORITY_MASK));
        cpu.write32(GICC_CTLR, cpu.read32(GICC_CTLR) | ENABLE);
        Ok(Self {
            dist,
            cpu,
            lines,
            target,
        })
    }

    pub(super) fn lines(&self) -> u32 {
        self.lines
    }

    pub(super) fn enable_spi(&self, intid: u32, edge: bool, priority: u8) -> Result<(), GicError> {
        dist::disable(&self.dist, intid);
        dist::configure(&self.dist, intid, edge, priority);
        dist::set_byte(&self.dist, ITARGETSR, intid, self.target);
        dist::enable(&self.dist, intid);
        Ok(())
    }

    pub(super) fn disable(&self, intid: u32) {
        dist::disable(&self.dist, intid);
    }

    /// GICC_IAR: the INTID (bits [9:0]; the CPUID bits are 0 for SPIs), now active.
    pub(super) fn acknowledge(&self) -> u32 {
        self.cpu.read32(GICC_IAR) & 0x3ff
    }

    /// GICC_EOIR: priority drop and deactivation (GICC_CTLR.EOImodeNS = 0).
    pub(super) fn end_of_interrupt(&self, intid: u32) {
        self.cpu.write32(GICC_EOIR, intid);
    }
}
