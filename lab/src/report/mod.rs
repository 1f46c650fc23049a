//! Reports made from a finished run (`results/<run-id>/run.json`).
//!
//! [`html`] renders the self-contained HTML page (`report.html`): its skeleton and the
//! result sections, with the flame graphs in `flamegraphs` (files inlined as data by
//! `embed`), the notes and configuration in `run_info`, and the style sheet and script in
//! `page.css` and `page.js`. Its charts are inline SVG drawn by [`charts`], so the page
//! works offline and needs no chart library; `format` writes values (numbers, durations,
//! sizes, dates, escaping) for all of them. What each chart shows is documented in
//! `docs/report.md`.

pub mod charts;
mod embed;
mod flamegraphs;
mod format;
pub mod html;
mod run_info;

/// How far the best setups go, for the reader of a run's figures (usually the defaults'):
/// measured beside the fastest Rust entry of TechEmpower in the same runs, with the flags
/// that get there. The figures and how they were measured: docs/benchmarks.md, "The best
/// setups against may-minihttp".
pub const BEST_SETUP: &str = "How far the best setups go against may-minihttp's TechEmpower \
entry, same run (median of per-round ratios, seven runs; docs/benchmarks.md): `server \
--variant epoll --runtime per-core --db-client pipelined --queries-mode in-flight` /plaintext \
1.04-1.19, /json 0.98-1.16, /db 0.81-0.99, /fortunes 0.93-1.02, /queries 0.92-1.36, /updates \
0.81-1.02; `server --variant io-uring --db-client pipelined --queries-mode in-flight \
--registered-buffers on` 1.21-1.42, 1.26-1.40, 0.87-0.97, 0.90-1.03, 0.97-1.17, 0.81-1.00. The \
defaults (sqlx's pool): 0.46-0.79 on the database tests.";
