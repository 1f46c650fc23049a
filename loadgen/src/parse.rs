//! Response framing: an incremental HTTP/1.1 response parser that never allocates per response.
//!
//! It owns the per-connection parse state between reads: the status line and headers must
//! sit whole in the read buffer (httparse parses them in place), bodies are skipped as they
//! arrive (Content-Length, chunked, or until close), so one read may finish many pipelined
//! responses and one response may span many reads.
//!
//! A server answering the same request sends the same head, byte for byte, until its `Date`
//! changes a second later. Each connection remembers the last head it parsed and what it
//! meant; a head that repeats it exactly is recognised by one comparison instead of a
//! header-by-header parse (most of the generator's own CPU at hundreds of thousands of
//! pipelined responses per second). Every byte is still checked: against a head that was
//! parsed and validated.

use std::mem::MaybeUninit;

/// Longest status line plus headers accepted (the whole read buffer, as wrk's 8 KiB); more
/// is a malformed response.
pub const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;
const MAX_CHUNK_LINE: usize = 1024;
/// Heads up to this size are remembered for the repeat check (a TechEmpower head is ~130 B).
const MAX_REMEMBERED_HEAD: usize = 512;

/// A complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub status: u16,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// Why a response is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Head,
    HeadTooLarge,
    ContentLength,
    Chunk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body { remaining: u64 },
    ChunkSize,
    ChunkData { remaining: u64 },
    ChunkCrlf,
    Trailers,
    UntilClose,
}

/// What a response head says about the response that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeadMeaning {
    status: u16,
    close: bool,
    body: State,
}

/// The last head parsed on this connection, byte for byte, and its meaning.
#[derive(Debug, Clone, Default)]
struct RememberedHead {
    bytes: Vec<u8>,
    meaning: Option<HeadMeaning>,
}

/// Parse state of the response currently being received on one connection.
#[derive(Debug, Clone)]
pub struct Parser {
    state: State,
    status: u16,
    close: bool,
    last_head: RememberedHead,
}

impl Default for Parser {
    fn default() -> Self {
        Parser {
            state: State::Head,
            status: 0,
            close: false,
            last_head: RememberedHead::default(),
        }
    }
}

impl Parser {
    /// True when no byte of a response has been consumed yet.
    pub fn at_start(&self) -> bool {
        self.state == State::Head
    }

    /// True when the body runs until the server closes the connection.
    pub fn until_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// The response whose body ended with the connection (only valid when `until_close`).
    pub fn finish_at_eof(&mut self) -> Done {
        let d = Done {
            status: self.status,
            close: true,
        };
        self.state = State::Head;
        d
    }

    /// Consumes bytes from the front of `buf`. Returns how many were consumed and, if a
    /// response ended, that response. Call again with the rest of the buffer until it
    /// returns no response; unconsumed bytes must be kept for the next call.
    pub fn feed(&mut self, buf: &[u8]) -> Result<(usize, Option<Done>), Malformed> {
        let mut pos = 0;
        loop {
            let avail = &buf[pos..];
            match self.state {
                State::Head => {
                    if avail.is_empty() {
                        return Ok((pos, None));
                    }
                    if let Some(meaning) = self.last_head.meaning {
                        let n = self.last_head.bytes.len();
                        if avail.len() >= n && avail[..n] == self.last_head.bytes[..] {
                            pos += n;
                            self.begin_body(meaning);
                            continue;
                        }
                    }
                    // Uninitialised: zeroing 64 headers for every response costs more
                    // than parsing a small one.
                    let mut headers =
                        [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
                    let mut resp = httparse::Response::new(&mut []);
                    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                        &mut resp,
                        avail,
                        &mut headers,
                    ) {
                        Ok(httparse::Status::Partial) => {
                            if avail.len() >= MAX_HEAD {
                                return Err(Malformed::HeadTooLarge);
                            }
                            return Ok((pos, None));
                        }
                        Err(_) => return Err(Malformed::Head),
                        Ok(httparse::Status::Complete(n)) => {
                            let status = resp.code.unwrap_or(0);
                            let mut length: Option<u64> = None;
                            let mut chunked = false;
                            let mut close = resp.version == Some(0);
                            for h in resp.headers.iter() {
                                if h.name.eq_ignore_ascii_case("content-length") {
                                    let v =
                                        parse_length(h.value).ok_or(Malformed::ContentLength)?;
                                    if length.is_some_and(|l| l != v) {
                                        return Err(Malformed::ContentLength);
                                    }
                                    length = Some(v);
                                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                                    chunked = ends_with_chunked(h.value);
                                } else if h.name.eq_ignore_ascii_case("connection") {
                                    if contains_token(h.value, b"close") {
                                        close = true;
                                    } else if contains_token(h.value, b"keep-alive") {
                                        close = false;
                                    }
                                }
                            }
                            let head = &avail[..n];
                            pos += n;
                            if (100..200).contains(&status) {
                                // Interim response (e.g. 100 Continue): the real one follows.
                                continue;
                            }
                            let body = if status == 204 || status == 304 {
                                State::Body { remaining: 0 }
                            } else if chunked {
                                State::ChunkSize
                            } else if let Some(l) = length {
                                State::Body { remaining: l }
                            } else {
                                close = true;
                                State::UntilClose
                            };
                            let meaning = HeadMeaning {
                                status,
                                close,
                                body,
                            };
                            self.remember(head, meaning);
                            self.begin_body(meaning);
                        }
                    }
                }
                State::Body { remaining } => {
                    let take = remaining.min(avail.len() as u64);
                    pos += take as usize;
                    if take < remaining {
                        self.state = State::Body {
                            remaining: remaining - take,
                        };
                        return Ok((pos, None));
                    }
                    return Ok((pos, Some(self.finish())));
                }
                State::ChunkSize => {
                    let Some(nl) = find_lf(avail) else {
                        if avail.len() > MAX_CHUNK_LINE {
                            return Err(Malformed::Chunk);
                        }
                        return Ok((pos, None));
                    };
                    let size = parse_chunk_size(&avail[..nl]).ok_or(Malformed::Chunk)?;
                    pos += nl + 1;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData { remaining: size }
                    };
                }
                State::ChunkData { remaining } => {
                    let take = remaining.min(avail.len() as u64);
                    pos += take as usize;
                    if take < remaining {
                        self.state = State::ChunkData {
                            remaining: remaining - take,
                        };
                        return Ok((pos, None));
                    }
                    self.state = State::ChunkCrlf;
                }
                State::ChunkCrlf => {
                    if avail.len() < 2 {
                        if avail.first().is_some_and(|&b| b != b'\r') {
                            return Err(Malformed::Chunk);
                        }
                        return Ok((pos, None));
                    }
                    if &avail[..2] != b"\r\n" {
                        return Err(Malformed::Chunk);
                    }
                    pos += 2;
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let Some(nl) = find_lf(avail) else {
                        if avail.len() >= MAX_HEAD {
                            return Err(Malformed::Chunk);
                        }
                        return Ok((pos, None));
                    };
                    let line = &avail[..nl];
                    pos += nl + 1;
                    if line.is_empty() || line == b"\r" {
                        return Ok((pos, Some(self.finish())));
                    }
                }
                State::UntilClose => {
                    return Ok((buf.len(), None));
                }
            }
        }
    }

    fn begin_body(&mut self, meaning: HeadMeaning) {
        self.status = meaning.status;
        self.close = meaning.close;
        self.state = meaning.body;
    }

    fn remember(&mut self, head: &[u8], meaning: HeadMeaning) {
        let memo = &mut self.last_head;
        if head.len() > MAX_REMEMBERED_HEAD {
            memo.meaning = None;
            return;
        }
        memo.bytes.clear();
        memo.bytes.extend_from_slice(head);
        memo.meaning = Some(meaning);
    }

    fn finish(&mut self) -> Done {
        let d = Done {
            status: self.status,
            close: self.close,
        };
        self.state = State::Head;
        d
    }
}

fn find_lf(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |a, &d| a * 10 + u64::from(d - b'0')))
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let hex = match line.iter().position(|&c| c == b';') {
        Some(p) => &line[..p],
        None => line,
    }
    .trim_ascii();
    if hex.is_empty() || hex.len() > 15 {
        return None;
    }
    let mut v = 0u64;
    for &c in hex {
        let d = (c as char).to_digit(16)?;
        v = v * 16 + u64::from(d);
    }
    Some(v)
}

fn ends_with_chunked(v: &[u8]) -> bool {
    v.rsplit(|&c| c == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

fn contains_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&c| c == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut Parser, data: &[u8]) -> Result<Vec<Done>, Malformed> {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let (n, d) = p.feed(&data[pos..])?;
            pos += n;
            match d {
                Some(d) => out.push(d),
                None => break,
            }
        }
        assert_eq!(pos, data.len(), "everything consumed");
        Ok(out)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nServer: x\r\n\r\nHello, World!";

    #[test]
    fn pipelined_in_one_buffer() {
        let data = [OK, OK, OK].concat();
        let mut p = Parser::default();
        assert_eq!(all(&mut p, &data).unwrap().len(), 3);
    }

    #[test]
    fn repeated_heads_mean_what_they_meant_and_changed_heads_are_parsed_afresh() {
        let other_length = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nServer: x\r\n\r\nabc";
        let closing =
            b"HTTP/1.1 503 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\nHello, World!";
        let data = [OK, OK, other_length, OK, closing].concat();
        let mut p = Parser::default();
        let done = all(&mut p, &data).unwrap();
        let statuses: Vec<_> = done.iter().map(|d| (d.status, d.close)).collect();
        assert_eq!(
            statuses,
            [
                (200, false),
                (200, false),
                (200, false),
                (200, false),
                (503, true)
            ]
        );
        // A repeated head followed by a body that is too short stays incomplete.
        let mut p = Parser::default();
        all(&mut p, OK).unwrap();
        let (n, d) = p.feed(&OK[..OK.len() - 1]).unwrap();
        assert_eq!((n, d), (OK.len() - 1, None));
        // A head that differs only in one byte of a header is parsed (and rejected) anew.
        let mut p = Parser::default();
        all(&mut p, OK).unwrap();
        let bad = [&OK[..33], b"x", &OK[34..]].concat();
        assert_eq!(p.feed(&bad), Err(Malformed::ContentLength));
    }

    #[test]
    fn byte_by_byte() {
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\nT: v\r\n\r\n";
        for resp in [OK, &chunked[..]] {
            let mut p = Parser::default();
            let mut pending = Vec::new();
            let mut done = Vec::new();
            for &b in resp {
                pending.push(b);
                let (n, d) = p.feed(&pending).unwrap();
                pending.drain(..n);
                done.extend(d);
            }
            assert_eq!(done.len(), 1);
            assert!(pending.is_empty());
        }
    }

    #[test]
    fn status_and_close() {
        let mut p = Parser::default();
        let d = all(
            &mut p,
            b"HTTP/1.1 500 E\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            d,
            vec![Done {
                status: 500,
                close: true
            }]
        );
        let d = all(
            &mut p,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            d,
            vec![Done {
                status: 204,
                close: false
            }]
        );
        assert!(all(&mut p, b"HTTP/1.1 200 OK\r\n\r\nabc")
            .unwrap()
            .is_empty());
        assert!(p.until_close());
        assert_eq!(p.finish_at_eof().status, 200);
    }

    /// Random bytes and random cuts and mutations of valid responses: never a panic, and
    /// every call consumes within bounds.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut rng = crate::schedule::Rng::new(42);
        let valid: [&[u8]; 3] = [
            OK,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.0 404 N\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc",
        ];
        for round in 0..20_000 {
            let mut data: Vec<u8> = if round % 2 == 0 {
                (0..rng.below(300)).map(|_| rng.below(256) as u8).collect()
            } else {
                let mut d = valid[rng.below(3) as usize].repeat(1 + rng.below(3) as usize);
                for _ in 0..rng.below(4) {
                    let i = rng.below(d.len() as u64) as usize;
                    d[i] = rng.below(256) as u8;
                }
                d
            };
            data.truncate(rng.below(data.len() as u64 + 1) as usize);
            let mut p = Parser::default();
            let mut pos = 0;
            while let Ok((n, done)) = p.feed(&data[pos..]) {
                assert!(pos + n <= data.len());
                pos += n;
                if done.is_none() {
                    break;
                }
            }
        }
    }

    #[test]
    fn malformed() {
        for bad in [
            &b"garbage garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
        ] {
            assert!(
                all(&mut Parser::default(), bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let big = vec![b'a'; MAX_HEAD + 1];
        let mut head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        head.extend_from_slice(&big);
        assert_eq!(Parser::default().feed(&head), Err(Malformed::HeadTooLarge));
    }
}
