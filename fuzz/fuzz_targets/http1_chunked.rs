//! Fuzz target: the chunked transfer-coding decoder
//! (`chartcache::http1::chunked::ChunkedDecoder`).
//!
//! Asserts the module's invariants, not just "no panic":
//! - every call stays inside its input (`consumed <= input.len()`, data spans inside
//!   the consumed bytes, never empty) and makes progress (consumes something unless the
//!   input is empty or the body is done), so a caller's loop always ends;
//! - after `done` nothing more is consumed;
//! - the outcome does not depend on how the input is split: whole, byte by byte and
//!   at input-derived split points give the same body, the same verdict and (when the
//!   body completes) the same number of bytes consumed;
//! - a completed body re-encoded as chunks decodes to the same bytes.
#![no_main]

use chartcache::http1::chunked::{ChunkedDecoder, ChunkedError};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    body: Vec<u8>,
    /// `Ok((done, consumed))`; the consumed count of a failed run depends on the split.
    verdict: Result<(bool, usize), ChunkedError>,
}

fuzz_target!(|data: &[u8]| {
    let whole = run(data, &mut |_| usize::MAX);
    let bytewise = run(data, &mut |_| 1);
    let seed = data
        .iter()
        .fold(7usize, |a, &b| a.wrapping_mul(31).wrapping_add(b as usize));
    let mut k = seed;
    let uneven = run(data, &mut |_| {
        k = k
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        1 + (k >> 33) % 23
    });
    assert_eq!(whole, bytewise, "whole vs byte by byte");
    assert_eq!(whole, uneven, "whole vs uneven splits");
    assert!(whole.body.len() <= data.len());
    if let Ok((true, consumed)) = whole.verdict {
        assert!(consumed <= data.len());
        let again = encode(&whole.body, 1 + seed % 7);
        let back = run(&again, &mut |_| usize::MAX);
        assert_eq!(back.body, whole.body, "re-encoded body");
        assert_eq!(back.verdict, Ok((true, again.len())));
    }
});

/// Feeds `input` in pieces of `step()` bytes, looping over each piece the way callers do.
fn run(input: &[u8], step: &mut dyn FnMut(usize) -> usize) -> Outcome {
    let mut dec = ChunkedDecoder::new();
    let mut body = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let end = pos.saturating_add(step(pos)).min(input.len());
        let mut piece = &input[pos..end];
        while !piece.is_empty() {
            let was_done = dec.is_done();
            let d = match dec.decode(piece) {
                Ok(d) => d,
                Err(e) => {
                    return Outcome {
                        body,
                        verdict: Err(e),
                    }
                }
            };
            assert!(d.consumed <= piece.len());
            if was_done {
                assert_eq!(d.consumed, 0, "consumed after done");
            }
            if let Some((s, l)) = d.data {
                assert!(l > 0 && s + l <= d.consumed, "{d:?} of {}", piece.len());
                body.extend_from_slice(&piece[s..s + l]);
            }
            assert_eq!(d.done, dec.is_done());
            pos += d.consumed;
            piece = &piece[d.consumed..];
            if d.done {
                let after = dec.decode(piece).expect("decode after done");
                assert_eq!((after.consumed, after.data, after.done), (0, None, true));
                return Outcome {
                    body,
                    verdict: Ok((true, pos)),
                };
            }
            assert!(d.consumed > 0, "no progress on {} bytes", piece.len());
        }
    }
    Outcome {
        body,
        verdict: Ok((dec.is_done(), pos)),
    }
}

/// `body` as chunks of `chunk` bytes (hex sizes), then the last chunk and no trailers.
fn encode(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() * 2 + 5);
    for c in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
