//! `lab check`: syscalls per request as a regression gate. A budget file ([`budget`])
//! says, per endpoint, what to request and how many syscalls (in total, per category, per
//! named call), ring operations and blocked µs a request may cost; `lab check` measures
//! them on a lab variant, on a command it starts, or on a running process, and exits 1
//! when a limit is exceeded (2 when it could not check). `--record` writes a budget from
//! today's figures.
//!
//! Why the counts are stable enough for CI: the load is closed-loop on a fixed set of
//! keep-alive connections, so after a warm-up (connections accepted, statements prepared,
//! pools filled, thread pools grown) every request costs the same calls; the tracer is
//! attached before the warm-up and the measured window is the difference of two snapshots
//! of the trace, divided by the responses completed between the same two moments. Only
//! the server's process is traced: the load generator runs in this process and the
//! tracer's own work happens outside the target. Server and load generator sit on CPUs
//! of their own ([`crate::placement`]), as in `lab run`.

pub mod budget;
pub mod junit;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::placement::Placement;
use crate::results::check::{
    CheckReport, EndpointCheck, Figures, LimitCheck, ServerCheck, CHECK_SCHEMA,
    CHECK_SCHEMA_VERSION,
};
use crate::run_cmd::{unix_now, VARIANTS};
use budget::{Budget, Endpoint, Headroom, Shape};
use server::{Served, Started};

/// Exit status when a limit is exceeded (or an endpoint answered with errors).
const EXCEEDED: u8 = 1;
/// Exit status when the check could not run.
const COULD_NOT_RUN: u8 = 2;

/// The load generator's request timeout (ptrace stops every traced call of the server).
const TIMEOUT_S: f64 = 10.0;
const PTRACE_TIMEOUT_S: f64 = 30.0;

/// Fewer responses than this in a window make a per-request figure coarse: said in a note.
const FEW_REQUESTS: u64 = 500;
/// A warm-up lasts until it has served this many requests too (first-request costs:
/// connections, prepared statements, pools), a measured window this many.
const MIN_WARMUP_REQUESTS: u64 = 50;
const MIN_WINDOW_REQUESTS: u64 = FEW_REQUESTS;
/// ... but no phase lasts more than this many times its planned length.
const STRETCH: f64 = 5.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TracerChoice {
    /// eBPF where permitted, else ptrace (said loudly).
    Auto,
    Ebpf,
    Ptrace,
}

/// How `lab check --help` ends.
const EXAMPLES: &str = "\
Exit status: 0 every limit held, 1 a limit exceeded (or an endpoint answered with errors),
2 the check could not run (bad budget file, server did not start, no privileges).

Examples:
  lab check --budget budgets/variants.toml                 # the lab's variants it names
  lab check --budget FILE --variant epoll --log sync       # a variant, one flag changed
  lab check --budget FILE --url http://127.0.0.1:8080 -- CMD ARGS...   # a server it starts
  lab check --budget FILE --url http://127.0.0.1:8080 --pid PID        # a running server
  lab check --record FILE --variant epoll --repeat 5       # write a budget (same forms)

The budget file's schema, and a CI job to copy: docs/check.md.";

/// Check a server's syscalls per request against a budget, or record a budget from
/// today's figures.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct CheckArgs {
    /// The budget file (TOML): endpoints and their limits.
    #[arg(long, value_name = "FILE", required_unless_present = "record")]
    pub budget: Option<PathBuf>,
    /// Measure and write a budget to FILE instead of checking: the endpoints of --budget
    /// (new limits), else those of --path.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// The lab's variants to check, comma-separated (default: every variant the budget
    /// names; all four when recording without a budget).
    #[arg(long, value_delimiter = ',', conflicts_with = "url",
          value_parser = clap::builder::PossibleValuesParser::new(VARIANTS))]
    pub variant: Vec<String>,
    /// A server the lab did not write, at this base URL (http://host:port); give either
    /// --pid or the command that starts it after `--`.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The process that serves --url (it and its children are traced).
    #[arg(long, requires = "url")]
    pub pid: Option<u32>,
    /// With --variant: the database the servers use (migrated and seeded first); default:
    /// the lab's own PostgreSQL (`lab db up`), started if needed.
    #[arg(long, value_name = "URL", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The lab servers' request log mode.
    #[arg(long, default_value = "buffered", value_parser = ["sync", "buffered", "stdout", "off"])]
    pub log: String,
    /// Tracer backend. Ring operations and blocked time need eBPF.
    #[arg(long, value_enum, default_value_t = TracerChoice::Auto)]
    pub tracer: TracerChoice,
    /// Write the report as JSON (`-`: standard output).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the result as JUnit XML (one test case per limit), for CI systems to show.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// The database the server talks to, when not its --database-url or DATABASE_URL
    /// (HOST:PORT, a bare PORT for that port at any address, or a Unix socket path), for
    /// attributing its calls.
    #[arg(long, value_name = "HOST:PORT|PORT|PATH")]
    pub db: Option<String>,
    /// A log file of the server (repeatable), when not found among its open files.
    #[arg(long, value_name = "PATH")]
    pub log_file: Vec<PathBuf>,
    /// How long a started command may take to accept connections.
    #[arg(long, default_value = "30s", value_parser = parse_seconds)]
    pub start_timeout: f64,
    /// Recording without --budget: an endpoint to measure, `PATH` or `METHOD PATH`
    /// (repeatable; default: the six TechEmpower endpoints for variants, `/` for --url).
    #[arg(long = "path", value_name = "[METHOD ]PATH")]
    pub paths: Vec<String>,
    /// Recording without --budget: keep-alive connections per endpoint.
    #[arg(long, short = 'c', default_value_t = budget::DEFAULT_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,
    /// Recording without --budget: requests in flight per connection.
    #[arg(long, short = 'p', default_value_t = budget::DEFAULT_PIPELINE,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub pipeline: u32,
    /// Recording without --budget: warm-up per endpoint.
    #[arg(long, default_value = "1s", value_parser = parse_seconds)]
    pub warmup: f64,
    /// Recording without --budget: measured window per endpoint.
    #[arg(long, short = 'd', default_value = "2s", value_parser = parse_seconds)]
    pub duration: f64,
    /// Recording: measured windows per endpoint; the limit is the largest.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub repeat: u32,
    /// Recording: tolerance as a share of each figure (the larger of this, --min-tolerance
    /// and twice the spread between windows).
    #[arg(long, default_value = "10%", value_parser = parse_percent)]
    pub headroom: f64,
    /// Recording: the least tolerance of a count limit, per request.
    #[arg(long, default_value_t = 0.25)]
    pub min_tolerance: f64,
    /// With --variant: flags for the lab's servers. With --url: the command that starts
    /// the server (it must stay in the foreground; its child processes are traced too).
    #[arg(last = true, value_name = "COMMAND_OR_SERVER_FLAGS")]
    pub command: Vec<String>,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    loadgen::config::parse_duration(s)
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let n = s.trim().strip_suffix('%').unwrap_or(s.trim());
    match n.trim().parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 0.0 => Ok(p / 100.0),
        _ => Err(format!("{s:?} is not a percentage such as 10%")),
    }
}

/// What is checked: the lab's variants, or one server at a URL.
enum Targets {
    Variants(Vec<String>),
    Command { url: String, argv: Vec<String> },
    Pid { url: String, pid: u32 },
}

pub fn run(args: CheckArgs) -> Result<ExitCode> {
    match execute(&args) {
        Ok(code) => Ok(ExitCode::from(code)),
        Err(e) => {
            eprintln!("lab check: {e:#}");
            Ok(ExitCode::from(COULD_NOT_RUN))
        }
    }
}

fn execute(args: &CheckArgs) -> Result<u8> {
    let started = unix_now();
    let budget = match &args.budget {
        Some(path) => Some(Budget::load(path)?),
        None => None,
    };
    let targets = match (&args.url, args.pid) {
        (Some(url), Some(pid)) => {
            if !args.command.is_empty() {
                bail!("give either --pid or a command after `--`, not both");
            }
            tracer::context::check_pid(pid as i32)?;
            Targets::Pid {
                url: url.clone(),
                pid,
            }
        }
        (Some(url), None) => {
            if args.command.is_empty() {
                bail!(
                    "--url needs the server: --pid PID, or the command that starts it after `--`"
                );
            }
            Targets::Command {
                url: url.clone(),
                argv: args.command.clone(),
            }
        }
        (None, _) => Targets::Variants(if !args.variant.is_empty() {
            args.variant.clone()
        } else if let Some(b) = &budget {
            let named = b.variants();
            if named.is_empty() {
                bail!(
                    "{}: its endpoints name no variant: check a server with --url (and --pid or a command), or a variant with --variant",
                    b.path.display()
                );
            }
            named
        } else {
            VARIANTS.iter().map(|v| v.to_string()).collect()
        }),
    };
    if matches!(targets, Targets::Variants(_)) && (args.db.is_some() || !args.log_file.is_empty()) {
        bail!("--db and --log-file are for servers checked with --url: the lab knows its variants' database and log");
    }
    let shape = Shape {
        connections: args.connections,
        pipeline: args.pipeline,
        warmup_s: args.warmup,
        duration_s: args.duration,
    };
    // The endpoints of each server to check.
    let plan: Vec<(Option<String>, Vec<Endpoint>)> = match &targets {
        Targets::Variants(variants) => variants
            .iter()
            .map(|v| {
                let endpoints = endpoints_for(budget.as_ref(), Some(v), &args.paths, &shape)?;
                Ok((Some(v.clone()), endpoints))
            })
            .collect::<Result<_>>()?,
        _ => vec![(
            None,
            endpoints_for(budget.as_ref(), None, &args.paths, &shape)?,
        )],
    };

    let (backend, mut notes) = choose_backend(args.tracer)?;
    if backend != tracer::Backend::Ebpf && args.record.is_none() {
        let needs: Vec<String> = plan
            .iter()
            .flat_map(|(_, es)| es.iter())
            .flat_map(|e| {
                e.limits
                    .iter()
                    .filter(|l| l.metric.needs_ebpf())
                    .map(move |l| (e, l))
            })
            .map(|(e, l)| {
                format!(
                    "{} of {} (line {})",
                    l.metric.label(),
                    e.name,
                    l.line.map_or("?".into(), |n| n.to_string())
                )
            })
            .collect();
        if !needs.is_empty() {
            bail!(
                "the budget asks for what only the eBPF tracer measures ({}), and this check traces with ptrace: run it as root (or with CAP_BPF and CAP_PERFMON), or drop those limits",
                needs.join(", ")
            );
        }
    }

    let database_url = match targets {
        Targets::Variants(_) => {
            let database = match args.database_url.as_deref().filter(|u| !u.is_empty()) {
                Some(url) => db::Database::External {
                    url: url.to_string(),
                },
                None => db::Database::from_env(),
            };
            eprintln!(
                "lab check: preparing the database ({})",
                db::redact(&database.url())
            );
            if let Some(notice) = database.port_notice() {
                eprintln!("lab check: note: {notice}");
            }
            Some(database.ensure_ready()?)
        }
        _ => None,
    };
    // Before the placement pins this thread to the load generator's CPUs.
    let environment = crate::run_cmd::environment();
    let placement = Placement::choose();
    let windows = if args.record.is_some() {
        args.repeat
    } else {
        1
    };
    let total: u64 = plan.iter().map(|(_, es)| es.len() as u64).sum();
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let checker = Checker {
        args,
        backend,
        placement: &placement,
        progress: &progress,
        windows,
        database_url: database_url.as_deref(),
    };
    let mut servers = Vec::new();
    for (variant, endpoints) in &plan {
        servers.push(checker.server(&targets, variant.as_deref(), endpoints, &mut notes));
    }
    progress.finish_and_clear();

    let could_not_run = servers.iter().any(|s| s.error.is_some());
    if let Some(path) = &args.record {
        if could_not_run {
            print_errors(&servers);
            bail!("nothing recorded: not every server could be measured");
        }
        let failed: Vec<String> = servers
            .iter()
            .flat_map(|s| {
                s.endpoints
                    .iter()
                    .filter(|e| e.error.is_some())
                    .map(move |e| {
                        format!(
                            "{} {}: {}",
                            s.server,
                            e.name,
                            e.error.as_deref().unwrap_or_default()
                        )
                    })
            })
            .collect();
        if !failed.is_empty() {
            bail!("nothing recorded: {}", failed.join("; "));
        }
        record(args, path, &plan, &servers, backend, &shape, &environment)?;
    }
    let passed = !could_not_run
        && servers
            .iter()
            .all(|s| s.endpoints.iter().all(|e| e.passed()));
    let report = CheckReport {
        schema: CHECK_SCHEMA.into(),
        schema_version: CHECK_SCHEMA_VERSION,
        budget: args.budget.as_ref().map(|p| p.display().to_string()),
        started_unix_s: started,
        finished_unix_s: unix_now(),
        environment: environment.clone(),
        tracer: backend.name().into(),
        notes,
        servers,
        passed,
    };
    if args.record.is_none() {
        println!("{}", crate::table::render_check(&report));
    } else {
        println!("{}", crate::table::render_recorded(&report));
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, junit::render(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if could_not_run {
        print_errors(&report.servers);
        COULD_NOT_RUN
    } else if report.passed || args.record.is_some() {
        0
    } else {
        EXCEEDED
    })
}

fn print_errors(servers: &[ServerCheck]) {
    for s in servers {
        if let Some(e) = &s.error {
            eprintln!("lab check: {}: could not check: {e}", s.server);
            if let Some(tail) = s.log_tail.as_deref().filter(|t| !t.is_empty()) {
                eprintln!("  its last output:\n{}", indent(tail));
            }
        }
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The budget's endpoints for a variant (or for a URL's server: those naming no variant),
/// or, recording without a budget, endpoints made from `--path`.
fn endpoints_for(
    budget: Option<&Budget>,
    variant: Option<&str>,
    paths: &[String],
    shape: &Shape,
) -> Result<Vec<Endpoint>> {
    if let Some(b) = budget {
        let endpoints: Vec<Endpoint> = b
            .endpoints
            .iter()
            .filter(|e| e.variant.is_none() || e.variant.as_deref() == variant)
            .cloned()
            .collect();
        if endpoints.is_empty() {
            match variant {
                Some(v) => bail!("{} has no endpoint for variant {v}", b.path.display()),
                None => bail!(
                    "{}: every endpoint names a variant ({}): check those with --variant",
                    b.path.display(),
                    b.variants().join(", ")
                ),
            }
        }
        return Ok(endpoints);
    }
    let defaults: Vec<String> = match (paths.is_empty(), variant) {
        (false, _) => paths.to_vec(),
        (true, Some(_)) => [
            "/plaintext",
            "/json",
            "/db",
            "/queries?queries=5",
            "/fortunes",
            "/updates?queries=5",
        ]
        .map(String::from)
        .to_vec(),
        (true, None) => vec!["/".into()],
    };
    let endpoints: Vec<Endpoint> = defaults
        .iter()
        .map(|p| Endpoint::plain(p, variant, shape))
        .collect();
    for e in &endpoints {
        e.validate()
            .map_err(|m| anyhow::anyhow!("--path {:?}: {m}", e.name))?;
    }
    Ok(endpoints)
}

/// The backend and, when it is not what the user hoped for, a note said loudly.
fn choose_backend(choice: TracerChoice) -> Result<(tracer::Backend, Vec<String>)> {
    match choice {
        TracerChoice::Ebpf => {
            tracer::privileges::check_ebpf()?;
            Ok((tracer::Backend::Ebpf, vec![]))
        }
        TracerChoice::Ptrace => Ok((
            tracer::Backend::Ptrace,
            vec!["traced with ptrace (--tracer ptrace): approximate, and blind to ring operations and blocked time".into()],
        )),
        TracerChoice::Auto => {
            let (backend, note) = tracer::privileges::auto_backend();
            let notes: Vec<String> = note.into_iter().collect();
            for n in &notes {
                eprintln!("lab check: WARNING: {n}");
            }
            Ok((backend, notes))
        }
    }
}

/// Everything the measurements share.
struct Checker<'a> {
    args: &'a CheckArgs,
    backend: tracer::Backend,
    placement: &'a Placement,
    progress: &'a ProgressBar,
    windows: u32,
    database_url: Option<&'a str>,
}

impl Checker<'_> {
    /// Starts (or finds) a server, traces it, measures each endpoint, stops it.
    fn server(
        &self,
        targets: &Targets,
        variant: Option<&str>,
        endpoints: &[Endpoint],
        notes: &mut Vec<String>,
    ) -> ServerCheck {
        let mut check = ServerCheck {
            server: variant.map_or_else(
                || match targets {
                    Targets::Command { url, .. } | Targets::Pid { url, .. } => url.clone(),
                    Targets::Variants(_) => unreachable!("variants have names"),
                },
                String::from,
            ),
            pid: None,
            command: None,
            endpoints: Vec::new(),
            error: None,
            log_tail: None,
        };
        let label = check.server.clone();
        self.progress.set_message(format!("{label} · starting"));
        let log_file = variant.map(|v| {
            std::env::temp_dir().join(format!("lab-check-{}-{v}.log", std::process::id()))
        });
        let started = match (targets, variant) {
            (Targets::Variants(_), Some(v)) => self.start_variant(v, log_file.as_deref()),
            (Targets::Command { url, argv }, _) => {
                check.command = Some(argv.clone());
                Started::start(argv, url, Duration::from_secs_f64(self.args.start_timeout))
                    .map(Served::Command)
            }
            (Targets::Pid { url, pid }, _) => Ok(Served::Running {
                pid: *pid,
                url: url.trim_end_matches('/').to_string(),
            }),
            (Targets::Variants(_), None) => unreachable!("a variant per server"),
        };
        let mut served = match started {
            Ok(s) => s,
            Err(e) => {
                check.error = Some(format!("did not start: {e:#}"));
                self.progress.inc(endpoints.len() as u64);
                return check;
            }
        };
        check.pid = Some(served.pid());
        if !matches!(served, Served::Running { .. }) {
            self.placement.pin_process(served.pid());
        }
        let session = match self.trace(&served, variant, log_file.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                check.error = Some(format!("the tracer did not start: {e:#}"));
                check.log_tail = served.log_tail();
                self.progress.inc(endpoints.len() as u64);
                served.stop(Duration::from_secs(10));
                return check;
            }
        };
        for endpoint in endpoints {
            self.progress
                .set_message(format!("{label} · {}", endpoint.name));
            let measured = self.measure(&served, &session, endpoint);
            self.progress.inc(1);
            match measured {
                Ok(e) => {
                    let least = e.windows.iter().map(|w| w.requests).min().unwrap_or(0);
                    if e.error.is_none() && e.errors > 0 {
                        notes.push(format!(
                            "{label} · {}: {} failed requests against {} responses in the measured window (under 1%: counted, not failed)",
                            e.name,
                            e.errors,
                            e.requests
                        ));
                    }
                    if e.error.is_none() && least < FEW_REQUESTS {
                        notes.push(format!(
                            "{label} · {}: only {least} responses in a window: its figures are coarse; give it a longer `duration`",
                            e.name
                        ));
                    }
                    check.endpoints.push(e)
                }
                Err(Unusable(reason)) => {
                    check.error = Some(reason);
                    break;
                }
            }
            if !served.is_running() {
                check.log_tail = served.log_tail();
                if let Some(last) = check.endpoints.last_mut() {
                    last.error
                        .get_or_insert_with(|| "the server exited under load".into());
                }
                break;
            }
        }
        if let Err(e) = session.stop() {
            notes.push(format!("{label}: the tracer failed when stopping: {e:#}"));
        }
        if check.error.is_some() || check.endpoints.iter().any(|e| e.error.is_some()) {
            check.log_tail = check.log_tail.take().or_else(|| served.log_tail());
        }
        if let Some(note) = served.stop(Duration::from_secs(20)) {
            notes.push(format!("{label}: {note}"));
        }
        if let Some(f) = log_file {
            let _ = std::fs::remove_file(f);
        }
        check
    }

    fn start_variant(&self, variant: &str, log_file: Option<&Path>) -> Result<Served> {
        let binary = servers::launch::sibling_binary("server")?;
        let mut options = servers::launch::LaunchOptions::new(
            variant,
            self.database_url.expect("variants have the lab's database"),
        );
        options.log = self.args.log.clone();
        options.log_file = log_file.map(Path::to_path_buf);
        options.extra_args = self.args.command.clone();
        Ok(Served::Variant(servers::launch::ServerProcess::start(
            &binary, &options,
        )?))
    }

    fn trace(
        &self,
        served: &Served,
        variant: Option<&str>,
        log_file: Option<&Path>,
    ) -> Result<tracer::Session> {
        let port = server::url_addr(&served.base_url())?.port();
        let overrides = match variant {
            Some(_) => tracer::Overrides {
                db: self.database_url.and_then(tracer::DbEndpoint::from_url),
                listen_ports: vec![port],
                log_files: match self.args.log.as_str() {
                    "sync" | "buffered" => log_file.map(Path::to_path_buf).into_iter().collect(),
                    _ => vec![],
                },
            },
            None => tracer::Overrides {
                db: self
                    .args
                    .db
                    .as_deref()
                    .map(tracer::DbEndpoint::parse)
                    .transpose()?,
                listen_ports: vec![port],
                log_files: self.args.log_file.clone(),
            },
        };
        let pid = served.pid() as i32;
        self.placement.beside_server(self.backend, || {
            tracer::start(
                tracer::Target::Pid(pid),
                tracer::Options {
                    overrides,
                    variant: variant.map(String::from),
                    // Children too: a server's worker processes (nginx's) serve for it.
                    ..tracer::Options::new(self.backend)
                },
            )
        })
    }

    /// One endpoint: warm-up, then the measured window(s) between snapshots of the trace,
    /// in one run of the load generator (the connections stay open throughout).
    fn measure(
        &self,
        served: &Served,
        session: &tracer::Session,
        endpoint: &Endpoint,
    ) -> Result<EndpointCheck, Unusable> {
        let windows = self.windows as usize;
        let timeout = if self.backend == tracer::Backend::Ebpf {
            TIMEOUT_S
        } else {
            PTRACE_TIMEOUT_S
        };
        // Longer than needed: the run is stopped at the last boundary.
        let planned = (endpoint.warmup_s + endpoint.duration_s * windows as f64) * STRETCH + 5.0;
        let config = endpoint.load_config(&served.base_url(), planned, timeout);
        let mut check = EndpointCheck {
            name: endpoint.name.clone(),
            method: endpoint.method.clone(),
            path: endpoint.path.clone(),
            connections: endpoint.connections,
            pipeline: endpoint.pipeline,
            warmup_s: endpoint.warmup_s,
            duration_s: endpoint.duration_s,
            line: endpoint.line,
            requests: 0,
            errors: 0,
            requests_per_s: 0.0,
            windows: Vec::new(),
            limits: Vec::new(),
            error: None,
        };
        // (requests, errors, elapsed, snapshot) at each boundary.
        let mut marks: Vec<(u64, u64, f64, tracer::Profile)> = Vec::new();
        let mut snapshot_error = None;
        let label = format!("{} · {}", served_label(served), endpoint.name);
        let result = loadgen::run(&config, &mut |p: &loadgen::Progress| {
            // A phase ends when its time is up and it has served its share of requests:
            // a server stalled by a busy machine (or opening its database connections
            // late) gets the time to leave the stall behind, up to STRETCH times longer.
            let (since, served_since, length, least) = match marks.last() {
                None => (0.0, p.requests, endpoint.warmup_s, MIN_WARMUP_REQUESTS),
                Some(m) => (
                    m.2,
                    p.requests - m.0,
                    endpoint.duration_s,
                    MIN_WINDOW_REQUESTS,
                ),
            };
            let elapsed = p.elapsed_s - since;
            if elapsed >= length && (served_since >= least || elapsed >= length * STRETCH) {
                match session.snapshot() {
                    Ok(profile) => marks.push((p.requests, p.errors, p.elapsed_s, profile)),
                    Err(e) => {
                        snapshot_error = Some(format!("{e:#}"));
                        return loadgen::Control::Stop;
                    }
                }
                if marks.len() > windows {
                    return loadgen::Control::Stop;
                }
            }
            let phase = if marks.is_empty() {
                "warming up"
            } else {
                "measuring"
            };
            self.progress
                .set_message(format!("{label} · {phase} · {:.0} req/s", p.rps));
            loadgen::Control::Continue
        });
        if let Some(e) = snapshot_error {
            return Err(Unusable(format!("the tracer stopped answering: {e}")));
        }
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                check.error = Some(format!("load generator: {e}"));
                return Ok(check);
            }
        };
        if marks.len() <= windows {
            check.error = Some(format!(
                "the load ended after {:.1} s, before the measured window did ({} requests, errors {:?})",
                report.duration_s, report.requests, report.errors
            ));
            return Ok(check);
        }
        for pair in marks.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let requests = b.0 - a.0;
            check.requests += requests;
            check.errors += b.1 - a.1;
            check.windows.push(Figures::between(&a.3, &b.3, requests));
        }
        let seconds = marks.last().map_or(0.0, |m| m.2) - marks[0].2;
        check.requests_per_s = check.requests as f64 / seconds.max(1e-9);
        if check.requests == 0 {
            check.error = Some("no response in the measured window".into());
            return Ok(check);
        }
        // A rare failure (a database timeout on a busy machine) is a note; more is a
        // server that no longer does its job, whatever its syscalls.
        if check.errors * 100 > check.requests {
            let statuses: Vec<String> = report
                .status
                .iter()
                .map(|(s, n)| format!("{s}: {n}"))
                .collect();
            check.error = Some(format!(
                "{} failed requests against {} responses in the measured window (errors {:?}; statuses {})",
                check.errors,
                check.requests,
                report.errors,
                statuses.join(", ")
            ));
            return Ok(check);
        }
        // A process (with its children) that made next to no calls while requests were
        // answered is not what serves them: a --pid of the wrong process, say.
        let quiet = check.windows.iter().all(|w| w.syscalls + w.ring_ops < 0.05);
        if quiet {
            return Err(Unusable(format!(
                "pid {} made {:.3} syscalls per request while {} requests were answered: it is not the process that serves {} (give the pid of the server that owns the listening socket, or of a process above it)",
                served.pid(),
                check.windows[0].syscalls,
                check.requests,
                served.base_url()
            )));
        }
        let figures = &check.windows[0];
        check.limits = endpoint
            .limits
            .iter()
            .map(|l| {
                LimitCheck::new(
                    l.metric.clone(),
                    l.max,
                    l.tolerance,
                    l.metric.of(figures),
                    l.line,
                )
            })
            .collect();
        Ok(check)
    }
}

/// Why a server cannot be checked at all (as opposed to failing a limit).
struct Unusable(String);

fn served_label(served: &Served) -> String {
    match served {
        Served::Variant(s) => s.variant().to_string(),
        _ => served.base_url(),
    }
}

/// Writes the budget measured today.
fn record(
    args: &CheckArgs,
    path: &Path,
    plan: &[(Option<String>, Vec<Endpoint>)],
    servers: &[ServerCheck],
    backend: tracer::Backend,
    shape: &Shape,
    env: &crate::results::Environment,
) -> Result<()> {
    let headroom = Headroom {
        fraction: args.headroom,
        floor: args.min_tolerance,
        named_from: 0.5,
    };
    let recorded: Vec<budget::Recorded<'_>> = plan
        .iter()
        .zip(servers)
        .flat_map(|((_, endpoints), s)| {
            endpoints
                .iter()
                .zip(&s.endpoints)
                .map(|(endpoint, e)| budget::Recorded {
                    endpoint,
                    windows: &e.windows,
                })
        })
        .collect();
    let now = crate::clock::Utc::now();
    let (y, m, d) = (now.year, now.month, now.day);
    let how = match (&args.url, args.pid) {
        (Some(url), Some(_)) => format!("--url {url} --pid PID"),
        (Some(url), None) => format!("--url {url} -- {}", args.command.join(" ")),
        (None, _) => {
            let variants: Vec<&str> = plan.iter().filter_map(|(v, _)| v.as_deref()).collect();
            format!("--variant {}", variants.join(","))
        }
    };
    let mut header = vec![
        format!(
            "A budget for `lab check` (docs/check.md), recorded {y:04}-{m:02}-{d:02} by `lab check --record` on {} ({}, {} CPUs, kernel {}), tracer {}.",
            env.hostname, env.cpu_model, env.cpus, env.kernel, backend.name()
        ),
        format!(
            "Each max is the largest of {} measured window(s) per endpoint (after its warm-up); each tolerance the larger of {}% of it, {} per request and twice the spread between the windows.",
            args.repeat,
            (args.headroom * 1e4).round() / 100.0,
            crate::table::figure(args.min_tolerance)
        ),
        format!("Check with: lab check --budget {} {how}", path.display()),
    ];
    if backend != tracer::Backend::Ebpf {
        header.push("Recorded with ptrace: no ring_ops limits (ptrace cannot see io_uring ring operations).".into());
    }
    if args.budget.is_none() {
        header.push(format!(
            "Endpoints from --path: {} connections, pipeline {}, warm-up {} s, window {} s.",
            shape.connections, shape.pipeline, shape.warmup_s, shape.duration_s
        ));
    }
    let text = budget::record(
        &recorded,
        &headroom,
        backend == tracer::Backend::Ebpf,
        &header,
    );
    // What we write must read back: the same parser as the check.
    Budget::parse(&text, path).map_err(|e| {
        anyhow::anyhow!("the recorded budget does not read back ({e}); this is a bug")
    })?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "lab check: recorded {} endpoint(s) into {}",
        recorded.len(),
        path.display()
    );
    Ok(())
}
