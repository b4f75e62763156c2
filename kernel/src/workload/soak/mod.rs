//! The soak: the SVA coherence workload on every CPU at once (`job=soak`), optionally with
//! faults injected (`fault=`, see [`crate::workload::fault`]).
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
//! that round and checks its documented outcome (see [`crate::workload::fault`]); the teardown race is
//! the soak's own teardown, and the release race a second address space torn down after it.
//! The summary counts faults injected and survived.
//!
//! The run exits non-zero on any stale access, wrong data, unexpected fault, lost interval
//! invalidation, operation error or fault not survived. `smmu.skip_invalidate=1` makes it
//! fail (the stale accesses are seen), which `make test` checks.

mod inject;
mod report;
mod round;
mod teardown;

pub use report::SoakReport;
pub(crate) use teardown::teardown_race;

use inject::{
    arm_command_error, arm_sync_timeout, disarm_smmu_faults, refusal_loses_work, CURRENT_ASID,
};
use report::print_summary;
use teardown::release_race;

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::arch::aarch64::aspace::{activate, deactivate, CpuMm};
use crate::arch::aarch64::{cpu_id, smp, timer};
use crate::board::bootargs;
use crate::iommu::backend::model::Knobs;
use crate::iommu::driver::CommandFailure;
use crate::iommu::probe::{self, BoardDomain};
use crate::iommu::spec::command::Command;
use crate::iommu::spec::event::{AccessKind, EventKind, EventRecord};
use crate::iommu::spec::regs::CommandErrorCode;
use crate::iommu::sva::{self, Bond, ContextState, SvaError};
use crate::ktest::TestCtx;
use crate::mm::aspace::{Backing, MmError, MmUser, Placement, USER_END};
use crate::mm::notifier::{
    IntervalNotifier, IntervalNotifierOps, IntervalSubscription, NotifierRange,
};
use crate::mm::pgtable::descriptor::{MemoryType, Permissions, MAIR_VALUE};
use crate::mm::phys::FrameAllocator;
use crate::mm::ram::frames;
use crate::mm::{PhysAddr, VirtAddr};
use crate::println;
use crate::rig::{self, faults, Device, Outcome, Rig, RigError, PAGE, RO, RW};
use crate::rt::ExitCode;
use crate::workload::fault::{Fault, FaultConfig, FaultCounters, FaultDice, FaultSet};

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
    bond: Option<Bond<BoardDomain>>,
}

struct Soak<'r> {
    rig: &'r Rig<BoardDomain>,
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
    // The boot refused bad numbers before any workload started.
    let seed = args.seed.unwrap_or_else(timer::ticks);
    let rounds = args.rounds.unwrap_or(8);
    // By default the faults follow the workload's seed, so every seed injects its own.
    let fault_seed = Some(args.fault_seed.unwrap_or(seed));
    let faults = match FaultConfig::new(args.fault.as_deref(), fault_seed, args.fault_rate) {
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

/// Runs a soak on the kernel's SMMU and DMA master.
pub fn soak(params: SoakParams) -> Result<SoakReport, RigError> {
    let mut rig = Rig::<BoardDomain>::board()?;
    let root = rig.root().ok_or_else(|| rig::fail("no page table"))?;
    let bond = sva::bind::<BoardDomain>(rig.sid, rig.mm(), root, MAIR_VALUE).map_err(rig::fail)?;
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
        let open = m.open_unmaps();
        if open != 0 {
            report.errors.push(format!(
                "{open} unmap window(s) still open at the end: the checker excused every later \
                 change in their ranges"
            ));
        }
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
}
