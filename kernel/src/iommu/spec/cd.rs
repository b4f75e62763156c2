//! Context descriptors (CDs): the stage-1 translation regime of a stream — which page tables,
//! how big the input address space is, which ASID tags the cached translations.
//!
//! Source: Arm SMMUv3 specification §5.4 "Context Descriptor" (layout) and §5.4.1 "CD notes" /
//! "Validity of CD" (ILLEGAL configurations → C_BAD_CD). The validity rules implemented by
//! [`CdFields::validate`] are the ones QEMU's `decode_cd()` enforces (`hw/arm/smmuv3.c`), which
//! are those of an SMMU with TERM_MODEL = 1, no stall model and no HTTU.
//!
//! For shared virtual addressing the CD points at the address space's own page-table root
//! (TTB0) with T0SZ for its VA size, EPD1 = 1 (no TTB1 half), A = 1 (abort terminated
//! transactions), R = 1 (record faults) and the address space's ASID. [`CdFields::quiesced`]
//! is the "abort quietly" form used when an address space goes away under a bound device:
//! still valid (no C_BAD_CD storms for in-flight DMA), but TTB0 walks disabled (EPD0 = 1) and
//! fault recording off (R = 0).

use core::fmt;

use crate::iommu::spec::bits::Field;
use crate::mm::PhysAddr;

/// Size of one CD in bytes.
pub const CD_SIZE: usize = 64;
/// Number of 64-bit words in a CD.
pub const CD_WORDS: usize = CD_SIZE / 8;

// dword 0 (§5.4)
const T0SZ: Field = Field::bits(5, 0);
const TG0: Field = Field::bits(7, 6);
const IRGN0: Field = Field::bits(9, 8);
const ORGN0: Field = Field::bits(11, 10);
const SH0: Field = Field::bits(13, 12);
const EPD0: Field = Field::bit(14);
const ENDI: Field = Field::bit(15);
const T1SZ: Field = Field::bits(21, 16);
const TG1: Field = Field::bits(23, 22);
const EPD1: Field = Field::bit(30);
const V: Field = Field::bit(31);
const IPS: Field = Field::bits(34, 32);
const AFFD: Field = Field::bit(35);
const TBI: Field = Field::bits(39, 38);
const AA64: Field = Field::bit(41);
const HD: Field = Field::bit(42);
const HA: Field = Field::bit(43);
const S: Field = Field::bit(44);
const R: Field = Field::bit(45);
const A: Field = Field::bit(46);
const ASET: Field = Field::bit(47);
const ASID: Field = Field::bits(63, 48);
// dwords 1 and 2: TTB0/TTB1 and HAD0/HAD1
const HADX: Field = Field::bit(1);
const TTB: Field = Field::bits(51, 4);

/// Normal memory, Inner/Outer Write-Back Read-Allocate Write-Allocate (IRGN/ORGN = 0b01).
const CACHE_WBWA: u8 = 0b01;
/// Inner Shareable (SH = 0b11).
const SHARE_INNER: u8 = 0b11;

/// A translation granule as the CD's TG0 field encodes it (§5.4: 0b00 4K, 0b01 64K, 0b10 16K).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CdGranule {
    K4,
    K16,
    K64,
}

impl CdGranule {
    /// log2 of the granule size.
    pub const fn shift(self) -> u32 {
        match self {
            Self::K4 => 12,
            Self::K16 => 14,
            Self::K64 => 16,
        }
    }

    const fn tg0(self) -> u64 {
        match self {
            Self::K4 => 0b00,
            Self::K64 => 0b01,
            Self::K16 => 0b10,
        }
    }

    fn from_tg0(tg: u64) -> Option<Self> {
        match tg {
            0b00 => Some(Self::K4),
            0b01 => Some(Self::K64),
            0b10 => Some(Self::K16),
            _ => None,
        }
    }

    /// TG1 uses a different encoding (§5.4: 0b01 16K, 0b10 4K, 0b11 64K).
    fn from_tg1(tg: u64) -> Option<Self> {
        match tg {
            0b01 => Some(Self::K16),
            0b10 => Some(Self::K4),
            0b11 => Some(Self::K64),
            _ => None,
        }
    }
}

/// Every field of a CD that this driver writes or the model reads.
///
/// The raw form: [`ContextDescriptor::decode`] produces it from memory without checking it;
/// [`CdFields::validate`] applies the SMMU's validity rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CdFields {
    pub valid: bool,
    /// Input size of the TTB0 region: VA bits = 64 - T0SZ.
    pub t0sz: u8,
    /// Raw TG0 field (see [`CdGranule`]).
    pub tg0: u8,
    pub irgn0: u8,
    pub orgn0: u8,
    pub sh0: u8,
    /// Disable TTB0 walks: every TTB0-region address takes a translation fault.
    pub epd0: bool,
    /// Big-endian walks (unsupported; must be 0).
    pub endi: bool,
    pub t1sz: u8,
    /// Raw TG1 field.
    pub tg1: u8,
    /// Disable TTB1 walks.
    pub epd1: bool,
    /// Intermediate physical size encoding (as IDR5.OAS).
    pub ips: u8,
    /// Access-flag faults disabled: AF = 0 descriptors are used as if AF were 1.
    pub affd: bool,
    /// Top-byte-ignore for TTB0 (bit 0) and TTB1 (bit 1).
    pub tbi: u8,
    /// AArch64 translation tables.
    pub aa64: bool,
    pub hd: bool,
    pub ha: bool,
    /// Stall on faults.
    pub s: bool,
    /// Record faults in the event queue.
    pub r: bool,
    /// Abort (rather than RAZ/WI) terminated transactions.
    pub a: bool,
    /// ASID set: 1 = entries do not take part in broadcast TLB invalidation.
    pub aset: bool,
    pub asid: u16,
    /// TTB0 page-table root.
    pub ttb0: PhysAddr,
    /// Hierarchical attribute (APTable) disable for TTB0.
    pub had0: bool,
    pub ttb1: PhysAddr,
    pub had1: bool,
    /// Memory attribute indirection (the CPU's MAIR_EL1 for shared tables).
    pub mair: u64,
}

/// Why the SMMU would raise C_BAD_CD for a CD (§5.4.1 and QEMU `decode_cd()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadCd {
    Invalid,
    NotAArch64,
    /// A == 0 on an SMMU with TERM_MODEL == 1.
    AbortDisabled,
    /// S == 1 on an SMMU without a stall model.
    StallUnsupported,
    /// HA/HD set on an SMMU without HTTU.
    HttuUnsupported,
    /// TxSZ outside 16..=39.
    InputSize {
        table: u8,
        tsz: u8,
    },
    /// Reserved TGx encoding, or big-endian walks.
    Granule {
        table: u8,
    },
    /// TTBx beyond the effective output size.
    TableOutOfRange {
        table: u8,
        ttb: u64,
        oas_bits: u8,
    },
}

impl fmt::Display for BadCd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid => f.write_str("CD not valid (V == 0)"),
            Self::NotAArch64 => f.write_str("CD.AA64 == 0: AArch32 tables are not supported"),
            Self::AbortDisabled => {
                f.write_str("CD.A == 0 is illegal when SMMU_IDR0.TERM_MODEL == 1")
            }
            Self::StallUnsupported => f.write_str("CD.S == 1 without a stall model"),
            Self::HttuUnsupported => f.write_str("CD.HA/HD set without hardware table updates"),
            Self::InputSize { table, tsz } => write!(f, "CD.T{table}SZ = {tsz} is outside 16..=39"),
            Self::Granule { table } => write!(f, "CD.TG{table} is reserved or ENDI is set"),
            Self::TableOutOfRange {
                table,
                ttb,
                oas_bits,
            } => {
                write!(
                    f,
                    "CD.TTB{table} = {ttb:#x} exceeds the {oas_bits}-bit output size"
                )
            }
        }
    }
}

/// A CD could not be built from the requested parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdBuildError {
    /// The VA size is not in 25..=48 bits (T0SZ 16..=39).
    VaBits(u8),
    /// The table root is not 4 KiB aligned.
    MisalignedRoot(PhysAddr),
    /// The table root is beyond the output address size.
    RootOutOfRange { root: PhysAddr, oas_bits: u8 },
    /// The IPS encoding is unknown.
    Ips(u8),
}

impl fmt::Display for CdBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::VaBits(b) => write!(f, "a {b}-bit VA space is not supported (25..=48)"),
            Self::MisalignedRoot(r) => write!(f, "page-table root {r} is not 4 KiB aligned"),
            Self::RootOutOfRange { root, oas_bits } => {
                write!(
                    f,
                    "page-table root {root} is beyond the {oas_bits}-bit output size"
                )
            }
            Self::Ips(i) => write!(f, "unknown IPS encoding {i}"),
        }
    }
}

/// A validated stage-1 configuration: what the SMMU's table walker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stage1Config {
    pub asid: u16,
    /// `None` when EPD0 = 1 (TTB0 walks disabled).
    pub ttb0: Option<PhysAddr>,
    pub t0sz: u8,
    pub granule: CdGranule,
    /// Effective output address size in bits (min of IPS, SMMU OAS, 48 for 4K/16K).
    pub oas_bits: u8,
    pub affd: bool,
    pub had0: bool,
    pub record_faults: bool,
    /// TTB1 region disabled (EPD1 = 1).
    pub ttb1_disabled: bool,
    pub tbi0: bool,
}

/// A context descriptor as its eight little-endian 64-bit words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ContextDescriptor(pub [u64; CD_WORDS]);

impl CdFields {
    /// An all-zero (invalid) CD.
    pub const ZERO: CdFields = CdFields {
        valid: false,
        t0sz: 0,
        tg0: 0,
        irgn0: 0,
        orgn0: 0,
        sh0: 0,
        epd0: false,
        endi: false,
        t1sz: 0,
        tg1: 0,
        epd1: false,
        ips: 0,
        affd: false,
        tbi: 0,
        aa64: false,
        hd: false,
        ha: false,
        s: false,
        r: false,
        a: false,
        aset: false,
        asid: 0,
        ttb0: PhysAddr(0),
        had0: false,
        ttb1: PhysAddr(0),
        had1: false,
        mair: 0,
    };

    /// The CD for shared virtual addressing: the device walks the CPU's page tables at `root`
    /// with a `va_bits`-bit TTB0 region (4 KiB granule), tagging its IOTLB entries with `asid`.
    ///
    /// `ips` is the output size encoding (normally SMMU_IDR5.OAS); `mair` the CPU's MAIR_EL1.
    /// ASET = 1 because the ASID is private to the SMMU (it must not be hit by the CPU's own
    /// broadcast TLBIs for an unrelated process that happens to use the same ASID value).
    pub fn sva(
        asid: u16,
        root: PhysAddr,
        va_bits: u8,
        ips: u8,
        mair: u64,
    ) -> Result<CdFields, CdBuildError> {
        if !(25..=48).contains(&va_bits) {
            return Err(CdBuildError::VaBits(va_bits));
        }
        let oas_bits = crate::iommu::spec::regs::oas_bits(ips)
            .ok_or(CdBuildError::Ips(ips))?
            .min(48);
        if !root.is_page_aligned() {
            return Err(CdBuildError::MisalignedRoot(root));
        }
        if root.as_u64() >> oas_bits != 0 {
            return Err(CdBuildError::RootOutOfRange { root, oas_bits });
        }
        Ok(CdFields {
            valid: true,
            t0sz: 64 - va_bits,
            tg0: CdGranule::K4.tg0() as u8,
            irgn0: CACHE_WBWA,
            orgn0: CACHE_WBWA,
            sh0: SHARE_INNER,
            epd1: true,
            ips,
            aa64: true,
            r: true,
            a: true,
            aset: true,
            asid,
            ttb0: root,
            mair,
            ..CdFields::ZERO
        })
    }

    /// The "abort quietly" form of this CD (Linux's SVA `release`): still valid, TTB0 walks
    /// disabled so every access takes a translation fault, and R = 0 so those faults are not
    /// recorded. Only dword 0 changes, so it can be written with one 64-bit store.
    pub fn quiesced(&self) -> CdFields {
        CdFields {
            epd0: true,
            r: false,
            ..*self
        }
    }

    /// Applies the SMMU's validity rules for an SMMU with output size `smmu_oas_bits`.
    pub fn validate(&self, smmu_oas_bits: u8) -> Result<Stage1Config, BadCd> {
        if !self.valid {
            return Err(BadCd::Invalid);
        }
        if !self.aa64 {
            return Err(BadCd::NotAArch64);
        }
        if !self.a {
            return Err(BadCd::AbortDisabled);
        }
        if self.s {
            return Err(BadCd::StallUnsupported);
        }
        if self.ha || self.hd {
            return Err(BadCd::HttuUnsupported);
        }
        let ips_bits = crate::iommu::spec::regs::oas_bits(self.ips.min(6)).unwrap_or(52);
        let mut oas_bits = ips_bits.min(smmu_oas_bits);
        let mut granule0 = CdGranule::K4;
        for table in 0..=1u8 {
            let (disabled, tsz, tg, ttb) = if table == 0 {
                (
                    self.epd0,
                    self.t0sz,
                    CdGranule::from_tg0(self.tg0.into()),
                    self.ttb0,
                )
            } else {
                (
                    self.epd1,
                    self.t1sz,
                    CdGranule::from_tg1(self.tg1.into()),
                    self.ttb1,
                )
            };
            if disabled {
                continue;
            }
            if !(16..=39).contains(&tsz) {
                return Err(BadCd::InputSize { table, tsz });
            }
            let granule = match tg {
                Some(g) if !self.endi => g,
                _ => return Err(BadCd::Granule { table }),
            };
            // Outputs above 48 bits need the 64 KiB granule (§3.4.3).
            if granule != CdGranule::K64 {
                oas_bits = oas_bits.min(48);
            }
            if ttb.as_u64() >> oas_bits != 0 {
                return Err(BadCd::TableOutOfRange {
                    table,
                    ttb: ttb.as_u64(),
                    oas_bits,
                });
            }
            if table == 0 {
                granule0 = granule;
            }
        }
        Ok(Stage1Config {
            asid: self.asid,
            ttb0: (!self.epd0).then_some(self.ttb0),
            t0sz: self.t0sz,
            granule: granule0,
            oas_bits,
            affd: self.affd,
            had0: self.had0,
            record_faults: self.r,
            ttb1_disabled: self.epd1,
            tbi0: self.tbi & 1 != 0,
        })
    }
}

impl ContextDescriptor {
    /// Encodes `f`. Fields wider than their encoding are truncated to it, which is why
    /// [`CdFields`] values should come from [`CdFields::sva`] or [`ContextDescriptor::decode`].
    pub fn encode(f: &CdFields) -> ContextDescriptor {
        let w0 = T0SZ.put(f.t0sz.into())
            | TG0.put(f.tg0.into())
            | IRGN0.put(f.irgn0.into())
            | ORGN0.put(f.orgn0.into())
            | SH0.put(f.sh0.into())
            | EPD0.flag(f.epd0)
            | ENDI.flag(f.endi)
            | T1SZ.put(f.t1sz.into())
            | TG1.put(f.tg1.into())
            | EPD1.flag(f.epd1)
            | V.flag(f.valid)
            | IPS.put(f.ips.into())
            | AFFD.flag(f.affd)
            | TBI.put(f.tbi.into())
            | AA64.flag(f.aa64)
            | HD.flag(f.hd)
            | HA.flag(f.ha)
            | S.flag(f.s)
            | R.flag(f.r)
            | A.flag(f.a)
            | ASET.flag(f.aset)
            | ASID.put(f.asid.into());
        let w1 = (f.ttb0.as_u64() & TTB.in_place()) | HADX.flag(f.had0);
        let w2 = (f.ttb1.as_u64() & TTB.in_place()) | HADX.flag(f.had1);
        ContextDescriptor([w0, w1, w2, f.mair, 0, 0, 0, 0])
    }

    /// Decodes every field, without judging validity.
    pub fn decode(&self) -> CdFields {
        let [w0, w1, w2, w3, ..] = self.0;
        // The multi-bit fields other than the ASID are at most 6 bits wide.
        let small = |field: Field| field.get(w0) as u8;
        CdFields {
            valid: V.is_set(w0),
            t0sz: small(T0SZ),
            tg0: small(TG0),
            irgn0: small(IRGN0),
            orgn0: small(ORGN0),
            sh0: small(SH0),
            epd0: EPD0.is_set(w0),
            endi: ENDI.is_set(w0),
            t1sz: small(T1SZ),
            tg1: small(TG1),
            epd1: EPD1.is_set(w0),
            ips: small(IPS),
            affd: AFFD.is_set(w0),
            tbi: small(TBI),
            aa64: AA64.is_set(w0),
            hd: HD.is_set(w0),
            ha: HA.is_set(w0),
            s: S.is_set(w0),
            r: R.is_set(w0),
            a: A.is_set(w0),
            aset: ASET.is_set(w0),
            asid: ASID.get(w0) as u16,
            ttb0: PhysAddr(w1 & TTB.in_place()),
            had0: HADX.is_set(w1),
            ttb1: PhysAddr(w2 & TTB.in_place()),
            had1: HADX.is_set(w2),
            mair: w3,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_cd_matches_the_one_qemu_accepted() {
        // facts §8: dword0 0x00016202c0000019 = T0SZ 25, EPD1, V, IPS 2, AA64, R, A, ASID 1.
        let f = CdFields {
            valid: true,
            t0sz: 25,
            epd1: true,
            ips: 2,
            aa64: true,
            r: true,
            a: true,
            asid: 1,
            ttb0: PhysAddr(0x4020_0000),
            mair: 0xff,
            ..CdFields::ZERO
        };
        let cd = ContextDescriptor::encode(&f);
        assert_eq!(cd.0[0], 0x0001_6202_c000_0019);
        assert_eq!(cd.0[1], 0x4020_0000);
        assert_eq!(cd.0[3], 0xff);
        assert_eq!(cd.decode(), f);
        let s1 = f.validate(44).unwrap();
        assert_eq!(s1.asid, 1);
        assert_eq!(s1.ttb0, Some(PhysAddr(0x4020_0000)));
        assert_eq!(s1.oas_bits, 40);
    }

    #[test]
    fn sva_cd_has_the_required_bits() {
        let f = CdFields::sva(7, PhysAddr(0x8000_0000), 48, 4, 0x44ff).unwrap();
        assert_eq!(f.t0sz, 16);
        assert!(f.epd1 && f.a && f.r && f.aa64 && f.valid && f.aset);
        assert!(!f.epd0);
        let s1 = f.validate(44).unwrap();
        assert_eq!(s1.oas_bits, 44);
        assert_eq!(s1.granule, CdGranule::K4);
        let q = f.quiesced();
        assert!(q.epd0 && !q.r && q.valid);
        let cq = ContextDescriptor::encode(&q);
        let cf = ContextDescriptor::encode(&f);
        assert_eq!(cq.0[1..], cf.0[1..], "quiescing must only touch dword 0");
        let s1q = q.validate(44).unwrap();
        assert_eq!(s1q.ttb0, None);
        assert!(!s1q.record_faults);
    }

    #[test]
    fn sva_builder_rejects_bad_input() {
        assert_eq!(
            CdFields::sva(1, PhysAddr(0), 49, 4, 0),
            Err(CdBuildError::VaBits(49))
        );
        assert_eq!(
            CdFields::sva(1, PhysAddr(0), 24, 4, 0),
            Err(CdBuildError::VaBits(24))
        );
        assert_eq!(
            CdFields::sva(1, PhysAddr(0x1234), 48, 4, 0),
            Err(CdBuildError::MisalignedRoot(PhysAddr(0x1234)))
        );
        assert!(matches!(
            CdFields::sva(1, PhysAddr(1 << 44), 48, 4, 0),
            Err(CdBuildError::RootOutOfRange { .. })
        ));
        assert_eq!(
            CdFields::sva(1, PhysAddr(0), 48, 7, 0),
            Err(CdBuildError::Ips(7))
        );
    }

    #[test]
    fn validity_rules_follow_qemu_decode_cd() {
        let good = CdFields::sva(1, PhysAddr(0x1000), 39, 4, 0).unwrap();
        assert!(good.validate(44).is_ok());
        let check = |f: CdFields, e: BadCd| assert_eq!(f.validate(44), Err(e));
        check(
            CdFields {
                valid: false,
                ..good
            },
            BadCd::Invalid,
        );
        check(
            CdFields {
                aa64: false,
                ..good
            },
            BadCd::NotAArch64,
        );
        check(CdFields { a: false, ..good }, BadCd::AbortDisabled);
        check(CdFields { s: true, ..good }, BadCd::StallUnsupported);
        check(CdFields { ha: true, ..good }, BadCd::HttuUnsupported);
        check(
            CdFields { t0sz: 15, ..good },
            BadCd::InputSize { table: 0, tsz: 15 },
        );
        check(
            CdFields { t0sz: 40, ..good },
            BadCd::InputSize { table: 0, tsz: 40 },
        );
        check(CdFields { tg0: 3, ..good }, BadCd::Granule { table: 0 });
        check(CdFields { endi: true, ..good }, BadCd::Granule { table: 0 });
        check(
            CdFields {
                ttb0: PhysAddr(1 << 44),
                ..good
            },
            BadCd::TableOutOfRange {
                table: 0,
                ttb: 1 << 44,
                oas_bits: 44,
            },
        );
        // TTB1 is checked too once EPD1 is cleared.
        check(
            CdFields {
                epd1: false,
                ..good
            },
            BadCd::InputSize { table: 1, tsz: 0 },
        );
        // With EPD0 the TTB0 fields are not looked at.
        assert!(CdFields {
            epd0: true,
            t0sz: 0,
            ..good
        }
        .validate(44)
        .is_ok());
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(w0 in any::<u64>(), ttb0 in any::<u64>(), ttb1 in any::<u64>(),
                                 mair in any::<u64>()) {
            // Every bit the driver cares about survives decode → encode.
            let w1 = ttb0 & (TTB.in_place() | HADX.in_place());
            let w2 = ttb1 & (TTB.in_place() | HADX.in_place());
            // IRGN1/ORGN1/SH1, WXN, UWXN and PAN are not modelled.
            let known = !(0x3f << 24 | 1 << 36 | 1 << 37 | 1 << 40);
            let cd = ContextDescriptor([w0 & known, w1, w2, mair, 0, 0, 0, 0]);
            prop_assert_eq!(ContextDescriptor::encode(&cd.decode()), cd);
        }
    }
}
