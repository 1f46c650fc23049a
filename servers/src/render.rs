//! Response bodies: JSON through serde, and the fortunes page through a small escaping
//! template. Every body is rendered fresh for each request, as the TechEmpower rules ask.
//!
//! Each body is written into a buffer sized for it up front (no growing and copying), and
//! numbers go through `itoa` rather than `fmt`: on `/fortunes` the page's rendering was a
//! quarter of the server's instructions per request (docs/benchmarks.md).

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

/// `{"id":N,"randomNumber":M}`, written directly: two integers under fixed keys need no
/// escaping, and serde_json's key escaping was 5% of a `/db` request's instructions.
/// (`/json` is serialised with serde_json, as the spec asks of it.)
pub fn world_json(world: &World) -> Vec<u8> {
    let mut body = Vec::with_capacity(WORLD_JSON_MAX);
    write_world(&mut body, world);
    body
}

pub fn worlds_json(worlds: &[World]) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + (WORLD_JSON_MAX + 1) * worlds.len());
    body.push(b'[');
    for (i, world) in worlds.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        write_world(&mut body, world);
    }
    body.push(b']');
    body
}

/// `{"id":-2147483648,"randomNumber":-2147483648}`: the longest a world can be.
const WORLD_JSON_MAX: usize = 46;

fn write_world(out: &mut Vec<u8>, world: &World) {
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(number.format(world.id).as_bytes());
    out.extend_from_slice(b",\"randomNumber\":");
    out.extend_from_slice(number.format(world.random_number).as_bytes());
    out.push(b'}');
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
    // Room for the markup and every message escaped at its usual ratio: one allocation.
    let text: usize = fortunes.iter().map(|f| f.message.len()).sum();
    let mut html = Vec::with_capacity(
        FORTUNES_HEAD.len() + FORTUNES_TAIL.len() + text + text / 4 + 40 * fortunes.len(),
    );
    html.extend_from_slice(FORTUNES_HEAD.as_bytes());
    let mut id = itoa::Buffer::new();
    for fortune in &fortunes {
        html.extend_from_slice(b"<tr><td>");
        html.extend_from_slice(id.format(fortune.id).as_bytes());
        html.extend_from_slice(b"</td><td>");
        escape_into(&fortune.message, &mut html);
        html.extend_from_slice(b"</td></tr>");
    }
    html.extend_from_slice(FORTUNES_TAIL.as_bytes());
    html
}

/// HTML-escapes the five characters that matter; everything else, multi-byte UTF-8
/// included, is copied as it is (the five are ASCII, so no character is split), in runs
/// between the bytes that need an entity. Sixteen bytes are checked at once (SSE2, part
/// of every x86_64), so a run of plain text costs about one instruction per byte rather
/// than a comparison per byte: this was the largest function of `/fortunes` in callgrind.
pub fn escape_into(text: &str, out: &mut Vec<u8>) {
    let bytes = text.as_bytes();
    let mut last = 0;
    let mut at = 0;
    while at < bytes.len() {
        let (mut found, width) = markup_mask(&bytes[at..]);
        while found != 0 {
            let i = at + found.trailing_zeros() as usize;
            found &= found - 1;
            out.extend_from_slice(&bytes[last..i]);
            out.extend_from_slice(entity(bytes[i]).unwrap_or_default());
            last = i + 1;
        }
        at += width;
    }
    out.extend_from_slice(&bytes[last..]);
}

/// The entity for a byte that needs one.
fn entity(byte: u8) -> Option<&'static [u8]> {
    Some(match byte {
        b'<' => b"&lt;",
        b'>' => b"&gt;",
        b'&' => b"&amp;",
        b'"' => b"&quot;",
        b'\'' => b"&#x27;",
        _ => return None,
    })
}

/// Which of the first bytes of `rest` need an entity (bit `i` for byte `i`), and how many
/// bytes that covers (16, or what is left).
fn markup_mask(rest: &[u8]) -> (u32, usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(chunk) = rest.first_chunk::<16>() {
        return (sse2_markup_mask(chunk), 16);
    }
    #[cfg(not(target_arch = "x86_64"))]
    if let Some(chunk) = rest.first_chunk::<8>() {
        if !any_markup(u64::from_le_bytes(*chunk)) {
            return (0, 8);
        }
    }
    let width = rest.len().min(16);
    let mask = (rest[..width].iter().enumerate())
        .filter(|&(_, &byte)| entity(byte).is_some())
        .fold(0, |mask, (i, _)| mask | 1 << i);
    (mask, width)
}

#[cfg(target_arch = "x86_64")]
fn sse2_markup_mask(chunk: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of x86_64's baseline, and the unaligned load reads exactly the
    // 16 bytes of `chunk`.
    unsafe {
        let bytes = _mm_loadu_si128(chunk.as_ptr().cast());
        let equal = |t: u8| _mm_cmpeq_epi8(bytes, _mm_set1_epi8(t as i8));
        let tags = _mm_or_si128(equal(b'<'), equal(b'>'));
        let quotes = _mm_or_si128(equal(b'"'), equal(b'\''));
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(tags, quotes), equal(b'&'))) as u32
    }
}

/// Elsewhere, eight bytes at once: whether any of them is one of the five that need an
/// entity. A byte equal to `t` is a zero byte of `chunk ^ t…t`, and
/// `(x - 0x01…) & !x & 0x80…` is non-zero exactly when `x` has a zero byte.
#[cfg(not(target_arch = "x86_64"))]
fn any_markup(chunk: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let equal = |t: u8| zero_byte(chunk ^ (ONES * u64::from(t)));
    (equal(b'<') | equal(b'>') | equal(b'&') | equal(b'"') | equal(b'\'')) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_a_chunk_at_a_time_matches_byte_by_byte() {
        let naive = |text: &str| {
            let mut out = String::new();
            for c in text.chars() {
                match c {
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '&' => out.push_str("&amp;"),
                    '"' => out.push_str("&quot;"),
                    '\'' => out.push_str("&#x27;"),
                    c => out.push(c),
                }
            }
            out
        };
        // Every position of a markup character against the 16-byte chunks, next to
        // neighbours of the same byte value but one (which a bit trick could confuse),
        // NUL, high bytes, and multi-byte characters across a chunk boundary.
        let alphabet = [
            'a', '<', '>', '&', '"', '\'', ';', '=', '%', '\0', 'é', 'フ', '\u{7f}',
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for length in 0..70 {
            for _ in 0..200 {
                let text: String = (0..length)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        alphabet[(seed % alphabet.len() as u64) as usize]
                    })
                    .collect();
                let mut out = Vec::new();
                escape_into(&text, &mut out);
                assert_eq!(String::from_utf8(out).unwrap(), naive(&text), "{text:?}");
            }
        }
    }

    #[test]
    fn worlds_are_the_json_serde_writes() {
        let worlds: Vec<World> = [(1, 10000), (10000, 1), (i32::MIN, i32::MAX), (0, -7)]
            .into_iter()
            .map(|(id, random_number)| World { id, random_number })
            .collect();
        for world in &worlds {
            assert_eq!(world_json(world), serde_json::to_vec(world).unwrap());
            assert!(world_json(world).len() <= WORLD_JSON_MAX);
        }
        for n in 0..=worlds.len() {
            assert_eq!(
                worlds_json(&worlds[..n]),
                serde_json::to_vec(&worlds[..n]).unwrap()
            );
        }
    }

    #[test]
    fn escapes_markup_and_keeps_utf8_raw() {
        let mut out = Vec::new();
        escape_into("<a href=\"x\">'&'</a> — フ", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
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
    fn fortunes_page_has_one_row_per_fortune_with_its_id() {
        let page = fortunes_html(vec![Fortune {
            id: 10_000,
            message: "b <é>".into(),
        }]);
        assert_eq!(
            String::from_utf8(page).unwrap(),
            format!(
                "{FORTUNES_HEAD}<tr><td>0</td><td>{ADDED_FORTUNE}</td></tr>\
                 <tr><td>10000</td><td>b &lt;é&gt;</td></tr>{FORTUNES_TAIL}"
            )
        );
    }

    #[test]
    fn worlds_are_a_json_array() {
        let worlds = [
            World {
                id: 1,
                random_number: 10_000,
            },
            World {
                id: 10_000,
                random_number: 1,
            },
        ];
        assert_eq!(
            worlds_json(&worlds),
            br#"[{"id":1,"randomNumber":10000},{"id":10000,"randomNumber":1}]"#
        );
        assert_eq!(worlds_json(&[]), b"[]");
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
