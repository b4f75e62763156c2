//! The benchmark report: tables derived from the raw measurements, `results.json`,
//! `results.md` and the SVG plots, and the goal verdicts.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::goals::{self, Goal, Verdict};
use super::peer;
use super::plot::{Chart, Scale, Series};
use super::{host, HostResult, KernelRun, Sample};

/// The physical floor of one invalidation: one range command and one CMD_SYNC.
pub const FLOOR_COMMANDS: u64 = 2;

/// One unmap of one strategy on one SMMU.
#[derive(Clone, Debug, PartialEq)]
pub struct UnmapRow {
    pub board: String,
    pub smmu: String,
    pub strategy: String,
    pub pages: u64,
    pub tlbi_va: u64,
    pub tlbi_va_range: u64,
    pub tlbi_asid: u64,
    pub sync: u64,
    pub commands: u64,
    /// Instructions of the invalidation alone (planner, queue, MMIO or model, completion).
    pub invalidate: Option<u64>,
    /// Instructions of the whole `munmap`.
    pub unmap: Option<u64>,
    /// `commands` / [`FLOOR_COMMANDS`].
    pub commands_vs_floor: f64,
    /// `invalidate` / the floor's instructions on the same SMMU (if it has RIL).
    pub insns_vs_floor: Option<f64>,
    /// The model's IOTLB hit rate (per mille) for unrelated mappings after this unmap.
    pub unrelated_hit_permille: Option<u64>,
}

/// The unmap table of every run, in run and line order.
pub fn unmap_rows(runs: &[KernelRun]) -> Vec<UnmapRow> {
    let mut rows = Vec::new();
    for run in runs {
        for s in run.all("smmu.unmap", "commands") {
            let (Some(smmu), Some(strategy), Some(pages)) =
                (s.param("smmu"), s.param("strategy"), s.pages())
            else {
                continue;
            };
            if strategy == "floor" {
                continue;
            }
            let p = pages.to_string();
            let key = [
                ("smmu", smmu),
                ("strategy", strategy),
                ("pages", p.as_str()),
            ];
            let get = |m| run.value("smmu.unmap", &key, m);
            let floor = run
                .all("smmu.unmap", "invalidate")
                .find(|f| f.param("smmu") == Some(smmu) && f.param("strategy") == Some("floor"))
                .map(|f| f.value);
            let invalidate = get("invalidate");
            // Only the model's IOTLB can be observed: a model with the same RIL setting.
            let model = if smmu == "model-noril" {
                "model-noril"
            } else {
                "model"
            };
            let hit = run.value(
                "smmu.iotlb_hit_rate",
                &[
                    ("smmu", model),
                    ("strategy", strategy),
                    ("pages", p.as_str()),
                ],
                "hit_rate",
            );
            rows.push(UnmapRow {
                board: run.board.clone(),
                smmu: smmu.to_string(),
                strategy: strategy.to_string(),
                pages,
                tlbi_va: get("tlbi_va").unwrap_or(0),
                tlbi_va_range: get("tlbi_va_range").unwrap_or(0),
                tlbi_asid: get("tlbi_asid").unwrap_or(0),
                sync: get("sync").unwrap_or(0),
                commands: s.value,
                invalidate,
                unmap: get("unmap"),
                commands_vs_floor: s.value as f64 / FLOOR_COMMANDS as f64,
                insns_vs_floor: invalidate.zip(floor).map(|(i, f)| i as f64 / f as f64),
                unrelated_hit_permille: hit,
            });
        }
    }
    rows
}

/// One `mm.map_unmap` measurement: instructions of `mmap` and `munmap` of `pages` pages.
#[derive(Clone, Debug, PartialEq)]
pub struct MapUnmapRow {
    /// `pages` (4 KiB leaves only) or `blocks` (2 MiB blocks where possible).
    pub layout: String,
    pub pages: u64,
    pub map: u64,
    pub unmap: Option<u64>,
}

/// The `mm.map_unmap` rows of one run.
pub fn map_unmap_rows(run: &KernelRun) -> Vec<MapUnmapRow> {
    run.all("mm.map_unmap", "map")
        .filter_map(|s| {
            let layout = s.param("layout")?;
            let pages = s.param("pages")?;
            let unmap = run.value(
                "mm.map_unmap",
                &[("layout", layout), ("pages", pages)],
                "unmap",
            );
            Some(MapUnmapRow {
                layout: layout.to_string(),
                pages: s.pages()?,
                map: s.value,
                unmap,
            })
        })
        .collect()
}

fn sample_json(s: &Sample) -> Value {
    let params: serde_json::Map<String, Value> = s
        .params
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({"name": s.name, "params": params, "metric": s.metric, "value": s.value, "unit": s.unit})
}

fn goal_json(g: &Goal) -> Value {
    json!({
        "id": g.id,
        "description": g.description,
        "verdict": g.verdict.as_str(),
        "checks": g.checks,
    })
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The machine-readable results: raw measurements, derived tables and the goals.
pub fn results_json(runs: &[KernelRun], host_results: &[HostResult], goals: &[Goal]) -> Value {
    let kernel: serde_json::Map<String, Value> = runs
        .iter()
        .map(|r| {
            let counter = r
                .counter
                .as_ref()
                .map(|c| json!({"unit": c.unit, "source": c.source}));
            (
                r.board.clone(),
                json!({
                    "counter": counter,
                    "failures": r.failures,
                    "samples": r.samples.iter().map(sample_json).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    let unmap: Vec<Value> = unmap_rows(runs)
        .iter()
        .map(|r| {
            json!({
                "board": r.board, "smmu": r.smmu, "strategy": r.strategy, "pages": r.pages,
                "tlbi_va": r.tlbi_va, "tlbi_va_range": r.tlbi_va_range, "tlbi_asid": r.tlbi_asid,
                "sync": r.sync, "commands": r.commands,
                "invalidate_insns": r.invalidate, "unmap_insns": r.unmap,
                "commands_vs_floor": round3(r.commands_vs_floor),
                "insns_vs_floor": r.insns_vs_floor.map(round3),
                "unrelated_iotlb_hit_permille": r.unrelated_hit_permille,
            })
        })
        .collect();
    let boot: serde_json::Map<String, Value> = runs
        .iter()
        .filter_map(|r| {
            let v = r.value("boot.to_first_bench", &[], "boot")?;
            Some((r.board.clone(), json!(v)))
        })
        .collect();
    json!({
        "schema": "shootdown-bench/1",
        "command": "make bench",
        "floor": {"commands": FLOOR_COMMANDS, "meaning": "one range TLBI + one CMD_SYNC per (SMMU, unmap)"},
        "goals": goals.iter().map(goal_json).collect::<Vec<_>>(),
        "boot_to_first_bench_insns": boot,
        "smmu_unmap": unmap,
        "host_criterion_ns": host_results.iter().map(|h| json!({
            "id": h.id, "mean": round3(h.mean_ns), "ci95_low": round3(h.low_ns), "ci95_high": round3(h.high_ns)
        })).collect::<Vec<_>>(),
        "kernel": kernel,
        "qemu_trace": runs.iter().filter_map(|r| {
            let t = r.qemu.as_ref()?;
            Some((r.board.clone(), json!({
                "windows": t.windows.iter().map(|w| json!({
                    "name": w.name,
                    "params": w.params.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
                    "counts": w.counts.0,
                })).collect::<Vec<_>>(),
                "outside": t.outside.iter().map(|o| json!({"segment": o.segment, "counts": o.counts.0})).collect::<Vec<_>>(),
            })))
        }).collect::<serde_json::Map<_, _>>(),
    })
}

fn opt(v: Option<u64>) -> String {
    v.map_or("–".into(), |v| v.to_string())
}

/// The strategies side by side, one table per board: a row per (SMMU, strategy), a column per
/// size, each cell `commands (× floor) · invalidation instructions (× floor) · unrelated hits`.
pub fn strategy_summary(runs: &[KernelRun]) -> String {
    let rows = unmap_rows(runs);
    let mut s = String::new();
    for run in runs {
        let mine: Vec<&UnmapRow> = rows.iter().filter(|r| r.board == run.board).collect();
        let sizes: BTreeSet<u64> = mine.iter().map(|r| r.pages).collect();
        if sizes.is_empty() {
            continue;
        }
        let mut keys: Vec<(&str, &str)> = Vec::new();
        for r in &mine {
            if !keys.contains(&(r.smmu.as_str(), r.strategy.as_str())) {
                keys.push((&r.smmu, &r.strategy));
            }
        }
        let _ = write!(s, "
**{}** (cell: commands ×floor · invalidation instructions ×floor · model IOTLB hits on unrelated pages)

| SMMU | strategy |", run.board);
        for p in &sizes {
            let _ = write!(s, " {p} pages |");
        }
        let _ = write!(
            s,
            "
|---|---|"
        );
        s.push_str(&"---|".repeat(sizes.len()));
        s.push('\n');
        for (smmu, strategy) in keys {
            let name = if strategy == "auto" {
                "Linux policy (`auto`)"
            } else {
                strategy
            };
            let _ = write!(s, "| {smmu} | {name} |");
            for p in &sizes {
                let cell = mine
                    .iter()
                    .find(|r| r.smmu == smmu && r.strategy == strategy && r.pages == *p)
                    .map_or("–".to_string(), |r| {
                        let insns = r
                            .insns_vs_floor
                            .map_or(opt(r.invalidate), |x| format!("{x:.1}×"));
                        let hits = r
                            .unrelated_hit_permille
                            .map_or("–".into(), |h| format!("{}%", h / 10));
                        format!(
                            "{} ({:.1}×) · {insns} · {hits}",
                            r.commands, r.commands_vs_floor
                        )
                    });
                let _ = write!(s, " {cell} |");
            }
            s.push('\n');
        }
    }
    s
}

/// The human tables (Markdown): goals, boot, map/unmap, unmap by strategy, host benches.
pub fn markdown(runs: &[KernelRun], host_results: &[HostResult], goals: &[Goal]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "#### Goals\n\n| goal | verdict | measured |\n|---|---|---|"
    );
    for g in goals {
        let measured = g.checks.first().map_or("", |c| c.as_str());
        let more = if g.checks.len() > 1 {
            format!(" (+{} more checks)", g.checks.len() - 1)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "| {} | **{}** | {}{more} |",
            g.description,
            g.verdict.as_str(),
            measured
                .trim_start_matches("ok   ")
                .trim_start_matches("FAIL ")
        );
    }
    s.push_str(&qemu_section(runs));
    let _ = writeln!(s, "\n#### Invalidation strategies compared with the floor");
    s.push_str(&strategy_summary(runs));
    let _ = writeln!(
        s,
        "\n#### Boot and page tables (instructions, QEMU `-icount shift=0`)\n"
    );
    let _ = writeln!(s, "| board | boot to first benchmark | layout | pages | map | unmap |\n|---|---|---|---|---|---|");
    for run in runs {
        let boot = opt(run.value("boot.to_first_bench", &[], "boot"));
        for r in map_unmap_rows(run) {
            let _ = writeln!(
                s,
                "| {} | {boot} | {} | {} | {} | {} |",
                run.board,
                r.layout,
                r.pages,
                r.map,
                opt(r.unmap)
            );
        }
    }
    let _ = writeln!(
        s,
        "\n#### Invalidation per unmap, by strategy (floor = 1 range TLBI + 1 CMD_SYNC)\n\n\
         | board | SMMU | strategy | pages | TLBI VA / range / ASID + SYNC | commands (× floor) | invalidate insns (× floor) | munmap insns | unrelated IOTLB hits |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for r in unmap_rows(runs) {
        let ratio = r
            .insns_vs_floor
            .map_or(String::new(), |x| format!(" ({x:.1}×)"));
        let hits = r
            .unrelated_hit_permille
            .map_or("–".into(), |h| format!("{:.1} %", h as f64 / 10.0));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} / {} / {} + {} | {} ({:.1}×) | {}{ratio} | {} | {hits} |",
            r.board,
            r.smmu,
            r.strategy,
            r.pages,
            r.tlbi_va,
            r.tlbi_va_range,
            r.tlbi_asid,
            r.sync,
            r.commands,
            r.commands_vs_floor,
            opt(r.invalidate),
            opt(r.unmap)
        );
    }
    if !host_results.is_empty() {
        let _ = writeln!(s, "\n#### Host (criterion, mean per iteration)\n\n| benchmark | mean | 95 % CI |\n|---|---|---|");
        for h in host_results {
            let _ = writeln!(
                s,
                "| `{}` | {} | {} – {} |",
                h.id,
                duration(h.mean_ns),
                duration(h.low_ns),
                duration(h.high_ns)
            );
        }
    }
    s
}

/// What QEMU's trace saw: how many measured unmaps it split out, and the commands outside them
/// by segment of the boot (probe, binds, the benchmarks' direct invalidations, teardown).
pub fn qemu_section(runs: &[KernelRun]) -> String {
    let mut s = String::new();
    for run in runs {
        let Some(t) = &run.qemu else {
            continue;
        };
        let measured = t
            .windows
            .iter()
            .filter(|w| w.param("smmu") == Some("mmio"))
            .count();
        let _ = writeln!(
            s,
            "\n#### SMMU commands QEMU counted ({})\n\n{measured} measured unmaps on QEMU's SMMU, each checked against the kernel's counts (goal `qemu_counts`). \
             Outside them (not part of any figure above), by the part of the boot that sent them:\n\n| segment | commands outside the measured unmaps |\n|---|---|",
            run.board
        );
        for o in &t.outside {
            let what = if o.segment == "boot" {
                "boot (SMMU probe, before the first benchmark)".to_string()
            } else {
                format!(
                    "`{}` (binds, the `invalidate` metric's direct invalidations, unbinds)",
                    o.segment
                )
            };
            let _ = writeln!(s, "| {what} | {} |", o.counts);
        }
        let _ = writeln!(s, "| **total** | {} |", t.outside_total());
    }
    s
}

fn duration(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.2} ns")
    }
}

fn series(label: &str, points: Vec<(f64, f64)>, dashed: bool) -> Option<Series> {
    (!points.is_empty()).then(|| Series {
        label: label.to_string(),
        points,
        dashed,
    })
}

/// The plots, by file name.
pub fn charts(runs: &[KernelRun], host_results: &[HostResult]) -> Vec<(&'static str, Chart)> {
    let rows = unmap_rows(runs);
    let mut out = Vec::new();
    let smmus: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.board.clone(), r.smmu.clone()))
        .collect();
    let curve = |board: &str, smmu: &str, strategy: &str, f: &dyn Fn(&UnmapRow) -> Option<f64>| {
        rows.iter()
            .filter(|r| r.board == board && r.smmu == smmu && r.strategy == strategy)
            .filter_map(|r| Some((r.pages as f64, f(r)?)))
            .collect::<Vec<_>>()
    };
    // Commands are the planner's: the same on every SMMU with the same RIL setting, so the
    // first board that has each SMMU kind draws it.
    let mut commands = Vec::new();
    let mut insns = Vec::new();
    let mut seen_kind = BTreeSet::new();
    let mut seen_insns = BTreeSet::new();
    for (board, smmu) in &smmus {
        let ril = smmu != "model-noril";
        for strategy in ["per-page", "range", "asid", "auto"] {
            let label = match (strategy, ril) {
                ("auto", true) => "Linux policy (RIL)".to_string(),
                ("auto", false) => "Linux policy (no RIL)".to_string(),
                (s, _) => s.to_string(),
            };
            if seen_kind.insert((ril, strategy)) {
                let pts = curve(board, smmu, strategy, &|r| Some(r.commands as f64));
                commands.extend(series(&label, pts, !ril));
            }
            // The private model without RIL runs on both boards with the same counts: once.
            if seen_insns.insert((smmu.as_str(), strategy)) {
                let pts = curve(board, smmu, strategy, &|r| r.invalidate.map(|v| v as f64));
                let short = if strategy == "auto" {
                    "Linux policy"
                } else {
                    strategy
                };
                insns.extend(series(&format!("{smmu}: {short}"), pts, smmu != "mmio"));
            }
        }
    }
    out.push((
        "smmu-commands.svg",
        Chart {
            title: "SMMU commands per unmap, by strategy".into(),
            x_label: "pages unmapped (4 KiB)".into(),
            y_label: "commands (incl. CMD_SYNC)".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Log,
            series: commands,
            references: vec![(
                "physical floor (1 range + 1 SYNC)".into(),
                FLOOR_COMMANDS as f64,
            )],
        },
    ));
    out.push((
        "smmu-invalidate-insns.svg",
        Chart {
            title: "Instructions per invalidation (QEMU -icount)".into(),
            x_label: "pages unmapped (4 KiB)".into(),
            y_label: "instructions".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Log,
            series: insns,
            references: vec![],
        },
    ));
    let mut hits = Vec::new();
    let mut hit_seen = BTreeSet::new();
    for run in runs {
        for s in run.all("smmu.iotlb_hit_rate", "hit_rate") {
            let (Some(smmu), Some(strategy)) = (s.param("smmu"), s.param("strategy")) else {
                continue;
            };
            if !hit_seen.insert((smmu.to_string(), strategy.to_string())) {
                continue;
            }
            let pts: Vec<_> = run
                .all("smmu.iotlb_hit_rate", "hit_rate")
                .filter(|h| h.param("smmu") == Some(smmu) && h.param("strategy") == Some(strategy))
                .filter_map(|h| Some((h.pages()? as f64, h.value as f64 / 10.0)))
                .collect();
            let label = if strategy == "auto" {
                format!("Linux policy ({smmu})")
            } else {
                format!("{strategy} ({smmu})")
            };
            hits.extend(series(&label, pts, smmu == "model-noril"));
        }
    }
    out.push((
        "iotlb-hit-rate.svg",
        Chart {
            title: "Model IOTLB hits on unrelated mappings after an unmap".into(),
            x_label: "pages unmapped (4 KiB)".into(),
            y_label: "hit rate (%)".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Linear,
            series: hits,
            references: vec![],
        },
    ));
    let mut mm = Vec::new();
    for run in runs {
        let rows = map_unmap_rows(run);
        for layout in ["pages", "blocks"] {
            let pick = |f: &dyn Fn(&MapUnmapRow) -> Option<f64>| {
                rows.iter()
                    .filter(|r| r.layout == layout)
                    .filter_map(|r| Some((r.pages as f64, f(r)?)))
                    .collect::<Vec<_>>()
            };
            let dashed = layout == "blocks";
            mm.extend(series(
                &format!("map, {layout} ({})", run.board),
                pick(&|r| Some(r.map as f64)),
                dashed,
            ));
            mm.extend(series(
                &format!("unmap, {layout} ({})", run.board),
                pick(&|r| r.unmap.map(|v| v as f64)),
                dashed,
            ));
        }
    }
    out.push((
        "map-unmap-insns.svg",
        Chart {
            title: "mmap / munmap instructions (QEMU -icount)".into(),
            x_label: "pages (4 KiB)".into(),
            y_label: "instructions".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Log,
            series: mm,
            references: vec![],
        },
    ));
    let by_prefix = |prefix: &str, offset: f64| {
        host_results
            .iter()
            .filter_map(|h| {
                let n: f64 = h.id.strip_prefix(prefix)?.parse().ok()?;
                Some((n + offset, h.mean_ns))
            })
            .collect::<Vec<_>>()
    };
    let interval: Vec<_> = [
        series(
            "interval tree",
            by_prefix("interval_invalidation/tree/", 0.0),
            false,
        ),
        series(
            "linear scan (baseline)",
            by_prefix("interval_invalidation/linear_scan/", 0.0),
            true,
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !interval.is_empty() {
        out.push((
            "interval-invalidation.svg",
            Chart {
                title: "Interval notifier invalidation (host)".into(),
                x_label: "interval notifiers".into(),
                y_label: "ns per invalidate_range_start/end".into(),
                x_scale: Scale::Log,
                y_scale: Scale::Log,
                series: interval,
                references: vec![],
            },
        ));
    }
    let dispatch: Vec<_> = [
        series(
            "invalidate_range_start/end",
            by_prefix("invalidate_range_start_end/list/", 1.0),
            false,
        ),
        series(
            "arch_invalidate_secondary_tlbs",
            by_prefix("arch_invalidate_secondary_tlbs/list/", 1.0),
            false,
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !dispatch.is_empty() {
        let references = [
            ("empty calls: start + end", "dispatch/empty_call/start_end"),
            (
                "empty call: secondary_tlbs",
                "dispatch/empty_call/secondary_tlbs",
            ),
        ]
        .iter()
        .filter_map(|(label, id)| Some((label.to_string(), host(host_results, id)?.mean_ns)))
        .collect();
        out.push((
            "notifier-dispatch.svg",
            Chart {
                title: "Notifier dispatch by list subscribers (host)".into(),
                x_label: "list subscribers + 1 (log scale: 0 subscribers at 1)".into(),
                y_label: "ns per call".into(),
                x_scale: Scale::Log,
                y_scale: Scale::Log,
                series: dispatch,
                references,
            },
        ));
    }
    out
}

/// `harness bench-report` options.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportOptions {
    /// (board, console log of a `bench=` boot).
    pub kernel_logs: Vec<(String, PathBuf)>,
    /// criterion's output directory (`target/criterion`).
    pub criterion: Option<PathBuf>,
    /// Where `results.json`, `results.md` and the SVGs go (nothing is written without it).
    pub out: Option<PathBuf>,
    /// Goals that must be measured (and pass): ids, or `all`, `commands`, `peer`.
    pub require: Vec<String>,
    /// (board, QEMU's `-D` trace of that board's boot).
    pub qemu_traces: Vec<(String, PathBuf)>,
    /// Write the side-by-side table with Linux (`peer.md`, `peer.json`) instead of `results.*`.
    pub peer: bool,
    /// Shown at the top of `peer.md` (commit, QEMU line, Debian packages).
    pub meta: Vec<(String, String)>,
}

/// The goal ids `--require` names.
pub fn required_goals(require: &[String]) -> Result<Vec<&'static str>, String> {
    let mut out = Vec::new();
    for r in require {
        match r.as_str() {
            "all" => out.extend(goals::ALL),
            "commands" => out.extend(goals::COMMAND_GOALS),
            "peer" => out.extend(peer::GOALS.iter().chain(&[goals::QEMU_COUNTS])),
            id => out.push(
                *goals::ALL
                    .iter()
                    .chain(&peer::GOALS)
                    .find(|g| **g == id)
                    .ok_or_else(|| {
                        format!(
                            "--require: unknown goal `{id}` (all, commands, peer, {}, {})",
                            goals::ALL.join(", "),
                            peer::GOALS.join(", ")
                        )
                    })?,
            ),
        }
    }
    Ok(out)
}

/// The verdict of a report: what failed (empty = pass).
pub fn problems(runs: &[KernelRun], goals: &[Goal], required: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for run in runs {
        for f in &run.failures {
            out.push(format!("{}: benchmark failed: {f}", run.board));
        }
        if run.samples.is_empty() {
            out.push(format!("{}: no benchmark results in the log", run.board));
        }
        if !run.counts_instructions() {
            out.push(format!(
                "{}: the kernel counted timer ticks, not instructions (QEMU needs -icount shift=0)",
                run.board
            ));
        }
    }
    for g in goals {
        match g.verdict {
            Verdict::Fail => out.push(format!("goal {} failed", g.id)),
            Verdict::NotMeasured if required.contains(&g.id) => {
                out.push(format!("goal {} was not measured", g.id))
            }
            _ => {}
        }
    }
    out
}

/// Runs `harness bench-report`: returns the exit status (0 pass, 1 a goal or benchmark failed).
pub fn run(o: &ReportOptions) -> Result<i32, String> {
    let required = required_goals(&o.require)?;
    let read =
        |path: &Path| fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()));
    let mut runs = Vec::new();
    for (board, path) in &o.kernel_logs {
        let text = read(path)?;
        let mut run =
            KernelRun::parse(board, &text).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some((_, trace)) = o.qemu_traces.iter().find(|(b, _)| b == board) {
            run = run
                .with_qemu_trace(&text, &read(trace)?)
                .map_err(|e| format!("{}: {e}", trace.display()))?;
        }
        runs.push(run);
    }
    if let Some((board, _)) = o
        .qemu_traces
        .iter()
        .find(|(b, _)| !o.kernel_logs.iter().any(|(k, _)| k == b))
    {
        return Err(format!(
            "--qemu-trace {board}=...: no --kernel-log for board `{board}`"
        ));
    }
    let host_results = match &o.criterion {
        Some(dir) => super::read_criterion(dir)?,
        None => Vec::new(),
    };
    let goals = goals::check(&runs, &host_results);
    match &o.out {
        Some(out) if o.peer => write_peer(out, &runs, &goals, &o.meta)?,
        Some(out) => write_outputs(out, &runs, &host_results, &goals)?,
        None => {}
    }
    println!("{:=^70}", " performance goals ");
    for g in &goals {
        println!("[{}] {}: {}", g.verdict.as_str(), g.id, g.description);
        for c in g.checks.iter().take(6) {
            println!("    {c}");
        }
        if g.checks.len() > 6 {
            println!("    ... {} more checks", g.checks.len() - 6);
        }
    }
    let problems = problems(&runs, &goals, &required);
    for p in &problems {
        println!("bench-report: {p}");
    }
    if let Some(out) = &o.out {
        let what = if o.peer {
            "peer.json and peer.md"
        } else {
            "results.json, results.md and the SVG plots"
        };
        println!("bench-report: wrote {what} in {}", out.display());
    }
    Ok(if problems.is_empty() { 0 } else { 1 })
}

fn write_peer(
    out: &Path,
    runs: &[KernelRun],
    goals: &[Goal],
    meta: &[(String, String)],
) -> Result<(), String> {
    fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mine: Vec<Goal> = goals
        .iter()
        .filter(|g| peer::GOALS.contains(&g.id) || g.id == goals::QEMU_COUNTS)
        .cloned()
        .collect();
    let json =
        serde_json::to_string_pretty(&peer::json(runs, &mine, meta)).map_err(|e| e.to_string())?;
    for (name, text) in [
        ("peer.json", json + "\n"),
        ("peer.md", peer::markdown(runs, &mine, meta)),
    ] {
        let p = out.join(name);
        fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

fn write_outputs(
    out: &Path,
    runs: &[KernelRun],
    host_results: &[HostResult],
    goals: &[Goal],
) -> Result<(), String> {
    let write = |name: &str, text: &str| {
        let p = out.join(name);
        fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let json = serde_json::to_string_pretty(&results_json(runs, host_results, goals))
        .map_err(|e| e.to_string())?;
    write("results.json", &(json + "\n"))?;
    write("results.md", &markdown(runs, host_results, goals))?;
    for (name, chart) in charts(runs, host_results) {
        write(name, &chart.render())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
# bench-counter unit=insns source=pmu-inst-retired width=64
KTAP version 1
1..2
  KTAP version 1
  1..1
    # bench name=boot.to_first_bench metric=boot value=1470693 unit=insns
  ok 1 to_first_bench
ok 1 boot
  KTAP version 1
  1..2
    # bench name=mm.map_unmap layout=pages pages=512 metric=map value=98480 unit=insns
    # bench name=mm.map_unmap layout=pages pages=512 metric=unmap value=160003 unit=insns
    # bench name=smmu.features smmu=mmio metric=range_invalidation value=1 unit=bool
    # bench name=smmu.unmap smmu=mmio strategy=per-page pages=16 metric=invalidate value=5414 unit=insns
    # bench name=smmu.unmap smmu=mmio strategy=per-page pages=16 metric=tlbi_va value=16 unit=commands
    # bench name=smmu.unmap smmu=mmio strategy=per-page pages=16 metric=sync value=1 unit=commands
    # bench name=smmu.unmap smmu=mmio strategy=per-page pages=16 metric=commands value=17 unit=commands
    # bench name=smmu.unmap smmu=mmio strategy=range pages=16 metric=invalidate value=2303 unit=insns
    # bench name=smmu.unmap smmu=mmio strategy=range pages=16 metric=tlbi_va_range value=1 unit=commands
    # bench name=smmu.unmap smmu=mmio strategy=range pages=16 metric=sync value=1 unit=commands
    # bench name=smmu.unmap smmu=mmio strategy=range pages=16 metric=commands value=2 unit=commands
    # bench name=smmu.unmap smmu=mmio strategy=floor pages=16 metric=invalidate value=2303 unit=insns
    # bench name=smmu.unmap smmu=mmio strategy=floor pages=16 metric=commands value=2 unit=commands
    # bench name=smmu.iotlb_hit_rate smmu=model strategy=per-page pages=16 metric=hit_rate value=1000 unit=permille
  ok 1 unmap
  ok 2 iotlb_hit_rate
ok 2 smmu
# shootdown: exit 0
";

    fn runs() -> Vec<KernelRun> {
        vec![KernelRun::parse("virt-smmu", LOG).unwrap()]
    }

    fn host_results() -> Vec<HostResult> {
        [
            ("interval_invalidation/tree/100000", 50.0),
            ("interval_invalidation/linear_scan/100000", 90_000.0),
            ("interval_invalidation/tree/10", 20.0),
            ("interval_invalidation/linear_scan/10", 10.0),
            ("dispatch/empty_call/start_end", 2.0),
            ("dispatch/start_end/never_subscribed", 3.0),
            ("invalidate_range_start_end/list/0", 3.0),
            ("invalidate_range_start_end/list/16", 30.0),
        ]
        .iter()
        .map(|(id, ns)| HostResult {
            id: id.to_string(),
            mean_ns: *ns,
            low_ns: *ns,
            high_ns: *ns,
        })
        .collect()
    }

    #[test]
    fn unmap_rows_carry_ratios_to_the_floor_and_hit_rates() {
        let rows = unmap_rows(&runs());
        assert_eq!(
            rows.len(),
            2,
            "the floor is a reference, not a row: {rows:?}"
        );
        let per_page = &rows[0];
        assert_eq!(
            (per_page.strategy.as_str(), per_page.commands),
            ("per-page", 17)
        );
        assert_eq!(per_page.commands_vs_floor, 8.5);
        assert_eq!(per_page.insns_vs_floor, Some(5414.0 / 2303.0));
        assert_eq!(per_page.unrelated_hit_permille, Some(1000));
        let range = &rows[1];
        assert_eq!((range.tlbi_va_range, range.sync), (1, 1));
        assert_eq!(range.insns_vs_floor, Some(1.0));
        assert_eq!(range.unrelated_hit_permille, None);
    }

    #[test]
    fn results_json_holds_goals_tables_and_raw_samples() {
        let runs = runs();
        let host = host_results();
        let goals = goals::check(&runs, &host);
        let text = serde_json::to_string(&results_json(&runs, &host, &goals)).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema"], "shootdown-bench/1");
        assert_eq!(v["boot_to_first_bench_insns"]["virt-smmu"], 1_470_693);
        assert_eq!(v["smmu_unmap"][0]["commands_vs_floor"], 8.5);
        assert_eq!(
            v["kernel"]["virt-smmu"]["samples"]
                .as_array()
                .unwrap()
                .len(),
            15
        );
        assert_eq!(v["kernel"]["virt-smmu"]["counter"]["unit"], "insns");
        let verdicts: Vec<_> = v["goals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| (g["id"].as_str().unwrap(), g["verdict"].as_str().unwrap()))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("ril_range_commands", "pass"),
                ("no_asid_below_512", "not measured"),
                ("qemu_counts", "not measured"),
                ("interval_100x", "pass"),
                ("empty_dispatch_2x", "pass"),
                ("shared_sync", "not measured"),
                ("per_page_100", "not measured"),
                ("free_cover", "not measured"),
                ("peer_commands", "not measured"),
                ("peer_insns", "not measured"),
                ("peer_faults", "not measured"),
            ]
        );
    }

    #[test]
    fn markdown_tables_show_every_row_and_goal() {
        let runs = runs();
        let md = markdown(
            &runs,
            &host_results(),
            &goals::check(&runs, &host_results()),
        );
        assert!(
            md.contains(
                "| virt-smmu | mmio | per-page | 16 | 16 / 0 / 0 + 1 | 17 (8.5×) | 5414 (2.4×) |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| virt-smmu | 1470693 | pages | 512 | 98480 | 160003 |"),
            "{md}"
        );
        assert!(md.contains("**not measured**"));
        assert!(md.contains("| SMMU | strategy | 16 pages |"), "{md}");
        assert!(
            md.contains("| mmio | per-page | 17 (8.5×) · 2.4× · 100% |"),
            "{md}"
        );
        assert!(
            md.contains("| mmio | range | 2 (1.0×) · 1.0× · – |"),
            "{md}"
        );
        assert!(md.contains("`interval_invalidation/tree/100000` | 50.00 ns"));
    }

    #[test]
    fn every_chart_renders_with_data() {
        let charts = charts(&runs(), &host_results());
        let names: Vec<_> = charts.iter().map(|c| c.0).collect();
        assert_eq!(
            names,
            [
                "smmu-commands.svg",
                "smmu-invalidate-insns.svg",
                "iotlb-hit-rate.svg",
                "map-unmap-insns.svg",
                "interval-invalidation.svg",
                "notifier-dispatch.svg"
            ]
        );
        for (name, chart) in &charts {
            assert!(!chart.series.is_empty(), "{name} has no data");
            roxmltree::Document::parse(&chart.render()).expect(name);
        }
    }

    #[test]
    fn missing_required_goals_failed_benchmarks_and_ticks_are_problems() {
        let runs = runs();
        let goals = goals::check(&runs, &[]);
        assert!(problems(&runs, &goals, &[]).is_empty());
        let required = required_goals(&["commands".into()]).unwrap();
        let p = problems(&runs, &goals, &required);
        assert_eq!(
            p,
            [
                "goal no_asid_below_512 was not measured",
                "goal qemu_counts was not measured",
                "goal free_cover was not measured"
            ]
        );
        assert!(required_goals(&["nonsense".into()]).is_err());
        let ticks =
            KernelRun::parse("b", &LOG.replace("unit=insns source", "unit=ticks source")).unwrap();
        assert!(problems(&[ticks], &goals, &[])[0].contains("ticks"));
        let failed =
            KernelRun::parse("b", &LOG.replace("  ok 1 unmap", "  not ok 1 unmap")).unwrap();
        assert!(problems(&[failed], &goals, &[])[0].contains("smmu.unmap"));
    }

    #[test]
    fn the_report_writes_its_files_and_fails_on_a_failed_goal() {
        let dir = std::env::temp_dir().join(format!("harness-bench-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("virt-smmu.log");
        fs::write(&log, LOG).unwrap();
        let o = ReportOptions {
            kernel_logs: vec![("virt-smmu".into(), log.clone())],
            out: Some(dir.join("out")),
            ..Default::default()
        };
        assert_eq!(run(&o), Ok(0));
        for f in [
            "results.json",
            "results.md",
            "smmu-commands.svg",
            "iotlb-hit-rate.svg",
        ] {
            assert!(dir.join("out").join(f).is_file(), "{f}");
        }
        // 3 range commands for 16 pages is within ceil(log2 16)+1 = 5, but with a per-page
        // command mixed in the RIL goal fails and so does the report.
        let bad = LOG.replace(
            "strategy=range pages=16 metric=commands value=2",
            "strategy=range pages=16 metric=commands value=3",
        );
        fs::write(&log, bad).unwrap();
        assert_eq!(
            run(&ReportOptions {
                out: None,
                ..o.clone()
            }),
            Ok(1)
        );
        let required = ReportOptions {
            require: vec!["all".into()],
            out: None,
            ..o
        };
        fs::write(&log, LOG).unwrap();
        assert_eq!(run(&required), Ok(1), "host goals were not measured");
        fs::remove_dir_all(&dir).unwrap();
    }
}
