//! `fuzz-replay <target> <file>...`: runs inputs through a fuzz target on the stable toolchain
//! and reports each (a crash found by `make fuzz` is reproduced with this, then committed under
//! `tests/fuzz/regressions/<target>/`). For `aspace` and `receiver`, prints the program and
//! what the oracles said.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((target, files)) = args.split_first() else {
        eprintln!("usage: fuzz-replay <aspace|smmu_codec|dt|ktap|sdcl|receiver> <file>...");
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
        use shootdown_fuzz::{aspace, receiver};
        // The program and the oracles' verdict, for the targets that can say more than ok.
        let explained = match t.name {
            "aspace" => Some((
                aspace::describe(&data),
                aspace::run(&data)
                    .map(|s| format!("{s:?}"))
                    .map_err(|v| v.to_string()),
            )),
            "receiver" => Some((
                receiver::describe(&data),
                receiver::run(&data).map(|s| format!("{s:?}")),
            )),
            _ => None,
        };
        match explained {
            Some((program, verdict)) => {
                println!("{f}:\n{program}");
                match verdict {
                    Ok(s) => println!("  ok: {s}"),
                    Err(v) => {
                        println!("  VIOLATION: {v}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            None => {
                (t.run)(&data);
                println!("{f}: ok");
            }
        }
    }
    ExitCode::SUCCESS
}
