//! Boot reached, CPUs online, and the device tree against the machine it describes: every
//! expectation comes from the tree and the hardware (the RAM it lists answers, the CPUs it
//! lists are the ones running, its UART is a PL011), never from what a launcher was told.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::aarch64::{cpu, mmu, smp};
use crate::board;
use crate::board::{boot_facts, bootargs};
use crate::drivers::pl011::Pl011;
use crate::mm::layout::{self, MAX_CPUS};
use crate::rig::fail;
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
    let in_tree = board::info().cpus.len().min(MAX_CPUS);
    kassert_eq!(smp::online_count(), in_tree);
    for cpu in 0..in_tree {
        kassert!(smp::is_online(cpu), "CPU {cpu} is not online");
    }
    Ok(())
});

ktest!(boot, dt_memory_is_ram, |_t| {
    // Reading where a machine has no RAM is an external abort (QEMU and hardware alike), which
    // ends the run: the first and last word of every range the tree lists must read.
    let info = board::info();
    kassert!(!info.memory.is_empty(), "the tree lists no RAM");
    for r in &info.memory {
        kassert!(
            r.size >= 4096,
            "a RAM range of {} bytes at {:#x}",
            r.size,
            r.base
        );
        for pa in [r.base, r.end() - 8] {
            let va = layout::phys_to_virt(pa) as *const u64;
            // SAFETY: RAM the tree lists is under the linear map; a read changes nothing.
            let _ = unsafe { va.read_volatile() };
        }
    }
    let frames = crate::mm::ram::frames().ok_or_else(|| fail("no frame allocator"))?;
    let frame_bytes = frames.bitmap().total_frames() as u64 * 4096;
    kassert!(
        frame_bytes <= info.memory_bytes(),
        "{frame_bytes} bytes of frames from {} bytes of RAM",
        info.memory_bytes()
    );
    Ok(())
});

/// MPIDR affinity of each online CPU, as it reads its own register.
static SEEN_MPIDR: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];

ktest!(boot, dt_cpus_are_the_running_cpus, |_t| {
    let tree: alloc::vec::Vec<u64> = board::info().cpus.iter().map(|c| c.mpidr).collect();
    for (i, m) in tree.iter().enumerate() {
        kassert!(!tree[..i].contains(m), "MPIDR {m:#x} twice in the tree");
    }
    smp::on_each_cpu(&|cpu| SEEN_MPIDR[cpu].store(cpu::mpidr(), Ordering::Relaxed));
    let mut seen = 0;
    for (cpu, slot) in SEEN_MPIDR
        .iter()
        .enumerate()
        .filter(|(c, _)| smp::is_online(*c))
    {
        let m = slot.load(Ordering::Relaxed);
        kassert!(
            tree.contains(&m),
            "CPU {cpu} runs as MPIDR {m:#x}, which the tree lacks: {tree:x?}"
        );
        seen += 1;
    }
    kassert_eq!(
        seen,
        tree.len().min(MAX_CPUS),
        "CPUs running vs in the tree"
    );
    Ok(())
});

ktest!(boot, dt_uart_is_a_pl011, |_t| {
    let Some(uart) = board::info().uart else {
        kskip!("the device tree names no PL011")
    };
    let va = mmu::ioremap(uart.base, uart.size.max(4096)).map_err(fail)?;
    // SAFETY: just mapped as Device memory, for the rest of the kernel's life.
    let (periph, cell) = unsafe { Pl011::new(va) }.ids();
    // PL011 TRM 3.3.14-15: PrimeCell ID 0xB105F00D, part number 0x011, designer Arm (0x41).
    kassert_eq!(cell, 0xb105_f00d, "PrimeCell ID at {:#x}", uart.base);
    kassert_eq!(
        periph & 0x000f_ffff,
        0x0004_1011,
        "peripheral ID at {:#x}",
        uart.base
    );
    Ok(())
});

ktest!(boot, bootargs_reach_the_kernel, |_t| {
    // The harness always passes ktest=...: the kernel can only be here if it read them.
    kassert!(bootargs().ktest.is_some());
    kassert!(board::info().bootargs.contains("ktest="));
    Ok(())
});
