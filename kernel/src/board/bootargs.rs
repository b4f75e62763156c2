//! Kernel boot arguments (`/chosen/bootargs`, i.e. QEMU's `-append`): `key=value` pairs and bare
//! flags separated by white space; double quotes group white space into a value
//! (`key="a b"`, as Linux's `next_arg`). A later `key=value` overrides an earlier one (the
//! harness appends the user's arguments to a profile's).
//!
//! | argument | meaning |
//! |---|---|
//! | `ktest=<glob>[,<glob>...]` | run the in-kernel tests whose `suite.case` (or suite) matches |
//! | `bench=<glob>[,...]`, `bench.pages=<n>[,<n>...]` | run the benchmarks instead, at these sizes |
//! | `seed=<n>` | seed for randomized tests and workloads (printed, so a run can be replayed) |
//! | `log=<level>` | console log level: `off`, `error`, `warn`, `info`, `debug`, `trace` |
//! | `trace[=1]` | record events in per-CPU rings and print them at exit (`make run TRACE=out.json`) |
//! | `ktest.fail=1` | the `ktest.selftest_fail` case fails on purpose (proves the harness catches it) |
//! | `ktest.crash=1` | the `ktest.selftest_crash` case takes an unexpected exception on purpose (`=stack`: a stack overflow) |
//! | `edu.dma_mask=<n>` | the DMA mask QEMU's `edu` was given (its `dma_mask` property; default 28 bits, which the driver cannot read from the device) |
//! | `smmu.strategy=per-page\|range\|asid\|auto` | SMMU invalidation strategy (`strategy=` also works; default `auto`) |
//! | `smmu.skip_invalidate=1` | **debug only**: SVA invalidations are not sent to the SMMU (the SVA tests must then fail) |
//! | `smmu.eventq_log2=<n>` | **debug only**: at most 2^n SMMU event-queue entries (a small queue loses a faulting page's events) |
//! | `dma.engine=bcm\|cpu` | Pi: what moves the bytes of the model's first DMA master: the BCM2711 DMA controller (default where the tree has one) or the CPU |
//! | `sva.smp_rounds=<n>` | multiplies the transfers of `sva.smp_unmaps_on_every_cpu_while_dma_runs` (soak) |
//! | `job=coherence\|soak` | the workload run without `ktest=`/`bench=` (default `coherence`); `rounds=` per CPU |
//! | `fault=<kind>[,<kind>…]` or `fault=all` | soak fault injection: `alloc`, `notifier`, `sync`, `cmdq`, `evtq`, `teardown` (see `crate::workload::fault`) |
//! | `fault.seed=<n>`, `fault.rate=<‰>` | the fault dice's seed, and the chance per round (per mille, 1 to 1000, default 125) |
//!
//! Numbers are decimal or `0x` hex; flags take `1 0 on off true false yes no` or nothing.
//! [`BootArgs::parse`] never fails as a whole: every argument it cannot use becomes a
//! [`BootArgError`] naming its key, and [`BootArgError::is_fatal`] says whether the boot must
//! stop (the argument changes what runs, so running anything else would hide the mistake).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The workload run when neither `ktest=` nor `bench=` is given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Job {
    /// The SVA coherence job (`make run`).
    #[default]
    Coherence,
    /// The soak on every CPU at once.
    Soak,
}

/// What `ktest.crash=` asks the crash self-test to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// An unexpected Data Abort.
    Exception,
    /// A stack overflow into the guard page.
    StackOverflow,
}

/// `smmu.strategy=`: how the SMMU's TLB is invalidated (the driver's planner has the details).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmmuStrategy {
    /// One TLBI per page.
    PerPage,
    /// Range invalidation (RIL).
    Range,
    /// The whole ASID.
    Asid,
    /// Linux's policy.
    Auto,
}

impl SmmuStrategy {
    /// Every strategy, by the name `smmu.strategy=` takes.
    pub const NAMES: [(&'static str, SmmuStrategy); 4] = [
        ("per-page", Self::PerPage),
        ("range", Self::Range),
        ("asid", Self::Asid),
        ("auto", Self::Auto),
    ];

    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("auto", |(n, _)| n)
    }
}

/// `dma.engine=`: what moves the bytes of the SMMU model's first DMA master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyEngine {
    /// The board's DMA controller (BCM2711), where the device tree has one.
    Bcm,
    /// The CPU copies on the device's behalf.
    Cpu,
}

/// The largest `smmu.eventq_log2=`: SMMU_IDR1.EVENTQS never exceeds 19 (IHI 0070 §6.3.2).
const EVENTQ_LOG2_MAX: u64 = 19;

/// The parsed boot arguments. Fields left `None` were not given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootArgs {
    /// `ktest=`: the test filter.
    pub ktest: Option<String>,
    /// `bench=`: the benchmark filter.
    pub bench: Option<String>,
    /// `bench.pages=`: the benchmark sizes, in pages (each > 0).
    pub bench_pages: Option<Vec<u64>>,
    /// `seed=`.
    pub seed: Option<u64>,
    /// `log=`.
    pub log: Option<log::LevelFilter>,
    /// `trace`.
    pub trace: bool,
    /// `ktest.fail`.
    pub ktest_fail: bool,
    /// `ktest.crash=`.
    pub ktest_crash: Option<Crash>,
    /// `edu.dma_mask=`: `2^n - 1` with at least 12 bits.
    pub edu_dma_mask: Option<u64>,
    /// `smmu.strategy=` (or `strategy=`).
    pub smmu_strategy: Option<SmmuStrategy>,
    /// `smmu.skip_invalidate`.
    pub smmu_skip_invalidate: bool,
    /// `smmu.eventq_log2=` (0 to 19): caps the SMMU event queue (debug).
    pub smmu_eventq_log2: Option<u8>,
    /// `dma.engine=`.
    pub dma_engine: Option<CopyEngine>,
    /// `sva.smp_rounds=` (> 0).
    pub sva_smp_rounds: Option<u64>,
    /// `job=`.
    pub job: Job,
    /// `rounds=` (> 0).
    pub rounds: Option<u64>,
    /// `fault=`, checked by the soak's fault plan.
    pub fault: Option<String>,
    /// `fault.seed=`.
    pub fault_seed: Option<u64>,
    /// `fault.rate=` (per mille, 1 to 1000).
    pub fault_rate: Option<u64>,
}

/// What is wrong with one argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No such key.
    UnknownKey,
    /// The key needs a value (`seed` instead of `seed=1`).
    MissingValue,
    /// `key=` with nothing after it.
    EmptyValue,
    /// The value is not what the key takes.
    BadValue {
        /// The value given.
        value: String,
        /// What the key takes.
        expected: &'static str,
    },
    /// A `"` was opened and never closed.
    UnterminatedQuote,
    /// The key only means something together with another that is missing or excluded.
    Conflict(&'static str),
}

/// One argument the kernel cannot use, by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgError {
    /// The key as given (without quotes).
    pub key: String,
    /// What is wrong.
    pub problem: Problem,
}

/// Keys and values longer than this are shortened in messages.
const SHOWN_CHARS: usize = 48;

/// `s` for a console line: control characters escaped, at most [`SHOWN_CHARS`] characters.
fn shown(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().take(SHOWN_CHARS) {
        out.extend(c.escape_debug());
    }
    if s.chars().count() > SHOWN_CHARS {
        out.push('…');
    }
    out
}

impl BootArgError {
    /// True if the boot must stop: the argument changes what runs (which tests, which workload,
    /// its seed or size, how the SMMU is driven, what is traced), so running anything else would
    /// report on something not asked for. Only an unknown key (Linux's `console=` on a Pi's
    /// `cmdline.txt`) and a log level, which changes only what is printed, are merely reported.
    pub fn is_fatal(&self) -> bool {
        !matches!(self.problem, Problem::UnknownKey)
            && spec(&self.key).is_some_and(|k| k.changes_what_runs)
    }

    /// The key as shown in messages: escaped, and shortened if very long.
    pub fn shown_key(&self) -> String {
        shown(&self.key)
    }
}

impl fmt::Display for BootArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.shown_key();
        match &self.problem {
            Problem::UnknownKey => write!(f, "bootargs: `{key}`: unknown key"),
            Problem::MissingValue => write!(f, "bootargs: `{key}` needs a value (`{key}=...`)"),
            Problem::EmptyValue => write!(f, "bootargs: `{key}=` has an empty value"),
            Problem::BadValue { value, expected } => {
                write!(f, "bootargs: `{key}={}`: expected {expected}", shown(value))
            }
            Problem::UnterminatedQuote => write!(f, "bootargs: `{key}`: unterminated quote"),
            Problem::Conflict(why) => write!(f, "bootargs: `{key}`: {why}"),
        }
    }
}

/// The result of parsing a command line: what could be used, and what could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The arguments.
    pub args: BootArgs,
    /// Every argument that was not used, in command-line order.
    pub errors: Vec<BootArgError>,
}

impl Parsed {
    /// The errors that must stop the boot.
    pub fn fatal(&self) -> impl Iterator<Item = &BootArgError> {
        self.errors.iter().filter(|e| e.is_fatal())
    }
}

/// How a key takes its value.
#[derive(Clone, Copy)]
enum Shape {
    /// A bare flag or a boolean.
    Flag,
    /// Needs `=value`.
    Value,
}

/// One known key.
struct KeySpec {
    name: &'static str,
    shape: Shape,
    changes_what_runs: bool,
    set: fn(&mut BootArgs, Option<&str>) -> Result<(), Problem>,
}

const fn key(
    name: &'static str,
    shape: Shape,
    changes_what_runs: bool,
    set: fn(&mut BootArgs, Option<&str>) -> Result<(), Problem>,
) -> KeySpec {
    KeySpec {
        name,
        shape,
        changes_what_runs,
        set,
    }
}

const NUMBER: &str = "a number (decimal, or hex with 0x)";
const POSITIVE: &str = "a number above 0 (decimal, or hex with 0x)";

/// Every key the kernel reads.
const KEYS: &[KeySpec] = &[
    key("ktest", Shape::Value, true, |a, v| {
        a.ktest = Some(filter(v)?);
        Ok(())
    }),
    key("bench", Shape::Value, true, |a, v| {
        a.bench = Some(filter(v)?);
        Ok(())
    }),
    key("bench.pages", Shape::Value, true, |a, v| {
        a.bench_pages = Some(page_counts(v.unwrap_or(""))?);
        Ok(())
    }),
    key("seed", Shape::Value, true, |a, v| {
        a.seed = Some(number(v, NUMBER)?);
        Ok(())
    }),
    key("log", Shape::Value, false, |a, v| {
        a.log = Some(log_level(v.unwrap_or(""))?);
        Ok(())
    }),
    key("trace", Shape::Flag, true, |a, v| {
        a.trace = flag(v)?;
        Ok(())
    }),
    key("ktest.fail", Shape::Flag, true, |a, v| {
        a.ktest_fail = flag(v)?;
        Ok(())
    }),
    key("ktest.crash", Shape::Flag, true, |a, v| {
        a.ktest_crash = match v {
            Some("stack") => Some(Crash::StackOverflow),
            _ => flag(v)
                .map_err(|_| bad(v, "1, 0 or `stack`"))?
                .then_some(Crash::Exception),
        };
        Ok(())
    }),
    key("edu.dma_mask", Shape::Value, true, |a, v| {
        let m = number(v, "a DMA mask 2^n - 1 of 12 to 64 bits")?;
        if m.count_ones() < 12 || m & m.wrapping_add(1) != 0 {
            return Err(bad(v, "a DMA mask 2^n - 1 of 12 to 64 bits"));
        }
        a.edu_dma_mask = Some(m);
        Ok(())
    }),
    key("smmu.strategy", Shape::Value, true, set_strategy),
    key("strategy", Shape::Value, true, set_strategy),
    key("smmu.skip_invalidate", Shape::Flag, true, |a, v| {
        a.smmu_skip_invalidate = flag(v)?;
        Ok(())
    }),
    key("smmu.eventq_log2", Shape::Value, true, |a, v| {
        let n = number(v, "a queue size log2, 0 to 19")?;
        if n > EVENTQ_LOG2_MAX {
            return Err(bad(v, "a queue size log2, 0 to 19"));
        }
        a.smmu_eventq_log2 = Some(n as u8);
        Ok(())
    }),
    key("dma.engine", Shape::Value, true, |a, v| {
        a.dma_engine = Some(match v {
            Some("bcm") => CopyEngine::Bcm,
            Some("cpu") => CopyEngine::Cpu,
            _ => return Err(bad(v, "`bcm` or `cpu`")),
        });
        Ok(())
    }),
    key("sva.smp_rounds", Shape::Value, true, |a, v| {
        a.sva_smp_rounds = Some(positive(v)?);
        Ok(())
    }),
    key("job", Shape::Value, true, |a, v| {
        a.job = match v {
            Some("coherence") => Job::Coherence,
            Some("soak") => Job::Soak,
            _ => return Err(bad(v, "`coherence` or `soak`")),
        };
        Ok(())
    }),
    key("rounds", Shape::Value, true, |a, v| {
        a.rounds = Some(positive(v)?);
        Ok(())
    }),
    key("fault", Shape::Value, true, |a, v| {
        // The names are the soak's fault plan's to check; a list naming none is refused here.
        if v.unwrap_or("").split(',').all(|k| k.trim().is_empty()) {
            return Err(bad(v, "fault kinds such as `sync,cmdq`, or `all`"));
        }
        a.fault = v.map(String::from);
        Ok(())
    }),
    key("fault.seed", Shape::Value, true, |a, v| {
        a.fault_seed = Some(number(v, NUMBER)?);
        Ok(())
    }),
    key("fault.rate", Shape::Value, true, |a, v| {
        let r = number(v, "a chance per mille, 1 to 1000")?;
        if !(1..=1000).contains(&r) {
            return Err(bad(v, "a chance per mille, 1 to 1000"));
        }
        a.fault_rate = Some(r);
        Ok(())
    }),
];

fn spec(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.name == name)
}

fn bad(v: Option<&str>, expected: &'static str) -> Problem {
    Problem::BadValue {
        value: String::from(v.unwrap_or("")),
        expected,
    }
}

fn number(v: Option<&str>, expected: &'static str) -> Result<u64, Problem> {
    let s = v.unwrap_or("");
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse::<u64>(),
    };
    // `from_str_radix` takes a leading `+`: "0x+1" is not a number a person writes.
    match parsed {
        Ok(n) if !s.contains('+') => Ok(n),
        _ => Err(bad(v, expected)),
    }
}

fn positive(v: Option<&str>) -> Result<u64, Problem> {
    match number(v, POSITIVE)? {
        0 => Err(bad(v, POSITIVE)),
        n => Ok(n),
    }
}

fn flag(v: Option<&str>) -> Result<bool, Problem> {
    match v {
        None | Some("1" | "on" | "true" | "yes" | "y") => Ok(true),
        Some("0" | "off" | "false" | "no" | "n") => Ok(false),
        _ => Err(bad(v, "1, 0, on, off, true, false, yes or no")),
    }
}

/// A test or benchmark filter: comma-separated globs, at least one of them non-empty.
fn filter(v: Option<&str>) -> Result<String, Problem> {
    let s = v.unwrap_or("");
    if s.split(',').all(|g| g.trim().is_empty()) {
        return Err(bad(v, "comma-separated globs such as `mm.*,smmu`"));
    }
    Ok(String::from(s))
}

fn page_counts(s: &str) -> Result<Vec<u64>, Problem> {
    s.split(',')
        .map(|n| positive(Some(n)).map_err(|_| bad(Some(s), "page counts above 0, e.g. 1,16,512")))
        .collect()
}

fn log_level(s: &str) -> Result<log::LevelFilter, Problem> {
    Ok(match s {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => return Err(bad(Some(s), "off, error, warn, info, debug or trace")),
    })
}

fn set_strategy(a: &mut BootArgs, v: Option<&str>) -> Result<(), Problem> {
    let name = v.unwrap_or("");
    let s = SmmuStrategy::NAMES
        .iter()
        .find(|(n, _)| *n == name || (n.replace('-', "_") == name))
        .map(|(_, s)| *s)
        .ok_or_else(|| bad(v, "per-page, range, asid or auto"))?;
    a.smmu_strategy = Some(s);
    Ok(())
}

/// One argument as written: its key, and its value if it had `=`.
#[derive(Debug, PartialEq, Eq)]
struct Token {
    key: String,
    value: Option<String>,
    unterminated: bool,
}

/// Splits at white space outside double quotes; quotes are removed (Linux's `next_arg`).
fn tokens(cmdline: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = cmdline.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return out;
        }
        let (mut text, mut quoted) = (String::new(), false);
        // Where `=` split the key from the value (the first one outside... or inside quotes).
        let mut eq: Option<usize> = None;
        while let Some(c) = chars.next_if(|c| quoted || !c.is_whitespace()) {
            match c {
                '"' => quoted = !quoted,
                '=' if eq.is_none() => {
                    eq = Some(text.len());
                    text.push(c);
                }
                _ => text.push(c),
            }
        }
        let (key, value) = match eq {
            Some(at) => (
                String::from(&text[..at]),
                Some(String::from(&text[at + 1..])),
            ),
            None => (text, None),
        };
        out.push(Token {
            key,
            value,
            unterminated: quoted,
        });
    }
}

impl BootArgs {
    /// Parses `cmdline`. Every argument that cannot be used is in [`Parsed::errors`], and the
    /// field it would have set keeps its earlier value (or the default).
    pub fn parse(cmdline: &str) -> Parsed {
        let mut p = Parsed::default();
        for t in tokens(cmdline) {
            if let Err(problem) = p.args.apply(&t) {
                p.errors.push(BootArgError {
                    key: t.key,
                    problem,
                });
            }
        }
        p.errors.extend(p.args.conflicts());
        p
    }

    fn apply(&mut self, t: &Token) -> Result<(), Problem> {
        let spec = spec(&t.key).ok_or(Problem::UnknownKey)?;
        if t.unterminated {
            return Err(Problem::UnterminatedQuote);
        }
        match (spec.shape, t.value.as_deref()) {
            (Shape::Value, None) => Err(Problem::MissingValue),
            (_, Some("")) => Err(Problem::EmptyValue),
            (_, v) => (spec.set)(self, v),
        }
    }

    /// Arguments that contradict each other.
    fn conflicts(&self) -> Vec<BootArgError> {
        let mut out = Vec::new();
        let mut conflict = |key: &str, why| {
            out.push(BootArgError {
                key: String::from(key),
                problem: Problem::Conflict(why),
            })
        };
        if self.ktest.is_some() && self.bench.is_some() {
            conflict("ktest", "`bench=` is given too: one KTAP document per boot");
        }
        let soak = self.job == Job::Soak && self.ktest.is_none() && self.bench.is_none();
        for (key, given) in [
            ("fault", self.fault.is_some()),
            ("fault.seed", self.fault_seed.is_some()),
            ("fault.rate", self.fault_rate.is_some()),
        ] {
            if given && !soak {
                conflict(
                    key,
                    "fault injection runs only in `job=soak` (without ktest=/bench=)",
                );
            }
        }
        out
    }

    /// The console's log level (`info` unless `log=` says otherwise).
    pub fn log_level(&self) -> log::LevelFilter {
        self.log.unwrap_or(log::LevelFilter::Info)
    }

    /// The arguments as a command line that parses back to `self` (for the fuzz oracle and
    /// for replaying a run).
    pub fn render(&self) -> String {
        use core::fmt::Write;
        let mut s = String::new();
        let mut put = |k: &str, v: &dyn fmt::Display| {
            let _ = write!(s, "{}{k}=\"{v}\"", if s.is_empty() { "" } else { " " });
        };
        if let Some(v) = &self.ktest {
            put("ktest", v);
        }
        if let Some(v) = &self.bench {
            put("bench", v);
        }
        if let Some(v) = &self.bench_pages {
            let list: Vec<String> = v.iter().map(|n| alloc::format!("{n}")).collect();
            put("bench.pages", &list.join(","));
        }
        for (k, v) in [
            ("seed", self.seed),
            ("edu.dma_mask", self.edu_dma_mask),
            ("sva.smp_rounds", self.sva_smp_rounds),
            ("rounds", self.rounds),
            ("fault.seed", self.fault_seed),
            ("fault.rate", self.fault_rate),
        ] {
            if let Some(v) = v {
                put(k, &v);
            }
        }
        if let Some(l) = self.log {
            put("log", &l.as_str().to_ascii_lowercase());
        }
        for (k, on) in [
            ("trace", self.trace),
            ("ktest.fail", self.ktest_fail),
            ("smmu.skip_invalidate", self.smmu_skip_invalidate),
        ] {
            put(k, &u8::from(on));
        }
        if let Some(c) = self.ktest_crash {
            put(
                "ktest.crash",
                &(if c == Crash::StackOverflow {
                    "stack"
                } else {
                    "1"
                }),
            );
        }
        if let Some(st) = self.smmu_strategy {
            put("smmu.strategy", &st.name());
        }
        if let Some(n) = self.smmu_eventq_log2 {
            put("smmu.eventq_log2", &n);
        }
        if let Some(e) = self.dma_engine {
            put("dma.engine", &(if e == CopyEngine::Cpu { "cpu" } else { "bcm" }));
        }
        if self.job == Job::Soak {
            put("job", &"soak");
        }
        if let Some(v) = &self.fault {
            put("fault", v);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(cmdline: &str) -> BootArgs {
        let p = BootArgs::parse(cmdline);
        assert_eq!(p.errors, [], "{cmdline}");
        p.args
    }

    fn errors(cmdline: &str) -> Vec<BootArgError> {
        BootArgs::parse(cmdline).errors
    }

    fn one_error(cmdline: &str) -> BootArgError {
        let e = errors(cmdline);
        assert_eq!(e.len(), 1, "{cmdline}: {e:?}");
        e[0].clone()
    }

    #[test]
    fn reads_every_key() {
        let a = ok(
            "ktest=mm.*,boot bench.pages=1,0x10 seed=0x2a log=debug trace ktest.fail=0 \
                    ktest.crash=stack edu.dma_mask=0xffffffff smmu.strategy=range \
                    smmu.skip_invalidate=on sva.smp_rounds=3 rounds=12",
        );
        assert_eq!(a.ktest.as_deref(), Some("mm.*,boot"));
        assert_eq!(a.bench_pages, Some(vec![1, 16]));
        assert_eq!(a.seed, Some(42));
        assert_eq!(a.log_level(), log::LevelFilter::Debug);
        assert!(a.trace && !a.ktest_fail && a.smmu_skip_invalidate);
        assert_eq!(a.ktest_crash, Some(Crash::StackOverflow));
        assert_eq!(a.edu_dma_mask, Some(0xffff_ffff));
        assert_eq!(a.smmu_strategy, Some(SmmuStrategy::Range));
        assert_eq!((a.sva_smp_rounds, a.rounds), (Some(3), Some(12)));
        let s = ok("job=soak fault=sync,cmdq fault.seed=7 fault.rate=1000 strategy=per_page");
        assert_eq!(s.job, Job::Soak);
        assert_eq!(s.fault.as_deref(), Some("sync,cmdq"));
        assert_eq!((s.fault_seed, s.fault_rate), (Some(7), Some(1000)));
        assert_eq!(s.smmu_strategy, Some(SmmuStrategy::PerPage));
        assert_eq!(ok("bench=*").bench.as_deref(), Some("*"));
        assert_eq!(ok("ktest.crash").ktest_crash, Some(Crash::Exception));
        assert_eq!(ok("ktest.crash=0").ktest_crash, None);
        assert_eq!(ok("job=coherence").job, Job::Coherence);
        assert_eq!(ok("edu.dma_mask=0xfff").edu_dma_mask, Some(0xfff));
        assert_eq!(
            ok("edu.dma_mask=0xffffffffffffffff").edu_dma_mask,
            Some(u64::MAX)
        );
        assert_eq!(ok(""), BootArgs::default());
        assert_eq!(ok("").log_level(), log::LevelFilter::Info);
        let d = ok("smmu.eventq_log2=7 dma.engine=cpu");
        assert_eq!((d.smmu_eventq_log2, d.dma_engine), (Some(7), Some(CopyEngine::Cpu)));
        assert_eq!(ok("dma.engine=bcm").dma_engine, Some(CopyEngine::Bcm));
        assert_eq!(ok("smmu.eventq_log2=19").smmu_eventq_log2, Some(19));
    }

    #[test]
    fn unknown_keys_are_named_and_not_fatal() {
        let e = one_error("ktest=* frobnicate=1");
        assert_eq!(e.key, "frobnicate");
        assert_eq!(e.problem, Problem::UnknownKey);
        assert!(!e.is_fatal());
        assert!(e.to_string().contains("`frobnicate`: unknown key"), "{e}");
        assert_eq!(one_error("quiet").key, "quiet");
        assert_eq!(one_error("expect.cpus=4").key, "expect.cpus");
    }

    #[test]
    fn bad_values_name_the_key_and_are_fatal_when_they_change_what_runs() {
        for (cmdline, key, fatal) in [
            ("seed=abc", "seed", true),
            ("seed=-1", "seed", true),
            ("seed=0x", "seed", true),
            ("seed=0x+1", "seed", true),
            ("seed=99999999999999999999", "seed", true),
            ("rounds=0", "rounds", true),
            ("rounds=-1", "rounds", true),
            ("job=nonsense", "job", true),
            ("ktest=,", "ktest", true),
            ("bench.pages=1,,2", "bench.pages", true),
            ("bench.pages=0", "bench.pages", true),
            ("ktest.fail=maybe", "ktest.fail", true),
            ("ktest.crash=heap", "ktest.crash", true),
            ("smmu.skip_invalidate=2", "smmu.skip_invalidate", true),
            ("sva.smp_rounds=0", "sva.smp_rounds", true),
            ("fault.rate=1001", "fault.rate", true),
            ("fault.rate=0", "fault.rate", true),
            ("log=bogus", "log", false),
            ("log=", "log", false),
            ("smmu.strategy=zzz", "smmu.strategy", true),
            ("strategy=", "strategy", true),
            ("strategy=rnage", "strategy", true),
            ("trace=2", "trace", true),
            ("trace=", "trace", true),
            ("edu.dma_mask=0x1234", "edu.dma_mask", true),
            ("edu.dma_mask=0x7ff", "edu.dma_mask", true),
            ("edu.dma_mask=0", "edu.dma_mask", true),
            ("smmu.eventq_log2=20", "smmu.eventq_log2", true),
            ("smmu.eventq_log2=x", "smmu.eventq_log2", true),
            ("dma.engine=gpu", "dma.engine", true),
        ] {
            let e = one_error(cmdline);
            assert_eq!(e.key, key, "{cmdline}");
            assert_eq!(e.is_fatal(), fatal, "{cmdline}: {e}");
            assert!(e.to_string().contains(key), "{cmdline}: {e}");
        }
    }

    /// Issue 13's rule, over every key the kernel reads: a value it cannot use stops the boot
    /// unless the key only changes what is printed (`log=`).
    #[test]
    fn an_unusable_value_of_any_key_but_the_log_level_is_fatal() {
        for k in KEYS {
            let e = one_error(&alloc::format!("{}=", k.name));
            assert_eq!(e.problem, Problem::EmptyValue, "{}", k.name);
            assert_eq!(e.is_fatal(), k.name != "log", "{}: {e}", k.name);
        }
    }

    #[test]
    fn a_rejected_value_leaves_the_earlier_one() {
        let p = BootArgs::parse("seed=5 seed=x log=warn log=loud");
        assert_eq!(p.args.seed, Some(5));
        assert_eq!(p.args.log_level(), log::LevelFilter::Warn);
        assert_eq!(p.errors.len(), 2);
        assert_eq!(p.fatal().count(), 1);
    }

    #[test]
    fn missing_and_empty_values() {
        assert_eq!(one_error("seed").problem, Problem::MissingValue);
        assert_eq!(one_error("job").problem, Problem::MissingValue);
        assert_eq!(one_error("seed=").problem, Problem::EmptyValue);
        assert_eq!(one_error("ktest=").problem, Problem::EmptyValue);
        assert_eq!(one_error("trace=").problem, Problem::EmptyValue);
        assert!(one_error("ktest=").is_fatal());
        // A bare `=`: the empty key is unknown.
        assert_eq!(one_error("=").key, "");
        assert_eq!(one_error("=5").problem, Problem::UnknownKey);
    }

    #[test]
    fn the_last_of_duplicates_wins() {
        let a = ok("seed=1 seed=2 job=soak job=coherence trace trace=0 ktest=a ktest=b");
        assert_eq!(a.seed, Some(2));
        assert_eq!(a.job, Job::Coherence);
        assert!(!a.trace);
        assert_eq!(a.ktest.as_deref(), Some("b"));
    }

    #[test]
    fn quotes_and_white_space() {
        let a = ok("  \tktest=\"mm.*, smmu\"\n  seed=\"7\" \"log=warn\"  ");
        assert_eq!(a.ktest.as_deref(), Some("mm.*, smmu"));
        assert_eq!(a.seed, Some(7));
        assert_eq!(a.log, Some(log::LevelFilter::Warn));
        assert_eq!(ok("ktest=a\"b\"c").ktest.as_deref(), Some("abc"));
        let e = one_error("seed=1 ktest=\"mm.* smmu");
        assert_eq!(
            (e.key.as_str(), &e.problem),
            ("ktest", &Problem::UnterminatedQuote)
        );
        assert!(e.is_fatal());
        assert_eq!(one_error("\"frob nicate\"").key, "frob nicate");
        // `=` inside a value stays in it.
        assert_eq!(ok("ktest=a=b").ktest.as_deref(), Some("a=b"));
    }

    /// `fault=,` names no fault: the soak would run without injection and pass, which is not
    /// what was asked for (as `ktest=,` is refused).
    #[test]
    fn a_fault_list_naming_nothing_is_fatal() {
        for cmdline in ["job=soak fault=,", "job=soak fault=\",, ,\""] {
            let e = one_error(cmdline);
            assert_eq!(e.key, "fault", "{cmdline}");
            assert!(e.is_fatal(), "{cmdline}: {e}");
        }
        assert_eq!(ok("job=soak fault=sync,").fault.as_deref(), Some("sync,"));
    }

    #[test]
    fn contradictions_are_fatal() {
        let e = one_error("ktest=* bench=*");
        assert_eq!(e.key, "ktest");
        assert!(e.is_fatal());
        assert_eq!(one_error("ktest=* fault=all").key, "fault");
        assert_eq!(one_error("fault.rate=5").key, "fault.rate");
        ok("job=soak fault=all fault.rate=5 fault.seed=1");
    }

    #[test]
    fn odd_keys_are_shown_escaped_and_short() {
        let e = one_error("\u{1b}[2Jx=1");
        assert!(e.to_string().contains("\\u{1b}[2Jx"), "{e}");
        let long = "k".repeat(500);
        let e = one_error(&long);
        assert!(e.to_string().len() < 120, "{e}");
    }

    #[test]
    fn render_round_trips() {
        for cmdline in [
            "",
            "ktest=\"a b,c\" seed=3 log=trace trace ktest.crash=1 smmu.strategy=per-page",
            "job=soak rounds=2 fault=all fault.seed=9 fault.rate=1 edu.dma_mask=0xfffffff",
            "bench=* bench.pages=1,2 sva.smp_rounds=4 smmu.skip_invalidate ktest.fail",
        ] {
            let a = ok(cmdline);
            assert_eq!(ok(&a.render()), a, "{cmdline} -> {}", a.render());
        }
    }
}
