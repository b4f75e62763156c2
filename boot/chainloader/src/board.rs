//! What the loader needs from the device tree, read with `dtoolkit` and no allocator: the
//! console PL011, the BCM2711 GPIO block (to route the PL011 to the header pins), RAM, and
//! what in RAM is reserved.
//!
//! Bindings: Devicetree Specification v0.4 (`reg`, `ranges`, `#address-cells`, `status`,
//! `/chosen/stdout-path`, `/aliases`, `/memory`, `/reserved-memory`, `/memreserve/`), Linux
//! `Documentation/devicetree/bindings/serial/pl011.yaml` (`arm,pl011`) and
//! `.../pinctrl/brcm,bcm2835-gpio.yaml` (`brcm,bcm2711-gpio`).

use dtoolkit::fdt::{Fdt, FdtNode};
use dtoolkit::{Node, Property};

use crate::placement::Range;

/// Ranges kept per list (the Pi 4 has at most a handful of memory ranges).
pub const MAX_RANGES: usize = 16;
/// Deeper than any real tree: the walk stops there.
const MAX_DEPTH: usize = 16;

/// A fixed-capacity list of ranges.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ranges {
    items: [Range; MAX_RANGES],
    len: usize,
    /// Ranges that did not fit (RAM: reported and left unused; reserved: the tree is refused).
    pub dropped: usize,
}

impl Ranges {
    pub fn push(&mut self, r: Range) {
        if r.size == 0 {
            return;
        }
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = r;
                self.len += 1;
            }
            None => self.dropped += 1,
        }
    }

    pub fn as_slice(&self) -> &[Range] {
        &self.items[..self.len]
    }
}

/// The board as the loader sees it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Board {
    /// The console PL011's registers (CPU physical address).
    pub uart: Option<u64>,
    /// The BCM2711 GPIO block, if this is a Pi 4.
    pub gpio: Option<u64>,
    /// RAM from every `/memory` node.
    pub ram: Ranges,
    /// `/memreserve/` entries and `/reserved-memory` children.
    pub reserved: Ranges,
}

/// Why the tree could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoardError {
    /// `dtoolkit` rejected the blob.
    Corrupt,
    /// No `/memory` node with a usable `reg`.
    NoMemory,
    /// More reserved ranges than [`MAX_RANGES`]: one the loader forgot could be loaded over.
    TooManyReserved,
    /// A `/reserved-memory` child's `reg` cannot be read (a length that is not whole entries,
    /// cell counts the loader does not handle) or translated to a CPU address.
    UnreadableReserved,
}

impl BoardError {
    pub const fn describe(self) -> &'static str {
        match self {
            BoardError::Corrupt => "the device tree is corrupt",
            BoardError::NoMemory => "the device tree describes no RAM",
            BoardError::TooManyReserved => {
                "the device tree reserves more than 16 memory ranges (/memreserve/ and \
                 /reserved-memory), more than the loader can keep clear of"
            }
            BoardError::UnreadableReserved => {
                "a /reserved-memory node has a reg the loader cannot read or translate, so it \
                 cannot keep clear of it"
            }
        }
    }
}

fn prop_u32(node: &FdtNode<'_>, name: &str) -> Option<u32> {
    node.property(name).and_then(|p| p.as_u32().ok())
}

fn prop_str<'a>(node: &FdtNode<'a>, name: &str) -> Option<&'a str> {
    node.property(name).and_then(|p| p.as_str().ok())
}

fn is_compatible(node: &FdtNode<'_>, with: &str) -> bool {
    node.property("compatible")
        .is_some_and(|p| p.value().split(|&b| b == 0).any(|s| s == with.as_bytes()))
}

fn is_enabled(node: &FdtNode<'_>) -> bool {
    prop_str(node, "status").is_none_or(|s| s == "okay" || s == "ok")
}

/// `#address-cells`, `#size-cells` for a node's children (spec defaults 2 and 1).
fn child_cells(node: &FdtNode<'_>) -> (usize, usize) {
    (
        prop_u32(node, "#address-cells").map_or(2, |v| v as usize),
        prop_u32(node, "#size-cells").map_or(1, |v| v as usize),
    )
}

fn cells(bytes: &[u8], n: usize) -> Option<u64> {
    if n == 0 || n > 2 {
        return None;
    }
    let b = bytes.get(..n * 4)?;
    Some(b.chunks(4).fold(0, |acc, c| {
        (acc << 32) | u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }))
}

/// Translates `addr` on `bus`'s child side through its `ranges` into its parent's address
/// space (whose children use `parent_ac` cells). `None` if no range covers it.
fn translate(bus: &FdtNode<'_>, parent_ac: usize, addr: u64) -> Option<u64> {
    let Some(ranges) = bus.property("ranges") else {
        return Some(addr);
    };
    if ranges.value().is_empty() {
        return Some(addr); // `ranges;`: identity
    }
    let (ac, sc) = child_cells(bus);
    if ac > 2 || parent_ac > 2 || sc > 2 {
        return None;
    }
    for e in ranges.value().chunks_exact((ac + parent_ac + sc) * 4) {
        let child = cells(e, ac)?;
        let parent = cells(&e[ac * 4..], parent_ac)?;
        let size = cells(&e[(ac + parent_ac) * 4..], sc)?;
        if addr >= child && addr - child < size {
            return Some(parent + (addr - child));
        }
    }
    None
}

/// Every `reg` entry of `node` (whose ancestors are `stack`, root first) as a CPU physical
/// range, or `Err` if one cannot be read or translated. No `reg` at all is `Ok` (a
/// `/reserved-memory` child with only `size` is allocated by the OS, not yet in use).
fn each_reg(stack: &[FdtNode<'_>], node: &FdtNode<'_>, mut f: impl FnMut(Range)) -> Result<(), ()> {
    let Some(prop) = node.property("reg") else {
        return Ok(());
    };
    let (ac, sc) = stack.last().map_or((0, 0), child_cells);
    let stride = (ac + sc) * 4;
    // Size cells 0 would make every range empty: nothing to keep clear of, nothing known.
    if ac == 0 || ac > 2 || sc == 0 || sc > 2 || prop.value().len() % stride != 0 {
        return Err(());
    }
    for i in 0..prop.value().len() / stride {
        f(reg(stack, node, i).ok_or(())?);
    }
    Ok(())
}

/// The `index`th `reg` entry of `node` (whose ancestors are `stack`, root first) as a CPU
/// physical range.
fn reg(stack: &[FdtNode<'_>], node: &FdtNode<'_>, index: usize) -> Option<Range> {
    let parent = stack.last()?;
    let (ac, sc) = child_cells(parent);
    if ac == 0 || ac > 2 || sc > 2 {
        return None;
    }
    let stride = (ac + sc) * 4;
    let reg = node.property("reg")?;
    let e = reg.value().get(index * stride..(index + 1) * stride)?;
    let mut addr = cells(e, ac)?;
    let size = if sc == 0 { 0 } else { cells(&e[ac * 4..], sc)? };
    for i in (1..stack.len()).rev() {
        addr = translate(&stack[i], child_cells(&stack[i - 1]).0, addr)?;
    }
    Some(Range::new(addr, size))
}

/// Whether `node` under `stack` is the node at `path` (`/a/b@1`; a component without a unit
/// address matches any unit address, as in `dtoolkit`'s `find_node`).
fn is_at(stack: &[FdtNode<'_>], node: &FdtNode<'_>, path: &str) -> bool {
    let mut components = path.split('/').filter(|c| !c.is_empty());
    let names = stack.iter().skip(1).chain(core::iter::once(node));
    for n in names {
        let Some(c) = components.next() else {
            return false;
        };
        let same = if c.contains('@') {
            n.name() == c
        } else {
            n.name_without_address() == c
        };
        if !same {
            return false;
        }
    }
    components.next().is_none()
}

/// The node path `/chosen/stdout-path` names, through `/aliases` if needed, without options.
fn stdout_node_path<'a>(fdt: &Fdt<'a>) -> Option<&'a str> {
    let chosen = fdt.find_node("/chosen")?;
    let path =
        prop_str(&chosen, "stdout-path").or_else(|| prop_str(&chosen, "linux,stdout-path"))?;
    let path = path.split(':').next()?;
    if path.starts_with('/') {
        Some(path)
    } else {
        prop_str(&fdt.find_node("/aliases")?, path)
    }
}

/// Walk state.
struct Found<'p> {
    stdout: Option<&'p str>,
    stdout_uart: Option<u64>,
    first_uart: Option<u64>,
    gpio: Option<u64>,
    board: Board,
    /// A `/reserved-memory` child whose `reg` could not be read.
    unreadable_reserved: bool,
}

fn visit<'a>(
    stack: &mut [Option<FdtNode<'a>>; MAX_DEPTH],
    depth: usize,
    node: FdtNode<'a>,
    f: &mut Found<'_>,
) {
    let mut ancestors: [FdtNode<'a>; MAX_DEPTH] = [node; MAX_DEPTH];
    let mut n = 0;
    for a in stack.iter().take(depth).flatten() {
        ancestors[n] = *a;
        n += 1;
    }
    let ancestors = &ancestors[..n];

    if depth == 1 && prop_str(&node, "device_type") == Some("memory") && is_enabled(&node) {
        let mut i = 0;
        while let Some(r) = reg(ancestors, &node, i) {
            f.board.ram.push(r);
            i += 1;
        }
    }
    if depth == 2 && ancestors[1].name() == "reserved-memory" {
        let reserved = &mut f.board.reserved;
        if each_reg(ancestors, &node, |r| reserved.push(r)).is_err() {
            f.unreadable_reserved = true;
        }
    }
    if is_enabled(&node) && is_compatible(&node, "arm,pl011") {
        let base = reg(ancestors, &node, 0).map(|r| r.base);
        if f.first_uart.is_none() {
            f.first_uart = base;
        }
        if f.stdout_uart.is_none() && f.stdout.is_some_and(|p| is_at(ancestors, &node, p)) {
            f.stdout_uart = base;
        }
    }
    if f.gpio.is_none() && is_compatible(&node, "brcm,bcm2711-gpio") {
        f.gpio = reg(ancestors, &node, 0).map(|r| r.base);
    }

    if depth >= MAX_DEPTH {
        return;
    }
    stack[depth] = Some(node);
    for child in node.children() {
        visit(stack, depth + 1, child, f);
    }
    stack[depth] = None;
}

/// Reads the board from a device tree blob (exactly `totalsize` bytes).
pub fn read(blob: &[u8]) -> Result<Board, BoardError> {
    let fdt = Fdt::new(blob).map_err(|_| BoardError::Corrupt)?;
    let mut f = Found {
        stdout: stdout_node_path(&fdt),
        stdout_uart: None,
        first_uart: None,
        gpio: None,
        board: Board::default(),
        unreadable_reserved: false,
    };
    for r in fdt.memory_reservations() {
        f.board.reserved.push(Range::new(r.address(), r.size()));
    }
    let mut stack = [None; MAX_DEPTH];
    visit(&mut stack, 0, fdt.root(), &mut f);
    if f.board.ram.as_slice().is_empty() {
        return Err(BoardError::NoMemory);
    }
    // RAM the loader does not track is only unused; a reserved range it does not know of
    // could be loaded over.
    if f.board.reserved.dropped > 0 {
        return Err(BoardError::TooManyReserved);
    }
    if f.unreadable_reserved {
        return Err(BoardError::UnreadableReserved);
    }
    // The console the tree names if it is a PL011 (with the firmware's `disable-bt` overlay,
    // `serial0`); otherwise the first enabled PL011 (mainline Pi 4 trees name the mini UART).
    f.board.uart = f.stdout_uart.or(f.first_uart);
    f.board.gpio = f.gpio;
    Ok(f.board)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdt_edit::testing::{build, Item::*};

    fn be(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    /// A Pi-4-like tree: a `soc` bus translating 0x7e... to 0xfe..., two PL011s, the stdout
    /// alias naming the second, RAM in two nodes, reserved memory both ways.
    fn pi_like(stdout: &str) -> Vec<u8> {
        let two = be(&[2]);
        let one = be(&[1]);
        build(
            &[
                Begin(""),
                Prop("#address-cells", &two),
                Prop("#size-cells", &one),
                Prop("compatible", b"raspberrypi,4-model-b\0brcm,bcm2711\0"),
                Begin("aliases"),
                Prop("serial0", b"/soc/serial@7e201400\0"),
                End,
                Begin("chosen"),
                Prop("stdout-path", stdout.as_bytes()),
                End,
                Begin("memory@0"),
                Prop("device_type", b"memory\0"),
                Prop(
                    "reg",
                    &be(&[0, 0, 0x3b40_0000, 0, 0x4000_0000, 0x4000_0000]),
                ),
                End,
                Begin("memory@100000000"),
                Prop("device_type", b"memory\0"),
                Prop("reg", &be(&[1, 0, 0x8000_0000])),
                End,
                Begin("reserved-memory"),
                Prop("#address-cells", &two),
                Prop("#size-cells", &one),
                Prop("ranges", &[]),
                Begin("linux,cma"),
                Prop("reg", &be(&[0, 0x1000_0000, 0x0400_0000])),
                End,
                End,
                Begin("soc"),
                Prop("#address-cells", &one),
                Prop("#size-cells", &one),
                Prop("ranges", &be(&[0x7e00_0000, 0, 0xfe00_0000, 0x0180_0000])),
                Begin("gpio@7e200000"),
                Prop("compatible", b"brcm,bcm2711-gpio\0"),
                Prop("reg", &be(&[0x7e20_0000, 0xb4])),
                End,
                Begin("serial@7e201000"),
                Prop("compatible", b"arm,pl011\0arm,primecell\0"),
                Prop("reg", &be(&[0x7e20_1000, 0x200])),
                End,
                Begin("serial@7e201400"),
                Prop("compatible", b"arm,pl011\0arm,primecell\0"),
                Prop("reg", &be(&[0x7e20_1400, 0x200])),
                End,
                Begin("serial@7e215040"),
                Prop("compatible", b"brcm,bcm2835-aux-uart\0"),
                Prop("reg", &be(&[0x7e21_5040, 0x40])),
                End,
                End,
                End,
            ],
            &[(0, 0x1000)],
        )
    }

    #[test]
    fn reads_ram_reservations_gpio_and_the_stdout_pl011_through_ranges() {
        let b = read(&pi_like("serial0:115200n8\0")).unwrap();
        assert_eq!(b.uart, Some(0xfe20_1400));
        assert_eq!(b.gpio, Some(0xfe20_0000));
        assert_eq!(
            b.ram.as_slice(),
            [
                Range::new(0, 0x3b40_0000),
                Range::new(0x4000_0000, 0x4000_0000),
                Range::new(0x1_0000_0000, 0x8000_0000)
            ]
        );
        assert_eq!(
            b.reserved.as_slice(),
            [Range::new(0, 0x1000), Range::new(0x1000_0000, 0x0400_0000)]
        );
    }

    #[test]
    fn a_stdout_that_is_not_a_pl011_falls_back_to_the_first_pl011() {
        // Mainline Pi 4 trees: stdout-path = "serial1:115200n8", the mini UART.
        let b = read(&pi_like("/soc/serial@7e215040:115200n8\0")).unwrap();
        assert_eq!(b.uart, Some(0xfe20_1000));
        // A full path without the unit address works too.
        let b = read(&pi_like("/soc/serial\0")).unwrap();
        assert_eq!(b.uart, Some(0xfe20_1000), "first match by name wins");
        let b = read(&pi_like("/soc/serial@7e201400\0")).unwrap();
        assert_eq!(b.uart, Some(0xfe20_1400));
    }

    #[test]
    fn corrupt_or_ramless_trees_are_errors() {
        let mut blob = pi_like("serial0\0");
        blob[0] = 0;
        assert_eq!(read(&blob).unwrap_err(), BoardError::Corrupt);
        let ramless = build(&[Begin(""), Begin("chosen"), End, End], &[]);
        assert_eq!(read(&ramless).unwrap_err(), BoardError::NoMemory);
    }

    /// RAM 0..64 MiB and `/memreserve/` entries `memreserve`, with a child `reg` (if any)
    /// under a `/reserved-memory` node with 2 address cells, 1 size cell and `ranges`.
    fn with_reserved(memreserve: &[(u64, u64)], ranges: &[u8], child: Option<&[u8]>) -> Vec<u8> {
        let (two, one) = (be(&[2]), be(&[1]));
        let mem = be(&[0, 0, 0x400_0000]);
        let mut items = vec![
            Begin(""),
            Prop("#address-cells", &two),
            Prop("#size-cells", &one),
            Begin("memory@0"),
            Prop("device_type", b"memory\0"),
            Prop("reg", &mem),
            End,
            Begin("reserved-memory"),
            Prop("#address-cells", &two),
            Prop("#size-cells", &one),
            Prop("ranges", ranges),
            Begin("fw@500000"),
        ];
        if let Some(reg) = child {
            items.push(Prop("reg", reg));
        } else {
            items.push(Prop("size", &mem[8..]));
        }
        items.extend([End, End, End]);
        build(&items, memreserve)
    }

    #[test]
    fn reserved_memory_the_loader_cannot_account_for_stops_it() {
        let fw = be(&[0, 0x50_0000, 0x1000]);
        let fw = Some(&fw[..]);
        // 16 ranges in all are kept, every one of them.
        let fifteen: Vec<(u64, u64)> = (0..15)
            .map(|i| (0x1000_0000 + i * 0x1000, 0x1000))
            .collect();
        let b = read(&with_reserved(&fifteen, &[], fw)).unwrap();
        assert_eq!(b.reserved.as_slice().len(), 16);
        assert!(b
            .reserved
            .as_slice()
            .contains(&Range::new(0x50_0000, 0x1000)));
        // A 17th (here the /reserved-memory child, at 4 MiB + 1 MiB where a small kernel
        // would go) refuses the tree instead of being dropped.
        let mut sixteen = fifteen.clone();
        sixteen.push((0x1000_f000, 0x1000));
        assert_eq!(
            read(&with_reserved(&sixteen, &[], fw)).unwrap_err(),
            BoardError::TooManyReserved
        );
        // A reg that is not whole entries is refused, and so is one `ranges` does not cover.
        for reg in [be(&[0, 0x50_0000, 0x1000, 0]), be(&[0, 0x50_0000])] {
            assert_eq!(
                read(&with_reserved(&[], &[], Some(&reg))).unwrap_err(),
                BoardError::UnreadableReserved,
                "{reg:x?}"
            );
        }
        let first_mib = be(&[0, 0, 0, 0, 0x10_0000]);
        assert_eq!(
            read(&with_reserved(&[], &first_mib, fw)).unwrap_err(),
            BoardError::UnreadableReserved
        );
        // Translated through `ranges` when it covers the range.
        let low = be(&[0, 0x40_0000, 0, 0x80_0000, 0x20_0000]);
        let b = read(&with_reserved(&[], &low, fw)).unwrap();
        assert_eq!(b.reserved.as_slice(), [Range::new(0x90_0000, 0x1000)]);
        // No reg at all (a `size`-only region the OS allocates later) is nothing in use.
        let b = read(&with_reserved(&[], &[], None)).unwrap();
        assert_eq!(b.reserved.as_slice(), []);
    }

    #[test]
    #[ignore = "needs build/dtb/bcm2711-rpi-4-b.dtb: `make test` installs it and runs this with --include-ignored"]
    fn the_real_pi4_tree_when_present() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../build/dtb/bcm2711-rpi-4-b.dtb"
        );
        let blob = std::fs::read(path)
            .unwrap_or_else(|e| panic!("{path}: {e} (`bash qemu/install.sh dtb build`)"));
        // As shipped, `memory@0` has `reg = <0 0 0>`: the firmware (or QEMU) fills it in, and
        // a tree without RAM is refused rather than loaded into. The QEMU test in `tests/`
        // covers the filled-in tree.
        assert_eq!(read(&blob).unwrap_err(), BoardError::NoMemory);
    }
}
