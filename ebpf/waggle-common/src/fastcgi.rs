//! FastCGI rules the kernel applies and the agent's parser shares: the
//! record header, the start of a request (`FCGI_BEGIN_REQUEST`), name-value
//! pair lengths, and finding `HTTP_TRACEPARENT` among a request's params.
//!
//! Every function is bounded and trusts no length: the kernel runs them on
//! bytes a peer chose.

use crate::http::{parse_traceparent, Incoming, VALUE_WINDOW};

/// `FCGI_VERSION_1`, the only version there is.
pub const VERSION: u8 = 1;
/// Bytes of a record header.
pub const HEADER_LEN: usize = 8;
/// Bytes of an `FCGI_BEGIN_REQUEST` body (role, flags, reserved).
pub const BEGIN_BODY_LEN: u16 = 8;

/// Record types (`FCGI_BEGIN_REQUEST` ... `FCGI_UNKNOWN_TYPE`).
pub mod record {
    pub const BEGIN_REQUEST: u8 = 1;
    pub const ABORT_REQUEST: u8 = 2;
    pub const END_REQUEST: u8 = 3;
    pub const PARAMS: u8 = 4;
    pub const STDIN: u8 = 5;
    pub const STDOUT: u8 = 6;
    pub const STDERR: u8 = 7;
    pub const DATA: u8 = 8;
    pub const GET_VALUES: u8 = 9;
    pub const GET_VALUES_RESULT: u8 = 10;
    pub const UNKNOWN_TYPE: u8 = 11;
}

/// A record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub request_id: u16,
    pub content_len: u16,
    pub padding: u8,
}

impl Header {
    /// Version 1 and a known record type, else None.
    #[inline(always)]
    pub fn parse(b: &[u8; HEADER_LEN]) -> Option<Header> {
        if b[0] != VERSION || b[1] == 0 || b[1] > record::UNKNOWN_TYPE {
            return None;
        }
        Some(Header {
            kind: b[1],
            request_id: u16::from_be_bytes([b[2], b[3]]),
            content_len: u16::from_be_bytes([b[4], b[5]]),
            padding: b[6],
        })
    }

    /// Content plus padding: the bytes after the header.
    pub fn body_len(&self) -> u32 {
        u32::from(self.content_len) + u32::from(self.padding)
    }
}

/// Whether the first `n` real bytes of `head` start an `FCGI_BEGIN_REQUEST`
/// record: version 1, type 1, a request id other than 0 (0 is management
/// records), content length 8. php-fpm reads the 8-byte header alone, so a
/// header is enough; when the body came with it (`n >= 16`) its role must
/// be responder, authorizer or filter (1..=3) and its reserved bytes zero.
#[inline(always)]
pub fn is_begin_request(head: &[u8; 16], n: u64) -> bool {
    if n < HEADER_LEN as u64 {
        return false;
    }
    let header_ok = head[0] == VERSION
        && head[1] == record::BEGIN_REQUEST
        && (head[2] != 0 || head[3] != 0)
        && head[4] == 0
        && head[5] == BEGIN_BODY_LEN as u8;
    if !header_ok {
        return false;
    }
    if n < 16 {
        return true;
    }
    let role_ok = head[8] == 0 && (1..=3).contains(&head[9]);
    let reserved_zero = head[11] | head[12] | head[13] | head[14] | head[15] == 0;
    role_ok && reserved_zero
}

/// The length a name-value pair length field at `b[0..]` encodes and the
/// bytes it takes: one byte below 128, else four (high bit cleared).
#[inline(always)]
pub fn nv_length(b: &[u8; 4]) -> (u32, u32) {
    if b[0] & 0x80 == 0 {
        (u32::from(b[0]), 1)
    } else {
        (u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]), 4)
    }
}

/// The param name whose value is an incoming W3C traceparent (nginx and
/// Apache pass every request header as `HTTP_<NAME>`).
pub const TRACEPARENT_PARAM: &[u8; 16] = b"HTTP_TRACEPARENT";
/// Pairs a [`ParamScan`] looks at before it gives up.
pub const MAX_SCAN_PAIRS: u32 = 96;
/// What a [`ParamScan`] step reads at a pair: up to 8 bytes of lengths and
/// the first 16 bytes of the name.
pub const PAIR_WINDOW: usize = 24;
/// A traceparent value is exactly this long.
pub const TRACEPARENT_LEN: u32 = 55;

/// Walks the name-value pairs of a params record's content (or a read that
/// holds a PARAMS header and its content) one pair per [`ParamScan::step`],
/// noting where an `HTTP_TRACEPARENT` value lies; the caller's `read`
/// gives the window at an offset (zero-filled past the end). The kernel
/// runs it in a `bpf_loop` over the content a [`RecordWalk`] points at,
/// in the separate program the read exits tail-call (the eBPF crate's
/// `fastcgi.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamScan {
    /// Offset of the next pair.
    pub pos: u32,
    /// HTTP_TRACEPARENT params seen (W3C: more than one is ambiguous).
    pub found: u32,
    /// Offset of the (last) HTTP_TRACEPARENT value whose length was 55.
    pub value_at: u32,
    /// A pair ran past the end of the bytes: the walk stopped.
    pub cut: bool,
}

impl ParamScan {
    /// A scan of bytes that start with a record: skips a PARAMS header
    /// (which php-fpm reads with its content when it uses large reads).
    pub fn new(first: &[u8; HEADER_LEN]) -> ParamScan {
        let mut scan = ParamScan::default();
        if let Some(h) = Header::parse(first) {
            if h.kind == record::PARAMS {
                scan.pos = HEADER_LEN as u32;
            }
        }
        scan
    }

    /// One pair at `self.pos` of `len` bytes; true when the walk is over.
    #[inline(always)]
    pub fn step(&mut self, len: u32, read: impl Fn(u32) -> [u8; PAIR_WINDOW]) -> bool {
        if self.cut || self.pos >= len {
            return true;
        }
        let w = read(self.pos);
        let (name_len, a) = nv_length(&[w[0], w[1], w[2], w[3]]);
        let a = a as usize;
        let (value_len, b) = nv_length(&[w[a], w[a + 1], w[a + 2], w[a + 3]]);
        let lens = (a + b as usize) as u32;
        let name_at = self.pos + lens;
        let value_at = name_at.saturating_add(name_len);
        let next = value_at.saturating_add(value_len);
        if next > len {
            self.cut = true;
            return true;
        }
        if name_len == TRACEPARENT_PARAM.len() as u32 {
            let off = lens as usize;
            let mut same = true;
            let mut i = 0;
            while i < TRACEPARENT_PARAM.len() {
                if w[off + i] != TRACEPARENT_PARAM[i] {
                    same = false;
                }
                i += 1;
            }
            if same {
                self.found += 1;
                if value_len == TRACEPARENT_LEN {
                    self.value_at = value_at;
                }
            }
        }
        self.pos = next;
        self.pos >= len
    }

    /// Where the one valid-length traceparent value lies, if exactly one
    /// HTTP_TRACEPARENT param was seen.
    pub fn value(&self) -> Option<u32> {
        (self.found == 1 && self.value_at != 0).then_some(self.value_at)
    }
}

/// Record steps a [`RecordWalk`] takes in one read at most: the rest of
/// the begin record, a PARAMS header, its content and the next header.
pub const MAX_WALK_STEPS: u32 = 6;
/// Reads of a responder's request a [`RecordWalk`] follows before it gives
/// up (php-fpm needs five: header, begin body, PARAMS header, content, the
/// empty PARAMS header).
pub const MAX_WALK_READS: u32 = 16;

/// Where a responder's reads stand between its `FCGI_BEGIN_REQUEST` and
/// the end of that request's params, one read after another: which bytes
/// to pass over, and where params content lies. Params content split
/// across reads, longer than the kernel's copy of a read, or anything that
/// is no record ends the walk (`WalkStep::Cut`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RecordWalk {
    /// Bytes to pass over before the next record header (the begin
    /// record, a params record's padding).
    pub skip: u32,
    /// Content bytes of the current PARAMS record, not reached yet.
    pub content: u32,
    /// Padding after that content.
    pub padding: u32,
}

/// What [`RecordWalk::next`] found at the read's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkStep {
    /// The read is used up: the walk goes on in the next one.
    More,
    /// A record header was passed: call again.
    Record,
    /// Params content lies at `[at, end)` of the read.
    Params { at: u32, end: u32 },
    /// The params are over (their empty record, or another record).
    End,
    /// The walk cannot go on.
    Cut,
}

impl RecordWalk {
    /// A walk that starts with the begin record whose header is `head`
    /// (checked by [`is_begin_request`]) at the start of a read.
    pub fn begun(head: &[u8; 16]) -> RecordWalk {
        RecordWalk { skip: HEADER_LEN as u32 + u32::from(BEGIN_BODY_LEN) + u32::from(head[6]), ..RecordWalk::default() }
    }

    /// The next step at `*pos` (<= `len`) of a read of `len` bytes; `header`
    /// gives the 8 bytes at an offset.
    #[inline(always)]
    pub fn next(&mut self, pos: &mut u32, len: u32, header: impl Fn(u32) -> [u8; HEADER_LEN]) -> WalkStep {
        if *pos > len {
            return WalkStep::Cut;
        }
        let left = len - *pos;
        if self.skip > 0 {
            let n = if self.skip < left { self.skip } else { left };
            self.skip -= n;
            *pos += n;
        }
        if *pos >= len {
            return WalkStep::More;
        }
        let left = len - *pos;
        if self.content > 0 {
            // php-fpm reads a record's content (and padding) whole.
            if self.content > left {
                return WalkStep::Cut;
            }
            let at = *pos;
            *pos = at + self.content;
            self.content = 0;
            self.skip = self.padding;
            return WalkStep::Params { at, end: *pos };
        }
        if left < HEADER_LEN as u32 {
            return WalkStep::Cut;
        }
        let Some(h) = Header::parse(&header(*pos)) else {
            return WalkStep::Cut;
        };
        *pos += HEADER_LEN as u32;
        if h.kind != record::PARAMS || h.content_len == 0 {
            return WalkStep::End;
        }
        self.content = u32::from(h.content_len);
        self.padding = u32::from(h.padding);
        WalkStep::Record
    }
}

/// Parses the 55-byte HTTP_TRACEPARENT value at the start of `window`
/// (the pair's length said 55, so nothing follows it on a line): the same
/// rule as the header's.
#[inline(always)]
pub fn parse_traceparent_param(window: &[u8; VALUE_WINDOW]) -> Option<Incoming> {
    let mut v = *window;
    v[TRACEPARENT_LEN as usize] = b'\r';
    parse_traceparent(&v, TRACEPARENT_LEN + 1)
}

#[cfg(test)]
mod tests;
