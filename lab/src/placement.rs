//! Where `lab run` puts the server under test and the load generator on the CPUs.
//!
//! With two or more CPUs the server is pinned to the first half and the load generator
//! (which runs inside the lab's process) to the second half, so that they do not take
//! turns on one core; PostgreSQL is left to the scheduler. On a 2-core machine that is the
//! server on CPU 0 and the load generator on CPU 1.

/// Which CPUs the server and the load generator get.
pub struct Placement {
    server: Vec<usize>,
    load: Vec<usize>,
}

impl Placement {
    pub fn choose() -> Placement {
        let cpus: Vec<usize> = allowed_cpus();
        if cpus.len() < 2 {
            return Placement {
                server: vec![],
                load: vec![],
            };
        }
        let half = cpus.len() / 2;
        let placement = Placement {
            server: cpus[..half].to_vec(),
            load: cpus[half..].to_vec(),
        };
        // The load generator runs on this thread and the threads it starts.
        let _ = set_affinity(0, &placement.load);
        placement
    }

    pub fn describe(&self) -> String {
        if self.server.is_empty() {
            "none (fewer than 2 CPUs)".into()
        } else {
            format!(
                "server on CPUs {:?}, load generator on CPUs {:?}, PostgreSQL unpinned",
                self.server, self.load
            )
        }
    }

    /// Runs `start` (which starts the tracer's threads) on the server's CPUs. A ptrace
    /// tracer must run for every syscall the server makes (each one stops the tracee
    /// until the tracer resumes it): left on the load generator's CPUs, which this thread
    /// is pinned to, it competed with the busy load generator, and under outside load the
    /// server's stops waited for it for seconds (requests stalled in a third of the runs).
    /// Beside the server it runs while the tracee waits (so does strace, the same kind of
    /// tracer, when `--tracer strace` starts it). The eBPF
    /// backend's thread only reads maps and stays with the lab.
    pub fn beside_server<T>(&self, backend: tracer::Backend, start: impl FnOnce() -> T) -> T {
        if self.server.is_empty() || backend == tracer::Backend::Ebpf {
            return start();
        }
        let _ = set_affinity(0, &self.server);
        let started = start();
        let _ = set_affinity(0, &self.load);
        started
    }

    /// Pins every thread the server has now; threads it starts later inherit the mask.
    pub fn pin_process(&self, pid: u32) {
        if self.server.is_empty() {
            return;
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                if let Some(tid) = task
                    .file_name()
                    .to_str()
                    .and_then(|t| t.parse::<i32>().ok())
                {
                    let _ = set_affinity(tid, &self.server);
                }
            }
        }
    }
}

fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => vec![],
    }
}

fn set_affinity(tid: i32, cpus: &[usize]) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for &cpu in cpus {
        set.set(cpu)?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set)
}
