//! The per-address-space subscription state (`struct mmu_notifier_subscriptions`).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ptr;

use super::interval::IntervalNotifier;
use super::interval_tree::{DetachedNode, IntervalTree};
use super::list::MmuNotifier;
use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use crate::sync::cell::UnsafeCell;
use crate::sync::{SpinLock, SpinLockGuard, WaitQueue};

/// The interval tree of interval subscribers.
pub(crate) type Itree = IntervalTree<Arc<IntervalNotifier>>;

/// A tree update postponed to the last `inv_end` because the tree was fully excluded.
pub(crate) enum Deferred {
    /// Link this node (an insertion made while the tree was fully excluded).
    Insert(DetachedNode<Arc<IntervalNotifier>>),
    /// Unlink the node with this key (a removal made while the tree was fully excluded).
    Remove { start: u64, tag: usize },
}

/// State changed only under [`Subscriptions::lock`].
pub(crate) struct Locked {
    /// Invalidations between `inv_start` and `inv_end`, nested or parallel.
    pub(crate) active_invalidate_ranges: u64,
    /// Tree updates waiting for the last `inv_end`.
    pub(crate) deferred: Vec<Deferred>,
    /// Live interval subscriptions. `deferred` always has room for this many more entries, so
    /// queueing one never allocates (removal cannot fail).
    pub(crate) intervals: usize,
    /// The tag the next interval to enter the tree gets: ties between equal starts are walked
    /// in the order the intervals entered (see [`Locked::stamp`]).
    next_tag: usize,
}

impl Locked {
    /// Stamps `node` as the next interval to enter the tree, and tells its subscription its key.
    pub(crate) fn stamp(&mut self, node: &mut DetachedNode<Arc<IntervalNotifier>>) {
        let tag = self.next_tag;
        self.next_tag += 1;
        node.set_tag(tag);
        node.node().value().set_tree_tag(tag);
    }
}

/// Everything an address space knows about its subscribers. Allocated on first registration,
/// freed when the address space is destroyed.
pub(crate) struct Subscriptions {
    /// Head of the list of list subscribers. Readers walk it under the grace-period domain;
    /// writers change it under `lock`. Each linked node holds one `Arc` count (the "list
    /// reference") of its subscriber.
    pub(crate) list: AtomicPtr<MmuNotifier>,
    /// Interval subscribers have been enabled (set once, under the mmap write lock).
    pub(crate) has_itree: AtomicBool,
    /// The collision-retry sequence: even = no interval subscriber is being invalidated, odd =
    /// the tree is fully excluded. Written under `lock`; read lock-free by `read_begin`.
    pub(crate) invalidate_seq: AtomicU64,
    pub(crate) lock: SpinLock<Locked>,
    /// The interval tree. Written only under `lock` while `invalidate_seq` is even; read under
    /// `lock`, or without it by an invalidation that holds full exclusion.
    pub(crate) itree: UnsafeCell<Itree>,
    /// Where `read_begin` and `remove` wait for the last `inv_end`.
    pub(crate) wq: WaitQueue,
}

// SAFETY: `list` nodes are `Arc<MmuNotifier>` (Send + Sync); the tree cell is only accessed under
// the protocol documented on `itree` (writes exclusive under the lock, lock-free reads only in full
// exclusion, when nobody writes).
unsafe impl Sync for Subscriptions {}
// SAFETY: as above; the structure owns its contents.
unsafe impl Send for Subscriptions {}

/// The first sequence value (even: idle). Any even value works; 2 is what Linux uses.
pub(crate) const INITIAL_SEQ: u64 = 2;

impl Subscriptions {
    pub(crate) fn new() -> Self {
        Self {
            list: AtomicPtr::new(ptr::null_mut()),
            has_itree: AtomicBool::new(false),
            invalidate_seq: AtomicU64::new(INITIAL_SEQ),
            lock: SpinLock::new(Locked {
                active_invalidate_ranges: 0,
                deferred: Vec::new(),
                intervals: 0,
                next_tag: 0,
            }),
            itree: UnsafeCell::new(IntervalTree::new()),
            wq: WaitQueue::new(),
        }
    }

    /// True if no list subscriber is linked.
    #[inline]
    pub(crate) fn list_is_empty(&self) -> bool {
        self.list.load(Ordering::Relaxed).is_null()
    }

    /// True if some interval subscriber is being invalidated (`mn_itree_is_invalidating`).
    pub(crate) fn is_invalidating(&self, _locked: &SpinLockGuard<'_, Locked>) -> bool {
        self.invalidate_seq.load(Ordering::Relaxed) & 1 == 1
    }

    /// Reads the tree under the lock.
    pub(crate) fn with_tree<R>(
        &self,
        _locked: &SpinLockGuard<'_, Locked>,
        f: impl FnOnce(&Itree) -> R,
    ) -> R {
        // SAFETY: writers hold the lock, which we hold.
        self.itree.with(|t| f(unsafe { &*t }))
    }

    /// Changes the tree: under the lock and outside full exclusion, so no lock-free reader exists.
    pub(crate) fn with_tree_mut<R>(
        &self,
        locked: &mut SpinLockGuard<'_, Locked>,
        f: impl FnOnce(&mut Itree) -> R,
    ) -> R {
        debug_assert!(
            !self.is_invalidating(locked),
            "tree changed while fully excluded"
        );
        // SAFETY: we hold the lock (excluding locked readers and writers) and the tree is not
        // fully excluded by a running invalidation (excluding lock-free readers).
        self.itree.with_mut(|t| f(unsafe { &mut *t }))
    }

    /// Reads the tree without the lock.
    ///
    /// # Safety
    /// The caller holds full exclusion: it is counted in `active_invalidate_ranges` and saw
    /// `invalidate_seq` odd, and has not yet run its `inv_end`. Until then the sequence stays
    /// odd and every tree update is deferred.
    pub(crate) unsafe fn with_tree_excluded<R>(&self, f: impl FnOnce(&Itree) -> R) -> R {
        // SAFETY: per the contract, no writer can run until our own `inv_end`.
        self.itree.with(|t| f(unsafe { &*t }))
    }
}
