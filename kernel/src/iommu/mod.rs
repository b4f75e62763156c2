//! The IOMMU side: Arm SMMUv3 encodings, the software SMMU model, the driver and SVA binding.
//!
//! | module | what it is |
//! |---|---|
//! | [`regs`] | register map (pages 0 and 1) and register fields |
//! | `bits` | bit fields of the in-memory structures (`[hi:lo]` of a 64-bit word) |
//! | [`command`] | command-queue entries: typed commands, encode/decode |
//! | [`ste`], [`cd`] | stream table entries and context descriptors |
//! | [`event`] | event-queue records |
//! | [`queue`] | circular-queue index arithmetic |
//! | [`planner`] | which TLBI commands an `arch_invalidate_secondary_tlbs(start, end)` sends |
//! | [`features`] | what an SMMU implements (ID registers) |
//! | [`driver`] | the driver core: probe, stream table, contexts, queues, invalidation, events |
//! | `kernel` | the kernel's SMMU (MMIO, or the model on the Pi), probed at boot (kernel only) |
//! | [`sva`] | binding devices to address spaces: one context and one notifier subscription per (SMMU, address space) |
//! | [`inject`] | fault injection at the driver/backend boundary (CMD_SYNC timeout, command error) |
//! | [`backend`] | what the driver needs: register access, a clock, table memory |
//! | [`model`] | the software SMMUv3 (backend 2) with IOTLB, coherence checker and a DMA engine |
//! | [`physmem`] | byte/word access to physical memory without `unsafe` |
//! | `rig` | (kernel) a DMA master bound to an address space, for tests and the main job |
//! | [`testing`] | an in-memory physical arena, a minimal page-table builder, a stepping clock |
pub mod backend;
mod bits;
pub mod cd;
pub mod command;
pub mod driver;
pub mod event;
pub mod features;
pub mod inject;
#[cfg(target_os = "none")]
pub mod kernel;
pub mod model;
pub mod physmem;
pub mod planner;
pub mod queue;
pub mod regs;
#[cfg(target_os = "none")]
pub mod rig;
pub mod ste;
pub mod sva;
pub mod testing;
