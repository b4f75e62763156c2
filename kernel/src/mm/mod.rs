//! Memory management: typed addresses, physical frames, page tables, address spaces and the
//! notifier core that keeps secondary TLBs (the SMMU's IOTLB) coherent with them.

pub mod addr;
pub mod asid;
pub mod aspace;
pub mod dma;
#[cfg(not(target_os = "none"))]
pub mod fake;
pub mod frame;
pub mod heap_ram;
pub mod inject;
pub mod layout;
pub mod notifier;
pub mod pgtable;
pub mod phys;
#[cfg(target_os = "none")]
pub mod ram;

pub use addr::{PhysAddr, VirtAddr, PAGE_SHIFT, PAGE_SIZE};
