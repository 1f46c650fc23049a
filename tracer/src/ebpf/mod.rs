//! The eBPF backend: loads `bpf/tracer.bpf.c` (a libbpf-rs skeleton built by build.rs)
//! for one tgid and, by default, its descendants (plus companion processes and theirs),
//! keeps the classification maps current, and reads the per-CPU aggregates back into a
//! [`Profile`] per traced tree. No per-event traffic: user space reads the maps only when
//! a snapshot or the final profile is asked for.

mod skel {
    #![allow(
        clippy::all,
        clippy::pedantic,
        non_camel_case_types,
        dead_code,
        unused_imports
    )]
    include!(concat!(env!("OUT_DIR"), "/tracer.skel.rs"));
}

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags};

use crate::category::Category;
use crate::context::{Context, DbAddrs, DbEndpoint};
use crate::profile::{role_of, Kind, Meta, Profile, Record, Stats, TargetInfo, HIST_BUCKETS};
use crate::ptrace::classify;
use crate::session::{Cmd, Options, Shared, Started, Target};
use crate::spawn::{fork_held, Argv, Hold};
use crate::{procfs, syscalls};
use skel::*;

const KIND_SYSCALL: u8 = 0;
const KIND_RING: u8 = 1;
const KIND_SCHED: u8 = 2;
const DB_PATH_MAX: usize = 108;
/// Slots of the program's direct-mapped set of traced tgids, and its flag bits.
const TGID_SLOTS: usize = 8192;
const SLOT_USED: u32 = 1 << 30;
const SLOT_MORE: u32 = 1 << 31;
const SLOT_TGID: u32 = SLOT_USED - 1;

/// The worker: attach, then serve snapshot/stop until told to stop.
pub(crate) fn run(
    target: Target,
    opts: Options,
    ready: mpsc::Sender<Result<Started>>,
    cmds: mpsc::Receiver<Cmd>,
    shared: Arc<Shared>,
) -> Result<Vec<Profile>> {
    let mut notes = match crate::privileges::check_ebpf() {
        Ok(n) => n,
        Err(e) => {
            let _ = ready.send(Err(e));
            bail!("not attached");
        }
    };

    // Spawn mode: fork the child held on a pipe, so that the program is loaded for its
    // pid before it runs a single instruction of the command.
    let mut held: Option<(i32, i32)> = None; // (pid, pipe write end)
    let (pid, spawned, command) = match &target {
        Target::Pid(pid) => {
            if let Err(e) = crate::context::check_pid(*pid) {
                let _ = ready.send(Err(e));
                bail!("not attached");
            }
            (*pid, false, procfs::cmdline(*pid))
        }
        Target::Command(cmd) => {
            let spawned = (|| -> Result<(i32, i32)> {
                let argv = Argv::new(cmd)?;
                let mut fds = [0i32; 2];
                if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                    bail!("pipe: {}", std::io::Error::last_os_error());
                }
                let pid = fork_held(&argv, &Hold::Pipe(fds[0]))?;
                unsafe { libc::close(fds[0]) };
                Ok((pid, fds[1]))
            })();
            match spawned {
                Ok((pid, w)) => {
                    held = Some((pid, w));
                    let c = cmd
                        .iter()
                        .map(|a| a.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(" ");
                    (pid, true, c)
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    bail!("not attached");
                }
            }
        }
    };
    let kill_held = |held: &Option<(i32, i32)>| {
        if let Some((pid, w)) = held {
            unsafe {
                libc::close(*w);
                libc::kill(*pid, libc::SIGKILL);
                libc::waitpid(*pid, std::ptr::null_mut(), 0);
            }
        }
    };

    for &c in &opts.companions {
        if let Err(e) = crate::context::check_pid(c) {
            kill_held(&held);
            let _ = ready.send(Err(e.context("a process to trace beside the target")));
            bail!("not attached");
        }
    }
    let mut ctx = Context::resolve(pid, &opts.overrides);
    ctx.include(&opts.companions);
    notes.extend(ctx.notes());
    let mut tree = Tree::new(pid, &opts);
    let mut storage = MaybeUninit::uninit();
    // Everything the programs classify with goes into the maps before they are attached:
    // a call made in between would find no listening port and no log file (under load,
    // the first few milliseconds of calls were `other`).
    let attached = load(&mut storage, pid, &ctx, &opts).and_then(|mut skel| {
        sync_maps(&mut skel, &ctx)?;
        if !spawned {
            seed_epoll_sets(&skel, pid, &ctx);
        }
        tree.discover(&mut skel)?;
        skel.attach().context("attaching the BPF programs")?;
        // Processes forked between the walk above and the attach.
        tree.discover(&mut skel)?;
        Ok(skel)
    });
    let mut skel = match attached {
        Ok(s) => s,
        Err(e) => {
            kill_held(&held);
            let _ = ready.send(Err(e));
            bail!("not attached");
        }
    };
    if let Some((_, w)) = held {
        unsafe {
            libc::write(w, [1u8].as_ptr() as *const libc::c_void, 1);
            libc::close(w);
        }
    }
    let start = Instant::now();
    let _ = ready.send(Ok(Started { pid, wake: None }));

    let children = opts.children;
    let target_info = |exited: bool| TargetInfo {
        pid,
        command: command.clone(),
        spawned,
        exited,
        children,
    };
    let mut exited = false;
    let mut last_refresh = Instant::now();
    let mut last_listen_refresh = Instant::now();
    loop {
        match cmds.recv_timeout(Duration::from_millis(100)) {
            Ok(Cmd::Snapshot(tx)) => {
                let meta = meta(&ctx, target_info(exited), start, &notes, &skel);
                let _ = tx.send(read_profiles(&skel, meta, &mut tree)?);
            }
            Ok(Cmd::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if !exited {
            let gone = if spawned {
                let mut status = 0;
                unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == pid }
            } else {
                !procfs::alive(pid)
            };
            if gone {
                exited = true;
                shared.exited.store(true, Ordering::SeqCst);
                notes.push(format!(
                    "the target (pid {pid}) exited after {:.1} s; the trace ends there",
                    start.elapsed().as_secs_f64()
                ));
            } else if last_refresh.elapsed() > Duration::from_secs(1) {
                last_refresh = Instant::now();
                // Name the processes forked since (a PostgreSQL backend retitles itself
                // right after the fork; a short-lived one may be gone by the end).
                tree.name_new(&skel);
                // listen() is seen in the kernel (add_listen_port), so the costly scan of
                // the listening sockets only catches those that arrive without one (passed
                // over a Unix socket, or listened on by an io_uring op): every 10 s.
                let changed = if last_listen_refresh.elapsed() > Duration::from_secs(10) {
                    last_listen_refresh = Instant::now();
                    ctx.refresh(pid)
                } else {
                    ctx.refresh_log_files(pid)
                };
                if changed {
                    sync_maps(&mut skel, &ctx)?;
                }
            } else if ctx.refresh_log_ids() {
                // A log file named by the user was just created: known within 100 ms.
                sync_maps(&mut skel, &ctx)?;
            }
        }
    }
    let meta = meta(&ctx, target_info(exited), start, &notes, &skel);
    let profile = read_profiles(&skel, meta, &mut tree);
    // Dropping the skeleton destroys links and programs: nothing outlives the tracer.
    drop(skel);
    if spawned && !exited {
        stop_child(pid);
    }
    profile
}

/// SIGTERM, then SIGKILL after 5 s, and reap.
pub(crate) fn stop_child(pid: i32) {
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut st = 0;
            if libc::waitpid(pid, &mut st, libc::WNOHANG) != 0 {
                return;
            }
            if Instant::now() > deadline {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut st, 0);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn meta(
    ctx: &Context,
    target: TargetInfo,
    start: Instant,
    notes: &[String],
    skel: &TracerSkel,
) -> Meta {
    Meta {
        backend: "ebpf".into(),
        approximate: false,
        ring_ops_visible: true,
        offcpu_measured: true,
        target,
        context: ctx.info(),
        duration_s: start.elapsed().as_secs_f64(),
        dropped_events: dropped(skel),
        notes: notes.to_vec(),
    }
}

/// Opens and loads the programs for `pid` (not attached yet: see [`run`]).
fn load<'obj>(
    storage: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
    pid: i32,
    ctx: &Context,
    opts: &Options,
) -> Result<TracerSkel<'obj>> {
    let builder = TracerSkelBuilder::default();
    let mut open = builder.open(storage).context("opening the BPF object")?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| anyhow!("the BPF object has no rodata"))?;
    rodata.targ_tgid = pid as u32;
    rodata.follow_forks = opts.children.into();
    rodata.use_set = (opts.children || !opts.companions.is_empty()).into();
    if let Some(port) = ctx.db_port() {
        rodata.db_port_be = port.to_be();
    }
    // The database's addresses as the kernel holds them (network order); both counts 0
    // means any address (DbAddrs::Any). Context resolves at most DB_ADDRS_MAX of each.
    if let Some(DbAddrs::Only(addrs)) = &ctx.db_addrs {
        let v4 = addrs.iter().filter_map(|a| match a {
            IpAddr::V4(a) => Some(a.octets()),
            IpAddr::V6(_) => None,
        });
        for (slot, a) in rodata.db_v4.iter_mut().zip(v4) {
            *slot = u32::from_ne_bytes(a);
            rodata.db_n_v4 += 1;
        }
        let v6 = addrs.iter().filter_map(|a| match a {
            IpAddr::V6(a) => Some(a.octets()),
            IpAddr::V4(_) => None,
        });
        for (slot, a) in rodata.db_v6.iter_mut().zip(v6) {
            for (w, b) in slot.iter_mut().zip(a.chunks_exact(4)) {
                *w = u32::from_ne_bytes(b.try_into().expect("4 bytes"));
            }
            rodata.db_n_v6 += 1;
        }
    }
    if let DbEndpoint::Unix(path) = &ctx.db {
        let b = path.as_os_str().as_encoded_bytes();
        if b.len() > DB_PATH_MAX {
            bail!("database socket path too long: {}", path.display());
        }
        for (i, c) in b.iter().enumerate() {
            rodata.db_path[i] = *c as _;
        }
        rodata.db_path_len = b.len() as u32;
    }
    let skel = open
        .load()
        .context("loading the BPF programs into the kernel (see the verifier log above if any)")?;
    for (nr, v) in syscalls::class_table().into_iter().enumerate() {
        skel.maps
            .sys_class
            .update(&(nr as u32).to_ne_bytes(), &v.to_ne_bytes(), MapFlags::ANY)?;
    }
    Ok(skel)
}

/// The traced processes: the roots (the target, then the companions), the processes below
/// them, and their roles.
struct Tree {
    roots: Vec<i32>,
    follow: bool,
    /// Roles by tgid, once known for good.
    names: HashMap<i32, String>,
    /// Command lines of the roots, to recognise a child that has not retitled itself yet.
    root_cmdlines: HashMap<i32, String>,
}

impl Tree {
    fn new(pid: i32, opts: &Options) -> Tree {
        let roots: Vec<i32> = std::iter::once(pid)
            .chain(opts.companions.iter().copied())
            .collect();
        let mut t = Tree {
            root_cmdlines: roots.iter().map(|&r| (r, procfs::cmdline(r))).collect(),
            roots,
            follow: opts.children,
            names: HashMap::new(),
        };
        for r in t.roots.clone() {
            t.name(r, r);
        }
        t
    }

    /// Puts the roots other than the target and (when children are followed) every process
    /// below a root in the program's set, and in `procs` with its root.
    fn discover(&mut self, skel: &mut TracerSkel) -> Result<()> {
        for (i, &root) in self.roots.iter().enumerate() {
            if i > 0 {
                add_member(skel, root, 0, root)?;
            }
            if self.follow {
                for (p, parent) in procfs::descendants(root) {
                    add_member(skel, p, parent, root)?;
                }
            }
        }
        Ok(())
    }

    /// Names the processes in `procs` that have no role yet.
    fn name_new(&mut self, skel: &TracerSkel) {
        for (tgid, root) in procs(skel) {
            if !self.names.contains_key(&tgid) {
                self.name(tgid, root);
            }
        }
    }

    /// Reads the role of `tgid` (of tree `root`) from /proc, and keeps it unless the
    /// process still has its root's title (forked a moment ago: read it again later).
    fn name(&mut self, tgid: i32, root: i32) -> Option<String> {
        let cmdline = procfs::cmdline(tgid);
        let role = crate::procrole::of_pid(tgid, tgid == root)?;
        if tgid == root || self.root_cmdlines.get(&root) != Some(&cmdline) {
            self.names.insert(tgid, role.clone());
        }
        Some(role)
    }

    /// The role of `tgid` for a profile: known, read now, or (gone before it could be
    /// read) its thread name.
    fn role(&mut self, tgid: i32, root: i32, comm: &str) -> String {
        if let Some(r) = self.names.get(&tgid) {
            return r.clone();
        }
        self.name(tgid, root)
            .unwrap_or_else(|| format!("{} (exited)", role_of(comm)))
    }
}

/// Adds `tgid` (child of `ppid`, in the tree of `root`) to the program's set, as its
/// set_add does: compare-and-swap on the slot, tgid_more when the slot is taken.
fn add_member(skel: &mut TracerSkel, tgid: i32, ppid: i32, root: i32) -> Result<()> {
    let tgid = tgid as u32;
    let mut info = [0u8; 8];
    info[..4].copy_from_slice(&(ppid as u32).to_ne_bytes());
    info[4..].copy_from_slice(&(root as u32).to_ne_bytes());
    skel.maps
        .procs
        .update(&tgid.to_ne_bytes(), &info, MapFlags::ANY)
        .context("adding a process to the traced set")?;
    let bss = skel
        .maps
        .bss_data
        .as_deref_mut()
        .ok_or_else(|| anyhow!("the BPF object has no bss"))?;
    let slot = &mut bss.tgid_set[tgid as usize % TGID_SLOTS];
    // SAFETY: an aligned u32 that only atomics touch, here and in the kernel.
    let slot = unsafe { AtomicU32::from_ptr(slot) };
    let old = slot.load(Ordering::SeqCst);
    if old & SLOT_USED != 0 && old & SLOT_TGID == tgid {
        return Ok(());
    }
    if old & SLOT_USED == 0
        && slot
            .compare_exchange(
                old,
                old | SLOT_USED | tgid,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    {
        return Ok(());
    }
    skel.maps
        .tgid_more
        .update(&tgid.to_ne_bytes(), &[1], MapFlags::ANY)
        .context("adding a process to the traced set")?;
    slot.fetch_or(SLOT_MORE, Ordering::SeqCst);
    Ok(())
}

/// Every traced process the program knows besides the target, with its root.
fn procs(skel: &TracerSkel) -> Vec<(i32, i32)> {
    let m = &skel.maps.procs;
    m.keys()
        .filter_map(|k| {
            let v = m.lookup(&k, MapFlags::ANY).ok()??;
            let tgid = u32::from_ne_bytes(k[..4].try_into().ok()?) as i32;
            let root = u32::from_ne_bytes(v[4..8].try_into().ok()?) as i32;
            Some((tgid, root))
        })
        .collect()
}

/// Pushes listening ports and log files into the maps.
fn sync_maps(skel: &mut TracerSkel, ctx: &Context) -> Result<()> {
    let bss = skel
        .maps
        .bss_data
        .as_deref_mut()
        .ok_or_else(|| anyhow!("the BPF object has no bss"))?;
    for p in &ctx.listen_ports {
        add_listen_port(&mut bss.listen_port_list, *p);
    }
    for l in &ctx.log_files {
        if let Some((dev, ino)) = l.id {
            skel.maps
                .log_files
                .update(&log_key(dev, ino), &[1], MapFlags::ANY)?;
        }
    }
    Ok(())
}

/// Adds `port` to the program's list of listening ports (a global in its mmap'ed .bss),
/// with the same compare-and-swap the program uses when the target calls listen().
fn add_listen_port(list: &mut [u32], port: u16) {
    let port = u32::from(port);
    for slot in list.iter_mut() {
        // SAFETY: the slot is an aligned u32 that only atomics touch, here and in the
        // kernel; the &mut keeps Rust's side exclusive.
        let slot = unsafe { AtomicU32::from_ptr(slot) };
        match slot.compare_exchange(0, port, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return,
            Err(p) if p == port => return,
            Err(_) => {}
        }
    }
}

fn log_key(dev: u32, ino: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&ino.to_ne_bytes());
    k[8..12].copy_from_slice(&dev.to_ne_bytes());
    k
}

/// The epoll sets that existed before the tracer attached, as /proc shows them (fdinfo),
/// so that a Postgres client's private epoll is known to be the database's. Sets built
/// later are followed by the program itself, by file (so every number of a dup'ed epoll
/// fd shares one), from their epoll_create on.
fn seed_epoll_sets(skel: &TracerSkel, pid: i32, ctx: &Context) {
    let socks = procfs::tcp_sockets(pid);
    for fd in procfs::fds(pid) {
        if procfs::fd_target(pid, fd) != Some(procfs::FdTarget::AnonInode("eventpoll".into())) {
            continue;
        }
        let mut n = [0i32; 4];
        for tfd in procfs::epoll_targets(pid, fd) {
            let category = classify::classify_proc_fd(pid, tfd, ctx, &socks);
            if let Some(slot) = classify::epoll_cover_slot(pid, tfd, category, || {
                procfs::is_non_tcp_socket(pid, tfd, &socks)
            }) {
                n[slot] += 1;
            }
        }
        let mut v = [0u8; 16];
        for (i, x) in n.iter().enumerate() {
            v[i * 4..i * 4 + 4].copy_from_slice(&x.to_ne_bytes());
        }
        let _ = skel
            .maps
            .epoll_seed
            .update(&(fd as u32).to_ne_bytes(), &v, MapFlags::ANY);
    }
}

fn dropped(skel: &TracerSkel) -> u64 {
    skel.maps
        .dropped
        .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .map(|cpus| cpus.iter().map(|v| u64_at(v, 0)).sum())
        .unwrap_or(0)
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

/// Reads the per-CPU aggregates (row keys in agg_slots: comm[16], tgid u32, nr u16, cat
/// u8, kind u8 -> slot; agg_arr[slot]: 8 u64 counters then the histogram) and folds them
/// into a profile per root: the target's first, then each companion's.
fn read_profiles(skel: &TracerSkel, meta: Meta, tree: &mut Tree) -> Result<Vec<Profile>> {
    let slots = &skel.maps.agg_slots;
    let agg = &skel.maps.agg_arr;
    let roots_of: HashMap<i32, i32> = procs(skel).into_iter().collect();
    let n = tree.roots.len();
    let mut records: Vec<Vec<Record>> = vec![Vec::new(); n];
    let mut outside = vec![Stats::default(); n];
    for key in slots.keys() {
        let Some(slot) = slots.lookup(&key, MapFlags::ANY)? else {
            continue;
        };
        let Some(cpus) = agg.lookup_percpu(&slot, MapFlags::ANY)? else {
            continue;
        };
        let mut s = Stats {
            hist_log2_ns: vec![0; HIST_BUCKETS],
            ..Stats::default()
        };
        for v in &cpus {
            s.count += u64_at(v, 0);
            s.errors += u64_at(v, 1);
            s.eagain += u64_at(v, 2);
            s.time_ns += u64_at(v, 3);
            s.bytes += u64_at(v, 4);
            s.blocked_ns += u64_at(v, 5);
            s.runq_ns += u64_at(v, 6);
            s.idle_blocked_ns += u64_at(v, 7);
            for b in 0..HIST_BUCKETS {
                s.hist_log2_ns[b] += u64_at(v, 8 + b);
            }
        }
        let comm_end = key[..16].iter().position(|&c| c == 0).unwrap_or(16);
        let comm = String::from_utf8_lossy(&key[..comm_end]).into_owned();
        let tgid = u32::from_ne_bytes([key[16], key[17], key[18], key[19]]) as i32;
        let nr = u16::from_ne_bytes([key[20], key[21]]) as u32;
        let category = Category::from_index(key[22]).unwrap_or(Category::Other);
        let root = if tree.roots.contains(&tgid) {
            tgid
        } else {
            roots_of.get(&tgid).copied().unwrap_or(tree.roots[0])
        };
        let which = tree.roots.iter().position(|&r| r == root).unwrap_or(0);
        let (kind, name) = match key[23] {
            KIND_SYSCALL => (Kind::Syscall, syscalls::name(nr)),
            KIND_RING => (Kind::RingOp, syscalls::ring_op_name(nr)),
            KIND_SCHED => {
                let mut o = s;
                o.hist_log2_ns.clear();
                outside[which].add(&o);
                continue;
            }
            _ => continue,
        };
        s.trim();
        records[which].push(Record {
            pid: tgid,
            process: tree.role(tgid, root, &comm),
            role: role_of(&comm),
            kind,
            name,
            category,
            stats: s,
        });
    }
    let mut profiles = Vec::with_capacity(n);
    for (i, (recs, out)) in records.into_iter().zip(outside).enumerate() {
        let mut m = meta.clone();
        if i > 0 {
            let pid = tree.roots[i];
            m.target = TargetInfo {
                pid,
                command: tree.root_cmdlines.get(&pid).cloned().unwrap_or_default(),
                spawned: false,
                exited: !procfs::alive(pid),
                children: tree.follow,
            };
        }
        profiles.push(Profile::build(m, &recs, out));
    }
    Ok(profiles)
}
