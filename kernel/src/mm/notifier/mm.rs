//! [`MmCore`]: the part of an address space the notifier works against (`struct mm_struct`'s
//! `mm_users`, `mm_count`, `mmap_lock` and `notifier_subscriptions`).

use alloc::sync::{Arc, Weak};
use core::ptr;

use super::alloc::try_box;
use super::error::{FaultError, NotifierError};
use super::subscriptions::Subscriptions;
use crate::mm::VirtAddr;
use crate::sync::atomic::{fence, AtomicPtr, AtomicUsize, Ordering};
use crate::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, Srcu};

/// The grace-period domain shared by every address space (Linux uses one global SRCU for all
/// mms, trading some contention for per-CPU memory).
#[cfg(not(loom))]
pub fn notifier_srcu() -> &'static Srcu {
    static NOTIFIER_SRCU: Srcu = Srcu::new();
    &NOTIFIER_SRCU
}

/// The grace-period domain shared by every address space.
#[cfg(loom)]
pub fn notifier_srcu() -> &'static Srcu {
    loom::lazy_static! {
        static ref NOTIFIER_SRCU: Srcu = Srcu::new();
    }
    &NOTIFIER_SRCU
}

/// What a fault arriving through a core can ask of the address space that owns it. A device's
/// fault handler (the SMMU's event queue, through an SVA binding) holds only the core: the
/// owner's type depends on its platform. Linux's I/O page-fault handler likewise holds the
/// `mm_struct` it hands to `handle_mm_fault`.
pub trait MmFaultHandler: Send + Sync {
    /// Answers an Access-flag fault at `va`: sets the access flag of the leaf that maps it now.
    /// `Ok(false)` if the flag was set already (someone answered first).
    fn mark_young(&self, va: VirtAddr) -> Result<bool, FaultError>;
}

/// The notifier's view of an address space.
///
/// Always lives in an [`Arc`] (see [`MmCore::new`]); the lead's `AddressSpace` holds one. The two
/// Linux reference counts map to:
///
/// * `mm_count` (`mmgrab`/`mmdrop`) = the `Arc`'s strong count. Every subscriber holds one, so
///   the core — and the subscriptions it owns — is destroyed only when the address space and all
///   its subscribers are gone. The subscriptions are freed in `Drop`, never earlier.
/// * `mm_users` (`mmget`/`mmput`) = [`MmCore::mmget`]/[`MmCore::mmput`]. The last `mmput` runs the
///   notifier half of `exit_mmap`: `release` for every subscriber. The caller tears the page
///   tables down after that, with invalidations under the mmap lock as usual.
///
/// Every `invalidate_range_start`/`end` pair must run under the mmap lock (read or write): the
/// guard types enforce it. Registration takes the write side, which is how it excludes
/// invalidations in flight (the role of `mm_take_all_locks()` in Linux).
pub struct MmCore {
    users: AtomicUsize,
    mmap_lock: RwLock<()>,
    subscriptions: AtomicPtr<Subscriptions>,
    srcu: &'static Srcu,
    this: Weak<MmCore>,
    /// The address space that answers faults arriving through the core, fixed at creation.
    fault_handler: Option<Weak<dyn MmFaultHandler>>,
    #[cfg(any(test, loom))]
    pub(crate) knobs: super::DebugKnobs,
}

/// Proof that the mmap lock of [`MmapReadGuard::mm`] is held for reading.
pub struct MmapReadGuard<'a> {
    mm: &'a MmCore,
    _guard: RwLockReadGuard<'a, ()>,
}

/// Proof that the mmap lock of [`MmapWriteGuard::mm`] is held for writing.
pub struct MmapWriteGuard<'a> {
    mm: &'a MmCore,
    _guard: RwLockWriteGuard<'a, ()>,
}

impl MmCore {
    /// A new address-space core with one user, using the shared grace-period domain.
    pub fn new() -> Arc<Self> {
        Self::with_grace_domain(notifier_srcu())
    }

    /// A new core whose subscribers are protected by `srcu` instead of the shared domain (tests
    /// use private domains so that their grace periods are independent).
    pub fn with_grace_domain(srcu: &'static Srcu) -> Arc<Self> {
        Self::build(srcu, None)
    }

    /// A new core owned by the address space `handler` points to, which answers the faults
    /// that arrive through the core ([`MmCore::mark_young`]).
    pub fn owned_by(handler: Weak<dyn MmFaultHandler>) -> Arc<Self> {
        Self::build(notifier_srcu(), Some(handler))
    }

    fn build(srcu: &'static Srcu, fault_handler: Option<Weak<dyn MmFaultHandler>>) -> Arc<Self> {
        Arc::new_cyclic(|this| MmCore {
            users: AtomicUsize::new(1),
            mmap_lock: RwLock::new(()),
            subscriptions: AtomicPtr::new(ptr::null_mut()),
            srcu,
            this: this.clone(),
            fault_handler,
            #[cfg(any(test, loom))]
            knobs: super::DebugKnobs::default(),
        })
    }

    /// The grace-period domain of this address space's subscribers.
    pub fn grace_domain(&self) -> &'static Srcu {
        self.srcu
    }

    /// A counted reference to this core (`mmgrab`); dropping it is `mmdrop`.
    pub fn mmgrab(&self) -> Arc<MmCore> {
        // `&self` borrows from a live `Arc` (cores only exist inside one), so the upgrade
        // succeeds; only `Drop` runs with a zero count, and it never calls this.
        self.this.upgrade().expect("MmCore always lives in an Arc")
    }

    /// Takes a user reference; the caller must already hold one (`mmget`).
    pub fn mmget(&self) {
        let old = self.users.fetch_add(1, Ordering::Relaxed);
        debug_assert!(old > 0, "mmget on an address space without users");
    }

    /// Takes a user reference unless the address space is already exiting (`mmget_not_zero`).
    pub fn mmget_not_zero(&self) -> bool {
        let mut users = self.users.load(Ordering::Relaxed);
        while users != 0 {
            match self.users.compare_exchange_weak(
                users,
                users + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => users = now,
            }
        }
        false
    }

    /// Drops a user reference (`mmput`). The last one runs `release` on every subscriber and
    /// returns true: the caller must then tear the address space down.
    pub fn mmput(&self) -> bool {
        let old = self.users.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(old > 0, "mmput without a user reference");
        if old != 1 {
            return false;
        }
        super::release(self);
        true
    }

    /// For a subscriber that was just linked: true if the address space still has users after
    /// the link. Paired with the fence in the last `mmput`'s release: either that release walks
    /// the list after the link (and so reaches the new subscriber), or this sees no users and
    /// the caller must not rely on a `release` ever coming.
    pub fn still_has_users(&self) -> bool {
        fence(Ordering::SeqCst);
        self.users.load(Ordering::Relaxed) != 0
    }

    /// Answers an Access-flag fault at `va` that reached the address space through its core (a
    /// device's F_ACCESS): the owner sets the flag of the leaf mapping `va`. Takes the owner's
    /// page-table lock: never call it with that lock held (from a notifier callback).
    pub fn mark_young(&self, va: VirtAddr) -> Result<bool, FaultError> {
        let owner = self
            .fault_handler
            .as_ref()
            .and_then(Weak::upgrade)
            .ok_or(FaultError::NoHandler)?;
        owner.mark_young(va)
    }

    /// The number of user references (`mm_users`).
    pub fn users(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }

    /// Takes the mmap lock for reading.
    pub fn mmap_read(&self) -> MmapReadGuard<'_> {
        MmapReadGuard {
            mm: self,
            _guard: self.mmap_lock.read(),
        }
    }

    /// Takes the mmap lock for writing.
    pub fn mmap_write(&self) -> MmapWriteGuard<'_> {
        MmapWriteGuard {
            mm: self,
            _guard: self.mmap_lock.write(),
        }
    }

    /// True once anything has subscribed (`mm_has_notifiers`).
    pub fn has_notifiers(&self) -> bool {
        !self.subscriptions.load(Ordering::Relaxed).is_null()
    }

    /// The subscriptions, if allocated.
    #[inline]
    pub(crate) fn subscriptions(&self) -> Option<&Subscriptions> {
        let p = self.subscriptions.load(Ordering::Acquire);
        // SAFETY: a non-null pointer was published (release) by `install_subscriptions` and is
        // freed only in `Drop`, which cannot run while `&self` is alive.
        unsafe { p.as_ref() }
    }

    /// The subscriptions of an address space that has subscribers (a subscriber exists, so
    /// they were installed and are never freed before it).
    pub(crate) fn subscriptions_of_subscribed(&self) -> &Subscriptions {
        match self.subscriptions() {
            Some(subs) => subs,
            None => unreachable!("a subscriber exists, so its subscriptions were installed"),
        }
    }

    /// Returns the subscriptions, allocating and publishing them on first use. The write lock
    /// makes us the only installer.
    pub(crate) fn install_subscriptions(
        &self,
        _lock: &MmapWriteGuard<'_>,
    ) -> Result<&Subscriptions, NotifierError> {
        if let Some(subs) = self.subscriptions() {
            return Ok(subs);
        }
        let subs = try_box(Subscriptions::new())?;
        // Release: unlocked readers (invalidations outside the mmap lock, `read_begin`) that
        // load the pointer with acquire see initialised contents.
        self.subscriptions
            .store(alloc::boxed::Box::into_raw(subs), Ordering::Release);
        Ok(self.subscriptions_of_subscribed())
    }
}

impl Drop for MmCore {
    fn drop(&mut self) {
        let p = self.subscriptions.load(Ordering::Acquire);
        if p.is_null() {
            return;
        }
        // SAFETY: the pointer came from `Box::into_raw` in `install_subscriptions`; the count
        // reached zero so no subscriber (each holds a count) and no borrower remains.
        let subs = unsafe { alloc::boxed::Box::from_raw(p) };
        debug_assert!(
            subs.list_is_empty(),
            "address space destroyed with list subscribers linked"
        );
        drop(subs);
    }
}

impl<'a> MmapReadGuard<'a> {
    /// The address space whose lock is held.
    #[inline]
    pub fn mm(&self) -> &'a MmCore {
        self.mm
    }
}

impl<'a> MmapWriteGuard<'a> {
    /// The address space whose lock is held.
    #[inline]
    pub fn mm(&self) -> &'a MmCore {
        self.mm
    }
}

impl core::fmt::Debug for MmCore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MmCore")
            .field("users", &self.users())
            .field("has_notifiers", &self.has_notifiers())
            .finish_non_exhaustive()
    }
}
