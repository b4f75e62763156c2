//! The soak: the SVA coherence workload on every CPU at once (`job=soak`), optionally with
//! faults injected (`fault=`, see [`crate::fault`]).
//!
//! One address space, bound to the DMA master (`edu` behind the real SMMUv3 on QEMU `virt`,
//! the model engine behind the SMMU model on the Pi), is shared by all CPUs; each CPU owns a
//! slice of its DMA window and runs `rounds=` rounds there:
//!
//! 1. map a few pages over frames of random bytes and insert an **interval notifier** over
//!    them (the notifier core's `mmu_interval_notifier_insert`, while the other CPUs are
//!    invalidating the same address space);
//! 2. with the device: read the page that is about to go (it is now in the IOTLB) and check
//!    the bytes; write another and check the CPU sees it through the same virtual address;
//! 3. unmap that page, or make it read-only: concurrently with every other CPU's unmaps,
//!    protection changes and notifier insertions — the device is the only thing the CPUs take
//!    turns on. The interval notifier must have seen the invalidation before it returned;
//! 4. with the device again: a read must fault and must not return the old bytes, a write
//!    must fault and must not land in the old frame (a **stale access** otherwise); through a
//!    read-only page, reads still work;
//! 5. remove the interval notifier (before or after the rest is unmapped) and unmap the rest.
//!
//! While a CPU waits for the device it **churns**: anonymous map, interval notifier, two
//! protection changes, unmap, remove — so invalidations of the shared address space really
//! overlap. Every `munmap`/`mprotect` is timed; the slowest is reported (it includes the
//! notifier's start/end, the CPU TLBI, the SMMU's TLBIs and the wait for CMD_SYNC).
//!
//! With `fault=`, each round rolls the fault dice once and, on a hit, injects one fault in
//! that round and checks its documented outcome (see [`crate::fault`]); the teardown race is
//! the soak's own teardown, and the release race a second address space torn down after it.
//! The summary counts faults injected and survived.
//!
//! The run exits non-zero on any stale access, wrong data, unexpected fault, lost interval
//! invalidation, operation error or fault not survived. `smmu.skip_invalidate=1` makes it
//! fail (the stale accesses are seen), which `make test` checks.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::arch::aarch64::aspace::{activate, deactivate, KernelMm};
use crate::arch::aarch64::{cpu_id, smp, timer};
use crate::fault::{Fault, FaultConfig, FaultCounters, FaultDice, FaultSet};
use crate::iommu::event::{AccessKind, EventKind, EventRecord};
use crate::iommu::kernel::{self as kiommu, KernelDomain};
use crate::iommu::model::Knobs;
use crate::iommu::regs::CommandErrorCode;
use crate::iommu::rig::{self, faults, Device, Outcome, Rig, RigError, PAGE, RO, RW};
use crate::iommu::sva::{self, Bond, ContextState, SvaError};
use crate::kernel::{bootargs, frames, ExitCode};
use crate::ktest::TestCtx;
use crate::mm::aspace::{Backing, MmError, MmUser, Placement, USER_END};
use crate::mm::notifier::{
    IntervalNotifier, IntervalNotifierOps, IntervalSubscription, NotifierRange,
};
use crate::mm::pgtable::descriptor::{MemoryType, Permissions, MAIR_VALUE};
use crate::mm::phys::FrameAllocator;
use crate::mm::{PhysAddr, VirtAddr};
use crate::println;

/// The DMA window shared by the CPUs: below 2^28 (edu's default DMA reach), clear of the rig's
/// staging page (0x0700_0000) and data (0x0800_0000).
const WINDOW: u64 = 0x0100_0000;
const WINDOW_SIZE: u64 = 0x0100_0000;
/// 64 KiB slots: rounds use the low three quarters of a CPU's slice, churn and the fault
/// probes the rest; the last slot is never mapped (the event-queue overflow's target).
const SLOT: u64 = 0x1_0000;
const MAX_PAGES: u64 = 8;

/// What a soak run is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct SoakParams {
    pub seed: u64,
    /// Rounds per CPU.
    pub rounds: u64,
    pub faults: FaultConfig,
    /// Churn operations per round at least (more while waiting for the device).
    pub churn: u64,
    /// Print one line per injected fault.
    pub verbose: bool,
}

/// What a soak run counted.
#[derive(Debug, Default, Clone)]
pub struct SoakReport {
    pub cpus: usize,
    pub rounds_per_cpu: Vec<u64>,
    pub maps: u64,
    pub unmaps: u64,
    pub protects: u64,
    pub dma_reads: u64,
    pub dma_writes: u64,
    pub faults_expected: u64,
    pub faults_seen: u64,
    pub unexpected_faults: u64,
    pub stale_reads: u64,
    pub stale_writes: u64,
    pub model_stale: u64,
    pub wrong_data: u64,
    pub notifier_inserts: u64,
    pub notifier_removes: u64,
    pub notifier_invalidations: u64,
    pub lost_invalidations: u64,
    pub rebinds: u64,
    pub slowest_ticks: u64,
    pub slowest_what: String,
    /// The driver's slowest IOTLB invalidation (queue wait, TLBIs, CMD_SYNC), ns.
    pub slowest_smmu_ns: u64,
    pub elapsed_ms: u64,
    pub injected: Vec<(Fault, u64, u64)>,
    pub errors: Vec<String>,
}

impl SoakReport {
    /// Stale accesses of every kind.
    pub fn stale(&self) -> u64 {
        self.stale_reads + self.stale_writes + self.model_stale
    }

    /// Operations on the address space (maps, unmaps, protection changes, notifier
    /// insertions and removals).
    pub fn operations(&self) -> u64 {
        self.maps + self.unmaps + self.protects + self.notifier_inserts + self.notifier_removes
    }

    /// (injected, survived) over every kind.
    pub fn faults_total(&self) -> (u64, u64) {
        self.injected
            .iter()
            .fold((0, 0), |(i, s), (_, fi, fs)| (i + fi, s + fs))
    }

    /// True if nothing went wrong.
    pub fn passed(&self) -> bool {
        let (injected, survived) = self.faults_total();
        self.stale() == 0
            && self.wrong_data == 0
            && self.unexpected_faults == 0
            && self.lost_invalidations == 0
            && self.errors.is_empty()
            && injected == survived
    }
}

/// Counters the CPUs add to.
#[derive(Default)]
struct Counters {
    maps: AtomicU64,
    unmaps: AtomicU64,
    protects: AtomicU64,
    dma_reads: AtomicU64,
    dma_writes: AtomicU64,
    faults_expected: AtomicU64,
    faults_seen: AtomicU64,
    unexpected_faults: AtomicU64,
    stale_reads: AtomicU64,
    stale_writes: AtomicU64,
    wrong_data: AtomicU64,
    inserts: AtomicU64,
    removes: AtomicU64,
    lost_invalidations: AtomicU64,
    rebinds: AtomicU64,
    slowest_ticks: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// An interval subscriber of the soak: counts the invalidations it sees, and refuses
/// non-blockable ones while `refuse` is set (the `notifier` fault).
struct Watcher {
    /// The user lock around `set_seq` (the collision-retry protocol's).
    lock: spin::Mutex<()>,
    seen: AtomicU64,
    refuse: AtomicBool,
    refused: AtomicU64,
    total: &'static AtomicU64,
}

impl IntervalNotifierOps for Watcher {
    fn invalidate(&self, sub: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
        if !range.is_blockable() && self.refuse.load(Ordering::Relaxed) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let _user = self.lock.lock();
        sub.set_seq(cur_seq);
        self.seen.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The device and the binding: one CPU at a time.
struct DeviceState {
    bond: Option<Bond<KernelDomain>>,
}

struct Soak<'r> {
    rig: &'r Rig<KernelDomain>,
    params: SoakParams,
    device: spin::Mutex<DeviceState>,
    /// One SMMU-level fault (sync, cmdq) at a time, so its checks see only its own effects.
    smmu_fault: spin::Mutex<()>,
    c: Counters,
    injected: FaultCounters,
    slowest: spin::Mutex<String>,
    errors: spin::Mutex<Vec<String>>,
    next_unmap: AtomicU64,
    /// Frames of finished rounds, freed after the unbind.
    quarantine: spin::Mutex<Vec<PhysAddr>>,
    cpus: usize,
}

/// Invalidations seen by every soak watcher (the notifier's callbacks need a `'static`).
static WATCHED: AtomicU64 = AtomicU64::new(0);

/// Runs the soak from the boot arguments and prints its summary.
pub fn run() -> ExitCode {
    let args = bootargs();
    let seed = match args.number("seed") {
        Some(Ok(s)) => s,
        _ => timer::ticks(),
    };
    let rounds = match args.number("rounds") {
        None => 8,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            println!("shootdown: rounds= must be a positive number");
            return ExitCode::Failure;
        }
    };
    let fault_seed = match args.number("fault.seed") {
        // By default the faults follow the workload's seed, so every seed injects its own.
        None => Some(seed),
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            println!("shootdown: {e}");
            return ExitCode::Failure;
        }
    };
    let fault_rate = match args.number("fault.rate") {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            println!("shootdown: {e}");
            return ExitCode::Failure;
        }
    };
    let faults = match FaultConfig::new(args.get("fault"), fault_seed, fault_rate) {
        Ok(f) => f,
        Err(e) => {
            println!("shootdown: {e}");
            return ExitCode::Failure;
        }
    };
    let params = SoakParams {
        seed,
        rounds,
        faults,
        churn: 2,
        verbose: true,
    };
    println!(
        "shootdown: soak: seed={seed} rounds={rounds} per CPU, fault={} fault.seed={} fault.rate={}",
        faults.kinds, faults.seed, faults.rate_per_mille
    );
    let report = match soak(params) {
        Ok(r) => r,
        Err(RigError::Unavailable(why)) => {
            println!("shootdown: no soak on this board: {why}");
            return ExitCode::Success;
        }
        Err(e) => {
            println!("shootdown: soak failed: {e}");
            return ExitCode::Failure;
        }
    };
    print_summary(&params, &report);
    if report.passed() {
        ExitCode::Success
    } else {
        ExitCode::Failure
    }
}

fn print_summary(p: &SoakParams, r: &SoakReport) {
    let freq = timer::frequency().max(1);
    let (injected, survived) = r.faults_total();
    let replay = if p.faults.enabled() {
        format!(
            " fault={} fault.seed={} fault.rate={}",
            p.faults.kinds, p.faults.seed, p.faults.rate_per_mille
        )
    } else {
        String::new()
    };
    println!(
        "shootdown: soak summary (replay with job=soak seed={} rounds={}{replay})",
        p.seed, p.rounds
    );
    println!(
        "  cpus             {} concurrently; rounds per CPU {:?}; {} ms",
        r.cpus, r.rounds_per_cpu, r.elapsed_ms
    );
    println!(
        "  operations       {} (maps {}, unmaps {}, mprotects {}, interval inserts {}, removes {})",
        r.operations(),
        r.maps,
        r.unmaps,
        r.protects,
        r.notifier_inserts,
        r.notifier_removes
    );
    println!(
        "  interval notif.  inserted {}, removed {}, invalidations seen {}, lost {}",
        r.notifier_inserts, r.notifier_removes, r.notifier_invalidations, r.lost_invalidations
    );
    println!(
        "  dma transfers    {} (device reads {}, device writes {})",
        r.dma_reads + r.dma_writes,
        r.dma_reads,
        r.dma_writes
    );
    println!(
        "  faults           expected {}, seen {}, unexpected {}",
        r.faults_expected, r.faults_seen, r.unexpected_faults
    );
    println!(
        "  stale accesses   {} (reads {}, writes {}, model checker {})",
        r.stale(),
        r.stale_reads,
        r.stale_writes,
        r.model_stale
    );
    println!(
        "  slowest inval.   SMMU {} us (driver: command-queue wait + TLBIs + CMD_SYNC); \
         munmap/mprotect {} us = {} counter ticks at {} Hz ({}; notifier, CPU TLBI, SMMU, locks)",
        r.slowest_smmu_ns / 1_000,
        r.slowest_ticks * 1_000_000 / freq,
        r.slowest_ticks,
        freq,
        r.slowest_what
    );
    if p.faults.enabled() {
        let mut per = String::new();
        for (f, i, s) in &r.injected {
            per.push_str(&format!("{f} {s}/{i}, "));
        }
        println!(
            "  injected faults  {injected}, survived {survived} ({}rebinds after a broken context {})",
            per, r.rebinds
        );
    }
    if r.wrong_data != 0 {
        println!("  wrong data       {} transfers", r.wrong_data);
    }
    for e in r.errors.iter().take(20) {
        println!("  error            {e}");
    }
    let result = if r.passed() { "PASS" } else { "FAIL" };
    println!("  result           {result}");
    // One line for scripts (make soak).
    println!(
        "# soak cpus={} seed={} rounds={} operations={} dmas={} faults_expected={} faults_seen={} \
         stale={} notifier_inserts={} notifier_removes={} notifier_invalidations={} slowest_ticks={} \
         slowest_us={} slowest_smmu_us={} elapsed_ms={} injected={injected} survived={survived} result={result}",
        r.cpus,
        p.seed,
        p.rounds,
        r.operations(),
        r.dma_reads + r.dma_writes,
        r.faults_expected,
        r.faults_seen,
        r.stale(),
        r.notifier_inserts,
        r.notifier_removes,
        r.notifier_invalidations,
        r.slowest_ticks,
        r.slowest_ticks * 1_000_000 / freq,
        r.slowest_smmu_ns / 1_000,
        r.elapsed_ms,
    );
}

/// Runs a soak on the kernel's SMMU and DMA master.
pub fn soak(params: SoakParams) -> Result<SoakReport, RigError> {
    let mut rig = Rig::<KernelDomain>::kernel()?;
    let root = rig.root().ok_or_else(|| rig::fail("no page table"))?;
    let bond = sva::bind::<KernelDomain>(rig.sid, rig.mm(), root, MAIR_VALUE).map_err(rig::fail)?;
    CURRENT_ASID.store(u64::from(bond.asid().unwrap_or(0)), Ordering::Relaxed);
    let cpus = smp::online_count().clamp(1, crate::mm::layout::MAX_CPUS);
    if let Some(m) = rig.model {
        let _ = m.take_stale_translations();
    }
    let s = Soak {
        rig: &rig,
        params,
        device: spin::Mutex::new(DeviceState { bond: Some(bond) }),
        smmu_fault: spin::Mutex::new(()),
        c: Counters::default(),
        injected: FaultCounters::new(),
        slowest: spin::Mutex::new(String::new()),
        errors: spin::Mutex::new(Vec::new()),
        next_unmap: AtomicU64::new(1),
        quarantine: spin::Mutex::new(Vec::new()),
        cpus,
    };
    let rounds_done: Vec<AtomicU64> = (0..cpus).map(|_| AtomicU64::new(0)).collect();
    let watched_before = WATCHED.load(Ordering::Relaxed);
    let started = timer::now_ns();
    smp::on_each_cpu(&|cpu| {
        if cpu >= cpus {
            return;
        }
        if let Err(e) = activate(s.rig.space()) {
            s.error(format!("CPU {cpu}: activate: {e:?}"));
            return;
        }
        let mut dice = FaultDice::new(params.faults, cpu as u64);
        let mut churn = TestCtx::new(params.seed ^ cpu as u64, "soak", "churn");
        for round in 0..params.rounds {
            let mut ctx = TestCtx::new(params.seed ^ ((cpu as u64) << 32) ^ round, "soak", "round");
            let fault = dice.roll(
                FaultSet::all()
                    .without(Fault::TeardownRace)
                    .without(Fault::ReleaseRace),
            );
            if let Err(e) = s.round(cpu, &mut ctx, &mut churn, fault) {
                s.error(format!("CPU {cpu} round {round}: {e}"));
            }
            rounds_done[cpu].fetch_add(1, Ordering::Relaxed);
        }
        deactivate();
    });
    let mut report = s.report(&rounds_done);
    report.notifier_invalidations = WATCHED.load(Ordering::Relaxed) - watched_before;
    report.elapsed_ms = (timer::now_ns() - started) / 1_000_000;
    let bond = s.device.lock().bond.take();
    let errors = s.errors.lock().clone();
    report.errors.extend(errors);
    let quarantine = core::mem::take(&mut *s.quarantine.lock());
    drop(s);
    // The end: a DMA races the teardown (fault=teardown), or a plain unbind and teardown.
    let counters = FaultCounters::new();
    let ended = if params.faults.kinds.contains(Fault::TeardownRace) {
        let survived = match bond {
            Some(bond) => teardown_race(&mut rig, bond, cpus),
            None => Ok(Err(String::from("no binding left for the teardown race"))),
        };
        if let Ok(survived) = &survived {
            if let Err(why) = survived {
                report.errors.push(format!("teardown race: {why}"));
            }
            if params.verbose {
                println!(
                    "    # fault teardown: DMA in flight during teardown: {}",
                    match survived {
                        Ok(()) => String::from("quiesced first, nothing landed"),
                        Err(e) => e.clone(),
                    }
                );
            }
            counters.record(Fault::TeardownRace, survived.is_ok());
        }
        survived.map(|_| ())
    } else {
        let unbound = bond.map_or(Ok(()), |b| b.unbind().map_err(rig::fail));
        rig.teardown();
        unbound
    };
    if let Some(f) = frames() {
        for frame in quarantine {
            f.free(frame);
        }
    }
    ended?;
    if params.faults.kinds.contains(Fault::ReleaseRace) {
        let survived = release_race(cpus, params.verbose)?;
        if let Err(why) = &survived {
            report.errors.push(format!("release race: {why}"));
        }
        counters.record(Fault::ReleaseRace, survived.is_ok());
    }
    for end in [Fault::TeardownRace, Fault::ReleaseRace] {
        let (i, sv) = counters.get(end);
        if i > 0 {
            report.injected.push((end, i, sv));
        }
    }
    if let Some(m) = rig.model {
        report.model_stale += m.take_stale_translations().len() as u64;
    }
    Ok(report)
}

impl Soak<'_> {
    fn error(&self, e: String) {
        let mut errors = self.errors.lock();
        if errors.len() < 64 {
            errors.push(e);
        }
    }

    fn report(&self, rounds: &[AtomicU64]) -> SoakReport {
        let c = &self.c;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let injected = Fault::ALL
            .into_iter()
            .map(|f| {
                let (i, s) = self.injected.get(f);
                (f, i, s)
            })
            .filter(|(_, i, _)| *i > 0)
            .collect();
        SoakReport {
            cpus: self.cpus,
            rounds_per_cpu: rounds.iter().map(get).collect(),
            maps: get(&c.maps),
            unmaps: get(&c.unmaps),
            protects: get(&c.protects),
            dma_reads: get(&c.dma_reads),
            dma_writes: get(&c.dma_writes),
            faults_expected: get(&c.faults_expected),
            faults_seen: get(&c.faults_seen),
            unexpected_faults: get(&c.unexpected_faults),
            stale_reads: get(&c.stale_reads),
            stale_writes: get(&c.stale_writes),
            model_stale: 0,
            wrong_data: get(&c.wrong_data),
            notifier_inserts: get(&c.inserts),
            notifier_removes: get(&c.removes),
            notifier_invalidations: 0,
            lost_invalidations: get(&c.lost_invalidations),
            rebinds: get(&c.rebinds),
            slowest_ticks: get(&c.slowest_ticks),
            slowest_what: self.slowest.lock().clone(),
            slowest_smmu_ns: self.rig.smmu.stats().slowest_invalidation_ns,
            elapsed_ms: 0,
            injected,
            errors: Vec::new(),
        }
    }

    /// The first address of `cpu`'s slice of the window, and the slice's size.
    fn slice(&self, cpu: usize) -> (u64, u64) {
        let size = (WINDOW_SIZE / self.cpus as u64) & !(SLOT - 1);
        (WINDOW + cpu as u64 * size, size)
    }

    /// Slots of `cpu`'s slice for rounds, and the first churn slot.
    fn round_slots(&self, cpu: usize) -> u64 {
        (self.slice(cpu).1 / SLOT) * 3 / 4
    }

    /// The slot of `cpu`'s slice that is never mapped.
    fn hole(&self, cpu: usize) -> u64 {
        let (base, size) = self.slice(cpu);
        base + size - SLOT
    }

    /// Inserts an interval notifier over `[va, va + len)`.
    fn watch(&self, va: u64, len: u64) -> Result<(IntervalSubscription, Arc<Watcher>), RigError> {
        let w = Arc::new(Watcher {
            lock: spin::Mutex::new(()),
            seen: AtomicU64::new(0),
            refuse: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            total: &WATCHED,
        });
        let sub = IntervalNotifier::insert(self.rig.mm(), va, len, w.clone()).map_err(rig::fail)?;
        bump(&self.c.inserts);
        Ok((sub, w))
    }

    fn unwatch(&self, sub: IntervalSubscription) {
        sub.remove();
        bump(&self.c.removes);
    }

    /// Times `op` (an unmap or protection change) and keeps the slowest.
    fn timed<R>(&self, what: impl FnOnce() -> String, op: impl FnOnce() -> R) -> R {
        let start = timer::ticks();
        let r = op();
        let took = timer::ticks().saturating_sub(start);
        if took > self.c.slowest_ticks.fetch_max(took, Ordering::Relaxed) {
            *self.slowest.lock() = what();
        }
        r
    }

    /// `munmap` of `pages` pages at `va`, announced to the model's checker, timed.
    fn unmap(&self, va: u64, pages: u64) -> Result<(), RigError> {
        let id = self.next_unmap.fetch_add(1, Ordering::Relaxed);
        let asid = self.asid();
        if let Some(m) = self.rig.model {
            m.begin_unmap(asid, VirtAddr(va), VirtAddr(va + pages * PAGE), id);
        }
        let cpu = cpu_id();
        let r = self.timed(
            || format!("munmap of {pages} page(s) at {va:#x} on CPU {cpu}"),
            || self.rig.unmap(va, pages),
        );
        if let Some(m) = self.rig.model {
            m.end_unmap(id);
        }
        bump(&self.c.unmaps);
        r
    }

    /// `mprotect` read-only of one page, announced to the checker, timed.
    fn protect(&self, va: u64, perms: Permissions) -> Result<(), RigError> {
        let id = self.next_unmap.fetch_add(1, Ordering::Relaxed);
        let asid = self.asid();
        if let Some(m) = self.rig.model {
            m.begin_unmap(asid, VirtAddr(va), VirtAddr(va + PAGE), id);
        }
        let cpu = cpu_id();
        let r = self.timed(
            || format!("mprotect of 1 page at {va:#x} on CPU {cpu}"),
            || self.rig.protect(va, 1, perms),
        );
        if let Some(m) = self.rig.model {
            m.end_unmap(id);
        }
        bump(&self.c.protects);
        r
    }

    /// The ASID of the current binding (0 if none: the model then just cannot name it).
    fn asid(&self) -> u16 {
        // Without the device lock: the ASID changes only on a rebind, which holds the device
        // lock across the unmap whose checker note could be affected.
        CURRENT_ASID.load(Ordering::Relaxed) as u16
    }

    /// Takes the device, churning the address space while another CPU has it.
    fn device(&self, churn: &mut TestCtx) -> spin::MutexGuard<'_, DeviceState> {
        loop {
            if let Some(g) = self.device.try_lock() {
                return g;
            }
            if let Err(e) = self.churn_once(churn) {
                self.error(format!("CPU {} churn: {e}", cpu_id()));
            }
        }
    }

    /// Anonymous map, interval notifier, read-only, read-write, unmap, remove: every change
    /// must reach the notifier before it returns, and the unmap must leave nothing mapped.
    fn churn_once(&self, ctx: &mut TestCtx) -> Result<(), RigError> {
        let cpu = cpu_id();
        let (base, size) = self.slice(cpu);
        let first = self.round_slots(cpu);
        let last = size / SLOT - 1; // the hole
        let va = base + ctx.rand_range(first, last) * SLOT;
        let pages = ctx.rand_range(1, 5);
        let space = self.rig.space();
        space
            .mmap(
                Placement::Fixed(VirtAddr(va)),
                (pages * PAGE) as usize,
                RW,
                Backing::Anonymous,
            )
            .map_err(rig::fail)?;
        bump(&self.c.maps);
        let (sub, w) = self.watch(va, pages * PAGE)?;
        let r = (|| {
            self.protect_range(va, pages, RO)?;
            self.protect_range(va, pages, RW)?;
            self.unmap(va, pages)
        })();
        let seen = w.seen.load(Ordering::Relaxed);
        self.unwatch(sub);
        r?;
        if seen < 3 {
            bump(&self.c.lost_invalidations);
            self.error(format!(
                "CPU {cpu}: interval notifier over {va:#x} saw {seen} of 3 invalidations"
            ));
        }
        if (0..pages).any(|i| space.translate(VirtAddr(va + i * PAGE)).is_some()) {
            self.error(format!("CPU {cpu}: {va:#x} still translates after munmap"));
        }
        Ok(())
    }

    fn protect_range(&self, va: u64, pages: u64, perms: Permissions) -> Result<(), RigError> {
        let cpu = cpu_id();
        let r = self.timed(
            || format!("mprotect of {pages} page(s) at {va:#x} on CPU {cpu}"),
            || self.rig.protect(va, pages, perms),
        );
        bump(&self.c.protects);
        r
    }

    /// Events since the last drain, checked against one expected fault: returns whether it
    /// was seen; anything else is unexpected.
    fn check_events(&self, expect: Option<(EventKind, u64, AccessKind)>) -> bool {
        let events = self.rig.drain_events();
        self.classify(&events, expect)
    }

    fn classify(
        &self,
        events: &[EventRecord],
        expect: Option<(EventKind, u64, AccessKind)>,
    ) -> bool {
        let matching = match expect {
            Some((kind, page, access)) => {
                faults(events, kind, self.rig.sid, page, page + PAGE, access)
            }
            None => 0,
        };
        if events.len() > matching {
            bump(&self.c.unexpected_faults);
            self.error(format!(
                "CPU {}: unexpected SMMU events: {:?}",
                cpu_id(),
                &events[..events.len().min(2)]
            ));
        }
        matching > 0
    }

    fn round(
        &self,
        cpu: usize,
        ctx: &mut TestCtx,
        churn: &mut TestCtx,
        fault: Option<Fault>,
    ) -> Result<(), RigError> {
        for _ in 0..self.params.churn {
            self.churn_once(churn)?;
        }
        let pages = ctx.rand_range(1, MAX_PAGES + 1);
        let (base, _) = self.slice(cpu);
        let va = base + ctx.rand_range(0, self.round_slots(cpu)) * SLOT;
        let alloc = frames().ok_or_else(|| rig::fail("no frames"))?;
        let mut owned = Vec::new();
        let result = self.round_body(cpu, ctx, churn, fault, va, pages, alloc, &mut owned);
        // Freed only after the unbind has invalidated the whole ASID: with the invalidation
        // switched off (`smmu.skip_invalidate=1`) the device may still write through stale
        // entries, which must land in these frames (and be counted), not in reused ones.
        self.quarantine.lock().extend(owned);
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn round_body(
        &self,
        cpu: usize,
        ctx: &mut TestCtx,
        churn: &mut TestCtx,
        fault: Option<Fault>,
        va: u64,
        pages: u64,
        alloc: &'static crate::kernel::KernelFrames,
        owned: &mut Vec<PhysAddr>,
    ) -> Result<(), RigError> {
        let space = self.rig.space();
        let mut contents = Vec::new();
        for i in 0..pages {
            let frame = alloc.alloc_zeroed().map_err(rig::fail)?;
            owned.push(frame);
            let bytes: Vec<u8> = (0..PAGE).map(|_| ctx.rand() as u8).collect();
            rig::write(frame, &bytes)?;
            contents.push(bytes);
            space
                .mmap(
                    Placement::Fixed(VirtAddr(va + i * PAGE)),
                    PAGE as usize,
                    RW,
                    Backing::Physical(frame, MemoryType::Normal),
                )
                .map_err(rig::fail)?;
            bump(&self.c.maps);
        }
        let (sub, watcher) = self.watch(va, pages * PAGE)?;
        let mut sub = Some(sub);
        let k = ctx.rand_range(0, pages);
        let page_va = va + k * PAGE;
        let pick = |ctx: &mut TestCtx| {
            // At most 64 four-byte transactions: a faulting transfer's events fit the event
            // queue (128), so only the `evtq` fault overflows it.
            let len = ctx.rand_range(16, 257) & !3;
            let off = ctx.rand_range(0, PAGE - len + 1) & !3;
            (off, len as usize)
        };
        let dev: &Device = &self.rig.dev;

        // With the device: read page k (now cached), write another, check both.
        {
            let _d = self.device(churn);
            self.check_events(None);
            let (off, len) = pick(ctx);
            dev.fetch(page_va + off, len)?;
            bump(&self.c.dma_reads);
            let got = self.rig.read_buffer(len)?;
            if got[..] != contents[k as usize][off as usize..off as usize + len] {
                bump(&self.c.wrong_data);
                self.error(format!(
                    "CPU {cpu}: device read of {:#x} returned other bytes",
                    page_va + off
                ));
            }
            let p = ctx.rand_range(0, pages);
            let (off, len) = pick(ctx);
            let data: Vec<u8> = (0..len).map(|_| ctx.rand() as u8).collect();
            self.rig.load_buffer(&data)?;
            let at = va + p * PAGE + off;
            dev.store(at, len)?;
            bump(&self.c.dma_writes);
            let cpu_view: Vec<u8> = (0..len as u64)
                // SAFETY: the page is mapped in the address space active on this CPU, and only
                // this CPU unmaps it.
                .map(|i| unsafe { core::ptr::read_volatile((at + i) as *const u8) })
                .collect();
            if cpu_view != data {
                bump(&self.c.wrong_data);
                self.error(format!(
                    "CPU {cpu}: the CPU does not see the device's write at {at:#x}"
                ));
            }
            contents[p as usize][off as usize..off as usize + len].copy_from_slice(&data);
            self.check_events(None);
        }

        // Injected faults that come before this round's own change.
        match fault {
            Some(Fault::Alloc) => self.inject_alloc(cpu, ctx),
            Some(Fault::NotifierRefuse) => self.inject_refusal(cpu, page_va, &watcher, ctx, churn),
            Some(Fault::EventqOverflow) => self.inject_overflow(cpu, churn),
            _ => {}
        }

        // Take page k away, or make it read-only, concurrently with the other CPUs.
        let old = rig::read(owned[k as usize], PAGE as usize)?;
        let unmap = ctx.rand() % 2 == 0;
        let seen_before = watcher.seen.load(Ordering::Relaxed);
        // SMMU-level faults one at a time; a CMD_SYNC timeout also keeps the device until the
        // device is bound again (nobody may use the broken context meanwhile).
        let device_guard = (fault == Some(Fault::SyncTimeout)).then(|| self.device(churn));
        let smmu_guard = matches!(fault, Some(Fault::SyncTimeout | Fault::CmdqError))
            .then(|| self.smmu_fault.lock());
        let before = self.rig.smmu.stats();
        match fault {
            Some(Fault::SyncTimeout) => arm_sync_timeout()?,
            Some(Fault::CmdqError) => arm_command_error(self.rig)?,
            _ => {}
        }
        let changed = if unmap {
            self.unmap(page_va, 1)
        } else {
            self.protect(page_va, RO)
        };
        let what = if unmap { "munmap" } else { "mprotect" };
        if fault == Some(Fault::CmdqError) {
            let after = self.rig.smmu.stats();
            let survived = changed.is_ok()
                && after.command_errors > before.command_errors
                && after.invalidation_fallbacks > before.invalidation_fallbacks
                && !disarm_smmu_faults(self.rig);
            self.record(cpu, Fault::CmdqError, survived, || {
                format!(
                    "command error during the {what} of {page_va:#x}: {}; whole-ASID fallbacks {} -> {}",
                    after
                        .last_command_error
                        .map_or(String::from("none"), |f| format!("{f}")),
                    before.invalidation_fallbacks,
                    after.invalidation_fallbacks
                )
            });
        }
        let mut recovered = true;
        if let Some(mut d) = device_guard {
            recovered = self.after_sync_timeout(
                cpu,
                &mut d,
                page_va,
                owned[k as usize],
                &old,
                before.sync_timeouts,
            );
        }
        drop(smmu_guard);
        changed?;
        if !recovered {
            return Err(rig::fail("no recovery from a CMD_SYNC timeout"));
        }
        if watcher.seen.load(Ordering::Relaxed) == seen_before {
            bump(&self.c.lost_invalidations);
            self.error(format!(
                "CPU {cpu}: the interval notifier over {va:#x} missed the {what} of {page_va:#x}"
            ));
        }

        // With the device: the change must be in force.
        {
            let _d = self.device(churn);
            let (off, len) = pick(ctx);
            if unmap {
                let outcome = dev.fetch(page_va + off, len)?;
                bump(&self.c.dma_reads);
                let got = self.rig.read_buffer(len)?;
                self.expect_fault(EventKind::Translation, page_va, AccessKind::Read, outcome);
                if got[..] == old[off as usize..off as usize + len] {
                    bump(&self.c.stale_reads);
                }
            }
            let scribble: Vec<u8> = (0..len).map(|i| !old[off as usize + i]).collect();
            self.rig.load_buffer(&scribble)?;
            let outcome = dev.store(page_va + off, len)?;
            bump(&self.c.dma_writes);
            let kind = if unmap {
                EventKind::Translation
            } else {
                EventKind::Permission
            };
            self.expect_fault(kind, page_va, AccessKind::Write, outcome);
            if rig::read(owned[k as usize], PAGE as usize)? != old {
                bump(&self.c.stale_writes);
            }
            if !unmap {
                dev.fetch(page_va + off, len)?;
                bump(&self.c.dma_reads);
                if self.rig.read_buffer(len)?[..] != old[off as usize..off as usize + len] {
                    bump(&self.c.wrong_data);
                    self.error(format!(
                        "CPU {cpu}: device read of read-only {:#x} returned other bytes",
                        page_va + off
                    ));
                }
                self.check_events(None);
            }
        }

        // Remove the watcher before or after the rest goes, and unmap the rest.
        if ctx.rand() % 2 == 0 {
            if let Some(s) = sub.take() {
                self.unwatch(s);
            }
        }
        for (first, end) in if unmap {
            [(0, k), (k + 1, pages)]
        } else {
            [(0, pages), (0, 0)]
        } {
            if end > first {
                self.unmap(va + first * PAGE, end - first)?;
            }
        }
        if let Some(s) = sub.take() {
            self.unwatch(s);
        }
        Ok(())
    }

    fn expect_fault(&self, kind: EventKind, page: u64, access: AccessKind, outcome: Outcome) {
        bump(&self.c.faults_expected);
        let seen = self.check_events(Some((kind, page, access))) || outcome == Outcome::Faulted;
        if seen {
            bump(&self.c.faults_seen);
        } else {
            self.error(format!(
                "CPU {}: no {kind:?} fault for the {access:?} of {page:#x}",
                cpu_id()
            ));
        }
    }

    fn record(&self, cpu: usize, f: Fault, survived: bool, what: impl FnOnce() -> String) {
        self.injected.record(f, survived);
        if !survived {
            self.error(format!("CPU {cpu}: fault {f} not survived: {}", what()));
        } else if self.params.verbose {
            println!("    # fault {f} on CPU {cpu}: {}", what());
        }
    }

    /// `alloc`: an anonymous `mmap` whose n-th frame allocation fails must return
    /// `OutOfMemory` and leave nothing of the region behind.
    fn inject_alloc(&self, cpu: usize, ctx: &mut TestCtx) {
        let (base, size) = self.slice(cpu);
        // A churn slot: only this CPU uses its slice, and its churn never leaves anything
        // mapped.
        let va = base + size - 2 * SLOT;
        let pages = ctx.rand_range(3, 9);
        let nth = ctx.rand_range(1, pages + 1) as u32;
        let space = self.rig.space();
        crate::fault::arm_alloc_failure(cpu, nth);
        let r = space.mmap(
            Placement::Fixed(VirtAddr(va)),
            (pages * PAGE) as usize,
            RW,
            Backing::Anonymous,
        );
        let still_armed = crate::fault::disarm_alloc_failure(cpu);
        let (outcome, survived) = match r {
            Err(MmError::OutOfMemory) => {
                let leftovers = (0..pages)
                    .filter(|i| space.translate(VirtAddr(va + i * PAGE)).is_some())
                    .count();
                let region = space
                    .regions()
                    .iter()
                    .any(|r| r.start.as_u64() < va + pages * PAGE && r.end.as_u64() > va);
                (
                    format!("mmap of {pages} pages, allocation {nth} failed: OutOfMemory, {leftovers} pages left mapped, region left: {region}"),
                    leftovers == 0 && !region && !still_armed,
                )
            }
            Ok(_) => {
                let _ = self.rig.unmap(va, pages);
                (
                    format!("the failure armed for allocation {nth} of {pages} never came"),
                    false,
                )
            }
            Err(e) => (format!("mmap returned {e}"), false),
        };
        self.record(cpu, Fault::Alloc, survived, || outcome);
    }

    /// `notifier`: the round's interval subscriber refuses a non-blockable unmap of page
    /// `page_va`: `WouldBlock`, nothing changed (the CPU and the device still reach it).
    fn inject_refusal(
        &self,
        cpu: usize,
        page_va: u64,
        w: &Watcher,
        ctx: &mut TestCtx,
        churn: &mut TestCtx,
    ) {
        let space = self.rig.space();
        let before = space.translate(VirtAddr(page_va));
        w.refuse.store(true, Ordering::Relaxed);
        let r = space.munmap_nonblocking(VirtAddr(page_va), PAGE as usize);
        w.refuse.store(false, Ordering::Relaxed);
        let after = space.translate(VirtAddr(page_va));
        let mut survived = r == Err(MmError::WouldBlock)
            && before.is_some()
            && after == before
            && w.refused.load(Ordering::Relaxed) >= 1;
        // The device still reads the page.
        let _d = self.device(churn);
        let len = (ctx.rand_range(4, 64) * 4) as usize;
        match self.rig.dev.fetch(page_va, len) {
            Ok(o) => survived &= o != Outcome::Faulted,
            Err(_) => survived = false,
        }
        bump(&self.c.dma_reads);
        let events = self.rig.drain_events();
        survived &= events.is_empty();
        self.record(cpu, Fault::NotifierRefuse, survived, || {
            format!(
                "munmap_nonblocking of {page_va:#x} refused: {r:?}, still mapped: {}",
                after.is_some()
            )
        });
    }

    /// `evtq`: a faulting 4 KiB read of the hole makes ~1024 events for a 128-entry queue; the
    /// loss is reported once, and a small faulting read afterwards is reported normally.
    fn inject_overflow(&self, cpu: usize, churn: &mut TestCtx) {
        let hole = self.hole(cpu);
        let _d = self.device(churn);
        let big = self.rig.dev.fetch(hole, PAGE as usize);
        let (events, drain) = self.rig.drain_events_reporting();
        let lost = drain.overflowed || drain.write_aborted;
        let foreign = events.len()
            - faults(
                &events,
                EventKind::Translation,
                self.rig.sid,
                hole,
                hole + PAGE,
                AccessKind::Read,
            );
        let small = self.rig.dev.fetch(hole, 16);
        let (after, drain2) = self.rig.drain_events_reporting();
        let reported = faults(
            &after,
            EventKind::Translation,
            self.rig.sid,
            hole,
            hole + 16,
            AccessKind::Read,
        );
        self.c.dma_reads.fetch_add(2, Ordering::Relaxed);
        let survived = big.is_ok()
            && small.is_ok()
            && lost
            && foreign == 0
            && !drain2.overflowed
            && !drain2.write_aborted
            && reported >= 1
            && reported == after.len();
        self.record(cpu, Fault::EventqOverflow, survived, || {
            format!(
                "4 KiB faulting read: {} events kept, lost reported ({}); then {reported} of {} events for a 16-byte read",
                events.len(),
                if drain.overflowed { "OVFLG" } else { "GERROR.EVENTQ_ABT_ERR" },
                after.len()
            )
        });
    }

    /// After an injected CMD_SYNC timeout (device and SMMU-fault locks held): the context
    /// must be broken and quiet (a DMA to the changed page neither lands nor faults loudly),
    /// the SMMU still up; then the device is bound again.
    fn after_sync_timeout(
        &self,
        cpu: usize,
        d: &mut DeviceState,
        page_va: u64,
        frame: PhysAddr,
        old: &[u8],
        timeouts_before: u64,
    ) -> bool {
        let after = self.rig.smmu.stats();
        let fired = after.sync_timeouts > timeouts_before && !disarm_smmu_faults(self.rig);
        let state = d.bond.as_ref().map_or(ContextState::Gone, |b| b.state());
        let mut ok = fired && state == ContextState::Broken && !self.rig.smmu.is_disabled();
        // The quiesced context: the write must not land (a quiet fault: R = 0, no event). (With
        // edu, loading the buffer through the staging page faults too: it then writes zeros.)
        let scribble: Vec<u8> = old[..64].iter().map(|b| !b).collect();
        let _ = self.rig.load_buffer(&scribble);
        let stored = self.rig.dev.store(page_va, 64);
        bump(&self.c.dma_writes);
        let landed = rig::read(frame, PAGE as usize)
            .map(|now| now != old)
            .unwrap_or(true);
        if landed {
            bump(&self.c.stale_writes);
        }
        let events = self.rig.drain_events();
        ok &= stored.is_ok() && !landed;
        // Bind again: a fresh context and ASID.
        let rebound = d.bond.take().map(|b| b.unbind());
        let root = self.rig.root();
        let bond = root.ok_or(()).and_then(|root| {
            sva::bind::<KernelDomain>(self.rig.sid, self.rig.mm(), root, MAIR_VALUE).map_err(|_| ())
        });
        match bond {
            Ok(b) => {
                CURRENT_ASID.store(u64::from(b.asid().unwrap_or(0)), Ordering::Relaxed);
                d.bond = Some(b);
                bump(&self.c.rebinds);
            }
            Err(()) => ok = false,
        }
        self.record(cpu, Fault::SyncTimeout, ok, || {
            format!(
                "CMD_SYNC timed out (timeouts {timeouts_before} -> {}), context {state:?}, write through it landed: {landed}, quiet events {}, unbind {:?}, bound again: {}",
                after.sync_timeouts,
                events.len(),
                rebound,
                d.bond.is_some()
            )
        });
        ok
    }
}

/// The current binding's ASID (for the model's checker notes).
static CURRENT_ASID: AtomicU64 = AtomicU64::new(0);

fn arm_sync_timeout() -> Result<(), RigError> {
    kiommu::injector()
        .ok_or_else(|| rig::fail("no fault injector"))?
        .arm_sync_timeout();
    Ok(())
}

/// A command error: the model's own (its real CMDQ_CONS.ERR path), or injected at the
/// backend boundary in front of QEMU's SMMU.
fn arm_command_error(rig: &Rig<KernelDomain>) -> Result<(), RigError> {
    match rig.model {
        Some(m) => {
            m.set_knobs(Knobs {
                fail_command: Some((None, CommandErrorCode::Illegal)),
                ..m.knobs()
            });
            Ok(())
        }
        None => {
            kiommu::injector()
                .ok_or_else(|| rig::fail("no fault injector"))?
                .arm_command_error();
            Ok(())
        }
    }
}

/// Disarms SMMU faults that did not fire; true if one was still armed.
fn disarm_smmu_faults(rig: &Rig<KernelDomain>) -> bool {
    let mut armed = kiommu::injector().is_some_and(|i| i.disarm());
    if let Some(m) = rig.model {
        let k = m.knobs();
        armed |= k.fail_command.is_some();
        m.set_knobs(Knobs {
            fail_command: None,
            ..k
        });
    }
    armed
}

/// `teardown`: the end of the soak with a DMA in flight. `edu` runs its transfer ~100 ms
/// after it is started, so the teardown (release: quiesce) completes first; the model engine
/// runs transfers back to back on another CPU. Either way no transfer that started after the
/// teardown returned may land, and the context ends released.
pub(crate) fn teardown_race(
    rig: &mut Rig<KernelDomain>,
    bond: Bond<KernelDomain>,
    cpus: usize,
) -> Result<Result<(), String>, RigError> {
    let frame = frames()
        .ok_or_else(|| rig::fail("no frames"))?
        .alloc_zeroed()
        .map_err(rig::fail)?;
    rig::fill(frame, 0)?;
    rig.space()
        .mmap(
            Placement::Fixed(VirtAddr(TEARDOWN_VA)),
            PAGE as usize,
            RW,
            Backing::Physical(frame, MemoryType::Normal),
        )
        .map_err(rig::fail)?;
    let result = if rig.dev.is_edu() {
        edu_teardown_race(rig, &bond, frame)
    } else {
        model_teardown_race(rig, &bond, frame, cpus)
    };
    let state = bond.state();
    let unbound = bond.unbind();
    if let Some(f) = frames() {
        f.free(frame);
    }
    let result = result?;
    Ok(result.and_then(|()| {
        if state != ContextState::Released {
            return Err(format!("context {state:?} after teardown, not Released"));
        }
        unbound.map_err(|e| format!("unbind after teardown: {e}"))
    }))
}

fn edu_teardown_race(
    rig: &mut Rig<KernelDomain>,
    bond: &Bond<KernelDomain>,
    frame: PhysAddr,
) -> Result<Result<(), String>, RigError> {
    rig.load_buffer(&[0x44; 16])?;
    rig.dev.store(TEARDOWN_VA, 16)?; // cached, and proves the page is live
    if rig::read(frame, 16)? != [0x44; 16] {
        return Ok(Err(String::from("the first write did not land")));
    }
    rig.load_buffer(&[0xee; 16])?;
    rig.drain_events();
    rig.dev.start_store(TEARDOWN_VA, 16)?;
    let space: Option<MmUser<KernelMm>> = rig.take_space();
    drop(space); // the last user: release quiesces the context, then the tables are freed
    let torn = bond.state();
    rig.dev.wait()?;
    let now = rig::read(frame, 16)?;
    let events = rig.drain_events();
    Ok(if now != [0x44; 16] {
        Err(format!(
            "the in-flight DMA landed after the teardown ({torn:?}): {now:?}"
        ))
    } else if !events.is_empty() {
        Err(format!("release faults must be quiet: {events:?}"))
    } else {
        Ok(())
    })
}

fn model_teardown_race(
    rig: &mut Rig<KernelDomain>,
    bond: &Bond<KernelDomain>,
    frame: PhysAddr,
    cpus: usize,
) -> Result<Result<(), String>, RigError> {
    let Some(model) = rig.model else {
        return Ok(Err(String::from("no model")));
    };
    let _ = model.take_stale_translations();
    let space = rig.take_space();
    let space = spin::Mutex::new(space);
    let started = AtomicU64::new(0);
    let at_teardown = AtomicU64::new(u64::MAX);
    let failures = AtomicUsize::new(0);
    let rig = &*rig;
    let racer = if cpus > 1 { 1 } else { 0 };
    smp::on_each_cpu(&|cpu| {
        if cpu == racer {
            // Transfers back to back, transfer i writing i, until well after the teardown.
            for i in 1..=1_000_000u32 {
                let value: Vec<u8> = (0..4).flat_map(|_| i.to_le_bytes()).collect();
                if rig.load_buffer(&value).is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                started.store(u64::from(i), Ordering::SeqCst);
                if rig.dev.store(TEARDOWN_VA, 16).is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                let torn = at_teardown.load(Ordering::SeqCst);
                if torn != u64::MAX && u64::from(i) > torn + 20 {
                    break;
                }
            }
        }
        if cpu == 0 {
            while started.load(Ordering::SeqCst) < 5 {
                core::hint::spin_loop();
            }
            // Transfers during the teardown may still translate (until release's CMD_SYNC):
            // tell the checker, which then flags only uses after the teardown returned.
            let id = u64::MAX - 1;
            let asid = bond.asid().unwrap_or(0);
            model.begin_unmap(asid, VirtAddr(0), VirtAddr(USER_END), id);
            drop(space.lock().take()); // release, then the tables are freed
            at_teardown.store(started.load(Ordering::SeqCst), Ordering::SeqCst);
            model.end_unmap(id);
        }
    });
    let s = at_teardown.load(Ordering::SeqCst);
    let last = started.load(Ordering::SeqCst);
    let bytes = rig::read(frame, 4)?;
    let value = u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
    let stale = model.take_stale_translations();
    let _ = rig.drain_events();
    Ok(if failures.load(Ordering::Relaxed) != 0 {
        Err(String::from("a transfer failed to run"))
    } else if last <= s {
        Err(format!(
            "no transfer after the teardown ({last} started, {s} before)"
        ))
    } else if value > s {
        Err(format!(
            "transfer {value} landed, started after the teardown returned (at {s})"
        ))
    } else if !stale.is_empty() {
        Err(format!(
            "{} stale translations, first {}",
            stale.len(),
            stale[0]
        ))
    } else {
        Ok(())
    })
}

/// Where the transfer racing the teardown goes (every round's page is unmapped by then).
const TEARDOWN_VA: u64 = WINDOW + WINDOW_SIZE - 2 * SLOT;

/// Where the release race maps its pages: one per CPU, clear of the rig's own pages.
const RELEASE_VA: u64 = WINDOW;

/// `release`: a fresh address space bound to the device, one page per CPU cached in the IOTLB.
/// CPU 0 drops the last user (release quiesces the context, then the tables go) while the
/// other CPUs unmap their page without holding a user reference (the OOM reaper's
/// `munmap_nonblocking`) and, when the unmap returned, have the device write there; CPU 1 also
/// binds and unbinds a second stream of the same address space. No write may land in an
/// unmapped page's frame, the model's checker must see no stale use, and no SMMU-wide abort or
/// SVA failure may follow from the race (issue 20).
fn release_race(cpus: usize, verbose: bool) -> Result<Result<(), String>, RigError> {
    if cpus < 2 {
        return Ok(Err(String::from("needs two CPUs")));
    }
    let mut rig = Rig::kernel()?;
    rig.bind()?;
    let before = rig.sva.stats();
    let frames: Vec<PhysAddr> = rig.map(RELEASE_VA, cpus as u64, RW, 0)?;
    rig.load_buffer(&[0xee; 16])?; // every store below writes this
    for cpu in 1..cpus {
        rig.dev.fetch(RELEASE_VA + cpu as u64 * PAGE, 16)?; // now cached
    }
    if let Some(m) = rig.model {
        let _ = m.take_stale_translations();
    }
    let aspace = Arc::clone(&**rig.space());
    let space = spin::Mutex::new(rig.take_space());
    let (ready, torn) = (AtomicUsize::new(0), AtomicBool::new(false));
    let (unmapped, binds, refused) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let errors = spin::Mutex::new(Vec::<String>::new());
    let device = spin::Mutex::new(());
    let (rig_ref, second_sid) = (&rig, rig.sid + 1);
    smp::on_each_cpu(&|cpu| {
        if cpu >= cpus {
            return;
        }
        ready.fetch_add(1, Ordering::SeqCst);
        while ready.load(Ordering::SeqCst) < cpus {
            core::hint::spin_loop();
        }
        if cpu == 0 {
            drop(space.lock().take()); // the last user: release, then the tables are freed
            torn.store(true, Ordering::SeqCst);
            return;
        }
        let va = RELEASE_VA + cpu as u64 * PAGE;
        if aspace.munmap_nonblocking(VirtAddr(va), PAGE as usize).is_ok() {
            unmapped.fetch_add(1, Ordering::Relaxed);
            let _turn = device.lock();
            if let Err(e) = rig_ref.dev.store(va, 16) {
                errors.lock().push(format!("store after the unmap: {e}"));
            }
        }
        while cpu == 1 && !torn.load(Ordering::SeqCst) {
            let root = aspace.root().unwrap_or(PhysAddr(0));
            match sva::bind::<KernelDomain>(second_sid, rig_ref.mm(), root, MAIR_VALUE) {
                Ok(bond) => {
                    binds.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = bond.unbind() {
                        errors.lock().push(format!("unbinding the second stream: {e}"));
                    }
                }
                // After release, or after the last user went: the documented refusals.
                Err(SvaError::ContextDead(_) | SvaError::Notifier(_)) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => errors.lock().push(format!("binding the second stream: {e}")),
            }
        }
    });
    let mut errors = errors.into_inner();
    for (cpu, frame) in frames.iter().enumerate().skip(1) {
        if rig::read(*frame, 16)?.contains(&0xee) {
            errors.push(format!("CPU {cpu}'s page: the device wrote its freed frame"));
        }
    }
    let stale = rig.stale_translation_count();
    if stale != 0 {
        errors.push(format!("{stale} stale translations"));
    }
    let state = rig.bond().map(|b| b.state());
    if state != Some(ContextState::Released) {
        errors.push(format!("context {state:?} after the race, not Released"));
    }
    let after = rig.sva.stats();
    if after.aborts != before.aborts || after.failures != before.failures || rig.smmu.is_disabled()
    {
        errors.push(format!(
            "an SVA failure or SMMU-wide abort: {} failures, {} aborts",
            after.failures - before.failures,
            after.aborts - before.aborts
        ));
    }
    if let Err(e) = rig.unbind() {
        errors.push(format!("unbind after the race: {e}"));
    }
    let _ = rig.drain_events();
    if verbose {
        println!(
            "    # fault release: {} of {} pages unmapped during the race, second stream bound {} times, refused {} times",
            unmapped.load(Ordering::Relaxed),
            cpus - 1,
            binds.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed)
        );
    }
    Ok(match errors.first() {
        None => Ok(()),
        Some(_) => Err(errors.join("; ")),
    })
}
