//! Debug-build lock-order checks, in the role of lockdep's
//! `__mmu_notifier_invalidate_range_start_map`.
//!
//! Linux makes invalidation callbacks nest inside a fake lock that `mmu_interval_read_begin`
//! and `mmu_interval_notifier_remove` also take, so lockdep reports a caller that would wait for
//! an invalidation while inside one. Here the same rule is checked directly: the operations
//! that wait for invalidations or grace periods assert that the calling CPU is not running a
//! notifier callback, where they would wait for themselves. Release builds compile it out.

#[cfg(all(debug_assertions, not(loom)))]
mod imp {
    /// Per-CPU callback depth in the kernel (CPU indices beyond the table go unchecked).
    #[cfg(target_os = "none")]
    mod depth {
        use core::sync::atomic::{AtomicU32, Ordering};

        const MAX_CPUS: usize = 64;
        static DEPTH: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

        pub(super) fn add(delta: i32) {
            if let Some(d) = DEPTH.get(crate::sync::current_cpu()) {
                d.fetch_add(delta as u32, Ordering::Relaxed);
            }
        }

        pub(super) fn get() -> u32 {
            DEPTH
                .get(crate::sync::current_cpu())
                .map_or(0, |d| d.load(Ordering::Relaxed))
        }
    }

    /// A notifier callback is running on this CPU while this lives.
    pub(crate) struct InCallback(());

    pub(crate) fn in_callback() -> InCallback {
        depth::add(1);
        InCallback(())
    }

    impl Drop for InCallback {
        fn drop(&mut self) {
            depth::add(-1);
        }
    }

    #[track_caller]
    pub(crate) fn assert_may_wait(what: &'static str) {
        assert!(
            depth::get() == 0,
            "{what} called from a notifier callback: it would wait for itself"
        );
    }

    /// Per-thread callback depth on the host, where threads stand for CPUs (in unit tests and
    /// in every crate that uses this one: the fuzz targets run inputs on parallel threads).
    #[cfg(not(target_os = "none"))]
    mod depth {
        use core::cell::Cell;

        std::thread_local! {
            static DEPTH: Cell<u32> = const { Cell::new(0) };
        }

        pub(super) fn add(delta: i32) {
            DEPTH.with(|d| d.set(d.get().wrapping_add(delta as u32)));
        }

        pub(super) fn get() -> u32 {
            DEPTH.with(|d| d.get())
        }
    }
}

#[cfg(not(all(debug_assertions, not(loom))))]
mod imp {
    pub(crate) struct InCallback(());

    #[inline(always)]
    pub(crate) fn in_callback() -> InCallback {
        InCallback(())
    }

    #[inline(always)]
    pub(crate) fn assert_may_wait(_what: &'static str) {}
}

pub(crate) use imp::{assert_may_wait, in_callback};
