//! The host side of the UART chainloader (`boot/chainloader`): push a kernel to a board, then
//! hand the port to a console or to the KTAP reader.
//!
//! The wire format and its constants come from the loader's own crate
//! (`shootdown_chainloader::protocol`), so the two sides cannot drift apart. A push:
//!
//! 1. wait for `@@SDCL READY` (the loader repeats it every 2 s of silence), echoing everything
//!    else the board prints (firmware and loader messages);
//! 2. refuse locally what the loader would refuse (not an Image, bigger than its `max=`);
//! 3. send the 28-byte header, wait for `ACK HEADER` (skipping one READY that crossed it);
//! 4. stream the kernel and the boot arguments, with progress, and wait until the port has
//!    sent them (`tcdrain`);
//! 5. wait for `ACK DATA` and check it names our CRC.
//!
//! A NAK for a line problem (header or payload checksum, timeout, UART errors) is retried from
//! step 1, up to `retries` times; any other NAK ends the push with the loader's reason. So is
//! no answer at all, or a READY where an answer belongs (a second one after the header, any
//! after `ACK HEADER`): the loader is waiting for a header, so it never saw ours whole (a
//! corrupted magic byte), its NAK was garbled, or the board reset; that READY starts the next
//! attempt. Bytes read after `ACK DATA` are the kernel's first output and are handed back, not
//! lost.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

pub use shootdown_chainloader::protocol::BootargsMode;

use crate::serial::{self, PortRead};
use shootdown_chainloader::protocol::{self, Header, Nak, Reply, VERSION};

/// How long the loader may take to answer a header (it plans and cleans the slot first).
const HEADER_REPLY: Duration = Duration::from_secs(5);
/// How long it may take to check the payload once the port has sent it.
const DATA_REPLY: Duration = Duration::from_secs(10);
/// Payload write size: small enough for smooth progress, large enough to keep the line busy.
const CHUNK: usize = 4096;

/// Why a push failed.
#[derive(Debug)]
pub enum PushError {
    /// Reading or writing the port failed.
    Io(io::Error),
    /// The port closed (a USB adapter unplugged, the emulator gone).
    PortClosed,
    /// The file to send is not an arm64 Image.
    NotAnImage,
    /// The Image header asks for what the chainloader does not do (see
    /// `protocol::check_image_header`).
    ImageHeader { text_offset: u64, flags: u64 },
    /// Boot arguments with [`BootargsMode::Keep`]: the loader would leave them unused.
    BootargsIgnored,
    /// No READY within the limit.
    NoLoader { waited: Duration },
    /// The loader speaks another protocol version.
    Version { loader: u16 },
    /// The kernel's footprint exceeds what the loader said fits.
    TooBig { footprint: u64, max: u64 },
    /// The loader refused, for a reason that retrying cannot fix (or retries ran out).
    Refused {
        code: u8,
        reason: Option<Nak>,
        message: String,
        attempts: u32,
    },
    /// No reply in time, or the loader asked for a header again, on the last attempt.
    NoReply {
        waiting_for: &'static str,
        after: Duration,
        attempts: u32,
    },
    /// `ACK DATA` named another CRC than ours.
    WrongAck { ours: u32, theirs: u32 },
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Io(e) => write!(f, "serial port: {e}"),
            PushError::PortClosed => write!(f, "the serial port closed during the transfer"),
            PushError::NotAnImage => write!(
                f,
                "not an arm64 Image (no ARM\\x64 magic at offset 56): build it with `make image`"
            ),
            PushError::ImageHeader { text_offset, flags } => write!(
                f,
                "the Image header says text_offset {text_offset:#x}, flags {flags:#x}: the \
                 chainloader needs text_offset 0, a little-endian kernel and no reserved flags \
                 (Linux Documentation/arch/arm64/booting.rst)"
            ),
            PushError::BootargsIgnored => write!(
                f,
                "boot arguments in keep mode would be ignored: append or replace them"
            ),
            PushError::NoLoader { waited } => write!(
                f,
                "no chainloader answered within {} s: is build/chainloader.img the board's kernel \
                 (make sdcard SDCARD_BOOT=chainloader), is the board reset, and are TX/RX crossed?",
                waited.as_secs_f64()
            ),
            PushError::Version { loader } => write!(
                f,
                "the chainloader speaks protocol version {loader}, this harness {VERSION}: \
                 rebuild and reflash it (make sdcard SDCARD_BOOT=chainloader)"
            ),
            PushError::TooBig { footprint, max } => write!(
                f,
                "the kernel needs {footprint} bytes of RAM, the chainloader has room for {max}"
            ),
            PushError::Refused {
                code,
                message,
                attempts,
                ..
            } => write!(
                f,
                "the chainloader refused the kernel (NAK {code}: {message}) after {attempts} attempt(s)"
            ),
            PushError::NoReply {
                waiting_for,
                after,
                attempts,
            } => write!(
                f,
                "no {waiting_for} from the chainloader after {attempts} attempt(s), each \
                 waiting at most {} s (lost on the line, or the board reset)",
                after.as_secs_f64()
            ),
            PushError::WrongAck { ours, theirs } => write!(
                f,
                "the chainloader acknowledged CRC {theirs:#010x}, we sent {ours:#010x}"
            ),
        }
    }
}

impl std::error::Error for PushError {}

impl From<io::Error> for PushError {
    fn from(e: io::Error) -> Self {
        PushError::Io(e)
    }
}

/// What to push and how patiently.
#[derive(Clone, Debug)]
pub struct Push<'a> {
    pub kernel: &'a [u8],
    pub bootargs: &'a str,
    pub mode: BootargsMode,
    /// How long to wait for the first READY (`None`: until the port closes).
    pub ready_timeout: Option<Duration>,
    /// Retries after a transient NAK.
    pub retries: u32,
}

/// The result of a successful push.
#[derive(Debug)]
pub struct Pushed {
    /// Where the kernel went and the device tree it got.
    pub kernel_at: u64,
    pub dtb: u64,
    /// How many attempts it took.
    pub attempts: u32,
    /// Bytes already read after `ACK DATA`: the kernel's first output.
    pub leftover: Vec<u8>,
}

/// Where the board's own lines (not protocol lines) and the progress go.
pub trait Observer {
    /// A line from the board that is not part of the protocol.
    fn board_line(&mut self, line: &str);
    /// Progress: `sent` of `total` payload bytes (called at the start, as it goes, and at
    /// the end).
    fn progress(&mut self, _sent: u64, _total: u64, _elapsed: Duration) {}
    /// A refusal that will be retried.
    fn retrying(&mut self, _code: u8, _message: &str) {}
    /// No answer to what we sent (no `waiting_for`, or the loader asking for a header again):
    /// it was lost on the line or the board reset; sending again.
    fn resending(&mut self, _waiting_for: &str) {}
}

/// The port with a line buffer.
pub struct Session<'a> {
    port: &'a mut File,
    buf: Vec<u8>,
}

impl<'a> Session<'a> {
    pub fn new(port: &'a mut File) -> Self {
        Self {
            port,
            buf: Vec::new(),
        }
    }

    /// The next complete line (without `\r\n`) before `deadline` (`None`: no deadline).
    /// `Ok(None)` on timeout.
    fn line(&mut self, deadline: Option<Instant>) -> Result<Option<String>, PushError> {
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=at).collect();
                let text = String::from_utf8_lossy(&raw[..raw.len() - 1]);
                return Ok(Some(text.trim_end_matches('\r').to_string()));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            let mut chunk = [0u8; 4096];
            match serial::read_port(self.port, &mut chunk)? {
                PortRead::Quiet => continue, // look at the clock again
                PortRead::Data(n) => self.buf.extend_from_slice(&chunk[..n]),
                PortRead::Closed => return Err(PushError::PortClosed),
            }
        }
    }

    /// The next protocol reply, echoing other lines; `skip_ready` ignores READY lines (one
    /// may cross our header on the wire).
    fn reply(
        &mut self,
        deadline: Option<Instant>,
        skip_ready: bool,
        obs: &mut dyn Observer,
    ) -> Result<Option<OwnedReply>, PushError> {
        while let Some(line) = self.line(deadline)? {
            match Reply::parse(&line) {
                Some(Reply::Ready { .. }) if skip_ready => {}
                Some(r) => return Ok(Some(OwnedReply::from(r))),
                None => obs.board_line(&line),
            }
        }
        Ok(None)
    }

    /// The answer to a header or payload before `timeout`, echoing other lines. `crossing`
    /// READY lines are skipped (one may cross a header on the wire); one more means the
    /// loader is waiting for a header again: what we sent never arrived whole.
    fn answer(
        &mut self,
        timeout: Duration,
        mut crossing: u32,
        obs: &mut dyn Observer,
    ) -> Result<Answer, PushError> {
        let deadline = Instant::now() + timeout;
        while let Some(line) = self.line(Some(deadline))? {
            match Reply::parse(&line) {
                Some(Reply::Ready { .. }) if crossing > 0 => crossing -= 1,
                Some(Reply::Ready { version, max }) => return Ok(Answer::Ready { version, max }),
                Some(r) => return Ok(Answer::Reply(OwnedReply::from(r))),
                None => obs.board_line(&line),
            }
        }
        Ok(Answer::Nothing)
    }

    /// Writes raw bytes (tests use this to send forged headers). A hung-up terminal fails
    /// writes with EIO: the port closed.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), PushError> {
        self.port
            .write_all(bytes)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EIO) => PushError::PortClosed,
                _ => e.into(),
            })
    }

    /// Waits until everything written has left the port (a USB adapter buffers a lot).
    fn drain(&mut self) {
        // SAFETY: tcdrain on our open descriptor; on a non-terminal it fails harmlessly.
        unsafe { libc::tcdrain(self.port.as_raw_fd()) };
    }

    /// Waits for READY; returns the loader's `max`.
    pub fn wait_ready(
        &mut self,
        timeout: Option<Duration>,
        obs: &mut dyn Observer,
    ) -> Result<u64, PushError> {
        let started = Instant::now();
        let deadline = timeout.map(|t| started + t);
        loop {
            match self.reply(deadline, false, obs)? {
                Some(OwnedReply::Ready { version, max }) => return ready(version, max),
                Some(_) => {} // a stale ACK/NAK from an earlier session
                None => {
                    return Err(PushError::NoLoader {
                        waited: started.elapsed(),
                    })
                }
            }
        }
    }

    /// Waits for the reply to a header or payload (READY lines skipped).
    pub fn wait_reply(
        &mut self,
        waiting_for: &'static str,
        timeout: Duration,
        obs: &mut dyn Observer,
    ) -> Result<OwnedReply, PushError> {
        self.reply(Some(Instant::now() + timeout), true, obs)?
            .ok_or(PushError::NoReply {
                waiting_for,
                after: timeout,
                attempts: 1,
            })
    }

    /// Everything read but not yet consumed as a line.
    pub fn into_leftover(self) -> Vec<u8> {
        self.buf
    }
}

/// The `max` of a READY this side can talk to.
fn ready(version: u16, max: u64) -> Result<u64, PushError> {
    if version != VERSION {
        return Err(PushError::Version { loader: version });
    }
    Ok(max)
}

/// What came back after a header or payload.
enum Answer {
    Reply(OwnedReply),
    /// READY: the loader is waiting for a header, so it never got what we sent (a corrupted
    /// magic byte, a garbled NAK, a board reset).
    Ready {
        version: u16,
        max: u64,
    },
    /// Nothing in time.
    Nothing,
}

/// A protocol reply that owns its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedReply {
    Ready {
        version: u16,
        max: u64,
    },
    AckHeader {
        kernel: u64,
        dtb: u64,
    },
    AckData {
        crc: u32,
    },
    Nak {
        code: u8,
        reason: Option<Nak>,
        message: String,
    },
}

impl From<Reply<'_>> for OwnedReply {
    fn from(r: Reply<'_>) -> Self {
        match r {
            Reply::Ready { version, max } => OwnedReply::Ready { version, max },
            Reply::AckHeader { kernel, dtb } => OwnedReply::AckHeader { kernel, dtb },
            Reply::AckData { crc } => OwnedReply::AckData { crc },
            Reply::Nak {
                code,
                reason,
                message,
            } => OwnedReply::Nak {
                code,
                reason,
                message: message.to_string(),
            },
        }
    }
}

/// Pushes a kernel through the chainloader on `port`.
pub fn push(port: &mut File, p: &Push<'_>, obs: &mut dyn Observer) -> Result<Pushed, PushError> {
    let header = Header::for_payload(p.kernel, p.bootargs.as_bytes(), p.mode)
        .ok_or(PushError::NotAnImage)?;
    protocol::check_image_header(p.kernel).map_err(|r| PushError::ImageHeader {
        text_offset: r.a,
        flags: r.b,
    })?;
    if p.mode == BootargsMode::Keep && !p.bootargs.is_empty() {
        return Err(PushError::BootargsIgnored);
    }
    let mut s = Session::new(port);
    let mut ready_timeout = p.ready_timeout;
    let mut attempts = 0;
    // A READY that already came while we waited for an answer: the next attempt starts on it.
    let mut ready_now = None;
    loop {
        attempts += 1;
        let max = match ready_now.take() {
            Some((version, max)) => ready(version, max)?,
            None => s.wait_ready(ready_timeout, obs)?,
        };
        // After the first READY the loader is known to be there: later ones come at once.
        ready_timeout = Some(
            ready_timeout
                .unwrap_or(Duration::MAX)
                .min(Duration::from_secs(10)),
        );
        if header.footprint() > max {
            return Err(PushError::TooBig {
                footprint: header.footprint(),
                max,
            });
        }
        s.send(&header.encode())?;
        // One READY may have crossed the header; the loader answers a header at once.
        let (kernel_at, dtb) = match s.answer(HEADER_REPLY, 1, obs)? {
            Answer::Reply(OwnedReply::AckHeader { kernel, dtb }) => (kernel, dtb),
            Answer::Reply(OwnedReply::Nak {
                code,
                reason,
                message,
            }) => {
                retry_or_fail(code, reason, message, attempts, p.retries, obs)?;
                continue;
            }
            Answer::Reply(other) => return Err(unexpected("ACK HEADER", other, attempts)),
            Answer::Ready { version, max } => {
                lost("ACK HEADER", HEADER_REPLY, attempts, p.retries, obs)?;
                ready_now = Some((version, max));
                continue;
            }
            Answer::Nothing => {
                lost("ACK HEADER", HEADER_REPLY, attempts, p.retries, obs)?;
                continue;
            }
        };
        send_payload(&mut s, p, header.payload_len(), obs)?;
        // Between ACK HEADER and its answer the loader prints no READY: one means it restarted.
        let answer = match s.answer(DATA_REPLY, 0, obs)? {
            Answer::Reply(r) => r,
            Answer::Ready { version, max } => {
                lost("ACK DATA", DATA_REPLY, attempts, p.retries, obs)?;
                ready_now = Some((version, max));
                continue;
            }
            Answer::Nothing => {
                lost("ACK DATA", DATA_REPLY, attempts, p.retries, obs)?;
                continue;
            }
        };
        match answer {
            OwnedReply::AckData { crc } if crc == header.payload_crc => {
                return Ok(Pushed {
                    kernel_at,
                    dtb,
                    attempts,
                    leftover: s.into_leftover(),
                })
            }
            OwnedReply::AckData { crc } => {
                return Err(PushError::WrongAck {
                    ours: header.payload_crc,
                    theirs: crc,
                })
            }
            OwnedReply::Nak {
                code,
                reason,
                message,
            } => retry_or_fail(code, reason, message, attempts, p.retries, obs)?,
            other => return Err(unexpected("ACK DATA", other, attempts)),
        }
    }
}

fn unexpected(waiting_for: &'static str, got: OwnedReply, attempts: u32) -> PushError {
    PushError::Refused {
        code: 0,
        reason: None,
        message: format!("expected {waiting_for}, got {got:?}"),
        attempts,
    }
}

/// No answer to what we sent: a transient failure, retried while retries are left.
fn lost(
    waiting_for: &'static str,
    after: Duration,
    attempts: u32,
    retries: u32,
    obs: &mut dyn Observer,
) -> Result<(), PushError> {
    if attempts <= retries {
        obs.resending(waiting_for);
        Ok(())
    } else {
        Err(PushError::NoReply {
            waiting_for,
            after,
            attempts,
        })
    }
}

fn retry_or_fail(
    code: u8,
    reason: Option<Nak>,
    message: String,
    attempts: u32,
    retries: u32,
    obs: &mut dyn Observer,
) -> Result<(), PushError> {
    if reason.is_some_and(Nak::is_transient) && attempts <= retries {
        obs.retrying(code, &message);
        Ok(())
    } else {
        Err(PushError::Refused {
            code,
            reason,
            message,
            attempts,
        })
    }
}

fn send_payload(
    s: &mut Session<'_>,
    p: &Push<'_>,
    total: u64,
    obs: &mut dyn Observer,
) -> Result<(), PushError> {
    let started = Instant::now();
    let mut sent = 0u64;
    obs.progress(0, total, Duration::ZERO);
    for chunk in p.kernel.chunks(CHUNK).chain([p.bootargs.as_bytes()]) {
        if chunk.is_empty() {
            continue;
        }
        s.send(chunk)?;
        sent += chunk.len() as u64;
        obs.progress(sent, total, started.elapsed());
    }
    s.drain();
    Ok(())
}

/// Prints progress on stderr (`\r`-updated on a terminal, a line per 25% otherwise) and the
/// board's lines on stdout with a prefix.
pub struct Console {
    pub prefix: &'static str,
    tty: bool,
    last_quarter: u64,
    last_draw: Option<Instant>,
}

impl Console {
    pub fn new(prefix: &'static str) -> Self {
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(2) == 1 };
        Self {
            prefix,
            tty,
            last_quarter: 0,
            last_draw: None,
        }
    }
}

impl Observer for Console {
    fn board_line(&mut self, line: &str) {
        println!("{}{line}", self.prefix);
    }

    fn progress(&mut self, sent: u64, total: u64, elapsed: Duration) {
        let pct = sent * 100 / total.max(1);
        let rate = sent as f64 / elapsed.as_secs_f64().max(1e-3) / 1024.0;
        let text = format!(
            "{}sending {} of {} KiB ({pct}%, {rate:.1} KiB/s)",
            self.prefix,
            sent / 1024,
            total.div_ceil(1024)
        );
        if self.tty {
            let due = self
                .last_draw
                .is_none_or(|t| t.elapsed() > Duration::from_millis(200));
            if due || sent == total {
                eprint!("\r{text}\x1b[K");
                self.last_draw = Some(Instant::now());
            }
            if sent == total {
                eprintln!();
            }
        } else if pct / 25 > self.last_quarter || sent == total {
            self.last_quarter = pct / 25;
            eprintln!("{text}");
        }
    }

    fn retrying(&mut self, code: u8, message: &str) {
        eprintln!(
            "{}the chainloader refused (NAK {code}: {message}); sending again",
            self.prefix
        );
    }

    fn resending(&mut self, waiting_for: &str) {
        eprintln!(
            "{}no {waiting_for} from the chainloader (lost on the line, or the board reset); \
             sending again",
            self.prefix
        );
    }
}

/// How a console session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleEnd {
    /// The kernel printed `# shootdown: exit N`.
    KernelExit(i32),
    /// The port closed or failed.
    PortClosed,
    /// End of input on a terminal (Ctrl-D).
    StdinClosed,
    /// The time limit passed.
    TimedOut,
}

/// A serial console: the port to `out` (starting with `leftover`), stdin to the port, until the
/// kernel's exit line, the port closing, Ctrl-D on a terminal, or `timeout`. Input from a pipe
/// or file is forwarded until it ends and the session goes on (so `< /dev/null` works).
/// Ctrl-C ends the process as usual.
pub fn console(
    port: &mut File,
    leftover: &[u8],
    timeout: Option<Duration>,
    forward_stdin: bool,
    out: &mut dyn Write,
) -> io::Result<ConsoleEnd> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let started = Instant::now();
    let stdin_closed = Arc::new(AtomicBool::new(false));
    if forward_stdin {
        let mut to_port = port.try_clone()?;
        let closed = stdin_closed.clone();
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(0) == 1 };
        std::thread::spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut buf = [0u8; 256];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to_port.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            if tty {
                closed.store(true, Ordering::Relaxed);
            }
        });
    }
    let mut parser = crate::ktap::Parser::new();
    let mut lines = crate::capture::LineSplitter::default();
    let mut feed = |bytes: &[u8], out: &mut dyn Write| -> io::Result<Option<i32>> {
        out.write_all(bytes)?;
        out.flush()?;
        let mut complete = Vec::new();
        lines.push(bytes, &mut complete);
        for line in complete {
            if let crate::ktap::Event::Exit(code) = parser.push(&line, None) {
                return Ok(Some(code));
            }
        }
        Ok(None)
    };
    if let Some(code) = feed(leftover, out)? {
        return Ok(ConsoleEnd::KernelExit(code));
    }
    let mut buf = [0u8; 4096];
    loop {
        if stdin_closed.load(Ordering::Relaxed) {
            return Ok(ConsoleEnd::StdinClosed);
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            return Ok(ConsoleEnd::TimedOut);
        }
        match serial::read_port(port, &mut buf)? {
            PortRead::Quiet => {}
            PortRead::Data(n) => {
                if let Some(code) = feed(&buf[..n], out)? {
                    return Ok(ConsoleEnd::KernelExit(code));
                }
            }
            PortRead::Closed => return Ok(ConsoleEnd::PortClosed),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Both sides over a pseudo-terminal: the real loader state machine
    //! (`shootdown_chainloader::receiver`) runs in a thread on the main side, this module's
    //! `push` on the other, as the harness opens a serial port.

    use std::collections::VecDeque;
    use std::sync::mpsc;
    use std::thread;

    use super::*;
    use crate::serial::{self, Pty};
    use shootdown_chainloader::placement::{self, Placement, Range};
    use shootdown_chainloader::protocol::{self as wire, Refusal, Sink};
    use shootdown_chainloader::receiver::{self, Link, Memory, Timing};

    /// The loader's UART: the pty main side, read with poll() for timeouts.
    struct PtyLink {
        main: File,
        pending: VecDeque<u8>,
        /// Corrupt the payload byte at this index on its way in (a noisy line).
        flip_at: Option<u64>,
        seen: u64,
    }

    impl Sink for PtyLink {
        fn put(&mut self, bytes: &[u8]) {
            let _ = self.main.write_all(bytes);
        }
    }

    impl Link for PtyLink {
        fn read_byte(&mut self, timeout_ms: u32) -> Option<u8> {
            if self.pending.is_empty() {
                let mut fds = libc::pollfd {
                    fd: self.main.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut fds, 1, timeout_ms as i32) } <= 0 {
                    return None;
                }
                let mut buf = [0u8; 4096];
                let n = self.main.read(&mut buf).ok()?;
                self.pending.extend(&buf[..n]);
            }
            let mut b = self.pending.pop_front()?;
            if self.flip_at == Some(self.seen) {
                b ^= 0x20;
                self.flip_at = None;
            }
            self.seen += 1;
            Some(b)
        }

        fn take_errors(&mut self) -> u32 {
            0
        }
    }

    /// 32 MiB of pretend RAM at 0 with the loader at 2 MiB (no device tree: Keep mode only).
    struct Ram {
        bytes: Vec<u8>,
    }

    const RAM: u64 = 32 << 20;
    const BUSY: [Range; 2] = [placement::LOW_RESERVED, Range::new(2 << 20, 0x2_0000)];

    impl Memory for Ram {
        fn max_footprint(&self) -> u64 {
            placement::largest(&[Range::new(0, RAM)], &BUSY, 0)
        }
        fn place(&mut self, h: &Header) -> Result<Placement, Refusal> {
            placement::plan(&[Range::new(0, RAM)], &BUSY, h.footprint(), 0)
                .map_err(|max| Refusal::new(Nak::TooBig, h.footprint(), max))
        }
        fn dtb_for(&self, _: &Placement, _: &Header) -> u64 {
            0x100_0000
        }
        fn kernel_bytes(&mut self, p: &Placement, len: usize) -> &mut [u8] {
            &mut self.bytes[p.kernel as usize..p.kernel as usize + len]
        }
        fn prepare(&mut self, _: &Placement, _: &Header, _: &[u8]) -> Result<(), Refusal> {
            Ok(())
        }
    }

    fn image(len: usize) -> Vec<u8> {
        let mut k: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        k[8..16].fill(0); // text_offset
        k[16..24].copy_from_slice(&(len as u64).to_le_bytes());
        k[24..32].copy_from_slice(&0xau64.to_le_bytes()); // flags as `boot/entry.S`
        k[56..60].copy_from_slice(b"ARM\x64");
        k
    }

    #[derive(Default)]
    struct Record {
        lines: Vec<String>,
        retries: Vec<u8>,
        lost: Vec<String>,
        last_progress: (u64, u64),
    }

    impl Observer for Record {
        fn board_line(&mut self, line: &str) {
            self.lines.push(line.to_string());
        }
        fn progress(&mut self, sent: u64, total: u64, _: Duration) {
            self.last_progress = (sent, total);
        }
        fn retrying(&mut self, code: u8, _: &str) {
            self.retries.push(code);
        }
        fn resending(&mut self, waiting_for: &str) {
            self.lost.push(waiting_for.to_string());
        }
    }

    const FAST: Timing = Timing {
        ready_every_ms: 200,
        byte_timeout_ms: 500,
    };

    /// Runs the loader on a pty; returns the harness's port and the loader's result.
    fn loader(flip_at: Option<u64>) -> (File, mpsc::Receiver<(receiver::Loaded, Vec<u8>)>) {
        let pty = Pty::new().unwrap();
        let port = serial::open(&pty.path, 115200).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut link = PtyLink {
                main: pty.main,
                pending: VecDeque::new(),
                flip_at,
                seen: 0,
            };
            link.put(b"firmware says hello\r\n");
            let mut ram = Ram {
                bytes: vec![0; RAM as usize],
            };
            let loaded = receiver::serve(&mut link, &mut ram, FAST);
            let k = loaded.placement.kernel as usize;
            let got = ram.bytes[k..k + loaded.header.kernel_len as usize].to_vec();
            link.put(b"Shootdown booting\r\n# shootdown: exit 0\r\n");
            let _ = tx.send((loaded, got));
            thread::sleep(Duration::from_millis(500)); // keep the pty open while it is read
        });
        (port, rx)
    }

    fn push_opts(kernel: &[u8]) -> Push<'_> {
        Push {
            kernel,
            bootargs: "ktest=boot.*",
            mode: BootargsMode::Append,
            ready_timeout: Some(Duration::from_secs(5)),
            retries: 2,
        }
    }

    #[test]
    fn a_kernel_arrives_intact_and_the_first_kernel_bytes_are_kept() {
        let k = image(50_000);
        let (mut port, rx) = loader(None);
        let mut rec = Record::default();
        let pushed = push(&mut port, &push_opts(&k), &mut rec).unwrap();
        let (loaded, got) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got, k);
        assert_eq!((pushed.kernel_at, pushed.attempts), (4 << 20, 1));
        assert_eq!(loaded.header.bootargs_len, 12);
        assert_eq!(rec.lines, ["firmware says hello"]);
        assert_eq!(rec.last_progress, (50_012, 50_012));
        // The kernel's output after ACK DATA goes to the console, not into the void.
        let mut out = Vec::new();
        let end = console(
            &mut port,
            &pushed.leftover,
            Some(Duration::from_secs(5)),
            false,
            &mut out,
        )
        .unwrap();
        assert_eq!(end, ConsoleEnd::KernelExit(0));
        assert!(String::from_utf8_lossy(&out).contains("Shootdown booting"));
    }

    #[test]
    fn a_corrupted_byte_on_the_line_is_nakked_and_sent_again() {
        let k = image(20_000);
        // Byte 28 + 5000: inside the kernel, after the header.
        let (mut port, rx) = loader(Some(wire::HEADER_LEN as u64 + 5000));
        let mut rec = Record::default();
        let pushed = push(&mut port, &push_opts(&k), &mut rec).unwrap();
        assert_eq!(pushed.attempts, 2);
        assert_eq!(rec.retries, [Nak::PayloadCrc.code()]);
        let (_, got) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got, k);
    }

    #[test]
    fn a_header_the_loader_never_saw_is_sent_again() {
        let k = image(20_000);
        // The first byte the loader reads is the header's `S`: it never finds the magic, so it
        // sends no NAK and only repeats READY.
        let (mut port, rx) = loader(Some(0));
        let mut rec = Record::default();
        let started = Instant::now();
        let pushed = push(&mut port, &push_opts(&k), &mut rec).unwrap();
        assert_eq!(pushed.attempts, 2);
        assert_eq!(rec.lost, ["ACK HEADER"]);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let (_, got) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got, k);
        // With no retries left, the push ends with what was missing.
        let (mut port, _rx) = loader(Some(0));
        let p = Push {
            retries: 0,
            ..push_opts(&k)
        };
        let e = push(&mut port, &p, &mut rec).unwrap_err();
        assert!(
            matches!(
                e,
                PushError::NoReply {
                    waiting_for: "ACK HEADER",
                    attempts: 1,
                    ..
                }
            ),
            "{e}"
        );
    }

    /// A loader that says READY, accepts whatever header comes, reads `payload` bytes and
    /// returns its link there (to reset or hang up).
    fn accept_then_stop(main: File, payload: usize) -> PtyLink {
        let mut link = PtyLink {
            main,
            pending: VecDeque::new(),
            flip_at: None,
            seen: 0,
        };
        wire::write_ready(&mut link, 16 << 20);
        for _ in 0..wire::HEADER_LEN {
            link.read_byte(5000).unwrap();
        }
        wire::write_ack_header(&mut link, 4 << 20, 0x100_0000);
        for _ in 0..payload {
            link.read_byte(5000).unwrap();
        }
        link
    }

    #[test]
    fn a_board_reset_during_the_payload_is_sent_again() {
        let k = image(20_000);
        let pty = Pty::new().unwrap();
        let mut port = serial::open(&pty.path, 115200).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            // The header and part of the payload arrive, then the board resets: the new
            // loader greets and waits, the rest of the payload is noise to it.
            let mut link = accept_then_stop(pty.main, 5000);
            let mut ram = Ram {
                bytes: vec![0; RAM as usize],
            };
            link.put(b"firmware says hello\r\n");
            let loaded = receiver::serve(&mut link, &mut ram, FAST);
            let _ = tx.send(loaded);
            thread::sleep(Duration::from_millis(500));
        });
        let mut rec = Record::default();
        let started = Instant::now();
        let pushed = push(&mut port, &push_opts(&k), &mut rec).unwrap();
        assert_eq!(pushed.attempts, 2);
        assert_eq!(rec.lost, ["ACK DATA"]);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let loaded = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(loaded.header.kernel_len, 20_000);
    }

    /// The hangup tests need [`serial::hang_up`] (TIOCVHANGUP, which needs CAP_SYS_ADMIN): they
    /// are ignored in a plain `cargo test`, and `make test` (as root, `--include-ignored`) runs
    /// them, where a refused hangup fails instead of passing unseen.
    fn require_hang_up() {
        let ok = Pty::new().is_ok_and(|pty| serial::hang_up(&pty.path));
        assert!(ok, "TIOCVHANGUP is not permitted here (it needs CAP_SYS_ADMIN)");
    }

    #[test]
    #[ignore = "needs CAP_SYS_ADMIN (TIOCVHANGUP): `make test` runs it with --include-ignored"]
    fn an_unplugged_adapter_ends_the_push_instead_of_spinning() {
        require_hang_up();
        let pty = Pty::new().unwrap();
        let mut port = serial::open(&pty.path, 115200).unwrap();
        let path = pty.path.clone();
        let k = image(1000);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let p = Push {
                ready_timeout: None, // `harness chainboot`'s default: wait for the board
                ..push_opts(&k)
            };
            let _ = tx.send(push(&mut port, &p, &mut Record::default()).map(|_| ()));
            // The console sees the hangup as well.
            let _ = tx.send(
                console(
                    &mut port,
                    &[],
                    Some(Duration::from_secs(5)),
                    false,
                    &mut Vec::new(),
                )
                .map(|end| assert_eq!(end, ConsoleEnd::PortClosed))
                .map_err(PushError::Io),
            );
        });
        thread::sleep(Duration::from_millis(300));
        assert!(serial::hang_up(&path));
        let e = rx
            .recv_timeout(Duration::from_secs(3))
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, PushError::PortClosed), "{e}");
        rx.recv_timeout(Duration::from_secs(3)).unwrap().unwrap();
        drop(pty);
    }

    #[test]
    #[ignore = "needs CAP_SYS_ADMIN (TIOCVHANGUP): `make test` runs it with --include-ignored"]
    fn a_port_closing_mid_payload_is_reported_as_closed() {
        require_hang_up();
        let pty = Pty::new().unwrap();
        let mut port = serial::open(&pty.path, 115200).unwrap();
        let path = pty.path.clone();
        thread::spawn(move || {
            let _link = accept_then_stop(pty.main, 5000);
            // Unplugged while the host still has most of a 1 MiB payload to write.
            assert!(serial::hang_up(&path), "TIOCVHANGUP");
            thread::sleep(Duration::from_secs(3));
        });
        let k = image(1 << 20);
        let started = Instant::now();
        let e = push(&mut port, &push_opts(&k), &mut Record::default()).unwrap_err();
        assert!(matches!(e, PushError::PortClosed), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn an_unexpected_reply_names_the_attempt_it_came_on() {
        let pty = Pty::new().unwrap();
        let mut port = serial::open(&pty.path, 115200).unwrap();
        thread::spawn(move || {
            let mut link = PtyLink {
                main: pty.main,
                pending: VecDeque::new(),
                flip_at: None,
                seen: 0,
            };
            // A header checksum refusal (retried), then ACK DATA where ACK HEADER belongs.
            for reply in [
                "@@SDCL NAK 1 header checksum 0x1, expected 0x2\r\n",
                "@@SDCL ACK DATA crc=0x0\r\n",
            ] {
                wire::write_ready(&mut link, 16 << 20);
                for _ in 0..wire::HEADER_LEN {
                    link.read_byte(5000).unwrap();
                }
                link.put(reply.as_bytes());
            }
            thread::sleep(Duration::from_secs(1));
        });
        let k = image(1000);
        let e = push(&mut port, &push_opts(&k), &mut Record::default()).unwrap_err();
        assert!(
            matches!(
                e,
                PushError::Refused {
                    code: 0,
                    attempts: 2,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn refusals_that_retrying_cannot_fix_end_the_push_with_the_reason() {
        let k = image(31 << 20); // more than the 28 MiB free above the loader
        let (mut port, _rx) = loader(None);
        let mut rec = Record::default();
        let e = push(&mut port, &push_opts(&k), &mut rec).unwrap_err();
        assert!(
            matches!(e, PushError::TooBig { footprint, max } if footprint == 31 << 20 && max == 28 << 20),
            "{e}"
        );
        // The loader's own refusal, for a header we forge past the local check.
        let (mut port, _rx) = loader(None);
        let mut s = Session::new(&mut port);
        s.wait_ready(Some(Duration::from_secs(5)), &mut rec)
            .unwrap();
        let h = Header::for_payload(&k, b"", BootargsMode::Keep).unwrap();
        s.send(&h.encode()).unwrap();
        match s
            .wait_reply("ACK HEADER", Duration::from_secs(5), &mut rec)
            .unwrap()
        {
            OwnedReply::Nak {
                reason, message, ..
            } => {
                assert_eq!(reason, Some(Nak::TooBig));
                assert!(message.contains("at most 29360128 fit"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_loader_and_non_images_are_clear_errors() {
        let pty = Pty::new().unwrap();
        let mut port = serial::open(&pty.path, 115200).unwrap();
        let mut rec = Record::default();
        let mut p = push_opts(&[0u8; 100]);
        assert!(matches!(
            push(&mut port, &p, &mut rec),
            Err(PushError::NotAnImage)
        ));
        let k = image(1000);
        p.kernel = &k;
        p.ready_timeout = Some(Duration::from_millis(300));
        let started = Instant::now();
        let e = push(&mut port, &p, &mut rec).unwrap_err();
        assert!(matches!(e, PushError::NoLoader { .. }), "{e}");
        assert!(e.to_string().contains("no chainloader answered"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        // An Image the loader would refuse for its header is refused here, before any wait.
        let mut k = image(1000);
        k[8..16].copy_from_slice(&0x8_0000u64.to_le_bytes());
        p.kernel = &k;
        let e = push(&mut port, &p, &mut rec).unwrap_err();
        assert!(
            matches!(
                e,
                PushError::ImageHeader {
                    text_offset: 0x8_0000,
                    flags: 0xa
                }
            ),
            "{e}"
        );
        // So are boot arguments the loader would leave unused.
        let k = image(1000);
        p.kernel = &k;
        p.mode = BootargsMode::Keep;
        let e = push(&mut port, &p, &mut rec).unwrap_err();
        assert!(matches!(e, PushError::BootargsIgnored), "{e}");
        drop(pty);
    }
}
