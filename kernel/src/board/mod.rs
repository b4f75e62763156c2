//! What differs between the boards we run on (QEMU `virt`, QEMU `raspi4b`, a real Raspberry Pi
//! 4), found from the device tree the firmware or QEMU hands over. The device tree is the
//! source of truth: no board constant is used once it has been read (the fallback UART of
//! `boot/entry.S` exists only to report a missing or corrupt tree).
#![forbid(unsafe_code)]

pub mod banner;
pub mod boot;
pub mod bootargs;
pub mod dt;
pub mod interrupts;
pub mod iommu_map;

pub use banner::Banner;
pub use boot::{boot_facts, bootargs, info, init, BootFacts};
pub use bootargs::BootArgs;
pub use dt::{BoardInfo, BoardKind, DtError};
pub use iommu_map::{Bdf, IommuMap, StreamIdError};
