//! Reports made from a finished run (`results/<run-id>/run.json`).
//!
//! [`html`] renders the self-contained HTML page (`report.html`): every chart is inline SVG
//! generated here, so the page works offline and needs no chart library. What each chart
//! shows is documented in `docs/report.md`.

pub mod html;
