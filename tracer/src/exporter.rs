//! Exporter mode (`--listen ADDR`): serves the profile gathered so far as Prometheus metrics
//! on `/metrics`, labelled by category, call, kind, backend and variant. Counters only grow
//! while one trace runs, so dashboards use rate().
//!
//! The exposition is the Prometheus project's own client (`prometheus-client`): the profile is
//! a snapshot of cumulative totals, not something to increment, so it is a
//! [`Collector`] that encodes constant counters from the latest snapshot at each scrape. HTTP
//! is hyper's HTTP/1.1 server on a one-thread tokio runtime of its own, one task per
//! connection, so that scrapes may overlap.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::profile::{Kind, Profile, Stats};

/// The latest profile, shared with the serving thread.
pub type Latest = Arc<Mutex<Option<Profile>>>;

/// Binds `addr` and serves `/metrics` from a background thread; returns the bound address.
pub fn serve(addr: SocketAddr, latest: Latest) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the exporter to {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let registry = Arc::new(registry(latest));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the exporter's runtime")?;
    std::thread::Builder::new()
        .name("tracer-exporter".into())
        .spawn(move || runtime.block_on(accept_loop(listener, registry)))?;
    Ok(local)
}

async fn accept_loop(listener: std::net::TcpListener, registry: Arc<Registry>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lab trace: the exporter cannot listen: {e}");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait instead of spinning, then go on.
                eprintln!("lab trace: the exporter could not accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&registry, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            // One answer per connection (`Connection: close`), as the exporter has always
            // done: scripts and tests read an answer to the end of the stream. A scrape a
            // second costs Prometheus one connect. A scraper that hangs up mid-answer is no
            // error of ours.
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The registry `/metrics` encodes: the latest profile's collector.
fn registry(latest: Latest) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProfileCollector(latest)));
    registry
}

/// `/metrics` answers GET and HEAD with the exposition; anything else says where to look.
fn respond<B>(registry: &Registry, req: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            format!(
                "{} not found: the tracer's metrics are at /metrics\n",
                req.uri().path()
            ),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "/metrics answers GET and HEAD\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut body = String::new();
    if let Err(e) = prometheus_text::encode(&mut body, registry) {
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics failed: {e}\n"),
        );
    }
    let mut r = reply(StatusCode::OK, body);
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
    );
    r
}

/// Encodes the latest profile at each scrape (nothing before the first snapshot).
#[derive(Debug)]
struct ProfileCollector(Latest);

impl Collector for ProfileCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        // A panic elsewhere while holding the lock leaves a whole profile: still serve it.
        let latest = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match latest.as_ref() {
            Some(p) => encode_profile(p, encoder),
            None => Ok(()),
        }
    }
}

/// A counter of the per-call rows: name (the encoder adds `_total`), help, value of a row.
type Family = (&'static str, &'static str, fn(&Stats) -> Value);

/// Counts stay integers in the exposition; times are seconds.
enum Value {
    Count(u64),
    Seconds(f64),
}

const FAMILIES: [Family; 7] = [
    ("tracer_calls", "Syscalls and ring operations.", |s| {
        Value::Count(s.count)
    }),
    ("tracer_call_errors", "Failed calls, EAGAIN apart.", |s| {
        Value::Count(s.errors)
    }),
    ("tracer_call_eagain", "Calls that returned EAGAIN.", |s| {
        Value::Count(s.eagain)
    }),
    ("tracer_call_seconds", "Time inside calls.", |s| {
        Value::Seconds(s.time_ns as f64 / 1e9)
    }),
    ("tracer_call_bytes", "Bytes read and written.", |s| {
        Value::Count(s.bytes)
    }),
    (
        "tracer_blocked_seconds",
        "Off-CPU time blocked inside calls.",
        |s| Value::Seconds(s.blocked_ns as f64 / 1e9),
    ),
    (
        "tracer_runqueue_seconds",
        "Run-queue delay inside calls.",
        |s| Value::Seconds(s.runq_ns as f64 / 1e9),
    ),
];

/// The labels of a series, in the order the exposition has always had; `variant` only when
/// the trace has one.
struct Labels<'a> {
    pairs: &'a [(&'static str, &'a str)],
    variant: Option<&'a str>,
}

impl EncodeLabelSet for Labels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        for pair in self.pairs {
            pair.encode(encoder.encode_label())?;
        }
        if let Some(v) = self.variant {
            ("variant", v).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

fn encode_profile(p: &Profile, mut encoder: DescriptorEncoder) -> fmt::Result {
    let variant = p.variant.as_deref();
    for (name, help, value) in FAMILIES {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for c in &p.calls {
            let kind = match c.kind {
                Kind::Syscall => "syscall",
                Kind::RingOp => "ring_op",
            };
            let pairs = [
                ("category", c.category.name()),
                ("syscall", c.name.as_str()),
                ("kind", kind),
                ("backend", p.backend.as_str()),
            ];
            let labels = Labels {
                pairs: &pairs,
                variant,
            };
            let series = family.encode_family(&labels)?;
            match value(&c.stats) {
                Value::Count(n) => ConstCounter::new(n).encode(series)?,
                Value::Seconds(s) => ConstCounter::new(s).encode(series)?,
            }
        }
    }
    let pairs = [("backend", p.backend.as_str())];
    let labels = Labels {
        pairs: &pairs,
        variant,
    };
    let gauge = ConstGauge::new(p.duration_s);
    gauge.encode(
        encoder
            .encode_descriptor(
                "tracer_duration_seconds",
                "Time traced so far.",
                None,
                gauge.metric_type(),
            )?
            .encode_family(&labels)?,
    )?;
    let dropped = ConstCounter::new(p.dropped_events);
    dropped.encode(
        encoder
            .encode_descriptor(
                "tracer_dropped_events",
                "Events the in-kernel maps could not hold.",
                None,
                dropped.metric_type(),
            )?
            .encode_family(&labels)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::category::Category;
    use crate::profile::{Meta, Record};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::process::{Command, Stdio};

    /// A profile of 3 network reads (one EAGAIN, 120 bytes, 1.5 ms inside) and one database
    /// ring send, traced for 2.5 s, under a variant name that needs escaping.
    fn profile() -> Profile {
        let mut reads = Stats::default();
        reads.record(100, 1_000_000, true);
        reads.record(20, 400_000, true);
        reads.record(-11, 100_000, true);
        reads.blocked_ns = 250_000_000;
        let mut sends = Stats::default();
        sends.record(64, 2_000, true);
        let records = [
            Record {
                pid: 7,
                process: "server".into(),
                role: "worker".into(),
                kind: Kind::Syscall,
                name: "recvfrom".into(),
                category: Category::Network,
                stats: reads,
            },
            Record {
                pid: 7,
                process: "server".into(),
                role: "worker".into(),
                kind: Kind::RingOp,
                name: "SEND".into(),
                category: Category::Database,
                stats: sends,
            },
        ];
        let meta = Meta {
            backend: "ebpf".into(),
            duration_s: 2.5,
            dropped_events: 7,
            ..Meta::default()
        };
        let mut p = Profile::build(meta, &records, Stats::default());
        p.variant = Some("ep\"oll\\".into());
        p
    }

    fn latest(p: Option<Profile>) -> Latest {
        Arc::new(Mutex::new(p))
    }

    fn exposition(p: Profile) -> String {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry(latest(Some(p)))).unwrap();
        out
    }

    /// Runs Prometheus's own parser and linter (`promtool check metrics`, from the
    /// `prometheus` package) on the exposition; panics with its complaint.
    fn promtool_accepts(text: &str) {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus; scripts/install-deps installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool rejects the exposition:\n{}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn exposition_is_valid_prometheus_text_with_every_series() {
        let text = exposition(profile());
        promtool_accepts(&text);
        let v = r#"variant="ep\"oll\\""#;
        for line in [
            "# TYPE tracer_calls_total counter".to_string(),
            format!("tracer_calls_total{{category=\"network\",syscall=\"recvfrom\",kind=\"syscall\",backend=\"ebpf\",{v}}} 3"),
            format!("tracer_calls_total{{category=\"database\",syscall=\"SEND\",kind=\"ring_op\",backend=\"ebpf\",{v}}} 1"),
            format!("tracer_call_errors_total{{category=\"network\",syscall=\"recvfrom\",kind=\"syscall\",backend=\"ebpf\",{v}}} 0"),
            format!("tracer_call_eagain_total{{category=\"network\",syscall=\"recvfrom\",kind=\"syscall\",backend=\"ebpf\",{v}}} 1"),
            format!("tracer_call_seconds_total{{category=\"network\",syscall=\"recvfrom\",kind=\"syscall\",backend=\"ebpf\",{v}}} 0.0015"),
            format!("tracer_call_bytes_total{{category=\"network\",syscall=\"recvfrom\",kind=\"syscall\",backend=\"ebpf\",{v}}} 120"),
            format!("tracer_blocked_seconds_total{{category=\"network\",syscall=\"recvfrom\",kind=\"syscall\",backend=\"ebpf\",{v}}} 0.25"),
            format!("tracer_runqueue_seconds_total{{category=\"network\",syscall=\"recvfrom\",kind=\"syscall\",backend=\"ebpf\",{v}}} 0.0"),
            "# TYPE tracer_duration_seconds gauge".to_string(),
            format!("tracer_duration_seconds{{backend=\"ebpf\",{v}}} 2.5"),
            format!("tracer_dropped_events_total{{backend=\"ebpf\",{v}}} 7"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        // Without a variant, no variant label at all (not an empty one).
        let mut p = profile();
        p.variant = None;
        let text = exposition(p);
        promtool_accepts(&text);
        assert!(
            text.contains("tracer_dropped_events_total{backend=\"ebpf\"} 7\n"),
            "{text}"
        );
        assert!(!text.contains("variant"), "{text}");
    }

    /// One HTTP/1.1 request on a new connection that the server closes after answering.
    fn get(addr: SocketAddr, method: &str, path: &str) -> (String, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        let (head, body) = reply
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {reply:?}"));
        (head.to_string(), body.to_string())
    }

    #[test]
    fn serves_metrics_over_http_to_concurrent_scrapers() {
        let latest = latest(None);
        let addr = serve("127.0.0.1:0".parse().unwrap(), latest.clone()).unwrap();

        // Before the first snapshot: a valid, empty exposition.
        let (head, body) = get(addr, "GET", "/metrics");
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert_eq!(body, "");

        *latest.lock().unwrap() = Some(profile());
        let expected = exposition(profile());
        let (head, body) = get(addr, "GET", "/metrics");
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert_eq!(body, expected);

        // Overlapping scrapes, each on its own connection, all answered in full.
        let scrapers: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..10)
                        .map(|_| get(addr, "GET", "/metrics").1)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for s in scrapers {
            for body in s.join().unwrap() {
                assert_eq!(body, expected);
            }
        }

        // One answer per connection, closed after it: a client that reads to the end of
        // the stream (without `Connection: close`) gets its answer and no hang.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(reply.ends_with(&expected), "{reply}");

        let (head, body) = get(addr, "GET", "/");
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        assert!(body.contains("/metrics"), "{body}");
        let (head, _) = get(addr, "POST", "/metrics");
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");
        let (head, body) = get(addr, "HEAD", "/metrics");
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert_eq!(body, "");

        // Garbage is refused and the exporter keeps serving.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"\x01\x02 nonsense\r\n\r\n").unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
            "{reply}"
        );
        assert_eq!(get(addr, "GET", "/metrics").1, expected);
    }
}
