//! A process's role in a multi-process server, for the per-process breakdown of a traced
//! tree: PostgreSQL's `postmaster`, `client backend`, `walwriter`, `checkpointer`..., nginx's
//! `master process` and `worker process`; otherwise the process's name.
//!
//! Servers built from forked processes retitle them (argv rewritten, read back from
//! /proc/PID/cmdline as `postgres: walwriter` or `nginx: worker process`) while the thread
//! name (`comm`) stays the program's: the title is where the role is.

/// PostgreSQL's auxiliary and background processes, as their titles start (`postgres:
/// NAME ...`); any other titled child of a postmaster is a client backend (`postgres: USER
/// DATABASE HOST(PORT) STATE`).
const PG_ROLES: &[&str] = &[
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "autovacuum worker",
    "logical replication launcher",
    "logical replication apply worker",
    "logical replication parallel apply worker",
    "logical replication tablesync worker",
    "logical replication worker",
    "parallel worker",
    "stats collector",
    "archiver",
    "startup",
    "walreceiver",
    "walsender",
    "walsummarizer",
    "io worker",
    "slotsync worker",
    "syslogger",
    "background worker",
];

/// The role of a process from its title (`cmdline`, NUL-separated args joined by spaces)
/// and thread name (`comm`). `is_root`: the process the trace was started on.
pub fn role(cmdline: &str, comm: &str, is_root: bool) -> String {
    let title = cmdline.trim();
    if let Some(rest) = title.strip_prefix("postgres: ") {
        // With cluster_name set, the title is `postgres: NAME: ROLE`.
        let rest = rest.trim();
        let candidates = [rest, rest.split_once(": ").map_or("", |(_, r)| r.trim())];
        for c in candidates {
            if let Some(r) = PG_ROLES.iter().find(|r| c.starts_with(*r)) {
                return r.to_string();
            }
        }
        return "client backend".into();
    }
    if is_root && (comm == "postgres" || program(title) == "postgres") {
        return "postmaster".into();
    }
    // `NAME: ROLE ...`, as nginx, gunicorn, php-fpm and others title their processes.
    let name = if comm.is_empty() {
        program(title)
    } else {
        comm
    };
    if let Some(rest) = title
        .strip_prefix(name)
        .or_else(|| title.strip_prefix(program(title)))
        .and_then(|r| r.strip_prefix(": "))
    {
        let words: Vec<&str> = rest
            .split_whitespace()
            .take_while(|w| {
                !w.starts_with(['/', '-', '[', '(']) && *w != name && *w != program(title)
            })
            .collect();
        if !words.is_empty() {
            return words.join(" ");
        }
    }
    if !comm.is_empty() {
        return comm.to_string();
    }
    let p = program(title);
    if p.is_empty() {
        "?".into()
    } else {
        p.to_string()
    }
}

/// The program's name in a command line: argv[0]'s last path component (`nginx:` titles
/// keep their colon off).
fn program(title: &str) -> &str {
    let argv0 = title.split_whitespace().next().unwrap_or("");
    argv0.rsplit('/').next().unwrap_or("").trim_end_matches(':')
}

/// The role of a live process, read from /proc; None once it is gone.
pub fn of_pid(pid: i32, is_root: bool) -> Option<String> {
    let cmdline = crate::procfs::cmdline(pid);
    let comm = crate::procfs::comm(pid, pid);
    if cmdline.is_empty() && comm.is_empty() {
        return None;
    }
    Some(role(&cmdline, &comm, is_root))
}

#[cfg(test)]
mod tests {
    use super::role;

    #[test]
    fn postgres_processes() {
        let pg = "/usr/lib/postgresql/15/bin/postgres -D /var/tmp/pgdata";
        assert_eq!(role(pg, "postgres", true), "postmaster");
        assert_eq!(
            role("postgres: checkpointer                 ", "postgres", false),
            "checkpointer"
        );
        assert_eq!(
            role("postgres: background writer", "postgres", false),
            "background writer"
        );
        assert_eq!(role("postgres: walwriter", "postgres", false), "walwriter");
        assert_eq!(
            role("postgres: autovacuum worker hello_world", "postgres", false),
            "autovacuum worker"
        );
        assert_eq!(
            role(
                "postgres: benchmarkdbuser hello_world 127.0.0.1(43512) idle",
                "postgres",
                false
            ),
            "client backend"
        );
        assert_eq!(
            role("postgres: main: walwriter", "postgres", false),
            "walwriter"
        );
    }

    #[test]
    fn titled_and_plain_processes() {
        assert_eq!(
            role(
                "nginx: master process /usr/sbin/nginx -c /tmp/n.conf",
                "nginx",
                true
            ),
            "master process"
        );
        assert_eq!(
            role("nginx: worker process", "nginx", false),
            "worker process"
        );
        assert_eq!(
            role("gunicorn: worker [app:app]", "gunicorn", false),
            "worker"
        );
        assert_eq!(
            role("target/debug/server --variant epoll", "server", true),
            "server"
        );
        assert_eq!(role("", "", false), "?");
    }
}
