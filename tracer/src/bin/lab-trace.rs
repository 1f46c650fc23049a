//! Standalone `lab trace` (the same as the `lab` binary's subcommand), for the tracer's
//! tests and for use before `lab` is built.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "lab-trace", version)]
struct Cli {
    #[command(flatten)]
    args: tracer::cli::TraceArgs,
}

fn main() -> ExitCode {
    match tracer::cli::run(Cli::parse().args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lab trace: {e:#}");
            ExitCode::FAILURE
        }
    }
}
