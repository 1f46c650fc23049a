//! What the two blocking variants share: the connection loop (blocking reads and writes
//! over the [`crate::http1`] codec), the listening socket, and shutdown. They differ
//! only in which thread runs [`serve_connection`]: a thread of its own per connection
//! (`thread-per-request`) or a worker of a fixed pool (`thread-pool`).
//!
//! Per keep-alive request the loop makes one `read` of the request (every pipelined
//! request that arrived with it is answered from that read) and one `write` of all their
//! responses. The read blocks the thread in the kernel until the client sends; the
//! header timeout (`--header-timeout`) is the socket's `SO_RCVTIMEO`, so waiting costs no extra syscall.
//! A write that makes no progress for `--send-timeout` (a client that stopped reading while
//! its responses piled up) fails with `EAGAIN`: the socket's `SO_SNDTIMEO`, inherited from
//! the listener. The kernel restarts that clock whenever a `write` returns having sent
//! something, so only a stalled client is cut off, not a slow one; the thread then closes
//! the connection and is free again.
//!
//! Shutdown: SIGINT and SIGTERM are blocked in every thread and taken by a `signals`
//! thread (`sigwait`), which shuts the listening socket (waking the blocked `accept`) and
//! the read side of every open connection (waking blocked `read`s with end-of-file); a
//! request being answered still gets its response.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use socket2::{Domain, Socket, Type};

use crate::app::{self, BlockingStore, Resolved};
use crate::http1::{self, Parsed};
use crate::logging;
use crate::metrics::METRICS;

/// Opens the listening socket with the lab's backlog. `send_timeout` is set on the
/// listener as `SO_SNDTIMEO`: accepted sockets are cloned from it in the kernel and
/// inherit it, so the bound on a stalled write costs no syscall per connection.
pub fn listen(addr: SocketAddr, send_timeout: Duration) -> Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket
        .set_write_timeout(Some(send_timeout))
        .context("setting SO_SNDTIMEO on the listener")?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {addr} (is another server running there?)"))?;
    socket.listen(super::LISTEN_BACKLOG as i32)?;
    Ok(socket.into())
}

/// The open connections and the shutdown flag, shared by the acceptor, the connection
/// threads and the signal thread.
pub struct Connections {
    header_timeout: Duration,
    nodelay: bool,
    split_writes: bool,
    stopping: AtomicBool,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, RawFd>>,
}

impl Connections {
    /// The connection settings from the command line (header timeout, TCP_NODELAY,
    /// `--write-mode`).
    pub fn new(args: &crate::cli::Args) -> anyhow::Result<Self> {
        Ok(Connections {
            header_timeout: args.header_timeout(),
            nodelay: args.nodelay(),
            split_writes: args.split_writes()?,
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            open: Mutex::default(),
        })
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub fn count(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }

    fn register(&self, stream: &TcpStream) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, stream.as_raw_fd());
        id
    }

    /// Forgets a connection before its socket is closed, so that shutdown never touches a
    /// descriptor number the kernel has already given to something else.
    fn unregister(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    fn stop(&self, listener: RawFd) {
        self.stopping.store(true, Ordering::Relaxed);
        // SAFETY: shutdown(2) on descriptors this process owns; a listening socket's
        // blocked accept returns EINVAL, a connection's blocked read returns 0.
        unsafe { libc::shutdown(listener, libc::SHUT_RD) };
        for fd in self.open.lock().unwrap_or_else(|e| e.into_inner()).values() {
            unsafe { libc::shutdown(*fd, libc::SHUT_RD) };
        }
    }

    /// Waits until every connection has finished, for at most `grace`.
    pub fn drain(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.count() > 0 {
            tracing::warn!(
                "gave up on {} connections still open after {grace:?}",
                self.count()
            );
        } else {
            tracing::info!("all connections closed");
        }
    }
}

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread it starts later),
/// and starts the thread that waits for them.
pub fn handle_signals(connections: Arc<Connections>, listener: &TcpListener) -> Result<()> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .context("blocking SIGINT and SIGTERM")?;
    let listener = listener.as_raw_fd();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(signal) = signals.wait() {
                tracing::info!("{signal} received");
                tracing::info!("shutting down: finishing in-flight requests");
                connections.stop(listener);
            }
        })?;
    Ok(())
}

/// Answers a connection that cannot be served (no thread or queue slot left): 503 and
/// a close, written by the acceptor without reading the request.
pub fn refuse(mut stream: TcpStream) {
    METRICS.record("bad_request", 503, Duration::ZERO);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = stream.write_all(&app::error_response_bytes(503));
    let _ = stream.shutdown(Shutdown::Write);
}

/// Serves one connection until the client closes it, asks to, errs, times out, or the
/// server stops. Reads go into a buffer bounded by the codec's limits.
pub fn serve_connection(
    mut stream: TcpStream,
    store: &mut impl BlockingStore,
    connections: &Connections,
) {
    let id = connections.register(&stream);
    if !connections.stopping() {
        let _ = serve(&mut stream, store, connections);
    }
    connections.unregister(id);
    // Dropping the stream closes it; a FIN after our last response.
}

fn serve(
    stream: &mut TcpStream,
    store: &mut impl BlockingStore,
    connections: &Connections,
) -> io::Result<()> {
    // Responses are written whole; Nagle would only delay them (`--nodelay off` shows how).
    if connections.nodelay {
        stream.set_nodelay(true)?;
    }
    stream.set_read_timeout(Some(connections.header_timeout))?;
    let mut input: Vec<u8> = Vec::with_capacity(4096);
    let mut output: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    // When the request head now awaited started to be awaited, and whether the socket's
    // timeout was shortened to meet that deadline (only while a head arrives in pieces).
    let mut waiting_since = Instant::now();
    let mut shortened = false;
    loop {
        let mut consumed = 0;
        let mut close = false;
        while !close {
            match http1::parse(&input[consumed..]) {
                Parsed::Complete { request, length } => {
                    let response = answer(&request, store);
                    if connections.split_writes {
                        // The workshop's slow path: head and body in writes of their own,
                        // and no batching of pipelined responses.
                        http1::write_head(&mut output, &response, &request);
                        stream.write_all(&output)?;
                        output.clear();
                        stream.write_all(&response.body)?;
                    } else {
                        http1::write_response(&mut output, &response, &request);
                    }
                    consumed += length;
                    close = !request.keep_alive;
                }
                Parsed::Partial => break,
                Parsed::Reject(status) => {
                    METRICS.record("bad_request", status, Duration::ZERO);
                    output.extend_from_slice(&app::error_response_bytes(status));
                    close = true;
                }
            }
        }
        input.drain(..consumed);
        if !output.is_empty() {
            // One write for every response of the batch.
            stream.write_all(&output)?;
            output.clear();
            waiting_since = Instant::now();
        }
        if close || connections.stopping() {
            return stream.shutdown(Shutdown::Write);
        }
        if !input.is_empty() {
            // A head arriving in pieces (slowloris): the whole head must arrive within
            // the header timeout, not each piece.
            let left = connections
                .header_timeout
                .saturating_sub(waiting_since.elapsed());
            if left.is_zero() {
                return timed_out(stream);
            }
            stream.set_read_timeout(Some(left))?;
            shortened = true;
        } else if shortened {
            stream.set_read_timeout(Some(connections.header_timeout))?;
            shortened = false;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return timed_out(stream)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn timed_out(stream: &mut TcpStream) -> io::Result<()> {
    METRICS.record("bad_request", 408, Duration::ZERO);
    stream.write_all(&app::error_response_bytes(408))?;
    stream.shutdown(Shutdown::Write)
}

fn answer(request: &http1::Request<'_>, store: &mut impl BlockingStore) -> app::Response {
    let started = Instant::now();
    let _in_flight = METRICS.start_request();
    let resolved = app::resolve(request.method, request.target);
    let response = match resolved {
        Resolved::Route(route) => app::respond_blocking(route, store),
        Resolved::NotFound => app::Response::not_found(),
        Resolved::MethodNotAllowed => app::Response::method_not_allowed(),
    };
    let elapsed = started.elapsed();
    METRICS.record(resolved.label(), response.status, elapsed);
    logging::request(request.method, request.target, response.status, elapsed);
    response
}

/// Logs whether the database answers at start-up, and keeps trying until it does.
pub fn wait_for_database(
    mut store: impl BlockingStore + Send + 'static,
    url: String,
) -> Result<()> {
    std::thread::Builder::new()
        .name("db-watch".into())
        .spawn(move || {
            for attempt in 0.. {
                if app::log_database_attempt(&url, attempt, &store.ping()) {
                    return;
                }
                std::thread::sleep(app::DATABASE_RETRY);
            }
        })?;
    Ok(())
}
