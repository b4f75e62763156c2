//! Watching a running target: collect its console output line by line, feed the KTAP parser,
//! enforce the time limits, and decide how the run ended.
//!
//! Sources (QEMU's stdout and stderr, a serial port) are read on their own threads and send
//! [`Msg`]s to one channel, so the watcher never blocks on a read: it waits on the channel with
//! a deadline, which is the earliest of
//!
//! - the whole-run limit,
//! - the no-progress limit: no new KTAP result line for that long (a hung test),
//! - the exit grace after the KTAP document finished (QEMU should exit by itself then; a serial
//!   board is simply done),
//! - the drain limit after the emulator exited while something still holds its output open.
//!
//! When a limit fires, the caller's `stop` kills the target (for QEMU the whole process
//! group), and the watcher drains what is left for a moment and returns: it never hangs.

use std::fmt;
use std::io::{self, Read, Write};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::ktap::{Document, Event, Failure, Parser};

/// A line longer than this is cut (a runaway print without newlines).
const MAX_LINE: usize = 64 * 1024;
/// Output lines kept for the failure report.
const TAIL_LINES: usize = 40;

/// What a source thread reports.
#[derive(Debug)]
pub enum Msg {
    Out(Vec<u8>),
    Err(Vec<u8>),
    OutClosed,
    ErrClosed,
    ReadFailed(io::Error),
    Exited(io::Result<ExitStatus>),
}

/// Which stream a reader thread forwards.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Out,
    Err,
}

/// Reads `source` until EOF (or `stop`) and forwards the bytes. With `zero_is_idle` a read of
/// 0 bytes means "nothing yet" (a tty with VTIME), not EOF; the thread then checks `stop`.
pub fn spawn_reader<R: Read + Send + 'static>(
    mut source: R,
    stream: Stream,
    tx: Sender<Msg>,
    stop: Arc<AtomicBool>,
    zero_is_idle: bool,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = vec![0u8; 8192];
        let closed = match stream {
            Stream::Out => Msg::OutClosed,
            Stream::Err => Msg::ErrClosed,
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match source.read(&mut buf) {
                Ok(0) if zero_is_idle => continue,
                Ok(0) => break,
                Ok(n) => {
                    let bytes = buf[..n].to_vec();
                    let msg = match stream {
                        Stream::Out => Msg::Out(bytes),
                        Stream::Err => Msg::Err(bytes),
                    };
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A tty whose other side went away (USB serial unplugged, pty master closed).
                Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                Err(e) => {
                    let _ = tx.send(Msg::ReadFailed(e));
                    return;
                }
            }
        }
        let _ = tx.send(closed);
    })
}

/// Time limits of one run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The whole run.
    pub total: Duration,
    /// Longest time without a new KTAP result line (`None` = no such limit).
    pub no_progress: Option<Duration>,
    /// After the KTAP document finished (plan complete or `Bail out!`): how long to wait for
    /// the target to exit (QEMU) or for its `# shootdown: exit` line (serial).
    pub exit_grace: Duration,
    /// Stop reading bytes beyond this (a kernel printing in a loop).
    pub max_output: usize,
    /// How long to keep reading after the emulator exited, or after it was killed.
    pub drain: Duration,
}

impl Limits {
    /// Limits for a run of at most `total`, with no per-test limit.
    pub fn new(total: Duration) -> Self {
        Self {
            total,
            no_progress: None,
            exit_grace: Duration::from_secs(10),
            max_output: 64 << 20,
            drain: Duration::from_secs(2),
        }
    }
}

/// Which limit a timeout hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    Total,
    NoProgress,
}

/// How the watched target ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The emulator exited with this code.
    Exited(i32),
    /// The emulator was killed by this signal (not by us).
    Signaled(i32),
    /// We killed it: a time limit. `running` names the test in progress.
    TimedOut {
        kind: TimeoutKind,
        limit: Duration,
        running: String,
    },
    /// The KTAP document finished but the emulator kept running for the exit grace.
    DidNotExit { grace: Duration },
    /// The output exceeded `Limits::max_output`.
    OutputLimit { bytes: usize },
    /// Serial: the document finished (and the exit line came, or the grace passed).
    Finished,
    /// Serial: the port closed or failed before the document finished.
    PortClosed(String),
    /// Serial: the kernel never started (pushing it through the chainloader failed).
    LoadFailed(String),
}

impl End {
    /// A run-level failure, or `None` when this ending is fine.
    /// `kernel_exit` is the status the kernel printed, which QEMU passes on as its own.
    pub fn failure(&self, kernel_exit: Option<i32>, document_finished: bool) -> Option<Failure> {
        let (test, message) = match self {
            End::Exited(0) | End::Finished => return None,
            // Already reported by the document as the kernel's own status.
            End::Exited(code) if kernel_exit == Some(*code) => return None,
            End::Exited(code) => (
                "(qemu)".to_string(),
                format!("QEMU exited with status {code} (the kernel's semihosting exit status, or a QEMU error: see its stderr)"),
            ),
            End::Signaled(sig) => ("(qemu)".to_string(), format!("QEMU was killed by signal {sig}")),
            End::TimedOut { kind, limit, running } => {
                let what = match kind {
                    TimeoutKind::Total => format!("timeout: the run took longer than {} s", limit.as_secs_f64()),
                    TimeoutKind::NoProgress => format!("timeout: no new KTAP result line for {} s", limit.as_secs_f64()),
                };
                (running.clone(), what)
            }
            End::DidNotExit { grace } => (
                "(qemu)".to_string(),
                format!(
                    "the kernel did not exit within {} s after its last KTAP line (it should exit through semihosting SYS_EXIT)",
                    grace.as_secs_f64()
                ),
            ),
            End::OutputLimit { bytes } => (
                "(console)".to_string(),
                format!("more than {bytes} bytes of output: stopped (a print loop?)"),
            ),
            End::PortClosed(_) if document_finished => return None,
            End::PortClosed(why) => ("(serial)".to_string(), format!("the port closed before the tests finished: {why}")),
            End::LoadFailed(why) => ("(chainload)".to_string(), format!("the kernel was not started: {why}")),
        };
        Some(Failure { test, message })
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Exited(code) => write!(f, "exited with status {code}"),
            End::Signaled(sig) => write!(f, "killed by signal {sig}"),
            End::TimedOut {
                kind: TimeoutKind::Total,
                limit,
                ..
            } => {
                write!(f, "timed out after {} s", limit.as_secs_f64())
            }
            End::TimedOut {
                kind: TimeoutKind::NoProgress,
                limit,
                ..
            } => {
                write!(f, "timed out: no result for {} s", limit.as_secs_f64())
            }
            End::DidNotExit { .. } => write!(f, "did not exit after the tests"),
            End::OutputLimit { .. } => write!(f, "stopped: too much output"),
            End::Finished => write!(f, "finished"),
            End::PortClosed(why) => write!(f, "port closed: {why}"),
            End::LoadFailed(why) => write!(f, "not started: {why}"),
        }
    }
}

/// The result of watching one run.
#[derive(Debug)]
pub struct Capture {
    pub document: Document,
    pub end: End,
    pub elapsed: Duration,
    /// The last console lines (for the failure report).
    pub tail: Vec<String>,
    /// Everything the emulator wrote on stderr.
    pub stderr: Vec<String>,
    /// What the board profile requires of the run besides its KTAP (e.g. the firmware's
    /// banner before the kernel), each unmet requirement a failure.
    pub board_checks: Vec<Failure>,
}

impl Capture {
    /// Every reason this run fails: the transcript's and the ending's.
    pub fn failures(&self) -> Vec<Failure> {
        let mut failures = self.document.failures();
        failures.extend(self.board_checks.iter().cloned());
        let finished = self.document.complete || self.document.bail_out.is_some();
        if let Some(f) = self.end.failure(self.document.exit_code, finished) {
            failures.push(f);
        }
        failures
    }

    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }
}

/// Splits a byte stream into lines (`\n`, with `\r` dropped), decoding lossily.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<String>) {
        for &b in bytes {
            if b == b'\n' || self.partial.len() >= MAX_LINE {
                out.push(self.take());
                if b == b'\n' {
                    continue;
                }
            }
            self.partial.push(b);
        }
    }

    /// The unterminated last line, if any.
    pub fn finish(&mut self, out: &mut Vec<String>) {
        if !self.partial.is_empty() {
            out.push(self.take());
        }
    }

    fn take(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.partial)
            .trim_end_matches('\r')
            .to_string();
        self.partial.clear();
        line
    }
}

/// Where the console lines go besides the parser.
pub struct Sinks<'a> {
    /// The full log (`build/logs/<board>.log`).
    pub log: Option<&'a mut dyn Write>,
    /// Echo console lines live on stdout.
    pub echo: bool,
}

/// State of one watch.
struct Watch<'a> {
    parser: Parser,
    start: Instant,
    sinks: Sinks<'a>,
    out: LineSplitter,
    err: LineSplitter,
    tail: Vec<String>,
    stderr: Vec<String>,
    bytes: usize,
    last_progress: Instant,
    finished_at: Option<Instant>,
    exit_line_seen: bool,
}

impl Watch<'_> {
    fn on_out(&mut self, bytes: &[u8]) {
        self.bytes += bytes.len();
        let mut lines = Vec::new();
        self.out.push(bytes, &mut lines);
        self.on_lines(lines);
    }

    fn on_lines(&mut self, lines: Vec<String>) {
        for line in lines {
            let now = Instant::now();
            if let Some(log) = self.sinks.log.as_mut() {
                let _ = writeln!(log, "{line}");
            }
            if self.sinks.echo {
                println!("{line}");
            }
            match self.parser.push(&line, Some(now - self.start)) {
                Event::Started | Event::Result => self.last_progress = now,
                Event::Complete | Event::BailOut => {
                    self.last_progress = now;
                    self.finished_at.get_or_insert(now);
                }
                Event::Exit(_) => self.exit_line_seen = true,
                Event::Other => {}
            }
            if self.tail.len() == TAIL_LINES {
                self.tail.remove(0);
            }
            self.tail.push(line);
        }
    }

    fn on_err(&mut self, bytes: &[u8]) {
        let mut lines = Vec::new();
        self.err.push(bytes, &mut lines);
        for line in lines {
            if self.sinks.echo {
                eprintln!("{line}");
            }
            self.stderr.push(line);
        }
    }

    fn running(&self) -> String {
        self.parser
            .position()
            .unwrap_or_else(|| "(boot, before any KTAP output)".to_string())
    }
}

/// The target being watched, as the watcher needs it.
pub trait Target {
    /// Stops it (kill the process group; for a port, stop reading).
    fn stop(&mut self);
    /// Whether the run ends when the KTAP document is finished (serial) rather than when the
    /// target exits (QEMU).
    fn ends_with_document(&self) -> bool;
}

/// Watches `rx` until the target ends or a limit fires.
pub fn watch(
    rx: Receiver<Msg>,
    target: &mut dyn Target,
    limits: Limits,
    sinks: Sinks<'_>,
) -> Capture {
    let start = Instant::now();
    let mut w = Watch {
        parser: Parser::new(),
        start,
        sinks,
        out: LineSplitter::default(),
        err: LineSplitter::default(),
        tail: Vec::new(),
        stderr: Vec::new(),
        bytes: 0,
        last_progress: start,
        finished_at: None,
        exit_line_seen: false,
    };
    let serial = target.ends_with_document();
    let (mut out_open, mut err_open) = (true, !serial);
    let mut exited: Option<(Instant, End)> = None;
    let end = loop {
        if let Some((_, end)) = &exited {
            if !out_open && !err_open {
                break end.clone();
            }
        }
        if serial && w.exit_line_seen {
            break End::Finished;
        }
        if w.bytes > limits.max_output {
            target.stop();
            break End::OutputLimit {
                bytes: limits.max_output,
            };
        }
        let now = Instant::now();
        let mut deadline = (start + limits.total, Fired::Total);
        let mut consider = |at: Instant, why: Fired| {
            if at < deadline.0 {
                deadline = (at, why);
            }
        };
        if let Some((at, _)) = &exited {
            // The emulator is gone: only the drain is left to wait for.
            deadline = (*at + limits.drain, Fired::Drained);
        } else if let Some(at) = w.finished_at {
            consider(at + limits.exit_grace, Fired::Grace);
        } else if let Some(limit) = limits.no_progress {
            consider(w.last_progress + limit, Fired::NoProgress);
        }
        let wait = deadline.0.saturating_duration_since(now);
        match rx.recv_timeout(wait) {
            Ok(Msg::Out(bytes)) => w.on_out(&bytes),
            Ok(Msg::Err(bytes)) => w.on_err(&bytes),
            Ok(Msg::OutClosed) => {
                out_open = false;
                if serial {
                    break End::PortClosed("end of file".into());
                }
            }
            Ok(Msg::ErrClosed) => err_open = false,
            Ok(Msg::ReadFailed(e)) => {
                out_open = false;
                if serial {
                    break End::PortClosed(e.to_string());
                }
            }
            Ok(Msg::Exited(status)) => exited = Some((Instant::now(), end_of(status))),
            Err(RecvTimeoutError::Disconnected) => {
                break exited
                    .map(|(_, e)| e)
                    .unwrap_or_else(|| End::PortClosed("all readers stopped".into()));
            }
            Err(RecvTimeoutError::Timeout) => match deadline.1 {
                Fired::Drained => {
                    // The emulator is gone; something it started still holds the pipe.
                    target.stop();
                    break exited.map(|(_, e)| e).expect("exited");
                }
                Fired::Grace if serial => break End::Finished,
                Fired::Grace => {
                    target.stop();
                    break End::DidNotExit {
                        grace: limits.exit_grace,
                    };
                }
                Fired::NoProgress => {
                    target.stop();
                    break End::TimedOut {
                        kind: TimeoutKind::NoProgress,
                        limit: limits.no_progress.unwrap_or_default(),
                        running: w.running(),
                    };
                }
                Fired::Total => {
                    target.stop();
                    break End::TimedOut {
                        kind: TimeoutKind::Total,
                        limit: limits.total,
                        running: w.running(),
                    };
                }
            },
        }
    };
    // Collect what is still in flight (the target was stopped or has exited), briefly.
    let drain_until = Instant::now() + if serial { Duration::ZERO } else { limits.drain };
    while let Ok(msg) = rx.recv_timeout(drain_until.saturating_duration_since(Instant::now())) {
        match msg {
            Msg::Out(bytes) => w.on_out(&bytes),
            Msg::Err(bytes) => w.on_err(&bytes),
            Msg::Exited(_) => break,
            _ => {}
        }
    }
    let mut last = Vec::new();
    w.out.finish(&mut last);
    w.on_lines(last);
    let mut last = Vec::new();
    w.err.finish(&mut last);
    w.stderr.append(&mut last);
    if let Some(log) = w.sinks.log.as_mut() {
        let _ = log.flush();
    }
    Capture {
        document: w.parser.finish(),
        end,
        elapsed: start.elapsed(),
        tail: w.tail,
        stderr: w.stderr,
        board_checks: Vec::new(),
    }
}

#[derive(Clone, Copy, Debug)]
enum Fired {
    Total,
    NoProgress,
    Grace,
    Drained,
}

fn end_of(status: io::Result<ExitStatus>) -> End {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => End::Exited(code),
            (None, Some(sig)) => End::Signaled(sig),
            (None, None) => End::Exited(-1),
        },
        Err(_) => End::Exited(-1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    struct FakeTarget {
        stopped: bool,
        serial: bool,
    }

    impl Target for FakeTarget {
        fn stop(&mut self) {
            self.stopped = true;
        }
        fn ends_with_document(&self) -> bool {
            self.serial
        }
    }

    fn limits(total_ms: u64, no_progress_ms: Option<u64>) -> Limits {
        Limits {
            total: Duration::from_millis(total_ms),
            no_progress: no_progress_ms.map(Duration::from_millis),
            exit_grace: Duration::from_millis(100),
            max_output: 1 << 20,
            drain: Duration::from_millis(50),
        }
    }

    fn sinks() -> Sinks<'static> {
        Sinks {
            log: None,
            echo: false,
        }
    }

    #[test]
    fn splits_lines_across_chunks_and_drops_cr() {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        s.push(b"KTAP ver", &mut out);
        s.push(b"sion 1\r\n1..1\r\npart", &mut out);
        assert_eq!(out, ["KTAP version 1", "1..1"]);
        s.finish(&mut out);
        assert_eq!(out.last().unwrap(), "part");
    }

    #[test]
    fn an_exited_emulator_ends_the_watch_with_its_status() {
        let (tx, rx) = channel();
        tx.send(Msg::Out(
            b"KTAP version 1\n1..1\n  KTAP version 1\n  1..1\n  ok 1 a\nok 1 s\n".to_vec(),
        ))
        .unwrap();
        tx.send(Msg::OutClosed).unwrap();
        tx.send(Msg::ErrClosed).unwrap();
        use std::os::unix::process::ExitStatusExt;
        tx.send(Msg::Exited(Ok(ExitStatus::from_raw(0)))).unwrap();
        let mut target = FakeTarget {
            stopped: false,
            serial: false,
        };
        let cap = watch(rx, &mut target, limits(5000, None), sinks());
        assert_eq!(cap.end, End::Exited(0));
        assert!(cap.passed(), "{:?}", cap.failures());
        assert!(!target.stopped);
    }

    #[test]
    fn no_progress_times_out_naming_the_running_test() {
        let (tx, rx) = channel();
        tx.send(Msg::Out(
            b"KTAP version 1\n1..1\n  KTAP version 1\n  # Subtest: smp\n  1..2\n  ok 1 ipi\n"
                .to_vec(),
        ))
        .unwrap();
        let mut target = FakeTarget {
            stopped: false,
            serial: false,
        };
        let started = Instant::now();
        let cap = watch(rx, &mut target, limits(10_000, Some(200)), sinks());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(target.stopped, "the target is killed on timeout");
        let running = "smp: test 2 of 2, after `smp.ipi`";
        assert_eq!(
            cap.end,
            End::TimedOut {
                kind: TimeoutKind::NoProgress,
                limit: Duration::from_millis(200),
                running: running.into()
            }
        );
        assert!(cap
            .failures()
            .iter()
            .any(|f| f.test == running && f.message.contains("no new KTAP result")));
        drop(tx);
    }

    #[test]
    fn a_finished_document_without_exit_is_a_failure_for_qemu_and_fine_for_serial() {
        let transcript =
            b"KTAP version 1\n1..1\n  KTAP version 1\n  1..1\n  ok 1 a\nok 1 s\n".to_vec();
        for serial in [false, true] {
            let (tx, rx) = channel();
            tx.send(Msg::Out(transcript.clone())).unwrap();
            let mut target = FakeTarget {
                stopped: false,
                serial,
            };
            let cap = watch(rx, &mut target, limits(10_000, Some(5000)), sinks());
            if serial {
                assert_eq!(cap.end, End::Finished);
                assert!(cap.passed(), "{:?}", cap.failures());
            } else {
                assert!(matches!(cap.end, End::DidNotExit { .. }));
                assert!(target.stopped);
                assert!(!cap.passed());
            }
            drop(tx);
        }
    }

    #[test]
    fn serial_stops_at_the_exit_line() {
        let (tx, rx) = channel();
        tx.send(Msg::Out(
            b"KTAP version 1\n1..1\n  KTAP version 1\n  1..1\n  ok 1 a\nok 1 s\n# shootdown: exit 0\n".to_vec(),
        ))
        .unwrap();
        let mut target = FakeTarget {
            stopped: false,
            serial: true,
        };
        let started = Instant::now();
        let cap = watch(rx, &mut target, limits(10_000, None), sinks());
        assert_eq!(cap.end, End::Finished);
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "no grace wait after the exit line"
        );
        drop(tx);
    }

    #[test]
    fn runaway_output_is_cut() {
        let (tx, rx) = channel();
        for _ in 0..40 {
            tx.send(Msg::Out(vec![b'x'; 64 * 1024])).unwrap();
        }
        let mut target = FakeTarget {
            stopped: false,
            serial: false,
        };
        let cap = watch(rx, &mut target, limits(10_000, None), sinks());
        assert_eq!(cap.end, End::OutputLimit { bytes: 1 << 20 });
        assert!(target.stopped);
    }

    #[test]
    fn qemu_status_matching_the_kernel_exit_line_is_reported_once() {
        let end = End::Exited(1);
        assert!(end.failure(Some(1), true).is_none());
        assert!(end
            .failure(None, true)
            .unwrap()
            .message
            .contains("status 1"));
        assert!(End::Exited(0).failure(None, true).is_none());
    }
}
