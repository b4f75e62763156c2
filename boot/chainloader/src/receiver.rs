//! The loader's side of the protocol, as a state machine over two small traits so that the
//! host can test it byte by byte: [`Link`] is the UART, [`Memory`] is where the kernel goes.
//!
//! ```text
//!         +--------------------------- NAK (reason), READY -----------------------+
//!         v                                                                        |
//!   scanning for "SDCL" --(2 s silence, or 2 s worth of noise)--> READY            |
//!         | magic                                                                  |
//!   24 more header bytes (2 s each) -- decode, plan a slot --> ACK HEADER          |
//!         |                                                                        |
//!   kernel_len + bootargs_len bytes (2 s each) straight into the slot, CRC-32 ----+ (bad)
//!         | CRC ok, Image magic and image_size ok, device tree edited
//!   ACK DATA --> return (the caller jumps)
//! ```
//!
//! Nothing is trusted before it is checked: the header carries its own CRC, lengths are
//! bounded before any byte is written, the slot comes from the device tree's RAM minus what is
//! in use, and the payload is checked (CRC, Image magic, `image_size`, `text_offset` and flags)
//! before the ACK. Every
//! refusal says why in numbers and is followed by a fresh READY, so the host can retry.

use crate::crc32::Crc32;
use crate::placement::Placement;
use crate::protocol::{
    self, BootargsMode, Header, Nak, Refusal, Sink, HEADER_LEN, IMAGE_MAGIC, IMAGE_MAGIC_OFFSET,
    IMAGE_SIZE_OFFSET, MAGIC, MAX_BOOTARGS,
};

/// The UART as the protocol needs it.
pub trait Link: Sink {
    /// The next received byte, or `None` after `timeout_ms` without one.
    fn read_byte(&mut self, timeout_ms: u32) -> Option<u8>;
    /// Receive errors (overrun, framing, parity, break) since the last call.
    fn take_errors(&mut self) -> u32;
}

/// Where the kernel goes.
pub trait Memory {
    /// The largest kernel footprint that fits (announced in READY).
    fn max_footprint(&self) -> u64;
    /// A slot for the kernel this header announces, or why there is none.
    fn place(&mut self, header: &Header) -> Result<Placement, Refusal>;
    /// The device tree address the kernel will get (announced in ACK HEADER).
    fn dtb_for(&self, placement: &Placement, header: &Header) -> u64;
    /// The `len` bytes at the slot's base, to receive the kernel into.
    fn kernel_bytes(&mut self, placement: &Placement, len: usize) -> &mut [u8];
    /// Everything left before the jump that can still fail (writing the device tree copy).
    fn prepare(
        &mut self,
        placement: &Placement,
        header: &Header,
        bootargs: &[u8],
    ) -> Result<(), Refusal>;
}

/// Time limits, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// READY is repeated after this much silence.
    pub ready_every_ms: u32,
    /// Longest gap between two bytes of a header or payload.
    pub byte_timeout_ms: u32,
}

/// What the loader uses: a host that saw READY answers within milliseconds, and a USB serial
/// adapter does not pause for seconds in the middle of a write.
pub const TIMING: Timing = Timing {
    ready_every_ms: 2000,
    byte_timeout_ms: 2000,
};

/// READY is also repeated after this many bytes of noise without a header, so that a line
/// that never goes quiet does not silence it: 2 s of bytes at the loader's 115200 baud, 8N1
/// (10 bits a byte).
pub const READY_EVERY_NOISE: u64 = 2 * 115_200 / 10;

/// A kernel that arrived intact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub header: Header,
    pub placement: Placement,
    /// The device tree to hand it in x0.
    pub dtb: u64,
}

/// Serves until a transfer succeeds: READY, then attempts, each refusal answered with a NAK
/// and a new READY.
pub fn serve(link: &mut dyn Link, mem: &mut dyn Memory, timing: Timing) -> Loaded {
    loop {
        protocol::write_ready(link, mem.max_footprint());
        match attempt(link, mem, timing) {
            Ok(loaded) => return loaded,
            Err(r) => protocol::write_nak(link, &r),
        }
    }
}

/// One transfer: wait for a header, then receive and check its payload.
pub fn attempt(
    link: &mut dyn Link,
    mem: &mut dyn Memory,
    timing: Timing,
) -> Result<Loaded, Refusal> {
    let header = read_header(link, mem, timing)?;
    let placement = mem.place(&header)?;
    let dtb = mem.dtb_for(&placement, &header);
    // Errors so far are noise while idle; from the ACK on they are the payload's (an overrun
    // right after it loses payload bytes, and must be named instead of a bare timeout).
    link.take_errors();
    protocol::write_ack_header(link, placement.kernel, dtb);

    let total = header.payload_len();
    let mut crc = Crc32::new();
    let mut received = 0u64;
    let mut next = |link: &mut dyn Link, crc: &mut Crc32| -> Result<u8, Refusal> {
        match link.read_byte(timing.byte_timeout_ms) {
            Some(b) => {
                crc.push(b);
                received += 1;
                Ok(b)
            }
            None => Err(match link.take_errors() {
                0 => Refusal::new(Nak::Timeout, received, total),
                e => Refusal::new(Nak::LineError, e.into(), received),
            }),
        }
    };
    let kernel = mem.kernel_bytes(&placement, header.kernel_len as usize);
    for slot in kernel.iter_mut() {
        *slot = next(link, &mut crc)?;
    }
    let mut bootargs = [0u8; MAX_BOOTARGS];
    let bootargs = &mut bootargs[..header.bootargs_len as usize];
    for slot in bootargs.iter_mut() {
        *slot = next(link, &mut crc)?;
    }
    let errors = link.take_errors();
    if crc.value() != header.payload_crc {
        return Err(match errors {
            0 => Refusal::new(
                Nak::PayloadCrc,
                crc.value().into(),
                header.payload_crc.into(),
            ),
            e => Refusal::new(Nak::LineError, e.into(), total),
        });
    }
    check_image(
        mem.kernel_bytes(&placement, header.kernel_len as usize),
        &header,
    )?;
    mem.prepare(&placement, &header, bootargs)?;
    if header.mode == BootargsMode::Keep && !bootargs.is_empty() {
        // The host asked to keep the firmware's tree: say that its boot arguments go unused.
        link.put_str("chainloader: keeping the device tree's bootargs; ignoring the ");
        link.put_dec(bootargs.len() as u64);
        link.put_str(" bytes of boot arguments sent");
        link.end_line();
    }
    protocol::write_ack_data(link, crc.value());
    Ok(Loaded {
        header,
        placement,
        dtb,
    })
}

/// Scans for the magic (skipping noise, repeating READY in silence), then reads the rest of
/// the header.
fn read_header(link: &mut dyn Link, mem: &dyn Memory, timing: Timing) -> Result<Header, Refusal> {
    let mut window = [0u8; 4];
    let mut skipped = 0u64;
    let mut since_ready = 0u64;
    loop {
        match link.read_byte(timing.ready_every_ms) {
            None => protocol::write_ready(link, mem.max_footprint()),
            Some(b) => {
                window = [window[1], window[2], window[3], b];
                skipped += 1;
                if window == MAGIC {
                    break;
                }
                since_ready += 1;
                if since_ready >= READY_EVERY_NOISE {
                    since_ready = 0;
                    protocol::write_ready(link, mem.max_footprint());
                }
            }
        }
    }
    let mut bytes = [0u8; HEADER_LEN];
    bytes[..4].copy_from_slice(&MAGIC);
    for (i, slot) in bytes.iter_mut().enumerate().skip(4) {
        *slot = link.read_byte(timing.byte_timeout_ms).ok_or(Refusal::new(
            Nak::Timeout,
            i as u64,
            HEADER_LEN as u64,
        ))?;
    }
    if skipped > 4 {
        link.put_str("chainloader: skipped ");
        link.put_dec(skipped - 4);
        link.put_str(" bytes of noise before the header");
        link.end_line();
    }
    Header::decode(&bytes)
}

/// The payload must be the arm64 Image the header announced.
fn check_image(kernel: &[u8], header: &Header) -> Result<(), Refusal> {
    if kernel.get(IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4) != Some(&IMAGE_MAGIC[..]) {
        return Err(Refusal::new(Nak::NotAnImage, 0, 0));
    }
    protocol::check_image_header(kernel)?;
    let mut size = [0u8; 8];
    size.copy_from_slice(&kernel[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8]);
    let size = match u64::from_le_bytes(size) {
        0 => u64::from(header.kernel_len),
        n => n,
    };
    if size != u64::from(header.image_size) {
        return Err(Refusal::new(
            Nak::SizeMismatch,
            size,
            header.image_size.into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::fdt_edit::{self, testing};
    use crate::placement::{self, Range};
    use crate::protocol::{BootargsMode, Reply};

    /// What the host does on the wire, in order.
    enum Step {
        Send(Vec<u8>),
        /// The line is quiet: the next read times out.
        Silence,
        /// The next bytes arrive with a receive error flagged.
        LineErrors(u32),
    }

    struct ScriptLink {
        input: VecDeque<Step>,
        out: Vec<u8>,
        errors: u32,
        timeouts: Vec<u32>,
        /// Receive errors flagged while the loader writes ACK HEADER.
        errors_during_ack: u32,
    }

    impl Sink for ScriptLink {
        fn put(&mut self, bytes: &[u8]) {
            if bytes.starts_with(b"ACK HEADER") {
                self.errors += std::mem::take(&mut self.errors_during_ack);
            }
            self.out.extend_from_slice(bytes);
        }
    }

    impl Link for ScriptLink {
        fn read_byte(&mut self, timeout_ms: u32) -> Option<u8> {
            loop {
                match self.input.front_mut() {
                    None => panic!(
                        "the loader read past the script; it said:\n{}",
                        String::from_utf8_lossy(&self.out)
                    ),
                    Some(Step::Silence) => {
                        self.input.pop_front();
                        self.timeouts.push(timeout_ms);
                        return None;
                    }
                    Some(Step::LineErrors(n)) => {
                        self.errors += *n;
                        self.input.pop_front();
                    }
                    Some(Step::Send(bytes)) if bytes.is_empty() => {
                        self.input.pop_front();
                    }
                    Some(Step::Send(bytes)) => return Some(bytes.remove(0)),
                }
            }
        }

        fn take_errors(&mut self) -> u32 {
            std::mem::take(&mut self.errors)
        }
    }

    impl ScriptLink {
        fn new(steps: Vec<Step>) -> Self {
            Self {
                input: steps.into(),
                out: Vec::new(),
                errors: 0,
                timeouts: Vec::new(),
                errors_during_ack: 0,
            }
        }

        fn lines(&self) -> Vec<String> {
            String::from_utf8_lossy(&self.out)
                .split("\r\n")
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        }

        fn replies(&self) -> Vec<String> {
            self.lines()
                .into_iter()
                .filter(|l| Reply::parse(l).is_some())
                .collect()
        }

        fn unread(&self) -> usize {
            self.input
                .iter()
                .map(|s| match s {
                    Step::Send(b) => b.len(),
                    _ => 0,
                })
                .sum()
        }
    }

    const MIB: u64 = 1 << 20;
    const RAM_BASE: u64 = 0;
    const RAM_SIZE: usize = 16 << 20;

    /// 16 MiB of RAM at 0 with the loader at 2 MiB and the device tree at 3 MiB.
    struct FakeRam {
        ram: Vec<u8>,
        dtb_at: u64,
        dtb_len: usize,
        prepared: Option<Vec<u8>>,
    }

    impl FakeRam {
        fn new() -> Self {
            let tree = testing::build(
                &[
                    testing::Item::Begin(""),
                    testing::Item::Begin("chosen"),
                    testing::Item::Prop("bootargs", b"console=serial0\0"),
                    testing::Item::End,
                    testing::Item::End,
                ],
                &[],
            );
            let mut ram = vec![0u8; RAM_SIZE];
            let dtb_at = 3 * MIB;
            ram[dtb_at as usize..dtb_at as usize + tree.len()].copy_from_slice(&tree);
            Self {
                ram,
                dtb_at,
                dtb_len: tree.len(),
                prepared: None,
            }
        }

        fn busy(&self) -> [Range; 3] {
            [
                placement::LOW_RESERVED,
                Range::new(2 * MIB, 0x2_0000),
                Range::new(self.dtb_at, self.dtb_len as u64),
            ]
        }

        fn room(&self, h: &Header) -> u64 {
            match h.mode {
                BootargsMode::Keep => 0,
                _ => (self.dtb_len + h.bootargs_len as usize + fdt_edit::GROWTH) as u64,
            }
        }

        fn ram(&self) -> [Range; 1] {
            [Range::new(RAM_BASE, RAM_SIZE as u64)]
        }
    }

    impl Memory for FakeRam {
        fn max_footprint(&self) -> u64 {
            placement::largest(&self.ram(), &self.busy(), 0)
        }

        fn place(&mut self, h: &Header) -> Result<Placement, Refusal> {
            placement::plan(&self.ram(), &self.busy(), h.footprint(), self.room(h))
                .map_err(|max| Refusal::new(Nak::TooBig, h.footprint(), max))
        }

        fn dtb_for(&self, p: &Placement, h: &Header) -> u64 {
            match h.mode {
                BootargsMode::Keep => self.dtb_at,
                _ => p.dtb_copy,
            }
        }

        fn kernel_bytes(&mut self, p: &Placement, len: usize) -> &mut [u8] {
            &mut self.ram[p.kernel as usize..p.kernel as usize + len]
        }

        fn prepare(&mut self, p: &Placement, h: &Header, args: &[u8]) -> Result<(), Refusal> {
            if h.mode == BootargsMode::Keep {
                return Ok(());
            }
            let (src, dst) = self.ram.split_at_mut(p.dtb_copy as usize);
            let src = &src[self.dtb_at as usize..self.dtb_at as usize + self.dtb_len];
            let n = fdt_edit::set_bootargs(src, &mut dst[..p.dtb_room as usize], args, h.mode)
                .map_err(|e| Refusal::new(Nak::DeviceTree, e.code(), 0))?;
            self.prepared = Some(dst[..n].to_vec());
            Ok(())
        }
    }

    fn kernel(len: usize, image_size: u64) -> Vec<u8> {
        let mut k: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        // text_offset 0, flags as our kernel's (`boot/entry.S`): LE, 4 KiB pages, anywhere.
        k[8..16].fill(0);
        k[24..32].copy_from_slice(&0xau64.to_le_bytes());
        k[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&image_size.to_le_bytes());
        k[IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4].copy_from_slice(&IMAGE_MAGIC);
        k
    }

    /// Header and payload as the host sends them.
    fn transfer(k: &[u8], args: &str, mode: BootargsMode) -> (Header, Vec<u8>) {
        let h = Header::for_payload(k, args.as_bytes(), mode).unwrap();
        let mut wire = h.encode().to_vec();
        wire.extend_from_slice(k);
        wire.extend_from_slice(args.as_bytes());
        (h, wire)
    }

    const FAST: Timing = Timing {
        ready_every_ms: 100,
        byte_timeout_ms: 50,
    };

    #[test]
    fn a_good_transfer_lands_in_the_first_free_slot_with_the_bootargs() {
        let k = kernel(5000, 0x3_0000);
        let (h, wire) = transfer(&k, "ktest=boot.*", BootargsMode::Append);
        let mut link = ScriptLink::new(vec![
            Step::Send(b"\x00noise\r\n".to_vec()),
            Step::Send(wire),
        ]);
        let mut ram = FakeRam::new();
        let loaded = serve(&mut link, &mut ram, FAST);
        assert_eq!(loaded.header, h);
        assert_eq!(loaded.placement.kernel, 4 * MIB);
        assert_eq!(loaded.dtb, 4 * MIB + 0x3_0000);
        assert_eq!(&ram.ram[4 << 20..(4 << 20) + k.len()], &k[..]);
        let tree = ram.prepared.unwrap();
        let fdt = dtoolkit::fdt::Fdt::new(&tree).unwrap();
        use dtoolkit::{Node, Property};
        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(
            chosen.property("bootargs").unwrap().as_str().unwrap(),
            "console=serial0 ktest=boot.*"
        );
        assert_eq!(
            link.replies(),
            [
                "@@SDCL READY 1 max=0xc00000".to_string(),
                "@@SDCL ACK HEADER kernel=0x400000 dtb=0x430000".to_string(),
                format!("@@SDCL ACK DATA crc={:#x}", h.payload_crc),
            ]
        );
        assert!(link
            .lines()
            .contains(&"chainloader: skipped 8 bytes of noise before the header".to_string()));
    }

    #[test]
    fn a_corrupted_checksum_is_refused_and_the_retry_succeeds() {
        let k = kernel(3000, 0);
        let (h, good) = transfer(&k, "", BootargsMode::Keep);
        // The same payload with one flipped bit: the header is fine, the payload CRC is not.
        let mut bad = good.clone();
        bad[HEADER_LEN + 1000] ^= 0x10;
        let mut link = ScriptLink::new(vec![Step::Send(bad), Step::Send(good)]);
        let mut ram = FakeRam::new();
        let loaded = serve(&mut link, &mut ram, FAST);
        assert_eq!(loaded.dtb, ram.dtb_at, "Keep: the firmware's tree as is");
        let r = link.replies();
        assert_eq!(r.len(), 6, "{r:#?}");
        assert!(r[1].starts_with("@@SDCL ACK HEADER"));
        assert!(
            r[2].starts_with("@@SDCL NAK 6 payload checksum"),
            "{}",
            r[2]
        );
        assert!(
            r[2].ends_with(&format!("expected {:#x}", h.payload_crc)),
            "{}",
            r[2]
        );
        assert!(r[3].starts_with("@@SDCL READY"));
        assert!(r[5].starts_with("@@SDCL ACK DATA"));
        assert_eq!(&ram.ram[4 << 20..(4 << 20) + k.len()], &k[..]);
    }

    #[test]
    fn an_oversize_kernel_is_refused_before_any_byte_is_written() {
        let k = kernel(100, 13 * MIB);
        let (_, wire) = transfer(&k, "", BootargsMode::Keep);
        // Only the header goes out: the host waits for ACK HEADER before the payload.
        let mut link = ScriptLink::new(vec![Step::Send(wire[..HEADER_LEN].to_vec())]);
        let mut ram = FakeRam::new();
        let before = ram.ram.clone();
        let r = attempt(&mut link, &mut ram, FAST).unwrap_err();
        assert_eq!((r.nak, r.a, r.b), (Nak::TooBig, 13 * MIB, 12 * MIB));
        assert!(ram.ram == before, "nothing was written");
        // The header's own limit applies whatever the RAM.
        let mut forged = Header::for_payload(&k, b"", BootargsMode::Keep).unwrap();
        forged.kernel_len = u32::MAX;
        let mut link = ScriptLink::new(vec![Step::Send(forged.encode().to_vec())]);
        let r = attempt(&mut link, &mut ram, FAST).unwrap_err();
        assert_eq!(r.nak, Nak::TooBig);
    }

    #[test]
    fn a_stalled_host_times_out_with_the_count_and_the_loader_resyncs() {
        let k = kernel(2000, 0);
        let (_, wire) = transfer(&k, "", BootargsMode::Keep);
        let mut link = ScriptLink::new(vec![
            Step::Send(wire[..HEADER_LEN + 700].to_vec()),
            Step::Silence,
            // The rest arrives late: noise to the loader now. Then a clean retry.
            Step::Send(wire[HEADER_LEN + 700..].to_vec()),
            Step::Silence,
            Step::Send(wire.clone()),
        ]);
        let mut ram = FakeRam::new();
        serve(&mut link, &mut ram, FAST);
        let r = link.replies();
        assert!(
            r.contains(
                &"@@SDCL NAK 5 timed out waiting for data after 700 of 2000 bytes".to_string()
            ),
            "{r:#?}"
        );
        assert!(r.last().unwrap().starts_with("@@SDCL ACK DATA"), "{r:#?}");
        assert_eq!(link.timeouts, [FAST.byte_timeout_ms, FAST.ready_every_ms]);
        // A torn header times out the same way.
        let mut link = ScriptLink::new(vec![Step::Send(wire[..10].to_vec()), Step::Silence]);
        let r = attempt(&mut link, &mut ram, FAST).unwrap_err();
        assert_eq!((r.nak, r.a), (Nak::Timeout, 10));
    }

    #[test]
    fn a_false_magic_in_noise_is_a_header_error_then_the_real_header_is_found() {
        let k = kernel(500, 0);
        let (_, wire) = transfer(&k, "", BootargsMode::Keep);
        let mut noise = b"xxSDCL".to_vec();
        noise.extend_from_slice(&[0x55; HEADER_LEN - 4]);
        let mut link = ScriptLink::new(vec![Step::Send(noise), Step::Send(wire)]);
        let mut ram = FakeRam::new();
        serve(&mut link, &mut ram, FAST);
        let r = link.replies();
        assert!(r[1].starts_with("@@SDCL NAK 1 header checksum"), "{r:#?}");
        assert!(r.last().unwrap().starts_with("@@SDCL ACK DATA"));
        assert_eq!(link.unread(), 0);
    }

    #[test]
    fn payloads_that_are_not_the_announced_image_are_refused() {
        let mut ram = FakeRam::new();
        // No Image magic (the header is forged to match the bytes).
        let mut k = kernel(256, 0);
        k[IMAGE_MAGIC_OFFSET] = b'X';
        let h = Header {
            mode: BootargsMode::Keep,
            kernel_len: 256,
            image_size: 256,
            bootargs_len: 0,
            payload_crc: crate::crc32::crc32(&k),
        };
        let mut wire = h.encode().to_vec();
        wire.extend_from_slice(&k);
        let mut link = ScriptLink::new(vec![Step::Send(wire)]);
        assert_eq!(
            attempt(&mut link, &mut ram, FAST).unwrap_err().nak,
            Nak::NotAnImage
        );
        // image_size in the Image differs from the header's.
        let k = kernel(256, 0x9000);
        let h = Header {
            image_size: 0x8000,
            ..Header::for_payload(&k, b"", BootargsMode::Keep).unwrap()
        };
        let mut wire = h.encode().to_vec();
        wire.extend_from_slice(&k);
        let mut link = ScriptLink::new(vec![Step::Send(wire)]);
        let r = attempt(&mut link, &mut ram, FAST).unwrap_err();
        assert_eq!((r.nak, r.a, r.b), (Nak::SizeMismatch, 0x9000, 0x8000));
    }

    #[test]
    fn image_headers_the_loader_cannot_honour_are_refused() {
        let mut ram = FakeRam::new();
        let refused = |ram: &mut FakeRam, edit: fn(&mut [u8])| {
            let mut k = kernel(4096, 0);
            edit(&mut k);
            let (_, wire) = transfer(&k, "", BootargsMode::Keep);
            let mut link = ScriptLink::new(vec![Step::Send(wire)]);
            let r = attempt(&mut link, ram, FAST).map(|_| ()).unwrap_err();
            protocol::write_nak(&mut link, &r);
            (r, link.replies().last().unwrap().clone())
        };
        // text_offset 0x80000 (Linux's before 3.17): the slot would be short by that much and
        // the entry point wrong.
        let (r, line) = refused(&mut ram, |k| {
            k[8..16].copy_from_slice(&0x8_0000u64.to_le_bytes())
        });
        assert_eq!((r.nak, r.a, r.b), (Nak::ImageHeader, 0x8_0000, 0xa));
        assert!(line.contains("text_offset 0x80000, flags 0xa"), "{line}");
        // A big-endian kernel.
        let (r, _) = refused(&mut ram, |k| k[24] |= 1);
        assert_eq!((r.nak, r.b), (Nak::ImageHeader, 0xb));
        // A reserved flag.
        let (r, _) = refused(&mut ram, |k| k[24] |= 0x10);
        assert_eq!((r.nak, r.b), (Nak::ImageHeader, 0x1a));
        // Every page size and either placement is fine.
        for flags in [0u8, 0x2, 0x4, 0x6, 0x8, 0xe] {
            let mut k = kernel(4096, 0);
            k[24] = flags;
            let (_, wire) = transfer(&k, "", BootargsMode::Keep);
            let mut link = ScriptLink::new(vec![Step::Send(wire)]);
            assert!(
                attempt(&mut link, &mut ram, FAST).is_ok(),
                "flags {flags:#x}"
            );
        }
    }

    #[test]
    fn uart_errors_explain_a_bad_checksum_or_a_stall() {
        let k = kernel(800, 0);
        let (_, good) = transfer(&k, "", BootargsMode::Keep);
        let mut bad = good.clone();
        bad[HEADER_LEN + 100] ^= 1;
        let mut ram = FakeRam::new();
        let mut link = ScriptLink::new(vec![
            Step::Send(bad[..HEADER_LEN + 100].to_vec()),
            Step::LineErrors(2),
            Step::Send(bad[HEADER_LEN + 100..].to_vec()),
        ]);
        let r = attempt(&mut link, &mut ram, FAST).unwrap_err();
        assert_eq!((r.nak, r.a, r.b), (Nak::LineError, 2, 800));
        // Lost bytes (an overrun) leave the loader waiting: the stall names the errors.
        let mut link = ScriptLink::new(vec![
            Step::Send(good[..HEADER_LEN + 100].to_vec()),
            Step::LineErrors(1),
            Step::Send(good[HEADER_LEN + 101..].to_vec()),
            Step::Silence,
        ]);
        let r = attempt(&mut link, &mut ram, FAST).unwrap_err();
        assert_eq!((r.nak, r.a, r.b), (Nak::LineError, 1, 799));
        // Errors before the payload (noise while idle) do not count against it.
        let mut link = ScriptLink::new(vec![Step::LineErrors(3), Step::Send(good.clone())]);
        assert!(attempt(&mut link, &mut ram, FAST).is_ok());
        // An overrun right as ACK HEADER goes out loses the first payload byte: named too.
        let mut link = ScriptLink::new(vec![
            Step::Send(good[..HEADER_LEN].to_vec()),
            Step::Send(good[HEADER_LEN + 1..].to_vec()),
            Step::Silence,
        ]);
        link.errors_during_ack = 1;
        let r = attempt(&mut link, &mut ram, FAST).unwrap_err();
        assert_eq!((r.nak, r.a, r.b), (Nak::LineError, 1, 799));
    }

    #[test]
    fn bootargs_the_tree_cannot_take_are_refused_before_the_ack() {
        let k = kernel(300, 0);
        let (_, wire) = transfer(&k, "a\0b", BootargsMode::Replace);
        let mut link = ScriptLink::new(vec![Step::Send(wire)]);
        let mut ram = FakeRam::new();
        let r = attempt(&mut link, &mut ram, FAST).unwrap_err();
        assert_eq!(r.nak, Nak::DeviceTree);
        protocol::write_nak(&mut link, &r);
        assert!(link
            .replies()
            .last()
            .unwrap()
            .contains("the boot arguments contain a NUL byte"));
        assert!(!link.replies().iter().any(|l| l.contains("ACK DATA")));
    }

    #[test]
    fn noise_that_never_stops_still_repeats_ready() {
        let noise = vec![b'.'; 2 * READY_EVERY_NOISE as usize + 10];
        let (readies, timeouts) = readies_before(vec![Step::Send(noise)]);
        assert_eq!(readies, 3);
        assert!(timeouts.is_empty());
    }

    #[test]
    fn boot_arguments_sent_in_keep_mode_are_said_to_be_ignored() {
        let k = kernel(300, 0);
        let (_, wire) = transfer(&k, "ktest=*", BootargsMode::Keep);
        let mut link = ScriptLink::new(vec![Step::Send(wire)]);
        let mut ram = FakeRam::new();
        let loaded = attempt(&mut link, &mut ram, FAST).unwrap();
        assert_eq!(loaded.dtb, ram.dtb_at);
        assert!(link.lines().contains(
            &"chainloader: keeping the device tree's bootargs; ignoring the 7 bytes of boot \
              arguments sent"
                .to_string()
        ));
    }

    #[test]
    fn silence_repeats_ready() {
        let (readies, timeouts) = readies_before(vec![Step::Silence, Step::Silence]);
        assert_eq!(readies, 3);
        assert_eq!(timeouts, [FAST.ready_every_ms; 2]);
    }

    /// The READY lines the loader prints over `steps` and then a good transfer, and the
    /// timeouts it read with.
    fn readies_before(mut steps: Vec<Step>) -> (usize, Vec<u32>) {
        let k = kernel(100, 0);
        let (_, wire) = transfer(&k, "", BootargsMode::Keep);
        steps.push(Step::Send(wire));
        let mut link = ScriptLink::new(steps);
        serve(&mut link, &mut FakeRam::new(), FAST);
        let readies = link
            .replies()
            .iter()
            .filter(|l| l.contains("READY"))
            .count();
        (readies, link.timeouts)
    }
}
