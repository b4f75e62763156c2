//! The BCM2711 GPIO block, only as far as the console needs it: route GPIO 14/15 to the PL011
//! (UART0 TXD0/RXD0 are alternate function 0 on those pins) with no pulls.
//!
//! Register offsets: "BCM2711 ARM Peripherals" datasheet, section 5.3 "Register View"
//! (GPFSEL1 at 0x04; GPIO_PUP_PDN_CNTRL_REG0 at 0xe4, two bits per pin).

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_structs;
use tock_registers::registers::ReadWrite;

register_structs! {
    /// The part of the GPIO block we touch.
    #[allow(non_snake_case)]
    pub RegisterBlock {
        (0x00 => _reserved0),
        (0x04 => GPFSEL1: ReadWrite<u32>),
        (0x08 => _reserved1),
        (0xe4 => GPIO_PUP_PDN_CNTRL_REG0: ReadWrite<u32>),
        (0xe8 => @END),
    }
}

/// Selects ALT0 (PL011 UART0) on GPIO 14 and 15 and disables their pull resistors.
///
/// # Safety
/// `base` must be the mapped virtual address of the BCM2711 GPIO block.
pub unsafe fn route_uart0_to_gpio14_15(base: u64) {
    // SAFETY: the caller guarantees `base` maps the GPIO register block.
    let regs = unsafe { &*(base as *const RegisterBlock) };
    const ALT0: u32 = 0b100;
    let mut sel = regs.GPFSEL1.get();
    sel &= !((0b111 << 12) | (0b111 << 15)); // FSEL14 [14:12], FSEL15 [17:15]
    sel |= (ALT0 << 12) | (ALT0 << 15);
    regs.GPFSEL1.set(sel);
    let pulls = regs.GPIO_PUP_PDN_CNTRL_REG0.get();
    regs.GPIO_PUP_PDN_CNTRL_REG0.set(pulls & !(0b1111 << 28)); // pins 14, 15: no pull
}
