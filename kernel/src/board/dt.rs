//! Reading the device tree into a [`BoardInfo`].
//!
//! Parsing and validation of the flattened format is the `dtoolkit` crate's (it checks the whole
//! blob up front, so a corrupt tree is an error, not a panic); this module only interprets standard
//! properties (Devicetree Specification v0.4: `reg`, `ranges`, `#address-cells`, `status`,
//! `/chosen`, `/cpus`, `/memory`, `/reserved-memory`) and the bindings of the devices we drive
//! (Linux `Documentation/devicetree/bindings`: `arm,pl011`, `arm,gic-v3`, `arm,psci`,
//! `pci-host-ecam-generic`, `arm,smmu-v3`, `brcm,bcm2711-gpio`, `brcm,bcm2835-dma`, CPU
//! `enable-method`) and `dma-ranges` (Devicetree Specification v0.4, 2.3.9).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use dtoolkit::fdt::{Fdt, FdtNode};
use dtoolkit::{Node, Property};

pub use super::interrupts::{GicInterrupt, InterruptError, NamedInterrupt};

/// FDT header magic (Devicetree Specification 5.2).
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// Largest device tree we accept (booting.rst: the DTB must not exceed 2 MiB).
pub const FDT_MAX_SIZE: usize = 2 << 20;

/// Why the device tree could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DtError {
    /// x0 was 0 or not 8-byte aligned.
    BadPointer(u64),
    /// The header does not start with the FDT magic.
    BadMagic(u32),
    /// `totalsize` is implausible.
    BadSize(usize),
    /// The blob failed structural validation.
    Parse(String),
    /// A required node or property is missing or malformed.
    Missing(&'static str),
}

impl fmt::Display for DtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DtError::BadPointer(p) => {
                write!(f, "no device tree: x0 = {p:#x} is not a valid pointer")
            }
            DtError::BadMagic(m) => write!(
                f,
                "corrupt device tree: magic {m:#010x}, expected {FDT_MAGIC:#010x}"
            ),
            DtError::BadSize(s) => write!(f, "corrupt device tree: total size {s} bytes"),
            DtError::Parse(e) => write!(f, "corrupt device tree: {e}"),
            DtError::Missing(what) => write!(f, "device tree lacks {what}"),
        }
    }
}

/// The board families we know how to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoardKind {
    /// QEMU's `virt` machine (`linux,dummy-virt`).
    QemuVirt,
    /// Raspberry Pi 4 Model B, real or QEMU `raspi4b` (`brcm,bcm2711`).
    RaspberryPi4,
    /// Anything else: we run on what the tree describes.
    Other,
}

/// A physical address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Range {
    /// One past the last byte (saturating).
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

/// How the CPUs are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuEnable {
    /// PSCI CPU_ON.
    Psci,
    /// Spin table with this release address.
    SpinTable(u64),
    /// Missing or unknown `enable-method`.
    Unknown,
}

/// One `/cpus/cpu@N` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuNode {
    /// `reg`: the MPIDR affinity value.
    pub mpidr: u64,
    /// `enable-method` (+ `cpu-release-addr`).
    pub enable: CpuEnable,
}

/// PSCI conduit (`/psci` `method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsciMethod {
    /// `hvc`.
    Hvc,
    /// `smc`.
    Smc,
}

/// The interrupt controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gic {
    /// 2 or 3.
    pub version: u8,
    /// Distributor registers.
    pub distributor: Range,
    /// GICv2 CPU interface or GICv3 redistributors.
    pub cpu_or_redist: Range,
}

/// A generic ECAM PCIe host bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcieHost {
    /// Configuration space (ECAM).
    pub ecam: Range,
    /// First and last bus number.
    pub bus_range: (u8, u8),
    /// 32-bit memory window: (PCI address, CPU address, size).
    pub mem32: Option<(u64, u64, u64)>,
    /// 64-bit memory window: (PCI address, CPU address, size).
    pub mem64: Option<(u64, u64, u64)>,
    /// `iommu-map`: (first requester ID, phandle of the IOMMU, first stream ID, count).
    pub iommu_map: Vec<(u32, u32, u32, u32)>,
}

impl PcieHost {
    /// The StreamID that the IOMMU with phandle `iommu` sees for requester `rid`, through the
    /// host bridge's `iommu-map` (Linux `Documentation/devicetree/bindings/pci/pci-iommu.txt`:
    /// each entry maps `length` requester IDs from `rid-base` to `iommu-base` onwards).
    /// `None` if no entry for that IOMMU covers `rid`: the device is not translated by it (Linux
    /// `of_map_id()` refuses such a device too).
    pub fn stream_id(&self, iommu: u32, rid: u16) -> Option<u32> {
        let rid = u32::from(rid);
        self.iommu_map
            .iter()
            .find(|&&(base, phandle, _, len)| {
                phandle == iommu && rid >= base && u64::from(rid) < u64::from(base) + u64::from(len)
            })
            .and_then(|&(base, _, sid_base, _)| sid_base.checked_add(rid - base))
    }
}

/// One `dma-ranges` entry of a bus: what a DMA master on it puts on the bus to reach CPU
/// physical addresses `[cpu, cpu + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRange {
    /// The bus (DMA) address of `cpu`.
    pub bus: u64,
    /// First CPU physical address.
    pub cpu: u64,
    /// Length in bytes.
    pub size: u64,
}

/// The BCM283x/BCM2711 DMA controller (`brcm,bcm2835-dma`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaController {
    /// The channel registers (translated to a CPU physical address).
    pub regs: Range,
    /// `brcm,dma-channel-mask`: the channels the firmware leaves to the ARM side.
    pub channel_mask: u32,
    /// How the controller's bus addresses reach RAM: its bus's `dma-ranges`.
    pub dma_ranges: Vec<DmaRange>,
}

/// Everything the kernel takes from the device tree.
#[derive(Debug, Clone)]
pub struct BoardInfo {
    /// Which family of board.
    pub kind: BoardKind,
    /// `/model` (or the first root `compatible` if there is no model).
    pub model: String,
    /// RAM ranges from every `/memory` node.
    pub memory: Vec<Range>,
    /// `/memreserve/` entries and `/reserved-memory` children.
    pub reserved: Vec<Range>,
    /// `/chosen/bootargs`.
    pub bootargs: String,
    /// The console PL011's registers (translated to a CPU physical address).
    pub uart: Option<Range>,
    /// The interrupt controller.
    pub gic: Option<Gic>,
    /// PSCI, if present.
    pub psci: Option<PsciMethod>,
    /// Every CPU node.
    pub cpus: Vec<CpuNode>,
    /// The PCIe host bridge, if any.
    pub pcie: Option<PcieHost>,
    /// The SMMUv3's registers, if any.
    pub smmu: Option<Range>,
    /// The SMMUv3 node's phandle (matched against `iommu-map`).
    pub smmu_phandle: Option<u32>,
    /// The SMMUv3's wired interrupts (`interrupts` with `interrupt-names`: `eventq`, `gerror`,
    /// ...), or why they cannot be used; empty if the node has none.
    pub smmu_interrupts: Result<Vec<NamedInterrupt>, InterruptError>,
    /// The BCM2711 GPIO block (Pi only: the console pins are muxed there).
    pub gpio: Option<Range>,
    /// The BCM2711 DMA controller (Pi only).
    pub dma: Option<DmaController>,
    /// Names of the device nodes we found and use, for the boot banner.
    pub devices: Vec<String>,
}

impl BoardInfo {
    /// Total RAM in bytes (saturating: a corrupt tree may describe more than 2^64 bytes; found
    /// by the `dt` fuzz target).
    pub fn memory_bytes(&self) -> u64 {
        self.memory
            .iter()
            .fold(0, |sum, r| sum.saturating_add(r.size))
    }
}

/// Checks the header at `blob` before anything else touches it: magic, and a total size that
/// fits in `FDT_MAX_SIZE`. Returns the total size.
pub fn check_header(header: &[u8]) -> Result<usize, DtError> {
    if header.len() < 8 {
        return Err(DtError::BadSize(header.len()));
    }
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if magic != FDT_MAGIC {
        return Err(DtError::BadMagic(magic));
    }
    let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if !(40..=FDT_MAX_SIZE).contains(&size) {
        return Err(DtError::BadSize(size));
    }
    Ok(size)
}

fn be_cells(bytes: &[u8], cells: usize) -> Option<u64> {
    if cells == 0 || cells > 2 || bytes.len() < cells * 4 {
        return None;
    }
    Some(bytes[..cells * 4].chunks(4).fold(0u64, |acc, c| {
        (acc << 32) | u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }))
}

fn u32_at(bytes: &[u8], i: usize) -> Option<u32> {
    bytes
        .get(i * 4..i * 4 + 4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}

fn prop_str<'a>(node: &FdtNode<'a>, name: &str) -> Option<&'a str> {
    node.property(name)
        .and_then(|p| p.value_as::<&'a str>().ok())
}

/// `/chosen/bootargs` as text, whatever its bytes (a Pi's `cmdline.txt` may hold Latin-1, a
/// hand-made tree may lack the final NUL): bytes that are not UTF-8 are replaced, so the parser
/// reports the argument they spoil instead of the whole line vanishing. A property of several
/// strings (`bootargs = "a", "b";`) is one line of all of them: a NUL is a separator, never
/// part of an argument (kept, it glued the next argument into the previous one's value).
pub fn bootargs_text(raw: &[u8]) -> String {
    let strings: Vec<_> = raw
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(String::from_utf8_lossy)
        .collect();
    strings.join(" ")
}

fn prop_u32(node: &FdtNode<'_>, name: &str) -> Option<u32> {
    node.property(name).and_then(|p| p.value_as::<u32>().ok())
}

/// A string-list property (`compatible`): NUL-separated strings.
fn str_list<'a>(node: &FdtNode<'a>, name: &str) -> impl Iterator<Item = &'a str> {
    node.property(name)
        .and_then(|p| p.value_as::<&'a [u8]>().ok())
        .unwrap_or(&[])
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| core::str::from_utf8(s).ok())
}

fn is_enabled(node: &FdtNode<'_>) -> bool {
    prop_str(node, "status").is_none_or(|s| s == "okay" || s == "ok")
}

fn is_compatible(node: &FdtNode<'_>, with: &str) -> bool {
    str_list(node, "compatible").any(|s| s == with)
}

/// The cell sizes a node's children use (defaults: 2 address, 1 size cells, per the spec).
fn child_cells(node: &FdtNode<'_>) -> (usize, usize) {
    let get = |name| prop_u32(node, name).map(|v| v as usize);
    (
        get("#address-cells").unwrap_or(2),
        get("#size-cells").unwrap_or(1),
    )
}

/// A node together with its ancestors (root first, parent last), so that its addresses can be
/// translated through every bus's `ranges`.
struct Located<'a> {
    node: FdtNode<'a>,
    ancestors: Vec<FdtNode<'a>>,
}

/// Deeper than any real tree: a corrupt blob must not exhaust the stack.
const MAX_DEPTH: usize = 32;

fn collect<'a>(node: FdtNode<'a>, ancestors: &mut Vec<FdtNode<'a>>, out: &mut Vec<Located<'a>>) {
    if ancestors.len() > MAX_DEPTH {
        return;
    }
    ancestors.push(node);
    for child in node.children() {
        out.push(Located {
            node: child,
            ancestors: ancestors.clone(),
        });
        collect(child, ancestors, out);
    }
    ancestors.pop();
}

/// Translates an address on `bus`'s child side through its `ranges` into the address space of
/// `bus`'s parent (whose children use `parent_ac` address cells). `None` if not covered.
fn translate_through(bus: &FdtNode<'_>, parent_ac: usize, addr: u64) -> Option<u64> {
    let Some(ranges) = bus.property("ranges") else {
        return Some(addr);
    };
    if ranges.value().is_empty() {
        return Some(addr); // `ranges;` = identity mapping
    }
    let (child_ac, child_sc) = child_cells(bus);
    // An entry without cells on any side translates nothing (and would be a zero-sized chunk:
    // a seed of the `dt` fuzz target panicked here).
    if !(1..=3).contains(&child_ac) || !(1..=2).contains(&parent_ac) || !(1..=2).contains(&child_sc)
    {
        return None;
    }
    let entry = (child_ac + parent_ac + child_sc) * 4;
    for e in ranges.value().chunks_exact(entry) {
        // PCI child addresses have 3 cells; the low two are the address.
        let child = if child_ac == 3 {
            be_cells(&e[4..], 2)?
        } else {
            be_cells(e, child_ac)?
        };
        let parent_addr = be_cells(&e[child_ac * 4..], parent_ac)?;
        let size = be_cells(&e[(child_ac + parent_ac) * 4..], child_sc)?;
        if addr >= child && addr - child < size {
            return parent_addr.checked_add(addr - child);
        }
    }
    None
}

/// The `index`th `reg` entry of a located node, as a CPU physical address range.
fn reg_cpu(loc: &Located<'_>, index: usize) -> Option<Range> {
    let parent = loc.ancestors.last()?;
    let (ac, sc) = child_cells(parent);
    if ac == 0 || ac > 2 || sc > 2 {
        return None;
    }
    let stride = (ac + sc) * 4;
    let reg = loc.node.property("reg")?;
    let e = reg.value().get(index * stride..(index + 1) * stride)?;
    let mut addr = be_cells(e, ac)?;
    let size = if sc == 0 {
        0
    } else {
        be_cells(&e[ac * 4..], sc)?
    };
    for i in (1..loc.ancestors.len()).rev() {
        let parent_ac = child_cells(&loc.ancestors[i - 1]).0;
        addr = translate_through(&loc.ancestors[i], parent_ac, addr)?;
    }
    Some(Range { base: addr, size })
}

fn find<'l, 'a>(nodes: &'l [Located<'a>], compatible: &str) -> Option<&'l Located<'a>> {
    nodes
        .iter()
        .find(|l| is_enabled(&l.node) && is_compatible(&l.node, compatible))
}

fn device_name(loc: &Located<'_>) -> String {
    loc.node.name().to_string()
}

/// Reads everything the kernel needs from a device tree blob.
pub fn parse(blob: &[u8]) -> Result<BoardInfo, DtError> {
    check_header(blob)?;
    let fdt = Fdt::new(blob).map_err(|e| DtError::Parse(alloc::format!("{e}")))?;
    let root = fdt.root();
    let mut nodes = Vec::new();
    collect(root, &mut Vec::new(), &mut nodes);

    let root_compat: Vec<&str> = str_list(&root, "compatible").collect();
    let kind = if root_compat.contains(&"linux,dummy-virt") {
        BoardKind::QemuVirt
    } else if root_compat
        .iter()
        .any(|c| *c == "brcm,bcm2711" || *c == "raspberrypi,4-model-b")
    {
        BoardKind::RaspberryPi4
    } else {
        BoardKind::Other
    };
    let model = prop_str(&root, "model")
        .map(|s| s.to_string())
        .or_else(|| root_compat.first().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown board".to_string());

    let mut info = BoardInfo {
        kind,
        model,
        memory: Vec::new(),
        reserved: Vec::new(),
        bootargs: String::new(),
        uart: None,
        gic: None,
        psci: None,
        cpus: Vec::new(),
        pcie: None,
        smmu: None,
        smmu_phandle: None,
        smmu_interrupts: Ok(Vec::new()),
        gpio: None,
        dma: None,
        devices: Vec::new(),
    };

    read_memory(&fdt, &nodes, &mut info);
    read_cpus(&nodes, &mut info);
    if info.memory.is_empty() {
        return Err(DtError::Missing("a /memory node"));
    }
    let chosen = nodes
        .iter()
        .find(|l| l.ancestors.len() == 1 && l.node.name() == "chosen");
    if let Some(args) = chosen.and_then(|c| c.node.property("bootargs")) {
        info.bootargs = bootargs_text(args.value());
    }
    let stdout = chosen.and_then(|c| prop_str(&c.node, "stdout-path"));
    read_devices(stdout, &nodes, &mut info);
    Ok(info)
}

fn read_memory(fdt: &Fdt<'_>, nodes: &[Located<'_>], info: &mut BoardInfo) {
    for loc in nodes.iter().filter(|l| l.ancestors.len() == 1) {
        let is_memory = prop_str(&loc.node, "device_type") == Some("memory");
        if !is_memory || !is_enabled(&loc.node) {
            continue;
        }
        let mut i = 0;
        while let Some(r) = reg_cpu(loc, i) {
            if r.size > 0 {
                info.memory.push(r);
            }
            i += 1;
        }
    }
    info.memory.sort_by_key(|r| r.base);
    for r in fdt.memory_reservations() {
        info.reserved.push(Range {
            base: r.address(),
            size: r.size(),
        });
    }
    for loc in nodes.iter().filter(|l| {
        l.ancestors
            .last()
            .is_some_and(|p| p.name() == "reserved-memory")
    }) {
        let mut i = 0;
        while let Some(r) = reg_cpu(loc, i) {
            info.reserved.push(r);
            i += 1;
        }
    }
}

fn read_cpus(nodes: &[Located<'_>], info: &mut BoardInfo) {
    for loc in nodes
        .iter()
        .filter(|l| l.ancestors.last().is_some_and(|p| p.name() == "cpus"))
    {
        let n = &loc.node;
        if prop_str(n, "device_type") != Some("cpu") || !is_enabled(n) {
            continue;
        }
        let Some(reg) = n.property("reg") else {
            continue;
        };
        let Some(parent) = loc.ancestors.last() else {
            continue;
        };
        let Some(mpidr) = be_cells(reg.value(), child_cells(parent).0) else {
            continue;
        };
        let enable = match prop_str(n, "enable-method") {
            Some("psci") => CpuEnable::Psci,
            Some("spin-table") => {
                match n
                    .property("cpu-release-addr")
                    .and_then(|p| p.value_as::<u64>().ok())
                {
                    Some(a) => CpuEnable::SpinTable(a),
                    None => CpuEnable::Unknown,
                }
            }
            _ => CpuEnable::Unknown,
        };
        info.cpus.push(CpuNode { mpidr, enable });
    }
}

fn read_devices(stdout_path: Option<&str>, nodes: &[Located<'_>], info: &mut BoardInfo) {
    // Console: the PL011 /chosen/stdout-path names (by node name; options after ':'), else
    // the first enabled one.
    let stdout_name = stdout_path
        .map(|p| p.split(':').next().unwrap_or(p))
        .and_then(|p| p.rsplit('/').next());
    let uart = nodes
        .iter()
        .find(|l| {
            is_enabled(&l.node)
                && is_compatible(&l.node, "arm,pl011")
                && Some(l.node.name()) == stdout_name
        })
        .or_else(|| find(nodes, "arm,pl011"));
    if let Some(loc) = uart {
        info.uart = reg_cpu(loc, 0);
        info.devices.push(device_name(loc));
    }

    let mut gic_node = None;
    if let Some(loc) = find(nodes, "arm,gic-v3") {
        gic_node = Some(loc);
        if let (Some(d), Some(r)) = (reg_cpu(loc, 0), reg_cpu(loc, 1)) {
            info.gic = Some(Gic {
                version: 3,
                distributor: d,
                cpu_or_redist: r,
            });
            info.devices.push(device_name(loc));
        }
    } else if let Some(loc) = ["arm,gic-400", "arm,cortex-a15-gic"]
        .iter()
        .find_map(|c| find(nodes, c))
    {
        gic_node = Some(loc);
        if let (Some(d), Some(c)) = (reg_cpu(loc, 0), reg_cpu(loc, 1)) {
            info.gic = Some(Gic {
                version: 2,
                distributor: d,
                cpu_or_redist: c,
            });
            info.devices.push(device_name(loc));
        }
    }

    if let Some(psci) = nodes.iter().find(|l| {
        l.ancestors.len() == 1 && str_list(&l.node, "compatible").any(|s| s.starts_with("arm,psci"))
    }) {
        info.psci = match prop_str(&psci.node, "method") {
            Some("hvc") => Some(PsciMethod::Hvc),
            Some("smc") => Some(PsciMethod::Smc),
            _ => None,
        };
        if info.psci.is_some() {
            info.devices.push(device_name(psci));
        }
    }

    if let Some(loc) = find(nodes, "arm,smmu-v3") {
        info.smmu = reg_cpu(loc, 0);
        info.smmu_phandle = prop_u32(&loc.node, "phandle");
        info.smmu_interrupts = read_interrupts(loc, gic_node.filter(|_| info.gic.is_some()));
        info.devices.push(device_name(loc));
    }

    if let Some(loc) = find(nodes, "pci-host-ecam-generic") {
        if let Some(host) = read_pcie(loc) {
            info.pcie = Some(host);
            info.devices.push(device_name(loc));
        }
    }

    if let Some(loc) = find(nodes, "brcm,bcm2711-gpio") {
        info.gpio = reg_cpu(loc, 0);
        info.devices.push(device_name(loc));
    }

    if let Some(loc) = find(nodes, "brcm,bcm2835-dma") {
        info.dma = read_dma(loc);
        if info.dma.is_some() {
            info.devices.push(device_name(loc));
        }
    }
}

/// A node's `interrupts` for the GIC at `gic` (Devicetree Specification v0.4, 2.4: the parent
/// is the nearest `interrupt-parent` on the node or an ancestor). Empty if the node has no
/// `interrupts`; an error if they are not the GIC's or not well formed.
fn read_interrupts(
    loc: &Located<'_>,
    gic: Option<&Located<'_>>,
) -> Result<Vec<NamedInterrupt>, InterruptError> {
    let Some(cells) = loc.node.property("interrupts") else {
        return Ok(Vec::new());
    };
    let parent = core::iter::once(&loc.node)
        .chain(loc.ancestors.iter().rev())
        .find_map(|n| prop_u32(n, "interrupt-parent"));
    let gic = gic.ok_or(InterruptError::NoController)?;
    if parent.is_none() || parent != prop_u32(&gic.node, "phandle") {
        return Err(InterruptError::NoController);
    }
    let interrupt_cells = prop_u32(&gic.node, "#interrupt-cells").unwrap_or(0);
    let names: Vec<&str> = str_list(&loc.node, "interrupt-names").collect();
    super::interrupts::gic_interrupts(cells.value(), interrupt_cells, &names)
}

fn read_dma(loc: &Located<'_>) -> Option<DmaController> {
    Some(DmaController {
        regs: reg_cpu(loc, 0)?,
        channel_mask: prop_u32(&loc.node, "brcm,dma-channel-mask").unwrap_or(0),
        dma_ranges: dma_ranges(loc),
    })
}

/// The `dma-ranges` of the bus `loc` sits on (Devicetree Specification v0.4, 2.3.9: each entry
/// is (child bus address, parent bus address, length) in the bus's `#address-cells`, its
/// parent's `#address-cells` and the bus's `#size-cells`). Only a bus directly under the root
/// is translated (the parent address is then the CPU's); an empty `dma-ranges` is the identity
/// over 32-bit bus addresses; a missing one, or a deeper bus, gives no range (no DMA).
fn dma_ranges(loc: &Located<'_>) -> Vec<DmaRange> {
    let (Some(bus), 2) = (loc.ancestors.last(), loc.ancestors.len()) else {
        return Vec::new();
    };
    let Some(prop) = bus.property("dma-ranges") else {
        return Vec::new();
    };
    if prop.value().is_empty() {
        return alloc::vec![DmaRange {
            bus: 0,
            cpu: 0,
            size: 1 << 32,
        }];
    }
    let (child_ac, child_sc) = child_cells(bus);
    let parent_ac = child_cells(&loc.ancestors[0]).0;
    if !(1..=2).contains(&child_ac) || !(1..=2).contains(&parent_ac) || !(1..=2).contains(&child_sc)
    {
        return Vec::new();
    }
    prop.value()
        .chunks_exact((child_ac + parent_ac + child_sc) * 4)
        .filter_map(|e| {
            Some(DmaRange {
                bus: be_cells(e, child_ac)?,
                cpu: be_cells(&e[child_ac * 4..], parent_ac)?,
                size: be_cells(&e[(child_ac + parent_ac) * 4..], child_sc)?,
            })
        })
        .filter(|r| r.size > 0)
        .collect()
}

fn read_pcie(loc: &Located<'_>) -> Option<PcieHost> {
    let n = &loc.node;
    let ecam = reg_cpu(loc, 0)?;
    let bus_range = n
        .property("bus-range")
        .map(|p| {
            (
                u32_at(p.value(), 0).unwrap_or(0) as u8,
                u32_at(p.value(), 1).unwrap_or(255) as u8,
            )
        })
        .unwrap_or((0, 255));
    let parent_ac = child_cells(loc.ancestors.last()?).0;
    let (child_ac, child_sc) = child_cells(n);
    let mut mem32 = None;
    let mut mem64 = None;
    if let Some(ranges) = n.property("ranges") {
        let entry = (child_ac + parent_ac + child_sc) * 4;
        if child_ac == 3 && entry > 0 {
            for e in ranges.value().chunks_exact(entry) {
                let space = (u32_at(e, 0)? >> 24) & 0x3; // phys.hi ss: 1 = I/O, 2 = 32-bit, 3 = 64-bit memory
                let pci = be_cells(&e[4..], 2)?;
                let cpu = be_cells(&e[12..], parent_ac)?;
                let size = be_cells(&e[(3 + parent_ac) * 4..], child_sc)?;
                match space {
                    2 => mem32 = Some((pci, cpu, size)),
                    3 => mem64 = Some((pci, cpu, size)),
                    _ => {}
                }
            }
        }
    }
    let mut iommu_map = Vec::new();
    if let Some(map) = n.property("iommu-map") {
        for e in map.value().chunks_exact(16) {
            iommu_map.push((u32_at(e, 0)?, u32_at(e, 1)?, u32_at(e, 2)?, u32_at(e, 3)?));
        }
    }
    Some(PcieHost {
        ecam,
        bus_range,
        mem32,
        mem64,
        iommu_map,
    })
}

/// RAM minus the reserved ranges (and `extra`), page-aligned inwards, sorted.
pub fn usable_ram(memory: &[Range], reserved: &[Range], extra: &[Range]) -> Vec<Range> {
    const PAGE: u64 = 4096;
    let mut free: Vec<(u64, u64)> = memory.iter().map(|r| (r.base, r.end())).collect();
    for r in reserved.iter().chain(extra) {
        let (rs, re) = (
            r.base & !(PAGE - 1),
            r.end().saturating_add(PAGE - 1) & !(PAGE - 1),
        );
        let mut next = Vec::with_capacity(free.len() + 1);
        for (s, e) in free {
            if re <= s || rs >= e {
                next.push((s, e));
                continue;
            }
            if rs > s {
                next.push((s, rs));
            }
            if re < e {
                next.push((re, e));
            }
        }
        free = next;
    }
    let mut out: Vec<Range> = free
        .into_iter()
        .filter_map(|(s, e)| {
            let s = s.checked_add(PAGE - 1)? & !(PAGE - 1);
            let e = e & !(PAGE - 1);
            // `then`, not `then_some`: `e - s` must not be computed when `e < s` (found by
            // the `dt` fuzz target: a sub-page RAM range overflowed in debug builds).
            (e > s).then(|| Range {
                base: s,
                size: e - s,
            })
        })
        .collect();
    out.sort_by_key(|r| r.base);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(base: u64, size: u64) -> Range {
        Range { base, size }
    }

    #[test]
    fn header_checks() {
        assert_eq!(check_header(&[0; 4]), Err(DtError::BadSize(4)));
        assert_eq!(
            check_header(&[0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DtError::BadMagic(0))
        );
        let mut h = [0xd0, 0x0d, 0xfe, 0xed, 0, 0, 0, 0];
        assert_eq!(check_header(&h), Err(DtError::BadSize(0)));
        h[6] = 0x10; // 4 KiB
        assert_eq!(check_header(&h), Ok(0x1000));
        h[4] = 0x10; // 256 MiB: too big
        assert!(matches!(check_header(&h), Err(DtError::BadSize(_))));
    }

    /// Found by the `dt` fuzz target: blobs that `dtoolkit` 0.1 validated and then panicked
    /// on (a node name that is not UTF-8; a token offset past the end). 0.4 refuses both.
    #[test]
    fn blobs_that_made_dtoolkit_panic_are_errors() {
        let name = include_bytes!("../../../tests/fuzz/regressions/dt/node-name-not-utf8");
        let token = include_bytes!("../../../tests/fuzz/regressions/dt/token-past-the-end");
        for blob in [&name[..], &token[..]] {
            assert!(matches!(parse(blob), Err(DtError::Parse(_))));
        }
    }

    /// The fuzz corpus's virt-like tree, whose `/chosen/bootargs` is `ktest=boot.* seed=7`, with
    /// the space before `seed=7` replaced by `byte`.
    fn seed_tree_with_bootargs_separator(byte: u8) -> Vec<u8> {
        let seed = include_bytes!("../../../tests/fuzz/corpus/dt/seed-virt-like");
        let line = b"ktest=boot.* seed=7";
        let at = seed
            .windows(line.len())
            .position(|w| w == line)
            .expect("the seed tree has bootargs");
        let mut blob = seed.to_vec();
        blob[at + line.len() - 7] = byte;
        blob
    }

    /// `/chosen/bootargs` as a Pi's `cmdline.txt` or a hand-made `-append` may give it: a byte
    /// that is not UTF-8 (Latin-1's no-break space), or no final NUL. The line must still reach
    /// the boot-argument parser (invalid bytes replaced), never vanish: an empty line runs the
    /// default workload and exits 0 where the user asked for tests.
    #[test]
    fn bootargs_that_are_not_utf8_still_reach_the_kernel() {
        let info = parse(&seed_tree_with_bootargs_separator(0xa0)).unwrap();
        assert_eq!(info.bootargs, "ktest=boot.*\u{fffd}seed=7");
    }

    /// `/chosen/bootargs` holding several strings (a tree written `bootargs = "a", "b";`, or a
    /// tool that joins with NULs or pads with them): every argument must reach the parser. A
    /// NUL kept inside the line glued the next argument to the previous one's value, so
    /// `console=serial0\0ktest=boot.*` was one unknown key (reported, not fatal) and the
    /// tests asked for never ran: the default workload ran and exited 0.
    #[test]
    fn bootargs_holding_several_strings_reach_the_parser_as_one_line() {
        let info = parse(&seed_tree_with_bootargs_separator(0)).unwrap();
        let parsed = crate::board::bootargs::BootArgs::parse(&info.bootargs);
        assert!(parsed.errors.is_empty(), "{:?} from {:?}", parsed.errors, info.bootargs);
        assert_eq!(parsed.args.ktest.as_deref(), Some("boot.*"));
        assert_eq!(parsed.args.seed, Some(7));
        // Trailing NULs beyond the terminator are padding, not an argument.
        assert_eq!(bootargs_text(b"ktest=boot.*\0\0\0"), "ktest=boot.*");
        assert_eq!(bootargs_text(b"a\0\0b\0"), "a b");
        assert_eq!(bootargs_text(b"\0"), "");
    }

    #[test]
    fn iommu_map_translates_requester_ids() {
        let host = PcieHost {
            ecam: r(0x40_1000_0000, 0x1000_0000),
            bus_range: (0, 0xff),
            mem32: None,
            mem64: None,
            // QEMU virt's identity map, and a second IOMMU with an offset window.
            iommu_map: vec![(0, 0x8000, 0, 0x10000), (0x100, 0x9000, 0x4000, 0x20)],
        };
        assert_eq!(host.stream_id(0x8000, 0x0010), Some(0x10));
        assert_eq!(host.stream_id(0x8000, 0xffff), Some(0xffff));
        assert_eq!(host.stream_id(0x9000, 0x0105), Some(0x4005));
        assert_eq!(host.stream_id(0x9000, 0x0120), None, "past the window");
        assert_eq!(host.stream_id(0x9000, 0x00ff), None, "before the window");
        assert_eq!(host.stream_id(0x7777, 0x0010), None, "another IOMMU");
        let overflow = PcieHost {
            iommu_map: vec![(0, 1, u32::MAX, 16)],
            ..host
        };
        assert_eq!(overflow.stream_id(1, 0), Some(u32::MAX));
        assert_eq!(overflow.stream_id(1, 1), None);
    }

    /// The mainline Pi 4 tree (what QEMU `raspi4b` and the SD card use): the DMA controller's
    /// registers through the `soc` bus's `ranges`, its channel mask, and the bus's `dma-ranges`.
    #[test]
    #[ignore = "needs the Pi 4 device tree (SHOOTDOWN_DTB): `make test` runs it with --include-ignored"]
    fn the_pi4_tree_describes_its_dma_controller() {
        let path = std::path::PathBuf::from(std::env::var("SHOOTDOWN_DTB").expect("SHOOTDOWN_DTB"));
        let path = if path.is_relative() {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(path)
        } else {
            path
        };
        // The tree has no /memory (the firmware adds it), so `parse` would refuse it: read the
        // node the way `parse` does.
        let blob = std::fs::read(&path).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let mut nodes = Vec::new();
        collect(fdt.root(), &mut Vec::new(), &mut nodes);
        let loc = find(&nodes, "brcm,bcm2835-dma").expect("dma@7e007000");
        let dma = read_dma(loc).unwrap();
        // reg <0x7e007000 0xb00>; soc ranges map bus 0x7e000000 to CPU 0xfe000000.
        assert_eq!(dma.regs, r(0xfe00_7000, 0xb00));
        assert_eq!(dma.channel_mask, 0x7f5);
        // soc dma-ranges <0xc0000000 0x0 0x0 0x40000000>: bus 0xc0000000 is CPU 0, for 1 GiB.
        assert_eq!(
            dma.dma_ranges,
            vec![DmaRange {
                bus: 0xc000_0000,
                cpu: 0,
                size: 0x4000_0000
            }]
        );
    }

    #[test]
    fn usable_ram_subtracts_and_aligns() {
        let mem = [r(0, 0x3b40_0000), r(0x4000_0000, 0x4000_0000)];
        let reserved = [r(0, 0x1000), r(0x20_0000, 0x12_3456)];
        let out = usable_ram(&mem, &reserved, &[r(0x4800_0000, 0x10_0000)]);
        assert_eq!(
            out,
            vec![
                r(0x1000, 0x1f_f000),
                r(0x32_4000, 0x3b40_0000 - 0x32_4000),
                r(0x4000_0000, 0x800_0000),
                r(0x4810_0000, 0x8000_0000 - 0x4810_0000)
            ]
        );
        // Everything reserved: nothing left.
        assert!(usable_ram(&mem, &[r(0, u64::MAX)], &[]).is_empty());
        // Less than a page, not page aligned: nothing usable, and no overflow.
        assert!(usable_ram(&[r(0x1001, 0x10)], &[], &[]).is_empty());
    }
}
