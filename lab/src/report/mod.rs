//! Reports made from a finished run (`results/<run-id>/run.json`).
//!
//! [`html`] renders the self-contained HTML page (`report.html`); its charts are inline
//! SVG drawn by [`charts`], so the page works offline and needs no chart library;
//! `format` writes values (numbers, durations, sizes, dates, escaping) for both. What each
//! chart shows is documented in `docs/report.md`.

pub mod charts;
mod format;
pub mod html;
