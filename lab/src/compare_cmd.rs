//! `lab compare A B`: two runs side by side, the change per variant and per category.
//! This is the before/after of a workshop step. Blocked time is shown as the request
//! path's and, apart, the idle waits of threads that served no request (a log writer
//! sleeping between flushes is no request's wait); with `--trace-db` on both sides, the
//! database's syscalls and CPU per request too.

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::results::{DatabaseSummary, Run, CATEGORIES};
use crate::table::category;

#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// The run before (a results/<id> folder or its run.json).
    pub before: PathBuf,
    /// The run after.
    pub after: PathBuf,
    /// Write the comparison as JSON to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// One figure before and after.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Change {
    pub before: f64,
    pub after: f64,
}

impl Change {
    /// Relative change in percent (None when `before` is zero).
    pub fn percent(&self) -> Option<f64> {
        (self.before != 0.0).then(|| (self.after - self.before) / self.before * 100.0)
    }
}

/// A variant present in both runs.
#[derive(Debug, Clone, Serialize)]
pub struct VariantChange {
    pub variant: String,
    pub requests_per_s: Change,
    pub p99_ms: Change,
    pub cpu_us_per_request: Change,
    pub syscalls_per_request: Change,
    pub ring_ops_per_request: Change,
    /// (category, syscalls per request, off-CPU µs per request on the request path, idle
    /// waits µs per request).
    pub categories: Vec<(String, Change, Change, Change)>,
    /// The database's side, when both runs traced it (`--trace-db`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseChange>,
}

/// The database's side of a variant, before and after.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseChange {
    pub syscalls_per_request: Change,
    pub cpu_us_per_request: Change,
    /// (process role, syscalls per request).
    pub roles: Vec<(String, Change)>,
}

impl DatabaseChange {
    fn of(before: &DatabaseSummary, after: &DatabaseSummary) -> DatabaseChange {
        let mut names: Vec<&str> = before
            .roles
            .iter()
            .chain(&after.roles)
            .map(|r| r.role.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        let calls = |s: &DatabaseSummary, role: &str| {
            s.roles
                .iter()
                .find(|r| r.role == role)
                .map_or(0.0, |r| r.syscalls_per_request)
        };
        let mut roles: Vec<(String, Change)> = names
            .into_iter()
            .map(|role| {
                (
                    role.to_string(),
                    Change {
                        before: calls(before, role),
                        after: calls(after, role),
                    },
                )
            })
            .collect();
        roles.sort_by(|a, b| {
            b.1.before
                .max(b.1.after)
                .total_cmp(&a.1.before.max(a.1.after))
        });
        DatabaseChange {
            syscalls_per_request: Change {
                before: before.syscalls_per_request.median,
                after: after.syscalls_per_request.median,
            },
            cpu_us_per_request: Change {
                before: before.cpu_us_per_request.median,
                after: after.cpu_us_per_request.median,
            },
            roles,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub schema: &'static str,
    pub before: String,
    pub after: String,
    pub variants: Vec<VariantChange>,
}

pub fn compare(before: &Run, after: &Run) -> Comparison {
    let mut variants = Vec::new();
    for b in &before.variants {
        let Some(a) = after.variants.iter().find(|a| a.variant == b.variant) else {
            continue;
        };
        let (Some(sb), Some(sa)) = (&b.summary, &a.summary) else {
            continue;
        };
        let change = |f: &dyn Fn(&crate::results::Summary) -> f64| Change {
            before: f(sb),
            after: f(sa),
        };
        variants.push(VariantChange {
            variant: b.variant.clone(),
            requests_per_s: change(&|s| s.requests_per_s.median),
            p99_ms: change(&|s| s.p99_ms.median),
            cpu_us_per_request: change(&|s| s.cpu_us_per_request.median),
            syscalls_per_request: change(&|s| s.syscalls_per_request.map_or(0.0, |x| x.median)),
            ring_ops_per_request: change(&|s| s.ring_ops_per_request.map_or(0.0, |x| x.median)),
            categories: CATEGORIES
                .iter()
                .map(|name| {
                    (
                        name.to_string(),
                        change(&|s| category(s, name).0 + category(s, name).1),
                        change(&|s| category(s, name).2),
                        change(&|s| category(s, name).3),
                    )
                })
                .collect(),
            database: sb
                .database
                .as_ref()
                .zip(sa.database.as_ref())
                .map(|(b, a)| DatabaseChange::of(b, a)),
        });
    }
    Comparison {
        schema: "syscall-lab/compare/2",
        before: before.id.clone(),
        after: after.id.clone(),
        variants,
    }
}

pub fn render(c: &Comparison) -> String {
    let mut out = format!("before {} → after {}\n", c.before, c.after);
    let fmt = |x: &Change, digits: usize| {
        let pct = x
            .percent()
            .map_or(String::from("   n/a"), |p| format!("{p:+5.0}%"));
        format!("{:>9.*} → {:<9.*} {pct}", digits, x.before, digits, x.after)
    };
    for v in &c.variants {
        let _ = writeln!(out, "\n{}", v.variant);
        let _ = writeln!(out, "  {:<26} {}", "requests/s", fmt(&v.requests_per_s, 0));
        let _ = writeln!(out, "  {:<26} {}", "p99 ms", fmt(&v.p99_ms, 2));
        let _ = writeln!(
            out,
            "  {:<26} {}",
            "CPU µs/request",
            fmt(&v.cpu_us_per_request, 1)
        );
        let _ = writeln!(
            out,
            "  {:<26} {}",
            "syscalls/request",
            fmt(&v.syscalls_per_request, 2)
        );
        let _ = writeln!(
            out,
            "  {:<26} {}",
            "ring ops/request",
            fmt(&v.ring_ops_per_request, 2)
        );
        let zero = |c: &Change| c.before == 0.0 && c.after == 0.0;
        let mut idle_lines = Vec::new();
        for (name, calls, offcpu, idle) in &v.categories {
            if !zero(idle) {
                idle_lines.push(format!(
                    "  {:<26} {}",
                    format!("{name} idle µs/request"),
                    fmt(idle, 1)
                ));
            }
            if zero(calls) && zero(offcpu) {
                continue;
            }
            let _ = writeln!(
                out,
                "  {:<26} {}",
                format!("{name} calls/request"),
                fmt(calls, 2)
            );
            let _ = writeln!(
                out,
                "  {:<26} {}",
                format!("{name} off-CPU µs/request"),
                fmt(offcpu, 1)
            );
        }
        if !idle_lines.is_empty() {
            let _ = writeln!(
                out,
                "  idle waits (threads serving no request: idle workers, the log writer \
                 between flushes; no request waited):"
            );
            for line in idle_lines {
                let _ = writeln!(out, "{line}");
            }
        }
        if let Some(d) = &v.database {
            let _ = writeln!(
                out,
                "  the database (--trace-db), per request of the server:"
            );
            let _ = writeln!(
                out,
                "  {:<26} {}",
                "db syscalls/request",
                fmt(&d.syscalls_per_request, 2)
            );
            let _ = writeln!(
                out,
                "  {:<26} {}",
                "db CPU µs/request",
                fmt(&d.cpu_us_per_request, 1)
            );
            for (role, calls) in d.roles.iter().filter(|(_, c)| !zero(c)).take(4) {
                let _ = writeln!(
                    out,
                    "  {:<26} {}",
                    format!("db {role} calls/req"),
                    fmt(calls, 2)
                );
            }
        }
    }
    if c.variants.is_empty() {
        out.push_str("no variant completed in both runs\n");
    }
    out
}

pub fn run(args: CompareArgs) -> Result<ExitCode> {
    let comparison = compare(&Run::load(&args.before)?, &Run::load(&args.after)?);
    match &args.json {
        Some(path) if path.as_os_str() == "-" => {
            println!("{}", serde_json::to_string_pretty(&comparison)?)
        }
        Some(path) => std::fs::write(path, serde_json::to_string_pretty(&comparison)?)?,
        None => {}
    }
    if args.json.as_deref().map(|p| p.as_os_str()) != Some("-".as_ref()) {
        print!("{}", render(&comparison));
    }
    Ok(ExitCode::SUCCESS)
}
