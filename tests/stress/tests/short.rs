//! The short stress of `make test`: a million device accesses against CPU threads changing the
//! shared address spaces must see no stale use and lose no invalidation; the same run with the
//! driver's invalidation skipped must fail, caught by every check that can see it.

use shootdown_stress::{run, Params};

/// At least this many device accesses per short run.
const SHORT: u64 = 1_000_000;

/// The seed: `STRESS_SEED` to replay another, else 1. A value that is not a number stops the
/// test (run as seed 1 instead, a replay would pass without replaying anything).
fn params() -> Params {
    let seed = std::env::var("STRESS_SEED").map_or(1, |s| {
        s.replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("STRESS_SEED={s:?} is not a seed (a decimal number)"))
    });
    Params {
        seed,
        accesses: SHORT,
        ..Params::default()
    }
}

#[test]
fn a_million_device_accesses_see_no_stale_translation() {
    let report = run(&params()).unwrap();
    println!("{report}");
    assert!(report.accesses >= SHORT, "{report}");
    assert!(report.maps > 0 && report.unmaps > 0 && report.protects > 0 && report.inserts > 0);
    // Runs needing several range TLBIs happened, and the free cover sent some as one.
    assert!(
        report.long_runs > 0 && report.covered_invalidations > 0,
        "{report}"
    );
    assert!(report.passed(), "{report}");
}

#[test]
fn without_invalidation_the_short_run_fails() {
    let report = run(&Params {
        skip_invalidation: true,
        ..params()
    })
    .unwrap();
    println!("{report}");
    assert!(!report.passed());
    assert!(
        report.model_stale > 0,
        "the model's checker saw nothing: {report}"
    );
    assert!(
        report.after_return > 0 && report.wrong_data > 0,
        "the devices' own checks saw nothing: {report}"
    );
}
