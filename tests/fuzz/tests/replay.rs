//! Runs every committed input of every fuzz target on the stable toolchain: the seed corpora
//! (`corpus/<target>/`), every input that once failed (`regressions/<target>/`), and, when they
//! exist, the seeds `make fuzz` builds (`build/fuzz/seeds/<target>/`: QEMU's device trees and
//! the Pi 4's, never committed). A failure names the file.

use std::fs;
use std::path::{Path, PathBuf};

use shootdown_fuzz::{seeds, TARGETS};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

fn replay(dir: &Path, run: fn(&[u8])) -> usize {
    let inputs = files(dir);
    for path in &inputs {
        let data = fs::read(path).unwrap();
        eprintln!("replaying {}", path.display());
        run(&data);
    }
    inputs.len()
}

#[test]
fn every_seed_passes() {
    for t in &TARGETS {
        let n = replay(&crate_dir().join("corpus").join(t.name), t.run);
        assert!(n > 0, "target {} has no seed corpus", t.name);
    }
}

#[test]
fn every_regression_input_passes() {
    for t in &TARGETS {
        replay(&crate_dir().join("regressions").join(t.name), t.run);
    }
}

#[test]
fn build_time_seeds_pass_when_present() {
    let build = crate_dir().join("../../build/fuzz/seeds");
    for t in &TARGETS {
        replay(&build.join(t.name), t.run);
    }
    // The harness's own KTAP fixtures are KTAP seeds too.
    replay(&crate_dir().join("../fixtures"), shootdown_fuzz::ktap::fuzz);
    if let Some(dtb) = std::env::var_os("SHOOTDOWN_DTB") {
        let path = crate_dir().join("../..").join(dtb);
        if let Ok(data) = fs::read(&path) {
            eprintln!("replaying {}", path.display());
            shootdown_fuzz::dt::fuzz(&data);
        }
    }
}

/// The committed seeds are what `seeds.rs` generates (`SHOOTDOWN_WRITE_SEEDS=1` rewrites them).
#[test]
fn committed_seeds_are_current() {
    let write = std::env::var_os("SHOOTDOWN_WRITE_SEEDS").is_some();
    for t in &TARGETS {
        let dir = crate_dir().join("corpus").join(t.name);
        for (name, data) in seeds::seeds(t.name) {
            let path = dir.join(&name);
            if write {
                fs::create_dir_all(&dir).unwrap();
                fs::write(&path, &data).unwrap();
            } else {
                assert_eq!(
                    fs::read(&path).ok().as_deref(),
                    Some(&data[..]),
                    "{} is missing or stale: SHOOTDOWN_WRITE_SEEDS=1 cargo test -p shootdown-fuzz",
                    path.display()
                );
            }
        }
    }
}
