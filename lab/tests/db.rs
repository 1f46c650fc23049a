//! `lab db` on a cluster of this test's own (`db::ClusterConfig::scratch`, a free port):
//! the real binary, the real PostgreSQL programs.

use std::path::PathBuf;
use std::process::{Command, Output};

use db::cluster::{PgBinaries, DEFAULT_PORT};
use db::{Cluster, ClusterConfig};

/// Deletes the scratch cluster (stopping it first), also when the test panics.
struct Scratch(ClusterConfig);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(cluster) = Cluster::new(self.0.clone()) {
            let _ = cluster.destroy();
        }
    }
}

fn lab(config: &ClusterConfig, path: &str, args: &[&str]) -> Output {
    lab_on(config, Some(config.port), path, args)
}

/// `lab` on `config`'s data directory with `LAB_PGPORT` set to `port`, or unset.
fn lab_on(config: &ClusterConfig, port: Option<u16>, path: &str, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lab"));
    command
        .args(args)
        .env("PATH", path)
        .env("LAB_PGDATA", &config.data_dir)
        .env_remove("DATABASE_URL");
    match port {
        Some(port) => command.env("LAB_PGPORT", port.to_string()),
        None => command.env_remove("LAB_PGPORT"),
    };
    let output = command.output().expect("running lab");
    assert!(
        output.status.success(),
        "lab {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Issue 16: with `initdb`, `pg_ctl` and `postgres` first on PATH as symlinks into
/// PostgreSQL's own folder (as /usr/local/bin on some machine images, Homebrew and several
/// distributions lay them out), `lab db up` used to find no pg_stat_statements beside the
/// symlinks and start the server without it, silently.
#[test]
fn finds_pg_stat_statements_behind_a_folder_of_symlinks() {
    let real = PgBinaries::locate()
        .unwrap_or_else(|e| panic!("this test needs PostgreSQL's server programs: {e:#}"))
        .bindir;
    assert!(
        real.join("pg_config").is_file() || real.parent().is_some_and(|p| p.join("lib").is_dir()),
        "PostgreSQL in {} has neither pg_config nor lib/ beside it: install it the usual way (scripts/install-deps)",
        real.display()
    );
    let links = std::env::temp_dir().join(format!("syscall-lab-pg-links-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&links);
    std::fs::create_dir_all(&links).unwrap();
    for program in ["initdb", "pg_ctl", "postgres"] {
        std::os::unix::fs::symlink(real.join(program), links.join(program)).unwrap();
    }
    let path = std::env::join_paths(
        std::iter::once(links.clone()).chain(
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<PathBuf>>())
                .unwrap_or_default(),
        ),
    )
    .unwrap();
    let path = path.to_str().unwrap();

    let config = ClusterConfig::scratch(&format!("symlinks-{}", std::process::id()), free_port());
    let _scratch = Scratch(config.clone());

    let up = lab(&config, path, &["db", "up"]);
    let said = String::from_utf8_lossy(&up.stderr);
    assert!(
        said.contains("query counting (pg_stat_statements): on"),
        "lab db up:\n{said}"
    );

    assert_eq!(
        show(&config.url(), "shared_preload_libraries"),
        "pg_stat_statements"
    );

    let status = lab(&config, path, &["db", "status", "--json", "-"]);
    let status: serde_json::Value =
        serde_json::from_slice(&status.stdout).expect("lab db status --json prints JSON");
    assert_eq!(
        status["query_counting"],
        serde_json::json!({"available": true, "enabled": true, "reason": null}),
        "{status:#}"
    );
    let text = lab(&config, path, &["db", "status"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("query counting (pg_stat_statements): on"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    let _ = std::fs::remove_dir_all(&links);
}

/// A port nothing listens on, other than the default one (which the tests below leave
/// unset on purpose).
fn free_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port != DEFAULT_PORT {
            return port;
        }
    }
}

/// A setting of the server at `url`, connecting there.
fn show(url: &str, name: &str) -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(url).await?;
            sqlx::query_scalar("SELECT current_setting($1)")
                .bind(name)
                .fetch_one(&mut conn)
                .await
        })
        .unwrap_or_else(|e| panic!("asking the server at {}: {e}", db::redact(url)))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A cluster started with `LAB_PGPORT=N` keeps port N until `lab db down`. `lab db up`,
/// `status` and `url` without `LAB_PGPORT` used to find its `postmaster.pid`, call it
/// running, and hand out the default port 54320: "connection refused" (or, worse, another
/// cluster that listens there). Now they use the port it listens on and say so.
#[test]
fn a_cluster_started_on_another_port_is_used_on_that_port() {
    let path = std::env::var("PATH").unwrap_or_default();
    let config = ClusterConfig::scratch(&format!("other-port-{}", std::process::id()), free_port());
    let _scratch = Scratch(config.clone());
    let port = config.port.to_string();
    let url = config.url();
    let names_both_ports = |said: &str| {
        said.contains("note: ") && said.contains(&port) && said.contains(&DEFAULT_PORT.to_string())
    };

    lab(&config, &path, &["db", "up"]);

    let printed = lab_on(&config, None, &path, &["db", "url"]);
    assert_eq!(
        text(&printed.stdout).trim(),
        url,
        "lab db url without LAB_PGPORT"
    );
    let said = text(&printed.stderr);
    assert!(names_both_ports(&said), "lab db url said:\n{said}");
    assert_eq!(show(text(&printed.stdout).trim(), "port"), port);

    let up = text(&lab_on(&config, None, &path, &["db", "up"]).stderr);
    assert!(
        up.contains(&format!("already running on 127.0.0.1:{port}"))
            && up.contains(&format!("export DATABASE_URL={url}\n"))
            && names_both_ports(&up),
        "lab db up without LAB_PGPORT:\n{up}"
    );

    let status = lab_on(&config, None, &path, &["db", "status", "--json", "-"]);
    let status: serde_json::Value =
        serde_json::from_slice(&status.stdout).expect("lab db status --json prints JSON");
    assert_eq!(status["running"], true, "{status:#}");
    assert_eq!(status["port"], config.port, "{status:#}");
    assert_eq!(status["url"], url, "{status:#}");
    assert_eq!(status["worlds"], 10_000, "{status:#}");
    let notice = status["port_notice"].as_str().unwrap_or_default();
    assert!(names_both_ports(&format!("note: {notice}")), "{status:#}");
    let status = text(&lab_on(&config, None, &path, &["db", "status"]).stdout);
    assert!(
        status.contains(&format!("port: {port}\n")) && names_both_ports(&status),
        "lab db status without LAB_PGPORT:\n{status}"
    );

    // Stopped, it starts on the port asked for: nothing left to say.
    let down = text(&lab_on(&config, None, &path, &["db", "down"]).stderr);
    assert!(
        down.contains(&format!("127.0.0.1:{port} stopped")),
        "lab db down without LAB_PGPORT:\n{down}"
    );
    let printed = lab_on(&config, None, &path, &["db", "url"]);
    assert!(
        text(&printed.stdout).contains(&format!(":{DEFAULT_PORT}/"))
            && !text(&printed.stderr).contains("note: "),
        "lab db url once stopped:\n{}{}",
        text(&printed.stdout),
        text(&printed.stderr)
    );
}
