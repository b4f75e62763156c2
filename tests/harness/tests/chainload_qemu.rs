//! The UART chainloader end to end, without hardware: QEMU `raspi4b` boots
//! `build/chainloader.img` with its serial port on a pseudo-terminal (`-serial pty`), and the
//! harness drives that terminal exactly as it drives `/dev/ttyUSB0` on a real board.
//!
//! - the real kernel goes through `harness serial --chainload` (what `make hil` runs) with boot
//!   arguments selecting the boot and SMP tests, and its KTAP comes back through the same
//!   terminal and passes; the same QEMU first refuses an oversize kernel and a corrupted one;
//! - `harness chainboot` pushes the stand-in mini kernel and exits with the status it prints.
//!
//! QEMU runs without `-semihosting`, as a board would: the kernel's exit only prints
//! `# shootdown: exit N` and halts (and QEMU's exit cannot cut the terminal's last lines).
//!
//! These need `SHOOTDOWN_KERNEL` and `SHOOTDOWN_CHAINLOADER` and the Pi 4 device tree, so a
//! plain `cargo test` lists them as ignored, with that reason; `make test` builds everything,
//! sets the variables and runs them (`--include-ignored`), where a missing input fails.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shootdown_chainloader::protocol::{BootargsMode, Header, Nak};
use shootdown_harness::chainload::{Observer, OwnedReply, Session};
use shootdown_harness::profile::Profile;
use shootdown_harness::serial;

const HARNESS: &str = env!("CARGO_BIN_EXE_harness");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// An artifact named by an environment variable (relative to the repository root).
fn artifact(var: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .unwrap_or_else(|| panic!("set {var} (`make test` does): this test cannot run without it"));
    let p = repo_root().join(p);
    assert!(p.is_file(), "{var}={} does not exist", p.display());
    p
}

fn pi_dtb() -> PathBuf {
    let dtb = repo_root().join("build/dtb/bcm2711-rpi-4-b.dtb");
    assert!(dtb.is_file(), "no {} (make dtb)", dtb.display());
    dtb
}

/// QEMU raspi4b running the chainloader, its serial port on a pty. Killed on drop.
struct Board {
    qemu: Child,
    pts: PathBuf,
}

impl Board {
    fn boot(chainloader: &Path) -> Board {
        let mut qemu =
            Command::new(std::env::var("QEMU").unwrap_or_else(|_| "qemu-system-aarch64".into()))
                .args([
                    "-M",
                    "raspi4b",
                    "-display",
                    "none",
                    "-monitor",
                    "none",
                    "-serial",
                    "pty",
                    "-no-reboot",
                    "-dtb",
                ])
                .arg(pi_dtb())
                .arg("-kernel")
                .arg(chainloader)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("qemu-system-aarch64 starts (qemu/install.sh qemu)");
        // "char device redirected to /dev/pts/N (label serial0)": on stderr or stdout depending
        // on the QEMU version; read both, and keep draining them.
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(qemu.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(qemu.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        // From here on, dropping the board (also on a panic) kills and reaps QEMU.
        let mut board = Board {
            qemu,
            pts: PathBuf::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if let Some(at) = line.find("/dev/pts/") {
                board.pts = PathBuf::from(line[at..].split_whitespace().next().unwrap());
                return board;
            }
            seen.push(line);
        }
        panic!("QEMU never said which pty it uses:\n{}", seen.join("\n"));
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

#[derive(Default)]
struct Lines(Vec<String>);

impl Observer for Lines {
    fn board_line(&mut self, line: &str) {
        self.0.push(line.to_string());
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The stand-in kernel (`fixtures/mini-kernel.S`) printing `transcript`.
fn mini_kernel(transcript: &str) -> Vec<u8> {
    let mut image =
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mini-kernel.bin")).unwrap();
    image.extend_from_slice(transcript.replace('\n', "\r\n").as_bytes());
    image.push(0);
    image
}

#[test]
#[ignore = "needs the built images (SHOOTDOWN_KERNEL, SHOOTDOWN_CHAINLOADER, SHOOTDOWN_DTB) and QEMU: `make test` runs it with --include-ignored"]
fn hil_refuses_bad_transfers_then_runs_the_real_kernels_tests() {
    let (kernel, loader) = (
        artifact("SHOOTDOWN_KERNEL"),
        artifact("SHOOTDOWN_CHAINLOADER"),
    );
    let board = Board::boot(&loader);
    let mut port = serial::open(&board.pts, 115200).unwrap();
    let mut lines = Lines::default();
    let mut s = Session::new(&mut port);
    let max = s
        .wait_ready(Some(Duration::from_secs(30)), &mut lines)
        .unwrap();
    assert!(
        lines
            .0
            .iter()
            .any(|l| l.contains("chainloader: RAM 0x0+0x3c000000")),
        "the loader read QEMU's memory node: {:#?}",
        lines.0
    );

    // Oversize: a header announcing one page more than the loader said fits.
    let mut big = mini_kernel("");
    big[16..24].copy_from_slice(&(max + 4096).to_le_bytes());
    let h = Header::for_payload(&big, b"", BootargsMode::Keep).unwrap();
    s.send(&h.encode()).unwrap();
    match s
        .wait_reply("ACK HEADER", Duration::from_secs(10), &mut lines)
        .unwrap()
    {
        OwnedReply::Nak {
            reason, message, ..
        } => {
            assert_eq!(reason, Some(Nak::TooBig), "{message}");
            assert!(message.contains(&format!("at most {max} fit")), "{message}");
        }
        other => panic!("oversize kernel not refused: {other:?}"),
    }

    // Corrupted checksum: the header is intact, the payload's CRC is not what it says.
    s.wait_ready(Some(Duration::from_secs(10)), &mut lines)
        .unwrap();
    let small = mini_kernel("never printed\n");
    let mut h = Header::for_payload(&small, b"", BootargsMode::Keep).unwrap();
    h.payload_crc ^= 1;
    s.send(&h.encode()).unwrap();
    let reply = s
        .wait_reply("ACK HEADER", Duration::from_secs(10), &mut lines)
        .unwrap();
    assert!(
        matches!(
            reply,
            OwnedReply::AckHeader {
                kernel: 0x40_0000,
                ..
            }
        ),
        "{reply:?}"
    );
    s.send(&small).unwrap();
    match s
        .wait_reply("ACK DATA", Duration::from_secs(10), &mut lines)
        .unwrap()
    {
        OwnedReply::Nak {
            reason, message, ..
        } => {
            assert_eq!(reason, Some(Nak::PayloadCrc), "{message}");
            assert!(
                message.contains(&format!("expected {:#x}", h.payload_crc)),
                "{message}"
            );
        }
        other => panic!("corrupted payload not refused: {other:?}"),
    }
    // The loader is ready again after a refusal.
    s.wait_ready(Some(Duration::from_secs(10)), &mut lines)
        .unwrap();
    drop(s);
    drop(port);

    // The real kernel, as `make hil` sends it: tests selected by boot arguments that the
    // loader appends to the device tree's (which QEMU left empty).
    let profile = Profile::load(&repo_root().join("qemu"), "raspi4b").unwrap();
    let bootargs = format!("ktest=boot.*,smp.* {}", profile.bootargs)
        .trim_end()
        .to_string();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("chainload-hil");
    let _ = fs::remove_dir_all(&dir);
    let junit = dir.join("hil.xml");
    let out = Command::new(HARNESS)
        .arg("serial")
        .arg("--port")
        .arg(&board.pts)
        .arg("--chainload")
        .arg(&kernel)
        .args([
            "--bootargs",
            &bootargs,
            "--name",
            "pi4-qemu",
            "--timeout",
            "300",
            "--test-timeout",
            "120",
        ])
        .arg("--junit")
        .arg(&junit)
        .arg("--log")
        .arg(dir.join("hil.log"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("kernel at 0x400000"), "{t}");
    assert!(
        t.contains("Ran 8 tests: passed: 8, failed: 0, skipped: 0"),
        "{t}"
    );
    let log = fs::read_to_string(dir.join("hil.log")).unwrap();
    assert!(
        log.contains(&format!("bootargs {bootargs}")),
        "the kernel saw other boot arguments:\n{log}"
    );
    assert!(
        log.contains("cpus     4 online of 4"),
        "secondaries lost on the way:\n{log}"
    );
    let xml = fs::read_to_string(&junit).unwrap();
    for case in [
        "dt_uart_is_a_pl011",
        "all_cpus_online",
        "cpus_run_concurrently",
    ] {
        assert!(
            xml.contains(&format!("name=\"{case}\"")),
            "{case} missing from JUnit:\n{xml}"
        );
    }
    assert!(!xml.contains("<failure"), "{xml}");
}

#[test]
#[ignore = "needs the built images (SHOOTDOWN_KERNEL, SHOOTDOWN_CHAINLOADER, SHOOTDOWN_DTB) and QEMU: `make test` runs it with --include-ignored"]
fn chainboot_is_a_console_that_exits_with_the_kernels_status() {
    let loader = artifact("SHOOTDOWN_CHAINLOADER");
    let board = Board::boot(&loader);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("chainload-console");
    fs::create_dir_all(&dir).unwrap();
    let image = dir.join("mini.img");
    fs::write(
        &image,
        mini_kernel("hello from the mini kernel\n# shootdown: exit 3\n"),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(HARNESS)
        .arg("chainboot")
        .arg("--port")
        .arg(&board.pts)
        .arg("--kernel")
        .arg(&image)
        .args(["--ready-timeout", "30", "--timeout", "30"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello from the mini kernel"),
        "{t}"
    );
    assert!(
        t.contains("chainloader: starting the kernel at 0x400000"),
        "{t}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
