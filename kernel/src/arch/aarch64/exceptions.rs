//! Exception handling: the trap frame, decoding of ESR_EL1 into words, probes that expect a
//! fault (tests and fault-tolerant accesses), and the report printed for anything unexpected.
//!
//! Decoding follows the Arm ARM, D19.2 "ESR_EL1" (exception classes) and the ISS encodings for
//! Data Aborts and Instruction Aborts (DFSC/IFSC fault status codes).

use core::fmt;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::mm::layout::{self, MAX_CPUS};

use super::cpu_id;

/// Registers saved by `vectors.S` (layout shared with it: keep the offsets in sync).
#[repr(C)]
pub struct TrapFrame {
    /// x0..x30.
    pub x: [u64; 31],
    /// SP_EL0 at the time of the exception (the kernel's main stack).
    pub sp: u64,
    /// ELR_EL1: where the exception was taken (and where `eret` resumes).
    pub elr: u64,
    /// SPSR_EL1.
    pub spsr: u64,
    /// ESR_EL1: syndrome.
    pub esr: u64,
    /// FAR_EL1: faulting virtual address (aborts only).
    pub far: u64,
    /// q0..q31 (the kernel uses SIMD registers; exceptions must preserve them).
    pub q: [u128; 32],
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 800);

/// A syndrome: ESR_EL1 together with FAR_EL1.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// ESR_EL1.
    pub esr: u64,
    /// FAR_EL1 (meaningful for aborts).
    pub far: u64,
}

/// What kind of fault a fault status code (DFSC/IFSC) names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Address size fault at a level.
    AddressSize(u8),
    /// Translation fault (no valid descriptor) at a level.
    Translation(u8),
    /// Access flag fault at a level.
    AccessFlag(u8),
    /// Permission fault at a level.
    Permission(u8),
    /// Alignment fault.
    Alignment,
    /// Synchronous external abort (not on a walk).
    ExternalAbort,
    /// Synchronous external abort on a table walk at a level.
    ExternalAbortOnWalk(u8),
    /// TLB conflict abort.
    TlbConflict,
    /// Anything else.
    Other(u8),
}

impl Fault {
    /// Exception class, ESR_EL1[31:26].
    pub fn ec(&self) -> u8 {
        ((self.esr >> 26) & 0x3f) as u8
    }

    /// Instruction-specific syndrome, ESR_EL1[24:0].
    pub fn iss(&self) -> u32 {
        (self.esr & 0x1ff_ffff) as u32
    }

    /// True for a Data Abort (from this or a lower EL).
    pub fn is_data_abort(&self) -> bool {
        matches!(self.ec(), 0x24 | 0x25)
    }

    /// True for an Instruction Abort (from this or a lower EL).
    pub fn is_instruction_abort(&self) -> bool {
        matches!(self.ec(), 0x20 | 0x21)
    }

    /// For aborts: was it a write (ISS.WnR, data aborts only)?
    pub fn is_write(&self) -> bool {
        self.is_data_abort() && self.iss() & (1 << 6) != 0
    }

    /// For aborts: what the fault status code says.
    pub fn kind(&self) -> FaultKind {
        let fsc = (self.iss() & 0x3f) as u8;
        let level = fsc & 0b11;
        match fsc {
            0b00_0000..=0b00_0011 => FaultKind::AddressSize(level),
            0b00_0100..=0b00_0111 => FaultKind::Translation(level),
            0b00_1000..=0b00_1011 => FaultKind::AccessFlag(level),
            0b00_1100..=0b00_1111 => FaultKind::Permission(level),
            0b01_0000 => FaultKind::ExternalAbort,
            0b01_0100..=0b01_0111 => FaultKind::ExternalAbortOnWalk(level),
            0b10_0001 => FaultKind::Alignment,
            0b11_0000 => FaultKind::TlbConflict,
            other => FaultKind::Other(other),
        }
    }
}

/// The exception class in words (Arm ARM D19.2, ESR_EL1.EC).
pub fn exception_class_name(ec: u8) -> &'static str {
    match ec {
        0x00 => "Unknown reason (e.g. undefined instruction)",
        0x01 => "Trapped WFI/WFE",
        0x07 => "Trapped SVE/SIMD/floating-point access",
        0x0e => "Illegal Execution state",
        0x15 => "SVC instruction (AArch64)",
        0x16 => "HVC instruction (AArch64)",
        0x17 => "SMC instruction (AArch64)",
        0x18 => "Trapped MSR/MRS/system instruction",
        0x19 => "Trapped SVE access",
        0x20 => "Instruction Abort from a lower Exception level",
        0x21 => "Instruction Abort without a change in Exception level",
        0x22 => "PC alignment fault",
        0x24 => "Data Abort from a lower Exception level",
        0x25 => "Data Abort without a change in Exception level",
        0x26 => "SP alignment fault",
        0x2c => "Trapped floating-point exception",
        0x2f => "SError interrupt",
        0x30 | 0x31 => "Breakpoint",
        0x32 | 0x33 => "Software Step",
        0x34 | 0x35 => "Watchpoint",
        0x3c => "BRK instruction",
        _ => "Reserved or unhandled exception class",
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FaultKind::AddressSize(l) => write!(f, "address size fault, level {l}"),
            FaultKind::Translation(l) => write!(f, "translation fault, level {l}"),
            FaultKind::AccessFlag(l) => write!(f, "access flag fault, level {l}"),
            FaultKind::Permission(l) => write!(f, "permission fault, level {l}"),
            FaultKind::Alignment => f.write_str("alignment fault"),
            FaultKind::ExternalAbort => f.write_str("synchronous external abort"),
            FaultKind::ExternalAbortOnWalk(l) => {
                write!(f, "external abort on table walk, level {l}")
            }
            FaultKind::TlbConflict => f.write_str("TLB conflict abort"),
            FaultKind::Other(c) => write!(f, "fault status code {c:#04x}"),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (EC {:#04x}, ESR {:#010x})",
            exception_class_name(self.ec()),
            self.ec(),
            self.esr
        )?;
        if self.is_data_abort() || self.is_instruction_abort() {
            let iss = self.iss();
            write!(f, ": {}", self.kind())?;
            if self.is_data_abort() {
                f.write_str(if self.is_write() { ", write" } else { ", read" })?;
                if iss & (1 << 7) != 0 {
                    f.write_str(", on a stage-2 walk for stage 1 (S1PTW)")?;
                }
                if iss & (1 << 8) != 0 {
                    f.write_str(", cache maintenance")?;
                }
            }
            if iss & (1 << 10) != 0 {
                f.write_str(", FAR not valid")?;
            } else {
                write!(f, ", address {:#018x}", self.far)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Probes: accesses that are expected to fault.                                             */
/* ---------------------------------------------------------------------------------------- */

#[repr(C)]
struct ProbeResult {
    value: u64,
    faulted: u64,
}

extern "C" {
    fn __probe_read_u64(addr: u64) -> ProbeResult;
    fn __probe_write_u64(addr: u64, value: u64) -> ProbeResult;
    fn __probe_exec(addr: u64) -> ProbeResult;
    static __probe_read_insn: u8;
    static __probe_write_insn: u8;
    static __probe_exec_call: u8;
    static __probe_exec_fault: u8;
    static __probe_fault: u8;
}

/// The last fault a probe took, per CPU (ESR, FAR).
static PROBE_FAULT: [(AtomicU64, AtomicU64); MAX_CPUS] =
    [const { (AtomicU64::new(0), AtomicU64::new(0)) }; MAX_CPUS];

fn take_probe_fault() -> Fault {
    let (esr, far) = &PROBE_FAULT[cpu_id()];
    Fault {
        esr: esr.load(Ordering::Relaxed),
        far: far.load(Ordering::Relaxed),
    }
}

/// Reads the 64-bit word at virtual address `addr`, or returns the fault it took.
pub fn probe_read_u64(addr: u64) -> Result<u64, Fault> {
    // SAFETY: the probe is a single `ldr`; if it faults the handler resumes at the fixup, so
    // no memory is accessed other than `addr`, and an invalid `addr` is reported, not fatal.
    let r = unsafe { __probe_read_u64(addr) };
    if r.faulted != 0 {
        Err(take_probe_fault())
    } else {
        Ok(r.value)
    }
}

/// Writes `value` to virtual address `addr`, or returns the fault it took.
///
/// # Safety
/// If `addr` is writable, the write happens: the caller must own that memory.
pub unsafe fn probe_write_u64(addr: u64, value: u64) -> Result<(), Fault> {
    // SAFETY: a single `str`, recovered if it faults; the caller owns `addr` if it succeeds.
    let r = unsafe { __probe_write_u64(addr, value) };
    if r.faulted != 0 {
        Err(take_probe_fault())
    } else {
        Ok(())
    }
}

/// Branches to `addr` (which must hold code that returns, e.g. `ret`) and returns its x0, or
/// the instruction abort it took.
///
/// # Safety
/// If `addr` is executable, whatever is there runs: it must be a function with the C ABI.
pub unsafe fn probe_exec(addr: u64) -> Result<u64, Fault> {
    // SAFETY: the caller vouches for the code at `addr`; an abort on fetching it is recovered.
    let r = unsafe { __probe_exec(addr) };
    if r.faulted != 0 {
        Err(take_probe_fault())
    } else {
        Ok(r.value)
    }
}

macro_rules! sym {
    ($s:ident) => {
        core::ptr::addr_of!($s) as u64
    };
}

/// If the exception is a probe's expected fault, record it and redirect to the probe's fixup.
fn fixup_probe(frame: &mut TrapFrame, fault: Fault) -> bool {
    let data_probe = fault.is_data_abort()
        && (frame.elr == sym!(__probe_read_insn) || frame.elr == sym!(__probe_write_insn));
    let exec_probe = (fault.is_instruction_abort() || fault.ec() == 0x22)
        && frame.x[30] == sym!(__probe_exec_call) + 4;
    if !data_probe && !exec_probe {
        return false;
    }
    let (esr, far) = &PROBE_FAULT[cpu_id()];
    esr.store(fault.esr, Ordering::Relaxed);
    far.store(fault.far, Ordering::Relaxed);
    frame.elr = if exec_probe {
        sym!(__probe_exec_fault)
    } else {
        sym!(__probe_fault)
    };
    true
}

/// An Access-flag fault on a lower-half page (its flag cleared by ageing) is answered, as
/// Linux's `handle_mm_fault` does, by setting the flag in the address space loaded on this
/// CPU; the access is then retried. Before the probes: a probed access to an aged page is a
/// normal access.
fn answer_access_flag_fault(fault: Fault) -> bool {
    const FAR_NOT_VALID: u32 = 1 << 10;
    (fault.is_data_abort() || fault.is_instruction_abort())
        && matches!(fault.kind(), FaultKind::AccessFlag(_))
        && fault.iss() & FAR_NOT_VALID == 0
        && super::aspace::answer_access_flag_fault(fault.far)
}

/* ---------------------------------------------------------------------------------------- */
/* Extra handlers (semihosting detection, ...) and the fatal path.                          */
/* ---------------------------------------------------------------------------------------- */

/// A handler that may claim a synchronous exception before it is reported as fatal.
pub type ExceptionHook = fn(&mut TrapFrame, Fault) -> bool;

static HOOKS: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

/// Registers a hook tried (in order) for every synchronous exception that is not a probe fault.
pub fn add_hook(hook: ExceptionHook) {
    for slot in &HOOKS {
        if slot
            .compare_exchange(0, hook as usize, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return;
        }
    }
    panic!("too many exception hooks");
}

fn run_hooks(frame: &mut TrapFrame, fault: Fault) -> bool {
    for slot in &HOOKS {
        let f = slot.load(Ordering::Acquire);
        if f == 0 {
            break;
        }
        // SAFETY: only `add_hook` stores non-zero values, and they are `ExceptionHook`s.
        let hook: ExceptionHook = unsafe { core::mem::transmute::<usize, ExceptionHook>(f) };
        if hook(frame, fault) {
            return true;
        }
    }
    false
}

/// What the handler does with an exception it cannot fix up: print the report, and end the
/// kernel. `arch` sits below the console and the runtime, so the composition root installs them
/// ([`set_fatal_hooks`]) before anything can fault.
pub struct FatalHooks {
    /// Prints without taking a lock (the faulting CPU may hold the console's).
    pub print: fn(fmt::Arguments<'_>),
    /// An exception inside the handler: end now, without the once-only exit check.
    pub nested: fn() -> !,
    /// The end after a report (a test run bails out first).
    pub fatal: fn() -> !,
}

static FATAL_HOOKS: spin::Once<FatalHooks> = spin::Once::new();

/// Installs what an unexpected exception prints to and how it ends the kernel (once, at boot).
pub fn set_fatal_hooks(hooks: FatalHooks) {
    FATAL_HOOKS.call_once(|| hooks);
}

/// A line of the exception report, through the installed print hook.
macro_rules! report_line {
    ($($arg:tt)*) => {
        if let Some(h) = FATAL_HOOKS.get() {
            (h.print)(format_args!("{}\n", format_args!($($arg)*)))
        }
    };
}

/// Without hooks (an exception before boot installed them) the CPU just stops.
fn end(which: fn(&FatalHooks) -> fn() -> !) -> ! {
    match FATAL_HOOKS.get() {
        Some(h) => which(h)(),
        None => super::cpu::halt(),
    }
}

/// The IRQ handler (the interrupt controller's driver installs it): 0 = none.
static IRQ_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Installs what an IRQ exception runs (acknowledge, dispatch, end of interrupt). Without one,
/// an IRQ is reported as unexpected.
pub fn set_irq_handler(handler: fn()) {
    IRQ_HANDLER.store(handler as usize, Ordering::Release);
}

/// Whether an IRQ handler is installed: until then interrupt windows stay shut
/// (`arch::aarch64::irq`).
pub fn irq_handler_installed() -> bool {
    IRQ_HANDLER.load(Ordering::Acquire) != 0
}

/// Runs the IRQ handler, if one is installed.
fn handle_irq() -> bool {
    let f = IRQ_HANDLER.load(Ordering::Acquire);
    if f == 0 {
        return false;
    }
    // SAFETY: only `set_irq_handler` stores non-zero values, and they are `fn()`s.
    let handler = unsafe { core::mem::transmute::<usize, fn()>(f) };
    handler();
    true
}

/// The exception kind `vectors.S` passes for an IRQ taken from EL1 on SP_EL0 (the kernel's
/// own code, inside an interrupt window).
const KIND_IRQ_FROM_KERNEL: u64 = 1;

/// Per-CPU nesting depth: an exception inside the handler must not recurse forever.
static DEPTH: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

const KIND_NAMES: [&str; 4] = ["synchronous", "IRQ", "FIQ", "SError"];

#[no_mangle]
extern "C" fn handle_exception(frame: &mut TrapFrame, kind: u64) {
    let cpu = cpu_id();
    let depth = DEPTH[cpu].fetch_add(1, Ordering::Relaxed);
    let fault = Fault {
        esr: frame.esr,
        far: frame.far,
    };
    // An IRQ: the frame `vectors.S` saved is restored on return, so the interrupted code
    // resumes unchanged; IRQs stay masked (PSTATE.I set on entry) until it returns.
    if depth == 0 && kind == KIND_IRQ_FROM_KERNEL && handle_irq() {
        DEPTH[cpu].fetch_sub(1, Ordering::Relaxed);
        return;
    }
    if depth == 0
        && kind == 0
        && (answer_access_flag_fault(fault)
            || fixup_probe(frame, fault)
            || run_hooks(frame, fault))
    {
        DEPTH[cpu].fetch_sub(1, Ordering::Relaxed);
        return;
    }
    if depth > 0 {
        report_line!(
            "\n!!! CPU {cpu}: {} inside the exception handler: {fault}",
            KIND_NAMES[(kind & 3) as usize]
        );
        end(|h| h.nested);
    }
    report(frame, kind, fault);
    end(|h| h.fatal);
}

/// If `addr` lies in a stack guard page, which CPU's and which stack's.
fn stack_guard_hit(addr: u64) -> Option<(usize, &'static str)> {
    let base = crate::symbol_addr!(__stacks_start);
    if addr < base {
        return None;
    }
    let off = (addr - base) as usize;
    let cpu = off / layout::CPU_STACK_STRIDE;
    let within = off % layout::CPU_STACK_STRIDE;
    if cpu >= MAX_CPUS {
        return None;
    }
    if within < 4096 {
        Some((cpu, "main"))
    } else if (layout::MAIN_STACK_TOP..layout::MAIN_STACK_TOP + 4096).contains(&within) {
        Some((cpu, "exception"))
    } else {
        None
    }
}

fn report(frame: &TrapFrame, kind: u64, fault: Fault) {
    let cpu = cpu_id();
    let group = match kind >> 2 {
        0 => "from EL1 (SP_EL0)",
        1 => "from EL1 (SP_EL1)",
        2 => "from EL0 (AArch64)",
        _ => "from EL0 (AArch32)",
    };
    report_line!(
        "\n!!! CPU {cpu}: unexpected {} exception {group}",
        KIND_NAMES[(kind & 3) as usize]
    );
    if kind & 3 == 0 {
        report_line!("!!! {fault}");
        if fault.is_data_abort() || fault.is_instruction_abort() {
            if let Some((c, which)) = stack_guard_hit(fault.far) {
                report_line!("!!! stack overflow: CPU {c} ran off the bottom of its {which} stack (guard page hit)");
            }
        }
    }
    report_line!(
        "    ELR  {:#018x}  SPSR {:#010x}  SP {:#018x}",
        frame.elr,
        frame.spsr,
        frame.sp
    );
    report_line!("    ESR  {:#010x}  FAR  {:#018x}", frame.esr, frame.far);
    for i in (0..30).step_by(3) {
        report_line!(
            "    x{:<2} {:#018x}  x{:<2} {:#018x}  x{:<2} {:#018x}",
            i,
            frame.x[i],
            i + 1,
            frame.x[i + 1],
            i + 2,
            frame.x[i + 2]
        );
    }
    report_line!("    x30 {:#018x}", frame.x[30]);
}
