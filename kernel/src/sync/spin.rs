//! A ticket spin lock (`spinlock_t`).
//!
//! Tickets make the lock FIFO-fair between CPUs, which matters for the notifier's per-address
//! space lock: invalidations on several CPUs must not starve a `read_begin`. Under loom the lock
//! is loom's `Mutex`, which explores every acquisition order without modelling the spinning.

#[cfg(not(loom))]
use super::atomic::{AtomicU32, Ordering};
#[cfg(not(loom))]
use super::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

/// A mutual-exclusion lock that spins (in `WFE` in the kernel) while contended.
pub struct SpinLock<T> {
    #[cfg(not(loom))]
    next_ticket: AtomicU32,
    #[cfg(not(loom))]
    now_serving: AtomicU32,
    #[cfg(not(loom))]
    data: UnsafeCell<T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
}

// SAFETY: the lock hands out `&mut T` to one CPU at a time, so sharing the lock only requires
// that `T` can be sent between CPUs.
#[cfg(not(loom))]
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the `T` it owns.
#[cfg(not(loom))]
unsafe impl<T: Send> Send for SpinLock<T> {}

/// Proof that a [`SpinLock`] is held; unlocks on drop.
pub struct SpinLockGuard<'a, T> {
    lock: &'a SpinLock<T>,
    #[cfg(not(loom))]
    ticket: u32,
    #[cfg(loom)]
    inner: loom::sync::MutexGuard<'a, T>,
}

impl<T> SpinLock<T> {
    /// An unlocked lock protecting `data`.
    #[cfg(not(loom))]
    pub const fn new(data: T) -> Self {
        Self {
            next_ticket: AtomicU32::new(0),
            now_serving: AtomicU32::new(0),
            data: UnsafeCell::new(data),
        }
    }

    /// An unlocked lock protecting `data`.
    #[cfg(loom)]
    pub fn new(data: T) -> Self {
        Self {
            inner: loom::sync::Mutex::new(data),
        }
    }

    /// Takes the lock, waiting for earlier tickets to be served.
    #[cfg(not(loom))]
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        super::wait_until(|| self.now_serving.load(Ordering::Acquire) == ticket);
        SpinLockGuard { lock: self, ticket }
    }

    /// Takes the lock.
    #[cfg(loom)]
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        SpinLockGuard {
            lock: self,
            inner: self.inner.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// True if some CPU holds the lock (for assertions only: the answer may be stale at once).
    #[cfg(not(loom))]
    pub fn is_locked(&self) -> bool {
        self.next_ticket.load(Ordering::Relaxed) != self.now_serving.load(Ordering::Relaxed)
    }

    /// True if some thread holds the lock (for assertions only).
    #[cfg(loom)]
    pub fn is_locked(&self) -> bool {
        self.inner.try_lock().is_err()
    }

    /// The data, without locking: `&mut self` proves nobody else can hold the lock.
    pub fn get_mut(&mut self) -> &mut T {
        #[cfg(not(loom))]
        {
            // SAFETY: `&mut self` excludes every guard and every other access.
            self.data.with_mut(|p| unsafe { &mut *p })
        }
        #[cfg(loom)]
        {
            self.inner.get_mut().unwrap_or_else(|e| e.into_inner())
        }
    }
}

impl<T> SpinLockGuard<'_, T> {
    /// The lock this guard holds (to check that a caller passed the right one).
    pub fn lock(&self) -> &SpinLock<T> {
        self.lock
    }
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        #[cfg(not(loom))]
        {
            // SAFETY: the guard holds the lock, so no other reference to the data exists.
            self.lock.data.with(|p| unsafe { &*p })
        }
        #[cfg(loom)]
        {
            &self.inner
        }
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        #[cfg(not(loom))]
        {
            // SAFETY: the guard holds the lock, and `&mut self` makes this the only reference.
            self.lock.data.with_mut(|p| unsafe { &mut *p })
        }
        #[cfg(loom)]
        {
            &mut self.inner
        }
    }
}

#[cfg(not(loom))]
impl<T> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        self.lock
            .now_serving
            .store(self.ticket.wrapping_add(1), Ordering::Release);
        super::notify_waiters();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_add_up_across_threads() {
        let lock = Arc::new(SpinLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        *lock.lock() += 1;
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(*lock.lock(), 8000);
        assert!(!lock.is_locked());
    }
}
