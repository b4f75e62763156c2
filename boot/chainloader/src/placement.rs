//! Where the kernel goes.
//!
//! The kernel is position independent and its Image header says `text_offset` 0, so any
//! 2 MiB-aligned base in RAM will do (Linux booting.rst section 4: "The Image must be placed
//! text_offset bytes from a 2MB aligned base address anywhere in usable system RAM"). The
//! slot has to hold the kernel's whole footprint (`image_size`, bss included) and, right
//! after it, the copy of the device tree with our boot arguments, and must stay clear of
//! everything still in use while we load and after we jump: the loader itself (it is running),
//! the device tree the firmware gave us (we read it while writing the copy), the low pages
//! (spin tables and boot stubs), `/memreserve/` entries and `/reserved-memory` children.
//!
//! The lowest slot that fits wins, so a small kernel lands just above the loader.

/// A physical address range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    pub base: u64,
    pub size: u64,
}

impl Range {
    pub const fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }

    /// One past the last byte (saturating).
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    pub const fn overlaps(&self, other: &Range) -> bool {
        self.size != 0 && other.size != 0 && self.base < other.end() && other.base < self.end()
    }
}

/// Alignment of the kernel's base (booting.rst: 2 MiB aligned base + `text_offset`).
pub const KERNEL_ALIGN: u64 = 2 << 20;
/// Alignment of the device tree copy (booting.rst: 8 bytes; a page keeps it apart from the
/// kernel's last page).
pub const DTB_ALIGN: u64 = 4096;
/// Low memory never used: the Pi firmware's spin tables (0xd8..0xf8, `raspberrypi/tools`
/// `armstubs/armstub8.S`) and QEMU's boot stub live here; the kernel keeps clear of the same
/// 64 KiB.
pub const LOW_RESERVED: Range = Range::new(0, 0x1_0000);

/// Where the kernel (and the device tree copy) go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The kernel's base address (2 MiB aligned).
    pub kernel: u64,
    /// Where the edited device tree goes (if the boot arguments change), after the kernel's
    /// footprint.
    pub dtb_copy: u64,
    /// Bytes reserved for that copy.
    pub dtb_room: u64,
}

const fn align_up(v: u64, a: u64) -> Option<u64> {
    match v.checked_add(a - 1) {
        Some(x) => Some(x & !(a - 1)),
        None => None,
    }
}

/// Calls `f` with each free gap of RAM, in address order within each RAM range: gaps start
/// `KERNEL_ALIGN`-aligned and avoid every `busy` range. Stops when `f` returns true.
fn for_each_gap(ram: &[Range], busy: &[Range], mut f: impl FnMut(Range) -> bool) {
    for r in ram {
        let Some(mut start) = align_up(r.base, KERNEL_ALIGN) else {
            continue;
        };
        while start < r.end() {
            // The lowest busy range reaching into [start, end).
            let blocker = busy
                .iter()
                .filter(|b| b.size != 0 && b.end() > start && b.base < r.end())
                .min_by_key(|b| b.base);
            let gap_end = blocker.map_or(r.end(), |b| b.base.max(start));
            if gap_end > start && f(Range::new(start, gap_end - start)) {
                return;
            }
            let Some(b) = blocker else { break };
            match align_up(b.end(), KERNEL_ALIGN) {
                Some(next) => start = next,
                None => break,
            }
        }
    }
}

/// The lowest slot for a kernel of `footprint` bytes followed by `dtb_room` bytes of device
/// tree copy. On failure, the largest footprint that would have fit (with the same room).
pub fn plan(
    ram: &[Range],
    busy: &[Range],
    footprint: u64,
    dtb_room: u64,
) -> Result<Placement, u64> {
    let need = align_up(footprint, DTB_ALIGN)
        .and_then(|k| k.checked_add(dtb_room))
        .ok_or(0u64)?;
    let mut found = None;
    for_each_gap(ram, busy, |gap| {
        if gap.size >= need {
            found = Some(gap.base);
            true
        } else {
            false
        }
    });
    match found {
        Some(kernel) => Ok(Placement {
            kernel,
            // `need` fit, so this cannot overflow.
            dtb_copy: kernel + (need - dtb_room),
            dtb_room,
        }),
        None => Err(largest(ram, busy, dtb_room)),
    }
}

/// The largest kernel footprint any slot can take, leaving `dtb_room` after it.
pub fn largest(ram: &[Range], busy: &[Range], dtb_room: u64) -> u64 {
    let mut best = 0;
    for_each_gap(ram, busy, |gap| {
        // The kernel's footprint is rounded up to DTB_ALIGN before the copy.
        let room = gap.size.saturating_sub(dtb_room) & !(DTB_ALIGN - 1);
        best = best.max(room);
        false
    });
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// The Pi 4 as QEMU raspi4b shows it: RAM from 0 to 960 MiB, loader at 2 MiB, tree just
    /// after it, low 64 KiB reserved.
    fn pi() -> (Vec<Range>, Vec<Range>) {
        let ram = vec![Range::new(0, 960 * MIB)];
        let busy = vec![
            LOW_RESERVED,
            Range::new(0x20_0000, 0x1_8000),
            Range::new(0x21_8000, 0x7000),
        ];
        (ram, busy)
    }

    #[test]
    fn a_small_kernel_goes_to_the_first_free_2mib_slot() {
        let (ram, busy) = pi();
        let p = plan(&ram, &busy, 0x5_0123, 0x8000).unwrap();
        assert_eq!(p.kernel, 4 * MIB);
        assert_eq!(p.dtb_copy, 4 * MIB + 0x5_1000);
        assert_eq!(p.dtb_room, 0x8000);
        // No byte of the slot overlaps anything busy.
        let slot = Range::new(p.kernel, p.dtb_copy + p.dtb_room - p.kernel);
        assert!(busy.iter().all(|b| !b.overlaps(&slot)));
    }

    #[test]
    fn busy_ranges_anywhere_push_the_slot_up() {
        let ram = vec![Range::new(0, 64 * MIB)];
        // The tree sits at 5 MiB: slots at 2 and 4 MiB are too small for 3 MiB.
        let busy = vec![
            LOW_RESERVED,
            Range::new(0x20_0000, 0x1_0000),
            Range::new(5 * MIB, 0x8000),
        ];
        let p = plan(&ram, &busy, 3 * MIB, 0x8000).unwrap();
        assert_eq!(p.kernel, 6 * MIB);
        // Exactly the 1 MiB between 4 MiB (above the loader's 2 MiB slot) and the tree fits.
        let p = plan(&ram, &busy, MIB - 0x8000, 0x8000).unwrap();
        assert_eq!(p.kernel, 4 * MIB);
        assert_eq!(p.dtb_copy + p.dtb_room, 5 * MIB);
        assert_eq!(
            plan(&ram, &busy, MIB - 0x7000, 0x8000).unwrap().kernel,
            6 * MIB
        );
    }

    #[test]
    fn ram_ranges_are_tried_in_turn_and_the_kernel_never_straddles_a_hole() {
        let ram = vec![Range::new(0, 8 * MIB), Range::new(1 << 30, 64 * MIB)];
        let busy = vec![LOW_RESERVED, Range::new(0x20_0000, 0x1_0000)];
        let p = plan(&ram, &busy, 5 * MIB, 0x1000).unwrap();
        assert_eq!(p.kernel, 1 << 30);
    }

    #[test]
    fn too_big_reports_the_largest_that_fits() {
        let (ram, busy) = pi();
        let err = plan(&ram, &busy, 2 << 30, 0x8000).unwrap_err();
        // Free: 4 MiB .. 960 MiB.
        assert_eq!(err, 956 * MIB - 0x8000);
        assert_eq!(largest(&ram, &busy, 0x8000), err);
        assert!(plan(&ram, &busy, err, 0x8000).is_ok());
        assert!(plan(&ram, &busy, err + 1, 0x8000).is_err());
    }

    #[test]
    fn unaligned_or_tiny_ram_and_overflow_are_handled() {
        // RAM that ends before the first aligned base: no slot at all.
        let ram = vec![Range::new(0x1000, MIB)];
        assert_eq!(plan(&ram, &[], 0x1000, 0), Err(0));
        // Footprints near u64::MAX do not overflow.
        let ram = vec![Range::new(0, 64 * MIB)];
        assert!(plan(&ram, &[], u64::MAX, 0x1000).is_err());
        assert!(plan(&ram, &[], u64::MAX - 10, 0).is_err());
        // RAM reaching the top of the address space.
        let ram = vec![Range::new(u64::MAX - 4 * MIB, 4 * MIB)];
        assert!(plan(&ram, &[], MIB, 0).is_ok());
    }

    #[test]
    fn overlap_is_exact_at_the_edges() {
        let a = Range::new(0x1000, 0x1000);
        assert!(!a.overlaps(&Range::new(0x2000, 0x10)));
        assert!(!a.overlaps(&Range::new(0x0, 0x1000)));
        assert!(a.overlaps(&Range::new(0x1fff, 1)));
        assert!(!a.overlaps(&Range::new(0x1800, 0)));
    }
}
