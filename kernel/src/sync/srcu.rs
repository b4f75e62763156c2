//! Sleepable read-copy-update (the role of Linux's SRCU).
//!
//! # The algorithm
//!
//! Readers never write a shared cache line: each CPU slot has its own pair of counters per
//! index, `locks[idx]` and `unlocks[idx]`, only ever incremented. A reader picks the current index
//! (`gp_count & 1`), increments its slot's `locks[idx]`, executes a full fence, and on unlock
//! increments `unlocks[idx]` of whatever slot it is on then (release). Because the counts are
//! monotonic, an updater can tell that every reader of an index has left once
//! `Σ unlocks[idx] == Σ locks[idx]`, provided it sums the unlocks *first*: every unlock it sees
//! has its lock visible too, so equality means no lock counted is still unmatched.
//!
//! `synchronize` (serialised by `gp_lock`) waits for the index readers are *not* using to drain
//! (stragglers that read the index before the previous flip but incremented after it), flips the
//! index, then waits for the old index to drain. A reader that picked the old index after the
//! flip is harmless: its fence pairs with the fence `synchronize` executes before summing, so
//! either `synchronize` sees its lock, or the reader sees every update made before
//! `synchronize` began.
//!
//! # Deferred callbacks
//!
//! [`Srcu::call`] queues work (the `call_srcu` role) without allocating: the work object embeds
//! a [`GpLink`], like an `rcu_head`. Each `synchronize` takes the queue as it stands when the
//! grace period starts and runs it when the grace period ends, still holding `gp_lock`, so
//! batches run in order and [`Srcu::barrier`] is just one more grace period. Callbacks must not
//! call `synchronize`/`barrier` (they run under `gp_lock`) and must not wait.
//!
//! There is no background thread: callbacks run on the next `synchronize`/`barrier` on any CPU,
//! or when the kernel calls [`Srcu::process_callbacks`] from its idle loop.

use alloc::sync::Arc;
use core::marker::PhantomData;

use super::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use super::cell::UnsafeCell;
use super::{current_cpu, notify_waiters, wait_until, SpinLock};

/// Per-CPU counter slots. CPU indices beyond this fold onto existing slots, which is correct
/// (counters are summed), just no longer contention-free.
#[cfg(not(loom))]
pub const SRCU_SLOTS: usize = 8;
/// Per-CPU counter slots (kept small so models stay small).
#[cfg(loom)]
pub const SRCU_SLOTS: usize = 2;

#[repr(align(64))]
struct Slot {
    locks: [AtomicUsize; 2],
    unlocks: [AtomicUsize; 2],
}

impl Slot {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Self {
            locks: [AtomicUsize::new(0), AtomicUsize::new(0)],
            unlocks: [AtomicUsize::new(0), AtomicUsize::new(0)],
        }
    }

    #[cfg(loom)]
    fn new() -> Self {
        Self {
            locks: [AtomicUsize::new(0), AtomicUsize::new(0)],
            unlocks: [AtomicUsize::new(0), AtomicUsize::new(0)],
        }
    }
}

/// Work to run after a grace period. Implementors embed a [`GpLink`] and return it from
/// [`GpWork::gp_link`].
pub trait GpWork: Send + Sync + 'static {
    /// The embedded queue link.
    fn gp_link(&self) -> &GpLink;
    /// Runs once the grace period has elapsed. Must not wait or call `synchronize`.
    fn run(self: Arc<Self>);
}

/// The queue link a [`GpWork`] embeds (the `rcu_head` role).
pub struct GpLink {
    queued: AtomicBool,
    /// Next work in the queue; owned by the queue while `queued` (accessed under the queue lock
    /// or by the one `synchronize` that detached the batch).
    next: UnsafeCell<Option<Arc<dyn GpWork>>>,
}

// SAFETY: `next` is only accessed by whoever owns the link's queue position (under the queue
// lock, or the `synchronize` that detached the batch), so sharing a `GpLink` is race-free.
unsafe impl Sync for GpLink {}
// SAFETY: the link owns an `Arc<dyn GpWork>`, which is `Send`.
unsafe impl Send for GpLink {}

impl Default for GpLink {
    fn default() -> Self {
        Self::new()
    }
}

impl GpLink {
    /// An unqueued link.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            queued: AtomicBool::new(false),
            next: UnsafeCell::new(None),
        }
    }

    /// An unqueued link.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            queued: AtomicBool::new(false),
            next: UnsafeCell::new(None),
        }
    }

    /// # Safety
    /// The caller owns the link's queue position (holds the queue lock, or owns the detached
    /// batch this work is in).
    unsafe fn take_next(&self) -> Option<Arc<dyn GpWork>> {
        // SAFETY: exclusive access per this function's contract.
        self.next.with_mut(|p| unsafe { (*p).take() })
    }

    /// # Safety
    /// As for [`GpLink::take_next`].
    unsafe fn set_next(&self, next: Option<Arc<dyn GpWork>>) {
        // SAFETY: exclusive access per this function's contract.
        self.next.with_mut(|p| unsafe { *p = next });
    }
}

#[derive(Default)]
struct Queue {
    head: Option<Arc<dyn GpWork>>,
    /// Borrowed pointer to the last work (owned through the chain from `head`).
    tail: Option<*const dyn GpWork>,
}

// SAFETY: `tail` only ever points into the chain owned by `head`, which is `Send`.
unsafe impl Send for Queue {}

/// An SRCU domain.
pub struct Srcu {
    slots: [Slot; SRCU_SLOTS],
    /// Number of index flips; readers use `gp_count & 1`.
    gp_count: AtomicUsize,
    /// Serialises grace periods and the running of their callbacks.
    gp_lock: SpinLock<()>,
    queue: SpinLock<Queue>,
}

/// An SRCU read-side critical section; ends on drop. Not `Send`: it is tied to its CPU's
/// accounting the way `srcu_read_lock`/`unlock` are.
#[must_use = "the read-side critical section ends when the guard is dropped"]
pub struct SrcuReadGuard<'a> {
    srcu: &'a Srcu,
    idx: usize,
    _not_send: PhantomData<*const ()>,
}

impl Default for Srcu {
    fn default() -> Self {
        Self::new()
    }
}

impl Srcu {
    /// A domain with no readers and no queued callbacks.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            slots: [const { Slot::new() }; SRCU_SLOTS],
            gp_count: AtomicUsize::new(0),
            gp_lock: SpinLock::new(()),
            queue: SpinLock::new(Queue {
                head: None,
                tail: None,
            }),
        }
    }

    /// A domain with no readers and no queued callbacks.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            slots: core::array::from_fn(|_| Slot::new()),
            gp_count: AtomicUsize::new(0),
            gp_lock: SpinLock::new(()),
            queue: SpinLock::new(Queue::default()),
        }
    }

    /// Enters a read-side critical section (`srcu_read_lock`).
    #[inline]
    pub fn read_lock(&self) -> SrcuReadGuard<'_> {
        let idx = self.gp_count.load(Ordering::Relaxed) & 1;
        self.slot().locks[idx].fetch_add(1, Ordering::Relaxed);
        // Pairs with the fence in `synchronize`: either it sees this lock, or this reader sees
        // every update made before `synchronize` started.
        fence(Ordering::SeqCst);
        SrcuReadGuard {
            srcu: self,
            idx,
            _not_send: PhantomData,
        }
    }

    #[inline]
    fn slot(&self) -> &Slot {
        &self.slots[current_cpu() % SRCU_SLOTS]
    }

    /// Waits until every read-side critical section that began before this call has ended, then
    /// runs the callbacks queued before this call (`synchronize_srcu`).
    ///
    /// Must not be called inside a read-side critical section of this domain (it would wait for
    /// itself) nor from a callback.
    pub fn synchronize(&self) {
        let _gp = self.gp_lock.lock();
        let batch = self.detach_queue();
        // Order the caller's updates (unlinks) before the counter reads below.
        fence(Ordering::SeqCst);
        let current = self.gp_count.load(Ordering::Relaxed) & 1;
        self.wait_for_readers(current ^ 1);
        self.gp_count.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.wait_for_readers(current);
        // Order the counter reads before whatever the caller frees next.
        fence(Ordering::SeqCst);
        run_batch(batch);
    }

    /// Waits until all callbacks queued before this call have run (`srcu_barrier`).
    pub fn barrier(&self) {
        // A grace period runs everything queued before it; earlier batches ran under `gp_lock`
        // before we could take it.
        self.synchronize();
    }

    /// Runs a grace period if callbacks are waiting. For the kernel's idle loop.
    pub fn process_callbacks(&self) {
        if self.queue.lock().head.is_some() {
            self.synchronize();
        }
    }

    /// Queues `work` to run after a grace period (`call_srcu`). Never waits and never
    /// allocates, so it may be called inside a read-side critical section.
    ///
    /// Queuing a work that is already queued is a bug; it is ignored (and asserted in debug).
    pub fn call(&self, work: Arc<dyn GpWork>) {
        let link = work.gp_link();
        if link.queued.swap(true, Ordering::Relaxed) {
            debug_assert!(false, "work queued twice on an SRCU domain");
            return;
        }
        let mut q = self.queue.lock();
        let raw: *const dyn GpWork = Arc::as_ptr(&work);
        match q.tail {
            // SAFETY: `tail` points into the chain owned by `q.head`, and we hold the queue lock.
            Some(tail) => unsafe { (*tail).gp_link().set_next(Some(work)) },
            None => q.head = Some(work),
        }
        q.tail = Some(raw);
    }

    fn detach_queue(&self) -> Option<Arc<dyn GpWork>> {
        let mut q = self.queue.lock();
        q.tail = None;
        q.head.take()
    }

    fn readers_drained(&self, idx: usize) -> bool {
        let unlocks = self.slots.iter().fold(0usize, |sum, s| {
            sum.wrapping_add(s.unlocks[idx].load(Ordering::Acquire))
        });
        // Unlocks are summed first: every unlock seen above makes its lock visible below.
        fence(Ordering::SeqCst);
        let locks = self.slots.iter().fold(0usize, |sum, s| {
            sum.wrapping_add(s.locks[idx].load(Ordering::Relaxed))
        });
        locks == unlocks
    }

    fn wait_for_readers(&self, idx: usize) {
        wait_until(|| self.readers_drained(idx));
    }
}

fn run_batch(mut next: Option<Arc<dyn GpWork>>) {
    while let Some(work) = next {
        // SAFETY: the batch was detached from the queue by this grace period; we own it.
        next = unsafe { work.gp_link().take_next() };
        work.gp_link().queued.store(false, Ordering::Relaxed);
        work.run();
    }
}

impl Drop for Srcu {
    fn drop(&mut self) {
        // Drop a leftover chain iteratively rather than recursively through the links.
        let mut next = self.detach_queue();
        while let Some(work) = next {
            // SAFETY: `&mut self` means nobody else can reach the queue.
            next = unsafe { work.gp_link().take_next() };
        }
    }
}

impl SrcuReadGuard<'_> {
    /// The domain this section belongs to.
    pub fn srcu(&self) -> &Srcu {
        self.srcu
    }
}

impl Drop for SrcuReadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // Release: the section's accesses happen before an updater that sees this unlock.
        self.srcu.slot().unlocks[self.idx].fetch_add(1, Ordering::Release);
        notify_waiters();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Counted {
        link: GpLink,
        id: usize,
        ran: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl GpWork for Counted {
        fn gp_link(&self) -> &GpLink {
            &self.link
        }
        fn run(self: Arc<Self>) {
            self.ran.lock().unwrap().push(self.id);
        }
    }

    #[test]
    fn synchronize_waits_for_a_reader_on_another_thread() {
        let srcu: &'static Srcu = Box::leak(Box::new(Srcu::new()));
        let inside = Arc::new(AtomicBool::new(false));
        let leave = Arc::new(AtomicBool::new(false));
        let reader = {
            let (inside, leave) = (inside.clone(), leave.clone());
            std::thread::spawn(move || {
                let _g = srcu.read_lock();
                inside.store(true, Ordering::SeqCst);
                while !leave.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
                inside.store(false, Ordering::SeqCst);
            })
        };
        while !inside.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let done = Arc::new(AtomicBool::new(false));
        let updater = {
            let done = done.clone();
            std::thread::spawn(move || {
                srcu.synchronize();
                done.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            !done.load(Ordering::SeqCst),
            "synchronize returned while a reader was inside"
        );
        leave.store(true, Ordering::SeqCst);
        updater.join().unwrap();
        reader.join().unwrap();
        assert!(!inside.load(Ordering::SeqCst));
    }

    #[test]
    fn readers_starting_after_synchronize_do_not_hold_it_up() {
        let srcu = Srcu::new();
        let g = srcu.read_lock();
        drop(g);
        srcu.synchronize();
        srcu.synchronize();
        let _g = srcu.read_lock();
    }

    #[test]
    fn callbacks_run_after_a_grace_period_in_order_and_barrier_drains_them() {
        let srcu = Srcu::new();
        let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
        let work = |id| {
            Arc::new(Counted {
                link: GpLink::new(),
                id,
                ran: ran.clone(),
            })
        };
        let (a, b, c) = (work(1), work(2), work(3));
        {
            let _g = srcu.read_lock();
            srcu.call(a.clone());
            srcu.call(b.clone());
            srcu.call(c.clone());
            assert!(
                ran.lock().unwrap().is_empty(),
                "callbacks ran inside the read section"
            );
        }
        srcu.barrier();
        assert_eq!(*ran.lock().unwrap(), [1, 2, 3]);
        // Once run, a work may be queued again.
        srcu.call(a.clone());
        srcu.process_callbacks();
        assert_eq!(*ran.lock().unwrap(), [1, 2, 3, 1]);
        assert_eq!(Arc::strong_count(&a), 1, "the queue kept a reference");
    }

    #[test]
    fn readers_fold_onto_slots_beyond_the_slot_count() {
        let srcu: &'static Srcu = Box::leak(Box::new(Srcu::new()));
        let threads: Vec<_> = (0..SRCU_SLOTS + 3)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _g = srcu.read_lock();
                    }
                })
            })
            .collect();
        for _ in 0..20 {
            srcu.synchronize();
        }
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert!(srcu.readers_drained(0) && srcu.readers_drained(1));
    }
}
