//! `harness bench-report`: turns benchmark output into `bench/results.json`, SVG plots and a
//! verdict on the performance goals (issue 7).
//!
//! Two sources:
//!
//! * the kernel's in-kernel benchmarks (`bench=`), one console log per board, run under QEMU
//!   `-icount shift=0` so that instruction counts are exact. Each measurement is one KTAP
//!   diagnostic line (see `kernel/src/bench/mod.rs`):
//!
//!   ```text
//!       # bench name=smmu.unmap smmu=mmio strategy=range pages=512 metric=commands value=2 unit=commands
//!   ```
//!
//!   and the counter the kernel used is announced once: `# bench-counter unit=insns ...`.
//! * criterion's host benchmarks (`cargo bench -p shootdown --features bench`), read from
//!   `target/criterion/**/new/{benchmark,estimates}.json`.
//!
//! [`goals`] checks the issue's goals on them, [`report`] writes the results file, the tables
//! and the plots ([`plot`]).

pub mod goals;
pub mod peer;
pub mod plot;
pub mod qemu_trace;
pub mod report;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// One in-kernel measurement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The benchmark case (`smmu.unmap`).
    pub name: String,
    /// Its parameters in line order (`smmu=mmio`, `strategy=range`, `pages=512`).
    pub params: Vec<(String, String)>,
    pub metric: String,
    pub value: u64,
    pub unit: String,
}

impl Sample {
    /// The parameter `key`, if the line has it.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The `pages=` parameter as a number.
    pub fn pages(&self) -> Option<u64> {
        self.param("pages").and_then(|p| p.parse().ok())
    }
}

/// A `# bench ...` line that does not have the documented shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub line: String,
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed benchmark line ({}): `{}`",
            self.reason, self.line
        )
    }
}

impl std::error::Error for LineError {}

/// Parses one console line: `Ok(None)` if it is not a benchmark line at all.
pub fn parse_sample(line: &str) -> Result<Option<Sample>, LineError> {
    let trimmed = line.trim();
    let Some(rest) = trimmed.strip_prefix("# bench ") else {
        return Ok(None);
    };
    let err = |reason: &str| LineError {
        line: trimmed.to_string(),
        reason: reason.to_string(),
    };
    let mut pairs = Vec::new();
    for token in rest.split_whitespace() {
        let (k, v) = token
            .split_once('=')
            .ok_or_else(|| err(&format!("`{token}` is not key=value")))?;
        if k.is_empty() || v.is_empty() {
            return Err(err(&format!("`{token}` has an empty key or value")));
        }
        pairs.push((k.to_string(), v.to_string()));
    }
    // name=... first, then parameters, then metric, value, unit (always last, in this order).
    if pairs.len() < 4 {
        return Err(err("needs name, metric, value and unit"));
    }
    let tail = pairs.split_off(pairs.len() - 3);
    let keys: Vec<&str> = tail.iter().map(|(k, _)| k.as_str()).collect();
    if keys != ["metric", "value", "unit"] {
        return Err(err("must end with metric=, value=, unit="));
    }
    let mut params = pairs;
    if params[0].0 != "name" {
        return Err(err("must start with name="));
    }
    let name = params.remove(0).1;
    if let Some((k, _)) = params
        .iter()
        .find(|(k, _)| ["name", "metric", "value", "unit"].contains(&k.as_str()))
    {
        return Err(err(&format!("`{k}=` appears twice")));
    }
    let value = tail[1]
        .1
        .parse::<u64>()
        .map_err(|_| err(&format!("value `{}` is not a count", tail[1].1)))?;
    Ok(Some(Sample {
        name,
        params,
        metric: tail[0].1.clone(),
        value,
        unit: tail[2].1.clone(),
    }))
}

/// What the kernel counted with (`# bench-counter unit=... source=...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counter {
    /// `insns` (PMU INST_RETIRED under precise icount) or `ticks` (the timer fallback).
    pub unit: String,
    pub source: String,
}

fn parse_counter(line: &str) -> Option<Counter> {
    let rest = line.trim().strip_prefix("# bench-counter ")?;
    let field = |key: &str| {
        rest.split_whitespace()
            .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    Some(Counter {
        unit: field("unit")?,
        source: field("source")?,
    })
}

/// The in-kernel benchmark results of one board.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelRun {
    pub board: String,
    pub counter: Option<Counter>,
    pub samples: Vec<Sample>,
    /// Every reason the KTAP document failed (a benchmark that could not measure what it should
    /// fails like a test), each naming the case. Empty = every benchmark ran.
    pub failures: Vec<String>,
    /// QEMU's own count of the SMMU commands of this boot, if its trace was given.
    pub qemu: Option<qemu_trace::QemuTrace>,
}

impl KernelRun {
    /// Parses a console log of a `bench=` boot.
    pub fn parse(board: &str, text: &str) -> Result<Self, LineError> {
        let mut counter = None;
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(c) = parse_counter(line) {
                counter = Some(c);
            } else if let Some(s) = parse_sample(line)? {
                samples.push(s);
            }
        }
        let failures = crate::ktap::parse(text)
            .failures()
            .iter()
            .map(ToString::to_string)
            .collect();
        Ok(Self {
            board: board.to_string(),
            counter,
            samples,
            failures,
            qemu: None,
        })
    }

    /// Adds QEMU's trace of the boot whose console is `log`. The trace rebuilds the console
    /// from the UART's writes; its benchmark lines must be the log's, in order, or the trace
    /// is of another boot.
    pub fn with_qemu_trace(mut self, log: &str, trace: &str) -> Result<Self, String> {
        let t = qemu_trace::parse(trace).map_err(|e| e.to_string())?;
        let lines = |text: &str| -> Vec<String> {
            text.lines()
                .map(str::trim)
                .filter(|l| l.starts_with("# bench"))
                .map(str::to_string)
                .collect()
        };
        let (traced, logged) = (lines(&t.console), lines(log));
        if traced != logged {
            let at = traced.iter().zip(&logged).position(|(a, b)| a != b);
            return Err(format!(
                "the trace's console is not this log's ({} benchmark lines vs {}; first difference at line {}): the trace is of another boot",
                traced.len(),
                logged.len(),
                at.map_or("(one is a prefix of the other)".into(), |i| (i + 1).to_string())
            ));
        }
        self.qemu = Some(t);
        Ok(self)
    }

    /// True if instruction counts are instructions (precise icount), not timer ticks.
    pub fn counts_instructions(&self) -> bool {
        self.counter.as_ref().is_some_and(|c| c.unit == "insns")
    }

    /// The value of `metric` of case `name` whose parameters include every pair of `params`.
    pub fn value(&self, name: &str, params: &[(&str, &str)], metric: &str) -> Option<u64> {
        self.find(name, params, metric).map(|s| s.value)
    }

    fn find(&self, name: &str, params: &[(&str, &str)], metric: &str) -> Option<&Sample> {
        self.samples.iter().find(|s| {
            s.name == name
                && s.metric == metric
                && params.iter().all(|(k, v)| s.param(k) == Some(*v))
        })
    }

    /// Every sample of case `name` with `metric`.
    pub fn all<'a>(&'a self, name: &'a str, metric: &'a str) -> impl Iterator<Item = &'a Sample> {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.metric == metric)
    }
}

/// One criterion benchmark's estimate (per iteration).
#[derive(Clone, Debug, PartialEq)]
pub struct HostResult {
    /// criterion's `full_id`, e.g. `interval_invalidation/tree/100000`.
    pub id: String,
    pub mean_ns: f64,
    /// The 95 % confidence interval of the mean.
    pub low_ns: f64,
    pub high_ns: f64,
}

/// Reads every `new/benchmark.json` + `new/estimates.json` pair under criterion's directory
/// (`target/criterion`), sorted by id.
pub fn read_criterion(dir: &Path) -> Result<Vec<HostResult>, String> {
    let mut found = Vec::new();
    collect_new_dirs(dir, &mut found).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for new in found {
        out.push(read_estimate(&new)?);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn collect_new_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") && path.join("estimates.json").is_file() {
            out.push(path);
        } else {
            collect_new_dirs(&path, out)?;
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_estimate(new: &Path) -> Result<HostResult, String> {
    let meta = read_json(&new.join("benchmark.json"))?;
    let est = read_json(&new.join("estimates.json"))?;
    parse_estimate(&meta, &est).ok_or_else(|| {
        format!(
            "{}: not a criterion benchmark.json/estimates.json pair",
            new.display()
        )
    })
}

/// The id and mean of criterion's `benchmark.json` and `estimates.json`.
pub fn parse_estimate(meta: &serde_json::Value, est: &serde_json::Value) -> Option<HostResult> {
    let mean = est.get("mean")?;
    let ci = mean.get("confidence_interval")?;
    Some(HostResult {
        id: meta.get("full_id")?.as_str()?.to_string(),
        mean_ns: mean.get("point_estimate")?.as_f64()?,
        low_ns: ci.get("lower_bound")?.as_f64()?,
        high_ns: ci.get("upper_bound")?.as_f64()?,
    })
}

/// The host result `id`, if measured.
pub fn host<'a>(results: &'a [HostResult], id: &str) -> Option<&'a HostResult> {
    results.iter().find(|r| r.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
Shootdown 0.1.0 (aarch64)
# bench-counter unit=insns source=pmu-inst-retired width=64
KTAP version 1
1..1
# bench=* (1 of 1 tests selected)
  KTAP version 1
  1..1
  # Subtest: smmu
    # bench name=smmu.unmap smmu=mmio strategy=range pages=512 metric=commands value=2 unit=commands
    # bench name=smmu.unmap smmu=mmio strategy=range pages=512 metric=invalidate value=2303 unit=insns
  ok 1 unmap
ok 1 smmu
# shootdown: exit 0
";

    #[test]
    fn a_result_line_is_read_with_its_parameters() {
        let s = parse_sample(
            "    # bench name=smmu.unmap smmu=mmio strategy=range pages=512 metric=commands value=2 unit=commands",
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.name, "smmu.unmap");
        assert_eq!(s.param("smmu"), Some("mmio"));
        assert_eq!(s.param("strategy"), Some("range"));
        assert_eq!(s.pages(), Some(512));
        assert_eq!(
            (s.metric.as_str(), s.value, s.unit.as_str()),
            ("commands", 2, "commands")
        );
    }

    #[test]
    fn other_lines_are_not_results() {
        for line in [
            "",
            "ok 1 unmap",
            "# bench=* (4 of 4 tests selected)",
            "# benchmark",
        ] {
            assert_eq!(parse_sample(line), Ok(None), "{line}");
        }
    }

    #[test]
    fn malformed_result_lines_are_errors_naming_the_problem() {
        let cases = [
            ("# bench name=a metric=m value=1", "needs name"),
            (
                "# bench name=a pages=1 metric=m unit=u value=1",
                "must end with",
            ),
            (
                "# bench pages=1 name=a metric=m value=1 unit=u",
                "must start with name",
            ),
            (
                "# bench name=a pages metric=m value=1 unit=u",
                "not key=value",
            ),
            (
                "# bench name=a pages= metric=m value=1 unit=u",
                "empty key or value",
            ),
            ("# bench name=a metric=m value=-3 unit=u", "not a count"),
            (
                "# bench name=a name=b metric=m value=3 unit=u",
                "appears twice",
            ),
        ];
        for (line, reason) in cases {
            let e = parse_sample(line).unwrap_err();
            assert!(e.reason.contains(reason), "{line}: {e}");
            assert!(e.to_string().contains(line.trim()), "{e}");
        }
    }

    #[test]
    fn a_log_gives_the_counter_the_samples_and_no_failures() {
        let run = KernelRun::parse("virt-smmu", LOG).unwrap();
        assert!(run.counts_instructions());
        assert_eq!(run.samples.len(), 2);
        assert!(run.failures.is_empty(), "{:?}", run.failures);
        let p = [("smmu", "mmio"), ("strategy", "range"), ("pages", "512")];
        assert_eq!(run.value("smmu.unmap", &p, "invalidate"), Some(2303));
        assert_eq!(run.value("smmu.unmap", &p, "sync"), None);
    }

    #[test]
    fn a_failed_or_cut_off_benchmark_is_a_failure() {
        let failed = LOG.replace("  ok 1 unmap", "  not ok 1 unmap");
        let run = KernelRun::parse("b", &failed).unwrap();
        assert!(
            run.failures.iter().any(|f| f.contains("smmu.unmap")),
            "{:?}",
            run.failures
        );
        let cut = &LOG[..LOG.find("  ok 1 unmap").unwrap()];
        assert!(!KernelRun::parse("b", cut).unwrap().failures.is_empty());
    }

    #[test]
    fn timer_ticks_are_not_instructions() {
        let ticks = LOG.replace(
            "unit=insns source=pmu-inst-retired",
            "unit=ticks source=cntpct",
        );
        assert!(!KernelRun::parse("b", &ticks).unwrap().counts_instructions());
    }

    #[test]
    fn criterion_estimates_are_read_from_its_directory() {
        let dir = std::env::temp_dir().join(format!("harness-criterion-{}", std::process::id()));
        let new = dir.join("interval_invalidation/tree/100000/new");
        fs::create_dir_all(&new).unwrap();
        fs::write(
            new.join("benchmark.json"),
            r#"{"group_id":"interval_invalidation","function_id":"tree","value_str":"100000","full_id":"interval_invalidation/tree/100000","directory_name":"interval_invalidation/tree/100000"}"#,
        )
        .unwrap();
        fs::write(
            new.join("estimates.json"),
            r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":40.0,"upper_bound":44.0},"point_estimate":42.0,"standard_error":1.0},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":40.0,"upper_bound":44.0},"point_estimate":41.0,"standard_error":1.0}}"#,
        )
        .unwrap();
        // criterion's other directories (base/, report/) hold no `new/`.
        fs::create_dir_all(dir.join("interval_invalidation/tree/100000/base")).unwrap();
        let results = read_criterion(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            results,
            vec![HostResult {
                id: "interval_invalidation/tree/100000".into(),
                mean_ns: 42.0,
                low_ns: 40.0,
                high_ns: 44.0
            }]
        );
    }

    #[test]
    fn a_broken_estimate_is_an_error() {
        let meta = serde_json::json!({"full_id": "a/b"});
        assert!(parse_estimate(&meta, &serde_json::json!({"mean": {}})).is_none());
        assert!(read_criterion(Path::new("/nonexistent/criterion")).is_err());
    }

    /// QEMU's trace of the console `text` (one pl011_write line per byte).
    fn uart_trace(text: &str) -> String {
        text.bytes()
            .map(|b| format!("pl011_write addr 0x000 value 0x{b:08x} reg DR\n"))
            .collect()
    }

    /// The trace must be this log's boot: the same benchmark lines in the same order, whatever
    /// the line ends (the log has the tty's CR LF, the trace's console drops CR).
    #[test]
    fn a_trace_of_another_boot_is_refused() {
        let run = || KernelRun::parse("b", LOG).unwrap();
        let crlf = LOG.replace('\n', "\r\n");
        assert!(run().with_qemu_trace(&crlf, &uart_trace(LOG)).is_ok());
        let other = LOG.replace("value=2 unit=commands", "value=3 unit=commands");
        let err = run().with_qemu_trace(LOG, &uart_trace(&other)).unwrap_err();
        assert!(err.contains("another boot"), "{err}");
        let cut = &LOG[..LOG.find("# bench name=").unwrap()];
        assert!(run().with_qemu_trace(LOG, &uart_trace(cut)).is_err());
        // Non-ASCII in a benchmark line is the same text on both sides.
        let utf8 = LOG.replace(
            "(1 of 1 tests selected)",
            "(1 of 1 tests selected)\n# bench-note µs",
        );
        assert!(KernelRun::parse("b", &utf8)
            .unwrap()
            .with_qemu_trace(&utf8, &uart_trace(&utf8))
            .is_ok());
    }
}
