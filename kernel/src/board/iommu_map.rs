//! Which StreamID a PCIe function has on the board's SMMU: the host bridge's `iommu-map`
//! entries for that SMMU, taken out of the device tree so the IOMMU probe gets them as an
//! argument instead of reading the board.

use core::fmt;

use super::dt::{BoardInfo, PcieHost};

/// A function's address on the root complex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bdf {
    /// Bus.
    pub bus: u8,
    /// Device (0..32).
    pub device: u8,
    /// Function (0..8).
    pub function: u8,
}

impl Bdf {
    /// The PCI requester ID (`bus << 8 | device << 3 | function`). Its StreamID comes from the
    /// host bridge's `iommu-map` ([`IommuMap::stream_id`]); on QEMU virt that map happens to
    /// be the identity.
    pub fn requester_id(&self) -> u16 {
        (u16::from(self.bus) << 8) | (u16::from(self.device) << 3) | u16::from(self.function)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// A PCIe requester has no StreamID on this SMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamIdError {
    /// No SMMU, or the device tree does not say which node it is.
    NoSmmu,
    /// No PCIe host bridge in the device tree.
    NoHostBridge,
    /// The host bridge's `iommu-map` does not cover this requester for our SMMU.
    NotMapped(Bdf),
}

impl fmt::Display for StreamIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSmmu => f.write_str("no SMMU (or it has no phandle)"),
            Self::NoHostBridge => f.write_str("no PCIe host bridge"),
            Self::NotMapped(bdf) => write!(f, "iommu-map has no StreamID for {bdf}"),
        }
    }
}

/// The host bridge's `iommu-map` as one SMMU (by phandle) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IommuMap {
    phandle: u32,
    host: PcieHost,
}

impl IommuMap {
    /// The StreamID of PCIe function `bdf` (never assumed to be the requester ID).
    pub fn stream_id(&self, bdf: Bdf) -> Result<u32, StreamIdError> {
        self.host
            .stream_id(self.phandle, bdf.requester_id())
            .ok_or(StreamIdError::NotMapped(bdf))
    }
}

impl BoardInfo {
    /// The `iommu-map` of the PCIe host bridge for the board's SMMU.
    pub fn iommu_map(&self) -> Result<IommuMap, StreamIdError> {
        let phandle = self.smmu_phandle.ok_or(StreamIdError::NoSmmu)?;
        let host = self.pcie.clone().ok_or(StreamIdError::NoHostBridge)?;
        Ok(IommuMap { phandle, host })
    }
}
