//! `lab run`: the whole comparison in one command.
//!
//! For each variant in turn (the order rotates between rounds with `--repeat`): start
//! the server, wait until it answers, warm it up, then one measured window in which the
//! tracer and the load generator run together; read the server's process figures from
//! /proc around that window; stop the server cleanly. Then write `run.json`, the HTML
//! report and the terminal table.
//!
//! With `--flamegraph`, the last round of each variant ends with a profiling phase before
//! the server stops: the tracer detached and the measured load finished, the same load
//! runs again while the lab fetches the server's `/debug/pprof/flamegraph` and then
//! `/debug/pprof/profile` (`servers::profile`). Sampling signals the server ~200 times a
//! second, a `rt_sigreturn` each, so it never overlaps the window that counts syscalls.
//!
//! Placement on CPUs ([`crate::placement`]): the server on the first half of the CPUs,
//! the load generator (which runs inside this process) on the second half.
//!
//! With `--trace-db`, the tracer follows the database's postmaster and its backends in the
//! same session as the server (one set of syscall hooks for both, [`crate::db_side`] finds
//! the postmaster), and each round records the database's profile and CPU beside the
//! server's.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};

use crate::placement::Placement;
use crate::results::{
    CpuProfile, DatabaseRound, Environment, ProcessFigures, RequestLog, Round, Run, RunConfig,
    Summary, VariantResult, LOG_LAST_LINES, SCHEMA, SCHEMA_VERSION, TOP_FUNCTIONS,
};
use servers::launch::{sibling_binary, LaunchOptions, ServerProcess};

/// Where `--export` puts the server under test and the tracer's metrics: the targets of
/// `dashboards/prometheus/native.yml`.
const EXPORT_SERVER: &str = "127.0.0.1:8080";
const EXPORT_TRACER: &str = "127.0.0.1:9100";

/// The load generator's request timeout while the ptrace backend traces.
const PTRACE_REQUEST_TIMEOUT_S: f64 = 30.0;

/// The four I/O models, in the order they are run and shown.
pub const VARIANTS: [&str; 4] = ["thread-per-request", "thread-pool", "epoll", "io-uring"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    Plaintext,
    Json,
    Db,
    Queries,
    Fortunes,
    Updates,
    /// The six TechEmpower endpoints in equal parts.
    Mix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TracerChoice {
    /// eBPF where permitted, else ptrace (with a note).
    Auto,
    Ebpf,
    Ptrace,
    /// Debian's `strace -f -c`: the peer observer (counts by name only, fd I/O as other).
    Strace,
    Off,
}

/// Run every variant under the same load while tracing it, and compare them.
///
/// Default workload: `/db` (one random row per request, so network, database and
/// logging all show up), 32 keep-alive connections, 3 s warm-up and 10 s measured per
/// variant, buffered request log, eBPF tracer where permitted.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Variants to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = VARIANTS.map(String::from), value_parser = clap::builder::PossibleValuesParser::new(VARIANTS))]
    pub variants: Vec<String>,
    /// What every request asks for.
    #[arg(long, value_enum, default_value_t = Workload::Db)]
    pub workload: Workload,
    /// `queries=N` for the queries and updates workloads.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub queries: u32,
    /// Keep-alive connections of the load generator.
    #[arg(long, short = 'c', default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,
    /// Measured window per variant and round (e.g. 10s, 1m).
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_seconds)]
    pub duration: f64,
    /// Load before the measured window, not counted (e.g. 3s; 0 for none).
    #[arg(long, default_value = "3s", value_parser = parse_seconds)]
    pub warmup: f64,
    /// Requests each connection sends before reading the answers (HTTP pipelining).
    #[arg(long, short = 'p', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub pipeline: u32,
    /// Open a new connection for every request instead of keeping connections alive.
    #[arg(long)]
    pub connection_per_request: bool,
    /// Open loop at this many requests per second (default: closed loop, as fast as the
    /// server answers).
    #[arg(long)]
    pub rate: Option<f64>,
    /// The servers' request log mode.
    #[arg(long, default_value = "buffered", value_parser = ["sync", "buffered", "stdout", "off"])]
    pub log: String,
    /// Keep each server's full request log in the run folder as `<variant>.log` (tens of
    /// MB per variant). By default the log is written during the run as usual (its
    /// syscalls are measured) and then removed; run.json keeps its size, line count and
    /// last lines.
    #[arg(long)]
    pub keep_logs: bool,
    /// Tracer backend.
    #[arg(long, value_enum, default_value_t = TracerChoice::Auto)]
    pub tracer: TracerChoice,
    /// Also trace the database in the same window: its postmaster and every backend (eBPF
    /// only; the database must run on this machine). Its syscalls, blocked time and CPU
    /// per request appear beside the server's, per process role (client backend,
    /// walwriter...), so pooled and pipelined clients show what they cost on both sides.
    #[arg(long)]
    pub trace_db: bool,
    /// Rounds; the variant order rotates between rounds, the table shows medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// Serve each variant on 127.0.0.1:8080 and the tracer's metrics on 127.0.0.1:9100
    /// while it runs, for a Prometheus scraping them (dashboards/prometheus/native.yml).
    #[arg(long)]
    pub export: bool,
    /// After each variant's measured window (last round), a separate profiling phase:
    /// the same load while the server samples itself for SECONDS (default 5) for a flame
    /// graph, then as long again for the pprof protobuf. Writes
    /// `<variant>.flamegraph.svg` and `<variant>.pprof.pb`; the report shows the flame
    /// graphs. Never inside the counting window.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "5",
          value_parser = clap::value_parser!(u32).range(1..=60))]
    pub flamegraph: Option<u32>,
    /// The database the servers use (migrated and seeded first); default: the lab's own
    /// PostgreSQL (`lab db up`), started if needed.
    #[arg(long, value_name = "URL", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Folder under which `<run-id>/` is created.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Also write run.json to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub hosts: crate::net::HostArgs,
    /// Flags given to every server (after `--`), e.g. `-- --pool-size 4`.
    #[arg(last = true, value_name = "SERVER_ARGS")]
    pub server_args: Vec<String>,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    loadgen::config::parse_duration(s)
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Plaintext => "plaintext",
            Workload::Json => "json",
            Workload::Db => "db",
            Workload::Queries => "queries",
            Workload::Fortunes => "fortunes",
            Workload::Updates => "updates",
            Workload::Mix => "mix",
        }
    }

    /// The path requested, or the mix's entries.
    fn targets(self, queries: u32) -> Vec<String> {
        match self {
            Workload::Plaintext => vec!["/plaintext".into()],
            Workload::Json => vec!["/json".into()],
            Workload::Db => vec!["/db".into()],
            Workload::Queries => vec![format!("/queries?queries={queries}")],
            Workload::Fortunes => vec!["/fortunes".into()],
            Workload::Updates => vec![format!("/updates?queries={queries}")],
            Workload::Mix => vec![
                "/plaintext".into(),
                "/json".into(),
                "/db".into(),
                format!("/queries?queries={queries}"),
                "/fortunes".into(),
                format!("/updates?queries={queries}"),
            ],
        }
    }
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let run = execute(&args)?;
    let run_dir = args.out.join(&run.id);
    let report = crate::report::html::write(&run, &run_dir)?;
    println!("{}", crate::table::render(&run));
    print_cpu_profiles(&run);
    if let Some(logs) = describe_logs(&run, &run_dir) {
        eprintln!("{logs}");
    }
    eprintln!(
        "results: {}\nreport:  {}",
        run_dir.join("run.json").display(),
        report.display()
    );
    let failed: Vec<&str> = run.failed().map(|v| v.variant.as_str()).collect();
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("lab run: {} failed: {}", failed.len(), failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

/// `lab report RUN`: rebuilds the HTML report and prints the table.
pub fn report(path: &Path) -> Result<ExitCode> {
    let mut run = Run::load(path)?;
    let run_dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    summarise_profiles(&mut run, run_dir);
    let report = crate::report::html::write(&run, run_dir)?;
    println!("{}", crate::table::render(&run));
    print_cpu_profiles(&run);
    eprintln!("report: {}", report.display());
    Ok(ExitCode::SUCCESS)
}

/// Reads each recorded pprof protobuf again, so that a rebuilt report uses this lab's
/// summary (which functions count as which part of the server).
fn summarise_profiles(run: &mut Run, run_dir: &Path) {
    for v in &mut run.variants {
        let Some(profile) = &mut v.cpu_profile else {
            continue;
        };
        let Some(rel) = &profile.pprof else { continue };
        if let Ok(Ok((samples, mut top))) =
            std::fs::read(run_dir.join(rel)).map(|body| servers::profile::summarise(&body))
        {
            profile.samples = samples;
            profile.areas = servers::profile::areas(&top);
            top.truncate(TOP_FUNCTIONS);
            profile.top = top;
        }
    }
}

/// "Where the CPU goes" per variant with a profiling phase: the share of samples per
/// part of the server, and the functions with the most self samples.
fn print_cpu_profiles(run: &Run) {
    for v in &run.variants {
        let Some(profile) = &v.cpu_profile else {
            continue;
        };
        if profile.samples <= 0 {
            continue;
        }
        let share = |n: i64| 100.0 * n as f64 / profile.samples as f64;
        println!(
            "\nwhere the CPU goes: {} ({} samples)",
            v.variant, profile.samples
        );
        let areas: Vec<String> = profile
            .areas
            .iter()
            .map(|(area, n)| format!("{area} {:.0}%", share(*n)))
            .collect();
        println!("  {}", areas.join(", "));
        for f in profile.top.iter().take(8) {
            println!(
                "  {:5.1}% self {:5.1}% total  {}",
                share(f.self_samples),
                share(f.total_samples),
                f.label()
            );
        }
    }
}

/// Runs everything and writes `run.json`; returns the run.
pub fn execute(args: &RunArgs) -> Result<Run> {
    let started = unix_now();
    let id = run_id();
    let run_dir = args.out.join(&id);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let server = sibling_binary("server")?;

    let mut notes = Vec::new();
    // --hosts separate: the hosts and links first (the database runs on one of them).
    let network = crate::net::start_for_run(args, &mut notes)?;
    // The cluster's data directory, when the lab runs it (for --trace-db's postmaster).
    let (url, data_dir) = match &network {
        Some(network) => (network.start_database()?, Some(network.database().data_dir)),
        None => {
            let database = match args.database_url.as_deref().filter(|u| !u.is_empty()) {
                Some(url) => db::Database::External {
                    url: url.to_string(),
                },
                None => db::Database::from_env(),
            };
            eprintln!(
                "lab run: preparing the database ({})",
                db::redact(&database.url())
            );
            if let Some(notice) = database.port_notice() {
                eprintln!("lab run: note: {notice}");
            }
            let data_dir = match &database {
                db::Database::Embedded(config) => Some(config.data_dir.clone()),
                db::Database::External { .. } => None,
            };
            (database.ensure_ready()?, data_dir)
        }
    };

    let backend = match args.tracer {
        TracerChoice::Off => None,
        TracerChoice::Ebpf => {
            tracer::privileges::check_ebpf()?;
            Some(tracer::Backend::Ebpf)
        }
        TracerChoice::Ptrace => Some(tracer::Backend::Ptrace),
        TracerChoice::Strace => Some(tracer::Backend::Strace),
        TracerChoice::Auto => {
            let (backend, note) = tracer::privileges::auto_backend();
            if let Some(note) = note {
                eprintln!("lab run: note: {note}");
                notes.push(note);
            }
            Some(backend)
        }
    };
    let postmaster = if args.trace_db {
        if backend != Some(tracer::Backend::Ebpf) {
            bail!(
                "--trace-db traces the database beside the server with eBPF (the {} tracer \
                 follows one process tree): run as root, with --tracer ebpf or auto",
                backend.map_or("off", |b| b.name())
            );
        }
        let pid = crate::db_side::postmaster(&url, data_dir.as_deref())?;
        eprintln!("lab run: tracing the database too (postmaster pid {pid} and its backends)");
        Some(pid)
    } else {
        None
    };
    // Before the placement pins this thread: the machine's CPUs, not the load generator's.
    let machine = environment();
    let placement = Placement::choose();
    let exported = if args.export {
        let latest = tracer::exporter::Latest::default();
        let addr = tracer::exporter::serve(
            EXPORT_TRACER.parse().expect("a literal address"),
            latest.clone(),
        )
        .with_context(|| format!("--export: serving the tracer's metrics on {EXPORT_TRACER}"))?;
        eprintln!("lab run: servers on http://{EXPORT_SERVER}, tracer metrics on http://{addr}/metrics (for Prometheus)");
        Some(latest)
    } else {
        None
    };
    let targets = args.workload.targets(args.queries);
    let config = RunConfig {
        variants: args.variants.clone(),
        workload: args.workload.name().to_string(),
        target: targets.join(" "),
        queries: args.queries,
        connections: args.connections,
        pipeline: args.pipeline,
        connection_per_request: args.connection_per_request,
        duration_s: args.duration,
        warmup_s: args.warmup,
        rate: args.rate,
        log: args.log.clone(),
        tracer: backend.map_or("off", |b| b.name()).to_string(),
        repeat: args.repeat,
        flamegraph: args.flamegraph.is_some(),
        flamegraph_s: args.flamegraph.unwrap_or(0),
        server_args: args.server_args.clone(),
        hosts: args.hosts.hosts.name().to_string(),
        db_latency_ms: crate::net::HostArgs::millis(args.hosts.db_latency),
        client_latency_ms: crate::net::HostArgs::millis(args.hosts.client_latency),
        jitter_ms: crate::net::HostArgs::millis(args.hosts.jitter),
        keep_logs: args.keep_logs,
        trace_db: args.trace_db,
    };
    let postgres = {
        // The server's view of the database.
        let _server_host = network
            .as_ref()
            .map(|n| n.enter(crate::net::Host::Server))
            .transpose()?;
        postgres_version(&url)
    };
    let environment = Environment {
        pinning: placement.describe(),
        tracer_backend: config.tracer.clone(),
        notes,
        postgres,
        ..machine
    };

    const PHASES: u64 = 4;
    let profiling_phases = if args.flamegraph.is_some() { 1 } else { 0 };
    let progress = ProgressBar::new(
        args.variants.len() as u64 * (u64::from(args.repeat) * PHASES + profiling_phases),
    );
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let mut results: Vec<VariantResult> = args
        .variants
        .iter()
        .map(|v| VariantResult {
            variant: v.clone(),
            ok: true,
            failure: None,
            log_tail: None,
            rounds: Vec::new(),
            summary: None,
            flamegraph: None,
            cpu_profile: None,
            request_log: None,
        })
        .collect();
    for round in 0..args.repeat {
        let count = args.variants.len();
        for k in 0..count {
            let index = (k + round as usize) % count;
            let result = &mut results[index];
            let last_round = round + 1 == args.repeat;
            if !result.ok {
                progress.inc(PHASES + if last_round { profiling_phases } else { 0 });
                continue;
            }
            let step = Step {
                args,
                url: &url,
                server: &server,
                run_dir: &run_dir,
                backend,
                placement: &placement,
                targets: &targets,
                progress: &progress,
                label: format!("{} · round {}/{}", result.variant, round + 1, args.repeat),
                exported: exported.as_ref(),
                network: network.as_ref(),
                postmaster,
            };
            let profiled = if last_round {
                args.flamegraph.map(|seconds| ProfileRequest {
                    seconds,
                    into: &mut result.cpu_profile,
                    flamegraph: &mut result.flamegraph,
                })
            } else {
                None
            };
            let measured = step.measure(&result.variant, round + 1, profiled);
            // The server is gone: its log is complete.
            if let Err(e) = keep_request_log(
                &run_dir,
                &result.variant,
                args.keep_logs,
                &mut result.request_log,
            ) {
                progress.println(format!("lab run: {}: request log: {e:#}", result.variant));
            }
            match measured {
                Ok(measured) => result.rounds.push(measured),
                Err(failure) => {
                    progress.println(format!(
                        "lab run: {} failed: {}",
                        result.variant, failure.reason
                    ));
                    result.ok = false;
                    result.failure = Some(failure.reason);
                    result.log_tail = failure.log_tail;
                }
            }
        }
    }
    progress.finish_and_clear();
    for result in &mut results {
        result.summary = Summary::of(&result.rounds);
    }
    let mut environment = environment;
    let topology = network.map(|n| crate::net::finish_for_run(n, &mut environment.notes));
    let run = Run {
        schema: SCHEMA.to_string(),
        schema_version: SCHEMA_VERSION,
        id,
        started_unix_s: started,
        finished_unix_s: unix_now(),
        environment,
        config,
        topology,
        variants: results,
    };
    let text = serde_json::to_string_pretty(&run)?;
    std::fs::write(run_dir.join("run.json"), &text)?;
    match &args.json {
        Some(path) if path.as_os_str() == "-" => println!("{text}"),
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?
        }
        None => {}
    }
    Ok(run)
}

/// Why a variant failed, and what its server said last.
struct Failure {
    reason: String,
    log_tail: Option<String>,
}

impl Failure {
    fn new(reason: impl Into<String>, server: Option<&ServerProcess>) -> Self {
        Failure {
            reason: reason.into(),
            log_tail: server.map(|s| s.stderr_tail(30)),
        }
    }
}

/// Everything one measured window needs.
struct Step<'a> {
    args: &'a RunArgs,
    url: &'a str,
    server: &'a Path,
    run_dir: &'a Path,
    backend: Option<tracer::Backend>,
    placement: &'a Placement,
    targets: &'a [String],
    progress: &'a ProgressBar,
    label: String,
    /// The profile the `--export` exporter serves.
    exported: Option<&'a tracer::exporter::Latest>,
    /// `--hosts separate`: the server starts in its namespace, and everything that talks
    /// to it (load, /metrics, profiles) from the client's.
    network: Option<&'a crate::net::Network>,
    /// `--trace-db`: the database's postmaster, traced as the session's companion.
    postmaster: Option<i32>,
}

impl Step<'_> {
    fn phase(&self, name: &str) {
        self.progress
            .set_message(format!("{} · {name}", self.label));
    }

    fn measure(
        &self,
        variant: &str,
        round: u32,
        profiled: Option<ProfileRequest<'_>>,
    ) -> Result<Round, Failure> {
        self.phase("starting the server");
        let log_file = self.run_dir.join(log_name(variant));
        let mut options = LaunchOptions::new(variant, self.url);
        if self.exported.is_some() {
            options.listen = EXPORT_SERVER.parse().expect("a literal address");
        }
        options.log = self.args.log.clone();
        options.log_file = Some(log_file.clone());
        options.extra_args = self.args.server_args.clone();
        let in_namespace = |host| {
            self.network
                .map(|n| n.enter(host))
                .transpose()
                .map_err(|e| Failure::new(format!("{e:#}"), None))
        };
        let server_host = in_namespace(crate::net::Host::Server)?;
        if let Some(network) = self.network {
            options.listen = std::net::SocketAddr::new(network.plan.server_address().into(), 0);
        }
        let started = ServerProcess::start(self.server, &options);
        drop(server_host);
        // From here on this thread, and the load generator's threads it starts, are the
        // client host.
        let _client_host = in_namespace(crate::net::Host::Client)?;
        let mut server = started.map_err(|e| Failure {
            reason: format!(
                "did not start: {}",
                e.to_string().lines().next().unwrap_or_default()
            ),
            log_tail: Some(format!("{e:#}")),
        })?;
        self.placement.pin_process(server.pid());
        let server_cpus = crate::placement::cpus_of(server.pid() as i32);
        self.progress.inc(1);

        self.phase("warming up");
        if self.args.warmup > 0.0 {
            self.load(&server, self.args.warmup, None, &mut || {}, None)
                .map_err(|e| Failure::new(e, Some(&server)))?;
        }
        self.progress.inc(1);

        self.phase("measuring");
        let before = read_process(server.pid(), server.addr())
            .map_err(|e| Failure::new(format!("{e:#}"), Some(&server)))?;
        let db_before = self.postmaster.map(crate::db_side::TreeCpu::read);
        let session = match self.backend {
            Some(backend) => Some(
                self.placement
                    .beside_server(backend, || {
                        tracer::start(
                            tracer::Target::Pid(server.pid() as i32),
                            tracer::Options {
                                backend,
                                overrides: tracer::Overrides {
                                    db: tracer::DbEndpoint::from_url(self.url),
                                    listen_ports: vec![server.addr().port()],
                                    log_files: if self.args.log == "off"
                                        || self.args.log == "stdout"
                                    {
                                        vec![]
                                    } else {
                                        vec![log_file]
                                    },
                                },
                                variant: Some(variant.to_string()),
                                children: true,
                                companions: self.postmaster.into_iter().collect(),
                            },
                        )
                    })
                    .map_err(|e| {
                        Failure::new(format!("the tracer did not start: {e:#}"), Some(&server))
                    })?,
            ),
            None => None,
        };
        let threads_seen = std::cell::Cell::new(0u64);
        // With --export, the exporter shows the trace so far, refreshed every second.
        let mut export = || {
            if let (Some(latest), Some(session)) = (self.exported, &session) {
                if let Ok(profile) = session.snapshot() {
                    *latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(profile);
                }
            }
        };
        let load = self.load(
            &server,
            self.args.duration,
            Some(&threads_seen),
            &mut export,
            None,
        );
        let mut profiles = match session {
            Some(session) => session
                .stop_all()
                .map_err(|e| Failure::new(format!("the tracer failed: {e:#}"), Some(&server)))?,
            None => Vec::new(),
        };
        let db_profile = (profiles.len() > 1).then(|| profiles.remove(1));
        let profile = (!profiles.is_empty()).then(|| profiles.remove(0));
        let after = read_process(server.pid(), server.addr())
            .map_err(|e| Failure::new(format!("{e:#}"), Some(&server)))?;
        let database = self
            .postmaster
            .zip(db_before)
            .map(|(pid, before)| (pid, crate::db_side::TreeCpu::read(pid).since(&before)));
        let load = load.map_err(|e| Failure::new(e, Some(&server)))?;
        self.progress.inc(1);

        if let Some(request) = profiled {
            self.phase("profiling (pprof; not counted)");
            let profile = self.profile(&server, variant, request.seconds);
            *request.flamegraph = profile.1;
            *request.into = Some(profile.0);
            self.progress.inc(1);
        }

        self.phase("stopping the server");
        if !server.is_running() {
            return Err(Failure::new("the server exited under load", Some(&server)));
        }
        let total = load.requests + load.errors_total;
        if load.requests == 0 || load.errors_total * 100 > total {
            let reason = format!(
                "{} errors in {} requests under load ({:?})",
                load.errors_total, total, load.errors
            );
            return Err(Failure::new(reason, Some(&server)));
        }
        let tail = server.stderr_tail(30);
        match server.stop(Duration::from_secs(20)) {
            Ok(status) if status.success() => {}
            Ok(status) => {
                return Err(Failure {
                    reason: format!("exited with {status} on SIGTERM"),
                    log_tail: Some(tail),
                })
            }
            Err(e) => {
                return Err(Failure {
                    reason: format!("{e:#}"),
                    log_tail: Some(tail),
                })
            }
        }
        self.progress.inc(1);
        let per_request = |mut p: tracer::Profile| {
            p.per_request(load.requests);
            p
        };
        let profile = profile.map(per_request);
        let database = database.map(|(postmaster, cpu)| DatabaseRound {
            postmaster,
            profile: db_profile.map(per_request),
            user_cpu_s: cpu.user_s,
            system_cpu_s: cpu.system_s,
            processes: cpu.processes,
        });
        let mut process = after.since(&before);
        process.threads = process.threads.max(threads_seen.get());
        process.server_cpus = server_cpus;
        Ok(Round {
            round,
            load,
            profile,
            process,
            database,
        })
    }

    /// The profiling phase: the workload again while another thread asks the server for a
    /// flame graph and then a protobuf profile, each `seconds` long; the load stops when
    /// both have arrived. Failures are recorded, not fatal: the measured window stands.
    fn profile(
        &self,
        server: &ServerProcess,
        variant: &str,
        seconds: u32,
    ) -> (CpuProfile, Option<String>) {
        let addr = server.addr();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fetcher = {
            let done = done.clone();
            std::thread::spawn(move || {
                let fetch = |path: &str| fetch_profile(addr, path, seconds);
                let svg = fetch("/debug/pprof/flamegraph");
                let pb = fetch("/debug/pprof/profile");
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                (svg, pb)
            })
        };
        // Long enough for both profiles and their rendering; stopped as soon as they are in.
        let most = 2.0 * f64::from(seconds) + 60.0;
        let load = self.load(server, most, None, &mut || {}, Some(&done));
        let (svg, pb) = fetcher.join().unwrap_or_else(|_| {
            (
                Err("the fetching thread panicked".into()),
                Err(String::new()),
            )
        });
        let mut profile = CpuProfile::default();
        let mut errors = Vec::new();
        if let Err(e) = load {
            errors.push(format!("load during profiling: {e}"));
        }
        let flamegraph =
            match svg.and_then(|body| self.save(&format!("{variant}.flamegraph.svg"), &body)) {
                Ok(rel) => Some(rel),
                Err(e) => {
                    errors.push(format!("flame graph: {e}"));
                    None
                }
            };
        match pb.and_then(|body| {
            let rel = self.save(&format!("{variant}.pprof.pb"), &body)?;
            let (samples, mut top) = servers::profile::summarise(&body)?;
            let areas = servers::profile::areas(&top);
            top.truncate(TOP_FUNCTIONS);
            Ok((rel, samples, top, areas))
        }) {
            Ok((rel, samples, top, areas)) => {
                profile.pprof = Some(rel);
                profile.samples = samples;
                profile.top = top;
                profile.areas = areas;
            }
            Err(e) => errors.push(format!("pprof profile: {e}")),
        }
        if !errors.is_empty() {
            let error = errors.join("; ");
            self.progress
                .println(format!("lab run: {variant}: profiling: {error}"));
            profile.error = Some(error);
        }
        (profile, flamegraph)
    }

    /// Writes a file into the run folder; its path relative to it.
    fn save(&self, name: &str, body: &[u8]) -> Result<String, String> {
        std::fs::write(self.run_dir.join(name), body)
            .map_err(|e| format!("writing {name}: {e}"))?;
        Ok(name.to_string())
    }

    /// Runs the load generator on this process's CPUs for `seconds`. In the measured
    /// window, `threads_seen` keeps the most threads the server had (sampled twice a second).
    fn load(
        &self,
        server: &ServerProcess,
        seconds: f64,
        threads_seen: Option<&std::cell::Cell<u64>>,
        every_second: &mut dyn FnMut(),
        stop: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<loadgen::Report, String> {
        let base = format!("http://{}", server.addr());
        let mut config = loadgen::Config::new(format!("{base}{}", self.targets[0]));
        if self.targets.len() > 1 {
            config.mix = self
                .targets
                .iter()
                .map(|path| loadgen::MixEntry {
                    weight: 1,
                    path: path.clone(),
                })
                .collect();
        }
        config.connections = self.args.connections;
        config.threads = 1;
        config.duration_s = seconds;
        config.warmup_s = 0.0;
        config.rate = self.args.rate;
        config.pipeline = self.args.pipeline;
        if matches!(
            self.backend,
            Some(tracer::Backend::Ptrace | tracer::Backend::Strace)
        ) {
            // Under ptrace every traced syscall stops the server, and attaching stops all
            // its threads at once: answers come late rather than never, so they are
            // measured as latency instead of counted as timeouts.
            config.timeout_s = config.timeout_s.max(PTRACE_REQUEST_TIMEOUT_S);
        }
        config.keepalive = !self.args.connection_per_request;
        let progress = self.progress;
        let label = &self.label;
        let mut last = std::time::Instant::now();
        let mut last_tick = std::time::Instant::now();
        let pid = server.pid();
        loadgen::run(&config, &mut |p: &loadgen::Progress| {
            if last_tick.elapsed() >= Duration::from_secs(1) {
                every_second();
                last_tick = std::time::Instant::now();
            }
            if let Some(seen) = threads_seen {
                if last.elapsed() > Duration::from_millis(500) {
                    progress.set_message(format!("{label} · measuring · {:.0} req/s", p.rps));
                    // Only /proc here: a /metrics request would be traced with the load.
                    seen.set(seen.get().max(thread_count(pid)));
                    last = std::time::Instant::now();
                }
            }
            if stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed)) {
                return loadgen::Control::Stop;
            }
            loadgen::Control::Continue
        })
        .map_err(|e| format!("load generator: {e}"))
    }
}

/// Where a variant's profiling phase puts what it recorded.
struct ProfileRequest<'a> {
    seconds: u32,
    into: &'a mut Option<CpuProfile>,
    flamegraph: &'a mut Option<String>,
}

/// `GET path?seconds=N` on a connection of its own; the body of a 200, else the status
/// and the server's reason.
fn fetch_profile(addr: std::net::SocketAddr, path: &str, seconds: u32) -> Result<Vec<u8>, String> {
    // The answer comes after the profile's length, plus symbolising and rendering.
    let wait = Duration::from_secs(u64::from(seconds) + 60);
    let (status, body) = http_get(addr, &format!("{path}?seconds={seconds}"), wait)
        .map_err(|e| format!("{path}: {e}"))?;
    if status != 200 {
        return Err(format!(
            "{path}: HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    Ok(body)
}

/// One `GET` on a connection of its own (`Connection: close`): status and body.
fn http_get(
    addr: std::net::SocketAddr,
    target: &str,
    read_timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    use std::io::{Read, Write};
    let io = |e: std::io::Error| e.to_string();
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
    stream.set_read_timeout(Some(read_timeout)).map_err(io)?;
    stream
        .write_all(
            format!("GET {target} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(io)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(io)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP response")?;
    let status = String::from_utf8_lossy(&response[..split])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no HTTP status")?;
    Ok((status, response[split + 4..].to_vec()))
}

/// A variant's request log in the run folder (written there while its server runs).
fn log_name(variant: &str) -> String {
    format!("{variant}.log")
}

/// After a round: adds the variant's request log to its summary, then removes the file
/// unless `keep` (with `keep` the file holds every round so far and the summary is of
/// it). Nothing to do when the server wrote no log (`--log off` or `stdout`).
fn keep_request_log(
    run_dir: &Path,
    variant: &str,
    keep: bool,
    summary: &mut Option<RequestLog>,
) -> Result<()> {
    let name = log_name(variant);
    let path = run_dir.join(&name);
    let read = match summarise_log(&path) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if keep {
        *summary = Some(RequestLog {
            file: Some(name),
            ..read
        });
        return Ok(());
    }
    let total = summary.get_or_insert_with(RequestLog::default);
    total.bytes += read.bytes;
    total.lines += read.lines;
    if !read.last_lines.is_empty() {
        total.last_lines = read.last_lines;
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
}

/// Size, line count and last lines of a log file, read once.
fn summarise_log(path: &Path) -> std::io::Result<RequestLog> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut bytes, mut lines) = (0u64, 0u64);
    // The last 64 KiB read, for the last lines.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 2 * buf.len() {
            tail.drain(..tail.len() - buf.len());
        }
    }
    if tail.last().is_some_and(|&b| b != b'\n') {
        lines += 1; // a last line without its newline (a log cut short)
    }
    let text = String::from_utf8_lossy(&tail);
    let mut last: Vec<String> = text
        .lines()
        .rev()
        .take(LOG_LAST_LINES)
        .map(|l| l.chars().take(500).collect())
        .collect();
    last.reverse();
    Ok(RequestLog {
        file: None,
        bytes,
        lines,
        last_lines: last,
    })
}

/// Where the request logs went, for the end of `lab run`.
fn describe_logs(run: &Run, run_dir: &Path) -> Option<String> {
    let logs: Vec<(&str, &RequestLog)> = run
        .variants
        .iter()
        .filter_map(|v| Some((v.variant.as_str(), v.request_log.as_ref()?)))
        .collect();
    if logs.is_empty() {
        return None;
    }
    let sizes: Vec<String> = logs
        .iter()
        .map(|(v, l)| format!("{v} {:.1} MB, {} lines", l.bytes as f64 / 1e6, l.lines))
        .collect();
    Some(if run.config.keep_logs {
        format!(
            "request logs: {} ({})",
            run_dir.join("<variant>.log").display(),
            sizes.join("; ")
        )
    } else {
        format!(
            "request logs: summarised in run.json and removed ({}); `lab run --keep-logs` keeps them as {}",
            sizes.join("; "),
            run_dir.join("<variant>.log").display()
        )
    })
}

/// Cumulative counters of a process, to subtract.
struct Counters {
    user_s: f64,
    system_s: f64,
    voluntary: u64,
    involuntary: u64,
    threads: u64,
    peak_rss_bytes: u64,
}

impl Counters {
    fn since(&self, before: &Counters) -> ProcessFigures {
        ProcessFigures {
            user_cpu_s: self.user_s - before.user_s,
            system_cpu_s: self.system_s - before.system_s,
            voluntary_switches: self.voluntary.saturating_sub(before.voluntary),
            involuntary_switches: self.involuntary.saturating_sub(before.involuntary),
            threads: self.threads,
            peak_rss_bytes: self.peak_rss_bytes,
            server_cpus: Vec::new(),
        }
    }
}

/// CPU time, context switches, threads and peak RSS of the server.
fn read_process(pid: u32, addr: std::net::SocketAddr) -> Result<Counters> {
    let figures = servers::metrics::ProcessFigures::read(&pid.to_string())
        .context("the server process is gone")?;
    // Context switches of every thread the server ever had (threads that exited
    // included) come from its own getrusage, through /metrics; /proc has them per live
    // thread only.
    let (voluntary, involuntary) = scraped_switches(addr).unwrap_or((0, 0));
    Ok(Counters {
        user_s: figures.user_s,
        system_s: figures.system_s,
        voluntary,
        involuntary,
        threads: figures.threads as u64,
        peak_rss_bytes: figures.peak_rss_bytes as u64,
    })
}

fn thread_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |tasks| tasks.count() as u64)
}

/// (voluntary, involuntary) from the server's `lab_process_context_switches_total`.
fn scraped_switches(addr: std::net::SocketAddr) -> Option<(u64, u64)> {
    let (_, body) = http_get(addr, "/metrics", Duration::from_secs(5)).ok()?;
    let text = String::from_utf8_lossy(&body);
    let value = |kind: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("lab_process_context_switches_total")
                    && l.contains(&format!("kind=\"{kind}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
    };
    Some((value("voluntary")?, value("involuntary")?))
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn run_id() -> String {
    let t = crate::clock::Utc::now();
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// What the machine is, for the report.
pub fn environment() -> Environment {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|v| v.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let memory_bytes = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let git_commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    Environment {
        hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpu_model,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes,
        lab_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit,
        ..Environment::default()
    }
}

fn postgres_version(url: &str) -> Option<String> {
    let url = url.to_string();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?
        .block_on(async move {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
            sqlx::query_scalar::<_, String>("SHOW server_version")
                .fetch_one(&mut conn)
                .await
                .ok()
        })
}

/// Fails unless every variant named exists (clap checks this too; kept for callers that
/// build `RunArgs` by hand, such as `lab workshop`).
pub fn check_variants(variants: &[String]) -> Result<()> {
    for v in variants {
        if !VARIANTS.contains(&v.as_str()) {
            bail!(
                "unknown variant {v:?}; the variants are {}",
                VARIANTS.join(", ")
            );
        }
    }
    Ok(())
}
