//! Power and exit: PSCI (CPU_ON, SYSTEM_OFF, SYSTEM_RESET) through the conduit the device tree
//! names, and semihosting SYS_EXIT so that QEMU exits with the kernel's status.
//!
//! PSCI function IDs and semantics: Arm DEN0022 (PSCI), via the `smccc` crate. Semihosting:
//! Arm "Semihosting for AArch32 and AArch64" (SYS_EXIT = 0x18, ADP_Stopped_ApplicationExit =
//! 0x20026; on AArch64 the parameter block carries the exit status).

use core::sync::atomic::{AtomicU8, Ordering};

use smccc::psci;
use smccc::{Hvc, Smc};

use super::exceptions::{self, Fault, TrapFrame};

/// How PSCI calls reach the firmware (device tree `/psci` `method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    /// `hvc #0` (QEMU virt without EL2).
    Hvc,
    /// `smc #0` (QEMU virt with `virtualization=on`, real firmware).
    Smc,
}

static CONDUIT: AtomicU8 = AtomicU8::new(0);

/// Records the PSCI conduit (or `None`: no PSCI, e.g. the Raspberry Pi).
pub fn set_psci(conduit: Option<Conduit>) {
    let v = match conduit {
        None => 0,
        Some(Conduit::Hvc) => 1,
        Some(Conduit::Smc) => 2,
    };
    CONDUIT.store(v, Ordering::Relaxed);
}

/// The PSCI conduit, if there is PSCI.
pub fn psci() -> Option<Conduit> {
    match CONDUIT.load(Ordering::Relaxed) {
        1 => Some(Conduit::Hvc),
        2 => Some(Conduit::Smc),
        _ => None,
    }
}

/// PSCI CPU_ON: start the CPU `mpidr` at physical `entry` with `context` in x0.
pub fn cpu_on(mpidr: u64, entry: u64, context: u64) -> Result<(), psci::error::Error> {
    match psci() {
        Some(Conduit::Hvc) => psci::cpu_on::<Hvc>(mpidr, entry, context),
        Some(Conduit::Smc) => psci::cpu_on::<Smc>(mpidr, entry, context),
        None => Err(psci::error::Error::NotSupported),
    }
}

/// PSCI SYSTEM_OFF (returns only if there is no PSCI or it failed).
pub fn system_off() {
    let _ = match psci() {
        Some(Conduit::Hvc) => psci::system_off::<Hvc>(),
        Some(Conduit::Smc) => psci::system_off::<Smc>(),
        None => Ok(()),
    };
}

/// PSCI SYSTEM_RESET (returns only if there is no PSCI or it failed).
pub fn system_reset() {
    let _ = match psci() {
        Some(Conduit::Hvc) => psci::system_reset::<Hvc>(),
        Some(Conduit::Smc) => psci::system_reset::<Smc>(),
        None => Ok(()),
    };
}

core::arch::global_asm!(
    ".section .text",
    ".global __semihost_call",
    "__semihost_call:", // (op, param) -> result, or u64::MAX if semihosting is off
    ".global __semihost_insn",
    "__semihost_insn:",
    "    hlt #0xf000",
    "    ret",
);

extern "C" {
    fn __semihost_call(op: u64, param: u64) -> u64;
    static __semihost_insn: u8;
}

/// Without `-semihosting` (and on real hardware with no debugger) `HLT` is an undefined
/// instruction: step over it and report failure instead of crashing.
fn semihosting_unavailable(frame: &mut TrapFrame, fault: Fault) -> bool {
    let insn = core::ptr::addr_of!(__semihost_insn) as u64;
    if fault.ec() == 0x00 && frame.elr == insn {
        frame.elr += 4;
        frame.x[0] = u64::MAX;
        return true;
    }
    false
}

/// Installs the exception hook that makes semihosting calls fail safely when unavailable.
pub fn init() {
    exceptions::add_hook(semihosting_unavailable);
}

/// Semihosting SYS_EXIT with `status`; returns if semihosting is not available.
pub fn semihosting_exit(status: u32) {
    const SYS_EXIT: u64 = 0x18;
    const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x20026;
    let block = [ADP_STOPPED_APPLICATION_EXIT, u64::from(status)];
    // SAFETY: SYS_EXIT reads the two-word block we pass; without semihosting the hook above
    // turns the HLT into a failed call.
    unsafe { __semihost_call(SYS_EXIT, block.as_ptr() as u64) };
}
