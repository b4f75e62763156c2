//! `stress [--seed N] [--accesses N] [--cpus N] [--devices N] [--spaces N] [--slots N]
//! [--skip-invalidation] [--expect-stale]`: one stress run and its summary (see the library).
//! Exits 0 if the run passed; with `--expect-stale`, if it failed with stale uses seen.

use std::process::ExitCode;

use shootdown_stress::{run, Params};

const USAGE: &str =
    "usage: stress [--seed N] [--accesses N] [--cpus N] [--devices N] [--spaces N] \
                     [--slots N] [--skip-invalidation] [--expect-stale]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (params, expect_stale) = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("stress: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let report = match run(&params) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stress: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{report}");
    let ok = if expect_stale {
        let caught = !report.passed() && report.stale() > 0;
        println!(
            "stress: with the invalidation skipped the run must fail with stale uses: {}",
            if caught { "it did" } else { "IT DID NOT" }
        );
        caught
    } else {
        report.passed()
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn parse(args: &[String]) -> Result<(Params, bool), String> {
    let mut p = Params::default();
    let mut expect_stale = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            v.replace('_', "")
                .parse()
                .map_err(|_| format!("{name}: `{v}` is not a number"))
        };
        match flag.as_str() {
            "--seed" => p.seed = number("--seed")?,
            "--accesses" => p.accesses = number("--accesses")?,
            "--cpus" => p.cpus = number("--cpus")? as usize,
            "--devices" => p.devices = number("--devices")? as usize,
            "--spaces" => p.spaces = number("--spaces")? as usize,
            "--slots" => p.slots_per_cpu = number("--slots")? as usize,
            "--skip-invalidation" => p.skip_invalidation = true,
            "--expect-stale" => expect_stale = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok((p, expect_stale))
}
