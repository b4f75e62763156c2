//! The table-switch sequences against the checker, each with the sequence the kernel used
//! before as its failing twin.

use super::*;

const RESERVED: u64 = 0x1000;
const EARLY_TTBR1: u64 = 0x2000;
const KERNEL_TTBR1: u64 = 0x3000;
const IDMAP: u64 = 0x4000;
const SPACE_A: u64 = 0x5000;
const SPACE_B: u64 = 0x6000;

fn kind(table: u64) -> TableKind {
    match table {
        RESERVED => TableKind::Empty,
        IDMAP => TableKind::Global,
        EARLY_TTBR1 | KERNEL_TTBR1 | SPACE_A | SPACE_B => TableKind::Mapped,
        _ => TableKind::Unknown,
    }
}

fn asid(table: u64, asid: u16) -> u64 {
    ((asid as u64) << 48) | table
}

/// A CPU at boot: the early identity map in TTBR0, the early kernel tables in TTBR1.
fn booting() -> CpuTables {
    CpuTables::new(IDMAP, false, EARLY_TTBR1, kind)
}

/// A CPU after boot with no address space loaded.
fn idle() -> CpuTables {
    CpuTables::new(RESERVED, true, KERNEL_TTBR1, kind)
}

#[test]
fn ttbr1_replacement_breaks_before_it_makes() {
    let mut cpu = booting();
    cpu.run(&replace_ttbr1(RESERVED, KERNEL_TTBR1), kind)
        .unwrap();
    assert_eq!(cpu.ttbr1(), KERNEL_TTBR1);
    assert_eq!(cpu.cached_ttbr1(), [KERNEL_TTBR1], "the early entries are gone");
}

#[test]
fn the_old_ttbr1_replacement_risks_a_tlb_conflict() {
    // What boot did before: DSB ISHST; TTBR1 := new; ISB; TLBI VMALLE1; DSB; ISB.
    let old = [
        SysOp::Ttbr1(KERNEL_TTBR1),
        SysOp::Isb,
        SysOp::TlbiVmalle1,
        SysOp::DsbNsh,
        SysOp::Isb,
    ];
    let hazard = booting().run(&old, kind).unwrap_err();
    assert_eq!(
        hazard,
        SwitchHazard::TlbConflict {
            at: 0,
            ttbr1: true,
            old: EARLY_TTBR1,
            new: KERNEL_TTBR1
        },
        "{hazard}"
    );
}

#[test]
fn a_ttbr1_replacement_without_the_tlbi_is_caught() {
    let mut ops = replace_ttbr1(RESERVED, KERNEL_TTBR1).to_vec();
    ops.retain(|&op| op != SysOp::TlbiVmalle1);
    assert!(matches!(
        booting().run(&ops, kind),
        Err(SwitchHazard::TlbConflict { .. })
    ));
}

#[test]
fn dropping_the_identity_map_leaves_no_walk_and_no_entry() {
    let mut cpu = booting();
    cpu.run(&drop_identity_map(RESERVED), kind).unwrap();
    assert_eq!(cpu.ttbr0(), RESERVED);
    assert!(cpu.epd0());
    assert!(
        cpu.cached_ttbr0().is_empty(),
        "global identity entries survived: {:?}",
        cpu.cached_ttbr0()
    );
    // Without the TLBI the identity map's global entries would stay for every ASID.
    let mut twin = booting();
    twin.run(&unload_ttbr0(RESERVED), kind).unwrap();
    assert_eq!(twin.cached_ttbr0(), [IDMAP]);
}

#[test]
fn the_old_identity_map_removal_may_walk_address_zero() {
    // What boot did before: EPD0 := 1; TTBR0 := 0; ISB.
    let old = [SysOp::Epd0(true), SysOp::Ttbr0(0), SysOp::Isb];
    assert_eq!(
        booting().run(&old, kind),
        Err(SwitchHazard::WalkOfNonTable { at: 1, ttbr0: 0 })
    );
}

#[test]
fn loading_and_unloading_spaces_is_safe_in_every_order() {
    let a = asid(SPACE_A, 7);
    let b = asid(SPACE_B, 9);
    let mut cpu = idle();
    // Every sequence of load A, load B, unload up to length 4.
    let steps: [&dyn Fn() -> Vec<SysOp>; 3] = [
        &|| load_ttbr0(a).to_vec(),
        &|| load_ttbr0(b).to_vec(),
        &|| unload_ttbr0(RESERVED).to_vec(),
    ];
    let mut runs = 0;
    for n in 0..81 {
        let mut c = cpu.clone();
        let mut code = n;
        for _ in 0..4 {
            c.run(&steps[code % 3](), kind).unwrap();
            code /= 3;
        }
        runs += 1;
    }
    assert_eq!(runs, 81);
    cpu.run(&load_ttbr0(a), kind).unwrap();
    assert_eq!((cpu.ttbr0(), cpu.epd0()), (a, false));
    cpu.run(&unload_ttbr0(RESERVED), kind).unwrap();
    assert_eq!((cpu.ttbr0(), cpu.epd0()), (RESERVED, true));
}

#[test]
fn the_old_activate_and_deactivate_may_walk_address_zero() {
    // Before: activate = TTBR0 := new; EPD0 := 0; ISB (from TTBR0 = 0, EPD0 = 1).
    let old_activate = [
        SysOp::Ttbr0(asid(SPACE_A, 1)),
        SysOp::Epd0(false),
        SysOp::Isb,
    ];
    let mut cpu = CpuTables::new(0, true, KERNEL_TTBR1, kind);
    assert_eq!(
        cpu.run(&old_activate, kind),
        Err(SwitchHazard::WalkOfNonTable { at: 1, ttbr0: 0 })
    );
    // Before: deactivate = EPD0 := 1; TTBR0 := 0; ISB.
    let mut cpu = CpuTables::new(asid(SPACE_A, 1), false, KERNEL_TTBR1, kind);
    let old_deactivate = [SysOp::Epd0(true), SysOp::Ttbr0(0), SysOp::Isb];
    assert_eq!(
        cpu.run(&old_deactivate, kind),
        Err(SwitchHazard::WalkOfNonTable { at: 1, ttbr0: 0 })
    );
}

#[test]
fn enabling_walks_before_the_table_is_in_use_is_caught() {
    // The two writes of a load, in the wrong order, from the state the old code left.
    let swapped = [
        SysOp::Epd0(false),
        SysOp::Isb,
        SysOp::Ttbr0(asid(SPACE_A, 1)),
        SysOp::Isb,
    ];
    let mut cpu = CpuTables::new(0, true, KERNEL_TTBR1, kind);
    assert!(matches!(
        cpu.run(&swapped, kind),
        Err(SwitchHazard::WalkOfNonTable { at: 0, .. })
    ));
}

#[test]
fn the_recorder_keeps_the_order() {
    let mut r = RecordingSysRegs::default();
    r.run_all(&load_ttbr0(asid(SPACE_A, 3)));
    assert_eq!(r.ops, load_ttbr0(asid(SPACE_A, 3)));
    assert_eq!(ttbr_table(asid(SPACE_A, 3) | 1), SPACE_A);
}

/// After an ASID rollover a number comes back for other tables: a CPU that still caches the old
/// owner's entries under it would translate the new space through them. Only a local TLBI
/// between the two makes that safe, and a checker that accepts the sequence without it cannot
/// fail where it matters.
#[test]
fn reusing_an_asid_for_other_tables_without_a_tlbi_is_caught() {
    let mut reuse = load_ttbr0(asid(SPACE_A, 7)).to_vec();
    reuse.extend(unload_ttbr0(RESERVED));
    reuse.extend(load_ttbr0(asid(SPACE_B, 7)));
    assert!(
        matches!(
            idle().run(&reuse, kind),
            Err(SwitchHazard::TlbConflict { ttbr1: false, .. })
        ),
        "SPACE_A's entries may answer for SPACE_B under ASID 7"
    );
    // What `activate` runs when the allocator asks for it: the local flush in between.
    let mut flushed = load_ttbr0(asid(SPACE_A, 7)).to_vec();
    flushed.extend(unload_ttbr0(RESERVED));
    flushed.extend(flush_local_tlb());
    flushed.extend(load_ttbr0(asid(SPACE_B, 7)));
    let mut cpu = idle();
    cpu.run(&flushed, kind).unwrap();
    assert_eq!(cpu.cached_ttbr0(), [asid(SPACE_B, 7)]);
    // Straight from A to B, no unload in between: the same.
    let mut direct = load_ttbr0(asid(SPACE_A, 7)).to_vec();
    direct.extend(load_ttbr0(asid(SPACE_B, 7)));
    assert!(idle().run(&direct, kind).is_err());
}

/// The identity map's entries are global (nG = 0): cached, they match every ASID, so a user
/// space loaded before they were invalidated may translate its addresses through them.
#[test]
fn loading_a_space_over_cached_identity_entries_is_caught() {
    let mut ops = unload_ttbr0(RESERVED).to_vec();
    ops.extend(load_ttbr0(asid(SPACE_A, 7)));
    assert!(
        matches!(
            booting().run(&ops, kind),
            Err(SwitchHazard::TlbConflict { ttbr1: false, .. })
        ),
        "the identity map's global entries may still answer for SPACE_A"
    );
}
