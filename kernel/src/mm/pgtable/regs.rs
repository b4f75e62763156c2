//! MMU control values computed from what the CPU reports.
//!
//! Everything here is a pure function of ID register values, so the kernel reads the registers
//! once and the host tests feed in the values of real and imaginary CPUs. Field positions are
//! from the Arm ARM (DDI 0487K.a) D19.2 register descriptions: `ID_AA64MMFR0_EL1`,
//! `ID_AA64MMFR2_EL1`, `ID_AA64ISAR0_EL1`, `TCR_EL1`, `TTBR0_EL1`.

use core::fmt;

use super::descriptor::{MAIR_VALUE, PA_BITS, VA_BITS};
use super::tlb::TlbFeatures;
use crate::mm::addr::PhysAddr;
use crate::mm::asid::{Asid, AsidBits};

/// Extracts the 4-bit ID register field at `shift`.
const fn field(value: u64, shift: u32) -> u8 {
    ((value >> shift) & 0xf) as u8
}

// ID_AA64MMFR0_EL1 fields.
const MMFR0_PARANGE: u32 = 0;
const MMFR0_ASIDBITS: u32 = 4;
const MMFR0_TGRAN4: u32 = 28;
// ID_AA64MMFR2_EL1.TTL: 0b0001 = FEAT_TTL (level hints in TLBI operands).
const MMFR2_TTL: u32 = 48;
// ID_AA64ISAR0_EL1.TLB: 0b0010 = FEAT_TLBIOS and FEAT_TLBIRANGE.
const ISAR0_TLB: u32 = 56;

// TCR_EL1 fields.
const TCR_T0SZ_SHIFT: u32 = 0;
const TCR_IRGN0_WBWA: u64 = 0b01 << 8;
const TCR_ORGN0_WBWA: u64 = 0b01 << 10;
const TCR_SH0_INNER: u64 = 0b11 << 12;
const TCR_TG0_4K: u64 = 0b00 << 14;
const TCR_T1SZ_SHIFT: u32 = 16;
const TCR_EPD1: u64 = 1 << 23;
const TCR_IRGN1_WBWA: u64 = 0b01 << 24;
const TCR_ORGN1_WBWA: u64 = 0b01 << 26;
const TCR_SH1_INNER: u64 = 0b11 << 28;
/// TG1 encodes the granule differently from TG0: 0b10 is 4 KiB.
const TCR_TG1_4K: u64 = 0b10 << 30;
const TCR_IPS_SHIFT: u32 = 32;
/// AS: 16-bit ASIDs in TTBRn_EL1\[63:48\].
const TCR_AS: u64 = 1 << 36;

/// The CPU cannot run these page tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuFeatureError {
    /// `ID_AA64MMFR0_EL1.TGran4` says the 4 KiB granule is not implemented.
    NoFourKGranule,
    /// `ID_AA64MMFR0_EL1.PARange` holds a value the architecture reserves.
    UnknownPaRange(u8),
}

impl fmt::Display for CpuFeatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuFeatureError::NoFourKGranule => {
                f.write_str("the CPU does not implement the 4 KiB translation granule")
            }
            CpuFeatureError::UnknownPaRange(v) => {
                write!(f, "ID_AA64MMFR0_EL1.PARange has reserved value {v:#x}")
            }
        }
    }
}

/// Which halves of the VA space the kernel translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttbr1 {
    /// TTBR1 walks are disabled (EPD1): only the lower half is mapped.
    Disabled,
    /// The upper half is mapped too, with the same 48-bit, 4 KiB configuration.
    Enabled,
}

/// Values to program into the MMU, derived from the CPU's ID registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmuConfig {
    /// `TCR_EL1`.
    pub tcr: u64,
    /// `MAIR_EL1`.
    pub mair: u64,
    /// Physical address bits the translation uses (min(CPU PA range, 48)).
    pub pa_bits: u32,
    /// ASID width in use.
    pub asid_bits: AsidBits,
}

/// The PA size encoded by PARange / IPS (same encoding in both registers).
const fn pa_range_bits(encoding: u8) -> Option<u32> {
    match encoding {
        0b0000 => Some(32),
        0b0001 => Some(36),
        0b0010 => Some(40),
        0b0011 => Some(42),
        0b0100 => Some(44),
        0b0101 => Some(48),
        0b0110 => Some(52),
        _ => None,
    }
}

/// The ASID width `ID_AA64MMFR0_EL1` reports: 0b0010 = 16 bits, otherwise 8.
pub const fn asid_bits_from_mmfr0(mmfr0: u64) -> AsidBits {
    match field(mmfr0, MMFR0_ASIDBITS) {
        0b0010 => AsidBits::Sixteen,
        _ => AsidBits::Eight,
    }
}

/// Computes `TCR_EL1` (and friends) from `ID_AA64MMFR0_EL1`.
///
/// - T0SZ (and T1SZ) = 64 - 48: four levels starting at level 0;
/// - 4 KiB granule, table walks Inner Shareable, Write-Back read/write-allocate;
/// - IPS = the CPU's PA range, capped at 48 bits because our descriptors only hold OA\[47:12\]
///   (52-bit output needs FEAT_LPA2 descriptors);
/// - AS = 1 when the CPU has 16-bit ASIDs; A1 = 0 (the ASID comes from TTBR0);
/// - HA = HD = 0: the access flag is managed by software (Access flag faults), as the
///   engine's ageing operations expect; TBI0 = 0.
pub const fn mmu_config(mmfr0: u64, ttbr1: Ttbr1) -> Result<MmuConfig, CpuFeatureError> {
    // TGran4: 0b0000 supported, 0b0001 supported with 52-bit addresses, 0b1111 absent.
    if field(mmfr0, MMFR0_TGRAN4) == 0b1111 {
        return Err(CpuFeatureError::NoFourKGranule);
    }
    let parange = field(mmfr0, MMFR0_PARANGE);
    let cpu_pa_bits = match pa_range_bits(parange) {
        Some(bits) => bits,
        None => return Err(CpuFeatureError::UnknownPaRange(parange)),
    };
    let (ips, pa_bits) = if cpu_pa_bits > PA_BITS {
        (0b0101, PA_BITS)
    } else {
        (parange, cpu_pa_bits)
    };
    let asid_bits = asid_bits_from_mmfr0(mmfr0);

    let size_offset = (64 - VA_BITS) as u64;
    let mut tcr = (size_offset << TCR_T0SZ_SHIFT)
        | TCR_IRGN0_WBWA
        | TCR_ORGN0_WBWA
        | TCR_SH0_INNER
        | TCR_TG0_4K
        | ((ips as u64) << TCR_IPS_SHIFT);
    match ttbr1 {
        Ttbr1::Disabled => tcr |= TCR_EPD1 | TCR_TG1_4K,
        Ttbr1::Enabled => {
            tcr |= (size_offset << TCR_T1SZ_SHIFT)
                | TCR_IRGN1_WBWA
                | TCR_ORGN1_WBWA
                | TCR_SH1_INNER
                | TCR_TG1_4K
        }
    }
    if let AsidBits::Sixteen = asid_bits {
        tcr |= TCR_AS;
    }
    Ok(MmuConfig {
        tcr,
        mair: MAIR_VALUE,
        pa_bits,
        asid_bits,
    })
}

/// The TLB maintenance features the CPU reports (`ID_AA64ISAR0_EL1`, `ID_AA64MMFR2_EL1`).
pub const fn tlb_features(isar0: u64, mmfr2: u64) -> TlbFeatures {
    TlbFeatures {
        range: field(isar0, ISAR0_TLB) >= 0b0010,
        level_hints: field(mmfr2, MMFR2_TTL) >= 0b0001,
    }
}

/// The `TTBR0_EL1` value selecting the table rooted at `root` with `asid` (ASID in \[63:48\],
/// BADDR in \[47:1\], CnP = 0). With 8-bit ASIDs the upper byte of the ASID must be zero, which
/// the [`Asid`] allocator guarantees.
pub const fn ttbr(root: PhysAddr, asid: Asid) -> u64 {
    ((asid.get() as u64) << 48) | (root.0 & ((1 << PA_BITS) - 1) & !1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cortex-A72 as QEMU `-cpu cortex-a72` reports it: PARange 44 bits, 16-bit ASIDs, 4K.
    const A72_MMFR0: u64 = 0x0000_0000_0000_1124;
    /// `-cpu max` style: PARange 52 bits (0b0110), 16-bit ASIDs.
    const MAX_MMFR0: u64 = 0x0000_0000_0000_1126;

    #[test]
    fn tcr_for_a72() {
        let cfg = mmu_config(A72_MMFR0, Ttbr1::Disabled).unwrap();
        assert_eq!(cfg.pa_bits, 44);
        assert_eq!(cfg.asid_bits, AsidBits::Sixteen);
        assert_eq!(cfg.tcr & 0x3f, 16, "T0SZ");
        assert_eq!((cfg.tcr >> 32) & 0b111, 0b100, "IPS = 44 bits");
        assert_ne!(cfg.tcr & TCR_AS, 0, "16-bit ASIDs");
        assert_ne!(cfg.tcr & TCR_EPD1, 0, "TTBR1 walks disabled");
        assert_eq!((cfg.tcr >> 8) & 0x3f, 0b11_01_01, "SH0/ORGN0/IRGN0");
        assert_eq!((cfg.tcr >> 14) & 0b11, 0b00, "TG0 = 4K");
        assert_eq!(cfg.mair, MAIR_VALUE);
    }

    #[test]
    fn pa_range_is_capped_at_48_bits() {
        let cfg = mmu_config(MAX_MMFR0, Ttbr1::Enabled).unwrap();
        assert_eq!(cfg.pa_bits, 48);
        assert_eq!((cfg.tcr >> 32) & 0b111, 0b101);
        assert_eq!((cfg.tcr >> 16) & 0x3f, 16, "T1SZ");
        assert_eq!((cfg.tcr >> 30) & 0b11, 0b10, "TG1 = 4K");
        assert_eq!(cfg.tcr & TCR_EPD1, 0);
    }

    #[test]
    fn eight_bit_asids_and_small_pa() {
        let cfg = mmu_config(0x0, Ttbr1::Disabled).unwrap();
        assert_eq!(cfg.asid_bits, AsidBits::Eight);
        assert_eq!(cfg.pa_bits, 32);
        assert_eq!(cfg.tcr & TCR_AS, 0);
    }

    #[test]
    fn rejects_reserved_pa_range_and_missing_granule() {
        assert_eq!(
            mmu_config(0x7, Ttbr1::Disabled),
            Err(CpuFeatureError::UnknownPaRange(7))
        );
        assert_eq!(
            mmu_config(0xf000_0005, Ttbr1::Disabled),
            Err(CpuFeatureError::NoFourKGranule)
        );
    }

    #[test]
    fn tlb_feature_fields() {
        assert_eq!(
            tlb_features(0, 0),
            TlbFeatures {
                range: false,
                level_hints: false
            }
        );
        assert_eq!(
            tlb_features(0b0001 << 56, 0),
            TlbFeatures {
                range: false,
                level_hints: false
            }
        );
        assert_eq!(
            tlb_features(0b0010 << 56, 1 << 48),
            TlbFeatures {
                range: true,
                level_hints: true
            }
        );
    }

    #[test]
    fn ttbr_value() {
        let asid = Asid::new(0x1234, AsidBits::Sixteen).unwrap();
        assert_eq!(ttbr(PhysAddr(0x4008_0000), asid), 0x1234_0000_4008_0000);
    }
}
