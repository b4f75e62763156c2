//! Loom models of the notifier's concurrency core:
//!
//! * the grace period (`synchronize`) and deferred callbacks (`call`/`barrier`);
//! * the collision-retry protocol (no stale shadow PTE), with the lock-free `read_begin`;
//! * `remove` racing the last `inv_end` over the deferred list (319561669a59);
//! * an insert during full exclusion (deferred add; the lock-free tree walk is never raced);
//! * teardown racing `unregister` (3ad3d901, 751efd86, d34883d4).
//!
//! ```text
//! LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" cargo test -p shootdown --release --test loom_notifier
//! ```
//!
//! Each safety model has a `*_fails_*` twin with the protection switched off (a debug knob of
//! the address space, or a broken subscriber), which loom must catch (`should_panic`): the
//! models can fail. The preemption bound defaults to 2 when `LOOM_MAX_PREEMPTIONS` is unset.
#![cfg(loom)]

use std::mem::ManuallyDrop;
use std::sync::Arc;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use loom::sync::Mutex;
use loom::thread;
use shootdown::mm::notifier::{
    IntervalNotifier, IntervalNotifierOps, MmCore, MmuNotifier, MmuNotifierOps, NotifierRange,
    NotifyEvent, OpSet,
};
use shootdown::sync::{set_model_cpu, GpLink, GpWork, Srcu};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

fn private_srcu() -> &'static Srcu {
    Box::leak(Box::new(Srcu::new()))
}

// ---- grace period -------------------------------------------------------------------------------

struct Object {
    data: UnsafeCell<u64>,
}

/// A reader that found the old object may use it until its section ends; the updater "frees" it
/// (writes) after `synchronize`. Loom reports a race if `synchronize` returned too early.
fn grace_period(synchronize: bool) {
    model(move || {
        let srcu = private_srcu();
        let old = Box::into_raw(Box::new(Object {
            data: UnsafeCell::new(1),
        }));
        let new = Box::into_raw(Box::new(Object {
            data: UnsafeCell::new(2),
        }));
        let published = Arc::new(AtomicPtr::new(old));
        let reader = {
            let published = published.clone();
            thread::spawn(move || {
                set_model_cpu(1);
                let _g = srcu.read_lock();
                let p = published.load(Ordering::Acquire);
                // SAFETY: objects are freed only after a grace period following unpublishing.
                let v = unsafe { (*p).data.with(|d| *d) };
                assert!(v == 1 || v == 2);
            })
        };
        published.store(new, Ordering::Release);
        if synchronize {
            srcu.synchronize();
        }
        // "Free" the old object: a write loom checks against the reader's read.
        // SAFETY: `old` is still allocated (freed at the end of the model).
        unsafe { (*old).data.with_mut(|d| *d = 0xdead) };
        reader.join().unwrap();
        // SAFETY: both were leaked from boxes above and nobody uses them any more.
        unsafe {
            drop(Box::from_raw(old));
            drop(Box::from_raw(new));
        }
    });
}

#[test]
fn grace_period_waits_for_a_reader_that_may_see_the_old_object() {
    grace_period(true);
}

#[test]
#[should_panic]
fn grace_period_model_fails_without_synchronize() {
    grace_period(false);
}

// ---- collision-retry protocol -------------------------------------------------------------------

/// A device mirror in the style of test_hmm: its shadow PTE is established under `user_lock` only
/// if `read_retry` says no invalidation collided, and cleared by `invalidate`.
struct Mirror {
    user_lock: Mutex<Option<u64>>,
    set_seq: bool,
}

impl IntervalNotifierOps for Mirror {
    fn invalidate(&self, sub: &IntervalNotifier, _range: &NotifierRange, cur_seq: u64) -> bool {
        let mut spte = self.user_lock.lock().unwrap();
        if self.set_seq {
            sub.set_seq(cur_seq);
        }
        *spte = None;
        true
    }
}

/// The invalidator changes the "CPU PTE" (a generation counter) between start and end; the
/// reader copies it into the shadow PTE. After both, the shadow PTE is empty or current.
/// `read_begin` takes no lock; `mm_seq_first` makes it load the sequences in the wrong order.
fn collision_retry(set_seq: bool, mm_seq_first: bool) {
    model(move || {
        let mm = MmCore::with_grace_domain(private_srcu());
        mm.debug_knobs()
            .read_begin_reads_mm_seq_first
            .store(mm_seq_first, std::sync::atomic::Ordering::Relaxed);
        let pte = Arc::new(AtomicU64::new(1));
        let mirror = Arc::new(Mirror {
            user_lock: Mutex::new(None),
            set_seq,
        });
        let sub = Arc::new(IntervalNotifier::insert(&mm, 0x1000, 0x1000, mirror.clone()).unwrap());
        let invalidator = {
            let (mm, pte) = (mm.clone(), pte.clone());
            thread::spawn(move || {
                set_model_cpu(1);
                let lock = mm.mmap_read();
                let range = NotifierRange::new(NotifyEvent::Clear, 0x1000, 0x2000).unwrap();
                let inv = lock.invalidate_range_start(range);
                pte.store(2, Ordering::Relaxed);
                inv.end();
            })
        };
        // The device fault path, once (a real one loops on retry).
        let seq = sub.read_begin();
        let value = pte.load(Ordering::Relaxed);
        {
            let mut spte = mirror.user_lock.lock().unwrap();
            if !sub.read_retry(seq) {
                *spte = Some(value);
            }
        }
        invalidator.join().unwrap();
        let spte = *mirror.user_lock.lock().unwrap();
        assert!(
            spte.is_none() || spte == Some(pte.load(Ordering::Relaxed)),
            "stale shadow PTE {spte:?}"
        );
        drop(Arc::into_inner(sub));
    });
}

#[test]
fn collision_retry_never_leaves_a_stale_shadow_pte() {
    collision_retry(true, false);
}

#[test]
#[should_panic(expected = "stale shadow PTE")]
fn collision_retry_model_fails_when_invalidate_skips_set_seq() {
    collision_retry(false, false);
}

/// The lock-free `read_begin` must load the subscription's sequence before the address
/// space's; the other way round it can return the sequence of a running invalidation.
#[test]
#[should_panic(expected = "stale shadow PTE")]
fn collision_retry_model_fails_when_read_begin_loads_the_sequences_in_the_wrong_order() {
    collision_retry(true, true);
}

// ---- remove vs the last inv_end (319561669a59) ---------------------------------------------------

struct Quiet;

impl IntervalNotifierOps for Quiet {
    fn invalidate(&self, sub: &IntervalNotifier, _range: &NotifierRange, cur_seq: u64) -> bool {
        sub.set_seq(cur_seq);
        true
    }
}

/// An invalidation holds the subscription in full exclusion while another thread removes it, so
/// the removal goes on the deferred list. When `remove` returns, the core must hold no reference
/// to the subscription (in C: the caller may `kfree` it).
fn remove_vs_inv_end(unlocked_seq_read: bool) {
    model(move || {
        let mm = MmCore::with_grace_domain(private_srcu());
        mm.debug_knobs()
            .remove_reads_seq_unlocked
            .store(unlocked_seq_read, std::sync::atomic::Ordering::Relaxed);
        let sub = IntervalNotifier::insert(&mm, 0x1000, 0x1000, Arc::new(Quiet)).unwrap();
        let weak = Arc::downgrade(sub.notifier());
        let lock = mm.mmap_read();
        let inv = lock.invalidate_range_start(
            NotifierRange::new(NotifyEvent::Unmap, 0x1000, 0x2000).unwrap(),
        );
        let remover = thread::spawn(move || {
            set_model_cpu(1);
            sub.remove();
            assert!(
                weak.upgrade().is_none(),
                "remove returned while the subscription was still deferred"
            );
        });
        inv.end();
        drop(lock);
        remover.join().unwrap();
    });
}

#[test]
fn remove_returns_only_after_the_deferred_list_is_processed() {
    remove_vs_inv_end(false);
}

#[test]
#[should_panic(expected = "still deferred")]
fn remove_model_fails_with_an_unlocked_sequence_read() {
    remove_vs_inv_end(true);
}

// ---- deferred callbacks (call_srcu) --------------------------------------------------------------

struct FreeLater {
    link: GpLink,
    object: *mut Object,
}

// SAFETY: the raw pointer is only dereferenced by `run`, after the grace period.
unsafe impl Send for FreeLater {}
// SAFETY: as above.
unsafe impl Sync for FreeLater {}

impl GpWork for FreeLater {
    fn gp_link(&self) -> &GpLink {
        &self.link
    }
    fn run(self: Arc<Self>) {
        // SAFETY: the object is still allocated; the write models freeing it.
        unsafe { (*self.object).data.with_mut(|d| *d = 0xdead) };
    }
}

/// The updater unpublishes and queues the free without waiting; a third party's grace period
/// runs it. Loom reports a race if it ran before the reader's section ended.
#[test]
fn deferred_callback_runs_only_after_readers_that_may_see_the_object() {
    model(|| {
        let srcu = private_srcu();
        let old = Box::into_raw(Box::new(Object {
            data: UnsafeCell::new(1),
        }));
        let published = Arc::new(AtomicPtr::new(old));
        let reader = {
            let published = published.clone();
            thread::spawn(move || {
                set_model_cpu(1);
                let _g = srcu.read_lock();
                let p = published.load(Ordering::Acquire);
                if !p.is_null() {
                    // SAFETY: freed only after a grace period following unpublishing.
                    unsafe { (*p).data.with(|d| assert_eq!(*d, 1)) };
                }
            })
        };
        published.store(std::ptr::null_mut(), Ordering::Release);
        srcu.call(Arc::new(FreeLater {
            link: GpLink::new(),
            object: old,
        }));
        let gp = thread::spawn(move || srcu.barrier());
        gp.join().unwrap();
        reader.join().unwrap();
        // SAFETY: leaked above; every user is done.
        unsafe { drop(Box::from_raw(old)) };
    });
}

// ---- teardown vs unregister (3ad3d901, 751efd86, d34883d4) ----------------------------------------

struct Releaser {
    me: std::sync::OnceLock<std::sync::Weak<MmuNotifier>>,
    releases: loom::sync::atomic::AtomicUsize,
    saw_linked: loom::sync::atomic::AtomicBool,
}

impl MmuNotifierOps for Releaser {
    fn implemented(&self) -> OpSet {
        OpSet::RELEASE
    }
    fn release(&self, _mm: &MmCore) {
        self.releases.fetch_add(1, Ordering::SeqCst);
        if let Some(me) = self.me.get().and_then(|w| w.upgrade()) {
            if me.is_linked() {
                self.saw_linked.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Teardown (`mmput`) races `unregister`: no crash or double unlink, `release` runs once or
/// twice, and at least one `release` runs while the subscriber is still linked.
fn teardown_vs_unregister(unlink_before_release: bool) {
    model(move || {
        let mm = MmCore::with_grace_domain(private_srcu());
        mm.debug_knobs()
            .unlink_before_release
            .store(unlink_before_release, std::sync::atomic::Ordering::Relaxed);
        let ops = Arc::new(Releaser {
            me: std::sync::OnceLock::new(),
            releases: loom::sync::atomic::AtomicUsize::new(0),
            saw_linked: loom::sync::atomic::AtomicBool::new(false),
        });
        let sub = MmuNotifier::register(&mm, ops.clone()).unwrap();
        ops.me.set(Arc::downgrade(&sub)).unwrap();
        let teardown = {
            let mm = mm.clone();
            thread::spawn(move || {
                set_model_cpu(1);
                assert!(mm.mmput());
            })
        };
        sub.unregister();
        teardown.join().unwrap();
        let releases = ops.releases.load(Ordering::SeqCst);
        assert!((1..=2).contains(&releases), "{releases} releases");
        assert!(
            ops.saw_linked.load(Ordering::SeqCst),
            "unlinked before release"
        );
    });
}

#[test]
fn teardown_racing_unregister_releases_while_linked() {
    teardown_vs_unregister(false);
}

#[test]
#[should_panic(expected = "unlinked before release")]
fn teardown_model_fails_when_unlinking_before_release() {
    teardown_vs_unregister(true);
}

// ---- insert during full exclusion (the deferred add) ---------------------------------------------

/// An insert races an invalidation that walks the tree without the lock. The insert must be
/// deferred while the tree is fully excluded (loom's cell tracking reports a concurrent write
/// otherwise), and the new subscription must end up linked and not "being invalidated".
fn insert_vs_invalidation(ignore_exclusion: bool) {
    model(move || {
        let mm = MmCore::with_grace_domain(private_srcu());
        mm.debug_knobs()
            .insert_ignores_exclusion
            .store(ignore_exclusion, std::sync::atomic::Ordering::Relaxed);
        // Not dropped on unwinding: after a detected violation, a removal would touch a poisoned
        // model lock and abort the whole test binary instead of failing this test.
        let first = ManuallyDrop::new(
            IntervalNotifier::insert(&mm, 0x1000, 0x1000, Arc::new(Quiet)).unwrap(),
        );
        let invalidator = {
            let mm = mm.clone();
            thread::spawn(move || {
                set_model_cpu(1);
                let lock = mm.mmap_read();
                let range = NotifierRange::new(NotifyEvent::Clear, 0x1000, 0x3000).unwrap();
                lock.invalidate_range_start(range).end();
            })
        };
        let second = ManuallyDrop::new(
            IntervalNotifier::insert(&mm, 0x2000, 0x1000, Arc::new(Quiet)).unwrap(),
        );
        invalidator.join().unwrap();
        let seq = second.read_begin(); // must not wait: every invalidation has ended
        assert!(!second.read_retry(seq));
        ManuallyDrop::into_inner(second).remove();
        ManuallyDrop::into_inner(first).remove();
    });
}

#[test]
fn insert_during_full_exclusion_is_deferred() {
    insert_vs_invalidation(false);
}

#[test]
#[should_panic]
fn insert_model_fails_when_the_tree_changes_under_a_walker() {
    insert_vs_invalidation(true);
}
