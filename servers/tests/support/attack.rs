//! Half-sent request heads: connections that each send the start of a request and then
//! stay silent, holding whatever the server gives such a client (a thread, a pool worker,
//! a queue slot, a descriptor), and what became of them. Shared by the hostile suite
//! (`tests/hostile.rs`) and the attack tool `examples/half_sent_heads.rs`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The start of a request head: the request line and a field, without the blank line
/// that would end the head.
pub const PARTIAL_HEAD: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: lab\r\nX-Half: sent";

/// Raises this process's soft limit of open descriptors to its hard limit and returns the
/// new soft limit: thousands of connections need as many descriptors.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on this process, with a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// Opens up to `count` connections that each send [`PARTIAL_HEAD`] and nothing more.
/// Connections that cannot be opened (the server's or this process's descriptors ran out)
/// are left out, so the result may be shorter; one the server has already refused before
/// it could send is kept, for its [`fate`].
pub fn open(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .filter_map(|_| {
            let mut stream = TcpStream::connect(addr).ok()?;
            let _ = stream.write_all(PARTIAL_HEAD);
            Some(stream)
        })
        .collect()
}

/// What became of one attacking connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Still open, nothing received: the server still holds it.
    Open,
    /// The server answered (status) and closed, or is closing.
    Answered(u16),
    /// Closed or reset without a status line.
    Closed,
}

/// Looks at a connection without waiting: what has the server said or done to it?
pub fn fate(stream: &TcpStream) -> Fate {
    if stream.set_nonblocking(true).is_err() {
        return Fate::Closed;
    }
    let mut reply = [0u8; 64];
    let fate = match (&*stream).read(&mut reply) {
        Ok(0) => Fate::Closed,
        Ok(n) => std::str::from_utf8(&reply[..n])
            .ok()
            .and_then(|text| text.strip_prefix("HTTP/1.1 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .map_or(Fate::Closed, Fate::Answered),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Fate::Open,
        Err(_) => Fate::Closed,
    };
    let _ = stream.set_nonblocking(false);
    fate
}

/// How many attacking connections met each fate.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fates {
    pub open: usize,
    /// (status, connections) in status order.
    pub answered: Vec<(u16, usize)>,
    pub closed: usize,
}

impl Fates {
    pub fn of(streams: &[TcpStream]) -> Fates {
        let mut fates = Fates::default();
        for stream in streams {
            match fate(stream) {
                Fate::Open => fates.open += 1,
                Fate::Closed => fates.closed += 1,
                Fate::Answered(status) => {
                    match fates.answered.iter_mut().find(|(s, _)| *s == status) {
                        Some((_, n)) => *n += 1,
                        None => fates.answered.push((status, 1)),
                    }
                }
            }
        }
        fates.answered.sort_unstable();
        fates
    }

    /// Connections answered with `status`.
    pub fn answered(&self, status: u16) -> usize {
        self.answered
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }
}

impl std::fmt::Display for Fates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} still open", self.open)?;
        for (status, n) in &self.answered {
            write!(f, ", {n} answered {status}")?;
        }
        write!(f, ", {} closed without a status", self.closed)
    }
}

/// A new client's request: `GET target` with `Connection: close` on a fresh connection,
/// read to the end. Returns its status and how long the whole exchange took, or what went
/// wrong; it gives up after `timeout`.
pub fn new_client(
    addr: SocketAddr,
    target: &str,
    timeout: Duration,
) -> Result<(u16, Duration), String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {target} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| format!("no complete answer after {:?}: {e}", started.elapsed()))?;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&reply);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line after {elapsed:?}: {text:?}"))?;
    Ok((status, elapsed))
}

/// A client that retries: [`new_client`] again every 100 ms (each time on a new connection)
/// while the answer is a 503 "server busy", until another answer or `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    /// The last answer's status: 503 only if every try within `timeout` got one.
    pub status: u16,
    /// The answers 503 before it.
    pub refused: usize,
    /// From the first try to the last answer.
    pub elapsed: Duration,
}

pub fn until_served(addr: SocketAddr, target: &str, timeout: Duration) -> Result<Served, String> {
    let started = Instant::now();
    let mut refused = 0;
    loop {
        let left = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        let (status, _) = new_client(addr, target, left)?;
        if status != 503 || started.elapsed() >= timeout {
            return Ok(Served {
                status,
                refused,
                elapsed: started.elapsed(),
            });
        }
        refused += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}
