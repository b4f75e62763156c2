//! Shared set-up for the SMMU integration tests and the benchmark: physical memory (an arena),
//! the SMMU model, the driver on top of it, one address space (test page tables) bound to one
//! device through a context.
//!
//! Included with `#[path = "smmu_support.rs"] mod support;`; not a test target by itself.
#![allow(dead_code)]

use shootdown::iommu::backend::inject::InjectingBackend;
use shootdown::iommu::backend::SmmuBackend;
use shootdown::iommu::driver::{
    ContextId, ContextParams, InvalidationReport, Smmu, SmmuConfig, SmmuError,
};
use shootdown::iommu::fake::{LeafAttrs, PhysArena, StepClock, TestPageTables};
use shootdown::iommu::backend::model::dma::DmaEngine;
use shootdown::iommu::backend::model::{ModelConfig, SmmuModel};
use shootdown::iommu::spec::event::EventRecord;
use shootdown::mm::phys::FrameAllocator;
use shootdown::mm::{PhysAddr, VirtAddr, PAGE_SIZE};

/// The StreamID of the test device (edu at 00:02.0 on QEMU virt).
pub const SID: u32 = 0x10;
/// Base of the test VA region.
pub const VA: u64 = 0x0000_7f00_0000_0000;
/// MAIR_EL1 value handed to the CD (slot 0 normal write-back, as the kernel uses).
pub const MAIR: u64 = 0xff;

/// Physical memory for one test: 16 MiB at 1 GiB.
pub fn arena() -> PhysArena {
    PhysArena::new(PhysAddr(0x4000_0000), 4096).unwrap()
}

/// Driver settings for tests: short timeouts (a [`StepClock`] read costs 1 µs, so 2 ms is
/// 2000 polls).
pub fn smmu_config() -> SmmuConfig {
    SmmuConfig {
        sync_timeout_ns: 2_000_000,
        ack_timeout_ns: 2_000_000,
        ..SmmuConfig::default()
    }
}

pub type TestSmmu<'a> = Smmu<'a, &'a SmmuModel<'a>, &'a StepClock>;

/// Everything one scenario needs. The driver talks to the model through `B`: the model itself,
/// or something wrapping it (the fault injector).
pub struct World<'a, B: SmmuBackend = &'a SmmuModel<'a>> {
    pub mem: &'a PhysArena,
    pub model: &'a SmmuModel<'a>,
    pub clock: &'a StepClock,
    pub smmu: &'a Smmu<'a, B, &'a StepClock>,
    pub tables: &'a TestPageTables<'a>,
    pub ctx: ContextId,
    pub asid: u16,
    next_unmap: core::cell::Cell<u64>,
}

/// Builds a world (model with `model_cfg`, driver with `smmu_cfg`, one context attached to
/// [`SID`]) and runs `f` in it.
pub fn with_world<R>(
    model_cfg: ModelConfig,
    smmu_cfg: SmmuConfig,
    f: impl FnOnce(&World<'_>) -> R,
) -> R {
    let mem = arena();
    let model = SmmuModel::new(&mem, model_cfg).unwrap();
    run_world(&mem, &model, &model, smmu_cfg, |world| f(world))
}

/// As [`with_default_world`], with the driver reaching the model through the fault injector,
/// which `f` also gets to arm.
pub fn with_injecting_world<R>(
    f: impl FnOnce(&World<'_, &InjectingBackend<'_>>, &InjectingBackend<'_>) -> R,
) -> R {
    let mem = arena();
    let model = SmmuModel::new(&mem, ModelConfig::default()).unwrap();
    let inject = InjectingBackend::new(&model, &mem);
    run_world(&mem, &model, &inject, smmu_config(), |world| {
        f(world, &inject)
    })
}

/// The driver on `backend` with one context attached to [`SID`], and `f` run in that world.
pub fn run_world<'a, B: SmmuBackend, R>(
    mem: &'a PhysArena,
    model: &'a SmmuModel<'a>,
    backend: B,
    smmu_cfg: SmmuConfig,
    f: impl FnOnce(&World<'_, B>) -> R,
) -> R {
    let clock = StepClock::new(1_000);
    let smmu = Smmu::new(backend, &clock, mem, mem, smmu_cfg).unwrap();
    let tables = TestPageTables::new(mem).unwrap();
    let ctx = smmu
        .create_context(ContextParams {
            root: tables.root(),
            mair: MAIR,
        })
        .unwrap();
    smmu.attach(SID, ctx).unwrap();
    let asid = smmu.context_asid(ctx).unwrap();
    let world = World {
        mem,
        model,
        clock: &clock,
        smmu: &smmu,
        tables: &tables,
        ctx,
        asid,
        next_unmap: 1.into(),
    };
    f(&world)
}

/// The default world: QEMU-like model, default driver settings.
pub fn with_default_world<R>(f: impl FnOnce(&World<'_>) -> R) -> R {
    with_world(ModelConfig::default(), smmu_config(), f)
}

impl<B: SmmuBackend> World<'_, B> {
    /// The test device, doing page-sized transactions and stopping at the first fault.
    pub fn dma(&self) -> DmaEngine<'_, '_> {
        DmaEngine::new(self.model, SID)
    }

    /// Maps `pages` pages at `va` to fresh frames, each filled with its index + `seed`.
    pub fn map_pages(&self, va: u64, pages: u64, attrs: LeafAttrs, seed: u8) -> Vec<PhysAddr> {
        (0..pages)
            .map(|i| {
                let frame = self.mem.alloc_zeroed().unwrap();
                self.mem
                    .fill_frame(frame, seed.wrapping_add(i as u8))
                    .unwrap();
                self.tables
                    .map(VirtAddr(va + i * PAGE_SIZE as u64), frame, attrs)
                    .unwrap();
                frame
            })
            .collect()
    }

    /// The kernel's unmap path in miniature: clear the PTEs, tell the checker, invalidate
    /// through the driver (what `arch_invalidate_secondary_tlbs` will do) and return the
    /// driver's report.
    pub fn unmap(&self, va: u64, pages: u64) -> InvalidationReport {
        self.try_unmap(va, pages).unwrap()
    }

    /// As [`World::unmap`], returning the driver's error.
    pub fn try_unmap(&self, va: u64, pages: u64) -> Result<InvalidationReport, SmmuError> {
        for i in 0..pages {
            self.tables
                .unmap(VirtAddr(va + i * PAGE_SIZE as u64))
                .unwrap();
        }
        self.try_invalidate(va, pages)
    }

    /// Notes an unmap/protection change of `[va, va + pages)` and invalidates it.
    pub fn invalidate(&self, va: u64, pages: u64) -> InvalidationReport {
        self.try_invalidate(va, pages).unwrap()
    }

    /// As [`World::invalidate`], returning the driver's error.
    pub fn try_invalidate(&self, va: u64, pages: u64) -> Result<InvalidationReport, SmmuError> {
        let (start, end) = (VirtAddr(va), VirtAddr(va + pages * PAGE_SIZE as u64));
        let id = self.next_unmap.get();
        self.next_unmap.set(id + 1);
        self.model.note_unmap(self.asid, start, end, id);
        self.smmu.invalidate_range(self.ctx, start, end)
    }

    /// Every pending event.
    pub fn events(&self) -> Vec<EventRecord> {
        let mut out = Vec::new();
        self.smmu.drain_events(|e| out.push(*e)).unwrap();
        out
    }

    /// The byte at `pa`.
    pub fn byte(&self, pa: PhysAddr) -> u8 {
        let mut b = [0u8];
        self.mem.read(pa, &mut b).unwrap();
        b[0]
    }

    /// Returns `frame` to the arena.
    pub fn free_frame(&self, frame: PhysAddr) {
        self.mem.free(frame);
    }
}
