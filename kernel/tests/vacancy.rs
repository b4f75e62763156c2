//! munmap's vacancy contract (`PageTable::unmap_in_vacancy`: tables lying wholly between the
//! regions on either side of an unmap are freed without a scan) against a reference model of
//! regions and pages. Run in release builds too (`cargo test --release --test vacancy`): only
//! there are the unscanned tables trusted, debug builds scan and assert.
//!
//! Operations land next to level-3 and level-2 table boundaries, so regions share, straddle
//! and neighbour tables; physical 2 MiB regions give blocks that mprotect and munmap split.
//! After every step each page of every region translates as the model says, each page around
//! the operations' addresses outside regions translates to nothing, and no frame was freed
//! twice; at the end, after unmapping everything, the arena holds only the root table.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use shootdown::mm::aspace::{AddressSpace, Backing, MmError, Placement, USER_END, USER_START};
use shootdown::mm::fake::{ArenaPlatform, TestMemory};
use shootdown::mm::pgtable::descriptor::{MemoryType, Permissions};
use shootdown::mm::{PhysAddr, VirtAddr, PAGE_SIZE};

type Host = ArenaPlatform<Arc<TestMemory>>;

const PAGE: u64 = PAGE_SIZE as u64;
const L3_SPAN: u64 = 2 << 20;
/// A level-2 table boundary (1 GiB): anchors below and above it share no level-2 table.
const BASE: u64 = 0x4000_0000;
/// Where operations land: 2 MiB boundaries around and across a 1 GiB boundary, and a lone one
/// far above (its tables are alone in their level-2 table), and both ends of the user range.
const ANCHORS: [u64; 8] = [
    USER_START,
    USER_END - 4 * PAGE,
    BASE - 2 * L3_SPAN,
    BASE - L3_SPAN,
    BASE,
    BASE + L3_SPAN,
    BASE + 2 * L3_SPAN,
    BASE + 0x1000_0000,
];
/// Physical address of the physical regions (2 MiB aligned, outside the arena: never touched).
const PHYS: u64 = 0x80_0000_0000;

fn rw() -> Permissions {
    Permissions::new(true, false, false)
}

fn ro() -> Permissions {
    Permissions::new(false, false, false)
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Anonymous region of `pages` at anchor + `offset` pages.
    MmapAnon(usize, i64, u64),
    /// Physical 2 MiB region (one block) at the anchor.
    MmapBlock(usize),
    Munmap(usize, i64, u64),
    Mprotect(usize, i64, u64, bool),
    Discard(usize, i64, u64),
    Populate(usize, i64, u64),
    MarkYoung(usize, i64),
}

fn op() -> impl Strategy<Value = Op> {
    let anchor = 0..ANCHORS.len();
    let offset = -6i64..6;
    let pages = 1u64..8;
    prop_oneof![
        3 => (anchor.clone(), offset.clone(), pages.clone()).prop_map(|(a, o, p)| Op::MmapAnon(a, o, p)),
        1 => anchor.clone().prop_map(Op::MmapBlock),
        3 => (anchor.clone(), offset.clone(), pages.clone()).prop_map(|(a, o, p)| Op::Munmap(a, o, p)),
        1 => (anchor.clone(), offset.clone(), pages.clone(), any::<bool>())
            .prop_map(|(a, o, p, w)| Op::Mprotect(a, o, p, w)),
        1 => (anchor.clone(), offset.clone(), pages.clone()).prop_map(|(a, o, p)| Op::Discard(a, o, p)),
        1 => (anchor.clone(), offset.clone(), pages).prop_map(|(a, o, p)| Op::Populate(a, o, p)),
        1 => (anchor, offset).prop_map(|(a, o)| Op::MarkYoung(a, o)),
    ]
}

fn at(anchor: usize, offset: i64) -> u64 {
    ANCHORS[anchor].wrapping_add_signed(offset * PAGE as i64)
}

fn in_user_range(va: u64, len: u64) -> bool {
    va >= USER_START && va.checked_add(len).is_some_and(|end| end <= USER_END)
}

/// One page of a region in the model: its physical address if physical, and whether mapped.
#[derive(Debug, Clone, Copy)]
struct Page {
    phys: Option<u64>,
    mapped: bool,
    write: bool,
}

/// Regions as pages (the model does not need their boundaries: munmap, mprotect, discard and
/// populate only ask whether every page of the range lies in some region).
#[derive(Default)]
struct Model {
    pages: BTreeMap<u64, Page>,
}

impl Model {
    fn covered(&self, va: u64, len: u64) -> bool {
        in_user_range(va, len) && (0..len / PAGE).all(|i| self.pages.contains_key(&(va + i * PAGE)))
    }

    fn free(&self, va: u64, len: u64) -> bool {
        in_user_range(va, len) && self.pages.range(va..va + len).next().is_none()
    }

    fn set(&mut self, va: u64, len: u64, f: impl Fn(&mut Page)) {
        for (_, p) in self.pages.range_mut(va..va + len) {
            f(p);
        }
    }
}

struct World {
    mem: Arc<TestMemory>,
    user: shootdown::mm::aspace::MmUser<Host>,
    model: Model,
    baseline: usize,
}

impl World {
    fn new() -> World {
        let mem = Arc::new(TestMemory::new(4096));
        let platform: &'static Host =
            Box::leak(Box::new(ArenaPlatform::new(mem.clone()).with_pa_bits(48)));
        let user = AddressSpace::create(platform).unwrap();
        let baseline = mem.live_frames();
        World {
            mem,
            user,
            model: Model::default(),
            baseline,
        }
    }

    fn apply(&mut self, op: Op) -> Result<(), String> {
        let outcome = |r: Result<(), MmError>, expect_ok: bool| -> Result<bool, String> {
            match (r, expect_ok) {
                (Ok(()), true) => Ok(true),
                (Err(_), false) => Ok(false),
                (r, e) => Err(format!("{op:?}: got {r:?}, model expected ok = {e}")),
            }
        };
        match op {
            Op::MmapAnon(a, o, p) => {
                let (va, len) = (at(a, o), p * PAGE);
                let r = self.user.mmap(
                    Placement::Fixed(VirtAddr(va)),
                    len as usize,
                    rw(),
                    Backing::Anonymous,
                );
                if outcome(r.map(|_| ()), self.model.free(va, len))? {
                    for i in 0..p {
                        let page = Page {
                            phys: None,
                            mapped: true,
                            write: true,
                        };
                        self.model.pages.insert(va + i * PAGE, page);
                    }
                }
            }
            Op::MmapBlock(a) => {
                let va = ANCHORS[a];
                let backing =
                    Backing::Physical(PhysAddr(PHYS + va % (1 << 30)), MemoryType::Normal);
                let r = self.user.mmap(
                    Placement::Fixed(VirtAddr(va)),
                    L3_SPAN as usize,
                    rw(),
                    backing,
                );
                if outcome(r.map(|_| ()), self.model.free(va, L3_SPAN))? {
                    for i in 0..L3_SPAN / PAGE {
                        let page = Page {
                            phys: Some(PHYS + va % (1 << 30) + i * PAGE),
                            mapped: true,
                            write: true,
                        };
                        self.model.pages.insert(va + i * PAGE, page);
                    }
                }
            }
            Op::Munmap(a, o, p) => {
                let (va, len) = (at(a, o), p * PAGE);
                let r = self.user.munmap(VirtAddr(va), len as usize);
                if outcome(r, self.model.covered(va, len))? {
                    for i in 0..p {
                        self.model.pages.remove(&(va + i * PAGE));
                    }
                }
            }
            Op::Mprotect(a, o, p, w) => {
                let (va, len) = (at(a, o), p * PAGE);
                let r = self
                    .user
                    .mprotect(VirtAddr(va), len as usize, if w { rw() } else { ro() });
                if outcome(r, self.model.covered(va, len))? {
                    self.model.set(va, len, |p| p.write = w);
                }
            }
            Op::Discard(a, o, p) => {
                let (va, len) = (at(a, o), p * PAGE);
                let r = self.user.discard(VirtAddr(va), len as usize).map(|_| ());
                if outcome(r, self.model.covered(va, len))? {
                    self.model.set(va, len, |p| p.mapped = false);
                }
            }
            Op::Populate(a, o, p) => {
                let (va, len) = (at(a, o), p * PAGE);
                let r = self.user.populate(VirtAddr(va), len as usize);
                if outcome(r, self.model.covered(va, len))? {
                    self.model.set(va, len, |p| p.mapped = true);
                }
            }
            Op::MarkYoung(a, o) => {
                let va = at(a, o);
                let mapped = self.model.pages.get(&va).is_some_and(|p| p.mapped);
                let r = self.user.mark_young(VirtAddr(va)).map(|_| ());
                outcome(r, mapped)?;
            }
        }
        self.check()
    }

    /// Every region page translates as the model says; the pages around every anchor that no
    /// region holds translate to nothing; nothing was freed twice.
    fn check(&self) -> Result<(), String> {
        for (&va, page) in &self.model.pages {
            let t = self.user.translate(VirtAddr(va));
            match (t, page) {
                (None, Page { mapped: false, .. }) => {}
                (
                    Some(t),
                    Page {
                        mapped: true,
                        phys,
                        write,
                    },
                ) => {
                    if t.attributes.perms.write != *write {
                        return Err(format!("{va:#x} translates with {t:?}, write = {write}"));
                    }
                    if let Some(pa) = phys {
                        if t.pa.0 != *pa {
                            return Err(format!("{va:#x} -> {:#x}, expected {pa:#x}", t.pa.0));
                        }
                    }
                }
                (t, p) => return Err(format!("{va:#x} translates to {t:?}, model says {p:?}")),
            }
        }
        for anchor in ANCHORS {
            // Every page next to the operations, one page in 16 of the tables around.
            let span = (L3_SPAN / PAGE) as i64;
            let near = (-16..24).chain((-span..2 * span).step_by(16));
            for i in near {
                let va = anchor.wrapping_add_signed(i * PAGE as i64);
                if !self.model.pages.contains_key(&va)
                    && self.user.translate(VirtAddr(va)).is_some()
                {
                    return Err(format!("{va:#x} is in no region but translates"));
                }
            }
        }
        self.check_regions()?;
        if self.mem.bad_frees() != 0 {
            return Err(format!("{} bad frees", self.mem.bad_frees()));
        }
        Ok(())
    }

    /// The regions are sorted, disjoint, and hold exactly the model's pages with their
    /// permissions and physical addresses (a split keeps each piece's offset into the range).
    fn check_regions(&self) -> Result<(), String> {
        let regions = self.user.regions();
        let mut pages = 0;
        let mut last_end = 0;
        for r in &regions {
            let (start, end) = (r.start.0, r.end.0);
            if start < last_end || start >= end {
                return Err(format!("regions overlap or are empty: {regions:?}"));
            }
            last_end = end;
            for va in (start..end).step_by(PAGE as usize) {
                let Some(p) = self.model.pages.get(&va) else {
                    return Err(format!("{r:?} holds {va:#x}, which the model does not"));
                };
                let phys = match r.backing {
                    Backing::Physical(pa, _) => Some(pa.0 + (va - start)),
                    Backing::Anonymous => None,
                };
                if p.phys != phys || p.write != r.perms.write {
                    return Err(format!("{r:?} at {va:#x} disagrees with the model's {p:?}"));
                }
                pages += 1;
            }
        }
        if pages != self.model.pages.len() {
            return Err(format!(
                "regions hold {pages} pages, the model {}",
                self.model.pages.len()
            ));
        }
        Ok(())
    }

    /// Unmaps every region: only the tables the space started with may remain.
    fn finish(&mut self) -> Result<(), String> {
        for r in self.user.regions() {
            self.user
                .munmap(r.start, (r.end.0 - r.start.0) as usize)
                .map_err(|e| format!("final munmap of {r:?}: {e:?}"))?;
        }
        self.model.pages.clear();
        self.check()?;
        let live = self.mem.live_frames();
        if live != self.baseline {
            return Err(format!(
                "{live} frames live after unmapping everything, {} at creation",
                self.baseline
            ));
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn munmap_frees_exactly_the_vacant_tables(ops in proptest::collection::vec(op(), 1..40)) {
        let mut world = World::new();
        for op in ops {
            if let Err(e) = world.apply(op) {
                prop_assert!(false, "{}", e);
            }
        }
        if let Err(e) = world.finish() {
            prop_assert!(false, "{}", e);
        }
    }
}

/// Access-flag answers (a device's F_ACCESS reaches `mark_young` with the page-table lock
/// only, not the mmap lock) and ageing on one region, while another CPU maps and unmaps its
/// neighbour in the same level-3 table over and over: each unmap empties the neighbour's part
/// and scans (or, when alone, frees) the shared tables. The region in use never loses a page,
/// and the neighbour's churn leaks no frame.
#[test]
fn access_flag_updates_race_unmaps_of_the_neighbour_without_losing_a_page() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let world = World::new();
    let user = world.user.clone();
    let kept = BASE + 16 * PAGE;
    user.mmap(
        Placement::Fixed(VirtAddr(kept)),
        4 * PAGE_SIZE,
        rw(),
        Backing::Anonymous,
    )
    .unwrap();
    let after_kept = world.mem.live_frames();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (user, stop) = (user.clone(), stop.clone());
        std::thread::spawn(move || {
            // Below `kept` and on its far side: floors and ceilings on both sides.
            for round in 0..4000u64 {
                let va = if round % 2 == 0 {
                    BASE
                } else {
                    kept + 8 * PAGE
                };
                user.mmap(
                    Placement::Fixed(VirtAddr(va)),
                    2 * PAGE_SIZE,
                    rw(),
                    Backing::Anonymous,
                )
                .unwrap();
                user.munmap(VirtAddr(va), 2 * PAGE_SIZE).unwrap();
            }
            stop.store(true, Ordering::Release);
        })
    };
    let mut checks = 0u64;
    while !stop.load(Ordering::Acquire) {
        for i in 0..4 {
            let va = VirtAddr(kept + i * PAGE);
            user.mark_young(va).unwrap();
            user.clear_young(va, PAGE_SIZE).unwrap();
            assert!(
                user.translate(va).is_some(),
                "{va:?} lost while its neighbour churned"
            );
            checks += 1;
        }
    }
    churn.join().unwrap();
    assert!(checks > 0, "the ageing side never ran");
    assert_eq!(
        world.mem.live_frames(),
        after_kept,
        "the neighbour's churn leaked frames"
    );
    assert_eq!(world.mem.bad_frees(), 0);
}
