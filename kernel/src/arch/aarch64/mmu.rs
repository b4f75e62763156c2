//! The kernel's own page tables (TTBR1), kept by the portable page-table engine
//! ([`crate::mm::pgtable::PageTable`]).
//!
//! Layout ([`crate::mm::layout`]): the image with per-section permissions (text RX, rodata R,
//! data/bss RW+XN, stacks RW+XN with unmapped guard pages), all of RAM in the linear map
//! (RW+XN, blocks where aligned), and device registers in the MMIO window (Device-nGnRE, XN).
//! Everything else is unmapped. The boot CPU switches from the early tables of `boot/entry.S`
//! to these, then turns on SCTLR_EL1.WXN so nothing writable can execute.
//!
//! The engine indexes tables with VA\[47:0\]; upper-half (TTBR1) addresses are handed to it with
//! their top 16 bits cleared. Until the linear map exists, table pages come from a pool in the
//! image (reachable through the image mapping); later ones from the frame allocator.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use aarch64_cpu::registers::{ReadWriteable, Readable, Writeable, SCTLR_EL1, TTBR1_EL1};

use crate::mm::layout::{self, KERNEL_VBASE, LINEAR_BASE, MAX_CPUS};
use crate::mm::pgtable::descriptor::{Attributes, Permissions};
use crate::mm::pgtable::table::{Config, PageTable};
use crate::mm::pgtable::tlb::{Invalidate, TlbInvalidation};
use crate::mm::pgtable::{walk, PageTableError};
use crate::mm::phys::{FrameAllocator, OutOfFrames, PhysMemory};
use crate::mm::{PhysAddr, VirtAddr};
use crate::symbol_addr;

use super::cpu::{dsb_ish, dsb_ishst, isb};

const PAGE: u64 = 4096;
const VA_MASK: u64 = (1 << 48) - 1;

/// Errors of the kernel mapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelMapError {
    /// The page-table engine refused (misaligned, overlapping, out of frames, ...).
    Table(PageTableError),
    /// The MMIO window is full.
    OutOfVirtualSpace,
    /// Called before the kernel tables exist.
    NotInitialised,
}

impl From<PageTableError> for KernelMapError {
    fn from(e: PageTableError) -> Self {
        KernelMapError::Table(e)
    }
}

impl core::fmt::Display for KernelMapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            KernelMapError::Table(e) => write!(f, "{e}"),
            KernelMapError::OutOfVirtualSpace => f.write_str("the MMIO window is full"),
            KernelMapError::NotInitialised => {
                f.write_str("the kernel page tables do not exist yet")
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Where table pages come from and how they are reached.                                    */
/* ---------------------------------------------------------------------------------------- */

/// Table pages for the boot-time build (the linear map of a 16 GiB machine needs a handful).
const POOL_PAGES: usize = 32;

#[repr(C, align(4096))]
struct TablePool([[u64; 512]; POOL_PAGES]);

static mut POOL: TablePool = TablePool([[0; 512]; POOL_PAGES]);
static POOL_NEXT: AtomicUsize = AtomicUsize::new(0);
/// Physical load address of the image (set once at boot).
static LOAD_PA: AtomicU64 = AtomicU64::new(0);
/// The linear map of all RAM is live (the final tables are in use).
static LINEAR_LIVE: AtomicBool = AtomicBool::new(false);

/// Physical address of a kernel-image virtual address.
pub fn image_va_to_pa(va: u64) -> u64 {
    va - KERNEL_VBASE + LOAD_PA.load(Ordering::Relaxed)
}

fn image_len() -> u64 {
    symbol_addr!(__image_end) - KERNEL_VBASE
}

/// Reaches table memory: the image mapping for pool pages, the linear map for the rest.
pub struct KernelTableMemory;

impl KernelTableMemory {
    fn va(&self, pa: u64, len: u64) -> Option<u64> {
        let load = LOAD_PA.load(Ordering::Relaxed);
        let end = pa.checked_add(len)?;
        if pa >= load && end <= load + image_len() {
            Some(pa - load + KERNEL_VBASE)
        } else if LINEAR_LIVE.load(Ordering::Acquire) {
            crate::mm::ram::LinearMap
                .bytes(PhysAddr(pa), len as usize)
                .map(|p| p as u64)
        } else {
            None
        }
    }
}

impl PhysMemory for KernelTableMemory {
    fn word(&self, pa: PhysAddr) -> Option<&AtomicU64> {
        if !pa.is_aligned(8) {
            return None;
        }
        let va = self.va(pa.as_u64(), 8)?;
        // SAFETY: `va` maps RAM for the kernel's life (image or linear map) and is 8-byte
        // aligned; table words are only accessed atomically.
        Some(unsafe { &*(va as *const AtomicU64) })
    }

    fn bytes(&self, pa: PhysAddr, len: usize) -> Option<*mut u8> {
        self.va(pa.as_u64(), len as u64).map(|v| v as *mut u8)
    }
}

/// Table pages: the boot pool first, then the kernel's frame allocator.
pub struct KernelTableFrames;

impl FrameAllocator for KernelTableFrames {
    fn alloc_zeroed(&self) -> Result<PhysAddr, OutOfFrames> {
        let i = POOL_NEXT.fetch_add(1, Ordering::Relaxed);
        if i < POOL_PAGES {
            // SAFETY: only the address is taken; each pool page is handed out once, and .bss
            // made it zero.
            let va = unsafe { core::ptr::addr_of!(POOL.0[i]) } as u64;
            return Ok(PhysAddr(image_va_to_pa(va)));
        }
        crate::mm::ram::frames().ok_or(OutOfFrames)?.alloc_zeroed()
    }

    fn free(&self, frame: PhysAddr) {
        let load = LOAD_PA.load(Ordering::Relaxed);
        if (load..load + image_len()).contains(&frame.as_u64()) {
            return; // a pool page: the kernel's tables never give them back for reuse
        }
        if let Some(f) = crate::mm::ram::frames() {
            f.free(frame);
        }
    }
}

/// The kernel's table type.
pub type KernelTable = PageTable<KernelTableMemory, KernelTableFrames>;

static KERNEL_PT: spin::Mutex<Option<KernelTable>> = spin::Mutex::new(None);
/// Physical address of the root table (TTBR1), readable without the lock.
static ROOT_PA: AtomicU64 = AtomicU64::new(0);
/// Next free address in the MMIO window.
static MMIO_NEXT: AtomicU64 = AtomicU64::new(layout::MMIO_BASE);

/// TLB maintenance for kernel mappings. They are global (shared by all ASIDs) and change only
/// by growing (new MMIO mappings), so any invalidation is a rare event: flush everything.
struct KernelInvalidate;

impl Invalidate for KernelInvalidate {
    fn publish(&mut self) {
        dsb_ishst();
        isb();
    }

    fn invalidate(&mut self, _inv: &TlbInvalidation) {
        dsb_ishst();
        // SAFETY: TLB maintenance only drops cached translations.
        unsafe { core::arch::asm!("tlbi vmalle1is", options(nostack, preserves_flags)) };
        dsb_ish();
        isb();
    }
}

fn engine_va(va: u64) -> VirtAddr {
    VirtAddr(va & VA_MASK)
}

fn map(
    pt: &mut KernelTable,
    va: u64,
    pa: u64,
    len: u64,
    attrs: Attributes,
) -> Result<(), KernelMapError> {
    let change = pt.map(engine_va(va), PhysAddr(pa), len as usize, attrs)?;
    pt.complete(change, &mut KernelInvalidate);
    Ok(())
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
    let mut pt = PageTable::new(KernelTableMemory, KernelTableFrames, Config::KERNEL)?;
    let pa = image_va_to_pa;

    let rx = Attributes::normal(Permissions::KERNEL_RX);
    let ro = Attributes::normal(Permissions::KERNEL_RO);
    let rw = Attributes::normal(Permissions::KERNEL_RW);
    let text = (symbol_addr!(__text_start), symbol_addr!(__text_end));
    let rodata = (symbol_addr!(__rodata_start), symbol_addr!(__rodata_end));
    let data = (symbol_addr!(__data_start), symbol_addr!(__data_end));
    for (range, attrs) in [(text, rx), (rodata, ro), (data, rw)] {
        map(&mut pt, range.0, pa(range.0), range.1 - range.0, attrs)?;
    }

    // Stacks: leave the guard page below each stack unmapped.
    let stacks = symbol_addr!(__stacks_start);
    for cpu in 0..MAX_CPUS as u64 {
        let block = stacks + cpu * layout::CPU_STACK_STRIDE as u64;
        let main = block + PAGE;
        map(&mut pt, main, pa(main), layout::MAIN_STACK_SIZE as u64, rw)?;
        let exc = block + layout::MAIN_STACK_TOP as u64 + PAGE;
        map(&mut pt, exc, pa(exc), layout::EXC_STACK_SIZE as u64, rw)?;
    }

    for &(start, size) in ram {
        let s = start & !(PAGE - 1);
        let e = (start + size) & !(PAGE - 1);
        map(&mut pt, LINEAR_BASE + s, s, e - s, rw)?;
    }

    // The fallback UART stays mapped until the real console is set up.
    map(
        &mut pt,
        layout::FIXMAP_UART_VA,
        fixmap_uart_pa(load_pa),
        PAGE,
        Attributes::DEVICE,
    )?;

    let root = pt.root().as_u64();
    ROOT_PA.store(root, Ordering::Release);
    *KERNEL_PT.lock() = Some(pt);
    dsb_ishst();
    TTBR1_EL1.set(root);
    isb();
    flush_local_tlb();
    LINEAR_LIVE.store(true, Ordering::Release);
    harden_this_cpu();
    Ok(())
}

/// SCTLR_EL1.SPAN (bit 23; Arm ARM D19.2): 0 = PSTATE.PAN is set on every exception taken to EL1.
const SCTLR_SPAN: u64 = 1 << 23;

/// The protections every CPU runs with once the kernel's tables are live: WXN (nothing
/// writable executes) and, with FEAT_PAN, Privileged Access Never (the kernel faults on an
/// access to an EL0 page instead of following a pointer it was handed into user memory), kept
/// across exception entry by clearing SPAN. Without FEAT_PAN, SPAN is RES1 and stays set.
pub fn harden_this_cpu() {
    let mut sctlr = SCTLR_EL1.get() | SCTLR_EL1::WXN::SET.value;
    if super::cpu::has_pan() {
        sctlr &= !SCTLR_SPAN;
    }
    SCTLR_EL1.set(sctlr);
    isb();
    if super::cpu::has_pan() {
        super::cpu::set_pan(true);
    }
    flush_local_tlb();
}

fn fixmap_uart_pa(load_pa: u64) -> u64 {
    // Same choice as boot/entry.S: the Pi's RAM starts at 0, virt's at 1 GiB.
    if load_pa < 0x4000_0000 {
        layout::UART_PA_PI
    } else {
        layout::UART_PA_VIRT
    }
}

/// Translates a kernel virtual address with the kernel tables (software walk).
pub fn translate(va: u64) -> Option<u64> {
    let root = ROOT_PA.load(Ordering::Acquire);
    if root == 0 {
        return None;
    }
    walk::translate(&KernelTableMemory, PhysAddr(root), engine_va(va)).map(|t| t.pa.as_u64())
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
    ROOT_PA.load(Ordering::Acquire)
}

/// Maps `size` bytes of device registers at physical `pa` into the MMIO window and returns the
/// virtual address of `pa`.
pub fn ioremap(pa: u64, size: u64) -> Result<u64, KernelMapError> {
    let mut guard = KERNEL_PT.lock();
    let pt = guard.as_mut().ok_or(KernelMapError::NotInitialised)?;
    let start = pa & !(PAGE - 1);
    let end = pa
        .checked_add(size)
        .and_then(|e| e.checked_add(PAGE - 1))
        .ok_or(KernelMapError::OutOfVirtualSpace)?
        & !(PAGE - 1);
    let len = end - start;
    // A one-page hole between mappings catches overruns.
    let va = MMIO_NEXT.load(Ordering::Relaxed);
    if va + len > layout::MMIO_BASE + layout::MMIO_SIZE {
        return Err(KernelMapError::OutOfVirtualSpace);
    }
    map(pt, va, start, len, Attributes::DEVICE)?;
    MMIO_NEXT.store(va + len + PAGE, Ordering::Relaxed);
    Ok(va + (pa - start))
}

/// Stops this CPU walking TTBR0 (the early identity map): the kernel runs on TTBR1 alone until
/// an address space is activated.
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
