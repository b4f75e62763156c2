//! A test double of [`SvaIommu`] shared by the SVA race tests: it sits between SVA and the
//! driver, holds the first caller of one chosen operation at its entry until the test opens
//! it, and answers one-shot errors per operation.
//!
//! Included with `#[path = "sva_double.rs"] mod double;`; not a test target by itself.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use shootdown::iommu::driver::{
    ContextId, ContextParams, EventDrain, InvalidationReport, SmmuError,
};
use shootdown::iommu::spec::event::EventRecord;
use shootdown::iommu::sva::SvaIommu;
use shootdown::mm::VirtAddr;

/// An operation of [`SvaIommu`] a [`Double`] can hold or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    CreateContext,
    DestroyContext,
    Attach,
    Detach,
    InvalidateRange,
    Quiesce,
    /// A drain: held as it hands its first record to the sink (the record already taken out
    /// of the queue).
    Drain,
}

/// The driver, with the first caller of one operation held at its entry until
/// [`Double::open`], and one-shot errors per operation (checked after the hold).
pub struct Double {
    inner: &'static dyn SvaIommu,
    hold: Mutex<Option<Op>>,
    arrived: AtomicBool,
    open: AtomicBool,
    errors: Mutex<Vec<(Op, SmmuError)>>,
}

impl Double {
    pub fn new(inner: &'static dyn SvaIommu) -> &'static Self {
        Box::leak(Box::new(Self {
            inner,
            hold: Mutex::new(None),
            arrived: AtomicBool::new(false),
            open: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
        }))
    }

    /// Holds the next caller of `op` until [`Double::open`].
    pub fn hold_at(&self, op: Op) {
        *self.hold.lock().unwrap() = Some(op);
    }

    /// The next call of `op` answers `e` instead of reaching the driver.
    pub fn fail_next(&self, op: Op, e: SmmuError) {
        self.errors.lock().unwrap().push((op, e));
    }

    pub fn wait_for_arrival(&self) {
        while !self.arrived.load(Ordering::SeqCst) {
            thread::yield_now();
        }
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    fn pass(&self, op: Op) -> Result<(), SmmuError> {
        let held = {
            let mut hold = self.hold.lock().unwrap();
            *hold == Some(op) && hold.take().is_some()
        };
        if held {
            self.arrived.store(true, Ordering::SeqCst);
            while !self.open.load(Ordering::SeqCst) {
                thread::yield_now();
            }
        }
        let mut errors = self.errors.lock().unwrap();
        match errors.iter().position(|(o, _)| *o == op) {
            Some(i) => Err(errors.remove(i).1),
            None => Ok(()),
        }
    }
}

impl SvaIommu for Double {
    fn create_context(&self, params: ContextParams) -> Result<ContextId, SmmuError> {
        self.pass(Op::CreateContext)?;
        self.inner.create_context(params)
    }
    fn destroy_context(&self, ctx: ContextId) -> Result<(), SmmuError> {
        self.pass(Op::DestroyContext)?;
        self.inner.destroy_context(ctx)
    }
    fn context_asid(&self, ctx: ContextId) -> Result<u16, SmmuError> {
        self.inner.context_asid(ctx)
    }
    fn attach(&self, sid: u32, ctx: ContextId) -> Result<(), SmmuError> {
        self.pass(Op::Attach)?;
        self.inner.attach(sid, ctx)
    }
    fn detach(&self, sid: u32) -> Result<(), SmmuError> {
        self.pass(Op::Detach)?;
        self.inner.detach(sid)
    }
    fn invalidate_range(
        &self,
        ctx: ContextId,
        start: VirtAddr,
        end: VirtAddr,
    ) -> Result<InvalidationReport, SmmuError> {
        self.pass(Op::InvalidateRange)?;
        self.inner.invalidate_range(ctx, start, end)
    }
    fn quiesce(&self, ctx: ContextId) -> Result<(), SmmuError> {
        self.pass(Op::Quiesce)?;
        self.inner.quiesce(ctx)
    }
    fn abort_all_traffic(&self) -> Result<(), SmmuError> {
        self.inner.abort_all_traffic()
    }
    fn drain_events(&self, sink: &mut dyn FnMut(&EventRecord)) -> Result<EventDrain, SmmuError> {
        let mut first = true;
        self.inner.drain_events(&mut |e| {
            if core::mem::take(&mut first) {
                // Only the hold: an error cannot be injected once the driver drains.
                let _ = self.pass(Op::Drain);
            }
            sink(e)
        })
    }
}

/// True if `thread` finishes within a bounded wait while a hold keeps the other side. Only a
/// protocol that lets the two overlap finishes; a correct one makes it wait, and the bound
/// merely ends the chance.
pub fn finishes_alone<T>(thread: &thread::ScopedJoinHandle<'_, T>) -> bool {
    let give_up = Instant::now() + Duration::from_millis(300);
    while Instant::now() < give_up {
        if thread.is_finished() {
            return true;
        }
        thread::sleep(Duration::from_millis(1));
    }
    false
}
