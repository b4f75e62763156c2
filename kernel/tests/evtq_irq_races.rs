//! The event queue with its interrupt (breaker review of fb7a631): the handler's
//! [`Smmu::collect_events`] and thread context's [`Smmu::drain_events`] share the SMMU's queue
//! and the driver's software log. Whatever the interleaving, every record the SMMU wrote is
//! handed to a drain exactly once, in the order written, or its loss is reported.

#[path = "smmu_support.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::thread;

use shootdown::iommu::backend::model::{ModelConfig, SmmuModel};
use shootdown::iommu::backend::SmmuBackend;
use shootdown::iommu::driver::{Smmu, SmmuConfig};
use shootdown::iommu::fake::StepClock;
use shootdown::iommu::spec::event::{AccessKind, EventKind};
use shootdown::iommu::spec::regs::offset;
use shootdown::mm::VirtAddr;
use support::*;

/// A device that faults once per page from `VA` on (nothing is mapped there): record `i`
/// carries `VA + i` pages as its input address.
fn fault_at(model: &SmmuModel<'_>, i: u64) {
    let _ = model.translate(SID, VirtAddr(VA + i * PAGE), AccessKind::Read);
}

const PAGE: u64 = 4096;

/// The model, with a device that faults `refill` more times as soon as the driver first hands
/// slots back (SMMU_EVENTQ_CONS): the SMMU keeps writing records while a drain runs.
struct FaultsWhileDraining<'a> {
    model: &'a SmmuModel<'a>,
    refill: AtomicUsize,
    next: AtomicUsize,
}

impl SmmuBackend for FaultsWhileDraining<'_> {
    fn read32(&self, offset: usize) -> u32 {
        self.model.read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.model.write32(offset, value);
        if offset == offset::EVENTQ_CONS {
            for _ in 0..self.refill.swap(0, SeqCst) {
                fault_at(self.model, self.next.fetch_add(1, SeqCst) as u64);
            }
        }
    }
    fn read64(&self, offset: usize) -> u64 {
        self.model.read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        self.model.write64(offset, value)
    }
}

/// Polling (no interrupt): a full queue is drained while the device writes five more records
/// into the slots the drain hands back. The queue never overflows (the model loses nothing),
/// so the drain must deliver all of them: before fb7a631 it did (up to two queues' worth per
/// call); with every record first moved into the software log, the log (as large as the
/// queue) was full and the five were dropped as "log lost" although the SMMU had kept them.
#[test]
fn a_drain_racing_a_faulting_device_delivers_what_the_queue_held() {
    let mem = arena();
    let model = SmmuModel::new(&mem, ModelConfig::default()).unwrap();
    let backend = FaultsWhileDraining {
        model: &model,
        refill: 0.into(),
        next: 0.into(),
    };
    let config = SmmuConfig {
        eventq_log2: 3,
        ..smmu_config()
    };
    run_world(&mem, &model, &backend, config, |w| {
        let entries = w.smmu.event_queue_size().in_use.entries() as usize;
        for _ in 0..entries {
            fault_at(&model, backend.next.fetch_add(1, SeqCst) as u64);
        }
        assert_eq!(w.smmu.queued_events() as usize, entries, "the queue is full");
        let more = entries / 2 + 1;
        backend.refill.store(more, SeqCst);
        let mut addrs = Vec::new();
        let drain = w.smmu.drain_events(|e| addrs.push(e.input_addr)).unwrap();
        let total = entries + more;
        assert_eq!(model.stats().events_lost, 0, "the SMMU lost nothing");
        assert!(!drain.lost_events(), "{drain:?}: records the queue held were dropped");
        let expected: Vec<u64> = (0..total as u64).map(|i| VA + i * PAGE).collect();
        assert_eq!(addrs, expected);
        assert_eq!(w.smmu.drain_events(|_| {}).unwrap(), Default::default());
    });
}

/// The interrupt handler on one CPU, drains on another, a device faulting meanwhile (paced so
/// neither the queue nor the log can fill): every record reaches a drain once, in order.
#[test]
fn the_handler_and_a_drain_take_each_record_once_in_order() {
    const RECORDS: u64 = 3000;
    let mem = arena();
    let model = SmmuModel::new(&mem, ModelConfig::default()).unwrap();
    let config = SmmuConfig {
        eventq_log2: 4,
        ..smmu_config()
    };
    run_world(&mem, &model, &model, config, |w| {
        let smmu: &Smmu<'_, &SmmuModel<'_>, &StepClock> = w.smmu;
        let room = smmu.event_queue_size().in_use.entries() as usize - 1;
        let done = AtomicBool::new(false);
        let mut got = Vec::new();
        thread::scope(|s| {
            s.spawn(|| {
                for i in 0..RECORDS {
                    while smmu.queued_events() as usize + smmu.logged_events() >= room {
                        thread::yield_now();
                    }
                    fault_at(&model, i);
                }
            });
            s.spawn(|| {
                while !done.load(SeqCst) {
                    smmu.collect_events().unwrap();
                }
            });
            while (got.len() as u64) < RECORDS {
                let drain = smmu
                    .drain_events(|e| {
                        assert_eq!(e.kind, EventKind::Translation);
                        got.push(e.input_addr)
                    })
                    .unwrap();
                assert!(!drain.lost_events(), "{drain:?}");
            }
            done.store(true, SeqCst);
        });
        let expected: Vec<u64> = (0..RECORDS).map(|i| VA + i * PAGE).collect();
        assert!(got == expected, "records duplicated, skipped or reordered");
        assert_eq!(model.stats().events_lost, 0);
    });
}
