//! The profiling endpoints (`/debug/pprof/flamegraph` and `/debug/pprof/profile`) of
//! every variant, against a real `server` under real `/db` load over real sockets: the
//! flame graph is an SVG that names the server's own functions, the protobuf is one that
//! pprof's format reader accepts, a bad `seconds` is 400, two profiles at once are refused,
//! and `--pprof off` answers 404.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use servers::launch::LaunchOptions;
use support::{database_url, get, start, start_with, Http};

/// Keep-alive clients asking for `/db` until stopped, so that the profile has work to see.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<u64>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut http = Http::connect(addr);
                    let mut answered = 0;
                    while !stop.load(Ordering::Relaxed) {
                        assert_eq!(http.get("/db").status, 200, "/db under profiling");
                        answered += 1;
                    }
                    answered
                })
            })
            .collect();
        Load { stop, clients }
    }

    /// Stops the clients; the number of requests they had answered.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.clients
            .into_iter()
            .map(|c| c.join().expect("a load client failed"))
            .sum()
    }
}

fn flamegraph_under_load(variant: &str) {
    let server = start(variant);
    let load = Load::start(server.addr(), 4);
    let svg = get(server.addr(), "/debug/pprof/flamegraph?seconds=2");
    let protobuf = get(server.addr(), "/debug/pprof/profile?seconds=1");
    let answered = load.finish();
    assert!(answered > 0, "the load was not served");

    assert_eq!(svg.status, 200, "flame graph: {}", svg.text());
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    let text = svg.text();
    assert!(
        text.contains("<svg") && text.trim_end().ends_with("</svg>"),
        "not an SVG document: {}",
        &text[..text.len().min(300)]
    );
    // The server's own frames are named (symbolised, not bare addresses).
    assert!(
        text.contains("servers::"),
        "no frame of the server's own code in the {variant} flame graph"
    );

    assert_eq!(protobuf.status, 200, "profile: {:?}", protobuf.text());
    assert_eq!(
        protobuf.header("content-type"),
        Some("application/octet-stream")
    );
    let (samples, functions) =
        servers::profile::summarise(&protobuf.body).unwrap_or_else(|e| panic!("{variant}: {e}"));
    assert!(samples > 0, "{variant}: a profile without samples");
    // In an optimised build the inlined frames keep only short names (`{async_fn#0}`)
    // and their file says whose they are.
    assert!(
        functions
            .iter()
            .any(|f| f.name.starts_with("servers::") || f.file.contains("servers/src/")),
        "{variant}: no function of the server in the profile: {:?}",
        &functions[..functions.len().min(20)]
    );
    // The server still answers normally once sampling has stopped, and counts the
    // profiles under a route of their own.
    assert_eq!(get(server.addr(), "/plaintext").status, 200);
    let metrics = get(server.addr(), "/metrics").text();
    assert!(
        metrics.contains("route=\"pprof\",status=\"200\"} 2"),
        "{variant}: the two profiles are not counted as route pprof"
    );
}

fn bad_seconds_is_400(variant: &str) {
    let server = start(variant);
    for target in [
        "/debug/pprof/flamegraph?seconds=0",
        "/debug/pprof/flamegraph?seconds=abc",
        "/debug/pprof/profile?seconds=100000",
        "/debug/pprof/profile?seconds=-2",
    ] {
        let reply = get(server.addr(), target);
        assert_eq!(reply.status, 400, "{target}: {}", reply.text());
        assert!(
            reply.text().contains("seconds"),
            "{target}: no reason given"
        );
    }
    assert_eq!(get(server.addr(), "/debug/pprof/heap").status, 404);
    assert_eq!(get(server.addr(), "/plaintext").status, 200);
}

/// Two overlapping profile requests: the one that finds a profile being recorded gets
/// 409, the other its profile.
fn one_profile_at_a_time(variant: &str) {
    let server = start(variant);
    let addr = server.addr();
    let first = std::thread::spawn(move || get(addr, "/debug/pprof/profile?seconds=3").status);
    let second = get(addr, "/debug/pprof/profile?seconds=3").status;
    let first = first.join().expect("the first profile request");
    let mut statuses = [first, second];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "two profiles at once");
}

fn disabled_is_404(variant: &str) {
    let mut options = LaunchOptions::new(variant, &database_url());
    options.extra_args = vec!["--pprof".into(), "off".into()];
    let server = start_with(options);
    let reply = get(server.addr(), "/debug/pprof/flamegraph?seconds=1");
    assert_eq!(reply.status, 404, "{}", reply.text());
}

macro_rules! profile_tests {
    ($($module:ident => $variant:literal),* $(,)?) => {$(
        mod $module {
            #[test] fn flamegraph_under_load() { super::flamegraph_under_load($variant) }
            #[test] fn bad_seconds_is_400() { super::bad_seconds_is_400($variant) }
            #[test] fn one_profile_at_a_time() { super::one_profile_at_a_time($variant) }
            #[test] fn disabled_is_404() { super::disabled_is_404($variant) }
        }
    )*};
}

profile_tests!(
    epoll => "epoll",
    thread_per_request => "thread-per-request",
    thread_pool => "thread-pool",
    io_uring => "io-uring",
);
