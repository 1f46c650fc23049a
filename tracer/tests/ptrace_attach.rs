//! The ptrace backend attached to and detached from a loaded server again and again: the
//! server must keep answering every time (no request of the load generator times out,
//! and a fresh request completes after each detach). Guards issue 5's attach stall. And
//! attach must succeed on a target whose threads keep exiting.
//! Needs root (ptrace of another process), `cargo build --workspace --bins` (the
//! `server` and `loadgen` binaries next to this test's target dir) and the PostgreSQL
//! binaries for the db crate's test cluster.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tracer::{start, Backend, Options, Overrides, Target};

/// Attach/detach cycles per server.
const CYCLES: usize = 10;

/// The ptrace backend attached to every thread of `pid`.
fn attach_ptrace(pid: i32) -> anyhow::Result<tracer::Session> {
    start(
        Target::Pid(pid),
        Options {
            backend: Backend::Ptrace,
            overrides: Overrides::default(),
            variant: None,
            children: true,
            companions: Vec::new(),
        },
    )
}

fn attach_detach_under_load(variant: &str, load_args: &[&str]) {
    require_root();
    let url = db::Database::ready_for_tests().unwrap_or_else(|e| panic!("{e:#}"));
    let port = free_port();
    let log = std::env::temp_dir().join(format!("tracer-attach-test-{port}.log"));
    let server = Reap(
        Command::new(server_bin())
            .args(["--variant", variant, "--log", "buffered"])
            .arg("--log-file")
            .arg(&log)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the server"),
    );
    wait_http_ok(port, "/health", Duration::from_secs(60));
    let pid = server.0.id() as i32;

    // Load for longer than the cycles take; a request without an answer after 5 s counts
    // as a timeout (a stalled server), a slow answer under the tracer does not.
    let loadgen = target_dir().join("loadgen");
    assert!(
        loadgen.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        loadgen.display()
    );
    let json = std::env::temp_dir().join(format!("tracer-attach-test-{port}.json"));
    let load = Reap(
        Command::new(&loadgen)
            .args(["-t", "1", "-d", "40s", "--timeout", "5s"])
            .args(load_args)
            .arg("--json")
            .arg(&json)
            .arg(format!("http://127.0.0.1:{port}/db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting loadgen"),
    );
    std::thread::sleep(Duration::from_millis(500));

    for cycle in 1..=CYCLES {
        let session = attach_ptrace(pid).unwrap_or_else(|e| panic!("attach {cycle}: {e:#}"));
        std::thread::sleep(Duration::from_millis(700));
        let p = session
            .stop()
            .unwrap_or_else(|e| panic!("detach {cycle}: {e:#}"));
        let calls = p.totals.syscalls.count;
        assert!(
            calls > 0,
            "cycle {cycle}: the traced window saw no syscalls"
        );
        assert!(tracer::procfs::alive(pid), "cycle {cycle}: the server died");
        // Untraced again: a new connection gets its answer.
        wait_http_ok(port, "/db", Duration::from_secs(5));
        println!("{variant}: cycle {cycle} traced {calls} calls, answers after detach");
    }

    let mut load = load;
    let status = load.0.wait().expect("waiting for loadgen");
    assert!(status.success(), "loadgen failed: {status}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("loadgen's JSON")).unwrap();
    let _ = std::fs::remove_file(&json);
    let _ = std::fs::remove_file(&log);
    drop(server);
    let requests = report["requests"].as_u64().unwrap_or(0);
    let timeouts = report["errors"]["timeout"].as_u64().unwrap_or(u64::MAX);
    let errors = report["errors_total"].as_u64().unwrap_or(u64::MAX);
    println!("{variant}: {requests} requests, {timeouts} timeouts, {errors} errors");
    assert!(requests > 0, "loadgen completed no request");
    assert_eq!(
        timeouts, 0,
        "requests timed out: the server stalled under ptrace"
    );
    assert_eq!(errors, 0, "loadgen errors: {}", report["errors"]);
}

/// Attaching must not mistake a thread that is exiting for a refusal. A thread past
/// exit_notify() is still listed in /proc/PID/task, and PTRACE_SEIZE answers it with EPERM,
/// the same errno as a real refusal; the tracer used to give up the whole attach with "not
/// allowed to trace" (about 1 attach in 60 on a target that ends threads all the time).
#[test]
fn attach_is_not_refused_by_threads_that_are_exiting() {
    require_root();
    let churn = Reap(
        Command::new(workload_bin())
            .arg("churn")
            .stdin(Stdio::null())
            .spawn()
            .expect("starting tracer-workload churn"),
    );
    let pid = churn.0.id() as i32;
    std::thread::sleep(Duration::from_millis(100));
    for attempt in 1..=300 {
        let session = attach_ptrace(pid)
            .unwrap_or_else(|e| panic!("attach {attempt} to a thread-churning target: {e:#}"));
        std::thread::sleep(Duration::from_millis(5));
        session
            .stop()
            .unwrap_or_else(|e| panic!("detach {attempt}: {e:#}"));
        assert!(
            tracer::procfs::alive(pid),
            "attempt {attempt}: the target died"
        );
    }
}

#[test]
fn epoll_keeps_answering_across_ptrace_attach_cycles() {
    attach_detach_under_load("epoll", &["-c", "8"]);
}

#[test]
fn thread_per_request_keeps_answering_across_ptrace_attach_cycles() {
    // A connection per request, so a thread per request: threads appear while the tracer
    // seizes and while it detaches. Paced so that 40 s of it stay well within the
    // ephemeral ports.
    attach_detach_under_load(
        "thread-per-request",
        &["-c", "4", "--no-keepalive", "--rate", "400"],
    );
}
