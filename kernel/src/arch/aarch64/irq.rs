//! Where a CPU takes interrupts: only inside an **interrupt window**.
//!
//! The kernel runs with PSTATE.I set (IRQs masked) on every CPU, always. A CPU takes a pending
//! IRQ only when it calls [`window`] (or [`wait_in_window`]): IRQs are unmasked for the length
//! of an `ISB`, any pending one is taken there, and they are masked again before the caller's
//! next instruction. No caller code runs while IRQs are unmasked, so the code an interrupt
//! handler interrupts is always a call of [`window`], and the only locks it can hold are the
//! ones its caller holds at that call.
//!
//! **Windows open only once an IRQ handler is installed** (`exceptions::set_irq_handler`, by
//! the GIC's driver). Until then a window does nothing (and [`wfe_in_window`] is a plain
//! `WFE`): on a board the kernel takes no interrupt from (the Pi, or `virt` without an SMMU
//! interrupt), an IRQ that firmware left enabled and pending would otherwise be taken with
//! nobody to acknowledge it, and reported as a fatal unexpected IRQ.
//!
//! The rule that keeps handlers from deadlocking: **a window is never opened while holding a
//! lock that a handler takes.** The one handler the kernel has (the SMMU's event queue) takes
//! only the event queue's lock, private to `iommu/driver/evtq.rs`, which opens no window; the
//! windows are in code that never touches it: the `edu` driver's waits, the boot CPU's wait for
//! the others in `smp::on_each_cpu` (the workload's steps run there), and tests that wait for
//! an interrupt. Another CPU may hold the event queue's lock when the handler wants it; it
//! holds it only for a bounded copy (taking at most the `cr0` lock under it, whose holders take
//! nothing else), so the handler's wait ends.

use core::arch::asm;

/// Takes the IRQs pending on this CPU, if any, then masks them again. Does nothing until an
/// IRQ handler is installed.
#[inline]
pub fn window() {
    if !super::exceptions::irq_handler_installed() {
        return;
    }
    // SAFETY: unmasks IRQs for one ISB (a context synchronization event, so a pending IRQ is
    // taken before it completes) and masks them again. Not `nomem`: a handler run here may
    // change memory the caller reads afterwards.
    unsafe {
        asm!(
            "msr daifclr, #2",
            "isb",
            "msr daifset, #2",
            options(nostack)
        )
    };
}

/// `WFE` with IRQs unmasked: sleeps until an event or an interrupt, taking the interrupt if one
/// comes (with IRQs masked, a pending IRQ would not end the sleep). An IRQ that arrives
/// between the unmask and the `WFE` is taken at once; the `WFE` then waits for the caller's
/// event, which is what it was waiting for anyway. A plain `WFE` until an IRQ handler is
/// installed.
#[inline]
pub fn wfe_in_window() {
    if !super::exceptions::irq_handler_installed() {
        super::cpu::wfe();
        return;
    }
    // SAFETY: as in `window`; WFE only pauses this CPU.
    unsafe {
        asm!(
            "msr daifclr, #2",
            "wfe",
            "msr daifset, #2",
            options(nostack)
        )
    };
}

/// Opens windows until `done` returns true or `timeout_ns` of the generic timer passed;
/// returns whether `done` became true. `done` runs with IRQs masked.
pub fn wait_in_window(timeout_ns: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = super::timer::now_ns().saturating_add(timeout_ns);
    loop {
        window();
        if done() {
            return true;
        }
        if super::timer::now_ns() >= deadline {
            return false;
        }
        super::cpu::yield_hint();
    }
}
