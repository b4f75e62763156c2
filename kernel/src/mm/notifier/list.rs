//! List subscribers (`struct mmu_notifier`): every one sees every invalidation of its address
//! space, walked under the grace-period domain.

use alloc::sync::Arc;
use core::any::TypeId;
use core::ops::BitOr;
use core::ptr;

use super::error::{InvalidArgument, NotifierError, Overflow};
use super::lockdep;
use super::mm::{MmCore, MmapWriteGuard};
use super::range::NotifierRange;
use super::subscriptions::{Locked, Subscriptions};
use super::WouldBlock;
use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};
use crate::sync::{GpLink, GpWork, SpinLockGuard, SrcuReadGuard};

/// The optional operations a list subscriber implements: the Rust form of "this member of the
/// ops table is not NULL". The core calls an operation only if its bit is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpSet(u8);

impl OpSet {
    /// No optional operation.
    pub const NONE: OpSet = OpSet(0);
    /// [`MmuNotifierOps::release`].
    pub const RELEASE: OpSet = OpSet(1 << 0);
    /// [`MmuNotifierOps::clear_flush_young`].
    pub const CLEAR_FLUSH_YOUNG: OpSet = OpSet(1 << 1);
    /// [`MmuNotifierOps::clear_young`].
    pub const CLEAR_YOUNG: OpSet = OpSet(1 << 2);
    /// [`MmuNotifierOps::test_young`].
    pub const TEST_YOUNG: OpSet = OpSet(1 << 3);
    /// [`MmuNotifierOps::invalidate_range_start`].
    pub const INVALIDATE_RANGE_START: OpSet = OpSet(1 << 4);
    /// [`MmuNotifierOps::invalidate_range_end`].
    pub const INVALIDATE_RANGE_END: OpSet = OpSet(1 << 5);
    /// [`MmuNotifierOps::arch_invalidate_secondary_tlbs`].
    pub const ARCH_INVALIDATE_SECONDARY_TLBS: OpSet = OpSet(1 << 6);

    /// True if every operation of `other` is in `self`.
    pub const fn contains(self, other: OpSet) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if any operation of `other` is in `self`.
    pub const fn intersects(self, other: OpSet) -> bool {
        self.0 & other.0 != 0
    }
}

impl BitOr for OpSet {
    type Output = OpSet;

    fn bitor(self, rhs: OpSet) -> OpSet {
        OpSet(self.0 | rhs.0)
    }
}

/// The operations of a list subscriber (`struct mmu_notifier_ops`). Every method has a no-op
/// default; [`MmuNotifierOps::implemented`] says which ones the core should call.
pub trait MmuNotifierOps: Send + Sync + 'static {
    /// The optional operations this type implements. Registration rejects
    /// `ARCH_INVALIDATE_SECONDARY_TLBS` together with `INVALIDATE_RANGE_START`/`END`.
    fn implemented(&self) -> OpSet;

    /// The address space is going away (or this subscriber is being unregistered): tear down
    /// every secondary mapping and establish no new one. May run concurrently with other
    /// operations, and may run twice when `unregister` races teardown.
    fn release(&self, _mm: &MmCore) {}

    /// Test-and-clear the accessed bit of secondary mappings in `[start, end)`, flushing them.
    fn clear_flush_young(&self, _mm: &MmCore, _start: u64, _end: u64) -> bool {
        false
    }

    /// Test-and-clear the accessed bit of secondary mappings in `[start, end)`, no flush.
    fn clear_young(&self, _mm: &MmCore, _start: u64, _end: u64) -> bool {
        false
    }

    /// Whether the secondary mapping of `address` was accessed, without clearing.
    fn test_young(&self, _mm: &MmCore, _address: u64) -> bool {
        false
    }

    /// Mappings in `range` are about to change: drop secondary mappings, establish none until
    /// the matching end. Only when `range` is not blockable may it refuse with [`WouldBlock`],
    /// and a subscriber that can refuse must not implement `invalidate_range_end` (it could not
    /// tell whether its start had succeeded).
    fn invalidate_range_start(
        &self,
        _mm: &MmCore,
        _range: &NotifierRange,
    ) -> Result<(), WouldBlock> {
        Ok(())
    }

    /// The change announced by the matching start is complete.
    fn invalidate_range_end(&self, _mm: &MmCore, _range: &NotifierRange) {}

    /// The CPU TLB entries for `[start, end)` were invalidated: invalidate the secondary TLB
    /// (IOMMU SVA). Called from TLB maintenance, so it must not wait.
    fn arch_invalidate_secondary_tlbs(&self, _mm: &MmCore, _start: u64, _end: u64) {}

    /// Creates the single subscriber of this type for `mm`, for [`MmuNotifier::get`].
    fn alloc_notifier(_mm: &MmCore) -> Result<Arc<Self>, NotifierError>
    where
        Self: Sized,
    {
        Err(InvalidArgument::NoAllocNotifier.into())
    }

    /// Called once, a grace period after the last [`MmuNotifier::put`]: no operation is running
    /// and none will start. Must not wait.
    fn free_notifier(&self) {}
}

/// A registered list subscriber (the core's half of `struct mmu_notifier`).
///
/// Handles are `Arc`s: [`MmuNotifier::register`] returns one to pass to
/// [`MmuNotifier::unregister`]; [`MmuNotifier::get`] returns one per call, each given back with
/// [`MmuNotifier::put`].
pub struct MmuNotifier {
    ops: Arc<dyn MmuNotifierOps>,
    ops_type: TypeId,
    implemented: OpSet,
    mm: Arc<MmCore>,
    /// Next subscriber in the address space's list.
    next: AtomicPtr<MmuNotifier>,
    /// In the list (`!hlist_unhashed`). Changed under the subscriptions lock.
    linked: AtomicBool,
    /// `get` references. Changed under the subscriptions lock.
    users: AtomicU32,
    gp: GpLink,
}

impl MmuNotifier {
    fn new<T: MmuNotifierOps>(mm: &MmCore, ops: Arc<T>) -> Arc<Self> {
        let implemented = ops.implemented();
        Arc::new(MmuNotifier {
            ops,
            ops_type: TypeId::of::<T>(),
            implemented,
            mm: mm.mmgrab(),
            next: AtomicPtr::new(ptr::null_mut()),
            linked: AtomicBool::new(false),
            users: AtomicU32::new(1),
            gp: GpLink::new(),
        })
    }

    /// Subscribes `ops` to `mm` (`mmu_notifier_register`). Takes the mmap lock for writing; the
    /// caller must hold a user reference of `mm`.
    pub fn register<T: MmuNotifierOps>(
        mm: &MmCore,
        ops: Arc<T>,
    ) -> Result<Arc<Self>, NotifierError> {
        let lock = mm.mmap_write();
        Self::register_locked(&lock, ops)
    }

    /// [`MmuNotifier::register`] with the mmap write lock already held.
    pub fn register_locked<T: MmuNotifierOps>(
        lock: &MmapWriteGuard<'_>,
        ops: Arc<T>,
    ) -> Result<Arc<Self>, NotifierError> {
        let sub = Self::new(lock.mm(), ops);
        register_subscriber(lock, Some(&sub))?;
        Ok(sub)
    }

    /// The single subscriber of type `T` on `mm`, created with `T::alloc_notifier` if there is
    /// none yet (`mmu_notifier_get`). Each successful call must be paired with a
    /// [`MmuNotifier::put`].
    pub fn get<T: MmuNotifierOps>(mm: &MmCore) -> Result<Arc<Self>, NotifierError> {
        let lock = mm.mmap_write();
        Self::get_locked::<T>(&lock)
    }

    /// [`MmuNotifier::get`] with the mmap write lock already held.
    pub fn get_locked<T: MmuNotifierOps>(
        lock: &MmapWriteGuard<'_>,
    ) -> Result<Arc<Self>, NotifierError> {
        let mm = lock.mm();
        if let Some(subs) = mm.subscriptions() {
            if let Some(found) = find_get(subs, TypeId::of::<T>())? {
                return Ok(found);
            }
        }
        let ops = T::alloc_notifier(mm)?;
        let sub = Self::new(mm, ops);
        if let Err(e) = register_subscriber(lock, Some(&sub)) {
            sub.ops.free_notifier();
            return Err(e);
        }
        Ok(sub)
    }

    /// Removes this subscriber (`mmu_notifier_unregister`): calls `release` unless teardown
    /// already did, unlinks, then waits for a grace period. When it returns no operation of
    /// this subscriber is running or will run.
    pub fn unregister(self: Arc<Self>) {
        lockdep::assert_may_wait("MmuNotifier::unregister");
        let subs = self.mm.subscriptions_of_subscribed();
        if self.linked.load(Ordering::Relaxed) {
            {
                // Teardown waits in `synchronize` for this section, so it cannot free pages
                // before this `release` has dropped the secondary mappings.
                let _rcu = self.mm.grace_domain().read_lock();
                if self.implemented.contains(OpSet::RELEASE) {
                    let _cb = lockdep::in_callback();
                    self.ops.release(&self.mm);
                }
            }
            let mut locked = subs.lock.lock();
            // Teardown may have unlinked it meanwhile (then this is a no-op, like
            // `hlist_del_init_rcu` on an unhashed node).
            unlink(subs, &mut locked, &self);
        }
        // Waits for every running operation, including a `release` run by teardown.
        self.mm.grace_domain().synchronize();
    }

    /// Drops a [`MmuNotifier::get`] reference (`mmu_notifier_put`). The last one unlinks the
    /// subscriber and frees it through `free_notifier` after a grace period, asynchronously
    /// (see [`synchronize`](super::synchronize)). May be called from `release`.
    pub fn put(self: Arc<Self>) {
        let subs = self.mm.subscriptions_of_subscribed();
        {
            let mut locked = subs.lock.lock();
            let users = self.users.load(Ordering::Relaxed);
            if users == 0 {
                log::warn!("mmu notifier: put without a matching get");
                return;
            }
            self.users.store(users - 1, Ordering::Relaxed);
            if users > 1 {
                return;
            }
            unlink(subs, &mut locked, &self);
        }
        let srcu = self.mm.grace_domain();
        srcu.call(self);
    }

    /// The subscriber's operations.
    pub fn ops(&self) -> &dyn MmuNotifierOps {
        &*self.ops
    }

    /// The subscriber's operations as their concrete type, if it is `T`.
    pub fn ops_as<T: MmuNotifierOps>(&self) -> Option<&T> {
        if self.ops_type != TypeId::of::<T>() {
            return None;
        }
        // SAFETY: the `Arc<dyn MmuNotifierOps>` was made from an `Arc<T>` with this very
        // `TypeId`, so the data pointer points to a `T`.
        Some(unsafe { &*Arc::as_ptr(&self.ops).cast::<T>() })
    }

    /// The address space subscribed to.
    pub fn mm(&self) -> &Arc<MmCore> {
        &self.mm
    }

    /// The number of outstanding `get` references.
    pub fn users(&self) -> u32 {
        self.users.load(Ordering::Relaxed)
    }

    /// True while linked in the address space's list.
    pub fn is_linked(&self) -> bool {
        self.linked.load(Ordering::Relaxed)
    }

    pub(crate) fn implements(&self, ops: OpSet) -> bool {
        self.implemented.contains(ops)
    }

    #[cfg(test)]
    pub(crate) fn set_users_for_test(&self, users: u32) {
        let _locked = self.mm.subscriptions_of_subscribed().lock.lock();
        self.users.store(users, Ordering::Relaxed);
    }
}

impl GpWork for MmuNotifier {
    fn gp_link(&self) -> &GpLink {
        &self.gp
    }

    fn run(self: Arc<Self>) {
        // Dropping `self` afterwards drops the `mmgrab` of registration (`mmdrop`).
        self.ops.free_notifier();
    }
}

/// `__mmu_notifier_register`: checks, allocates the subscriptions on first use and links `sub`
/// (or, with `None`, enables interval subscribers).
pub(crate) fn register_subscriber(
    lock: &MmapWriteGuard<'_>,
    sub: Option<&Arc<MmuNotifier>>,
) -> Result<(), NotifierError> {
    let mm = lock.mm();
    if mm.users() == 0 {
        return Err(InvalidArgument::NoLiveUsers.into());
    }
    if let Some(sub) = sub {
        let range_ops = OpSet::INVALIDATE_RANGE_START | OpSet::INVALIDATE_RANGE_END;
        if sub.implements(OpSet::ARCH_INVALIDATE_SECONDARY_TLBS)
            && sub.implemented.intersects(range_ops)
        {
            log::warn!(
                "mmu notifier: subscriber implements both secondary-TLB and range callbacks"
            );
            return Err(InvalidArgument::SecondaryTlbsWithRangeCallbacks.into());
        }
    }
    let subs = mm.install_subscriptions(lock)?;
    match sub {
        Some(sub) => {
            let _locked = subs.lock.lock();
            let raw = Arc::into_raw(sub.clone()).cast_mut();
            sub.next
                .store(subs.list.load(Ordering::Relaxed), Ordering::Relaxed);
            sub.linked.store(true, Ordering::Relaxed);
            // Release: a reader that finds the node sees it initialised.
            subs.list.store(raw, Ordering::Release);
        }
        None => subs.has_itree.store(true, Ordering::Release),
    }
    Ok(())
}

fn find_get(
    subs: &Subscriptions,
    ops_type: TypeId,
) -> Result<Option<Arc<MmuNotifier>>, NotifierError> {
    let _locked = subs.lock.lock();
    let mut p = subs.list.load(Ordering::Relaxed);
    // SAFETY: we hold the lock, so every linked node stays linked (and so alive, through its
    // list reference) while we look.
    while let Some(sub) = unsafe { p.as_ref() } {
        if sub.ops_type == ops_type {
            let users = sub.users.load(Ordering::Relaxed);
            if users == u32::MAX {
                return Err(Overflow::Users.into());
            }
            sub.users.store(users + 1, Ordering::Relaxed);
            // SAFETY: `p` carries the list's strong count, alive under the lock; we add one of
            // our own before making an `Arc` of it.
            return Ok(Some(unsafe {
                Arc::increment_strong_count(p);
                Arc::from_raw(p)
            }));
        }
        p = sub.next.load(Ordering::Relaxed);
    }
    Ok(None)
}

/// Unlinks `sub` if it is linked (`hlist_del_init_rcu`). Concurrent readers may still be on the
/// node: `sub` is the caller's own reference, and it must keep it for a grace period.
fn unlink(subs: &Subscriptions, _locked: &mut SpinLockGuard<'_, Locked>, sub: &Arc<MmuNotifier>) {
    if !sub.linked.load(Ordering::Relaxed) {
        return;
    }
    let target = Arc::as_ptr(sub).cast_mut();
    let mut link = &subs.list;
    loop {
        let p = link.load(Ordering::Relaxed);
        if p.is_null() {
            debug_assert!(false, "linked subscriber missing from its list");
            return;
        }
        if p == target {
            // Readers on `sub` keep following its (unchanged) `next`.
            link.store(sub.next.load(Ordering::Relaxed), Ordering::Release);
            sub.linked.store(false, Ordering::Relaxed);
            // SAFETY: `p` carries the list's strong count, which we now drop; the caller's
            // `sub` keeps the node alive for the readers still on it.
            drop(unsafe { Arc::from_raw(p) });
            return;
        }
        // SAFETY: linked nodes are alive while we hold the lock.
        link = unsafe { &(*p).next };
    }
}

/// Calls `f` on every linked subscriber, stopping early if it returns false.
pub(crate) fn for_each(
    subs: &Subscriptions,
    _rcu: &SrcuReadGuard<'_>,
    mut f: impl FnMut(&MmuNotifier) -> bool,
) {
    let mut p = subs.list.load(Ordering::Acquire);
    // SAFETY: a node reachable from the list during a read-side section is freed only after a
    // grace period that follows its unlinking, which this section holds back.
    while let Some(sub) = unsafe { p.as_ref() } {
        if !f(sub) {
            return;
        }
        p = sub.next.load(Ordering::Acquire);
    }
}

/// `mn_hlist_invalidate_range_start`: calls every start; if any refused, calls every end, so
/// the subscribers whose start succeeded get their end (c2655835).
pub(crate) fn invalidate_range_start(
    subs: &Subscriptions,
    mm: &MmCore,
    range: &NotifierRange,
) -> Result<(), WouldBlock> {
    let rcu = mm.grace_domain().read_lock();
    let mut refused = false;
    for_each(subs, &rcu, |sub| {
        if sub.implements(OpSet::INVALIDATE_RANGE_START) && call_start(sub, mm, range).is_err() {
            if range.is_blockable() {
                // A driver bug (8402ce61): Linux warns and still unwinds, after which its
                // caller calls end again. We warn and carry on: one end per start.
                log::warn!("mmu notifier: invalidate_range_start refused a blockable range");
                return true;
            }
            if sub.implements(OpSet::INVALIDATE_RANGE_END) {
                log::warn!("mmu notifier: a subscriber that refuses start must not implement end");
            }
            refused = true;
        }
        true
    });
    #[cfg(any(test, loom))]
    let unwind = !mm
        .knobs
        .skip_end_after_refusal
        .load(core::sync::atomic::Ordering::Relaxed);
    #[cfg(not(any(test, loom)))]
    let unwind = true;
    if refused && unwind {
        invalidate_range_end(subs, mm, range, &rcu);
    }
    if refused {
        Err(WouldBlock)
    } else {
        Ok(())
    }
}

fn call_start(sub: &MmuNotifier, mm: &MmCore, range: &NotifierRange) -> Result<(), WouldBlock> {
    let _cb = lockdep::in_callback();
    sub.ops.invalidate_range_start(mm, range)
}

/// `mn_hlist_invalidate_end`.
pub(crate) fn invalidate_range_end(
    subs: &Subscriptions,
    mm: &MmCore,
    range: &NotifierRange,
    rcu: &SrcuReadGuard<'_>,
) {
    for_each(subs, rcu, |sub| {
        if sub.implements(OpSet::INVALIDATE_RANGE_END) {
            let _cb = lockdep::in_callback();
            sub.ops.invalidate_range_end(mm, range);
        }
        true
    });
}

/// `mn_hlist_release`: `release` on every subscriber while it is still linked (3ad3d901,
/// d34883d4), then unlink them all, then a grace period so that a `release` run by a racing
/// `unregister` has finished too before the pages go away.
pub(crate) fn release(subs: &Subscriptions, mm: &MmCore) {
    let srcu = mm.grace_domain();
    let detached = {
        let rcu = srcu.read_lock();
        #[cfg(any(test, loom))]
        let unlink_first = mm
            .knobs
            .unlink_before_release
            .load(core::sync::atomic::Ordering::Relaxed);
        #[cfg(not(any(test, loom)))]
        let unlink_first = false;
        let mut detached = ptr::null_mut();
        if unlink_first {
            detached = detach_all(subs);
        }
        let mut p = if unlink_first {
            detached
        } else {
            subs.list.load(Ordering::Acquire)
        };
        // SAFETY: as in `for_each`; a detached chain is additionally owned by us.
        while let Some(sub) = unsafe { p.as_ref() } {
            if sub.implements(OpSet::RELEASE) {
                let _cb = lockdep::in_callback();
                sub.ops.release(mm);
            }
            p = sub.next.load(Ordering::Acquire);
        }
        if !unlink_first {
            detached = detach_all(subs);
        }
        drop(rcu);
        detached
    };
    srcu.synchronize();
    drop_list_references(detached);
}

/// Unlinks every subscriber at once and returns the chain, whose list references now belong to
/// the caller.
fn detach_all(subs: &Subscriptions) -> *mut MmuNotifier {
    let _locked = subs.lock.lock();
    let head = subs.list.swap(ptr::null_mut(), Ordering::AcqRel);
    let mut p = head;
    // SAFETY: under the lock the chain is intact and alive.
    while let Some(sub) = unsafe { p.as_ref() } {
        sub.linked.store(false, Ordering::Relaxed);
        p = sub.next.load(Ordering::Relaxed);
    }
    head
}

/// Drops the list references of a detached chain, a grace period after detaching it.
fn drop_list_references(mut p: *mut MmuNotifier) {
    while !p.is_null() {
        // SAFETY: the chain was detached by `detach_all` (no one else changes it: its nodes are
        // unlinked) and a grace period has passed (no reader is on it); each node carries the
        // list's strong count, dropped here after reading `next`.
        let sub = unsafe { Arc::from_raw(p) };
        p = sub.next.load(Ordering::Relaxed);
        drop(sub);
    }
}

impl core::fmt::Debug for MmuNotifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MmuNotifier")
            .field("implemented", &self.implemented)
            .field("linked", &self.is_linked())
            .field("users", &self.users())
            .finish_non_exhaustive()
    }
}
