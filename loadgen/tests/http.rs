//! Against real sockets on 127.0.0.1: pipelining, counts, framing, errors, reconnects.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{config, ok_server, response, run, start};
use loadgen::MixEntry;

fn mix(entries: &[(u32, &str)]) -> Vec<MixEntry> {
    entries
        .iter()
        .map(|&(weight, p)| MixEntry {
            weight,
            path: p.to_string(),
        })
        .collect()
}

#[test]
fn pipelined_16_deep_every_response_matched() {
    // Status and body depend on the path, so a response matched to the wrong request shows
    // up as a wrong status in that target's counts.
    let server = start(Arc::new(|path: &str, out: &mut Vec<u8>| {
        let status = match path {
            "/a" => 200,
            "/b" => 201,
            _ => 202,
        };
        response(out, status, path);
        true
    }));
    let mut c = config(server.url("/"));
    c.mix = mix(&[(1, "/a"), (2, "/b"), (1, "/c")]);
    c.pipeline = 16;
    c.connections = 4;
    c.threads = 2;
    c.requests = Some(20_000);
    let r = run(&c);
    assert_eq!(r.errors_total, 0, "{:?}", r.errors);
    assert_eq!(r.requests, 20_000);
    assert_eq!(r.sent, 20_000);
    assert_eq!(server.requests.load(Ordering::SeqCst), 20_000);
    for (t, status) in r.targets.iter().zip(["200", "201", "202"]) {
        assert_eq!(t.requests, server.count(&t.path), "{}", t.path);
        assert_eq!(t.status.len(), 1, "{}: {:?}", t.path, t.status);
        assert_eq!(t.status[status], t.requests, "{}", t.path);
        assert!(t.requests > 0);
    }
    assert_eq!(r.status.values().sum::<u64>(), 20_000);
    assert_eq!(r.reconnects, 0);
}

#[test]
fn naps_only_in_a_deep_closed_loop() {
    // 8 connections x 16 deep = 128 requests in flight on one thread: whenever the server
    // has not answered yet, the generator naps instead of waiting to be woken.
    let server = ok_server();
    let mut c = config(server.url("/"));
    c.pipeline = 16;
    c.connections = 8;
    c.duration_s = 1.0;
    let r = run(&c);
    assert!(
        r.naps > 0,
        "a deep closed loop naps: {} requests, 0 naps",
        r.requests
    );
    assert_eq!(r.errors_total, 0, "{:?}", r.errors);
    assert_eq!(r.requests, server.requests.load(Ordering::SeqCst));
    let summary = r.summary();
    assert!(summary.contains("Naps:"), "{summary}");
    // Scripts read wrk's "N requests in T" line: the naps line must not look like it.
    assert_eq!(summary.matches("requests in").count(), 1, "{summary}");

    let mut off = c.clone();
    off.nap_s = 0.0;
    assert_eq!(run(&off).naps, 0, "--nap 0 turns naps off");

    let mut shallow = c.clone();
    shallow.pipeline = 1;
    shallow.connections = 2;
    assert_eq!(
        run(&shallow).naps,
        0,
        "2 requests in flight: a nap could idle the server"
    );

    let mut open = c.clone();
    open.rate = Some(2000.0);
    let r = run(&open);
    assert!(r.requests > 1000);
    assert_eq!(r.naps, 0, "the open loop sends on its schedule, never naps");
}

#[test]
fn report_count_equals_server_count() {
    let server = ok_server();
    let mut c = config(server.url("/x"));
    c.connections = 8;
    c.threads = 2;
    c.duration_s = 1.5;
    let r = run(&c);
    assert!(r.requests > 100);
    assert_eq!(r.requests, server.requests.load(Ordering::SeqCst));
    assert_eq!(r.requests, r.sent);
    assert_eq!(r.status["200"], r.requests);
    assert_eq!(r.errors_total, 0);
    assert!(r.bytes_received > r.requests * 40);

    let server = ok_server();
    let mut c = config(server.url("/n"));
    c.requests = Some(3333);
    c.connections = 3;
    let r = run(&c);
    assert_eq!(
        (r.requests, server.requests.load(Ordering::SeqCst)),
        (3333, 3333)
    );
}

#[test]
fn closed_mid_response_is_reset() {
    let server = start(Arc::new(|_p: &str, out: &mut Vec<u8>| {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it");
        false
    }));
    let mut c = config(server.url("/"));
    c.requests = Some(40);
    let r = run(&c);
    assert_eq!(r.errors.reset, 40, "{:?}", r.errors);
    assert_eq!(r.errors_total, 40);
    assert_eq!(r.requests, 0);
}

#[test]
fn garbage_is_malformed() {
    let server = start(Arc::new(|_p: &str, out: &mut Vec<u8>| {
        out.extend_from_slice(b"this is not http\r\n\r\n");
        true
    }));
    let mut c = config(server.url("/"));
    c.requests = Some(40);
    let r = run(&c);
    assert_eq!(r.errors.malformed, 40, "{:?}", r.errors);
    assert_eq!(r.errors_total, 40);
    assert_eq!(r.requests, 0);
}

#[test]
fn status_500_is_a_status_error() {
    let server = start(Arc::new(|_p: &str, out: &mut Vec<u8>| {
        response(out, 500, "boom");
        true
    }));
    let mut c = config(server.url("/"));
    c.requests = Some(40);
    let r = run(&c);
    assert_eq!(r.errors.status, 40, "{:?}", r.errors);
    assert_eq!(r.errors_total, 40);
    assert_eq!(r.requests, 40);
    assert_eq!(r.status["500"], 40);

    // ... unless the caller expects it.
    c.expect_status = vec![500];
    assert_eq!(run(&c).errors_total, 0);
}

#[test]
fn silent_server_times_out() {
    let server = start(Arc::new(|_p: &str, _out: &mut Vec<u8>| true));
    let mut c = config(server.url("/"));
    c.connections = 1;
    c.requests = Some(3);
    c.timeout_s = 0.2;
    let r = run(&c);
    assert_eq!(r.errors.timeout, 3, "{:?}", r.errors);
    assert_eq!(r.errors_total, 3);
}

#[test]
fn chunked_and_close_delimited_bodies() {
    let server = start(Arc::new(|path: &str, out: &mut Vec<u8>| {
        if path == "/chunked" {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n");
            true
        } else {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\nbody until close");
            false
        }
    }));
    let mut c = config(server.url("/chunked"));
    c.requests = Some(500);
    c.pipeline = 4;
    let r = run(&c);
    assert_eq!((r.requests, r.errors_total), (500, 0));

    let mut c = config(server.url("/eof"));
    c.requests = Some(50);
    let r = run(&c);
    assert_eq!((r.requests, r.errors_total), (50, 0), "{:?}", r.errors);
    // Each response ends its connection; all but the last two are followed by a reconnect
    // (at the very end one more may open for a request the other connection took first).
    assert!((48..=49).contains(&r.reconnects), "{}", r.reconnects);
}

#[test]
fn server_closing_keepalive_connections_means_reconnects() {
    // Every fifth request on a connection gets `Connection: close`.
    let n = Arc::new(AtomicU64::new(0));
    let server = start(Arc::new(move |_p: &str, out: &mut Vec<u8>| {
        if n.fetch_add(1, Ordering::SeqCst) % 5 == 4 {
            out.extend_from_slice(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            );
            return false;
        }
        response(out, 200, "ok");
        true
    }));
    let mut c = config(server.url("/"));
    c.connections = 1;
    c.requests = Some(100);
    let r = run(&c);
    assert_eq!((r.requests, r.errors_total), (100, 0), "{:?}", r.errors);
    assert_eq!(r.reconnects, 19);
    assert_eq!(server.connections.load(Ordering::SeqCst), 20 + 1); // + the reachability probe
}

#[test]
fn connection_per_request() {
    let server = ok_server();
    let mut c = config(server.url("/"));
    c.keepalive = false;
    c.requests = Some(200);
    let r = run(&c);
    assert_eq!((r.requests, r.errors_total), (200, 0), "{:?}", r.errors);
    // One connection per request; at the very end a connection may have been opened for a
    // request another connection took first.
    assert!(
        (200..=200 + u64::from(c.connections)).contains(&r.connects),
        "{}",
        r.connects
    );
    assert_eq!(r.reconnects, 0);
    assert_eq!(server.requests.load(Ordering::SeqCst), 200);
}

#[test]
fn placeholders_expand_and_json_round_trips() {
    let server = ok_server();
    let mut c = config(server.url("/"));
    c.mix = mix(&[
        (1, "/queries?queries={1..20}"),
        (1, "/updates?queries={1,5,10,15,20}"),
    ]);
    c.requests = Some(2000);
    let r = run(&c);
    assert_eq!(r.requests, 2000);
    let paths: Vec<String> = server.by_path.lock().unwrap().keys().cloned().collect();
    let q = paths
        .iter()
        .filter(|p| p.starts_with("/queries?queries="))
        .count();
    let u = paths
        .iter()
        .filter(|p| p.starts_with("/updates?queries="))
        .count();
    assert_eq!((q, u), (20, 5), "{paths:?}");
    assert_eq!(r.targets[0].path, "/queries?queries={1..20}");
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("\"schema\":\"loadgen/1\""));
    let back: loadgen::Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back.requests, 2000);
}

#[test]
fn dead_server_refuses_and_ends_an_n_run() {
    use std::io::{Read, Write};
    // Answers 20 requests, then closes its connection and stops listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut answered = 0;
        for s in listener.incoming() {
            let mut s = s.unwrap();
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let reqs = buf[..n].windows(4).filter(|w| w == b"\r\n\r\n").count();
                for _ in 0..reqs {
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .unwrap();
                    answered += 1;
                }
                if answered >= 20 {
                    return; // drops the connection and the listener
                }
            }
        }
    });
    let mut c = config(format!("http://{addr}/"));
    c.connections = 1;
    c.requests = Some(100);
    let r = run(&c);
    assert_eq!(r.requests, 20, "{:?}", r.errors);
    // A request written just before the server went away is reset rather than refused.
    assert_eq!(
        r.errors.connect_refused + r.errors.reset,
        80,
        "{:?}",
        r.errors
    );
    assert!(r.errors.connect_refused >= 70, "{:?}", r.errors);
    assert_eq!(r.errors_total, 80);
    // A connect can still land in the closing listener's backlog and count as a reconnect.
    assert!(r.reconnects <= 2, "{}", r.reconnects);
}
