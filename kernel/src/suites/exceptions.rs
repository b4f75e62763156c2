//! Exceptions are caught and decoded; the kernel's own mappings enforce W^X and guard pages,
//! PAN keeps the kernel out of EL0 pages, and no identity map survives boot.

use crate::arch::aarch64::aspace::{self, activate, deactivate};
use crate::arch::aarch64::cpu::{has_pan, pan_enabled, set_pan};
use crate::arch::aarch64::exceptions::{probe_exec, probe_read_u64, probe_write_u64, FaultKind};
use crate::arch::aarch64::{mmu, smp};
use crate::ktest::TestError;
use crate::mm::aspace::{Backing, Placement};
use crate::mm::layout;
use crate::mm::pgtable::descriptor::Permissions;
use crate::mm::{VirtAddr, PAGE_SIZE};
use crate::{kassert, kassert_eq, kskip, ktest, symbol_addr};

fn fail(e: impl core::fmt::Debug) -> TestError {
    TestError::Fail(alloc::format!("{e:?}"))
}

ktest!(exceptions, unmapped_read_is_caught_and_decoded, |_t| {
    // Inside the MMIO window, never mapped: a level-2 or level-3 translation fault.
    let addr = layout::MMIO_BASE + layout::MMIO_SIZE - 0x1000 + 0x18;
    let fault = probe_read_u64(addr);
    kassert!(fault.is_err(), "read of {addr:#x} did not fault");
    let fault = fault.unwrap_err();
    kassert!(fault.is_data_abort(), "not a data abort: {fault}");
    kassert!(
        matches!(fault.kind(), FaultKind::Translation(_)),
        "not a translation fault: {fault}"
    );
    kassert!(!fault.is_write(), "decoded as a write: {fault}");
    kassert_eq!(fault.far, addr);
    let text = alloc::format!("{fault}");
    kassert!(
        text.contains("Data Abort") && text.contains("translation fault") && text.contains("read"),
        "decoded as: {text}"
    );
    Ok(())
});

ktest!(exceptions, write_to_text_faults, |_t| {
    let target = symbol_addr!(__text_start) + 0x100;
    let before = probe_read_u64(target);
    kassert!(before.is_ok(), "kernel text not readable");
    // SAFETY: if the write succeeded it would store the same value back: harmless.
    let fault = unsafe { probe_write_u64(target, before.unwrap_or(0)) };
    kassert!(fault.is_err(), "kernel text is writable");
    let fault = fault.unwrap_err();
    kassert!(
        matches!(fault.kind(), FaultKind::Permission(_)),
        "not a permission fault: {fault}"
    );
    kassert!(fault.is_write(), "not decoded as a write: {fault}");
    kassert_eq!(fault.far, target);
    Ok(())
});

static mut RET_INSN: [u32; 2] = [0xd65f_03c0, 0xd65f_03c0]; // `ret`

ktest!(exceptions, execute_from_data_faults, |_t| {
    let addr = core::ptr::addr_of!(RET_INSN) as u64;
    // SAFETY: the target is a `ret`: if it executed, it would simply return.
    let fault = unsafe { probe_exec(addr) };
    kassert!(
        fault.is_err(),
        "code in .data executed: W^X is not enforced"
    );
    let fault = fault.unwrap_err();
    kassert!(
        fault.is_instruction_abort(),
        "not an instruction abort: {fault}"
    );
    kassert!(
        matches!(fault.kind(), FaultKind::Permission(_)),
        "not a permission fault: {fault}"
    );
    kassert_eq!(fault.far, addr);
    Ok(())
});

ktest!(exceptions, stack_guard_pages_are_unmapped, |_t| {
    let stacks = symbol_addr!(__stacks_start);
    for cpu in 0..layout::MAX_CPUS as u64 {
        let block = stacks + cpu * layout::CPU_STACK_STRIDE as u64;
        for guard in [block, block + layout::MAIN_STACK_TOP as u64] {
            let r = probe_read_u64(guard + 8);
            kassert!(r.is_err(), "guard page {guard:#x} of CPU {cpu} is mapped");
            kassert!(
                matches!(r.unwrap_err().kind(), FaultKind::Translation(3)),
                "guard of CPU {cpu}: not a level-3 translation fault"
            );
        }
        // The stacks themselves are mapped.
        kassert!(
            probe_read_u64(block + 4096).is_ok(),
            "main stack of CPU {cpu} not mapped"
        );
    }
    Ok(())
});

ktest!(exceptions, pan_is_on_on_every_cpu, |_t| {
    if !has_pan() {
        kskip!("the CPU has no FEAT_PAN");
    }
    let off = core::sync::atomic::AtomicUsize::new(0);
    smp::on_each_cpu(&|_cpu| {
        if !pan_enabled() {
            off.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        }
    });
    kassert_eq!(off.load(core::sync::atomic::Ordering::Relaxed), 0);
    Ok(())
});

ktest!(exceptions, pan_stops_kernel_access_to_user_pages, |t| {
    if !has_pan() {
        kskip!("the CPU has no FEAT_PAN");
    }
    let space = aspace::create().map_err(fail)?;
    activate(&space).map_err(fail)?;
    let result = (|| {
        let va = space
            .mmap(
                Placement::Fixed(VirtAddr(0x20_0000_0000)),
                PAGE_SIZE,
                Permissions::USER_RW,
                Backing::Anonymous,
            )
            .map_err(fail)?;
        let addr = va.0 + 8 * (t.rand() % 512);
        let fault = probe_read_u64(addr);
        kassert!(
            fault.is_err(),
            "EL1 read of an EL0 page at {addr:#x} succeeded with PAN on"
        );
        let fault = fault.unwrap_err();
        kassert!(
            matches!(fault.kind(), FaultKind::Permission(_)),
            "not a permission fault: {fault}"
        );
        kassert_eq!(fault.far, addr);
        kassert!(pan_enabled(), "PAN was lost across the exception");
        // The same read with PAN off succeeds: it was PAN, not the mapping, that stopped it.
        set_pan(false);
        let unguarded = probe_read_u64(addr);
        set_pan(true);
        kassert!(
            unguarded.is_ok(),
            "read with PAN off faulted too: the test proves nothing"
        );
        Ok(())
    })();
    deactivate();
    result
});

ktest!(exceptions, no_identity_map_after_boot, |_t| {
    // The early tables of boot/entry.S mapped the image at its physical address; after boot
    // TTBR0 walks are off until an address space is activated.
    let image_pa = mmu::image_va_to_pa(layout::KERNEL_VBASE);
    for pa in [image_pa, image_pa + (2 << 20), image_pa & !((1 << 30) - 1)] {
        let r = probe_read_u64(pa + 8);
        kassert!(
            r.is_err(),
            "physical address {pa:#x} is still identity-mapped"
        );
        kassert!(
            matches!(r.unwrap_err().kind(), FaultKind::Translation(_)),
            "{pa:#x}: not a translation fault"
        );
    }
    Ok(())
});
