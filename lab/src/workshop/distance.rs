//! The exercise on the database's distance: the same load with PostgreSQL 0, 0.5 and 2 ms
//! (round trip) away on separate hosts (`lab run --hosts separate --db-latency D`), every
//! variant in each run, then each variant's knob at the farthest distance.
//!
//! Per workload, variant and distance it reports requests/s, p99, threads and the time
//! blocked per request by category, and what Little's law says: to keep the throughput
//! X₀ it had next to the database while each request spends q round trips of R waiting
//! for it, a variant needs X₀ × q × R requests waiting on the database at once: that many
//! pooled connections (sqlx), threads (the blocking variants), or queries in flight on a
//! shared connection (pipelined).
//!
//! The checks are ratios between runs of one exercise and against the round trip the lab
//! measured on the link, never times on their own.

use std::fmt::Write as _;

use anyhow::{bail, Result};
use serde::Serialize;

use super::{Check, Settings, Setup};
use crate::net::{DelayChoice, HostArgs, Hosts};
use crate::results::{Run, VariantResult, CATEGORIES};
use crate::run_cmd::Workload;

/// A variant's knob, tried at the farthest distance.
#[derive(Debug, Clone, Copy)]
pub struct Knob {
    pub variant: &'static str,
    pub server_args: &'static [&'static str],
}

/// What the exercise runs.
#[derive(Debug, Clone, Copy)]
pub struct DistancePlan {
    /// The load: variant, connections, tracer and queries come from here.
    pub setup: Setup,
    pub variants: &'static [&'static str],
    pub workloads: &'static [Workload],
    /// Round trips between server and database (ms), nearest first.
    pub distances_ms: &'static [f64],
    /// Tried at the farthest distance on the last workload.
    pub knobs: &'static [Knob],
}

/// One line of the exercise's table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    pub variant: String,
    /// The server flags of a knob run, empty for the defaults.
    pub knob: String,
    pub distance_ms: f64,
    /// The server–database round trip measured before the load (echo median).
    pub measured_rtt_ms: f64,
    pub requests_per_s: f64,
    pub p99_ms: f64,
    pub threads: u64,
    /// Time blocked per request (µs) by category, in [`CATEGORIES`] order.
    pub blocked_us: Vec<(String, f64)>,
    /// Off-CPU time per request (µs) inside calls on the request path: blocked, plus the
    /// run-queue delay between the wake-up and running again (median over rounds). On a
    /// busy machine part of every wait for the database is spent runnable, not asleep.
    pub waiting_us: f64,
    /// Little's law: requests waiting on the database at once needed to keep the
    /// throughput this variant had at distance 0 (X₀ × queries × measured round trip).
    pub needed_in_flight: f64,
}

/// Everything the exercise measured.
#[derive(Debug, Clone, Serialize)]
pub struct DistanceReport {
    pub rows: Vec<Row>,
    pub runs: Vec<String>,
}

fn queries_of(workload: Workload, setup: &Setup) -> u32 {
    match workload {
        Workload::Queries | Workload::Updates => setup.queries,
        _ => 1,
    }
}

fn one_run(
    plan: &DistancePlan,
    workload: Workload,
    variants: &[&str],
    distance_ms: f64,
    server_args: &'static [&'static str],
    settings: &Settings,
) -> Result<Run> {
    let setup = Setup {
        workload,
        server_args,
        ..plan.setup
    };
    let mut args = setup.run_args(settings);
    args.variants = variants.iter().map(|v| v.to_string()).collect();
    // Separate hosts run the lab's own PostgreSQL on the database host, whatever
    // database the other exercises are given.
    args.database_url = None;
    args.hosts = HostArgs {
        hosts: Hosts::Separate,
        db_latency: Some(std::time::Duration::from_secs_f64(distance_ms / 1e3)),
        delay: DelayChoice::Auto,
        ..HostArgs::default()
    };
    let run = crate::run_cmd::execute(&args)?;
    if let Some(failed) = run.failed().next() {
        bail!(
            "{} ({} ms, {}) failed: {}\n{}",
            failed.variant,
            distance_ms,
            server_args.join(" "),
            failed.failure.as_deref().unwrap_or("?"),
            failed.log_tail.as_deref().unwrap_or("")
        );
    }
    // Run ids are whole seconds: the next run gets a folder of its own.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    Ok(run)
}

fn db_rtt(run: &Run) -> f64 {
    run.topology
        .as_ref()
        .and_then(|t| t.links.iter().find(|l| l.name == "server-db"))
        .map_or(0.0, |l| l.measured.echo_rtt_ms.median)
}

fn row(run: &Run, v: &VariantResult, workload: Workload, distance_ms: f64, q: u32) -> Row {
    let s = v.summary.clone().unwrap_or_default();
    Row {
        workload: workload.name().into(),
        variant: v.variant.clone(),
        knob: run.config.server_args.join(" "),
        distance_ms,
        measured_rtt_ms: db_rtt(run),
        requests_per_s: s.requests_per_s.median,
        p99_ms: s.p99_ms.median,
        threads: s.threads,
        blocked_us: CATEGORIES
            .iter()
            .map(|c| {
                let us = s
                    .categories
                    .iter()
                    .find(|x| x.category == *c)
                    .map_or(0.0, |x| x.offcpu_us_per_request);
                (c.to_string(), us)
            })
            .collect(),
        needed_in_flight: f64::from(q) * db_rtt(run) / 1e3,
        waiting_us: waiting_us(v),
    }
}

/// Per request, the median over rounds of the off-CPU time inside calls that no idle
/// thread spent: blocked on the request path plus run-queue delay.
fn waiting_us(v: &VariantResult) -> f64 {
    let mut per_round: Vec<f64> = v
        .rounds
        .iter()
        .filter_map(|r| {
            let p = r.profile.as_ref()?;
            let requests = r.load.requests.max(1) as f64;
            let ns: u64 = p
                .calls
                .iter()
                .map(|c| {
                    c.stats.blocked_ns.saturating_sub(c.stats.idle_blocked_ns) + c.stats.runq_ns
                })
                .sum();
            Some(ns as f64 / 1e3 / requests)
        })
        .collect();
    per_round.sort_by(f64::total_cmp);
    per_round.get(per_round.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the plan and checks its effects.
pub fn run(plan: &DistancePlan, settings: &Settings) -> Result<(DistanceReport, Vec<Check>)> {
    let mut rows: Vec<Row> = Vec::new();
    let mut runs = Vec::new();
    let farthest = *plan.distances_ms.last().expect("at least one distance");
    for &workload in plan.workloads {
        let q = queries_of(workload, &plan.setup);
        for &d in plan.distances_ms {
            eprintln!(
                "lab workshop: {} with the database {d} ms away",
                workload.name()
            );
            let run = one_run(plan, workload, plan.variants, d, &[], settings)?;
            for v in &run.variants {
                rows.push(row(&run, v, workload, d, q));
            }
            runs.push(run.id.clone());
        }
    }
    let last = *plan.workloads.last().expect("at least one workload");
    for knob in plan.knobs {
        eprintln!(
            "lab workshop: {} {} with the database {farthest} ms away",
            knob.variant,
            knob.server_args.join(" ")
        );
        let run = one_run(
            plan,
            last,
            &[knob.variant],
            farthest,
            knob.server_args,
            settings,
        )?;
        for v in &run.variants {
            rows.push(row(&run, v, last, farthest, queries_of(last, &plan.setup)));
        }
        runs.push(run.id.clone());
    }
    // Little's law with each variant's own X₀ (its throughput at distance 0, defaults).
    let x0 = |workload: &str, variant: &str| {
        rows.iter()
            .find(|r| {
                r.workload == workload
                    && r.variant == variant
                    && r.knob.is_empty()
                    && r.distance_ms == plan.distances_ms[0]
            })
            .map_or(0.0, |r| r.requests_per_s)
    };
    let needed: Vec<f64> = rows
        .iter()
        .map(|r| x0(&r.workload, &r.variant) * r.needed_in_flight)
        .collect();
    for (r, n) in rows.iter_mut().zip(needed) {
        r.needed_in_flight = n;
    }
    let checks = checks(plan, &rows, last, farthest);
    Ok((DistanceReport { rows, runs }, checks))
}

fn checks(plan: &DistancePlan, rows: &[Row], last: Workload, farthest: f64) -> Vec<Check> {
    let defaults = |variant: &str, d: f64| {
        rows.iter().find(|r| {
            r.workload == last.name()
                && r.variant == variant
                && r.distance_ms == d
                && r.knob.is_empty()
        })
    };
    let q = f64::from(queries_of(last, &plan.setup));
    let near_d = plan.distances_ms[0];
    let mut checks = Vec::new();
    let mut kept = Vec::new();
    for &variant in plan.variants {
        let (Some(near), Some(far)) = (defaults(variant, near_d), defaults(variant, farthest))
        else {
            continue;
        };
        kept.push((variant, far.requests_per_s / near.requests_per_s.max(1e-9)));
        let knobs: Vec<&Row> = rows
            .iter()
            .filter(|r| {
                r.workload == last.name()
                    && r.variant == variant
                    && r.distance_ms == farthest
                    && !r.knob.is_empty()
            })
            .collect();
        // A variant with a knob is one whose defaults lack the concurrency Little's law
        // asks for far away (epoll: 4 pooled connections for 20 round trips a request, at
        // most ~4 / (20 × R) requests/s): it serves a fraction of what it did next to the
        // database. (thread-pool's capacity, 32 connections / (20 × R), is above what a
        // CPU-starved machine serves at 0 ms, so its drop is not checked.)
        if !knobs.is_empty() {
            checks.push(Check {
                what: format!("{variant} /{}: req/s", last.name()),
                rule: format!("{near_d} → {farthest} ms: after ≤ before / 2"),
                before: near.requests_per_s,
                after: far.requests_per_s,
                pass: far.requests_per_s <= near.requests_per_s / 2.0,
            });
        }
        for knob in knobs {
            checks.push(Check {
                what: format!("{variant} {}: req/s", knob.knob),
                rule: format!("at {farthest} ms: knob ≥ 2 × defaults"),
                before: far.requests_per_s,
                after: knob.requests_per_s,
                pass: knob.requests_per_s >= 2.0 * far.requests_per_s,
            });
        }
        // A blocking thread is off the CPU for every round trip of its request (in the
        // database client's read or epoll_wait, whichever category the tracer gives it):
        // asleep until the answer arrives, then runnable until a CPU is free.
        if matches!(variant, "thread-pool" | "thread-per-request") {
            let floor = q * far.measured_rtt_ms * 1e3;
            checks.push(Check {
                what: format!("{variant}: µs off-CPU/request"),
                rule: format!(
                    "at {farthest} ms: blocked + run-queue ≥ 0.8 × queries × measured round trip"
                ),
                before: floor,
                after: far.waiting_us,
                pass: far.waiting_us >= 0.8 * floor,
            });
        }
    }
    // Little's law: thread-pool (a connection per worker, 128 workers) has the
    // concurrency the distance asks for, epoll's default pool (4 per CPU) has not.
    if let [(a, share_a), (b, share_b)] = kept[..] {
        checks.push(Check {
            what: format!("share of req/s kept: {b} → {a}"),
            rule: format!("{a} keeps ≥ 1.5 × the share {b} keeps"),
            before: share_b,
            after: share_a,
            pass: share_a >= 1.5 * share_b,
        });
    }
    checks
}

/// The exercise's table, for the terminal.
pub fn render(report: &DistanceReport) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{:<8} {:<34} {:>6} {:>8} {:>9} {:>8} {:>7} {:>10}",
        "workload", "variant", "away", "RTT ms", "req/s", "p99 ms", "threads", "Little L"
    );
    for c in CATEGORIES {
        let _ = write!(out, " {:>8}", short(c));
    }
    out.push_str("   (blocked µs/request)\n");
    for r in &report.rows {
        let name = if r.knob.is_empty() {
            r.variant.clone()
        } else {
            format!("{} {}", r.variant, r.knob)
        };
        let _ = write!(
            out,
            "{:<8} {:<34} {:>6} {:>8.3} {:>9.0} {:>8.2} {:>7} {:>10.1}",
            r.workload,
            name,
            format!("{} ms", r.distance_ms),
            r.measured_rtt_ms,
            r.requests_per_s,
            r.p99_ms,
            r.threads,
            r.needed_in_flight
        );
        for (_, us) in &r.blocked_us {
            let _ = write!(out, " {us:>8.0}");
        }
        out.push('\n');
    }
    out.push_str(
        "\nLittle L: requests that must wait on the database at once to keep the variant's \
         throughput at 0 ms (X₀ × queries × measured round trip): pooled connections, threads, \
         or queries in flight.\n",
    );
    out
}

fn short(category: &str) -> &str {
    match category {
        "network" => "net",
        "database" => "db",
        "logging" => "log",
        "event-loop" => "evloop",
        other => other,
    }
}
