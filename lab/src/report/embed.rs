//! Files embedded in the report page as data, so the page needs nothing beside it: a
//! file's bytes as base64 (for a `data:` URI) and an SVG's proportions (so its box keeps
//! the drawing's shape). Kept apart from the sections: this is encoding, not layout.

/// Width and height of an SVG document, from its root element's `viewBox` (else its
/// `width` and `height`), so the page can keep the drawing's proportions.
pub(super) fn svg_aspect(data: &[u8]) -> Option<(f64, f64)> {
    let text = String::from_utf8_lossy(&data[..data.len().min(4096)]);
    let root = &text[text.find("<svg")?..];
    let root = &root[..root.find('>')?];
    let attr = |name: &str| {
        let at = root.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(root[at..at + root[at..].find('"')?].to_string())
    };
    let (w, h) = match attr("viewBox") {
        Some(vb) => {
            let n: Vec<f64> = vb
                .split([' ', ','])
                .filter_map(|x| x.trim().parse().ok())
                .collect();
            (*n.get(2)?, *n.get(3)?)
        }
        None => (
            attr("width")?.trim_end_matches("px").parse().ok()?,
            attr("height")?.trim_end_matches("px").parse().ok()?,
        ),
    };
    (w > 0.0 && h > 0.0).then_some((w, h))
}

/// Standard base64 (RFC 4648, with `=` padding).
pub(super) fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_svg_sizes() {
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64(b"M"), "TQ==");
        let svg = br#"<?xml version="1.0"?><svg version="1.1" width="1200" height="230" viewBox="0 0 1200 230">"#;
        assert_eq!(svg_aspect(svg), Some((1200.0, 230.0)));
        assert_eq!(
            svg_aspect(br#"<svg width="300px" height="100px">"#),
            Some((300.0, 100.0))
        );
    }
}
