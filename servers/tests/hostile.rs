//! The hostile-client suite: malformed, oversized, slow, vanishing and numerous clients,
//! against every variant. After each case the server must still answer a normal request,
//! and it must never panic, leak a descriptor or a thread, or hold a worker that others
//! need beyond the header timeout (1 s here, `--header-timeout 1`), nor one whose client
//! stopped reading beyond the send timeout (`--send-timeout 1` in that case). The io-uring
//! variant runs the suite twice: as it comes, and with `--registered-buffers on`.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use servers::launch::{LaunchOptions, ServerProcess};
use support::{attack, get, Http};

/// Starts `variant`; `io-uring+registered-buffers` is the io-uring variant with
/// `--registered-buffers on`, so that its READ_FIXED/WRITE_FIXED paths (and their fallback
/// when the pool runs dry) meet the same hostile clients.
fn start(variant: &str, extra: &[&str]) -> ServerProcess {
    start_with_header_timeout(variant, 1, extra)
}

fn start_with_header_timeout(variant: &str, seconds: u32, extra: &[&str]) -> ServerProcess {
    let (variant, knob) = variant.split_once('+').unwrap_or((variant, ""));
    let knob: &[&str] = match knob {
        "registered-buffers" => &["--registered-buffers", "on"],
        _ => &[],
    };
    let mut options = LaunchOptions::new(variant, &support::database_url());
    let seconds = seconds.to_string();
    options.extra_args = ["--header-timeout", &seconds]
        .iter()
        .chain(knob)
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    support::start_with(options)
}

fn assert_still_serving(server: &ServerProcess) {
    let reply = get(server.addr(), "/plaintext");
    assert_eq!(
        reply.status,
        200,
        "the server stopped serving:\n{}",
        server.stderr_tail(20)
    );
    assert!(
        !server.stderr().contains("panicked"),
        "the server panicked:\n{}",
        server.stderr()
    );
}

/// Sends `bytes`, reads what the server says until it closes, returns the status line's code.
fn status_for(addr: SocketAddr, bytes: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(support::READ_TIMEOUT))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line before close: {text:?}"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Client connections of the server's port that the kernel still holds open on the
/// server's side (ESTABLISHED, or CLOSE_WAIT: the client left and the server never
/// closed). Database connections the server opens are not counted.
fn open_client_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && matches!(fields.get(3), Some(&"01") | Some(&"08"))
        })
        .count()
}

/// The server's descriptors that are sockets on its own port: its listeners and its client
/// connections, whatever their TCP state. What a misbehaving client could leak; the
/// descriptors the database driver opens on first use (its connections, and the blocking
/// driver's own epoll and eventfd) are not counted.
fn port_fds(pid: u32, port: u16) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(true), Some(inode)) = (local_port.map(|p| p == port), fields.get(9)) {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    fd_targets(pid)
        .iter()
        .filter(|target| inodes.contains(*target))
        .count()
}

fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|entry| entry.ok())
                .filter_map(|entry| std::fs::read_link(entry.path()).ok())
                .map(|target| target.to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits for a count to come back to at most `limit`.
fn settles(limit: usize, mut count: impl FnMut() -> usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = count();
        if now <= limit || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn malformed_heads(variant: &str) {
    let server = start(variant, &[]);
    let addr = server.addr();
    assert_eq!(status_for(addr, b"GARBAGE\x00\x01 nonsense\r\n\r\n"), 400);
    assert_eq!(
        status_for(addr, b"GET /plaintext HTTP/1.1\r\nBad Header\r\n\r\n"),
        400
    );
    assert_eq!(status_for(addr, b"GET /plaintext HTTP/9.9\r\n\r\n"), 400);
    assert_eq!(
        status_for(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        400,
        "a TLS hello"
    );
    let big = format!(
        "GET /plaintext HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    assert_eq!(status_for(addr, big.as_bytes()), 431);
    let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(
        status_for(
            addr,
            format!("GET /plaintext HTTP/1.1\r\n{many}\r\n").as_bytes()
        ),
        431
    );
    assert_still_serving(&server);
}

fn oversized_and_encoded_bodies(variant: &str) {
    let server = start(variant, &[]);
    let addr = server.addr();
    let status = status_for(
        addr,
        b"POST /json HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000\r\n\r\nxx",
    );
    assert_eq!(status, 413, "a body above the limit");
    let status = status_for(
        addr,
        b"POST /json HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(
        status == 501 || status == 400,
        "unsupported Transfer-Encoding answered {status}"
    );
    assert_still_serving(&server);
}

fn garbage_in_path_and_query(variant: &str) {
    let server = start(variant, &[]);
    let addr = server.addr();
    for request in [
        &b"GET /\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GET /queries?queries=\xff\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /plain\x00text HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\x00\x00\x00\x00\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(support::READ_TIMEOUT))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut reply = [0u8; 64];
        let n = stream.read(&mut reply).unwrap_or(0);
        let text = String::from_utf8_lossy(&reply[..n]).to_string();
        assert!(
            ["HTTP/1.1 400", "HTTP/1.1 404", "HTTP/1.1 200"]
                .iter()
                .any(|s| text.starts_with(s)),
            "{:?} got {text:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert_still_serving(&server);
}

fn silent_and_slow_clients_get_408(variant: &str) {
    // Two workers only, so that two silent clients would starve everyone if they could.
    let server = start(variant, &["--workers", "2"]);
    let addr = server.addr();
    let silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // A fresh client is answered once the silent ones have been timed out, at the latest.
    // In the thread pool it waits for a worker, so one silent client may be shed for it
    // (503) before its header timeout; the other is still timed out.
    let mut fresh = Http::connect(addr);
    assert_eq!(fresh.get("/plaintext").status, 200);
    let mut replies = Vec::new();
    for mut stream in silent {
        stream
            .set_read_timeout(Some(support::READ_TIMEOUT))
            .unwrap();
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        assert!(
            reply.starts_with("HTTP/1.1 408") || reply.starts_with("HTTP/1.1 503"),
            "a silent client got {reply:?}"
        );
        replies.push(reply);
    }
    assert!(
        replies.iter().any(|r| r.starts_with("HTTP/1.1 408")),
        "no silent client was timed out: {replies:?}"
    );
    // Slowloris: one byte every 200 ms would take 8 s; the head must be complete in 1 s.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let request = b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX-Slow: yes\r\n\r\n";
    let mut reply = Vec::new();
    for byte in request {
        if slow.write_all(&[*byte]).is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "a slowloris client got {text:?}"
    );
    assert_still_serving(&server);
}

fn vanishing_clients_leak_nothing(variant: &str) {
    let server = start(variant, &[]);
    let addr = server.addr();
    assert_still_serving(&server);
    let threads_before = threads(server.pid());
    for round in 0..30 {
        let stream = TcpStream::connect(addr).unwrap();
        let mut stream = stream;
        // A large response, then a reset (linger 0) before reading it.
        let _ = stream.write_all(b"GET /queries?queries=300 HTTP/1.1\r\nHost: a\r\n\r\n");
        let socket = socket2::SockRef::from(&stream);
        socket.set_linger(Some(Duration::ZERO)).unwrap();
        if round % 2 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(stream);
        // A half-close: the request is still answered, then the server closes.
        let mut half = TcpStream::connect(addr).unwrap();
        half.set_read_timeout(Some(support::READ_TIMEOUT)).unwrap();
        half.write_all(b"GET /json HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        half.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        let _ = half.read_to_string(&mut reply);
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "half-closed client got {reply:?}"
        );
    }
    assert_still_serving(&server);
    let left_open = settles(0, || open_client_sockets(addr.port()));
    assert_eq!(left_open, 0, "client sockets the server never closed");
    let now = settles(threads_before, || threads(server.pid()));
    assert!(
        now <= threads_before,
        "threads leaked: {threads_before} before, {now} after"
    );
}

/// A client that pipelines requests with large responses and never reads them: once the
/// server's writes stop making progress for `--send-timeout`, it closes the connection,
/// and its descriptors and threads come back; a fresh client is answered meanwhile.
fn stalled_reader_is_cut_off(variant: &str) {
    let server = start(variant, &["--send-timeout", "1"]);
    let addr = server.addr();
    assert_still_serving(&server);
    let (fds_before, threads_before) = (port_fds(server.pid(), addr.port()), threads(server.pid()));

    // A small receive buffer, so that the client's window closes soon: the server's
    // socket buffer fills and its writes stall instead of being swallowed by the kernel.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stalled: TcpStream = socket.into();
    let mut writer = stalled.try_clone().unwrap();
    // 8000 requests whose responses (about 1.2 KB each, 10 MB in all) are far more than
    // the socket buffers on both sides hold. Writing stops early when the server stops
    // taking requests (it stops reading while its own writes are stuck). Bounded, because
    // a server that answers pipelined requests before writing any (hyper delays its flush
    // while more requests are buffered) would otherwise be kept busy for as long as the
    // client keeps sending.
    let pipeliner = std::thread::spawn(move || {
        writer
            .set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let batch = b"GET /fortunes HTTP/1.1\r\nHost: a\r\n\r\n".repeat(32);
        let mut sent = 0usize;
        for _ in 0..250 {
            if writer.write_all(&batch).is_err() {
                break;
            }
            sent += batch.len();
        }
        sent
    });

    // Served meanwhile, whatever the stalled connection holds.
    assert_still_serving(&server);
    let sent = pipeliner.join().unwrap();
    assert!(
        sent > 0,
        "the stalled client could not even send its requests"
    );

    let left_open = settles(0, || open_client_sockets(addr.port()));
    assert_eq!(
        left_open,
        0,
        "the server kept the connection of a client that stopped reading:\n{}",
        server.stderr_tail(20)
    );
    // The client sees the end too: end of file or a reset, not a connection still open.
    let mut stalled = stalled;
    stalled
        .set_read_timeout(Some(support::READ_TIMEOUT))
        .unwrap();
    let mut sink = [0u8; 64 * 1024];
    let ended = loop {
        match stalled.read(&mut sink) {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(
        ended.is_ok(),
        "the stalled connection is still open: {ended:?}"
    );
    drop(stalled);

    assert_still_serving(&server);
    let fds_now = settles(fds_before, || port_fds(server.pid(), addr.port()));
    assert!(
        fds_now <= fds_before,
        "descriptors leaked: {fds_before} before, {fds_now} after: {:?}",
        fd_targets(server.pid())
    );
    let threads_now = settles(threads_before, || threads(server.pid()));
    assert!(
        threads_now <= threads_before,
        "threads leaked: {threads_before} before, {threads_now} after"
    );
}

fn thousands_of_idle_connections(variant: &str) {
    attack::raise_fd_limit();
    let server = start(
        variant,
        &["--max-threads", "512", "--workers", "64", "--queue", "256"],
    );
    let addr = server.addr();
    let idle: Vec<TcpStream> = (0..2_000)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    assert!(
        idle.len() >= 1_900,
        "only {} connections opened",
        idle.len()
    );
    std::thread::sleep(Duration::from_millis(300));
    let (threads_now, fds_now) = (threads(server.pid()), open_fds(server.pid()));
    // A fresh client is answered (after the idle ones time out, where workers are few).
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = get(addr, "/plaintext").status;
        if status == 200 || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        status, 200,
        "a fresh client was not served while 2000 connections idled"
    );
    assert!(
        threads_now <= 512 + 16,
        "{threads_now} threads for 2000 idle connections"
    );
    // One per connection, plus what the workers hold: an io-uring runtime has its ring,
    // two epoll instances, an eventfd, a signal socket and its listener.
    assert!(fds_now <= 2_000 + 64 * 8, "{fds_now} descriptors open");
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap())
        })
        .unwrap();
    assert!(
        rss_kib < 512 * 1024,
        "RSS {rss_kib} KiB with 2000 idle connections"
    );
    drop(idle);
    assert_still_serving(&server);
}

/// Issue 16: clients that send half a request head and go quiet, more of them than the
/// server has threads and queue slots, with a header timeout of a minute. A new client is
/// served while they stay connected: the blocking variants give it the thread of a
/// connection that has waited longest for its request (`--busy-header-timeout`, 500 ms by
/// default), the async ones never needed to. The new client retries while it is answered
/// 503, as a browser would, for half the header timeout: if it is served, it was not by
/// the header timeout freeing a thread. Afterwards nothing leaks, and load is served.
fn half_sent_heads_do_not_starve_new_clients(variant: &str) {
    const ATTACKERS: usize = 200;
    attack::raise_fd_limit();
    let limits: &[&str] = match variant {
        "thread-pool" => &["--workers", "8", "--queue", "32"],
        "thread-per-request" => &["--max-threads", "40"],
        _ => &[],
    };
    let server = start_with_header_timeout(variant, 60, limits);
    let (addr, pid) = (server.addr(), server.pid());
    assert_still_serving(&server);
    let (fds_before, threads_before) = (port_fds(pid, addr.port()), threads(pid));

    let attackers = attack::open(addr, ATTACKERS);
    assert_eq!(attackers.len(), ATTACKERS, "attacking connections opened");
    let served = attack::until_served(addr, "/plaintext", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("the new client: {e}\n{}", server.stderr_tail(20)));
    let fates = attack::Fates::of(&attackers);
    assert_eq!(
        served.status, 200,
        "a new client was not served in 30 s ({} tries answered 503) while {ATTACKERS} half-sent heads held the server; attackers: {fates}",
        served.refused
    );
    // The header timeout never fired: an attacker is still connected, or was shed with 503
    // to make room.
    assert!(
        fates.answered.iter().all(|(status, _)| *status == 503),
        "attackers: {fates}"
    );
    match variant {
        "thread-pool" | "thread-per-request" => assert!(
            fates.open > 0,
            "every attacker was shed, not just enough of them: {fates}"
        ),
        _ => assert_eq!(fates.open, ATTACKERS, "an async variant shed: {fates}"),
    }

    drop(attackers);
    let fds_now = settles(fds_before, || port_fds(pid, addr.port()));
    assert!(
        fds_now <= fds_before,
        "descriptors leaked: {fds_before} before the attack, {fds_now} after: {:?}",
        fd_targets(pid)
    );
    let threads_now = settles(threads_before, || threads(pid));
    assert!(
        threads_now <= threads_before,
        "threads leaked: {threads_before} before the attack, {threads_now} after"
    );
    // Keep-alive load right after: 8 clients, 50 requests each, every one answered.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut http = Http::connect(addr);
                (0..50)
                    .filter(|_| http.get("/plaintext").status == 200)
                    .count()
            })
        })
        .collect();
    let answered: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(answered, 8 * 50, "requests answered 200 after the attack");
    assert_still_serving(&server);
}

macro_rules! hostile {
    ($($module:ident => $variant:literal),* $(,)?) => {$(
        mod $module {
            #[test] fn malformed_heads() { super::malformed_heads($variant) }
            #[test] fn oversized_and_encoded_bodies() { super::oversized_and_encoded_bodies($variant) }
            #[test] fn garbage_in_path_and_query() { super::garbage_in_path_and_query($variant) }
            #[test] fn silent_and_slow_clients_get_408() { super::silent_and_slow_clients_get_408($variant) }
            #[test] fn vanishing_clients_leak_nothing() { super::vanishing_clients_leak_nothing($variant) }
            #[test] fn stalled_reader_is_cut_off() { super::stalled_reader_is_cut_off($variant) }
            #[test] fn thousands_of_idle_connections() { super::thousands_of_idle_connections($variant) }
            #[test] fn half_sent_heads_do_not_starve_new_clients() { super::half_sent_heads_do_not_starve_new_clients($variant) }
        }
    )*};
}

hostile!(
    epoll => "epoll",
    thread_per_request => "thread-per-request",
    thread_pool => "thread-pool",
    io_uring => "io-uring",
    io_uring_registered_buffers => "io-uring+registered-buffers",
);
