//! Host tests of address spaces over the in-memory arena, with a recording TLB and recording
//! notifier subscribers.

extern crate std;

use std::sync::Mutex;
use std::vec;
use std::vec::Vec;

use super::*;
use crate::mm::fake::{ArenaPlatform, TestMemory};
use crate::mm::notifier::{MmuNotifier, MmuNotifierOps, OpSet};
use crate::mm::pgtable::tlb::{TlbOp, Tlbi};

/// The host platform: an arena of RAM that records the CPU's TLB and I-cache maintenance.
type Host = ArenaPlatform<Arc<TestMemory>>;

fn host(frames: usize) -> &'static Host {
    host_with_pa_bits(frames, 48)
}

fn host_with_pa_bits(frames: usize, pa_bits: u32) -> &'static Host {
    let platform = ArenaPlatform::new(Arc::new(TestMemory::new(frames)))
        .with_pa_bits(pa_bits)
        .recording();
    std::boxed::Box::leak(std::boxed::Box::new(platform))
}

/// What a subscriber saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Start(NotifyEvent, u64, u64, bool),
    End(NotifyEvent, u64, u64),
    Secondary(u64, u64),
    Release,
}

/// A subscriber using invalidate_range_start/end.
#[derive(Default)]
struct RangeRecorder {
    log: Mutex<Vec<Seen>>,
    refuse_nonblocking: bool,
    young: bool,
}

impl MmuNotifierOps for RangeRecorder {
    fn implemented(&self) -> OpSet {
        OpSet::RELEASE
            | OpSet::INVALIDATE_RANGE_START
            | OpSet::CLEAR_FLUSH_YOUNG
            | OpSet::CLEAR_YOUNG
            | OpSet::TEST_YOUNG
            | if self.refuse_nonblocking {
                OpSet::NONE
            } else {
                OpSet::INVALIDATE_RANGE_END
            }
    }
    fn release(&self, _mm: &MmCore) {
        self.log.lock().unwrap().push(Seen::Release);
    }
    fn invalidate_range_start(
        &self,
        _mm: &MmCore,
        range: &NotifierRange,
    ) -> Result<(), WouldBlock> {
        if self.refuse_nonblocking && !range.is_blockable() {
            return Err(WouldBlock);
        }
        self.log.lock().unwrap().push(Seen::Start(
            range.event(),
            range.start(),
            range.end(),
            range.is_blockable(),
        ));
        Ok(())
    }
    fn invalidate_range_end(&self, _mm: &MmCore, range: &NotifierRange) {
        self.log
            .lock()
            .unwrap()
            .push(Seen::End(range.event(), range.start(), range.end()));
    }
    fn clear_flush_young(&self, _mm: &MmCore, _s: u64, _e: u64) -> bool {
        self.young
    }
    fn clear_young(&self, _mm: &MmCore, _s: u64, _e: u64) -> bool {
        self.young
    }
    fn test_young(&self, _mm: &MmCore, _a: u64) -> bool {
        self.young
    }
}

/// A secondary-TLB subscriber (the SMMU's role).
#[derive(Default)]
struct TlbRecorder {
    log: Mutex<Vec<Seen>>,
}

impl MmuNotifierOps for TlbRecorder {
    fn implemented(&self) -> OpSet {
        OpSet::RELEASE | OpSet::ARCH_INVALIDATE_SECONDARY_TLBS
    }
    fn release(&self, _mm: &MmCore) {
        self.log.lock().unwrap().push(Seen::Release);
    }
    fn arch_invalidate_secondary_tlbs(&self, _mm: &MmCore, start: u64, end: u64) {
        self.log.lock().unwrap().push(Seen::Secondary(start, end));
    }
}

fn rw() -> Permissions {
    Permissions::new(true, false, false)
}

fn ro() -> Permissions {
    Permissions::new(false, false, false)
}

const A: u64 = 0x4000_0000;

/// Maps `pages` zeroed, read-write anonymous pages at `va`.
fn map_anon(user: &AddressSpace<Host>, va: u64, pages: usize) {
    user.mmap(
        Placement::Fixed(VirtAddr(va)),
        pages * PAGE_SIZE,
        rw(),
        Backing::Anonymous,
    )
    .unwrap();
}

#[test]
fn anonymous_memory_is_mapped_zeroed_and_freed_on_unmap() {
    let h = host(256);
    let base = h.memory().live_frames();
    let user = AddressSpace::create(h).unwrap();
    let va = user
        .mmap(
            Placement::Fixed(VirtAddr(A)),
            3 * PAGE_SIZE,
            rw(),
            Backing::Anonymous,
        )
        .unwrap();
    let pas: Vec<PhysAddr> = (0..3)
        .map(|i| user.translate(VirtAddr(va.0 + i * PAGE)).unwrap().pa)
        .collect();
    assert!(pas[0] != pas[1] && pas[1] != pas[2] && pas[0] != pas[2]);
    for pa in &pas {
        assert_eq!(
            h.memory().word(*pa).unwrap().load(Ordering::Relaxed),
            0,
            "not zeroed"
        );
    }
    user.munmap(VirtAddr(A + PAGE), PAGE_SIZE).unwrap();
    assert!(user.translate(VirtAddr(A + PAGE)).is_none());
    assert!(
        !h.memory().is_allocated(pas[1]),
        "the unmapped frame was not freed"
    );
    assert!(h.memory().is_allocated(pas[0]) && h.memory().is_allocated(pas[2]));
    let regions = user.regions();
    assert_eq!(
        regions.len(),
        2,
        "munmap in the middle splits the region: {regions:?}"
    );
    drop(user);
    assert_eq!(h.memory().live_frames(), base, "teardown leaked frames");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    map_anon(&user, A, 2);
    let rec = Arc::new(RangeRecorder::default());
    let _sub = MmuNotifier::register(user.mm(), rec.clone()).unwrap();
    let regions = user.regions();
    let frames = h.memory().live_frames();
    let fixed = |va: u64, len: usize| {
        user.mmap(
            Placement::Fixed(VirtAddr(va)),
            len,
            rw(),
            Backing::Anonymous,
        )
    };
    assert_eq!(fixed(A + 1, PAGE_SIZE), Err(MmError::Misaligned(A + 1)));
    assert_eq!(fixed(A, 100), Err(MmError::Misaligned(100)));
    assert_eq!(fixed(A, 0), Err(MmError::ZeroLength));
    assert_eq!(
        fixed(u64::MAX - 0xfff, PAGE_SIZE),
        Err(MmError::Overflow {
            start: u64::MAX - 0xfff,
            len: PAGE_SIZE
        })
    );
    assert!(matches!(
        fixed(USER_END, PAGE_SIZE),
        Err(MmError::OutOfRange { .. })
    ));
    assert!(matches!(
        fixed(0, PAGE_SIZE),
        Err(MmError::OutOfRange { .. })
    ));
    assert_eq!(
        fixed(A + PAGE, PAGE_SIZE),
        Err(MmError::Overlap(VirtAddr(A)))
    );
    assert_eq!(
        user.munmap(VirtAddr(A), 3 * PAGE_SIZE),
        Err(MmError::NotMapped(VirtAddr(A + 2 * PAGE)))
    );
    assert_eq!(
        user.mprotect(VirtAddr(A - PAGE), 2 * PAGE_SIZE, ro()),
        Err(MmError::NotMapped(VirtAddr(A - PAGE)))
    );
    assert_eq!(
        user.discard(VirtAddr(A + 3 * PAGE), PAGE_SIZE),
        Err(MmError::NotMapped(VirtAddr(A + 3 * PAGE)))
    );
    assert!(matches!(
        user.mmap(
            Placement::Anywhere,
            PAGE_SIZE,
            Permissions::new(false, true, false),
            Backing::Physical(PhysAddr(0x1000), MemoryType::Device)
        ),
        Err(MmError::Attributes(AttributeError::ExecutableDevice))
    ));
    assert_eq!(user.regions(), regions);
    assert_eq!(h.memory().live_frames(), frames);
    assert!(
        rec.log.lock().unwrap().is_empty(),
        "a refused call reached the notifier"
    );
}

/// Found by the `aspace` fuzz target: a physical backing past 2^48 reached the page-table
/// engine, which refused it half-way through `mmap` as `MmError::Table`.
#[test]
fn a_physical_range_beyond_the_output_size_is_refused_up_front() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    let rec = Arc::new(RangeRecorder::default());
    let _sub = MmuNotifier::register(user.mm(), rec.clone()).unwrap();
    let frames = h.memory().live_frames();
    let top = PhysAddr((1 << 48) - PAGE);
    let map = |pa: PhysAddr, len: usize| {
        user.mmap(
            Placement::Fixed(VirtAddr(A)),
            len,
            rw(),
            Backing::Physical(pa, MemoryType::Device),
        )
    };
    assert_eq!(
        map(top, 2 * PAGE_SIZE),
        Err(MmError::PhysOutOfRange {
            start: top,
            len: 2 * PAGE_SIZE,
            bits: 48
        })
    );
    assert!(user.regions().is_empty());
    assert_eq!(h.memory().live_frames(), frames);
    assert!(rec.log.lock().unwrap().is_empty());
    // The last page below 2^48 is fine.
    assert_eq!(map(top, PAGE_SIZE), Ok(VirtAddr(A)));
}

/// Found by the `aspace` fuzz target: a physical mapping far larger than memory made the
/// page-table dry run visit every page (2^34 of them here) before it ran out of frames.
#[test]
fn a_physical_mapping_larger_than_memory_fails_at_once_and_changes_nothing() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    let rec = Arc::new(RangeRecorder::default());
    let _sub = MmuNotifier::register(user.mm(), rec.clone()).unwrap();
    let frames = h.memory().live_frames();
    // One page off every block boundary: only pages can map it.
    let r = user.mmap(
        Placement::Fixed(VirtAddr(A)),
        1 << 46,
        rw(),
        Backing::Physical(PhysAddr(PAGE), MemoryType::Normal),
    );
    assert_eq!(r, Err(MmError::OutOfMemory));
    assert!(user.regions().is_empty());
    assert!(user.translate(VirtAddr(A)).is_none());
    assert_eq!(h.memory().live_frames(), frames);
    assert!(rec.log.lock().unwrap().is_empty());
    map_anon(&user, A, 1);
}

/// Found by the `aspace` fuzz target: moving pages between EL0 and EL1 ownership reached the
/// engine's refusal only after the invalidation had been announced.
#[test]
fn mprotect_refuses_an_owner_change_before_notifying() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    map_anon(&user, A, 2);
    user.mmap(
        Placement::Fixed(VirtAddr(A + 2 * PAGE)),
        PAGE_SIZE,
        Permissions::USER_RW,
        Backing::Anonymous,
    )
    .unwrap();
    let rec = Arc::new(RangeRecorder::default());
    let _sub = MmuNotifier::register(user.mm(), rec.clone()).unwrap();
    let regions = user.regions();
    assert_eq!(
        user.mprotect(VirtAddr(A + PAGE), PAGE_SIZE, Permissions::USER_RO),
        Err(MmError::OwnerChange(VirtAddr(A + PAGE)))
    );
    assert_eq!(
        user.mprotect(VirtAddr(A + PAGE), 2 * PAGE_SIZE, ro()),
        Err(MmError::OwnerChange(VirtAddr(A + 2 * PAGE)))
    );
    assert_eq!(user.regions(), regions);
    assert!(
        rec.log.lock().unwrap().is_empty(),
        "a refused call notified"
    );
    assert_eq!(
        user.mprotect(VirtAddr(A + 2 * PAGE), PAGE_SIZE, Permissions::USER_RO),
        Ok(())
    );
}

#[test]
fn every_weakening_reaches_the_notifier_with_its_exact_range_and_event() {
    let h = host(256);
    let user = AddressSpace::create(h).unwrap();
    let ranges = Arc::new(RangeRecorder::default());
    let tlbs = Arc::new(TlbRecorder::default());
    let _r = MmuNotifier::register(user.mm(), ranges.clone()).unwrap();
    let _t = MmuNotifier::register(user.mm(), tlbs.clone()).unwrap();
    map_anon(&user, A, 8);
    assert!(
        ranges.log.lock().unwrap().is_empty(),
        "mapping needs no invalidation"
    );
    assert!(tlbs.log.lock().unwrap().is_empty());

    user.munmap(VirtAddr(A + 2 * PAGE), 2 * PAGE_SIZE).unwrap();
    user.mprotect(VirtAddr(A + 4 * PAGE), PAGE_SIZE, ro())
        .unwrap();
    user.mprotect(VirtAddr(A + 4 * PAGE), PAGE_SIZE, rw())
        .unwrap(); // the upgrade, too
    assert_eq!(user.discard(VirtAddr(A + 6 * PAGE), 2 * PAGE_SIZE), Ok(2));
    let (s, e) = (A + 2 * PAGE, A + 4 * PAGE);
    let (p, q) = (A + 4 * PAGE, A + 5 * PAGE);
    let (c, d) = (A + 6 * PAGE, A + 8 * PAGE);
    assert_eq!(
        *ranges.log.lock().unwrap(),
        vec![
            Seen::Start(NotifyEvent::Unmap, s, e, true),
            Seen::End(NotifyEvent::Unmap, s, e),
            Seen::Start(NotifyEvent::ProtectionVma, p, q, true),
            Seen::End(NotifyEvent::ProtectionVma, p, q),
            Seen::Start(NotifyEvent::ProtectionVma, p, q, true),
            Seen::End(NotifyEvent::ProtectionVma, p, q),
            Seen::Start(NotifyEvent::Clear, c, d, true),
            Seen::End(NotifyEvent::Clear, c, d),
        ]
    );
    assert_eq!(
        *tlbs.log.lock().unwrap(),
        vec![
            Seen::Secondary(s, e),
            Seen::Secondary(p, q),
            Seen::Secondary(p, q),
            Seen::Secondary(c, d)
        ]
    );
    assert!(
        user.translate(VirtAddr(c)).is_none(),
        "discard keeps no page"
    );
    user.populate(VirtAddr(c), 2 * PAGE_SIZE).unwrap();
    assert!(
        user.translate(VirtAddr(c)).is_some(),
        "populate maps the region again"
    );

    drop(user);
    assert_eq!(ranges.log.lock().unwrap().last(), Some(&Seen::Release));
    assert_eq!(tlbs.log.lock().unwrap().last(), Some(&Seen::Release));
}

#[test]
fn the_cpu_tlb_is_invalidated_only_for_the_asid_and_range_once_it_ran() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    map_anon(&user, A, 4);
    h.take_tlb_ops();
    user.munmap(VirtAddr(A), PAGE_SIZE).unwrap();
    let tlbis = |h: &Host| {
        h.take_tlb_ops()
            .into_iter()
            .filter(|op| matches!(op, TlbOp::Tlbi { .. }))
            .collect::<Vec<_>>()
    };
    assert!(
        tlbis(h).is_empty(),
        "a context that never ran cannot be in any TLB"
    );

    let act = h.asids().activate(0, user.asid_context()).unwrap();
    user.munmap(VirtAddr(A + PAGE), PAGE_SIZE).unwrap();
    let ops = tlbis(h);
    assert_eq!(ops.len(), 1, "{ops:?}");
    let TlbOp::Tlbi { op, operand } = ops[0] else {
        unreachable!()
    };
    assert_eq!(
        op,
        Tlbi::Vale1is,
        "a leaf-only change flushes the last level"
    );
    assert_eq!(operand >> 48, u64::from(act.asid.get()), "wrong ASID");
    assert_eq!((operand & ((1 << 44) - 1)) << 12, A + PAGE, "wrong address");
    assert_eq!(
        user.stats().secondary_invalidations.load(Ordering::Relaxed),
        2
    );
}

#[test]
fn splitting_a_block_announces_the_whole_block_and_invalidates_it() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    let ranges = Arc::new(RangeRecorder::default());
    let tlbs = Arc::new(TlbRecorder::default());
    let _r = MmuNotifier::register(user.mm(), ranges.clone()).unwrap();
    let _t = MmuNotifier::register(user.mm(), tlbs.clone()).unwrap();
    let block = 2 << 20;
    // A 2 MiB-aligned physical window maps as one block (device-style memory not in the arena).
    user.mmap(
        Placement::Fixed(VirtAddr(A)),
        block,
        rw(),
        Backing::Physical(PhysAddr(0x8000_0000), MemoryType::Normal),
    )
    .unwrap();
    assert_eq!(
        user.translate(VirtAddr(A)).unwrap().level,
        crate::mm::pgtable::Level::L2
    );
    user.munmap(VirtAddr(A + PAGE), PAGE_SIZE).unwrap();
    let end = A + block as u64;
    assert_eq!(
        ranges.log.lock().unwrap()[0],
        Seen::Start(NotifyEvent::Unmap, A, end, true),
        "devices must stop using the whole block while it is split"
    );
    let secondary = tlbs.log.lock().unwrap().clone();
    assert!(
        secondary.contains(&Seen::Secondary(A, end)),
        "the break: {secondary:?}"
    );
    assert!(
        secondary.contains(&Seen::Secondary(A + PAGE, A + 2 * PAGE)),
        "the unmapped page: {secondary:?}"
    );
    assert_eq!(
        user.translate(VirtAddr(A)).unwrap().pa,
        PhysAddr(0x8000_0000)
    );
    assert!(user.translate(VirtAddr(A + PAGE)).is_none());
    assert_eq!(
        user.translate(VirtAddr(A + 2 * PAGE)).unwrap().pa,
        PhysAddr(0x8000_2000)
    );
}

#[test]
fn running_out_of_frames_midway_rolls_everything_back() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    let ranges = Arc::new(RangeRecorder::default());
    let _r = MmuNotifier::register(user.mm(), ranges.clone()).unwrap();
    let frames = h.memory().live_frames();
    h.memory().set_alloc_budget(Some(10));
    let r = user.mmap(
        Placement::Fixed(VirtAddr(A)),
        32 * PAGE_SIZE,
        rw(),
        Backing::Anonymous,
    );
    h.memory().set_alloc_budget(None);
    assert_eq!(r, Err(MmError::OutOfMemory));
    assert!(user.regions().is_empty());
    assert!(user.translate(VirtAddr(A)).is_none());
    assert_eq!(h.memory().live_frames(), frames, "frames leaked by the rollback");
    assert_eq!(h.memory().bad_frees(), 0);
    // Ten allocations: three tables and seven pages. Only what was mapped is announced.
    let mapped = A + 7 * PAGE;
    assert_eq!(
        *ranges.log.lock().unwrap(),
        vec![
            Seen::Start(NotifyEvent::Unmap, A, mapped, true),
            Seen::End(NotifyEvent::Unmap, A, mapped)
        ]
    );
    // And the address space still works.
    map_anon(&user, A, 32);
}

#[test]
fn a_refused_nonblocking_unmap_changes_nothing() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    let refuser = Arc::new(RangeRecorder {
        refuse_nonblocking: true,
        ..Default::default()
    });
    let _s = MmuNotifier::register(user.mm(), refuser).unwrap();
    map_anon(&user, A, 1);
    let before = user.translate(VirtAddr(A));
    assert_eq!(
        user.munmap_nonblocking(VirtAddr(A), PAGE_SIZE),
        Err(MmError::WouldBlock)
    );
    assert_eq!(user.translate(VirtAddr(A)), before);
    assert_eq!(user.regions().len(), 1);
    user.munmap(VirtAddr(A), PAGE_SIZE).unwrap(); // the blockable path still works
}

#[test]
fn ageing_combines_the_cpu_and_secondary_access_flags() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    map_anon(&user, A, 2);
    assert_eq!(
        user.test_young(VirtAddr(A)),
        Ok(true),
        "new mappings are young"
    );
    assert_eq!(user.clear_flush_young(VirtAddr(A), 2 * PAGE_SIZE), Ok(true));
    assert_eq!(user.test_young(VirtAddr(A)), Ok(false));
    assert_eq!(user.clear_young(VirtAddr(A), PAGE_SIZE), Ok(false));
    let young = Arc::new(RangeRecorder {
        young: true,
        ..Default::default()
    });
    let _s = MmuNotifier::register(user.mm(), young).unwrap();
    assert_eq!(
        user.test_young(VirtAddr(A)),
        Ok(true),
        "the device's access counts"
    );
    assert_eq!(user.clear_young(VirtAddr(A), PAGE_SIZE), Ok(true));
}

#[test]
fn the_last_user_releases_subscribers_before_the_tables_go() {
    /// Checks, in `release`, that the translations are still there.
    struct Witness {
        aspace: Mutex<Option<Arc<AddressSpace<Host>>>>,
        mapped_at_release: Mutex<Option<bool>>,
    }
    impl MmuNotifierOps for Witness {
        fn implemented(&self) -> OpSet {
            OpSet::RELEASE
        }
        fn release(&self, _mm: &MmCore) {
            let a = self.aspace.lock().unwrap().clone().unwrap();
            *self.mapped_at_release.lock().unwrap() = Some(a.translate(VirtAddr(A)).is_some());
        }
    }
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    map_anon(&user, A, 1);
    let w = Arc::new(Witness {
        aspace: Mutex::new(Some(Arc::clone(&user))),
        mapped_at_release: Mutex::new(None),
    });
    let _s = MmuNotifier::register(user.mm(), w.clone()).unwrap();
    let grabbed: Arc<AddressSpace<Host>> = Arc::clone(&user);
    let second = grabbed.mmget().unwrap();
    drop(user);
    assert!(
        grabbed.translate(VirtAddr(A)).is_some(),
        "a user is still there"
    );
    drop(second);
    assert_eq!(*w.mapped_at_release.lock().unwrap(), Some(true));
    assert!(
        grabbed.translate(VirtAddr(A)).is_none(),
        "torn down after release"
    );
    assert_eq!(
        grabbed.munmap(VirtAddr(A), PAGE_SIZE),
        Err(MmError::Exited),
        "a grab is not a user"
    );
    assert!(grabbed.mmget().is_none(), "no user can come back");
    w.aspace.lock().unwrap().take();
}

#[test]
fn concurrent_unmaps_on_disjoint_ranges_each_invalidate_before_returning() {
    let h = host(2048);
    let user = AddressSpace::create(h).unwrap();
    let tlbs = Arc::new(TlbRecorder::default());
    let _t = MmuNotifier::register(user.mm(), tlbs.clone()).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let user = user.clone();
            let tlbs = tlbs.clone();
            std::thread::spawn(move || {
                let base = A + t * (64 << 20);
                for round in 0..20u64 {
                    let va = VirtAddr(base + round * 16 * PAGE);
                    user.mmap(
                        Placement::Fixed(va),
                        8 * PAGE_SIZE,
                        rw(),
                        Backing::Anonymous,
                    )
                    .unwrap();
                    user.munmap(va, 8 * PAGE_SIZE).unwrap();
                    let seen = tlbs.log.lock().unwrap().clone();
                    assert!(
                        seen.contains(&Seen::Secondary(va.0, va.0 + 8 * PAGE)),
                        "munmap returned before the secondary TLBs were told"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(user.regions().is_empty());
    assert_eq!(
        user.stats().pages_unmapped.load(Ordering::Relaxed),
        4 * 20 * 8
    );
}

#[test]
fn skipping_the_secondary_invalidation_is_caught() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    let tlbs = Arc::new(TlbRecorder::default());
    let _t = MmuNotifier::register(user.mm(), tlbs.clone()).unwrap();
    user.skip_secondary.store(true, Ordering::Relaxed);
    map_anon(&user, A, 1);
    user.munmap(VirtAddr(A), PAGE_SIZE).unwrap();
    // The check the other tests make now fails: the device side was never told.
    assert!(!tlbs
        .log
        .lock()
        .unwrap()
        .contains(&Seen::Secondary(A, A + PAGE)));
}

mod arch_glue;

/// The vacancy as the regions give it, by three separate lookups (the oracle for
/// [`unmap_site`]'s single walk).
fn vacancy_by_lookups(regions: &BTreeMap<u64, Region>, start: u64, end: u64) -> VaRange {
    let floor = regions
        .range(..start)
        .next_back()
        .map_or(0, |(_, r)| r.end.0.min(start));
    let ceiling = regions
        .range(..end)
        .next_back()
        .filter(|(_, r)| r.end.0 > end)
        .map(|_| end)
        .or_else(|| regions.range(end..).next().map(|(_, r)| r.start.0))
        .unwrap_or(USER_END);
    VaRange::between(floor, ceiling)
}

/// Regions laid out as (gap, length, anonymous) runs of pages, `page(n)` placing page `n`;
/// runs that `page` squeezes to nothing are left out.
fn regions_from_layout(
    layout: Vec<(u64, u64, bool)>,
    page: impl Fn(u64) -> u64,
) -> BTreeMap<u64, Region> {
    let mut regions = BTreeMap::new();
    let mut at = 0;
    for (gap, len, anonymous) in layout {
        let backing = if anonymous {
            Backing::Anonymous
        } else {
            Backing::Physical(PhysAddr(0x8000_0000), MemoryType::Normal)
        };
        let (start, end) = (page(at + gap), page(at + gap + len));
        if start < end {
            let perms = Permissions { read: true, write: true, exec: false, user: true };
            let region = Region { start: VirtAddr(start), end: VirtAddr(end), perms, backing };
            regions.insert(start, region);
        }
        at += gap + len;
    }
    regions
}

/// `unmap_site` of `[start, end)` against `check_covered`, [`vacancy_by_lookups`] and a scan
/// for anonymous regions.
fn check_unmap_site(
    regions: &BTreeMap<u64, Region>,
    start: u64,
    end: u64,
    kept: bool,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let vacancy = if kept { Vacancy::RegionsKept } else { Vacancy::RegionsRemoved };
    let expected = check_covered(regions, start, end).map(|()| UnmapSite {
        vacant: if kept { VaRange::between(start, end) } else { vacancy_by_lookups(regions, start, end) },
        anonymous: overlapping(regions, start, end).any(|r| r.backing == Backing::Anonymous),
    });
    proptest::prop_assert_eq!(unmap_site(regions, start, end, vacancy), expected);
    Ok(())
}

proptest::proptest! {
    /// `unmap_site` agrees with `check_covered`, a vacancy found by separate lookups and a
    /// scan for anonymous regions, over random region layouts and ranges (holes, ranges
    /// cutting regions, ranges starting or ending on region boundaries, no regions at all).
    #[test]
    fn unmap_site_matches_separate_lookups(
        layout in proptest::collection::vec((0u64..4, 1u64..4, proptest::bool::ANY), 0..8),
        first in 0u64..40,
        pages in 1u64..12,
        kept in proptest::bool::ANY,
    ) {
        let page = |n: u64| USER_START + n * PAGE;
        let regions = regions_from_layout(layout, page);
        check_unmap_site(&regions, page(first), page(first + pages), kept)?;
    }

    /// As `unmap_site_matches_separate_lookups`, with the layout against the top of the user
    /// range: regions and ranges ending at `USER_END`, the ceiling with no region above.
    #[test]
    fn unmap_site_matches_separate_lookups_at_the_top(
        layout in proptest::collection::vec((0u64..4, 1u64..4, proptest::bool::ANY), 0..8),
        first in 0u64..48,
        pages in 1u64..12,
        kept in proptest::bool::ANY,
    ) {
        let page = |n: u64| (USER_END - 48 * PAGE + n * PAGE).min(USER_END);
        let regions = regions_from_layout(layout, page);
        let (start, end) = (page(first), page(first + pages));
        proptest::prop_assume!(start < end);
        check_unmap_site(&regions, start, end, kept)?;
    }
}
