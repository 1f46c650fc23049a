//! The request log: one line per request (method, path, status, duration) through
//! `tracing`, written the way `--log` says. These are the knobs of the logging workshop,
//! so each mode does exactly what its name promises:
//!
//! - `sync`: every line is one `write(2)` to the log file, made by the thread that served
//!   the request, before it moves on.
//! - `buffered` (the default): lines are appended to an in-memory buffer under a mutex;
//!   a background thread writes the buffer out every 100 ms (or sooner when it passes
//!   256 KiB), so a busy server makes a few large writes instead of one per request. No
//!   line is lost on shutdown; if the buffer ever holds 16 MiB (the disk stalled), further
//!   lines are counted in `lab_log_lines_dropped_total` instead of growing memory.
//! - `stdout`: every line is one write to standard output.
//! - `off`: no request log at all, so no logging syscalls.
//!
//! Operational messages (start-up, database retries, shutdown) always go to standard
//! error, whatever the mode.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::ValueEnum;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::metrics::METRICS;

/// The `tracing` target of request lines.
pub const REQUEST_TARGET: &str = "request";

const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
const FLUSH_EARLY_AT: usize = 256 * 1024;
const MAX_BUFFERED: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogMode {
    /// One write(2) per request line, to the log file, on the serving thread.
    Sync,
    /// Lines batched in memory and written by a background thread every 100 ms.
    Buffered,
    /// One write(2) per request line, to standard output.
    Stdout,
    /// No request log.
    Off,
}

/// Logs one finished request.
pub fn request(method: &str, path: &str, status: u16, elapsed: Duration) {
    tracing::info!(target: REQUEST_TARGET, method, path, status, micros = elapsed.as_micros() as u64);
}

/// Keeps the buffered writer alive; dropping it writes out every remaining line.
pub struct LogGuard {
    flusher: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.flusher.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

/// Installs the global subscriber: request lines per `mode`, operational lines on stderr.
pub fn init(mode: LogMode, path: &Path) -> Result<LogGuard> {
    let operational = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(io::stderr)
        .with_filter(filter_fn(is_operational));
    let registry = tracing_subscriber::registry().with(operational);
    let mut guard = LogGuard { flusher: None };
    match mode {
        LogMode::Off => registry.init(),
        LogMode::Stdout => registry.with(request_layer(io::stdout)).init(),
        LogMode::Sync => registry
            .with(request_layer(Arc::new(open_log(path)?)))
            .init(),
        LogMode::Buffered => {
            let buffer = Arc::new(LineBuffer::default());
            guard.flusher = Some(spawn_flusher(buffer.clone(), open_log(path)?)?);
            registry.with(request_layer(buffer)).init()
        }
    }
    Ok(guard)
}

fn request_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_target(false)
        .with_writer(writer)
        .with_filter(filter_fn(|meta| meta.target() == REQUEST_TARGET))
}

fn is_operational(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    if target == REQUEST_TARGET {
        return false;
    }
    // sqlx logs every statement at debug and slow ones at warn; keep only the warnings.
    let max = if target.starts_with("sqlx") {
        Level::WARN
    } else {
        Level::INFO
    };
    *meta.level() <= max
}

fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| {
            format!(
                "opening the request log {} (choose another with --log-file)",
                path.display()
            )
        })
}

/// The default log file: `server.log` in the working directory.
pub fn default_path() -> PathBuf {
    PathBuf::from("server.log")
}

/// Lines waiting for the flusher, and a bell to ring it early.
#[derive(Default)]
struct LineBuffer {
    lines: Mutex<Vec<u8>>,
    full: Condvar,
}

impl Write for &LineBuffer {
    /// The fmt layer hands over a whole line in one call.
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() + line.len() > MAX_BUFFERED {
            METRICS.log_line_dropped();
        } else {
            lines.extend_from_slice(line);
            if lines.len() >= FLUSH_EARLY_AT && lines.len() - line.len() < FLUSH_EARLY_AT {
                self.full.notify_one();
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn spawn_flusher(
    buffer: Arc<LineBuffer>,
    mut file: File,
) -> Result<(mpsc::Sender<()>, JoinHandle<()>)> {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            // SIGINT and SIGTERM are for the threads that shut the server down; delivered
            // here, where nobody handles them, they would kill the process.
            let mut signals = nix::sys::signal::SigSet::empty();
            signals.add(nix::sys::signal::Signal::SIGINT);
            signals.add(nix::sys::signal::Signal::SIGTERM);
            let _ = signals.thread_block();
            let mut batch = Vec::with_capacity(FLUSH_EARLY_AT * 2);
            loop {
                let last = {
                    let lines = buffer.lines.lock().unwrap_or_else(|e| e.into_inner());
                    // Sleep until the interval passes or the buffer fills, whichever first.
                    let (mut lines, _) = buffer
                        .full
                        .wait_timeout_while(lines, FLUSH_INTERVAL, |l| l.len() < FLUSH_EARLY_AT)
                        .unwrap_or_else(|e| e.into_inner());
                    std::mem::swap(&mut *lines, &mut batch);
                    matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Disconnected))
                };
                if !batch.is_empty() {
                    if let Err(e) = file.write_all(&batch) {
                        tracing::warn!("request log write failed: {e}");
                    }
                    batch.clear();
                }
                if last {
                    // One more pass for lines added while the final batch was written.
                    let rest = std::mem::take(
                        &mut *buffer.lines.lock().unwrap_or_else(|e| e.into_inner()),
                    );
                    let _ = file.write_all(&rest);
                    let _ = file.flush();
                    return;
                }
            }
        })?;
    Ok((stop, thread))
}
