//! Event records: the 32-byte entries the SMMU writes to the event queue.
//!
//! Source: Arm SMMUv3 specification §7.3 "Event records" (common fields and per-event layouts,
//! §7.3.2–§7.3.20 for the event numbers) and §7.4 "Event queue overflow". The layout agrees
//! with QEMU's `smmuv3_record_event()` (facts §3.5): type in bits `[7:0]`, SSV bit 11, SSID
//! `[31:12]`, StreamID `[63:32]`; STAG `[79:64]`, Stall bit 95; PnU bit 97, InD bit 98, RnW bit 99,
//! S2 bit 103, CLASS `[105:104]`; InputAddr `[191:128]`; IPA/FetchAddr `[255:192]`.

use core::fmt;

use crate::iommu::spec::bits::Field;

/// Size of one event record in bytes.
pub const EVENT_SIZE: usize = 32;
/// Number of 64-bit words in an event record.
pub const EVENT_WORDS: usize = EVENT_SIZE / 8;

// dword 0
const TYPE: Field = Field::bits(7, 0);
const SSV: Field = Field::bit(11);
const SSID: Field = Field::bits(31, 12);
const SID: Field = Field::bits(63, 32);
// dword 1
const STAG: Field = Field::bits(15, 0);
const STALL: Field = Field::bit(31);
const PNU: Field = Field::bit(33);
const IND: Field = Field::bit(34);
const RNW: Field = Field::bit(35);
const S2: Field = Field::bit(39);
const CLASS: Field = Field::bits(41, 40);

/// The event number (§7.3, first column of each event's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// 0x01 F_UUT: unsupported upstream transaction.
    Uut,
    /// 0x02 C_BAD_STREAMID: StreamID beyond the stream table.
    BadStreamId,
    /// 0x03 F_STE_FETCH: the STE fetch aborted.
    SteFetch,
    /// 0x04 C_BAD_STE: the STE is invalid or ILLEGAL.
    BadSte,
    /// 0x05 F_BAD_ATS_TREQ.
    BadAtsTreq,
    /// 0x06 F_STREAM_DISABLED: non-substream traffic disabled by S1DSS.
    StreamDisabled,
    /// 0x07 F_TRANSL_FORBIDDEN.
    TranslForbidden,
    /// 0x08 C_BAD_SUBSTREAMID.
    BadSubstreamId,
    /// 0x09 F_CD_FETCH: the CD fetch aborted.
    CdFetch,
    /// 0x0A C_BAD_CD: the CD is invalid or ILLEGAL.
    BadCd,
    /// 0x0B F_WALK_EABT: a translation-table fetch aborted.
    WalkEabt,
    /// 0x10 F_TRANSLATION: no valid translation (invalid descriptor, address out of range,
    /// EPDx).
    Translation,
    /// 0x11 F_ADDR_SIZE: an output or table address beyond the output size.
    AddrSize,
    /// 0x12 F_ACCESS: access flag 0 (and AFFD = 0).
    Access,
    /// 0x13 F_PERMISSION: e.g. a write to a read-only page.
    Permission,
    /// 0x20 F_TLB_CONFLICT.
    TlbConflict,
    /// 0x21 F_CFG_CONFLICT.
    CfgConflict,
    /// 0x24 E_PAGE_REQUEST.
    PageRequest,
    /// 0x25 F_VMS_FETCH.
    VmsFetch,
    /// Anything else (IMPLEMENTATION DEFINED or newer than this code).
    Other(u8),
}

impl EventKind {
    /// Decodes an event number.
    pub const fn from_code(code: u8) -> Self {
        match code {
            0x01 => Self::Uut,
            0x02 => Self::BadStreamId,
            0x03 => Self::SteFetch,
            0x04 => Self::BadSte,
            0x05 => Self::BadAtsTreq,
            0x06 => Self::StreamDisabled,
            0x07 => Self::TranslForbidden,
            0x08 => Self::BadSubstreamId,
            0x09 => Self::CdFetch,
            0x0a => Self::BadCd,
            0x0b => Self::WalkEabt,
            0x10 => Self::Translation,
            0x11 => Self::AddrSize,
            0x12 => Self::Access,
            0x13 => Self::Permission,
            0x20 => Self::TlbConflict,
            0x21 => Self::CfgConflict,
            0x24 => Self::PageRequest,
            0x25 => Self::VmsFetch,
            other => Self::Other(other),
        }
    }

    /// The event number.
    pub const fn code(self) -> u8 {
        match self {
            Self::Uut => 0x01,
            Self::BadStreamId => 0x02,
            Self::SteFetch => 0x03,
            Self::BadSte => 0x04,
            Self::BadAtsTreq => 0x05,
            Self::StreamDisabled => 0x06,
            Self::TranslForbidden => 0x07,
            Self::BadSubstreamId => 0x08,
            Self::CdFetch => 0x09,
            Self::BadCd => 0x0a,
            Self::WalkEabt => 0x0b,
            Self::Translation => 0x10,
            Self::AddrSize => 0x11,
            Self::Access => 0x12,
            Self::Permission => 0x13,
            Self::TlbConflict => 0x20,
            Self::CfgConflict => 0x21,
            Self::PageRequest => 0x24,
            Self::VmsFetch => 0x25,
            Self::Other(c) => c,
        }
    }

    /// The architectural name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Uut => "F_UUT",
            Self::BadStreamId => "C_BAD_STREAMID",
            Self::SteFetch => "F_STE_FETCH",
            Self::BadSte => "C_BAD_STE",
            Self::BadAtsTreq => "F_BAD_ATS_TREQ",
            Self::StreamDisabled => "F_STREAM_DISABLED",
            Self::TranslForbidden => "F_TRANSL_FORBIDDEN",
            Self::BadSubstreamId => "C_BAD_SUBSTREAMID",
            Self::CdFetch => "F_CD_FETCH",
            Self::BadCd => "C_BAD_CD",
            Self::WalkEabt => "F_WALK_EABT",
            Self::Translation => "F_TRANSLATION",
            Self::AddrSize => "F_ADDR_SIZE",
            Self::Access => "F_ACCESS",
            Self::Permission => "F_PERMISSION",
            Self::TlbConflict => "F_TLB_CONFLICT",
            Self::CfgConflict => "F_CFG_CONFLICT",
            Self::PageRequest => "E_PAGE_REQUEST",
            Self::VmsFetch => "F_VMS_FETCH",
            Self::Other(_) => "unknown event",
        }
    }

    /// True for the translation faults that carry InputAddr, RnW and CLASS.
    pub const fn is_translation_fault(self) -> bool {
        matches!(
            self,
            Self::WalkEabt | Self::Translation | Self::AddrSize | Self::Access | Self::Permission
        )
    }
}

/// The direction of the faulting transaction (the RnW field: 1 = read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessKind {
    Read,
    Write,
}

/// Which part of the translation faulted (the CLASS field, §7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultClass {
    /// 0b00: CD fetch.
    Cd,
    /// 0b01: stage-1 translation table fetch.
    TableWalk,
    /// 0b10: the input address itself.
    Input,
    /// 0b11: reserved.
    Reserved,
}

impl FaultClass {
    const fn bits(self) -> u64 {
        match self {
            Self::Cd => 0,
            Self::TableWalk => 1,
            Self::Input => 2,
            Self::Reserved => 3,
        }
    }

    const fn from_bits(b: u64) -> Self {
        match b & 3 {
            0 => Self::Cd,
            1 => Self::TableWalk,
            2 => Self::Input,
            _ => Self::Reserved,
        }
    }
}

/// A decoded event record.
///
/// Fields that a given event does not define are RES0 in the record and decode as zero/false.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventRecord {
    pub kind: EventKind,
    pub sid: u32,
    /// The SubstreamID when SSV = 1.
    pub ssid: Option<u32>,
    /// RnW, meaningful for translation faults.
    pub access: AccessKind,
    /// Privileged (PnU = 1).
    pub privileged: bool,
    /// Instruction fetch (InD = 1).
    pub instruction: bool,
    /// Fault at stage 2.
    pub stage2: bool,
    pub class: FaultClass,
    pub stall: bool,
    pub stag: u16,
    /// The input address of the faulting transaction (a VA for stage-1 faults).
    pub input_addr: u64,
    /// IPA for stage-2 faults, FetchAddr for F_*_FETCH / F_WALK_EABT.
    pub addr2: u64,
}

impl EventRecord {
    /// A record of `kind` for `sid` with every other field zero.
    pub const fn new(kind: EventKind, sid: u32) -> Self {
        Self {
            kind,
            sid,
            ssid: None,
            access: AccessKind::Write,
            privileged: false,
            instruction: false,
            stage2: false,
            class: FaultClass::Cd,
            stall: false,
            stag: 0,
            input_addr: 0,
            addr2: 0,
        }
    }

    /// Decodes a 32-byte record.
    pub fn decode(words: [u64; EVENT_WORDS]) -> Self {
        let [w0, w1, w2, w3] = words;
        Self {
            kind: EventKind::from_code(TYPE.get(w0) as u8),
            sid: SID.get(w0) as u32,
            ssid: SSV.is_set(w0).then_some(SSID.get(w0) as u32),
            access: if RNW.is_set(w1) {
                AccessKind::Read
            } else {
                AccessKind::Write
            },
            privileged: PNU.is_set(w1),
            instruction: IND.is_set(w1),
            stage2: S2.is_set(w1),
            class: FaultClass::from_bits(CLASS.get(w1)),
            stall: STALL.is_set(w1),
            stag: STAG.get(w1) as u16,
            input_addr: w2,
            addr2: w3,
        }
    }

    /// Encodes the record (what the SMMU model writes into the event queue).
    pub fn encode(&self) -> [u64; EVENT_WORDS] {
        let ssid = match self.ssid {
            Some(s) => SSV.flag(true) | SSID.put(s.into()),
            None => 0,
        };
        let w0 = TYPE.put(self.kind.code().into()) | ssid | SID.put(self.sid.into());
        let w1 = STAG.put(self.stag.into())
            | STALL.flag(self.stall)
            | PNU.flag(self.privileged)
            | IND.flag(self.instruction)
            | RNW.flag(self.access == AccessKind::Read)
            | S2.flag(self.stage2)
            | CLASS.put(self.class.bits());
        [w0, w1, self.input_addr, self.addr2]
    }
}

impl fmt::Display for EventRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:#04x}) sid={:#x}",
            self.kind.name(),
            self.kind.code(),
            self.sid
        )?;
        if let Some(ssid) = self.ssid {
            write!(f, " ssid={ssid:#x}")?;
        }
        if self.kind.is_translation_fault() {
            let dir = match self.access {
                AccessKind::Read => "read",
                AccessKind::Write => "write",
            };
            write!(
                f,
                " addr={:#x} {dir} class={:?}",
                self.input_addr, self.class
            )?;
        }
        if matches!(
            self.kind,
            EventKind::SteFetch | EventKind::CdFetch | EventKind::WalkEabt
        ) {
            write!(f, " fetch={:#x}", self.addr2)?;
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_translation_fault() {
        // An F_TRANSLATION for SID 0x10, read of VA 0x100000, CLASS = IN, as QEMU writes it.
        let words = [0x10_0000_0010, 1 << 35 | 2 << 40, 0x10_0000, 0];
        let ev = EventRecord::decode(words);
        assert_eq!(ev.kind, EventKind::Translation);
        assert_eq!(ev.sid, 0x10);
        assert_eq!(ev.access, AccessKind::Read);
        assert_eq!(ev.class, FaultClass::Input);
        assert_eq!(ev.input_addr, 0x10_0000);
        assert_eq!(ev.ssid, None);
        assert_eq!(ev.encode(), words);
        assert_eq!(
            format!("{ev}"),
            "F_TRANSLATION (0x10) sid=0x10 addr=0x100000 read class=Input"
        );
    }

    #[test]
    fn every_listed_code_round_trips() {
        for code in 0..=255u8 {
            assert_eq!(EventKind::from_code(code).code(), code);
        }
        assert_eq!(EventKind::from_code(0x13), EventKind::Permission);
        assert_eq!(EventKind::from_code(0x04), EventKind::BadSte);
        assert_eq!(EventKind::from_code(0x0a), EventKind::BadCd);
        assert_eq!(EventKind::from_code(0x02), EventKind::BadStreamId);
        assert_eq!(EventKind::from_code(0x06), EventKind::StreamDisabled);
        assert_eq!(EventKind::from_code(0x12), EventKind::Access);
        assert_eq!(EventKind::from_code(0x11), EventKind::AddrSize);
    }

    proptest! {
        #[test]
        fn records_round_trip(code in any::<u8>(), sid in any::<u32>(), ssid in proptest::option::of(0u32..(1 << 20)),
                              read in any::<bool>(), pnu in any::<bool>(), ind in any::<bool>(),
                              s2 in any::<bool>(), class in 0u64..4, stall in any::<bool>(),
                              stag in any::<u16>(), a in any::<u64>(), b in any::<u64>()) {
            let ev = EventRecord {
                kind: EventKind::from_code(code),
                sid,
                ssid,
                access: if read { AccessKind::Read } else { AccessKind::Write },
                privileged: pnu,
                instruction: ind,
                stage2: s2,
                class: FaultClass::from_bits(class),
                stall,
                stag,
                input_addr: a,
                addr2: b,
            };
            prop_assert_eq!(EventRecord::decode(ev.encode()), ev);
        }
    }
}
