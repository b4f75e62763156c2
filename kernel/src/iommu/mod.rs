//! The IOMMU side: Arm SMMUv3 encodings, the software SMMU model, the driver and SVA binding.
//!
//! | module | what it is |
//! |---|---|
//! | [`regs`] | register map (pages 0 and 1) and register fields |
//! | [`command`] | command-queue entries: typed commands, encode/decode |
//! | [`ste`], [`cd`] | stream table entries and context descriptors |
//! | [`event`] | event-queue records |
//! | [`queue`] | circular-queue index arithmetic |
pub mod cd;
pub mod command;
pub mod event;
pub mod planner;
pub mod queue;
pub mod regs;
pub mod ste;
