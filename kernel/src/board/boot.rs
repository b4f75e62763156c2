//! The facts of this boot, set once by the composition root and read-only afterwards (like
//! Linux's `of_root`): the board the device tree describes, the boot arguments, and where the
//! kernel and the tree were loaded. Subsystems get what they need as arguments at `init`; these
//! are for the tests, the workloads and the banner.

use super::{BoardInfo, BootArgs};

static BOARD: spin::Once<BoardInfo> = spin::Once::new();
static BOOTARGS: spin::Once<BootArgs> = spin::Once::new();
static BOOT: spin::Once<BootFacts> = spin::Once::new();

/// Facts about this boot that tests and the banner report.
#[derive(Debug, Clone, Copy)]
pub struct BootFacts {
    /// Exception level the kernel was entered at (1 or 2).
    pub entered_el: u64,
    /// Physical address the image was loaded at.
    pub load_pa: u64,
    /// Physical address of the device tree.
    pub dtb_pa: u64,
    /// Its size.
    pub dtb_size: u64,
}

/// Records this boot's facts (once; later calls keep the first) and returns the board.
pub fn init(info: BoardInfo, args: BootArgs, facts: BootFacts) -> &'static BoardInfo {
    BOOT.call_once(|| facts);
    BOOTARGS.call_once(|| args);
    BOARD.call_once(|| info)
}

/// The board as the device tree describes it.
pub fn info() -> &'static BoardInfo {
    BOARD
        .get()
        .expect("board::info() before the device tree was read")
}

/// The boot arguments.
pub fn bootargs() -> &'static BootArgs {
    BOOTARGS
        .get()
        .expect("bootargs() before the device tree was read")
}

/// How this boot went.
pub fn boot_facts() -> &'static BootFacts {
    BOOT.get().expect("boot_facts() before boot")
}
