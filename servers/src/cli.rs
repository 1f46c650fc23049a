//! Flags and environment variables of the `server` binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::logging::LogMode;

/// The I/O models. Each is one module of [`crate::io`]; everything else is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Variant {
    /// tokio's multi-thread runtime (epoll readiness) with hyper's HTTP/1.1 and sqlx.
    Epoll,
}

impl Variant {
    /// The name users type (`--variant epoll`).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Epoll => "epoll",
        }
    }
}

/// Serves the TechEmpower API (/plaintext /json /db /queries /fortunes /updates, plus
/// /health and /metrics) with the I/O model chosen by --variant, backed by PostgreSQL.
#[derive(Debug, Clone, Parser)]
#[command(name = "server", version, about, long_about = None)]
pub struct Args {
    /// I/O model that serves the API.
    #[arg(long, value_enum, default_value_t = Variant::Epoll, env = "LAB_VARIANT")]
    pub variant: Variant,

    /// Address and port to listen on.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8080",
        env = "LISTEN"
    )]
    pub listen: SocketAddr,

    /// PostgreSQL to query. Default: the lab's own database (`lab db url`).
    #[arg(long, value_name = "URL", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Database connections at most (default: 4 per CPU). Opened on first use.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pool_size: Option<u32>,

    /// Worker threads of the runtime (default: one per CPU).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,

    /// Request log: `sync` writes each line as it happens, `buffered` batches lines in a
    /// background writer (few large writes), `stdout` writes each line to standard output,
    /// `off` logs nothing.
    #[arg(long, value_enum, default_value_t = LogMode::Buffered, env = "LAB_LOG")]
    pub log: LogMode,

    /// File of the request log in `sync` and `buffered` modes.
    #[arg(long, value_name = "PATH", default_value = "server.log")]
    pub log_file: PathBuf,
}

impl Args {
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| db::ClusterConfig::standard().url())
    }

    pub fn workers(&self) -> usize {
        self.workers.map_or_else(cpus, |n| n as usize)
    }

    pub fn pool_size(&self) -> usize {
        self.pool_size.map_or_else(|| 4 * cpus(), |n| n as usize)
    }
}

/// CPUs this process may run on (respects taskset and cgroup limits).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
