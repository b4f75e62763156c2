//! The main job: the SVA coherence workload, what `make run` shows.
//!
//! A DMA master (QEMU's `edu` behind the real SMMUv3 on `virt`, the model DMA engine behind the
//! SMMU model on the Pi) is bound to an address space it shares with the CPUs. Each round, on
//! a CPU picked from the seed:
//!
//! 1. map a few pages (random count) at a random place, filled with random bytes;
//! 2. the device reads part of them through the shared VAs: the bytes must match;
//! 3. the device writes part of them: the CPU must read the new bytes through the same VAs;
//! 4. one page is unmapped, or made read-only (random);
//! 5. the device accesses it again: the access must fault (an SMMU event with the device's
//!    StreamID and the address) and must neither read nor write the old frame: a read that
//!    returns the old bytes, or a write that lands in the old frame, is a **stale access**;
//!    through a read-only page, reads must still work;
//! 6. everything is unmapped.
//!
//! The run ends with a summary and exits non-zero on any stale access, unexpected fault or
//! wrong data. `job=soak` runs the soak instead ([`crate::workload::soak`]: every CPU at once, optional
//! fault injection). Boot arguments: `rounds=N` (default 12), `seed=N` (printed; replays the run),
//! `smmu.strategy=per-page|range|asid|auto` (how the IOTLB is invalidated), `log=LEVEL`.

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use crate::arch::aarch64::aspace::{activate, deactivate};
use crate::arch::aarch64::{smp, timer};
use crate::board::BootArgs;
use crate::iommu::probe::{self, BoardDomain, EventDelivery};
use crate::iommu::spec::event::{AccessKind, EventKind};
use crate::ktest::TestCtx;
use crate::mm::PhysAddr;
use crate::println;
use crate::rig::{self, faults, Device, Outcome, Rig, RigError, PAGE, RO, RW};
use crate::rt::ExitCode;
use crate::sync::SpinLock;

/// Where rounds map their pages: 64 KiB slots below 2^28 (edu's default DMA reach), clear of
/// the rig's staging page.
const WINDOW: u64 = 0x0100_0000;
const SLOTS: u64 = 256;
const SLOT: u64 = 0x1_0000;
const MAX_PAGES: u64 = 8;

/// What the rounds counted.
#[derive(Debug, Default, Clone)]
struct Tally {
    rounds_per_cpu: Vec<u64>,
    dma_reads: u64,
    dma_writes: u64,
    faults_expected: u64,
    faults_seen: u64,
    /// Event records the faulting transfers must make (one per device transaction) and got.
    fault_events_expected: u64,
    fault_events_seen: u64,
    unexpected_faults: u64,
    stale_reads: u64,
    stale_writes: u64,
    wrong_data: u64,
    unmaps: u64,
    protects: u64,
    errors: Vec<alloc::string::String>,
}

impl Tally {
    fn stale(&self) -> u64 {
        self.stale_reads + self.stale_writes
    }
}

/// Runs the coherence job and returns the kernel's exit status.
pub fn run(args: &BootArgs) -> ExitCode {
    // The boot refused a bad seed= or rounds= before any workload started.
    let seed = args.seed.unwrap_or_else(timer::ticks);
    let rounds = args.rounds.unwrap_or(12);
    let mut rig = match Rig::<BoardDomain>::board() {
        Ok(r) => r,
        Err(RigError::Unavailable(why)) => {
            println!("shootdown: no SVA workload on this board: {why}");
            return ExitCode::Success;
        }
        Err(e) => {
            println!("shootdown: setting up the workload failed: {e}");
            return ExitCode::Failure;
        }
    };
    let strategy = rig.smmu.strategy();
    println!(
        "shootdown: SVA coherence workload: seed={seed} rounds={rounds} strategy={strategy:?} \
         device={} (StreamID {:#x})",
        rig.dev.name(),
        rig.sid
    );
    if let Err(e) = rig.bind() {
        println!("shootdown: binding the device failed: {e}");
        return ExitCode::Failure;
    }
    let smmu_before = rig.smmu.stats();
    let mut ctx = TestCtx::new(seed, "job", "sva");
    let cpus = smp::online_count();
    // One CPU at a time runs a round; the lock hands the rig and the counters over.
    let state = SpinLock::new((
        rig,
        Tally {
            rounds_per_cpu: alloc::vec![0; cpus],
            ..Tally::default()
        },
    ));
    for round in 0..rounds {
        let cpu = ctx.rand_range(0, cpus as u64) as usize;
        let round_seed = ctx.rand();
        smp::on_each_cpu(&|me| {
            if me != cpu {
                return;
            }
            let mut guard = state.lock();
            let (rig, t) = &mut *guard;
            t.rounds_per_cpu[me] += 1;
            if let Err(e) = one_round(rig, round_seed, t) {
                t.errors
                    .push(alloc::format!("round {round} on CPU {me}: {e}"));
            }
        });
    }
    let mut guard = state.lock();
    let (rig, tally) = &mut *guard;
    let tally = tally.clone();
    let space = rig.space();
    let (mapped, unmapped) = (
        space.stats().pages_mapped.load(Ordering::Relaxed),
        space.stats().pages_unmapped.load(Ordering::Relaxed),
    );
    let (ranges, secondary, cpu_tlbi) = (
        space.stats().range_invalidations.load(Ordering::Relaxed),
        space
            .stats()
            .secondary_invalidations
            .load(Ordering::Relaxed),
        space.stats().cpu_invalidations.load(Ordering::Relaxed),
    );
    let model_stale = rig.model.map_or(0, |m| m.stale_translations().len() as u64);
    let model_stats = rig.model.map(|m| m.stats());
    let event_losses = rig.event_losses();
    if let Err(e) = rig.unbind() {
        println!("shootdown: unbinding the device failed: {e}");
        return ExitCode::Failure;
    }
    rig.teardown();
    let sva = rig.sva.stats();
    let smmu = rig.smmu.stats();
    let mut commands = smmu.commands;
    commands.subtract(&smmu_before.commands);

    let stale = tally.stale() + model_stale;
    let ok = stale == 0
        && event_losses == 0
        && tally.fault_events_seen == tally.fault_events_expected
        && tally.unexpected_faults == 0
        && tally.wrong_data == 0
        && tally.errors.is_empty();
    println!("shootdown: workload summary (replay with seed={seed} rounds={rounds})");
    println!(
        "  cpus             {cpus} online; rounds per CPU {:?}",
        tally.rounds_per_cpu
    );
    println!("  pages            mapped {mapped}, unmapped {unmapped}");
    println!(
        "  notifier         invalidate_range_start/end {ranges}, arch_invalidate_secondary_tlbs \
         {secondary}, release {} (CPU TLB invalidations {cpu_tlbi})",
        sva.releases
    );
    println!("  smmu commands    {commands}");
    println!(
        "  invalidations    per-page {}, range {}, asid {} (strategy {strategy:?}; {} skipped after release)",
        smmu.invalidations_per_page - smmu_before.invalidations_per_page,
        smmu.invalidations_range - smmu_before.invalidations_range,
        smmu.invalidations_asid - smmu_before.invalidations_asid,
        sva.invalidations_skipped,
    );
    println!(
        "  dma transfers    {} (device reads {}, device writes {})",
        tally.dma_reads + tally.dma_writes,
        tally.dma_reads,
        tally.dma_writes
    );
    println!(
        "  faults           expected {}, seen {}, unexpected {}; events {} of {} (one per faulting \
         transaction), lost {event_losses} times",
        tally.faults_expected,
        tally.faults_seen,
        tally.unexpected_faults,
        tally.fault_events_seen,
        tally.fault_events_expected
    );
    let (eventq_irqs, ..) = probe::interrupt_counts();
    println!(
        "  event delivery   {}; {eventq_irqs} eventq interrupts",
        match probe::event_delivery() {
            EventDelivery::Interrupt { .. } => "interrupt",
            EventDelivery::Polling(_) => "polling",
        }
    );
    println!(
        "  stale accesses   {stale} (reads {}, writes {}, model checker {model_stale})",
        tally.stale_reads, tally.stale_writes
    );
    if let Some(m) = model_stats {
        println!(
            "  iotlb (model)    hits {}, misses {}",
            m.iotlb_hits, m.iotlb_misses
        );
    }
    if tally.wrong_data != 0 {
        println!("  wrong data       {} transfers", tally.wrong_data);
    }
    for e in &tally.errors {
        println!("  error            {e}");
    }
    println!("  result           {}", if ok { "PASS" } else { "FAIL" });
    if ok {
        ExitCode::Success
    } else {
        ExitCode::Failure
    }
}

fn random_bytes(ctx: &mut TestCtx, len: usize) -> Vec<u8> {
    (0..len).map(|_| ctx.rand() as u8).collect()
}

/// The events of the device's stream since the last drain, classified against what one step
/// expected: returns how many were the expected fault; counts anything else as unexpected.
fn check_events(
    rig: &Rig<BoardDomain>,
    t: &mut Tally,
    expect: Option<(EventKind, u64, u64, AccessKind)>,
) -> u64 {
    let events = rig.drain_events();
    let (matching, total) = match expect {
        Some((kind, start, end, access)) => (
            faults(&events, kind, rig.sid, start, end, access),
            events.len(),
        ),
        None => (0, events.len()),
    };
    if total > matching {
        t.unexpected_faults += 1;
        t.errors.push(alloc::format!(
            "unexpected SMMU events: {:?}",
            &events[..events.len().min(3)]
        ));
    }
    matching as u64
}

/// Counts a transfer of `len` bytes within `page_va`'s page that must fault with `kind`:
/// expected once, seen if the SMMU reported it (and nothing else) or the device saw the fault;
/// each of its transactions must have made one event record.
fn expect_fault(
    rig: &Rig<BoardDomain>,
    t: &mut Tally,
    outcome: Outcome,
    kind: EventKind,
    (page_va, len): (u64, usize),
    access: AccessKind,
) {
    t.faults_expected += 1;
    let reported = check_events(rig, t, Some((kind, page_va, page_va + PAGE, access)));
    t.faults_seen += u64::from(reported > 0 || outcome == Outcome::Faulted);
    t.fault_events_expected += len.div_ceil(rig.dev.transaction_size()) as u64;
    t.fault_events_seen += reported;
}

fn one_round(rig: &mut Rig<BoardDomain>, seed: u64, t: &mut Tally) -> Result<(), RigError> {
    let mut ctx = TestCtx::new(seed, "job", "round");
    let pages = ctx.rand_range(1, MAX_PAGES + 1);
    let va = WINDOW + ctx.rand_range(0, SLOTS) * SLOT;
    let frames = rig.map(va, pages, RW, 0)?;
    let contents: Vec<Vec<u8>> = frames
        .iter()
        .map(|_| random_bytes(&mut ctx, PAGE as usize))
        .collect();
    for (f, c) in frames.iter().zip(&contents) {
        rig::write(*f, c)?;
    }
    activate(rig.space()).map_err(|e| rig::fail(alloc::format!("activate: {e:?}")))?;
    let result = round_body(rig, &mut ctx, t, va, &frames, &contents);
    deactivate();
    result
}

fn round_body(
    rig: &Rig<BoardDomain>,
    ctx: &mut TestCtx,
    t: &mut Tally,
    va: u64,
    frames: &[PhysAddr],
    contents: &[Vec<u8>],
) -> Result<(), RigError> {
    let pages = frames.len() as u64;
    let dev: &Device = &rig.dev;
    let pick = |ctx: &mut TestCtx| {
        let page = ctx.rand_range(0, pages);
        let len = ctx.rand_range(64, PAGE + 1) as usize & !3;
        let off = ctx.rand_range(0, PAGE - len as u64 + 1) & !3;
        (page, off, len)
    };
    check_events(rig, t, None);

    // The device reads what the CPU put there.
    let (p, off, len) = pick(ctx);
    dev.fetch(va + p * PAGE + off, len)?;
    t.dma_reads += 1;
    let got = rig.read_buffer(len)?;
    if got[..] != contents[p as usize][off as usize..off as usize + len] {
        t.wrong_data += 1;
        t.errors.push(alloc::format!(
            "device read of {:#x} returned other bytes",
            va + p * PAGE + off
        ));
    }
    check_events(rig, t, None);

    // The device writes; the CPU sees it through the same virtual address.
    let (p, off, len) = pick(ctx);
    let data = random_bytes(ctx, len);
    rig.load_buffer(&data)?;
    dev.store(va + p * PAGE + off, len)?;
    t.dma_writes += 1;
    let at = va + p * PAGE + off;
    // Reading the shared pages back through the CPU is the point of the check.
    #[allow(unsafe_code)]
    let cpu_view: Vec<u8> = (0..len as u64)
        // SAFETY: the page is mapped in the address space active on this CPU.
        .map(|i| unsafe { core::ptr::read_volatile((at + i) as *const u8) })
        .collect();
    if cpu_view != data {
        t.wrong_data += 1;
        t.errors.push(alloc::format!(
            "the CPU does not see the device's write at {at:#x}"
        ));
    }
    check_events(rig, t, None);

    // Take one page away, or make it read-only, and try again.
    let k = ctx.rand_range(0, pages);
    let page_va = va + k * PAGE;
    let old = rig::read(frames[k as usize], PAGE as usize)?;
    let (_, off, len) = pick(ctx);
    if ctx.rand() % 2 == 0 {
        t.unmaps += 1;
        unmap_noting_model(rig, page_va, 1)?;
        // A read must fault, not return the old bytes.
        let outcome = dev.fetch(page_va + off, len)?;
        t.dma_reads += 1;
        let got = rig.read_buffer(len)?;
        expect_fault(
            rig,
            t,
            outcome,
            EventKind::Translation,
            (page_va, len),
            AccessKind::Read,
        );
        if got[..] == old[off as usize..off as usize + len] {
            t.stale_reads += 1;
        }
        // A write must fault, not land in the old frame.
        rig.load_buffer(&random_bytes(ctx, len))?;
        let outcome = dev.store(page_va + off, len)?;
        t.dma_writes += 1;
        expect_fault(
            rig,
            t,
            outcome,
            EventKind::Translation,
            (page_va, len),
            AccessKind::Write,
        );
        if rig::read(frames[k as usize], PAGE as usize)? != old {
            t.stale_writes += 1;
        }
        unmap_rest(rig, va, pages, Some(k))
    } else {
        t.protects += 1;
        rig.protect(page_va, 1, RO)?;
        // A write must fault and leave the frame alone.
        rig.load_buffer(&random_bytes(ctx, len))?;
        let outcome = dev.store(page_va + off, len)?;
        t.dma_writes += 1;
        expect_fault(
            rig,
            t,
            outcome,
            EventKind::Permission,
            (page_va, len),
            AccessKind::Write,
        );
        if rig::read(frames[k as usize], PAGE as usize)? != old {
            t.stale_writes += 1;
        }
        // Reads still work.
        dev.fetch(page_va + off, len)?;
        t.dma_reads += 1;
        if rig.read_buffer(len)?[..] != old[off as usize..off as usize + len] {
            t.wrong_data += 1;
            t.errors.push(alloc::format!(
                "device read of read-only {:#x} returned other bytes",
                page_va + off
            ));
        }
        check_events(rig, t, None);
        unmap_rest(rig, va, pages, None)
    }
}

/// Unmaps `pages` pages at `va`, telling the model (if the SMMU is one) which unmap it was, so
/// that a stale translation its checker catches names it.
fn unmap_noting_model(rig: &Rig<BoardDomain>, va: u64, pages: u64) -> Result<(), RigError> {
    static NEXT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let asid = rig.bond().and_then(|b| b.asid()).unwrap_or(0);
    let (start, end) = (
        crate::mm::VirtAddr(va),
        crate::mm::VirtAddr(va + pages * PAGE),
    );
    if let Some(m) = rig.model {
        m.begin_unmap(asid, start, end, id);
    }
    let r = rig.unmap(va, pages);
    if let Some(m) = rig.model {
        m.end_unmap(id);
    }
    r
}

/// Unmaps the round's pages, except `gone` (already unmapped): the runs on either side of it.
fn unmap_rest(
    rig: &Rig<BoardDomain>,
    va: u64,
    pages: u64,
    gone: Option<u64>,
) -> Result<(), RigError> {
    let runs = match gone {
        None => [(0, pages), (0, 0)],
        Some(g) => [(0, g), (g + 1, pages)],
    };
    for (first, end) in runs {
        if end > first {
            unmap_noting_model(rig, va + first * PAGE, end - first)?;
        }
    }
    Ok(())
}
