//! Small HTTP/1.1 test servers on 127.0.0.1, one thread per connection, started by the
//! tests themselves. Each reads pipelined requests, counts them per path, and answers with
//! whatever the test's `respond` function writes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the server does with one request (the path, and a buffer for the response).
/// Returning `false` closes the connection right after writing.
pub type Respond = dyn Fn(&str, &mut Vec<u8>) -> bool + Send + Sync;

pub struct Server {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    pub connections: Arc<AtomicU64>,
    pub by_path: Arc<Mutex<HashMap<String, u64>>>,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn count(&self, path: &str) -> u64 {
        *self.by_path.lock().unwrap().get(path).unwrap_or(&0)
    }
}

pub fn start(respond: Arc<Respond>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicU64::new(0));
    let by_path = Arc::new(Mutex::new(HashMap::new()));
    let (r, c, b) = (requests.clone(), connections.clone(), by_path.clone());
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            let (r, b, respond) = (r.clone(), b.clone(), respond.clone());
            thread::spawn(move || serve(stream, &r, &b, &*respond));
        }
    });
    Server {
        addr,
        requests,
        connections,
        by_path,
    }
}

fn serve(
    mut s: TcpStream,
    count: &AtomicU64,
    by_path: &Mutex<HashMap<String, u64>>,
    respond: &Respond,
) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        // Answer every complete request in this read with one write, in order.
        let mut out = Vec::new();
        let mut keep = true;
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end + 4);
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            count.fetch_add(1, Ordering::SeqCst);
            *by_path.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
            if !respond(&path, &mut out) {
                keep = false;
                break;
            }
        }
        if !out.is_empty() && s.write_all(&out).is_err() {
            return;
        }
        if !keep {
            return;
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// `HTTP/1.1 {status}` with a Content-Length body.
pub fn response(out: &mut Vec<u8>, status: u16, body: &str) {
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nServer: test\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// A server answering 200 "ok" to everything.
pub fn ok_server() -> Server {
    start(Arc::new(|_p: &str, out: &mut Vec<u8>| {
        response(out, 200, "ok");
        true
    }))
}

pub fn config(url: String) -> loadgen::Config {
    let mut c = loadgen::Config::new(url);
    c.threads = 1;
    c.connections = 2;
    c.duration_s = 2.0;
    c
}

pub fn run(c: &loadgen::Config) -> loadgen::Report {
    loadgen::run(c, &mut |_p: &loadgen::Progress| loadgen::Control::Continue).expect("run succeeds")
}
