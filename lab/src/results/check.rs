//! What `lab check` reports: per server and endpoint, the figures measured per request
//! and each budget limit against them (`--json FILE`, schema [`CHECK_SCHEMA`], documented
//! in docs/check.md). The JUnit file and the table are made from these types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Environment;

pub const CHECK_SCHEMA: &str = "syscall-lab/check";
pub const CHECK_SCHEMA_VERSION: u32 = 1;

/// One `lab check` (or `lab check --record`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    pub schema: String,
    pub schema_version: u32,
    /// The budget file checked against (`None` when recording without one).
    pub budget: Option<String>,
    pub started_unix_s: f64,
    pub finished_unix_s: f64,
    pub environment: Environment,
    /// `ebpf` or `ptrace`.
    pub tracer: String,
    /// Anything a reader should know (ptrace instead of eBPF, few requests measured).
    pub notes: Vec<String>,
    pub servers: Vec<ServerCheck>,
    /// Every limit of every endpoint held, and nothing failed to run.
    pub passed: bool,
}

/// One server under check: a variant of the lab, a started command, or a running pid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerCheck {
    /// The variant's name, or the URL of a server the lab did not write.
    pub server: String,
    pub pid: Option<u32>,
    /// How it was started (`None` for `--pid`).
    pub command: Option<Vec<String>>,
    pub endpoints: Vec<EndpointCheck>,
    /// Why the server could not be checked (did not start, tracer refused...).
    pub error: Option<String>,
    /// Its last lines of standard error, when it failed.
    pub log_tail: Option<String>,
}

/// One endpoint: its measured window and its limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointCheck {
    /// The endpoint's name in the budget (default `METHOD path`).
    pub name: String,
    pub method: String,
    pub path: String,
    pub connections: u32,
    pub pipeline: u32,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Line of the endpoint in the budget file.
    pub line: Option<usize>,
    /// Responses completed in the measured window(s) (summed over windows when recording
    /// with `--repeat`).
    pub requests: u64,
    /// Failed requests in the measured window(s) (loadgen's error kinds).
    pub errors: u64,
    pub requests_per_s: f64,
    /// Per request, one entry per measured window (one, except when recording with `--repeat`).
    pub windows: Vec<Figures>,
    pub limits: Vec<LimitCheck>,
    /// Why the endpoint could not be measured, or answered with errors.
    pub error: Option<String>,
}

impl EndpointCheck {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.limits.iter().all(|l| l.passed)
    }
}

/// What one limit is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Metric {
    /// Syscalls per request, all categories.
    Syscalls,
    /// io_uring ring operations per request (eBPF only).
    RingOps,
    /// Off-CPU µs per request inside calls (eBPF only; noisy).
    BlockedUs,
    /// Syscalls per request of one attribution category.
    Category(String),
    /// One named syscall per request, whatever its category.
    Syscall(String),
}

impl Metric {
    /// How the table and JUnit name it.
    pub fn label(&self) -> String {
        match self {
            Metric::Syscalls => "syscalls".into(),
            Metric::RingOps => "ring ops".into(),
            Metric::BlockedUs => "blocked µs".into(),
            Metric::Category(c) => format!("{c} syscalls"),
            Metric::Syscall(s) => format!("{s}()"),
        }
    }

    /// Only the eBPF backend measures it.
    pub fn needs_ebpf(&self) -> bool {
        matches!(self, Metric::RingOps | Metric::BlockedUs)
    }

    /// This metric's value in a window.
    pub fn of(&self, f: &Figures) -> f64 {
        match self {
            Metric::Syscalls => f.syscalls,
            Metric::RingOps => f.ring_ops,
            Metric::BlockedUs => f.blocked_us,
            Metric::Category(c) => f.categories.get(c).copied().unwrap_or(0.0),
            Metric::Syscall(s) => f.syscall.get(s).copied().unwrap_or(0.0),
        }
    }
}

/// How far above `max` a measurement may go.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tolerance {
    /// In the limit's own unit (syscalls per request, µs per request).
    Absolute(f64),
    /// A fraction of `max` (`"10%"` in the budget is 0.1).
    Relative(f64),
}

impl Tolerance {
    /// The largest value that passes.
    pub fn allowed(self, max: f64) -> f64 {
        match self {
            Tolerance::Absolute(t) => max + t,
            Tolerance::Relative(r) => max * (1.0 + r),
        }
    }
}

impl std::fmt::Display for Tolerance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tolerance::Absolute(t) => write!(f, "+{}", crate::table::figure(*t)),
            Tolerance::Relative(r) => write!(f, "+{}%", crate::table::figure(r * 100.0)),
        }
    }
}

/// One limit against its measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitCheck {
    pub metric: Metric,
    pub max: f64,
    pub tolerance: Tolerance,
    /// `max` plus the tolerance: the largest measurement that passes.
    pub allowed: f64,
    pub measured: f64,
    /// `allowed - measured`: room left when positive, the excess when negative.
    pub margin: f64,
    pub passed: bool,
    /// Line of the limit in the budget file.
    pub line: Option<usize>,
}

impl LimitCheck {
    pub fn new(
        metric: Metric,
        max: f64,
        tolerance: Tolerance,
        measured: f64,
        line: Option<usize>,
    ) -> Self {
        let allowed = tolerance.allowed(max);
        LimitCheck {
            metric,
            max,
            tolerance,
            allowed,
            measured,
            margin: allowed - measured,
            passed: measured <= allowed,
            line,
        }
    }
}

/// Per-request figures of one measured window: the difference of two snapshots of the
/// trace, divided by the responses completed between them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub requests: u64,
    pub syscalls: f64,
    pub ring_ops: f64,
    /// Off-CPU (asleep) µs inside calls and ring operations on the request path (idle
    /// waits, such as an event loop with nothing in flight, left out); 0 when not
    /// measured (ptrace).
    pub blocked_us: f64,
    /// Syscalls per request by attribution category (all eight).
    pub categories: BTreeMap<String, f64>,
    /// Per named syscall, all categories together.
    pub syscall: BTreeMap<String, f64>,
    /// The calls behind the figures: syscalls and ring ops by category, most first.
    pub calls: Vec<CallFigure>,
}

/// One call in one category, per request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallFigure {
    pub kind: tracer::Kind,
    pub name: String,
    pub category: String,
    pub per_request: f64,
}

impl Figures {
    /// What happened between two snapshots of one trace (`earlier` taken first), per
    /// request of the `requests` completed between them.
    pub fn between(earlier: &tracer::Profile, later: &tracer::Profile, requests: u64) -> Figures {
        let n = requests.max(1) as f64;
        let before: BTreeMap<(tracer::Kind, &str, tracer::Category), &tracer::Stats> = earlier
            .calls
            .iter()
            .map(|c| ((c.kind, c.name.as_str(), c.category), &c.stats))
            .collect();
        let mut f = Figures {
            requests,
            categories: crate::results::CATEGORIES
                .iter()
                .map(|c| (c.to_string(), 0.0))
                .collect(),
            ..Figures::default()
        };
        let mut blocked_ns = 0u64;
        for c in &later.calls {
            let old = before.get(&(c.kind, c.name.as_str(), c.category));
            let count = c.stats.count - old.map_or(0, |s| s.count.min(c.stats.count));
            let blocked = c.stats.request_blocked_ns();
            blocked_ns += blocked - old.map_or(0, |s| s.request_blocked_ns().min(blocked));
            if count == 0 {
                continue;
            }
            let per = count as f64 / n;
            match c.kind {
                tracer::Kind::Syscall => {
                    f.syscalls += per;
                    *f.categories.entry(c.category.name().into()).or_default() += per;
                    *f.syscall.entry(c.name.clone()).or_default() += per;
                }
                tracer::Kind::RingOp => f.ring_ops += per,
            }
            f.calls.push(CallFigure {
                kind: c.kind,
                name: c.name.clone(),
                category: c.category.name().into(),
                per_request: per,
            });
        }
        f.blocked_us = blocked_ns as f64 / 1e3 / n;
        f.calls
            .sort_by(|a, b| b.per_request.total_cmp(&a.per_request));
        f
    }
}

impl LimitCheck {
    /// One line saying what was measured against what: the failure message of the table
    /// and of JUnit.
    pub fn describe(&self) -> String {
        use crate::table::figure;
        let verdict = if self.passed {
            format!("{} to spare", figure(self.margin))
        } else {
            format!("{} over", figure(-self.margin))
        };
        format!(
            "{} per request: {}, allowed {} (max {} {}): {verdict}",
            self.metric.label(),
            figure(self.measured),
            figure(self.allowed),
            figure(self.max),
            self.tolerance
        )
    }
}

impl EndpointCheck {
    /// The calls behind a metric in the (first) window, most first: what grew when it fails.
    pub fn calls_behind(&self, metric: &Metric) -> Vec<&CallFigure> {
        let Some(w) = self.windows.first() else {
            return Vec::new();
        };
        w.calls
            .iter()
            .filter(|c| match metric {
                Metric::Syscalls => c.kind == tracer::Kind::Syscall,
                Metric::RingOps => c.kind == tracer::Kind::RingOp,
                Metric::BlockedUs => true,
                Metric::Category(cat) => c.kind == tracer::Kind::Syscall && &c.category == cat,
                Metric::Syscall(name) => c.kind == tracer::Kind::Syscall && &c.name == name,
            })
            .take(6)
            .collect()
    }
}

impl CallFigure {
    /// `write 1.00/req (logging)`.
    pub fn describe(&self) -> String {
        let ring = if self.kind == tracer::Kind::RingOp {
            " ring op"
        } else {
            ""
        };
        format!(
            "{}{ring} {}/req ({})",
            self.name,
            crate::table::figure(self.per_request),
            self.category
        )
    }
}
