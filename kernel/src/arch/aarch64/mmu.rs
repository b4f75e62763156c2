//! The kernel's own page tables (TTBR1): built once at boot from what the device tree says,
//! then extended for device MMIO.
//!
//! Layout ([`crate::mm::layout`]): the image with per-section permissions (text RX, rodata R,
//! data/bss RW+XN, stacks RW+XN with unmapped guard pages), all of RAM in the linear map
//! (RW+XN, 2 MiB blocks where aligned), and device registers in the MMIO window
//! (Device-nGnRE, XN). Everything else is unmapped. The boot CPU switches from the early tables
//! of `boot/entry.S` to these, then turns on SCTLR_EL1.WXN so nothing writable can execute.
//!
//! Descriptor bits: Arm ARM D8.3 "Translation table descriptor formats" (4 KiB granule).

use core::sync::atomic::{AtomicU64, Ordering};

use aarch64_cpu::registers::{ReadWriteable, Readable, Writeable, SCTLR_EL1, TTBR1_EL1};

use crate::mm::layout::{self, KERNEL_VBASE, LINEAR_BASE, MAX_CPUS};
use crate::symbol_addr;

use super::boot::{MAIR_DEVICE_IDX, MAIR_NORMAL_IDX};
use super::cpu::{dsb_ish, dsb_ishst, isb};

const PAGE: u64 = 4096;
const BLOCK_2M: u64 = 2 << 20;

const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
const AF: u64 = 1 << 10;
const SH_INNER: u64 = 3 << 8;
const AP_RO: u64 = 1 << 7; // AP[2]: read-only
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
const OA_MASK: u64 = 0x0000_ffff_ffff_f000;

/// How a kernel mapping may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelMem {
    /// Kernel text: read + execute.
    Text,
    /// Read-only data.
    ReadOnly,
    /// Read-write data, never executable.
    ReadWrite,
    /// Device registers (Device-nGnRE), never executable.
    Device,
}

impl KernelMem {
    fn leaf_bits(self) -> u64 {
        let normal = (MAIR_NORMAL_IDX << 2) | SH_INNER | AF;
        match self {
            KernelMem::Text => normal | AP_RO | UXN,
            KernelMem::ReadOnly => normal | AP_RO | PXN | UXN,
            KernelMem::ReadWrite => normal | PXN | UXN,
            KernelMem::Device => (MAIR_DEVICE_IDX << 2) | AF | PXN | UXN,
        }
    }
}

/// Errors of the kernel mapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelMapError {
    /// Address or size not page aligned.
    Misaligned,
    /// The range is already (partly) mapped.
    AlreadyMapped,
    /// No page for a new table.
    OutOfTables,
    /// The MMIO window is full.
    OutOfVirtualSpace,
}

/// Pages for kernel page tables until the frame allocator exists (the linear map of a 16 GiB
/// machine in 2 MiB blocks needs 8 L2 tables; the image a few L3 tables).
const POOL_PAGES: usize = 48;

#[repr(C, align(4096))]
struct TablePool([[u64; 512]; POOL_PAGES]);

static mut POOL: TablePool = TablePool([[0; 512]; POOL_PAGES]);
static POOL_NEXT: AtomicU64 = AtomicU64::new(0);

/// Physical load address of the image (set once at boot).
static LOAD_PA: AtomicU64 = AtomicU64::new(0);
/// Physical address of the root table (TTBR1).
static ROOT_PA: AtomicU64 = AtomicU64::new(0);
/// Next free address in the MMIO window.
static MMIO_NEXT: AtomicU64 = AtomicU64::new(layout::MMIO_BASE);
/// Frame source once RAM is managed (returns a zeroed frame's PA, or 0).
static FRAME_SOURCE: AtomicU64 = AtomicU64::new(0);

static MAP_LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Physical address of a kernel-image virtual address.
pub fn image_va_to_pa(va: u64) -> u64 {
    va - KERNEL_VBASE + LOAD_PA.load(Ordering::Relaxed)
}

/// A virtual address through which table memory at `pa` can be written: the image mapping for
/// tables from the boot pool, the linear map otherwise.
fn table_va(pa: u64) -> *mut u64 {
    let load = LOAD_PA.load(Ordering::Relaxed);
    let image_len = symbol_addr!(__image_end) - KERNEL_VBASE;
    if pa >= load && pa < load + image_len {
        (pa - load + KERNEL_VBASE) as *mut u64
    } else {
        layout::phys_to_virt(pa) as *mut u64
    }
}

fn entry(table_pa: u64, index: usize) -> &'static AtomicU64 {
    // SAFETY: `table_pa` is a page-table page owned by this module and mapped at `table_va`;
    // `index` < 512 keeps the access inside it; entries are only accessed atomically.
    unsafe { &*(table_va(table_pa).add(index) as *const AtomicU64) }
}

fn alloc_table() -> Result<u64, KernelMapError> {
    let i = POOL_NEXT.fetch_add(1, Ordering::Relaxed) as usize;
    if i < POOL_PAGES {
        // SAFETY: only the address of the pool is taken; each page is handed out once.
        let va = unsafe { core::ptr::addr_of!(POOL.0[i]) } as u64;
        return Ok(image_va_to_pa(va));
    }
    let source = FRAME_SOURCE.load(Ordering::Acquire);
    if source != 0 {
        // SAFETY: only `set_frame_source` stores here, always a `fn() -> u64`.
        let f: fn() -> u64 = unsafe { core::mem::transmute::<usize, fn() -> u64>(source as usize) };
        match f() {
            0 => Err(KernelMapError::OutOfTables),
            pa => Ok(pa),
        }
    } else {
        Err(KernelMapError::OutOfTables)
    }
}

/// Lets the kernel map allocate table pages from the frame allocator once the pool is used up.
pub fn set_frame_source(alloc_zeroed_frame: fn() -> u64) {
    FRAME_SOURCE.store(alloc_zeroed_frame as usize as u64, Ordering::Release);
}

/// The table one level down from `table_pa[index]`, created if missing.
fn next_table(table_pa: u64, index: usize) -> Result<u64, KernelMapError> {
    let e = entry(table_pa, index);
    let d = e.load(Ordering::Acquire);
    if d & VALID != 0 {
        if d & TABLE_OR_PAGE == 0 {
            return Err(KernelMapError::AlreadyMapped); // a block is in the way
        }
        return Ok(d & OA_MASK);
    }
    let t = alloc_table()?;
    dsb_ishst(); // the zeroed table is visible before it is linked
    e.store(t | VALID | TABLE_OR_PAGE, Ordering::Release);
    Ok(t)
}

fn index(va: u64, level: u32) -> usize {
    ((va >> (39 - 9 * level)) & 511) as usize
}

/// Maps `[va, va + len)` to `[pa, pa + len)` with `mem`, using 2 MiB blocks where `blocks` and
/// alignment allow. Never replaces a valid entry.
fn map_range(va: u64, pa: u64, len: u64, mem: KernelMem, blocks: bool) -> Result<(), KernelMapError> {
    if (va | pa | len) & (PAGE - 1) != 0 {
        return Err(KernelMapError::Misaligned);
    }
    let root = ROOT_PA.load(Ordering::Relaxed);
    let bits = mem.leaf_bits();
    let mut off = 0;
    while off < len {
        let (v, p) = (va + off, pa + off);
        let l1 = next_table(root, index(v, 0))?;
        let l2 = next_table(l1, index(v, 1))?;
        if blocks && (v | p) & (BLOCK_2M - 1) == 0 && len - off >= BLOCK_2M {
            let e = entry(l2, index(v, 2));
            if e.load(Ordering::Relaxed) & VALID != 0 {
                return Err(KernelMapError::AlreadyMapped);
            }
            e.store(p | bits | VALID, Ordering::Release);
            off += BLOCK_2M;
            continue;
        }
        let l3 = next_table(l2, index(v, 2))?;
        let e = entry(l3, index(v, 3));
        if e.load(Ordering::Relaxed) & VALID != 0 {
            return Err(KernelMapError::AlreadyMapped);
        }
        e.store(p | bits | VALID | TABLE_OR_PAGE, Ordering::Release);
        off += PAGE;
    }
    Ok(())
}

/// Translates a kernel virtual address with the kernel tables (software walk).
pub fn translate(va: u64) -> Option<u64> {
    let mut table = ROOT_PA.load(Ordering::Relaxed);
    for level in 0..4 {
        let d = entry(table, index(va, level)).load(Ordering::Acquire);
        if d & VALID == 0 {
            return None;
        }
        let is_table = d & TABLE_OR_PAGE != 0 && level < 3;
        if !is_table {
            let size = 1u64 << (39 - 9 * level);
            return Some((d & OA_MASK & !(size - 1)) | (va & (size - 1)));
        }
        table = d & OA_MASK;
    }
    None
}

/// Builds the final kernel tables and switches this CPU to them.
///
/// `ram` lists the physical RAM ranges for the linear map.
///
/// # Safety
/// Must be called once, on the boot CPU, while it still runs on the early tables and no
/// other CPU is up.
pub unsafe fn init_kernel_tables(load_pa: u64, ram: &[(u64, u64)]) -> Result<(), KernelMapError> {
    LOAD_PA.store(load_pa, Ordering::Relaxed);
    ROOT_PA.store(alloc_table()?, Ordering::Relaxed);
    let pa = |va: u64| image_va_to_pa(va);

    let text = (symbol_addr!(__text_start), symbol_addr!(__text_end));
    let rodata = (symbol_addr!(__rodata_start), symbol_addr!(__rodata_end));
    let data = (symbol_addr!(__data_start), symbol_addr!(__data_end));
    for (range, mem) in [(text, KernelMem::Text), (rodata, KernelMem::ReadOnly), (data, KernelMem::ReadWrite)] {
        map_range(range.0, pa(range.0), range.1 - range.0, mem, false)?;
    }

    // Stacks: leave the guard page below each stack unmapped.
    let stacks = symbol_addr!(__stacks_start);
    for cpu in 0..MAX_CPUS as u64 {
        let block = stacks + cpu * layout::CPU_STACK_STRIDE as u64;
        let main = block + PAGE;
        map_range(main, pa(main), layout::MAIN_STACK_SIZE as u64, KernelMem::ReadWrite, false)?;
        let exc = block + layout::MAIN_STACK_TOP as u64 + PAGE;
        map_range(exc, pa(exc), layout::EXC_STACK_SIZE as u64, KernelMem::ReadWrite, false)?;
    }

    for &(start, size) in ram {
        let start_aligned = start & !(PAGE - 1);
        let end = (start + size) & !(PAGE - 1);
        map_range(LINEAR_BASE + start_aligned, start_aligned, end - start_aligned, KernelMem::ReadWrite, true)?;
    }

    // The fallback UART stays mapped until the real console is set up.
    map_range(layout::FIXMAP_UART_VA, fixmap_uart_pa(load_pa), PAGE, KernelMem::Device, false)?;

    dsb_ishst();
    TTBR1_EL1.set(ROOT_PA.load(Ordering::Relaxed));
    isb();
    flush_local_tlb();
    SCTLR_EL1.modify(SCTLR_EL1::WXN::SET);
    isb();
    flush_local_tlb();
    Ok(())
}

fn fixmap_uart_pa(load_pa: u64) -> u64 {
    // Same choice as boot/entry.S: the Pi's RAM starts at 0, virt's at 1 GiB.
    if load_pa < 0x4000_0000 { layout::UART_PA_PI } else { layout::UART_PA_VIRT }
}

/// Invalidates this CPU's TLB entries (all ASIDs, EL1&0).
pub fn flush_local_tlb() {
    // SAFETY: TLB maintenance only drops cached translations.
    unsafe { core::arch::asm!("tlbi vmalle1", options(nostack, preserves_flags)) };
    super::cpu::dsb_sy();
    isb();
}

/// The root table of the kernel (for secondary CPUs' TTBR1).
pub fn kernel_root_pa() -> u64 {
    ROOT_PA.load(Ordering::Relaxed)
}

/// Maps `size` bytes of device registers at physical `pa` into the MMIO window and returns the
/// virtual address of `pa`.
pub fn ioremap(pa: u64, size: u64) -> Result<u64, KernelMapError> {
    let _guard = MAP_LOCK.lock();
    let start = pa & !(PAGE - 1);
    let end = (pa + size + PAGE - 1) & !(PAGE - 1);
    let len = end - start;
    let va = MMIO_NEXT.fetch_add(len + PAGE, Ordering::Relaxed); // leave a hole between mappings
    if va + len > layout::MMIO_BASE + layout::MMIO_SIZE {
        return Err(KernelMapError::OutOfVirtualSpace);
    }
    map_range(va, start, len, KernelMem::Device, false)?;
    dsb_ish();
    isb();
    Ok(va + (pa - start))
}

/// Marks an early-boot-only mapping as gone: clears TTBR0 (the early identity map) on this CPU.
pub fn drop_identity_map() {
    use aarch64_cpu::registers::{TCR_EL1, TTBR0_EL1};
    TCR_EL1.modify(TCR_EL1::EPD0::DisableTTBR0Walks);
    TTBR0_EL1.set(0);
    isb();
    flush_local_tlb();
}

/// SCTLR_EL1 as this CPU has it (for reports).
pub fn sctlr() -> u64 {
    SCTLR_EL1.get()
}
