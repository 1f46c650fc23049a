//! The I/O models: the only code in which the variants differ. Each module accepts
//! connections, reads requests, waits, and writes responses its own way, and calls the
//! shared [`crate::app`] for everything else.

pub mod blocking;
pub mod epoll;
pub mod io_uring;
pub mod thread_per_request;
pub mod thread_pool;

use anyhow::Result;

use crate::cli::{Args, Variant};

/// Serves until SIGINT or SIGTERM, then finishes in-flight requests and returns.
pub fn run(args: &Args) -> Result<()> {
    match args.variant {
        Variant::ThreadPerRequest => thread_per_request::run(args),
        Variant::ThreadPool => thread_pool::run(args),
        Variant::Epoll => epoll::run(args),
        Variant::IoUring => io_uring::run(args),
    }
}

/// How long shutdown waits for in-flight requests before giving up on them.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The default of `--header-timeout`. Variants use `Args::header_timeout()`, so that
/// tests and users can shorten it.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Pending connections the kernel queues for `accept`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Resolves on SIGINT or SIGTERM (the async variants; the blocking ones `sigwait`).
pub(crate) async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!("cannot watch SIGTERM ({error}); only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
    }
}
