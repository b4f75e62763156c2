//! # Shootdown
//!
//! A bare-metal aarch64 unikernel that shares address spaces between CPUs and DMA devices behind
//! an Arm SMMUv3, and guarantees that **no device ever uses a stale translation**: every unmap,
//! protection change or teardown reaches the IOMMU (through the notifier core's
//! `arch_invalidate_secondary_tlbs`) before the operation returns.
//!
//! The crate is split so that its folders say what the kernel is made of:
//!
//! | module | what it is | where it runs |
//! |---|---|---|
//! | [`sync`] | spin locks, the grace-period mechanism (SRCU role), loom facade | host + kernel |
//! | [`mm`] | addresses, frames, page tables, address spaces, the notifier core | host + kernel |
//! | [`iommu`] | SMMUv3 command/table encodings, the SMMU model, the driver, SVA binding | host + kernel |
//! | [`board`] | what differs between QEMU `virt` and the Raspberry Pi 4, read from the device tree | host + kernel |
//! | [`ktest`] | in-kernel tests and their KTAP v1 output | kernel (format code also on the host) |
//! | [`trace`] | per-CPU event rings, dumped for Chrome/Perfetto traces | host + kernel |
//! | `arch::aarch64` | boot glue, exceptions, system registers, barriers, TLBI, PSCI, SMP | kernel |
//! | `drivers` | PL011, GIC, PCIe, `edu` | kernel |
//!
//! Everything marked "host" is portable code: it builds and is unit-tested with plain
//! `cargo test` on the development machine, and the concurrency core also under `loom`
//! (`RUSTFLAGS="--cfg loom"`). Hardware access is confined to `arch` and `drivers`, which only
//! exist when building for the kernel target (`target_os = "none"`).
#![cfg_attr(not(any(test, loom)), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;
// Host builds used as a library (the fuzz targets, benches, the harness) are `no_std` too, but
// need thread-locals: on the host a thread stands for a CPU.
#[cfg(all(not(target_os = "none"), not(test), not(loom)))]
extern crate std;

pub mod board;
pub mod fault;
pub mod iommu;
pub mod ktest;
pub mod mm;
pub mod sync;
pub mod trace;

#[cfg(target_os = "none")]
pub mod arch;
#[cfg(target_os = "none")]
mod bench;
#[cfg(target_os = "none")]
pub mod console;
pub mod drivers;
#[cfg(target_os = "none")]
mod job;
#[cfg(target_os = "none")]
pub mod kernel;
#[cfg(target_os = "none")]
mod soak;
#[cfg(target_os = "none")]
mod tests;
