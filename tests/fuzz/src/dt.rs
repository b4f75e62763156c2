//! Target `dt`: the device-tree reader on corrupted blobs. Whatever the bytes, `parse` returns
//! a [`BoardInfo`] or a [`DtError`] (with a message), never panics, never loops; and what the
//! kernel computes next from a parsed tree (RAM size, usable RAM, boot arguments) cannot panic
//! either.

use shootdown::board::dt::{self, BoardInfo};
use shootdown::board::BootArgs;

/// Parses `data` as a device tree blob and uses the result the way the kernel's boot does.
pub fn fuzz(data: &[u8]) {
    let _ = dt::check_header(data);
    match dt::parse(data) {
        Ok(info) => use_info(&info),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn use_info(info: &BoardInfo) {
    let _ = info.memory_bytes();
    let usable = dt::usable_ram(&info.memory, &info.reserved, &[]);
    // Overlapping /memory nodes are passed on (the frame allocator refuses them with an error);
    // from disjoint RAM, usable RAM is disjoint and sorted.
    let disjoint = |v: &[dt::Range]| v.windows(2).all(|w| w[0].end() <= w[1].base);
    if disjoint(&info.memory) {
        assert!(disjoint(&usable), "usable RAM ranges overlap: {usable:?}");
    }
    assert!(
        usable.windows(2).all(|w| w[0].base <= w[1].base),
        "{usable:?} is not sorted"
    );
    for r in &usable {
        assert!(
            r.size > 0 && r.base % 4096 == 0 && r.size % 4096 == 0,
            "usable RAM range {r:?} is empty or not page aligned"
        );
        assert!(
            info.memory
                .iter()
                .any(|m| m.base <= r.base && r.end() <= m.end()),
            "usable RAM {r:?} is not inside the RAM the tree describes: {:?}",
            info.memory
        );
    }
    let parsed = BootArgs::parse(&info.bootargs);
    for e in &parsed.errors {
        let _ = (e.to_string(), e.is_fatal());
    }
}
