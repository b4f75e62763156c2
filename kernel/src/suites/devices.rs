//! PCIe enumeration and the `edu` DMA engine with bus address = physical address: on boards
//! with an SMMU the test lets edu's stream bypass it (everything else stays denied).

use crate::board;
use crate::board::bootargs;
use crate::drivers::edu::{self, Direction, Edu, EduError};
use crate::drivers::pcie::PcieBus;
use crate::mm::layout;
use crate::mm::phys::FrameAllocator;
use crate::mm::ram::frames;
use crate::{kassert, kassert_eq, kskip, ktest};

fn edu_dma_mask() -> u64 {
    bootargs()
        .number("edu.dma_mask")
        .and_then(Result::ok)
        .unwrap_or(edu::DEFAULT_DMA_MASK)
}

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

ktest!(devices, edu_round_trip_dma, |t| {
    let edu = match find_edu() {
        Ok(Some(e)) => e,
        Ok(None) => kskip!("no edu device on this board"),
        Err(e) => return Err(crate::ktest::TestError::Fail(alloc::format!("{e}"))),
    };
    kassert!(edu.is_alive(), "edu liveness check failed");
    let sid = match crate::iommu::probe::stream_id(edu.bdf()) {
        Ok(sid) => Some(sid),
        Err(crate::iommu::probe::StreamIdError::NoSmmu) => None,
        Err(e) => return Err(crate::ktest::TestError::Fail(alloc::format!("{e}"))),
    };
    let _bypass = match sid.map(crate::iommu::probe::Bypass::new) {
        Some(Err(e)) => return Err(crate::ktest::TestError::Fail(alloc::format!("{e}"))),
        Some(Ok(b)) => b,
        None => None,
    };
    let Some(alloc) = frames() else {
        kskip!("no frame allocator")
    };
    let (a, b) = (alloc.alloc_zeroed(), alloc.alloc_zeroed());
    kassert!(a.is_ok() && b.is_ok(), "out of frames");
    let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
    let (va, vb) = (
        layout::phys_to_virt(a.as_u64()) as *mut u8,
        layout::phys_to_virt(b.as_u64()) as *mut u8,
    );
    let len = t.rand_range(64, 4096) as usize;
    for i in 0..len {
        // SAFETY: the frame is ours, mapped by the linear map.
        unsafe { va.add(i).write_volatile((i as u8) ^ 0xa5) };
    }
    let r1 = edu.dma(Direction::FromMemory, a.as_u64(), 0, len, 2_000_000);
    let r2 = edu.dma(Direction::ToMemory, b.as_u64(), 0, len, 2_000_000);
    // SAFETY: as above.
    let same = (0..len).all(|i| unsafe { vb.add(i).read_volatile() } == (i as u8) ^ 0xa5);
    alloc.free(a);
    alloc.free(b);
    kassert_eq!(r1, Ok(()));
    kassert_eq!(r2, Ok(()));
    kassert!(
        same,
        "the {len} bytes that came back differ from what went out"
    );
    Ok(())
});

ktest!(devices, edu_rejects_bad_requests, |_t| {
    let edu = match find_edu() {
        Ok(Some(e)) => e,
        Ok(None) => kskip!("no edu device on this board"),
        Err(e) => return Err(crate::ktest::TestError::Fail(alloc::format!("{e}"))),
    };
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
