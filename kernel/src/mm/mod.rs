//! Memory management: typed addresses, physical frames, page tables, address spaces and the
//! notifier core that keeps secondary TLBs (the SMMU's IOTLB) coherent with them.

pub mod addr;
pub mod notifier;
pub mod phys;

pub use addr::{PhysAddr, VirtAddr, PAGE_SHIFT, PAGE_SIZE};
