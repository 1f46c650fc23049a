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

/// Libraries in which an interrupted thread is not unwound (its sample is dropped): the
/// unwinder itself, which must not be re-entered from a signal handler. libc is *not* on
/// the list, although pprof-rs suggests it: a thread in a system call is interrupted at
/// the `syscall` instruction inside libc's wrapper, and dropping those samples would hide
/// the CPU time the kernel spends on `send`, `recv` and `epoll_wait`, what this lab is
/// about. The unwinder takes no lock a thread inside libc could hold against it
/// (`dl_iterate_phdr`'s lock is recursive, and the handler does not allocate).
const BLOCKLIST: [&str; 1] = ["libgcc"];

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
    if executable_replaced() {
        // Symbols are read from the file at the executable's path, which now holds
        // another build: every frame of the server would come out unnamed or misnamed.
        return Ok(Response::text(
            503,
            "the server's executable was replaced on disk since it started (rebuilt?); restart it to get named frames\n",
        ));
    }
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

/// Whether the file this process was started from has been deleted or replaced (a
/// rebuild while it runs): the kernel then marks the `/proc/self/exe` link `(deleted)`.
fn executable_replaced() -> bool {
    std::fs::read_link("/proc/self/exe")
        .is_ok_and(|path| path.to_string_lossy().ends_with(" (deleted)"))
}

/// One function's share of a profile's samples.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FunctionShare {
    pub name: String,
    /// Its source file, as the line tables name it (empty when unknown). Release builds
    /// keep line tables only, so inlined functions have short names (`{async_fn#0}`,
    /// `poll_read<...>`) and the file says whose they are.
    #[serde(default)]
    pub file: String,
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
    let functions: HashMap<u64, (String, String)> = profile
        .function
        .iter()
        .map(|f| (f.id, (string(f.name), string(f.filename))))
        .collect();
    // A location may hold several functions (inlined calls); the first line is the
    // innermost.
    let locations: HashMap<u64, Vec<&(String, String)>> = profile
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
    let mut shares: HashMap<&(String, String), (i64, i64)> = HashMap::new();
    let mut total = 0;
    for sample in &profile.sample {
        let count = sample.value.first().copied().unwrap_or(0);
        total += count;
        let stack: Vec<&(String, String)> = sample
            .location_id
            .iter()
            .filter_map(|id| locations.get(id))
            .flatten()
            .copied()
            .collect();
        if let Some(innermost) = stack.first() {
            shares.entry(innermost).or_default().0 += count;
        }
        let mut seen: Vec<&(String, String)> = Vec::with_capacity(stack.len());
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
        .map(
            |((name, file), (self_samples, total_samples))| FunctionShare {
                name: name.clone(),
                file: file.clone(),
                self_samples,
                total_samples,
            },
        )
        .collect();
    out.sort_by(|a, b| {
        (b.self_samples, b.total_samples, &a.name).cmp(&(a.self_samples, a.total_samples, &b.name))
    });
    Ok((total, out))
}

/// The part of the server a function belongs to, from its name, for a summary of where
/// the CPU goes: system calls (a libc wrapper as the innermost frame: the sample landed
/// while the kernel worked for the thread, or just around it), the allocator, memory
/// copies, HTTP parsing and framing, hyper, the database driver, the async runtime,
/// rendering, logging, the rest of the server, the standard library, other.
pub fn area(function: &str, file: &str) -> &'static str {
    // The crate a function's source belongs to says more than a short inlined name.
    const FILES: [(&str, &str); 17] = [
        ("/httparse-", "HTTP parsing and framing"),
        ("servers/src/http1.rs", "HTTP parsing and framing"),
        ("/hyper-", "hyper (HTTP)"),
        ("/http-1.", "hyper (HTTP)"),
        ("/sqlx-", "database driver"),
        ("/tokio-postgres-", "database driver"),
        ("/postgres-", "database driver"),
        ("servers/src/database/", "database driver"),
        ("/tokio-", "async runtime"),
        ("/io-uring-", "async runtime"),
        ("/mio-", "async runtime"),
        ("/futures-", "async runtime"),
        ("/serde_json-", "rendering (JSON, HTML)"),
        ("servers/src/render.rs", "rendering (JSON, HTML)"),
        ("servers/src/logging.rs", "request log"),
        ("/tracing-", "request log"),
        ("servers/src/", "the server's own code"),
    ];
    let by_name = area_by_name(function);
    if by_name != "other" && by_name != "Rust standard library" {
        return by_name;
    }
    FILES
        .iter()
        .find(|(part, _)| file.contains(part))
        .map_or(by_name, |(_, area)| area)
}

fn area_by_name(function: &str) -> &'static str {
    let name = function.trim_start_matches('<');
    let base = name
        .trim_start_matches('_')
        .trim_start_matches("GI_")
        .trim_start_matches('_')
        .trim_start_matches("libc_");
    const SYSCALLS: [&str; 26] = [
        "send",
        "sendto",
        "sendmsg",
        "recv",
        "recvfrom",
        "recvmsg",
        "read",
        "write",
        "writev",
        "readv",
        "epoll_wait",
        "epoll_pwait",
        "epoll_ctl",
        "accept",
        "accept4",
        "close",
        "syscall",
        "io_uring_enter",
        "futex_abstimed_wait_common",
        "lll_lock_wait",
        "clock_nanosleep",
        "nanosleep",
        "poll",
        "sched_yield",
        "shutdown",
        "fdatasync",
    ];
    const AREAS: [(&str, &str); 18] = [
        ("httparse::", "HTTP parsing and framing"),
        ("servers::http1", "HTTP parsing and framing"),
        ("hyper::", "hyper (HTTP)"),
        ("hyper_util::", "hyper (HTTP)"),
        ("sqlx", "database driver"),
        ("postgres", "database driver"),
        ("tokio_postgres", "database driver"),
        ("tokio_uring::", "async runtime"),
        ("io_uring::", "async runtime"),
        ("tokio::", "async runtime"),
        ("mio::", "async runtime"),
        ("futures", "async runtime"),
        ("serde_json", "rendering (JSON, HTML)"),
        ("servers::render", "rendering (JSON, HTML)"),
        ("servers::logging", "request log"),
        ("tracing", "request log"),
        ("servers::", "the server's own code"),
        ("std::", "Rust standard library"),
    ];
    if SYSCALLS.contains(&base) || base.starts_with("syscall") {
        "system calls (kernel)"
    } else if [
        "malloc",
        "int_malloc",
        "int_free",
        "free",
        "cfree",
        "realloc",
        "calloc",
    ]
    .contains(&base)
        || base.starts_with("malloc_")
        || base.starts_with("tcache")
        || base.starts_with("unlink_chunk")
    {
        "allocator (malloc, free)"
    } else if base.starts_with("memcpy")
        || base.starts_with("memmove")
        || base.starts_with("memset")
    {
        "memory copies"
    } else if let Some((_, area)) = AREAS.iter().find(|(prefix, _)| name.starts_with(prefix)) {
        area
    } else if name.starts_with("core::") || name.starts_with("alloc::") {
        "Rust standard library"
    } else {
        "other"
    }
}

impl FunctionShare {
    /// The name, with the source file's last components when the name alone does not say
    /// whose function it is (no `::` in it).
    pub fn label(&self) -> String {
        if self.name.contains("::") || self.file.is_empty() {
            return self.name.clone();
        }
        let parts: Vec<&str> = self.file.rsplit('/').take(3).collect();
        let short: Vec<&str> = parts.into_iter().rev().collect();
        format!("{} ({})", self.name, short.join("/"))
    }
}

/// Self samples per [`area`], most first.
pub fn areas(functions: &[FunctionShare]) -> Vec<(String, i64)> {
    let mut by_area: HashMap<&'static str, i64> = HashMap::new();
    for f in functions {
        *by_area.entry(area(&f.name, &f.file)).or_default() += f.self_samples;
    }
    let mut out: Vec<(String, i64)> = by_area
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(a, n)| (a.to_string(), n))
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
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
    fn functions_fall_into_areas() {
        let area = |name| area(name, "");
        assert_eq!(area("__libc_send"), "system calls (kernel)");
        assert_eq!(area("__GI___libc_write"), "system calls (kernel)");
        assert_eq!(area("epoll_wait"), "system calls (kernel)");
        assert_eq!(area("_int_malloc"), "allocator (malloc, free)");
        assert_eq!(area("__memmove_avx_unaligned_erms"), "memory copies");
        assert_eq!(
            area("httparse::parse_headers_iter"),
            "HTTP parsing and framing"
        );
        assert_eq!(
            area("<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::parse"),
            "hyper (HTTP)"
        );
        assert_eq!(
            area("sqlx_postgres::connection::PgConnection::run"),
            "database driver"
        );
        assert_eq!(area("servers::app::respond"), "the server's own code");
        assert_eq!(area("0x7f00"), "other");
        // Short inlined names are placed by their file.
        assert_eq!(
            super::area(
                "poll_read<tokio_postgres::socket::Socket>",
                "/root/.cargo/registry/src/index.crates.io-1/tokio-postgres-0.7.15/src/socket.rs"
            ),
            "database driver"
        );
        assert_eq!(
            super::area("{async_fn#0}", "/work/x/servers/src/io/epoll.rs"),
            "the server's own code"
        );
    }

    #[test]
    fn a_bad_protobuf_is_an_error_not_a_panic() {
        assert!(summarise(b"\xff\xff\xff not a profile").is_err());
        assert_eq!(summarise(b"").map(|(total, _)| total), Ok(0));
    }
}
