//! The server under check: one of the lab's variants (started by `servers::launch`, as
//! `lab run` starts them), a command `lab check` starts itself (`--url URL -- CMD`), or a
//! process that already runs (`--url URL --pid PID`), which is never stopped.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use servers::launch::ServerProcess;

pub enum Served {
    Variant(ServerProcess),
    Command(Started),
    Running { pid: u32, url: String },
}

impl Served {
    pub fn pid(&self) -> u32 {
        match self {
            Served::Variant(s) => s.pid(),
            Served::Command(c) => c.child.id(),
            Served::Running { pid, .. } => *pid,
        }
    }

    /// `http://host:port` the endpoints' paths go after.
    pub fn base_url(&self) -> String {
        match self {
            Served::Variant(s) => format!("http://{}", s.addr()),
            Served::Command(c) => c.url.clone(),
            Served::Running { url, .. } => url.clone(),
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        match self {
            Served::Variant(s) => s.is_running(),
            Served::Command(c) => matches!(c.child.try_wait(), Ok(None)),
            Served::Running { pid, .. } => tracer::context::check_pid(*pid as i32).is_ok(),
        }
    }

    /// The last lines it wrote to standard error (what we started only).
    pub fn log_tail(&self) -> Option<String> {
        match self {
            Served::Variant(s) => Some(s.stderr_tail(20)),
            Served::Command(c) => Some(c.output_tail(20)),
            Served::Running { .. } => None,
        }
    }

    /// Stops what `lab check` started (SIGTERM, then SIGKILL after `grace`); leaves a
    /// running server alone. An unclean exit is returned as a note.
    pub fn stop(self, grace: Duration) -> Option<String> {
        match self {
            Served::Variant(s) => match s.stop(grace) {
                Ok(status) if status.success() => None,
                Ok(status) => Some(format!("the server exited with {status} on SIGTERM")),
                Err(e) => Some(format!("{e:#}")),
            },
            Served::Command(c) => c.stop(grace),
            Served::Running { .. } => None,
        }
    }
}

/// The host and port of an `http://` URL, resolved.
pub fn url_addr(url: &str) -> Result<SocketAddr> {
    let parsed = loadgen::config::parse_url(url).map_err(|e| anyhow::anyhow!("--url: {e}"))?;
    (parsed.host.as_str(), parsed.port)
        .to_socket_addrs()
        .with_context(|| format!("--url: resolving {}", parsed.host))?
        .next()
        .with_context(|| format!("--url: {} has no address", parsed.host))
}

fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A command `lab check` started; killed when dropped.
pub struct Started {
    child: Child,
    url: String,
    output: PathBuf,
}

impl Started {
    /// Starts `argv` and waits until `url`'s address accepts connections (at most `limit`).
    /// Refuses when something already listens there: that would be checked instead.
    pub fn start(argv: &[String], url: &str, limit: Duration) -> Result<Started> {
        let addr = url_addr(url)?;
        if accepts(addr) {
            bail!(
                "something already accepts connections on {addr} before the command starts; \
                 stop it, or check it with --pid"
            );
        }
        let output = std::env::temp_dir().join(format!(
            "lab-check-{}-{}.out",
            std::process::id(),
            argv[0].rsplit('/').next().unwrap_or("server")
        ));
        let file = std::fs::File::create(&output)
            .with_context(|| format!("creating {}", output.display()))?;
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", argv[0]))?;
        let mut started = Started {
            child,
            url: url.trim_end_matches('/').to_string(),
            output,
        };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = started.child.try_wait()? {
                bail!(
                    "{} exited during start-up ({status}) without serving {url}:\n{}",
                    argv[0],
                    started.output_tail(20)
                );
            }
            if accepts(addr) {
                return Ok(started);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not accept connections on {addr} within {limit:?}:\n{}",
                    argv[0],
                    started.output_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn output_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.output).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn stop(mut self, grace: Duration) -> Option<String> {
        let pid = Pid::from_raw(self.child.id() as i32);
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(format!("the command had already exited ({status})"));
        }
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Some(format!("the command ignored SIGTERM for {grace:?}; killed"))
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.output);
    }
}
