//! What a worker thread measures: latency histograms (overall and per target, corrected
//! and uncorrected), status and error counts, bytes, connects, and the per-second interval
//! that is handed to the aggregator. Everything is counters and fixed-size histograms, so
//! memory does not grow with the number of requests; threads merge at the end.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Lowest and highest recordable latency, in microseconds (1 µs .. 60 s), 3 significant digits.
pub const LOWEST_US: u64 = 1;
pub const HIGHEST_US: u64 = 60_000_000;
pub const SIGFIG: u8 = 3;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIG).expect("valid histogram bounds")
}

/// Error kinds, counted per failed request (connect errors per failed connect attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server refused the connection (ECONNREFUSED).
    ConnectRefused,
    /// Connecting took longer than the request timeout.
    ConnectTimeout,
    /// Any other connect failure (e.g. EADDRNOTAVAIL: out of local ports).
    ConnectOther,
    /// Connection reset, or closed by the server with a response incomplete or requests
    /// outstanding; one per request lost.
    Reset,
    /// No complete response within the timeout.
    Timeout,
    /// The response is not valid HTTP/1.x or its framing is broken.
    Malformed,
    /// Complete response whose status is not 2xx (or not one of `--expect-status`).
    Status,
}

pub const N_KINDS: usize = 7;

/// Error counts by kind (the JSON form).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Errors {
    pub connect_refused: u64,
    pub connect_timeout: u64,
    pub connect_other: u64,
    pub reset: u64,
    pub timeout: u64,
    pub malformed: u64,
    /// Non-2xx responses, or responses outside `--expect-status` when it is given.
    pub status: u64,
}

impl Errors {
    pub fn from_counts(c: &[u64; N_KINDS]) -> Errors {
        Errors {
            connect_refused: c[0],
            connect_timeout: c[1],
            connect_other: c[2],
            reset: c[3],
            timeout: c[4],
            malformed: c[5],
            status: c[6],
        }
    }

    pub fn total(&self) -> u64 {
        self.connect_refused
            + self.connect_timeout
            + self.connect_other
            + self.reset
            + self.timeout
            + self.malformed
            + self.status
    }
}

/// One target's results on one thread. With a single target its latency is the overall
/// latency, so the per-target histograms are only kept for mixes.
#[derive(Debug, Clone)]
pub struct TargetStats {
    pub latency: Option<Histogram<u64>>,
    pub uncorrected: Option<Histogram<u64>>,
    pub requests: u64,
    pub errors: u64,
    /// (status, count), few distinct codes so a short list beats a map.
    pub statuses: Vec<(u16, u64)>,
}

/// A second's worth of measurements from one thread. The run's overall histograms are the
/// sum of these, so a response is recorded once, not once per histogram.
#[derive(Debug)]
pub struct Interval {
    pub index: u64,
    pub latency: Histogram<u64>,
    pub uncorrected: Option<Histogram<u64>>,
    pub requests: u64,
    pub errors: u64,
}

impl Interval {
    pub fn new(index: u64, open: bool) -> Interval {
        Interval {
            index,
            latency: histogram(),
            uncorrected: open.then(histogram),
            requests: 0,
            errors: 0,
        }
    }

    pub fn merge(&mut self, b: &Interval) {
        add(&mut self.latency, &b.latency);
        add_opt(&mut self.uncorrected, &b.uncorrected);
        self.requests += b.requests;
        self.errors += b.errors;
    }
}

/// All counters of one worker thread (latencies go into the current [`Interval`]).
#[derive(Debug)]
pub struct Stats {
    pub open: bool,
    pub targets: Vec<TargetStats>,
    pub requests: u64,
    pub errors: [u64; N_KINDS],
    pub sent: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub connects: u64,
    pub reconnects: u64,
    /// Closed loop: naps taken instead of waiting to be woken (see `Config::nap_s`).
    pub naps: u64,
    /// Open loop: requests that fell due during the measurement but were never sent.
    pub backlog: u64,
    /// Requests still without an answer when the run was interrupted.
    pub unfinished: u64,
    iv: Interval,
}

#[inline]
fn to_us(ns: u64) -> u64 {
    (ns / 1000).clamp(LOWEST_US, HIGHEST_US)
}

impl Stats {
    /// `open`: keep uncorrected histograms beside the corrected ones.
    pub fn new(targets: usize, open: bool) -> Stats {
        let mix = targets > 1;
        Stats {
            open,
            targets: (0..targets)
                .map(|_| TargetStats {
                    latency: mix.then(histogram),
                    uncorrected: (mix && open).then(histogram),
                    requests: 0,
                    errors: 0,
                    statuses: Vec::new(),
                })
                .collect(),
            requests: 0,
            errors: [0; N_KINDS],
            sent: 0,
            bytes_sent: 0,
            bytes_received: 0,
            connects: 0,
            reconnects: 0,
            naps: 0,
            backlog: 0,
            unfinished: 0,
            iv: Interval::new(0, open),
        }
    }

    /// Forgets everything (end of warm-up).
    pub fn reset(&mut self) {
        *self = Stats::new(self.targets.len(), self.open);
    }

    /// A complete response. `corrected_ns` is measured from the due time (open loop) or the
    /// send time (closed loop); `uncorrected_ns` always from the send time.
    #[inline]
    pub fn response(
        &mut self,
        target: usize,
        status: u16,
        corrected_ns: u64,
        uncorrected_ns: u64,
        ok: bool,
    ) {
        let c = to_us(corrected_ns);
        self.iv.latency.saturating_record(c);
        let t = &mut self.targets[target];
        if let Some(h) = &mut t.latency {
            h.saturating_record(c);
        }
        if let Some(h) = &mut self.iv.uncorrected {
            let u = to_us(uncorrected_ns);
            h.saturating_record(u);
            if let Some(h) = &mut t.uncorrected {
                h.saturating_record(u);
            }
        }
        t.requests += 1;
        self.requests += 1;
        self.iv.requests += 1;
        match t.statuses.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => t.statuses.push((status, 1)),
        }
        if !ok {
            t.errors += 1;
            self.error(ErrorKind::Status);
        }
    }

    /// A failed request or connect attempt; `target` when known.
    #[inline]
    pub fn failure(&mut self, kind: ErrorKind, target: Option<usize>) {
        if let Some(t) = target {
            self.targets[t].errors += 1;
        }
        self.error(kind);
    }

    #[inline]
    fn error(&mut self, kind: ErrorKind) {
        self.errors[kind as usize] += 1;
        self.iv.errors += 1;
    }

    /// Hands over the current second (numbered `index`) and starts the next one.
    pub fn take_interval(&mut self, index: u64) -> Interval {
        let mut out = std::mem::replace(&mut self.iv, Interval::new(index + 1, self.open));
        out.index = index;
        out
    }

    /// Adds another thread's counters.
    pub fn merge(&mut self, o: &Stats) {
        for (t, ot) in self.targets.iter_mut().zip(&o.targets) {
            add_opt(&mut t.latency, &ot.latency);
            add_opt(&mut t.uncorrected, &ot.uncorrected);
            t.requests += ot.requests;
            t.errors += ot.errors;
            for &(s, n) in &ot.statuses {
                match t.statuses.iter_mut().find(|(x, _)| *x == s) {
                    Some((_, m)) => *m += n,
                    None => t.statuses.push((s, n)),
                }
            }
        }
        for (a, b) in self.errors.iter_mut().zip(o.errors) {
            *a += b;
        }
        self.requests += o.requests;
        self.sent += o.sent;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.connects += o.connects;
        self.reconnects += o.reconnects;
        self.naps += o.naps;
        self.backlog += o.backlog;
        self.unfinished += o.unfinished;
    }
}

/// Adds `b` into `a` (same bounds, so this cannot fail).
pub fn add(a: &mut Histogram<u64>, b: &Histogram<u64>) {
    a.add(b).expect("histograms share bounds");
}

pub fn add_opt(a: &mut Option<Histogram<u64>>, b: &Option<Histogram<u64>>) {
    if let (Some(a), Some(b)) = (a, b) {
        add(a, b);
    }
}
