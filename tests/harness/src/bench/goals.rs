//! The performance goals of issues 7 and 16, checked on measured results. A goal whose data is
//! missing is reported as not measured, never as passed.

use super::qemu_trace::{QemuTrace, Window};
use super::{host, HostResult, KernelRun, Sample};

/// The outcome of one goal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// None of the measurements the goal needs were found.
    NotMeasured,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "FAIL",
            Self::NotMeasured => "not measured",
        }
    }
}

/// One goal and the checks behind its verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    pub id: &'static str,
    pub description: &'static str,
    pub verdict: Verdict,
    /// One line per check made (`ok`/`FAIL` and the numbers), failing ones first.
    pub checks: Vec<String>,
}

/// The goal ids, in report order.
pub const RIL_RANGE_COMMANDS: &str = "ril_range_commands";
pub const NO_ASID_BELOW_512: &str = "no_asid_below_512";
pub const INTERVAL_100X: &str = "interval_100x";
pub const EMPTY_DISPATCH_2X: &str = "empty_dispatch_2x";
pub const SHARED_SYNC: &str = "shared_sync";
pub const QEMU_COUNTS: &str = "qemu_counts";
pub const PER_PAGE_100: &str = "per_page_100";
pub const FREE_COVER: &str = "free_cover";
/// `make bench`'s goals (`--require all`); `make bench-peer`'s are [`super::peer::GOALS`].
pub const ALL: [&str; 8] = [
    RIL_RANGE_COMMANDS,
    NO_ASID_BELOW_512,
    QEMU_COUNTS,
    INTERVAL_100X,
    EMPTY_DISPATCH_2X,
    SHARED_SYNC,
    PER_PAGE_100,
    FREE_COVER,
];
/// The goals that are exact command counts (no timing): the `make test` smoke checks these.
pub const COMMAND_GOALS: [&str; 4] = [
    RIL_RANGE_COMMANDS,
    NO_ASID_BELOW_512,
    QEMU_COUNTS,
    FREE_COVER,
];
/// The command kinds the kernel counts per unmap (its metric names; QEMU's trace uses them too).
const KERNEL_KINDS: [&str; 4] = ["tlbi_va", "tlbi_va_range", "tlbi_asid", "sync"];

/// Issue 16: instructions per page of `mmap` and `munmap` at [`PER_PAGE_PAGES`] 4 KiB pages.
const PER_PAGE_MAX_INSNS: u64 = 100;
const PER_PAGE_PAGES: u64 = 262_144;

/// Linux's threshold (`CMDQ_MAX_TLBI_OPS` for 4 KiB pages).
const ASID_THRESHOLD_PAGES: u64 = 512;

pub(super) fn goal(
    id: &'static str,
    description: &'static str,
    checks: Vec<(bool, String)>,
) -> Goal {
    let verdict = if checks.is_empty() {
        Verdict::NotMeasured
    } else if checks.iter().all(|(ok, _)| *ok) {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    let mut lines: Vec<_> = checks.into_iter().collect();
    lines.sort_by_key(|(ok, _)| *ok);
    Goal {
        id,
        description,
        verdict,
        checks: lines
            .into_iter()
            .map(|(ok, s)| format!("{} {s}", if ok { "ok  " } else { "FAIL" }))
            .collect(),
    }
}

/// ⌈log2 n⌉ for n ≥ 1.
pub fn ceil_log2(n: u64) -> u32 {
    if n <= 1 {
        0
    } else {
        64 - (n - 1).leading_zeros()
    }
}

/// Checks every goal on what was measured.
pub fn check(kernel: &[KernelRun], host_results: &[HostResult]) -> Vec<Goal> {
    let mut goals = vec![
        ril_range_commands(kernel),
        no_asid_below_512(kernel),
        qemu_counts(kernel),
        interval_100x(host_results),
        empty_dispatch_2x(host_results),
        shared_sync(kernel),
        per_page_100(kernel),
        free_cover(kernel),
    ];
    goals.extend(super::peer::check(kernel));
    goals
}

/// Every unmap the kernel counted on QEMU's SMMU (`smmu=mmio`) against what QEMU's trace saw in
/// its window, kind by kind. A key measured twice (`bench.pages=16,16`) has two windows: the
/// n-th count of a key goes with the n-th window of that key. A count without its window fails,
/// so does a window without its count, and a command QEMU saw in a window of a software model's
/// unmap (those never reach QEMU). Model windows alone are no evidence: if no unmap on QEMU's
/// SMMU was compared, only their failures count.
fn qemu_counts(kernel: &[KernelRun]) -> Goal {
    let mut checks = Vec::new();
    let mut model_checks = Vec::new();
    for run in kernel {
        let Some(trace) = &run.qemu else {
            continue;
        };
        let counted: Vec<&Sample> = run
            .samples
            .iter()
            .filter(|s| {
                s.metric == "commands"
                    && s.param("smmu") == Some("mmio")
                    && s.param("strategy") != Some("floor")
            })
            .collect();
        for (i, s) in counted.iter().enumerate() {
            let nth = counted[..i].iter().filter(|c| same_key(c, s)).count();
            checks.push(compare_window(run, trace, s, nth));
        }
        checks.extend(uncounted_windows(run, trace, &counted));
        for w in trace
            .windows
            .iter()
            .filter(|w| w.param("smmu").is_some_and(|s| s != "mmio"))
        {
            model_checks.push((
                w.counts.commands() == 0,
                format!(
                    "{} {} on {}: QEMU saw {} (a model's commands never reach QEMU)",
                    run.board,
                    w.name,
                    w.param("smmu").unwrap_or(""),
                    w.counts
                ),
            ));
        }
    }
    let compared = !checks.is_empty();
    checks.extend(model_checks.into_iter().filter(|(ok, _)| compared || !ok));
    goal(
        QEMU_COUNTS,
        "QEMU's trace counts the same SMMU commands, kind by kind, as the kernel in every measured unmap on QEMU's SMMU",
        checks,
    )
}

fn same_key(a: &Sample, b: &Sample) -> bool {
    a.name == b.name && a.params == b.params
}

/// The windows with `s`'s key, in boot order.
fn windows_of<'a>(trace: &'a QemuTrace, s: &'a Sample) -> impl Iterator<Item = &'a Window> + 'a {
    trace
        .windows
        .iter()
        .filter(|w| w.name == s.name && w.params == s.params)
}

/// `board name k=v ...`, for a check's message.
fn at(run: &KernelRun, s: &Sample) -> String {
    let key: Vec<String> = s.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{} {} {}", run.board, s.name, key.join(" "))
}

/// The `nth` count of `total`'s key against the `nth` window with that key, kind by kind.
fn compare_window(
    run: &KernelRun,
    trace: &QemuTrace,
    total: &Sample,
    nth: usize,
) -> (bool, String) {
    let Some(w) = windows_of(trace, total).nth(nth) else {
        return (
            false,
            format!(
                "{}: counted by the kernel (measurement {}), no window in QEMU's trace",
                at(run, total),
                nth + 1
            ),
        );
    };
    let mine: Vec<(&str, Option<u64>)> = KERNEL_KINDS
        .iter()
        .map(|k| {
            let value = run
                .samples
                .iter()
                .filter(|s| s.metric == *k && same_key(s, total))
                .nth(nth)
                .map(|s| s.value);
            (*k, value)
        })
        .collect();
    let same =
        mine.iter().all(|(k, n)| *n == Some(w.counts.get(k))) && w.counts.commands() == total.value;
    let kernel_says: Vec<String> = mine
        .iter()
        .map(|(k, n)| format!("{} {k}", n.map_or("?".into(), |n| n.to_string())))
        .collect();
    (
        same,
        format!(
            "{}: QEMU {} / kernel {} ({} total)",
            at(run, total),
            w.counts,
            kernel_says.join(", "),
            total.value
        ),
    )
}

/// A failed check for each counted key with more windows than counts: what QEMU saw in the
/// extra window is compared with nothing.
fn uncounted_windows(
    run: &KernelRun,
    trace: &QemuTrace,
    counted: &[&Sample],
) -> Vec<(bool, String)> {
    let mut checks = Vec::new();
    for (i, s) in counted.iter().enumerate() {
        if counted[..i].iter().any(|c| same_key(c, s)) {
            continue;
        }
        let counts = counted.iter().filter(|c| same_key(c, s)).count();
        let windows = windows_of(trace, s).count();
        if windows > counts {
            checks.push((
                false,
                format!(
                    "{}: {windows} windows in QEMU's trace, {counts} counted by the kernel",
                    at(run, s)
                ),
            ));
        }
    }
    checks
}

/// The SMMUs (`smmu=` labels) of a run that implement range invalidation.
fn ril_smmus(run: &KernelRun) -> Vec<&str> {
    run.all("smmu.features", "range_invalidation")
        .filter(|s| s.value == 1)
        .filter_map(|s| s.param("smmu"))
        .collect()
}

/// Commands of kind `metric` of one unmap.
fn commands(run: &KernelRun, smmu: &str, strategy: &str, pages: &str, metric: &str) -> Option<u64> {
    run.value(
        "smmu.unmap",
        &[("smmu", smmu), ("strategy", strategy), ("pages", pages)],
        metric,
    )
}

fn ril_range_commands(kernel: &[KernelRun]) -> Goal {
    let mut checks = Vec::new();
    for run in kernel {
        for smmu in ril_smmus(run) {
            for s in run.all("smmu.unmap", "tlbi_va_range") {
                let strategy = s.param("strategy").unwrap_or("");
                if s.param("smmu") != Some(smmu) || !["range", "auto"].contains(&strategy) {
                    continue;
                }
                let (Some(pages), Some(p)) = (s.pages(), s.param("pages")) else {
                    continue;
                };
                let get = |m| commands(run, smmu, strategy, p, m);
                let (Some(sync), Some(total)) = (get("sync"), get("commands")) else {
                    checks.push((
                        false,
                        format!("{}/{smmu}/{strategy}/{pages}: counts missing", run.board),
                    ));
                    continue;
                };
                let bound = u64::from(ceil_log2(pages)) + 1;
                let ok = s.value <= bound && sync == 1 && total == s.value + 1;
                checks.push((
                    ok,
                    format!(
                        "{}/{smmu}/{strategy} {pages} pages: {} range + {sync} CMD_SYNC of {total} commands (bound {bound} + 1)",
                        run.board, s.value
                    ),
                ));
            }
        }
    }
    goal(
        RIL_RANGE_COMMANDS,
        "with RIL (strategies range and auto): at most ceil(log2(pages))+1 range commands and exactly one CMD_SYNC per unmap, nothing else",
        checks,
    )
}

fn no_asid_below_512(kernel: &[KernelRun]) -> Goal {
    let mut checks = Vec::new();
    for run in kernel {
        for s in run.all("smmu.unmap", "tlbi_asid") {
            let strategy = s.param("strategy").unwrap_or("");
            let smmu = s.param("smmu").unwrap_or("");
            match s.pages() {
                // `asid` is the ASID-wide strategy by definition.
                Some(pages) if pages < ASID_THRESHOLD_PAGES && strategy != "asid" => {
                    checks.push((
                        s.value == 0,
                        format!(
                            "{}/{smmu}/{strategy} {pages} pages: {} TLBI_NH_ASID",
                            run.board, s.value
                        ),
                    ));
                }
                _ => {}
            }
        }
    }
    goal(
        NO_ASID_BELOW_512,
        "never an ASID-wide invalidation for an unmap under 512 pages (every strategy but `asid`, with and without RIL)",
        checks,
    )
}

/// One `smmu.shared_sync` case: (invalidations, CMD_SYNCs, instructions per invalidation).
fn shared_case(run: &KernelRun, smmu: &str, cpus: &str, sharing: &str) -> Option<(u64, u64, u64)> {
    let get = |m| {
        run.value(
            "smmu.shared_sync",
            &[("smmu", smmu), ("cpus", cpus), ("sharing", sharing)],
            m,
        )
    };
    Some((get("invalidations")?, get("syncs")?, get("insns_per_invalidation")?))
}

/// Issue 16: with 4 CPUs invalidating at once at most 0.5 CMD_SYNC per invalidation, exactly 1
/// on one CPU, and no more instructions per invalidation than each CPU its own CMD_SYNC.
fn shared_sync(kernel: &[KernelRun]) -> Goal {
    let mut checks = Vec::new();
    for run in kernel {
        let mut smmus: Vec<&str> = run
            .all("smmu.shared_sync", "syncs")
            .filter_map(|s| s.param("smmu"))
            .collect();
        smmus.dedup();
        for smmu in smmus {
            let at = |cpus, sharing| shared_case(run, smmu, cpus, sharing);
            let name = format!("{}/{smmu}", run.board);
            match at("1", "on") {
                Some((n, syncs, _)) => checks.push((
                    syncs == n,
                    format!("{name} 1 CPU: {syncs} CMD_SYNCs for {n} invalidations (goal: one each)"),
                )),
                None => checks.push((false, format!("{name} 1 CPU: not measured"))),
            }
            match (at("4", "on"), at("4", "off")) {
                (Some((n, syncs, on)), Some((_, _, off))) => {
                    checks.push((
                        2 * syncs <= n,
                        format!(
                            "{name} 4 CPUs: {syncs} CMD_SYNCs for {n} invalidations, {:.2} each (goal ≤ 0.5)",
                            syncs as f64 / n as f64
                        ),
                    ));
                    checks.push((
                        on <= off,
                        format!(
                            "{name} 4 CPUs: {on} instructions per invalidation sharing, {off} each its own CMD_SYNC (goal: not more)"
                        ),
                    ));
                }
                _ => checks.push((false, format!("{name} 4 CPUs: not measured (needs 4 CPUs, sharing on and off)"))),
            }
        }
    }
    goal(
        SHARED_SYNC,
        "CMD_SYNC sharing: with 4 CPUs invalidating at once at most 0.5 CMD_SYNC per invalidation, exactly 1 on one CPU, and no more instructions per invalidation than one CMD_SYNC each",
        checks,
    )
}

/// Issue 16: `mm.map_unmap` with 4 KiB leaves only (`layout=pages`) at 262144 pages, on every
/// board that ran it: at most 100 instructions per page for the `mmap`s and for the `munmap`.
/// A board that ran the case at that size but lost a metric, or counted timer ticks instead of
/// instructions, fails; boards that did not run that size are not evidence either way.
fn per_page_100(kernel: &[KernelRun]) -> Goal {
    let mut checks = Vec::new();
    let pages = PER_PAGE_PAGES.to_string();
    let key = [("layout", "pages"), ("pages", pages.as_str())];
    for run in kernel {
        let ran = ["map", "unmap"]
            .iter()
            .any(|m| run.value("mm.map_unmap", &key, m).is_some());
        if !ran {
            continue;
        }
        for metric in ["map", "unmap"] {
            let name = format!("{} {metric} of {PER_PAGE_PAGES} pages", run.board);
            match run.value("mm.map_unmap", &key, metric) {
                None => checks.push((false, format!("{name}: missing"))),
                Some(_) if !run.counts_instructions() => checks.push((
                    false,
                    format!("{name}: counted timer ticks, not instructions"),
                )),
                Some(insns) => {
                    let per_page = insns as f64 / PER_PAGE_PAGES as f64;
                    checks.push((
                        insns <= PER_PAGE_MAX_INSNS * PER_PAGE_PAGES,
                        format!(
                            "{name}: {insns} instructions, {per_page:.1} per page (goal ≤ {PER_PAGE_MAX_INSNS})"
                        ),
                    ));
                }
            }
        }
    }
    goal(
        PER_PAGE_100,
        "mmap and munmap of 262144 4 KiB pages (mm.map_unmap, layout pages): at most 100 instructions per page each",
        checks,
    )
}

/// One `smmu.free_cover` case: its commands by kind ([`KERNEL_KINDS`]) and in total.
fn cover_counts(run: &KernelRun, smmu: &str, neighbours: &str, cover: &str) -> Option<Vec<u64>> {
    let key = [("smmu", smmu), ("neighbours", neighbours), ("cover", cover)];
    KERNEL_KINDS
        .iter()
        .chain(&["commands"])
        .map(|m| run.value("smmu.free_cover", &key, m))
        .collect()
}

/// Issue 16 part 3: on every SMMU that ran `smmu.free_cover`, the range with unmapped
/// neighbours and the cover on is 1 range command + 1 CMD_SYNC, nothing else; with mapped
/// neighbours the cover changes nothing (the exact encoding: the commands with the cover off,
/// which must take more than one range command, whatever the neighbours); and the mapped
/// neighbours' IOTLB hit rate on the model is 1000 ‰. A run without any hit rate fails: the
/// check that the cover drops nothing live was not made.
fn free_cover(kernel: &[KernelRun]) -> Goal {
    let mut checks = Vec::new();
    for run in kernel {
        let mut smmus: Vec<&str> = run
            .all("smmu.free_cover", "commands")
            .filter_map(|s| s.param("smmu"))
            .collect();
        smmus.sort_unstable();
        smmus.dedup();
        let mut hit_rates = 0;
        for &smmu in &smmus {
            let name = format!("{}/{smmu}", run.board);
            let at = |n, c| cover_counts(run, smmu, n, c);
            let show =
                |c: &[u64]| format!("{} range + {} CMD_SYNC of {} commands", c[1], c[3], c[4]);
            match at("unmapped", "on") {
                Some(c) => checks.push((
                    c == [0, 1, 0, 1, 2],
                    format!(
                        "{name} unmapped neighbours, cover on: {} (goal: 1 + 1)",
                        show(&c)
                    ),
                )),
                None => checks.push((
                    false,
                    format!("{name} unmapped neighbours, cover on: missing"),
                )),
            }
            match (at("mapped", "on"), at("mapped", "off"), at("unmapped", "off")) {
                (Some(on), Some(off), Some(exact)) => checks.push((
                    on == off && off == exact && exact[1] > 1,
                    format!(
                        "{name} mapped neighbours: cover on {}, off {}, exact {} (goal: all the exact encoding)",
                        show(&on),
                        show(&off),
                        show(&exact)
                    ),
                )),
                _ => checks.push((false, format!("{name} mapped neighbours or cover off: missing"))),
            }
            let key = [("smmu", smmu), ("neighbours", "mapped"), ("cover", "on")];
            if let Some(rate) = run.value("smmu.free_cover", &key, "hit_rate") {
                hit_rates += 1;
                checks.push((
                    rate == 1000,
                    format!(
                        "{name} mapped neighbours, cover on: IOTLB hit rate {rate} ‰ (goal: 1000)"
                    ),
                ));
            }
        }
        if !smmus.is_empty() && hit_rates == 0 {
            checks.push((
                false,
                format!(
                    "{}: no model measured the neighbours' IOTLB hit rate",
                    run.board
                ),
            ));
        }
    }
    goal(
        FREE_COVER,
        "free over-invalidation: 4095 pages with unmapped neighbours are 1 range command + 1 CMD_SYNC; with mapped neighbours the exact encoding, and the model's IOTLB hit rate of those neighbours stays 1000 ‰",
        checks,
    )
}

fn interval_100x(results: &[HostResult]) -> Goal {
    let mut checks = Vec::new();
    let tree = host(results, "interval_invalidation/tree/100000");
    let linear = host(results, "interval_invalidation/linear_scan/100000");
    if let (Some(t), Some(l)) = (tree, linear) {
        let speedup = l.mean_ns / t.mean_ns;
        checks.push((
            speedup >= 100.0,
            format!(
                "100k intervals: tree {:.1} ns, linear scan {:.1} ns: {speedup:.0}x (goal ≥ 100x)",
                t.mean_ns, l.mean_ns
            ),
        ));
    }
    goal(
        INTERVAL_100X,
        "interval notifier invalidation at 100k intervals at least 100x faster than a linear scan",
        checks,
    )
}

fn empty_dispatch_2x(results: &[HostResult]) -> Goal {
    let mut checks = Vec::new();
    // Two baselines, both must hold: empty functions with the API's arguments and result (the
    // range by value), and the cheapest empty calls (references only, start_end only).
    let baselines = [
        ("start_end", "dispatch/empty_call/start_end"),
        ("start_end", "dispatch/empty_call_by_ref/start_end"),
        ("secondary_tlbs", "dispatch/empty_call/secondary_tlbs"),
    ];
    for (call, baseline) in baselines {
        let Some(base) = host(results, baseline) else {
            continue;
        };
        // The fast path of the goal: never subscribed, and a list that emptied (`has_itree`
        // never set). `itree_emptied` is reported but takes the subscriptions lock, as in Linux.
        for case in ["never_subscribed", "list_emptied"] {
            let id = format!("dispatch/{call}/{case}");
            if let Some(r) = host(results, &id) {
                let ratio = r.mean_ns / base.mean_ns;
                checks.push((
                    ratio <= 2.0,
                    format!(
                        "{id}: {:.2} ns vs {baseline} {:.2} ns: {ratio:.2}x (goal ≤ 2x)",
                        r.mean_ns, base.mean_ns
                    ),
                ));
            }
        }
    }
    goal(
        EMPTY_DISPATCH_2X,
        "notifier dispatch with no subscriber (never subscribed, list emptied) within 2x of an empty function call",
        checks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(smmu: &str, strategy: &str, pages: u64, metric: &str, value: u64) -> Sample {
        Sample {
            name: "smmu.unmap".into(),
            params: vec![
                ("smmu".into(), smmu.into()),
                ("strategy".into(), strategy.into()),
                ("pages".into(), pages.to_string()),
            ],
            metric: metric.into(),
            value,
            unit: "commands".into(),
        }
    }

    fn features(smmu: &str, ril: u64) -> Sample {
        Sample {
            name: "smmu.features".into(),
            params: vec![("smmu".into(), smmu.into())],
            metric: "range_invalidation".into(),
            value: ril,
            unit: "bool".into(),
        }
    }

    /// One unmap's command counts: (va, range, asid), plus one CMD_SYNC.
    fn unmap(
        smmu: &str,
        strategy: &str,
        pages: u64,
        (va, range, asid): (u64, u64, u64),
    ) -> Vec<Sample> {
        vec![
            sample(smmu, strategy, pages, "tlbi_va", va),
            sample(smmu, strategy, pages, "tlbi_va_range", range),
            sample(smmu, strategy, pages, "tlbi_asid", asid),
            sample(smmu, strategy, pages, "sync", 1),
            sample(smmu, strategy, pages, "commands", va + range + asid + 1),
        ]
    }

    fn run(samples: Vec<Sample>) -> KernelRun {
        KernelRun {
            board: "b".into(),
            counter: None,
            samples,
            failures: vec![],
            qemu: None,
        }
    }

    fn hr(id: &str, mean_ns: f64) -> HostResult {
        HostResult {
            id: id.into(),
            mean_ns,
            low_ns: mean_ns,
            high_ns: mean_ns,
        }
    }

    fn verdict(goals: &[Goal], id: &str) -> Verdict {
        goals.iter().find(|g| g.id == id).unwrap().verdict
    }

    fn shared(smmu: &str, cpus: u64, sharing: &str, (n, syncs, insns): (u64, u64, u64)) -> Vec<Sample> {
        let s = |metric: &str, value| Sample {
            name: "smmu.shared_sync".into(),
            params: vec![
                ("smmu".into(), smmu.into()),
                ("cpus".into(), cpus.to_string()),
                ("sharing".into(), sharing.into()),
            ],
            metric: metric.into(),
            value,
            unit: "x".into(),
        };
        vec![
            s("invalidations", n),
            s("syncs", syncs),
            s("insns_per_invalidation", insns),
        ]
    }

    /// `mm.map_unmap` samples of one layout and size: (map, unmap) instructions.
    fn map_unmap(layout: &str, pages: u64, (map, unmap): (Option<u64>, Option<u64>)) -> Vec<Sample> {
        let s = |metric: &str, value| Sample {
            name: "mm.map_unmap".into(),
            params: vec![
                ("layout".into(), layout.into()),
                ("pages".into(), pages.to_string()),
            ],
            metric: metric.into(),
            value,
            unit: "insns".into(),
        };
        [("map", map), ("unmap", unmap)]
            .into_iter()
            .filter_map(|(m, v)| v.map(|v| s(m, v)))
            .collect()
    }

    fn insns_run(samples: Vec<Sample>) -> KernelRun {
        KernelRun {
            counter: Some(super::super::Counter {
                unit: "insns".into(),
                source: "pmu".into(),
            }),
            ..run(samples)
        }
    }

    #[test]
    fn per_page_goal_checks_map_and_unmap_at_262144_pages() {
        const N: u64 = PER_PAGE_PAGES;
        let v = |r: KernelRun| verdict(&check(&[r], &[]), PER_PAGE_100);
        let at = |map, unmap| insns_run(map_unmap("pages", N, (Some(map), Some(unmap))));
        assert_eq!(v(at(100 * N, 100 * N)), Verdict::Pass);
        assert_eq!(v(at(100 * N + 1, 50 * N)), Verdict::Fail, "map over");
        assert_eq!(v(at(50 * N, 100 * N + 1)), Verdict::Fail, "unmap over");
        // Half the metrics is a failure, not half a pass.
        let lost = insns_run(map_unmap("pages", N, (Some(N), None)));
        assert_eq!(v(lost), Verdict::Fail);
        // Timer ticks are not instructions.
        let ticks = KernelRun {
            counter: None,
            ..at(N, N)
        };
        assert_eq!(v(ticks), Verdict::Fail);
        // Blocks, or smaller sizes only (the smoke run), say nothing about the goal.
        let blocks = insns_run(map_unmap("blocks", N, (Some(N), Some(N))));
        assert_eq!(v(blocks), Verdict::NotMeasured);
        let small = insns_run(map_unmap("pages", 512, (Some(N), Some(N))));
        assert_eq!(v(small), Verdict::NotMeasured);
        assert_eq!(v(run(vec![])), Verdict::NotMeasured);
        // One board over the goal fails the goal.
        assert_eq!(
            verdict(&check(&[at(N, N), at(N, 101 * N)], &[]), PER_PAGE_100),
            Verdict::Fail
        );
    }

    #[test]
    fn shared_sync_goal() {
        let good = [
            shared("m", 1, "on", (256, 256, 2000)),
            shared("m", 4, "on", (1024, 256, 1900)),
            shared("m", 4, "off", (1024, 1024, 2100)),
        ]
        .concat();
        assert_eq!(verdict(&check(&[run(good.clone())], &[]), SHARED_SYNC), Verdict::Pass);
        let too_many = [
            shared("m", 1, "on", (256, 256, 2000)),
            shared("m", 4, "on", (1024, 600, 1900)),
            shared("m", 4, "off", (1024, 1024, 2100)),
        ]
        .concat();
        assert_eq!(verdict(&check(&[run(too_many)], &[]), SHARED_SYNC), Verdict::Fail);
        let slower = [
            shared("m", 1, "on", (256, 256, 2000)),
            shared("m", 4, "on", (1024, 256, 2200)),
            shared("m", 4, "off", (1024, 1024, 2100)),
        ]
        .concat();
        assert_eq!(verdict(&check(&[run(slower)], &[]), SHARED_SYNC), Verdict::Fail);
        let one_cpu_shared = [
            shared("m", 1, "on", (256, 128, 2000)),
            shared("m", 4, "on", (1024, 256, 1900)),
            shared("m", 4, "off", (1024, 1024, 2100)),
        ]
        .concat();
        assert_eq!(verdict(&check(&[run(one_cpu_shared)], &[]), SHARED_SYNC), Verdict::Fail);
        // Only one CPU measured: the 4-CPU checks fail rather than pass silently.
        let only_one = shared("m", 1, "on", (256, 256, 2000));
        assert_eq!(verdict(&check(&[run(only_one)], &[]), SHARED_SYNC), Verdict::Fail);
    }

    fn cover_case(
        smmu: &str,
        neighbours: &str,
        cover: &str,
        counts: [u64; 5],
        hit_rate: Option<u64>,
    ) -> Vec<Sample> {
        let metrics = [
            "tlbi_va",
            "tlbi_va_range",
            "tlbi_asid",
            "sync",
            "commands",
            "hit_rate",
        ];
        metrics
            .iter()
            .zip(counts.iter().copied().map(Some).chain([hit_rate]))
            .filter_map(|(m, v)| {
                Some(Sample {
                    name: "smmu.free_cover".into(),
                    params: vec![
                        ("smmu".into(), smmu.into()),
                        ("neighbours".into(), neighbours.into()),
                        ("cover".into(), cover.into()),
                        ("pages".into(), "4095".into()),
                    ],
                    metric: (*m).into(),
                    value: v?,
                    unit: "commands".into(),
                })
            })
            .collect()
    }

    fn cover_run(covered: [u64; 5], mapped_on: [u64; 5], hit_rate: Option<u64>) -> KernelRun {
        let exact = [0, 3, 0, 1, 4];
        let mut samples = cover_case("model", "unmapped", "on", covered, None);
        samples.extend(cover_case("model", "mapped", "on", mapped_on, hit_rate));
        samples.extend(cover_case("model", "unmapped", "off", exact, None));
        samples.extend(cover_case("model", "mapped", "off", exact, None));
        run(samples)
    }

    #[test]
    fn free_cover_goal() {
        let one = [0, 1, 0, 1, 2];
        let exact = [0, 3, 0, 1, 4];
        assert_eq!(verdict(&check(&[], &[]), FREE_COVER), Verdict::NotMeasured);
        let pass = cover_run(one, exact, Some(1000));
        assert_eq!(verdict(&check(&[pass], &[]), FREE_COVER), Verdict::Pass);
        // Not taken with unmapped neighbours, taken over mapped ones, a neighbour lost, or
        // no hit rate at all: each fails.
        for bad in [
            cover_run(exact, exact, Some(1000)),
            cover_run(one, one, Some(1000)),
            cover_run(one, exact, Some(500)),
            cover_run(one, exact, None),
        ] {
            assert_eq!(verdict(&check(&[bad], &[]), FREE_COVER), Verdict::Fail);
        }
        // A case missing is a failure too, not a pass.
        let mut partial = cover_run(one, exact, Some(1000));
        partial.samples.retain(|s| s.param("cover") != Some("off"));
        assert_eq!(verdict(&check(&[partial], &[]), FREE_COVER), Verdict::Fail);
    }

    #[test]
    fn ceil_log2_of_page_counts() {
        let cases = [
            (1, 0),
            (2, 1),
            (3, 2),
            (16, 4),
            (17, 5),
            (512, 9),
            (4095, 12),
            (262_144, 18),
        ];
        for (n, l) in cases {
            assert_eq!(ceil_log2(n), l, "{n}");
        }
    }

    #[test]
    fn nothing_measured_is_not_a_pass() {
        let goals = check(&[], &[]);
        assert_eq!(goals.len(), ALL.len() + super::super::peer::GOALS.len());
        assert!(goals.iter().all(|g| g.verdict == Verdict::NotMeasured));
        // Range counts on an SMMU without RIL are not evidence for the RIL goal.
        let no_ril = run([vec![features("m", 0)], unmap("m", "auto", 16, (16, 0, 0))].concat());
        assert_eq!(
            verdict(&check(&[no_ril], &[]), RIL_RANGE_COMMANDS),
            Verdict::NotMeasured
        );
    }

    #[test]
    fn range_commands_within_the_bound_pass_and_beyond_it_fail() {
        let good = [
            vec![features("mmio", 1)],
            unmap("mmio", "range", 4095, (0, 3, 0)),
            unmap("mmio", "auto", 1, (0, 1, 0)),
            unmap("mmio", "per-page", 16, (16, 0, 0)),
        ]
        .concat();
        assert_eq!(
            verdict(&check(&[run(good)], &[]), RIL_RANGE_COMMANDS),
            Verdict::Pass
        );
        // 17 pages: ceil(log2 17) + 1 = 6 range commands at most.
        let too_many = [
            vec![features("mmio", 1)],
            unmap("mmio", "range", 17, (0, 7, 0)),
        ]
        .concat();
        let goals = check(&[run(too_many)], &[]);
        assert_eq!(verdict(&goals, RIL_RANGE_COMMANDS), Verdict::Fail);
        assert!(
            goals[0].checks[0].starts_with("FAIL"),
            "{:?}",
            goals[0].checks
        );
        // A per-page or ASID command where ranges were promised fails too.
        let mixed = [
            vec![features("mmio", 1)],
            unmap("mmio", "auto", 16, (1, 1, 0)),
        ]
        .concat();
        assert_eq!(
            verdict(&check(&[run(mixed)], &[]), RIL_RANGE_COMMANDS),
            Verdict::Fail
        );
        let asid = [
            vec![features("mmio", 1)],
            unmap("mmio", "auto", 4096, (0, 0, 1)),
        ]
        .concat();
        assert_eq!(
            verdict(&check(&[run(asid)], &[]), RIL_RANGE_COMMANDS),
            Verdict::Fail
        );
    }

    #[test]
    fn asid_wide_under_512_pages_fails_except_for_the_asid_strategy() {
        let ok = [
            unmap("m", "auto", 511, (511, 0, 0)),
            unmap("m", "auto", 512, (0, 0, 1)),
            unmap("m", "asid", 1, (0, 0, 1)),
        ]
        .concat();
        assert_eq!(
            verdict(&check(&[run(ok)], &[]), NO_ASID_BELOW_512),
            Verdict::Pass
        );
        let bad = unmap("m", "auto", 511, (0, 0, 1));
        assert_eq!(
            verdict(&check(&[run(bad)], &[]), NO_ASID_BELOW_512),
            Verdict::Fail
        );
    }

    /// A run whose kernel counted (va, range) + 1 sync for 16 pages, and QEMU's trace of it in
    /// which the window saw `qemu` (opcode lines, range_inval lines included).
    fn traced(smmu: &str, kernel: (u64, u64), qemu: &str) -> KernelRun {
        traced_all(&[(smmu, Some(kernel), qemu)])
    }

    /// One measurement of 16 pages: `(smmu, the kernel's (va, range) count or None if it printed
    /// none, what QEMU saw in its window)`.
    type Measured<'a> = (&'a str, Option<(u64, u64)>, &'a str);

    /// [`traced`] for several measurements in one boot, in order.
    fn traced_all(measured: &[Measured]) -> KernelRun {
        let console = |line: &str| -> String {
            format!("{line}\n")
                .bytes()
                .map(|b| format!("pl011_write addr 0x000 value 0x{b:08x} reg DR\n"))
                .collect()
        };
        let (mut trace, mut samples) = (String::new(), Vec::new());
        for &(smmu, kernel, qemu) in measured {
            let key = format!("name=smmu.unmap smmu={smmu} strategy=range pages=16");
            trace += &console(&format!("# bench-window begin {key}"));
            trace += qemu;
            trace += &console(&format!("# bench-window end {key}"));
            if let Some((va, range)) = kernel {
                samples.extend(unmap(smmu, "range", 16, (va, range, 0)));
            }
        }
        let mut r = run(samples);
        let t = crate::bench::qemu_trace::parse(&trace).unwrap();
        assert_eq!(t.windows.len(), measured.len());
        r.qemu = Some(t);
        r
    }

    const RANGE_AND_SYNC: &str = "smmuv3_cmdq_opcode <--- SMMU_CMD_TLBI_NH_VA\n\
        smmuv3_range_inval vmid=0 asid=1 addr=0x0 tg=1 num_pages=0x10\n\
        smmuv3_cmdq_opcode <--- SMMU_CMD_SYNC\n";

    #[test]
    fn qemu_must_count_what_the_kernel_counted() {
        let v = |r: KernelRun| verdict(&check(&[r], &[]), QEMU_COUNTS);
        assert_eq!(v(traced("mmio", (0, 1), RANGE_AND_SYNC)), Verdict::Pass);
        // Same total, other kinds: per page instead of range.
        let per_page = RANGE_AND_SYNC.replace("tg=1", "tg=0");
        assert_eq!(v(traced("mmio", (0, 1), &per_page)), Verdict::Fail);
        // A command QEMU saw that the kernel did not count.
        let extra = format!("{RANGE_AND_SYNC}smmuv3_cmdq_opcode <--- SMMU_CMD_SYNC\n");
        assert_eq!(v(traced("mmio", (0, 1), &extra)), Verdict::Fail);
        // A model's unmap reaches QEMU: wrong; nothing there: fine (its counts are the model's).
        assert_eq!(v(traced("model", (0, 1), RANGE_AND_SYNC)), Verdict::Fail);
        let beside_mmio = traced_all(&[
            ("mmio", Some((0, 1)), RANGE_AND_SYNC),
            ("model", Some((0, 1)), ""),
        ]);
        assert_eq!(v(beside_mmio), Verdict::Pass);
        // A kernel count without a window.
        let mut lost = traced("mmio", (0, 1), RANGE_AND_SYNC);
        lost.qemu.as_mut().unwrap().windows.clear();
        assert_eq!(v(lost), Verdict::Fail);
        // No trace: not measured.
        assert_eq!(
            v(run(unmap("mmio", "range", 16, (0, 1, 0)))),
            Verdict::NotMeasured
        );
    }

    /// A model's windows say only that nothing reached QEMU: without one unmap on QEMU's SMMU
    /// compared with the kernel (its probe failed, `smmu.unmap` skipped it), the goal has no
    /// evidence and must not pass.
    #[test]
    fn model_windows_alone_are_not_a_pass() {
        let v = |r: KernelRun| verdict(&check(&[r], &[]), QEMU_COUNTS);
        assert_eq!(v(traced("model-noril", (16, 0), "")), Verdict::NotMeasured);
        assert_eq!(v(traced("model", (0, 1), "")), Verdict::NotMeasured);
        // A command in a model's window still fails, alone or not.
        assert_eq!(v(traced("model", (0, 1), RANGE_AND_SYNC)), Verdict::Fail);
    }

    /// `bench.pages=16,16` (or `PEER_PAGES=16,16`) measures one key twice: the n-th count is
    /// checked against the n-th window with that key and its own kinds, not every count against
    /// the first window and the first count's kinds.
    #[test]
    fn a_key_measured_twice_is_checked_window_by_window() {
        let v = |r: KernelRun| verdict(&check(&[r], &[]), QEMU_COUNTS);
        let range = ("mmio", Some((0, 1)), RANGE_AND_SYNC);
        assert_eq!(v(traced_all(&[range, range])), Verdict::Pass);
        let per_page = RANGE_AND_SYNC.replace("tg=1", "tg=0");
        assert_eq!(
            v(traced_all(&[range, ("mmio", Some((1, 0)), &per_page)])),
            Verdict::Pass
        );
        // The second window saw a command more than the second count.
        let extra = format!("{RANGE_AND_SYNC}smmuv3_cmdq_opcode <--- SMMU_CMD_SYNC\n");
        assert_eq!(
            v(traced_all(&[range, ("mmio", Some((0, 1)), &extra)])),
            Verdict::Fail
        );
        // The second count says per page, its window saw a range command.
        assert_eq!(
            v(traced_all(&[range, ("mmio", Some((1, 0)), RANGE_AND_SYNC)])),
            Verdict::Fail
        );
        // Two counts, one window.
        let mut lost = traced_all(&[range, range]);
        lost.qemu.as_mut().unwrap().windows.pop();
        assert_eq!(v(lost), Verdict::Fail);
        // Two windows, one count: what QEMU saw in the second is checked against nothing.
        assert_eq!(
            v(traced_all(&[range, ("mmio", None, &extra)])),
            Verdict::Fail
        );
    }

    #[test]
    fn interval_speedup_is_checked_at_100k() {
        let at = |tree, linear| {
            let r = [
                hr("interval_invalidation/tree/100000", tree),
                hr("interval_invalidation/linear_scan/100000", linear),
            ];
            verdict(&check(&[], &r), INTERVAL_100X)
        };
        assert_eq!(at(50.0, 5_000.0), Verdict::Pass);
        assert_eq!(at(50.0, 4_999.0), Verdict::Fail);
    }

    #[test]
    fn empty_dispatch_is_compared_with_the_empty_call() {
        let at = |dispatch| {
            let r = [
                hr("dispatch/empty_call/start_end", 2.0),
                hr("dispatch/start_end/never_subscribed", dispatch),
                hr("dispatch/start_end/list_emptied", 3.0),
                hr("dispatch/start_end/itree_emptied", 30.0),
                hr("dispatch/empty_call_by_ref/start_end", 1.5),
            ];
            let goals = check(&[], &r);
            let g = goals.iter().find(|g| g.id == EMPTY_DISPATCH_2X).unwrap();
            assert_eq!(g.checks.len(), 4);
            g.verdict
        };
        // Against 2 ns (by value) and 1.5 ns (by reference): 3 ns passes, 3.1 ns does not.
        assert_eq!(at(3.0), Verdict::Pass);
        assert_eq!(at(3.1), Verdict::Fail);
    }
}
