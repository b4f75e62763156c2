//! Host tests of the notifier core, named after the paths of `mm/mmu_notifier.c` they cover and
//! the bugs of its history they guard against.

use super::*;
use crate::sync::Srcu;
use ::alloc::boxed::Box;
use ::alloc::sync::Arc;
use ::alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::Duration;

mod interleavings;
mod stress;

/// An address space with its own grace-period domain, so tests do not share grace periods.
pub(super) fn new_mm() -> Arc<MmCore> {
    MmCore::with_grace_domain(Box::leak(Box::new(Srcu::new())))
}

fn range(start: u64, end: u64) -> NotifierRange {
    NotifierRange::new(NotifyEvent::Unmap, start, end).unwrap()
}

fn active_ranges(mm: &MmCore) -> u64 {
    mm.subscriptions()
        .unwrap()
        .lock
        .lock()
        .active_invalidate_ranges
}

fn mm_seq(mm: &MmCore) -> u64 {
    mm.subscriptions().unwrap().invalidate_seq.load(SeqCst)
}

fn in_tree(sub: &IntervalSubscription) -> bool {
    let subs = sub.mm().subscriptions().unwrap();
    let locked = subs.lock.lock();
    subs.with_tree(&locked, |t| {
        t.overlapping(sub.start(), sub.start())
            .any(|n| Arc::ptr_eq(n.value(), sub.notifier()))
    })
}

/// A list subscriber that records what it is called with.
#[derive(Default)]
struct Recorder {
    ops: OpSet,
    refuse_nonblock: bool,
    young: bool,
    starts: AtomicUsize,
    ends: AtomicUsize,
    releases: AtomicUsize,
    young_calls: AtomicUsize,
    frees: AtomicUsize,
    secondary: Mutex<Vec<(u64, u64)>>,
    /// Checked from `release`: is this subscriber still linked?
    me: Mutex<Option<std::sync::Weak<MmuNotifier>>>,
    linked_during_release: AtomicBool,
    /// A handle `release` gives back with `put`.
    put_in_release: Mutex<Option<Arc<MmuNotifier>>>,
}

impl Recorder {
    fn with(ops: OpSet) -> Arc<Self> {
        Arc::new(Recorder {
            ops,
            ..Default::default()
        })
    }
}

impl MmuNotifierOps for Recorder {
    fn implemented(&self) -> OpSet {
        self.ops
    }
    fn release(&self, _mm: &MmCore) {
        self.releases.fetch_add(1, SeqCst);
        if let Some(me) = self.me.lock().unwrap().as_ref().and_then(|w| w.upgrade()) {
            self.linked_during_release.store(me.is_linked(), SeqCst);
        }
        if let Some(handle) = self.put_in_release.lock().unwrap().take() {
            handle.put();
        }
    }
    fn clear_flush_young(&self, _mm: &MmCore, _start: u64, _end: u64) -> bool {
        self.young_calls.fetch_add(1, SeqCst);
        self.young
    }
    fn clear_young(&self, _mm: &MmCore, _start: u64, _end: u64) -> bool {
        self.young_calls.fetch_add(1, SeqCst);
        self.young
    }
    fn test_young(&self, _mm: &MmCore, _address: u64) -> bool {
        self.young_calls.fetch_add(1, SeqCst);
        self.young
    }
    fn invalidate_range_start(
        &self,
        _mm: &MmCore,
        range: &NotifierRange,
    ) -> Result<(), WouldBlock> {
        if self.refuse_nonblock && !range.is_blockable() {
            return Err(WouldBlock);
        }
        self.starts.fetch_add(1, SeqCst);
        Ok(())
    }
    fn invalidate_range_end(&self, _mm: &MmCore, _range: &NotifierRange) {
        self.ends.fetch_add(1, SeqCst);
    }
    fn arch_invalidate_secondary_tlbs(&self, _mm: &MmCore, start: u64, end: u64) {
        self.secondary.lock().unwrap().push((start, end));
    }
    fn alloc_notifier(_mm: &MmCore) -> Result<Arc<Self>, NotifierError> {
        Ok(Recorder::with(
            OpSet::RELEASE | OpSet::INVALIDATE_RANGE_START | OpSet::INVALIDATE_RANGE_END,
        ))
    }
    fn free_notifier(&self) {
        self.frees.fetch_add(1, SeqCst);
    }
}

/// A second ops type, to check that `get` keys on the type.
#[derive(Default)]
struct Other(AtomicUsize);

impl MmuNotifierOps for Other {
    fn implemented(&self) -> OpSet {
        OpSet::NONE
    }
    fn alloc_notifier(_mm: &MmCore) -> Result<Arc<Self>, NotifierError> {
        Ok(Arc::new(Other::default()))
    }
    fn free_notifier(&self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// An interval subscriber in the style of test_hmm's mirror: a user lock, `set_seq` under it.
#[derive(Default)]
struct Mirror {
    user_lock: Mutex<()>,
    refuse_nonblock: bool,
    calls: AtomicUsize,
    last_range: Mutex<Option<NotifierRange>>,
}

impl IntervalNotifierOps for Mirror {
    fn invalidate(&self, sub: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
        if self.refuse_nonblock && !range.is_blockable() {
            return false;
        }
        let _user = self.user_lock.lock().unwrap();
        sub.set_seq(cur_seq);
        self.calls.fetch_add(1, SeqCst);
        *self.last_range.lock().unwrap() = Some(*range);
        true
    }
}

fn mirror() -> Arc<Mirror> {
    Arc::new(Mirror::default())
}

// ---- allocation and registration -------------------------------------------------------------

#[test]
fn subscriptions_are_allocated_lazily_on_first_registration() {
    let mm = new_mm();
    assert!(!mm.has_notifiers());
    mm.mmap_read()
        .invalidate_range_start(range(0, 0x1000))
        .end();
    assert!(
        !mm.has_notifiers(),
        "an invalidation allocated subscriptions"
    );
    let sub = MmuNotifier::register(&mm, Recorder::with(OpSet::RELEASE)).unwrap();
    assert!(mm.has_notifiers());
    let first = mm.subscriptions().unwrap() as *const _;
    let ival = IntervalNotifier::insert(&mm, 0, 0x1000, mirror()).unwrap();
    assert_eq!(
        mm.subscriptions().unwrap() as *const _,
        first,
        "reallocated"
    );
    ival.remove();
    sub.unregister();
}

#[test]
fn out_of_memory_on_first_registration_installs_nothing() {
    let mm = new_mm();
    crate::mm::notifier::alloc::inject::fail_after(0);
    let err = MmuNotifier::register(&mm, Recorder::with(OpSet::RELEASE)).unwrap_err();
    assert_eq!(err, NotifierError::OutOfMemory);
    assert_eq!(err.errno(), -12);
    assert!(!mm.has_notifiers());
    assert_eq!(
        Arc::strong_count(&mm),
        1,
        "the failed subscriber kept a reference"
    );
}

#[test]
fn secondary_tlbs_together_with_range_callbacks_is_rejected() {
    let mm = new_mm();
    for range_op in [OpSet::INVALIDATE_RANGE_START, OpSet::INVALIDATE_RANGE_END] {
        let ops = Recorder::with(OpSet::ARCH_INVALIDATE_SECONDARY_TLBS | range_op);
        let err = MmuNotifier::register(&mm, ops).unwrap_err();
        assert_eq!(
            err,
            NotifierError::InvalidArgument(InvalidArgument::SecondaryTlbsWithRangeCallbacks)
        );
        assert_eq!(err.errno(), -22);
    }
    assert!(
        !mm.has_notifiers(),
        "a rejected registration allocated subscriptions"
    );
    // Either scheme alone is fine.
    MmuNotifier::register(&mm, Recorder::with(OpSet::ARCH_INVALIDATE_SECONDARY_TLBS))
        .unwrap()
        .unregister();
}

#[test]
fn registration_requires_a_live_user() {
    let mm = new_mm();
    assert!(mm.mmput());
    let err = MmuNotifier::register(&mm, Recorder::with(OpSet::RELEASE)).unwrap_err();
    assert_eq!(
        err,
        NotifierError::InvalidArgument(InvalidArgument::NoLiveUsers)
    );
}

/// c9682d10: insert checks `users` (mmget), not the grab count, which is still held here.
#[test]
fn interval_insert_requires_a_live_user_reference() {
    let mm = new_mm();
    let keep_active = IntervalNotifier::insert(&mm, 0, 0x1000, mirror()).unwrap();
    let grab = mm.mmgrab();
    assert!(mm.mmput(), "last user");
    assert!(Arc::strong_count(&grab) > 1, "the core is still grabbed");
    let err = IntervalNotifier::insert(&mm, 0x1000, 0x1000, mirror())
        .err()
        .unwrap();
    assert_eq!(
        err,
        NotifierError::InvalidArgument(InvalidArgument::NoLiveUsers)
    );
    let lock = mm.mmap_write();
    assert!(IntervalNotifier::insert_locked(&lock, 0x1000, 0x1000, mirror()).is_err());
    drop(lock);
    keep_active.remove();
}

#[test]
fn interval_length_overflow_is_an_error() {
    let mm = new_mm();
    let zero = IntervalNotifier::insert(&mm, 0x1000, 0, mirror())
        .err()
        .unwrap();
    assert_eq!(zero, NotifierError::Overflow(Overflow::ZeroLength));
    assert_eq!(zero.errno(), -75);
    let wrap = IntervalNotifier::insert(&mm, u64::MAX, 2, mirror())
        .err()
        .unwrap();
    assert_eq!(wrap, NotifierError::Overflow(Overflow::IntervalEnd));
    assert!(
        !mm.has_notifiers(),
        "a rejected insert allocated subscriptions"
    );
    // The very last address is a valid one-byte interval; so is the whole space.
    IntervalNotifier::insert(&mm, u64::MAX, 1, mirror())
        .unwrap()
        .remove();
    IntervalNotifier::insert(&mm, 0, u64::MAX, mirror())
        .unwrap()
        .remove();
}

/// 6.10 registers the address space before checking the interval: a rejected insert leaves
/// the interval tree enabled there, and every later invalidation counts as active for
/// intervals (the sequence moves, a racing insert is deferred). Here a rejected insert changes
/// nothing: the sequence stays, and an insert during an invalidation links at once.
#[test]
fn a_rejected_interval_insert_leaves_invalidations_untouched() {
    let mm = new_mm();
    let list = MmuNotifier::register(&mm, Recorder::with(OpSet::INVALIDATE_RANGE_START)).unwrap();
    let seq = mm_seq(&mm);
    assert!(IntervalNotifier::insert(&mm, 0x1000, 0, mirror()).is_err());
    assert!(!mm.subscriptions().unwrap().has_itree.load(SeqCst));
    let lock = mm.mmap_read();
    let inv = lock.invalidate_range_start(range(0x1000, 0x2000));
    assert_eq!(active_ranges(&mm), 0, "the interval half was not started");
    inv.end();
    drop(lock);
    assert_eq!(mm_seq(&mm), seq, "the sequence moved");
    list.unregister();
}

/// 6.10 reports -ENOMEM when the first insert of an address space both fails to allocate and
/// has a bad length (it registers first); here the bad input is reported, and nothing is
/// allocated for it.
#[test]
fn a_bad_interval_is_reported_before_any_allocation() {
    let mm = new_mm();
    crate::mm::notifier::alloc::inject::fail_after(0);
    let err = IntervalNotifier::insert(&mm, 0x1000, 0, mirror())
        .err()
        .unwrap();
    crate::mm::notifier::alloc::inject::fail_after(usize::MAX);
    assert_eq!(err, NotifierError::Overflow(Overflow::ZeroLength));
    assert!(!mm.has_notifiers());
}

/// 6.10 calls `invalidate_range_end` on a list subscriber registered while a range was open
/// (its `start` was never called: the list was checked at end, not at start). Here end goes
/// only to those the start reached: no end without a start.
#[test]
fn a_subscriber_registered_during_an_invalidation_gets_no_unmatched_end() {
    let mm = new_mm();
    let lock = mm.mmap_write();
    let inv = lock.invalidate_range_start(range(0x1000, 0x2000));
    let rec = Recorder::with(OpSet::INVALIDATE_RANGE_START | OpSet::INVALIDATE_RANGE_END);
    let sub = MmuNotifier::register_locked(&lock, rec.clone()).unwrap();
    inv.end();
    drop(lock);
    assert_eq!((rec.starts.load(SeqCst), rec.ends.load(SeqCst)), (0, 0));
    sub.unregister();
}

/// An interval subscriber that logs its id when called, and refuses once when told to.
struct Logged {
    id: u32,
    log: Arc<Mutex<Vec<u32>>>,
    refuse_next: AtomicBool,
}

impl IntervalNotifierOps for Logged {
    fn invalidate(&self, sub: &IntervalNotifier, _range: &NotifierRange, cur_seq: u64) -> bool {
        self.log.lock().unwrap().push(self.id);
        if self.refuse_next.swap(false, SeqCst) {
            return false;
        }
        sub.set_seq(cur_seq);
        true
    }
}

fn logged(id: u32, log: &Arc<Mutex<Vec<u32>>>) -> Arc<Logged> {
    Arc::new(Logged {
        id,
        log: log.clone(),
        refuse_next: AtomicBool::new(false),
    })
}

/// Intervals with the same start are called in the order they entered the tree, whatever
/// their addresses: the freed slots of removed subscriptions are reused by later ones, which
/// an address order would put first.
#[test]
fn same_start_intervals_are_called_in_insertion_order() {
    let mm = new_mm();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut subs: Vec<Option<IntervalSubscription>> = (0..8)
        .map(|id| Some(IntervalNotifier::insert(&mm, 0x4000, 0x1000, logged(id, &log)).unwrap()))
        .collect();
    for id in [0, 2, 4, 6] {
        subs[id].take().unwrap().remove();
    }
    subs.extend((8..12).map(|id| {
        Some(IntervalNotifier::insert(&mm, 0x4000, 0x1000, logged(id, &log)).unwrap())
    }));
    let lock = mm.mmap_read();
    lock.invalidate_range_start(range(0x4000, 0x5000)).end();
    drop(lock);
    assert_eq!(*log.lock().unwrap(), [1, 3, 5, 7, 8, 9, 10, 11]);
}

/// The issue-19 scenario, against 6.10: two intervals with one start are inserted while a range
/// is open, so both are deferred; the last end links the newest first (6.10 walks its deferred
/// list from the head). A non-blockable invalidation then calls 3 (which accepts) and only
/// then 2 (which refuses): the same subset of subscribers has been told as in 6.10.
#[test]
fn deferred_same_start_intervals_enter_the_tree_newest_first() {
    let mm = new_mm();
    let log = Arc::new(Mutex::new(Vec::new()));
    let one = IntervalNotifier::insert(&mm, 0x1000, 0x1000, logged(1, &log)).unwrap();
    let lock = mm.mmap_read();
    let open = lock.invalidate_range_start(range(0x1000, 0x2000));
    let two_ops = logged(2, &log);
    let two = IntervalNotifier::insert(&mm, 0x5000, 0x1000, two_ops.clone()).unwrap();
    let three = IntervalNotifier::insert(&mm, 0x5000, 0x1000, logged(3, &log)).unwrap();
    open.end();
    two_ops.refuse_next.store(true, SeqCst);
    assert!(lock
        .invalidate_range_start_nonblock(range(0x5000, 0x6000))
        .is_err());
    drop(lock);
    assert_eq!(*log.lock().unwrap(), [1, 3, 2]);
    for sub in [one, two, three] {
        sub.remove();
    }
}

#[test]
fn empty_ranges_are_rejected() {
    assert_eq!(
        NotifierRange::new(NotifyEvent::Clear, 0x2000, 0x2000),
        Err(NotifierError::InvalidArgument(InvalidArgument::EmptyRange))
    );
    let r = NotifierRange::new(NotifyEvent::Migrate, 0, 0x1000)
        .unwrap()
        .with_owner(7);
    assert_eq!(
        (r.owner(), r.event(), r.last()),
        (Some(7), NotifyEvent::Migrate, 0xfff)
    );
}

// ---- get / put ---------------------------------------------------------------------------------

#[test]
fn get_shares_one_subscriber_per_ops_type() {
    let mm = new_mm();
    let a = MmuNotifier::get::<Recorder>(&mm).unwrap();
    let b = MmuNotifier::get::<Recorder>(&mm).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.users(), 2);
    let other = MmuNotifier::get::<Other>(&mm).unwrap();
    assert!(!Arc::ptr_eq(&a, &other));
    assert!(a.ops_as::<Recorder>().is_some() && a.ops_as::<Other>().is_none());
    a.put();
    b.put();
    other.put();
    mm.grace_domain().barrier();
}

#[test]
fn put_frees_through_free_notifier_after_a_grace_period() {
    let mm = new_mm();
    let a = MmuNotifier::get::<Recorder>(&mm).unwrap();
    let b = MmuNotifier::get::<Recorder>(&mm).unwrap();
    let keep = a.clone();
    let frees = || keep.ops_as::<Recorder>().unwrap().frees.load(SeqCst);
    let reader = mm.grace_domain().read_lock();
    a.put();
    assert!(keep.is_linked(), "the first put unlinked");
    b.put();
    assert!(!keep.is_linked(), "the last put did not unlink");
    // A grace period cannot end while a reader that may still see the subscriber is inside.
    let done = Arc::new(AtomicBool::new(false));
    let gp = {
        let (mm, done) = (mm.clone(), done.clone());
        std::thread::spawn(move || {
            mm.grace_domain().barrier();
            done.store(true, SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(frees(), 0, "freed inside a read section");
    assert!(!done.load(SeqCst));
    drop(reader);
    gp.join().unwrap();
    assert_eq!(frees(), 1);
    let weak = Arc::downgrade(&keep);
    drop(keep);
    assert!(
        weak.upgrade().is_none(),
        "the core still holds the subscriber"
    );
    assert_eq!(
        Arc::strong_count(&mm),
        1,
        "the subscriber's grab was not dropped"
    );
}

#[test]
fn get_overflowing_the_user_count_is_an_error() {
    let mm = new_mm();
    let a = MmuNotifier::get::<Recorder>(&mm).unwrap();
    a.set_users_for_test(u32::MAX);
    let err = MmuNotifier::get::<Recorder>(&mm).err().unwrap();
    assert_eq!(err, NotifierError::Overflow(Overflow::Users));
    assert_eq!(a.users(), u32::MAX, "a failed get changed the count");
    a.set_users_for_test(1);
    a.put();
    mm.grace_domain().barrier();
}

#[test]
fn get_without_alloc_notifier_is_an_error() {
    struct NoAlloc;
    impl MmuNotifierOps for NoAlloc {
        fn implemented(&self) -> OpSet {
            OpSet::NONE
        }
    }
    let mm = new_mm();
    let err = MmuNotifier::get::<NoAlloc>(&mm).err().unwrap();
    assert_eq!(
        err,
        NotifierError::InvalidArgument(InvalidArgument::NoAllocNotifier)
    );
}

#[test]
fn put_from_release_is_allowed() {
    let mm = new_mm();
    let handle = MmuNotifier::get::<Recorder>(&mm).unwrap();
    let ops = handle.clone();
    *ops.ops_as::<Recorder>()
        .unwrap()
        .put_in_release
        .lock()
        .unwrap() = Some(handle);
    assert!(mm.mmput());
    mm.grace_domain().barrier();
    let rec = ops.ops_as::<Recorder>().unwrap();
    assert_eq!((rec.releases.load(SeqCst), rec.frees.load(SeqCst)), (1, 1));
}

// ---- unregister and release -------------------------------------------------------------------

#[test]
fn unregister_before_teardown_calls_release_once() {
    let mm = new_mm();
    let ops = Recorder::with(OpSet::RELEASE);
    let sub = MmuNotifier::register(&mm, ops.clone()).unwrap();
    sub.unregister();
    assert_eq!(ops.releases.load(SeqCst), 1);
    assert!(mm.mmput());
    assert_eq!(
        ops.releases.load(SeqCst),
        1,
        "teardown released an unregistered subscriber"
    );
}

#[test]
fn unregister_after_teardown_does_not_release_again() {
    let mm = new_mm();
    let ops = Recorder::with(OpSet::RELEASE);
    let sub = MmuNotifier::register(&mm, ops.clone()).unwrap();
    assert!(mm.mmput());
    assert_eq!(ops.releases.load(SeqCst), 1);
    assert!(!sub.is_linked());
    sub.unregister();
    assert_eq!(ops.releases.load(SeqCst), 1);
}

fn teardown_with_self_check(mm: &Arc<MmCore>) -> Arc<Recorder> {
    let ops = Recorder::with(OpSet::RELEASE);
    let sub = MmuNotifier::register(mm, ops.clone()).unwrap();
    *ops.me.lock().unwrap() = Some(Arc::downgrade(&sub));
    assert!(mm.mmput());
    sub.unregister();
    ops
}

/// 3ad3d901 / d34883d4: `release` runs while the subscriber is still linked.
#[test]
fn teardown_calls_release_before_unlinking() {
    let ops = teardown_with_self_check(&new_mm());
    assert!(ops.linked_during_release.load(SeqCst));
}

#[test]
fn teardown_check_fails_when_unlinking_first() {
    let mm = new_mm();
    mm.debug_knobs().unlink_before_release.store(true, SeqCst);
    let ops = teardown_with_self_check(&mm);
    assert_eq!(ops.releases.load(SeqCst), 1, "release lost");
    assert!(
        !ops.linked_during_release.load(SeqCst),
        "the knob did not reproduce the bug"
    );
}

/// 751efd86 / d34883d4: unregister racing teardown neither crashes, nor unlinks twice, nor loses
/// the release; a double release is allowed.
#[test]
fn unregister_racing_teardown_releases_at_least_once() {
    for _ in 0..200 {
        let mm = new_mm();
        let ops = Recorder::with(OpSet::RELEASE);
        let sub = MmuNotifier::register(&mm, ops.clone()).unwrap();
        let other_ops = Recorder::with(OpSet::RELEASE);
        let other = MmuNotifier::register(&mm, other_ops.clone()).unwrap();
        let teardown = {
            let mm = mm.clone();
            std::thread::spawn(move || assert!(mm.mmput()))
        };
        sub.unregister();
        teardown.join().unwrap();
        let releases = ops.releases.load(SeqCst);
        assert!((1..=2).contains(&releases), "{releases} releases");
        assert_eq!(other_ops.releases.load(SeqCst), 1);
        other.unregister();
        assert!(mm.subscriptions().unwrap().list_is_empty());
        assert_eq!(Arc::strong_count(&mm), 1, "a subscriber reference leaked");
    }
}

#[test]
fn teardown_sends_release_over_the_whole_space_to_interval_subscribers() {
    let mm = new_mm();
    let m = mirror();
    let sub = IntervalNotifier::insert(&mm, 0x4000, 0x1000, m.clone()).unwrap();
    assert!(mm.mmput());
    let r = m.last_range.lock().unwrap().unwrap();
    assert_eq!(
        (r.event(), r.start(), r.end(), r.is_blockable()),
        (NotifyEvent::Release, 0, u64::MAX, true)
    );
    assert_eq!(active_ranges(&mm), 0);
    sub.remove();
}

// ---- list invalidation -------------------------------------------------------------------------

#[test]
fn start_and_end_reach_every_list_subscriber() {
    let mm = new_mm();
    let ops: Vec<_> = (0..3)
        .map(|_| Recorder::with(OpSet::INVALIDATE_RANGE_START | OpSet::INVALIDATE_RANGE_END))
        .collect();
    let subs: Vec<_> = ops
        .iter()
        .map(|o| MmuNotifier::register(&mm, o.clone()).unwrap())
        .collect();
    let lock = mm.mmap_read();
    let inv = lock.invalidate_range_start(range(0, 0x1000));
    assert!(ops
        .iter()
        .all(|o| o.starts.load(SeqCst) == 1 && o.ends.load(SeqCst) == 0));
    inv.end();
    assert!(ops.iter().all(|o| o.ends.load(SeqCst) == 1));
    drop(lock);
    subs.into_iter().for_each(MmuNotifier::unregister);
}

fn refusal_setup(
    mm: &MmCore,
) -> (
    Arc<Recorder>,
    Arc<Recorder>,
    Arc<MmuNotifier>,
    Arc<MmuNotifier>,
) {
    let good = Recorder::with(OpSet::INVALIDATE_RANGE_START | OpSet::INVALIDATE_RANGE_END);
    let refusing = Arc::new(Recorder {
        ops: OpSet::INVALIDATE_RANGE_START,
        refuse_nonblock: true,
        ..Default::default()
    });
    let a = MmuNotifier::register(mm, good.clone()).unwrap();
    let b = MmuNotifier::register(mm, refusing.clone()).unwrap();
    (good, refusing, a, b)
}

/// c2655835: after a refusal, every subscriber whose start succeeded gets its end, and the
/// caller gets would-block (and no invalidation to end).
#[test]
fn nonblock_refusal_calls_end_on_subscribers_that_started() {
    let mm = new_mm();
    let (good, refusing, a, b) = refusal_setup(&mm);
    let lock = mm.mmap_read();
    assert_eq!(
        lock.invalidate_range_start_nonblock(range(0, 0x1000)).err(),
        Some(WouldBlock)
    );
    assert_eq!((good.starts.load(SeqCst), good.ends.load(SeqCst)), (1, 1));
    // The refusing subscriber does not implement end, so it never gets one.
    assert_eq!(refusing.ends.load(SeqCst), 0);
    // Blockable: the same subscriber does not refuse, and nothing is unwound.
    lock.invalidate_range_start(range(0, 0x1000)).end();
    assert_eq!((good.starts.load(SeqCst), good.ends.load(SeqCst)), (2, 2));
    drop(lock);
    a.unregister();
    b.unregister();
}

#[test]
fn nonblock_refusal_check_fails_without_the_unwind() {
    let mm = new_mm();
    mm.debug_knobs().skip_end_after_refusal.store(true, SeqCst);
    let (good, _refusing, a, b) = refusal_setup(&mm);
    let lock = mm.mmap_read();
    assert!(lock
        .invalidate_range_start_nonblock(range(0, 0x1000))
        .is_err());
    assert_eq!(
        (good.starts.load(SeqCst), good.ends.load(SeqCst)),
        (1, 0),
        "the knob did not unbalance"
    );
    drop(lock);
    a.unregister();
    b.unregister();
}

#[test]
fn interval_refusal_ends_the_interval_half() {
    let mm = new_mm();
    let refusing = Arc::new(Mirror {
        refuse_nonblock: true,
        ..Default::default()
    });
    let sub = IntervalNotifier::insert(&mm, 0x1000, 0x1000, refusing).unwrap();
    let seq_before = mm_seq(&mm);
    let lock = mm.mmap_read();
    assert!(lock
        .invalidate_range_start_nonblock(range(0x1000, 0x2000))
        .is_err());
    drop(lock);
    assert_eq!(active_ranges(&mm), 0);
    assert_eq!(mm_seq(&mm) & 1, 0, "sequence left odd");
    assert_ne!(mm_seq(&mm), seq_before);
    let seq = sub.read_begin();
    assert!(!sub.read_retry(seq));
    sub.remove();
}

fn section6_scenario(
    mm: &Arc<MmCore>,
) -> (IntervalSubscription, Arc<MmuNotifier>, Arc<MmuNotifier>) {
    let sub = IntervalNotifier::insert(mm, 0x1000, 0x1000, mirror()).unwrap();
    let (_good, _refusing, a, b) = refusal_setup(mm);
    let lock = mm.mmap_read();
    assert_eq!(
        lock.invalidate_range_start_nonblock(range(0x1000, 0x2000))
            .err(),
        Some(WouldBlock)
    );
    (sub, a, b)
}

/// §6 of notifier-tests-history.md: a list refusal after the interval half succeeded must not
/// leave the interval half open (6.10 does; this port deviates).
#[test]
fn list_refusal_after_interval_success_ends_the_interval_half() {
    let mm = new_mm();
    let (sub, a, b) = section6_scenario(&mm);
    assert_eq!(active_ranges(&mm), 0);
    assert_eq!(mm_seq(&mm) & 1, 0);
    let seq = sub.read_begin(); // would wait forever in 6.10
    assert!(!sub.read_retry(seq));
    sub.remove();
    a.unregister();
    b.unregister();
}

#[test]
fn section6_check_fails_with_the_610_behaviour() {
    let mm = new_mm();
    mm.debug_knobs()
        .leave_itree_open_on_list_refusal
        .store(true, SeqCst);
    let (sub, a, b) = section6_scenario(&mm);
    assert_eq!(active_ranges(&mm), 1, "the knob did not reproduce 6.10");
    assert_eq!(mm_seq(&mm) & 1, 1);
    // Close the leaked half by hand so the test can clean up.
    mm.subscriptions().unwrap().itree_inv_end();
    sub.remove();
    a.unregister();
    b.unregister();
}

/// f7edb07ad7c6: the secondary TLB gets exactly the invalidated range, never an empty one.
#[test]
fn secondary_tlb_invalidation_gets_the_exact_range() {
    let mm = new_mm();
    let iommu = Recorder::with(OpSet::ARCH_INVALIDATE_SECONDARY_TLBS);
    let bystander = Recorder::with(OpSet::INVALIDATE_RANGE_START);
    let a = MmuNotifier::register(&mm, iommu.clone()).unwrap();
    let b = MmuNotifier::register(&mm, bystander).unwrap();
    let page = crate::mm::PAGE_SIZE as u64;
    for pages in [1u64, 3, 512, 513] {
        mm.arch_invalidate_secondary_tlbs(0x40_0000, 0x40_0000 + pages * page)
            .unwrap();
    }
    assert_eq!(
        mm.arch_invalidate_secondary_tlbs(0x5000, 0x5000),
        Err(NotifierError::InvalidArgument(InvalidArgument::EmptyRange))
    );
    let seen = iommu.secondary.lock().unwrap().clone();
    let want: Vec<_> = [1u64, 3, 512, 513]
        .iter()
        .map(|p| (0x40_0000, 0x40_0000 + p * page))
        .collect();
    assert_eq!(seen, want);
    a.unregister();
    b.unregister();
}

#[test]
fn test_young_stops_at_the_first_young_subscriber() {
    let mm = new_mm();
    // The list is LIFO: register the old one first so the young one is walked first.
    let old = Arc::new(Recorder {
        ops: OpSet::TEST_YOUNG | OpSet::CLEAR_YOUNG,
        ..Default::default()
    });
    let young = Arc::new(Recorder {
        ops: OpSet::TEST_YOUNG | OpSet::CLEAR_YOUNG,
        young: true,
        ..Default::default()
    });
    let a = MmuNotifier::register(&mm, old.clone()).unwrap();
    let b = MmuNotifier::register(&mm, young.clone()).unwrap();
    assert!(mm.test_young(0x1000));
    assert_eq!(
        (young.young_calls.load(SeqCst), old.young_calls.load(SeqCst)),
        (1, 0)
    );
    // clear_young asks everybody and ORs.
    assert!(mm.clear_young(0, 0x1000));
    assert_eq!(
        (young.young_calls.load(SeqCst), old.young_calls.load(SeqCst)),
        (2, 1)
    );
    assert!(
        !mm.clear_flush_young(0, 0x1000),
        "no subscriber implements clear_flush_young"
    );
    a.unregister();
    b.unregister();
    assert!(!mm.test_young(0x1000));
}

// ---- interval insert / remove / read side ----------------------------------------------------

#[test]
fn insert_while_idle_links_at_once_with_a_stale_odd_sequence() {
    let mm = new_mm();
    let sub = IntervalNotifier::insert(&mm, 0x1000, 0x1000, mirror()).unwrap();
    assert!(in_tree(&sub));
    let seq = sub.read_begin();
    assert_eq!(seq & 1, 1);
    assert_ne!(seq, mm_seq(&mm));
    assert!(!sub.read_retry(seq));
    sub.remove();
}

#[test]
fn insert_while_partially_excluded_links_and_counts_as_invalidated() {
    let mm = new_mm();
    let far = IntervalNotifier::insert(&mm, 0x10_0000, 0x1000, mirror()).unwrap();
    let lock = mm.mmap_read();
    let inv = lock.invalidate_range_start(range(0x1000, 0x2000)); // hits nobody
    assert_eq!(
        (active_ranges(&mm), mm_seq(&mm) & 1),
        (1, 0),
        "not partially excluded"
    );
    let sub = IntervalNotifier::insert(&mm, 0x1000, 0x1000, mirror()).unwrap();
    assert!(in_tree(&sub), "partial exclusion deferred the insert");
    assert_eq!(mm_seq(&mm) & 1, 1, "the sequence must turn odd");
    assert!(sub.check_retry(mm_seq(&mm).wrapping_sub(1)));
    drop(inv);
    assert_eq!(mm_seq(&mm) & 1, 0);
    let seq = sub.read_begin();
    assert!(!sub.read_retry(seq));
    drop(lock);
    sub.remove();
    far.remove();
}

#[test]
fn insert_while_fully_excluded_is_deferred_to_the_last_end() {
    let mm = new_mm();
    let hit = IntervalNotifier::insert(&mm, 0x1000, 0x1000, mirror()).unwrap();
    let lock = mm.mmap_read();
    let outer = lock.invalidate_range_start(range(0x1000, 0x2000));
    let late_ops = mirror();
    let late = IntervalNotifier::insert(&mm, 0x1000, 0x1000, late_ops.clone()).unwrap();
    assert!(!in_tree(&late), "the tree changed while fully excluded");
    let nested = lock.invalidate_range_start(range(0x1000, 0x2000));
    assert_eq!(
        late_ops.calls.load(SeqCst),
        0,
        "a deferred subscriber was called"
    );
    drop(nested);
    assert!(!in_tree(&late), "applied before the last end");
    drop(outer);
    assert!(in_tree(&late));
    drop(lock);
    late.remove();
    hit.remove();
}

#[test]
fn remove_of_an_entry_still_on_the_deferred_list_cancels_it() {
    let mm = new_mm();
    let hit = IntervalNotifier::insert(&mm, 0x1000, 0x1000, mirror()).unwrap();
    let lock = mm.mmap_read();
    let inv = lock.invalidate_range_start(range(0x1000, 0x2000));
    let late = IntervalNotifier::insert(&mm, 0x1000, 0x1000, mirror()).unwrap();
    let weak = Arc::downgrade(late.notifier());
    late.remove(); // must not wait: the entry was never linked
    assert!(weak.upgrade().is_none(), "the deferred list still holds it");
    drop(inv);
    drop(lock);
    let subs = mm.subscriptions().unwrap();
    assert_eq!(subs.with_tree(&subs.lock.lock(), |t| t.len()), 1);
    hit.remove();
}

/// Also the regression test of 319561669a59 on the host: `remove` must not return before the
/// last `inv_end` has unlinked the entry.
#[test]
fn remove_while_invalidating_waits_and_is_deferred() {
    let mm = new_mm();
    let sub = IntervalNotifier::insert(&mm, 0x1000, 0x1000, mirror()).unwrap();
    let weak = Arc::downgrade(sub.notifier());
    let lock = mm.mmap_read();
    let inv = lock.invalidate_range_start(range(0x1000, 0x2000));
    let returned = Arc::new(AtomicBool::new(false));
    let remover = {
        let returned = returned.clone();
        std::thread::spawn(move || {
            sub.remove();
            returned.store(true, SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(30));
    assert!(
        !returned.load(SeqCst),
        "remove returned during the invalidation"
    );
    assert!(weak.upgrade().is_some());
    drop(inv);
    remover.join().unwrap();
    assert!(
        weak.upgrade().is_none(),
        "remove returned while the core still held the subscription"
    );
    drop(lock);
}

#[test]
fn read_retry_is_true_after_a_collision_and_false_otherwise() {
    let mm = new_mm();
    let sub = IntervalNotifier::insert(&mm, 0x1000, 0x1000, mirror()).unwrap();
    let seq = sub.read_begin();
    assert!(!sub.read_retry(seq) && !sub.check_retry(seq));
    // A disjoint invalidation does not collide.
    mm.mmap_read()
        .invalidate_range_start(range(0x3000, 0x4000))
        .end();
    assert!(!sub.read_retry(seq));
    // An overlapping one does.
    mm.mmap_read()
        .invalidate_range_start(range(0x1fff, 0x3000))
        .end();
    assert!(sub.read_retry(seq) && sub.check_retry(seq));
    let seq = sub.read_begin();
    assert!(!sub.read_retry(seq));
    sub.remove();
}

#[test]
fn read_begin_waits_while_its_range_is_invalidated() {
    let mm = new_mm();
    let sub = Arc::new(IntervalNotifier::insert(&mm, 0x1000, 0x1000, mirror()).unwrap());
    let lock = mm.mmap_read();
    let inv = lock.invalidate_range_start(range(0x1000, 0x2000));
    let returned = Arc::new(AtomicBool::new(false));
    let reader = {
        let (sub, returned) = (sub.clone(), returned.clone());
        std::thread::spawn(move || {
            let seq = sub.read_begin();
            returned.store(true, SeqCst);
            seq
        })
    };
    std::thread::sleep(Duration::from_millis(30));
    assert!(
        !returned.load(SeqCst),
        "read_begin returned during the invalidation"
    );
    drop(inv);
    let seq = reader.join().unwrap();
    assert!(!sub.read_retry(seq));
    drop(lock);
    Arc::into_inner(sub).unwrap().remove();
}

#[test]
fn only_the_last_of_nested_invalidations_ends_the_exclusion() {
    let mm = new_mm();
    let sub = IntervalNotifier::insert(&mm, 0x1000, 0x1000, mirror()).unwrap();
    let lock = mm.mmap_read();
    let a = lock.invalidate_range_start(range(0x1000, 0x2000));
    let odd = mm_seq(&mm);
    let b = lock.invalidate_range_start(range(0x8000, 0x9000));
    drop(a);
    assert_eq!(
        mm_seq(&mm),
        odd,
        "ended while another invalidation was active"
    );
    drop(b);
    assert_eq!(mm_seq(&mm), odd.wrapping_add(1));
    drop(lock);
    sub.remove();
}

#[test]
fn sequence_wraps_around_without_losing_collisions() {
    let mm = new_mm();
    let sub = IntervalNotifier::insert(&mm, 0x1000, 0x1000, mirror()).unwrap();
    {
        let subs = mm.subscriptions().unwrap();
        let _locked = subs.lock.lock();
        subs.invalidate_seq.store(u64::MAX - 3, SeqCst); // even, idle
    }
    for _ in 0..4 {
        let seq = sub.read_begin();
        assert!(!sub.read_retry(seq));
        mm.mmap_read()
            .invalidate_range_start(range(0x1000, 0x2000))
            .end();
        assert!(sub.read_retry(seq), "collision lost at sequence {seq:#x}");
        assert_eq!(mm_seq(&mm) & 1, 0);
    }
    assert!(mm_seq(&mm) < 8, "the sequence did not wrap");
    // An insert while idle right after the wrap takes seq - 1 across zero.
    {
        let subs = mm.subscriptions().unwrap();
        let _locked = subs.lock.lock();
        subs.invalidate_seq.store(0, SeqCst);
    }
    let fresh = IntervalNotifier::insert(&mm, 0x1000, 0x1000, mirror()).unwrap();
    let seq = fresh.read_begin();
    assert_eq!(seq, u64::MAX);
    assert!(!fresh.read_retry(seq));
    fresh.remove();
    sub.remove();
}

#[test]
fn invalidation_reaches_exactly_the_overlapping_interval_subscribers() {
    let mm = new_mm();
    let mirrors: Vec<_> = (0..64).map(|_| mirror()).collect();
    let subs: Vec<_> = (0..64u64)
        .map(|i| {
            IntervalNotifier::insert(&mm, i * 0x1000, 0x1800, mirrors[i as usize].clone()).unwrap()
        })
        .collect();
    let s = mm.subscriptions().unwrap();
    assert_eq!(s.with_tree(&s.lock.lock(), |t| t.check_invariants()), 64);
    mm.mmap_read()
        .invalidate_range_start(range(0x8000, 0x9000))
        .end();
    let called: Vec<_> = (0..64)
        .filter(|&i| mirrors[i].calls.load(SeqCst) == 1)
        .collect();
    // [i*0x1000, i*0x1000 + 0x17ff] meets [0x8000, 0x8fff] for i = 7 and 8 only.
    assert_eq!(called, [7, 8]);
    assert_eq!(
        mirrors.iter().map(|m| m.calls.load(SeqCst)).sum::<usize>(),
        2
    );
    drop(subs);
    assert_eq!(s.with_tree(&s.lock.lock(), |t| t.len()), 0);
    assert_eq!(s.lock.lock().intervals, 0);
}

/// The lockdep role: waiting for an invalidation from inside one is caught in debug builds.
#[cfg(debug_assertions)]
#[test]
fn read_begin_from_an_invalidate_callback_is_caught() {
    struct Reentrant(Mutex<Option<Arc<IntervalNotifier>>>);
    impl IntervalNotifierOps for Reentrant {
        fn invalidate(&self, sub: &IntervalNotifier, _range: &NotifierRange, cur_seq: u64) -> bool {
            sub.set_seq(cur_seq);
            if let Some(me) = self.0.lock().unwrap().as_ref() {
                me.read_begin(); // would wait for the invalidation that is calling us
            }
            true
        }
    }
    let mm = new_mm();
    let ops = Arc::new(Reentrant(Mutex::new(None)));
    let sub = IntervalNotifier::insert(&mm, 0, 0x1000, ops.clone()).unwrap();
    *ops.0.lock().unwrap() = Some(sub.notifier().clone());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        mm.mmap_read()
            .invalidate_range_start(range(0, 0x1000))
            .end();
    }));
    let message = outcome.unwrap_err();
    let message = message.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("called from a notifier callback"),
        "{message}"
    );
    // The panic left this address space mid-invalidation: abandon it rather than wait.
    core::mem::forget(sub);
    core::mem::forget(mm);
}
