//! Support for SMMU tests: an in-memory "physical memory", a minimal stage-1 page-table
//! builder and a clock that advances by itself.
//!
//! None of this is used by the driver or the model; it lets host tests (and in-kernel tests of
//! the model) build the world an SMMU lives in. The page-table builder is deliberately tiny and
//! independent of the kernel's real page-table engine (`mm::pgtable`): it writes VMSAv8-64
//! descriptors (Arm ARM D8.3, 4 KiB granule, 4 levels, 48-bit VA) with the bit positions spelt
//! out below, and the model reads them with its own walker.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::AtomicU64;

use crate::iommu::backend::{Clock, ContiguousFrameAllocator};
use crate::iommu::physmem;
use crate::mm::heap_ram::HeapRam;
use crate::mm::phys::{FrameAllocator, OutOfFrames, PhysMemory};
use crate::mm::{PhysAddr, VirtAddr, PAGE_SIZE};
use crate::sync::atomic::Ordering;

const FRAME: u64 = PAGE_SIZE as u64;

/// An arena of page frames standing in for physical memory at `[base, base + frames * 4 KiB)`.
///
/// It is both the [`PhysMemory`] and the frame allocator (single frames and naturally aligned
/// runs). Frames are zeroed when allocated.
pub struct PhysArena {
    ram: HeapRam,
    used: spin::Mutex<Vec<bool>>,
}

/// The arena cannot be created as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArenaError {
    /// The base is not page aligned.
    MisalignedBase(PhysAddr),
    /// No frames, or the arena would extend past the top of the address space.
    BadSize(usize),
}

impl fmt::Display for ArenaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MisalignedBase(b) => write!(f, "arena base {b} is not page aligned"),
            Self::BadSize(n) => write!(f, "an arena of {n} frames does not fit"),
        }
    }
}

impl PhysArena {
    /// An arena of `frames` 4 KiB frames starting at physical address `base`.
    pub fn new(base: PhysAddr, frames: usize) -> Result<Self, ArenaError> {
        if !base.is_page_aligned() {
            return Err(ArenaError::MisalignedBase(base));
        }
        let ram = HeapRam::new(base, frames, 0)
            .filter(|_| frames > 0)
            .ok_or(ArenaError::BadSize(frames))?;
        Ok(Self {
            ram,
            used: spin::Mutex::new(vec![false; frames]),
        })
    }

    /// First physical address of the arena.
    pub fn base(&self) -> PhysAddr {
        self.ram.base()
    }

    /// Number of frames currently allocated.
    pub fn frames_in_use(&self) -> usize {
        self.used.lock().iter().filter(|u| **u).count()
    }

    /// Reads bytes (test convenience around [`physmem::read_bytes`]).
    pub fn read(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<(), physmem::Unreachable> {
        physmem::read_bytes(self, pa, buf)
    }

    /// Writes bytes (test convenience around [`physmem::write_bytes`]).
    pub fn write(&self, pa: PhysAddr, data: &[u8]) -> Result<(), physmem::Unreachable> {
        physmem::write_bytes(self, pa, data)
    }

    /// Fills a frame with `byte`.
    pub fn fill_frame(&self, frame: PhysAddr, byte: u8) -> Result<(), physmem::Unreachable> {
        physmem::fill(self, frame, PAGE_SIZE, byte)
    }
}

impl PhysMemory for PhysArena {
    fn word(&self, pa: PhysAddr) -> Option<&AtomicU64> {
        self.ram.word(pa)
    }

    fn bytes(&self, pa: PhysAddr, len: usize) -> Option<*mut u8> {
        self.ram.bytes(pa, len)
    }
}

impl FrameAllocator for PhysArena {
    fn alloc_zeroed(&self) -> Result<PhysAddr, OutOfFrames> {
        self.alloc_contiguous_zeroed(0)
    }

    fn free(&self, frame: PhysAddr) {
        self.free_contiguous(frame, 0)
    }
}

impl ContiguousFrameAllocator for PhysArena {
    fn alloc_contiguous_zeroed(&self, order: u32) -> Result<PhysAddr, OutOfFrames> {
        let count = 1usize.checked_shl(order).ok_or(OutOfFrames)?;
        let mut used = self.used.lock();
        // Natural alignment of the physical address, not just of the index.
        let align = count as u64 * FRAME;
        let mut idx = 0;
        while idx + count <= used.len() {
            let pa = self.ram.frame(idx);
            if pa.as_u64() % align != 0 {
                idx += 1;
                continue;
            }
            if used[idx..idx + count].iter().all(|u| !u) {
                used[idx..idx + count].iter_mut().for_each(|u| *u = true);
                drop(used);
                self.ram.fill_frames(idx, count, 0);
                return Ok(pa);
            }
            idx += 1;
        }
        Err(OutOfFrames)
    }

    fn free_contiguous(&self, base: PhysAddr, order: u32) {
        let Some(first) = self.ram.frame_index(base) else {
            return;
        };
        let mut used = self.used.lock();
        let end = (first + (1usize << order)).min(used.len());
        used[first..end].iter_mut().for_each(|u| *u = false);
    }
}

/// A clock that moves on by `step_ns` every time it is read: a polling loop with a timeout of
/// `t` gives up after `t / step_ns` polls, deterministically and without sleeping.
///
/// (Like the arena's words, its counter is a `core` atomic: `PhysMemory` hands out `core`
/// atomics, and this test clock is never model-checked.)
pub struct StepClock {
    now: AtomicU64,
    step_ns: u64,
}

impl StepClock {
    /// A clock starting at 0 that advances by `step_ns` per read.
    pub const fn new(step_ns: u64) -> Self {
        Self {
            now: AtomicU64::new(0),
            step_ns,
        }
    }

    /// Moves the clock on by `ns`.
    pub fn advance(&self, ns: u64) {
        self.now.fetch_add(ns, Ordering::Relaxed);
    }

    /// Number of reads so far (if `step_ns` != 0 and nobody called `advance`).
    pub fn reads(&self) -> u64 {
        self.now
            .load(Ordering::Relaxed)
            .checked_div(self.step_ns)
            .unwrap_or(0)
    }
}

impl Clock for StepClock {
    fn now_ns(&self) -> u64 {
        self.now.fetch_add(self.step_ns, Ordering::Relaxed)
    }
}

/// VMSAv8-64 descriptor bits used by [`TestPageTables`] (Arm ARM D8.3, 4 KiB granule).
pub mod desc {
    /// Descriptor valid.
    pub const VALID: u64 = 1 << 0;
    /// Table (levels 0-2) or page (level 3) descriptor; clear for a block.
    pub const TABLE_OR_PAGE: u64 = 1 << 1;
    /// AttrIndx`[2:0]` = 0 (MAIR slot 0).
    pub const ATTR_INDEX_0: u64 = 0;
    /// `AP[2]`: read-only.
    pub const AP_READ_ONLY: u64 = 1 << 7;
    /// SH`[1:0]` = 0b11: Inner Shareable.
    pub const SH_INNER: u64 = 0b11 << 8;
    /// Access flag.
    pub const AF: u64 = 1 << 10;
    /// nG: not global, the TLB entry is tagged with the ASID.
    pub const NOT_GLOBAL: u64 = 1 << 11;
    /// `APTable[1]`: read-only for everything below this table.
    pub const AP_TABLE_READ_ONLY: u64 = 1 << 62;
    /// Output address bits `[47:12]`.
    pub const OA_MASK: u64 = 0x0000_ffff_ffff_f000;
}

/// Attributes of a leaf built by [`TestPageTables`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafAttrs {
    /// `AP[2]` = 0 when true.
    pub writable: bool,
    /// AF = 1 when true.
    pub accessed: bool,
    /// nG = 0 when true: the entry matches every ASID (kernel-style); otherwise it is tagged
    /// with the ASID (user-style, what SVA maps).
    pub global: bool,
}

impl LeafAttrs {
    /// Read-write, accessed.
    pub const RW: LeafAttrs = LeafAttrs {
        writable: true,
        accessed: true,
        global: false,
    };
    /// Read-only, accessed.
    pub const RO: LeafAttrs = LeafAttrs {
        writable: false,
        accessed: true,
        global: false,
    };

    fn bits(self) -> u64 {
        let mut d = desc::VALID | desc::SH_INNER | desc::ATTR_INDEX_0;
        if !self.writable {
            d |= desc::AP_READ_ONLY;
        }
        if self.accessed {
            d |= desc::AF;
        }
        if !self.global {
            d |= desc::NOT_GLOBAL;
        }
        d
    }
}

/// A [`TestPageTables`] operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// An address is not aligned to the mapping size.
    Misaligned(u64),
    /// The VA is outside the 48-bit TTB0 region.
    OutOfRange(VirtAddr),
    /// Something is already mapped there (or a block is in the way).
    AlreadyMapped(VirtAddr),
    /// Nothing is mapped there.
    NotMapped(VirtAddr),
    /// No frame for a table.
    OutOfFrames,
    /// A table address was not reachable.
    Unreachable(PhysAddr),
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Misaligned(a) => write!(f, "{a:#x} is not aligned to the mapping size"),
            Self::OutOfRange(va) => write!(f, "{va} is outside the 48-bit VA range"),
            Self::AlreadyMapped(va) => write!(f, "{va} is already mapped"),
            Self::NotMapped(va) => write!(f, "{va} is not mapped"),
            Self::OutOfFrames => f.write_str("no frame for a page table"),
            Self::Unreachable(pa) => write!(f, "page table at {pa} is unreachable"),
        }
    }
}

impl From<physmem::Unreachable> for TableError {
    fn from(u: physmem::Unreachable) -> Self {
        Self::Unreachable(u.0)
    }
}

/// A minimal 4-level, 4 KiB-granule, 48-bit stage-1 page-table builder (T0SZ = 16).
///
/// Updates are single 64-bit stores, as on the CPU; nothing here invalidates any TLB: the tests
/// do that through the SMMU driver, exactly like the kernel's unmap path will.
pub struct TestPageTables<'a> {
    mem: &'a PhysArena,
    root: PhysAddr,
    tables: spin::Mutex<Vec<PhysAddr>>,
}

const VA_BITS: u32 = 48;

fn index(va: u64, level: u32) -> u64 {
    (va >> (12 + 9 * (3 - level))) & 0x1ff
}

impl<'a> TestPageTables<'a> {
    /// An empty table tree whose root is a fresh frame of `mem`.
    pub fn new(mem: &'a PhysArena) -> Result<Self, TableError> {
        let root = mem.alloc_zeroed().map_err(|_| TableError::OutOfFrames)?;
        Ok(Self {
            mem,
            root,
            tables: spin::Mutex::new(vec![root]),
        })
    }

    /// The level-0 table: what goes into CD.TTB0.
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    fn slot(&self, table: PhysAddr, va: u64, level: u32) -> PhysAddr {
        PhysAddr(table.as_u64() + 8 * index(va, level))
    }

    /// The descriptor slot for `va` at `level`, creating intermediate tables when `create`.
    fn walk_to(&self, va: VirtAddr, level: u32, create: bool) -> Result<PhysAddr, TableError> {
        if va.as_u64() >> VA_BITS != 0 {
            return Err(TableError::OutOfRange(va));
        }
        let mut table = self.root;
        for l in 0..level {
            let slot = self.slot(table, va.as_u64(), l);
            let d = physmem::load(self.mem, slot, Ordering::Acquire)?;
            if d & desc::VALID == 0 {
                if !create {
                    return Err(TableError::NotMapped(va));
                }
                let t = self
                    .mem
                    .alloc_zeroed()
                    .map_err(|_| TableError::OutOfFrames)?;
                self.tables.lock().push(t);
                let td = t.as_u64() | desc::VALID | desc::TABLE_OR_PAGE;
                physmem::store(self.mem, slot, td, Ordering::Release)?;
                table = t;
            } else if d & desc::TABLE_OR_PAGE == 0 {
                // A block covers this VA at a higher level.
                return Err(if create {
                    TableError::AlreadyMapped(va)
                } else {
                    TableError::NotMapped(va)
                });
            } else {
                table = PhysAddr(d & desc::OA_MASK);
            }
        }
        Ok(self.slot(table, va.as_u64(), level))
    }

    fn map_at(
        &self,
        va: VirtAddr,
        pa: PhysAddr,
        level: u32,
        attrs: LeafAttrs,
    ) -> Result<(), TableError> {
        let size = 1u64 << (12 + 9 * (3 - level));
        if !va.is_aligned(size) {
            return Err(TableError::Misaligned(va.as_u64()));
        }
        if !pa.is_aligned(size) || pa.as_u64() & !desc::OA_MASK != 0 {
            return Err(TableError::Misaligned(pa.as_u64()));
        }
        let slot = self.walk_to(va, level, true)?;
        if physmem::load(self.mem, slot, Ordering::Acquire)? & desc::VALID != 0 {
            return Err(TableError::AlreadyMapped(va));
        }
        let kind = if level == 3 { desc::TABLE_OR_PAGE } else { 0 };
        physmem::store(
            self.mem,
            slot,
            pa.as_u64() | kind | attrs.bits(),
            Ordering::Release,
        )?;
        Ok(())
    }

    /// Maps the 4 KiB page at `va` to `pa`.
    pub fn map(&self, va: VirtAddr, pa: PhysAddr, attrs: LeafAttrs) -> Result<(), TableError> {
        self.map_at(va, pa, 3, attrs)
    }

    /// Maps a 2 MiB block at `va` to `pa` (a level-2 block descriptor).
    pub fn map_block_2m(
        &self,
        va: VirtAddr,
        pa: PhysAddr,
        attrs: LeafAttrs,
    ) -> Result<(), TableError> {
        self.map_at(va, pa, 2, attrs)
    }

    /// The leaf slot and descriptor currently mapping `va`, whatever its size.
    fn leaf(&self, va: VirtAddr) -> Result<(PhysAddr, u64), TableError> {
        for level in 1..=3 {
            match self.walk_to(va, level, false) {
                Ok(slot) => {
                    let d = physmem::load(self.mem, slot, Ordering::Acquire)?;
                    if d & desc::VALID == 0 {
                        return Err(TableError::NotMapped(va));
                    }
                    if level == 3 || d & desc::TABLE_OR_PAGE == 0 {
                        return Ok((slot, d));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(TableError::NotMapped(va))
    }

    /// The raw leaf descriptor mapping `va`.
    pub fn descriptor(&self, va: VirtAddr) -> Result<u64, TableError> {
        Ok(self.leaf(va)?.1)
    }

    /// Clears the leaf mapping `va` (a page or a whole block) and returns its output address.
    pub fn unmap(&self, va: VirtAddr) -> Result<PhysAddr, TableError> {
        let (slot, d) = self.leaf(va)?;
        physmem::store(self.mem, slot, 0, Ordering::Release)?;
        Ok(PhysAddr(d & desc::OA_MASK))
    }

    /// Points the existing leaf for `va` at `pa` instead (same size and attributes).
    pub fn remap(&self, va: VirtAddr, pa: PhysAddr) -> Result<PhysAddr, TableError> {
        let (slot, d) = self.leaf(va)?;
        let attrs = d & !desc::OA_MASK;
        physmem::store(self.mem, slot, pa.as_u64() | attrs, Ordering::Release)?;
        Ok(PhysAddr(d & desc::OA_MASK))
    }

    /// Sets or clears `AP[2]` (read-only) on the leaf for `va`.
    pub fn set_writable(&self, va: VirtAddr, writable: bool) -> Result<(), TableError> {
        self.update(va, desc::AP_READ_ONLY, !writable)
    }

    /// Sets or clears the access flag on the leaf for `va`.
    pub fn set_accessed(&self, va: VirtAddr, accessed: bool) -> Result<(), TableError> {
        self.update(va, desc::AF, accessed)
    }

    fn update(&self, va: VirtAddr, bit: u64, set: bool) -> Result<(), TableError> {
        let (slot, d) = self.leaf(va)?;
        let new = if set { d | bit } else { d & !bit };
        physmem::store(self.mem, slot, new, Ordering::Release)?;
        Ok(())
    }

    /// Number of table frames in use (root included).
    pub fn table_frames(&self) -> usize {
        self.tables.lock().len()
    }
}

impl Drop for TestPageTables<'_> {
    fn drop(&mut self) {
        for t in self.tables.lock().drain(..) {
            self.mem.free(t);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn arena_allocates_aligned_zeroed_runs() {
        let a = PhysArena::new(PhysAddr(0x4000_1000), 64).unwrap();
        let f = a.alloc_zeroed().unwrap();
        assert_eq!(f, PhysAddr(0x4000_1000));
        a.fill_frame(f, 0xaa).unwrap();
        a.free(f);
        let g = a.alloc_zeroed().unwrap();
        assert_eq!(g, f);
        let mut b = [1u8; 16];
        a.read(g, &mut b).unwrap();
        assert_eq!(b, [0; 16], "re-allocated frame is zeroed");
        let run = a.alloc_contiguous_zeroed(2).unwrap();
        assert!(run.is_aligned(4 * FRAME), "{run:?}");
        assert_eq!(a.frames_in_use(), 5);
        a.free_contiguous(run, 2);
        assert_eq!(a.frames_in_use(), 1);
        assert_eq!(a.alloc_contiguous_zeroed(7), Err(OutOfFrames));
        assert!(a.word(PhysAddr(0x4000_1004)).is_none(), "unaligned word");
        assert!(a.word(PhysAddr(0x4000_0ff8)).is_none(), "below the arena");
        assert!(a.bytes(PhysAddr(0x4004_0ff8), 16).is_none(), "past the end");
        assert_eq!(
            PhysArena::new(PhysAddr(1), 1).err(),
            Some(ArenaError::MisalignedBase(PhysAddr(1)))
        );
        assert_eq!(
            PhysArena::new(PhysAddr(0), 0).err(),
            Some(ArenaError::BadSize(0))
        );
    }

    #[test]
    fn byte_copies_respect_word_boundaries() {
        let a = PhysArena::new(PhysAddr(0x1000), 2).unwrap();
        a.write(PhysAddr(0x1003), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
            .unwrap();
        let mut b = [0u8; 16];
        a.read(PhysAddr(0x1000), &mut b).unwrap();
        assert_eq!(b, [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 0]);
        // An unreachable tail writes nothing at all.
        assert!(a.write(PhysAddr(0x2ffc), &[0xff; 8]).is_err());
        let mut c = [0u8; 4];
        a.read(PhysAddr(0x2ffc), &mut c).unwrap();
        assert_eq!(c, [0; 4]);
    }

    #[test]
    fn table_builder_writes_architectural_descriptors() {
        let a = PhysArena::new(PhysAddr(0x8000_0000), 16).unwrap();
        let t = TestPageTables::new(&a).unwrap();
        let va = VirtAddr(0x0000_7f12_3456_7000);
        t.map(va, PhysAddr(0x8000_f000), LeafAttrs::RW).unwrap();
        let d = t.descriptor(va).unwrap();
        assert_eq!(
            d,
            0x8000_f000 | 0b11 | desc::AF | desc::SH_INNER | desc::NOT_GLOBAL
        );
        assert_eq!(t.table_frames(), 4);
        assert_eq!(
            t.map(va, PhysAddr(0x8000_e000), LeafAttrs::RW),
            Err(TableError::AlreadyMapped(va))
        );
        t.set_writable(va, false).unwrap();
        assert_ne!(t.descriptor(va).unwrap() & desc::AP_READ_ONLY, 0);
        assert_eq!(t.unmap(va), Ok(PhysAddr(0x8000_f000)));
        assert_eq!(t.descriptor(va), Err(TableError::NotMapped(va)));
        assert_eq!(t.unmap(va), Err(TableError::NotMapped(va)));
        assert_eq!(
            t.map(VirtAddr(1 << 48), PhysAddr(0), LeafAttrs::RW),
            Err(TableError::OutOfRange(VirtAddr(1 << 48)))
        );
        assert_eq!(
            t.map(VirtAddr(0x1001), PhysAddr(0), LeafAttrs::RW),
            Err(TableError::Misaligned(0x1001))
        );
        t.map_block_2m(VirtAddr(0x20_0000), PhysAddr(0x20_0000), LeafAttrs::RO)
            .unwrap();
        assert_eq!(
            t.descriptor(VirtAddr(0x21_0000)).unwrap() & 0b11,
            0b01,
            "block descriptor"
        );
        assert_eq!(
            t.map(VirtAddr(0x21_0000), PhysAddr(0), LeafAttrs::RW),
            Err(TableError::AlreadyMapped(VirtAddr(0x21_0000)))
        );
        drop(t);
        assert_eq!(a.frames_in_use(), 0);
    }

    #[test]
    fn step_clock_advances_per_read() {
        let c = StepClock::new(10);
        assert_eq!(c.now_ns(), 0);
        assert_eq!(c.now_ns(), 10);
        c.advance(100);
        assert_eq!(c.now_ns(), 120);
    }
}
