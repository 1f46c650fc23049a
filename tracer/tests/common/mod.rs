//! Helpers shared by the tracer's integration tests: privileges, the helper programs,
//! strace as the independent peer, and a tiny keep-alive HTTP client.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// These tests use eBPF, ptrace of other processes and strace: they need root. Say so
/// loudly instead of skipping.
pub fn require_root() {
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this test needs root (CAP_BPF + CAP_PERFMON for eBPF, CAP_SYS_PTRACE for strace \
             and ptrace): run the tracer tests as root, e.g. `sudo -E cargo test -p tracer`"
        );
    }
}

/// target/<profile>/ from the test executable (target/<profile>/deps/x).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The helper program with known I/O (src/bin/tracer-workload.rs).
pub fn workload_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tracer-workload"))
}

pub fn server_bin() -> PathBuf {
    let p = target_dir().join("server");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` (with the same target dir) first",
        p.display()
    );
    p
}

/// `strace -f -c` attached to `pid`, summary written to a file at detach.
pub struct Strace {
    child: Child,
    out: PathBuf,
}

impl Strace {
    pub fn attach(pid: i32) -> Strace {
        let out = std::env::temp_dir().join(format!("tracer-test-strace-{pid}-{}", rand()));
        let mut child = Command::new("strace")
            .args(["-f", "-c", "-o"])
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("strace (Debian package strace) must be installed");
        // Wait until it says it attached.
        let err = child.stderr.take().unwrap();
        let mut r = BufReader::new(err);
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if line.contains("attached") {
                break;
            }
        }
        // Keep draining stderr so strace never blocks on it.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = r.read_to_string(&mut sink);
        });
        std::thread::sleep(Duration::from_millis(300));
        Strace { child, out }
    }

    /// Detaches (SIGINT) and returns calls and errors per syscall.
    pub fn finish(mut self) -> BTreeMap<String, (u64, u64)> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait().unwrap();
        let text = std::fs::read_to_string(&self.out).unwrap();
        let _ = std::fs::remove_file(&self.out);
        parse_strace(&text)
    }
}

/// Calls and errors per syscall, read by the tracer's own reader of strace's table.
pub fn parse_strace(text: &str) -> BTreeMap<String, (u64, u64)> {
    tracer::strace::parse_summary(text)
        .into_iter()
        .map(|(name, stats)| (name, (stats.count, stats.errors)))
        .collect()
}

pub fn rand() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        ^ std::process::id() as u64
}

/// Relative difference of two counts.
pub fn rel(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / a.max(b)
    }
}

/// Keep-alive HTTP/1.1 GETs over one connection; returns (bytes sent, bytes received).
pub fn http_get_loop(port: u16, path: &str, n: usize) -> (u64, u64) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let (mut sent, mut recvd) = (0u64, 0u64);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    for _ in 0..n {
        s.write_all(req.as_bytes()).unwrap();
        sent += req.len() as u64;
        // Read one response: headers, then Content-Length bytes.
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "bad response: {head}");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .expect("content-length");
                if buf.len() >= end + 4 + len {
                    recvd += (end + 4 + len) as u64;
                    buf.drain(..end + 4 + len);
                    break;
                }
            }
            let k = s.read(&mut chunk).unwrap();
            assert!(k > 0, "server closed the connection");
            buf.extend_from_slice(&chunk[..k]);
        }
    }
    (sent, recvd)
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// `conns` connections in parallel, `per_conn` requests each.
pub fn http_load(port: u16, path: &str, conns: usize, per_conn: usize) -> (u64, u64) {
    let hs: Vec<_> = (0..conns)
        .map(|_| {
            let path = path.to_string();
            std::thread::spawn(move || http_get_loop(port, &path, per_conn))
        })
        .collect();
    hs.into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// A fake database behind listener `l`: answers 4 bytes to every 6-byte query (what
/// tracer-workload's `serve` and `peers` send), on threads of the test process, so never
/// traced.
pub fn answer_queries(l: std::net::TcpListener) {
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                let mut b = [0u8; 6];
                while c.read_exact(&mut b).is_ok() {
                    if c.write_all(b"row\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_http_ok(port: u16, path: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            );
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            if r.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no 200 from 127.0.0.1:{port}{path} within {timeout:?}");
}

/// Kills and reaps a child on drop.
pub struct Reap(pub Child);

impl Drop for Reap {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
