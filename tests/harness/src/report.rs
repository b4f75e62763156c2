//! The human summary of a run (kunit.py-like) and the `--repeat` pass-count table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::capture::Capture;
use crate::ktap::{Counts, Outcome, TestResult};

/// Log lines shown under a failing test.
const LOG_LINES: usize = 30;
/// Failing tests listed before "... and N more".
const MAX_LISTED: usize = 25;

/// The per-board summary: one line per suite, failing tests with their logs, the totals line
/// `Testing complete. Ran N tests: passed: X, failed: Y, skipped: Z`; after a failure the
/// console tail, the emulator's stderr and the log's path, then the failures, each naming its
/// test. It ends with [`closing_line`].
pub fn summary(board: &str, cap: &Capture, verbose: bool, log_path: Option<&Path>) -> String {
    let mut s = String::new();
    let doc = &cap.document;
    let _ = writeln!(s, "{:=^70}", format!(" {board} "));
    for suite in &doc.tests {
        suite_lines(&mut s, suite, verbose);
    }
    let _ = writeln!(s, "{}", "-".repeat(70));
    if let Some(seed) = &doc.seed {
        let _ = writeln!(s, "seed={seed} (replay with --bootargs seed={seed})");
    }
    let counts = doc.counts();
    let _ = writeln!(
        s,
        "Testing complete. Ran {} tests: {counts} (board: {board}, {}, {:.2} s)",
        counts.total(),
        cap.end,
        cap.elapsed.as_secs_f64()
    );
    let failures = cap.failures();
    if !failures.is_empty() {
        s.push_str(&failure_context(cap, log_path));
        let _ = writeln!(s, "FAILED on {board}:");
        for f in failures.iter().take(MAX_LISTED) {
            let _ = writeln!(s, "  - {f}");
        }
        if failures.len() > MAX_LISTED {
            let _ = writeln!(s, "  ... and {} more", failures.len() - MAX_LISTED);
        }
    }
    let _ = writeln!(s, "{}", closing_line(board, &counts, failures.len()));
    s
}

/// `<label>: P passed, F failed, S skipped`: F counts the failures listed above it (failing
/// tests, crashed tests and run-level failures such as a timeout), so that it is 0 exactly
/// when the run passed. The format is the plain closing line CI log readers recognise.
pub fn closing_line(label: &str, counts: &Counts, failures: usize) -> String {
    format!(
        "{label}: {} passed, {failures} failed, {} skipped",
        counts.passed,
        counts.skipped + counts.xfail
    )
}

fn suite_lines(s: &mut String, suite: &TestResult, verbose: bool) {
    let counts = Counts::of(suite);
    let n = counts.total();
    let tests = if n == 1 {
        "1 test".to_string()
    } else {
        format!("{n} tests")
    };
    let reason = if suite.comment.is_empty() {
        String::new()
    } else {
        format!(" # {}", suite.comment)
    };
    if suite.outcome == Outcome::Passed && counts.skipped + counts.xfail == 0 {
        let _ = writeln!(s, "[PASSED] {} ({tests}){}", suite.name, duration(suite));
    } else {
        let _ = writeln!(
            s,
            "[{}] {} ({tests}): {counts}{reason}",
            suite.outcome.label(),
            suite.name
        );
    }
    if let Some(note) = &suite.note {
        let _ = writeln!(s, "    ({note})");
    }
    for sub in &suite.subtests {
        case_lines(s, sub, "", verbose, 1);
    }
}

fn case_lines(s: &mut String, test: &TestResult, prefix: &str, verbose: bool, depth: usize) {
    let path = if prefix.is_empty() {
        test.name.clone()
    } else {
        format!("{prefix}.{}", test.name)
    };
    let indent = "    ".repeat(depth);
    if !test.is_leaf() {
        for sub in &test.subtests {
            case_lines(s, sub, &path, verbose, depth);
        }
        return;
    }
    let failing = test.outcome.is_failure();
    if !failing && !verbose {
        return;
    }
    let mut line = format!("{indent}[{}] {path}", test.outcome.label());
    if let Some(d) = test.directive {
        let _ = write!(line, " # {} {}", d.as_str(), test.comment);
    }
    if let Some(note) = &test.note {
        let _ = write!(line, ": {note}");
    }
    let _ = writeln!(s, "{}{}", line.trim_end(), duration(test));
    if failing {
        let skip = test.log.len().saturating_sub(LOG_LINES);
        if skip > 0 {
            let _ = writeln!(s, "{indent}    ... {skip} earlier lines in the log");
        }
        for l in &test.log[skip..] {
            let _ = writeln!(s, "{indent}    {l}");
        }
    }
}

fn duration(test: &TestResult) -> String {
    match test.duration {
        Some(d) if d.as_secs_f64() >= 0.01 => format!(" {:.2} s", d.as_secs_f64()),
        _ => String::new(),
    }
}

/// What to show for a failed run: the last console lines, QEMU's stderr, and where the full
/// log is.
fn failure_context(cap: &Capture, log_path: Option<&Path>) -> String {
    let mut s = String::new();
    if !cap.tail.is_empty() {
        let _ = writeln!(s, "--- last {} console lines ---", cap.tail.len());
        for l in &cap.tail {
            let _ = writeln!(s, "{l}");
        }
    }
    if !cap.stderr.is_empty() {
        let _ = writeln!(s, "--- emulator stderr ---");
        for l in cap.stderr.iter().rev().take(20).rev() {
            let _ = writeln!(s, "{l}");
        }
    }
    if let Some(path) = log_path {
        let _ = writeln!(s, "--- full console log: {} ---", path.display());
    }
    s
}

/// Pass counts per test over repeated runs (the flakiness finder).
#[derive(Debug, Default)]
pub struct Tally {
    runs: usize,
    /// Test path → (runs it passed, runs it was reported in).
    tests: BTreeMap<String, (usize, usize)>,
    /// Runs that failed, with their seed.
    failed_runs: Vec<(usize, Option<String>)>,
}

impl Tally {
    pub fn add(&mut self, cap: &Capture) {
        self.runs += 1;
        for suite in &cap.document.tests {
            suite.walk("", &mut |path, t| {
                if t.is_leaf() {
                    let entry = self.tests.entry(path.to_string()).or_default();
                    entry.1 += 1;
                    if !t.outcome.is_failure() {
                        entry.0 += 1;
                    }
                }
            });
        }
        if !cap.passed() {
            self.failed_runs
                .push((self.runs, cap.document.seed.clone()));
        }
    }

    /// Runs that failed.
    pub fn failed_runs(&self) -> usize {
        self.failed_runs.len()
    }

    /// Tests that failed in some runs but not all ("flaky"), and those that never passed.
    pub fn render(&self, board: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{:=^70}", format!(" {board}: {} runs ", self.runs));
        let mut unstable = 0;
        for (path, &(passed, seen)) in &self.tests {
            if passed == self.runs && seen == self.runs {
                continue;
            }
            unstable += 1;
            let label = match passed {
                0 => "FAILING",
                _ => "FLAKY",
            };
            let missing = if seen < self.runs {
                format!(" (reported in {seen} runs)")
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "[{label}] {path}: passed {passed}/{}{missing}",
                self.runs
            );
        }
        let stable = self.tests.len() - unstable;
        let _ = writeln!(
            s,
            "{stable} of {} tests passed in all {} runs",
            self.tests.len(),
            self.runs
        );
        for (run, seed) in &self.failed_runs {
            match seed {
                Some(seed) => {
                    let _ = writeln!(
                        s,
                        "run {run} failed (seed={seed}: replay with --bootargs seed={seed})"
                    );
                }
                None => {
                    let _ = writeln!(s, "run {run} failed");
                }
            }
        }
        let _ = writeln!(
            s,
            "{}: {} of {} runs passed",
            board,
            self.runs - self.failed_runs.len(),
            self.runs
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::End;
    use crate::ktap::parse;
    use std::time::Duration;

    fn capture(text: &str, end: End) -> Capture {
        Capture {
            document: parse(text),
            end,
            elapsed: Duration::from_millis(1500),
            tail: vec![],
            stderr: vec![],
            board_checks: Vec::new(),
        }
    }

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/fixtures/{name}.ktap",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn passing_summary_has_suites_totals_and_verdict() {
        let s = summary(
            "virt",
            &capture(&fixture("pass"), End::Exited(0)),
            false,
            None,
        );
        assert!(s.contains("[PASSED] boot (3 tests)"), "{s}");
        assert!(s.contains("[PASSED] exceptions (1 test)"), "{s}");
        assert!(s.contains("seed=12345"), "{s}");
        assert!(
            s.contains("Testing complete. Ran 6 tests: passed: 6, failed: 0, skipped: 0 (board: virt, exited with status 0, 1.50 s)"),
            "{s}"
        );
        assert!(
            s.ends_with("\nvirt: 6 passed, 0 failed, 0 skipped\n"),
            "{s}"
        );
    }

    #[test]
    fn failing_summary_shows_the_test_and_its_log() {
        let mut cap = capture(&fixture("fail-not-ok"), End::Exited(1));
        cap.tail = vec!["not ok 2 mm".into()];
        let s = summary(
            "virt-smmu",
            &cap,
            false,
            Some(Path::new("build/logs/virt-smmu.log")),
        );
        assert!(
            s.contains("[FAILED] mm (3 tests): passed: 2, failed: 1, skipped: 0"),
            "{s}"
        );
        assert!(
            s.contains("    [FAILED] frames_alloc_free\n        # frames_alloc_free: expected 255"),
            "{s}"
        );
        // The console tail and the log's path come before the failures, which end the summary.
        assert!(
            s.contains(
                "--- last 1 console lines ---\nnot ok 2 mm\n--- full console log: build/logs/virt-smmu.log ---\n\
                 FAILED on virt-smmu:\n  - mm.frames_alloc_free: not ok [line 16]\n  - (kernel): the kernel reported exit status 1\n\
                 virt-smmu: 3 passed, 2 failed, 0 skipped\n"
            ),
            "{s}"
        );
        // The kernel's status came through QEMU: reported once, as the kernel's.
        assert_eq!(s.matches("status 1").count(), 2, "{s}"); // the totals line and the failure
    }

    #[test]
    fn verbose_lists_every_case_with_directives() {
        let s = summary(
            "virt",
            &capture(&fixture("nested-skips"), End::Exited(0)),
            true,
            None,
        );
        assert!(
            s.contains("[SKIPPED] smmu.ste_encoding # SKIP no SMMU on this board"),
            "{s}"
        );
        assert!(
            s.contains("[XFAIL] smmu.ats # TODO ATS is not implemented yet"),
            "{s}"
        );
        assert!(
            s.contains(
                "[SKIPPED] pi_only (1 test): passed: 0, failed: 0, skipped: 1 # not a Raspberry Pi"
            ),
            "{s}"
        );
        assert!(s.ends_with("virt: 3 passed, 0 failed, 4 skipped\n"), "{s}");
    }

    #[test]
    fn tally_finds_flaky_and_failing_tests() {
        let good = fixture("pass");
        let bad = good
            .replace("  ok 2 frames_alloc_free", "  not ok 2 frames_alloc_free")
            .replace("ok 2 mm", "not ok 2 mm");
        let mut tally = Tally::default();
        tally.add(&capture(&good, End::Exited(0)));
        tally.add(&capture(&bad, End::Exited(1)));
        tally.add(&capture(&good, End::Exited(0)));
        let s = tally.render("virt");
        assert!(
            s.contains("[FLAKY] mm.frames_alloc_free: passed 2/3"),
            "{s}"
        );
        assert!(s.contains("5 of 6 tests passed in all 3 runs"), "{s}");
        assert!(s.contains("run 2 failed (seed=12345"), "{s}");
        assert!(s.contains("virt: 2 of 3 runs passed"), "{s}");
        assert_eq!(tally.failed_runs(), 1);
    }
}
