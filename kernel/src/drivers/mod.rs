//! Device drivers (the SMMU's is in `iommu`): PL011, BCM2711 GPIO and DMA controller, PCIe,
//! `edu`, the GIC (v2 and v3). Register blocks are tock-registers `register_structs!` or offsets into an `IoWindow`.

// The GPIO routing and the DMA controller's control blocks are plain arithmetic: host-tested.
// The rest needs the machine.
pub mod bcm2711_gpio;
pub mod bcm2835_dma;
#[cfg(target_os = "none")]
pub mod edu;
#[cfg(target_os = "none")]
pub mod gic;
#[cfg(target_os = "none")]
pub mod pcie;
#[cfg(target_os = "none")]
pub mod pl011;
