//! Per-case results as JSON, for board farms and any CI that wants more than a verdict.
//!
//! ```json
//! { "runs": [ { "name": "virt-smmu", "passed": true,
//!               "counts": { "passed": 54, "failed": 0, "skipped": 6, ... },
//!               "cases": [ { "suite": "boot", "name": "cpus_online", "status": "PASS",
//!                            "duration_ms": 1.5, "diagnostics": ["# took 120 ms"] } ] } ] }
//! ```
//!
//! `status` uses KernelCI's words, as Linux's `kunit.py parse --json` does: `PASS`, `FAIL`,
//! `SKIP`, `ERROR` (the case never reported: the kernel crashed, hung or bailed out), plus
//! `XFAIL` for a `not ok` with a TODO/XFAIL directive. `duration_ms` is `null` for a log parsed
//! without timestamps; `reason` holds a skip reason or the harness's own note.

use serde_json::{json, Value};

use crate::ktap::{Document, Outcome, TestResult};

/// KernelCI's status word for an outcome.
pub fn status(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Passed => "PASS",
        Outcome::Failed => "FAIL",
        Outcome::Skipped => "SKIP",
        Outcome::ExpectedFail => "XFAIL",
        Outcome::Crashed => "ERROR",
    }
}

/// One run (a board, a log) as a JSON object.
pub fn run(name: &str, document: &Document, passed: bool) -> Value {
    let counts = document.counts();
    json!({
        "name": name,
        "passed": passed,
        "counts": {
            "passed": counts.passed,
            "failed": counts.failed,
            "skipped": counts.skipped,
            "xfail": counts.xfail,
            "crashed": counts.crashed,
            "format_errors": counts.errors,
        },
        "cases": cases(document),
    })
}

/// The whole file: `{"runs": [...]}`.
pub fn file(runs: Vec<Value>) -> Value {
    json!({ "runs": runs })
}

/// Every leaf test, with the dotted path of its parents as the suite.
pub fn cases(document: &Document) -> Vec<Value> {
    let mut out = Vec::new();
    for suite in &document.tests {
        suite.walk("", &mut |path, t| {
            if t.is_leaf() {
                out.push(case(path, t));
            }
        });
    }
    out
}

fn case(path: &str, t: &TestResult) -> Value {
    let suite = path
        .strip_suffix(t.name.as_str())
        .and_then(|p| p.strip_suffix('.'))
        .unwrap_or("");
    let reason = match (t.outcome, &t.note) {
        (_, Some(note)) => Some(note.clone()),
        (Outcome::Skipped, None) if !t.comment.is_empty() => Some(t.comment.clone()),
        _ => None,
    };
    json!({
        "suite": suite,
        "name": t.name,
        "status": status(t.outcome),
        "duration_ms": t.duration.map(|d| d.as_secs_f64() * 1e3),
        "reason": reason,
        "diagnostics": t.log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ktap::parse;

    const LOG: &str = "KTAP version 1\n1..2\n  KTAP version 1\n  # Subtest: boot\n  1..2\n  \
        # expected 4\n  not ok 1 cpus\n  ok 2 dt # SKIP no tree\nnot ok 1 boot\n  KTAP version 1\n  \
        # Subtest: mm\n  1..1\n";

    #[test]
    fn every_case_is_listed_with_its_suite_status_and_diagnostics() {
        let v = run("virt", &parse(LOG), false);
        let cases = v["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 3);
        assert_eq!(cases[0]["suite"], "boot");
        assert_eq!(cases[0]["name"], "cpus");
        assert_eq!(cases[0]["status"], "FAIL");
        assert_eq!(cases[0]["diagnostics"][0], "# expected 4");
        assert_eq!(cases[1]["status"], "SKIP");
        assert_eq!(cases[1]["reason"], "no tree");
        // The log ends inside `mm`: its one case never reported.
        assert_eq!(cases[2]["suite"], "mm");
        assert_eq!(cases[2]["status"], "ERROR");
        assert!(cases[2]["reason"].is_string());
        assert!(cases[0]["duration_ms"].is_null(), "an untimed log");
        assert_eq!(v["counts"]["failed"], 1);
        assert_eq!(v["counts"]["crashed"], 1);
        assert_eq!(v["passed"], false);
    }
}
