//! Reports made from a finished run (`results/<run-id>/run.json`).
//!
//! [`html`] renders the self-contained HTML page (`report.html`); its charts are inline
//! SVG drawn by [`charts`], so the page works offline and needs no chart library;
//! `format` writes values (numbers, durations, sizes, dates, escaping) for both. What each
//! chart shows is documented in `docs/report.md`.

pub mod charts;
mod format;
pub mod html;

/// How far the best setups go, for the reader of a run's figures (usually the defaults'):
/// measured beside the fastest Rust entry of TechEmpower in the same runs, with the flags
/// that get there. The figures and how they were measured: docs/benchmarks.md, "The best
/// setups against may-minihttp".
pub const BEST_SETUP: &str = "How far the best setups go against may-minihttp's TechEmpower \
entry, same run, quiet machine (median of per-round ratios; docs/benchmarks.md): `server \
--variant io-uring --db-client pipelined --queries-mode in-flight` /plaintext 1.28, /json 1.22, \
/db 0.90, /fortunes 0.83, /queries 0.61, /updates 0.70; `server --variant epoll --runtime \
per-core --db-client pipelined --queries-mode in-flight` 1.06, 1.11, 0.86, 0.84, 0.62, 0.73. \
The defaults (sqlx's pool): 0.29-0.66 on the database tests.";
