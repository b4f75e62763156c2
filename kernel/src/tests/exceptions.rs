//! Exceptions are caught and decoded; the kernel's own mappings enforce W^X and guard pages.

use crate::arch::aarch64::exceptions::{probe_exec, probe_read_u64, probe_write_u64, FaultKind};
use crate::mm::layout;
use crate::{kassert, kassert_eq, ktest, symbol_addr};

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
