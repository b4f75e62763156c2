//! Host-side test harness for Shootdown: boots the kernel under QEMU with a board profile (or
//! reads a real board's serial port), parses the KTAP it prints and reports per test.

pub mod ktap;

#[cfg(test)]
mod ktap_fixtures;
