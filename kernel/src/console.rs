//! The kernel console: `print!`/`println!`, the `log` facade, and an emergency path for panics
//! and exception reports that takes no lock.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::drivers::pl011::Pl011;

/// Virtual address of the console UART (0 = no console yet).
static UART_VA: AtomicU64 = AtomicU64::new(0);
/// Serialises whole `print!` calls so lines from different CPUs don't interleave.
static LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Directs console output to the PL011 mapped at `va`.
///
/// # Safety
/// `va` must map a PL011 for the rest of the kernel's life.
pub unsafe fn set_uart(va: u64) {
    UART_VA.store(va, Ordering::Release);
}

fn uart() -> Option<Pl011> {
    match UART_VA.load(Ordering::Acquire) {
        0 => None,
        // SAFETY: `set_uart`'s contract: a non-zero value maps a PL011 for good.
        va => Some(unsafe { Pl011::new(va) }),
    }
}

struct Writer;

impl Write for Writer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(u) = uart() {
            u.write_str(s);
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _guard = LOCK.lock();
    let _ = Writer.write_fmt(args);
}

/// Prints without taking the console lock: for panics and exception reports, which may happen
/// while this CPU (or a dead one) holds it.
pub fn emergency_print(args: fmt::Arguments<'_>) {
    let _ = Writer.write_fmt(args);
}

/// Waits until the UART has sent everything (before the machine is switched off).
pub fn flush() {
    if let Some(u) = uart() {
        u.flush();
    }
}

/// A byte from the console, if one arrived.
pub fn try_read_byte() -> Option<u8> {
    uart().and_then(|u| u.try_get_byte())
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints a line without taking the console lock.
#[macro_export]
macro_rules! eprintln {
    ($($arg:tt)*) => { $crate::console::emergency_print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// The `log` facade on the console. The level comes from the `log=` boot argument.
struct Logger;

static LEVEL: AtomicU8 = AtomicU8::new(log::LevelFilter::Info as u8);

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        (metadata.level() as u8) <= LEVEL.load(Ordering::Relaxed)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let cpu = crate::arch::aarch64::cpu_id();
            crate::println!("[{:>5} cpu{}] {}", record.level(), cpu, record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs the console logger at `level`.
pub fn init_logger(level: log::LevelFilter) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
