//! Cross-check with Linux's own KTAP parser: `tools/testing/kunit/kunit.py parse` (the Linux
//! 6.1 version, extracted from Debian's `linux-source-6.1` by `qemu/install.sh kunit`).
//!
//! A lab that feeds our console to its KUnit tooling must read what we read: the same cases
//! with the same results, and no parse error. `harness kunit-check LOG --kunit kunit.py` runs
//! the real parser with `--json` and compares, case by case, with [`crate::ktap`].
//!
//! What kunit.py reports, as read from its 6.1 sources: the summary line
//! `Testing complete. Ran N tests: passed: P, failed: F, crashed: C, skipped: S, errors: E`
//! (zero counts left out; `kunit_parser.py` `TestCounts.__str__`), and a KernelCI-style JSON
//! tree (`kunit_json.py`): groups with `name`, `sub_groups` and `test_cases` of
//! `{name, status}`, status `PASS`, `FAIL`, `SKIP` or `ERROR`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::ktap::Document;
use crate::results;

/// What kunit.py made of a log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KunitView {
    /// The `Testing complete. ...` line.
    pub summary: String,
    /// `errors: E` of the summary line (0 when absent).
    pub errors: usize,
    /// `suite.case` → status, from its JSON.
    pub cases: BTreeMap<String, String>,
}

/// Runs `python3 KUNIT parse --json=OUT LOG` and reads what it printed and wrote. kunit.py
/// must sit in a `tools/testing/kunit` folder: it exits 1 silently otherwise.
pub fn run(kunit_py: &Path, log: &Path, json_out: &Path) -> Result<KunitView, String> {
    // kunit.py changes to the kernel tree's root first: hand it absolute paths.
    let absolute = |p: &Path| {
        std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let (log, json_out) = (absolute(log)?, absolute(json_out)?);
    let (log, json_out) = (log.as_path(), json_out.as_path());
    if !kunit_py.to_string_lossy().contains("tools/testing/kunit") {
        return Err(format!(
            "{}: kunit.py must sit in a tools/testing/kunit folder (it finds its tree by that path)",
            kunit_py.display()
        ));
    }
    let output = Command::new("python3")
        .arg(kunit_py)
        .arg("parse")
        .arg(format!("--json={}", json_out.display()))
        .arg(log)
        .output()
        .map_err(|e| format!("python3 {}: {e}", kunit_py.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // It exits 1 when a test failed or crashed: that is a reading to compare, not a fault of
    // its own. No summary line at all is one.
    if !stdout.contains("Testing complete.") {
        return Err(format!(
            "kunit.py parse exited with {} and no summary: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let json = std::fs::read_to_string(json_out)
        .map_err(|e| format!("kunit.py wrote no JSON to {}: {e}", json_out.display()))?;
    let json: Value =
        serde_json::from_str(&json).map_err(|e| format!("kunit.py's JSON: {e}"))?;
    view(&stdout, &json)
}

/// Reads kunit.py's standard output and JSON.
pub fn view(stdout: &str, json: &Value) -> Result<KunitView, String> {
    let summary = stdout
        .lines()
        .rev()
        .find_map(|l| l.find("Testing complete.").map(|i| l[i..].trim().to_string()))
        .ok_or("kunit.py printed no `Testing complete.` line")?;
    let errors = count_in(&summary, "errors").unwrap_or(0);
    let mut cases = BTreeMap::new();
    // The root group stands for the whole log; its sub-groups are our suites.
    collect(json, "", true, &mut cases)?;
    Ok(KunitView {
        summary,
        errors,
        cases,
    })
}

/// `label: N` in a summary line.
fn count_in(summary: &str, label: &str) -> Option<usize> {
    let at = summary.find(&format!("{label}: "))? + label.len() + 2;
    let digits: String = summary[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn collect(
    group: &Value,
    prefix: &str,
    root: bool,
    out: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    let name = group["name"].as_str().ok_or("a JSON group without a name")?;
    let path = match (root, prefix.is_empty()) {
        (true, _) => String::new(),
        (false, true) => name.to_string(),
        (false, false) => format!("{prefix}.{name}"),
    };
    for case in group["test_cases"].as_array().into_iter().flatten() {
        let case_name = case["name"].as_str().ok_or("a JSON case without a name")?;
        let status = case["status"].as_str().ok_or("a JSON case without a status")?;
        let key = if path.is_empty() {
            case_name.to_string()
        } else {
            format!("{path}.{case_name}")
        };
        out.insert(key, status.to_string());
    }
    for sub in group["sub_groups"].as_array().into_iter().flatten() {
        collect(sub, &path, false, out)?;
    }
    Ok(())
}

/// Every difference between kunit.py's reading and ours; empty means they agree.
pub fn compare(ours: &Document, theirs: &KunitView) -> Vec<String> {
    let mut problems = Vec::new();
    if theirs.errors != 0 {
        problems.push(format!(
            "kunit.py found {} parse errors: {}",
            theirs.errors, theirs.summary
        ));
    }
    let mut mine = BTreeMap::new();
    for case in results::cases(ours) {
        let suite = case["suite"].as_str().unwrap_or_default();
        let name = case["name"].as_str().unwrap_or_default();
        let key = if suite.is_empty() {
            name.to_string()
        } else {
            format!("{suite}.{name}")
        };
        // kunit.py knows no XFAIL: a TODO directive reads as a pass or a failure there.
        mine.insert(key, case["status"].as_str().unwrap_or_default().to_string());
    }
    for (key, status) in &mine {
        match theirs.cases.get(key) {
            None => problems.push(format!("{key}: {status} here, missing in kunit.py")),
            Some(s) if s != status && status != "XFAIL" => {
                problems.push(format!("{key}: {status} here, {s} in kunit.py"))
            }
            Some(_) => {}
        }
    }
    for (key, status) in &theirs.cases {
        if !mine.contains_key(key) {
            problems.push(format!("{key}: {status} in kunit.py, missing here"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ktap::parse;
    use serde_json::json;

    fn tree() -> Value {
        json!({
            "name": "KUnit Test Group",
            "sub_groups": [
                { "name": "boot", "sub_groups": [],
                  "test_cases": [ {"name": "cpus", "status": "PASS"},
                                  {"name": "dt", "status": "SKIP"} ] },
            ],
            "test_cases": [],
        })
    }

    const LOG: &str = "KTAP version 1\n1..1\n  KTAP version 1\n  # Subtest: boot\n  1..2\n  \
        ok 1 cpus\n  ok 2 dt # SKIP no tree\nok 1 boot\n";

    #[test]
    fn the_summary_line_and_cases_are_read() {
        let out = "[21:28:50] ====\n[21:28:50] Testing complete. Ran 108 tests: passed: 60, \
                   crashed: 48, errors: 59\n";
        let v = view(out, &tree()).unwrap();
        assert_eq!(v.errors, 59);
        assert!(v.summary.starts_with("Testing complete. Ran 108"));
        assert_eq!(v.cases.get("boot.dt").map(String::as_str), Some("SKIP"));
        assert!(view("nothing", &tree()).is_err());
    }

    #[test]
    fn agreement_and_every_kind_of_disagreement_are_reported() {
        let ok = view("Testing complete. Ran 2 tests: passed: 1, skipped: 1", &tree()).unwrap();
        assert_eq!(compare(&parse(LOG), &ok), Vec::<String>::new());

        let mut bad = ok.clone();
        bad.errors = 2;
        bad.cases.insert("boot.cpus".into(), "ERROR".into());
        bad.cases.remove("boot.dt");
        bad.cases.insert("boot.extra".into(), "PASS".into());
        let problems = compare(&parse(LOG), &bad);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].contains("2 parse errors"));
        assert!(problems.iter().any(|p| p == "boot.cpus: PASS here, ERROR in kunit.py"));
        assert!(problems.iter().any(|p| p.starts_with("boot.dt: SKIP here, missing")));
        assert!(problems.iter().any(|p| p.starts_with("boot.extra: PASS in kunit.py")));
    }
}
