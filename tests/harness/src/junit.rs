//! JUnit XML (the de-facto schema read by Jenkins, GitLab and GitHub reporters).
//!
//! One `<testsuite>` per top-level KTAP test (suite), one `<testcase>` per leaf test (nested
//! subtests flattened to `sub.case`), with `<failure>` for `not ok`, `<error>` for a crashed
//! (never reported) test and `<skipped>` for SKIP/TODO/XFAIL; the test's log is the element
//! text. Every run also gets a `harness` suite with one `run` case that carries run-level
//! failures (no KTAP, bail-out, timeout, emulator status, format errors), so a CI system shows
//! a red run even when no individual test failed.

use std::fmt::Write as _;

use crate::capture::Capture;
use crate::ktap::{Counts, Directive, Outcome, TestResult};

/// One run to report.
pub struct RunInfo<'a> {
    pub board: &'a str,
    /// `Some((k, n))` in `--repeat` mode: run k of n (suite names get ` [run k]`).
    pub repeat: Option<(usize, usize)>,
    pub capture: &'a Capture,
}

/// The JUnit document for `runs`.
pub fn render(name: &str, runs: &[RunInfo<'_>]) -> String {
    let mut suites = String::new();
    let mut total = Counts::default();
    let mut time = 0.0;
    // With several boards in one file, suite names carry the board (`virt/boot`).
    let qualify = runs.iter().any(|r| r.board != runs[0].board);
    for run in runs {
        let (xml, counts) = run_suites(run, qualify);
        suites.push_str(&xml);
        total.passed += counts.passed;
        total.failed += counts.failed;
        total.skipped += counts.skipped + counts.xfail;
        total.crashed += counts.crashed;
        time += run.capture.elapsed.as_secs_f64();
    }
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{time:.3}\">",
        escape(name),
        total.passed + total.failed + total.skipped + total.crashed,
        total.failed,
        total.crashed,
        total.skipped,
    );
    out.push_str(&suites);
    out.push_str("</testsuites>\n");
    out
}

/// Counts as JUnit sees them: `crashed` = errors, `skipped` includes expected failures.
fn run_suites(run: &RunInfo<'_>, qualify: bool) -> (String, Counts) {
    let cap = run.capture;
    let doc = &cap.document;
    let suffix = run
        .repeat
        .map(|(k, _)| format!(" [run {k}]"))
        .unwrap_or_default();
    let prefix = if qualify {
        format!("{}/", run.board)
    } else {
        String::new()
    };
    let mut xml = String::new();
    let mut total = Counts::default();
    let mut loose = Vec::new();
    for test in &doc.tests {
        if test.is_leaf() && test.plan.is_none() {
            loose.push(test);
            continue;
        }
        let mut cases = Vec::new();
        for sub in &test.subtests {
            flatten(sub, "", &mut cases);
        }
        if cases.is_empty() {
            // A suite with an empty plan (`1..0 # SKIP`): one case stands for it.
            cases.push((test.name.clone(), test));
        }
        let suite_log = if test.log.is_empty() {
            None
        } else {
            Some(test.log.join("\n"))
        };
        let counts = suite(
            &mut xml,
            &format!("{prefix}{}{suffix}", test.name),
            &test.name,
            run,
            &cases,
            suite_log,
        );
        add(&mut total, counts);
    }
    if !loose.is_empty() {
        let cases: Vec<_> = loose.iter().map(|t| (t.name.clone(), *t)).collect();
        let counts = suite(
            &mut xml,
            &format!("{prefix}(top level){suffix}"),
            "(top level)",
            run,
            &cases,
            None,
        );
        add(&mut total, counts);
    }
    // The run itself.
    let run_failures: Vec<String> = {
        let test_paths = leaf_paths(&doc.tests);
        cap.failures()
            .into_iter()
            .filter(|f| !test_paths.contains(&f.test))
            .map(|f| f.to_string())
            .collect()
    };
    let classname = format!("{}.harness", run.board);
    let _ = writeln!(
        xml,
        "  <testsuite name=\"{}harness{}\" tests=\"1\" failures=\"0\" errors=\"{}\" skipped=\"0\" time=\"{:.3}\">",
        escape(&prefix),
        escape(&suffix),
        usize::from(!run_failures.is_empty()),
        cap.elapsed.as_secs_f64()
    );
    properties(&mut xml, run);
    let _ = write!(
        xml,
        "    <testcase name=\"run\" classname=\"{}\" time=\"{:.3}\"",
        escape(&classname),
        cap.elapsed.as_secs_f64()
    );
    if run_failures.is_empty() {
        xml.push_str("/>\n");
    } else {
        total.crashed += 1;
        let _ = writeln!(
            xml,
            ">\n      <error message=\"{}\" type=\"run\">{}</error>\n    </testcase>",
            escape(&run_failures[0]),
            escape(&run_failures.join("\n"))
        );
    }
    if !cap.tail.is_empty() || !cap.stderr.is_empty() {
        let mut out = cap.tail.join("\n");
        if !cap.stderr.is_empty() {
            out.push_str("\n--- emulator stderr ---\n");
            out.push_str(&cap.stderr.join("\n"));
        }
        let _ = writeln!(xml, "    <system-out>{}</system-out>", escape(&out));
    }
    xml.push_str("  </testsuite>\n");
    total.passed += usize::from(run_failures.is_empty());
    (xml, total)
}

fn add(total: &mut Counts, c: Counts) {
    total.passed += c.passed;
    total.failed += c.failed;
    total.skipped += c.skipped + c.xfail;
    total.crashed += c.crashed;
}

fn leaf_paths(tests: &[TestResult]) -> Vec<String> {
    let mut paths = Vec::new();
    for t in tests {
        t.walk("", &mut |path, _| paths.push(path.to_string()));
    }
    paths
}

/// Leaves under `test` as (`sub.case` name relative to the suite, test).
fn flatten<'a>(test: &'a TestResult, prefix: &str, out: &mut Vec<(String, &'a TestResult)>) {
    let name = if prefix.is_empty() {
        test.name.clone()
    } else {
        format!("{prefix}.{}", test.name)
    };
    if test.is_leaf() {
        out.push((name, test));
    } else {
        for sub in &test.subtests {
            flatten(sub, &name, out);
        }
    }
}

fn properties(xml: &mut String, run: &RunInfo<'_>) {
    let doc = &run.capture.document;
    xml.push_str("    <properties>\n");
    let _ = writeln!(
        xml,
        "      <property name=\"board\" value=\"{}\"/>",
        escape(run.board)
    );
    if let Some(seed) = &doc.seed {
        let _ = writeln!(
            xml,
            "      <property name=\"seed\" value=\"{}\"/>",
            escape(seed)
        );
    }
    if let Some((k, n)) = run.repeat {
        let _ = writeln!(xml, "      <property name=\"run\" value=\"{k}/{n}\"/>");
    }
    let _ = writeln!(
        xml,
        "      <property name=\"end\" value=\"{}\"/>",
        escape(&run.capture.end.to_string())
    );
    xml.push_str("    </properties>\n");
}

/// Writes one `<testsuite>`; returns its counts.
fn suite(
    xml: &mut String,
    name: &str,
    suite_name: &str,
    run: &RunInfo<'_>,
    cases: &[(String, &TestResult)],
    log: Option<String>,
) -> Counts {
    let mut counts = Counts::default();
    let mut body = String::new();
    let mut time = 0.0;
    let classname = format!("{}.{}", run.board, suite_name);
    for (case_name, t) in cases {
        let secs = t.duration.map(|d| d.as_secs_f64()).unwrap_or(0.0);
        time += secs;
        let _ = write!(
            body,
            "    <testcase name=\"{}\" classname=\"{}\" time=\"{secs:.3}\"",
            escape(case_name),
            escape(&classname)
        );
        let log = escape(&t.log.join("\n"));
        match t.outcome {
            Outcome::Passed => {
                counts.passed += 1;
                body.push_str("/>\n");
            }
            Outcome::Failed => {
                counts.failed += 1;
                let mut message = String::from("not ok");
                if let Some(d @ (Directive::Timeout | Directive::Error)) = t.directive {
                    let _ = write!(message, " # {}", d.as_str());
                }
                if !t.comment.is_empty() {
                    let _ = write!(message, " {}", t.comment);
                }
                if let Some(note) = &t.note {
                    let _ = write!(message, " ({note})");
                }
                let _ = writeln!(
                    body,
                    ">\n      <failure message=\"{}\" type=\"not ok\">{log}</failure>\n    </testcase>",
                    escape(&message)
                );
            }
            Outcome::Crashed => {
                counts.crashed += 1;
                let message = t.note.clone().unwrap_or_else(|| "no result line".into());
                let _ = writeln!(
                    body,
                    ">\n      <error message=\"{}\" type=\"crashed\">{log}</error>\n    </testcase>",
                    escape(&message)
                );
            }
            Outcome::Skipped | Outcome::ExpectedFail => {
                counts.skipped += 1;
                let what = match (t.outcome, t.directive) {
                    (Outcome::ExpectedFail, Some(d)) => {
                        format!("expected failure ({})", d.as_str())
                    }
                    _ => "skipped".to_string(),
                };
                let message = if t.comment.is_empty() {
                    what
                } else {
                    format!("{what}: {}", t.comment)
                };
                let _ = writeln!(
                    body,
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                    escape(&message)
                );
            }
        }
    }
    let _ = writeln!(
        xml,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{time:.3}\">",
        escape(name),
        cases.len(),
        counts.failed,
        counts.crashed,
        counts.skipped
    );
    properties(xml, run);
    xml.push_str(&body);
    if let Some(log) = log {
        let _ = writeln!(xml, "    <system-out>{}</system-out>", escape(&log));
    }
    xml.push_str("  </testsuite>\n");
    counts
}

/// Escapes text for XML 1.0 content and attributes. Control characters that XML 1.0 cannot
/// carry at all (console noise: ESC, NUL, ...) are written as `\xNN`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{End, TimeoutKind};
    use crate::ktap::parse;
    use std::time::Duration;

    fn capture(text: &str, end: End) -> Capture {
        Capture {
            document: parse(text),
            end,
            elapsed: Duration::from_millis(1234),
            tail: vec!["last line \u{1b}[0m <&>".into()],
            stderr: vec!["qemu-system-aarch64: warning: x".into()],
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

    fn xml_for(cap: &Capture) -> String {
        render(
            "shootdown",
            &[RunInfo {
                board: "virt",
                repeat: None,
                capture: cap,
            }],
        )
    }

    /// (name, failures, errors, skipped) of each testsuite, read back with a real XML parser.
    fn suites(xml: &str) -> Vec<(String, usize, usize, usize)> {
        let doc = roxmltree::Document::parse(xml)
            .unwrap_or_else(|e| panic!("not well-formed: {e}\n{xml}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        let num = |n: roxmltree::Node, a: &str| n.attribute(a).unwrap().parse::<usize>().unwrap();
        root.children()
            .filter(|n| n.has_tag_name("testsuite"))
            .map(|n| {
                let cases = n.children().filter(|c| c.has_tag_name("testcase")).count();
                assert_eq!(num(n, "tests"), cases, "tests= matches the testcase count");
                (
                    n.attribute("name").unwrap().to_string(),
                    num(n, "failures"),
                    num(n, "errors"),
                    num(n, "skipped"),
                )
            })
            .collect()
    }

    #[test]
    fn passing_run_is_one_suite_per_ktap_suite_plus_the_run() {
        let xml = xml_for(&capture(&fixture("pass"), End::Exited(0)));
        let s = suites(&xml);
        let names: Vec<_> = s.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, ["boot", "mm", "exceptions", "harness"]);
        assert!(s.iter().all(|x| x.1 == 0 && x.2 == 0));
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let root = doc.root_element();
        assert_eq!(root.attribute("tests"), Some("7"));
        assert_eq!(root.attribute("failures"), Some("0"));
        let case = doc
            .descendants()
            .find(|n| n.attribute("name") == Some("dtb_values"))
            .unwrap();
        assert_eq!(case.attribute("classname"), Some("virt.boot"));
    }

    #[test]
    fn failures_crashes_and_skips_map_to_junit_elements() {
        let xml = xml_for(&capture(&fixture("fail-not-ok"), End::Exited(1)));
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let failure = doc
            .descendants()
            .find(|n| n.has_tag_name("failure"))
            .unwrap();
        assert_eq!(
            failure.parent().unwrap().attribute("name"),
            Some("frames_alloc_free")
        );
        assert!(failure.text().unwrap().contains("expected 255 free frames"));
        // The kernel's exit status is a run-level error.
        let error = doc.descendants().find(|n| n.has_tag_name("error")).unwrap();
        assert!(error
            .attribute("message")
            .unwrap()
            .contains("exit status 1"));

        let xml = xml_for(&capture(&fixture("missing-truncated"), End::Exited(0)));
        let s = suites(&xml);
        assert_eq!(s[1], ("mm".into(), 0, 2, 0), "two cases never reported");
        assert_eq!(
            s[2],
            ("(top level)".into(), 0, 1, 0),
            "suite #3 never started"
        );

        let xml = xml_for(&capture(&fixture("nested-skips"), End::Exited(0)));
        let s = suites(&xml);
        assert_eq!(s[0], ("iommu".into(), 0, 0, 3));
        assert_eq!(s[1], ("pi_only".into(), 0, 0, 1));
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert!(doc
            .descendants()
            .any(|n| n.attribute("name") == Some("smmu.ste_encoding")));
    }

    #[test]
    fn timeouts_and_hostile_text_stay_well_formed() {
        let mut text = fixture("bail-out");
        text.push_str("\u{0}\u{7}<script>&amp;\"'\u{1b}[31m\n");
        let cap = capture(
            &text,
            End::TimedOut {
                kind: TimeoutKind::Total,
                limit: Duration::from_secs(5),
                running: "mm <x>".into(),
            },
        );
        let xml = xml_for(&cap);
        suites(&xml);
        assert!(xml.contains("\\x1B[0m &lt;&amp;&gt;"), "{xml}");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let run = doc
            .descendants()
            .find(|n| n.attribute("name") == Some("run"))
            .unwrap();
        let error = run.children().find(|n| n.has_tag_name("error")).unwrap();
        assert!(error.text().unwrap().contains("Bail out! panicked"));
        assert!(error.text().unwrap().contains("mm <x>: timeout"));
    }

    #[test]
    fn repeated_runs_get_distinct_suite_names() {
        let a = capture(&fixture("pass"), End::Exited(0));
        let b = capture(&fixture("pass"), End::Exited(0));
        let xml = render(
            "shootdown",
            &[
                RunInfo {
                    board: "virt",
                    repeat: Some((1, 2)),
                    capture: &a,
                },
                RunInfo {
                    board: "virt",
                    repeat: Some((2, 2)),
                    capture: &b,
                },
            ],
        );
        let names: Vec<_> = suites(&xml).into_iter().map(|s| s.0).collect();
        assert!(
            names.contains(&"boot [run 1]".to_string())
                && names.contains(&"boot [run 2]".to_string())
        );
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let case = doc
            .descendants()
            .find(|n| n.attribute("name") == Some("reached"))
            .unwrap();
        assert_eq!(case.attribute("classname"), Some("virt.boot"));
    }

    #[test]
    fn several_boards_in_one_file_are_told_apart() {
        let a = capture(&fixture("pass"), End::Exited(0));
        let b = capture(&fixture("fail-not-ok"), End::Exited(1));
        let xml = render(
            "shootdown",
            &[
                RunInfo {
                    board: "virt",
                    repeat: None,
                    capture: &a,
                },
                RunInfo {
                    board: "raspi4b",
                    repeat: None,
                    capture: &b,
                },
            ],
        );
        let s = suites(&xml);
        assert!(s.contains(&("virt/boot".into(), 0, 0, 0)), "{s:?}");
        assert!(s.contains(&("raspi4b/mm".into(), 1, 0, 0)), "{s:?}");
        assert!(s.contains(&("raspi4b/harness".into(), 0, 1, 0)), "{s:?}");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let failure = doc
            .descendants()
            .find(|n| n.has_tag_name("failure"))
            .unwrap();
        assert_eq!(
            failure.parent().unwrap().attribute("classname"),
            Some("raspi4b.mm")
        );
    }
}
