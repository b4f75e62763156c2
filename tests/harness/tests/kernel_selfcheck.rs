//! The harness against the real kernel image: it must notice a failing test, a crash inside a
//! test, and a boot without a device tree, and `ktest=` must select exactly what it names.
//!
//! These need `build/shootdown.img`: `make test` runs them after `make image` with
//! `SHOOTDOWN_KERNEL` pointing at it. Without that variable they say so and return; with `CI`
//! set, a missing kernel is a failure instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const HARNESS: &str = env!("CARGO_BIN_EXE_harness");

fn kernel() -> PathBuf {
    let k = std::env::var_os("SHOOTDOWN_KERNEL").unwrap_or_else(|| {
        panic!("set SHOOTDOWN_KERNEL=build/shootdown.img (`make test` does): this test cannot run without it")
    });
    // Relative to the repository root (where `make` runs), not this crate.
    let k = repo_root().join(PathBuf::from(k));
    assert!(
        k.exists(),
        "SHOOTDOWN_KERNEL={} does not exist",
        k.display()
    );
    std::fs::canonicalize(k).unwrap()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn harness_test(kernel: &Path, board: &str, bootargs: &str, logs: &str) -> Output {
    let log_dir =
        std::env::temp_dir().join(format!("shootdown-selfcheck-{logs}-{}", std::process::id()));
    Command::new(HARNESS)
        .current_dir(repo_root())
        .args([
            "test",
            "--board",
            board,
            "--timeout",
            "120",
            "--bootargs",
            bootargs,
            "--kernel",
        ])
        .arg(kernel)
        .arg("--log-dir")
        .arg(&log_dir)
        .stdin(Stdio::null())
        .output()
        .expect("harness runs")
}

/// The console log `harness_test(.., logs)` kept for `board`.
fn console_log(logs: &str, board: &str) -> String {
    let dir =
        std::env::temp_dir().join(format!("shootdown-selfcheck-{logs}-{}", std::process::id()));
    std::fs::read_to_string(dir.join(format!("{board}.log"))).unwrap_or_default()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
#[ignore = "needs the built images (SHOOTDOWN_KERNEL, SHOOTDOWN_CHAINLOADER, SHOOTDOWN_DTB) and QEMU: `make test` runs it with --include-ignored"]
fn a_test_that_fails_on_request_fails_the_run_naming_it() {
    let k = kernel();
    let out = harness_test(&k, "virt", "ktest=ktest ktest.fail=1", "fail");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("ktest.selftest_fail"),
        "the failing test is not named:\n{t}"
    );
    assert!(
        t.contains("deliberate failure requested by ktest.fail=1"),
        "its diagnostic is lost:\n{t}"
    );
    // The same selection without the request passes: the failure came from the boot argument.
    let out = harness_test(&k, "virt", "ktest=ktest", "fail-control");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
#[ignore = "needs the built images (SHOOTDOWN_KERNEL, SHOOTDOWN_CHAINLOADER, SHOOTDOWN_DTB) and QEMU: `make test` runs it with --include-ignored"]
fn a_crash_inside_a_test_bails_out_with_a_decoded_report() {
    let k = kernel();
    let out = harness_test(&k, "virt", "ktest=ktest ktest.crash=1", "crash");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("selftest_crash"),
        "the crashing test is not named:\n{t}"
    );
    let log = console_log("crash", "virt");
    assert!(
        log.contains("Bail out!"),
        "no Bail out! in the console log:\n{log}"
    );
    assert!(
        log.contains("Data Abort") && log.contains("translation fault"),
        "the report is not decoded:\n{log}"
    );
}

#[test]
#[ignore = "needs the built images (SHOOTDOWN_KERNEL, SHOOTDOWN_CHAINLOADER, SHOOTDOWN_DTB) and QEMU: `make test` runs it with --include-ignored"]
fn a_stack_overflow_is_reported_as_one() {
    let k = kernel();
    let out = harness_test(&k, "virt", "ktest=ktest ktest.crash=stack", "stack");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    let log = console_log("stack", "virt");
    assert!(
        log.contains("Bail out!") && log.contains("selftest_crash"),
        "no Bail out! naming the test:\n{log}"
    );
    assert!(
        log.contains("stack overflow: CPU ")
            && log.contains("ran off the bottom of its main stack"),
        "the guard-page hit is not reported as a stack overflow:\n{log}"
    );
}

#[test]
#[ignore = "needs the built images (SHOOTDOWN_KERNEL, SHOOTDOWN_CHAINLOADER, SHOOTDOWN_DTB) and QEMU: `make test` runs it with --include-ignored"]
fn ktest_selects_exactly_the_named_tests() {
    let k = kernel();
    let out = harness_test(
        &k,
        "virt",
        "ktest=boot.reached,smp.work_runs_on_every_cpu",
        "filter",
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("Ran 2 tests"),
        "the filter did not select exactly two tests:\n{t}"
    );
}

#[test]
#[ignore = "needs the built images (SHOOTDOWN_KERNEL, SHOOTDOWN_CHAINLOADER, SHOOTDOWN_DTB) and QEMU: `make test` runs it with --include-ignored"]
fn booting_without_a_device_tree_says_so_and_exits_2() {
    let k = kernel();
    // QEMU's raspi4b has no built-in tree: without -dtb the kernel gets none.
    let out = Command::new(std::env::var("QEMU").unwrap_or_else(|_| "qemu-system-aarch64".into()))
        .args([
            "-M",
            "raspi4b",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-semihosting",
            "-no-reboot",
            "-kernel",
        ])
        .arg(&k)
        .stdin(Stdio::null())
        .output()
        .expect("qemu runs");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("cannot boot without a device tree"),
        "no clear message:\n{t}"
    );
}

/// The console of QEMU run with `args` and no harness (no `-semihosting`, no `-no-reboot`: a
/// board on its own), for at most `secs` seconds; and whether QEMU ended by itself by then.
fn console_of_a_board_alone(args: &[&str], secs: u64) -> (String, bool) {
    let qemu = std::env::var("QEMU").unwrap_or_else(|_| "qemu-system-aarch64".into());
    let mut child = Command::new(qemu)
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu runs");
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let ended = loop {
        if child.try_wait().expect("qemu status").is_some() {
            break true;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    (reader.join().expect("reader"), ended)
}

/// A fatal boot argument on a board that boots the image by itself (a Pi's `cmdline.txt`) must
/// stop the board, not reset it into the same command line for ever. With PSCI (QEMU `virt`)
/// the machine switches off and QEMU ends; without (QEMU `raspi4b`, like a Pi on its own
/// firmware) it stays stopped and keeps saying why.
#[test]
#[ignore = "needs the built images (SHOOTDOWN_KERNEL, SHOOTDOWN_CHAINLOADER, SHOOTDOWN_DTB) and QEMU: `make test` runs it with --include-ignored"]
fn a_fatal_boot_argument_stops_the_board_instead_of_rebooting_it() {
    let k = kernel();
    let k = k.to_str().expect("UTF-8 path");
    let dtb = repo_root().join(
        std::env::var_os("SHOOTDOWN_DTB").unwrap_or_else(|| "build/dtb/bcm2711-rpi-4-b.dtb".into()),
    );
    let dtb = dtb.to_str().expect("UTF-8 path");
    let why = "bootargs: `seed=abc`: expected a number";
    let boots = |console: &str| console.matches("# shootdown: exit 2").count();

    let virt = [
        "-M", "virt", "-cpu", "max", "-m", "1G", "-kernel", k, "-append", "seed=abc",
    ];
    let (console, ended) = console_of_a_board_alone(&virt, 60);
    assert!(ended, "virt did not switch itself off:\n{console}");
    assert_eq!(boots(&console), 1, "virt booted again:\n{console}");
    assert!(console.contains(why), "{console}");

    // Two reminders are due 10 s after the exit line; the boot takes a few more.
    let pi = [
        "-M", "raspi4b", "-dtb", dtb, "-kernel", k, "-append", "seed=abc",
    ];
    let (console, ended) = console_of_a_board_alone(&pi, 30);
    assert!(
        !ended,
        "raspi4b ended although nothing can switch it off:\n{console}"
    );
    assert_eq!(boots(&console), 1, "raspi4b booted again:\n{console}");
    let reminders = console
        .lines()
        .filter(|l| l.starts_with("shootdown: stopped with exit status 2") && l.contains(why))
        .count();
    assert!(
        reminders >= 2,
        "{reminders} reminders of why it stopped:\n{console}"
    );
}

#[test]
#[ignore = "needs the built images (SHOOTDOWN_KERNEL, SHOOTDOWN_CHAINLOADER, SHOOTDOWN_DTB) and QEMU: `make test` runs it with --include-ignored"]
fn make_run_trace_writes_valid_chrome_json_with_every_unmap_invalidated_before_it_returned() {
    let k = kernel();
    let out_json =
        std::env::temp_dir().join(format!("shootdown-trace-{}.json", std::process::id()));
    let out = Command::new(HARNESS)
        .current_dir(repo_root())
        .args([
            "run",
            "--board",
            "virt",
            "--bootargs",
            "ktest=mm",
            "--kernel",
        ])
        .arg(&k)
        .arg("--trace")
        .arg(&out_json)
        .stdin(Stdio::null())
        .output()
        .expect("harness runs");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("each returned after its secondary invalidation"),
        "{t}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).expect("valid JSON");
    let events = json["traceEvents"].as_array().expect("traceEvents");
    let named = |n: &str| events.iter().filter(|e| e["name"] == n).count();
    assert!(named("munmap") >= 2, "no unmaps traced");
    assert_eq!(named("munmap") % 2, 0, "unbalanced munmap begin/end");
    assert!(
        named("arch_invalidate_secondary_tlbs") >= named("munmap"),
        "{events:?}"
    );
    assert!(
        named("CPU TLBI") > 0,
        "the CPU TLB invalidations are not traced"
    );
    // Timestamps never go backwards within a CPU.
    let mut last = std::collections::HashMap::new();
    for e in events.iter().filter(|e| e["ph"] != "M") {
        let (tid, ts) = (e["tid"].as_u64().unwrap(), e["ts"].as_f64().unwrap());
        let prev = last.insert(tid, ts).unwrap_or(0.0);
        assert!(ts >= prev, "time went backwards on CPU {tid}");
    }
    let _ = std::fs::remove_file(&out_json);
}

fn harness_run(kernel: &Path, board: &str, bootargs: &str) -> Output {
    Command::new(HARNESS)
        .current_dir(repo_root())
        .args(["run", "--board", board, "--bootargs", bootargs, "--kernel"])
        .arg(kernel)
        .stdin(Stdio::null())
        .output()
        .expect("harness runs")
}

/// The number after `stale accesses` in the workload's summary.
fn stale_count(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("stale accesses"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[test]
#[ignore = "needs the built images (SHOOTDOWN_KERNEL, SHOOTDOWN_CHAINLOADER, SHOOTDOWN_DTB) and QEMU: `make test` runs it with --include-ignored"]
fn make_run_workload_passes_with_no_stale_access_on_both_boards() {
    let k = kernel();
    for board in ["virt-smmu", "raspi4b"] {
        let out = harness_run(&k, board, "rounds=4 seed=11");
        let t = text(&out);
        assert_eq!(out.status.code(), Some(0), "{board}:\n{t}");
        assert_eq!(stale_count(&t), Some(0), "{board}:\n{t}");
        assert!(t.contains("result           PASS"), "{board}:\n{t}");
        assert!(
            t.contains("faults           expected"),
            "{board}: no fault summary:\n{t}"
        );
    }
}

#[test]
#[ignore = "needs the built images (SHOOTDOWN_KERNEL, SHOOTDOWN_CHAINLOADER, SHOOTDOWN_DTB) and QEMU: `make test` runs it with --include-ignored"]
fn the_workload_fails_when_the_iotlb_is_not_invalidated() {
    let k = kernel();
    for board in ["virt-smmu", "raspi4b"] {
        let out = harness_run(&k, board, "rounds=4 seed=11 smmu.skip_invalidate=1");
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{board}:\n{t}");
        assert!(
            stale_count(&t).is_some_and(|n| n > 0),
            "{board}: stale accesses not reported:\n{t}"
        );
        assert!(t.contains("result           FAIL"), "{board}:\n{t}");
    }
}
