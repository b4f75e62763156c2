//! Shared virtual addressing (SVA): a device translates the virtual addresses of a CPU address
//! space through that address space's own page tables, and the notifier core keeps the SMMU's
//! IOTLB coherent with every change the CPU side makes.
//!
//! # The binding
//!
//! [`bind`] attaches a stream (a device's StreamID) to an address space ([`MmCore`] plus the
//! root of its page tables). Per (SMMU, address space) there is exactly **one context** (one CD,
//! one ASID, walked by every stream bound to it) and **one list subscription** on the address
//! space, of type [`SvaNotifier<D>`]. The SMMU is named by the type `D` ([`SvaDomain`]), so the
//! notifier core's [`MmuNotifier::get`] — one subscriber per (ops type, address space) — gives
//! one subscription per (SMMU, address space): the first bind creates it (`alloc_notifier`),
//! later binds of other streams share it, each unbind `put`s one reference, and the last put
//! frees it a grace period later (`free_notifier`), as Linux 6.6's `arm_smmu_mmu_notifier_get`
//! / `_put` do.
//!
//! Bind and unbind run under the mmap write lock, as do all page-table changes, so a stream is
//! never attached while an unmap of the same address space is half-way through, and the
//! context is created before any stream can use it.
//!
//! # Invalidation
//!
//! The page-table code calls `arch_invalidate_secondary_tlbs(start, end)` from its TLB flush,
//! after the CPU invalidation and before the unmap returns or a page is freed. The subscription
//! turns it into [`Smmu::invalidate`] (`invalidate_range` without its report) on its context,
//! which follows the planner strategy
//! (per page, range, ASID-wide or automatic) and returns only once the SMMU has completed the
//! CMD_SYNC that follows the TLBIs (SMMUv3 §4.7.3: completion of a CMD_SYNC means every earlier
//! command has completed). A protection change — downgrade *or* upgrade, since an SMMU may
//! cache a read-only entry and keep faulting writes (the 2023 permission-upgrade series) — goes
//! through the same path.
//!
//! # The state machine, and when an invalidation may be skipped
//!
//! ```text
//!   Unused --first bind--> Live --release: quiesce completed--> Released --last unbind--> Gone
//!     |                     |  \--last unbind: context destroyed-----------------------> Gone
//!     |                     \--an SMMU operation failed: quiesce or abort completed--> Broken
//!     \--release (no context was ever made)--> Released
//! ```
//!
//! Bind, unbind, release and failure recovery run one at a time under the subscription's
//! `control` lock; only they change the state. Invalidations read it without that lock, and
//! rely on one invariant:
//!
//! **An invalidation is skipped only in `Released`, `Broken` and `Gone`, and the state becomes
//! one of them only after the SMMU can no longer hold a translation of the context**: the
//! quiesce's `TLBI_NH_ASID` and `CMD_SYNC` completed with walks disabled (`Released`,
//! `Broken`), the SMMU aborts all traffic (`Broken`), or every stream was detached and the
//! ASID invalidated (`Gone`). While release is still quiescing, the state is `Live` and every
//! unmap's invalidation reaches the SMMU: an unmap that does not pin the users count (the OOM
//! reaper's) may free its frames the moment it returns. An SMMU that answers "no such context"
//! during release or recovery has nothing left to invalidate: that counts as done. One that
//! answers "disabled" is being switched off by some CPU, but refuses commands from before
//! translation is off: SVA completes the switch itself (idempotent) before it counts it as
//! done (`sva_races.rs`, the abort of another address space).
//!
//! A bind links its subscription and then checks that the address space still has users
//! ([`MmCore::still_has_users`]): either the last `mmput` walks the list after the link and
//! releases this subscription too (after the bind, or before it, which then finds `Released`),
//! or the bind sees no users and gives up. No context is made that no release will reach.
//!
//! # Failure
//!
//! The SMMU can stop answering (a CMD_SYNC times out, the command queue stays full). An unmap
//! must still never return while a device can use the old translation, and must never hang. So
//! the first failed SMMU operation of a context is reported once and the context is quiesced
//! (below); if even that fails, the whole SMMU is switched to abort all traffic
//! ([`Smmu::abort_all_traffic`], no command needed). Only then is the context marked
//! **broken**, and later invalidations of it are skipped. Other CPUs failing at the same time
//! wait for that recovery (bounded by the driver's timeouts) before they return.
//!
//! # Release
//!
//! When the address space is torn down while still bound, the notifier core calls `release`
//! before any page or table is freed. It quiesces the context (Linux 6.11's
//! `arm_smmu_mm_release`): the CD stays valid, so in-flight DMA does not raise C_BAD_CD storms,
//! but TTB0 walks are disabled (EPD0 = 1) and fault recording is off (R = 0), and the ASID is
//! invalidated: the device's accesses fault quietly from then on, and no walk can reach the
//! freed tables. The streams stay attached until their owners unbind.
//!
//! # Access flag
//!
//! The CD leaves hardware access-flag updates off (HA = 0, AFFD = 0: §5.4, "CD.HA"): a device
//! access to a page whose access flag was cleared (`clear_flush_young`) takes an Access-flag
//! fault (F_ACCESS: the StreamID and the VA) and moves no data. Whoever polls the SMMU's events
//! does it through [`Sva::handle_events`], which answers each F_ACCESS of a bound stream by
//! making the page young in that stream's address space ([`MmCore::mark_young`], reaching
//! `AddressSpace::mark_young` as the CPU's exception handler does); the transaction itself was
//! terminated (no stall, no PRI), so the device's driver re-issues it (`events.rs`). An event
//! naming a stream not bound here is reported, not answered. No data reaches an aged page
//! unseen. Host tests: `sva_bind::a_device_access_to_an_aged_page_goes_through_once_the_event_is_handled`
//! and its twin with the answer off; KTAP: `sva.device_access_after_ageing_*`. Hardware updates
//! (CD.HA with SMMU_IDR0.HTTU, TCR_EL1.HA with FEAT_HAFDBS) stay off: neither QEMU's SMMU, the
//! model nor the Pi's Cortex-A72 has them, so every board runs the same path.
//!
//! # Unbind
//!
//! [`Bond::unbind`] detaches the stream (its STE becomes invalid: C_BAD_STE, default deny);
//! the last stream of a context also destroys the context (TLBI by ASID, then CD and ASID are
//! freed), then the subscription reference is put.

mod events;

pub use events::{AccessFaultError, HandledEvents};

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;

use crate::iommu::backend::{Clock, SmmuBackend};
use crate::iommu::driver::{
    ContextId, ContextParams, EventDrain, InvalidationReport, Smmu, SmmuError,
};
use crate::iommu::spec::event::EventRecord;
use crate::mm::notifier::{
    InvalidArgument, MmCore, MmuNotifier, MmuNotifierOps, NotifierError, OpSet,
};
use crate::mm::{PhysAddr, VirtAddr};
use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use crate::sync::{SpinLock, SpinLockGuard};

/// What SVA needs from an SMMU driver. [`Smmu`] implements it for every backend; SVA holds it
/// as a trait object so that one [`Sva`] type serves the MMIO SMMU and the software model.
pub trait SvaIommu: Send + Sync {
    /// See [`Smmu::create_context`].
    fn create_context(&self, params: ContextParams) -> Result<ContextId, SmmuError>;
    /// See [`Smmu::destroy_context`].
    fn destroy_context(&self, ctx: ContextId) -> Result<(), SmmuError>;
    /// See [`Smmu::context_asid`].
    fn context_asid(&self, ctx: ContextId) -> Result<u16, SmmuError>;
    /// See [`Smmu::attach`].
    fn attach(&self, sid: u32, ctx: ContextId) -> Result<(), SmmuError>;
    /// See [`Smmu::detach`].
    fn detach(&self, sid: u32) -> Result<(), SmmuError>;
    /// See [`Smmu::invalidate_range`].
    fn invalidate_range(
        &self,
        ctx: ContextId,
        start: VirtAddr,
        end: VirtAddr,
    ) -> Result<InvalidationReport, SmmuError>;
    /// See [`Smmu::invalidate`]: the same without the report, for the unmap path.
    fn invalidate(&self, ctx: ContextId, start: VirtAddr, end: VirtAddr) -> Result<(), SmmuError> {
        self.invalidate_range(ctx, start, end).map(|_| ())
    }
    /// See [`Smmu::quiesce`].
    fn quiesce(&self, ctx: ContextId) -> Result<(), SmmuError>;
    /// See [`Smmu::abort_all_traffic`].
    fn abort_all_traffic(&self) -> Result<(), SmmuError>;
    /// See [`Smmu::drain_events`].
    fn drain_events(&self, sink: &mut dyn FnMut(&EventRecord)) -> Result<EventDrain, SmmuError>;
}

impl<B: SmmuBackend + Send, C: Clock + Send> SvaIommu for Smmu<'_, B, C> {
    fn create_context(&self, params: ContextParams) -> Result<ContextId, SmmuError> {
        Smmu::create_context(self, params)
    }
    fn destroy_context(&self, ctx: ContextId) -> Result<(), SmmuError> {
        Smmu::destroy_context(self, ctx)
    }
    fn context_asid(&self, ctx: ContextId) -> Result<u16, SmmuError> {
        Smmu::context_asid(self, ctx)
    }
    fn attach(&self, sid: u32, ctx: ContextId) -> Result<(), SmmuError> {
        Smmu::attach(self, sid, ctx)
    }
    fn detach(&self, sid: u32) -> Result<(), SmmuError> {
        Smmu::detach(self, sid)
    }
    fn invalidate_range(
        &self,
        ctx: ContextId,
        start: VirtAddr,
        end: VirtAddr,
    ) -> Result<InvalidationReport, SmmuError> {
        Smmu::invalidate_range(self, ctx, start, end)
    }
    fn invalidate(&self, ctx: ContextId, start: VirtAddr, end: VirtAddr) -> Result<(), SmmuError> {
        Smmu::invalidate(self, ctx, start, end)
    }
    fn quiesce(&self, ctx: ContextId) -> Result<(), SmmuError> {
        Smmu::quiesce(self, ctx)
    }
    fn abort_all_traffic(&self) -> Result<(), SmmuError> {
        Smmu::abort_all_traffic(self)
    }
    fn drain_events(&self, sink: &mut dyn FnMut(&EventRecord)) -> Result<EventDrain, SmmuError> {
        Smmu::drain_events(self, sink)
    }
}

/// Names one SMMU at the type level: [`SvaNotifier<D>`] is the subscription type of that SMMU,
/// so the notifier core keeps one subscription per (SMMU, address space).
pub trait SvaDomain: Send + Sync + 'static {
    /// The SMMU's SVA state, or `None` if this SMMU does not exist (on this board).
    fn sva() -> Option<&'static Sva>;
}

/// Where a context is in its life (see the module's state machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ContextState {
    /// No stream was bound yet: no context exists, nothing can be cached.
    Unused,
    /// Translating; invalidations reach the SMMU.
    Live,
    /// The address space was torn down and the context quiesced by `release`.
    Released,
    /// An SMMU operation failed; the context was quiesced, or the whole SMMU now aborts all
    /// traffic.
    Broken,
    /// The last stream was unbound and the context destroyed.
    Gone,
}

impl ContextState {
    const fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Self::Unused,
            1 => Self::Live,
            2 => Self::Released,
            3 => Self::Broken,
            _ => Self::Gone,
        }
    }

    const fn raw(self) -> u32 {
        self as u32
    }

    /// True once the SMMU can hold no translation of the context: invalidations are skipped.
    pub const fn is_quiet(self) -> bool {
        matches!(self, Self::Released | Self::Broken | Self::Gone)
    }
}

/// Why a bind or unbind failed. A failed bind leaves nothing behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvaError {
    /// The domain has no SMMU (on this board).
    NoSmmu,
    /// The notifier core refused the subscription (e.g. the address space has no user left).
    Notifier(NotifierError),
    /// The SMMU driver failed.
    Smmu(SmmuError),
    /// The address space is bound to this SMMU with another page-table root.
    RootMismatch {
        bound: PhysAddr,
        requested: PhysAddr,
    },
    /// The address space is bound to this SMMU with another MAIR.
    MairMismatch { bound: u64, requested: u64 },
    /// The address space's context on this SMMU cannot take new streams.
    ContextDead(ContextState),
    /// The subscription found belongs to another [`Sva`] of the same domain type (a domain was
    /// re-pointed while still in use).
    DomainMismatch,
    /// The stream is not bound through this subscription.
    NotBound(u32),
}

impl fmt::Display for SvaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSmmu => f.write_str("no SMMU for SVA on this board"),
            Self::Notifier(e) => write!(f, "SVA notifier: {e}"),
            Self::Smmu(e) => write!(f, "SMMU: {e}"),
            Self::RootMismatch { bound, requested } => write!(
                f,
                "address space already bound with page-table root {bound}, not {requested}"
            ),
            Self::MairMismatch { bound, requested } => write!(
                f,
                "address space already bound with MAIR {bound:#x}, not {requested:#x}"
            ),
            Self::ContextDead(s) => write!(f, "the address space's SMMU context is {s:?}"),
            Self::DomainMismatch => f.write_str("SVA subscription belongs to another SMMU"),
            Self::NotBound(sid) => write!(f, "StreamID {sid:#x} is not bound"),
        }
    }
}

impl From<SmmuError> for SvaError {
    fn from(e: SmmuError) -> Self {
        Self::Smmu(e)
    }
}

/// Debug-only knobs that break SVA on purpose, so tests can show what they catch. Off by
/// default. (Skipping the invalidation itself is the driver's
/// [`crate::iommu::driver::DebugKnobs::skip_invalidation`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SvaDebugKnobs {
    /// `release` leaves the context translating (no quiesce).
    pub skip_release_quiesce: bool,
    /// `release` marks the context released *before* its quiesce completes, so invalidations
    /// racing the quiesce are skipped while the IOTLB still holds their pages (issue 20's race).
    pub release_marks_before_quiesce: bool,
    /// [`Sva::handle_events`] leaves F_ACCESS unanswered: an aged page stays faulting for
    /// every device (issue 22's item 4).
    pub skip_access_fault_answer: bool,
}

/// Counters of one SMMU's SVA layer (a snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SvaStats {
    pub binds: u64,
    pub unbinds: u64,
    pub contexts_created: u64,
    pub contexts_destroyed: u64,
    /// `arch_invalidate_secondary_tlbs` calls sent to the SMMU.
    pub invalidations: u64,
    /// Calls skipped because the context was released, broken or gone.
    pub invalidations_skipped: u64,
    pub releases: u64,
    /// SMMU operations that failed (the first of a context that was not yet quiet marks it
    /// broken; later ones are only counted).
    pub failures: u64,
    /// Times the whole SMMU was switched to abort all traffic.
    pub aborts: u64,
    /// Subscriptions freed after their grace period.
    pub notifiers_freed: u64,
    /// F_ACCESS events answered: the page is young again.
    pub access_faults_answered: u64,
    /// F_ACCESS events that could not be answered ([`AccessFaultError`]).
    pub access_faults_unanswered: u64,
}

struct Counters {
    binds: AtomicU64,
    unbinds: AtomicU64,
    contexts_created: AtomicU64,
    contexts_destroyed: AtomicU64,
    invalidations: AtomicU64,
    invalidations_skipped: AtomicU64,
    releases: AtomicU64,
    failures: AtomicU64,
    aborts: AtomicU64,
    notifiers_freed: AtomicU64,
    access_faults_answered: AtomicU64,
    access_faults_unanswered: AtomicU64,
}

impl Counters {
    fn new() -> Self {
        let zero = || AtomicU64::new(0);
        Self {
            binds: zero(),
            unbinds: zero(),
            contexts_created: zero(),
            contexts_destroyed: zero(),
            invalidations: zero(),
            invalidations_skipped: zero(),
            releases: zero(),
            failures: zero(),
            aborts: zero(),
            notifiers_freed: zero(),
            access_faults_answered: zero(),
            access_faults_unanswered: zero(),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One SMMU's SVA layer.
pub struct Sva {
    iommu: &'static dyn SvaIommu,
    name: &'static str,
    counters: Counters,
    /// The address space each bound stream translates through (for answering its faults).
    /// Changed under a subscription's `control` lock; a leaf lock.
    streams: SpinLock<BTreeMap<u32, Arc<MmCore>>>,
    /// Records drained when a stream was detached (its old binding's), handed out first by
    /// the next `handle_events`. Held across each of SVA's drains (before the event queue's
    /// lock; the sink takes `streams`): the driver hands records to the sink after dropping
    /// the queue's lock, so without it a detach's drain could return, and the stream be bound
    /// again, while another drain still had to look up a record of the old binding.
    detached_records: SpinLock<events::Drained>,
    skip_release_quiesce: AtomicBool,
    release_marks_before_quiesce: AtomicBool,
    skip_access_fault_answer: AtomicBool,
}

impl Sva {
    /// SVA over `iommu`; `name` appears in reports.
    pub fn new(iommu: &'static dyn SvaIommu, name: &'static str) -> Self {
        Self {
            iommu,
            name,
            counters: Counters::new(),
            streams: SpinLock::new(BTreeMap::new()),
            detached_records: SpinLock::new(events::Drained::default()),
            skip_release_quiesce: AtomicBool::new(false),
            release_marks_before_quiesce: AtomicBool::new(false),
            skip_access_fault_answer: AtomicBool::new(false),
        }
    }

    /// The SMMU.
    pub fn iommu(&self) -> &'static dyn SvaIommu {
        self.iommu
    }

    /// The name used in reports.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Counters so far.
    pub fn stats(&self) -> SvaStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SvaStats {
            binds: get(&c.binds),
            unbinds: get(&c.unbinds),
            contexts_created: get(&c.contexts_created),
            contexts_destroyed: get(&c.contexts_destroyed),
            invalidations: get(&c.invalidations),
            invalidations_skipped: get(&c.invalidations_skipped),
            releases: get(&c.releases),
            failures: get(&c.failures),
            aborts: get(&c.aborts),
            notifiers_freed: get(&c.notifiers_freed),
            access_faults_answered: get(&c.access_faults_answered),
            access_faults_unanswered: get(&c.access_faults_unanswered),
        }
    }

    /// Debug-only: sets knobs that deliberately break SVA.
    pub fn set_debug_knobs(&self, knobs: SvaDebugKnobs) {
        self.skip_release_quiesce
            .store(knobs.skip_release_quiesce, Ordering::Relaxed);
        self.release_marks_before_quiesce
            .store(knobs.release_marks_before_quiesce, Ordering::Relaxed);
        self.skip_access_fault_answer
            .store(knobs.skip_access_fault_answer, Ordering::Relaxed);
    }

    /// The debug knobs in force.
    pub fn debug_knobs(&self) -> SvaDebugKnobs {
        SvaDebugKnobs {
            skip_release_quiesce: self.skip_release_quiesce.load(Ordering::Relaxed),
            release_marks_before_quiesce: self
                .release_marks_before_quiesce
                .load(Ordering::Relaxed),
            skip_access_fault_answer: self.skip_access_fault_answer.load(Ordering::Relaxed),
        }
    }
}

/// The streams bound through one subscription, and what their context was made from.
struct Binding {
    root: PhysAddr,
    mair: u64,
    sids: Vec<u32>,
}

/// Proof that the subscription's `control` lock is held.
type Control<'a> = SpinLockGuard<'a, Binding>;

/// The subscription of one address space on the SMMU named by `D`: owns the context.
pub struct SvaNotifier<D: SvaDomain> {
    sva: &'static Sva,
    /// Serialises bind, unbind, release and failure recovery; the only writers of `state`.
    control: SpinLock<Binding>,
    /// The context and its ASID: set once, under `control`, before `state` becomes `Live`.
    ctx: spin::Once<(ContextId, u16)>,
    /// A [`ContextState`]; read without the lock by invalidations.
    state: AtomicU32,
    _domain: PhantomData<fn() -> D>,
}

impl<D: SvaDomain> SvaNotifier<D> {
    /// The context's state.
    pub fn state(&self) -> ContextState {
        ContextState::from_raw(self.state.load(Ordering::Acquire))
    }

    /// Publishes a new state. Release ordering: whoever reads `Live` also sees `ctx`, and
    /// whoever reads a quiet state saw it written after the quiesce that allows it returned.
    fn set_state(&self, _control: &Control<'_>, state: ContextState) {
        self.state.store(state.raw(), Ordering::Release);
    }

    /// The context and its ASID, once a stream has been bound.
    pub fn context(&self) -> Option<(ContextId, u16)> {
        self.ctx.get().copied()
    }

    /// The streams bound through this subscription.
    pub fn streams(&self) -> Vec<u32> {
        self.control.lock().sids.clone()
    }

    /// Adds stream `sid` of the address space `mm`, creating the context on first use. Runs
    /// under the mmap write lock.
    fn attach(&self, sid: u32, mm: &MmCore, root: PhysAddr, mair: u64) -> Result<(), SvaError> {
        let mut control = self.control.lock();
        let ctx = match self.state() {
            ContextState::Unused => self.create(&mut control, root, mair)?,
            ContextState::Live => {
                if control.root != root {
                    return Err(SvaError::RootMismatch {
                        bound: control.root,
                        requested: root,
                    });
                }
                if control.mair != mair {
                    return Err(SvaError::MairMismatch {
                        bound: control.mair,
                        requested: mair,
                    });
                }
                self.live_context()
            }
            s => return Err(SvaError::ContextDead(s)),
        };
        if let Err(e) = self.sva.iommu.attach(sid, ctx) {
            if control.sids.is_empty() {
                // The context was made for this stream alone: nothing may outlive the failure
                // (if even that fails, the attach's own error is the one to report).
                let _ = self.destroy(&control, ctx);
            }
            return Err(e.into());
        }
        control.sids.push(sid);
        self.sva.note_bound(sid, mm.mmgrab());
        bump(&self.sva.counters.binds);
        Ok(())
    }

    /// Makes the context (CD and ASID) and publishes it: `Unused` becomes `Live`.
    fn create(
        &self,
        control: &mut Control<'_>,
        root: PhysAddr,
        mair: u64,
    ) -> Result<ContextId, SvaError> {
        let iommu = self.sva.iommu;
        let ctx = iommu.create_context(ContextParams { root, mair })?;
        let asid = match iommu.context_asid(ctx) {
            Ok(a) => a,
            Err(e) => {
                let _ = iommu.destroy_context(ctx);
                return Err(e.into());
            }
        };
        self.ctx.call_once(|| (ctx, asid));
        control.root = root;
        control.mair = mair;
        bump(&self.sva.counters.contexts_created);
        self.set_state(control, ContextState::Live);
        Ok(ctx)
    }

    /// The context of a subscription past `Unused`.
    fn live_context(&self) -> ContextId {
        self.ctx
            .get()
            .expect("a context exists in every state after Unused")
            .0
    }

    /// Removes stream `sid`; the last one destroys the context. Runs under the mmap write lock.
    fn detach(&self, sid: u32) -> Result<(), SvaError> {
        let mut control = self.control.lock();
        let (Some(&(ctx, _)), Some(pos)) = (
            self.ctx.get(),
            control.sids.iter().position(|s| *s == sid),
        ) else {
            return Err(SvaError::NotBound(sid));
        };
        control.sids.remove(pos);
        // From here its F_ACCESS events name an unknown stream: the STE goes next.
        self.sva.note_unbound(sid);
        bump(&self.sva.counters.unbinds);
        if let Err(e) = self.sva.iommu.detach(sid) {
            // The STE may still point at our CD: keep the context (and its CD) and make it
            // harmless instead.
            self.recover(&control, "detaching a stream", ctx, e);
            return Err(e.into());
        }
        // The STE is gone and synced: every record of the old binding is in the queue now.
        // Taken out before the stream can be bound again, they cannot be answered there.
        self.sva.set_aside_detached_records();
        if control.sids.is_empty() {
            self.destroy(&control, ctx)?;
        }
        Ok(())
    }

    /// Destroys a context no stream uses any more; `Gone` once the SMMU invalidated its ASID.
    /// If the SMMU refuses, the context is made harmless and destroyed once more (a quiesced
    /// context without streams still can be), so its CD and ASID do not leak; the error is
    /// returned only if that fails too.
    fn destroy(&self, control: &Control<'_>, ctx: ContextId) -> Result<(), SmmuError> {
        let first = match self.sva.iommu.destroy_context(ctx) {
            Ok(()) => {
                bump(&self.sva.counters.contexts_destroyed);
                self.set_state(control, ContextState::Gone);
                return Ok(());
            }
            Err(SmmuError::NoSuchContext(_)) => {
                self.set_state(control, ContextState::Gone);
                return Ok(());
            }
            // The CD stays allocated: a switched-off SMMU may still read it.
            Err(SmmuError::Disabled) => {
                self.wait_until_switched_off();
                self.set_state(control, ContextState::Gone);
                return Ok(());
            }
            Err(e) => e,
        };
        self.recover(control, "destroying a context", ctx, first);
        match self.sva.iommu.destroy_context(ctx) {
            Ok(()) => {
                bump(&self.sva.counters.contexts_destroyed);
                self.set_state(control, ContextState::Gone);
                Ok(())
            }
            Err(_) => Err(first),
        }
    }

    /// The SMMU answered "disabled": some CPU is switching it off to abort all traffic, and the
    /// driver refuses commands from the moment it starts, *before* translation is off. Doing
    /// the same switch here (idempotent) returns only once SMMU_CR0 says translation is off, so
    /// from then on nothing of any context can be used.
    fn wait_until_switched_off(&self) {
        // An SMMU that ignores even this cannot be helped; the caller reports what it has.
        let _ = self.sva.iommu.abort_all_traffic();
    }

    /// Called by an invalidation that failed: recovers under the lock, or waits for whoever is
    /// recovering (or releasing) to finish.
    fn fail(&self, what: &str, ctx: ContextId, e: SmmuError) {
        let control = self.control.lock();
        self.recover(&control, what, ctx, e);
    }

    /// Reports a failure and makes sure no translation the context may have cached can be used
    /// any more before returning: quiesce the context, or, if the SMMU does not even complete
    /// that, switch the SMMU to abort everything. Only then is the context `Broken`.
    fn recover(&self, control: &Control<'_>, what: &str, ctx: ContextId, e: SmmuError) {
        bump(&self.sva.counters.failures);
        if self.state().is_quiet() {
            // Quiesced, aborted or destroyed already: nothing of the context is cached.
            log::warn!(
                "sva: {what} failed on {} (context {}, already {:?}): {e}",
                self.sva.name,
                ctx.index(),
                self.state()
            );
            return;
        }
        let asid = self.ctx.get().map_or(0, |c| c.1);
        log::error!(
            "sva: {what} failed on {} (context {}, ASID {asid}): {e}; quiescing the context",
            self.sva.name,
            ctx.index()
        );
        match self.sva.iommu.quiesce(ctx) {
            Ok(()) | Err(SmmuError::NoSuchContext(_)) => {}
            Err(SmmuError::Disabled) => self.wait_until_switched_off(),
            Err(e2) => {
                log::error!(
                    "sva: quiescing failed on {} too ({e2}): all its traffic now aborts",
                    self.sva.name
                );
                bump(&self.sva.counters.aborts);
                // Nothing more can be done if even the register write is ignored.
                let _ = self.sva.iommu.abort_all_traffic();
            }
        }
        self.set_state(control, ContextState::Broken);
    }
}

impl<D: SvaDomain> MmuNotifierOps for SvaNotifier<D> {
    fn implemented(&self) -> OpSet {
        OpSet::ARCH_INVALIDATE_SECONDARY_TLBS | OpSet::RELEASE
    }

    /// Invalidates `[start, end)` in the context and waits for the SMMU to complete it.
    fn arch_invalidate_secondary_tlbs(&self, _mm: &MmCore, start: u64, end: u64) {
        match self.state() {
            ContextState::Live => {}
            // No context was ever made: nothing can be cached.
            ContextState::Unused => return,
            // The invariant (module docs): nothing of the context can be cached any more.
            ContextState::Released | ContextState::Broken | ContextState::Gone => {
                bump(&self.sva.counters.invalidations_skipped);
                return;
            }
        }
        let ctx = self.live_context();
        bump(&self.sva.counters.invalidations);
        match self
            .sva
            .iommu
            .invalidate(ctx, VirtAddr(start), VirtAddr(end))
        {
            Ok(()) => {}
            // Destroyed after the state check: its streams were detached and its ASID
            // invalidated on the way out.
            Err(SmmuError::NoSuchContext(_)) => {}
            Err(e) => self.fail("an IOTLB invalidation", ctx, e),
        }
    }

    /// The address space is going away: quiesce the context before its pages are freed. The
    /// state stays `Live` until the quiesce completed (the module's invariant).
    fn release(&self, _mm: &MmCore) {
        let control = self.control.lock();
        match self.state() {
            ContextState::Live => {}
            ContextState::Unused => {
                bump(&self.sva.counters.releases);
                self.set_state(&control, ContextState::Released);
                return;
            }
            // Already released, broken or gone (release may run twice).
            _ => return,
        }
        bump(&self.sva.counters.releases);
        let ctx = self.live_context();
        let knobs = self.sva.debug_knobs();
        if knobs.skip_release_quiesce {
            self.set_state(&control, ContextState::Released);
            return;
        }
        if knobs.release_marks_before_quiesce {
            self.set_state(&control, ContextState::Released);
            crate::sync::model_switch_point();
        }
        match self.sva.iommu.quiesce(ctx) {
            Ok(()) | Err(SmmuError::NoSuchContext(_)) => {
                self.set_state(&control, ContextState::Released);
            }
            Err(SmmuError::Disabled) => {
                self.wait_until_switched_off();
                self.set_state(&control, ContextState::Released);
            }
            Err(e) => self.recover(&control, "quiescing on release", ctx, e),
        }
    }

    fn alloc_notifier(_mm: &MmCore) -> Result<Arc<Self>, NotifierError> {
        // `bind` checked the domain first; a domain without SMMU has nothing to subscribe.
        let sva = D::sva().ok_or(NotifierError::from(InvalidArgument::NoAllocNotifier))?;
        Ok(Arc::new(Self {
            sva,
            control: SpinLock::new(Binding {
                root: PhysAddr(0),
                mair: 0,
                sids: Vec::new(),
            }),
            ctx: spin::Once::new(),
            state: AtomicU32::new(ContextState::Unused.raw()),
            _domain: PhantomData,
        }))
    }

    fn free_notifier(&self) {
        bump(&self.sva.counters.notifiers_freed);
    }
}

/// A stream bound to an address space on the SMMU `D`. Unbind with [`Bond::unbind`]; dropping
/// a bond unbinds too (reporting failures to the log). Both take the address space's mmap
/// write lock: never unbind or drop a bond while holding it.
#[must_use = "dropping a bond unbinds the stream at once"]
pub struct Bond<D: SvaDomain> {
    sid: u32,
    sub: Option<Arc<MmuNotifier>>,
    _domain: PhantomData<fn() -> D>,
}

/// Binds stream `sid` of the SMMU `D` to the address space `mm` whose page-table root is `root`
/// (the CPU's TTBR0 table) and whose attribute indexes refer to `mair` (the CPU's MAIR_EL1).
///
/// The first bind of `mm` on this SMMU creates its context and subscription; later binds of
/// other streams share them (and must name the same root). Takes the mmap write lock. On error
/// nothing is left attached, created or subscribed.
pub fn bind<D: SvaDomain>(
    sid: u32,
    mm: &MmCore,
    root: PhysAddr,
    mair: u64,
) -> Result<Bond<D>, SvaError> {
    let sva = D::sva().ok_or(SvaError::NoSmmu)?;
    let lock = mm.mmap_write();
    let sub = MmuNotifier::get_locked::<SvaNotifier<D>>(&lock).map_err(SvaError::Notifier)?;
    let attached = match sub.ops_as::<SvaNotifier<D>>() {
        // Linked now: a last `mmput` from here on releases it (module docs, state machine).
        _ if !mm.still_has_users() => Err(SvaError::Notifier(
            InvalidArgument::NoLiveUsers.into(),
        )),
        Some(ops) if core::ptr::eq(ops.sva, sva) => ops.attach(sid, mm, root, mair),
        _ => Err(SvaError::DomainMismatch),
    };
    match attached {
        Ok(()) => Ok(Bond {
            sid,
            sub: Some(sub),
            _domain: PhantomData,
        }),
        Err(e) => {
            sub.put();
            Err(e)
        }
    }
}

impl<D: SvaDomain> Bond<D> {
    /// The bound StreamID.
    pub fn sid(&self) -> u32 {
        self.sid
    }

    fn notifier(&self) -> Option<&SvaNotifier<D>> {
        self.sub.as_ref()?.ops_as::<SvaNotifier<D>>()
    }

    /// The context's ASID.
    pub fn asid(&self) -> Option<u16> {
        self.notifier()?.context().map(|c| c.1)
    }

    /// The context.
    pub fn context(&self) -> Option<ContextId> {
        self.notifier()?.context().map(|c| c.0)
    }

    /// The context's state (e.g. [`ContextState::Released`] after teardown).
    pub fn state(&self) -> ContextState {
        self.notifier().map_or(ContextState::Gone, |n| n.state())
    }

    /// The subscription this bond holds a reference of.
    pub fn subscription(&self) -> Option<&Arc<MmuNotifier>> {
        self.sub.as_ref()
    }

    /// Detaches the stream (traffic aborts, C_BAD_STE), destroys the context if it was the
    /// last stream, and puts the subscription. The subscription is freed after a grace period.
    /// An SMMU failure is reported, and the context is left quiesced (or the SMMU aborting).
    pub fn unbind(mut self) -> Result<(), SvaError> {
        self.unbind_now()
    }

    fn unbind_now(&mut self) -> Result<(), SvaError> {
        let Some(sub) = self.sub.take() else {
            return Ok(());
        };
        let mm = sub.mm().clone();
        let lock = mm.mmap_write();
        let result = match sub.ops_as::<SvaNotifier<D>>() {
            Some(ops) => ops.detach(self.sid),
            None => Err(SvaError::DomainMismatch),
        };
        // Under the lock, so a concurrent bind never finds a subscription whose context is gone.
        sub.put();
        drop(lock);
        result
    }
}

impl<D: SvaDomain> Drop for Bond<D> {
    fn drop(&mut self) {
        if let Err(e) = self.unbind_now() {
            log::error!("sva: unbinding StreamID {:#x} failed: {e}", self.sid);
        }
    }
}

impl<D: SvaDomain> fmt::Debug for Bond<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bond")
            .field("sid", &self.sid)
            .field("asid", &self.asid())
            .field("state", &self.state())
            .finish()
    }
}
