//! What each syscall is by default, and how to refine it by its fd: one table shared by
//! both backends (the eBPF backend loads it into the `sys_class` map).
//!
//! A call's category comes from its name (futex is `sync`, mmap `memory`), unless the call
//! works on an fd, in which case the fd decides (a write to a client socket is `network`, to
//! the log file `logging`) and the name only gives the fallback for fds of no category.

use crate::category::Category;

include!(concat!(env!("OUT_DIR"), "/syscall_names.rs"));

// Flags, same values as SC_* in bpf/tracer.bpf.c.
pub const FD0: u32 = 1 << 4;
pub const BYTES: u32 = 1 << 5;
pub const EPOLL_WAIT: u32 = 1 << 6;
pub const EPOLL_CTL: u32 = 1 << 7;
pub const POLL: u32 = 1 << 8;
pub const CONNECT: u32 = 1 << 9;
pub const CLOSE: u32 = 1 << 10;
pub const LISTEN: u32 = 1 << 11;
pub const RET_FD: u32 = 1 << 12;
pub const NORET: u32 = 1 << 13;
pub const EPOLL_NEW: u32 = 1 << 14;
/// Reads or receives data from its fd (arg0).
pub const IN: u32 = 1 << 15;
/// Writes or sends data to its fd (arg0), or shuts it down.
pub const OUT: u32 = 1 << 16;

/// Number of syscall slots the BPF program knows (ids above are ignored).
pub const NR_SLOTS: u32 = 512;

/// The name of syscall `nr` (x86_64), or `sys_NNN`.
pub fn name(nr: u32) -> String {
    match SYSCALL_NAMES.binary_search_by_key(&nr, |(n, _)| *n) {
        Ok(i) => SYSCALL_NAMES[i].1.to_string(),
        Err(_) => format!("sys_{nr}"),
    }
}

pub fn number(name: &str) -> Option<u32> {
    SYSCALL_NAMES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(nr, _)| *nr)
}

/// Default category and flags of a syscall by name.
pub fn class_of(name: &str) -> (Category, u32) {
    use Category::*;
    let io = FD0 | BYTES;
    match name {
        // fd I/O: the fd decides; bytes counted. (splice's arg0 is the fd it reads.)
        "read" | "readv" | "pread64" | "preadv" | "preadv2" | "recvfrom" | "recvmsg" | "splice" => {
            (Other, io | IN)
        }
        "write" | "writev" | "pwrite64" | "pwritev" | "pwritev2" | "sendto" | "sendmsg"
        | "sendfile" => (Other, io | OUT),
        // fd calls without byte counts (recvmmsg/sendmmsg return message counts).
        "recvmmsg" => (Other, FD0 | IN),
        "sendmmsg" | "shutdown" => (Other, FD0 | OUT),
        "accept" | "accept4" | "setsockopt" | "getsockopt" | "getpeername" | "getsockname"
        | "fsync" | "fdatasync" | "fcntl" | "ioctl" | "fstat" | "lseek" | "ftruncate" | "bind"
        | "flock" | "fadvise64" | "sync_file_range" => (Other, FD0),
        "close" => (Other, FD0 | CLOSE),
        "listen" => (Network, FD0 | LISTEN),
        "connect" => (Other, FD0 | CONNECT),
        "open" | "openat" | "openat2" | "creat" => (Other, RET_FD),
        // Waiting for readiness or completions.
        "epoll_wait" | "epoll_pwait" | "epoll_pwait2" => (EventLoop, EPOLL_WAIT),
        "epoll_ctl" => (EventLoop, EPOLL_CTL),
        "poll" | "ppoll" => (EventLoop, POLL),
        "epoll_create" | "epoll_create1" => (EventLoop, EPOLL_NEW),
        "select" | "pselect6" | "io_uring_enter" | "io_uring_setup" | "io_uring_register"
        | "eventfd" | "eventfd2" => (EventLoop, 0),
        "futex" | "futex_waitv" | "futex_wait" | "futex_wake" | "futex_requeue" | "sched_yield" => {
            (Sync, 0)
        }
        "exit" | "exit_group" => (Threads, NORET),
        "clone" | "clone3" | "fork" | "vfork" | "set_robust_list" | "get_robust_list" | "rseq"
        | "sched_setaffinity" | "sched_getaffinity" | "prctl" | "sigaltstack"
        | "rt_sigprocmask" | "set_tid_address" | "gettid" | "wait4" | "waitid" => (Threads, 0),
        "mmap" | "munmap" | "mprotect" | "madvise" | "brk" | "mremap" => (Memory, 0),
        _ => (Other, 0),
    }
}

/// The value of `sys_class[nr]` for every slot.
pub fn class_table() -> Vec<u32> {
    (0..NR_SLOTS)
        .map(|nr| {
            let (cat, flags) = class_of(&name(nr));
            cat as u32 | flags
        })
        .collect()
}

/// io_uring opcode names (include/uapi/linux/io_uring.h order).
const RING_OPS: &[&str] = &[
    "NOP",
    "READV",
    "WRITEV",
    "FSYNC",
    "READ_FIXED",
    "WRITE_FIXED",
    "POLL_ADD",
    "POLL_REMOVE",
    "SYNC_FILE_RANGE",
    "SENDMSG",
    "RECVMSG",
    "TIMEOUT",
    "TIMEOUT_REMOVE",
    "ACCEPT",
    "ASYNC_CANCEL",
    "LINK_TIMEOUT",
    "CONNECT",
    "FALLOCATE",
    "OPENAT",
    "CLOSE",
    "FILES_UPDATE",
    "STATX",
    "READ",
    "WRITE",
    "FADVISE",
    "MADVISE",
    "SEND",
    "RECV",
    "OPENAT2",
    "EPOLL_CTL",
    "SPLICE",
    "PROVIDE_BUFFERS",
    "REMOVE_BUFFERS",
    "TEE",
    "SHUTDOWN",
    "RENAMEAT",
    "UNLINKAT",
    "MKDIRAT",
    "SYMLINKAT",
    "LINKAT",
    "MSG_RING",
    "FSETXATTR",
    "SETXATTR",
    "FGETXATTR",
    "GETXATTR",
    "SOCKET",
    "URING_CMD",
    "SEND_ZC",
    "SENDMSG_ZC",
    "READ_MULTISHOT",
    "WAITID",
    "FUTEX_WAIT",
    "FUTEX_WAKE",
    "FUTEX_WAITV",
    "FIXED_FD_INSTALL",
    "FTRUNCATE",
    "BIND",
    "LISTEN",
    "RECV_ZC",
    "EPOLL_WAIT",
    "READV_FIXED",
    "WRITEV_FIXED",
    "PIPE",
];

/// The name of ring opcode `op`, lowercase like syscalls (`read`, `send`, `accept`).
pub fn ring_op_name(op: u32) -> String {
    match RING_OPS.get(op as usize) {
        Some(n) => n.to_ascii_lowercase(),
        None => format!("op_{op}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_knows_the_common_calls() {
        assert_eq!(name(0), "read");
        assert_eq!(number("epoll_wait"), Some(232));
        assert_eq!(class_of("futex").0, Category::Sync);
        assert_eq!(ring_op_name(22), "read");
        assert_eq!(ring_op_name(13), "accept");
        let t = class_table();
        assert_eq!(t[0] & FD0, FD0);
    }
}
