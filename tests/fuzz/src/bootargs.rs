//! Target `bootargs`: the kernel's boot-argument parser (`shootdown::board::bootargs`) on
//! arbitrary command lines, as a device tree's `/chosen/bootargs` may hold them. Whatever the
//! line: no panic; every rejection names a key the line gave, in a message that starts with
//! `bootargs:` and shows that key; an unknown key never stops the boot; the same line parses
//! the same way twice; and what was accepted renders to a line that parses back to the same
//! arguments (with nothing rejected but the same contradictions).

use shootdown::board::bootargs::{BootArgs, Problem};

/// Parses `data` (as the kernel reads the tree's string: invalid UTF-8 replaced) and checks it.
pub fn fuzz(data: &[u8]) {
    let cmdline = String::from_utf8_lossy(data);
    let parsed = BootArgs::parse(&cmdline);
    let unquoted = cmdline.replace('"', "");
    for e in &parsed.errors {
        let message = e.to_string();
        assert!(
            message.starts_with("bootargs: ") && message.contains(&e.shown_key()),
            "a rejection that does not name its key `{}`: {message}",
            e.key
        );
        assert!(
            unquoted.contains(e.key.as_str()),
            "rejected key `{}` is not in the line {cmdline:?}",
            e.key
        );
        if e.problem == Problem::UnknownKey {
            assert!(!e.is_fatal(), "an unknown key stops the boot: {message}");
        }
    }
    assert_eq!(BootArgs::parse(&cmdline), parsed, "two parses differ");
    let rendered = parsed.args.render();
    let again = BootArgs::parse(&rendered);
    assert_eq!(
        again.args, parsed.args,
        "{cmdline:?} renders as {rendered:?}, which parses differently"
    );
    assert!(
        again
            .errors
            .iter()
            .all(|e| matches!(e.problem, Problem::Conflict(_))),
        "the rendered line {rendered:?} is refused: {:?}",
        again.errors
    );
}
