//! The notifier core on all CPUs at once: CPUs invalidating overlapping and disjoint ranges,
//! others running `read_begin`/`read_retry` loops, one inserting and removing interval
//! subscriptions. No lost invalidation, no deadlock, every callback count adds up.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};

use crate::arch::aarch64::smp;
use crate::mm::notifier::{
    IntervalNotifier, IntervalNotifierOps, IntervalSubscription, MmCore, NotifierRange, NotifyEvent,
};
use crate::sync::SpinLock;
use crate::{kassert, kassert_eq, ktest};

const PAGE: u64 = 0x1000;
const PAGES: usize = 32;
const FIXED: usize = 8;

/// A "device" mirroring two pages: its shadow copy must never be stale.
struct Shadow {
    user_lock: SpinLock<Option<Vec<u64>>>,
    calls: AtomicUsize,
}

impl Shadow {
    fn new() -> Self {
        Shadow {
            user_lock: SpinLock::new(None),
            calls: AtomicUsize::new(0),
        }
    }
}

impl IntervalNotifierOps for Shadow {
    fn invalidate(&self, sub: &IntervalNotifier, _range: &NotifierRange, cur_seq: u64) -> bool {
        let mut shadow = self.user_lock.lock();
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
    /// Stand-ins for PTEs: a generation per page, bumped inside each invalidation.
    ptes: Vec<AtomicU64>,
    subs: Vec<IntervalSubscription>,
    shadows: Vec<Arc<Shadow>>,
    expected: Vec<AtomicUsize>,
    missed: AtomicUsize,
    churned: AtomicUsize,
}

fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

fn invalidator(w: &World, mut rng: u64, rounds: usize, disjoint_half: Option<usize>) {
    for _ in 0..rounds {
        let (lo, hi) = match disjoint_half {
            Some(h) => (h * PAGES / 2, (h + 1) * PAGES / 2),
            None => (0, PAGES),
        };
        let first = lo + (next(&mut rng) % (hi - lo) as u64) as usize;
        let last = (first + (next(&mut rng) % 5) as usize).min(hi - 1);
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
        .expect("non-empty range");
        let lock = w.mm.mmap_read();
        let inv = lock.invalidate_range_start(range);
        for pte in &w.ptes[first..=last] {
            pte.fetch_add(1, SeqCst);
        }
        inv.end();
    }
}

fn reader(w: &World, mut rng: u64, rounds: usize) {
    for _ in 0..rounds {
        let i = (next(&mut rng) % FIXED as u64) as usize;
        let sub = &w.subs[i];
        let seq = sub.read_begin();
        let snapshot: Vec<u64> = w.ptes[pages_of(i)].iter().map(|p| p.load(SeqCst)).collect();
        let mut shadow = w.shadows[i].user_lock.lock();
        if !sub.read_retry(seq) {
            // Any invalidation of these pages since read_begin would have run `invalidate`
            // (under this lock) before changing them, and read_retry would be true.
            let now: Vec<u64> = w.ptes[pages_of(i)].iter().map(|p| p.load(SeqCst)).collect();
            if snapshot != now {
                w.missed.fetch_add(1, SeqCst);
            }
            *shadow = Some(snapshot);
        }
    }
}

fn churn(w: &World, mut rng: u64, rounds: usize) {
    for _ in 0..rounds {
        let first = next(&mut rng) % PAGES as u64;
        if let Ok(sub) =
            IntervalNotifier::insert(&w.mm, first * PAGE, 3 * PAGE, Arc::new(Shadow::new()))
        {
            let seq = sub.read_begin();
            let _ = sub.check_retry(seq);
            sub.remove();
            w.churned.fetch_add(1, SeqCst);
        }
    }
}

ktest!(notifier, smp_invalidate_read_and_churn_lose_nothing, |t| {
    let mm = MmCore::new();
    let shadows: Vec<Arc<Shadow>> = (0..FIXED).map(|_| Arc::new(Shadow::new())).collect();
    let mut subs = Vec::new();
    for (i, s) in shadows.iter().enumerate() {
        let sub =
            IntervalNotifier::insert(&mm, pages_of(i).start as u64 * PAGE, 2 * PAGE, s.clone());
        kassert!(sub.is_ok(), "insert failed: {:?}", sub.err());
        subs.extend(sub);
    }
    let w = World {
        mm,
        ptes: (0..PAGES).map(|_| AtomicU64::new(0)).collect(),
        subs,
        shadows,
        expected: (0..FIXED).map(|_| AtomicUsize::new(0)).collect(),
        missed: AtomicUsize::new(0),
        churned: AtomicUsize::new(0),
    };
    let seed = t.rand() | 1;
    let cpus = smp::online_count();
    // Roles by CPU: overlapping invalidator, invalidator of one half, reader, churner; with
    // fewer CPUs the first ones take several roles in turn.
    smp::on_each_cpu(&|cpu| {
        let roles: Vec<usize> = (0..4).filter(|r| r % cpus == cpu).collect();
        for role in roles {
            let rng = seed.wrapping_mul(role as u64 + 3) | 1;
            match role {
                0 => invalidator(&w, rng, 400, None),
                1 => invalidator(&w, rng, 400, Some(1)),
                2 => reader(&w, rng, 800),
                _ => churn(&w, rng, 150),
            }
        }
    });
    kassert_eq!(w.missed.load(SeqCst), 0);
    kassert_eq!(w.churned.load(SeqCst), 150);
    for i in 0..FIXED {
        kassert_eq!(w.shadows[i].calls.load(SeqCst), w.expected[i].load(SeqCst));
        // A shadow that survived must match the final page generations.
        if let Some(s) = w.shadows[i].user_lock.lock().as_ref() {
            let now: Vec<u64> = w.ptes[pages_of(i)].iter().map(|p| p.load(SeqCst)).collect();
            kassert_eq!(*s, now);
        }
    }
    Ok(())
});
