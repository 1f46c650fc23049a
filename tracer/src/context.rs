//! The classification context: which socket is the database, which ports serve clients,
//! which files are the log. Defaults come from the target itself (/proc), each one
//! overridable (`--db`, `--listen-port`, `--log-file`).
//!
//! A TCP database is its port and the addresses its host stands for, resolved once when
//! the trace starts ([`DbAddrs`]): another service on the same port number at another
//! address is not the database.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};

use crate::procfs;
use crate::profile::ContextInfo;

/// The database endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbEndpoint {
    Tcp {
        host: String,
        port: u16,
    },
    /// A Unix socket path (Postgres: DIR/.s.PGSQL.PORT).
    Unix(PathBuf),
}

impl DbEndpoint {
    /// The host of a TCP endpoint given as a port alone: any address.
    pub const ANY_HOST: &'static str = "*";

    /// `HOST:PORT`, `[V6]:PORT`, an absolute Unix socket path, or a bare `PORT` (also
    /// `:PORT`, `*:PORT`): that port at any address.
    pub fn parse(s: &str) -> Result<DbEndpoint> {
        if s.starts_with('/') {
            return Ok(DbEndpoint::Unix(PathBuf::from(s)));
        }
        let (host, port) = s.rsplit_once(':').unwrap_or(("", s));
        let port: u16 = port.parse().with_context(|| {
            format!(
                "database endpoint {s:?} is not HOST:PORT, [V6]:PORT, PORT or an absolute \
                 Unix socket path"
            )
        })?;
        let host = host.trim_matches(['[', ']']);
        Ok(DbEndpoint::Tcp {
            host: if host.is_empty() {
                Self::ANY_HOST
            } else {
                host
            }
            .to_string(),
            port,
        })
    }

    /// The endpoint a libpq-style `postgres://` URL names (host=/dir in the query, or a
    /// host that is a directory, means a Unix socket).
    pub fn from_url(url: &str) -> Option<DbEndpoint> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))?;
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let authority = authority.split('/').next().unwrap_or("");
        let hostport = authority.rsplit('@').next().unwrap_or("");
        let (mut host, mut port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
                (h.trim_matches(['[', ']']).to_string(), p.parse().ok())
            }
            _ => (hostport.to_string(), None),
        };
        for kv in query.unwrap_or("").split('&') {
            match kv.split_once('=') {
                Some(("host", h)) => host = h.replace("%2F", "/").replace("%2f", "/"),
                Some(("port", p)) => port = p.parse().ok(),
                _ => {}
            }
        }
        let port = port.unwrap_or(5432);
        if host.starts_with('/') {
            return Some(DbEndpoint::Unix(
                PathBuf::from(host).join(format!(".s.PGSQL.{port}")),
            ));
        }
        if host.is_empty() {
            host = "localhost".into();
        }
        Some(DbEndpoint::Tcp { host, port })
    }

    pub fn describe(&self) -> String {
        match self {
            DbEndpoint::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            DbEndpoint::Tcp { host, port } => format!("{host}:{port}"),
            DbEndpoint::Unix(p) => p.display().to_string(),
        }
    }

    /// The addresses a TCP endpoint's host stands for, resolved now: an IP literal as is,
    /// `localhost` as 127.0.0.1 and ::1 (and whatever else the resolver says), any other
    /// name through the system resolver. Any address when the host is [`Self::ANY_HOST`]
    /// or unspecified (0.0.0.0, ::), when it does not resolve, or when it resolves to more
    /// than [`DB_ADDRS_MAX`] addresses of a family. None for a Unix socket.
    pub fn resolve_addrs(&self) -> Option<DbAddrs> {
        let DbEndpoint::Tcp { host, port } = self else {
            return None;
        };
        let any = |why: String| {
            Some(DbAddrs::Any {
                why: format!(
                    "{why}: the database is recognised by its port alone (any TCP connection \
                     to port {port} counts as the database's)"
                ),
            })
        };
        if host == Self::ANY_HOST || host.is_empty() {
            return any("the database was given as a port only".into());
        }
        let mut addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => match (host.as_str(), *port).to_socket_addrs() {
                Ok(found) => found.map(|a| a.ip()).collect(),
                Err(e) => return any(format!("the database host {host:?} did not resolve ({e})")),
            },
        };
        if host.eq_ignore_ascii_case("localhost") {
            addrs.extend([
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]);
        }
        for a in &mut addrs {
            *a = a.to_canonical();
        }
        addrs.sort();
        addrs.dedup();
        if addrs.iter().any(IpAddr::is_unspecified) {
            return any(format!(
                "the database host {host:?} is the unspecified address"
            ));
        }
        if addrs.is_empty() {
            return any(format!("the database host {host:?} resolved to no address"));
        }
        let v4 = addrs.iter().filter(|a| a.is_ipv4()).count();
        if v4.max(addrs.len() - v4) > DB_ADDRS_MAX {
            return any(format!(
                "the database host {host:?} resolved to more than {DB_ADDRS_MAX} addresses of \
                 a family"
            ));
        }
        Some(DbAddrs::Only(addrs))
    }
}

/// At most this many database addresses per family (IPv4, IPv6): the eBPF program holds
/// them in fixed arrays that it scans in place.
pub const DB_ADDRS_MAX: usize = 8;

/// The addresses at which the database's TCP port is the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbAddrs {
    /// These, resolved once at start; IPv4-mapped IPv6 addresses appear as their IPv4.
    Only(Vec<IpAddr>),
    /// Any address: the port alone decides. `why` is said in the profile's notes.
    Any { why: String },
}

impl DbAddrs {
    /// Whether `ip` is one of them (an IPv4-mapped IPv6 address counts as its IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match self {
            DbAddrs::Only(v) => v.contains(&ip.to_canonical()),
            DbAddrs::Any { .. } => true,
        }
    }
}

/// What the user said (all optional: empty means "discover").
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub db: Option<DbEndpoint>,
    pub listen_ports: Vec<u16>,
    pub log_files: Vec<PathBuf>,
}

/// A log file and its identity as the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    pub path: PathBuf,
    /// (kernel dev_t, inode), None while the file does not exist.
    pub id: Option<(u32, u64)>,
}

/// The resolved context.
#[derive(Debug, Clone)]
pub struct Context {
    pub db: DbEndpoint,
    /// Where a TCP database's port is the database (None: a Unix socket).
    pub db_addrs: Option<DbAddrs>,
    pub listen_ports: Vec<u16>,
    pub log_files: Vec<LogFile>,
    listen_fixed: bool,
    logs_fixed: bool,
    /// Other processes whose listening ports and log files count too (companions).
    others: Vec<i32>,
}

impl Context {
    /// Resolves the context of `pid`: overrides first, then the target's DATABASE_URL,
    /// LISTEN sockets and writable files, then the lab's own database.
    pub fn resolve(pid: i32, o: &Overrides) -> Context {
        let db = o.db.clone().unwrap_or_else(|| {
            cmdline_database_url(pid)
                .or_else(|| procfs::environ_var(pid, "DATABASE_URL"))
                .and_then(|u| DbEndpoint::from_url(&u))
                .unwrap_or_else(|| DbEndpoint::Tcp {
                    host: "127.0.0.1".into(),
                    port: db::ClusterConfig::standard().as_running().port,
                })
        });
        let mut c = Context {
            db_addrs: db.resolve_addrs(),
            db,
            listen_ports: o.listen_ports.clone(),
            log_files: o
                .log_files
                .iter()
                .map(|p| LogFile {
                    path: p.clone(),
                    id: None,
                })
                .collect(),
            listen_fixed: !o.listen_ports.is_empty(),
            logs_fixed: !o.log_files.is_empty(),
            others: Vec::new(),
        };
        c.refresh(pid);
        c
    }

    /// Adds the listening ports and log files of `pids` (traced beside the target: the
    /// database's postmaster, say) to what is discovered, now and at every refresh. Their
    /// listening ports are discovered even when the target's are given (`--listen-port`
    /// names the target's).
    pub fn include(&mut self, pids: &[i32]) {
        self.others.extend_from_slice(pids);
        for &p in pids {
            self.refresh_listen(p, true);
        }
        if let Some(&first) = pids.first() {
            self.refresh_log_files(first);
        }
    }

    /// Re-reads what is discovered (a spawned server opens its log and listens after the
    /// trace starts). Returns true when something changed.
    pub fn refresh(&mut self, pid: i32) -> bool {
        let mut changed = self.refresh_listen(pid, false);
        for p in self.others.clone() {
            changed |= self.refresh_listen(p, true);
        }
        changed |= self.refresh_log_files(pid);
        changed
    }

    fn refresh_listen(&mut self, pid: i32, companion: bool) -> bool {
        let mut changed = false;
        if companion || !self.listen_fixed {
            for p in procfs::listening_ports(pid) {
                if !self.listen_ports.contains(&p) {
                    self.listen_ports.push(p);
                    changed = true;
                }
            }
        }
        changed
    }

    /// `refresh` without the listening ports, which cost a parse of the whole
    /// /proc/PID/net/tcp{,6} (every socket of the namespace, TIME_WAIT ones included: on a
    /// load-test machine megabytes, ~1% of a CPU if read every second). The eBPF backend sees
    /// listen() itself, so it needs them rarely.
    pub fn refresh_log_files(&mut self, pid: i32) -> bool {
        let mut changed = false;
        if !self.logs_fixed {
            let pids = std::iter::once(pid).chain(self.others.iter().copied());
            for p in pids.flat_map(procfs::files_open_for_writing) {
                if !self.log_files.iter().any(|l| l.path == p) {
                    self.log_files.push(LogFile { path: p, id: None });
                }
            }
        }
        changed |= self.refresh_log_ids();
        changed
    }

    /// Re-reads the identity of the log files only (cheap: one stat each).
    pub fn refresh_log_ids(&mut self) -> bool {
        let mut changed = false;
        for l in &mut self.log_files {
            let id = procfs::kernel_dev_ino(&l.path);
            if id != l.id {
                l.id = id;
                changed = true;
            }
        }
        changed
    }

    /// A port seen being listened on (the `listen` call itself).
    pub fn add_listen_port(&mut self, port: u16) {
        if port != 0 && !self.listen_ports.contains(&port) {
            self.listen_ports.push(port);
        }
    }

    pub fn db_port(&self) -> Option<u16> {
        match &self.db {
            DbEndpoint::Tcp { port, .. } => Some(*port),
            DbEndpoint::Unix(_) => None,
        }
    }

    /// Whether a TCP connection to `peer` is the database's: its port, at one of its
    /// addresses (or at any, see [`DbAddrs::Any`]).
    pub fn is_db_peer(&self, peer: SocketAddr) -> bool {
        Some(peer.port()) == self.db_port()
            && self
                .db_addrs
                .as_ref()
                .is_some_and(|a| a.contains(peer.ip()))
    }

    /// What the profile's notes say about the context: a database recognised by its port
    /// alone, and why.
    pub fn notes(&self) -> Vec<String> {
        match &self.db_addrs {
            Some(DbAddrs::Any { why }) => vec![why.clone()],
            _ => Vec::new(),
        }
    }

    pub fn info(&self) -> ContextInfo {
        ContextInfo {
            database: Some(self.db.describe()),
            database_addresses: match &self.db_addrs {
                Some(DbAddrs::Only(v)) => v.iter().map(IpAddr::to_string).collect(),
                _ => Vec::new(),
            },
            listen_ports: self.listen_ports.clone(),
            log_files: self
                .log_files
                .iter()
                .map(|l| l.path.display().to_string())
                .chain(["fd 1".to_string(), "fd 2".to_string()])
                .collect(),
        }
    }
}

/// `--database-url URL` (or `=URL`) on the target's command line: the lab's servers take
/// their database that way as well as from DATABASE_URL, and the flag wins.
fn cmdline_database_url(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    args.iter().enumerate().find_map(|(i, a)| {
        if a == "--database-url" {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix("--database-url=").map(str::to_string)
        }
    })
}

/// Checks that `pid` exists and may be traced by us; the message is for the user.
pub fn check_pid(pid: i32) -> Result<()> {
    if pid <= 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        bail!("no process with pid {pid}");
    }
    if std::fs::read_link(format!("/proc/{pid}/exe")).is_err()
        && std::fs::read_dir(format!("/proc/{pid}/fd")).is_err()
    {
        bail!(
            "not allowed to trace pid {pid} (its /proc entries are not readable: run as its \
             owner or as root)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            DbEndpoint::from_url("postgres://u:p@127.0.0.1:54320/hello_world"),
            Some(DbEndpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 54320
            })
        );
        assert_eq!(
            DbEndpoint::from_url("postgres://u@/db?host=/run/pg&port=5433"),
            Some(DbEndpoint::Unix("/run/pg/.s.PGSQL.5433".into()))
        );
        assert_eq!(
            DbEndpoint::parse("db:5432").unwrap(),
            DbEndpoint::Tcp {
                host: "db".into(),
                port: 5432
            }
        );
    }

    #[test]
    fn endpoints_as_typed() {
        let tcp = |h: &str, port| DbEndpoint::Tcp {
            host: h.into(),
            port,
        };
        assert_eq!(DbEndpoint::parse("[::1]:5432").unwrap(), tcp("::1", 5432));
        assert_eq!(
            DbEndpoint::parse("[::1]:5432").unwrap().describe(),
            "[::1]:5432"
        );
        for any in ["5432", ":5432", "*:5432"] {
            assert_eq!(DbEndpoint::parse(any).unwrap(), tcp("*", 5432), "{any}");
        }
        assert_eq!(DbEndpoint::parse("5432").unwrap().describe(), "*:5432");
        for bad in ["db", "db:", "db:x", "70000", ""] {
            let e = DbEndpoint::parse(bad).unwrap_err().to_string();
            assert!(e.contains("HOST:PORT") && e.contains("PORT"), "{bad}: {e}");
        }
    }

    fn addrs(s: &str) -> DbAddrs {
        DbEndpoint::parse(s).unwrap().resolve_addrs().unwrap()
    }

    fn ips(v: &[&str]) -> DbAddrs {
        DbAddrs::Only(v.iter().map(|a| a.parse().unwrap()).collect())
    }

    #[test]
    fn hosts_resolve_to_the_addresses_compared() {
        assert_eq!(addrs("127.0.0.1:5432"), ips(&["127.0.0.1"]));
        assert_eq!(addrs("198.18.2.2:5432"), ips(&["198.18.2.2"]));
        assert_eq!(addrs("[2001:db8::7]:5432"), ips(&["2001:db8::7"]));
        // An IPv4-mapped literal is its IPv4.
        assert_eq!(addrs("[::ffff:10.0.0.1]:5432"), ips(&["10.0.0.1"]));
        // localhost: both loopbacks, whatever /etc/hosts lists.
        assert_eq!(addrs("localhost:5432"), ips(&["127.0.0.1", "::1"]));
        assert_eq!(
            DbEndpoint::Unix("/run/pg/.s.PGSQL.5432".into()).resolve_addrs(),
            None
        );
        for any in ["5432", "0.0.0.0:5432", "[::]:5432"] {
            match addrs(any) {
                DbAddrs::Any { why } => assert!(
                    why.contains("by its port alone") && why.contains("port 5432"),
                    "{any}: {why}"
                ),
                other => panic!("{any}: {other:?}"),
            }
        }
    }

    #[test]
    fn only_the_addresses_resolved_are_the_database() {
        let a = ips(&["127.0.0.1", "::1"]);
        for yes in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(a.contains(yes.parse().unwrap()), "{yes}");
        }
        for no in ["127.0.0.2", "::2", "::ffff:127.0.0.2", "0.0.0.0"] {
            assert!(!a.contains(no.parse().unwrap()), "{no}");
        }
        let any = DbAddrs::Any { why: String::new() };
        assert!(any.contains("10.1.2.3".parse().unwrap()));
    }
}
