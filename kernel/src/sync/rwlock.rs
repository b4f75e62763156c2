//! A spinning reader/writer lock, the role of the `mmap_lock`.
//!
//! Writer-preferring: once a writer waits, new readers hold back, so registration (which takes
//! the write side) is not starved by a stream of faults. Under loom it is loom's `RwLock`.

#[cfg(not(loom))]
use super::atomic::{AtomicUsize, Ordering};
#[cfg(not(loom))]
use super::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

#[cfg(not(loom))]
const WRITER: usize = 1;
#[cfg(not(loom))]
const WRITER_WAITING: usize = 2;
#[cfg(not(loom))]
const READER: usize = 4;

/// A reader/writer lock that spins (in `WFE` in the kernel) while contended.
pub struct RwLock<T> {
    /// `WRITER` | `WRITER_WAITING` | readers × `READER`.
    #[cfg(not(loom))]
    state: AtomicUsize,
    #[cfg(not(loom))]
    data: UnsafeCell<T>,
    #[cfg(loom)]
    inner: loom::sync::RwLock<T>,
}

// SAFETY: readers share `&T` across CPUs (needs `Sync`), a writer gets `&mut T` on any CPU
// (needs `Send`).
#[cfg(not(loom))]
unsafe impl<T: Send + Sync> Sync for RwLock<T> {}
// SAFETY: moving the lock moves the `T` it owns.
#[cfg(not(loom))]
unsafe impl<T: Send> Send for RwLock<T> {}

/// Proof that the read side of a [`RwLock`] is held.
pub struct RwLockReadGuard<'a, T> {
    lock: &'a RwLock<T>,
    #[cfg(loom)]
    inner: loom::sync::RwLockReadGuard<'a, T>,
}

/// Proof that the write side of a [`RwLock`] is held.
pub struct RwLockWriteGuard<'a, T> {
    lock: &'a RwLock<T>,
    #[cfg(loom)]
    inner: loom::sync::RwLockWriteGuard<'a, T>,
}

impl<T> RwLock<T> {
    /// An unlocked lock protecting `data`.
    #[cfg(not(loom))]
    pub const fn new(data: T) -> Self {
        Self {
            state: AtomicUsize::new(0),
            data: UnsafeCell::new(data),
        }
    }

    /// An unlocked lock protecting `data`.
    #[cfg(loom)]
    pub fn new(data: T) -> Self {
        Self {
            inner: loom::sync::RwLock::new(data),
        }
    }

    /// Takes the read side.
    #[cfg(not(loom))]
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & (WRITER | WRITER_WAITING) == 0
                && self
                    .state
                    .compare_exchange_weak(s, s + READER, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return RwLockReadGuard { lock: self };
            }
            super::wait_until(|| {
                self.state.load(Ordering::Relaxed) & (WRITER | WRITER_WAITING) == 0
            });
        }
    }

    /// Takes the read side.
    #[cfg(loom)]
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        RwLockReadGuard {
            lock: self,
            inner: self.inner.read().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Takes the write side.
    #[cfg(not(loom))]
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & !WRITER_WAITING == 0 {
                // Taking it clears WRITER_WAITING; other waiting writers set it again.
                if self
                    .state
                    .compare_exchange_weak(s, WRITER, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return RwLockWriteGuard { lock: self };
                }
                continue;
            }
            if s & WRITER_WAITING == 0 {
                self.state.fetch_or(WRITER_WAITING, Ordering::Relaxed);
            }
            super::wait_until(|| self.state.load(Ordering::Relaxed) & !WRITER_WAITING == 0);
        }
    }

    /// Takes the write side.
    #[cfg(loom)]
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        RwLockWriteGuard {
            lock: self,
            inner: self.inner.write().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// True if a reader or a writer holds the lock (for assertions only).
    #[cfg(not(loom))]
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & !WRITER_WAITING != 0
    }

    /// True if a reader or a writer holds the lock (for assertions only).
    #[cfg(loom)]
    pub fn is_locked(&self) -> bool {
        self.inner.try_write().is_err()
    }
}

impl<T> RwLockReadGuard<'_, T> {
    /// The lock this guard holds.
    pub fn lock(&self) -> &RwLock<T> {
        self.lock
    }
}

impl<T> RwLockWriteGuard<'_, T> {
    /// The lock this guard holds.
    pub fn lock(&self) -> &RwLock<T> {
        self.lock
    }
}

impl<T> Deref for RwLockReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        #[cfg(not(loom))]
        {
            // SAFETY: a reader excludes writers, and readers only share `&T`.
            self.lock.data.with(|p| unsafe { &*p })
        }
        #[cfg(loom)]
        {
            &self.inner
        }
    }
}

impl<T> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        #[cfg(not(loom))]
        {
            // SAFETY: the writer excludes every other guard.
            self.lock.data.with(|p| unsafe { &*p })
        }
        #[cfg(loom)]
        {
            &self.inner
        }
    }
}

impl<T> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        #[cfg(not(loom))]
        {
            // SAFETY: the writer excludes every other guard; `&mut self` makes this unique.
            self.lock.data.with_mut(|p| unsafe { &mut *p })
        }
        #[cfg(loom)]
        {
            &mut self.inner
        }
    }
}

#[cfg(not(loom))]
impl<T> Drop for RwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.state.fetch_sub(READER, Ordering::Release);
        super::notify_waiters();
    }
}

#[cfg(not(loom))]
impl<T> Drop for RwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.state.fetch_and(!WRITER, Ordering::Release);
        super::notify_waiters();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn writers_exclude_readers_and_each_other() {
        let lock = Arc::new(RwLock::new((0u64, 0u64)));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let mut g = lock.write();
                        g.0 += 1;
                        g.1 += 1;
                    }
                })
            })
            .collect();
        let reader = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    let g = lock.read();
                    assert_eq!(g.0, g.1, "a reader saw a half-done write");
                }
            })
        };
        writers.into_iter().for_each(|t| t.join().unwrap());
        reader.join().unwrap();
        assert_eq!(*lock.read(), (2000, 2000));
        assert!(!lock.is_locked());
    }
}
