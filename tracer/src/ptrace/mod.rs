//! The ptrace backend: a portable approximation for when eBPF is not permitted.
//!
//! - Attach mode: PTRACE_SEIZE every thread of /proc/PID/task (TRACECLONE catches the
//!   threads created later) and, unless children are not followed, every thread of every
//!   process below it (TRACEFORK and TRACEVFORK catch the processes forked later); stop at
//!   every syscall entry and exit.
//! - Spawn mode: the child stops itself before exec, then installs a seccomp filter that
//!   returns RET_TRACE only for the syscalls of interest (fd I/O, waits, futex: see
//!   [`traced_syscalls`]); every other syscall runs at full speed and is not counted.
//!
//! All ptrace requests and waits come from one worker thread, the tracer of every tracee;
//! its waits use `__WNOTHREAD` so that they never reap other children of the process (the
//! lab's own, or another session's tracees).
//!
//! fds are classified from /proc at the stop ([`classify`]). Ring operations are
//! invisible (they never pass through a syscall) and off-CPU time is not measured; the
//! profile says so. Timing includes the cost of the stops themselves.

pub mod classify;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use nix::errno::Errno;
use nix::sys::ptrace::{self, Options as PtraceOptions};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::category::Category;
use crate::context::Context;
use crate::profile::{role_of, Kind, Meta, Profile, Record, Stats, TargetInfo};
use crate::session::{Cmd, Options, Shared, Started, Target};
use crate::spawn::{fork_held, Argv, Hold};
use crate::syscalls::{self, class_of};
use classify::SockCache;

/// The syscalls spawn mode stops at: those an fd or a wait classifies, and thread
/// hand-offs. Memory and thread life-cycle calls run unobserved (execve too: it would
/// stop before the tracer is ready).
pub fn traced_syscalls() -> Vec<u32> {
    (0..syscalls::NR_SLOTS)
        .filter(|&nr| {
            let name = syscalls::name(nr);
            let (cat, flags) = class_of(&name);
            name != "execve"
                && !name.starts_with("sys_")
                && (flags & !syscalls::NORET != 0
                    || matches!(cat, Category::EventLoop | Category::Sync)
                    || NEW_FD.contains(&name.as_str())
                    || NEW_FDS.contains(&name.as_str()))
        })
        .collect()
}

/// Calls that return a new fd: the number may have been something else before, so its
/// cached category is dropped.
const NEW_FD: &[&str] = &[
    "accept",
    "accept4",
    "socket",
    "open",
    "openat",
    "openat2",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "fcntl",
    "eventfd",
    "eventfd2",
    "epoll_create",
    "epoll_create1",
    "timerfd_create",
    "signalfd",
    "signalfd4",
    "memfd_create",
    "pidfd_open",
    "pidfd_getfd",
    "io_uring_setup",
    "inotify_init",
    "inotify_init1",
    "fanotify_init",
    "userfaultfd",
    "open_by_handle_at",
];
/// Calls that create fds without returning them (or close many): forget every cached one.
const NEW_FDS: &[&str] = &[
    "pipe",
    "pipe2",
    "socketpair",
    "close_range",
    "recvmsg",
    "execve",
];

fn seccomp_filter() -> Result<Vec<libc::sock_filter>> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let rules = traced_syscalls()
        .into_iter()
        .map(|nr| (nr as i64, vec![]))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Trace(0),
        TargetArch::x86_64,
    )
    .context("building the seccomp filter")?;
    let prog: BpfProgram = filter.try_into().context("compiling the seccomp filter")?;
    Ok(prog
        .into_iter()
        .map(|f| libc::sock_filter {
            code: f.code,
            jt: f.jt,
            jf: f.jf,
            k: f.k,
        })
        .collect())
}

/// The realtime signal that interrupts the worker's waitpid (no-op handler, no SA_RESTART).
fn wake_signal() -> i32 {
    libc::SIGRTMIN() + 5
}

extern "C" fn noop(_: libc::c_int) {}

fn install_wake_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = noop as *const () as usize;
        sa.sa_flags = 0;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(wake_signal(), &sa, std::ptr::null_mut());
    });
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    nr: u32,
    arg0: u64,
    cat: Category,
    flags: u32,
    ts: Instant,
}

#[derive(Default)]
struct Thread {
    entry: Option<Entry>,
    comm: Option<String>,
    /// Its process, read from /proc once.
    tgid: Option<i32>,
}

/// What the tracer knows of one traced process's fds.
struct Process {
    socks: SockCache,
    /// Categories of fds already classified (only definite ones: a socket not yet
    /// connected or a file not yet known as the log is looked up again). Dropped when the
    /// number is closed or handed out again, so that /proc is read once per fd, not per call.
    fd_cache: HashMap<i32, Category>,
    /// Per epoll fd: how many fds of network, database, logging, other it covers.
    epoll: HashMap<i32, [i32; 4]>,
}

impl Process {
    fn new(tgid: i32) -> Process {
        Process {
            socks: SockCache::new(tgid),
            fd_cache: HashMap::new(),
            epoll: HashMap::new(),
        }
    }
}

struct Tracer {
    pid: i32,
    spawn: bool,
    ctx: Context,
    threads: HashMap<i32, Thread>,
    /// The traced processes by tgid: the target, and the ones below it.
    procs: HashMap<i32, Process>,
    /// Process roles (crate::procrole) by tgid, kept after the process exits.
    roles: HashMap<i32, String>,
    stats: HashMap<(i32, String, u32, Category), Stats>,
    exited: bool,
}

/// The worker: attach or spawn, then loop on waitpid until told to stop.
pub(crate) fn run(
    target: Target,
    opts: Options,
    ready: mpsc::Sender<Result<Started>>,
    cmds: mpsc::Receiver<Cmd>,
    shared: Arc<Shared>,
) -> Result<Vec<Profile>> {
    install_wake_handler();
    let me = unsafe { libc::pthread_self() };
    let sig = wake_signal();
    let wake: Box<dyn Fn() + Send> = Box::new(move || unsafe {
        libc::pthread_kill(me, sig);
    });

    let children = opts.children;
    let attached = match &target {
        Target::Pid(pid) => attach(*pid, children).map(|_| (*pid, false, procfs_cmd(*pid))),
        Target::Command(cmd) => spawn(cmd, children).map(|pid| {
            let c = cmd
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            (pid, true, c)
        }),
    };
    let (pid, spawned, command) = match attached {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            bail!("not attached");
        }
    };
    let ctx = Context::resolve(pid, &opts.overrides);
    let mut t = Tracer {
        pid,
        spawn: spawned,
        threads: HashMap::new(),
        procs: HashMap::new(),
        roles: HashMap::new(),
        stats: HashMap::new(),
        exited: false,
        ctx,
    };
    if !spawned {
        let below = if children {
            crate::procfs::descendants(pid)
        } else {
            Vec::new()
        };
        for p in std::iter::once(pid).chain(below.into_iter().map(|(p, _)| p)) {
            for tid in crate::procfs::tasks(p) {
                t.threads.insert(
                    tid,
                    Thread {
                        tgid: Some(p),
                        ..Thread::default()
                    },
                );
            }
            t.seed_epoll(p);
        }
    } else {
        t.threads.insert(
            pid,
            Thread {
                tgid: Some(pid),
                ..Thread::default()
            },
        );
    }
    let start = Instant::now();
    let _ = ready.send(Ok(Started {
        pid,
        wake: Some(wake),
    }));

    let mut notes = vec![
        "ptrace backend: fds are classified from /proc at each stop, an approximation".to_string(),
        "ptrace backend: io_uring ring operations are invisible to it".to_string(),
        "ptrace backend: off-CPU time is not measured; call times include the cost of the stops"
            .to_string(),
    ];
    notes.extend(t.ctx.notes());
    if spawned {
        notes.push(format!(
            "spawn mode: only the {} syscalls of its seccomp filter are counted (fd I/O, waits, \
             futex); memory and thread life-cycle calls are not",
            traced_syscalls().len()
        ));
    }
    let mut last_refresh = Instant::now();
    let meta = |t: &Tracer, notes: &[String]| Meta {
        backend: "ptrace".into(),
        approximate: true,
        ring_ops_visible: false,
        offcpu_measured: false,
        target: TargetInfo {
            pid,
            command: command.clone(),
            spawned,
            exited: t.exited,
            children,
        },
        context: t.ctx.info(),
        duration_s: start.elapsed().as_secs_f64(),
        dropped_events: 0,
        notes: notes.to_vec(),
    };

    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        loop {
            match cmds.try_recv() {
                Ok(Cmd::Snapshot(tx)) => {
                    let _ = tx.send(vec![t.profile(meta(&t, &notes))]);
                }
                Ok(Cmd::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                    shared.stop.store(true, Ordering::SeqCst);
                    break;
                }
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if t.exited {
            // Nothing left to wait for: serve commands only.
            match cmds.recv_timeout(Duration::from_millis(100)) {
                Ok(Cmd::Snapshot(tx)) => {
                    let _ = tx.send(vec![t.profile(meta(&t, &notes))]);
                }
                Ok(Cmd::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            continue;
        }
        if last_refresh.elapsed() > Duration::from_secs(1) {
            last_refresh = Instant::now();
            t.ctx.refresh(pid);
        }
        match waitpid(None, Some(WaitPidFlag::__WALL | WaitPidFlag::__WNOTHREAD)) {
            Ok(ws) => t.handle(ws),
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => {
                t.exited = true;
            }
            Err(e) => return Err(e).context("waitpid"),
        }
        if t.exited && !shared.exited.load(Ordering::SeqCst) {
            shared.exited.store(true, Ordering::SeqCst);
            notes.push(format!(
                "the target (pid {pid}) exited after {:.1} s; the trace ends there",
                start.elapsed().as_secs_f64()
            ));
        }
    }
    let profile = t.profile(meta(&t, &notes));
    if !t.exited {
        if spawned {
            t.finish_child();
        } else {
            t.detach_all();
        }
    }
    Ok(vec![profile])
}

fn procfs_cmd(pid: i32) -> String {
    crate::procfs::cmdline(pid)
}

/// Seizes every thread (re-reading the task list until it is stable: threads created while
/// we seize are caught by TRACECLONE only once their parent is seized), with `children`
/// every thread of every process below too (TRACEFORK likewise catches the processes
/// forked meanwhile), then interrupts each so that the first stop starts syscall tracing.
fn attach(pid: i32, children: bool) -> Result<()> {
    crate::context::check_pid(pid)?;
    let mut opts = PtraceOptions::PTRACE_O_TRACESYSGOOD | PtraceOptions::PTRACE_O_TRACECLONE;
    if children {
        opts |= PtraceOptions::PTRACE_O_TRACEFORK | PtraceOptions::PTRACE_O_TRACEVFORK;
    }
    let mut seized = std::collections::HashSet::new();
    loop {
        let mut new = false;
        let below = if children {
            crate::procfs::descendants(pid)
        } else {
            Vec::new()
        };
        let procs = std::iter::once(pid).chain(below.into_iter().map(|(p, _)| p));
        for tid in procs.flat_map(crate::procfs::tasks) {
            if seized.insert(tid) {
                new = true;
                match ptrace::seize(Pid::from_raw(tid), opts) {
                    Ok(()) => {}
                    Err(Errno::ESRCH) => continue,
                    // Not refusals: see seize_refusal_is_benign.
                    Err(Errno::EPERM) if seize_refusal_is_benign(tid) => continue,
                    Err(Errno::EPERM) => bail!(
                        "not allowed to trace pid {pid}: ptrace needs the same user (and \
                         kernel.yama.ptrace_scope 0) or CAP_SYS_PTRACE"
                    ),
                    Err(e) => bail!("PTRACE_SEIZE {tid}: {e}"),
                }
                let _ = ptrace::interrupt(Pid::from_raw(tid));
            }
        }
        if !new {
            return Ok(());
        }
    }
}

/// Whether PTRACE_SEIZE's EPERM for thread `tid` is no refusal. The kernel answers EPERM
/// in two cases that are not about permission:
/// - the thread was created by a thread seized a moment ago, so TRACECLONE attached it to
///   us already (it will report its own PTRACE_EVENT_STOP);
/// - the thread has begun to exit (its exit state is set; thread-per-request servers end
///   threads all the time), or is gone by now.
fn seize_refusal_is_benign(tid: i32) -> bool {
    traced_by_me(tid) || !crate::procfs::alive(tid)
}

/// Whether thread `tid` is traced by the calling thread (its TracerPid in /proc).
fn traced_by_me(tid: i32) -> bool {
    let me = nix::unistd::gettid().as_raw();
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .and_then(|v| v.trim().parse::<i32>().ok())
        })
        == Some(me)
}

/// Forks the command held on SIGSTOP, sets the options, and lets it install its seccomp
/// filter and exec.
fn spawn(cmd: &[std::ffi::OsString], children: bool) -> Result<i32> {
    let argv = Argv::new(cmd)?;
    let filter = seccomp_filter()?;
    let pid = fork_held(&argv, &Hold::Ptrace(filter))?;
    let p = Pid::from_raw(pid);
    match waitpid(p, Some(WaitPidFlag::__WALL | WaitPidFlag::__WNOTHREAD))
        .context("waiting for the child to stop")?
    {
        WaitStatus::Stopped(_, Signal::SIGSTOP) => {}
        other => bail!("the child did not stop as expected: {other:?}"),
    }
    let mut opts = PtraceOptions::PTRACE_O_TRACESYSGOOD
        | PtraceOptions::PTRACE_O_TRACECLONE
        | PtraceOptions::PTRACE_O_TRACESECCOMP
        | PtraceOptions::PTRACE_O_TRACEEXEC
        | PtraceOptions::PTRACE_O_EXITKILL;
    if children {
        opts |= PtraceOptions::PTRACE_O_TRACEFORK | PtraceOptions::PTRACE_O_TRACEVFORK;
    }
    ptrace::setoptions(p, opts).context("PTRACE_SETOPTIONS")?;
    ptrace::cont(p, None).context("PTRACE_CONT")?;
    Ok(pid)
}

impl Tracer {
    /// Restarts a thread: to the next syscall stop (attach mode, or to catch the exit of a
    /// seccomp-stopped call), or to the next seccomp stop (spawn mode).
    fn resume(&self, tid: Pid, sig: Option<Signal>, to_exit: bool) {
        let r = if !self.spawn || to_exit {
            ptrace::syscall(tid, sig)
        } else {
            ptrace::cont(tid, sig)
        };
        let _ = r;
    }

    fn handle(&mut self, ws: WaitStatus) {
        match ws {
            WaitStatus::PtraceSyscall(tid) => {
                let info = ptrace::syscall_info(tid);
                let mut to_exit = false;
                if let Ok(info) = info {
                    match info.op {
                        libc::PTRACE_SYSCALL_INFO_ENTRY => {
                            let e = unsafe { info.u.entry };
                            self.on_entry(tid.as_raw(), e.nr as u32, e.args);
                        }
                        libc::PTRACE_SYSCALL_INFO_EXIT => {
                            let x = unsafe { info.u.exit };
                            self.on_exit(tid.as_raw(), x.sval);
                        }
                        _ => {}
                    }
                    // In spawn mode an entry seen here (rare: after a signal) still wants
                    // its exit.
                    to_exit = info.op == libc::PTRACE_SYSCALL_INFO_ENTRY;
                }
                self.threads.entry(tid.as_raw()).or_default();
                self.resume(tid, None, to_exit);
            }
            WaitStatus::PtraceEvent(tid, _, ev) => {
                self.threads.entry(tid.as_raw()).or_default();
                let mut to_exit = false;
                if ev == libc::PTRACE_EVENT_SECCOMP {
                    if let Ok(info) = ptrace::syscall_info(tid) {
                        if info.op == libc::PTRACE_SYSCALL_INFO_SECCOMP {
                            let s = unsafe { info.u.seccomp };
                            self.on_entry(tid.as_raw(), s.nr as u32, s.args);
                            to_exit = true;
                        }
                    }
                } else if ev == libc::PTRACE_EVENT_CLONE
                    || ev == libc::PTRACE_EVENT_FORK
                    || ev == libc::PTRACE_EVENT_VFORK
                {
                    if let Ok(new) = ptrace::getevent(tid) {
                        self.threads.entry(new as i32).or_default();
                    }
                } else if ev == libc::PTRACE_EVENT_EXEC {
                    self.exec(tid.as_raw());
                }
                // PTRACE_EVENT_STOP (first stop after seize, group stops): go on.
                self.resume(tid, None, to_exit);
            }
            WaitStatus::Stopped(tid, sig) => {
                // A thread created under TRACEME starts with a SIGSTOP: swallow it.
                let fresh = !self.threads.contains_key(&tid.as_raw());
                self.threads.entry(tid.as_raw()).or_default();
                if sig == Signal::SIGSTOP && fresh {
                    self.resume(tid, None, false);
                } else {
                    self.resume(tid, Some(sig), false);
                }
            }
            WaitStatus::Exited(tid, _) | WaitStatus::Signaled(tid, _, _) => {
                if let Some(t) = self.threads.remove(&tid.as_raw()) {
                    // A child process gone for good: its fds go with it.
                    if t.tgid == Some(tid.as_raw()) && tid.as_raw() != self.pid {
                        self.procs.remove(&tid.as_raw());
                    }
                }
                if tid.as_raw() == self.pid || self.threads.is_empty() {
                    self.exited = !crate::procfs::alive(self.pid) || tid.as_raw() == self.pid;
                }
            }
            _ => {}
        }
    }

    /// The process of thread `tid` (read from /proc once).
    fn tgid(&mut self, tid: i32) -> i32 {
        let th = self.threads.entry(tid).or_default();
        *th.tgid
            .get_or_insert_with(|| crate::procfs::tgid(tid).unwrap_or(tid))
    }

    /// The fd state of process `tgid`, created when first seen.
    fn process(&mut self, tgid: i32) -> &mut Process {
        if !self.roles.contains_key(&tgid) {
            let role = crate::procrole::of_pid(tgid, tgid == self.pid);
            self.roles.insert(tgid, role.unwrap_or_else(|| "?".into()));
        }
        self.procs.entry(tgid).or_insert_with(|| Process::new(tgid))
    }

    fn role(&mut self, tid: i32) -> String {
        let tgid = self.tgid(tid);
        let th = self.threads.entry(tid).or_default();
        if th.comm.is_none() {
            th.comm = Some(crate::procfs::comm(tgid, tid));
        }
        role_of(th.comm.as_deref().unwrap_or(""))
    }

    /// Thread `tid` has exec'd another program: a new name, maybe a new role, and the fds
    /// closed on exec are gone (the exec'ing thread is now the leader: tid is the tgid).
    fn exec(&mut self, tid: i32) {
        self.threads.insert(
            tid,
            Thread {
                tgid: Some(tid),
                ..Thread::default()
            },
        );
        self.roles.remove(&tid);
        self.procs.remove(&tid);
    }

    fn classify(&mut self, tgid: i32, fd: i32) -> Option<Category> {
        self.process(tgid);
        let ctx = &self.ctx;
        let p = self.procs.get_mut(&tgid).expect("just created");
        if let Some(c) = p.fd_cache.get(&fd) {
            return Some(*c);
        }
        let c = p.socks.classify(tgid, fd, ctx)?;
        p.fd_cache.insert(fd, c);
        Some(c)
    }

    fn on_entry(&mut self, tid: i32, nr: u32, args: [u64; 6]) {
        let name = syscalls::name(nr);
        let (mut cat, flags) = class_of(&name);
        let pid = self.tgid(tid);
        if flags & syscalls::EPOLL_WAIT != 0 {
            cat = self.epoll_wait_cat(pid, args[0] as i32);
        } else if flags & syscalls::EPOLL_CTL != 0 {
            let (epfd, op, fd) = (args[0] as i32, args[1] as i32, args[2] as i32);
            if op == libc::EPOLL_CTL_ADD || op == libc::EPOLL_CTL_DEL {
                let category = self.classify(pid, fd);
                let p = self.process(pid);
                let socks = &mut p.socks;
                let slot =
                    classify::epoll_cover_slot(pid, fd, category, || socks.is_non_tcp(pid, fd));
                if let Some(slot) = slot {
                    let n = p.epoll.entry(epfd).or_default();
                    n[slot] += if op == libc::EPOLL_CTL_ADD { 1 } else { -1 };
                }
            }
        } else if flags & syscalls::POLL != 0 {
            if args[1] == 1 {
                if let Some(fd) = read_i32(pid, args[0]) {
                    if let Some(c) = self.classify(pid, fd) {
                        cat = c;
                    }
                }
            }
        } else if flags & syscalls::CONNECT != 0 {
            // Not connected yet: the address says where it goes.
            if read_sockaddr(pid, args[1], args[2]).is_some_and(|a| self.ctx.is_db_peer(a)) {
                cat = Category::Database;
            }
        } else if flags & syscalls::FD0 != 0 {
            if let Some(c) = self.classify(pid, args[0] as i32) {
                cat = c;
            }
            if flags & syscalls::CLOSE != 0 {
                let p = self.process(pid);
                p.fd_cache.remove(&(args[0] as i32));
                p.epoll.remove(&(args[0] as i32));
            }
        }
        let e = Entry {
            nr,
            arg0: args[0],
            cat,
            flags,
            ts: Instant::now(),
        };
        if flags & syscalls::NORET != 0 {
            let role = self.role(tid);
            self.stats
                .entry((pid, role, nr, cat))
                .or_default()
                .record(0, 0, false);
            return;
        }
        self.threads.entry(tid).or_default().entry = Some(e);
    }

    fn on_exit(&mut self, tid: i32, ret: i64) {
        let Some(e) = self.threads.get_mut(&tid).and_then(|t| t.entry.take()) else {
            return;
        };
        let dur = e.ts.elapsed().as_nanos() as u64;
        let mut cat = e.cat;
        let name = syscalls::name(e.nr);
        if ret == 0 && (name == "execve" || name == "execveat") {
            self.exec(tid);
        }
        let pid = self.tgid(tid);
        let p = self.process(pid);
        if ret >= 0 && NEW_FD.contains(&name.as_str()) {
            p.fd_cache.remove(&(ret as i32));
        } else if NEW_FDS.contains(&name.as_str()) {
            p.fd_cache.clear();
        }
        if e.flags & syscalls::LISTEN != 0 && ret == 0 {
            // Only now is the socket in /proc/net/tcp (bound sockets are not listed).
            if let Some(port) = p.socks.local_port(pid, e.arg0 as i32) {
                self.ctx.add_listen_port(port);
            }
        }
        if e.flags & syscalls::RET_FD != 0 && ret >= 0 {
            // The log file may have just been created.
            self.ctx.refresh_log_ids();
            if let Some(c) = self.classify(pid, ret as i32) {
                cat = c;
            }
        }
        let role = self.role(tid);
        self.stats
            .entry((pid, role, e.nr, cat))
            .or_default()
            .record(ret, dur, e.flags & syscalls::BYTES != 0);
    }

    fn epoll_wait_cat(&mut self, pid: i32, epfd: i32) -> Category {
        match self.process(pid).epoll.get(&epfd) {
            Some(n) if n[0] <= 0 && n[3] <= 0 && n[1] > 0 && n[2] <= 0 => Category::Database,
            Some(n) if n[0] <= 0 && n[3] <= 0 && n[2] > 0 && n[1] <= 0 => Category::Logging,
            _ => Category::EventLoop,
        }
    }

    /// The epoll sets process `pid` holds at attach, from /proc (fdinfo `tfd:` lines).
    fn seed_epoll(&mut self, pid: i32) {
        for fd in crate::procfs::fds(pid) {
            if crate::procfs::fd_target(pid, fd)
                != Some(crate::procfs::FdTarget::AnonInode("eventpoll".into()))
            {
                continue;
            }
            let mut n = [0i32; 4];
            for tfd in crate::procfs::epoll_targets(pid, fd) {
                let category = self.classify(pid, tfd);
                let socks = &mut self.process(pid).socks;
                if let Some(s) =
                    classify::epoll_cover_slot(pid, tfd, category, || socks.is_non_tcp(pid, tfd))
                {
                    n[s] += 1;
                }
            }
            self.process(pid).epoll.insert(fd, n);
        }
    }

    fn profile(&mut self, meta: Meta) -> Profile {
        // Read again for the living: a process titles itself after the fork (PostgreSQL's
        // backends), maybe after its first calls were seen.
        for (pid, role) in self.roles.iter_mut() {
            if let Some(r) = crate::procrole::of_pid(*pid, *pid == self.pid) {
                *role = r;
            }
        }
        let records: Vec<Record> = self
            .stats
            .iter()
            .map(|((pid, role, nr, cat), s)| Record {
                pid: *pid,
                process: self
                    .roles
                    .get(pid)
                    .cloned()
                    .unwrap_or_else(|| format!("{role} (exited)")),
                role: role.clone(),
                kind: Kind::Syscall,
                name: syscalls::name(*nr),
                category: *cat,
                stats: s.clone(),
            })
            .collect();
        Profile::build(meta, &records, Stats::default())
    }

    /// Attach mode: interrupt every thread and detach it at its stop, passing on any
    /// signal it was about to receive. The target runs on as before.
    fn detach_all(&mut self) {
        for &tid in self.threads.keys() {
            let _ = ptrace::interrupt(Pid::from_raw(tid));
        }
        // Threads already let go: a clone event reported after its child's own stop must
        // not bring the child back into the set (we would wait for it until the deadline).
        let mut gone = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        while !self.threads.is_empty() && Instant::now() < deadline {
            match waitpid(None, Some(WaitPidFlag::__WALL | WaitPidFlag::__WNOTHREAD)) {
                Ok(WaitStatus::Stopped(tid, sig)) => {
                    let s = (sig != Signal::SIGSTOP).then_some(sig);
                    let _ = ptrace::detach(tid, s);
                    self.threads.remove(&tid.as_raw());
                    gone.insert(tid.as_raw());
                }
                Ok(WaitStatus::PtraceEvent(tid, _, ev)) => {
                    if ev == libc::PTRACE_EVENT_CLONE {
                        if let Ok(new) = ptrace::getevent(tid) {
                            // Created while we were leaving: it starts traced, detach it too.
                            if !gone.contains(&(new as i32)) {
                                self.threads.insert(new as i32, Thread::default());
                            }
                        }
                    }
                    let _ = ptrace::detach(tid, None);
                    self.threads.remove(&tid.as_raw());
                    gone.insert(tid.as_raw());
                }
                Ok(WaitStatus::PtraceSyscall(tid)) => {
                    let _ = ptrace::detach(tid, None);
                    self.threads.remove(&tid.as_raw());
                    gone.insert(tid.as_raw());
                }
                Ok(WaitStatus::Exited(tid, _)) | Ok(WaitStatus::Signaled(tid, _, _)) => {
                    self.threads.remove(&tid.as_raw());
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
    }

    /// Spawn mode: the child cannot run without us (its RET_TRACE calls would fail with
    /// ENOSYS), so it is stopped: SIGTERM, serving its stops until it exits (SIGKILL
    /// after 5 s).
    fn finish_child(&mut self) {
        let pid = Pid::from_raw(self.pid);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut killed = false;
        loop {
            if !killed && Instant::now() > deadline {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                killed = true;
            }
            match waitpid(None, Some(WaitPidFlag::__WALL | WaitPidFlag::__WNOTHREAD)) {
                Ok(WaitStatus::Exited(p, _)) | Ok(WaitStatus::Signaled(p, _, _)) if p == pid => {
                    return
                }
                Ok(ws) => self.handle(ws),
                Err(Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }
}

fn read_mem(pid: i32, addr: u64, buf: &mut [u8]) -> bool {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    n == buf.len() as isize
}

fn read_i32(pid: i32, addr: u64) -> Option<i32> {
    let mut b = [0u8; 4];
    read_mem(pid, addr, &mut b).then(|| i32::from_ne_bytes(b))
}

/// The sockaddr_in/in6 of `len` bytes at `addr` in the tracee (connect's arguments).
fn read_sockaddr(pid: i32, addr: u64, len: u64) -> Option<SocketAddr> {
    let mut b = [0u8; std::mem::size_of::<libc::sockaddr_in6>()];
    let n = (len as usize).min(b.len());
    if !read_mem(pid, addr, &mut b[..n]) {
        return None;
    }
    crate::procfs::parse_sockaddr(&b[..n])
}
