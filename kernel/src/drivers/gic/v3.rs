//! GICv3 (IHI 0069): the distributor with affinity routing, this CPU's redistributor, and the
//! system-register CPU interface (ICC_*_EL1).
//!
//! Interrupts are Non-secure group 1, signalled as IRQ at EL1 through ICC_IAR1_EL1. With
//! `virtualization=on` the kernel enters at EL2 and `boot/entry.S` sets ICC_SRE_EL2.{SRE,Enable}
//! before dropping to EL1 (HCR_EL2.IMO = 0: physical IRQs are taken at EL1).

use core::arch::asm;

use crate::arch::aarch64::cpu;
use crate::arch::aarch64::io::IoWindow;
use crate::arch::aarch64::timer;
use crate::board::dt;

use super::dist::{self, CTLR};
use super::{GicError, PRIORITY_MASK};

/// GICD_CTLR (IHI 0069 §12.9.4): RWP [31]; ARE (ARE_NS) [4]; EnableGrp1 (EnableGrp1A) [1];
/// EnableGrp0 (EnableGrp1 as the Non-secure side sees it) [0]. Linux sets all three.
const CTLR_RWP: u32 = 1 << 31;
const CTLR_ARE: u32 = 1 << 4;
const CTLR_ENABLE_GROUPS: u32 = (1 << 1) | 1;
/// GICD_IROUTER<n> (§12.9.22): 64-bit, one per SPI, at 0x6000 + 8n.
const IROUTER: usize = 0x6000;

/// Redistributor RD_base frame (§12.11): GICR_TYPER, GICR_WAKER.
const GICR_TYPER: usize = 0x08;
const GICR_WAKER: usize = 0x14;
const TYPER_VLPIS: u64 = 1 << 1;
const TYPER_LAST: u64 = 1 << 4;
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
/// RD_base + SGI_base: two 64 KiB frames; two more (VLPI, reserved) with GICv4's VLPIS.
const REDIST_STRIDE: u64 = 0x2_0000;

/// How long a register write may stay pending, or a redistributor asleep.
const TIMEOUT_NS: u64 = 100_000_000;

pub(super) struct GicV3 {
    dist: IoWindow,
    lines: u32,
}

impl GicV3 {
    pub(super) fn init(desc: &dt::Gic) -> Result<Self, GicError> {
        let dist =
            IoWindow::map(desc.distributor.base, desc.distributor.size).map_err(GicError::Map)?;
        let gic = Self {
            lines: dist::lines(&dist),
            dist,
        };
        gic.enable_distributor()?;
        wake_redistributor(desc.cpu_or_redist, cpu::mpidr())?;
        enable_cpu_interface()?;
        Ok(gic)
    }

    pub(super) fn lines(&self) -> u32 {
        self.lines
    }

    /// Affinity routing on (it may only change while both groups are disabled), then the
    /// groups; each write waits for GICD_CTLR.RWP.
    fn enable_distributor(&self) -> Result<(), GicError> {
        if self.dist.read32(CTLR) & CTLR_ARE == 0 {
            self.dist.write32(CTLR, 0);
            self.wait_for_rwp()?;
            self.dist.write32(CTLR, CTLR_ARE);
            self.wait_for_rwp()?;
        }
        self.dist
            .write32(CTLR, self.dist.read32(CTLR) | CTLR_ARE | CTLR_ENABLE_GROUPS);
        self.wait_for_rwp()
    }

    fn wait_for_rwp(&self) -> Result<(), GicError> {
        wait(|| self.dist.read32(CTLR) & CTLR_RWP == 0).ok_or(GicError::WritePending)
    }

    pub(super) fn enable_spi(&self, intid: u32, edge: bool, priority: u8) -> Result<(), GicError> {
        dist::disable(&self.dist, intid);
        self.wait_for_rwp()?;
        dist::set_group(&self.dist, intid, true);
        dist::configure(&self.dist, intid, edge, priority);
        // Aff3.Aff2.Aff1.Aff0 of this CPU with Interrupt_Routing_Mode 0: this CPU only.
        self.dist
            .write64(IROUTER + 8 * intid as usize, cpu::mpidr());
        dist::enable(&self.dist, intid);
        Ok(())
    }

    pub(super) fn disable(&self, intid: u32) {
        dist::disable(&self.dist, intid);
        // The caller goes on as if masked: wait until it is (best effort in a handler).
        let _ = self.wait_for_rwp();
    }

    /// ICC_IAR1_EL1: the INTID (bits [23:0]), now active. The DSB makes the acknowledge
    /// complete before the handler touches the device (as Linux's `gic_read_iar`).
    pub(super) fn acknowledge(&self) -> u32 {
        let iar: u64;
        // SAFETY: reading ICC_IAR1_EL1 (op0=3 op1=0 CRn=12 CRm=12 op2=0) acknowledges the
        // highest-priority pending group 1 interrupt; ICC_SRE_EL1.SRE was checked in `init`.
        unsafe { asm!("mrs {}, S3_0_C12_C12_0", "dsb sy", out(reg) iar, options(nostack)) };
        (iar & 0xff_ffff) as u32
    }

    /// ICC_EOIR1_EL1 (op2=1): priority drop and deactivation (ICC_CTLR_EL1.EOImode = 0).
    pub(super) fn end_of_interrupt(&self, intid: u32) {
        // SAFETY: ends the interrupt this CPU acknowledged; no memory effect.
        unsafe {
            asm!("msr S3_0_C12_C12_1, {}", "isb", in(reg) u64::from(intid), options(nostack))
        };
    }
}

/// Polls `done` for up to [`TIMEOUT_NS`].
fn wait(mut done: impl FnMut() -> bool) -> Option<()> {
    let deadline = timer::now_ns().saturating_add(TIMEOUT_NS);
    loop {
        if done() {
            return Some(());
        }
        if timer::now_ns() >= deadline {
            return None;
        }
        core::hint::spin_loop();
    }
}

/// GICR_TYPER.Affinity [63:32] as Aff3.Aff2.Aff1.Aff0 for an MPIDR (Aff3 is MPIDR [39:32]).
fn typer_affinity(mpidr: u64) -> u64 {
    ((mpidr >> 32) & 0xff) << 24 | (mpidr & 0xff_ffff)
}

/// Finds the redistributor of the CPU with `mpidr` in `region` and wakes it
/// (GICR_WAKER.ProcessorSleep = 0, then ChildrenAsleep reads 0; §12.11.42): a sleeping
/// redistributor forwards no interrupt to its CPU interface.
fn wake_redistributor(region: dt::Range, mpidr: u64) -> Result<(), GicError> {
    let rd = IoWindow::map(region.base, region.size).map_err(GicError::Map)?;
    let mut off = 0u64;
    while off + REDIST_STRIDE <= region.size {
        let typer = rd.read64(off as usize + GICR_TYPER);
        if typer >> 32 == typer_affinity(mpidr) {
            let waker = off as usize + GICR_WAKER;
            rd.write32(waker, rd.read32(waker) & !WAKER_PROCESSOR_SLEEP);
            return wait(|| rd.read32(waker) & WAKER_CHILDREN_ASLEEP == 0)
                .ok_or(GicError::RedistributorAsleep);
        }
        if typer & TYPER_LAST != 0 {
            break;
        }
        off += if typer & TYPER_VLPIS != 0 {
            2 * REDIST_STRIDE
        } else {
            REDIST_STRIDE
        };
    }
    Err(GicError::NoRedistributor { mpidr })
}

/// The system-register CPU interface (§12.2): SRE on, priority mask, no preemption groups
/// (BPR1 = 0), EOImode 0, group 1 enabled.
fn enable_cpu_interface() -> Result<(), GicError> {
    let sre: u64;
    // SAFETY: ICC_SRE_EL1 (S3_0_C12_C12_5): setting SRE selects the system-register interface
    // for this CPU; if EL2 forbids it the bit stays 0, checked below. No memory effect.
    unsafe {
        asm!(
            "mrs {t}, S3_0_C12_C12_5",
            "orr {t}, {t}, #1",
            "msr S3_0_C12_C12_5, {t}",
            "isb",
            "mrs {t}, S3_0_C12_C12_5",
            t = out(reg) sre,
            options(nostack)
        )
    };
    if sre & 1 == 0 {
        return Err(GicError::NoSystemRegisters);
    }
    let pmr = u64::from(PRIORITY_MASK);
    // SAFETY: ICC_PMR_EL1 (S3_0_C4_C6_0), ICC_BPR1_EL1 (S3_0_C12_C12_3), ICC_CTLR_EL1
    // (S3_0_C12_C12_4) and ICC_IGRPEN1_EL1 (S3_0_C12_C12_7) configure this CPU's interface
    // only; SRE is set. IRQs stay masked in PSTATE, so nothing is taken here.
    unsafe {
        asm!(
            "msr S3_0_C4_C6_0, {pmr}",
            "msr S3_0_C12_C12_3, xzr",
            "msr S3_0_C12_C12_4, xzr",
            "msr S3_0_C12_C12_7, {one}",
            "isb",
            pmr = in(reg) pmr,
            one = in(reg) 1u64,
            options(nostack)
        )
    };
    Ok(())
}
