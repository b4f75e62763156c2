//! Kernel boot arguments (`/chosen/bootargs`, i.e. QEMU's `-append`): space-separated
//! `key=value` pairs or bare flags.
//!
//! | argument | meaning |
//! |---|---|
//! | `ktest=<glob>[,<glob>...]` | run the in-kernel tests whose `suite.case` (or suite) matches |
//! | `seed=<n>` | seed for randomized tests and workloads (printed, so a run can be replayed) |
//! | `log=<level>` | console log level: `error`, `warn`, `info`, `debug`, `trace` |
//! | `trace=1` | record events in per-CPU rings and print them at exit (`make run TRACE=out.json`) |
//! | `ktest.fail=1` | the `ktest.selftest_fail` case fails on purpose (proves the harness catches it) |
//! | `ktest.crash=1` | the `ktest.selftest_crash` case takes an unexpected exception on purpose (`=stack`: a stack overflow) |
//! | `edu.dma_mask=<n>` | the DMA mask QEMU's `edu` was given (its `dma_mask` property) |
//! | `smmu.strategy=per-page\|range\|asid\|auto` | SMMU invalidation strategy (`strategy=` also works; default `auto`) |
//! | `smmu.skip_invalidate=1` | **debug only**: SVA invalidations are not sent to the SMMU (the SVA tests must then fail) |
//! | `smmu.eventq_log2=<n>` | **debug only**: at most 2^n SMMU event-queue entries (a small queue loses a faulting page's events) |
//! | `sva.smp_rounds=<n>` | multiplies the transfers of `sva.smp_unmaps_on_every_cpu_while_dma_runs` (soak) |
//! | `job=soak` | run the soak (every CPU at once) instead of the coherence workload; `rounds=` per CPU |
//! | `fault=<kind>[,<kind>…]` or `fault=all` | soak fault injection: `alloc`, `notifier`, `sync`, `cmdq`, `evtq`, `teardown` (see `crate::workload::fault`) |
//! | `fault.seed=<n>`, `fault.rate=<‰>` | the fault dice's seed, and the chance per round (per mille, default 125) |

use alloc::string::String;
use alloc::vec::Vec;

/// Parsed boot arguments (the raw string stays available for anything not parsed here).
#[derive(Debug, Clone, Default)]
pub struct BootArgs {
    args: Vec<(String, Option<String>)>,
}

impl BootArgs {
    /// Splits `cmdline` into arguments. Never fails: unknown arguments are kept and ignored.
    pub fn parse(cmdline: &str) -> Self {
        let args = cmdline
            .split_ascii_whitespace()
            .map(|a| match a.split_once('=') {
                Some((k, v)) => (String::from(k), Some(String::from(v))),
                None => (String::from(a), None),
            })
            .collect();
        Self { args }
    }

    /// The value of the last `key=value` for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// True if `key` is present (as a flag or with any value other than `0`/`off`/`false`).
    pub fn flag(&self, key: &str) -> bool {
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .is_some_and(|(_, v)| !matches!(v.as_deref(), Some("0" | "off" | "false" | "no")))
    }

    /// `key` parsed as a number (decimal, or hex with `0x`).
    pub fn number(&self, key: &str) -> Option<Result<u64, String>> {
        let v = self.get(key)?;
        let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => v.parse::<u64>(),
        };
        Some(parsed.map_err(|_| alloc::format!("{key}={v} is not a number")))
    }

    /// The console's log level from `log=` (`error`, `warn`, `debug`, `trace`, `off`; else info).
    pub fn log_level(&self) -> log::LevelFilter {
        match self.get("log") {
            Some("error") => log::LevelFilter::Error,
            Some("warn") => log::LevelFilter::Warn,
            Some("debug") => log::LevelFilter::Debug,
            Some("trace") => log::LevelFilter::Trace,
            Some("off") => log::LevelFilter::Off,
            _ => log::LevelFilter::Info,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags_values_and_numbers() {
        let a =
            BootArgs::parse("  ktest=mm.*,boot seed=0x2a log=debug quiet ktest.fail=0 rounds=12x ");
        assert_eq!(a.get("ktest"), Some("mm.*,boot"));
        assert_eq!(a.number("seed"), Some(Ok(42)));
        assert!(a.flag("quiet"));
        assert!(!a.flag("ktest.fail"));
        assert!(!a.flag("absent"));
        assert!(a.number("rounds").unwrap().is_err());
        assert_eq!(a.number("absent"), None);
    }

    #[test]
    fn last_occurrence_wins() {
        let a = BootArgs::parse("seed=1 seed=2");
        assert_eq!(a.number("seed"), Some(Ok(2)));
    }
}
