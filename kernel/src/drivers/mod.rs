//! Device drivers. Each MMIO block is described with tock-registers `register_structs!`.

pub mod bcm2711_gpio;
pub mod edu;
pub mod pcie;
pub mod pl011;
pub mod smmuv3;
