//! Invalidation (cf. `arm_smmu_tlb_inv_*`): the planner's commands for a range, the whole-ASID
//! fallback when a command fails, and the quiesce a release needs.

use super::*;

/// What one invalidation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidationReport {
    pub plan: PlanKind,
    /// Commands sent, CMD_SYNC included.
    pub commands: CommandCounts,
    /// A command failed and a whole-ASID invalidation was sent instead.
    pub recovered: Option<CommandFailure>,
    /// The debug knob suppressed the invalidation.
    pub skipped: bool,
}

impl InvalidationReport {
    fn new() -> Self {
        Self {
            plan: PlanKind::Nothing,
            commands: CommandCounts::default(),
            recovered: None,
            skipped: false,
        }
    }
}

impl<'a, B: SmmuBackend, C: Clock> Smmu<'a, B, C> {
    /// Invalidates every IOTLB entry of `ctx` for `[start, end)` (exclusive end; `0..u64::MAX`
    /// is the whole address space) and returns once the SMMU has completed it.
    pub fn invalidate_range(
        &self,
        ctx: ContextId,
        start: VirtAddr,
        end: VirtAddr,
    ) -> Result<InvalidationReport, SmmuError> {
        let mut report = InvalidationReport::new();
        self.invalidate_reporting(ctx, start, end, Some(&mut report))?;
        Ok(report)
    }

    /// [`Smmu::invalidate_range`] without the report, which nothing is spent on: what
    /// `arch_invalidate_secondary_tlbs` calls on every unmap.
    pub fn invalidate(
        &self,
        ctx: ContextId,
        start: VirtAddr,
        end: VirtAddr,
    ) -> Result<(), SmmuError> {
        self.invalidate_reporting(ctx, start, end, None)
    }

    /// Does [`Smmu::invalidate_range`], filling `report` in place if asked for.
    fn invalidate_reporting(
        &self,
        ctx: ContextId,
        start: VirtAddr,
        end: VirtAddr,
        mut report: Option<&mut InvalidationReport>,
    ) -> Result<(), SmmuError> {
        let asid = self.context_asid(ctx)?;
        let mut plan = self.planner.lock().plan(asid, start, end)?;
        let debug = self.debug_knobs();
        if plan.may_cover() {
            plan = self.cover_if_free(ctx, plan, debug);
        }
        if let Some(r) = report.as_deref_mut() {
            r.plan = plan.kind();
        }
        if debug.skip_invalidation {
            self.cmdq.lock().stats.invalidations_skipped += 1;
            if let Some(r) = report {
                r.skipped = true;
            }
            return Ok(());
        }
        if plan.is_empty() {
            count_invalidation(&mut self.cmdq.lock().stats, plan.kind(), None);
            return Ok(());
        }
        let started = self.clock.now_ns();
        let result = self.invalidate_with_fallback(&plan, asid, debug, report);
        // A timed-out invalidation is counted as such, not as a slow one. One lock hold for
        // the counters, after the submission (which holds the queue lock). The error is
        // passed on by itself: returning `result` whole would copy its bytes on success too.
        if let Err(e) = result {
            count_invalidation(&mut self.cmdq.lock().stats, plan.kind(), None);
            return Err(e);
        }
        let took = self.clock.now_ns().saturating_sub(started);
        count_invalidation(&mut self.cmdq.lock().stats, plan.kind(), Some(took));
        Ok(())
    }

    /// Sends `plan`; if the SMMU refused one of its commands, the whole ASID instead.
    fn invalidate_with_fallback(
        &self,
        plan: &crate::iommu::driver::planner::Plan,
        asid: u16,
        debug: DebugKnobs,
        mut report: Option<&mut InvalidationReport>,
    ) -> Result<(), SmmuError> {
        let sync = !debug.skip_sync;
        let sent = match report.as_deref_mut() {
            Some(r) => self.submit_with(plan.commands(), sync, debug, &mut r.commands),
            None => self.submit_with(plan.commands(), sync, debug, &mut ()),
        };
        // Ok is matched on its own: passing `sent` on whole would copy the error's bytes too.
        let failure = match sent {
            Ok(()) => return Ok(()),
            Err(SmmuError::CommandFailed(f)) => f,
            Err(e) => return Err(e),
        };
        // The queue ran on, but that invalidation may not have happened: redo it for the
        // whole ASID, which cannot be malformed.
        self.cmdq.lock().stats.invalidation_fallbacks += 1;
        let fallback = [Command::TlbiNhAsid { vmid: VMID, asid }].into_iter();
        match report {
            Some(r) => {
                // `r.commands` already holds what the refused submission published (its own
                // CMD_SYNC only if it wrote one): the fallback adds to it.
                self.submit_with(fallback, true, debug, &mut r.commands)?;
                r.recovered = Some(failure);
            }
            None => self.submit_with(fallback, true, debug, &mut ())?,
        }
        Ok(())
    }

    /// Invalidates every cached translation and configuration of the SMMU (CFGI_ALL,
    /// TLBI_NSNH_ALL, CMD_SYNC: §4.3.5, §4.4.6), global entries included, which no
    /// invalidation by ASID removes. For clean-up after a test that broke coherence on purpose.
    pub fn invalidate_all(&self) -> Result<(), SmmuError> {
        self.submit(&[Command::CfgiAll, Command::TlbiNsnhAll], true)
    }

    /// The "release" path: the context stays valid but every access now faults without an
    /// event (CD.EPD0 = 1, CD.R = 0), and nothing of it stays cached. Call before the address
    /// space's page tables are freed.
    pub fn quiesce(&self, ctx: ContextId) -> Result<(), SmmuError> {
        let mut streams = self.streams.lock();
        let c = streams
            .contexts
            .get_mut(&ctx)
            .ok_or(SmmuError::NoSuchContext(ctx))?;
        let quiet = c.fields.quiesced();
        // Only dword 0 changes: a single 64-bit store, so the SMMU sees old or new, never a mix.
        let w0 = ContextDescriptor::encode(&quiet).0[0];
        physmem::store(self.mem, c.cd, w0, Ordering::Release)?;
        c.fields = quiet;
        c.quiesced = true;
        let (asid, sids) = (c.asid, c.sids.clone());
        // CFGI_STE as well as CFGI_CD, so the quiesce does not depend on every earlier STE
        // write of these streams having reached the SMMU. A CFGI whose CMD_SYNC merely timed
        // out needs nothing more: commands complete in order, so this CMD_SYNC completes it
        // too (§4.7.3). But an STE write whose CFGI_STE was never queued (the queue stayed
        // full, or the SMMU was being switched off) leaves the SMMU free to keep the old STE;
        // such a stream is still listed here: attach lists it once its CFGI_STE completed or
        // when taking the STE back failed too, and detach unlists it only once the invalid
        // STE's CFGI_STE completed. One command per stream, on a rare path.
        let cfgis = sids.iter().flat_map(|&sid| {
            [
                Command::CfgiSte { sid, leaf: true },
                Command::CfgiCd {
                    sid,
                    ssid: 0,
                    leaf: true,
                },
            ]
        });
        // The CD change must be complete (its own CMD_SYNC) before the ASID is invalidated:
        // until the CFGI completes the SMMU may still walk through the cached old CD, and an
        // entry it fills after consuming the TLBI survives that TLBI (§4.4: a TLBI acts on what
        // is cached when it is consumed). Linux syncs the CD first too (arm_smmu_sync_cd).
        self.submit_iter(cfgis, true)?;
        self.submit(&[Command::TlbiNhAsid { vmid: VMID, asid }], true)?;
        Ok(())
    }
}

/// Counts one invalidation by what it did, and how long it took if it reached the SMMU and
/// succeeded.
fn count_invalidation(stats: &mut DriverStats, kind: PlanKind, took_ns: Option<u64>) {
    match kind {
        PlanKind::Nothing => stats.invalidations_empty += 1,
        PlanKind::PerPage { .. } => stats.invalidations_per_page += 1,
        PlanKind::Range { .. } => stats.invalidations_range += 1,
        PlanKind::Cover { .. } => {
            stats.invalidations_range += 1;
            stats.invalidations_covered += 1;
        }
        PlanKind::Asid(_) => stats.invalidations_asid += 1,
    }
    if let Some(took) = took_ns {
        stats.slowest_invalidation_ns = stats.slowest_invalidation_ns.max(took);
    }
}
