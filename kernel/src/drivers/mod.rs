//! Device drivers (the SMMU's is in `iommu`). Each MMIO block is described with tock-registers `register_structs!`.

// The GPIO routing is plain register arithmetic: host-tested. The rest needs the machine.
pub mod bcm2711_gpio;
#[cfg(target_os = "none")]
pub mod edu;
#[cfg(target_os = "none")]
pub mod pcie;
#[cfg(target_os = "none")]
pub mod pl011;
