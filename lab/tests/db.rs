//! `lab db` on a cluster of this test's own (`db::ClusterConfig::scratch`, a free port):
//! the real binary, the real PostgreSQL programs.

use std::path::PathBuf;
use std::process::{Command, Output};

use db::cluster::PgBinaries;
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
    let output = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(args)
        .env("PATH", path)
        .env("LAB_PGDATA", &config.data_dir)
        .env("LAB_PGPORT", config.port.to_string())
        .env_remove("DATABASE_URL")
        .output()
        .expect("running lab");
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

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = ClusterConfig::scratch(&format!("symlinks-{}", std::process::id()), port);
    let _scratch = Scratch(config.clone());

    let up = lab(&config, path, &["db", "up"]);
    let said = String::from_utf8_lossy(&up.stderr);
    assert!(
        said.contains("query counting (pg_stat_statements): on"),
        "lab db up:\n{said}"
    );

    let preload: String = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&config.url()).await?;
            sqlx::query_scalar("SHOW shared_preload_libraries")
                .fetch_one(&mut conn)
                .await
        })
        .expect("asking the server");
    assert_eq!(preload, "pg_stat_statements");

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
