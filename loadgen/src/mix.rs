//! Targets: the weighted mix file (`--mix FILE`), `{lo..hi}` / `{a,b,c}` placeholders, and
//! the request bytes built once per target before the run, so the hot path only copies.
//!
//! Mix file syntax, one target per line:
//! ```text
//! # comment; blank lines are ignored
//! 4 /plaintext                 # weight, then path (and query)
//! /json                        # weight 1 when omitted
//! 2 /queries?queries={1..20}   # {lo..hi}: uniform random integer, inclusive
//! 1 /updates?queries={1,5,10,15,20}   # {a,b,c}: one of the listed values
//! ```

use serde::{Deserialize, Serialize};

use crate::config::Error;

/// One line of a mix: a path template and its relative weight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MixEntry {
    pub weight: u32,
    pub path: String,
}

/// Largest number of distinct requests one template may expand to (all are prebuilt).
const MAX_VARIANTS: usize = 100_000;

/// A target ready for the hot path: every variant of its request, prebuilt.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    /// The path as written in the mix (the per-target report key).
    pub name: String,
    /// Complete request bytes, one per combination of placeholder values.
    pub requests: Vec<Vec<u8>>,
}

/// Parses a mix file's text; errors name the line.
pub fn parse(text: &str) -> Result<Vec<MixEntry>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = match raw
            .find(" #")
            .or_else(|| raw.trim_start().starts_with('#').then_some(0))
        {
            Some(p) => &raw[..p],
            None => raw,
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let n = i + 1;
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let (weight, path) = if first.starts_with('/') {
            (1, first)
        } else {
            let w: u32 = first.parse().map_err(|_| {
                format!("line {n}: expected 'WEIGHT /path' or '/path', found {first:?}")
            })?;
            let Some(path) = words.next() else {
                return Err(format!("line {n}: weight {w} without a path"));
            };
            (w, path)
        };
        if let Some(extra) = words.next() {
            return Err(format!("line {n}: unexpected {extra:?} after the path"));
        }
        if !path.starts_with('/') {
            return Err(format!("line {n}: path {path:?} must start with '/'"));
        }
        expand(path).map_err(|e| format!("line {n}: {e}"))?;
        out.push(MixEntry {
            weight,
            path: path.to_string(),
        });
    }
    if out.is_empty() {
        return Err("no targets (expected lines like '1 /plaintext')".into());
    }
    if out.iter().all(|e| e.weight == 0) {
        return Err("every weight is zero".into());
    }
    Ok(out)
}

/// Reads and parses a mix file.
pub fn load(path: &std::path::Path) -> Result<Vec<MixEntry>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read mix file {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("mix file {}: {e}", path.display()))
}

enum Part {
    Lit(String),
    Choice(Vec<String>),
}

/// Expands a path template into every concrete path (bounded by `MAX_VARIANTS`).
fn expand(path: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        parts.push(Part::Lit(rest[..open].to_string()));
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("unclosed '{{' in {path:?}"));
        };
        let inner = &rest[open + 1..open + close];
        parts.push(Part::Choice(placeholder(inner)?));
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("unmatched '}}' in {path:?}"));
    }
    parts.push(Part::Lit(rest.to_string()));
    let mut out = vec![String::new()];
    for p in &parts {
        match p {
            Part::Lit(s) => out.iter_mut().for_each(|o| o.push_str(s)),
            Part::Choice(vals) => {
                if out.len().saturating_mul(vals.len()) > MAX_VARIANTS {
                    return Err(format!(
                        "{path:?} expands to more than {MAX_VARIANTS} distinct paths"
                    ));
                }
                out = out
                    .iter()
                    .flat_map(|o| vals.iter().map(move |v| format!("{o}{v}")))
                    .collect();
            }
        }
    }
    for p in &out {
        if p.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!("path {p:?} contains spaces or control characters"));
        }
    }
    Ok(out)
}

fn placeholder(inner: &str) -> Result<Vec<String>, String> {
    if let Some((lo, hi)) = inner.split_once("..") {
        let (Ok(lo), Ok(hi)) = (lo.trim().parse::<i64>(), hi.trim().parse::<i64>()) else {
            return Err(format!(
                "placeholder {{{inner}}}: expected {{LOW..HIGH}} with integers"
            ));
        };
        if lo > hi {
            return Err(format!("placeholder {{{inner}}}: {lo} is above {hi}"));
        }
        if (hi - lo) as u64 >= MAX_VARIANTS as u64 {
            return Err(format!("placeholder {{{inner}}}: range too large"));
        }
        return Ok((lo..=hi).map(|v| v.to_string()).collect());
    }
    let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if vals.iter().any(|v| v.is_empty() || v.contains('{')) {
        return Err(format!(
            "placeholder {{{inner}}}: expected {{LOW..HIGH}} or {{a,b,c}}"
        ));
    }
    Ok(vals)
}

/// What every request of a run shares besides its path.
pub(crate) struct Head<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// Extra header lines, each ending in CRLF (`Content-Length` included with a body).
    pub headers: &'a str,
    pub body: &'a str,
}

/// Builds a target's requests: `METHOD path HTTP/1.1`, `Host`, extra headers,
/// `Connection: close` when every request gets its own connection, and the body.
pub(crate) fn build(e: &MixEntry, head: &Head<'_>, keepalive: bool) -> Result<Template, Error> {
    if !e.path.starts_with('/') {
        return Err(Error::Input(format!(
            "path {:?} must start with '/'",
            e.path
        )));
    }
    let paths = expand(&e.path).map_err(Error::Input)?;
    let close = if keepalive {
        ""
    } else {
        "Connection: close\r\n"
    };
    let requests = paths
        .iter()
        .map(|p| {
            let Head {
                method,
                host,
                headers,
                body,
            } = head;
            format!("{method} {p} HTTP/1.1\r\nHost: {host}\r\n{headers}{close}\r\n{body}")
                .into_bytes()
        })
        .collect();
    Ok(Template {
        name: e.path.clone(),
        requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mix() {
        let m = parse("# TFB\n4 /plaintext\n/json # one\n\n2 /queries?queries={1..3}\n").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[0],
            MixEntry {
                weight: 4,
                path: "/plaintext".into()
            }
        );
        assert_eq!(m[1].weight, 1);
        let get = Head {
            method: "GET",
            host: "h",
            headers: "",
            body: "",
        };
        let t = build(&m[2], &get, true).unwrap();
        assert_eq!(t.requests.len(), 3);
        assert!(t.requests[2].starts_with(b"GET /queries?queries=3 HTTP/1.1\r\nHost: h\r\n\r\n"));
        let post = Head {
            method: "POST",
            headers: "Content-Length: 2\r\n",
            body: "{}",
            ..get
        };
        let t = build(&m[0], &post, false).unwrap();
        assert_eq!(
            t.requests[0],
            b"POST /plaintext HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        );
        assert_eq!(expand("/u?q={1,5}&r={a,b}").unwrap().len(), 4);
    }

    #[test]
    fn rejects_bad_mix() {
        for bad in [
            "x /a",
            "3",
            "2 a",
            "1 /a extra",
            "1 /a{1..",
            "1 /a{5..1}",
            "1 /a{}",
            "1 /a}",
            "",
            "0 /a",
            "-1 /a",
            "1 /{0..99999999}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should fail");
        }
    }
}
