//! Notifier hot paths: `invalidate_range_start`/`end` with 0, 1, 16 and 256 list subscribers;
//! interval invalidation with 10, 1k and 100k interval subscribers against a linear scan.
//!
//! `cargo bench -p shootdown --bench notifier`

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shootdown::mm::notifier::{
    IntervalNotifier, IntervalNotifierOps, MmCore, MmuNotifier, MmuNotifierOps, NotifierRange,
    NotifyEvent, OpSet,
};

struct RangeCounter(AtomicUsize);

impl MmuNotifierOps for RangeCounter {
    fn implemented(&self) -> OpSet {
        OpSet::INVALIDATE_RANGE_START | OpSet::INVALIDATE_RANGE_END
    }
    fn invalidate_range_end(&self, _mm: &MmCore, _range: &NotifierRange) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

struct Mirror(AtomicUsize);

impl IntervalNotifierOps for Mirror {
    fn invalidate(&self, sub: &IntervalNotifier, _range: &NotifierRange, cur_seq: u64) -> bool {
        sub.set_seq(cur_seq);
        self.0.fetch_add(1, Ordering::Relaxed);
        true
    }
}

const PAGE: u64 = 0x1000;

fn list_subscribers(c: &mut Criterion) {
    let mut group = c.benchmark_group("invalidate_range_start_end/list");
    for n in [0usize, 1, 16, 256] {
        let mm = MmCore::new();
        let subs: Vec<_> = (0..n)
            .map(|_| {
                MmuNotifier::register(&mm, Arc::new(RangeCounter(AtomicUsize::new(0)))).unwrap()
            })
            .collect();
        let range = NotifierRange::new(NotifyEvent::Unmap, 0x40_0000, 0x40_0000 + PAGE).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let lock = mm.mmap_read();
            b.iter(|| lock.invalidate_range_start(black_box(range)).end());
        });
        subs.into_iter().for_each(MmuNotifier::unregister);
    }
    group.finish();
}

/// What the tree replaces: every subscription checked on every invalidation.
struct LinearScan {
    intervals: Vec<(u64, u64, Arc<Mirror>)>,
}

impl LinearScan {
    fn invalidate(&self, first: u64, last: u64) {
        for (start, end, m) in &self.intervals {
            if *start <= last && first <= *end {
                m.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn interval_subscribers(c: &mut Criterion) {
    let mut group = c.benchmark_group("interval_invalidation");
    for n in [10u64, 1_000, 100_000] {
        let mm = MmCore::new();
        // One 4-page subscription every 8 pages; the benchmark invalidates one page that hits one.
        let mirror = Arc::new(Mirror(AtomicUsize::new(0)));
        let subs: Vec<_> = (0..n)
            .map(|i| IntervalNotifier::insert(&mm, i * 8 * PAGE, 4 * PAGE, mirror.clone()).unwrap())
            .collect();
        let target = (n / 2) * 8 * PAGE + PAGE;
        let range = NotifierRange::new(NotifyEvent::Clear, target, target + PAGE).unwrap();
        group.bench_with_input(BenchmarkId::new("tree", n), &n, |b, _| {
            let lock = mm.mmap_read();
            b.iter(|| lock.invalidate_range_start(black_box(range)).end());
        });
        let linear = LinearScan {
            intervals: (0..n)
                .map(|i| (i * 8 * PAGE, i * 8 * PAGE + 4 * PAGE - 1, mirror.clone()))
                .collect(),
        };
        group.bench_with_input(BenchmarkId::new("linear_scan", n), &n, |b, _| {
            b.iter(|| linear.invalidate(black_box(target), black_box(target + PAGE - 1)));
        });
        drop(subs);
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = list_subscribers, interval_subscribers }
criterion_main!(benches);
