//! HTTP/1.x: one span per request/response exchange.
//!
//! The parser follows both byte streams of a connection by byte counts: heads
//! are parsed with `httparse` (only head bytes are ever buffered, bounded by
//! [`MAX_HEAD_BYTES`]), bodies are skipped by `Content-Length`, by decoding
//! chunk-size lines, or until close. Requests whose heads are complete wait
//! in a FIFO (pipelining, bounded by [`MAX_PENDING`]) for their responses.
//!
//! Captured payload may be a prefix of what the syscall moved. Bodies are
//! counted by `total_len`, so truncation inside a body costs nothing. When a
//! message boundary falls in an uncaptured region the parser does not guess:
//! a response whose end it cannot see is ended at the last response chunk
//! before the next request / close / idle ("unframed"), and a request stream
//! it cannot follow resynchronises at the next chunk that starts with a full
//! request line.
//!
//! Privacy: only the headers needed for attributes are read (Host,
//! User-Agent, framing headers, traceparent/tracestate); credentials
//! (Authorization, Cookie, ...) are never copied, and the query string is
//! dropped from `url.path`.
use std::collections::VecDeque;

use waggle_common::{Direction, Role};

use super::{route::infer_route, Chunk, Confidence, Feed, ParserConfig, ProtocolDetector, ProtocolParser};
use crate::model::{truncate_utf8, AttrValue, Attribute, ParsedSpan, SpanKind, SpanStatus, TraceContext};

/// Largest request/response head (request line + headers) the parser buffers.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers per message; more is treated like an oversized head.
pub const MAX_HEADERS: usize = 64;
/// Requests waiting for their responses on one connection (pipelining).
pub const MAX_PENDING: usize = 64;
/// W3C: vendors must propagate at least 512 characters of tracestate; longer
/// lists are cut at member boundaries.
const MAX_TRACESTATE: usize = 512;
const MAX_PATH: usize = 2048;
const MAX_USER_AGENT: usize = 512;
const MAX_HOST: usize = 255;
/// Head buffer capacity kept between messages; a connection that once saw a
/// huge head must not hold 64 KiB forever.
const KEEP_HEAD_CAPACITY: usize = 4096;
/// Bytes of a head inspected by the cheap request-line sanity check.
const LINE_CHECK_BYTES: usize = 64;
/// An incomplete request line this long, valid so far, is accepted by the
/// detector: the connection layer buffers only a few dozen bytes while
/// detecting, and the parser validates the full head before trusting it.
const DETECT_LINE_PATIENCE: usize = 48;
/// Chunk extensions and trailers are skipped, not buffered; past this many
/// bytes the "chunked" body is considered garbage.
const MAX_CHUNK_META_BYTES: u32 = 64 * 1024;

/// Methods OpenTelemetry calls "known" (RFC 9110 + PATCH); anything else is
/// reported as `_OTHER`.
const KNOWN_METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
/// Further methods the detector recognises as HTTP (WebDAV, caches, ...).
const EXTRA_METHODS: [&str; 14] = [
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "PURGE",
    "REPORT",
    "SEARCH",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
    "QUERY",
];

fn request_direction(role: Role) -> Option<Direction> {
    match role {
        Role::Server => Some(Direction::Ingress),
        Role::Client => Some(Direction::Egress),
        Role::Unknown => None,
    }
}

pub struct Http1Detector;

impl ProtocolDetector for Http1Detector {
    fn name(&self) -> &'static str {
        "http1"
    }

    fn detect(&self, role: Role, chunk: &Chunk<'_>) -> Confidence {
        let truncated = chunk.is_truncated();
        let request_side = match request_direction(role) {
            Some(dir) => dir == chunk.direction,
            // Unknown role: either direction may carry requests.
            None => true,
        };
        let response_side = request_direction(role).is_none_or(|dir| dir != chunk.direction);
        let mut best = Confidence::No;
        if request_side {
            best = best.max(check_request_line(chunk.bytes, truncated, DETECT_LINE_PATIENCE));
        }
        if response_side {
            best = best.max(check_status_line(chunk.bytes));
        }
        best
    }

    fn new_parser(&self, role: Role, _config: &ParserConfig) -> Box<dyn ProtocolParser> {
        Box::new(Http1Parser::new(role))
    }
}

/// Does `b` start with a request line? Yes only for a known method, a
/// plausible target and (when the line is complete in `b`) `HTTP/1.x`; an
/// incomplete but valid line is NeedMore until it is `patience` bytes long
/// (or the capture was truncated), then Yes.
fn check_request_line(b: &[u8], truncated: bool, patience: usize) -> Confidence {
    check_request_line_with(b, truncated, patience, false)
}

/// Longest method token accepted from a connection already in sync.
const MAX_METHOD_LEN: usize = 20;

/// `any_method`: on a connection already in sync any upper-case token is a
/// method (custom verbs become `_OTHER`); when detecting or resynchronising
/// only well-known methods count.
fn check_request_line_with(b: &[u8], truncated: bool, patience: usize, any_method: bool) -> Confidence {
    let incomplete = || {
        if truncated || b.len() >= patience {
            Confidence::Yes
        } else {
            Confidence::NeedMore
        }
    };
    let mut method: Option<&[u8]> = None;
    let mut prefix = false;
    for m in KNOWN_METHODS.iter().chain(EXTRA_METHODS.iter()) {
        let m = m.as_bytes();
        if b.len() > m.len() && b.starts_with(m) && b[m.len()] == b' ' {
            method = Some(m);
            break;
        }
        if b.len() <= m.len() && m.starts_with(b) {
            prefix = true;
        }
    }
    if method.is_none() && any_method {
        let token = b.iter().take_while(|c| c.is_ascii_uppercase() || matches!(c, b'-' | b'_')).count();
        if token > MAX_METHOD_LEN {
            return Confidence::No;
        }
        match b.get(token) {
            Some(b' ') if token > 0 => method = Some(&b[..token]),
            None => prefix = true,
            _ => {}
        }
    }
    let Some(method) = method else {
        return if prefix && !truncated { Confidence::NeedMore } else { Confidence::No };
    };
    let target = &b[method.len() + 1..];
    let Some(&first) = target.first() else {
        return if truncated { Confidence::No } else { Confidence::NeedMore };
    };
    let start_ok = match first {
        b'/' => true,
        // Asterisk-form is exactly "*".
        b'*' => method == b"OPTIONS" && target.get(1).is_none_or(|&c| c == b' '),
        _ if method == b"CONNECT" => first.is_ascii_alphanumeric() || first == b'[',
        b'h' | b'H' => {
            let full =
                |scheme: &[u8]| target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme);
            let partial = |scheme: &[u8]| {
                let k = target.len().min(scheme.len());
                target[..k].eq_ignore_ascii_case(&scheme[..k])
            };
            if !(full(b"http://") || full(b"https://")) {
                let could_be = partial(b"http://") || partial(b"https://");
                return if could_be && !truncated { Confidence::NeedMore } else { Confidence::No };
            }
            true
        }
        _ => false,
    };
    if !start_ok {
        return Confidence::No;
    }
    let Some(space) = target.iter().position(|&c| c == b' ') else {
        return if target.iter().all(|&c| is_target_byte(c)) { incomplete() } else { Confidence::No };
    };
    if !target[..space].iter().all(|&c| is_target_byte(c)) {
        return Confidence::No;
    }
    let version = &target[space + 1..];
    const HTTP1: &[u8] = b"HTTP/1.";
    let n = version.len().min(HTTP1.len());
    if version[..n] != HTTP1[..n] {
        return Confidence::No;
    }
    match (version.get(7), version.get(8)) {
        (None, _) => incomplete(),
        (Some(b'0' | b'1'), None) => incomplete(),
        (Some(b'0' | b'1'), Some(b'\r' | b'\n')) => Confidence::Yes,
        _ => Confidence::No,
    }
}

/// Bytes allowed in a request target (httparse's URI set: visible ASCII and
/// non-ASCII; no controls, no spaces).
fn is_target_byte(c: u8) -> bool {
    c > b' ' && c != 0x7f
}

/// Does `b` start with `HTTP/1.x NNN`?
fn check_status_line(b: &[u8]) -> Confidence {
    const PATTERN: &[u8] = b"HTTP/1.x NNN";
    for (i, &c) in b.iter().take(PATTERN.len()).enumerate() {
        let ok = match PATTERN[i] {
            b'x' => c == b'0' || c == b'1',
            b'N' => c.is_ascii_digit(),
            p => c == p,
        };
        if !ok {
            return Confidence::No;
        }
    }
    if b.len() < PATTERN.len() {
        Confidence::NeedMore
    } else {
        Confidence::Yes
    }
}

/// Where the head ends (one past the empty line), scanning from `from`.
/// httparse accepts bare LF line endings, so this does too.
fn find_head_end(data: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < data.len() {
        let j = i + data[i..].iter().position(|&c| c == b'\n')?;
        match data.get(j + 1) {
            Some(b'\n') => return Some(j + 2),
            Some(b'\r') => match data.get(j + 2) {
                Some(b'\n') => return Some(j + 3),
                Some(_) => {}
                None => return None,
            },
            Some(_) => {}
            None => return None,
        }
        i = j + 1;
    }
    None
}

/// Accumulates a message head across chunks. Heads that arrive whole in one
/// chunk (the common case) are parsed in place and never copied.
#[derive(Default)]
struct HeadBuf {
    buf: Vec<u8>,
    /// Where the terminator search resumes: heads written a byte at a time
    /// must not be rescanned from the start (that would be quadratic).
    scan_from: usize,
}

enum HeadStep {
    Partial,
    TooLarge,
    /// The head is `len` bytes, in the buffer (`in_buf`) or at the start of
    /// the input; `consumed` input bytes belonged to it.
    Complete {
        in_buf: bool,
        len: usize,
        consumed: usize,
    },
}

impl HeadBuf {
    fn push(&mut self, input: &[u8]) -> HeadStep {
        if self.buf.is_empty() {
            if let Some(end) = find_head_end(input, 0) {
                if end > MAX_HEAD_BYTES {
                    return HeadStep::TooLarge;
                }
                return HeadStep::Complete { in_buf: false, len: end, consumed: end };
            }
            if input.len() > MAX_HEAD_BYTES {
                return HeadStep::TooLarge;
            }
            self.buf.extend_from_slice(input);
            self.scan_from = self.buf.len().saturating_sub(2);
            return HeadStep::Partial;
        }
        let old = self.buf.len();
        // Copy only what can still belong to a head of legal size.
        let room = (MAX_HEAD_BYTES + 1).saturating_sub(old);
        self.buf.extend_from_slice(&input[..input.len().min(room)]);
        if let Some(end) = find_head_end(&self.buf, self.scan_from) {
            if end > MAX_HEAD_BYTES || end <= old {
                return HeadStep::TooLarge;
            }
            self.buf.truncate(end);
            return HeadStep::Complete { in_buf: true, len: end, consumed: end - old };
        }
        if self.buf.len() > MAX_HEAD_BYTES {
            return HeadStep::TooLarge;
        }
        self.scan_from = self.buf.len().saturating_sub(2);
        HeadStep::Partial
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.scan_from = 0;
        if self.buf.capacity() > KEEP_HEAD_CAPACITY {
            self.buf.shrink_to(KEEP_HEAD_CAPACITY);
        }
    }

    /// The buffered head bytes with the partial last line cut off and an
    /// empty line appended: what httparse needs to read the headers that
    /// were captured in full when the rest of the head is not visible.
    fn complete_lines(&self) -> Option<Vec<u8>> {
        let last_lf = self.buf.iter().rposition(|&c| c == b'\n')?;
        let mut head = Vec::with_capacity(last_lf + 3);
        head.extend_from_slice(&self.buf[..=last_lf]);
        head.extend_from_slice(b"\r\n");
        Some(head)
    }
}

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
struct ChunkedDecoder {
    state: ChunkedState,
    /// Sum of chunk sizes decoded so far (the payload size).
    body_bytes: u64,
    /// Value of the size line being read when it is followed by an extension.
    ext_value: u64,
    meta_bytes: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum ChunkedError {
    Invalid,
}

impl ChunkedDecoder {
    fn new() -> Self {
        ChunkedDecoder { state: ChunkedState::Size { value: 0, digits: 0 }, body_bytes: 0, ext_value: 0, meta_bytes: 0 }
    }

    fn is_done(&self) -> bool {
        self.state == ChunkedState::Done
    }

    fn end_of_size_line(&mut self, value: u64) {
        self.state = if value == 0 { ChunkedState::TrailerLineStart } else { ChunkedState::Data { remaining: value } };
    }

    /// Consumes bytes up to the end of the body; returns how many.
    fn feed(&mut self, input: &[u8]) -> Result<usize, ChunkedError> {
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
    fn skip_blind(&mut self, n: u64) -> bool {
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
}

/// What the request head said, owned.
#[derive(Debug)]
struct RequestHead {
    /// Canonical method, or `_OTHER`.
    method: &'static str,
    method_original: Option<String>,
    /// Path without query; None for CONNECT's authority-form target.
    path: Option<String>,
    /// Authority of an absolute-form or CONNECT target.
    target_authority: Option<String>,
    minor_version: u8,
    host: Option<String>,
    user_agent: Option<String>,
    content_length: Option<u64>,
    chunked: bool,
    context: Option<TraceContext>,
    tracestate: Option<String>,
}

#[derive(Debug)]
struct ResponseHead {
    status: u16,
    content_length: Option<u64>,
    chunked: bool,
    /// Transfer-Encoding without chunked: the body runs until close.
    other_encoding: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    TooManyHeaders,
    Invalid(&'static str),
}

/// A request whose head was read, waiting for (or receiving) its response.
#[derive(Debug)]
struct PendingRequest {
    id: u64,
    head: Option<RequestHead>,
    /// Request body size once known (Content-Length or decoded chunks).
    body_size: Option<u64>,
    start_ns: u64,
    tid: u32,
}

impl PendingRequest {
    fn method(&self) -> &str {
        self.head.as_ref().map_or("", |h| h.method)
    }
}

/// A request matched with its response head.
#[derive(Debug)]
struct Exchange {
    req: PendingRequest,
    status: Option<u16>,
    body_bytes: u64,
    body_size_known: bool,
}

#[derive(Debug)]
enum ReqState {
    /// Position in the stream unknown (joined mid-stream, after an
    /// unfollowable body, after CONNECT): the next chunk starting with a
    /// full request line resynchronises.
    Skip,
    /// At a message boundary.
    Idle,
    /// Head bytes are arriving (some may be buffered in `head`).
    Head,
    Body {
        id: u64,
        framing: ReqBody,
    },
}

#[derive(Debug)]
enum ReqBody {
    Length(u64),
    Chunked(ChunkedDecoder),
}

#[derive(Debug)]
enum RespState {
    /// Joined mid-stream or after an unfollowable response: bytes are skipped
    /// until a chunk starts with a status line while a request is pending.
    Unsynced,
    Idle,
    Head,
    Body {
        exchange: Box<Exchange>,
        framing: RespBody,
    },
    /// The response's end is not visible: it ends at the last response chunk
    /// before the next request, close or idle.
    Unframed {
        exchange: Box<Exchange>,
    },
}

#[derive(Debug)]
enum RespBody {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
}

struct ReqSide {
    state: ReqState,
    head: HeadBuf,
    head_start_ns: u64,
    head_tid: u32,
    /// The current head started while resynchronising: if it turns out not
    /// to be a request, go back to skipping instead of losing sync.
    tentative: bool,
    /// The first bytes of the current head passed the request-line check.
    line_ok: bool,
    last_ns: u64,
}

struct RespSide {
    state: RespState,
    head: HeadBuf,
    /// exit_ns of the last response-direction chunk.
    last_ns: u64,
}

/// Per-connection HTTP/1.x state machine.
pub struct Http1Parser {
    /// Traced process's side; Unknown until the first request line shows
    /// which direction carries requests.
    role: Role,
    pending: VecDeque<PendingRequest>,
    next_id: u64,
    req: ReqSide,
    resp: RespSide,
    dropped: u64,
}

impl Http1Parser {
    pub fn new(role: Role) -> Http1Parser {
        Http1Parser {
            role,
            pending: VecDeque::new(),
            next_id: 0,
            req: ReqSide {
                // The first request-direction chunk must itself start with a
                // request line: a connection may be joined mid-body.
                state: ReqState::Skip,
                head: HeadBuf::default(),
                head_start_ns: 0,
                head_tid: 0,
                tentative: false,
                line_ok: false,
                last_ns: 0,
            },
            resp: RespSide { state: RespState::Idle, head: HeadBuf::default(), last_ns: 0 },
            dropped: 0,
        }
    }

    fn span_kind(&self) -> SpanKind {
        if self.role == Role::Client {
            SpanKind::Client
        } else {
            SpanKind::Server
        }
    }

    /// Drops everything (lost sync, opaque, close): every exchange still in
    /// flight is counted as dropped.
    fn reset(&mut self) {
        self.dropped += self.pending.len() as u64;
        self.pending.clear();
        if matches!(self.resp.state, RespState::Body { .. } | RespState::Unframed { .. }) {
            self.dropped += 1;
        }
        if matches!(self.req.state, ReqState::Head) && !self.req.tentative {
            self.dropped += 1;
        }
        self.req.state = ReqState::Skip;
        self.req.head.reset();
        self.req.tentative = false;
        self.req.line_ok = false;
        self.resp.state = RespState::Unsynced;
        self.resp.head.reset();
    }

    fn lost_sync(&mut self, reason: &'static str) -> Feed {
        tracing::trace!(reason, "http1 parser lost sync");
        self.reset();
        Feed::LostSync(reason)
    }

    // ---------------------------------------------------------------- requests

    fn on_request_chunk(&mut self, c: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        let bytes = c.bytes;
        self.req.last_ns = c.exit_ns;
        if matches!(self.req.state, ReqState::Skip) {
            let check = check_request_line(bytes, c.is_truncated(), usize::MAX);
            if bytes.is_empty() || check == Confidence::No {
                return Feed::Continue;
            }
            self.req.state = ReqState::Idle;
            // A complete, valid request line commits (a broken head after it
            // is lost sync); a mere prefix ("GE") is only a candidate.
            self.req.tentative = check == Confidence::NeedMore;
        }
        let mut off = 0;
        while off < bytes.len() {
            match &mut self.req.state {
                ReqState::Skip => break,
                ReqState::Idle => {
                    // Stray CRLF after a body is tolerated (RFC 9112 §2.2).
                    while off < bytes.len() && matches!(bytes[off], b'\r' | b'\n') {
                        off += 1;
                    }
                    if off == bytes.len() {
                        break;
                    }
                    self.req.state = ReqState::Head;
                    self.req.head_start_ns = if self.role == Role::Client { c.enter_ns } else { c.exit_ns };
                    self.req.head_tid = c.tid;
                    self.req.line_ok = false;
                }
                ReqState::Head => {
                    let input = &bytes[off..];
                    let step = self.req.head.push(input);
                    if !self.req.line_ok {
                        let view = if self.req.head.buf.is_empty() { input } else { &self.req.head.buf[..] };
                        let any_method = !self.req.tentative;
                        match check_request_line_with(
                            &view[..view.len().min(LINE_CHECK_BYTES)],
                            false,
                            DETECT_LINE_PATIENCE,
                            any_method,
                        ) {
                            Confidence::Yes => self.req.line_ok = true,
                            Confidence::NeedMore => {}
                            Confidence::No => match self.request_error("invalid request line") {
                                Some(feed) => return feed,
                                None => return Feed::Continue,
                            },
                        }
                    }
                    match step {
                        HeadStep::Partial => off = bytes.len(),
                        HeadStep::TooLarge => match self.request_error("request head too large") {
                            Some(feed) => return feed,
                            None => return Feed::Continue,
                        },
                        HeadStep::Complete { in_buf, len, consumed } => {
                            let parsed = if in_buf {
                                parse_request_head(&self.req.head.buf[..len])
                            } else {
                                parse_request_head(&input[..len])
                            };
                            off += consumed;
                            self.req.head.reset();
                            let head = match parsed {
                                Ok(head) => head,
                                Err(HeadError::TooManyHeaders) => {
                                    match self.request_error("too many request headers") {
                                        Some(feed) => return feed,
                                        None => return Feed::Continue,
                                    }
                                }
                                Err(HeadError::Invalid(reason)) => match self.request_error(reason) {
                                    Some(feed) => return feed,
                                    None => return Feed::Continue,
                                },
                            };
                            if let Some(feed) = self.accept_request(Some(head), true, out) {
                                return feed;
                            }
                        }
                    }
                }
                ReqState::Body { id, framing } => {
                    let id = *id;
                    let input = &bytes[off..];
                    match framing {
                        ReqBody::Length(remaining) => {
                            let take = (*remaining).min(input.len() as u64);
                            *remaining -= take;
                            off += take as usize;
                            if *remaining == 0 {
                                self.req.state = ReqState::Idle;
                            }
                        }
                        ReqBody::Chunked(dec) => {
                            let Ok(n) = dec.feed(input) else {
                                return self.lost_sync("invalid chunked request body");
                            };
                            off += n;
                            if dec.is_done() {
                                let size = dec.body_bytes;
                                self.req.state = ReqState::Idle;
                                self.set_request_body_size(id, size);
                            }
                        }
                    }
                }
            }
        }
        let blind = c.total_len.saturating_sub(bytes.len() as u64);
        if blind > 0 {
            if let Some(feed) = self.request_blind(blind, out) {
                return feed;
            }
        }
        Feed::Continue
    }

    /// A request head turned out invalid. While resynchronising that only
    /// means the chunk was not a request after all.
    fn request_error(&mut self, reason: &'static str) -> Option<Feed> {
        if self.req.tentative {
            self.req.head.reset();
            self.req.state = ReqState::Skip;
            self.req.tentative = false;
            None
        } else {
            Some(self.lost_sync(reason))
        }
    }

    /// A complete request head (or a placeholder when `head` is None: a
    /// request we know exists but cannot read, so its response is consumed
    /// without being matched to the wrong request).
    fn accept_request(
        &mut self,
        head: Option<RequestHead>,
        framing_known: bool,
        out: &mut Vec<ParsedSpan>,
    ) -> Option<Feed> {
        self.req.tentative = false;
        if let RespState::Unframed { .. } = self.resp.state {
            // The next request marks the end of a response we could not frame.
            let end = self.resp.last_ns;
            if let RespState::Unframed { exchange } = std::mem::replace(&mut self.resp.state, RespState::Idle) {
                self.finish(*exchange, end, out);
            }
        }
        if self.pending.len() >= MAX_PENDING {
            return Some(self.lost_sync("too many pipelined requests"));
        }
        let id = self.next_id;
        self.next_id += 1;
        let (next_state, body_size) = match &head {
            None => (ReqState::Skip, None),
            Some(_) if !framing_known => (ReqState::Skip, None),
            Some(h) if h.chunked => (ReqState::Body { id, framing: ReqBody::Chunked(ChunkedDecoder::new()) }, None),
            Some(h) => {
                let framing = match h.content_length {
                    Some(n) if n > 0 => ReqState::Body { id, framing: ReqBody::Length(n) },
                    _ => ReqState::Idle,
                };
                // A CONNECT tunnel carries opaque bytes once accepted; if it
                // is refused, the next request line resynchronises.
                let framing = if h.method == "CONNECT" { ReqState::Skip } else { framing };
                (framing, h.content_length)
            }
        };
        self.req.state = next_state;
        self.pending.push_back(PendingRequest {
            id,
            head,
            body_size,
            start_ns: self.req.head_start_ns,
            tid: self.req.head_tid,
        });
        None
    }

    fn set_request_body_size(&mut self, id: u64, size: u64) {
        if let Some(req) = self.pending.iter_mut().find(|r| r.id == id) {
            req.body_size = Some(size);
            return;
        }
        if let RespState::Body { exchange, .. } | RespState::Unframed { exchange } = &mut self.resp.state {
            if exchange.req.id == id {
                exchange.req.body_size = Some(size);
            }
        }
    }

    /// `blind` bytes the syscall moved were not captured.
    fn request_blind(&mut self, blind: u64, out: &mut Vec<ParsedSpan>) -> Option<Feed> {
        match &mut self.req.state {
            ReqState::Skip => {}
            ReqState::Idle => {
                // A request starts where we cannot see it. Keep a placeholder
                // so its response is not paired with a later request.
                self.push_placeholder();
            }
            ReqState::Head => {
                // The head continues past the capture: read what was captured
                // in full; the framing headers may be among the missing.
                let head = self.req.head.complete_lines().and_then(|h| parse_request_head(&h).ok());
                let tentative = self.req.tentative;
                self.req.head.reset();
                match head {
                    Some(head) => {
                        if let Some(feed) = self.accept_request(Some(head), false, out) {
                            return Some(feed);
                        }
                    }
                    None if tentative => {}
                    None => self.push_placeholder(),
                }
                self.req.state = ReqState::Skip;
                self.req.tentative = false;
            }
            ReqState::Body { id, framing } => {
                let id = *id;
                match framing {
                    ReqBody::Length(remaining) => {
                        if blind <= *remaining {
                            *remaining -= blind;
                            if *remaining == 0 {
                                self.req.state = ReqState::Idle;
                            }
                        } else {
                            self.req.state = ReqState::Idle;
                            self.push_placeholder();
                        }
                    }
                    ReqBody::Chunked(dec) => {
                        if !dec.skip_blind(blind) {
                            self.req.state = ReqState::Skip;
                        } else if dec.is_done() {
                            let size = dec.body_bytes;
                            self.req.state = ReqState::Idle;
                            self.set_request_body_size(id, size);
                        }
                    }
                }
            }
        }
        None
    }

    fn push_placeholder(&mut self) {
        self.req.state = ReqState::Skip;
        self.req.tentative = false;
        if self.pending.len() >= MAX_PENDING {
            // Nothing can be matched reliably any more; the idle sweep or
            // the next lost sync clears the queue.
            self.dropped += 1;
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push_back(PendingRequest { id, head: None, body_size: None, start_ns: self.req.last_ns, tid: 0 });
    }

    // --------------------------------------------------------------- responses

    fn on_response_chunk(&mut self, c: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        let bytes = c.bytes;
        let previous_ns = self.resp.last_ns;
        self.resp.last_ns = c.exit_ns;
        let mut off = 0;
        while off < bytes.len() {
            match &mut self.resp.state {
                RespState::Unsynced => {
                    let starts_response = off == 0 && check_status_line(bytes) == Confidence::Yes;
                    if starts_response && !self.pending.is_empty() {
                        self.resp.state = RespState::Idle;
                        continue;
                    }
                    if starts_response {
                        // A response to a request we never saw.
                        self.dropped += 1;
                    }
                    return Feed::Continue;
                }
                RespState::Unframed { .. } => {
                    // A new status line while requests wait ends the unframed
                    // response at the previous chunk.
                    if off == 0 && !self.pending.is_empty() && check_status_line(bytes) == Confidence::Yes {
                        if let RespState::Unframed { exchange } =
                            std::mem::replace(&mut self.resp.state, RespState::Idle)
                        {
                            self.finish(*exchange, previous_ns, out);
                        }
                        continue;
                    }
                    return Feed::Continue;
                }
                RespState::Idle => {
                    while off < bytes.len() && matches!(bytes[off], b'\r' | b'\n') {
                        off += 1;
                    }
                    if off == bytes.len() {
                        break;
                    }
                    if self.pending.is_empty() {
                        // Response without a request (e.g. the request was
                        // before the agent started): drop it and skip to the
                        // next status line that has a request to answer.
                        self.dropped += 1;
                        self.resp.state = RespState::Unsynced;
                        return Feed::Continue;
                    }
                    self.resp.state = RespState::Head;
                }
                RespState::Head => {
                    let input = &bytes[off..];
                    let step = self.resp.head.push(input);
                    let view = if self.resp.head.buf.is_empty() { input } else { &self.resp.head.buf[..] };
                    if check_status_line(&view[..view.len().min(12)]) == Confidence::No {
                        return self.lost_sync("invalid status line");
                    }
                    match step {
                        HeadStep::Partial => off = bytes.len(),
                        HeadStep::TooLarge => return self.lost_sync("response head too large"),
                        HeadStep::Complete { in_buf, len, consumed } => {
                            let parsed = if in_buf {
                                parse_response_head(&self.resp.head.buf[..len])
                            } else {
                                parse_response_head(&input[..len])
                            };
                            off += consumed;
                            self.resp.head.reset();
                            let head = match parsed {
                                Ok(head) => head,
                                Err(HeadError::TooManyHeaders) => return self.lost_sync("too many response headers"),
                                Err(HeadError::Invalid(reason)) => return self.lost_sync(reason),
                            };
                            if let Some(feed) = self.accept_response(head, c.exit_ns, out) {
                                return feed;
                            }
                        }
                    }
                }
                RespState::Body { exchange, framing } => {
                    let input = &bytes[off..];
                    let done = match framing {
                        RespBody::Length(remaining) => {
                            let take = (*remaining).min(input.len() as u64);
                            *remaining -= take;
                            exchange.body_bytes += take;
                            off += take as usize;
                            *remaining == 0
                        }
                        RespBody::Chunked(dec) => {
                            let Ok(n) = dec.feed(input) else {
                                return self.lost_sync("invalid chunked response body");
                            };
                            off += n;
                            exchange.body_bytes = dec.body_bytes;
                            dec.is_done()
                        }
                        RespBody::Close => {
                            exchange.body_bytes = exchange.body_bytes.saturating_add(input.len() as u64);
                            off = bytes.len();
                            false
                        }
                    };
                    if done {
                        if let RespState::Body { exchange, .. } =
                            std::mem::replace(&mut self.resp.state, RespState::Idle)
                        {
                            self.finish(*exchange, c.exit_ns, out);
                        }
                    }
                }
            }
        }
        let blind = c.total_len.saturating_sub(bytes.len() as u64);
        if blind > 0 {
            self.response_blind(blind, c.exit_ns, out);
        }
        Feed::Continue
    }

    /// A complete response head for the oldest pending request.
    fn accept_response(&mut self, head: ResponseHead, now_ns: u64, out: &mut Vec<ParsedSpan>) -> Option<Feed> {
        let status = head.status;
        if (100..200).contains(&status) && status != 101 {
            // Interim (100 Continue, 103 Early Hints): the final response follows.
            self.resp.state = RespState::Idle;
            return None;
        }
        let Some(req) = self.pending.pop_front() else {
            self.dropped += 1;
            self.resp.state = RespState::Unsynced;
            return None;
        };
        let method = req.method();
        let is_head = method == "HEAD";
        let tunnel = method == "CONNECT" && (200..300).contains(&status);
        let mut exchange = Exchange { req, status: Some(status), body_bytes: 0, body_size_known: false };
        if status == 101 || tunnel {
            self.finish(exchange, now_ns, out);
            self.reset();
            return Some(Feed::Opaque(if tunnel { "http CONNECT tunnel" } else { "http protocol upgrade" }));
        }
        if is_head || status == 204 || status == 304 {
            self.resp.state = RespState::Idle;
            self.finish(exchange, now_ns, out);
            return None;
        }
        let framing = if head.chunked {
            RespBody::Chunked(ChunkedDecoder::new())
        } else if head.other_encoding {
            RespBody::Close
        } else {
            match head.content_length {
                Some(0) => {
                    exchange.body_size_known = true;
                    self.resp.state = RespState::Idle;
                    self.finish(exchange, now_ns, out);
                    return None;
                }
                Some(n) => RespBody::Length(n),
                None => RespBody::Close,
            }
        };
        exchange.body_size_known = true;
        self.resp.state = RespState::Body { exchange: Box::new(exchange), framing };
        None
    }

    fn response_blind(&mut self, blind: u64, now_ns: u64, out: &mut Vec<ParsedSpan>) {
        match &mut self.resp.state {
            RespState::Unsynced | RespState::Unframed { .. } => {}
            RespState::Idle => self.response_started_blind(),
            RespState::Head => {
                // Status line captured, the rest of the head not: the status is
                // known, the framing is not.
                let head = self.resp.head.complete_lines().and_then(|h| parse_response_head(&h).ok());
                self.resp.head.reset();
                match self.pending.pop_front() {
                    Some(req) => {
                        let exchange =
                            Exchange { req, status: head.map(|h| h.status), body_bytes: 0, body_size_known: false };
                        self.resp.state = RespState::Unframed { exchange: Box::new(exchange) };
                    }
                    None => {
                        self.dropped += 1;
                        self.resp.state = RespState::Unsynced;
                    }
                }
            }
            RespState::Body { exchange, framing } => match framing {
                RespBody::Length(remaining) => {
                    let overflow = blind > *remaining;
                    let take = blind.min(*remaining);
                    *remaining -= take;
                    exchange.body_bytes += take;
                    if *remaining == 0 {
                        if let RespState::Body { exchange, .. } =
                            std::mem::replace(&mut self.resp.state, RespState::Idle)
                        {
                            self.finish(*exchange, now_ns, out);
                        }
                        if overflow {
                            self.response_started_blind();
                        }
                    }
                }
                RespBody::Chunked(dec) => {
                    if dec.skip_blind(blind) {
                        exchange.body_bytes = dec.body_bytes;
                    } else if let RespState::Body { mut exchange, .. } =
                        std::mem::replace(&mut self.resp.state, RespState::Idle)
                    {
                        exchange.body_size_known = false;
                        self.resp.state = RespState::Unframed { exchange };
                    }
                }
                RespBody::Close => exchange.body_bytes = exchange.body_bytes.saturating_add(blind),
            },
        }
    }

    /// A response began in uncaptured bytes: its request can never be
    /// answered visibly, and what follows is unknown.
    fn response_started_blind(&mut self) {
        if self.pending.pop_front().is_some() {
            self.dropped += 1;
        }
        self.resp.state = RespState::Unsynced;
    }

    // ------------------------------------------------------------------ spans

    fn finish(&mut self, exchange: Exchange, end_ns: u64, out: &mut Vec<ParsedSpan>) {
        match build_span(self.span_kind(), exchange, end_ns) {
            Some(span) => out.push(span),
            None => self.dropped += 1,
        }
    }

    /// For connections whose role the kernel did not know: the first full
    /// request line tells which side this process is.
    fn resolve_role(&mut self, c: &Chunk<'_>) {
        if check_request_line(c.bytes, c.is_truncated(), DETECT_LINE_PATIENCE) == Confidence::Yes {
            self.role = if c.direction == Direction::Ingress { Role::Server } else { Role::Client };
        } else if check_status_line(c.bytes) == Confidence::Yes {
            self.role = if c.direction == Direction::Egress { Role::Server } else { Role::Client };
        }
    }
}

impl ProtocolParser for Http1Parser {
    fn protocol(&self) -> &'static str {
        "http1"
    }

    fn on_data(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        if self.role == Role::Unknown {
            self.resolve_role(chunk);
        }
        match request_direction(self.role) {
            None => Feed::Continue,
            Some(dir) if dir == chunk.direction => self.on_request_chunk(chunk, out),
            Some(_) => self.on_response_chunk(chunk, out),
        }
    }

    fn on_close(&mut self, ts_ns: u64, out: &mut Vec<ParsedSpan>) {
        match std::mem::replace(&mut self.resp.state, RespState::Unsynced) {
            RespState::Body { exchange, framing: RespBody::Close } => self.finish(*exchange, ts_ns, out),
            RespState::Unframed { exchange } => {
                let end = self.resp.last_ns;
                self.finish(*exchange, end, out);
            }
            other => self.resp.state = other,
        }
        self.reset();
    }

    fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    fn on_idle(&mut self, older_than_ns: u64, out: &mut Vec<ParsedSpan>) {
        if self.req.last_ns < older_than_ns {
            match self.req.state {
                ReqState::Head => {
                    if !self.req.tentative {
                        self.dropped += 1;
                    }
                    self.req.head.reset();
                    self.req.tentative = false;
                    self.req.state = ReqState::Skip;
                }
                ReqState::Body { .. } => self.req.state = ReqState::Skip,
                ReqState::Skip | ReqState::Idle => {}
            }
        }
        if self.resp.last_ns < older_than_ns {
            let end = self.resp.last_ns;
            match std::mem::replace(&mut self.resp.state, RespState::Unsynced) {
                // The body stopped arriving long ago: what a close would
                // complete, without the close (lost close event, shutdown).
                RespState::Body { exchange, framing: RespBody::Close } | RespState::Unframed { exchange } => {
                    self.finish(*exchange, end, out);
                    self.resp.state = RespState::Idle;
                }
                RespState::Body { .. } => self.dropped += 1,
                RespState::Head => {
                    self.resp.head.reset();
                }
                other @ (RespState::Idle | RespState::Unsynced) => self.resp.state = other,
            }
        }
        let mut stale = 0u64;
        while self.pending.front().is_some_and(|r| r.start_ns < older_than_ns)
            && !matches!(self.resp.state, RespState::Head)
        {
            self.pending.pop_front();
            stale += 1;
        }
        if stale > 0 {
            self.dropped += stale;
            // A late response must not be paired with a newer request.
            self.resp.state = RespState::Unsynced;
        }
    }
}

// ------------------------------------------------------------------ head parsing

fn parse_request_head(bytes: &[u8]) -> Result<RequestHead, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Invalid("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Invalid("invalid request head")),
    }
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Invalid("incomplete request line"));
    };
    let (method, method_original) = match KNOWN_METHODS.iter().find(|m| **m == method) {
        Some(m) => (*m, None),
        None => ("_OTHER", Some(truncate_utf8(method, 32))),
    };
    let (path, target_authority) = split_target(method, target);
    let framing = read_framing(req.headers, true)?;
    let mut host = None;
    let mut user_agent = None;
    let mut traceparents = 0u32;
    let mut context = None;
    let mut tracestate: Option<String> = None;
    for h in req.headers.iter() {
        // Only these headers are ever read; credentials are never touched.
        if h.name.eq_ignore_ascii_case("host") {
            if host.is_none() {
                host = std::str::from_utf8(h.value).ok().map(str::trim).filter(|v| valid_host(v)).map(str::to_owned);
            }
        } else if h.name.eq_ignore_ascii_case("user-agent") {
            if user_agent.is_none() {
                user_agent = Some(truncate_utf8(String::from_utf8_lossy(h.value).trim(), MAX_USER_AGENT));
            }
        } else if h.name.eq_ignore_ascii_case("traceparent") {
            traceparents += 1;
            context = parse_traceparent(h.value);
        } else if h.name.eq_ignore_ascii_case("tracestate") {
            // Non-printable bytes invalidate the whole header (checked when
            // bounding); whole values are joined so no member is ever cut.
            let v = String::from_utf8_lossy(trim_ows(h.value));
            if v.is_empty() {
                continue;
            }
            let joined = tracestate.get_or_insert_with(String::new);
            // Once 512 bytes are collected later values cannot contribute.
            if joined.len() <= MAX_TRACESTATE {
                if !joined.is_empty() {
                    joined.push(',');
                }
                joined.push_str(&v);
            }
        }
    }
    // Several traceparent headers: which one is real is unknowable (W3C says
    // treat as invalid).
    if traceparents != 1 {
        context = None;
    }
    let tracestate = if context.is_some() { tracestate.and_then(|s| bound_tracestate(&s)) } else { None };
    Ok(RequestHead {
        method,
        method_original,
        path,
        target_authority,
        minor_version,
        host,
        user_agent,
        content_length: framing.content_length,
        chunked: framing.chunked,
        context,
        tracestate,
    })
}

fn parse_response_head(bytes: &[u8]) -> Result<ResponseHead, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Invalid("incomplete response head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Invalid("invalid response head")),
    }
    // httparse takes any three digits; below 100 is not a status (RFC 9110 §15).
    let Some(status) = resp.code.filter(|c| *c >= 100) else {
        return Err(HeadError::Invalid("invalid status code"));
    };
    let framing = read_framing(resp.headers, false)?;
    Ok(ResponseHead {
        status,
        content_length: framing.content_length,
        chunked: framing.chunked,
        other_encoding: framing.other_encoding,
    })
}

struct Framing {
    content_length: Option<u64>,
    chunked: bool,
    other_encoding: bool,
}

/// Content-Length / Transfer-Encoding per RFC 9112 §6: Transfer-Encoding wins;
/// conflicting lengths are a framing error (request smuggling territory).
fn read_framing(headers: &[httparse::Header<'_>], is_request: bool) -> Result<Framing, HeadError> {
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<bool> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = parse_content_length(h.value).ok_or(HeadError::Invalid("invalid content-length"))?;
            if content_length.is_some_and(|v| v != value) {
                return Err(HeadError::Invalid("conflicting content-length"));
            }
            content_length = Some(value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding of the last header decides.
            let last = h.value.rsplit(|&c| c == b',').map(trim_ows).find(|c| !c.is_empty());
            if let Some(last) = last {
                transfer_encoding = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
        }
    }
    match transfer_encoding {
        Some(true) => Ok(Framing { content_length: None, chunked: true, other_encoding: false }),
        // A request body cannot be delimited by close.
        Some(false) if is_request => Err(HeadError::Invalid("request transfer-encoding is not chunked")),
        Some(false) => Ok(Framing { content_length: None, chunked: false, other_encoding: true }),
        None => Ok(Framing { content_length, chunked: false, other_encoding: false }),
    }
}

fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t')).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t')).map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// `123`, or a list of identical values (`123, 123`) as some proxies send.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut result: Option<u64> = None;
    for part in value.split(|&c| c == b',') {
        let part = trim_ows(part);
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        if result.is_some_and(|r| r != n) {
            return None;
        }
        result = Some(n);
    }
    result
}

/// Path (query and fragment removed) and authority of a request target.
fn split_target(method: &str, target: &str) -> (Option<String>, Option<String>) {
    if method == "CONNECT" {
        return (None, Some(truncate_utf8(target, MAX_HOST)).filter(|a| valid_host(a)));
    }
    let strip = |p: &str| -> String {
        let end = p.find(['?', '#']).unwrap_or(p.len());
        truncate_utf8(&p[..end], MAX_PATH)
    };
    let has_scheme = |scheme: &str| {
        target.len() >= scheme.len() && target.as_bytes()[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
    };
    let rest = if has_scheme("http://") {
        Some(&target[7..])
    } else if has_scheme("https://") {
        Some(&target[8..])
    } else {
        None
    };
    match rest {
        Some(rest) => {
            let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, path) = rest.split_at(split);
            // userinfo@ is a credential: never exported.
            let authority = authority.rsplit('@').next().unwrap_or(authority);
            let path = if path.starts_with('/') { strip(path) } else { "/".to_owned() };
            (Some(path), Some(authority.to_owned()).filter(|a| valid_host(a)))
        }
        None => (Some(strip(target)), None),
    }
}

fn valid_host(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_HOST && v.bytes().all(|c| c.is_ascii_graphic() && c != b'@' && c != b'/')
}

/// `host`, `host:port`, `[v6]:port` → (address, port).
fn split_host_port(host: &str) -> (String, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((addr, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return (addr.to_owned(), port);
        }
    }
    match host.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((name, port)) if !name.contains(':') => match port.parse() {
            Ok(p) => (name.to_owned(), Some(p)),
            Err(_) => (name.to_owned(), None),
        },
        _ => (host.to_owned(), None),
    }
}

fn hex_nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_into(src: &[u8], dst: &mut [u8]) -> Option<()> {
    if src.len() != dst.len() * 2 {
        return None;
    }
    for (i, pair) in src.chunks_exact(2).enumerate() {
        dst[i] = (hex_nibble(pair[0])? << 4) | hex_nibble(pair[1])?;
    }
    Some(())
}

/// W3C traceparent, version 00 only: `00-<32 hex>-<16 hex>-<2 hex>`,
/// lowercase, ids not all zero. Anything else is None: a half-valid header
/// must not graft spans onto a wrong trace.
fn parse_traceparent(value: &[u8]) -> Option<TraceContext> {
    let v = trim_ows(value);
    if v.len() != 55 || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    let mut flags = [0u8; 1];
    hex_into(&v[3..35], &mut trace_id)?;
    hex_into(&v[36..52], &mut span_id)?;
    hex_into(&v[53..55], &mut flags)?;
    if trace_id.iter().all(|b| *b == 0) || span_id.iter().all(|b| *b == 0) {
        return None;
    }
    Some(TraceContext { trace_id, span_id, sampled: flags[0] & 1 == 1 })
}

/// Printable ASCII only; at most [`MAX_TRACESTATE`] bytes, cut at list-member
/// boundaries (never inside a member).
fn bound_tracestate(raw: &str) -> Option<String> {
    if !raw.bytes().all(|c| (b' '..=b'~').contains(&c)) {
        return None;
    }
    let mut out = String::new();
    for member in raw.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let extra = member.len() + usize::from(!out.is_empty());
        if out.len() + extra > MAX_TRACESTATE {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(member);
    }
    (!out.is_empty()).then_some(out)
}

fn build_span(kind: SpanKind, exchange: Exchange, end_ns: u64) -> Option<ParsedSpan> {
    let Exchange { req, status, body_bytes, body_size_known } = exchange;
    // Placeholders stand for requests that were never readable.
    let head = req.head?;
    let route = match head.path.as_deref() {
        Some("*") => Some("*".to_owned()),
        Some(p) => Some(infer_route(p)),
        None => None,
    };
    let name_method = if head.method == "_OTHER" { "HTTP" } else { head.method };
    let name = match &route {
        Some(route) => format!("{name_method} {route}"),
        None => name_method.to_owned(),
    };
    let mut attributes: Vec<Attribute> = Vec::with_capacity(14);
    attributes.push(("http.request.method", AttrValue::from(head.method)));
    if let Some(original) = head.method_original {
        attributes.push(("http.request.method_original", AttrValue::Str(original)));
    }
    if let Some(path) = head.path {
        attributes.push(("url.path", AttrValue::Str(path)));
    }
    attributes.push(("url.scheme", AttrValue::from("http")));
    if let Some(route) = route {
        attributes.push(("http.route", AttrValue::Str(route)));
    }
    if let Some(status) = status {
        attributes.push(("http.response.status_code", AttrValue::Int(i64::from(status))));
    }
    let version = if head.minor_version == 0 { "1.0" } else { "1.1" };
    attributes.push(("network.protocol.version", AttrValue::from(version)));
    if let Some(ua) = head.user_agent {
        attributes.push(("user_agent.original", AttrValue::Str(ua)));
    }
    if let Some(size) = req.body_size {
        attributes.push(("http.request.body.size", AttrValue::Int(i64::try_from(size).unwrap_or(i64::MAX))));
    }
    if body_size_known {
        attributes.push(("http.response.body.size", AttrValue::Int(i64::try_from(body_bytes).unwrap_or(i64::MAX))));
    }
    if let Some(host) = head.host.or(head.target_authority) {
        let (address, port) = split_host_port(&host);
        attributes.push(("server.address", AttrValue::Str(address)));
        if let Some(port) = port {
            attributes.push(("server.port", AttrValue::Int(i64::from(port))));
        }
    }
    let error = match (kind, status) {
        (SpanKind::Server, Some(s)) if s >= 500 => Some(s),
        (SpanKind::Client, Some(s)) if s >= 400 => Some(s),
        _ => None,
    };
    let status = match error {
        Some(s) => {
            attributes.push(("error.type", AttrValue::Str(s.to_string())));
            SpanStatus::Error { description: format!("HTTP {s}") }
        }
        None => SpanStatus::Unset,
    };
    Some(ParsedSpan {
        kind,
        name,
        start_ns: req.start_ns,
        end_ns: end_ns.max(req.start_ns),
        status,
        attributes,
        incoming_context: head.context,
        incoming_tracestate: head.tracestate,
        tid: req.tid,
    })
}

/// Fuzzing entry point (`fuzz/fuzz_targets/http1.rs`), also run by the unit
/// tests: runs `data` as a [`super::script`] in every role. Besides the
/// interpreter's own checks, a span from a script step must have a name, a
/// method, the role's kind and a plausible status. Panics on a broken
/// invariant; returns how many spans were emitted (so tests can check
/// coverage).
#[cfg(any(test, feature = "fuzz"))]
pub fn fuzz_script(data: &[u8]) -> usize {
    let new_parser = |role| Box::new(Http1Parser::new(role)) as Box<dyn ProtocolParser>;
    super::script::run(data, &Http1Detector, new_parser, |span, role, from| {
        // Spans flushed by the final close get only the interpreter's
        // timing check.
        if from == super::script::Emitted::FinalClose {
            return;
        }
        assert!(!span.name.is_empty());
        if role != Role::Unknown {
            let expected = if role == Role::Server { SpanKind::Server } else { SpanKind::Client };
            assert_eq!(span.kind, expected);
        }
        if let Some(AttrValue::Int(code)) = span.attr("http.response.status_code") {
            assert!((100..=999).contains(code), "status {code}");
        }
        assert!(span.attr("http.request.method").is_some());
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake connection: feeds chunks with advancing timestamps.
    struct Conn {
        parser: Http1Parser,
        role: Role,
        t: u64,
        out: Vec<ParsedSpan>,
        feeds: Vec<Feed>,
    }

    impl Conn {
        fn new(role: Role) -> Conn {
            Conn { parser: Http1Parser::new(role), role, t: 1_000, out: Vec::new(), feeds: Vec::new() }
        }

        fn chunk(&mut self, direction: Direction, bytes: &[u8], total_len: u64) -> Feed {
            self.t += 100;
            let chunk =
                Chunk { direction, bytes, total_len, enter_ns: self.t, exit_ns: self.t + 10, tid: self.t as u32 };
            let feed = self.parser.on_data(&chunk, &mut self.out);
            self.feeds.push(feed.clone());
            feed
        }

        fn req_dir(&self) -> Direction {
            if self.role == Role::Client {
                Direction::Egress
            } else {
                Direction::Ingress
            }
        }

        fn resp_dir(&self) -> Direction {
            if self.role == Role::Client {
                Direction::Ingress
            } else {
                Direction::Egress
            }
        }

        fn req(&mut self, bytes: &[u8]) -> Feed {
            self.chunk(self.req_dir(), bytes, bytes.len() as u64)
        }

        fn resp(&mut self, bytes: &[u8]) -> Feed {
            self.chunk(self.resp_dir(), bytes, bytes.len() as u64)
        }

        fn req_truncated(&mut self, bytes: &[u8], total: u64) -> Feed {
            self.chunk(self.req_dir(), bytes, total)
        }

        fn resp_truncated(&mut self, bytes: &[u8], total: u64) -> Feed {
            self.chunk(self.resp_dir(), bytes, total)
        }

        fn close(&mut self) {
            self.t += 100;
            self.parser.on_close(self.t, &mut self.out);
        }

        fn take(&mut self) -> Vec<ParsedSpan> {
            std::mem::take(&mut self.out)
        }

        fn all_continue(&self) -> bool {
            self.feeds.iter().all(|f| *f == Feed::Continue)
        }
    }

    fn s(v: &str) -> AttrValue {
        AttrValue::Str(v.to_owned())
    }

    fn i(v: i64) -> AttrValue {
        AttrValue::Int(v)
    }

    fn names(spans: &[ParsedSpan]) -> Vec<&str> {
        spans.iter().map(|s| s.name.as_str()).collect()
    }

    const GET: &[u8] = b"GET /users/42?token=s3cr3t HTTP/1.1\r\nHost: api.example.com:8080\r\nUser-Agent: curl/8.5\r\nAuthorization: Bearer top-secret\r\nCookie: session=cookie-secret\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: sid=set-cookie-secret\r\n\r\nhello";

    // ------------------------------------------------------------- detector

    fn detect(role: Role, direction: Direction, bytes: &[u8]) -> Confidence {
        let chunk = Chunk { direction, bytes, total_len: bytes.len() as u64, enter_ns: 0, exit_ns: 0, tid: 0 };
        Http1Detector.detect(role, &chunk)
    }

    #[test]
    fn detector_recognises_request_lines() {
        use Confidence::*;
        let ing = Direction::Ingress;
        assert_eq!(detect(Role::Server, ing, b"GET / HTTP/1.1\r\n"), Yes);
        assert_eq!(detect(Role::Server, ing, b"POST /api HTTP/1.0\r\nHost: x\r\n\r\n"), Yes);
        assert_eq!(detect(Role::Server, ing, b"OPTIONS * HTTP/1.1\r\n"), Yes);
        assert_eq!(detect(Role::Server, ing, b"GET http://example.com/x HTTP/1.1\r\n"), Yes);
        assert_eq!(detect(Role::Server, ing, b"CONNECT example.com:443 HTTP/1.1\r\n"), Yes);
        assert_eq!(detect(Role::Server, ing, b"PROPFIND /dav HTTP/1.1\r\n"), Yes);
        assert_eq!(detect(Role::Client, Direction::Egress, b"DELETE /x/1 HTTP/1.1\r\n"), Yes);
        // Strict prefixes need more bytes.
        assert_eq!(detect(Role::Server, ing, b"GE"), NeedMore);
        assert_eq!(detect(Role::Server, ing, b"GET"), NeedMore);
        assert_eq!(detect(Role::Server, ing, b"GET /index"), NeedMore);
        assert_eq!(detect(Role::Server, ing, b"GET /index HTTP/1."), NeedMore);
        assert_eq!(detect(Role::Server, ing, b"GET http:/"), NeedMore);
        // A long valid-so-far line is accepted: the parser validates it.
        let long = format!("GET /{}", "a".repeat(60));
        assert_eq!(detect(Role::Server, ing, long.as_bytes()), Yes);
    }

    #[test]
    fn detector_rejects_non_http() {
        use Confidence::*;
        let ing = Direction::Ingress;
        // TLS ClientHello.
        assert_eq!(detect(Role::Server, ing, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), No);
        assert_eq!(detect(Role::Server, ing, b"\x00\x00\x00\x08\x04\xd2\x16\x2f"), No);
        assert_eq!(detect(Role::Server, ing, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"get / HTTP/1.1\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"GET foo HTTP/1.1\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"GET / HTTP/2\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"GET / FTP/1.1\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"GET / HTTP/1.1 trailing\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"OPTIONS *x HTTP/1.1\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"GET * HTTP/1.1\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"SELECT 1"), No);
        // A request line in the response direction is not a request.
        assert_eq!(detect(Role::Server, Direction::Egress, b"GET / HTTP/1.1\r\n"), No);
        // Body bytes that merely start like a request need the version.
        assert_eq!(detect(Role::Server, ing, b"GET / is what the user typed\r\n"), No);
    }

    #[test]
    fn detector_accepts_responses_mid_stream() {
        use Confidence::*;
        assert_eq!(detect(Role::Server, Direction::Egress, b"HTTP/1.1 200 OK\r\n"), Yes);
        assert_eq!(detect(Role::Client, Direction::Ingress, b"HTTP/1.0 404 Not Found\r\n"), Yes);
        assert_eq!(detect(Role::Client, Direction::Ingress, b"HTTP/1."), NeedMore);
        assert_eq!(detect(Role::Client, Direction::Ingress, b"HTTP/2 200"), No);
        assert_eq!(detect(Role::Server, Direction::Ingress, b"HTTP/1.1 200 OK\r\n"), No);
        // Unknown role: either direction.
        assert_eq!(detect(Role::Unknown, Direction::Ingress, b"GET / HTTP/1.1\r\n"), Yes);
        assert_eq!(detect(Role::Unknown, Direction::Egress, b"HTTP/1.1 200 OK\r\n"), Yes);
    }

    // ------------------------------------------------------------- basics

    #[test]
    fn server_exchange_has_semconv_attributes() {
        let mut c = Conn::new(Role::Server);
        c.req(GET);
        let req_exit = c.t + 10;
        let req_tid = c.t as u32;
        c.resp(OK);
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.name, "GET /users/{id}");
        assert_eq!(span.start_ns, req_exit, "server span starts when the request was read");
        assert_eq!(span.end_ns, c.t + 10);
        assert_eq!(span.tid, req_tid);
        assert_eq!(span.status, SpanStatus::Unset);
        assert_eq!(span.attr("http.request.method"), Some(&s("GET")));
        assert_eq!(span.attr("url.path"), Some(&s("/users/42")));
        assert_eq!(span.attr("url.scheme"), Some(&s("http")));
        assert_eq!(span.attr("http.route"), Some(&s("/users/{id}")));
        assert_eq!(span.attr("http.response.status_code"), Some(&i(200)));
        assert_eq!(span.attr("network.protocol.version"), Some(&s("1.1")));
        assert_eq!(span.attr("user_agent.original"), Some(&s("curl/8.5")));
        assert_eq!(span.attr("http.response.body.size"), Some(&i(5)));
        assert_eq!(span.attr("http.request.body.size"), None);
        assert_eq!(span.attr("server.address"), Some(&s("api.example.com")));
        assert_eq!(span.attr("server.port"), Some(&i(8080)));
        assert_eq!(span.attr("error.type"), None);
        assert!(span.incoming_context.is_none());
        assert!(c.all_continue());
    }

    #[test]
    fn secrets_and_query_strings_never_leak() {
        for role in [Role::Server, Role::Client] {
            let mut c = Conn::new(role);
            c.req(GET);
            c.resp(OK);
            let spans = c.take();
            assert_eq!(spans.len(), 1);
            let dump = format!("{:?}", spans[0]);
            for secret in ["top-secret", "cookie-secret", "set-cookie-secret", "s3cr3t", "token="] {
                assert!(!dump.contains(secret), "{secret} leaked: {dump}");
            }
        }
    }

    #[test]
    fn client_exchange_times_status_and_host() {
        let mut c = Conn::new(Role::Client);
        c.req(b"POST /api/orders HTTP/1.1\r\nHost: orders.internal\r\nContent-Length: 11\r\n\r\n{\"a\":12345}");
        let write_enter = c.t;
        let tid = c.t as u32;
        c.resp(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.kind, SpanKind::Client);
        assert_eq!(span.name, "POST /api/orders");
        assert_eq!(span.start_ns, write_enter, "client span starts when the request write began");
        assert_eq!(span.end_ns, c.t + 10);
        assert_eq!(span.tid, tid);
        assert_eq!(span.status, SpanStatus::Error { description: "HTTP 404".into() });
        assert_eq!(span.attr("error.type"), Some(&s("404")));
        assert_eq!(span.attr("http.request.body.size"), Some(&i(11)));
        assert_eq!(span.attr("http.response.body.size"), Some(&i(0)));
        assert_eq!(span.attr("server.address"), Some(&s("orders.internal")));
        assert_eq!(span.attr("server.port"), None, "only what the bytes say");
    }

    #[test]
    fn error_status_depends_on_kind() {
        let run = |role, status: &str| {
            let mut c = Conn::new(role);
            c.req(b"GET /x HTTP/1.1\r\n\r\n");
            c.resp(format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes());
            c.take().remove(0)
        };
        assert_eq!(run(Role::Server, "404").status, SpanStatus::Unset);
        assert_eq!(run(Role::Server, "404").attr("error.type"), None);
        assert_eq!(run(Role::Server, "503").status, SpanStatus::Error { description: "HTTP 503".into() });
        assert_eq!(run(Role::Server, "503").attr("error.type"), Some(&s("503")));
        assert_eq!(run(Role::Client, "400").status, SpanStatus::Error { description: "HTTP 400".into() });
        assert_eq!(run(Role::Client, "302").status, SpanStatus::Unset);
    }

    #[test]
    fn unknown_methods_are_other() {
        let mut c = Conn::new(Role::Server);
        c.req(b"PROPFIND /dav/files HTTP/1.1\r\nHost: dav\r\n\r\n");
        c.resp(b"HTTP/1.1 207 Multi-Status\r\nContent-Length: 0\r\n\r\n");
        let span = c.take().remove(0);
        assert_eq!(span.attr("http.request.method"), Some(&s("_OTHER")));
        assert_eq!(span.attr("http.request.method_original"), Some(&s("PROPFIND")));
        assert_eq!(span.name, "HTTP /dav/files");
    }

    #[test]
    fn custom_methods_once_in_sync() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET / HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        c.req(b"NOTIFY /upnp/event HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /", "HTTP /upnp/event"]);
        assert_eq!(spans[1].attr("http.request.method_original"), Some(&s("NOTIFY")));
        assert!(c.all_continue());
        // Lower-case or over-long tokens are still garbage.
        assert_eq!(c.req(b"notify / HTTP/1.1\r\n\r\n"), Feed::LostSync("invalid request line"));
    }

    #[test]
    fn http_1_0_version_is_reported() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /old HTTP/1.0\r\n\r\n");
        c.resp(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi");
        let span = c.take().remove(0);
        assert_eq!(span.attr("network.protocol.version"), Some(&s("1.0")));
    }

    // ------------------------------------------------------------- framing

    #[test]
    fn head_split_one_byte_per_write() {
        for role in [Role::Server, Role::Client] {
            let mut c = Conn::new(role);
            for b in GET.iter() {
                c.req(std::slice::from_ref(b));
            }
            for b in OK.iter() {
                c.resp(std::slice::from_ref(b));
            }
            let spans = c.take();
            assert_eq!(names(&spans), ["GET /users/{id}"], "role {role:?}");
            assert_eq!(spans[0].attr("user_agent.original"), Some(&s("curl/8.5")));
            assert_eq!(spans[0].attr("http.response.body.size"), Some(&i(5)));
            assert!(c.all_continue());
        }
    }

    #[test]
    fn server_span_starts_at_first_request_read() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /a HT");
        let first_exit = c.t + 10;
        let first_tid = c.t as u32;
        c.req(b"TP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 204 No Content\r\n\r\n");
        let span = c.take().remove(0);
        assert_eq!(span.start_ns, first_exit);
        assert_eq!(span.tid, first_tid);
    }

    #[test]
    fn large_heads_are_buffered_up_to_the_limit() {
        let mut c = Conn::new(Role::Server);
        let mut head = b"GET /big HTTP/1.1\r\n".to_vec();
        while head.len() < MAX_HEAD_BYTES - 200 {
            head.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        head.extend_from_slice(b"\r\n");
        assert!(head.len() <= MAX_HEAD_BYTES);
        // 4 KiB reads, all captured; too many headers for httparse.
        for part in head.chunks(4096) {
            c.req(part);
        }
        assert_eq!(c.feeds.last(), Some(&Feed::LostSync("too many request headers")));

        // Few, long headers: fine up to 64 KiB.
        let mut c = Conn::new(Role::Server);
        let mut head = b"GET /big HTTP/1.1\r\n".to_vec();
        let value = "v".repeat(MAX_HEAD_BYTES - 1000);
        head.extend_from_slice(format!("X-Long: {value}\r\nUser-Agent: ua\r\n\r\n").as_bytes());
        for part in head.chunks(4096) {
            c.req(part);
        }
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(c.all_continue());
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /big"]);
        assert_eq!(spans[0].attr("user_agent.original"), Some(&s("ua")));
        assert!(c.parser.req.head.buf.capacity() <= KEEP_HEAD_CAPACITY, "buffer shrinks after a huge head");
    }

    #[test]
    fn oversized_head_loses_sync() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /big HTTP/1.1\r\n");
        let filler = format!("X-Long: {}\r\n", "v".repeat(4000));
        let mut result = Feed::Continue;
        for _ in 0..20 {
            result = c.req(filler.as_bytes());
            if result != Feed::Continue {
                break;
            }
        }
        assert_eq!(result, Feed::LostSync("request head too large"));
        assert!(c.parser.req.head.buf.len() <= MAX_HEAD_BYTES + 1);
        assert!(c.take().is_empty());
    }

    #[test]
    fn content_length_counted_by_total_len() {
        // A 100 KB upload: every chunk captured to 4 KiB only.
        let mut c = Conn::new(Role::Server);
        let head = b"PUT /files/report.pdf HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
        let mut first = head.to_vec();
        first.resize(4096, b'%');
        c.req_truncated(&first, 60_000 + head.len() as u64);
        c.req_truncated(&[b'%'; 4096], 40_000);
        // Nothing left over: the next bytes are a response, then a request.
        c.resp_truncated(b"HTTP/1.1 201 Created\r\nContent-Length: 70000\r\n\r\n", 70_000 + 47);
        let spans = c.take();
        assert_eq!(names(&spans), ["PUT /files/report.pdf"]);
        assert_eq!(spans[0].attr("http.request.body.size"), Some(&i(100_000)));
        assert_eq!(spans[0].attr("http.response.body.size"), Some(&i(70_000)));
        assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(201)));
        // Keep-alive continues in sync.
        c.req(b"GET /next HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx");
        assert_eq!(names(&c.take()), ["GET /next"]);
        assert!(c.all_continue());
    }

    #[test]
    fn response_body_over_many_writes() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /f HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
        c.resp(b"0123");
        assert!(c.take().is_empty(), "not complete yet");
        c.resp(b"456");
        c.resp(b"789");
        let end = c.t + 10;
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].end_ns, end, "ends at the chunk that completed the body");
    }

    #[test]
    fn chunked_response() {
        let body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n";
        // Whole, and split at every position.
        for split in 0..body.len() {
            let mut c = Conn::new(Role::Server);
            c.req(b"GET /stream HTTP/1.1\r\n\r\n");
            c.resp(&body[..split]);
            assert!(c.take().is_empty(), "split {split}: not complete yet");
            c.resp(&body[split..]);
            let spans = c.take();
            assert_eq!(spans.len(), 1, "split {split}");
            assert_eq!(spans[0].attr("http.response.body.size"), Some(&i(12)));
            assert_eq!(spans[0].end_ns, c.t + 10);
            // The connection is still in sync.
            c.req(b"GET /again HTTP/1.1\r\n\r\n");
            c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(names(&c.take()), ["GET /again"], "split {split}");
            assert!(c.all_continue(), "split {split}");
        }
    }

    #[test]
    fn chunked_response_ends_at_last_chunk_write() {
        let mut c = Conn::new(Role::Client);
        c.req(b"GET /events HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        c.resp(b"3\r\nabc\r\n");
        c.resp(b"3\r\ndef\r\n");
        assert!(c.take().is_empty());
        c.resp(b"0\r\n\r\n");
        let end = c.t + 10;
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].end_ns, end);
        assert_eq!(spans[0].attr("http.response.body.size"), Some(&i(6)));
    }

    #[test]
    fn chunked_with_truncated_data_is_followed_exactly() {
        // Chunk headers all fall in captured bytes; data is partly blind.
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /big HTTP/1.1\r\n\r\n");
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2710\r\n";
        let mut first = head.to_vec();
        first.resize(4096, b'z');
        let data_in_first = 4096 - head.len();
        c.resp_truncated(&first, (head.len() + 10_000) as u64);
        assert_eq!(data_in_first + (10_000 - data_in_first), 10_000);
        c.resp(b"\r\n0\r\n\r\n");
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].attr("http.response.body.size"), Some(&i(10_000)));
        assert!(c.all_continue());
    }

    #[test]
    fn chunked_header_in_blind_region_falls_back() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /dump HTTP/1.1\r\n\r\n");
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n";
        let mut first = head.to_vec();
        first.extend_from_slice(b"1000\r\n");
        first.resize(4096, b'y');
        // 20000 bytes moved: several chunk-size lines were never captured.
        c.resp_truncated(&first, 20_000);
        c.resp_truncated(&[b'y'; 4096], 9000);
        let last_resp_exit = c.t + 10;
        assert!(c.take().is_empty(), "no invented end");
        // The next request ends the response at the last response write.
        c.req(b"GET /next HTTP/1.1\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /dump"]);
        assert_eq!(spans[0].end_ns, last_resp_exit);
        assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(200)));
        assert_eq!(spans[0].attr("http.response.body.size"), None, "size unknown, not invented");
        // And the next exchange is parsed normally.
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(names(&c.take()), ["GET /next"]);
        assert!(c.all_continue());
    }

    #[test]
    fn chunked_fallback_ends_at_close_or_idle() {
        let unframed = |c: &mut Conn| {
            c.req(b"GET /dump HTTP/1.1\r\n\r\n");
            let mut first = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n".to_vec();
            first.resize(4096, b'y');
            c.resp_truncated(&first, 9000);
            c.t + 10
        };
        let mut c = Conn::new(Role::Server);
        let last = unframed(&mut c);
        c.close();
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].end_ns, last);

        let mut c = Conn::new(Role::Server);
        let last = unframed(&mut c);
        c.parser.on_idle(last + 1_000_000, &mut c.out);
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].end_ns, last);
    }

    #[test]
    fn chunked_request_body() {
        let mut c = Conn::new(Role::Server);
        c.req(b"POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n");
        c.req(b"5\r\npedia\r\n0\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        c.req(b"GET /after HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["POST /upload", "GET /after"]);
        assert_eq!(spans[0].attr("http.request.body.size"), Some(&i(9)));
        assert!(c.all_continue());
    }

    #[test]
    fn invalid_chunked_body_loses_sync() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            c.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Feed::LostSync("invalid chunked response body")
        );
        assert!(c.take().is_empty());
        assert_eq!(c.parser.take_dropped(), 1);
    }

    #[test]
    fn close_delimited_response_ends_at_close() {
        for role in [Role::Server, Role::Client] {
            let mut c = Conn::new(role);
            c.req(b"GET /legacy HTTP/1.0\r\n\r\n");
            c.resp(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsome");
            c.resp_truncated(b" more", 5000);
            assert!(c.take().is_empty(), "role {role:?}: ends only at close");
            c.close();
            let spans = c.take();
            assert_eq!(spans.len(), 1);
            assert_eq!(spans[0].end_ns, c.t);
            assert_eq!(spans[0].attr("http.response.body.size"), Some(&i(5004)));
        }
        // HTTP/1.1 with Connection: close and no length.
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /x HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc");
        assert!(c.take().is_empty());
        c.close();
        assert_eq!(c.take().len(), 1);
    }

    #[test]
    fn bodiless_responses() {
        // HEAD: Content-Length describes the GET body, none follows.
        let mut c = Conn::new(Role::Server);
        c.req(b"HEAD /file HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
        c.req(b"GET /file HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n");
        c.req(b"DELETE /file HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 204 No Content\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["HEAD /file", "GET /file", "DELETE /file"]);
        assert_eq!(spans[0].attr("http.response.body.size"), None);
        assert!(c.all_continue());
    }

    #[test]
    fn expect_100_continue() {
        for role in [Role::Server, Role::Client] {
            let mut c = Conn::new(role);
            c.req(b"POST /upload HTTP/1.1\r\nContent-Length: 6\r\nExpect: 100-continue\r\n\r\n");
            c.resp(b"HTTP/1.1 100 Continue\r\n\r\n");
            assert!(c.take().is_empty(), "the interim response does not end the exchange");
            c.req(b"abcdef");
            c.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
            let spans = c.take();
            assert_eq!(names(&spans), ["POST /upload"]);
            assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(201)));
            assert_eq!(spans[0].attr("http.request.body.size"), Some(&i(6)));
            assert!(c.all_continue());
        }
        // Interim and final response in one write, 103 Early Hints too.
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /page HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(200)));
    }

    #[test]
    fn keep_alive_many_exchanges() {
        let mut c = Conn::new(Role::Client);
        for n in 0..100 {
            c.req(format!("GET /items/{n} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
            c.resp(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}", n.to_string().len(), n).as_bytes());
        }
        let spans = c.take();
        assert_eq!(spans.len(), 100);
        assert!(spans.iter().all(|s| s.name == "GET /items/{id}"));
        assert!(spans.windows(2).all(|w| w[0].end_ns < w[1].start_ns));
        assert!(c.all_continue());
        assert!(c.parser.pending.is_empty());
    }

    #[test]
    fn pipelining_is_fifo() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz");
        c.req(b"HEAD /d HTTP/1.1\r\n\r\n");
        assert_eq!(c.parser.pending.len(), 4);
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nc");
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /a", "GET /b"]);
        c.resp(b"c");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["POST /c", "HEAD /d"]);
        assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(500)));
        assert!(matches!(spans[0].status, SpanStatus::Error { .. }));
        assert!(c.all_continue());
    }

    #[test]
    fn pipeline_queue_is_bounded() {
        let mut c = Conn::new(Role::Client);
        for n in 0..MAX_PENDING {
            assert_eq!(c.req(format!("GET /{n} HTTP/1.1\r\n\r\n").as_bytes()), Feed::Continue);
        }
        assert_eq!(c.req(b"GET /overflow HTTP/1.1\r\n\r\n"), Feed::LostSync("too many pipelined requests"));
        assert!(c.parser.pending.is_empty());
        // The queued requests and the one that overflowed.
        assert_eq!(c.parser.take_dropped(), MAX_PENDING as u64 + 1);
    }

    #[test]
    fn mid_stream_join_resyncs_at_next_request() {
        // The agent starts while a POST body is being read and the previous
        // response is being written.
        let mut c = Conn::new(Role::Server);
        c.req(b"ody of an earlier request: GET /evil HTTP/1.1\r\n\r\n");
        c.req(b"GET /not-a-request is body text too\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        c.resp(b"tail of an old response");
        assert!(c.take().is_empty(), "nothing invented from the unknown prefix");
        assert!(c.all_continue());
        assert_eq!(c.parser.take_dropped(), 1, "the orphan response is counted");
        c.req(b"GET /fresh HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(names(&c.take()), ["GET /fresh"]);
        c.req(b"GET /again HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(names(&c.take()), ["GET /again"]);
        assert!(c.all_continue());
    }

    #[test]
    fn mid_stream_old_response_tail_after_new_request() {
        // Joined while an old response is still being written; a new request
        // arrives (pipelined client) before the old response's tail.
        let mut c = Conn::new(Role::Server);
        c.resp(b"more of an old body");
        c.req(b"GET /new HTTP/1.1\r\n\r\n");
        c.resp(b"rest of the old body");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(names(&c.take()), ["GET /new"]);
        assert!(c.all_continue());
    }

    #[test]
    fn response_without_request_is_dropped() {
        let mut c = Conn::new(Role::Client);
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(c.take().is_empty());
        assert_eq!(c.parser.take_dropped(), 1);
        assert!(c.all_continue());
    }

    #[test]
    fn garbage_mid_stream_loses_sync() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET / HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(c.take().len(), 1);
        assert_eq!(c.req(&[0x16, 0x03, 0x01, 0x00, 0xa5, 0x01]), Feed::LostSync("invalid request line"));
        let mut c = Conn::new(Role::Server);
        c.req(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(c.resp(b"\x00\x01binary"), Feed::LostSync("invalid status line"));
        let mut c = Conn::new(Role::Server);
        c.req(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(c.resp(b"HTTP/1.1 002 Odd\r\n\r\n"), Feed::LostSync("invalid status code"));
        assert!(c.take().is_empty());
        let mut c = Conn::new(Role::Server);
        c.req(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(c.req(b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n"), Feed::LostSync("invalid request head"));
        let mut c = Conn::new(Role::Server);
        c.req(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            c.req(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Feed::LostSync("conflicting content-length")
        );
    }

    #[test]
    fn upgrade_and_connect_make_the_stream_opaque() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        assert_eq!(
            c.resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"),
            Feed::Opaque("http protocol upgrade")
        );
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /ws"]);
        assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(101)));

        let mut c = Conn::new(Role::Client);
        c.req(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n");
        assert_eq!(c.resp(b"HTTP/1.1 200 Connection established\r\n\r\n"), Feed::Opaque("http CONNECT tunnel"));
        let spans = c.take();
        assert_eq!(names(&spans), ["CONNECT"]);
        assert_eq!(spans[0].attr("server.address"), Some(&s("db.internal")));
        assert_eq!(spans[0].attr("server.port"), Some(&i(5432)));
        assert_eq!(spans[0].attr("url.path"), None);
    }

    #[test]
    fn truncated_request_head_keeps_what_was_captured() {
        let mut c = Conn::new(Role::Server);
        let mut head = b"GET /reports/2024 HTTP/1.1\r\nHost: r.example\r\nCookie: ".to_vec();
        head.resize(4096, b'c');
        c.req_truncated(&head, 9000);
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /reports/{id}"]);
        assert_eq!(spans[0].attr("server.address"), Some(&s("r.example")));
        assert!(!format!("{:?}", spans[0]).contains("ccc"));
        // The request stream resynchronises at the next request line.
        c.req(b"GET /next HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(names(&c.take()), ["GET /next"]);
        assert!(c.all_continue());
    }

    #[test]
    fn unreadable_request_keeps_pairing_right() {
        // A request line longer than the capture: its response is consumed,
        // not paired with the next request.
        let mut c = Conn::new(Role::Server);
        let mut line = b"GET /".to_vec();
        line.resize(4096, b'a');
        c.req_truncated(&line, 5000);
        c.req(b"GET /second HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        c.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /second"]);
        assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(201)));
        assert_eq!(c.parser.take_dropped(), 1);
    }

    #[test]
    fn idle_drops_stale_state() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /slow HTTP/1.1\r\n\r\n");
        c.req(b"GET /partial HTTP/1.1\r\nHost:");
        let now = c.t + 10;
        c.parser.on_idle(now + 1, &mut c.out);
        assert!(c.take().is_empty());
        assert!(c.parser.pending.is_empty());
        assert!(c.parser.req.head.buf.is_empty());
        assert_eq!(c.parser.take_dropped(), 2);
        // A late response to a dropped request is not paired with a new one.
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        c.req(b"GET /new HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /new"]);
        assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(202)));
    }

    #[test]
    fn idle_keeps_fresh_state() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /slow HTTP/1.1\r\n\r\n");
        c.parser.on_idle(0, &mut c.out);
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(names(&c.take()), ["GET /slow"]);
    }

    #[test]
    fn close_drops_incomplete_exchanges() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /a HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345");
        c.close();
        assert!(c.take().is_empty(), "a half body is not a response");
        assert_eq!(c.parser.take_dropped(), 1);
    }

    #[test]
    fn unknown_role_is_learnt_from_the_request_direction() {
        let mut c = Conn::new(Role::Unknown);
        c.chunk(Direction::Egress, b"GET /out HTTP/1.1\r\n\r\n", 22);
        c.chunk(Direction::Ingress, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 38);
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /out"]);
        assert_eq!(spans[0].kind, SpanKind::Client);
    }

    // ------------------------------------------------------------- trace context

    fn ctx_of(headers: &str) -> (Option<TraceContext>, Option<String>) {
        let mut c = Conn::new(Role::Server);
        c.req(format!("GET / HTTP/1.1\r\n{headers}\r\n").as_bytes());
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let span = c.take().remove(0);
        (span.incoming_context, span.incoming_tracestate)
    }

    #[test]
    fn valid_traceparent_is_parsed() {
        let (ctx, state) = ctx_of("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: rojo=00f067aa0ba902b7,congo=t61rcWkgMzE\r\n");
        let ctx = ctx.unwrap();
        assert_eq!(crate::model::hex(&ctx.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(crate::model::hex(&ctx.span_id), "00f067aa0ba902b7");
        assert!(ctx.sampled);
        assert_eq!(state.as_deref(), Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        let (ctx, _) = ctx_of("TraceParent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\r\n");
        assert!(!ctx.unwrap().sampled);
    }

    #[test]
    fn invalid_traceparents_are_ignored_entirely() {
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ] {
            let (ctx, state) = ctx_of(&format!("traceparent: {bad}\r\ntracestate: a=b\r\n"));
            assert_eq!(ctx, None, "{bad}");
            assert_eq!(state, None, "tracestate without a valid traceparent: {bad}");
        }
        // Two traceparent headers: ambiguous.
        let tp = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n";
        assert_eq!(ctx_of(&format!("{tp}{tp}")).0, None);
    }

    #[test]
    fn tracestate_is_bounded_at_member_boundaries() {
        let tp = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n";
        let members: Vec<String> = (0..40).map(|n| format!("vendor{n:02}={}", "x".repeat(20))).collect();
        let (_, state) = ctx_of(&format!("{tp}tracestate: {}\r\n", members.join(",")));
        let state = state.unwrap();
        assert!(state.len() <= MAX_TRACESTATE);
        assert!(state.starts_with("vendor00="));
        assert!(state.split(',').all(|m| m.len() == 29), "no member cut: {state}");
        // Multiple headers are joined in order.
        let (_, state) = ctx_of(&format!("{tp}tracestate: a=1\r\ntracestate: b=2\r\n"));
        assert_eq!(state.as_deref(), Some("a=1,b=2"));
        // Non-printable content: dropped.
        let (ctx, state) = ctx_of(&format!("{tp}tracestate: a=\u{e9}\r\n"));
        assert!(ctx.is_some());
        assert_eq!(state, None);
    }

    // ------------------------------------------------------------- helpers

    #[test]
    fn host_port_and_targets() {
        assert_eq!(split_host_port("example.com"), ("example.com".into(), None));
        assert_eq!(split_host_port("example.com:81"), ("example.com".into(), Some(81)));
        assert_eq!(split_host_port("[::1]:8080"), ("::1".into(), Some(8080)));
        assert_eq!(split_host_port("::1"), ("::1".into(), None));
        assert_eq!(split_target("GET", "/a/b?c=d#e"), (Some("/a/b".into()), None));
        assert_eq!(
            split_target("GET", "http://user:pw@proxy.example:3128/x?y"),
            (Some("/x".into()), Some("proxy.example:3128".into()))
        );
        assert_eq!(split_target("GET", "HTTPS://h"), (Some("/".into()), Some("h".into())));
        assert_eq!(split_target("CONNECT", "h:443"), (None, Some("h:443".into())));
        assert_eq!(parse_content_length(b"42"), Some(42));
        assert_eq!(parse_content_length(b" 7 , 7"), Some(7));
        assert_eq!(parse_content_length(b"7, 8"), None);
        assert_eq!(parse_content_length(b"-1"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
        assert_eq!(truncate_utf8("héllo", 2), "h");
    }

    #[test]
    fn absolute_form_request_uses_path_and_authority() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET http://backend.local:9000/v1/things/77?secret=1 HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let span = c.take().remove(0);
        assert_eq!(span.name, "GET /v1/things/{id}");
        assert_eq!(span.attr("url.path"), Some(&s("/v1/things/77")));
        assert_eq!(span.attr("server.address"), Some(&s("backend.local")));
        assert_eq!(span.attr("server.port"), Some(&i(9000)));
    }

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

    // ------------------------------------------------------------- randomised

    /// Deterministic xorshift64*: no external seed, same inputs every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    const REQUESTS: &[&[u8]] = &[
        b"GET /a/1 HTTP/1.1\r\nHost: h:80\r\n\r\n",
        b"POST /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
        b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HEAD /h HTTP/1.1\r\n\r\n",
        b"GET /old HTTP/1.0\r\nUser-Agent: x\r\n\r\n",
        b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        b"DELETE /z/deadbeef01 HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
    ];
    const RESPONSES: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 503 Unavailable\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    ];

    /// A plausible conversation with random splits and mutations, encoded in
    /// the fuzz script format.
    fn random_script(rng: &mut Rng) -> Vec<u8> {
        let mut script = Vec::new();
        let steps = 1 + rng.below(12);
        for _ in 0..steps {
            let (dir, mut msg) = if rng.below(2) == 0 {
                (0u8, REQUESTS[rng.below(REQUESTS.len())].to_vec())
            } else {
                (1u8, RESPONSES[rng.below(RESPONSES.len())].to_vec())
            };
            match rng.below(8) {
                0 => {
                    let at = rng.below(msg.len());
                    msg[at] = rng.next() as u8;
                }
                1 => {
                    let at = rng.below(msg.len());
                    msg.truncate(at);
                }
                2 => {
                    let at = rng.below(msg.len());
                    msg.insert(at, rng.next() as u8);
                }
                3 => msg = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
                _ => {}
            }
            let mut rest = &msg[..];
            while !rest.is_empty() {
                let n = (1 + rng.below(rest.len())).min(255);
                let truncated = rng.below(10) == 0;
                let op = dir | if truncated { 2 } else { 0 };
                script.push(((rng.below(16) as u8) << 4) | op);
                script.push(n as u8);
                script.extend_from_slice(&rest[..n]);
                if truncated {
                    script.push(rng.next() as u8);
                }
                rest = &rest[n..];
            }
            match rng.below(20) {
                0 => script.push(6),
                1 => script.push(0xf7),
                _ => {}
            }
        }
        script
    }

    #[test]
    fn fuzz_harness_on_seeded_inputs() {
        let mut rng = Rng(0x5eed_0f0a_661e);
        let mut spans = 0;
        for _ in 0..3000 {
            let script = random_script(&mut rng);
            spans += fuzz_script(&script);
        }
        // The generator must reach the span-emitting paths, not just noise.
        assert!(spans > 1500, "only {spans} spans: the harness is not exercising the parser");
        // Pure noise, too.
        for _ in 0..500 {
            let len = rng.below(600);
            let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            fuzz_script(&noise);
        }
    }

    /// Feeding a conversation in one write per message or split at random
    /// points must give the same spans (times aside).
    #[test]
    fn splitting_does_not_change_results() {
        let conversation: Vec<(Direction, &[u8])> = vec![
            (Direction::Ingress, b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"),
            (Direction::Egress, b"HTTP/1.1 100 Continue\r\n\r\n"),
            (Direction::Ingress, b"ok"),
            (Direction::Egress, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n"),
            (Direction::Ingress, b"GET /a/1 HTTP/1.1\r\nHost: h:80\r\n\r\nHEAD /h HTTP/1.1\r\n\r\nPUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
            (Direction::Egress, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nHTTP/1.1 503 X\r\nContent-Length: 1\r\n\r\nx"),
            (Direction::Ingress, b"\r\nGET /old HTTP/1.0\r\n\r\n"),
            (Direction::Egress, b"HTTP/1.0 200 OK\r\n\r\nuntil close"),
        ];
        let run = |splits: &mut dyn FnMut(usize) -> usize| {
            let mut c = Conn::new(Role::Server);
            for (dir, msg) in &conversation {
                let mut rest: &[u8] = msg;
                while !rest.is_empty() {
                    let n = splits(rest.len()).clamp(1, rest.len());
                    c.chunk(*dir, &rest[..n], n as u64);
                    rest = &rest[n..];
                }
            }
            c.close();
            assert!(c.all_continue());
            c.take().into_iter().map(|s| (s.name, s.status, s.attributes, s.incoming_context)).collect::<Vec<_>>()
        };
        let whole = run(&mut |n| n);
        assert_eq!(whole.len(), 5);
        assert_eq!(
            whole.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
            ["POST /e", "GET /a/{id}", "HEAD /h", "PUT /c", "GET /old"]
        );
        let mut rng = Rng(42);
        for _ in 0..300 {
            let split = run(&mut |n| 1 + rng.below(n));
            assert_eq!(split, whole);
        }
        assert_eq!(run(&mut |_| 1), whole);
    }
}
