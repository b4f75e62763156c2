//! What an SMMU implements, read from its ID registers (SMMUv3 §6.3.1-§6.3.6).

use core::fmt;

use tock_registers::LocalRegisterCopy;

use crate::iommu::backend::SmmuBackend;
use crate::iommu::spec::regs::{self, offset, IDR0, IDR1, IDR3, IDR5};

/// The features the driver looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub stage1: bool,
    pub stage2: bool,
    /// AArch64 translation tables (IDR0.TTF has bit 1 set).
    pub aarch64_tables: bool,
    /// Table, queue and DMA accesses are coherent (IDR0.COHACC).
    pub coherent: bool,
    /// Broadcast TLB maintenance.
    pub btm: bool,
    /// Hypervisor (EL2) contexts.
    pub hyp: bool,
    pub ats: bool,
    pub pri: bool,
    pub msi: bool,
    /// Little-endian table walks are supported (IDR0.TTENDIAN != 0b11).
    pub little_endian: bool,
    /// Terminated transactions always abort: CD.A must be 1 (IDR0.TERM_MODEL).
    pub term_model_abort_only: bool,
    /// IDR0.STALL_MODEL.
    pub stall_model: u8,
    /// Two-level stream tables.
    pub two_level_stream_table: bool,
    pub asid_bits: u8,
    pub vmid_bits: u8,
    pub sid_bits: u8,
    pub ssid_bits: u8,
    pub cmdq_max_log2: u8,
    pub eventq_max_log2: u8,
    /// Range invalidation and the TTL hint (IDR3.RIL).
    pub range_invalidation: bool,
    /// Hierarchical attribute disables (IDR3.HAD).
    pub had: bool,
    /// IDR5.OAS encoding.
    pub oas: u8,
    /// Output address size in bits.
    pub oas_bits: u8,
    pub granule_4k: bool,
    pub granule_16k: bool,
    pub granule_64k: bool,
    /// SMMU_AIDR: architecture minor revision (0 = v3.0, 1 = v3.1, ...).
    pub minor_revision: u8,
}

impl Features {
    /// Reads the ID registers.
    pub fn read(regs: &impl SmmuBackend) -> Features {
        let idr0 = LocalRegisterCopy::<u32, IDR0::Register>::new(regs.read32(offset::IDR0));
        let idr1 = LocalRegisterCopy::<u32, IDR1::Register>::new(regs.read32(offset::IDR1));
        let idr3 = LocalRegisterCopy::<u32, IDR3::Register>::new(regs.read32(offset::IDR3));
        let idr5 = LocalRegisterCopy::<u32, IDR5::Register>::new(regs.read32(offset::IDR5));
        let aidr = regs.read32(offset::AIDR);
        let oas = idr5.read(IDR5::OAS) as u8;
        Features {
            stage1: idr0.is_set(IDR0::S1P),
            stage2: idr0.is_set(IDR0::S2P),
            aarch64_tables: idr0.read(IDR0::TTF) & 0b10 != 0,
            coherent: idr0.is_set(IDR0::COHACC),
            btm: idr0.is_set(IDR0::BTM),
            hyp: idr0.is_set(IDR0::HYP),
            ats: idr0.is_set(IDR0::ATS),
            pri: idr0.is_set(IDR0::PRI),
            msi: idr0.is_set(IDR0::MSI),
            little_endian: idr0.read(IDR0::TTENDIAN) != 0b11,
            term_model_abort_only: idr0.is_set(IDR0::TERM_MODEL),
            stall_model: idr0.read(IDR0::STALL_MODEL) as u8,
            two_level_stream_table: idr0.read(IDR0::ST_LEVEL) == 1,
            asid_bits: if idr0.is_set(IDR0::ASID16) { 16 } else { 8 },
            vmid_bits: if idr0.is_set(IDR0::VMID16) { 16 } else { 8 },
            sid_bits: idr1.read(IDR1::SIDSIZE) as u8,
            ssid_bits: idr1.read(IDR1::SSIDSIZE) as u8,
            cmdq_max_log2: idr1.read(IDR1::CMDQS) as u8,
            eventq_max_log2: idr1.read(IDR1::EVENTQS) as u8,
            range_invalidation: idr3.is_set(IDR3::RIL),
            had: idr3.is_set(IDR3::HAD),
            oas,
            // Reserved encodings are treated as the largest defined size (§6.3.6).
            oas_bits: regs::oas_bits(oas).unwrap_or(52),
            granule_4k: idr5.is_set(IDR5::GRAN4K),
            granule_16k: idr5.is_set(IDR5::GRAN16K),
            granule_64k: idr5.is_set(IDR5::GRAN64K),
            minor_revision: (aidr & 0xf) as u8,
        }
    }

    /// The first missing feature this driver needs, if any.
    pub fn missing_requirement(&self) -> Option<&'static str> {
        if !self.stage1 {
            Some("stage-1 translation (IDR0.S1P)")
        } else if !self.aarch64_tables {
            Some("AArch64 translation tables (IDR0.TTF)")
        } else if !self.granule_4k {
            Some("the 4 KiB granule (IDR5.GRAN4K)")
        } else if !self.coherent {
            Some("coherent table and queue access (IDR0.COHACC)")
        } else if !self.little_endian {
            Some("little-endian table walks (IDR0.TTENDIAN)")
        } else {
            None
        }
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "SMMUv3.{}: stage1 {} stage2 {}, ASID {} bits, VMID {} bits, SID {} bits, SSID {} bits, \
             OAS {} bits, granules{}{}{}, RIL {}, BTM {}, coherent {}, cmdq 2^{}, eventq 2^{}",
            self.minor_revision,
            yes(self.stage1),
            yes(self.stage2),
            self.asid_bits,
            self.vmid_bits,
            self.sid_bits,
            self.ssid_bits,
            self.oas_bits,
            if self.granule_4k { " 4K" } else { "" },
            if self.granule_16k { " 16K" } else { "" },
            if self.granule_64k { " 64K" } else { "" },
            yes(self.range_invalidation),
            yes(self.btm),
            yes(self.coherent),
            self.cmdq_max_log2,
            self.eventq_max_log2,
        )
    }
}
