//! A real board's serial port as the KTAP source.
//!
//! The port is opened without becoming our controlling terminal (`O_NOCTTY`) and without
//! waiting for carrier (`O_NONBLOCK` during open, `CLOCAL` after), then set raw with termios:
//! `cfmakeraw` (8N1, no echo, no line editing, no CR/LF translation), no hardware flow
//! control, the requested baud rate, and `VMIN = 0, VTIME = 2` so that a read returns after
//! 0.2 s without data. That lets the reader thread notice when the harness is done instead of
//! blocking forever on a silent board. Input already queued (a previous run's tail) is
//! flushed before reading.
//!
//! The equivalent by hand: `stty -F /dev/ttyUSB0 115200 raw -echo -crtscts clocal`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The termios speed constant for a baud rate (only the standard rates).
fn speed(baud: u32) -> Option<libc::speed_t> {
    Some(match baud {
        9600 => libc::B9600,
        19200 => libc::B19200,
        38400 => libc::B38400,
        57600 => libc::B57600,
        115200 => libc::B115200,
        230400 => libc::B230400,
        460800 => libc::B460800,
        500000 => libc::B500000,
        576000 => libc::B576000,
        921600 => libc::B921600,
        1000000 => libc::B1000000,
        1500000 => libc::B1500000,
        2000000 => libc::B2000000,
        3000000 => libc::B3000000,
        4000000 => libc::B4000000,
        _ => return None,
    })
}

/// Opens `path` and configures it as described in the module documentation.
pub fn open(path: &Path, baud: u32) -> io::Result<File> {
    let speed = speed(baud).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unsupported baud rate {baud} (use a standard rate such as 115200 or 921600)"),
        )
    })?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)?;
    let fd = file.as_raw_fd();
    // SAFETY: termios is plain old data; tcgetattr fills it in before we read it.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open for the lifetime of `file`; tio is a valid termios to write to.
    if unsafe { libc::tcgetattr(fd, &mut tio) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("{} is not a terminal: {e}", path.display()),
        ));
    }
    // SAFETY: cfmakeraw and cfset*speed only modify the struct we own.
    unsafe {
        libc::cfmakeraw(&mut tio);
        libc::cfsetispeed(&mut tio, speed);
        libc::cfsetospeed(&mut tio, speed);
    }
    tio.c_cflag |= libc::CLOCAL | libc::CREAD;
    tio.c_cflag &= !libc::CRTSCTS;
    tio.c_cc[libc::VMIN] = 0;
    tio.c_cc[libc::VTIME] = 2;
    // SAFETY: fd is open; tio is a fully initialised termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &tio) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is open; TCIFLUSH discards input not yet read.
    unsafe { libc::tcflush(fd, libc::TCIFLUSH) };
    // Back to blocking reads: VTIME now bounds each read.
    // SAFETY: fcntl on our open fd with F_GETFL/F_SETFL and an int argument.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(file)
}

/// What one read of a port found.
pub enum PortRead {
    Data(usize),
    /// Nothing for a while (0.2 s, as the port's `VTIME`).
    Quiet,
    /// The port hung up (a USB adapter unplugged) or its other side closed (a pty).
    Closed,
}

/// Reads what a port opened by [`open`] has, waiting at most 0.2 s. A zero-byte read cannot
/// tell the `VTIME` timer from a hangup (after one, Linux's tty reads return 0 at once), so
/// `poll` tells: `POLLHUP`/`POLLERR`, or readable but nothing to read, is a closed port.
pub fn read_port(port: &mut File, buf: &mut [u8]) -> io::Result<PortRead> {
    let mut fds = libc::pollfd {
        fd: port.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    match unsafe { libc::poll(&mut fds, 1, 200) } {
        0 => return Ok(PortRead::Quiet),
        n if n < 0 => {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => Ok(PortRead::Quiet),
                _ => Err(e),
            };
        }
        _ => {}
    }
    // Data still buffered when the other side went is read first.
    if fds.revents & libc::POLLIN == 0 {
        return match fds.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) {
            0 => Ok(PortRead::Quiet),
            _ => Ok(PortRead::Closed),
        };
    }
    match port.read(buf) {
        Ok(0) => Ok(PortRead::Closed),
        Ok(n) => Ok(PortRead::Data(n)),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(PortRead::Quiet),
        Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(PortRead::Closed),
        Err(e) => Err(e),
    }
}

/// A port as a reader that tells a hangup from silence: `Ok(0)` after 0.2 s without data (as
/// `VTIME`), EIO once the port hung up or its other side closed (what a pty's reads say), so a
/// reader that stops on EIO stops instead of spinning on zero-byte reads.
pub struct Reader(pub File);

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match read_port(&mut self.0, buf)? {
            PortRead::Data(n) => Ok(n),
            PortRead::Quiet => Ok(0),
            PortRead::Closed => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }
}

/// For tests: hangs up the terminal at `path` as unplugging a USB adapter does
/// (`TIOCVHANGUP`: reads then return 0 at once, writes fail with EIO). `false` where that is
/// not permitted (it needs CAP_SYS_ADMIN).
pub fn hang_up(path: &Path) -> bool {
    let Ok(tty) = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    // SAFETY: an ioctl without argument on a terminal we opened.
    unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCVHANGUP) == 0 }
}

/// A pseudo-terminal pair for tests: the harness opens `path` like a serial port, the test
/// writes the board's side into `main`.
pub struct Pty {
    pub main: File,
    pub path: std::path::PathBuf,
}

impl Pty {
    pub fn new() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: posix_openpt returns a new fd or -1.
        let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own from here on.
        let main = unsafe { File::from_raw_fd(fd) };
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: fd is a pty main; name is a writable buffer of the given length.
        let ok = unsafe {
            libc::grantpt(fd) == 0
                && libc::unlockpt(fd) == 0
                && libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) == 0
        };
        if !ok {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ptsname_r wrote a NUL-terminated string into name.
        let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        Ok(Self {
            main,
            path: path.to_string_lossy().into_owned().into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_pty_opened_as_a_port_is_raw_and_reads_time_out() {
        let mut pty = Pty::new().unwrap();
        let mut port = open(&pty.path, 115200).unwrap();
        pty.main.write_all(b"ok 1 a\r\n").unwrap();
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while got.len() < 8 {
            let n = port.read(&mut buf).unwrap();
            assert!(n > 0, "data was written, so the read must not time out");
            got.extend_from_slice(&buf[..n]);
        }
        // Raw: the CR survives (no ICRNL), nothing is echoed back.
        assert_eq!(got, b"ok 1 a\r\n");
        // VTIME: a read with nothing to read returns 0 after 0.2 s instead of blocking.
        let started = std::time::Instant::now();
        assert_eq!(port.read(&mut buf).unwrap(), 0);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    #[ignore = "needs CAP_SYS_ADMIN (TIOCVHANGUP): `make test` runs it with --include-ignored"]
    fn a_hung_up_port_reads_as_closed_not_as_silence() {
        let pty = Pty::new().unwrap();
        let mut port = Reader(open(&pty.path, 115200).unwrap());
        let mut buf = [0u8; 64];
        assert_eq!(port.read(&mut buf).unwrap(), 0, "silence");
        assert!(hang_up(&pty.path), "TIOCVHANGUP is not permitted here (it needs CAP_SYS_ADMIN)");
        let e = port.read(&mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        // So the KTAP reader of `harness serial` stops instead of spinning.
        use crate::capture::{spawn_reader, Msg, Stream};
        let pty = Pty::new().unwrap();
        let port = Reader(open(&pty.path, 115200).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        spawn_reader(port, Stream::Out, tx, stop, true);
        assert!(hang_up(&pty.path));
        let got = rx.recv_timeout(std::time::Duration::from_secs(2));
        assert!(matches!(got, Ok(Msg::OutClosed)), "the reader did not stop");
        // The other side closing reads the same.
        let pty = Pty::new().unwrap();
        let mut port = Reader(open(&pty.path, 115200).unwrap());
        drop(pty.main);
        let e = port.read(&mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn rejects_odd_baud_rates_and_non_terminals() {
        let e = open(Path::new("/dev/null"), 12345).unwrap_err();
        assert!(e.to_string().contains("unsupported baud rate 12345"));
        let e = open(Path::new("/dev/null"), 115200).unwrap_err();
        assert!(e.to_string().contains("is not a terminal"), "{e}");
    }
}
