//! Boot reached, CPUs online, device tree values against what QEMU was told.
//!
//! The QEMU profiles pass what they configured as `expect.*` boot arguments
//! (`expect.mem_mib=`, `expect.cpus=`, `expect.uart=`); without them (real hardware) the
//! comparisons are skipped, not passed.

use crate::arch::aarch64::smp;
use crate::board;
use crate::board::{boot_facts, bootargs};
use crate::{kassert, kassert_eq, kskip, ktest};

ktest!(boot, reached, |_t| {
    let f = boot_facts();
    kassert!(
        f.entered_el == 1 || f.entered_el == 2,
        "entered at EL{}",
        f.entered_el
    );
    kassert!(
        f.load_pa % 4096 == 0,
        "load address {:#x} not page aligned",
        f.load_pa
    );
    Ok(())
});

ktest!(boot, all_cpus_online, |_t| {
    let in_tree = board::info().cpus.len().min(crate::mm::layout::MAX_CPUS);
    kassert_eq!(smp::online_count(), in_tree);
    for cpu in 0..in_tree {
        kassert!(smp::is_online(cpu), "CPU {cpu} is not online");
    }
    Ok(())
});

fn expected(key: &str) -> Option<u64> {
    bootargs().number(key).and_then(Result::ok)
}

ktest!(boot, dt_memory_matches_qemu, |_t| {
    let Some(mib) = expected("expect.mem_mib") else {
        kskip!("no expect.mem_mib= boot argument")
    };
    kassert_eq!(board::info().memory_bytes() >> 20, mib);
    Ok(())
});

ktest!(boot, dt_cpus_match_qemu, |_t| {
    let Some(n) = expected("expect.cpus") else {
        kskip!("no expect.cpus= boot argument")
    };
    kassert_eq!(board::info().cpus.len() as u64, n);
    Ok(())
});

ktest!(boot, dt_uart_matches_qemu, |_t| {
    let Some(base) = expected("expect.uart") else {
        kskip!("no expect.uart= boot argument")
    };
    let uart = board::info().uart;
    kassert!(uart.is_some(), "no PL011 found in the device tree");
    kassert_eq!(uart.map(|u| u.base), Some(base));
    Ok(())
});

ktest!(boot, bootargs_reach_the_kernel, |_t| {
    // The harness always passes ktest=...: the kernel can only be here if it read them.
    kassert!(bootargs().get("ktest").is_some());
    kassert!(board::info().bootargs.contains("ktest="));
    Ok(())
});
