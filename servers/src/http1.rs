//! The HTTP/1.1 codec of the variants that do not use hyper (thread-per-request,
//! thread-pool, io-uring): parsing requests out of a read buffer with httparse, and
//! framing responses into a write buffer.
//!
//! It is built for the way those variants batch: [`parse`] takes one complete request
//! from the front of whatever a read returned, so a variant parses every pipelined
//! request in a read, appends each response with [`write_response`], and sends the
//! batch in one write. Limits (documented for users in `docs/variants/`):
//!
//! - request head (request line and headers): at most [`MAX_HEAD`] bytes, else 431;
//! - at most [`MAX_HEADERS`] header fields, else 431;
//! - a request body is allowed only with `Content-Length`, at most [`MAX_BODY`] bytes
//!   (else 413); it is read and discarded;
//! - `Transfer-Encoding` of any kind is not supported: 501;
//! - anything httparse rejects (bad method, target, version, header syntax, NUL bytes): 400.
//!
//! A rejected request is answered with [`crate::app::error_response_bytes`] and the
//! connection is closed: after a framing error nothing that follows can be trusted.

use crate::app::{self, Response};

/// Largest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header fields accepted.
pub const MAX_HEADERS: usize = 64;
/// Largest request body accepted (read and discarded).
pub const MAX_BODY: usize = 64 * 1024;

/// One parsed request, borrowing the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'buf> {
    pub method: &'buf str,
    pub target: &'buf str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// What the front of a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'buf> {
    /// A whole request (head and body) of `length` bytes.
    Complete {
        request: Request<'buf>,
        length: usize,
    },
    /// Not enough bytes yet.
    Partial,
    /// A request that gets this status and a close.
    Reject(u16),
}

/// Parses the request at the front of `buffer`.
pub fn parse(buffer: &[u8]) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_length = match request.parse(buffer) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => return Parsed::Reject(431),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD => return Parsed::Reject(431),
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Reject(431),
        Err(_) => return Parsed::Reject(400),
    };
    let (Some(method), Some(target), Some(minor_version)) =
        (request.method, request.path, request.version)
    else {
        return Parsed::Reject(400);
    };
    let mut keep_alive = minor_version == 1;
    let mut body_length = 0usize;
    let mut seen_length = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let Some(length) = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            else {
                return Parsed::Reject(400);
            };
            // Two different lengths are a request-smuggling attempt.
            if seen_length && length != body_length {
                return Parsed::Reject(400);
            }
            seen_length = true;
            body_length = length;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Reject(501);
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    if body_length > MAX_BODY {
        return Parsed::Reject(413);
    }
    if buffer.len() < head_length + body_length {
        return Parsed::Partial;
    }
    Parsed::Complete {
        request: Request {
            method,
            target,
            minor_version,
            keep_alive,
        },
        length: head_length + body_length,
    }
}

/// Appends a response to `out`. `request` gives the version and whether the connection
/// stays open (a `Connection` header says so when it differs from the version's default).
pub fn write_response(out: &mut Vec<u8>, response: &Response, request: &Request<'_>) {
    write_head(out, response, request);
    out.extend_from_slice(&response.body);
}

/// Appends a response's status line and headers only (`--write-mode split` sends the
/// body in a write of its own).
pub fn write_head(out: &mut Vec<u8>, response: &Response, request: &Request<'_>) {
    // Pieces appended and numbers through `itoa`: `write!` and its formatting machinery
    // were 5% of the io-uring variant's instructions per /db request.
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(number.format(response.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(app::reason(response.status).as_bytes());
    out.extend_from_slice(b"\r\nServer: ");
    out.extend_from_slice(app::SERVER_NAME.as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(&crate::date::now());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(response.content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(number.format(response.body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    if response.status == 405 {
        out.extend_from_slice(b"Allow: GET\r\n");
    }
    match (request.keep_alive, request.minor_version) {
        (false, 1) => out.extend_from_slice(b"Connection: close\r\n"),
        (true, 0) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> (Request<'_>, usize) {
        match parse(bytes) {
            Parsed::Complete { request, length } => (request, length),
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn pipelined_requests_parse_one_at_a_time() {
        let batch = b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\nGET /json HTTP/1.1\r\nHost: a\r\n\r\nGET /db HT";
        let (first, n) = complete(batch);
        assert_eq!(
            (first.method, first.target, first.keep_alive),
            ("GET", "/plaintext", true)
        );
        let (second, m) = complete(&batch[n..]);
        assert_eq!(second.target, "/json");
        assert_eq!(parse(&batch[n + m..]), Parsed::Partial);
    }

    #[test]
    fn connection_semantics_follow_the_version() {
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")
                .0
                .keep_alive
        );
    }

    #[test]
    fn bodies_are_consumed_and_bounded() {
        let (_, n) = complete(b"POST /json HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET");
        assert_eq!(n, 45, "head of 42 bytes and a body of 3");
        assert_eq!(
            parse(b"POST /json HTTP/1.1\r\nContent-Length: 3\r\n\r\nab"),
            Parsed::Partial
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            Parsed::Reject(413)
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"),
            Parsed::Reject(400)
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Reject(501)
        );
    }

    #[test]
    fn hostile_heads_are_rejected_with_the_right_status() {
        assert_eq!(parse(b"GARBAGE\0\x01 x\r\n\r\n"), Parsed::Reject(400));
        assert_eq!(parse(b"GET / HTTP/9.9\r\n\r\n"), Parsed::Reject(400));
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(long.as_bytes()), Parsed::Reject(431));
        assert_eq!(
            parse(&long.as_bytes()[..MAX_HEAD + 10]),
            Parsed::Reject(431)
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert_eq!(
            parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Parsed::Reject(431)
        );
    }

    #[test]
    fn responses_are_framed_with_every_required_header() {
        let (request, _) = complete(b"GET /plaintext HTTP/1.1\r\nConnection: close\r\n\r\n");
        let mut out = Vec::new();
        write_response(&mut out, &Response::text(200, "Hello"), &request);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nServer: syscall-lab\r\nDate: "),
            "{text}"
        );
        assert!(text.contains(
            "\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nHello"
        ));
    }
}
