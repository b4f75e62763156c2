//! The DMA masters a rig drives: QEMU's `edu` on PCIe, or a model DMA engine; what a transfer
//! can tell about faults.

use super::*;

/// A DMA master.
pub enum Device {
    /// QEMU's `edu` on PCIe.
    Edu(Edu),
    /// A model DMA engine and its 4 KiB buffer.
    Model(DmaEngine<'static, 'static>, spin::Mutex<Vec<u8>>),
}

/// What the device knows about a transfer: `edu` cannot tell whether the SMMU faulted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The transfer completed; whether any transaction faulted is unknown (`edu`).
    Done,
    /// The model engine completed without a fault.
    Clean,
    /// The model engine saw faulting transactions (faulting reads delivered zeros).
    Faulted,
}

impl Device {
    pub(super) fn model(engine: DmaEngine<'static, 'static>) -> Self {
        Device::Model(engine, spin::Mutex::new(vec![0; edu::BUFFER_SIZE]))
    }

    /// Finds the board's DMA master: the first `edu` (QEMU virt) or model engine (Pi).
    pub(super) fn board() -> Result<(Self, u32), RigError> {
        Self::board_all()?
            .into_iter()
            .next()
            .ok_or_else(|| RigError::Unavailable("no edu device".into()))
    }

    /// Every DMA master of the board with its StreamID: each `edu` on the bus (QEMU virt,
    /// StreamIDs from the `iommu-map`), or the model's engines (Pi).
    pub(super) fn board_all() -> Result<Vec<(Self, u32)>, RigError> {
        if probe::model().is_some() {
            return probe::MODEL_DMA_SIDS
                .iter()
                .map(|&sid| {
                    let engine = probe::model_dma_engine_at(sid)
                        .ok_or_else(|| fail("no model DMA engine"))?;
                    Ok((Self::model(engine), sid))
                })
                .collect();
        }
        let Some(host) = board::info().pcie.as_ref() else {
            return Err(RigError::Unavailable(
                "no PCIe and no model DMA engine".into(),
            ));
        };
        let mut bus = PcieBus::new(host).map_err(fail)?;
        Edu::probe_all(&mut bus, edu_dma_mask())
            .map_err(fail)?
            .into_iter()
            .map(|edu| {
                let sid = probe::stream_id(edu.bdf()).map_err(fail)?;
                Ok((Device::Edu(edu), sid))
            })
            .collect()
    }

    /// The highest bus address the device can emit (the model engine: any).
    pub fn dma_mask(&self) -> u64 {
        match self {
            Device::Edu(e) => e.dma_mask(),
            Device::Model(..) => u64::MAX,
        }
    }

    /// True if the device can emit every address of `[addr, addr + len)`.
    pub fn reaches(&self, addr: u64, len: usize) -> bool {
        addr.checked_add(len as u64 - 1)
            .is_some_and(|last| last & !self.dma_mask() == 0)
    }

    /// True for QEMU's `edu` (slow: ~100 ms per transfer).
    pub fn is_edu(&self) -> bool {
        matches!(self, Device::Edu(_))
    }

    /// DMA read: `len` bytes at `va` into the device buffer.
    pub fn fetch(&self, va: u64, len: usize) -> Result<Outcome, RigError> {
        trace::record(Kind::DmaBegin, va, len as u64);
        let r = self.fetch_untraced(va, len);
        trace::record(
            Kind::DmaEnd,
            va,
            u64::from(!matches!(r, Ok(Outcome::Done | Outcome::Clean))),
        );
        r
    }

    fn fetch_untraced(&self, va: u64, len: usize) -> Result<Outcome, RigError> {
        match self {
            Device::Edu(e) => e
                .dma(Direction::FromMemory, va, 0, len, EDU_TIMEOUT_US)
                .map(|()| Outcome::Done)
                .map_err(fail),
            Device::Model(engine, buf) => {
                model_outcome(engine.read(VirtAddr(va), &mut buf.lock()[..len]))
            }
        }
    }

    /// DMA write: the first `len` bytes of the device buffer to `va`.
    pub fn store(&self, va: u64, len: usize) -> Result<Outcome, RigError> {
        trace::record(Kind::DmaBegin, va, len as u64 | 1 << 63);
        let r = self.store_untraced(va, len);
        trace::record(
            Kind::DmaEnd,
            va,
            u64::from(!matches!(r, Ok(Outcome::Done | Outcome::Clean))),
        );
        r
    }

    fn store_untraced(&self, va: u64, len: usize) -> Result<Outcome, RigError> {
        match self {
            Device::Edu(e) => e
                .dma(Direction::ToMemory, va, 0, len, EDU_TIMEOUT_US)
                .map(|()| Outcome::Done)
                .map_err(fail),
            Device::Model(engine, buf) => {
                model_outcome(engine.write(VirtAddr(va), &buf.lock()[..len]))
            }
        }
    }

    /// Starts a DMA write and returns (the model engine runs it right here).
    pub fn start_store(&self, va: u64, len: usize) -> Result<(), RigError> {
        match self {
            Device::Edu(e) => e.start_dma(Direction::ToMemory, va, 0, len).map_err(fail),
            Device::Model(..) => self.store(va, len).map(|_| ()),
        }
    }

    /// True while a transfer [`Device::start_store`] started has not finished.
    pub fn is_busy(&self) -> bool {
        match self {
            Device::Edu(e) => e.is_busy(),
            Device::Model(..) => false,
        }
    }

    /// Waits for the transfer [`Device::start_store`] started.
    pub fn wait(&self) -> Result<(), RigError> {
        match self {
            Device::Edu(e) => e.wait_dma(EDU_TIMEOUT_US).map_err(fail),
            Device::Model(..) => Ok(()),
        }
    }
}

fn model_outcome(r: Result<(), DmaError>) -> Result<Outcome, RigError> {
    match r {
        Ok(()) => Ok(Outcome::Clean),
        Err(DmaError::Fault { .. }) => Ok(Outcome::Faulted),
        Err(e) => Err(fail(e)),
    }
}
