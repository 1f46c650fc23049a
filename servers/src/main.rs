//! The `server` binary: parses flags, installs the request log, and hands over to the
//! I/O model chosen with `--variant`.

use std::process::ExitCode;

use clap::Parser;
use servers::cli::Args;
use servers::metrics::METRICS;
use servers::{io, logging};

fn main() -> ExitCode {
    let args = Args::parse();
    let log_guard = match logging::init(args.log, &args.log_file) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("server: {error:#}");
            return ExitCode::from(2);
        }
    };
    METRICS.set_variant(args.variant.name());
    let result = io::run(&args);
    // Written out before exit: in buffered mode this is the last batch of request lines.
    drop(log_guard);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("server: {error:#}");
            ExitCode::FAILURE
        }
    }
}
