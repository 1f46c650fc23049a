//! The io-uring variant: tokio-uring runtimes, one per CPU, and the shared HTTP/1.1 codec.
//!
//! Threads: `uring-0` .. `uring-N-1` (`--workers`, default one per CPU), each a tokio-uring
//! runtime (a current-thread tokio runtime plus an io_uring) with its own `SO_REUSEPORT`
//! listener, its own accept loop and its own database pool; a connection lives and dies on
//! the thread whose listener the kernel handed it to, so no work moves between threads.
//! The main thread only waits for SIGINT/SIGTERM (a small tokio runtime of its own) and
//! then tells every runtime to stop.
//!
//! Every client socket operation goes through the ring, as a single-shot operation built
//! here with tokio-uring's public `UnsubmittedOneshot` (tokio-uring's own `TcpStream` cannot
//! close through the ring nor hand its descriptor over): `ACCEPT`, `RECV` into the
//! connection's read buffer, `SEND` of a whole batch of responses (`MSG_NOSIGNAL`: a client
//! that reset cannot raise SIGPIPE), `CLOSE`, and on the unhappy paths `SHUTDOWN` and
//! `ASYNC_CANCEL` (by descriptor). With `--registered-buffers on`, RECV and SEND become
//! `READ_FIXED` and `WRITE_FIXED` on buffers registered with the ring once (see
//! `Registered`; when none is free they fall back to RECV and SEND). The one client-socket syscall is the `setsockopt`
//! (`TCP_NODELAY`) after each accept: kernels since 6.7 can set socket options through
//! the ring (`URING_CMD` with `SOCKET_URING_OP_SETSOCKOPT`), but io-uring 0.6 has no
//! builder for it and one syscall per connection is cheap next to the accept itself.
//!
//! Where the syscalls come from, per keep-alive request: none of its own. The request is a
//! RECV and a SEND on the ring; the thread pays for the ring when it parks: tokio-uring
//! submits the queued operations with `io_uring_enter` and then waits in `epoll_wait` on an
//! epoll set that holds the ring's descriptor (its completions make it readable) next to
//! tokio's own sources. Under load one park serves every completion that arrived, so those
//! two syscalls are shared by all the requests of one turn of the loop.
//!
//! The lesson of the database: the pool is sqlx, and sqlx knows nothing of the ring. Its
//! socket is a plain tokio `TcpStream` registered with the same runtime's epoll, so a query
//! is a `sendto` of Bind/Execute/Sync and one or more `recvfrom` syscalls, and its readiness
//! arrives through `epoll_wait`, not through a completion. A `/db` request is therefore two
//! ring operations plus at least two syscalls: io_uring only removes the syscalls of the
//! sockets that go through it.
//!
//! The connection loop: read into an owned buffer (reused for the life of the connection,
//! never larger than the largest request the codec accepts), answer every complete request
//! in it in order, append each response to one write buffer, send the batch in one SEND,
//! read again. The RECV future is kept until it completes: a timeout or a shutdown cancels
//! it in the kernel (ASYNC_CANCEL or SHUTDOWN) and then waits for its completion, because
//! an abandoned operation would keep the socket open inside the kernel. The same holds
//! for a SEND to a client that stopped reading: after `--send-timeout` without progress
//! it is cancelled and awaited (see `send_all`) before the connection closes.

use std::cell::Cell;
use std::io;
use std::marker::PhantomData;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use io_uring::{cqueue, opcode, squeue, types};
use tokio::sync::{watch, Notify};
use tokio_uring::buf::fixed::{FixedBuf, FixedBufPool};
use tokio_uring::buf::{BoundedBuf, BoundedBufMut, Slice};
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};

use crate::app::{self, AsyncStore, DatabaseError, Resolved};
use crate::cli::Args;
use crate::database::AsyncDatabase;
use crate::http1::{self, Parsed};
use crate::logging;
use crate::metrics::METRICS;
use crate::render::{Fortune, World};

use super::SHUTDOWN_GRACE;

/// Submission queue entries per ring (the completion queue gets twice as many). Operations
/// beyond it are flushed early, not lost; an overflowing completion queue is kept by the
/// kernel (IORING_FEAT_NODROP).
const RING_ENTRIES: u32 = 1024;
/// The read buffer a connection starts with: room for a typical request, or a batch of
/// pipelined ones.
const READ_BUFFER: usize = 4 * 1024;
/// The read buffer never grows beyond one whole request of the largest size the codec
/// accepts; a request that needs more is rejected (431, 413) by the codec first.
const READ_LIMIT: usize = http1::MAX_HEAD + http1::MAX_BODY;
/// The write buffer a connection keeps between batches; a larger one (a big `/queries`
/// answer) is given back after its batch is sent.
const WRITE_KEEP: usize = 16 * 1024;
/// `--registered-buffers on`: buffers registered with each runtime's ring, and their size.
/// Their memory is pinned for the life of the runtime (it counts against RLIMIT_MEMLOCK
/// without CAP_IPC_LOCK): 128 x 16 KiB = 2 MiB per runtime. 16 KiB holds a read of the
/// connection's buffer and a typical batch of responses; larger batches use a plain SEND.
const REGISTERED_COUNT: usize = 128;
const REGISTERED_SIZE: usize = 16 * 1024;
/// How long a rejected or timed-out client gets to read its error response and close,
/// while what it still sends is read and discarded (closing with unread bytes would send
/// a reset that can destroy the response before the client reads it).
const LINGER: Duration = Duration::from_secs(2);

pub fn run(args: &Args) -> Result<()> {
    let runtimes = args.workers().max(1);
    let url = args.database_url();
    let knobs = args.knobs()?;
    let split_writes = args.split_writes()?;
    let (listeners, addr) = super::reuseport_listeners(args.listen, runtimes)?;
    let sizes = super::split_pool(args.pool_size(), runtimes);
    let pools = sizes
        .iter()
        // The pipelined client: `--db-shared` connections per runtime (default one).
        .map(|&size| {
            AsyncDatabase::new(args.db_client, &url, size, args.db_shared(), knobs).map(Arc::new)
        })
        .collect::<Result<Vec<_>>>()?;
    let all_pools: Arc<[Arc<AsyncDatabase>]> = pools.clone().into();

    let (stop, stop_signal) = watch::channel(false);
    let (ended, ended_signal) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let (ready, ready_signal) = mpsc::channel::<(usize, io::Result<()>)>();
    let mut threads = Vec::with_capacity(runtimes);
    let mut go = Vec::with_capacity(runtimes);
    for (index, (listener, pool)) in listeners.into_iter().zip(pools).enumerate() {
        let (go_sender, go_signal) = mpsc::channel::<bool>();
        go.push(go_sender);
        let store = RuntimeStore {
            local: pool,
            all: all_pools.clone(),
        };
        let stop_signal = stop_signal.clone();
        let ready = ready.clone();
        let ended = ended.clone();
        let watch_database = (index == 0).then(|| db::redact(&url));
        let sqpoll_idle_ms = args.sqpoll_idle_ms();
        let registered_buffers = args.registered_buffers();
        let options = Options {
            header_timeout: args.header_timeout(),
            send_timeout: args.send_timeout(),
            nodelay: args.nodelay(),
            split_writes,
        };
        let thread = std::thread::Builder::new()
            .name(format!("uring-{index}"))
            .spawn(move || {
                // Tells the main thread this runtime is gone, however it ends (a panic too).
                let _ended = super::EndNotice(index, ended);
                let mut builder = tokio_uring::builder();
                builder.entries(RING_ENTRIES);
                let mut ring = tokio_uring::uring_builder();
                // SINGLE_ISSUER: only this thread submits, so the kernel skips the locking.
                ring.setup_single_issuer();
                if let Some(idle_ms) = sqpoll_idle_ms {
                    // A kernel thread polls the submission queue, so submitting needs no
                    // io_uring_enter while it is awake; it sleeps after `idle_ms` without work.
                    // (The kernel thread never interrupts this one: COOP_TASKRUN is implied,
                    // and refused when asked for.)
                    ring.setup_sqpoll(idle_ms);
                } else {
                    // COOP_TASKRUN: a completion that arrives while this thread runs in
                    // user space waits for its next syscall (io_uring_enter or epoll_wait,
                    // soon under load) instead of interrupting it with an inter-processor
                    // interrupt. Without it each client packet that the other CPU received
                    // sent one here: /plaintext at 64 connections on one CPU went from
                    // 105-111k to 131-137k requests/s with it (docs/benchmarks.md).
                    ring.setup_coop_taskrun();
                }
                builder.uring_builder(&ring);
                let runtime = match tokio_uring::Runtime::new(&builder) {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready.send((index, Err(error)));
                        return true;
                    }
                };
                // Registered before any operation is in flight (registering waits for
                // the ring to be idle).
                let registered = if registered_buffers {
                    match runtime.block_on(async { Registered::register() }) {
                        Ok(registered) => Some(registered),
                        Err(error) => {
                            let _ = ready.send((index, Err(error)));
                            return true;
                        }
                    }
                } else {
                    None
                };
                let _ = ready.send((index, Ok(())));
                drop(ready);
                if go_signal.recv() != Ok(true) {
                    return true;
                }
                runtime.block_on(serve(
                    listener,
                    store,
                    options,
                    registered,
                    stop_signal,
                    watch_database,
                ))
            })
            .context("starting a runtime thread")?;
        threads.push(thread);
    }
    drop((ready, ended, stop_signal));

    let mut failure = None;
    for _ in 0..runtimes {
        match ready_signal.recv() {
            Ok((_, Ok(()))) => {}
            Ok((index, Err(error))) => {
                failure.get_or_insert_with(|| {
                    anyhow!(error).context(format!(
                        "setting up the io_uring of runtime {index} (is io_uring disabled, \
                         kernel.io_uring_disabled, or RLIMIT_MEMLOCK too low?)"
                    ))
                });
            }
            Err(_) => {
                failure.get_or_insert_with(|| anyhow!("a runtime thread died during start-up"));
            }
        }
    }
    if let Some(error) = failure {
        for sender in &go {
            let _ = sender.send(false);
        }
        for thread in threads {
            let _ = thread.join();
        }
        return Err(error);
    }

    tracing::info!(
        "io-uring variant serving http://{addr} with {runtimes} runtimes (one thread, io_uring and SO_REUSEPORT listener each), database client {:?} ({}; pipelined: {} shared per runtime), log {:?}",
        args.db_client,
        super::describe_split(&sizes),
        args.db_shared(),
        args.log
    );
    for sender in &go {
        let _ = sender.send(true);
    }

    let ended_early = super::wait_for_stop(ended_signal);
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop.send(true);
    let mut all_closed = true;
    let mut panicked = false;
    for thread in threads {
        match thread.join() {
            Ok(closed) => all_closed &= closed,
            Err(_) => panicked = true,
        }
    }
    if all_closed {
        tracing::info!("all connections closed");
    } else {
        tracing::warn!("gave up on connections still open after {SHUTDOWN_GRACE:?}");
    }
    if let Some(index) = ended_early? {
        return Err(anyhow!("runtime uring-{index} stopped unexpectedly"));
    }
    if panicked {
        return Err(anyhow!("a runtime thread panicked"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// One runtime.

/// The flags a runtime needs.
#[derive(Debug, Clone, Copy)]
struct Options {
    header_timeout: Duration,
    send_timeout: Duration,
    nodelay: bool,
    split_writes: bool,
}

/// What the tasks of one runtime share (they all run on its one thread).
struct Runtime {
    store: RuntimeStore,
    /// `--header-timeout`.
    header_timeout: Duration,
    /// `--send-timeout`: how long a SEND may make no progress.
    send_timeout: Duration,
    /// `--registered-buffers on`: this runtime's registered buffers.
    registered: Option<Registered>,
    /// `--nodelay`: TCP_NODELAY on accepted sockets.
    nodelay: bool,
    /// `--write-mode split`: each response's head and body in SENDs of their own.
    split_writes: bool,
    stopping: Cell<bool>,
    stop: Notify,
    connections: Cell<usize>,
    all_closed: Notify,
}

impl Runtime {
    /// Resolves once shutdown has begun.
    async fn stopped(&self) {
        let notified = self.stop.notified();
        if self.stopping.get() {
            return;
        }
        notified.await;
    }

    fn begin_stop(&self) {
        self.stopping.set(true);
        self.stop.notify_waiters();
    }

    async fn connections_closed(&self) {
        while self.connections.get() > 0 {
            self.all_closed.notified().await;
        }
    }
}

/// Counts a connection task while it lives.
struct ConnectionGuard(Rc<Runtime>);

impl ConnectionGuard {
    fn new(runtime: Rc<Runtime>) -> Self {
        runtime.connections.set(runtime.connections.get() + 1);
        ConnectionGuard(runtime)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let left = self.0.connections.get() - 1;
        self.0.connections.set(left);
        if left == 0 {
            self.0.all_closed.notify_one();
        }
    }
}

/// Serves until `stop` says so, then finishes in-flight requests. Returns whether every
/// connection closed within [`SHUTDOWN_GRACE`].
async fn serve(
    listener: OwnedFd,
    store: RuntimeStore,
    options: Options,
    registered: Option<Registered>,
    mut stop: watch::Receiver<bool>,
    watch_database: Option<String>,
) -> bool {
    let runtime = Rc::new(Runtime {
        store,
        header_timeout: options.header_timeout,
        send_timeout: options.send_timeout,
        registered,
        nodelay: options.nodelay,
        split_writes: options.split_writes,
        stopping: Cell::new(false),
        stop: Notify::new(),
        connections: Cell::new(0),
        all_closed: Notify::new(),
    });
    if let Some(url) = watch_database {
        let watched = runtime.store.local.clone();
        tokio_uring::spawn(async move { watched.wait_until_reachable(url).await });
    }
    let acceptor = tokio_uring::spawn(accept_loop(RingSocket::new(listener), runtime.clone()));
    // An error means the sender is gone: stop as well.
    let _ = stop.wait_for(|stop| *stop).await;
    runtime.begin_stop();
    let _ = acceptor.await;
    tokio::time::timeout(SHUTDOWN_GRACE, runtime.connections_closed())
        .await
        .is_ok()
}

async fn accept_loop(listener: RingSocket, runtime: Rc<Runtime>) {
    let mut accept = listener.accept();
    loop {
        tokio::select! {
            accepted = &mut accept => {
                accept = listener.accept();
                match accepted {
                    Ok(socket) => {
                        // Responses are written whole; Nagle would only delay them (`--nodelay
                        // off` shows how). The one syscall a connection makes outside the ring.
                        if runtime.nodelay {
                            socket.set_nodelay();
                        }
                        tokio_uring::spawn(serve_connection(socket, runtime.clone()));
                    }
                    Err(error) => {
                        // EMFILE and friends: wait a little rather than spin on a full fd table.
                        tracing::warn!("accept failed: {error}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            _ = runtime.stopped() => break,
        }
    }
    // Stop accepting: cancel the pending ACCEPT and wait for its completion (it holds the
    // listening socket in the kernel), then close the listener.
    let _ = listener.cancel_all().await;
    if let Ok(socket) = accept.await {
        socket.close().await;
    }
    listener.close().await;
}

/// How a connection ends.
enum End {
    /// Close now: the client closed, reset, or has nothing unread.
    Close,
    /// An error response was sent: half-close, drain what the client still sends, close.
    Linger(Drain),
}

/// Where the lingering reads start: a read still pending, or a buffer to read into.
enum Drain {
    Pending(Read),
    Buffer(Vec<u8>),
}

type Recv = InFlightOneshot<Held<Slice<Vec<u8>>>, RecvDone<Slice<Vec<u8>>>>;
type ReadFixed = InFlightOneshot<Held<FixedBuf>, RecvDone<FixedBuf>>;

/// A read of the client socket in flight. Either way it resolves to the connection's read
/// buffer with the new bytes appended, so the connection loop does not care which.
enum Read {
    /// RECV straight into the free room of the connection's buffer.
    Plain(Recv),
    /// `--registered-buffers on`: READ_FIXED into a registered buffer, whose bytes are
    /// then copied into the connection's buffer (held here meanwhile); the registered
    /// buffer goes back to the runtime's pool as soon as the read completes.
    Fixed(ReadFixed, Option<Vec<u8>>),
}

impl Read {
    /// Starts a read into `input`'s free room: READ_FIXED when the runtime has registered
    /// buffers and one is free, else RECV. An exhausted pool falls back rather than waits:
    /// every idle keep-alive connection holds a buffer in its pending read until the
    /// client speaks, so waiting for one could hold active clients behind idle ones.
    fn start(socket: &RingSocket, input: Vec<u8>, fixed: Option<&Registered>) -> Read {
        let room = input.capacity() - input.len();
        if let Some(buf) = fixed.and_then(Registered::take) {
            let len = room.min(buf.bytes_total());
            return Read::Fixed(socket.read_fixed(buf, len), Some(input));
        }
        let start = input.len();
        Read::Plain(socket.recv(input.slice(start..)))
    }
}

impl std::future::Future for Read {
    type Output = (io::Result<usize>, Vec<u8>);

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Read::Plain(recv) => Pin::new(recv)
                .poll(cx)
                .map(|(result, buffer)| (result, buffer.into_inner())),
            Read::Fixed(read, input) => {
                let (result, buf) = std::task::ready!(Pin::new(read).poll(cx));
                let mut input = input.take().expect("a read polled after it completed");
                if let Ok(n) = result {
                    // The copy the registered buffer costs in this design: the codec
                    // parses the connection's own buffer, which may hold a partial request.
                    input.extend_from_slice(&buf[..n]);
                }
                std::task::Poll::Ready((result, input))
            }
        }
    }
}

async fn serve_connection(socket: RingSocket, runtime: Rc<Runtime>) {
    let _guard = ConnectionGuard::new(runtime.clone());
    let mut input: Vec<u8> = Vec::with_capacity(READ_BUFFER);
    let mut output: Vec<u8> = Vec::new();
    // The header timeout counts from when the connection began waiting for a request head.
    let mut waiting_since = Instant::now();
    let timer = tokio::time::sleep(runtime.header_timeout);
    tokio::pin!(timer);
    // One send timer for the connection's life, pushed forward for each write: moving a
    // registered timer later is an atomic store in tokio, where a new timer per write was
    // an insertion into the timer wheel and a removal (with their locks and clock reads).
    let send_timer = tokio::time::sleep(runtime.send_timeout);
    tokio::pin!(send_timer);

    let end = 'connection: loop {
        // Answer every complete request in the buffer, in order, into one batch.
        let mut consumed = 0;
        let mut close = false;
        let mut rejected = false;
        while consumed < input.len() {
            match http1::parse(&input[consumed..]) {
                Parsed::Complete { request, length } => {
                    let (response, keep_alive) = answer(&request, &runtime).await;
                    let framed = http1::Request {
                        keep_alive,
                        ..request
                    };
                    if runtime.split_writes {
                        // `--write-mode split`: head and body in two SENDs of their own.
                        http1::write_head(&mut output, &response, &framed);
                        let (mut sent, buffer) =
                            send_all(&socket, output, &runtime, send_timer.as_mut()).await;
                        output = buffer;
                        output.clear();
                        if sent.is_ok() {
                            output.extend_from_slice(&response.body);
                            let (body_sent, buffer) =
                                send_all(&socket, output, &runtime, send_timer.as_mut()).await;
                            (sent, output) = (body_sent, buffer);
                            output.clear();
                        }
                        if sent.is_err() {
                            break 'connection End::Close;
                        }
                    } else {
                        http1::write_response(&mut output, &response, &framed);
                    }
                    consumed += length;
                    if !keep_alive {
                        close = true;
                        break;
                    }
                }
                Parsed::Partial => break,
                Parsed::Reject(status) => {
                    METRICS.record("bad_request", status, Duration::ZERO);
                    output.extend_from_slice(&app::error_response_bytes(status));
                    rejected = true;
                    break;
                }
            }
        }
        if consumed > 0 {
            input.drain(..consumed);
            waiting_since = Instant::now();
        }
        if !output.is_empty() {
            let (sent, buffer) = send_all(&socket, output, &runtime, send_timer.as_mut()).await;
            output = buffer;
            output.clear();
            if output.capacity() > WRITE_KEEP {
                output = Vec::new();
            }
            if sent.is_err() {
                break 'connection End::Close;
            }
        }
        if rejected {
            break 'connection End::Linger(Drain::Buffer(std::mem::take(&mut input)));
        }
        if close || (runtime.stopping.get() && input.is_empty()) {
            break 'connection End::Close;
        }
        if input.is_empty() && input.capacity() > READ_BUFFER {
            // A large request has been answered: give its memory back.
            input = Vec::with_capacity(READ_BUFFER);
        }
        if input.len() == input.capacity() {
            // A partial request fills the buffer: grow it, within the codec's limits.
            let room = input.capacity().min(READ_LIMIT - input.capacity());
            if room == 0 {
                METRICS.record("bad_request", 431, Duration::ZERO);
                let (_, buffer) = send_all(
                    &socket,
                    app::error_response_bytes(431),
                    &runtime,
                    send_timer.as_mut(),
                )
                .await;
                drop(buffer);
                break 'connection End::Linger(Drain::Buffer(std::mem::take(&mut input)));
            }
            input.reserve_exact(room);
        }

        // Wait for more bytes, for the header timeout, or for shutdown.
        let had_partial = !input.is_empty();
        let mut read = Read::start(&socket, input, runtime.registered.as_ref());
        timer.as_mut().reset(tokio::time::Instant::from_std(
            waiting_since + runtime.header_timeout,
        ));
        let mut stop_seen = runtime.stopping.get();
        loop {
            tokio::select! {
                biased;
                (result, buffer) = &mut read => {
                    input = buffer;
                    match result {
                        Ok(0) | Err(_) => break 'connection End::Close,
                        Ok(_) => continue 'connection,
                    }
                }
                _ = &mut timer => {
                    // Slow or silent client: 408, with the read still pending.
                    METRICS.record("bad_request", 408, Duration::ZERO);
                    let (_, buffer) = send_all(&socket, app::error_response_bytes(408), &runtime, send_timer.as_mut())
                        .await;
                    drop(buffer);
                    break 'connection End::Linger(Drain::Pending(read));
                }
                _ = runtime.stopped(), if !stop_seen => {
                    stop_seen = true;
                    if had_partial {
                        // A request is arriving: let it finish (within the grace period).
                        continue;
                    }
                    // Idle: take the pending read back from the kernel.
                    let _ = socket.cancel_all().await;
                    let (result, buffer) = read.await;
                    input = buffer;
                    match result {
                        // Bytes won the race with the cancel: answer them, then close.
                        Ok(n) if n > 0 => continue 'connection,
                        _ => break 'connection End::Close,
                    }
                }
            }
        }
    };
    match end {
        End::Close => socket.close().await,
        End::Linger(drain) => linger_close(socket, drain).await,
    }
}

/// Half-closes (the client sees the end of the error response), reads and discards what
/// the client still sends until it closes or [`LINGER`] passes, then closes.
async fn linger_close(socket: RingSocket, drain: Drain) {
    let _ = socket.shutdown(Shutdown::Write).await;
    let deadline = tokio::time::sleep(LINGER);
    tokio::pin!(deadline);
    let (mut pending, mut buffer) = match drain {
        Drain::Pending(read) => (Some(read), Vec::new()),
        Drain::Buffer(buffer) => (None, buffer),
    };
    loop {
        let mut read = match pending.take() {
            Some(read) => read,
            None => {
                buffer.clear();
                if buffer.capacity() == 0 {
                    buffer.reserve(READ_BUFFER);
                }
                Read::Plain(socket.recv(buffer.slice(0..)))
            }
        };
        tokio::select! {
            (result, returned) = &mut read => {
                buffer = returned;
                if !matches!(result, Ok(n) if n > 0) {
                    break;
                }
            }
            _ = &mut deadline => {
                let _ = socket.cancel_all().await;
                drop(read.await);
                break;
            }
        }
    }
    socket.close().await;
}

/// Sends all of `buffer`, usually in one operation. Gives the buffer back for reuse.
///
/// With registered buffers (`--registered-buffers on`) a batch that fits one is copied
/// into it and goes out as WRITE_FIXED; a larger batch, or one that finds the pool empty,
/// goes out as a plain SEND (falling back rather than waiting, for the reason given at
/// [`Read::start`]). A WRITE has no `MSG_NOSIGNAL`: a write to a reset client fails with
/// `EPIPE` rather than killing the server only because Rust programs ignore SIGPIPE.
///
/// A SEND or WRITE_FIXED that makes no progress for `timeout` (`--send-timeout`: the client
/// stopped reading and the socket's send buffer is full) is cancelled in the kernel
/// (ASYNC_CANCEL) and then awaited, so that the buffer and the descriptor come back before
/// the connection is closed; the result is then `TimedOut`. Each operation that completes
/// has sent something, so the clock restarts with each one: a slow reader is not cut off.
async fn send_all(
    socket: &RingSocket,
    buffer: Vec<u8>,
    runtime: &Runtime,
    mut timer: Pin<&mut tokio::time::Sleep>,
) -> (io::Result<()>, Vec<u8>) {
    let timeout = runtime.send_timeout;
    let registered = runtime.registered.as_ref();
    let mut buffer = buffer;
    let total = buffer.len();
    let mut sent = 0;
    let staged = registered
        .filter(|_| total <= REGISTERED_SIZE)
        .and_then(Registered::take);
    if let Some(mut fixed) = staged {
        // SAFETY: the handle is this task's alone and holds `REGISTERED_SIZE` bytes, at
        // least `total`; the bytes copied are then initialised.
        unsafe {
            std::ptr::copy_nonoverlapping(buffer.as_ptr(), fixed.stable_mut_ptr(), total);
            fixed.set_init(total);
        }
        while sent < total {
            let (result, returned) = bounded(
                socket,
                socket.write_fixed(fixed, sent, total - sent),
                timer.as_mut(),
                timeout,
            )
            .await;
            fixed = returned;
            if let Err(error) = progress(result, &mut sent) {
                return (Err(error), buffer);
            }
        }
        return (Ok(()), buffer);
    }
    while sent < total {
        let (result, slice) = bounded(
            socket,
            socket.send(buffer.slice(sent..)),
            timer.as_mut(),
            timeout,
        )
        .await;
        buffer = slice.into_inner();
        if let Err(error) = progress(result, &mut sent) {
            return (Err(error), buffer);
        }
    }
    (Ok(()), buffer)
}

/// Counts what a write operation sent; a write of nothing is an error, not a reason to
/// try again forever.
fn progress(result: io::Result<usize>, sent: &mut usize) -> io::Result<()> {
    match result? {
        0 => Err(io::ErrorKind::WriteZero.into()),
        n => {
            *sent += n;
            Ok(())
        }
    }
}

/// Waits for a write operation for at most `timeout`; past it, cancels the operation in
/// the kernel and waits for its completion, which gives its buffer back.
async fn bounded<B: BoundedBuf + Unpin>(
    socket: &RingSocket,
    mut write: InFlightOneshot<Held<B>, SendDone<B>>,
    mut timer: Pin<&mut tokio::time::Sleep>,
    timeout: Duration,
) -> (io::Result<usize>, B) {
    timer.as_mut().reset(tokio::time::Instant::now() + timeout);
    tokio::select! {
        biased;
        done = &mut write => done,
        _ = timer => {
            let _ = socket.cancel_all().await;
            let (_, buf) = write.await;
            (Err(io::ErrorKind::TimedOut.into()), buf)
        }
    }
}

/// Answers one request: route, application, metrics, log line. Also returns whether the
/// connection stays open: not when the client asked for a close, nor once shutdown has
/// begun (the response then says `Connection: close`).
async fn answer(request: &http1::Request<'_>, runtime: &Runtime) -> (app::Response, bool) {
    let started = Instant::now();
    let _in_flight = METRICS.start_request();
    let resolved = app::resolve(request.method, request.target);
    let response = match resolved {
        Resolved::Route(route) => app::respond(route, &runtime.store).await,
        Resolved::NotFound => app::Response::not_found(),
        Resolved::MethodNotAllowed => app::Response::method_not_allowed(),
    };
    let elapsed = started.elapsed();
    METRICS.record(resolved.label(), response.status, elapsed);
    logging::request(request.method, request.target, response.status, elapsed);
    let keep_alive = request.keep_alive && !runtime.stopping.get();
    (response, keep_alive)
}

/// The database as one runtime sees it: its own pool for queries (their sockets belong to
/// this runtime's epoll), every runtime's pool for `/metrics`.
struct RuntimeStore {
    local: Arc<AsyncDatabase>,
    all: Arc<[Arc<AsyncDatabase>]>,
}

impl AsyncStore for RuntimeStore {
    async fn world(&self, id: i32) -> Result<World, DatabaseError> {
        self.local.world(id).await
    }

    async fn worlds(&self, ids: &[i32]) -> Result<Vec<World>, DatabaseError> {
        self.local.worlds(ids).await
    }

    async fn fortunes(&self) -> Result<Vec<Fortune>, DatabaseError> {
        self.local.fortunes().await
    }

    async fn update(&self, changes: &[World]) -> Result<Vec<World>, DatabaseError> {
        self.local.update(changes).await
    }

    async fn ping(&self) -> Result<(), DatabaseError> {
        self.local.ping().await
    }

    fn keeps_deadline(&self) -> bool {
        self.local.keeps_deadline()
    }

    fn pool_state(&self) -> (usize, usize) {
        self.all.iter().fold((0, 0), |(in_use, idle), pool| {
            let (u, i) = pool.pool_state();
            (in_use + u, idle + i)
        })
    }
}

// ---------------------------------------------------------------------------------------
// Ring operations on sockets.

/// A socket whose operations go through the ring. Every operation in flight holds a clone,
/// so the descriptor stays open for as long as the kernel may use it, even when the future
/// waiting for the operation was dropped; the last holder closes it (with close(2) if the
/// ring did not).
#[derive(Clone)]
struct RingSocket(Rc<OwnedFd>);

impl RingSocket {
    fn new(fd: OwnedFd) -> Self {
        RingSocket(Rc::new(fd))
    }

    fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// ACCEPT on a listening socket.
    fn accept(&self) -> InFlightOneshot<Rc<OwnedFd>, AcceptDone> {
        let sqe = opcode::Accept::new(
            types::Fd(self.raw()),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .flags(libc::SOCK_CLOEXEC)
        .build();
        UnsubmittedOneshot::new(self.0.clone(), AcceptDone, sqe).submit()
    }

    /// RECV into `buf`'s free room.
    fn recv<B: BoundedBufMut>(&self, mut buf: B) -> InFlightOneshot<Held<B>, RecvDone<B>> {
        let len = u32::try_from(buf.bytes_total()).unwrap_or(u32::MAX);
        let sqe = opcode::Recv::new(types::Fd(self.raw()), buf.stable_mut_ptr(), len).build();
        self.submit_with(buf, RecvDone(PhantomData), sqe)
    }

    /// SEND of `buf`'s initialised bytes.
    fn send<B: BoundedBuf>(&self, buf: B) -> InFlightOneshot<Held<B>, SendDone<B>> {
        let len = u32::try_from(buf.bytes_init()).unwrap_or(u32::MAX);
        let sqe = opcode::Send::new(types::Fd(self.raw()), buf.stable_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        self.submit_with(buf, SendDone(PhantomData), sqe)
    }

    /// READ_FIXED of at most `len` bytes into the start of a registered buffer. A socket
    /// reads at offset 0 (a non-zero offset is ESPIPE).
    fn read_fixed(
        &self,
        mut buf: FixedBuf,
        len: usize,
    ) -> InFlightOneshot<Held<FixedBuf>, RecvDone<FixedBuf>> {
        let len = u32::try_from(len.min(buf.bytes_total())).unwrap_or(u32::MAX);
        let sqe = opcode::ReadFixed::new(
            types::Fd(self.raw()),
            buf.stable_mut_ptr(),
            len,
            buf.buf_index(),
        )
        .offset(0)
        .build();
        self.submit_with(buf, RecvDone(PhantomData), sqe)
    }

    /// WRITE_FIXED of `len` bytes of a registered buffer, from byte `from`.
    fn write_fixed(
        &self,
        buf: FixedBuf,
        from: usize,
        len: usize,
    ) -> InFlightOneshot<Held<FixedBuf>, SendDone<FixedBuf>> {
        let from = from.min(buf.bytes_init());
        let len = len.min(buf.bytes_init() - from);
        // SAFETY: `from` is within the buffer, which the operation keeps alive.
        let ptr = unsafe { buf.stable_ptr().add(from) };
        let sqe = opcode::WriteFixed::new(
            types::Fd(self.raw()),
            ptr,
            u32::try_from(len).unwrap_or(u32::MAX),
            buf.buf_index(),
        )
        .offset(0)
        .build();
        self.submit_with(buf, SendDone(PhantomData), sqe)
    }

    /// Submits a data operation that keeps `buf` and this socket alive until it completes.
    fn submit_with<B, T>(&self, buf: B, done: T, sqe: squeue::Entry) -> InFlightOneshot<Held<B>, T>
    where
        B: 'static,
        T: OneshotOutputTransform<StoredData = Held<B>>,
    {
        let held = Held {
            _fd: self.0.clone(),
            buf,
        };
        UnsubmittedOneshot::new(held, done, sqe).submit()
    }

    /// SHUTDOWN: with `Write`, the client gets a FIN after the bytes already sent.
    fn shutdown(&self, how: Shutdown) -> InFlightOneshot<Option<Rc<OwnedFd>>, Status> {
        let how = match how {
            Shutdown::Read => libc::SHUT_RD,
            Shutdown::Write => libc::SHUT_WR,
            Shutdown::Both => libc::SHUT_RDWR,
        };
        let sqe = opcode::Shutdown::new(types::Fd(self.raw()), how).build();
        UnsubmittedOneshot::new(Some(self.0.clone()), Status, sqe).submit()
    }

    /// ASYNC_CANCEL of every operation in flight on this socket: each completes (with
    /// ECANCELED, or with its result if it won the race) and must still be awaited.
    fn cancel_all(&self) -> InFlightOneshot<Option<Rc<OwnedFd>>, Status> {
        let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(self.raw())).all())
            .build();
        UnsubmittedOneshot::new(Some(self.0.clone()), Status, sqe).submit()
    }

    /// CLOSE through the ring when no operation holds the socket any more; otherwise the
    /// last operation to complete closes it.
    async fn close(self) {
        if let Ok(fd) = Rc::try_unwrap(self.0) {
            let sqe = opcode::Close::new(types::Fd(fd.into_raw_fd())).build();
            let _ = UnsubmittedOneshot::new(None, Status, sqe).submit().await;
        }
    }

    /// TCP_NODELAY, with setsockopt(2).
    fn set_nodelay(&self) {
        let _ = crate::sockopt::set_int(self.raw(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    }
}

/// The registered buffers of one runtime (`--registered-buffers on`): tokio-uring's
/// `FixedBufPool`, registered with the ring once (`io_uring_register`), so that READ_FIXED
/// and WRITE_FIXED name a buffer by index and the kernel skips what a RECV or SEND does on
/// every call: look up the user pages (`get_user_pages`), pin them, build the iterator over
/// them, and unpin them afterwards. The syscalls are the same; only the ring's work per
/// operation shrinks.
struct Registered(FixedBufPool<Vec<u8>>);

impl Registered {
    /// Allocates and registers the buffers; needs the runtime's context.
    fn register() -> io::Result<Registered> {
        let pool = FixedBufPool::new(
            std::iter::repeat_with(|| Vec::with_capacity(REGISTERED_SIZE)).take(REGISTERED_COUNT),
        );
        pool.register()?;
        Ok(Registered(pool))
    }

    /// A free buffer, if any; it returns to the pool when dropped (after its operation).
    fn take(&self) -> Option<FixedBuf> {
        self.0.try_next(REGISTERED_SIZE)
    }
}

/// What a data operation keeps alive until its completion: the buffer the kernel writes
/// into or reads from, and the socket.
struct Held<B> {
    _fd: Rc<OwnedFd>,
    buf: B,
}

fn result(cqe: &cqueue::Entry) -> io::Result<usize> {
    let res = cqe.result();
    if res >= 0 {
        Ok(res as usize)
    } else {
        Err(io::Error::from_raw_os_error(-res))
    }
}

struct RecvDone<B>(PhantomData<fn() -> B>);

impl<B: BoundedBufMut> OneshotOutputTransform for RecvDone<B> {
    type Output = (io::Result<usize>, B);
    type StoredData = Held<B>;

    fn transform_oneshot_output(self, data: Held<B>, cqe: cqueue::Entry) -> Self::Output {
        let mut buf = data.buf;
        let res = result(&cqe);
        if let Ok(n) = res {
            // SAFETY: the kernel wrote `n` bytes from the start of the buffer's free room.
            unsafe { buf.set_init(n) };
        }
        (res, buf)
    }
}

struct SendDone<B>(PhantomData<fn() -> B>);

impl<B: BoundedBuf> OneshotOutputTransform for SendDone<B> {
    type Output = (io::Result<usize>, B);
    type StoredData = Held<B>;

    fn transform_oneshot_output(self, data: Held<B>, cqe: cqueue::Entry) -> Self::Output {
        (result(&cqe), data.buf)
    }
}

struct AcceptDone;

impl OneshotOutputTransform for AcceptDone {
    type Output = io::Result<RingSocket>;
    type StoredData = Rc<OwnedFd>;

    fn transform_oneshot_output(self, _listener: Rc<OwnedFd>, cqe: cqueue::Entry) -> Self::Output {
        let fd = result(&cqe)? as RawFd;
        // SAFETY: a successful ACCEPT completes with a new descriptor that nothing else owns.
        Ok(RingSocket::new(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

struct Status;

impl OneshotOutputTransform for Status {
    type Output = io::Result<usize>;
    type StoredData = Option<Rc<OwnedFd>>;

    fn transform_oneshot_output(
        self,
        _fd: Option<Rc<OwnedFd>>,
        cqe: cqueue::Entry,
    ) -> Self::Output {
        result(&cqe)
    }
}
