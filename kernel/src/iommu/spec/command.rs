//! SMMUv3 commands: typed values that encode to, and decode from, the 16-byte command-queue
//! entry format.
//!
//! Source: Arm SMMUv3 specification §4 "Commands": §4.1.1 (common layout: opcode in bits `[7:0]`),
//! §4.2 (CMD_PREFETCH_CONFIG), §4.3 (configuration invalidation: CMD_CFGI_*), §4.4 (TLB
//! invalidation, including §4.4.1.1 range invalidation and the TTL hint), §4.7 (CMD_SYNC).
//! The bit positions agree with Linux's `arm-smmu-v3.h` and QEMU's `smmuv3-internal.h`.
//!
//! Decoding is strict where the architecture says a command is illegal (§4.4.1.1: NUM == 0,
//! SCALE == 0 and TTL == 0 with TG != 0 is Reserved and causes CERROR_ILL), so the software
//! model rejects exactly what hardware rejects.

use core::fmt;

use crate::iommu::spec::bits::Field;
use crate::mm::VirtAddr;

/// Opcodes (§4.1.1 table "Command opcodes").
pub mod opcode {
    pub const PREFETCH_CONFIG: u8 = 0x01;
    pub const CFGI_STE: u8 = 0x03;
    /// CMD_CFGI_STE_RANGE; CMD_CFGI_ALL is this opcode with RANGE = 31 (§4.3.2).
    pub const CFGI_STE_RANGE: u8 = 0x04;
    pub const CFGI_CD: u8 = 0x05;
    pub const CFGI_CD_ALL: u8 = 0x06;
    pub const TLBI_NH_ALL: u8 = 0x10;
    pub const TLBI_NH_ASID: u8 = 0x11;
    pub const TLBI_NH_VA: u8 = 0x12;
    pub const TLBI_NH_VAA: u8 = 0x13;
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    pub const SYNC: u8 = 0x46;
}

/// RANGE value that makes CMD_CFGI_STE_RANGE cover every StreamID (§4.3.2 CMD_CFGI_ALL).
pub const CFGI_ALL_RANGE: u8 = 31;

// Field positions (§4.1.1 and the per-command layouts).
// dword 0
const OP: Field = Field::bits(7, 0);
const SSEC: Field = Field::bit(10);
const SSID: Field = Field::bits(31, 12);
const NUM: Field = Field::bits(16, 12);
const SCALE: Field = Field::bits(24, 20);
const SYNC_CS: Field = Field::bits(13, 12);
const SID: Field = Field::bits(63, 32);
const VMID: Field = Field::bits(47, 32);
const ASID: Field = Field::bits(63, 48);
// dword 1
const LEAF: Field = Field::bit(0);
const RANGE: Field = Field::bits(4, 0);
const TTL: Field = Field::bits(9, 8);
const TG: Field = Field::bits(11, 10);
const ADDR: Field = Field::bits(63, 12);

/// The largest NUM and SCALE values (5-bit fields when SMMU_IDR5.DS == 0, §4.4.1.1).
pub const TLBI_RANGE_FIELD_MAX: u8 = 31;

/// A command could not be built or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    /// The opcode is not one this driver knows.
    UnknownOpcode(u8),
    /// A TLBI address was not aligned to the 4 KiB invalidation unit.
    MisalignedAddress(u64),
    /// A field does not fit its encoding.
    FieldOutOfRange {
        /// Which field.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The largest encodable value.
        max: u64,
    },
    /// TG != 0 with NUM == SCALE == TTL == 0: Reserved, CERROR_ILL (§4.4.1.1).
    ReservedRangeEncoding,
    /// A Secure-only command (SSEC = 1) on the Non-secure queue: CERROR_ILL (§4.3).
    SecureCommand,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownOpcode(op) => write!(f, "unknown SMMU command opcode {op:#04x}"),
            Self::MisalignedAddress(a) => {
                write!(f, "TLBI address {a:#x} is not 4 KiB aligned")
            }
            Self::FieldOutOfRange { field, value, max } => {
                write!(f, "command field {field} = {value:#x} exceeds {max:#x}")
            }
            Self::ReservedRangeEncoding => f.write_str(
                "range TLBI with TG != 0 and NUM = SCALE = TTL = 0 is a reserved encoding",
            ),
            Self::SecureCommand => f.write_str("SSEC = 1 is illegal on the Non-secure queue"),
        }
    }
}

/// Translation granule of a range TLBI's TG field (§4.4.1.1: 1 = 4 KiB, 2 = 16 KiB, 3 = 64 KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granule {
    K4,
    K16,
    K64,
}

impl Granule {
    /// log2 of the granule size.
    pub const fn shift(self) -> u32 {
        match self {
            Self::K4 => 12,
            Self::K16 => 14,
            Self::K64 => 16,
        }
    }

    const fn tg(self) -> u64 {
        match self {
            Self::K4 => 1,
            Self::K16 => 2,
            Self::K64 => 3,
        }
    }

    fn from_tg(tg: u64) -> Option<Self> {
        match tg {
            1 => Some(Self::K4),
            2 => Some(Self::K16),
            3 => Some(Self::K64),
            _ => None,
        }
    }
}

/// The range and level-hint part of a TLBI_NH_VA/VAA when SMMU_IDR3.RIL is set (§4.4.1.1).
///
/// The command covers `(NUM + 1) << SCALE` granules starting at its address; `ttl` (0..=3) is
/// the walk level of the leaf entries to invalidate, 0 meaning "any level".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlbiRange {
    pub tg: Granule,
    pub num: u8,
    pub scale: u8,
    pub ttl: u8,
}

impl TlbiRange {
    /// A checked range: NUM and SCALE ≤ 31, TTL ≤ 3, and never the reserved all-zero hint.
    pub fn new(tg: Granule, num: u8, scale: u8, ttl: u8) -> Result<Self, CommandError> {
        check_field("NUM", num.into(), TLBI_RANGE_FIELD_MAX.into())?;
        check_field("SCALE", scale.into(), TLBI_RANGE_FIELD_MAX.into())?;
        check_field("TTL", ttl.into(), 3)?;
        if num == 0 && scale == 0 && ttl == 0 {
            return Err(CommandError::ReservedRangeEncoding);
        }
        Ok(Self {
            tg,
            num,
            scale,
            ttl,
        })
    }

    /// Number of granules covered.
    pub const fn granules(&self) -> u64 {
        (self.num as u64 + 1) << self.scale
    }

    /// Number of bytes covered.
    pub const fn bytes(&self) -> u64 {
        self.granules() << self.tg.shift()
    }
}

/// Arguments of CMD_TLBI_NH_VA (ASID-tagged) or CMD_TLBI_NH_VAA (all ASIDs) (§4.4.2.3-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlbiVa {
    pub vmid: u16,
    /// Ignored (and encoded as 0) for TLBI_NH_VAA.
    pub asid: u16,
    /// The first address; bits `[11:0]` are not encodable and must be zero.
    pub addr: VirtAddr,
    /// Only last-level (leaf) entries need to be invalidated.
    pub leaf: bool,
    /// `None`: a single-address invalidation (TG = 0). `Some`: a range invalidation.
    pub range: Option<TlbiRange>,
}

/// CMD_SYNC completion signal (§4.7.3, CS field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncSignal {
    /// CS = 0b00: no signal; software polls SMMU_CMDQ_CONS.
    None,
    /// CS = 0b01: interrupt/MSI.
    Irq,
    /// CS = 0b10: send event (SEV).
    Sev,
}

/// One SMMUv3 command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// CMD_PREFETCH_CONFIG(SID) (§4.2.1): a hint; the SMMU may prefetch the STE/CD.
    PrefetchConfig { sid: u32 },
    /// CMD_CFGI_STE(SID, Leaf) (§4.3.1).
    CfgiSte { sid: u32, leaf: bool },
    /// CMD_CFGI_STE_RANGE(SID, Range) (§4.3.2): StreamIDs `sid & !mask ..= (sid & !mask) | mask`
    /// with `mask = 2^(range+1) - 1`.
    CfgiSteRange { sid: u32, range: u8 },
    /// CMD_CFGI_ALL (§4.3.2): CFGI_STE_RANGE with RANGE = 31.
    CfgiAll,
    /// CMD_CFGI_CD(SID, SSID, Leaf) (§4.3.3).
    CfgiCd { sid: u32, ssid: u32, leaf: bool },
    /// CMD_CFGI_CD_ALL(SID) (§4.3.4).
    CfgiCdAll { sid: u32 },
    /// CMD_TLBI_NH_ALL(VMID) (§4.4.2.1).
    TlbiNhAll { vmid: u16 },
    /// CMD_TLBI_NH_ASID(VMID, ASID) (§4.4.2.2).
    TlbiNhAsid { vmid: u16, asid: u16 },
    /// CMD_TLBI_NH_VA(VMID, ASID, Addr, Leaf) (§4.4.2.4).
    TlbiNhVa(TlbiVa),
    /// CMD_TLBI_NH_VAA(VMID, Addr, Leaf) (§4.4.2.3).
    TlbiNhVaa(TlbiVa),
    /// CMD_TLBI_NSNH_ALL (§4.4.4.1): every Non-secure non-hypervisor entry.
    TlbiNsnhAll,
    /// CMD_SYNC (§4.7.3): completes when every earlier command has completed.
    Sync { signal: SyncSignal },
}

fn check_field(field: &'static str, value: u64, max: u64) -> Result<(), CommandError> {
    if value > max {
        Err(CommandError::FieldOutOfRange { field, value, max })
    } else {
        Ok(())
    }
}

impl Command {
    /// A CMD_SYNC that software polls for (no interrupt, no MSI).
    pub const SYNC: Command = Command::Sync {
        signal: SyncSignal::None,
    };

    /// The opcode of this command.
    pub fn opcode(&self) -> u8 {
        match self {
            Self::PrefetchConfig { .. } => opcode::PREFETCH_CONFIG,
            Self::CfgiSte { .. } => opcode::CFGI_STE,
            Self::CfgiSteRange { .. } | Self::CfgiAll => opcode::CFGI_STE_RANGE,
            Self::CfgiCd { .. } => opcode::CFGI_CD,
            Self::CfgiCdAll { .. } => opcode::CFGI_CD_ALL,
            Self::TlbiNhAll { .. } => opcode::TLBI_NH_ALL,
            Self::TlbiNhAsid { .. } => opcode::TLBI_NH_ASID,
            Self::TlbiNhVa(_) => opcode::TLBI_NH_VA,
            Self::TlbiNhVaa(_) => opcode::TLBI_NH_VAA,
            Self::TlbiNsnhAll => opcode::TLBI_NSNH_ALL,
            Self::Sync { .. } => opcode::SYNC,
        }
    }

    /// The statistics bucket of this command.
    pub fn kind(&self) -> CommandKind {
        match self {
            Self::PrefetchConfig { .. } => CommandKind::PrefetchConfig,
            Self::CfgiSte { .. } => CommandKind::CfgiSte,
            Self::CfgiSteRange { .. } => CommandKind::CfgiSteRange,
            Self::CfgiAll => CommandKind::CfgiAll,
            Self::CfgiCd { .. } => CommandKind::CfgiCd,
            Self::CfgiCdAll { .. } => CommandKind::CfgiCdAll,
            Self::TlbiNhAll { .. } => CommandKind::TlbiNhAll,
            Self::TlbiNhAsid { .. } => CommandKind::TlbiNhAsid,
            Self::TlbiNhVa(va) if va.range.is_some() => CommandKind::TlbiNhVaRange,
            Self::TlbiNhVa(_) => CommandKind::TlbiNhVa,
            Self::TlbiNhVaa(_) => CommandKind::TlbiNhVaa,
            Self::TlbiNsnhAll => CommandKind::TlbiNsnhAll,
            Self::Sync { .. } => CommandKind::Sync,
        }
    }

    /// Encodes the command into its two little-endian 64-bit words.
    ///
    /// Fails only for values that have no encoding (a field too wide, a misaligned TLBI
    /// address, the reserved range combination); a successfully encoded command always
    /// decodes back to itself.
    pub fn encode(&self) -> Result<[u64; 2], CommandError> {
        let op = u64::from(self.opcode());
        let words = match *self {
            Self::PrefetchConfig { sid } => [op | SID.put(sid.into()), 0],
            Self::CfgiSte { sid, leaf } => [op | SID.put(sid.into()), LEAF.flag(leaf)],
            Self::CfgiSteRange { sid, range } => {
                // RANGE = 31 is CMD_CFGI_ALL (§4.3.2), which decodes as [`Command::CfgiAll`].
                check_field("RANGE", range.into(), u64::from(CFGI_ALL_RANGE) - 1)?;
                [op | SID.put(sid.into()), RANGE.put(range.into())]
            }
            Self::CfgiAll => [op, RANGE.put(CFGI_ALL_RANGE.into())],
            Self::CfgiCd { sid, ssid, leaf } => {
                check_field("SSID", ssid.into(), SSID.max())?;
                [
                    op | SSID.put(ssid.into()) | SID.put(sid.into()),
                    LEAF.flag(leaf),
                ]
            }
            Self::CfgiCdAll { sid } => [op | SID.put(sid.into()), 0],
            Self::TlbiNhAll { vmid } => [op | VMID.put(vmid.into()), 0],
            Self::TlbiNhAsid { vmid, asid } => {
                [op | VMID.put(vmid.into()) | ASID.put(asid.into()), 0]
            }
            Self::TlbiNhVa(va) => encode_tlbi_va(op, &va, true)?,
            Self::TlbiNhVaa(va) => encode_tlbi_va(op, &va, false)?,
            Self::TlbiNsnhAll => [op, 0],
            Self::Sync { signal } => {
                let cs = match signal {
                    SyncSignal::None => 0,
                    SyncSignal::Irq => 1,
                    SyncSignal::Sev => 2,
                };
                [op | SYNC_CS.put(cs), 0]
            }
        };
        Ok(words)
    }

    /// Decodes a command-queue entry, as the SMMU (or the model) does when it consumes it.
    pub fn decode(words: [u64; 2]) -> Result<Self, CommandError> {
        let [w0, w1] = words;
        let op = OP.get(w0) as u8;
        let sid = SID.get(w0) as u32;
        let ssec = SSEC.is_set(w0);
        let leaf = LEAF.is_set(w1);
        let needs_ns = matches!(
            op,
            opcode::CFGI_STE | opcode::CFGI_STE_RANGE | opcode::CFGI_CD | opcode::CFGI_CD_ALL
        );
        if needs_ns && ssec {
            return Err(CommandError::SecureCommand);
        }
        Ok(match op {
            opcode::PREFETCH_CONFIG => Self::PrefetchConfig { sid },
            opcode::CFGI_STE => Self::CfgiSte { sid, leaf },
            opcode::CFGI_STE_RANGE => {
                let range = RANGE.get(w1) as u8;
                if range == CFGI_ALL_RANGE {
                    Self::CfgiAll
                } else {
                    Self::CfgiSteRange { sid, range }
                }
            }
            opcode::CFGI_CD => {
                let ssid = SSID.get(w0) as u32;
                Self::CfgiCd { sid, ssid, leaf }
            }
            opcode::CFGI_CD_ALL => Self::CfgiCdAll { sid },
            opcode::TLBI_NH_ALL => Self::TlbiNhAll {
                vmid: VMID.get(w0) as u16,
            },
            opcode::TLBI_NH_ASID => Self::TlbiNhAsid {
                vmid: VMID.get(w0) as u16,
                asid: ASID.get(w0) as u16,
            },
            opcode::TLBI_NH_VA => Self::TlbiNhVa(decode_tlbi_va(w0, w1, true)?),
            opcode::TLBI_NH_VAA => Self::TlbiNhVaa(decode_tlbi_va(w0, w1, false)?),
            opcode::TLBI_NSNH_ALL => Self::TlbiNsnhAll,
            opcode::SYNC => Self::Sync {
                signal: match SYNC_CS.get(w0) {
                    0 => SyncSignal::None,
                    1 => SyncSignal::Irq,
                    2 => SyncSignal::Sev,
                    // CS = 0b11 is reserved (§4.7.3).
                    _ => {
                        return Err(CommandError::FieldOutOfRange {
                            field: "CS",
                            value: 3,
                            max: 2,
                        })
                    }
                },
            },
            other => return Err(CommandError::UnknownOpcode(other)),
        })
    }
}

fn encode_tlbi_va(op: u64, va: &TlbiVa, with_asid: bool) -> Result<[u64; 2], CommandError> {
    if !va.addr.is_page_aligned() {
        return Err(CommandError::MisalignedAddress(va.addr.as_u64()));
    }
    // TLBI_NH_VAA has no ASID field (§4.4.2.3): a non-zero one cannot be encoded.
    if !with_asid {
        check_field("ASID of TLBI_NH_VAA", va.asid.into(), 0)?;
    }
    let asid = if with_asid { u64::from(va.asid) } else { 0 };
    let mut w0 = op | VMID.put(va.vmid.into()) | ASID.put(asid);
    let mut w1 = va.addr.as_u64() | LEAF.flag(va.leaf);
    if let Some(range) = va.range {
        // Re-validate: the fields are public, so a hand-made value may be out of range.
        let range = TlbiRange::new(range.tg, range.num, range.scale, range.ttl)?;
        w0 |= NUM.put(range.num.into()) | SCALE.put(range.scale.into());
        w1 |= TTL.put(range.ttl.into()) | TG.put(range.tg.tg());
    }
    Ok([w0, w1])
}

fn decode_tlbi_va(w0: u64, w1: u64, with_asid: bool) -> Result<TlbiVa, CommandError> {
    let tg = TG.get(w1);
    // With TG == 0 the NUM, SCALE and TTL fields are RES0 and ignored (§4.4.1.1).
    let range = match Granule::from_tg(tg) {
        None => None,
        Some(tg) => Some(TlbiRange::new(
            tg,
            NUM.get(w0) as u8,
            SCALE.get(w0) as u8,
            TTL.get(w1) as u8,
        )?),
    };
    Ok(TlbiVa {
        vmid: VMID.get(w0) as u16,
        asid: if with_asid { ASID.get(w0) as u16 } else { 0 },
        addr: VirtAddr(w1 & ADDR.in_place()),
        leaf: LEAF.is_set(w1),
        range,
    })
}

/// Statistics buckets: one per command, with range TLBI_NH_VA counted apart from single-page
/// ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommandKind {
    PrefetchConfig,
    CfgiSte,
    CfgiSteRange,
    CfgiAll,
    CfgiCd,
    CfgiCdAll,
    TlbiNhAll,
    TlbiNhAsid,
    TlbiNhVa,
    TlbiNhVaRange,
    TlbiNhVaa,
    TlbiNsnhAll,
    Sync,
}

impl CommandKind {
    /// Every kind, in display order.
    pub const ALL: [CommandKind; 13] = [
        Self::PrefetchConfig,
        Self::CfgiSte,
        Self::CfgiSteRange,
        Self::CfgiAll,
        Self::CfgiCd,
        Self::CfgiCdAll,
        Self::TlbiNhAll,
        Self::TlbiNhAsid,
        Self::TlbiNhVa,
        Self::TlbiNhVaRange,
        Self::TlbiNhVaa,
        Self::TlbiNsnhAll,
        Self::Sync,
    ];

    /// The architectural name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PrefetchConfig => "PREFETCH_CONFIG",
            Self::CfgiSte => "CFGI_STE",
            Self::CfgiSteRange => "CFGI_STE_RANGE",
            Self::CfgiAll => "CFGI_ALL",
            Self::CfgiCd => "CFGI_CD",
            Self::CfgiCdAll => "CFGI_CD_ALL",
            Self::TlbiNhAll => "TLBI_NH_ALL",
            Self::TlbiNhAsid => "TLBI_NH_ASID",
            Self::TlbiNhVa => "TLBI_NH_VA",
            Self::TlbiNhVaRange => "TLBI_NH_VA(range)",
            Self::TlbiNhVaa => "TLBI_NH_VAA",
            Self::TlbiNsnhAll => "TLBI_NSNH_ALL",
            Self::Sync => "CMD_SYNC",
        }
    }

    /// True for the TLB invalidation commands.
    pub const fn is_tlbi(self) -> bool {
        matches!(
            self,
            Self::TlbiNhAll
                | Self::TlbiNhAsid
                | Self::TlbiNhVa
                | Self::TlbiNhVaRange
                | Self::TlbiNhVaa
                | Self::TlbiNsnhAll
        )
    }
}

/// A count of commands per [`CommandKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommandCounts([u64; CommandKind::ALL.len()]);

impl CommandCounts {
    /// Counts one command of `kind`.
    pub fn add(&mut self, kind: CommandKind) {
        self.0[kind as usize] += 1;
    }

    /// Counts every command of `commands`.
    pub fn add_all<'a>(&mut self, commands: impl IntoIterator<Item = &'a Command>) {
        for c in commands {
            self.add(c.kind());
        }
    }

    /// Adds another set of counts.
    pub fn merge(&mut self, other: &CommandCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    /// Takes away an earlier snapshot of the same counters (saturating).
    pub fn subtract(&mut self, earlier: &CommandCounts) {
        for (a, b) in self.0.iter_mut().zip(earlier.0.iter()) {
            *a = a.saturating_sub(*b);
        }
    }

    /// Number of commands of `kind`.
    pub fn get(&self, kind: CommandKind) -> u64 {
        self.0[kind as usize]
    }

    /// Number of commands of every kind.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Number of TLB invalidation commands.
    pub fn tlbi(&self) -> u64 {
        CommandKind::ALL
            .iter()
            .filter(|k| k.is_tlbi())
            .map(|&k| self.get(k))
            .sum()
    }
}

impl fmt::Display for CommandCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for kind in CommandKind::ALL {
            let n = self.get(kind);
            if n != 0 {
                if !first {
                    f.write_str(", ")?;
                }
                write!(f, "{} x{n}", kind.name())?;
                first = false;
            }
        }
        if first {
            f.write_str("no commands")?;
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_encodings_match_the_specification_layouts() {
        // TLBI_NH_ASID: ASID [63:48], VMID [47:32], opcode 0x11 (§4.4.2.2).
        let w = Command::TlbiNhAsid { vmid: 0, asid: 1 }.encode().unwrap();
        assert_eq!(w, [0x0001_0000_0000_0011, 0]);
        // TLBI_NH_VA single page, leaf, as measured on QEMU: ASID 1, VMID 0, VA 0x100000.
        let w = Command::TlbiNhVa(TlbiVa {
            vmid: 0,
            asid: 1,
            addr: VirtAddr(0x10_0000),
            leaf: true,
            range: None,
        })
        .encode()
        .unwrap();
        assert_eq!(w, [0x0001_0000_0000_0012, 0x10_0001]);
        // Range TLBI: NUM [16:12], SCALE [24:20], TTL [73:72], TG [75:74].
        let w = Command::TlbiNhVa(TlbiVa {
            vmid: 0,
            asid: 7,
            addr: VirtAddr(0x4000_0000),
            leaf: false,
            range: Some(TlbiRange::new(Granule::K4, 3, 2, 0).unwrap()),
        })
        .encode()
        .unwrap();
        assert_eq!(w, [0x0007_0000_0020_3012, 0x4000_0000 | 1 << 10]);
        // CFGI_STE: SID [63:32], Leaf in word 1 bit 0 (§4.3.1).
        assert_eq!(
            Command::CfgiSte {
                sid: 0x10,
                leaf: true
            }
            .encode()
            .unwrap(),
            [0x10_0000_0003, 1]
        );
        // CFGI_ALL = CFGI_STE_RANGE with RANGE 31 (§4.3.2).
        assert_eq!(Command::CfgiAll.encode().unwrap(), [0x04, 31]);
        // CFGI_CD: SSID [31:12].
        assert_eq!(
            Command::CfgiCd {
                sid: 2,
                ssid: 5,
                leaf: false
            }
            .encode()
            .unwrap(),
            [0x2_0000_5005, 0]
        );
        // CMD_SYNC with CS = SEV (§4.7.3: CS [13:12]).
        assert_eq!(
            Command::Sync {
                signal: SyncSignal::Sev
            }
            .encode()
            .unwrap(),
            [0x2046, 0]
        );
        assert_eq!(Command::TlbiNsnhAll.encode().unwrap(), [0x30, 0]);
        assert_eq!(
            Command::PrefetchConfig { sid: 3 }.encode().unwrap(),
            [0x3_0000_0001, 0]
        );
    }

    #[test]
    fn reserved_range_encoding_is_refused_both_ways() {
        assert_eq!(
            TlbiRange::new(Granule::K4, 0, 0, 0),
            Err(CommandError::ReservedRangeEncoding)
        );
        // NUM = SCALE = 0 is fine with a TTL hint (a one-page invalidation at a known level).
        assert!(TlbiRange::new(Granule::K4, 0, 0, 3).is_ok());
        // A hand-made raw command with TG = 1 and nothing else decodes to an error (CERROR_ILL).
        let raw = [u64::from(opcode::TLBI_NH_VA), 0x1000 | 1 << 10];
        assert_eq!(
            Command::decode(raw),
            Err(CommandError::ReservedRangeEncoding)
        );
        // And a public-field struct bypassing the constructor cannot be encoded either.
        let sneaky = TlbiRange {
            tg: Granule::K4,
            num: 0,
            scale: 0,
            ttl: 0,
        };
        let cmd = Command::TlbiNhVa(TlbiVa {
            vmid: 0,
            asid: 0,
            addr: VirtAddr(0),
            leaf: false,
            range: Some(sneaky),
        });
        assert_eq!(cmd.encode(), Err(CommandError::ReservedRangeEncoding));
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let cmd = Command::TlbiNhVa(TlbiVa {
            vmid: 0,
            asid: 0,
            addr: VirtAddr(0x1234),
            leaf: false,
            range: None,
        });
        assert_eq!(cmd.encode(), Err(CommandError::MisalignedAddress(0x1234)));
        assert!(matches!(
            TlbiRange::new(Granule::K4, 32, 0, 0),
            Err(CommandError::FieldOutOfRange { field: "NUM", .. })
        ));
        assert!(matches!(
            Command::CfgiCd {
                sid: 0,
                ssid: 1 << 20,
                leaf: false
            }
            .encode(),
            Err(CommandError::FieldOutOfRange { field: "SSID", .. })
        ));
        assert_eq!(
            Command::decode([0x7f, 0]),
            Err(CommandError::UnknownOpcode(0x7f))
        );
        assert_eq!(
            Command::decode([0x03 | SSEC.flag(true), 0]),
            Err(CommandError::SecureCommand)
        );
        assert!(format!("{}", CommandError::UnknownOpcode(0x7f)).contains("0x7f"));
    }

    fn arb_range() -> impl Strategy<Value = Option<TlbiRange>> {
        prop_oneof![
            Just(None),
            (0u8..3, 0u8..=31, 0u8..=31, 0u8..=3)
                .prop_filter("reserved", |(_, n, s, t)| *n != 0 || *s != 0 || *t != 0)
                .prop_map(|(g, num, scale, ttl)| {
                    let tg = [Granule::K4, Granule::K16, Granule::K64][g as usize];
                    Some(TlbiRange::new(tg, num, scale, ttl).unwrap())
                }),
        ]
    }

    fn arb_va() -> impl Strategy<Value = TlbiVa> {
        (
            any::<u16>(),
            any::<u16>(),
            any::<u64>(),
            any::<bool>(),
            arb_range(),
        )
            .prop_map(|(vmid, asid, addr, leaf, range)| TlbiVa {
                vmid,
                asid,
                addr: VirtAddr(addr & ADDR.in_place()),
                leaf,
                range,
            })
    }

    /// Any encodable command (also used by the model's independent decoder's tests).
    pub(crate) fn arb_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            any::<u32>().prop_map(|sid| Command::PrefetchConfig { sid }),
            (any::<u32>(), any::<bool>()).prop_map(|(sid, leaf)| Command::CfgiSte { sid, leaf }),
            (any::<u32>(), 0u8..31).prop_map(|(sid, range)| Command::CfgiSteRange { sid, range }),
            Just(Command::CfgiAll),
            (any::<u32>(), 0u32..(1 << 20), any::<bool>())
                .prop_map(|(sid, ssid, leaf)| Command::CfgiCd { sid, ssid, leaf }),
            any::<u32>().prop_map(|sid| Command::CfgiCdAll { sid }),
            any::<u16>().prop_map(|vmid| Command::TlbiNhAll { vmid }),
            (any::<u16>(), any::<u16>())
                .prop_map(|(vmid, asid)| Command::TlbiNhAsid { vmid, asid }),
            arb_va().prop_map(Command::TlbiNhVa),
            arb_va().prop_map(|v| Command::TlbiNhVaa(TlbiVa { asid: 0, ..v })),
            Just(Command::TlbiNsnhAll),
            prop_oneof![
                Just(SyncSignal::None),
                Just(SyncSignal::Irq),
                Just(SyncSignal::Sev)
            ]
            .prop_map(|signal| Command::Sync { signal }),
        ]
    }

    proptest! {
        #[test]
        fn every_command_round_trips(cmd in arb_command()) {
            let words = cmd.encode().unwrap();
            prop_assert_eq!(OP.get(words[0]), u64::from(cmd.opcode()));
            prop_assert_eq!(Command::decode(words), Ok(cmd));
        }
    }

    /// Found by the `smmu_codec` fuzz target: these encoded, but decoded to something else.
    #[test]
    fn encode_refuses_what_would_not_decode_back() {
        let vaa = Command::TlbiNhVaa(TlbiVa {
            vmid: 0,
            asid: 1,
            addr: VirtAddr(0x1000),
            leaf: false,
            range: None,
        });
        assert!(matches!(
            vaa.encode(),
            Err(CommandError::FieldOutOfRange { max: 0, .. })
        ));
        // RANGE = 31 is CMD_CFGI_ALL, a command of its own.
        let all = Command::CfgiSteRange { sid: 0, range: 31 };
        assert!(matches!(
            all.encode(),
            Err(CommandError::FieldOutOfRange { max: 30, .. })
        ));
        let range = Command::CfgiSteRange { sid: 0, range: 30 };
        assert_eq!(Command::decode(range.encode().unwrap()), Ok(range));
    }

    #[test]
    fn counts_by_kind() {
        let mut c = CommandCounts::default();
        c.add_all(&[
            Command::SYNC,
            Command::TlbiNsnhAll,
            Command::TlbiNhAsid { vmid: 0, asid: 1 },
        ]);
        assert_eq!(c.total(), 3);
        assert_eq!(c.tlbi(), 2);
        assert_eq!(c.get(CommandKind::Sync), 1);
        assert_eq!(
            format!("{c}"),
            "TLBI_NH_ASID x1, TLBI_NSNH_ALL x1, CMD_SYNC x1"
        );
    }
}
