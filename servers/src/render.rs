//! Response bodies: JSON through serde, and the fortunes page through a small escaping
//! template. Every body is rendered fresh for each request, as the TechEmpower rules ask.

use std::fmt::Write;

use serde::Serialize;

/// The `/json` object, built anew for every request.
#[derive(Serialize)]
pub struct Message {
    pub message: &'static str,
}

/// A `world` row, serialised with the key the spec asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct World {
    pub id: i32,
    #[serde(rename = "randomNumber")]
    pub random_number: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fortune {
    pub id: i32,
    pub message: String,
}

pub fn json_message() -> Vec<u8> {
    serde_json::to_vec(&Message {
        message: "Hello, World!",
    })
    .expect("a static struct serialises")
}

pub fn world_json(world: &World) -> Vec<u8> {
    serde_json::to_vec(world).expect("integers serialise")
}

pub fn worlds_json(worlds: &[World]) -> Vec<u8> {
    serde_json::to_vec(worlds).expect("integers serialise")
}

const FORTUNES_HEAD: &str =
    "<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table><tr><th>id</th><th>message</th></tr>";
const FORTUNES_TAIL: &str = "</table></body></html>";
const ADDED_FORTUNE: &str = "Additional fortune added at request time.";

/// Adds the request-time fortune, sorts by message (byte order) and renders the page.
pub fn fortunes_html(mut fortunes: Vec<Fortune>) -> Vec<u8> {
    fortunes.push(Fortune {
        id: 0,
        message: ADDED_FORTUNE.to_string(),
    });
    fortunes.sort_unstable_by(|a, b| a.message.as_bytes().cmp(b.message.as_bytes()));
    let mut html = String::with_capacity(1_300);
    html.push_str(FORTUNES_HEAD);
    for fortune in &fortunes {
        html.push_str("<tr><td>");
        let _ = write!(html, "{}", fortune.id);
        html.push_str("</td><td>");
        escape_into(&fortune.message, &mut html);
        html.push_str("</td></tr>");
    }
    html.push_str(FORTUNES_TAIL);
    html.into_bytes()
}

/// HTML-escapes the five characters that matter; everything else, multi-byte UTF-8
/// included, is copied as it is.
pub fn escape_into(text: &str, out: &mut String) {
    let mut last = 0;
    for (i, byte) in text.bytes().enumerate() {
        let entity = match byte {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'&' => "&amp;",
            b'"' => "&quot;",
            b'\'' => "&#x27;",
            _ => continue,
        };
        out.push_str(&text[last..i]);
        out.push_str(entity);
        last = i + 1;
    }
    out.push_str(&text[last..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_keeps_utf8_raw() {
        let mut out = String::new();
        escape_into("<a href=\"x\">'&'</a> — フ", &mut out);
        assert_eq!(
            out,
            "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;&#x27;&lt;/a&gt; — フ"
        );
    }

    #[test]
    fn fortunes_are_sorted_by_bytes_with_the_added_row() {
        let page = fortunes_html(vec![
            Fortune {
                id: 2,
                message: "b".into(),
            },
            Fortune {
                id: 1,
                message: "B".into(),
            },
        ]);
        let page = String::from_utf8(page).unwrap();
        let a = page.find("<td>Additional").unwrap();
        let upper = page.find("<td>B<").unwrap();
        let lower = page.find("<td>b<").unwrap();
        assert!(a < upper && upper < lower, "{page}");
        assert!(page.starts_with(FORTUNES_HEAD) && page.ends_with(FORTUNES_TAIL));
    }

    #[test]
    fn world_uses_the_spec_key() {
        let body = world_json(&World {
            id: 3217,
            random_number: 2149,
        });
        assert_eq!(body, br#"{"id":3217,"randomNumber":2149}"#);
    }
}
