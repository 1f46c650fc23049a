//! How the report writes values: HTML escaping, numbers with as many digits as they
//! deserve, durations, sizes and dates, and the "How to read this" line that opens a
//! section. Shared by the page's sections and its charts.

use std::fmt::Write as _;

/// HTML-escapes text for element content and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // Control characters other than tab and newline would make the document invalid.
            c if c.is_control() && c != '\n' && c != '\t' && c != '\r' => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

/// The "How to read this" line under a section's or chart's title.
pub(super) fn how(o: &mut String, text: &str) {
    let _ = writeln!(
        o,
        "<p class=\"how\"><span>How to read this:</span> {}</p>",
        esc(text)
    );
}

pub(super) fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// A number with as many digits as it deserves.
pub(super) fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        format!("{sign}{}", int(a.round() as u64))
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        trim(format!("{v:.1}"))
    } else if a >= 1.0 {
        trim(format!("{v:.2}"))
    } else if a == 0.0 {
        "0".into()
    } else if a >= 0.001 {
        trim(format!("{v:.3}"))
    } else {
        // Two significant digits: 0.00086, not 8.6e-4.
        let decimals = (-a.log10().floor()) as usize + 1;
        format!("{v:.decimals$}")
    }
}

pub(super) fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

pub(super) fn int(v: u64) -> String {
    let s = v.to_string();
    let mut o = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            o.push(',');
        }
        o.push(ch);
    }
    o
}

/// Milliseconds, shown in µs below 1 ms and in s from 1 s.
pub(super) fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{} s", num(v / 1000.0))
    } else if v >= 1.0 || v == 0.0 {
        format!("{} ms", num(v))
    } else {
        format!("{} µs", num(v * 1000.0))
    }
}

/// Microseconds.
pub(super) fn us(v: f64) -> String {
    if v >= 1000.0 {
        ms(v / 1000.0)
    } else {
        format!("{} µs", num(v))
    }
}

pub(super) fn dur_ns(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 1e3 {
        format!("{} ns", num(v))
    } else if v < 1e6 {
        format!("{} µs", num(v / 1e3))
    } else if v < 1e9 {
        format!("{} ms", num(v / 1e6))
    } else {
        format!("{} s", num(v / 1e9))
    }
}

pub(super) fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{} {}", num(v), UNITS[u])
}

pub(super) fn secs(s: f64) -> String {
    format!("{} s", num(s))
}

/// `YYYY-MM-DD HH:MM:SS UTC` from Unix seconds.
pub(super) fn utc(unix_s: f64) -> String {
    if !unix_s.is_finite() || unix_s <= 0.0 {
        return "unknown".into();
    }
    let t = crate::clock::Utc::from_unix(unix_s.floor() as i64);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>a & \"b\" 'c'</script>"),
            "&lt;script&gt;a &amp; &quot;b&quot; &#39;c&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(11648.43), "11,648");
        assert_eq!(num(123.4), "123");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(6.80), "6.8");
        assert_eq!(num(0.0123), "0.012");
        assert_eq!(num(0.0), "0");
        assert_eq!(ms(0.532), "532 µs");
        assert_eq!(ms(3.409), "3.41 ms");
        assert_eq!(dur_ns(1500.0), "1.5 µs");
        assert_eq!(bytes(1536.0), "1.5 KiB");
    }

    #[test]
    fn dates() {
        assert_eq!(utc(0.0), "unknown");
        assert_eq!(utc(1_795_274_621.27), "2026-11-21 15:23:41 UTC");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00 UTC");
    }
}
