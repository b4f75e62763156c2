//! Host-side test harness for Shootdown: boots the kernel under QEMU with a board profile (or
//! reads a real board's serial port), parses the KTAP it prints and reports per test.
//!
//! - [`ktap`]: the KTAP v1 parser (the verdict).
//! - [`capture`]: watching a running target with time limits.
//! - [`profile`], [`qemu`]: board profiles (`qemu/*.toml`) and the QEMU command line.
//! - [`serial`]: a real board's serial port; [`chainload`]: pushing a kernel through the
//!   UART chainloader.
//! - [`report`], [`junit`], [`results`]: the human summary, JUnit XML and per-case JSON.
//! - [`kunit`]: the cross-check with Linux's own KTAP parser (`kunit.py parse`).
//! - [`machine`]: what a QEMU line gives the guest, against the kernel's banner.
//! - [`matrix`]: raw QEMU lines as users write them (`qemu/matrix.toml`), sampled by date.
//! - [`trace`]: the kernel's event trace as Chrome/Perfetto JSON.
//! - [`bench`]: `make bench`'s report (results file, SVG plots, performance goals).
//! - [`soak`]: `make soak`'s runs judged from the kernel's summary lines.
//! - [`cli`], [`app`]: the `harness` command.

pub mod app;
pub mod bench;
pub mod capture;
pub mod chainload;
pub mod cli;
pub mod junit;
pub mod ktap;
pub mod kunit;
pub mod machine;
pub mod matrix;
pub mod profile;
pub mod qemu;
pub mod report;
pub mod results;
pub mod serial;
pub mod soak;
pub mod trace;

#[cfg(test)]
mod ktap_fixtures;
