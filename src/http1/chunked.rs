//! Incremental decoder for the chunked transfer coding (RFC 9112 §7.1), used for
//! upstream response bodies.
//!
//! Owns: the framing state machine only. Input may be split at any byte; the
//! decoder keeps just its state (no buffering), so feeding one byte at a time
//! yields the same body as feeding it whole.
//!
//! Invariants:
//! - chunk sizes are 1+ hex digits and must fit `u64` (overflow → error);
//! - chunk extensions (`;name=value`) are skipped, bounded by [`MAX_LINE_BYTES`];
//! - trailer fields are skipped, the whole trailer section bounded by
//!   [`MAX_TRAILER_BYTES`];
//! - every line ends in CRLF (a bare LF or a CR not followed by LF is an error),
//!   and chunk data is followed by CRLF;
//! - after [`Decoded::done`] the decoder consumes nothing more: bytes after the
//!   terminator belong to the next response (the caller decides whether they are
//!   acceptable).

/// Upper bound on a chunk-size line (size + extensions).
pub const MAX_LINE_BYTES: usize = 4096;
/// Upper bound on the trailer section (all trailer lines together).
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Why a chunked body was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("invalid chunk size")]
    BadSize,
    #[error("chunk size overflows u64")]
    SizeOverflow,
    #[error("chunk-size line too long")]
    LineTooLong,
    #[error("missing CRLF after chunk data")]
    MissingCrlf,
    #[error("invalid line ending in chunked body")]
    BadLineEnding,
    #[error("chunked trailer section too large")]
    TrailerTooLarge,
}

/// Result of one [`ChunkedDecoder::decode`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input consumed (framing and data). Always `<= input.len()`.
    pub consumed: usize,
    /// A span of body data inside the consumed input: `(start, len)`.
    pub data: Option<(usize, usize)>,
    /// The terminating chunk and trailers have been consumed: the body is complete.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits; `digits` seen so far.
    Size {
        value: u64,
        digits: usize,
    },
    /// Whitespace after the size: only more whitespace, `;` or CR may follow.
    SizeWs {
        value: u64,
    },
    /// Inside `;ext...`, skipped until CR.
    Ext {
        value: u64,
    },
    /// Saw CR ending the size line; expect LF.
    SizeLf {
        value: u64,
    },
    /// Inside chunk data.
    Data {
        remaining: u64,
    },
    /// After data: expect CR.
    DataCr,
    /// After data CR: expect LF.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// CR ending a non-empty trailer line; expect LF.
    TrailerLf,
    /// CR of the final empty line; expect LF.
    FinalLf,
    Done,
}

/// Chunked-body state machine. Create one per response body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes on the current size line, bounded by [`MAX_LINE_BYTES`].
    line_bytes: usize,
    /// Bytes in the trailer section, bounded by [`MAX_TRAILER_BYTES`].
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            line_bytes: 0,
            trailer_bytes: 0,
        }
    }

    /// The body has been fully decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Advance over `input`. Stops after the first data span (so the caller can
    /// hand it out), at the end of the input, or when the body is complete.
    /// Callers loop: drop `consumed` bytes, use `data`, call again while input remains.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => break,
                State::Data { remaining } => {
                    let avail = (input.len() - i) as u64;
                    let take = remaining.min(avail) as usize;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining: left }
                    };
                    return Ok(Decoded {
                        consumed: i + take,
                        data: Some((i, take)),
                        done: false,
                    });
                }
                State::Size { value, digits } => {
                    self.bump_line()?;
                    if let Some(d) = hex_val(b) {
                        let value = value
                            .checked_mul(16)
                            .and_then(|v| v.checked_add(u64::from(d)))
                            .ok_or(ChunkedError::SizeOverflow)?;
                        self.state = State::Size {
                            value,
                            digits: digits + 1,
                        };
                    } else if b == b'\n' {
                        return Err(ChunkedError::BadLineEnding);
                    } else if digits == 0 {
                        return Err(ChunkedError::BadSize);
                    } else if b == b'\r' {
                        self.state = State::SizeLf { value };
                    } else if b == b';' {
                        self.state = State::Ext { value };
                    } else if b == b' ' || b == b'\t' {
                        self.state = State::SizeWs { value };
                    } else {
                        return Err(ChunkedError::BadSize);
                    }
                }
                State::SizeWs { value } => {
                    self.bump_line()?;
                    match b {
                        b' ' | b'\t' => {}
                        b';' => self.state = State::Ext { value },
                        b'\r' => self.state = State::SizeLf { value },
                        b'\n' => return Err(ChunkedError::BadLineEnding),
                        _ => return Err(ChunkedError::BadSize),
                    }
                }
                State::Ext { value } => {
                    self.bump_line()?;
                    match b {
                        b'\r' => self.state = State::SizeLf { value },
                        b'\n' => return Err(ChunkedError::BadLineEnding),
                        _ => {}
                    }
                }
                State::SizeLf { value } => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadLineEnding);
                    }
                    self.line_bytes = 0;
                    self.state = if value == 0 {
                        State::TrailerStart
                    } else {
                        State::Data { remaining: value }
                    };
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError::MissingCrlf);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::MissingCrlf);
                    }
                    self.state = State::Size {
                        value: 0,
                        digits: 0,
                    };
                }
                State::TrailerStart => {
                    self.bump_trailer()?;
                    match b {
                        b'\r' => self.state = State::FinalLf,
                        b'\n' => return Err(ChunkedError::BadLineEnding),
                        _ => self.state = State::Trailer,
                    }
                }
                State::Trailer => {
                    self.bump_trailer()?;
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\n' => return Err(ChunkedError::BadLineEnding),
                        _ => {}
                    }
                }
                State::TrailerLf => {
                    self.bump_trailer()?;
                    if b != b'\n' {
                        return Err(ChunkedError::BadLineEnding);
                    }
                    self.state = State::TrailerStart;
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadLineEnding);
                    }
                    self.state = State::Done;
                    return Ok(Decoded {
                        consumed: i + 1,
                        data: None,
                        done: true,
                    });
                }
            }
            i += 1;
        }
        Ok(Decoded {
            consumed: i,
            data: None,
            done: self.state == State::Done,
        })
    }

    fn bump_line(&mut self) -> Result<(), ChunkedError> {
        self.line_bytes += 1;
        if self.line_bytes > MAX_LINE_BYTES {
            return Err(ChunkedError::LineTooLong);
        }
        Ok(())
    }

    fn bump_trailer(&mut self) -> Result<(), ChunkedError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILER_BYTES {
            return Err(ChunkedError::TrailerTooLarge);
        }
        Ok(())
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in pieces of `step` bytes; return (body, done, leftover-unconsumed).
    fn run(input: &[u8], step: usize) -> Result<(Vec<u8>, bool, usize), ChunkedError> {
        let mut dec = ChunkedDecoder::new();
        let mut body = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + step).min(input.len());
            let mut piece = &input[pos..end];
            loop {
                let d = dec.decode(piece)?;
                if let Some((s, l)) = d.data {
                    body.extend_from_slice(&piece[s..s + l]);
                }
                piece = &piece[d.consumed..];
                pos += d.consumed;
                if d.done {
                    return Ok((body, true, input.len() - pos));
                }
                if piece.is_empty() {
                    break;
                }
            }
        }
        Ok((body, dec.is_done(), 0))
    }

    const BODY: &[u8] = b"4\r\nWiki\r\n5;ext=1;name=\"q\"\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: yes\r\nX-Other: 1\r\n\r\n";

    #[test]
    fn decodes_whole_and_every_split() {
        let expected = b"Wikipedia in\r\n\r\nchunks.".to_vec();
        for step in 1..=BODY.len() {
            let (body, done, left) = run(BODY, step).unwrap();
            assert_eq!(body, expected, "step {step}");
            assert!(done, "step {step}");
            assert_eq!(left, 0);
        }
    }

    #[test]
    fn byte_by_byte_decoding() {
        let (body, done, _) = run(b"1\r\na\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!(body, b"a0123456789abcdef");
        assert!(done);
    }

    #[test]
    fn stops_at_terminator_leaving_next_response() {
        let mut input = b"3\r\nabc\r\n0\r\n\r\n".to_vec();
        input.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let (body, done, left) = run(&input, input.len()).unwrap();
        assert_eq!(body, b"abc");
        assert!(done);
        assert_eq!(left, 17);
    }

    #[test]
    fn incomplete_body_is_not_done() {
        for cut in [
            b"3\r\nab".as_slice(),
            b"3\r\nabc\r\n",
            b"3\r\nabc\r\n0\r\n",
            b"0\r\nX: y\r\n",
        ] {
            let (_, done, _) = run(cut, 1).unwrap();
            assert!(!done, "{cut:?}");
        }
    }

    #[test]
    fn bad_hex_and_empty_size() {
        assert_eq!(run(b"g\r\n", 100), Err(ChunkedError::BadSize));
        assert_eq!(run(b"\r\n", 100), Err(ChunkedError::BadSize));
        assert_eq!(run(b";ext\r\n", 100), Err(ChunkedError::BadSize));
        assert_eq!(run(b"-1\r\n", 100), Err(ChunkedError::BadSize));
        assert_eq!(run(b"0x5\r\n", 100), Err(ChunkedError::BadSize));
    }

    #[test]
    fn size_overflow() {
        assert_eq!(run(b"ffffffffffffffff\r\n", 100).map(|r| r.1), Ok(false));
        assert_eq!(
            run(b"10000000000000000\r\n", 100),
            Err(ChunkedError::SizeOverflow)
        );
        // Leading zeros do not overflow.
        let (body, done, _) = run(b"00000000000000000001\r\nz\r\n0\r\n\r\n", 3).unwrap();
        assert_eq!((body.as_slice(), done), (b"z".as_slice(), true));
    }

    #[test]
    fn line_endings_are_strict() {
        assert_eq!(run(b"3\nabc\r\n", 100), Err(ChunkedError::BadLineEnding));
        assert_eq!(run(b"3\rxabc", 100), Err(ChunkedError::BadLineEnding));
        assert_eq!(run(b"3\r\nabcX\r\n", 100), Err(ChunkedError::MissingCrlf));
        assert_eq!(run(b"3\r\nabc\rX", 100), Err(ChunkedError::MissingCrlf));
        assert_eq!(run(b"0\r\n\n", 100), Err(ChunkedError::BadLineEnding));
        assert_eq!(
            run(b"0\r\nX: y\n\r\n", 100),
            Err(ChunkedError::BadLineEnding)
        );
    }

    #[test]
    fn long_extension_and_trailer_are_bounded() {
        let mut line = b"1;".to_vec();
        line.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES));
        line.extend_from_slice(b"\r\n");
        assert_eq!(run(&line, 7), Err(ChunkedError::LineTooLong));

        let mut trailer = b"0\r\nX-Big: ".to_vec();
        trailer.extend(std::iter::repeat_n(b'y', MAX_TRAILER_BYTES));
        trailer.extend_from_slice(b"\r\n\r\n");
        assert_eq!(run(&trailer, 1000), Err(ChunkedError::TrailerTooLarge));
    }

    #[test]
    fn whitespace_before_extension_is_tolerated() {
        let (body, done, _) = run(b"2 ;x\r\nok\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!((body.as_slice(), done), (b"ok".as_slice(), true));
        let (body, done, _) = run(b"2\t \r\nok\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!((body.as_slice(), done), (b"ok".as_slice(), true));
        // A second number after whitespace is not an extension.
        assert_eq!(run(b"1 2\r\n", 1), Err(ChunkedError::BadSize));
    }

    #[test]
    fn nothing_consumed_after_done() {
        let mut dec = ChunkedDecoder::new();
        let d = dec.decode(b"0\r\n\r\nextra").unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 5,
                data: None,
                done: true
            }
        );
        let d = dec.decode(b"extra").unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 0,
                data: None,
                done: true
            }
        );
    }
}
