//! The BCM2711 GPIO block, only as far as the console needs it: route GPIO 14/15 to the PL011
//! (UART0 TXD0/RXD0 are alternate function 0 on those pins) with no pulls, and take UART0 off
//! GPIO 30-33, where the Pi 4 firmware routes it to the Bluetooth module (CTS0/RTS0/TXD0/RXD0
//! are ALT3 there), so that RXD0 has one source only. The chainloader does the same before the
//! MMU is on (`boot/chainloader/src/target/pl011.rs`); the kernel repeats it because it can also
//! be booted directly by the firmware.
//!
//! Register offsets: "BCM2711 ARM Peripherals" datasheet, section 5.3 "Register View"
//! (GPFSEL1 at 0x04, GPFSEL3 at 0x0c, three bits per pin; GPIO_PUP_PDN_CNTRL_REG0 at 0xe4, two
//! bits per pin) and 5.3 "Alternative Function Assignments".

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
        (0x0c => GPFSEL3: ReadWrite<u32>),
        (0x10 => _reserved2),
        (0xe4 => GPIO_PUP_PDN_CNTRL_REG0: ReadWrite<u32>),
        (0xe8 => @END),
    }
}

/// Function select values (GPFSELn): input, ALT0, ALT3.
const FSEL_INPUT: u32 = 0b000;
const FSEL_ALT0: u32 = 0b100;
const FSEL_ALT3: u32 = 0b111;

/// GPFSEL1 with GPIO 14 and 15 (FSEL14 [14:12], FSEL15 [17:15]) on ALT0, the rest kept.
fn select_uart0_on_14_15(sel1: u32) -> u32 {
    let cleared = sel1 & !((0b111 << 12) | (0b111 << 15));
    cleared | (FSEL_ALT0 << 12) | (FSEL_ALT0 << 15)
}

/// GPFSEL3 with every one of GPIO 30-33 that is on ALT3 (UART0) made an input; pins on other
/// functions are left alone.
fn release_uart0_from_30_33(sel3: u32) -> u32 {
    (0..4).fold(sel3, |sel, pin| {
        let shift = pin * 3;
        if (sel >> shift) & 0b111 == FSEL_ALT3 {
            (sel & !(0b111 << shift)) | (FSEL_INPUT << shift)
        } else {
            sel
        }
    })
}

/// GPIO_PUP_PDN_CNTRL_REG0 with no pull on GPIO 14 and 15 (bits [31:28]).
fn no_pull_on_14_15(pulls: u32) -> u32 {
    pulls & !(0b1111 << 28)
}

/// Takes UART0 off GPIO 30-33, selects ALT0 (PL011 UART0) on GPIO 14 and 15 and disables
/// their pull resistors.
///
/// # Safety
/// `base` must be the mapped virtual address of the BCM2711 GPIO block.
pub unsafe fn route_uart0_to_gpio14_15(base: u64) {
    // SAFETY: the caller guarantees `base` maps the GPIO register block.
    let regs = unsafe { &*(base as *const RegisterBlock) };
    // Off the Bluetooth pins first, so RXD0 never has two sources at once.
    regs.GPFSEL3
        .set(release_uart0_from_30_33(regs.GPFSEL3.get()));
    regs.GPFSEL1.set(select_uart0_on_14_15(regs.GPFSEL1.get()));
    let pulls = regs.GPIO_PUP_PDN_CNTRL_REG0.get();
    regs.GPIO_PUP_PDN_CNTRL_REG0.set(no_pull_on_14_15(pulls));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uart0_goes_to_14_15_and_keeps_the_other_pins() {
        // FSEL10..19 all ALT5 (0b010) except 14/15, which start as inputs.
        let sel1 = 0b010_010_010_010_000_000_010_010_010_010;
        let want = 0b010_010_010_010_100_100_010_010_010_010;
        assert_eq!(select_uart0_on_14_15(sel1), want);
        assert_eq!(select_uart0_on_14_15(want), want, "idempotent");
    }

    #[test]
    fn only_alt3_pins_among_30_33_are_released() {
        // GPIO 30 ALT3, 31 ALT3, 32 output (0b001), 33 ALT3; GPIO 34 (bits [14:12]) ALT3 too,
        // which is not ours to touch.
        let sel3 =
            (FSEL_ALT3 << 12) | (FSEL_ALT3 << 9) | (0b001 << 6) | (FSEL_ALT3 << 3) | FSEL_ALT3;
        let want = (FSEL_ALT3 << 12) | (0b001 << 6);
        assert_eq!(release_uart0_from_30_33(sel3), want);
        assert_eq!(release_uart0_from_30_33(0), 0);
    }

    #[test]
    fn pulls_cleared_on_14_15_only() {
        assert_eq!(no_pull_on_14_15(0xffff_ffff), 0x0fff_ffff);
        assert_eq!(no_pull_on_14_15(0x5000_0005), 0x0000_0005);
    }

    #[test]
    fn routing_writes_the_registers() {
        // A fake register block in memory, laid out as the hardware's.
        let mut block = [0u32; 0xe8 / 4];
        block[0x04 / 4] = 0;
        block[0x0c / 4] = FSEL_ALT3 | (FSEL_ALT3 << 3) | (FSEL_ALT3 << 6) | (FSEL_ALT3 << 9);
        block[0xe4 / 4] = 0xa000_0000;
        // SAFETY: `block` is as large as the register block and lives across the call.
        unsafe { route_uart0_to_gpio14_15(block.as_mut_ptr() as u64) };
        assert_eq!(block[0x04 / 4], (FSEL_ALT0 << 12) | (FSEL_ALT0 << 15));
        assert_eq!(block[0x0c / 4], 0);
        assert_eq!(block[0xe4 / 4], 0);
    }
}
