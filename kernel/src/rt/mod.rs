//! The runtime under everything: how the kernel ends ([`exit`], the panic handler) and its heap.
//!
//! It knows nothing of tests: which test is running, for the `Bail out!` line of a crash, comes
//! through a hook the composition root installs ([`set_test_name`]).

pub mod exit;
pub mod heap;
mod panic;

pub use exit::{exit, exit_because, exit_now, fatal_exit, ExitCode};

/// Names the test running on this kernel, as `(suite, case)`, if one is.
pub type TestNameHook = fn() -> Option<(&'static str, &'static str)>;

static TEST_NAME: spin::Once<TestNameHook> = spin::Once::new();

/// Tells the crash paths how to name the running test (once, at boot).
pub fn set_test_name(hook: TestNameHook) {
    TEST_NAME.call_once(|| hook);
}

/// The running test, if the hook is installed and a test runs.
fn current_test() -> Option<(&'static str, &'static str)> {
    TEST_NAME.get().and_then(|hook| hook())
}
