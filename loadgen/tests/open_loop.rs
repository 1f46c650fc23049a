//! Open loop against real servers: coordinated-omission correction, Poisson arrivals, sweep.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{config, ok_server, response, run, start};
use loadgen::{Arrivals, SweepConfig};

#[test]
fn one_second_stall_shows_in_corrected_p99_only() {
    // The whole server stalls once, for 1 s, 2 s after its first request.
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    let server = start(Arc::new(move |_p: &str, out: &mut Vec<u8>| {
        let now = Instant::now();
        let t0 = *first.lock().unwrap().get_or_insert(now);
        let (from, to) = (t0 + Duration::from_secs(2), t0 + Duration::from_secs(3));
        if now >= from && now < to {
            std::thread::sleep(to - now);
        }
        response(out, 200, "ok");
        true
    }));
    let mut c = config(server.url("/"));
    c.connections = 10;
    c.threads = 1;
    c.duration_s = 5.0;
    c.rate = Some(400.0);
    c.timeout_s = 5.0;
    let r = run(&c);
    let unc = r
        .latency_uncorrected
        .clone()
        .expect("open loop keeps the uncorrected histogram");
    eprintln!(
        "stall: corrected p99 {} ms, uncorrected p99 {} ms",
        r.latency.p99_ms, unc.p99_ms
    );
    assert_eq!(r.errors_total, 0, "{:?}", r.errors);
    assert!(
        r.latency.p99_ms >= 300.0,
        "corrected p99 {} ms should show the stall",
        r.latency.p99_ms
    );
    // Only the 10 requests in flight when it began (0.5%) waited through the stall. Quiet,
    // the uncorrected p99 is about 1 ms; on a busy shared machine tens of ms were seen, so
    // the bound is a quarter of the stall rather than a few ms.
    assert!(
        unc.p99_ms < 250.0,
        "uncorrected p99 {} ms should hide it",
        unc.p99_ms
    );
    assert!(unc.p99_ms * 4.0 < r.latency.p99_ms);
    assert!(
        r.latency.max_ms >= 500.0 && unc.max_ms >= 500.0,
        "both see the stalled requests' max"
    );
    // Requests due during the stall are sent late, not dropped: the count catches up.
    assert_eq!(r.requests, server.requests.load(Ordering::SeqCst));
    assert!(r.requests >= 1800, "{}", r.requests);
    assert!(
        r.timeline.iter().any(|s| s.p99_ms >= 300.0),
        "{:?}",
        r.timeline
    );
}

#[test]
fn poisson_arrivals_offer_the_rate() {
    let server = ok_server();
    let mut c = config(server.url("/"));
    c.connections = 4;
    c.rate = Some(500.0);
    c.arrivals = Arrivals::Poisson;
    c.duration_s = 2.0;
    let r = run(&c);
    assert_eq!(r.errors_total, 0);
    assert_eq!(r.requests, server.requests.load(Ordering::SeqCst));
    // 1000 expected arrivals; a Poisson count is within +-15% with overwhelming probability.
    assert!(
        (850..=1150).contains(&(r.requests + r.backlog)),
        "{}",
        r.requests
    );
    assert_eq!(r.mode, "open");
}

#[test]
fn sweep_finds_the_capacity_of_a_slow_server() {
    // 2 connections to a server that takes 5 ms per request: at most 400 requests/s.
    let server = start(Arc::new(|_p: &str, out: &mut Vec<u8>| {
        std::thread::sleep(Duration::from_millis(5));
        response(out, 200, "ok");
        true
    }));
    let mut c = config(server.url("/"));
    c.connections = 2;
    c.duration_s = 1.5;
    c.sweep = Some(SweepConfig {
        start: 50.0,
        factor: 2.0,
        rates: vec![50.0, 100.0, 1000.0, 2000.0],
        max_steps: 10,
        slo_p99_ms: 200.0,
        tolerance: 0.05,
    });
    let r = run(&c);
    let sw = r.sweep.expect("sweep report");
    assert_eq!(
        sw.steps.len(),
        3,
        "stops at the first step that fails: {sw:?}"
    );
    assert!(
        sw.steps[0].met_slo && sw.steps[1].met_slo && !sw.steps[2].met_slo,
        "{sw:?}"
    );
    assert_eq!(sw.capacity_rps, Some(100.0));
    assert!(sw.steps[2].achieved_rps < 950.0);
}
