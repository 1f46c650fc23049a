//! The result of a run: serde types (the versioned `loadgen/1` JSON schema that `lab`
//! embeds in run.json), their construction from merged [`Stats`], and the human summary
//! printed in wrk's layout plus the corrected and uncorrected percentiles.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::stats::{Errors, Stats};

/// Version of the JSON document; bumped on any incompatible change.
pub const SCHEMA: &str = "loadgen/1";

/// Latency summary of one histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub stdev_ms: f64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub p99_99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            stdev_ms: h.stdev() / 1000.0,
            min_ms: ms(h.min()),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p99_9_ms: ms(h.value_at_quantile(0.999)),
            p99_99_ms: ms(h.value_at_quantile(0.9999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Results for one path of the mix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetReport {
    /// The path template as written in the mix (or the URL's path).
    pub path: String,
    pub weight: u32,
    /// Complete responses (any status).
    pub requests: u64,
    /// Failed requests of this target (connect errors are not attributed to a target).
    pub errors: u64,
    pub rps: f64,
    /// Status code -> count.
    pub status: BTreeMap<String, u64>,
    pub latency: Latency,
    pub latency_uncorrected: Option<Latency>,
}

/// One second of the measurement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Second {
    /// Seconds since the measurement started (after warm-up).
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    /// p99 of the responses completed in this second (corrected in open loop).
    pub p99_ms: f64,
    /// Open loop only: p99 measured from the send time.
    pub p99_uncorrected_ms: Option<f64>,
}

/// One step of a capacity sweep.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepStep {
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p99_uncorrected_ms: f64,
    pub max_ms: f64,
    /// Achieved within tolerance of offered, no errors, and p99 within the SLO.
    pub met_slo: bool,
}

/// Result of `--sweep`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepReport {
    pub slo_p99_ms: f64,
    pub steps: Vec<SweepStep>,
    /// Highest offered rate whose step met the SLO (None: not even the first did).
    pub capacity_rps: Option<f64>,
    /// Why the sweep stopped.
    pub stop_reason: String,
}

/// Everything a run measured. See docs/loadgen.md for the field-by-field schema.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    pub config: Config,
    /// "closed" or "open".
    pub mode: String,
    /// Open loop: requests per second offered.
    pub offered_rps: Option<f64>,
    /// Wall-clock start of the measurement, seconds since the Unix epoch.
    pub started_unix_s: f64,
    /// Seconds from the start of measuring until the last response (or the stop).
    pub duration_s: f64,
    /// Stopped early (Ctrl-C or the progress callback).
    pub interrupted: bool,
    /// Complete responses, any status.
    pub requests: u64,
    /// Requests written during the measurement.
    pub sent: u64,
    /// requests / duration_s.
    pub achieved_rps: f64,
    pub errors: Errors,
    pub errors_total: u64,
    /// Status code -> count, over all targets.
    pub status: BTreeMap<String, u64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Connections established during the measurement.
    pub connects: u64,
    /// Keep-alive connections re-established after the server closed or broke them.
    pub reconnects: u64,
    /// Closed loop: times a thread napped instead of waiting to be woken by a response
    /// (config.nap_s each at most; responses that arrived meanwhile are timed that late).
    #[serde(default)]
    pub naps: u64,
    /// Open loop: requests that fell due but were never sent (the connections could not
    /// keep up); not in the latency histograms.
    pub backlog: u64,
    /// Requests still unanswered when an interrupted run stopped.
    pub unfinished: u64,
    /// Closed loop: from send to response. Open loop: from the due time (corrected).
    pub latency: Latency,
    /// Open loop: from send to response (what the uncorrected tools report).
    pub latency_uncorrected: Option<Latency>,
    pub targets: Vec<TargetReport>,
    pub timeline: Vec<Second>,
    pub sweep: Option<SweepReport>,
}

/// Picks one percentile out of a [`Latency`].
type Pick = fn(&Latency) -> f64;

fn status_map<'a>(it: impl Iterator<Item = &'a (u16, u64)>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for &(s, n) in it {
        *m.entry(s.to_string()).or_insert(0) += n;
    }
    m
}

pub(crate) struct Measured {
    pub stats: Stats,
    pub latency: Histogram<u64>,
    pub uncorrected: Option<Histogram<u64>>,
    pub duration_s: f64,
    pub started_unix_s: f64,
    pub interrupted: bool,
    pub timeline: Vec<Second>,
}

impl Report {
    pub(crate) fn build(config: &Config, weights: &[(String, u32)], m: Measured) -> Report {
        let s = &m.stats;
        let d = m.duration_s.max(1e-9);
        let errors = Errors::from_counts(&s.errors);
        let targets = s
            .targets
            .iter()
            .zip(weights)
            .map(|(t, (path, weight))| TargetReport {
                path: path.clone(),
                weight: *weight,
                requests: t.requests,
                errors: t.errors,
                rps: t.requests as f64 / d,
                status: status_map(t.statuses.iter()),
                latency: Latency::of(t.latency.as_ref().unwrap_or(&m.latency)),
                latency_uncorrected: t
                    .uncorrected
                    .as_ref()
                    .or(m.uncorrected.as_ref())
                    .map(Latency::of),
            })
            .collect();
        Report {
            schema: SCHEMA.to_string(),
            config: config.clone(),
            mode: if config.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .to_string(),
            offered_rps: config.rate,
            started_unix_s: m.started_unix_s,
            duration_s: m.duration_s,
            interrupted: m.interrupted,
            requests: s.requests,
            sent: s.sent,
            achieved_rps: s.requests as f64 / d,
            errors_total: errors.total(),
            errors,
            status: status_map(s.targets.iter().flat_map(|t| t.statuses.iter())),
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            connects: s.connects,
            reconnects: s.reconnects,
            naps: s.naps,
            backlog: s.backlog,
            unfinished: s.unfinished,
            latency: Latency::of(&m.latency),
            latency_uncorrected: m.uncorrected.as_ref().map(Latency::of),
            targets,
            timeline: m.timeline,
            sweep: None,
        }
    }

    /// The human summary, laid out like wrk's.
    pub fn summary(&self) -> String {
        let mut o = String::new();
        let c = &self.config;
        let what = match self.config.requests {
            Some(n) => format!("{n} requests"),
            None => format!("{} test", secs(c.duration_s)),
        };
        let _ = writeln!(o, "Running {what} @ {}", c.url);
        let mut shape = format!("  {} threads and {} connections", c.threads, c.connections);
        match self.offered_rps {
            Some(r) => {
                let _ = write!(
                    shape,
                    ", open loop at {r:.0} req/s ({:?} arrivals)",
                    c.arrivals
                );
            }
            None => shape.push_str(", closed loop"),
        }
        if c.pipeline > 1 {
            let _ = write!(shape, ", pipeline {}", c.pipeline);
        }
        if !c.keepalive {
            shape.push_str(", new connection per request");
        }
        if c.warmup_s > 0.0 {
            let _ = write!(shape, ", after {} warm-up", secs(c.warmup_s));
        }
        let _ = writeln!(o, "{shape}");
        let l = &self.latency;
        let _ = writeln!(o, "  Thread Stats   Avg      Stdev     Max");
        let _ = writeln!(
            o,
            "    Latency   {:>8} {:>8} {:>8}",
            ms(l.mean_ms),
            ms(l.stdev_ms),
            ms(l.max_ms)
        );
        let title = if self.latency_uncorrected.is_some() {
            "  Latency Distribution (corrected: from the due time | uncorrected: from the send)"
        } else {
            "  Latency Distribution"
        };
        let _ = writeln!(o, "{title}");
        let rows: [(&str, Pick); 6] = [
            ("50.000%", |l| l.p50_ms),
            ("90.000%", |l| l.p90_ms),
            ("99.000%", |l| l.p99_ms),
            ("99.900%", |l| l.p99_9_ms),
            ("99.990%", |l| l.p99_99_ms),
            ("100.000%", |l| l.max_ms),
        ];
        for (name, f) in rows {
            match &self.latency_uncorrected {
                Some(u) => {
                    let _ = writeln!(o, "   {name:>8}  {:>9} | {:>9}", ms(f(l)), ms(f(u)));
                }
                None => {
                    let _ = writeln!(o, "   {name:>8}  {:>9}", ms(f(l)));
                }
            }
        }
        if self.targets.len() > 1 {
            let _ = writeln!(
                o,
                "  Per target          requests    req/s   errors      p50      p99    p99.9"
            );
            for t in &self.targets {
                let _ = writeln!(
                    o,
                    "    {:<16} {:>10} {:>8.1} {:>8} {:>8} {:>8} {:>8}",
                    t.path,
                    t.requests,
                    t.rps,
                    t.errors,
                    ms(t.latency.p50_ms),
                    ms(t.latency.p99_ms),
                    ms(t.latency.p99_9_ms)
                );
            }
        }
        let _ = writeln!(
            o,
            "  {} requests in {}, {} read, {} written",
            self.requests,
            secs(self.duration_s),
            bytes(self.bytes_received as f64),
            bytes(self.bytes_sent as f64)
        );
        let e = &self.errors;
        if self.errors_total > 0 {
            let _ = writeln!(
                o,
                "  Errors: connect refused {}, connect timeout {}, connect other {}, reset {}, timeout {}, malformed {}, status {}",
                e.connect_refused, e.connect_timeout, e.connect_other, e.reset, e.timeout, e.malformed, e.status
            );
        }
        let statuses: Vec<String> = self
            .status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        if !statuses.is_empty() {
            let _ = writeln!(o, "  Status codes: {}", statuses.join(", "));
        }
        if self.reconnects > 0 || !c.keepalive {
            let _ = writeln!(
                o,
                "  Connects: {}, reconnects: {}",
                self.connects, self.reconnects
            );
        }
        if self.naps > 0 {
            let _ = writeln!(
                o,
                "  Naps: {} of {:.0}us (nothing to read, {}+ in flight; --nap 0 turns them off)",
                self.naps,
                c.nap_s * 1e6,
                crate::config::NAP_MIN_IN_FLIGHT
            );
        }
        if self.backlog > 0 {
            let _ = writeln!(
                o,
                "  Backlog: {} requests fell due but were never sent",
                self.backlog
            );
        }
        if self.interrupted {
            let _ = writeln!(
                o,
                "  Interrupted; {} requests were still unanswered",
                self.unfinished
            );
        }
        match self.offered_rps {
            Some(r) => {
                let _ = writeln!(
                    o,
                    "Requests/sec: {:>10.2} (offered {r:.2})",
                    self.achieved_rps
                );
            }
            None => {
                let _ = writeln!(o, "Requests/sec: {:>10.2}", self.achieved_rps);
            }
        }
        let _ = writeln!(
            o,
            "Transfer/sec: {:>10}",
            bytes(self.bytes_received as f64 / self.duration_s.max(1e-9))
        );
        if let Some(sw) = &self.sweep {
            o.push_str(&sweep_table(sw));
        }
        o
    }
}

/// The latency-versus-throughput curve of a sweep.
pub fn sweep_table(sw: &SweepReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Capacity sweep (SLO: corrected p99 <= {}):",
        ms(sw.slo_p99_ms)
    );
    let _ = writeln!(
        o,
        "   offered   achieved   errors       p50       p99  p99 uncorr       max  SLO"
    );
    for s in &sw.steps {
        let _ = writeln!(
            o,
            "  {:>8.0} {:>10.1} {:>8} {:>9} {:>9} {:>11} {:>9}  {}",
            s.offered_rps,
            s.achieved_rps,
            s.errors,
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.p99_uncorrected_ms),
            ms(s.max_ms),
            if s.met_slo { "ok" } else { "MISSED" }
        );
    }
    match sw.capacity_rps {
        Some(c) => {
            let _ = writeln!(
                o,
                "Capacity: {c:.0} req/s (highest offered rate that met the SLO); stopped: {}",
                sw.stop_reason
            );
        }
        None => {
            let _ = writeln!(
                o,
                "Capacity: no step met the SLO; stopped: {}",
                sw.stop_reason
            );
        }
    }
    o
}

fn ms(v: f64) -> String {
    if v < 1.0 {
        format!("{:.2}us", v * 1000.0)
    } else if v < 1000.0 {
        format!("{v:.2}ms")
    } else {
        format!("{:.2}s", v / 1000.0)
    }
}

fn secs(s: f64) -> String {
    if s >= 60.0 && s % 60.0 == 0.0 {
        format!("{}m", s / 60.0)
    } else {
        format!("{s:.2}s")
    }
}

fn bytes(b: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2}{}", UNITS[u])
}
