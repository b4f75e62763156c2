//! The in-kernel test suites (KTAP, `ktest=<glob>`): boot, devices, the DMA controller, memory,
//! exceptions, SMP, the notifier, the SMMU, SVA, isolation, fault injection, and the test
//! framework's own self-tests. Each `ktest!` registers itself in a linker section; nothing lists them.

mod boot;
mod devices;
mod dma;
mod exceptions;
mod faults;
mod isolation;
mod ktest;
mod memory;
mod mm;
mod mmu;
mod notifier;
mod smmu;
mod smp;
mod sva;
