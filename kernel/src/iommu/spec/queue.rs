//! Index arithmetic of the SMMU's circular queues.
//!
//! Source: Arm SMMUv3 specification §3.5 "Command and Event queues": a queue has 2^LOG2SIZE
//! entries; a producer or consumer index register holds the entry index in bits
//! `[LOG2SIZE-1:0]` and a wrap flag in bit `[LOG2SIZE]`, toggled each time the index wraps. The
//! queue is empty when both index and wrap are equal, full when the index is equal and the wrap
//! differs. Bits above the wrap flag carry other things (CMDQ_CONS.ERR, EVENTQ_PROD.OVFLG) and
//! are masked off here.

use core::fmt;

/// A queue pointer value: index plus wrap bit, without the ERR/OVFLG bits.
pub type QueuePtr = u32;

/// The largest LOG2SIZE a queue base register can hold (§6.3.26: SMMU_IDR1.CMDQS ≤ 19).
pub const MAX_LOG2_ENTRIES: u8 = 19;

/// The requested queue size is not encodable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadQueueSize(pub u8);

impl fmt::Display for BadQueueSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "queue of 2^{} entries exceeds 2^{MAX_LOG2_ENTRIES}",
            self.0
        )
    }
}

/// The shape of one circular queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueGeometry {
    log2_entries: u8,
}

impl QueueGeometry {
    /// A queue of 2^`log2_entries` entries.
    pub const fn new(log2_entries: u8) -> Result<Self, BadQueueSize> {
        if log2_entries > MAX_LOG2_ENTRIES {
            Err(BadQueueSize(log2_entries))
        } else {
            Ok(Self { log2_entries })
        }
    }

    /// A queue of 2^`min(log2_entries, 19)` entries: what the SMMU uses when a base register
    /// asks for more than the architecture allows.
    pub const fn clamped(log2_entries: u8) -> Self {
        let log2_entries = if log2_entries > MAX_LOG2_ENTRIES {
            MAX_LOG2_ENTRIES
        } else {
            log2_entries
        };
        Self { log2_entries }
    }

    /// log2 of the number of entries.
    pub const fn log2_entries(&self) -> u8 {
        self.log2_entries
    }

    /// Number of entries.
    pub const fn entries(&self) -> u32 {
        1 << self.log2_entries
    }

    /// Mask of the index and wrap bits.
    pub const fn ptr_mask(&self) -> u32 {
        (self.entries() << 1) - 1
    }

    /// Strips everything but index and wrap from a raw PROD/CONS register value.
    pub const fn ptr(&self, raw: u32) -> QueuePtr {
        raw & self.ptr_mask()
    }

    /// The entry index a pointer designates.
    pub const fn index(&self, ptr: QueuePtr) -> u32 {
        ptr & (self.entries() - 1)
    }

    /// The wrap flag of a pointer.
    pub const fn wrap(&self, ptr: QueuePtr) -> bool {
        ptr & self.entries() != 0
    }

    /// `ptr` moved on by `n` entries (toggling the wrap flag as it passes the end).
    pub const fn advance(&self, ptr: QueuePtr, n: u32) -> QueuePtr {
        ptr.wrapping_add(n) & self.ptr_mask()
    }

    /// Number of entries written by the producer and not yet consumed.
    pub const fn used(&self, prod: QueuePtr, cons: QueuePtr) -> u32 {
        prod.wrapping_sub(cons) & self.ptr_mask()
    }

    /// Number of entries the producer may still write.
    pub const fn free(&self, prod: QueuePtr, cons: QueuePtr) -> u32 {
        self.entries().saturating_sub(self.used(prod, cons))
    }

    /// Index and wrap equal.
    pub const fn is_empty(&self, prod: QueuePtr, cons: QueuePtr) -> bool {
        self.ptr(prod) == self.ptr(cons)
    }

    /// Index equal, wrap different.
    pub const fn is_full(&self, prod: QueuePtr, cons: QueuePtr) -> bool {
        self.index(prod) == self.index(cons) && self.wrap(prod) != self.wrap(cons)
    }

    /// True if `ptr` lies in the consumed part of the queue as seen from `cons`, i.e. the entry
    /// that `ptr` designates has been consumed (`ptr` ∈ (cons - entries, cons]), given that
    /// `ptr` was produced no more than one queue length ago.
    pub const fn is_consumed(&self, ptr: QueuePtr, cons: QueuePtr) -> bool {
        let behind = cons.wrapping_sub(ptr) & self.ptr_mask();
        behind != 0 && behind <= self.entries()
    }

    /// Byte size of the queue memory for entries of `entry_size` bytes.
    pub const fn bytes(&self, entry_size: usize) -> usize {
        entry_size << self.log2_entries
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_full_and_wrap() {
        let q = QueueGeometry::new(2).unwrap(); // 4 entries
        assert_eq!(q.entries(), 4);
        assert_eq!(q.ptr_mask(), 0b111);
        assert!(q.is_empty(0, 0));
        assert!(!q.is_full(0, 0));
        let mut prod = 0;
        for _ in 0..4 {
            prod = q.advance(prod, 1);
        }
        assert_eq!(prod, 0b100, "index 0 with the wrap flag set");
        assert!(q.wrap(prod));
        assert!(q.is_full(prod, 0));
        assert!(!q.is_empty(prod, 0));
        assert_eq!(q.used(prod, 0), 4);
        assert_eq!(q.free(prod, 0), 0);
        // Wrapping twice comes back to 0.
        assert_eq!(q.advance(prod, 4), 0);
        // ERR / OVFLG bits are masked away.
        assert_eq!(q.ptr(0x0100_0003 | 1 << 31), 3);
        assert!(q.is_empty(0x0100_0003, 3));
        assert_eq!(QueueGeometry::new(20), Err(BadQueueSize(20)));
        assert_eq!(q.bytes(16), 64);
    }

    #[test]
    fn consumed_window() {
        let q = QueueGeometry::new(3).unwrap();
        assert!(!q.is_consumed(5, 5), "cons points at ptr: not yet consumed");
        assert!(q.is_consumed(5, 6));
        assert!(q.is_consumed(7, 0b1001), "across the wrap");
        assert!(!q.is_consumed(6, 5));
    }

    proptest! {
        #[test]
        fn used_plus_free_is_the_size(log2 in 0u8..=19, cons in any::<u32>(), n in any::<u32>()) {
            let q = QueueGeometry::new(log2).unwrap();
            let cons = q.ptr(cons);
            let n = n % (q.entries() + 1);
            let prod = q.advance(cons, n);
            prop_assert_eq!(q.used(prod, cons), n);
            prop_assert_eq!(q.used(prod, cons) + q.free(prod, cons), q.entries());
            prop_assert_eq!(q.is_empty(prod, cons), n == 0);
            prop_assert_eq!(q.is_full(prod, cons), n == q.entries());
            if n > 0 {
                // The last produced entry is consumed exactly once cons reaches prod.
                let last = q.advance(prod, q.ptr_mask());
                prop_assert!(q.is_consumed(last, prod));
                prop_assert!(!q.is_consumed(last, q.advance(prod, q.ptr_mask())));
            }
        }
    }
}
