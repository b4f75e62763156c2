//! Ending the kernel: the exit status, the trace dump on the way out, and the crash path.

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

/// Ends the kernel with `code`: QEMU exits with it (semihosting), or the machine is switched
/// off (PSCI), or, on hardware without either, the CPU parks after printing the final line.
pub fn exit(code: ExitCode) -> ! {
    if EXITING.swap(true, Ordering::AcqRel) {
        cpu::halt();
    }
    exit_now(code)
}

/// Like [`exit`] but without the once-only check (for the exception path).
pub fn exit_now(code: ExitCode) -> ! {
    dump_trace();
    eprintln!("# shootdown: exit {}", code as u32);
    crate::console::flush();
    power::semihosting_exit(code as u32);
    if code == ExitCode::Success {
        power::system_off();
    } else {
        power::system_reset();
    }
    crate::console::flush();
    cpu::halt()
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
