//! The eBPF backend: loads `bpf/tracer.bpf.c` (a libbpf-rs skeleton built by build.rs)
//! for one tgid, keeps the classification maps current, and reads the per-CPU aggregates
//! back into a [`Profile`]. No per-event traffic: user space reads the maps only when a
//! snapshot or the final profile is asked for.

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

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags};

use crate::category::Category;
use crate::context::{Context, DbEndpoint};
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

/// The worker: attach, then serve snapshot/stop until told to stop.
pub(crate) fn run(
    target: Target,
    opts: Options,
    ready: mpsc::Sender<Result<Started>>,
    cmds: mpsc::Receiver<Cmd>,
    shared: Arc<Shared>,
) -> Result<Profile> {
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

    let mut ctx = Context::resolve(pid, &opts.overrides);
    let mut storage = MaybeUninit::uninit();
    let mut skel = match load(&mut storage, pid, &ctx) {
        Ok(s) => s,
        Err(e) => {
            kill_held(&held);
            let _ = ready.send(Err(e));
            bail!("not attached");
        }
    };
    if let Err(e) = sync_maps(&mut skel, &ctx) {
        kill_held(&held);
        let _ = ready.send(Err(e));
        bail!("not attached");
    }
    if !spawned {
        seed_epoll_sets(&skel, pid, &ctx);
    }
    if let Some((_, w)) = held {
        unsafe {
            libc::write(w, [1u8].as_ptr() as *const libc::c_void, 1);
            libc::close(w);
        }
    }
    let start = Instant::now();
    let _ = ready.send(Ok(Started { pid, wake: None }));

    let target_info = |exited: bool| TargetInfo {
        pid,
        command: command.clone(),
        spawned,
        exited,
    };
    let mut exited = false;
    let mut last_refresh = Instant::now();
    let mut last_listen_refresh = Instant::now();
    loop {
        match cmds.recv_timeout(Duration::from_millis(100)) {
            Ok(Cmd::Snapshot(tx)) => {
                let meta = meta(&ctx, target_info(exited), start, &notes, &skel);
                let _ = tx.send(read_profile(&skel, meta)?);
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
    let profile = read_profile(&skel, meta);
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

fn load<'obj>(
    storage: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
    pid: i32,
    ctx: &Context,
) -> Result<TracerSkel<'obj>> {
    let builder = TracerSkelBuilder::default();
    let mut open = builder.open(storage).context("opening the BPF object")?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| anyhow!("the BPF object has no rodata"))?;
    rodata.targ_tgid = pid as u32;
    if let Some(port) = ctx.db_port() {
        rodata.db_port_be = port.to_be();
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
    let mut skel = open
        .load()
        .context("loading the BPF programs into the kernel (see the verifier log above if any)")?;
    // The syscall table and the known listening ports before the programs run.
    for (nr, v) in syscalls::class_table().into_iter().enumerate() {
        skel.maps
            .sys_class
            .update(&(nr as u32).to_ne_bytes(), &v.to_ne_bytes(), MapFlags::ANY)?;
    }
    skel.attach().context("attaching the BPF programs")?;
    Ok(skel)
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

/// Reads the per-CPU aggregates (row keys in agg_slots: comm[16], nr u16, cat u8, kind
/// u8 -> slot; agg_arr[slot]: 7 u64 counters then the histogram) and folds them into a
/// profile.
fn read_profile(skel: &TracerSkel, meta: Meta) -> Result<Profile> {
    let slots = &skel.maps.agg_slots;
    let agg = &skel.maps.agg_arr;
    let mut records = Vec::new();
    let mut outside = Stats::default();
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
            for b in 0..HIST_BUCKETS {
                s.hist_log2_ns[b] += u64_at(v, 7 + b);
            }
        }
        let comm_end = key[..16].iter().position(|&c| c == 0).unwrap_or(16);
        let comm = String::from_utf8_lossy(&key[..comm_end]).into_owned();
        let nr = u16::from_ne_bytes([key[16], key[17]]) as u32;
        let category = Category::from_index(key[18]).unwrap_or(Category::Other);
        let (kind, name) = match key[19] {
            KIND_SYSCALL => (Kind::Syscall, syscalls::name(nr)),
            KIND_RING => (Kind::RingOp, syscalls::ring_op_name(nr)),
            KIND_SCHED => {
                let mut o = s;
                o.hist_log2_ns.clear();
                outside.add(&o);
                continue;
            }
            _ => continue,
        };
        s.trim();
        records.push(Record {
            role: role_of(&comm),
            kind,
            name,
            category,
            stats: s,
        });
    }
    Ok(Profile::build(meta, &records, outside))
}
