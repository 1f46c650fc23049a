//! The tracer against the lab's own servers under load, with real PostgreSQL (issue 5's
//! proof). Needs root, `cargo build --workspace --bins` (the `server` binary next to this
//! test's target dir) and PostgreSQL binaries for the db crate's test cluster.
//!
//! The figures each test measures are printed (`cargo test -- --nocapture` shows them).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tracer::{start, Backend, Category, Kind, Options, Overrides, Profile, Target};

fn database_url() -> String {
    db::Database::ready_for_tests().unwrap_or_else(|e| panic!("{e:#}"))
}

/// One load test at a time: they share 2 cores, and timing-dependent servers (header
/// timeouts) under a ptrace tracer should not also compete with another test's load.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Server {
    child: Reap,
    port: u16,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

fn server(variant: &str, log: &str) -> Server {
    server_with(variant, log, &[])
}

fn server_with(variant: &str, log: &str, extra: &[&str]) -> Server {
    let url = database_url();
    let port = free_port();
    let log_path = std::env::temp_dir().join(format!("tracer-test-server-{port}.log"));
    let mut child = Command::new(server_bin())
        .args(["--variant", variant, "--log", log])
        .arg("--log-file")
        .arg(&log_path)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--database-url", &url])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    if let Ok(Some(st)) = child.try_wait() {
        panic!("server --variant {variant} exited at start ({st}): does it support this variant?");
    }
    let s = Server {
        child: Reap(child),
        port,
        log: log_path,
    };
    wait_http_ok(port, "/health", Duration::from_secs(60));
    s
}

/// The eBPF backend with the context discovered from the server itself (its
/// `--database-url`, LISTEN socket and open log file).
fn ebpf(pid: i32) -> Options {
    assert!(tracer::procfs::alive(pid), "server {pid} is gone");
    Options {
        backend: Backend::Ebpf,
        overrides: Overrides::default(),
        variant: None,
        children: true,
        companions: Vec::new(),
    }
}

/// Every syscall above 1% of strace's total agrees within 2%; returns the comparison.
fn agree_with_strace(p: &Profile, st: &BTreeMap<String, (u64, u64)>, what: &str) {
    let total: u64 = st.values().map(|v| v.0).sum();
    let n = p.requests.unwrap_or(1) as f64;
    println!("{what}: syscall, strace per request, eBPF per request, difference");
    let mut bad = Vec::new();
    for (name, (calls, _)) in st {
        if (*calls as f64) < 0.01 * total as f64 {
            continue;
        }
        let ours = p.syscall_total(name).count;
        let d = rel(ours as f64, *calls as f64);
        println!(
            "  {name:<16} {:>8.3} {:>8.3} {:>6.2}%",
            *calls as f64 / n,
            ours as f64 / n,
            d * 100.0
        );
        if d >= 0.02 {
            bad.push(format!("{name}: strace {calls}, eBPF {ours}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: disagreement with strace -f -c: {bad:?}\n{}",
        tracer::render::table(p)
    );
}

/// eBPF and strace attached at the same time to a variant serving `n` /db requests.
fn ebpf_and_strace_on_db(variant: &str, n: usize) {
    require_root();
    let s = server(variant, "off");
    http_load(s.port, "/db", 4, 100); // warm the pool and the statement cache
    let pid = s.child.0.id() as i32;
    let session = start(Target::Pid(pid), ebpf(pid)).unwrap();
    let strace = Strace::attach(pid);
    let conns = 8;
    let (sent, recvd) = http_load(s.port, "/db", conns, n / conns);
    std::thread::sleep(Duration::from_millis(300));
    let st = strace.finish();
    let mut p = session.stop().unwrap();
    p.per_request(n as u64);
    agree_with_strace(&p, &st, &format!("{variant} /db x{n}"));

    // Bytes on client sockets are what the client sent and received.
    let net = &p.category(Category::Network).syscalls;
    let reads: u64 = p
        .calls
        .iter()
        .filter(|c| c.category == Category::Network && c.kind == Kind::Syscall)
        .filter(|c| ["read", "recvfrom", "recvmsg", "readv"].contains(&c.name.as_str()))
        .map(|c| c.stats.bytes)
        .sum();
    let writes = net.bytes - reads;
    println!(
        "{variant}: network bytes read {reads} (client sent {sent}), written {writes} (client \
         received {recvd})"
    );
    assert!(
        rel(reads as f64, sent as f64) < 0.02,
        "read {reads}, sent {sent}"
    );
    assert!(
        rel(writes as f64, recvd as f64) < 0.02,
        "written {writes}, received {recvd}"
    );

    // One query per /db request: one database write (Bind/Execute/Sync) per request.
    let db = p.category(Category::Database);
    let dbw: Vec<_> = p
        .calls
        .iter()
        .filter(|c| c.category == Category::Database)
        .filter(|c| ["write", "sendto", "sendmsg", "writev"].contains(&c.name.as_str()))
        .collect();
    let wcount: u64 = dbw.iter().map(|c| c.stats.count).sum();
    let wbytes: u64 = dbw.iter().map(|c| c.stats.bytes).sum();
    println!(
        "{variant}: database writes per request {:.3}, {:.1} bytes each; database calls per \
         request {:.2}",
        wcount as f64 / n as f64,
        wbytes as f64 / wcount.max(1) as f64,
        db.syscalls.count as f64 / n as f64
    );
    assert!(
        rel(wcount as f64 / n as f64, 1.0) < 0.02,
        "database writes per /db request: {}\n{}",
        wcount as f64 / n as f64,
        tracer::render::table(&p)
    );
    // A Bind+Execute+Sync of one prepared statement with one int4 parameter.
    let per = wbytes as f64 / wcount as f64;
    assert!(
        (30.0..200.0).contains(&per),
        "{per} bytes per database write"
    );
}

#[test]
fn epoll_db_ebpf_agrees_with_strace() {
    let _serial = serial();
    ebpf_and_strace_on_db("epoll", 20_000);
}

#[test]
fn thread_pool_db_ebpf_agrees_with_strace() {
    let _serial = serial();
    ebpf_and_strace_on_db("thread-pool", 20_000);
}

/// Successful calls per request of a name in the I/O categories (network, database,
/// logging), if nearly all (99%) of that name's calls are there: strace cannot split a
/// name by fd, and the rest (eventfd wake-up writes, say) depends on timing.
fn io_calls_per_request(p: &Profile, n: f64) -> BTreeMap<String, f64> {
    let mut io: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for c in p.calls.iter().filter(|c| c.kind == Kind::Syscall) {
        let ok = c.stats.count - c.stats.errors - c.stats.eagain;
        let e = io.entry(c.name.clone()).or_default();
        if c.category.is_io() {
            e.0 += ok;
        } else {
            e.1 += c.stats.count;
        }
    }
    io.into_iter()
        .filter(|(_, (i, other))| *i as f64 / n >= 0.05 && (*other as f64) < 0.01 * *i as f64)
        .map(|(k, (i, _))| (k, i as f64 / n))
        .collect()
}

#[test]
fn epoll_db_ptrace_agrees_with_strace_on_request_io() {
    let _serial = serial();
    require_root();
    let n = 4000;
    let conns = 8;
    // One runtime worker in both runs: with two, tokio wakes the other worker by
    // writing to an eventfd, a timing-dependent `write` that strace cannot tell from the
    // log's writes (it counts calls, not files).
    let s = server_with("epoll", "sync", &["--workers", "1"]);
    http_load(s.port, "/db", 4, 100);
    let pid = s.child.0.id() as i32;
    let o = Options {
        backend: Backend::Ptrace,
        overrides: Overrides::default(),
        variant: None,
        children: true,
        companions: Vec::new(),
    };
    let session = start(Target::Pid(pid), o).unwrap();
    http_load(s.port, "/db", conns, n / conns);
    std::thread::sleep(Duration::from_millis(300));
    let mut p = session.stop().unwrap();
    p.per_request(n as u64);
    // Still serving, untraced.
    http_load(s.port, "/db", 1, 10);

    let s2 = server_with("epoll", "sync", &["--workers", "1"]);
    http_load(s2.port, "/db", 4, 100);
    let strace = Strace::attach(s2.child.0.id() as i32);
    http_load(s2.port, "/db", conns, n / conns);
    std::thread::sleep(Duration::from_millis(300));
    let st = strace.finish();

    let ours = io_calls_per_request(&p, n as f64);
    println!("epoll /db x{n}, ptrace vs strace (separate runs), successful I/O calls per request:");
    let mut bad = Vec::new();
    for (name, v) in &ours {
        let theirs = st
            .get(name)
            .map(|(c, e)| (c - e) as f64 / n as f64)
            .unwrap_or(0.0);
        let d = rel(*v, theirs);
        println!(
            "  {name:<12} ptrace {v:>7.3} strace {theirs:>7.3} {:>6.2}%",
            d * 100.0
        );
        if d >= 0.02 {
            bad.push(name.clone());
        }
    }
    println!("  reported, not compared (timing-dependent):");
    let compared: Vec<&str> = ours.keys().map(String::as_str).collect();
    for name in ["epoll_wait", "futex", "recvfrom", "write", "sched_yield"] {
        if compared.contains(&name) {
            continue;
        }
        let (c, e) = st.get(name).copied().unwrap_or((0, 0));
        println!(
            "  {name:<12} ptrace {:>7.3} strace {:>7.3} (errors {e})",
            p.syscall_total(name).count as f64 / n as f64,
            c as f64 / n as f64
        );
    }
    assert!(!ours.is_empty(), "{}", tracer::render::table(&p));
    assert!(
        bad.is_empty(),
        "disagree: {bad:?}\n{}",
        tracer::render::table(&p)
    );
    // Logging: at least one write per request in sync mode.
    assert!(p.category(Category::Logging).syscalls.count as f64 / n as f64 >= 1.0);
}

fn logging_writes_per_request(log: &str) -> f64 {
    require_root();
    let s = server("epoll", log);
    http_load(s.port, "/plaintext", 2, 100);
    let pid = s.child.0.id() as i32;
    let session = start(Target::Pid(pid), ebpf(pid)).unwrap();
    let n = 3000;
    http_load(s.port, "/plaintext", 4, n / 4);
    // buffered mode flushes every 100 ms: let the last flush land in the window.
    std::thread::sleep(Duration::from_millis(300));
    let mut p = session.stop().unwrap();
    p.per_request(n as u64);
    let w: u64 = p
        .calls
        .iter()
        .filter(|c| c.category == Category::Logging)
        .filter(|c| ["write", "writev", "pwrite64"].contains(&c.name.as_str()))
        .map(|c| c.stats.count)
        .sum();
    let per = w as f64 / n as f64;
    println!("--log {log}: {per:.3} logging writes per request");
    if per == 0.0 && log != "off" {
        println!("{}", tracer::render::table(&p));
    }
    per
}

#[test]
fn logging_modes_show_in_logging_writes() {
    let _serial = serial();
    let sync = logging_writes_per_request("sync");
    assert!(sync >= 1.0, "--log sync: {sync} logging writes per request");
    let off = logging_writes_per_request("off");
    assert_eq!(off, 0.0, "--log off: {off} logging writes per request");
    let buffered = logging_writes_per_request("buffered");
    assert!(
        buffered < 0.1,
        "--log buffered: {buffered} logging writes per request, expected far fewer than one"
    );
}

/// `n` requests for `path` over 32 connections (after a short warm-up), traced with eBPF.
fn traced_load(s: &Server, path: &str, n: usize) -> Profile {
    http_load(s.port, path, 4, 100);
    let pid = s.child.0.id() as i32;
    let session = start(Target::Pid(pid), ebpf(pid)).unwrap();
    http_load(s.port, path, 32, n / 32);
    std::thread::sleep(Duration::from_millis(200));
    let mut p = session.stop().unwrap();
    p.per_request(n as u64);
    p
}

fn plaintext_profile(variant: &str, n: usize) -> Profile {
    traced_load(&server(variant, "off"), "/plaintext", n)
}

#[test]
fn io_uring_ring_ops_are_network_and_syscalls_drop() {
    let _serial = serial();
    require_root();
    let n = 8000;
    let ring = plaintext_profile("io-uring", n);
    let epoll = plaintext_profile("epoll", n);
    let per = |p: &Profile| p.totals.syscalls.count as f64 / n as f64;
    let net_ring = ring.category(Category::Network).ring_ops.count as f64 / n as f64;
    println!(
        "/plaintext x{n}: io-uring {:.2} syscalls + {net_ring:.2} network ring ops per request; \
         epoll {:.2} syscalls per request",
        per(&ring),
        per(&epoll)
    );
    for c in ring.calls.iter().filter(|c| c.kind == Kind::RingOp) {
        println!(
            "  ring op {:<10} {:<10} {:.3}/req",
            c.name,
            c.category.name(),
            c.stats.count as f64 / n as f64
        );
    }
    assert!(
        net_ring >= 1.0,
        "client socket ring operations should be network: {net_ring}/req\n{}",
        tracer::render::table(&ring)
    );
    assert!(
        per(&ring) < 0.5 * per(&epoll),
        "io-uring should make far fewer plain syscalls per request than epoll\n{}\n{}",
        tracer::render::table(&ring),
        tracer::render::table(&epoll)
    );
    // tokio-uring's epoll set holds the ring (the clients' completions) and the database
    // sockets: its waits are the event loop's, not the database's.
    let waits = |cat| {
        ring.call(Kind::Syscall, "epoll_wait", cat)
            .map_or(0, |r| r.stats.count)
    };
    assert!(
        waits(Category::EventLoop) > 0 && waits(Category::Database) == 0,
        "io-uring's epoll_wait: {} event-loop, {} database\n{}",
        waits(Category::EventLoop),
        waits(Category::Database),
        tracer::render::table(&ring)
    );
}

/// hyper arms a header-read timer for every request; tokio wakes its I/O driver with a
/// `write` to an eventfd when a timer is set earlier than the wake-up the driver parked
/// with. The epoll variant keeps a timer pending so that this costs no syscall per request
/// (`timer_anchor` in servers/src/io/epoll.rs): both runtime layouts are checked.
#[test]
fn epoll_requests_do_not_wake_the_driver_through_its_eventfd() {
    let _serial = serial();
    require_root();
    let setups: [&[&str]; 2] = [&[], &["--runtime", "per-core", "--db-client", "pipelined"]];
    for extra in setups {
        let n = 4000;
        let p = traced_load(&server_with("epoll", "off", extra), "/db", n);
        let writes = p
            .call(Kind::Syscall, "write", Category::EventLoop)
            .map_or(0, |r| r.stats.count) as f64
            / n as f64;
        println!("epoll {extra:?}: /db x{n}: {writes:.3} eventfd writes per request");
        assert!(
            writes < 0.02,
            "epoll {extra:?}: {writes:.3} event-loop writes (driver wake-ups) per request\n{}",
            tracer::render::table(&p)
        );
    }
}

/// The test cluster's postmaster: the process that listens on its port.
fn postmaster() -> i32 {
    let url = database_url();
    let port = match tracer::DbEndpoint::from_url(&url) {
        Some(tracer::DbEndpoint::Tcp { port, .. }) => port,
        other => panic!("the test database is not on TCP: {other:?}"),
    };
    tracer::procfs::listener_pid(port)
        .unwrap_or_else(|| panic!("no process listens on the test database's port {port}"))
}

/// Issue 16, point 5: `lab trace --pid <postmaster>` follows its children. Under /db load
/// from an epoll server, the client backends' reads and writes of their client sockets (the
/// server's database connections, seen from the database) appear per request as `network`,
/// beside the other roles of the tree.
#[test]
fn postmaster_trace_shows_backends_per_role() {
    let _serial = serial();
    require_root();
    let s = server("epoll", "off");
    http_load(s.port, "/db", 4, 100); // the pool's connections (backends) exist now
    let pm = postmaster();
    let session = start(Target::Pid(pm), Options::new(Backend::Ebpf)).unwrap();
    let n = 6000;
    http_load(s.port, "/db", 8, n / 8);
    // Long enough for the walwriter and the background writer (200 ms cycles) to show.
    std::thread::sleep(Duration::from_millis(600));
    let mut p = session.stop().unwrap();
    p.per_request(n as u64);
    let table = tracer::render::table(&p);
    println!("{table}");
    assert_eq!(p.target.pid, pm);
    let backend = |cat: Category| {
        p.processes
            .iter()
            .find(|r| r.process == "client backend" && r.category == cat)
    };
    let net = backend(Category::Network)
        .unwrap_or_else(|| panic!("no network calls of client backends\n{table}"));
    let per = |name: &str| *net.calls.get(name).unwrap_or(&0) as f64 / n as f64;
    // The backends read their socket without blocking until EAGAIN, then wait in epoll.
    let recv = p
        .call(Kind::Syscall, "recvfrom", Category::Network)
        .expect("network recvfrom")
        .stats
        .clone();
    let reads = (recv.count - recv.eagain - recv.errors) as f64 / n as f64;
    println!(
        "client backends ({} of them): recvfrom {:.3}/req ({reads:.3} with data), sendto \
         {:.3}/req",
        net.pids,
        per("recvfrom"),
        per("sendto")
    );
    assert!(
        per("recvfrom") >= recv.count as f64 / n as f64,
        "every network recvfrom of the tree is a client backend's\n{table}"
    );
    // One query per request: the backend reads it (recvfrom) and answers it (sendto). A
    // backend that finds a second query already waiting reads it in the same call.
    assert!(
        (0.5..=1.5).contains(&reads),
        "client backends' recvfrom with data per /db request: {reads}\n{table}"
    );
    assert!(
        (0.9..=1.5).contains(&per("sendto")),
        "client backends' sendto per /db request: {}\n{table}",
        per("sendto")
    );
    assert!(net.pids >= 1, "{table}");
    // The client sockets of the backends are none of the database's own: nothing of theirs
    // counts as `database` or is left in `other`.
    for cat in [Category::Database, Category::Other] {
        let calls = backend(cat).map_or(0, |r| {
            r.calls
                .iter()
                .filter(|(name, _)| ["recvfrom", "sendto"].contains(&name.as_str()))
                .map(|(_, c)| c)
                .sum()
        });
        assert_eq!(
            calls, 0,
            "client backends' socket calls in {cat:?}\n{table}"
        );
    }
    let roles: std::collections::BTreeSet<&str> =
        p.processes.iter().map(|r| r.process.as_str()).collect();
    assert!(
        roles.contains("walwriter") || roles.contains("background writer"),
        "PostgreSQL's auxiliary processes are traced too: {roles:?}\n{table}"
    );
    // Between queries a backend waits for its client: with no query in hand, that is
    // idle time, not a request's.
    let idle: u64 = p
        .processes
        .iter()
        .filter(|r| r.process == "client backend")
        .map(|r| r.idle_blocked_ns)
        .sum();
    assert!(
        idle > 0,
        "client backends' waits for the next query are idle\n{table}"
    );

    // --no-children: the postmaster alone, none of the backends' work.
    let only = start(
        Target::Pid(pm),
        Options {
            children: false,
            ..Options::new(Backend::Ebpf)
        },
    )
    .unwrap();
    http_load(s.port, "/db", 8, 500);
    let p = only.stop().unwrap();
    let other_roles: Vec<&str> = p
        .processes
        .iter()
        .filter(|r| r.count > 0 && r.process != "postmaster")
        .map(|r| r.process.as_str())
        .collect();
    assert!(
        other_roles.is_empty() && p.syscall_total("sendto").count == 0,
        "--no-children traced more than the postmaster: {other_roles:?}\n{}",
        tracer::render::table(&p)
    );
}

/// Issue 16, point 7: idle waits apart from the request path. A thread-pool server with
/// more workers than clients and the buffered log: the idle workers' waits for work and
/// the log writer's sleeps between flushes are idle; waits for the database are the
/// request path's.
#[test]
fn idle_threads_waits_are_apart_from_the_request_path() {
    let _serial = serial();
    require_root();
    let s = server_with("thread-pool", "buffered", &["--workers", "16"]);
    http_load(s.port, "/db", 4, 100);
    let pid = s.child.0.id() as i32;
    let session = start(Target::Pid(pid), ebpf(pid)).unwrap();
    let n = 4000;
    http_load(s.port, "/db", 4, n / 4);
    std::thread::sleep(Duration::from_millis(300));
    let mut p = session.stop().unwrap();
    p.per_request(n as u64);
    let table = tracer::render::table(&p);
    println!("{table}");
    let role = |name: &str, cat: Category| {
        p.roles
            .iter()
            .find(|r| r.role == name && r.category == cat)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} {cat:?} row\n{table}"))
    };
    let writer = role("log-writer", Category::Sync);
    assert!(
        writer.blocked_ns > 0 && writer.idle_blocked_ns == writer.blocked_ns,
        "the log writer serves no request: all its waits are idle ({} of {} ns)\n{table}",
        writer.idle_blocked_ns,
        writer.blocked_ns
    );
    let db = &p.category(Category::Database).syscalls;
    assert!(
        db.blocked_ns > 0 && db.idle_blocked_ns == 0,
        "waits for the database are the request path's: idle {} of {} ns\n{table}",
        db.idle_blocked_ns,
        db.blocked_ns
    );
    // 12 of the 16 workers hold no connection: their futex waits on the queue are idle.
    let sync = &p.category(Category::Sync).syscalls;
    assert!(
        sync.idle_blocked_ns as f64 >= 0.8 * sync.blocked_ns as f64,
        "sync waits: {} of {} ns idle; the idle workers' and the log writer's should be\n{table}",
        sync.idle_blocked_ns,
        sync.blocked_ns
    );
}
