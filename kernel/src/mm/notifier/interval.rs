//! Interval subscribers (`struct mmu_interval_notifier`): each watches one range of addresses,
//! found through the interval tree, and pairs with the collision-retry read side.

use alloc::sync::Arc;
use core::ops::Deref;

use super::error::{InvalidArgument, NotifierError, Overflow};
use super::interval_tree::{DetachedNode, NodeError};
use super::list::register_subscriber;
use super::lockdep;
use super::mm::{MmCore, MmapWriteGuard};
use super::range::NotifierRange;
use super::subscriptions::{Deferred, Subscriptions};
use super::WouldBlock;
use crate::sync::atomic::{AtomicU64, Ordering};

/// The operation of an interval subscriber (`struct mmu_interval_notifier_ops`).
pub trait IntervalNotifierOps: Send + Sync + 'static {
    /// `range` intersects the subscription: take the user lock, call
    /// [`IntervalNotifier::set_seq`]`(cur_seq)` unconditionally, drop the secondary mappings in
    /// the range. Return false only if that would sleep and `range` is not blockable.
    fn invalidate(&self, sub: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool;
}

/// An interval subscription's shared state.
pub struct IntervalNotifier {
    mm: Arc<MmCore>,
    start: u64,
    last: u64,
    ops: Arc<dyn IntervalNotifierOps>,
    /// The subscription's sequence: equal to the address space's odd sequence while it is being
    /// invalidated. Written by `set_seq` under the user lock.
    invalidate_seq: AtomicU64,
    /// The tie-breaking tag of its tree node, stamped when it entered the tree
    /// ([`NOT_STAMPED`] before). Written and read
    /// only under the subscriptions' lock (an atomic only to be shareable; never loom's, as no
    /// thread reads it without the lock).
    tree_tag: core::sync::atomic::AtomicUsize,
}

/// The owner's handle of an inserted interval subscription. Dropping it removes the
/// subscription (waiting like [`IntervalSubscription::remove`]).
pub struct IntervalSubscription {
    sub: Arc<IntervalNotifier>,
}

impl IntervalNotifier {
    /// Watches `[start, start + length)` of `mm` (`mmu_interval_notifier_insert`). May take the
    /// mmap write lock (the first interval subscription of an address space enables the tree).
    /// The caller must hold a user reference of `mm`.
    ///
    /// On return the subscription may not be in the tree yet (an invalidation was running): use
    /// [`IntervalNotifier::read_begin`] before establishing mappings, as always.
    pub fn insert<T: IntervalNotifierOps>(
        mm: &MmCore,
        start: u64,
        length: u64,
        ops: Arc<T>,
    ) -> Result<IntervalSubscription, NotifierError> {
        let last = checked_last(start, length)?;
        let subs = match mm.subscriptions() {
            Some(subs) if subs.has_itree.load(Ordering::Acquire) => subs,
            _ => {
                let lock = mm.mmap_write();
                register_subscriber(&lock, None)?;
                mm.subscriptions_of_subscribed()
            }
        };
        insert_into(mm, subs, start, last, ops)
    }

    /// [`IntervalNotifier::insert`] with the mmap write lock already held.
    pub fn insert_locked<T: IntervalNotifierOps>(
        lock: &MmapWriteGuard<'_>,
        start: u64,
        length: u64,
        ops: Arc<T>,
    ) -> Result<IntervalSubscription, NotifierError> {
        let last = checked_last(start, length)?;
        let mm = lock.mm();
        match mm.subscriptions() {
            Some(subs) if subs.has_itree.load(Ordering::Relaxed) => {}
            _ => register_subscriber(lock, None)?,
        }
        insert_into(mm, mm.subscriptions_of_subscribed(), start, last, ops)
    }

    /// Begins a read-side critical section (`mmu_interval_read_begin`): returns the sequence to
    /// hand to [`IntervalNotifier::read_retry`]. Waits while an invalidation of this
    /// subscription is in progress, so it must not be called with a lock that `invalidate`
    /// takes held, nor from a callback. `read_retry` may already be true on return: the caller
    /// loops and bounds the time it spends.
    ///
    /// **Deviation from 6.10**, which reads both sequences under the address space's spin lock:
    /// every device fault then writes that lock's cache line, and readers on several CPUs
    /// serialise on it (`make bench`, `read_side`). Here the read side only loads:
    ///
    /// ```text
    ///   invalidation                            read_begin
    ///   mm_seq = V (odd)   [inv_start, locked]  s = sub.seq        (acquire)
    ///   sub.seq = V        [set_seq, release]   m = mm_seq         (acquire)
    ///   ...                                     s == m: wait until mm_seq != s
    ///   mm_seq = V + 1     [inv_end, release]
    /// ```
    ///
    /// What the lock guaranteed is that `read_begin` never returns `V` while the invalidation
    /// that stored `V` is still running (a concurrent one would store the same `V`, which
    /// `read_retry` could not tell apart). Reading `sub.seq` first, with acquire, gives that:
    /// if it returns `V`, the store `mm_seq = V` happened before (it precedes `set_seq` in
    /// the invalidating thread, or in the one whose `inv_start` it found odd, through the
    /// lock), so `mm_seq` reads `V` until that invalidation's `inv_end`. Any older `s` differs
    /// from every later `V` and `read_retry` catches the collision as before; an `m` read after
    /// `inv_end` (acquire) also makes the page-table changes made before it visible.
    pub fn read_begin(&self) -> u64 {
        lockdep::assert_may_wait("IntervalNotifier::read_begin");
        let subs = self.subscriptions();
        let (seq, current) = if read_begin_reads_mm_seq_first(&self.mm) {
            let current = subs.invalidate_seq.load(Ordering::Acquire);
            (self.invalidate_seq.load(Ordering::Acquire), current)
        } else {
            let seq = self.invalidate_seq.load(Ordering::Acquire);
            (seq, subs.invalidate_seq.load(Ordering::Acquire))
        };
        // `seq` is odd (set_seq always stores the odd current value), and the address space's
        // sequence is even once idle, so this wait ends even if the sequence wraps.
        if seq == current {
            subs.wq
                .wait_until(|| subs.invalidate_seq.load(Ordering::Acquire) != seq);
        }
        seq
    }

    /// True if an invalidation collided with the critical section begun by the `read_begin`
    /// that returned `seq` (`mmu_interval_read_retry`). Must be called under the user lock
    /// that `invalidate` holds around `set_seq`; exactly once per `read_begin`.
    pub fn read_retry(&self, seq: u64) -> bool {
        self.invalidate_seq.load(Ordering::Relaxed) != seq
    }

    /// Lock-free early check (`mmu_interval_check_retry`): true is reliable, false only a hint.
    pub fn check_retry(&self, seq: u64) -> bool {
        self.invalidate_seq.load(Ordering::Relaxed) != seq
    }

    /// Records the invalidation in progress (`mmu_interval_set_seq`): call it from `invalidate`
    /// under the user lock, with the `cur_seq` passed in. Release: a `read_begin` that reads
    /// `cur_seq` also sees the address space's sequence made odd before it (see there).
    pub fn set_seq(&self, cur_seq: u64) {
        debug_assert!(cur_seq & 1 == 1, "invalidation sequences are odd");
        self.invalidate_seq.store(cur_seq, Ordering::Release);
    }

    /// First watched address.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Last watched address (inclusive).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The address space watched.
    pub fn mm(&self) -> &Arc<MmCore> {
        &self.mm
    }

    /// The operations.
    pub fn ops(&self) -> &dyn IntervalNotifierOps {
        &*self.ops
    }

    fn subscriptions(&self) -> &Subscriptions {
        self.mm.subscriptions_of_subscribed()
    }

    /// Its tree node's tag; call under the subscriptions' lock.
    pub(crate) fn tree_tag(&self) -> usize {
        self.tree_tag.load(core::sync::atomic::Ordering::Relaxed)
    }

    /// Records the tag its tree node was stamped with; call under the subscriptions' lock.
    pub(crate) fn set_tree_tag(&self, tag: usize) {
        self.tree_tag
            .store(tag, core::sync::atomic::Ordering::Relaxed);
    }
}

/// The tree tag of a subscription that has not entered the tree yet (stamps count up from 0).
const NOT_STAMPED: usize = usize::MAX;

/// The inclusive end of `[start, start + length)`; length 0 and overflow are errors.
fn checked_last(start: u64, length: u64) -> Result<u64, NotifierError> {
    let len_minus_one = length.checked_sub(1).ok_or(Overflow::ZeroLength)?;
    Ok(start
        .checked_add(len_minus_one)
        .ok_or(Overflow::IntervalEnd)?)
}

/// `__mmu_interval_notifier_insert`.
fn insert_into<T: IntervalNotifierOps>(
    mm: &MmCore,
    subs: &Subscriptions,
    start: u64,
    last: u64,
    ops: Arc<T>,
) -> Result<IntervalSubscription, NotifierError> {
    // A subscription inserted after teardown's release would never be released (c9682d10:
    // the check is on users, not on the grab count).
    if mm.users() == 0 {
        log::warn!("mmu interval notifier: insert on an address space without users");
        return Err(InvalidArgument::NoLiveUsers.into());
    }
    let sub = Arc::new(IntervalNotifier {
        mm: mm.mmgrab(),
        start,
        last,
        ops,
        invalidate_seq: AtomicU64::new(0),
        tree_tag: core::sync::atomic::AtomicUsize::new(NOT_STAMPED),
    });
    // The tag is stamped when the node enters the tree.
    let mut node = DetachedNode::try_new(start, last, 0, sub.clone()).map_err(|e| match e {
        NodeError::OutOfMemory => NotifierError::OutOfMemory,
        NodeError::EmptyInterval => NotifierError::Overflow(Overflow::IntervalEnd),
    })?;
    let mut locked = subs.lock.lock();
    // Room for this subscription's future deferred entry, so `remove` never allocates.
    let room = locked.intervals + 1;
    locked
        .deferred
        .try_reserve(room)
        .map_err(|_| NotifierError::OutOfMemory)?;
    locked.intervals += 1;
    let seq = subs.invalidate_seq.load(Ordering::Relaxed);
    if locked.active_invalidate_ranges == 0 {
        // Idle: an odd sequence that is not the current one, and will not be for a long while.
        debug_assert!(seq & 1 == 0);
        sub.invalidate_seq
            .store(seq.wrapping_sub(1), Ordering::Relaxed);
        locked.stamp(&mut node);
        subs.with_tree_mut(&mut locked, |t| t.insert(node));
    } else if subs.is_invalidating(&locked) && !insert_ignores_exclusion(mm) {
        // Fully excluded: the tree may not change; link at the last inv_end. Meanwhile the
        // subscription counts as being invalidated, so read_begin waits.
        locked.deferred.push(Deferred::Insert(node));
        sub.invalidate_seq.store(seq, Ordering::Relaxed);
    } else {
        // Partially excluded: the running invalidations may cover the new range, so treat it as
        // being invalidated by them: make the sequence odd (full exclusion) and link now.
        locked.stamp(&mut node);
        subs.with_tree_mut(&mut locked, |t| t.insert(node));
        subs.invalidate_seq.store(seq | 1, Ordering::Relaxed);
        sub.invalidate_seq.store(seq | 1, Ordering::Relaxed);
    }
    drop(locked);
    Ok(IntervalSubscription { sub })
}

#[cfg(any(test, loom))]
fn insert_ignores_exclusion(mm: &MmCore) -> bool {
    mm.knobs
        .insert_ignores_exclusion
        .load(core::sync::atomic::Ordering::Relaxed)
}

#[cfg(not(any(test, loom)))]
fn insert_ignores_exclusion(_mm: &MmCore) -> bool {
    false
}

#[cfg(any(test, loom))]
fn read_begin_reads_mm_seq_first(mm: &MmCore) -> bool {
    super::knob(&mm.knobs.read_begin_reads_mm_seq_first)
}

#[cfg(not(any(test, loom)))]
fn read_begin_reads_mm_seq_first(_mm: &MmCore) -> bool {
    false
}

impl IntervalSubscription {
    /// Removes the subscription (`mmu_interval_notifier_remove`). If an invalidation is running
    /// the removal is deferred and this waits for the last `inv_end`. When it returns no
    /// callback is running or will run, and the core holds no reference to the subscription.
    /// Must not be called from a callback or with a lock `invalidate` takes.
    pub fn remove(self) {
        drop(self);
    }

    /// The shared subscription state (for `read_begin`/`read_retry` from other threads).
    pub fn notifier(&self) -> &Arc<IntervalNotifier> {
        &self.sub
    }

    fn remove_now(&self) {
        lockdep::assert_may_wait("IntervalSubscription::remove");
        let sub = &self.sub;
        let subs = sub.subscriptions();
        let mut wait_for = None;
        let unlinked;
        {
            let mut locked = subs.lock.lock();
            locked.intervals -= 1;
            let tag = sub.tree_tag();
            if subs.is_invalidating(&locked) {
                let pending = locked.deferred.iter().position(
                    |d| matches!(d, Deferred::Insert(n) if Arc::ptr_eq(n.node().value(), sub)),
                );
                match pending {
                    // Inserted while fully excluded and still waiting to be linked: cancel,
                    // keeping the others' order (it decides their tags).
                    Some(i) => unlinked = Some(locked.deferred.remove(i)),
                    None => {
                        unlinked = None;
                        locked.deferred.push(Deferred::Remove {
                            start: sub.start,
                            tag,
                        });
                        wait_for = Some(subs.invalidate_seq.load(Ordering::Relaxed));
                    }
                }
            } else {
                let node = subs.with_tree_mut(&mut locked, |t| t.remove(sub.start, tag));
                debug_assert!(
                    node.is_some(),
                    "interval subscription missing from the tree"
                );
                unlinked = node.map(Deferred::Insert);
            }
        }
        // The core's node (and its reference) is freed outside the lock.
        drop(unlinked);
        if let Some(seq) = wait_for {
            wait_for_deferred(&sub.mm, subs, seq);
        }
    }
}

/// Waits until the last `inv_end` after `seq` has processed the deferred list. The sequence is
/// read under the lock (319561669a59): `inv_end` bumps it before walking the deferred list, so
/// an unlocked read could return while our entry is still queued.
fn wait_for_deferred(mm: &MmCore, subs: &Subscriptions, seq: u64) {
    #[cfg(not(any(test, loom)))]
    let _ = mm;
    #[cfg(any(test, loom))]
    if mm
        .knobs
        .remove_reads_seq_unlocked
        .load(core::sync::atomic::Ordering::Relaxed)
    {
        subs.wq
            .wait_until(|| subs.invalidate_seq.load(Ordering::Acquire) != seq);
        return;
    }
    subs.wq.wait_until(|| {
        let _locked = subs.lock.lock();
        subs.invalidate_seq.load(Ordering::Relaxed) != seq
    });
}

impl Deref for IntervalSubscription {
    type Target = IntervalNotifier;

    fn deref(&self) -> &IntervalNotifier {
        &self.sub
    }
}

impl Drop for IntervalSubscription {
    fn drop(&mut self) {
        self.remove_now();
    }
}

impl Subscriptions {
    /// `mn_itree_inv_start_range`: counts the invalidation in and, if it hits a subscription,
    /// makes the sequence odd (full exclusion). Returns the sequence and whether it hit.
    fn itree_inv_start(&self, range: &NotifierRange) -> (u64, bool) {
        let mut locked = self.lock.lock();
        locked.active_invalidate_ranges += 1;
        let hit = self.with_tree(&locked, |t| {
            t.overlapping(range.start(), range.last()).next().is_some()
        });
        let mut seq = self.invalidate_seq.load(Ordering::Relaxed);
        if hit {
            seq |= 1;
            self.invalidate_seq.store(seq, Ordering::Relaxed);
        }
        drop(locked);
        (seq, hit)
    }

    /// `mn_itree_inv_end`: counts the invalidation out; the last one makes the sequence even,
    /// applies the deferred tree updates (like `rtnl_unlock`) and wakes the waiters.
    pub(crate) fn itree_inv_end(&self) {
        let mut locked = self.lock.lock();
        locked.active_invalidate_ranges -= 1;
        if locked.active_invalidate_ranges != 0 || !self.is_invalidating(&locked) {
            return;
        }
        let seq = self.invalidate_seq.load(Ordering::Relaxed);
        self.invalidate_seq
            .store(seq.wrapping_add(1), Ordering::Release);
        // `remove` waits for the sequence to move on; an unlocked read of it could return
        // right here, before its entry leaves the deferred list below (319561669a59).
        crate::sync::model_switch_point();
        let mut deferred = core::mem::take(&mut locked.deferred);
        // Newest first, as Linux walks its deferred list (hlist_add_head): the intervals enter
        // the tree, and are stamped, in that order.
        for update in deferred.iter_mut().rev() {
            if let Deferred::Insert(node) = update {
                locked.stamp(node);
            }
        }
        self.with_tree_mut(&mut locked, |tree| {
            for update in deferred.drain(..).rev() {
                match update {
                    Deferred::Insert(node) => tree.insert(node),
                    Deferred::Remove { start, tag } => {
                        let node = tree.remove(start, tag);
                        debug_assert!(
                            node.is_some(),
                            "deferred removal of an unlinked subscription"
                        );
                    }
                }
            }
        });
        // Hand the (empty) vector back so its reserved room is kept.
        locked.deferred = deferred;
        drop(locked);
        self.wq.wake_all();
    }

    /// `mn_itree_invalidate`: the interval half of `invalidate_range_start`. On refusal it ends
    /// its own half, as the caller must not call end.
    pub(crate) fn itree_invalidate(&self, range: &NotifierRange) -> Result<(), WouldBlock> {
        let (seq, hit) = self.itree_inv_start(range);
        if !hit {
            return Ok(());
        }
        // SAFETY: `hit` means we made (or found) the sequence odd while counted in
        // `active_invalidate_ranges`; it stays odd and the tree unchanged until our inv_end.
        let refused = unsafe {
            self.with_tree_excluded(|tree| {
                for node in tree.overlapping(range.start(), range.last()) {
                    let sub = node.value();
                    let _cb = lockdep::in_callback();
                    if sub.ops.invalidate(sub, range, seq) {
                        continue;
                    }
                    if range.is_blockable() {
                        log::warn!("mmu interval notifier: invalidate refused a blockable range");
                        continue;
                    }
                    return true;
                }
                false
            })
        };
        if refused {
            self.itree_inv_end();
            return Err(WouldBlock);
        }
        Ok(())
    }

    /// `mn_itree_release`: every interval subscription sees a blockable `Release` over the
    /// whole address space.
    pub(crate) fn itree_release(&self) {
        let range = NotifierRange::whole_space_release();
        let (seq, hit) = self.itree_inv_start(&range);
        if hit {
            // SAFETY: as in `itree_invalidate`.
            unsafe {
                self.with_tree_excluded(|tree| {
                    for node in tree.overlapping(range.start(), range.last()) {
                        let sub = node.value();
                        let _cb = lockdep::in_callback();
                        if !sub.ops.invalidate(sub, &range, seq) {
                            log::warn!(
                                "mmu interval notifier: invalidate refused the release range"
                            );
                        }
                    }
                })
            };
        }
        self.itree_inv_end();
    }
}

impl core::fmt::Debug for IntervalNotifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IntervalNotifier")
            .field("start", &self.start)
            .field("last", &self.last)
            .field(
                "invalidate_seq",
                &self.invalidate_seq.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl core::fmt::Debug for IntervalSubscription {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.sub.fmt(f)
    }
}
