//! The portable stage-1 page-table engine: VMSAv8-64, 4 KiB granule, 48-bit VA, four levels.
//!
//! # Protocol
//!
//! A [`PageTable`] is one translation table tree, rooted at a frame from a [`FrameAllocator`]
//! and read and written through a [`PhysMemory`]. It is written by one thread at a time
//! (`&mut self`: the owner's page-table lock) while any number of readers walk it: other CPUs'
//! MMUs, the SMMU (or its model) for shared virtual addressing, and software walkers using
//! [`walk::translate`]. Every entry is an `AtomicU64`; readers load with Acquire and the engine
//! stores with Release, filling a new table completely before linking it.
//!
//! Every operation runs in three steps, so that a failure changes nothing:
//!
//! 1. **Dry run.** Walk the range exactly as the commit will, over the real tables plus
//!    *virtual* ones for tables the commit would create (an empty one for `map`, the split of a
//!    block for `unmap` and `protect`). Every error (overlap, hole, owner change, unreachable or
//!    corrupt table) is found here, and the number of new table frames is counted.
//! 2. **Reserve.** Allocate that many frames. If the allocator runs dry, give them back and
//!    fail: nothing was linked, so nothing needs undoing.
//! 3. **Commit.** Walk again, writing. It takes frames from the reservation only, so it
//!    cannot fail.
//!
//! Entries change in three ways, each with the rule the architecture (Arm ARM DDI 0487K.a,
//! D8.16.1 "Using break-before-make when updating translation table entries") sets for it:
//!
//! - *invalid → valid* (`map`): TLBs never hold invalid entries, so there is nothing to
//!   invalidate; the caller only publishes (`DSB ISHST; ISB`).
//! - *valid → valid with other permissions or access flag* (`protect`, ageing): permitted in
//!   place; a TLB may hold the old or the new entry until the invalidation that follows.
//! - *block → table of smaller leaves* (a split, when `unmap` or `protect` covers part of a
//!   block): a change of block size, which needs **break-before-make**: store an invalid
//!   entry, invalidate the block in every TLB (through [`Invalidate`], which reaches the
//!   secondary TLBs as well), then store the table. Other CPUs and devices touching the block
//!   meanwhile take a translation fault and retry; [`PageTable::affected_range`] tells the owner
//!   which range to announce for that.
//!
//! Removing a leaf (`unmap`) is valid → invalid: it needs an invalidation afterwards. When that
//! leaves a table empty, its entry in the parent is cleared too, and the table frame must not
//! be reused until the walk caches (CPU and SMMU) have dropped the parent entry. So operations
//! do not invalidate or free on their own: they return a [`Change`] saying which range changed
//! ([`TlbInvalidation`]: exact range, leaf-only or not, levels) and which tables were unlinked,
//! and [`PageTable::complete`] runs the invalidation and *then* frees the tables. The owner
//! may merge the changes of several operations and complete them once, like Linux's
//! `mmu_gather`.
//!
//! How an invalidation becomes instructions is the [`tlb`] module's business: a [`TlbPolicy`]
//! (the CPU's FEAT_TLBIRANGE/FEAT_TTL and a threshold) makes a [`TlbPlan`] of `DSB`/`TLBI`/`ISB`
//! steps, run by a [`TlbMaintenance`] executor. The kernel's address space implements
//! [`Invalidate`] with that plan plus `arch_invalidate_secondary_tlbs(range)`, the way arm64
//! Linux's `__flush_tlb_range` also notifies the secondary TLBs.
//!
//! # Choices
//!
//! - `unmap`/`protect` take a [`Holes`] policy: `Reject` (an unmapped page anywhere fails the
//!   call and changes nothing) or `Skip` (only mapped pages are touched).
//! - Block descriptors (1 GiB at level 1, 2 MiB at level 2) are used wherever VA, PA and length
//!   allow, unless the table's [`Config`] forbids them. Blocks are never re-merged.
//! - Permissions are in leaves only; table descriptors carry no hierarchical limits.
//! - `protect` changes AP\[2\], PXN and UXN only. Moving a page between EL0 and EL1 ownership
//!   (AP\[1\]) is refused: do it with unmap and map.
//!
//! [`FrameAllocator`]: crate::mm::phys::FrameAllocator
//! [`PhysMemory`]: crate::mm::phys::PhysMemory

pub mod descriptor;
pub mod error;
pub mod range;
pub mod regs;
pub mod switch;
pub mod table;
pub mod tlb;
pub mod walk;

#[cfg(test)]
mod leaf_path_proptests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use descriptor::{
    Attributes, Level, MemoryType, Permissions, MAIR_INDEX_DEVICE_NGNRE, MAIR_INDEX_NORMAL,
    MAIR_INDEX_NORMAL_NC, MAIR_VALUE,
};
pub use error::PageTableError;
pub use range::VaRange;
pub use regs::{mmu_config, tlb_features, ttbr, CpuFeatureError, MmuConfig, Ttbr1};
pub use table::{Blocks, Change, Config, Holes, PageTable, TableStats};
pub use tlb::{
    CpuTlb, Invalidate, RecordingTlb, TlbFeatures, TlbInvalidation, TlbMaintenance, TlbOp, TlbPlan,
    TlbPolicy, TlbScope, Tlbi,
};
pub use walk::{maps_anything, translate, Mapping, Translation};
