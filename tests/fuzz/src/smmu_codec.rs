//! Target `smmu_codec`: the SMMUv3 command, event, STE and CD encoders and decoders.
//!
//! The input is a sequence of cases, each a selector byte and its bytes:
//!
//! - **command words**: for any 16 bytes, a command the decoder accepts re-encodes, and decodes
//!   again to itself (the SMMU model decodes what the driver encoded; nothing may drift);
//! - **command values**: for any typed command, including out-of-range fields, `encode` either
//!   refuses with an error (which must display) or produces words that decode back to the same
//!   command, as `Command::encode` promises;
//! - **event words**: decoding any 32 bytes and encoding the record gives back exactly the bits
//!   of the fields §7.3 defines (and zero elsewhere), and decodes to the same record;
//! - **event values**: a record whose fields fit their encoding survives encode/decode;
//! - **STE and CD words**: decoding never panics, a CD's fields survive encode/decode, and
//!   validation only judges.

use shootdown::iommu::spec::cd::{ContextDescriptor, CD_WORDS};
use shootdown::iommu::spec::command::{Command, Granule, SyncSignal, TlbiRange, TlbiVa};
use shootdown::iommu::spec::event::{AccessKind, EventKind, EventRecord, FaultClass, EVENT_WORDS};
use shootdown::iommu::spec::ste::{Ste, StreamConfig, STE_WORDS};
use shootdown::mm::{PhysAddr, VirtAddr};

use crate::input::Input;

/// Runs every case of `data`; panics on a broken property.
pub fn fuzz(data: &[u8]) {
    let mut i = Input::new(data);
    while !i.is_empty() {
        match i.u8() % 6 {
            0 => command_words([i.u64(), i.u64()]),
            1 => command_value(read_command(&mut i)),
            2 => event_words([i.u64(), i.u64(), i.u64(), i.u64()]),
            3 => event_value(read_event(&mut i)),
            4 => {
                let oas = i.u8();
                ste_words(core::array::from_fn(|_| i.u64()), oas);
            }
            _ => cd_words(core::array::from_fn(|_| i.u64()), i.u8()),
        }
    }
}

/// Decoded words re-encode to words that decode to the same command.
pub fn command_words(words: [u64; 2]) {
    match Command::decode(words) {
        Ok(c) => {
            let again = c
                .encode()
                .unwrap_or_else(|e| panic!("{c:?} decoded from {words:x?} does not encode: {e}"));
            assert_eq!(
                Command::decode(again),
                Ok(c),
                "{c:?} (from {words:x?}) re-encoded as {again:x?}"
            );
            assert_eq!(again[0] & 0xff, words[0] & 0xff, "the opcode changed");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// A command from fuzz bytes, any field value.
pub fn read_command(i: &mut Input<'_>) -> Command {
    let va = |i: &mut Input<'_>| TlbiVa {
        vmid: i.u16(),
        asid: i.u16(),
        addr: VirtAddr(i.u64()),
        leaf: i.bool(),
        range: match i.u8() % 4 {
            0 => None,
            g => Some(TlbiRange {
                tg: [Granule::K4, Granule::K16, Granule::K64][usize::from(g) - 1],
                num: i.u8(),
                scale: i.u8(),
                ttl: i.u8(),
            }),
        },
    };
    match i.u8() % 12 {
        0 => Command::PrefetchConfig { sid: i.u32() },
        1 => Command::CfgiSte {
            sid: i.u32(),
            leaf: i.bool(),
        },
        2 => Command::CfgiSteRange {
            sid: i.u32(),
            range: i.u8(),
        },
        3 => Command::CfgiAll,
        4 => Command::CfgiCd {
            sid: i.u32(),
            ssid: i.u32(),
            leaf: i.bool(),
        },
        5 => Command::CfgiCdAll { sid: i.u32() },
        6 => Command::TlbiNhAll { vmid: i.u16() },
        7 => Command::TlbiNhAsid {
            vmid: i.u16(),
            asid: i.u16(),
        },
        8 => Command::TlbiNhVa(va(i)),
        9 => Command::TlbiNhVaa(va(i)),
        10 => Command::TlbiNsnhAll,
        _ => Command::Sync {
            signal: [SyncSignal::None, SyncSignal::Irq, SyncSignal::Sev][i.below(3)],
        },
    }
}

/// An encodable command decodes back to itself.
pub fn command_value(c: Command) {
    match c.encode() {
        Ok(words) => assert_eq!(Command::decode(words), Ok(c), "{c:?} encoded as {words:x?}"),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The bits of an event record that §7.3 defines: type, SSV (and SSID when SSV), StreamID;
/// STAG, Stall, PnU, InD, RnW, S2, CLASS; InputAddr; IPA/FetchAddr.
fn event_field_bits(w0: u64) -> [u64; EVENT_WORDS] {
    let ssv = w0 & 1 << 11 != 0;
    let dw0 = 0xff | 1 << 11 | if ssv { 0xf_ffff << 12 } else { 0 } | 0xffff_ffff << 32;
    let dw1 = 0xffff | 1 << 31 | 1 << 33 | 1 << 34 | 1 << 35 | 1 << 39 | 0b11 << 40;
    [dw0, dw1, u64::MAX, u64::MAX]
}

/// Decode then encode keeps exactly the defined fields.
pub fn event_words(words: [u64; EVENT_WORDS]) {
    let r = EventRecord::decode(words);
    let again = r.encode();
    let mask = event_field_bits(words[0]);
    for k in 0..EVENT_WORDS {
        assert_eq!(
            again[k],
            words[k] & mask[k],
            "event dword {k}: {words:x?} decoded as {r:?}, re-encoded as {again:x?}"
        );
    }
    assert_eq!(EventRecord::decode(again), r);
    let _ = r.to_string();
}

/// An event record from fuzz bytes.
pub fn read_event(i: &mut Input<'_>) -> EventRecord {
    EventRecord {
        kind: EventKind::from_code(i.u8()),
        sid: i.u32(),
        ssid: i.bool().then(|| i.u32() & 0xf_ffff),
        access: if i.bool() {
            AccessKind::Read
        } else {
            AccessKind::Write
        },
        privileged: i.bool(),
        instruction: i.bool(),
        stage2: i.bool(),
        class: [
            FaultClass::Cd,
            FaultClass::TableWalk,
            FaultClass::Input,
            FaultClass::Reserved,
        ][i.below(4)],
        stall: i.bool(),
        stag: i.u16(),
        input_addr: i.u64(),
        addr2: i.u64(),
    }
}

/// A record whose fields fit survives encode/decode.
pub fn event_value(r: EventRecord) {
    assert_eq!(
        EventRecord::decode(r.encode()),
        r,
        "encoded as {:x?}",
        r.encode()
    );
}

/// Any STE decodes to a verdict; a stage-1 STE built by the driver decodes to its CD.
pub fn ste_words(words: [u64; STE_WORDS], oas: u8) {
    let oas = 32 + oas % 21; // 32..=52 bits
    let ste = Ste(words);
    if let Err(e) = ste.decode(oas) {
        let _ = e.to_string();
    }
    let cd = PhysAddr(words[0] & 0x000f_ffff_ffff_ffc0);
    if let Ok(s) = Ste::stage1(cd) {
        let expect = if cd.as_u64() >> oas == 0 {
            Some(StreamConfig::Stage1 { cd })
        } else {
            None
        };
        assert_eq!(
            s.decode(oas).ok().map(|d| d.config),
            expect,
            "stage-1 STE for {cd}"
        );
    }
}

/// A CD's fields survive encode/decode; validation only judges.
pub fn cd_words(words: [u64; CD_WORDS], oas: u8) {
    let fields = ContextDescriptor(words).decode();
    let again = ContextDescriptor::encode(&fields);
    assert_eq!(
        again.decode(),
        fields,
        "CD {words:x?} re-encoded as {:x?}",
        again.0
    );
    if let Err(e) = fields.validate(32 + oas % 21) {
        let _ = e.to_string();
    }
}
