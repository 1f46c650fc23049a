//! `lab run` end to end: the real binary, the real servers, the lab's own PostgreSQL (or
//! DATABASE_URL), the real kernel tracer. Needs root for eBPF (CI runs as root).

use std::path::Path;
use std::process::Command;

use lab::results::Run;

fn lab() -> std::path::PathBuf {
    servers::launch::sibling_binary("lab").unwrap_or_else(|e| panic!("{e:#}"))
}

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test traces with eBPF and needs root (or CAP_BPF + CAP_PERFMON): run it as root"
    );
}

/// The single run folder `lab run` created under `out`.
fn only_run(out: &Path) -> std::path::PathBuf {
    let runs: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(
        runs.len(),
        1,
        "expected one run folder in {}: {runs:?}",
        out.display()
    );
    runs[0].clone()
}

#[test]
fn db_workload_attributes_network_database_and_logging_for_every_variant() {
    require_root();
    let out = tempdir("run-db");
    let output = Command::new(lab())
        .args([
            "run",
            "--workload",
            "db",
            "--duration",
            "2s",
            "--warmup",
            "1s",
            "--connections",
            "8",
        ])
        .args(["--log", "buffered", "--tracer", "ebpf", "--out"])
        .arg(&out)
        .output()
        .expect("running lab run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "lab run failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let run_dir = only_run(&out);
    let run = Run::load(&run_dir).expect("run.json reads back");
    assert_eq!(run.variants.len(), 4, "all four variants by default");
    for variant in &run.variants {
        assert!(
            variant.ok,
            "{} failed: {:?}\n{:?}",
            variant.variant, variant.failure, variant.log_tail
        );
        let summary = variant.summary.as_ref().expect("a summary");
        assert!(
            summary.requests > 0 && summary.requests_per_s.median > 0.0,
            "{}: no load",
            variant.variant
        );
        let per = |name: &str| {
            summary
                .categories
                .iter()
                .find(|c| c.category == name)
                .map_or(0.0, |c| c.syscalls_per_request + c.ring_ops_per_request)
        };
        for category in ["network", "database", "logging"] {
            assert!(
                per(category) > 0.0,
                "{}: nothing attributed to {category}",
                variant.variant
            );
        }
        // A /db request is one query: at least a send and a receive on the database
        // socket, and the client's read and write.
        assert!(
            per("database") >= 1.5,
            "{}: database {} per request",
            variant.variant,
            per("database")
        );
        assert!(
            per("network") >= 0.9,
            "{}: network {} per request",
            variant.variant,
            per("network")
        );
        assert!(summary.threads > 0 && summary.peak_rss_bytes > 0);
        let round = &variant.rounds[0];
        assert!(round.profile.as_ref().is_some_and(|p| p.backend == "ebpf"));
    }
    // The terminal table names every variant.
    for name in ["thread-per-request", "thread-pool", "epoll", "io-uring"] {
        assert!(stdout.contains(name), "table lacks {name}:\n{stdout}");
    }
    assert!(
        run_dir.join("report.html").is_file(),
        "no report.html in {}",
        run_dir.display()
    );

    // lab report rebuilds the page and prints the same table; lab compare accepts a run
    // against itself and shows no change.
    let report = Command::new(lab())
        .arg("report")
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let compare = Command::new(lab())
        .arg("compare")
        .arg(&run_dir)
        .arg(&run_dir)
        .args(["--json", "-"])
        .output()
        .unwrap();
    assert!(
        compare.status.success(),
        "{}",
        String::from_utf8_lossy(&compare.stderr)
    );
    let comparison: serde_json::Value =
        serde_json::from_slice(&compare.stdout).expect("compare --json prints JSON");
    let variants = comparison["variants"].as_array().expect("variants");
    assert_eq!(variants.len(), 4);
    for v in variants {
        assert_eq!(v["requests_per_s"]["before"], v["requests_per_s"]["after"]);
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_variant_that_fails_is_recorded_and_the_run_goes_on() {
    require_root();
    let out = tempdir("run-fail");
    // --write-mode split is refused by epoll at start (hyper writes once): epoll fails,
    // thread-pool runs.
    let output = Command::new(lab())
        .args([
            "run",
            "--variants",
            "epoll,thread-pool",
            "--workload",
            "plaintext",
            "--duration",
            "1s",
        ])
        .args([
            "--warmup",
            "0s",
            "--connections",
            "4",
            "--tracer",
            "off",
            "--out",
        ])
        .arg(&out)
        .args(["--", "--write-mode", "split"])
        .output()
        .expect("running lab run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a failed variant must make the exit status say so"
    );
    assert!(stderr.contains("epoll"), "the failure is named: {stderr}");
    let run = Run::load(&only_run(&out)).unwrap();
    let epoll = run.variants.iter().find(|v| v.variant == "epoll").unwrap();
    assert!(!epoll.ok);
    assert!(
        epoll.log_tail.as_deref().unwrap_or("").contains("split"),
        "log tail: {:?}",
        epoll.log_tail
    );
    let pool = run
        .variants
        .iter()
        .find(|v| v.variant == "thread-pool")
        .unwrap();
    assert!(pool.ok, "{:?}", pool.failure);
    let _ = std::fs::remove_dir_all(&out);
}

/// Issue 16, point 5: `--trace-db` traces the database's postmaster and backends beside the
/// server, and the run shows what the database did per request: its client backends read
/// each query and answer it on their client sockets (its `network`), and its CPU.
#[test]
fn trace_db_puts_the_databases_side_beside_the_servers() {
    require_root();
    let out = tempdir("run-trace-db");
    let output = Command::new(lab())
        .args(["run", "--variants", "epoll", "--workload", "db"])
        .args(["--duration", "2s", "--warmup", "1s", "--connections", "8"])
        .args(["--tracer", "ebpf", "--trace-db", "--out"])
        .arg(&out)
        .output()
        .expect("running lab run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "lab run --trace-db failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let run_dir = only_run(&out);
    let run = Run::load(&run_dir).expect("run.json reads back");
    assert!(run.config.trace_db);
    let epoll = &run.variants[0];
    let round = &epoll.rounds[0];
    let database = round
        .database
        .as_ref()
        .expect("the database's side of the round");
    let profile = database.profile.as_ref().expect("the database's profile");
    assert_eq!(profile.target.pid, database.postmaster);
    assert_eq!(profile.requests, Some(round.load.requests));
    let summary = epoll.summary.as_ref().unwrap().database.as_ref().unwrap();
    let backend = summary
        .roles
        .iter()
        .find(|r| r.role == "client backend")
        .unwrap_or_else(|| panic!("no client backend role: {:?}", summary.roles));
    let net = summary
        .categories
        .iter()
        .find(|c| c.category == "network")
        .map_or(0.0, |c| c.syscalls_per_request);
    // One query per request: the backend's recvfrom of it (and its EAGAIN retry) and its
    // sendto of the answer, on its client socket.
    assert!(
        (1.5..=5.0).contains(&net),
        "the database's network calls per request: {net}\n{stdout}"
    );
    assert!(backend.syscalls_per_request >= net, "{summary:?}");
    assert!(
        summary.cpu_us_per_request.median > 0.0 && database.processes >= 2,
        "{summary:?} {database:?}"
    );
    // The server's side is as before: its end of the same connections is `database`.
    let server_db = epoll
        .summary
        .as_ref()
        .unwrap()
        .categories
        .iter()
        .find(|c| c.category == "database")
        .map_or(0.0, |c| c.syscalls_per_request);
    assert!(
        server_db >= 1.5,
        "server's database calls per request: {server_db}"
    );
    assert!(
        stdout.contains("the database per request") && stdout.contains("client backend"),
        "{stdout}"
    );
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert!(html.contains("id=\"database\"") && html.contains("client backend"));
    let compare = Command::new(lab())
        .arg("compare")
        .arg(&run_dir)
        .arg(&run_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&compare.stdout);
    assert!(
        compare.status.success() && text.contains("db syscalls/request"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_flags_get_a_clear_message_and_exit_2() {
    let output = Command::new(lab())
        .args(["run", "--variants", "nginx"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("nginx") && stderr.contains("epoll"),
        "{stderr}"
    );
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("syscall-lab-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
