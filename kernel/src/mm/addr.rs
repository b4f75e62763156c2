//! Typed physical and virtual addresses.
//!
//! Both are plain `u64` newtypes so that a physical address can never be handed to something that
//! expects a virtual one (and the other way round) without saying so.

use core::fmt;

/// Log2 of the translation granule: 4 KiB pages everywhere (CPU stage 1 and the SMMU).
pub const PAGE_SHIFT: u32 = 12;
/// The translation granule in bytes.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw value.
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// The raw value as a `usize` (addresses are 64-bit on every target we build for).
            pub const fn as_usize(self) -> usize {
                self.0 as usize
            }

            /// True if the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }

            /// True if the address is on a page boundary.
            pub const fn is_page_aligned(self) -> bool {
                self.is_aligned(PAGE_SIZE as u64)
            }

            /// Rounds down to a multiple of `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }

            /// Rounds up to a multiple of `align` (a power of two), or `None` on overflow.
            pub const fn checked_align_up(self, align: u64) -> Option<Self> {
                match self.0.checked_add(align - 1) {
                    Some(v) => Some(Self(v & !(align - 1))),
                    None => None,
                }
            }

            /// `self + offset`, or `None` on overflow.
            pub const fn checked_add(self, offset: u64) -> Option<Self> {
                match self.0.checked_add(offset) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// The offset of the address within its page.
            pub const fn page_offset(self) -> u64 {
                self.0 & (PAGE_SIZE as u64 - 1)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:#x}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

address_type!(
    /// A physical (output) address: what the page tables and the SMMU's tables hold.
    PhysAddr,
    "PA:"
);
address_type!(
    /// A virtual (input) address: what the CPU and, through shared virtual addressing, the
    /// device use.
    VirtAddr,
    "VA:"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_helpers() {
        let a = VirtAddr(0x1234);
        assert!(!a.is_page_aligned());
        assert_eq!(a.align_down(0x1000), VirtAddr(0x1000));
        assert_eq!(a.checked_align_up(0x1000), Some(VirtAddr(0x2000)));
        assert_eq!(VirtAddr(u64::MAX).checked_align_up(0x1000), None);
        assert_eq!(a.page_offset(), 0x234);
        assert_eq!(PhysAddr(u64::MAX).checked_add(1), None);
    }
}
