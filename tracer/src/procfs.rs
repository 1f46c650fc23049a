//! Reading a process's fds and sockets from /proc: the ptrace backend's classifier, and
//! the discovery of the classification context (listening ports, log files, epoll sets).
//!
//! Everything here is read after the fact, so it is an approximation: an fd closed and
//! reused between the call and the read is misread. The eBPF backend classifies inside
//! the kernel instead and uses this module only for defaults.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A TCP socket from /proc/PID/net/tcp{,6}.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSock {
    pub local_port: u16,
    pub remote_port: u16,
    pub listening: bool,
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
            let Ok(inode) = cols[9].parse::<u64>() else {
                continue;
            };
            out.insert(
                inode,
                TcpSock {
                    local_port: port(cols[1]),
                    remote_port: port(cols[2]),
                    listening: cols[3] == "0A",
                },
            );
        }
    }
    out
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
