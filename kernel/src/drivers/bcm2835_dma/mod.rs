//! The BCM2711 DMA controller (`brcm,bcm2835-dma`): the Pi 4's own DMA master, which moves the
//! bytes of the SMMU model's DMA master on that board ([`crate::mm::dma::PhysCopier`]).
//!
//! * **Channels**: 0..14 in one register block (0xfe007000 on the ARM side of the Pi 4), 15 in
//!   another (0xfee05000). The Pi 4 tree lists channels 0..10 (`reg` size 0xb00) and which of
//!   them the firmware leaves to Linux (`brcm,dma-channel-mask`); 7..10 are DMA LITE channels
//!   (DEBUG.LITE set), 11..14 are DMA4 engines with another register layout (not driven here).
//!   QEMU `raspi4b` models 16 channels of one kind, reading DEBUG back as written (so every
//!   channel looks full). The global ENABLE register (0xff0) lies outside the tree's `reg`, so
//!   the driver leaves it as the firmware (or QEMU's reset, 0xffff) set it.
//! * **Transfers**: a chain of 32-byte, 32-byte-aligned control blocks in one frame; the
//!   channel fetches them through its bus, so every address it sees is a bus address made from
//!   the tree's `dma-ranges` (on the Pi 4, bus 0xc000_0000 is CPU 0, for 1 GiB): never an
//!   assumed alias. Completion is polled (CS.ACTIVE clear, CONBLK_AD back to 0, CS.END set and
//!   no write outstanding), errors come from CS.ERROR and the DEBUG flags; a failed or stuck
//!   channel is reset.
//! * **Caches**: the engine does not snoop the Cortex-A72 caches; see `Bcm2835Dma::run`.
//!
//! `chain` is the portable half (encodings, planning, status decoding: host-tested), `channel`
//! the registers and memory.

pub mod chain;
#[cfg(target_os = "none")]
mod channel;

#[cfg(target_os = "none")]
pub use channel::{get, init, Bcm2835Dma, ProbeError};
