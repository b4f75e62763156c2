//! An `UnsafeCell` with loom's closure-based API, so that model checks track every access.
//!
//! Outside loom this is a zero-cost wrapper around [`core::cell::UnsafeCell`]; under loom it is
//! `loom::cell::UnsafeCell`, which reports a concurrent read/write or write/write pair as a bug.

#[cfg(loom)]
pub use loom::cell::UnsafeCell;

/// Interior mutability whose accesses are spelled `with`/`with_mut` (loom-compatible).
#[cfg(not(loom))]
#[derive(Debug, Default)]
pub struct UnsafeCell<T: ?Sized>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    /// The value, consuming the cell.
    pub fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

#[cfg(not(loom))]
impl<T: ?Sized> UnsafeCell<T> {
    /// Runs `f` with a shared raw pointer to the value. The caller's protocol must exclude
    /// writers for as long as `f` runs.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with a unique raw pointer to the value. The caller's protocol must exclude every
    /// other access for as long as `f` runs.
    #[inline]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
