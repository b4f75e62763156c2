//! # The Shootdown UART chainloader
//!
//! A small boot image for the Raspberry Pi 4 (and QEMU `raspi4b`) that receives a kernel over
//! the PL011 serial port, places it in RAM, and jumps to it, so that a test loop on real
//! hardware needs no SD card swaps: flash the card once with `chainloader.img` as the kernel,
//! then `make chainboot` / `make hil` push each new build.
//!
//! ## Boot
//! The firmware (or QEMU) loads `chainloader.img` like any arm64 Image (Linux
//! `Documentation/arch/arm64/booting.rst`): at a 2 MiB-aligned base (0x200000 on the Pi,
//! `kernel_address` in `config.txt`), MMU off, x0 = the device tree. The image is linked at 0
//! as a static PIE: `entry.S` applies its own `R_AARCH64_RELATIVE` relocations for wherever
//! it was loaded, so it runs at any address. Only the boot CPU enters on the Pi (the others
//! wait in the firmware's spin tables, which we leave alone); a core that does arrive here
//! waits in the loader and is released into the kernel's entry point with it, as if the kernel
//! had been loaded directly.
//!
//! The loader then reads the device tree ([`board`]): the console PL011 (the `stdout-path`
//! one if it is a PL011, else the first enabled one), the BCM2711 GPIO block, RAM and what is
//! reserved in it. Without a usable tree it says so on a fallback UART chosen by load address
//! (as `boot/entry.S` does) and waits: a kernel needs a tree, so it does not load blind.
//!
//! ## Protocol
//! [`protocol`] has the wire format and [`receiver`] the loader's state machine; the host side
//! is `harness chainboot` in `tests/`, which uses the same [`protocol`] code. In short: the
//! loader prints `@@SDCL READY`, the host sends a 28-byte header (lengths, CRC-32 of the
//! payload, its own CRC-32), the loader plans a slot ([`placement`]) and answers
//! `ACK HEADER` or a `NAK` with the reason, the host streams the kernel and its boot arguments,
//! the loader checks them and answers `ACK DATA` (and jumps) or `NAK` (and waits again).
//!
//! ## Boot arguments
//! A chainloaded kernel would otherwise see the firmware's `/chosen/bootargs` (`cmdline.txt`).
//! The host can send boot arguments with the kernel; the loader writes them into a copy of
//! the device tree placed after the kernel ([`fdt_edit`]), appended to or replacing the
//! firmware's, and passes that copy in x0. That is how `make hil` selects tests per run.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod board;
pub mod crc32;
pub mod fdt_edit;
pub mod placement;
pub mod protocol;
pub mod receiver;

#[cfg(target_os = "none")]
mod target;
