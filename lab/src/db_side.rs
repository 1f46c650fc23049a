//! The database's side of `lab run --trace-db`: which process is the database (its
//! postmaster, the root of the tree the tracer follows beside the server), and the CPU
//! time that tree spends over a measured window.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The postmaster of the database at `url`: from the lab's own cluster's `postmaster.pid`
/// when `data_dir` is known (also in `--hosts separate`, whose database listens in a
/// network namespace of its own), else the process listening on the URL's port here.
pub fn postmaster(url: &str, data_dir: Option<&Path>) -> Result<i32> {
    if let Some(dir) = data_dir {
        let file = dir.join("postmaster.pid");
        if let Some(pid) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
            .filter(|&pid| tracer::procfs::alive(pid))
        {
            return Ok(pid);
        }
    }
    let port = match tracer::DbEndpoint::from_url(url) {
        Some(tracer::DbEndpoint::Tcp { port, .. }) => port,
        Some(tracer::DbEndpoint::Unix(path)) => bail!(
            "--trace-db: the database is reached through {}: give it a TCP address (the \
             postmaster is found by its port)",
            path.display()
        ),
        None => bail!("--trace-db: {} is not a postgres:// URL", db::redact(url)),
    };
    tracer::procfs::listener_pid(port).with_context(|| {
        format!(
            "--trace-db: no process on this machine listens on port {port} of {}; the \
             database must run here to be traced (lab db up starts the lab's own)",
            db::redact(url)
        )
    })
}

/// CPU time of a process tree, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TreeCpu {
    pub user_s: f64,
    pub system_s: f64,
    /// Processes in the tree.
    pub processes: u64,
}

impl TreeCpu {
    /// The tree of `root` now: each live process's own user and system time plus that of
    /// its children already reaped (cutime, cstime), so that a backend that exited during
    /// the window still counts, in its parent's figures.
    pub fn read(root: i32) -> TreeCpu {
        let tick = clock_ticks();
        let mut cpu = TreeCpu::default();
        let tree = std::iter::once(root).chain(
            tracer::procfs::descendants(root)
                .into_iter()
                .map(|(p, _)| p),
        );
        for pid in tree {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the parenthesised name: state is the 1st, utime the 12th.
            let fields: Vec<f64> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .skip(11)
                .take(4)
                .filter_map(|f| f.parse().ok())
                .collect();
            if let [utime, stime, cutime, cstime] = fields[..] {
                cpu.user_s += (utime + cutime) / tick;
                cpu.system_s += (stime + cstime) / tick;
                cpu.processes += 1;
            }
        }
        cpu
    }

    /// CPU spent between `before` and this reading.
    pub fn since(&self, before: &TreeCpu) -> TreeCpu {
        TreeCpu {
            user_s: (self.user_s - before.user_s).max(0.0),
            system_s: (self.system_s - before.system_s).max(0.0),
            processes: self.processes,
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that burns CPU and exits is still counted, through the parent's cutime.
    #[test]
    fn tree_cpu_counts_children_that_exited() {
        let me = std::process::id() as i32;
        let before = TreeCpu::read(me);
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let spent = TreeCpu::read(me).since(&before);
        assert!(
            spent.user_s + spent.system_s >= 0.05,
            "the reaped child's CPU: {spent:?}"
        );
        assert!(spent.processes >= 1);
    }
}
