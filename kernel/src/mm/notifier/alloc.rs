//! Fallible allocation for the notifier core: out of memory is an error, not a panic.

use alloc::alloc::{alloc, Layout};
use alloc::boxed::Box;
use core::fmt;

/// An allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory;

impl fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("out of memory")
    }
}

/// `Box::new` that reports allocation failure (stable Rust has no `Box::try_new`).
pub(crate) fn try_box<T>(value: T) -> Result<Box<T>, OutOfMemory> {
    #[cfg(test)]
    if inject::should_fail() {
        return Err(OutOfMemory);
    }
    let layout = Layout::new::<T>();
    if layout.size() == 0 {
        return Ok(Box::new(value));
    }
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { alloc(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(OutOfMemory);
    }
    // SAFETY: `ptr` is a fresh allocation from the global allocator with `T`'s layout, which is
    // exactly what `Box<T>` owns and later frees; writing initialises it.
    unsafe {
        ptr.write(value);
        Ok(Box::from_raw(ptr))
    }
}

/// Test-only allocation failure injection (per thread, so parallel tests do not interfere).
#[cfg(test)]
pub(crate) mod inject {
    use core::cell::Cell;

    std::thread_local! {
        static FAIL_AFTER: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// Makes the allocation after `n` more successful ones fail (once).
    pub(crate) fn fail_after(n: usize) {
        FAIL_AFTER.with(|f| f.set(Some(n)));
    }

    pub(super) fn should_fail() -> bool {
        FAIL_AFTER.with(|f| match f.get() {
            Some(0) => {
                f.set(None);
                true
            }
            Some(n) => {
                f.set(Some(n - 1));
                false
            }
            None => false,
        })
    }
}
