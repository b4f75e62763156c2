//! The event queue and global errors: draining event records, overflow, SMMU_GERROR.

use super::init::queue_base;
use super::*;

/// The event queue's size ([`Smmu::event_queue_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventQueueSize {
    /// The entries the SMMU writes.
    pub in_use: QueueGeometry,
    /// The entries its memory holds.
    pub allocated: QueueGeometry,
}

/// What one call of [`Smmu::drain_events`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventDrain {
    /// Records handed to the sink.
    pub drained: usize,
    /// The SMMU lost events since the last drain (EVENTQ_PROD.OVFLG toggled).
    pub overflowed: bool,
    /// An event-queue write aborted (GERROR.EVENTQ_ABT_ERR), acknowledged.
    pub write_aborted: bool,
}

impl<'a, B: SmmuBackend, C: Clock> Smmu<'a, B, C> {
    /// Hands every pending event record to `sink`, acknowledges an overflow and an
    /// event-queue abort if there was one. Bounded: at most two queues' worth per call.
    pub fn drain_events(
        &self,
        mut sink: impl FnMut(&EventRecord),
    ) -> Result<EventDrain, SmmuError> {
        let mut q = self.eventq.lock();
        let mut result = EventDrain::default();
        let limit = 2 * q.geo.entries() as usize;
        let mut by_kind: Vec<EventKind> = Vec::new();
        let mut ovflg = q.ovack;
        while result.drained < limit {
            let prod_raw = self.regs.read32(offset::EVENTQ_PROD);
            fence(Ordering::Acquire);
            ovflg = LocalRegisterCopy::<u32, EVENTQ_PROD::Register>::new(prod_raw)
                .read(EVENTQ_PROD::OVFLG);
            let prod = q.geo.ptr(prod_raw);
            if q.geo.is_empty(prod, q.cons) {
                break;
            }
            while !q.geo.is_empty(prod, q.cons) && result.drained < limit {
                let slot = q.base.as_u64() + (EVENT_SIZE as u64) * u64::from(q.geo.index(q.cons));
                let words = physmem::load_words::<EVENT_WORDS>(self.mem, PhysAddr(slot))?;
                let ev = EventRecord::decode(words);
                sink(&ev);
                by_kind.push(ev.kind);
                q.cons = q.geo.advance(q.cons, 1);
                result.drained += 1;
            }
            // Hand the slots back (and acknowledge any overflow seen so far).
            let mut cons = LocalRegisterCopy::<u32, EVENTQ_CONS::Register>::new(q.cons);
            cons.modify(EVENTQ_CONS::OVACKFLG.val(ovflg));
            self.regs.write32(offset::EVENTQ_CONS, cons.get());
        }
        if ovflg != q.ovack {
            result.overflowed = true;
            q.ovack = ovflg;
            let mut cons = LocalRegisterCopy::<u32, EVENTQ_CONS::Register>::new(q.cons);
            cons.modify(EVENTQ_CONS::OVACKFLG.val(ovflg));
            self.regs.write32(offset::EVENTQ_CONS, cons.get());
        }
        {
            // GERRORN is shared with the command queue's acknowledgements (see
            // `acknowledge_global_errors`).
            let _cmdq = self.cmdq.lock();
            let gerror = self.regs.read32(offset::GERROR);
            let gerrorn = self.regs.read32(offset::GERRORN);
            let bit = 1 << GERROR::EVENTQ_ABT_ERR.shift;
            if (gerror ^ gerrorn) & bit != 0 {
                result.write_aborted = true;
                self.regs
                    .write32(offset::GERRORN, (gerrorn & !bit) | (gerror & bit));
            }
        }
        drop(q);
        let mut c = self.cmdq.lock();
        c.stats.events += result.drained as u64;
        c.stats.event_overflows += u64::from(result.overflowed);
        c.stats.event_write_aborts += u64::from(result.write_aborted);
        for k in by_kind {
            *c.stats.events_by_kind.entry(k).or_default() += 1;
        }
        Ok(result)
    }

    /// The event queue's size: in use, and allocated (the two differ only while a test has
    /// shrunk it with [`Smmu::resize_event_queue`]).
    pub fn event_queue_size(&self) -> EventQueueSize {
        let q = self.eventq.lock();
        EventQueueSize {
            in_use: q.geo,
            allocated: q.allocated,
        }
    }

    /// Test-only: makes the SMMU use the first 2^`log2` entries of the event queue (at most
    /// the allocated ones), so tests can overflow it with few faults; returns the size now in
    /// use. Pending records are dropped. The queue is turned off while its base register
    /// changes (§6.3.29: EVENTQ_BASE is only written while CR0.EVENTQEN is 0), so an event
    /// recorded meanwhile is lost: call it while no device faults. Refused once
    /// [`Smmu::abort_all_traffic`] was called: CR0 is the last resort's.
    pub fn resize_event_queue(&self, log2: u8) -> Result<QueueGeometry, SmmuError> {
        let mut q = self.eventq.lock();
        // CR0 is read, changed and written back whole: a last resort in between would be undone.
        let _cr0 = self.cr0.lock();
        if self.is_disabled() {
            return Err(SmmuError::Disabled);
        }
        let geo = QueueGeometry::clamped(log2.min(q.allocated.log2_entries()));
        let cr0 = LocalRegisterCopy::<u32, CR0::Register>::new(self.regs.read32(offset::CR0));
        let mut off = cr0;
        off.modify(CR0::EVENTQEN::CLEAR);
        self.write_cr0(off.get())?;
        self.regs
            .write64(offset::EVENTQ_BASE, queue_base(q.base, geo));
        self.regs.write32(offset::EVENTQ_PROD, 0);
        self.regs.write32(offset::EVENTQ_CONS, 0);
        q.geo = geo;
        q.cons = 0;
        q.ovack = 0;
        self.write_cr0(cr0.get())?;
        Ok(geo)
    }

    /// Global errors other than command-queue errors (those are handled by submissions) that
    /// are active; they are acknowledged. Returns the raw GERROR bits that were active.
    pub fn acknowledge_global_errors(&self) -> u32 {
        // Under the command-queue lock: a poll acknowledging CMDQ_ERR writes GERRORN too, and
        // an interleaved read-modify-write would undo its acknowledgement.
        let _q = self.cmdq.lock();
        let gerror = self.regs.read32(offset::GERROR);
        let gerrorn = self.regs.read32(offset::GERRORN);
        let cmdq = 1 << GERROR::CMDQ_ERR.shift;
        let active = (gerror ^ gerrorn) & !cmdq;
        if active != 0 {
            self.regs.write32(offset::GERRORN, gerrorn ^ active);
        }
        active
    }
}
