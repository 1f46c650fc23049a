//! One client connection: its non-blocking socket (raw libc, no runtime), its read buffer,
//! its write buffer, the FIFO of requests in flight (matched to responses in order, which is
//! what makes pipelining countable) and the response parser state.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::parse::{Parser, MAX_HEAD};

/// Read buffer per connection: a whole response head must fit; bodies stream through.
/// Small on purpose: TFB shapes go up to 16384 connections.
pub const READ_BUF: usize = MAX_HEAD;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No socket; (re)connect at `retry_at`.
    Closed,
    /// Non-blocking connect in progress.
    Connecting,
    Open,
}

/// A request written (or queued for writing) whose response has not arrived.
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    pub target: u16,
    /// When it was due: the schedule's time (open loop) or the send time (closed loop).
    pub due: u64,
    /// When it was handed to the socket.
    pub sent: u64,
}

pub struct Conn {
    pub fd: RawFd,
    pub state: State,
    /// Bumped on every new socket so stale epoll events are ignored.
    pub generation: u32,
    pub rbuf: Box<[u8]>,
    /// Unparsed bytes at the front of `rbuf`.
    pub rlen: usize,
    pub wbuf: Vec<u8>,
    pub woff: usize,
    pub inflight: VecDeque<InFlight>,
    pub parser: Parser,
    pub ever_connected: bool,
    /// In the open-loop ready queue.
    pub queued: bool,
    /// In the current batch's list of connections with bytes to write.
    pub dirty: bool,
    /// Retry time when Closed, start time when Connecting.
    pub at: u64,
}

impl Conn {
    pub fn new(depth: usize) -> Conn {
        Conn {
            fd: -1,
            state: State::Closed,
            generation: 0,
            rbuf: vec![0u8; READ_BUF].into_boxed_slice(),
            rlen: 0,
            wbuf: Vec::with_capacity(512 * depth),
            woff: 0,
            inflight: VecDeque::with_capacity(depth),
            parser: Parser::default(),
            ever_connected: false,
            queued: false,
            dirty: false,
            at: 0,
        }
    }

    /// Closes the socket and forgets all per-connection state (in-flight requests are the
    /// caller's to account for first).
    pub fn close(&mut self) {
        if self.fd >= 0 {
            // SAFETY: fd is a socket this connection owns; it is not used after this.
            unsafe { libc::close(self.fd) };
        }
        self.fd = -1;
        self.state = State::Closed;
        self.rlen = 0;
        self.wbuf.clear();
        self.woff = 0;
        self.inflight.clear();
        self.parser = Parser::default();
    }

    /// Writes as much of the write buffer as the socket takes (the rest goes when the socket
    /// reports it writable again). Returns the bytes written.
    pub fn flush(&mut self) -> io::Result<usize> {
        let mut written = 0;
        while self.woff < self.wbuf.len() {
            let rest = &self.wbuf[self.woff..];
            // SAFETY: rest is a valid initialised buffer of rest.len() bytes.
            let n = unsafe { libc::write(self.fd, rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(written),
                    Some(libc::EINTR) => continue,
                    _ => return Err(e),
                }
            }
            self.woff += n as usize;
            written += n as usize;
        }
        self.wbuf.clear();
        self.woff = 0;
        Ok(written)
    }

    /// One read into the free part of the buffer. Ok(0) is end of stream; WouldBlock when
    /// nothing is there.
    pub fn read(&mut self) -> io::Result<usize> {
        loop {
            let free = &mut self.rbuf[self.rlen..];
            // SAFETY: free is a valid writable buffer of free.len() bytes.
            let n = unsafe { libc::read(self.fd, free.as_mut_ptr().cast(), free.len()) };
            if n >= 0 {
                self.rlen += n as usize;
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.close();
    }
}

/// Starts a non-blocking connect. Returns the socket and whether it is already connected.
pub fn connect(addr: &SocketAddr) -> io::Result<(RawFd, bool)> {
    let (family, storage, len) = sockaddr(addr);
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    // SAFETY: fd is our socket, the option value is a valid c_int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    // SAFETY: storage holds a valid sockaddr of `len` bytes.
    let r = unsafe { libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
    if r == 0 {
        return Ok((fd, true));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        return Ok((fd, false));
    }
    // SAFETY: fd is ours and unused elsewhere.
    unsafe { libc::close(fd) };
    Err(e)
}

/// The pending error of a socket whose non-blocking connect finished (0 = connected).
pub fn socket_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err/len are valid out-parameters for SO_ERROR.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        err
    }
}

fn sockaddr(addr: &SocketAddr) -> (libc::c_int, libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            (
                libc::AF_INET,
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            (
                libc::AF_INET6,
                storage,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}
