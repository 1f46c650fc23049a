//! The run configuration: what `lab` and the command line fill in, and the checks that
//! turn bad input into one clear [`Error::Input`] before any load is sent.
//!
//! `Config` is plain data (serde) so a run records exactly what it was asked to do;
//! `Config::resolve` turns it into a [`Plan`] (resolved address, prebuilt requests).

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mix::{self, MixEntry, Template};

/// Everything a run needs. Construct with [`Config::new`] and adjust the public fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Config {
    /// Target URL, `http://host[:port][/path]`. With a mix, only scheme, host and port are used.
    pub url: String,
    /// Weighted paths to request instead of the URL's path (see docs/loadgen.md).
    pub mix: Vec<MixEntry>,
    /// Open connections, shared out over the threads.
    pub connections: u32,
    /// Worker threads, each with its own event loop.
    pub threads: u32,
    /// Measured duration, in seconds (ignored when `requests` is set).
    pub duration_s: f64,
    /// Stop after exactly this many measured requests instead of after `duration_s`.
    pub requests: Option<u64>,
    /// Seconds of load before measuring; every statistic is reset after it.
    pub warmup_s: f64,
    /// A request without its complete response after this many seconds is a timeout error.
    pub timeout_s: f64,
    /// Requests in flight per connection (HTTP/1.1 pipelining); 1 = no pipelining.
    pub pipeline: u32,
    /// false: a new connection for every request (`Connection: close`).
    pub keepalive: bool,
    /// Open loop: offered requests per second over all connections. None = closed loop.
    pub rate: Option<f64>,
    /// How open-loop requests are spaced.
    pub arrivals: Arrivals,
    /// Capacity search: run open-loop steps of increasing rate.
    pub sweep: Option<SweepConfig>,
    /// Statuses that count as success; empty = any 2xx.
    pub expect_status: Vec<u16>,
    /// Extra request headers, `Name: value`.
    pub headers: Vec<String>,
    /// Request method (`GET` unless told otherwise; any HTTP token except `HEAD` and
    /// `CONNECT`, whose answers have no body to frame).
    #[serde(default = "default_method")]
    pub method: String,
    /// Request body, sent with a `Content-Length` (none when `None`).
    #[serde(default)]
    pub body: Option<String>,
    /// Write an HdrHistogram interval log (one interval per second) to this file.
    pub hdr_log: Option<PathBuf>,
    /// Closed loop with at least [`NAP_MIN_IN_FLIGHT`] requests in flight on a thread: when
    /// nothing is ready to read, sleep this many seconds on a timer instead of waiting to be
    /// woken by the next response (0: never). See docs/loadgen.md, "Naps".
    #[serde(default)]
    pub nap_s: f64,
}

/// Requests in flight on a worker thread from which it naps (see [`Config::nap_s`]): enough
/// that a nap of at most [`MAX_NAP_S`] cannot leave the server without queued work.
pub const NAP_MIN_IN_FLIGHT: u64 = 64;

/// Longest nap accepted.
pub const MAX_NAP_S: f64 = 0.001;

/// Spacing of open-loop arrivals.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Evenly spaced, 1/rate apart (wrk2).
    #[default]
    Constant,
    /// Exponentially distributed gaps with mean 1/rate (a Poisson process).
    Poisson,
}

/// Capacity search settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepConfig {
    /// First offered rate, requests per second.
    pub start: f64,
    /// Each step offers `factor` times the previous rate (used when `rates` is empty).
    pub factor: f64,
    /// Explicit list of offered rates, in order.
    pub rates: Vec<f64>,
    /// Largest number of steps.
    pub max_steps: u32,
    /// Corrected p99 must stay at or below this many milliseconds.
    pub slo_p99_ms: f64,
    /// Achieved rate below (1 - tolerance) x offered ends the search.
    pub tolerance: f64,
}

/// Why a run could not be done. `Input` errors happen before any load is sent.
#[derive(Debug)]
pub enum Error {
    /// Bad configuration, unusable mix file, unreachable target: exit code 2.
    Input(String),
    /// Anything that failed while running (e.g. cannot create an epoll instance).
    Io(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Input(m) | Error::Io(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

fn input<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error::Input(msg.into()))
}

impl Config {
    /// Defaults like wrk's: 10 connections, 2 threads, 10 s, 2 s timeout, closed loop.
    pub fn new(url: impl Into<String>) -> Config {
        Config {
            url: url.into(),
            mix: Vec::new(),
            connections: 10,
            threads: 2,
            duration_s: 10.0,
            requests: None,
            warmup_s: 0.0,
            timeout_s: 2.0,
            pipeline: 1,
            keepalive: true,
            rate: None,
            arrivals: Arrivals::Constant,
            sweep: None,
            expect_status: Vec::new(),
            headers: Vec::new(),
            method: default_method(),
            body: None,
            hdr_log: None,
            nap_s: 50e-6,
        }
    }
}

fn default_method() -> String {
    "GET".into()
}

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path and query, always starting with '/'.
    pub path: String,
}

/// Parses `http://host[:port][/path]`. Only plain HTTP is supported.
pub fn parse_url(s: &str) -> Result<Url, Error> {
    let rest = match s.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return input(format!(
                "invalid URL {s:?}: https is not supported, use http://"
            ))
        }
        _ => {
            return input(format!(
                "invalid URL {s:?}: expected http://host[:port]/path"
            ))
        }
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return input(format!("invalid URL {s:?}: user info is not supported"));
    }
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        // [v6]:port
        let Some((h, after)) = stripped.split_once(']') else {
            return input(format!("invalid URL {s:?}: unterminated IPv6 address"));
        };
        match after.strip_prefix(':') {
            Some(p) => (h.to_string(), parse_port(s, p)?),
            None if after.is_empty() => (h.to_string(), 80),
            None => return input(format!("invalid URL {s:?}: bad authority")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), parse_port(s, p)?),
            None => (authority.to_string(), 80),
        }
    };
    if host.is_empty() {
        return input(format!("invalid URL {s:?}: no host"));
    }
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return input(format!(
            "invalid URL {s:?}: spaces or control characters in the path"
        ));
    }
    Ok(Url { host, port, path })
}

fn parse_port(url: &str, p: &str) -> Result<u16, Error> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => input(format!("invalid URL {url:?}: bad port {p:?}")),
    }
}

/// Parses a wrk-style duration: `10s`, `1m`, `2h`, `500ms`, `1.5s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 10s, 1m, 500ms"))?;
    let mult = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("invalid duration {s:?}: unknown unit {unit:?}")),
    };
    let secs = v * mult;
    if !secs.is_finite() {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(secs)
}

/// What the workers run: the validated config with the address resolved and requests built.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub addr: SocketAddr,
    pub targets: Vec<Template>,
    /// Cumulative weights for picking a target.
    pub cumulative: Vec<u64>,
    pub connections: u32,
    pub threads: u32,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub warmup: Duration,
    pub timeout: Duration,
    pub pipeline: u32,
    pub keepalive: bool,
    pub rate: Option<f64>,
    pub arrivals: Arrivals,
    pub expect_status: Vec<u16>,
    /// Nap length in nanoseconds; 0 in the open loop, which never naps.
    pub nap_ns: u64,
}

/// Highest offered rate accepted (requests per second).
pub const MAX_RATE: f64 = 1e8;

fn positive(name: &str, v: f64) -> Result<(), Error> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        input(format!("{name} must be greater than zero (got {v})"))
    }
}

impl Config {
    /// Checks every field and resolves the target; no load is sent. `probe` also opens
    /// (and closes) one connection to make sure the server is reachable.
    pub(crate) fn resolve(&self, probe: bool) -> Result<Plan, Error> {
        let url = parse_url(&self.url)?;
        if self.connections == 0 {
            return input("connections (-c) must be at least 1");
        }
        if self.threads == 0 {
            return input("threads (-t) must be at least 1");
        }
        if self.threads > self.connections {
            return input(format!(
                "threads (-t {}) cannot exceed connections (-c {}): every thread needs a connection",
                self.threads, self.connections
            ));
        }
        if self.connections > 1_000_000 {
            return input("connections (-c) must be at most 1000000");
        }
        if self.pipeline == 0 || self.pipeline > 1024 {
            return input("pipeline depth (-p) must be between 1 and 1024");
        }
        if !self.keepalive && self.pipeline > 1 {
            return input("pipelining (-p) needs keep-alive connections; drop --no-keepalive");
        }
        match self.requests {
            Some(0) => return input("request count (-n) must be at least 1"),
            Some(_) => {}
            None => positive("duration (-d)", self.duration_s)?,
        }
        if !(self.warmup_s.is_finite() && self.warmup_s >= 0.0) {
            return input("warm-up must be zero or more seconds");
        }
        positive("timeout", self.timeout_s)?;
        if !(self.nap_s.is_finite() && (0.0..=MAX_NAP_S).contains(&self.nap_s)) {
            return input("nap (--nap) must be between 0 and 1ms");
        }
        if let Some(r) = self.rate {
            positive("rate (--rate)", r)?;
            if r > MAX_RATE {
                return input(format!("rate (--rate) must be at most {MAX_RATE}"));
            }
        }
        if let Some(sw) = &self.sweep {
            positive("sweep start rate", sw.start)?;
            if !(sw.factor.is_finite() && sw.factor > 1.0) && sw.rates.is_empty() {
                return input("sweep factor must be greater than 1");
            }
            for r in sw.rates.iter().chain([&sw.start]) {
                positive("sweep rate", *r)?;
                if *r > MAX_RATE {
                    return input(format!("sweep rates must be at most {MAX_RATE}"));
                }
            }
            positive("SLO (--slo)", sw.slo_p99_ms)?;
            if sw.max_steps == 0 {
                return input("sweep needs at least one step");
            }
            if !(0.0..1.0).contains(&sw.tolerance) {
                return input("sweep tolerance must be in [0, 1)");
            }
            if self.requests.is_some() {
                return input(
                    "--sweep runs each step for a duration (-d), not a request count (-n)",
                );
            }
        }
        for s in &self.expect_status {
            if !(100..=999).contains(s) {
                return input(format!("--expect-status {s} is not an HTTP status code"));
            }
        }
        let mut headers = String::new();
        for h in &self.headers {
            let Some((name, value)) = h.split_once(':') else {
                return input(format!("header {h:?} must look like 'Name: value'"));
            };
            let name = name.trim();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                || value.bytes().any(|b| b == b'\r' || b == b'\n')
            {
                return input(format!("header {h:?} is not a valid HTTP header"));
            }
            headers.push_str(name);
            headers.push_str(": ");
            headers.push_str(value.trim());
            headers.push_str("\r\n");
        }
        let method = self.method.as_str();
        if method.is_empty()
            || !method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return input(format!("method {method:?} is not an HTTP method"));
        }
        if method.eq_ignore_ascii_case("HEAD") || method.eq_ignore_ascii_case("CONNECT") {
            return input(format!(
                "method {method} is not supported: its answers carry no body the load generator could frame"
            ));
        }
        if let Some(body) = &self.body {
            headers.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        let entries = if self.mix.is_empty() {
            vec![MixEntry {
                weight: 1,
                path: url.path.clone(),
            }]
        } else {
            self.mix.clone()
        };
        let host_header = if url.port == 80 {
            url.host.clone()
        } else if url.host.contains(':') {
            format!("[{}]:{}", url.host, url.port)
        } else {
            format!("{}:{}", url.host, url.port)
        };
        let mut targets = Vec::with_capacity(entries.len());
        let mut cumulative = Vec::with_capacity(entries.len());
        let mut total = 0u64;
        for e in &entries {
            if e.weight == 0 {
                continue;
            }
            targets.push(mix::build(
                e,
                &mix::Head {
                    method,
                    host: &host_header,
                    headers: &headers,
                    body: self.body.as_deref().unwrap_or(""),
                },
                self.keepalive,
            )?);
            total += u64::from(e.weight);
            cumulative.push(total);
        }
        if targets.is_empty() {
            return input("the mix has no path with a weight above zero");
        }
        if targets.len() > u16::MAX as usize {
            return input("the mix has too many paths");
        }
        ensure_fd_limit(u64::from(self.connections))?;
        let addr = resolve_addr(&url.host, url.port)?;
        if probe {
            if let Err(e) =
                TcpStream::connect_timeout(&addr, Duration::from_secs_f64(self.timeout_s.min(5.0)))
            {
                return input(format!("cannot connect to {addr} ({}): {e}", self.url));
            }
        }
        let secs = |s: f64| Duration::from_secs_f64(s.min(1e9));
        Ok(Plan {
            addr,
            targets,
            cumulative,
            connections: self.connections,
            threads: self.threads,
            duration: if self.requests.is_some() {
                None
            } else {
                Some(secs(self.duration_s))
            },
            requests: self.requests,
            warmup: secs(self.warmup_s),
            timeout: secs(self.timeout_s),
            pipeline: self.pipeline,
            keepalive: self.keepalive,
            rate: self.rate,
            arrivals: self.arrivals,
            expect_status: self.expect_status.clone(),
            nap_ns: if self.rate.is_some() {
                0
            } else {
                (self.nap_s * 1e9) as u64
            },
        })
    }
}

/// Raises the open-file limit to what the connections need, or says why it cannot.
fn ensure_fd_limit(connections: u64) -> Result<(), Error> {
    let need = connections + 64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid out-parameter.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= need {
        return Ok(());
    }
    if lim.rlim_max >= need {
        let raised = libc::rlimit {
            rlim_cur: need,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: raised is a valid rlimit within the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(());
        }
    }
    input(format!(
        "{connections} connections need {need} open files but the limit is {} (hard {}): raise it with ulimit -n",
        lim.rlim_cur, lim.rlim_max
    ))
}

fn resolve_addr(host: &str, port: u16) -> Result<SocketAddr, Error> {
    match (host, port).to_socket_addrs() {
        Ok(mut it) => match it.next() {
            Some(a) => Ok(a),
            None => input(format!("host {host:?} has no address")),
        },
        Err(e) => input(format!("cannot resolve host {host:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("http://127.0.0.1:8080/plaintext").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/plaintext")
        );
        let u = parse_url("http://localhost").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        let u = parse_url("http://[::1]:81/x?y=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 81, "/x?y=1")
        );
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("x/").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:0/").is_err());
        assert!(parse_url("http://h:99999/").is_err());
        assert!(parse_url("http://h/a b").is_err());
    }

    #[test]
    fn methods_are_checked() {
        let with = |method: &str| {
            let mut c = Config::new("http://127.0.0.1:9/");
            c.method = method.into();
            c.resolve(false).map(|_| ())
        };
        assert!(with("POST").is_ok());
        assert!(with("PURGE").is_ok());
        for bad in ["", "GE T", "HEAD", "head", "CONNECT", "G\r\n"] {
            assert!(
                matches!(with(bad), Err(Error::Input(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), 10.0);
        assert_eq!(parse_duration("1m").unwrap(), 60.0);
        assert_eq!(parse_duration("250ms").unwrap(), 0.25);
        assert_eq!(parse_duration("3").unwrap(), 3.0);
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
    }
}
