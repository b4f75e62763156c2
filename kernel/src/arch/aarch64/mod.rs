//! AArch64: boot glue, exceptions, interrupt windows, system registers, barriers, TLB maintenance, PSCI and SMP.

pub mod aspace;
pub mod boot;
pub mod cpu;
pub mod exceptions;
pub mod io;
pub mod irq;
pub mod mmu;
pub mod pmu;
pub mod power;
pub mod smp;
pub mod switch;
pub mod timer;
pub mod tlb;

pub use cpu::cpu_id;
