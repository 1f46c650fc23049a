//! The terminal tables of `lab run`, `lab report`, `lab compare` and `lab check`.

use std::fmt::Write;

use crate::results::{CategorySummary, Run, Summary, CATEGORIES};

/// Short column headings for the categories.
const SHORT: [&str; 8] = [
    "net", "db", "log", "evloop", "sync", "threads", "mem", "other",
];

/// Tables: throughput and process figures; syscalls per request by category; off-CPU
/// time per request by category on the request path, and apart the idle waits of threads
/// that served no request; with `--trace-db`, the database's side.
pub fn render(run: &Run) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} · workload {} ({}) · {} connections · {:.0} s × {} · tracer {} · log {}",
        run.id,
        run.config.workload,
        run.config.target,
        run.config.connections,
        run.config.duration_s,
        run.config.repeat,
        run.config.tracer,
        run.config.log
    );
    if let Some(t) = &run.topology {
        let _ = writeln!(out, "separate hosts ({}):", t.subnet);
        for link in &t.links {
            let _ = writeln!(out, "  {}", crate::net::describe_link(link));
        }
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:>10} {:>9} {:>9} {:>10} {:>11} {:>9} {:>8} {:>8}",
        "variant",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "CPU µs/req",
        "ctxsw/req",
        "threads",
        "RSS MiB"
    );
    for v in &run.variants {
        match (&v.summary, v.ok) {
            (Some(s), true) => {
                let _ = writeln!(
                    out,
                    "{:<20} {:>10.0} {:>9.2} {:>9.2} {:>10} {:>11.1} {:>9.2} {:>8} {:>8.1}",
                    v.variant,
                    s.requests_per_s.median,
                    s.p50_ms.median,
                    s.p99_ms.median,
                    s.errors,
                    s.cpu_us_per_request.median,
                    s.context_switches_per_request.median,
                    s.threads,
                    s.peak_rss_bytes as f64 / (1024.0 * 1024.0)
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "{:<20} FAILED: {}",
                    v.variant,
                    v.failure.as_deref().unwrap_or("no round completed")
                );
            }
        }
    }
    let _ = writeln!(out, "\n{}", crate::report::BEST_SETUP);
    if run.config.tracer == "off" {
        return out;
    }
    let _ = write!(
        out,
        "\nsyscalls per request\n{:<20} {:>7} {:>8}",
        "variant", "total", "ring ops"
    );
    for short in SHORT {
        let _ = write!(out, " {short:>7}");
    }
    out.push('\n');
    for (v, s) in run
        .variants
        .iter()
        .filter_map(|v| v.summary.as_ref().map(|s| (v, s)))
    {
        let ring = s.ring_ops_per_request.map_or(0.0, |r| r.median);
        let total = s.syscalls_per_request.map_or(0.0, |x| x.median);
        let _ = write!(
            out,
            "{:<20} {:>7} {:>8}",
            v.variant,
            figure(total),
            figure(ring)
        );
        for name in CATEGORIES {
            let _ = write!(out, " {:>7}", figure(category(s, name).0));
        }
        out.push('\n');
    }
    offcpu_table(
        &mut out,
        "off-CPU µs per request on the request path (blocked inside calls while serving a request)",
        run,
        &|c| c.offcpu_us_per_request,
    );
    offcpu_table(
        &mut out,
        "idle waits µs per request (blocked while serving no request: idle workers, the log \
         writer between flushes, an event loop with nothing in flight; no request waited)",
        run,
        &|c| c.idle_offcpu_us_per_request,
    );
    database_table(&mut out, run);
    for note in &run.environment.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

/// A per-request figure with the digits that matter: buffered logging's 0.003 writes per
/// request must not print as 0.00.
pub fn figure(value: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    match value {
        v if v.abs() < 0.01 => format!("{v:.4}"),
        v if v.abs() < 100.0 => format!("{v:.2}"),
        v => format!("{v:.0}"),
    }
}

/// Blocked µs per request by category, one row per variant (`of` picks the request
/// path's or the idle waits).
fn offcpu_table(out: &mut String, title: &str, run: &Run, of: &dyn Fn(&CategorySummary) -> f64) {
    let _ = write!(out, "\n{title}\n{:<20} {:>7}", "variant", "total");
    for short in SHORT {
        let _ = write!(out, " {short:>7}");
    }
    out.push('\n');
    for (v, s) in run
        .variants
        .iter()
        .filter_map(|v| v.summary.as_ref().map(|s| (v, s)))
    {
        let total: f64 = s.categories.iter().map(of).sum();
        let _ = write!(out, "{:<20} {:>7.1}", v.variant, total);
        for name in CATEGORIES {
            let c = s.categories.iter().find(|c| c.category == name);
            let _ = write!(out, " {:>7.1}", c.map_or(0.0, of));
        }
        out.push('\n');
    }
}

/// `--trace-db`: what the database did per request of each variant: its syscalls by
/// category (its `network` is its clients: the server's database connections), its CPU,
/// and its busiest process roles.
fn database_table(out: &mut String, run: &Run) {
    let rows: Vec<_> = run
        .variants
        .iter()
        .filter_map(|v| Some((v, v.summary.as_ref()?.database.as_ref()?)))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "\nthe database per request (--trace-db: postmaster and backends; its net is its \
         clients)\n{:<20} {:>7} {:>7}",
        "variant", "CPU µs", "calls"
    );
    for short in SHORT {
        let _ = write!(out, " {short:>7}");
    }
    let _ = writeln!(out, " {:>7}  by process role (calls/req)", "idle µs");
    for (v, d) in rows {
        let _ = write!(
            out,
            "{:<20} {:>7.1} {:>7}",
            v.variant,
            d.cpu_us_per_request.median,
            figure(d.syscalls_per_request.median)
        );
        for name in CATEGORIES {
            let _ = write!(out, " {:>7}", figure(d.calls_in(name)));
        }
        let idle = d.idle_us();
        let roles: Vec<String> = d
            .roles
            .iter()
            .filter(|r| r.syscalls_per_request > 0.0)
            .take(4)
            .map(|r| format!("{} {}", r.role, figure(r.syscalls_per_request)))
            .collect();
        let _ = writeln!(out, " {idle:>7.1}  {}", roles.join(", "));
    }
}

/// (syscalls, ring ops, off-CPU µs on the request path, idle waits µs) per request of a
/// category.
pub fn category(summary: &Summary, name: &str) -> (f64, f64, f64, f64) {
    summary
        .categories
        .iter()
        .find(|c| c.category == name)
        .map_or((0.0, 0.0, 0.0, 0.0), |c| {
            (
                c.syscalls_per_request,
                c.ring_ops_per_request,
                c.offcpu_us_per_request,
                c.idle_offcpu_us_per_request,
            )
        })
}

/// `lab check`'s table: one row per limit of each endpoint, then what failed (endpoint,
/// limit, excess and the calls behind it) and what could not be measured.
pub fn render_check(report: &crate::results::check::CheckReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lab check · budget {} · tracer {}",
        report.budget.as_deref().unwrap_or("-"),
        report.tracer
    );
    let server_w = report
        .servers
        .iter()
        .map(|s| s.server.len())
        .chain([6])
        .max()
        .unwrap_or(6);
    let endpoint_w = report
        .servers
        .iter()
        .flat_map(|s| s.endpoints.iter().map(|e| e.name.chars().count()))
        .chain([8])
        .max()
        .unwrap_or(8);
    let _ = writeln!(
        out,
        "\n{:<server_w$}  {:<endpoint_w$}  {:<22} {:>9} {:>9} {:>9}  result",
        "server", "endpoint", "limit (per request)", "allowed", "measured", "margin"
    );
    let mut failures = Vec::new();
    let mut errors = Vec::new();
    let (mut limits, mut endpoints) = (0, 0);
    for s in &report.servers {
        for e in &s.endpoints {
            endpoints += 1;
            if let Some(error) = &e.error {
                let _ = writeln!(
                    out,
                    "{:<server_w$}  {:<endpoint_w$}  {:<22} {:>9} {:>9} {:>9}  ERROR",
                    s.server, e.name, "-", "-", "-", "-"
                );
                errors.push(format!("ERROR {} · {}: {error}", s.server, e.name));
                continue;
            }
            for l in &e.limits {
                limits += 1;
                let margin = if l.margin >= 0.0 {
                    format!("+{}", figure(l.margin))
                } else {
                    figure(l.margin)
                };
                let _ = writeln!(
                    out,
                    "{:<server_w$}  {:<endpoint_w$}  {:<22} {:>9} {:>9} {:>9}  {}",
                    s.server,
                    e.name,
                    l.metric.label(),
                    figure(l.allowed),
                    figure(l.measured),
                    margin,
                    if l.passed { "pass" } else { "FAIL" }
                );
                if !l.passed {
                    let behind: Vec<String> = e
                        .calls_behind(&l.metric)
                        .iter()
                        .map(|c| c.describe())
                        .collect();
                    failures.push(format!(
                        "FAIL {} · {} · {}{}\n     calls: {}",
                        s.server,
                        e.name,
                        l.describe(),
                        l.line
                            .map_or(String::new(), |n| format!(" [budget line {n}]")),
                        behind.join(", ")
                    ));
                }
            }
        }
        if let Some(error) = &s.error {
            errors.push(format!("ERROR {}: could not check: {error}", s.server));
        }
    }
    for line in failures.iter().chain(&errors) {
        let _ = writeln!(out, "\n{line}");
    }
    let failed = failures.len();
    let _ = writeln!(
        out,
        "\n{} limits on {} endpoints: {}",
        limits,
        endpoints,
        match (failed, errors.len()) {
            (0, 0) => "all held".to_string(),
            (f, 0) => format!("{f} exceeded"),
            (f, e) => format!("{f} exceeded, {e} not measured"),
        }
    );
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

/// `lab check --record`'s table: what each endpoint cost per request, over its windows.
pub fn render_recorded(report: &crate::results::check::CheckReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<26} {:>8} {:>9} {:>15}  by category (median window)",
        "server", "endpoint", "windows", "req/s", "syscalls/req"
    );
    for s in &report.servers {
        for e in &s.endpoints {
            let values: Vec<f64> = e.windows.iter().map(|w| w.syscalls).collect();
            let spread = crate::results::Spread::of(&values);
            let median = e.windows.iter().min_by(|a, b| {
                (a.syscalls - spread.median)
                    .abs()
                    .total_cmp(&(b.syscalls - spread.median).abs())
            });
            let categories = median.map_or(String::new(), |w| {
                CATEGORIES
                    .iter()
                    .zip(SHORT)
                    .filter_map(|(c, short)| {
                        let v = w.categories.get(*c).copied().unwrap_or(0.0);
                        (v >= 0.005).then(|| format!("{short} {}", figure(v)))
                    })
                    .chain((w.ring_ops > 0.0).then(|| format!("ring {}", figure(w.ring_ops))))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            let _ = writeln!(
                out,
                "{:<20} {:<26} {:>8} {:>9.0} {:>15}  {categories}",
                s.server,
                e.name,
                e.windows.len(),
                e.requests_per_s,
                format!("{}-{}", figure(spread.min), figure(spread.max)),
            );
        }
    }
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}
