//! Loom models of CMD_SYNC coalescing (`iommu::driver::coalesce`): two CPUs submit commands
//! through the driver's own protocol to an SMMU that consumes the queue in order, one entry
//! each time a CPU reads CONS (so completion lags publication, as on hardware), and completes
//! a command only when a later CMD_SYNC is consumed (as the model does). A 2-entry queue makes
//! the pointers wrap several times.
//!
//! ```text
//! LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" cargo test -p shootdown --release --test loom_cmdq
//! ```
//!
//! The `*_fails_*` twin turns on the debug knob that lets a CPU wait for a CMD_SYNC written
//! before its own commands; loom must catch the early return.
#![cfg(loom)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use loom::thread;
use shootdown::iommu::driver::coalesce::{
    CommandRing, SharedQueue, Submission, SyncEvent, SyncHardware, SyncLedger, SyncOutcome,
};
use shootdown::iommu::driver::{CommandFailure, SmmuError};
use shootdown::iommu::spec::regs::CommandErrorCode;
use shootdown::iommu::spec::command::{Command, CommandCounts};
use shootdown::iommu::spec::queue::{QueueGeometry, QueuePtr};
use shootdown::sync::{current_cpu, set_model_cpu};

/// A 2-entry queue: wraps every other command.
const SMALL: u8 = 1;
/// Room for everything the timeout model publishes.
const ROOMY: u8 = 3;
const SYNC: u64 = 0;
const IDS: usize = 8;

/// The SMMU: its CONS, the slots, and which commands (by id) have completed.
struct Smmu {
    geo: QueueGeometry,
    cons: QueuePtr,
    slots: Vec<u64>,
    pending: Vec<u64>,
    done: [bool; IDS],
    /// CMD_SYNCs are held (not consumed) until a waiter gives up.
    hold_syncs: bool,
    /// The command (by id) the SMMU refuses: it stops in front of it until repaired.
    refuse: Option<u64>,
    /// Stopped on the refused command (GERROR.CMDQ_ERR active).
    stopped: bool,
}

impl Smmu {
    /// Consumes the entry at CONS, if PROD is ahead and it may.
    fn step(&mut self, prod: QueuePtr) {
        if prod == self.cons {
            return;
        }
        let entry = self.slots[self.geo.index(self.cons) as usize];
        if self.stopped || Some(entry) == self.refuse {
            self.stopped = true;
            return;
        }
        if entry == SYNC {
            if self.hold_syncs {
                return;
            }
            for id in self.pending.drain(..) {
                self.done[id as usize] = true;
            }
        } else {
            self.pending.push(entry);
        }
        self.cons = self.geo.advance(self.cons, 1);
    }
}

/// The driver's side of the queue, as the protocol sees it, with the SMMU behind it.
struct Ring {
    smmu: Smmu,
    prod: QueuePtr,
    cons: QueuePtr,
    ledger: SyncLedger,
    /// (CPU, CMD_SYNC position) of every wait.
    waits: Vec<(usize, u64)>,
    /// (CPU, command id) of every command published.
    owners: Vec<(usize, u64)>,
    /// Commands refused (never completed).
    refused: Vec<u64>,
}

impl Ring {
    /// At the moment the protocol declares the calling CPU's CMD_SYNC complete, every command
    /// that CPU published must have completed.
    fn check_completed(&self) {
        let cpu = current_cpu();
        for &(owner, id) in &self.owners {
            assert!(
                owner != cpu || self.smmu.done[id as usize] || self.refused.contains(&id),
                "CPU {cpu} returned before a CMD_SYNC after its command completed"
            );
        }
    }
}

struct Hw {
    clock: AtomicU64,
    timeout: u64,
}

impl SyncHardware for Hw {
    fn now_ns(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }
    fn sync_timeout_ns(&self) -> u64 {
        self.timeout
    }
    fn disabled(&self) -> bool {
        false
    }
}

fn encode(c: &Command) -> u64 {
    match *c {
        Command::TlbiNhAsid { asid, .. } => u64::from(asid),
        _ => SYNC,
    }
}

impl CommandRing<Hw> for Ring {
    fn ledger(&mut self) -> &mut SyncLedger {
        &mut self.ledger
    }
    fn capacity(&self) -> usize {
        self.smmu.geo.entries() as usize
    }
    fn publish(&mut self, hw: &Hw, commands: &[Command]) -> Result<(), SmmuError> {
        let geo = self.smmu.geo;
        let needed = commands.len() as u32;
        // The driver's wait for room has a deadline too: a held CMD_SYNC must not spin here.
        for _ in 0..4 {
            if geo.free(self.prod, self.cons) >= needed {
                break;
            }
            self.poll(hw)?;
        }
        let free = geo.free(self.prod, self.cons);
        if free < needed {
            return Err(SmmuError::CommandQueueFull { needed, free });
        }
        for c in commands {
            if encode(c) != SYNC {
                self.owners.push((current_cpu(), encode(c)));
            }
            self.smmu.slots[geo.index(self.prod) as usize] = encode(c);
            self.prod = geo.advance(self.prod, 1);
        }
        Ok(())
    }
    fn poll(&mut self, _hw: &Hw) -> Result<(), SmmuError> {
        self.smmu.step(self.prod);
        self.cons = self.smmu.cons;
        self.ledger.observe_cons(self.smmu.geo, self.prod, self.cons);
        if self.smmu.stopped {
            // As the driver: record the refusal at CONS, a CMD_SYNC in its place, run on.
            let slot = self.smmu.geo.index(self.cons) as usize;
            let id = std::mem::replace(&mut self.smmu.slots[slot], SYNC);
            let failure = CommandFailure {
                code: CommandErrorCode::Illegal,
                index: slot as u32,
                command: Ok(tlbi(id as u16)),
            };
            let at = self.ledger.consumed();
            self.ledger.record_refusal(at, failure);
            self.refused.push(id);
            self.smmu.refuse = None;
            self.smmu.stopped = false;
        }
        Ok(())
    }
    fn pointers(&self) -> (QueuePtr, QueuePtr) {
        (self.prod, self.cons)
    }
    fn count(&mut self, event: SyncEvent) {
        match event {
            SyncEvent::SyncBegin(pos) => self.waits.push((current_cpu(), pos)),
            // The SMMU answers late: after a waiter gave up.
            SyncEvent::SyncTimeout => self.smmu.hold_syncs = false,
            SyncEvent::SyncEnd { failed: false, .. } => self.check_completed(),
            _ => {}
        }
    }
}

struct World {
    queue: Arc<SharedQueue<Ring>>,
    hw: Arc<Hw>,
}

fn world(log2_entries: u8, hold_syncs: bool, timeout: u64) -> World {
    let geo = QueueGeometry::new(log2_entries).unwrap();
    let smmu = Smmu {
        geo,
        cons: 0,
        slots: vec![0; geo.entries() as usize],
        pending: Vec::new(),
        done: [false; IDS],
        hold_syncs,
        refuse: None,
        stopped: false,
    };
    let queue = Arc::new(SharedQueue::new(Ring {
        smmu,
        prod: 0,
        cons: 0,
        ledger: SyncLedger::new(),
        waits: Vec::new(),
        owners: Vec::new(),
        refused: Vec::new(),
    }));
    let hw = Arc::new(Hw {
        clock: AtomicU64::new(0),
        timeout,
    });
    World { queue, hw }
}

fn how(adopt_earlier_sync: bool) -> Submission {
    Submission {
        sync: true,
        batch: 64,
        share: true,
        adopt_earlier_sync,
    }
}

fn tlbi(id: u16) -> Command {
    Command::TlbiNhAsid { vmid: 0, asid: id }
}

/// Two CPUs submit one command each, `rounds` times; every successful return must find the
/// CPU's command completed. Returns the results in CPU order.
fn two_cpus(w: &World, rounds: u16, adopt_earlier_sync: bool) -> Vec<Vec<Result<(), SmmuError>>> {
    let cpus: Vec<_> = (0..2u16)
        .map(|cpu| {
            let (queue, hw) = (w.queue.clone(), w.hw.clone());
            thread::spawn(move || {
                set_model_cpu(cpu as usize);
                let mut results = Vec::new();
                for round in 0..rounds {
                    let id = 1 + cpu + 2 * round;
                    let mut counts = CommandCounts::default();
                    let r = queue.submit(
                        &*hw,
                        [tlbi(id)].into_iter(),
                        how(adopt_earlier_sync),
                        &mut counts,
                    );
                    if r.is_ok() {
                        assert!(
                            queue.lock().smmu.done[id as usize],
                            "CPU {cpu} returned before a CMD_SYNC after its command completed"
                        );
                    }
                    results.push(r);
                }
                results
            })
        })
        .collect();
    cpus.into_iter().map(|c| c.join().unwrap()).collect()
}

#[test]
fn a_cpu_returns_only_after_a_later_sync_completed() {
    loom::model(|| {
        let w = world(SMALL, false, u64::MAX / 2);
        let results = two_cpus(&w, 1, false);
        assert!(results.iter().flatten().all(|r| r.is_ok()), "{results:?}");
    });
}

#[test]
#[should_panic(expected = "returned before a CMD_SYNC after its command completed")]
fn waiting_for_an_earlier_sync_fails_the_check() {
    loom::model(|| {
        let w = world(SMALL, false, u64::MAX / 2);
        two_cpus(&w, 1, true);
    });
}

/// Two rounds on a 2-entry queue: PROD and CONS wrap twice.
#[test]
fn positions_hold_across_wraps() {
    loom::model(|| {
        let w = world(SMALL, false, u64::MAX / 2);
        let results = two_cpus(&w, 2, false);
        assert!(results.iter().flatten().all(|r| r.is_ok()), "{results:?}");
    });
}

/// The SMMU holds every CMD_SYNC until some waiter times out, then completes them late. Every
/// CPU that waited for a CMD_SYNC that was given up on must fail, even though CONS moves on
/// afterwards; a CPU that returns Ok had its command completed (checked in `two_cpus`).
#[test]
fn a_given_up_sync_fails_every_waiter() {
    // Every wait loop iteration is a lock round trip: two preemptions already cover a give-up
    // between the other CPU's publish and its wait.
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(2);
    model.check(|| {
        let w = world(ROOMY, true, 2);
        let results = two_cpus(&w, 1, false);
        let mut q = w.queue.lock();
        let waits = q.waits.clone();
        assert!(results.iter().flatten().any(|r| r.is_err()), "nobody timed out");
        for (cpu, pos) in waits {
            if q.ledger().outcome(pos) == SyncOutcome::GivenUp {
                assert!(
                    matches!(results[cpu][0], Err(SmmuError::SyncTimeout { .. })),
                    "CPU {cpu} waited for a given-up CMD_SYNC and got {:?}",
                    results[cpu][0]
                );
            }
        }
    });
}

/// The SMMU refuses CPU 1's command wherever it lands among CPU 0's traffic; whoever polls
/// repairs it. CPU 1 (and only CPU 1) is told, even when it shares CPU 0's CMD_SYNC or CPU 0
/// shares its.
#[test]
fn a_refused_command_fails_its_owner_only() {
    loom::model(|| {
        let w = world(ROOMY, false, u64::MAX / 2);
        let refused = tlbi(2);
        w.queue.lock().smmu.refuse = Some(2);
        let results = two_cpus(&w, 1, false);
        assert!(results[0][0].is_ok(), "{results:?}");
        assert!(
            matches!(&results[1][0], Err(SmmuError::CommandFailed(f)) if f.command == Ok(refused)),
            "{results:?}"
        );
    });
}
