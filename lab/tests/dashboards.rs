//! The Grafana dashboards of `dashboards/grafana/dashboards/`, checked without Docker.
//!
//! `dashboards_are_provisionable` reads the JSON: every panel and every query names the
//! provisioned datasource by its pinned uid, `$variant` is a multi-select, and so on.
//!
//! `dashboards_satisfy_grafanas_schema` checks every dashboard against Grafana's own schema
//! (`@grafana/schema`, pinned to the Grafana of docker-compose.yml, and the foundation SDK's
//! Prometheus query) with TypeScript's compiler: those packages carry the schema as types.
//! `scripts/install-deps` installs them into `target/dashboard-schema`.
//!
//! `every_dashboard_query_returns_data` runs the real thing on loopback: the lab's test
//! PostgreSQL, natively started servers (epoll, thread-pool, thread-per-request, and
//! io-uring when it starts), one tracer exporter per server (`lab trace --pid PID
//! --listen ADDR --variant NAME`, eBPF: needs root), and Debian's Prometheus scraping them
//! every second. While `loadgen` loads every server with the TechEmpower mix, every query
//! of every dashboard, with Grafana's variables replaced by concrete values, is evaluated
//! through Prometheus's HTTP API at one instant inside the load: each must return data,
//! and the per-variant ones must return it for every variant. The evaluator is the lab's
//! own (`lab::dashboards`, also `lab dashboards check` and scripts/compose-check).
//!
//! `lab_run_export_lands_in_a_native_prometheus` runs Debian's Prometheus with
//! `dashboards/prometheus/native.yml` as it is and a short `lab run --export`: every
//! dashboard query must return data for each variant inside its own measured window.
//!
//! Needs: `cargo build --workspace --bins` first (the test starts `server`, `lab` and
//! `loadgen`), root, the `prometheus` package (`PROMETHEUS=/path/to/prometheus` picks
//! another binary), node, and Grafana's schema (`scripts/install-deps` installs them).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lab::dashboards::{self, panels, DATASOURCE_UID};
use serde_json::Value;
/// The variants the live test needs; io-uring joins when it starts.
const REQUIRED_VARIANTS: [&str; 3] = ["epoll", "thread-pool", "thread-per-request"];
const OPTIONAL_VARIANTS: [&str; 1] = ["io-uring"];
/// What Grafana's `$__rate_interval` becomes (scrapes every second: 4 s at least).
const RATE_INTERVAL: &str = "5s";
/// Load length, and when inside it the queries are evaluated.
const LOAD: Duration = Duration::from_secs(14);
const EVALUATE_AT: Duration = Duration::from_secs(11);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lab/ has a parent")
        .to_path_buf()
}

fn dashboards_dir() -> PathBuf {
    repo_root().join("dashboards/grafana/dashboards")
}

fn dashboard_files() -> Vec<PathBuf> {
    dashboards::dashboard_files(&dashboards_dir()).unwrap_or_else(|e| panic!("{e:#}"))
}

fn load_json(path: &Path) -> Value {
    dashboards::load_json(path).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn dashboards_are_provisionable() {
    let mut uids = BTreeSet::new();
    for file in dashboard_files() {
        let name = file.display().to_string();
        let text = fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("${DS_") && !text.contains("__inputs"),
            "{name}: exported-for-sharing inputs do not load under provisioning; pin the uid"
        );
        let d = load_json(&file);
        let uid = d["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no uid"));
        assert!(uids.insert(uid.to_string()), "{name}: uid {uid} used twice");
        assert!(d["title"].is_string(), "{name}: no title");
        assert!(d.get("id").is_none_or(Value::is_null), "{name}: a fixed id");

        let vars = d["templating"]["list"].as_array().expect("templating.list");
        let variant = vars
            .iter()
            .find(|v| v["name"] == "variant")
            .unwrap_or_else(|| panic!("{name}: no $variant variable"));
        assert_eq!(
            variant["multi"], true,
            "{name}: $variant must be multi-select"
        );
        assert_eq!(variant["includeAll"], true, "{name}: $variant needs All");
        assert_eq!(
            variant["datasource"]["uid"], DATASOURCE_UID,
            "{name}: $variant"
        );

        let mut ids = BTreeSet::new();
        let mut queries = 0;
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or("?");
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: {title}: no id"));
            assert!(ids.insert(id), "{name}: panel id {id} used twice");
            let grid = &p["gridPos"];
            for k in ["x", "y", "w", "h"] {
                assert!(grid[k].is_u64(), "{name}: {title}: gridPos.{k}");
            }
            assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24);
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], DATASOURCE_UID,
                "{name}: {title}: panel datasource"
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{name}: {title}: no query");
            for t in targets {
                assert_eq!(t["datasource"]["uid"], DATASOURCE_UID, "{name}: {title}");
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(
                    expr.contains("variant=~\"$variant\""),
                    "{name}: {title}: every query follows $variant: {expr}"
                );
                dashboards::concrete(expr, ".*", RATE_INTERVAL)
                    .unwrap_or_else(|e| panic!("{name}: {title}: {e:#}"));
                queries += 1;
            }
        }
        assert!(queries > 0, "{name}: no queries");
    }
    for uid in ["syscall-lab-variants", "syscall-lab-live"] {
        assert!(uids.contains(uid), "dashboard {uid} is missing");
    }

    // What "Variants compared" must show, by metric.
    let d = load_json(&repo_root().join("dashboards/grafana/dashboards/variants-compared.json"));
    let all: String = panels(&d)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "lab_http_requests_total",
        "lab_http_request_duration_seconds_bucket",
        "tracer_calls_total{variant=~\"$variant\",kind=\"syscall\"}",
        "tracer_blocked_seconds_total",
        "lab_process_cpu_seconds_total",
        "lab_process_threads",
        "lab_process_resident_memory_bytes",
        "group_left",
    ] {
        assert!(all.contains(needle), "Variants compared lacks {needle}");
    }

    // The datasource the dashboards name is the one provisioned.
    let ds = fs::read_to_string(
        repo_root().join("dashboards/grafana/provisioning/datasources/prometheus.yml"),
    )
    .unwrap();
    assert!(
        ds.contains(&format!("uid: {DATASOURCE_UID}")),
        "the provisioned datasource's uid is not {DATASOURCE_UID}"
    );
}

// ---------------------------------------------------------------------------------------
// Grafana's own schema.

/// Where `scripts/install-deps` installs Grafana's dashboard schema and TypeScript's compiler
/// (`dashboards/grafana/schema/package.json`).
fn schema_install() -> PathBuf {
    repo_root().join("target/dashboard-schema")
}

/// A dashboard as a TypeScript module: the whole JSON must satisfy Grafana's `Dashboard`, and
/// each panel again its plugin's panel type (`dashboards/grafana/schema/schema.ts`).
fn typescript_module(dashboard: &Value) -> String {
    let literal = |v: &Value| serde_json::to_string_pretty(v).unwrap();
    let mut out = String::from("import type { GrafanaDashboard, Panels } from './schema';\n");
    out += &format!(
        "export const dashboard = {} satisfies GrafanaDashboard;\n",
        literal(dashboard)
    );
    for (i, p) in panels(dashboard).into_iter().enumerate() {
        if p["type"] != "row" {
            out += &format!(
                "export const panel{i} = {} satisfies Panels[{}];\n",
                literal(p),
                p["type"]
            );
        }
    }
    out
}

/// `file(line,col): error TS....: message` lines of tsc, by file name.
fn tsc_errors(output: &str) -> BTreeMap<String, Vec<(usize, String)>> {
    let mut out: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
    for l in output.lines().filter(|l| l.contains("): error TS")) {
        let (path, rest) = l.split_once('(').expect("file(line,col)");
        let file = Path::new(path.trim()).file_name().unwrap_or_default();
        let line = rest
            .split([',', ')'])
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        out.entry(file.to_string_lossy().into_owned())
            .or_default()
            .push((line, l.to_string()));
    }
    out
}

#[test]
fn dashboards_satisfy_grafanas_schema() {
    let install = schema_install();
    let tsc = install.join("node_modules/.bin/tsc");
    let spec = repo_root().join("dashboards/grafana/schema/package.json");
    assert!(
        tsc.exists() && fs::read(&spec).ok() == fs::read(install.join("package.json")).ok(),
        "Grafana's dashboard schema ({}) is not installed, or not these versions, in {}: \
         run scripts/install-deps (it needs node and npm)",
        spec.display(),
        install.display()
    );
    // Inside the installation, so that `import '@grafana/schema'` finds its node_modules.
    let dir = TempDir::inside(&install);
    fs::copy(
        repo_root().join("dashboards/grafana/schema/schema.ts"),
        dir.0.join("schema.ts"),
    )
    .unwrap();
    fs::write(
        dir.0.join("tsconfig.json"),
        r#"{"compilerOptions": {"strict": true, "noEmit": true, "skipLibCheck": true, "types": [],
            "module": "esnext", "moduleResolution": "bundler", "target": "es2022"},
            "include": ["*.ts"]}"#,
    )
    .unwrap();
    let mut sources = BTreeMap::new();
    for file in dashboard_files() {
        let name = format!("{}.ts", file.file_stem().unwrap().to_string_lossy());
        let source = typescript_module(&load_json(&file));
        fs::write(dir.0.join(&name), &source).unwrap();
        sources.insert(name, (file.display().to_string(), source));
    }
    // The control: a dashboard with one mistake of each kind, which the check must catch.
    // One per panel: tsc reports the innermost of several mistakes in one object.
    let mut broken = load_json(&repo_root().join("dashboards/grafana/dashboards/live.json"));
    broken["graphTooltip"] = "mistake-tooltip".into(); // a number (an enum)
    let mut series = broken["panels"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .filter(|p| p["type"] == "timeseries");
    let mut next = || series.next().expect("live.json has 4 time series");
    next()["gridPos"]["w"] = "mistake-width".into(); // a number
    next()["options"]["mistake_option"] = 1.into(); // no such option
    next()["options"]["tooltip"]["mode"] = "mistake-mode".into(); // single, multi or none
    next()["targets"][0]["mistake_query"] = true.into(); // no such query field
    let broken_source = typescript_module(&broken);
    fs::write(dir.0.join("broken.ts"), &broken_source).unwrap();

    let out = Command::new(&tsc)
        .args(["--pretty", "false", "-p", "."])
        .current_dir(&dir.0)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", tsc.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut errors = tsc_errors(&text);
    assert!(
        !out.status.success() && errors.contains_key("broken.ts"),
        "tsc accepted a broken dashboard: the schema check checks nothing\n{text}"
    );
    // Every mistake is reported on its own line.
    let reported = errors.remove("broken.ts").unwrap();
    for mistake in [
        "mistake-tooltip",
        "mistake-width",
        "mistake_option",
        "mistake-mode",
        "mistake_query",
    ] {
        // In the dashboard's literal, in its panel's, or both.
        let lines: Vec<usize> = (1..)
            .zip(broken_source.lines())
            .filter(|(_, l)| l.contains(mistake))
            .map(|(n, _)| n)
            .collect();
        assert!(
            reported.iter().any(|(l, _)| lines.contains(l)),
            "tsc did not report {mistake} (broken.ts lines {lines:?}):\n{text}"
        );
    }
    // Anything else is a complaint: about a dashboard, or about the check itself.
    let mut complaints: Vec<String> = text
        .lines()
        .filter(|l| l.contains("error") && !l.contains("): error TS"))
        .map(str::to_string)
        .collect();
    for (file, errors) in &errors {
        let (json, source) = sources
            .get(file)
            .map(|(j, s)| (j.as_str(), s.as_str()))
            .unwrap_or((file.as_str(), ""));
        for (line, error) in errors {
            let at = source.lines().nth(line.saturating_sub(1)).unwrap_or("");
            complaints.push(format!("{json}: {error}\n    at: {}", at.trim()));
        }
    }
    assert!(
        complaints.is_empty(),
        "the dashboards do not satisfy Grafana's schema ({}):\n{}",
        spec.display(),
        complaints.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// The live test.

#[test]
fn every_dashboard_query_returns_data() {
    assert!(
        is_root(),
        "this test loads eBPF programs (lab trace --backend ebpf) and must run as root; \
         it does not skip: run `cargo test` as root"
    );
    let prometheus = prometheus_binary();
    let dir = TempDir::new();

    // The database: the lab's test cluster (or DATABASE_URL), stopped by the last test
    // process that uses it.
    let database_url = db::Database::ready_for_tests().unwrap_or_else(|e| panic!("{e:#}"));

    // The servers, one per variant.
    let server_bin = sibling_binary("server");
    let mut servers = Vec::new();
    for variant in REQUIRED_VARIANTS {
        let s = Proc::start_server(&server_bin, variant, &database_url, &dir.0)
            .unwrap_or_else(|e| panic!("{e}"));
        servers.push(s);
    }
    // One tracer exporter per server.
    let lab_bin = PathBuf::from(env!("CARGO_BIN_EXE_lab"));
    let mut tracers = Vec::new();
    for s in &servers {
        tracers.push(Proc::start_tracer(&lab_bin, s, &dir.0).unwrap_or_else(|e| panic!("{e}")));
    }
    // The variants still being built join when both their server and its trace start.
    for variant in OPTIONAL_VARIANTS {
        let started = Proc::start_server(&server_bin, variant, &database_url, &dir.0)
            .and_then(|s| Proc::start_tracer(&lab_bin, &s, &dir.0).map(|t| (s, t)));
        match started {
            Ok((s, t)) => {
                servers.push(s);
                tracers.push(t);
            }
            Err(e) => eprintln!("note: {variant} left out of this run: {e}"),
        }
    }
    let variants: Vec<String> = servers.iter().map(|s| s.variant.clone()).collect();

    // Prometheus, scraping all of them every second.
    let prom_port = free_port();
    let prom_addr: SocketAddr = format!("127.0.0.1:{prom_port}").parse().unwrap();
    let targets = |ps: &[Proc]| {
        ps.iter()
            .map(|p| format!("'{}'", p.addr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n\
         \x20 - job_name: servers\n    static_configs:\n      - targets: [{}]\n\
         \x20 - job_name: tracer\n    static_configs:\n      - targets: [{}]\n",
        targets(&servers),
        targets(&tracers)
    );
    let config_path = dir.0.join("prometheus.yml");
    fs::write(&config_path, config).unwrap();
    let (prom, prometheus) = start_prometheus(&prometheus, &config_path, prom_addr, &dir.0);
    let expected_up = servers.len() + tracers.len();
    wait_for(Duration::from_secs(20), "every target to be up", || {
        prometheus
            .query("sum(up)", None)
            .ok()
            .and_then(|r| r.first().map(|s| s.1))
            .is_some_and(|v| v as usize == expected_up)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", prometheus.query("up", None).ok()));

    // Load every server at once, and evaluate every query inside the load.
    let loadgen_bin = sibling_binary("loadgen");
    let mix = repo_root().join("dashboards/tfb.mix");
    let load_started = Instant::now();
    let mut loads: Vec<Proc> = servers
        .iter()
        .map(|s| {
            Proc::spawn(
                &format!("loadgen-{}", s.variant),
                Command::new(&loadgen_bin)
                    .args(["-q", "-t", "1", "-c", "8"])
                    .arg("-d")
                    .arg(format!("{}s", LOAD.as_secs()))
                    .arg("--mix")
                    .arg(&mix)
                    .arg(format!("http://{}", s.addr)),
                &dir.0,
            )
        })
        .collect();
    std::thread::sleep(EVALUATE_AT.saturating_sub(load_started.elapsed()));
    let at = unix_now();
    // Let Prometheus scrape past the instant before asking about it.
    std::thread::sleep(Duration::from_millis(2500));

    let evaluation = dashboards::evaluate(
        &prometheus,
        &dashboards_dir(),
        at,
        &REQUIRED_VARIANTS.map(String::from),
        RATE_INTERVAL,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    eprint!("{}", evaluation.summary());
    eprintln!("variants loaded: {}", variants.join(", "));

    for l in &mut loads {
        l.wait(Duration::from_secs(30));
    }
    drop(prom);
    drop(tracers);
    drop(servers);
    assert!(
        evaluation.failures.is_empty(),
        "{} of {} dashboard checks failed:\n{}",
        evaluation.failures.len(),
        evaluation.results.len(),
        evaluation.failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// `lab run --export` into a native Prometheus.

/// Where `dashboards/prometheus/native.yml` scrapes, and `lab run --export` serves.
const EXPORT_SERVER: &str = "127.0.0.1:8080";
const EXPORT_TRACER: &str = "127.0.0.1:9100";

/// docs/dashboards.md, "Without Docker": Debian's Prometheus with
/// `dashboards/prometheus/native.yml` as it is, and a short `lab run --export` of every
/// variant. Each variant ran alone, so each is evaluated at an instant inside its own
/// measured window (from run.json), with `$variant` = All: every query of both dashboards
/// must return data, and data for that variant.
#[test]
fn lab_run_export_lands_in_a_native_prometheus() {
    assert!(
        is_root(),
        "this test runs `lab run` with the eBPF tracer and must run as root; \
         it does not skip: run `cargo test` as root"
    );
    for addr in [EXPORT_SERVER, EXPORT_TRACER] {
        assert!(
            TcpListener::bind(addr).is_ok(),
            "{addr} is taken: `lab run --export` serves there (native.yml scrapes it); \
             stop what listens there and run the test again"
        );
    }
    let prometheus_bin = prometheus_binary();
    let dir = TempDir::new();
    let database_url = db::Database::ready_for_tests().unwrap_or_else(|e| panic!("{e:#}"));

    let prom_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let native = repo_root().join("dashboards/prometheus/native.yml");
    let (prom, prometheus) = start_prometheus(&prometheus_bin, &native, prom_addr, &dir.0);
    // Prometheus applies its targets a few seconds after it is ready; scrapes (of nothing,
    // yet: `up` is 0) must have begun before the first variant's window does.
    wait_for(
        Duration::from_secs(30),
        "native.yml's two targets to be scraped",
        || {
            prometheus
                .query("count(up)", None)
                .ok()
                .and_then(|r| r.first().map(|s| s.1))
                .is_some_and(|n| n == 2.0)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", prom.stderr_tail()));

    let run_json = dir.0.join("run.json");
    let lab_bin = PathBuf::from(env!("CARGO_BIN_EXE_lab"));
    let output = Command::new(&lab_bin)
        .args(["run", "--export", "--workload", "mix", "--tracer", "ebpf"])
        .args([
            "--duration",
            "6s",
            "--warmup",
            "1s",
            "-c",
            "8",
            "--log",
            "buffered",
        ])
        .arg("--out")
        .arg(dir.0.join("results"))
        .arg("--json")
        .arg(&run_json)
        .env("DATABASE_URL", &database_url)
        .output()
        .expect("running lab run --export");
    assert!(
        output.status.success(),
        "lab run --export failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // The last window's last scrape.
    std::thread::sleep(Duration::from_millis(1500));

    let run: Value = serde_json::from_str(&fs::read_to_string(&run_json).unwrap()).unwrap();
    let mut failures = Vec::new();
    let mut evaluated = 0;
    for v in run["variants"].as_array().expect("variants") {
        let variant = v["variant"].as_str().unwrap().to_string();
        let load = &v["rounds"][0]["load"];
        let (start, length) = (
            load["started_unix_s"].as_f64().expect("started_unix_s"),
            load["duration_s"].as_f64().expect("duration_s"),
        );
        // A second before the window ends: rates over the last 5 s are all inside it.
        let at = start + length - 1.0;
        let evaluation = dashboards::evaluate(
            &prometheus,
            &dashboards_dir(),
            at,
            std::slice::from_ref(&variant),
            RATE_INTERVAL,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        eprint!("{}", evaluation.summary());
        evaluated += 1;
        failures.extend(
            evaluation
                .failures
                .iter()
                .map(|f| format!("{variant}: {f}")),
        );
    }
    assert_eq!(evaluated, 4, "run.json should hold the four variants");
    assert!(
        failures.is_empty(),
        "{} dashboard checks failed after lab run --export:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Processes.

/// A child process with its standard error in a file; killed when dropped.
struct Proc {
    name: String,
    variant: String,
    child: Child,
    stderr: PathBuf,
    addr: SocketAddr,
}

impl Proc {
    fn spawn(name: &str, command: &mut Command, dir: &Path) -> Proc {
        let stderr = dir.join(format!("{name}.stderr"));
        let file = fs::File::create(&stderr).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({command:?}): {e}"));
        Proc {
            name: name.to_string(),
            variant: String::new(),
            child,
            stderr,
            addr: "0.0.0.0:0".parse().unwrap(),
        }
    }

    fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits for `marker` + an address on standard error.
    fn announced(&mut self, marker: &str, limit: Duration) -> Result<SocketAddr, String> {
        let deadline = Instant::now() + limit;
        loop {
            let text = fs::read_to_string(&self.stderr).unwrap_or_default();
            if let Some(start) = text.find(marker) {
                let rest = &text[start + marker.len()..];
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == '/')
                    .unwrap_or(rest.len());
                if let Ok(addr) = rest[..end].parse() {
                    return Ok(addr);
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited during start-up ({status}):\n{}",
                    self.name,
                    self.stderr_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not announce its address within {limit:?}:\n{}",
                    self.name,
                    self.stderr_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn start_server(
        binary: &Path,
        variant: &str,
        database_url: &str,
        dir: &Path,
    ) -> Result<Proc, String> {
        let mut p = Proc::spawn(
            &format!("server-{variant}"),
            Command::new(binary)
                .args([
                    "--variant",
                    variant,
                    "--listen",
                    "127.0.0.1:0",
                    "--log",
                    "off",
                ])
                .args(["--database-url", database_url])
                .env_remove("DATABASE_URL"),
            dir,
        );
        p.variant = variant.to_string();
        p.addr = p.announced("serving http://", Duration::from_secs(30))?;
        let addr = p.addr;
        wait_for(Duration::from_secs(30), "/health to answer 200", || {
            http_get(addr, "/health").is_ok_and(|(status, _)| status == 200)
        })
        .map_err(|e| format!("server --variant {variant}: {e}\n{}", p.stderr_tail()))?;
        Ok(p)
    }

    fn start_tracer(lab: &Path, server: &Proc, dir: &Path) -> Result<Proc, String> {
        let mut p = Proc::spawn(
            &format!("tracer-{}", server.variant),
            Command::new(lab)
                .args(["trace", "--backend", "ebpf", "--quiet"])
                .arg("--pid")
                .arg(server.child.id().to_string())
                .args(["--listen", "127.0.0.1:0", "--variant", &server.variant]),
            dir,
        );
        p.variant = server.variant.clone();
        p.addr = p.announced(
            "serving Prometheus metrics on http://",
            Duration::from_secs(30),
        )?;
        Ok(p)
    }

    fn wait(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        TempDir::inside(&std::env::temp_dir())
    }

    fn inside(parent: &Path) -> TempDir {
        let dir = parent.join(format!(
            "syscall-lab-dashboards-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        } else {
            eprintln!("kept {} for a look", self.0.display());
        }
    }
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// Debian's Prometheus with `config`, its data in `dir`, on `addr`; ready to answer.
fn start_prometheus(
    binary: &Path,
    config: &Path,
    addr: SocketAddr,
    dir: &Path,
) -> (Proc, dashboards::Prometheus) {
    let mut prom = Proc::spawn(
        "prometheus",
        Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join(format!("tsdb-{}", addr.port())).display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn"),
        dir,
    );
    prom.addr = addr;
    let prometheus = dashboards::Prometheus::new(&addr.to_string()).unwrap();
    wait_for(Duration::from_secs(20), "Prometheus to be ready", || {
        prometheus
            .get("/-/ready")
            .is_ok_and(|(status, _)| status == 200)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", prom.stderr_tail()));
    (prom, prometheus)
}

fn prometheus_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PROMETHEUS") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin"])
    {
        let p = Path::new(dir).join("prometheus");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "no prometheus binary: this test needs Debian's prometheus package \
         (scripts/install-deps installs it; or set PROMETHEUS=/path/to/prometheus)"
    );
}

/// A binary of this workspace, next to the test executable (`target/<profile>/`).
fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap().to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found; build the workspace's binaries first: cargo build --workspace --bins",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("timed out after {limit:?} waiting for {what}"))
}

// ---------------------------------------------------------------------------------------
// HTTP, just enough for Prometheus's API.

/// GET over HTTP/1.0 (no chunked encoding): status and body.
fn http_get(addr: SocketAddr, target: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    Ok((status, body.to_string()))
}
