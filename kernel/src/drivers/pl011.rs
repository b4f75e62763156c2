//! Arm PrimeCell UART (PL011), the console on both boards.
//!
//! Register map and bit positions: Arm PrimeCell UART (PL011) Technical Reference Manual
//! r1p5, section 3.2 "Summary of registers" and 3.3 "Register descriptions".

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_bitfields;
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};

register_bitfields! {
    u32,
    /// Flag register (TRM 3.3.3).
    FR [
        /// Transmit FIFO full.
        TXFF OFFSET(5) NUMBITS(1) [],
        /// Receive FIFO empty.
        RXFE OFFSET(4) NUMBITS(1) [],
        /// UART busy transmitting.
        BUSY OFFSET(3) NUMBITS(1) []
    ],
    /// Line control register (TRM 3.3.7). Must be written after IBRD/FBRD.
    LCR_H [
        /// Word length.
        WLEN OFFSET(5) NUMBITS(2) [EightBit = 0b11],
        /// FIFOs enabled.
        FEN OFFSET(4) NUMBITS(1) []
    ],
    /// Control register (TRM 3.3.8).
    CR [
        /// Receive enable.
        RXE OFFSET(9) NUMBITS(1) [],
        /// Transmit enable.
        TXE OFFSET(8) NUMBITS(1) [],
        /// UART enable.
        UARTEN OFFSET(0) NUMBITS(1) []
    ]
}

register_structs! {
    /// The PL011 register block.
    #[allow(non_snake_case)]
    pub RegisterBlock {
        (0x00 => DR: ReadWrite<u32>),
        (0x04 => _reserved0),
        (0x18 => FR: ReadOnly<u32, FR::Register>),
        (0x1c => _reserved1),
        (0x24 => IBRD: ReadWrite<u32>),
        (0x28 => FBRD: ReadWrite<u32>),
        (0x2c => LCR_H: ReadWrite<u32, LCR_H::Register>),
        (0x30 => CR: ReadWrite<u32, CR::Register>),
        (0x34 => _reserved2),
        (0x44 => ICR: WriteOnly<u32>),
        (0x48 => @END),
    }
}

/// A PL011 at a mapped virtual address.
pub struct Pl011 {
    regs: *const RegisterBlock,
}

// SAFETY: the register block is MMIO; every access is a single volatile read or write, and the
// console serialises writers with its own lock.
unsafe impl Send for Pl011 {}
// SAFETY: as above.
unsafe impl Sync for Pl011 {}

impl Pl011 {
    /// # Safety
    /// `base` must be the virtual address of a mapped PL011 (Device memory) that stays mapped
    /// for as long as the returned value is used.
    pub const unsafe fn new(base: u64) -> Self {
        Self {
            regs: base as *const RegisterBlock,
        }
    }

    fn regs(&self) -> &RegisterBlock {
        // SAFETY: `new`'s contract: `regs` points at a mapped PL011 register block.
        unsafe { &*self.regs }
    }

    /// Programs 8N1 at `baud` from a `clock_hz` reference clock (TRM 3.3.6: the divisor is
    /// clock / (16 * baud), 16.6 fixed point; the fraction is rounded to the nearest 1/64).
    pub fn init(&self, clock_hz: u32, baud: u32) {
        let r = self.regs();
        r.CR.set(0);
        while r.FR.is_set(FR::BUSY) {}
        r.LCR_H.set(0); // flush the FIFOs
        r.ICR.set(0x7ff);
        let div64 = (u64::from(clock_hz) * 4 + u64::from(baud) / 2) / u64::from(baud); // 64 * clock / (16 * baud)
        r.IBRD.set((div64 >> 6) as u32);
        r.FBRD.set((div64 & 0x3f) as u32);
        r.LCR_H.write(LCR_H::WLEN::EightBit + LCR_H::FEN::SET);
        r.CR.write(CR::UARTEN::SET + CR::TXE::SET + CR::RXE::SET);
    }

    /// Sends one byte, waiting while the transmit FIFO is full.
    pub fn put_byte(&self, b: u8) {
        let r = self.regs();
        while r.FR.is_set(FR::TXFF) {
            core::hint::spin_loop();
        }
        r.DR.set(u32::from(b));
    }

    /// A received byte, if one is waiting.
    pub fn try_get_byte(&self) -> Option<u8> {
        let r = self.regs();
        if r.FR.is_set(FR::RXFE) {
            None
        } else {
            Some(r.DR.get() as u8)
        }
    }

    /// Waits until everything written has left the shift register.
    pub fn flush(&self) {
        while self.regs().FR.is_set(FR::BUSY) {
            core::hint::spin_loop();
        }
    }

    /// The identification registers UARTPeriphID0-3 and UARTPCellID0-3 (TRM 3.3.14-3.3.15,
    /// offsets 0xFE0-0xFFC, the low byte of each), as (peripheral ID, PrimeCell ID).
    pub fn ids(&self) -> (u32, u32) {
        let byte = |off: usize| {
            // SAFETY: `new`'s contract: the block's 4 KiB page is mapped (the ID registers are
            // its last 32 bytes); a read of an ID register has no side effect.
            let v = unsafe { ((self.regs as usize + off) as *const u32).read_volatile() };
            v & 0xff
        };
        let word = |first: usize| (0..4).fold(0, |w, i| w | byte(first + 4 * i) << (8 * i));
        (word(0xfe0), word(0xff0))
    }

    /// Writes a string, turning `\n` into `\r\n` for terminals.
    pub fn write_str(&self, s: &str) {
        for b in s.bytes() {
            if b == b'\n' {
                self.put_byte(b'\r');
            }
            self.put_byte(b);
        }
    }
}
