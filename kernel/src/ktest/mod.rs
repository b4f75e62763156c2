//! In-kernel tests: self-registering test cases grouped in suites, reported as KTAP version 1
//! (Linux `Documentation/dev-tools/ktap.rst`).
//!
//! A test is declared with [`ktest!`](crate::ktest!) (the suites are in `suites/`); the macro
//! places a [`KTest`] descriptor in the `.ktest.cases` linker section, so there is no central
//! list to edit. At boot, `ktest=<glob>` selects tests and the runner prints:
//!
//! ```text
//! KTAP version 1
//! 1..2
//!   KTAP version 1
//!   # Subtest: boot
//!   1..3
//!   ok 1 reached
//!   ...
//! ok 1 boot
//! ```
//!
//! A failed assertion fails only its test; a panic or an unexpected exception inside a test
//! prints `Bail out!` with the reason and the kernel exits non-zero.
#![deny(unsafe_code)]

pub mod glob;
pub mod ktap;
#[cfg(target_os = "none")]
pub mod runner;

use alloc::string::String;

/// Why a test did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestError {
    /// An assertion failed (message includes where).
    Fail(String),
    /// The test does not apply here (e.g. needs a device this board lacks).
    Skip(String),
}

/// What a test returns.
pub type TestResult = Result<(), TestError>;

/// Context handed to each test.
pub struct TestCtx {
    /// The run's seed (`seed=`), mixed with the test's name so every test gets its own stream.
    pub seed: u64,
    rng: u64,
}

impl TestCtx {
    /// A context for a test named `suite.case` in a run seeded with `seed`.
    pub fn new(seed: u64, suite: &str, case: &str) -> Self {
        let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
        for b in suite
            .bytes()
            .chain(core::iter::once(b'.'))
            .chain(case.bytes())
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Self { seed, rng: h | 1 }
    }

    /// Next pseudo-random number (xorshift64*: deterministic for a given seed).
    pub fn rand(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A pseudo-random number in `[lo, hi)`.
    pub fn rand_range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.rand() % (hi - lo).max(1)
    }
}

/// A registered test (`repr(C)`: the runner reads an array of them the linker assembled).
#[repr(C)]
pub struct KTest {
    /// Suite (group) name.
    pub suite: &'static str,
    /// Case name.
    pub name: &'static str,
    /// The test body.
    pub run: fn(&mut TestCtx) -> TestResult,
}

/// Declares an in-kernel test: `ktest!(suite, name, |t| { ...; Ok(()) });`
#[macro_export]
macro_rules! ktest {
    ($suite:ident, $name:ident, $body:expr) => {
        const _: () = {
            #[used]
            #[link_section = ".ktest.cases"]
            static CASE: $crate::ktest::KTest = $crate::ktest::KTest {
                suite: stringify!($suite),
                name: stringify!($name),
                run: $body,
            };
        };
    };
}

/// Fails the current test unless `cond` holds.
#[macro_export]
macro_rules! kassert {
    ($cond:expr) => {
        if !$cond {
            return Err($crate::ktest::TestError::Fail(alloc::format!(
                "{}:{}: assertion failed: {}", file!(), line!(), stringify!($cond)
            )));
        }
    };
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::ktest::TestError::Fail(alloc::format!(
                "{}:{}: {}", file!(), line!(), format_args!($($fmt)+)
            )));
        }
    };
}

/// Fails the current test unless both sides are equal (optionally with a message).
#[macro_export]
macro_rules! kassert_eq {
    ($left:expr, $right:expr $(,)?) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    return Err($crate::ktest::TestError::Fail(alloc::format!(
                        "{}:{}: {} == {} failed: {:?} != {:?}",
                        file!(),
                        line!(),
                        stringify!($left),
                        stringify!($right),
                        l,
                        r
                    )));
                }
            }
        }
    };
    ($left:expr, $right:expr, $($fmt:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    return Err($crate::ktest::TestError::Fail(alloc::format!(
                        "{}:{}: {} == {} failed: {:?} != {:?}: {}",
                        file!(),
                        line!(),
                        stringify!($left),
                        stringify!($right),
                        l,
                        r,
                        format_args!($($fmt)+)
                    )));
                }
            }
        }
    };
}

/// Skips the current test with a reason.
#[macro_export]
macro_rules! kskip {
    ($($fmt:tt)+) => {
        return Err($crate::ktest::TestError::Skip(alloc::format!($($fmt)+)))
    };
}
