//! Exporter mode (`--listen ADDR`): serves the profile gathered so far as Prometheus text
//! on every path (conventionally /metrics), labelled by category, call, kind and variant.
//! Counters only grow while one trace runs, so dashboards use rate().

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::profile::{Kind, Profile};

/// The latest profile, shared with the serving thread.
pub type Latest = Arc<Mutex<Option<Profile>>>;

/// Binds `addr` and serves in a background thread.
pub fn serve(addr: SocketAddr, latest: Latest) -> Result<SocketAddr> {
    let l = TcpListener::bind(addr).with_context(|| format!("binding the exporter to {addr}"))?;
    let local = l.local_addr()?;
    std::thread::Builder::new()
        .name("tracer-exporter".into())
        .spawn(move || {
            for conn in l.incoming().flatten() {
                let mut r = BufReader::new(&conn);
                let mut line = String::new();
                // Read the request head; the answer does not depend on it.
                while r.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                    line.clear();
                }
                let body = latest
                    .lock()
                    .map(|p| p.as_ref().map(metrics).unwrap_or_default())
                    .unwrap_or_default();
                let mut w = &conn;
                let _ = write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{}",
                    body.len(),
                    body
                );
            }
        })?;
    Ok(local)
}

/// A metric family: name, help, value of a row.
type Family = (
    &'static str,
    &'static str,
    fn(&crate::profile::Stats) -> f64,
);

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The Prometheus text exposition of a profile.
pub fn metrics(p: &Profile) -> String {
    let mut o = String::new();
    let variant = p
        .variant
        .as_deref()
        .map(|v| format!(",variant=\"{}\"", esc(v)))
        .unwrap_or_default();
    let families: [Family; 7] = [
        ("tracer_calls_total", "Syscalls and ring operations", |s| {
            s.count as f64
        }),
        (
            "tracer_call_errors_total",
            "Failed calls, EAGAIN apart",
            |s| s.errors as f64,
        ),
        (
            "tracer_call_eagain_total",
            "Calls that returned EAGAIN",
            |s| s.eagain as f64,
        ),
        ("tracer_call_seconds_total", "Time inside calls", |s| {
            s.time_ns as f64 / 1e9
        }),
        ("tracer_call_bytes_total", "Bytes read and written", |s| {
            s.bytes as f64
        }),
        (
            "tracer_blocked_seconds_total",
            "Off-CPU time blocked inside calls",
            |s| s.blocked_ns as f64 / 1e9,
        ),
        (
            "tracer_runqueue_seconds_total",
            "Run-queue delay inside calls",
            |s| s.runq_ns as f64 / 1e9,
        ),
    ];
    for (name, help, f) in families {
        let _ = writeln!(o, "# HELP {name} {help}.\n# TYPE {name} counter");
        for c in &p.calls {
            let kind = match c.kind {
                Kind::Syscall => "syscall",
                Kind::RingOp => "ring_op",
            };
            let _ = writeln!(
                o,
                "{name}{{category=\"{}\",syscall=\"{}\",kind=\"{kind}\",backend=\"{}\"{variant}}} {}",
                c.category.name(),
                esc(&c.name),
                p.backend,
                f(&c.stats)
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP tracer_duration_seconds Time traced so far.\n# TYPE tracer_duration_seconds gauge\n\
         tracer_duration_seconds{{backend=\"{}\"{variant}}} {}",
        p.backend, p.duration_s
    );
    let _ = writeln!(
        o,
        "# HELP tracer_dropped_events_total Events the in-kernel maps could not hold.\n\
         # TYPE tracer_dropped_events_total counter\n\
         tracer_dropped_events_total{{backend=\"{}\"{variant}}} {}",
        p.backend, p.dropped_events
    );
    o
}
