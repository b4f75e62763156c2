//! The wire format, shared by the loader and the host side (`harness chainboot`).
//!
//! Host to loader: one binary [`Header`] (28 bytes, little endian), then the payload: the
//! kernel image followed by the boot arguments. Loader to host: ASCII lines that start with
//! [`LINE_PREFIX`], mixed with ordinary log lines a person can read on a terminal:
//!
//! ```text
//! @@SDCL READY 1 max=0x3c00000                  waiting for a header (every 2 s of silence or noise)
//! @@SDCL ACK HEADER kernel=0x400000 dtb=0x4400000   the header is good, send the payload
//! @@SDCL ACK DATA crc=0x1234abcd                the payload is good, jumping to it
//! @@SDCL NAK 6 payload checksum 0x.., expected 0x..   refused; a READY line follows
//! ```
//!
//! The header layout (offsets in bytes):
//!
//! | offset | field | meaning |
//! |---|---|---|
//! | 0 | magic | `SDCL` |
//! | 4 | version | u16, [`VERSION`] |
//! | 6 | flags | u16, bits 1:0 = [`BootargsMode`], the others 0 (keep mode sends no boot arguments: the loader says it ignores any) |
//! | 8 | kernel_len | u32, bytes of kernel image in the payload |
//! | 12 | image_size | u32, the Image header's `image_size` (its footprint including bss) |
//! | 16 | bootargs_len | u32, bytes of boot arguments after the kernel (no NUL) |
//! | 20 | payload_crc | u32, CRC-32 of kernel and boot arguments |
//! | 24 | header_crc | u32, CRC-32 of bytes 0..24 |

use crate::crc32::crc32;

/// First bytes of a header: where the loader resynchronises in a noisy byte stream.
pub const MAGIC: [u8; 4] = *b"SDCL";
/// Protocol version.
pub const VERSION: u16 = 1;
/// Bytes in a header.
pub const HEADER_LEN: usize = 28;
/// Every protocol line starts with this; anything else on the port is a log line.
pub const LINE_PREFIX: &str = "@@SDCL ";
/// Most boot-argument bytes a header may announce.
pub const MAX_BOOTARGS: usize = 1024;
/// Largest kernel footprint accepted whatever the RAM (the kernel's early code maps at most
/// 16 MiB of image; this leaves room for growth while refusing absurd lengths early).
pub const MAX_KERNEL: u64 = 64 << 20;
/// Smallest kernel: an arm64 Image header is 64 bytes (Linux booting.rst section 4).
pub const MIN_KERNEL: u32 = 64;

/// Offset and value of the arm64 Image magic (`ARM\x64`, booting.rst section 4).
pub const IMAGE_MAGIC_OFFSET: usize = 56;
/// The arm64 Image magic.
pub const IMAGE_MAGIC: [u8; 4] = *b"ARM\x64";
/// Offset of the Image header's little-endian u64 `image_size`.
pub const IMAGE_SIZE_OFFSET: usize = 16;
/// Offset of the Image header's little-endian u64 `text_offset` (booting.rst section 4): the
/// kernel expects to sit this far above a 2 MiB-aligned base. The loader enters the kernel at
/// the slot's base and sizes the slot from its base, so it takes only 0.
pub const TEXT_OFFSET_OFFSET: usize = 8;
/// Offset of the Image header's little-endian u64 `flags` (booting.rst section 4).
pub const IMAGE_FLAGS_OFFSET: usize = 24;
/// `flags` bit 0: the kernel is big endian (booting.rst section 4). The loader writes the
/// device tree and enters the kernel little endian.
pub const IMAGE_FLAG_BE: u64 = 1 << 0;
/// `flags` bits 1-2 (page size) and 3 (placement) are the defined ones; 4-63 are reserved
/// (booting.rst section 4), and a bit the loader does not know may ask for something it does
/// not do. The page size is the kernel's own business (the loader maps nothing). Placement 0
/// asks for a base as close to the start of RAM as possible: [`crate::placement`] takes the
/// lowest free slot, so both values are honoured.
pub const IMAGE_FLAGS_KNOWN: u64 = 0xf;

/// What the loader does with the device tree's `/chosen/bootargs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootargsMode {
    /// Leave the device tree as the firmware (or QEMU) made it.
    Keep,
    /// Append ours (after a space) to what is there: the kernel takes the last `key=value`.
    Append,
    /// Replace whatever is there with ours.
    Replace,
}

impl BootargsMode {
    const fn bits(self) -> u16 {
        match self {
            BootargsMode::Keep => 0,
            BootargsMode::Append => 1,
            BootargsMode::Replace => 2,
        }
    }
}

/// Why the loader refused a transfer: the number on the wire and a short summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nak {
    /// The header's own checksum does not match.
    HeaderCrc,
    /// Unknown protocol version or flags.
    Version,
    /// The kernel does not fit in free RAM.
    TooBig,
    /// A length is out of range (kernel shorter than an Image header, boot arguments too long).
    BadLength,
    /// The host stopped sending in the middle of a header or payload.
    Timeout,
    /// The payload's checksum does not match.
    PayloadCrc,
    /// The payload is not an arm64 Image (no `ARM\x64` magic).
    NotAnImage,
    /// The Image header's `image_size` differs from the one announced.
    SizeMismatch,
    /// The UART reported receive errors (overrun, framing, parity, break).
    LineError,
    /// The boot arguments could not be written into the device tree.
    DeviceTree,
    /// The Image header asks for what the loader does not do: a non-zero `text_offset`, a
    /// big-endian kernel, or reserved flags.
    ImageHeader,
}

impl Nak {
    const ALL: [Nak; 11] = [
        Nak::HeaderCrc,
        Nak::Version,
        Nak::TooBig,
        Nak::BadLength,
        Nak::Timeout,
        Nak::PayloadCrc,
        Nak::NotAnImage,
        Nak::SizeMismatch,
        Nak::LineError,
        Nak::DeviceTree,
        Nak::ImageHeader,
    ];

    /// The number on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Nak::HeaderCrc => 1,
            Nak::Version => 2,
            Nak::TooBig => 3,
            Nak::BadLength => 4,
            Nak::Timeout => 5,
            Nak::PayloadCrc => 6,
            Nak::NotAnImage => 7,
            Nak::SizeMismatch => 8,
            Nak::LineError => 9,
            Nak::DeviceTree => 10,
            Nak::ImageHeader => 11,
        }
    }

    /// The reason for a wire number.
    pub fn from_code(code: u8) -> Option<Nak> {
        Self::ALL.into_iter().find(|n| n.code() == code)
    }

    /// Whether sending the same thing again can succeed (a line problem, not a bad request).
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            Nak::HeaderCrc | Nak::Timeout | Nak::PayloadCrc | Nak::LineError
        )
    }
}

/// A refusal with the two numbers its message quotes (see [`write_nak`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub nak: Nak,
    pub a: u64,
    pub b: u64,
}

impl Refusal {
    pub const fn new(nak: Nak, a: u64, b: u64) -> Self {
        Self { nak, a, b }
    }
}

/// A transfer announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub mode: BootargsMode,
    pub kernel_len: u32,
    pub image_size: u32,
    pub bootargs_len: u32,
    pub payload_crc: u32,
}

impl Header {
    /// The header for sending `kernel` (an arm64 Image) with `bootargs`.
    /// `None` if the kernel is not an Image or a length does not fit the format.
    pub fn for_payload(kernel: &[u8], bootargs: &[u8], mode: BootargsMode) -> Option<Header> {
        let image_size = image_size(kernel)?;
        let mut crc = crate::crc32::Crc32::new();
        crc.update(kernel);
        crc.update(bootargs);
        Some(Header {
            mode,
            kernel_len: u32::try_from(kernel.len()).ok()?,
            image_size: u32::try_from(image_size).ok()?,
            bootargs_len: u32::try_from(bootargs.len()).ok()?,
            payload_crc: crc.value(),
        })
    }

    /// Bytes after the header.
    pub const fn payload_len(&self) -> u64 {
        self.kernel_len as u64 + self.bootargs_len as u64
    }

    /// Bytes the kernel occupies once running: its file or its `image_size`, whichever is
    /// larger.
    pub fn footprint(&self) -> u64 {
        u64::from(self.kernel_len).max(u64::from(self.image_size))
    }

    /// The wire form.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&self.mode.bits().to_le_bytes());
        b[8..12].copy_from_slice(&self.kernel_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.image_size.to_le_bytes());
        b[16..20].copy_from_slice(&self.bootargs_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32(&b[..24]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Checks and reads a header (checksum first: a header torn by line noise is reported as
    /// such, not as whatever its garbled fields would say). Lengths are checked here only
    /// against the format's limits; whether the kernel fits is the loader's question.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, Refusal> {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let want = u32_at(24);
        let got = crc32(&b[..24]);
        if b[0..4] != MAGIC || got != want {
            return Err(Refusal::new(Nak::HeaderCrc, got.into(), want.into()));
        }
        let (version, flags) = (u16_at(4), u16_at(6));
        let mode = match flags {
            0 => BootargsMode::Keep,
            1 => BootargsMode::Append,
            2 => BootargsMode::Replace,
            _ => return Err(Refusal::new(Nak::Version, version.into(), flags.into())),
        };
        if version != VERSION {
            return Err(Refusal::new(Nak::Version, version.into(), flags.into()));
        }
        let h = Header {
            mode,
            kernel_len: u32_at(8),
            image_size: u32_at(12),
            bootargs_len: u32_at(16),
            payload_crc: u32_at(20),
        };
        if h.kernel_len < MIN_KERNEL || h.bootargs_len as usize > MAX_BOOTARGS {
            return Err(Refusal::new(
                Nak::BadLength,
                h.kernel_len.into(),
                h.bootargs_len.into(),
            ));
        }
        if h.footprint() > MAX_KERNEL {
            return Err(Refusal::new(Nak::TooBig, h.footprint(), MAX_KERNEL));
        }
        Ok(h)
    }
}

/// The `image_size` of an arm64 Image, or `None` if `kernel` is not one. An `image_size` of 0
/// (images older than Linux 3.17) means "unknown": the file length is used.
pub fn image_size(kernel: &[u8]) -> Option<u64> {
    let magic = kernel.get(IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4)?;
    if magic != IMAGE_MAGIC {
        return None;
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(kernel.get(IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8)?);
    Some(match u64::from_le_bytes(size) {
        0 => kernel.len() as u64,
        n => n,
    })
}

/// Checks the Image header fields the loader relies on besides the magic and `image_size`
/// (booting.rst section 4): `text_offset` 0, little endian, no reserved flag. The refusal
/// quotes `text_offset` and `flags`. Callers check the magic first (at offset 56, so the fields
/// are there); a field past the end of `kernel` reads as 0.
pub fn check_image_header(kernel: &[u8]) -> Result<(), Refusal> {
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        if let Some(s) = kernel.get(i..i + 8) {
            b.copy_from_slice(s);
        }
        u64::from_le_bytes(b)
    };
    let text_offset = u64_at(TEXT_OFFSET_OFFSET);
    let flags = u64_at(IMAGE_FLAGS_OFFSET);
    if text_offset != 0 || flags & IMAGE_FLAG_BE != 0 || flags & !IMAGE_FLAGS_KNOWN != 0 {
        return Err(Refusal::new(Nak::ImageHeader, text_offset, flags));
    }
    Ok(())
}

/// A protocol line from the loader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// Waiting for a header; `max` is the largest kernel footprint that fits.
    Ready { version: u16, max: u64 },
    /// The header is accepted: the kernel goes to `kernel`, the device tree it gets is at `dtb`.
    AckHeader { kernel: u64, dtb: u64 },
    /// The payload arrived intact; the loader jumps to it now.
    AckData { crc: u32 },
    /// Refused: the reason (`None` for a code this side does not know) and the loader's text.
    Nak {
        code: u8,
        reason: Option<Nak>,
        message: &'a str,
    },
}

impl<'a> Reply<'a> {
    /// Reads a line (without its line ending). `None` if it is not a protocol line, or a
    /// protocol line this side cannot read (reported by the caller as noise).
    pub fn parse(line: &'a str) -> Option<Reply<'a>> {
        let rest = line.strip_prefix(LINE_PREFIX)?;
        let mut words = rest.split(' ');
        match words.next()? {
            "READY" => {
                let version = words.next()?.parse().ok()?;
                let max = hex(words.next()?.strip_prefix("max=")?)?;
                Some(Reply::Ready { version, max })
            }
            "ACK" => match words.next()? {
                "HEADER" => {
                    let kernel = hex(words.next()?.strip_prefix("kernel=")?)?;
                    let dtb = hex(words.next()?.strip_prefix("dtb=")?)?;
                    Some(Reply::AckHeader { kernel, dtb })
                }
                "DATA" => {
                    let crc = u32::try_from(hex(words.next()?.strip_prefix("crc=")?)?).ok()?;
                    Some(Reply::AckData { crc })
                }
                _ => None,
            },
            "NAK" => {
                // A bare `NAK` (cut short by noise, or a kernel printing the line) has no
                // code to act on: noise, like any other line this side cannot read.
                let (code, message) = rest.strip_prefix("NAK ")?.split_once(' ')?;
                let code: u8 = code.parse().ok()?;
                Some(Reply::Nak {
                    code,
                    reason: Nak::from_code(code),
                    message,
                })
            }
            _ => None,
        }
    }
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// Where the loader's lines go (the UART; a buffer in tests). No `core::fmt`: the loader
/// stays small and needs no relocated format tables.
pub trait Sink {
    fn put(&mut self, bytes: &[u8]);

    fn put_str(&mut self, s: &str) {
        self.put(s.as_bytes());
    }

    /// `0x` and lowercase hex digits, no leading zeros.
    fn put_hex(&mut self, v: u64) {
        let mut buf = [0u8; 18];
        let mut i = buf.len();
        let mut v = v;
        loop {
            i -= 1;
            buf[i] = b"0123456789abcdef"[(v & 0xf) as usize];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        i -= 2;
        buf[i] = b'0';
        buf[i + 1] = b'x';
        self.put(&buf[i..]);
    }

    /// Decimal.
    fn put_dec(&mut self, v: u64) {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut v = v;
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&buf[i..]);
    }

    fn end_line(&mut self) {
        self.put(b"\r\n");
    }
}

#[cfg(test)]
impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// `@@SDCL READY 1 max=0x...`
pub fn write_ready(out: &mut dyn Sink, max: u64) {
    out.put_str(LINE_PREFIX);
    out.put_str("READY ");
    out.put_dec(VERSION.into());
    out.put_str(" max=");
    out.put_hex(max);
    out.end_line();
}

/// `@@SDCL ACK HEADER kernel=0x... dtb=0x...`
pub fn write_ack_header(out: &mut dyn Sink, kernel: u64, dtb: u64) {
    out.put_str(LINE_PREFIX);
    out.put_str("ACK HEADER kernel=");
    out.put_hex(kernel);
    out.put_str(" dtb=");
    out.put_hex(dtb);
    out.end_line();
}

/// `@@SDCL ACK DATA crc=0x...`
pub fn write_ack_data(out: &mut dyn Sink, crc: u32) {
    out.put_str(LINE_PREFIX);
    out.put_str("ACK DATA crc=");
    out.put_hex(crc.into());
    out.end_line();
}

/// `@@SDCL NAK <code> <message>`, the message saying what was wrong in numbers.
pub fn write_nak(out: &mut dyn Sink, r: &Refusal) {
    out.put_str(LINE_PREFIX);
    out.put_str("NAK ");
    out.put_dec(r.nak.code().into());
    out.put_str(" ");
    match r.nak {
        Nak::HeaderCrc => {
            out.put_str("header checksum ");
            out.put_hex(r.a);
            out.put_str(", expected ");
            out.put_hex(r.b);
            out.put_str(" (line noise, or not a header)");
        }
        Nak::Version => {
            out.put_str("unsupported protocol version ");
            out.put_dec(r.a);
            out.put_str(" or flags ");
            out.put_hex(r.b);
            out.put_str(" (this loader speaks version ");
            out.put_dec(VERSION.into());
            out.put_str(")");
        }
        Nak::TooBig => {
            out.put_str("kernel too big: it needs ");
            out.put_dec(r.a);
            out.put_str(" bytes, at most ");
            out.put_dec(r.b);
            out.put_str(" fit");
        }
        Nak::BadLength => {
            out.put_str("bad length: kernel ");
            out.put_dec(r.a);
            out.put_str(" bytes (at least 64), boot arguments ");
            out.put_dec(r.b);
            out.put_str(" bytes (at most 1024)");
        }
        Nak::Timeout => {
            out.put_str("timed out waiting for data after ");
            out.put_dec(r.a);
            out.put_str(" of ");
            out.put_dec(r.b);
            out.put_str(" bytes");
        }
        Nak::PayloadCrc => {
            out.put_str("payload checksum ");
            out.put_hex(r.a);
            out.put_str(", expected ");
            out.put_hex(r.b);
        }
        Nak::NotAnImage => out.put_str("not an arm64 Image (no ARM\\x64 magic at offset 56)"),
        Nak::SizeMismatch => {
            out.put_str("the Image header says image_size ");
            out.put_dec(r.a);
            out.put_str(", the transfer header ");
            out.put_dec(r.b);
        }
        Nak::LineError => {
            out.put_dec(r.a);
            out.put_str(" UART receive errors (overrun, framing, parity or break) after ");
            out.put_dec(r.b);
            out.put_str(" bytes: check the wiring and the baud rate");
        }
        Nak::DeviceTree => {
            out.put_str("cannot write the boot arguments into the device tree (");
            out.put_str(crate::fdt_edit::EditError::from_code(r.a).describe());
            out.put_str(")");
        }
        Nak::ImageHeader => {
            out.put_str("the Image header says text_offset ");
            out.put_hex(r.a);
            out.put_str(", flags ");
            out.put_hex(r.b);
            out.put_str(": this loader needs text_offset 0, little endian, no reserved flags");
        }
    }
    out.end_line();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize, image_size: u64) -> Vec<u8> {
        let mut k = vec![0u8; len];
        k[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&image_size.to_le_bytes());
        k[IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4].copy_from_slice(&IMAGE_MAGIC);
        k
    }

    #[test]
    fn header_round_trips_and_covers_the_payload() {
        let k = image(4096, 0x20000);
        let h = Header::for_payload(&k, b"ktest=boot.*", BootargsMode::Append).unwrap();
        assert_eq!(h.kernel_len, 4096);
        assert_eq!(h.image_size, 0x20000);
        assert_eq!(h.footprint(), 0x20000);
        assert_eq!(h.payload_len(), 4096 + 12);
        let mut all = k.clone();
        all.extend_from_slice(b"ktest=boot.*");
        assert_eq!(h.payload_crc, crc32(&all));
        assert_eq!(Header::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn non_images_get_no_header() {
        assert_eq!(
            Header::for_payload(&[0u8; 4096], b"", BootargsMode::Keep),
            None
        );
        assert_eq!(
            Header::for_payload(&[0u8; 10], b"", BootargsMode::Keep),
            None
        );
        // image_size 0: the file length is the footprint.
        assert_eq!(image_size(&image(100, 0)), Some(100));
    }

    #[test]
    fn any_corrupted_header_byte_is_a_header_checksum_refusal() {
        let h = Header::for_payload(&image(128, 0), b"", BootargsMode::Keep).unwrap();
        let good = h.encode();
        for i in 0..HEADER_LEN {
            let mut b = good;
            b[i] ^= 0x40;
            assert_eq!(
                Header::decode(&b).unwrap_err().nak,
                Nak::HeaderCrc,
                "byte {i}"
            );
        }
    }

    /// A header with a valid checksum over whatever fields we want.
    fn forged(fields: impl FnOnce(&mut [u8; HEADER_LEN])) -> [u8; HEADER_LEN] {
        let mut b = Header::for_payload(&image(128, 0), b"", BootargsMode::Keep)
            .unwrap()
            .encode();
        fields(&mut b);
        let crc = crc32(&b[..24]);
        b[24..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn bad_fields_are_refused_with_their_values() {
        let r = Header::decode(&forged(|b| b[4] = 2)).unwrap_err();
        assert_eq!((r.nak, r.a), (Nak::Version, 2));
        let r = Header::decode(&forged(|b| b[6] = 3)).unwrap_err();
        assert_eq!((r.nak, r.b), (Nak::Version, 3));
        let r = Header::decode(&forged(|b| b[8..12].copy_from_slice(&63u32.to_le_bytes())))
            .unwrap_err();
        assert_eq!((r.nak, r.a), (Nak::BadLength, 63));
        let r = Header::decode(&forged(|b| {
            b[16..20].copy_from_slice(&1025u32.to_le_bytes())
        }))
        .unwrap_err();
        assert_eq!((r.nak, r.b), (Nak::BadLength, 1025));
        let r = Header::decode(&forged(|b| {
            b[12..16].copy_from_slice(&(MAX_KERNEL as u32 + 1).to_le_bytes())
        }))
        .unwrap_err();
        assert_eq!((r.nak, r.a, r.b), (Nak::TooBig, MAX_KERNEL + 1, MAX_KERNEL));
    }

    fn line(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.ends_with("\r\n"), "{s:?}");
        s.trim_end().to_string()
    }

    #[test]
    fn reply_lines_round_trip() {
        let l = line(|o| write_ready(o, 0x3c0_0000));
        assert_eq!(l, "@@SDCL READY 1 max=0x3c00000");
        assert_eq!(
            Reply::parse(&l),
            Some(Reply::Ready {
                version: 1,
                max: 0x3c0_0000
            })
        );
        let l = line(|o| write_ack_header(o, 0x40_0000, 0x2eff_2000));
        assert_eq!(
            Reply::parse(&l),
            Some(Reply::AckHeader {
                kernel: 0x40_0000,
                dtb: 0x2eff_2000
            })
        );
        let l = line(|o| write_ack_data(o, 0xcbf4_3926));
        assert_eq!(Reply::parse(&l), Some(Reply::AckData { crc: 0xcbf4_3926 }));
        assert_eq!(Reply::parse("Shootdown 0.1.0 (aarch64)"), None);
        assert_eq!(Reply::parse("@@SDCL WHAT"), None);
    }

    #[test]
    fn a_nak_cut_short_is_noise_not_a_panic() {
        for l in [
            "@@SDCL NAK",
            "@@SDCL NAK ",
            "@@SDCL NAK 6",
            "@@SDCL NAK x y",
        ] {
            assert_eq!(Reply::parse(l), None, "{l:?}");
        }
        // The shortest readable refusal: a code and an empty message.
        assert!(matches!(
            Reply::parse("@@SDCL NAK 6 "),
            Some(Reply::Nak {
                code: 6,
                message: "",
                ..
            })
        ));
    }

    #[test]
    fn every_refusal_has_a_readable_line() {
        for nak in Nak::ALL {
            let l = line(|o| write_nak(o, &Refusal::new(nak, 1234, 0xabcd)));
            let Some(Reply::Nak {
                code,
                reason,
                message,
            }) = Reply::parse(&l)
            else {
                panic!("{l}")
            };
            assert_eq!((code, reason), (nak.code(), Some(nak)));
            assert!(message.len() > 10, "{l}");
        }
        let l = line(|o| write_nak(o, &Refusal::new(Nak::TooBig, 70_000_000, 62_914_560)));
        assert_eq!(
            l,
            "@@SDCL NAK 3 kernel too big: it needs 70000000 bytes, at most 62914560 fit"
        );
        // A code from a newer loader is still a refusal.
        assert!(matches!(
            Reply::parse("@@SDCL NAK 99 something new"),
            Some(Reply::Nak {
                code: 99,
                reason: None,
                ..
            })
        ));
    }

    #[test]
    fn numbers_print_without_fmt() {
        let mut o = Vec::new();
        o.put_hex(0);
        o.put_str(" ");
        o.put_hex(u64::MAX);
        o.put_str(" ");
        o.put_dec(0);
        o.put_str(" ");
        o.put_dec(u64::MAX);
        assert_eq!(
            String::from_utf8(o).unwrap(),
            "0x0 0xffffffffffffffff 0 18446744073709551615"
        );
    }
}
