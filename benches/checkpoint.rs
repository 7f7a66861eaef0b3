//! `cargo bench`: the same as `ferry bench checkpoint`, through the ferry binary cargo has
//! just built (timings belong in a benchmark, not in tests). Arguments after `--` go to
//! it: `cargo bench -- --size 1G --compress none`. Needs root and CRIU, as the command does.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    // cargo passes `--bench` to every bench target; the rest are the user's.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let status = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["bench", "checkpoint"])
        .args(&args)
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("ferry bench checkpoint {}: {s}", args.join(" "));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot run {}: {e}", env!("CARGO_BIN_EXE_ferry"));
            ExitCode::FAILURE
        }
    }
}
