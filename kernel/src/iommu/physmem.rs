//! Byte and word access to physical memory through [`PhysMemory`], without `unsafe`.
//!
//! Everything goes through the 64-bit atomic words that [`PhysMemory::word`] hands out: whole
//! words are loaded/stored, partial words are updated with a compare-and-swap loop so that
//! concurrent writers of the neighbouring bytes are not lost. This is how the SMMU model's DMA
//! engine moves data and how the driver writes its tables and queues.

use crate::sync::atomic::Ordering;
use core::fmt;

use crate::mm::phys::PhysMemory;
use crate::mm::PhysAddr;

/// A physical address that the [`PhysMemory`] cannot reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable(pub PhysAddr);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "physical address {} is not backed by reachable memory",
            self.0
        )
    }
}

fn word_at(mem: &dyn PhysMemory, pa: u64) -> Result<&core::sync::atomic::AtomicU64, Unreachable> {
    mem.word(PhysAddr(pa)).ok_or(Unreachable(PhysAddr(pa)))
}

/// Loads the 64-bit word at `pa` (8-byte aligned).
pub fn load(mem: &dyn PhysMemory, pa: PhysAddr, order: Ordering) -> Result<u64, Unreachable> {
    Ok(word_at(mem, pa.as_u64())?.load(order))
}

/// Stores the 64-bit word at `pa` (8-byte aligned).
pub fn store(
    mem: &dyn PhysMemory,
    pa: PhysAddr,
    value: u64,
    order: Ordering,
) -> Result<(), Unreachable> {
    word_at(mem, pa.as_u64())?.store(value, order);
    Ok(())
}

/// Loads `N` consecutive words starting at `pa`.
pub fn load_words<const N: usize>(
    mem: &dyn PhysMemory,
    pa: PhysAddr,
) -> Result<[u64; N], Unreachable> {
    let mut out = [0; N];
    for (i, w) in out.iter_mut().enumerate() {
        *w = load(mem, PhysAddr(pa.as_u64() + 8 * i as u64), Ordering::Acquire)?;
    }
    Ok(out)
}

/// Splits `[pa, pa + len)` into (word address, first byte in word, byte count) pieces.
fn pieces(pa: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
    let end = pa + len as u64;
    let mut at = pa;
    core::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let word = at & !7;
        let first = (at - word) as usize;
        let n = ((word + 8).min(end) - at) as usize;
        at += n as u64;
        Some((word, first, n))
    })
}

/// Copies `buf.len()` bytes from physical memory at `pa` into `buf`.
pub fn read_bytes(mem: &dyn PhysMemory, pa: PhysAddr, buf: &mut [u8]) -> Result<(), Unreachable> {
    let mut done = 0;
    for (word, first, n) in pieces(pa.as_u64(), buf.len()) {
        let bytes = word_at(mem, word)?.load(Ordering::Acquire).to_le_bytes();
        buf[done..done + n].copy_from_slice(&bytes[first..first + n]);
        done += n;
    }
    Ok(())
}

/// Copies `data` into physical memory at `pa`.
///
/// Reachability of the whole range is checked first, so an unreachable range writes nothing.
pub fn write_bytes(mem: &dyn PhysMemory, pa: PhysAddr, data: &[u8]) -> Result<(), Unreachable> {
    for (word, _, _) in pieces(pa.as_u64(), data.len()) {
        word_at(mem, word)?;
    }
    let mut done = 0;
    for (word, first, n) in pieces(pa.as_u64(), data.len()) {
        let cell = word_at(mem, word)?;
        let src = &data[done..done + n];
        if n == 8 {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(src);
            cell.store(u64::from_le_bytes(bytes), Ordering::Release);
        } else {
            let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                let mut bytes = old.to_le_bytes();
                bytes[first..first + n].copy_from_slice(src);
                Some(u64::from_le_bytes(bytes))
            });
        }
        done += n;
    }
    Ok(())
}

/// Fills `[pa, pa + len)` with `byte`.
pub fn fill(mem: &dyn PhysMemory, pa: PhysAddr, len: usize, byte: u8) -> Result<(), Unreachable> {
    let chunk = [byte; 64];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(chunk.len());
        write_bytes(mem, PhysAddr(pa.as_u64() + at as u64), &chunk[..n])?;
        at += n;
    }
    Ok(())
}
