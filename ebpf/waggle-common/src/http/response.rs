//! HTTP/1.x responses, for `--trace-response-header`: where a response
//! starts and ends on a server connection, whether its header block already
//! names a trace, and the header line that names it.
//!
//! A line may be inserted only right after the status line of a response
//! that starts at a known boundary (the first send after a request arrived,
//! with the previous response's end counted), whose whole header block was
//! seen, that is final (no 1xx, no 101) and that carries no `traceresponse`
//! or `X-Trace-Id` of the application's own. Every rule that decides it is
//! a pure function here, host-tested like the request side.

use super::{byte_of, ends_name, lower_word, word, HeaderScan, NAME_WINDOW};

/// Shortest status line: "HTTP/1.1 200\r\n" (the reason phrase and the
/// space before it may be missing).
pub const MIN_STATUS_LINE: u32 = 14;

/// Which line `--trace-response-header` inserts (the kernel's value of the
/// setting, per traced process).
pub mod mode {
    pub const OFF: u8 = 0;
    /// `traceresponse: 00-<trace-id>-<span-id>-<flags>` (W3C Trace Context
    /// Level 2 draft).
    pub const TRACERESPONSE: u8 = 1;
    /// `X-Trace-Id: <trace-id>`.
    pub const X_TRACE_ID: u8 = 2;
}

/// Why a response got no line (one counter each).
pub mod skip {
    /// The header block already names a trace (`traceresponse` or
    /// `X-Trace-Id`, any case): the application's own wins.
    pub const HAS_TRACE_HEADER: u32 = 0;
    /// A 1xx interim response or 101 Switching Protocols.
    pub const INTERIM: u32 = 1;
    /// The response's header block was not whole in its first send's first
    /// 4 KiB.
    pub const HEADERS_INCOMPLETE: u32 = 2;
    /// An earlier response's end on this connection was unknown (chunked,
    /// close-delimited, an upgrade): nothing more is inserted on it.
    pub const BOUNDARY_LOST: u32 = 3;
    /// The kernel knew no server span for the request answered.
    pub const NO_SERVER_SPAN: u32 = 4;
    /// The bytes the socket layer got are not those the syscall saw.
    pub const NOT_RESPONSE_START: u32 = 5;
    /// The socket might not take the whole message without waiting for
    /// memory: a partial send could cut the inserted line.
    pub const SEND_BUFFER_LOW: u32 = 6;
    pub const PUSH_FAILED: u32 = 7;
    /// The socket is not in the sockmap: sk_msg never saw the send.
    pub const NOT_IN_SOCKHASH: u32 = 8;
    /// The agent has not drained events for HEARTBEAT_STALE_NS: the ids
    /// could name a span that is never exported.
    pub const AGENT_STALLED: u32 = 9;
    pub const COUNT: u32 = 10;
}

/// `traceresponse: 00-<32>-<16>-<2>\r\n`.
pub const TRACERESPONSE_LINE_LEN: usize = 72;
/// `X-Trace-Id: <32>\r\n`.
pub const X_TRACE_ID_LINE_LEN: usize = 46;

/// Header names that already name the trace, lowercase, as words.
const TRACERESPONSE: [u64; 2] = [word(b"traceres"), word(b"ponse")];
const X_TRACE_ID: [u64; 2] = [word(b"x-trace-"), word(b"id")];

/// The status code of a status line whose first 16 bytes are `head` (`len`
/// of them real): "HTTP/1.<digit> <3 digits>" followed by a space or the
/// line's CR. None for anything else (HTTP/2 frames, TLS records, bodies).
#[inline(always)]
pub fn status_code(head: &[u8; 16], len: u64) -> Option<u16> {
    if len < u64::from(MIN_STATUS_LINE) || !super::starts_http1(head) || !head[7].is_ascii_digit() || head[8] != b' ' {
        return None;
    }
    let (a, b, c) = (head[9], head[10], head[11]);
    if !(b'1'..=b'5').contains(&a) || !b.is_ascii_digit() || !c.is_ascii_digit() {
        return None;
    }
    if head[12] != b' ' && head[12] != b'\r' {
        return None;
    }
    Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
}

/// The first NAME_WINDOW bytes of a header line (little-endian words) name
/// `traceresponse` or `X-Trace-Id` in any case, with or without whitespace
/// before the colon.
#[inline(always)]
pub fn names_trace(w: &[u64; 3]) -> bool {
    let l0 = lower_word(w[0]);
    let l1 = lower_word(w[1]);
    (l0 == TRACERESPONSE[0] && l1 & 0xff_ffff_ffff == TRACERESPONSE[1] && ends_name(byte_of(w, 13)))
        || (l0 == X_TRACE_ID[0] && l1 & 0xffff == X_TRACE_ID[1] && ends_name(byte_of(w, 10)))
}

/// The request header scan (`HeaderScan`, whose first line is here the
/// status line) plus the names that already carry a trace id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseScan {
    pub head: HeaderScan,
    /// Header lines naming `traceresponse` or `X-Trace-Id`.
    pub trace_lines: u64,
    line_start: u64,
    prev: u64,
}

impl ResponseScan {
    /// Feeds byte `b` at index `i`, as [`HeaderScan::step`].
    #[inline(always)]
    pub fn step(&mut self, i: u32, b: u8, window: impl Fn(u64) -> [u64; 3]) -> bool {
        let at = u64::from(i);
        if b == b'\n' && self.prev == u64::from(b'\r') {
            // A header line (not the status line, not the empty line) ends.
            if self.head.request_line_end != 0 && at > self.line_start + 1 && names_trace(&window(self.line_start)) {
                self.trace_lines += 1;
            }
            self.line_start = at + 1;
        }
        self.prev = u64::from(b);
        self.head.step(i, b, window)
    }

    /// Feeds eight bytes at once when [`HeaderScan::skip_word`] may.
    #[inline(always)]
    pub fn skip_word(&mut self, i: u32, word: u64) -> bool {
        if !self.head.skip_word(i, word) {
            return false;
        }
        self.prev = word >> 56;
        true
    }
}

/// Bytes of a response (header block and body) on the connection, when its
/// header block was whole in the scan and says where the body ends: none for
/// 1xx interim responses, 204, 304 and answers to HEAD; a single plain
/// Content-Length otherwise. None when the end cannot be told (chunked,
/// close-delimited, 101 and what follows it, an incomplete header block):
/// the connection then gets nothing more inserted.
#[inline(always)]
pub fn response_len(status: u16, head_request: bool, scan: &HeaderScan) -> Option<u64> {
    if scan.headers_end == 0 || status == 101 {
        return None;
    }
    if status < 200 || status == 204 || status == 304 || head_request {
        return Some(scan.headers_end);
    }
    if scan.framing_unknown != 0 || scan.content_length_lines != 1 {
        return None;
    }
    Some(scan.headers_end + scan.content_length)
}

/// Whether a response that starts at a known boundary gets the line:
/// Ok(()) or the `skip` reason. `has_server_span`: the kernel knows the
/// server span of the request it answers.
#[inline(always)]
pub fn decide(status: u16, scan: &ResponseScan, has_server_span: bool) -> Result<(), u32> {
    if status < 200 {
        return Err(skip::INTERIM);
    }
    if scan.head.headers_end == 0 || scan.head.request_line_end < u64::from(MIN_STATUS_LINE) {
        return Err(skip::HEADERS_INCOMPLETE);
    }
    if scan.trace_lines != 0 {
        return Err(skip::HAS_TRACE_HEADER);
    }
    if !has_server_span {
        return Err(skip::NO_SERVER_SPAN);
    }
    Ok(())
}

/// What a server connection's sends are, counted from what each returned:
/// the bytes of the current response still to come, and whether its end is
/// known at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseBoundary {
    /// Bytes of the current response the application has yet to send.
    pub remaining: u64,
    /// An earlier response's end was unknown: no send is a boundary again.
    pub lost: bool,
}

impl ResponseBoundary {
    /// A send of `sent` bytes returned; `starts` is the length of the
    /// response it starts (`response_len`) when it started one at a
    /// boundary, `Some(None)` when it started one of unknown length.
    #[inline(always)]
    pub fn sent(&mut self, starts: Option<Option<u64>>, sent: u64) {
        if self.lost {
            return;
        }
        match starts {
            Some(Some(len)) => self.remaining = len.saturating_sub(sent),
            Some(None) => self.lost = true,
            None if self.remaining >= sent => self.remaining -= sent,
            // More than the response held: pipelined answers or bytes the
            // scan did not account for. Nothing is known from here on.
            None => {
                self.remaining = 0;
                self.lost = true;
            }
        }
    }

    /// A send starting now can start a response.
    #[inline(always)]
    pub fn at_boundary(&self) -> bool {
        !self.lost && self.remaining == 0
    }
}

/// Copies `bytes` to `out[at..]` (a loop the verifier sees unrolled).
#[inline(always)]
fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    let mut i = 0;
    while i < bytes.len() {
        out[at + i] = bytes[i];
        i += 1;
    }
}

#[inline(always)]
fn put_hex(out: &mut [u8], at: usize, bytes: &[u8]) {
    let mut i = 0;
    while i < bytes.len() {
        let [hi, lo] = super::hex_byte(bytes[i]);
        out[at + 2 * i] = hi;
        out[at + 2 * i + 1] = lo;
        i += 1;
    }
}

/// `traceresponse: 00-<trace>-<span>-<01|00>\r\n`.
#[inline(always)]
pub fn traceresponse_line(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> [u8; TRACERESPONSE_LINE_LEN] {
    let mut out = [0u8; TRACERESPONSE_LINE_LEN];
    put(&mut out, 0, b"traceresponse: 00-");
    put_hex(&mut out, 18, trace_id);
    out[50] = b'-';
    put_hex(&mut out, 51, span_id);
    out[67] = b'-';
    out[68] = b'0';
    out[69] = if sampled { b'1' } else { b'0' };
    out[70] = b'\r';
    out[71] = b'\n';
    out
}

/// `X-Trace-Id: <trace>\r\n`.
#[inline(always)]
pub fn x_trace_id_line(trace_id: &[u8; 16]) -> [u8; X_TRACE_ID_LINE_LEN] {
    let mut out = [0u8; X_TRACE_ID_LINE_LEN];
    put(&mut out, 0, b"X-Trace-Id: ");
    put_hex(&mut out, 12, trace_id);
    out[44] = b'\r';
    out[45] = b'\n';
    out
}

const _: () = assert!(NAME_WINDOW >= 16);

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
