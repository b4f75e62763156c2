//! Random interleavings of insert / remove / invalidate / read_begin / read_retry against a
//! reference model of the collision-retry protocol.
//!
//! The model tracks, per subscription, whether it is linked in the tree, waiting to be linked,
//! being removed, and whether `read_begin` would wait; per reader, whether an invalidation of
//! its range started during its critical section. Checked after every step:
//! * a reader that sees `read_retry == false` never overlapped an invalidation of its range,
//!   and one that did always sees `true` (no lost and no spurious collision);
//! * `read_begin` would wait exactly when the model says the subscription is being invalidated;
//! * each subscription's callback ran exactly once per invalidation that found it linked.
//!
//! Invalidations are held open across steps, so nesting and overlap happen. A removal that has
//! to wait runs on a helper thread and must finish when the last invalidation ends.
//! `PROPTEST_CASES` raises the number of cases (default 64).

use super::*;
use proptest::prelude::*;
use std::thread::JoinHandle;

const SLOTS: usize = 4;
const PAGE: u64 = 0x1000;

#[derive(Debug, Clone)]
enum Step {
    Insert {
        slot: usize,
        page: u64,
        pages: u64,
    },
    Remove(usize),
    Start {
        page: u64,
        pages: u64,
        nonblock: bool,
    },
    End(usize),
    ReadBegin(usize),
    ReadRetry(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..SLOTS, 0u64..16, 1u64..4).prop_map(|(slot, page, pages)| Step::Insert {
            slot,
            page,
            pages
        }),
        (0..SLOTS).prop_map(Step::Remove),
        (0u64..16, 1u64..4, any::<bool>()).prop_map(|(page, pages, nonblock)| Step::Start {
            page,
            pages,
            nonblock
        }),
        any::<usize>().prop_map(Step::End),
        (0..SLOTS).prop_map(Step::ReadBegin),
        (0..SLOTS).prop_map(Step::ReadRetry),
    ]
}

struct Slot {
    handle: IntervalSubscription,
    ops: Arc<Mirror>,
    first: u64,
    last: u64,
    linked: bool,
    blocked: bool,
    expected_calls: usize,
    /// An open read-side section: its sequence and whether an invalidation collided.
    reader: Option<(u64, bool)>,
}

struct Remover {
    ops: Arc<Mirror>,
    expected_calls: usize,
    first: u64,
    last: u64,
    thread: JoinHandle<()>,
}

/// Fields drop in order: open invalidations end before subscriptions are removed, so a failing
/// case unwinds instead of deadlocking.
struct Model<'a> {
    open: Vec<(Invalidation<'a>, u64, u64)>,
    mm: &'a MmCore,
    lock: &'a MmapReadGuard<'a>,
    slots: Vec<Option<Slot>>,
    removers: Vec<Remover>,
    /// The tree is fully excluded (the model's "sequence is odd").
    odd: bool,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

impl<'a> Model<'a> {
    fn apply(&mut self, step: Step) {
        match step {
            Step::Insert { slot, page, pages } => self.insert(slot, page * PAGE, pages * PAGE),
            Step::Remove(slot) => self.remove(slot),
            Step::Start {
                page,
                pages,
                nonblock,
            } => self.start(page * PAGE, (page + pages) * PAGE - 1, nonblock),
            Step::End(i) if !self.open.is_empty() => self.end(i % self.open.len()),
            Step::End(_) => {}
            Step::ReadBegin(slot) => self.read_begin(slot),
            Step::ReadRetry(slot) => self.read_retry(slot),
        }
        self.check_calls();
    }

    fn insert(&mut self, slot: usize, start: u64, len: u64) {
        if self.slots[slot].is_some() {
            return;
        }
        let ops = mirror();
        let handle = IntervalNotifier::insert(self.mm, start, len, ops.clone()).unwrap();
        let (linked, blocked) = if self.open.is_empty() {
            (true, false)
        } else if self.odd {
            (false, true) // deferred
        } else {
            self.odd = true; // partial exclusion turns full
            (true, true)
        };
        let s = Slot {
            handle,
            ops,
            first: start,
            last: start + len - 1,
            linked,
            blocked,
            expected_calls: 0,
            reader: None,
        };
        self.slots[slot] = Some(s);
    }

    fn remove(&mut self, slot: usize) {
        let Some(s) = self.slots[slot].take() else {
            return;
        };
        if !self.odd || !s.linked {
            // Idle, partially excluded, or still on the deferred list: immediate.
            let weak = Arc::downgrade(s.handle.notifier());
            s.handle.remove();
            assert!(
                weak.upgrade().is_none(),
                "remove returned with the core holding the subscription"
            );
            return;
        }
        let handle = s.handle;
        let thread = std::thread::spawn(move || handle.remove());
        self.removers.push(Remover {
            ops: s.ops,
            expected_calls: s.expected_calls,
            first: s.first,
            last: s.last,
            thread,
        });
    }

    fn start(&mut self, first: u64, last: u64, nonblock: bool) {
        let r = (first, last);
        let mut hit = false;
        for s in self.slots.iter_mut().flatten() {
            if !overlaps(r, (s.first, s.last)) {
                continue;
            }
            if let Some((_, collided)) = s.reader.as_mut() {
                *collided = true;
            }
            if s.linked {
                hit = true;
                s.blocked = true;
                s.expected_calls += 1;
            }
        }
        for rm in &mut self.removers {
            if overlaps(r, (rm.first, rm.last)) {
                hit = true;
                rm.expected_calls += 1;
            }
        }
        self.odd |= hit;
        let range = NotifierRange::new(NotifyEvent::Clear, first, last + 1).unwrap();
        let inv = if nonblock {
            self.lock
                .invalidate_range_start_nonblock(range)
                .expect("nobody refuses")
        } else {
            self.lock.invalidate_range_start(range)
        };
        self.open.push((inv, first, last));
    }

    fn end(&mut self, i: usize) {
        drop(self.open.remove(i));
        if !self.open.is_empty() {
            return;
        }
        // The last end: the deferred updates are applied, nobody is being invalidated.
        self.odd = false;
        for s in self.slots.iter_mut().flatten() {
            s.linked = true;
            s.blocked = false;
        }
        for rm in self.removers.drain(..) {
            rm.thread.join().unwrap();
            assert_eq!(rm.ops.calls.load(SeqCst), rm.expected_calls);
        }
    }

    fn read_begin(&mut self, slot: usize) {
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        if s.reader.is_some() {
            return;
        }
        let mm_seq = self.mm.subscriptions().unwrap().invalidate_seq.load(SeqCst);
        let would_wait = !s.handle.check_retry(mm_seq);
        assert_eq!(
            would_wait, s.blocked,
            "read_begin would wait: model {} real {}",
            s.blocked, would_wait
        );
        if !would_wait {
            s.reader = Some((s.handle.read_begin(), false));
        }
    }

    fn read_retry(&mut self, slot: usize) {
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        let Some((seq, collided)) = s.reader.take() else {
            return;
        };
        let _user = s.ops.user_lock.lock().unwrap();
        let retry = s.handle.read_retry(seq);
        assert!(
            retry || !collided,
            "a reader overlapped an invalidation of its range and saw no retry"
        );
        assert!(!retry || collided, "spurious retry");
    }

    fn check_calls(&self) {
        for s in self.slots.iter().flatten() {
            assert_eq!(
                s.ops.calls.load(SeqCst),
                s.expected_calls,
                "callback count of [{:#x}, {:#x}]",
                s.first,
                s.last
            );
        }
    }

    fn finish(mut self) {
        while !self.open.is_empty() {
            self.end(0);
        }
        for slot in 0..SLOTS {
            self.remove(slot);
        }
        assert!(self.removers.is_empty());
    }
}

fn run(steps: Vec<Step>) {
    let mm = new_mm();
    // Enable the tree up front (insert may otherwise take the mmap lock we hold below).
    let anchor = IntervalNotifier::insert(&mm, 0x100_0000, PAGE, mirror()).unwrap();
    {
        let lock = mm.mmap_read();
        let mut model = Model {
            open: Vec::new(),
            mm: &mm,
            lock: &lock,
            slots: (0..SLOTS).map(|_| None).collect(),
            removers: Vec::new(),
            odd: false,
        };
        for s in steps {
            model.apply(s);
        }
        model.finish();
    }
    anchor.remove();
    let subs = mm.subscriptions().unwrap();
    let locked = subs.lock.lock();
    assert_eq!(
        (
            locked.active_invalidate_ranges,
            locked.intervals,
            locked.deferred.len()
        ),
        (0, 0, 0)
    );
    assert!(subs.with_tree(&locked, |t| t.is_empty()));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_interleavings_match_the_model(steps in proptest::collection::vec(step(), 1..60)) {
        run(steps);
    }
}

/// A fixed interleaving that exercises every model path at least once.
#[test]
fn scripted_interleaving_covers_deferral_and_waiting_removal() {
    use Step::*;
    run(vec![
        Insert {
            slot: 0,
            page: 0,
            pages: 2,
        },
        ReadBegin(0),
        Start {
            page: 1,
            pages: 1,
            nonblock: false,
        }, // hits 0: full exclusion
        ReadBegin(0), // would wait
        Insert {
            slot: 1,
            page: 1,
            pages: 1,
        }, // deferred
        Remove(1),    // cancelled on the deferred list
        Insert {
            slot: 2,
            page: 8,
            pages: 1,
        }, // deferred
        Remove(0),    // waits for the last end
        Start {
            page: 0,
            pages: 1,
            nonblock: true,
        }, // nested
        End(0),
        End(0),
        ReadBegin(2),
        Start {
            page: 12,
            pages: 1,
            nonblock: false,
        }, // partial exclusion
        Insert {
            slot: 3,
            page: 12,
            pages: 1,
        }, // linked, counts as invalidated
        ReadBegin(3),
        End(0),
        ReadBegin(3),
        Start {
            page: 8,
            pages: 1,
            nonblock: false,
        },
        ReadRetry(2),
        End(0),
        ReadRetry(3),
    ]);
}
