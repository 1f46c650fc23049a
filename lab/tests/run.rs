//! `lab run` end to end: the real binary, the real servers, the test suites' PostgreSQL
//! (`db::Database::ready_for_tests`: the lab's test cluster, or DATABASE_URL), the real
//! kernel tracer. Needs root for eBPF (CI runs as root).

use std::path::Path;
use std::process::Command;

use lab::results::Run;

fn lab() -> std::path::PathBuf {
    servers::launch::sibling_binary("lab").unwrap_or_else(|e| panic!("{e:#}"))
}

/// `lab run` on the test suites' database.
fn lab_run() -> Command {
    let url = db::Database::ready_for_tests().unwrap_or_else(|e| panic!("{e:#}"));
    let mut command = Command::new(lab());
    command.arg("run").env("DATABASE_URL", url);
    command
}

/// A cluster this test started: destroyed (stopped, its data removed) at the end.
struct OwnCluster(db::Cluster);

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let cluster = db::Cluster::new(self.0.config().clone()).expect("the same cluster");
        if let Err(e) = cluster.destroy() {
            eprintln!("removing the test's own cluster: {e:#}");
        }
    }
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
    let output = lab_run()
        .args([
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
    // The request logs were written (and traced as logging, above), then summarised into
    // run.json and removed: the folder stays small.
    for variant in &run.variants {
        let log = variant
            .request_log
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no request log summary in run.json", variant.variant));
        assert!(
            log.file.is_none() && log.bytes > 0 && log.lines > 0 && !log.last_lines.is_empty(),
            "{}: {log:?}",
            variant.variant
        );
        assert!(
            log.last_lines.iter().all(|l| l.contains("status="))
                && log.last_lines.iter().any(|l| l.contains("\"/db\"")),
            "{}: last lines are not request lines: {:?}",
            variant.variant,
            log.last_lines
        );
    }
    let files = folder_files(&run_dir);
    assert!(
        !files.iter().any(|(name, _)| name.ends_with(".log")),
        "request logs left in the run folder: {files:?}"
    );
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    assert!(
        total < 2_000_000,
        "the run folder holds {total} bytes: {files:?}"
    );
    assert!(
        stderr.contains("--keep-logs"),
        "lab run does not say how to keep the full logs:\n{stderr}"
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
    let output = lab_run()
        .args([
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

/// `lab workshop` runs its two sides in one process, one after the other: both servers
/// must be placed alike (issue 16: the second one used to land on the load generator's
/// CPU). The first run keeps its request log (`--keep-logs`), the second does not.
#[test]
fn two_runs_in_one_process_place_the_server_alike() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "placement needs 2 or more CPUs and this machine has {cpus}: run this test on another"
    );
    let out = tempdir("run-twice");
    let url = db::Database::ready_for_tests().unwrap_or_else(|e| panic!("{e:#}"));
    let args = |extra: &[&str]| {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: lab::run_cmd::RunArgs,
        }
        let mut argv = vec!["lab", "--variants", "epoll", "--workload", "plaintext"];
        argv.extend(["--duration", "1s", "--warmup", "0s", "--connections", "4"]);
        argv.extend(["--tracer", "off", "--log", "sync", "--database-url", &url]);
        argv.extend(["--out", out.to_str().unwrap()]);
        argv.extend(extra);
        <Cli as clap::Parser>::parse_from(argv).run
    };
    let first = lab::run_cmd::execute(&args(&["--keep-logs"])).expect("first run");
    // Run ids are whole seconds: the second run gets a folder of its own.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = lab::run_cmd::execute(&args(&[])).expect("second run");
    let placed = |run: &Run| {
        let v = &run.variants[0];
        assert!(v.ok, "{:?}", v.failure);
        (
            run.environment.pinning.clone(),
            v.rounds[0].process.server_cpus.clone(),
        )
    };
    let (first_pinning, first_cpus) = placed(&first);
    assert!(
        !first_cpus.is_empty() && first_cpus.len() < cpus,
        "the first server was not pinned: {first_cpus:?} ({first_pinning})"
    );
    assert_eq!(
        placed(&second),
        (first_pinning, first_cpus),
        "the second run placed its server differently"
    );

    // --keep-logs: the file is there and run.json describes it.
    let kept = first.variants[0]
        .request_log
        .clone()
        .expect("a log summary");
    let file = out
        .join(&first.id)
        .join(kept.file.as_deref().expect("the kept file's name"));
    let text = std::fs::read_to_string(&file).expect("the kept log");
    assert_eq!(kept.bytes, text.len() as u64);
    assert_eq!(kept.lines, text.lines().count() as u64);
    assert_eq!(
        kept.last_lines.last().map(String::as_str),
        text.lines().last()
    );
    // Without: summarised, gone.
    let summary = second.variants[0]
        .request_log
        .clone()
        .expect("a log summary");
    assert!(summary.file.is_none() && summary.lines > 0, "{summary:?}");
    assert!(!out.join(&second.id).join("epoll.log").exists());
}

/// Issue 16, point 5: `--trace-db` traces the database's postmaster and backends beside the
/// server, and the run shows what the database did per request: its client backends read
/// each query and answer it on their client sockets (its `network`), and its CPU.
#[test]
fn trace_db_puts_the_databases_side_beside_the_servers() {
    require_root();
    let out = tempdir("run-trace-db");
    // A cluster of its own: --trace-db counts every process of the database's tree, and the
    // tests' shared cluster serves the other tests of this binary at the same time.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cluster = OwnCluster(
        db::Cluster::new(db::ClusterConfig::scratch(
            &format!("trace-db-{}", std::process::id()),
            port,
        ))
        .expect("PostgreSQL is needed for this test"),
    );
    cluster
        .0
        .up()
        .unwrap_or_else(|e| panic!("starting a cluster: {e:#}"));
    let output = Command::new(lab())
        .arg("run")
        .env("DATABASE_URL", cluster.0.config().url())
        .args(["--variants", "epoll", "--workload", "db"])
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

/// Every file in `dir` and below, with its size.
fn folder_files(dir: &Path) -> Vec<(String, u64)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(folder_files(&path));
        } else {
            let size = entry.metadata().map_or(0, |m| m.len());
            files.push((path.display().to_string(), size));
        }
    }
    files
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("syscall-lab-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
