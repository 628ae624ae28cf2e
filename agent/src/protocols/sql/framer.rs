//! Length-prefixed message framing that copes with captured prefixes: one
//! direction of a connection split into messages, uncaptured bytes skipped
//! by count; and reading NUL-terminated fields of a message body.
use crate::protocols::Chunk;

/// When and by whom a message was moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    pub enter_ns: u64,
    pub exit_ns: u64,
    pub tid: u32,
}

impl Timing {
    pub fn of(chunk: &Chunk<'_>) -> Timing {
        Timing { enter_ns: chunk.enter_ns, exit_ns: chunk.exit_ns, tid: chunk.tid }
    }
}

/// Most header bytes any framing uses.
const MAX_HEADER: usize = 16;

/// A wire protocol's message framing.
pub trait Framing {
    type Head: Copy + Send;
    /// Header length of a message whose first byte is `first`.
    fn header_len(&self, first: u8) -> usize;
    /// Parses a header: (head, body length, body bytes worth keeping), or why
    /// the bytes cannot be a header.
    fn parse_header(&mut self, header: &[u8]) -> Result<(Self::Head, u64, usize), &'static str>;
    /// The next header starts at a message boundary: forget what earlier
    /// headers said about the next one.
    fn resync(&mut self) {}
}

/// One framed message. `body` holds the captured, kept prefix of the body.
#[derive(Clone, Debug)]
pub struct Frame<H> {
    pub head: H,
    pub body: Vec<u8>,
    pub body_len: u64,
    /// Chunk that carried the header.
    pub start: Timing,
    /// Exit time of the chunk that carried the last byte.
    pub end_ns: u64,
}

impl<H> Frame<H> {
    /// The whole body is in `body`.
    pub fn complete(&self) -> bool {
        self.body.len() as u64 == self.body_len
    }
}

#[derive(Debug)]
pub enum Framed<H> {
    Frame(Frame<H>),
    /// Framing is lost (a header fell into uncaptured bytes, or was garbage);
    /// the framer ignores input until [`Framer::resync`].
    Lost(&'static str),
}

struct Current<H> {
    head: H,
    body: Vec<u8>,
    body_len: u64,
    consumed: u64,
    keep: usize,
    start: Timing,
}

/// Splits one direction of a connection into messages, tracking lengths
/// across chunks and skipping uncaptured bytes by count.
pub struct Framer<F: Framing> {
    pub rules: F,
    header: [u8; MAX_HEADER],
    header_have: usize,
    header_start: Timing,
    current: Option<Current<F::Head>>,
    lost: bool,
}

impl<F: Framing> Framer<F> {
    /// Heap bytes of the message being assembled.
    pub fn buffered_bytes(&self) -> usize {
        self.current.as_ref().map_or(0, |c| c.body.capacity())
    }

    pub fn new(rules: F) -> Self {
        Framer {
            rules,
            header: [0; MAX_HEADER],
            header_have: 0,
            header_start: Timing::default(),
            current: None,
            lost: false,
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// Next input starts at a message boundary.
    pub fn resync(&mut self) {
        self.rules.resync();
        self.header_have = 0;
        self.current = None;
        self.lost = false;
    }

    /// Nothing half-read.
    pub fn at_boundary(&self) -> bool {
        !self.lost && self.header_have == 0 && self.current.is_none()
    }

    fn lose(&mut self, reason: &'static str, out: &mut Vec<Framed<F::Head>>) {
        self.lost = true;
        self.header_have = 0;
        self.current = None;
        out.push(Framed::Lost(reason));
    }

    fn finish(&mut self, end_ns: u64, out: &mut Vec<Framed<F::Head>>) {
        if let Some(cur) = self.current.take() {
            out.push(Framed::Frame(Frame {
                head: cur.head,
                body: cur.body,
                body_len: cur.body_len,
                start: cur.start,
                end_ns,
            }));
        }
    }

    /// Feeds one chunk; completed messages (and at most one `Lost`) go to `out`.
    pub fn push(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Framed<F::Head>>) {
        if self.lost {
            return;
        }
        let timing = Timing::of(chunk);
        let mut data = chunk.bytes;
        while !data.is_empty() {
            if let Some(cur) = &mut self.current {
                let remaining = cur.body_len - cur.consumed;
                let take = remaining.min(data.len() as u64) as usize;
                let room = cur.keep.saturating_sub(cur.body.len()).min(take);
                if room > 0 && cur.body.len() as u64 == cur.consumed {
                    cur.body.extend_from_slice(&data[..room]);
                }
                cur.consumed += take as u64;
                data = &data[take..];
                if cur.consumed == cur.body_len {
                    self.finish(chunk.exit_ns, out);
                }
                continue;
            }
            if self.header_have == 0 {
                self.header_start = timing;
            }
            let need =
                self.rules.header_len(if self.header_have > 0 { self.header[0] } else { data[0] }).clamp(1, MAX_HEADER);
            let take = (need - self.header_have).min(data.len());
            self.header[self.header_have..self.header_have + take].copy_from_slice(&data[..take]);
            self.header_have += take;
            data = &data[take..];
            if self.header_have < need {
                break;
            }
            self.header_have = 0;
            match self.rules.parse_header(&self.header[..need]) {
                Ok((head, body_len, keep)) => {
                    let keep = keep.min(usize::try_from(body_len).unwrap_or(usize::MAX));
                    self.current = Some(Current {
                        head,
                        body: Vec::with_capacity(keep.min(data.len())),
                        body_len,
                        consumed: 0,
                        keep,
                        start: self.header_start,
                    });
                    if body_len == 0 {
                        self.finish(chunk.exit_ns, out);
                    }
                }
                Err(reason) => {
                    self.lose(reason, out);
                    return;
                }
            }
        }
        let mut gap = chunk.total_len.saturating_sub(chunk.bytes.len() as u64);
        if gap == 0 {
            return;
        }
        if self.header_have > 0 {
            self.lose("message header not captured", out);
            return;
        }
        if let Some(cur) = &mut self.current {
            let skip = (cur.body_len - cur.consumed).min(gap);
            cur.consumed += skip;
            gap -= skip;
            if cur.consumed == cur.body_len {
                self.finish(chunk.exit_ns, out);
            }
        }
        if gap > 0 {
            self.lose("message boundary not captured", out);
        }
    }
}

/// The NUL-terminated string at `body[*pos..]`; advances past the NUL.
/// None when no NUL is in the (kept) body.
pub fn cstr<'b>(body: &'b [u8], pos: &mut usize) -> Option<&'b [u8]> {
    let rest = body.get(*pos..)?;
    let nul = rest.iter().position(|b| *b == 0)?;
    *pos += nul + 1;
    Some(&rest[..nul])
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestFraming;
    impl Framing for TestFraming {
        type Head = u8;
        fn header_len(&self, _first: u8) -> usize {
            2
        }
        fn parse_header(&mut self, h: &[u8]) -> Result<(u8, u64, usize), &'static str> {
            if h[0] == 0xff {
                return Err("bad");
            }
            Ok((h[0], u64::from(h[1]), 3))
        }
    }

    fn chunk(bytes: &[u8], total: u64) -> Chunk<'_> {
        Chunk { direction: waggle_common::Direction::Egress, bytes, total_len: total, enter_ns: 1, exit_ns: 2, tid: 1 }
    }

    fn frames(out: Vec<Framed<u8>>) -> Vec<(u8, Vec<u8>, u64)> {
        out.into_iter()
            .map(|f| match f {
                Framed::Frame(f) => (f.head, f.body, f.body_len),
                Framed::Lost(_) => (0, b"LOST".to_vec(), 0),
            })
            .collect()
    }

    #[test]
    fn framer_tracks_lengths_across_chunks_and_gaps() {
        let mut f = Framer::new(TestFraming);
        let mut out = Vec::new();
        // Two messages, the second split across chunks, header split too.
        f.push(&chunk(&[1, 2, b'a', b'b', 2], 5), &mut out);
        f.push(&chunk(&[5, b'c', b'd', b'e', b'f', b'g', 3, 0], 8), &mut out);
        assert_eq!(
            frames(std::mem::take(&mut out)),
            vec![(1, b"ab".to_vec(), 2), (2, b"cde".to_vec(), 5), (3, vec![], 0)]
        );
        assert!(f.at_boundary());
        // A body partly captured: the rest is skipped by count.
        f.push(&chunk(&[4, 10, b'x'], 12), &mut out);
        f.push(&chunk(&[7, 1, b'y'], 3), &mut out);
        assert_eq!(frames(std::mem::take(&mut out)), vec![(4, b"x".to_vec(), 10), (7, b"y".to_vec(), 1)]);
        // A boundary inside uncaptured bytes loses framing until resync.
        f.push(&chunk(&[4, 1, b'x'], 10), &mut out);
        assert_eq!(frames(std::mem::take(&mut out)), vec![(4, b"x".to_vec(), 1), (0, b"LOST".to_vec(), 0)]);
        f.push(&chunk(&[4, 0], 2), &mut out);
        assert!(out.is_empty());
        f.resync();
        f.push(&chunk(&[0xff, 0], 2), &mut out);
        assert_eq!(frames(std::mem::take(&mut out)), vec![(0, b"LOST".to_vec(), 0)]);
    }

    #[test]
    fn cstr_reads_nul_terminated_fields() {
        let mut pos = 0;
        assert_eq!(cstr(b"ab\0cd\0e", &mut pos), Some(&b"ab"[..]));
        assert_eq!(cstr(b"ab\0cd\0e", &mut pos), Some(&b"cd"[..]));
        assert_eq!(cstr(b"ab\0cd\0e", &mut pos), None);
    }
}
