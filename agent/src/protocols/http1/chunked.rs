//! Chunked transfer coding (RFC 9112 §7.1): where a chunked body ends.
//! Only the framing is decoded; the data is skipped, never kept.

/// Chunk extensions and trailers are skipped, not buffered; past this many
/// bytes the "chunked" body is considered garbage.
const MAX_CHUNK_META_BYTES: u32 = 64 * 1024;

/// Chunked transfer-coding decoder. Tracks framing only; data is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkedState {
    Size {
        value: u64,
        digits: u8,
    },
    /// Chunk extension or whitespace after the size, up to LF.
    Ext,
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerLine,
    TrailerLf,
    Done,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct ChunkedDecoder {
    state: ChunkedState,
    /// Sum of chunk sizes decoded so far (the payload size).
    pub(super) body_bytes: u64,
    /// Value of the size line being read when it is followed by an extension.
    ext_value: u64,
    meta_bytes: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum ChunkedError {
    Invalid,
}

impl ChunkedDecoder {
    pub(super) fn new() -> Self {
        ChunkedDecoder { state: ChunkedState::Size { value: 0, digits: 0 }, body_bytes: 0, ext_value: 0, meta_bytes: 0 }
    }

    pub(super) fn is_done(&self) -> bool {
        self.state == ChunkedState::Done
    }

    fn end_of_size_line(&mut self, value: u64) {
        self.state = if value == 0 { ChunkedState::TrailerLineStart } else { ChunkedState::Data { remaining: value } };
    }

    /// Consumes bytes up to the end of the body; returns how many.
    pub(super) fn feed(&mut self, input: &[u8]) -> Result<usize, ChunkedError> {
        use ChunkedState::*;
        let mut i = 0;
        while i < input.len() {
            if let Data { remaining } = self.state {
                let take = remaining.min((input.len() - i) as u64);
                i += take as usize;
                self.body_bytes = self.body_bytes.saturating_add(take);
                self.state = if remaining == take { DataCr } else { Data { remaining: remaining - take } };
                continue;
            }
            if self.state == Done {
                break;
            }
            let c = input[i];
            i += 1;
            self.meta_bytes = self.meta_bytes.saturating_add(1);
            if self.meta_bytes > MAX_CHUNK_META_BYTES {
                return Err(ChunkedError::Invalid);
            }
            self.state = match self.state {
                Size { value, digits } => match c {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits >= 16 {
                            return Err(ChunkedError::Invalid);
                        }
                        let d = (c as char).to_digit(16).unwrap_or(0) as u64;
                        Size { value: (value << 4) | d, digits: digits + 1 }
                    }
                    _ if digits == 0 => return Err(ChunkedError::Invalid),
                    b';' | b' ' | b'\t' => {
                        self.ext_value = value;
                        Ext
                    }
                    b'\r' => SizeLf { value },
                    b'\n' => {
                        self.end_of_size_line(value);
                        self.state
                    }
                    _ => return Err(ChunkedError::Invalid),
                },
                Ext => match c {
                    b'\r' => SizeLf { value: self.ext_value },
                    b'\n' => {
                        self.end_of_size_line(self.ext_value);
                        self.state
                    }
                    _ => Ext,
                },
                SizeLf { value } => {
                    if c != b'\n' {
                        return Err(ChunkedError::Invalid);
                    }
                    self.end_of_size_line(value);
                    self.state
                }
                DataCr => match c {
                    b'\r' => DataLf,
                    b'\n' => Size { value: 0, digits: 0 },
                    _ => return Err(ChunkedError::Invalid),
                },
                DataLf => match c {
                    b'\n' => Size { value: 0, digits: 0 },
                    _ => return Err(ChunkedError::Invalid),
                },
                TrailerLineStart => match c {
                    b'\r' => TrailerLf,
                    b'\n' => Done,
                    _ => TrailerLine,
                },
                TrailerLine => match c {
                    b'\n' => TrailerLineStart,
                    _ => TrailerLine,
                },
                TrailerLf => match c {
                    b'\n' => Done,
                    _ => return Err(ChunkedError::Invalid),
                },
                Data { .. } | Done => self.state,
            };
            if self.state == Done {
                break;
            }
        }
        Ok(i)
    }

    /// `n` uncaptured bytes follow. They can be accounted for only when they
    /// lie inside one chunk's data; otherwise a chunk-size line is invisible.
    pub(super) fn skip_blind(&mut self, n: u64) -> bool {
        if n == 0 {
            return true;
        }
        match self.state {
            ChunkedState::Data { remaining } if n <= remaining => {
                self.body_bytes = self.body_bytes.saturating_add(n);
                self.state =
                    if n == remaining { ChunkedState::DataCr } else { ChunkedState::Data { remaining: remaining - n } };
                true
            }
            _ => false,
        }
    }

    /// The `n` uncaptured bytes could be exactly the rest of the current
    /// chunk and the bare last chunk `0\r\n\r\n` (what node, and most
    /// servers writing a body in one go, end with). Then the body size is
    /// counted in; whether the body really ended there is only known once
    /// no more response bytes follow (the caller's business).
    pub(super) fn blind_may_end_body(&mut self, n: u64) -> bool {
        const LAST_CHUNK: u64 = 5;
        let (data, framing) = match self.state {
            ChunkedState::Data { remaining } => (remaining, 2),
            ChunkedState::DataCr => (0, 2),
            ChunkedState::DataLf => (0, 1),
            ChunkedState::Size { value: 0, digits: 0 } => (0, 0),
            _ => return false,
        };
        if n != data.saturating_add(framing + LAST_CHUNK) {
            return false;
        }
        self.body_bytes = self.body_bytes.saturating_add(data);
        self.state = ChunkedState::Done;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_decoder_rejects_garbage() {
        for bad in [&b"g\r\n"[..], b"\r\n", b"5\r\nhelloX", b"5\nhello\r\r", b"11111111111111111\r\n"] {
            let mut d = ChunkedDecoder::new();
            assert_eq!(d.feed(bad), Err(ChunkedError::Invalid), "{bad:?}");
        }
        // Bare LF line endings are tolerated, as httparse tolerates them.
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"3\nabc\n0\n\n"), Ok(9));
        assert!(d.is_done());
        assert_eq!(d.body_bytes, 3);
        // Bytes after the terminating chunk are not consumed.
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"0\r\n\r\nHTTP/1.1"), Ok(5));
    }
}
