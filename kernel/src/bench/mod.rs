//! In-kernel benchmarks: `bench=<glob>[,<glob>...]` runs them instead of the main job (and
//! instead of `ktest=`: one KTAP document per boot) and the kernel exits.
//!
//! They are meant for QEMU with `-icount shift=0`, where guest instructions are counted
//! exactly and every run of the same image with the same arguments gives the same numbers up
//! to a few instructions of the idle vCPUs (`make bench`; see [`pmu`]). The counter is the PMU's INST_RETIRED event, or the generic timer where
//! that event does not exist (see [`pmu`]); every result line names its unit.
//!
//! The cases run like tests (the same registry type and runner, so the output is KTAP and a
//! benchmark that cannot measure what it should fails), and each measurement is one line:
//!
//! ```text
//!     # bench name=smmu.unmap smmu=mmio strategy=range pages=512 metric=commands value=2 unit=commands
//! ```
//!
//! `name` is the case, then its parameters, then `metric`, `value` and `unit` (always last).
//! `tests/harness/src/bench/` (`harness bench-report`) reads these lines.
//!
//! | argument | meaning |
//! |---|---|
//! | `bench=<glob>` | run the benchmarks whose `suite.case` (or suite) matches; `bench=peer.*` runs the opt-in `peer.unmap` instead |
//! | `bench.pages=<n>[,<n>...]` | the region sizes (4 KiB pages) to measure instead of each benchmark's own list |
#![forbid(unsafe_code)]

mod mm;
mod smmu;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::aarch64::pmu::{self, Measurement};
use crate::board::bootargs;
use crate::ktest::{KTest, TestCtx, TestError, TestResult};

/// Every benchmark, in the order they run.
static BENCHES: [KTest; 6] = [
    KTest {
        suite: "boot",
        name: "to_first_bench",
        run: boot_to_first_bench,
    },
    KTest {
        suite: "mm",
        name: "map_unmap",
        run: mm::map_unmap,
    },
    KTest {
        suite: "smmu",
        name: "unmap",
        run: smmu::unmap,
    },
    KTest {
        suite: "smmu",
        name: "shared_sync",
        run: smmu::shared_sync,
    },
    KTest {
        suite: "smmu",
        name: "iotlb_hit_rate",
        run: smmu::iotlb_hit_rate,
    },
    KTest {
        suite: "smmu",
        name: "free_cover",
        run: smmu::free_cover,
    },
];

/// Benchmarks that run only when the filter names their suite (`bench=peer.*`, `make
/// bench-peer`), never under `bench=*`: each device read of `peer.unmap` polls 100 ms of
/// QEMU's virtual clock, minutes of emulation that `make bench` and its smoke need not spend.
static OPT_IN: [KTest; 1] = [KTest {
    suite: "peer",
    name: "unmap",
    run: smmu::peer,
}];

/// The counter when the runner started (boot cost).
static AT_START: AtomicU64 = AtomicU64::new(0);

/// Runs the benchmarks `filter` selects; returns how many failed.
pub fn run(filter: &str, seed: u64) -> Result<usize, crate::ktest::runner::NothingSelected> {
    let names_opt_in = filter.split(',').any(|g| g.trim().starts_with(OPT_IN[0].suite));
    let set: &'static [KTest] = if names_opt_in { &OPT_IN } else { &BENCHES };
    // Checked against the set that runs: `bench=peer.*` selects none of BENCHES.
    crate::ktest::runner::select(set, "bench", filter)?;
    AT_START.store(pmu::read(), Ordering::Relaxed);
    let unit = pmu::kind().unit();
    match pmu::kind() {
        pmu::CounterKind::Instructions => crate::println!(
            "# bench-counter unit={unit} source=pmu-inst-retired width={}",
            if pmu::is_wide() { 64 } else { 32 }
        ),
        pmu::CounterKind::Ticks => crate::println!(
            "# bench-counter unit={unit} source=cntpct frequency={} (no PMU INST_RETIRED: run QEMU with -icount shift=0)",
            crate::arch::aarch64::timer::frequency()
        ),
    }
    crate::ktest::runner::run_cases(set, "bench", filter, seed)
}

/// Instructions (or ticks) from the first Rust instruction of the boot CPU to the start of the
/// benchmark runner: device tree, page tables, frames, secondary CPUs, SMMU probe, banner.
fn boot_to_first_bench(_t: &mut TestCtx) -> TestResult {
    let count = AT_START.load(Ordering::Relaxed);
    if count == 0 {
        return Err(TestError::Fail(
            "the counter did not run during boot".into(),
        ));
    }
    Record::new("boot.to_first_bench").emit("boot", count);
    Ok(())
}

/// The sizes (in pages) to measure: `bench.pages=` if given, else `default`.
pub(crate) fn sizes(default: &[u64]) -> Result<Vec<u64>, TestError> {
    Ok(bootargs()
        .bench_pages
        .clone()
        .unwrap_or_else(|| default.to_vec()))
}

/// Counts what `f` executes.
pub(crate) fn measure<R>(f: impl FnOnce() -> R) -> Result<(R, u64), TestError> {
    let m = Measurement::begin();
    let r = f();
    let n = m
        .end()
        .map_err(|e| TestError::Fail(alloc::format!("{e}")))?;
    Ok((r, n))
}

/// A result line under construction: the case and its parameters.
pub(crate) struct Record {
    line: String,
}

impl Record {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            line: alloc::format!("    # bench name={name}"),
        }
    }

    /// Adds a parameter (`key=value`, no spaces in either).
    pub(crate) fn with(mut self, key: &str, value: impl core::fmt::Display) -> Self {
        let _ = write!(self.line, " {key}={value}");
        self
    }

    /// Runs `f` between two console markers naming this record's case and parameters
    /// (`# bench-window begin|end name=...`). QEMU's trace holds both the console and the SMMU
    /// commands in execution order, so the markers let `harness bench-report` count what
    /// QEMU saw during `f` alone (tests/harness/src/bench/qemu_trace.rs). The console is
    /// polled, so `begin` is on the UART before `f` starts.
    pub(crate) fn window<R>(&self, f: impl FnOnce() -> R) -> R {
        let key = self.line.trim_start().trim_start_matches("# bench ");
        crate::println!("    # bench-window begin {key}");
        let r = f();
        crate::println!("    # bench-window end {key}");
        r
    }

    /// Prints the line for `metric` counted by the benchmark counter.
    pub(crate) fn emit(&self, metric: &str, value: u64) {
        self.emit_unit(metric, value, pmu::kind().unit());
    }

    /// Prints the line for `metric` with its own unit (commands, writes, per mille ...).
    pub(crate) fn emit_unit(&self, metric: &str, value: impl core::fmt::Display, unit: &str) {
        crate::println!("{} metric={metric} value={value} unit={unit}", self.line);
    }
}

/// A benchmark precondition failed.
pub(crate) fn fail(e: impl core::fmt::Display) -> TestError {
    TestError::Fail(alloc::format!("{e}"))
}
