//! The Arm Generic Interrupt Controller, versions 2 (`arm,gic-400`, `arm,cortex-a15-gic`) and 3
//! (`arm,gic-v3`), for the few shared peripheral interrupts the kernel uses.
//!
//! Only what is asked for is enabled: [`Gic::enable_spi`] configures one SPI (trigger as the
//! device tree says, one priority, routed to the calling CPU, which is the boot CPU) and
//! records its handler. Everything else stays as reset left it (disabled). [`init`] brings up
//! the distributor and the calling CPU's interface once, and installs [`handle_irq`] as the
//! IRQ exception's handler; the register sequences follow the GIC architecture specification
//! (IHI 0069, §12 for v3's registers; IHI 0048 §4 for v2's) in the order Linux's
//! `irq-gic-v3.c` / `irq-gic.c` use them.
//!
//! The kernel runs with IRQs masked; a CPU takes them only inside the interrupt windows of
//! `arch::aarch64::irq`, where the code it interrupted holds none of the locks a handler takes.

mod dist;
mod v2;
mod v3;

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::arch::aarch64::exceptions;
use crate::arch::aarch64::mmu::KernelMapError;
use crate::board::dt;
use crate::board::interrupts::{GicInterrupt, IrqKind, Trigger};

/// The priority every enabled SPI gets: above the priority mask, so it is always signalled.
/// (Linux uses 0xa0 for its interrupts, 0xf0 as the mask.)
const IRQ_PRIORITY: u8 = 0xa0;
const PRIORITY_MASK: u8 = 0xf0;
/// INTIDs 1020-1023 are special: an acknowledge that returns one has nothing to handle.
const FIRST_SPECIAL_INTID: u32 = 1020;

/// What runs for an interrupt: called in the IRQ exception with IRQs masked, on the CPU the
/// line is routed to, with its INTID. It must take no lock that code outside an interrupt
/// window may hold while it waits (see `arch::aarch64::irq`).
pub type IrqHandler = fn(u32);

/// Why the GIC could not be brought up or a line enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicError {
    /// A register window could not be mapped.
    Map(KernelMapError),
    /// GICv3: ICC_SRE_EL1.SRE stays 0 (a hypervisor or firmware did not let EL1 use the
    /// system-register interface).
    NoSystemRegisters,
    /// GICv3: no redistributor has the calling CPU's affinity.
    NoRedistributor { mpidr: u64 },
    /// GICv3: the redistributor did not wake (GICR_WAKER.ChildrenAsleep stayed 1).
    RedistributorAsleep,
    /// The distributor did not finish a register write (GICD_CTLR.RWP stayed 1).
    WritePending,
    /// Only SPIs are supported.
    NotAnSpi(GicInterrupt),
    /// The SPI is past what GICD_TYPER.ITLinesNumber implements.
    NotImplemented { intid: u32, lines: u32 },
    /// Every handler slot is taken.
    TooManyHandlers,
    /// The INTID already has a handler.
    AlreadyEnabled(u32),
}

impl fmt::Display for GicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Map(e) => write!(f, "cannot map the GIC: {e}"),
            Self::NoSystemRegisters => {
                f.write_str("GICv3 system registers disabled (ICC_SRE_EL1.SRE reads 0)")
            }
            Self::NoRedistributor { mpidr } => {
                write!(f, "no GICv3 redistributor for MPIDR {mpidr:#x}")
            }
            Self::RedistributorAsleep => f.write_str("the GICv3 redistributor did not wake"),
            Self::WritePending => f.write_str("GICD_CTLR.RWP never cleared"),
            Self::NotAnSpi(irq) => write!(f, "{irq}: only SPIs are supported"),
            Self::NotImplemented { intid, lines } => {
                write!(f, "INTID {intid} is past the GIC's {lines} interrupt lines")
            }
            Self::TooManyHandlers => f.write_str("every interrupt handler slot is taken"),
            Self::AlreadyEnabled(intid) => write!(f, "INTID {intid} already has a handler"),
        }
    }
}

/// The version-specific half: distributor programming and the CPU interface.
enum Chip {
    V2(v2::GicV2),
    V3(v3::GicV3),
}

/// The board's GIC.
pub struct Gic {
    chip: Chip,
    /// GICD_TYPER.ITLinesNumber: 32 * (N + 1) INTIDs are implemented.
    lines: u32,
}

/// One enabled line: its INTID (0 = free) and handler.
struct Slot {
    intid: AtomicU32,
    handler: AtomicUsize,
    count: AtomicU64,
}

const SLOTS: usize = 8;
static HANDLERS: [Slot; SLOTS] = [const {
    Slot {
        intid: AtomicU32::new(0),
        handler: AtomicUsize::new(0),
        count: AtomicU64::new(0),
    }
}; SLOTS];
/// Acknowledged INTIDs nobody registered (masked again at once).
static UNCLAIMED: AtomicU64 = AtomicU64::new(0);

static GIC: spin::Once<Result<Gic, GicError>> = spin::Once::new();

/// Brings up the GIC the device tree describes (once; later calls return the first outcome):
/// the distributor, and the calling CPU's interface (call it on the boot CPU). Installs
/// [`handle_irq`] as the IRQ handler.
pub fn init(desc: &dt::Gic) -> Result<&'static Gic, GicError> {
    GIC.call_once(|| {
        let (chip, lines) = match desc.version {
            3 => {
                let v3 = v3::GicV3::init(desc)?;
                let lines = v3.lines();
                (Chip::V3(v3), lines)
            }
            _ => {
                let v2 = v2::GicV2::init(desc)?;
                let lines = v2.lines();
                (Chip::V2(v2), lines)
            }
        };
        exceptions::set_irq_handler(handle_irq);
        Ok(Gic { chip, lines })
    })
    .as_ref()
    .map_err(|e| *e)
}

/// The GIC, if [`init`] brought it up.
pub fn get() -> Option<&'static Gic> {
    GIC.get().and_then(|r| r.as_ref().ok())
}

impl Gic {
    /// 2 or 3.
    pub fn version(&self) -> u8 {
        match self.chip {
            Chip::V2(_) => 2,
            Chip::V3(_) => 3,
        }
    }

    /// Enables SPI `irq` with `handler`, routed to the calling CPU.
    pub fn enable_spi(&self, irq: GicInterrupt, handler: IrqHandler) -> Result<(), GicError> {
        if irq.kind != IrqKind::Spi {
            return Err(GicError::NotAnSpi(irq));
        }
        let intid = irq.intid();
        if intid >= self.lines {
            return Err(GicError::NotImplemented {
                intid,
                lines: self.lines,
            });
        }
        claim_slot(intid, handler)?;
        let edge = irq.trigger == Trigger::Edge;
        match &self.chip {
            Chip::V2(c) => c.enable_spi(intid, edge, IRQ_PRIORITY),
            Chip::V3(c) => c.enable_spi(intid, edge, IRQ_PRIORITY),
        }
    }

    /// Masks `intid` at the distributor.
    pub fn disable(&self, intid: u32) {
        match &self.chip {
            Chip::V2(c) => c.disable(intid),
            Chip::V3(c) => c.disable(intid),
        }
    }

    fn acknowledge(&self) -> Option<u32> {
        let intid = match &self.chip {
            Chip::V2(c) => c.acknowledge(),
            Chip::V3(c) => c.acknowledge(),
        };
        (intid < FIRST_SPECIAL_INTID).then_some(intid)
    }

    fn end_of_interrupt(&self, intid: u32) {
        match &self.chip {
            Chip::V2(c) => c.end_of_interrupt(intid),
            Chip::V3(c) => c.end_of_interrupt(intid),
        }
    }
}

fn claim_slot(intid: u32, handler: IrqHandler) -> Result<(), GicError> {
    if HANDLERS
        .iter()
        .any(|s| s.intid.load(Ordering::Acquire) == intid)
    {
        return Err(GicError::AlreadyEnabled(intid));
    }
    for slot in &HANDLERS {
        // The handler is published before the INTID that makes the slot findable.
        if slot.handler.load(Ordering::Acquire) == 0
            && slot
                .handler
                .compare_exchange(0, handler as usize, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.intid.store(intid, Ordering::Release);
            return Ok(());
        }
    }
    Err(GicError::TooManyHandlers)
}

fn slot_of(intid: u32) -> Option<&'static Slot> {
    HANDLERS
        .iter()
        .find(|s| s.intid.load(Ordering::Acquire) == intid)
}

/// How many times `intid`'s handler ran.
pub fn irq_count(intid: u32) -> u64 {
    slot_of(intid).map_or(0, |s| s.count.load(Ordering::Relaxed))
}

/// Interrupts acknowledged that had no handler.
pub fn unclaimed_count() -> u64 {
    UNCLAIMED.load(Ordering::Relaxed)
}

/// Most interrupts one exception handles before returning (a line that keeps firing must not
/// hold the CPU forever: the rest stay pending for the next window).
const MAX_PER_EXCEPTION: usize = 16;

/// The IRQ exception: acknowledge, run the handler, end of interrupt (priority drop and
/// deactivation together: EOImode 0), until nothing is pending.
fn handle_irq() {
    let Some(gic) = get() else { return };
    for _ in 0..MAX_PER_EXCEPTION {
        let Some(intid) = gic.acknowledge() else {
            return;
        };
        match slot_of(intid) {
            Some(slot) => {
                slot.count.fetch_add(1, Ordering::Relaxed);
                let f = slot.handler.load(Ordering::Acquire);
                // SAFETY: only `claim_slot` stores non-zero handlers, and they are
                // `IrqHandler`s.
                let handler = unsafe { core::mem::transmute::<usize, IrqHandler>(f) };
                handler(intid);
            }
            None => {
                UNCLAIMED.fetch_add(1, Ordering::Relaxed);
                gic.disable(intid);
            }
        }
        gic.end_of_interrupt(intid);
    }
}

/// The register index and bit of `intid` in a one-bit-per-interrupt register bank.
fn bit(intid: u32) -> (usize, u32) {
    ((intid / 32) as usize * 4, 1 << (intid % 32))
}

/// The word offset and shift of `intid` in a one-byte-per-interrupt bank (IPRIORITYR,
/// ITARGETSR), accessed as 32-bit words.
fn byte(intid: u32) -> (usize, u32) {
    ((intid & !3) as usize, (intid % 4) * 8)
}

/// The word offset and edge bit of `intid` in GICD_ICFGR (two bits per interrupt; the upper
/// one set = edge-triggered).
fn config(intid: u32) -> (usize, u32) {
    ((intid / 16) as usize * 4, 2 << ((intid % 16) * 2))
}
