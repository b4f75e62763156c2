//! `fuzz-replay <target> <file>...`: runs inputs through a fuzz target on the stable toolchain
//! and reports each (a crash found by `make fuzz` is reproduced with this, then committed under
//! `tests/fuzz/regressions/<target>/`). For `aspace`, prints the program and what the oracles
//! said.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((target, files)) = args.split_first() else {
        eprintln!("usage: fuzz-replay <aspace|smmu_codec|dt|ktap|sdcl> <file>...");
        return ExitCode::from(2);
    };
    let Some(t) = shootdown_fuzz::TARGETS.iter().find(|t| t.name == target) else {
        eprintln!("fuzz-replay: no target {target}");
        return ExitCode::from(2);
    };
    for f in files {
        let data = match std::fs::read(f) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("fuzz-replay: {f}: {e}");
                return ExitCode::from(2);
            }
        };
        if t.name == "aspace" {
            println!("{f}:\n{}", shootdown_fuzz::aspace::describe(&data));
            match shootdown_fuzz::aspace::run(&data) {
                Ok(s) => println!("  ok: {s:?}"),
                Err(v) => {
                    println!("  VIOLATION: {v}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            (t.run)(&data);
            println!("{f}: ok");
        }
    }
    ExitCode::SUCCESS
}
