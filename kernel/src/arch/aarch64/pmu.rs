//! Counting instructions for the in-kernel benchmarks (`bench=`).
//!
//! The counter is PMUv3 event counter 0 programmed with event 0x08, INST_RETIRED
//! ("instruction architecturally executed", Arm ARM D17.11 / K3.1 common events), read at EL1
//! (PMUSERENR_EL0 only matters for EL0). [`start`] enables it in the first Rust code of the
//! boot CPU, so it also measures boot.
//!
//! Under QEMU the event exists only with precise instruction counting, `-icount shift=N`
//! without `auto` (target/arm/helper.c: `instructions_supported()` is
//! `icount_enabled() == ICOUNT_PRECISE`, and PMCEID0_EL0 bit 8 is set from it); its value is
//! `icount_get_raw()`, QEMU's instruction count of **all** vCPUs (icount runs them round-robin
//! on one thread). Idle secondary CPUs add a few instructions per scheduling round (a WFE in
//! TCG yields to the next vCPU instead of halting), so a count is the boot CPU's work plus a
//! small remainder: the same image and arguments give the same counts up to the 10 to 15
//! instructions of a round that may or may not land inside a measurement.
//!
//! Without the event (no PMUv3, or QEMU without precise icount) [`read`] falls back to the
//! generic timer's counter, and [`kind`] says so: benchmark lines carry the unit.
//!
//! Event counters are 32 bits before PMUv3p5; with PMUv3p5 (ID_AA64DFR0_EL1.PMUVer ≥ 6)
//! PMCR_EL0.LP makes them 64 bits. A 32-bit counter that wrapped during a measurement is
//! reported by [`Measurement`] instead of returning a wrong count.

use core::arch::asm;
use core::sync::atomic::{AtomicU8, Ordering};

use super::timer;

/// What [`read`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterKind {
    /// PMU INST_RETIRED (event 0x08): instructions.
    Instructions,
    /// The generic timer's counter (CNTPCT_EL0) at [`timer::frequency`] Hz.
    Ticks,
}

impl CounterKind {
    /// The unit benchmark lines print.
    pub const fn unit(self) -> &'static str {
        match self {
            Self::Instructions => "insns",
            Self::Ticks => "ticks",
        }
    }
}

/// ID_AA64DFR0_EL1.PMUVer (bits [11:8], Arm ARM D19.2.x): 0 none, 0xf IMPLEMENTATION DEFINED.
const PMUVER_SHIFT: u64 = 8;
/// PMUVer value of PMUv3p5 (64-bit event counters with PMCR_EL0.LP).
const PMUV3P5: u64 = 6;
/// The common event number of INST_RETIRED; PMCEID0_EL0 bit n says event n is implemented.
const INST_RETIRED: u64 = 0x08;

/// PMCR_EL0 fields (Arm ARM D19.4.x).
const PMCR_E: u64 = 1 << 0;
const PMCR_P: u64 = 1 << 1;
const PMCR_LP: u64 = 1 << 7;

const UNKNOWN: u8 = 0;
const INSTRUCTIONS_32: u8 = 1;
const INSTRUCTIONS_64: u8 = 2;
const TICKS: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

macro_rules! read_sysreg {
    ($name:literal) => {{
        let v: u64;
        // SAFETY: reading a PMU/ID register has no side effects; callers check that the PMU
        // exists first (ID registers always exist), and EL1 accesses are not trapped: boot
        // sets MDCR_EL2 (TPM = 0, HPMN = PMCR_EL0.N) when it drops from EL2.
        unsafe { asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }};
}

macro_rules! write_sysreg {
    ($name:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: only PMU control registers of this CPU are written, after checking that the
        // PMU exists; counting changes no architectural state the kernel relies on.
        unsafe { asm!(concat!("msr ", $name, ", {}"), in(reg) v, options(nomem, nostack, preserves_flags)) };
    }};
}

/// Starts counting instructions on this CPU (the boot CPU, first thing), or settles for the
/// timer. Idempotent.
pub fn start() {
    if STATE.load(Ordering::Relaxed) != UNKNOWN {
        return;
    }
    let pmuver = (read_sysreg!("id_aa64dfr0_el1") >> PMUVER_SHIFT) & 0xf;
    // No PMUv3 (0, or 0xf: IMPLEMENTATION DEFINED), or one without the INST_RETIRED event.
    let no_pmu = pmuver == 0 || pmuver == 0xf;
    let state = if no_pmu || read_sysreg!("pmceid0_el0") & (1 << INST_RETIRED) == 0 {
        TICKS
    } else {
        let wide = pmuver >= PMUV3P5;
        // Counter 0: INST_RETIRED at EL0 and EL1 (P = U = 0), not at EL2 (NSH = 0).
        write_sysreg!("pmcntenclr_el0", 1);
        write_sysreg!("pmevtyper0_el0", INST_RETIRED);
        write_sysreg!("pmovsclr_el0", 1);
        let pmcr = read_sysreg!("pmcr_el0");
        let lp = if wide { PMCR_LP } else { 0 };
        write_sysreg!("pmcr_el0", pmcr | PMCR_E | PMCR_P | lp);
        write_sysreg!("pmcntenset_el0", 1);
        super::cpu::isb();
        if wide {
            INSTRUCTIONS_64
        } else {
            INSTRUCTIONS_32
        }
    };
    STATE.store(state, Ordering::Relaxed);
}

/// What [`read`] returns.
pub fn kind() -> CounterKind {
    match STATE.load(Ordering::Relaxed) {
        INSTRUCTIONS_32 | INSTRUCTIONS_64 => CounterKind::Instructions,
        _ => CounterKind::Ticks,
    }
}

/// True if the counter is 64 bits wide (never wraps in practice).
pub fn is_wide() -> bool {
    STATE.load(Ordering::Relaxed) != INSTRUCTIONS_32
}

/// The counter now: instructions since [`start`], or timer ticks.
#[inline]
pub fn read() -> u64 {
    // The ISB keeps the read from being hoisted above earlier instructions.
    super::cpu::isb();
    match STATE.load(Ordering::Relaxed) {
        INSTRUCTIONS_32 | INSTRUCTIONS_64 => read_sysreg!("pmevcntr0_el0"),
        _ => timer::ticks(),
    }
}

/// The 32-bit counter overflowed since the last call (and the flag is cleared).
fn take_overflow() -> bool {
    if STATE.load(Ordering::Relaxed) != INSTRUCTIONS_32 {
        return false;
    }
    let set = read_sysreg!("pmovsclr_el0") & 1 != 0;
    if set {
        write_sysreg!("pmovsclr_el0", 1);
    }
    set
}

/// One measurement in progress: [`Measurement::begin`] ... [`Measurement::end`].
pub struct Measurement {
    start: u64,
}

/// A 32-bit instruction counter wrapped during a measurement: the count is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterWrapped;

impl core::fmt::Display for CounterWrapped {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("the 32-bit instruction counter wrapped during the measurement")
    }
}

impl Measurement {
    /// Starts measuring.
    #[inline]
    pub fn begin() -> Self {
        let _ = take_overflow();
        Self { start: read() }
    }

    /// The count since [`Measurement::begin`].
    #[inline]
    pub fn end(self) -> Result<u64, CounterWrapped> {
        let now = read();
        if take_overflow() {
            // One wrap is recoverable only if the result is still below the start.
            if now < self.start {
                return Ok((1u64 << 32) + now - self.start);
            }
            return Err(CounterWrapped);
        }
        Ok(now.wrapping_sub(self.start))
    }
}
