//! Target `receiver`: every byte that can arrive on the chainloader's serial line, into its
//! receiver (`shootdown_chainloader::receiver::serve`, the loop the loader runs), over a board
//! of 8 MiB of RAM with the loader and the firmware's device tree in it.
//!
//! The input is a program of the host's steps ([`script`]): noise, silences, receive errors,
//! and transfers with one fault each (a flipped bit, a wrong checksum, a cut, lengths at and
//! beyond the limits, a wrong version, a payload that is not the announced Image, boot
//! arguments the tree cannot take). After it, the line pauses and one clean transfer follows.
//! The loader serves until that one is accepted (each accepted transfer before it is a jump,
//! and the loader is started again). Oracles, each a panic:
//!
//! 1. **Nothing is written outside the announced slot**: every slot the loader plans is in
//!    RAM, 2 MiB aligned, clear of the loader, the firmware's tree and the low pages, with the
//!    tree copy after the kernel; the kernel's bytes are asked for only after ACK HEADER
//!    announced that slot, and only `kernel_len` of them from its base.
//! 2. **Nothing unchecked is jumped to**: an accepted transfer's header is the 28 bytes that
//!    arrived (CRC-32 checked here, independently), its payload is the bytes that arrived
//!    after ACK HEADER, in RAM at the slot, with the announced CRC-32; the kernel is an arm64
//!    Image with `text_offset` 0, little endian, no reserved flag and the announced
//!    `image_size`; the device tree it gets carries the boot arguments as the mode says.
//! 3. **Every refusal is a NAK with a reason, followed by READY**: every protocol line is one
//!    the host reads; a NAK has a known code and a message, and READY comes next; ACK HEADER
//!    is followed by NAK or ACK DATA; ACK DATA quotes the announced CRC.
//! 4. **Verdicts**: a transfer that starts after a pause gets the answer the protocol's rules
//!    give it (computed in [`script`]), and the final clean transfer is always accepted.

pub mod board;
pub mod script;

use std::cell::RefCell;
use std::rc::Rc;

use dtoolkit::fdt::Fdt;
use dtoolkit::{Node, Property};
use shootdown_chainloader::placement::{Placement, Range, KERNEL_ALIGN};
use shootdown_chainloader::protocol::{
    BootargsMode, Header, Nak, HEADER_LEN, IMAGE_MAGIC, IMAGE_MAGIC_OFFSET, IMAGE_SIZE_OFFSET,
    MAX_BOOTARGS, MIN_KERNEL,
};
use shootdown_chainloader::receiver::{self, Loaded, Timing};

use crate::input::Input;
use board::{Event, FuzzLink, FuzzRam, Step, Timeline, DTB_AT, GAP, GAP_START, RAM};
use script::{crc32, Op, Transfer, Verdict};

/// Programs are cut after this many steps.
pub const MAX_STEPS: usize = 64;
/// The line's timings (the fuzz link does not wait).
const TIMING: Timing = receiver::TIMING;
/// How often the loader may read past the end of the program before the final clean transfer
/// counts as refused.
const OVERRUN: u32 = 4;

/// Runs `data` and panics with the oracle that failed, for libFuzzer.
pub fn fuzz(data: &[u8]) {
    if let Err(e) = run(data) {
        panic!("receiver oracle failed: {e}");
    }
}

/// The host's program in `data`, one step a line (for reports).
pub fn describe(data: &[u8]) -> String {
    program(data)
        .iter()
        .map(|op| format!("  {op:?}\n"))
        .collect()
}

fn program(data: &[u8]) -> Vec<Op> {
    let mut input = Input::new(data);
    let mut ops = Vec::new();
    while !input.is_empty() && ops.len() < MAX_STEPS {
        ops.push(Op::read(&mut input));
    }
    ops
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    pub transfers_accepted: usize,
    pub naks: usize,
    pub verdicts_checked: usize,
}

/// Plays `data`'s program, then a pause and a clean transfer, and checks every oracle.
pub fn run(data: &[u8]) -> Result<Summary, String> {
    let (steps, expected) = steps(&program(data));
    let timeline: Timeline = Rc::new(RefCell::new(Vec::new()));
    let mut link = FuzzLink::new(steps, timeline.clone());
    let mut ram = FuzzRam::new(timeline.clone());
    let mut summary = Summary::default();
    loop {
        let loaded = serve(&mut link, &mut ram);
        check_loaded(&loaded, &link, &ram, &timeline.borrow())?;
        summary.transfers_accepted += 1;
        if link.done() {
            break;
        }
    }
    let events = timeline.borrow();
    summary.naks = check_lines(&events)?;
    for &(offset, verdict) in &expected {
        check_verdict(&events, offset, verdict)?;
        summary.verdicts_checked += 1;
    }
    Ok(summary)
}

/// Serves until a transfer is accepted.
fn serve(link: &mut FuzzLink, ram: &mut FuzzRam) -> Loaded {
    receiver::serve(&mut Stalling(link), ram, TIMING)
}

/// The link, stopping a loader that keeps reading after the program's end: the final clean
/// transfer was not accepted. The loader serves until it accepts something, so this is the
/// one oracle that must panic where it is found.
struct Stalling<'a>(&'a mut FuzzLink);

impl shootdown_chainloader::protocol::Sink for Stalling<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.0.put(bytes)
    }
}

impl receiver::Link for Stalling<'_> {
    fn read_byte(&mut self, timeout_ms: u32) -> Option<u8> {
        let b = self.0.read_byte(timeout_ms);
        if self.0.overrun > OVERRUN {
            panic!(
                "receiver oracle failed: after a pause the clean transfer was not accepted; \
                 the loader's last lines: {:?}",
                self.0.last_lines(6)
            );
        }
        b
    }
    fn take_errors(&mut self) -> u32 {
        self.0.take_errors()
    }
}

/// The line's steps for `ops`, then a pause and a clean transfer; and the verdicts due, by
/// the number of bytes sent before the transfer they are for.
fn steps(ops: &[Op]) -> (Vec<Step>, Vec<(usize, Verdict)>) {
    let tree = board::firmware_tree().len();
    let mut steps = Vec::new();
    let mut expected = Vec::new();
    let mut sent = 0usize;
    let finale = Op::Transfer(Transfer::clean(1000, 1, b"ktest=boot.*"));
    for op in ops.iter().chain([&finale]) {
        match op {
            Op::Noise(bytes) => {
                sent += bytes.len();
                steps.push(Step::Send(bytes.iter().copied().collect()));
            }
            Op::Silence => steps.push(Step::Silence),
            Op::LineErrors(n) => steps.push(Step::LineErrors((*n).into())),
            Op::Transfer(t) => {
                if t.pause {
                    steps.extend([Step::Silence, Step::Silence]);
                }
                let wire = t.wire(tree);
                if let Some(v) = wire.expect.filter(|_| t.pause || sent == 0) {
                    expected.push((sent, v));
                }
                sent += wire.bytes.len();
                steps.push(Step::Send(wire.bytes.into()));
            }
        }
    }
    (steps, expected)
}

/// A protocol line, read here without the host's parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Ready { max: u64 },
    AckHeader { kernel: u64, dtb: u64 },
    AckData { crc: u64 },
    Nak { code: u8 },
}

fn hex(word: Option<&str>, key: &str) -> Option<u64> {
    let v = word?.strip_prefix(key)?.strip_prefix("0x")?;
    u64::from_str_radix(v, 16).ok()
}

/// `None` for a line that is not a protocol line; an error for one nobody can read.
fn protocol_line(text: &str) -> Result<Option<Line>, String> {
    let Some(rest) = text.strip_prefix("@@SDCL ") else {
        return Ok(None);
    };
    let w: Vec<&str> = rest.split(' ').collect();
    let line = match w.as_slice() {
        ["READY", "1", max] => hex(Some(max), "max=").map(|max| Line::Ready { max }),
        ["ACK", "HEADER", k, d] => hex(Some(k), "kernel=")
            .zip(hex(Some(d), "dtb="))
            .map(|(kernel, dtb)| Line::AckHeader { kernel, dtb }),
        ["ACK", "DATA", c] => hex(Some(c), "crc=").map(|crc| Line::AckData { crc }),
        ["NAK", code, message @ ..] if !message.concat().is_empty() => code
            .parse()
            .ok()
            .filter(|&c| Nak::from_code(c).is_some())
            .map(|code| Line::Nak { code }),
        _ => None,
    };
    line.map(Some)
        .ok_or_else(|| format!("the loader wrote a protocol line nobody reads: {text:?}"))
}

/// Oracles 1 and 3 over the whole run; returns the number of NAKs.
fn check_lines(events: &[Event]) -> Result<usize, String> {
    let mut planned: Option<(
        Header,
        Result<Placement, shootdown_chainloader::protocol::Refusal>,
    )> = None;
    let mut acked: Option<(Header, Placement)> = None;
    let mut want_ready = false;
    let mut naks = 0;
    for e in events {
        match e {
            Event::Place { header, result } => {
                if let Ok(p) = result {
                    check_slot(header, p)?;
                }
                planned = Some((*header, *result));
            }
            Event::KernelBytes { base, len } => {
                let (h, p) = acked.ok_or("kernel bytes asked for before ACK HEADER")?;
                if *base != p.kernel || *len != h.kernel_len as usize {
                    return Err(format!(
                        "kernel bytes {base:#x}+{len:#x} asked for, but ACK HEADER announced {:#x} for {:#x} bytes",
                        p.kernel, h.kernel_len
                    ));
                }
            }
            Event::Prepare {
                placement, header, ..
            } => {
                if acked != Some((*header, *placement)) {
                    return Err("the device tree was written for another slot".into());
                }
            }
            Event::Line { text, .. } => {
                let Some(line) = protocol_line(text)? else {
                    continue;
                };
                if want_ready && !matches!(line, Line::Ready { .. }) {
                    return Err(format!("a NAK was followed by {text:?}, not READY"));
                }
                if acked.is_some() && !matches!(line, Line::Nak { .. } | Line::AckData { .. }) {
                    return Err(format!("after ACK HEADER came {text:?}"));
                }
                match line {
                    Line::Ready { max } => {
                        want_ready = false;
                        if max != GAP {
                            return Err(format!(
                                "READY announced {max:#x}, the free gap is {GAP:#x}"
                            ));
                        }
                    }
                    Line::Nak { code } => {
                        naks += 1;
                        want_ready = true;
                        if let Some((_, Err(r))) = planned.take() {
                            if r.nak.code() != code {
                                return Err(format!("no slot ({r:?}) but NAK {code}"));
                            }
                        }
                        acked = None;
                    }
                    Line::AckHeader { kernel, dtb } => {
                        let (h, p) = match planned.take() {
                            Some((h, Ok(p))) => (h, p),
                            _ => return Err("ACK HEADER without a slot".into()),
                        };
                        let want_dtb = match h.mode {
                            BootargsMode::Keep => DTB_AT,
                            _ => p.dtb_copy,
                        };
                        if (kernel, dtb) != (p.kernel, want_dtb) {
                            return Err(format!(
                                "ACK HEADER says {kernel:#x}/{dtb:#x}, the slot is {p:?}"
                            ));
                        }
                        acked = Some((h, p));
                    }
                    Line::AckData { crc } => {
                        let (h, _) = acked.take().ok_or("ACK DATA without ACK HEADER")?;
                        if crc != u64::from(h.payload_crc) {
                            return Err(format!(
                                "ACK DATA quotes {crc:#x}, the header {:#x}",
                                h.payload_crc
                            ));
                        }
                    }
                }
            }
        }
    }
    if want_ready {
        return Err("the last NAK was not followed by READY".into());
    }
    Ok(naks)
}

/// The slot for `h`: 2 MiB aligned, in RAM, clear of everything in use, the tree copy after it.
fn check_slot(h: &Header, p: &Placement) -> Result<(), String> {
    let footprint = h.footprint();
    let kernel = Range::new(p.kernel, footprint);
    let copy = Range::new(p.dtb_copy, p.dtb_room);
    // RAM starts at 0: inside it is ending (without wrapping) by its end.
    let inside = |r: &Range| {
        r.base
            .checked_add(r.size)
            .is_some_and(|end| end <= RAM.end())
    };
    let clear = |r: &Range| !FuzzRam::busy().iter().any(|b| b.overlaps(r));
    if p.kernel % KERNEL_ALIGN != 0
        || !inside(&kernel)
        || !clear(&kernel)
        || !inside(&copy)
        || !clear(&copy)
        || copy.overlaps(&kernel)
        || p.dtb_copy < kernel.end()
    {
        return Err(format!("slot {p:?} for a footprint of {footprint:#x}"));
    }
    Ok(())
}

/// Oracle 2: what the loader jumps to is what arrived, checked.
fn check_loaded(
    l: &Loaded,
    link: &FuzzLink,
    ram: &FuzzRam,
    events: &[Event],
) -> Result<(), String> {
    let at = |want: fn(&Line) -> bool| {
        events.iter().rev().find_map(|e| match e {
            Event::Line { at, text } => match protocol_line(text) {
                Ok(Some(line)) if want(&line) => Some(*at),
                _ => None,
            },
            _ => None,
        })
    };
    let acked = at(|l| matches!(l, Line::AckHeader { .. })).ok_or("accepted without ACK HEADER")?;
    let done = at(|l| matches!(l, Line::AckData { .. })).ok_or("accepted without ACK DATA")?;
    let header = link
        .delivered
        .get(acked.wrapping_sub(HEADER_LEN)..acked)
        .ok_or("accepted before a header arrived")?;
    let field = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
    let h = &l.header;
    let mode = match h.mode {
        BootargsMode::Keep => 0,
        BootargsMode::Append => 1,
        BootargsMode::Replace => 2,
    };
    if &header[..4] != b"SDCL"
        || crc32(&header[..24]) != field(24)
        || header[4..8] != [1, 0, mode, 0]
        || [field(8), field(12), field(16), field(20)]
            != [h.kernel_len, h.image_size, h.bootargs_len, h.payload_crc]
    {
        return Err(format!("accepted {h:?} from header bytes {header:02x?}"));
    }
    let payload = &link.delivered[acked..done];
    let kernel_len = h.kernel_len as usize;
    if payload.len() as u64 != h.payload_len() || crc32(payload) != h.payload_crc {
        return Err(format!(
            "accepted {} payload bytes with CRC {:#x} for {h:?}",
            payload.len(),
            crc32(payload)
        ));
    }
    let base = l.placement.kernel as usize;
    if ram.ram.get(base..base + kernel_len) != Some(&payload[..kernel_len]) {
        return Err("the kernel in RAM is not the bytes that arrived".into());
    }
    check_image(&payload[..kernel_len], h)?;
    check_tree(l, ram, &payload[kernel_len..])
}

fn check_image(k: &[u8], h: &Header) -> Result<(), String> {
    let u64_at = |i: usize| u64::from_le_bytes(k[i..i + 8].try_into().unwrap());
    let size = match u64_at(IMAGE_SIZE_OFFSET) {
        0 => k.len() as u64,
        n => n,
    };
    let flags = u64_at(24);
    if k.len() < MIN_KERNEL as usize
        || k[IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4] != IMAGE_MAGIC
        || u64_at(8) != 0
        || flags & 1 != 0
        || flags & !0xf != 0
        || size != u64::from(h.image_size)
        || h.bootargs_len as usize > MAX_BOOTARGS
        || h.footprint() > GAP
    {
        return Err(format!(
            "jumped to an unchecked Image: text_offset {:#x}, flags {flags:#x}, image_size {size:#x}, {h:?}",
            u64_at(8)
        ));
    }
    Ok(())
}

/// The device tree the kernel gets carries the boot arguments as the mode says.
fn check_tree(l: &Loaded, ram: &FuzzRam, args: &[u8]) -> Result<(), String> {
    let want = match l.header.mode {
        BootargsMode::Keep => {
            return match l.dtb == DTB_AT {
                true => Ok(()),
                false => Err(format!("keep mode, but the tree is at {:#x}", l.dtb)),
            }
        }
        BootargsMode::Append => {
            format!("console=serial0 {}", String::from_utf8_lossy(args))
        }
        BootargsMode::Replace => String::from_utf8_lossy(args).into_owned(),
    };
    let p = l.placement;
    if l.dtb != p.dtb_copy || p.dtb_copy < GAP_START {
        return Err(format!(
            "the tree is at {:#x}, its copy at {:#x}",
            l.dtb, p.dtb_copy
        ));
    }
    let room = &ram.ram[p.dtb_copy as usize..(p.dtb_copy + p.dtb_room) as usize];
    // The header's totalsize (Devicetree Specification §5.2), within the room.
    let total = u32::from_be_bytes(room[4..8].try_into().unwrap()) as usize;
    let blob = room.get(..total).ok_or_else(|| {
        format!(
            "the edited tree's {total} bytes overflow its room of {}",
            room.len()
        )
    })?;
    let fdt = Fdt::new(blob).map_err(|e| format!("the edited tree does not parse: {e}"))?;
    let got = fdt
        .root()
        .child("chosen")
        .and_then(|c| c.property("bootargs"))
        .and_then(|b| b.value_as::<&str>().ok())
        .map(str::to_string);
    if got.as_deref() != Some(want.as_str()) {
        return Err(format!("/chosen/bootargs is {got:?}, want {want:?}"));
    }
    Ok(())
}

/// Oracle 4: the first verdict after `offset` bytes is `verdict`.
fn check_verdict(events: &[Event], offset: usize, verdict: Verdict) -> Result<(), String> {
    let first = events.iter().find_map(|e| match e {
        Event::Line { at, text } if *at > offset => match protocol_line(text) {
            Ok(Some(l @ (Line::Nak { .. } | Line::AckData { .. }))) => Some((l, text.clone())),
            _ => None,
        },
        _ => None,
    });
    let ok = match (verdict, first.as_ref().map(|f| f.0)) {
        (Verdict::Accept, Some(Line::AckData { .. })) => true,
        (Verdict::Refuse(n), Some(Line::Nak { code })) => n.code() == code,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the transfer starting after byte {offset} should get {verdict:?}, the loader said {:?}",
            first.map(|f| f.1)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shootdown_chainloader::placement::Placement;

    fn line(at: usize, text: &str) -> Event {
        Event::Line {
            at,
            text: text.into(),
        }
    }

    fn header() -> Header {
        Header {
            mode: BootargsMode::Keep,
            kernel_len: 4096,
            image_size: 4096,
            bootargs_len: 0,
            payload_crc: 0x1234,
        }
    }

    const SLOT: Placement = Placement {
        kernel: GAP_START,
        dtb_copy: GAP_START + 4096,
        dtb_room: 0,
    };

    #[test]
    fn the_seeds_check_verdicts_and_accept_the_final_transfer() {
        for (name, data) in crate::seeds::seeds("receiver") {
            let s = run(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(s.transfers_accepted >= 1, "{name}: {s:?}");
            if name == "seed-every-fault" {
                // Every transfer (all after a pause) but the cut one, and the final one.
                let due = program(&data)
                    .iter()
                    .filter(|op| matches!(op, Op::Transfer(t) if !matches!(t.fault, script::Fault::Cut { .. })))
                    .count()
                    + 1;
                assert_eq!(s.verdicts_checked, due, "{s:?}");
                assert_eq!(
                    s.naks + s.transfers_accepted,
                    due + 1,
                    "the cut one times out: {s:?}"
                );
            }
        }
    }

    /// Each oracle rejects a loader that breaks its rule.
    #[test]
    fn the_oracles_catch_a_loader_that_breaks_the_protocol() {
        let ready = "@@SDCL READY 1 max=0x400000";
        let place = Event::Place {
            header: header(),
            result: Ok(SLOT),
        };
        let ack = "@@SDCL ACK HEADER kernel=0x400000 dtb=0x300000";
        // Sound: header, slot, ACK HEADER, kernel bytes, ACK DATA.
        let good = [
            line(0, ready),
            place.clone(),
            line(28, ack),
            Event::KernelBytes {
                base: GAP_START,
                len: 4096,
            },
            line(4124, "@@SDCL ACK DATA crc=0x1234"),
        ];
        assert_eq!(check_lines(&good), Ok(0));
        let broken: [&[Event]; 6] = [
            // A NAK not followed by READY.
            &[
                line(0, ready),
                line(5, "@@SDCL NAK 5 timed out"),
                place.clone(),
                line(28, ack),
            ],
            // A NAK without a reason.
            &[
                line(0, ready),
                line(5, "@@SDCL NAK 42 what"),
                line(5, ready),
            ],
            // Kernel bytes before ACK HEADER.
            &[
                line(0, ready),
                place.clone(),
                Event::KernelBytes {
                    base: GAP_START,
                    len: 4096,
                },
            ],
            // Kernel bytes elsewhere than announced.
            &[
                line(0, ready),
                place.clone(),
                line(28, ack),
                Event::KernelBytes {
                    base: 0x20_0000,
                    len: 4096,
                },
            ],
            // ACK DATA with another CRC.
            &[
                line(0, ready),
                place.clone(),
                line(28, ack),
                line(4124, "@@SDCL ACK DATA crc=0x1"),
            ],
            // A slot over the loader.
            &[Event::Place {
                header: header(),
                result: Ok(Placement {
                    kernel: 0x20_0000,
                    ..SLOT
                }),
            }],
        ];
        for (i, events) in broken.iter().enumerate() {
            assert!(check_lines(events).is_err(), "case {i} passed");
        }
        // A verdict other than the rules give.
        let refused = [
            line(0, ready),
            line(28, "@@SDCL NAK 1 header checksum 0x1, expected 0x2"),
        ];
        assert!(check_verdict(&refused, 0, Verdict::Refuse(Nak::HeaderCrc)).is_ok());
        assert!(check_verdict(&refused, 0, Verdict::Accept).is_err());
        assert!(check_verdict(&refused, 0, Verdict::Refuse(Nak::PayloadCrc)).is_err());
        // An Image the loader must not jump to.
        let mut k = vec![0u8; 4096];
        k[IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4].copy_from_slice(&IMAGE_MAGIC);
        assert!(check_image(&k, &header()).is_ok());
        k[24] = 1; // big endian
        assert!(check_image(&k, &header()).is_err());
    }
}
