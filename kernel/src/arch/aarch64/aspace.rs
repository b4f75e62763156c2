//! Address spaces on the CPU: the kernel's [`MmPlatform`] (RAM through the linear map, the
//! frame allocator, real TLB instructions) and running an address space on a CPU (ASID +
//! `TTBR0_EL1`).

use aarch64_cpu::registers::{
    ReadWriteable, Readable, Writeable, ID_AA64MMFR0_EL1, TCR_EL1, TTBR0_EL1,
};

use crate::mm::asid::{AsidAllocator, AsidBits, AsidError};
use crate::mm::aspace::{AddressSpace, MmError, MmPlatform, MmUser};
use crate::mm::layout::MAX_CPUS;
use crate::mm::pgtable::regs::ttbr;
use crate::mm::pgtable::tlb::{TlbMaintenance, TlbPlan, TlbPolicy};
use crate::mm::phys::{FrameAllocator, OutOfFrames};
use crate::mm::ram::{frames, LinearMap, RamFrames};
use crate::mm::PhysAddr;

use super::cpu::{cpu_id, dsb_ish, isb};
use super::tlb::{cpu_policy, HwTlb};

/// The kernel's address-space platform.
pub struct CpuMm {
    asids: AsidAllocator,
    policy: TlbPolicy,
    /// Test knob: CPU TLB invalidations are skipped (shows the TLB tests can fail).
    skip_cpu_tlbi: core::sync::atomic::AtomicBool,
    /// CPU TLB invalidation plans executed (and skipped by the knob).
    plans: [core::sync::atomic::AtomicU64; 2],
}

/// An address space of the kernel.
pub type CpuAddressSpace = AddressSpace<CpuMm>;

static CPU_MM: spin::Once<CpuMm> = spin::Once::new();

/// The platform (created on first use, after frames exist).
pub fn cpu_mm() -> &'static CpuMm {
    CPU_MM.call_once(|| {
        // ID_AA64MMFR0_EL1.ASIDBits (Arm ARM D19.2): 0b0010 = 16 bits, else 8.
        let bits = if (ID_AA64MMFR0_EL1.get() >> 4) & 0xf == 0b0010 {
            AsidBits::Sixteen
        } else {
            AsidBits::Eight
        };
        CpuMm {
            asids: AsidAllocator::new(bits, MAX_CPUS).expect("MAX_CPUS leaves room for ASIDs"),
            policy: cpu_policy(),
            skip_cpu_tlbi: core::sync::atomic::AtomicBool::new(false),
            plans: [const { core::sync::atomic::AtomicU64::new(0) }; 2],
        }
    })
}

impl CpuMm {
    /// Turns the CPU TLB invalidations off or on (tests only: proves the TLB test notices).
    pub fn set_skip_cpu_tlbi(&self, skip: bool) {
        self.skip_cpu_tlbi
            .store(skip, core::sync::atomic::Ordering::SeqCst);
    }

    /// CPU TLB invalidation plans (executed, skipped by the knob) so far.
    pub fn tlb_plans(&self) -> (u64, u64) {
        use core::sync::atomic::Ordering::Relaxed;
        (self.plans[0].load(Relaxed), self.plans[1].load(Relaxed))
    }
}

/// The kernel's frames as address spaces see them: with the `alloc` fault-injection point
/// ([`crate::mm::inject::arm_alloc_failure`]), which fails nothing unless a CPU armed it.
#[derive(Clone, Copy)]
pub struct AspaceFrames(&'static RamFrames);

impl FrameAllocator for AspaceFrames {
    fn alloc_zeroed(&self) -> Result<PhysAddr, OutOfFrames> {
        if crate::mm::inject::alloc_should_fail(cpu_id()) {
            return Err(OutOfFrames);
        }
        self.0.alloc_zeroed()
    }

    fn free(&self, frame: PhysAddr) {
        self.0.free(frame)
    }
}

impl MmPlatform for CpuMm {
    type Mem = LinearMap;
    type Frames = AspaceFrames;

    fn memory(&self) -> LinearMap {
        LinearMap
    }

    fn frames(&self) -> AspaceFrames {
        AspaceFrames(frames().expect("address spaces exist only after the frame allocator"))
    }

    fn asids(&self) -> &AsidAllocator {
        &self.asids
    }

    fn tlb_policy(&self) -> TlbPolicy {
        self.policy
    }

    fn run_tlb_plan(&self, plan: &TlbPlan) {
        use core::sync::atomic::Ordering::Relaxed;
        let invalidates = plan.tlbi_count() > 0;
        if invalidates && self.skip_cpu_tlbi.load(Relaxed) {
            self.plans[1].fetch_add(1, Relaxed);
            dsb_ish();
            return;
        }
        if invalidates {
            self.plans[0].fetch_add(1, Relaxed);
        }
        HwTlb.execute(plan);
    }

    fn full_barrier(&self) {
        dsb_ish();
    }
}

/// A new kernel address space.
pub fn create() -> Result<MmUser<CpuMm>, MmError> {
    AddressSpace::create(cpu_mm())
}

/// Runs `aspace` on this CPU: takes an ASID (flushing the local TLB after a rollover) and
/// loads `TTBR0_EL1`. Translations of the lower half come from it until [`deactivate`].
pub fn activate(aspace: &CpuAddressSpace) -> Result<(), ActivateError> {
    let root = aspace.root().ok_or(ActivateError::Exited)?;
    let a = cpu_mm()
        .asids
        .activate(cpu_id(), aspace.asid_context())
        .map_err(ActivateError::Asid)?;
    // The ASID store is visible before this CPU walks the tables (pairs with the barrier the
    // unmap path makes before reading the ASID: see MmPlatform::full_barrier).
    dsb_ish();
    if a.flush_local_tlb {
        super::mmu::flush_local_tlb();
    }
    TTBR0_EL1.set(ttbr(root, a.asid));
    TCR_EL1.modify(TCR_EL1::EPD0::EnableTTBR0Walks);
    isb();
    Ok(())
}

/// Stops this CPU from translating the lower half (no address space active).
pub fn deactivate() {
    TCR_EL1.modify(TCR_EL1::EPD0::DisableTTBR0Walks);
    TTBR0_EL1.set(0);
    isb();
}

/// Why an address space could not be activated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivateError {
    /// It has no page table any more.
    Exited,
    /// The ASID allocator refused (an unknown CPU).
    Asid(AsidError),
}
