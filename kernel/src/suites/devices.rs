//! PCIe enumeration and the `edu` DMA engine through the kernel's DMA API: behind an SMMU the
//! device gets IOVAs below its DMA mask in a domain of its own (dma-iommu), without one the bus
//! address is the physical address (dma-direct, only where the mask reaches RAM). One test lets
//! the stream bypass the SMMU (bus address = physical address) and so needs a mask that reaches
//! RAM.

use alloc::vec::Vec;

use crate::board;
use crate::drivers::edu::{Direction, Edu, EduError};
use crate::drivers::pcie::PcieBus;
use crate::iommu::dma::{self, DmaDirection, DmaDomain, DmaError, DmaMapping, UnmapError};
use crate::iommu::driver::DebugKnobs;
use crate::iommu::probe::{self, StreamIdError};
use crate::iommu::spec::event::{AccessKind, EventKind};
use crate::ktest::{TestCtx, TestError};
use crate::mm::phys::FrameAllocator;
use crate::mm::ram::frames;
use crate::mm::PhysAddr;
use crate::rig::{edu_dma_mask, fail, fill, read, write, PAGE};
use crate::{kassert, kassert_eq, kskip, ktest};

/// One `edu` transfer may take 100 ms of virtual time; a busy host stretches that.
const EDU_TIMEOUT_US: u64 = 2_000_000;

fn find_edu() -> Result<Option<Edu>, EduError> {
    let Some(host) = board::info().pcie.as_ref() else {
        return Ok(None);
    };
    let mut bus = PcieBus::new(host).map_err(EduError::Pcie)?;
    match Edu::probe(&mut bus, edu_dma_mask()) {
        Ok(e) => Ok(Some(e)),
        Err(EduError::Pcie(crate::drivers::pcie::PcieError::NotFound { .. })) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The first `edu`, or a skip on boards without one.
fn edu() -> Result<Edu, TestError> {
    match find_edu() {
        Ok(Some(e)) => Ok(e),
        Ok(None) => kskip!("no edu device on this board"),
        Err(e) => Err(fail(e).into()),
    }
}

/// The StreamID the SMMU knows `edu` by, or `None` when no SMMU translates it.
fn stream_of(edu: &Edu) -> Result<Option<u32>, TestError> {
    match probe::stream_id(edu.bdf()) {
        Ok(sid) => Ok(Some(sid)),
        Err(StreamIdError::NoSmmu) => Ok(None),
        Err(e) => Err(fail(e).into()),
    }
}

/// How the test reaches memory: the device's own DMA domain, or bus = physical address.
enum DmaPath {
    Domain(DmaDomain),
    Direct(u64),
}

impl DmaPath {
    fn of(edu: &Edu) -> Result<Self, TestError> {
        Ok(match stream_of(edu)? {
            Some(sid) => Self::Domain(DmaDomain::attach(sid, edu.dma_mask()).map_err(fail)?),
            None => Self::Direct(edu.dma_mask()),
        })
    }

    /// Maps `len` bytes at `pa`; skips when no IOMMU can make them reachable.
    fn map(&self, pa: PhysAddr, len: usize, dir: DmaDirection) -> Result<DmaMapping, TestError> {
        let mapped = match self {
            Self::Domain(d) => d.map(pa, len, dir),
            Self::Direct(mask) => dma::map_direct(pa, len, *mask),
        };
        match mapped {
            Ok(m) => Ok(m),
            Err(e @ DmaError::BeyondMask { .. }) => kskip!("{e}"),
            Err(e) => Err(fail(e).into()),
        }
    }

    fn unmap(&self, m: DmaMapping) -> Result<(), TestError> {
        match self {
            Self::Domain(d) => d.unmap(m).map_err(|e| fail(e).into()),
            Self::Direct(_) => Ok(()),
        }
    }
}

/// Two fresh frames, freed when dropped.
struct Frames([PhysAddr; 2]);

impl Frames {
    fn new() -> Result<Self, TestError> {
        let alloc = frames().ok_or_else(|| fail("no frame allocator"))?;
        let a = alloc.alloc_zeroed().map_err(fail)?;
        match alloc.alloc_zeroed() {
            Ok(b) => Ok(Self([a, b])),
            Err(e) => {
                alloc.free(a);
                Err(fail(e).into())
            }
        }
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        if let Some(alloc) = frames() {
            self.0.iter().for_each(|&f| alloc.free(f));
        }
    }
}

/// `len` bytes of a pattern only this run makes.
fn pattern(t: &mut TestCtx, len: usize) -> Vec<u8> {
    let key = t.rand() as u8 | 1;
    (0..len)
        .map(|i| (i as u8).wrapping_mul(key) ^ 0xa5)
        .collect()
}

/// Memory at `from` into the device buffer, then the buffer out to `to` (bus addresses).
fn round_trip(edu: &Edu, from: u64, to: u64, len: usize) -> Result<(), TestError> {
    edu.dma(Direction::FromMemory, from, 0, len, EDU_TIMEOUT_US)
        .map_err(fail)?;
    edu.dma(Direction::ToMemory, to, 0, len, EDU_TIMEOUT_US)
        .map_err(fail)?;
    Ok(())
}

ktest!(devices, edu_round_trip_dma, |t| {
    let edu = edu()?;
    kassert!(edu.is_alive(), "edu liveness check failed");
    let f = Frames::new()?;
    let len = t.rand_range(64, 4096) as usize;
    let data = pattern(t, len);
    write(f.0[0], &data)?;
    let path = DmaPath::of(&edu)?;
    let src = path.map(f.0[0], len, DmaDirection::ToDevice)?;
    let dst = path.map(f.0[1], len, DmaDirection::FromDevice)?;
    for m in [&src, &dst] {
        kassert!(
            edu.dma_mask() & m.bus() == m.bus(),
            "bus address {:#x} is beyond the device's mask {:#x}",
            m.bus(),
            edu.dma_mask()
        );
    }
    let moved = round_trip(&edu, src.bus(), dst.bus(), len);
    path.unmap(src)?;
    path.unmap(dst)?;
    moved?;
    kassert!(
        read(f.0[1], len)? == data,
        "the {len} bytes that came back differ from what went out"
    );
    Ok(())
});

/// What lands in a page the device wrote once, after that page's mapping was taken away
/// (`invalidate`: the unmap reaches the SMMU as it must; else the driver skips it).
fn write_after_unmap(t: &mut TestCtx, invalidate: bool) -> Result<(Vec<u8>, u32, u64), TestError> {
    let edu = edu()?;
    let Some(sid) = stream_of(&edu)? else {
        kskip!("no SMMU translates edu: nothing caches a translation")
    };
    let smmu = probe::smmu().ok_or_else(|| fail("a StreamID but no SMMU"))?;
    let domain = DmaDomain::attach(sid, edu.dma_mask()).map_err(fail)?;
    let f = Frames::new()?;
    let len = 64;
    write(f.0[0], &pattern(t, len))?;
    let src = domain
        .map(f.0[0], len, DmaDirection::ToDevice)
        .map_err(fail)?;
    let dst = domain
        .map(f.0[1], len, DmaDirection::FromDevice)
        .map_err(fail)?;
    let old = dst.bus();
    // The SMMU walks (and may cache) `old` once, then the page goes.
    round_trip(&edu, src.bus(), old, len)?;
    fill(f.0[1], 0)?;
    probe::drain_events();
    let before = smmu.debug_knobs();
    smmu.set_debug_knobs(DebugKnobs {
        skip_invalidation: !invalidate,
        ..before
    });
    let unmapped = domain.unmap(dst);
    smmu.set_debug_knobs(before);
    unmapped.map_err(fail)?;
    edu.dma(Direction::ToMemory, old, 0, len, EDU_TIMEOUT_US)
        .map_err(fail)?;
    domain.unmap(src).map_err(fail)?;
    Ok((read(f.0[1], len)?, sid, old))
}

ktest!(devices, edu_write_after_unmap_never_lands, |t| {
    let (page, sid, old) = write_after_unmap(t, true)?;
    kassert!(
        page.iter().all(|&b| b == 0),
        "the device wrote through an unmapped IOVA {old:#x}: {page:02x?}"
    );
    let ev = probe::drain_events();
    kassert!(
        crate::rig::faults(
            &ev,
            EventKind::Translation,
            sid,
            old,
            old + PAGE,
            AccessKind::Write
        ) >= 1,
        "no F_TRANSLATION for the write at {old:#x}: {ev:?}"
    );
    Ok(())
});

ktest!(
    devices,
    edu_write_after_unmap_lands_without_invalidation,
    |t| {
        // The check above can fail: with the unmap's invalidation skipped (the driver's debug
        // knob), the SMMU's cached translation carries the write into the freed page.
        let (page, _, old) = write_after_unmap(t, false)?;
        kassert!(
            page.iter().any(|&b| b != 0),
            "no stale write through {old:#x} although the IOTLB was not invalidated"
        );
        Ok(())
    }
);

/// The first two `edu`s with the StreamIDs the SMMU knows them by; skips unless there are two
/// and an SMMU translates them.
fn two_translated_edus() -> Result<[(Edu, u32); 2], TestError> {
    let Some(host) = board::info().pcie.as_ref() else {
        kskip!("no PCIe host bridge")
    };
    let mut bus = PcieBus::new(host).map_err(fail)?;
    let mut found = Vec::new();
    for edu in Edu::probe_all(&mut bus, edu_dma_mask()).map_err(fail)? {
        match stream_of(&edu)? {
            Some(sid) => found.push((edu, sid)),
            None => kskip!("no SMMU translates edu"),
        }
    }
    let n = found.len();
    found.truncate(2);
    match found.try_into() {
        Ok(two) => Ok(two),
        Err(_) => kskip!("{n} edu device(s): two domains need two"),
    }
}

// A mapping is only unmapped by the domain that made it: another domain hands it back still
// mapped, and its own buffers stay mapped too. (Fresh domains with the same mask hand out the
// same first IOVA: unmapping by address alone would take the other domain's buffer away.)
// Isolation between two domains, so it reports in the `isolation` suite (boards with one
// translated device skip it there); it lives here beside the edu helpers it uses.
ktest!(isolation, dma_domain_refuses_another_domains_mapping, |t| {
    let [(edu_a, sid_a), (edu_b, sid_b)] = two_translated_edus()?;
    let a = DmaDomain::attach(sid_a, edu_a.dma_mask()).map_err(fail)?;
    let b = DmaDomain::attach(sid_b, edu_b.dma_mask()).map_err(fail)?;
    let (fa, fb) = (Frames::new()?, Frames::new()?);
    let len = 64;
    let data = pattern(t, len);
    write(fa.0[0], &data)?;
    write(fb.0[0], &data)?;
    let a_src = a.map(fa.0[0], len, DmaDirection::ToDevice).map_err(fail)?;
    let a_dst = a.map(fa.0[1], len, DmaDirection::FromDevice).map_err(fail)?;
    let b_src = b.map(fb.0[0], len, DmaDirection::ToDevice).map_err(fail)?;
    let b_dst = b.map(fb.0[1], len, DmaDirection::FromDevice).map_err(fail)?;

    let bus = a_src.bus();
    let a_src = match b.unmap(a_src) {
        Err(UnmapError { error, mapping }) => {
            kassert_eq!(error, DmaError::Foreign { bus });
            mapping
        }
        Ok(()) => return Err(fail("domain B unmapped domain A's mapping").into()),
    };
    let direct = dma::map_direct(fa.0[0], len, u64::MAX).map_err(fail)?;
    kassert!(
        matches!(a.unmap(direct), Err(UnmapError { error: DmaError::Foreign { .. }, .. })),
        "a domain unmapped a dma-direct mapping"
    );
    // Both devices still reach what their own domains mapped.
    round_trip(&edu_a, a_src.bus(), a_dst.bus(), len)?;
    round_trip(&edu_b, b_src.bus(), b_dst.bus(), len)?;
    kassert!(read(fa.0[1], len)? == data, "A's buffers are no longer reachable");
    kassert!(read(fb.0[1], len)? == data, "B's buffers are no longer reachable");
    for (domain, mapping) in [(&a, a_src), (&a, a_dst), (&b, b_src), (&b, b_dst)] {
        domain.unmap(mapping).map_err(fail)?;
    }
    a.detach().map_err(fail)?;
    b.detach().map_err(fail)?;
    Ok(())
});

ktest!(devices, edu_bypass_dma_is_untranslated, |t| {
    // Needs untranslated DMA: bus address = physical address, so the device's mask must reach
    // the RAM it is given.
    let edu = edu()?;
    let f = Frames::new()?;
    let len = t.rand_range(64, 4096) as usize;
    let (a, b) = (f.0[0].as_u64(), f.0[1].as_u64());
    if (a.max(b) + len as u64 - 1) & !edu.dma_mask() != 0 {
        kskip!(
            "edu's DMA mask {:#x} does not reach RAM at {:#x}: untranslated DMA is impossible \
             (QEMU's edu takes dma_mask=, the kernel edu.dma_mask=)",
            edu.dma_mask(),
            a.max(b)
        );
    }
    let _bypass = match stream_of(&edu)? {
        Some(sid) => probe::Bypass::new(sid).map_err(fail)?,
        None => None,
    };
    let data = pattern(t, len);
    write(f.0[0], &data)?;
    round_trip(&edu, a, b, len)?;
    kassert!(
        read(f.0[1], len)? == data,
        "the bytes that came back differ"
    );
    Ok(())
});

ktest!(devices, edu_rejects_bad_requests, |_t| {
    let edu = edu()?;
    kassert_eq!(
        edu.dma(Direction::FromMemory, 0x1000, 0, 0, 1000),
        Err(EduError::BadLength { offset: 0, len: 0 })
    );
    kassert_eq!(
        edu.dma(Direction::FromMemory, 0x1000, 4000, 200, 1000),
        Err(EduError::BadLength {
            offset: 4000,
            len: 200
        })
    );
    kassert!(matches!(
        edu.dma(Direction::ToMemory, u64::MAX - 10, 0, 64, 1000),
        Err(EduError::AddressBeyondMask { .. })
    ));
    Ok(())
});

ktest!(devices, pcie_requester_ids, |_t| {
    let Some(host) = board::info().pcie.as_ref() else {
        kskip!("no PCIe host bridge")
    };
    let bus = PcieBus::new(host);
    kassert!(bus.is_ok(), "cannot map ECAM");
    let mut bus = bus.unwrap_or_else(|_| unreachable!());
    let fns = bus.enumerate();
    kassert!(fns.is_ok(), "enumeration failed: {:?}", fns.err());
    let fns = fns.unwrap_or_default();
    kassert!(
        !fns.is_empty(),
        "the root bus has no functions (the host bridge itself should be there)"
    );
    for f in &fns {
        kassert_eq!(f.bdf.requester_id() >> 8, 0);
        for b in &f.bars {
            kassert!(
                b.cpu_addr % b.size == 0,
                "BAR{} of {} not naturally aligned",
                b.index,
                f.bdf
            );
        }
    }
    Ok(())
});
