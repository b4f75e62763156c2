//! The `aspace` oracles notice a broken SMMU driver: the seed programs pass with the real
//! driver (`replay.rs`) and fail, naming the stale translation, when the driver skips its
//! invalidations or its CMD_SYNC (debug knobs, never on by default).

use std::path::PathBuf;

use shootdown_fuzz::aspace::{run, run_with, Knobs};

fn seed(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus/aspace")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_seeds_pass_with_the_real_driver() {
    for name in ["seed-basic", "seed-blocks-2m", "seed-block-1g"] {
        let summary = run(&seed(name)).unwrap_or_else(|v| panic!("{name}: {v}"));
        assert!(
            summary.dma_checks > 0 && summary.ok > 0,
            "{name}: {summary:?}"
        );
    }
}

#[test]
fn a_driver_that_skips_invalidations_is_caught() {
    let knobs = Knobs {
        skip_smmu_invalidation: true,
        ..Knobs::default()
    };
    for name in ["seed-basic", "seed-blocks-2m", "seed-block-1g"] {
        let v = run_with(&seed(name), knobs).expect_err(name);
        assert!(v.what.contains("coherence checker caught"), "{name}: {v}");
    }
}

#[test]
fn a_driver_that_forgets_cmd_sync_is_caught() {
    let knobs = Knobs {
        skip_smmu_sync: true,
        ..Knobs::default()
    };
    let v = run_with(&seed("seed-basic"), knobs).expect_err("skipped CMD_SYNC went unnoticed");
    assert!(v.what.contains("coherence checker caught"), "{v}");
}
