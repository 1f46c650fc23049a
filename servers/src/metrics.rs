//! Prometheus metrics shared by every variant, kept in plain atomics.
//!
//! Recording a request is a handful of relaxed atomic adds: no lock, no allocation and no
//! syscall, so that measuring the servers does not change what is measured. `/metrics`
//! renders the text exposition format on demand. Every variant exports the same names:
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

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

/// Route labels, in the order of the counters below. `bad_request` covers requests the
/// HTTP codec rejected before any route was known.
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
const N_STATUSES: usize = STATUSES.len() + 1;
const N_BUCKETS: usize = BUCKETS.len() + 1;

pub struct Metrics {
    requests: [[AtomicU64; N_STATUSES]; N_ROUTES],
    buckets: [[AtomicU64; N_BUCKETS]; N_ROUTES],
    duration_micros: [AtomicU64; N_ROUTES],
    in_flight: AtomicI64,
    log_lines_dropped: AtomicU64,
    variant: OnceLock<&'static str>,
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics::new();

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);

impl Metrics {
    const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)]
        const STATUS_ROW: [AtomicU64; N_STATUSES] = [ZERO; N_STATUSES];
        #[allow(clippy::declare_interior_mutable_const)]
        const BUCKET_ROW: [AtomicU64; N_BUCKETS] = [ZERO; N_BUCKETS];
        Metrics {
            requests: [STATUS_ROW; N_ROUTES],
            buckets: [BUCKET_ROW; N_ROUTES],
            duration_micros: [ZERO; N_ROUTES],
            in_flight: AtomicI64::new(0),
            log_lines_dropped: AtomicU64::new(0),
            variant: OnceLock::new(),
        }
    }

    pub fn set_variant(&self, variant: &'static str) {
        let _ = self.variant.set(variant);
    }

    /// Counts a request as started; the guard counts it as finished when dropped.
    pub fn start_request(&'static self) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self)
    }

    /// Records a finished request under its route label (one of [`ROUTES`]).
    pub fn record(&self, route: &str, status: u16, elapsed: Duration) {
        let r = ROUTES
            .iter()
            .position(|&name| name == route)
            .unwrap_or(N_ROUTES - 1);
        let s = STATUSES
            .iter()
            .position(|&code| code == status)
            .unwrap_or(N_STATUSES - 1);
        self.requests[r][s].fetch_add(1, Relaxed);
        let seconds = elapsed.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(N_BUCKETS - 1);
        self.buckets[r][b].fetch_add(1, Relaxed);
        self.duration_micros[r].fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    pub fn log_line_dropped(&self) {
        self.log_lines_dropped.fetch_add(1, Relaxed);
    }

    pub fn log_lines_dropped(&self) -> u64 {
        self.log_lines_dropped.load(Relaxed)
    }

    /// Requests counted so far for a route and status (for tests and the lab).
    pub fn requests(&self, route: &str, status: u16) -> u64 {
        let r = ROUTES.iter().position(|&name| name == route);
        let s = STATUSES.iter().position(|&code| code == status);
        match (r, s) {
            (Some(r), Some(s)) => self.requests[r][s].load(Relaxed),
            _ => 0,
        }
    }

    /// The Prometheus text exposition; `pool` is (connections in use, idle).
    pub fn render(&self, pool: (usize, usize)) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let variant = self.variant.get().copied().unwrap_or("unknown");
        let _ = writeln!(out, "# HELP lab_server_info The server variant answering.");
        let _ = writeln!(out, "# TYPE lab_server_info gauge");
        let _ = writeln!(out, "lab_server_info{{variant=\"{variant}\"}} 1");
        let _ = writeln!(
            out,
            "# HELP lab_http_requests_total Requests answered, by route and status."
        );
        let _ = writeln!(out, "# TYPE lab_http_requests_total counter");
        for (r, route) in ROUTES.iter().enumerate() {
            for s in 0..N_STATUSES {
                let count = self.requests[r][s].load(Relaxed);
                if count > 0 {
                    let status = STATUSES
                        .get(s)
                        .map_or("other".to_string(), |c| c.to_string());
                    let _ = writeln!(
                        out,
                        "lab_http_requests_total{{variant=\"{variant}\",route=\"{route}\",status=\"{status}\"}} {count}"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP lab_http_request_duration_seconds Time from parsed request to response ready."
        );
        let _ = writeln!(out, "# TYPE lab_http_request_duration_seconds histogram");
        for (r, route) in ROUTES.iter().enumerate() {
            let counts: Vec<u64> = self.buckets[r].iter().map(|b| b.load(Relaxed)).collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(&counts) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "lab_http_request_duration_seconds_bucket{{variant=\"{variant}\",route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "lab_http_request_duration_seconds_bucket{{variant=\"{variant}\",route=\"{route}\",le=\"+Inf\"}} {total}"
            );
            let sum = self.duration_micros[r].load(Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "lab_http_request_duration_seconds_sum{{variant=\"{variant}\",route=\"{route}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "lab_http_request_duration_seconds_count{{variant=\"{variant}\",route=\"{route}\"}} {total}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP lab_http_requests_in_flight Requests being answered now."
        );
        let _ = writeln!(out, "# TYPE lab_http_requests_in_flight gauge");
        let _ = writeln!(
            out,
            "lab_http_requests_in_flight{{variant=\"{variant}\"}} {}",
            self.in_flight.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP lab_db_pool_connections Database connections of the pool(s), by state."
        );
        let _ = writeln!(out, "# TYPE lab_db_pool_connections gauge");
        let _ = writeln!(
            out,
            "lab_db_pool_connections{{variant=\"{variant}\",state=\"in_use\"}} {}",
            pool.0
        );
        let _ = writeln!(
            out,
            "lab_db_pool_connections{{variant=\"{variant}\",state=\"idle\"}} {}",
            pool.1
        );
        let _ = writeln!(out, "# HELP lab_log_lines_dropped_total Request log lines lost because the log buffer was full.");
        let _ = writeln!(out, "# TYPE lab_log_lines_dropped_total counter");
        let _ = writeln!(
            out,
            "lab_log_lines_dropped_total{{variant=\"{variant}\"}} {}",
            self.log_lines_dropped()
        );
        render_process(&mut out, variant);
        out
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
fn render_process(out: &mut String, variant: &str) {
    let figures = ProcessFigures::read("self").unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP lab_process_cpu_seconds_total CPU time of the server process."
    );
    let _ = writeln!(out, "# TYPE lab_process_cpu_seconds_total counter");
    let _ = writeln!(
        out,
        "lab_process_cpu_seconds_total{{variant=\"{variant}\",mode=\"user\"}} {}",
        figures.user_s
    );
    let _ = writeln!(
        out,
        "lab_process_cpu_seconds_total{{variant=\"{variant}\",mode=\"system\"}} {}",
        figures.system_s
    );
    let _ = writeln!(
        out,
        "# HELP lab_process_threads Threads of the server process."
    );
    let _ = writeln!(out, "# TYPE lab_process_threads gauge");
    let _ = writeln!(
        out,
        "lab_process_threads{{variant=\"{variant}\"}} {}",
        figures.threads
    );
    let _ = writeln!(
        out,
        "# HELP lab_process_resident_memory_bytes Resident set size of the server process."
    );
    let _ = writeln!(out, "# TYPE lab_process_resident_memory_bytes gauge");
    let _ = writeln!(
        out,
        "lab_process_resident_memory_bytes{{variant=\"{variant}\"}} {}",
        figures.rss_bytes
    );
    let _ = writeln!(
        out,
        "# HELP lab_process_context_switches_total Context switches of the server's threads."
    );
    let _ = writeln!(out, "# TYPE lab_process_context_switches_total counter");
    // getrusage counts every thread the process ever had; /proc/self/status only the
    // main thread's switches.
    // SAFETY: getrusage writes into the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    for (kind, count) in [
        ("voluntary", usage.ru_nvcsw),
        ("involuntary", usage.ru_nivcsw),
    ] {
        let _ = writeln!(
            out,
            "lab_process_context_switches_total{{variant=\"{variant}\",kind=\"{kind}\"}} {count}"
        );
    }
}

/// Decrements the in-flight gauge when the request is done, however it ends.
pub struct InFlight(&'static Metrics);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        static M: Metrics = Metrics::new();
        M.record("db", 200, Duration::from_micros(300));
        M.record("db", 200, Duration::from_millis(20));
        M.record("db", 503, Duration::from_secs(7));
        let text = M.render((3, 5));
        assert!(
            text.contains(
                "lab_http_requests_total{variant=\"unknown\",route=\"db\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "lab_http_requests_total{variant=\"unknown\",route=\"db\",status=\"503\"} 1"
        ));
        assert!(
            text.contains("lab_http_request_duration_seconds_bucket{variant=\"unknown\",route=\"db\",le=\"0.0005\"} 1")
        );
        assert!(
            text.contains("lab_http_request_duration_seconds_bucket{variant=\"unknown\",route=\"db\",le=\"0.025\"} 2")
        );
        assert!(
            text.contains("lab_http_request_duration_seconds_bucket{variant=\"unknown\",route=\"db\",le=\"+Inf\"} 3")
        );
        assert!(text.contains("lab_db_pool_connections{variant=\"unknown\",state=\"in_use\"} 3"));
        assert!(
            text.contains("lab_process_threads{variant=\"unknown\"} "),
            "{text}"
        );
        let _guard = M.start_request();
        assert!(M
            .render((0, 0))
            .contains("lab_http_requests_in_flight{variant=\"unknown\"} 1"));
    }
}
