//! Address space identifiers (ASIDs).

use core::fmt;

/// The width of the ASIDs the CPU implements (`ID_AA64MMFR0_EL1.ASIDBits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsidBits {
    /// 8-bit ASIDs: 256 values.
    Eight,
    /// 16-bit ASIDs: 65536 values (`TCR_EL1.AS` = 1).
    Sixteen,
}

impl AsidBits {
    /// Number of bits.
    pub const fn bits(self) -> u32 {
        match self {
            AsidBits::Eight => 8,
            AsidBits::Sixteen => 16,
        }
    }

    /// Number of distinct ASIDs.
    pub const fn count(self) -> usize {
        1 << self.bits()
    }
}

/// A hardware ASID, valid for the width it was created for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Asid(u16);

impl Asid {
    /// ASID 0: reserved for the kernel's own (global) mappings, never handed to an address
    /// space.
    pub const KERNEL: Asid = Asid(0);

    /// `value` as an ASID of width `bits`, or `None` if it does not fit.
    pub const fn new(value: u16, bits: AsidBits) -> Option<Self> {
        if (value as usize) < bits.count() {
            Some(Asid(value))
        } else {
            None
        }
    }

    /// The raw value.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Asid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "asid {}", self.0)
    }
}

// ---- the allocator -------------------------------------------------------------------------
//
// ASIDs are handed out per *generation*. An address space keeps a context id, generation | ASID,
// in its `AsidContext`; while that generation is current the ASID is its own, and switching to
// it on any CPU is a compare-and-swap on the CPU's `active` slot (the fast path). When the ASID
// space is exhausted the allocator rolls over: it starts a new generation with an empty map,
// except that the ASID each CPU is running right now is *reserved* (carried into the new
// generation for its address space, so running CPUs need not stop), and every CPU must flush
// its local TLB before it next runs an address space under the new generation, because TLB
// entries of the old generation's ASIDs may still be there and the numbers are about to be
// reused. Address spaces activated later under an old-generation id get a new id: the same
// number if it is still free, a fresh one otherwise.
//
// ASIDs are never freed individually: a dead address space's number is reused only after the
// rollover that flushes every CPU's TLB, so no stale entry can ever match a new owner.
//
// The fast path races with a rollover only through the CPU's `active` slot: the rollover swaps
// every slot to zero (under the lock) and reserves what it found there. A fast path whose CAS
// lands before that swap had its id reserved; one that lands after finds zero and fails, and
// takes the slow path, which sees the new generation. This is the scheme of Linux's
// arch/arm64/mm/context.c.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::UnsafeCell;

use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The ASID state of one address space: its context id (generation | ASID), 0 before its
/// first activation.
#[derive(Debug, Default)]
pub struct AsidContext(AtomicU64);

impl AsidContext {
    /// A context that has never run.
    pub fn new() -> Self {
        AsidContext(AtomicU64::new(0))
    }
}

/// The result of switching a CPU to an address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activation {
    /// The ASID to program into `TTBR0_EL1`.
    pub asid: Asid,
    /// The generation the ASID belongs to (it increases at every rollover).
    pub generation: u64,
    /// The CPU must invalidate its whole local TLB (`TLBI VMALLE1; DSB NSH; ISB`) before
    /// running with this ASID: a rollover happened since it last switched.
    pub flush_local_tlb: bool,
}

/// Errors of the ASID allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsidError {
    /// The CPU index is not below the CPU count the allocator was made for.
    NoSuchCpu(usize),
    /// So many CPUs that their reserved ASIDs could fill the whole space.
    TooManyCpus {
        /// CPUs requested.
        cpus: usize,
        /// ASIDs available to address spaces.
        asids: usize,
    },
}

impl fmt::Display for AsidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AsidError::NoSuchCpu(cpu) => write!(f, "no CPU {cpu} in the ASID allocator"),
            AsidError::TooManyCpus { cpus, asids } => {
                write!(f, "{cpus} CPUs cannot share {asids} ASIDs")
            }
        }
    }
}

/// State only the slow path touches, under the allocator's lock.
struct Inner {
    /// One bit per ASID: used in the current generation.
    map: Vec<u64>,
    /// Per CPU: the context id it was running at the last rollover (0: none).
    reserved: Vec<u64>,
    /// Per CPU: a rollover happened since it last took the slow path.
    flush_pending: Vec<bool>,
    /// Where the search for a free ASID resumes.
    next: usize,
}

/// A minimal spin lock over the loom-switchable atomics, so that the allocator can be model
/// checked.
struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through `with`, which holds the lock, so at most one
// thread accesses it at a time; `T: Send` lets it be handed between threads.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            crate::sync::spin_loop();
        }
        // SAFETY: we hold the lock (the Acquire above pairs with the Release below of the
        // previous holder), so no other reference to the value exists.
        let result = f(unsafe { &mut *self.value.get() });
        self.locked.store(false, Ordering::Release);
        result
    }
}

/// Hands out ASIDs to address spaces, with generation rollover.
pub struct AsidAllocator {
    bits: AsidBits,
    /// ASIDs `1..limit` are handed out (`limit` = 2^bits outside tests).
    limit: usize,
    /// The current generation, as a multiple of 2^bits (so `generation | asid` is an id).
    generation: AtomicU64,
    /// Per CPU: the context id it runs, or 0 after a rollover until it switches again.
    active: Box<[AtomicU64]>,
    inner: SpinLock<Inner>,
    /// Debug knob: a rollover forgets the running ASIDs (shows the tests catch it).
    #[cfg(test)]
    forget_running: bool,
}

impl AsidAllocator {
    /// An allocator for `cpus` CPUs with ASIDs of width `bits`. ASID 0 is kept for the kernel.
    pub fn new(bits: AsidBits, cpus: usize) -> Result<Self, AsidError> {
        Self::with_limit(bits, cpus, bits.count())
    }

    /// As [`AsidAllocator::new`], but only ASIDs below `limit` are used: lets tests roll over
    /// after a handful of address spaces.
    pub fn with_limit(bits: AsidBits, cpus: usize, limit: usize) -> Result<Self, AsidError> {
        let limit = limit.min(bits.count());
        // After a rollover up to `cpus` ASIDs are reserved; at least one must stay free.
        if cpus == 0 || cpus + 1 >= limit {
            return Err(AsidError::TooManyCpus {
                cpus,
                asids: limit.saturating_sub(1),
            });
        }
        let mut inner = Inner {
            map: vec![0; bits.count().div_ceil(64)],
            reserved: vec![0; cpus],
            flush_pending: vec![false; cpus],
            next: 1,
        };
        inner.map[0] |= 1; // ASID 0: the kernel's.
        Ok(AsidAllocator {
            bits,
            limit,
            generation: AtomicU64::new(1 << bits.bits()),
            active: (0..cpus).map(|_| AtomicU64::new(0)).collect(),
            inner: SpinLock::new(inner),
            #[cfg(test)]
            forget_running: false,
        })
    }

    /// The ASID width.
    pub fn bits(&self) -> AsidBits {
        self.bits
    }

    /// The number of rollovers so far plus one.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed) >> self.bits.bits()
    }

    fn asid_mask(&self) -> u64 {
        (1 << self.bits.bits()) - 1
    }

    fn is_current(&self, id: u64) -> bool {
        id != 0 && (id & !self.asid_mask()) == self.generation.load(Ordering::Relaxed)
    }

    fn activation(&self, id: u64, flush_local_tlb: bool) -> Activation {
        Activation {
            asid: Asid((id & self.asid_mask()) as u16),
            generation: id >> self.bits.bits(),
            flush_local_tlb,
        }
    }

    /// The ASID `ctx` is tagged with in TLBs right now, or `None` if it never ran. An id of an
    /// older generation still names the right TLB entries: a rollover either flushed them or
    /// (for a context running at the time) kept its number.
    pub fn asid_of(&self, ctx: &AsidContext) -> Option<Asid> {
        match ctx.0.load(Ordering::Relaxed) {
            0 => None,
            id => Some(Asid((id & self.asid_mask()) as u16)),
        }
    }

    /// Switches `cpu` to the address space owning `ctx`: returns the ASID to run it with.
    ///
    /// The caller runs this with preemption off on `cpu`, then writes `TTBR0_EL1` (after the
    /// local TLB flush if asked).
    pub fn activate(&self, cpu: usize, ctx: &AsidContext) -> Result<Activation, AsidError> {
        let active = self.active.get(cpu).ok_or(AsidError::NoSuchCpu(cpu))?;
        let id = ctx.0.load(Ordering::Relaxed);
        let previous = active.load(Ordering::Relaxed);
        // Fast path: the id is of the current generation and no rollover cleared our slot.
        if previous != 0
            && self.is_current(id)
            && active
                .compare_exchange(previous, id, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Ok(self.activation(id, false));
        }
        Ok(self.inner.with(|inner| {
            let mut id = ctx.0.load(Ordering::Relaxed);
            if !self.is_current(id) {
                id = self.new_context(inner, id);
                ctx.0.store(id, Ordering::Relaxed);
            }
            let flush = core::mem::take(&mut inner.flush_pending[cpu]);
            active.store(id, Ordering::Relaxed);
            self.activation(id, flush)
        }))
    }

    /// A current-generation id for a context whose id is `old` (0 or an old generation's).
    fn new_context(&self, inner: &mut Inner, old: u64) -> u64 {
        let mut generation = self.generation.load(Ordering::Relaxed);
        if old != 0 {
            let asid = (old & self.asid_mask()) as usize;
            let renewed = generation | asid as u64;
            // Running somewhere at the last rollover: its number was kept for it.
            let mut reserved = false;
            for slot in inner.reserved.iter_mut().filter(|slot| **slot == old) {
                *slot = renewed;
                reserved = true;
            }
            if reserved {
                return renewed;
            }
            // Still free in this generation: keep the number.
            if asid < self.limit && !test_and_set(&mut inner.map, asid) {
                return renewed;
            }
        }
        let asid = match self.find_free(inner) {
            Some(asid) => asid,
            None => {
                generation = self.rollover(inner);
                self.find_free(inner)
                    .expect("a rollover leaves at most cpus + 1 < limit ASIDs in use")
            }
        };
        test_and_set(&mut inner.map, asid);
        inner.next = asid + 1;
        generation | asid as u64
    }

    fn find_free(&self, inner: &Inner) -> Option<usize> {
        (inner.next..self.limit)
            .chain(1..inner.next.min(self.limit))
            .find(|&asid| inner.map[asid / 64] & (1 << (asid % 64)) == 0)
    }

    /// Starts a new generation: keeps every CPU's running ASID, frees the rest, and makes
    /// every CPU flush its TLB before running a new-generation ASID.
    fn rollover(&self, inner: &mut Inner) -> u64 {
        let generation = self.generation.load(Ordering::Relaxed) + (1 << self.bits.bits());
        self.generation.store(generation, Ordering::Relaxed);
        inner.map.iter_mut().for_each(|word| *word = 0);
        inner.map[0] |= 1;
        for (cpu, active) in self.active.iter().enumerate() {
            let mut id = active.swap(0, Ordering::Relaxed);
            // Zero: the CPU has not switched since the previous rollover, and still runs what
            // was reserved for it then.
            if id == 0 {
                id = inner.reserved[cpu];
            }
            #[cfg(test)]
            if self.forget_running {
                id = 0;
            }
            if id != 0 {
                test_and_set(&mut inner.map, (id & self.asid_mask()) as usize);
            }
            inner.reserved[cpu] = id;
            inner.flush_pending[cpu] = true;
        }
        inner.next = 1;
        generation
    }
}

/// Sets bit `bit`, returning whether it was already set.
fn test_and_set(map: &mut [u64], bit: usize) -> bool {
    let mask = 1 << (bit % 64);
    let was = map[bit / 64] & mask != 0;
    map[bit / 64] |= mask;
    was
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;

    #[test]
    fn asid_values_fit_their_width() {
        assert_eq!(Asid::new(255, AsidBits::Eight).map(Asid::get), Some(255));
        assert_eq!(Asid::new(256, AsidBits::Eight), None);
        assert_eq!(
            Asid::new(0xffff, AsidBits::Sixteen).map(Asid::get),
            Some(0xffff)
        );
        assert_eq!(AsidBits::Sixteen.count(), 65536);
    }

    #[test]
    fn rejects_bad_cpu_counts_and_indices() {
        assert!(AsidAllocator::new(AsidBits::Eight, 0).is_err());
        assert_eq!(
            AsidAllocator::new(AsidBits::Eight, 255).err(),
            Some(AsidError::TooManyCpus {
                cpus: 255,
                asids: 255
            })
        );
        let alloc = AsidAllocator::new(AsidBits::Eight, 4).unwrap();
        assert_eq!(
            alloc.activate(4, &AsidContext::new()),
            Err(AsidError::NoSuchCpu(4))
        );
        assert_eq!(
            AsidError::NoSuchCpu(4).to_string(),
            "no CPU 4 in the ASID allocator"
        );
    }

    #[test]
    fn distinct_spaces_get_distinct_asids_and_keep_them() {
        let alloc = AsidAllocator::new(AsidBits::Eight, 2).unwrap();
        let contexts: Vec<AsidContext> = (0..255).map(|_| AsidContext::new()).collect();
        let mut seen = HashSet::new();
        for (i, ctx) in contexts.iter().enumerate() {
            let a = alloc.activate(i % 2, ctx).unwrap();
            assert_ne!(a.asid, Asid::KERNEL);
            assert_eq!(a.generation, 1);
            assert!(!a.flush_local_tlb);
            assert!(seen.insert(a.asid), "{:?} handed out twice", a.asid);
        }
        // Switching back is the fast path: same ASID, no flush, no rollover.
        let again = alloc.activate(0, &contexts[3]).unwrap();
        assert_eq!(again.asid, Asid::new(4, AsidBits::Eight).unwrap());
        assert!(!again.flush_local_tlb);
        assert_eq!(alloc.generation(), 1);
    }

    #[test]
    fn rollover_bumps_the_generation_keeps_running_asids_and_flushes_each_cpu_once() {
        let alloc = AsidAllocator::with_limit(AsidBits::Sixteen, 2, 5).unwrap();
        let ctx: Vec<AsidContext> = (0..6).map(|_| AsidContext::new()).collect();
        let a = alloc.activate(0, &ctx[0]).unwrap(); // CPU 0 runs ctx 0 (ASID 1).
        let b = alloc.activate(1, &ctx[1]).unwrap(); // CPU 1 runs ctx 1 (ASID 2).
        alloc.activate(1, &ctx[2]).unwrap(); // ASID 3
        let last = alloc.activate(1, &ctx[3]).unwrap(); // ASID 4: the space is now full.
        assert_eq!((a.asid.get(), b.asid.get(), last.asid.get()), (1, 2, 4));
        assert_eq!(alloc.generation(), 1);

        // ctx 4 forces a rollover, on CPU 1, which was running ctx 3.
        let rolled = alloc.activate(1, &ctx[4]).unwrap();
        assert_eq!(alloc.generation(), 2);
        assert_eq!(rolled.generation, 2);
        assert!(
            rolled.flush_local_tlb,
            "CPU 1 must flush before using the new generation"
        );
        // ASIDs 1 (CPU 0's ctx 0) and 4 (CPU 1's ctx 3) were reserved; ctx 4 got a free one.
        assert!(![1, 4].contains(&rolled.asid.get()), "{:?}", rolled.asid);

        // CPU 0 switches back to ctx 0: same number, new generation, and its flush.
        let back = alloc.activate(0, &ctx[0]).unwrap();
        assert_eq!(
            (back.asid, back.generation, back.flush_local_tlb),
            (a.asid, 2, true)
        );
        // Only once per rollover.
        assert!(!alloc.activate(0, &ctx[0]).unwrap().flush_local_tlb);
        // ctx 3 was reserved on CPU 1 at the rollover: it keeps ASID 4.
        assert_eq!(alloc.activate(1, &ctx[3]).unwrap().asid, last.asid);
        // ctx 1 was not running: its ASID 2 is reused if free, else it gets another one, but
        // never one of the live ones.
        let renewed = alloc.activate(0, &ctx[1]).unwrap();
        assert!(![1, 4, rolled.asid.get()].contains(&renewed.asid.get()));
    }

    #[test]
    fn forgetting_running_asids_at_rollover_is_caught() {
        // The scenario above with the reservation switched off: the space that forces the
        // rollover is handed the ASID CPU 0 is still running with another address space.
        let mut alloc = AsidAllocator::with_limit(AsidBits::Sixteen, 2, 5).unwrap();
        alloc.forget_running = true;
        let ctx: Vec<AsidContext> = (0..5).map(|_| AsidContext::new()).collect();
        let running = alloc.activate(0, &ctx[0]).unwrap();
        for c in &ctx[1..4] {
            alloc.activate(1, c).unwrap();
        }
        let rolled = alloc.activate(1, &ctx[4]).unwrap();
        assert_eq!(
            rolled.asid, running.asid,
            "the clash the real allocator prevents"
        );
    }

    #[test]
    fn concurrent_switching_never_shares_an_asid_within_a_generation() {
        // 4 CPUs, 16 address spaces, 6 ASIDs: many rollovers. Every (generation, ASID) pair
        // must belong to a single address space, and a CPU must be told to flush at least
        // once per rollover it lived through.
        const CPUS: usize = 4;
        let alloc = AsidAllocator::with_limit(AsidBits::Eight, CPUS, 7).unwrap();
        let spaces: Vec<AsidContext> = (0..16).map(|_| AsidContext::new()).collect();
        let owners: Mutex<HashMap<(u64, u16), usize>> = Mutex::new(HashMap::new());
        std::thread::scope(|s| {
            for cpu in 0..CPUS {
                let (alloc, spaces, owners) = (&alloc, &spaces, &owners);
                s.spawn(move || {
                    let mut generation = 0;
                    for step in 0..2000usize {
                        let space = (step * 7 + cpu * 5) % spaces.len();
                        let a = alloc.activate(cpu, &spaces[space]).unwrap();
                        assert!(a.asid.get() >= 1 && a.asid.get() < 7);
                        assert!(a.generation >= generation, "generation went backwards");
                        if a.generation > generation && generation != 0 {
                            assert!(a.flush_local_tlb, "cpu {cpu} missed a flush");
                        }
                        generation = a.generation;
                        let mut owners = owners.lock().unwrap();
                        let owner = *owners.entry((a.generation, a.asid.get())).or_insert(space);
                        assert_eq!(
                            owner, space,
                            "{:?} of generation {} shared",
                            a.asid, a.generation
                        );
                    }
                });
            }
        });
        assert!(
            alloc.generation() > 10,
            "the test must roll over many times"
        );
    }
}
