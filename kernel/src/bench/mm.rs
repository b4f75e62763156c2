//! `mm.map_unmap`: `mmap` and `munmap` of 1, 512 and 262144 pages in an address space that
//! runs on this CPU (so every unmap also invalidates the CPU TLB), with no notifier subscriber.
//!
//! The regions are physical mappings of one 16 MiB run of frames the benchmark owns, aliased
//! as often as needed (262144 pages = 64 regions of 4096 pages; one `munmap` removes them all),
//! so the numbers are those of the page-table engine, the TLB maintenance and the notifier
//! calls, not of allocating and zeroing 1 GiB. Two layouts: `pages`, where the physical run is
//! offset by one page so that only 4 KiB leaves fit, and `blocks`, where it is 2 MiB aligned
//! and every 512 pages become one 2 MiB block.

use super::{fail, measure, sizes, Record};
use crate::arch::aarch64::aspace::{self, CpuMm};
use crate::ktest::{TestCtx, TestError, TestResult};
use crate::mm::aspace::{Backing, MmUser, Placement};
use crate::mm::pgtable::descriptor::{MemoryType, Permissions};
use crate::mm::phys::ContiguousFrameAllocator;
use crate::mm::ram::frames;
use crate::mm::{PhysAddr, VirtAddr, PAGE_SIZE};

const PAGE: u64 = PAGE_SIZE as u64;
/// Pages per aliased region.
pub(super) const ALIAS_PAGES: u64 = 4096;
/// The frame run: 2^13 frames (32 MiB, 32 MiB aligned), so a 4096-page window fits at any
/// offset of up to 4096 pages.
pub(super) const RUN_ORDER: u32 = 13;
/// Where the regions go (1 GiB aligned, so only the physical side decides about blocks).
pub(super) const VA: u64 = 0x40_0000_0000;

/// Which leaves the mapping can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// Physical side one page off 2 MiB alignment: 4 KiB leaves only.
    Pages,
    /// Physical side 2 MiB aligned: 2 MiB blocks where the size allows.
    Blocks,
}

impl Layout {
    pub(super) const fn name(self) -> &'static str {
        match self {
            Self::Pages => "pages",
            Self::Blocks => "blocks",
        }
    }

    fn physical(self, run: PhysAddr) -> PhysAddr {
        match self {
            Self::Pages => PhysAddr(run.as_u64() + PAGE),
            Self::Blocks => run,
        }
    }
}

/// A run of frames for aliased mappings, freed on drop.
pub(super) struct AliasRun {
    base: PhysAddr,
}

impl AliasRun {
    pub(super) fn new() -> Result<Self, TestError> {
        let f = frames().ok_or_else(|| fail("no frame allocator"))?;
        let base = f.alloc_contiguous_zeroed(RUN_ORDER).map_err(fail)?;
        Ok(Self { base })
    }

    pub(super) fn base(&self) -> PhysAddr {
        self.base
    }
}

impl Drop for AliasRun {
    fn drop(&mut self) {
        if let Some(f) = frames() {
            f.free_contiguous(self.base, RUN_ORDER);
        }
    }
}

/// Maps `pages` pages from `va` as regions of at most [`ALIAS_PAGES`] over `pa`.
pub(super) fn map_aliased(
    space: &MmUser<CpuMm>,
    va: u64,
    pages: u64,
    pa: PhysAddr,
    perms: Permissions,
) -> Result<(), TestError> {
    let mut done = 0;
    while done < pages {
        let n = (pages - done).min(ALIAS_PAGES);
        space
            .mmap(
                Placement::Fixed(VirtAddr(va + done * PAGE)),
                (n * PAGE) as usize,
                perms,
                Backing::Physical(pa, MemoryType::Normal),
            )
            .map_err(fail)?;
        done += n;
    }
    Ok(())
}

/// Counts `mmap` (all regions) and `munmap` (one call) of `pages` pages in a fresh address
/// space active on this CPU. Returns (map, unmap).
pub(super) fn map_unmap_once(
    run: &AliasRun,
    layout: Layout,
    pages: u64,
) -> Result<(u64, u64), TestError> {
    let space = aspace::create().map_err(fail)?;
    aspace::activate(&space).map_err(|e| fail(alloc::format!("{e:?}")))?;
    let pa = layout.physical(run.base());
    let result = (|| {
        let (mapped, map) = measure(|| map_aliased(&space, VA, pages, pa, Permissions::KERNEL_RW))?;
        mapped?;
        let (unmapped, unmap) = measure(|| space.munmap(VirtAddr(VA), (pages * PAGE) as usize))?;
        unmapped.map_err(fail)?;
        if space.translate(VirtAddr(VA)).is_some() || !space.regions().is_empty() {
            return Err(fail("munmap left something mapped"));
        }
        Ok((map, unmap))
    })();
    aspace::deactivate();
    result
}

pub(super) fn map_unmap(_t: &mut TestCtx) -> TestResult {
    let run = AliasRun::new()?;
    for layout in [Layout::Pages, Layout::Blocks] {
        for pages in sizes(&[1, 512, 262_144])? {
            let (map, unmap) = map_unmap_once(&run, layout, pages)?;
            let r = Record::new("mm.map_unmap")
                .with("layout", layout.name())
                .with("pages", pages);
            r.emit("map", map);
            r.emit("unmap", unmap);
        }
    }
    Ok(())
}
