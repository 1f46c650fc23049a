//! Starting and stopping a `server` process, for `lab run` and the test suites.
//!
//! The server is started with `--listen 127.0.0.1:0` unless told otherwise, and the
//! launcher reads the address the kernel chose from the server's first log line
//! (`... serving http://ADDR ...`), so concurrent tests never race for a port. Standard
//! error goes to a file whose tail is kept for failure reports.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How to start a server.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub variant: String,
    pub database_url: String,
    /// `--listen`; port 0 lets the kernel choose.
    pub listen: SocketAddr,
    /// `--log` mode (`off` unless a test is about logging).
    pub log: String,
    pub log_file: Option<PathBuf>,
    /// Further flags, passed as they are.
    pub extra_args: Vec<String>,
}

impl LaunchOptions {
    pub fn new(variant: &str, database_url: &str) -> Self {
        LaunchOptions {
            variant: variant.to_string(),
            database_url: database_url.to_string(),
            listen: "127.0.0.1:0".parse().expect("a literal address"),
            log: "off".into(),
            log_file: None,
            extra_args: Vec::new(),
        }
    }
}

/// A running `server` process. Dropping it kills the process if it still runs.
pub struct ServerProcess {
    child: Child,
    addr: Option<SocketAddr>,
    stderr_path: PathBuf,
    variant: String,
}

impl ServerProcess {
    /// Starts the server and waits until it serves `/plaintext`.
    pub fn start(binary: &Path, options: &LaunchOptions) -> Result<Self> {
        if !binary.is_file() {
            bail!(
                "no server binary at {} (build it with `cargo build --bins`)",
                binary.display()
            );
        }
        let stderr_path = std::env::temp_dir().join(format!(
            "syscall-lab-server-{}-{}-{}.stderr",
            options.variant,
            std::process::id(),
            unique()
        ));
        let stderr = fs::File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("--variant")
            .arg(&options.variant)
            .arg("--listen")
            .arg(options.listen.to_string())
            .arg("--database-url")
            .arg(&options.database_url)
            .arg("--log")
            .arg(&options.log)
            .args(&options.extra_args)
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(path) = &options.log_file {
            command.arg("--log-file").arg(path);
        }
        if options.log == "stdout" {
            command.stdout(Stdio::piped());
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = ServerProcess {
            child,
            addr: None,
            stderr_path,
            variant: options.variant.clone(),
        };
        server.wait_ready(Duration::from_secs(30))?;
        Ok(server)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "server --variant {} exited during start-up ({status}):\n{}",
                    self.variant,
                    self.stderr_tail(20)
                );
            }
            if self.addr.is_none() {
                self.addr = self.announced_address();
            }
            if let Some(addr) = self.addr {
                if plaintext_answers(addr) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "server --variant {} did not answer /plaintext within {limit:?}:\n{}",
                    self.variant,
                    self.stderr_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn announced_address(&self) -> Option<SocketAddr> {
        let text = fs::read_to_string(&self.stderr_path).ok()?;
        let start = text.find("serving http://")? + "serving http://".len();
        let rest = &text[start..];
        let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
        rest[..end].parse().ok()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
            .expect("a started server has announced its address")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn variant(&self) -> &str {
        &self.variant
    }

    /// Takes the server's standard output (only when started with `log: "stdout"`).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `lines` lines the server wrote to standard error.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Everything the server wrote to standard error so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM, then waits for a clean exit. A server still running after `grace` is
    /// killed and reported as an error.
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        let pid = Pid::from_raw(self.child.id() as i32);
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "server --variant {} had already exited ({status}):\n{}",
                self.variant,
                self.stderr_tail(20)
            );
        }
        kill(pid, Signal::SIGTERM).context("sending SIGTERM")?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                let _ = fs::remove_file(&self.stderr_path);
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!(
            "server --variant {} ignored SIGTERM for {grace:?}; killed:\n{}",
            self.variant,
            self.stderr_tail(20)
        )
    }
}

impl Drop for ServerProcess {
    /// Kills a server still running, and removes its standard error file unless a panic
    /// (a failing test) is unwinding: then the file stays, and its path is said, to read.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "server --variant {}: its standard error is kept in {}",
                self.variant,
                self.stderr_path.display()
            );
        } else {
            let _ = fs::remove_file(&self.stderr_path);
        }
    }
}

fn plaintext_answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /plaintext HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    reply.starts_with(b"HTTP/1.1 200")
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A binary of this workspace, looked up next to the running executable: the same build
/// (`target/<profile>/`) as the caller, whether that is `lab` or a test in `deps/`.
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("executable without a directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "{} not found; build the workspace's binaries first: cargo build --workspace --bins",
            path.display()
        )
    }
}
