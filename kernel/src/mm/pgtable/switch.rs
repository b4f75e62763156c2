//! Switching a CPU's translation tables: the system-register sequences, as data, and a checker
//! that every intermediate state of a sequence is safe.
//!
//! The kernel executes these sequences verbatim (`arch::aarch64` runs each [`SysOp`], and can
//! record what it ran), so checking the builders here on the host checks what the CPU does.
//!
//! Two hazards, Arm ARM (DDI 0487K.a):
//!
//! - **Walks of something that is not a table.** A write to `TTBR0_EL1` or `TCR_EL1` is a
//!   context change: until the next `ISB`, the walker may use the old or the new value of each
//!   register *independently* (D8.2 and the "Synchronization requirements for system registers"
//!   rules of D19.1). So `EPD0 := 0` followed by `TTBR0 := 0` can, for a while, walk physical
//!   address 0 as a level-0 table. "No user space" is therefore never `TTBR0 = 0`: it is a
//!   zeroed **reserved** root (Linux's `reserved_pg_dir`, `cpu_set_reserved_ttbr0`), and each
//!   register write that enables walks comes after an `ISB` that made the table valid.
//! - **TLB conflicts.** Replacing the tables of a live half with tables that map the same VAs
//!   at another block size (the kernel's early 1 GiB blocks by 2 MiB blocks and pages) is a
//!   change of block size: without break-before-make (D8.16.1 "Using break-before-make when
//!   updating translation table entries") a walk, speculative included, can load a new entry
//!   beside an old one for the same VA, a TLB conflict (CONSTRAINED UNPREDICTABLE: a TLB
//!   conflict abort or an amalgamated translation). For TTBR1 the break is the empty reserved
//!   table: `TTBR1 := empty; ISB; TLBI VMALLE1; DSB NSH; ISB; TTBR1 := new; ISB`, run from the
//!   identity map since the kernel is unmapped in between (Linux's `idmap_cpu_replace_ttbr1`).
//!
//! The checker models, per register, the set of values the walker may be using (every value
//! written since the last `ISB`), and per half the set of tables whose entries the TLB may
//! hold (a table enters once a walk may use it, and only a `TLBI VMALLE1` completed by a `DSB`
//! drops the ones no longer in use). TTBR0 entries are tagged with the ASID they were walked
//! under (TCR_EL1.A1 = 0: TTBR0 selects it), except the global ones (nG = 0, the identity
//! map's), which match every ASID: two TTBR0 tables conflict when they share an ASID, or when
//! one of them is global (D8.14 "Translation Lookaside Buffers", ASID matching).

use alloc::vec::Vec;
use core::fmt;

/// One system-register write or barrier of a table switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysOp {
    /// `MSR TTBR0_EL1, value` (ASID in \[63:48\], table in \[47:1\]).
    Ttbr0(u64),
    /// `MSR TTBR1_EL1, value`.
    Ttbr1(u64),
    /// `TCR_EL1.EPD0 := disabled`: `true` stops walks through TTBR0.
    Epd0(bool),
    /// `ISB`: later instructions see every earlier context change.
    Isb,
    /// `TLBI VMALLE1`: this CPU's EL1&0 entries, every ASID and the global ones.
    TlbiVmalle1,
    /// `DSB NSH`: completes this CPU's earlier TLB maintenance.
    DsbNsh,
}

/// The table address a TTBR value selects (BADDR, bits \[47:1\]; ASID and CnP dropped).
pub const fn ttbr_table(ttbr: u64) -> u64 {
    ttbr & ((1 << 48) - 1) & !1
}

/// The ASID a TTBR value carries (\[63:48\]).
const fn ttbr_asid(ttbr: u64) -> u64 {
    ttbr >> 48
}

/// A TTBR value as TLB entries are tagged by it: ASID and table, CnP dropped.
const fn ttbr_tagged(ttbr: u64) -> u64 {
    ttbr & !1
}

/// `TTBR1 := new` without a TLB conflict, from code the identity map keeps mapped: break
/// (the empty `reserved` table, then every cached entry of this CPU dropped), then make.
pub const fn replace_ttbr1(reserved: u64, new: u64) -> [SysOp; 7] {
    [
        SysOp::Ttbr1(reserved),
        SysOp::Isb,
        SysOp::TlbiVmalle1,
        SysOp::DsbNsh,
        SysOp::Isb,
        SysOp::Ttbr1(new),
        SysOp::Isb,
    ]
}

/// Loads an address space (`ttbr` = its root and ASID) into TTBR0: the table first, and walks
/// enabled only once it is in use. From another loaded space this is one atomic register write
/// between two valid tables.
pub const fn load_ttbr0(ttbr: u64) -> [SysOp; 4] {
    [
        SysOp::Ttbr0(ttbr),
        SysOp::Isb,
        SysOp::Epd0(false),
        SysOp::Isb,
    ]
}

/// Unloads whatever TTBR0 holds: walks off first, then the reserved (zeroed) root, so that a
/// walker still seeing `EPD0 = 0` finds a valid, empty table.
pub const fn unload_ttbr0(reserved: u64) -> [SysOp; 4] {
    [
        SysOp::Epd0(true),
        SysOp::Isb,
        SysOp::Ttbr0(reserved),
        SysOp::Isb,
    ]
}

/// Drops every entry this CPU's TLB holds (EL1&0, all ASIDs): before running an ASID a
/// rollover handed to new tables, whose old owner's entries may still be cached here.
pub const fn flush_local_tlb() -> [SysOp; 3] {
    [SysOp::TlbiVmalle1, SysOp::DsbNsh, SysOp::Isb]
}

/// Drops the boot identity map from TTBR0: unloads it, then drops its entries, which are
/// global (nG = 0) and would otherwise outlive it for every ASID.
pub const fn drop_identity_map(reserved: u64) -> [SysOp; 7] {
    let u = unload_ttbr0(reserved);
    [
        u[0],
        u[1],
        u[2],
        u[3],
        SysOp::TlbiVmalle1,
        SysOp::DsbNsh,
        SysOp::Isb,
    ]
}

/// What a table address is, for the checker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// A valid table whose entries are all invalid: a walk caches nothing.
    Empty,
    /// A valid table tree with mappings, private to its ASID (nG = 1; any TTBR1 table).
    Mapped,
    /// A valid TTBR0 table tree whose entries are global (nG = 0: the identity map): cached,
    /// they match every ASID.
    Global,
    /// Not a table (0, freed memory, firmware): a walk reads garbage.
    Unknown,
}

/// The hazards the checker finds, at the index of the op after which it first holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchHazard {
    /// TTBR0 walks may be enabled while TTBR0 may select something that is not a table.
    WalkOfNonTable {
        /// The op after which it is possible.
        at: usize,
        /// The TTBR0 value.
        ttbr0: u64,
    },
    /// The TLB may hold entries of two different mapped tables that can match the same
    /// lookup (TTBR1: any two; TTBR0: the same ASID, or a global one).
    TlbConflict {
        /// The op after which it is possible.
        at: usize,
        /// TTBR1 (true) or TTBR0.
        ttbr1: bool,
        /// One table.
        old: u64,
        /// The other.
        new: u64,
    },
}

impl fmt::Display for SwitchHazard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SwitchHazard::WalkOfNonTable { at, ttbr0 } => write!(
                f,
                "after op {at}: TTBR0 walks may be on with TTBR0 = {ttbr0:#x}, not a table"
            ),
            SwitchHazard::TlbConflict {
                at,
                ttbr1,
                old,
                new,
            } => write!(
                f,
                "after op {at}: the TLB may hold {} entries of tables {old:#x} and {new:#x} at once",
                if ttbr1 { "TTBR1" } else { "TTBR0" }
            ),
        }
    }
}

/// One half's register and what the TLB may hold for it.
#[derive(Clone, Debug, Default)]
struct Half {
    /// Values the walker may be using (the last one is the register's).
    live: Vec<u64>,
    /// Tables with entries possibly in the TLB; for TTBR0 with the ASID that tags them, as a
    /// TTBR value (ASID | table).
    cached: Vec<u64>,
}

impl Half {
    fn new(value: u64) -> Self {
        Half {
            live: alloc::vec![value],
            cached: Vec::new(),
        }
    }

    fn write(&mut self, value: u64) {
        self.live.retain(|&v| v != value);
        self.live.push(value);
    }

    fn synchronize(&mut self) {
        let last = *self.live.last().expect("a register always has a value");
        self.live = alloc::vec![last];
    }
}

/// The state the checker tracks on one CPU.
#[derive(Clone, Debug)]
pub struct CpuTables {
    ttbr0: Half,
    ttbr1: Half,
    /// Values of EPD0 the walker may be using.
    epd0: Vec<bool>,
    /// A TLBI was issued and is not complete yet.
    tlbi_pending: bool,
}

impl CpuTables {
    /// A CPU with these register values, settled (an `ISB` ran), and a TLB holding entries of
    /// whatever tables they enable.
    pub fn new(ttbr0: u64, epd0: bool, ttbr1: u64, kind: impl Fn(u64) -> TableKind) -> Self {
        let mut cpu = CpuTables {
            ttbr0: Half::new(ttbr0),
            ttbr1: Half::new(ttbr1),
            epd0: alloc::vec![epd0],
            tlbi_pending: false,
        };
        cpu.fill_tlb(&kind);
        cpu
    }

    /// The value TTBR0_EL1 holds.
    pub fn ttbr0(&self) -> u64 {
        *self.ttbr0.live.last().expect("a register always has a value")
    }

    /// The value TTBR1_EL1 holds.
    pub fn ttbr1(&self) -> u64 {
        *self.ttbr1.live.last().expect("a register always has a value")
    }

    /// Whether TTBR0 walks are disabled.
    pub fn epd0(&self) -> bool {
        *self.epd0.last().expect("a register always has a value")
    }

    /// Mapped TTBR0 tables whose entries the TLB may still hold, each with the ASID tagging
    /// them (as a TTBR value, CnP dropped).
    pub fn cached_ttbr0(&self) -> &[u64] {
        &self.ttbr0.cached
    }

    /// Mapped TTBR1 tables whose entries the TLB may still hold.
    pub fn cached_ttbr1(&self) -> &[u64] {
        &self.ttbr1.cached
    }

    fn walks0_possible(&self) -> bool {
        self.epd0.contains(&false)
    }

    /// Every table a walk may use now adds its entries to the TLB.
    fn fill_tlb(&mut self, kind: &impl Fn(u64) -> TableKind) {
        let walks0 = self.walks0_possible();
        for (half, walks, tag) in [
            (&mut self.ttbr0, walks0, true),
            (&mut self.ttbr1, true, false),
        ] {
            if !walks {
                continue;
            }
            for &v in &half.live {
                let entry = if tag { ttbr_tagged(v) } else { ttbr_table(v) };
                let cacheable =
                    matches!(kind(ttbr_table(v)), TableKind::Mapped | TableKind::Global);
                if cacheable && !half.cached.contains(&entry) {
                    half.cached.push(entry);
                }
            }
        }
    }

    fn apply(&mut self, op: SysOp, kind: &impl Fn(u64) -> TableKind) {
        match op {
            SysOp::Ttbr0(v) => self.ttbr0.write(v),
            SysOp::Ttbr1(v) => self.ttbr1.write(v),
            SysOp::Epd0(d) => {
                self.epd0.retain(|&e| e != d);
                self.epd0.push(d);
            }
            SysOp::Isb => {
                self.ttbr0.synchronize();
                self.ttbr1.synchronize();
                let last = self.epd0();
                self.epd0 = alloc::vec![last];
            }
            SysOp::TlbiVmalle1 => self.tlbi_pending = true,
            SysOp::DsbNsh => {
                if core::mem::take(&mut self.tlbi_pending) {
                    // Complete: only what walks may still load is left.
                    self.ttbr0.cached.clear();
                    self.ttbr1.cached.clear();
                }
            }
        }
        self.fill_tlb(kind);
    }

    fn hazard(&self, at: usize, kind: &impl Fn(u64) -> TableKind) -> Option<SwitchHazard> {
        if self.walks0_possible() {
            if let Some(&ttbr0) = self
                .ttbr0
                .live
                .iter()
                .find(|&&v| kind(ttbr_table(v)) == TableKind::Unknown)
            {
                return Some(SwitchHazard::WalkOfNonTable { at, ttbr0 });
            }
        }
        // TTBR1 tables are all global: any two conflict.
        if let [old, new, ..] = *self.ttbr1.cached.as_slice() {
            return Some(SwitchHazard::TlbConflict {
                at,
                ttbr1: true,
                old,
                new,
            });
        }
        self.ttbr0_conflict(kind)
            .map(|(old, new)| SwitchHazard::TlbConflict {
                at,
                ttbr1: false,
                old,
                new,
            })
    }

    /// Two cached TTBR0 tables whose entries can answer the same lookup: the same ASID, or
    /// one of them global.
    fn ttbr0_conflict(&self, kind: &impl Fn(u64) -> TableKind) -> Option<(u64, u64)> {
        let cached = &self.ttbr0.cached;
        let global = |v: u64| kind(ttbr_table(v)) == TableKind::Global;
        cached.iter().enumerate().find_map(|(i, &old)| {
            cached[i + 1..]
                .iter()
                .find(|&&new| {
                    ttbr_table(old) != ttbr_table(new)
                        && (ttbr_asid(old) == ttbr_asid(new) || global(old) || global(new))
                })
                .map(|&new| (ttbr_table(old), ttbr_table(new)))
        })
    }

    /// Runs `ops` and returns the first hazard any intermediate state has.
    pub fn run(
        &mut self,
        ops: &[SysOp],
        kind: impl Fn(u64) -> TableKind,
    ) -> Result<(), SwitchHazard> {
        for (at, &op) in ops.iter().enumerate() {
            self.apply(op, &kind);
            if let Some(h) = self.hazard(at, &kind) {
                return Err(h);
            }
        }
        Ok(())
    }
}

/// Where the arch layer sends the operations it executes (the CPU, or a recorder on top).
pub trait SysRegs {
    /// Executes one operation.
    fn run(&mut self, op: SysOp);

    /// Executes `ops` in order.
    fn run_all(&mut self, ops: &[SysOp]) {
        for &op in ops {
            self.run(op);
        }
    }
}

/// Records the operations instead of executing them (host tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordingSysRegs {
    /// What was run, in order.
    pub ops: Vec<SysOp>,
}

impl SysRegs for RecordingSysRegs {
    fn run(&mut self, op: SysOp) {
        self.ops.push(op);
    }
}

#[cfg(test)]
mod tests;
