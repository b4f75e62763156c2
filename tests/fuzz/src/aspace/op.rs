//! The operations of the address-space target, decoded from (and encodable to) fuzz bytes.
//!
//! Addresses are built from 1 GiB, 2 MiB and 4 KiB steps inside a small window, so that ranges
//! collide, share tables and land on (or next to) block boundaries often; lengths likewise. A
//! few operations take raw 64-bit values to reach the argument checks.

use core::fmt;

use shootdown::mm::aspace::{Backing, Placement};
use shootdown::mm::pgtable::descriptor::{MemoryType, Permissions};
use shootdown::mm::{PhysAddr, VirtAddr};

use crate::input::{Input, Output};

const PAGE: u64 = 4096;
const MIB2: u64 = 2 << 20;
const GIB: u64 = 1 << 30;

/// Where the fuzzed virtual addresses live: 4 GiB from 256 GiB up (1 GiB aligned, inside the
/// user half).
pub const VA_WINDOW: u64 = 0x40_0000_0000;
/// Where physical backings live: far above the arena, below the SMMU model's 44-bit output
/// size; never backed by memory (devices reach it by translation only).
pub const PA_WINDOW: u64 = 0x80_0000_0000;
/// Physical backings near the top of the 48-bit output range (beyond the SMMU's 44 bits).
pub const PA_HIGH: u64 = (1 << 48) - 4 * MIB2;

/// A virtual address: `VA_WINDOW + gig GiB + block × 2 MiB + page × 4 KiB` (page signed, so
/// the pages just below a block boundary are as likely as those above it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub gig: u8,
    pub block: u8,
    pub page: i8,
}

impl Addr {
    pub fn va(self) -> u64 {
        let base = VA_WINDOW + u64::from(self.gig % 4) * GIB + u64::from(self.block % 16) * MIB2;
        base.wrapping_add_signed(i64::from(self.page) * PAGE as i64)
    }

    fn read(i: &mut Input<'_>) -> Self {
        Addr {
            gig: i.u8(),
            block: i.u8(),
            page: i.i8(),
        }
    }

    fn write(self, o: &mut Output) {
        o.u8(self.gig).u8(self.block).i8(self.page);
    }
}

/// A length: `count` units of 4 KiB, 2 MiB or 1 GiB, plus `adjust` pages (at least 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Len {
    pub unit: u8,
    pub count: u8,
    pub adjust: i8,
}

impl Len {
    pub fn bytes(self) -> usize {
        let units = match self.unit % 3 {
            0 => u64::from(self.count) * PAGE,
            1 => u64::from(self.count % 8) * MIB2,
            _ => u64::from(self.count % 3) * GIB,
        };
        units.saturating_add_signed(i64::from(self.adjust) * PAGE as i64) as usize
    }

    fn read(i: &mut Input<'_>) -> Self {
        Len {
            unit: i.u8(),
            count: i.u8(),
            adjust: i.i8(),
        }
    }

    fn write(self, o: &mut Output) {
        o.u8(self.unit).u8(self.count).i8(self.adjust);
    }
}

/// Permissions from one byte: write, exec, user in bits 0-2; bits 3 and 4 both set makes the
/// (unencodable) not-readable kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms(pub u8);

impl Perms {
    pub const RW: Perms = Perms(0b001);
    pub const RO: Perms = Perms(0b000);
    pub const USER_RW: Perms = Perms(0b101);

    pub fn get(self) -> Permissions {
        Permissions {
            read: self.0 & 0x18 != 0x18,
            write: self.0 & 1 != 0,
            exec: self.0 & 2 != 0,
            user: self.0 & 4 != 0,
        }
    }
}

/// A physical backing: `PA_WINDOW + gig GiB + block × 2 MiB + page × 4 KiB` (or from
/// [`PA_HIGH`] when bit 6 of `kind` is set), memory type from `kind % 3`; `kind` < 128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phys {
    pub kind: u8,
    pub gig: u8,
    pub block: u8,
    pub page: u8,
}

impl Phys {
    pub fn pa(self) -> u64 {
        let base = if self.kind & 0x40 != 0 {
            PA_HIGH
        } else {
            PA_WINDOW + u64::from(self.gig % 8) * GIB
        };
        base + u64::from(self.block % 32) * MIB2 + u64::from(self.page) * PAGE
    }

    pub fn memory(self) -> MemoryType {
        match self.kind % 3 {
            0 => MemoryType::Normal,
            1 => MemoryType::Device,
            _ => MemoryType::NormalNonCacheable,
        }
    }
}

/// What a new region is backed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingSpec {
    Anonymous,
    Physical(Phys),
}

impl BackingSpec {
    pub fn get(self) -> Backing {
        match self {
            BackingSpec::Anonymous => Backing::Anonymous,
            BackingSpec::Physical(p) => Backing::Physical(PhysAddr(p.pa()), p.memory()),
        }
    }
}

/// Fixed or anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Fixed(Addr),
    Anywhere,
}

impl Place {
    pub fn get(self) -> Placement {
        match self {
            Place::Fixed(a) => Placement::Fixed(VirtAddr(a.va())),
            Place::Anywhere => Placement::Anywhere,
        }
    }
}

/// One step of a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `mmap`.
    Map {
        at: Place,
        len: Len,
        perms: Perms,
        backing: BackingSpec,
    },
    /// `munmap`, or `munmap_nonblocking`.
    Unmap {
        va: Addr,
        len: Len,
        nonblocking: bool,
    },
    /// `mprotect`.
    Protect { va: Addr, len: Len, perms: Perms },
    /// `discard` (drop the pages, keep the region).
    Discard { va: Addr, len: Len },
    /// `populate` (map the dropped pages again).
    Populate { va: Addr, len: Len },
    /// The device writes `value` (repeated) into the tag word of the page at `va`.
    DmaWrite { va: Addr, value: u8 },
    /// The device reads the tag word of the page at `va`.
    DmaRead { va: Addr },
    /// The next operation may allocate at most `n % 64` frames.
    Budget(u8),
    /// Registers (true) or unregisters (false) a subscriber that refuses non-blockable
    /// invalidations.
    Refuser(bool),
    /// Drops the last user: release, teardown; then a fresh address space and SMMU context.
    Teardown,
    /// `munmap` with raw arguments.
    RawUnmap { va: u64, len: u64 },
    /// Fixed read-write `mmap` of normal physical memory with raw arguments.
    RawMap { va: u64, len: u64, pa: u64 },
}

const OPS: u8 = 12;

impl Op {
    /// Decodes the next operation.
    pub fn read(i: &mut Input<'_>) -> Op {
        match i.u8() % OPS {
            0 | 1 => Op::Map {
                at: if i.u8() % 4 == 0 {
                    Place::Anywhere
                } else {
                    Place::Fixed(Addr::read(i))
                },
                len: Len::read(i),
                perms: Perms(i.u8()),
                backing: match i.u8() {
                    k if k % 2 == 0 => BackingSpec::Anonymous,
                    k => BackingSpec::Physical(Phys {
                        kind: k >> 1,
                        gig: i.u8(),
                        block: i.u8(),
                        page: i.u8(),
                    }),
                },
            },
            2 => Op::Unmap {
                va: Addr::read(i),
                len: Len::read(i),
                nonblocking: i.bool(),
            },
            3 => Op::Protect {
                va: Addr::read(i),
                len: Len::read(i),
                perms: Perms(i.u8()),
            },
            4 => Op::Discard {
                va: Addr::read(i),
                len: Len::read(i),
            },
            5 => Op::Populate {
                va: Addr::read(i),
                len: Len::read(i),
            },
            6 => Op::DmaWrite {
                va: Addr::read(i),
                value: i.u8(),
            },
            7 => Op::DmaRead { va: Addr::read(i) },
            8 => Op::Budget(i.u8()),
            9 => Op::Refuser(i.bool()),
            10 => match i.u8() % 3 {
                0 => Op::Teardown,
                1 => Op::RawUnmap {
                    va: i.u64(),
                    len: i.u64(),
                },
                _ => Op::RawMap {
                    va: i.u64(),
                    len: i.u64(),
                    pa: i.u64(),
                },
            },
            _ => Op::Unmap {
                va: Addr::read(i),
                len: Len::read(i),
                nonblocking: false,
            },
        }
    }

    /// Encodes the operation so that [`Op::read`] returns it.
    pub fn write(&self, o: &mut Output) {
        match *self {
            Op::Map {
                at,
                len,
                perms,
                backing,
            } => {
                o.u8(0);
                match at {
                    Place::Anywhere => {
                        o.u8(0);
                    }
                    Place::Fixed(a) => {
                        o.u8(1);
                        a.write(o);
                    }
                }
                len.write(o);
                o.u8(perms.0);
                match backing {
                    BackingSpec::Anonymous => {
                        o.u8(0);
                    }
                    BackingSpec::Physical(p) => {
                        o.u8(p.kind << 1 | 1).u8(p.gig).u8(p.block).u8(p.page);
                    }
                }
            }
            Op::Unmap {
                va,
                len,
                nonblocking,
            } => {
                o.u8(2);
                va.write(o);
                len.write(o);
                o.u8(u8::from(nonblocking));
            }
            Op::Protect { va, len, perms } => {
                o.u8(3);
                va.write(o);
                len.write(o);
                o.u8(perms.0);
            }
            Op::Discard { va, len } => {
                o.u8(4);
                va.write(o);
                len.write(o);
            }
            Op::Populate { va, len } => {
                o.u8(5);
                va.write(o);
                len.write(o);
            }
            Op::DmaWrite { va, value } => {
                o.u8(6);
                va.write(o);
                o.u8(value);
            }
            Op::DmaRead { va } => {
                o.u8(7);
                va.write(o);
            }
            Op::Budget(n) => {
                o.u8(8).u8(n);
            }
            Op::Refuser(on) => {
                o.u8(9).u8(u8::from(on));
            }
            Op::Teardown => {
                o.u8(10).u8(0);
            }
            Op::RawUnmap { va, len } => {
                o.u8(10).u8(1).u64(va).u64(len);
            }
            Op::RawMap { va, len, pa } => {
                o.u8(10).u8(2).u64(va).u64(len).u64(pa);
            }
        }
    }

    /// The virtual range the operation works on, if it has one (for warming and checking the
    /// device's view around it).
    pub fn range(&self) -> Option<(u64, u64)> {
        let r = |va: Addr, len: Len| (va.va(), va.va().saturating_add(len.bytes() as u64));
        match *self {
            Op::Map {
                at: Place::Fixed(a),
                len,
                ..
            } => Some(r(a, len)),
            Op::Unmap { va, len, .. }
            | Op::Protect { va, len, .. }
            | Op::Discard { va, len }
            | Op::Populate { va, len } => Some(r(va, len)),
            Op::RawUnmap { va, len } | Op::RawMap { va, len, .. } => {
                Some((va, va.saturating_add(len)))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |va: Addr, len: Len| format!("{:#x}+{:#x}", va.va(), len.bytes());
        match *self {
            Op::Map {
                at,
                len,
                perms,
                backing,
            } => {
                let at = match at {
                    Place::Fixed(a) => format!("{:#x}", a.va()),
                    Place::Anywhere => "anywhere".into(),
                };
                write!(f, "mmap({at}, {:#x}, {}, ", len.bytes(), perms.get())?;
                match backing {
                    BackingSpec::Anonymous => write!(f, "anonymous)"),
                    BackingSpec::Physical(p) => {
                        write!(f, "physical {:#x} {:?})", p.pa(), p.memory())
                    }
                }
            }
            Op::Unmap {
                va,
                len,
                nonblocking,
            } => write!(
                f,
                "munmap{}({})",
                if nonblocking { "_nonblocking" } else { "" },
                range(va, len)
            ),
            Op::Protect { va, len, perms } => {
                write!(f, "mprotect({}, {})", range(va, len), perms.get())
            }
            Op::Discard { va, len } => write!(f, "discard({})", range(va, len)),
            Op::Populate { va, len } => write!(f, "populate({})", range(va, len)),
            Op::DmaWrite { va, value } => write!(f, "dma_write({:#x}, {value:#04x})", va.va()),
            Op::DmaRead { va } => write!(f, "dma_read({:#x})", va.va()),
            Op::Budget(n) => write!(f, "budget({})", n % 64),
            Op::Refuser(on) => write!(f, "refuser({on})"),
            Op::Teardown => f.write_str("teardown"),
            Op::RawUnmap { va, len } => write!(f, "munmap({va:#x}, {len:#x})"),
            Op::RawMap { va, len, pa } => write!(f, "mmap({va:#x}, {len:#x}, phys {pa:#x})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_decodes_to_what_was_encoded() {
        let a = Addr {
            gig: 1,
            block: 3,
            page: -1,
        };
        let l = Len {
            unit: 1,
            count: 2,
            adjust: 3,
        };
        let p = Phys {
            kind: 0x44,
            gig: 0,
            block: 4,
            page: 0,
        };
        let ops = [
            Op::Map {
                at: Place::Fixed(a),
                len: l,
                perms: Perms::USER_RW,
                backing: BackingSpec::Physical(p),
            },
            Op::Map {
                at: Place::Anywhere,
                len: l,
                perms: Perms::RO,
                backing: BackingSpec::Anonymous,
            },
            Op::Unmap {
                va: a,
                len: l,
                nonblocking: true,
            },
            Op::Protect {
                va: a,
                len: l,
                perms: Perms(0x1f),
            },
            Op::Discard { va: a, len: l },
            Op::Populate { va: a, len: l },
            Op::DmaWrite { va: a, value: 9 },
            Op::DmaRead { va: a },
            Op::Budget(3),
            Op::Refuser(true),
            Op::Teardown,
            Op::RawUnmap { va: 1, len: 2 },
            Op::RawMap {
                va: 1,
                len: 2,
                pa: 3,
            },
        ];
        let mut o = Output::default();
        for op in &ops {
            op.write(&mut o);
        }
        let mut i = Input::new(&o.0);
        for op in &ops {
            assert_eq!(Op::read(&mut i), *op);
        }
        assert!(i.is_empty());
        assert_eq!(a.va(), VA_WINDOW + GIB + 3 * MIB2 - PAGE);
        assert_eq!(l.bytes() as u64, 2 * MIB2 + 3 * PAGE);
        assert_eq!(p.pa(), PA_HIGH + 4 * MIB2);
        assert_eq!(p.memory(), MemoryType::NormalNonCacheable);
    }
}
