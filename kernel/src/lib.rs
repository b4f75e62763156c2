//! # Shootdown
//!
//! A bare-metal aarch64 unikernel that shares address spaces between CPUs and DMA devices behind
//! an Arm SMMUv3, and guarantees that **no device ever uses a stale translation**: every unmap,
//! protection change or teardown reaches the IOMMU (through the notifier core's
//! `arch_invalidate_secondary_tlbs`) before the operation returns.
//!
//! The crate is split so that its folders say what the kernel is made of. Layers, bottom to
//! top; a module imports only from layers below it (`kernel/tests/architecture.rs` checks):
//!
//! | module | what it is | where it runs |
//! |---|---|---|
//! | [`sync`], [`trace`] | spin locks, the grace-period mechanism (SRCU role), loom facade; per-CPU event rings | host + kernel |
//! | [`board`] | what differs between QEMU `virt` and the Raspberry Pi 4, read from the device tree; this boot's facts | host + kernel |
//! | [`mm`] | addresses, frames, page tables, address spaces, the notifier core; RAM and the linear map; the DMA copy seam | host + kernel |
//! | `arch::aarch64` | boot glue, exceptions, system registers, barriers, TLBI, PSCI, SMP, MMIO | kernel |
//! | [`drivers`] | PL011, BCM2711 GPIO and DMA controller, PCIe, `edu` | kernel (GPIO routing and DMA control blocks also on the host) |
//! | `console` | `print!`, the `log` facade, the emergency path | kernel |
//! | `rt` | the runtime: exit, panic, heap | kernel |
//! | [`iommu`] | the SMMUv3 in one tree: spec encodings, driver, backends (MMIO, model, injector), SVA, probe | host + kernel |
//! | [`ktest`] | the in-kernel test framework and its KTAP v1 output | kernel (format code also on the host) |
//! | `rig` | test rigs: a DMA master bound to an address space | kernel |
//! | [`workload`] | the coherence job, the soak, the fault plan | kernel (fault plan also on the host) |
//! | `bench`, `suites` | in-kernel benchmarks and KTAP test suites | kernel |
//! | `kmain` | the composition root: the boot order; nothing imports it | kernel |
//!
//! Everything marked "host" is portable code: it builds and is unit-tested with plain
//! `cargo test` on the development machine, and the concurrency core also under `loom`
//! (`RUSTFLAGS="--cfg loom"`). Hardware access is confined to `arch`, `drivers`, `console` and
//! `rt`, which only exist when building for the kernel target (`target_os = "none"`).
#![cfg_attr(not(any(test, loom)), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;
// Host builds used as a library (the fuzz targets, benches, the harness) are `no_std` too, but
// need thread-locals: on the host a thread stands for a CPU.
#[cfg(all(not(target_os = "none"), not(test), not(loom)))]
extern crate std;

pub mod board;
pub mod drivers;
pub mod iommu;
pub mod ktest;
pub mod mm;
pub mod sync;
pub mod time;
pub mod trace;
pub mod workload;

#[cfg(target_os = "none")]
pub mod arch;
#[cfg(target_os = "none")]
mod bench;
#[cfg(target_os = "none")]
pub mod console;
#[cfg(target_os = "none")]
mod kmain;
#[cfg(target_os = "none")]
pub mod rig;
#[cfg(target_os = "none")]
pub mod rt;
#[cfg(target_os = "none")]
mod suites;
