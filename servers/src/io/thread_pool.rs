//! The thread-pool variant: a fixed set of worker threads fed by a bounded queue of
//! accepted connections; blocking I/O; each worker holds its own database connection.
//!
//! Threads: `acceptor` (blocks in `accept4`, then hands the connection over: a `futex`
//! wake of an idle worker), `--workers` `worker`s (default 128; each blocks in `futex`
//! waiting for a connection, in `read` waiting for its client, in `epoll_wait` of its own
//! database client during a query), `shedder` (parked until connections wait with every
//! worker busy) and `signals`. A worker serves one connection until it closes, so
//! keep-alive clients each hold a worker: size the pool above the number of connections
//! you test with. When `--queue` connections already wait, the one that has waited longest
//! is answered 503 and closed to make room.
//!
//! A worker blocked in `read` cannot serve anyone else, so clients that send half a request
//! head and go quiet would hold every worker until the header timeout, and the queue
//! behind them for as many header timeouts as it has rounds of workers. While connections
//! wait and no worker is idle, the `shedder` takes workers from the connections that have
//! waited longest for a request, and at least `--busy-header-timeout` (see
//! [`Connections::shed`]), one per waiting connection: a new client is served in about that
//! time, and the normal path pays nothing for it (the shedder sleeps until the acceptor
//! finds the pool saturated).
//!
//! Compared with thread-per-request it pays no thread creation per connection, but a
//! hand-off (a futex wake, and the acceptor's and the worker's context switches) instead.
//! Per keep-alive request: one `read`, one `write`. Each worker's database connection is
//! opened on its first database request and kept; `--pool-size` does not apply.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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

    let queue = Arc::new(Queue::new(args.queue as usize));
    let mut threads = Vec::with_capacity(workers);
    for n in 0..workers {
        let store = LazyConnection::new(config.clone(), gauge.clone());
        let (queue, connections) = (queue.clone(), connections.clone());
        let thread = std::thread::Builder::new()
            .name(format!("worker-{n}"))
            .spawn(move || work(store, &queue, &connections))
            .context("starting the worker threads")?;
        threads.push(thread);
    }
    let shedder = {
        let (queue, connections) = (queue.clone(), connections.clone());
        let pause = args.busy_header_timeout();
        std::thread::Builder::new()
            .name("shedder".into())
            .spawn(move || shed_while_saturated(&queue, &connections, pause))
            .context("starting the shedder thread")?
    };

    for stream in listener.incoming() {
        if connections.stopping() {
            break;
        }
        match stream {
            Ok(stream) => {
                let queued = queue.push(stream, Instant::now());
                if let Some(evicted) = queued.evicted {
                    blocking::refuse(evicted);
                }
                if queued.saturated {
                    shedder.thread().unpark();
                }
            }
            Err(_) if connections.stopping() => break,
            Err(error) => {
                tracing::warn!("accept failed: {error}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
    // Workers finish the connections they hold and the queue, then see it closed.
    queue.close();
    shedder.thread().unpark();
    connections.drain(super::SHUTDOWN_GRACE);
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

fn work(mut store: LazyConnection, queue: &Queue, connections: &Connections) {
    while let Some((stream, accepted)) = queue.pop() {
        blocking::serve_connection(stream, accepted, &mut store, connections);
    }
}

/// The `shedder` thread: parked while some worker is idle; while connections wait with none
/// idle, frees one worker per waiting connection as soon as [`Connections::shed`] allows.
/// Freed workers take the oldest waiting connections, and any of those that has not sent
/// its request within `--busy-header-timeout` of its acceptance is shed in turn, so a queue
/// of silent connections drains in a few rounds.
fn shed_while_saturated(queue: &Queue, connections: &Connections, busy_header_timeout: Duration) {
    // With no worker waiting for its client (all answering requests), look again soon: a
    // request takes milliseconds.
    let recheck = busy_header_timeout.min(Duration::from_millis(10));
    loop {
        std::thread::park();
        loop {
            if connections.stopping() {
                return;
            }
            let demand = queue.demand();
            if demand == 0 {
                break;
            }
            let outcome = connections.shed(demand);
            let pause = if outcome.shed > 0 {
                // Let the freed workers take the next connections, then look at those.
                Duration::from_millis(1)
            } else {
                outcome
                    .next
                    .unwrap_or(recheck)
                    .max(Duration::from_millis(1))
            };
            std::thread::sleep(pause);
        }
    }
}

/// Accepted connections waiting for a worker, oldest first, with the time each was
/// accepted; and how many workers wait for one.
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    capacity: usize,
}

#[derive(Default)]
struct QueueState {
    waiting: VecDeque<(TcpStream, Instant)>,
    idle_workers: usize,
    closed: bool,
}

/// What [`Queue::push`] did.
struct Queued {
    /// The connection that waited longest, pushed out by a full queue.
    evicted: Option<TcpStream>,
    /// More connections wait than workers are idle: one will not be taken at once.
    saturated: bool,
}

impl Queue {
    fn new(capacity: usize) -> Self {
        Queue {
            state: Mutex::default(),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, stream: TcpStream, accepted: Instant) -> Queued {
        let mut state = self.lock();
        let evicted = if state.waiting.len() >= self.capacity {
            state.waiting.pop_front().map(|(stream, _)| stream)
        } else {
            None
        };
        state.waiting.push_back((stream, accepted));
        let saturated = state.waiting.len() > state.idle_workers;
        let wake = state.idle_workers > 0;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        Queued { evicted, saturated }
    }

    /// The oldest waiting connection; blocks while there is none. `None` once closed and empty.
    fn pop(&self) -> Option<(TcpStream, Instant)> {
        let mut state = self.lock();
        loop {
            if let Some(next) = state.waiting.pop_front() {
                return Some(next);
            }
            if state.closed {
                return None;
            }
            state.idle_workers += 1;
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
            state.idle_workers -= 1;
        }
    }

    /// Connections waiting that no idle worker is about to take.
    fn demand(&self) -> usize {
        let state = self.lock();
        state.waiting.len().saturating_sub(state.idle_workers)
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}
