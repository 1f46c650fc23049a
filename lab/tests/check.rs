//! `lab check` end to end: the real binary against a server nobody here wrote (nginx's
//! `return 200`) and against the lab's epoll variant, under the real eBPF tracer; and the
//! exit status 2 cases (bad budget, a server that does not start, a budget that needs eBPF
//! under ptrace), which need no privileges.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lab::results::check::{CheckReport, Metric};

fn lab() -> PathBuf {
    servers::launch::sibling_binary("lab").unwrap_or_else(|e| panic!("{e:#}"))
}

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test traces with eBPF and needs root (or CAP_BPF + CAP_PERFMON): run it as root"
    );
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("syscall-lab-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn check<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new(lab())
        .arg("check")
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("running lab check")
}

/// `lab check` of a lab variant, on the test suites' database.
fn check_variant<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    let url = db::Database::ready_for_tests().unwrap_or_else(|e| panic!("{e:#}"));
    Command::new(lab())
        .arg("check")
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .expect("running lab check")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn nginx() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("nginx is not installed: scripts/install-deps installs nginx-light (apt-get install nginx-light)")
}

/// A one-process nginx (`master_process off`: the process started is the one serving)
/// answering `return 200` on `port`, everything it writes under `dir`.
fn nginx_config(dir: &Path, port: u16, access_log: bool) -> PathBuf {
    let d = dir.display();
    let log = if access_log {
        format!("access_log {d}/access.log;")
    } else {
        "access_log off;".into()
    };
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n    {log}\n\
         client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
         server {{\n        listen 127.0.0.1:{port};\n        location / {{ return 200 \"ok\\n\"; }}\n    }}\n}}\n"
    );
    let path = dir.join(if access_log { "log.conf" } else { "quiet.conf" });
    std::fs::write(&path, conf).unwrap();
    path
}

fn report(path: &Path) -> CheckReport {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("a lab check JSON report")
}

#[test]
fn nginx_passes_its_recorded_budget_and_fails_it_with_the_access_log_on() {
    require_root();
    let dir = tempdir("check-nginx");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let nginx = nginx();
    let run = |conf: &Path| -> Vec<String> {
        vec![
            "--url".to_string(),
            url.clone(),
            "--".into(),
            nginx.display().to_string(),
            "-c".into(),
            conf.display().to_string(),
            "-p".into(),
            format!("{}/", dir.display()),
            "-e".into(),
            dir.join("error.log").display().to_string(),
        ]
    };
    let quiet = nginx_config(&dir, port, false);
    let logged = nginx_config(&dir, port, true);
    let budget = dir.join("nginx.toml");

    // Record today's figures.
    let mut args = vec![
        "--record".to_string(),
        budget.display().to_string(),
        "--repeat".into(),
        "2".into(),
        "-d".into(),
        "1s".into(),
    ];
    args.extend(run(&quiet));
    let o = check(&args);
    assert!(o.status.success(), "recording failed: {}", text(&o));
    let recorded = std::fs::read_to_string(&budget).unwrap();
    assert!(
        recorded.contains("[[endpoint]]") && recorded.contains("path = \"/\""),
        "{recorded}"
    );

    // As recorded: every limit holds.
    let pass_json = dir.join("pass.json");
    let mut args = vec![
        "--budget".to_string(),
        budget.display().to_string(),
        "--json".into(),
        pass_json.display().to_string(),
    ];
    args.extend(run(&quiet));
    let o = check(&args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "the unchanged nginx failed its budget: {}",
        text(&o)
    );
    let pass = report(&pass_json);
    assert!(pass.passed);
    let served = &pass.servers[0].endpoints[0];
    assert!(
        served.requests > 100,
        "too few requests measured: {}",
        served.requests
    );
    let net = served.windows[0].categories["network"];
    assert!(
        (1.9..2.5).contains(&net),
        "nginx reads and writes once per request, measured {net} network calls"
    );
    // nginx was stopped: only the pid the check started.
    let pid = pass.servers[0].pid.expect("the started nginx's pid");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z"),
        "nginx {pid} still runs"
    );

    // The access log on: one write per request more, in logging. Exit 1, and the
    // table, the JSON and the JUnit file say which endpoint, which category, how much.
    let (fail_json, junit) = (dir.join("fail.json"), dir.join("fail.xml"));
    let mut args = vec![
        "--budget".to_string(),
        budget.display().to_string(),
        "--json".into(),
        fail_json.display().to_string(),
        "--junit".into(),
        junit.display().to_string(),
    ];
    args.extend(run(&logged));
    let o = check(&args);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the access log went unnoticed: {}",
        text(&o)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("FAIL") && stdout.contains("GET / · logging syscalls per request"),
        "the failure does not name endpoint and category: {}",
        text(&o)
    );
    let fail = report(&fail_json);
    assert!(!fail.passed);
    let endpoint = &fail.servers[0].endpoints[0];
    let logging = endpoint
        .limits
        .iter()
        .find(|l| l.metric == Metric::Category("logging".into()))
        .expect("a logging limit was recorded");
    assert!(!logging.passed, "{logging:?}");
    assert!(
        (0.9..1.2).contains(&logging.measured),
        "one write per request to the access log, measured {}",
        logging.measured
    );
    assert!(
        logging.margin < -0.5,
        "the excess is the write: {logging:?}"
    );
    assert!(std::fs::metadata(dir.join("access.log"))
        .map(|m| m.len() > 0)
        .unwrap_or(false));
    let failed = endpoint.limits.iter().filter(|l| !l.passed).count();
    junit_shape(
        &std::fs::read_to_string(&junit).unwrap(),
        endpoint.limits.len(),
        failed,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads the JUnit file with an XML parser and checks the structure CI systems expect:
/// `<testsuites>` > `<testsuite name tests failures errors>` > `<testcase classname name>`
/// [> `<failure message>`], with counts that match the cases.
fn junit_shape(xml: &str, cases: usize, failures: usize) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.trim_text(true);
    let mut stack: Vec<String> = Vec::new();
    let (mut seen_cases, mut seen_failures) = (0, 0);
    let mut declared: Vec<(String, usize)> = Vec::new();
    let attr = |e: &quick_xml::events::BytesStart, name: &str| -> Option<String> {
        e.attributes()
            .flatten()
            .find(|a| a.key.as_ref() == name.as_bytes())
            .map(|a| a.unescape_value().unwrap().into_owned())
    };
    loop {
        let event = reader
            .read_event()
            .unwrap_or_else(|e| panic!("not well-formed XML: {e}\n{xml}"));
        let (start, empty) = match &event {
            Event::Start(e) => (Some(e.clone()), false),
            Event::Empty(e) => (Some(e.clone()), true),
            Event::End(_) => {
                stack.pop();
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let e = start.expect("a start tag");
        let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
        let parent = stack.last().map(String::as_str);
        match name.as_str() {
            "testsuites" => assert_eq!(parent, None, "testsuites is the root"),
            "testsuite" => {
                assert_eq!(parent, Some("testsuites"));
                for a in ["name", "tests", "failures", "errors"] {
                    assert!(attr(&e, a).is_some(), "testsuite without {a}");
                }
                for a in ["tests", "failures"] {
                    declared.push((a.into(), attr(&e, a).unwrap().parse().expect("a count")));
                }
            }
            "testcase" => {
                assert_eq!(parent, Some("testsuite"));
                assert!(attr(&e, "classname").is_some() && attr(&e, "name").is_some());
                seen_cases += 1;
            }
            "failure" => {
                assert_eq!(parent, Some("testcase"));
                let message = attr(&e, "message").expect("a failure message");
                assert!(message.contains("over"), "{message}");
                seen_failures += 1;
            }
            "properties" => assert_eq!(parent, Some("testsuite")),
            "property" => assert_eq!(parent, Some("properties")),
            other => panic!("unexpected element <{other}> in\n{xml}"),
        }
        if !empty {
            stack.push(name);
        }
    }
    assert_eq!((seen_cases, seen_failures), (cases, failures), "{xml}");
    assert_eq!(
        declared,
        vec![("tests".into(), cases), ("failures".into(), failures)],
        "{xml}"
    );
}

#[test]
fn the_epoll_variant_fails_its_budget_once_it_logs_synchronously() {
    require_root();
    let dir = tempdir("check-epoll");
    let budget = dir.join("epoll.toml");
    let b = budget.display().to_string();
    let o = check_variant([
        "--record",
        &b,
        "--variant",
        "epoll",
        "--path",
        "/json",
        "--repeat",
        "2",
        "-d",
        "1s",
    ]);
    assert!(o.status.success(), "recording failed: {}", text(&o));
    let o = check_variant(["--budget", &b, "--variant", "epoll"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "unchanged, it failed: {}",
        text(&o)
    );
    let o = check_variant(["--budget", &b, "--variant", "epoll", "--log", "sync"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "--log sync went unnoticed: {}",
        text(&o)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("FAIL epoll · GET /json · logging syscalls per request"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_budget_file_exits_2_naming_its_line() {
    let dir = tempdir("check-bad");
    let budget = dir.join("bad.toml");
    std::fs::write(
        &budget,
        "[[endpoint]]\npath = \"/plaintext\"\n[endpoint.limits.category]\nnetwrk = 2\n",
    )
    .unwrap();
    let o = check([
        "--budget",
        &budget.display().to_string(),
        "--variant",
        "epoll",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:4: unknown category \"netwrk\"",
            budget.display()
        )),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_server_that_does_not_start_exits_2() {
    let dir = tempdir("check-nostart");
    let budget = dir.join("b.toml");
    std::fs::write(
        &budget,
        "[[endpoint]]\npath = \"/\"\n[endpoint.limits]\nsyscalls = 3\n",
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let o = check([
        "--budget",
        &budget.display().to_string(),
        "--url",
        &url,
        "--",
        "sh",
        "-c",
        "echo no config >&2; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("did not start") && stderr.contains("no config"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ring_operations_without_ebpf_exit_2() {
    let dir = tempdir("check-ring");
    let budget = dir.join("b.toml");
    std::fs::write(
        &budget,
        "[[endpoint]]\npath = \"/\"\n[endpoint.limits]\nring_ops = 2\n",
    )
    .unwrap();
    let me = std::process::id().to_string();
    let o = check([
        "--budget",
        &budget.display().to_string(),
        "--tracer",
        "ptrace",
        "--url",
        "http://127.0.0.1:9",
        "--pid",
        &me,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("only the eBPF tracer") && stderr.contains("line 4"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
