//! loadgen: an HTTP/1.1 load generator for the lab.
//!
//! As fast as wrk (one hand-written epoll loop per thread, prebuilt requests, a parser that
//! does not allocate), as honest as wrk2 (open-loop schedules with latency measured from
//! the due time, an uncorrected histogram beside it), and able to find a server's capacity
//! (`sweep`). The library entry point is [`run`]; the `loadgen` binary is a thin CLI on top.
//!
//! ```no_run
//! let mut cfg = loadgen::Config::new("http://127.0.0.1:8080/plaintext");
//! cfg.connections = 64;
//! cfg.threads = 1;
//! cfg.duration_s = 5.0;
//! let report = loadgen::run(&cfg, &mut |_p: &loadgen::Progress| loadgen::Control::Continue).unwrap();
//! println!("{}", serde_json::to_string(&report).unwrap());
//! ```

pub mod cli;
pub mod config;
mod conn;
pub mod mix;
pub mod parse;
pub mod report;
pub mod schedule;
pub mod stats;
mod sweep;
mod worker;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

pub use config::{Arrivals, Config, Error, SweepConfig, MAX_NAP_S, NAP_MIN_IN_FLIGHT};
pub use mix::MixEntry;
pub use report::{Latency, Report, Second, SweepReport, SweepStep, TargetReport, SCHEMA};
pub use stats::Errors;

use config::Plan;
use report::Measured;
use stats::{Interval, Stats};
use worker::{Live, Shared};

/// What the progress callback sees, about ten times a second.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Seconds since the current run (or sweep step) started, warm-up included.
    pub elapsed_s: f64,
    /// Planned length of the run including warm-up (None with a request count).
    pub total_s: Option<f64>,
    pub warming_up: bool,
    /// Measured responses so far.
    pub requests: u64,
    /// Target request count (-n), if any.
    pub target_requests: Option<u64>,
    pub errors: u64,
    /// Responses per second over the last second or so.
    pub rps: f64,
    /// Sweep: step number (from 1) and its offered rate.
    pub step: Option<(usize, f64)>,
}

/// The progress callback's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Stop now and report what was measured (Ctrl-C).
    Stop,
}

/// Checks a configuration and that the target accepts connections, without sending load.
pub fn check(config: &Config) -> Result<(), Error> {
    config.resolve(true).map(|_| ())
}

/// Checks every field and builds the requests without connecting: the [`Error::Input`]
/// that [`run`] would give, for callers that validate a configuration long before the
/// server exists (`lab check`'s budget file).
pub fn validate(config: &Config) -> Result<(), Error> {
    config.resolve(false).map(|_| ())
}

/// Runs the load described by `config` and returns what was measured. `progress` is called
/// about every 100 ms; returning [`Control::Stop`] ends the run early (the report then has
/// `interrupted: true`). Bad input fails with [`Error::Input`] before any load is sent.
pub fn run(
    config: &Config,
    progress: &mut dyn FnMut(&Progress) -> Control,
) -> Result<Report, Error> {
    let plan = config.resolve(true)?;
    if config.sweep.is_some() {
        return sweep::run(config, progress);
    }
    run_plan(config, &plan, None, progress)
}

/// One measured run of an already-validated plan.
pub(crate) fn run_plan(
    config: &Config,
    plan: &Plan,
    step: Option<(usize, f64)>,
    progress: &mut dyn FnMut(&Progress) -> Control,
) -> Result<Report, Error> {
    let threads = plan.threads as usize;
    let mut hdr = match &config.hdr_log {
        Some(p) => Some(BufWriter::new(File::create(p).map_err(|e| {
            Error::Input(format!("cannot create {}: {e}", p.display()))
        })?)),
        None => None,
    };
    let start = worker::now_ns();
    let measure_start = start + plan.warmup.as_nanos() as u64;
    let shared = Shared {
        stop: Default::default(),
        live: (0..threads).map(|_| Live::default()).collect(),
        measure_start,
        measure_end: plan.duration.map(|d| measure_start + d.as_nanos() as u64),
    };
    let started_unix = SystemTime::now() + plan.warmup;
    let started_unix_s = started_unix
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let total_s = plan.duration.map(|d| (d + plan.warmup).as_secs_f64());
    let (tx, rx) = mpsc::channel::<Interval>();
    let share = |total: u64, i: usize| {
        total / threads as u64 + u64::from((i as u64) < total % threads as u64)
    };

    let mut serializer = V2DeflateSerializer::new();
    let mut log = match &mut hdr {
        Some(w) => Some(
            IntervalLogWriterBuilder::new()
                .add_comment("loadgen interval log: values are latencies in microseconds")
                .add_comment("untagged = corrected (from the due time in open loop); tag=uncorrected = from the send time")
                .with_start_time(started_unix)
                .with_max_value_divisor(1000.0)
                .begin_log_with(w, &mut serializer)
                .map_err(|e| Error::Io(format!("hdr log: {e}")))?,
        ),
        None => None,
    };

    let (outcomes, timeline, interrupted, total) = std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let tx = tx.clone();
            let (plan, shared) = (plan, &shared);
            let conns = share(u64::from(plan.connections), i) as usize;
            let reqs = plan.requests.map(|n| share(n, i));
            let h = std::thread::Builder::new()
                .name(format!("loadgen-{i}"))
                .spawn_scoped(s, move || worker::run(plan, shared, i, conns, reqs, tx));
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    return Err(Error::Io(format!("cannot start a worker thread: {e}")));
                }
            }
        }
        drop(tx);
        let mut pending: BTreeMap<u64, (usize, Interval)> = BTreeMap::new();
        // The run's overall histograms: the sum of every thread's seconds.
        let mut total = Interval::new(0, plan.rate.is_some());
        let mut timeline = Vec::new();
        let mut interrupted = false;
        let mut window: std::collections::VecDeque<(u64, u64)> = Default::default();
        let mut last_cb = 0u64;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(iv) => {
                    let idx = iv.index;
                    let entry = pending.entry(idx);
                    total.merge(&iv);
                    let e = match entry {
                        std::collections::btree_map::Entry::Vacant(v) => v.insert((1, iv)),
                        std::collections::btree_map::Entry::Occupied(o) => {
                            let e = o.into_mut();
                            e.1.merge(&iv);
                            e.0 += 1;
                            e
                        }
                    };
                    if e.0 == threads {
                        if let Some((_, iv)) = pending.remove(&idx) {
                            finish_second(&iv, &mut timeline, &mut log);
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let now = worker::now_ns();
            if now >= last_cb + 100_000_000 {
                last_cb = now;
                let requests: u64 = shared
                    .live
                    .iter()
                    .map(|l| l.requests.load(Ordering::Relaxed))
                    .sum();
                let errors: u64 = shared
                    .live
                    .iter()
                    .map(|l| l.errors.load(Ordering::Relaxed))
                    .sum();
                window.push_back((now, requests));
                while window.len() > 2 && now - window[0].0 > 1_000_000_000 {
                    window.pop_front();
                }
                let (t0, r0) = window[0];
                let rps = if now > t0 && requests >= r0 {
                    (requests - r0) as f64 * 1e9 / (now - t0) as f64
                } else {
                    0.0
                };
                let p = Progress {
                    elapsed_s: (now - start) as f64 / 1e9,
                    total_s,
                    warming_up: now < measure_start,
                    requests,
                    target_requests: plan.requests,
                    errors,
                    rps,
                    step,
                };
                if progress(&p) == Control::Stop && !interrupted {
                    interrupted = true;
                    shared.stop.store(true, Ordering::Relaxed);
                }
            }
        }
        for (_, (_, iv)) in std::mem::take(&mut pending) {
            finish_second(&iv, &mut timeline, &mut log);
        }
        let mut outcomes = Vec::with_capacity(threads);
        for h in handles {
            match h.join() {
                Ok(r) => outcomes.push(r?),
                Err(_) => return Err(Error::Io("a worker thread panicked".into())),
            }
        }
        Ok((outcomes, timeline, interrupted, total))
    })?;
    drop(log);
    if let Some(mut w) = hdr {
        w.flush().map_err(|e| Error::Io(format!("hdr log: {e}")))?;
    }

    let mut stats = Stats::new(plan.targets.len(), plan.rate.is_some());
    let mut finished = measure_start;
    for o in &outcomes {
        stats.merge(&o.stats);
        finished = finished.max(o.finished);
    }
    let weights: Vec<(String, u32)> = plan
        .targets
        .iter()
        .zip(
            config
                .mix
                .iter()
                .filter(|e| e.weight > 0)
                .map(|e| e.weight)
                .chain(std::iter::repeat(1)),
        )
        .map(|(t, w)| (t.name.clone(), w))
        .collect();
    Ok(Report::build(
        config,
        &weights,
        Measured {
            stats,
            latency: total.latency,
            uncorrected: total.uncorrected,
            duration_s: (finished - measure_start) as f64 / 1e9,
            started_unix_s,
            interrupted,
            timeline,
        },
    ))
}

type LogWriter<'a, 'b> = hdrhistogram::serialization::interval_log::IntervalLogWriter<
    'a,
    'b,
    BufWriter<File>,
    V2DeflateSerializer,
>;

fn finish_second(iv: &Interval, timeline: &mut Vec<Second>, log: &mut Option<LogWriter<'_, '_>>) {
    let p99 = |h: &hdrhistogram::Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
    timeline.push(Second {
        second: iv.index,
        requests: iv.requests,
        errors: iv.errors,
        p99_ms: p99(&iv.latency),
        p99_uncorrected_ms: iv.uncorrected.as_ref().map(p99),
    });
    if let Some(log) = log {
        let start = Duration::from_secs(iv.index);
        let _ = log.write_histogram(&iv.latency, start, Duration::from_secs(1), None);
        if let Some(u) = &iv.uncorrected {
            let _ = log.write_histogram(u, start, Duration::from_secs(1), Tag::new("uncorrected"));
        }
    }
}
