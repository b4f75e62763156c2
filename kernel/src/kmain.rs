//! The composition root: the boot order, and nothing else. Every step hands a subsystem what it
//! needs; the state each step creates lives with what it describes (`board`, `mm::ram`,
//! `rt::heap`, `iommu::probe`). Nothing imports this module.
//!
//! Boot order on the boot CPU (the others wait in `arch::aarch64::smp` until started):
//! crash hooks and early heap → device tree → boot facts and log level → kernel page tables →
//! heap and frames → real console → secondary CPUs → identity map dropped → SMMU → its
//! interrupts (the GIC, only if the SMMU has a wired eventq interrupt) → banner →
//! `bench=` benchmarks, `ktest=` tests or the workload → exit with a status.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::arch::aarch64::{cpu, exceptions, mmu, power, smp, timer};
use crate::board::dt::{self, BoardInfo, BoardKind, CpuEnable, PsciMethod, Range};
use crate::board::interrupts::GicInterrupt;
use crate::board::{self, Banner, BootArgs, BootFacts};
use crate::drivers::gic;
use crate::iommu::probe;
use crate::mm::layout::{self, KERNEL_VBASE};
use crate::mm::{ram, PhysAddr};
use crate::rt::{self, ExitCode};
use crate::{eprintln, print, println, symbol_addr};

/// How the portable synchronization primitives reach this CPU: its index, WFE and SEV.
static PLATFORM_HOOKS: crate::sync::PlatformHooks = crate::sync::PlatformHooks {
    current_cpu: crate::arch::aarch64::cpu_id,
    wait_for_event: cpu::wfe,
    send_event,
    yield_cpu: cpu::yield_hint,
};

fn send_event() {
    cpu::dsb_ish();
    cpu::sev();
}

/// Rust entry of the boot CPU (from `boot/entry.S`: MMU on with the early tables, running at
/// the link address on CPU 0's stacks, .bss zeroed).
#[no_mangle]
extern "C" fn kernel_entry(dtb_pa: u64, load_pa: u64, entered_el: u64) -> ! {
    // First, so that the benchmarks can tell what boot cost (`bench=boot`).
    crate::arch::aarch64::pmu::start();
    cpu::mask_interrupts();
    crate::sync::install_platform_hooks(&PLATFORM_HOOKS);
    // SAFETY: boot/entry.S mapped the fallback UART page at FIXMAP_UART_VA.
    unsafe { crate::console::set_uart(layout::FIXMAP_UART_VA) };
    // Before anything can fault: an unexpected exception reports on the console and exits.
    exceptions::set_fatal_hooks(exceptions::FatalHooks {
        print: crate::console::emergency_print,
        nested: rt::exit::nested_exit,
        fatal: rt::fatal_exit,
    });
    rt::set_test_name(|| crate::ktest::runner::current_test().map(|t| (t.suite, t.name)));
    power::init();
    rt::heap::init_early();

    let dtb = match map_device_tree(dtb_pa) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("shootdown: {e}");
            boot_error(format!("cannot boot without a device tree (loaded at {load_pa:#x}, entered at EL{entered_el})"));
        }
    };
    let info = match dt::parse(dtb) {
        Ok(i) => i,
        Err(e) => boot_error(format!("{e}")),
    };
    let parsed = BootArgs::parse(&info.bootargs);
    let facts = BootFacts {
        entered_el,
        load_pa,
        dtb_pa,
        dtb_size: dtb.len() as u64,
    };
    let info = board::init(info, parsed.args.clone(), facts);
    crate::console::init_logger(board::bootargs().log_level());
    if board::bootargs().trace {
        crate::trace::TRACER.enable(timer::now_ns, crate::arch::aarch64::cpu_id);
    }

    let ram: Vec<(u64, u64)> = info.memory.iter().map(|r| (r.base, r.size)).collect();
    let ram_ranges: Vec<_> = info
        .memory
        .iter()
        .map(|r| PhysAddr(r.base)..PhysAddr(r.end()))
        .collect();
    ram::set_ram(&ram_ranges);
    // SAFETY: boot CPU, early tables still live, no other CPU running.
    if let Err(e) = unsafe { mmu::init_kernel_tables(load_pa, &ram) } {
        boot_error(format!("building the kernel page tables failed: {e:?}"));
    }
    let frames = match init_memory(info, facts) {
        Ok(f) => f,
        Err(e) => boot_error(format!("cannot manage RAM: {e}")),
    };
    crate::console::init(info);

    if let Some(m) = info.psci {
        power::set_psci(Some(match m {
            PsciMethod::Hvc => power::Conduit::Hvc,
            PsciMethod::Smc => power::Conduit::Smc,
        }));
    }
    smp::start_secondaries(&cpu_descs(info), cpu::mpidr());
    smp::on_each_cpu(&|_cpu| mmu::drop_identity_map());
    let dma = info
        .dma
        .as_ref()
        .and_then(|desc| crate::drivers::bcm2835_dma::init(desc, frames));
    probe::init(probe::Platform {
        regs: info.smmu,
        // No SMMU on the Pi 4: the software model stands in, so SVA runs the same code.
        use_model: info.kind == BoardKind::RaspberryPi4,
        streams: info.iommu_map(),
        args: board::bootargs(),
        frames,
        // The Pi's DMA controller moves the bytes of the model's DMA master.
        copier: dma.map(|d| d as &'static dyn crate::mm::dma::PhysCopier),
    });

    probe::connect_interrupts(&info.smmu_interrupts, &|| interrupt_controller(info));
    let iommu = probe::banner_line();
    print!(
        "{}",
        Banner {
            info,
            facts: board::boot_facts(),
            cpus_online: smp::online_count(),
            frame_mib: frames.bitmap().total_frames() >> 8,
            iommu: iommu.as_deref(),
        }
    );
    check_bootargs(&parsed);
    // One KTAP document per boot: benchmarks or tests.
    let args = board::bootargs();
    let seed = args.seed.unwrap_or_else(timer::ticks);
    let failed = match (&args.bench, &args.ktest) {
        (Some(benches), _) => crate::bench::run(benches, seed),
        (None, Some(tests)) => crate::ktest::runner::run(tests, seed),
        (None, None) => rt::exit(crate::workload::run(args)),
    };
    rt::exit(match failed {
        Ok(0) => ExitCode::Success,
        Ok(_) => ExitCode::Failure,
        Err(e) => {
            println!("shootdown: {e}");
            ExitCode::BootError
        }
    })
}

/// Reports every boot argument the kernel cannot use, by name; stops the boot if one of them
/// changes what runs (running something else would pass for what was asked).
fn check_bootargs(parsed: &board::bootargs::Parsed) {
    for e in &parsed.errors {
        println!(
            "shootdown: {e}{}",
            if e.is_fatal() { "" } else { " (ignored)" }
        );
    }
    if let Some(e) = parsed.fatal().next() {
        println!(
            "shootdown: not running anything: `{}` decides what runs (exit {})",
            e.shown_key(),
            ExitCode::BootError as u32
        );
        rt::exit_because(ExitCode::BootError, format!("{e}"));
    }
}

/// Stops a boot that cannot go on, saying why (and, on a board that stays on, saying it again).
fn boot_error(why: String) -> ! {
    eprintln!("shootdown: {why}");
    rt::exit_because(ExitCode::BootError, why)
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

/// Splits the RAM nobody owns between the heap and the frame allocator.
fn init_memory(
    info: &BoardInfo,
    facts: BootFacts,
) -> Result<&'static ram::RamFrames, crate::mm::frame::FrameInitError> {
    let image = Range {
        base: facts.load_pa,
        size: symbol_addr!(__image_end) - KERNEL_VBASE,
    };
    let dtb = Range {
        base: facts.dtb_pa,
        size: facts.dtb_size,
    };
    // Low memory holds firmware spin tables and QEMU's boot stub on the Pi.
    let low = Range {
        base: 0,
        size: 0x10000,
    };
    let free = dt::usable_ram(&info.memory, &info.reserved, &[image, dtb, low]);
    // SAFETY: `usable_ram` left out the image, the tree, firmware's low memory and every
    // reserved range: what is left is RAM nobody owns, under the linear map.
    let heap = unsafe { rt::heap::grow(&free, info.memory_bytes()) };
    let free: Vec<_> = free
        .iter()
        .map(|r| PhysAddr(r.base)..PhysAddr(r.end()))
        .collect();
    ram::init_frames(&free, &[PhysAddr(heap.base)..PhysAddr(heap.end())])
}

/// The GIC as the SMMU probe wires its interrupts through it.
struct GicController(&'static gic::Gic);

impl probe::InterruptController for GicController {
    fn name(&self) -> String {
        alloc::format!("GICv{}", self.0.version())
    }

    fn enable(&self, irq: GicInterrupt, handler: fn(u32)) -> Result<(), String> {
        self.0.enable_spi(irq, handler).map_err(|e| e.to_string())
    }
}

static GIC_CONTROLLER: spin::Once<GicController> = spin::Once::new();

/// Brings up the GIC the device tree describes (only when a device asks for an interrupt).
fn interrupt_controller(
    info: &BoardInfo,
) -> Result<&'static dyn probe::InterruptController, String> {
    let desc = info
        .gic
        .as_ref()
        .ok_or("no interrupt controller in the device tree")?;
    let gic = gic::init(desc).map_err(|e| e.to_string())?;
    Ok(GIC_CONTROLLER.call_once(|| GicController(gic)))
}

/// The CPUs the device tree lists, as `smp` starts them.
fn cpu_descs(info: &BoardInfo) -> Vec<smp::CpuDesc> {
    info.cpus
        .iter()
        .map(|c| smp::CpuDesc {
            mpidr: c.mpidr,
            method: match c.enable {
                CpuEnable::Psci => smp::EnableMethod::Psci,
                CpuEnable::SpinTable(a) => smp::EnableMethod::SpinTable(a),
                CpuEnable::Unknown => smp::EnableMethod::None,
            },
        })
        .collect()
}
