//! The IOMMU side: Arm SMMUv3 encodings, the software SMMU model, the driver and SVA binding.
//!
//! One tree, split by what the SMMUv3 spec defines (cf. Linux `drivers/iommu/arm/arm-smmu-v3/`):
//!
//! | module | what it is |
//! |---|---|
//! | [`spec`] | the encodings: registers, commands, STEs, CDs, events, queue arithmetic, ID features |
//! | [`driver`] | the driver, one file per family: `init`, `cmdq`, `strtab`, `context`, `invalidate` (+ `planner`), `evtq`, `error` |
//! | [`backend`] | what the driver runs on ([`backend::SmmuBackend`]): `mmio` (a real SMMU, kernel only), [`backend::model`] (the software SMMUv3 with IOTLB, walk cache, coherence checker, a DMA engine and a master whose bytes a DMA controller moves), [`backend::inject`] (the fault injector wrapping either) |
//! | [`sva`] | binding devices to address spaces: one context and one notifier subscription per (SMMU, address space) |
//! | [`iova`] | IOVAs below a device's DMA mask (Linux `iova.c`) |
//! | `dma` | the DMA API: a device's own translated domain with IOVAs below its mask (dma-iommu), or bus = physical address (dma-direct) (kernel only) |
//! | `probe` | the board's SMMU (MMIO, or the model on the Pi), probed at boot (kernel only) |
//! | [`physmem`] | byte/word access to physical memory without `unsafe` |
//! | [`fake`] | the test seam: an in-memory physical arena, a minimal page-table builder, a stepping clock |
//!
//! No `unsafe` anywhere below: the MMIO accessors live in `arch::aarch64::io`.

#![forbid(unsafe_code)]

pub mod backend;
#[cfg(target_os = "none")]
pub mod dma;
pub mod driver;
pub mod fake;
pub mod iova;
pub mod physmem;
#[cfg(target_os = "none")]
pub mod probe;
pub mod spec;
pub mod sva;
