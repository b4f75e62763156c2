//! The kernel heap: a small one in .bss from the first instruction, grown into RAM once the
//! device tree says where RAM is.

use buddy_system_allocator::LockedHeap;

use crate::board::dt::Range;
use crate::mm::layout;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// Heap available before RAM is known (in .bss).
const EARLY_HEAP: usize = 4 << 20;
#[repr(C, align(4096))]
struct EarlyHeap([u8; EARLY_HEAP]);
static mut EARLY_HEAP_SPACE: EarlyHeap = EarlyHeap([0; EARLY_HEAP]);

/// Hands the .bss heap to the allocator. Call once, on the boot CPU, before any allocation.
pub fn init_early() {
    // SAFETY: the early heap is used by nothing else, and boot calls this once before
    // anything allocates.
    unsafe {
        let start = core::ptr::addr_of_mut!(EARLY_HEAP_SPACE) as usize;
        HEAP.lock().init(start, EARLY_HEAP);
    }
}

/// Grows the heap into a slice of the largest `free` range (1/8 of the `ram_bytes`, at most
/// 64 MiB and half the range) and returns that slice, which the frame allocator must leave
/// alone (empty if there was no room).
///
/// # Safety
/// `free` must be usable RAM that nobody else owns, under the linear map.
pub unsafe fn grow(free: &[Range], ram_bytes: u64) -> Range {
    let Some(largest) = free.iter().copied().max_by_key(|r| r.size) else {
        return Range { base: 0, size: 0 };
    };
    let size = (ram_bytes / 8).min(64 << 20).min(largest.size / 2) & !0xfff;
    if size == 0 {
        return Range { base: 0, size: 0 };
    }
    // SAFETY: the caller's contract: the slice is usable RAM nobody else owns, mapped by the
    // linear map.
    unsafe {
        HEAP.lock().add_to_heap(
            layout::phys_to_virt(largest.base) as usize,
            layout::phys_to_virt(largest.base + size) as usize,
        )
    };
    Range {
        base: largest.base,
        size,
    }
}
