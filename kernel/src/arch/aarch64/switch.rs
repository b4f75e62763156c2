//! Runs the table-switch sequences of [`crate::mm::pgtable::switch`] on this CPU, exactly as
//! built there (where the host tests check every intermediate state), and records what ran
//! when asked to (the KTAP cases assert the sequence the CPU executed).
//!
//! A TTBR1 replacement cannot run from the kernel's own addresses: between its break and its
//! make the kernel is unmapped. It runs from the identity map (TTBR0 mapping this image's text
//! at its physical address) through `idmap_run_ops` in `boot/entry.S`, which takes the
//! operations in registers and touches no memory (Linux's `idmap_cpu_replace_ttbr1`).

use alloc::vec::Vec;

use aarch64_cpu::registers::{ReadWriteable, Writeable, TCR_EL1, TTBR0_EL1, TTBR1_EL1};

use crate::mm::layout::MAX_CPUS;
use crate::mm::pgtable::switch::{SysOp, SysRegs};
use crate::symbol_addr;

use super::cpu::{cpu_id, isb};

/// Per CPU: the operations run since recording started, if it did.
static RECORDS: [spin::Mutex<Option<Vec<SysOp>>>; MAX_CPUS] =
    [const { spin::Mutex::new(None) }; MAX_CPUS];

fn record(ops: &[SysOp]) {
    if let Some(log) = RECORDS[cpu_id()].lock().as_mut() {
        log.extend_from_slice(ops);
    }
}

/// Runs `f` and returns what it returned together with the table-switch operations this CPU
/// ran meanwhile.
pub fn recording<R>(f: impl FnOnce() -> R) -> (R, Vec<SysOp>) {
    *RECORDS[cpu_id()].lock() = Some(Vec::new());
    let r = f();
    let ops = RECORDS[cpu_id()].lock().take().unwrap_or_default();
    (r, ops)
}

/// This CPU's system registers.
pub struct HwSysRegs;

impl SysRegs for HwSysRegs {
    fn run(&mut self, op: SysOp) {
        match op {
            SysOp::Ttbr0(v) => TTBR0_EL1.set(v),
            SysOp::Ttbr1(v) => TTBR1_EL1.set(v),
            SysOp::Epd0(true) => TCR_EL1.modify(TCR_EL1::EPD0::DisableTTBR0Walks),
            SysOp::Epd0(false) => TCR_EL1.modify(TCR_EL1::EPD0::EnableTTBR0Walks),
            SysOp::Isb => isb(),
            // SAFETY: TLB maintenance only drops cached translations of this CPU.
            SysOp::TlbiVmalle1 => unsafe {
                core::arch::asm!("tlbi vmalle1", options(nostack, preserves_flags))
            },
            // SAFETY: a barrier has no effect other than ordering.
            SysOp::DsbNsh => unsafe {
                core::arch::asm!("dsb nsh", options(nostack, preserves_flags))
            },
        }
        record(&[op]);
    }
}

/// Why a sequence cannot run from the identity map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdmapError {
    /// More operations than `idmap_run_ops` takes in registers.
    TooLong(usize),
    /// An operation it does not run (TTBR0 and TCR belong to the kernel's own code).
    Unsupported(SysOp),
    /// A TTBR1 value wider than an operation word's 56 value bits.
    ValueTooWide(u64),
    /// It stopped after this many operations (an encoding the assembly did not know).
    Stopped(usize),
}

/// Operations `idmap_run_ops` takes in x0..x6.
const IDMAP_MAX_OPS: usize = 7;
const VALUE_BITS: u32 = 56;

/// An operation as `idmap_run_ops` reads it: code in \[63:56\], value below.
fn encode(op: SysOp) -> Result<u64, IdmapError> {
    let (code, value) = match op {
        SysOp::Ttbr1(v) if v >> VALUE_BITS == 0 => (1, v),
        SysOp::Ttbr1(v) => return Err(IdmapError::ValueTooWide(v)),
        SysOp::Isb => (2, 0),
        SysOp::TlbiVmalle1 => (3, 0),
        SysOp::DsbNsh => (4, 0),
        other => return Err(IdmapError::Unsupported(other)),
    };
    Ok((code << VALUE_BITS) | value)
}

/// `idmap_run_ops(x0..x6 = operations, x7 = how many) -> x0 = how many ran`.
type IdmapRunOps = unsafe extern "C" fn(u64, u64, u64, u64, u64, u64, u64, u64) -> u64;

/// Runs a TTBR1 sequence from the identity map, and records it.
///
/// # Safety
/// TTBR0 must be walked and map this image's text at its physical address, executable at EL1;
/// the sequence must leave TTBR1 at tables that map the kernel as the old ones did (it returns
/// to the caller's address through them). Nothing may interrupt it (the kernel polls).
pub unsafe fn run_from_idmap(ops: &[SysOp]) -> Result<(), IdmapError> {
    if ops.len() > IDMAP_MAX_OPS {
        return Err(IdmapError::TooLong(ops.len()));
    }
    let mut words = [0u64; IDMAP_MAX_OPS];
    for (w, &op) in words.iter_mut().zip(ops) {
        *w = encode(op)?;
    }
    let entry_pa = super::mmu::image_va_to_pa(symbol_addr!(idmap_run_ops));
    // SAFETY: `idmap_run_ops` has this signature; its physical address is its identity-mapped
    // address (the caller guarantees the identity map), and it uses no stack or memory.
    let ran = unsafe {
        let entry: IdmapRunOps = core::mem::transmute(entry_pa as usize);
        let [a, b, c, d, e, f, g] = words;
        entry(a, b, c, d, e, f, g, ops.len() as u64)
    } as usize;
    record(&ops[..ran.min(ops.len())]);
    if ran != ops.len() {
        return Err(IdmapError::Stopped(ran));
    }
    Ok(())
}
