//! What the server test suites share: a real PostgreSQL (started through the same code as
//! `lab db up`, or `DATABASE_URL`), real `server` processes, and a small raw HTTP/1.1
//! client that shows exactly what went over the socket.
#![allow(dead_code)]

pub mod attack;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use db::Database;
use servers::launch::{LaunchOptions, ServerProcess};

/// The URL of the database the suites share (`db::Database::ready_for_tests`: the last
/// test process that uses the lab's test cluster stops it).
pub fn database_url() -> String {
    Database::ready_for_tests()
        .unwrap_or_else(|e| panic!("PostgreSQL is needed for these tests: {e:#}"))
}

pub fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_server"))
}

/// Starts `server --variant VARIANT` against the shared database, request log off.
/// `VARIANT+pipelined` adds `--db-client pipelined` (see [`launch_options`]).
pub fn start(setup: &str) -> ServerProcess {
    start_with(launch_options(setup, &database_url()))
}

/// The options for a setup of the test matrix: a variant name, optionally followed by
/// `+per-core` (epoll's `--runtime per-core`) and `+pipelined` (`--db-client pipelined`).
pub fn launch_options(setup: &str, database_url: &str) -> LaunchOptions {
    let mut options = LaunchOptions::new(variant_name(setup), database_url);
    for part in setup.split('+').skip(1) {
        let flag: [&str; 2] = match part {
            "pipelined" => ["--db-client", "pipelined"],
            "per-core" => ["--runtime", "per-core"],
            // The database workshop's knobs: statements parsed anew for every query, and
            // one UPDATE per row.
            "unprepared" => ["--prepared", "off"],
            "row-updates" => ["--updates", "row"],
            // The pipelined client's reader woken per request, not per answer.
            "wake-per-request" => ["--db-wake", "per-request"],
            // One runtime thread sharing two pipelined connections.
            "one-worker" => ["--workers", "1"],
            "shared-2" => ["--db-shared", "2"],
            other => panic!("unknown setup part {other:?} in {setup:?}"),
        };
        options.extra_args.extend(flag.map(String::from));
    }
    options
}

/// The variant of a setup (`epoll+pipelined` is the epoll variant).
pub fn variant_name(setup: &str) -> &str {
    setup.split('+').next().unwrap_or(setup)
}

pub fn start_with(options: LaunchOptions) -> ServerProcess {
    ServerProcess::start(&server_binary(), &options).unwrap_or_else(|e| panic!("{e:#}"))
}

/// One response as it came over the wire.
#[derive(Debug, Clone)]
pub struct Reply {
    pub version: u8,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("body is UTF-8")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// A raw HTTP/1.1 connection. Every read has a timeout, so a server that hangs fails
/// the test instead of stalling it.
pub struct Http {
    stream: TcpStream,
    buffer: Vec<u8>,
}

pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

impl Http {
    pub fn connect(addr: SocketAddr) -> Http {
        let stream =
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        Http {
            stream,
            buffer: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("sending a request");
    }

    pub fn get(&mut self, target: &str) -> Reply {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: lab\r\n\r\n").as_bytes());
        self.read_reply()
    }

    /// Reads one response framed by Content-Length (or chunked encoding).
    pub fn read_reply(&mut self) -> Reply {
        self.try_read_reply().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_read_reply(&mut self) -> Result<Reply, String> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buffer) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let headers: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let mut reply = Reply {
                        version: parsed.version.unwrap_or(1),
                        status: parsed.code.unwrap_or(0),
                        headers,
                        body: Vec::new(),
                    };
                    let chunked = reply
                        .header("transfer-encoding")
                        .is_some_and(|v| v.contains("chunked"));
                    if chunked {
                        self.buffer.drain(..head_len);
                        reply.body = self.read_chunked()?;
                        return Ok(reply);
                    }
                    let length: usize = reply
                        .header("content-length")
                        .ok_or("response without Content-Length")?
                        .parse()
                        .map_err(|e| format!("bad Content-Length: {e}"))?;
                    while self.buffer.len() < head_len + length {
                        self.fill()?;
                    }
                    reply.body = self.buffer[head_len..head_len + length].to_vec();
                    self.buffer.drain(..head_len + length);
                    return Ok(reply);
                }
                Ok(httparse::Status::Partial) => self.fill()?,
                Err(e) => {
                    return Err(format!(
                        "malformed response ({e}): {:?}",
                        String::from_utf8_lossy(&self.buffer)
                    ))
                }
            }
        }
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                self.fill()?;
            };
            let size_text = String::from_utf8_lossy(&self.buffer[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
            while self.buffer.len() < line_end + 2 + size + 2 {
                self.fill()?;
            }
            body.extend_from_slice(&self.buffer[line_end + 2..line_end + 2 + size]);
            self.buffer.drain(..line_end + 2 + size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(format!(
                "connection closed by the server; unparsed: {:?}",
                String::from_utf8_lossy(&self.buffer)
            )),
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("reading a response: {e}")),
        }
    }

    /// True when the server closes the connection (EOF or reset) with nothing more to
    /// say, within the read timeout.
    pub fn closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return self.buffer.is_empty(),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// One request on a fresh connection.
pub fn get(addr: SocketAddr, target: &str) -> Reply {
    Http::connect(addr).get(target)
}
