//! `wait_event`/`wake_up_all` for a kernel without a scheduler.

use super::cpu::{notify_waiters, wait_until};

/// A place to wait for a condition that another CPU will make true (Linux's
/// `wait_queue_head_t`).
///
/// Waiters spin in [`wait_until`] (sleeping in `WFE` in the kernel); [`WaitQueue::wake_all`]
/// sends the event. There is no list of sleepers: when a scheduler arrives, this type is where it
/// plugs in, and callers do not change.
#[derive(Debug, Default)]
pub struct WaitQueue {
    _private: (),
}

impl WaitQueue {
    /// An empty wait queue.
    pub const fn new() -> Self {
        Self { _private: () }
    }

    /// Waits until `condition()` holds (`wait_event`).
    pub fn wait_until(&self, condition: impl FnMut() -> bool) {
        wait_until(condition);
    }

    /// Wakes all waiters so they re-check their condition (`wake_up_all`). Call it after the
    /// store that makes the condition true.
    pub fn wake_all(&self) {
        notify_waiters();
    }
}
