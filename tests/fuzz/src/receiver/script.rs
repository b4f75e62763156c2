//! What the host side of the serial line does, as a program read from fuzz bytes: noise,
//! silences, receive errors, and transfers (header and payload as a host sends them, built
//! here with an independent CRC-32) with one fault each: a flipped bit, a wrong checksum, a cut
//! (the host restarting mid-transfer), lengths at and beyond the limits, a wrong version, a
//! payload that is not the announced Image, boot arguments the tree cannot take.
//!
//! A transfer after a pause (two silences: whatever the loader was doing, it timed out and
//! is scanning for a header again) has an expected verdict, computed here from the rules of
//! the protocol, not from the loader's code.

use shootdown_chainloader::fdt_edit::GROWTH;
use shootdown_chainloader::protocol::{
    Nak, HEADER_LEN, IMAGE_MAGIC, IMAGE_MAGIC_OFFSET, IMAGE_SIZE_OFFSET, MAX_BOOTARGS, MAX_KERNEL,
    MIN_KERNEL,
};

use super::board::{GAP, PAGE};
use crate::input::{Input, Output};

/// One step of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Bytes that are not a transfer (up to 63).
    Noise(Vec<u8>),
    /// The line is quiet: the loader's next read times out.
    Silence,
    /// The next bytes arrive with this many receive errors flagged.
    LineErrors(u8),
    Transfer(Transfer),
}

/// A transfer and its one fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Two silences first, so the loader is scanning when it starts.
    pub pause: bool,
    /// The kernel file is `MIN_KERNEL + len % 4033` bytes.
    pub len: u16,
    /// The Image's `image_size` in pages (0: the field is 0, meaning the file's length).
    pub image_pages: u8,
    /// 0 keep, 1 append, 2 replace the device tree's boot arguments (the rest: keep).
    pub mode: u8,
    /// Boot arguments (each byte mapped to printable ASCII).
    pub bootargs: Vec<u8>,
    pub fault: Fault,
}

/// What goes wrong with a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// One bit of the header (byte `at % 28`).
    HeaderBit {
        at: u8,
        bit: u8,
    },
    /// One bit of the payload (byte `at % payload`).
    PayloadBit {
        at: u16,
        bit: u8,
    },
    /// The header announces another payload CRC.
    PayloadCrc,
    /// Only the first `at % transfer` bytes are sent: the host gave up, or restarted.
    Cut {
        at: u16,
    },
    /// A length at or beyond a limit ([`Limit`]).
    Limit(u8),
    /// Protocol version 2, or unknown flags.
    Version {
        flags: bool,
    },
    /// No `ARM\x64` magic.
    NotAnImage,
    /// The header's `image_size` differs from the Image's.
    SizeMismatch,
    /// `text_offset` 0x80000, big endian, or a reserved flag.
    ImageHeader(u8),
    /// A NUL in the boot arguments.
    NulInArgs,
}

/// The lengths [`Fault::Limit`] tries.
const LIMITS: u8 = 9;

/// What the loader must answer a transfer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Refuse(Nak),
}

/// A transfer as bytes on the wire, and the verdict it must get if the loader starts it while
/// scanning (`None`: it depends on what follows).
pub struct Wire {
    pub bytes: Vec<u8>,
    pub expect: Option<Verdict>,
}

impl Op {
    pub fn read(input: &mut Input<'_>) -> Op {
        match input.below(4) {
            0 => {
                let n = input.below(64);
                Op::Noise((0..n).map(|_| input.u8()).collect())
            }
            1 => Op::Silence,
            2 => Op::LineErrors(1 + input.below(4) as u8),
            _ => Op::Transfer(Transfer::read(input)),
        }
    }

    pub fn write(&self, o: &mut Output) {
        match self {
            Op::Noise(b) => {
                o.u8(0).u8(b.len() as u8).bytes(b);
            }
            Op::Silence => {
                o.u8(1);
            }
            Op::LineErrors(n) => {
                o.u8(2).u8(n - 1);
            }
            Op::Transfer(t) => {
                o.u8(3);
                t.write(o);
            }
        }
    }
}

impl Transfer {
    /// A clean transfer after a pause.
    pub fn clean(len: u16, mode: u8, bootargs: &[u8]) -> Self {
        Transfer {
            pause: true,
            len,
            image_pages: 0,
            mode,
            bootargs: bootargs.to_vec(),
            fault: Fault::None,
        }
    }

    fn read(input: &mut Input<'_>) -> Self {
        let pause = input.bool();
        let len = input.u16();
        let image_pages = input.u8();
        let mode = input.u8();
        let n = input.below(64);
        let bootargs = (0..n).map(|_| input.u8()).collect();
        let fault = match input.below(11) {
            0 => Fault::None,
            1 => Fault::HeaderBit {
                at: input.u8(),
                bit: input.u8(),
            },
            2 => Fault::PayloadBit {
                at: input.u16(),
                bit: input.u8(),
            },
            3 => Fault::PayloadCrc,
            4 => Fault::Cut { at: input.u16() },
            5 => Fault::Limit(input.u8()),
            6 => Fault::Version {
                flags: input.bool(),
            },
            7 => Fault::NotAnImage,
            8 => Fault::SizeMismatch,
            9 => Fault::ImageHeader(input.u8()),
            _ => Fault::NulInArgs,
        };
        Transfer {
            pause,
            len,
            image_pages,
            mode,
            bootargs,
            fault,
        }
    }

    fn write(&self, o: &mut Output) {
        o.u8(u8::from(self.pause))
            .u16(self.len)
            .u8(self.image_pages)
            .u8(self.mode)
            .u8(self.bootargs.len() as u8)
            .bytes(&self.bootargs);
        match self.fault {
            Fault::None => o.u8(0),
            Fault::HeaderBit { at, bit } => o.u8(1).u8(at).u8(bit),
            Fault::PayloadBit { at, bit } => o.u8(2).u16(at).u8(bit),
            Fault::PayloadCrc => o.u8(3),
            Fault::Cut { at } => o.u8(4).u16(at),
            Fault::Limit(v) => o.u8(5).u8(v),
            Fault::Version { flags } => o.u8(6).u8(u8::from(flags)),
            Fault::NotAnImage => o.u8(7),
            Fault::SizeMismatch => o.u8(8),
            Fault::ImageHeader(v) => o.u8(9).u8(v),
            Fault::NulInArgs => o.u8(10),
        };
    }

    /// The header fields, the kernel file and the boot arguments before the fault.
    fn parts(&self) -> (Fields, Vec<u8>, Vec<u8>) {
        let len = MIN_KERNEL as usize + usize::from(self.len) % 4033;
        let mut kernel: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        kernel[8..16].fill(0); // text_offset
        kernel[24..32].copy_from_slice(&0xau64.to_le_bytes()); // LE, 4 KiB, anywhere
        let image_size = u64::from(self.image_pages) * PAGE;
        kernel[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&image_size.to_le_bytes());
        kernel[IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4].copy_from_slice(&IMAGE_MAGIC);
        let bootargs: Vec<u8> = self.bootargs.iter().map(|b| 0x20 + b % 95).collect();
        let fields = Fields {
            version: 1,
            flags: u16::from(self.mode % 3),
            kernel_len: len as u32,
            image_size: if image_size == 0 {
                len as u32
            } else {
                image_size as u32
            },
            bootargs_len: bootargs.len() as u32,
            payload_crc: 0,
        };
        (fields, kernel, bootargs)
    }

    /// The bytes the host sends and the verdict they must get.
    pub fn wire(&self, dtb_len: usize) -> Wire {
        let (mut f, mut kernel, mut bootargs) = self.parts();
        let mut expect = Verdict::Accept;
        // Refused at the header: the host waits for ACK HEADER, so the payload never goes.
        let mut header_only = false;
        match self.fault {
            Fault::None
            | Fault::Cut { .. }
            | Fault::HeaderBit { .. }
            | Fault::PayloadBit { .. } => {}
            Fault::PayloadCrc => {}
            Fault::Limit(v) => {
                let (fields, e) = limit(v % LIMITS, f, &mut kernel, &mut bootargs);
                f = fields;
                expect = e;
                header_only = e != Verdict::Accept;
            }
            Fault::Version { flags } => {
                if flags {
                    f.flags = 3;
                } else {
                    f.version = 2;
                }
                expect = Verdict::Refuse(Nak::Version);
                header_only = true;
            }
            Fault::NotAnImage => {
                kernel[IMAGE_MAGIC_OFFSET] ^= 0x20;
                expect = Verdict::Refuse(Nak::NotAnImage);
            }
            Fault::SizeMismatch => {
                f.image_size += PAGE as u32;
                expect = Verdict::Refuse(Nak::SizeMismatch);
            }
            Fault::ImageHeader(v) => {
                match v % 3 {
                    0 => kernel[8..16].copy_from_slice(&0x8_0000u64.to_le_bytes()),
                    1 => kernel[24] |= 1,
                    _ => kernel[24] |= 0x10,
                }
                expect = Verdict::Refuse(Nak::ImageHeader);
            }
            Fault::NulInArgs => {
                bootargs.push(0);
                f.bootargs_len += 1;
                if f.flags != 0 {
                    expect = Verdict::Refuse(Nak::DeviceTree);
                }
            }
        }
        let mut payload = kernel;
        payload.extend_from_slice(&bootargs);
        f.payload_crc = crc32(&payload);
        if self.fault == Fault::PayloadCrc {
            f.payload_crc ^= 1;
            expect = Verdict::Refuse(Nak::PayloadCrc);
        }
        // Everything else must fit where the board has room.
        if expect == Verdict::Accept && !fits(&f, dtb_len) {
            expect = Verdict::Refuse(Nak::TooBig);
            header_only = true;
        }
        let mut bytes = f.encode().to_vec();
        if !header_only {
            bytes.extend_from_slice(&payload);
        }
        let expect = match self.fault {
            Fault::HeaderBit { at, bit } => {
                let at = usize::from(at) % HEADER_LEN;
                bytes[at] ^= 1 << (bit % 8);
                // A broken magic is no header at all: what follows decides.
                (at >= 4).then_some(Verdict::Refuse(Nak::HeaderCrc))
            }
            Fault::PayloadBit { at, bit } if !header_only => {
                let at = HEADER_LEN + usize::from(at) % payload.len();
                bytes[at] ^= 1 << (bit % 8);
                Some(Verdict::Refuse(Nak::PayloadCrc))
            }
            Fault::Cut { at } => {
                bytes.truncate(usize::from(at) % bytes.len());
                None
            }
            _ => Some(expect),
        };
        Wire { bytes, expect }
    }
}

/// Lengths at and beyond the limits: the header's (`MIN_KERNEL`, `MAX_BOOTARGS`,
/// `MAX_KERNEL`) and the board's (the free gap).
fn limit(v: u8, mut f: Fields, kernel: &mut Vec<u8>, bootargs: &mut Vec<u8>) -> (Fields, Verdict) {
    let refuse = Verdict::Refuse;
    let set_image_size = |kernel: &mut Vec<u8>, f: &mut Fields, size: u64| {
        kernel[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&size.to_le_bytes());
        f.image_size = size as u32;
    };
    let e = match v {
        0 => {
            f.kernel_len = MIN_KERNEL - 1;
            refuse(Nak::BadLength)
        }
        1 => {
            f.bootargs_len = MAX_BOOTARGS as u32 + 1;
            refuse(Nak::BadLength)
        }
        2 => {
            bootargs.resize(MAX_BOOTARGS, b'x');
            f.bootargs_len = MAX_BOOTARGS as u32;
            Verdict::Accept
        }
        3 => {
            f.image_size = MAX_KERNEL as u32;
            refuse(Nak::TooBig)
        }
        4 => {
            f.image_size = MAX_KERNEL as u32 + 1;
            refuse(Nak::TooBig)
        }
        5 => {
            f.kernel_len = u32::MAX;
            refuse(Nak::TooBig)
        }
        6 => {
            // Exactly the free gap (less the device tree copy's room when there is one).
            f.flags = 0;
            bootargs.clear();
            f.bootargs_len = 0;
            set_image_size(kernel, &mut f, GAP);
            Verdict::Accept
        }
        7 => {
            set_image_size(kernel, &mut f, GAP + PAGE);
            refuse(Nak::TooBig)
        }
        _ => {
            // The shortest kernel: just the Image header.
            kernel.truncate(MIN_KERNEL as usize);
            if f.image_size == f.kernel_len {
                f.image_size = MIN_KERNEL;
            }
            f.kernel_len = MIN_KERNEL;
            Verdict::Accept
        }
    };
    (f, e)
}

/// Whether the board's one free gap holds the kernel and the device tree copy.
fn fits(f: &Fields, dtb_len: usize) -> bool {
    let footprint = u64::from(f.kernel_len).max(u64::from(f.image_size));
    let room = match f.flags {
        0 => 0,
        _ => (dtb_len + f.bootargs_len as usize + GROWTH) as u64,
    };
    footprint.next_multiple_of(PAGE) + room <= GAP
}

/// The header's fields, written here rather than with the loader's encoder.
#[derive(Debug, Clone, Copy)]
struct Fields {
    version: u16,
    flags: u16,
    kernel_len: u32,
    image_size: u32,
    bootargs_len: u32,
    payload_crc: u32,
}

impl Fields {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(b"SDCL");
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.kernel_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.image_size.to_le_bytes());
        b[16..20].copy_from_slice(&self.bootargs_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32(&b[..24]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// CRC-32 (IEEE 802.3, reflected, bit by bit): the reference the loader's table-driven one
/// is checked against.
pub fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |mut crc, &b| {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                crc >> 1 ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
        crc
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_crc_is_crc32() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn programs_round_trip() {
        let ops = [
            Op::Noise(b"xSDC".to_vec()),
            Op::Silence,
            Op::LineErrors(3),
            Op::Transfer(Transfer {
                fault: Fault::PayloadBit { at: 700, bit: 3 },
                ..Transfer::clean(900, 1, b"ktest=*")
            }),
        ];
        let mut o = Output::default();
        for op in &ops {
            op.write(&mut o);
        }
        let mut input = Input::new(&o.0);
        for op in &ops {
            assert_eq!(&Op::read(&mut input), op);
        }
        assert!(input.is_empty());
    }
}
