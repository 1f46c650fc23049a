//! Classifying an fd from /proc, for the ptrace backend (and for seeding the eBPF
//! backend's epoll sets in attach mode). Read at the stop, after the fact: an
//! approximation, see the module doc of [`crate::procfs`].

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use crate::category::Category;
use crate::context::Context;
use crate::procfs::{self, FdTarget, TcpSock};

/// The category an fd gives a call, or None when the fd says nothing.
pub fn classify_proc_fd(
    pid: i32,
    fd: i32,
    ctx: &Context,
    socks: &HashMap<u64, TcpSock>,
) -> Option<Category> {
    let t = procfs::fd_target(pid, fd)?;
    classify_target(
        pid,
        fd,
        &t,
        ctx,
        socks.get(&match t {
            FdTarget::Socket(i) => i,
            _ => 0,
        }),
    )
}

pub fn classify_target(
    pid: i32,
    fd: i32,
    t: &FdTarget,
    ctx: &Context,
    tcp: Option<&TcpSock>,
) -> Option<Category> {
    let stdio = fd == 1 || fd == 2;
    match t {
        FdTarget::Socket(_) => {
            if let Some(s) = tcp {
                if ctx.is_db_peer(s.remote()) {
                    return Some(Category::Database);
                }
                if s.listening || ctx.listen_ports.contains(&s.local_port) {
                    return Some(Category::Network);
                }
            }
            stdio.then_some(Category::Logging)
        }
        FdTarget::AnonInode(kind) => match kind.as_str() {
            "eventfd" | "eventpoll" | "io_uring" | "timerfd" => Some(Category::EventLoop),
            _ => None,
        },
        FdTarget::Path(_) => {
            let m = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok();
            if let Some(m) = m.filter(|m| m.file_type().is_file()) {
                let (maj, min) = (libc::major(m.dev()), libc::minor(m.dev()));
                let id = Some(((maj << 20) | min, m.ino()));
                if ctx.log_files.iter().any(|l| l.id == id) {
                    return Some(Category::Logging);
                }
            }
            stdio.then_some(Category::Logging)
        }
        FdTarget::Pipe | FdTarget::Other(_) => stdio.then_some(Category::Logging),
    }
}

/// Socket lookups. A socket is asked directly (a duplicate of the target's fd, see
/// [`procfs::tcp_socket_of`]) when the kernel allows it; otherwise from a cache of
/// /proc/PID/net/tcp{,6}, re-read when an unknown socket inode shows up. Inodes known not
/// to be TCP (Unix sockets) are remembered either way.
pub struct SockCache {
    pidfd: Option<OwnedFd>,
    socks: HashMap<u64, TcpSock>,
    not_tcp: HashSet<u64>,
}

impl SockCache {
    /// /proc/PID/net/tcp{,6} is read only once a socket cannot be asked directly.
    pub fn new(pid: i32) -> SockCache {
        SockCache {
            pidfd: procfs::pidfd_open(pid).ok(),
            socks: HashMap::new(),
            not_tcp: HashSet::new(),
        }
    }

    /// The TCP endpoint of socket fd `fd` (inode `ino`), None if it is not TCP.
    fn tcp(&mut self, pid: i32, fd: i32, ino: u64) -> Option<TcpSock> {
        if self.not_tcp.contains(&ino) {
            return None;
        }
        if let Some(pidfd) = &self.pidfd {
            match procfs::tcp_socket_of(pidfd.as_fd(), fd) {
                // Bound but without a peer: a connect still in progress (or a bare bind).
                // The socket names its peer only once the handshake is done; the table
                // already does, so ask it in this rare case.
                Ok(Some(s)) if s.local_port != 0 && s.remote_port == 0 && !s.listening => {
                    self.socks = procfs::tcp_sockets(pid);
                    return Some(self.socks.get(&ino).copied().unwrap_or(s));
                }
                Ok(Some(s)) => return Some(s),
                Ok(None) => {
                    self.not_tcp.insert(ino);
                    return None;
                }
                Err(_) => {} // closed meanwhile, or not allowed: the table may still know it
            }
        }
        if !self.socks.contains_key(&ino) {
            self.socks = procfs::tcp_sockets(pid);
            if !self.socks.contains_key(&ino) {
                self.not_tcp.insert(ino);
            }
        }
        self.socks.get(&ino).copied()
    }

    /// The local port of a TCP socket fd (bound, maybe not yet listening).
    pub fn local_port(&mut self, pid: i32, fd: i32) -> Option<u16> {
        let Some(FdTarget::Socket(ino)) = procfs::fd_target(pid, fd) else {
            return None;
        };
        if self.pidfd.is_none() {
            self.socks = procfs::tcp_sockets(pid); // a bound socket is listed only from now
        }
        self.tcp(pid, fd, ino).map(|s| s.local_port)
    }

    /// A socket that is not TCP (see [`procfs::is_non_tcp_socket`]).
    pub fn is_non_tcp(&mut self, pid: i32, fd: i32) -> bool {
        matches!(procfs::fd_target(pid, fd), Some(FdTarget::Socket(ino)) if self.tcp(pid, fd, ino).is_none())
    }

    pub fn classify(&mut self, pid: i32, fd: i32, ctx: &Context) -> Option<Category> {
        let t = procfs::fd_target(pid, fd)?;
        let tcp = match t {
            FdTarget::Socket(ino) => self.tcp(pid, fd, ino),
            _ => None,
        };
        classify_target(pid, fd, &t, ctx, tcp.as_ref())
    }
}

/// Which of an epoll set's counters (0 network, 1 database, 2 logging, 3 other) an fd of
/// `category` adds to, or None for a wake-up channel, which says nothing about what a wait
/// is for: an eventfd or timerfd, and a socket that is neither TCP nor the database's
/// (`non_tcp_socket`; tokio's signal socketpair). A ring counts as other: its completions
/// can be for anything (tokio-uring: the clients'). The eBPF program applies the same rule.
pub fn epoll_cover_slot(
    pid: i32,
    fd: i32,
    category: Option<Category>,
    non_tcp_socket: impl FnOnce() -> bool,
) -> Option<usize> {
    match category {
        Some(Category::Network) => Some(0),
        Some(Category::Database) => Some(1),
        Some(Category::Logging) => Some(2),
        Some(Category::EventLoop) => procfs::is_io_uring(pid, fd).then_some(3),
        None if non_tcp_socket() => None,
        _ => Some(3),
    }
}
