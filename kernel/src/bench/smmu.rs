//! What keeping an SMMU coherent costs per unmap, for each invalidation strategy.
//!
//! * `smmu.unmap`: `munmap` of 1, 16, 512, 4095, 4096 and 262144 pages (4 KiB leaves) of an
//!   address space bound to a device (SVA) and active on this CPU. For each strategy: the commands the
//!   driver sent by kind, the CMDQ_PROD writes, the instructions of the whole `munmap`
//!   (`unmap`), and those of the same invalidation made directly through the driver
//!   (`invalidate`: planner, queue, MMIO, completion). Also measured: the same `munmap` with no
//!   SMMU bound (`smmu=none`), and the physical floor, one range command and one CMD_SYNC
//!   (`strategy=floor`). Run on the kernel's SMMU (`mmio`: QEMU's SMMUv3; `model`: the software
//!   model on the Pi, whose command processing runs on this CPU and is counted) and on a private
//!   model without range invalidation running Linux's policy (`model-noril`, strategy `auto`).
//! * `smmu.shared_sync`: every online CPU invalidates one page of its own context (the SMMU
//!   part of an unmap in its own address space) [`SHARED_ROUNDS`] times, all at once: the
//!   CMD_SYNCs sent per invalidation and the instructions per invalidation (every CPU's, over
//!   the whole run: under QEMU's round-robin `-icount` one vCPU runs at a time, so this is each
//!   invalidation's own cost), with CMD_SYNC sharing on and off (Linux's way), and the same on
//!   one CPU alone.
//! * `smmu.iotlb_hit_rate`: on the model, 64 unrelated pages of the same address space are
//!   cached in the IOTLB (device reads), a range is unmapped, and the unrelated pages are read
//!   again: the per-mille of those reads served from the IOTLB is what the strategy left alone.
//! * `smmu.free_cover`: `munmap` of [`COVER_PAGES`] pages (3 range commands exactly) with the
//!   page below and the page above it unmapped or mapped (`neighbours=`), with the planner's
//!   free cover on and off (`cover=`), strategy `range`: the commands by kind (counted by QEMU
//!   too on `mmio`), and on the model the hit rate of the mapped neighbours, read by the device
//!   before the unmap and again after it. Always 4095 pages, whatever `bench.pages=` says.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use super::mm::{map_aliased, map_unmap_once, AliasRun, Layout, VA};
use super::{fail, measure, sizes, Record};
use crate::arch::aarch64::{aspace, smp};
use crate::iommu::driver::planner::Strategy;
use crate::iommu::driver::{ContextId, ContextParams, SmmuConfig};
use crate::iommu::backend::model::ModelConfig;
use crate::iommu::probe::{self, Probe};
use crate::iommu::spec::command::CommandKind;
use crate::iommu::sva::SvaDomain;
use crate::ktest::{TestCtx, TestError, TestResult};
use crate::mm::pgtable::descriptor::MAIR_VALUE;
use crate::mm::{PhysAddr, VirtAddr, PAGE_SIZE};
use crate::iommu::spec::event::{AccessKind, EventKind};
use crate::rig::{faults, Outcome, Rig, TestModelDomain, RW};

const PAGE: u64 = PAGE_SIZE as u64;
/// The sizes, plus 4095: the worst case of the range decomposition (every low bit set),
/// where the RIL bound ceil(log2(pages)) + 1 actually constrains the planner.
const SIZES: [u64; 6] = [1, 16, 512, 4095, 4096, 262_144];
/// Unrelated pages kept warm in the IOTLB (QEMU's and the model's IOTLB hold 256 entries).
const UNRELATED: u64 = 64;
/// Where the unrelated pages are (another 1 GiB of the same address space).
const UNRELATED_VA: u64 = VA - (1 << 30);
/// Pages of the unmapped range the device touches before the unmap.
const TOUCHED: u64 = 64;
/// The floor's range: 16 pages at a 16-page boundary, one command (NUM = 0, SCALE = 4).
const FLOOR_PAGES: u64 = 16;

/// `smmu.free_cover`'s range: every low bit set, so the exact encoding takes 3 commands.
const COVER_PAGES: u64 = 4095;

/// Invalidations per CPU in `smmu.shared_sync`.
const SHARED_ROUNDS: u64 = 256;

/// Driver settings of the private model rigs: the kernel's queue sizes and timeouts, a small
/// stream table.
fn private_config() -> SmmuConfig {
    SmmuConfig {
        max_sid: 0x1f,
        ..SmmuConfig::default()
    }
}

/// A private model without range invalidation (`model-noril`), where Linux's policy goes
/// per-page, then ASID-wide.
fn model_without_ril() -> Result<Rig<TestModelDomain>, TestError> {
    let no_ril = ModelConfig {
        range_invalidation: false,
        ..ModelConfig::default()
    };
    Ok(Rig::model(no_ril, private_config())?)
}

/// The kernel's SMMU as benchmarks name it.
fn kernel_smmu_label() -> Option<&'static str> {
    match probe::probe_outcome() {
        Probe::Mmio { .. } => Some("mmio"),
        Probe::Model => Some("model"),
        Probe::Absent | Probe::Failed(_) => None,
    }
}

/// Keeps a rig's address space active on this CPU (so unmaps invalidate the CPU TLB too) and
/// deactivates it before the rig can tear it down.
struct Active;

impl Active {
    fn new<D: SvaDomain>(r: &Rig<D>) -> Result<Self, TestError> {
        aspace::activate(r.space()).map_err(|e| fail(alloc::format!("{e:?}")))?;
        Ok(Active)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        aspace::deactivate();
    }
}

pub(super) fn unmap(_t: &mut TestCtx) -> TestResult {
    let sizes = sizes(&SIZES)?;
    let run = AliasRun::new()?;
    for &pages in &sizes {
        let (_, unmap) = map_unmap_once(&run, Layout::Pages, pages)?;
        Record::new("smmu.unmap")
            .with("smmu", "none")
            .with("strategy", "none")
            .with("pages", pages)
            .emit("unmap", unmap);
    }
    if let Some(label) = kernel_smmu_label() {
        let mut r = Rig::board()?;
        unmap_on(&mut r, label, &Strategy::ALL, &run, &sizes)?;
    }
    let mut m = model_without_ril()?;
    unmap_on(&mut m, "model-noril", &[Strategy::Auto], &run, &sizes)
}

/// Runs the unmap measurements of `strategies` (those the SMMU supports) on rig `r`.
fn unmap_on<D: SvaDomain>(
    r: &mut Rig<D>,
    label: &str,
    strategies: &[Strategy],
    run: &AliasRun,
    sizes: &[u64],
) -> TestResult {
    r.bind()?;
    let ctx = r
        .bond()
        .and_then(|b| b.context())
        .ok_or_else(|| fail("bound without a context"))?;
    let _active = Active::new(r)?;
    let original = r.smmu.planner().strategy();
    let pa = PhysAddr(run.base().as_u64() + PAGE);
    let result = (|| {
        let ril = r.smmu.features().range_invalidation;
        // `harness bench-report` checks the RIL goal on the SMMUs that have it.
        Record::new("smmu.features").with("smmu", label).emit_unit(
            "range_invalidation",
            u8::from(ril),
            "bool",
        );
        for &strategy in strategies {
            if strategy == Strategy::Range && !ril {
                continue;
            }
            r.smmu.set_strategy(strategy).map_err(fail)?;
            for &pages in sizes {
                let (start, end) = (VirtAddr(VA), VirtAddr(VA + pages * PAGE));
                map_aliased(r.space(), VA, pages, pa, RW)?;
                let rec = Record::new("smmu.unmap")
                    .with("smmu", label)
                    .with("strategy", strategy.name())
                    .with("pages", pages);
                let before = r.smmu.stats();
                let notified = r.sva.stats().invalidations;
                let (unmapped, unmap) = rec.window(|| measure(|| r.unmap(VA, pages)))?;
                unmapped?;
                let after = r.smmu.stats();
                if r.sva.stats().invalidations != notified + 1 {
                    return Err(fail("one munmap must make exactly one SMMU invalidation"));
                }
                let (report, invalidate) = measure(|| r.smmu.invalidate_range(ctx, start, end))?;
                let report = report.map_err(fail)?;
                let c = |k: CommandKind| after.commands.get(k) - before.commands.get(k);
                if c(CommandKind::Sync) != 1 || report.commands.get(CommandKind::Sync) != 1 {
                    return Err(fail("an invalidation must end with exactly one CMD_SYNC"));
                }
                rec.emit("unmap", unmap);
                rec.emit("invalidate", invalidate);
                emit_commands(&rec, c);
                rec.emit_unit(
                    "prod_writes",
                    after.prod_writes - before.prod_writes,
                    "writes",
                );
            }
        }
        if ril {
            floor(r, label, ctx)?;
        }
        Ok(())
    })();
    r.smmu.set_strategy(original).map_err(fail)?;
    result
}

/// The commands of one unmap by kind (`count` gives each kind's), and their total.
fn emit_commands(rec: &Record, count: impl Fn(CommandKind) -> u64) {
    let kinds = [
        ("tlbi_va", CommandKind::TlbiNhVa),
        ("tlbi_va_range", CommandKind::TlbiNhVaRange),
        ("tlbi_asid", CommandKind::TlbiNhAsid),
        ("sync", CommandKind::Sync),
    ];
    let mut total = 0;
    for (metric, kind) in kinds {
        rec.emit_unit(metric, count(kind), "commands");
        total += count(kind);
    }
    rec.emit_unit("commands", total, "commands");
}

/// The cheapest possible invalidation: one range command and one CMD_SYNC.
fn floor<D: SvaDomain>(
    r: &Rig<D>,
    label: &str,
    ctx: crate::iommu::driver::ContextId,
) -> TestResult {
    r.smmu.set_strategy(Strategy::Range).map_err(fail)?;
    let (start, end) = (VirtAddr(VA), VirtAddr(VA + FLOOR_PAGES * PAGE));
    let (report, insns) = measure(|| r.smmu.invalidate_range(ctx, start, end))?;
    let report = report.map_err(fail)?;
    if report.commands.get(CommandKind::TlbiNhVaRange) != 1
        || report.commands.get(CommandKind::Sync) != 1
        || report.commands.total() != 2
    {
        return Err(fail(alloc::format!(
            "the floor must be one range command and one CMD_SYNC: {:?}",
            report.commands
        )));
    }
    let rec = Record::new("smmu.unmap")
        .with("smmu", label)
        .with("strategy", "floor")
        .with("pages", FLOOR_PAGES);
    rec.emit("invalidate", insns);
    rec.emit_unit("commands", 2, "commands");
    Ok(())
}

pub(super) fn shared_sync(_t: &mut TestCtx) -> TestResult {
    let (Some(label), Some(smmu)) = (kernel_smmu_label(), probe::smmu()) else {
        return Err(TestError::Skip("no SMMU on this board".into()));
    };
    // One address space and context per CPU; nothing is mapped, so nothing is attached.
    let spaces = (0..smp::online_count())
        .map(|_| aspace::create().map_err(|e| fail(alloc::format!("{e:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let mut contexts = Vec::new();
    for space in &spaces {
        let root = space.root().ok_or_else(|| fail("no page table"))?;
        let params = ContextParams {
            root,
            mair: MAIR_VALUE,
        };
        contexts.push(smmu.create_context(params).map_err(fail)?);
    }
    let result = (|| {
        shared_run(smmu, label, &contexts[..1], true, SHARED_ROUNDS)?;
        // Unrecorded: lets the driver see that every CPU invalidates (its sharing heuristic),
        // as in any steady state.
        shared_run(smmu, label, &contexts, true, SHARED_ROUNDS / 16)?;
        shared_run(smmu, label, &contexts, true, SHARED_ROUNDS)?;
        shared_run(smmu, label, &contexts, false, SHARED_ROUNDS)
    })();
    smmu.set_sync_sharing(true);
    for ctx in contexts {
        smmu.destroy_context(ctx).map_err(fail)?;
    }
    result
}

/// Each of `contexts`' CPUs (CPU i invalidates context i) invalidates one page `rounds` times,
/// all at once; recorded if `rounds` is [`SHARED_ROUNDS`].
fn shared_run(
    smmu: &'static probe::BoardSmmu,
    label: &str,
    contexts: &[ContextId],
    share: bool,
    rounds: u64,
) -> TestResult {
    smmu.set_sync_sharing(share);
    let errors = AtomicU64::new(0);
    let before = smmu.stats();
    let (start, end) = (VirtAddr(VA), VirtAddr(VA + PAGE));
    let ((), insns) = measure(|| {
        smp::on_each_cpu(&|cpu| {
            let Some(&ctx) = contexts.get(cpu) else {
                return;
            };
            for _ in 0..rounds {
                if smmu.invalidate_range(ctx, start, end).is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    })?;
    let after = smmu.stats();
    if errors.load(Ordering::Relaxed) != 0 {
        return Err(fail("an invalidation failed"));
    }
    if rounds != SHARED_ROUNDS {
        return Ok(());
    }
    let invalidations = rounds * contexts.len() as u64;
    let syncs = after.commands.get(CommandKind::Sync) - before.commands.get(CommandKind::Sync);
    let rec = Record::new("smmu.shared_sync")
        .with("smmu", label)
        .with("cpus", contexts.len())
        .with("sharing", if share { "on" } else { "off" });
    rec.emit_unit("invalidations", invalidations, "invalidations");
    rec.emit_unit("syncs", syncs, "commands");
    rec.emit_unit("shared", after.syncs_shared - before.syncs_shared, "invalidations");
    rec.emit("insns", insns);
    rec.emit("insns_per_invalidation", insns / invalidations);
    Ok(())
}

pub(super) fn iotlb_hit_rate(_t: &mut TestCtx) -> TestResult {
    let sizes = sizes(&SIZES)?;
    let run = AliasRun::new()?;
    if probe::model().is_some() {
        let mut r = Rig::board()?;
        hit_rates(&mut r, "model", &Strategy::ALL, &run, &sizes)?;
    } else {
        let mut r = Rig::model(ModelConfig::default(), private_config())?;
        hit_rates(&mut r, "model", &Strategy::ALL, &run, &sizes)?;
    }
    let mut r = model_without_ril()?;
    hit_rates(&mut r, "model-noril", &[Strategy::Auto], &run, &sizes)
}

fn hit_rates<D: SvaDomain>(
    r: &mut Rig<D>,
    label: &str,
    strategies: &[Strategy],
    run: &AliasRun,
    sizes: &[u64],
) -> TestResult {
    let model = r.model.ok_or_else(|| fail("not a model SMMU"))?;
    r.bind()?;
    // The unrelated pages: the first UNRELATED frames of the run, read by the device.
    map_aliased(r.space(), UNRELATED_VA, UNRELATED, run.base(), RW)?;
    let original = r.smmu.planner().strategy();
    let target = PhysAddr(run.base().as_u64() + PAGE);
    let touch = |r: &Rig<D>, va: u64, n: u64| -> Result<Vec<Outcome>, TestError> {
        (0..n)
            .map(|i| r.dev.fetch(va + i * PAGE, 4).map_err(TestError::from))
            .collect()
    };
    let result = (|| {
        for &strategy in strategies {
            if strategy == Strategy::Range && !r.smmu.features().range_invalidation {
                continue;
            }
            r.smmu.set_strategy(strategy).map_err(fail)?;
            for &pages in sizes {
                map_aliased(r.space(), VA, pages, target, RW)?;
                touch(r, UNRELATED_VA, UNRELATED)?;
                touch(r, VA, pages.min(TOUCHED))?;
                r.unmap(VA, pages)?;
                model.reset_stats();
                let after = touch(r, UNRELATED_VA, UNRELATED)?;
                let stats = model.stats();
                if after.iter().any(|o| *o != Outcome::Clean) {
                    return Err(fail("an unrelated page faulted"));
                }
                // The benchmark means something only if the invalidation was complete.
                if r.dev.fetch(VA, 4)? != Outcome::Faulted {
                    return Err(fail("the unmapped range is still reachable"));
                }
                if !model.stale_translations().is_empty() {
                    return Err(fail("the model's checker saw a stale translation"));
                }
                let rec = Record::new("smmu.iotlb_hit_rate")
                    .with("smmu", label)
                    .with("strategy", strategy.name())
                    .with("pages", pages);
                rec.emit_unit("hits", stats.iotlb_hits, "lookups");
                rec.emit_unit("misses", stats.iotlb_misses, "lookups");
                let per_mille = stats.iotlb_hits_per_mille().unwrap_or(0);
                rec.emit_unit("hit_rate", per_mille, "permille");
            }
        }
        Ok(())
    })();
    r.smmu.set_strategy(original).map_err(fail)?;
    r.drain_events();
    result
}

pub(super) fn free_cover(_t: &mut TestCtx) -> TestResult {
    let run = AliasRun::new()?;
    if let Some(label) = kernel_smmu_label() {
        let mut r = Rig::board()?;
        cover_cases(&mut r, label, &run)?;
    }
    if probe::model().is_none() {
        let mut m = Rig::model(ModelConfig::default(), private_config())?;
        cover_cases(&mut m, "model", &run)?;
    }
    Ok(())
}

/// `smmu.free_cover` on rig `r` (skipped without RIL: no range command to save).
fn cover_cases<D: SvaDomain>(r: &mut Rig<D>, label: &str, run: &AliasRun) -> TestResult {
    if !r.smmu.features().range_invalidation {
        return Ok(());
    }
    r.bind()?;
    let _active = Active::new(r)?;
    let original = r.smmu.planner();
    let result = (|| {
        r.smmu.set_strategy(Strategy::Range).map_err(fail)?;
        for mapped in [false, true] {
            for cover in [true, false] {
                r.smmu.set_free_cover(cover);
                cover_case(r, label, run, mapped, cover)?;
            }
        }
        Ok(())
    })();
    r.smmu.set_strategy(original.strategy()).map_err(fail)?;
    r.smmu.set_free_cover(original.free_cover());
    r.drain_events();
    result
}

/// One `smmu.free_cover` measurement.
fn cover_case<D: SvaDomain>(
    r: &Rig<D>,
    label: &str,
    run: &AliasRun,
    mapped: bool,
    cover: bool,
) -> TestResult {
    let neighbours = [VA - PAGE, VA + COVER_PAGES * PAGE];
    let pa = PhysAddr(run.base().as_u64() + PAGE);
    map_aliased(r.space(), VA, COVER_PAGES, pa, RW)?;
    // The device reads only on the model: on QEMU each edu read polls 100 ms of virtual time,
    // and QEMU's IOTLB hits are not counted anyway.
    let model = r.model;
    let read_neighbours = |r: &Rig<D>| -> Result<(), TestError> {
        for &n in neighbours.iter().filter(|_| mapped && model.is_some()) {
            if r.dev.fetch(n, 4)? != Outcome::Clean {
                return Err(fail("a mapped neighbour faulted"));
            }
        }
        Ok(())
    };
    if mapped {
        for n in neighbours {
            map_aliased(r.space(), n, 1, pa, RW)?;
        }
    }
    read_neighbours(r)?;
    let rec = Record::new("smmu.free_cover")
        .with("smmu", label)
        .with("neighbours", if mapped { "mapped" } else { "unmapped" })
        .with("cover", if cover { "on" } else { "off" })
        .with("pages", COVER_PAGES);
    let before = r.smmu.stats();
    rec.window(|| r.unmap(VA, COVER_PAGES))?;
    let after = r.smmu.stats();
    emit_commands(&rec, |k| after.commands.get(k) - before.commands.get(k));
    let covered = after.invalidations_covered - before.invalidations_covered;
    rec.emit_unit("covered", covered, "invalidations");
    if let Some(model) = model {
        model.reset_stats();
        read_neighbours(r)?;
        let stats = model.stats();
        // The numbers mean something only if the invalidation was complete.
        if r.dev.fetch(VA + (COVER_PAGES - 1) * PAGE, 4)? != Outcome::Faulted {
            return Err(fail("the unmapped range is still reachable"));
        }
        if !model.stale_translations().is_empty() {
            return Err(fail("the model's checker saw a stale translation"));
        }
        if mapped {
            rec.emit_unit("hits", stats.iotlb_hits, "lookups");
            rec.emit_unit("misses", stats.iotlb_misses, "lookups");
            let per_mille = stats.iotlb_hits_per_mille().unwrap_or(0);
            rec.emit_unit("hit_rate", per_mille, "permille");
        }
    }
    if mapped {
        for n in neighbours {
            r.unmap(n, 1)?;
        }
    }
    Ok(())
}

/// Pages the device reads before a `peer.unmap` unmap, spread over the region, as
/// tests/peer/vfio_unmap.c does on Linux (QEMU's IOTLB holds 256 entries).
const PEER_TOUCHED: u64 = 16;

/// `peer.unmap`: Shootdown's side of `make bench-peer`, the mirror of tests/peer/vfio_unmap.c
/// on Linux: the same sizes and IOVA, the device (edu on QEMU) reads up to [`PEER_TOUCHED`]
/// pages before the unmap and the first page after it, which must fault. Measured: `munmap`
/// of the bound address space, active on this CPU (page tables, CPU TLB, notifier, SMMU
/// commands and the wait for their CMD_SYNC), with the board SMMU's default strategy. Both
/// the unmap and the read after it run inside console windows for QEMU's trace.
pub(super) fn peer(_t: &mut TestCtx) -> TestResult {
    let label = kernel_smmu_label().ok_or_else(|| TestError::Skip("no SMMU".into()))?;
    let sizes = sizes(&SIZES)?;
    let run = AliasRun::new()?;
    let mut r = Rig::board()?;
    r.bind()?;
    let _active = Active::new(&r)?;
    let pa = PhysAddr(run.base().as_u64() + PAGE);
    for &pages in &sizes {
        map_aliased(r.space(), VA, pages, pa, RW)?;
        let touched = pages.min(PEER_TOUCHED);
        for k in 0..touched {
            r.dev.fetch(VA + k * pages / touched * PAGE, 4)?;
        }
        if !r.drain_events().is_empty() {
            return Err(fail("the device faulted before the unmap"));
        }
        let rec = Record::new("peer.unmap")
            .with("kernel", "shootdown")
            .with("smmu", label)
            .with("pages", pages);
        let before = r.smmu.stats();
        let (unmapped, unmap) = rec.window(|| measure(|| r.unmap(VA, pages)))?;
        unmapped?;
        let after = r.smmu.stats();
        Record::new("peer.after")
            .with("kernel", "shootdown")
            .with("smmu", label)
            .with("pages", pages)
            .window(|| r.dev.fetch(VA, 4))?;
        let events = r.drain_events();
        let faulted = faults(&events, EventKind::Translation, r.sid, VA, VA + PAGE, AccessKind::Read);
        rec.emit("unmap", unmap);
        emit_commands(&rec, |k| after.commands.get(k) - before.commands.get(k));
        rec.emit_unit("faulted_after", u8::from(faulted > 0), "bool");
        rec.emit_unit("touched", touched, "pages");
        if faulted == 0 {
            return Err(fail(alloc::format!(
                "{pages} pages: the device read the first page after the unmap without a fault"
            )));
        }
    }
    Ok(())
}
