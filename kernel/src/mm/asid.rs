//! Address space identifiers (ASIDs).

use core::fmt;

/// The width of the ASIDs the CPU implements (`ID_AA64MMFR0_EL1.ASIDBits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsidBits {
    /// 8-bit ASIDs: 256 values.
    Eight,
    /// 16-bit ASIDs: 65536 values (`TCR_EL1.AS` = 1).
    Sixteen,
}

impl AsidBits {
    /// Number of bits.
    pub const fn bits(self) -> u32 {
        match self {
            AsidBits::Eight => 8,
            AsidBits::Sixteen => 16,
        }
    }

    /// Number of distinct ASIDs.
    pub const fn count(self) -> usize {
        1 << self.bits()
    }
}

/// A hardware ASID, valid for the width it was created for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Asid(u16);

impl Asid {
    /// ASID 0: reserved for the kernel's own (global) mappings, never handed to an address
    /// space.
    pub const KERNEL: Asid = Asid(0);

    /// `value` as an ASID of width `bits`, or `None` if it does not fit.
    pub const fn new(value: u16, bits: AsidBits) -> Option<Self> {
        if (value as usize) < bits.count() {
            Some(Asid(value))
        } else {
            None
        }
    }

    /// The raw value.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Asid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "asid {}", self.0)
    }
}
