//! Fault injection during a round (`fault=`): arming each kind, recording whether the
//! documented outcome held.

use super::*;

/// The event queue's size while the `evtq` fault overflows it: fewer entries than a faulting
/// page's 4-byte transactions.
const OVERFLOW_EVENTQ_LOG2: u8 = 7;

impl Soak<'_> {
    pub(super) fn expect_fault(
        &self,
        kind: EventKind,
        page: u64,
        access: AccessKind,
        outcome: Outcome,
    ) {
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

    pub(super) fn record(
        &self,
        cpu: usize,
        f: Fault,
        survived: bool,
        what: impl FnOnce() -> String,
    ) {
        self.injected.record(f, survived);
        if !survived {
            self.error(format!("CPU {cpu}: fault {f} not survived: {}", what()));
        } else if self.params.verbose {
            println!("    # fault {f} on CPU {cpu}: {}", what());
        }
    }

    /// `alloc`: an anonymous `mmap` whose n-th frame allocation fails must return
    /// `OutOfMemory` and leave nothing of the region behind.
    pub(super) fn inject_alloc(&self, cpu: usize, ctx: &mut TestCtx) {
        let (base, size) = self.slice(cpu);
        // A churn slot: only this CPU uses its slice, and its churn never leaves anything
        // mapped.
        let va = base + size - 2 * SLOT;
        let pages = ctx.rand_range(3, 9);
        let nth = ctx.rand_range(1, pages + 1) as u32;
        let space = self.rig.space();
        crate::mm::inject::arm_alloc_failure(cpu, nth);
        let r = space.mmap(
            Placement::Fixed(VirtAddr(va)),
            (pages * PAGE) as usize,
            RW,
            Backing::Anonymous,
        );
        let still_armed = crate::mm::inject::disarm_alloc_failure(cpu);
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
    pub(super) fn inject_refusal(
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

    /// `evtq`: with the event queue shrunk to 128 entries, a faulting 4 KiB read of the hole
    /// makes 1024 events; the loss is reported once, and a small faulting read afterwards is
    /// reported normally. (The queue is shrunk only while this CPU holds the device: no other
    /// DMA runs meanwhile.)
    pub(super) fn inject_overflow(&self, cpu: usize, churn: &mut TestCtx) {
        let hole = self.hole(cpu);
        let _d = self.device(churn);
        let shrunk = self
            .rig
            .with_event_queue(OVERFLOW_EVENTQ_LOG2, || self.overflow(cpu, hole));
        if let Err(e) = shrunk {
            self.record(cpu, Fault::EventqOverflow, false, || {
                format!("shrinking the event queue: {e}")
            });
        }
    }

    fn overflow(&self, cpu: usize, hole: u64) {
        let big = self.rig.dev.fetch(hole, PAGE as usize);
        let (events, drain) = self.rig.drain_events_reporting();
        let lost = drain.lost_events();
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
    pub(super) fn after_sync_timeout(
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
            sva::bind::<BoardDomain>(self.rig.sid, self.rig.mm(), root, MAIR_VALUE).map_err(|_| ())
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

    /// The SMMU's whole-ASID fallbacks, once more than `before` (or after
    /// [`FALLBACK_WAIT_US`]): the refused TLBI may be another CPU's, which counts its fallback
    /// only after its CMD_SYNC completed, possibly after this CPU's own change returned.
    pub(super) fn fallbacks_beyond(&self, before: u64) -> u64 {
        let deadline = timer::Deadline::after_us(FALLBACK_WAIT_US);
        loop {
            let n = self.rig.smmu.stats().invalidation_fallbacks;
            if n > before || deadline.expired() {
                return n;
            }
            crate::sync::spin_loop();
        }
    }
}

/// How long a CPU waits for another CPU's whole-ASID fallback to be counted.
const FALLBACK_WAIT_US: u64 = 1_000_000;

/// The current binding's ASID (for the model's checker notes).
pub(super) static CURRENT_ASID: AtomicU64 = AtomicU64::new(0);

pub(super) fn arm_sync_timeout() -> Result<(), RigError> {
    probe::injector()
        .ok_or_else(|| rig::fail("no fault injector"))?
        .arm_sync_timeout();
    Ok(())
}

/// A command error: the model's own (its real CMDQ_CONS.ERR path), or injected at the
/// backend boundary in front of QEMU's SMMU.
pub(super) fn arm_command_error(rig: &Rig<BoardDomain>) -> Result<(), RigError> {
    match rig.model {
        Some(m) => {
            m.set_knobs(Knobs {
                fail_command: Some((None, CommandErrorCode::Illegal)),
                ..m.knobs()
            });
            Ok(())
        }
        None => {
            probe::injector()
                .ok_or_else(|| rig::fail("no fault injector"))?
                .arm_command_error();
            Ok(())
        }
    }
}

/// Whether the refused command may have lost an invalidation, which its caller must then redo
/// for the whole ASID. The injected error hits whichever command the SMMU consumes next, any
/// CPU's. A refused CMD_SYNC loses nothing: the driver runs a CMD_SYNC in its place (§7.1),
/// which completes every command before it (§4.7.3), so no fallback is owed (the caller whose
/// own batch held it still falls back; a CMD_SYNC written apart from any batch has no owner).
pub(super) fn refusal_loses_work(refused: Option<CommandFailure>) -> bool {
    !matches!(refused.map(|f| f.command), Some(Ok(Command::Sync { .. })))
}

/// Disarms SMMU faults that did not fire; true if one was still armed.
pub(super) fn disarm_smmu_faults(rig: &Rig<BoardDomain>) -> bool {
    let mut armed = probe::injector().is_some_and(|i| i.disarm());
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
