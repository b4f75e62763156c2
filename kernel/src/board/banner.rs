//! The boot banner: what the kernel found, in a few lines the harness and a person both read.

use core::fmt;

use super::{BoardInfo, BoardKind, BootFacts};

/// The banner's facts; the counts that other subsystems own are handed in as values.
pub struct Banner<'a> {
    /// The board.
    pub info: &'a BoardInfo,
    /// How this boot went.
    pub facts: &'a BootFacts,
    /// CPUs that came up.
    pub cpus_online: usize,
    /// MiB of RAM under the frame allocator.
    pub frame_mib: usize,
    /// The IOMMU's line (its event queue and how events are delivered), if there is one.
    pub iommu: Option<&'a str>,
}

impl fmt::Display for Banner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (info, facts) = (self.info, self.facts);
        let kind = match info.kind {
            BoardKind::QemuVirt => "QEMU virt",
            BoardKind::RaspberryPi4 => "Raspberry Pi 4",
            BoardKind::Other => "unknown board",
        };
        writeln!(f, "Shootdown {} (aarch64)", env!("CARGO_PKG_VERSION"))?;
        writeln!(f, "  board    {} ({kind})", info.model)?;
        writeln!(
            f,
            "  cpus     {} online of {} in the device tree",
            self.cpus_online,
            info.cpus.len()
        )?;
        writeln!(
            f,
            "  memory   {} MiB in {} range(s); {} MiB in page frames",
            info.memory_bytes() >> 20,
            info.memory.len(),
            self.frame_mib
        )?;
        writeln!(
            f,
            "  entered  EL{} at {:#x}, device tree at {:#x} ({} bytes)",
            facts.entered_el, facts.load_pa, facts.dtb_pa, facts.dtb_size
        )?;
        write!(f, "  devices  ")?;
        for (i, d) in info.devices.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(d)?;
        }
        writeln!(f)?;
        if let Some(iommu) = self.iommu {
            writeln!(f, "  iommu    {iommu}")?;
        }
        if !info.bootargs.is_empty() {
            writeln!(f, "  bootargs {}", info.bootargs)?;
        }
        Ok(())
    }
}
