//! One channel of the controller, driven by polling: the registers, the control-block frame,
//! the cache maintenance around a transfer, reset and error recovery.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use alloc::string::String;

use super::chain::{self, build_chain, cs, debug, reg, BusWindow, ChannelKind, Progress};
use crate::arch::aarch64::io::IoWindow;
use crate::arch::aarch64::mmu::KernelMapError;
use crate::arch::aarch64::{cpu, timer};
use crate::board::dt::DmaController;
use crate::mm::dma::{Chunk, CopyError, PhysCopier, Source};
use crate::mm::phys::{FrameAllocator, PhysMemory};
use crate::mm::ram::{LinearMap, RamFrames};
use crate::mm::{PhysAddr, PAGE_SIZE};
use crate::sync::SpinLock;

/// How long a chain may run: a 4 KiB copy takes microseconds, QEMU runs it during the CS write.
const TIMEOUT_US: u64 = 100_000;
/// How long a reset may take to clear.
const RESET_TIMEOUT_US: u64 = 10_000;
/// Control blocks that fit the driver's one frame of them.
const MAX_BLOCKS: usize = PAGE_SIZE / chain::CB_SIZE;
/// Channels 0..14 share the register block; 15 lives elsewhere and the Pi 4 tree leaves it out.
const BLOCK_CHANNELS: u32 = 15;

/// Why the controller could not be brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeError {
    /// `brcm,dma-channel-mask` leaves no idle channel inside the register window.
    NoChannel { mask: u32 },
    /// The bus window (`dma-ranges`) reaches no RAM from address 0.
    NoBusWindow,
    /// The registers could not be mapped.
    Map(KernelMapError),
    /// No frame for the control blocks inside the bus window.
    NoMemory,
    /// The channel did not come out of reset.
    Reset { cs: u32 },
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoChannel { mask } => write!(f, "no idle channel in mask {mask:#x}"),
            Self::NoBusWindow => f.write_str("dma-ranges reach no RAM from address 0"),
            Self::Map(e) => write!(f, "cannot map the registers: {e}"),
            Self::NoMemory => f.write_str("no frame for control blocks inside the bus window"),
            Self::Reset { cs } => write!(f, "the channel stays in reset (CS {cs:#010x})"),
        }
    }
}

/// A channel of the BCM2711 DMA controller, moving bytes between physical addresses.
pub struct Bcm2835Dma {
    regs: IoWindow,
    /// Offset of the channel's registers in `regs`.
    base: usize,
    channel: u32,
    kind: ChannelKind,
    window: BusWindow,
    /// Frames below this address are inside the bus window.
    reach: PhysAddr,
    /// The frame holding the control blocks, and its bus address.
    blocks: PhysAddr,
    blocks_bus: u32,
    /// One chain at a time on the channel.
    lock: SpinLock<()>,
    /// **Debug only, breaks coherence**: transfers skip the cache maintenance of their data
    /// (the control blocks are still cleaned): how the cache test shows, on a board, that the
    /// maintenance is needed.
    skip_maintenance: AtomicBool,
    /// The channel would not stop after a failed chain: it may still be moving bytes, so it is
    /// never used again (every later request is refused).
    wedged: AtomicBool,
}

impl Bcm2835Dma {
    /// Maps the controller the device tree describes, picks the lowest idle channel the
    /// firmware leaves to the ARM side (a full one if any: LITE channels move at most 64 KiB
    /// per control block), resets it and sets up its control-block frame.
    pub fn probe(desc: &DmaController, frames: &RamFrames) -> Result<Self, ProbeError> {
        let window = BusWindow::new(&desc.dma_ranges);
        let reach = window.reach_from_zero().ok_or(ProbeError::NoBusWindow)?;
        let regs = IoWindow::map(desc.regs.base, desc.regs.size).map_err(ProbeError::Map)?;
        let (channel, kind) = pick_channel(&regs, desc.channel_mask, desc.regs.size).ok_or(
            ProbeError::NoChannel {
                mask: desc.channel_mask,
            },
        )?;
        let blocks = frames
            .alloc_zeroed_below(reach)
            .map_err(|_| ProbeError::NoMemory)?;
        let Ok(blocks_bus) = window.bus_address(blocks, PAGE_SIZE) else {
            frames.free(blocks);
            return Err(ProbeError::NoMemory);
        };
        let dma = Self {
            regs,
            base: (u64::from(channel) * chain::CHANNEL_STRIDE) as usize,
            channel,
            kind,
            window,
            reach,
            blocks,
            blocks_bus,
            lock: SpinLock::new(()),
            skip_maintenance: AtomicBool::new(false),
            wedged: AtomicBool::new(false),
        };
        dma.reset().map_err(|cs| ProbeError::Reset { cs })?;
        Ok(dma)
    }

    /// The channel in use.
    pub fn channel(&self) -> u32 {
        self.channel
    }

    /// Full or LITE (from DEBUG.LITE).
    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// **Debug only**: transfers skip (or, with `false`, do again) their cache maintenance.
    pub fn set_skip_cache_maintenance(&self, skip: bool) {
        self.skip_maintenance.store(skip, Ordering::SeqCst);
    }

    /// Runs `chunks` as one chain of control blocks and waits for it; see [`PhysCopier::copy`].
    fn run(&self, chunks: &[Chunk]) -> Result<(), CopyError> {
        let _one_at_a_time = self.lock.lock();
        if self.wedged.load(Ordering::Acquire) {
            return Err(CopyError::Wedged {
                cs: self.read(reg::CS),
            });
        }
        chain::ready(
            self.read(reg::CS),
            self.read(reg::CONBLK_AD),
            self.read(reg::DEBUG),
        )?;
        let blocks = build_chain(chunks, self.kind, &self.window, self.blocks_bus, MAX_BLOCKS)?;
        if blocks.is_empty() {
            return Ok(());
        }
        for c in chunks {
            ram_va(c.dst, c.len)?;
            if let Source::Phys(pa) = c.src {
                ram_va(pa, c.len)?;
            }
        }
        let words = LinearMap
            .words(self.blocks, blocks.len() * 4)
            .ok_or(CopyError::NoMemory)?;
        for (slot, block) in words.chunks_exact(4).zip(&blocks) {
            for (w, v) in slot.iter().zip(block.words()) {
                w.store(v, Ordering::Relaxed);
            }
        }
        // The engine fetches the control blocks from memory, knob or not.
        cpu::clean_dcache_to_poc(linear(self.blocks), blocks.len() * chain::CB_SIZE);
        let maintain = !self.skip_maintenance.load(Ordering::SeqCst);
        if maintain {
            self.before_engine(chunks);
        }
        self.write(reg::CONBLK_AD, self.blocks_bus);
        // END is write-1-to-clear: drop the previous chain's before this one sets it again.
        self.write(
            reg::CS,
            cs::ACTIVE | cs::END | cs::WAIT_FOR_OUTSTANDING_WRITES,
        );
        let outcome = self.wait();
        if outcome.is_err() {
            if let Err(cs) = self.reset() {
                // The engine may still write: take the channel out of use for good and say so,
                // rather than let a later chain (or a freed frame) meet its bytes.
                self.wedged.store(true, Ordering::Release);
                return Err(CopyError::Wedged { cs });
            }
        }
        self.write(reg::CS, cs::END);
        if maintain {
            self.after_engine(chunks);
        }
        outcome
    }

    /// Cache maintenance before the engine starts. The BCM2711's DMA controller sits on the
    /// VideoCore's bus and does not snoop the Cortex-A72 caches: it reads and writes memory
    /// only. So what it reads (the sources, like the control blocks) is cleaned to the point
    /// of coherency, and what it writes is cleaned and invalidated: a dirty line over the
    /// destination would otherwise be written back over the engine's bytes when evicted.
    fn before_engine(&self, chunks: &[Chunk]) {
        for c in chunks {
            if let Source::Phys(pa) = c.src {
                cpu::clean_dcache_to_poc(linear(pa), c.len);
            }
            cpu::clean_invalidate_dcache_to_poc(linear(c.dst), c.len);
        }
    }

    /// Cache maintenance after the engine finished: the CPU may have refilled destination lines
    /// (speculatively) while the engine wrote; invalidating them makes its next loads read the
    /// engine's bytes. Granule: the smallest data cache line (CTR_EL0.DminLine).
    fn after_engine(&self, chunks: &[Chunk]) {
        for c in chunks {
            cpu::invalidate_dcache_to_poc(linear(c.dst), c.len);
        }
    }

    /// Polls until the chain is done, failed, or out of time.
    fn wait(&self) -> Result<(), CopyError> {
        let deadline = timer::Deadline::after_us(TIMEOUT_US);
        loop {
            let cs_val = self.read(reg::CS);
            match chain::progress(cs_val, self.read(reg::CONBLK_AD), self.read(reg::DEBUG)) {
                Progress::Done => return Ok(()),
                Progress::Failed(e) => return Err(e),
                Progress::Running if deadline.expired() => {
                    return Err(CopyError::Timeout { cs: cs_val })
                }
                Progress::Running => core::hint::spin_loop(),
            }
        }
    }

    /// Stops the channel and resets it (pause, then RESET, as Linux `bcm2835_dma_abort` does),
    /// and clears the DEBUG error flags. Returns CS if the reset does not clear in time.
    fn reset(&self) -> Result<(), u32> {
        self.write(reg::CS, 0);
        let deadline = timer::Deadline::after_us(RESET_TIMEOUT_US);
        // A reset drops the AXI writes still in flight on the floor only after they land
        // somewhere: wait for the paused channel's outstanding writes first (CS bit 6, what
        // Linux's bcm2835_dma_abort waits on), so none lands after the caller moved on.
        loop {
            let cs_val = self.read(reg::CS);
            if cs_val & cs::WAITING_FOR_OUTSTANDING_WRITES == 0 {
                break;
            }
            if deadline.expired() {
                return Err(cs_val);
            }
            core::hint::spin_loop();
        }
        self.write(reg::CS, cs::RESET);
        loop {
            let cs_val = self.read(reg::CS);
            if cs_val & (cs::RESET | cs::ACTIVE) == 0 {
                break;
            }
            if deadline.expired() {
                return Err(cs_val);
            }
            core::hint::spin_loop();
        }
        // The flags are write-1-to-clear: write back the ones that are up (QEMU stores DEBUG
        // as written, so writing 1s there would raise them).
        let flags = self.read(reg::DEBUG) & debug::ERRORS;
        if flags != 0 {
            self.write(reg::DEBUG, flags);
        }
        Ok(())
    }

    fn read(&self, off: usize) -> u32 {
        self.regs.read32(self.base + off)
    }

    fn write(&self, off: usize, value: u32) {
        self.regs.write32(self.base + off, value)
    }
}

impl PhysCopier for Bcm2835Dma {
    fn copy(&self, chunks: &[Chunk]) -> Result<(), CopyError> {
        self.run(chunks)
    }

    fn name(&self) -> String {
        let kind = match self.kind {
            ChannelKind::Full => "",
            ChannelKind::Lite => " (LITE)",
        };
        alloc::format!("BCM2711 DMA controller, channel {}{kind}", self.channel)
    }

    fn reach(&self) -> PhysAddr {
        self.reach
    }
}

/// The lowest channel of `mask` inside a `size`-byte register window that is idle, preferring
/// full channels to LITE ones.
fn pick_channel(regs: &IoWindow, mask: u32, size: u64) -> Option<(u32, ChannelKind)> {
    let idle = (0..BLOCK_CHANNELS)
        .filter(|&n| mask & (1 << n) != 0)
        .filter(|&n| (u64::from(n) * chain::CHANNEL_STRIDE + chain::CHANNEL_REGS) <= size)
        .filter_map(|n| {
            let at = (u64::from(n) * chain::CHANNEL_STRIDE) as usize;
            let (cs_val, conblk) = (regs.read32(at + reg::CS), regs.read32(at + reg::CONBLK_AD));
            let busy = cs_val & cs::ACTIVE != 0 || conblk != 0;
            (!busy).then(|| (n, ChannelKind::from_debug(regs.read32(at + reg::DEBUG))))
        });
    let mut lite = None;
    for (n, kind) in idle {
        match kind {
            ChannelKind::Full => return Some((n, kind)),
            ChannelKind::Lite => {
                lite.get_or_insert((n, kind));
            }
        }
    }
    lite
}

/// The linear-map address of RAM at `pa`.
fn linear(pa: PhysAddr) -> u64 {
    crate::mm::layout::phys_to_virt(pa.as_u64())
}

/// Checks that `[pa, pa + len)` is RAM (cache maintenance goes through its linear map).
fn ram_va(pa: PhysAddr, len: usize) -> Result<u64, CopyError> {
    LinearMap
        .bytes(pa, len)
        .map(|p| p as u64)
        .ok_or(CopyError::Unreachable { pa, len })
}

static DMA: spin::Once<Result<Bcm2835Dma, ProbeError>> = spin::Once::new();

/// Brings up the controller the device tree describes (once, at boot) and reports what it
/// found; `None` if it cannot be used (then nothing moves bytes with it).
pub fn init(desc: &DmaController, frames: &RamFrames) -> Option<&'static Bcm2835Dma> {
    match DMA.call_once(|| Bcm2835Dma::probe(desc, frames)) {
        Ok(dma) => {
            log::info!(
                "dma: {} at {:#x}; bus window reaches RAM below {}",
                dma.name(),
                desc.regs.base,
                dma.reach
            );
            Some(dma)
        }
        Err(e) => {
            log::warn!(
                "dma: the controller at {:#x} is unusable: {e}",
                desc.regs.base
            );
            None
        }
    }
}

/// The controller [`init`] brought up.
pub fn get() -> Option<&'static Bcm2835Dma> {
    DMA.get().and_then(|r| r.as_ref().ok())
}
