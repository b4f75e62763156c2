//! Synchronization primitives shared by the kernel and the host tests.
//!
//! Concurrency-critical code imports its atomics and locks from here, never from `core` or
//! `spin` directly, so that the same source is model-checked with `loom` when built with
//! `RUSTFLAGS="--cfg loom"`.

/// Atomics: `core`'s in the kernel and host tests, loom's in model checks.
pub mod atomic {
    #[cfg(loom)]
    pub use loom::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

    #[cfg(not(loom))]
    pub use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
}

/// Tells the CPU (or loom's scheduler) that this thread is busy-waiting.
#[inline]
pub fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}
