//! The `harness` commands.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capture::{self, Capture, End, Limits, Sinks, Stream, Target};
use crate::chainload::{self, BootargsMode, ConsoleEnd, Observer};
use crate::cli::{
    self, ChainbootOptions, Command, KunitCheckOptions, MatrixOptions, ParseOptions, PushOptions,
    QemuOptions, SerialOptions,
};
use crate::junit::{self, RunInfo};
use crate::ktap::{Counts, Parser};
use crate::profile::{self, Profile};
use crate::qemu::{self, Console, Launch, Qemu};
use crate::report::{self, Tally};
use crate::serial;
use crate::soak::{self, Exit, SoakOptions, SoakRun, SoakSummary};
use crate::trace;

/// Exit status: everything passed.
pub const PASS: i32 = 0;
/// Exit status: a test or the run failed.
pub const FAIL: i32 = 1;
/// Exit status: bad usage or setup (missing kernel, profile, emulator...).
pub const SETUP: i32 = 2;

/// A setup problem, reported as one line and exit status 2.
#[derive(Debug)]
pub struct SetupError(pub String);

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for SetupError {
    fn from(e: E) -> Self {
        SetupError(e.to_string())
    }
}

fn setup<T>(message: impl Into<String>) -> Result<T, SetupError> {
    Err(SetupError(message.into()))
}

/// Runs the command line (without the program name); returns the exit status.
pub fn main(args: Vec<String>) -> i32 {
    let command = match cli::parse(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("harness: {e}\n\n{}", cli::USAGE);
            return SETUP;
        }
    };
    let result = match command {
        Command::Help => {
            println!("{}", cli::USAGE);
            Ok(PASS)
        }
        Command::Test(o) => test(&o),
        Command::Run(o) => run(&o),
        Command::Serial(o) => serial(&o),
        Command::Chainboot(o) => chainboot(&o),
        Command::Parse(o) => parse(&o),
        Command::KunitCheck(o) => kunit_check(&o),
        Command::Trace { input, out } => trace_command(input.as_deref(), &out),
        Command::Boards { profiles } => boards(profiles.as_deref()),
        Command::BenchReport(o) => crate::bench::report::run(&o).map_err(SetupError),
        Command::Soak(o) => soak(&o),
        Command::Matrix(o) => matrix(&o),
    };
    result.unwrap_or_else(|e| {
        eprintln!("harness: {e}");
        SETUP
    })
}

/// The nearest `qemu/` directory with profiles, from the current directory upwards.
fn find_profiles() -> Result<PathBuf, SetupError> {
    let cwd = std::env::current_dir()?;
    for dir in cwd.ancestors() {
        let candidate = dir.join("qemu");
        if profile::list(&candidate).is_ok_and(|names| !names.is_empty()) {
            return Ok(candidate);
        }
    }
    setup(format!(
        "no qemu/ directory with board profiles in {} or above: run from the repository or pass --profiles DIR",
        cwd.display()
    ))
}

/// Everything needed to start QEMU for one board.
struct Prepared {
    profile: Profile,
    root: PathBuf,
    command: Vec<String>,
}

fn prepare(o: &QemuOptions, board: &str, console: Console) -> Result<Prepared, SetupError> {
    let profiles = match &o.profiles {
        Some(dir) => dir.clone(),
        None => find_profiles()?,
    };
    // Paths in profiles (the DTB) and the build outputs are relative to the repository root.
    let root = fs::canonicalize(&profiles)
        .map_err(|e| SetupError(format!("{}: {e}", profiles.display())))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let profile = Profile::load(&profiles, board)?;
    let kernel = o
        .kernel
        .clone()
        .unwrap_or_else(|| root.join("build/shootdown.img"));
    if !kernel.is_file() {
        return setup(format!(
            "kernel image {} not found: build it with `make image`",
            kernel.display()
        ));
    }
    if let Some(dtb) = profile.dtb_path(&root) {
        if !dtb.is_file() {
            return setup(format!(
                "device tree {} for board `{}` not found: fetch it with `qemu/install.sh dtb build`",
                dtb.display(),
                profile.name
            ));
        }
    }
    let launch = Launch {
        qemu: emulator(o.qemu.as_deref()),
        kernel,
        bootargs: if o.replace_bootargs {
            o.bootargs.clone().unwrap_or_default()
        } else {
            qemu::join_bootargs(&profile.bootargs, o.bootargs.as_deref())
        },
        gdb: o.gdb,
        console,
        extra: o.extra.clone(),
    };
    let command = qemu::command_line(&profile, &root, &launch);
    Ok(Prepared {
        profile,
        root,
        command,
    })
}

/// The emulator: `--qemu`, else $QEMU, else qemu-system-aarch64.
fn emulator(given: Option<&str>) -> String {
    given
        .map(str::to_string)
        .or_else(|| std::env::var("QEMU").ok().filter(|q| !q.is_empty()))
        .unwrap_or_else(|| "qemu-system-aarch64".into())
}

fn spawn_error(program: &str, e: io::Error) -> SetupError {
    if e.kind() == io::ErrorKind::NotFound {
        SetupError(format!(
            "cannot start `{program}`: not found (install QEMU >= 9.0: `qemu/install.sh qemu`)"
        ))
    } else {
        SetupError(format!("cannot start `{program}`: {e}"))
    }
}

/// `harness test`: each board of `--board a,b,c` in turn.
fn test(o: &QemuOptions) -> Result<i32, SetupError> {
    let boards: Vec<&str> = o
        .board
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .collect();
    // Check every board's setup before booting any.
    let prepared = boards
        .iter()
        .map(|b| prepare(o, b, Console::Captured))
        .collect::<Result<Vec<_>, _>>()?;
    if o.dry_run {
        for p in &prepared {
            println!("{}", qemu::shell_quote(&p.command));
        }
        return Ok(PASS);
    }
    qemu::kill_child_on_signals();
    let mut results = Vec::new();
    for p in &prepared {
        results.push((p.profile.name.as_str(), test_board(o, p)?));
    }
    if let Some(path) = &o.junit {
        let runs: Vec<_> = results
            .iter()
            .flat_map(|(board, caps)| {
                caps.iter().enumerate().map(|(i, capture)| RunInfo {
                    board,
                    repeat: (o.repeat > 1).then_some((i + 1, o.repeat)),
                    capture,
                })
            })
            .collect();
        write_junit(path, &format!("shootdown {}", boards.join(",")), &runs)?;
    }
    if let Some(path) = &o.json {
        let runs = results
            .iter()
            .flat_map(|(board, caps)| {
                caps.iter().enumerate().map(move |(i, cap)| {
                    let name = match caps.len() {
                        1 => board.to_string(),
                        n => format!("{board} [run {} of {n}]", i + 1),
                    };
                    crate::results::run(&name, &cap.document, cap.passed())
                })
            })
            .collect();
        write_json(path, &crate::results::file(runs))?;
    }
    let passed = |caps: &[Capture]| caps.iter().all(Capture::passed);
    if results.len() > 1 {
        println!("{:=^70}", " all boards ");
        for (board, caps) in &results {
            let tests: usize = caps.iter().map(|c| c.document.counts().total()).sum();
            let verdict = if passed(caps) { "PASSED" } else { "FAILED" };
            println!(
                "{board:<12} {verdict} ({tests} tests in {} runs)",
                caps.len()
            );
        }
        let all = results.iter().flat_map(|(_, caps)| caps.iter());
        let (counts, failures) = totals(all);
        println!("{}", report::closing_line("total", &counts, failures));
    }
    Ok(if results.iter().all(|(_, caps)| passed(caps)) {
        PASS
    } else {
        FAIL
    })
}

/// Test counts and failure count summed over runs.
fn totals<'a>(caps: impl IntoIterator<Item = &'a Capture>) -> (Counts, usize) {
    let mut sum = Counts::default();
    let mut failures = 0;
    for cap in caps {
        let c = cap.document.counts();
        sum.passed += c.passed;
        sum.skipped += c.skipped;
        sum.xfail += c.xfail;
        failures += cap.failures().len();
    }
    (sum, failures)
}

/// Runs one board `--repeat` times; prints its summary (and the pass counts when repeating).
fn test_board(o: &QemuOptions, p: &Prepared) -> Result<Vec<Capture>, SetupError> {
    let board = &p.profile.name;
    let mut limits = Limits::new(o.timeout.unwrap_or(p.profile.timeout));
    limits.no_progress = o.test_timeout.unwrap_or(p.profile.test_timeout);
    let log_dir = o
        .log_dir
        .clone()
        .unwrap_or_else(|| p.root.join("build/logs"));
    fs::create_dir_all(&log_dir).map_err(|e| SetupError(format!("{}: {e}", log_dir.display())))?;
    println!("[harness] {board}: {}", qemu::shell_quote(&p.command));
    let mut captures = Vec::new();
    let mut tally = Tally::default();
    for k in 1..=o.repeat {
        let stem = if o.repeat == 1 {
            board.clone()
        } else {
            format!("{board}.run{k}")
        };
        let log_path = log_dir.join(format!("{stem}.log"));
        let mut cap = boot_once(&p.command, limits, &log_dir, &stem, o.verbose)?;
        let skipped = p.profile.check_must_run(&cap.document);
        cap.board_checks.extend(skipped);
        if let Some(banner) = &p.profile.firmware_banner {
            if !cap
                .document
                .preamble
                .iter()
                .any(|l| l.contains(banner.as_str()))
            {
                cap.board_checks.push(crate::ktap::Failure {
                    test: "(boot)".into(),
                    message: format!(
                        "the profile boots through firmware, but its banner `{banner}` never \
                         appeared before the kernel"
                    ),
                });
            }
        }
        let passed = cap.passed();
        if o.repeat == 1 || !passed {
            if o.repeat > 1 {
                println!("[harness] {board}: run {k}/{} FAILED", o.repeat);
            }
            print!(
                "{}",
                report::summary(board, &cap, o.verbose, Some(&log_path))
            );
        } else {
            println!(
                "[harness] {board}: run {k}/{}: passed ({} tests, {:.2} s)",
                o.repeat,
                cap.document.counts().total(),
                cap.elapsed.as_secs_f64()
            );
        }
        tally.add(&cap);
        captures.push(cap);
    }
    if o.repeat > 1 {
        print!("{}", tally.render(board));
        let (counts, failures) = totals(&captures);
        println!("{}", report::closing_line(board, &counts, failures));
    }
    Ok(captures)
}

/// Boots `command` once, console in `log_dir/stem.log` (QEMU's stderr beside it when it said
/// anything), and checks the banner's CPUs and memory against the command's -smp and -m.
fn boot_once(
    command: &[String],
    limits: Limits,
    log_dir: &Path,
    stem: &str,
    echo: bool,
) -> Result<Capture, SetupError> {
    let log_path = log_dir.join(format!("{stem}.log"));
    let mut log = BufWriter::new(
        File::create(&log_path).map_err(|e| SetupError(format!("{}: {e}", log_path.display())))?,
    );
    let (tx, rx) = channel();
    let mut target = Qemu::spawn(command, tx).map_err(|e| spawn_error(&command[0], e))?;
    let mut cap = capture::watch(
        rx,
        &mut target,
        limits,
        Sinks {
            log: Some(&mut log),
            echo,
        },
    );
    drop(target);
    drop(log);
    let machine = crate::machine::Machine::from_args(command);
    cap.board_checks
        .extend(machine.check_banner(&cap.document.preamble));
    let stderr_path = log_dir.join(format!("{stem}.stderr.log"));
    if cap.stderr.is_empty() {
        let _ = fs::remove_file(&stderr_path);
    } else {
        let _ = fs::write(&stderr_path, cap.stderr.join("\n") + "\n");
    }
    Ok(cap)
}

/// `harness matrix`: one boot per entry (or per sampled entry) of a matrix of QEMU lines.
fn matrix(o: &MatrixOptions) -> Result<i32, SetupError> {
    let entries = crate::matrix::load(&o.file)?;
    let chosen = match o.sample {
        Some(n) => crate::matrix::sample(entries.len(), n, &o.rotate_by),
        None => (0..entries.len()).collect(),
    };
    let root = match o.file.canonicalize()?.parent().and_then(Path::parent) {
        Some(r) => r.to_path_buf(),
        None => std::env::current_dir()?,
    };
    let kernel = o
        .kernel
        .clone()
        .unwrap_or_else(|| root.join("build/shootdown.img"));
    if !kernel.is_file() {
        return setup(format!("kernel image {} not found: build it with `make image`", kernel.display()));
    }
    let log_dir = o.log_dir.clone().unwrap_or_else(|| root.join("build/logs/matrix"));
    fs::create_dir_all(&log_dir).map_err(|e| SetupError(format!("{}: {e}", log_dir.display())))?;
    let bootargs = o.bootargs.clone().unwrap_or_else(|| "ktest=*".into());
    let commands: Vec<(&crate::matrix::Entry, Vec<String>)> = chosen
        .iter()
        .map(|&i| {
            let e = &entries[i];
            let profile = Profile::from_matrix_entry(e);
            let launch = Launch {
                qemu: emulator(o.qemu.as_deref()),
                kernel: kernel.clone(),
                bootargs: bootargs.clone(),
                gdb: false,
                console: Console::Captured,
                extra: Vec::new(),
            };
            (e, qemu::command_line(&profile, &root, &launch))
        })
        .collect();
    println!(
        "[harness] matrix {}: {} of {} entries{}",
        o.file.display(),
        commands.len(),
        entries.len(),
        o.sample
            .map(|_| format!(" (sample rotated by `{}`)", o.rotate_by))
            .unwrap_or_default()
    );
    if o.dry_run {
        for (e, cmd) in &commands {
            println!("{}: {}", e.name, qemu::shell_quote(cmd));
        }
        return Ok(PASS);
    }
    qemu::kill_child_on_signals();
    let mut results = Vec::new();
    for (e, cmd) in &commands {
        let mut limits = Limits::new(o.timeout.or(e.timeout).unwrap_or(profile::DEFAULT_TIMEOUT));
        limits.no_progress = o.test_timeout.unwrap_or(Some(Duration::from_secs(90)));
        println!("[harness] {}: {}", e.name, qemu::shell_quote(cmd));
        let cap = boot_once(cmd, limits, &log_dir, &e.name, o.verbose)?;
        let log_path = log_dir.join(format!("{}.log", e.name));
        print!("{}", report::summary(&e.name, &cap, o.verbose, Some(&log_path)));
        flush();
        results.push((e.name.as_str(), cap));
    }
    if let Some(path) = &o.junit {
        let runs: Vec<_> = results
            .iter()
            .map(|(name, capture)| RunInfo {
                board: name,
                repeat: None,
                capture,
            })
            .collect();
        write_junit(path, "shootdown matrix", &runs)?;
    }
    println!("{:=^70}", " matrix ");
    for (name, cap) in &results {
        let verdict = if cap.passed() { "PASSED" } else { "FAILED" };
        let c = cap.document.counts();
        println!(
            "{name:<32} {verdict} ({} passed, {} skipped, {:.0} s)",
            c.passed,
            c.skipped + c.xfail,
            cap.elapsed.as_secs_f64()
        );
    }
    let (counts, failures) = totals(results.iter().map(|(_, c)| c));
    println!("{}", report::closing_line("matrix", &counts, failures));
    Ok(if results.iter().all(|(_, c)| c.passed()) {
        PASS
    } else {
        FAIL
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), SetupError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| SetupError(format!("{}: {e}", dir.display())))?;
    }
    let text = serde_json::to_string_pretty(value)?;
    fs::write(path, text + "\n").map_err(|e| SetupError(format!("{}: {e}", path.display())))
}

fn write_junit(path: &Path, name: &str, runs: &[RunInfo<'_>]) -> Result<(), SetupError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| SetupError(format!("{}: {e}", dir.display())))?;
    }
    fs::write(path, junit::render(name, runs))
        .map_err(|e| SetupError(format!("{}: {e}", path.display())))
}

/// `harness run`: QEMU takes over the terminal (exec), so its exit status is ours.
fn run(o: &QemuOptions) -> Result<i32, SetupError> {
    let on_terminal = qemu::stdin_is_terminal();
    let console = if on_terminal {
        Console::Terminal
    } else {
        Console::Captured
    };
    if o.board.contains(',') {
        return setup("`harness run` boots one board");
    }
    let mut o = o.clone();
    if o.trace.is_some() {
        // Tracing is a boot argument; the kernel prints the rings at exit.
        o.bootargs = Some(format!("{} trace=1", o.bootargs.as_deref().unwrap_or("")));
    }
    let o = &o;
    let p = prepare(o, &o.board, console)?;
    let quoted = qemu::shell_quote(&p.command);
    if o.dry_run {
        println!("{quoted}");
        return Ok(PASS);
    }
    eprintln!("[harness] {}: {quoted}", p.profile.name);
    if on_terminal {
        eprintln!("[harness] Ctrl-A x quits QEMU, Ctrl-A c toggles its monitor");
    }
    if o.gdb {
        let elf = o
            .kernel
            .as_ref()
            .map(|k| k.with_extension("elf"))
            .unwrap_or_else(|| p.root.join("build/shootdown.elf"));
        eprintln!("[harness] QEMU is waiting for gdb on localhost:1234; in another terminal:");
        eprintln!(
            "[harness]   gdb-multiarch {} -ex 'target remote :1234'",
            elf.display()
        );
    }
    if let Some(out) = &o.trace {
        return run_traced(&p.command, out);
    }
    let e = qemu::exec(&p.command, !on_terminal);
    Err(spawn_error(&p.command[0], e))
}

/// `harness soak`: one boot per board and seed, judged by the kernel's `# soak` line.
fn soak(o: &SoakOptions) -> Result<i32, SetupError> {
    fs::create_dir_all(&o.log_dir)
        .map_err(|e| SetupError(format!("{}: {e}", o.log_dir.display())))?;
    qemu::kill_child_on_signals();
    println!("{}", soak::header());
    let start = Instant::now();
    let mut runs = Vec::new();
    for board in &o.boards {
        for &seed in &o.seeds {
            let q = QemuOptions {
                board: board.clone(),
                bootargs: Some(o.bootargs_for(seed)),
                kernel: o.kernel.clone(),
                qemu: o.qemu.clone(),
                profiles: o.profiles.clone(),
                ..Default::default()
            };
            let p = prepare(&q, board, Console::Captured)?;
            let log = o.log_path(board, seed);
            let exit = match qemu::run_to_file(&p.command, &log, o.timeout) {
                Ok(Some(status)) => status.code().map_or(Exit::Abnormal, Exit::Status),
                Ok(None) => Exit::TimedOut,
                Err(e) => return Err(spawn_error(&p.command[0], e)),
            };
            let console = fs::read(&log)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default();
            let run = SoakRun {
                board: board.clone(),
                seed,
                exit,
                summary: SoakSummary::last_in(&console).unwrap_or_else(|| Err("no summary".into())),
            };
            println!("{}", soak::row(&run, o.rounds, &log.display().to_string()));
            flush();
            runs.push(run);
        }
    }
    let (text, passed) = soak::conclusion(o, &runs, start.elapsed().as_secs());
    print!("{text}");
    Ok(if passed { PASS } else { FAIL })
}

/// `run --trace`: QEMU's console is copied through (and kept) instead of handed over, so the
/// trace the kernel prints at exit can be written out as Chrome JSON.
fn run_traced(command: &[String], out: &Path) -> Result<i32, SetupError> {
    let mut child = Process::new(&command[0])
        .args(&command[1..])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(&command[0], e))?;
    let mut console = String::new();
    let stdout = child.stdout.take().expect("piped");
    for line in io::BufReader::new(stdout).split(b'\n') {
        let line = line.map_err(|e| SetupError(format!("reading the console: {e}")))?;
        let line = String::from_utf8_lossy(&line);
        println!("{line}");
        console.push_str(&line);
        console.push('\n');
    }
    let status = child
        .wait()
        .map_err(|e| SetupError(format!("waiting for QEMU: {e}")))?;
    let code = status.code().unwrap_or(FAIL);
    write_trace(&console, out)?;
    Ok(code)
}

/// Writes the trace in `console` to `out` and checks its unmap ordering.
fn write_trace(console: &str, out: &Path) -> Result<(), SetupError> {
    let t = trace::parse(console).map_err(|e| SetupError(e.to_string()))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| SetupError(format!("{}: {e}", dir.display())))?;
    }
    fs::write(out, trace::chrome_json(&t))
        .map_err(|e| SetupError(format!("{}: {e}", out.display())))?;
    eprintln!(
        "[harness] trace: {} events written to {}",
        t.records.len(),
        out.display()
    );
    match trace::check_unmaps(&t) {
        Ok(n) => {
            eprintln!(
                "[harness] trace: {n} unmaps, each returned after its secondary invalidation"
            );
            Ok(())
        }
        Err(e) => Err(SetupError(format!("trace check failed: {e}"))),
    }
}

/// `harness trace`: a saved console log's trace to Chrome JSON.
fn trace_command(input: Option<&Path>, out: &Path) -> Result<i32, SetupError> {
    let console = match input {
        Some(p) if p.as_os_str() != "-" => {
            fs::read_to_string(p).map_err(|e| SetupError(format!("{}: {e}", p.display())))?
        }
        _ => io::read_to_string(io::stdin()).map_err(|e| SetupError(format!("stdin: {e}")))?,
    };
    write_trace(&console, out)?;
    Ok(PASS)
}

/// A serial port as a watch target: stopping means no longer reading.
struct Port {
    stop: Arc<AtomicBool>,
}

impl Target for Port {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn ends_with_document(&self) -> bool {
        true
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long `--reset-cmd` may take.
const RESET_LIMIT: Duration = Duration::from_secs(60);

fn run_reset(cmd: &str) -> Result<(), SetupError> {
    let mut child = Process::new("sh")
        .args(["-c", cmd])
        .spawn()
        .map_err(|e| SetupError(format!("--reset-cmd: {e}")))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return if status.success() {
                Ok(())
            } else {
                setup(format!("--reset-cmd `{cmd}` failed ({status})"))
            };
        }
        if started.elapsed() > RESET_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return setup(format!(
                "--reset-cmd `{cmd}` took longer than {} s",
                RESET_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `harness serial`.
fn serial(o: &SerialOptions) -> Result<i32, SetupError> {
    let kernel = o.chainload.as_deref().map(read_kernel).transpose()?;
    let mut port = serial::open(&o.port, o.baud)
        .map_err(|e| SetupError(format!("{}: {e}", o.port.display())))?;
    let log_path = o
        .log
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("build/logs/{}.log", o.name)));
    if let Some(dir) = log_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| SetupError(format!("{}: {e}", dir.display())))?;
    }
    let mut log = BufWriter::new(
        File::create(&log_path).map_err(|e| SetupError(format!("{}: {e}", log_path.display())))?,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = channel();
    if let Some(kernel) = &kernel {
        // The push reads the port itself; the KTAP reader starts with what it read past the
        // final ACK.
        if let Some(cmd) = &o.reset_cmd {
            run_reset(cmd)?;
        }
        let image = o.chainload.as_deref().unwrap_or(Path::new(""));
        println!(
            "[harness] {}: pushing {} through the chainloader on {} at {} baud",
            o.name,
            image.display(),
            o.port.display(),
            o.baud
        );
        let mut obs = Logged {
            console: chainload::Console::new("[chainload] "),
            log: &mut log,
        };
        match chainload::push(&mut port, &push_request(kernel, &o.push), &mut obs) {
            Ok(p) => {
                println!(
                    "[harness] {}: kernel at {:#x}, device tree at {:#x} ({} attempt(s))",
                    o.name, p.kernel_at, p.dtb, p.attempts
                );
                let _ = tx.send(capture::Msg::Out(p.leftover));
            }
            Err(e) => {
                drop(log);
                let cap = Capture {
                    document: crate::ktap::Parser::new().finish(),
                    end: End::LoadFailed(e.to_string()),
                    elapsed: Duration::ZERO,
                    tail: Vec::new(),
                    stderr: Vec::new(),
                    board_checks: Vec::new(),
                };
                return finish_report(
                    &o.name,
                    &cap,
                    o.verbose,
                    Some(&log_path),
                    (o.junit.as_deref(), o.json.as_deref()),
                );
            }
        }
        let port = serial::Reader(port);
        capture::spawn_reader(port, Stream::Out, tx, stop.clone(), true);
    } else {
        let port = serial::Reader(port);
        capture::spawn_reader(port, Stream::Out, tx, stop.clone(), true);
        if let Some(cmd) = &o.reset_cmd {
            run_reset(cmd)?;
        }
    }
    println!(
        "[harness] {}: reading KTAP from {} at {} baud (timeout {} s)",
        o.name,
        o.port.display(),
        o.baud,
        o.timeout.as_secs_f64()
    );
    let mut limits = Limits::new(o.timeout);
    limits.no_progress = o.test_timeout;
    // Wait this long for `# shootdown: exit` after the last result.
    limits.exit_grace = Duration::from_secs(2);
    let mut target = Port { stop };
    let cap = capture::watch(
        rx,
        &mut target,
        limits,
        Sinks {
            log: Some(&mut log),
            echo: o.verbose,
        },
    );
    drop(log);
    finish_report(
        &o.name,
        &cap,
        o.verbose,
        Some(&log_path),
        (o.junit.as_deref(), o.json.as_deref()),
    )
}

/// Reads a kernel image to push, refusing anything that is not an arm64 Image up front.
fn read_kernel(path: &Path) -> Result<Vec<u8>, SetupError> {
    let bytes = fs::read(path).map_err(|e| {
        SetupError(format!(
            "kernel image {}: {e} (build it with `make image`)",
            path.display()
        ))
    })?;
    if shootdown_chainloader::protocol::image_size(&bytes).is_none() {
        return setup(format!(
            "{} is not an arm64 Image (no ARM\\x64 magic at offset 56)",
            path.display()
        ));
    }
    Ok(bytes)
}

fn push_request<'a>(kernel: &'a [u8], o: &'a PushOptions) -> chainload::Push<'a> {
    let mode = match (&o.bootargs, o.replace_bootargs) {
        (_, true) => BootargsMode::Replace,
        (Some(_), false) => BootargsMode::Append,
        (None, false) => BootargsMode::Keep,
    };
    chainload::Push {
        kernel,
        bootargs: o.bootargs.as_deref().unwrap_or(""),
        mode,
        ready_timeout: o.ready_timeout,
        retries: o.retries,
    }
}

/// The board's lines during a push: on the terminal and in the log.
struct Logged<'a> {
    console: chainload::Console,
    log: &'a mut dyn Write,
}

impl Observer for Logged<'_> {
    fn board_line(&mut self, line: &str) {
        self.console.board_line(line);
        let _ = writeln!(self.log, "{line}");
    }

    fn progress(&mut self, sent: u64, total: u64, elapsed: Duration) {
        self.console.progress(sent, total, elapsed);
    }

    fn retrying(&mut self, code: u8, message: &str) {
        self.console.retrying(code, message);
        let _ = writeln!(self.log, "[chainload] NAK {code}: {message}; sending again");
    }

    fn resending(&mut self, waiting_for: &str) {
        self.console.resending(waiting_for);
        let _ = writeln!(self.log, "[chainload] no {waiting_for}; sending again");
    }
}

/// `harness chainboot`: push the kernel, then be the board's console.
fn chainboot(o: &ChainbootOptions) -> Result<i32, SetupError> {
    let path = o
        .kernel
        .clone()
        .unwrap_or_else(|| PathBuf::from("build/shootdown.img"));
    let kernel = read_kernel(&path)?;
    let mut port = serial::open(&o.port, o.baud)
        .map_err(|e| SetupError(format!("{}: {e}", o.port.display())))?;
    if let Some(cmd) = &o.reset_cmd {
        run_reset(cmd)?;
    }
    eprintln!(
        "[chainboot] waiting for the chainloader on {} at {} baud (reset the board if it is already running; Ctrl-C gives up)",
        o.port.display(),
        o.baud
    );
    let mut console = chainload::Console::new("[chainboot] ");
    let pushed = match chainload::push(&mut port, &push_request(&kernel, &o.push), &mut console) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("harness: {e}");
            return Ok(FAIL);
        }
    };
    eprintln!(
        "[chainboot] {} is running at {:#x} (device tree at {:#x}); console follows, Ctrl-C quits",
        path.display(),
        pushed.kernel_at,
        pushed.dtb
    );
    let end = chainload::console(
        &mut port,
        &pushed.leftover,
        o.timeout,
        true,
        &mut io::stdout(),
    )
    .map_err(|e| SetupError(format!("{}: {e}", o.port.display())))?;
    Ok(match end {
        ConsoleEnd::KernelExit(code) => code,
        ConsoleEnd::StdinClosed => PASS,
        ConsoleEnd::PortClosed => {
            eprintln!("harness: {} closed", o.port.display());
            FAIL
        }
        ConsoleEnd::TimedOut => {
            eprintln!(
                "harness: no `# shootdown: exit` line within {} s",
                o.timeout.unwrap_or_default().as_secs_f64()
            );
            FAIL
        }
    })
}

fn finish_report(
    name: &str,
    cap: &Capture,
    verbose: bool,
    log_path: Option<&Path>,
    (junit_path, json_path): (Option<&Path>, Option<&Path>),
) -> Result<i32, SetupError> {
    print!("{}", report::summary(name, cap, verbose, log_path));
    if let Some(path) = json_path {
        let run = crate::results::run(name, &cap.document, cap.passed());
        write_json(path, &crate::results::file(vec![run]))?;
    }
    if let Some(path) = junit_path {
        let runs = [RunInfo {
            board: name,
            repeat: None,
            capture: cap,
        }];
        write_junit(path, &format!("shootdown {name}"), &runs)?;
    }
    Ok(if cap.passed() { PASS } else { FAIL })
}

/// `harness parse`.
fn parse(o: &ParseOptions) -> Result<i32, SetupError> {
    let started = Instant::now();
    let input: Box<dyn BufRead> = match &o.input {
        Some(path) if path.as_os_str() != "-" => Box::new(io::BufReader::new(
            File::open(path).map_err(|e| SetupError(format!("{}: {e}", path.display())))?,
        )),
        _ => Box::new(io::stdin().lock()),
    };
    let mut parser = Parser::new();
    let mut tail = Vec::new();
    for line in input.split(b'\n') {
        let line = String::from_utf8_lossy(&line?)
            .trim_end_matches('\r')
            .to_string();
        parser.push(&line, None);
        if tail.len() == 40 {
            tail.remove(0);
        }
        tail.push(line);
    }
    let cap = Capture {
        document: parser.finish(),
        end: End::Finished,
        elapsed: started.elapsed(),
        tail,
        stderr: Vec::new(),
        board_checks: Vec::new(),
    };
    finish_report(
        &o.name,
        &cap,
        o.verbose,
        o.input.as_deref(),
        (o.junit.as_deref(), o.json.as_deref()),
    )
}

/// `harness kunit-check`: Linux's own parser must read every log as ours does.
fn kunit_check(o: &KunitCheckOptions) -> Result<i32, SetupError> {
    if !o.kunit.is_file() {
        return setup(format!(
            "{}: no kunit.py there (`bash qemu/install.sh kunit build` extracts it)",
            o.kunit.display()
        ));
    }
    let mut status = PASS;
    for log in &o.logs {
        let text =
            fs::read_to_string(log).map_err(|e| SetupError(format!("{}: {e}", log.display())))?;
        let ours = crate::ktap::parse(&text);
        let json_out = log.with_extension("kunit.json");
        let theirs = crate::kunit::run(&o.kunit, log, &json_out).map_err(SetupError)?;
        let problems = crate::kunit::compare(&ours, &theirs);
        println!(
            "kunit-check {}: ours {} ({} tests), kunit.py {} ({} cases)",
            log.display(),
            ours.counts(),
            ours.counts().total(),
            theirs.summary,
            theirs.cases.len()
        );
        if !problems.is_empty() {
            status = FAIL;
            for p in &problems {
                println!("  {p}");
            }
        }
    }
    Ok(status)
}

/// `harness boards`.
fn boards(profiles: Option<&Path>) -> Result<i32, SetupError> {
    let dir = match profiles {
        Some(d) => d.to_path_buf(),
        None => find_profiles()?,
    };
    for name in profile::list(&dir)? {
        match Profile::load(&dir, &name) {
            Ok(p) => println!("{name:<12} {}", p.description),
            Err(e) => println!("{name:<12} (broken: {e})"),
        }
    }
    Ok(PASS)
}

/// Flushes stdout (the summary) before the process exits.
pub fn flush() {
    let _ = io::stdout().flush();
}
