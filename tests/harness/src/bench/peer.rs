//! `make bench-peer`: Shootdown and Debian's own Linux side by side on the same QEMU line, each
//! unmap counted by QEMU's trace ([`super::qemu_trace`]).
//!
//! Linux's side is tests/peer/vfio_unmap.c (`VFIO_IOMMU_UNMAP_DMA`), Shootdown's the
//! `peer.unmap` benchmark (`munmap` of a bound address space). Both print, per size:
//!
//! ```text
//!     # bench-window begin|end name=peer.unmap kernel=K smmu=mmio pages=N    (the measured call)
//!     # bench-window begin|end name=peer.after kernel=K smmu=mmio pages=N    (edu reads page 0)
//!     # bench name=peer.unmap kernel=K smmu=mmio pages=N metric=unmap value=... unit=insns
//!     # bench name=peer.unmap kernel=K smmu=mmio pages=N metric=faulted_after value=0|1 unit=bool
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::goals::{goal, Goal};
use super::qemu_trace::{Counts, EVENT_PREFIX};
use super::KernelRun;

pub const LINUX: &str = "linux";
pub const SHOOTDOWN: &str = "shootdown";
/// The sizes the issue asks for (4 KiB pages).
pub const SIZES: [u64; 6] = [1, 16, 512, 4095, 4096, 262_144];

/// One kernel's unmap of one size.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Side {
    /// What QEMU counted in the unmap's window (`None`: no trace or no window).
    pub commands: Option<Counts>,
    /// Instructions of the measured call (the kernel's own counter).
    pub insns: Option<u64>,
    /// Events QEMU's SMMU recorded while edu read page 0 after the unmap.
    pub fault_events: Option<Counts>,
    /// The guest's own view: edu did not get the old data (Linux) / the SMMU reported a
    /// translation fault (Shootdown).
    pub guest_faulted: Option<bool>,
}

/// One size, both kernels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub pages: u64,
    pub linux: Side,
    pub shootdown: Side,
}

impl Row {
    fn side(&self, kernel: &str) -> &Side {
        if kernel == LINUX {
            &self.linux
        } else {
            &self.shootdown
        }
    }
}

fn side(runs: &[KernelRun], kernel: &str, pages: u64) -> Side {
    let p = pages.to_string();
    let key = [("kernel", kernel), ("pages", p.as_str())];
    let mut s = Side::default();
    for run in runs {
        s.insns = s.insns.or(run.value("peer.unmap", &key, "unmap"));
        s.guest_faulted = s.guest_faulted.or(run
            .value("peer.unmap", &key, "faulted_after")
            .map(|v| v == 1));
        if let Some(t) = &run.qemu {
            s.commands = s.commands.or_else(|| {
                t.windows("peer.unmap", &key)
                    .next()
                    .map(|w| w.counts.clone())
            });
            s.fault_events = s.fault_events.or_else(|| {
                t.windows("peer.after", &key)
                    .next()
                    .map(|w| w.counts.clone())
            });
        }
    }
    s
}

/// Every size either kernel measured, in order.
pub fn rows(runs: &[KernelRun]) -> Vec<Row> {
    let sizes: BTreeSet<u64> = runs
        .iter()
        .flat_map(|r| r.samples.iter())
        .filter(|s| s.name == "peer.unmap")
        .filter_map(|s| s.pages())
        .collect();
    sizes
        .into_iter()
        .map(|pages| Row {
            pages,
            linux: side(runs, LINUX, pages),
            shootdown: side(runs, SHOOTDOWN, pages),
        })
        .collect()
}

pub const PEER_COMMANDS: &str = "peer_commands";
pub const PEER_INSNS: &str = "peer_insns";
pub const PEER_FAULTS: &str = "peer_faults";
pub const GOALS: [&str; 3] = [PEER_COMMANDS, PEER_INSNS, PEER_FAULTS];

/// `shootdown <= linux` at every size; a size one kernel lacks is a failed check.
fn compare(rows: &[Row], what: &str, value: impl Fn(&Side) -> Option<u64>) -> Vec<(bool, String)> {
    rows.iter()
        .map(|r| match (value(&r.shootdown), value(&r.linux)) {
            (Some(s), Some(l)) => (
                s <= l,
                format!("{} pages: Shootdown {s} {what}, Linux {l}", r.pages),
            ),
            (s, _) => (
                false,
                format!(
                    "{} pages: {what} not measured on {}",
                    r.pages,
                    if s.is_none() { SHOOTDOWN } else { LINUX }
                ),
            ),
        })
        .collect()
}

/// The issue's sizes that neither kernel measured (each a failed check once anything was).
fn missing_sizes(rows: &[Row]) -> Vec<(bool, String)> {
    if rows.is_empty() {
        return Vec::new();
    }
    SIZES
        .iter()
        .filter(|p| !rows.iter().any(|r| r.pages == **p))
        .map(|p| (false, format!("{p} pages: not measured")))
        .collect()
}

/// The goals of `make bench-peer`: not measured without data, never a silent pass.
pub fn check(runs: &[KernelRun]) -> Vec<Goal> {
    let rows = rows(runs);
    let commands = compare(&rows, "commands", |s| {
        s.commands.as_ref().map(Counts::commands)
    });
    let insns = compare(&rows, "instructions", |s| s.insns);
    let mut faults = Vec::new();
    for r in &rows {
        for kernel in [LINUX, SHOOTDOWN] {
            let s = r.side(kernel);
            let qemu = s
                .fault_events
                .as_ref()
                .map(|c| c.get(&format!("{EVENT_PREFIX}F_TRANSLATION")));
            let ok = qemu.is_some_and(|n| n >= 1) && s.guest_faulted == Some(true);
            faults.push((
                ok,
                format!(
                    "{} pages, {kernel}: QEMU recorded {} F_TRANSLATION, the guest saw {}",
                    r.pages,
                    qemu.map_or("(no window)".into(), |n| n.to_string()),
                    match s.guest_faulted {
                        Some(true) => "a fault",
                        Some(false) => "the old data",
                        None => "nothing (not measured)",
                    }
                ),
            ));
        }
    }
    let missing = missing_sizes(&rows);
    vec![
        goal(
            PEER_COMMANDS,
            "at every size, Shootdown sends no more SMMU commands per unmap than Linux (QEMU's trace)",
            [commands, missing.clone()].concat(),
        ),
        goal(
            PEER_INSNS,
            "at every size, Shootdown's munmap retires no more instructions than Linux's VFIO_IOMMU_UNMAP_DMA",
            [insns, missing.clone()].concat(),
        ),
        goal(
            PEER_FAULTS,
            "after every unmap, edu's read of the unmapped page faults on both kernels (QEMU's trace and the guest)",
            [faults, missing].concat(),
        ),
    ]
}

fn cell_commands(c: &Option<Counts>) -> String {
    c.as_ref().map_or("–".into(), |c| {
        let kinds: Vec<String> =
            c.0.iter()
                .filter(|(k, _)| !k.starts_with(EVENT_PREFIX))
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
        format!("**{}**: {}", c.commands(), kinds.join(" + "))
    })
}

fn cell_fault(s: &Side) -> String {
    let qemu = s
        .fault_events
        .as_ref()
        .map(|c| c.get(&format!("{EVENT_PREFIX}F_TRANSLATION")));
    match (qemu, s.guest_faulted) {
        (None, None) => "–".into(),
        (q, g) => format!(
            "{} ({} F_TRANSLATION)",
            match g {
                Some(true) => "faults",
                Some(false) => "**reads old data**",
                None => "?",
            },
            q.map_or("?".into(), |n| n.to_string())
        ),
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("–".into(), |v| v.to_string())
}

/// The side-by-side table (Markdown), then the goals and what each column includes.
pub fn markdown(runs: &[KernelRun], goals: &[Goal], meta: &[(String, String)]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Shootdown vs Linux on the same QEMU (`make bench-peer`)\n"
    );
    for (k, v) in meta {
        let _ = writeln!(s, "- {k}: `{v}`");
    }
    let _ = writeln!(
        s,
        "\n| pages | SMMU commands per unmap, Linux | Shootdown | instructions per unmap, Linux | Shootdown | edu after the unmap, Linux | Shootdown |\n|---|---|---|---|---|---|---|"
    );
    for r in rows(runs) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.pages,
            cell_commands(&r.linux.commands),
            cell_commands(&r.shootdown.commands),
            opt(r.linux.insns),
            opt(r.shootdown.insns),
            cell_fault(&r.linux),
            cell_fault(&r.shootdown)
        );
    }
    let _ = writeln!(s, "\n| goal | verdict | checks |\n|---|---|---|");
    for g in goals {
        let failing = g.checks.iter().filter(|c| c.starts_with("FAIL")).count();
        let _ =
            writeln!(
                s,
                "| {} | **{}** | {} checks, {failing} failing{} |",
                g.description,
                g.verdict.as_str(),
                g.checks.len(),
                g.checks.first().filter(|c| c.starts_with("FAIL")).map_or(
                    String::new(),
                    |c| format!(": {}", c.trim_start_matches("FAIL "))
                )
            );
    }
    s.push_str(EXPLAINED);
    s
}

const EXPLAINED: &str = "
Commands: counted by QEMU's SMMUv3 (`-trace smmuv3_cmdq_opcode`, ranges told apart by
`smmuv3_range_inval`'s TG) between console markers each kernel prints around the measured call.
Instructions: the PMU's retired-instruction counter under `-icount shift=0`. Linux:
`VFIO_IOMMU_UNMAP_DMA` from the ioctl's entry to its return, user and kernel (perf_event_open,
the enable/disable overhead subtracted): finding the mapping, clearing the IO page table,
the SMMU commands and the wait for CMD_SYNC, unpinning and accounting the pages; the process's
own CPU mapping of the memory stays. Shootdown: `munmap` of an address space bound to the device
and active on the CPU: the CPU page tables, the CPU TLB invalidation, the notifier, the SMMU
commands and the wait for CMD_SYNC; the frames are the benchmark's (aliased), nothing is freed.
edu after the unmap: edu reads the first unmapped page; QEMU's SMMU records an F_TRANSLATION
event, and the guest sees a fault (Linux: edu delivered zeros, not the page's data; Shootdown:
the SMMU's event queue).
";

/// The machine-readable table.
pub fn json(runs: &[KernelRun], goals: &[Goal], meta: &[(String, String)]) -> Value {
    let side = |s: &Side| {
        json!({
            "commands": s.commands.as_ref().map(Counts::commands),
            "commands_by_kind": s.commands.as_ref().map(|c| c.0.clone()),
            "insns": s.insns,
            "after_unmap_events": s.fault_events.as_ref().map(|c| c.0.clone()),
            "guest_faulted": s.guest_faulted,
        })
    };
    json!({
        "schema": "shootdown-bench-peer/1",
        "command": "make bench-peer",
        "meta": meta.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
        "rows": rows(runs).iter().map(|r| json!({
            "pages": r.pages, "linux": side(&r.linux), "shootdown": side(&r.shootdown),
        })).collect::<Vec<_>>(),
        "goals": goals.iter().map(|g| json!({
            "id": g.id, "description": g.description, "verdict": g.verdict.as_str(), "checks": g.checks,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::goals::Verdict;

    /// A kernel's console (result lines and markers) and QEMU's trace of it, for `sizes`, each
    /// unmap taking `commands` (kind, count) and `insns`, the read after it faulting or not.
    /// One size: (pages, commands by kind, instructions, the read after it faulted).
    type Unmap = (u64, &'static [(&'static str, u64)], u64, bool);

    fn boot(kernel: &str, rows: &[Unmap]) -> KernelRun {
        let (mut log, mut trace) = (String::new(), String::new());
        let say = |line: String, trace: &mut String, log: &mut String| {
            for b in line.bytes().chain([b'\n']) {
                trace.push_str(&format!("pl011_write addr 0x000 value 0x{b:08x} reg DR\n"));
            }
            log.push_str(&line);
            log.push('\n');
        };
        for line in [
            "KTAP version 1",
            "1..1",
            "# bench-counter unit=insns source=x",
        ] {
            say(line.into(), &mut trace, &mut log);
        }
        for &(pages, commands, insns, faults) in rows {
            let key = format!("kernel={kernel} smmu=mmio pages={pages}");
            say(
                format!("# bench-window begin name=peer.unmap {key}"),
                &mut trace,
                &mut log,
            );
            for (kind, n) in commands {
                for _ in 0..*n {
                    let (opcode, tg) = match *kind {
                        "tlbi_va_range" => ("TLBI_NH_VA", 1),
                        "tlbi_va" => ("TLBI_NH_VA", 0),
                        "sync" => ("SYNC", 0),
                        other => (other, 0),
                    };
                    trace.push_str(&format!("smmuv3_cmdq_opcode <--- SMMU_CMD_{opcode}\n"));
                    if opcode == "TLBI_NH_VA" {
                        trace.push_str(&format!(
                            "smmuv3_range_inval vmid=0 asid=1 addr=0x0 tg={tg} num_pages=0x1\n"
                        ));
                    }
                }
            }
            say(
                format!("# bench-window end name=peer.unmap {key}"),
                &mut trace,
                &mut log,
            );
            say(
                format!("# bench-window begin name=peer.after {key}"),
                &mut trace,
                &mut log,
            );
            if faults {
                trace.push_str("smmuv3_record_event SMMU_EVT_F_TRANSLATION sid=0x10\n");
            }
            say(
                format!("# bench-window end name=peer.after {key}"),
                &mut trace,
                &mut log,
            );
            say(
                format!("# bench name=peer.unmap {key} metric=unmap value={insns} unit=insns"),
                &mut trace,
                &mut log,
            );
            say(
                format!(
                    "# bench name=peer.unmap {key} metric=faulted_after value={} unit=bool",
                    u8::from(faults)
                ),
                &mut trace,
                &mut log,
            );
        }
        log.push_str("ok 1 peer\n");
        KernelRun::parse(kernel, &log)
            .unwrap()
            .with_qemu_trace(&log, &trace)
            .unwrap()
    }

    const RANGE: &[(&str, u64)] = &[("tlbi_va_range", 1), ("sync", 1)];
    const BATCHED: &[(&str, u64)] = &[("tlbi_va_range", 3), ("sync", 3)];

    fn all_sizes(commands: &'static [(&'static str, u64)], insns: u64, faults: bool) -> Vec<Unmap> {
        SIZES
            .iter()
            .map(|&p| (p, commands, insns, faults))
            .collect()
    }

    fn verdicts(runs: &[KernelRun]) -> Vec<(&'static str, Verdict)> {
        check(runs).iter().map(|g| (g.id, g.verdict)).collect()
    }

    #[test]
    fn shootdown_at_or_below_linux_everywhere_passes() {
        let runs = [
            boot(LINUX, &all_sizes(BATCHED, 5000, true)),
            boot(SHOOTDOWN, &all_sizes(RANGE, 5000, true)),
        ];
        assert_eq!(
            verdicts(&runs),
            [
                (PEER_COMMANDS, Verdict::Pass),
                (PEER_INSNS, Verdict::Pass),
                (PEER_FAULTS, Verdict::Pass)
            ]
        );
        let md = markdown(&runs, &check(&runs), &[("commit".into(), "abc".into())]);
        assert!(md.contains("| 4095 | **6**: 3 sync + 3 tlbi_va_range | **2**: 1 sync + 1 tlbi_va_range | 5000 | 5000 | faults (1 F_TRANSLATION) | faults (1 F_TRANSLATION) |"), "{md}");
        assert!(md.contains("- commit: `abc`"));
    }

    #[test]
    fn more_commands_more_instructions_or_a_read_through_fail() {
        let linux = boot(LINUX, &all_sizes(RANGE, 5000, true));
        let shootdown = boot(SHOOTDOWN, &all_sizes(BATCHED, 5001, false));
        assert_eq!(
            verdicts(&[linux, shootdown]),
            [
                (PEER_COMMANDS, Verdict::Fail),
                (PEER_INSNS, Verdict::Fail),
                (PEER_FAULTS, Verdict::Fail)
            ]
        );
    }

    #[test]
    fn one_side_or_a_size_missing_is_never_a_pass() {
        assert!(verdicts(&[])
            .iter()
            .all(|(_, v)| *v == Verdict::NotMeasured));
        let only_linux = [boot(LINUX, &all_sizes(RANGE, 1, true))];
        assert!(verdicts(&only_linux)
            .iter()
            .all(|(_, v)| *v == Verdict::Fail));
        let few = |k| boot(k, &[(1, RANGE, 1, true)]);
        let goals = check(&[few(LINUX), few(SHOOTDOWN)]);
        assert!(
            goals.iter().all(|g| g.verdict == Verdict::Fail),
            "{goals:?}"
        );
        assert!(goals[0]
            .checks
            .iter()
            .any(|c| c.contains("262144 pages: not measured")));
    }
}
