//! The parser on whole transcripts (`tests/harness/fixtures/*.ktap`): good ones pass, and each kind of
//! malformed or failing one fails naming the test.

use crate::ktap::{parse, Directive, Document, Outcome};

fn fixture(name: &str) -> Document {
    let path = format!("{}/fixtures/{name}.ktap", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse(&text)
}

/// The failures as `test: message` strings, for readable assertions.
fn failures(doc: &Document) -> Vec<String> {
    doc.failures().iter().map(ToString::to_string).collect()
}

fn assert_fails_with(doc: &Document, test: &str, message_part: &str) {
    let found = doc
        .failures()
        .iter()
        .any(|f| f.test == test && f.message.contains(message_part));
    assert!(
        found,
        "expected a failure of `{test}` mentioning `{message_part}`, got {:#?}",
        failures(doc)
    );
}

#[test]
fn passing_transcript_passes_with_every_test_counted() {
    let doc = fixture("pass");
    assert!(doc.passed(), "{:#?}", failures(&doc));
    assert!(doc.complete);
    assert_eq!(doc.version.as_deref(), Some("KTAP version 1"));
    assert_eq!(doc.plan, Some(3));
    let names: Vec<_> = doc.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["boot", "mm", "exceptions"]);
    let counts = doc.counts();
    assert_eq!((counts.passed, counts.total(), counts.errors), (6, 6, 0));
    assert_eq!(doc.seed.as_deref(), Some("12345"));
    assert_eq!(doc.exit_code, Some(0));
    assert_eq!(doc.preamble.len(), 3, "boot log kept apart");
    // A diagnostic belongs to the result that follows it.
    assert_eq!(
        doc.tests[0].subtests[2].log,
        ["# dtb: memory 1024 MiB, uart 0x9000000"]
    );
}

#[test]
fn not_ok_fails_naming_the_case_and_keeps_its_log() {
    let doc = fixture("fail-not-ok");
    assert!(!doc.passed());
    assert_fails_with(&doc, "mm.frames_alloc_free", "not ok");
    assert_fails_with(&doc, "(kernel)", "exit status 1");
    // The suite failed because of its case: it is not reported twice.
    assert!(!failures(&doc).iter().any(|f| f.starts_with("mm:")));
    let case = &doc.tests[1].subtests[1];
    assert_eq!(case.outcome, Outcome::Failed);
    assert_eq!(
        case.log,
        [
            "# frames_alloc_free: expected 255 free frames, found 254",
            "# at kernel/src/mm/phys.rs:120"
        ]
    );
    let counts = doc.counts();
    assert_eq!((counts.passed, counts.failed), (3, 1));
}

#[test]
fn truncated_output_is_a_crash_naming_the_missing_tests() {
    let doc = fixture("missing-truncated");
    assert!(!doc.complete);
    assert_fails_with(
        &doc,
        "mm.#3",
        "test 3 of 4 never reported (last reported: `frames_alloc_free`)",
    );
    assert_fails_with(&doc, "mm.#4", "the output ended first");
    assert_fails_with(&doc, "#3", "suite 3 of 3 never reported");
    let counts = doc.counts();
    assert_eq!((counts.passed, counts.crashed), (3, 3));
    // The last diagnostic before the crash is kept with the crashed suite.
    assert_eq!(doc.tests[1].log, ["# now mapping 4 GiB"]);
}

#[test]
fn a_suite_result_before_its_plan_is_done_is_a_crash() {
    let doc = fixture("missing-in-suite");
    assert_fails_with(&doc, "boot.#4", "test 4 of 4 never reported");
    let suite = &doc.tests[0];
    assert_eq!(suite.outcome, Outcome::Crashed);
    assert_eq!(
        suite.note.as_deref(),
        Some("reported ok, but a subtest failed")
    );
}

#[test]
fn a_missing_suite_result_line_is_a_crash_of_that_suite() {
    let doc = fixture("missing-suite-result");
    assert_fails_with(&doc, "boot", "`boot` printed no result line of its own; the next test at its parent's level started first");
    assert_eq!(doc.tests[0].subtests[0].outcome, Outcome::Passed);
    assert_eq!(doc.tests[1].name, "mm");
    assert_eq!(doc.tests[1].outcome, Outcome::Passed);
}

#[test]
fn bail_out_fails_naming_the_running_test() {
    let doc = fixture("bail-out");
    assert!(doc.bail_out.is_some());
    assert_fails_with(
        &doc,
        "mm: test 2 of 3, after `mm.heap_alloc_free`",
        "Bail out! panicked at kernel/src/mm/phys.rs:88: double free",
    );
    assert_fails_with(&doc, "mm.#2", "Bail out! came first");
    assert_eq!(doc.exit_code, Some(101));
    // The exception report printed before the bail-out stays in the log.
    assert!(doc.tests[1].log.iter().any(|l| l.contains("data abort")));
}

#[test]
fn no_ktap_at_all_fails() {
    let doc = fixture("no-ktap");
    assert!(!doc.ktap_found);
    assert_eq!(failures(&doc).len(), 1, "{:#?}", failures(&doc));
    assert_fails_with(&doc, "(boot)", "no KTAP output");
    assert_eq!(doc.preamble.len(), 4);
    // An empty transcript as well.
    assert!(!crate::ktap::parse("").passed());
}

#[test]
fn nested_skips_todo_and_xfail_do_not_fail() {
    let doc = fixture("nested-skips");
    assert!(doc.passed(), "{:#?}", failures(&doc));
    let smmu = &doc.tests[0].subtests[0];
    assert_eq!(smmu.name, "smmu");
    assert_eq!(smmu.subtests[1].outcome, Outcome::Skipped);
    assert_eq!(smmu.subtests[1].comment, "no SMMU on this board");
    assert_eq!(smmu.subtests[2].outcome, Outcome::ExpectedFail);
    assert_eq!(smmu.subtests[2].directive, Some(Directive::Todo));
    let model = &doc.tests[0].subtests[1];
    assert_eq!(model.subtests[1].directive, Some(Directive::XFail));
    let pi_only = &doc.tests[1];
    assert_eq!((pi_only.outcome, pi_only.plan), (Outcome::Skipped, Some(0)));
    assert_eq!(doc.tests[2].subtests[0].name, "dash_separated_name");
    let counts = doc.counts();
    assert_eq!(
        (counts.passed, counts.skipped, counts.xfail, counts.total()),
        (3, 2, 2, 7)
    );
}

#[test]
fn prefixes_crlf_and_noise_lines_are_tolerated() {
    let doc = fixture("noise");
    assert!(doc.passed(), "{:#?}", failures(&doc));
    assert_eq!(doc.counts().passed, 3);
    assert_eq!(doc.tests[0].subtests[1].log, ["random uart noise ~~~"]);
    assert_eq!(doc.tests[1].subtests[0].log, ["unknown indented line"]);
    assert_eq!(doc.exit_code, Some(0));
}

#[test]
fn kunit_four_space_output_parses() {
    let doc = fixture("kunit-style");
    assert!(doc.passed(), "{:#?}", failures(&doc));
    let counts = doc.counts();
    assert_eq!((counts.passed, counts.skipped), (1, 2));
    assert_eq!(
        doc.tests[0].subtests[0].log,
        ["# example_simple_test: initializing"]
    );
    // Lines before the plan are the suite's own log, like the totals after its last case.
    assert_eq!(
        doc.tests[0].log,
        [
            "# module: example",
            "# example: pass:1 fail:0 skip:2 total:3",
            "# Totals: pass:1 fail:0 skip:2 total:3"
        ]
    );
}

#[test]
fn wrong_numbering_is_an_error() {
    let doc = fixture("bad-numbering");
    assert_fails_with(
        &doc,
        "(KTAP line 7)",
        "boot: expected test number 2, got 3 (`cpus_online`)",
    );
    assert_eq!(doc.counts().errors, 1);
}

#[test]
fn more_results_than_planned_is_an_error() {
    let doc = fixture("extra-results");
    assert_fails_with(
        &doc,
        "(KTAP line 7)",
        "test 2 (`cpus_online`) is beyond the plan 1..1",
    );
}

#[test]
fn timeout_directive_fails_naming_it() {
    let doc = fixture("timeout-directive");
    assert_fails_with(
        &doc,
        "smp.shootdown_all_cpus",
        "not ok # TIMEOUT (30 seconds)",
    );
}

#[test]
fn a_non_zero_exit_line_fails_even_when_all_tests_pass() {
    let doc = fixture("exit-nonzero");
    assert_eq!(
        failures(&doc),
        ["(kernel): the kernel reported exit status 3"]
    );
}

#[test]
fn an_empty_plan_means_no_tests_ran() {
    let doc = fixture("empty-plan");
    assert_fails_with(&doc, "(plan)", "no tests ran");
    let skipped = parse("KTAP version 1\n1..0 # SKIP nothing selected\n");
    assert!(skipped.passed(), "{:#?}", failures(&skipped));
}

#[test]
fn a_second_document_is_an_error_and_the_first_is_incomplete() {
    let doc = fixture("restarted");
    assert_fails_with(&doc, "(KTAP line 9)", "a second KTAP document starts here");
    assert_fails_with(&doc, "#2", "suite 2 of 2 never reported");
}

#[test]
fn a_missing_top_level_plan_is_an_error() {
    let doc = parse("KTAP version 1\n  KTAP version 1\n  1..1\n  ok 1 a\nok 1 s\n");
    assert_fails_with(&doc, "(KTAP line 5)", "top-level plan (1..N) is missing");
    assert_eq!(doc.counts().passed, 1);
}

#[test]
fn format_errors_that_could_hide_results_are_reported() {
    // Subtest results with no version line opening their block.
    let doc = parse("KTAP version 1\n1..1\n  ok 1 a\nok 1 s\n");
    assert_fails_with(&doc, "(KTAP line 3)", "without a `KTAP version` line");
    // Two plans for one block.
    let doc = parse("KTAP version 1\n1..1\n1..2\n  KTAP version 1\n  1..1\n  ok 1 a\nok 1 s\n");
    assert_fails_with(&doc, "(KTAP line 3)", "a second plan");
    // An unknown KTAP version.
    let doc = parse("KTAP version 2\n1..1\n  KTAP version 1\n  1..1\n  ok 1 a\nok 1 s\n");
    assert_fails_with(
        &doc,
        "(KTAP line 1)",
        "unsupported version `KTAP version 2`",
    );
    // A result line naming a different suite than its header.
    let doc = parse(
        "KTAP version 1\n1..1\n  KTAP version 1\n  # Subtest: mm\n  1..1\n  ok 1 a\nok 1 iommu\n",
    );
    assert_fails_with(
        &doc,
        "(KTAP line 7)",
        "header says `mm` but its result line says `iommu`",
    );
    // Indentation matching no open block.
    let doc = parse("KTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    ok 1 a\n  ok 1 s\n");
    assert_fails_with(
        &doc,
        "(KTAP line 6)",
        "indented 2 spaces, matching no open test",
    );
}

#[test]
fn older_kunit_and_tap14_layouts_parse() {
    // `# Subtest:` before the nested version line, TAP version 14, `ok N - name`.
    let doc = parse(
        "TAP version 14\n1..1\n    # Subtest: example\n    KTAP version 1\n    1..2\n    ok 1 - a\n    ok 2 - b # SKIP off\nok 1 - example\n",
    );
    assert!(doc.passed(), "{:#?}", failures(&doc));
    assert_eq!(doc.tests[0].name, "example");
    assert_eq!(doc.counts().skipped, 1);
    // A suite result without a description takes its name from the header.
    let doc =
        parse("KTAP version 1\n1..1\n  KTAP version 1\n  # Subtest: mm\n  1..1\n  ok 1 a\nok 1\n");
    assert!(doc.passed(), "{:#?}", failures(&doc));
    assert_eq!(doc.tests[0].name, "mm");
}

#[test]
fn a_crash_two_levels_deep_closes_every_open_block() {
    let doc = parse(
        "KTAP version 1\n1..2\n  KTAP version 1\n  # Subtest: iommu\n  1..2\n    KTAP version 1\n    # Subtest: smmu\n    1..2\n    ok 1 cmdq\n",
    );
    assert!(!doc.complete);
    assert_fails_with(
        &doc,
        "iommu.smmu.#2",
        "test 2 of 2 never reported (last reported: `cmdq`)",
    );
    assert_fails_with(
        &doc,
        "iommu.#2",
        "test 2 of 2 never reported (last reported: `smmu`)",
    );
    assert_fails_with(&doc, "#2", "suite 2 of 2 never reported");
    assert_eq!(doc.tests[0].subtests[0].outcome, Outcome::Crashed);
    // The crashed parents are not listed again: their missing children are.
    assert!(!failures(&doc)
        .iter()
        .any(|f| f.starts_with("iommu:") || f.starts_with("iommu.smmu:")));
}
