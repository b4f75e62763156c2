//! Address spaces on the CPU: the kernel's [`MmPlatform`] (RAM through the linear map, the
//! frame allocator, real TLB instructions) and running an address space on a CPU (ASID +
//! `TTBR0_EL1`).
//!
//! A CPU holds what it runs as a [`Loaded`] in its slot (see "Loaded on a CPU" in
//! [`crate::mm::aspace`]): taken before TTBR0 selects the tables, dropped only after TTBR0
//! stopped selecting them, so no teardown frees tables a CPU may walk. The same slot tells the
//! exception handler whose access flag to set on an Access-flag fault.

use alloc::sync::Arc;

use aarch64_cpu::registers::{Readable, ID_AA64MMFR0_EL1};

use crate::mm::asid::{AsidAllocator, AsidError};
use crate::mm::aspace::{AddressSpace, Loaded, MmError, MmPlatform, MmUser};
use crate::mm::layout::MAX_CPUS;
use crate::mm::pgtable::regs::{asid_bits_from_mmfr0, mmu_config, ttbr, Ttbr1};
use crate::mm::pgtable::switch::{self, SysRegs};
use crate::mm::pgtable::tlb::{TlbMaintenance, TlbPlan, TlbPolicy};
use crate::mm::phys::{FrameAllocator, OutOfFrames, PhysMemory};
use crate::mm::ram::{frames, LinearMap, RamFrames};
use crate::mm::{PhysAddr, VirtAddr};

use super::cpu::{cpu_id, dsb_ish};
use super::switch::HwSysRegs;
use super::tlb::{cpu_policy, HwTlb};

/// The kernel's address-space platform.
pub struct CpuMm {
    asids: AsidAllocator,
    policy: TlbPolicy,
    /// Physical address bits of this CPU (ID_AA64MMFR0_EL1.PARange, capped at 48).
    pa_bits: u32,
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
        let mmfr0 = ID_AA64MMFR0_EL1.get();
        let bits = asid_bits_from_mmfr0(mmfr0);
        CpuMm {
            asids: AsidAllocator::new(bits, MAX_CPUS).expect("MAX_CPUS leaves room for ASIDs"),
            policy: cpu_policy(),
            // The kernel runs on this CPU, so its PARange is one the MMU accepted at boot.
            pa_bits: mmu_config(mmfr0, Ttbr1::Enabled)
                .map(|c| c.pa_bits)
                .expect("boot/entry.S programmed TCR from this PARange"),
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
        let invalidates = plan.invalidates();
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

    fn pa_bits(&self) -> u32 {
        self.pa_bits
    }

    fn sync_icache(&self, pa: PhysAddr, len: usize) {
        // Cache maintenance by VA goes through the linear map, which holds all of RAM; what is
        // not RAM was never written through the kernel's caches.
        if let Some(va) = LinearMap.bytes(pa, len) {
            super::cpu::sync_icache(va as u64, len);
        }
    }
}

/// A new kernel address space.
pub fn create() -> Result<MmUser<CpuMm>, MmError> {
    AddressSpace::create(cpu_mm())
}

/// What each CPU has loaded in TTBR0. Only the CPU itself changes its slot; its exception
/// handler reads it.
static LOADED: [spin::Mutex<Option<Loaded<CpuMm>>>; MAX_CPUS] =
    [const { spin::Mutex::new(None) }; MAX_CPUS];

/// Runs `aspace` on this CPU: loads it (a user reference, so it cannot be torn down while this
/// CPU may walk it), takes an ASID (flushing the local TLB after a rollover) and switches
/// `TTBR0_EL1` to it. Translations of the lower half come from it until [`deactivate`] or the
/// next `activate`, which releases it only after TTBR0 stopped selecting it.
pub fn activate(aspace: &Arc<CpuAddressSpace>) -> Result<(), ActivateError> {
    let cpu = cpu_id();
    if runs_here(cpu, aspace) {
        // As Linux's switch_mm with prev == next: nothing to switch. Its ASID is still its own
        // (a rollover keeps the one a CPU runs), and a second load would be refused.
        return Ok(());
    }
    let loaded = aspace.load(cpu).map_err(ActivateError::Load)?;
    let a = cpu_mm()
        .asids
        .activate(cpu, aspace.asid_context())
        .map_err(ActivateError::Asid)?;
    // The ASID store is visible before this CPU walks the tables (pairs with the barrier the
    // unmap path makes before reading the ASID: see MmPlatform::full_barrier).
    dsb_ish();
    if a.flush_local_tlb {
        HwSysRegs.run_all(&switch::flush_local_tlb());
    }
    HwSysRegs.run_all(&switch::load_ttbr0(ttbr(loaded.root(), a.asid)));
    let previous = LOADED[cpu].lock().replace(loaded);
    drop(previous);
    Ok(())
}

fn runs_here(cpu: usize, aspace: &Arc<CpuAddressSpace>) -> bool {
    LOADED[cpu]
        .lock()
        .as_ref()
        .is_some_and(|loaded| Arc::ptr_eq(loaded.space(), aspace))
}

/// Stops this CPU from translating the lower half (TTBR0 := the reserved empty table, walks
/// off), then releases what it had loaded.
pub fn deactivate() {
    HwSysRegs.run_all(&switch::unload_ttbr0(super::mmu::reserved_table_pa()));
    let previous = LOADED[cpu_id()].lock().take();
    drop(previous);
}

/// Whether this CPU has an address space loaded.
pub fn loaded_here() -> bool {
    LOADED[cpu_id()].lock().is_some()
}

/// Answers an Access-flag fault at `far` taken on this CPU: sets the flag in the address space
/// loaded here. False if there is none, the address is not in it, or the fault came from inside
/// `activate`/`deactivate` (their slot is busy): then it is reported as unexpected.
pub fn answer_access_flag_fault(far: u64) -> bool {
    let Some(slot) = LOADED[cpu_id()].try_lock() else {
        return false;
    };
    let Some(loaded) = slot.as_ref() else {
        return false;
    };
    loaded.space().mark_young(VirtAddr(far)).is_ok()
}

/// Why an address space could not be activated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivateError {
    /// It cannot be loaded (it exited, or this CPU number is out of range).
    Load(MmError),
    /// The ASID allocator refused (an unknown CPU).
    Asid(AsidError),
}
