//! The QEMU command line for a board profile, and QEMU as a watched process.
//!
//! Command line, in this order (QEMU takes the *last* `-m`, `-smp`, `-cpu`, and merges repeated
//! `-M` options, so the user's extra arguments, which come last, override the profile; checked
//! with QEMU 10.0.2 `info memory_size_summary` / `info cpus` / `info qom-tree`):
//!
//! ```text
//! <qemu> <profile: -M -cpu -smp -m -dtb -device... args...>
//!        -display none -monitor none -serial stdio          (test: serial on stdout)
//!        -display none -serial mon:stdio                    (run on a terminal: Ctrl-A x quits)
//!        -semihosting -no-reboot                            (the kernel's SYS_EXIT ends QEMU)
//!        -kernel <image> [-append <bootargs>] [-s -S] <extra args...>
//! ```
//!
//! Under test, QEMU runs in its own process group so that a timeout (or the harness being
//! interrupted) kills it and anything it started, and stdin is /dev/null so it never takes the
//! terminal.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::capture::{spawn_reader, Msg, Stream, Target};
use crate::profile::Profile;

/// How QEMU's console is wired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Console {
    /// Serial on stdout, no monitor, no stdin: for the test runner.
    Captured,
    /// Serial and monitor multiplexed on the terminal (`-serial mon:stdio`).
    Terminal,
}

/// What to boot, beyond the board.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The emulator program (`qemu-system-aarch64`, or a stand-in for tests).
    pub qemu: String,
    pub kernel: PathBuf,
    /// The final kernel command line (empty = no `-append`).
    pub bootargs: String,
    /// Add `-s -S`: gdb server on :1234, CPUs stopped until gdb continues.
    pub gdb: bool,
    pub console: Console,
    /// Appended last, so they override the profile.
    pub extra: Vec<String>,
}

/// The profile's default bootargs followed by the user's (the kernel should let a later
/// `key=value` win).
pub fn join_bootargs(profile: &str, user: Option<&str>) -> String {
    [profile.trim(), user.unwrap_or("").trim()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The full command line, program first.
pub fn command_line(profile: &Profile, root: &Path, launch: &Launch) -> Vec<String> {
    let mut cmd = vec![launch.qemu.clone()];
    cmd.extend(profile.board_args(root));
    let console: &[&str] = match launch.console {
        Console::Captured => &["-display", "none", "-monitor", "none", "-serial", "stdio"],
        Console::Terminal => &["-display", "none", "-serial", "mon:stdio"],
    };
    cmd.extend(console.iter().map(|s| s.to_string()));
    cmd.extend(["-semihosting", "-no-reboot", "-kernel"].map(String::from));
    cmd.push(launch.kernel.display().to_string());
    if !launch.bootargs.is_empty() {
        cmd.push("-append".into());
        cmd.push(launch.bootargs.clone());
    }
    if launch.gdb {
        cmd.extend(["-s", "-S"].map(String::from));
    }
    cmd.extend(launch.extra.iter().cloned());
    cmd
}

/// A command line as a shell would need it typed (for logs and `--dry-run`).
pub fn shell_quote(cmd: &[String]) -> String {
    cmd.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=.,/:+@%".contains(c));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The process group of the QEMU under test, for the signal handler (0 = none).
static CHILD_GROUP: AtomicI32 = AtomicI32::new(0);

extern "C" fn kill_child_and_die(sig: libc::c_int) {
    let group = CHILD_GROUP.load(Ordering::SeqCst);
    if group > 0 {
        // SAFETY: kill(2) is async-signal-safe; a negative pid names our child's group only.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
    // SAFETY: signal(2) and raise(3) are async-signal-safe; restoring the default action and
    // re-raising makes the harness die of the same signal, as the shell expects.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Makes Ctrl-C (SIGINT), SIGTERM and SIGHUP kill the QEMU under test before the harness dies,
/// so that no emulator is left running in the background.
pub fn kill_child_on_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only calls async-signal-safe functions and reads an atomic.
        unsafe {
            libc::signal(sig, kill_child_and_die as *const () as libc::sighandler_t);
        }
    }
}

/// `cmd` as a child in its own process group, stdin /dev/null, that dies with the harness.
fn group_command(cmd: &[String]) -> Command {
    let (program, args) = cmd.split_first().expect("a program");
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).process_group(0);
    // If the harness itself is SIGKILLed, no handler of ours runs: PR_SET_PDEATHSIG has the
    // kernel send SIGKILL to QEMU when we die.
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (prctl, getppid); it does not allocate.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The harness may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    command
}

/// Runs `cmd` to the end with its stdout and stderr in the file `log`, killing its process
/// group at `limit`. `None` if it was killed there.
pub fn run_to_file(cmd: &[String], log: &Path, limit: Duration) -> io::Result<Option<ExitStatus>> {
    let out = File::create(log)?;
    let err = out.try_clone()?;
    let mut child = group_command(cmd).stdout(out).stderr(err).spawn()?;
    let group = i32::try_from(child.id()).expect("pid fits in pid_t");
    CHILD_GROUP.store(group, Ordering::SeqCst);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // SAFETY: signals the process group created for this child only (see kill_group).
            unsafe { libc::kill(-group, libc::SIGKILL) };
            child.wait()?;
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    CHILD_GROUP.store(0, Ordering::SeqCst);
    Ok(status)
}

/// QEMU running under the watcher.
pub struct Qemu {
    group: i32,
    stop_readers: Arc<AtomicBool>,
}

impl Qemu {
    /// Starts `cmd` in a new process group with stdout/stderr captured into `tx`.
    pub fn spawn(cmd: &[String], tx: Sender<Msg>) -> io::Result<Self> {
        let mut child = group_command(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let group = i32::try_from(child.id()).expect("pid fits in pid_t");
        CHILD_GROUP.store(group, Ordering::SeqCst);
        let stop_readers = Arc::new(AtomicBool::new(false));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        spawn_reader(stdout, Stream::Out, tx.clone(), stop_readers.clone(), false);
        spawn_reader(stderr, Stream::Err, tx.clone(), stop_readers.clone(), false);
        thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(Msg::Exited(status));
        });
        Ok(Self {
            group,
            stop_readers,
        })
    }

    fn kill_group(&self) {
        // SAFETY: signals the process group we created for this child (and nothing else: its
        // id is the child's pid, which stays reserved as a group id while any member lives).
        unsafe { libc::kill(-self.group, libc::SIGKILL) };
    }
}

impl Target for Qemu {
    fn stop(&mut self) {
        self.kill_group();
        self.stop_readers.store(true, Ordering::Relaxed);
    }

    fn ends_with_document(&self) -> bool {
        false
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        // Whatever happened, leave nothing of this run behind.
        self.kill_group();
        let _ = CHILD_GROUP.compare_exchange(self.group, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Replaces the harness with QEMU (for `harness run`): QEMU gets the terminal, its signals and
/// its exit status become ours. Returns only on failure to start it.
pub fn exec(cmd: &[String], stdin_null: bool) -> io::Error {
    let (program, args) = cmd.split_first().expect("a program");
    let mut command = Command::new(program);
    command.args(args);
    if stdin_null {
        command.stdin(Stdio::null());
    }
    command.exec()
}

/// Whether stdin is a terminal (then `run` wires the QEMU monitor to it).
pub fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        Profile::parse(
            "virt",
            Path::new("virt.toml"),
            "machine = \"virt\"\nsmp = 4\nmemory = \"1G\"\nbootargs = \"log=info\"",
        )
        .unwrap()
    }

    #[test]
    fn extra_args_come_last_and_gdb_stops_the_cpus() {
        let p = profile();
        let launch = Launch {
            qemu: "qemu-system-aarch64".into(),
            kernel: "build/shootdown.img".into(),
            bootargs: join_bootargs(&p.bootargs, Some("ktest=boot.*")),
            gdb: true,
            console: Console::Captured,
            extra: vec!["-m".into(), "3G".into()],
        };
        let cmd = command_line(&p, Path::new("."), &launch);
        assert_eq!(
            shell_quote(&cmd),
            "qemu-system-aarch64 -M virt -smp 4 -m 1G -display none -monitor none -serial stdio \
             -semihosting -no-reboot -kernel build/shootdown.img -append 'log=info ktest=boot.*' -s -S -m 3G"
        );
    }

    #[test]
    fn no_append_without_bootargs_and_terminal_console_has_the_monitor() {
        let p = Profile::parse("v", Path::new("v.toml"), "machine = \"virt\"").unwrap();
        let launch = Launch {
            qemu: "q".into(),
            kernel: "k".into(),
            bootargs: join_bootargs("", None),
            gdb: false,
            console: Console::Terminal,
            extra: vec![],
        };
        let cmd = command_line(&p, Path::new("."), &launch);
        assert!(!cmd.contains(&"-append".to_string()));
        assert!(cmd.windows(2).any(|w| w == ["-serial", "mon:stdio"]));
    }

    #[test]
    fn quotes_only_what_needs_it() {
        let cmd = [
            "a".to_string(),
            "b c".into(),
            "it's".into(),
            "".into(),
            "x=1,y=2".into(),
        ];
        assert_eq!(shell_quote(&cmd), r#"a 'b c' 'it'\''s' '' x=1,y=2"#);
    }
}
