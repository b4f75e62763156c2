//! A CPU thread: maps, unmaps and re-protects the page slots it owns in every shared address
//! space, and watches runs of them with interval notifiers, as fast as it can.
//!
//! Its data frames come from its own pool. A frame is filled with its slot's generation word
//! before it is mapped; once the unmap has returned it is poisoned and goes back to the pool,
//! and before it is used again it must still be all poison: a word that changed was written by
//! a device after the unmap returned. Likewise a read-only page must not change between the
//! downgrade's return and the next change of the page.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use shootdown::iommu::physmem;
use shootdown::mm::aspace::{Backing, Placement};
use shootdown::mm::fake::POISON;
use shootdown::mm::notifier::{
    IntervalNotifier, IntervalNotifierOps, IntervalSubscription, NotifierRange,
};
use shootdown::mm::pgtable::descriptor::{MemoryType, Permissions};
use shootdown::mm::phys::FrameAllocator;
use shootdown::mm::{PhysAddr, VirtAddr};

use crate::slot::{cpu_word, Kind};
use crate::{at, bump, Rng, Shared, PAGE, WORDS};

/// The longest run of pages one `munmap` or `mprotect` covers, and one notifier watches
/// (besides the rare long runs).
const MAX_RUN: usize = 8;

/// The shortest long run: one range TLBI covers at most 32 pages at the smallest scale, so
/// this many need several commands exactly, and the driver's free cover may send one
/// (`Plan::cover`) over pages around them that another thread may map meanwhile.
const LONG_RUN: usize = 33;

/// An interval subscriber that counts the invalidations it is told about.
struct Watcher {
    /// The user lock `set_seq` is called under (the collision-retry protocol's).
    lock: Mutex<()>,
    seen: AtomicU64,
}

impl IntervalNotifierOps for Watcher {
    fn invalidate(&self, sub: &IntervalNotifier, _range: &NotifierRange, cur_seq: u64) -> bool {
        let _user = self.lock.lock().unwrap();
        sub.set_seq(cur_seq);
        self.seen.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// A watched run of this thread's slots.
struct Watch {
    space: usize,
    first: usize,
    pages: usize,
    watcher: Arc<Watcher>,
    _sub: IntervalSubscription,
}

/// A mapped page of this thread.
#[derive(Clone, Copy)]
struct Page {
    frame: PhysAddr,
    writable: bool,
    /// While read-only: the frame's contents when the downgrade returned.
    frozen: Option<u64>,
}

pub struct Cpu<'s, 'w> {
    s: &'s Shared<'w>,
    id: usize,
    rng: Rng,
    pool: Vec<PhysAddr>,
    /// Per space, per owned slot.
    pages: Vec<Vec<Option<Page>>>,
    watch: Option<Watch>,
}

impl<'s, 'w> Cpu<'s, 'w> {
    pub fn new(s: &'s Shared<'w>, id: usize, seed: u64) -> Self {
        let per_cpu = s.params.slots_per_cpu;
        Cpu {
            s,
            id,
            rng: Rng::new(seed),
            pool: Vec::new(),
            pages: vec![vec![None; per_cpu]; s.spaces.len()],
            watch: None,
        }
    }

    /// Runs until the devices are done, then unmaps everything it mapped.
    pub fn run(mut self) {
        while !self.s.done() {
            self.step();
            // Host threads outnumber cores: let the devices run between two operations.
            std::thread::yield_now();
        }
        self.watch = None;
        for space in 0..self.pages.len() {
            for i in 0..self.pages[space].len() {
                if self.pages[space][i].is_some() {
                    self.unmap_run(space, i, 1);
                }
            }
        }
        for frame in self.pool.drain(..) {
            self.s.world.mem.free(frame);
        }
    }

    fn step(&mut self) {
        if self.rng.below(100) < 4 {
            self.toggle_watch();
            return;
        }
        let space = self.rng.below(self.pages.len() as u64) as usize;
        if self.rng.below(100) < 2 && self.pages[space].len() >= LONG_RUN {
            self.long_run(space);
            return;
        }
        let i = self.rng.below(self.pages[space].len() as u64) as usize;
        if self.pages[space][i].is_none() {
            self.map(space, i);
            return;
        }
        // Unmaps take runs, maps one page: unmap less often, so about half the slots are mapped.
        if self.rng.below(3) == 0 {
            let run = self.run_from(space, i, |_| true);
            self.unmap_run(space, i, run);
        } else {
            // Only pages the flip changes: the checker takes every page of a noted change to
            // have been invalidated, so an unchanged page's older IOTLB entry would look stale.
            let writable = self.pages[space][i].is_some_and(|p| p.writable);
            let run = self.run_from(space, i, |p| p.writable == writable);
            self.protect_run(space, i, run);
        }
    }

    /// Maps every free slot of a run of [`LONG_RUN`] or more pages, then unmaps it whole. (Not
    /// an mprotect: the run's pages differ in writability, and a flip may only name pages it
    /// changes.)
    fn long_run(&mut self, space: usize) {
        let per_cpu = self.pages[space].len();
        let len = LONG_RUN + self.rng.below((per_cpu - LONG_RUN + 1) as u64) as usize;
        let first = self.rng.below((per_cpu - len + 1) as u64) as usize;
        for j in first..first + len {
            if self.pages[space][j].is_none() {
                self.map(space, j);
            }
        }
        // A map finding no frame leaves a hole, which munmap refuses: try another time.
        if self.pages[space][first..first + len].iter().all(Option::is_some) {
            bump(&self.s.c.long_runs);
            self.unmap_run(space, first, len);
        }
    }

    /// The global slot number of owned slot `i`.
    fn slot(&self, i: usize) -> usize {
        self.id * self.s.params.slots_per_cpu + i
    }

    /// Up to [`MAX_RUN`] mapped pages from `i` on that all pass `like` (at least 1: `i`).
    fn run_from(&mut self, space: usize, i: usize, like: impl Fn(&Page) -> bool) -> usize {
        let want = 1 + self.rng.below(MAX_RUN as u64) as usize;
        let pages = &self.pages[space];
        (i..pages.len().min(i + want))
            .take_while(|&j| pages[j].as_ref().is_some_and(&like))
            .count()
            .max(1)
    }

    fn map(&mut self, space: usize, i: usize) {
        let k = self.slot(i);
        let slot = &self.s.spaces[space].slots[k];
        let gen = slot.load().gen() + 1;
        let Some(frame) = self.take_frame() else {
            return;
        };
        let word = cpu_word(space, k, gen);
        for w in 0..WORDS {
            physmem::store(self.s.world.mem, at(frame, w), word, Ordering::Relaxed)
                .expect("pool frames are in the arena");
        }
        let writable = self.rng.below(10) < 7;
        slot.publish(Kind::Changing, gen);
        let r = self.s.spaces[space].user.mmap(
            Placement::Fixed(self.s.va(k)),
            PAGE as usize,
            perms(writable),
            Backing::Physical(frame, MemoryType::Normal),
        );
        bump(&self.s.c.maps);
        match r {
            Ok(_) => {
                let frozen = (!writable).then(|| self.frame_hash(frame));
                self.pages[space][i] = Some(Page {
                    frame,
                    writable,
                    frozen,
                });
                slot.publish(
                    if writable {
                        Kind::ReadWrite
                    } else {
                        Kind::ReadOnly
                    },
                    gen,
                );
            }
            Err(e) => {
                slot.publish(Kind::Unmapped, gen);
                self.give_back(frame);
                self.s
                    .error(format!("CPU {}: mmap of slot {k}: {e}", self.id));
            }
        }
    }

    fn unmap_run(&mut self, space: usize, i: usize, run: usize) {
        self.check_frozen(space, i, run);
        let r = self.changing(space, i, run, |user, va, len| user.munmap(va, len));
        bump(&self.s.c.unmaps);
        for j in i..i + run {
            let k = self.slot(j);
            let page = self.pages[space][j].expect("runs are mapped");
            let gen = self.s.spaces[space].slots[k].load().gen();
            if r.is_err() {
                self.s.spaces[space].slots[k].publish(kind_of(page.writable), gen);
                continue;
            }
            self.s.spaces[space].slots[k].publish(Kind::Unmapped, gen);
            if self.s.spaces[space].user.translate(self.s.va(k)).is_some() {
                self.s.error(format!(
                    "CPU {}: slot {k} still translates after munmap",
                    self.id
                ));
            }
            self.pages[space][j] = None;
            self.give_back(page.frame);
        }
        if let Err(e) = r {
            self.s
                .error(format!("CPU {}: munmap of {run} page(s): {e}", self.id));
        }
    }

    /// Flips the run to the opposite of page `i`'s writability.
    fn protect_run(&mut self, space: usize, i: usize, run: usize) {
        self.check_frozen(space, i, run);
        let writable = !self.pages[space][i].expect("runs are mapped").writable;
        let r = self.changing(space, i, run, |user, va, len| {
            user.mprotect(va, len, perms(writable))
        });
        bump(&self.s.c.protects);
        for j in i..i + run {
            let k = self.slot(j);
            let mut page = self.pages[space][j].expect("runs are mapped");
            if r.is_ok() {
                page.writable = writable;
            }
            page.frozen = (!page.writable).then(|| self.frame_hash(page.frame));
            self.pages[space][j] = Some(page);
            let gen = self.s.spaces[space].slots[k].load().gen();
            self.s.spaces[space].slots[k].publish(kind_of(page.writable), gen);
        }
        if let Err(e) = r {
            self.s
                .error(format!("CPU {}: mprotect of {run} page(s): {e}", self.id));
        }
    }

    /// Runs `op` over the run's range with the slots published as changing, announced to the
    /// model's checker as an unmap window, and checks a notifier watching any of it saw it.
    fn changing<E>(
        &mut self,
        space: usize,
        i: usize,
        run: usize,
        op: impl FnOnce(&crate::User, VirtAddr, usize) -> Result<(), E>,
    ) -> Result<(), E> {
        let first = self.slot(i);
        for k in first..first + run {
            let slots = &self.s.spaces[space].slots;
            slots[k].publish(Kind::Changing, slots[k].load().gen());
        }
        let watched = self
            .watch
            .as_ref()
            .filter(|w| w.space == space && w.first < i + run && i < w.first + w.pages)
            .map(|w| (w.watcher.clone(), w.watcher.seen.load(Ordering::Relaxed)));
        let (start, len) = (self.s.va(first), run * PAGE as usize);
        let end = VirtAddr(start.as_u64() + len as u64);
        let id = self.s.next_unmap.fetch_add(1, Ordering::Relaxed);
        let model = self.s.world.model;
        model.begin_unmap(self.s.spaces[space].asid, start, end, id);
        let r = op(&self.s.spaces[space].user, start, len);
        model.end_unmap(id);
        if let Some((watcher, before)) = watched {
            if r.is_ok() && watcher.seen.load(Ordering::Relaxed) == before {
                bump(&self.s.c.lost_invalidations);
                self.s.error(format!(
                    "CPU {}: the interval notifier over slots missed the change of {start}+{len:#x}",
                    self.id
                ));
            }
        }
        r
    }

    fn toggle_watch(&mut self) {
        if self.watch.take().is_some() {
            bump(&self.s.c.removes);
            return;
        }
        let space = self.rng.below(self.pages.len() as u64) as usize;
        let per_cpu = self.pages[space].len();
        let pages = 1 + self.rng.below(MAX_RUN.min(per_cpu) as u64) as usize;
        let first = self.rng.below((per_cpu - pages + 1) as u64) as usize;
        let watcher = Arc::new(Watcher {
            lock: Mutex::new(()),
            seen: AtomicU64::new(0),
        });
        let start = self.s.va(self.slot(first)).as_u64();
        let mm = self.s.spaces[space].user.mm();
        match IntervalNotifier::insert(mm, start, pages as u64 * PAGE, watcher.clone()) {
            Ok(sub) => {
                // Waits for an invalidation that was running when it was inserted; from then
                // on it is in the tree and sees every change (`mmu_interval_read_begin`).
                let _ = sub.read_begin();
                bump(&self.s.c.inserts);
                self.watch = Some(Watch {
                    space,
                    first,
                    pages,
                    watcher,
                    _sub: sub,
                });
            }
            Err(e) => self
                .s
                .error(format!("CPU {}: interval notifier insert: {e:?}", self.id)),
        }
    }

    /// A frame from the pool (it must still be all poison) or the arena.
    fn take_frame(&mut self) -> Option<PhysAddr> {
        if let Some(frame) = self.pool.pop() {
            let dirty = (0..WORDS)
                .filter(|&w| self.word(frame, w) != POISON)
                .count();
            if dirty > 0 {
                bump(&self.s.c.dirty_frames);
                self.s.error(format!(
                    "CPU {}: {dirty} words of freed frame {frame} changed after its unmap returned",
                    self.id
                ));
            }
            return Some(frame);
        }
        match self.s.world.mem.alloc_zeroed() {
            Ok(f) => Some(f),
            Err(_) => {
                self.s
                    .error(format!("CPU {}: the arena is out of frames", self.id));
                None
            }
        }
    }

    fn give_back(&mut self, frame: PhysAddr) {
        for w in 0..WORDS {
            physmem::store(self.s.world.mem, at(frame, w), POISON, Ordering::Relaxed)
                .expect("pool frames are in the arena");
        }
        self.pool.push(frame);
    }

    /// Read-only pages of the run must hold what they held when the downgrade returned.
    fn check_frozen(&self, space: usize, i: usize, run: usize) {
        for j in i..i + run {
            let Some(Page {
                frame,
                frozen: Some(hash),
                ..
            }) = self.pages[space][j]
            else {
                continue;
            };
            if self.frame_hash(frame) != hash {
                bump(&self.s.c.frozen_writes);
                self.s.error(format!(
                    "CPU {}: read-only slot {} changed after the downgrade returned",
                    self.id,
                    self.slot(j)
                ));
            }
        }
    }

    fn word(&self, frame: PhysAddr, w: usize) -> u64 {
        physmem::load(self.s.world.mem, at(frame, w), Ordering::Relaxed)
            .expect("pool frames are in the arena")
    }

    fn frame_hash(&self, frame: PhysAddr) -> u64 {
        (0..WORDS).fold(0xcbf2_9ce4_8422_2325u64, |h, w| {
            (h ^ self.word(frame, w)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
}

fn perms(writable: bool) -> Permissions {
    if writable {
        Permissions::KERNEL_RW
    } else {
        Permissions::KERNEL_RO
    }
}

fn kind_of(writable: bool) -> Kind {
    if writable {
        Kind::ReadWrite
    } else {
        Kind::ReadOnly
    }
}
