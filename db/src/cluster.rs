//! A private PostgreSQL cluster that the lab starts itself (`lab db up`).
//!
//! The cluster lives in a data directory the lab owns (see [`ClusterConfig::standard`]),
//! listens on 127.0.0.1 only, on a port that is not 5432, trusts loopback connections only
//! (for `lab run --hosts separate`: listens on the database host's address inside the lab's
//! network namespace and trusts that link's subnet too, [`ClusterConfig::on_network`]),
//! and preloads `pg_stat_statements` when the installation has it ([`QueryCounting`] says
//! whether it does, and what to install when not). PostgreSQL refuses to run as
//! root, so when the lab runs as root every PostgreSQL program is started as an
//! unprivileged account (`postgres` if it exists, else a `syscall-lab` system account that
//! is created on first use).
//!
//! Every operation holds an exclusive `flock` on `<data_dir>.lock`, so two `lab db up`
//! calls (or two test binaries) never race to initialise or start the same cluster.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Uid, User};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::schema;

/// Port of the cluster `lab db up` manages, unless `LAB_PGPORT` says otherwise.
pub const DEFAULT_PORT: u16 = 54320;
/// Port of the cluster the test suites start, unless `LAB_TEST_PGPORT` says otherwise.
pub const TEST_PORT: u16 = 54321;
/// Where the lab's clusters listen unless told otherwise.
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The database, role and password TechEmpower's verifier expects.
pub const DATABASE: &str = "hello_world";
pub const ROLE: &str = "benchmarkdbuser";
pub const PASSWORD: &str = "benchmarkdbpass";

/// Where a cluster lives and which port it listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub data_dir: PathBuf,
    pub port: u16,
    /// The address it listens on (and the URL names): 127.0.0.1 unless [`Self::on_network`].
    pub listen: IpAddr,
    /// Networks trusted besides loopback (CIDR, e.g. `198.18.2.0/24`).
    pub trusted: Vec<String>,
}

impl ClusterConfig {
    /// The cluster of `lab db up`. Data directory: `$LAB_PGDATA`, else
    /// `/var/lib/syscall-lab/postgres` for root, else
    /// `${XDG_DATA_HOME:-~/.local/share}/syscall-lab/postgres`. Port: `$LAB_PGPORT`, else
    /// [`DEFAULT_PORT`].
    pub fn standard() -> Self {
        let data_dir = env_path("LAB_PGDATA").unwrap_or_else(|| {
            if Uid::effective().is_root() {
                PathBuf::from("/var/lib/syscall-lab/postgres")
            } else {
                let share = env_path("XDG_DATA_HOME").unwrap_or_else(|| {
                    env_path("HOME")
                        .unwrap_or_else(|| PathBuf::from("/tmp"))
                        .join(".local/share")
                });
                share.join("syscall-lab/postgres")
            }
        });
        ClusterConfig {
            data_dir,
            port: env_port("LAB_PGPORT").unwrap_or(DEFAULT_PORT),
            listen: LOOPBACK,
            trusted: Vec::new(),
        }
    }

    /// The cluster the test suites share: in the system temporary directory (readable by
    /// the unprivileged account even when the checkout sits under `/root`), on
    /// `$LAB_TEST_PGPORT` or [`TEST_PORT`].
    pub fn for_tests() -> Self {
        let dir = std::env::temp_dir().join(format!("syscall-lab-{}", Uid::effective()));
        ClusterConfig {
            data_dir: dir.join("test-cluster"),
            port: env_port("LAB_TEST_PGPORT").unwrap_or(TEST_PORT),
            listen: LOOPBACK,
            trusted: Vec::new(),
        }
    }

    /// A throw-away cluster for a test that stops and restarts its database.
    pub fn scratch(name: &str, port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("syscall-lab-{}", Uid::effective()));
        ClusterConfig {
            data_dir: dir.join(name),
            port,
            listen: LOOPBACK,
            trusted: Vec::new(),
        }
    }

    /// The same cluster's data directory with `suffix` appended, listening on `listen`
    /// and trusting `trusted` (CIDR) as well as loopback: the database host of `lab run
    /// --hosts separate`, started inside its network namespace. A data directory of its
    /// own, so that it never fights the loopback cluster for its `postmaster.pid`.
    pub fn on_network(&self, suffix: &str, listen: IpAddr, trusted: &str) -> Self {
        let mut name = self.data_dir.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        ClusterConfig {
            data_dir: self.data_dir.with_file_name(name),
            port: self.port,
            listen,
            trusted: vec![trusted.to_string()],
        }
    }

    /// The server running in this data directory, when one does.
    pub fn postmaster(&self) -> Option<Postmaster> {
        Postmaster::read(&self.data_dir).filter(Postmaster::alive)
    }

    /// This cluster as it runs: on the port its server listens on when one runs in the data
    /// directory (a cluster started with another `LAB_PGPORT` keeps that port until it is
    /// stopped), else as configured.
    pub fn as_running(&self) -> ClusterConfig {
        self.with_postmaster(self.postmaster())
    }

    fn with_postmaster(&self, postmaster: Option<Postmaster>) -> ClusterConfig {
        ClusterConfig {
            port: postmaster.and_then(|p| p.port).unwrap_or(self.port),
            ..self.clone()
        }
    }

    /// What to tell a user when the server in this data directory (`running`, from
    /// [`Self::as_running`]) listens on another port than this configuration asks for:
    /// both ports, which one the lab uses, and how to move it. None when they agree.
    pub fn port_notice(&self, running: &ClusterConfig) -> Option<String> {
        (running.port != self.port).then(|| {
            format!(
                "the PostgreSQL in {dir} already runs on port {running}, not on port {asked} \
                 as LAB_PGPORT (default {DEFAULT_PORT}) asks: using port {running}. To move \
                 it to port {asked}: `lab db down`, then `lab db up`; to keep port {running} \
                 and silence this: set LAB_PGPORT={running}.",
                dir = self.data_dir.display(),
                running = running.port,
                asked = self.port,
            )
        })
    }

    /// The `DATABASE_URL` of this cluster's benchmark database.
    pub fn url(&self) -> String {
        format!(
            "postgres://{ROLE}:{PASSWORD}@{}/{DATABASE}",
            SocketAddr::new(self.listen, self.port)
        )
    }

    fn lock_path(&self) -> PathBuf {
        self.beside(".lock")
    }

    /// The file whose shared locks count the processes using the cluster
    /// ([`crate::last_user`]).
    pub(crate) fn users_path(&self) -> PathBuf {
        self.beside(".users")
    }

    /// `<data_dir><suffix>`, next to the data directory.
    fn beside(&self, suffix: &str) -> PathBuf {
        let mut name = self.data_dir.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        self.data_dir.with_file_name(name)
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn env_port(name: &str) -> Option<u16> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The server running in a data directory, as its `postmaster.pid` says: PostgreSQL writes
/// its pid on the first line and the port it listens on on the fourth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Postmaster {
    pub pid: u32,
    /// None when the file names none (it always does, from PostgreSQL 9.1 on).
    pub port: Option<u16>,
}

impl Postmaster {
    fn read(data_dir: &Path) -> Option<Postmaster> {
        let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
        let mut lines = text.lines();
        let pid = lines.next()?.trim().parse().ok()?;
        let port = lines.nth(2).and_then(|l| l.trim().parse().ok());
        Some(Postmaster { pid, port })
    }

    /// A PostgreSQL that runs, not a pid left by a crash (gone, a zombie, or reused by
    /// something that is not PostgreSQL).
    fn alive(&self) -> bool {
        let comm = fs::read_to_string(format!("/proc/{}/comm", self.pid)).unwrap_or_default();
        matches!(comm.trim(), "postgres" | "postmaster") && !is_zombie(self.pid)
    }
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: the installation's own, with
/// symlinks resolved (`/usr/local/bin/postgres -> /usr/lib/postgresql/15/bin/postgres`,
/// as several distributions and Homebrew lay them out), so that its `pg_config` and
/// modules are found beside it.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub bindir: PathBuf,
}

/// What to tell a user whose machine has no PostgreSQL server.
pub const MISSING_BINARIES: &str = "PostgreSQL server programs (initdb, pg_ctl, postgres) were \
not found on PATH, through `pg_config --bindir`, or in /usr/lib/postgresql/*/bin. Install \
them with `sudo apt-get install postgresql` (Debian/Ubuntu; the README's set-up commands do \
this), or point the lab at an existing server with DATABASE_URL=postgres://...";

impl PgBinaries {
    /// Looks on PATH, then where `pg_config --bindir` says, then in Debian's versioned
    /// directories, newest version first.
    pub fn locate() -> Result<Self> {
        let has_all = |dir: &Path| {
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|b| dir.join(b).is_file())
        };
        let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            if out.status.success() {
                candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
            }
        }
        let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((version, e.path().join("bin")))
            })
            .collect();
        versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
        candidates.extend(versioned.into_iter().map(|(_, dir)| dir));
        let found = candidates
            .into_iter()
            .find(|dir| has_all(dir))
            .context(MISSING_BINARIES)?;
        // A folder of symlinks: the installation is where `postgres` really lives.
        let bindir = fs::canonicalize(found.join("postgres"))
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .filter(|dir| has_all(dir))
            .unwrap_or(found);
        Ok(PgBinaries { bindir })
    }

    fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// Where this installation's loadable modules may be: what its own `pg_config
    /// --pkglibdir` says, else `<prefix>/lib` (Debian's `/usr/lib/postgresql/<ver>/lib`)
    /// and `<prefix>/lib/postgresql` (source and Homebrew installs).
    fn pkglibdirs(&self) -> Vec<PathBuf> {
        if let Ok(out) = Command::new(self.program("pg_config"))
            .arg("--pkglibdir")
            .output()
        {
            if out.status.success() {
                return vec![PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())];
            }
        }
        self.bindir
            .parent()
            .map(|prefix| vec![prefix.join("lib"), prefix.join("lib/postgresql")])
            .unwrap_or_default()
    }

    /// `pg_stat_statements.so` of this installation, or where it was looked for.
    fn pg_stat_statements(&self) -> Result<PathBuf, Vec<PathBuf>> {
        let dirs = self.pkglibdirs();
        dirs.iter()
            .map(|d| d.join("pg_stat_statements.so"))
            .find(|m| m.exists())
            .ok_or(dirs)
    }
}

/// Whether PostgreSQL counts the queries it runs (`pg_stat_statements`, which
/// verifiers such as TechEmpower's use to check the variants), for `lab db up` and
/// `lab db status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryCounting {
    /// The module is installed.
    pub available: bool,
    /// The server loaded it at start and it is created in the benchmark database.
    pub enabled: bool,
    /// Why it is not enabled, and what to do.
    pub reason: Option<String>,
}

/// What to install when pg_stat_statements is missing.
pub const INSTALL_PG_STAT_STATEMENTS: &str =
    "install PostgreSQL's contrib modules (Debian/Ubuntu: \
`apt-get install postgresql-contrib` for PostgreSQL 14 and older; from PostgreSQL 15 on they \
ship in the server package, postgresql-15)";

impl QueryCounting {
    /// From what a running server says; `restart` is how to restart it.
    pub fn of_server(stats: &schema::StatementStats, restart: &str) -> QueryCounting {
        let available = stats.installable || stats.preloaded;
        let reason = if !available {
            Some(format!("pg_stat_statements is not installed on the server: {INSTALL_PG_STAT_STATEMENTS}, then {restart}"))
        } else if !stats.preloaded {
            Some(format!(
                "the server runs without pg_stat_statements in shared_preload_libraries: {restart}"
            ))
        } else if !stats.created {
            Some("pg_stat_statements is loaded but not created in the database: `lab db up` creates it".to_string())
        } else {
            None
        };
        QueryCounting {
            available,
            enabled: reason.is_none(),
            reason,
        }
    }

    /// On or off, and why, in one line.
    pub fn describe(&self) -> String {
        match &self.reason {
            None => "query counting (pg_stat_statements): on".to_string(),
            Some(why) => format!("query counting (pg_stat_statements): OFF: {why}"),
        }
    }
}

/// The unprivileged account PostgreSQL runs as when the lab itself runs as root.
#[derive(Debug, Clone)]
struct Account {
    name: String,
    uid: u32,
    gid: u32,
}

const FALLBACK_ACCOUNT: &str = "syscall-lab";

fn service_account() -> Result<Option<Account>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    for name in ["postgres", FALLBACK_ACCOUNT] {
        if let Some(user) = User::from_name(name)? {
            return Ok(Some(Account {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            }));
        }
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
        ])
        .args(["--shell", "/usr/sbin/nologin", FALLBACK_ACCOUNT])
        .status()
        .context(
            "running useradd to create an account for PostgreSQL (it refuses to run as root)",
        )?;
    if !status.success() {
        bail!("useradd {FALLBACK_ACCOUNT} failed ({status}); PostgreSQL refuses to run as root and needs an unprivileged account");
    }
    let user = User::from_name(FALLBACK_ACCOUNT)?.context("account just created is missing")?;
    Ok(Some(Account {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }))
}

/// What `up` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpOutcome {
    Started,
    AlreadyRunning,
}

/// What `lab db status` prints.
#[derive(Debug, Clone)]
pub struct Status {
    /// As it runs ([`ClusterConfig::as_running`]).
    pub config: ClusterConfig,
    /// Set when it runs on another port than configured ([`ClusterConfig::port_notice`]).
    pub port_notice: Option<String>,
    pub initialised: bool,
    pub pid: Option<u32>,
    pub contents: Option<schema::Contents>,
    pub query_counting: QueryCounting,
}

/// A private cluster: its configuration, the PostgreSQL programs, and the account they
/// run as.
pub struct Cluster {
    config: ClusterConfig,
    binaries: PgBinaries,
    account: Option<Account>,
}

impl Cluster {
    pub fn new(config: ClusterConfig) -> Result<Self> {
        let binaries = PgBinaries::locate()?;
        let account = service_account()?;
        Ok(Cluster {
            config,
            binaries,
            account,
        })
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Initialises the data directory if needed, starts the server unless it already runs,
    /// creates the database, applies migrations and seeds. Returns once queries succeed.
    /// A server that already runs keeps its port, which may not be the configured one: its
    /// URL is [`ClusterConfig::as_running`]'s.
    pub fn up(&self) -> Result<UpOutcome> {
        self.up_as_running().map(|(outcome, _)| outcome)
    }

    /// [`Self::up`], and the configuration the server runs with (its URL is the one to use).
    pub fn up_as_running(&self) -> Result<(UpOutcome, ClusterConfig)> {
        let _lock = self.lock()?;
        if !self.initialised() {
            self.initdb()?;
        }
        let running = self.running();
        let live = self.config.with_postmaster(running);
        self.write_config(&live)?;
        let outcome = if running.is_some() {
            UpOutcome::AlreadyRunning
        } else {
            self.start()?;
            UpOutcome::Started
        };
        block_on(prepare_database(&live))?;
        if self.binaries.pg_stat_statements().is_ok() {
            crate::with_pool(&live.url(), |pool| async move {
                schema::create_statement_stats(&pool).await
            })
            .context("creating pg_stat_statements in the benchmark database")?;
        }
        Ok((outcome, live))
    }

    /// Whether the cluster counts queries: the module installed, loaded by the running
    /// server, created in the benchmark database; else why not and what to do.
    pub fn query_counting(&self) -> QueryCounting {
        if let Err(looked) = self.binaries.pg_stat_statements() {
            let looked: Vec<String> = looked.iter().map(|d| d.display().to_string()).collect();
            return QueryCounting {
                available: false,
                enabled: false,
                reason: Some(format!(
                    "pg_stat_statements.so is not installed beside the PostgreSQL in {} (looked in {}): {INSTALL_PG_STAT_STATEMENTS}, then `lab db down && lab db up`",
                    self.binaries.bindir.display(),
                    looked.join(", ")
                )),
            };
        }
        let Some(running) = self.running() else {
            return QueryCounting {
                available: true,
                enabled: false,
                reason: Some("the server is not running: `lab db up`".into()),
            };
        };
        let url = self.config.with_postmaster(Some(running)).url();
        match crate::with_pool(
            &url,
            |pool| async move { schema::statement_stats(&pool).await },
        ) {
            Ok(stats) => QueryCounting::of_server(&stats, "`lab db down && lab db up`"),
            Err(e) => QueryCounting {
                available: true,
                enabled: false,
                reason: Some(format!(
                    "the server did not say whether it loaded it: {e:#}"
                )),
            },
        }
    }

    /// Stops the server (fast shutdown: clients are disconnected, no data is lost).
    /// Returns false when it was not running.
    pub fn down(&self) -> Result<bool> {
        let _lock = self.lock()?;
        if self.running().is_none() {
            return Ok(false);
        }
        let out = self.run_as_account(
            Command::new(self.binaries.program("pg_ctl"))
                .arg("-D")
                .arg(&self.config.data_dir)
                .args(["-m", "fast", "-w", "-t", "60", "stop"]),
        )?;
        check(&out, "pg_ctl stop")?;
        Ok(true)
    }

    /// Stops the server and deletes its data directory (for throw-away clusters).
    pub fn destroy(self) -> Result<()> {
        self.down()?;
        let _lock = self.lock()?;
        if self.config.data_dir.exists() {
            fs::remove_dir_all(&self.config.data_dir)
                .with_context(|| format!("removing {}", self.config.data_dir.display()))?;
        }
        let _ = fs::remove_file(self.config.lock_path());
        Ok(())
    }

    /// Re-seeds: every `world` row drawn anew, fortunes rewritten, statistics cleared.
    pub fn reset(&self) -> Result<()> {
        let (_, live) = self.up_as_running()?;
        crate::with_pool(
            &live.url(),
            |pool| async move { schema::reseed(&pool).await },
        )
    }

    pub fn status(&self) -> Status {
        let running = self.running();
        let live = self.config.with_postmaster(running);
        let contents = running.and_then(|_| {
            crate::with_pool(
                &live.url(),
                |pool| async move { schema::contents(&pool).await },
            )
            .ok()
        });
        Status {
            port_notice: self.config.port_notice(&live),
            config: live,
            initialised: self.initialised(),
            pid: running.map(|p| p.pid),
            contents,
            query_counting: self.query_counting(),
        }
    }

    fn initialised(&self) -> bool {
        self.config.data_dir.join("PG_VERSION").is_file()
    }

    fn lock(&self) -> Result<Flock<File>> {
        lock_file(&self.config.lock_path(), FlockArg::LockExclusive)
    }

    /// The postmaster when the server runs. A `postmaster.pid` left by a crash (its pid
    /// gone, a zombie, or reused by something that is not PostgreSQL) is removed, so the
    /// next start is not refused.
    fn running(&self) -> Option<Postmaster> {
        let postmaster = Postmaster::read(&self.config.data_dir)?;
        if postmaster.alive() {
            return Some(postmaster);
        }
        // PostgreSQL would take a zombie's pid for a live server and refuse to start:
        // remove its lock files (the data directory's and the socket's) ourselves.
        let _ = fs::remove_file(self.config.data_dir.join("postmaster.pid"));
        let port = postmaster.port.unwrap_or(self.config.port);
        let _ = fs::remove_file(self.config.data_dir.join(format!(".s.PGSQL.{port}.lock")));
        None
    }

    fn initdb(&self) -> Result<()> {
        let dir = &self.config.data_dir;
        if let Some(parent) = dir.parent() {
            create_traversable_dir(parent)?;
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
        if let Some(account) = &self.account {
            nix::unistd::chown(dir, Some(account.uid.into()), Some(account.gid.into()))
                .with_context(|| format!("giving {} to account {}", dir.display(), account.name))?;
        }
        let out = self.run_as_account(
            Command::new(self.binaries.program("initdb"))
                .arg("-D")
                .arg(dir)
                .args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-instructions",
                ]),
        )?;
        check(&out, "initdb").with_context(|| {
            format!(
                "initialising {} (every parent folder must be readable by {})",
                dir.display(),
                self.account
                    .as_ref()
                    .map_or("the current user", |a| a.name.as_str())
            )
        })?;
        let mut conf = OpenOptions::new()
            .append(true)
            .open(dir.join("postgresql.conf"))?;
        writeln!(conf, "\n# syscall-lab settings (rewritten by every `lab db up`)\ninclude_if_exists = 'syscall-lab.conf'")?;
        Ok(())
    }

    /// Writes `pg_hba.conf` and the lab's settings for `live`: the configuration, or the
    /// port of a server that already runs, so that the file says what the server does.
    fn write_config(&self, live: &ClusterConfig) -> Result<()> {
        // Loopback, and the lab's own namespace link when it has one: nothing outside
        // this machine can reach the lab's database.
        let mut hba = String::from(
            "# Written by syscall-lab (rewritten by every `lab db up`): trust loopback\n\
             # and the networks the lab made itself, nothing else.\n\
             local all all trust\n\
             host  all all 127.0.0.1/32 trust\n\
             host  all all ::1/128 trust\n",
        );
        for net in &live.trusted {
            hba.push_str(&format!("host  all all {net} trust\n"));
        }
        self.write_owned("pg_hba.conf", &hba)?;
        let preload = if self.binaries.pg_stat_statements().is_ok() {
            "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all\n"
        } else {
            ""
        };
        let text = format!(
            "listen_addresses = '{listen}'\n\
             port = {port}\n\
             unix_socket_directories = '{dir}'\n\
             max_connections = 300\n\
             shared_buffers = 256MB\n\
             # As TechEmpower runs it: commits do not wait for the WAL flush.\n\
             synchronous_commit = off\n\
             {preload}",
            listen = live.listen,
            port = live.port,
            dir = live.data_dir.display(),
        );
        self.write_owned("syscall-lab.conf", &text)
    }

    fn write_owned(&self, name: &str, text: &str) -> Result<()> {
        let path = self.config.data_dir.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        if let Some(account) = &self.account {
            nix::unistd::chown(&path, Some(account.uid.into()), Some(account.gid.into()))?;
        }
        Ok(())
    }

    fn start(&self) -> Result<()> {
        let log = self.config.data_dir.join("postgres.log");
        let out = self.run_as_account(
            Command::new(self.binaries.program("pg_ctl"))
                .arg("-D")
                .arg(&self.config.data_dir)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "start"]),
        )?;
        if !out.status.success() {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "PostgreSQL did not start on {} ({}):\n{}\n--- {} (last lines) ---\n{}",
                SocketAddr::new(self.config.listen, self.config.port),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                log.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }

    /// Runs a PostgreSQL program as the unprivileged account (or as ourselves when we are
    /// not root), from a directory that account can enter.
    fn run_as_account(&self, cmd: &mut Command) -> Result<Output> {
        cmd.current_dir(self.config.data_dir.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .env_remove("PGDATA")
            .env_remove("PGPORT");
        if let Some(account) = &self.account {
            // std drops supplementary groups (setgroups(0)) before setuid when root.
            cmd.uid(account.uid)
                .gid(account.gid)
                .env("HOME", "/tmp")
                .env("USER", &account.name);
        }
        let program = format!("{:?}", cmd.get_program());
        cmd.output().with_context(|| format!("running {program}"))
    }
}

/// Takes a `flock` on `path` (created with its folder if missing), waiting for it unless
/// `arg` says not to.
pub(crate) fn lock_file(path: &Path, arg: FlockArg) -> Result<Flock<File>> {
    if let Some(parent) = path.parent() {
        create_traversable_dir(parent)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    Flock::lock(file, arg)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", path.display()))
}

/// A killed postmaster whose parent has not reaped it yet still has a /proc entry.
fn is_zombie(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name, which may itself hold spaces.
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
}

fn check(out: &Output, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )
}

/// Creates a directory (and parents) that other accounts may traverse but not write.
fn create_traversable_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Waits until the server takes queries, then creates the role and database if missing,
/// applies migrations and seeds.
async fn prepare_database(config: &ClusterConfig) -> Result<()> {
    let admin = PgConnectOptions::new()
        .host(&config.listen.to_string())
        .port(config.port)
        .username("postgres")
        .database("postgres")
        .disable_statement_logging();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conn = loop {
        match PgConnection::connect_with(&admin).await {
            Ok(conn) => break conn,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(e).context(format!(
                    "connecting to {}",
                    SocketAddr::new(config.listen, config.port)
                ))
            }
        }
    };
    let role_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(ROLE)
            .fetch_one(&mut conn)
            .await?;
    if !role_exists {
        // Superuser so that it may create pg_stat_statements and reset its counters; the
        // cluster trusts loopback only, so this grants nothing to anyone else.
        sqlx::raw_sql("CREATE ROLE benchmarkdbuser LOGIN SUPERUSER PASSWORD 'benchmarkdbpass'")
            .execute(&mut conn)
            .await?;
    }
    let db_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(DATABASE)
            .fetch_one(&mut conn)
            .await?;
    if !db_exists {
        sqlx::raw_sql(
            "CREATE DATABASE hello_world OWNER benchmarkdbuser ENCODING 'UTF8' TEMPLATE template0",
        )
        .execute(&mut conn)
        .await?;
    }
    conn.close().await?;
    crate::prepare_url(&config.url()).await
}

/// Runs a future to completion on a private current-thread runtime, so that callers need
/// no runtime of their own (the cluster is driven from plain `main`s and tests).
fn block_on<T>(fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(fut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postmaster_pid_gives_the_pid_and_the_port() {
        let dir = std::env::temp_dir().join(format!("syscall-lab-pid-file-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // As PostgreSQL 15 writes it.
        fs::write(
            dir.join("postmaster.pid"),
            "4242\n/data\n1700000000\n55491\n/data\n127.0.0.1\n  1234567         7\nready   \n",
        )
        .unwrap();
        let read = Postmaster::read(&dir);
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            read,
            Some(Postmaster {
                pid: 4242,
                port: Some(55491)
            })
        );
    }

    #[test]
    fn the_port_notice_names_both_ports_when_they_differ() {
        let asked = ClusterConfig::scratch("notice", DEFAULT_PORT);
        assert_eq!(asked.port_notice(&asked), None);
        let running = ClusterConfig {
            port: 55491,
            ..asked.clone()
        };
        let notice = asked.port_notice(&running).expect("a notice");
        assert!(
            notice.contains("runs on port 55491, not on port 54320")
                && notice.contains("LAB_PGPORT=55491"),
            "{notice}"
        );
    }
}
