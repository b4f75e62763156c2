//! The kernel proper: boot from `kernel_entry`, the banner, test mode or the main job, exit.
//!
//! Boot order on the boot CPU (the others wait in `arch::aarch64::smp` until started):
//! early console (fallback UART) → device tree check → heap → device tree parse → kernel page
//! tables → frames → real console → secondary CPUs → identity map dropped → banner →
//! `ktest=` tests or the main job → exit with a status.

use alloc::string::String;
use alloc::vec::Vec;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use buddy_system_allocator::LockedHeap;

use crate::arch::aarch64::{cpu, mmu, power, smp, timer};
use crate::board::dt::{self, BoardInfo, BoardKind, PsciMethod, Range};
use crate::board::BootArgs;
use crate::mm::frame::BitmapFrameAllocator;
use crate::mm::layout::{self, KERNEL_VBASE};
use crate::mm::phys::PhysMemory;
use crate::mm::PhysAddr;
use crate::{eprintln, println, symbol_addr};

/// How the kernel ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Everything passed.
    Success = 0,
    /// One or more tests (or the workload's checks) failed.
    Failure = 1,
    /// The kernel could not boot (e.g. no usable device tree).
    BootError = 2,
    /// A panic or an unexpected exception.
    Crash = 3,
}

/* ---------------------------------------------------------------------------------------- */
/* Global state set once during boot.                                                       */
/* ---------------------------------------------------------------------------------------- */

static BOARD: spin::Once<BoardInfo> = spin::Once::new();
static BOOTARGS: spin::Once<BootArgs> = spin::Once::new();
static BOOT: spin::Once<BootFacts> = spin::Once::new();

/// Facts about this boot that tests and the banner report.
#[derive(Debug, Clone, Copy)]
pub struct BootFacts {
    /// Exception level the kernel was entered at (1 or 2).
    pub entered_el: u64,
    /// Physical address the image was loaded at.
    pub load_pa: u64,
    /// Physical address of the device tree.
    pub dtb_pa: u64,
    /// Its size.
    pub dtb_size: u64,
}

/// The board as the device tree describes it.
pub fn board() -> &'static BoardInfo {
    BOARD
        .get()
        .expect("board() before the device tree was read")
}

/// The boot arguments.
pub fn bootargs() -> &'static BootArgs {
    BOOTARGS
        .get()
        .expect("bootargs() before the device tree was read")
}

/// How this boot went.
pub fn boot_facts() -> &'static BootFacts {
    BOOT.get().expect("boot_facts() before boot")
}

/* ---------------------------------------------------------------------------------------- */
/* Memory: heap and frames.                                                                  */
/* ---------------------------------------------------------------------------------------- */

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// Heap available before RAM is known (in .bss).
const EARLY_HEAP: usize = 4 << 20;
#[repr(C, align(4096))]
struct EarlyHeap([u8; EARLY_HEAP]);
static mut EARLY_HEAP_SPACE: EarlyHeap = EarlyHeap([0; EARLY_HEAP]);

/// Physical memory through the linear map.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinearMap;

impl PhysMemory for LinearMap {
    fn word(&self, pa: PhysAddr) -> Option<&core::sync::atomic::AtomicU64> {
        if !pa.is_aligned(8) || !is_ram(pa.as_u64(), 8) {
            return None;
        }
        // SAFETY: `pa` is RAM, which the linear map covers for the kernel's whole life; the
        // word is 8-byte aligned and only accessed atomically through this reference.
        Some(unsafe {
            &*(layout::phys_to_virt(pa.as_u64()) as *const core::sync::atomic::AtomicU64)
        })
    }

    fn bytes(&self, pa: PhysAddr, len: usize) -> Option<*mut u8> {
        is_ram(pa.as_u64(), len as u64).then(|| layout::phys_to_virt(pa.as_u64()) as *mut u8)
    }
}

fn is_ram(pa: u64, len: u64) -> bool {
    let Some(end) = pa.checked_add(len) else {
        return false;
    };
    board()
        .memory
        .iter()
        .any(|r| pa >= r.base && end <= r.end())
}

/// The kernel's physical frame allocator: every usable 4 KiB frame of RAM.
pub type KernelFrames = BitmapFrameAllocator<LinearMap>;

static FRAMES: spin::Once<KernelFrames> = spin::Once::new();

/// The frame allocator, once RAM is managed.
pub fn frames() -> Option<&'static KernelFrames> {
    FRAMES.get()
}

/* ---------------------------------------------------------------------------------------- */
/* Boot.                                                                                     */
/* ---------------------------------------------------------------------------------------- */

/// How the portable synchronization primitives reach this CPU: its index, WFE and SEV.
static PLATFORM_HOOKS: crate::sync::PlatformHooks = crate::sync::PlatformHooks {
    current_cpu: crate::arch::aarch64::cpu_id,
    wait_for_event: cpu::wfe,
    send_event,
};

fn send_event() {
    cpu::dsb_ish();
    cpu::sev();
}

/// Rust entry of the boot CPU (from `boot/entry.S`: MMU on with the early tables, running at
/// the link address on CPU 0's stacks, .bss zeroed).
#[no_mangle]
extern "C" fn kernel_entry(dtb_pa: u64, load_pa: u64, entered_el: u64) -> ! {
    cpu::mask_interrupts();
    crate::sync::install_platform_hooks(&PLATFORM_HOOKS);
    // SAFETY: boot/entry.S mapped the fallback UART page at FIXMAP_UART_VA.
    unsafe { crate::console::set_uart(layout::FIXMAP_UART_VA) };
    power::init();

    // SAFETY: the early heap is used by nothing else; this runs once.
    unsafe {
        let start = core::ptr::addr_of_mut!(EARLY_HEAP_SPACE) as usize;
        HEAP.lock().init(start, EARLY_HEAP);
    }

    let dtb = match map_device_tree(dtb_pa) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("shootdown: {e}");
            eprintln!("shootdown: cannot boot without a device tree (loaded at {load_pa:#x}, entered at EL{entered_el})");
            exit(ExitCode::BootError);
        }
    };
    let info = match dt::parse(dtb) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("shootdown: {e}");
            exit(ExitCode::BootError);
        }
    };
    let args = BootArgs::parse(&info.bootargs);
    BOOT.call_once(|| BootFacts {
        entered_el,
        load_pa,
        dtb_pa,
        dtb_size: dtb.len() as u64,
    });
    BOOTARGS.call_once(|| args);
    let info = BOARD.call_once(|| info);
    crate::console::init_logger(log_level(bootargs()));
    if bootargs().flag("trace") {
        crate::trace::TRACER.enable(timer::now_ns, crate::arch::aarch64::cpu_id);
    }

    let ram: Vec<(u64, u64)> = info.memory.iter().map(|r| (r.base, r.size)).collect();
    // SAFETY: boot CPU, early tables still live, no other CPU running.
    if let Err(e) = unsafe { mmu::init_kernel_tables(load_pa, &ram) } {
        eprintln!("shootdown: building the kernel page tables failed: {e:?}");
        exit(ExitCode::BootError);
    }
    if let Err(e) = init_memory(info, load_pa, dtb_pa, dtb.len() as u64) {
        eprintln!("shootdown: cannot manage RAM: {e}");
        exit(ExitCode::BootError);
    }
    init_console(info);

    if let Some(m) = info.psci {
        power::set_psci(Some(match m {
            PsciMethod::Hvc => power::Conduit::Hvc,
            PsciMethod::Smc => power::Conduit::Smc,
        }));
    }
    let cpus: Vec<smp::CpuDesc> = info
        .cpus
        .iter()
        .map(|c| smp::CpuDesc {
            mpidr: c.mpidr,
            method: match c.enable {
                dt::CpuEnable::Psci => smp::EnableMethod::Psci,
                dt::CpuEnable::SpinTable(a) => smp::EnableMethod::SpinTable(a),
                dt::CpuEnable::Unknown => smp::EnableMethod::None,
            },
        })
        .collect();
    smp::start_secondaries(&cpus, cpu::mpidr());
    smp::on_each_cpu(&|_cpu| mmu::drop_identity_map());
    crate::iommu::kernel::init();

    banner(info);
    let status = match bootargs().get("ktest") {
        Some(filter) => run_tests(filter),
        None => crate::job::run(),
    };
    exit(status)
}

fn log_level(args: &BootArgs) -> log::LevelFilter {
    match args.get("log") {
        Some("error") => log::LevelFilter::Error,
        Some("warn") => log::LevelFilter::Warn,
        Some("debug") => log::LevelFilter::Debug,
        Some("trace") => log::LevelFilter::Trace,
        Some("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Info,
    }
}

/// Checks the device tree header through the early linear map and returns the blob.
fn map_device_tree(dtb_pa: u64) -> Result<&'static [u8], dt::DtError> {
    if dtb_pa == 0 || dtb_pa % 8 != 0 {
        return Err(dt::DtError::BadPointer(dtb_pa));
    }
    let va = layout::phys_to_virt(dtb_pa);
    // The early tables map 2 GiB from the 1 GiB block holding the tree.
    let mapped_end = layout::phys_to_virt((dtb_pa & !((1 << 30) - 1)) + (2 << 30));
    // SAFETY: boot/entry.S mapped these 8 bytes (the 2 GiB from the tree's GiB).
    let header = unsafe { core::slice::from_raw_parts(va as *const u8, 8) };
    let size = dt::check_header(header)?;
    if va + size as u64 > mapped_end {
        return Err(dt::DtError::BadSize(size));
    }
    // SAFETY: checked above: `size` bytes from `va` are mapped; nothing writes the tree.
    Ok(unsafe { core::slice::from_raw_parts(va as *const u8, size) })
}

fn init_memory(
    info: &BoardInfo,
    load_pa: u64,
    dtb_pa: u64,
    dtb_size: u64,
) -> Result<(), crate::mm::frame::FrameInitError> {
    let image = Range {
        base: load_pa,
        size: symbol_addr!(__image_end) - KERNEL_VBASE,
    };
    let dtb = Range {
        base: dtb_pa,
        size: dtb_size,
    };
    // Low memory holds firmware spin tables and QEMU's boot stub on the Pi.
    let low = Range {
        base: 0,
        size: 0x10000,
    };
    let free = dt::usable_ram(&info.memory, &info.reserved, &[image, dtb, low]);

    // Give the heap a slice of the largest range (1/8 of RAM, at most 64 MiB); frames get the rest.
    let largest = free.iter().copied().max_by_key(|r| r.size);
    let mut heap = Range { base: 0, size: 0 };
    if let Some(l) = largest {
        let size = (info.memory_bytes() / 8).min(64 << 20).min(l.size / 2) & !0xfff;
        if size > 0 {
            // SAFETY: the range is usable RAM nobody else owns, mapped by the linear map.
            unsafe {
                HEAP.lock().add_to_heap(
                    layout::phys_to_virt(l.base) as usize,
                    layout::phys_to_virt(l.base + size) as usize,
                )
            };
            heap = Range { base: l.base, size };
        }
    }
    let ram: Vec<core::ops::Range<PhysAddr>> = free
        .iter()
        .map(|r| PhysAddr(r.base)..PhysAddr(r.end()))
        .collect();
    let allocator = BitmapFrameAllocator::new(
        LinearMap,
        &ram,
        &[PhysAddr(heap.base)..PhysAddr(heap.end())],
    )?;
    FRAMES.call_once(|| allocator);
    Ok(())
}

fn init_console(info: &BoardInfo) {
    let Some(uart) = info.uart else {
        log::warn!("no PL011 in the device tree: staying on the fallback UART");
        return;
    };
    let va = match mmu::ioremap(uart.base, uart.size.max(0x1000)) {
        Ok(va) => va,
        Err(e) => {
            log::warn!("cannot map the UART at {:#x}: {e:?}", uart.base);
            return;
        }
    };
    if info.kind == BoardKind::RaspberryPi4 {
        // Real Pi firmware leaves GPIO 14/15 to the mini UART unless told otherwise, and the
        // PL011 reference clock is `init_uart_clock` (48 MHz in our config.txt).
        if let Some(gpio) = info
            .gpio
            .and_then(|g| mmu::ioremap(g.base, g.size.max(0x1000)).ok())
        {
            crate::console::flush();
            // SAFETY: `gpio` maps the BCM2711 GPIO block.
            unsafe { crate::drivers::bcm2711_gpio::route_uart0_to_gpio14_15(gpio) };
            // SAFETY: `va` maps the PL011 the device tree names.
            unsafe { crate::drivers::pl011::Pl011::new(va) }.init(48_000_000, 115_200);
        }
    }
    crate::console::flush();
    // SAFETY: `va` maps the PL011 for the rest of the kernel's life.
    unsafe { crate::console::set_uart(va) };
}

fn banner(info: &BoardInfo) {
    let facts = boot_facts();
    let kind = match info.kind {
        BoardKind::QemuVirt => "QEMU virt",
        BoardKind::RaspberryPi4 => "Raspberry Pi 4",
        BoardKind::Other => "unknown board",
    };
    println!("Shootdown {} (aarch64)", env!("CARGO_PKG_VERSION"));
    println!("  board    {} ({kind})", info.model);
    println!(
        "  cpus     {} online of {} in the device tree",
        smp::online_count(),
        info.cpus.len()
    );
    let frame_mib = frames().map_or(0, |f| f.bitmap().total_frames() >> 8);
    println!(
        "  memory   {} MiB in {} range(s); {} MiB in page frames",
        info.memory_bytes() >> 20,
        info.memory.len(),
        frame_mib
    );
    println!(
        "  entered  EL{} at {:#x}, device tree at {:#x} ({} bytes)",
        facts.entered_el, facts.load_pa, facts.dtb_pa, facts.dtb_size
    );
    let mut devices = String::new();
    for (i, d) in info.devices.iter().enumerate() {
        if i > 0 {
            devices.push_str(", ");
        }
        devices.push_str(d);
    }
    println!("  devices  {devices}");
    if !info.bootargs.is_empty() {
        println!("  bootargs {}", info.bootargs);
    }
}

fn run_tests(filter: &str) -> ExitCode {
    let seed = match bootargs().number("seed") {
        None => timer::ticks(),
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            println!("# {e}; using the timer as seed");
            timer::ticks()
        }
    };
    let failed = crate::ktest::runner::run(filter, seed);
    if failed == 0 {
        ExitCode::Success
    } else {
        ExitCode::Failure
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Exit.                                                                                     */
/* ---------------------------------------------------------------------------------------- */

static EXITING: AtomicBool = AtomicBool::new(false);

/// Ends the kernel with `code`: QEMU exits with it (semihosting), or the machine is switched
/// off (PSCI), or, on hardware without either, the CPU parks after printing the final line.
pub fn exit(code: ExitCode) -> ! {
    if EXITING.swap(true, Ordering::AcqRel) {
        cpu::halt();
    }
    exit_now(code)
}

/// Like [`exit`] but without the once-only check (for the exception path).
pub fn exit_now(code: ExitCode) -> ! {
    dump_trace();
    eprintln!("# shootdown: exit {}", code as u32);
    crate::console::flush();
    power::semihosting_exit(code as u32);
    if code == ExitCode::Success {
        power::system_off();
    } else {
        power::system_reset();
    }
    crate::console::flush();
    cpu::halt()
}

/// Prints the trace rings (if tracing was on) as `# T` lines between markers the harness
/// looks for. Lock-free: it may run on the crash path.
fn dump_trace() {
    if !crate::trace::TRACER.is_enabled() {
        return;
    }
    let records = crate::trace::TRACER.drain();
    eprintln!(
        "# trace-begin {} records, clock {} Hz",
        records.len(),
        timer::frequency()
    );
    struct Emergency;
    impl core::fmt::Write for Emergency {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            crate::console::emergency_print(format_args!("{s}"));
            Ok(())
        }
    }
    let _ = crate::trace::write_records(&mut Emergency, &records);
    eprintln!("# trace-end");
}

/// The end of an unexpected exception (after its report): a test run bails out.
pub fn fatal_exit() -> ! {
    if let Some(t) = crate::ktest::runner::current_test() {
        eprintln!("Bail out! unexpected exception in {}.{}", t.suite, t.name);
    }
    exit(ExitCode::Crash)
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    cpu::mask_interrupts();
    let cpu = crate::arch::aarch64::cpu_id();
    match crate::ktest::runner::current_test() {
        Some(t) => eprintln!(
            "Bail out! panic in {}.{} on CPU {cpu}: {info}",
            t.suite, t.name
        ),
        None => eprintln!("\n!!! kernel panic on CPU {cpu}: {info}"),
    }
    exit(ExitCode::Crash)
}
