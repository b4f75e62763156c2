//! Ending the kernel: the exit status, the trace dump on the way out, and the crash path.
//!
//! The machine is never reset on the way out: a board that boots this image from its own card
//! (a Pi's `cmdline.txt`) would run the same command line again and fail again, for ever.

use alloc::string::String;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch::aarch64::{cpu, power, timer};
use crate::eprintln;

/// How the kernel ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Everything passed.
    Success = 0,
    /// One or more tests (or the workload's checks) failed.
    Failure = 1,
    /// The kernel could not boot (e.g. no usable device tree).
    BootError = 2,
    /// A panic or an unexpected exception.
    Crash = 3,
}

static EXITING: AtomicBool = AtomicBool::new(false);

/// Why the kernel stopped, for the reminders of a board that cannot switch itself off.
static REASON: spin::Once<String> = spin::Once::new();

/// How often a stopped board repeats that it stopped, for whoever attaches a console later.
const REMINDER_US: u64 = 5_000_000;

/// Ends the kernel with `code`: QEMU exits with it (semihosting), or the machine is switched
/// off (PSCI), or, on hardware without either, the boot CPU parks and repeats that it stopped.
pub fn exit(code: ExitCode) -> ! {
    if EXITING.swap(true, Ordering::AcqRel) {
        cpu::halt();
    }
    exit_now(code)
}

/// Like [`exit`], and a parked board's reminders say `why` (already printed by the caller).
pub fn exit_because(code: ExitCode, why: String) -> ! {
    REASON.call_once(|| why);
    exit(code)
}

/// Like [`exit`] but without the once-only check (for the exception path).
pub fn exit_now(code: ExitCode) -> ! {
    dump_trace();
    eprintln!("# shootdown: exit {}", code as u32);
    crate::console::flush();
    power::semihosting_exit(code as u32);
    // Off whatever the status (never a reset, see the module's comment): QEMU without
    // semihosting exits, or stops with `-no-shutdown`.
    power::system_off();
    park(code)
}

/// Where nothing could end the run: interrupts masked, the CPU asleep, and every
/// [`REMINDER_US`] a line saying the board stopped and why. Not the `# shootdown: exit` line
/// again: readers take the first one as the end of the run.
fn park(code: ExitCode) -> ! {
    cpu::mask_interrupts();
    loop {
        crate::console::flush();
        timer::sleep_until(timer::Deadline::after_us(REMINDER_US));
        let why = REASON.get().map(String::as_str).unwrap_or("see above");
        eprintln!(
            "shootdown: stopped with exit status {} ({why}); reset the board to boot again",
            code as u32
        );
    }
}

/// Prints the trace rings (if tracing was on) as `# T` lines between markers the harness
/// looks for. Lock-free: it may run on the crash path.
fn dump_trace() {
    if !crate::trace::TRACER.is_enabled() {
        return;
    }
    let records = crate::trace::TRACER.drain();
    eprintln!(
        "# trace-begin {} records, clock {} Hz",
        records.len(),
        timer::frequency()
    );
    struct Emergency;
    impl core::fmt::Write for Emergency {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            crate::console::emergency_print(format_args!("{s}"));
            Ok(())
        }
    }
    let _ = crate::trace::write_records(&mut Emergency, &records);
    eprintln!("# trace-end");
}

/// The end of an unexpected exception (after its report): a test run bails out.
pub fn fatal_exit() -> ! {
    if let Some((suite, name)) = super::current_test() {
        eprintln!("Bail out! unexpected exception in {suite}.{name}");
    }
    exit(ExitCode::Crash)
}

/// The end of an exception inside the exception handler.
pub fn nested_exit() -> ! {
    exit_now(ExitCode::Crash)
}
