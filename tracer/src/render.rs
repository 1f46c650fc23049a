//! The terminal table of a [`Profile`]: categories first, then every call by category,
//! thread roles and process roles, per request when the request count is known (else per
//! second). Blocked time is split: `blocked` is the request path's, `idle` the waits of
//! threads that served no request at the time (docs/tracer.md).

use std::fmt::Write;

use crate::profile::{Kind, Profile, Stats};

fn dur(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2}s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2}ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1}µs", ns / 1e3)
    } else {
        format!("{ns:.0}ns")
    }
}

fn bytes(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2}GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2}MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1}kB", b / 1e3)
    } else {
        format!("{b:.0}B")
    }
}

/// Approximate median from the log2 histogram (bucket midpoint).
fn p50(s: &Stats) -> f64 {
    let total: u64 = s.hist_log2_ns.iter().sum();
    let mut acc = 0;
    for (i, n) in s.hist_log2_ns.iter().enumerate() {
        acc += n;
        if total > 0 && acc * 2 >= total {
            return 1.5 * (1u64 << i) as f64;
        }
    }
    0.0
}

pub fn table(p: &Profile) -> String {
    let mut o = String::new();
    let (div, unit) = match p.requests {
        Some(n) if n > 0 => (n as f64, "/req"),
        _ => (p.duration_s.max(1e-9), "/s"),
    };
    let _ = writeln!(
        o,
        "tracer ({}{}): pid {} `{}`, {:.1} s{}",
        p.backend,
        if p.approximate { ", approximate" } else { "" },
        p.target.pid,
        p.target.command,
        p.duration_s,
        p.requests
            .map(|n| format!(", {n} requests"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "context: database {}, listen ports {:?}, logs {}",
        p.context.database.as_deref().unwrap_or("-"),
        p.context.listen_ports,
        p.context.log_files.join(", ")
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<11} {:>10} {:>9} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "category",
        "syscalls",
        unit,
        "errors",
        "eagain",
        "time",
        "blocked",
        "idle",
        "runq",
        "bytes",
        "ring ops",
        unit
    );
    for c in p.categories.iter().chain(std::iter::once(&p.totals)) {
        let name = if std::ptr::eq(c, &p.totals) {
            "total"
        } else {
            c.category.name()
        };
        let s = &c.syscalls;
        let _ = writeln!(
            o,
            "{:<11} {:>10} {:>9.2} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9.2}",
            name,
            s.count,
            s.count as f64 / div,
            s.errors + c.ring_ops.errors,
            s.eagain + c.ring_ops.eagain,
            dur(s.time_ns as f64),
            dur((s.request_blocked_ns() + c.ring_ops.request_blocked_ns()) as f64),
            dur((s.idle_blocked_ns + c.ring_ops.idle_blocked_ns) as f64),
            dur((s.runq_ns + c.ring_ops.runq_ns) as f64),
            bytes((s.bytes + c.ring_ops.bytes) as f64),
            c.ring_ops.count,
            c.ring_ops.count as f64 / div,
        );
    }
    if p.offcpu_measured {
        let _ = writeln!(
            o,
            "(blocked: off-CPU in calls while the thread served a request; idle: while it \
             served none, e.g. waiting for work or between log flushes)"
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<11} {:<8} {:<20} {:>10} {:>9} {:>7} {:>7} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "category",
        "kind",
        "call",
        "count",
        unit,
        "errors",
        "eagain",
        "time",
        "p50",
        "blocked",
        "idle",
        "bytes",
        &format!("bytes{unit}")
    );
    for r in &p.calls {
        let s = &r.stats;
        let _ = writeln!(
            o,
            "{:<11} {:<8} {:<20} {:>10} {:>9.2} {:>7} {:>7} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10}",
            r.category.name(),
            match r.kind {
                Kind::Syscall => "syscall",
                Kind::RingOp => "ring op",
            },
            r.name,
            s.count,
            s.count as f64 / div,
            s.errors,
            s.eagain,
            dur(s.time_ns as f64),
            dur(p50(s)),
            dur(s.request_blocked_ns() as f64),
            dur(s.idle_blocked_ns as f64),
            bytes(s.bytes as f64),
            bytes(s.bytes as f64 / div),
        );
    }
    if !p.roles.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<18} {:<11} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "thread role", "category", "calls", "time", "blocked", "idle", "runq"
        );
        for r in p.roles.iter().filter(|r| r.count > 0) {
            let _ = writeln!(
                o,
                "{:<18} {:<11} {:>10} {:>10} {:>10} {:>10} {:>10}",
                r.role,
                r.category.name(),
                r.count,
                dur(r.time_ns as f64),
                dur(r.blocked_ns.saturating_sub(r.idle_blocked_ns) as f64),
                dur(r.idle_blocked_ns as f64),
                dur(r.runq_ns as f64)
            );
        }
    }
    // With children followed, say who did what, even when only the target did anything.
    if p.target.children && p.processes.iter().any(|r| r.count > 0) {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<22} {:>5} {:<11} {:>10} {:>9} {:>10} {:>10} {:>10}  calls",
            "process role", "pids", "category", "count", unit, "time", "blocked", "idle"
        );
        for r in p.processes.iter().filter(|r| r.count > 0) {
            let mut top: Vec<(&String, &u64)> = r.calls.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let calls = top
                .iter()
                .take(4)
                .map(|(n, c)| format!("{n} {c}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                o,
                "{:<22} {:>5} {:<11} {:>10} {:>9.2} {:>10} {:>10} {:>10}  {}",
                r.process,
                r.pids,
                r.category.name(),
                r.count,
                r.count as f64 / div,
                dur(r.time_ns as f64),
                dur(r.blocked_ns.saturating_sub(r.idle_blocked_ns) as f64),
                dur(r.idle_blocked_ns as f64),
                calls
            );
        }
    }
    if p.offcpu_measured {
        let _ = writeln!(
            o,
            "\noff-CPU outside syscalls: blocked {} (idle {}), run-queue delay {}",
            dur(p.outside_calls.blocked_ns as f64),
            dur(p.outside_calls.idle_blocked_ns as f64),
            dur(p.outside_calls.runq_ns as f64)
        );
    }
    if p.dropped_events > 0 {
        let _ = writeln!(
            o,
            "WARNING: {} events did not fit in the maps",
            p.dropped_events
        );
    }
    for n in &p.notes {
        let _ = writeln!(o, "note: {n}");
    }
    o
}
