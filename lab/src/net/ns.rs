//! Network namespaces, through iproute2 (`ip netns`, `ip -n`, `tc -n`) and setns(2).
//!
//! A thread enters a namespace with [`enter`] (setns on one thread affects that thread
//! only, and every thread or process it starts afterwards inherits it); [`in_netns`] runs a
//! closure on a fresh thread inside one. Named namespaces are the bind mounts
//! `ip netns add` makes under `/run/netns`.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where `ip netns add` mounts named namespaces.
const NETNS_DIR: &str = "/run/netns";

fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Runs a program of iproute2 (`ip` or `tc`); its standard output, or an error with what
/// it printed.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| {
        format!("running `{program}` (iproute2; `apt-get install iproute2` installs it)")
    })?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// Whether the named namespace exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Every named namespace (`ip netns list`, names only).
pub fn list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

pub fn add(name: &str) -> Result<()> {
    ip(&["netns", "add", name]).map(drop)
}

/// Removes the name; the namespace (and its links and qdiscs) goes when no process is
/// left in it, which is why [`stop_processes`] comes first.
pub fn delete(name: &str) -> Result<()> {
    ip(&["netns", "delete", name]).map(drop)
}

/// A thread that entered a namespace; dropping it takes the thread back where it was.
pub struct Entered {
    original: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        // Cannot fail for a namespace this thread was in a moment ago.
        let _ = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET);
    }
}

/// Moves the calling thread (only it) into the named namespace until the guard drops.
pub fn enter(name: &str) -> Result<Entered> {
    let original = File::open("/proc/thread-self/ns/net")
        .context("opening this thread's network namespace")?;
    let target = File::open(path(name))
        .with_context(|| format!("no network namespace {name} (ip netns list)"))?;
    setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {name} (needs CAP_SYS_ADMIN)"))?;
    Ok(Entered { original })
}

/// Runs `f` on a new thread inside the named namespace and returns what it returned.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let _inside = enter(name)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| bail!("a thread inside network namespace {name} panicked"))
    })
}

/// Writes a sysctl of the named namespace (`net.*` keys are per namespace).
pub fn sysctl(name: &str, key: &str, value: &str) -> Result<()> {
    let file = format!("/proc/sys/{}", key.replace('.', "/"));
    in_netns(name, || std::fs::write(&file, value))?
        .with_context(|| format!("setting {key}={value} in network namespace {name}"))
}

/// The processes whose network namespace is the named one (what `ip netns pids` shows),
/// this process excepted: its main thread may be inside (the load generator's side) while
/// it tears the namespaces down.
pub fn pids(name: &str) -> Vec<u32> {
    let Ok(ns) = std::fs::metadata(path(name)) else {
        return Vec::new();
    };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.ino() == ns.ino() && m.dev() == ns.dev())
        })
        .collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the parenthesised name (which may hold spaces): state, ppid.
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Ends every process left in the named namespace (a server or a PostgreSQL that a killed
/// lab could not stop): PostgreSQL's postmaster gets SIGINT (its fast shutdown, which ends
/// its backends), everything else SIGTERM; SIGKILL for whatever is left after `grace`.
/// Returns how many processes there were.
pub fn stop_processes(name: &str, grace: Duration) -> usize {
    let found = pids(name);
    for &pid in &found {
        let is_postgres = comm(pid) == "postgres";
        let signal = match (is_postgres, parent(pid).map(comm).as_deref()) {
            (true, Some("postgres")) => continue,
            (true, _) => Signal::SIGINT,
            (false, _) => Signal::SIGTERM,
        };
        let _ = kill(Pid::from_raw(pid as i32), signal);
    }
    let deadline = Instant::now() + grace;
    while !pids(name).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in pids(name) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids(name).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    found.len()
}
