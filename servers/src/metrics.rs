//! Prometheus metrics shared by every variant, kept and exposed with the Prometheus
//! project's own client (`prometheus-client`).
//!
//! Recording a request adds to one atomic counter and locks its route's histogram for one
//! observation: no allocation after a series' first request and no syscall, so that
//! measuring the servers does not change what is measured. The series live in the
//! library's families, which `/metrics` encodes; the request path keeps each series' handle
//! from its first request, because looking it up in the family every time (a shared lock
//! and a hash of the labels) cost 4 to 6 times as much per request, and 9% more CPU per
//! request in the cheapest case (docs/benchmarks.md, "Metrics on the request path").
//! `/metrics` encodes the Prometheus text format on demand. Every variant exports the same
//! names:
//!
//! - `lab_http_requests_total{route,status}`
//! - `lab_http_request_duration_seconds{route}` (histogram)
//! - `lab_http_requests_in_flight`
//! - `lab_db_pool_connections{state="in_use"|"idle"}`
//! - `lab_log_lines_dropped_total`
//! - `lab_server_info`
//! - `lab_process_cpu_seconds_total{mode="user"|"system"}`, `lab_process_resident_memory_bytes`,
//!   `lab_process_threads`, `lab_process_context_switches_total{kind="voluntary"|"involuntary"}`
//!   (read from `/proc/self` when scraped)
//!
//! Every series carries a `variant` label, so that one Prometheus can compare variants
//! that ran one after another on the same port.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
    LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Route labels. `bad_request` covers requests the HTTP codec rejected before any route was
/// known, and any label not listed here.
pub const ROUTES: [&str; 12] = [
    "plaintext",
    "json",
    "db",
    "queries",
    "fortunes",
    "updates",
    "health",
    "metrics",
    // `/debug/pprof/...` (crate::profile): slow by design, kept out of the API routes.
    "pprof",
    "not_found",
    "method_not_allowed",
    "bad_request",
];

/// Statuses counted by value; any other lands under "other".
const STATUSES: [u16; 11] = [200, 400, 404, 405, 408, 409, 413, 431, 500, 501, 503];

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

const N_ROUTES: usize = ROUTES.len();
/// The statuses of [`STATUSES`], then "other".
const N_STATUSES: usize = STATUSES.len() + 1;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: Status,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

/// An HTTP status of [`STATUSES`], or 0 for "other".
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Status(u16);

impl EncodeLabelValue for Status {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        match self.0 {
            0 => encoder.write_str("other"),
            code => write!(encoder, "{code}"),
        }
    }
}

pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Handles of the families' series by (route, status) and by route, taken at a series'
    /// first request (so that `/metrics` lists only series that counted something).
    request_series: [[OnceLock<Counter>; N_STATUSES]; N_ROUTES],
    duration_series: [OnceLock<Histogram>; N_ROUTES],
    in_flight: Gauge,
    log_lines_dropped: Counter,
    pool: Family<PoolLabels, Gauge>,
    variant: OnceLock<&'static str>,
    /// Built at the first scrape, with the variant label set by then.
    registry: OnceLock<Registry>,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        Metrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
            request_series: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            duration_series: std::array::from_fn(|_| OnceLock::new()),
            in_flight: Gauge::default(),
            log_lines_dropped: Counter::default(),
            pool: Family::default(),
            variant: OnceLock::new(),
            registry: OnceLock::new(),
        }
    }

    pub fn set_variant(&self, variant: &'static str) {
        let _ = self.variant.set(variant);
    }

    /// Counts a request as started; the guard counts it as finished when dropped.
    pub fn start_request(&'static self) -> InFlight {
        self.in_flight.inc();
        InFlight(self)
    }

    /// Records a finished request under its route label (one of [`ROUTES`]; any other counts
    /// as `bad_request`).
    pub fn record(&self, route: &str, status: u16, elapsed: Duration) {
        let r = ROUTES
            .iter()
            .position(|&name| name == route)
            .unwrap_or(N_ROUTES - 1);
        let s = STATUSES
            .iter()
            .position(|&code| code == status)
            .unwrap_or(N_STATUSES - 1);
        let route = ROUTES[r];
        self.request_series[r][s]
            .get_or_init(|| {
                let status = Status(STATUSES.get(s).copied().unwrap_or(0));
                self.requests
                    .get_or_create_owned(&RequestLabels { route, status })
            })
            .inc();
        self.duration_series[r]
            .get_or_init(|| self.durations.get_or_create_owned(&RouteLabels { route }))
            .observe(elapsed.as_secs_f64());
    }

    pub fn log_line_dropped(&self) {
        self.log_lines_dropped.inc();
    }

    pub fn log_lines_dropped(&self) -> u64 {
        self.log_lines_dropped.get()
    }

    /// The Prometheus text exposition ([`CONTENT_TYPE`]); `pool` is (connections in use, idle).
    pub fn render(&self, pool: (usize, usize)) -> String {
        for (state, n) in [("in_use", pool.0), ("idle", pool.1)] {
            self.pool.get_or_create(&PoolLabels { state }).set(n as i64);
        }
        let registry = self.registry.get_or_init(|| self.registry());
        let mut out = String::with_capacity(8 * 1024);
        prometheus_text::encode(&mut out, registry).expect("writing to a String cannot fail");
        out
    }

    fn registry(&self) -> Registry {
        let variant = self.variant.get().copied().unwrap_or("unknown");
        let mut r = Registry::with_labels(std::iter::once((
            Cow::Borrowed("variant"),
            Cow::Borrowed(variant),
        )));
        r.register(
            "lab_server_info",
            "The server variant answering",
            ConstGauge::new(1),
        );
        r.register(
            "lab_http_requests",
            "Requests answered, by route and status",
            self.requests.clone(),
        );
        r.register(
            "lab_http_request_duration_seconds",
            "Time from parsed request to response ready",
            self.durations.clone(),
        );
        r.register(
            "lab_http_requests_in_flight",
            "Requests being answered now",
            self.in_flight.clone(),
        );
        r.register(
            "lab_db_pool_connections",
            "Database connections of the pool(s), by state",
            self.pool.clone(),
        );
        r.register(
            "lab_log_lines_dropped",
            "Request log lines lost because the log buffer was full",
            self.log_lines_dropped.clone(),
        );
        r.register_collector(Box::new(ProcessCollector));
        r
    }
}

/// CPU time, threads and memory of a process, from `/proc/<pid>/stat` and `status`:
/// `/metrics` reads its own (`self`), `lab run` the server's from outside.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessFigures {
    pub user_s: f64,
    pub system_s: f64,
    pub threads: f64,
    pub rss_bytes: f64,
    pub peak_rss_bytes: f64,
}

impl ProcessFigures {
    /// `process` is a pid or `self`; None when the process is gone.
    pub fn read(process: &str) -> Option<ProcessFigures> {
        let stat = std::fs::read_to_string(format!("/proc/{process}/stat")).ok()?;
        // Fields after the parenthesised command name, which may hold spaces: state is
        // field 3, utime 14, stime 15, num_threads 20 (1-based, as in proc(5)).
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest.split(' ').collect())?;
        let field = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                * 1024.0
        };
        Some(ProcessFigures {
            user_s: field(14) / ticks,
            system_s: field(15) / ticks,
            threads: field(20),
            rss_bytes: kib("VmRSS:"),
            peak_rss_bytes: kib("VmHWM:"),
        })
    }
}

/// Figures of this process, read when `/metrics` is scraped (a few reads per scrape;
/// nothing per request).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let figures = ProcessFigures::read("self").unwrap_or_default();
        let mut cpu = encoder.encode_descriptor(
            "lab_process_cpu_seconds",
            "CPU time of the server process.",
            None,
            MetricType::Counter,
        )?;
        for (mode, seconds) in [("user", figures.user_s), ("system", figures.system_s)] {
            ConstCounter::new(seconds).encode(cpu.encode_family(&[("mode", mode)])?)?;
        }
        for (name, help, value) in [
            (
                "lab_process_threads",
                "Threads of the server process.",
                figures.threads,
            ),
            (
                "lab_process_resident_memory_bytes",
                "Resident set size of the server process.",
                figures.rss_bytes,
            ),
        ] {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        // getrusage counts every thread the process ever had; /proc/self/status only the
        // main thread's switches.
        // SAFETY: getrusage writes into the struct we pass.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            usage
        };
        let mut switches = encoder.encode_descriptor(
            "lab_process_context_switches",
            "Context switches of the server's threads.",
            None,
            MetricType::Counter,
        )?;
        for (kind, count) in [
            ("voluntary", usage.ru_nvcsw),
            ("involuntary", usage.ru_nivcsw),
        ] {
            ConstCounter::new(count.max(0) as u64)
                .encode(switches.encode_family(&[("kind", kind)])?)?;
        }
        Ok(())
    }
}

/// Decrements the in-flight gauge when the request is done, however it ends.
pub struct InFlight(&'static Metrics);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        static M: LazyLock<Metrics> = LazyLock::new(Metrics::new);
        M.record("db", 200, Duration::from_micros(300));
        M.record("db", 200, Duration::from_millis(20));
        M.record("db", 503, Duration::from_secs(7));
        M.record("db", 418, Duration::from_micros(1));
        M.record("no such route", 400, Duration::ZERO);
        M.log_line_dropped();
        // Prometheus's parser reads this encoder's text in the tracer's exporter test
        // (promtool) and the dashboards' test (a real Prometheus scraping every variant).
        let text = M.render((3, 5));
        let v = "variant=\"unknown\"";
        for line in [
            format!("lab_server_info{{{v}}} 1"),
            format!("lab_http_requests_total{{{v},route=\"db\",status=\"200\"}} 2"),
            format!("lab_http_requests_total{{{v},route=\"db\",status=\"503\"}} 1"),
            format!("lab_http_requests_total{{{v},route=\"db\",status=\"other\"}} 1"),
            format!("lab_http_requests_total{{{v},route=\"bad_request\",status=\"400\"}} 1"),
            format!("lab_http_request_duration_seconds_bucket{{{v},route=\"db\",le=\"0.0001\"}} 1"),
            format!("lab_http_request_duration_seconds_bucket{{{v},route=\"db\",le=\"0.0005\"}} 2"),
            format!("lab_http_request_duration_seconds_bucket{{{v},route=\"db\",le=\"0.025\"}} 3"),
            format!("lab_http_request_duration_seconds_bucket{{{v},route=\"db\",le=\"1\"}} 3"),
            format!("lab_http_request_duration_seconds_bucket{{{v},route=\"db\",le=\"+Inf\"}} 4"),
            format!("lab_http_request_duration_seconds_count{{{v},route=\"db\"}} 4"),
            format!("lab_http_requests_in_flight{{{v}}} 0"),
            format!("lab_db_pool_connections{{{v},state=\"in_use\"}} 3"),
            format!("lab_db_pool_connections{{{v},state=\"idle\"}} 5"),
            format!("lab_log_lines_dropped_total{{{v}}} 1"),
            "# TYPE lab_process_cpu_seconds_total counter".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let sum = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "lab_http_request_duration_seconds_sum{variant=\"unknown\",route=\"db\"} ",
                )
            })
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no sum in\n{text}"));
        assert!((sum - 7.020301).abs() < 1e-9, "{sum}");
        for prefix in [
            "lab_process_threads{variant=\"unknown\"} ",
            "lab_process_resident_memory_bytes{variant=\"unknown\"} ",
            "lab_process_context_switches_total{variant=\"unknown\",kind=\"voluntary\"} ",
        ] {
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
            // This test process has threads and memory; it may not have blocked yet.
            assert!(
                value > 0.0 || prefix.contains("switches"),
                "{prefix}{value}"
            );
        }
        let _guard = M.start_request();
        assert!(M
            .render((0, 0))
            .contains("lab_http_requests_in_flight{variant=\"unknown\"} 1\n"));
    }
}
