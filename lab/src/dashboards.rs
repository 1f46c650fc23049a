//! `lab dashboards check`: every query of every Grafana dashboard, evaluated against a
//! Prometheus, must return data, and data for each variant where the panel shows one
//! line per variant.
//!
//! Grafana is not needed: a dashboard's panels are PromQL against one datasource, so
//! replacing Grafana's variables (`$variant` by a regex alternation as Grafana sends a
//! multi-select, `$__rate_interval` by a fixed window) gives queries Prometheus answers
//! itself. This is how `lab/tests/dashboards.rs`, `scripts/compose-check` and the
//! `lab run --export` test know the dashboards show what they claim, and how a workshop
//! instructor checks a stack before the participants open Grafana.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The datasource uid every panel must name (dashboards/grafana/provisioning).
pub const DATASOURCE_UID: &str = "lab-prometheus";

/// Panels whose every variant's value must be a positive number, not merely present.
const POSITIVE_PANELS: [&str; 4] = [
    "Requests/s",
    "Syscalls per request",
    "CPU per request",
    "Threads",
];
/// The panel that must show network and database calls per request for each variant.
const BY_CATEGORY_PANEL: &str = "Syscalls per request by category";

#[derive(Debug, clap::Args)]
pub struct DashboardsArgs {
    #[command(subcommand)]
    pub command: DashboardsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DashboardsCommand {
    /// Evaluate every query of every dashboard against a Prometheus: each must return
    /// data, the per-variant ones for each variant named. Exit 0 when all do, 1 when one
    /// does not. Run it while the variants are loaded (rates need a recent window).
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The Prometheus to ask (e.g. http://127.0.0.1:9090).
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    pub prometheus: String,
    /// Variants that must appear in every per-variant panel, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = crate::run_cmd::VARIANTS.map(String::from))]
    pub variants: Vec<String>,
    /// The instant to evaluate at, in Unix seconds (default: now).
    #[arg(long)]
    pub at: Option<f64>,
    /// What Grafana's `$__rate_interval` becomes (at least 4 scrape intervals).
    #[arg(long, default_value = "5s")]
    pub rate_interval: String,
    /// The folder of dashboard JSON files.
    #[arg(long, default_value = "dashboards/grafana/dashboards")]
    pub dir: PathBuf,
    /// Also write every query's outcome as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

pub fn run(args: DashboardsArgs) -> Result<ExitCode> {
    let DashboardsCommand::Check(args) = args.command;
    let prometheus = Prometheus::new(&args.prometheus)?;
    let at = args.at.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    });
    let evaluation = evaluate(
        &prometheus,
        &args.dir,
        at,
        &args.variants,
        &args.rate_interval,
    )?;
    eprint!("{}", evaluation.summary());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&evaluation.to_json())?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if evaluation.failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &evaluation.failures {
            eprintln!("FAIL {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// The dashboard files of `dir`, sorted.
pub fn dashboard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no dashboards (*.json) in {}", dir.display());
    }
    Ok(files)
}

pub fn load_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Every panel of a dashboard, rows' nested panels included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        for q in p["panels"].as_array().into_iter().flatten() {
            out.push(q);
        }
    }
    out
}

/// A query of a dashboard: where it comes from and its PromQL as written.
#[derive(Debug, Clone)]
pub struct Query {
    pub dashboard: String,
    pub panel: String,
    pub expr: String,
    /// Whether each variant must appear in its result (its series carry `variant`).
    pub per_variant: bool,
}

impl Query {
    /// A `$variable`'s query rather than a panel's.
    pub fn is_variable(&self) -> bool {
        self.panel.starts_with("variable ")
    }
}

/// Every panel query and every variable query of the dashboards in `dir`.
pub fn queries(dir: &Path) -> Result<Vec<Query>> {
    let mut out = Vec::new();
    for file in dashboard_files(dir)? {
        let d = load_json(&file)?;
        let title = d["title"].as_str().unwrap_or("?").to_string();
        for p in panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().with_context(|| {
                    format!("{}: a target of {} has no expr", file.display(), p["title"])
                })?;
                out.push(Query {
                    dashboard: title.clone(),
                    panel: p["title"].as_str().unwrap_or("?").to_string(),
                    expr: expr.to_string(),
                    per_variant: t["legendFormat"]
                        .as_str()
                        .is_some_and(|l| l.contains("{{variant}}")),
                });
            }
        }
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .with_context(|| {
                    format!("{}: variable {} has no query", file.display(), v["name"])
                })?;
            out.push(Query {
                dashboard: title.clone(),
                panel: format!("variable ${}", v["name"].as_str().unwrap_or("?")),
                expr: variable_query(q)?,
                per_variant: v["name"] == "variant",
            });
        }
    }
    Ok(out)
}

/// Grafana's `label_values(METRIC, LABEL)` as the PromQL that gives the same values.
pub fn variable_query(q: &str) -> Result<String> {
    let inner = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .with_context(|| format!("unsupported variable query {q:?}"))?;
    let (metric, label) = inner
        .rsplit_once(',')
        .with_context(|| format!("label_values without a label: {q:?}"))?;
    Ok(format!("count by ({}) ({})", label.trim(), metric.trim()))
}

/// Replaces Grafana's variables: `$variant` by `variants` (Grafana sends a multi-select
/// as a regex alternation: `(epoll|thread-pool)`; All as `.*`), the rate interval by
/// `rate_interval`.
pub fn concrete(expr: &str, variants: &str, rate_interval: &str) -> Result<String> {
    let out = expr
        .replace("$__rate_interval", rate_interval)
        .replace("${__rate_interval}", rate_interval)
        .replace("$__interval", "1s")
        .replace("${variant:regex}", variants)
        .replace("${variant}", variants)
        .replace("$variant", variants);
    if out.contains('$') {
        bail!("a Grafana variable this evaluator does not know in {expr:?}");
    }
    Ok(out)
}

/// The series of an instant query: labels and value.
pub type Series = Vec<(BTreeMap<String, String>, f64)>;

/// Prometheus's HTTP API, just the instant query.
pub struct Prometheus {
    base: String,
    agent: ureq::Agent,
}

impl Prometheus {
    /// `url`: `http://HOST:PORT` (a bare `HOST:PORT` is taken as http).
    pub fn new(url: &str) -> Result<Prometheus> {
        let base = if url.contains("://") {
            url.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", url.trim_end_matches('/'))
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(15)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Prometheus { base, agent })
    }

    /// GET `path` (with its query string); status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let mut response = self
            .agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer of {url}"))?;
        Ok((status, body))
    }

    /// An instant query at `at` (Unix seconds), or now.
    pub fn query(&self, promql: &str, at: Option<f64>) -> Result<Series> {
        let mut path = format!("/api/v1/query?query={}", url_encode(promql));
        if let Some(t) = at {
            path.push_str(&format!("&time={t:.3}"));
        }
        let (status, body) = self.get(&path)?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("HTTP {status}, not JSON: {body}"))?;
        if v["status"] != "success" {
            bail!(
                "HTTP {status}: {} {}",
                v["errorType"].as_str().unwrap_or(""),
                v["error"].as_str().unwrap_or(&body)
            );
        }
        let number = |v: &Value| v.as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        let data = &v["data"];
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let labels = s["metric"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect();
                    (labels, number(&s["value"][1]))
                })
                .collect()),
            Some("scalar") => Ok(vec![(BTreeMap::new(), number(&data["result"][1]))]),
            other => bail!("unexpected result type {other:?}"),
        }
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What the dashboards showed at one instant.
pub struct Evaluation {
    pub at: f64,
    pub variants: Vec<String>,
    /// Every query with its result (empty when it failed).
    pub results: Vec<(Query, Series)>,
    /// What is wrong, one line each (with the PromQL on the next line).
    pub failures: Vec<String>,
    pub dashboards: usize,
}

/// Evaluates every query of the dashboards in `dir` at `at`: each must return data, the
/// per-variant ones for each of `variants`; picking two variants must show those two and
/// no other; requests/s, syscalls per request, CPU per request and threads must be
/// positive for each variant, and so must its network and database syscalls per request.
pub fn evaluate(
    prometheus: &Prometheus,
    dir: &Path,
    at: f64,
    variants: &[String],
    rate_interval: &str,
) -> Result<Evaluation> {
    let all = queries(dir)?;
    let mut failures = Vec::new();
    let mut results = Vec::new();
    let all_variants = ".*";
    for q in &all {
        let promql = concrete(&q.expr, all_variants, rate_interval)?;
        let where_ = format!("[{}] {}", q.dashboard, q.panel);
        let result = match prometheus.query(&promql, Some(at)) {
            Err(e) => {
                failures.push(format!("{where_}: {e:#}\n  {promql}"));
                Series::new()
            }
            Ok(result) if result.is_empty() => {
                failures.push(format!("{where_}: no data\n  {promql}"));
                result
            }
            Ok(result) => {
                if q.per_variant {
                    let seen = variants_of(&result);
                    let missing: Vec<&String> = variants
                        .iter()
                        .filter(|v| !seen.contains(v.as_str()))
                        .collect();
                    if !missing.is_empty() {
                        failures.push(format!("{where_}: no data for {missing:?}\n  {promql}"));
                    }
                }
                result
            }
        };
        results.push((q.clone(), result));
    }

    // Picking two variants in $variant shows those two and no other.
    if variants.len() >= 2 {
        let picked = &variants[..2];
        let regex = format!("({})", picked.join("|"));
        let want: BTreeSet<&str> = picked.iter().map(String::as_str).collect();
        for q in all.iter().filter(|q| q.per_variant && !q.is_variable()) {
            let promql = concrete(&q.expr, &regex, rate_interval)?;
            match prometheus.query(&promql, Some(at)) {
                Err(e) => {
                    failures.push(format!("[{}] {}: {e:#}\n  {promql}", q.dashboard, q.panel))
                }
                Ok(result) => {
                    let seen = variants_of(&result);
                    if seen != want {
                        failures.push(format!(
                            "[{}] {}: $variant={regex} shows {seen:?}\n  {promql}",
                            q.dashboard, q.panel
                        ));
                    }
                }
            }
        }
    }

    let evaluation = Evaluation {
        at,
        variants: variants.to_vec(),
        results,
        failures,
        dashboards: dashboard_files(dir)?.len(),
    };
    let mut failures = Vec::new();
    let positive = |v: Option<f64>| v.is_some_and(|v| v > 0.0 && v.is_finite());
    for panel in POSITIVE_PANELS {
        for variant in variants {
            let v = evaluation.value(panel, variant, None);
            if !positive(v) {
                failures.push(format!(
                    "{panel} of {variant} is {v:?}, not a positive number"
                ));
            }
        }
    }
    // The io-uring variant moves its network bytes with ring operations, which the
    // syscalls-by-category panel leaves out: there, any kind of call counts.
    let ring_ops = prometheus.query(
        &format!(
            "sum by (variant, category) (rate(tracer_calls_total{{kind=\"ring_op\"}}[{rate_interval}]))"
        ),
        Some(at),
    )?;
    for variant in variants {
        for category in ["network", "database"] {
            let v = evaluation.value(BY_CATEGORY_PANEL, variant, Some(category));
            let by_ring = ring_ops.iter().any(|(l, r)| {
                l.get("variant") == Some(variant)
                    && l.get("category").map(String::as_str) == Some(category)
                    && positive(Some(*r))
            });
            if !positive(v) && !by_ring {
                failures.push(format!(
                    "{category} calls per request of {variant}: {v:?} syscalls and no ring operations"
                ));
            }
        }
    }
    let mut evaluation = evaluation;
    evaluation.failures.extend(failures);
    Ok(evaluation)
}

fn variants_of(result: &Series) -> BTreeSet<&str> {
    result
        .iter()
        .filter_map(|(labels, _)| labels.get("variant").map(String::as_str))
        .collect()
}

impl Evaluation {
    /// The first panel named `panel`: its value for `variant` (and `category`).
    pub fn value(&self, panel: &str, variant: &str, category: Option<&str>) -> Option<f64> {
        self.series(panel)
            .iter()
            .find(|(l, _)| {
                l.get("variant").map(String::as_str) == Some(variant)
                    && category.is_none_or(|c| l.get("category").map(String::as_str) == Some(c))
            })
            .map(|(_, v)| *v)
    }

    /// The result of the first query of the panel named `panel`.
    pub fn series(&self, panel: &str) -> &[(BTreeMap<String, String>, f64)] {
        self.results
            .iter()
            .find(|(q, _)| q.panel == panel)
            .map_or(&[], |(_, r)| r.as_slice())
    }

    /// What was evaluated, and the headline figures per variant.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "evaluated {} queries of {} dashboards at {:.3} for {}\n",
            self.results.len(),
            self.dashboards,
            self.at,
            self.variants.join(", ")
        );
        for (panel, unit) in [
            ("Requests/s", "req/s"),
            ("p99 latency", "s"),
            ("CPU per request", "s"),
            ("Syscalls per request", ""),
            ("Off-CPU per request", "s"),
            (BY_CATEGORY_PANEL, ""),
        ] {
            let mut rows: Vec<String> = self
                .series(panel)
                .iter()
                .map(|(l, v)| {
                    let mut name = l.get("variant").cloned().unwrap_or_default();
                    if let Some(c) = l.get("category") {
                        name = format!("{name} {c}");
                    }
                    format!("{name}={v:.6}{unit}")
                })
                .collect();
            rows.sort();
            out.push_str(&format!("  {panel}: {}\n", rows.join("  ")));
        }
        out
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "at_unix_s": self.at,
            "variants": self.variants,
            "failures": self.failures,
            "queries": self.results.iter().map(|(q, r)| serde_json::json!({
                "dashboard": q.dashboard,
                "panel": q.panel,
                "expr": q.expr,
                "series": r.iter().map(|(l, v)| serde_json::json!({"labels": l, "value": v})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grafana_variables_become_promql() {
        assert_eq!(
            concrete(
                "rate(x{variant=~\"$variant\"}[$__rate_interval])",
                "(a|b)",
                "5s"
            )
            .unwrap(),
            "rate(x{variant=~\"(a|b)\"}[5s])"
        );
        assert!(concrete("x{y=\"$unknown\"}", ".*", "5s").is_err());
        assert_eq!(
            variable_query("label_values(lab_server_info, variant)").unwrap(),
            "count by (variant) (lab_server_info)"
        );
        assert!(variable_query("query_result(up)").is_err());
    }
}
