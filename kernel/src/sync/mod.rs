//! Synchronization primitives shared by the kernel and the host tests.
//!
//! Concurrency-critical code imports its atomics, cells and locks from here, never from `core`
//! or `spin` directly, so that the same source is model-checked with `loom` when built with
//! `RUSTFLAGS="--cfg loom"`.
//!
//! | item | role (Linux analogue) |
//! |---|---|
//! | [`SpinLock`] | `spinlock_t`: a ticket lock |
//! | [`RwLock`] | the `mmap_lock` reader/writer lock (spinning, writer-preferring) |
//! | [`Srcu`] | SRCU: sleepable read-side sections, `synchronize`, deferred callbacks, barrier |
//! | [`WaitQueue`], [`wait_until`] | `wait_event`/`wake_up_all` without a scheduler |
//! | [`PlatformHooks`] | how the kernel tells this module the CPU index and how to idle (WFE/SEV) |
//!
//! Every wait in this module goes through [`wait_until`], the single place the kernel specialises
//! (through [`install_platform_hooks`]) to sleep in `WFE` until another CPU's `SEV`.

pub mod cell;
mod cpu;
mod rwlock;
mod spin;
pub mod srcu;
mod waitqueue;

#[cfg(loom)]
pub use cpu::set_model_cpu;
pub use cpu::{
    current_cpu, install_platform_hooks, notify_waiters, wait_until, yield_cpu, PlatformHooks,
};
pub use rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use spin::{SpinLock, SpinLockGuard};
pub use srcu::{GpLink, GpWork, Srcu, SrcuReadGuard};
pub use waitqueue::WaitQueue;

/// Atomics: `core`'s in the kernel and host tests, loom's in model checks.
pub mod atomic {
    #[cfg(loom)]
    pub use loom::sync::atomic::{
        fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };

    #[cfg(not(loom))]
    pub use core::sync::atomic::{
        fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
}

/// A point where a model check may switch threads; nothing outside loom.
///
/// Loom only switches threads at its own operations, so a window between two plain writes made
/// under a lock is invisible to it even though another CPU's lock-free read can fall into it.
/// Code with such a window that matters (a lock-free reader elsewhere) marks it with this.
#[inline(always)]
pub fn model_switch_point() {
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Tells the CPU (or loom's scheduler, or the host's) that this thread is busy-waiting.
///
/// On the host test build this yields the OS thread: the test machine has two cores shared by
/// many threads, and a pure spin would let a preempted lock holder starve everybody.
#[inline]
pub fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(all(test, not(loom)))]
    std::thread::yield_now();
    #[cfg(all(not(test), not(loom)))]
    core::hint::spin_loop();
}
