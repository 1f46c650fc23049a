//! The conformance suite: every endpoint of `../shared/spec/workloads.md` checked against a
//! real `server` process and a real PostgreSQL. Each variant runs the same checks; adding
//! a variant is one line in the `conformance!` invocation at the bottom (`VARIANT+pipelined`
//! runs it with `--db-client pipelined`, `+per-core` with `--runtime per-core`).

mod support;

use std::time::{Duration, Instant, SystemTime};

use db::{Cluster, ClusterConfig};
use support::{get, start, Http, Reply};

fn assert_common_headers(reply: &Reply, content_type: &str) {
    assert_eq!(
        reply.status,
        200,
        "status; body {:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(
        reply.header("server").is_some_and(|s| !s.is_empty()),
        "no Server header: {:?}",
        reply.headers
    );
    let date = reply.header("date").expect("no Date header");
    let parsed = httpdate::parse_http_date(date)
        .unwrap_or_else(|e| panic!("Date {date:?} is not an HTTP date: {e}"));
    let skew = SystemTime::now().duration_since(parsed).unwrap_or_default();
    assert!(skew <= Duration::from_secs(2), "Date {date:?} is stale");
    assert_eq!(reply.header("content-type"), Some(content_type));
    let length: usize = reply
        .header("content-length")
        .expect("no Content-Length")
        .parse()
        .unwrap();
    assert_eq!(length, reply.body.len());
}

fn assert_world(value: &serde_json::Value) -> (i64, i64) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"));
    assert_eq!(object.len(), 2, "unexpected keys in {value}");
    let id = object["id"].as_i64().expect("id is an integer");
    let number = object["randomNumber"]
        .as_i64()
        .expect("randomNumber is an integer");
    assert!((1..=10_000).contains(&id), "id {id} out of range");
    assert!(
        (1..=10_000).contains(&number),
        "randomNumber {number} out of range"
    );
    (id, number)
}

fn plaintext(variant: &str) {
    let server = start(variant);
    let reply = get(server.addr(), "/plaintext");
    assert_common_headers(&reply, "text/plain");
    assert_eq!(reply.body, b"Hello, World!");
}

fn json(variant: &str) {
    let server = start(variant);
    let reply = get(server.addr(), "/json");
    assert_common_headers(&reply, "application/json");
    assert_eq!(reply.body, br#"{"message":"Hello, World!"}"#);
}

fn db_route(variant: &str) {
    let _no_updates = UPDATES_ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let server = start(variant);
    let mut http = Http::connect(server.addr());
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        let reply = http.get("/db");
        assert_common_headers(&reply, "application/json");
        let (id, number) = assert_world(&reply.json());
        assert_eq!(
            support_db::world(id),
            number,
            "row {id} differs from the database"
        );
        ids.insert(id);
    }
    assert!(ids.len() > 10, "ids are not random: {ids:?}");
}

fn queries_clamping(variant: &str) {
    let server = start(variant);
    let mut http = Http::connect(server.addr());
    for (target, expected) in [
        ("/queries?queries=2", 2),
        ("/queries?queries=0", 1),
        ("/queries?queries=foo", 1),
        ("/queries?queries=", 1),
        ("/queries", 1),
        ("/queries?queries=-7", 1),
        ("/queries?queries=501", 500),
        ("/queries?queries=18446744073709551617", 500),
        ("/queries?queries=20", 20),
    ] {
        let reply = http.get(target);
        assert_common_headers(&reply, "application/json");
        let rows = reply.json();
        let rows = rows
            .as_array()
            .unwrap_or_else(|| panic!("{target}: not an array"));
        assert_eq!(rows.len(), expected, "{target}");
        rows.iter().for_each(|row| {
            assert_world(row);
        });
    }
}

fn fortunes(variant: &str) {
    let server = start(variant);
    let reply = get(server.addr(), "/fortunes");
    assert_common_headers(&reply, "text/html; charset=utf-8");
    assert_eq!(
        String::from_utf8(reply.body.clone()).expect("UTF-8 body"),
        expected_fortunes_page()
    );
    let text = reply.text();
    assert!(
        text.contains("フレームワークのベンチマーク") && text.contains("\u{2014}"),
        "UTF-8 not raw"
    );
    // The apostrophe may be escaped as a numeric reference; nothing else may.
    let without_apostrophes = text.replace("&#x27;", "").replace("&#39;", "");
    assert!(
        !without_apostrophes.contains("&#"),
        "numeric character references where raw UTF-8 is required"
    );
}

/// The page the spec describes, built independently of the server's template.
fn expected_fortunes_page() -> String {
    let mut rows: Vec<(i32, String)> = db::schema::FORTUNES
        .iter()
        .map(|(i, m)| (*i, m.to_string()))
        .collect();
    rows.push((0, "Additional fortune added at request time.".into()));
    rows.sort_by(|a, b| a.1.as_bytes().cmp(b.1.as_bytes()));
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#x27;")
    };
    let mut page = String::from(
        "<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table><tr><th>id</th><th>message</th></tr>",
    );
    for (id, message) in rows {
        page += &format!("<tr><td>{id}</td><td>{}</td></tr>", escape(&message));
    }
    page + "</table></body></html>"
}

/// Held by `updates_persist` and `db_route`: the matrix runs in parallel threads of one
/// process, on one database, and an update may rewrite a random row between another test's
/// read through the server and its read-back from the database, failing a correct server.
static UPDATES_ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn updates_persist(variant: &str) {
    let _alone = UPDATES_ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let server = start(variant);
    let mut http = Http::connect(server.addr());
    for (target, expected) in [
        ("/updates?queries=5", 5),
        ("/updates?queries=foo", 1),
        ("/updates?queries=501", 500),
    ] {
        let reply = http.get(target);
        assert_common_headers(&reply, "application/json");
        let rows = reply.json();
        let rows = rows.as_array().expect("an array");
        assert_eq!(rows.len(), expected, "{target}");
        for row in rows {
            let (id, number) = assert_world(row);
            assert_eq!(
                support_db::world(id),
                number,
                "{target}: row {id} was not written"
            );
        }
    }
}

fn date_changes_across_seconds(variant: &str) {
    let server = start(variant);
    let mut http = Http::connect(server.addr());
    let first = http.get("/plaintext").header("date").unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1_100));
    let second = http.get("/plaintext").header("date").unwrap().to_string();
    assert_ne!(first, second, "the Date header is frozen");
}

fn pipelined_in_order(variant: &str) {
    let server = start(variant);
    let mut http = Http::connect(server.addr());
    let targets = [
        "/plaintext",
        "/json",
        "/db",
        "/queries?queries=3",
        "/plaintext",
        "/fortunes",
        "/json",
    ];
    let batch: String = targets
        .iter()
        .map(|t| format!("GET {t} HTTP/1.1\r\nHost: lab\r\n\r\n"))
        .collect();
    http.send(batch.as_bytes());
    for target in targets {
        let reply = http.read_reply();
        assert_eq!(reply.status, 200, "{target}");
        match target {
            "/plaintext" => assert_eq!(reply.body, b"Hello, World!"),
            "/json" => assert_eq!(reply.body, br#"{"message":"Hello, World!"}"#),
            "/db" => drop(assert_world(&reply.json())),
            "/queries?queries=3" => assert_eq!(reply.json().as_array().map(Vec::len), Some(3)),
            _ => assert!(
                reply.text().starts_with("<!DOCTYPE html>"),
                "{target} out of order"
            ),
        }
    }
}

fn http10_and_connection_close(variant: &str) {
    let server = start(variant);
    let mut http = Http::connect(server.addr());
    http.send(b"GET /json HTTP/1.0\r\n\r\n");
    let reply = http.read_reply();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, br#"{"message":"Hello, World!"}"#);
    assert!(
        http.closed_by_server(),
        "HTTP/1.0 without keep-alive must close"
    );

    let mut http = Http::connect(server.addr());
    http.send(b"GET /plaintext HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n");
    let reply = http.read_reply();
    assert_eq!(reply.body, b"Hello, World!");
    assert!(http.closed_by_server(), "Connection: close must close");
}

fn unknown_path_and_method(variant: &str) {
    let server = start(variant);
    let mut http = Http::connect(server.addr());
    assert_eq!(http.get("/nope").status, 404);
    assert_eq!(http.get("/plaintext/extra").status, 404);
    http.send(b"POST /json HTTP/1.1\r\nHost: lab\r\nContent-Length: 3\r\n\r\nabc");
    let reply = http.read_reply();
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET"));
    // The connection is still usable after both.
    assert_eq!(Http::connect(server.addr()).get("/plaintext").status, 200);
}

fn malformed_request_is_4xx(variant: &str) {
    let server = start(variant);
    let mut http = Http::connect(server.addr());
    http.send(b"GARBAGE\x00\x01 nonsense\r\n\r\n");
    let reply = http.read_reply();
    assert!((400..500).contains(&reply.status), "got {}", reply.status);
    assert_eq!(
        get(server.addr(), "/plaintext").status,
        200,
        "server stopped serving"
    );
}

fn metrics_and_health(variant: &str) {
    let server = start(variant);
    let mut http = Http::connect(server.addr());
    assert_eq!(http.get("/health").status, 200);
    for _ in 0..3 {
        assert_eq!(http.get("/db").status, 200);
    }
    let reply = http.get("/metrics");
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = reply.text();
    let v = format!("variant=\"{}\"", support::variant_name(variant));
    for needle in [
        format!("lab_http_requests_total{{{v},route=\"db\",status=\"200\"}} 3"),
        format!("lab_http_request_duration_seconds_bucket{{{v},route=\"db\",le=\"+Inf\"}} 3"),
        format!("lab_http_requests_in_flight{{{v}}} "),
        format!("lab_db_pool_connections{{{v},state=\"in_use\"}}"),
        format!("lab_db_pool_connections{{{v},state=\"idle\"}}"),
        format!("lab_server_info{{{v}}} 1"),
        format!("lab_process_cpu_seconds_total{{{v},mode=\"user\"}}"),
        format!("lab_process_threads{{{v}}}"),
        format!("lab_process_resident_memory_bytes{{{v}}}"),
    ] {
        assert!(
            text.contains(needle.as_str()),
            "/metrics lacks {needle:?}:\n{text}"
        );
    }
}

fn sigterm_exits_cleanly(variant: &str) {
    let server = start(variant);
    assert_eq!(get(server.addr(), "/plaintext").status, 200);
    let status = server
        .stop(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "exit status {status}");
}

/// Polls `target` until it answers `status`, for at most `limit`.
fn wait_for_status(
    addr: std::net::SocketAddr,
    target: &str,
    status: u16,
    limit: Duration,
) -> Reply {
    let deadline = Instant::now() + limit;
    loop {
        let reply = get(addr, target);
        if reply.status == status || Instant::now() > deadline {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_database_down(addr: std::net::SocketAddr) {
    let mut http = Http::connect(addr);
    for target in [
        "/db",
        "/queries?queries=3",
        "/fortunes",
        "/updates?queries=2",
    ] {
        let reply = http.get(target);
        assert_eq!(
            reply.status,
            503,
            "{target} with the database down: {:?}",
            reply.text()
        );
        assert_eq!(reply.header("content-type"), Some("text/plain"));
        assert!(
            reply.text().starts_with("database unavailable"),
            "{target}: {:?}",
            reply.text()
        );
    }
    assert_eq!(http.get("/health").status, 503);
    assert_eq!(http.get("/plaintext").status, 200);
    assert_eq!(http.get("/json").status, 200);
}

/// A cluster of one test alone, up: its own directory and a port the kernel says is free.
/// Removed when the test ends, passed or failed: a failing test must not leave a
/// PostgreSQL running.
struct PrivateCluster(Option<Cluster>);

impl std::ops::Deref for PrivateCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        self.0.as_ref().expect("removed only on drop")
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if let Some(cluster) = self.0.take() {
            if let Err(error) = cluster.destroy() {
                eprintln!("removing a test's private cluster: {error:#}");
            }
        }
    }
}

fn private_cluster(purpose: &str, setup: &str) -> PrivateCluster {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let name = format!(
        "{purpose}-{}-{}",
        setup.replace('+', "-"),
        std::process::id()
    );
    let cluster = Cluster::new(ClusterConfig::scratch(&name, port)).expect("PostgreSQL");
    let cluster = PrivateCluster(Some(cluster));
    cluster
        .up()
        .unwrap_or_else(|e| panic!("initialising the {purpose} cluster: {e:#}"));
    cluster
}

/// Start-up with the database down, recovery, an outage while serving, recovery again.
/// The database here is a private cluster of this test, so stopping it disturbs no other.
fn database_outage(variant: &str) {
    let cluster = private_cluster("outage", variant);
    cluster.down().expect("stopping it");

    let server = support::start_with(support::launch_options(variant, &cluster.config().url()));
    let addr = server.addr();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !server.stderr().contains("not reachable") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        server.stderr().contains("not reachable"),
        "no retry line:\n{}",
        server.stderr()
    );
    assert_database_down(addr);

    cluster.up().expect("starting the database again");
    let reply = wait_for_status(addr, "/db", 200, Duration::from_secs(30));
    assert_eq!(
        reply.status,
        200,
        "no recovery after start-up outage: {:?}",
        reply.text()
    );

    let mut keep_alive = Http::connect(addr);
    assert_eq!(keep_alive.get("/queries?queries=5").status, 200);
    cluster
        .down()
        .expect("stopping the database under the server");
    assert_eq!(keep_alive.get("/db").status, 503);
    assert_database_down(addr);

    cluster.up().expect("restarting the database");
    assert_eq!(
        wait_for_status(addr, "/db", 200, Duration::from_secs(30)).status,
        200,
        "no recovery"
    );
    assert_eq!(
        wait_for_status(addr, "/health", 200, Duration::from_secs(30)).status,
        200
    );
    assert_eq!(keep_alive.get("/fortunes").status, 200);
    let status = server
        .stop(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success());
}

/// Reading rows back, to check what the server claims against the database itself.
mod support_db {
    pub fn world(id: i64) -> i64 {
        let url = super::support::database_url();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url)
                    .await
                    .expect("connecting to the test database");
                let (_, number): (i32, i32) = sqlx::query_as(db::sql::SELECT_WORLD)
                    .bind(id as i32)
                    .fetch_one(&mut conn)
                    .await
                    .expect("reading a world row");
                i64::from(number)
            })
    }
}

macro_rules! conformance {
    ($($module:ident => $variant:literal),* $(,)?) => {$(
        mod $module {
            #[test] fn plaintext() { super::plaintext($variant) }
            #[test] fn json() { super::json($variant) }
            #[test] fn db() { super::db_route($variant) }
            #[test] fn queries_clamping() { super::queries_clamping($variant) }
            #[test] fn fortunes() { super::fortunes($variant) }
            #[test] fn updates_persist() { super::updates_persist($variant) }
            #[test] fn date_changes_across_seconds() { super::date_changes_across_seconds($variant) }
            #[test] fn pipelined_in_order() { super::pipelined_in_order($variant) }
            #[test] fn http10_and_connection_close() { super::http10_and_connection_close($variant) }
            #[test] fn unknown_path_and_method() { super::unknown_path_and_method($variant) }
            #[test] fn malformed_request_is_4xx() { super::malformed_request_is_4xx($variant) }
            #[test] fn metrics_and_health() { super::metrics_and_health($variant) }
            #[test] fn sigterm_exits_cleanly() { super::sigterm_exits_cleanly($variant) }
            #[test] fn database_outage() { super::database_outage($variant) }
        }
    )*};
}

conformance!(
    epoll => "epoll",
    thread_per_request => "thread-per-request",
    thread_pool => "thread-pool",
    io_uring => "io-uring",
    // The async variants again with the pipelined database client (`--db-client pipelined`).
    epoll_pipelined => "epoll+pipelined",
    io_uring_pipelined => "io-uring+pipelined",
    // epoll with one current-thread runtime per core (`--runtime per-core`), its own
    // listener and pipelined connection each.
    epoll_per_core_pipelined => "epoll+per-core+pipelined",
);

/// The pipelined client's other paths: statements parsed for one query and closed again
/// (two round trips each), and `/updates` as one UPDATE per row, all in flight together.
mod pipelined_knobs {
    const SETUPS: [&str; 2] = [
        "epoll+per-core+pipelined+unprepared+row-updates",
        "io-uring+pipelined+unprepared",
    ];

    #[test]
    fn db_queries_fortunes_and_updates() {
        SETUPS.into_iter().for_each(super::database_routes);
    }
}

/// Every route that queries the database, on one setup.
fn database_routes(setup: &str) {
    db_route(setup);
    queries_clamping(setup);
    fortunes(setup);
    updates_persist(setup);
}

/// The pipelined client with `--db-wake per-request` (SO_RCVLOWAT on its sockets): every
/// database route still answers, a database that goes away or stops answering still gets
/// 503 and recovery (the kernel must never be left waiting for bytes that cannot come),
/// and the reader really is woken less often.
mod pipelined_wake_per_request {
    const SETUPS: [&str; 2] = [
        "epoll+per-core+pipelined+wake-per-request",
        "io-uring+pipelined+wake-per-request",
    ];

    #[test]
    fn db_queries_fortunes_and_updates() {
        for setup in SETUPS {
            super::database_routes(setup);
            super::pipelined_in_order(setup);
        }
    }

    #[test]
    fn database_outage() {
        super::database_outage(SETUPS[1]);
    }

    #[test]
    fn database_stops_answering() {
        super::database_stops_answering(SETUPS[0]);
    }

    #[test]
    fn low_water_mark_covers_a_waiting_request() {
        super::low_water_mark_covers_a_waiting_request();
    }
}

/// `--db-shared 2`: one runtime thread whose requests take two pipelined connections in
/// turn. Both open (two PostgreSQL backends answer), and every database route works.
mod pipelined_shared_connections {
    const SETUPS: [&str; 2] = [
        "io-uring+pipelined+one-worker+shared-2",
        "epoll+per-core+pipelined+one-worker+shared-2+wake-per-request",
    ];

    #[test]
    fn both_connections_serve() {
        for setup in SETUPS {
            super::database_routes(setup);
            let server = super::start(setup);
            for _ in 0..8 {
                assert_eq!(super::get(server.addr(), "/db").status, 200);
            }
            let metrics = super::get(server.addr(), "/metrics").text();
            let open = metrics
                .lines()
                .find(|line| {
                    line.starts_with("lab_db_pool_connections{") && line.contains("in_use")
                })
                .and_then(|line| line.rsplit(' ').next())
                .unwrap_or_else(|| panic!("{setup}: no open-connections gauge in\n{metrics}"));
            assert_eq!(open, "2", "{setup}: connections open after 8 requests");
        }
    }
}

/// A `/queries?queries=20` request waits on a stopped database: the server's socket to
/// PostgreSQL asks the kernel for 20 answers' worth of bytes (20 × 25, the fewest a world
/// query's answer can take) before waking its reader, where the default is 1 byte, a
/// wake-up per answer (the first answer of a request that came to an idle reader still
/// wakes it; the mark is set for the rest). Read from outside the server with `pidfd_getfd` (needs root or
/// ptrace rights over the server, which the tests' own child is). Figures under load: the
/// server's voluntary context switches per sequential `/updates?queries=20` request 15.4
/// per answer, 5.3 per request on a quiet machine (docs/variants/epoll.md); a busy one
/// blurs them, so this test reads the mark itself.
fn low_water_mark_covers_a_waiting_request() {
    let setup = "epoll+per-core+pipelined+wake-per-request";
    let cluster = private_cluster("lowat", setup);
    let mut options = support::launch_options(setup, &cluster.config().url());
    options
        .extra_args
        .extend(["--workers", "1"].map(String::from));
    let server = support::start_with(options);
    let addr = server.addr();
    assert_eq!(
        wait_for_status(addr, "/db", 200, Duration::from_secs(30)).status,
        200
    );
    let port = cluster.config().port;
    let socket = database_socket(server.pid(), port)
        .unwrap_or_else(|| panic!("no socket of the server connected to port {port}"));
    // Nothing waiting: the kernel's default, any byte wakes the reader.
    assert_eq!(receive_low_water(&socket), 1, "no query waiting");

    let processes = cluster_processes(cluster.config());
    let _resume = Resume(processes.clone());
    signal_all(&processes, nix::sys::signal::Signal::SIGSTOP);
    let mark = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| get(addr, "/queries?queries=20"));
        // The reader sets the mark each time it wakes: with the database stopped, at the
        // latest when its deadline timer next looks (within 5 s), which re-arms it.
        let deadline = Instant::now() + Duration::from_secs(7);
        let mut mark = receive_low_water(&socket);
        while mark != 20 * 25 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            mark = receive_low_water(&socket);
        }
        signal_all(&processes, nix::sys::signal::Signal::SIGCONT);
        // 200, or 503 if the deadline passed just before PostgreSQL continued.
        let status = waiting.join().unwrap().status;
        assert!(status == 200 || status == 503, "status {status}");
        mark
    });
    assert_eq!(
        mark,
        20 * 25,
        "SO_RCVLOWAT of the server's database socket while a 20-query request waits"
    );
}

/// A duplicate of the server's socket connected to `port` (`pidfd_getfd`).
fn database_socket(pid: u32, port: u16) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscalls; each returned descriptor is owned exactly once below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd as i32) };
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Ok(number) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let fd = unsafe {
            libc::syscall(
                libc::SYS_pidfd_getfd,
                std::os::fd::AsRawFd::as_raw_fd(&pidfd),
                number,
                0,
            )
        };
        if fd < 0 {
            panic!(
                "pidfd_getfd (this test needs root or ptrace rights over the server): {}",
                std::io::Error::last_os_error()
            );
        }
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        let peer = socket2::SockRef::from(&fd).peer_addr().ok();
        if peer.and_then(|a| a.as_socket()).map(|a| a.port()) == Some(port) {
            return Some(fd);
        }
    }
    None
}

fn receive_low_water(socket: &std::os::fd::OwnedFd) -> i32 {
    let mut value: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int option read into `value`, whose size `length` gives.
    let result = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&mut value as *mut libc::c_int).cast(),
            &mut length,
        )
    };
    assert_eq!(result, 0, "getsockopt: {}", std::io::Error::last_os_error());
    value
}

/// A database that stops answering without closing anything (every PostgreSQL process of a
/// private cluster stopped with SIGSTOP: the sockets stay open, nothing comes back). A
/// request gets 503 "no answer within 5 s" once the deadline passes, `/plaintext` is served
/// meanwhile, and once the processes continue the database routes recover.
fn database_stops_answering(setup: &str) {
    let cluster = private_cluster("stall", setup);
    let server = support::start_with(support::launch_options(setup, &cluster.config().url()));
    let addr = server.addr();
    assert_eq!(
        wait_for_status(addr, "/db", 200, Duration::from_secs(30)).status,
        200
    );
    // Every runtime's connections open (the kernel spreads new client connections over
    // io-uring's runtimes; epoll's requests take the shared connections in turn), so that
    // the stalled request waits on an open connection rather than on connecting.
    for _ in 0..16 {
        assert_eq!(get(addr, "/db").status, 200);
    }

    let processes = cluster_processes(cluster.config());
    // Continued however the test ends (declared after the cluster, so dropped before it:
    // a stopped PostgreSQL cannot be shut down).
    let _resume = Resume(processes.clone());
    signal_all(&processes, nix::sys::signal::Signal::SIGSTOP);
    let started = Instant::now();
    let reply = std::thread::scope(|scope| {
        let stalled = scope.spawn(|| get(addr, "/db"));
        // The server keeps serving what needs no database while a query hangs.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(get(addr, "/plaintext").status, 200);
        stalled.join().unwrap()
    });
    let waited = started.elapsed();
    signal_all(&processes, nix::sys::signal::Signal::SIGCONT);
    assert_eq!(reply.status, 503, "{:?}", reply.text());
    assert!(
        reply.text().contains("no answer within 5 s"),
        "{:?}",
        reply.text()
    );
    // Not a wall-clock assertion on speed: the 503 must not come before the deadline.
    assert!(waited >= Duration::from_secs(4), "503 after {waited:?}");

    assert_eq!(
        wait_for_status(addr, "/db", 200, Duration::from_secs(30)).status,
        200,
        "no recovery once PostgreSQL continued"
    );
    assert_eq!(get(addr, "/fortunes").status, 200);
    let status = server
        .stop(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success());
}

/// The postmaster of a running cluster (as its `postmaster.pid` names it) and its children
/// (the backends and background workers).
fn cluster_processes(config: &ClusterConfig) -> Vec<i32> {
    let postmaster = config.postmaster().expect("the cluster runs").pid as i32;
    let mut processes = vec![postmaster];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the command may hold spaces, so split after ')'.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let parent = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if parent == Some(postmaster) {
            processes.push(entry.file_name().to_string_lossy().parse().unwrap());
        }
    }
    processes
}

struct Resume(Vec<i32>);

impl Drop for Resume {
    fn drop(&mut self) {
        signal_all(&self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

fn signal_all(processes: &[i32], signal: nix::sys::signal::Signal) {
    for &pid in processes {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// The async setups' deadline: sqlx's pool under the route's own timer, the pipelined
/// client under its connection's.
mod database_stops_answering {
    #[test]
    fn epoll() {
        super::database_stops_answering("epoll")
    }
    #[test]
    fn epoll_pipelined() {
        super::database_stops_answering("epoll+pipelined")
    }
    #[test]
    fn io_uring_pipelined() {
        super::database_stops_answering("io-uring+pipelined")
    }
}
