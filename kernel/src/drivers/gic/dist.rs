//! The distributor registers GICv2 and GICv3 share (IHI 0069 §12.9, IHI 0048 §4.3): one SPI's
//! enable, trigger and priority. Offsets are the same in both versions.

use crate::arch::aarch64::io::IoWindow;

use super::{bit, byte, config};

pub(super) const CTLR: usize = 0x0000;
pub(super) const TYPER: usize = 0x0004;
pub(super) const IGROUPR: usize = 0x0080;
pub(super) const ISENABLER: usize = 0x0100;
pub(super) const ICENABLER: usize = 0x0180;
pub(super) const IPRIORITYR: usize = 0x0400;
pub(super) const ITARGETSR: usize = 0x0800;
pub(super) const ICFGR: usize = 0x0c00;

/// INTIDs the distributor implements: 32 * (GICD_TYPER.ITLinesNumber + 1), at most 1020.
pub(super) fn lines(dist: &IoWindow) -> u32 {
    (32 * ((dist.read32(TYPER) & 0x1f) + 1)).min(1020)
}

/// Masks `intid` (GICD_ICENABLER: writing 1 clears the enable; 0s change nothing).
pub(super) fn disable(dist: &IoWindow, intid: u32) {
    let (off, mask) = bit(intid);
    dist.write32(ICENABLER + off, mask);
}

/// Unmasks `intid` (GICD_ISENABLER).
pub(super) fn enable(dist: &IoWindow, intid: u32) {
    let (off, mask) = bit(intid);
    dist.write32(ISENABLER + off, mask);
}

/// Sets the trigger and priority of a disabled `intid` (the trigger of an enabled SPI may not
/// change, IHI 0069 §12.9.9 GICD_ICFGR).
pub(super) fn configure(dist: &IoWindow, intid: u32, edge: bool, priority: u8) {
    let (off, edge_bit) = config(intid);
    let cfg = dist.read32(ICFGR + off);
    dist.write32(
        ICFGR + off,
        if edge {
            cfg | edge_bit
        } else {
            cfg & !edge_bit
        },
    );
    set_byte(dist, IPRIORITYR, intid, priority);
}

/// Writes `intid`'s byte of a byte-per-interrupt bank through its 32-bit word.
pub(super) fn set_byte(dist: &IoWindow, bank: usize, intid: u32, value: u8) {
    let (off, shift) = byte(intid);
    let word = dist.read32(bank + off);
    dist.write32(
        bank + off,
        (word & !(0xff << shift)) | (u32::from(value) << shift),
    );
}

/// Puts `intid` in group `group1` or 0 (GICD_IGROUPR).
pub(super) fn set_group(dist: &IoWindow, intid: u32, group1: bool) {
    let (off, mask) = bit(intid);
    let g = dist.read32(IGROUPR + off);
    dist.write32(IGROUPR + off, if group1 { g | mask } else { g & !mask });
}
