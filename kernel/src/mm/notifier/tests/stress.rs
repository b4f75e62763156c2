//! A host version of the SMP scenario the kernel's KTAP suite runs on 4 CPUs: threads
//! invalidating overlapping and disjoint ranges while others run `read_begin`/`read_retry`
//! loops and insert/remove interval subscriptions. No lost invalidation, no deadlock, and every
//! callback count adds up.

use super::*;
use core::sync::atomic::AtomicU64;

const PAGE: u64 = 0x1000;
const PAGES: usize = 32;
const FIXED: usize = 8;

/// A mirror whose shadow copy of its pages' "PTE generations" must never be stale.
#[derive(Default)]
struct Shadow {
    user_lock: Mutex<Option<Vec<u64>>>,
    calls: AtomicUsize,
}

impl IntervalNotifierOps for Shadow {
    fn invalidate(&self, sub: &IntervalNotifier, _range: &NotifierRange, cur_seq: u64) -> bool {
        let mut shadow = self.user_lock.lock().unwrap();
        sub.set_seq(cur_seq);
        *shadow = None;
        self.calls.fetch_add(1, SeqCst);
        true
    }
}

fn pages_of(i: usize) -> core::ops::Range<usize> {
    i * 4..i * 4 + 2
}

struct World {
    mm: Arc<MmCore>,
    ptes: Vec<AtomicU64>,
    subs: Vec<IntervalSubscription>,
    shadows: Vec<Arc<Shadow>>,
    expected: Vec<AtomicUsize>,
    /// Readers that saw `read_retry == false` although their pages changed.
    missed: AtomicUsize,
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn invalidator(w: &World, seed: u64, rounds: usize) {
    let mut rng = seed;
    for _ in 0..rounds {
        let first = (xorshift(&mut rng) % PAGES as u64) as usize;
        let len = 1 + (xorshift(&mut rng) % 5) as usize;
        let last = (first + len).min(PAGES) - 1;
        for (i, e) in w.expected.iter().enumerate() {
            if pages_of(i).start <= last && first < pages_of(i).end {
                e.fetch_add(1, SeqCst);
            }
        }
        let range = NotifierRange::new(
            NotifyEvent::Clear,
            first as u64 * PAGE,
            (last as u64 + 1) * PAGE,
        )
        .unwrap();
        let lock = w.mm.mmap_read();
        let inv = lock.invalidate_range_start(range);
        std::thread::yield_now();
        for pte in &w.ptes[first..=last] {
            pte.fetch_add(1, SeqCst);
        }
        inv.end();
    }
}

fn reader(w: &World, seed: u64, rounds: usize) {
    let mut rng = seed;
    for _ in 0..rounds {
        let i = (xorshift(&mut rng) % FIXED as u64) as usize;
        let sub = &w.subs[i];
        let seq = sub.read_begin();
        let snapshot: Vec<u64> = w.ptes[pages_of(i)].iter().map(|p| p.load(SeqCst)).collect();
        // Widen the window an invalidation must not slip through unnoticed.
        std::thread::yield_now();
        let mut shadow = w.shadows[i].user_lock.lock().unwrap();
        if !sub.read_retry(seq) {
            // No invalidation of these pages can have started since read_begin: it would have
            // called `invalidate` (taking the user lock) before changing them.
            let now: Vec<u64> = w.ptes[pages_of(i)].iter().map(|p| p.load(SeqCst)).collect();
            if snapshot != now {
                // Recorded, not asserted: a panic here would leave the others waiting.
                w.missed.fetch_add(1, SeqCst);
            }
            *shadow = Some(snapshot);
        }
    }
}

fn churn(w: &World, seed: u64, rounds: usize) {
    let mut rng = seed;
    for _ in 0..rounds {
        let first = xorshift(&mut rng) % PAGES as u64;
        let sub =
            IntervalNotifier::insert(&w.mm, first * PAGE, 3 * PAGE, Arc::new(Shadow::default()))
                .unwrap();
        let weak = Arc::downgrade(sub.notifier());
        let seq = sub.read_begin();
        let _ = sub.check_retry(seq);
        sub.remove();
        assert!(
            weak.upgrade().is_none(),
            "remove returned with the core holding the subscription"
        );
    }
}

#[test]
fn smp_invalidate_read_and_churn_loses_nothing() {
    let mm = new_mm();
    let shadows: Vec<_> = (0..FIXED).map(|_| Arc::new(Shadow::default())).collect();
    let subs = (0..FIXED)
        .map(|i| {
            IntervalNotifier::insert(
                &mm,
                pages_of(i).start as u64 * PAGE,
                2 * PAGE,
                shadows[i].clone(),
            )
            .unwrap()
        })
        .collect();
    let world = World {
        mm,
        ptes: (0..PAGES).map(|_| AtomicU64::new(0)).collect(),
        subs,
        shadows,
        expected: (0..FIXED).map(|_| AtomicUsize::new(0)).collect(),
        missed: AtomicUsize::new(0),
    };
    std::thread::scope(|s| {
        s.spawn(|| invalidator(&world, 0x9e37_79b9, 4000));
        s.spawn(|| invalidator(&world, 0x7f4a_7c15, 4000));
        s.spawn(|| reader(&world, 0x1234_5678, 6000));
        s.spawn(|| reader(&world, 0x0bad_cafe, 6000));
        s.spawn(|| churn(&world, 0xfeed_f00d, 2000));
    });
    assert_eq!(
        world.missed.load(SeqCst),
        0,
        "read_retry missed invalidations"
    );
    for i in 0..FIXED {
        assert_eq!(
            world.shadows[i].calls.load(SeqCst),
            world.expected[i].load(SeqCst),
            "callback count of {i}"
        );
        let current: Vec<u64> = world.ptes[pages_of(i)]
            .iter()
            .map(|p| p.load(SeqCst))
            .collect();
        if let Some(shadow) = world.shadows[i].user_lock.lock().unwrap().clone() {
            assert_eq!(shadow, current, "subscription {i} kept a stale shadow");
        }
    }
    let mm = world.mm.clone();
    drop(world);
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
    assert_eq!(subs.invalidate_seq.load(SeqCst) & 1, 0);
}
