//! The peer observer: Debian's `strace -f -c` attached to a running target, its summary
//! table read back into a [`Profile`]. It is not ours, and that is its point: the
//! observer-effect workshop puts it beside the eBPF and ptrace backends on the same server
//! (the same counts, a far slower server), and the tests use it as ground truth.
//!
//! `strace -c` counts calls by name only: it sees no fds (fd I/O falls in `other`, the
//! calls that need no fd keep their category), no bytes, no ring operations, no off-CPU
//! time, and no thread roles. Its summary exists only once it detaches, so a running
//! session has no snapshot. The profile says all of this in its notes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::profile::{Kind, Meta, Profile, Record, Stats, TargetInfo};
use crate::session::{Cmd, Options, Shared, Started, Target};

/// How long strace may take to attach to every thread of the target.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn run(
    target: Target,
    opts: Options,
    ready: mpsc::Sender<Result<Started>>,
    cmds: mpsc::Receiver<Cmd>,
    shared: Arc<Shared>,
) -> Result<Vec<Profile>> {
    let pid = match target {
        Target::Pid(pid) => pid,
        Target::Command(_) => {
            let e = anyhow!(
                "the strace backend attaches to a running process: give --pid (start the \
                 command yourself, or use --backend ptrace to have it started)"
            );
            let _ = ready.send(Err(anyhow!("{e}")));
            return Err(e);
        }
    };
    let out = std::env::temp_dir().join(format!(
        "syscall-lab-strace-{}-{pid}.txt",
        std::process::id()
    ));
    let mut child = match attach(pid, opts.children, &out) {
        Ok(child) => child,
        Err(e) => {
            let _ = ready.send(Err(anyhow!("{e:#}")));
            return Err(e);
        }
    };
    let started = Instant::now();
    let _ = ready.send(Ok(Started { pid, wake: None }));
    loop {
        match cmds.recv_timeout(Duration::from_millis(100)) {
            // No summary before strace detaches: dropping the reply says so.
            Ok(Cmd::Snapshot(_)) => {}
            Ok(Cmd::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        // strace ends by itself when the target does.
        if child.try_wait()?.is_some() {
            shared.exited.store(true, Ordering::SeqCst);
            break;
        }
    }
    let duration_s = started.elapsed().as_secs_f64();
    let exited = shared.exited.load(Ordering::SeqCst);
    if !exited {
        // SIGINT: strace detaches from every thread and writes its summary.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    }
    child.wait().context("waiting for strace to detach")?;
    let text = std::fs::read_to_string(&out)
        .with_context(|| format!("strace wrote no summary to {}", out.display()))?;
    let _ = std::fs::remove_file(&out);
    let mut notes = vec![
        "strace -f -c counts calls by name only: fd I/O is not classified (shown as other), \
         no bytes, no ring operations, no off-CPU time, no thread or process roles"
            .to_string(),
    ];
    if !opts.children {
        notes.push(
            "strace -f follows the processes the target forks during the trace, whatever \
             --no-children says (its -f is also what attaches every thread)"
                .into(),
        );
    }
    if exited {
        notes.push(format!(
            "the target (pid {pid}) exited after {duration_s:.1} s; the trace ends there"
        ));
    }
    let meta = Meta {
        backend: opts.backend.name().into(),
        approximate: true,
        ring_ops_visible: false,
        offcpu_measured: false,
        target: TargetInfo {
            pid,
            command: crate::procfs::cmdline(pid),
            spawned: false,
            exited,
            children: opts.children,
        },
        context: Default::default(),
        duration_s,
        dropped_events: 0,
        notes,
    };
    let records: Vec<Record> = parse_summary(&text)
        .into_iter()
        .map(|(name, stats)| Record {
            pid,
            process: "all".into(),
            role: "all".into(),
            kind: Kind::Syscall,
            category: crate::syscalls::class_of(&name).0,
            name,
            stats,
        })
        .collect();
    Ok(vec![Profile::build(meta, &records, Stats::default())])
}

/// Starts `strace -f -c -p PID` (one `-p` more per process below it with `children`: -f
/// catches only the processes forked later) and returns once it has attached to the
/// target's threads.
fn attach(pid: i32, children: bool, out: &PathBuf) -> Result<Child> {
    let mut pids = vec![pid];
    if children {
        pids.extend(crate::procfs::descendants(pid).into_iter().map(|(p, _)| p));
    }
    let mut child = Command::new("strace")
        .args(["-f", "-c", "-o"])
        .arg(out)
        .args(pids.iter().flat_map(|p| ["-p".to_string(), p.to_string()]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!(
                    "strace is not installed: apt-get install strace (scripts/install-deps does)"
                )
            } else {
                anyhow!("starting strace: {e}")
            }
        })?;
    // "strace: Process 123 attached with 9 threads", or the reason it could not attach.
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    let mut said = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("attached") => return Ok(child),
            Ok(line) => said.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "strace did not attach to pid {pid}: {}",
                    if said.is_empty() {
                        "no word from it".to_string()
                    } else {
                        said.join("; ")
                    }
                );
            }
        }
    }
}

/// Calls, errors and seconds per syscall from `strace -c`'s table:
/// `% time  seconds  usecs/call  calls  errors  syscall` (errors may be blank).
pub fn parse_summary(text: &str) -> BTreeMap<String, Stats> {
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 5 || cols[0].starts_with('%') || cols[0].starts_with('-') {
            continue;
        }
        let name = cols[cols.len() - 1];
        let Ok(calls) = cols[3].parse::<u64>() else {
            continue;
        };
        if name == "total" {
            continue;
        }
        let errors = if cols.len() >= 6 {
            cols[4].parse().unwrap_or(0)
        } else {
            0
        };
        let seconds: f64 = cols[1].parse().unwrap_or(0.0);
        rows.insert(
            name.to_string(),
            Stats {
                count: calls,
                errors,
                time_ns: (seconds * 1e9) as u64,
                ..Stats::default()
            },
        );
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_strace_summary() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 45.12    0.123456          12     10000           sendto
 30.00    0.050000           5     10000       120 recvfrom
  0.10    0.000100         100         1           exit_group
------ ----------- ----------- --------- --------- ----------------
100.00    0.173556               20001       120 total
";
        let rows = parse_summary(text);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows["sendto"].count, 10000);
        assert_eq!(rows["sendto"].time_ns, 123_456_000);
        assert_eq!(rows["recvfrom"].errors, 120);
        assert_eq!(rows["exit_group"].count, 1);
        assert!(!rows.contains_key("total"));
    }
}
