//! VMSAv8-64 stage-1 translation table descriptors, 4 KiB granule, 48-bit VA and PA.
//!
//! Bit positions come from the Arm Architecture Reference Manual (DDI 0487K.a):
//! - D8.3 "Translation table descriptor formats" (D8.3.1 table descriptors, D8.3.2 block and
//!   page descriptors): valid/type bits, output address, lower and upper attributes;
//! - D8.4 "Memory access control": AP\[2:1\], PXN/UXN, the access flag;
//! - D8.6 "Memory region attributes" and D19.2 `MAIR_EL1`: AttrIndx and the MAIR encodings.
//!
//! The public surface is typed ([`MemoryType`], [`Permissions`], [`Attributes`]); raw bits stay
//! in this module.

use core::fmt;

use crate::mm::addr::{PhysAddr, VirtAddr, PAGE_SHIFT};

/// Number of descriptors in one translation table (4 KiB / 8 bytes).
pub const ENTRIES_PER_TABLE: usize = 512;

/// Bits of input address translated by the tables: T0SZ = 16, four levels of 9 bits + 12.
pub const VA_BITS: u32 = 48;

/// Bits of output address a descriptor can hold without FEAT_LPA/LPA2 (D8.3: OA\[47:12\]).
pub const PA_BITS: u32 = 48;

// ---- descriptor fields (D8.3) ------------------------------------------------------------

/// Bit 0: the descriptor is valid.
const VALID: u64 = 1 << 0;
/// Bit 1: at levels 0-2, 1 = table and 0 = block; at level 3, 1 = page (0 is reserved).
const TYPE_TABLE_OR_PAGE: u64 = 1 << 1;
/// Bits \[4:2\]: AttrIndx, an index into `MAIR_EL1`.
const ATTR_INDEX_SHIFT: u32 = 2;
const ATTR_INDEX_MASK: u64 = 0b111 << ATTR_INDEX_SHIFT;
/// Bit 6: AP\[1\], access from EL0 permitted.
const AP_EL0: u64 = 1 << 6;
/// Bit 7: AP\[2\], read-only (at every exception level that has access).
const AP_READ_ONLY: u64 = 1 << 7;
/// Bits \[9:8\]: SH, shareability. 0b11 = Inner Shareable.
const SH_INNER: u64 = 0b11 << 8;
const SH_MASK: u64 = 0b11 << 8;
/// Bit 10: AF, the access flag. Without hardware AF management (FEAT_HAFDBS) an access through
/// a descriptor with AF = 0 takes an Access flag fault (D8.4, "The Access flag").
const AF: u64 = 1 << 10;
/// Bit 11: nG, not global: the TLB entry is tagged with the current ASID.
const NOT_GLOBAL: u64 = 1 << 11;
/// Bit 53: PXN, privileged execute-never.
const PXN: u64 = 1 << 53;
/// Bit 54: UXN (XN in single-privilege regimes), unprivileged execute-never.
const UXN: u64 = 1 << 54;
/// Bits \[58:55\]: reserved for software use in block and page descriptors. Unused by the
/// engine; left for the address-space layer (e.g. dirty or special-mapping tracking).
pub const SOFTWARE_BITS_MASK: u64 = 0b1111 << 55;

/// Output address field of a table or page descriptor: OA\[47:12\].
const OA_MASK_4K: u64 = ((1 << PA_BITS) - 1) & !((1 << PAGE_SHIFT) - 1);

/// Every bit the engine writes into a leaf descriptor besides the output address.
const LEAF_ATTR_MASK: u64 =
    ATTR_INDEX_MASK | AP_EL0 | AP_READ_ONLY | SH_MASK | AF | NOT_GLOBAL | PXN | UXN;

// ---- MAIR (D8.6, D19.2 MAIR_EL1) ---------------------------------------------------------

/// AttrIndx of Normal memory, inner and outer Write-Back non-transient, read- and
/// write-allocate.
pub const MAIR_INDEX_NORMAL: u8 = 0;
/// AttrIndx of Normal memory, inner and outer Non-cacheable.
pub const MAIR_INDEX_NORMAL_NC: u8 = 1;
/// AttrIndx of Device-nGnRE memory (MMIO).
pub const MAIR_INDEX_DEVICE_NGNRE: u8 = 2;

/// `MAIR_EL1` Attr<n> encodings (D19.2): 0xFF Normal WB RW-allocate (inner and outer), 0x44
/// Normal Non-cacheable (inner and outer), 0x04 Device-nGnRE.
const MAIR_ATTR_NORMAL_WB: u64 = 0xff;
const MAIR_ATTR_NORMAL_NC: u64 = 0x44;
const MAIR_ATTR_DEVICE_NGNRE: u64 = 0x04;

/// The value the kernel writes to `MAIR_EL1`; the indices above select its bytes.
pub const MAIR_VALUE: u64 = (MAIR_ATTR_NORMAL_WB << (8 * MAIR_INDEX_NORMAL as u64))
    | (MAIR_ATTR_NORMAL_NC << (8 * MAIR_INDEX_NORMAL_NC as u64))
    | (MAIR_ATTR_DEVICE_NGNRE << (8 * MAIR_INDEX_DEVICE_NGNRE as u64));

/// A translation table level. With a 4 KiB granule and 48-bit VA the walk starts at level 0
/// (VA\[47:39\]) and ends at level 3 (VA\[20:12\]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Level 0: 512 GiB per entry; table descriptors only.
    L0 = 0,
    /// Level 1: 1 GiB per entry; table or block.
    L1 = 1,
    /// Level 2: 2 MiB per entry; table or block.
    L2 = 2,
    /// Level 3: 4 KiB per entry; pages only.
    L3 = 3,
}

impl Level {
    /// The level of the root table.
    pub const ROOT: Level = Level::L0;

    /// Log2 of the VA range one entry at this level covers.
    pub const fn shift(self) -> u32 {
        PAGE_SHIFT + 9 * (3 - self as u32)
    }

    /// Bytes covered by one entry at this level (the block or page size).
    pub const fn entry_size(self) -> u64 {
        1 << self.shift()
    }

    /// The index of `va` in a table at this level.
    pub const fn index(self, va: u64) -> usize {
        ((va >> self.shift()) as usize) & (ENTRIES_PER_TABLE - 1)
    }

    /// The level below, or `None` at level 3.
    pub const fn next(self) -> Option<Level> {
        match self {
            Level::L0 => Some(Level::L1),
            Level::L1 => Some(Level::L2),
            Level::L2 => Some(Level::L3),
            Level::L3 => None,
        }
    }

    /// True if a leaf (block or page) descriptor may sit at this level. A 4 KiB granule without
    /// FEAT_LPA2 has no level-0 blocks (D8.3.2).
    pub const fn can_hold_leaf(self) -> bool {
        !matches!(self, Level::L0)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "level {}", *self as u8)
    }
}

/// The memory type of a mapping, i.e. which `MAIR_EL1` attribute it selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryType {
    /// Normal memory, Write-Back cacheable, Inner Shareable: RAM.
    Normal,
    /// Normal memory, Non-cacheable (e.g. buffers shared with non-coherent devices).
    NormalNonCacheable,
    /// Device-nGnRE: MMIO registers. Never executable.
    Device,
}

impl MemoryType {
    /// The AttrIndx selecting this type in [`MAIR_VALUE`].
    pub const fn attr_index(self) -> u8 {
        match self {
            MemoryType::Normal => MAIR_INDEX_NORMAL,
            MemoryType::NormalNonCacheable => MAIR_INDEX_NORMAL_NC,
            MemoryType::Device => MAIR_INDEX_DEVICE_NGNRE,
        }
    }

    /// The type an AttrIndx selects, or `None` for an index [`MAIR_VALUE`] leaves undefined.
    pub const fn from_attr_index(index: u8) -> Option<Self> {
        match index {
            MAIR_INDEX_NORMAL => Some(MemoryType::Normal),
            MAIR_INDEX_NORMAL_NC => Some(MemoryType::NormalNonCacheable),
            MAIR_INDEX_DEVICE_NGNRE => Some(MemoryType::Device),
            _ => None,
        }
    }
}

/// Access permissions of a mapping.
///
/// `user` selects who owns the page: EL0 (`true`) or the kernel at EL1 (`false`). The other
/// exception level gets no access at all: user pages are never executable by the kernel (PXN),
/// kernel pages are never accessible from EL0.
///
/// Stage 1 cannot express a mapping that is not readable (AP gives read-write or read-only), so
/// `read: false` is rejected by [`Permissions::validate`]; "no access" is an unmapped page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Permissions {
    /// Loads are permitted. Must be `true`.
    pub read: bool,
    /// Stores are permitted.
    pub write: bool,
    /// Instruction fetches are permitted.
    pub exec: bool,
    /// The page belongs to EL0 (user) rather than EL1 (kernel).
    pub user: bool,
}

impl Permissions {
    /// Kernel read-only data.
    pub const KERNEL_RO: Permissions = Permissions::new(false, false, false);
    /// Kernel read-write data, not executable.
    pub const KERNEL_RW: Permissions = Permissions::new(true, false, false);
    /// Kernel text: read and execute.
    pub const KERNEL_RX: Permissions = Permissions::new(false, true, false);
    /// User read-only.
    pub const USER_RO: Permissions = Permissions::new(false, false, true);
    /// User read-write, not executable.
    pub const USER_RW: Permissions = Permissions::new(true, false, true);
    /// User read and execute.
    pub const USER_RX: Permissions = Permissions::new(false, true, true);

    /// Readable permissions with the given write, execute and owner choices.
    pub const fn new(write: bool, exec: bool, user: bool) -> Self {
        Permissions {
            read: true,
            write,
            exec,
            user,
        }
    }

    /// Checks that the permissions can be encoded in a stage-1 descriptor.
    pub const fn validate(self) -> Result<(), AttributeError> {
        if !self.read {
            return Err(AttributeError::NotReadable);
        }
        Ok(())
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |on: bool, c: char| if on { c } else { '-' };
        write!(
            f,
            "{}{}{} {}",
            flag(self.read, 'r'),
            flag(self.write, 'w'),
            flag(self.exec, 'x'),
            if self.user { "user" } else { "kernel" }
        )
    }
}

/// The attributes of a mapping: memory type and permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attributes {
    /// Which `MAIR_EL1` memory type the mapping uses.
    pub memory: MemoryType,
    /// Who may read, write and execute it.
    pub perms: Permissions,
}

impl Attributes {
    /// Attributes of a mapping.
    pub const fn new(memory: MemoryType, perms: Permissions) -> Self {
        Attributes { memory, perms }
    }

    /// Normal cacheable memory with `perms`.
    pub const fn normal(perms: Permissions) -> Self {
        Attributes::new(MemoryType::Normal, perms)
    }

    /// Kernel Device-nGnRE MMIO, read-write, never executable.
    pub const DEVICE: Attributes = Attributes::new(MemoryType::Device, Permissions::KERNEL_RW);

    /// Checks that the attributes can be encoded: readable, and no executable Device memory
    /// (D8.6: Device regions must be execute-never, or speculative instruction fetches may
    /// read them).
    pub const fn validate(self) -> Result<(), AttributeError> {
        if let Err(e) = self.perms.validate() {
            return Err(e);
        }
        if self.perms.exec && matches!(self.memory, MemoryType::Device) {
            return Err(AttributeError::ExecutableDevice);
        }
        Ok(())
    }
}

/// Attributes that stage 1 cannot (or must not) express.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttributeError {
    /// `read: false`: stage 1 has no write-only or execute-only encoding for our regimes.
    NotReadable,
    /// Device memory marked executable.
    ExecutableDevice,
}

impl fmt::Display for AttributeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttributeError::NotReadable => f.write_str("stage-1 mappings are always readable"),
            AttributeError::ExecutableDevice => f.write_str("device memory cannot be executable"),
        }
    }
}

/// What a descriptor is, decoded for a given level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescriptorKind {
    /// Bit 0 clear: no translation.
    Invalid,
    /// A table descriptor pointing at the next-level table.
    Table(PhysAddr),
    /// A block (level 1 or 2) or page (level 3) descriptor.
    Leaf(PhysAddr),
    /// An encoding this engine never writes: a level-0 block or a level-3 descriptor with
    /// bit 1 clear (both reserved, D8.3).
    Reserved,
}

/// One 64-bit stage-1 translation table descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Descriptor(u64);

impl Descriptor {
    /// The invalid descriptor (all zero).
    pub const INVALID: Descriptor = Descriptor(0);

    /// Wraps raw bits read from a table.
    pub const fn from_bits(bits: u64) -> Self {
        Descriptor(bits)
    }

    /// The raw bits to store in a table.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// True if bit 0 is set.
    pub const fn is_valid(self) -> bool {
        self.0 & VALID != 0
    }

    /// A table descriptor pointing at `next` (page aligned, below 2^48). The hierarchical
    /// APTable/XNTable/PXNTable/NSTable bits stay zero: permissions live in the leaves only, so
    /// that splitting and protecting never has to reason about inherited limits.
    pub const fn table(next: PhysAddr) -> Self {
        Descriptor((next.0 & OA_MASK_4K) | TYPE_TABLE_OR_PAGE | VALID)
    }

    /// A block (levels 1 and 2) or page (level 3) descriptor mapping `pa`, which must be
    /// aligned to `level.entry_size()`. At level 0 the result is a reserved encoding (see
    /// [`Level::can_hold_leaf`]); the engine never asks for one. `global` clears nG: the entry matches every ASID (kernel
    /// mappings). The access flag is set, so the first access does not fault.
    ///
    /// Normal memory is Inner Shareable; Device and Non-cacheable memory are always treated as
    /// Outer Shareable whatever SH says (D8.6), so SH is simply set the same everywhere.
    pub const fn leaf(level: Level, pa: PhysAddr, attrs: Attributes, global: bool) -> Self {
        let type_bits = match level {
            Level::L3 => TYPE_TABLE_OR_PAGE | VALID,
            _ => VALID,
        };
        let mut bits = (pa.0 & OA_MASK_4K & !(level.entry_size() - 1)) | type_bits;
        bits |= (attrs.memory.attr_index() as u64) << ATTR_INDEX_SHIFT;
        bits |= SH_INNER | AF;
        if !global {
            bits |= NOT_GLOBAL;
        }
        Descriptor(bits).with_permissions(attrs.perms)
    }

    /// Decodes the descriptor as found in a table at `level`.
    pub const fn kind(self, level: Level) -> DescriptorKind {
        if !self.is_valid() {
            return DescriptorKind::Invalid;
        }
        let address = PhysAddr(self.0 & OA_MASK_4K);
        let table_or_page = self.0 & TYPE_TABLE_OR_PAGE != 0;
        match (level, table_or_page) {
            (Level::L3, true) => DescriptorKind::Leaf(address),
            (Level::L3, false) | (Level::L0, false) => DescriptorKind::Reserved,
            (_, true) => DescriptorKind::Table(address),
            (_, false) => DescriptorKind::Leaf(PhysAddr(address.0 & !(level.entry_size() - 1))),
        }
    }

    /// The attributes of a leaf descriptor, or `None` if its AttrIndx is not one of ours.
    pub const fn attributes(self) -> Option<Attributes> {
        let index = ((self.0 & ATTR_INDEX_MASK) >> ATTR_INDEX_SHIFT) as u8;
        let memory = match MemoryType::from_attr_index(index) {
            Some(m) => m,
            None => return None,
        };
        Some(Attributes {
            memory,
            perms: self.permissions(),
        })
    }

    /// The permissions of a leaf descriptor.
    pub const fn permissions(self) -> Permissions {
        let user = self.0 & AP_EL0 != 0;
        let exec = if user {
            self.0 & UXN == 0
        } else {
            self.0 & PXN == 0
        };
        Permissions {
            read: true,
            write: self.0 & AP_READ_ONLY == 0,
            exec,
            user,
        }
    }

    /// The same leaf with its permissions replaced (AP\[2:1\], PXN, UXN; D8.4).
    ///
    /// User pages are always PXN: the kernel never executes EL0 memory (and the architecture
    /// treats EL0-writable memory as PXN anyway). Kernel pages are always UXN.
    pub const fn with_permissions(self, perms: Permissions) -> Self {
        let mut bits = self.0 & !(AP_EL0 | AP_READ_ONLY | PXN | UXN);
        if perms.user {
            bits |= AP_EL0 | PXN;
            if !perms.exec {
                bits |= UXN;
            }
        } else {
            bits |= UXN;
            if !perms.exec {
                bits |= PXN;
            }
        }
        if !perms.write {
            bits |= AP_READ_ONLY;
        }
        Descriptor(bits)
    }

    /// The access flag (set by every leaf this engine writes; cleared by ageing).
    pub const fn is_young(self) -> bool {
        self.0 & AF != 0
    }

    /// The same leaf with the access flag set or cleared.
    pub const fn with_young(self, young: bool) -> Self {
        if young {
            Descriptor(self.0 | AF)
        } else {
            Descriptor(self.0 & !AF)
        }
    }

    /// True if nG is clear: the translation is shared by all ASIDs.
    pub const fn is_global(self) -> bool {
        self.0 & NOT_GLOBAL == 0
    }

    /// The leaf's attribute bits (everything but the address and the type bits).
    pub const fn leaf_attribute_bits(self) -> u64 {
        self.0 & LEAF_ATTR_MASK
    }

    /// A leaf at `level` mapping `pa` with exactly the attribute bits of `self`; used when a
    /// block is split into the entries of a next-level table.
    pub const fn leaf_like(self, level: Level, pa: PhysAddr) -> Self {
        let type_bits = match level {
            Level::L3 => TYPE_TABLE_OR_PAGE | VALID,
            _ => VALID,
        };
        Descriptor(
            (pa.0 & OA_MASK_4K) | type_bits | (self.0 & (LEAF_ATTR_MASK | SOFTWARE_BITS_MASK)),
        )
    }
}

impl fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Descriptor({:#018x})", self.0)
    }
}

/// True if `va` lies in the lower (TTBR0) half of a 48-bit address space.
pub const fn is_lower_half(va: VirtAddr) -> bool {
    va.0 >> VA_BITS == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mair_value_and_indices() {
        assert_eq!(MAIR_VALUE, 0x0004_44ff);
        for memory in [
            MemoryType::Normal,
            MemoryType::NormalNonCacheable,
            MemoryType::Device,
        ] {
            assert_eq!(
                MemoryType::from_attr_index(memory.attr_index()),
                Some(memory)
            );
        }
        assert_eq!(MemoryType::from_attr_index(3), None);
    }

    #[test]
    fn level_geometry() {
        assert_eq!(Level::L0.shift(), 39);
        assert_eq!(Level::L1.entry_size(), 1 << 30);
        assert_eq!(Level::L2.entry_size(), 2 << 20);
        assert_eq!(Level::L3.entry_size(), 4096);
        let va = (5u64 << 39) | (7 << 30) | (9 << 21) | (11 << 12) | 0x123;
        assert_eq!(
            [Level::L0, Level::L1, Level::L2, Level::L3].map(|l| l.index(va)),
            [5, 7, 9, 11]
        );
        assert!(!Level::L0.can_hold_leaf());
        assert_eq!(Level::L3.next(), None);
    }

    #[test]
    fn table_descriptor_bits() {
        let d = Descriptor::table(PhysAddr(0x4012_3000));
        assert_eq!(d.bits(), 0x4012_3003);
        assert_eq!(
            d.kind(Level::L0),
            DescriptorKind::Table(PhysAddr(0x4012_3000))
        );
        assert_eq!(
            d.kind(Level::L2),
            DescriptorKind::Table(PhysAddr(0x4012_3000))
        );
        // The same bits at level 3 are a page descriptor.
        assert_eq!(
            d.kind(Level::L3),
            DescriptorKind::Leaf(PhysAddr(0x4012_3000))
        );
    }

    #[test]
    fn kernel_rw_page_bits() {
        let d = Descriptor::leaf(
            Level::L3,
            PhysAddr(0x8000_1000),
            Attributes::normal(Permissions::KERNEL_RW),
            true,
        );
        // valid|page, AttrIndx 0, AP=00 (EL1 RW), SH=11, AF, nG=0, PXN, UXN.
        let expected = 0x8000_1000 | 0b11 | (0b11 << 8) | (1 << 10) | (1 << 53) | (1 << 54);
        assert_eq!(d.bits(), expected);
        assert_eq!(
            d.kind(Level::L3),
            DescriptorKind::Leaf(PhysAddr(0x8000_1000))
        );
        assert!(d.is_global() && d.is_young());
    }

    #[test]
    fn user_and_device_bits() {
        let d = Descriptor::leaf(
            Level::L2,
            PhysAddr(0x20_0000),
            Attributes::normal(Permissions::USER_RX),
            false,
        );
        // Block: bit 1 clear. AP=11 (EL0+EL1 RO), nG, PXN set, UXN clear.
        assert_eq!(d.bits() & 0b11, 0b01);
        assert_eq!((d.bits() >> 6) & 0b11, 0b11);
        assert!(!d.is_global());
        assert_eq!(d.bits() & ((1 << 53) | (1 << 54)), 1 << 53);
        assert_eq!(d.kind(Level::L2), DescriptorKind::Leaf(PhysAddr(0x20_0000)));

        let dev = Descriptor::leaf(Level::L3, PhysAddr(0x900_0000), Attributes::DEVICE, true);
        assert_eq!(
            (dev.bits() >> 2) & 0b111,
            u64::from(MAIR_INDEX_DEVICE_NGNRE)
        );
        assert_eq!(dev.attributes(), Some(Attributes::DEVICE));
    }

    #[test]
    fn permissions_round_trip() {
        for write in [false, true] {
            for exec in [false, true] {
                for user in [false, true] {
                    let perms = Permissions::new(write, exec, user);
                    for memory in [MemoryType::Normal, MemoryType::NormalNonCacheable] {
                        let attrs = Attributes::new(memory, perms);
                        let d = Descriptor::leaf(Level::L3, PhysAddr(0x1000), attrs, false);
                        assert_eq!(d.attributes(), Some(attrs), "{perms}");
                        let flipped = d.with_permissions(Permissions::new(!write, exec, user));
                        assert_eq!(flipped.permissions().write, !write);
                        assert_eq!(flipped.bits() & !(1 << 7), d.bits() & !(1 << 7));
                    }
                }
            }
        }
    }

    #[test]
    fn reserved_encodings() {
        // A level-0 "block" and a level-3 descriptor with bit 1 clear are reserved.
        assert_eq!(
            Descriptor::from_bits(0x1).kind(Level::L0),
            DescriptorKind::Reserved
        );
        assert_eq!(
            Descriptor::from_bits(0x1001).kind(Level::L3),
            DescriptorKind::Reserved
        );
        assert_eq!(Descriptor::INVALID.kind(Level::L1), DescriptorKind::Invalid);
    }

    #[test]
    fn attribute_validation() {
        let mut perms = Permissions::KERNEL_RW;
        perms.read = false;
        assert_eq!(
            Attributes::normal(perms).validate(),
            Err(AttributeError::NotReadable)
        );
        assert_eq!(
            Attributes::new(MemoryType::Device, Permissions::KERNEL_RX).validate(),
            Err(AttributeError::ExecutableDevice)
        );
        assert_eq!(Attributes::DEVICE.validate(), Ok(()));
    }

    #[test]
    fn split_copies_attributes() {
        let block = Descriptor::leaf(
            Level::L1,
            PhysAddr(0x4000_0000),
            Attributes::normal(Permissions::USER_RW),
            false,
        );
        let page = block.leaf_like(Level::L3, PhysAddr(0x4000_5000));
        assert_eq!(
            page.kind(Level::L3),
            DescriptorKind::Leaf(PhysAddr(0x4000_5000))
        );
        assert_eq!(page.leaf_attribute_bits(), block.leaf_attribute_bits());
        let mid = block.leaf_like(Level::L2, PhysAddr(0x4020_0000));
        assert_eq!(
            mid.kind(Level::L2),
            DescriptorKind::Leaf(PhysAddr(0x4020_0000))
        );
    }
}
