//! The loader on the hardware: entry, UART, GPIO, timer, caches, and the jump.
//!
//! Everything runs with the MMU off, so every data access is Device-nGnRnE (Arm ARM D8.2.11,
//! "The effects of disabling an address translation stage"): no unaligned accesses (the target
//! has `+strict-align`) and no exclusives (no atomics here). That is slow but simple, and fast
//! enough for 115200 baud.

mod cpu;
mod pl011;

use crate::board::{self, Board};
use crate::fdt_edit::{self, FDT_MAGIC};
use crate::placement::{self, Placement, Range};
use crate::protocol::{BootargsMode, Header, Nak, Refusal, Sink};
use crate::receiver::{self, Link, Memory};

use pl011::Pl011;

// `raw`: the assembly is taken as is (its comments use braces).
core::arch::global_asm!(include_str!("entry.S"), options(raw));

extern "C" {
    static __image_end: u8;
    fn jump_to_kernel(entry: u64, dtb: u64) -> !;
}

/// Fallback console if the device tree is unusable, chosen by load address like
/// `boot/entry.S` does: the Pi's RAM starts at 0 (PL011 UART0 at bus address 0x7e201000, CPU
/// address 0xfe201000 in the BCM2711's low-peripheral mode: "BCM2711 ARM Peripherals" 1.2),
/// QEMU virt's at 1 GiB (PL011 at 0x09000000: QEMU `hw/arm/virt.c` `base_memmap`).
const UART_PI: u64 = 0xfe20_1000;
const UART_VIRT: u64 = 0x0900_0000;
/// The PL011 reference clock on the Pi: `init_uart_clock=48000000` in our `config.txt`
/// (the firmware default, `raspberrypi/documentation` `config_txt/boot.adoc`).
const PI_UART_CLOCK: u32 = 48_000_000;
const BAUD: u32 = 115_200;
/// Largest device tree accepted (booting.rst: "must not exceed 2 megabytes").
const MAX_DTB: usize = 2 << 20;

/// Rust entry from `entry.S`: relocated, .bss zeroed, on our stack.
#[no_mangle]
extern "C" fn loader_main(dtb_pa: u64, load_pa: u64) -> ! {
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let image = Range::new(load_pa, image_end - load_pa);
    let dtb = device_tree(dtb_pa);
    let board = dtb.map(board::read);

    let fallback = if load_pa < 0x4000_0000 {
        UART_PI
    } else {
        UART_VIRT
    };
    let uart_pa = match board {
        Some(Ok(Board { uart: Some(u), .. })) => u,
        _ => fallback,
    };
    // SAFETY: the address is the console PL011 the device tree names (or the board's fixed
    // one); with the MMU off it is accessed as Device memory.
    let mut uart = unsafe { Pl011::new(uart_pa) };
    match board {
        Some(Ok(Board {
            gpio: Some(gpio), ..
        })) => {
            // SAFETY: the device tree names this as the BCM2711 GPIO block.
            unsafe { pl011::route_uart0_to_gpio14_15(gpio) };
            uart.init(PI_UART_CLOCK, BAUD);
        }
        _ => uart.enable(),
    }

    uart.end_line();
    uart.put_str("chainloader: Shootdown UART chainloader, protocol ");
    uart.put_dec(crate::protocol::VERSION.into());
    uart.put_str(", loaded at ");
    uart.put_hex(load_pa);
    uart.put_str(" (");
    uart.put_dec(image.size);
    uart.put_str(" bytes), console PL011 at ");
    uart.put_hex(uart_pa);
    uart.end_line();

    let (blob, board) = match (dtb, board) {
        (Some(blob), Some(Ok(b))) => (blob, b),
        (_, Some(Err(e))) => refuse_forever(&mut uart, e.describe(), dtb_pa),
        _ => refuse_forever(&mut uart, "x0 holds no valid device tree", dtb_pa),
    };
    let mut mem = TargetMemory::new(&board, image, dtb_pa, blob);
    report_board(&mut uart, &board, &mem);

    let loaded = receiver::serve(&mut uart, &mut mem, receiver::TIMING);

    uart.put_str("chainloader: starting the kernel at ");
    uart.put_hex(loaded.placement.kernel);
    uart.put_str(" with the device tree at ");
    uart.put_hex(loaded.dtb);
    uart.end_line();
    uart.flush();
    // SAFETY: the payload is a checked arm64 Image at a 2 MiB-aligned base in free RAM, its
    // footprint (bss included) clear of everything live; x0 is a valid device tree.
    unsafe { jump_to_kernel(loaded.placement.kernel, loaded.dtb) }
}

/// The device tree at `pa` if its header is sane (booting.rst: 8-byte aligned, at most 2 MiB).
fn device_tree(pa: u64) -> Option<&'static [u8]> {
    if pa == 0 || pa % 8 != 0 {
        return None;
    }
    // SAFETY: 8 bytes at a non-null, aligned address the boot protocol says holds the tree.
    let header = unsafe { core::slice::from_raw_parts(pa as *const u8, 8) };
    let size = fdt_edit::total_size(header)?;
    if !(40..=MAX_DTB).contains(&size)
        || u32::from_be_bytes([header[0], header[1], header[2], header[3]]) != FDT_MAGIC
    {
        return None;
    }
    // SAFETY: the header says the tree is `size` bytes long; nothing writes it while we run.
    Some(unsafe { core::slice::from_raw_parts(pa as *const u8, size) })
}

/// Says why we cannot load, every 5 s (a host may attach late), forever.
fn refuse_forever(uart: &mut Pl011, why: &str, dtb_pa: u64) -> ! {
    loop {
        uart.put_str("chainloader: cannot load a kernel: ");
        uart.put_str(why);
        uart.put_str(" (x0 = ");
        uart.put_hex(dtb_pa);
        uart.put_str("); check the firmware's device_tree= or QEMU's -dtb");
        uart.end_line();
        let deadline = cpu::Deadline::after_ms(5000);
        while !deadline.expired() {}
    }
}

fn report_board(uart: &mut Pl011, board: &Board, mem: &TargetMemory) {
    uart.put_str("chainloader: RAM");
    for r in board.ram.as_slice() {
        uart.put_str(" ");
        uart.put_hex(r.base);
        uart.put_str("+");
        uart.put_hex(r.size);
    }
    uart.put_str(", device tree at ");
    uart.put_hex(mem.dtb.base);
    uart.put_str(" (");
    uart.put_dec(mem.dtb.size);
    uart.put_str(" bytes), kernels up to ");
    uart.put_dec(mem.max_footprint() >> 10);
    uart.put_str(" KiB");
    uart.end_line();
    // Reserved ranges are never dropped (`board::read` refuses the tree); RAM left out is only
    // unused.
    if board.ram.dropped > 0 {
        uart.put_str("chainloader: warning: more RAM ranges than we track; not using ");
        uart.put_dec(board.ram.dropped as u64);
        uart.put_str(" of them");
        uart.end_line();
    }
}

/// RAM as the device tree describes it, minus what is in use.
struct TargetMemory {
    ram: board::Ranges,
    busy: [Range; 3 + board::MAX_RANGES],
    nbusy: usize,
    dtb: Range,
    blob: &'static [u8],
}

impl TargetMemory {
    fn new(board: &Board, image: Range, dtb_pa: u64, blob: &'static [u8]) -> Self {
        let mut busy = [Range::default(); 3 + board::MAX_RANGES];
        let dtb = Range::new(dtb_pa, blob.len() as u64);
        let mut n = 0;
        for r in [placement::LOW_RESERVED, image, dtb]
            .iter()
            .chain(board.reserved.as_slice())
        {
            busy[n] = *r;
            n += 1;
        }
        Self {
            ram: board.ram,
            busy,
            nbusy: n,
            dtb,
            blob,
        }
    }

    fn busy(&self) -> &[Range] {
        &self.busy[..self.nbusy]
    }

    fn room(&self, header: &Header) -> u64 {
        match header.mode {
            BootargsMode::Keep => 0,
            _ => (self.blob.len() + header.bootargs_len as usize + fdt_edit::GROWTH) as u64,
        }
    }
}

impl Memory for TargetMemory {
    fn max_footprint(&self) -> u64 {
        placement::largest(self.ram.as_slice(), self.busy(), 0).min(crate::protocol::MAX_KERNEL)
    }

    fn place(&mut self, header: &Header) -> Result<Placement, Refusal> {
        let room = self.room(header);
        let p = placement::plan(self.ram.as_slice(), self.busy(), header.footprint(), room)
            .map_err(|max| Refusal::new(Nak::TooBig, header.footprint(), max))?;
        // Push out any cache line over the slot before writing it uncached, so that no dirty
        // line can later be evicted over what we wrote.
        cpu::clean_invalidate_dcache(p.kernel, p.dtb_copy + p.dtb_room - p.kernel);
        Ok(p)
    }

    fn dtb_for(&self, p: &Placement, header: &Header) -> u64 {
        match header.mode {
            BootargsMode::Keep => self.dtb.base,
            _ => p.dtb_copy,
        }
    }

    fn kernel_bytes(&mut self, p: &Placement, len: usize) -> &mut [u8] {
        // SAFETY: `plan` chose [kernel, kernel + footprint) inside RAM and clear of the loader,
        // the device tree and every reserved range; `len` <= footprint; nothing else refers to
        // this memory.
        unsafe { core::slice::from_raw_parts_mut(p.kernel as *mut u8, len) }
    }

    fn prepare(&mut self, p: &Placement, header: &Header, bootargs: &[u8]) -> Result<(), Refusal> {
        if header.mode == BootargsMode::Keep {
            return Ok(());
        }
        // SAFETY: `plan` reserved `dtb_room` bytes at `dtb_copy` after the kernel's footprint,
        // in free RAM, apart from the source tree.
        let dst =
            unsafe { core::slice::from_raw_parts_mut(p.dtb_copy as *mut u8, p.dtb_room as usize) };
        fdt_edit::set_bootargs(self.blob, dst, bootargs, header.mode)
            .map(|_| ())
            .map_err(|e| Refusal::new(Nak::DeviceTree, e.code(), 0))
    }
}

impl Link for Pl011 {
    fn read_byte(&mut self, timeout_ms: u32) -> Option<u8> {
        self.read_byte_within(timeout_ms)
    }

    fn take_errors(&mut self) -> u32 {
        self.take_errors()
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // No formatting machinery: file and line only.
    // SAFETY: the console's registers (the last PL011 set up); the UART is Device memory.
    let mut uart = unsafe { Pl011::new(pl011::last_base()) };
    uart.put_str("chainloader: panic");
    if let Some(l) = info.location() {
        uart.put_str(" at ");
        uart.put_str(l.file());
        uart.put_str(":");
        uart.put_dec(l.line().into());
    }
    uart.end_line();
    loop {
        core::hint::spin_loop();
    }
}
