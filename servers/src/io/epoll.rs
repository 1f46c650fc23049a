//! The epoll variant: tokio's multi-thread runtime, hyper's HTTP/1.1, sqlx.
//!
//! Threads: one runtime worker per CPU (`--workers`), each running an epoll-driven event
//! loop; any worker may run any connection's task (work stealing). The listener is one
//! socket; the accept loop is a task like the others.
//!
//! `--runtime per-core` lays the same code out the other way: one current-thread runtime
//! per worker (`tokio-core-N`), each with its own `SO_REUSEPORT` listener, accept loop and
//! database client, so a connection and its queries stay on the thread the kernel handed
//! it to (the io-uring variant's layout, and may-minihttp's or actix's). Nothing is stolen,
//! so no worker wakes another with a `futex`, but one busy connection cannot move to an
//! idle core either. The main thread only waits for SIGINT/SIGTERM.
//!
//! Where the syscalls come from, per keep-alive request: one `recvfrom` when epoll said
//! the socket is readable (tokio stops at a short read instead of reading again until
//! EAGAIN), one `sendto`/`writev` of the response (pipelined responses are flushed
//! together), and a share of `epoll_wait` that falls as load rises, because one wake-up
//! serves every ready socket. A database route adds, per query, one `sendto` of
//! Bind/Execute/Sync and one or more `recvfrom` on the database socket, plus the
//! `epoll_wait` that waits for the answer. Wake-ups between workers are `futex` calls.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, DATE, SERVER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::app::{self, Resolved};
use crate::cli::{Args, RuntimeLayout};
use crate::database::AsyncDatabase;
use crate::metrics::METRICS;
use crate::{date, logging};

pub fn run(args: &Args) -> Result<()> {
    let setup = Setup {
        url: args.database_url(),
        knobs: args.knobs()?,
        http: http_builder(args),
        nodelay: args.nodelay(),
        send_timeout: args.send_timeout(),
    };
    args.split_writes()?;
    match args.runtime {
        RuntimeLayout::Shared => run_shared(args, setup),
        RuntimeLayout::PerCore => run_per_core(args, setup),
    }
}

/// What every accept loop needs, whatever the runtime layout.
struct Setup {
    url: String,
    knobs: crate::database::Knobs,
    http: http1::Builder,
    nodelay: bool,
    send_timeout: Duration,
}

/// `--runtime shared` (the default): one multi-thread runtime, one listener, one store.
fn run_shared(args: &Args, setup: Setup) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers())
        .thread_name("tokio-worker")
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // The pipelined client shares `--db-shared` connections per worker thread.
    let store = Arc::new(AsyncDatabase::new(
        args.db_client,
        &setup.url,
        args.pool_size(),
        args.workers() * args.db_shared(),
        setup.knobs,
    )?);
    runtime.block_on(async {
        let listener = listen(args.listen)?;
        tracing::info!(
            "epoll variant serving http://{} with {} worker threads (one shared runtime), database client {:?} (up to {} pooled connections for sqlx, {} shared per worker for pipelined), log {:?}",
            listener.local_addr()?,
            args.workers(),
            args.db_client,
            args.pool_size(),
            args.db_shared(),
            args.log
        );
        accept_loop(listener, &setup, store, true, super::shutdown_signal()).await;
        Ok(())
    })
}

/// `--runtime per-core`: one current-thread runtime per worker, each with its own
/// `SO_REUSEPORT` listener and store; the main thread waits for a signal and stops them.
fn run_per_core(args: &Args, setup: Setup) -> Result<()> {
    let workers = args.workers();
    let (listeners, addr) = super::reuseport_listeners(args.listen, workers)?;
    let sizes = super::split_pool(args.pool_size(), workers);
    let stores = sizes
        .iter()
        // The pipelined client: `--db-shared` connections per runtime (default one), used
        // only by its thread.
        .map(|&size| {
            AsyncDatabase::new(
                args.db_client,
                &setup.url,
                size,
                args.db_shared(),
                setup.knobs,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let (stop, stop_signal) = watch::channel(false);
    let (ended, ended_signal) = tokio::sync::mpsc::unbounded_channel::<usize>();

    std::thread::scope(|scope| {
        let mut threads = Vec::with_capacity(workers);
        for (index, (listener, store)) in listeners.into_iter().zip(stores).enumerate() {
            let setup = &setup;
            let mut stop_signal = stop_signal.clone();
            let ended = ended.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tokio-core-{index}"))
                .spawn_scoped(scope, move || -> Result<()> {
                    let _ended = super::EndNotice(index, ended);
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("starting a per-core tokio runtime")?;
                    runtime.block_on(async move {
                        let listener = std::net::TcpListener::from(listener);
                        listener.set_nonblocking(true)?;
                        let listener = TcpListener::from_std(listener)?;
                        let stopped = async move { drop(stop_signal.wait_for(|stop| *stop).await) };
                        // One runtime reports whether the database answers, not all of them.
                        accept_loop(listener, setup, Arc::new(store), index == 0, stopped).await;
                        Ok(())
                    })
                });
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(error) => {
                    let _ = stop.send(true);
                    return Err(anyhow!(error).context("starting a runtime thread"));
                }
            }
        }
        drop(ended);
        tracing::info!(
            "epoll variant serving http://{addr} with {workers} per-core runtimes (one thread and SO_REUSEPORT listener each), database client {:?} ({}; pipelined: {} per runtime), log {:?}",
            args.db_client,
            super::describe_split(&sizes),
            args.db_shared(),
            args.log
        );
        // Stop the runtimes whatever happened here: the scope waits for their threads.
        let ended_early = super::wait_for_stop(ended_signal);
        let _ = stop.send(true);
        let mut failure = None;
        for thread in threads {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => drop(failure.get_or_insert(error)),
                Err(_) => drop(failure.get_or_insert_with(|| anyhow!("a runtime thread panicked"))),
            }
        }
        if let Some(error) = failure {
            return Err(error);
        }
        if let Some(index) = ended_early? {
            return Err(anyhow!("runtime tokio-core-{index} stopped unexpectedly"));
        }
        Ok(())
    })
}

/// Keeps a timer due within a second for as long as the server runs, which saves an
/// `eventfd` write on most requests.
///
/// hyper arms a header-read timeout (`--header-timeout`, 10 s) for every request and
/// cancels it when the head has arrived. tokio's timer wakes the I/O driver (a `write` to
/// its eventfd, counted as event-loop) whenever a timer is set *earlier than the next
/// wake-up the driver parked with*, and when the driver parked with no timer at all, any
/// timer is earlier. Under load the timeouts come and go so fast that the driver often
/// parks with none pending: 0.35 such writes per `/db` request with `--runtime per-core`.
/// With this timer always due within a second, a new 10 s timeout is never the earliest.
async fn timer_anchor() {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn http_builder(args: &Args) -> http1::Builder {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(args.header_timeout())
        .keep_alive(true)
        // The codec's limits, so that every variant rejects the same requests: a head
        // over 8 KiB (hyper's smallest buffer) or with more than 64 fields gets 431.
        .max_buf_size(crate::http1::MAX_HEAD)
        .max_headers(crate::http1::MAX_HEADERS)
        // A client that shuts its write side after the request still gets the answer.
        .half_close(true)
        // Responses to pipelined requests leave in one write, not one each.
        .pipeline_flush(true)
        // The shared date cache sets the header; hyper would format its own.
        .auto_date_header(false);
    http
}

/// Accepts connections and spawns a task for each until `stopped` resolves, then asks
/// the connections to finish and waits for them (at most [`super::SHUTDOWN_GRACE`]).
/// `watch_database`: also log when the database first answers (one loop per server does).
async fn accept_loop(
    listener: TcpListener,
    setup: &Setup,
    store: Arc<AsyncDatabase>,
    watch_database: bool,
    stopped: impl Future<Output = ()>,
) {
    if watch_database {
        let watched = store.clone();
        let redacted = db::redact(&setup.url);
        tokio::spawn(async move { watched.wait_until_reachable(redacted).await });
    }
    // Every connection task holds a receiver: `send(true)` asks them to finish, and
    // `closed()` resolves when the last one has.
    let (stop_connections, stop_signal) = watch::channel(false);
    let anchor = tokio::spawn(timer_anchor());
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Responses are written whole; Nagle would only delay them (`--nodelay off` shows how).
                    if setup.nodelay {
                        let _ = stream.set_nodelay(true);
                    }
                    tokio::spawn(serve_connection(setup.http.clone(), stream, store.clone(), setup.send_timeout, stop_signal.clone()));
                }
                Err(error) => {
                    // EMFILE and friends: wait a little rather than spin on a full fd table.
                    tracing::warn!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut stopped => break,
        }
    }
    drop(listener);
    drop(stop_signal);
    anchor.abort();
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop_connections.send(true);
    tokio::select! {
        _ = stop_connections.closed() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(super::SHUTDOWN_GRACE) => {
            tracing::warn!("gave up on connections still open after {:?}", super::SHUTDOWN_GRACE)
        }
    }
}

/// Serves one connection until it closes, or until shutdown asks it to finish its
/// current request. hyper drops a connection whose request head it cannot parse or that
/// timed out without answering; the status the client is owed (400, 431, 408) is written
/// here instead, on the socket hyper hands back.
async fn serve_connection(
    http: http1::Builder,
    stream: TcpStream,
    store: Arc<AsyncDatabase>,
    send_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| handle(request, store.clone()));
    let mut connection = http.serve_connection(
        TokioIo::new(DeferredShutdown::new(stream, send_timeout)),
        service,
    );
    let result = tokio::select! {
        result = &mut connection => result,
        _ = async { drop(stop.wait_for(|stop| *stop).await) } => {
            Pin::new(&mut connection).graceful_shutdown();
            (&mut connection).await
        }
    };
    let mut stream = connection.into_parts().io.into_inner().stream;
    let Err(error) = result else {
        let _ = stream.shutdown().await;
        return;
    };
    let status = if error.is_parse_too_large() {
        431
    } else if error.is_parse() {
        400
    } else if error.is_timeout() {
        408
    } else {
        tracing::debug!("connection ended with an error: {error}");
        return;
    };
    METRICS.record("bad_request", status, Duration::ZERO);
    // Bounded like every other write: this client may not be reading either.
    let owed = app::error_response_bytes(status);
    let _ = tokio::time::timeout(send_timeout, stream.write_all(&owed)).await;
    let _ = stream.shutdown().await;
}

/// The client socket as hyper sees it, except that hyper's `shutdown` is put off: on a
/// parse error hyper shuts the write side before anything is written, and the status the
/// client is owed could no longer be sent. The connection task shuts the socket itself
/// once hyper is done. Reads and writes go straight to tokio's `TcpStream`, so their
/// syscalls are the same as without the wrapper.
///
/// It also bounds a write that makes no progress (`--send-timeout`), which hyper does not:
/// a client that stops reading while its pipelined responses pile up would otherwise hold
/// its task and buffers forever. The timer is armed only when a write finds the socket
/// full (`EAGAIN`, so no syscall of its own) and dropped as soon as a write succeeds.
struct DeferredShutdown {
    stream: TcpStream,
    send_timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl DeferredShutdown {
    fn new(stream: TcpStream, send_timeout: Duration) -> Self {
        DeferredShutdown {
            stream,
            send_timeout,
            stalled: None,
        }
    }

    /// Passes a write's outcome on, timing how long the socket has refused to take bytes.
    fn bound_stall(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        if written.is_ready() {
            self.stalled = None;
            return written;
        }
        let timeout = self.send_timeout;
        let stall = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing for the send timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncRead for DeferredShutdown {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for DeferredShutdown {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.bound_stall(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.bound_stall(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr} (is another server running there?)"))?;
    Ok(socket.listen(super::LISTEN_BACKLOG)?)
}

async fn handle(
    request: Request<Incoming>,
    store: Arc<AsyncDatabase>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let _in_flight = METRICS.start_request();
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    // The codec's rules, so that every variant refuses the same bodies: any
    // Transfer-Encoding is 501, a Content-Length over the limit is 413.
    if request
        .headers()
        .contains_key(hyper::header::TRANSFER_ENCODING)
    {
        METRICS.record("bad_request", 501, started.elapsed());
        return Ok(rejection(501));
    }
    if declared_body_length(&request) > crate::http1::MAX_BODY {
        METRICS.record("bad_request", 413, started.elapsed());
        return Ok(rejection(413));
    }
    let resolved = app::resolve(request.method().as_str(), target);
    let response = match resolved {
        Resolved::Route(route) => app::respond(route, &*store).await,
        Resolved::NotFound => app::Response::not_found(),
        Resolved::MethodNotAllowed => app::Response::method_not_allowed(),
    };
    let elapsed = started.elapsed();
    METRICS.record(resolved.label(), response.status, elapsed);
    logging::request(request.method().as_str(), target, response.status, elapsed);
    Ok(to_hyper(response))
}

fn declared_body_length(request: &Request<Incoming>) -> usize {
    request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A request refused before routing, for its body: hyper closes the connection after a
/// response that says `Connection: close`, without reading the body.
fn rejection(status: u16) -> hyper::Response<Full<Bytes>> {
    let reason = if status == 501 {
        "transfer encoding not supported\n"
    } else {
        "request body too large\n"
    };
    let mut response = to_hyper(app::Response::text(status, reason));
    response
        .headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn to_hyper(response: app::Response) -> hyper::Response<Full<Bytes>> {
    let status = response.status;
    let mut out = hyper::Response::new(Full::new(response.body));
    *out.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    headers.insert(SERVER, HeaderValue::from_static(app::SERVER_NAME));
    if let Ok(date) = HeaderValue::from_bytes(&date::now()) {
        headers.insert(DATE, date);
    }
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(response.content_type),
    );
    if status == 405 {
        headers.insert(ALLOW, HeaderValue::from_static("GET"));
    }
    out
}
