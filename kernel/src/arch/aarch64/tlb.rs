//! TLB maintenance on the CPU: runs the page-table engine's portable plans
//! ([`crate::mm::pgtable::tlb::TlbPlan`]) with real `DSB`/`TLBI`/`ISB` instructions.
//!
//! The range forms (FEAT_TLBIRANGE) are written as `SYS` instructions so the kernel assembles
//! for Armv8.0 (Cortex-A72) and only executes them on CPUs whose `ID_AA64ISAR0_EL1.TLB` says
//! they exist (the policy never plans them otherwise). Encodings, Arm ARM C5.5 "A64 system
//! instructions for TLB maintenance": op0 = 1, op1 = 0, CRn = 8, CRm = 3 for the by-VA and
//! by-ASID forms, CRm = 2 for the range forms (op2 1 = RVAE1IS, 3 = RVAAE1IS, 5 = RVALE1IS,
//! 7 = RVAALE1IS).

use core::arch::asm;

use aarch64_cpu::registers::{Readable, ID_AA64ISAR0_EL1, ID_AA64MMFR2_EL1};

use crate::mm::pgtable::regs::tlb_features;
use crate::mm::pgtable::tlb::{TlbMaintenance, TlbOp, TlbPlan, TlbPolicy, Tlbi};

/// Runs TLB plans on this CPU (Inner Shareable operations reach every CPU).
pub struct HwTlb;

/// The TLB policy for the CPU we run on.
pub fn cpu_policy() -> TlbPolicy {
    TlbPolicy::new(tlb_features(ID_AA64ISAR0_EL1.get(), ID_AA64MMFR2_EL1.get()))
}

fn tlbi(op: Tlbi, x: u64) {
    // SAFETY: TLB maintenance (every arm) only drops cached translations; the operand is a
    // value, not a pointer.
    unsafe {
        match op {
            Tlbi::Vale1is => asm!("tlbi vale1is, {}", in(reg) x, options(nostack, preserves_flags)),
            Tlbi::Vae1is => asm!("tlbi vae1is, {}", in(reg) x, options(nostack, preserves_flags)),
            Tlbi::Vaale1is => {
                asm!("tlbi vaale1is, {}", in(reg) x, options(nostack, preserves_flags))
            }
            Tlbi::Vaae1is => asm!("tlbi vaae1is, {}", in(reg) x, options(nostack, preserves_flags)),
            Tlbi::Rvae1is => {
                asm!("sys #0, c8, c2, #1, {}", in(reg) x, options(nostack, preserves_flags))
            }
            Tlbi::Rvaae1is => {
                asm!("sys #0, c8, c2, #3, {}", in(reg) x, options(nostack, preserves_flags))
            }
            Tlbi::Rvale1is => {
                asm!("sys #0, c8, c2, #5, {}", in(reg) x, options(nostack, preserves_flags))
            }
            Tlbi::Rvaale1is => {
                asm!("sys #0, c8, c2, #7, {}", in(reg) x, options(nostack, preserves_flags))
            }
            Tlbi::Aside1is => {
                asm!("tlbi aside1is, {}", in(reg) x, options(nostack, preserves_flags))
            }
            Tlbi::Vmalle1is => asm!("tlbi vmalle1is", options(nostack, preserves_flags)),
        }
    }
}

impl TlbMaintenance for HwTlb {
    fn execute(&mut self, plan: &TlbPlan) {
        // The most common plan (one page, or a whole ASID) without the iterator: the same
        // operations in the same order as `plan.ops()` (host-tested in mm::pgtable::tlb).
        if let Some(TlbOp::Tlbi { op, operand }) = plan.single_tlbi() {
            super::cpu::dsb_ishst();
            tlbi(op, operand);
            super::cpu::dsb_ish();
            super::cpu::isb();
            return;
        }
        for op in plan.ops() {
            match op {
                TlbOp::DsbIshst => super::cpu::dsb_ishst(),
                TlbOp::Tlbi { op, operand } => tlbi(op, operand),
                TlbOp::DsbIsh => super::cpu::dsb_ish(),
                TlbOp::Isb => super::cpu::isb(),
            }
        }
    }
}
