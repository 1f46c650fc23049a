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
//! Threads are few, and a client that sends half a request head and then nothing holds one
//! until the header timeout. When connections wait for a thread (the pool's workers all
//! busy, or `--max-threads` reached), the variant asks [`Connections::shed`] for threads:
//! the connections that have waited longest for a request, and at least
//! `--busy-header-timeout`, are answered 503 and closed, so that a new client is served in
//! about that time rather than after the header timeout. A thread publishes when it starts
//! and stops waiting for its client (an atomic store, no syscall), and a shed thread is woken
//! the way shutdown wakes it: `shutdown(SHUT_RD)` on its socket.
//!
//! Shutdown: SIGINT and SIGTERM are blocked in every thread and taken by a `signals`
//! thread (`sigwait`), which shuts the listening socket (waking the blocked `accept`) and
//! the read side of every open connection (waking blocked `read`s with end-of-file); a
//! request being answered still gets its response.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
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
    busy_header_timeout: Duration,
    nodelay: bool,
    split_writes: bool,
    stopping: AtomicBool,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Open>>>,
}

/// One open connection as the acceptor, the shedder and the signal thread see it.
struct Open {
    fd: RawFd,
    /// While its thread waits for a request: when that request began to be awaited, as
    /// [`stamp`]; [`ANSWERING`] otherwise; [`SHED`] once [`Connections::shed`] took its thread.
    awaiting: AtomicU64,
}

const ANSWERING: u64 = 0;
const SHED: u64 = u64::MAX;

/// What [`Connections::shed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    /// Connections shed.
    pub shed: usize,
    /// How long until the connection now waiting longest for a request may be shed
    /// (zero: at once); `None` when no thread waits for its client.
    pub next: Option<Duration>,
}

/// The registration of a connection being served; unregisters it when dropped.
struct Slot<'a> {
    connections: &'a Connections,
    id: u64,
    open: Arc<Open>,
}

impl Slot<'_> {
    /// The thread is about to wait for its client's request, awaited since `since`.
    fn awaiting(&self, since: Instant) {
        self.open.awaiting.store(stamp(since), Ordering::Release);
    }

    /// The thread stopped waiting; true when the shedder took it meanwhile.
    fn was_shed(&self) -> bool {
        self.open.awaiting.swap(ANSWERING, Ordering::AcqRel) == SHED
    }
}

impl Drop for Slot<'_> {
    /// Forgets the connection before its socket is closed, so that shutdown and the
    /// shedder never touch a descriptor number the kernel has already given to something else.
    fn drop(&mut self) {
        self.connections
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// An instant as nanoseconds since the process first asked, plus one (so never [`ANSWERING`]).
fn stamp(at: Instant) -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    at.saturating_duration_since(*START).as_nanos() as u64 + 1
}

/// How far the socket's receive timeout may be from the time left for the request awaited
/// before it is set again: a read that times out this much late does no harm, and a
/// keep-alive request then needs no `setsockopt`.
const TIMEOUT_SLACK: Duration = Duration::from_millis(10);

impl Connections {
    /// The connection settings from the command line (header timeout, TCP_NODELAY,
    /// `--write-mode`).
    pub fn new(args: &crate::cli::Args) -> anyhow::Result<Self> {
        Ok(Connections {
            header_timeout: args.header_timeout(),
            busy_header_timeout: args.busy_header_timeout(),
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

    fn register(&self, stream: &TcpStream) -> Slot<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let open = Arc::new(Open {
            fd: stream.as_raw_fd(),
            awaiting: AtomicU64::new(ANSWERING),
        });
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, open.clone());
        Slot {
            connections: self,
            id,
            open,
        }
    }

    fn stop(&self, listener: RawFd) {
        self.stopping.store(true, Ordering::Relaxed);
        // SAFETY: shutdown(2) on descriptors this process owns; a listening socket's
        // blocked accept returns EINVAL, a connection's blocked read returns 0.
        unsafe { libc::shutdown(listener, libc::SHUT_RD) };
        for open in self.open.lock().unwrap_or_else(|e| e.into_inner()).values() {
            unsafe { libc::shutdown(open.fd, libc::SHUT_RD) };
        }
    }

    /// Frees the threads of up to `at_most` connections for connections that wait for one:
    /// those whose thread has waited longest for a request, and at least
    /// `--busy-header-timeout`, get 503 and a close. A request already being answered is
    /// never cut off. Called by the acceptor or the shedder only while connections wait.
    pub fn shed(&self, at_most: usize) -> Shed {
        let now = stamp(Instant::now());
        let grace = self.busy_header_timeout.as_nanos() as u64;
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        // Those that may be shed, and when the first of the others may be.
        let mut due: Vec<(u64, &Open)> = Vec::new();
        let mut next: Option<u64> = None;
        for o in open.values() {
            let since = o.awaiting.load(Ordering::Acquire);
            if since == ANSWERING || since == SHED {
                continue;
            }
            let waited = now.saturating_sub(since);
            if waited >= grace {
                due.push((since, o));
            } else {
                next = Some(next.map_or(grace - waited, |n| n.min(grace - waited)));
            }
        }
        if due.len() > at_most {
            // The longest-waiting `at_most`; the rest may be shed next time, at once.
            if at_most > 0 {
                due.select_nth_unstable_by_key(at_most - 1, |(since, _)| *since);
            }
            due.truncate(at_most);
            next = Some(0);
        }
        let mut shed = 0;
        for (since, o) in due {
            // Only if its thread still waits for the same request: one that has just
            // received it keeps it.
            if o.awaiting
                .compare_exchange(since, SHED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // SAFETY: the descriptor is open: a connection is unregistered, under the
                // lock held here, before its socket is closed. Its blocked read returns 0.
                unsafe { libc::shutdown(o.fd, libc::SHUT_RD) };
                shed += 1;
            }
        }
        let next = next.map(Duration::from_nanos);
        Shed { shed, next }
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
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = close_with(&mut stream, 503);
}

/// Serves one connection, accepted at `accepted`, until the client closes it, asks to,
/// errs, times out, is shed, or the server stops. Reads go into a buffer bounded by the
/// codec's limits.
pub fn serve_connection(
    mut stream: TcpStream,
    accepted: Instant,
    store: &mut impl BlockingStore,
    connections: &Connections,
) {
    let slot = connections.register(&stream);
    if !connections.stopping() {
        let _ = serve(&mut stream, accepted, store, connections, &slot);
    }
    drop(slot);
    // Dropping the stream closes it; a FIN after our last response.
}

fn serve(
    stream: &mut TcpStream,
    accepted: Instant,
    store: &mut impl BlockingStore,
    connections: &Connections,
    slot: &Slot<'_>,
) -> io::Result<()> {
    // Responses are written whole; Nagle would only delay them (`--nodelay off` shows how).
    if connections.nodelay {
        stream.set_nodelay(true)?;
    }
    stream.set_read_timeout(Some(connections.header_timeout))?;
    let mut timeout = connections.header_timeout;
    let mut input: Vec<u8> = Vec::with_capacity(READ_SIZE);
    let mut output: Vec<u8> = Vec::with_capacity(4096);
    // When the request now awaited started to be awaited: the whole of it must arrive
    // within the header timeout from then, however many pieces it comes in.
    let mut waiting_since = Instant::now();
    // The same for the shedder, except that the first request counts from the
    // connection's acceptance: time spent queued while others waited for a thread too.
    let mut awaited_since = accepted;
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
            awaited_since = waiting_since;
        }
        if close || connections.stopping() {
            return stream.shutdown(Shutdown::Write);
        }
        // The socket's timeout follows the time left while a request arrives in pieces;
        // a keep-alive wait leaves it alone.
        let left = connections
            .header_timeout
            .saturating_sub(waiting_since.elapsed());
        if left.is_zero() {
            return close_with(stream, 408);
        }
        if left.abs_diff(timeout) > TIMEOUT_SLACK {
            stream.set_read_timeout(Some(left))?;
            timeout = left;
        }
        slot.awaiting(awaited_since);
        let read = read_more(stream, &mut input);
        if slot.was_shed() {
            return close_with(stream, 503);
        }
        match read {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return close_with(stream, 408)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// How much one `read` may take: a batch of pipelined requests at once.
const READ_SIZE: usize = 16 * 1024;

/// One read of what has arrived (room for [`READ_SIZE`] bytes, at least half of it),
/// appended to `input`: straight into the buffer's spare capacity rather than through a
/// buffer on the stack. No copy, and a thread whose client sent a few bytes has touched
/// only the pages those bytes took: with thousands of connection threads, a 16 KiB stack
/// buffer each was most of their memory.
fn read_more(stream: &TcpStream, input: &mut Vec<u8>) -> io::Result<usize> {
    // Grown only when little room is left: growing copies the whole old buffer, touching
    // every page of the new one (a head that came in two pieces would cost 16 KiB).
    if input.capacity() - input.len() < READ_SIZE / 2 {
        input.reserve(READ_SIZE);
    }
    let spare = input.spare_capacity_mut();
    // recv(2) with no flags, as std's `TcpStream::read` (the same `recvfrom` syscall).
    // SAFETY: it writes at most `spare.len()` bytes into this spare capacity, which
    // the vector owns; only the bytes it reports written are then counted as initialised.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            spare.as_mut_ptr().cast(),
            spare.len(),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    unsafe { input.set_len(input.len() + n) };
    Ok(n)
}

/// Answers `status` (408: the request did not arrive in time; 503: no thread for it) with
/// `Connection: close`, without reading further, and closes the sending side.
fn close_with(stream: &mut TcpStream, status: u16) -> io::Result<()> {
    METRICS.record("bad_request", status, Duration::ZERO);
    stream.write_all(&app::error_response_bytes(status))?;
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
