//! `lab syscost` end to end: the JSON it writes has every entry, each with a positive
//! figure, the method, and the syscalls per call it expects. Times are never compared
//! (they depend on the machine); with `--verify` (root: eBPF) the counted syscalls per
//! call must match the expected ones: 1 for each real syscall, 0 for the vDSO clock.

use std::process::Command;

fn lab() -> std::path::PathBuf {
    servers::launch::sibling_binary("lab").unwrap_or_else(|e| panic!("{e:#}"))
}

fn syscost(extra: &[&str]) -> serde_json::Value {
    let output = Command::new(lab())
        .args([
            "syscost",
            "--iterations",
            "2000",
            "--batches",
            "3",
            "--json",
            "-",
        ])
        .args(extra)
        .output()
        .expect("running lab syscost");
    assert!(
        output.status.success(),
        "lab syscost failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json - prints JSON")
}

#[test]
fn the_json_has_every_entry_with_a_positive_figure_and_the_method() {
    let v = syscost(&[]);
    assert_eq!(v["schema"], "syscall-lab/syscost");
    assert_eq!(v["iterations_per_batch"], 2000);
    assert_eq!(v["batches"], 3);
    let method = v["method"].as_str().expect("method");
    assert!(
        method.contains("warm-up") && method.contains("median"),
        "{method}"
    );
    let entries = v["entries"].as_array().expect("entries");
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, lab::syscost::ENTRY_NAMES);
    for e in entries {
        let ns = &e["ns_per_call"];
        for key in ["median", "min", "max"] {
            assert!(ns[key].as_f64().unwrap() > 0.0, "{}: {key} {ns}", e["name"]);
        }
        assert!(e["call"].as_str().is_some_and(|c| !c.is_empty()));
        assert!(e["expected_syscalls_per_call"].as_f64().is_some());
        assert!(
            e["traced_syscalls_per_call"].is_null(),
            "no --verify, no count"
        );
    }
    let expected = |name: &str| {
        entries.iter().find(|e| e["name"] == name).unwrap()["expected_syscalls_per_call"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(expected("clock_gettime"), 0.0, "the vDSO makes no syscall");
    assert_eq!(expected("getpid"), 1.0);
}

#[test]
fn only_runs_the_entries_named() {
    let v = syscost(&["--only", "getpid,clock_gettime"]);
    let names: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["clock_gettime", "getpid"]);
}

#[test]
fn verify_counts_one_syscall_per_call_and_none_for_the_vdso() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "--verify traces with eBPF and needs root: run this test as root"
    );
    let v = syscost(&["--verify"]);
    for e in v["entries"].as_array().unwrap() {
        let expected = e["expected_syscalls_per_call"].as_f64().unwrap();
        let traced = e["traced_syscalls_per_call"]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: no traced count", e["name"]));
        if expected == 0.0 {
            // The loop entries' own syscalls (the "done" line) are a few per 2000 calls.
            assert!(traced <= 0.01, "{}: {traced} syscalls per call", e["name"]);
        } else {
            assert!(
                traced >= expected * 0.99 && traced <= expected * 1.05,
                "{}: {traced} syscalls per call, expected {expected}",
                e["name"]
            );
        }
    }
}
