//! Event tracing: per-CPU ring buffers of fixed-size records, cheap enough to leave compiled in.
//!
//! Tracing is off until [`enable`] (the `trace=1` boot argument): every [`record`] then costs
//! one relaxed load. When on, each CPU appends to its own ring (no shared cache line, no lock:
//! only the owning CPU writes its ring); the oldest records are overwritten when a ring is full.
//! At the end of a run the kernel prints the rings as `# T ...` diagnostic lines, which the
//! harness turns into Chrome/Perfetto trace JSON (`make run TRACE=out.json`), so one unmap can be
//! followed from the CPU TLBI to the IOTLB invalidation across CPUs.
//!
//! The line format (all hex, one record per line):
//!
//! ```text
//! # T <cpu> <timestamp ns> <kind> <a> <b>
//! ```
//!
//! with the `kind` numbers of [`Kind`] and its meaning of `a` and `b`.

use core::fmt::{self, Write};

// Plain `core` atomics, also under loom: tracing is instrumentation, not part of any modelled
// protocol (and loom's atomics cannot be built in a `const`).
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Records per CPU ring (a power of two).
pub const RING_RECORDS: usize = 4096;
/// CPUs with a ring; higher CPU numbers record nothing.
pub const RING_CPUS: usize = 8;

/// What happened. `a`/`b` hold the numbers the variant's documentation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// An unmap (munmap/discard) began: `a` = start, `b` = end.
    UnmapBegin = 1,
    /// It returned: `a` = start, `b` = end.
    UnmapEnd = 2,
    /// A protection change began: `a` = start, `b` = end.
    ProtectBegin = 3,
    /// It returned.
    ProtectEnd = 4,
    /// `invalidate_range_start` ran: `a` = start, `b` = end.
    NotifierStart = 5,
    /// `invalidate_range_end` ran: `a` = start, `b` = end.
    NotifierEnd = 6,
    /// The CPU TLBs were invalidated: `a` = start, `b` = end.
    CpuTlbi = 7,
    /// `arch_invalidate_secondary_tlbs` began: `a` = start, `b` = end.
    SecondaryBegin = 8,
    /// It returned (the IOTLB is clean): `a` = start, `b` = end.
    SecondaryEnd = 9,
    /// An SMMU command was queued: `a` = opcode, `b` = its first word.
    SmmuCommand = 10,
    /// A `CMD_SYNC` was issued: `a` = queue index.
    CmdSyncBegin = 11,
    /// The `CMD_SYNC` completed: `a` = queue index, `b` = 0 ok, 1 error/timeout.
    CmdSyncEnd = 12,
    /// A device DMA began: `a` = address, `b` = length | direction (bit 63: device writes).
    DmaBegin = 13,
    /// It finished: `a` = address, `b` = 0 ok, 1 faulted.
    DmaEnd = 14,
    /// A translation fault was reported by the IOMMU: `a` = address, `b` = stream ID << 8 | type.
    Fault = 15,
}

impl Kind {
    /// The kind with this number.
    pub fn from_u8(v: u8) -> Option<Kind> {
        use Kind::*;
        Some(match v {
            1 => UnmapBegin,
            2 => UnmapEnd,
            3 => ProtectBegin,
            4 => ProtectEnd,
            5 => NotifierStart,
            6 => NotifierEnd,
            7 => CpuTlbi,
            8 => SecondaryBegin,
            9 => SecondaryEnd,
            10 => SmmuCommand,
            11 => CmdSyncBegin,
            12 => CmdSyncEnd,
            13 => DmaBegin,
            14 => DmaEnd,
            15 => Fault,
            _ => return None,
        })
    }
}

/// One record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The CPU that recorded it.
    pub cpu: usize,
    /// When, in nanoseconds of the tracer's clock.
    pub ts_ns: u64,
    /// What.
    pub kind: Kind,
    /// First argument.
    pub a: u64,
    /// Second argument.
    pub b: u64,
}

struct Slot {
    /// Sequence number + 1 of the record in the slot (0 = empty); written last.
    seq: AtomicU64,
    ts: AtomicU64,
    kind: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
}

struct Ring {
    next: AtomicUsize,
    slots: [Slot; RING_RECORDS],
}

#[allow(clippy::declare_interior_mutable_const)] // only used to build the static below
const EMPTY_SLOT: Slot = Slot {
    seq: AtomicU64::new(0),
    ts: AtomicU64::new(0),
    kind: AtomicU64::new(0),
    a: AtomicU64::new(0),
    b: AtomicU64::new(0),
};
#[allow(clippy::declare_interior_mutable_const)] // only used to build the static below
const EMPTY_RING: Ring = Ring {
    next: AtomicUsize::new(0),
    slots: [EMPTY_SLOT; RING_RECORDS],
};

/// The tracer: rings, an on/off switch and a clock.
pub struct Tracer {
    enabled: AtomicBool,
    rings: [Ring; RING_CPUS],
    clock: AtomicUsize,
    cpu: AtomicUsize,
}

impl Tracer {
    /// A disabled tracer with empty rings.
    pub const fn new() -> Self {
        Tracer {
            enabled: AtomicBool::new(false),
            rings: [EMPTY_RING; RING_CPUS],
            clock: AtomicUsize::new(0),
            cpu: AtomicUsize::new(0),
        }
    }

    /// Starts recording, with `now_ns` as the clock and `cpu` naming the calling CPU.
    pub fn enable(&self, now_ns: fn() -> u64, cpu: fn() -> usize) {
        self.clock.store(now_ns as usize, Ordering::Relaxed);
        self.cpu.store(cpu as usize, Ordering::Relaxed);
        self.enabled.store(true, Ordering::Release);
    }

    /// True while recording.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Appends a record to the calling CPU's ring (nothing while disabled).
    #[inline]
    pub fn record(&self, kind: Kind, a: u64, b: u64) {
        if !self.enabled.load(Ordering::Acquire) {
            return;
        }
        self.record_slow(kind, a, b);
    }

    #[inline(never)]
    fn record_slow(&self, kind: Kind, a: u64, b: u64) {
        let clock = self.clock.load(Ordering::Relaxed);
        // SAFETY: `enable` stored this from a `fn() -> u64`, and the Acquire in `record`
        // ordered us after that store.
        let now: fn() -> u64 = unsafe { core::mem::transmute::<usize, fn() -> u64>(clock) };
        let cpu_fn = self.cpu.load(Ordering::Relaxed);
        // SAFETY: likewise, stored from a `fn() -> usize`.
        let cpu_of: fn() -> usize = unsafe { core::mem::transmute::<usize, fn() -> usize>(cpu_fn) };
        let cpu = cpu_of();
        let Some(ring) = self.rings.get(cpu) else {
            return;
        };
        // Only `cpu` writes this ring, so a relaxed increment orders nothing it needs to.
        let n = ring.next.fetch_add(1, Ordering::Relaxed);
        let slot = &ring.slots[n % RING_RECORDS];
        slot.seq.store(0, Ordering::Relaxed); // being rewritten
        slot.ts.store(now(), Ordering::Relaxed);
        slot.kind.store(kind as u64, Ordering::Relaxed);
        slot.a.store(a, Ordering::Relaxed);
        slot.b.store(b, Ordering::Relaxed);
        slot.seq.store(n as u64 + 1, Ordering::Release);
    }

    /// Stops recording and returns every record still in the rings, oldest first per CPU, the
    /// CPUs' records merged by timestamp.
    pub fn drain(&self) -> alloc::vec::Vec<Record> {
        self.enabled.store(false, Ordering::Release);
        let mut out = alloc::vec::Vec::new();
        for (cpu, ring) in self.rings.iter().enumerate() {
            let next = ring.next.load(Ordering::Acquire);
            let first = next.saturating_sub(RING_RECORDS);
            for n in first..next {
                let slot = &ring.slots[n % RING_RECORDS];
                if slot.seq.load(Ordering::Acquire) != n as u64 + 1 {
                    continue; // overwritten or half written
                }
                let Some(kind) = Kind::from_u8(slot.kind.load(Ordering::Relaxed) as u8) else {
                    continue;
                };
                out.push(Record {
                    cpu,
                    ts_ns: slot.ts.load(Ordering::Relaxed),
                    kind,
                    a: slot.a.load(Ordering::Relaxed),
                    b: slot.b.load(Ordering::Relaxed),
                });
            }
            ring.next.store(0, Ordering::Relaxed);
        }
        out.sort_by_key(|r| (r.ts_ns, r.cpu));
        out
    }
}

impl Default for Tracer {
    fn default() -> Self {
        Self::new()
    }
}

/// The kernel's tracer.
pub static TRACER: Tracer = Tracer::new();

/// Records into the kernel's tracer.
#[inline]
pub fn record(kind: Kind, a: u64, b: u64) {
    TRACER.record(kind, a, b);
}

/// Writes records in the console line format (see the module documentation).
pub fn write_records<W: Write>(out: &mut W, records: &[Record]) -> fmt::Result {
    for r in records {
        writeln!(
            out,
            "# T {:x} {:x} {:x} {:x} {:x}",
            r.cpu, r.ts_ns, r.kind as u8, r.a, r.b
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    fn clock() -> u64 {
        static T: AtomicU64 = AtomicU64::new(0);
        T.fetch_add(10, Ordering::Relaxed)
    }

    fn cpu0() -> usize {
        0
    }

    #[test]
    fn disabled_records_nothing_enabled_records_in_order() {
        let t = std::boxed::Box::new(Tracer::new());
        t.record(Kind::UnmapBegin, 1, 2);
        assert!(t.drain().is_empty());
        t.enable(clock, cpu0);
        t.record(Kind::UnmapBegin, 0x1000, 0x2000);
        t.record(Kind::SecondaryBegin, 0x1000, 0x2000);
        t.record(Kind::SecondaryEnd, 0x1000, 0x2000);
        t.record(Kind::UnmapEnd, 0x1000, 0x2000);
        let r = t.drain();
        let kinds: alloc::vec::Vec<Kind> = r.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::UnmapBegin,
                Kind::SecondaryBegin,
                Kind::SecondaryEnd,
                Kind::UnmapEnd
            ]
        );
        assert!(r.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
        assert!(!t.is_enabled(), "drain stops recording");
        let mut s = String::new();
        write_records(&mut s, &r[..1]).unwrap();
        assert_eq!(s, std::format!("# T 0 {:x} 1 1000 2000\n", r[0].ts_ns));
    }

    #[test]
    fn a_full_ring_keeps_the_newest_records() {
        let t = std::boxed::Box::new(Tracer::new());
        t.enable(clock, cpu0);
        for i in 0..(RING_RECORDS as u64 + 10) {
            t.record(Kind::DmaBegin, i, 0);
        }
        let r = t.drain();
        assert_eq!(r.len(), RING_RECORDS);
        assert_eq!(r[0].a, 10);
        assert_eq!(r.last().unwrap().a, RING_RECORDS as u64 + 9);
    }
}
