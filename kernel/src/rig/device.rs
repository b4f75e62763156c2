//! The DMA masters a rig drives: QEMU's `edu` on PCIe, or a master behind the SMMU model
//! (the Pi's DMA controller moving the bytes, or the CPU copying them); what a transfer can
//! tell about faults.

use super::*;

/// A DMA master.
pub enum Device {
    /// QEMU's `edu` on PCIe.
    Edu(Edu),
    /// A model DMA engine whose bytes the CPU copies, and its 4 KiB buffer.
    Model(DmaEngine<'static, 'static>, spin::Mutex<Vec<u8>>),
    /// A master behind the model whose bytes a DMA controller moves (the Pi's).
    Copier(CopierMaster),
}

/// A [`CopierEngine`] and its buffer: a frame the copier reaches, freed with the master.
pub struct CopierMaster {
    engine: CopierEngine<'static, 'static>,
    buffer: PhysAddr,
}

impl CopierMaster {
    fn new(engine: CopierEngine<'static, 'static>) -> Result<Self, RigError> {
        let reach = engine.copier().reach();
        let buffer = frames()
            .ok_or_else(|| fail("no frames"))?
            .alloc_zeroed_below(reach)
            .map_err(|_| {
                fail(alloc::format!(
                    "no free frame below {reach} for the DMA buffer"
                ))
            })?;
        Ok(Self { engine, buffer })
    }

    /// The buffer's first `len` bytes, checked against its size.
    fn buffer(&self, len: usize) -> Result<PhysAddr, RigError> {
        if len > edu::BUFFER_SIZE {
            return Err(fail(alloc::format!(
                "{len} bytes exceed the {}-byte DMA buffer",
                edu::BUFFER_SIZE
            )));
        }
        Ok(self.buffer)
    }
}

impl Drop for CopierMaster {
    fn drop(&mut self) {
        if let Some(f) = frames() {
            f.free(self.buffer);
        }
    }
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

/// Which engine moves the bytes of the model's first master: `dma.engine=` (`bcm`, the
/// board's DMA controller, by default where there is one; `cpu`, the CPU).
fn use_dma_controller() -> bool {
    bootargs().dma_engine != Some(CopyEngine::Cpu)
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
    /// StreamIDs from the `iommu-map`), or the model's masters (Pi): the first moved by the
    /// board's DMA controller (unless `dma.engine=cpu` or there is none), the second by the
    /// CPU, so two masters with two StreamIDs exist either way.
    pub(super) fn board_all() -> Result<Vec<(Self, u32)>, RigError> {
        if probe::model().is_some() {
            return probe::MODEL_DMA_SIDS
                .iter()
                .enumerate()
                .map(|(i, &sid)| {
                    if i == 0 && use_dma_controller() {
                        if let Some(engine) = probe::copier_engine_at(sid) {
                            return Ok((Device::Copier(CopierMaster::new(engine)?), sid));
                        }
                    }
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

    /// What moves the bytes, for reports.
    pub fn name(&self) -> alloc::string::String {
        match self {
            Device::Edu(_) => "edu".into(),
            Device::Model(..) => "model DMA engine (the CPU copies)".into(),
            Device::Copier(m) => {
                alloc::format!("model DMA engine moved by the {}", m.engine.copier().name())
            }
        }
    }

    /// RAM below this address is all the device reaches (`None`: all of it).
    pub fn reach(&self) -> Option<PhysAddr> {
        match self {
            Device::Copier(m) => Some(m.engine.copier().reach()),
            Device::Edu(_) | Device::Model(..) => None,
        }
    }

    /// Translates (and so caches) `va` through the model without moving data (`None` for a
    /// device behind a real SMMU).
    pub fn touch(
        &self,
        va: VirtAddr,
        access: AccessKind,
    ) -> Option<Result<PhysAddr, TranslationFault>> {
        match self {
            Device::Model(engine, _) => Some(engine.touch(va, access)),
            Device::Copier(m) => Some(m.engine.touch(va, access)),
            Device::Edu(_) => None,
        }
    }

    /// Puts `data` into the buffer of a model master (`false` for `edu`).
    pub(super) fn load_model_buffer(&self, data: &[u8]) -> Result<bool, RigError> {
        match self {
            Device::Model(_, buf) => {
                buf.lock()
                    .get_mut(..data.len())
                    .ok_or_else(|| fail("the data exceeds the device buffer"))?
                    .copy_from_slice(data);
                Ok(true)
            }
            Device::Copier(m) => write(m.buffer(data.len())?, data).map(|()| true),
            Device::Edu(_) => Ok(false),
        }
    }

    /// The first `len` bytes of a model master's buffer (`None` for `edu`).
    pub(super) fn model_buffer(&self, len: usize) -> Result<Option<Vec<u8>>, RigError> {
        match self {
            Device::Model(_, buf) => buf
                .lock()
                .get(..len)
                .map(|b| Some(b.to_vec()))
                .ok_or_else(|| fail("the length exceeds the device buffer")),
            Device::Copier(m) => read(m.buffer(len)?, len).map(Some),
            Device::Edu(_) => Ok(None),
        }
    }

    /// The highest bus address the device can emit (the model engine: any).
    pub fn dma_mask(&self) -> u64 {
        match self {
            Device::Edu(e) => e.dma_mask(),
            Device::Model(..) | Device::Copier(_) => u64::MAX,
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

    /// Bytes per transaction of a transfer that faults, so one event record per this many
    /// bytes: QEMU splits a DMA access whose translation fails into 4-byte accesses (the
    /// largest an unassigned region takes), each translated and recorded on its own; the model
    /// engine issues transactions of the size the probe gave it.
    pub fn transaction_size(&self) -> usize {
        match self {
            Device::Edu(_) => 4,
            Device::Model(engine, _) => engine.transaction_size(),
            Device::Copier(_) => CopierEngine::TRANSACTION,
        }
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
            Device::Copier(m) => model_outcome(m.engine.read(VirtAddr(va), m.buffer(len)?, len)),
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
            Device::Copier(m) => model_outcome(m.engine.write(VirtAddr(va), m.buffer(len)?, len)),
        }
    }

    /// Starts a DMA write and returns (the model engine runs it right here).
    pub fn start_store(&self, va: u64, len: usize) -> Result<(), RigError> {
        match self {
            Device::Edu(e) => e.start_dma(Direction::ToMemory, va, 0, len).map_err(fail),
            Device::Model(..) | Device::Copier(_) => self.store(va, len).map(|_| ()),
        }
    }

    /// True while a transfer [`Device::start_store`] started has not finished.
    pub fn is_busy(&self) -> bool {
        match self {
            Device::Edu(e) => e.is_busy(),
            Device::Model(..) | Device::Copier(_) => false,
        }
    }

    /// Waits for the transfer [`Device::start_store`] started.
    pub fn wait(&self) -> Result<(), RigError> {
        match self {
            Device::Edu(e) => e.wait_dma(EDU_TIMEOUT_US).map_err(fail),
            Device::Model(..) | Device::Copier(_) => Ok(()),
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
