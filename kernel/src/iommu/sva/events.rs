//! The SMMU's events for streams bound through SVA: the Access-flag fault is answered here.
//!
//! A bound stream's context leaves hardware access-flag updates off (CD.HA = 0, AFFD = 0), so
//! a device access through a leaf whose flag was cleared (`clear_flush_young`) takes F_ACCESS
//! (event 0x12, IHI 0070 §7.3.15: StreamID, SubstreamID if SSV, InputAddr = the VA, RnW) and
//! moves no data. [`Sva::handle_events`] drains the event queue and answers each F_ACCESS by
//! making the page young in the address space bound to the stream ([`MmCore::mark_young`],
//! which the address space answers with `AddressSpace::mark_young`, as it answers the CPU's
//! Access-flag fault).
//!
//! * **No invalidation.** A walk that ends in an Access-flag fault caches nothing (IHI 0070
//!   §3.13 with HTTU off; the VMSA rule of Arm ARM D8.4, "The Access flag"), so setting the
//!   flag only publishes the entry.
//! * **The current mapping.** The record carries no output address, so the flag is set on
//!   whatever leaf maps the VA now, as Linux's fault path answers on the current PTE: if the
//!   page was remapped meanwhile, the new one is made young (the flag is a hint, and the
//!   re-issued access would use the new mapping anyway); if it was unmapped, the answer is
//!   [`FaultError::NotMapped`] and a re-issued access takes F_TRANSLATION.
//! * **Re-issue is the device driver's job.** Our SMMUs have no stall model (CD.S = 0,
//!   STE.S1STALLD = 0) and no PRI: the faulting transaction was terminated (§3.12, the
//!   Terminate model; CD.A = 1 aborts it to the device) when the event was written. Nothing
//!   here resumes it; whoever drives the device issues it again once the event was answered.
//! * **The binding that faulted.** A record names the stream, not the binding: the stream's
//!   address space is looked up as the record is drained (SVA's drains are serialized, so a
//!   detach's drain waits for a drain that took a record out before it), and the
//!   records still queued when a stream is detached are drained then (after its STE
//!   invalidation completed, so none of the old binding's can come later) and handed out by
//!   the next `handle_events` as an unknown stream's. So a stream unbound and bound again never
//!   gets its old binding's F_ACCESS answered in the new address space.
//! * **Locking.** The queue's lock is dropped before any answer, and the stream's address
//!   space is looked up under a leaf lock that is dropped before `mark_young` takes the
//!   page-table lock. So `handle_events` may run alongside any unmap; it must not be called
//!   from a notifier callback or with a page-table lock held (it would wait for itself).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use super::{bump, Sva};
use crate::iommu::driver::{EventDrain, SmmuError};
use crate::iommu::spec::event::{EventKind, EventRecord};
use crate::mm::notifier::{FaultError, MmCore};
use crate::mm::VirtAddr;
use crate::sync::atomic::Ordering;

/// Why an F_ACCESS event was not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFaultError {
    /// No address space is bound to the stream through this SMMU's SVA (never bound, or
    /// unbound since), or the record names a substream, which SVA binds never use.
    UnknownStream { sid: u32, ssid: Option<u32> },
    /// The bound address space could not make the page young.
    NotAnswered {
        sid: u32,
        va: VirtAddr,
        why: FaultError,
    },
}

impl fmt::Display for AccessFaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownStream { sid, ssid: None } => {
                write!(f, "F_ACCESS from StreamID {sid:#x}, which is not bound")
            }
            Self::UnknownStream {
                sid,
                ssid: Some(ssid),
            } => write!(
                f,
                "F_ACCESS from StreamID {sid:#x} SubstreamID {ssid:#x}: SVA binds no substream"
            ),
            Self::NotAnswered { sid, va, why } => {
                write!(f, "F_ACCESS from StreamID {sid:#x} at {va}: {why}")
            }
        }
    }
}

/// What one [`Sva::handle_events`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandledEvents {
    /// Every record drained, in order, the answered F_ACCESS ones included.
    pub events: Vec<EventRecord>,
    /// What the drain found (lost events, an aborted queue write).
    pub drain: EventDrain,
    /// F_ACCESS records whose page is young again: their transactions may be re-issued.
    pub answered: usize,
    /// F_ACCESS records left unanswered, and why.
    pub unanswered: Vec<(EventRecord, AccessFaultError)>,
}

/// Records drained, each F_ACCESS with the address space its stream was bound to then.
#[derive(Default)]
pub(super) struct Drained {
    records: Vec<(EventRecord, Option<Arc<MmCore>>)>,
    drain: EventDrain,
}

impl Drained {
    /// Appends what one drain of the queue found.
    fn add(&mut self, more: Drained) {
        self.records.extend(more.records);
        self.drain.drained += more.drain.drained;
        self.drain.overflowed |= more.drain.overflowed;
        self.drain.write_aborted |= more.drain.write_aborted;
    }
}

impl Sva {
    /// Drains the SMMU's event queue and answers every F_ACCESS of a bound stream (module
    /// docs). Returns every record; fails only if the queue could not be read, before any
    /// answer.
    pub fn handle_events(&self) -> Result<HandledEvents, SmmuError> {
        let drained = {
            // Held across the drain: see `detached_records`.
            let mut detached = self.detached_records.lock();
            let fresh = self.drain_resolved()?;
            let mut drained = core::mem::take(&mut *detached);
            drained.add(fresh);
            drained
        };
        let mut handled = HandledEvents {
            events: drained.records.iter().map(|(e, _)| *e).collect(),
            drain: drained.drain,
            ..HandledEvents::default()
        };
        if self.skip_access_fault_answer.load(Ordering::Relaxed) {
            return Ok(handled);
        }
        for (e, mm) in drained
            .records
            .iter()
            .filter(|(e, _)| e.kind == EventKind::Access)
        {
            match answer_access_fault(e, mm.as_deref()) {
                Ok(()) => {
                    handled.answered += 1;
                    bump(&self.counters.access_faults_answered);
                }
                Err(why) => {
                    handled.unanswered.push((*e, why));
                    bump(&self.counters.access_faults_unanswered);
                }
            }
        }
        Ok(handled)
    }

    /// Drains the queue, looking each F_ACCESS's stream up as it is drained.
    fn drain_resolved(&self) -> Result<Drained, SmmuError> {
        let mut records = Vec::new();
        let drain = self.iommu.drain_events(&mut |e| {
            let mm = match (e.kind, e.ssid) {
                (EventKind::Access, None) => self.bound_mm(e.sid),
                _ => None,
            };
            records.push((*e, mm));
        })?;
        Ok(Drained { records, drain })
    }

    /// A stream was detached (its STE invalidated): its old binding's records still queued
    /// are drained now, for the next [`Sva::handle_events`], before it can be bound again.
    pub(super) fn set_aside_detached_records(&self) {
        let drained = {
            let mut detached = self.detached_records.lock();
            self.drain_resolved().map(|d| detached.add(d))
        };
        if let Err(e) = drained {
            log::warn!("sva: draining events at an unbind on {}: {e}", self.name);
        }
    }

    /// The address space stream `sid` is bound to. The lock is released on return, before
    /// the caller reaches the page tables.
    fn bound_mm(&self, sid: u32) -> Option<Arc<MmCore>> {
        self.streams.lock().get(&sid).cloned()
    }

    /// Stream `sid` now translates through `mm`. Called under the subscription's `control`.
    pub(super) fn note_bound(&self, sid: u32, mm: Arc<MmCore>) {
        self.streams.lock().insert(sid, mm);
    }

    /// Stream `sid` is being detached. Called under the subscription's `control`.
    pub(super) fn note_unbound(&self, sid: u32) {
        self.streams.lock().remove(&sid);
    }
}

/// Makes the page of one F_ACCESS young in `mm`, the address space its stream was bound to
/// when the record was drained.
fn answer_access_fault(e: &EventRecord, mm: Option<&MmCore>) -> Result<(), AccessFaultError> {
    let unknown = AccessFaultError::UnknownStream {
        sid: e.sid,
        ssid: e.ssid,
    };
    let mm = mm.ok_or(unknown)?;
    let va = VirtAddr(e.input_addr);
    // `Ok(false)`: an earlier record of the same page was answered already.
    mm.mark_young(va)
        .map(|_| ())
        .map_err(|why| AccessFaultError::NotAnswered {
            sid: e.sid,
            va,
            why,
        })
}
