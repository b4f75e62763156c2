//! An in-memory "physical memory" for host tests and benchmarks.
//!
//! [`TestMemory`] is a heap array of words that plays RAM at a fixed physical base address,
//! with a frame allocator over it that:
//! - tracks every live frame, so a test can assert that nothing leaked;
//! - detects and counts double and foreign frees instead of corrupting its state;
//! - poisons freed frames, so a table walked after it was freed shows up as garbage;
//! - can be told to fail after a number of allocations, to test rollback on out-of-memory.
//!
//! Its words are a [`HeapRam`], which the other arenas (the SMMU tests' `PhysArena`, the
//! fuzz targets' arena) use too: they differ in their allocators, not in how RAM is played.
//!
//! [`ArenaPlatform`] is the host [`MmPlatform`] over such an arena: address spaces that no CPU
//! runs, for the unit tests here and the SVA, stress and fuzz worlds.
//!
//! Only built for hosted targets (tests, benches, the harness); the kernel has real RAM.

use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::addr::PhysAddr;
use super::asid::{AsidAllocator, AsidBits};
use super::aspace::MmPlatform;
use super::frame::{zero_frame, FrameBitmap};
use super::heap_ram::HeapRam;
use super::pgtable::tlb::{RecordingTlb, TlbFeatures, TlbMaintenance, TlbOp, TlbPlan, TlbPolicy};
use super::phys::{FrameAllocator, OutOfFrames, PhysMemory};

/// The pattern freed frames are filled with. As a descriptor it is valid and points far
/// outside the arena, so walking a freed table fails loudly.
pub const POISON: u64 = 0xdead_beef_dead_beef;

const UNLIMITED: usize = usize::MAX;

/// Heap-backed physical memory with a leak-tracking frame allocator.
pub struct TestMemory {
    ram: HeapRam,
    frames: FrameBitmap,
    /// Allocations still allowed before `alloc_zeroed` fails (`UNLIMITED` = no limit).
    budget: AtomicUsize,
    allocations: AtomicUsize,
    bad_frees: AtomicUsize,
}

impl TestMemory {
    /// Where the arena's RAM starts by default (QEMU `virt`'s RAM base; not zero, so that a
    /// stray null physical address is never "in range").
    pub const DEFAULT_BASE: PhysAddr = PhysAddr(0x4000_0000);

    /// An arena of `frames` frames at [`TestMemory::DEFAULT_BASE`].
    pub fn new(frames: usize) -> Self {
        Self::with_base(Self::DEFAULT_BASE, frames)
    }

    /// An arena of `frames` frames at `base` (page aligned).
    pub fn with_base(base: PhysAddr, frames: usize) -> Self {
        let ram = HeapRam::new(base, frames, POISON).expect("test arena base must be page aligned");
        let frames =
            FrameBitmap::new(&[ram.base()..ram.end()], &[]).expect("one range cannot overlap");
        TestMemory {
            ram,
            frames,
            budget: AtomicUsize::new(UNLIMITED),
            allocations: AtomicUsize::new(0),
            bad_frees: AtomicUsize::new(0),
        }
    }

    /// First physical address of the arena.
    pub fn base(&self) -> PhysAddr {
        self.ram.base()
    }

    /// The arena's physical range.
    pub fn range(&self) -> Range<PhysAddr> {
        self.ram.base()..self.ram.end()
    }

    /// Frames currently allocated.
    pub fn live_frames(&self) -> usize {
        self.frames.used_frames()
    }

    /// Frames never allocated or already freed.
    pub fn free_frames(&self) -> usize {
        self.frames.free_frames()
    }

    /// Successful allocations since creation.
    pub fn allocations(&self) -> usize {
        self.allocations.load(Ordering::Relaxed)
    }

    /// Frees of frames that were not allocated (double frees) or not ours.
    pub fn bad_frees(&self) -> usize {
        self.bad_frees.load(Ordering::Relaxed)
    }

    /// True if `frame` is an allocated frame of this arena.
    pub fn is_allocated(&self, frame: PhysAddr) -> bool {
        self.frames.is_allocated(frame).unwrap_or(false)
    }

    /// Lets only `budget` more allocations succeed (`None`: no limit).
    pub fn set_alloc_budget(&self, budget: Option<usize>) {
        self.budget
            .store(budget.unwrap_or(UNLIMITED), Ordering::Relaxed);
    }

    /// Takes one unit of allocation budget, or fails if none is left.
    fn take_budget(&self) -> Result<(), OutOfFrames> {
        self.budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| match b {
                UNLIMITED => Some(UNLIMITED),
                0 => None,
                b => Some(b - 1),
            })
            .map(|_| ())
            .map_err(|_| OutOfFrames)
    }
}

impl PhysMemory for TestMemory {
    #[inline]
    fn word(&self, pa: PhysAddr) -> Option<&AtomicU64> {
        self.ram.word(pa)
    }

    fn bytes(&self, pa: PhysAddr, len: usize) -> Option<*mut u8> {
        self.ram.bytes(pa, len)
    }
}

impl FrameAllocator for TestMemory {
    fn alloc_zeroed(&self) -> Result<PhysAddr, OutOfFrames> {
        self.take_budget()?;
        let frame = self.frames.alloc().ok_or(OutOfFrames)?;
        zero_frame(self, frame)?;
        self.allocations.fetch_add(1, Ordering::Relaxed);
        Ok(frame)
    }

    fn free(&self, frame: PhysAddr) {
        match self.frames.try_free(frame) {
            Ok(()) => {
                let index = self
                    .ram
                    .frame_index(frame)
                    .expect("a managed frame is inside the arena");
                self.ram.fill_frames(index, 1, POISON);
            }
            Err(_) => {
                self.bad_frees.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A host [`MmPlatform`]: one arena `M` is both the memory and the frame allocator; ASIDs for 4
/// CPUs; a 48-bit physical address size unless told otherwise; a CPU without FEAT_TLBIRANGE or
/// FEAT_TTL. No CPU runs these address spaces, so CPU TLB plans and I-cache maintenance do
/// nothing, unless [recording](ArenaPlatform::recording) was asked for (a long run would
/// otherwise keep every plan).
pub struct ArenaPlatform<M> {
    mem: M,
    asids: AsidAllocator,
    pa_bits: u32,
    cpu: Option<spin::Mutex<CpuRecord>>,
}

/// What the CPU was told to do, when recording.
#[derive(Default)]
struct CpuRecord {
    tlb: RecordingTlb,
    icache: Vec<(PhysAddr, usize)>,
}

impl<M> ArenaPlatform<M> {
    /// CPUs the ASID allocator serves.
    const CPUS: usize = 4;

    /// A platform over `mem` that records nothing.
    pub fn new(mem: M) -> Self {
        ArenaPlatform {
            mem,
            asids: AsidAllocator::new(AsidBits::Sixteen, Self::CPUS)
                .expect("16-bit ASIDs serve 4 CPUs"),
            pa_bits: 48,
            cpu: None,
        }
    }

    /// The same with a `bits`-bit physical address size.
    pub fn with_pa_bits(self, bits: u32) -> Self {
        ArenaPlatform {
            pa_bits: bits,
            ..self
        }
    }

    /// The same, recording every CPU TLB operation and I-cache maintenance.
    pub fn recording(self) -> Self {
        ArenaPlatform {
            cpu: Some(spin::Mutex::new(CpuRecord::default())),
            ..self
        }
    }

    /// The CPU TLB operations run since the last call (empty when not recording).
    pub fn take_tlb_ops(&self) -> Vec<TlbOp> {
        self.take(|cpu| core::mem::take(&mut cpu.tlb.ops))
    }

    /// The ranges made coherent for instruction fetch since the last call (empty when not
    /// recording).
    pub fn take_icache_syncs(&self) -> Vec<(PhysAddr, usize)> {
        self.take(|cpu| core::mem::take(&mut cpu.icache))
    }

    fn take<T: Default>(&self, f: impl FnOnce(&mut CpuRecord) -> T) -> T {
        self.cpu
            .as_ref()
            .map(|cpu| f(&mut cpu.lock()))
            .unwrap_or_default()
    }
}

impl<M> MmPlatform for ArenaPlatform<M>
where
    M: PhysMemory + FrameAllocator + Clone + Send + Sync + 'static,
{
    type Mem = M;
    type Frames = M;

    fn memory(&self) -> M {
        self.mem.clone()
    }
    fn frames(&self) -> M {
        self.mem.clone()
    }
    fn asids(&self) -> &AsidAllocator {
        &self.asids
    }
    fn tlb_policy(&self) -> TlbPolicy {
        TlbPolicy::new(TlbFeatures {
            range: false,
            level_hints: false,
        })
    }
    fn run_tlb_plan(&self, plan: &TlbPlan) {
        if let Some(cpu) = &self.cpu {
            cpu.lock().tlb.execute(plan);
        }
    }
    fn full_barrier(&self) {
        core::sync::atomic::fence(Ordering::SeqCst);
    }
    fn pa_bits(&self) -> u32 {
        self.pa_bits
    }
    fn sync_icache(&self, pa: PhysAddr, len: usize) {
        if let Some(cpu) = &self.cpu {
            cpu.lock().icache.push((pa, len));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_bounds() {
        let mem = TestMemory::new(2);
        let base = mem.base();
        assert!(mem.word(base).is_some());
        assert!(mem.word(PhysAddr(base.as_u64() + 8191 - 7)).is_some());
        assert!(mem.word(PhysAddr(base.as_u64() + 8192)).is_none());
        assert!(
            mem.word(PhysAddr(base.as_u64() + 4)).is_none(),
            "unaligned word"
        );
        assert!(mem.word(PhysAddr(base.as_u64() - 8)).is_none());
        assert!(mem.bytes(base, 8192).is_some());
        assert!(mem.bytes(base, 8193).is_none());
        assert!(mem.bytes(PhysAddr(base.as_u64() + 8191), 1).is_some());
        assert!(mem.bytes(PhysAddr(base.as_u64() + 8191), 2).is_none());
        assert!(mem.bytes(PhysAddr(base.as_u64() - 1), 2).is_none());
        assert!(mem.bytes(base, 0).is_some(), "nothing out of reach");
    }

    #[test]
    fn tracks_leaks_poisons_and_budget() {
        let mem = TestMemory::new(4);
        let a = mem.alloc_zeroed().unwrap();
        assert_eq!(mem.word(a).unwrap().load(Ordering::Relaxed), 0);
        assert_eq!(mem.live_frames(), 1);
        mem.free(a);
        assert_eq!(mem.live_frames(), 0);
        assert_eq!(mem.word(a).unwrap().load(Ordering::Relaxed), POISON);
        mem.free(a);
        assert_eq!(mem.bad_frees(), 1);

        mem.set_alloc_budget(Some(1));
        let b = mem.alloc_zeroed().unwrap();
        assert_eq!(mem.alloc_zeroed(), Err(OutOfFrames));
        mem.set_alloc_budget(None);
        let c = mem.alloc_zeroed().unwrap();
        assert_ne!(b, c);
        assert_eq!(mem.allocations(), 3);
    }
}
