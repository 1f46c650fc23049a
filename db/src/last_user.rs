//! A cluster that several processes use at once and the last one to leave stops: the test
//! suites' (`ClusterConfig::for_tests`). Cargo runs the test binaries of every crate one
//! after another, each with many test threads; any of them may start the cluster, none
//! knows whether another still needs it.
//!
//! Every user holds a shared `flock` on `<data_dir>.users` for the rest of its life
//! (taken before the cluster is started, so a starting user never races a stopping one).
//! At exit (an `atexit` handler: it runs when the tests pass and when they fail or panic,
//! since the test harness then exits with status 101) a user converts its lock into an
//! exclusive one without waiting: only the last user gets it, and that one stops the
//! cluster before it lets go. A user killed by a signal runs no handler; the kernel drops
//! its lock, and the cluster then stays up until a later user leaves (`scripts/test`
//! checks that none is left running).

use std::fs::File;
use std::sync::{Mutex, Once};

use anyhow::Result;
use nix::fcntl::{Flock, FlockArg};

use crate::cluster::{lock_file, Cluster, ClusterConfig, UpOutcome};

/// This process's use of a cluster: the shared lock, held until exit.
struct Use {
    lock: Flock<File>,
    config: ClusterConfig,
}

static USE: Mutex<Option<Use>> = Mutex::new(None);

/// Makes this process a user of the cluster at `config` until it exits, then brings the
/// cluster up (starting it if nobody runs it). Later calls in the same process only
/// check that the cluster is up.
pub fn join(config: &ClusterConfig) -> Result<UpOutcome> {
    let mut this = USE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = this.as_ref() {
        anyhow::ensure!(
            existing.config == *config,
            "this process already uses the cluster in {}; one shared cluster per process",
            existing.config.data_dir.display()
        );
    } else {
        // Waits while a last user stops the cluster; then this process counts.
        let lock = lock_file(&config.users_path(), FlockArg::LockShared)?;
        *this = Some(Use {
            lock,
            config: config.clone(),
        });
        static AT_EXIT: Once = Once::new();
        AT_EXIT.call_once(|| {
            // SAFETY: registers a plain extern "C" function that captures nothing.
            unsafe { libc::atexit(leave_at_exit) };
        });
    }
    Cluster::new(config.clone())?.up()
}

/// The `atexit` handler: the last user stops the cluster.
extern "C" fn leave_at_exit() {
    let Some(this) = USE.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    if let Err(e) = leave(this) {
        eprintln!("syscall-lab: stopping the shared PostgreSQL: {e:#}");
    }
}

fn leave(this: Use) -> Result<()> {
    // Someone else still holds a shared lock: they need the cluster and will stop it.
    if this.lock.relock(FlockArg::LockExclusiveNonblock).is_err() {
        return Ok(());
    }
    Cluster::new(this.config.clone())?.down()?;
    Ok(())
}
