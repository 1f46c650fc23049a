//! The result of a trace: [`Profile`], the versioned, serde-serializable type that `lab run`
//! embeds in run.json and `lab trace --json` writes (schema in docs/tracer.md).
//!
//! Backends hand over raw [`Record`]s (one per process x thread role x kind x call x
//! category); this module folds them into per-call, per-category, per-thread-role and
//! per-process-role rows and normalises them per request.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::category::Category;

/// Name of the JSON schema, and its version (bumped on any incompatible change).
pub const SCHEMA: &str = "syscall-lab/tracer-profile";
pub const SCHEMA_VERSION: u32 = 1;
/// Latency histogram buckets: bucket i counts calls of [2^i, 2^(i+1)) ns; the last is open.
pub const HIST_BUCKETS: usize = 32;

/// Whether a row is a syscall or an io_uring ring operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Syscall,
    RingOp,
}

/// Counters of one row. Times in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: u64,
    /// Negative returns other than EAGAIN.
    pub errors: u64,
    /// -EAGAIN returns (the price of readiness I/O), apart from `errors`.
    pub eagain: u64,
    /// Time inside the call, entry to exit (ring ops: submission to completion).
    pub time_ns: u64,
    /// Bytes moved by reads and writes.
    pub bytes: u64,
    /// Off-CPU time while inside the call, sleeping (blocked).
    pub blocked_ns: u64,
    /// Off-CPU time while inside the call, runnable but not running (run-queue delay).
    pub runq_ns: u64,
    /// The part of `blocked_ns` a thread spent while it served no request: a pool worker
    /// waiting for work, a log writer between flushes, an event loop with nothing in
    /// flight (docs/tracer.md, "Request path and idle waits"). `blocked_ns -
    /// idle_blocked_ns` is the request path's.
    #[serde(default)]
    pub idle_blocked_ns: u64,
    /// log2 latency histogram, trailing empty buckets dropped.
    #[serde(default)]
    pub hist_log2_ns: Vec<u64>,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.count += o.count;
        self.errors += o.errors;
        self.eagain += o.eagain;
        self.time_ns += o.time_ns;
        self.bytes += o.bytes;
        self.blocked_ns += o.blocked_ns;
        self.runq_ns += o.runq_ns;
        self.idle_blocked_ns += o.idle_blocked_ns;
        if self.hist_log2_ns.len() < o.hist_log2_ns.len() {
            self.hist_log2_ns.resize(o.hist_log2_ns.len(), 0);
        }
        for (a, b) in self.hist_log2_ns.iter_mut().zip(&o.hist_log2_ns) {
            *a += b;
        }
    }

    /// Records one call (used by the ptrace backend).
    pub fn record(&mut self, ret: i64, dur_ns: u64, bytes: bool) {
        self.count += 1;
        if ret == -(libc::EAGAIN as i64) {
            self.eagain += 1;
        } else if ret < 0 {
            self.errors += 1;
        } else if bytes {
            self.bytes += ret as u64;
        }
        self.time_ns += dur_ns;
        let b = (63 - dur_ns.max(1).leading_zeros() as usize).min(HIST_BUCKETS - 1);
        if self.hist_log2_ns.len() <= b {
            self.hist_log2_ns.resize(b + 1, 0);
        }
        self.hist_log2_ns[b] += 1;
    }

    pub fn trim(&mut self) {
        while self.hist_log2_ns.last() == Some(&0) {
            self.hist_log2_ns.pop();
        }
    }

    fn per(&self, n: f64) -> PerUnit {
        PerUnit {
            count: self.count as f64 / n,
            bytes: self.bytes as f64 / n,
            time_ns: self.time_ns as f64 / n,
            blocked_ns: self.blocked_ns as f64 / n,
            idle_blocked_ns: self.idle_blocked_ns as f64 / n,
        }
    }

    /// Blocked time on the request path: `blocked_ns` without the idle waits.
    pub fn request_blocked_ns(&self) -> u64 {
        self.blocked_ns.saturating_sub(self.idle_blocked_ns)
    }
}

/// A row divided by the number of requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerUnit {
    pub count: f64,
    pub bytes: f64,
    pub time_ns: f64,
    pub blocked_ns: f64,
    #[serde(default)]
    pub idle_blocked_ns: f64,
}

/// What a backend hands over: one thread role's counters for one call in one category.
#[derive(Debug, Clone)]
pub struct Record {
    /// The process (tgid).
    pub pid: i32,
    /// Its role ([`crate::procrole::role`]): `postmaster`, `client backend`, the thread
    /// name of a process without a title...
    pub process: String,
    /// Thread role (thread name with numbers stripped), see [`role_of`].
    pub role: String,
    pub kind: Kind,
    pub name: String,
    pub category: Category,
    pub stats: Stats,
}

/// One syscall or ring operation in one category, summed over threads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRow {
    pub kind: Kind,
    pub name: String,
    pub category: Category,
    #[serde(flatten)]
    pub stats: Stats,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub per_request: Option<PerUnit>,
}

/// One category, syscalls and ring operations apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryRow {
    pub category: Category,
    pub syscalls: Stats,
    pub ring_ops: Stats,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub syscalls_per_request: Option<PerUnit>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ring_ops_per_request: Option<PerUnit>,
}

/// One thread role in one category (syscalls and ring operations together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleRow {
    pub role: String,
    pub category: Category,
    pub count: u64,
    pub time_ns: u64,
    pub blocked_ns: u64,
    pub runq_ns: u64,
    /// The part of `blocked_ns` spent while serving no request.
    #[serde(default)]
    pub idle_blocked_ns: u64,
}

/// One process role in one category (syscalls and ring operations together), summed over
/// the processes of that role (PostgreSQL's client backends, nginx's workers...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessRow {
    /// [`crate::procrole::role`]: `postmaster`, `client backend`, `walwriter`...
    pub process: String,
    pub category: Category,
    /// How many processes of this role made calls in this category.
    pub pids: u64,
    pub count: u64,
    pub bytes: u64,
    pub time_ns: u64,
    pub blocked_ns: u64,
    #[serde(default)]
    pub idle_blocked_ns: u64,
    pub runq_ns: u64,
    /// Calls by name (ring operations as `ring:NAME`).
    pub calls: BTreeMap<String, u64>,
}

/// Where the classification came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContextInfo {
    /// `host:port` or a Unix socket path.
    pub database: Option<String>,
    /// The addresses at which the database's TCP port counts as the database, resolved
    /// from its host at start. Empty: a Unix socket, or any address (the notes say why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub database_addresses: Vec<String>,
    pub listen_ports: Vec<u16>,
    pub log_files: Vec<String>,
}

/// The target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub pid: i32,
    pub command: String,
    /// Whether the tracer started it.
    pub spawned: bool,
    /// Whether it exited before the trace ended.
    pub exited: bool,
    /// Whether its child processes were traced too (the default; `--no-children` off).
    #[serde(default)]
    pub children: bool,
}

/// The whole result of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub schema: String,
    pub schema_version: u32,
    /// `ebpf` or `ptrace`.
    pub backend: String,
    /// True when the classification is an approximation (ptrace: from /proc, after the fact).
    pub approximate: bool,
    /// False when ring operations could not be seen (ptrace).
    pub ring_ops_visible: bool,
    /// False when off-CPU time was not measured (ptrace).
    pub offcpu_measured: bool,
    pub target: TargetInfo,
    pub context: ContextInfo,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub variant: Option<String>,
    pub duration_s: f64,
    /// Requests completed in the same window (from the load generator), when known.
    pub requests: Option<u64>,
    pub totals: CategoryRow,
    pub categories: Vec<CategoryRow>,
    pub calls: Vec<CallRow>,
    /// Thread roles (thread names).
    pub roles: Vec<RoleRow>,
    /// Process roles: the target and, unless `--no-children`, the processes it forked.
    #[serde(default)]
    pub processes: Vec<ProcessRow>,
    /// Off-CPU time outside any syscall: preemption in user space, page faults.
    pub outside_calls: Stats,
    /// Events the in-kernel maps could not hold (0 when nothing was lost).
    pub dropped_events: u64,
    pub notes: Vec<String>,
}

/// Metadata a backend fills in besides the records.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub backend: String,
    pub approximate: bool,
    pub ring_ops_visible: bool,
    pub offcpu_measured: bool,
    pub target: TargetInfo,
    pub context: ContextInfo,
    pub duration_s: f64,
    pub dropped_events: u64,
    pub notes: Vec<String>,
}

impl Profile {
    /// Folds raw records into a profile (no request count yet: see [`Profile::per_request`]).
    pub fn build(meta: Meta, records: &[Record], outside: Stats) -> Profile {
        let mut calls: BTreeMap<(Kind, String, Category), Stats> = BTreeMap::new();
        let mut roles: BTreeMap<(String, Category), RoleRow> = BTreeMap::new();
        let mut processes: BTreeMap<(String, Category), (ProcessRow, BTreeSet<i32>)> =
            BTreeMap::new();
        for r in records {
            let (prow, pids) = processes
                .entry((r.process.clone(), r.category))
                .or_insert_with(|| {
                    (
                        ProcessRow {
                            process: r.process.clone(),
                            category: r.category,
                            pids: 0,
                            count: 0,
                            bytes: 0,
                            time_ns: 0,
                            blocked_ns: 0,
                            idle_blocked_ns: 0,
                            runq_ns: 0,
                            calls: BTreeMap::new(),
                        },
                        BTreeSet::new(),
                    )
                });
            if r.stats.count > 0 {
                pids.insert(r.pid);
                let name = match r.kind {
                    Kind::Syscall => r.name.clone(),
                    Kind::RingOp => format!("ring:{}", r.name),
                };
                *prow.calls.entry(name).or_default() += r.stats.count;
            }
            prow.count += r.stats.count;
            prow.bytes += r.stats.bytes;
            prow.time_ns += r.stats.time_ns;
            prow.blocked_ns += r.stats.blocked_ns;
            prow.idle_blocked_ns += r.stats.idle_blocked_ns;
            prow.runq_ns += r.stats.runq_ns;
            calls
                .entry((r.kind, r.name.clone(), r.category))
                .or_default()
                .add(&r.stats);
            let row = roles
                .entry((r.role.clone(), r.category))
                .or_insert_with(|| RoleRow {
                    role: r.role.clone(),
                    category: r.category,
                    count: 0,
                    time_ns: 0,
                    blocked_ns: 0,
                    runq_ns: 0,
                    idle_blocked_ns: 0,
                });
            row.count += r.stats.count;
            row.time_ns += r.stats.time_ns;
            row.blocked_ns += r.stats.blocked_ns;
            row.runq_ns += r.stats.runq_ns;
            row.idle_blocked_ns += r.stats.idle_blocked_ns;
        }
        let mut cats: BTreeMap<Category, CategoryRow> = Category::ALL
            .iter()
            .map(|&c| (c, CategoryRow::empty(c)))
            .collect();
        let mut totals = CategoryRow::empty(Category::Other);
        let mut rows = Vec::new();
        for ((kind, name, category), mut stats) in calls {
            stats.trim();
            let c = cats.get_mut(&category).expect("all categories present");
            match kind {
                Kind::Syscall => {
                    c.syscalls.add(&stats);
                    totals.syscalls.add(&stats);
                }
                Kind::RingOp => {
                    c.ring_ops.add(&stats);
                    totals.ring_ops.add(&stats);
                }
            }
            rows.push(CallRow {
                kind,
                name,
                category,
                stats,
                per_request: None,
            });
        }
        rows.sort_by(|a, b| {
            (
                a.category,
                a.kind,
                std::cmp::Reverse(a.stats.count),
                &a.name,
            )
                .cmp(&(
                    b.category,
                    b.kind,
                    std::cmp::Reverse(b.stats.count),
                    &b.name,
                ))
        });
        let mut outside = outside;
        outside.trim();
        Profile {
            schema: SCHEMA.to_string(),
            schema_version: SCHEMA_VERSION,
            backend: meta.backend,
            approximate: meta.approximate,
            ring_ops_visible: meta.ring_ops_visible,
            offcpu_measured: meta.offcpu_measured,
            target: meta.target,
            context: meta.context,
            variant: None,
            duration_s: meta.duration_s,
            requests: None,
            totals,
            categories: cats.into_values().collect(),
            calls: rows,
            roles: roles.into_values().collect(),
            processes: processes
                .into_values()
                .map(|(mut row, pids)| {
                    row.pids = pids.len() as u64;
                    row
                })
                .collect(),
            outside_calls: outside,
            dropped_events: meta.dropped_events,
            notes: meta.notes,
        }
    }

    /// Sets the number of requests served in the traced window and fills every
    /// `per_request` field.
    pub fn per_request(&mut self, requests: u64) {
        self.requests = Some(requests);
        if requests == 0 {
            return;
        }
        let n = requests as f64;
        for c in &mut self.calls {
            c.per_request = Some(c.stats.per(n));
        }
        for c in self
            .categories
            .iter_mut()
            .chain(std::iter::once(&mut self.totals))
        {
            c.syscalls_per_request = Some(c.syscalls.per(n));
            c.ring_ops_per_request = Some(c.ring_ops.per(n));
        }
    }

    /// The row of a call in a category, if any.
    pub fn call(&self, kind: Kind, name: &str, category: Category) -> Option<&CallRow> {
        self.calls
            .iter()
            .find(|c| c.kind == kind && c.name == name && c.category == category)
    }

    /// A syscall's counters summed over categories.
    pub fn syscall_total(&self, name: &str) -> Stats {
        let mut s = Stats::default();
        for c in self
            .calls
            .iter()
            .filter(|c| c.kind == Kind::Syscall && c.name == name)
        {
            s.add(&c.stats);
        }
        s
    }

    pub fn category(&self, category: Category) -> &CategoryRow {
        self.categories
            .iter()
            .find(|c| c.category == category)
            .expect("every category has a row")
    }
}

impl CategoryRow {
    fn empty(category: Category) -> CategoryRow {
        CategoryRow {
            category,
            syscalls: Stats::default(),
            ring_ops: Stats::default(),
            syscalls_per_request: None,
            ring_ops_per_request: None,
        }
    }
}

/// Thread role from a thread name: digits and the separators before them dropped
/// (`worker-3` -> `worker`, `tokio-runtime-w` stays), empty -> `main`.
pub fn role_of(comm: &str) -> String {
    let t = comm.trim_end_matches(|c: char| c.is_ascii_digit());
    let t = if t.len() < comm.len() {
        t.trim_end_matches(['-', '_', ' ', '#', '/', ':', '.'])
    } else {
        t
    };
    if t.is_empty() {
        "main".to_string()
    } else {
        t.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        assert_eq!(role_of("worker-12"), "worker");
        assert_eq!(role_of("tokio-runtime-w"), "tokio-runtime-w");
        assert_eq!(role_of("42"), "main");
    }

    #[test]
    fn build_and_normalise() {
        let mut s = Stats::default();
        s.record(100, 1000, true);
        s.record(-11, 10, true);
        let recs = vec![Record {
            pid: 7,
            process: "server".into(),
            role: "w".into(),
            kind: Kind::Syscall,
            name: "read".into(),
            category: Category::Network,
            stats: s,
        }];
        let mut p = Profile::build(Meta::default(), &recs, Stats::default());
        p.per_request(2);
        let r = p.call(Kind::Syscall, "read", Category::Network).unwrap();
        assert_eq!(r.stats.count, 2);
        assert_eq!(r.stats.eagain, 1);
        assert_eq!(r.stats.bytes, 100);
        assert_eq!(r.per_request.as_ref().unwrap().count, 1.0);
        assert_eq!(p.processes.len(), 1);
        assert_eq!(p.processes[0].pids, 1);
        assert_eq!(p.processes[0].calls.get("read"), Some(&2));
        let json = serde_json::to_string(&p).unwrap();
        let back: Profile = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
    }
}
