//! The backend-neutral handle on a running trace: a worker thread owns the backend (BPF
//! skeleton or ptrace attachments: both must stay on one thread) and answers snapshot and
//! stop requests over a channel.

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};

use crate::context::Overrides;
use crate::profile::Profile;

/// Which backend traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Ebpf,
    Ptrace,
    /// Debian's `strace -f -c`, the peer our counts are checked against (attach only).
    Strace,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Ebpf => "ebpf",
            Backend::Ptrace => "ptrace",
            Backend::Strace => "strace",
        }
    }
}

/// What to trace.
#[derive(Debug, Clone)]
pub enum Target {
    /// A running process: all its threads, and threads it creates later (and, unless
    /// [`Options::children`] is off, its child processes, existing and forked later).
    Pid(i32),
    /// A command the tracer starts (argv[0] looked up in PATH). It is stopped (SIGTERM)
    /// when the trace ends before it does.
    Command(Vec<OsString>),
}

/// How to trace.
#[derive(Debug, Clone)]
pub struct Options {
    pub backend: Backend,
    pub overrides: Overrides,
    /// A label carried into the profile and the exporter's metrics.
    pub variant: Option<String>,
    /// Follow the target's child processes: those that exist when tracing starts and
    /// those forked during the trace (like `strace -f`). On by default in `lab trace`;
    /// `--no-children` traces the one process.
    pub children: bool,
    /// Other running processes traced in the same session (eBPF only), each with its
    /// descendants and a profile of its own: `lab run --trace-db` traces the server and
    /// the database's postmaster together, so that one set of syscall hooks serves both.
    /// Their listening ports and log files join the classification context.
    pub companions: Vec<i32>,
}

impl Options {
    /// `backend` with everything else at its default: context discovered, children
    /// followed, no companions.
    pub fn new(backend: Backend) -> Options {
        Options {
            backend,
            overrides: Overrides::default(),
            variant: None,
            children: true,
            companions: Vec::new(),
        }
    }
}

pub(crate) enum Cmd {
    /// The target's profile, then each companion's.
    Snapshot(mpsc::Sender<Vec<Profile>>),
    Stop,
}

/// Shared between a session and its worker.
pub(crate) struct Shared {
    /// The target has exited.
    pub exited: AtomicBool,
    /// Asked to stop (checked by the ptrace loop between stops).
    pub stop: AtomicBool,
}

/// A running trace.
pub struct Session {
    pid: i32,
    cmds: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    worker: Option<JoinHandle<Result<Vec<Profile>>>>,
    wake: Option<Box<dyn Fn() + Send>>,
    variant: Option<String>,
}

/// What a worker reports once it is attached.
pub(crate) struct Started {
    pub pid: i32,
    /// Interrupts the worker when it blocks elsewhere than on its channel (ptrace).
    pub wake: Option<Box<dyn Fn() + Send>>,
}

/// Starts tracing. Returns once the backend is attached (or with the reason it cannot be).
pub fn start(target: Target, opts: Options) -> Result<Session> {
    if !opts.companions.is_empty() && opts.backend != Backend::Ebpf {
        anyhow::bail!(
            "tracing other processes beside the target (the database's, say) needs the eBPF \
             backend; the {} backend traces one process tree",
            opts.backend.name()
        );
    }
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Started>>();
    let shared = Arc::new(Shared {
        exited: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let sh = shared.clone();
    let o = opts.clone();
    let worker = std::thread::Builder::new()
        .name(format!("tracer-{}", opts.backend.name()))
        .spawn(move || match o.backend {
            Backend::Ebpf => crate::ebpf::run(target, o, ready_tx, cmd_rx, sh),
            Backend::Ptrace => crate::ptrace::run(target, o, ready_tx, cmd_rx, sh),
            Backend::Strace => crate::strace::run(target, o, ready_tx, cmd_rx, sh),
        })?;
    match ready_rx.recv() {
        Ok(Ok(started)) => Ok(Session {
            pid: started.pid,
            cmds: cmd_tx,
            shared,
            worker: Some(worker),
            wake: started.wake,
            variant: opts.variant,
        }),
        Ok(Err(e)) => {
            let _ = worker.join();
            Err(e)
        }
        Err(_) => Err(match worker.join() {
            Ok(Err(e)) => e,
            _ => anyhow!("the tracer thread ended before attaching"),
        }),
    }
}

impl Session {
    /// The traced process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the target has exited (the trace then holds everything it will get).
    pub fn target_exited(&self) -> bool {
        self.shared.exited.load(Ordering::SeqCst)
    }

    /// What has been gathered so far, without stopping.
    pub fn snapshot(&self) -> Result<Profile> {
        Ok(self.snapshot_all()?.swap_remove(0))
    }

    /// [`Session::snapshot`] of the target, then of each companion.
    pub fn snapshot_all(&self) -> Result<Vec<Profile>> {
        let (tx, rx) = mpsc::channel();
        self.cmds
            .send(Cmd::Snapshot(tx))
            .map_err(|_| anyhow!("the tracer has stopped"))?;
        if let Some(w) = &self.wake {
            w();
        }
        let mut ps = rx.recv().map_err(|_| anyhow!("the tracer has stopped"))?;
        self.label(&mut ps)?;
        Ok(ps)
    }

    /// The variant label goes on the target's profile only (companions are not the
    /// variant). A worker always answers with the target's profile first.
    fn label(&self, ps: &mut [Profile]) -> Result<()> {
        let first = ps
            .first_mut()
            .ok_or_else(|| anyhow!("the tracer returned no profile"))?;
        first.variant = self.variant.clone();
        Ok(())
    }

    /// Detaches everything and returns the profile.
    pub fn stop(self) -> Result<Profile> {
        Ok(self.stop_all()?.swap_remove(0))
    }

    /// [`Session::stop`], with each companion's profile after the target's.
    pub fn stop_all(mut self) -> Result<Vec<Profile>> {
        self.finish()
    }

    fn finish(&mut self) -> Result<Vec<Profile>> {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.cmds.send(Cmd::Stop);
        let worker = self
            .worker
            .take()
            .ok_or_else(|| anyhow!("already stopped"))?;
        // The ptrace worker may sit in waitpid: poke it until it is done.
        while !worker.is_finished() {
            if let Some(w) = &self.wake {
                w();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut ps = worker
            .join()
            .map_err(|_| anyhow!("the tracer thread panicked"))??;
        self.label(&mut ps)?;
        Ok(ps)
    }
}

impl Drop for Session {
    /// A session dropped without `stop` still detaches.
    fn drop(&mut self) {
        if self.worker.is_some() {
            let _ = self.finish();
        }
    }
}
