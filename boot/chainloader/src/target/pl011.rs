//! The PL011 console by polling, with a small software receive buffer, and the BCM2711 pin
//! routing that puts it on the 40-pin header.
//!
//! Register map: Arm PrimeCell UART (PL011) Technical Reference Manual r1p5, 3.2 "Summary of
//! registers" and 3.3 "Register descriptions" (DR 0x00 with the error bits FE/PE/BE/OE at
//! 8..11, FR 0x18, IBRD 0x24, FBRD 0x28, LCR_H 0x2c, CR 0x30, IMSC 0x38, ICR 0x44).
//!
//! Bytes may arrive while we transmit (the host answers READY at once, and a header is 28
//! bytes); the receive FIFO is 16 or 32 entries deep depending on the revision, so every wait
//! for transmit space also drains the receive FIFO into [`RX_BUFFER`] bytes of our own.

use core::sync::atomic::{AtomicU64, Ordering};

use super::cpu::Deadline;
use crate::protocol::Sink;

const DR: u64 = 0x00;
const FR: u64 = 0x18;
const IBRD: u64 = 0x24;
const FBRD: u64 = 0x28;
const LCR_H: u64 = 0x2c;
const CR: u64 = 0x30;
const IMSC: u64 = 0x38;
const ICR: u64 = 0x44;

const DR_ERRORS: u32 = 0xf << 8; // FE, PE, BE, OE
const FR_TXFF: u32 = 1 << 5;
const FR_RXFE: u32 = 1 << 4;
const FR_BUSY: u32 = 1 << 3;
const LCR_H_WLEN8: u32 = 0b11 << 5;
const LCR_H_FEN: u32 = 1 << 4;
const CR_RXE: u32 = 1 << 9;
const CR_TXE: u32 = 1 << 8;
const CR_UARTEN: u32 = 1 << 0;

/// Pause between two looks at an empty receive FIFO.
const RX_POLL_BACKOFF_US: u32 = 20;

/// Bytes buffered in software while transmitting.
const RX_BUFFER: usize = 256;

/// The console's base, for the panic handler (plain loads and stores: no exclusives).
static LAST_BASE: AtomicU64 = AtomicU64::new(0xfe20_1000);

/// The base of the last PL011 set up.
pub fn last_base() -> u64 {
    LAST_BASE.load(Ordering::Relaxed)
}

pub struct Pl011 {
    base: u64,
    rx: [u8; RX_BUFFER],
    head: usize,
    len: usize,
    errors: u32,
}

impl Pl011 {
    /// # Safety
    /// `base` must be the physical address of a PL011's registers, and the MMU off.
    pub unsafe fn new(base: u64) -> Self {
        LAST_BASE.store(base, Ordering::Relaxed);
        Self {
            base,
            rx: [0; RX_BUFFER],
            head: 0,
            len: 0,
            errors: 0,
        }
    }

    fn read(&self, off: u64) -> u32 {
        // SAFETY: `new`'s contract: a PL011 register block; `off` is one of its registers.
        unsafe { core::ptr::read_volatile((self.base + off) as *const u32) }
    }

    fn write(&self, off: u64, v: u32) {
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile((self.base + off) as *mut u32, v) }
    }

    /// 8N1 at `baud` from a `clock_hz` reference clock, FIFOs on, interrupts off (TRM 3.3.6:
    /// divisor = clock / (16 * baud) in 16.6 fixed point, the fraction rounded to 1/64).
    pub fn init(&mut self, clock_hz: u32, baud: u32) {
        self.flush();
        self.write(CR, 0);
        self.write(IMSC, 0);
        self.write(ICR, 0x7ff);
        let div64 = (u64::from(clock_hz) * 4 + u64::from(baud) / 2) / u64::from(baud);
        self.write(IBRD, (div64 >> 6) as u32);
        self.write(FBRD, (div64 & 0x3f) as u32);
        self.write(LCR_H, LCR_H_WLEN8 | LCR_H_FEN); // after IBRD/FBRD (TRM 3.3.7)
        self.write(CR, CR_UARTEN | CR_TXE | CR_RXE);
    }

    /// Makes sure transmit and receive are on, keeping the baud rate the firmware set.
    pub fn enable(&mut self) {
        let cr = self.read(CR);
        if cr & (CR_UARTEN | CR_TXE | CR_RXE) != (CR_UARTEN | CR_TXE | CR_RXE) {
            self.write(CR, cr | CR_UARTEN | CR_TXE | CR_RXE);
        }
    }

    /// Moves what the FIFO holds into the software buffer, while there is room (the FIFO
    /// keeps the rest; if it overflows, the UART flags the next byte with OE).
    fn drain_fifo(&mut self) {
        while self.len < RX_BUFFER && self.read(FR) & FR_RXFE == 0 {
            let d = self.read(DR);
            if d & DR_ERRORS != 0 {
                self.errors += 1;
            }
            self.rx[(self.head + self.len) % RX_BUFFER] = d as u8;
            self.len += 1;
        }
    }

    pub fn read_byte_within(&mut self, timeout_ms: u32) -> Option<u8> {
        let deadline = Deadline::after_ms(timeout_ms);
        loop {
            if self.len == 0 {
                self.drain_fifo();
            }
            if self.len > 0 {
                let b = self.rx[self.head];
                self.head = (self.head + 1) % RX_BUFFER;
                self.len -= 1;
                return Some(b);
            }
            if deadline.expired() {
                return None;
            }
            // Nothing yet: look again in a few microseconds rather than at once. The FIFO holds
            // 16+ characters (1.4 ms at 115200 baud, 170 us at 921600), so this loses nothing,
            // and under QEMU every register read takes the I/O thread's lock: polling flat out
            // starves the thread that feeds the FIFO.
            super::cpu::delay_us(RX_POLL_BACKOFF_US);
        }
    }

    pub fn take_errors(&mut self) -> u32 {
        core::mem::take(&mut self.errors)
    }

    fn put_byte(&mut self, b: u8) {
        while self.read(FR) & FR_TXFF != 0 {
            self.drain_fifo();
        }
        self.write(DR, b.into());
    }

    /// Waits until the last byte has left the shift register.
    pub fn flush(&mut self) {
        while self.read(FR) & FR_BUSY != 0 {
            self.drain_fifo();
        }
    }
}

impl Sink for Pl011 {
    fn put(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.put_byte(b);
        }
    }
}

/// BCM2711 GPIO registers ("BCM2711 ARM Peripherals" 5.3 "Register View"): GPFSEL1 (pins
/// 10-19) and GPFSEL3 (pins 30-39), three bits per pin; GPIO_PUP_PDN_CNTRL_REG0 (pins 0-15),
/// two bits per pin.
const GPFSEL1: u64 = 0x04;
const GPFSEL3: u64 = 0x0c;
const GPIO_PUP_PDN_CNTRL_REG0: u64 = 0xe4;
/// Function select values (5.3, GPFSELn): 000 input, 100 ALT0, 111 ALT3.
const FSEL_INPUT: u32 = 0b000;
const FSEL_ALT0: u32 = 0b100;
const FSEL_ALT3: u32 = 0b111;

/// Puts UART0 (the PL011) on GPIO 14/15 (TXD0/RXD0 are ALT0 there, pins 8 and 10 of the
/// header), without pulls, and takes it off GPIO 30-33, where the firmware routes it to the
/// Bluetooth module (CTS0/RTS0/TXD0/RXD0 are ALT3 there, datasheet 5.3 "Alternative Function
/// Assignments"), so that RXD0 has one source only. Our SD card boots a mainline device tree
/// without overlay symbols, so `dtoverlay=disable-bt` cannot do this for us.
///
/// # Safety
/// `base` must be the physical address of the BCM2711 GPIO block, and the MMU off.
pub unsafe fn route_uart0_to_gpio14_15(base: u64) {
    let reg = |off: u64| (base + off) as *mut u32;
    // SAFETY: the caller guarantees the GPIO block; these are its registers.
    unsafe {
        let mut sel3 = core::ptr::read_volatile(reg(GPFSEL3));
        for pin in 30..34 {
            let shift = (pin - 30) * 3;
            if (sel3 >> shift) & 0b111 == FSEL_ALT3 {
                sel3 = (sel3 & !(0b111 << shift)) | (FSEL_INPUT << shift);
            }
        }
        core::ptr::write_volatile(reg(GPFSEL3), sel3);
        let mut sel1 = core::ptr::read_volatile(reg(GPFSEL1));
        sel1 &= !((0b111 << 12) | (0b111 << 15)); // FSEL14 [14:12], FSEL15 [17:15]
        sel1 |= (FSEL_ALT0 << 12) | (FSEL_ALT0 << 15);
        core::ptr::write_volatile(reg(GPFSEL1), sel1);
        let pulls = core::ptr::read_volatile(reg(GPIO_PUP_PDN_CNTRL_REG0));
        core::ptr::write_volatile(reg(GPIO_PUP_PDN_CNTRL_REG0), pulls & !(0b1111 << 28));
    }
}
