//! The built binary: bad input exits 2 with one clear message before any load is sent;
//! a good run prints the summary and writes JSON and an HDR interval log.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::Ordering;

fn loadgen(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("loadgen-test-{}-{name}", std::process::id()))
}

#[test]
fn bad_input_exits_2_before_any_load() {
    let server = common::ok_server();
    let url = server.url("/");
    let closed_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let unreachable = format!("http://127.0.0.1:{closed_port}/");
    let bad_mix = tmp("bad.mix");
    std::fs::write(&bad_mix, "1 /plaintext\ntwo /json\n").unwrap();
    let bad_mix = bad_mix.to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["not a url"], "invalid URL"),
        (vec!["ftp://127.0.0.1/"], "invalid URL"),
        (vec!["https://127.0.0.1/"], "https is not supported"),
        (vec!["http://127.0.0.1:99999/"], "bad port"),
        (vec![&unreachable], "cannot connect"),
        (vec!["-c", "0", &url], "connections"),
        (vec!["-c", "-4", &url], "-4"),
        (vec!["-t", "0", &url], "threads"),
        (vec!["-t", "4", "-c", "2", &url], "cannot exceed"),
        (vec!["-d", "0s", &url], "duration"),
        (vec!["-d", "-1s", &url], "duration"),
        (vec!["-d", "ten", &url], "invalid duration"),
        (vec!["-n", "0", &url], "request count"),
        (vec!["-p", "0", &url], "pipeline"),
        (vec!["--rate", "0", &url], "rate"),
        (vec!["--rate", "-5", &url], "rate"),
        (vec!["--timeout", "0s", &url], "timeout"),
        (vec!["--nap", "5ms", &url], "nap"),
        (vec!["--nap", "-1us", &url], "invalid duration"),
        (vec!["--mix", &bad_mix, &url], "line 2"),
        (
            vec!["--mix", "/nonexistent/file.mix", &url],
            "cannot read mix file",
        ),
        (vec!["--sweep", &url], "start rate"),
        (vec!["--no-keepalive", "-p", "4", &url], "keep-alive"),
        (vec!["-H", "broken", &url], "header"),
        (
            vec!["--json", "/nonexistent/dir/r.json", &url],
            "cannot write",
        ),
    ];
    for (args, expect) in cases {
        let (code, stdout, stderr) = loadgen(&args);
        assert_eq!(code, 2, "{args:?}: stdout {stdout:?} stderr {stderr:?}");
        assert!(
            stderr.contains(expect),
            "{args:?}: {stderr:?} should mention {expect:?}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            stderr.lines().count() <= 5,
            "{args:?}: one clear message, got {stderr}"
        );
    }
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        0,
        "no request was sent"
    );
}

#[test]
fn help_explains_every_flag() {
    let (code, out, _) = loadgen(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--connections",
        "--threads",
        "--duration",
        "--requests",
        "--warmup",
        "--timeout",
        "--pipeline",
        "--no-keepalive",
        "--rate",
        "--arrivals",
        "--sweep",
        "--slo",
        "--mix",
        "--expect-status",
        "--json",
        "--hdr-log",
        "--nap",
        "--latency",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
}

/// An open-loop run on one thread and a few connections, writing both machine outputs.
fn open_loop_with_logs(
    url: &str,
    duration: &str,
    rate: &str,
    json: &std::path::Path,
    hlog: &std::path::Path,
) -> (i32, String, String) {
    let duration = format!("-d{duration}");
    loadgen(&[
        "-t1",
        "-c4",
        &duration,
        "--rate",
        rate,
        "--json",
        json.to_str().unwrap(),
        "--hdr-log",
        hlog.to_str().unwrap(),
        url,
    ])
}

#[test]
fn run_writes_summary_json_and_hdr_log() {
    let server = common::ok_server();
    let json = tmp("run.json");
    let hlog = tmp("run.hlog");
    let (code, out, err) =
        open_loop_with_logs(&server.url("/plaintext"), "1s", "200", &json, &hlog);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Requests/sec:") && out.contains("99.900%"),
        "{out}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["schema"], "loadgen/1");
    assert_eq!(
        v["requests"].as_u64(),
        Some(server.requests.load(Ordering::SeqCst))
    );
    let log = std::fs::read_to_string(&hlog).unwrap();
    let intervals: Vec<_> = log.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(intervals.iter().any(|l| l.contains("HISTF")), "{log}");
    // The log reads back with the hdrhistogram interval-log reader.
    let n = hdrhistogram::serialization::interval_log::IntervalLogIterator::new(log.as_bytes())
        .filter(|e| {
            matches!(
                e,
                Ok(hdrhistogram::serialization::interval_log::LogEntry::Interval(_))
            )
        })
        .count();
    assert!(n >= 1);
    let _ = std::fs::remove_file(json);
    let _ = std::fs::remove_file(hlog);
}

/// The standard HdrHistogram tools are the Java ones: `HistogramLogProcessor` from
/// HdrHistogram's own jar (Debian: `libhdrhistogram-java`, run by `default-jre-headless`;
/// `scripts/install-deps` installs both). It must read both tags of our interval log and
/// find the same count, mean and max as loadgen's JSON report.
#[test]
fn hdr_log_reads_in_the_java_hdrhistogram_tools() {
    let jar = std::path::Path::new("/usr/share/java/hdrhistogram.jar");
    let java_runs = Command::new("java").arg("-version").output().is_ok();
    assert!(
        java_runs && jar.is_file(),
        "this test needs java and {} (Debian: apt-get install default-jre-headless \
         libhdrhistogram-java; scripts/install-deps installs them)",
        jar.display()
    );
    let server = common::ok_server();
    let json = tmp("java.json");
    let hlog = tmp("java.hlog");
    let (code, _, err) = open_loop_with_logs(&server.url("/plaintext"), "3s", "500", &json, &hlog);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for (tag, key) in [
        (None, "latency"),
        (Some("uncorrected"), "latency_uncorrected"),
    ] {
        let out = tmp(&format!("java-{key}"));
        let mut java = Command::new("java");
        java.arg("-cp")
            .arg(jar)
            .arg("org.HdrHistogram.HistogramLogProcessor")
            .arg("-i")
            .arg(&hlog)
            // Our values are microseconds: print them unscaled.
            .args(["-outputValueUnitRatio", "1", "-o"])
            .arg(&out);
        if let Some(tag) = tag {
            java.args(["-tag", tag]);
        }
        let status = java.output().expect("java runs");
        assert!(status.status.success(), "{status:?}");
        let hgrm = std::fs::read_to_string(out.with_extension("hgrm"))
            .or_else(|_| std::fs::read_to_string(format!("{}.hgrm", out.display())))
            .expect("HistogramLogProcessor writes a .hgrm file");
        // "#[Max     =     3543.000, Total count    =         8000]"
        let field = |name: &str| -> f64 {
            let at = hgrm
                .find(name)
                .unwrap_or_else(|| panic!("no {name} in {hgrm}"));
            let rest = hgrm[at + name.len()..].trim_start_matches([' ', '=']);
            let end = rest.find([',', ']']).unwrap();
            rest[..end].trim().parse().unwrap()
        };
        let want = &report[key];
        assert_eq!(
            field("Total count") as u64,
            want["count"].as_u64().unwrap(),
            "{key}"
        );
        let max_us = want["max_ms"].as_f64().unwrap() * 1000.0;
        assert!(
            (field("Max") - max_us).abs() <= 1.0,
            "{key}: max {} vs {max_us}",
            field("Max")
        );
        let mean_us = want["mean_ms"].as_f64().unwrap() * 1000.0;
        assert!(
            (field("Mean") - mean_us).abs() <= 1.0,
            "{key}: mean {} vs {mean_us}",
            field("Mean")
        );
        let _ = std::fs::remove_file(out.with_extension("hgrm"));
        let _ = std::fs::remove_file(format!("{}.hgrm", out.display()));
        let _ = std::fs::remove_file(out);
    }
    let _ = std::fs::remove_file(json);
    let _ = std::fs::remove_file(hlog);
}

#[test]
fn ctrl_c_stops_and_prints_what_was_measured() {
    let server = common::ok_server();
    let json = tmp("int.json");
    let child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "-t1",
            "-c2",
            "-d60s",
            "--json",
            json.to_str().unwrap(),
            &server.url("/"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while server.requests.load(Ordering::SeqCst) < 100 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: sends SIGINT to the child we started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Interrupted") && stdout.contains("Requests/sec:"),
        "{stdout}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["interrupted"], true);
    assert!(v["requests"].as_u64().unwrap() >= 50);
    assert!(v["duration_s"].as_f64().unwrap() < 30.0);
    let _ = std::fs::remove_file(json);
}
