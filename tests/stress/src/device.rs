//! A device thread: 8-byte DMA reads and writes through the SMMU model at random slots of the
//! address space its StreamID is bound to, without pause, each judged from the slot's state
//! before and after it ([`crate::slot::judge`]); and the event drainer.

use std::sync::atomic::{fence, Ordering};

use shootdown::iommu::backend::model::dma::{DmaEngine, DmaError, FaultPolicy};
use shootdown::iommu::spec::event::{AccessKind, EventKind};
use shootdown::mm::VirtAddr;

use crate::slot::{device_word, judge, Verdict};
use crate::{bump, Rng, Shared, WORDS};

/// Accesses a device claims from the shared budget at a time.
const CHUNK: u64 = 1024;
/// Accesses between two yields of a device thread.
const YIELD_EVERY: u64 = 16;

/// Runs device `d` (StreamID [`crate::sid`]`(d)`, bound to space `d % spaces`) until the run's
/// access budget is spent.
pub fn run(s: &Shared<'_>, d: usize, seed: u64) {
    let space = d % s.spaces.len();
    let engine = match DmaEngine::new(s.world.model, crate::sid(d))
        .with_transactions(8, FaultPolicy::Stop)
    {
        Ok(e) => e,
        Err(e) => return s.error(format!("device {d}: {e}")),
    };
    let mut rng = Rng::new(seed);
    let slots = &s.spaces[space].slots;
    loop {
        let claimed = s.claim(CHUNK);
        if claimed == 0 {
            return;
        }
        for i in 0..claimed {
            if i % YIELD_EVERY == 0 {
                // The model's lock is an unfair spin lock: without a yield now and then, device
                // threads that re-take it at once starve the CPUs' command submissions.
                std::thread::yield_now();
            }
            let k = rng.below(slots.len() as u64) as usize;
            let va = VirtAddr(s.va(k).as_u64() + rng.below(WORDS as u64) * 8);
            let write = rng.below(2) == 0;
            let before = slots[k].load();
            let (access, outcome) = if write {
                let word = device_word(space, k, d);
                (
                    AccessKind::Write,
                    engine.write(va, &word.to_le_bytes()).map(|()| None),
                )
            } else {
                let mut buf = [0u8; 8];
                let r = engine.read(va, &mut buf);
                (AccessKind::Read, r.map(|()| Some(u64::from_le_bytes(buf))))
            };
            fence(Ordering::SeqCst);
            let after = slots[k].load();
            let outcome = match outcome {
                Ok(v) => Ok(v),
                Err(DmaError::Fault { .. }) => {
                    bump(&s.c.faulted);
                    Err(())
                }
                Err(e) => {
                    s.error(format!("device {d}: {e}"));
                    continue;
                }
            };
            bump(if write { &s.c.writes } else { &s.c.reads });
            match judge(space, k, access, before, after, outcome) {
                Verdict::Fine => {}
                Verdict::AfterReturn => {
                    bump(&s.c.after_return);
                    s.error(format!(
                        "device {d}: {access:?} of slot {k} at {va} succeeded after the change to {:?} returned",
                        before.kind()
                    ));
                }
                Verdict::WrongData(word) => {
                    bump(&s.c.wrong_data);
                    s.error(format!(
                        "device {d}: read of slot {k} at {va} returned {word:#018x} ({before:?} .. {after:?})"
                    ));
                }
                Verdict::UnexpectedFault => {
                    bump(&s.c.unexpected_faults);
                    s.error(format!(
                        "device {d}: {access:?} of slot {k} at {va} faulted while {:?}",
                        before.kind()
                    ));
                }
            }
        }
    }
}

/// Drains the SMMU's event queue until the run is done, checking that every event is a
/// translation or permission fault of one of the run's devices.
pub fn drain(s: &Shared<'_>) {
    loop {
        let done = s.done();
        drain_once(s);
        if done {
            return;
        }
        std::thread::yield_now();
    }
}

fn drain_once(s: &Shared<'_>) {
    let devices = s.params.devices;
    let r = s.world.smmu.drain_events(|e| {
        bump(&s.c.events);
        let ours = (0..devices).any(|d| crate::sid(d) == e.sid);
        if !ours || !matches!(e.kind, EventKind::Translation | EventKind::Permission) {
            bump(&s.c.unexpected_events);
            s.error(format!("unexpected SMMU event: {e:?}"));
        }
    });
    if let Err(e) = r {
        s.error(format!("draining events: {e}"));
    }
}
