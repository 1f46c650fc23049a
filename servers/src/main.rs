//! The `server` binary: parses flags, installs the request log, and hands over to the
//! I/O model chosen with `--variant`.

use std::process::ExitCode;

use clap::Parser;
use servers::cli::Args;
use servers::metrics::METRICS;
use servers::{io, logging};

/// mimalloc instead of glibc's malloc: see the comment in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    // Knobs that do not fit the variant are usage errors, like a wrong flag.
    if let Err(error) = args.knobs().and_then(|_| args.split_writes()) {
        eprintln!("server: {error}");
        return ExitCode::from(2);
    }
    let log_guard = match logging::init(args.log, &args.log_file) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("server: {error:#}");
            return ExitCode::from(2);
        }
    };
    METRICS.set_variant(args.variant.name());
    servers::profile::set_enabled(args.pprof == servers::cli::OnOff::On);
    raise_descriptor_limit();
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

/// Lifts the soft limit on open descriptors to the hard one: every client connection is a
/// descriptor, and the default soft limit (1024) is below what a load test opens.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}
