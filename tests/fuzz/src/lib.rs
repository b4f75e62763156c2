//! Fuzz targets of Shootdown's portable core, with their oracles.
//!
//! Each target is a function of `&[u8]` that panics when a property breaks:
//!
//! | target | what | module |
//! |---|---|---|
//! | `aspace` | address-space operations driving the page-table engine, the notifier core and the SMMU (driver + model) with DMA between the steps | [`aspace`] |
//! | `smmu_codec` | SMMUv3 command, event, STE and CD encoders/decoders | [`smmu_codec`] |
//! | `dt` | the device-tree reader on corrupted blobs | [`dt`] |
//! | `ktap` | the harness's KTAP parser and JUnit writer | [`ktap`] |
//! | `sdcl` | the chainloader protocol's reply-line parser and header decoder | [`sdcl`] |
//! | `receiver` | every byte on the chainloader's serial line, into its receiver | [`receiver`] |
//! | `bootargs` | the kernel's boot-argument parser | [`bootargs`] |
//!
//! libFuzzer runs them from `libfuzzer/` (`make fuzz`); `tests/replay.rs` runs the seed
//! corpora (`corpus/<target>/`) and every input that ever failed (`regressions/<target>/`) on
//! the stable toolchain, as part of `cargo test`.

pub mod aspace;
pub mod bootargs;
pub mod dt;
pub mod fdt;
pub mod input;
pub mod ktap;
pub mod memory;
pub mod receiver;
pub mod sdcl;
pub mod seeds;
pub mod smmu_codec;

/// A target: its name (the corpus directory) and its entry point.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: [Target; 7] = [
    Target {
        name: "aspace",
        run: aspace::fuzz,
    },
    Target {
        name: "smmu_codec",
        run: smmu_codec::fuzz,
    },
    Target {
        name: "dt",
        run: dt::fuzz,
    },
    Target {
        name: "ktap",
        run: ktap::fuzz,
    },
    Target {
        name: "sdcl",
        run: sdcl::fuzz,
    },
    Target {
        name: "receiver",
        run: receiver::fuzz,
    },
    Target {
        name: "bootargs",
        run: bootargs::fuzz,
    },
];
