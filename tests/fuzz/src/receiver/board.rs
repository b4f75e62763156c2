//! The loader's world in the fuzz target: the serial line plays the host's program
//! ([`FuzzLink`]), and 8 MiB of RAM ([`FuzzRam`]) has the loader and the firmware's device tree
//! in it. Both write what happens into one [`Timeline`], which the oracles read afterwards.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::OnceLock;

use shootdown_chainloader::fdt_edit::{self, GROWTH};
use shootdown_chainloader::placement::{self, Placement, Range};
use shootdown_chainloader::protocol::{BootargsMode, Header, Nak, Refusal, Sink};
use shootdown_chainloader::receiver::{Link, Memory};

use crate::fdt;

pub const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
/// RAM: 8 MiB at 0. The loader runs at 2 MiB, the firmware's tree is at 3 MiB: the one free
/// 2 MiB-aligned gap is 4..8 MiB.
pub const RAM: Range = Range::new(0, 8 * MIB);
pub const LOADER: Range = Range::new(2 * MIB, 0x2_0000);
pub const DTB_AT: u64 = 3 * MIB;
pub const GAP_START: u64 = 4 * MIB;
pub const GAP: u64 = 4 * MIB;

/// What happened, in order. `at` is how many bytes the loader had read by then.
#[derive(Debug, Clone)]
pub enum Event {
    /// A complete line the loader wrote (without its line ending).
    Line { at: usize, text: String },
    /// The loader planned a slot for a header (or was refused one); the line answering it
    /// follows.
    Place {
        header: Header,
        result: Result<Placement, Refusal>,
    },
    /// The loader asked for the bytes of the kernel's slot.
    KernelBytes { base: u64, len: usize },
    /// The loader asked for the device tree copy to be written.
    Prepare {
        placement: Placement,
        header: Header,
        bootargs: Vec<u8>,
    },
}

pub type Timeline = Rc<RefCell<Vec<Event>>>;

/// One step on the line.
#[derive(Debug, Clone)]
pub enum Step {
    Send(VecDeque<u8>),
    Silence,
    LineErrors(u32),
}

/// The serial line: plays the steps, then times out; records what the loader writes.
pub struct FuzzLink {
    steps: VecDeque<Step>,
    /// Every byte the loader read.
    pub delivered: Vec<u8>,
    errors: u32,
    partial: Vec<u8>,
    /// Reads after the last step.
    pub overrun: u32,
    timeline: Timeline,
}

impl FuzzLink {
    pub fn new(steps: Vec<Step>, timeline: Timeline) -> Self {
        FuzzLink {
            steps: steps.into(),
            delivered: Vec::new(),
            errors: 0,
            partial: Vec::new(),
            overrun: 0,
            timeline,
        }
    }

    /// The last `n` lines the loader wrote.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let events = self.timeline.borrow();
        let mut lines: Vec<String> = events
            .iter()
            .rev()
            .filter_map(|e| match e {
                Event::Line { text, .. } => Some(text.clone()),
                _ => None,
            })
            .take(n)
            .collect();
        lines.reverse();
        lines
    }

    /// True once every step was played.
    pub fn done(&self) -> bool {
        self.steps
            .iter()
            .all(|s| matches!(s, Step::Send(bytes) if bytes.is_empty()))
    }
}

impl Sink for FuzzLink {
    fn put(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let text = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_string();
                self.partial.clear();
                self.timeline.borrow_mut().push(Event::Line {
                    at: self.delivered.len(),
                    text,
                });
            } else {
                self.partial.push(b);
            }
        }
    }
}

impl Link for FuzzLink {
    fn read_byte(&mut self, _timeout_ms: u32) -> Option<u8> {
        loop {
            match self.steps.front_mut() {
                None => {
                    self.overrun += 1;
                    return None;
                }
                Some(Step::Silence) => {
                    self.steps.pop_front();
                    return None;
                }
                Some(Step::LineErrors(n)) => {
                    self.errors += *n;
                    self.steps.pop_front();
                }
                Some(Step::Send(bytes)) => match bytes.pop_front() {
                    Some(b) => {
                        self.delivered.push(b);
                        return Some(b);
                    }
                    None => {
                        self.steps.pop_front();
                    }
                },
            }
        }
    }

    fn take_errors(&mut self) -> u32 {
        std::mem::take(&mut self.errors)
    }
}

/// The firmware's device tree: `/chosen/bootargs` set.
pub fn firmware_tree() -> &'static [u8] {
    static TREE: OnceLock<Vec<u8>> = OnceLock::new();
    TREE.get_or_init(|| {
        let root = fdt::Node::new("")
            .child(fdt::Node::new("chosen").string("bootargs", "console=serial0"));
        fdt::build(&root, &[])
    })
}

/// 8 MiB of RAM with the loader and the firmware's tree in it.
pub struct FuzzRam {
    pub ram: Vec<u8>,
    timeline: Timeline,
}

thread_local! {
    /// One RAM per thread, reused: 8 MiB zeroed for every input would cost more than the
    /// input (libFuzzer runs under AddressSanitizer). A run writes only the kernel's slot and
    /// the tree copy, and reads either only after writing it; the firmware's tree is put back.
    static SPARE: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

impl Drop for FuzzRam {
    fn drop(&mut self) {
        let ram = std::mem::take(&mut self.ram);
        SPARE.with(|s| *s.borrow_mut() = Some(ram));
    }
}

impl FuzzRam {
    pub fn new(timeline: Timeline) -> Self {
        let mut ram = SPARE
            .with(|s| s.borrow_mut().take())
            .unwrap_or_else(|| vec![0u8; RAM.size as usize]);
        let tree = firmware_tree();
        ram[DTB_AT as usize..DTB_AT as usize + tree.len()].copy_from_slice(tree);
        FuzzRam { ram, timeline }
    }

    /// What must not be touched.
    pub fn busy() -> [Range; 3] {
        [
            placement::LOW_RESERVED,
            LOADER,
            Range::new(DTB_AT, firmware_tree().len() as u64),
        ]
    }

    fn room(h: &Header) -> u64 {
        match h.mode {
            BootargsMode::Keep => 0,
            _ => (firmware_tree().len() + h.bootargs_len as usize + GROWTH) as u64,
        }
    }
}

impl Memory for FuzzRam {
    fn max_footprint(&self) -> u64 {
        placement::largest(&[RAM], &Self::busy(), 0)
    }

    fn place(&mut self, h: &Header) -> Result<Placement, Refusal> {
        let result = placement::plan(&[RAM], &Self::busy(), h.footprint(), Self::room(h))
            .map_err(|max| Refusal::new(Nak::TooBig, h.footprint(), max));
        self.timeline
            .borrow_mut()
            .push(Event::Place { header: *h, result });
        result
    }

    fn dtb_for(&self, p: &Placement, h: &Header) -> u64 {
        match h.mode {
            BootargsMode::Keep => DTB_AT,
            _ => p.dtb_copy,
        }
    }

    fn kernel_bytes(&mut self, p: &Placement, len: usize) -> &mut [u8] {
        self.timeline.borrow_mut().push(Event::KernelBytes {
            base: p.kernel,
            len,
        });
        // A slot outside RAM is the oracle's to report (it reads the event first): hand out
        // nothing rather than panic here.
        let start = p.kernel as usize;
        match self.ram.get_mut(start..start.saturating_add(len)) {
            Some(s) => s,
            None => &mut [],
        }
    }

    fn prepare(&mut self, p: &Placement, h: &Header, args: &[u8]) -> Result<(), Refusal> {
        self.timeline.borrow_mut().push(Event::Prepare {
            placement: *p,
            header: *h,
            bootargs: args.to_vec(),
        });
        if h.mode == BootargsMode::Keep {
            return Ok(());
        }
        let tree = firmware_tree();
        let room = (p.dtb_copy as usize)..(p.dtb_copy + p.dtb_room) as usize;
        let dst = self
            .ram
            .get_mut(room)
            .ok_or(Refusal::new(Nak::DeviceTree, 0, 0))?;
        fdt_edit::set_bootargs(tree, dst, args, h.mode)
            .map(|_| ())
            .map_err(|e| Refusal::new(Nak::DeviceTree, e.code(), 0))
    }
}
