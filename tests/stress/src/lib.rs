//! `make stress`: the coherence path under real preemption and real parallelism, on the host.
//!
//! The portable core — address spaces, the notifier, SVA, the SMMU driver and the SMMU model —
//! runs on OS threads:
//!
//! * **CPU threads** own page slots in every shared address space and, without pause, map them
//!   (over frames from their own pool, filled with the slot's generation word), unmap runs of
//!   them (now and then runs long enough for the driver's free cover), flip runs between
//!   read-only and read-write, and insert and remove interval notifiers
//!   over them (each must see every change of its range before the change returns);
//! * **device threads**, each a StreamID bound through SVA to one address space, run the SMMU
//!   model's DMA (8-byte reads and writes) at random slots of it, without pause;
//! * an **event drainer** empties the SMMU's event queue.
//!
//! Checked: the model's coherence checker (no translation used from a cache after the
//! invalidation that should have removed it); each device access against the slot's published
//! state ([`slot::judge`]: nothing reaches a page after its unmap or downgrade returned, reads
//! return only words the page held); every freed frame is still all poison when reused and
//! every read-only page unchanged when next changed (no device write landed late); no interval
//! invalidation lost; no unexpected SMMU event. The driver's `skip_invalidation` knob must make
//! the same run fail.
//!
//! Seeded: each thread's operations come from `seed` (printed, with the command that replays
//! them); the interleaving is the OS scheduler's, which is the point.

#![forbid(unsafe_code)]

mod cpu;
mod device;
pub mod slot;
mod world;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use shootdown::iommu::driver::DebugKnobs;
use shootdown::iommu::sva::{self, Bond, SvaDomain};
use shootdown::mm::aspace::{AddressSpace, MmUser};
use shootdown::mm::pgtable::MAIR_VALUE;
use shootdown::mm::{PhysAddr, VirtAddr, PAGE_SIZE};

use slot::Slot;
use world::{Domain, StressPlatform, World};

const PAGE: u64 = PAGE_SIZE as u64;
/// 8-byte words per page.
const WORDS: usize = PAGE_SIZE / 8;
/// Where the slots start in every address space.
const SLOTS_VA: u64 = 0x1000_0000;

type User = MmUser<StressPlatform>;

/// What to run.
#[derive(Debug, Clone)]
pub struct Params {
    pub seed: u64,
    /// Device accesses (8-byte DMA transactions) in total.
    pub accesses: u64,
    pub cpus: usize,
    pub devices: usize,
    /// Shared address spaces; device `d` is bound to space `d % spaces`.
    pub spaces: usize,
    /// Page slots each CPU thread owns in each space.
    pub slots_per_cpu: usize,
    /// Debug: the driver skips every IOTLB invalidation (the run must then fail).
    pub skip_invalidation: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            seed: 1,
            accesses: 10_000_000,
            cpus: 3,
            devices: 3,
            spaces: 2,
            // More than `cpu::LONG_RUN`, so long runs happen.
            slots_per_cpu: 48,
            skip_invalidation: false,
        }
    }
}

impl Params {
    /// The command line that replays this run.
    pub fn replay(&self) -> String {
        format!(
            "--seed {} --accesses {} --cpus {} --devices {} --spaces {} --slots {}{}",
            self.seed,
            self.accesses,
            self.cpus,
            self.devices,
            self.spaces,
            self.slots_per_cpu,
            if self.skip_invalidation {
                " --skip-invalidation"
            } else {
                ""
            }
        )
    }

    fn check(&self) -> Result<(), String> {
        if self.cpus == 0 || self.devices == 0 || self.spaces == 0 || self.slots_per_cpu == 0 {
            return Err("cpus, devices, spaces and slots must be at least 1".into());
        }
        if self.devices < self.spaces {
            return Err(format!(
                "{} devices cannot cover {} address spaces (one device per space at least)",
                self.devices, self.spaces
            ));
        }
        if self.cpus * self.slots_per_cpu > 1 << 16 || self.spaces > 256 || self.devices > 64 {
            return Err("at most 65536 slots per space, 256 spaces and 64 devices".into());
        }
        Ok(())
    }
}

/// The StreamID of device `d`.
fn sid(d: usize) -> u32 {
    0x10 + d as u32
}

/// The frame holding word `w` of `frame`.
fn at(frame: PhysAddr, w: usize) -> PhysAddr {
    PhysAddr(frame.as_u64() + 8 * w as u64)
}

/// A small seeded generator (SplitMix64): each thread replays its own sequence.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Counters the threads add to.
#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    faulted: AtomicU64,
    after_return: AtomicU64,
    wrong_data: AtomicU64,
    unexpected_faults: AtomicU64,
    maps: AtomicU64,
    unmaps: AtomicU64,
    protects: AtomicU64,
    inserts: AtomicU64,
    removes: AtomicU64,
    long_runs: AtomicU64,
    lost_invalidations: AtomicU64,
    dirty_frames: AtomicU64,
    frozen_writes: AtomicU64,
    events: AtomicU64,
    unexpected_events: AtomicU64,
    errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One address space and its published slot states.
struct Space {
    user: User,
    asid: u16,
    slots: Vec<Slot>,
}

/// What every thread of a run shares.
struct Shared<'w> {
    world: &'w World,
    params: &'w Params,
    spaces: Vec<Space>,
    c: Counters,
    /// Device accesses not yet claimed.
    budget: AtomicU64,
    /// Set once the devices are done.
    stop: AtomicBool,
    next_unmap: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Shared<'_> {
    fn va(&self, slot: usize) -> VirtAddr {
        VirtAddr(SLOTS_VA + slot as u64 * PAGE)
    }

    fn done(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Claims up to `n` accesses of the budget; 0 once it is spent.
    fn claim(&self, n: u64) -> u64 {
        match self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                b.checked_sub(b.min(n))
            }) {
            Ok(before) => before.min(n),
            Err(_) => 0,
        }
    }

    /// Records an error (the first 32 are kept for the report).
    fn error(&self, e: String) {
        bump(&self.c.errors);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 32 {
            errors.push(e);
        }
    }
}

/// What a run did and found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub params: Params,
    pub elapsed: Duration,
    pub accesses: u64,
    pub reads: u64,
    pub writes: u64,
    pub faulted: u64,
    pub maps: u64,
    pub unmaps: u64,
    pub protects: u64,
    pub inserts: u64,
    pub removes: u64,
    /// Unmaps of runs long enough to need several range TLBIs, and the driver's range
    /// invalidations sent as one command over a free cover.
    pub long_runs: u64,
    pub covered_invalidations: u64,
    pub lost_invalidations: u64,
    /// Device accesses that got through after the unmap or downgrade returned.
    pub after_return: u64,
    pub wrong_data: u64,
    pub unexpected_faults: u64,
    /// Freed frames found written when reused; read-only pages found changed.
    pub dirty_frames: u64,
    pub frozen_writes: u64,
    /// The model's checker: stale translations, and allowed races inside unmap windows.
    pub model_stale: u64,
    pub model_races: u64,
    pub iotlb_hits: u64,
    pub iotlb_invalidated: u64,
    pub smmu_invalidations: u64,
    pub events: u64,
    pub unexpected_events: u64,
    /// Drains that found events lost, and the events the model dropped (queue full).
    pub event_losses: u64,
    pub events_dropped: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    /// The model checker's first records.
    pub first_stale: Vec<String>,
}

impl Report {
    /// Stale uses of any kind (what the failing twin must show).
    pub fn stale(&self) -> u64 {
        self.after_return
            + self.wrong_data
            + self.dirty_frames
            + self.frozen_writes
            + self.model_stale
    }

    /// No stale use, no lost invalidation, nothing unexpected, no error.
    pub fn passed(&self) -> bool {
        self.stale() == 0
            && self.lost_invalidations == 0
            && self.unexpected_faults == 0
            && self.unexpected_events == 0
            && self.errors == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.params;
        let secs = self.elapsed.as_secs_f64();
        writeln!(f, "stress summary (replay with {})", p.replay())?;
        writeln!(
            f,
            "  threads          {} CPU, {} device (StreamIDs {:#x}..={:#x}), 1 event drainer; {} address spaces, {} slots each; {:.1} s",
            p.cpus,
            p.devices,
            sid(0),
            sid(p.devices - 1),
            p.spaces,
            p.cpus * p.slots_per_cpu,
            secs
        )?;
        writeln!(
            f,
            "  device accesses  {} ({} reads, {} writes; {} faulted); {:.0} per second",
            self.accesses,
            self.reads,
            self.writes,
            self.faulted,
            self.accesses as f64 / secs.max(1e-9)
        )?;
        writeln!(
            f,
            "  cpu operations   {} (mmap {}, munmap {} of which {} long runs, mprotect {}, interval inserts {}, removes {})",
            self.maps + self.unmaps + self.protects + self.inserts + self.removes,
            self.maps,
            self.unmaps,
            self.long_runs,
            self.protects,
            self.inserts,
            self.removes
        )?;
        writeln!(
            f,
            "  smmu             invalidations {} ({} over a free cover), IOTLB hits {}, entries invalidated {}; events {} (unexpected {}; lost {}, in {} overflows)",
            self.smmu_invalidations,
            self.covered_invalidations,
            self.iotlb_hits,
            self.iotlb_invalidated,
            self.events,
            self.unexpected_events,
            self.events_dropped,
            self.event_losses
        )?;
        writeln!(
            f,
            "  stale            {} (after return {}, wrong data {}, late writes to freed frames {}, to read-only pages {}, model checker {}; races inside unmap windows {})",
            self.stale(),
            self.after_return,
            self.wrong_data,
            self.dirty_frames,
            self.frozen_writes,
            self.model_stale,
            self.model_races
        )?;
        writeln!(
            f,
            "  lost invalid.    {}; unexpected faults {}; errors {}",
            self.lost_invalidations, self.unexpected_faults, self.errors
        )?;
        for e in &self.first_stale {
            writeln!(f, "  checker          {e}")?;
        }
        for e in self.first_errors.iter().take(8) {
            writeln!(f, "  error            {e}")?;
        }
        writeln!(
            f,
            "  result           {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )?;
        write!(
            f,
            "# stress seed={} cpus={} devices={} spaces={} accesses={} operations={} stale={} lost_invalidations={} elapsed_ms={} result={}",
            p.seed,
            p.cpus,
            p.devices,
            p.spaces,
            self.accesses,
            self.maps + self.unmaps + self.protects + self.inserts + self.removes,
            self.stale(),
            self.lost_invalidations,
            self.elapsed.as_millis(),
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// Runs the stress described by `params`.
pub fn run(params: &Params) -> Result<Report, String> {
    params.check()?;
    let slots = params.spaces * params.cpus * params.slots_per_cpu;
    // Every slot's frame, a pool's worth more, the tables and the driver's structures.
    let frames = 2 * slots + 2048;
    let (n, world) = world::build(frames)?;
    match n {
        0 => run_in::<Domain<0>>(&world, params),
        1 => run_in::<Domain<1>>(&world, params),
        2 => run_in::<Domain<2>>(&world, params),
        3 => run_in::<Domain<3>>(&world, params),
        4 => run_in::<Domain<4>>(&world, params),
        5 => run_in::<Domain<5>>(&world, params),
        6 => run_in::<Domain<6>>(&world, params),
        7 => run_in::<Domain<7>>(&world, params),
        _ => unreachable!("world::build hands out {} slots", world::DOMAINS),
    }
}

fn run_in<D: SvaDomain>(world: &World, params: &Params) -> Result<Report, String> {
    let per_space = params.cpus * params.slots_per_cpu;
    let mut spaces = Vec::new();
    let mut bonds: Vec<Bond<D>> = Vec::new();
    for _ in 0..params.spaces {
        let user = AddressSpace::create(world.platform).map_err(|e| format!("{e:?}"))?;
        spaces.push(Space {
            user,
            asid: 0,
            slots: (0..per_space).map(|_| Slot::default()).collect(),
        });
    }
    for d in 0..params.devices {
        let space = &mut spaces[d % params.spaces];
        let root = space.user.root().ok_or("an address space without tables")?;
        let bond = sva::bind::<D>(sid(d), space.user.mm(), root, MAIR_VALUE)
            .map_err(|e| format!("binding device {d}: {e}"))?;
        space.asid = bond.asid().ok_or("a bond without an ASID")?;
        bonds.push(bond);
    }
    world.smmu.set_debug_knobs(DebugKnobs {
        skip_invalidation: params.skip_invalidation,
        ..DebugKnobs::default()
    });
    let shared = Shared {
        world,
        params,
        spaces,
        c: Counters::default(),
        budget: AtomicU64::new(params.accesses),
        stop: AtomicBool::new(false),
        next_unmap: AtomicU64::new(1),
        errors: Mutex::new(Vec::new()),
    };
    let started = Instant::now();
    thread::scope(|scope| {
        let s = &shared;
        let devices: Vec<_> = (0..params.devices)
            .map(|d| scope.spawn(move || device::run(s, d, params.seed ^ (0xd << 56 | d as u64))))
            .collect();
        for c in 0..params.cpus {
            scope.spawn(move || cpu::Cpu::new(s, c, params.seed ^ (0xc << 56 | c as u64)).run());
        }
        scope.spawn(move || device::drain(s));
        for d in devices {
            let _ = d.join();
        }
        s.stop.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed();
    for b in bonds {
        if let Err(e) = b.unbind() {
            shared.error(format!("unbind: {e}"));
        }
    }
    Ok(report(&shared, params, elapsed))
}

fn report(s: &Shared<'_>, params: &Params, elapsed: Duration) -> Report {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let model = s.world.model.stats();
    let smmu = s.world.smmu.stats();
    let c = &s.c;
    Report {
        params: params.clone(),
        elapsed,
        accesses: get(&c.reads) + get(&c.writes),
        reads: get(&c.reads),
        writes: get(&c.writes),
        faulted: get(&c.faulted),
        maps: get(&c.maps),
        unmaps: get(&c.unmaps),
        protects: get(&c.protects),
        inserts: get(&c.inserts),
        removes: get(&c.removes),
        long_runs: get(&c.long_runs),
        covered_invalidations: smmu.invalidations_covered,
        lost_invalidations: get(&c.lost_invalidations),
        after_return: get(&c.after_return),
        wrong_data: get(&c.wrong_data),
        unexpected_faults: get(&c.unexpected_faults),
        dirty_frames: get(&c.dirty_frames),
        frozen_writes: get(&c.frozen_writes),
        model_stale: model.stale_translations,
        model_races: model.raced_translations,
        iotlb_hits: model.iotlb_hits,
        iotlb_invalidated: model.iotlb_invalidated,
        smmu_invalidations: smmu.invalidations_per_page
            + smmu.invalidations_range
            + smmu.invalidations_asid,
        events: get(&c.events),
        unexpected_events: get(&c.unexpected_events),
        event_losses: smmu.event_overflows + smmu.event_write_aborts,
        events_dropped: model.events_lost,
        errors: get(&c.errors),
        first_errors: s.errors.lock().unwrap().clone(),
        first_stale: s
            .world
            .model
            .stale_translations()
            .iter()
            .take(4)
            .map(|t| t.to_string())
            .collect(),
    }
}
