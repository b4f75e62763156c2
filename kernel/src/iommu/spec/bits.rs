//! Bit fields of the SMMU's in-memory structures (stream table entries, context descriptors,
//! commands, event records). A field is a position and a width in one 64-bit word, written as the spec
//! writes it (`Field::bits(51, 6)` for `[51:6]`), so a layout is a table of constants and the
//! encoder and the decoder cannot disagree about a mask.

/// Bits `[hi:lo]` of a 64-bit word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    lo: u32,
    width: u32,
}

impl Field {
    /// Bits `[hi:lo]` (inclusive, as in the spec's tables).
    pub(crate) const fn bits(hi: u32, lo: u32) -> Self {
        assert!(lo <= hi && hi < 64, "a field lies within one 64-bit word");
        Self {
            lo,
            width: hi - lo + 1,
        }
    }

    /// The single bit `n`.
    pub(crate) const fn bit(n: u32) -> Self {
        Self::bits(n, n)
    }

    /// The field's bits, right-aligned.
    const fn mask(self) -> u64 {
        u64::MAX >> (64 - self.width)
    }

    /// The largest value the field holds.
    pub(crate) const fn max(self) -> u64 {
        self.mask()
    }

    /// The field's value in `word`.
    pub(crate) const fn get(self, word: u64) -> u64 {
        (word >> self.lo) & self.mask()
    }

    /// `value` in the field's position, truncated to its width.
    pub(crate) const fn put(self, value: u64) -> u64 {
        (value & self.mask()) << self.lo
    }

    /// A one-bit field set or clear.
    pub(crate) const fn flag(self, on: bool) -> u64 {
        self.put(on as u64)
    }

    /// True if any bit of the field is set in `word`.
    pub(crate) const fn is_set(self, word: u64) -> bool {
        self.get(word) != 0
    }

    /// The field's bits in place: for fields that hold an address (`word & ADDR.in_place()`).
    pub(crate) const fn in_place(self) -> u64 {
        self.mask() << self.lo
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_the_specs_hi_lo_notation() {
        let asid = Field::bits(63, 48);
        assert_eq!(asid.put(0x1234), 0x1234 << 48);
        assert_eq!(asid.get(0xabcd_0000_0000_0000), 0xabcd);
        assert_eq!(asid.put(0x1_1234), 0x1234 << 48, "truncated to the width");
        let v = Field::bit(31);
        assert_eq!(v.flag(true), 1 << 31);
        assert_eq!(v.flag(false), 0);
        assert!(v.is_set(1 << 31) && !v.is_set(!(1 << 31)));
        assert_eq!(Field::bits(51, 6).in_place(), 0x000f_ffff_ffff_ffc0);
        assert_eq!(Field::bits(63, 0).get(u64::MAX), u64::MAX);
    }
}
