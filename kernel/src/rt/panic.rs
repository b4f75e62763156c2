//! The panic handler: one line naming the CPU (and the test, in a test run), then a crash exit.

use core::panic::PanicInfo;

use crate::arch::aarch64::cpu;
use crate::eprintln;

use super::{exit, ExitCode};

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    cpu::mask_interrupts();
    let cpu = crate::arch::aarch64::cpu_id();
    match super::current_test() {
        Some((suite, name)) => eprintln!("Bail out! panic in {suite}.{name} on CPU {cpu}: {info}"),
        None => eprintln!("\n!!! kernel panic on CPU {cpu}: {info}"),
    }
    exit(ExitCode::Crash)
}
