//! The SMMUv3 programming interface: register map and register fields.
//!
//! Source: Arm SMMUv3 architecture specification (IHI 0070), §6.2 "Register overview" and §6.3
//! "Register formats". Only the Non-secure registers a stage-1 driver needs are described.
//!
//! The SMMU occupies two 64 KiB pages. Page 0 holds the identification, control, table and queue
//! base registers; page 1 holds the event-queue and PRI-queue producer/consumer indexes
//! (§6.2, "SMMU_EVENTQ_PROD ... Page 1"). QEMU aliases page 1 onto page 0 but real
//! implementations need not, so the driver always uses the page-1 offsets.
//!
//! [`SmmuRegisters`] is the memory layout (for an MMIO backend that wants typed access); the
//! driver itself goes through the byte offsets in [`offset`], which are computed from that same
//! struct, so there is a single source of truth.

use tock_registers::registers::{ReadOnly, ReadWrite};
use tock_registers::{register_bitfields, register_structs};

register_bitfields! [u32,
    /// SMMU_IDR0 (§6.3.1): implemented features.
    pub IDR0 [
        /// Stage 2 translation supported.
        S2P OFFSET(0) NUMBITS(1) [],
        /// Stage 1 translation supported.
        S1P OFFSET(1) NUMBITS(1) [],
        /// Translation table formats: 0b10 AArch64, 0b11 AArch32+AArch64.
        TTF OFFSET(2) NUMBITS(2) [],
        /// Coherent access to tables, queues and memory.
        COHACC OFFSET(4) NUMBITS(1) [],
        /// Broadcast TLB maintenance.
        BTM OFFSET(5) NUMBITS(1) [],
        /// Hardware update of access flag / dirty state.
        HTTU OFFSET(6) NUMBITS(2) [],
        /// Hypervisor stage 1 contexts.
        HYP OFFSET(9) NUMBITS(1) [],
        /// PCIe ATS.
        ATS OFFSET(10) NUMBITS(1) [],
        /// 16-bit ASIDs (else 8-bit).
        ASID16 OFFSET(12) NUMBITS(1) [],
        /// MSI generation.
        MSI OFFSET(13) NUMBITS(1) [],
        /// SEV on command-queue sync.
        SEV OFFSET(14) NUMBITS(1) [],
        /// Page request interface.
        PRI OFFSET(16) NUMBITS(1) [],
        /// 16-bit VMIDs (else 8-bit).
        VMID16 OFFSET(18) NUMBITS(1) [],
        /// Two-level CD tables.
        CD2L OFFSET(19) NUMBITS(1) [],
        /// Endianness of translation table walks: 0b10 little-endian only.
        TTENDIAN OFFSET(21) NUMBITS(2) [],
        /// Stall model: 0b01 stall not supported.
        STALL_MODEL OFFSET(24) NUMBITS(2) [],
        /// Terminate model: 1 = terminated transactions always abort (CD.A must be 1).
        TERM_MODEL OFFSET(26) NUMBITS(1) [],
        /// Stream table levels: 0b00 linear only, 0b01 two-level too.
        ST_LEVEL OFFSET(27) NUMBITS(2) []
    ],
    /// SMMU_IDR1 (§6.3.2): sizes.
    pub IDR1 [
        /// Max StreamID bits.
        SIDSIZE OFFSET(0) NUMBITS(6) [],
        /// Max SubstreamID bits (0: no substreams).
        SSIDSIZE OFFSET(6) NUMBITS(5) [],
        /// log2 of the maximum PRI queue entries.
        PRIQS OFFSET(11) NUMBITS(5) [],
        /// log2 of the maximum event queue entries.
        EVENTQS OFFSET(16) NUMBITS(5) [],
        /// log2 of the maximum command queue entries.
        CMDQS OFFSET(21) NUMBITS(5) [],
        /// Queue base registers are fixed by the implementation.
        QUEUES_PRESET OFFSET(29) NUMBITS(1) [],
        /// Table base registers are fixed by the implementation.
        TABLES_PRESET OFFSET(30) NUMBITS(1) []
    ],
    /// SMMU_IDR3 (§6.3.4): more features.
    pub IDR3 [
        /// Hierarchical attribute disable (CD.HADx).
        HAD OFFSET(2) NUMBITS(1) [],
        /// Range invalidation and TTL hint in TLBI commands (§4.4.1.1).
        RIL OFFSET(10) NUMBITS(1) [],
        /// Break-before-make level.
        BBML OFFSET(11) NUMBITS(2) []
    ],
    /// SMMU_IDR5 (§6.3.6): output address size and granules.
    pub IDR5 [
        /// Output address size: 0=32, 1=36, 2=40, 3=42, 4=44, 5=48, 6=52 bits.
        OAS OFFSET(0) NUMBITS(3) [],
        /// 4 KiB translation granule.
        GRAN4K OFFSET(4) NUMBITS(1) [],
        /// 16 KiB translation granule.
        GRAN16K OFFSET(5) NUMBITS(1) [],
        /// 64 KiB translation granule.
        GRAN64K OFFSET(6) NUMBITS(1) [],
        /// Virtual address extension (52-bit VAs).
        VAX OFFSET(10) NUMBITS(2) []
    ],
    /// SMMU_CR0 / SMMU_CR0ACK (§6.3.9, §6.3.10).
    pub CR0 [
        /// Translation enable; when 0, SMMU_GBPA decides (bypass or abort).
        SMMUEN OFFSET(0) NUMBITS(1) [],
        /// PRI queue enable.
        PRIQEN OFFSET(1) NUMBITS(1) [],
        /// Event queue enable.
        EVENTQEN OFFSET(2) NUMBITS(1) [],
        /// Command queue enable.
        CMDQEN OFFSET(3) NUMBITS(1) [],
        /// ATS translated-transaction check.
        ATSCHK OFFSET(4) NUMBITS(1) [],
        /// VMID wildcard.
        VMW OFFSET(6) NUMBITS(3) []
    ],
    /// SMMU_CR1 (§6.3.11): cacheability/shareability of table and queue accesses.
    pub CR1 [
        QUEUE_IC OFFSET(0) NUMBITS(2) [],
        QUEUE_OC OFFSET(2) NUMBITS(2) [],
        QUEUE_SH OFFSET(4) NUMBITS(2) [],
        TABLE_IC OFFSET(6) NUMBITS(2) [],
        TABLE_OC OFFSET(8) NUMBITS(2) [],
        TABLE_SH OFFSET(10) NUMBITS(2) []
    ],
    /// SMMU_CR2 (§6.3.12).
    pub CR2 [
        /// EL2-E2H translation regime.
        E2H OFFSET(0) NUMBITS(1) [],
        /// Record C_BAD_STREAMID for out-of-range StreamIDs.
        RECINVSID OFFSET(1) NUMBITS(1) [],
        /// Private TLB maintenance (ignore broadcast TLBIs).
        PTM OFFSET(2) NUMBITS(1) []
    ],
    /// SMMU_GBPA (§6.3.14): what happens to traffic while SMMUEN == 0.
    pub GBPA [
        /// Abort all incoming transactions (instead of bypassing them).
        ABORT OFFSET(20) NUMBITS(1) [],
        /// Written as 1 with the new value; reads 1 until the update has taken effect.
        UPDATE OFFSET(31) NUMBITS(1) []
    ],
    /// SMMU_IRQ_CTRL / SMMU_IRQ_CTRLACK (§6.3.16).
    pub IRQ_CTRL [
        GERROR_IRQEN OFFSET(0) NUMBITS(1) [],
        PRIQ_IRQEN OFFSET(1) NUMBITS(1) [],
        EVENTQ_IRQEN OFFSET(2) NUMBITS(1) []
    ],
    /// SMMU_GERROR / SMMU_GERRORN (§6.3.18, §6.3.19): an error is active while the bit differs
    /// between the two registers; software acknowledges by toggling its GERRORN bit.
    pub GERROR [
        /// Command queue error: see SMMU_CMDQ_CONS.ERR.
        CMDQ_ERR OFFSET(0) NUMBITS(1) [],
        /// Event queue write aborted.
        EVENTQ_ABT_ERR OFFSET(2) NUMBITS(1) [],
        /// PRI queue write aborted.
        PRIQ_ABT_ERR OFFSET(3) NUMBITS(1) [],
        MSI_CMDQ_ABT_ERR OFFSET(4) NUMBITS(1) [],
        MSI_EVENTQ_ABT_ERR OFFSET(5) NUMBITS(1) [],
        MSI_PRIQ_ABT_ERR OFFSET(6) NUMBITS(1) [],
        MSI_GERROR_ABT_ERR OFFSET(7) NUMBITS(1) [],
        /// Service failure mode: the SMMU stopped working.
        SFM_ERR OFFSET(8) NUMBITS(1) []
    ],
    /// SMMU_STRTAB_BASE_CFG (§6.3.25).
    pub STRTAB_BASE_CFG [
        /// log2 of the number of StreamIDs the table covers.
        LOG2SIZE OFFSET(0) NUMBITS(6) [],
        /// Two-level split point.
        SPLIT OFFSET(6) NUMBITS(5) [],
        /// Format: 0b00 linear, 0b01 two-level.
        FMT OFFSET(16) NUMBITS(2) [
            Linear = 0,
            TwoLevel = 1
        ]
    ],
    /// SMMU_CMDQ_CONS (§6.3.28): read index plus the error code of a stopped queue.
    pub CMDQ_CONS [
        /// Read index including the wrap bit (width depends on the queue size).
        RD OFFSET(0) NUMBITS(20) [],
        /// Command error (§7.1): 0 none, 1 CERROR_ILL, 2 CERROR_ABT, 3 CERROR_ATC_INV_SYNC.
        ERR OFFSET(24) NUMBITS(7) []
    ],
    /// SMMU_EVENTQ_PROD (§6.3.30): write index plus the overflow flag.
    pub EVENTQ_PROD [
        /// Write index including the wrap bit.
        WR OFFSET(0) NUMBITS(20) [],
        /// Toggled by the SMMU when an event is lost because the queue was full (§7.4).
        OVFLG OFFSET(31) NUMBITS(1) []
    ],
    /// SMMU_EVENTQ_CONS (§6.3.31): read index plus the overflow acknowledge flag.
    pub EVENTQ_CONS [
        /// Read index including the wrap bit.
        RD OFFSET(0) NUMBITS(20) [],
        /// Software copies OVFLG here to acknowledge an overflow (§7.4).
        OVACKFLG OFFSET(31) NUMBITS(1) []
    ]
];

register_bitfields! [u64,
    /// SMMU_STRTAB_BASE (§6.3.24).
    pub STRTAB_BASE [
        /// Physical address bits `[51:6]`; the SMMU aligns it down to the table size.
        ADDR OFFSET(6) NUMBITS(46) [],
        /// Read-allocate hint.
        RA OFFSET(62) NUMBITS(1) []
    ],
    /// SMMU_CMDQ_BASE / SMMU_EVENTQ_BASE (§6.3.26, §6.3.29).
    pub Q_BASE [
        /// log2 of the number of entries.
        LOG2SIZE OFFSET(0) NUMBITS(5) [],
        /// Physical address bits `[51:5]`; must be aligned to the queue size.
        ADDR OFFSET(5) NUMBITS(47) [],
        /// Read-allocate (command queue) / write-allocate (event queue) hint.
        ALLOC OFFSET(62) NUMBITS(1) []
    ]
];

register_structs! {
    /// The SMMUv3 Non-secure register file, pages 0 and 1 (§6.2).
    pub SmmuRegisters {
        (0x00000 => pub idr0: ReadOnly<u32, IDR0::Register>),
        (0x00004 => pub idr1: ReadOnly<u32, IDR1::Register>),
        (0x00008 => pub idr2: ReadOnly<u32>),
        (0x0000c => pub idr3: ReadOnly<u32, IDR3::Register>),
        (0x00010 => pub idr4: ReadOnly<u32>),
        (0x00014 => pub idr5: ReadOnly<u32, IDR5::Register>),
        (0x00018 => pub iidr: ReadOnly<u32>),
        (0x0001c => pub aidr: ReadOnly<u32>),
        (0x00020 => pub cr0: ReadWrite<u32, CR0::Register>),
        (0x00024 => pub cr0ack: ReadOnly<u32, CR0::Register>),
        (0x00028 => pub cr1: ReadWrite<u32, CR1::Register>),
        (0x0002c => pub cr2: ReadWrite<u32, CR2::Register>),
        (0x00030 => _reserved0),
        (0x00040 => pub statusr: ReadOnly<u32>),
        (0x00044 => pub gbpa: ReadWrite<u32, GBPA::Register>),
        (0x00048 => pub agbpa: ReadWrite<u32>),
        (0x0004c => _reserved1),
        (0x00050 => pub irq_ctrl: ReadWrite<u32, IRQ_CTRL::Register>),
        (0x00054 => pub irq_ctrlack: ReadOnly<u32, IRQ_CTRL::Register>),
        (0x00058 => _reserved2),
        (0x00060 => pub gerror: ReadOnly<u32, GERROR::Register>),
        (0x00064 => pub gerrorn: ReadWrite<u32, GERROR::Register>),
        (0x00068 => pub gerror_irq_cfg0: ReadWrite<u64>),
        (0x00070 => pub gerror_irq_cfg1: ReadWrite<u32>),
        (0x00074 => pub gerror_irq_cfg2: ReadWrite<u32>),
        (0x00078 => _reserved3),
        (0x00080 => pub strtab_base: ReadWrite<u64, STRTAB_BASE::Register>),
        (0x00088 => pub strtab_base_cfg: ReadWrite<u32, STRTAB_BASE_CFG::Register>),
        (0x0008c => _reserved4),
        (0x00090 => pub cmdq_base: ReadWrite<u64, Q_BASE::Register>),
        (0x00098 => pub cmdq_prod: ReadWrite<u32>),
        (0x0009c => pub cmdq_cons: ReadWrite<u32, CMDQ_CONS::Register>),
        (0x000a0 => pub eventq_base: ReadWrite<u64, Q_BASE::Register>),
        (0x000a8 => _reserved5),
        (0x000b0 => pub eventq_irq_cfg0: ReadWrite<u64>),
        (0x000b8 => pub eventq_irq_cfg1: ReadWrite<u32>),
        (0x000bc => pub eventq_irq_cfg2: ReadWrite<u32>),
        (0x000c0 => _reserved6),
        (0x100a8 => pub eventq_prod: ReadWrite<u32, EVENTQ_PROD::Register>),
        (0x100ac => pub eventq_cons: ReadWrite<u32, EVENTQ_CONS::Register>),
        (0x100b0 => _reserved7),
        (0x20000 => @END),
    }
}

/// Byte offsets of the registers the driver uses, derived from [`SmmuRegisters`].
pub mod offset {
    use super::SmmuRegisters;
    use core::mem::offset_of;

    pub const IDR0: usize = offset_of!(SmmuRegisters, idr0);
    pub const IDR1: usize = offset_of!(SmmuRegisters, idr1);
    pub const IDR3: usize = offset_of!(SmmuRegisters, idr3);
    pub const IDR5: usize = offset_of!(SmmuRegisters, idr5);
    pub const AIDR: usize = offset_of!(SmmuRegisters, aidr);
    pub const CR0: usize = offset_of!(SmmuRegisters, cr0);
    pub const CR0ACK: usize = offset_of!(SmmuRegisters, cr0ack);
    pub const CR1: usize = offset_of!(SmmuRegisters, cr1);
    pub const CR2: usize = offset_of!(SmmuRegisters, cr2);
    pub const GBPA: usize = offset_of!(SmmuRegisters, gbpa);
    pub const IRQ_CTRL: usize = offset_of!(SmmuRegisters, irq_ctrl);
    pub const IRQ_CTRLACK: usize = offset_of!(SmmuRegisters, irq_ctrlack);
    pub const GERROR: usize = offset_of!(SmmuRegisters, gerror);
    pub const GERRORN: usize = offset_of!(SmmuRegisters, gerrorn);
    pub const STRTAB_BASE: usize = offset_of!(SmmuRegisters, strtab_base);
    pub const STRTAB_BASE_CFG: usize = offset_of!(SmmuRegisters, strtab_base_cfg);
    pub const CMDQ_BASE: usize = offset_of!(SmmuRegisters, cmdq_base);
    pub const CMDQ_PROD: usize = offset_of!(SmmuRegisters, cmdq_prod);
    pub const CMDQ_CONS: usize = offset_of!(SmmuRegisters, cmdq_cons);
    pub const EVENTQ_BASE: usize = offset_of!(SmmuRegisters, eventq_base);
    /// Page 1 (§6.2): SMMU_EVENTQ_PROD lives at 0x100A8.
    pub const EVENTQ_PROD: usize = offset_of!(SmmuRegisters, eventq_prod);
    /// Page 1 (§6.2): SMMU_EVENTQ_CONS lives at 0x100AC.
    pub const EVENTQ_CONS: usize = offset_of!(SmmuRegisters, eventq_cons);
    /// Size of the register frame (two 64 KiB pages).
    pub const FRAME_SIZE: usize = core::mem::size_of::<SmmuRegisters>();
}

/// Command error codes in SMMU_CMDQ_CONS.ERR (§7.1, "Command queue errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandErrorCode {
    /// CERROR_ILL: illegal or unsupported command.
    Illegal,
    /// CERROR_ABT: the command fetch aborted.
    Abort,
    /// CERROR_ATC_INV_SYNC: an ATS invalidation timed out.
    AtcInvSync,
    /// An implementation-defined or reserved code.
    Other(u8),
}

impl CommandErrorCode {
    /// Decodes the ERR field; `None` for 0 (no error).
    pub fn from_raw(err: u8) -> Option<Self> {
        match err {
            0 => None,
            1 => Some(Self::Illegal),
            2 => Some(Self::Abort),
            3 => Some(Self::AtcInvSync),
            other => Some(Self::Other(other)),
        }
    }

    /// The raw ERR field value.
    pub fn raw(self) -> u8 {
        match self {
            Self::Illegal => 1,
            Self::Abort => 2,
            Self::AtcInvSync => 3,
            Self::Other(v) => v,
        }
    }
}

impl core::fmt::Display for CommandErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Illegal => f.write_str("CERROR_ILL (illegal command)"),
            Self::Abort => f.write_str("CERROR_ABT (command fetch aborted)"),
            Self::AtcInvSync => f.write_str("CERROR_ATC_INV_SYNC (ATC invalidation timed out)"),
            Self::Other(v) => write!(f, "command error {v:#x}"),
        }
    }
}

/// Output address size in bits for an IDR5.OAS / CD.IPS encoding (§6.3.6).
pub fn oas_bits(encoding: u8) -> Option<u8> {
    match encoding {
        0 => Some(32),
        1 => Some(36),
        2 => Some(40),
        3 => Some(42),
        4 => Some(44),
        5 => Some(48),
        6 => Some(52),
        _ => None,
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_the_specification_register_map() {
        // §6.2 register map, and the offsets QEMU's virt SMMU was measured with.
        assert_eq!(offset::IDR0, 0x00);
        assert_eq!(offset::IDR1, 0x04);
        assert_eq!(offset::IDR3, 0x0c);
        assert_eq!(offset::IDR5, 0x14);
        assert_eq!(offset::CR0, 0x20);
        assert_eq!(offset::CR0ACK, 0x24);
        assert_eq!(offset::CR1, 0x28);
        assert_eq!(offset::CR2, 0x2c);
        assert_eq!(offset::GBPA, 0x44);
        assert_eq!(offset::IRQ_CTRL, 0x50);
        assert_eq!(offset::GERROR, 0x60);
        assert_eq!(offset::GERRORN, 0x64);
        assert_eq!(offset::STRTAB_BASE, 0x80);
        assert_eq!(offset::STRTAB_BASE_CFG, 0x88);
        assert_eq!(offset::CMDQ_BASE, 0x90);
        assert_eq!(offset::CMDQ_PROD, 0x98);
        assert_eq!(offset::CMDQ_CONS, 0x9c);
        assert_eq!(offset::EVENTQ_BASE, 0xa0);
        assert_eq!(offset::EVENTQ_PROD, 0x100a8);
        assert_eq!(offset::EVENTQ_CONS, 0x100ac);
        assert_eq!(offset::FRAME_SIZE, 0x20000);
    }

    #[test]
    fn field_positions() {
        assert_eq!(CR0::CMDQEN.mask << CR0::CMDQEN.shift, 1 << 3);
        assert_eq!(GBPA::ABORT.mask << GBPA::ABORT.shift, 1 << 20);
        assert_eq!(IDR3::RIL.shift, 10);
        assert_eq!(CMDQ_CONS::ERR.shift, 24);
        assert_eq!(CMDQ_CONS::ERR.mask, 0x7f);
        assert_eq!(oas_bits(4), Some(44));
        assert_eq!(oas_bits(7), None);
        assert_eq!(
            CommandErrorCode::from_raw(1),
            Some(CommandErrorCode::Illegal)
        );
        assert_eq!(CommandErrorCode::from_raw(0), None);
    }
}
