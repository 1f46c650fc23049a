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
entry, same run (median of per-round ratios, runs J-L of 2026-12-07; docs/benchmarks.md): \
`server --variant io-uring --db-client pipelined --queries-mode in-flight --registered-buffers \
on --db-wake per-request --workers 1 --db-shared 2` /plaintext 1.45-1.54, /json 1.40-1.51, /db \
0.98-1.05, /fortunes 1.01-1.06, /queries 1.29-1.46, /updates 1.21-1.29; the same on `--variant \
epoll --runtime per-core` (no registered buffers) 1.34-1.55, 1.35-1.42, 0.84-0.98, 0.90-0.96, \
1.33-1.44, 1.24-1.30. The defaults (sqlx's pool): 0.49-0.72 on the database tests.";
