//! In-kernel tests of the foundation: boot, device tree, memory, exceptions, SMP.
//! (Tests of a subsystem live next to it; these cover what the kernel module sets up.)

mod boot;
mod devices;
mod exceptions;
mod faults;
mod isolation;
mod memory;
mod mm;
mod notifier;
mod smmu;
mod smp;
mod sva;
