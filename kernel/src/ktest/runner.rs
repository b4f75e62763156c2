//! Runs the registered tests that `ktest=` selects and prints KTAP.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, Ordering};

use super::glob::selected;
use super::ktap::{KtapWriter, Outcome};
use super::{KTest, TestCtx, TestError};

extern "C" {
    static __ktest_start: u8;
    static __ktest_end: u8;
}

/// Every test linked into the kernel, in link order.
#[allow(unsafe_code)] // the linker assembled the array: only a raw slice can name it
pub fn all_tests() -> &'static [KTest] {
    // SAFETY: the linker script collects all `.ktest.cases` statics (each a `KTest`, placed by
    // `ktest!` with `#[used]`) contiguously between these two symbols, suitably aligned.
    unsafe {
        let start = core::ptr::addr_of!(__ktest_start) as *const KTest;
        let end = core::ptr::addr_of!(__ktest_end) as *const KTest;
        let n = (end as usize - start as usize) / core::mem::size_of::<KTest>();
        core::slice::from_raw_parts(start, n)
    }
}

/// The test running now (for `Bail out!` on a panic or crash).
static CURRENT: AtomicPtr<KTest> = AtomicPtr::new(core::ptr::null_mut());

/// `suite.case` of the test running now, if any.
#[allow(unsafe_code)] // an atomic pointer into `all_tests()`, turned back into a reference
pub fn current_test() -> Option<&'static KTest> {
    let p = CURRENT.load(Ordering::Acquire);
    // SAFETY: CURRENT only ever holds null or a pointer into `all_tests()`, which is 'static.
    unsafe { p.as_ref() }
}

/// Console sink for the KTAP writer.
struct Console;

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        crate::print!("{s}");
        Ok(())
    }
}

/// A filter that selects no case: a typo in a lab's filter must not pass for ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NothingSelected {
    /// The boot argument (`ktest` or `bench`).
    pub what: &'static str,
    /// Its value.
    pub filter: alloc::string::String,
    /// How many cases there are.
    pub cases: usize,
}

impl core::fmt::Display for NothingSelected {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{}={} selects none of the {} cases (globs with * and ?, comma-separated; `suite` or `suite.case`)",
            self.what, self.filter, self.cases
        )
    }
}

/// Runs the tests selected by `filter` and returns the number that failed.
pub fn run(filter: &str, seed: u64) -> Result<usize, NothingSelected> {
    run_cases(all_tests(), "ktest", filter, seed)
}

/// The cases of `tests` that `filter` selects (at least one).
pub fn select(
    tests: &'static [KTest],
    what: &'static str,
    filter: &str,
) -> Result<Vec<&'static KTest>, NothingSelected> {
    let chosen: Vec<&'static KTest> = tests
        .iter()
        .filter(|t| selected(filter, t.suite, t.name))
        .collect();
    if chosen.is_empty() {
        return Err(NothingSelected {
            what,
            filter: filter.into(),
            cases: tests.len(),
        });
    }
    Ok(chosen)
}

/// Runs the cases of `tests` selected by `filter` as one KTAP document (`what` names the
/// selecting boot argument in its header) and returns the number that failed.
pub fn run_cases(
    tests: &'static [KTest],
    what: &'static str,
    filter: &str,
    seed: u64,
) -> Result<usize, NothingSelected> {
    let chosen = select(tests, what, filter)?;
    let mut suites: Vec<&'static str> = Vec::new();
    for t in &chosen {
        if !suites.contains(&t.suite) {
            suites.push(t.suite);
        }
    }
    // Link order is arbitrary; suites in name order make runs comparable.
    suites.sort_unstable();

    let mut w = KtapWriter::new(Console);
    let _ = w.header(suites.len());
    let _ = w.diagnostic(&alloc::format!("seed={seed}"));
    let _ = w.diagnostic(&alloc::format!(
        "{what}={filter} ({} of {} tests selected)",
        chosen.len(),
        tests.len()
    ));
    let mut failed_total = 0;
    for (si, suite) in suites.iter().enumerate() {
        let cases: Vec<&&'static KTest> = chosen.iter().filter(|t| t.suite == *suite).collect();
        w.enter();
        let _ = w.suite_header(suite, cases.len());
        let mut failed = 0;
        for (ci, case) in cases.iter().enumerate() {
            CURRENT.store(**case as *const KTest as *mut KTest, Ordering::Release);
            let mut ctx = TestCtx::new(seed, case.suite, case.name);
            let start = crate::arch::aarch64::timer::now_ns();
            let result = (case.run)(&mut ctx);
            let ms = (crate::arch::aarch64::timer::now_ns() - start) / 1_000_000;
            CURRENT.store(core::ptr::null_mut(), Ordering::Release);
            match result {
                Ok(()) => {
                    if ms >= 100 {
                        let _ = w.diagnostic(&alloc::format!("{} took {ms} ms", case.name));
                    }
                    let _ = w.result(ci + 1, case.name, Outcome::Pass, None);
                }
                Err(TestError::Skip(reason)) => {
                    let _ = w.result(ci + 1, case.name, Outcome::Skip, Some(&reason));
                }
                Err(TestError::Fail(msg)) => {
                    failed += 1;
                    let _ = w.diagnostic(&msg);
                    let _ = w.result(ci + 1, case.name, Outcome::Fail, None);
                }
            }
        }
        w.leave();
        let outcome = if failed > 0 {
            Outcome::Fail
        } else {
            Outcome::Pass
        };
        let _ = w.result(si + 1, suite, outcome, None);
        failed_total += failed;
    }
    Ok(failed_total)
}
