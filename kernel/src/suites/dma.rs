//! The board's DMA controller on its own (the Pi 4's BCM2711 DMA, `drivers::bcm2835_dma`):
//! chained copies and zero fills, typed refusals, and the cache maintenance around a transfer.
//! Every case skips on boards without the controller.

use alloc::vec;
use alloc::vec::Vec;

use crate::arch::aarch64::cpu;
use crate::board;
use crate::drivers::bcm2835_dma::{self, Bcm2835Dma};
use crate::ktest::TestError;
use crate::mm::dma::{Chunk, CopyError, PhysCopier, Source};
use crate::mm::layout::phys_to_virt;
use crate::mm::phys::FrameAllocator;
use crate::mm::ram::frames;
use crate::mm::{PhysAddr, PAGE_SIZE};
use crate::rig::{fail, fill, read, write};
use crate::{kassert, kassert_eq, kskip, ktest};

/// The controller, or a skip.
fn controller() -> Result<&'static Bcm2835Dma, TestError> {
    match bcm2835_dma::get() {
        Some(d) => Ok(d),
        None if board::info().dma.is_some() => {
            Err(fail("the device tree has a DMA controller, but it was not brought up").into())
        }
        None => kskip!("no BCM2711 DMA controller on this board"),
    }
}

/// Frames the engine reaches, freed on drop.
struct Frames(Vec<PhysAddr>);

impl Frames {
    fn new(dma: &Bcm2835Dma, n: usize) -> Result<Self, TestError> {
        let alloc = frames().ok_or_else(|| fail("no frame allocator"))?;
        let mut out = Frames(Vec::new());
        for _ in 0..n {
            let f = alloc
                .alloc_zeroed_below(dma.reach())
                .map_err(|_| fail("no frame inside the DMA window"))?;
            out.0.push(f);
        }
        Ok(out)
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        if let Some(alloc) = frames() {
            self.0.iter().for_each(|f| alloc.free(*f));
        }
    }
}

fn at(base: PhysAddr, off: u64) -> PhysAddr {
    PhysAddr(base.as_u64() + off)
}

fn copy(src: PhysAddr, dst: PhysAddr, len: usize) -> Chunk {
    Chunk {
        src: Source::Phys(src),
        dst,
        len,
    }
}

ktest!(dma, a_chain_copies_and_zero_fills, |_t| {
    let dma = controller()?;
    let f = Frames::new(dma, 2)?;
    let (src, dst) = (f.0[0], f.0[1]);
    let pattern: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 7 + 3) as u8).collect();
    write(src, &pattern)?;
    fill(dst, 0x77)?;
    let chunks = [
        copy(at(src, 0x100), at(dst, 0x200), 0x400),
        Chunk {
            src: Source::Zeros,
            dst: at(dst, 0x600),
            len: 0x40,
        },
        copy(src, at(dst, 0xf00), 0x100),
    ];
    dma.copy(&chunks).map_err(fail)?;
    let got = read(dst, PAGE_SIZE)?;
    kassert_eq!(got[0x200..0x600], pattern[0x100..0x500]);
    kassert_eq!(got[0x600..0x640], [0u8; 0x40]);
    kassert_eq!(got[0xf00..], pattern[..0x100]);
    let untouched = got[..0x200].iter().chain(&got[0x640..0xf00]);
    kassert!(
        untouched.clone().all(|b| *b == 0x77),
        "bytes outside the chunks changed"
    );
    Ok(())
});

ktest!(dma, bad_requests_are_refused_and_move_nothing, |_t| {
    let dma = controller()?;
    let f = Frames::new(dma, 2)?;
    let (src, dst) = (f.0[0], f.0[1]);
    fill(src, 0x11)?;
    fill(dst, 0x22)?;
    let refused = |chunks: &[Chunk]| dma.copy(chunks).err();
    kassert!(matches!(
        refused(&[copy(at(src, 2), dst, 8)]),
        Some(CopyError::Unaligned { addr, .. }) if addr == src.as_u64() + 2
    ));
    kassert!(matches!(
        refused(&[copy(src, dst, 6)]),
        Some(CopyError::Unaligned { len: 6, .. })
    ));
    let max = dma.kind().max_len();
    kassert_eq!(
        refused(&[copy(src, dst, max + 4)]),
        Some(CopyError::TooLong { len: max + 4, max })
    );
    let beyond = dma.reach();
    kassert_eq!(
        refused(&[copy(beyond, dst, 4)]),
        Some(CopyError::Unreachable { pa: beyond, len: 4 })
    );
    let many: Vec<Chunk> = (0..PAGE_SIZE as u64 / 4)
        .map(|i| copy(at(src, i * 4), at(dst, i * 4), 4))
        .chain([copy(src, dst, 4)])
        .collect();
    kassert!(matches!(
        refused(&many),
        Some(CopyError::TooManyChunks { .. })
    ));
    // A refusal is whole: the good chunk before a bad one did not move either.
    kassert!(refused(&[copy(src, dst, 16), copy(src, at(dst, 16), 6)]).is_some());
    kassert_eq!(read(dst, PAGE_SIZE)?, vec![0x22u8; PAGE_SIZE]);
    // And the channel still works.
    dma.copy(&[copy(src, dst, 16)]).map_err(fail)?;
    kassert_eq!(read(dst, 16)?, vec![0x11u8; 16]);
    Ok(())
});

ktest!(
    dma,
    cache_maintenance_shows_the_engine_the_cpus_bytes,
    |_t| {
        let dma = controller()?;
        let f = Frames::new(dma, 2)?;
        let (src, dst) = (f.0[0], f.0[1]);
        let len = PAGE_SIZE;
        // With maintenance (the default), both directions: the engine reads bytes the CPU just
        // wrote (still in its caches), and the CPU reads what the engine wrote over lines it had
        // cached.
        fill(src, 0xb0)?;
        fill(dst, 0x0c)?;
        let _ = read(dst, len)?; // now cached
        dma.copy(&[copy(src, dst, len)]).map_err(fail)?;
        kassert_eq!(
            read(dst, len)?,
            vec![0xb0u8; len],
            "the maintained copy is wrong"
        );

        // Without maintenance: memory holds 0xa0 (cleaned), the CPU's caches 0xb1 (not cleaned).
        fill(src, 0xa0)?;
        cpu::clean_dcache_to_poc(phys_to_virt(src.as_u64()), len);
        fill(src, 0xb1)?;
        fill(dst, 0)?;
        cpu::clean_invalidate_dcache_to_poc(phys_to_virt(dst.as_u64()), len);
        dma.set_skip_cache_maintenance(true);
        let unmaintained = dma.copy(&[copy(src, dst, len)]);
        dma.set_skip_cache_maintenance(false);
        unmaintained.map_err(fail)?;
        cpu::invalidate_dcache_to_poc(phys_to_virt(dst.as_u64()), len);
        let seen = read(dst, len)?;
        let stale_lines = seen.iter().filter(|b| **b == 0xa0).count();
        kassert!(
            seen.iter().all(|b| *b == 0xa0 || *b == 0xb1),
            "the engine moved neither memory's nor the caches' bytes"
        );
        if stale_lines == 0 {
            kskip!(
                "without a clean the engine still saw every byte the CPU left in its caches: this \
             machine does not model caches (QEMU) or its DMA is coherent, so only a board \
             ({}) shows a missing clean",
                board::info().model
            );
        }
        // On a board: the engine saw memory, not the caches, which is why the driver cleans.
        Ok(())
    }
);
