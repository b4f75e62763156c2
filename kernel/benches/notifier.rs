//! Notifier hot paths (criterion; `make bench` runs it and checks the goals in
//! `harness bench-report`):
//!
//! * `dispatch/*`: `invalidate_range_start`/`end` and `arch_invalidate_secondary_tlbs` with no
//!   subscriber, against `empty_call`: the same calls made to functions that do nothing, with
//!   the same arguments and results (`empty_call_by_ref` passes references only). Goal:
//!   no more than 2x on the `has_itree`/empty-list fast path, i.e. for an address space that
//!   was never subscribed to (`never_subscribed`) and for one whose list subscribers all
//!   unregistered (`list_emptied`). Also measured, outside the goal: `itree_emptied`, whose
//!   interval tree was enabled and is empty again. Like Linux, its invalidations still take
//!   the subscriptions lock and count themselves active, because an `insert` that races them
//!   must see an invalidation in progress (see `IntervalNotifier::insert`).
//! * `invalidate_range_start_end/list` and `arch_invalidate_secondary_tlbs/list`: 0, 1, 16 and
//!   256 list subscribers.
//! * `interval_invalidation`: 10 ... 100k interval subscribers, invalidating a range that hits
//!   one of them, through the interval tree and through a linear scan of every subscription
//!   (what the tree replaces). Goal: the tree at least 100x faster at 100k.
//! * `read_side`: `read_begin` + `read_retry` on an idle subscription (the device fault path's
//!   fast path), on 1 and on 2 threads at once (each on the same subscription, or each on its
//!   own subscription of the same address space). Reported per read and thread in *thread CPU
//!   time*, so that threads sharing a busy core do not look slower: what grows with threads is
//!   the cost of cache lines moving between cores (a lock or counter written by every read).
//!
//! `cargo bench -p shootdown --features bench --bench notifier`

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
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

/// An SVA-style subscriber: only the secondary-TLB callback.
struct TlbCounter(AtomicUsize);

impl MmuNotifierOps for TlbCounter {
    fn implemented(&self) -> OpSet {
        OpSet::ARCH_INVALIDATE_SECONDARY_TLBS
    }
    fn arch_invalidate_secondary_tlbs(&self, _mm: &MmCore, _start: u64, _end: u64) {
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
const LIST_SIZES: [usize; 4] = [0, 1, 16, 256];
const INTERVAL_SIZES: [u64; 5] = [10, 100, 1_000, 10_000, 100_000];

fn unmap_range() -> NotifierRange {
    NotifierRange::new(NotifyEvent::Unmap, 0x40_0000, 0x40_0000 + PAGE).unwrap()
}

/// What the empty `start` returns, as `invalidate_range_start` returns an `Invalidation`
/// holding the address space and the range.
struct EmptyInvalidation<'a> {
    mm: &'a MmCore,
    range: NotifierRange,
}

/// The goal's baseline: functions that do nothing, with the API's arguments and result (the
/// range by value in, an invalidation holding it out, ended by a second call).
#[inline(never)]
fn empty_start(mm: &MmCore, range: NotifierRange) -> EmptyInvalidation<'_> {
    EmptyInvalidation { mm, range }
}

#[inline(never)]
fn empty_end(inv: EmptyInvalidation<'_>) {
    black_box((inv.mm, &inv.range));
}

/// The same with both arguments by reference, no result (reported, not the goal's baseline:
/// no 40-byte range is passed by value).
#[inline(never)]
fn empty_start_by_ref(mm: &MmCore, range: &NotifierRange) {
    black_box((mm, range));
}

#[inline(never)]
fn empty_end_by_ref(mm: &MmCore, range: &NotifierRange) {
    black_box((mm, range));
}

#[inline(never)]
fn empty_secondary(mm: &MmCore, start: u64, end: u64) {
    black_box((mm, start, end));
}

/// An address space whose only list subscriber unregistered: its subscriptions are
/// allocated, the list is empty and the interval tree was never enabled.
fn list_emptied_mm() -> Arc<MmCore> {
    let mm = MmCore::new();
    let sub = MmuNotifier::register(&mm, Arc::new(TlbCounter(AtomicUsize::new(0)))).unwrap();
    sub.unregister();
    mm
}

/// An address space whose only interval subscriber was removed: `has_itree` stays set.
fn itree_emptied_mm() -> Arc<MmCore> {
    let mm = MmCore::new();
    let interval =
        IntervalNotifier::insert(&mm, 0x1000, PAGE, Arc::new(Mirror(AtomicUsize::new(0)))).unwrap();
    drop(interval);
    mm
}

fn dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    let range = unmap_range();
    let never = MmCore::new();
    let list_emptied = list_emptied_mm();
    let itree_emptied = itree_emptied_mm();
    let cases = [
        ("never_subscribed", &never),
        ("list_emptied", &list_emptied),
        ("itree_emptied", &itree_emptied),
    ];
    group.bench_function("empty_call/start_end", |b| {
        b.iter(|| empty_end(empty_start(black_box(&never), black_box(range))))
    });
    group.bench_function("empty_call_by_ref/start_end", |b| {
        b.iter(|| {
            empty_start_by_ref(black_box(&never), black_box(&range));
            empty_end_by_ref(black_box(&never), black_box(&range));
        })
    });
    for (name, mm) in cases {
        let lock = mm.mmap_read();
        group.bench_function(BenchmarkId::new("start_end", name), |b| {
            b.iter(|| lock.invalidate_range_start(black_box(range)).end())
        });
    }
    group.bench_function("empty_call/secondary_tlbs", |b| {
        b.iter(|| {
            empty_secondary(
                black_box(&never),
                black_box(0x40_0000),
                black_box(0x40_1000),
            )
        })
    });
    for (name, mm) in cases {
        group.bench_function(BenchmarkId::new("secondary_tlbs", name), |b| {
            b.iter(|| mm.arch_invalidate_secondary_tlbs(black_box(0x40_0000), black_box(0x40_1000)))
        });
    }
    group.finish();
}

fn list_subscribers(c: &mut Criterion) {
    let mut group = c.benchmark_group("invalidate_range_start_end/list");
    for n in LIST_SIZES {
        let mm = MmCore::new();
        let subs: Vec<_> = (0..n)
            .map(|_| {
                MmuNotifier::register(&mm, Arc::new(RangeCounter(AtomicUsize::new(0)))).unwrap()
            })
            .collect();
        let range = unmap_range();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let lock = mm.mmap_read();
            b.iter(|| lock.invalidate_range_start(black_box(range)).end());
        });
        subs.into_iter().for_each(MmuNotifier::unregister);
    }
    group.finish();

    let mut group = c.benchmark_group("arch_invalidate_secondary_tlbs/list");
    for n in LIST_SIZES {
        let mm = MmCore::new();
        let subs: Vec<_> = (0..n)
            .map(|_| MmuNotifier::register(&mm, Arc::new(TlbCounter(AtomicUsize::new(0)))).unwrap())
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| mm.arch_invalidate_secondary_tlbs(black_box(0x40_0000), black_box(0x40_1000)))
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
    for n in INTERVAL_SIZES {
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

/// CPU time consumed by the calling thread so far.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "CLOCK_THREAD_CPUTIME_ID is available on Linux");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One read-side critical section of the device fault path, with nothing colliding.
#[inline]
fn read(sub: &IntervalNotifier) {
    let seq = sub.read_begin();
    black_box(sub.read_retry(black_box(seq)));
}

/// Reader threads that live for a whole benchmark, each pinned to its own CPU (when the
/// machine has enough), so that a measurement is not a thread start-up and two readers never
/// share a core's cache.
struct Readers {
    go: Vec<mpsc::Sender<u64>>,
    done: mpsc::Receiver<Duration>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Readers {
    fn new(subs: &[Arc<IntervalNotifier>]) -> Self {
        let start = Arc::new(Barrier::new(subs.len()));
        let (done_tx, done) = mpsc::channel();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut go = Vec::new();
        let mut handles = Vec::new();
        for (i, sub) in subs.iter().enumerate() {
            let (tx, rx) = mpsc::channel::<u64>();
            let (sub, start, done_tx) = (sub.clone(), start.clone(), done_tx.clone());
            handles.push(std::thread::spawn(move || {
                if subs_fit(i, cpus) {
                    pin_to_cpu(i);
                }
                for iters in rx {
                    start.wait();
                    let before = thread_cpu_time();
                    for _ in 0..iters {
                        read(&sub);
                    }
                    done_tx.send(thread_cpu_time() - before).unwrap();
                }
            }));
            go.push(tx);
        }
        Self { go, done, handles }
    }

    /// Every reader makes `iters` reads at the same time; returns the CPU time per reader.
    fn run(&self, iters: u64) -> Duration {
        for tx in &self.go {
            tx.send(iters).unwrap();
        }
        let total: Duration = (0..self.go.len()).map(|_| self.done.recv().unwrap()).sum();
        total / self.go.len() as u32
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.go.clear();
        for h in self.handles.drain(..) {
            h.join().unwrap();
        }
    }
}

fn subs_fit(index: usize, cpus: usize) -> bool {
    index < cpus
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity(0, ...)
    // only changes the calling thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn read_side(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_side");
    let mm = MmCore::new();
    let mirror = Arc::new(Mirror(AtomicUsize::new(0)));
    let own: Vec<_> = (0..2)
        .map(|i| IntervalNotifier::insert(&mm, (i + 1) * 16 * PAGE, PAGE, mirror.clone()).unwrap())
        .collect();
    let first = own[0].notifier().clone();
    group.bench_function("read_begin_retry", |b| b.iter(|| read(&first)));
    let cases = [
        ("threads", vec![first.clone()]),
        ("same_subscription", vec![first.clone(), first.clone()]),
        (
            "own_subscription",
            own.iter().map(|s| s.notifier().clone()).collect(),
        ),
    ];
    for (name, subs) in cases {
        let readers = Readers::new(&subs);
        group.bench_function(BenchmarkId::new(name, subs.len()), |b| {
            b.iter_custom(|iters| readers.run(iters))
        });
    }
    group.finish();
    drop(own);
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = dispatch, list_subscribers, interval_subscribers, read_side
}
criterion_main!(benches);
