//! `lab trace`: the command-line face of the tracer. `lab` embeds [`TraceArgs`] as a
//! subcommand and calls [`run`]; `lab-trace` (src/bin) does the same standalone.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::context::{DbEndpoint, Overrides};
use crate::session::{start, Backend, Options, Target};

/// Attribute a server's syscalls, ring operations and blocked time to network, database,
/// logging and the I/O machinery.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Trace this running process: all its threads and threads it creates later, and (see
    /// --no-children) the processes below it, those that exist and those it forks later.
    #[arg(long, conflicts_with = "command")]
    pub pid: Option<i32>,
    /// Trace the one process only, not its child processes. By default the whole tree below
    /// it is traced (PostgreSQL's backends, nginx's workers, forked helpers), with a
    /// breakdown per process role.
    #[arg(long, alias = "only-pid")]
    pub no_children: bool,
    /// ebpf: in-kernel, exact, low overhead (needs root or CAP_BPF+CAP_PERFMON and BTF).
    /// ptrace: a slower approximation that needs no special privileges for its own child.
    /// strace: Debian's `strace -f -c` attached to --pid, counts by name only (the peer).
    #[arg(long, value_enum, default_value = "ebpf")]
    pub backend: Backend,
    /// Write the profile as JSON (schema: docs/tracer.md) to this file (`-`: stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Stop after this long (`30`, `30s`, `500ms`, `2m`); default: until Ctrl-C, SIGTERM or
    /// the target's exit.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Requests served in the traced window: normalise per request.
    #[arg(long)]
    pub requests: Option<u64>,
    /// The database endpoint, HOST:PORT or a Unix socket path (default: the target's
    /// DATABASE_URL, else the lab's own database). A TCP connection is the database's when
    /// it goes to PORT at one of the addresses HOST resolves to when the trace starts
    /// (localhost: 127.0.0.1 and ::1). A bare PORT means that port at any address, as does
    /// a HOST that does not resolve (the profile's notes say so).
    #[arg(long, value_name = "HOST:PORT|PORT|PATH")]
    pub db: Option<String>,
    /// A port the server listens on for clients (repeatable; default: its LISTEN sockets).
    #[arg(long = "listen-port", value_name = "PORT")]
    pub listen_ports: Vec<u16>,
    /// A log file (repeatable; default: regular files it has open for writing; fds 1 and 2
    /// always count as logging).
    #[arg(long = "log-file", value_name = "PATH")]
    pub log_files: Vec<PathBuf>,
    /// Exporter mode: serve Prometheus metrics on this address while tracing.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// A `variant` label for the profile and the metrics.
    #[arg(long)]
    pub variant: Option<String>,
    /// Do not print the table.
    #[arg(long, short)]
    pub quiet: bool,
    /// The command to start and trace (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| *v >= 0.0)
        .map(|v| Duration::from_secs_f64(v * mul))
        .ok_or_else(|| format!("not a duration: {s:?} (e.g. 30s, 500ms, 2m)"))
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

/// Runs `lab trace`. Exit 0 on success (also when the target exits mid-trace), 2 when the
/// trace cannot start (no such pid, not permitted, missing privileges), 1 otherwise.
pub fn run(args: TraceArgs) -> Result<ExitCode> {
    let target = match (args.pid, args.command.is_empty()) {
        (Some(pid), true) => Target::Pid(pid),
        (None, false) => Target::Command(args.command.clone()),
        _ => {
            eprintln!("lab trace: give either --pid PID or -- CMD ARGS...");
            return Ok(ExitCode::from(2));
        }
    };
    let db = match args.db.as_deref().map(DbEndpoint::parse).transpose() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("lab trace: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let opts = Options {
        backend: args.backend,
        overrides: Overrides {
            db,
            listen_ports: args.listen_ports.clone(),
            log_files: args.log_files.clone(),
        },
        variant: args.variant.clone(),
        children: !args.no_children,
        companions: Vec::new(),
    };
    install_signal_handlers();
    let session = match start(target, opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lab trace: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    eprintln!(
        "lab trace: tracing pid {}{} with the {} backend{}",
        session.pid(),
        if args.no_children {
            ""
        } else {
            " and its child processes"
        },
        args.backend.name(),
        if args.duration.is_none() {
            " (Ctrl-C to stop)"
        } else {
            ""
        }
    );

    let latest = Arc::new(Mutex::new(None));
    if let Some(addr) = args.listen {
        let local = crate::exporter::serve(addr, latest.clone())?;
        eprintln!("lab trace: serving Prometheus metrics on http://{local}/metrics");
    }
    let started = Instant::now();
    let mut last_export = Instant::now();
    loop {
        if STOP.load(Ordering::SeqCst) || session.target_exited() {
            break;
        }
        if let Some(d) = args.duration {
            if started.elapsed() >= d {
                break;
            }
        }
        if args.listen.is_some() && last_export.elapsed() >= Duration::from_secs(1) {
            last_export = Instant::now();
            if let Ok(p) = session.snapshot() {
                *latest.lock().expect("exporter lock") = Some(p);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut profile = session.stop()?;
    if let Some(n) = args.requests {
        profile.per_request(n);
    }
    if !args.quiet {
        print!("{}", crate::render::table(&profile));
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&profile)?;
        if path.as_os_str() == "-" {
            println!("{json}");
        } else {
            std::fs::write(path, json + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if args.listen.is_some() {
        *latest.lock().expect("exporter lock") = Some(profile);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
    }
}
