//! CPU profiles on request: `GET /debug/pprof/profile?seconds=N` (the pprof protobuf,
//! as Go's `net/http/pprof` serves it, readable by `go tool pprof` and `pprof`) and
//! `GET /debug/pprof/flamegraph?seconds=N` (an SVG flame graph). This module owns
//! parsing those requests, sampling, and rendering; the I/O models only route to it.
//!
//! Sampling (pprof-rs: `setitimer(ITIMER_PROF)` and a SIGPROF handler that unwinds the
//! interrupted thread) runs only while a profile is being recorded, never otherwise. Every
//! sample costs the process a signal delivery (`rt_sigreturn`) and pprof's bookkeeping
//! (`prctl` for the thread name), so a profile must never overlap a window in which the
//! lab counts syscalls: `lab run --flamegraph` records it in a phase of its own.
//!
//! The request waits `seconds` for samples to accumulate. The blocking variants wait on
//! the one worker thread that serves the request; the async variants wait on tokio's
//! blocking pool ([`respond_async`]), so the event loop goes on serving. One profile at a
//! time (the timer and the signal handler are process-wide): a second request meanwhile
//! gets 409.
//!
//! This is an endpoint for a lab, not for the internet: anyone who can reach the port can
//! make the process sample itself for up to [`MAX_SECONDS`] and read its function names.
//! `server --pprof off` answers 404 instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::app::Response;

/// The longest profile one request may ask for.
pub const MAX_SECONDS: u32 = 120;

/// The length of a profile whose request names no `seconds` (Go's default is 30; a lab
/// window is shorter).
pub const DEFAULT_SECONDS: u32 = 10;

/// Samples per second per CPU. Odd, so that it does not beat with timers that tick at
/// round rates.
pub const FREQUENCY: i32 = 199;

/// The pprof protobuf (gzip is optional in the format; pprof reads it plain).
pub const PROTOBUF: &str = "application/octet-stream";
pub const SVG: &str = "image/svg+xml";

/// Libraries whose frames the SIGPROF handler does not unwind through: unwinding while
/// the interrupted thread is inside the unwinder or the allocator of libc can deadlock.
const BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];

static ENABLED: AtomicBool = AtomicBool::new(true);
static RECORDING: Mutex<()> = Mutex::new(());

/// `--pprof off`: the profile routes answer 404.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// What a profile request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Flamegraph,
}

/// A profile request: its format and its length, `None` when `seconds` is not a whole
/// number from 1 to [`MAX_SECONDS`] (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub format: Format,
    pub seconds: Option<u32>,
}

impl Request {
    /// The request for a path under `/debug/pprof/`, or `None` when it is not one.
    pub fn resolve(path: &str, query: Option<&str>) -> Option<Request> {
        let format = match path {
            "/debug/pprof/profile" => Format::Protobuf,
            "/debug/pprof/flamegraph" => Format::Flamegraph,
            _ => return None,
        };
        let value = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|pair| pair.strip_prefix("seconds="));
        let seconds = match value {
            None => Some(DEFAULT_SECONDS),
            Some(value) => value
                .parse::<u32>()
                .ok()
                .filter(|s| (1..=MAX_SECONDS).contains(s)),
        };
        Some(Request { format, seconds })
    }
}

/// Records and renders a profile, blocking the calling thread for its length.
pub fn respond_blocking(request: Request) -> Response {
    if !ENABLED.load(Ordering::Relaxed) {
        return Response::text(404, "profiling is disabled (server --pprof off)\n");
    }
    let Some(seconds) = request.seconds else {
        return Response::new(
            400,
            crate::app::TEXT_PLAIN,
            format!("seconds must be a whole number from 1 to {MAX_SECONDS}\n"),
        );
    };
    // Held for the whole recording; a poisoned lock only means an earlier recording
    // panicked, which leaves nothing behind that matters here.
    let _recording = match RECORDING.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            return Response::text(409, "a profile is already being recorded; try later\n")
        }
    };
    match record(request.format, Duration::from_secs(seconds.into())) {
        Ok(response) => response,
        Err(error) => Response::new(
            500,
            crate::app::TEXT_PLAIN,
            format!("profiling failed: {error}\n"),
        ),
    }
}

/// [`respond_blocking`] on tokio's blocking pool, so that an event loop is not held for
/// the profile's length.
pub async fn respond_async(request: Request) -> Response {
    tokio::task::spawn_blocking(move || respond_blocking(request))
        .await
        .unwrap_or_else(|_| Response::text(500, "profiling failed\n"))
}

fn record(format: Format, length: Duration) -> Result<Response, pprof::Error> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(&BLOCKLIST)
        .build()?;
    std::thread::sleep(length);
    // Sampling stops before symbolisation, so that the profile does not show itself.
    let report = {
        let unresolved = guard.report().build_unresolved()?;
        drop(guard);
        pprof::Report {
            data: unresolved
                .data
                .into_iter()
                .map(|(frames, count)| (frames.into(), count))
                .collect(),
            timing: unresolved.timing,
        }
    };
    Ok(match format {
        Format::Flamegraph => {
            let mut svg = Vec::new();
            report.flamegraph(&mut svg)?;
            Response::new(200, SVG, svg)
        }
        Format::Protobuf => {
            use pprof::protos::Message;
            Response::new(200, PROTOBUF, report.pprof()?.encode_to_vec())
        }
    })
}

/// One function's share of a profile's samples.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FunctionShare {
    pub name: String,
    /// Samples in which it was the innermost frame (CPU spent in its own code).
    pub self_samples: i64,
    /// Samples in which it was anywhere on the stack (CPU spent in it and its callees).
    pub total_samples: i64,
}

/// Where the CPU went in a pprof protobuf: the total samples and each function's self and
/// total samples, by self samples, most first. Thread-name frames are not functions and
/// are left out.
pub fn summarise(protobuf: &[u8]) -> Result<(i64, Vec<FunctionShare>), String> {
    use pprof::protos::{Message, Profile};
    let profile =
        Profile::decode(protobuf).map_err(|e| format!("not a pprof protobuf profile: {e}"))?;
    let string = |i: i64| {
        profile
            .string_table
            .get(i as usize)
            .cloned()
            .unwrap_or_default()
    };
    let functions: HashMap<u64, String> = profile
        .function
        .iter()
        .map(|f| (f.id, string(f.name)))
        .collect();
    // A location may hold several functions (inlined calls); the first line is the
    // innermost.
    let locations: HashMap<u64, Vec<&String>> = profile
        .location
        .iter()
        .map(|l| {
            let names = l
                .line
                .iter()
                .filter_map(|line| functions.get(&line.function_id))
                .collect();
            (l.id, names)
        })
        .collect();
    let mut shares: HashMap<&String, (i64, i64)> = HashMap::new();
    let mut total = 0;
    for sample in &profile.sample {
        let count = sample.value.first().copied().unwrap_or(0);
        total += count;
        let stack: Vec<&String> = sample
            .location_id
            .iter()
            .filter_map(|id| locations.get(id))
            .flatten()
            .copied()
            .collect();
        if let Some(innermost) = stack.first() {
            shares.entry(innermost).or_default().0 += count;
        }
        let mut seen: Vec<&String> = Vec::with_capacity(stack.len());
        for name in stack {
            // Recursion counts a sample once in a function's total.
            if !seen.contains(&name) {
                seen.push(name);
                shares.entry(name).or_default().1 += count;
            }
        }
    }
    let mut out: Vec<FunctionShare> = shares
        .into_iter()
        .map(|(name, (self_samples, total_samples))| FunctionShare {
            name: name.clone(),
            self_samples,
            total_samples,
        })
        .collect();
    out.sort_by(|a, b| {
        (b.self_samples, b.total_samples, &a.name).cmp(&(a.self_samples, a.total_samples, &b.name))
    });
    Ok((total, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_bounded_and_default() {
        let flame = |q| Request::resolve("/debug/pprof/flamegraph", q).map(|r| r.seconds);
        assert_eq!(flame(None), Some(Some(DEFAULT_SECONDS)));
        assert_eq!(flame(Some("seconds=3")), Some(Some(3)));
        assert_eq!(flame(Some("x=1&seconds=120")), Some(Some(120)));
        for bad in [
            "seconds=0",
            "seconds=121",
            "seconds=-1",
            "seconds=",
            "seconds=2.5",
        ] {
            assert_eq!(flame(Some(bad)), Some(None), "{bad}");
        }
        assert_eq!(
            Request::resolve("/debug/pprof/profile", None).map(|r| r.format),
            Some(Format::Protobuf)
        );
        assert_eq!(Request::resolve("/debug/pprof/heap", None), None);
    }

    #[test]
    fn a_bad_protobuf_is_an_error_not_a_panic() {
        assert!(summarise(b"\xff\xff\xff not a profile").is_err());
        assert_eq!(summarise(b"").map(|(total, _)| total), Ok(0));
    }
}
