//! CMD_SYNC coalescing: one CMD_SYNC completes the commands of every CPU that queued them
//! before it, so a CPU whose commands are already followed by another CPU's CMD_SYNC waits for
//! that one instead of queueing its own. Linux gives every caller its own CMD_SYNC.
//!
//! # The protocol
//!
//! A CMD_SYNC completes once every command before it in the queue has completed (§4.7.3), and
//! the SMMU consumes the queue in order, so SMMU_CMDQ_CONS passing a CMD_SYNC's slot means
//! that CMD_SYNC has completed (what the driver always waited for).
//!
//! **Positions.** PROD and CONS wrap: an index and a wrap bit (§3.5). The [`SyncLedger`]
//! counts entries in positions that never wrap: `written` (entries published, ever) and
//! `consumed` (the position CONS designated at its last read). A CONS read becomes a position
//! as `written - used(PROD, CONS)`: exact because both are read under the queue lock, where
//! PROD and `written` describe the same entries, and the driver never publishes into slots the
//! SMMU has not consumed (it waits for room), so `used` is in `0..=entries` and the wrap bit
//! tells full from empty.
//!
//! **A caller** with commands C, all under the queue lock unless said otherwise:
//!
//! ```text
//!   publish C at [start, end)
//!   alone (no other CPU inside submit):  publish CMD_SYNC at s = end, same PROD write
//!   else: unlock, yield the CPU, lock        -- the others publish their commands meanwhile
//!         s = the newest CMD_SYNC if it is at or after end         (shared)
//!             else publish one at s = written                      (own)
//!   until consumed > s: poll CONS (GERROR first), unlock, relax, lock
//!   fail if s was given up on (below); fail if one of C was refused (below)
//! ```
//!
//! **Why a caller never returns early.** Positions are handed out under the lock in queue
//! order, and the newest CMD_SYNC is at or after `end` only if it was written after the last
//! of C: when CONS passes it, all of C has completed. Adopting a CMD_SYNC written *before*
//! `end` (the `adopt_earlier_sync` debug knob, the loom twin) lets a CPU return while its own
//! commands may still be pending. `consumed` only grows and is only computed from a CONS read
//! made under the lock (the read that saw completion is followed by an acquire fence, so what
//! the SMMU wrote before completing is visible). Whichever CPU polls, every waiter sees the
//! same `consumed`, and a waiter decides under the lock, so it cannot mix a stale position
//! with a newer CONS.
//!
//! **Why sharing happens.** Between a caller's commands and its CMD_SYNC the lock is free, so
//! CPUs queued on it publish their commands; the first of them back for the CMD_SYNC writes
//! one after all of them, and the rest find it. The yield lets CPUs that share one core run
//! at that point (on a core of its own it is a no-op; QEMU's round-robin TCG, which runs one
//! vCPU at a time, switches there). A caller is *alone* when no other CPU is inside
//! `submit` and none submitted lately ([`Activity`]); alone it keeps Linux's shape: one lock
//! hold, one PROD write, one CMD_SYNC. Whether a caller thinks it is alone only chooses
//! between two paths that are both correct, so that guess is not part of the argument.
//!
//! **Timeouts.** Each waiter has its own deadline. The first to reach it gives up its CMD_SYNC
//! and every earlier one not yet consumed ([`SyncLedger::give_up`]): every waiter of those
//! fails with [`SmmuError::SyncTimeout`], even if CONS moves later. A CONS that moves after a
//! timeout was declared may be a queue reset, not a completion, and a caller that reported a
//! failure has already handed the SMMU to recovery (SVA quiesces the context). A caller that
//! comes later has commands after the given-up CMD_SYNC, so it never adopts it: its own
//! CMD_SYNC must complete by itself.
//!
//! **Command errors.** The SMMU stops at a refused command (GERROR.CMDQ_ERR, CMDQ_CONS.ERR):
//! whoever polls repairs the slot (a CMD_SYNC in place of an illegal command), acknowledges,
//! and records the failure at its position; the caller that published that position reports
//! [`SmmuError::CommandFailed`] once its CMD_SYNC completed, as before. A CMD_SYNC written
//! apart from any caller's commands (the shared path) is nobody's position: its refusal fails
//! no caller, and loses nothing, since the CMD_SYNC put in its place completes the same
//! commands. Records are dropped when no caller is between publishing and returning (none can
//! own them).

use alloc::vec::Vec;

use super::{CommandFailure, SmmuError};
use crate::iommu::spec::command::{Command, CommandCounts, CommandKind};
use crate::iommu::spec::queue::{QueueGeometry, QueuePtr};
use crate::sync::atomic::{fence, AtomicU32, Ordering};
use crate::sync::{SpinLock, SpinLockGuard};

/// Where a CMD_SYNC stands for its waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    Pending,
    Completed,
    /// A waiter timed out on it or on a later one before CONS passed it.
    GivenUp,
}

/// The command queue in never-wrapping positions: what was published, consumed, which
/// CMD_SYNC is newest, which were given up on, which commands were refused. Lives under the
/// queue lock.
#[derive(Debug, Default)]
pub struct SyncLedger {
    written: u64,
    consumed: u64,
    newest_sync: Option<u64>,
    /// CMD_SYNCs at positions in `first..=last` were given up on.
    given_up: Option<(u64, u64)>,
    refused: Vec<(u64, CommandFailure)>,
    /// Callers between their first publish and their return.
    open: u32,
}

impl SyncLedger {
    pub const fn new() -> Self {
        Self {
            written: 0,
            consumed: 0,
            newest_sync: None,
            given_up: None,
            refused: Vec::new(),
            open: 0,
        }
    }

    /// Entries published so far: the position of the next one.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The position CONS designated at its last read.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// `n` more entries were published (PROD moved past them).
    pub fn wrote(&mut self, n: usize) {
        self.written += n as u64;
    }

    /// The entry at `pos` is a CMD_SYNC.
    pub fn wrote_sync(&mut self, pos: u64) {
        self.newest_sync = Some(pos);
    }

    /// Takes a CONS read: `prod` is the PROD this ledger's `written` describes.
    /// A CONS ahead of PROD, or one that would un-consume published entries, is not a position
    /// the SMMU can report (§3.5: CONS never passes PROD): such a read is ignored.
    pub fn observe_cons(&mut self, geo: QueueGeometry, prod: QueuePtr, cons: QueuePtr) {
        let used = geo.used(prod, cons);
        if used > geo.entries() {
            return;
        }
        if let Some(at) = self.written.checked_sub(u64::from(used)) {
            self.consumed = self.consumed.max(at);
        }
    }

    /// The CMD_SYNC a caller whose commands end before `end` may wait for, if one was written
    /// after them. `adopt_earlier` (debug only) takes the newest one wherever it is.
    pub fn covering_sync(&self, end: u64, adopt_earlier: bool) -> Option<u64> {
        self.newest_sync.filter(|&s| s >= end || adopt_earlier)
    }

    pub fn outcome(&self, sync: u64) -> SyncOutcome {
        match self.given_up {
            Some((first, last)) if (first..=last).contains(&sync) => SyncOutcome::GivenUp,
            _ if self.consumed > sync => SyncOutcome::Completed,
            _ => SyncOutcome::Pending,
        }
    }

    /// A waiter for `sync` timed out: it and every CMD_SYNC before it that CONS has not passed
    /// are given up on. Merging with an earlier give-up may include CMD_SYNCs that completed
    /// in between; their late waiters then fail too, which errs on the safe side.
    pub fn give_up(&mut self, sync: u64) {
        // Not consumed: every position from `consumed` on.
        self.given_up = Some(match self.given_up {
            Some((first, last)) => (first, last.max(sync)),
            None => (self.consumed, sync),
        });
    }

    /// The queue was reset under every outstanding entry: none of them will complete.
    pub fn abandon_outstanding(&mut self) {
        if self.written > self.consumed {
            self.give_up(self.written - 1);
        }
        self.consumed = self.written;
    }

    /// The SMMU refused the command at `pos`.
    pub fn record_refusal(&mut self, pos: u64, failure: CommandFailure) {
        self.refused.push((pos, failure));
    }

    /// The first refusal among the positions `start..end`.
    pub fn refusal_in(&self, start: u64, end: u64) -> Option<CommandFailure> {
        self.refused
            .iter()
            .find(|(pos, _)| (start..end).contains(pos))
            .map(|&(_, f)| f)
    }

    fn open(&mut self) {
        self.open += 1;
    }

    fn close(&mut self) {
        self.open -= 1;
        if self.open == 0 {
            self.refused.clear();
        }
    }
}

/// What the protocol needs of a command queue. Every method runs with the queue lock held;
/// `H` is whatever the queue needs to reach the hardware.
pub trait CommandRing<H: ?Sized> {
    fn ledger(&mut self) -> &mut SyncLedger;
    /// Entries the queue holds.
    fn capacity(&self) -> usize;
    /// Writes `commands` (at most [`CommandRing::capacity`]) after the last entry, waiting for
    /// room, and moves PROD past them with one write; all or nothing. Does not tell the
    /// ledger.
    fn publish(&mut self, hw: &H, commands: &[Command]) -> Result<(), SmmuError>;
    /// Reads CONS (repairing and recording a refused command) into the ledger.
    fn poll(&mut self, hw: &H) -> Result<(), SmmuError>;
    /// PROD and the last CONS read, for error reports.
    fn pointers(&self) -> (QueuePtr, QueuePtr);
    /// Counts what a submission did.
    fn count(&mut self, event: SyncEvent);
}

/// What the queue's owner provides besides the queue.
pub trait SyncHardware {
    fn now_ns(&self) -> u64;
    fn sync_timeout_ns(&self) -> u64;
    /// Commands are no longer sent ([`SmmuError::Disabled`]).
    fn disabled(&self) -> bool;
}

/// Events a [`CommandRing`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncEvent {
    /// A caller waited for another caller's CMD_SYNC instead of its own.
    Shared,
    SyncTimeout,
    /// A CMD_SYNC began (its position) and ended (`failed`): for the trace.
    SyncBegin(u64),
    SyncEnd { pos: u64, failed: bool },
}

/// How to submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submission {
    /// End with a completed CMD_SYNC (else publish and return).
    pub sync: bool,
    /// Commands per PROD write.
    pub batch: usize,
    /// Share CMD_SYNCs between callers (else each its own, as Linux).
    pub share: bool,
    /// Debug only: wait for the newest CMD_SYNC even if it is older than our commands.
    pub adopt_earlier_sync: bool,
}

/// Where a submission counts the commands it published: [`CommandCounts`], or `()` for a
/// caller that does not ask (the counts are 13 words: clearing them costs as much as the rest
/// of a small submission's bookkeeping).
pub trait Tally {
    fn add(&mut self, kind: CommandKind);

    fn add_all(&mut self, commands: &[Command]) {
        for c in commands {
            self.add(c.kind());
        }
    }
}

impl Tally for CommandCounts {
    fn add(&mut self, kind: CommandKind) {
        CommandCounts::add(self, kind);
    }
}

impl Tally for () {
    fn add(&mut self, _: CommandKind) {}
}

/// A command queue behind its lock, with the count of callers inside [`SharedQueue::submit`]
/// and the CPUs that submitted lately.
pub struct SharedQueue<R> {
    ring: SpinLock<R>,
    inside: AtomicU32,
    activity: Activity,
}

/// Submissions per window of [`Activity`].
const ACTIVITY_WINDOW: u32 = 64;

/// Which CPUs submitted in the current and the previous window of [`ACTIVITY_WINDOW`]
/// submissions: a CPU that saw others lately gives them the chance to join its CMD_SYNC. A
/// heuristic (racy updates only make a caller split or not), so `core` atomics even under loom.
struct Activity {
    submissions: core::sync::atomic::AtomicU32,
    seen: [core::sync::atomic::AtomicU64; 2],
}

impl Activity {
    const fn new() -> Self {
        use core::sync::atomic::{AtomicU32, AtomicU64};
        Self {
            submissions: AtomicU32::new(0),
            seen: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Notes a submission by the calling CPU; true if another CPU submitted lately.
    fn note(&self) -> bool {
        use core::sync::atomic::Ordering::Relaxed;
        let n = self.submissions.fetch_add(1, Relaxed);
        let window = &self.seen[(n / ACTIVITY_WINDOW) as usize % 2];
        if n % ACTIVITY_WINDOW == 0 {
            window.store(0, Relaxed);
        }
        let me = 1u64 << (crate::sync::current_cpu() % 64);
        window.fetch_or(me, Relaxed);
        (self.seen[0].load(Relaxed) | self.seen[1].load(Relaxed)) & !me != 0
    }
}

impl<R> SharedQueue<R> {
    pub fn new(ring: R) -> Self {
        Self {
            ring: SpinLock::new(ring),
            inside: AtomicU32::new(0),
            activity: Activity::new(),
        }
    }

    /// The queue, for anything but submitting (statistics, reset).
    pub fn lock(&self) -> SpinLockGuard<'_, R> {
        self.ring.lock()
    }

    /// Publishes `commands` and, if asked, returns once a CMD_SYNC written after all of them
    /// has completed (see the module documentation). Counts what this caller published, its
    /// own CMD_SYNC included, in `counts`.
    pub fn submit<H: SyncHardware + ?Sized>(
        &self,
        hw: &H,
        commands: impl Iterator<Item = Command>,
        how: Submission,
        counts: &mut impl Tally,
    ) -> Result<(), SmmuError>
    where
        R: CommandRing<H>,
    {
        if how.batch == 0 {
            return Err(SmmuError::BadConfig("batch must be at least 1"));
        }
        let _inside = Inside::enter(&self.inside);
        let others_lately = self.activity.note();
        let mut q = self.ring.lock();
        if hw.disabled() {
            return Err(SmmuError::Disabled);
        }
        q.ledger().open();
        let start = q.ledger().written();
        let published = self.publish_all(hw, &mut q, commands, how, others_lately, counts);
        let end = q.ledger().written();
        let (q, result) = match published {
            Ok(own_sync) if how.sync => self.complete(hw, q, end, own_sync, how, counts),
            Ok(_) => (q, Ok(())),
            Err(e) => (q, Err(e)),
        };
        let mut q = q;
        let refused = q.ledger().refusal_in(start, end);
        q.ledger().close();
        match (result, refused) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(f)) => Err(SmmuError::CommandFailed(f)),
            (Ok(()), None) => Ok(()),
        }
    }

    /// Publishes the commands in batches; the last batch carries our CMD_SYNC when we are
    /// alone (or do not share). Returns the CMD_SYNC's position if it wrote one.
    fn publish_all<H: SyncHardware + ?Sized>(
        &self,
        hw: &H,
        q: &mut SpinLockGuard<'_, R>,
        mut commands: impl Iterator<Item = Command>,
        how: Submission,
        others_lately: bool,
        counts: &mut impl Tally,
    ) -> Result<Option<u64>, SmmuError>
    where
        R: CommandRing<H>,
    {
        // One command of lookahead tells the last batch, which may carry the CMD_SYNC.
        let mut next = commands.next();
        let mut inline = [Command::SYNC; INLINE_BATCH];
        let mut batch = Batch::new(&mut inline);
        loop {
            batch.clear();
            while let Some(command) = next {
                if batch.len() == how.batch {
                    break;
                }
                batch.push(command);
                next = commands.next();
            }
            let last = next.is_none();
            let own_sync = last && how.sync && (!how.share || self.alone(others_lately));
            if own_sync {
                batch.push(Command::SYNC);
            }
            for chunk in batch.as_slice().chunks(q.capacity()) {
                q.publish(hw, chunk)?;
                q.ledger().wrote(chunk.len());
                counts.add_all(chunk);
            }
            if last {
                if !own_sync {
                    return Ok(None);
                }
                let pos = q.ledger().written() - 1;
                q.ledger().wrote_sync(pos);
                return Ok(Some(pos));
            }
        }
    }

    /// No other CPU is inside [`SharedQueue::submit`] or submitted lately.
    fn alone(&self, others_lately: bool) -> bool {
        !others_lately && self.inside.load(Ordering::Relaxed) <= 1
    }

    /// Finds or writes a CMD_SYNC after position `end` and waits for it.
    // Inlined with `wait_for`: the guard and the result then stay in the caller's frame
    // instead of being copied back through memory.
    #[inline(always)]
    fn complete<'q, H: SyncHardware + ?Sized>(
        &'q self,
        hw: &H,
        mut q: SpinLockGuard<'q, R>,
        end: u64,
        own_sync: Option<u64>,
        how: Submission,
        counts: &mut impl Tally,
    ) -> (SpinLockGuard<'q, R>, Result<(), SmmuError>)
    where
        R: CommandRing<H>,
    {
        let sync = match own_sync {
            Some(pos) => pos,
            None => {
                // Let the CPUs behind us on the lock publish before anyone writes the CMD_SYNC.
                drop(q);
                crate::sync::yield_cpu();
                q = self.ring.lock();
                let shared = q.ledger().covering_sync(end, how.adopt_earlier_sync);
                match shared {
                    Some(pos) => {
                        q.count(SyncEvent::Shared);
                        pos
                    }
                    None => match Self::write_sync(hw, &mut q, counts) {
                        Ok(pos) => pos,
                        Err(e) => return (q, Err(e)),
                    },
                }
            }
        };
        q.count(SyncEvent::SyncBegin(sync));
        let (q, waited) = self.wait_for(hw, q, sync);
        let mut q = q;
        let failed = waited.is_err();
        q.count(SyncEvent::SyncEnd { pos: sync, failed });
        (q, waited)
    }

    fn write_sync<H: SyncHardware + ?Sized>(
        hw: &H,
        q: &mut SpinLockGuard<'_, R>,
        counts: &mut impl Tally,
    ) -> Result<u64, SmmuError>
    where
        R: CommandRing<H>,
    {
        if hw.disabled() {
            return Err(SmmuError::Disabled);
        }
        q.publish(hw, &[Command::SYNC])?;
        let pos = q.ledger().written();
        q.ledger().wrote(1);
        q.ledger().wrote_sync(pos);
        counts.add(Command::SYNC.kind());
        Ok(pos)
    }

    /// Polls until CONS has passed the CMD_SYNC at `sync`, it was given up on, or our deadline.
    #[inline(always)]
    fn wait_for<'q, H: SyncHardware + ?Sized>(
        &'q self,
        hw: &H,
        mut q: SpinLockGuard<'q, R>,
        sync: u64,
    ) -> (SpinLockGuard<'q, R>, Result<(), SmmuError>)
    where
        R: CommandRing<H>,
    {
        // The clock is read only once the wait has to spin: a CMD_SYNC found completed at the
        // first poll (QEMU's SMMU consumes the queue on the CMDQ_PROD write) needs no deadline.
        let mut deadline = None;
        loop {
            if q.ledger().outcome(sync) == SyncOutcome::Pending {
                if let Err(e) = q.poll(hw) {
                    return (q, Err(e));
                }
            }
            match q.ledger().outcome(sync) {
                SyncOutcome::Completed => {
                    // Whatever the SMMU wrote before completing is visible after this.
                    fence(Ordering::Acquire);
                    return (q, Ok(()));
                }
                SyncOutcome::GivenUp => {
                    let e = Self::timed_out(&q);
                    return (q, Err(e));
                }
                SyncOutcome::Pending => {}
            }
            if hw.disabled() {
                return (q, Err(SmmuError::Disabled));
            }
            let now = hw.now_ns();
            if now >= *deadline.get_or_insert_with(|| now.saturating_add(hw.sync_timeout_ns())) {
                q.ledger().give_up(sync);
                q.count(SyncEvent::SyncTimeout);
                let e = Self::timed_out(&q);
                return (q, Err(e));
            }
            drop(q);
            crate::sync::spin_loop();
            q = self.ring.lock();
        }
    }

    fn timed_out<H: ?Sized>(q: &SpinLockGuard<'_, R>) -> SmmuError
    where
        R: CommandRing<H>,
    {
        let (prod, cons) = q.pointers();
        SmmuError::SyncTimeout { prod, cons }
    }
}

/// Commands a [`Batch`] holds without a heap allocation: a range plan of up to three commands
/// (4095 pages) with its CMD_SYNC. Small, since every slot is initialized on each submit.
const INLINE_BATCH: usize = 4;

/// The commands of one CMDQ_PROD write: inline when few (an allocation and its free cost
/// about as much as the rest of a 1-page invalidation's submission), on the heap beyond.
/// The inline room is borrowed, not owned: a `Batch` built around an array it owns was
/// copied into place after being built, 128 bytes through `memcpy` on every submission.
struct Batch<'a> {
    inline: &'a mut [Command; INLINE_BATCH],
    len: usize,
    spilled: Vec<Command>,
}

impl<'a> Batch<'a> {
    fn new(inline: &'a mut [Command; INLINE_BATCH]) -> Self {
        Self {
            inline,
            len: 0,
            spilled: Vec::new(),
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.spilled.clear();
    }

    fn len(&self) -> usize {
        if self.spilled.is_empty() {
            self.len
        } else {
            self.spilled.len()
        }
    }

    fn push(&mut self, command: Command) {
        if self.spilled.is_empty() && self.len < INLINE_BATCH {
            self.inline[self.len] = command;
            self.len += 1;
            return;
        }
        if self.spilled.is_empty() {
            self.spilled.extend_from_slice(&self.inline[..self.len]);
        }
        self.spilled.push(command);
    }

    fn as_slice(&self) -> &[Command] {
        if self.spilled.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }
}

/// Counts a caller inside [`SharedQueue::submit`] until it returns.
struct Inside<'a>(&'a AtomicU32);

impl<'a> Inside<'a> {
    fn enter(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn positions_survive_the_wrap() {
        let geo = QueueGeometry::new(2).unwrap(); // 4 entries, pointers mod 8
        let mut l = SyncLedger::new();
        let mut prod = 0;
        for round in 0..5u64 {
            l.wrote(3);
            prod = geo.advance(prod, 3);
            l.wrote_sync(l.written() - 1);
            let sync = l.written() - 1;
            // CONS one short of PROD: the CMD_SYNC is not consumed yet.
            l.observe_cons(geo, prod, geo.advance(prod, 7));
            assert_eq!(l.outcome(sync), SyncOutcome::Pending, "round {round}");
            l.observe_cons(geo, prod, prod);
            assert_eq!(l.outcome(sync), SyncOutcome::Completed, "round {round}");
            assert_eq!(l.consumed(), 3 * (round + 1));
        }
        // A full queue (same index, other wrap bit) is 4 outstanding, not 0.
        l.wrote(4);
        let full = geo.advance(prod, 4);
        l.observe_cons(geo, full, prod);
        assert_eq!(l.consumed(), l.written() - 4);
    }

    #[test]
    fn a_cons_the_smmu_cannot_report_is_ignored() {
        let geo = QueueGeometry::new(2).unwrap(); // 4 entries, pointers mod 8
        let mut l = SyncLedger::new();
        l.wrote(2);
        // CONS two ahead of PROD reads as 6 outstanding of a 4-entry queue.
        l.observe_cons(geo, 2, 4);
        assert_eq!(l.consumed(), 0);
        // More outstanding than ever published (a CONS from before this ledger's start).
        l.observe_cons(geo, 2, geo.advance(2, 5));
        assert_eq!(l.consumed(), 0);
        l.observe_cons(geo, 2, 1);
        assert_eq!(l.consumed(), 1);
    }

    #[test]
    fn only_a_later_sync_covers() {
        let mut l = SyncLedger::new();
        l.wrote(2);
        l.wrote_sync(1);
        assert_eq!(l.covering_sync(2, false), None, "the CMD_SYNC precedes our commands");
        assert_eq!(l.covering_sync(2, true), Some(1), "the debug knob takes it anyway");
        assert_eq!(l.covering_sync(1, false), Some(1));
    }

    #[test]
    fn a_given_up_sync_never_completes_later() {
        let geo = QueueGeometry::new(3).unwrap();
        let mut l = SyncLedger::new();
        l.wrote(4);
        l.wrote_sync(1);
        l.wrote_sync(3);
        l.observe_cons(geo, 4, 1); // CONS at the first CMD_SYNC
        l.give_up(3);
        l.observe_cons(geo, 4, 4); // CONS moves on afterwards
        assert_eq!(l.outcome(1), SyncOutcome::GivenUp);
        assert_eq!(l.outcome(3), SyncOutcome::GivenUp);
        assert_eq!(l.outcome(0), SyncOutcome::Completed, "consumed before the give-up");
        l.wrote(2);
        l.wrote_sync(5);
        l.observe_cons(geo, 6, 6);
        assert_eq!(l.outcome(5), SyncOutcome::Completed, "a later CMD_SYNC counts by itself");
    }

    #[test]
    fn a_batch_keeps_its_order_past_the_inline_room() {
        let tlbi = |asid| Command::TlbiNhAsid { vmid: 0, asid };
        let mut inline = [Command::SYNC; INLINE_BATCH];
        let mut b = Batch::new(&mut inline);
        for round in 0..2 {
            b.clear();
            let n = INLINE_BATCH as u16 * 2 + round;
            (0..n).for_each(|i| b.push(tlbi(i)));
            assert_eq!(b.as_slice(), (0..n).map(tlbi).collect::<Vec<_>>().as_slice());
            b.clear();
            b.push(tlbi(7));
            assert_eq!(b.as_slice(), &[tlbi(7)], "a cleared batch starts over");
        }
    }

    /// A queue that consumes whatever is published at once and records every PROD write.
    struct Recorder {
        capacity: usize,
        ledger: SyncLedger,
        writes: Vec<Vec<Command>>,
        /// `publish` refuses a write holding this command (as an encode error does).
        bad: Option<Command>,
    }

    impl Recorder {
        fn new(capacity: usize) -> Self {
            Self {
                capacity,
                ledger: SyncLedger::new(),
                writes: Vec::new(),
                bad: None,
            }
        }

        fn published(&self) -> Vec<Command> {
            self.writes.concat()
        }
    }

    /// Every read of the clock is 1 ns later: a CMD_SYNC never consumed times out.
    struct Instant;

    impl SyncHardware for Instant {
        fn now_ns(&self) -> u64 {
            static NOW: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
            NOW.fetch_add(1, core::sync::atomic::Ordering::Relaxed)
        }
        fn sync_timeout_ns(&self) -> u64 {
            1 << 20
        }
        fn disabled(&self) -> bool {
            false
        }
    }

    impl CommandRing<Instant> for Recorder {
        fn ledger(&mut self) -> &mut SyncLedger {
            &mut self.ledger
        }
        fn capacity(&self) -> usize {
            self.capacity
        }
        fn publish(&mut self, _: &Instant, commands: &[Command]) -> Result<(), SmmuError> {
            assert!(!commands.is_empty(), "a PROD write with nothing in it");
            assert!(commands.len() <= self.capacity, "{} > {}", commands.len(), self.capacity);
            if self.bad.is_some_and(|bad| commands.contains(&bad)) {
                return Err(SmmuError::BadConfig("does not encode"));
            }
            self.writes.push(commands.to_vec());
            Ok(())
        }
        fn poll(&mut self, _: &Instant) -> Result<(), SmmuError> {
            self.ledger.consumed = self.ledger.written;
            Ok(())
        }
        fn pointers(&self) -> (QueuePtr, QueuePtr) {
            (0, 0)
        }
        fn count(&mut self, _: SyncEvent) {}
    }

    fn tlbi(asid: u16) -> Command {
        Command::TlbiNhAsid { vmid: 0, asid }
    }

    fn tally(commands: &[Command]) -> CommandCounts {
        let mut counts = CommandCounts::default();
        counts.add_all(commands);
        counts
    }

    /// The PROD writes a submission of `n` commands should make: batches of `batch` (one,
    /// empty, for no commands), the last with its CMD_SYNC if `own_sync`, each cut to the
    /// queue's capacity; a CMD_SYNC written after the others' turn comes alone.
    fn expected_writes(
        n: u16,
        batch: usize,
        capacity: usize,
        sync: bool,
        alone: bool,
    ) -> Vec<Vec<Command>> {
        let plan: Vec<Command> = (0..n).map(tlbi).collect();
        let mut batches: Vec<Vec<Command>> = plan.chunks(batch).map(<[_]>::to_vec).collect();
        if batches.is_empty() {
            batches.push(Vec::new());
        }
        if sync && alone {
            batches.last_mut().unwrap().push(Command::SYNC);
        }
        let mut writes: Vec<Vec<Command>> = batches
            .iter()
            .flat_map(|b| b.chunks(capacity).map(<[_]>::to_vec).collect::<Vec<_>>())
            .collect();
        if sync && !alone {
            writes.push(vec![Command::SYNC]);
        }
        writes
    }

    #[test]
    fn batches_cut_where_they_should_and_the_ledger_and_counts_stay_exact() {
        for capacity in 1..=5 {
            for batch in 1..=6 {
                for n in 0..=(3 * batch as u16 + 2) {
                    for (sync, alone) in [(true, true), (true, false), (false, true)] {
                        let queue = SharedQueue::new(Recorder::new(capacity));
                        // Another CPU inside `submit`: the CMD_SYNC comes after its turn.
                        let _other = (!alone).then(|| Inside::enter(&queue.inside));
                        let how = Submission {
                            sync,
                            batch,
                            share: true,
                            adopt_earlier_sync: false,
                        };
                        let mut counts = CommandCounts::default();
                        let what = format!(
                            "{n} commands, batch {batch}, capacity {capacity}, \
                             sync {sync}, alone {alone}"
                        );
                        queue
                            .submit(&Instant, (0..n).map(tlbi), how, &mut counts)
                            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
                        let q = queue.lock();
                        let expected = expected_writes(n, batch, capacity, sync, alone);
                        assert_eq!(q.writes, expected, "{what}");
                        let published = q.published();
                        assert_eq!(q.ledger.written(), published.len() as u64, "{what}");
                        assert_eq!(counts, tally(&published), "{what}");
                        let sync_at = published.iter().rposition(|c| *c == Command::SYNC);
                        assert_eq!(q.ledger.newest_sync, sync_at.map(|p| p as u64), "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_command_that_does_not_publish_leaves_ledger_and_counts_at_what_was_published() {
        for batch in 1..=5 {
            for bad in 0..7u16 {
                let capacity = 4;
                let mut ring = Recorder::new(capacity);
                ring.bad = Some(tlbi(bad));
                let queue = SharedQueue::new(ring);
                let how = Submission {
                    sync: true,
                    batch,
                    share: true,
                    adopt_earlier_sync: false,
                };
                let mut counts = CommandCounts::default();
                let r = queue.submit(&Instant, (0..7).map(tlbi), how, &mut counts);
                assert!(r.is_err(), "batch {batch}, bad {bad}");
                let q = queue.lock();
                let published = q.published();
                // The writes before the bad command's: whole batches, then whole chunks of its
                // batch; nothing of its own write.
                let bad = usize::from(bad);
                let before = bad / batch * batch + bad % batch / capacity * capacity;
                let what = format!("batch {batch}, bad {bad}");
                assert_eq!(published, (0..before as u16).map(tlbi).collect::<Vec<_>>(), "{what}");
                assert_eq!(q.ledger.written(), before as u64, "{what}");
                assert_eq!(counts, tally(&published), "{what}");
                assert_eq!(q.ledger.newest_sync, None, "{what}");
                assert_eq!(q.ledger.open, 0, "the submission closed its ledger entry");
            }
        }
    }

    #[test]
    fn callers_count_their_own_commands_and_only_the_syncs_they_wrote() {
        const CPUS: u16 = 4;
        const ROUNDS: u16 = 300;
        let queue = SharedQueue::new(Recorder::new(8));
        let how = Submission {
            sync: true,
            batch: 2,
            share: true,
            adopt_earlier_sync: false,
        };
        let per_cpu: Vec<CommandCounts> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..CPUS)
                .map(|cpu| {
                    let queue = &queue;
                    s.spawn(move || {
                        let mut counts = CommandCounts::default();
                        for round in 0..ROUNDS {
                            let n = round % 4;
                            let cmds = (0..n).map(|i| tlbi(cpu * 1000 + i));
                            queue.submit(&Instant, cmds, how, &mut counts).unwrap();
                        }
                        counts
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let published = queue.lock().published();
        let mut sum = CommandCounts::default();
        for (cpu, counts) in per_cpu.iter().enumerate() {
            let tlbis = counts.get(CommandKind::TlbiNhAsid);
            assert_eq!(tlbis, (0..ROUNDS).map(|r| u64::from(r % 4)).sum::<u64>(), "CPU {cpu}");
            sum.merge(counts);
        }
        assert_eq!(sum, tally(&published), "every published command counted once, by its writer");
    }

    #[test]
    fn a_reset_fails_everything_outstanding() {
        let mut l = SyncLedger::new();
        l.wrote(3);
        l.wrote_sync(2);
        l.abandon_outstanding();
        assert_eq!(l.outcome(2), SyncOutcome::GivenUp);
    }
}
