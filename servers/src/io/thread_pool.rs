//! The thread-pool variant: a fixed set of worker threads fed by a bounded queue of
//! accepted connections; blocking I/O; each worker holds its own database connection.
//!
//! Threads: `acceptor` (blocks in `accept4`, then hands the connection over: a `futex`
//! wake of an idle worker), `--workers` `worker`s (default 128; each blocks in `futex`
//! waiting for a connection, in `read` waiting for its client, in `epoll_wait` of its own
//! database client during a query), and `signals`. A worker serves one connection until
//! it closes, so keep-alive clients each hold a worker: size the pool above the number of
//! connections you test with. When `--queue` connections already wait, the acceptor
//! answers 503 and closes instead of letting them pile up.
//!
//! Compared with thread-per-request it pays no thread creation per connection, but a
//! hand-off (a futex wake, and the acceptor's and the worker's context switches) instead.
//! Per keep-alive request: one `read`, one `write`. Each worker's database connection is
//! opened on its first database request and kept; `--pool-size` does not apply.

use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver, TrySendError};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use super::blocking::{self, Connections};
use crate::cli::Args;
use crate::database::blocking::{settings, Gauge, LazyConnection};

pub fn run(args: &Args) -> Result<()> {
    let url = args.database_url();
    let config = settings(&url, args.knobs()?)?;
    let gauge = Arc::new(Gauge::default());
    let listener = blocking::listen(args.listen, args.send_timeout())?;
    let connections = Arc::new(Connections::new(args)?);
    blocking::handle_signals(connections.clone(), &listener)?;
    blocking::wait_for_database(
        LazyConnection::new(config.clone(), Arc::new(Gauge::default())),
        db::redact(&url),
    )?;
    let workers = args.workers();
    tracing::info!(
        "thread-pool variant serving http://{} with {workers} worker threads, a queue of {}, one database connection per worker, log {:?}",
        listener.local_addr()?,
        args.queue,
        args.log
    );

    let (queue, waiting) = mpsc::sync_channel::<TcpStream>(args.queue as usize);
    let waiting = Arc::new(Mutex::new(waiting));
    let mut threads = Vec::with_capacity(workers);
    for n in 0..workers {
        let store = LazyConnection::new(config.clone(), gauge.clone());
        let (waiting, connections) = (waiting.clone(), connections.clone());
        let thread = std::thread::Builder::new()
            .name(format!("worker-{n}"))
            .spawn(move || work(store, &waiting, &connections))
            .context("starting the worker threads")?;
        threads.push(thread);
    }

    for stream in listener.incoming() {
        if connections.stopping() {
            break;
        }
        match stream {
            Ok(stream) => match queue.try_send(stream) {
                Ok(()) => {}
                Err(TrySendError::Full(stream)) | Err(TrySendError::Disconnected(stream)) => {
                    blocking::refuse(stream)
                }
            },
            Err(_) if connections.stopping() => break,
            Err(error) => {
                tracing::warn!("accept failed: {error}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
    // Workers finish the connections they hold and the queue, then see it closed.
    drop(queue);
    connections.drain(super::SHUTDOWN_GRACE);
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

fn work(
    mut store: LazyConnection,
    waiting: &Mutex<Receiver<TcpStream>>,
    connections: &Connections,
) {
    loop {
        // The lock is held while waiting, so one idle worker at a time waits on the queue
        // and the others wait on the mutex: both are futex waits.
        let next = waiting.lock().unwrap_or_else(|e| e.into_inner()).recv();
        match next {
            Ok(stream) => blocking::serve_connection(stream, &mut store, connections),
            Err(_) => return,
        }
    }
}
