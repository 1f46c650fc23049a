//! The budget file of `lab check` (TOML; the schema is in docs/check.md): which requests
//! to send (per endpoint: method, path, headers, body, connections, pipelining depth) and
//! how many syscalls, ring operations or blocked µs each may cost. Every value keeps its
//! position while parsing, so a bad file is refused with the line to fix. [`record`]
//! writes a budget from measured figures.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::results::check::{Figures, Metric, Tolerance};
use crate::results::CATEGORIES;

/// Used when neither the endpoint nor `[defaults]` says.
/// One connection: each request is served on its own, so the calls it costs (the
/// wake-up included) do not depend on how many others arrive with it. More connections
/// measure batching too, which moves with the machine's load (docs/check.md).
pub const DEFAULT_CONNECTIONS: u32 = 1;
pub const DEFAULT_PIPELINE: u32 = 1;
pub const DEFAULT_WARMUP_S: f64 = 1.0;
pub const DEFAULT_DURATION_S: f64 = 2.0;
/// Tolerance of a count limit (syscalls, ring ops) when none is given: a quarter of a
/// call per request, well under the one extra call per request a budget is there to catch.
pub const DEFAULT_COUNT_TOLERANCE: Tolerance = Tolerance::Absolute(0.25);
/// Tolerance of `blocked_us` when none is given in its own limit: off-CPU time moves with
/// everything else on the machine.
pub const DEFAULT_BLOCKED_TOLERANCE: Tolerance = Tolerance::Relative(0.5);

/// A parsed, checked budget.
#[derive(Debug, Clone)]
pub struct Budget {
    pub path: PathBuf,
    pub endpoints: Vec<Endpoint>,
}

/// One request shape and its limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Line of `[[endpoint]]` in the file (None for endpoints made from flags).
    pub line: Option<usize>,
    pub name: String,
    /// The lab variant it is for; None: any server.
    pub variant: Option<String>,
    pub method: String,
    pub path: String,
    pub headers: Vec<String>,
    pub body: Option<String>,
    /// Statuses that count as success (empty: any 2xx).
    pub status: Vec<u16>,
    pub connections: u32,
    pub pipeline: u32,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub limits: Vec<Limit>,
}

/// One limit of an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub metric: Metric,
    pub max: f64,
    pub tolerance: Tolerance,
    pub line: Option<usize>,
}

/// Why a budget file was refused: the file, the line, what to fix.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for BudgetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for BudgetError {}

impl Endpoint {
    /// The load generator's configuration for this endpoint against `base` (`http://host:port`):
    /// one thread, closed loop, `seconds` long.
    pub fn load_config(&self, base: &str, seconds: f64, timeout_s: f64) -> loadgen::Config {
        let mut config =
            loadgen::Config::new(format!("{}{}", base.trim_end_matches('/'), self.path));
        config.method = self.method.clone();
        config.headers = self.headers.clone();
        config.body = self.body.clone();
        config.expect_status = self.status.clone();
        config.connections = self.connections;
        config.pipeline = self.pipeline;
        config.threads = 1;
        config.duration_s = seconds;
        config.warmup_s = 0.0;
        config.timeout_s = timeout_s;
        config
    }

    /// What the load generator would refuse (a path without its `/`, a bad method or
    /// header), refused before any server starts.
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') {
            return Err(format!("path {:?} must start with '/'", self.path));
        }
        loadgen::validate(&self.load_config("http://127.0.0.1:1", 1.0, 1.0))
            .map_err(|e| e.to_string())
    }

    /// An endpoint measured without a budget (`--record --path`): the defaults, no limits.
    pub fn plain(method_and_path: &str, variant: Option<&str>, shape: &Shape) -> Endpoint {
        let (method, path) = match method_and_path.split_once(' ') {
            Some((m, p)) => (m.trim().to_string(), p.trim().to_string()),
            None => ("GET".to_string(), method_and_path.trim().to_string()),
        };
        Endpoint {
            line: None,
            name: format!("{method} {path}"),
            variant: variant.map(String::from),
            method,
            path,
            headers: Vec::new(),
            body: None,
            status: Vec::new(),
            connections: shape.connections,
            pipeline: shape.pipeline,
            warmup_s: shape.warmup_s,
            duration_s: shape.duration_s,
            limits: Vec::new(),
        }
    }
}

/// Connections, depth and windows of endpoints made from flags.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub connections: u32,
    pub pipeline: u32,
    pub warmup_s: f64,
    pub duration_s: f64,
}

impl Budget {
    pub fn load(path: &Path) -> Result<Budget, BudgetError> {
        let text = std::fs::read_to_string(path).map_err(|e| BudgetError {
            path: path.to_path_buf(),
            line: None,
            message: format!("cannot read the budget file: {e}"),
        })?;
        Budget::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Budget, BudgetError> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| BudgetError {
            path: path.to_path_buf(),
            line: span.map(|s| line_of(text, s.start)),
            message,
        };
        let raw: RawBudget =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().trim().to_string()))?;
        let defaults = raw.defaults.unwrap_or_default();
        let mut endpoints = Vec::new();
        let mut names = HashSet::new();
        for spanned in raw.endpoint {
            let span = spanned.span();
            let line = line_of(text, span.start);
            let e = spanned.into_inner();
            let err = |span: std::ops::Range<usize>, m: String| at(Some(span), m);
            let path_value = e.path.ok_or_else(|| {
                at(
                    Some(span.clone()),
                    "this endpoint has no `path` (e.g. path = \"/plaintext\")".into(),
                )
            })?;
            let method = match &e.method {
                Some(m) => m.get_ref().trim().to_string(),
                None => "GET".to_string(),
            };
            let endpoint_path = path_value.get_ref().clone();
            if let Some(v) = &e.variant {
                if !crate::run_cmd::VARIANTS.contains(&v.get_ref().as_str()) {
                    return Err(err(
                        v.span(),
                        format!(
                            "unknown variant {:?}; the variants are {}",
                            v.get_ref(),
                            crate::run_cmd::VARIANTS.join(", ")
                        ),
                    ));
                }
            }
            let count = |v: &Option<Spanned<i64>>,
                         default: Option<&Spanned<i64>>,
                         what: &str,
                         fallback: u32,
                         most: i64| {
                match v.as_ref().or(default) {
                    None => Ok(fallback),
                    Some(n) if (1..=most).contains(n.get_ref()) => Ok(*n.get_ref() as u32),
                    Some(n) => Err(err(
                        n.span(),
                        format!("{what} must be between 1 and {most}"),
                    )),
                }
            };
            let connections = count(
                &e.connections,
                defaults.connections.as_ref(),
                "connections",
                DEFAULT_CONNECTIONS,
                100_000,
            )?;
            let pipeline = count(
                &e.pipeline,
                defaults.pipeline.as_ref(),
                "pipeline",
                DEFAULT_PIPELINE,
                1024,
            )?;
            let seconds = |v: &Option<Spanned<toml::Value>>,
                           default: &Option<Spanned<toml::Value>>,
                           what: &str,
                           fallback: f64,
                           least: f64| {
                match v.as_ref().or(default.as_ref()) {
                    None => Ok(fallback),
                    Some(s) => {
                        let secs = match s.get_ref() {
                            toml::Value::String(t) => loadgen::config::parse_duration(t),
                            toml::Value::Integer(n) => Ok(*n as f64),
                            toml::Value::Float(x) => Ok(*x),
                            _ => Err("expected a duration such as \"2s\" or \"500ms\"".into()),
                        }
                        .map_err(|m| err(s.span(), format!("{what}: {m}")))?;
                        if !(secs.is_finite() && secs >= least && secs <= 3600.0) {
                            return Err(err(
                                s.span(),
                                format!("{what} must be between {least} s and 1 h"),
                            ));
                        }
                        Ok(secs)
                    }
                }
            };
            let warmup_s = seconds(&e.warmup, &defaults.warmup, "warmup", DEFAULT_WARMUP_S, 0.0)?;
            let duration_s = seconds(
                &e.duration,
                &defaults.duration,
                "duration",
                DEFAULT_DURATION_S,
                0.2,
            )?;
            let tolerance = match e.tolerance.as_ref().or(defaults.tolerance.as_ref()) {
                None => None,
                Some(t) => Some(parse_tolerance(t.get_ref()).map_err(|m| err(t.span(), m))?),
            };
            let headers: Vec<String> = e
                .headers
                .or_else(|| defaults.headers.clone())
                .unwrap_or_default();
            let name = e
                .name
                .map(|n| n.trim().to_string())
                .unwrap_or_else(|| format!("{method} {endpoint_path}"));
            if name.is_empty() {
                return Err(at(Some(span.clone()), "`name` is empty".into()));
            }
            if !names.insert((
                e.variant.as_ref().map(|v| v.get_ref().clone()),
                name.clone(),
            )) {
                return Err(at(
                    Some(span.clone()),
                    format!("a second endpoint named {name:?}; give each a different `name`"),
                ));
            }
            let mut endpoint = Endpoint {
                line: Some(line),
                name,
                variant: e.variant.map(|v| v.into_inner()),
                method,
                path: endpoint_path,
                headers,
                body: e.body,
                status: e.status.unwrap_or_default(),
                connections,
                pipeline,
                warmup_s,
                duration_s,
                limits: Vec::new(),
            };
            endpoint.validate().map_err(|m| err(path_value.span(), m))?;
            let Some(limits) = e.limits else {
                return Err(at(
                    Some(span.clone()),
                    format!(
                        "endpoint {:?} has no [endpoint.limits]: nothing to check",
                        endpoint.name
                    ),
                ));
            };
            endpoint.limits = limits.into_limits(text, path, tolerance)?;
            if endpoint.limits.is_empty() {
                return Err(at(
                    Some(span.clone()),
                    format!(
                        "endpoint {:?} has an empty [endpoint.limits]: nothing to check",
                        endpoint.name
                    ),
                ));
            }
            endpoints.push(endpoint);
        }
        if endpoints.is_empty() {
            return Err(at(
                None,
                "no [[endpoint]] in the budget: nothing to check".into(),
            ));
        }
        Ok(Budget {
            path: path.to_path_buf(),
            endpoints,
        })
    }

    /// The variants the budget names, in the lab's order.
    pub fn variants(&self) -> Vec<String> {
        crate::run_cmd::VARIANTS
            .iter()
            .filter(|v| {
                self.endpoints
                    .iter()
                    .any(|e| e.variant.as_deref() == Some(**v))
            })
            .map(|v| v.to_string())
            .collect()
    }
}

/// Line (from 1) of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A tolerance: a number (absolute, in the limit's unit) or `"N%"` (of the limit's max).
fn parse_tolerance(v: &toml::Value) -> Result<Tolerance, String> {
    let bad = || {
        "a tolerance is a number of the limit's unit (0.25) or a percentage of it (\"10%\")"
            .to_string()
    };
    match v {
        toml::Value::Integer(n) if *n >= 0 => Ok(Tolerance::Absolute(*n as f64)),
        toml::Value::Float(x) if x.is_finite() && *x >= 0.0 => Ok(Tolerance::Absolute(*x)),
        toml::Value::String(s) => match s.trim().strip_suffix('%').map(|n| n.trim().parse::<f64>())
        {
            Some(Ok(p)) if p.is_finite() && p >= 0.0 => Ok(Tolerance::Relative(p / 100.0)),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    defaults: Option<RawDefaults>,
    #[serde(default)]
    endpoint: Vec<Spanned<RawEndpoint>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    connections: Option<Spanned<i64>>,
    pipeline: Option<Spanned<i64>>,
    warmup: Option<Spanned<toml::Value>>,
    duration: Option<Spanned<toml::Value>>,
    tolerance: Option<Spanned<toml::Value>>,
    headers: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: Option<String>,
    variant: Option<Spanned<String>>,
    method: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    headers: Option<Vec<String>>,
    body: Option<String>,
    status: Option<Vec<u16>>,
    connections: Option<Spanned<i64>>,
    pipeline: Option<Spanned<i64>>,
    warmup: Option<Spanned<toml::Value>>,
    duration: Option<Spanned<toml::Value>>,
    tolerance: Option<Spanned<toml::Value>>,
    limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    syscalls: Option<Spanned<toml::Value>>,
    ring_ops: Option<Spanned<toml::Value>>,
    blocked_us: Option<Spanned<toml::Value>>,
    #[serde(default)]
    category: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    syscall: BTreeMap<String, Spanned<toml::Value>>,
}

impl RawLimits {
    fn into_limits(
        self,
        text: &str,
        path: &Path,
        tolerance: Option<Tolerance>,
    ) -> Result<Vec<Limit>, BudgetError> {
        let mut out = Vec::new();
        let mut one = |metric: Metric, v: Spanned<toml::Value>| -> Result<(), BudgetError> {
            let line = Some(line_of(text, v.span().start));
            let fail = |message: String| BudgetError {
                path: path.to_path_buf(),
                line,
                message,
            };
            let fallback = match metric {
                Metric::BlockedUs => DEFAULT_BLOCKED_TOLERANCE,
                _ => tolerance.unwrap_or(DEFAULT_COUNT_TOLERANCE),
            };
            let shape = "a limit is a number (the most per request) or { max = N, tolerance = T }";
            let number = |v: &toml::Value| match v {
                toml::Value::Integer(n) => Some(*n as f64),
                toml::Value::Float(x) => Some(*x),
                _ => None,
            };
            let (max, tol) = match v.get_ref() {
                toml::Value::Table(t) => {
                    if let Some(key) = t.keys().find(|k| *k != "max" && *k != "tolerance") {
                        return Err(fail(format!(
                            "unknown key `{key}` in the {} limit: {shape}",
                            metric.label()
                        )));
                    }
                    let max = t
                        .get("max")
                        .map(|m| {
                            number(m).ok_or_else(|| {
                                fail(format!(
                                    "`max` of the {} limit must be a number",
                                    metric.label()
                                ))
                            })
                        })
                        .transpose()?
                        .ok_or_else(|| {
                            fail(format!(
                                "the {} limit has no `max`: {shape}",
                                metric.label()
                            ))
                        })?;
                    let tol = match t.get("tolerance") {
                        Some(t) => parse_tolerance(t).map_err(fail)?,
                        None => fallback,
                    };
                    (max, tol)
                }
                other => (
                    number(other)
                        .ok_or_else(|| fail(format!("the {} limit: {shape}", metric.label())))?,
                    fallback,
                ),
            };
            if !(max.is_finite() && max >= 0.0) {
                return Err(fail(format!(
                    "the {} limit must be zero or more",
                    metric.label()
                )));
            }
            out.push(Limit {
                metric,
                max,
                tolerance: tol,
                line,
            });
            Ok(())
        };
        if let Some(v) = self.syscalls {
            one(Metric::Syscalls, v)?;
        }
        if let Some(v) = self.ring_ops {
            one(Metric::RingOps, v)?;
        }
        if let Some(v) = self.blocked_us {
            one(Metric::BlockedUs, v)?;
        }
        let mut categories: Vec<(String, Spanned<toml::Value>)> =
            self.category.into_iter().collect();
        categories.sort_by_key(|(c, _)| CATEGORIES.iter().position(|k| k == c));
        for (name, v) in categories {
            if tracer::Category::from_name(&name).is_none() {
                return Err(BudgetError {
                    path: path.to_path_buf(),
                    line: Some(line_of(text, v.span().start)),
                    message: format!(
                        "unknown category {name:?}; the categories are {}",
                        CATEGORIES.join(", ")
                    ),
                });
            }
            one(Metric::Category(name), v)?;
        }
        for (name, v) in self.syscall {
            if tracer::syscalls::number(&name).is_none() {
                return Err(BudgetError {
                    path: path.to_path_buf(),
                    line: Some(line_of(text, v.span().start)),
                    message: format!("unknown syscall {name:?} (names as in strace: read, writev, epoll_wait...)"),
                });
            }
            one(Metric::Syscall(name), v)?;
        }
        Ok(out)
    }
}

/// How `--record` turns figures into limits.
#[derive(Debug, Clone, Copy)]
pub struct Headroom {
    /// Fraction of the recorded figure.
    pub fraction: f64,
    /// Least tolerance of a count limit, per request.
    pub floor: f64,
    /// Named syscalls from this many per request get a limit of their own.
    pub named_from: f64,
}

impl Headroom {
    /// The tolerance `record` writes: the larger of `fraction` of the figure, `floor`, and
    /// twice the spread seen between the windows.
    pub fn tolerance(&self, values: &[f64]) -> f64 {
        let (lo, hi) = min_max(values);
        ceil2((hi * self.fraction).max(self.floor).max(2.0 * (hi - lo)))
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(*v), hi.max(*v))
    })
}

/// Rounded up to two decimals (a recorded limit is never below what was measured).
fn ceil2(v: f64) -> f64 {
    let c = (v * 100.0 - 1e-9).ceil() / 100.0;
    if c > 0.0 {
        c
    } else {
        0.0
    }
}

/// `"2s"`, or `"500ms"` when not whole seconds.
fn duration_text(seconds: f64) -> String {
    let ms = (seconds * 1e3).round();
    if ms % 1000.0 == 0.0 {
        format!("{}s", ms / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

/// One endpoint as measured for `--record`.
pub struct Recorded<'a> {
    pub endpoint: &'a Endpoint,
    pub windows: &'a [Figures],
}

/// The text of a budget file with limits from the recorded windows: `max` is the largest
/// window's figure (rounded up to 0.01), `tolerance` follows [`Headroom::tolerance`].
/// `header` lines become comments at the top.
pub fn record(
    recorded: &[Recorded<'_>],
    headroom: &Headroom,
    ring_ops: bool,
    header: &[String],
) -> String {
    let mut out = String::new();
    for line in header {
        let _ = writeln!(out, "# {line}");
    }
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let limit = |out: &mut String, key: &str, values: &[f64]| {
        let (_, hi) = min_max(values);
        let _ = writeln!(
            out,
            "{key} = {{ max = {}, tolerance = {} }}",
            ceil2(hi),
            headroom.tolerance(values)
        );
    };
    for r in recorded {
        let e = r.endpoint;
        let _ = writeln!(out, "\n[[endpoint]]");
        let _ = writeln!(out, "name = {}", quote(&e.name));
        if let Some(v) = &e.variant {
            let _ = writeln!(out, "variant = {}", quote(v));
        }
        let _ = writeln!(out, "method = {}", quote(&e.method));
        let _ = writeln!(out, "path = {}", quote(&e.path));
        if !e.headers.is_empty() {
            let list: Vec<String> = e.headers.iter().map(|h| quote(h)).collect();
            let _ = writeln!(out, "headers = [{}]", list.join(", "));
        }
        if let Some(body) = &e.body {
            let _ = writeln!(out, "body = {}", quote(body));
        }
        if !e.status.is_empty() {
            let list: Vec<String> = e.status.iter().map(|s| s.to_string()).collect();
            let _ = writeln!(out, "status = [{}]", list.join(", "));
        }
        let _ = writeln!(out, "connections = {}", e.connections);
        let _ = writeln!(out, "pipeline = {}", e.pipeline);
        let _ = writeln!(out, "warmup = {}", quote(&duration_text(e.warmup_s)));
        let _ = writeln!(out, "duration = {}", quote(&duration_text(e.duration_s)));
        let per_window: Vec<f64> = r.windows.iter().map(|w| w.requests as f64).collect();
        let _ = writeln!(
            out,
            "# measured: {} window(s), {} requests each at the least",
            r.windows.len(),
            per_window.iter().copied().fold(f64::INFINITY, f64::min)
        );
        let _ = writeln!(out, "[endpoint.limits]");
        let of = |m: &Metric| r.windows.iter().map(|w| m.of(w)).collect::<Vec<f64>>();
        limit(&mut out, "syscalls", &of(&Metric::Syscalls));
        if ring_ops {
            limit(&mut out, "ring_ops", &of(&Metric::RingOps));
        }
        let _ = writeln!(out, "[endpoint.limits.category]");
        for c in CATEGORIES {
            limit(
                &mut out,
                &quote_key(c),
                &of(&Metric::Category(c.to_string())),
            );
        }
        let mut named: Vec<&String> = r
            .windows
            .iter()
            .flat_map(|w| w.syscall.iter())
            .filter(|(_, v)| **v >= headroom.named_from)
            .map(|(k, _)| k)
            .collect();
        named.sort();
        named.dedup();
        if !named.is_empty() {
            let _ = writeln!(out, "[endpoint.limits.syscall]");
            for name in named {
                limit(&mut out, name, &of(&Metric::Syscall(name.clone())));
            }
        }
    }
    out
}

/// A TOML key, quoted when it is not a bare key (`"event-loop"` is bare; kept simple).
fn quote_key(key: &str) -> String {
    if key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        key.to_string()
    } else {
        toml::Value::String(key.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Budget, BudgetError> {
        Budget::parse(text, Path::new("b.toml"))
    }

    const GOOD: &str = r#"
[defaults]
connections = 8
tolerance = 0.3

[[endpoint]]
variant = "epoll"
path = "/plaintext"
[endpoint.limits]
syscalls = 2.1
ring_ops = { max = 0, tolerance = 0.1 }
blocked_us = 40
[endpoint.limits.category]
network = { max = 2, tolerance = "10%" }
event-loop = 0.2
[endpoint.limits.syscall]
write = 1

[[endpoint]]
name = "post"
method = "POST"
path = "/echo"
body = "{}"
headers = ["Content-Type: application/json"]
pipeline = 4
duration = "500ms"
[endpoint.limits]
syscalls = 3
"#;

    #[test]
    fn a_budget_reads_with_defaults_tolerances_and_lines() {
        let b = parse(GOOD).unwrap();
        assert_eq!(b.endpoints.len(), 2);
        let e = &b.endpoints[0];
        assert_eq!((e.name.as_str(), e.line), ("GET /plaintext", Some(6)));
        assert_eq!(
            (e.connections, e.pipeline, e.warmup_s, e.duration_s),
            (8, 1, 1.0, 2.0)
        );
        let l = |m: Metric| e.limits.iter().find(|l| l.metric == m).unwrap().clone();
        assert_eq!(l(Metric::Syscalls).tolerance, Tolerance::Absolute(0.3));
        assert_eq!(l(Metric::RingOps).tolerance, Tolerance::Absolute(0.1));
        assert_eq!(l(Metric::BlockedUs).tolerance, DEFAULT_BLOCKED_TOLERANCE);
        let net = l(Metric::Category("network".into()));
        assert_eq!(
            (net.max, net.tolerance, net.line),
            (2.0, Tolerance::Relative(0.1), Some(14))
        );
        assert!((net.tolerance.allowed(net.max) - 2.2).abs() < 1e-9);
        assert_eq!(l(Metric::Syscall("write".into())).max, 1.0);
        assert_eq!(b.variants(), vec!["epoll".to_string()]);
        let p = &b.endpoints[1];
        assert_eq!(
            (p.name.as_str(), p.method.as_str(), p.pipeline, p.duration_s),
            ("post", "POST", 4, 0.5)
        );
        assert_eq!(p.body.as_deref(), Some("{}"));
    }

    #[test]
    fn bad_budgets_name_the_line_and_the_fix() {
        let cases: &[(&str, usize, &str)] = &[
            ("[[endpoint]]\npath = \"/a\"\n[endpoint.limits]\nsyscals = 2\n", 4, "unknown field `syscals`"),
            ("[[endpoint]]\npath = \"/a\"\n[endpoint.limits.category]\nnetwrk = 2\n", 4, "unknown category \"netwrk\""),
            ("[[endpoint]]\npath = \"/a\"\n[endpoint.limits.syscall]\nwrit = 2\n", 4, "unknown syscall \"writ\""),
            ("[[endpoint]]\npath = \"/a\"\n[endpoint.limits]\nsyscalls = -1\n", 4, "zero or more"),
            ("[[endpoint]]\npath = \"/a\"\n[endpoint.limits]\nsyscalls = { max = 2, tol = 1 }\n", 4, "unknown key `tol`"),
            ("[[endpoint]]\npath = \"/a\"\n[endpoint.limits]\nsyscalls = { max = 2, tolerance = \"ten\" }\n", 4, "percentage"),
            ("[[endpoint]]\npath = \"/a\"\nconnections = 0\n[endpoint.limits]\nsyscalls = 2\n", 3, "connections must be"),
            ("[[endpoint]]\npath = \"/a\"\nduration = \"2x\"\n[endpoint.limits]\nsyscalls = 2\n", 3, "unknown unit"),
            ("[[endpoint]]\npath = \"a\"\n[endpoint.limits]\nsyscalls = 2\n", 2, "must start with '/'"),
            ("[[endpoint]]\nmethod = \"HEAD\"\npath = \"/a\"\n[endpoint.limits]\nsyscalls = 2\n", 3, "HEAD is not supported"),
            ("[[endpoint]]\nvariant = \"epol\"\npath = \"/a\"\n[endpoint.limits]\nsyscalls = 2\n", 2, "unknown variant"),
            ("\n[[endpoint]]\npath = \"/a\"\n", 2, "no [endpoint.limits]"),
            ("[[endpoint]]\npath = \"/a\"\n[endpoint.limits]\nsyscalls = 2\n[[endpoint]]\npath = \"/a\"\n[endpoint.limits]\nsyscalls = 2\n", 5, "a second endpoint"),
            ("[[endpoint]\npath = \"/a\"\n", 1, ""),
            ("[[endpoint]]\npath = \"/a\"\n[endpoint.limits]\nsyscalls = \"2\"\n", 4, "a limit is a number"),
        ];
        for (text, line, message) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.line, Some(*line), "{text}: {e}");
            assert!(e.message.contains(message), "{text}: {e}");
            assert!(
                e.to_string().starts_with(&format!("b.toml:{line}: ")),
                "{e}"
            );
        }
        let e = parse("# nothing\n").unwrap_err();
        assert!(e.message.contains("no [[endpoint]]"), "{e}");
    }

    #[test]
    fn a_recorded_budget_reads_back_with_its_headroom() {
        let endpoint = Endpoint::plain(
            "/plaintext",
            Some("epoll"),
            &Shape {
                connections: 16,
                pipeline: 1,
                warmup_s: 1.0,
                duration_s: 2.0,
            },
        );
        let window = |syscalls: f64, write: f64| Figures {
            requests: 1000,
            syscalls,
            categories: [
                ("network".to_string(), 2.0),
                ("event-loop".to_string(), syscalls - 2.0),
            ]
            .into(),
            syscall: [
                ("write".to_string(), write),
                ("epoll_wait".to_string(), 0.1),
            ]
            .into(),
            ..Figures::default()
        };
        let windows = [window(2.1, 1.0), window(2.3, 1.0)];
        let headroom = Headroom {
            fraction: 0.1,
            floor: 0.25,
            named_from: 0.5,
        };
        let text = record(
            &[Recorded {
                endpoint: &endpoint,
                windows: &windows,
            }],
            &headroom,
            true,
            &["recorded by a test".into()],
        );
        let b = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let e = &b.endpoints[0];
        assert_eq!(e.variant.as_deref(), Some("epoll"));
        let l = |m: Metric| {
            e.limits
                .iter()
                .find(|l| l.metric == m)
                .unwrap_or_else(|| panic!("{m:?}\n{text}"))
                .clone()
        };
        // max = the larger window; tolerance = twice the spread (0.4) > 10% (0.23) > floor.
        assert_eq!(
            (l(Metric::Syscalls).max, l(Metric::Syscalls).tolerance),
            (2.3, Tolerance::Absolute(0.4))
        );
        assert_eq!(
            l(Metric::Category("network".into())).tolerance,
            Tolerance::Absolute(0.25)
        );
        assert_eq!(l(Metric::Category("logging".into())).max, 0.0);
        assert_eq!(l(Metric::Syscall("write".into())).max, 1.0);
        assert!(
            !e.limits
                .iter()
                .any(|l| l.metric == Metric::Syscall("epoll_wait".into())),
            "below named_from"
        );
        assert_eq!(l(Metric::RingOps).max, 0.0);
    }
}
