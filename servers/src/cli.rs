//! Flags and environment variables of the `server` binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::logging::LogMode;

/// The I/O models. Each is one module of [`crate::io`]; everything else is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Variant {
    /// An acceptor thread and one OS thread per connection, blocking I/O.
    ThreadPerRequest,
    /// A fixed set of worker threads fed by a bounded queue of connections, blocking I/O.
    ThreadPool,
    /// tokio's multi-thread runtime (epoll readiness) with hyper's HTTP/1.1 and sqlx.
    Epoll,
    /// tokio-uring, one runtime per CPU: every client socket operation goes through io_uring.
    IoUring,
}

impl Variant {
    /// The name users type (`--variant epoll`).
    pub fn name(self) -> &'static str {
        match self {
            Variant::ThreadPerRequest => "thread-per-request",
            Variant::ThreadPool => "thread-pool",
            Variant::Epoll => "epoll",
            Variant::IoUring => "io-uring",
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

    /// Worker threads: runtime workers for `epoll` and `io-uring` (one runtime per
    /// worker; default one per CPU), pool threads for `thread-pool` (default 128).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub workers: Option<u32>,

    /// `thread-per-request`: most connection threads alive at once; beyond it a new
    /// connection takes the thread of one that waits for its request (see
    /// `--busy-header-timeout`), or gets 503 and a close.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_threads: u32,

    /// `thread-pool`: accepted connections that may wait for a worker; beyond it the one
    /// that has waited longest gets 503 and a close, and the new one takes its place.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub queue: u32,

    /// Seconds a client may take to send a complete request head (also how long an idle
    /// keep-alive connection is kept); then it gets 408 and a close.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout: u64,

    /// `thread-per-request` and `thread-pool`: when connections wait for a thread (every
    /// worker busy, or `--max-threads` reached), a connection whose thread has waited this
    /// many milliseconds for its request (an idle keep-alive client, or one that sent half a
    /// head and went quiet) gives the thread up to them: 503 and a close, longest-waiting
    /// first. Requests being answered are never cut off.
    #[arg(long, value_name = "MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub busy_header_timeout: u64,

    /// Seconds a response write may make no progress (a client that stops reading while
    /// responses pile up); then the connection is closed. Every variant: `SO_SNDTIMEO`
    /// for the blocking ones, a timer around the write for epoll and io-uring.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub send_timeout: u64,

    /// Request log: `sync` writes each line as it happens, `buffered` batches lines in a
    /// background writer (few large writes), `stdout` writes each line to standard output,
    /// `off` logs nothing.
    #[arg(long, value_enum, default_value_t = LogMode::Buffered, env = "LAB_LOG")]
    pub log: LogMode,

    /// Database statements prepared once per connection (`on`) or parsed anew for every
    /// query (`off`: one more round trip per query).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub prepared: OnOff,

    /// `/queries`: one query after another on one connection (`sequential`), or all at
    /// once over several connections (`in-flight`; epoll and io-uring only).
    #[arg(long, value_enum, default_value_t = QueriesMode::Sequential)]
    pub queries_mode: QueriesMode,

    /// Database client of `epoll` and `io-uring`: `sqlx`, a pool of connections each lent
    /// to one request at a time, or `pipelined`, one connection per runtime thread shared
    /// by all its requests, their queries pipelined (servers/src/database/pipelined/).
    #[arg(long, value_enum, default_value_t = DbClient::Sqlx)]
    pub db_client: DbClient,

    /// `--db-client pipelined`: connections each runtime thread shares among its requests
    /// (default 1; epoll's shared runtime opens this many per worker). A request takes
    /// them in turn, so one server thread can keep several PostgreSQL backends busy.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub db_shared: Option<u32>,

    /// `--db-client pipelined`: when the kernel wakes a connection's reader for the answers
    /// PostgreSQL sends, one per query. `per-answer`: at each. `per-request`: once the
    /// oldest waiting request's answers can all be there (SO_RCVLOWAT, TCP only), so a
    /// twenty-query request wakes its thread a few times instead of twenty.
    #[arg(long, value_enum, default_value_t = DbWake::PerAnswer)]
    pub db_wake: DbWake,

    /// `epoll`: how tokio's runtime is laid out. `shared`: one multi-thread runtime whose
    /// `--workers` steal each other's tasks and share one listener. `per-core`: one
    /// current-thread runtime per worker, each with its own `SO_REUSEPORT` listener and
    /// database client; a connection stays on the thread that accepted it (as io-uring).
    #[arg(long, value_enum, default_value_t = RuntimeLayout::Shared)]
    pub runtime: RuntimeLayout,

    /// `/updates`: one bulk UPDATE for all rows (`bulk`), or one UPDATE per row (`row`).
    #[arg(long, value_enum, default_value_t = UpdatesMode::Bulk)]
    pub updates: UpdatesMode,

    /// TCP_NODELAY on client sockets (`off` lets Nagle's algorithm hold back small
    /// writes until the previous one is acknowledged).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub nodelay: OnOff,

    /// Responses written in one call (`single`), or head and body in two calls
    /// (`split`; thread-per-request, thread-pool and io-uring: hyper always writes once).
    #[arg(long, value_enum, default_value_t = WriteMode::Single)]
    pub write_mode: WriteMode,

    /// `io-uring`: a kernel thread polls each ring's submission queue (SQPOLL), so that
    /// submitting needs no io_uring_enter while it is busy (`on`), or every submission
    /// enters the kernel (`off`).
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    pub sqpoll: OnOff,

    /// `io-uring`: client reads and writes as READ_FIXED and WRITE_FIXED on buffers
    /// registered with each ring once (`on`; 2 MiB pinned per runtime), so the kernel
    /// does not look up and pin the pages of every operation's buffer; or as RECV and SEND
    /// on ordinary memory (`off`). When every registered buffer is in use, or a batch of
    /// responses is larger than one (16 KiB), that operation falls back to RECV or SEND.
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    pub registered_buffers: OnOff,

    /// `GET /debug/pprof/profile?seconds=N` (pprof protobuf) and
    /// `/debug/pprof/flamegraph?seconds=N` (SVG), N from 1 to 120: CPU profiles sampled
    /// only while one is requested. For a lab, not for the internet: `off` answers 404.
    #[arg(long, value_enum, default_value_t = OnOff::On, env = "LAB_PPROF")]
    pub pprof: OnOff,

    /// File of the request log in `sync` and `buffered` modes.
    #[arg(long, value_name = "PATH", default_value = "server.log")]
    pub log_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueriesMode {
    Sequential,
    InFlight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DbClient {
    Sqlx,
    Pipelined,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DbWake {
    PerAnswer,
    PerRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeLayout {
    Shared,
    PerCore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpdatesMode {
    Bulk,
    Row,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WriteMode {
    Single,
    Split,
}

impl Args {
    /// The database knobs, checked against the variant.
    pub fn knobs(&self) -> anyhow::Result<crate::database::Knobs> {
        if self.sqpoll == OnOff::On && self.variant != Variant::IoUring {
            anyhow::bail!("--sqpoll on needs the io-uring variant: the others have no ring");
        }
        if self.registered_buffers() && self.variant != Variant::IoUring {
            anyhow::bail!(
                "--registered-buffers on needs the io-uring variant: the others have no ring"
            );
        }
        if self.runtime == RuntimeLayout::PerCore && self.variant != Variant::Epoll {
            anyhow::bail!(
                "--runtime per-core is an epoll setting: io-uring always runs one runtime per core, the blocking variants none"
            );
        }
        let queries_in_flight = self.queries_mode == QueriesMode::InFlight;
        if queries_in_flight && !queries_in_flight_possible(self.variant) {
            anyhow::bail!(
                "--queries-mode in-flight needs an async variant (epoll or io-uring): a blocking thread waits for each answer in turn"
            );
        }
        if self.db_client == DbClient::Pipelined && !queries_in_flight_possible(self.variant) {
            anyhow::bail!(
                "--db-client pipelined needs an async variant (epoll or io-uring): a blocking thread cannot share its connection"
            );
        }
        if self.db_shared.is_some() && self.db_client != DbClient::Pipelined {
            anyhow::bail!(
                "--db-shared needs --db-client pipelined: sqlx's pool lends each connection to one request (its size is --pool-size)"
            );
        }
        let wake_per_request = self.db_wake == DbWake::PerRequest;
        if wake_per_request && self.db_client != DbClient::Pipelined {
            anyhow::bail!(
                "--db-wake per-request needs --db-client pipelined: sqlx and the blocking client wait for one answer at a time"
            );
        }
        Ok(crate::database::Knobs {
            prepared: self.prepared == OnOff::On,
            bulk_updates: self.updates == UpdatesMode::Bulk,
            queries_in_flight,
            wake_per_request,
        })
    }

    /// How long an idle SQPOLL thread spins before it sleeps, when `--sqpoll on`.
    pub fn sqpoll_idle_ms(&self) -> Option<u32> {
        (self.sqpoll == OnOff::On).then_some(SQPOLL_IDLE_MS)
    }

    /// Pipelined connections per runtime thread (`--db-shared`; checked against the client
    /// by [`Args::knobs`]).
    pub fn db_shared(&self) -> usize {
        self.db_shared.map_or(1, |n| n as usize)
    }

    /// Whether client I/O uses registered buffers (`--registered-buffers on`; checked
    /// against the variant by [`Args::knobs`]).
    pub fn registered_buffers(&self) -> bool {
        self.registered_buffers == OnOff::On
    }

    pub fn nodelay(&self) -> bool {
        self.nodelay == OnOff::On
    }

    /// Whether responses go out as head and body in two writes.
    pub fn split_writes(&self) -> anyhow::Result<bool> {
        if self.write_mode == WriteMode::Split && self.variant == Variant::Epoll {
            anyhow::bail!("--write-mode split is not available for epoll: hyper writes a response in one call");
        }
        Ok(self.write_mode == WriteMode::Split)
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| db::ClusterConfig::standard().as_running().url())
    }

    pub fn workers(&self) -> usize {
        let default = match self.variant {
            Variant::ThreadPool => DEFAULT_POOL_THREADS,
            _ => cpus(),
        };
        self.workers.map_or(default, |n| n as usize)
    }

    pub fn header_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.header_timeout)
    }

    pub fn busy_header_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.busy_header_timeout)
    }

    pub fn send_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.send_timeout)
    }

    pub fn pool_size(&self) -> usize {
        self.pool_size.map_or_else(|| 4 * cpus(), |n| n as usize)
    }
}

/// Whether the variant is async: several database queries of one thread can be in flight.
fn queries_in_flight_possible(variant: Variant) -> bool {
    matches!(variant, Variant::Epoll | Variant::IoUring)
}

/// Milliseconds an SQPOLL kernel thread keeps polling without work before it sleeps.
pub const SQPOLL_IDLE_MS: u32 = 100;

/// Pool threads of `thread-pool` unless `--workers` says otherwise: a keep-alive client
/// holds a worker for as long as its connection lives, so the pool must outnumber the
/// connections a benchmark opens (TechEmpower's shapes on 2 cores go up to 64 and 128).
pub const DEFAULT_POOL_THREADS: usize = 128;

/// CPUs this process may run on (respects taskset and cgroup limits).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs(args: &[&str]) -> anyhow::Result<crate::database::Knobs> {
        let args = Args::try_parse_from(std::iter::once("server").chain(args.iter().copied()))?;
        args.knobs()
    }

    #[test]
    fn pipelined_client_only_for_async_variants() {
        for variant in ["epoll", "io-uring"] {
            knobs(&["--variant", variant, "--db-client", "pipelined"]).unwrap();
        }
        for variant in ["thread-per-request", "thread-pool"] {
            let error = knobs(&["--variant", variant, "--db-client", "pipelined"]).unwrap_err();
            assert!(
                error.to_string().contains("needs an async variant"),
                "{variant}: {error}"
            );
            knobs(&["--variant", variant]).unwrap();
        }
        assert!(knobs(&["--db-client", "pooled"]).is_err());
    }

    #[test]
    fn waking_per_request_is_the_pipelined_clients() {
        let on = ["--db-client", "pipelined", "--db-wake", "per-request"];
        assert!(knobs(&on).unwrap().wake_per_request);
        assert!(
            !knobs(&["--db-client", "pipelined"])
                .unwrap()
                .wake_per_request
        );
        let error = knobs(&["--db-wake", "per-request"]).unwrap_err();
        assert!(
            error.to_string().contains("needs --db-client pipelined"),
            "{error}"
        );
    }
}
