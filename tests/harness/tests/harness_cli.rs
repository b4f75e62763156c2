//! The `harness` binary end to end: against a fake emulator (`fixtures/fake-qemu.sh`, driven by
//! environment variables), a pseudo-terminal standing in for a board's serial port, and real
//! QEMU booting a tiny stand-in kernel (`fixtures/mini-kernel.S`) with the shipped profiles.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use shootdown_harness::serial::Pty;

const HARNESS: &str = env!("CARGO_BIN_EXE_harness");

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    crate_dir().join("fixtures").join(name)
}

fn profiles() -> PathBuf {
    crate_dir().join("../../qemu")
}

/// A fresh scratch directory per test.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("harness-{test}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `harness test --board <board>` of `kernel` with the board profiles in `profiles`, its logs in
/// `dir/logs` and no stdin; the caller adds options and runs it.
fn harness_test(board: &str, kernel: &Path, profiles: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(HARNESS);
    cmd.args(["test", "--board", board, "--kernel"])
        .arg(kernel)
        .arg("--profiles")
        .arg(profiles)
        .arg("--log-dir")
        .arg(dir.join("logs"))
        .stdin(Stdio::null());
    cmd
}

/// `harness test --board virt` of `kernel` against the fake emulator.
fn fake_harness_test(dir: &Path, kernel: &Path) -> Command {
    let mut cmd = harness_test("virt", kernel, &profiles(), dir);
    cmd.arg("--qemu").arg(fixture("fake-qemu.sh"));
    cmd
}

/// `harness test --board virt` against the fake emulator, with `env` for it.
fn fake_test(dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Output {
    let kernel = dir.join("shootdown.img");
    fs::write(&kernel, b"not really a kernel").unwrap();
    let mut cmd = fake_harness_test(dir, &kernel);
    cmd.args(extra_args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_passing_transcript_passes_and_is_logged() {
    let dir = scratch("pass");
    let junit = dir.join("junit/virt.xml");
    let transcript = fixture("pass.ktap");
    let out = fake_test(
        &dir,
        &["--junit", path_str(&junit)],
        &[("FAKE_TRANSCRIPT", path_str(&transcript))],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(
            "Testing complete. Ran 6 tests: passed: 6, failed: 0, skipped: 0 (board: virt"
        ),
        "{text}"
    );
    // The log is the console, line for line (so `kunit.py parse` can read it too).
    assert_eq!(
        fs::read_to_string(dir.join("logs/virt.log")).unwrap(),
        fs::read_to_string(&transcript).unwrap()
    );
    let xml = fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    assert_eq!(doc.root_element().attribute("failures"), Some("0"));
}

#[test]
fn a_failing_test_makes_the_harness_fail_naming_it() {
    let dir = scratch("fail");
    let out = fake_test(
        &dir,
        &[],
        &[
            ("FAKE_TRANSCRIPT", path_str(&fixture("fail-not-ok.ktap"))),
            ("FAKE_EXIT", "1"),
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAILED on virt:\n  - mm.frames_alloc_free: not ok"),
        "{text}"
    );
    assert!(
        text.contains("# frames_alloc_free: expected 255 free frames, found 254"),
        "{text}"
    );
    assert!(text.contains("--- full console log:"), "{text}");
}

#[test]
fn all_tests_passing_but_a_non_zero_exit_still_fails() {
    let dir = scratch("exit");
    let out = fake_test(
        &dir,
        &[],
        &[
            ("FAKE_TRANSCRIPT", path_str(&fixture("pass.ktap"))),
            ("FAKE_EXIT", "2"),
            ("FAKE_STDERR", "qemu-system-aarch64: something broke"),
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("(qemu): QEMU exited with status 2"), "{text}");
    assert!(
        text.contains("--- emulator stderr ---\nqemu-system-aarch64: something broke"),
        "{text}"
    );
    assert!(dir.join("logs/virt.stderr.log").exists());
}

#[test]
fn an_emulator_crash_and_missing_ktap_fail() {
    let dir = scratch("crash");
    let out = fake_test(
        &dir,
        &[],
        &[
            ("FAKE_TRANSCRIPT", path_str(&fixture("no-ktap.ktap"))),
            ("FAKE_SIGNAL", "SEGV"),
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("(boot): no KTAP output"), "{text}");
    assert!(
        text.contains("(qemu): QEMU was killed by signal 11"),
        "{text}"
    );
}

#[test]
fn the_profile_comes_first_and_user_arguments_last() {
    let dir = scratch("args");
    let args_file = dir.join("args");
    let out = fake_test(
        &dir,
        &[
            "--bootargs",
            "ktest=mm.* seed=9",
            "--",
            "-m",
            "3G",
            "-smp",
            "2",
        ],
        &[
            ("FAKE_TRANSCRIPT", path_str(&fixture("pass.ktap"))),
            ("FAKE_ARGS_FILE", path_str(&args_file)),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let args = fs::read_to_string(&args_file).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(&args[..4], ["-M", "virt,gic-version=3", "-cpu", "max"]);
    let at = |flag: &str| args.iter().position(|a| *a == flag).unwrap();
    // The user's boot arguments (the virt profile has none of its own: the kernel's defaults
    // must work on any QEMU line).
    assert_eq!(args[at("-append") + 1], "ktest=mm.* seed=9");
    assert_eq!(&args[args.len() - 4..], ["-m", "3G", "-smp", "2"]);
    assert!(args.contains(&"-semihosting") && args.contains(&"-no-reboot"));
}

/// Whether `pid` is gone (or a zombie nobody reaped yet: it runs no more either way).
fn dead(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_timeout_kills_the_emulator_and_its_children_quickly() {
    let dir = scratch("timeout");
    let pid_file = dir.join("sleep.pid");
    let started = Instant::now();
    let out = fake_test(
        &dir,
        &["--timeout", "1"],
        &[
            (
                "FAKE_TRANSCRIPT",
                path_str(&fixture("missing-truncated.ktap")),
            ),
            ("FAKE_HANG", path_str(&pid_file)),
        ],
    );
    let took = started.elapsed();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(took < Duration::from_secs(8), "the harness took {took:?}");
    assert!(
        text.contains(
            "mm: test 3 of 4, after `mm.frames_alloc_free`: timeout: the run took longer than 1 s"
        ),
        "{text}"
    );
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !dead(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(dead(pid), "the emulator's child {pid} survived the timeout");
}

#[test]
fn an_exited_emulator_whose_child_holds_the_console_does_not_hang_the_harness() {
    let dir = scratch("orphan");
    let pid_file = dir.join("sleep.pid");
    let started = Instant::now();
    let out = fake_test(
        &dir,
        &[],
        &[
            ("FAKE_TRANSCRIPT", path_str(&fixture("pass.ktap"))),
            ("FAKE_ORPHAN", path_str(&pid_file)),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(started.elapsed() < Duration::from_secs(8));
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !dead(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        dead(pid),
        "the emulator's leftover child {pid} was not cleaned up"
    );
}

#[test]
fn sigterm_to_the_harness_kills_the_emulator_group() {
    let dir = scratch("sigterm");
    let kernel = dir.join("shootdown.img");
    fs::write(&kernel, b"x").unwrap();
    let pid_file = dir.join("sleep.pid");
    let mut child = fake_harness_test(&dir, &kernel)
        .env("FAKE_HANG", &pid_file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the fake emulator never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    let harness = i32::try_from(child.id()).unwrap();
    // SAFETY: signals the harness process this test started.
    unsafe { libc::kill(harness, libc::SIGTERM) };
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "the harness dies of the signal it got"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while !dead(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(dead(pid), "the emulator's child {pid} outlived the harness");
}

#[test]
fn several_boards_run_in_turn_with_one_verdict() {
    let dir = scratch("boards");
    let out = fake_test(
        &dir,
        &[
            "--board",
            "virt,virt-smmu",
            "--junit",
            path_str(&dir.join("all.xml")),
        ],
        &[("FAKE_TRANSCRIPT", path_str(&fixture("pass.ktap")))],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("\nvirt: 6 passed, 0 failed, 0 skipped\n"),
        "{text}"
    );
    assert!(
        text.ends_with("\ntotal: 12 passed, 0 failed, 0 skipped\n"),
        "{text}"
    );
    assert!(
        text.contains("virt-smmu    PASSED (6 tests in 1 runs)"),
        "{text}"
    );
    assert!(dir.join("logs/virt-smmu.log").exists());
    let xml = fs::read_to_string(dir.join("all.xml")).unwrap();
    assert!(xml.contains("name=\"virt-smmu/boot\""), "{xml}");
}

#[test]
fn a_silent_test_hits_the_per_test_timeout() {
    let dir = scratch("no-progress");
    let pid_file = dir.join("sleep.pid");
    let out = fake_test(
        &dir,
        &["--timeout", "60", "--test-timeout", "0.5"],
        &[
            (
                "FAKE_TRANSCRIPT",
                path_str(&fixture("missing-truncated.ktap")),
            ),
            ("FAKE_HANG", path_str(&pid_file)),
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("mm: test 3 of 4, after `mm.frames_alloc_free`: timeout: no new KTAP result line for 0.5 s"),
        "{text}"
    );
}

#[test]
fn repeat_finds_a_flaky_test() {
    let dir = scratch("repeat");
    let good = fixture("pass.ktap");
    let bad = dir.join("bad.ktap");
    let text = fs::read_to_string(&good)
        .unwrap()
        .replace("  ok 1 reached", "  not ok 1 reached");
    fs::write(&bad, text).unwrap();
    let junit = dir.join("repeat.xml");
    let out = fake_test(
        &dir,
        &["--repeat", "4", "--junit", path_str(&junit)],
        &[
            ("FAKE_TRANSCRIPT", path_str(&good)),
            ("FAKE_TRANSCRIPT_ALT", path_str(&bad)),
            ("FAKE_COUNTER", path_str(&dir.join("count"))),
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("[FLAKY] boot.reached: passed 2/4"), "{text}");
    assert!(text.contains("5 of 6 tests passed in all 4 runs"), "{text}");
    assert!(text.contains("virt: 2 of 4 runs passed"), "{text}");
    assert!(
        text.ends_with("\nvirt: 22 passed, 2 failed, 0 skipped\n"),
        "{text}"
    );
    assert!(dir.join("logs/virt.run4.log").exists());
    let xml = fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    assert_eq!(
        doc.descendants()
            .filter(|n| n.has_tag_name("failure"))
            .count(),
        2
    );
}

#[test]
fn setup_problems_exit_2_with_a_clear_message() {
    let out = Command::new(HARNESS)
        .args([
            "test",
            "--board",
            "virt",
            "--kernel",
            "/nonexistent/shootdown.img",
            "--profiles",
        ])
        .arg(profiles())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("/nonexistent/shootdown.img not found: build it with `make image`"));

    let out = Command::new(HARNESS)
        .args(["test", "--board", "nope", "--profiles"])
        .arg(profiles())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no board profile `nope`"));

    let dir = scratch("no-qemu");
    let out = fake_test(&dir, &["--qemu", "/nonexistent/qemu"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot start `/nonexistent/qemu`: not found"));
}

#[test]
fn parse_reads_a_saved_log() {
    let out = Command::new(HARNESS)
        .arg("parse")
        .arg(fixture("bail-out.ktap"))
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("FAILED on bail-out:"), "{text}");
    assert!(
        text.contains("Bail out! panicked at kernel/src/mm/phys.rs:88"),
        "{text}"
    );
    let out = Command::new(HARNESS)
        .arg("parse")
        .stdin(fs::File::open(fixture("noise.ktap")).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

/// `harness serial` on the secondary side of a pty; `board` writes what the board would.
fn serial_session(args: &[&str], board: impl FnOnce(&mut fs::File)) -> (Output, Duration) {
    let mut pty = Pty::new().unwrap();
    let dir = scratch(&format!("serial-{}", args.len()));
    let mut child = Command::new(HARNESS)
        .arg("serial")
        .arg("--port")
        .arg(&pty.path)
        .arg("--log")
        .arg(dir.join("serial.log"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The harness flushes stale input when it opens the port: write only once it reads.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("reading KTAP from"), "{first}");
    let started = Instant::now();
    board(&mut pty.main);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let took = started.elapsed();
    drop(pty);
    (
        Output {
            status,
            stdout: (first + &rest).into_bytes(),
            stderr: Vec::new(),
        },
        took,
    )
}

#[test]
fn serial_reads_ktap_from_a_port_and_stops_at_the_exit_line() {
    let transcript = fs::read(fixture("noise.ktap")).unwrap();
    let (out, took) = serial_session(&["--name", "pi4"], |port| {
        port.write_all(&transcript).unwrap()
    });
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("Ran 3 tests: passed: 3, failed: 0, skipped: 0 (board: pi4, finished"),
        "{text}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn serial_per_test_timeout_names_the_running_test() {
    let transcript = fs::read(fixture("missing-truncated.ktap")).unwrap();
    let (out, took) = serial_session(&["--test-timeout", "0.5"], |port| {
        port.write_all(&transcript).unwrap()
    });
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("mm: test 3 of 4, after `mm.frames_alloc_free`: timeout: no new KTAP result line for 0.5 s"),
        "{text}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// The stand-in kernel printing `transcript` and exiting with `status`.
fn mini_kernel(dir: &Path, transcript: &str, status: u64) -> PathBuf {
    let mut image = fs::read(fixture("mini-kernel.bin")).unwrap();
    assert_eq!(
        image.len(),
        0xa8,
        "exit_code sits at 0xa0, the text at 0xa8"
    );
    image[0xa0..0xa8].copy_from_slice(&status.to_le_bytes());
    image.extend_from_slice(transcript.replace('\n', "\r\n").as_bytes());
    image.push(0);
    let path = dir.join("mini.img");
    fs::write(&path, image).unwrap();
    path
}

/// Real QEMU is needed: `make test` installs it (and the Pi 4 device tree) before any test.
fn require_qemu() {
    let found = Command::new("qemu-system-aarch64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "qemu-system-aarch64 is missing: `bash qemu/install.sh qemu` installs it");
}

#[test]
#[ignore = "needs qemu-system-aarch64 and build/dtb/bcm2711-rpi-4-b.dtb: `make test` runs it with --include-ignored"]
fn real_qemu_runs_each_board_profile() {
    require_qemu();
    let dir = scratch("qemu");
    let pass = fs::read_to_string(fixture("pass.ktap")).unwrap();
    let kernel = mini_kernel(&dir, &pass, 0);
    for board in ["virt", "virt-smmu", "raspi4b"] {
        if board == "raspi4b" {
            let dtb = crate_dir().join("../../build/dtb/bcm2711-rpi-4-b.dtb");
            assert!(dtb.exists(), "no {} (`bash qemu/install.sh dtb build`)", dtb.display());
        }
        let out = harness_test(board, &kernel, &profiles(), &dir)
            .args(["--timeout", "30"])
            .output()
            .unwrap();
        let text = stdout(&out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{board}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("passed: 6, failed: 0"), "{board}: {text}");
    }
}

#[test]
#[ignore = "needs qemu-system-aarch64: `make test` runs it with --include-ignored"]
fn real_qemu_exit_status_and_failures_reach_the_verdict() {
    require_qemu();
    let dir = scratch("qemu-fail");
    let pass = fs::read_to_string(fixture("pass.ktap"))
        .unwrap()
        .replace("# shootdown: exit 0\n", "");
    let run = |kernel: &Path| {
        harness_test("virt", kernel, &profiles(), &dir)
            .args(["--timeout", "30"])
            .output()
            .unwrap()
    };
    // Semihosting SYS_EXIT status 3 with a clean transcript: QEMU's status fails the run.
    let out = run(&mini_kernel(&dir, &pass, 3));
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("(qemu): QEMU exited with status 3"),
        "{}",
        stdout(&out)
    );
    // A `not ok` with status 0: the transcript fails the run.
    let failing = pass.replace("  ok 2 cpus_online", "  not ok 2 cpus_online");
    let out = run(&mini_kernel(&dir, &failing, 0));
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("boot.cpus_online: not ok"),
        "{}",
        stdout(&out)
    );
}

/// A profile that boots through firmware names the firmware's banner; a kernel that came up
/// without it (booted directly) fails the run, and so the U-Boot board cannot pass by accident.
#[test]
#[ignore = "needs qemu-system-aarch64: `make test` runs it with --include-ignored"]
fn a_missing_firmware_banner_fails_the_run() {
    require_qemu();
    let dir = scratch("qemu-banner");
    let profiles = dir.join("qemu");
    fs::create_dir_all(&profiles).unwrap();
    let virt = fs::read_to_string(crate::profiles().join("virt.toml")).unwrap();
    fs::write(
        profiles.join("virt-fw.toml"),
        format!("{virt}\nfirmware_banner = \"U-Boot 20\"\n"),
    )
    .unwrap();
    let pass = fs::read_to_string(fixture("pass.ktap")).unwrap();
    let kernel = mini_kernel(&dir, &pass, 0);
    let out = harness_test("virt-fw", &kernel, &profiles, &dir)
        .args(["--timeout", "30"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("banner `U-Boot 20` never appeared"), "{text}");
}

#[test]
fn a_matrix_boots_each_sampled_entry_and_checks_the_banner() {
    let dir = scratch("matrix");
    let kernel = dir.join("shootdown.img");
    fs::write(&kernel, b"not really a kernel").unwrap();
    let matrix = dir.join("matrix.toml");
    fs::write(
        &matrix,
        "[[entry]]\nname = \"a\"\nargs = \"-M virt -smp 2 -m 1G\"\n\
         [[entry]]\nname = \"b\"\nargs = \"-M virt,iommu=smmuv3 -smp 3\"\n",
    )
    .unwrap();
    let transcript = dir.join("t.ktap");
    fs::write(
        &transcript,
        "Shootdown 0.1.0 (aarch64)\n  cpus     2 online of 2 in the device tree\n  \
         memory   1024 MiB in 1 range(s); 946 MiB in page frames\n\
         KTAP version 1\n1..1\nok 1 boot\n# shootdown: exit 0\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        Command::new(HARNESS)
            .args(["matrix", "--file", path_str(&matrix), "--qemu"])
            .arg(fixture("fake-qemu.sh"))
            .args(["--kernel", path_str(&kernel), "--log-dir", path_str(&dir.join("logs"))])
            .args(extra)
            .env("FAKE_TRANSCRIPT", &transcript)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // `a` matches the banner; `b` asked for 3 CPUs and the banner says 2.
    let out = run(&["--sample", "1", "--rotate-by", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("a                                PASSED"), "{}", stdout(&out));
    let out = run(&[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("QEMU was given 3 CPUs"), "{text}");
    assert!(text.contains("matrix: 2 passed, 1 failed"), "{text}");
    let out = run(&["--sample", "1"]);
    assert_eq!(out.status.code(), Some(2), "--sample without --rotate-by is a usage error");
}
