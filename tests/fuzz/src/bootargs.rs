//! Target `bootargs`: the kernel's boot-argument parser (`shootdown::board::bootargs`) on
//! arbitrary `/chosen/bootargs` bytes, decoded by the kernel's own decoder
//! ([`shootdown::board::dt::bootargs_text`]). Whatever the bytes: no panic; every UTF-8 string
//! of the property reaches the line; an unknown key never stops the boot; the same line parses
//! the same way twice; what was accepted renders to a line that parses back to the same
//! arguments. On lines of plain words (no quotes), where the tokens are plain to see, also:
//! every rejection names the key of one of the words, and a rejected word changes nothing
//! (the line without it parses to the same arguments).

use shootdown::board::bootargs::{BootArgs, Problem};
use shootdown::board::dt::bootargs_text;

/// Decodes `data` as the kernel decodes the property, parses it and checks it.
pub fn fuzz(data: &[u8]) {
    let cmdline = bootargs_text(data);
    for piece in data.split(|&b| b == 0) {
        if let Ok(text) = core::str::from_utf8(piece) {
            assert!(cmdline.contains(text), "{text:?} lost from {cmdline:?}");
        }
    }
    let parsed = BootArgs::parse(&cmdline);
    for e in &parsed.errors {
        if e.problem == Problem::UnknownKey {
            assert!(!e.is_fatal(), "an unknown key stops the boot: {e}");
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
    if !cmdline.contains('"') {
        check_plain_words(&cmdline);
    }
}

/// A line without quotes is its whitespace-separated words, each `key` or `key=value`.
fn check_plain_words(cmdline: &str) {
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    let key_of = |w: &str| w.split_once('=').map_or(w, |(k, _)| k).to_owned();
    let parsed = BootArgs::parse(cmdline);
    let mut refused = Vec::new();
    for e in &parsed.errors {
        if matches!(e.problem, Problem::Conflict(_)) {
            continue;
        }
        assert!(
            words.iter().any(|w| key_of(w) == e.key),
            "rejected key {:?} is no word's key in {cmdline:?}",
            e.key
        );
        refused.push(e.key.clone());
    }
    // Drop every word of a refused key whose value would also be refused alone: what is left
    // must parse to the same arguments (a refused value set nothing, not even half).
    let kept: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| {
            !refused.contains(&key_of(w))
                || BootArgs::parse(w)
                    .errors
                    .iter()
                    .all(|e| matches!(e.problem, Problem::Conflict(_)))
        })
        .collect();
    let without = BootArgs::parse(&kept.join(" "));
    assert_eq!(
        without.args, parsed.args,
        "{cmdline:?}: dropping the refused words {refused:?} changes what was accepted"
    );
}
