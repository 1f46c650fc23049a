//! The `loadgen` binary: parses flags, shows a progress bar on a terminal, stops cleanly on
//! Ctrl-C, prints the summary and writes the JSON report. Exit codes: 0 done, 2 bad input
//! (nothing was sent), 1 failure while running.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use loadgen::cli::Cli;
use loadgen::{Control, Error, Progress};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
    // A second Ctrl-C kills the process the usual way.
    // SAFETY: signal() is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.to_config().and_then(|c| loadgen::check(&c).map(|_| c)) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if let Some(path) = &cli.json {
        // Find an unwritable report path now, not after the run.
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            return fail(&Error::Input(format!(
                "cannot write {}: {e}",
                path.display()
            )));
        }
    }
    // SAFETY: installs a handler that only touches an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };

    let bar = (!cli.quiet && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(1000);
        b.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        b
    });
    let mut on_progress = |p: &Progress| {
        if let Some(b) = &bar {
            let frac = match (p.total_s, p.target_requests) {
                (_, Some(n)) => p.requests as f64 / n as f64,
                (Some(t), None) => p.elapsed_s / t,
                _ => 0.0,
            };
            b.set_position((frac.clamp(0.0, 1.0) * 1000.0) as u64);
            let step = p
                .step
                .map(|(k, r)| format!("step {k} @ {r:.0}/s: "))
                .unwrap_or_default();
            let phase = if p.warming_up { "warm-up " } else { "" };
            b.set_message(format!(
                "{step}{phase}{:.0} req/s, {} requests, {} errors",
                p.rps, p.requests, p.errors
            ));
        }
        if INTERRUPTED.load(Ordering::Relaxed) {
            Control::Stop
        } else {
            Control::Continue
        }
    };
    let result = loadgen::run(&config, &mut on_progress);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let report = match result {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    print!("{}", report.summary());
    if let Some(path) = &cli.json {
        let text = match serde_json::to_string_pretty(&report) {
            Ok(t) => t,
            Err(e) => return fail(&Error::Io(format!("cannot encode the report: {e}"))),
        };
        if let Err(e) = std::fs::write(path, text + "\n") {
            return fail(&Error::Io(format!("cannot write {}: {e}", path.display())));
        }
    }
    ExitCode::SUCCESS
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("loadgen: {e}");
    match e {
        Error::Input(_) => ExitCode::from(2),
        Error::Io(_) => ExitCode::from(1),
    }
}
