//! The kernel console: `print!`/`println!`, the `log` facade, and an emergency path for panics
//! and exception reports that takes no lock.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::arch::aarch64::mmu;
use crate::board::{BoardInfo, BoardKind};
use crate::drivers::pl011::Pl011;

/// Virtual address of the console UART (0 = no console yet).
static UART_VA: AtomicU64 = AtomicU64::new(0);
/// Serialises whole `print!` calls so lines from different CPUs don't interleave.
static LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Moves the console from the fallback UART to the PL011 the device tree names (and, on the
/// Pi, routes its pins and clock first). Needs `ioremap`; stays on the fallback on any failure.
pub fn init(info: &BoardInfo) {
    let Some(uart) = info.uart else {
        log::warn!("no PL011 in the device tree: staying on the fallback UART");
        return;
    };
    let va = match mmu::ioremap(uart.base, uart.size.max(0x1000)) {
        Ok(va) => va,
        Err(e) => {
            log::warn!("cannot map the UART at {:#x}: {e:?}", uart.base);
            return;
        }
    };
    if info.kind == BoardKind::RaspberryPi4 {
        // Real Pi firmware leaves GPIO 14/15 to the mini UART unless told otherwise, and the
        // PL011 reference clock is `init_uart_clock` (48 MHz in our config.txt).
        if let Some(gpio) = info
            .gpio
            .and_then(|g| mmu::ioremap(g.base, g.size.max(0x1000)).ok())
        {
            flush();
            // SAFETY: `gpio` maps the BCM2711 GPIO block.
            unsafe { crate::drivers::bcm2711_gpio::route_uart0_to_gpio14_15(gpio) };
            // SAFETY: `va` maps the PL011 the device tree names.
            unsafe { Pl011::new(va) }.init(48_000_000, 115_200);
        }
    }
    flush();
    // SAFETY: `va` maps the PL011 for the rest of the kernel's life.
    unsafe { set_uart(va) };
}

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
