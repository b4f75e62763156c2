//! One soak round on one CPU: map, DMA through the shared addresses, unmap or protect under a
//! watching interval notifier, and check what the device could still reach.

use super::*;

impl Soak<'_> {
    /// Inserts an interval notifier over `[va, va + len)`.
    pub(super) fn watch(
        &self,
        va: u64,
        len: u64,
    ) -> Result<(IntervalSubscription, Arc<Watcher>), RigError> {
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

    pub(super) fn unwatch(&self, sub: IntervalSubscription) {
        sub.remove();
        bump(&self.c.removes);
    }

    /// Times `op` (an unmap or protection change) and keeps the slowest.
    pub(super) fn timed<R>(&self, what: impl FnOnce() -> String, op: impl FnOnce() -> R) -> R {
        let start = timer::ticks();
        let r = op();
        let took = timer::ticks().saturating_sub(start);
        if took > self.c.slowest_ticks.fetch_max(took, Ordering::Relaxed) {
            *self.slowest.lock() = what();
        }
        r
    }

    /// `munmap` of `pages` pages at `va`, announced to the model's checker, timed.
    pub(super) fn unmap(&self, va: u64, pages: u64) -> Result<(), RigError> {
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
    pub(super) fn protect(&self, va: u64, perms: Permissions) -> Result<(), RigError> {
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

    /// Anonymous map, interval notifier, read-only, read-write, unmap, remove: every change
    /// must reach the notifier before it returns, and the unmap must leave nothing mapped.
    pub(super) fn churn_once(&self, ctx: &mut TestCtx) -> Result<(), RigError> {
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

    pub(super) fn protect_range(
        &self,
        va: u64,
        pages: u64,
        perms: Permissions,
    ) -> Result<(), RigError> {
        let cpu = cpu_id();
        let r = self.timed(
            || format!("mprotect of {pages} page(s) at {va:#x} on CPU {cpu}"),
            || self.rig.protect(va, pages, perms),
        );
        bump(&self.c.protects);
        r
    }

    pub(super) fn round(
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
        let mut owned = Vec::new();
        let result = self.round_body(cpu, ctx, churn, fault, va, pages, &mut owned);
        // Freed only after the unbind has invalidated the whole ASID: with the invalidation
        // switched off (`smmu.skip_invalidate=1`) the device may still write through stale
        // entries, which must land in these frames (and be counted), not in reused ones.
        self.quarantine.lock().extend(owned);
        result
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn round_body(
        &self,
        cpu: usize,
        ctx: &mut TestCtx,
        churn: &mut TestCtx,
        fault: Option<Fault>,
        va: u64,
        pages: u64,
        owned: &mut Vec<PhysAddr>,
    ) -> Result<(), RigError> {
        let space = self.rig.space();
        let mut contents = Vec::new();
        for i in 0..pages {
            let frame = self.rig.alloc_device_frame()?;
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
            // Reading the shared pages back through the CPU is the point of the check.
            #[allow(unsafe_code)]
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
            let refused = after.last_command_error;
            let loses_work = refusal_loses_work(refused);
            let fallbacks = if loses_work {
                self.fallbacks_beyond(before.invalidation_fallbacks)
            } else {
                after.invalidation_fallbacks
            };
            let survived = changed.is_ok()
                && after.command_errors > before.command_errors
                && (!loses_work || fallbacks > before.invalidation_fallbacks)
                && !disarm_smmu_faults(self.rig);
            self.record(cpu, Fault::CmdqError, survived, || {
                format!(
                    "command error during the {what} of {page_va:#x}: {}; whole-ASID fallbacks {} -> {fallbacks}",
                    refused.map_or(String::from("none"), |f| format!("{f}")),
                    before.invalidation_fallbacks,
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
}
