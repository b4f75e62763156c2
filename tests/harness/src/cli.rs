//! Command-line parsing (by hand: the harness is built on every CI run, so no clap).

use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage:
  harness test   --board NAME [--bootargs ARGS] [--timeout SECS] [--test-timeout SECS]
                 [--kernel PATH] [--junit PATH] [--json PATH] [--repeat N] [--qemu PATH]
                 [--profiles DIR]
                 [--log-dir DIR] [--verbose] [--dry-run] [-- QEMU_ARGS...]
      Boot the kernel under QEMU with board profile NAME (qemu/NAME.toml), parse its KTAP,
      print a summary, write the console log to build/logs/NAME.log; exit 1 on any failure.
  harness run    --board NAME [--bootargs ARGS] [--replace-bootargs] [--kernel PATH] [--gdb]
                 [--trace OUT.json] [--qemu PATH] [--profiles DIR] [--dry-run] [-- QEMU_ARGS...]
      Boot it interactively (console on the terminal; Ctrl-A x quits QEMU). Exits with
      QEMU's status. --gdb: QEMU waits for gdb on :1234. --trace: boot with trace=1 and write
      the kernel's event trace as Chrome/Perfetto JSON. --replace-bootargs: ARGS replace the
      profile's (another kernel on the same machine, e.g. Linux with `-- -initrd FILE`).
  harness trace  [FILE|-] --out OUT.json
      Convert the trace in a saved console log (boot with trace=1) to Chrome/Perfetto JSON and
      check that every unmap returned only after the secondary TLBs were invalidated.
  harness serial --port DEV [--baud N] [--timeout SECS] [--test-timeout SECS] [--junit PATH]
                 [--json PATH]
                 [--log PATH] [--name NAME] [--reset-cmd CMD] [--verbose]
                 [--chainload IMAGE [--bootargs ARGS] [--replace-bootargs] [--ready-timeout SECS]
                  [--retries N]]
      Read KTAP from a real board's serial port instead of QEMU. With --chainload, first push
      IMAGE through the board's UART chainloader (boot/chainloader), with ARGS added to (or,
      with --replace-bootargs, replacing) the board's /chosen/bootargs.
  harness chainboot --port DEV [--baud N] [--kernel PATH] [--bootargs ARGS] [--replace-bootargs]
                 [--reset-cmd CMD] [--ready-timeout SECS] [--retries N] [--timeout SECS]
      Push the kernel through the chainloader, then be the board's serial console (stdin to
      the port, the port to stdout) until the kernel prints `# shootdown: exit N` (exit N),
      Ctrl-D or Ctrl-C.
  harness parse  [FILE|-] [--junit PATH] [--json PATH] [--name NAME] [--verbose]
      Parse a saved console log (or stdin), like `kunit.py parse`. --json writes every case
      (suite, name, status PASS/FAIL/SKIP/ERROR, duration, diagnostics) as JSON.
  harness kunit-check LOG... --kunit PATH/kunit.py
      Run Linux's own KTAP parser (`kunit.py parse --json`) on each log and compare with ours,
      case by case; exit 1 on a kunit.py parse error or any difference.
  harness matrix --file FILE [--sample N --rotate-by TEXT] [--bootargs ARGS] [--kernel PATH]
                 [--qemu PATH] [--log-dir DIR] [--junit PATH] [--timeout SECS]
                 [--test-timeout SECS] [--verbose] [--dry-run]
      Boot the kernel once per entry of a matrix of raw QEMU machine lines (qemu/matrix.toml),
      with `-append ktest=*` (or ARGS) and nothing else, and check each run like `test`, plus
      the banner's CPUs and memory against -smp and -m. --sample N runs N consecutive entries
      chosen by TEXT (a date, a commit), rotating through the matrix. Consoles in
      DIR/NAME.log (default build/logs/matrix). Exit 1 if any entry failed.
  harness boards [--profiles DIR]
      List the board profiles.
  harness soak   --boards B1,B2 --seeds S1,S2 --rounds N [--bootargs ARGS] [--expect-stale]
                 [--timeout SECS] [--log-dir DIR] [--log-prefix NAME] [--kernel PATH]
                 [--qemu PATH] [--profiles DIR]
      Boot `job=soak seed=S rounds=N ARGS` on every board for every seed (console in
      DIR/NAME-BOARD-SEED.log; default build/logs/soak-...), print one row per run from the
      kernel's `# soak` line and the totals. Exit 1 unless every run exited 0 with no stale
      access and the kernel's PASS; with --expect-stale (smmu.skip_invalidate=1) unless every
      run failed *and* saw stale accesses. --timeout is per run (default 600).
  harness bench-report [--kernel-log BOARD=LOG]... [--qemu-trace BOARD=TRACE]...
                 [--criterion DIR] [--out DIR] [--peer] [--meta KEY=VALUE]...
                 [--require all|commands|peer|GOAL,...]
      Read the in-kernel benchmark lines of console logs (`bench=` boots under
      QEMU -icount shift=0) and criterion's results (target/criterion), check the
      performance goals, and with --out write results.json, results.md and SVG plots
      there. --qemu-trace: QEMU's -D trace of that board's boot (events in
      bench/qemu_trace.rs): its SMMU commands are checked against the kernel's counts.
      --peer (`make bench-peer`; Linux's log is one more BOARD): write peer.md and
      peer.json instead, headed by the --meta pairs. Exit 1 if a goal fails, a benchmark
      failed, a log counted timer ticks instead of instructions, or a --require'd goal
      was not measured.

  --bootargs     appended to the profile's default kernel command line (`ktest=GLOB,...`,
                 `seed=N`, ...)
  --timeout      whole-run limit (default: the profile's `timeout`; serial: 300)
  --test-timeout longest time without a new KTAP result line; 0 = off (default: the profile's
                 `test_timeout`; serial: 60)
  --kernel       default build/shootdown.img
  --repeat N     run N times and print pass counts per test (finds flaky tests)
  --qemu         the emulator program (default $QEMU, else qemu-system-aarch64)
  --profiles     board profile directory (default: the nearest qemu/ above the current one)
  --verbose      echo the console live and list every test in the summary
  --dry-run      print the QEMU command line and exit
  --reset-cmd    shell command run after the port is open, to power-cycle or reset the board
  --ready-timeout how long to wait for the chainloader's READY (serial: 60; chainboot: forever)
  --retries      sends repeated after a line-noise refusal (checksum, timeout): default 3
  QEMU_ARGS      appended after the profile's arguments: they override -m, -smp, -cpu

exit status: 0 all tests passed, 1 a test or the run failed, 2 bad usage or setup";

/// `harness test` / `harness run` options.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QemuOptions {
    pub board: String,
    pub bootargs: Option<String>,
    pub kernel: Option<PathBuf>,
    pub qemu: Option<String>,
    pub profiles: Option<PathBuf>,
    pub extra: Vec<String>,
    pub dry_run: bool,
    // test only
    pub timeout: Option<Duration>,
    /// `Some(None)` = switched off with 0.
    pub test_timeout: Option<Option<Duration>>,
    pub junit: Option<PathBuf>,
    /// Per-case results as JSON ([`crate::results`]).
    pub json: Option<PathBuf>,
    pub repeat: usize,
    pub log_dir: Option<PathBuf>,
    pub verbose: bool,
    // run only
    pub gdb: bool,
    /// Write the kernel's trace (boot with `trace=1`) here as Chrome trace JSON.
    pub trace: Option<PathBuf>,
    /// `--bootargs` replace the profile's (which are Shootdown's): booting another kernel on
    /// the profile's machine (`make bench-peer` boots Linux).
    pub replace_bootargs: bool,
}

/// `harness serial` options.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SerialOptions {
    pub port: PathBuf,
    pub baud: u32,
    pub timeout: Duration,
    pub test_timeout: Option<Duration>,
    pub junit: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub name: String,
    pub reset_cmd: Option<String>,
    pub verbose: bool,
    /// Push this image through the chainloader first.
    pub chainload: Option<PathBuf>,
    pub push: PushOptions,
}

/// How `--chainload` / `chainboot` push a kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct PushOptions {
    /// Boot arguments sent with the kernel (`None`: the board's own are kept).
    pub bootargs: Option<String>,
    /// Replace the board's boot arguments instead of appending to them.
    pub replace_bootargs: bool,
    /// `None`: wait for READY until the port closes.
    pub ready_timeout: Option<Duration>,
    pub retries: u32,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            bootargs: None,
            replace_bootargs: false,
            ready_timeout: Some(Duration::from_secs(60)),
            retries: 3,
        }
    }
}

/// `harness chainboot` options.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChainbootOptions {
    pub port: PathBuf,
    pub baud: u32,
    pub kernel: Option<PathBuf>,
    pub reset_cmd: Option<String>,
    /// Console time limit (`None`: none).
    pub timeout: Option<Duration>,
    pub push: PushOptions,
}

/// `harness parse` options.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParseOptions {
    /// `None` or `-` = stdin.
    pub input: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub name: String,
    pub verbose: bool,
}

/// `harness matrix` options.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MatrixOptions {
    pub file: PathBuf,
    /// Run only this many entries (`None`: all).
    pub sample: Option<usize>,
    /// What picks the sample's window (a date, a commit).
    pub rotate_by: String,
    pub bootargs: Option<String>,
    pub kernel: Option<PathBuf>,
    pub qemu: Option<String>,
    pub log_dir: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    pub timeout: Option<Duration>,
    pub test_timeout: Option<Option<Duration>>,
    pub verbose: bool,
    pub dry_run: bool,
}

/// `harness kunit-check` options.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KunitCheckOptions {
    /// Console logs to check.
    pub logs: Vec<PathBuf>,
    /// Linux's `tools/testing/kunit/kunit.py`.
    pub kunit: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Test(QemuOptions),
    Run(QemuOptions),
    Serial(SerialOptions),
    Chainboot(ChainbootOptions),
    Parse(ParseOptions),
    KunitCheck(KunitCheckOptions),
    /// `harness trace`: a saved log's trace to Chrome JSON.
    Trace {
        input: Option<PathBuf>,
        out: PathBuf,
    },
    Boards {
        profiles: Option<PathBuf>,
    },
    BenchReport(crate::bench::report::ReportOptions),
    Matrix(MatrixOptions),
    Soak(crate::soak::SoakOptions),
    Help,
}

/// Walks `--flag value` / `--flag=value` arguments.
struct Args {
    items: std::vec::IntoIter<String>,
    /// A value given inline as `--flag=value`.
    inline: Option<String>,
    /// Everything after `--`.
    rest: Vec<String>,
}

impl Args {
    /// The next flag (or positional), or `None` at the end / at `--`.
    fn next_flag(&mut self) -> Result<Option<String>, String> {
        if let Some(v) = self.inline.take() {
            return Err(format!("unexpected value `{v}`"));
        }
        let Some(arg) = self.items.next() else {
            return Ok(None);
        };
        if arg == "--" {
            self.rest = self.items.by_ref().collect();
            return Ok(None);
        }
        if let Some((flag, value)) = arg.split_once('=').filter(|(f, _)| f.starts_with("--")) {
            self.inline = Some(value.to_string());
            return Ok(Some(flag.to_string()));
        }
        Ok(Some(arg))
    }

    fn value(&mut self, flag: &str) -> Result<String, String> {
        if let Some(v) = self.inline.take() {
            return Ok(v);
        }
        self.items
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))
    }

    fn seconds(&mut self, flag: &str) -> Result<Duration, String> {
        let v = self.value(flag)?;
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("{flag}: `{v}` is not a number of seconds"))
    }

    fn number<T: std::str::FromStr>(&mut self, flag: &str) -> Result<T, String> {
        let v = self.value(flag)?;
        v.parse()
            .map_err(|_| format!("{flag}: `{v}` is not a valid number"))
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: Vec<String>) -> Result<Command, String> {
    let mut it = args.into_iter();
    let Some(sub) = it.next() else {
        return Ok(Command::Help);
    };
    let mut a = Args {
        items: it,
        inline: None,
        rest: Vec::new(),
    };
    match sub.as_str() {
        "test" | "run" => parse_qemu(&sub, &mut a),
        "serial" => parse_serial(&mut a),
        "chainboot" => parse_chainboot(&mut a),
        "parse" => parse_parse(&mut a),
        "kunit-check" => parse_kunit_check(&mut a),
        "trace" => {
            let mut input = None;
            let mut out = None;
            while let Some(flag) = a.next_flag()? {
                match flag.as_str() {
                    "--out" | "-o" => out = Some(PathBuf::from(a.value(&flag)?)),
                    f if (f == "-" || !f.starts_with('-')) && input.is_none() => {
                        input = Some(PathBuf::from(f))
                    }
                    _ => return Err(unknown(&flag, "trace")),
                }
            }
            Ok(Command::Trace {
                input,
                out: out.ok_or("`harness trace` needs --out OUT.json")?,
            })
        }
        "boards" => {
            let mut profiles = None;
            while let Some(flag) = a.next_flag()? {
                match flag.as_str() {
                    "--profiles" => profiles = Some(a.value(&flag)?.into()),
                    _ => return Err(unknown(&flag, "boards")),
                }
            }
            Ok(Command::Boards { profiles })
        }
        "bench-report" => parse_bench_report(&mut a),
        "soak" => parse_soak(&mut a),
        "matrix" => parse_matrix(&mut a),
        "help" | "--help" | "-h" => Ok(Command::Help),
        other => Err(format!(
            "unknown command `{other}` (test, run, serial, chainboot, parse, kunit-check, trace, boards, soak, bench-report, matrix)"
        )),
    }
}

fn parse_bench_report(a: &mut Args) -> Result<Command, String> {
    let mut o = crate::bench::report::ReportOptions::default();
    while let Some(flag) = a.next_flag()? {
        match flag.as_str() {
            "--kernel-log" => {
                let (board, path) = pair(&flag, &a.value(&flag)?, "BOARD=LOG")?;
                o.kernel_logs.push((board, path.into()));
            }
            "--qemu-trace" => {
                let (board, path) = pair(&flag, &a.value(&flag)?, "BOARD=TRACE")?;
                o.qemu_traces.push((board, path.into()));
            }
            "--meta" => o.meta.push(pair(&flag, &a.value(&flag)?, "KEY=VALUE")?),
            "--peer" => o.peer = true,
            "--criterion" => o.criterion = Some(a.value(&flag)?.into()),
            "--out" => o.out = Some(a.value(&flag)?.into()),
            "--require" => o
                .require
                .extend(a.value(&flag)?.split(',').map(str::to_string)),
            _ => return Err(unknown(&flag, "bench-report")),
        }
    }
    if !a.rest.is_empty() {
        return Err("`harness bench-report` takes no arguments after --".into());
    }
    if o.kernel_logs.is_empty() && o.criterion.is_none() {
        return Err(
            "`harness bench-report` needs --kernel-log BOARD=LOG or --criterion DIR".into(),
        );
    }
    crate::bench::report::required_goals(&o.require)?;
    Ok(Command::BenchReport(o))
}

/// `KEY=VALUE` with neither side empty.
fn pair(flag: &str, v: &str, shape: &str) -> Result<(String, String), String> {
    v.split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{flag}: `{v}` is not {shape}"))
}

/// A list given as one argument, separated by spaces or commas (`--boards "virt-smmu raspi4b"`).
fn list(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|item| !item.is_empty())
}

fn parse_matrix(a: &mut Args) -> Result<Command, String> {
    let mut o = MatrixOptions::default();
    while let Some(flag) = a.next_flag()? {
        match flag.as_str() {
            "--file" => o.file = a.value(&flag)?.into(),
            "--sample" => {
                o.sample = Some(a.number(&flag)?).filter(|&n| n > 0);
                if o.sample.is_none() {
                    return Err("--sample must be more than 0".into());
                }
            }
            "--rotate-by" => o.rotate_by = a.value(&flag)?,
            "--bootargs" => o.bootargs = Some(a.value(&flag)?),
            "--kernel" => o.kernel = Some(a.value(&flag)?.into()),
            "--qemu" => o.qemu = Some(a.value(&flag)?),
            "--log-dir" => o.log_dir = Some(a.value(&flag)?.into()),
            "--junit" => o.junit = Some(a.value(&flag)?.into()),
            "--timeout" => o.timeout = Some(a.seconds(&flag)?).filter(|t| !t.is_zero()),
            "--test-timeout" => {
                let t = a.seconds(&flag)?;
                o.test_timeout = Some((!t.is_zero()).then_some(t));
            }
            "--verbose" | "-v" => o.verbose = true,
            "--dry-run" => o.dry_run = true,
            _ => return Err(unknown(&flag, "matrix")),
        }
    }
    if !a.rest.is_empty() {
        return Err("`harness matrix` takes no arguments after --: put them in the matrix".into());
    }
    if o.file.as_os_str().is_empty() {
        return Err("`harness matrix` needs --file FILE".into());
    }
    if o.sample.is_some() && o.rotate_by.is_empty() {
        return Err("--sample needs --rotate-by TEXT (a date or a commit)".into());
    }
    Ok(Command::Matrix(o))
}

fn parse_soak(a: &mut Args) -> Result<Command, String> {
    let mut o = crate::soak::SoakOptions::default();
    while let Some(flag) = a.next_flag()? {
        match flag.as_str() {
            "--boards" | "--board" => o.boards.extend(list(&a.value(&flag)?).map(str::to_string)),
            "--seeds" | "--seed" => {
                let v = a.value(&flag)?;
                for seed in list(&v) {
                    o.seeds.push(
                        seed.parse()
                            .map_err(|_| format!("{flag}: `{seed}` is not a seed"))?,
                    );
                }
            }
            "--rounds" => o.rounds = a.number(&flag)?,
            "--bootargs" => o.bootargs = a.value(&flag)?,
            "--expect-stale" => o.expect_stale = true,
            "--timeout" => {
                o.timeout = a.seconds(&flag)?;
                if o.timeout.is_zero() {
                    return Err("--timeout must be more than 0".into());
                }
            }
            "--log-dir" => o.log_dir = a.value(&flag)?.into(),
            "--log-prefix" => o.log_prefix = a.value(&flag)?,
            "--kernel" => o.kernel = Some(a.value(&flag)?.into()),
            "--qemu" => o.qemu = Some(a.value(&flag)?),
            "--profiles" => o.profiles = Some(a.value(&flag)?.into()),
            _ => return Err(unknown(&flag, "soak")),
        }
    }
    if !a.rest.is_empty() {
        return Err("`harness soak` takes no arguments after --".into());
    }
    if o.boards.is_empty() || o.seeds.is_empty() {
        return Err("`harness soak` needs --boards and --seeds".into());
    }
    if o.rounds == 0 {
        return Err("`harness soak` needs --rounds N (at least 1)".into());
    }
    Ok(Command::Soak(o))
}

fn unknown(flag: &str, sub: &str) -> String {
    format!("unknown option `{flag}` for `harness {sub}`")
}

fn parse_qemu(sub: &str, a: &mut Args) -> Result<Command, String> {
    let test = sub == "test";
    let mut o = QemuOptions {
        repeat: 1,
        ..Default::default()
    };
    while let Some(flag) = a.next_flag()? {
        match flag.as_str() {
            "--board" => o.board = a.value(&flag)?,
            "--bootargs" => o.bootargs = Some(a.value(&flag)?),
            "--kernel" => o.kernel = Some(a.value(&flag)?.into()),
            "--qemu" => o.qemu = Some(a.value(&flag)?),
            "--profiles" => o.profiles = Some(a.value(&flag)?.into()),
            "--dry-run" => o.dry_run = true,
            "--timeout" if test => {
                let t = a.seconds(&flag)?;
                if t.is_zero() {
                    return Err("--timeout must be more than 0".into());
                }
                o.timeout = Some(t);
            }
            "--test-timeout" if test => {
                let t = a.seconds(&flag)?;
                o.test_timeout = Some(Some(t).filter(|t| !t.is_zero()));
            }
            "--junit" if test => o.junit = Some(a.value(&flag)?.into()),
            "--json" if test => o.json = Some(a.value(&flag)?.into()),
            "--repeat" if test => {
                o.repeat = a.number(&flag)?;
                if o.repeat == 0 {
                    return Err("--repeat must be at least 1".into());
                }
            }
            "--log-dir" if test => o.log_dir = Some(a.value(&flag)?.into()),
            "--verbose" | "-v" if test => o.verbose = true,
            "--gdb" if !test => o.gdb = true,
            "--trace" if !test => o.trace = Some(a.value(&flag)?.into()),
            "--replace-bootargs" if !test => o.replace_bootargs = true,
            _ => return Err(unknown(&flag, sub)),
        }
    }
    if o.board.is_empty() {
        return Err(format!(
            "`harness {sub}` needs --board NAME (see `harness boards`)"
        ));
    }
    o.extra = std::mem::take(&mut a.rest);
    Ok(if test {
        Command::Test(o)
    } else {
        Command::Run(o)
    })
}

fn parse_serial(a: &mut Args) -> Result<Command, String> {
    let mut o = SerialOptions {
        baud: 115200,
        timeout: Duration::from_secs(300),
        test_timeout: Some(Duration::from_secs(60)),
        name: "serial".into(),
        ..Default::default()
    };
    let mut port = None;
    while let Some(flag) = a.next_flag()? {
        match flag.as_str() {
            "--port" => port = Some(PathBuf::from(a.value(&flag)?)),
            "--baud" => o.baud = a.number(&flag)?,
            "--timeout" => {
                o.timeout = a.seconds(&flag)?;
                if o.timeout.is_zero() {
                    return Err("--timeout must be more than 0".into());
                }
            }
            "--test-timeout" => o.test_timeout = Some(a.seconds(&flag)?).filter(|t| !t.is_zero()),
            "--junit" => o.junit = Some(a.value(&flag)?.into()),
            "--json" => o.json = Some(a.value(&flag)?.into()),
            "--log" => o.log = Some(a.value(&flag)?.into()),
            "--name" => o.name = a.value(&flag)?,
            "--reset-cmd" => o.reset_cmd = Some(a.value(&flag)?),
            "--verbose" | "-v" => o.verbose = true,
            "--chainload" => o.chainload = Some(a.value(&flag)?.into()),
            f if push_flag(f, a, &mut o.push)? => {}
            _ => return Err(unknown(&flag, "serial")),
        }
    }
    if !a.rest.is_empty() {
        return Err("`harness serial` takes no arguments after --".into());
    }
    if o.chainload.is_none() && o.push != PushOptions::default() {
        return Err(
            "--bootargs, --replace-bootargs, --ready-timeout and --retries need --chainload IMAGE"
                .into(),
        );
    }
    o.port = port.ok_or("`harness serial` needs --port DEV (e.g. /dev/ttyUSB0)")?;
    Ok(Command::Serial(o))
}

/// The push options shared by `serial --chainload` and `chainboot`; true if `flag` was one.
fn push_flag(flag: &str, a: &mut Args, o: &mut PushOptions) -> Result<bool, String> {
    match flag {
        "--bootargs" => o.bootargs = Some(a.value(flag)?),
        "--replace-bootargs" => o.replace_bootargs = true,
        "--ready-timeout" => o.ready_timeout = Some(a.seconds(flag)?).filter(|t| !t.is_zero()),
        "--retries" => o.retries = a.number(flag)?,
        _ => return Ok(false),
    }
    Ok(true)
}

fn parse_chainboot(a: &mut Args) -> Result<Command, String> {
    let mut o = ChainbootOptions {
        baud: 115200,
        push: PushOptions {
            ready_timeout: None,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut port = None;
    while let Some(flag) = a.next_flag()? {
        match flag.as_str() {
            "--port" => port = Some(PathBuf::from(a.value(&flag)?)),
            "--baud" => o.baud = a.number(&flag)?,
            "--kernel" => o.kernel = Some(a.value(&flag)?.into()),
            "--reset-cmd" => o.reset_cmd = Some(a.value(&flag)?),
            "--timeout" => o.timeout = Some(a.seconds(&flag)?).filter(|t| !t.is_zero()),
            f if push_flag(f, a, &mut o.push)? => {}
            _ => return Err(unknown(&flag, "chainboot")),
        }
    }
    if !a.rest.is_empty() {
        return Err("`harness chainboot` takes no arguments after --".into());
    }
    o.port = port.ok_or("`harness chainboot` needs --port DEV (e.g. /dev/ttyUSB0)")?;
    Ok(Command::Chainboot(o))
}

fn parse_kunit_check(a: &mut Args) -> Result<Command, String> {
    let mut o = KunitCheckOptions::default();
    let mut kunit = None;
    while let Some(flag) = a.next_flag()? {
        match flag.as_str() {
            "--kunit" => kunit = Some(a.value(&flag)?.into()),
            f if !f.starts_with("--") => o.logs.push(f.into()),
            _ => return Err(unknown(&flag, "kunit-check")),
        }
    }
    o.kunit = kunit.ok_or("`harness kunit-check` needs --kunit PATH/kunit.py")?;
    if o.logs.is_empty() {
        return Err("`harness kunit-check` needs at least one console log".into());
    }
    Ok(Command::KunitCheck(o))
}

fn parse_parse(a: &mut Args) -> Result<Command, String> {
    let mut o = ParseOptions::default();
    while let Some(flag) = a.next_flag()? {
        match flag.as_str() {
            "--junit" => o.junit = Some(a.value(&flag)?.into()),
            "--json" => o.json = Some(a.value(&flag)?.into()),
            "--name" => o.name = a.value(&flag)?,
            "--verbose" | "-v" => o.verbose = true,
            f if !f.starts_with("--") && o.input.is_none() => o.input = Some(f.into()),
            _ => return Err(unknown(&flag, "parse")),
        }
    }
    if o.name.is_empty() {
        // Label the summary with the log's name: `build/logs/virt.log` -> `virt`.
        o.name = o
            .input
            .as_ref()
            .and_then(|p| p.file_stem())
            .filter(|s| *s != "-")
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "stdin".into());
    }
    Ok(Command::Parse(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn test_command_with_everything() {
        let cmd = parse(args(&[
            "test",
            "--board",
            "virt-smmu",
            "--bootargs=ktest=mm.*,boot.reached seed=3",
            "--timeout",
            "30",
            "--test-timeout",
            "0",
            "--junit",
            "build/junit/virt.xml",
            "--repeat",
            "5",
            "--",
            "-m",
            "3G",
            "--weird",
        ]))
        .unwrap();
        let Command::Test(o) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(o.board, "virt-smmu");
        assert_eq!(
            o.bootargs.as_deref(),
            Some("ktest=mm.*,boot.reached seed=3")
        );
        assert_eq!(o.timeout, Some(Duration::from_secs(30)));
        assert_eq!(o.test_timeout, Some(None));
        assert_eq!(o.repeat, 5);
        assert_eq!(o.extra, ["-m", "3G", "--weird"]);
    }

    #[test]
    fn run_takes_gdb_but_not_test_options() {
        let Command::Run(o) = parse(args(&["run", "--board", "virt", "--gdb"])).unwrap() else {
            panic!()
        };
        assert!(o.gdb);
        assert!(parse(args(&["run", "--board", "virt", "--junit", "x"]))
            .unwrap_err()
            .contains("unknown option `--junit`"));
        assert!(parse(args(&["test", "--board", "virt", "--gdb"])).is_err());
    }

    #[test]
    fn errors_are_specific() {
        let err = |s: &[&str]| parse(args(s)).unwrap_err();
        assert!(err(&["test"]).contains("needs --board"));
        assert!(err(&["test", "--board"]).contains("--board needs a value"));
        assert!(
            err(&["test", "--board", "v", "--timeout", "soon"]).contains("not a number of seconds")
        );
        assert!(err(&["test", "--board", "v", "--repeat", "0"]).contains("at least 1"));
        assert!(err(&["test", "--board", "v", "--dry-run=yes"]).contains("unexpected value `yes`"));
        assert!(err(&["serial"]).contains("needs --port"));
        assert!(err(&["chainboot"]).contains("needs --port"));
        assert!(err(&["serial", "--port", "p", "--bootargs", "x"]).contains("need --chainload"));
        assert!(
            err(&["chainboot", "--port", "p", "--retries", "many"]).contains("not a valid number")
        );
        assert!(err(&["flash"]).contains("unknown command"));
    }

    #[test]
    fn chainload_options() {
        let Command::Serial(o) = parse(args(&[
            "serial",
            "--port",
            "/dev/ttyUSB0",
            "--chainload",
            "build/shootdown.img",
            "--bootargs=ktest=*",
            "--ready-timeout",
            "30",
        ]))
        .unwrap() else {
            panic!()
        };
        assert_eq!(o.chainload, Some("build/shootdown.img".into()));
        assert_eq!(o.push.bootargs.as_deref(), Some("ktest=*"));
        assert_eq!(o.push.ready_timeout, Some(Duration::from_secs(30)));
        assert!(!o.push.replace_bootargs);
        let Command::Chainboot(c) = parse(args(&[
            "chainboot",
            "--port",
            "/dev/pts/3",
            "--replace-bootargs",
            "--retries",
            "0",
        ]))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.baud, c.kernel, c.timeout, c.push.ready_timeout),
            (115200, None, None, None),
            "chainboot waits for the board as long as it takes"
        );
        assert!(c.push.replace_bootargs);
        assert_eq!(c.push.retries, 0);
    }

    #[test]
    fn soak_options() {
        let Command::Soak(o) = parse(args(&[
            "soak",
            "--boards",
            "virt-smmu raspi4b",
            "--seeds=1,2 3",
            "--rounds",
            "2",
            "--bootargs",
            "smmu.skip_invalidate=1",
            "--expect-stale",
            "--log-prefix",
            "test-soak-stale",
        ]))
        .unwrap() else {
            panic!()
        };
        assert_eq!(o.boards, ["virt-smmu", "raspi4b"]);
        assert_eq!(o.seeds, [1, 2, 3]);
        assert_eq!(o.rounds, 2);
        assert!(o.expect_stale);
        assert_eq!(o.timeout, Duration::from_secs(600));
        assert_eq!(
            o.log_path("raspi4b", 2),
            std::path::PathBuf::from("build/logs/test-soak-stale-raspi4b-2.log")
        );
        for bad in [
            "soak --seeds 1 --rounds 2",
            "soak --boards virt-smmu --rounds 2",
            "soak --boards virt-smmu --seeds 1",
            "soak --boards virt-smmu --seeds one --rounds 2",
            "soak --boards virt-smmu --seeds 1 --rounds 0",
            "soak --boards virt-smmu --seeds 1 --rounds 2 --timeout 0",
            "soak --boards virt-smmu --seeds 1 --rounds 2 -- -smp 1",
        ] {
            let words: Vec<&str> = bad.split(' ').collect();
            assert!(parse(args(&words)).is_err(), "{bad}");
        }
    }

    #[test]
    fn serial_defaults() {
        let Command::Serial(o) = parse(args(&["serial", "--port", "/dev/ttyUSB0"])).unwrap() else {
            panic!()
        };
        assert_eq!(
            (o.baud, o.timeout, o.test_timeout),
            (
                115200,
                Duration::from_secs(300),
                Some(Duration::from_secs(60))
            )
        );
        assert_eq!(parse(args(&[])).unwrap(), Command::Help);
        let Command::Parse(p) = parse(args(&["parse", "build/logs/virt.log"])).unwrap() else {
            panic!()
        };
        assert_eq!(p.input, Some("build/logs/virt.log".into()));
    }

    #[test]
    fn bench_report_options() {
        let cmd = parse(args(&[
            "bench-report",
            "--kernel-log",
            "virt-smmu=build/bench/virt-smmu.log",
            "--kernel-log=raspi4b=build/bench/raspi4b.log",
            "--criterion",
            "target/criterion",
            "--out",
            "bench",
            "--require",
            "commands,interval_100x",
        ]))
        .unwrap();
        let Command::BenchReport(o) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(
            o.kernel_logs,
            [
                ("virt-smmu".to_string(), "build/bench/virt-smmu.log".into()),
                ("raspi4b".to_string(), "build/bench/raspi4b.log".into())
            ]
        );
        assert_eq!(o.criterion, Some("target/criterion".into()));
        assert_eq!(o.out, Some("bench".into()));
        assert_eq!(o.require, ["commands", "interval_100x"]);
        for bad in [
            vec!["bench-report"],
            vec!["bench-report", "--kernel-log", "nolog"],
            vec!["bench-report", "--kernel-log", "b=l", "--require", "fast"],
        ] {
            assert!(parse(args(&bad)).is_err(), "{bad:?}");
        }
    }
}
