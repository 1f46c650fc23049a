//! `db::last_user`: processes sharing a cluster, the last to exit stops it, also when its
//! tests panic. The users are this test binary started again as child processes (the
//! ignored `user` test below), each joining a scratch cluster of this test's own and
//! exiting when told to, normally or by a panicking test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use db::{Cluster, ClusterConfig};

const CONFIG_DIR: &str = "LAST_USER_DATA_DIR";
const CONFIG_PORT: &str = "LAST_USER_PORT";
const GO: &str = "LAST_USER_GO";
const PANIC: &str = "LAST_USER_PANIC";

/// Runs only as a child of `the_last_user_stops_the_cluster`.
#[test]
#[ignore = "a user process started by the_last_user_stops_the_cluster"]
fn user() {
    let data_dir = PathBuf::from(std::env::var(CONFIG_DIR).expect("started by the test"));
    let port = std::env::var(CONFIG_PORT).unwrap().parse().unwrap();
    let config = ClusterConfig {
        data_dir,
        ..ClusterConfig::scratch("unused", port)
    };
    db::last_user::join(&config).expect("joining the cluster");
    let go = PathBuf::from(std::env::var(GO).unwrap());
    std::fs::write(go.with_extension("joined"), "").unwrap();
    while !go.exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::env::var_os(PANIC).is_none(),
        "this user's test fails, as asked"
    );
}

struct User {
    child: Child,
    go: PathBuf,
}

impl User {
    fn start(config: &ClusterConfig, dir: &Path, name: &str, panics: bool) -> User {
        let go = dir.join(name);
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--ignored", "--exact", "user", "--test-threads", "1"])
            .env(CONFIG_DIR, &config.data_dir)
            .env(CONFIG_PORT, config.port.to_string())
            .env(GO, &go)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(go_stderr(&go)).unwrap());
        if panics {
            command.env(PANIC, "1");
        }
        let user = User {
            child: command.spawn().unwrap(),
            go,
        };
        let joined = user.go.with_extension("joined");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !joined.exists() {
            assert!(
                Instant::now() < deadline,
                "user {name} did not join: {}",
                std::fs::read_to_string(go_stderr(&user.go)).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        user
    }

    /// Tells it to exit; its exit code, and what it said.
    fn finish(mut self) -> (Option<i32>, String) {
        std::fs::write(&self.go, "").unwrap();
        let status = self.child.wait().unwrap();
        let said = std::fs::read_to_string(go_stderr(&self.go)).unwrap_or_default();
        (status.code(), said)
    }
}

fn go_stderr(go: &Path) -> PathBuf {
    go.with_extension("stderr")
}

fn running(config: &ClusterConfig) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", config.port)).is_ok()
}

/// Deletes the scratch cluster, also when the test panics.
struct Scratch(ClusterConfig);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(cluster) = Cluster::new(self.0.clone()) {
            let _ = cluster.destroy();
        }
        let _ = std::fs::remove_file(self.0.data_dir.with_extension("users"));
    }
}

#[test]
fn the_last_user_stops_the_cluster() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = ClusterConfig::scratch(&format!("last-user-{}", std::process::id()), port);
    let _scratch = Scratch(config.clone());
    let dir = std::env::temp_dir().join(format!("syscall-lab-last-user-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let first = User::start(&config, &dir, "first", true);
    let second = User::start(&config, &dir, "second", false);
    assert!(running(&config), "the users' cluster is not running");

    // The first user's test panics: the second still uses the cluster.
    let (code, said) = first.finish();
    assert_eq!(code, Some(101), "the panicking user:\n{said}");
    assert!(running(&config), "stopped while a user was left");

    // The last user leaves: the cluster stops. A later user starts it again.
    let (code, said) = second.finish();
    assert_eq!(code, Some(0), "the second user:\n{said}");
    assert!(!running(&config), "the last user left the cluster running");
    let again = User::start(&config, &dir, "again", true);
    assert!(running(&config), "a later user did not start it again");
    let (code, said) = again.finish();
    assert_eq!(code, Some(101), "the later user:\n{said}");
    assert!(
        !running(&config),
        "the last user, whose test panicked, left the cluster running"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
