//! Address spaces on real MMU hardware (QEMU's): mapping, faults after unmap, permissions, block
//! splits, ASID isolation, TLB invalidation, all CPUs at once, and what the notifier sees.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::arch::aarch64::aspace::{self, activate, cpu_mm, deactivate, CpuAddressSpace};
use crate::arch::aarch64::exceptions::{probe_exec, probe_read_u64, probe_write_u64, FaultKind};
use crate::arch::aarch64::{cpu_id, mmu, smp};
use crate::ktest::{TestError, TestResult};
use crate::mm::aspace::{Backing, MmError, Placement};
use crate::mm::layout;
use crate::mm::notifier::{MmCore, MmuNotifier, MmuNotifierOps, NotifierRange, NotifyEvent, OpSet};
use crate::mm::pgtable::descriptor::{MemoryType, Permissions};
use crate::mm::phys::FrameAllocator;
use crate::mm::ram::frames;
use crate::mm::{PhysAddr, VirtAddr, PAGE_SIZE};
use crate::sync::SpinLock;
use crate::{kassert, kassert_eq, kskip, ktest};

const PAGE: u64 = PAGE_SIZE as u64;
const VA: u64 = 0x10_0000_0000;

fn rw() -> Permissions {
    Permissions::new(true, false, false)
}

fn fail(e: impl core::fmt::Display) -> TestError {
    TestError::Fail(alloc::format!("{e}"))
}

/// Runs `f` with a fresh address space active on this CPU.
fn with_space(f: impl FnOnce(&CpuAddressSpace) -> TestResult) -> TestResult {
    let user = aspace::create().map_err(fail)?;
    activate(&user).map_err(|e| fail(alloc::format!("{e:?}")))?;
    let r = f(&user);
    deactivate();
    r
}

fn read(va: u64) -> u64 {
    // SAFETY: the callers map `va` (a page of their own address space) before reading it.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

fn write(va: u64, v: u64) {
    // SAFETY: as in `read`, and the page is writable.
    unsafe { core::ptr::write_volatile(va as *mut u64, v) }
}

fn phys_read(pa: PhysAddr) -> u64 {
    // SAFETY: `pa` is a RAM frame the test owns, reachable through the linear map.
    unsafe { core::ptr::read_volatile(layout::phys_to_virt(pa.as_u64()) as *const u64) }
}

fn phys_write(pa: PhysAddr, v: u64) {
    // SAFETY: as in `phys_read`.
    unsafe { core::ptr::write_volatile(layout::phys_to_virt(pa.as_u64()) as *mut u64, v) }
}

ktest!(mm, map_write_and_read_back, |t| {
    with_space(|a| {
        let va = a
            .mmap(
                Placement::Fixed(VirtAddr(VA)),
                4 * PAGE_SIZE,
                rw(),
                Backing::Anonymous,
            )
            .map_err(fail)?;
        let seed = t.rand();
        for i in 0..4 {
            write(va.0 + i * PAGE + 8 * i, seed ^ i);
        }
        for i in 0..4 {
            let tr = a.translate(VirtAddr(va.0 + i * PAGE));
            kassert!(tr.is_some(), "page {i} not mapped");
            let pa = tr.map(|t| t.pa).unwrap_or_default();
            kassert_eq!(phys_read(PhysAddr(pa.0 + 8 * i)), seed ^ i);
            kassert_eq!(read(va.0 + i * PAGE + 8 * i), seed ^ i);
        }
        a.munmap(va, 4 * PAGE_SIZE).map_err(fail)?;
        Ok(())
    })
});

ktest!(mm, access_after_unmap_faults, |_t| {
    with_space(|a| {
        let va = a
            .mmap(
                Placement::Fixed(VirtAddr(VA)),
                2 * PAGE_SIZE,
                rw(),
                Backing::Anonymous,
            )
            .map_err(fail)?;
        write(va.0 + PAGE, 7);
        kassert_eq!(probe_read_u64(va.0 + PAGE), Ok(7));
        a.munmap(VirtAddr(va.0 + PAGE), PAGE_SIZE).map_err(fail)?;
        let f = probe_read_u64(va.0 + PAGE + 16);
        kassert!(f.is_err(), "read after munmap did not fault");
        let f = f.unwrap_err();
        kassert!(matches!(f.kind(), FaultKind::Translation(_)), "{f}");
        kassert_eq!(f.far, va.0 + PAGE + 16);
        kassert!(
            probe_read_u64(va.0).is_ok(),
            "the neighbouring page went too"
        );
        Ok(())
    })
});

ktest!(mm, read_only_and_execute_never_are_enforced, |_t| {
    with_space(|a| {
        let ro = Permissions::new(false, false, false);
        let va = a
            .mmap(
                Placement::Fixed(VirtAddr(VA)),
                PAGE_SIZE,
                rw(),
                Backing::Anonymous,
            )
            .map_err(fail)?;
        write(va.0, 0xd65f_03c0); // `ret`
        a.mprotect(va, PAGE_SIZE, ro).map_err(fail)?;
        kassert!(probe_read_u64(va.0).is_ok(), "read-only page not readable");
        // SAFETY: a probe; if it succeeded it would write into our own page.
        let w = unsafe { probe_write_u64(va.0, 1) };
        kassert!(w.is_err(), "write to a read-only page succeeded");
        let w = w.unwrap_err();
        kassert!(
            matches!(w.kind(), FaultKind::Permission(_)) && w.is_write(),
            "{w}"
        );
        // SAFETY: the page holds `ret`; if it ran it would just return.
        let x = unsafe { probe_exec(va.0) };
        kassert!(x.is_err(), "executed from a non-executable page");
        kassert!(
            matches!(x.unwrap_err().kind(), FaultKind::Permission(_)),
            "not a permission fault"
        );
        // The upgrade back to writable is seen at once (no stale read-only TLB entry).
        a.mprotect(va, PAGE_SIZE, rw()).map_err(fail)?;
        // SAFETY: our page, writable again.
        let upgraded = unsafe { probe_write_u64(va.0 + 8, 2) };
        kassert!(upgraded.is_ok(), "upgrade to RW not seen");
        Ok(())
    })
});

/// 2 MiB of RAM inside the image, for a block mapping (the loaders place the image 2 MiB
/// aligned, so this is 2 MiB aligned physically too).
#[repr(C, align(2097152))]
struct BlockBuffer([u8; 2 << 20]);
static mut BLOCK: BlockBuffer = BlockBuffer([0; 2 << 20]);

ktest!(mm, partial_unmap_splits_a_block, |_t| {
    let va_buf = core::ptr::addr_of!(BLOCK) as u64;
    let pa = mmu::image_va_to_pa(va_buf);
    if pa % (2 << 20) != 0 {
        kskip!("image loaded at a non-2 MiB-aligned address: no physical block to map");
    }
    with_space(|a| {
        let block = 2usize << 20;
        let va = a
            .mmap(
                Placement::Fixed(VirtAddr(VA)),
                block,
                rw(),
                Backing::Physical(PhysAddr(pa), MemoryType::Normal),
            )
            .map_err(fail)?;
        let level = a.translate(va).map(|t| t.level);
        kassert_eq!(level, Some(crate::mm::pgtable::Level::L2));
        write(va.0 + 3 * PAGE, 33);
        a.munmap(VirtAddr(va.0 + 2 * PAGE), PAGE_SIZE)
            .map_err(fail)?;
        kassert!(
            probe_read_u64(va.0 + 2 * PAGE).is_err(),
            "the unmapped page is still there"
        );
        kassert_eq!(probe_read_u64(va.0 + 3 * PAGE), Ok(33));
        let t3 = a.translate(VirtAddr(va.0 + 3 * PAGE));
        kassert_eq!(
            t3.map(|t| (t.level, t.pa)),
            Some((crate::mm::pgtable::Level::L3, PhysAddr(pa + 3 * PAGE)))
        );
        kassert_eq!(
            a.translate(VirtAddr(va.0 + (2 << 20) - PAGE)).map(|t| t.pa),
            Some(PhysAddr(pa + (2 << 20) - PAGE))
        );
        Ok(())
    })
});

ktest!(mm, asids_isolate_address_spaces, |_t| {
    let a = aspace::create().map_err(fail)?;
    let b = aspace::create().map_err(fail)?;
    for (s, v) in [(&a, 0xaaaa), (&b, 0xbbbb)] {
        s.mmap(
            Placement::Fixed(VirtAddr(VA)),
            PAGE_SIZE,
            rw(),
            Backing::Anonymous,
        )
        .map_err(fail)?;
        activate(s).map_err(|e| fail(alloc::format!("{e:?}")))?;
        write(VA, v);
    }
    let mut seen = Vec::new();
    for s in [&a, &b, &a, &b] {
        activate(s).map_err(|e| fail(alloc::format!("{e:?}")))?;
        seen.push(read(VA));
    }
    deactivate();
    kassert_eq!(seen, alloc::vec![0xaaaa, 0xbbbb, 0xaaaa, 0xbbbb]);
    Ok(())
});

/// Maps `VA` to frame `first`, reads it (the TLB now holds the translation), unmaps, maps it to
/// `second` and reads again: the value read second.
fn remap_and_read(first: PhysAddr, second: PhysAddr) -> Result<u64, TestError> {
    let mut out = 0;
    with_space(|a| {
        let phys = |pa| Backing::Physical(pa, MemoryType::Normal);
        a.mmap(Placement::Fixed(VirtAddr(VA)), PAGE_SIZE, rw(), phys(first))
            .map_err(fail)?;
        let _ = read(VA);
        a.munmap(VirtAddr(VA), PAGE_SIZE).map_err(fail)?;
        a.mmap(
            Placement::Fixed(VirtAddr(VA)),
            PAGE_SIZE,
            rw(),
            phys(second),
        )
        .map_err(fail)?;
        out = read(VA);
        Ok(())
    })?;
    Ok(out)
}

ktest!(mm, remap_is_seen_after_tlb_invalidation, |_t| {
    let Some(f) = frames() else {
        kskip!("no frames")
    };
    let (x, y) = (
        f.alloc_zeroed().map_err(fail)?,
        f.alloc_zeroed().map_err(fail)?,
    );
    phys_write(x, 0x1111);
    phys_write(y, 0x2222);
    let mm = cpu_mm();
    // With the invalidation the new frame is seen, every time, and each remap invalidated.
    let (done_before, _) = mm.tlb_plans();
    let mut fresh = Vec::new();
    for _ in 0..5 {
        fresh.push(remap_and_read(x, y));
    }
    let (done_after, _) = mm.tlb_plans();
    // With it switched off, no invalidation happens. Whether the stale entry then shows is up
    // to the TLB: QEMU's TCG keeps it in most runs and loses it in some (its software TLB is
    // rebuilt for reasons outside the guest), so staleness is reported, not required: the
    // deterministic checks of the invalidation itself are the host tests of `mm::aspace`.
    mm.set_skip_cpu_tlbi(true);
    let (_, skipped_before) = mm.tlb_plans();
    let mut stale = Vec::new();
    for _ in 0..5 {
        stale.push(remap_and_read(x, y));
    }
    let (_, skipped_after) = mm.tlb_plans();
    mm.set_skip_cpu_tlbi(false);
    f.free(x);
    f.free(y);
    for r in &fresh {
        kassert_eq!(r.clone()?, 0x2222);
    }
    kassert!(
        done_after >= done_before + 5,
        "a remap did not invalidate the CPU TLB"
    );
    kassert!(
        skipped_after >= skipped_before + 5,
        "the knob did not switch the invalidation off"
    );
    let seen = stale.iter().filter(|r| **r == Ok(0x1111)).count();
    crate::println!("    # without TLBI the stale translation showed in {seen} of 5 remaps");
    Ok(())
});

ktest!(mm, all_cpus_map_and_unmap_disjoint_ranges, |t| {
    let user = aspace::create().map_err(fail)?;
    let errors = SpinLock::new(Vec::new());
    let rounds = 8 + t.rand_range(0, 8);
    let done = AtomicUsize::new(0);
    smp::on_each_cpu(&|cpu| {
        let fail = |m: alloc::string::String| errors.lock().push(alloc::format!("cpu{cpu}: {m}"));
        if let Err(e) = activate(&user) {
            fail(alloc::format!("activate: {e:?}"));
            return;
        }
        let base = VA + (cpu as u64) * (1 << 30);
        for r in 0..rounds {
            let va = VirtAddr(base + r * 16 * PAGE);
            if let Err(e) = user.mmap(
                Placement::Fixed(va),
                4 * PAGE_SIZE,
                rw(),
                Backing::Anonymous,
            ) {
                fail(alloc::format!("mmap: {e}"));
                break;
            }
            write(va.0 + PAGE, (cpu as u64) << 32 | r);
            if read(va.0 + PAGE) != (cpu as u64) << 32 | r {
                fail(alloc::format!("round {r}: read back a different value"));
            }
            if let Err(e) = user.munmap(va, 4 * PAGE_SIZE) {
                fail(alloc::format!("munmap: {e}"));
                break;
            }
            if probe_read_u64(va.0 + PAGE).is_ok() {
                fail(alloc::format!("round {r}: page readable after munmap"));
            }
        }
        deactivate();
        done.fetch_add(1, Ordering::Relaxed);
    });
    let errors = errors.lock();
    kassert!(errors.is_empty(), "{:?}", *errors);
    kassert_eq!(done.load(Ordering::Relaxed), smp::online_count());
    kassert!(user.regions().is_empty(), "regions left behind");
    Ok(())
});

/// Records what the notifier delivers (a start/end subscriber and a secondary-TLB one).
struct Recorder {
    secondary: bool,
    log: SpinLock<Vec<(u8, NotifyEvent, u64, u64)>>,
}

impl Recorder {
    fn new(secondary: bool) -> Self {
        Recorder {
            secondary,
            log: SpinLock::new(Vec::new()),
        }
    }
}

impl MmuNotifierOps for Recorder {
    fn implemented(&self) -> OpSet {
        if self.secondary {
            OpSet::ARCH_INVALIDATE_SECONDARY_TLBS | OpSet::RELEASE
        } else {
            OpSet::INVALIDATE_RANGE_START | OpSet::INVALIDATE_RANGE_END | OpSet::RELEASE
        }
    }
    fn invalidate_range_start(
        &self,
        _mm: &MmCore,
        r: &NotifierRange,
    ) -> Result<(), crate::mm::notifier::WouldBlock> {
        self.log.lock().push((b's', r.event(), r.start(), r.end()));
        Ok(())
    }
    fn invalidate_range_end(&self, _mm: &MmCore, r: &NotifierRange) {
        self.log.lock().push((b'e', r.event(), r.start(), r.end()));
    }
    fn arch_invalidate_secondary_tlbs(&self, _mm: &MmCore, start: u64, end: u64) {
        self.log.lock().push((b't', NotifyEvent::Unmap, start, end));
    }
    fn release(&self, _mm: &MmCore) {
        self.log.lock().push((b'r', NotifyEvent::Release, 0, 0));
    }
}

ktest!(mm, notifier_sees_exact_ranges_and_events_in_order, |_t| {
    let user = aspace::create().map_err(fail)?;
    let ranges = Arc::new(Recorder::new(false));
    let tlbs = Arc::new(Recorder::new(true));
    let r_sub = MmuNotifier::register(user.mm(), ranges.clone())
        .map_err(|e| fail(alloc::format!("{e:?}")))?;
    let t_sub = MmuNotifier::register(user.mm(), tlbs.clone())
        .map_err(|e| fail(alloc::format!("{e:?}")))?;
    user.mmap(
        Placement::Fixed(VirtAddr(VA)),
        8 * PAGE_SIZE,
        rw(),
        Backing::Anonymous,
    )
    .map_err(fail)?;
    let ro = Permissions::new(false, false, false);
    user.munmap(VirtAddr(VA + PAGE), 3 * PAGE_SIZE)
        .map_err(fail)?;
    user.mprotect(VirtAddr(VA + 4 * PAGE), 2 * PAGE_SIZE, ro)
        .map_err(fail)?;
    user.discard(VirtAddr(VA + 7 * PAGE), PAGE_SIZE)
        .map_err(fail)?;
    let (a, b) = (VA + PAGE, VA + 4 * PAGE);
    let (c, d) = (VA + 4 * PAGE, VA + 6 * PAGE);
    let (e, f) = (VA + 7 * PAGE, VA + 8 * PAGE);
    use NotifyEvent::*;
    kassert_eq!(
        *ranges.log.lock(),
        alloc::vec![
            (b's', Unmap, a, b),
            (b'e', Unmap, a, b),
            (b's', ProtectionVma, c, d),
            (b'e', ProtectionVma, c, d),
            (b's', Clear, e, f),
            (b'e', Clear, e, f)
        ]
    );
    kassert_eq!(
        *tlbs.log.lock(),
        alloc::vec![
            (b't', Unmap, a, b),
            (b't', Unmap, c, d),
            (b't', Unmap, e, f)
        ]
    );
    drop(user);
    kassert_eq!(ranges.log.lock().last().map(|l| l.0), Some(b'r'));
    kassert_eq!(tlbs.log.lock().last().map(|l| l.0), Some(b'r'));
    r_sub.unregister();
    t_sub.unregister();
    Ok(())
});

ktest!(mm, bad_input_is_refused, |_t| {
    let user = aspace::create().map_err(fail)?;
    let fixed = |va: u64, len| {
        user.mmap(
            Placement::Fixed(VirtAddr(va)),
            len,
            rw(),
            Backing::Anonymous,
        )
    };
    kassert_eq!(fixed(VA + 1, PAGE_SIZE), Err(MmError::Misaligned(VA + 1)));
    kassert_eq!(fixed(VA, 0), Err(MmError::ZeroLength));
    kassert!(matches!(
        fixed(1 << 48, PAGE_SIZE),
        Err(MmError::OutOfRange { .. })
    ));
    kassert_eq!(
        user.munmap(VirtAddr(VA), PAGE_SIZE),
        Err(MmError::NotMapped(VirtAddr(VA)))
    );
    kassert!(user.regions().is_empty());
    kassert_eq!(cpu_id(), cpu_id());
    Ok(())
});
