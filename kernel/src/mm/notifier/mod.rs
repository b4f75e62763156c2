//! The notifier core: a port of the semantics of Linux 6.10's `mm/mmu_notifier.c`.
//!
//! # What it is for
//!
//! Some agents besides the CPUs translate this address space's virtual addresses: the SMMU
//! walking the same page tables for a device (shared virtual addressing), or a driver keeping
//! "shadow" copies of page-table entries. Whenever the page-table code changes translations it
//! tells the notifier core, and the core tells every subscriber, so that no secondary agent
//! keeps using a translation the CPU side has already dropped.
//!
//! # Two kinds of subscribers
//!
//! **List subscribers** ([`MmuNotifier`], ops [`MmuNotifierOps`]) see every event of the
//! address space. They live on a singly linked list walked under a grace-period domain
//! ([`Srcu`](crate::sync::Srcu)): walkers take no lock, may sleep in callbacks, and writers
//! (register, unregister, put, teardown) unlink under the subscriptions lock and free only after
//! a grace period. The IOMMU's SVA binding is one: it implements `arch_invalidate_secondary_tlbs`,
//! which the TLB maintenance code calls with exactly the range it invalidated. A subscriber picks
//! either that or the `invalidate_range_start`/`end` pair; registering both is refused.
//!
//! **Interval subscribers** ([`IntervalNotifier`], ops [`IntervalNotifierOps`]) each watch one
//! range, found through an interval tree, and are only called for invalidations that intersect
//! it. They establish their secondary mappings with a collision-retry protocol, like a seqcount
//! that admits many writers at once:
//!
//! ```text
//!   reader (device fault path)                 writer (invalidate_range_start .. end)
//!   seq = sub.read_begin()                     inv_start: active += 1; if the range hits a
//!   read the CPU page table                               subscription: mm_seq |= 1 (odd)
//!   user_lock                                  invalidate(sub, range, cur_seq = mm_seq):
//!   if sub.read_retry(seq): unlock, retry          user_lock; sub.set_seq(cur_seq); drop
//!   install the secondary mapping                  secondary mappings; user_unlock
//!   user_unlock                                inv_end:   active -= 1; the last one with an
//!                                                         odd mm_seq does mm_seq += 1 (even)
//! ```
//!
//! The address space's sequence `mm_seq` is even when no subscription is being invalidated.
//! A hit makes it odd; every hit subscription gets the odd value through `set_seq` under the
//! user lock, so a reader that began before sees a different sequence in `read_retry` (under the
//! same lock) and retries. `read_begin` waits while its subscription's sequence equals the
//! current odd one (it is being invalidated right now) until the last `inv_end`. Only the last
//! of several concurrent or nested invalidations makes the sequence even again. Unlike 6.10,
//! `read_begin` takes no lock: a device fault path on many CPUs writes no shared cache line
//! (the ordering that replaces the lock is explained at [`IntervalNotifier::read_begin`]).
//!
//! The writer side has two states. *Partially excluded* (`active > 0`, sequence even): no
//! running invalidation hit a subscription, and the tree may change. *Fully excluded*
//! (`active > 0`, sequence odd): the tree must not change, because invalidations walk it
//! without the lock while they call subscribers (which may sleep). Inserting or removing a
//! subscription then goes on a deferred list, applied by the last `inv_end` (the way
//! `rtnl_unlock` runs queued work). A new subscription inserted during any invalidation starts
//! out as "being invalidated", since nobody knows which addresses that invalidation covers;
//! `remove` of a subscription in the tree waits for the last `inv_end`, reading the sequence
//! under the lock (319561669a59: read without it, `remove` could return while `inv_end` was
//! still unlinking the subscription from the deferred list).
//!
//! # Non-blockable invalidations
//!
//! An invalidation may be marked non-blockable (the OOM reaper's). Callbacks that would have to
//! sleep then refuse. The core calls every list subscriber's start anyway; if one refused, it
//! calls end on every subscriber that has one, so all that started get their end (c2655835), and
//! reports [`WouldBlock`]. The caller then must not call end: here that is enforced by types,
//! since the refusal returns no [`Invalidation`] to end. An interval subscriber that refuses
//! ends the interval half before returning.
//!
//! When the interval half succeeded and a list subscriber refused, this port ends the interval
//! half too before reporting [`WouldBlock`] (a deviation from 6.10, below).
//!
//! # Teardown
//!
//! When the last user reference goes ([`MmCore::mmput`]), interval subscribers get a blockable
//! [`NotifyEvent::Release`] invalidation of the whole space, then every list subscriber's
//! `release` is called *while it is still linked*, and only then are they unlinked (3ad3d901 /
//! d34883d4: unlinking first let another CPU free pages the secondary MMU could still reach).
//! An `unregister` racing teardown may call `release` a second time; subscribers must tolerate
//! that (Linux does the same), and neither path unlinks twice. The subscriptions themselves are
//! freed only when the [`MmCore`] is destroyed, which every subscriber holds back.
//!
//! # Deliberate deviations from 6.10
//!
//! Everything else follows 6.10's observable behaviour: callback order, arguments, return
//! codes and sequence numbers. Each difference below is on purpose and pinned by a test (in
//! `tests/mod.rs` unless named otherwise).
//!
//! 1. **A list refusal after the interval half succeeded ends the interval half** (the §6
//!    fix). 6.10 returns `-EAGAIN` with it still open: its counter stays raised and its
//!    sequence odd forever, so every later `read_begin` on an overlapping subscription and
//!    every `remove` waits forever (`notifier-tests-history.md` §6).
//!    `list_refusal_after_interval_success_ends_the_interval_half`, and
//!    `section6_check_fails_with_the_610_behaviour` with 6.10's behaviour switched on.
//! 2. **Bad interval input changes nothing.** 6.10's `mmu_interval_notifier_insert` registers
//!    the address space (allocating its subscriptions, enabling the interval tree) before it
//!    checks the interval, so a zero length or an overflowing end returns `-EOVERFLOW` with
//!    the tree enabled: from then on every invalidation counts as active for intervals (the
//!    sequence moves, a racing insert is deferred). And when that first allocation fails for
//!    a bad interval, 6.10 reports `-ENOMEM`. Here the interval is checked first, as the error
//!    contract asks (a failed call changes nothing), and the bad input is what is reported.
//!    `a_rejected_interval_insert_leaves_invalidations_untouched`,
//!    `a_bad_interval_is_reported_before_any_allocation`, `interval_length_overflow_is_an_error`.
//! 3. **No `invalidate_range_end` without its start.** 6.10 decides at end whether to walk the
//!    list, so a list subscriber registered while a range is open (possible under the mmap
//!    write lock) gets an end for a range it never saw start. Here end reaches only the
//!    subscribers the start reached: a subscriber may rely on pairs.
//!    `a_subscriber_registered_during_an_invalidation_gets_no_unmatched_end`.
//! 4. **`read_begin` takes no lock**: readers on many CPUs write no shared cache line (the
//!    ordering that replaces the lock is argued at [`IntervalNotifier::read_begin`]; loom model
//!    `collision_retry_never_leaves_a_stale_shadow_pte` in `kernel/tests/loom_notifier.rs`).
//!
//! Intervals with the same start are called in the order they entered the tree, as in 6.10
//! (its rbtree links an equal start to the right; deferred inserts enter at the last end,
//! newest first, as 6.10 walks its deferred list from the head):
//! `same_start_intervals_are_called_in_insertion_order`,
//! `deferred_same_start_intervals_enter_the_tree_newest_first`.
//!
//! # Locking contract with the page-table code
//!
//! Every `invalidate_range_start`/`end` runs under the mmap lock, read or write (the start
//! functions are methods of the lock guards). Registration takes the write side, so no
//! invalidation is half-way through while a subscriber appears: the role of
//! `mm_take_all_locks()`. `arch_invalidate_secondary_tlbs` and the young operations only need
//! the grace period and may be called under page-table locks.

mod alloc;
mod error;
mod interval;
pub mod interval_tree;
mod list;
mod lockdep;
mod mm;
mod range;
mod subscriptions;

#[cfg(test)]
mod tests;

pub use self::alloc::OutOfMemory;
pub use error::{FaultError, InvalidArgument, NotifierError, Overflow, WouldBlock};
pub use interval::{IntervalNotifier, IntervalNotifierOps, IntervalSubscription};
pub use list::{MmuNotifier, MmuNotifierOps, OpSet};
pub use mm::{notifier_srcu, MmCore, MmFaultHandler, MmapReadGuard, MmapWriteGuard};
pub use range::{NotifierRange, NotifyEvent};

/// Waits until every subscriber freed by [`MmuNotifier::put`] on the shared grace-period domain
/// has been freed (`mmu_notifier_synchronize`). Address spaces with a private domain use
/// `mm.grace_domain().barrier()`.
pub fn synchronize() {
    lockdep::assert_may_wait("notifier::synchronize");
    notifier_srcu().barrier();
}

/// Switches that disable one protection each, so tests can show that the protection is what
/// makes them pass. Only in test and model builds; all off by default.
#[cfg(any(test, loom))]
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct DebugKnobs {
    /// `remove` waits with an unlocked sequence read (the bug fixed by 319561669a59).
    pub remove_reads_seq_unlocked: core::sync::atomic::AtomicBool,
    /// A refused non-blockable start does not call end on the others (before c2655835).
    pub skip_end_after_refusal: core::sync::atomic::AtomicBool,
    /// Teardown unlinks list subscribers before calling `release` (3ad3d901's bug).
    pub unlink_before_release: core::sync::atomic::AtomicBool,
    /// A list refusal leaves the interval half open (6.10's behaviour, §6).
    pub leave_itree_open_on_list_refusal: core::sync::atomic::AtomicBool,
    /// `insert` links into the tree even while it is fully excluded (no deferral).
    pub insert_ignores_exclusion: core::sync::atomic::AtomicBool,
    /// The lock-free `read_begin` loads the address space's sequence before the
    /// subscription's, so it can miss an invalidation that is running.
    pub read_begin_reads_mm_seq_first: core::sync::atomic::AtomicBool,
}

#[cfg(any(test, loom))]
impl MmCore {
    /// The debug knobs of this address space.
    #[doc(hidden)]
    pub fn debug_knobs(&self) -> &DebugKnobs {
        &self.knobs
    }
}

#[cfg(any(test, loom))]
fn knob(flag: &core::sync::atomic::AtomicBool) -> bool {
    flag.load(core::sync::atomic::Ordering::Relaxed)
}

/// An invalidation between its start and its end. Ends when dropped or with
/// [`Invalidation::end`]; it borrows the mmap lock guard, so it cannot outlive the lock.
///
/// An invalidation of an address space with no subscriber holds nothing: `start` called
/// nobody, so `end` has nobody to call: the inlined fast path never stores the range, and the
/// compiler folds its end away (`None` is known at compile time there).
#[must_use = "dropping the invalidation ends it at once"]
pub struct Invalidation<'a> {
    started: Option<Started<'a>>,
}

/// What an invalidation with subscribers started, and so must end.
struct Started<'a> {
    mm: &'a MmCore,
    range: NotifierRange,
    /// The interval half was started (and must be ended), decided once at start.
    itree: bool,
    /// List subscribers were called at start.
    list: bool,
}

impl Invalidation<'_> {
    /// The invalidation of an address space with no subscriber.
    const NOBODY: Self = Self { started: None };

    /// Ends the invalidation (`mmu_notifier_invalidate_range_end`).
    #[inline]
    pub fn end(self) {}
}

impl Drop for Invalidation<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(started) = &self.started {
            started.end();
        }
    }
}

impl Started<'_> {
    /// `__mmu_notifier_invalidate_range_end` for the halves that were started.
    #[inline(never)]
    fn end(&self) {
        let subs = self.mm.subscriptions_of_subscribed();
        if self.itree {
            subs.itree_inv_end();
        }
        if self.list {
            let rcu = self.mm.grace_domain().read_lock();
            list::invalidate_range_end(subs, self.mm, &self.range, &rcu);
        }
    }
}

impl MmCore {
    /// `mm_has_notifiers()`, widened to what an invalidation has to call: false if nobody ever
    /// subscribed (one load, as in Linux), or if every list subscriber left and the interval
    /// tree was never enabled (two more).
    #[inline]
    fn invalidation_has_subscribers(&self) -> bool {
        self.subscriptions().is_some_and(|subs| {
            subs.has_itree.load(core::sync::atomic::Ordering::Acquire) || !subs.list_is_empty()
        })
    }
}

/// Which halves of an invalidation [`start_subscribed`] started.
#[derive(Clone, Copy)]
struct Halves {
    itree: bool,
    list: bool,
}

impl<'a> Invalidation<'a> {
    /// The invalidation of `range` after [`start_subscribed`] started `halves` of it.
    #[inline]
    fn started(mm: &'a MmCore, range: NotifierRange, halves: Halves) -> Self {
        Self {
            started: Some(Started {
                mm,
                range,
                itree: halves.itree,
                list: halves.list,
            }),
        }
    }
}

/// `__mmu_notifier_invalidate_range_start`: starts both halves for an address space with
/// subscribers. Out of line, so that only this path needs the range in memory; it returns the
/// two flags (in registers) rather than the whole invalidation, which the caller builds from
/// what it already holds. On refusal nothing is left started.
#[inline(never)]
fn start_subscribed(mm: &MmCore, range: &NotifierRange) -> Result<Halves, WouldBlock> {
    let subs = mm.subscriptions_of_subscribed();
    let mut halves = Halves {
        itree: false,
        list: false,
    };
    if subs.has_itree.load(core::sync::atomic::Ordering::Acquire) {
        // On refusal the interval half has already ended itself.
        subs.itree_invalidate(range)?;
        halves.itree = true;
    }
    if !subs.list_is_empty() {
        if let Err(refused) = list::invalidate_range_start(subs, mm, range) {
            // End the interval half too (the §6 fix), and only it.
            if halves.itree && !leave_itree_open_on_list_refusal(mm) {
                subs.itree_inv_end();
            }
            return Err(refused);
        }
        halves.list = true;
    }
    Ok(halves)
}

#[cfg(any(test, loom))]
fn leave_itree_open_on_list_refusal(mm: &MmCore) -> bool {
    knob(&mm.knobs.leave_itree_open_on_list_refusal)
}

#[cfg(not(any(test, loom)))]
fn leave_itree_open_on_list_refusal(_mm: &MmCore) -> bool {
    false
}

fn release(mm: &MmCore) {
    // Orders the users count's drop to zero before the list walk: pairs with
    // `MmCore::still_has_users` after a link.
    crate::sync::atomic::fence(crate::sync::atomic::Ordering::SeqCst);
    let Some(subs) = mm.subscriptions() else {
        return;
    };
    if subs.has_itree.load(core::sync::atomic::Ordering::Acquire) {
        subs.itree_release();
    }
    if !subs.list_is_empty() {
        list::release(subs, mm);
    }
}

macro_rules! invalidation_methods {
    ($guard:ident) => {
        impl<'a> $guard<'a> {
            /// Starts a blockable invalidation of `range` (`mmu_notifier_invalidate_range_start`):
            /// callbacks may sleep. Cannot fail.
            ///
            /// Inline up to the subscriber check: with no subscriber, start and end cost the
            /// loads of [`MmCore`]'s subscriber check and a branch (`make bench`:
            /// `dispatch/start_end/*` against an empty call).
            #[inline]
            pub fn invalidate_range_start(&self, range: NotifierRange) -> Invalidation<'_> {
                if !self.mm().invalidation_has_subscribers() {
                    return Invalidation::NOBODY;
                }
                let range = range.with_blockable(true);
                match start_subscribed(self.mm(), &range) {
                    Ok(halves) => Invalidation::started(self.mm(), range, halves),
                    // Blockable starts treat refusals as driver bugs and carry on.
                    Err(WouldBlock) => unreachable!("a blockable invalidation cannot be refused"),
                }
            }

            /// Starts a non-blockable invalidation
            /// (`mmu_notifier_invalidate_range_start_nonblock`). On [`WouldBlock`] nothing is
            /// left started: do not change the page tables in `range`.
            #[inline]
            pub fn invalidate_range_start_nonblock(
                &self,
                range: NotifierRange,
            ) -> Result<Invalidation<'_>, WouldBlock> {
                if !self.mm().invalidation_has_subscribers() {
                    return Ok(Invalidation::NOBODY);
                }
                let range = range.with_blockable(false);
                let halves = start_subscribed(self.mm(), &range)?;
                Ok(Invalidation::started(self.mm(), range, halves))
            }
        }
    };
}

invalidation_methods!(MmapReadGuard);
invalidation_methods!(MmapWriteGuard);

impl MmCore {
    /// Tells secondary TLBs that the CPU TLB entries of `[start, end)` were invalidated
    /// (`mmu_notifier_arch_invalidate_secondary_tlbs`). Call it from TLB maintenance with
    /// exactly the range invalidated: an empty range is refused (f7edb07ad7c6, where arm64 passed
    /// an empty range and every SMMU invalidation became a full flush).
    ///
    /// Inline up to the subscriber check: with no list subscriber the call costs a load or
    /// two (`make bench`: `dispatch/secondary_tlbs/*` against an empty call).
    #[must_use = "an empty range means the caller lost track of what it invalidated"]
    #[inline]
    pub fn arch_invalidate_secondary_tlbs(
        &self,
        start: u64,
        end: u64,
    ) -> Result<(), NotifierError> {
        if start >= end {
            return Err(InvalidArgument::EmptyRange.into());
        }
        if self
            .subscriptions()
            .is_some_and(|subs| !subs.list_is_empty())
        {
            self.call_secondary_tlbs(start, end);
        }
        Ok(())
    }

    #[inline(never)]
    fn call_secondary_tlbs(&self, start: u64, end: u64) {
        self.for_each_list_subscriber(OpSet::ARCH_INVALIDATE_SECONDARY_TLBS, |sub| {
            sub.ops().arch_invalidate_secondary_tlbs(self, start, end);
            true
        });
    }

    /// Test-and-clears the accessed state of secondary mappings in `[start, end)`, flushing
    /// them; true if any subscriber's was set (results are OR'ed).
    pub fn clear_flush_young(&self, start: u64, end: u64) -> bool {
        let mut young = false;
        self.for_each_list_subscriber(OpSet::CLEAR_FLUSH_YOUNG, |sub| {
            young |= sub.ops().clear_flush_young(self, start, end);
            true
        });
        young
    }

    /// As [`MmCore::clear_flush_young`], without flushing.
    pub fn clear_young(&self, start: u64, end: u64) -> bool {
        let mut young = false;
        self.for_each_list_subscriber(OpSet::CLEAR_YOUNG, |sub| {
            young |= sub.ops().clear_young(self, start, end);
            true
        });
        young
    }

    /// True if some secondary mapping of `address` was accessed; stops at the first that was.
    pub fn test_young(&self, address: u64) -> bool {
        let mut young = false;
        self.for_each_list_subscriber(OpSet::TEST_YOUNG, |sub| {
            young = sub.ops().test_young(self, address);
            !young
        });
        young
    }

    fn for_each_list_subscriber(&self, op: OpSet, mut f: impl FnMut(&MmuNotifier) -> bool) {
        let Some(subs) = self.subscriptions() else {
            return;
        };
        if subs.list_is_empty() {
            return;
        }
        let rcu = self.grace_domain().read_lock();
        list::for_each(subs, &rcu, |sub| {
            if !sub.implements(op) {
                return true;
            }
            let _cb = lockdep::in_callback();
            f(sub)
        });
    }
}
