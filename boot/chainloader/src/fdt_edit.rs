//! Writing `/chosen/bootargs` into a copy of a flattened device tree, without an allocator.
//!
//! The firmware (or QEMU) hands us a tree whose `/chosen/bootargs` came from `cmdline.txt` (or
//! `-append`). To select tests per run without touching the SD card, the host sends boot
//! arguments with the kernel and we rewrite the tree: copy it block by block into a new buffer,
//! replacing (or extending) the property's value, adding the property (and `/chosen`) if the
//! tree lacks them, and appending the name `bootargs` to the strings block if no property used
//! it yet.
//!
//! Format: Devicetree Specification v0.4, chapter 5 "Flattened Devicetree (DTB) Format":
//! a 40-byte header (5.2), the memory reservation block (5.3, 8-byte aligned, 16-byte entries
//! ending with a zero entry), the structure block (5.4: big-endian u32 tokens FDT_BEGIN_NODE
//! with a NUL-terminated name, FDT_PROP with `len`, `nameoff` and the value, FDT_NOP,
//! FDT_END_NODE, FDT_END; everything padded to 4 bytes) and the strings block (5.5).
//! Within a node, properties come before child nodes (5.4.2), so a new property is written
//! after the last existing one.

use crate::protocol::BootargsMode;

/// FDT header magic (5.2).
pub const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
const HEADER_LEN: usize = 40;
/// Deeper than any real tree: a corrupt blob must not run away.
const MAX_DEPTH: usize = 64;

/// Bytes the copy can grow by beyond the boot arguments themselves: a new `/chosen` node
/// (token, name, end: 16 bytes), a property header (12), the name `bootargs` in the strings
/// block (9), a separating space and a NUL, padding.
pub const GROWTH: usize = 64;

/// Why the tree could not be edited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EditError {
    /// Not a tree we understand (bad magic, version, or offsets/sizes outside the blob).
    BadHeader,
    /// The structure block is malformed (unknown token, runs off its end, too deep).
    BadStructure,
    /// The output buffer is too small.
    NoRoom,
    /// The boot arguments contain a NUL byte.
    BadArgs,
}

impl EditError {
    /// A number for the wire ([`crate::protocol::Nak::DeviceTree`]).
    pub const fn code(self) -> u64 {
        match self {
            EditError::BadHeader => 1,
            EditError::BadStructure => 2,
            EditError::NoRoom => 3,
            EditError::BadArgs => 4,
        }
    }

    pub const fn from_code(code: u64) -> EditError {
        match code {
            1 => EditError::BadHeader,
            2 => EditError::BadStructure,
            3 => EditError::NoRoom,
            _ => EditError::BadArgs,
        }
    }

    pub const fn describe(self) -> &'static str {
        match self {
            EditError::BadHeader => "its header is not one of a version 16/17 tree",
            EditError::BadStructure => "its structure block is malformed",
            EditError::NoRoom => "the edited tree would not fit the room reserved for it",
            EditError::BadArgs => "the boot arguments contain a NUL byte",
        }
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

const fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// The blob's total size from its header, if it looks like a tree.
pub fn total_size(blob: &[u8]) -> Option<usize> {
    (be32(blob, 0)? == FDT_MAGIC).then_some(())?;
    Some(be32(blob, 4)? as usize)
}

/// An output cursor that refuses to run past the buffer.
struct Out<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Out<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), EditError> {
        let end = self.at.checked_add(b.len()).ok_or(EditError::NoRoom)?;
        self.buf
            .get_mut(self.at..end)
            .ok_or(EditError::NoRoom)?
            .copy_from_slice(b);
        self.at = end;
        Ok(())
    }

    fn u32(&mut self, v: u32) -> Result<(), EditError> {
        self.bytes(&v.to_be_bytes())
    }

    fn pad_to(&mut self, align: usize) -> Result<(), EditError> {
        while self.at % align != 0 {
            self.bytes(&[0])?;
        }
        Ok(())
    }

    fn put_u32_at(&mut self, at: usize, v: u32) {
        self.buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
}

/// The parts of a source tree.
struct Source<'a> {
    blob: &'a [u8],
    rsvmap: &'a [u8],
    structs: &'a [u8],
    strings: &'a [u8],
}

fn split(blob: &[u8]) -> Result<Source<'_>, EditError> {
    let field = |i: usize| {
        be32(blob, i * 4)
            .map(|v| v as usize)
            .ok_or(EditError::BadHeader)
    };
    let total = total_size(blob).ok_or(EditError::BadHeader)?;
    let (off_struct, off_strings, off_rsvmap) = (field(2)?, field(3)?, field(4)?);
    let (version, last_comp) = (field(5)?, field(6)?);
    let (size_strings, size_struct) = (field(8)?, field(9)?);
    if total > blob.len() || total < HEADER_LEN || version < 16 || last_comp > 17 {
        return Err(EditError::BadHeader);
    }
    let blob = &blob[..total];
    let slice = |off: usize, len: usize| {
        off.checked_add(len)
            .and_then(|end| blob.get(off..end))
            .ok_or(EditError::BadHeader)
    };
    // The reservation map runs up to its zero entry (5.3).
    let mut end = off_rsvmap;
    loop {
        let entry = blob.get(end..end + 16).ok_or(EditError::BadHeader)?;
        end += 16;
        if entry.iter().all(|&b| b == 0) {
            break;
        }
    }
    Ok(Source {
        blob,
        rsvmap: &blob[off_rsvmap..end],
        structs: slice(off_struct, size_struct)?,
        strings: slice(off_strings, size_strings)?,
    })
}

/// The NUL-terminated string at `off` in the strings block.
fn string_at(strings: &[u8], off: usize) -> Option<&[u8]> {
    let s = strings.get(off..)?;
    let len = s.iter().position(|&b| b == 0)?;
    Some(&s[..len])
}

/// Where the string `name` already is in the strings block (any suffix match will do: a
/// `nameoff` may point into the middle of another string).
fn find_string(strings: &[u8], name: &[u8]) -> Option<usize> {
    strings
        .windows(name.len() + 1)
        .position(|w| &w[..name.len()] == name && w[name.len()] == 0)
}

/// Copies `src` into `dst` with `/chosen/bootargs` set from `args` as `mode` says, and returns
/// the new tree's length. `dst` should have `total_size(src) + args.len() + GROWTH` bytes.
/// With [`BootargsMode::Keep`] the tree is copied unchanged.
pub fn set_bootargs(
    src: &[u8],
    dst: &mut [u8],
    args: &[u8],
    mode: BootargsMode,
) -> Result<usize, EditError> {
    let s = split(src)?;
    if args.contains(&0) {
        // A NUL would end the string early: what the kernel saw would not be what was sent.
        return Err(EditError::BadArgs);
    }
    if mode == BootargsMode::Keep {
        let total = s.blob.len();
        dst.get_mut(..total)
            .ok_or(EditError::NoRoom)?
            .copy_from_slice(s.blob);
        return Ok(total);
    }
    let mut out = Out { buf: dst, at: 0 };
    out.bytes(&[0u8; HEADER_LEN])?;
    out.pad_to(8)?;
    let off_rsvmap = out.at;
    out.bytes(s.rsvmap)?;
    let off_struct = out.at;

    let (name_off, new_name) = match find_string(s.strings, b"bootargs") {
        Some(off) => (off, false),
        None => (s.strings.len(), true),
    };
    let prop = NewProp {
        name_off: u32::try_from(name_off).map_err(|_| EditError::BadHeader)?,
        args,
        mode,
    };
    walk(&s, &mut out, &prop)?;
    let size_struct = out.at - off_struct;
    let off_strings = out.at;
    out.bytes(s.strings)?;
    if new_name {
        out.bytes(b"bootargs\0")?;
    }
    let size_strings = out.at - off_strings;
    let total = out.at;

    let header = [
        FDT_MAGIC,
        total as u32,
        off_struct as u32,
        off_strings as u32,
        off_rsvmap as u32,
        17,
        16,
        be32(s.blob, 28).ok_or(EditError::BadHeader)?, // boot_cpuid_phys
        size_strings as u32,
        size_struct as u32,
    ];
    for (i, v) in header.into_iter().enumerate() {
        out.put_u32_at(i * 4, v);
    }
    Ok(total)
}

/// The property to write.
struct NewProp<'a> {
    name_off: u32,
    args: &'a [u8],
    mode: BootargsMode,
}

impl NewProp<'_> {
    /// Writes the property with `old` (the existing value, NUL-terminated or empty) kept in
    /// front if appending.
    fn write(&self, out: &mut Out<'_>, old: &[u8]) -> Result<(), EditError> {
        let old = match old.iter().position(|&b| b == 0) {
            Some(n) => &old[..n],
            None => old,
        };
        let keep_old = self.mode == BootargsMode::Append && !old.is_empty();
        let len = if keep_old { old.len() + 1 } else { 0 } + self.args.len() + 1;
        out.u32(FDT_PROP)?;
        out.u32(len as u32)?;
        out.u32(self.name_off)?;
        if keep_old {
            out.bytes(old)?;
            out.bytes(b" ")?;
        }
        out.bytes(self.args)?;
        out.bytes(&[0])?;
        out.pad_to(4)
    }
}

/// Copies the structure block token by token, editing `/chosen`.
fn walk(s: &Source<'_>, out: &mut Out<'_>, prop: &NewProp<'_>) -> Result<(), EditError> {
    let st = s.structs;
    let mut at = 0usize;
    let mut depth = 0usize;
    // Whether we are among /chosen's own properties (depth 2, before any child node).
    let mut in_chosen = false;
    let mut chosen_seen = false;
    let mut written = false;
    loop {
        let token = be32(st, at).ok_or(EditError::BadStructure)?;
        match token {
            FDT_BEGIN_NODE => {
                let name_start = at + 4;
                let name = string_at(st, name_start).ok_or(EditError::BadStructure)?;
                let next = name_start + pad4(name.len() + 1);
                if in_chosen && !written {
                    // /chosen's first child: its properties are over.
                    prop.write(out, &[])?;
                    written = true;
                }
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(EditError::BadStructure);
                }
                in_chosen = depth == 2 && name == b"chosen";
                chosen_seen |= in_chosen;
                out.bytes(st.get(at..next).ok_or(EditError::BadStructure)?)?;
                at = next;
            }
            FDT_END_NODE => {
                if depth == 0 {
                    return Err(EditError::BadStructure);
                }
                if depth == 2 && in_chosen && !written {
                    prop.write(out, &[])?;
                    written = true;
                }
                if depth == 1 && !chosen_seen {
                    // The root is closing and there was no /chosen: add one.
                    out.u32(FDT_BEGIN_NODE)?;
                    out.bytes(b"chosen\0\0")?;
                    prop.write(out, &[])?;
                    out.u32(FDT_END_NODE)?;
                    chosen_seen = true;
                    written = true;
                }
                in_chosen = false;
                depth -= 1;
                out.u32(FDT_END_NODE)?;
                at += 4;
            }
            FDT_PROP => {
                let len = be32(st, at + 4).ok_or(EditError::BadStructure)? as usize;
                let name_off = be32(st, at + 8).ok_or(EditError::BadStructure)? as usize;
                let value_start = at + 12;
                let next = value_start
                    .checked_add(pad4(len))
                    .ok_or(EditError::BadStructure)?;
                let value = st
                    .get(value_start..value_start + len)
                    .ok_or(EditError::BadStructure)?;
                let name = string_at(s.strings, name_off).ok_or(EditError::BadStructure)?;
                if in_chosen && name == b"bootargs" && !written {
                    prop.write(out, value)?;
                    written = true;
                } else if in_chosen && name == b"bootargs" {
                    // A duplicate: drop it, the first one carries the value.
                } else {
                    out.bytes(st.get(at..next).ok_or(EditError::BadStructure)?)?;
                }
                at = next;
            }
            FDT_NOP => {
                out.u32(FDT_NOP)?;
                at += 4;
            }
            FDT_END => {
                if depth != 0 || !written {
                    return Err(EditError::BadStructure);
                }
                out.u32(FDT_END)?;
                return Ok(());
            }
            _ => return Err(EditError::BadStructure),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A tiny FDT writer for tests (the format of the module documentation).

    use super::*;

    pub enum Item<'a> {
        Begin(&'a str),
        Prop(&'a str, &'a [u8]),
        End,
        Nop,
    }

    /// A tree from a token list, with `rsv` reservation entries.
    pub fn build(items: &[Item<'_>], rsv: &[(u64, u64)]) -> Vec<u8> {
        let mut strings: Vec<u8> = Vec::new();
        let mut st: Vec<u8> = Vec::new();
        let name_off =
            |strings: &mut Vec<u8>, name: &str| match find_string(strings, name.as_bytes()) {
                Some(o) => o as u32,
                None => {
                    let o = strings.len() as u32;
                    strings.extend_from_slice(name.as_bytes());
                    strings.push(0);
                    o
                }
            };
        for item in items {
            match item {
                Item::Begin(name) => {
                    st.extend_from_slice(&FDT_BEGIN_NODE.to_be_bytes());
                    st.extend_from_slice(name.as_bytes());
                    st.push(0);
                    while st.len() % 4 != 0 {
                        st.push(0);
                    }
                }
                Item::Prop(name, value) => {
                    let off = name_off(&mut strings, name);
                    st.extend_from_slice(&FDT_PROP.to_be_bytes());
                    st.extend_from_slice(&(value.len() as u32).to_be_bytes());
                    st.extend_from_slice(&off.to_be_bytes());
                    st.extend_from_slice(value);
                    while st.len() % 4 != 0 {
                        st.push(0);
                    }
                }
                Item::End => st.extend_from_slice(&FDT_END_NODE.to_be_bytes()),
                Item::Nop => st.extend_from_slice(&FDT_NOP.to_be_bytes()),
            }
        }
        st.extend_from_slice(&FDT_END.to_be_bytes());
        let mut rsvmap = Vec::new();
        for (a, s) in rsv.iter().chain([(0, 0)].iter()) {
            rsvmap.extend_from_slice(&a.to_be_bytes());
            rsvmap.extend_from_slice(&s.to_be_bytes());
        }
        let off_rsv = 48; // header padded to 8
        let off_struct = off_rsv + rsvmap.len();
        let off_strings = off_struct + st.len();
        let total = off_strings + strings.len();
        let mut blob = Vec::new();
        for v in [
            FDT_MAGIC,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            off_rsv as u32,
            17,
            16,
            0,
            strings.len() as u32,
            st.len() as u32,
        ] {
            blob.extend_from_slice(&v.to_be_bytes());
        }
        blob.resize(off_rsv, 0);
        blob.extend_from_slice(&rsvmap);
        blob.extend_from_slice(&st);
        blob.extend_from_slice(&strings);
        blob
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{build, Item::*};
    use super::*;
    use dtoolkit::fdt::Fdt;
    use dtoolkit::{Node, Property};

    fn edit(src: &[u8], args: &str, mode: BootargsMode) -> Vec<u8> {
        let mut dst = vec![0u8; src.len() + args.len() + GROWTH];
        let n = set_bootargs(src, &mut dst, args.as_bytes(), mode).unwrap();
        dst.truncate(n);
        dst
    }

    fn bootargs(blob: &[u8]) -> Option<String> {
        let fdt = Fdt::new(blob).expect("the edited tree parses");
        let chosen = fdt.find_node("/chosen")?;
        Some(chosen.property("bootargs")?.as_str().unwrap().to_string())
    }

    /// Everything but /chosen/bootargs, as text, to check nothing else changed.
    fn rest(blob: &[u8]) -> String {
        fn walk<'a>(n: dtoolkit::fdt::FdtNode<'a>, path: &str, out: &mut String) {
            for p in n.properties() {
                if !(path == "/chosen" && p.name() == "bootargs") {
                    out.push_str(&format!("{path}:{}={:?}\n", p.name(), p.value()));
                }
            }
            for c in n.children() {
                let child = format!("{}/{}", path.trim_end_matches('/'), c.name());
                out.push_str(&format!("node {child}\n"));
                walk(c, &child, out);
            }
        }
        let fdt = Fdt::new(blob).unwrap();
        let mut out = String::new();
        for r in fdt.memory_reservations() {
            out.push_str(&format!("rsv {:#x}+{:#x}\n", r.address(), r.size()));
        }
        walk(fdt.root(), "/", &mut out);
        out
    }

    fn sample() -> Vec<u8> {
        build(
            &[
                Begin(""),
                Prop("#address-cells", &[0, 0, 0, 2]),
                Prop("model", b"test board\0"),
                Begin("chosen"),
                Prop("stdout-path", b"serial0:115200n8\0"),
                Prop("bootargs", b"console=ttyAMA0 expect.cpus=4\0"),
                Nop,
                Begin("framebuffer@0"),
                Prop("status", b"okay\0"),
                End,
                End,
                Begin("memory@0"),
                Prop("device_type", b"memory\0"),
                End,
                End,
            ],
            &[(0, 0x1000)],
        )
    }

    #[test]
    fn append_keeps_the_old_arguments_first() {
        let src = sample();
        let out = edit(&src, "ktest=boot.*", BootargsMode::Append);
        assert_eq!(
            bootargs(&out).unwrap(),
            "console=ttyAMA0 expect.cpus=4 ktest=boot.*"
        );
        assert_eq!(rest(&out), rest(&src));
    }

    #[test]
    fn replace_drops_them() {
        let src = sample();
        let out = edit(&src, "ktest=*", BootargsMode::Replace);
        assert_eq!(bootargs(&out).unwrap(), "ktest=*");
        assert_eq!(rest(&out), rest(&src));
        // Keep copies the tree byte for byte.
        assert_eq!(edit(&src, "ignored", BootargsMode::Keep), src);
    }

    #[test]
    fn a_missing_property_is_added_before_chosens_children() {
        let src = build(
            &[
                Begin(""),
                Begin("chosen"),
                Prop("stdout-path", b"serial0\0"),
                Begin("child"),
                End,
                End,
                End,
            ],
            &[],
        );
        let out = edit(&src, "ktest=smp.*", BootargsMode::Append);
        assert_eq!(bootargs(&out).unwrap(), "ktest=smp.*");
        assert_eq!(rest(&out), rest(&src));
    }

    #[test]
    fn a_missing_chosen_node_is_added() {
        let src = build(
            &[Begin(""), Prop("model", b"m\0"), Begin("cpus"), End, End],
            &[(0x10_0000, 0x2000)],
        );
        assert_eq!(bootargs(&src), None);
        let out = edit(&src, "a=1 b", BootargsMode::Replace);
        assert_eq!(bootargs(&out).unwrap(), "a=1 b");
        let fdt = Fdt::new(&out).unwrap();
        assert_eq!(fdt.root().children().count(), 2);
        assert!(rest(&out).starts_with("rsv 0x100000+0x2000\n"));
    }

    #[test]
    fn bootargs_elsewhere_are_not_touched() {
        // A `bootargs` property outside /chosen (and a /chosen below the root) stays as is.
        let src = build(
            &[
                Begin(""),
                Begin("soc"),
                Prop("bootargs", b"not me\0"),
                Begin("chosen"),
                End,
                End,
                Begin("chosen"),
                End,
                End,
            ],
            &[],
        );
        let out = edit(&src, "x=1", BootargsMode::Append);
        assert_eq!(bootargs(&out).unwrap(), "x=1");
        let fdt = Fdt::new(&out).unwrap();
        let soc = fdt.find_node("/soc").unwrap();
        assert_eq!(
            soc.property("bootargs").unwrap().as_str().unwrap(),
            "not me"
        );
        assert!(fdt
            .find_node("/soc/chosen")
            .unwrap()
            .property("bootargs")
            .is_none());
    }

    #[test]
    fn too_small_a_buffer_and_corrupt_trees_are_errors_not_panics() {
        let src = sample();
        let mut small = vec![0u8; src.len()];
        let long = "k".repeat(200);
        assert_eq!(
            set_bootargs(&src, &mut small, long.as_bytes(), BootargsMode::Append),
            Err(EditError::NoRoom)
        );
        let mut dst = vec![0u8; src.len() + 256];
        assert_eq!(
            set_bootargs(&src, &mut dst, b"a\0b", BootargsMode::Replace),
            Err(EditError::BadArgs)
        );
        let mut bad = src.clone();
        bad[0] ^= 1;
        assert_eq!(
            set_bootargs(&bad, &mut dst, b"", BootargsMode::Append),
            Err(EditError::BadHeader)
        );
        // Every truncation and every single corrupted byte: an error or a tree that parses.
        for cut in 0..src.len() {
            let _ = set_bootargs(&src[..cut], &mut dst, b"x", BootargsMode::Append);
        }
        for i in 0..src.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = src.clone();
                b[i] ^= flip;
                if let Ok(n) = set_bootargs(&b, &mut dst, b"x", BootargsMode::Append) {
                    assert!(n <= dst.len());
                }
            }
        }
    }

    #[test]
    #[ignore = "needs build/dtb/bcm2711-rpi-4-b.dtb: `make test` installs it and runs this with --include-ignored"]
    fn the_real_pi4_tree_when_present() {
        // The mainline tree QEMU raspi4b and our SD card use (fetched by `make dtb`).
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../build/dtb/bcm2711-rpi-4-b.dtb"
        );
        let src = std::fs::read(path)
            .unwrap_or_else(|e| panic!("{path}: {e} (`bash qemu/install.sh dtb build`)"));
        let out = edit(&src, "ktest=* seed=7", BootargsMode::Append);
        assert_eq!(bootargs(&out).unwrap(), "ktest=* seed=7");
        assert_eq!(rest(&out), rest(&src));
    }
}
