//! Where `lab run` puts the server under test and the load generator on the CPUs.
//!
//! With two or more CPUs the server is pinned to the first half and the load generator
//! (which runs inside the lab's process) to the second half, so that they do not take
//! turns on one core; PostgreSQL is left to the scheduler. On a 2-core machine that is the
//! server on CPU 0 and the load generator on CPU 1.
//!
//! The lab pins its own thread (the load generator's) for the length of a run, so the CPUs
//! to divide are the ones the process had when it first placed a run, remembered once, and
//! the thread gets its own mask back when the run's [`Placement`] is dropped. Otherwise a
//! second run in the same process (every workshop's "after" side, `--all`) would find the
//! thread on the load CPUs only, pin nothing, and leave its server on the load generator's
//! CPU (issue 16).

use std::sync::OnceLock;

/// Which CPUs the server and the load generator get, for the length of one run: made by
/// [`Placement::choose`], which pins the calling thread to the load CPUs; dropping it gives
/// that thread back the CPUs it had.
pub struct Placement {
    server: Vec<usize>,
    load: Vec<usize>,
    /// The thread that was pinned and its CPUs before, restored on drop.
    thread: i32,
    before: Vec<usize>,
}

impl Placement {
    pub fn choose() -> Placement {
        static PROCESS_CPUS: OnceLock<Vec<usize>> = OnceLock::new();
        let cpus = PROCESS_CPUS.get_or_init(|| cpus_of(0));
        let thread = nix::unistd::gettid().as_raw();
        let before = cpus_of(0);
        if cpus.len() < 2 {
            return Placement {
                server: vec![],
                load: vec![],
                thread,
                before,
            };
        }
        let half = cpus.len() / 2;
        let placement = Placement {
            server: cpus[..half].to_vec(),
            load: cpus[half..].to_vec(),
            thread,
            before,
        };
        // The load generator runs on this thread and the threads it starts.
        let _ = set_affinity(thread, &placement.load);
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

impl Drop for Placement {
    fn drop(&mut self) {
        if !self.load.is_empty() && !self.before.is_empty() {
            let _ = set_affinity(self.thread, &self.before);
        }
    }
}

/// The CPUs thread or process `tid` may run on (0: the calling thread); empty when it
/// cannot be read (the process is gone).
pub fn cpus_of(tid: i32) -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(tid)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A process to place: a child that sleeps until killed.
    struct Sleeper(std::process::Child);

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `lab workshop` runs both sides in one process and thread: the second run's server
    /// must land where the first one's did, apart from the load generator.
    #[test]
    fn two_runs_in_one_thread_place_the_server_alike() {
        let cpus = cpus_of(0);
        assert!(
            cpus.len() >= 2,
            "placement needs at least 2 CPUs and this test thread may use only {cpus:?}: \
             run it on a machine (or under a CPU mask) with 2 or more"
        );
        let mut placed = Vec::new();
        for _ in 0..2 {
            let placement = Placement::choose();
            let server = Sleeper(
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .expect("starting `sleep` as a stand-in server"),
            );
            placement.pin_process(server.0.id());
            let server_cpus = cpus_of(server.0.id() as i32);
            let load_cpus = cpus_of(0);
            assert!(
                server_cpus.iter().all(|c| !load_cpus.contains(c)),
                "the server shares a CPU with the load generator: server {server_cpus:?}, load {load_cpus:?}"
            );
            placed.push((server_cpus, load_cpus, placement.describe()));
        }
        assert_eq!(
            placed[0], placed[1],
            "the second run was placed differently"
        );
        assert_eq!(cpus_of(0), cpus, "the thread did not get its CPUs back");
    }
}
