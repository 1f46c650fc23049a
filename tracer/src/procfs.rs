//! Reading a process's fds and sockets from /proc: the ptrace backend's classifier, and
//! the discovery of the classification context (listening ports, log files, epoll sets).
//!
//! Everything here is read after the fact, so it is an approximation: an fd closed and
//! reused between the call and the read is misread. The eBPF backend classifies inside
//! the kernel instead and uses this module only for defaults.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A TCP socket from /proc/PID/net/tcp{,6}.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSock {
    pub local_port: u16,
    /// The peer (the unspecified address, port 0, while there is none).
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    pub listening: bool,
}

impl TcpSock {
    pub fn remote(&self) -> SocketAddr {
        SocketAddr::new(self.remote_ip, self.remote_port)
    }
}

/// TCP sockets of the network namespace of `pid`, by inode.
pub fn tcp_sockets(pid: i32) -> HashMap<u64, TcpSock> {
    let mut out = HashMap::new();
    for f in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{f}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let port = |s: &str| {
                s.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    .unwrap_or(0)
            };
            let remote_ip = cols[2]
                .split(':')
                .next()
                .and_then(proc_net_ip)
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let Ok(inode) = cols[9].parse::<u64>() else {
                continue;
            };
            out.insert(
                inode,
                TcpSock {
                    local_port: port(cols[1]),
                    remote_ip,
                    remote_port: port(cols[2]),
                    listening: cols[3] == "0A",
                },
            );
        }
    }
    out
}

/// An address as /proc/net/tcp{,6} prints it: the 4 (IPv4) or 16 (IPv6) bytes of the
/// address in network order, printed as 32-bit words in host order (`%08X`).
fn proc_net_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// A `struct sockaddr_in` or `sockaddr_in6` as raw bytes (read from a traced process, or
/// filled by the kernel): family (host order) at 0, port (network order) at 2, then the
/// IPv4 address at 4 or the IPv6 address at 8. None for other families or too few bytes.
pub fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes([*b.first()?, *b.get(1)?]));
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    let ip = match family {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b.get(4..8)?).ok()?)),
        libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b.get(8..24)?).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A pidfd for `pid` (a thread-group leader), for [`tcp_socket_of`].
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: r is a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// The TCP endpoint of socket `fd` of the process behind `pidfd`, asked of the socket
/// itself through a duplicate of the fd (pidfd_getfd(2): Linux >= 5.6, allowed to whoever
/// may ptrace the process). That costs a handful of syscalls, where finding one socket in
/// /proc/PID/net/tcp{,6} ([`tcp_sockets`]) makes the kernel walk its whole established-
/// socket hash table (262,144 buckets on the lab machine) and print every TIME_WAIT socket
/// too: milliseconds per read, and a tracer that re-reads it for every new connection
/// caps the target at a few dozen connections per second.
///
/// Ok(None): a socket, but not TCP. Err: the fd could not be duplicated (closed, a kernel
/// without pidfd_getfd, no permission) or is not a socket.
///
/// The duplicate is closed before this returns, so the socket's life is not extended
/// beyond these few calls (the last close, and with it the FIN, stays the target's).
pub fn tcp_socket_of(pidfd: BorrowedFd<'_>, fd: i32) -> io::Result<Option<TcpSock>> {
    // SAFETY: pidfd_getfd takes a pidfd, an fd number and flags; returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: r is a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(r as RawFd) };
    let s = sock.as_raw_fd();
    let domain = sockopt_int(s, libc::SO_DOMAIN)?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Ok(None);
    }
    if sockopt_int(s, libc::SO_PROTOCOL)? != libc::IPPROTO_TCP {
        return Ok(None);
    }
    let unspecified = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    // ENOTCONN: no peer (listening, or not connected yet), which /proc shows as 0.0.0.0:0
    let remote = sockaddr(s, libc::getpeername).unwrap_or(unspecified);
    Ok(Some(TcpSock {
        local_port: sockaddr(s, libc::getsockname)?.port(),
        remote_ip: remote.ip(),
        remote_port: remote.port(),
        listening: sockopt_int(s, libc::SO_ACCEPTCONN)? != 0,
    }))
}

fn sockopt_int(s: RawFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of the sizes passed.
    let r = unsafe {
        libc::getsockopt(
            s,
            libc::SOL_SOCKET,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

type SockNameFn =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

/// The socket's own (getsockname) or peer's (getpeername) address.
fn sockaddr(s: RawFd, get: SockNameFn) -> io::Result<SocketAddr> {
    let mut sa = [0u8; std::mem::size_of::<libc::sockaddr_storage>()];
    let mut len = sa.len() as libc::socklen_t;
    // SAFETY: sa and len are valid for writes of the sizes passed.
    if unsafe { get(s, sa.as_mut_ptr().cast(), &mut len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_sockaddr(&sa[..(len as usize).min(sa.len())])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket address"))
}

/// What /proc/PID/fd/N points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdTarget {
    Socket(u64),
    Pipe,
    AnonInode(String),
    Path(PathBuf),
    Other(String),
}

/// A socket that is not TCP (a Unix socketpair, say tokio's signal-driver channel): in
/// an epoll set it is a wake-up channel, like an eventfd, unless it is the database's.
pub fn is_non_tcp_socket(pid: i32, fd: i32, tcp: &HashMap<u64, TcpSock>) -> bool {
    matches!(fd_target(pid, fd), Some(FdTarget::Socket(inode)) if !tcp.contains_key(&inode))
}

/// An io_uring instance: in an epoll set its completions can be for anything, so a wait
/// on that set is the event loop's (tokio-uring: the clients' I/O next to the database's).
pub fn is_io_uring(pid: i32, fd: i32) -> bool {
    fd_target(pid, fd) == Some(FdTarget::AnonInode("io_uring".into()))
}

pub fn fd_target(pid: i32, fd: i32) -> Option<FdTarget> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let s = link.to_string_lossy();
    Some(if let Some(ino) = s.strip_prefix("socket:[") {
        FdTarget::Socket(ino.trim_end_matches(']').parse().unwrap_or(0))
    } else if s.starts_with("pipe:[") {
        FdTarget::Pipe
    } else if let Some(a) = s.strip_prefix("anon_inode:") {
        FdTarget::AnonInode(a.trim_matches(['[', ']']).to_string())
    } else if s.starts_with('/') {
        FdTarget::Path(link)
    } else {
        FdTarget::Other(s.into_owned())
    })
}

/// The fds of a process, numerically.
pub fn fds(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// The `flags:` of /proc/PID/fdinfo/FD (octal open flags).
pub fn fd_flags(pid: i32, fd: i32) -> Option<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
}

/// The fds an epoll fd watches (`tfd:` lines of its fdinfo).
pub fn epoll_targets(pid: i32, epfd: i32) -> Vec<i32> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{epfd}")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("tfd:"))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect()
}

/// TCP ports the process listens on (LISTEN sockets it holds an fd for).
pub fn listening_ports(pid: i32) -> Vec<u16> {
    let socks = tcp_sockets(pid);
    let mut ports: Vec<u16> = fds(pid)
        .into_iter()
        .filter_map(|fd| match fd_target(pid, fd) {
            Some(FdTarget::Socket(ino)) => socks.get(&ino).filter(|s| s.listening),
            _ => None,
        })
        .map(|s| s.local_port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The process that listens on TCP `port` (in this network namespace): of the processes
/// holding the listening socket, the one whose parent does not (PostgreSQL's postmaster,
/// nginx's master), for tracing a server named by its port. None when nobody listens or
/// the socket's holders cannot be read.
pub fn listener_pid(port: u16) -> Option<i32> {
    let inodes: std::collections::HashSet<u64> = tcp_sockets(std::process::id() as i32)
        .into_iter()
        .filter(|(_, s)| s.listening && s.local_port == port)
        .map(|(ino, _)| ino)
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let holders: Vec<i32> = fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            fds(pid).into_iter().any(
                |fd| matches!(fd_target(pid, fd), Some(FdTarget::Socket(i)) if inodes.contains(&i)),
            )
        })
        .collect();
    let parent = |pid: i32| -> Option<i32> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    holders
        .iter()
        .copied()
        .find(|&p| parent(p).is_none_or(|pp| !holders.contains(&pp)))
}

/// Regular files the process has open for writing (its log files, by default).
pub fn files_open_for_writing(pid: i32) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fds(pid)
        .into_iter()
        .filter_map(|fd| match fd_target(pid, fd) {
            Some(FdTarget::Path(p)) => {
                let flags = fd_flags(pid, fd)?;
                let writable = flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32;
                let regular = fs::metadata(format!("/proc/{pid}/fd/{fd}"))
                    .map(|m| m.file_type().is_file())
                    .unwrap_or(false);
                (writable && regular).then_some(p)
            }
            _ => None,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Device (kernel encoding, MKDEV(major, minor) = major << 20 | minor) and inode of a file,
/// as the BPF program reads them from `inode->i_sb->s_dev` and `inode->i_ino`.
pub fn kernel_dev_ino(path: &Path) -> Option<(u32, u64)> {
    let m = fs::metadata(path).ok()?;
    let dev = m.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    Some(((major << 20) | minor, m.ino()))
}

/// Whether `pid` exists (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // state is the field after the parenthesised comm
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

pub fn comm(pid: i32, tid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

pub fn tasks(pid: i32) -> Vec<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The child processes of `pid` (of all its threads), from /proc/PID/task/TID/children.
pub fn children(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = tasks(pid)
        .into_iter()
        .flat_map(|tid| {
            fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Every process below `pid` in the process tree, as (pid, parent pid), parents first.
pub fn descendants(pid: i32) -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([pid]);
    let mut seen = std::collections::HashSet::from([pid]);
    while let Some(p) = queue.pop_front() {
        for c in children(p) {
            if seen.insert(c) {
                out.push((c, p));
                queue.push_back(c);
            }
        }
    }
    out
}

/// The process (thread group) of thread `tid`: `Tgid:` of /proc/TID/status.
pub fn tgid(tid: i32) -> Option<i32> {
    fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

pub fn environ_var(pid: i32, name: &str) -> Option<String> {
    let b = fs::read(format!("/proc/{pid}/environ")).ok()?;
    b.split(|&c| c == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn addresses_as_proc_net_tcp_prints_them() {
        // x86_64 (little-endian) only, like the tracer.
        assert_eq!(proc_net_ip("0100007F"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            proc_net_ip("00000000000000000000000001000000"),
            Some("::1".parse().unwrap())
        );
        assert_eq!(
            proc_net_ip("0000000000000000FFFF00000100007F"),
            Some("::ffff:127.0.0.1".parse().unwrap())
        );
        assert_eq!(proc_net_ip("0100007"), None);
    }

    #[test]
    fn sockaddrs_from_raw_bytes() {
        let mut v4 = vec![0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&5432u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 2]);
        assert_eq!(parse_sockaddr(&v4), Some("127.0.0.2:5432".parse().unwrap()));
        assert_eq!(parse_sockaddr(&v4[..6]), None, "too short");
        let mut v6 = vec![0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&5432u16.to_be_bytes());
        v6[23] = 1;
        assert_eq!(parse_sockaddr(&v6), Some("[::1]:5432".parse().unwrap()));
        v6[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(parse_sockaddr(&v6), None);
    }

    /// tcp_socket_of reads the same ports and state that /proc/net/tcp shows, from this
    /// process's own sockets (a process may always duplicate its own fds).
    #[test]
    fn a_socket_is_asked_for_its_ports() {
        let pidfd = pidfd_open(std::process::id() as i32).expect("pidfd_open (Linux >= 5.3)");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let ask = |fd: RawFd| tcp_socket_of(pidfd.as_fd(), fd);

        let l = ask(listener.as_raw_fd()).unwrap().expect("a TCP socket");
        assert_eq!((l.local_port, l.remote_port, l.listening), (port, 0, true));
        assert!(l.remote_ip.is_unspecified());
        let c = ask(client.as_raw_fd()).unwrap().expect("a TCP socket");
        let c_port = client.local_addr().unwrap().port();
        assert_eq!(
            (c.local_port, c.remote(), c.listening),
            (c_port, listener.local_addr().unwrap(), false)
        );
        let s = ask(server_side.as_raw_fd()).unwrap().expect("a TCP socket");
        assert_eq!(
            (s.local_port, s.remote(), s.listening),
            (port, client.local_addr().unwrap(), false)
        );

        // What /proc/PID/net/tcp says of the same sockets.
        let table = tcp_sockets(std::process::id() as i32);
        let ino = |fd: RawFd| match fd_target(std::process::id() as i32, fd) {
            Some(FdTarget::Socket(i)) => i,
            other => panic!("fd {fd} is {other:?}"),
        };
        assert_eq!(table.get(&ino(listener.as_raw_fd())), Some(&l));
        assert_eq!(table.get(&ino(client.as_raw_fd())), Some(&c));

        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(
            ask(a.as_raw_fd()).unwrap(),
            None,
            "a Unix socket is not TCP"
        );
        // (Not a just-closed fd: other tests' threads may reuse its number at once.)
        assert!(
            ask(i32::MAX).is_err(),
            "an fd the process does not have cannot be asked"
        );
    }
}
