//! Isolation between devices on the kernel's SMMU: two DMA masters (two `edu` on QEMU
//! `virt-smmu`, the model's two engines on the Pi), each bound to its own address space.
//!
//! A device reaches exactly the pages of the address space it is bound to: at a virtual address
//! both spaces map it gets its own frame, at one only the other space maps it faults, and a
//! physical address used as a bus address faults too (no bypass; tried only when the device's
//! DMA mask can emit that address at all). A stream never attached and a stream whose binding
//! ended abort (C_BAD_STE) while the other device keeps working.
//!
//! The same cross-device writes are then repeated with device B's stream deliberately pointed
//! at A's context (a broken binding, set up by the test through the driver): the check must then
//! see A's pages written, showing that it can fail.
//!
//! `isolation.dma_domain_refuses_another_domains_mapping` (two `DmaDomain`s: neither unmaps the
//! other's mapping) is in `suites/devices.rs`, beside the edu helpers it shares.

use alloc::vec;
use alloc::vec::Vec;

use crate::iommu::probe::BoardDomain;
use crate::iommu::spec::event::{AccessKind, EventKind, EventRecord};
use crate::ktest::{TestCtx, TestError};
use crate::mm::PhysAddr;
use crate::rig::*;
use crate::{kassert, kassert_eq, kskip, ktest};

const LEN: usize = 16;
/// What device B writes.
const B_WRITES: u8 = 0xee;

/// Two rigs (two devices, two address spaces): A maps `VA` and `VA + PAGE`, B only `VA`.
struct Pair {
    a: Rig<BoardDomain>,
    b: Rig<BoardDomain>,
    /// A's frame at `VA`, A's frame at `VA + PAGE` (B has nothing there), B's frame at `VA`.
    a_shared: PhysAddr,
    a_only: PhysAddr,
    b_shared: PhysAddr,
    patterns: [u8; 3],
}

/// The kernel's first two DMA masters, each in a fresh address space; skips with fewer.
fn pair(t: &mut TestCtx) -> Result<Pair, TestError> {
    let mut rigs = Rig::board_all()?;
    if rigs.len() < 2 {
        kskip!("fewer than two DMA masters ({} found)", rigs.len());
    }
    let mut b = rigs.swap_remove(1);
    let mut a = rigs.swap_remove(0);
    kassert!(a.sid != b.sid, "two devices share StreamID {:#x}", a.sid);
    // Three distinct patterns, none of them B_WRITES, zero or the staging page's 0x77.
    let r = t.rand();
    let p = [
        0x20 | (r as u8 & 0x1f),
        0x40 | ((r >> 8) as u8 & 0x1f),
        0x80 | ((r >> 16) as u8 & 0x1f),
    ];
    let a_shared = a.map(VA, 1, RW, p[0])?[0];
    let a_only = a.map(VA + PAGE, 1, RW, p[1])?[0];
    let b_shared = b.map(VA, 1, RW, p[2])?[0];
    Ok(Pair {
        a,
        b,
        a_shared,
        a_only,
        b_shared,
        patterns: p,
    })
}

/// What device B did to A's memory.
#[derive(Debug)]
struct CrossWrites {
    /// A's frames after B wrote at `VA`, at `VA + PAGE` and (if B can emit it) at the bus
    /// address equal to the physical address of A's frame at `VA`.
    a_shared: Vec<u8>,
    a_only: Vec<u8>,
    /// B's own frame after its write at `VA`.
    b_shared: Vec<u8>,
    events: Vec<EventRecord>,
}

impl Pair {
    /// A's frame's physical address, if device B's DMA mask can emit it as a bus address.
    fn a_frame_as_bus_address(&self) -> Option<u64> {
        let pa = self.a_shared.as_u64();
        self.b.dev.reaches(pa, LEN).then_some(pa)
    }

    /// The IOVAs at which B must not reach A's pages: `VA + PAGE` (only A maps it) and A's
    /// frame's physical address (no bypass) when B can emit it.
    fn foreign_iovas(&self) -> Vec<u64> {
        core::iter::once(VA + PAGE)
            .chain(self.a_frame_as_bus_address())
            .collect()
    }

    /// Device B writes [`B_WRITES`] at `VA`, `VA + PAGE` and A's frame's physical address.
    /// (B's buffer is loaded first: under a broken binding B's staging page is not its own.)
    fn cross_writes(&self, load: bool) -> Result<CrossWrites, TestError> {
        if load {
            self.b.load_buffer(&[B_WRITES; LEN])?;
        }
        self.b.drain_events();
        for iova in core::iter::once(VA).chain(self.foreign_iovas()) {
            self.b.dev.store(iova, LEN)?;
        }
        Ok(CrossWrites {
            a_shared: read(self.a_shared, LEN)?,
            a_only: read(self.a_only, LEN)?,
            b_shared: read(self.b_shared, LEN)?,
            events: self.b.drain_events(),
        })
    }

    /// Puts the patterns back into every frame.
    fn refill(&self) -> Result<(), TestError> {
        fill(self.a_shared, self.patterns[0])?;
        fill(self.a_only, self.patterns[1])?;
        fill(self.b_shared, self.patterns[2])?;
        Ok(())
    }
}

/// The number of `kind` events of stream `sid` at `iova` for writes.
fn write_faults(events: &[EventRecord], kind: EventKind, sid: u32, iova: u64) -> usize {
    faults(
        events,
        kind,
        sid,
        iova,
        iova + LEN as u64,
        AccessKind::Write,
    )
}

/// True if stream `sid` was refused its STE (QEMU reports C_BAD_STE without an address).
fn bad_ste(events: &[EventRecord], sid: u32) -> bool {
    events
        .iter()
        .any(|e| e.kind == EventKind::BadSte && e.sid == sid)
}

ktest!(
    isolation,
    a_device_reaches_only_its_own_address_space,
    |t| {
        let mut p = pair(t)?;
        let [pa, pa_only, pb] = p.patterns;
        let (sa, sb) = (p.a.sid, p.b.sid);

        // B was never attached: everything it sends aborts (C_BAD_STE), even at A's frame's
        // physical address (no bypass) if B can emit it, else at the VA A maps.
        if p.a_frame_as_bus_address().is_none() {
            crate::println!(
                "    # B's DMA mask {:#x} cannot emit A's frame's address {:#x}: the bypass probe uses VA",
                p.b.dev.dma_mask(),
                p.a_shared.as_u64()
            );
        }
        p.b.dev
            .store(p.a_frame_as_bus_address().unwrap_or(VA), LEN)?;
        let ev = p.b.drain_events();
        kassert!(
            bad_ste(&ev, sb),
            "no C_BAD_STE for the never-attached stream {sb:#x}: {ev:?}"
        );
        kassert_eq!(read(p.a_shared, LEN)?, vec![pa; LEN]);

        p.a.bind()?;
        p.b.bind()?;
        let (ca, cb) = (
            p.a.bond().and_then(|x| x.context()),
            p.b.bond().and_then(|x| x.context()),
        );
        kassert!(ca.is_some() && ca != cb, "contexts {ca:?} and {cb:?}");

        // Reads: the same VA gives each device its own frame; A's private page faults for B.
        p.a.dev.fetch(VA, LEN)?;
        kassert_eq!(p.a.read_buffer(LEN)?, vec![pa; LEN], "A at VA");
        p.b.dev.fetch(VA, LEN)?;
        kassert_eq!(p.b.read_buffer(LEN)?, vec![pb; LEN], "B at VA");
        p.b.dev.fetch(VA + PAGE, LEN)?;
        kassert_eq!(
            p.b.read_buffer(LEN)?,
            vec![0; LEN],
            "B read A's private page"
        );
        let ev = p.b.drain_events();
        kassert!(
            faults(
                &ev,
                EventKind::Translation,
                sb,
                VA + PAGE,
                VA + PAGE + LEN as u64,
                AccessKind::Read
            ) >= 1,
            "no F_TRANSLATION for B's read of A's page: {ev:?}"
        );

        // Writes: only B's own frame changes; each of A's pages faults for B.
        let w = p.cross_writes(true)?;
        kassert_eq!(w.b_shared, vec![B_WRITES; LEN], "B's own write: {w:?}");
        kassert_eq!(w.a_shared, vec![pa; LEN], "B wrote A's frame at VA");
        kassert_eq!(w.a_only, vec![pa_only; LEN], "B wrote A's private page");
        for iova in p.foreign_iovas() {
            kassert!(
                write_faults(&w.events, EventKind::Translation, sb, iova) >= 1,
                "no F_TRANSLATION for B's write at {iova:#x}: {:?}",
                w.events
            );
        }
        kassert!(
            w.events.iter().all(|e| e.sid == sb),
            "events of another stream: {:?}",
            w.events
        );

        // A's binding ends: A aborts, B carries on.
        p.a.unbind()?;
        p.refill()?;
        p.a.dev.store(VA, LEN)?;
        let ev = p.a.drain_events();
        kassert!(
            bad_ste(&ev, sa),
            "no C_BAD_STE for the unbound stream {sa:#x}: {ev:?}"
        );
        kassert_eq!(read(p.a_shared, LEN)?, vec![pa; LEN]);
        p.b.dev.fetch(VA, LEN)?;
        kassert_eq!(p.b.read_buffer(LEN)?, vec![pb; LEN], "B after A's unbind");
        if let Some(m) = p.a.model {
            kassert!(m.stale_translations().is_empty());
        }
        Ok(())
    }
);

ktest!(
    isolation,
    the_check_sees_a_device_bound_to_the_wrong_context,
    |t| {
        // Broken on purpose: B's stream is re-attached to A's context through the driver. The same
        // writes as above must then land in A's pages.
        let mut p = pair(t)?;
        let [pa, pa_only, _] = p.patterns;
        p.a.bind()?;
        p.b.bind()?;
        let (Some(ca), Some(cb)) = (
            p.a.bond().and_then(|x| x.context()),
            p.b.bond().and_then(|x| x.context()),
        ) else {
            return Err(fail("a bound device without a context").into());
        };
        p.b.load_buffer(&[B_WRITES; LEN])?;
        let sb = p.b.sid;
        let smmu = p.b.smmu;
        smmu.detach(sb).map_err(fail)?;
        let broken = smmu.attach(sb, ca).map_err(fail).and_then(|()| {
            p.cross_writes(false)
                .map_err(|e| fail(alloc::format!("{e:?}")))
        });
        // Put B back on its own context whatever happened, so that unbinding works.
        let _ = smmu.detach(sb);
        smmu.attach(sb, cb).map_err(fail)?;
        let w = broken?;
        kassert_eq!(
            w.a_only,
            vec![B_WRITES; LEN],
            "B bound to A's context did not reach A's private page: {w:?}"
        );
        kassert_eq!(w.a_shared, vec![B_WRITES; LEN], "{w:?}");
        // Back on its own context, B is isolated again.
        p.refill()?;
        let w = p.cross_writes(false)?;
        kassert_eq!((w.a_shared, w.a_only), (vec![pa; LEN], vec![pa_only; LEN]));
        Ok(())
    }
);
