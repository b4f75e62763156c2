//! Host-side test harness for Shootdown: boots the kernel under QEMU with a board profile (or
//! reads a real board's serial port), parses the KTAP it prints and reports per test.

pub mod ktap;

pub mod capture;
pub mod junit;
#[cfg(test)]
mod ktap_fixtures;
pub mod profile;
pub mod qemu;
pub mod report;
