//! A small flattened-device-tree writer (Devicetree Specification v0.4 §5: header, memory
//! reservation block, structure block, strings block), for seed trees and tests of the
//! device-tree reader.

/// A node: name, properties in order, children in order.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub name: String,
    pub props: Vec<(String, Vec<u8>)>,
    pub children: Vec<Node>,
}

impl Node {
    pub fn new(name: &str) -> Self {
        Node {
            name: name.into(),
            ..Node::default()
        }
    }

    /// A property with raw bytes.
    pub fn raw(mut self, name: &str, value: &[u8]) -> Self {
        self.props.push((name.into(), value.to_vec()));
        self
    }

    /// A property of big-endian cells.
    pub fn cells(self, name: &str, cells: &[u32]) -> Self {
        let v: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.raw(name, &v)
    }

    /// A NUL-terminated string property.
    /// `#address-cells` and `#size-cells`, in that order.
    pub fn address_and_size_cells(self, address: u32, size: u32) -> Self {
        self.cells("#address-cells", &[address])
            .cells("#size-cells", &[size])
    }

    pub fn string(self, name: &str, s: &str) -> Self {
        self.strings(name, &[s])
    }

    /// A string-list property.
    pub fn strings(self, name: &str, list: &[&str]) -> Self {
        let mut v = Vec::new();
        for s in list {
            v.extend_from_slice(s.as_bytes());
            v.push(0);
        }
        self.raw(name, &v)
    }

    /// An empty property (`ranges;`).
    pub fn flag(self, name: &str) -> Self {
        self.raw(name, &[])
    }

    pub fn child(mut self, c: Node) -> Self {
        self.children.push(c);
        self
    }
}

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_END: u32 = 9;
const HEADER_SIZE: usize = 40;

fn pad4(v: &mut Vec<u8>) {
    while v.len() % 4 != 0 {
        v.push(0);
    }
}

fn emit(node: &Node, out: &mut Vec<u8>, strings: &mut Vec<u8>) {
    out.extend_from_slice(&FDT_BEGIN_NODE.to_be_bytes());
    out.extend_from_slice(node.name.as_bytes());
    out.push(0);
    pad4(out);
    for (name, value) in &node.props {
        let off = match find(strings, name.as_bytes()) {
            Some(o) => o,
            None => {
                let o = strings.len();
                strings.extend_from_slice(name.as_bytes());
                strings.push(0);
                o
            }
        };
        out.extend_from_slice(&FDT_PROP.to_be_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(&(off as u32).to_be_bytes());
        out.extend_from_slice(value);
        pad4(out);
    }
    for c in &node.children {
        emit(c, out, strings);
    }
    out.extend_from_slice(&FDT_END_NODE.to_be_bytes());
}

fn find(strings: &[u8], name: &[u8]) -> Option<usize> {
    let mut at = 0;
    for s in strings.split(|&b| b == 0) {
        if s == name {
            return Some(at);
        }
        at += s.len() + 1;
    }
    None
}

/// The blob of a tree rooted at `root` (whose name should be empty) with `/memreserve/`
/// entries `reserve`.
pub fn build(root: &Node, reserve: &[(u64, u64)]) -> Vec<u8> {
    let mut rsv = Vec::new();
    for &(a, s) in reserve.iter().chain(&[(0, 0)]) {
        rsv.extend_from_slice(&a.to_be_bytes());
        rsv.extend_from_slice(&s.to_be_bytes());
    }
    let mut structure = Vec::new();
    let mut strings = Vec::new();
    emit(root, &mut structure, &mut strings);
    structure.extend_from_slice(&FDT_END.to_be_bytes());
    let off_rsv = HEADER_SIZE.next_multiple_of(8);
    let off_struct = off_rsv + rsv.len();
    let off_strings = off_struct + structure.len();
    let total = off_strings + strings.len();
    let mut out = Vec::with_capacity(total);
    for v in [
        FDT_MAGIC,
        total as u32,
        off_struct as u32,
        off_strings as u32,
        off_rsv as u32,
        17, // version
        16, // last compatible version
        0,  // boot CPU
        strings.len() as u32,
        structure.len() as u32,
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.resize(off_rsv, 0);
    out.extend_from_slice(&rsv);
    out.extend_from_slice(&structure);
    out.extend_from_slice(&strings);
    out
}

/// A QEMU-`virt`-like tree: 2/2 cells, memory, PSCI CPUs, PL011 named by `stdout-path`,
/// GICv3, SMMUv3 with a phandle, ECAM PCIe with ranges and `iommu-map`, reserved memory.
pub fn virt_like() -> Vec<u8> {
    let root = Node::new("")
        .strings("compatible", &["linux,dummy-virt"])
        .string("model", "linux,dummy-virt")
        .address_and_size_cells(2, 2)
        .child(
            Node::new("chosen")
                .string("bootargs", "ktest=boot.* seed=7")
                .string("stdout-path", "/pl011@9000000"),
        )
        .child(
            Node::new("memory@40000000")
                .string("device_type", "memory")
                .cells("reg", &[0, 0x4000_0000, 0, 0x4000_0000]),
        )
        .child(
            Node::new("reserved-memory")
                .address_and_size_cells(2, 2)
                .flag("ranges")
                .child(Node::new("fw@48000000").cells("reg", &[0, 0x4800_0000, 0, 0x10_0000])),
        )
        .child(
            Node::new("cpus")
                .address_and_size_cells(1, 0)
                .child(
                    Node::new("cpu@0")
                        .string("device_type", "cpu")
                        .string("enable-method", "psci")
                        .cells("reg", &[0]),
                )
                .child(
                    Node::new("cpu@1")
                        .string("device_type", "cpu")
                        .string("enable-method", "psci")
                        .cells("reg", &[1]),
                ),
        )
        .child(
            Node::new("psci")
                .strings("compatible", &["arm,psci-1.0", "arm,psci-0.2"])
                .string("method", "hvc"),
        )
        .child(
            Node::new("pl011@9000000")
                .strings("compatible", &["arm,pl011", "arm,primecell"])
                .cells("reg", &[0, 0x900_0000, 0, 0x1000]),
        )
        .child(
            Node::new("intc@8000000")
                .strings("compatible", &["arm,gic-v3"])
                .cells(
                    "reg",
                    &[0, 0x800_0000, 0, 0x1_0000, 0, 0x80a_0000, 0, 0xf6_0000],
                ),
        )
        .child(
            Node::new("smmuv3@9050000")
                .strings("compatible", &["arm,smmu-v3"])
                .cells("reg", &[0, 0x905_0000, 0, 0x2_0000])
                .cells("phandle", &[0x8003]),
        )
        .child(
            Node::new("pcie@10000000")
                .strings("compatible", &["pci-host-ecam-generic"])
                .address_and_size_cells(3, 2)
                .cells("reg", &[0x40, 0x1000_0000, 0, 0x1000_0000])
                .cells("bus-range", &[0, 0xff])
                .cells(
                    "ranges",
                    &[
                        0x0100_0000,
                        0,
                        0,
                        0,
                        0x3eff_0000,
                        0,
                        0x1_0000, // I/O
                        0x0200_0000,
                        0,
                        0x1000_0000,
                        0,
                        0x1000_0000,
                        0,
                        0x2eff_0000, // 32-bit
                        0x0300_0000,
                        0x80,
                        0,
                        0x80,
                        0,
                        0x80,
                        0, // 64-bit
                    ],
                )
                .cells("iommu-map", &[0, 0x8003, 0, 0x1_0000]),
        );
    build(&root, &[(0x4000_0000, 0x1000)])
}

/// A Raspberry-Pi-4-like tree: 1/1 cells under a `soc` bus whose `ranges` translate the
/// peripherals, spin-table CPUs, GIC-400, the BCM2711 GPIO, two memory ranges.
pub fn pi_like() -> Vec<u8> {
    let cpu = |n: u32| {
        Node::new(&format!("cpu@{n}"))
            .string("device_type", "cpu")
            .string("enable-method", "spin-table")
            .cells("reg", &[n])
            .cells("cpu-release-addr", &[0, 0xd8 + 8 * n])
    };
    let root = Node::new("")
        .strings("compatible", &["raspberrypi,4-model-b", "brcm,bcm2711"])
        .string("model", "Raspberry Pi 4 Model B")
        .address_and_size_cells(2, 1)
        .child(Node::new("chosen").string("stdout-path", "serial0:115200n8"))
        .child(
            Node::new("memory@0")
                .string("device_type", "memory")
                .cells("reg", &[0, 0, 0x3b40_0000, 0, 0x4000_0000, 0x4000_0000]),
        )
        .child(
            Node::new("cpus")
                .address_and_size_cells(1, 0)
                .child(cpu(0))
                .child(cpu(1)),
        )
        .child(
            Node::new("soc")
                .strings("compatible", &["simple-bus"])
                .address_and_size_cells(1, 1)
                .cells(
                    "ranges",
                    &[
                        0x7e00_0000,
                        0,
                        0xfe00_0000,
                        0x180_0000,
                        0x7c00_0000,
                        0,
                        0xfc00_0000,
                        0x200_0000,
                    ],
                )
                .child(
                    Node::new("serial@7e201000")
                        .strings("compatible", &["arm,pl011", "arm,primecell"])
                        .cells("reg", &[0x7e20_1000, 0x200]),
                )
                .child(
                    Node::new("gpio@7e200000")
                        .strings("compatible", &["brcm,bcm2711-gpio"])
                        .cells("reg", &[0x7e20_0000, 0xb4]),
                )
                .child(
                    Node::new("interrupt-controller@40041000")
                        .strings("compatible", &["arm,gic-400"])
                        .cells("reg", &[0x7c04_1000, 0x1000, 0x7c04_2000, 0x2000]),
                )
                .child(
                    Node::new("disabled@7e300000")
                        .strings("compatible", &["arm,pl011"])
                        .string("status", "disabled")
                        .cells("reg", &[0x7e30_0000, 0x200]),
                ),
        );
    build(&root, &[(0, 0x1000)])
}

/// Odd but well-formed trees: zero and oversized cell counts, empty and short `ranges`,
/// nodes nested deeper than the reader follows, no memory at all.
pub fn odd_trees() -> Vec<Vec<u8>> {
    let memory = |reg: &[u32]| {
        Node::new("memory@0")
            .string("device_type", "memory")
            .cells("reg", reg)
    };
    let mut deep = Node::new("leaf").strings("compatible", &["arm,pl011"]);
    for i in 0..40 {
        deep = Node::new(&format!("bus{i}"))
            .address_and_size_cells(1, 1)
            .flag("ranges")
            .child(deep);
    }
    vec![
        // Zero-sized cells everywhere and a bus with a zero-sized `ranges` entry format.
        build(
            &Node::new("")
                .address_and_size_cells(1, 1)
                .child(memory(&[0x8000_0000, 0x1000_0000]))
                .child(
                    Node::new("bus")
                        .address_and_size_cells(0, 0)
                        .cells("ranges", &[1, 2, 3])
                        .child(
                            Node::new("uart")
                                .strings("compatible", &["arm,pl011"])
                                .cells("reg", &[0x10, 0x20]),
                        ),
                ),
            &[],
        ),
        // Huge cell counts, ranges that end mid-entry, an address near the top.
        build(
            &Node::new("")
                .address_and_size_cells(0xffff_ffff, 3)
                .child(memory(&[0xffff_ffff, 0xffff_f000, 0, 0x2000]))
                .child(
                    Node::new("soc")
                        .address_and_size_cells(2, 2)
                        .cells("ranges", &[0, 0, 0xffff_ffff, 0xffff_ff00, 0, 0x1000, 7])
                        .child(
                            Node::new("smmu")
                                .strings("compatible", &["arm,smmu-v3"])
                                .cells("reg", &[0, 0x800, 0, 0x100])
                                .raw("phandle", &[1, 2]),
                        ),
                ),
            &[(u64::MAX - 0xfff, 0x2000)],
        ),
        // Deeper than the reader's limit.
        build(
            &Node::new("")
                .address_and_size_cells(1, 1)
                .child(memory(&[0, 0x1000_0000]))
                .child(deep),
            &[],
        ),
        // A bus whose `ranges` entries would be zero bytes long (no cells on either side),
        // above the bus a device sits on.
        build(
            &Node::new("")
                .address_and_size_cells(1, 1)
                .child(memory(&[0, 0x1000_0000]))
                .child(
                    Node::new("outer")
                        .address_and_size_cells(0, 0)
                        .flag("ranges")
                        .child(
                            Node::new("bus")
                                .address_and_size_cells(0, 0)
                                .cells("ranges", &[5])
                                .child(
                                    Node::new("sub").address_and_size_cells(1, 1).child(
                                        Node::new("uart")
                                            .strings("compatible", &["arm,pl011"])
                                            .cells("reg", &[0x10, 0x20]),
                                    ),
                                ),
                        ),
                ),
            &[],
        ),
        // A bus translating a device past the top of the address space.
        build(
            &Node::new("")
                .address_and_size_cells(2, 2)
                .child(memory(&[0, 0, 0, 0x1000_0000]))
                .child(
                    Node::new("soc")
                        .address_and_size_cells(1, 1)
                        .cells("ranges", &[0, 0xffff_ffff, 0xffff_ff00, 0x1000])
                        .child(
                            Node::new("smmu")
                                .strings("compatible", &["arm,smmu-v3"])
                                .cells("reg", &[0x800, 0x100]),
                        ),
                ),
            &[],
        ),
        // No memory node.
        build(
            &Node::new("")
                .string("model", "nothing")
                .child(Node::new("chosen")),
            &[],
        ),
        // PCIe with broken ranges and a short iommu-map.
        build(
            &Node::new("")
                .address_and_size_cells(2, 2)
                .child(memory(&[0, 0, 0, 0x1000]))
                .child(
                    Node::new("pcie")
                        .strings("compatible", &["pci-host-ecam-generic"])
                        .address_and_size_cells(3, 0)
                        .cells("reg", &[0, 0x1000, 0, 0x1000])
                        .cells("bus-range", &[7])
                        .cells("ranges", &[0x0300_0000, 0, 0, 0])
                        .cells("iommu-map", &[0, 1, 2]),
                ),
            &[],
        ),
    ]
}
