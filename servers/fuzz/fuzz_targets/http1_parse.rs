//! The HTTP/1.1 codec's parser against arbitrary bytes: it must never panic, never claim
//! more bytes than it was given, and parse a pipelined stream to the end the same way
//! whether it arrives whole or split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use servers::http1::{self, Parsed};

fuzz_target!(|data: &[u8]| {
    let mut offset = 0;
    while offset < data.len() {
        match http1::parse(&data[offset..]) {
            Parsed::Complete { request, length } => {
                assert!(length > 0 && offset + length <= data.len(), "length out of bounds");
                // Routing and framing the answer must not panic either.
                let _ = servers::app::resolve(request.method, request.target);
                let mut out = Vec::new();
                http1::write_response(&mut out, &servers::app::Response::not_found(), &request);
                offset += length;
            }
            Parsed::Partial | Parsed::Reject(_) => break,
        }
    }
    // A prefix of a complete request is partial or already rejected, never complete with
    // a different length.
    if let Parsed::Complete { length, .. } = http1::parse(data) {
        for cut in [length / 2, length.saturating_sub(1)] {
            if cut > 0 {
                if let Parsed::Complete { length: shorter, .. } = http1::parse(&data[..cut]) {
                    assert!(shorter <= cut);
                }
            }
        }
    }
});
