//! Physical memory as the rig's tests see it: frames filled, written and read back through the
//! linear map.

use super::*;

/// Fills a frame with `byte`.
pub fn fill(frame: PhysAddr, byte: u8) -> Result<(), RigError> {
    physmem::fill(&LINEAR, frame, PAGE_SIZE, byte).map_err(fail)
}

/// Writes `data` at physical `pa`.
pub fn write(pa: PhysAddr, data: &[u8]) -> Result<(), RigError> {
    physmem::write_bytes(&LINEAR, pa, data).map_err(fail)
}

/// Reads `len` bytes at physical `pa`.
pub fn read(pa: PhysAddr, len: usize) -> Result<Vec<u8>, RigError> {
    let mut v = vec![0; len];
    physmem::read_bytes(&LINEAR, pa, &mut v).map_err(fail)?;
    Ok(v)
}
