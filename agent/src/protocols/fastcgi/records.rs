//! Framing one direction of a FastCGI connection into records, by byte
//! counts: the 8-byte header is buffered across reads, content and padding
//! are passed on (captured) or skipped (uncaptured) without being stored.
use waggle_common::fastcgi::{Header, HEADER_LEN};

/// What the reader found in a chunk, in stream order.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Piece<'a> {
    /// A header was read; its content follows.
    Start(Header),
    /// Content of the current record: `bytes` captured, then `missing`
    /// uncaptured bytes.
    Content(Header, &'a [u8], u64),
    /// The record's content and padding are complete.
    End(Header),
}

#[derive(Default)]
pub(super) struct RecordReader {
    head: [u8; HEADER_LEN],
    head_len: usize,
    current: Option<Header>,
    content_left: u64,
    padding_left: u64,
}

impl RecordReader {
    /// Frames `bytes` (captured) followed by `missing` uncaptured bytes.
    /// Err when a header was not a FastCGI header or fell into the
    /// uncaptured bytes: framing is lost.
    pub(super) fn push<'a>(
        &mut self,
        mut bytes: &'a [u8],
        mut missing: u64,
        mut on: impl FnMut(Piece<'a>),
    ) -> Result<(), &'static str> {
        loop {
            if let Some(h) = self.current {
                if self.content_left > 0 {
                    let take = bytes.len().min(usize::try_from(self.content_left).unwrap_or(usize::MAX));
                    let (now, rest) = bytes.split_at(take);
                    bytes = rest;
                    self.content_left -= take as u64;
                    let mut skipped = 0;
                    if bytes.is_empty() && self.content_left > 0 {
                        skipped = missing.min(self.content_left);
                        missing -= skipped;
                        self.content_left -= skipped;
                    }
                    if !now.is_empty() || skipped > 0 {
                        on(Piece::Content(h, now, skipped));
                    }
                }
                if self.content_left == 0 {
                    let take = bytes.len().min(usize::try_from(self.padding_left).unwrap_or(usize::MAX));
                    bytes = &bytes[take..];
                    self.padding_left -= take as u64;
                    if bytes.is_empty() && self.padding_left > 0 {
                        let skipped = missing.min(self.padding_left);
                        missing -= skipped;
                        self.padding_left -= skipped;
                    }
                }
                if self.content_left > 0 || self.padding_left > 0 {
                    return Ok(());
                }
                self.current = None;
                on(Piece::End(h));
            }
            if bytes.is_empty() {
                return if missing > 0 { Err("record header not captured") } else { Ok(()) };
            }
            let take = (HEADER_LEN - self.head_len).min(bytes.len());
            self.head[self.head_len..self.head_len + take].copy_from_slice(&bytes[..take]);
            self.head_len += take;
            bytes = &bytes[take..];
            if self.head_len < HEADER_LEN {
                return if missing > 0 { Err("record header not captured") } else { Ok(()) };
            }
            self.head_len = 0;
            let h = Header::parse(&self.head).ok_or("not a FastCGI record header")?;
            self.current = Some(h);
            self.content_left = u64::from(h.content_len);
            self.padding_left = u64::from(h.padding);
            on(Piece::Start(h));
        }
    }

    /// Forget the current record: the next byte is taken as a header.
    pub(super) fn resync(&mut self) {
        *self = RecordReader::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(r: &mut RecordReader, b: &[u8], missing: u64) -> Result<Vec<String>, &'static str> {
        let mut out = Vec::new();
        r.push(b, missing, |p| {
            out.push(match p {
                Piece::Start(h) => format!("start {} #{}", h.kind, h.request_id),
                Piece::Content(_, b, m) => format!("content {}+{m}", b.len()),
                Piece::End(h) => format!("end {}", h.kind),
            })
        })?;
        Ok(out)
    }

    #[test]
    fn headers_split_across_reads_and_padding_are_followed() {
        let rec = [1, 6, 0, 1, 0, 3, 5, 0, b'a', b'b', b'c', 0, 0, 0, 0, 0];
        let mut r = RecordReader::default();
        assert_eq!(pieces(&mut r, &rec[..5], 0).unwrap(), Vec::<String>::new());
        assert_eq!(pieces(&mut r, &rec[5..10], 0).unwrap(), ["start 6 #1", "content 2+0"]);
        assert_eq!(pieces(&mut r, &rec[10..], 0).unwrap(), ["content 1+0", "end 6"]);
    }

    #[test]
    fn uncaptured_content_is_skipped_but_a_lost_header_is_an_error() {
        let mut r = RecordReader::default();
        // 100 bytes of content, 10 captured, 90 not: still in sync.
        assert_eq!(pieces(&mut r, &[1, 6, 0, 1, 0, 100, 0, 0, 1, 2], 92).unwrap(), ["start 6 #1", "content 2+92"]);
        assert_eq!(pieces(&mut r, &[3; 6], 0).unwrap(), ["content 6+0", "end 6"]);
        // Uncaptured bytes past the record's end hold a header.
        assert!(pieces(&mut r, &[1, 6, 0, 1, 0, 1, 0, 0, 9], 3).is_err());
        let mut r = RecordReader::default();
        assert!(pieces(&mut r, b"GET / HTTP/1.1\r\n", 0).is_err());
    }
}
