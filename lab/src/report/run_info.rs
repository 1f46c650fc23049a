//! The report's closing sections, about the run rather than its results: the notes (what
//! to keep in mind reading the figures: fallbacks taken, events dropped, requests failed)
//! and the configuration and environment (what was asked for, where it ran). They read
//! run.json as it is, none of the per-variant figures the result sections compute.

// The page is written element by element, each ending its own line (as in `super::html`).
#![allow(clippy::write_with_newline)]

use std::fmt::Write as _;

use super::format::{bytes, esc, int, num, secs, utc};
use crate::results::Run;

/// The "Notes" section: the environment's notes, then per variant its rounds' failed
/// requests and dropped tracer events, and what its tracer noted.
pub(super) fn notes(o: &mut String, run: &Run) {
    let mut notes: Vec<String> = run.environment.notes.iter().map(|n| esc(n)).collect();
    for v in &run.variants {
        let name = esc(&v.variant);
        let mut seen = Vec::new();
        for r in &v.rounds {
            if r.load.errors_total > 0 {
                let e = &r.load.errors;
                notes.push(format!(
                    "<strong>{name}</strong>, round {}: {} failed requests (connect refused {}, connect timeout {}, connect other {}, reset {}, timeout {}, malformed {}, bad status {}).",
                    r.round, int(r.load.errors_total), e.connect_refused, e.connect_timeout, e.connect_other, e.reset, e.timeout, e.malformed, e.status
                ));
            }
            let Some(p) = &r.profile else { continue };
            if p.approximate {
                seen.push(format!(
                    "traced with {}: the classification is approximate",
                    esc(&p.backend)
                ));
            }
            if p.dropped_events > 0 {
                notes.push(format!(
                    "<strong>{name}</strong>, round {}: the tracer dropped {} events (counts are a lower bound).",
                    r.round,
                    int(p.dropped_events)
                ));
            }
            for n in &p.notes {
                seen.push(esc(n));
            }
        }
        seen.dedup();
        for n in seen {
            let line = format!("<strong>{name}</strong>: {n}");
            if !notes.contains(&line) {
                notes.push(line);
            }
        }
    }
    o.push_str("<section id=\"notes\" class=\"panel\">\n<h2>Notes</h2>\n");
    if notes.is_empty() {
        o.push_str("<p class=\"muted\">Nothing unusual: no fallbacks, no dropped events, no failed requests.</p>\n");
    } else {
        o.push_str("<ul class=\"notes\">\n");
        for n in notes {
            let _ = writeln!(o, "<li>{n}</li>");
        }
        o.push_str("</ul>\n");
    }
    o.push_str("</section>\n");
}

/// The "Configuration and environment" section: two tables side by side.
pub(super) fn configuration(o: &mut String, run: &Run) {
    let c = &run.config;
    let e = &run.environment;
    o.push_str("<section id=\"config\" class=\"panel\">\n<h2>Configuration and environment</h2>\n<div class=\"two\">\n");
    let load = run
        .variants
        .iter()
        .flat_map(|v| v.rounds.first())
        .next()
        .map(|r| &r.load.config);
    let mut rows: Vec<(&str, String)> = vec![
        ("Variants", esc(&c.variants.join(", "))),
        ("Workload", esc(&c.workload)),
        ("Requested", format!("<code>{}</code>", esc(&c.target))),
        ("Queries per request", c.queries.to_string()),
        ("Connections", c.connections.to_string()),
        (
            "Load",
            match c.rate {
                Some(r) => format!("open loop, {} req/s offered", num(r)),
                None => "closed loop".into(),
            },
        ),
        (
            "Duration",
            format!(
                "{} measured after {} warm-up",
                secs(c.duration_s),
                secs(c.warmup_s)
            ),
        ),
        ("Rounds", c.repeat.to_string()),
        ("Server log mode", esc(&c.log)),
        ("Request logs", request_logs(run)),
        ("Tracer", esc(&c.tracer)),
        (
            "Flame graphs",
            if c.flamegraph {
                "recorded".into()
            } else {
                "off".into()
            },
        ),
    ];
    if !c.server_args.is_empty() {
        rows.push((
            "Extra server flags",
            format!("<code>{}</code>", esc(&c.server_args.join(" "))),
        ));
    }
    if let Some(t) = &run.topology {
        let hosts: Vec<String> = t
            .hosts
            .iter()
            .map(|h| format!("{} ({}, {})", h.role, h.namespace, h.addresses.join(", ")))
            .collect();
        rows.push(("Hosts", esc(&hosts.join("; "))));
        for l in &t.links {
            rows.push(("Link", esc(&crate::net::describe_link(l))));
        }
    }
    if let Some(l) = load {
        rows.push((
            "Load generator",
            format!(
                "{} threads, pipeline {}, {}, timeout {}",
                l.threads,
                l.pipeline,
                if l.keepalive {
                    "keep-alive"
                } else {
                    "a new connection per request"
                },
                secs(l.timeout_s)
            ),
        ));
    }
    kv_table(o, "Configuration", &rows);
    let rows: Vec<(&str, String)> = vec![
        ("Run", esc(&run.id)),
        ("Started", esc(&utc(run.started_unix_s))),
        ("Finished", esc(&utc(run.finished_unix_s))),
        ("Host", esc(&e.hostname)),
        ("Kernel", esc(&e.kernel)),
        ("CPU", format!("{} × {}", e.cpus, esc(&e.cpu_model))),
        ("Memory", bytes(e.memory_bytes as f64)),
        ("CPU placement", esc(&e.pinning)),
        ("Tracer backend", esc(&e.tracer_backend)),
        (
            "PostgreSQL",
            esc(e.postgres.as_deref().unwrap_or("unknown")),
        ),
        ("lab version", esc(&e.lab_version)),
        (
            "Git commit",
            e.git_commit
                .as_deref()
                .map_or("unknown".into(), |g| format!("<code>{}</code>", esc(g))),
        ),
    ];
    kv_table(o, "Environment", &rows);
    o.push_str("</div>\n</section>\n");
}

/// Each variant's request log: its size and lines, and whether the file was kept.
fn request_logs(run: &Run) -> String {
    let logs: Vec<String> = run
        .variants
        .iter()
        .filter_map(|v| {
            let log = v.request_log.as_ref()?;
            Some(format!(
                "{}: {}, {} lines{}",
                esc(&v.variant),
                bytes(log.bytes as f64),
                int(log.lines),
                log.file
                    .as_ref()
                    .map_or(String::new(), |f| format!(" (<code>{}</code>)", esc(f)))
            ))
        })
        .collect();
    if logs.is_empty() {
        return if run.schema_version < 4 {
            "not recorded (run.json before version 4)".into()
        } else {
            "none (the servers logged to standard output or not at all)".into()
        };
    }
    let kept = if run.config.keep_logs {
        "kept in the run folder"
    } else {
        "summarised in run.json, not kept (<code>lab run --keep-logs</code> keeps them)"
    };
    format!("{}<br>{kept}", logs.join("<br>"))
}

/// A titled table of names and values; the values are HTML, escaped by the caller.
fn kv_table(o: &mut String, title: &str, rows: &[(&str, String)]) {
    let _ = write!(
        o,
        "<div>\n<h3>{}</h3>\n<table class=\"kv\"><tbody>\n",
        esc(title)
    );
    for (k, v) in rows {
        let _ = writeln!(o, "<tr><th>{}</th><td>{v}</td></tr>", esc(k));
    }
    o.push_str("</tbody></table>\n</div>\n");
}
