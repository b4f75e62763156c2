//! Target `aspace`: sequences of address-space operations driving the page-table engine, the
//! notifier core and the SMMU (driver over the model) together, with a device doing DMA through
//! the shared virtual addresses between the steps.
//!
//! The input's first byte configures the SMMU (invalidation strategy, range invalidation,
//! IOTLB size and replacement); the rest is a program of [`Op`]s. After every step these
//! oracles must hold, or the run ends with a [`Violation`]:
//!
//! 1. **The SMMU model's coherence checker** records no stale translation: every translation
//!    the device used from its IOTLB agrees with a fresh walk of the tables.
//! 2. **The reference model** ([`reference`]): each call returns what the documentation says
//!    (the exact error for bad input, the exact address for `Placement::Anywhere`), the regions
//!    match, and the tables (read by an independent walker, [`tables`]) translate exactly the
//!    expected pages, to the expected frames, with the expected descriptor bits; the device
//!    sees the same (translation, permission and address-size faults included), and every
//!    anonymous page holds what the device last wrote to it, or zeros.
//! 3. **No leaked or doubly freed frame**: the arena's live frames are exactly the driver's
//!    structures, one CD per context, the reachable tables and the mapped anonymous frames; no
//!    bad free ever; after teardown and driver shutdown nothing is left.
//! 4. **Errors change nothing**: a refused call (or one that ran out of frames, which is only
//!    accepted when an allocation really failed) leaves regions, tables and frames bit for bit
//!    as they were, and a call refused by argument checks notifies nobody.
//! 5. **The notifier protocol**: starts and ends pair up, every secondary-TLB invalidation lies
//!    inside an open start's range, and a successful unmap, protect or discard invalidated the
//!    secondary TLB over every page that had a translation; mapping notifies nobody; teardown
//!    releases the SMMU's subscriber, after which the device faults quietly.

pub mod op;
pub mod reference;
pub mod tables;
pub mod world;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use shootdown::iommu::driver::planner::Strategy;
use shootdown::iommu::driver::{ContextId, ContextParams, DebugKnobs, Smmu, SmmuConfig};
use shootdown::iommu::fake::StepClock;
use shootdown::iommu::backend::model::dma::{DmaEngine, DmaError};
use shootdown::iommu::backend::model::iotlb::{IotlbConfig, Replacement};
use shootdown::iommu::backend::model::{FaultKind, ModelConfig, SmmuModel};
use shootdown::iommu::spec::event::AccessKind;
use shootdown::mm::aspace::{
    AddressSpace, Backing, MmError, MmUser, Placement, Region, USER_END, USER_START,
};
use shootdown::mm::notifier::{MmuNotifier, NotifyEvent};
use shootdown::mm::pgtable::descriptor::{MemoryType, Permissions};
use shootdown::mm::pgtable::MAIR_VALUE;
use shootdown::mm::{PhysAddr, VirtAddr};

use crate::input::Input;
use crate::memory::FuzzMemory;
use op::{BackingSpec, Op, Place, VA_WINDOW};
use reference::{check_range, memory_of, phys_of, validate, RangeSet, Reference, PAGE};
use tables::bits;
use world::{
    arena, platform, FuzzPlatform, FuzzSmmu, Log, RangeRecorder, Refuser, Seen, SharedModel,
    SmmuSubscriber,
};

/// The StreamID of the device.
pub const SID: u32 = 0x10;
/// Where in an anonymous page the device keeps its tag word.
pub const TAG_OFFSET: u64 = 0x100;
/// Programs are cut after this many operations (keeps every input's run short).
pub const MAX_STEPS: usize = 200;
/// The SMMU model's output size (SMMU_IDR5.OAS = 44 bits, like QEMU).
const SMMU_OA_LIMIT: u64 = 1 << 44;

/// Debug knobs that break the SMMU driver on purpose (to show the oracles notice).
#[derive(Debug, Clone, Copy, Default)]
pub struct Knobs {
    /// `invalidate_range` does nothing.
    pub skip_smmu_invalidation: bool,
    /// `invalidate_range` sends its TLBIs without a CMD_SYNC.
    pub skip_smmu_sync: bool,
}

/// An oracle failed.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The 1-based step (0: setup, after the last step: the final checks).
    pub step: usize,
    /// The operation of that step.
    pub op: String,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} ({}): {}", self.step, self.op, self.what)
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub steps: usize,
    /// Calls that succeeded / were refused as documented / ran out of frames.
    pub ok: usize,
    pub refused: usize,
    pub out_of_memory: usize,
    /// Device accesses checked against the reference.
    pub dma_checks: usize,
    pub teardowns: usize,
}

/// Runs `data` and panics with the violation, for libFuzzer.
pub fn fuzz(data: &[u8]) {
    if let Err(v) = run(data) {
        panic!("aspace oracle failed: {v}");
    }
}

/// The program `data` encodes, one operation per line (for reports).
pub fn describe(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let mut out = format!("  config {:#04x}\n", input.u8());
    let mut step = 0;
    while !input.is_empty() && step < MAX_STEPS {
        step += 1;
        out.push_str(&format!("  {step}: {}\n", Op::read(&mut input)));
    }
    out
}

/// Runs `data` with a correct driver.
pub fn run(data: &[u8]) -> Result<Summary, Violation> {
    run_with(data, Knobs::default())
}

/// Runs `data`, with the driver broken as `knobs` say.
pub fn run_with(data: &[u8], knobs: Knobs) -> Result<Summary, Violation> {
    let mut input = Input::new(data);
    let mut runner = Runner::new(input.u8(), knobs)?;
    while !input.is_empty() && runner.step < MAX_STEPS {
        let op = Op::read(&mut input);
        runner.step += 1;
        runner.op = op.to_string();
        runner.run_op(op)?;
    }
    runner.step += 1;
    runner.op = "end of input".into();
    runner.finish()
}

/// One live address space and its SMMU context.
struct Space {
    user: MmUser<FuzzPlatform>,
    ctx: ContextId,
    asid: u16,
    log: Log,
    handles: Vec<Arc<MmuNotifier>>,
    refuser: Option<Arc<MmuNotifier>>,
    reference: Reference,
}

/// What a call is expected to do when it succeeds.
enum Expect {
    Map(Region),
    Unmap(u64, u64, bool),
    Protect(u64, u64, Permissions),
    Discard(u64, u64),
    Populate(u64, u64),
}

/// What a call returned when it succeeded.
#[derive(Debug)]
enum Done {
    Mapped(VirtAddr),
    Pages(u64),
    Nothing,
}

struct Runner {
    mem: &'static FuzzMemory,
    model: Arc<SmmuModel<'static>>,
    smmu: Option<Arc<FuzzSmmu>>,
    /// Live frames of the driver's stream table and queues.
    driver_frames: usize,
    space: Option<Space>,
    budget: Option<usize>,
    step: usize,
    op: String,
    summary: Summary,
}

fn fault_class(k: &FaultKind) -> &'static str {
    match k {
        FaultKind::Translation { .. } => "translation",
        FaultKind::Permission { .. } => "permission",
        FaultKind::AddressSize { .. } => "address size",
        FaultKind::AccessFlag { .. } => "access flag",
        _ => "other",
    }
}

impl Runner {
    fn new(cfg: u8, knobs: Knobs) -> Result<Self, Violation> {
        let fail = |what: String| Violation {
            step: 0,
            op: "setup".into(),
            what,
        };
        let range_invalidation = cfg & 4 == 0;
        let strategy = match Strategy::ALL[usize::from(cfg % 4)] {
            Strategy::Range if !range_invalidation => Strategy::Auto,
            s => s,
        };
        let iotlb = IotlbConfig {
            capacity: [256, 64, 8, 1][usize::from(cfg >> 3) % 4],
            replacement: [Replacement::FlushAll, Replacement::Lru, Replacement::Fifo]
                [usize::from(cfg >> 5) % 3],
        };
        let mem = arena();
        mem.reset();
        let model = SmmuModel::new(
            mem,
            ModelConfig {
                range_invalidation,
                iotlb,
                ..ModelConfig::default()
            },
        )
        .map_err(|e| fail(format!("model: {e}")))?;
        let model = Arc::new(model);
        let smmu = Smmu::new(
            SharedModel(model.clone()),
            StepClock::new(1_000),
            mem,
            mem,
            SmmuConfig {
                max_sid: 0x1f,
                strategy,
                sync_timeout_ns: 2_000_000,
                ack_timeout_ns: 2_000_000,
                ..SmmuConfig::default()
            },
        )
        .map_err(|e| fail(format!("driver probe: {e}")))?;
        smmu.set_debug_knobs(DebugKnobs {
            skip_invalidation: knobs.skip_smmu_invalidation,
            skip_sync: knobs.skip_smmu_sync,
            ..DebugKnobs::default()
        });
        let mut runner = Runner {
            mem,
            model,
            smmu: Some(Arc::new(smmu)),
            driver_frames: mem.live_frames(),
            space: None,
            budget: None,
            step: 0,
            op: "setup".into(),
            summary: Summary::default(),
        };
        runner.space = Some(runner.new_space()?);
        Ok(runner)
    }

    fn fail(&self, what: impl Into<String>) -> Violation {
        Violation {
            step: self.step,
            op: self.op.clone(),
            what: what.into(),
        }
    }

    /// A device access disagreed with the reference: when the coherence checker saw a stale
    /// translation, that is the finding (it names the unmap that should have removed it).
    fn device_fail(&self, what: String) -> Violation {
        match self.model.stale_translations().first() {
            Some(s) => self.fail(format!("the coherence checker caught: {s} ({what})")),
            None => self.fail(what),
        }
    }

    fn smmu(&self) -> &Arc<FuzzSmmu> {
        self.smmu.as_ref().expect("the driver lives until finish")
    }

    fn space(&self) -> &Space {
        self.space.as_ref().expect("a space is live between steps")
    }

    fn dma(&self) -> DmaEngine<'_, 'static> {
        DmaEngine::new(&self.model, SID)
    }

    /// A fresh address space bound to a fresh SMMU context, with its subscribers.
    fn new_space(&self) -> Result<Space, Violation> {
        let user = AddressSpace::create(platform())
            .map_err(|e| self.fail(format!("create an address space: {e}")))?;
        let root = user
            .root()
            .ok_or_else(|| self.fail("a new space has no root"))?;
        let smmu = self.smmu();
        let ctx = smmu
            .create_context(ContextParams {
                root,
                mair: MAIR_VALUE,
            })
            .map_err(|e| self.fail(format!("create_context: {e}")))?;
        smmu.attach(SID, ctx)
            .map_err(|e| self.fail(format!("attach: {e}")))?;
        let asid = smmu
            .context_asid(ctx)
            .map_err(|e| self.fail(format!("context_asid: {e}")))?;
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let sva = Arc::new(SmmuSubscriber {
            smmu: smmu.clone(),
            ctx,
            log: log.clone(),
        });
        let rec = Arc::new(RangeRecorder { log: log.clone() });
        let handles = vec![
            MmuNotifier::register(user.mm(), sva)
                .map_err(|e| self.fail(format!("register the SMMU subscriber: {e:?}")))?,
            MmuNotifier::register(user.mm(), rec)
                .map_err(|e| self.fail(format!("register the recorder: {e:?}")))?,
        ];
        Ok(Space {
            user,
            ctx,
            asid,
            log,
            handles,
            refuser: None,
            reference: Reference::default(),
        })
    }

    fn run_op(&mut self, op: Op) -> Result<(), Violation> {
        self.summary.steps += 1;
        match op {
            Op::Budget(n) => {
                self.budget = Some(usize::from(n % 64));
                return Ok(());
            }
            Op::Refuser(on) => self.set_refuser(on)?,
            Op::Teardown => {
                self.teardown()?;
                self.space = Some(self.new_space()?);
            }
            Op::DmaWrite { va, value } => self.dma_write(va.va(), value)?,
            Op::DmaRead { va } => self.dma_read(va.va())?,
            _ => self.mm_op(op)?,
        }
        self.budget = None;
        self.check_state(&op)
    }

    fn set_refuser(&mut self, on: bool) -> Result<(), Violation> {
        let space = self.space.as_mut().expect("live space");
        match (on, space.refuser.take()) {
            (true, None) => {
                let r = MmuNotifier::register(space.user.mm(), Arc::new(Refuser)).map_err(|e| {
                    Violation {
                        step: self.step,
                        op: self.op.clone(),
                        what: format!("register the refuser: {e:?}"),
                    }
                })?;
                space.refuser = Some(r);
            }
            (false, Some(r)) => r.unregister(),
            (_, keep) => space.refuser = keep,
        }
        Ok(())
    }

    /* ---------------------------------------------------------------------------------- */
    /* Address-space calls: predict, perform, compare.                                     */
    /* ---------------------------------------------------------------------------------- */

    /// What the documentation says `op` must do given the reference state.
    fn predict(&self, op: &Op) -> Result<Expect, MmError> {
        let space = self.space();
        let r = &space.reference;
        match *op {
            Op::Map {
                at,
                len,
                perms,
                backing,
            } => predict_map(r, at.get(), len.bytes() as u64, perms.get(), backing.get()),
            Op::RawMap { va, len, pa } => predict_map(
                r,
                Placement::Fixed(VirtAddr(va)),
                len,
                Permissions::new(true, false, false),
                Backing::Physical(PhysAddr(raw_pa(pa)), MemoryType::Normal),
            ),
            Op::Unmap {
                va,
                len,
                nonblocking,
            } => {
                let (s, e) = check_range(va.va(), len.bytes() as u64)?;
                r.covering(s, e)?;
                if nonblocking && space.refuser.is_some() {
                    return Err(MmError::WouldBlock);
                }
                Ok(Expect::Unmap(s, e, nonblocking))
            }
            Op::RawUnmap { va, len } => {
                let (s, e) = check_range(va, len)?;
                r.covering(s, e)?;
                Ok(Expect::Unmap(s, e, false))
            }
            Op::Protect { va, len, perms } => {
                let (s, e) = check_range(va.va(), len.bytes() as u64)?;
                let pieces = r.covering(s, e)?;
                let perms = perms.get();
                for p in &pieces {
                    validate(memory_of(p.backing), perms)?;
                }
                if let Some(va) = Reference::owner_change(&pieces, s, perms) {
                    return Err(MmError::OwnerChange(VirtAddr(va)));
                }
                Ok(Expect::Protect(s, e, perms))
            }
            Op::Discard { va, len } => {
                let (s, e) = check_range(va.va(), len.bytes() as u64)?;
                r.covering(s, e)?;
                Ok(Expect::Discard(s, e))
            }
            Op::Populate { va, len } => {
                let (s, e) = check_range(va.va(), len.bytes() as u64)?;
                r.covering(s, e)?;
                Ok(Expect::Populate(s, e))
            }
            _ => unreachable!("not an address-space call: {op}"),
        }
    }

    fn perform(&self, op: &Op) -> Result<Done, MmError> {
        let user = &self.space().user;
        let len = |l: op::Len| l.bytes();
        match *op {
            Op::Map {
                at,
                len: l,
                perms,
                backing,
            } => user
                .mmap(at.get(), len(l), perms.get(), backing.get())
                .map(Done::Mapped),
            Op::RawMap { va, len, pa } => user
                .mmap(
                    Placement::Fixed(VirtAddr(va)),
                    len as usize,
                    Permissions::new(true, false, false),
                    Backing::Physical(PhysAddr(raw_pa(pa)), MemoryType::Normal),
                )
                .map(Done::Mapped),
            Op::Unmap {
                va,
                len: l,
                nonblocking: false,
            } => user
                .munmap(VirtAddr(va.va()), len(l))
                .map(|_| Done::Nothing),
            Op::Unmap {
                va,
                len: l,
                nonblocking: true,
            } => user
                .munmap_nonblocking(VirtAddr(va.va()), len(l))
                .map(|_| Done::Nothing),
            Op::RawUnmap { va, len } => user
                .munmap(VirtAddr(va), len as usize)
                .map(|_| Done::Nothing),
            Op::Protect { va, len: l, perms } => user
                .mprotect(VirtAddr(va.va()), len(l), perms.get())
                .map(|_| Done::Nothing),
            Op::Discard { va, len: l } => user.discard(VirtAddr(va.va()), len(l)).map(Done::Pages),
            Op::Populate { va, len: l } => user
                .populate(VirtAddr(va.va()), len(l))
                .map(|_| Done::Nothing),
            _ => unreachable!("not an address-space call: {op}"),
        }
    }

    fn mm_op(&mut self, op: Op) -> Result<(), Violation> {
        let samples = self.samples(Some(&op));
        // Let the device cache translations where the call will change them.
        for &va in &samples {
            let _ = self.dma().touch(VirtAddr(va), AccessKind::Read);
        }
        let before = self.snapshot()?;
        let predicted = self.predict(&op);
        if let Some((s, e)) = op.range() {
            let space = self.space();
            // Names the step in the checker's report if a translation goes stale.
            self.model
                .note_unmap(space.asid, VirtAddr(s), VirtAddr(e), self.step as u64);
        }
        self.mem.set_budget(self.budget);
        let refused_before = self.mem.refused();
        let result = self.perform(&op);
        self.mem.set_budget(None);
        let allocation_failed = self.mem.refused() > refused_before;
        let log = std::mem::take(&mut *self.space().log.lock().unwrap());
        self.check_protocol(&log)?;
        match (predicted, result) {
            (Err(expected), Err(got)) => {
                if expected != got {
                    return Err(self.fail(format!("expected error {expected:?}, got {got:?}")));
                }
                let notified = expected != MmError::WouldBlock;
                if notified && !log.is_empty() {
                    return Err(self.fail(format!(
                        "a call refused by its argument checks ({got}) notified: {log:?}"
                    )));
                }
                self.summary.refused += 1;
                self.check_unchanged(&before)
            }
            (Ok(_), Err(MmError::OutOfMemory)) if allocation_failed => {
                self.summary.out_of_memory += 1;
                self.check_unchanged(&before)
            }
            (Ok(expect), Ok(done)) => {
                if allocation_failed {
                    return Err(self.fail(format!(
                        "an allocation failed but the call succeeded ({done:?})"
                    )));
                }
                self.summary.ok += 1;
                self.apply(expect, done, &log)
            }
            (Ok(_), Err(got)) => Err(self.fail(format!(
                "expected success, got {got:?} ({got}){}",
                if allocation_failed {
                    ""
                } else {
                    " without any failed allocation"
                }
            ))),
            (Err(expected), Ok(done)) => Err(self.fail(format!(
                "expected error {expected:?}, but the call succeeded ({done:?})"
            ))),
        }
    }

    /// Updates the reference with a successful call and checks what only success promises.
    fn apply(&mut self, expect: Expect, done: Done, log: &[Seen]) -> Result<(), Violation> {
        let fail = |what: String| Violation {
            step: self.step,
            op: self.op.clone(),
            what,
        };
        let space = self.space.as_mut().expect("live space");
        let r = &mut space.reference;
        match (expect, done) {
            (Expect::Map(region), Done::Mapped(va)) => {
                if va != region.start {
                    return Err(fail(format!(
                        "mmap placed the region at {va}, expected {}",
                        region.start
                    )));
                }
                if !log.is_empty() {
                    return Err(fail(format!("mapping notified: {log:?}")));
                }
                r.regions.insert(region.start.as_u64(), region);
                r.fill(region.start.as_u64(), region.end.as_u64());
            }
            (Expect::Unmap(s, e, nonblocking), Done::Nothing) => {
                let was = r.mapped.clipped(s, e);
                check_weakening(log, NotifyEvent::Unmap, s, e, !nonblocking, &was).map_err(fail)?;
                r.unmap(s, e);
                r.split_out(s, e, |_| None);
            }
            (Expect::Protect(s, e, perms), Done::Nothing) => {
                // Only pages whose permissions change have descriptors that change.
                let was: Vec<(u64, u64)> = r
                    .overlapping(s, e)
                    .filter(|p| p.perms != perms)
                    .flat_map(|p| {
                        let (ps, pe) = (p.start.as_u64().max(s), p.end.as_u64().min(e));
                        r.mapped.clipped(ps, pe)
                    })
                    .collect();
                check_weakening(log, NotifyEvent::ProtectionVma, s, e, true, &was).map_err(fail)?;
                r.split_out(s, e, |mut p| {
                    p.perms = perms;
                    Some(p)
                });
            }
            (Expect::Discard(s, e), Done::Pages(pages)) => {
                let was = r.mapped.clipped(s, e);
                check_weakening(log, NotifyEvent::Clear, s, e, true, &was).map_err(fail)?;
                let expected = r.unmap(s, e);
                if pages != expected {
                    return Err(fail(format!(
                        "discard reported {pages} pages dropped, {expected} were mapped"
                    )));
                }
            }
            (Expect::Populate(s, e), Done::Nothing) => {
                if !log.is_empty() {
                    return Err(fail(format!("populate notified: {log:?}")));
                }
                r.fill(s, e);
            }
            (_, done) => return Err(fail(format!("unexpected return value {done:?}"))),
        }
        Ok(())
    }

    /// Checks the order of what the subscribers saw during one call.
    fn check_protocol(&self, log: &[Seen]) -> Result<(), Violation> {
        let mut open: Vec<(NotifyEvent, u64, u64)> = Vec::new();
        for seen in log {
            match *seen {
                Seen::Start {
                    event, start, end, ..
                } => open.push((event, start, end)),
                Seen::End { event, start, end } => {
                    if open.pop() != Some((event, start, end)) {
                        return Err(self.fail(format!("unmatched invalidate_range_end: {log:?}")));
                    }
                }
                Seen::Secondary { start, end } => {
                    if !open.iter().any(|&(_, s, e)| s <= start && end <= e) {
                        return Err(self.fail(format!(
                            "secondary invalidation [{start:#x}, {end:#x}) outside every open \
                             invalidate_range_start: {log:?}"
                        )));
                    }
                }
                Seen::Release => {
                    return Err(self.fail(format!("release during a call: {log:?}")));
                }
                Seen::SmmuError(ref e) => return Err(self.fail(format!("SMMU driver: {e}"))),
            }
        }
        if !open.is_empty() {
            return Err(self.fail(format!("invalidate_range_start without end: {log:?}")));
        }
        Ok(())
    }

    /* ---------------------------------------------------------------------------------- */
    /* The device.                                                                          */
    /* ---------------------------------------------------------------------------------- */

    /// What the device should get for an access to `va`: the output address, or the class
    /// of fault. Uses the reference, and the (already checked) tables for anonymous frames.
    fn expected_access(&self, va: u64, access: AccessKind) -> Result<u64, &'static str> {
        let r = &self.space().reference;
        let page = va & !(PAGE - 1);
        if !r.mapped.contains(page) {
            return Err("translation");
        }
        let region = r.region_at(page).ok_or("translation")?;
        let pa = match phys_of(region, page) {
            Some(pa) => pa,
            None => self.anon_frame(page).ok_or("translation")?,
        };
        if pa >= SMMU_OA_LIMIT {
            return Err("address size");
        }
        if access == AccessKind::Write && !region.perms.write {
            return Err("permission");
        }
        Ok(pa + (va - page))
    }

    /// The frame the tables map at anonymous page `va`.
    fn anon_frame(&self, va: u64) -> Option<u64> {
        let t = self.space().user.translate(VirtAddr(va))?;
        Some(t.pa.as_u64() & !(PAGE - 1))
    }

    /// Touches `va` for reading and writing and compares with the reference.
    fn probe(&mut self, va: u64) -> Result<(), Violation> {
        for access in [AccessKind::Read, AccessKind::Write] {
            let expected = self.expected_access(va, access);
            let got = self.dma().touch(VirtAddr(va), access);
            self.summary.dma_checks += 1;
            let same = match (&expected, &got) {
                (Ok(e), Ok(g)) => *e == g.as_u64(),
                (Err(class), Err(f)) => *class == fault_class(&f.kind),
                _ => false,
            };
            if !same {
                return Err(self.device_fail(format!(
                    "device {access:?} at {va:#x}: expected {expected:x?}, got {got:x?}"
                )));
            }
        }
        // An anonymous page holds the last tag the device wrote to it, or zeros.
        if let Some(&tag) = self.space().reference.anon.get(&(va & !(PAGE - 1))) {
            let mut buf = [0u8; 8];
            let at = (va & !(PAGE - 1)) + TAG_OFFSET;
            self.dma()
                .read(VirtAddr(at), &mut buf)
                .map_err(|e| self.fail(format!("device read of {at:#x}: {e}")))?;
            if u64::from_le_bytes(buf) != tag {
                return Err(self.device_fail(format!(
                    "anonymous page {va:#x} holds {:#x}, the device last wrote {tag:#x}",
                    u64::from_le_bytes(buf)
                )));
            }
        }
        Ok(())
    }

    fn dma_write(&mut self, va: u64, value: u8) -> Result<(), Violation> {
        let tag = u64::from_le_bytes([value; 8]) ^ self.step as u64;
        let at = va + TAG_OFFSET;
        let expected = self.expected_access(at, AccessKind::Write);
        let got = self.dma().write(VirtAddr(at), &tag.to_le_bytes());
        self.summary.dma_checks += 1;
        self.compare_transfer(at, expected, got)?;
        if let Some(t) = self
            .space
            .as_mut()
            .expect("live")
            .reference
            .anon
            .get_mut(&va)
        {
            if expected.is_ok() {
                *t = tag;
            }
        }
        Ok(())
    }

    fn dma_read(&mut self, va: u64) -> Result<(), Violation> {
        let at = va + TAG_OFFSET;
        let expected = self.expected_access(at, AccessKind::Read);
        let mut buf = [0u8; 8];
        let got = self.dma().read(VirtAddr(at), &mut buf);
        self.summary.dma_checks += 1;
        self.compare_transfer(at, expected, got)?;
        if let (Ok(()), Some(&tag)) = (got, self.space().reference.anon.get(&va)) {
            if u64::from_le_bytes(buf) != tag {
                return Err(self.device_fail(format!(
                    "device read {:#x} at {at:#x}, expected {tag:#x}",
                    u64::from_le_bytes(buf)
                )));
            }
        }
        Ok(())
    }

    /// A data transfer: anonymous memory is RAM, physical backings are unbacked (the bus
    /// reports the output address).
    fn compare_transfer(
        &self,
        at: u64,
        expected: Result<u64, &'static str>,
        got: Result<(), DmaError>,
    ) -> Result<(), Violation> {
        let anon = self
            .space()
            .reference
            .anon
            .contains_key(&(at & !(PAGE - 1)));
        let same = match (&expected, &got) {
            (Ok(_), Ok(())) => anon,
            (Ok(pa), Err(DmaError::Bus { pa: got, .. })) => !anon && got.as_u64() == *pa,
            (Err(class), Err(DmaError::Fault { fault, .. })) => *class == fault_class(&fault.kind),
            _ => false,
        };
        if same {
            Ok(())
        } else {
            Err(self.device_fail(format!(
                "device transfer at {at:#x}: expected {expected:x?}, got {got:?}"
            )))
        }
    }

    /// Addresses worth checking after `op`: around its range, the ends of every region, and a
    /// few anonymous pages chosen by step number.
    fn samples(&self, op: Option<&Op>) -> Vec<u64> {
        let mut out = BTreeSet::new();
        let mut add = |va: u64| {
            let va = va & !(PAGE - 1);
            if (USER_START..USER_END).contains(&va) {
                out.insert(va);
            }
        };
        if let Some((s, e)) = op.and_then(Op::range) {
            let mid = s / 2 + e / 2;
            for va in [s.wrapping_sub(PAGE), s, s.saturating_add(PAGE), mid] {
                add(va);
            }
            for va in [e.wrapping_sub(PAGE), e] {
                add(va);
            }
        }
        let r = &self.space().reference;
        for region in r.regions.values().take(24) {
            add(region.start.as_u64());
            add(region.end.as_u64() - PAGE);
        }
        let anon: Vec<u64> = r.anon.keys().copied().collect();
        for k in 0..anon.len().min(4) {
            add(anon[(self.step * 7919 + k * 104_729) % anon.len()]);
        }
        out.into_iter().collect()
    }

    /* ---------------------------------------------------------------------------------- */
    /* Whole-state checks.                                                                  */
    /* ---------------------------------------------------------------------------------- */

    fn snapshot(&self) -> Result<Snapshot, Violation> {
        let space = self.space();
        let root = space
            .user
            .root()
            .ok_or_else(|| self.fail("a live space has no root"))?;
        Ok(Snapshot {
            regions: space.user.regions(),
            tables: tables::dump(self.mem, root.as_u64()).map_err(|e| self.fail(e))?,
            live: self.mem.live_frames(),
        })
    }

    fn check_unchanged(&self, before: &Snapshot) -> Result<(), Violation> {
        let after = self.snapshot()?;
        if after.regions != before.regions {
            return Err(self.fail(format!(
                "a failed call changed the regions: {:?} -> {:?}",
                before.regions, after.regions
            )));
        }
        if after.tables != before.tables {
            return Err(self.fail("a failed call changed the translation tables"));
        }
        if after.live != before.live {
            return Err(self.fail(format!(
                "a failed call changed the live frames: {} -> {}",
                before.live, after.live
            )));
        }
        Ok(())
    }

    /// Every oracle over the whole state.
    fn check_state(&mut self, op: &Op) -> Result<(), Violation> {
        let snap = self.snapshot()?;
        let space = self.space();
        let r = &space.reference;
        let expected: Vec<Region> = r.regions.values().copied().collect();
        if snap.regions != expected {
            return Err(self.fail(format!("regions {:?}, expected {expected:?}", snap.regions)));
        }
        // Every leaf lies in mapped pages of regions and carries their attributes.
        let mut anon_frames = BTreeSet::new();
        // Runs of translated pages, merged as the (ordered) leaves come.
        let mut mapped: Vec<(u64, u64)> = Vec::new();
        for leaf in &snap.tables.leaves {
            let (ls, le) = (leaf.va, leaf.va + leaf.size);
            if !r.mapped.covers(ls, le) {
                return Err(self.fail(format!(
                    "the tables translate [{ls:#x}, {le:#x}) (descriptor {:#018x}), which should \
                     not be mapped",
                    leaf.desc
                )));
            }
            match mapped.last_mut() {
                Some((_, end)) if *end == ls => *end = le,
                _ => mapped.push((ls, le)),
            }
            let mut covered = 0;
            for region in r.overlapping(ls, le) {
                let s = region.start.as_u64().max(ls);
                covered += region.end.as_u64().min(le) - s;
                check_leaf_bits(leaf.desc, memory_of(region.backing), region.perms).map_err(
                    |e| self.fail(format!("leaf at {ls:#x} for region {region:?}: {e}")),
                )?;
                match phys_of(region, s) {
                    Some(pa) if pa != leaf.pa + (s - ls) => {
                        return Err(self.fail(format!(
                            "{s:#x} translates to {:#x}, its region says {pa:#x}",
                            leaf.pa + (s - ls)
                        )))
                    }
                    Some(_) => {}
                    None => {
                        if leaf.size != PAGE
                            || !(self.mem.base().as_u64()..self.mem.end().as_u64())
                                .contains(&leaf.pa)
                            || !self.mem.is_allocated(PhysAddr(leaf.pa))
                            || !anon_frames.insert(leaf.pa)
                        {
                            return Err(self.fail(format!(
                                "anonymous page {ls:#x} maps {:#x}: not a single, allocated \
                                 arena frame of its own",
                                leaf.pa
                            )));
                        }
                    }
                }
            }
            if covered != leaf.size {
                return Err(self.fail(format!(
                    "the leaf [{ls:#x}, {le:#x}) is not covered by regions"
                )));
            }
        }
        if !mapped.iter().copied().eq(r.mapped.runs()) {
            let missing: Vec<(u64, u64)> = r
                .mapped
                .runs()
                .filter(|run| !mapped.contains(run))
                .take(4)
                .collect();
            return Err(self.fail(format!(
                "the tables map {:#x} bytes, the reference {:#x}; runs not mapped as expected \
                 include {missing:x?}",
                mapped.iter().map(|(s, e)| e - s).sum::<u64>(),
                r.mapped.bytes()
            )));
        }
        let expected_live = self.driver_frames + 1 + snap.tables.tables.len() + anon_frames.len();
        if snap.live != expected_live {
            return Err(self.fail(format!(
                "{} frames live, expected {expected_live} (driver {} + 1 CD + {} tables + {} \
                 anonymous): {}",
                snap.live,
                self.driver_frames,
                snap.tables.tables.len(),
                anon_frames.len(),
                if snap.live > expected_live {
                    "a leak"
                } else {
                    "a frame in use is free"
                }
            )));
        }
        if self.mem.bad_frees() != 0 {
            return Err(self.fail(format!("{} bad frees", self.mem.bad_frees())));
        }
        for va in self.samples(Some(op)) {
            self.probe(va)?;
        }
        self.check_smmu()
    }

    /// The checker found nothing, the driver saw no error; drains the event queue.
    fn check_smmu(&self) -> Result<(), Violation> {
        if let Some(s) = self.model.stale_translations().first() {
            return Err(self.fail(format!("the coherence checker caught: {s}")));
        }
        let smmu = self.smmu();
        smmu.drain_events(|_| {})
            .map_err(|e| self.fail(format!("drain_events: {e}")))?;
        let stats = smmu.stats();
        if stats.sync_timeouts != 0 || stats.command_errors != 0 || stats.queue_full_timeouts != 0 {
            return Err(self.fail(format!("driver errors: {stats:?}")));
        }
        Ok(())
    }

    /* ---------------------------------------------------------------------------------- */
    /* Teardown and the end.                                                                */
    /* ---------------------------------------------------------------------------------- */

    /// Drops the last user of the live space and checks release, teardown and the context's
    /// end.
    fn teardown(&mut self) -> Result<(), Violation> {
        self.summary.teardowns += 1;
        let warm = self.samples(None);
        for &va in &warm {
            let _ = self.dma().touch(VirtAddr(va), AccessKind::Read);
        }
        self.check_smmu()?;
        let space = self.space.take().expect("live space");
        let aspace = Arc::clone(&*space.user);
        drop(space.user);
        let log = std::mem::take(&mut *space.log.lock().unwrap());
        if log != [Seen::Release] {
            return Err(self.fail(format!(
                "teardown: the subscribers saw {log:?}, expected exactly the SMMU's release"
            )));
        }
        if aspace.root().is_some() {
            return Err(self.fail("teardown left the tables"));
        }
        if self.mem.live_frames() != self.driver_frames + 1 {
            return Err(self.fail(format!(
                "after teardown {} frames are live, expected the driver's {} + 1 CD",
                self.mem.live_frames(),
                self.driver_frames
            )));
        }
        // The context is quiesced: every access faults, and quietly.
        for &va in &warm {
            match self.dma().touch(VirtAddr(va), AccessKind::Read) {
                Err(f) if !f.recorded => {}
                other => {
                    return Err(self.fail(format!(
                        "after release the device's access to {va:#x} gave {other:x?}"
                    )))
                }
            }
        }
        let mut events = 0;
        self.smmu()
            .drain_events(|_| events += 1)
            .map_err(|e| self.fail(format!("drain_events: {e}")))?;
        if events != 0 {
            return Err(self.fail(format!("{events} events after release")));
        }
        self.check_smmu()?;
        // What is left of the address space refuses everything.
        let page = PAGE as usize;
        let exited = [
            aspace.munmap(VirtAddr(VA_WINDOW), page),
            aspace.mprotect(
                VirtAddr(VA_WINDOW),
                page,
                Permissions::new(false, false, false),
            ),
            aspace
                .mmap(
                    Placement::Fixed(VirtAddr(VA_WINDOW)),
                    page,
                    Permissions::new(true, false, false),
                    Backing::Anonymous,
                )
                .map(|_| ()),
            aspace.populate(VirtAddr(VA_WINDOW), page),
            aspace.discard(VirtAddr(VA_WINDOW), page).map(|_| ()),
        ];
        if let Some(bad) = exited.iter().find(|r| **r != Err(MmError::Exited)) {
            return Err(self.fail(format!("an exited address space answered {bad:?}")));
        }
        drop(space.handles);
        drop(space.refuser);
        let smmu = self.smmu();
        smmu.detach(SID)
            .map_err(|e| self.fail(format!("detach: {e}")))?;
        smmu.destroy_context(space.ctx)
            .map_err(|e| self.fail(format!("destroy_context: {e}")))?;
        if self.mem.live_frames() != self.driver_frames {
            return Err(self.fail(format!(
                "{} frames live after destroy_context, the driver has {}",
                self.mem.live_frames(),
                self.driver_frames
            )));
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Summary, Violation> {
        self.teardown()?;
        // The SMMU subscribers are gone with their address spaces once their grace periods end.
        shootdown::mm::notifier::synchronize();
        let smmu = self.smmu.take().expect("driver");
        let smmu = Arc::try_unwrap(smmu).map_err(|s| {
            self.fail(format!(
                "{} references to the driver outlive every address space",
                Arc::strong_count(&s) - 1
            ))
        })?;
        smmu.shutdown()
            .map_err(|e| self.fail(format!("shutdown: {e}")))?;
        if self.mem.live_frames() != 0 || self.mem.bad_frees() != 0 {
            return Err(self.fail(format!(
                "after shutdown: {} live frames, {} bad frees",
                self.mem.live_frames(),
                self.mem.bad_frees()
            )));
        }
        if self.model.stats().stale_translations != 0 {
            return Err(self.fail("the checker counted stale translations"));
        }
        Ok(self.summary)
    }
}

struct Snapshot {
    regions: Vec<Region>,
    tables: tables::Dump,
    live: usize,
}

/// A raw physical address moved out of the arena (bit 39 set), keeping its low bits (alignment)
/// and high bits (overflow): a device must never be pointed at the page tables.
fn raw_pa(pa: u64) -> u64 {
    pa | op::PA_WINDOW
}

fn predict_map(
    r: &Reference,
    at: Placement,
    len: u64,
    perms: Permissions,
    backing: Backing,
) -> Result<Expect, MmError> {
    validate(memory_of(backing), perms)?;
    if let Backing::Physical(pa, _) = backing {
        if pa.as_u64() % PAGE != 0 {
            return Err(MmError::Misaligned(pa.as_u64()));
        }
        let end = pa.as_u64().checked_add(len).ok_or(MmError::Overflow {
            start: pa.as_u64(),
            len: len as usize,
        })?;
        // The fuzz platform's PA size is the descriptor's 48 bits (Arm ARM D8.3).
        if end > 1 << 48 {
            return Err(MmError::PhysOutOfRange {
                start: pa,
                len: len as usize,
                bits: 48,
            });
        }
    }
    let start = match at {
        Placement::Fixed(va) => {
            let (s, e) = check_range(va.as_u64(), len)?;
            if let Some(hit) = r.overlapping(s, e).next() {
                return Err(MmError::Overlap(hit.start));
            }
            s
        }
        Placement::Anywhere => {
            check_range(USER_START, len)?;
            r.lowest_gap(len)
                .ok_or(MmError::NoVirtualSpace(len as usize))?
        }
    };
    Ok(Expect::Map(Region {
        start: VirtAddr(start),
        end: VirtAddr(start + len),
        perms,
        backing,
    }))
}

/// A successful weakening (unmap, protect, discard) of `[s, e)`: one start/end pair of
/// `event` announcing at least `[s, e)`, and secondary invalidations over every page whose
/// translation changed (`was`).
fn check_weakening(
    log: &[Seen],
    event: NotifyEvent,
    s: u64,
    e: u64,
    blockable: bool,
    was: &[(u64, u64)],
) -> Result<(), String> {
    let starts: Vec<&Seen> = log
        .iter()
        .filter(|x| matches!(x, Seen::Start { .. }))
        .collect();
    match starts.as_slice() {
        [Seen::Start {
            event: ev,
            start,
            end,
            blockable: b,
        }] if *ev == event && *start <= s && e <= *end && *b == blockable => {}
        _ => {
            return Err(format!(
                "expected one {event:?} invalidation (blockable: {blockable}) announcing \
                 [{s:#x}, {e:#x}), saw {log:?}"
            ))
        }
    }
    let mut invalidated = RangeSet::default();
    for x in log {
        if let Seen::Secondary { start, end } = *x {
            invalidated.insert(start, end);
        }
    }
    for &(a, b) in was {
        if !invalidated.covers(a, b) {
            return Err(format!(
                "[{a:#x}, {b:#x}) had translations but the secondary TLB was not invalidated \
                 over it: {log:?}"
            ));
        }
    }
    Ok(())
}

/// The descriptor bits a leaf of `memory` with `perms` must have (Arm ARM D8.3.2 and D8.4):
/// valid, accessed, not global (user tables are ASID-tagged), the MAIR index of the memory type,
/// AP\[2\] = read-only, AP\[1\] = EL0 access, and execute-never for every level that must not
/// execute: user pages are never executable at EL1, kernel pages never at EL0.
fn check_leaf_bits(desc: u64, memory: MemoryType, perms: Permissions) -> Result<(), String> {
    let want = |cond: bool, bit: u64| if cond { bit } else { 0 };
    let expected = bits::AF
        | bits::NOT_GLOBAL
        | u64::from(memory.attr_index()) << bits::ATTR_INDEX_SHIFT
        | want(perms.user, bits::AP_EL0)
        | want(!perms.write, bits::AP_READ_ONLY)
        | want(!perms.exec || perms.user, bits::PXN)
        | want(!(perms.exec && perms.user), bits::UXN);
    let mask = bits::AF
        | bits::NOT_GLOBAL
        | bits::ATTR_INDEX_MASK
        | bits::AP_EL0
        | bits::AP_READ_ONLY
        | bits::PXN
        | bits::UXN;
    if desc & mask != expected {
        return Err(format!(
            "descriptor {desc:#018x} has attribute bits {:#x}, expected {expected:#x} for {perms} \
             {memory:?}",
            desc & mask
        ));
    }
    Ok(())
}

impl BackingSpec {
    /// True for anonymous memory.
    pub fn is_anonymous(self) -> bool {
        self == BackingSpec::Anonymous
    }
}

impl Place {
    /// True for a fixed placement.
    pub fn is_fixed(self) -> bool {
        matches!(self, Place::Fixed(_))
    }
}
