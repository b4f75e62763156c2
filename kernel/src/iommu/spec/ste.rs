//! Stream table entries (STEs): one 64-byte entry per StreamID in a linear stream table.
//!
//! Source: Arm SMMUv3 specification §5.2 "Stream Table Entry" (field layout) and §5.2.1
//! "Validity of STE" (what makes an STE ILLEGAL and raise C_BAD_STE), §3.3.1 (linear table).
//!
//! The driver only builds three shapes: abort (V=1, Config=0b000: traffic is terminated without
//! an event), bypass (Config=0b100) and stage 1 with a single context descriptor
//! (Config=0b101, S1CDMax=0, S1ContextPtr = the CD). Every STE keeps S2VMID = 0: QEMU ≥ 9.2
//! tags IOTLB entries with it, and the TLBIs the driver issues all carry VMID 0.

use core::fmt;

use crate::iommu::spec::bits::Field;
use crate::mm::PhysAddr;

/// Size of one STE in bytes.
pub const STE_SIZE: usize = 64;
/// Number of 64-bit words in an STE.
pub const STE_WORDS: usize = STE_SIZE / 8;

// dword 0
const V: Field = Field::bit(0);
const CONFIG: Field = Field::bits(3, 1);
const S1FMT: Field = Field::bits(5, 4);
const S1_CONTEXT_PTR: Field = Field::bits(51, 6);
const S1CDMAX: Field = Field::bits(63, 59);
// dword 1
const S1CIR: Field = Field::bits(3, 2);
const S1COR: Field = Field::bits(5, 4);
const S1CSH: Field = Field::bits(7, 6);
const S1STALLD: Field = Field::bit(27);
const SHCFG: Field = Field::bits(45, 44);
// dword 2
const S2VMID: Field = Field::bits(15, 0);

const CONFIG_ABORT: u64 = 0b000;
const CONFIG_BYPASS: u64 = 0b100;
const CONFIG_S1: u64 = 0b101;

/// Cacheability WBRA for S1CIR/S1COR (§5.2: 0b01 = Write-Back, read-allocate).
const CACHE_WBRA: u64 = 0b01;
/// Inner Shareable for S1CSH.
const SHARE_INNER: u64 = 0b11;
/// SHCFG = 0b01: use the incoming shareability (bypass streams).
const SHCFG_INCOMING: u64 = 0b01;

/// What a valid STE tells the SMMU to do with a stream's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamConfig {
    /// Terminate every transaction, no event (Config = 0b000).
    Abort,
    /// Let transactions through untranslated (Config = 0b100).
    Bypass,
    /// Stage-1 translation through the single CD at `cd` (Config = 0b101, S1CDMax = 0).
    Stage1 { cd: PhysAddr },
}

/// An STE that is ILLEGAL (§5.2.1) or uses something this implementation does not support: the
/// SMMU records C_BAD_STE and terminates the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadSte {
    /// V == 0.
    Invalid,
    /// Config is a reserved value (0b001..=0b011).
    ReservedConfig(u8),
    /// Stage 2 (Config 0b110/0b111) requested; not modelled.
    Stage2NotSupported,
    /// S1CDMax != 0: more than one CD (substreams), which needs SMMU_IDR1.SSIDSIZE != 0.
    Substreams(u8),
    /// S1STALLD set while the SMMU has no stall model.
    StallDisable,
    /// S1ContextPtr is outside the output address size.
    ContextPtrOutOfRange(u64),
}

impl fmt::Display for BadSte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid => f.write_str("STE not valid (V == 0)"),
            Self::ReservedConfig(c) => write!(f, "STE.Config {c:#05b} is reserved"),
            Self::Stage2NotSupported => f.write_str("STE requests stage 2, which is not supported"),
            Self::Substreams(n) => write!(f, "STE.S1CDMax = {n}: substreams are not supported"),
            Self::StallDisable => f.write_str("STE.S1STALLD set without a stall model"),
            Self::ContextPtrOutOfRange(p) => {
                write!(f, "STE.S1ContextPtr {p:#x} exceeds the output address size")
            }
        }
    }
}

/// The decoded meaning of a valid STE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodedSte {
    pub config: StreamConfig,
    /// STE.S2VMID: the VMID IOTLB entries of this stream are tagged with when stage 2 is
    /// implemented (QEMU ≥ 9.2 does so even for stage-1-only streams).
    pub s2vmid: u16,
}

/// A stream table entry as its eight little-endian 64-bit words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ste(pub [u64; STE_WORDS]);

/// A CD pointer could not be encoded into an STE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadContextPtr(pub PhysAddr);

impl fmt::Display for BadContextPtr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CD address {} is not 64-byte aligned below 2^52", self.0)
    }
}

impl Ste {
    /// V == 0: the SMMU raises C_BAD_STE for traffic on this StreamID.
    pub const INVALID: Ste = Ste([0; STE_WORDS]);

    /// Terminate the stream's traffic silently (V=1, Config=abort).
    pub const fn abort() -> Ste {
        let mut w = [0; STE_WORDS];
        w[0] = V.flag(true) | CONFIG.put(CONFIG_ABORT);
        Ste(w)
    }

    /// Pass the stream's traffic through untranslated.
    pub const fn bypass() -> Ste {
        let mut w = [0; STE_WORDS];
        w[0] = V.flag(true) | CONFIG.put(CONFIG_BYPASS);
        w[1] = SHCFG.put(SHCFG_INCOMING);
        Ste(w)
    }

    /// Stage-1 translation through the single CD at `cd` (64-byte aligned), S2VMID = 0.
    pub fn stage1(cd: PhysAddr) -> Result<Ste, BadContextPtr> {
        if !cd.is_aligned(64) || cd.as_u64() & !S1_CONTEXT_PTR.in_place() != 0 {
            return Err(BadContextPtr(cd));
        }
        let mut w = [0; STE_WORDS];
        // S1Fmt = 0 (linear) and S1CDMax = 0: exactly one CD, SubstreamID 0 (§5.2).
        w[0] = V.flag(true) | CONFIG.put(CONFIG_S1) | cd.as_u64();
        // Table walks and CD fetches: inner/outer write-back, inner shareable (as Linux).
        w[1] = S1CIR.put(CACHE_WBRA) | S1COR.put(CACHE_WBRA) | S1CSH.put(SHARE_INNER);
        Ok(Ste(w))
    }

    /// True if V == 1.
    pub const fn is_valid(&self) -> bool {
        V.is_set(self.0[0])
    }

    /// Decodes the STE as the SMMU does on a transaction (§5.2.1 validity rules, restricted to a
    /// stage-1-only SMMU without substreams or stalls, like QEMU's `virt` SMMU).
    ///
    /// `oas_bits` is the SMMU's output address size (pointers beyond it are ILLEGAL).
    pub fn decode(&self, oas_bits: u8) -> Result<DecodedSte, BadSte> {
        let [w0, w1, w2, ..] = self.0;
        if !V.is_set(w0) {
            return Err(BadSte::Invalid);
        }
        let s2vmid = S2VMID.get(w2) as u16;
        let config = match CONFIG.get(w0) {
            CONFIG_ABORT => StreamConfig::Abort,
            c @ 0b001..=0b011 => return Err(BadSte::ReservedConfig(c as u8)),
            CONFIG_BYPASS => StreamConfig::Bypass,
            CONFIG_S1 => {
                let cdmax = S1CDMAX.get(w0) as u8;
                if cdmax != 0 {
                    return Err(BadSte::Substreams(cdmax));
                }
                if S1STALLD.is_set(w1) {
                    return Err(BadSte::StallDisable);
                }
                let cd = w0 & S1_CONTEXT_PTR.in_place();
                if cd >> oas_bits != 0 {
                    return Err(BadSte::ContextPtrOutOfRange(cd));
                }
                // S1Fmt is ignored when S1CDMax == 0 (§5.2).
                let _ = S1FMT.get(w0);
                StreamConfig::Stage1 { cd: PhysAddr(cd) }
            }
            _ => return Err(BadSte::Stage2NotSupported),
        };
        Ok(DecodedSte { config, s2vmid })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn golden_stage1_ste_matches_the_measured_qemu_layout() {
        // facts §8: "STE dword0 = CD address | Config S1 (0b101) | V".
        let ste = Ste::stage1(PhysAddr(0x4010_2000)).unwrap();
        assert_eq!(ste.0[0], 0x4010_2000 | 0b1011);
        assert_eq!(ste.0[2] & 0xffff, 0, "S2VMID must be 0");
        assert_eq!(
            ste.decode(44),
            Ok(DecodedSte {
                config: StreamConfig::Stage1 {
                    cd: PhysAddr(0x4010_2000)
                },
                s2vmid: 0
            })
        );
    }

    #[test]
    fn abort_bypass_invalid() {
        assert_eq!(Ste::abort().0[0], 1);
        assert_eq!(Ste::abort().decode(44).unwrap().config, StreamConfig::Abort);
        assert_eq!(Ste::bypass().0[0], 0b1001);
        assert_eq!(
            Ste::bypass().decode(44).unwrap().config,
            StreamConfig::Bypass
        );
        assert_eq!(Ste::INVALID.decode(44), Err(BadSte::Invalid));
        assert!(!Ste::INVALID.is_valid());
    }

    #[test]
    fn illegal_stes_are_rejected() {
        let mut s = Ste::abort();
        s.0[0] = V.flag(true) | CONFIG.put(0b010);
        assert_eq!(s.decode(44), Err(BadSte::ReservedConfig(2)));
        s.0[0] = V.flag(true) | CONFIG.put(0b110);
        assert_eq!(s.decode(44), Err(BadSte::Stage2NotSupported));
        let mut s = Ste::stage1(PhysAddr(0x1000)).unwrap();
        s.0[0] |= S1CDMAX.put(1);
        assert_eq!(s.decode(44), Err(BadSte::Substreams(1)));
        let mut s = Ste::stage1(PhysAddr(0x1000)).unwrap();
        s.0[1] |= S1STALLD.flag(true);
        assert_eq!(s.decode(44), Err(BadSte::StallDisable));
        let s = Ste::stage1(PhysAddr(1 << 45)).unwrap();
        assert_eq!(s.decode(44), Err(BadSte::ContextPtrOutOfRange(1 << 45)));
        assert_eq!(
            Ste::stage1(PhysAddr(0x1020)),
            Err(BadContextPtr(PhysAddr(0x1020)))
        );
        assert_eq!(
            Ste::stage1(PhysAddr(1 << 52)),
            Err(BadContextPtr(PhysAddr(1 << 52)))
        );
    }
}
