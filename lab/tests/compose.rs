//! docker-compose.yml and the Dockerfile, checked without a Docker engine.
//!
//! - Debian's `docker-compose` (v1, which validates the file against the Compose schema
//!   without talking to an engine) must accept the file: `docker-compose config -q`.
//! - The file is read (YAML to JSON by the PyYAML that docker-compose itself depends on)
//!   and everything it names that lives in this repository must exist: build contexts
//!   and Dockerfiles, bind-mounted files and folders, Grafana's provisioning paths, the
//!   scripts the services run; Prometheus's scrape targets must be services of the file,
//!   at the ports those services listen on; published ports must be unique.
//! - The Dockerfile is multi-stage, copies only paths that exist, and stubs every
//!   workspace member in its dependency layer.
//!
//! Needs the `docker-compose` and `prometheus` (for promtool) packages;
//! `scripts/install-deps` installs both.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const VARIANTS: [&str; 4] = ["thread-per-request", "thread-pool", "epoll", "io-uring"];
const DATABASE_URL: &str = "postgres://benchmarkdbuser:benchmarkdbpass@postgres:5432/hello_world";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lab/ has a parent")
        .to_path_buf()
}

fn tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/local/bin"])
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found: this test needs it (scripts/install-deps installs it)");
}

/// A YAML file as JSON, read by the system Python's PyYAML (a dependency of Debian's
/// docker-compose), so that anchors and merge keys are resolved as Compose resolves them.
fn yaml(path: &Path) -> Value {
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import yaml"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("a python3 with PyYAML (Debian: python3-yaml, installed with docker-compose)");
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "{} is not valid YAML:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python's JSON")
}

fn compose() -> Value {
    yaml(&repo_root().join("docker-compose.yml"))
}

fn services(c: &Value) -> &serde_json::Map<String, Value> {
    c["services"].as_object().expect("services")
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `environment` as a map, whether written as a map or a list of `K=V`.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// (source, target) of each volume of a service, short or long syntax.
fn volumes(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| match v {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                (
                    parts[0].to_string(),
                    parts.get(1).unwrap_or(&"").to_string(),
                )
            }
            other => (
                other["source"].as_str().unwrap_or_default().to_string(),
                other["target"].as_str().unwrap_or_default().to_string(),
            ),
        })
        .collect()
}

#[test]
fn docker_compose_accepts_the_file() {
    let root = repo_root();
    let out = Command::new(tool("docker-compose"))
        .current_dir(&root)
        .args(["--project-directory", "."])
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .env_remove("DOCKER_HOST")
        .output()
        .expect("running docker-compose");
    assert!(
        out.status.success(),
        "docker-compose config rejects docker-compose.yml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The comparison lives in a profile; the file must also be valid with it enabled.
    let out = Command::new(tool("docker-compose"))
        .current_dir(&root)
        .args(["--project-directory", ".", "--profile", "lab"])
        .args(["-f", "docker-compose.yml", "config", "--services"])
        .output()
        .expect("running docker-compose");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        listed.contains("lab"),
        "services with --profile lab: {listed:?}"
    );
}

#[test]
fn everything_the_compose_file_names_exists() {
    let root = repo_root();
    let c = compose();
    let svcs = services(&c);
    let declared_volumes: BTreeSet<String> = c["volumes"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();

    // The expected services.
    let mut expected = vec![
        "postgres".to_string(),
        "migrate".into(),
        "prometheus".into(),
        "grafana".into(),
        "lab".into(),
    ];
    for v in VARIANTS {
        expected.push(format!("server-{v}"));
        expected.push(format!("tracer-{v}"));
    }
    for name in &expected {
        assert!(svcs.contains_key(name), "no service {name}");
    }

    let mut published = BTreeMap::new();
    let mut built_images = BTreeSet::new();
    for (name, s) in svcs {
        // Every service runs an image, built here or pulled by a pinned tag.
        let image = s["image"].as_str().unwrap_or_default();
        if !s["build"].is_null() {
            let (context, dockerfile) = match &s["build"] {
                Value::String(ctx) => (ctx.clone(), "Dockerfile".to_string()),
                b => (
                    b["context"].as_str().unwrap_or(".").to_string(),
                    b["dockerfile"].as_str().unwrap_or("Dockerfile").to_string(),
                ),
            };
            let ctx = root.join(&context);
            assert!(
                ctx.is_dir(),
                "{name}: build context {context} does not exist"
            );
            assert!(
                ctx.join(&dockerfile).is_file(),
                "{name}: {dockerfile} does not exist in {context}"
            );
            built_images.insert(image.to_string());
        } else {
            assert!(
                image.contains(':') && !image.ends_with(":latest"),
                "{name}: a pulled image needs a pinned tag, not {image:?}"
            );
        }

        // Bind mounts: relative paths must be in the repository, absolute ones are the
        // kernel's interfaces the tracer needs; anything else is a declared named volume.
        for (source, target) in volumes(s) {
            assert!(target.starts_with('/'), "{name}: volume target {target:?}");
            if source.starts_with("./") || source.starts_with("../") {
                let p = root.join(&source);
                assert!(p.exists(), "{name}: bind-mounted {source} does not exist");
            } else if source.starts_with('/') {
                assert!(
                    source.starts_with("/sys/kernel/"),
                    "{name}: host path {source} outside the repository"
                );
            } else {
                assert!(
                    declared_volumes.contains(&source),
                    "{name}: volume {source} is not declared under volumes:"
                );
            }
        }

        // Published ports: loopback only, each host port once.
        for p in strings(&s["ports"]) {
            let parts: Vec<&str> = p.split(':').collect();
            assert_eq!(
                parts.len(),
                3,
                "{name}: port {p:?} is not HOST_IP:PORT:PORT"
            );
            assert_eq!(
                parts[0], "127.0.0.1",
                "{name}: {p} is published beyond loopback"
            );
            if let Some(other) = published.insert(parts[1].to_string(), name.clone()) {
                panic!("host port {} published by {other} and {name}", parts[1]);
            }
        }
    }
    assert_eq!(
        built_images.len(),
        1,
        "every service built here shares one image: {built_images:?}"
    );

    // PostgreSQL: the official image, pg_stat_statements preloaded, the lab's credentials.
    let pg = &svcs["postgres"];
    assert!(pg["image"].as_str().unwrap().starts_with("postgres:"));
    assert!(strings(&pg["command"])
        .iter()
        .any(|a| a == "shared_preload_libraries=pg_stat_statements"));
    let env = environment(pg);
    assert_eq!(env["POSTGRES_USER"], "benchmarkdbuser");
    assert_eq!(env["POSTGRES_PASSWORD"], "benchmarkdbpass");
    assert_eq!(env["POSTGRES_DB"], "hello_world");
    assert!(
        !pg["healthcheck"].is_null(),
        "postgres: the migration waits for its health"
    );

    // The migration job.
    let m = &svcs["migrate"];
    assert_eq!(strings(&m["command"]), ["lab", "db", "up"]);
    assert_eq!(environment(m)["DATABASE_URL"], DATABASE_URL);
    assert_eq!(
        m["depends_on"]["postgres"]["condition"], "service_healthy",
        "migrate waits for PostgreSQL"
    );

    // The servers and their tracers.
    for v in VARIANTS {
        let s = &svcs[&format!("server-{v}")];
        let cmd = strings(&s["command"]);
        let flag = |f: &str| {
            cmd.iter()
                .position(|a| a == f)
                .and_then(|i| cmd.get(i + 1))
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(cmd[0], "server", "server-{v}");
        assert_eq!(flag("--variant"), v, "server-{v}");
        assert_eq!(flag("--listen"), "0.0.0.0:8080", "server-{v}");
        assert_eq!(flag("--database-url"), DATABASE_URL, "server-{v}");
        assert_eq!(
            s["depends_on"]["migrate"]["condition"], "service_completed_successfully",
            "server-{v} starts after the migration"
        );
        assert_eq!(
            environment(s)["SYSCALL_LAB_SERVICE"],
            format!("server-{v}"),
            "server-{v}: trace-variant finds the process by this variable"
        );
        let log_file = flag("--log-file");
        if !log_file.is_empty() {
            let dir = Path::new(&log_file).parent().unwrap().to_str().unwrap();
            assert!(
                volumes(s).iter().any(|(_, t)| t == dir),
                "server-{v}: the log folder {dir} is a shared volume"
            );
        }

        let t = &svcs[&format!("tracer-{v}")];
        // Least privilege that works from Docker 20.10 on: `privileged` asks for every
        // capability (engines missing one refuse the container), and a memlock ulimit
        // needs CAP_SYS_RESOURCE in the daemon (dashboards/docker/old-kernel.yml has it).
        assert!(
            t["privileged"].is_null() || t["privileged"] == false,
            "tracer-{v} must not be privileged"
        );
        assert!(
            t["ulimits"].is_null(),
            "tracer-{v}: no ulimits by default (old-kernel.yml adds memlock)"
        );
        let caps: BTreeSet<String> = strings(&t["cap_add"]).into_iter().collect();
        assert_eq!(
            caps,
            BTreeSet::from(["SYS_ADMIN".to_string(), "SYS_PTRACE".to_string()]),
            "tracer-{v}: the capabilities the eBPF tracer needs, and Docker 20.10 knows"
        );
        assert_eq!(t["pid"], "host", "tracer-{v} sees the host's pids");
        assert!(
            volumes(t)
                .iter()
                .any(|(s, d)| s == "/sys/kernel/tracing" && d == "/sys/kernel/tracing"),
            "tracer-{v} mounts tracefs"
        );
        assert_eq!(strings(&t["command"]), ["trace-variant", v]);
        assert_eq!(environment(t)["TRACE_LISTEN"], "0.0.0.0:9100");
        // The tracer sees the server's log file at the same path.
        for (src, dst) in volumes(s) {
            if dst.starts_with("/var/log") {
                assert!(
                    volumes(t).iter().any(|(s2, d2)| *s2 == src && *d2 == dst),
                    "tracer-{v} mounts {src} at {dst} as server-{v} does"
                );
            }
        }
    }
    let uring = &svcs["server-io-uring"];
    assert!(
        strings(&uring["security_opt"])
            .iter()
            .any(|o| o == "seccomp:unconfined" || o == "seccomp=unconfined"),
        "server-io-uring needs seccomp:unconfined (Docker's default profile blocks io_uring)"
    );
    assert!(
        uring["ulimits"].is_null(),
        "server-io-uring: no ulimits by default (old-kernel.yml adds memlock)"
    );
    // The old-kernel override is a valid addition to the file.
    let out = Command::new(tool("docker-compose"))
        .current_dir(repo_root())
        .args([
            "-f",
            "docker-compose.yml",
            "-f",
            "dashboards/docker/old-kernel.yml",
            "config",
            "-q",
        ])
        .output()
        .expect("running docker-compose config");
    assert!(
        out.status.success(),
        "docker-compose rejects dashboards/docker/old-kernel.yml:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Prometheus: its configuration is the repository's, and it scrapes services of this
    // file at the ports they listen on.
    let prom = &svcs["prometheus"];
    let prom_config = volumes(prom)
        .into_iter()
        .find(|(_, t)| t == "/etc/prometheus/prometheus.yml")
        .expect("prometheus mounts /etc/prometheus/prometheus.yml")
        .0;
    let prom_path = root.join(&prom_config);
    let pc = yaml(&prom_path);
    let mut scraped = BTreeSet::new();
    for job in pc["scrape_configs"].as_array().expect("scrape_configs") {
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            for target in strings(&sc["targets"]) {
                let (host, port) = target.rsplit_once(':').expect("HOST:PORT");
                assert!(
                    svcs.contains_key(host),
                    "Prometheus scrapes {host}, not a service"
                );
                let expected_port = if host.starts_with("server-") {
                    "8080"
                } else if host.starts_with("tracer-") {
                    "9100"
                } else {
                    port
                };
                assert_eq!(port, expected_port, "Prometheus scrapes {target}");
                scraped.insert(host.to_string());
            }
        }
    }
    for v in VARIANTS {
        for s in [format!("server-{v}"), format!("tracer-{v}")] {
            assert!(scraped.contains(&s), "Prometheus does not scrape {s}");
        }
    }
    // Every Prometheus configuration of the repository (compose's and the native one).
    let promtool = tool("promtool");
    let mut configs = yaml_files(&root.join("dashboards/prometheus"));
    assert!(configs.contains(&prom_path), "{}", prom_path.display());
    configs.sort();
    for config in configs {
        let out = Command::new(&promtool)
            .args(["check", "config"])
            .arg(&config)
            .output()
            .expect("running promtool");
        assert!(
            out.status.success(),
            "promtool check config {}:\n{}{}",
            config.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Grafana: provisioned from dashboards/grafana, anonymous viewers, on localhost:3000.
    let g = &svcs["grafana"];
    let genv = environment(g);
    assert_eq!(genv["GF_AUTH_ANONYMOUS_ENABLED"], "true");
    assert_eq!(genv["GF_AUTH_ANONYMOUS_ORG_ROLE"], "Viewer");
    assert!(strings(&g["ports"]).contains(&"127.0.0.1:3000:3000".to_string()));
    let gvols = volumes(g);
    let mount = |target: &str| {
        gvols
            .iter()
            .find(|(_, t)| t == target)
            .map(|(s, _)| root.join(s))
            .unwrap_or_else(|| panic!("grafana mounts nothing at {target}"))
    };
    let provisioning = mount("/etc/grafana/provisioning");
    let datasources: Vec<PathBuf> = yaml_files(&provisioning.join("datasources"));
    assert!(!datasources.is_empty(), "no datasource provisioning file");
    let mut uids = BTreeSet::new();
    for f in &datasources {
        for ds in yaml(f)["datasources"].as_array().into_iter().flatten() {
            uids.insert(
                ds["uid"]
                    .as_str()
                    .expect("a pinned datasource uid")
                    .to_string(),
            );
            let url = ds["url"].as_str().unwrap_or_default();
            let host = url
                .trim_start_matches("http://")
                .split([':', '/'])
                .next()
                .unwrap_or_default();
            assert!(
                svcs.contains_key(host),
                "datasource {url}: {host} is not a service"
            );
        }
    }
    let providers: Vec<PathBuf> = yaml_files(&provisioning.join("dashboards"));
    assert!(!providers.is_empty(), "no dashboard provisioning file");
    for f in &providers {
        for p in yaml(f)["providers"].as_array().into_iter().flatten() {
            let path = p["options"]["path"]
                .as_str()
                .expect("provider options.path");
            // The provider's path inside the container is a mount of a repository folder
            // that holds the dashboards.
            let host_dir = mount(path);
            let dashboards: Vec<PathBuf> = fs::read_dir(&host_dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            assert!(
                dashboards.len() >= 2,
                "{}: dashboards missing",
                host_dir.display()
            );
            for d in dashboards {
                let text = fs::read_to_string(&d).unwrap();
                let json: Value = serde_json::from_str(&text).unwrap();
                let mut used = BTreeSet::new();
                collect_uids(&json, &mut used);
                for uid in used {
                    assert!(
                        uids.contains(&uid),
                        "{} uses datasource uid {uid}, not provisioned ({uids:?})",
                        d.display()
                    );
                }
            }
        }
    }
    if let Some(home) = genv.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
        let (_, rel) = gvols
            .iter()
            .find_map(|(s, t)| home.strip_prefix(t.as_str()).map(|r| (s, r)))
            .expect("the home dashboard is in a mounted folder");
        let (src, _) = gvols
            .iter()
            .find(|(_, t)| home.starts_with(t.as_str()))
            .unwrap();
        assert!(
            root.join(src).join(rel.trim_start_matches('/')).is_file(),
            "home dashboard {home} does not exist"
        );
    }

    // The comparison: a profile, so that `docker compose up` does not start it.
    let lab = &svcs["lab"];
    assert!(strings(&lab["profiles"]).contains(&"lab".to_string()));
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    v.sort();
    v
}

fn collect_uids(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(ds) = m.get("datasource") {
                if let Some(uid) = ds["uid"].as_str() {
                    out.insert(uid.to_string());
                }
            }
            m.values().for_each(|x| collect_uids(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_uids(x, out)),
        _ => {}
    }
}

#[test]
fn the_dockerfile_builds_what_the_compose_file_runs() {
    let root = repo_root();
    let text = fs::read_to_string(root.join("Dockerfile")).expect("a Dockerfile at the root");
    // Instructions, continuation lines joined, comments dropped.
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
        } else {
            current.push_str(t);
            instructions.push(std::mem::take(&mut current));
        }
    }
    let froms: Vec<&String> = instructions
        .iter()
        .filter(|i| i.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "the Dockerfile is multi-stage");
    assert!(
        froms[0].contains("rust:1-bookworm"),
        "builder: {}",
        froms[0]
    );
    assert!(
        froms.last().unwrap().contains("debian:bookworm-slim"),
        "runtime: {}",
        froms.last().unwrap()
    );

    // Every COPY from the build context names something that exists, and nothing under
    // target/ (the .dockerignore keeps it out of the context).
    for i in instructions.iter().filter(|i| i.starts_with("COPY ")) {
        let words: Vec<&str> = i.split_whitespace().skip(1).collect();
        if words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        let paths: Vec<&str> = words
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for src in &paths[..paths.len() - 1] {
            assert!(
                root.join(src).exists(),
                "Dockerfile copies {src}, which does not exist"
            );
        }
    }
    let dockerignore = fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    assert!(dockerignore.lines().any(|l| l.trim().ends_with("target")));

    // The dependency layer stubs every workspace member.
    let manifest = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members_line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members");
    let members: Vec<&str> = members_line.split('"').skip(1).step_by(2).collect();
    assert!(!members.is_empty());
    for m in members {
        assert!(
            text.contains(&format!("COPY {m}/Cargo.toml {m}/")),
            "the Dockerfile's dependency layer lacks {m}/Cargo.toml"
        );
        assert!(
            text.contains(&format!("COPY {m} {m}")),
            "the Dockerfile lacks COPY {m} {m}"
        );
    }
    for bin in ["server", "lab", "loadgen"] {
        assert!(
            text.contains(&format!("target/release/{bin}")),
            "the image lacks {bin}"
        );
    }

    // The scripts the services run are in the image, executable and valid bash.
    let c = compose();
    let mut commands = BTreeSet::new();
    for s in services(&c).values() {
        if let Some(first) = strings(&s["command"]).first() {
            commands.insert(first.clone());
        }
    }
    for cmd in commands {
        if ["server", "lab", "loadgen", "postgres"].contains(&cmd.as_str()) || cmd.starts_with('-')
        {
            continue;
        }
        let script = root.join("dashboards/docker").join(&cmd);
        assert!(
            script.is_file(),
            "a service runs {cmd}, not in dashboards/docker/"
        );
        assert!(
            text.contains(&format!("dashboards/docker/{cmd}")),
            "the Dockerfile does not copy {cmd}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&script).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{} is not executable", script.display());
        let out = Command::new("bash")
            .arg("-n")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
