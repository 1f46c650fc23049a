//! The workshop exercises' effects, tested: each exercise runs through the same code as
//! `lab workshop N` (`lab::workshop::run_exercise`), against the real servers, the test
//! suites' PostgreSQL (`db::Database::ready_for_tests`, or DATABASE_URL) and the real eBPF tracer, and every expectation in
//! `lab::workshop::EXERCISES` must hold. Counts per request only, never times.
//!
//! Needs root for eBPF (CI runs as root) and the workspace's binaries
//! (`cargo build --bins`). Runs take turns (one mutex): the windows are short (2 s, 1 s
//! warm-up) and would disturb each other on a 2-core machine.

use std::sync::Mutex;

use lab::workshop::{run_exercise, Settings, EXERCISES};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the workshop tests trace with eBPF and need root (or CAP_BPF + CAP_PERFMON): run them as root"
    );
}

fn check(number: u32) {
    require_root();
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = std::env::temp_dir().join(format!(
        "syscall-lab-workshop-{number}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    // The test suites' PostgreSQL, stopped by the last test process using it.
    let database_url = db::Database::ready_for_tests().unwrap_or_else(|e| panic!("{e:#}"));
    let settings = Settings {
        database_url: Some(database_url),
        ..Settings::short(out.clone())
    };
    let outcome = run_exercise(number, &settings)
        .unwrap_or_else(|e| panic!("exercise {number} did not run: {e:#}"));
    let comparison = outcome
        .comparison
        .as_ref()
        .map(lab::compare_cmd::render)
        .unwrap_or_default();
    let checks = outcome.render_checks();
    eprintln!("exercise {number}:\n{comparison}\n{checks}");
    assert!(
        outcome.passed(),
        "exercise {number} ({}): the expected effect did not hold:\n{checks}\n{comparison}",
        outcome.title
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn every_exercise_has_a_test_and_a_doc_page() {
    let numbers: Vec<u32> = EXERCISES.iter().map(|e| e.number).collect();
    assert_eq!(numbers, (1..=EXERCISES.len() as u32).collect::<Vec<_>>());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let this = include_str!("workshops.rs");
    for e in EXERCISES {
        assert!(root.join(e.doc()).is_file(), "no page {}", e.doc());
        assert!(
            this.contains(&format!("check({});", e.number)),
            "exercise {} has no test here",
            e.number
        );
    }
}

#[test]
fn exercise_01_cost_of_a_syscall() {
    check(1);
}

#[test]
fn exercise_02_reading_an_attribution() {
    check(2);
}

#[test]
fn exercise_03_logging() {
    check(3);
}

#[test]
fn exercise_04_prepared_statements() {
    check(4);
}

#[test]
fn exercise_05_bulk_updates() {
    check(5);
}

#[test]
fn exercise_06_keep_alive() {
    check(6);
}

#[test]
fn exercise_07_pipelining() {
    check(7);
}

#[test]
fn exercise_08_split_writes() {
    check(8);
}

#[test]
fn exercise_09_threads() {
    check(9);
}

#[test]
fn exercise_10_io_uring() {
    check(10);
}

#[test]
fn exercise_11_sqpoll() {
    check(11);
}

#[test]
fn exercise_12_observer_effect() {
    check(12);
}

#[test]
fn exercise_13_registered_buffers() {
    check(13);
}

#[test]
fn exercise_14_strace() {
    check(14);
}

#[test]
fn exercise_15_runtime_per_core() {
    check(15);
}

/// Separate hosts (network namespaces, the delaying forwarder on this kernel): the
/// database 0, 0.5 and 2 ms away. Needs root for the namespaces as well.
#[test]
fn exercise_16_database_distance() {
    check(16);
}
