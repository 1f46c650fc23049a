//! The report's "Flame graphs" section, present when the run recorded any: each
//! variant's flame graph inlined into the page as data (by `super::embed`, so the page
//! stays one file), and under it where the CPU went, from the same profiling phase's
//! pprof profile. Its own module: the only section that reads files besides run.json.

// The page is written element by element, each ending its own line (as in `super::html`).
#![allow(clippy::write_with_newline)]

use std::fmt::Write as _;
use std::path::Path;

use super::embed::{base64, svg_aspect};
use super::format::{esc, how};
use crate::results::{Run, VariantResult};

/// The section, or nothing when no variant has a flame graph. Paths are relative to
/// `run_dir`; a file that cannot be read, or is not an SVG, is named instead.
pub(super) fn section(o: &mut String, run: &Run, run_dir: &Path) {
    if !run.variants.iter().any(|v| v.flamegraph.is_some()) {
        return;
    }
    o.push_str("<section id=\"flamegraphs\" class=\"panel\">\n<h2>Flame graphs</h2>\n");
    how(
        o,
        "Where the server's CPU time went, from a separate profiling phase: each box is a function, its width the share of samples \
         in which it was on the stack, its parents below it. Hover a box for its name; click to zoom.",
    );
    for v in run.variants.iter() {
        let Some(rel) = &v.flamegraph else { continue };
        let _ = write!(
            o,
            "<figure class=\"flame\" data-variant=\"{0}\"><figcaption>{0}</figcaption>\n",
            esc(&v.variant)
        );
        let path = run_dir.join(rel);
        let is_svg = Path::new(rel)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
        match std::fs::read(&path) {
            Ok(data) if is_svg => {
                let _ = write!(
                    o,
                    "<object type=\"image/svg+xml\" data=\"data:image/svg+xml;base64,{}\" style=\"aspect-ratio: {}\" aria-label=\"flame graph of {}\">\
                     <p class=\"muted\">Your browser did not display the SVG flame graph.</p></object>\n",
                    base64(&data),
                    svg_aspect(&data).map_or("auto 2 / 1".to_string(), |(w, h)| format!("{w:.0} / {h:.0}")),
                    esc(&v.variant)
                );
            }
            Ok(_) => {
                let _ = write!(
                    o,
                    "<p class=\"muted\">Recorded as <code>{}</code> (not an SVG): open it from the run folder.</p>\n",
                    esc(rel)
                );
            }
            Err(e) => {
                let _ = write!(
                    o,
                    "<p class=\"muted\">Recorded as <code>{}</code>, but it cannot be read: {}.</p>\n",
                    esc(rel),
                    esc(&e.to_string())
                );
            }
        }
        cpu_summary(o, v);
        o.push_str("</figure>\n");
    }
    o.push_str("</section>\n");
}

/// "Where the CPU goes" under a flame graph: the share of samples per part of the server
/// and the functions with the most self samples, from the phase's pprof profile.
fn cpu_summary(o: &mut String, v: &VariantResult) {
    let Some(profile) = &v.cpu_profile else {
        return;
    };
    if let Some(error) = &profile.error {
        let _ = write!(o, "<p class=\"muted\">Profiling: {}</p>\n", esc(error));
    }
    if profile.samples <= 0 {
        return;
    }
    let share = |n: i64| 100.0 * n as f64 / profile.samples as f64;
    let areas: Vec<String> = profile
        .areas
        .iter()
        .map(|(area, n)| format!("{} <b>{:.0}%</b>", esc(area), share(*n)))
        .collect();
    let _ = write!(
        o,
        "<p class=\"cpu-areas\">Where the CPU goes ({} samples): {}</p>\n\
         <details><summary>Functions with the most self samples</summary>\n\
         <div class=\"scroll\"><table class=\"cpu-top\"><thead><tr><th>self</th><th>total</th><th>function</th></tr></thead><tbody>\n",
        profile.samples,
        areas.join(" · ")
    );
    for f in &profile.top {
        let _ = writeln!(
            o,
            "<tr><td>{:.1}%</td><td>{:.1}%</td><td><code>{}</code></td></tr>",
            share(f.self_samples),
            share(f.total_samples),
            esc(&f.label())
        );
    }
    o.push_str("</tbody></table></div></details>\n");
    if let Some(pb) = &profile.pprof {
        let _ = writeln!(
            o,
            "<p class=\"muted\">The protobuf profile: <code>{}</code> (<code>pprof -top</code>, <code>go tool pprof -http :0</code>).</p>",
            esc(pb)
        );
    }
}
