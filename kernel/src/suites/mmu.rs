//! Switching translation tables on a real MMU (QEMU's): the sequences the CPU ran, recorded by
//! the arch layer and checked by the same checker the host tests use
//! ([`crate::mm::pgtable::switch`]), and Access-flag faults answered.
//!
//! QEMU models no TLB conflicts and no speculative walks, so a wrong sequence would still run
//! here: what these cases show is that the CPU ran the safe one. Run them on `raspi4b` (4 x
//! Cortex-A72, RAM not 1 GiB aligned) or with `QEMU_ARGS="-cpu cortex-a72"`.

use alloc::vec::Vec;

use crate::arch::aarch64::aspace::{self, activate, deactivate};
use crate::arch::aarch64::exceptions::probe_read_u64;
use crate::arch::aarch64::{mmu, switch as hw};
use crate::ktest::{TestError, TestResult};
use crate::mm::aspace::{Backing, Placement};
use crate::mm::pgtable::descriptor::Permissions;
use crate::mm::pgtable::switch::{self, ttbr_table, CpuTables, SysOp, TableKind};
use crate::mm::{VirtAddr, PAGE_SIZE};
use crate::{kassert, kassert_eq, ktest};

fn fail(e: impl core::fmt::Display) -> TestError {
    TestError::Fail(alloc::format!("{e}"))
}

/// Stands for tables this test did not build (the early boot tables): mapped, unknown address.
const OTHER_TABLES: u64 = 0x7fff_ffff_f000;

/// Classifies table addresses for the checker: the reserved table is empty, the ones listed
/// are mapped, anything else is not a table.
fn kinds(mapped: &[u64]) -> impl Fn(u64) -> TableKind + '_ {
    move |t| {
        if t == mmu::reserved_table_pa() {
            TableKind::Empty
        } else if t == OTHER_TABLES || mapped.contains(&t) {
            TableKind::Mapped
        } else {
            TableKind::Unknown
        }
    }
}

fn check_ttbr1_switch(ops: &[SysOp], from: u64, to: u64) -> TestResult {
    kassert_eq!(ops, switch::replace_ttbr1(mmu::reserved_table_pa(), to));
    let tables = [from, to];
    let kind = kinds(&tables);
    let mut cpu = CpuTables::new(mmu::reserved_table_pa(), true, from, &kind);
    cpu.run(ops, &kind).map_err(fail)?;
    kassert_eq!(cpu.ttbr1(), to);
    Ok(())
}

ktest!(mmu, boot_replaced_ttbr1_by_break_before_make, |_t| {
    // On raspi4b and the Pi the early 1 GiB blocks became 2 MiB blocks here.
    let ops = mmu::boot_ttbr1_switch();
    check_ttbr1_switch(&ops, OTHER_TABLES, mmu::kernel_root_pa())?;
    kassert_eq!(ttbr_table(mmu::ttbr1()), mmu::kernel_root_pa());
    Ok(())
});

ktest!(mmu, ttbr1_replacement_changing_block_sizes, |_t| {
    let live = mmu::kernel_root_pa();
    let (twin, split) = mmu::kernel_tables_twin().map_err(fail)?;
    let twin_root = twin.root().as_u64();
    let switched = mmu::with_text_identity_map(|| {
        // SAFETY: the text identity map is in TTBR0; the twin and the live tables map the
        // kernel alike (the twin is the live one's leaves, 1 GiB blocks split).
        let there = unsafe { mmu::replace_ttbr1(twin_root) };
        let on_twin = mmu::ttbr1();
        // SAFETY: as above, back to the tables every other CPU uses.
        let back = unsafe { mmu::replace_ttbr1(live) };
        (there, on_twin, back)
    })
    .map_err(fail)?;
    let (there, on_twin, back) = switched;
    let there = there.map_err(fail)?;
    let back = back.map_err(fail)?;
    twin.destroy(mmu::flush_local_tlb);
    kassert_eq!(ttbr_table(on_twin), twin_root);
    kassert_eq!(ttbr_table(mmu::ttbr1()), live);
    check_ttbr1_switch(&there, live, twin_root)?;
    check_ttbr1_switch(&back, twin_root, live)?;
    // Where RAM has 1 GiB blocks (virt), the twin changed block sizes; where it has none
    // (raspi4b), boot_replaced_ttbr1_by_break_before_make covers the change.
    log::info!("TTBR1 twin: {split} 1 GiB blocks mapped as 2 MiB blocks");
    Ok(())
});

ktest!(mmu, activate_and_deactivate_keep_every_state_safe, |_t| {
    kassert!(!aspace::loaded_here(), "an address space is already loaded");
    let a = aspace::create().map_err(fail)?;
    let b = aspace::create().map_err(fail)?;
    let roots = [a.root(), b.root()].map(|r| r.map_or(0, |r| r.as_u64()));
    let ((ra, rb), ops) = hw::recording(|| {
        let ra = activate(&a);
        let rb = activate(&b);
        deactivate();
        (ra, rb)
    });
    ra.map_err(|e| fail(alloc::format!("{e:?}")))?;
    rb.map_err(|e| fail(alloc::format!("{e:?}")))?;
    let reserved = mmu::reserved_table_pa();
    // The TTBR0 values carry ASIDs: compare the sequence with the one built from them.
    let ttbrs: Vec<u64> = ops
        .iter()
        .filter_map(|op| match *op {
            SysOp::Ttbr0(v) => Some(v),
            _ => None,
        })
        .collect();
    kassert_eq!(ttbrs.len(), 3);
    let mut expected = Vec::new();
    for &ttbr in &ttbrs[..2] {
        // After an ASID rollover the allocator asks for a local flush before the switch.
        let rest = ops.get(expected.len()..).unwrap_or_default();
        if rest.starts_with(&switch::flush_local_tlb()) {
            expected.extend(switch::flush_local_tlb());
        }
        expected.extend(switch::load_ttbr0(ttbr));
    }
    expected.extend(switch::unload_ttbr0(reserved));
    kassert_eq!(ops, expected);
    kassert_eq!(ttbr_table(ttbrs[0]), roots[0]);
    kassert_eq!(ttbr_table(ttbrs[1]), roots[1]);
    let kind = kinds(&roots);
    let mut cpu = CpuTables::new(reserved, true, mmu::kernel_root_pa(), &kind);
    cpu.run(&ops, &kind).map_err(fail)?;
    kassert!(!aspace::loaded_here());
    // The unload released the space: dropping the last user tears it down now.
    drop(a);
    Ok(())
});

ktest!(mmu, a_cpu_access_to_an_aged_page_makes_it_young_again, |_t| {
    let space = aspace::create().map_err(fail)?;
    activate(&space).map_err(|e| fail(alloc::format!("{e:?}")))?;
    let r = (|| {
        let va = space
            .mmap(
                Placement::Fixed(VirtAddr(0x30_0000_0000)),
                PAGE_SIZE,
                Permissions::new(true, false, false),
                Backing::Anonymous,
            )
            .map_err(fail)?;
        kassert!(space.clear_flush_young(va, PAGE_SIZE).map_err(fail)?);
        kassert!(!space.test_young(va).map_err(fail)?);
        // The read takes an Access-flag fault, answered by the handler; the probe sees only
        // the retried read.
        let read = probe_read_u64(va.0 + 8);
        kassert!(read.is_ok(), "the aged page stayed faulting: {read:?}");
        kassert!(space.test_young(va).map_err(fail)?, "the flag is set again");
        Ok(())
    })();
    deactivate();
    r
});

ktest!(mmu, reactivating_the_running_space_keeps_it_loaded, |_t| {
    kassert!(!aspace::loaded_here(), "an address space is already loaded");
    let space = aspace::create().map_err(fail)?;
    let this_cpu = 1 << crate::arch::aarch64::cpu::cpu_id();
    let (r, ops) = hw::recording(|| {
        activate(&space)?;
        let first = space.active_cpus();
        activate(&space)?;
        Ok::<_, aspace::ActivateError>((first, space.active_cpus()))
    });
    let result = r.map_err(|e| fail(alloc::format!("{e:?}")));
    let loaded = aspace::loaded_here();
    deactivate();
    let (first, second) = result?;
    kassert_eq!(first, this_cpu);
    // The second activation must not drop the first one's claim on the tables.
    kassert_eq!(second, this_cpu, "this CPU runs the space but is not in active_cpus");
    kassert!(loaded);
    let loads = ops.iter().filter(|op| matches!(op, SysOp::Ttbr0(_))).count();
    kassert_eq!(loads, 1, "the running space was switched to again: {ops:?}");
    kassert_eq!(space.active_cpus(), 0);
    Ok(())
});
