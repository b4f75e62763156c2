//! `harness soak`: the soak over boards and seeds (`make soak`, and the short soak of
//! `make test`). Each run boots `job=soak seed=S rounds=N` on one board, keeps its console in
//! `<log-dir>/<prefix>-<board>-<seed>.log` and is judged by the kernel's one-line summary
//! (`# soak key=value ...`, printed by `kernel/src/workload/soak/`); this module parses those lines,
//! judges the runs and prints the table. Booting them is [`crate::app`]'s.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// `harness soak`'s options.
#[derive(Clone, Debug, PartialEq)]
pub struct SoakOptions {
    pub boards: Vec<String>,
    pub seeds: Vec<u64>,
    pub rounds: u32,
    /// Added to `job=soak seed=S rounds=N` (e.g. `fault=all`).
    pub bootargs: String,
    /// The runs must fail and report stale accesses (`smmu.skip_invalidate=1`): the soak has
    /// to catch a missing IOTLB invalidation.
    pub expect_stale: bool,
    /// Limit per run.
    pub timeout: Duration,
    pub log_dir: PathBuf,
    pub log_prefix: String,
    pub kernel: Option<PathBuf>,
    pub qemu: Option<String>,
    pub profiles: Option<PathBuf>,
}

impl Default for SoakOptions {
    fn default() -> Self {
        Self {
            boards: Vec::new(),
            seeds: Vec::new(),
            rounds: 0,
            bootargs: String::new(),
            expect_stale: false,
            timeout: Duration::from_secs(600),
            log_dir: PathBuf::from("build/logs"),
            log_prefix: "soak".into(),
            kernel: None,
            qemu: None,
            profiles: None,
        }
    }
}

impl SoakOptions {
    /// The kernel command line of one run.
    pub fn bootargs_for(&self, seed: u64) -> String {
        let base = format!("job=soak seed={seed} rounds={}", self.rounds);
        match self.bootargs.trim() {
            "" => base,
            extra => format!("{base} {extra}"),
        }
    }

    /// Where the console of one run is kept.
    pub fn log_path(&self, board: &str, seed: u64) -> PathBuf {
        self.log_dir
            .join(format!("{}-{board}-{seed}.log", self.log_prefix))
    }
}

/// The kernel's summary of one soak run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SoakSummary {
    pub operations: u64,
    pub dmas: u64,
    pub faults_expected: u64,
    pub faults_seen: u64,
    pub stale: u64,
    pub notifier_inserts: u64,
    pub notifier_removes: u64,
    pub notifier_invalidations: u64,
    /// Slowest munmap/mprotect, wall clock.
    pub slowest_us: u64,
    /// Slowest SMMU invalidation through the driver.
    pub slowest_smmu_us: u64,
    pub injected: u64,
    pub survived: u64,
    /// The kernel's own verdict (`PASS`/`FAIL`).
    pub passed: bool,
}

const MARKER: &str = "# soak ";

impl SoakSummary {
    /// Parses one `# soak key=value ...` line; every field this module reads must be there.
    pub fn parse(line: &str) -> Result<Self, String> {
        let fields = line
            .trim_end()
            .strip_prefix(MARKER)
            .ok_or_else(|| format!("not a soak summary: `{line}`"))?;
        let pairs: Vec<(&str, &str)> = fields
            .split_whitespace()
            .map(|kv| kv.split_once('=').ok_or(kv))
            .collect::<Result<_, _>>()
            .map_err(|kv| format!("soak summary: `{kv}` is not key=value"))?;
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .ok_or_else(|| format!("soak summary: no `{key}`"))
        };
        let num = |key: &str| {
            let v = get(key)?;
            v.parse::<u64>()
                .map_err(|_| format!("soak summary: {key}=`{v}` is not a number"))
        };
        let passed = match get("result")? {
            "PASS" => true,
            "FAIL" => false,
            other => return Err(format!("soak summary: result=`{other}`")),
        };
        Ok(Self {
            operations: num("operations")?,
            dmas: num("dmas")?,
            faults_expected: num("faults_expected")?,
            faults_seen: num("faults_seen")?,
            stale: num("stale")?,
            notifier_inserts: num("notifier_inserts")?,
            notifier_removes: num("notifier_removes")?,
            notifier_invalidations: num("notifier_invalidations")?,
            slowest_us: num("slowest_us")?,
            slowest_smmu_us: num("slowest_smmu_us")?,
            injected: num("injected")?,
            survived: num("survived")?,
            passed,
        })
    }

    /// The last summary in a console log (a run prints one; a partial earlier line, e.g. from
    /// a reboot, must not win). `None` if there is none.
    pub fn last_in(console: &str) -> Option<Result<Self, String>> {
        console
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .rfind(|l| l.starts_with(MARKER))
            .map(Self::parse)
    }
}

/// How one run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// QEMU's exit status (the kernel's, through PSCI or semihosting).
    Status(i32),
    /// Killed by a signal, or the status could not be read.
    Abnormal,
    /// Killed at the time limit.
    TimedOut,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Status(s) => write!(f, "exit {s}"),
            Exit::Abnormal => f.write_str("killed"),
            Exit::TimedOut => f.write_str("timed out"),
        }
    }
}

/// One board and seed, done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoakRun {
    pub board: String,
    pub seed: u64,
    pub exit: Exit,
    /// The kernel's summary, or why there is none usable.
    pub summary: Result<SoakSummary, String>,
}

impl SoakRun {
    /// Did this run do what it had to? Normally: exit 0, no stale access, the kernel's PASS
    /// (which includes every injected fault survived). With `expect_stale`: a non-zero exit
    /// *and* stale accesses, i.e. the soak caught the missing invalidation.
    pub fn ok(&self, expect_stale: bool) -> bool {
        let Ok(s) = &self.summary else {
            return false;
        };
        if expect_stale {
            self.exit != Exit::Status(0) && s.stale > 0
        } else {
            self.exit == Exit::Status(0) && s.stale == 0 && s.passed
        }
    }
}

/// The table's header.
pub fn header() -> String {
    format!(
        "{:<10} {:>6} {:>6} {:>10} {:>6} {:>13} {:>6} {:>17} {:>14} {:>9} {:>9} {:>8} result",
        "board",
        "seed",
        "rounds",
        "operations",
        "dmas",
        "faults",
        "stale",
        "notifier ins/rm",
        "invalidations",
        "smmu_us",
        "unmap_us",
        "survived"
    )
}

/// One run's row; `log` is named when the run left no usable summary.
pub fn row(run: &SoakRun, rounds: u32, log: &str) -> String {
    match &run.summary {
        Ok(s) => format!(
            "{:<10} {:>6} {:>6} {:>10} {:>6} {:>13} {:>6} {:>17} {:>14} {:>9} {:>9} {:>8} {} ({})",
            run.board,
            run.seed,
            rounds,
            s.operations,
            s.dmas,
            format!("{}/{}", s.faults_seen, s.faults_expected),
            s.stale,
            format!("{}/{}", s.notifier_inserts, s.notifier_removes),
            s.notifier_invalidations,
            s.slowest_smmu_us,
            s.slowest_us,
            format!("{}/{}", s.survived, s.injected),
            if s.passed { "PASS" } else { "FAIL" },
            run.exit
        ),
        Err(why) => format!(
            "{:<10} {:>6} {:>6}  {why} ({}): see {log}",
            run.board, run.seed, rounds, run.exit
        ),
    }
}

/// The closing lines: totals over the runs and the verdict. Returns them and whether the soak
/// passed.
pub fn conclusion(o: &SoakOptions, runs: &[SoakRun], seconds: u64) -> (String, bool) {
    let summaries: Vec<&SoakSummary> = runs
        .iter()
        .filter_map(|r| r.summary.as_ref().ok())
        .collect();
    let sum = |f: fn(&SoakSummary) -> u64| summaries.iter().map(|s| f(s)).sum::<u64>();
    let max = |f: fn(&SoakSummary) -> u64| summaries.iter().map(|s| f(s)).max().unwrap_or(0);
    let seeds: Vec<String> = o.seeds.iter().map(u64::to_string).collect();
    let extra = match o.bootargs.trim() {
        "" => String::new(),
        e => format!(", {e}"),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "soak: {} runs on [{}], seeds [{}], {} rounds per CPU{extra}, {seconds} s",
        runs.len(),
        o.boards.join(" "),
        seeds.join(" "),
        o.rounds
    );
    let _ = writeln!(
        out,
        "soak: operations {}, DMA transfers {}, faults seen/expected {}/{}, stale accesses {}",
        sum(|s| s.operations),
        sum(|s| s.dmas),
        sum(|s| s.faults_seen),
        sum(|s| s.faults_expected),
        sum(|s| s.stale)
    );
    let _ = writeln!(
        out,
        "soak: interval notifiers inserted {}, invalidations seen {}; injected faults {}, survived {}",
        sum(|s| s.notifier_inserts),
        sum(|s| s.notifier_invalidations),
        sum(|s| s.injected),
        sum(|s| s.survived)
    );
    let _ = writeln!(
        out,
        "soak: slowest SMMU invalidation {} us (driver: queue wait + TLBIs + CMD_SYNC), slowest munmap/mprotect {} us (wall clock, locks included)",
        max(|s| s.slowest_smmu_us),
        max(|s| s.slowest_us)
    );
    let failed = runs.iter().filter(|r| !r.ok(o.expect_stale)).count();
    let passed = failed == 0 && !runs.is_empty();
    let verdict = match (o.expect_stale, passed) {
        (true, true) => {
            "soak: every run caught the missing invalidation (stale accesses > 0, exit non-zero): OK"
                .to_string()
        }
        (true, false) => format!(
            "soak: {failed} of {} runs did NOT catch the missing invalidation",
            runs.len()
        ),
        (false, true) => "soak: PASS".to_string(),
        (false, false) => format!(
            "soak: {failed} of {} runs FAILED (logs in {}/{}-*.log)",
            runs.len(),
            o.log_dir.display(),
            o.log_prefix
        ),
    };
    let _ = writeln!(out, "{verdict}");
    (out, passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = "# soak cpus=4 seed=1 rounds=2 operations=5246 dmas=36 faults_expected=12 \
        faults_seen=12 stale=0 notifier_inserts=870 notifier_removes=870 \
        notifier_invalidations=2595 slowest_ticks=1012118642 slowest_us=1012118 \
        slowest_smmu_us=12776 elapsed_ms=8274 injected=4 survived=4 result=PASS";
    const STALE: &str = "# soak cpus=4 seed=1 rounds=2 operations=225 dmas=32 faults_expected=13 \
        faults_seen=0 stale=592 notifier_inserts=33 notifier_removes=33 notifier_invalidations=86 \
        slowest_ticks=5242493 slowest_us=83879 slowest_smmu_us=0 elapsed_ms=408 injected=0 \
        survived=0 result=FAIL";

    fn run(summary: &str, status: i32) -> SoakRun {
        SoakRun {
            board: "virt-smmu".into(),
            seed: 1,
            exit: Exit::Status(status),
            summary: SoakSummary::parse(summary),
        }
    }

    fn options(expect_stale: bool) -> SoakOptions {
        SoakOptions {
            boards: vec!["virt-smmu".into(), "raspi4b".into()],
            seeds: vec![1],
            rounds: 2,
            expect_stale,
            ..Default::default()
        }
    }

    #[test]
    fn parses_the_kernels_summary_line() {
        let s = SoakSummary::parse(CLEAN).unwrap();
        assert_eq!(s.operations, 5246);
        assert_eq!((s.faults_seen, s.faults_expected), (12, 12));
        assert_eq!((s.notifier_inserts, s.notifier_removes), (870, 870));
        assert_eq!((s.slowest_us, s.slowest_smmu_us), (1012118, 12776));
        assert_eq!((s.survived, s.injected), (4, 4));
        assert!(s.passed);
        assert!(!SoakSummary::parse(STALE).unwrap().passed);
    }

    #[test]
    fn rejects_incomplete_or_garbled_summaries() {
        let missing = CLEAN.replace(" stale=0", "");
        assert!(SoakSummary::parse(&missing)
            .unwrap_err()
            .contains("`stale`"));
        let garbled = CLEAN.replace("dmas=36", "dmas=3x6");
        assert!(SoakSummary::parse(&garbled).unwrap_err().contains("dmas"));
        let verdict = CLEAN.replace("result=PASS", "result=MAYBE");
        assert!(SoakSummary::parse(&verdict).is_err());
        assert!(SoakSummary::parse("soak operations=1").is_err());
        assert!(SoakSummary::parse("# soak operations").is_err());
    }

    #[test]
    fn the_last_summary_of_a_console_counts() {
        let console = format!("boot\r\n{STALE}\r\nrebooted\r\n{CLEAN}\r\n# shootdown: exit 0\r\n");
        assert_eq!(
            SoakSummary::last_in(&console),
            Some(SoakSummary::parse(CLEAN))
        );
        assert_eq!(SoakSummary::last_in("no summary here\n"), None);
    }

    #[test]
    fn a_normal_run_passes_only_clean() {
        assert!(run(CLEAN, 0).ok(false));
        assert!(!run(CLEAN, 1).ok(false), "a non-zero exit fails");
        assert!(!run(&CLEAN.replace("stale=0", "stale=1"), 0).ok(false));
        assert!(!run(&CLEAN.replace("result=PASS", "result=FAIL"), 0).ok(false));
        let mut timed_out = run(CLEAN, 0);
        timed_out.exit = Exit::TimedOut;
        assert!(!timed_out.ok(false));
        let mut silent = run(CLEAN, 0);
        silent.summary = Err("no summary".into());
        assert!(!silent.ok(false));
    }

    #[test]
    fn a_must_fail_run_passes_only_if_it_caught_stale_accesses() {
        assert!(run(STALE, 1).ok(true));
        assert!(!run(STALE, 0).ok(true), "exit 0 despite stale accesses");
        assert!(!run(CLEAN, 1).ok(true), "no stale access seen");
        let mut silent = run(STALE, 1);
        silent.summary = Err("no summary".into());
        assert!(!silent.ok(true), "a crash is not a catch");
    }

    #[test]
    fn rows_line_up_with_the_header_and_name_the_log_when_needed() {
        let r = row(&run(CLEAN, 0), 2, "build/logs/soak-virt-smmu-1.log");
        assert_eq!(
            r,
            "virt-smmu       1      2       5246     36         12/12      0           870/870           2595     12776   1012118      4/4 PASS (exit 0)"
        );
        assert_eq!(r.find("PASS"), header().find("result"));
        let mut silent = run(CLEAN, 0);
        silent.summary = Err("no summary".into());
        silent.exit = Exit::TimedOut;
        let r = row(&silent, 2, "build/logs/soak-virt-smmu-1.log");
        assert!(
            r.ends_with("no summary (timed out): see build/logs/soak-virt-smmu-1.log"),
            "{r}"
        );
    }

    #[test]
    fn the_conclusion_totals_the_runs_and_gives_the_verdict() {
        let mut pi = run(CLEAN, 0);
        pi.board = "raspi4b".into();
        let (text, passed) = conclusion(&options(false), &[run(CLEAN, 0), pi], 11);
        assert!(passed);
        assert!(text.starts_with(
            "soak: 2 runs on [virt-smmu raspi4b], seeds [1], 2 rounds per CPU, 11 s\n"
        ));
        assert!(text.contains(
            "operations 10492, DMA transfers 72, faults seen/expected 24/24, stale accesses 0"
        ));
        assert!(text.contains("injected faults 8, survived 8"));
        assert!(text.contains("slowest SMMU invalidation 12776 us"));
        assert!(text.ends_with("soak: PASS\n"));

        let (text, passed) = conclusion(&options(false), &[run(CLEAN, 0), run(STALE, 1)], 1);
        assert!(!passed);
        assert!(text.contains("soak: 1 of 2 runs FAILED (logs in build/logs/soak-*.log)"));

        let (text, passed) = conclusion(&options(true), &[run(STALE, 1), run(STALE, 1)], 1);
        assert!(passed);
        assert!(text.ends_with(
            "every run caught the missing invalidation (stale accesses > 0, exit non-zero): OK\n"
        ));
        let (text, passed) = conclusion(&options(true), &[run(STALE, 1), run(CLEAN, 0)], 1);
        assert!(!passed);
        assert!(text.contains("1 of 2 runs did NOT catch the missing invalidation"));

        assert!(!conclusion(&options(false), &[], 0).1, "no run is no pass");
    }

    #[test]
    fn bootargs_and_log_paths() {
        let mut o = options(false);
        assert_eq!(o.bootargs_for(7), "job=soak seed=7 rounds=2");
        o.bootargs = "  fault=all fault.rate=500 ".into();
        assert_eq!(
            o.bootargs_for(7),
            "job=soak seed=7 rounds=2 fault=all fault.rate=500"
        );
        o.log_prefix = "test-soak".into();
        assert_eq!(
            o.log_path("raspi4b", 3),
            PathBuf::from("build/logs/test-soak-raspi4b-3.log")
        );
    }
}
