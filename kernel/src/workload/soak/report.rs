//! What a soak run found: the report, its verdict, and the summary printed at the end.

use super::*;

/// What a soak run counted.
#[derive(Debug, Default, Clone)]
pub struct SoakReport {
    pub cpus: usize,
    pub rounds_per_cpu: Vec<u64>,
    pub maps: u64,
    pub unmaps: u64,
    pub protects: u64,
    pub dma_reads: u64,
    pub dma_writes: u64,
    pub faults_expected: u64,
    pub faults_seen: u64,
    pub unexpected_faults: u64,
    pub stale_reads: u64,
    pub stale_writes: u64,
    pub model_stale: u64,
    pub wrong_data: u64,
    pub notifier_inserts: u64,
    pub notifier_removes: u64,
    pub notifier_invalidations: u64,
    pub lost_invalidations: u64,
    pub rebinds: u64,
    pub slowest_ticks: u64,
    pub slowest_what: String,
    /// The driver's slowest IOTLB invalidation (queue wait, TLBIs, CMD_SYNC), ns.
    pub slowest_smmu_ns: u64,
    pub elapsed_ms: u64,
    pub injected: Vec<(Fault, u64, u64)>,
    pub errors: Vec<String>,
}

impl SoakReport {
    /// Stale accesses of every kind.
    pub fn stale(&self) -> u64 {
        self.stale_reads + self.stale_writes + self.model_stale
    }

    /// Operations on the address space (maps, unmaps, protection changes, notifier
    /// insertions and removals).
    pub fn operations(&self) -> u64 {
        self.maps + self.unmaps + self.protects + self.notifier_inserts + self.notifier_removes
    }

    /// (injected, survived) over every kind.
    pub fn faults_total(&self) -> (u64, u64) {
        self.injected
            .iter()
            .fold((0, 0), |(i, s), (_, fi, fs)| (i + fi, s + fs))
    }

    /// True if nothing went wrong.
    pub fn passed(&self) -> bool {
        let (injected, survived) = self.faults_total();
        self.stale() == 0
            && self.wrong_data == 0
            && self.unexpected_faults == 0
            && self.lost_invalidations == 0
            && self.errors.is_empty()
            && injected == survived
    }
}

pub(super) fn print_summary(p: &SoakParams, r: &SoakReport) {
    let freq = timer::frequency().max(1);
    let (injected, survived) = r.faults_total();
    let replay = if p.faults.enabled() {
        format!(
            " fault={} fault.seed={} fault.rate={}",
            p.faults.kinds, p.faults.seed, p.faults.rate_per_mille
        )
    } else {
        String::new()
    };
    println!(
        "shootdown: soak summary (replay with job=soak seed={} rounds={}{replay})",
        p.seed, p.rounds
    );
    println!(
        "  cpus             {} concurrently; rounds per CPU {:?}; {} ms",
        r.cpus, r.rounds_per_cpu, r.elapsed_ms
    );
    println!(
        "  operations       {} (maps {}, unmaps {}, mprotects {}, interval inserts {}, removes {})",
        r.operations(),
        r.maps,
        r.unmaps,
        r.protects,
        r.notifier_inserts,
        r.notifier_removes
    );
    println!(
        "  interval notif.  inserted {}, removed {}, invalidations seen {}, lost {}",
        r.notifier_inserts, r.notifier_removes, r.notifier_invalidations, r.lost_invalidations
    );
    println!(
        "  dma transfers    {} (device reads {}, device writes {})",
        r.dma_reads + r.dma_writes,
        r.dma_reads,
        r.dma_writes
    );
    println!(
        "  faults           expected {}, seen {}, unexpected {}",
        r.faults_expected, r.faults_seen, r.unexpected_faults
    );
    println!(
        "  stale accesses   {} (reads {}, writes {}, model checker {})",
        r.stale(),
        r.stale_reads,
        r.stale_writes,
        r.model_stale
    );
    println!(
        "  slowest inval.   SMMU {} us (driver: command-queue wait + TLBIs + CMD_SYNC); \
         munmap/mprotect {} us = {} counter ticks at {} Hz ({}; notifier, CPU TLBI, SMMU, locks)",
        r.slowest_smmu_ns / 1_000,
        r.slowest_ticks * 1_000_000 / freq,
        r.slowest_ticks,
        freq,
        r.slowest_what
    );
    if p.faults.enabled() {
        let mut per = String::new();
        for (f, i, s) in &r.injected {
            per.push_str(&format!("{f} {s}/{i}, "));
        }
        println!(
            "  injected faults  {injected}, survived {survived} ({}rebinds after a broken context {})",
            per, r.rebinds
        );
    }
    if r.wrong_data != 0 {
        println!("  wrong data       {} transfers", r.wrong_data);
    }
    for e in r.errors.iter().take(20) {
        println!("  error            {e}");
    }
    let result = if r.passed() { "PASS" } else { "FAIL" };
    println!("  result           {result}");
    // One line for scripts (make soak).
    println!(
        "# soak cpus={} seed={} rounds={} operations={} dmas={} faults_expected={} faults_seen={} \
         stale={} notifier_inserts={} notifier_removes={} notifier_invalidations={} slowest_ticks={} \
         slowest_us={} slowest_smmu_us={} elapsed_ms={} injected={injected} survived={survived} result={result}",
        r.cpus,
        p.seed,
        p.rounds,
        r.operations(),
        r.dma_reads + r.dma_writes,
        r.faults_expected,
        r.faults_seen,
        r.stale(),
        r.notifier_inserts,
        r.notifier_removes,
        r.notifier_invalidations,
        r.slowest_ticks,
        r.slowest_ticks * 1_000_000 / freq,
        r.slowest_smmu_ns / 1_000,
        r.elapsed_ms,
    );
}

impl Soak<'_> {
    pub(super) fn report(&self, rounds: &[AtomicU64]) -> SoakReport {
        let c = &self.c;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let injected = Fault::ALL
            .into_iter()
            .map(|f| {
                let (i, s) = self.injected.get(f);
                (f, i, s)
            })
            .filter(|(_, i, _)| *i > 0)
            .collect();
        SoakReport {
            cpus: self.cpus,
            rounds_per_cpu: rounds.iter().map(get).collect(),
            maps: get(&c.maps),
            unmaps: get(&c.unmaps),
            protects: get(&c.protects),
            dma_reads: get(&c.dma_reads),
            dma_writes: get(&c.dma_writes),
            faults_expected: get(&c.faults_expected),
            faults_seen: get(&c.faults_seen),
            unexpected_faults: get(&c.unexpected_faults),
            stale_reads: get(&c.stale_reads),
            stale_writes: get(&c.stale_writes),
            model_stale: 0,
            wrong_data: get(&c.wrong_data),
            notifier_inserts: get(&c.inserts),
            notifier_removes: get(&c.removes),
            notifier_invalidations: 0,
            lost_invalidations: get(&c.lost_invalidations),
            rebinds: get(&c.rebinds),
            slowest_ticks: get(&c.slowest_ticks),
            slowest_what: self.slowest.lock().clone(),
            slowest_smmu_ns: self.rig.smmu.stats().slowest_invalidation_ns,
            elapsed_ms: 0,
            injected,
            errors: Vec::new(),
        }
    }
}
