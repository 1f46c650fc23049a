//! The report's charts: inline SVG drawn here (no chart library, no CDN, no web fonts),
//! so the page works offline. Bar charts (a value per variant, with the rounds' spread as
//! a whisker), stacked bars (a value per category), the latency percentiles on a log
//! axis, per-second lines, and the small duration histograms of the per-syscall tables.
//! Each category has one colour in every chart and table ([`CATEGORY_COLOURS`]).
//!
//! Hooks for tests: every chart is an `<svg class="chart" data-chart="NAME">` whose rows are
//! `<g class="row" data-variant="VARIANT">`. Every string drawn is escaped.

// Elements are written one by one, each ending its own line: `write!` with a trailing
// `\n` reads more plainly here than `writeln!` with the newline implied.
#![allow(clippy::write_with_newline)]

use std::fmt::Write as _;

use super::format::{dur_ns, ellipsis, esc, int, ms, num};
use crate::results::{Spread, CATEGORIES};

/// One colour per category, in [`CATEGORIES`] order (Tableau 10: tells apart for most
/// colour vision).
pub const CATEGORY_COLOURS: [&str; 8] = [
    "#4e79a7", // network
    "#f28e2b", // database
    "#59a14f", // logging
    "#b07aa1", // event-loop
    "#e15759", // sync
    "#edc948", // threads
    "#76b7b2", // memory
    "#9d9d9d", // other
];

/// What falls into each category, for the legend's tooltips.
const CATEGORY_HELP: [&str; 8] = [
    "client sockets: accept, read/write, send/recv on connections",
    "sockets to PostgreSQL",
    "the log file(s), stdout and stderr",
    "waiting for readiness or completions: epoll_wait, io_uring_enter, eventfd",
    "futex and other thread hand-offs",
    "thread and process life cycle: clone, exit, sched_*",
    "mmap, munmap, mprotect, madvise, brk, mremap",
    "everything else",
];

/// Latency percentiles drawn, and the opacity of their bars.
const PERCENTILES: [(&str, f64); 4] = [("p50", 0.40), ("p90", 0.60), ("p99", 0.80), ("p99.9", 1.0)];

/// Chart width in SVG units (the SVG scales to its container).
const W: f64 = 1000.0;
/// Width of the label column on the left of bar charts.
const LABEL_W: f64 = 190.0;
/// Room right of the bars for the total.
const RIGHT_W: f64 = 110.0;

/// The hatch pattern of ring-operation bars (defined once, used by every chart).
pub(super) const HATCH_DEFS: &str = "<svg class=\"defs\" width=\"0\" height=\"0\" aria-hidden=\"true\" xmlns=\"http://www.w3.org/2000/svg\"><defs>\
<pattern id=\"lab-hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\">\
<rect width=\"2.5\" height=\"6\" fill=\"#ffffff\" fill-opacity=\"0.55\"/></pattern></defs></svg>\n";

/// The categories' colours, each with what falls into it as a tooltip.
pub(super) fn category_legend() -> String {
    let mut o = String::from("<ul class=\"legend\" aria-label=\"categories\">");
    for (i, c) in CATEGORIES.iter().enumerate() {
        let _ = write!(
            o,
            "<li title=\"{}\"><i style=\"background:{}\"></i>{}</li>",
            esc(CATEGORY_HELP[i]),
            CATEGORY_COLOURS[i],
            c
        );
    }
    o.push_str("</ul>\n");
    o
}

/// One bar of a single-value bar chart.
pub(super) struct Bar {
    pub variant: String,
    pub label: String,
    pub colour: &'static str,
    pub value: Option<Spread>,
    pub absent: Option<String>,
}

pub(super) fn bar_chart(id: &str, unit: &str, rows: &[Bar]) -> String {
    let row_h = 34.0;
    let top = 8.0;
    let axis_h = 26.0;
    let h = top + row_h * rows.len() as f64 + axis_h;
    let max = rows
        .iter()
        .filter(|r| r.absent.is_none())
        .filter_map(|r| r.value)
        .map(|s| s.max.max(s.median))
        .fold(0.0, f64::max);
    let (ticks, top_v) = nice_ticks(max);
    let plot_w = W - LABEL_W - RIGHT_W;
    let x = |v: f64| LABEL_W + plot_w * v / top_v;
    let mut o = svg_open(id, h, &format!("{unit} per variant"));
    grid(&mut o, &ticks, x, top, h - axis_h, num);
    for (i, r) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let _ = write!(o, "<g class=\"row\" data-variant=\"{}\">", esc(&r.variant));
        row_label(&mut o, &r.label, y + row_h / 2.0);
        match (&r.absent, r.value) {
            (None, Some(s)) => {
                let bh = row_h - 12.0;
                let _ = write!(
                    o,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" rx=\"3\" fill=\"{}\"><title>{}: {} {unit}{}</title></rect>",
                    LABEL_W,
                    y + 6.0,
                    (x(s.median) - LABEL_W).max(1.0),
                    r.colour,
                    esc(&r.label),
                    num(s.median),
                    if s.max > s.min { format!(" (rounds: {}–{})", num(s.min), num(s.max)) } else { String::new() }
                );
                if s.max > s.min {
                    let yc = y + row_h / 2.0;
                    let _ = write!(
                        o,
                        "<path class=\"whisker\" d=\"M{:.1} {yc:.1}H{:.1}M{:.1} {:.1}V{:.1}M{:.1} {:.1}V{:.1}\"/>",
                        x(s.min),
                        x(s.max),
                        x(s.min),
                        yc - 6.0,
                        yc + 6.0,
                        x(s.max),
                        yc - 6.0,
                        yc + 6.0
                    );
                }
                let _ = write!(
                    o,
                    "<text class=\"value\" x=\"{:.1}\" y=\"{:.1}\">{} {unit}</text>",
                    x(s.median.max(s.max)) + 8.0,
                    y + row_h / 2.0 + 4.0,
                    num(s.median)
                );
            }
            (absent, _) => absent_row(
                &mut o,
                absent.as_deref().unwrap_or("no data"),
                LABEL_W + 10.0,
                y + row_h / 2.0,
            ),
        }
        o.push_str("</g>\n");
    }
    o.push_str("</svg>\n");
    o
}

/// One bar of a stacked chart: a value per category.
pub(super) struct Stack {
    pub variant: String,
    pub label: String,
    pub hatched: bool,
    pub segments: Vec<f64>,
    pub absent: Option<String>,
}

pub(super) fn stacked_chart(
    id: &str,
    unit: &str,
    rows: &[Stack],
    fmt: fn(f64) -> String,
) -> String {
    let row_h = 36.0;
    let top = 8.0;
    let axis_h = 26.0;
    let h = top + row_h * rows.len() as f64 + axis_h;
    let max = rows
        .iter()
        .filter(|r| r.absent.is_none())
        .map(|r| r.segments.iter().sum::<f64>())
        .fold(0.0, f64::max);
    let (ticks, top_v) = nice_ticks(max);
    let plot_w = W - LABEL_W - RIGHT_W;
    let scale = |v: f64| plot_w * v / top_v;
    let mut o = svg_open(id, h, &format!("{unit}, stacked by category"));
    grid(&mut o, &ticks, |v| LABEL_W + scale(v), top, h - axis_h, fmt);
    for (i, r) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let _ = write!(
            o,
            "<g class=\"row{}\" data-variant=\"{}\">",
            if r.hatched { " ring" } else { "" },
            esc(&r.variant)
        );
        row_label(&mut o, &r.label, y + row_h / 2.0);
        if let Some(why) = &r.absent {
            absent_row(&mut o, why, LABEL_W + 10.0, y + row_h / 2.0);
            o.push_str("</g>\n");
            continue;
        }
        let total: f64 = r.segments.iter().sum();
        let bh = if r.hatched {
            row_h - 16.0
        } else {
            row_h - 10.0
        };
        let by = y + (row_h - bh) / 2.0;
        let mut at = LABEL_W;
        for (c, &value) in r.segments.iter().enumerate() {
            if value <= 0.0 {
                continue;
            }
            let w = scale(value);
            let tip = format!(
                "{} · {}: {} {unit} ({:.0}% of {})",
                r.label,
                CATEGORIES[c],
                fmt(value),
                100.0 * value / total.max(f64::MIN_POSITIVE),
                fmt(total)
            );
            let _ = write!(
                o,
                "<g class=\"seg\" data-category=\"{}\"><title>{}</title><rect x=\"{at:.2}\" y=\"{by:.1}\" width=\"{:.2}\" height=\"{bh:.1}\" fill=\"{}\"/>",
                CATEGORIES[c],
                esc(&tip),
                w.max(0.5),
                CATEGORY_COLOURS[c]
            );
            if r.hatched {
                let _ = write!(
                    o,
                    "<rect x=\"{at:.2}\" y=\"{by:.1}\" width=\"{:.2}\" height=\"{bh:.1}\" fill=\"url(#lab-hatch)\"/>",
                    w.max(0.5)
                );
            }
            let text = fmt(value);
            if w >= 9.0 + 7.0 * text.chars().count() as f64 {
                let _ = write!(
                    o,
                    "<text class=\"in\" x=\"{:.1}\" y=\"{:.1}\" fill=\"{}\">{}</text>",
                    at + w / 2.0,
                    by + bh / 2.0 + 4.0,
                    ink_on(CATEGORY_COLOURS[c]),
                    text
                );
            }
            o.push_str("</g>");
            at += w;
        }
        let _ = write!(
            o,
            "<text class=\"value\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            at + 8.0,
            y + row_h / 2.0 + 4.0,
            fmt(total)
        );
        o.push_str("</g>\n");
    }
    o.push_str("</svg>\n");
    o
}

/// One variant's row of the latency chart.
pub(super) struct LatencyRow {
    pub variant: String,
    pub colour: &'static str,
    /// p50, p90, p99 and p99.9 in ms.
    pub percentiles: Option<[f64; 4]>,
    pub max_ms: f64,
    /// Why the row has no bars (failed, not measured).
    pub absent: Option<String>,
}

pub(super) fn latency_chart(rows: &[LatencyRow]) -> String {
    let sub_h = 13.0;
    let row_h = sub_h * PERCENTILES.len() as f64 + 16.0;
    let top = 8.0;
    let axis_h = 26.0;
    let h = top + row_h * rows.len() as f64 + axis_h;
    let values: Vec<f64> = rows
        .iter()
        .filter(|v| v.absent.is_none())
        .filter_map(|v| v.percentiles)
        .flatten()
        .filter(|x| *x > 0.0)
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    let (lo_e, hi_e) = if values.is_empty() {
        (-1, 1)
    } else {
        let lo_e = lo.log10().floor() as i32;
        (lo_e, (hi.log10().ceil() as i32).max(lo_e + 1))
    };
    // The variant name and the percentile names share the label column: wider here.
    let label_w = LABEL_W + 60.0;
    let plot_w = W - label_w - RIGHT_W;
    let x = |v: f64| {
        let l = v.max(10f64.powi(lo_e)).log10();
        label_w + plot_w * (l - lo_e as f64) / (hi_e - lo_e) as f64
    };
    let mut o = svg_open(
        "latency",
        h,
        "latency percentiles per variant, logarithmic axis",
    );
    // Decades, with faint 2x and 5x lines.
    let bottom = h - axis_h;
    for e in lo_e..=hi_e {
        let d = 10f64.powi(e);
        let gx = x(d);
        let _ = write!(
            o,
            "<line class=\"grid\" x1=\"{gx:.1}\" x2=\"{gx:.1}\" y1=\"{top}\" y2=\"{bottom:.1}\"/><text class=\"tick\" x=\"{gx:.1}\" y=\"{:.1}\">{}</text>",
            bottom + 16.0,
            ms(d)
        );
        if e < hi_e {
            for m in [2.0, 5.0] {
                let mx = x(d * m);
                let _ = write!(o, "<line class=\"grid minor\" x1=\"{mx:.1}\" x2=\"{mx:.1}\" y1=\"{top}\" y2=\"{bottom:.1}\"/>");
            }
        }
    }
    for (i, v) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let _ = write!(o, "<g class=\"row\" data-variant=\"{}\">", esc(&v.variant));
        let _ = write!(
            o,
            "<text class=\"label\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            label_w - 52.0,
            y + 8.0 + row_h / 2.0 - 4.0,
            esc(&ellipsis(&v.variant, 22))
        );
        match (v.absent.as_deref(), v.percentiles) {
            (None, Some(p)) => {
                for (j, (name, alpha)) in PERCENTILES.iter().enumerate() {
                    let by = y + 8.0 + sub_h * j as f64;
                    let _ = write!(
                        o,
                        "<text class=\"sub\" x=\"{:.1}\" y=\"{:.1}\">{name}</text><rect x=\"{label_w}\" y=\"{by:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" fill-opacity=\"{alpha}\"><title>{}: {name} {}</title></rect>\
                         <text class=\"value small\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                        label_w - 8.0,
                        by + sub_h - 3.0,
                        (x(p[j]) - label_w).max(1.0),
                        sub_h - 2.0,
                        v.colour,
                        esc(&v.variant),
                        ms(p[j]),
                        x(p[j]) + 6.0,
                        by + sub_h - 3.0,
                        ms(p[j])
                    );
                }
                if v.max_ms > 0.0 {
                    let _ = write!(
                        o,
                        "<title>{}: max {}</title>",
                        esc(&v.variant),
                        ms(v.max_ms)
                    );
                }
            }
            (absent, _) => absent_row(
                &mut o,
                absent.unwrap_or("no data"),
                label_w + 10.0,
                y + row_h / 2.0 + 4.0,
            ),
        }
        o.push_str("</g>\n");
    }
    o.push_str("</svg>\n");
    o
}

/// One variant's per-second series.
pub(super) struct Series {
    pub variant: String,
    pub colour: &'static str,
    pub rps: Vec<(f64, f64)>,
    pub p99: Vec<(f64, f64)>,
}

pub(super) fn line_chart(
    id: &str,
    unit: &str,
    series: &[Series],
    pick: fn(&Series) -> &Vec<(f64, f64)>,
    fmt: fn(f64) -> String,
) -> String {
    let w = 500.0;
    let h = 230.0;
    let (left, right, top, bottom) = (64.0, 14.0, 10.0, 34.0);
    let xmax = series
        .iter()
        .flat_map(|s| pick(s).iter().map(|p| p.0))
        .fold(0.0, f64::max)
        .ceil()
        .max(1.0);
    let ymax = series
        .iter()
        .flat_map(|s| pick(s).iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let (yticks, ytop) = nice_ticks(ymax);
    let x = |v: f64| left + (w - left - right) * v / xmax;
    let y = |v: f64| h - bottom - (h - top - bottom) * v / ytop;
    let mut o = format!(
        "<svg class=\"chart small\" data-chart=\"{id}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{unit} per second of the measurement\" xmlns=\"http://www.w3.org/2000/svg\">\n"
    );
    for t in &yticks {
        let gy = y(*t);
        let _ = write!(
            o,
            "<line class=\"grid\" x1=\"{left}\" x2=\"{:.1}\" y1=\"{gy:.1}\" y2=\"{gy:.1}\"/><text class=\"tick end\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            w - right,
            left - 6.0,
            gy + 4.0,
            fmt(*t)
        );
    }
    let (xticks, _) = nice_ticks(xmax);
    for t in xticks.iter().filter(|t| **t <= xmax) {
        let _ = write!(
            o,
            "<text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\">{}s</text>",
            x(*t),
            h - bottom + 16.0,
            num(*t)
        );
    }
    let _ = write!(
        o,
        "<line class=\"axis\" x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/><text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\">seconds into the measurement</text>\n",
        w - right,
        h - bottom,
        h - bottom,
        left + (w - left - right) / 2.0,
        h - 3.0
    );
    for s in series {
        let pts = pick(s);
        let _ = write!(o, "<g class=\"row\" data-variant=\"{}\">", esc(&s.variant));
        let d: Vec<String> = pts
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let _ = write!(
            o,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2.5\" points=\"{}\"/>",
            s.colour,
            d.join(" ")
        );
        for (a, b) in pts {
            let _ = write!(
                o,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{}\"><title>{}, second {}: {} {unit}</title></circle>",
                x(*a),
                y(*b),
                s.colour,
                esc(&s.variant),
                a.floor(),
                fmt(*b)
            );
        }
        o.push_str("</g>\n");
    }
    o.push_str("</svg>\n");
    o
}

fn svg_open(id: &str, h: f64, label: &str) -> String {
    format!(
        "<svg class=\"chart\" data-chart=\"{id}\" viewBox=\"0 0 {W} {h:.0}\" role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">\n",
        esc(label)
    )
}

fn grid(
    o: &mut String,
    ticks: &[f64],
    x: impl Fn(f64) -> f64,
    top: f64,
    bottom: f64,
    fmt: fn(f64) -> String,
) {
    for t in ticks {
        let gx = x(*t);
        let _ = write!(
            o,
            "<line class=\"grid\" x1=\"{gx:.1}\" x2=\"{gx:.1}\" y1=\"{top}\" y2=\"{bottom:.1}\"/><text class=\"tick\" x=\"{gx:.1}\" y=\"{:.1}\">{}</text>",
            bottom + 16.0,
            fmt(*t)
        );
    }
    let _ = writeln!(
        o,
        "<line class=\"axis\" x1=\"{LABEL_W}\" x2=\"{LABEL_W}\" y1=\"{top}\" y2=\"{bottom:.1}\"/>"
    );
}

fn row_label(o: &mut String, label: &str, yc: f64) {
    let short = ellipsis(label, 24);
    let _ = write!(
        o,
        "<text class=\"label\" x=\"{:.1}\" y=\"{:.1}\">",
        LABEL_W - 10.0,
        yc + 4.0
    );
    if short != label {
        let _ = write!(o, "<title>{}</title>", esc(label));
    }
    let _ = write!(o, "{}</text>", esc(&short));
}

/// Why a row has no bars, from `x` on the row whose middle is at `yc`.
fn absent_row(o: &mut String, why: &str, x: f64, yc: f64) {
    let class = if why.starts_with("failed") {
        "absent bad"
    } else {
        "absent"
    };
    let _ = write!(
        o,
        "<text class=\"{class}\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
        x,
        yc + 4.0,
        esc(why)
    );
}

/// A small bar chart of a log2 latency histogram (bucket i: [2^i, 2^(i+1)) ns).
pub(super) fn histogram(hist: &[u64], colour: &str) -> String {
    let n = tracer::profile::HIST_BUCKETS;
    let (bw, h) = (2.5, 18.0);
    let max = hist.iter().copied().max().unwrap_or(0).max(1) as f64;
    let mut o = format!(
        "<svg class=\"hist\" viewBox=\"0 0 {} {h}\" width=\"{}\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\"><rect class=\"hist-bg\" width=\"{}\" height=\"{h}\"/>",
        bw * n as f64,
        bw * n as f64,
        bw * n as f64
    );
    // Marks at 1 µs and 1 ms.
    for mark in [10.0, 20.0] {
        let _ = write!(
            o,
            "<line class=\"hist-mark\" x1=\"{0}\" x2=\"{0}\" y1=\"0\" y2=\"{h}\"/>",
            mark * bw
        );
    }
    for (i, &count) in hist.iter().enumerate().filter(|(_, c)| **c > 0) {
        let bh = (h - 1.0) * (count as f64 / max).sqrt().max(0.08);
        let lo = dur_ns(2f64.powi(i as i32));
        let range = if i + 1 >= n {
            format!("≥ {lo}")
        } else {
            format!("{lo}–{}", dur_ns(2f64.powi(i as i32 + 1)))
        };
        let _ = write!(
            o,
            "<rect x=\"{:.1}\" y=\"{:.2}\" width=\"{:.1}\" height=\"{bh:.2}\" fill=\"{colour}\"><title>{range}: {} calls</title></rect>",
            i as f64 * bw,
            h - bh,
            bw - 0.5,
            int(count)
        );
    }
    o.push_str("</svg>");
    o
}

/// Round tick values from 0 covering `max`, and the axis end (the last tick).
fn nice_ticks(max: f64) -> (Vec<f64>, f64) {
    if max.is_nan() || max <= 0.0 || !max.is_finite() {
        return (vec![0.0, 1.0], 1.0);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = match raw / mag {
        n if n <= 1.0 => mag,
        n if n <= 2.0 => 2.0 * mag,
        n if n <= 5.0 => 5.0 * mag,
        _ => 10.0 * mag,
    };
    let steps = (max / step - 1e-9).ceil().max(1.0) as usize;
    let ticks: Vec<f64> = (0..=steps).map(|i| i as f64 * step).collect();
    let top = *ticks.last().expect("at least two ticks");
    (ticks, top)
}

/// Dark or light text, whichever reads on `bg` (`#rrggbb`).
fn ink_on(bg: &str) -> &'static str {
    let c = |i: usize| u8::from_str_radix(&bg[i..i + 2], 16).unwrap_or(0) as f64 / 255.0;
    let lum = 0.2126 * c(1) + 0.7152 * c(3) + 0.0722 * c(5);
    if lum > 0.5 {
        "#1d1d1f"
    } else {
        "#ffffff"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_maximum() {
        let (t, top) = nice_ticks(11648.0);
        assert_eq!(t[1], 5000.0);
        assert!((11648.0..20000.0).contains(&top));
        assert_eq!(nice_ticks(0.0).1, 1.0);
    }
}
