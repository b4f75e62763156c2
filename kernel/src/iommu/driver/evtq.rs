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

/// What [`Smmu::resize_event_queue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventQueueResize {
    /// The entries the SMMU writes now.
    pub in_use: QueueGeometry,
    /// Records pending in the old queue or the software log, dropped undecoded.
    pub dropped: usize,
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

impl EventDrain {
    /// Whether any event was lost, however.
    pub fn lost_events(&self) -> bool {
        self.overflowed || self.write_aborted
    }
}

/// Records moved out of the SMMU's event queue and not yet decoded, oldest first: a bounded
/// ring, allocated once, so the event interrupt never allocates. Records are moved in only up
/// to its room ([`Smmu::move_to_log`]): it never drops one. It holds as many records as the
/// event queue in use (`capacity`), not the allocated one: a test that shrinks the queue to
/// overflow it with few faults gets a log as small.
pub(super) struct EventLog {
    slots: Box<[[u64; EVENT_WORDS]]>,
    /// The slots in use: at most `slots.len()`.
    capacity: usize,
    head: usize,
    len: usize,
}

impl EventLog {
    pub(super) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            slots: vec![[0; EVENT_WORDS]; capacity].into_boxed_slice(),
            capacity,
            head: 0,
            len: 0,
        }
    }

    /// Empties it and uses `capacity` of its slots (at most those allocated, at least one).
    fn reset(&mut self, capacity: usize) {
        self.clear();
        self.capacity = capacity.clamp(1, self.slots.len());
    }

    /// Appends `record`; the caller checked [`EventLog::room`].
    fn push(&mut self, record: [u64; EVENT_WORDS]) {
        debug_assert!(self.room() > 0, "a record pushed into a full event log");
        let tail = (self.head + self.len) % self.slots.len();
        self.slots[tail] = record;
        self.len += 1;
    }

    fn pop(&mut self) -> Option<[u64; EVENT_WORDS]> {
        if self.len == 0 {
            return None;
        }
        let record = self.slots[self.head];
        self.head = (self.head + 1) % self.slots.len();
        self.len -= 1;
        Some(record)
    }

    /// Records it can take before it is full.
    fn room(&self) -> usize {
        self.capacity - self.len
    }

    pub(super) fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

/// Records decoded per pass of [`Smmu::drain_events`]: the event queue's lock is held only
/// while this many are copied out, never while the sink runs.
const DRAIN_BATCH: usize = 64;

impl<'a, B: SmmuBackend, C: Clock> Smmu<'a, B, C> {
    /// The event interrupt's work: moves the records the SMMU has written from its queue into
    /// the software log, as many as the log has room for, and hands their slots back
    /// (SMMU_EVENTQ_CONS, acknowledging an overflow), so the SMMU rarely waits for thread
    /// context. Decodes and answers nothing. Takes only the event queue's lock, allocates
    /// nothing, logs nothing: safe in an IRQ handler under the rule of `arch::aarch64::irq`
    /// (see [`Smmu::drain_events`] for the lock's protocol). Returns the records moved.
    ///
    /// What the log cannot take stays in the SMMU's queue, where it is not lost: the queue and
    /// the log together hold two queues' worth. The SMMU raises the interrupt again only when
    /// its queue goes from empty to non-empty, so nothing here waits for another interrupt:
    /// every [`Smmu::drain_events`] pass reads the SMMU's queue after the log.
    pub fn collect_events(&self) -> Result<usize, SmmuError> {
        self.move_to_log(&mut self.eventq.lock())
    }

    /// Hands every pending event record to `sink`, oldest first: first those the event
    /// interrupt already moved to the software log, then those still in the SMMU's queue.
    /// Acknowledges an overflow and an event-queue abort if there was one. Bounded: at most
    /// two queues' worth per call.
    ///
    /// # Locking
    /// The event queue's lock (`self.eventq`) guards the SMMU's EVENTQ_CONS, our copy of it,
    /// the OVFLG acknowledgement and the software log. It is taken by thread context on any
    /// CPU and by the event interrupt on the boot CPU. Nothing is allocated or logged under it,
    /// and the only lock taken under it is `cr0` (by [`Smmu::resize_event_queue`]), whose
    /// holders take no other lock; no interrupt window is opened under it (this file has none),
    /// so an interrupt can never find its own CPU holding it, and another CPU holding it
    /// releases it after a bounded copy. Decoding, the statistics (under the command queue's
    /// lock) and the sink run after it is dropped.
    pub fn drain_events(
        &self,
        mut sink: impl FnMut(&EventRecord),
    ) -> Result<EventDrain, SmmuError> {
        let mut result = EventDrain::default();
        let mut by_kind: Vec<EventKind> = Vec::new();
        let limit = {
            let q = self.eventq.lock();
            2 * (q.log.capacity + q.geo.entries() as usize)
        };
        while result.drained < limit {
            let mut batch = [[0u64; EVENT_WORDS]; DRAIN_BATCH];
            let n = {
                let mut q = self.eventq.lock();
                // The SMMU's queue too, every pass: records the interrupt left there (the log
                // was full) raise no new interrupt. Only what the log has room for: the rest
                // waits in the SMMU's queue for the next pass.
                self.move_to_log(&mut q)?;
                result.overflowed |= core::mem::take(&mut q.overflow_unreported);
                let mut n = 0;
                while n < DRAIN_BATCH {
                    let Some(record) = q.log.pop() else { break };
                    batch[n] = record;
                    n += 1;
                }
                n
            };
            for words in &batch[..n] {
                let ev = EventRecord::decode(*words);
                sink(&ev);
                by_kind.push(ev.kind);
            }
            result.drained += n;
            if n == 0 {
                break;
            }
        }
        result.write_aborted = self.acknowledge_event_write_abort();
        let mut c = self.cmdq.lock();
        c.stats.events += result.drained as u64;
        c.stats.event_overflows += u64::from(result.overflowed);
        c.stats.event_write_aborts += u64::from(result.write_aborted);
        for k in by_kind {
            *c.stats.events_by_kind.entry(k).or_default() += 1;
        }
        Ok(result)
    }

    /// Moves the SMMU's pending records into the log, as many as it has room for, and writes
    /// EVENTQ_CONS, with OVACKFLG following OVFLG (§7.4); an overflow seen is kept for the
    /// next drain to report. Caller holds the event queue's lock.
    fn move_to_log(&self, q: &mut EventQueue) -> Result<usize, SmmuError> {
        let limit = q.log.room();
        let mut moved = 0;
        let mut ovflg = q.ovack;
        while moved < limit {
            let prod_raw = self.regs.read32(offset::EVENTQ_PROD);
            fence(Ordering::Acquire);
            ovflg = LocalRegisterCopy::<u32, EVENTQ_PROD::Register>::new(prod_raw)
                .read(EVENTQ_PROD::OVFLG);
            let prod = q.geo.ptr(prod_raw);
            if q.geo.is_empty(prod, q.cons) {
                break;
            }
            while !q.geo.is_empty(prod, q.cons) && moved < limit {
                let slot = q.base.as_u64() + (EVENT_SIZE as u64) * u64::from(q.geo.index(q.cons));
                let words = physmem::load_words::<EVENT_WORDS>(self.mem, PhysAddr(slot))?;
                q.log.push(words);
                q.cons = q.geo.advance(q.cons, 1);
                moved += 1;
            }
            // Hand the slots back (and acknowledge any overflow seen so far).
            self.write_event_cons(q.cons, ovflg);
        }
        if ovflg != q.ovack {
            q.overflow_unreported = true;
            q.ovack = ovflg;
            self.write_event_cons(q.cons, ovflg);
        }
        Ok(moved)
    }

    fn write_event_cons(&self, cons: QueuePtr, ovackflg: u32) {
        let mut reg = LocalRegisterCopy::<u32, EVENTQ_CONS::Register>::new(cons);
        reg.modify(EVENTQ_CONS::OVACKFLG.val(ovackflg));
        self.regs.write32(offset::EVENTQ_CONS, reg.get());
    }

    /// Acknowledges GERROR.EVENTQ_ABT_ERR if active; returns whether it was. Under the command
    /// queue's lock: GERRORN is shared with its acknowledgements (see
    /// [`Smmu::acknowledge_global_errors`]).
    fn acknowledge_event_write_abort(&self) -> bool {
        let _cmdq = self.cmdq.lock();
        let gerror = self.regs.read32(offset::GERROR);
        let gerrorn = self.regs.read32(offset::GERRORN);
        let bit = 1 << GERROR::EVENTQ_ABT_ERR.shift;
        if (gerror ^ gerrorn) & bit == 0 {
            return false;
        }
        self.regs
            .write32(offset::GERRORN, (gerrorn & !bit) | (gerror & bit));
        true
    }

    /// Records the event interrupt moved to the software log that no drain has taken yet.
    pub fn logged_events(&self) -> usize {
        self.eventq.lock().log.len
    }

    /// Records the SMMU has written to its event queue that nobody has moved out yet
    /// (SMMU_EVENTQ_PROD against our CONS).
    pub fn queued_events(&self) -> u32 {
        let q = self.eventq.lock();
        let prod = q.geo.ptr(self.regs.read32(offset::EVENTQ_PROD));
        q.geo.used(prod, q.cons)
    }

    /// Enables or disables the SMMU's wired event-queue and global-error interrupts
    /// (SMMU_IRQ_CTRL.EVENTQ_IRQEN / GERROR_IRQEN, §6.3.16), waiting for SMMU_IRQ_CTRLACK to
    /// match. Only the kernel's interrupt wiring and its tests call it; the driver alone polls.
    pub fn set_interrupts(&self, eventq: bool, gerror: bool) -> Result<(), SmmuError> {
        let mut ctrl = LocalRegisterCopy::<u32, IRQ_CTRL::Register>::new(0);
        if eventq {
            ctrl.modify(IRQ_CTRL::EVENTQ_IRQEN::SET);
        }
        if gerror {
            ctrl.modify(IRQ_CTRL::GERROR_IRQEN::SET);
        }
        self.write_acked(
            offset::IRQ_CTRL,
            offset::IRQ_CTRLACK,
            "SMMU_IRQ_CTRLACK",
            ctrl.get(),
        )
    }

    /// Whether SMMU_IRQ_CTRL enables the event-queue interrupt.
    pub fn event_interrupt_enabled(&self) -> bool {
        LocalRegisterCopy::<u32, IRQ_CTRL::Register>::new(self.regs.read32(offset::IRQ_CTRLACK))
            .is_set(IRQ_CTRL::EVENTQ_IRQEN)
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
    /// the allocated ones), so tests can overflow it with few faults, and the software log as
    /// many. Pending records, in the queue or the log, are dropped and counted in the result;
    /// an overflow the SMMU signalled and no drain reported yet is kept for the next drain. The
    /// queue is turned off while its base register changes (§6.3.29: EVENTQ_BASE is only
    /// written while CR0.EVENTQEN is 0), so an event recorded meanwhile is lost: call it while
    /// no device faults. Refused once [`Smmu::abort_all_traffic`] was called: CR0 is the last
    /// resort's.
    pub fn resize_event_queue(&self, log2: u8) -> Result<EventQueueResize, SmmuError> {
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
        // Read with the queue off, so nothing is written after it.
        let prod_raw = self.regs.read32(offset::EVENTQ_PROD);
        let ovflg = LocalRegisterCopy::<u32, EVENTQ_PROD::Register>::new(prod_raw)
            .read(EVENTQ_PROD::OVFLG);
        let dropped = q.log.len + q.geo.used(q.geo.ptr(prod_raw), q.cons) as usize;
        self.regs
            .write64(offset::EVENTQ_BASE, queue_base(q.base, geo));
        self.regs.write32(offset::EVENTQ_PROD, 0);
        self.regs.write32(offset::EVENTQ_CONS, 0);
        q.geo = geo;
        q.cons = 0;
        q.overflow_unreported |= ovflg != q.ovack;
        q.ovack = 0;
        q.log.reset(geo.entries() as usize);
        self.write_cr0(cr0.get())?;
        Ok(EventQueueResize {
            in_use: geo,
            dropped,
        })
    }

    /// The global errors active now (SMMU_GERROR ^ SMMU_GERRORN), without acknowledging any:
    /// the global-error interrupt records them; a drain or
    /// [`Smmu::acknowledge_global_errors`] acknowledges them in thread context.
    pub fn active_global_errors(&self) -> u32 {
        self.regs.read32(offset::GERROR) ^ self.regs.read32(offset::GERRORN)
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
