//! The HTML report (`lab::report::html`) opened in a real headless browser: Debian's
//! `chromium` (`scripts/install-deps` installs it; `CHROMIUM=/path` picks another binary).
//! Without a browser these tests fail: they never skip.
//!
//! Input: `tests/fixtures/report-run/run.json`, a run captured on a real machine (each
//! variant loaded by `loadgen` on `/db` and traced by `lab trace` with eBPF; the process
//! figures are illustrative) with a flame graph. The assertions are about what the page
//! shows, not about the numbers in it.
//!
//! How: the report is rendered to a folder under `CARGO_TARGET_TMPDIR/report_browser/`
//! (kept, to look at) and opened twice, with a fresh profile each time and every host name
//! resolving to nothing (so any attempt to fetch something from the network fails loudly):
//!
//! * `--dump-dom` on a copy of the page with a probe script inserted first in `<head>`: it
//!   records uncaught exceptions, failed resource loads and `console.error` calls, then,
//!   after the load event, measures in the laid-out page every chart's rows per variant
//!   (rendered area of their bars, lines and dots), counts each variant's table rows,
//!   reads the failed variants' cards, clicks a column title to check the sorting, and
//!   lists every resource the page fetched. It writes that as JSON into the DOM, which
//!   the test parses. Chromium's own log (stderr) is checked for console errors too.
//! * `--screenshot` of the unmodified page at 1400x3000: decoded with the `png` crate, it
//!   must not be blank (many distinct colours, no colour covering almost everything) and
//!   must show the category colours of the stacked charts.
//!
//! `reports_a_real_run` draws the fixture as it is; `reports_failures_and_escapes_the_run`
//! makes one variant fail with a hostile log tail and gives another a name full of markup.
//! `reports_a_lab_run` runs the real `lab run --variants epoll,thread-pool --workload db
//! --duration 2s --warmup 1s --connections 8` and checks the report it wrote; it needs the
//! `server` binary next to `lab` (`cargo build --workspace --bins` with the same
//! `CARGO_TARGET_DIR`), the test suites' PostgreSQL (started here, stopped by the last test
//! process using it), and root for eBPF tracing.
//!
//! Run: `cargo build --workspace --bins && cargo test -p lab --test report_browser`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lab::report::charts::CATEGORY_COLOURS;
use lab::report::html;
use lab::results::{Run, Summary, CATEGORIES};
use serde_json::Value;

/// The charts every variant that completed must appear in.
const VARIANT_CHARTS: [&str; 6] = [
    "rps",
    "latency",
    "syscalls",
    "offcpu",
    "timeline-rps",
    "timeline-p99",
];
/// The charts a failed variant still has a row in (saying it failed).
const ROW_CHARTS: [&str; 4] = ["rps", "latency", "syscalls", "offcpu"];
/// How long one browser run may take.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report-run")
}

/// The fixture as `lab run` leaves it: summaries computed.
fn fixture_run() -> Run {
    let mut run = Run::load(&fixture_dir()).expect("the fixture is a valid run.json");
    for v in &mut run.variants {
        if v.summary.is_none() {
            v.summary = Summary::of(&v.rounds);
        }
    }
    run
}

/// A fresh folder for one test's files, kept after the test.
fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("report_browser")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// Copies the fixture's flame graphs next to the report so the run folder is complete.
fn copy_flamegraphs(run: &Run, dir: &Path) {
    for rel in run.variants.iter().filter_map(|v| v.flamegraph.as_ref()) {
        let to = dir.join(rel);
        fs::create_dir_all(to.parent().expect("a file has a parent"))
            .expect("creating the flame graph folder");
        fs::copy(fixture_dir().join(rel), &to).unwrap_or_else(|e| panic!("copying {rel}: {e}"));
    }
}

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "Debian's `chromium` is needed to test the HTML report in a real browser and was not found in PATH: \
         run scripts/install-deps (or apt-get install chromium), or set CHROMIUM=/path/to/chromium"
    );
}

/// Runs headless chromium on `page` with `args`, a fresh profile, and no way to the network.
fn browse(page: &Path, args: &[String], scratch: &Path) -> Output {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let profile = scratch.join(format!("chromium-profile-{}-{stamp}", std::process::id()));
    fs::create_dir_all(&profile).expect("creating the browser profile folder");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--mute-audio",
        "--force-device-scale-factor=1",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(format!("file://{}", page.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", chromium().display()));
    // Read both pipes on their own threads so a chatty browser cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out_pipe.read_to_end(&mut b);
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err_pipe.read_to_end(&mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            break status;
        }
        if start.elapsed() > BROWSER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "chromium did not finish within {BROWSER_TIMEOUT:?} on {}; its log:\n{}",
                page.display(),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    };
    let _ = fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium failed ({}) on {}; its log:\n{}",
        output.status,
        page.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Console messages, uncaught exceptions and network errors in chromium's own log (the
/// report logs nothing, so any console line is a finding).
fn console_errors_in_log(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught ") || l.contains("net::ERR_"))
        .map(str::to_string)
        .collect()
}

/// Runs first in `<head>`: records errors, and after the load event measures the page.
const PROBE: &str = r#"<script>
(function () {
  "use strict";
  var errors = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && t.tagName) {
      errors.push("resource failed to load: <" + t.tagName.toLowerCase() + "> " + (t.src || t.href || t.data || ""));
    } else {
      errors.push("uncaught exception: " + e.message + " at " + e.filename + ":" + e.lineno);
    }
  }, true);
  window.addEventListener("unhandledrejection", function (e) { errors.push("unhandled rejection: " + e.reason); });
  var consoleError = console.error;
  console.error = function () {
    errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    return consoleError.apply(console, arguments);
  };
  function area(el) { var b = el.getBoundingClientRect(); return b.width * b.height; }
  function measure() {
    var result = { errors: errors, charts: {}, tables: {}, failed: [], resources: [], sort: null, title: document.title,
                   injected: typeof window.__labInjected !== "undefined", bold: document.querySelectorAll("b").length,
                   flamegraphs: [] };
    document.querySelectorAll("svg.chart").forEach(function (svg) {
      var rows = {};
      svg.querySelectorAll("g.row").forEach(function (g) {
        var v = g.getAttribute("data-variant");
        var r = rows[v] || { shapes: 0, area: 0, text: "" };
        g.querySelectorAll("rect, circle, polyline").forEach(function (s) {
          r.shapes += 1;
          var b = s.getBoundingClientRect();
          r.area += Math.max(b.width, 1) * Math.max(b.height, 1);
        });
        r.text += g.textContent + " ";
        rows[v] = r;
      });
      result.charts[svg.getAttribute("data-chart")] = { area: area(svg), rows: rows };
    });
    document.querySelectorAll("table.calls").forEach(function (t) {
      result.tables[t.getAttribute("data-variant")] = { rows: t.tBodies[0].rows.length, visible: area(t) > 0 };
    });
    document.querySelectorAll(".card.failed").forEach(function (c) {
      result.failed.push({ variant: c.getAttribute("data-variant"), text: c.textContent, visible: area(c) > 0 });
    });
    document.querySelectorAll("figure.flame").forEach(function (f) {
      var o = f.querySelector("object");
      result.flamegraphs.push({ variant: f.getAttribute("data-variant"), area: o ? area(o) : 0 });
    });
    performance.getEntriesByType("resource").forEach(function (e) { result.resources.push(e.name); });
    var table = document.querySelector("table.calls");
    if (table) {
      var heads = table.tHead.rows[0].cells, col = -1;
      for (var i = 0; i < heads.length; i++) { if (heads[i].textContent.indexOf("Calls") === 0 && heads[i].textContent.indexOf("/") < 0) { col = i; } }
      var column = function () {
        return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return parseFloat(r.cells[col].getAttribute("data-v")); });
      };
      var sorted = function (xs, dir) {
        for (var j = 1; j < xs.length; j++) { if ((xs[j] - xs[j - 1]) * dir < 0) { return false; } }
        return true;
      };
      heads[col].click();
      var first = column(), firstDir = heads[col].getAttribute("aria-sort");
      heads[col].click();
      var second = column(), secondDir = heads[col].getAttribute("aria-sort");
      result.sort = { column: col, rows: first.length, first: firstDir, second: secondDir,
                      descending: sorted(first, -1), ascending: sorted(second, 1) };
    }
    var pre = document.createElement("pre");
    pre.id = "lab-probe";
    pre.textContent = JSON.stringify(result);
    document.body.appendChild(pre);
  }
  window.addEventListener("load", function () { setTimeout(measure, 50); });
})();
</script>"#;

/// The page with the probe, opened with `--dump-dom`: the probe's findings, and the log.
fn probe(report: &Path, scratch: &Path) -> (Value, String) {
    let html = fs::read_to_string(report).expect("reading the report");
    let at = html.find("<head>").expect("the report has a <head>") + "<head>".len();
    let probed = report.with_file_name("report.probe.html");
    fs::write(&probed, format!("{}{PROBE}{}", &html[..at], &html[at..]))
        .expect("writing the probed page");
    let out = browse(
        &probed,
        &["--dump-dom".into(), "--virtual-time-budget=5000".into()],
        scratch,
    );
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let start = dom.find("<pre id=\"lab-probe\">").unwrap_or_else(|| {
        panic!("the probe did not report (the page's load event never fired?); chromium's log:\n{log}\nDOM tail:\n{}", tail(&dom, 2000))
    }) + "<pre id=\"lab-probe\">".len();
    let end = start
        + dom[start..]
            .find("</pre>")
            .expect("the probe's <pre> is closed");
    let json = dom[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&");
    let value: Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("the probe's JSON does not parse ({e}): {json}"));
    (value, log)
}

fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// The screenshot: decoded, not blank, and showing the stacked charts' category colours.
fn screenshot(report: &Path, scratch: &Path, categories: &[&str]) -> PathBuf {
    let png_path = report.with_file_name("screenshot.png");
    let _ = fs::remove_file(&png_path);
    browse(
        report,
        &[
            format!("--screenshot={}", png_path.display()),
            "--window-size=1400,3000".into(),
            "--virtual-time-budget=5000".into(),
        ],
        scratch,
    );
    let file = fs::File::open(&png_path).unwrap_or_else(|e| {
        panic!(
            "chromium wrote no screenshot at {}: {e}",
            png_path.display()
        )
    });
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("the screenshot is a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a sane PNG size")];
    let info = reader
        .next_frame(&mut buf)
        .expect("decoding the screenshot");
    let channels = info.color_type.samples();
    assert!(
        channels >= 3,
        "unexpected screenshot colour type {:?}",
        info.color_type
    );
    assert!(
        info.width >= 1000 && info.height >= 2000,
        "screenshot is {}x{}",
        info.width,
        info.height
    );
    let mut counts: BTreeMap<[u8; 3], u64> = BTreeMap::new();
    for px in buf[..info.buffer_size()].chunks_exact(channels) {
        *counts.entry([px[0], px[1], px[2]]).or_default() += 1;
    }
    let total = u64::from(info.width) * u64::from(info.height);
    let (top_colour, top) = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(c, n)| (*c, *n))
        .expect("pixels");
    assert!(
        counts.len() >= 64,
        "the screenshot has only {} distinct colours: blank?",
        counts.len()
    );
    assert!(
        (top as f64) < 0.85 * total as f64,
        "one colour ({top_colour:?}) covers {:.0}% of the screenshot: blank?",
        100.0 * top as f64 / total as f64
    );
    // The stacked charts' solid segments show the category colours exactly.
    let shown: Vec<&str> = CATEGORIES
        .iter()
        .zip(CATEGORY_COLOURS)
        .filter(|(_, hex)| {
            let c = rgb(hex);
            counts
                .iter()
                .filter(|(p, _)| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 3))
                .map(|(_, n)| *n)
                .sum::<u64>()
                >= 200
        })
        .map(|(name, _)| *name)
        .collect();
    assert!(
        categories.iter().all(|c| shown.contains(c)),
        "the screenshot does not show the colours of {categories:?} (shown: {shown:?}): are the stacked charts drawn?"
    );
    png_path
}

fn rgb(hex: &str) -> [u8; 3] {
    let c = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).expect("a #rrggbb colour");
    [c(1), c(3), c(5)]
}

/// Checks shared by every test: no errors, no fetches, every chart drawn for `drawn`
/// variants and a row in the main charts for `failed` ones, tables, sorting.
fn check_page(page: &Value, log: &str, drawn: &[&str], failed: &[&str], offcpu: bool) {
    let errors: Vec<&str> = page["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
    let logged = console_errors_in_log(log);
    assert!(
        logged.is_empty(),
        "chromium logged console errors: {logged:#?}"
    );
    let resources: Vec<&str> = page["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let fetched: Vec<&&str> = resources
        .iter()
        .filter(|r| !r.starts_with("data:"))
        .collect();
    assert!(
        fetched.is_empty(),
        "the page fetched resources (it must be self-contained): {fetched:?}"
    );

    let charts = page["charts"].as_object().expect("charts");
    for chart in VARIANT_CHARTS
        .into_iter()
        .filter(|c| offcpu || *c != "offcpu")
    {
        let c = charts
            .get(chart)
            .unwrap_or_else(|| panic!("chart {chart} is missing; charts: {:?}", charts.keys()));
        assert!(
            c["area"].as_f64().unwrap_or(0.0) > 10_000.0,
            "chart {chart} is not laid out: {c}"
        );
        for v in drawn {
            let row = &c["rows"][*v];
            assert!(
                row["shapes"].as_u64().unwrap_or(0) >= 1
                    && row["area"].as_f64().unwrap_or(0.0) > 20.0,
                "variant {v} is not drawn in chart {chart}: {row}"
            );
        }
    }
    for chart in ROW_CHARTS {
        for v in failed {
            let row = &charts[chart]["rows"][*v];
            let text = row["text"].as_str().unwrap_or("");
            assert!(
                text.contains("failed"),
                "chart {chart} does not say that {v} failed: {row}"
            );
            assert_eq!(
                row["shapes"].as_u64(),
                Some(0),
                "chart {chart} draws a bar for the failed {v}"
            );
        }
    }
    // The stacked charts split every drawn variant into several categories.
    for v in drawn {
        let segs = charts["syscalls"]["rows"][*v]["shapes"]
            .as_u64()
            .unwrap_or(0);
        assert!(segs >= 3, "{v}'s syscalls bar has {segs} segments");
    }
    let tables = page["tables"].as_object().expect("tables");
    for v in drawn {
        let t = &tables
            .get(*v)
            .unwrap_or_else(|| panic!("no per-syscall table for {v}"));
        assert!(
            t["rows"].as_u64().unwrap_or(0) >= 5 && t["visible"] == true,
            "{v}'s table: {t}"
        );
    }
    let sort = &page["sort"];
    assert!(
        sort["rows"].as_u64().unwrap_or(0) >= 5
            && sort["descending"] == true
            && sort["ascending"] == true
            && sort["first"] == "descending"
            && sort["second"] == "ascending",
        "clicking a column title does not sort the table: {sort}"
    );
}

#[test]
fn reports_a_real_run() {
    let run = fixture_run();
    let dir = out_dir("real-run");
    copy_flamegraphs(&run, &dir);
    let report = html::write(&run, &dir).expect("writing the report");
    assert_eq!(report, dir.join("report.html"));
    let text = fs::read_to_string(&report).expect("reading the report");
    for needle in [
        "<script src",
        "<link",
        "@import",
        "url(http",
        "src=\"http",
        "href=\"http",
    ] {
        assert!(
            !text.contains(needle),
            "the report refers to an external resource ({needle})"
        );
    }

    let (page, log) = probe(&report, &dir);
    let names: Vec<&str> = run.variants.iter().map(|v| v.variant.as_str()).collect();
    check_page(&page, &log, &names, &[], true);
    assert!(
        page["failed"].as_array().expect("failed").is_empty(),
        "no variant failed: {}",
        page["failed"]
    );
    // io-uring's ring operations have a bar of their own.
    let ring = &page["charts"]["syscalls"]["rows"]["io-uring"]["text"];
    assert!(
        ring.as_str().unwrap_or("").contains("ring ops"),
        "no ring-op bar for io-uring: {ring}"
    );
    // The recorded flame graph is inlined and shown.
    let flames = page["flamegraphs"].as_array().expect("flamegraphs");
    assert_eq!(flames.len(), 1, "one flame graph was recorded: {flames:?}");
    assert!(
        flames[0]["area"].as_f64().unwrap_or(0.0) > 10_000.0,
        "the flame graph is not shown: {}",
        flames[0]
    );
    assert!(
        text.contains("data:image/svg+xml;base64,"),
        "the flame graph is not inlined"
    );

    let png = screenshot(
        &report,
        &dir,
        &["network", "database", "logging", "event-loop"],
    );
    eprintln!(
        "report: {}\nscreenshot: {}",
        report.display(),
        png.display()
    );
}

#[test]
fn reports_failures_and_escapes_the_run() {
    let mut run = fixture_run();
    let hostile = "epoll <b>bold</b> & \"quoted\" 'x'";
    let tail = "thread 'main' panicked at src/main.rs:1:1:\n<script>window.__labInjected = 1</script>\nError: address <in use> & gone";
    {
        let failed = run
            .variants
            .iter_mut()
            .find(|v| v.variant == "io-uring")
            .expect("io-uring in the fixture");
        failed.ok = false;
        failed.failure = Some("exited with exit status: 101 before it listened".into());
        failed.log_tail = Some(tail.into());
        failed.rounds.clear();
        failed.summary = None;
    }
    for v in &mut run.variants {
        if v.variant == "epoll" {
            v.variant = hostile.into();
            v.flamegraph = Some("flamegraphs/missing.svg".into());
        }
    }
    run.environment
        .notes
        .push("a note with <i>markup</i> & an ampersand".into());
    let dir = out_dir("failed-variant");
    let report = html::write(&run, &dir).expect("writing the report");

    let (page, log) = probe(&report, &dir);
    let drawn: Vec<&str> = run
        .variants
        .iter()
        .filter(|v| v.ok)
        .map(|v| v.variant.as_str())
        .collect();
    check_page(&page, &log, &drawn, &["io-uring"], true);
    assert_eq!(page["injected"], false, "a log tail's <script> ran");
    assert_eq!(page["bold"], 0, "a variant name's markup became an element");
    let failed = page["failed"].as_array().expect("failed");
    assert_eq!(failed.len(), 1, "one failed card: {failed:?}");
    let card = failed[0]["text"].as_str().unwrap_or("");
    assert_eq!(failed[0]["variant"], "io-uring");
    assert!(failed[0]["visible"] == true, "the failed card is not shown");
    assert!(
        card.contains("exited with exit status: 101"),
        "the card lacks the failure: {card}"
    );
    assert!(
        card.contains("<script>window.__labInjected = 1</script>")
            && card.contains("address <in use> & gone"),
        "the card does not show the log tail as text: {card}"
    );
    let text = fs::read_to_string(&report).expect("reading the report");
    assert!(
        text.contains("a note with &lt;i&gt;markup&lt;/i&gt; &amp; an ampersand"),
        "the note is not escaped"
    );
    assert!(
        text.contains("cannot be read"),
        "a missing flame graph is not explained"
    );
    let shown: BTreeSet<&str> = page["tables"]
        .as_object()
        .expect("tables")
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        shown.contains(hostile),
        "the hostile name does not survive as text: {shown:?}"
    );
}

/// The real thing: `lab run` on two variants (needs what `lab run` needs: the `server`
/// binary next to `lab` (`cargo build --workspace --bins` with the same target folder), the
/// test suites' PostgreSQL (`db::Database::ready_for_tests`), and root for eBPF (else the
/// run traces with ptrace)), then its own report.html in the browser.
#[test]
fn reports_a_lab_run() {
    let lab = Path::new(env!("CARGO_BIN_EXE_lab"));
    let server = lab.with_file_name("server");
    assert!(
        server.is_file(),
        "{} is missing: build the servers next to lab first (cargo build --workspace --bins, same CARGO_TARGET_DIR)",
        server.display()
    );
    let dir = out_dir("lab-run");
    let out = Command::new(lab)
        .args([
            "run",
            "--variants",
            "epoll,thread-pool",
            "--workload",
            "db",
            "--duration",
            "2s",
            "--warmup",
            "1s",
            // A profiling phase per variant after its measured window.
            "--flamegraph",
            "2",
        ])
        .args(["--connections", "8", "--out"])
        .arg(&dir)
        .env(
            "DATABASE_URL",
            db::Database::ready_for_tests().unwrap_or_else(|e| panic!("{e:#}")),
        )
        .stdin(Stdio::null())
        .output()
        .expect("starting lab run");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("reading the output folder")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.join("run.json").is_file())
        .collect();
    assert_eq!(
        runs.len(),
        1,
        "lab run ({}) wrote no run.json under {}:\n{said}",
        out.status,
        dir.display()
    );
    let run_dir = &runs[0];
    let run = Run::load(run_dir).expect("lab run's run.json loads");
    let report = run_dir.join("report.html");
    assert!(report.is_file(), "lab run wrote no report.html:\n{said}");

    let (page, log) = probe(&report, run_dir);
    let drawn: Vec<&str> = run
        .variants
        .iter()
        .filter(|v| v.ok)
        .map(|v| v.variant.as_str())
        .collect();
    let failed: Vec<&str> = run
        .variants
        .iter()
        .filter(|v| !v.ok)
        .map(|v| v.variant.as_str())
        .collect();
    assert!(!drawn.is_empty(), "no variant completed:\n{said}");
    let offcpu = run
        .variants
        .iter()
        .flat_map(|v| &v.rounds)
        .filter_map(|r| r.profile.as_ref())
        .all(|p| p.offcpu_measured);
    check_page(&page, &log, &drawn, &failed, offcpu);
    assert_eq!(
        page["failed"].as_array().map(Vec::len),
        Some(failed.len()),
        "failed cards: {}",
        page["failed"]
    );
    // --flamegraph: each completed variant's flame graph and protobuf are in the run
    // folder, the SVG names the server's own functions, and the report shows it inline.
    let flames = page["flamegraphs"].as_array().expect("flamegraphs");
    assert_eq!(
        flames.len(),
        drawn.len(),
        "a flame graph per completed variant: {flames:?}\n{said}"
    );
    for (v, flame) in run.variants.iter().filter(|v| v.ok).zip(flames) {
        assert!(
            flame["area"].as_f64().unwrap_or(0.0) > 10_000.0,
            "{}'s flame graph is not shown: {flame}",
            v.variant
        );
        let svg = v
            .flamegraph
            .as_ref()
            .expect("a flame graph path in run.json");
        let svg = fs::read_to_string(run_dir.join(svg)).expect("the flame graph file");
        assert!(
            svg.contains("<svg") && svg.contains("servers::"),
            "{}'s flame graph has none of the server's frames",
            v.variant
        );
        let profile = v.cpu_profile.as_ref().expect("cpu_profile in run.json");
        assert!(
            profile.error.is_none(),
            "{}: {:?}",
            v.variant,
            profile.error
        );
        let pb = profile.pprof.as_ref().expect("the protobuf's path");
        assert!(run_dir.join(pb).is_file(), "{pb} is missing");
        assert!(
            profile.samples > 0 && !profile.top.is_empty() && !profile.areas.is_empty(),
            "{}: an empty CPU summary",
            v.variant
        );
    }
    assert!(
        said.contains("where the CPU goes"),
        "lab run printed no CPU summary:\n{said}"
    );

    let png = screenshot(&report, run_dir, &["network", "database", "event-loop"]);
    eprintln!(
        "report: {}\nscreenshot: {}",
        report.display(),
        png.display()
    );
}
