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

/// Sends a per-core runtime's index when dropped, so that the main thread learns that a
/// runtime ended however it ended (a panic too).
pub(crate) struct EndNotice(pub usize, pub tokio::sync::mpsc::UnboundedSender<usize>);

impl Drop for EndNotice {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}

/// The main thread of a one-runtime-per-core layout: waits for SIGINT or SIGTERM (`None`),
/// or for a runtime that ended by itself (its index, sent by its [`EndNotice`]).
pub(crate) fn wait_for_stop(
    mut ended: tokio::sync::mpsc::UnboundedReceiver<usize>,
) -> Result<Option<usize>> {
    use anyhow::Context;
    let supervisor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal watcher")?;
    Ok(supervisor.block_on(async {
        tokio::select! {
            _ = shutdown_signal() => None,
            index = ended.recv() => index,
        }
    }))
}

/// The database connections of the runtimes' pools, for the start-up log line.
pub(crate) fn describe_split(sizes: &[usize]) -> String {
    let each: Vec<String> = sizes.iter().map(ToString::to_string).collect();
    format!(
        "sqlx: up to {} connections, {} per runtime",
        sizes.iter().sum::<usize>(),
        each.join("/")
    )
}

/// `total` database connections over `runtimes` pools, at least one each.
pub(crate) fn split_pool(total: usize, runtimes: usize) -> Vec<usize> {
    (0..runtimes)
        .map(|i| (total / runtimes + usize::from(i < total % runtimes)).max(1))
        .collect()
}

/// One `SO_REUSEPORT` listener per runtime, all on the same address: the kernel spreads
/// new connections over them, and each runtime accepts only its own. The first is bound
/// as asked; the others to the address it got, which matters when the port asked was 0.
pub(crate) fn reuseport_listeners(
    addr: std::net::SocketAddr,
    count: usize,
) -> Result<(Vec<std::os::fd::OwnedFd>, std::net::SocketAddr)> {
    use anyhow::{anyhow, Context};
    let mut listeners = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(bound),
            socket2::Type::STREAM.cloexec(),
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket
            .bind(&bound.into())
            .with_context(|| format!("binding {bound} (is another server running there?)"))?;
        socket.listen(LISTEN_BACKLOG as i32)?;
        if listeners.is_empty() {
            bound = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| anyhow!("the listener has no IP address"))?;
        }
        listeners.push(std::os::fd::OwnedFd::from(socket));
    }
    Ok((listeners, bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_split_with_at_least_one_connection_per_runtime() {
        assert_eq!(split_pool(8, 2), vec![4, 4]);
        assert_eq!(split_pool(5, 2), vec![3, 2]);
        assert_eq!(split_pool(1, 3), vec![1, 1, 1]);
    }

    #[test]
    fn listeners_share_the_port_the_kernel_chose() {
        let (listeners, addr) = reuseport_listeners("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_ne!(addr.port(), 0);
        for listener in listeners {
            let socket = socket2::Socket::from(listener);
            let local = socket.local_addr().unwrap().as_socket().unwrap();
            assert_eq!(local, addr);
        }
    }
}
