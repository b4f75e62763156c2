//! Bringing up the other CPUs and running work on all of them.
//!
//! Start methods, from the device tree's `/cpus/cpu@N/enable-method`:
//! - `psci`: PSCI CPU_ON with the physical address of `secondary_entry` (QEMU virt);
//! - `spin-table`: write that address to the CPU's `cpu-release-addr` and SEV (the Pi 4
//!   firmware's stub parks cores on 0xd8/0xe0/0xe8/0xf0).
//!
//! Either way the CPU arrives at `secondary_entry` in `boot/entry.S` with its MMU off, finds its
//! logical number by MPIDR in [`SecondaryBoot`], turns on the MMU with the kernel tables and
//! calls [`secondary_cpu_entry`]. Cores that QEMU's `raspi4b` lets run straight into the image
//! wait in `park_in_image` instead, and are released through `park_mailbox` the same way.
//!
//! There is no scheduler: an online secondary waits (WFE) for work posted with
//! [`on_each_cpu`], runs it, and goes back to waiting.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::mm::layout::{self, MAX_CPUS};
use crate::symbol_addr;

use super::cpu::{self, clean_dcache_to_poc, cpu_id, sev, wfe};
use super::{mmu, power, timer};

/// What `secondary_entry` reads with its MMU off (layout shared with `boot/entry.S`).
#[repr(C)]
pub struct SecondaryBoot {
    /// TTBR0 for turning the MMU on (the early identity map of the image).
    pub ttbr0: u64,
    /// TTBR1: the kernel's tables.
    pub ttbr1: u64,
    /// MPIDR (Aff3..Aff0) of each logical CPU; 0 = unused slot (CPU 0 is the boot CPU).
    pub mpidr: [u64; MAX_CPUS],
}

extern "C" {
    static mut secondary_boot: SecondaryBoot;
    static mut park_mailbox: [u64; MAX_CPUS];
    static early_ttbr0: u8;
}

/// How a CPU is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnableMethod {
    /// PSCI CPU_ON.
    Psci,
    /// A spin table at this physical release address.
    SpinTable(u64),
    /// The boot CPU, or an unknown method.
    None,
}

/// A CPU as the device tree describes it.
#[derive(Clone, Copy, Debug)]
pub struct CpuDesc {
    /// MPIDR affinity value (`reg`).
    pub mpidr: u64,
    /// How to start it.
    pub method: EnableMethod,
}

static ONLINE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static ONLINE_COUNT: AtomicUsize = AtomicUsize::new(1);

/// Number of CPUs running the kernel.
pub fn online_count() -> usize {
    ONLINE_COUNT.load(Ordering::Acquire)
}

/// True if logical CPU `cpu` is running the kernel.
pub fn is_online(cpu: usize) -> bool {
    cpu == 0 || ONLINE.get(cpu).is_some_and(|b| b.load(Ordering::Acquire))
}

/// Starts every CPU in `cpus` other than the boot CPU (`boot_mpidr`). Returns how many came
/// up; CPUs beyond [`MAX_CPUS`] or that fail to start are reported and left off.
pub fn start_secondaries(cpus: &[CpuDesc], boot_mpidr: u64) -> usize {
    ONLINE[0].store(true, Ordering::Release);
    let entry_pa = mmu::image_va_to_pa(symbol_addr!(secondary_entry));
    let mut next = 1;
    for c in cpus.iter().filter(|c| c.mpidr != boot_mpidr) {
        if next >= MAX_CPUS {
            log::warn!(
                "CPU with MPIDR {:#x} not started: the kernel supports {} CPUs",
                c.mpidr,
                MAX_CPUS
            );
            continue;
        }
        let id = next;
        next += 1;
        // SAFETY: secondaries read this block only after we start them; we are the only writer.
        unsafe {
            let sb = &mut *core::ptr::addr_of_mut!(secondary_boot);
            sb.ttbr0 = mmu::image_va_to_pa(core::ptr::addr_of!(early_ttbr0) as u64);
            sb.ttbr1 = mmu::kernel_root_pa();
            sb.mpidr[id] = c.mpidr;
            clean_dcache_to_poc(sb as *const _ as u64, core::mem::size_of::<SecondaryBoot>());
        }
        let started = match c.method {
            EnableMethod::Psci => power::cpu_on(c.mpidr, entry_pa, id as u64).map_err(|e| {
                log::warn!("PSCI CPU_ON for MPIDR {:#x} failed: {:?}", c.mpidr, e);
            }),
            EnableMethod::SpinTable(release) => {
                release_spin_table(release, c.mpidr, entry_pa);
                Ok(())
            }
            EnableMethod::None => {
                log::warn!("CPU with MPIDR {:#x} has no enable method we know", c.mpidr);
                Err(())
            }
        };
        if started.is_err() {
            continue;
        }
        let deadline = timer::Deadline::after_us(1_000_000);
        while !ONLINE[id].load(Ordering::Acquire) && !deadline.expired() {
            core::hint::spin_loop();
        }
        if !ONLINE[id].load(Ordering::Acquire) {
            log::warn!(
                "CPU {id} (MPIDR {:#x}) did not come online within 1 s",
                c.mpidr
            );
        }
    }
    online_count()
}

/// Releases a spin-table CPU: the firmware stub (or our own `park_in_image`) polls the slot
/// with its caches off, so the write is cleaned to the point of coherency before SEV.
fn release_spin_table(release_pa: u64, mpidr: u64, entry_pa: u64) {
    let slot = layout::phys_to_virt(release_pa) as *mut u64;
    // SAFETY: the device tree names this word as the CPU's release address; it is RAM that
    // the linear map covers and nothing else uses.
    unsafe { slot.write_volatile(entry_pa) };
    clean_dcache_to_poc(slot as u64, 8);
    let aff0 = (mpidr & 0xff) as usize;
    if aff0 < MAX_CPUS {
        // SAFETY: park_mailbox is ours; the parked core reads it with its MMU off.
        unsafe {
            let mb = &mut *core::ptr::addr_of_mut!(park_mailbox);
            core::ptr::write_volatile(&mut mb[aff0], entry_pa);
            clean_dcache_to_poc(&mb[aff0] as *const u64 as u64, 8);
        }
    }
    cpu::dsb_sy();
    sev();
}

/* ---------------------------------------------------------------------------------------- */
/* Work on every CPU.                                                                       */
/* ---------------------------------------------------------------------------------------- */

struct Work {
    /// `call(data, cpu)`: a monomorphised trampoline for the closure behind `data`.
    call: AtomicUsize,
    data: AtomicUsize,
    /// Incremented by the poster for each piece of work.
    posted: AtomicU64,
    /// Set to `posted` by the CPU when it finished.
    done: AtomicU64,
}

static WORK: [Work; MAX_CPUS] = [const {
    Work {
        call: AtomicUsize::new(0),
        data: AtomicUsize::new(0),
        posted: AtomicU64::new(0),
        done: AtomicU64::new(0),
    }
}; MAX_CPUS];
static POSTER: spin::Mutex<()> = spin::Mutex::new(());

fn trampoline<F: Fn(usize) + Sync>(data: usize, cpu: usize) {
    // SAFETY: `on_each_cpu` keeps the closure alive until every CPU reported `done`.
    let f = unsafe { &*(data as *const F) };
    f(cpu);
}

/// Runs `f(cpu)` on every online CPU at once (the caller's CPU included) and returns when all
/// have finished.
pub fn on_each_cpu<F: Fn(usize) + Sync>(f: &F) {
    let _guard = POSTER.lock();
    let me = cpu_id();
    let mut gens = [0u64; MAX_CPUS];
    for (cpu, w) in WORK.iter().enumerate() {
        if cpu == me || !is_online(cpu) {
            continue;
        }
        w.call.store(
            trampoline::<F> as fn(usize, usize) as usize,
            Ordering::Relaxed,
        );
        w.data.store(f as *const F as usize, Ordering::Relaxed);
        gens[cpu] = w.posted.fetch_add(1, Ordering::Release) + 1;
    }
    cpu::dsb_ish();
    sev();
    f(me);
    for (cpu, w) in WORK.iter().enumerate() {
        if gens[cpu] != 0 {
            while w.done.load(Ordering::Acquire) != gens[cpu] {
                // Idle: take interrupts (the SMMU's events are routed to the boot CPU).
                super::irq::wfe_in_window();
            }
        }
    }
}

fn idle_loop(cpu: usize) -> ! {
    let w = &WORK[cpu];
    let mut seen = 0;
    loop {
        let posted = w.posted.load(Ordering::Acquire);
        if posted == seen {
            wfe();
            continue;
        }
        let call = w.call.load(Ordering::Relaxed);
        let data = w.data.load(Ordering::Relaxed);
        // SAFETY: `on_each_cpu` stored a `trampoline::<F>` instance as `call`.
        let call: fn(usize, usize) =
            unsafe { core::mem::transmute::<usize, fn(usize, usize)>(call) };
        call(data, cpu);
        seen = posted;
        w.done.store(posted, Ordering::Release);
        cpu::dsb_ish();
        sev();
    }
}

/// Rust entry of a secondary CPU (from `boot/entry.S`, MMU on, on its own stacks).
#[no_mangle]
extern "C" fn secondary_cpu_entry(cpu: usize) -> ! {
    cpu::mask_interrupts();
    mmu::harden_this_cpu();
    ONLINE[cpu].store(true, Ordering::Release);
    ONLINE_COUNT.fetch_add(1, Ordering::AcqRel);
    idle_loop(cpu)
}
