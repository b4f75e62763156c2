//! The model's own decoder of raw commands, STEs and CDs, written from the SMMUv3 tables
//! (Arm IHI 0070: §4 command formats, §5.2 STE, §5.4 CD) without the driver's encoders
//! (`command.rs`, `ste.rs`, `cd.rs`). If the driver put a field in the wrong place, decoding it
//! with the driver's own layout would cancel the bug out; here it shows as a different command
//! or configuration. The results use the driver's plain data types only so the two can be
//! compared in tests.

use core::fmt;

use crate::iommu::spec::cd::{BadCd, CdGranule, Stage1Config};
use crate::iommu::spec::command::{Command, Granule, SyncSignal, TlbiRange, TlbiVa};
use crate::iommu::spec::regs;
use crate::iommu::spec::ste::{BadSte, DecodedSte, StreamConfig};
use crate::mm::{PhysAddr, VirtAddr};

/// Bits `[hi:lo]` of `word`, as the spec's tables write them.
const fn field(word: u64, hi: u32, lo: u32) -> u64 {
    (word >> lo) & (u64::MAX >> (63 - (hi - lo)))
}

const fn bit(word: u64, n: u32) -> bool {
    field(word, n, n) != 0
}

/// `word` with everything outside `[hi:lo]` cleared, in place (address fields).
const fn in_place(word: u64, hi: u32, lo: u32) -> u64 {
    field(word, hi, lo) << lo
}

/// Why a command is illegal (every case is CERROR_ILL, §4.1.1 / §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IllegalCommand {
    /// An opcode the model does not implement.
    Opcode(u8),
    /// SSec = 1 on the Non-secure command queue (§4.3: CFGI_* "SSec" field).
    Secure,
    /// A range TLBI with TG != 0 and NUM = SCALE = TTL = 0 (§4.4.1.1).
    ReservedRange,
    /// CMD_SYNC with CS = 0b11 (§4.7.3).
    ReservedSyncSignal,
}

impl fmt::Display for IllegalCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Opcode(op) => write!(f, "opcode {op:#04x} not implemented"),
            Self::Secure => f.write_str("SSec = 1 on the Non-secure queue"),
            Self::ReservedRange => f.write_str("range TLBI with NUM = SCALE = TTL = 0"),
            Self::ReservedSyncSignal => f.write_str("CMD_SYNC with CS = 0b11"),
        }
    }
}

// Opcodes, §4.1.1 (Table "Command opcodes").
const OP_PREFETCH_CONFIG: u8 = 0x01;
const OP_CFGI_STE: u8 = 0x03;
const OP_CFGI_STE_RANGE: u8 = 0x04;
const OP_CFGI_CD: u8 = 0x05;
const OP_CFGI_CD_ALL: u8 = 0x06;
const OP_TLBI_NH_ALL: u8 = 0x10;
const OP_TLBI_NH_ASID: u8 = 0x11;
const OP_TLBI_NH_VA: u8 = 0x12;
const OP_TLBI_NH_VAA: u8 = 0x13;
const OP_TLBI_NSNH_ALL: u8 = 0x30;
const OP_SYNC: u8 = 0x46;
/// §4.3.2: CMD_CFGI_STE_RANGE with Range = 31 is CMD_CFGI_ALL.
const RANGE_ALL: u64 = 31;

/// Decodes one command-queue entry.
pub fn command(words: [u64; 2]) -> Result<Command, IllegalCommand> {
    let [w0, w1] = words;
    let op = field(w0, 7, 0) as u8; // §4.1.1 Opcode [7:0]
    let sid = field(w0, 63, 32) as u32; // §4.3.1-4 StreamID [63:32]
    let leaf = bit(w1, 0); // §4.3.1, §4.3.3, §4.4.1 Leaf: dword 1 bit 0
    let is_cfgi = matches!(
        op,
        OP_CFGI_STE | OP_CFGI_STE_RANGE | OP_CFGI_CD | OP_CFGI_CD_ALL
    );
    if is_cfgi && bit(w0, 10) {
        return Err(IllegalCommand::Secure); // §4.3 SSec, bit 10
    }
    let vmid = field(w0, 47, 32) as u16; // §4.4.2 VMID [47:32]
    let asid = field(w0, 63, 48) as u16; // §4.4.2 ASID [63:48]
    Ok(match op {
        OP_PREFETCH_CONFIG => Command::PrefetchConfig { sid },
        OP_CFGI_STE => Command::CfgiSte { sid, leaf },
        OP_CFGI_STE_RANGE => match field(w1, 4, 0) {
            // §4.3.2 Range, dword 1 [4:0]
            RANGE_ALL => Command::CfgiAll,
            range => Command::CfgiSteRange {
                sid,
                range: range as u8,
            },
        },
        OP_CFGI_CD => Command::CfgiCd {
            sid,
            ssid: field(w0, 31, 12) as u32, // §4.3.3 SubstreamID [31:12]
            leaf,
        },
        OP_CFGI_CD_ALL => Command::CfgiCdAll { sid },
        OP_TLBI_NH_ALL => Command::TlbiNhAll { vmid },
        OP_TLBI_NH_ASID => Command::TlbiNhAsid { vmid, asid },
        OP_TLBI_NH_VA => Command::TlbiNhVa(tlbi_va(w0, w1, asid)?),
        // §4.4.2.3: TLBI_NH_VAA has no ASID field.
        OP_TLBI_NH_VAA => Command::TlbiNhVaa(tlbi_va(w0, w1, 0)?),
        OP_TLBI_NSNH_ALL => Command::TlbiNsnhAll,
        OP_SYNC => Command::Sync {
            // §4.7.3 CS [13:12]: 0b00 none, 0b01 IRQ/MSI, 0b10 SEV, 0b11 reserved.
            signal: match field(w0, 13, 12) {
                0b00 => SyncSignal::None,
                0b01 => SyncSignal::Irq,
                0b10 => SyncSignal::Sev,
                _ => return Err(IllegalCommand::ReservedSyncSignal),
            },
        },
        other => return Err(IllegalCommand::Opcode(other)),
    })
}

/// The address part of TLBI_NH_VA/VAA (§4.4.1.1, §4.4.2.3-4).
fn tlbi_va(w0: u64, w1: u64, asid: u16) -> Result<TlbiVa, IllegalCommand> {
    // TG, dword 1 [11:10]: 0 = no range (NUM, SCALE, TTL ignored), 1/2/3 = 4K/16K/64K.
    let tg = match field(w1, 11, 10) {
        0 => None,
        1 => Some(Granule::K4),
        2 => Some(Granule::K16),
        _ => Some(Granule::K64),
    };
    let range = match tg {
        None => None,
        Some(tg) => {
            let num = field(w0, 16, 12) as u8; // NUM [16:12]
            let scale = field(w0, 24, 20) as u8; // SCALE [24:20]
            let ttl = field(w1, 9, 8) as u8; // TTL, dword 1 [9:8]
            if num == 0 && scale == 0 && ttl == 0 {
                return Err(IllegalCommand::ReservedRange);
            }
            Some(TlbiRange {
                tg,
                num,
                scale,
                ttl,
            })
        }
    };
    Ok(TlbiVa {
        vmid: field(w0, 47, 32) as u16,
        asid,
        addr: VirtAddr(in_place(w1, 63, 12)), // Address, dword 1 [63:12]
        leaf: bit(w1, 0),
        range,
    })
}

/// Decodes a stream table entry (§5.2) for an SMMU with `oas_bits` of output address, stage 1
/// only, no substreams and no stall model; the rejected cases are C_BAD_STE (§5.2 "STE
/// validity").
pub fn ste(words: &[u64; 8], oas_bits: u8) -> Result<DecodedSte, BadSte> {
    let [w0, w1, w2, ..] = *words;
    if !bit(w0, 0) {
        return Err(BadSte::Invalid); // V, bit 0
    }
    let s2vmid = field(w2, 15, 0) as u16; // S2VMID, dword 2 [15:0]
                                          // Config [3:1]: 0b000 abort, 0b100 bypass, 0b101 stage 1, 0b11x with stage 2.
    let config = match field(w0, 3, 1) {
        0b000 => StreamConfig::Abort,
        c @ 0b001..=0b011 => return Err(BadSte::ReservedConfig(c as u8)),
        0b100 => StreamConfig::Bypass,
        0b101 => {
            let cdmax = field(w0, 63, 59) as u8; // S1CDMax [63:59]
            if cdmax != 0 {
                return Err(BadSte::Substreams(cdmax)); // SMMU_IDR1.SSIDSIZE = 0
            }
            if bit(w1, 27) {
                return Err(BadSte::StallDisable); // S1STALLD, dword 1 bit 27
            }
            let cd = in_place(w0, 51, 6); // S1ContextPtr [51:6]
            if cd >> oas_bits != 0 {
                return Err(BadSte::ContextPtrOutOfRange(cd));
            }
            StreamConfig::Stage1 { cd: PhysAddr(cd) }
        }
        _ => return Err(BadSte::Stage2NotSupported),
    };
    Ok(DecodedSte { config, s2vmid })
}

/// TG0 (§5.4, CD dword 0 [7:6]): 0b00 4K, 0b01 64K, 0b10 16K.
fn tg0(v: u64) -> Option<CdGranule> {
    match v {
        0b00 => Some(CdGranule::K4),
        0b01 => Some(CdGranule::K64),
        0b10 => Some(CdGranule::K16),
        _ => None,
    }
}

/// TG1 (§5.4, CD dword 0 [23:22]): 0b01 16K, 0b10 4K, 0b11 64K (a different encoding).
fn tg1(v: u64) -> Option<CdGranule> {
    match v {
        0b01 => Some(CdGranule::K16),
        0b10 => Some(CdGranule::K4),
        0b11 => Some(CdGranule::K64),
        _ => None,
    }
}

/// Decodes and validates a context descriptor (§5.4) for an SMMU with `smmu_oas_bits` of
/// output address, TERM_MODEL = 1, no stall model and no HTTU; the rejected cases are C_BAD_CD
/// (§5.4.1 "Validity of CD").
pub fn cd(words: &[u64; 8], smmu_oas_bits: u8) -> Result<Stage1Config, BadCd> {
    let [w0, w1, w2, ..] = *words;
    if !bit(w0, 31) {
        return Err(BadCd::Invalid); // V, bit 31
    }
    if !bit(w0, 41) {
        return Err(BadCd::NotAArch64); // AA64, bit 41
    }
    if !bit(w0, 46) {
        return Err(BadCd::AbortDisabled); // A, bit 46: must be 1 with TERM_MODEL = 1
    }
    if bit(w0, 44) {
        return Err(BadCd::StallUnsupported); // S, bit 44
    }
    if bit(w0, 42) || bit(w0, 43) {
        return Err(BadCd::HttuUnsupported); // HD bit 42, HA bit 43
    }
    let endi = bit(w0, 15); // ENDI, bit 15: big-endian tables are not supported
                            // IPS [34:32], capped at the SMMU's OAS (§3.4.3); encodings above 52 bits act as 52.
    let ips = field(w0, 34, 32) as u8;
    let mut oas_bits = regs::oas_bits(ips.min(6)).unwrap_or(52).min(smmu_oas_bits);
    let epd0 = bit(w0, 14); // EPD0, bit 14
    let epd1 = bit(w0, 30); // EPD1, bit 30
    let t0sz = field(w0, 5, 0) as u8; // T0SZ [5:0]
    let halves = [
        (epd0, t0sz, tg0(field(w0, 7, 6)), in_place(w1, 51, 4)), // TTB0, dword 1 [51:4]
        (
            epd1,
            field(w0, 21, 16) as u8,
            tg1(field(w0, 23, 22)),
            in_place(w2, 51, 4),
        ),
    ];
    let mut granule0 = CdGranule::K4;
    for (table, (disabled, tsz, granule, ttb)) in (0u8..).zip(halves) {
        if disabled {
            continue;
        }
        if !(16..=39).contains(&tsz) {
            return Err(BadCd::InputSize { table, tsz });
        }
        let granule = match granule {
            Some(g) if !endi => g,
            _ => return Err(BadCd::Granule { table }),
        };
        // §3.4.3: only the 64 KiB granule reaches beyond 48 bits.
        if granule != CdGranule::K64 {
            oas_bits = oas_bits.min(48);
        }
        if ttb >> oas_bits != 0 {
            return Err(BadCd::TableOutOfRange {
                table,
                ttb,
                oas_bits,
            });
        }
        if table == 0 {
            granule0 = granule;
        }
    }
    Ok(Stage1Config {
        asid: field(w0, 63, 48) as u16, // ASID [63:48]
        ttb0: (!epd0).then_some(PhysAddr(in_place(w1, 51, 4))),
        t0sz,
        granule: granule0,
        oas_bits,
        affd: bit(w0, 35),          // AFFD, bit 35
        had0: bit(w1, 1),           // HAD0, dword 1 bit 1
        record_faults: bit(w0, 45), // R, bit 45
        ttb1_disabled: epd1,
        tbi0: field(w0, 39, 38) & 1 != 0, // TBI [39:38], bit 38 for TTB0
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::iommu::spec::cd::{CdFields, ContextDescriptor};
    use crate::iommu::spec::command::tests::arb_command;
    use crate::iommu::spec::ste::Ste;

    /// Commands and their words, written by hand from the §4 tables (not from an encoder).
    fn golden_commands() -> [([u64; 2], Command); 12] {
        let va = |vmid, asid, addr, leaf, range| TlbiVa {
            vmid,
            asid,
            addr: VirtAddr(addr),
            leaf,
            range,
        };
        [
            // TLBI_NH_VA, ASID 1, VA 0x100000, Leaf: the command measured on QEMU.
            (
                [0x0001_0000_0000_0012, 0x10_0001],
                Command::TlbiNhVa(va(0, 1, 0x10_0000, true, None)),
            ),
            // Range: NUM 3 [16:12], SCALE 1 [24:20], VMID 7, ASID 0x1234; TTL 3, TG 1 (4K).
            (
                [0x1234_0007_0010_3012, 0x7f_0000_0000 | 0b01_11 << 8],
                Command::TlbiNhVa(va(
                    7,
                    0x1234,
                    0x7f_0000_0000,
                    false,
                    Some(TlbiRange {
                        tg: Granule::K4,
                        num: 3,
                        scale: 1,
                        ttl: 3,
                    }),
                )),
            ),
            (
                [0x0000_0002_0000_0013, 0x2000],
                Command::TlbiNhVaa(va(2, 0, 0x2000, false, None)),
            ),
            (
                [0xbeef_0002_0000_0011, 0],
                Command::TlbiNhAsid {
                    vmid: 2,
                    asid: 0xbeef,
                },
            ),
            ([0x0000_0003_0000_0010, 0], Command::TlbiNhAll { vmid: 3 }),
            ([0x30, 0], Command::TlbiNsnhAll),
            (
                [0x0000_0010_0000_0003, 1],
                Command::CfgiSte {
                    sid: 0x10,
                    leaf: true,
                },
            ),
            (
                [0x0000_0040_0000_0004, 3],
                Command::CfgiSteRange {
                    sid: 0x40,
                    range: 3,
                },
            ),
            ([0x04, 31], Command::CfgiAll),
            (
                [0x0000_0005_0012_3005, 0],
                Command::CfgiCd {
                    sid: 5,
                    ssid: 0x123,
                    leaf: false,
                },
            ),
            ([0x0000_0009_0000_0006, 0], Command::CfgiCdAll { sid: 9 }),
            (
                [0x2046, 0],
                Command::Sync {
                    signal: SyncSignal::Sev,
                },
            ),
        ]
    }

    #[test]
    fn golden_commands_decode_and_the_driver_agrees() {
        for (words, cmd) in golden_commands() {
            assert_eq!(command(words), Ok(cmd), "{words:#x?}");
            assert_eq!(cmd.encode(), Ok(words), "driver encoding of {cmd:?}");
            assert_eq!(Command::decode(words), Ok(cmd), "driver decoding");
        }
    }

    #[test]
    fn illegal_commands() {
        for (words, why) in [
            ([0x03 | 1 << 10, 0], IllegalCommand::Secure),
            ([0x05 | 1 << 10, 0], IllegalCommand::Secure),
            ([0x12, 0x1000 | 1 << 10], IllegalCommand::ReservedRange),
            ([0x46 | 3 << 12, 0], IllegalCommand::ReservedSyncSignal),
            ([0x7f, 0], IllegalCommand::Opcode(0x7f)),
            ([0x40, 0], IllegalCommand::Opcode(0x40)), // ATC_INV: no ATS here
        ] {
            assert_eq!(command(words), Err(why), "{words:#x?}");
            assert!(
                Command::decode(words).is_err(),
                "driver accepts {words:#x?}"
            );
        }
        // With TG = 0 the range fields are ignored (§4.4.1.1), so this is legal.
        assert!(command([0x12 | 5 << 12, 0x1000]).is_ok());
    }

    #[test]
    fn golden_stes() {
        // Stage 1 as QEMU accepted it: CD address | Config 0b101 | V; S2VMID 0x42.
        let mut w = [0u64; 8];
        w[0] = 0x4010_2000 | 0b1011;
        w[2] = 0x42;
        let want = DecodedSte {
            config: StreamConfig::Stage1 {
                cd: PhysAddr(0x4010_2000),
            },
            s2vmid: 0x42,
        };
        assert_eq!(ste(&w, 44), Ok(want));
        let with = |w0: u64, w1: u64| {
            let mut w = [0u64; 8];
            w[0] = w0;
            w[1] = w1;
            ste(&w, 44)
        };
        assert_eq!(with(0b0001, 0).map(|s| s.config), Ok(StreamConfig::Abort));
        assert_eq!(with(0b1001, 0).map(|s| s.config), Ok(StreamConfig::Bypass));
        assert_eq!(with(0b1010, 0), Err(BadSte::Invalid));
        assert_eq!(with(0b0101, 0), Err(BadSte::ReservedConfig(0b010)));
        assert_eq!(with(0b1101, 0), Err(BadSte::Stage2NotSupported));
        assert_eq!(with(0b1011 | 3 << 59, 0), Err(BadSte::Substreams(3)));
        assert_eq!(with(0b1011, 1 << 27), Err(BadSte::StallDisable));
        assert_eq!(
            with(0b1011 | 1 << 45, 0),
            Err(BadSte::ContextPtrOutOfRange(1 << 45))
        );
        // The driver's encoder agrees.
        assert_eq!(
            ste(&Ste::stage1(PhysAddr(0x4010_2000)).unwrap().0, 44),
            Ok(DecodedSte { s2vmid: 0, ..want })
        );
    }

    /// The CD QEMU accepted: T0SZ 25, EPD1, V, IPS 2 (40 bits), AA64, R, A, ASID 1.
    const GOLDEN_CD0: u64 = 0x0001_6202_c000_0019;

    fn cd_words(w0: u64, ttb0: u64) -> [u64; 8] {
        let mut w = [0u64; 8];
        w[0] = w0;
        w[1] = ttb0;
        w
    }

    #[test]
    fn golden_cds() {
        let want = Stage1Config {
            asid: 1,
            ttb0: Some(PhysAddr(0x4020_0000)),
            t0sz: 25,
            granule: CdGranule::K4,
            oas_bits: 40,
            affd: false,
            had0: false,
            record_faults: true,
            ttb1_disabled: true,
            tbi0: false,
        };
        assert_eq!(cd(&cd_words(GOLDEN_CD0, 0x4020_0000), 44), Ok(want));
        // HAD0 is dword 1 bit 1, below TTB0 [51:4].
        let had0 = cd(&cd_words(GOLDEN_CD0, 0x4020_0002), 44).unwrap();
        assert_eq!((had0.had0, had0.ttb0), (true, want.ttb0));
        let fields = CdFields::sva(1, PhysAddr(0x4020_0000), 39, 2, 0).unwrap();
        assert_eq!(
            ContextDescriptor::encode(&fields).0[0] & !(1 << 47 | 0xff << 8),
            GOLDEN_CD0,
            "the driver's CD is the golden one apart from ASET and cacheability"
        );
        let bad = |w0: u64, ttb0: u64| cd(&cd_words(w0, ttb0), 44);
        assert_eq!(bad(GOLDEN_CD0 & !(1 << 31), 0), Err(BadCd::Invalid));
        assert_eq!(bad(GOLDEN_CD0 & !(1 << 41), 0), Err(BadCd::NotAArch64));
        assert_eq!(bad(GOLDEN_CD0 & !(1 << 46), 0), Err(BadCd::AbortDisabled));
        assert_eq!(bad(GOLDEN_CD0 | 1 << 44, 0), Err(BadCd::StallUnsupported));
        assert_eq!(bad(GOLDEN_CD0 | 1 << 43, 0), Err(BadCd::HttuUnsupported));
        assert_eq!(
            bad(GOLDEN_CD0 & !0x3f | 12, 0),
            Err(BadCd::InputSize { table: 0, tsz: 12 })
        );
        assert_eq!(
            bad(GOLDEN_CD0 | 0b11 << 6, 0),
            Err(BadCd::Granule { table: 0 })
        );
        assert_eq!(
            bad(GOLDEN_CD0 | 1 << 15, 0),
            Err(BadCd::Granule { table: 0 })
        );
        assert_eq!(
            bad(GOLDEN_CD0, 1 << 41),
            Err(BadCd::TableOutOfRange {
                table: 0,
                ttb: 1 << 41,
                oas_bits: 40
            })
        );
        // EPD0: TTB0 walks off, its fields unchecked.
        let quiet = cd(&cd_words(GOLDEN_CD0 & !0x3f | 1 << 14, 1 << 41), 44).unwrap();
        assert_eq!(quiet.ttb0, None);
        // EPD1 clear: the TTB1 half is checked with TG1's own encoding (0b10 = 4K).
        let both = (GOLDEN_CD0 & !(1 << 30)) | 25 << 16 | 0b10 << 22;
        assert!(cd(&cd_words(both, 0), 44).is_ok());
        assert_eq!(
            cd(&cd_words(both & !(0b11 << 22), 0), 44),
            Err(BadCd::Granule { table: 1 })
        );
    }

    /// Raw words biased towards the implemented opcodes.
    fn arb_words() -> impl Strategy<Value = [u64; 2]> {
        let ops = [
            0x01u64, 0x03, 0x04, 0x05, 0x06, 0x10, 0x11, 0x12, 0x13, 0x30, 0x46,
        ];
        (0..ops.len() + 1, any::<u64>(), any::<u64>()).prop_map(move |(i, w0, w1)| {
            let op = ops.get(i).copied().unwrap_or(w0 & 0xff);
            [(w0 & !0xff) | op, w1]
        })
    }

    proptest! {
        #[test]
        fn every_driver_command_decodes_to_itself(cmd in arb_command()) {
            prop_assert_eq!(command(cmd.encode().unwrap()), Ok(cmd));
        }

        #[test]
        fn the_two_command_decoders_agree(words in arb_words()) {
            prop_assert_eq!(command(words).ok(), Command::decode(words).ok());
        }

        #[test]
        fn the_two_ste_decoders_agree(w0 in any::<u64>(), w1 in any::<u64>(), w2 in any::<u64>(),
                                      small_ptr in any::<bool>(), config in 0u64..8) {
            // Make valid stage-1 STEs common: V set, a chosen Config, often S1CDMax = 0.
            let ptr_mask = if small_ptr { 0x0fff_ffc0 } else { u64::MAX << 6 };
            let w0 = (w0 & ptr_mask) | config << 1 | 1;
            let w1 = if small_ptr { w1 & !(1 << 27) } else { w1 };
            let words = [w0, w1, w2, 0, 0, 0, 0, 0];
            prop_assert_eq!(ste(&words, 44), Ste(words).decode(44));
        }

        #[test]
        fn the_two_cd_decoders_agree(w0 in any::<u64>(), w1 in any::<u64>(), w2 in any::<u64>(),
                                     tsz in 16u64..=39, legal in any::<bool>()) {
            // Half the time start from the golden CD so the validity checks pass.
            let w0 = if legal { (GOLDEN_CD0 & !0x3f) | tsz | (w0 & (1 << 35 | 3 << 38 | 0xffff << 48)) } else { w0 };
            // ...and keep TTB0 (and HAD0, bit 1) within a 40-bit output.
            let w1 = if legal { w1 & ((1 << 40) - 1) } else { w1 };
            let words = [w0, w1, w2, 0, 0, 0, 0, 0];
            let driver = ContextDescriptor(words).decode().validate(44);
            prop_assert_eq!(cd(&words, 44), driver);
        }
    }
}
