//! RAM as the kernel sees it: the linear map over all of it, and the frame allocator of the part
//! nothing else owns. The composition root tells this module where RAM is ([`set_ram`], from the
//! device tree), so `mm` never reads the board.

use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::AtomicU64;

use super::frame::{BitmapFrameAllocator, FrameInitError};
use super::layout;
use super::phys::PhysMemory;
use super::PhysAddr;

/// Every RAM range (free or not), as the device tree's `/memory` nodes give it.
static RAM: spin::Once<Vec<Range<PhysAddr>>> = spin::Once::new();

/// Records where RAM is (once, at boot, before the linear map is used).
pub fn set_ram(ram: &[Range<PhysAddr>]) {
    RAM.call_once(|| ram.to_vec());
}

/// Physical memory through the linear map.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinearMap;

impl PhysMemory for LinearMap {
    fn word(&self, pa: PhysAddr) -> Option<&AtomicU64> {
        if !pa.is_aligned(8) || !is_ram(pa.as_u64(), 8) {
            return None;
        }
        // SAFETY: `pa` is RAM, which the linear map covers for the kernel's whole life; the
        // word is 8-byte aligned and only accessed atomically through this reference.
        Some(unsafe { &*(layout::phys_to_virt(pa.as_u64()) as *const AtomicU64) })
    }

    fn bytes(&self, pa: PhysAddr, len: usize) -> Option<*mut u8> {
        is_ram(pa.as_u64(), len as u64).then(|| layout::phys_to_virt(pa.as_u64()) as *mut u8)
    }
}

/// Whether `[pa, pa + len)` lies in one RAM range (nothing is RAM before [`set_ram`]).
fn is_ram(pa: u64, len: u64) -> bool {
    let Some(end) = pa.checked_add(len) else {
        return false;
    };
    RAM.get().is_some_and(|ram| {
        ram.iter()
            .any(|r| pa >= r.start.as_u64() && end <= r.end.as_u64())
    })
}

/// The kernel's physical frame allocator: every usable 4 KiB frame of RAM.
pub type RamFrames = BitmapFrameAllocator<LinearMap>;

static FRAMES: spin::Once<RamFrames> = spin::Once::new();

/// Puts the `free` RAM, except `reserved`, under the frame allocator (once, at boot).
pub fn init_frames(
    free: &[Range<PhysAddr>],
    reserved: &[Range<PhysAddr>],
) -> Result<&'static RamFrames, FrameInitError> {
    let allocator = BitmapFrameAllocator::new(LinearMap, free, reserved)?;
    Ok(FRAMES.call_once(|| allocator))
}

/// The frame allocator, once RAM is managed.
pub fn frames() -> Option<&'static RamFrames> {
    FRAMES.get()
}
