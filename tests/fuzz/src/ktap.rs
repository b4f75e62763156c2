//! Target `ktap`: the harness's KTAP parser on arbitrary console output. Whatever the bytes:
//! no panic; parsing the console's lines with and without timestamps (as the QEMU runner and
//! `harness parse` do) gives the same verdict; the verdict is consistent with the results (a failing or crashed test, a bail-out,
//! or no KTAP at all fails the run, naming the test); the JUnit XML is well-formed.

use std::time::Duration;

use shootdown_harness::capture::{Capture, End, LineSplitter};
use shootdown_harness::junit::{self, RunInfo};
use shootdown_harness::ktap::{Outcome, Parser};

/// Runs `data` through the parser and checks the verdict.
pub fn fuzz(data: &[u8]) {
    // The console's line splitting, fed in two pieces (a line may straddle reads).
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut splitter = LineSplitter::default();
    let mut lines = Vec::new();
    splitter.push(&data[..cut], &mut lines);
    splitter.push(&data[cut..], &mut lines);
    splitter.finish(&mut lines);

    let mut parser = Parser::new();
    for (i, line) in lines.iter().enumerate() {
        parser.push(line, Some(Duration::from_millis(i as u64)));
        let _ = (parser.position(), parser.started(), parser.finished());
    }
    let timed = parser.finish();
    let mut parser = Parser::new();
    for line in &lines {
        parser.push(line, None);
    }
    let untimed = parser.finish();
    let failures = timed.failures();
    assert_eq!(
        failures,
        untimed.failures(),
        "timed and untimed parses disagree"
    );
    assert_eq!(timed.counts(), untimed.counts());

    let counts = timed.counts();
    assert_eq!(counts.errors, timed.problems.len());
    let mut leaves = 0;
    for t in &timed.tests {
        t.walk("", &mut |path, t| {
            if !t.is_leaf() {
                return;
            }
            leaves += 1;
            if matches!(t.outcome, Outcome::Failed | Outcome::Crashed) {
                assert!(
                    failures.iter().any(|f| f.test == path),
                    "failing test {path} is not named in {failures:?}"
                );
            }
        });
    }
    assert_eq!(counts.total(), leaves);
    if !timed.ktap_found || timed.bail_out.is_some() || counts.failed + counts.crashed > 0 {
        assert!(!timed.passed(), "a failing transcript passed: {timed:?}");
    }

    let capture = Capture {
        document: timed,
        end: End::Exited(0),
        elapsed: Duration::from_millis(lines.len() as u64),
        tail: lines.iter().rev().take(3).cloned().collect(),
        stderr: Vec::new(),
        board_checks: Vec::new(),
    };
    let xml = junit::render(
        "fuzz",
        &[RunInfo {
            board: "virt",
            repeat: None,
            capture: &capture,
        }],
    );
    if let Err(e) = roxmltree::Document::parse(&xml) {
        panic!("JUnit XML is not well-formed ({e}):\n{xml}");
    }
}
