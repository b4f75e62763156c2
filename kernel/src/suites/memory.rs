//! Heap and physical frames.

use alloc::vec::Vec;

use crate::mm::layout;
use crate::mm::phys::{FrameAllocator, PhysMemory};
use crate::mm::ram::frames;
use crate::{kassert, kassert_eq, ktest};

ktest!(memory, heap_alloc_and_free, |t| {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..100u64 {
        let size = t.rand_range(1, 16 * 1024) as usize;
        let mut v = alloc::vec![0u8; size];
        v.iter_mut()
            .enumerate()
            .for_each(|(j, b)| *b = (i as usize + j) as u8);
        blocks.push(v);
    }
    for (i, v) in blocks.iter().enumerate() {
        kassert!(
            v.iter().enumerate().all(|(j, b)| *b == (i + j) as u8),
            "block {i} was overwritten"
        );
    }
    drop(blocks);
    // A large allocation works after everything was returned.
    let big = alloc::vec![7u8; 8 << 20];
    kassert_eq!(big[(8 << 20) - 1], 7);
    Ok(())
});

ktest!(memory, frames_alloc_and_free, |_t| {
    let Some(alloc) = frames() else {
        crate::kskip!("no frame allocator")
    };
    let bitmap = alloc.bitmap();
    let used_before = bitmap.used_frames();
    kassert!(bitmap.total_frames() > 0, "no page frames at all");
    let mut frames = Vec::new();
    for _ in 0..256 {
        let f = alloc.alloc_zeroed();
        kassert!(
            f.is_ok(),
            "frame allocation failed with {} of {} used",
            bitmap.used_frames(),
            bitmap.total_frames()
        );
        frames.push(f.unwrap_or_default());
    }
    let mut sorted: Vec<u64> = frames.iter().map(|f| f.as_u64()).collect();
    sorted.sort_unstable();
    sorted.dedup();
    kassert_eq!(sorted.len(), frames.len());
    for f in &frames {
        kassert!(f.is_page_aligned(), "frame {f:?} not page aligned");
        let mem = crate::mm::ram::LinearMap;
        let w = mem.word(*f);
        kassert!(w.is_some(), "frame {f:?} is not RAM");
        let w = w.unwrap();
        kassert_eq!(w.load(core::sync::atomic::Ordering::Relaxed), 0);
        w.store(f.as_u64(), core::sync::atomic::Ordering::Relaxed);
    }
    for f in &frames {
        // SAFETY: the frame is ours and RAM in the linear map.
        let v = unsafe { core::ptr::read_volatile(layout::phys_to_virt(f.as_u64()) as *const u64) };
        kassert_eq!(v, f.as_u64());
        alloc.free(*f);
    }
    kassert_eq!(bitmap.used_frames(), used_before);
    // A double free is detected, reported and changes nothing.
    let bad = alloc.bad_frees();
    alloc.free(frames[0]);
    kassert_eq!(alloc.bad_frees(), bad + 1);
    kassert_eq!(bitmap.used_frames(), used_before);
    Ok(())
});

ktest!(memory, linear_map_refuses_non_ram, |_t| {
    let mem = crate::mm::ram::LinearMap;
    let uart = crate::board::info()
        .uart
        .map(|u| u.base)
        .unwrap_or(0x0900_0000);
    kassert!(
        mem.word(crate::mm::PhysAddr(uart)).is_none(),
        "device registers are not RAM"
    );
    kassert!(
        mem.word(crate::mm::PhysAddr(1)).is_none(),
        "unaligned word accepted"
    );
    kassert!(
        mem.bytes(crate::mm::PhysAddr(u64::MAX - 4), 16).is_none(),
        "overflowing range accepted"
    );
    Ok(())
});

ktest!(memory, memcpy_copies_every_length_and_alignment, |_t| {
    // The kernel's memcpy (arch/aarch64/memcpy.S) takes a different path per alignment case
    // and per remainder: every length up to 160 bytes (and a few pages' worth) from every
    // source and destination offset in a word, with the bytes around the copy untouched.
    const PAD: usize = 16;
    const MAX: usize = 3 * 4096 + 13;
    let src: Vec<u8> = (0..MAX + 2 * PAD)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add((i >> 8) as u8 | 1))
        .collect();
    let mut dst = alloc::vec![0u8; MAX + 2 * PAD];
    let lengths = (0..=160).chain([255, 256, 257, 4096, MAX]);
    for n in lengths {
        for s_off in 0..8 {
            for d_off in 0..8 {
                dst.fill(0xa5);
                let (from, to) = (&src[PAD + s_off..][..n], PAD + d_off);
                // SAFETY: `from` and `dst[to..to + n]` are in bounds of two distinct vectors.
                // The copy's length is not a constant, so this calls memcpy.
                unsafe {
                    core::ptr::copy_nonoverlapping(from.as_ptr(), dst.as_mut_ptr().add(to), n)
                };
                kassert!(
                    dst[to..to + n] == *from,
                    "{n} bytes from offset {s_off} to offset {d_off}: wrong data"
                );
                kassert!(
                    dst[..to].iter().chain(&dst[to + n..]).all(|&b| b == 0xa5),
                    "{n} bytes from offset {s_off} to offset {d_off}: wrote outside the copy"
                );
            }
        }
    }
    Ok(())
});
