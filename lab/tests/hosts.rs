//! `lab run --hosts separate` end to end: real network namespaces, veth links, the
//! delaying forwarder (this machine's kernel has no netem), the lab's PostgreSQL started in
//! its namespace, the real kernel tracer; and `lab net down` after a SIGKILL. Needs root
//! (namespaces, eBPF); CI runs as root.
//!
//! The tests share one namespace prefix (`lab-t`, not the `lab` of a user's own runs) and so
//! one PostgreSQL cluster: they take turns through [`TURN`].

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lab::results::Run;

const PREFIX: &str = "lab-t";
static TURN: Mutex<()> = Mutex::new(());

fn lab() -> PathBuf {
    servers::launch::sibling_binary("lab").unwrap_or_else(|e| panic!("{e:#}"))
}

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test creates network namespaces and traces with eBPF: run it as root"
    );
}

fn lab_cmd() -> Command {
    let mut c = Command::new(lab());
    c.env("LAB_NET_PREFIX", PREFIX)
        .env_remove("LAB_NET_SUBNET")
        .env_remove("DATABASE_URL");
    c
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lab-hosts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The lab's namespaces that exist now.
fn lab_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{PREFIX}-")))
        .collect()
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn only_run(out: &Path) -> Run {
    let runs: Vec<_> = std::fs::read_dir(out).unwrap().flatten().collect();
    assert_eq!(runs.len(), 1, "one run folder in {}", out.display());
    Run::load(&runs[0].path()).expect("run.json reads back")
}

#[test]
fn separate_hosts_with_a_database_2ms_away() {
    require_root();
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempdir("db-2ms");
    let output = lab_cmd()
        .args([
            "run",
            "--hosts",
            "separate",
            "--variants",
            "epoll,thread-pool",
        ])
        .args(["--workload", "db", "--db-latency", "2ms", "--delay", "auto"])
        .args([
            "-d", "1s", "--warmup", "500ms", "-c", "8", "--tracer", "ebpf",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running lab run");
    let all = text(&output);
    assert!(output.status.success(), "lab run failed:\n{all}");
    let run = only_run(&out);
    assert_eq!(run.config.hosts, "separate");
    assert_eq!(run.config.db_latency_ms, 2.0);
    let topology = run
        .topology
        .as_ref()
        .expect("run.json records the topology");
    let roles: Vec<&str> = topology.hosts.iter().map(|h| h.role.as_str()).collect();
    assert_eq!(roles, ["client", "server", "db"]);
    for h in &topology.hosts {
        assert_eq!(h.namespace, format!("{PREFIX}-{}", h.role));
        assert!(
            h.addresses.iter().all(|a| a.starts_with("198.18.")),
            "{h:?}"
        );
    }
    let link = |name: &str| {
        topology
            .links
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no {name} link in {topology:?}"))
    };
    let (front, back) = (link("client-server"), link("server-db"));
    assert_eq!(front.delay, "none");
    assert_eq!(back.added_rtt_ms, 2.0);
    let expected = if netem_available() {
        "netem"
    } else {
        "forwarder"
    };
    assert_eq!(
        back.delay, expected,
        "auto picks netem only where it exists"
    );
    // The delay holds each frame at least 1 ms each way: the measured round trip cannot be
    // shorter, and it is many times the undelayed link's.
    assert!(
        back.measured.echo_rtt_ms.median >= 2.0 && back.measured.connect_ms.median >= 2.0,
        "{back:?}"
    );
    assert!(
        back.measured.echo_rtt_ms.median > 5.0 * front.measured.echo_rtt_ms.median,
        "{front:?} vs {back:?}"
    );
    for v in &run.variants {
        assert!(v.ok, "{}: {:?} {:?}", v.variant, v.failure, v.log_tail);
        let s = v.summary.as_ref().unwrap();
        let db = s
            .categories
            .iter()
            .find(|c| c.category == "database")
            .unwrap();
        // The tracer still tells the database apart by its address and port.
        assert!(
            db.syscalls_per_request >= 1.0,
            "{}: {} database syscalls per request",
            v.variant,
            db.syscalls_per_request
        );
    }
    // A thread blocks in its database read for the round trip: at least the link's
    // measured minimum, per request (thread-pool waits in the read itself).
    let tp = run
        .variants
        .iter()
        .find(|v| v.variant == "thread-pool")
        .unwrap();
    let blocked_db = tp
        .summary
        .as_ref()
        .unwrap()
        .categories
        .iter()
        .find(|c| c.category == "database")
        .unwrap()
        .offcpu_us_per_request;
    assert!(
        blocked_db >= 0.9 * back.measured.echo_rtt_ms.min * 1e3,
        "thread-pool blocked {blocked_db} µs per request in database calls"
    );
    assert!(
        all.contains("server-db 198.18.2.1 → 198.18.2.2: +2 ms round trip"),
        "{all}"
    );
    let report = std::fs::read_to_string(out.join(&run.id).join("report.html")).unwrap();
    assert!(
        report.contains("Separate hosts"),
        "the report shows the topology"
    );
    assert!(
        lab_namespaces().is_empty(),
        "left behind: {:?}",
        lab_namespaces()
    );
}

/// Whether this kernel has netem, tried in a scratch namespace of the tests' own.
fn netem_available() -> bool {
    let ns = format!("{PREFIX}-netem-probe");
    let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
    assert!(ok(Command::new("ip").args(["netns", "add", &ns])));
    let has = ok(Command::new("ip").args([
        "-n", &ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
    ])) && ok(Command::new("tc")
        .args([
            "-n", &ns, "qdisc", "add", "dev", "d0", "root", "netem", "delay", "1ms",
        ])
        .stderr(Stdio::null()));
    assert!(ok(Command::new("ip").args(["netns", "delete", &ns])));
    has
}

#[test]
fn netem_where_the_kernel_has_it_and_a_clear_refusal_where_not() {
    require_root();
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempdir("netem");
    let output = lab_cmd()
        .args([
            "run",
            "--hosts",
            "separate",
            "--variants",
            "epoll",
            "--workload",
            "json",
        ])
        .args(["--client-latency", "1ms", "--delay", "netem"])
        .args(["-d", "500ms", "--warmup", "0", "-c", "2", "--tracer", "off"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let all = text(&output);
    if netem_available() {
        assert!(output.status.success(), "{all}");
        let run = only_run(&out);
        let link = &run.topology.unwrap().links[0];
        assert_eq!(link.delay, "netem");
        assert!(link.measured.echo_rtt_ms.median >= 1.0, "{link:?}");
    } else {
        eprintln!(
            "NOTE: this kernel has no netem (CONFIG_NET_SCH_NETEM): checked that --delay netem \
             refuses clearly; the forwarder is what the other tests exercise"
        );
        assert!(!output.status.success(), "{all}");
        assert!(
            all.contains("netem") && all.contains("--delay forwarder"),
            "{all}"
        );
    }
    assert!(
        lab_namespaces().is_empty(),
        "left behind: {:?}",
        lab_namespaces()
    );
}

#[test]
fn refuses_addresses_the_host_routes_and_latency_without_separate_hosts() {
    require_root();
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // 127.0.0.0/8 is routed on every host (table local).
    let output = lab_cmd()
        .env("LAB_NET_SUBNET", "127.77.0.0/16")
        .args(["run", "--hosts", "separate", "--variants", "epoll"])
        .output()
        .unwrap();
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(
        all.contains("127.77.1.2 is already routed on this host") && all.contains("LAB_NET_SUBNET"),
        "{all}"
    );
    assert!(
        lab_namespaces().is_empty(),
        "nothing is created: {:?}",
        lab_namespaces()
    );
    let output = lab_cmd()
        .args(["run", "--variants", "epoll", "--db-latency", "2ms"])
        .output()
        .unwrap();
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.contains("add --hosts separate"), "{all}");
    let output = lab_cmd()
        .args(["run", "--hosts", "separate", "--db-latency", "2"])
        .output()
        .unwrap();
    assert!(
        text(&output).contains("give a unit, e.g. 2ms"),
        "{}",
        text(&output)
    );
}

#[test]
fn lab_net_down_removes_what_a_killed_run_left() {
    require_root();
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempdir("killed");
    let mut child = lab_cmd()
        .args(["run", "--hosts", "separate", "--variants", "thread-pool"])
        .args([
            "--workload",
            "db",
            "--db-latency",
            "1ms",
            "--client-latency",
            "1ms",
        ])
        .args(["-d", "60s", "--warmup", "0", "-c", "4", "--tracer", "off"])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the server is up in its namespace and the load is on.
    let server_ns = format!("{PREFIX}-server");
    let deadline = Instant::now() + Duration::from_secs(120);
    let server_pid = loop {
        let found = lab::net::ns::pids(&server_ns).into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "server")
        });
        if let Some(pid) = found {
            break pid;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "lab run ended before its server started"
        );
        assert!(
            Instant::now() < deadline,
            "no server in {server_ns} after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap(); // SIGKILL: no clean-up runs
    child.wait().unwrap();
    let left = lab_namespaces();
    for role in ["client", "server", "db", "wire"] {
        assert!(
            left.contains(&format!("{PREFIX}-{role}")),
            "a killed lab leaves {role} behind (or this test proves nothing): {left:?}"
        );
    }
    let db_pids = lab::net::ns::pids(&format!("{PREFIX}-db"));
    assert!(
        !db_pids.is_empty(),
        "PostgreSQL still runs in its namespace"
    );

    let output = lab_cmd().args(["net", "down"]).output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("removed"), "{}", text(&output));
    assert!(
        lab_namespaces().is_empty(),
        "left behind: {:?}",
        lab_namespaces()
    );
    for pid in db_pids.iter().chain([&server_pid]) {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z")),
            "process {pid} of the killed run still runs"
        );
    }
    // Nothing of the lab's in the host's own namespace either: no link, no qdisc.
    let links = Command::new("ip").args(["-br", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    for name in [
        "to-server",
        "to-client",
        "to-db",
        "client-server",
        "server-db",
    ] {
        assert!(
            !links.contains(name),
            "{name} in the host's links:\n{links}"
        );
    }
    let qdiscs = Command::new("tc").args(["qdisc", "show"]).output().unwrap();
    let qdiscs = String::from_utf8_lossy(&qdiscs.stdout);
    assert!(!qdiscs.contains("netem"), "{qdiscs}");
    let status = lab_cmd().args(["net", "status"]).output().unwrap();
    assert_eq!(status.status.code(), Some(3), "{}", text(&status));
}
