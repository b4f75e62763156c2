//! The portable half of the driver: register and control-block encodings, the bus window, the
//! chain of control blocks a request becomes, and what the status registers say. No hardware
//! access here, so the host tests pin it.
//!
//! Encodings: "BCM2711 ARM Peripherals" (2020-10-16), 4.2.1.1 "Control Block Data Structure"
//! (8 words, 256-bit aligned: TI, SOURCE_AD, DEST_AD, TXFR_LEN, STRIDE, NEXTCONBK, 2 reserved)
//! and 4.2.1.2 "Register map" (CS, CONBLK_AD, DEBUG and the read-only copies of the control
//! block at 0x08..0x1c); 4.3 "DMA LITE Engines" (16-bit XLENGTH, no 2D mode). QEMU's model
//! (`hw/dma/bcm2835_dma.c`) implements the same layout, moves 32-bit words only, honours
//! S_INC/D_INC/S_IGNORE/D_IGNORE and 2D mode, sets CS.END after every control block and never
//! raises CS.ERROR or DEBUG error bits.

#![forbid(unsafe_code)]

use alloc::vec::Vec;

use crate::board::dt::DmaRange;
use crate::mm::dma::{Chunk, CopyError, Source};
use crate::mm::PhysAddr;

/// Channel registers, from the channel's base (4.2.1.2).
pub mod reg {
    pub const CS: usize = 0x00;
    pub const CONBLK_AD: usize = 0x04;
    pub const TXFR_LEN: usize = 0x14;
    pub const DEBUG: usize = 0x20;
}

/// Distance between channels 0..14 in the register block (4.2: DMA0 at 0x7e007000, DMA1 at
/// 0x7e007100, ...).
pub const CHANNEL_STRIDE: u64 = 0x100;
/// Bytes of one channel's registers the driver touches (CS to DEBUG).
pub const CHANNEL_REGS: u64 = 0x24;

/// CS bits (4.2.1.2, "CS Register").
pub mod cs {
    pub const ACTIVE: u32 = 1 << 0;
    /// Set when a control block's transfer completes; write 1 to clear.
    pub const END: u32 = 1 << 1;
    /// Read-only: the engine waits for the acknowledgements of writes it made.
    pub const WAITING_FOR_OUTSTANDING_WRITES: u32 = 1 << 6;
    pub const ERROR: u32 = 1 << 8;
    /// Signal END only once every AXI write of the block has been acknowledged.
    pub const WAIT_FOR_OUTSTANDING_WRITES: u32 = 1 << 28;
    pub const ABORT: u32 = 1 << 30;
    /// Write-only, self-clearing.
    pub const RESET: u32 = 1 << 31;
}

/// Transfer information bits (4.2.1.2, "TI Register").
pub mod ti {
    /// Wait for each AXI write's response before the next.
    pub const WAIT_RESP: u32 = 1 << 3;
    pub const D_INC: u32 = 1 << 4;
    pub const S_INC: u32 = 1 << 8;
    /// Do not read: the engine writes zeros.
    pub const S_IGNORE: u32 = 1 << 11;
    pub const NO_WIDE_BURSTS: u32 = 1 << 26;
}

/// DEBUG bits (4.2.1.2, "DEBUG Register").
pub mod debug {
    pub const READ_LAST_NOT_SET_ERROR: u32 = 1 << 0;
    pub const FIFO_ERROR: u32 = 1 << 1;
    pub const READ_ERROR: u32 = 1 << 2;
    /// The error flags; each is cleared by writing 1.
    pub const ERRORS: u32 = READ_LAST_NOT_SET_ERROR | FIFO_ERROR | READ_ERROR;
    /// Set on a DMA LITE channel.
    pub const LITE: u32 = 1 << 28;
}

/// Bytes in a control block, and the alignment it must start at (4.2.1.1).
pub const CB_SIZE: usize = 32;

/// The engine moves 32-bit words: addresses and lengths are multiples of this. (Hardware takes
/// byte lengths too, but QEMU's model copies whole words and its length counter would wrap on
/// a remainder: one rule for both.)
pub const UNIT: usize = 4;

/// What a channel can do (4.3: a LITE channel's XLENGTH has 16 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Full,
    Lite,
}

impl ChannelKind {
    /// The kind DEBUG reports.
    pub fn from_debug(debug: u32) -> Self {
        if debug & debug::LITE != 0 {
            Self::Lite
        } else {
            Self::Full
        }
    }

    /// The longest transfer one control block describes, in whole words: XLENGTH is 30 bits on
    /// a full channel, 16 on a LITE one.
    pub fn max_len(self) -> usize {
        match self {
            Self::Full => (1 << 30) - UNIT,
            Self::Lite => (1 << 16) - UNIT,
        }
    }
}

/// One control block as it sits in memory (4.2.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControlBlock {
    pub ti: u32,
    pub source_ad: u32,
    pub dest_ad: u32,
    pub txfr_len: u32,
    pub stride: u32,
    pub nextconbk: u32,
}

impl ControlBlock {
    /// The block as four little-endian 64-bit words (the two reserved words are zero).
    pub fn words(&self) -> [u64; 4] {
        let pair = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
        [
            pair(self.ti, self.source_ad),
            pair(self.dest_ad, self.txfr_len),
            pair(self.stride, self.nextconbk),
            0,
        ]
    }
}

/// How the controller's bus addresses reach RAM: its bus's `dma-ranges`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusWindow {
    ranges: Vec<DmaRange>,
}

impl BusWindow {
    /// The window the device tree describes; ranges whose bus side does not fit the
    /// controller's 32-bit addresses are dropped, and ranges that continue each other on both
    /// sides are joined (so a run across their boundary has one bus address).
    pub fn new(ranges: &[DmaRange]) -> Self {
        let mut fitting: Vec<DmaRange> = ranges
            .iter()
            .filter(|r| r.size > 0)
            .filter(|r| r.bus.checked_add(r.size).is_some_and(|end| end <= 1 << 32))
            .copied()
            .collect();
        fitting.sort_by_key(|r| r.cpu);
        let mut joined: Vec<DmaRange> = Vec::with_capacity(fitting.len());
        for r in fitting {
            match joined.last_mut() {
                Some(last)
                    if last.cpu.checked_add(last.size) == Some(r.cpu)
                        && last.bus + last.size == r.bus =>
                {
                    last.size += r.size
                }
                _ => joined.push(r),
            }
        }
        Self { ranges: joined }
    }

    /// The bus address of `[pa, pa + len)`, which must lie in one range (even when empty: the
    /// end of a range has no bus address inside it).
    pub fn bus_address(&self, pa: PhysAddr, len: usize) -> Result<u32, CopyError> {
        let (start, unreachable) = (pa.as_u64(), CopyError::Unreachable { pa, len });
        let end = start.checked_add(len as u64).ok_or(unreachable)?;
        self.ranges
            .iter()
            .find(|r| {
                let r_end = r.cpu.saturating_add(r.size);
                start >= r.cpu && start < r_end && end <= r_end
            })
            .map(|r| (r.bus + (start - r.cpu)) as u32)
            .ok_or(unreachable)
    }

    /// The end of the range that starts at CPU address 0, for allocating the controller's
    /// memory: every run below it has a bus address (`None` if no range starts at 0). A range
    /// after it whose bus side does not continue it is left out: a run across the two would
    /// have no one bus address.
    pub fn reach_from_zero(&self) -> Option<PhysAddr> {
        self.ranges
            .iter()
            .find(|r| r.cpu == 0)
            .map(|r| PhysAddr(r.size))
    }
}

/// The control blocks that carry out `chunks`, linked in order, for blocks that will sit at
/// bus address `first_cb` onwards (at most `max_blocks` of them). Empty chunks are skipped.
/// Every chunk is checked (units, length, reach) before anything is built.
pub fn build_chain(
    chunks: &[Chunk],
    kind: ChannelKind,
    window: &BusWindow,
    first_cb: u32,
    max_blocks: usize,
) -> Result<Vec<ControlBlock>, CopyError> {
    let chunks: Vec<&Chunk> = chunks.iter().filter(|c| c.len > 0).collect();
    if chunks.len() > max_blocks {
        return Err(CopyError::TooManyChunks {
            count: chunks.len(),
            max: max_blocks,
        });
    }
    let mut blocks = Vec::with_capacity(chunks.len());
    for (i, c) in chunks.iter().enumerate() {
        let mut block = block_for(c, kind, window)?;
        if i + 1 < chunks.len() {
            block.nextconbk = first_cb + ((i + 1) * CB_SIZE) as u32;
        }
        blocks.push(block);
    }
    Ok(blocks)
}

/// One chunk's control block, unlinked.
fn block_for(c: &Chunk, kind: ChannelKind, window: &BusWindow) -> Result<ControlBlock, CopyError> {
    let unaligned = |addr: u64| CopyError::Unaligned {
        addr,
        len: c.len,
        align: UNIT,
    };
    if c.len % UNIT != 0 || c.dst.as_u64() % UNIT as u64 != 0 {
        return Err(unaligned(c.dst.as_u64()));
    }
    if c.len > kind.max_len() {
        return Err(CopyError::TooLong {
            len: c.len,
            max: kind.max_len(),
        });
    }
    let common = ti::WAIT_RESP | ti::NO_WIDE_BURSTS | ti::D_INC;
    let (ti, source_ad) = match c.src {
        Source::Phys(pa) if pa.as_u64() % UNIT as u64 != 0 => return Err(unaligned(pa.as_u64())),
        Source::Phys(pa) => (common | ti::S_INC, window.bus_address(pa, c.len)?),
        Source::Zeros => (common | ti::S_IGNORE, 0),
    };
    Ok(ControlBlock {
        ti,
        source_ad,
        dest_ad: window.bus_address(c.dst, c.len)?,
        txfr_len: c.len as u32,
        stride: 0,
        nextconbk: 0,
    })
}

/// What the channel's registers say about the transfer that was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Still moving.
    Running,
    /// The last control block completed.
    Done,
    /// The channel stopped on an error.
    Failed(CopyError),
}

/// Reads CS, CONBLK_AD and DEBUG after a start (which cleared END): the chain is done once the
/// channel is idle with no control block left (the last NEXTCONBK was 0), END set and no write
/// outstanding; failed once CS.ERROR or a DEBUG error flag is up. With WAIT_FOR_OUTSTANDING_WRITES
/// the engine clears ACTIVE before its last writes are acknowledged and sets END only after
/// them; END may also be left from an earlier block, hence the WAITING flag too.
pub fn progress(cs_val: u32, conblk: u32, debug_val: u32) -> Progress {
    let settled = cs::ACTIVE | cs::END | cs::WAITING_FOR_OUTSTANDING_WRITES;
    if cs_val & cs::ERROR != 0 || debug_val & debug::ERRORS != 0 {
        Progress::Failed(CopyError::Transfer {
            cs: cs_val,
            debug: debug_val,
        })
    } else if cs_val & settled == cs::END && conblk == 0 {
        Progress::Done
    } else {
        Progress::Running
    }
}

/// Whether an idle channel may start a new chain: not running one, not in error.
pub fn ready(cs_val: u32, conblk: u32, debug_val: u32) -> Result<(), CopyError> {
    if cs_val & cs::ERROR != 0 || debug_val & debug::ERRORS != 0 {
        return Err(CopyError::ChannelInError {
            cs: cs_val,
            debug: debug_val,
        });
    }
    if cs_val & cs::ACTIVE != 0 || conblk != 0 {
        return Err(CopyError::Busy { cs: cs_val, conblk });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Pi 4's `soc` bus: bus 0xc0000000 reaches the first GiB of RAM.
    fn pi4_window() -> BusWindow {
        BusWindow::new(&[DmaRange {
            bus: 0xc000_0000,
            cpu: 0,
            size: 0x4000_0000,
        }])
    }

    fn copy(src: u64, dst: u64, len: usize) -> Chunk {
        Chunk {
            src: Source::Phys(PhysAddr(src)),
            dst: PhysAddr(dst),
            len,
        }
    }

    #[test]
    fn bus_addresses_come_from_dma_ranges() {
        let w = pi4_window();
        assert_eq!(w.bus_address(PhysAddr(0x1000), 16), Ok(0xc000_1000));
        assert_eq!(w.bus_address(PhysAddr(0x3fff_fff0), 16), Ok(0xffff_fff0));
        let beyond = CopyError::Unreachable {
            pa: PhysAddr(0x3fff_fff0),
            len: 32,
        };
        assert_eq!(w.bus_address(PhysAddr(0x3fff_fff0), 32), Err(beyond));
        assert!(w.bus_address(PhysAddr(0x4000_0000), 4).is_err());
        assert!(w.bus_address(PhysAddr(u64::MAX - 3), 8).is_err());
        assert_eq!(w.reach_from_zero(), Some(PhysAddr(0x4000_0000)));
        // A bus side past 32 bits is no use to the controller.
        let wide = BusWindow::new(&[DmaRange {
            bus: 0xffff_f000,
            cpu: 0,
            size: 0x2000,
        }]);
        assert!(wide.bus_address(PhysAddr(0), 4).is_err());
        assert_eq!(wide.reach_from_zero(), None);
    }

    /// A run of zero bytes at the window's end is not inside it: its bus address would be one
    /// past the window (here 1 << 32, which wraps to bus address 0).
    #[test]
    fn nothing_at_the_window_end_gets_a_bus_address() {
        let w = pi4_window();
        let end = PhysAddr(0x4000_0000);
        assert_eq!(
            w.bus_address(end, 0),
            Err(CopyError::Unreachable { pa: end, len: 0 })
        );
        assert_eq!(w.bus_address(PhysAddr(0x3fff_fffc), 0), Ok(0xffff_fffc));
    }

    /// `reach_from_zero` promises that memory below it is reachable (the frames for the engine
    /// come from there), so any run below it has a bus address: two ranges whose CPU sides
    /// touch but whose bus sides do not are two windows, and only the first counts.
    #[test]
    fn every_run_below_the_reach_has_a_bus_address() {
        let split = |second_bus| {
            BusWindow::new(&[
                DmaRange {
                    bus: second_bus,
                    cpu: 0x2000_0000,
                    size: 0x2000_0000,
                },
                DmaRange {
                    bus: 0xc000_0000,
                    cpu: 0,
                    size: 0x2000_0000,
                },
            ])
        };
        let straddle = (PhysAddr(0x1fff_fff0), 32);
        // Bus sides apart: the straddling run has no one bus address, so it lies past the reach.
        let apart = split(0x4000_0000);
        let reach = apart.reach_from_zero().unwrap();
        assert!(apart.bus_address(straddle.0, straddle.1).is_err());
        assert!(
            straddle.0.as_u64() + straddle.1 as u64 > reach.as_u64(),
            "{reach} covers a run the engine cannot address"
        );
        assert_eq!(apart.bus_address(PhysAddr(0x2000_0000), 4), Ok(0x4000_0000));
        // Bus sides continuing each other: one window, the run is reachable.
        let joined = split(0xe000_0000);
        assert_eq!(joined.reach_from_zero(), Some(PhysAddr(0x4000_0000)));
        assert_eq!(joined.bus_address(straddle.0, straddle.1), Ok(0xdfff_fff0));
    }

    #[test]
    fn a_chain_links_one_block_per_chunk() {
        let w = pi4_window();
        let chunks = [
            copy(0x10_0c00, 0x20_0000, 0x400),
            Chunk {
                src: Source::Zeros,
                dst: PhysAddr(0x20_0400),
                len: 0x10,
            },
            copy(0x10_0000, 0x20_0410, 0),
            copy(0x11_0000, 0x20_0410, 0x3f0),
        ];
        let chain = build_chain(&chunks, ChannelKind::Full, &w, 0xc000_8000, 8).unwrap();
        assert_eq!(chain.len(), 3, "the empty chunk is skipped");
        assert_eq!(chain[0].source_ad, 0xc010_0c00);
        assert_eq!(chain[0].dest_ad, 0xc020_0000);
        assert_eq!(chain[0].txfr_len, 0x400);
        assert_eq!(chain[0].nextconbk, 0xc000_8020);
        assert_ne!(chain[0].ti & ti::S_INC, 0);
        assert_eq!(
            chain[1].ti & (ti::S_IGNORE | ti::S_INC),
            ti::S_IGNORE,
            "zeros: no read"
        );
        assert_eq!(chain[1].nextconbk, 0xc000_8040);
        assert_eq!(chain[2].nextconbk, 0, "the last block ends the chain");
        for b in &chain {
            assert_ne!(b.ti & ti::D_INC, 0);
            assert_ne!(b.ti & ti::WAIT_RESP, 0);
        }
        let words = chain[0].words();
        assert_eq!(words[0], 0xc010_0c00 << 32 | u64::from(chain[0].ti));
        assert_eq!(words[3], 0, "reserved words");
    }

    #[test]
    fn bad_requests_are_refused_before_anything_is_built() {
        let w = pi4_window();
        let check = |c: Chunk, kind| build_chain(&[c], kind, &w, 0xc000_0000, 4).unwrap_err();
        assert_eq!(
            check(copy(0x1002, 0x2000, 8), ChannelKind::Full),
            CopyError::Unaligned {
                addr: 0x1002,
                len: 8,
                align: 4
            }
        );
        assert!(matches!(
            check(copy(0x1000, 0x2000, 6), ChannelKind::Full),
            CopyError::Unaligned { len: 6, .. }
        ));
        assert_eq!(
            check(copy(0x10_0000, 0x20_0000, 0x1_0000), ChannelKind::Lite),
            CopyError::TooLong {
                len: 0x1_0000,
                max: 0xfffc
            }
        );
        assert!(build_chain(
            &[copy(0x10_0000, 0x20_0000, 0x1_0000)],
            ChannelKind::Full,
            &w,
            0,
            1
        )
        .is_ok());
        assert!(matches!(
            check(copy(0x4000_0000, 0x2000, 8), ChannelKind::Full),
            CopyError::Unreachable { .. }
        ));
        let many = [copy(0x1000, 0x2000, 4); 5];
        assert_eq!(
            build_chain(&many, ChannelKind::Full, &w, 0, 4),
            Err(CopyError::TooManyChunks { count: 5, max: 4 })
        );
    }

    /// With CS.WAIT_FOR_OUTSTANDING_WRITES (which `run` sets), the engine clears ACTIVE and
    /// loads a zero NEXTCONBK while the last writes are still unacknowledged, and sets END only
    /// once they are ("BCM2711 ARM Peripherals" 4.2.1.2, CS bit 28): idle without END is not done.
    #[test]
    fn a_chain_is_done_only_once_end_is_set() {
        assert_eq!(
            progress(cs::WAIT_FOR_OUTSTANDING_WRITES, 0, 0),
            Progress::Running,
            "ACTIVE is clear but writes are outstanding"
        );
        assert_eq!(
            progress(cs::WAIT_FOR_OUTSTANDING_WRITES | cs::END, 0, 0),
            Progress::Done
        );
        // END is sticky: in a chain it is already up from an earlier block while the last
        // block's writes are outstanding, which CS.WAITING_FOR_OUTSTANDING_WRITES (bit 6) says.
        let waiting = cs::WAITING_FOR_OUTSTANDING_WRITES;
        assert_eq!(
            progress(cs::WAIT_FOR_OUTSTANDING_WRITES | cs::END | waiting, 0, 0),
            Progress::Running,
            "the last block's writes are outstanding"
        );
    }

    #[test]
    fn status_registers_tell_done_running_failed_and_busy() {
        assert_eq!(progress(cs::END, 0, 0), Progress::Done);
        assert_eq!(progress(cs::ACTIVE, 0xc000_0020, 0), Progress::Running);
        assert_eq!(
            progress(cs::END, 0xc000_0020, 0),
            Progress::Running,
            "paused mid-chain"
        );
        assert_eq!(
            progress(cs::ERROR | cs::END, 0, debug::READ_ERROR),
            Progress::Failed(CopyError::Transfer {
                cs: cs::ERROR | cs::END,
                debug: debug::READ_ERROR
            })
        );
        assert!(matches!(
            progress(0, 0, debug::FIFO_ERROR),
            Progress::Failed(_)
        ));
        assert_eq!(ready(0, 0, debug::LITE), Ok(()));
        assert!(matches!(
            ready(cs::ERROR, 0, 0),
            Err(CopyError::ChannelInError { .. })
        ));
        assert!(matches!(
            ready(cs::ACTIVE, 0, 0),
            Err(CopyError::Busy { .. })
        ));
        assert!(matches!(
            ready(0, 0xc000_0000, 0),
            Err(CopyError::Busy { .. })
        ));
        assert_eq!(ChannelKind::from_debug(debug::LITE), ChannelKind::Lite);
        assert_eq!(ChannelKind::from_debug(0), ChannelKind::Full);
    }
}
