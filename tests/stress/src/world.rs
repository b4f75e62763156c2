//! The world a stress run lives in: one arena of "RAM" holding the page tables, the data frames
//! and the SMMU driver's structures; the SMMU model over it with the real driver and SVA on
//! top; address spaces on the host [`ArenaPlatform`] (never activated on a CPU, so no CPU TLB).
//!
//! SVA needs `'static` SMMUs named by a type ([`SvaDomain`]); each run leaks its world and
//! takes one of [`DOMAINS`] domain slots, so a process runs at most that many.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use shootdown::iommu::backend::model::{ModelConfig, SmmuModel};
use shootdown::iommu::backend::Clock;
use shootdown::iommu::driver::{Smmu, SmmuConfig};
use shootdown::iommu::fake::PhysArena;
use shootdown::iommu::sva::{Sva, SvaDomain};
use shootdown::mm::fake::ArenaPlatform;
use shootdown::mm::PhysAddr;

/// Where the arena's RAM starts (QEMU `virt`'s RAM base).
const ARENA_BASE: u64 = 0x4000_0000;

/// The driver's clock: wall time (the stress runs on real threads, and a timeout is real).
pub struct WallClock(Instant);

impl Clock for WallClock {
    fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

pub type StressSmmu = Smmu<'static, &'static SmmuModel<'static>, WallClock>;

/// The host platform: the run's arena; CPU TLB maintenance is nothing (no address space is
/// ever active on a host thread).
pub type StressPlatform = ArenaPlatform<&'static PhysArena>;

/// The SMMU of one run.
pub struct World {
    pub mem: &'static PhysArena,
    pub model: &'static SmmuModel<'static>,
    pub smmu: &'static StressSmmu,
    pub platform: &'static StressPlatform,
}

/// How many runs one process can hold (each leaks its world into a domain slot).
pub const DOMAINS: usize = 8;
static SLOTS: [OnceLock<&'static Sva>; DOMAINS] = [const { OnceLock::new() }; DOMAINS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

/// The SMMU of domain slot `N`.
pub struct Domain<const N: usize>;

impl<const N: usize> SvaDomain for Domain<N> {
    fn sva() -> Option<&'static Sva> {
        SLOTS[N].get().copied()
    }
}

fn leak<T>(t: T) -> &'static T {
    Box::leak(Box::new(t))
}

/// Builds a world of `frames` frames in a fresh domain slot; returns the slot's number.
pub fn build(frames: usize) -> Result<(usize, World), String> {
    let slot = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
    if slot >= DOMAINS {
        return Err(format!("at most {DOMAINS} runs per process"));
    }
    let mem = leak(PhysArena::new(PhysAddr(ARENA_BASE), frames).map_err(|e| e.to_string())?);
    let model = leak(SmmuModel::new(mem, ModelConfig::default()).map_err(|e| e.to_string())?);
    let smmu: &'static StressSmmu = leak(
        Smmu::new(
            model,
            WallClock(Instant::now()),
            mem,
            mem,
            SmmuConfig::default(),
        )
        .map_err(|e| e.to_string())?,
    );
    let sva: &'static Sva = leak(Sva::new(smmu, "stress"));
    SLOTS[slot]
        .set(sva)
        .map_err(|_| format!("domain slot {slot} taken twice"))?;
    let platform = leak(ArenaPlatform::new(mem));
    Ok((
        slot,
        World {
            mem,
            model,
            smmu,
            platform,
        },
    ))
}
