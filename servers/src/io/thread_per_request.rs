//! The thread-per-request variant: an acceptor thread, and one OS thread per accepted
//! connection that serves that connection's requests (keep-alive) with blocking
//! `std::net` I/O until it closes, then exits.
//!
//! Threads: `acceptor` (blocks in `accept4`), one `conn` thread per open connection
//! (blocks in `read` while waiting for its client, in `epoll_wait` of the database client
//! while a query runs, in `futex` while waiting for a free database connection), and
//! `signals`. At most `--max-threads` connection threads live at once. A connection
//! beyond that takes the thread of the connection that has waited longest for its request,
//! if that one has waited at least `--busy-header-timeout` (it gets 503 and a close; see
//! [`Connections::shed`]); otherwise the acceptor answers the newcomer 503 and a close
//! instead of spawning. So clients that send half a request head and go quiet hold every
//! thread for a moment, not until the header timeout.
//!
//! Per connection the model pays for its simplicity: `clone3` to create the thread,
//! `mmap`/`mprotect` for its stack, `rt_sigprocmask`, `set_robust_list` and `rseq` as it
//! starts, `munmap` and `exit` as it ends: a dozen syscalls that a keep-alive client
//! amortises and a connection-per-request client pays every time. Per keep-alive request
//! it is one `read` and one `write`, like the others, with no readiness wait at all.
//! Database connections are shared through a pool (`--pool-size`, default 4 per CPU):
//! a thread leases one for each operation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

use super::blocking::{self, Connections};
use crate::cli::Args;
use crate::database::blocking::{settings, ConnectionPool, Gauge, LazyConnection};

/// Stack of a connection thread: the handler needs little, and thousands of threads
/// must fit (the kernel only commits what is touched).
const CONNECTION_STACK: usize = 256 * 1024;

pub fn run(args: &Args) -> Result<()> {
    let url = args.database_url();
    let config = settings(&url, args.knobs()?)?;
    let pool: &'static ConnectionPool = Box::leak(Box::new(ConnectionPool::new(
        config.clone(),
        args.pool_size(),
    )));
    let listener = blocking::listen(args.listen, args.send_timeout())?;
    let connections = Arc::new(Connections::new(args)?);
    blocking::handle_signals(connections.clone(), &listener)?;
    blocking::wait_for_database(
        LazyConnection::new(config, Arc::new(Gauge::default())),
        db::redact(&url),
    )?;
    let max_threads = args.max_threads as usize;
    tracing::info!(
        "thread-per-request variant serving http://{} with at most {max_threads} connection threads, up to {} database connections, log {:?}",
        listener.local_addr()?,
        args.pool_size(),
        args.log
    );

    let live = Arc::new(AtomicUsize::new(0));
    let acceptor = {
        let connections = connections.clone();
        std::thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if connections.stopping() {
                        break;
                    }
                    let stream = match stream {
                        Ok(stream) => stream,
                        Err(_) if connections.stopping() => break,
                        Err(error) => {
                            // EMFILE and friends: wait a little rather than spin.
                            tracing::warn!("accept failed: {error}");
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            continue;
                        }
                    };
                    let accepted = std::time::Instant::now();
                    // At the limit, a thread waiting for a quiet client is freed for this
                    // one, and this one starts once that one has ended: a busy machine can
                    // take a while to schedule the freed thread's exit, and spawning at once
                    // passed the limit by dozens of threads (2,000 idle clients against 512).
                    if live.load(Ordering::Relaxed) >= max_threads
                        && (connections.shed(1).shed == 0 || !below_limit(&live, max_threads))
                    {
                        blocking::refuse(stream);
                        continue;
                    }
                    live.fetch_add(1, Ordering::Relaxed);
                    let (thread_live, connections) = (live.clone(), connections.clone());
                    let spawned = std::thread::Builder::new()
                        .name("conn".into())
                        .stack_size(CONNECTION_STACK)
                        .spawn(move || {
                            blocking::serve_connection(stream, accepted, &mut &*pool, &connections);
                            thread_live.fetch_sub(1, Ordering::Relaxed);
                        });
                    if let Err(error) = spawned {
                        tracing::warn!("cannot start a connection thread: {error}");
                        live.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            })
    }
    .context("starting the acceptor thread")?;
    let _ = acceptor.join();
    connections.drain(super::SHUTDOWN_GRACE);
    Ok(())
}

/// Waits (at most [`SHED_WAIT`]) for a shed connection's thread to end and bring the live
/// count under `max_threads`.
fn below_limit(live: &AtomicUsize, max_threads: usize) -> bool {
    let deadline = std::time::Instant::now() + SHED_WAIT;
    while live.load(Ordering::Relaxed) >= max_threads {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    true
}

/// How long a new connection waits for the thread it freed; past it, it is refused.
const SHED_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
