//! The kernel's own page tables (TTBR1), kept by the portable page-table engine
//! ([`crate::mm::pgtable::PageTable`]).
//!
//! Layout ([`crate::mm::layout`]): the image with per-section permissions (text RX, rodata R,
//! data/bss RW+XN, stacks RW+XN with unmapped guard pages), all of RAM in the linear map
//! (RW+XN, blocks where aligned), and device registers in the MMIO window (Device-nGnRE, XN).
//! Everything else is unmapped. The boot CPU switches from the early tables of `boot/entry.S`
//! to these, then turns on SCTLR_EL1.WXN so nothing writable can execute.
//!
//! The switch is a change of block size for the same VAs (the early linear map is 1 GiB
//! blocks; the final one uses 2 MiB blocks and pages wherever RAM is not 1 GiB aligned, as on
//! the Pi 4), so it breaks before it makes, from the early identity map: see
//! [`crate::mm::pgtable::switch::replace_ttbr1`]. Secondary CPUs never load the early TTBR1:
//! `boot/entry.S` turns their MMU on with the final tables after a local TLBI.
//!
//! The engine indexes tables with VA\[47:0\]; upper-half (TTBR1) addresses are handed to it with
//! their top 16 bits cleared. Until the linear map exists, table pages come from a pool in the
//! image (reachable through the image mapping); later ones from the frame allocator.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use alloc::vec::Vec;

use aarch64_cpu::registers::{Readable, Writeable, SCTLR_EL1, TTBR1_EL1};

use crate::mm::layout::{self, KERNEL_VBASE, LINEAR_BASE, MAX_CPUS};
use crate::mm::pgtable::descriptor::{Attributes, Permissions};
use crate::mm::pgtable::switch::{self, SysOp, SysRegs};
use crate::mm::pgtable::table::{Config, PageTable};
use crate::mm::pgtable::tlb::{Invalidate, TlbInvalidation};
use crate::mm::pgtable::{walk, PageTableError};
use crate::mm::phys::{FrameAllocator, OutOfFrames, PhysMemory};
use crate::mm::{PhysAddr, VirtAddr};
use crate::symbol_addr;

use super::cpu::{dsb_ish, dsb_ishst, isb};
use super::switch::{run_from_idmap, HwSysRegs, IdmapError};

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
    /// The TTBR1 replacement could not run from the identity map.
    Idmap(IdmapError),
    /// An address space is loaded on this CPU: TTBR0 is not free for an identity map.
    AddressSpaceLoaded,
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
            KernelMapError::Idmap(e) => write!(f, "replacing TTBR1 from the identity map: {e:?}"),
            KernelMapError::AddressSpaceLoaded => {
                f.write_str("an address space is loaded: TTBR0 cannot hold an identity map")
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

/// An all-zero translation table (Linux's `reserved_pg_dir`): TTBR0 while no address space is
/// loaded, and TTBR1 for the break of a replacement. Never written.
#[repr(C, align(4096))]
struct ReservedTable([u64; 512]);

static RESERVED_TABLE: ReservedTable = ReservedTable([0; 512]);

/// Physical address of the reserved (empty) table.
pub fn reserved_table_pa() -> u64 {
    image_va_to_pa(core::ptr::addr_of!(RESERVED_TABLE) as u64)
}

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
    let pt = build_kernel_tables(load_pa, ram)?;
    let root = pt.root().as_u64();
    ROOT_PA.store(root, Ordering::Release);
    *KERNEL_PT.lock() = Some(pt);
    // SAFETY: the early identity map (boot/entry.S) is TTBR0, executable (WXN is still off);
    // the new tables map the kernel as the early ones did.
    let ops = unsafe { replace_ttbr1(root) }?;
    *BOOT_TTBR1_SWITCH.lock() = ops;
    LINEAR_LIVE.store(true, Ordering::Release);
    harden_this_cpu();
    Ok(())
}

/// What the boot CPU ran to replace the early TTBR1 (for the KTAP case that checks it).
static BOOT_TTBR1_SWITCH: spin::Mutex<Vec<SysOp>> = spin::Mutex::new(Vec::new());

/// The operations the boot CPU ran to switch from the early tables to the kernel's.
pub fn boot_ttbr1_switch() -> Vec<SysOp> {
    BOOT_TTBR1_SWITCH.lock().clone()
}

/// Replaces this CPU's TTBR1 with the tables at `root` by break-before-make, from the identity
/// map, and returns the operations it ran.
///
/// # Safety
/// As [`run_from_idmap`]: TTBR0 maps this image's text at its physical address, executable,
/// and `root` maps the kernel as the current TTBR1 does.
pub unsafe fn replace_ttbr1(root: u64) -> Result<Vec<SysOp>, KernelMapError> {
    // The new tables are complete in memory before a walk can see them.
    dsb_ishst();
    let ops = switch::replace_ttbr1(reserved_table_pa(), root);
    let (ran, recorded) = super::switch::recording(|| {
        // SAFETY: the caller's guarantees.
        unsafe { run_from_idmap(&ops) }
    });
    ran.map_err(KernelMapError::Idmap)?;
    Ok(recorded)
}

/// The kernel's tables: image sections, stacks with guard pages, the linear map of `ram`, and
/// the fallback UART.
fn build_kernel_tables(load_pa: u64, ram: &[(u64, u64)]) -> Result<KernelTable, KernelMapError> {
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

    Ok(pt)
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

/// This CPU's TTBR1_EL1.
pub fn ttbr1() -> u64 {
    TTBR1_EL1.get()
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

/// Stops this CPU walking TTBR0 (the early identity map) and drops its global entries: the
/// kernel runs on TTBR1 alone until an address space is loaded. See
/// [`crate::mm::pgtable::switch::drop_identity_map`].
pub fn drop_identity_map() {
    HwSysRegs.run_all(&switch::drop_identity_map(reserved_table_pa()));
}

/// The kernel's current TTBR1 table as a twin with the same translations, but every 1 GiB
/// block mapped as 2 MiB blocks: what a switch between the two changes is block sizes only
/// (the KTAP case of the TTBR1 replacement). Returns the twin and how many 1 GiB blocks it
/// split.
pub fn kernel_tables_twin() -> Result<(KernelTable, usize), KernelMapError> {
    const GIB: u64 = 1 << 30;
    const TWO_MIB: u64 = 2 << 20;
    let guard = KERNEL_PT.lock();
    let live = guard.as_ref().ok_or(KernelMapError::NotInitialised)?;
    let mut leaves = Vec::new();
    live.walk(VirtAddr(0), VA_MASK as usize + 1, |m| leaves.push(m))?;
    drop(guard);
    let mut twin = PageTable::new(KernelTableMemory, KernelTableFrames, Config::KERNEL)?;
    let mut split = 0;
    for m in leaves {
        let (va, pa, len) = (m.va.start().as_u64(), m.pa.as_u64(), m.va.len());
        // A first piece of 2 MiB keeps the engine from choosing a 1 GiB block again.
        let first = if len >= GIB && va % GIB == 0 {
            split += 1;
            TWO_MIB
        } else {
            len
        };
        let change = twin.map(VirtAddr(va), PhysAddr(pa), first as usize, m.attributes)?;
        twin.complete(change, &mut KernelInvalidate);
        if first < len {
            let change = twin.map(
                VirtAddr(va + first),
                PhysAddr(pa + first),
                (len - first) as usize,
                m.attributes,
            )?;
            twin.complete(change, &mut KernelInvalidate);
        }
    }
    Ok((twin, split))
}

/// Runs `f` with an identity map of the kernel's text in TTBR0 (read-only, executable at EL1,
/// entries under the kernel's ASID 0), as [`replace_ttbr1`] needs after boot; then drops it
/// (and its entries) again. Only with no address space loaded on this CPU.
pub fn with_text_identity_map<R>(f: impl FnOnce() -> R) -> Result<R, KernelMapError> {
    if super::aspace::loaded_here() {
        return Err(KernelMapError::AddressSpaceLoaded);
    }
    let text = (symbol_addr!(__text_start), symbol_addr!(__text_end));
    let pa = image_va_to_pa(text.0);
    let mut idmap = PageTable::new(KernelTableMemory, KernelTableFrames, Config::USER)?;
    let change = idmap.map(
        VirtAddr(pa),
        PhysAddr(pa),
        (text.1 - text.0) as usize,
        Attributes::normal(Permissions::KERNEL_RX),
    )?;
    idmap.complete(change, &mut KernelInvalidate);
    HwSysRegs.run_all(&switch::load_ttbr0(idmap.root().as_u64()));
    let r = f();
    HwSysRegs.run_all(&switch::drop_identity_map(reserved_table_pa()));
    // Only this CPU walked it, and the sequence above dropped its entries.
    idmap.destroy(|| {});
    Ok(r)
}

/// SCTLR_EL1 as this CPU has it (for reports).
pub fn sctlr() -> u64 {
    SCTLR_EL1.get()
}
