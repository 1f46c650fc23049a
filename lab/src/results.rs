//! The result types `lab` reports, in one place: what `lab run` writes to
//! `results/<run-id>/run.json`, and what `lab report` and `lab compare` read back. The
//! schema is versioned ([`SCHEMA`], [`SCHEMA_VERSION`]) and documented in
//! `docs/run-json.md`; the load generator's report and the tracer's profile are embedded
//! as their own crates define them (each carries its own schema name). What `lab check`
//! reports is in [`check`].

use serde::{Deserialize, Serialize};

pub mod check;

pub const SCHEMA: &str = "syscall-lab/run";
/// Version 2 added `cpu_profile` and `config.flamegraph_s`; version 1 files read as
/// runs without a profiling phase. Version 3 added `topology` and `config.hosts`,
/// `config.db_latency_ms`, `config.client_latency_ms`, `config.jitter_ms`; older files read
/// as runs on one host. Version 4 added `variants[].request_log` (the server's request
/// log summarised; `config.keep_logs`) and `process.server_cpus`; it split blocked time: a
/// category's `offcpu_us_per_request` is the request path's only,
/// `idle_offcpu_us_per_request` the waits of threads that served no request (in versions
/// 1-3 the first held both and the second reads as 0); and it added `config.trace_db`,
/// `rounds[].database` and `summary.database` (`--trace-db`).
pub const SCHEMA_VERSION: u32 = 4;

/// The oldest version [`Run::load`] reads.
pub const OLDEST_SCHEMA_VERSION: u32 = 1;

/// The attribution categories, in the order tables and charts show them (the names are
/// the tracer's: `tracer::Category`).
pub const CATEGORIES: [&str; 8] = [
    "network",
    "database",
    "logging",
    "event-loop",
    "sync",
    "threads",
    "memory",
    "other",
];

/// One `lab run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub schema: String,
    pub schema_version: u32,
    /// `YYYYMMDD-HHMMSS`, also the folder name under `results/`.
    pub id: String,
    pub started_unix_s: f64,
    pub finished_unix_s: f64,
    pub environment: Environment,
    pub config: RunConfig,
    /// `--hosts separate`: the hosts and links the run used; None when everything ran on
    /// this host's loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<Topology>,
    pub variants: Vec<VariantResult>,
}

/// The separate hosts of `lab run --hosts separate`: network namespaces on this machine,
/// joined by veth pairs (docs/hosts.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Topology {
    /// The address range the hosts use (CIDR); it exists only inside the namespaces.
    pub subnet: String,
    pub hosts: Vec<NetHost>,
    pub links: Vec<NetLink>,
}

/// One host: a network namespace of its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetHost {
    /// `client` (the load generator), `server` or `db` (PostgreSQL).
    pub role: String,
    pub namespace: String,
    pub addresses: Vec<String>,
}

/// A link between two hosts, and what it was measured to take.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetLink {
    /// `client-server` or `server-db`.
    pub name: String,
    /// The address of each end.
    pub from: String,
    pub to: String,
    /// Round trip added on purpose (ms; half of it each way), 0 for none.
    pub added_rtt_ms: f64,
    /// Each frame's one-way delay varies uniformly by up to this much (ms).
    pub jitter_ms: f64,
    /// How the latency was made: `none` (a plain veth pair), `netem` (the kernel's qdisc
    /// on both ends), or `forwarder` (the lab's delaying forwarder in the `wire` namespace).
    pub delay: String,
    /// The round trip the lab saw on this link before the load started.
    pub measured: LinkProbe,
}

/// A link's round trip, measured from the client end (ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkProbe {
    /// TCP connect: SYN to SYN-ACK, answered by the far kernel.
    pub connect_ms: Spread,
    /// A one-byte request and its echo over one connection.
    pub echo_rtt_ms: Spread,
    pub samples: u32,
}

/// Where the run happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Environment {
    pub hostname: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_bytes: u64,
    pub lab_version: String,
    pub git_commit: Option<String>,
    pub postgres: Option<String>,
    /// How server and load generator were placed on CPUs.
    pub pinning: String,
    /// The tracer backend that ran (`ebpf`, `ptrace`, or `off`).
    pub tracer_backend: String,
    /// Anything a reader should know (a fallback taken, a limit hit).
    pub notes: Vec<String>,
}

/// What was asked for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunConfig {
    pub variants: Vec<String>,
    /// plaintext, json, db, queries, fortunes, updates or mix.
    pub workload: String,
    /// The URL path (or mix) the load generator requested.
    pub target: String,
    pub queries: u32,
    pub connections: u32,
    /// Requests in flight per connection (1: no pipelining).
    #[serde(default)]
    pub pipeline: u32,
    /// A new connection for every request.
    #[serde(default)]
    pub connection_per_request: bool,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Open-loop rate; None for closed loop.
    pub rate: Option<f64>,
    /// The servers' `--log` mode.
    pub log: String,
    pub tracer: String,
    pub repeat: u32,
    /// `--flamegraph`: a profiling phase per variant after its measured window.
    pub flamegraph: bool,
    /// Length of each profile in that phase (the flame graph, then the protobuf).
    #[serde(default)]
    pub flamegraph_s: u32,
    /// Extra flags every server got (a workshop's knob).
    #[serde(default)]
    pub server_args: Vec<String>,
    /// `same` (everything on this host's loopback) or `separate` (network namespaces).
    #[serde(default = "same_host")]
    pub hosts: String,
    /// Round trip added between server and database, and between load generator and
    /// server (ms; half each way).
    #[serde(default)]
    pub db_latency_ms: f64,
    #[serde(default)]
    pub client_latency_ms: f64,
    #[serde(default)]
    pub jitter_ms: f64,
    /// `--keep-logs`: the servers' full request logs stay in the run folder.
    #[serde(default)]
    pub keep_logs: bool,
    /// `--trace-db`: the database's postmaster and backends traced beside the server.
    #[serde(default)]
    pub trace_db: bool,
}

fn same_host() -> String {
    "same".into()
}

/// One variant across every round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantResult {
    pub variant: String,
    pub ok: bool,
    /// Why the variant failed (did not start, crashed, errored under load).
    pub failure: Option<String>,
    /// The server's last log lines, when it failed.
    pub log_tail: Option<String>,
    pub rounds: Vec<Round>,
    /// Medians over rounds (None when no round completed).
    pub summary: Option<Summary>,
    /// Flame graph of a separate profiling phase, relative to the run folder.
    pub flamegraph: Option<String>,
    /// That profiling phase (`--flamegraph`), None without it.
    #[serde(default)]
    pub cpu_profile: Option<CpuProfile>,
    /// The server's request log over all its rounds; None with `--log off` or `stdout`.
    #[serde(default)]
    pub request_log: Option<RequestLog>,
}

/// A variant's request log (every round: warm-up, measured window, profiling phase).
/// The server writes it in full while it runs, since logging's syscalls are part of what
/// is measured; afterwards the run keeps this summary and, with `--keep-logs` only, the
/// file itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestLog {
    /// The full log relative to the run folder, when it was kept; None when it was
    /// removed after this summary was taken.
    pub file: Option<String>,
    pub bytes: u64,
    pub lines: u64,
    /// Its last lines (at most [`LOG_LAST_LINES`]).
    pub last_lines: Vec<String>,
}

/// How many of a request log's last lines run.json keeps.
pub const LOG_LAST_LINES: usize = 5;

/// A variant's profiling phase: the server under the same load again, the tracer
/// detached, sampled by its own `/debug/pprof` endpoints. Not part of any measured
/// window: sampling adds syscalls (a signal return per sample).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuProfile {
    /// The pprof protobuf (`pprof -top FILE`), relative to the run folder.
    pub pprof: Option<String>,
    /// Samples in the protobuf (199 per second per busy CPU).
    pub samples: i64,
    /// The functions with the most self samples, most first (at most [`TOP_FUNCTIONS`]).
    pub top: Vec<servers::profile::FunctionShare>,
    /// Self samples per part of the server (`servers::profile::area`: system calls,
    /// allocator, HTTP parsing, hyper, database driver, async runtime...), most first.
    #[serde(default)]
    pub areas: Vec<(String, i64)>,
    /// Why the phase, or part of it, failed.
    pub error: Option<String>,
}

/// How many functions `cpu_profile.top` keeps.
pub const TOP_FUNCTIONS: usize = 15;

/// One measured window of one variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    pub round: u32,
    pub load: loadgen::Report,
    pub profile: Option<tracer::Profile>,
    pub process: ProcessFigures,
    /// `--trace-db`: the database's side of the same window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseRound>,
}

/// The database's side of one measured window (`lab run --trace-db`): its postmaster and
/// every process below it, traced in the same session as the server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DatabaseRound {
    /// The postmaster's pid (the root of the traced tree).
    pub postmaster: i32,
    /// Its profile, normalised by the requests the load generator completed (the HTTP
    /// requests: what the database does per request of the server).
    pub profile: Option<tracer::Profile>,
    /// CPU time of the whole tree over the window (processes that exited meanwhile
    /// included, through their parent's children's times).
    pub user_cpu_s: f64,
    pub system_cpu_s: f64,
    /// Processes in the tree at the end of the window.
    pub processes: u64,
}

/// The server process over the measured window, from /proc.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessFigures {
    pub user_cpu_s: f64,
    pub system_cpu_s: f64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    /// Threads at the end of the window.
    pub threads: u64,
    /// Peak resident set size of the process's life (VmHWM).
    pub peak_rss_bytes: u64,
    /// The CPUs the server was allowed to run on (its placement, read back from the
    /// kernel at the start of the window); empty in files older than version 4.
    #[serde(default)]
    pub server_cpus: Vec<usize>,
}

/// A median and the range it came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return Spread::default();
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Spread {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        }
    }
}

/// Per-request figures of one category.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CategorySummary {
    pub category: String,
    pub syscalls_per_request: f64,
    pub ring_ops_per_request: f64,
    /// Time blocked (off-CPU, not run-queue delay) inside this category's calls, per
    /// request, on the request path: while the thread served a request.
    pub offcpu_us_per_request: f64,
    /// Time blocked inside this category's calls by threads that served no request at the
    /// time (idle pool workers, the log writer between flushes, an event loop with nothing
    /// in flight), per request of the window: not time any request waited.
    #[serde(default)]
    pub idle_offcpu_us_per_request: f64,
}

impl CategorySummary {
    /// Medians over traced windows, each `(profile, requests)`, of every category.
    pub fn of_profiles(windows: &[(&tracer::Profile, f64)]) -> Vec<CategorySummary> {
        CATEGORIES
            .iter()
            .map(|name| {
                let of = |f: &dyn Fn(&tracer::profile::CategoryRow) -> f64| {
                    let per: Vec<f64> = windows
                        .iter()
                        .map(|(profile, requests)| {
                            let row = profile
                                .categories
                                .iter()
                                .find(|c| c.category.name() == *name);
                            row.map_or(0.0, f) / requests
                        })
                        .collect();
                    Spread::of(&per).median
                };
                CategorySummary {
                    category: name.to_string(),
                    syscalls_per_request: of(&|c| c.syscalls.count as f64),
                    ring_ops_per_request: of(&|c| c.ring_ops.count as f64),
                    offcpu_us_per_request: of(&|c| {
                        (c.syscalls.request_blocked_ns() + c.ring_ops.request_blocked_ns()) as f64
                            / 1e3
                    }),
                    idle_offcpu_us_per_request: of(&|c| {
                        (c.syscalls.idle_blocked_ns + c.ring_ops.idle_blocked_ns) as f64 / 1e3
                    }),
                }
            })
            .collect()
    }
}

/// The database's side of a variant (`--trace-db`): medians over rounds, per request of
/// the server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DatabaseSummary {
    pub syscalls_per_request: Spread,
    /// CPU of the database's processes per request.
    pub cpu_us_per_request: Spread,
    pub categories: Vec<CategorySummary>,
    /// Per process role (`client backend`, `walwriter`...), most calls first.
    pub roles: Vec<RoleSummary>,
}

/// One process role of the database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoleSummary {
    pub role: String,
    /// Most processes of this role seen in one window.
    pub processes: u64,
    pub syscalls_per_request: f64,
    /// Blocked on the request path, per request (µs).
    pub offcpu_us_per_request: f64,
    /// Blocked while serving no request (a backend waiting for its next query), per
    /// request (µs).
    pub idle_offcpu_us_per_request: f64,
}

impl DatabaseSummary {
    /// Syscalls and ring operations per request in category `name`.
    pub fn calls_in(&self, name: &str) -> f64 {
        self.categories
            .iter()
            .find(|c| c.category == name)
            .map_or(0.0, |c| c.syscalls_per_request + c.ring_ops_per_request)
    }

    /// Idle waits per request, every category together (µs).
    pub fn idle_us(&self) -> f64 {
        self.categories
            .iter()
            .map(|c| c.idle_offcpu_us_per_request)
            .sum()
    }

    fn of(rounds: &[&Round]) -> Option<DatabaseSummary> {
        let traced: Vec<(&tracer::Profile, f64, &DatabaseRound)> = rounds
            .iter()
            .filter_map(|r| {
                let d = r.database.as_ref()?;
                Some((d.profile.as_ref()?, r.load.requests.max(1) as f64, d))
            })
            .collect();
        if traced.is_empty() {
            return None;
        }
        let windows: Vec<(&tracer::Profile, f64)> =
            traced.iter().map(|(p, n, _)| (*p, *n)).collect();
        let mut names: Vec<&str> = traced
            .iter()
            .flat_map(|(p, _, _)| p.processes.iter().map(|r| r.process.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut roles: Vec<RoleSummary> = names
            .into_iter()
            .map(|role| {
                let median = |f: &dyn Fn(&tracer::profile::ProcessRow) -> f64| {
                    let per: Vec<f64> = traced
                        .iter()
                        .map(|(p, n, _)| {
                            p.processes
                                .iter()
                                .filter(|r| r.process == role)
                                .map(f)
                                .sum::<f64>()
                                / n
                        })
                        .collect();
                    Spread::of(&per).median
                };
                RoleSummary {
                    role: role.to_string(),
                    processes: traced
                        .iter()
                        .flat_map(|(p, _, _)| p.processes.iter())
                        .filter(|r| r.process == role)
                        .map(|r| r.pids)
                        .max()
                        .unwrap_or(0),
                    syscalls_per_request: median(&|r| r.count as f64),
                    offcpu_us_per_request: median(&|r| {
                        r.blocked_ns.saturating_sub(r.idle_blocked_ns) as f64 / 1e3
                    }),
                    idle_offcpu_us_per_request: median(&|r| r.idle_blocked_ns as f64 / 1e3),
                }
            })
            .collect();
        roles.sort_by(|a, b| {
            b.syscalls_per_request
                .total_cmp(&a.syscalls_per_request)
                .then_with(|| a.role.cmp(&b.role))
        });
        Some(DatabaseSummary {
            syscalls_per_request: Spread::of(
                &traced
                    .iter()
                    .map(|(p, n, _)| (p.totals.syscalls.count + p.totals.ring_ops.count) as f64 / n)
                    .collect::<Vec<_>>(),
            ),
            cpu_us_per_request: Spread::of(
                &traced
                    .iter()
                    .map(|(_, n, d)| (d.user_cpu_s + d.system_cpu_s) * 1e6 / n)
                    .collect::<Vec<_>>(),
            ),
            categories: CategorySummary::of_profiles(&windows),
            roles,
        })
    }
}

/// What the table and the charts show for a variant: medians over rounds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub requests_per_s: Spread,
    pub p50_ms: Spread,
    pub p99_ms: Spread,
    /// None when the tracer was off.
    pub syscalls_per_request: Option<Spread>,
    pub ring_ops_per_request: Option<Spread>,
    pub categories: Vec<CategorySummary>,
    pub cpu_us_per_request: Spread,
    pub context_switches_per_request: Spread,
    pub threads: u64,
    pub peak_rss_bytes: u64,
    /// `--trace-db`: the database's side, None without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseSummary>,
}

impl Summary {
    /// Medians over the rounds of one variant.
    pub fn of(rounds: &[Round]) -> Option<Summary> {
        if rounds.is_empty() {
            return None;
        }
        let per_round =
            |f: &dyn Fn(&Round) -> f64| Spread::of(&rounds.iter().map(f).collect::<Vec<_>>());
        let requests = |r: &Round| r.load.requests.max(1) as f64;
        let traced: Vec<&Round> = rounds.iter().filter(|r| r.profile.is_some()).collect();
        let windows: Vec<(&tracer::Profile, f64)> = traced
            .iter()
            .map(|r| (r.profile.as_ref().expect("filtered above"), requests(r)))
            .collect();
        let categories = CategorySummary::of_profiles(&windows);
        let traced_spread = |f: &dyn Fn(&tracer::Profile) -> f64| {
            (!traced.is_empty()).then(|| {
                Spread::of(
                    &traced
                        .iter()
                        .map(|r| f(r.profile.as_ref().expect("filtered above")) / requests(r))
                        .collect::<Vec<_>>(),
                )
            })
        };
        Some(Summary {
            requests: rounds.iter().map(|r| r.load.requests).sum(),
            errors: rounds.iter().map(|r| r.load.errors_total).sum(),
            requests_per_s: per_round(&|r| r.load.achieved_rps),
            p50_ms: per_round(&|r| r.load.latency.p50_ms),
            p99_ms: per_round(&|r| r.load.latency.p99_ms),
            syscalls_per_request: traced_spread(&|p| p.totals.syscalls.count as f64),
            ring_ops_per_request: traced_spread(&|p| p.totals.ring_ops.count as f64),
            categories,
            cpu_us_per_request: per_round(&|r| {
                (r.process.user_cpu_s + r.process.system_cpu_s) * 1e6 / requests(r)
            }),
            context_switches_per_request: per_round(&|r| {
                (r.process.voluntary_switches + r.process.involuntary_switches) as f64 / requests(r)
            }),
            threads: rounds.iter().map(|r| r.process.threads).max().unwrap_or(0),
            peak_rss_bytes: rounds
                .iter()
                .map(|r| r.process.peak_rss_bytes)
                .max()
                .unwrap_or(0),
            database: DatabaseSummary::of(&rounds.iter().collect::<Vec<_>>()),
        })
    }
}

impl Run {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Run> {
        use anyhow::Context;
        let file = if path.is_dir() {
            path.join("run.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let run: Run = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a lab run.json", file.display()))?;
        if run.schema != SCHEMA
            || !(OLDEST_SCHEMA_VERSION..=SCHEMA_VERSION).contains(&run.schema_version)
        {
            anyhow::bail!(
                "{} has schema {} v{}; this lab reads {SCHEMA} v{OLDEST_SCHEMA_VERSION} to v{SCHEMA_VERSION}",
                file.display(),
                run.schema,
                run.schema_version
            );
        }
        Ok(run)
    }

    /// Variants that failed.
    pub fn failed(&self) -> impl Iterator<Item = &VariantResult> {
        self.variants.iter().filter(|v| !v.ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_median_of_odd_and_even_counts() {
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(Spread::of(&[]), Spread::default());
    }
}
