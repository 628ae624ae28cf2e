//! HTTP/1.x recognition for trace-context propagation: which bytes start a
//! request, where its request line ends, whether its header block carries a
//! `traceparent`, and the W3C `traceparent` wire format.
//!
//! Pure functions over bytes, no aya: the kernel programs call them with
//! bytes they copied into maps or onto the stack, the agent's parsers call
//! the same ones, and every rule that decides whether application bytes get
//! modified is unit-tested on the host. The shapes are chosen for the
//! verifier: fixed-size arrays, constant indexes, one byte per step in the
//! header scan (driven by `bpf_loop`).

/// Shortest HTTP/1.x request line: "GET / HTTP/1.1\r\n".
pub const MIN_REQUEST_LINE: u32 = 16;

/// Bytes of a send/recv looked at to recognise a request start: the longest
/// method plus its space ("OPTIONS ", "CONNECT ") is 8.
pub const PEEK: usize = 8;

pub mod request_line;
pub mod response;

/// The request methods RFC 9110 defines, plus PATCH: the ones OpenTelemetry
/// calls "known" (others are reported as `_OTHER`) and the only ones the
/// kernel takes for the start of a request.
pub const KNOWN_METHODS: [&str; 9] = ["GET", "PUT", "POST", "HEAD", "PATCH", "TRACE", "DELETE", "OPTIONS", "CONNECT"];

/// [`KNOWN_METHODS`] followed by their space, as little-endian words with
/// their lengths.
const METHODS: [(u64, u32); 9] = method_words(&KNOWN_METHODS);

const fn method_words(methods: &[&str; 9]) -> [(u64, u32); 9] {
    let mut out = [(0u64, 0u32); 9];
    let mut i = 0;
    while i < methods.len() {
        let m = methods[i].as_bytes();
        // Every method is at most 7 bytes, so its space still fits the word.
        out[i] = (word(m) | (b' ' as u64) << (8 * m.len()), m.len() as u32 + 1);
        i += 1;
    }
    out
}

const fn word(s: &[u8]) -> u64 {
    let mut w = 0u64;
    let mut i = 0;
    while i < s.len() {
        w |= (s[i] as u64) << (8 * i);
        i += 1;
    }
    w
}

#[inline(always)]
const fn low_bytes(n: u32) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    }
}

/// True when the first `len` bytes of a payload (of which `head` holds the
/// first PEEK, little-endian) begin with a method and a space.
#[inline(always)]
pub fn is_request_start(head: u64, len: u64) -> bool {
    let mut i = 0;
    while i < METHODS.len() {
        let (w, n) = METHODS[i];
        if len >= u64::from(n) && head & low_bytes(n) == w {
            return true;
        }
        i += 1;
    }
    false
}

/// The request's method is CONNECT: what follows its response is a tunnel.
#[inline(always)]
pub fn is_connect(head: u64) -> bool {
    head == word(b"CONNECT ")
}

/// "HTTP/1." little-endian: the first 7 bytes of every HTTP/1.x response.
const HTTP1: u64 = word(b"HTTP/1.");

/// A response whose status begins with '1' (100 Continue, 103 Early Hints)
/// is followed by the final response. `head` holds the first 16 bytes.
#[inline(always)]
pub fn is_interim_response(head: &[u8; 16], len: u64) -> bool {
    len >= 10 && starts_http1(head) && head[8] == b' ' && head[9] == b'1'
}

/// The bytes start like an HTTP/1.x status line.
#[inline(always)]
pub fn starts_http1(head: &[u8; 16]) -> bool {
    u64::from_le_bytes([head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7]]) & low_bytes(7) == HTTP1
}

/// The request line (`line`: the 10 bytes before and including its CRLF)
/// ends in " HTTP/1.<digit>\r\n". Redis inline commands and other text
/// protocols also start with "GET "; they never end their first line so.
#[inline(always)]
pub fn request_line_is_http1(tail: &[u8; 10]) -> bool {
    tail[0] == b' '
        && tail[1] == b'H'
        && tail[2] == b'T'
        && tail[3] == b'T'
        && tail[4] == b'P'
        && tail[5] == b'/'
        && tail[6] == b'1'
        && tail[7] == b'.'
        && tail[8].is_ascii_digit()
        && tail[9] == b'\r'
}

/// Header names the scan recognises, lowercase, as little-endian words
/// (zero-padded).
const TRACEPARENT: [u64; 2] = [word(b"tracepar"), word(b"ent")];
const CONTENT_LENGTH: [u64; 2] = [word(b"content-"), word(b"length")];
const TRANSFER_ENCODING: [u64; 3] = [word(b"transfer"), word(b"-encodin"), word(b"g")];
const UPGRADE: u64 = word(b"upgrade");
/// Bytes of a header line the scan looks at to name it.
pub const NAME_WINDOW: usize = 24;
/// Content-Length values above this are refused (no request body is that
/// large, and the sum with the header length must not overflow).
const MAX_CONTENT_LENGTH: u64 = 1 << 50;

/// ASCII letters of `w` lowercased, other bytes untouched (SWAR: no
/// branches for the verifier to explore).
#[inline(always)]
pub const fn lower_word(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let low7 = w & (ONES * 0x7f);
    let at_least_a = low7 + ONES * (0x80 - b'A' as u64);
    let above_z = low7 + ONES * (0x80 - b'Z' as u64 - 1);
    let upper = at_least_a & !above_z & !w & (ONES * 0x80);
    w | (upper >> 2)
}

#[inline(always)]
const fn byte_of(words: &[u64; 3], k: usize) -> u8 {
    (words[k / 8] >> (8 * (k % 8))) as u8
}

#[inline(always)]
const fn ends_name(b: u8) -> bool {
    b == b':' || b == b' ' || b == b'\t'
}

/// One pass over the start of a request, one byte per `step`: where its
/// request line and header block end, whether it carries a `traceparent`,
/// and what says where its body ends.
///
/// Lines end at CRLF only; a bare LF is an ordinary byte, so a request line
/// that ends in one is never taken for HTTP/1.x (its CRLF-terminated "line"
/// does not end in " HTTP/1.x").
///
/// Shaped for the verifier, which explores every branch of `step` for every
/// state it can be in: per byte only line ends are looked for; a header line
/// is named once, from its first NAME_WINDOW bytes (handed in by the
/// caller, which owns the buffer), and the Content-Length digits are
/// parsed as they pass, once the line's name is known at its colon. Every
/// field is a whole u64: the
/// verifier generalises 8-byte stack slots between loop iterations, while
/// narrower writes leave byte patterns that make each iteration a new state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderScan {
    /// Index just past the request line's CRLF; 0 until seen.
    pub request_line_end: u64,
    /// Index just past the empty line that ends the header block; 0 until seen.
    pub headers_end: u64,
    /// Header lines whose name is `traceparent` (any case), including the
    /// malformed forms with whitespace before the colon.
    pub traceparent_lines: u64,
    /// Index just past "traceparent:" when the first such line has exactly
    /// that form; 0 otherwise.
    pub traceparent_value: u64,
    pub content_length_lines: u64,
    /// The value of the Content-Length line(s).
    pub content_length: u64,
    /// Transfer-Encoding or Upgrade present, a malformed Content-Length
    /// line, or an obsolete line folding: where the body ends (or whether
    /// HTTP/1.x follows at all) cannot be told from the header block.
    pub framing_unknown: u64,
    /// Index of the current line's first byte.
    line_start: u64,
    /// VALUE_* while the current line is a Content-Length value.
    value: u64,
    prev: u64,
}

/// Where a Content-Length value is in its line.
const VALUE_NONE: u64 = 0;
const VALUE_LEADING_OWS: u64 = 1;
const VALUE_DIGITS: u64 = 2;
const VALUE_TRAILING_OWS: u64 = 3;
/// Position of the colon in "content-length:".
const CONTENT_LENGTH_COLON: u64 = 14;

impl HeaderScan {
    /// Feeds byte `b` at index `i` (indexes must be consecutive from 0).
    /// `window(at)` returns the NAME_WINDOW bytes from index `at` (as
    /// little-endian words; bytes past the data may be anything). Returns
    /// true once the header block is complete: later bytes are body.
    #[inline(always)]
    pub fn step(&mut self, i: u32, b: u8, window: impl Fn(u64) -> [u64; 3]) -> bool {
        let i = u64::from(i);
        let line_end = b == b'\n' && self.prev == u64::from(b'\r');
        self.prev = u64::from(b);
        if !line_end {
            if self.value != VALUE_NONE {
                self.content_length_value(b);
            } else if b == b':'
                && self.request_line_end != 0
                && i == self.line_start + CONTENT_LENGTH_COLON
                && is_content_length(&window(self.line_start))
            {
                self.content_length_lines += 1;
                self.value = VALUE_LEADING_OWS;
            }
            return false;
        }
        if self.request_line_end == 0 {
            self.request_line_end = i + 1;
            self.line_start = i + 1;
            return false;
        }
        if self.value != VALUE_NONE {
            // A Content-Length line ends: a number, or nothing trusted.
            if self.value == VALUE_LEADING_OWS {
                self.framing_unknown = 1;
            }
            self.value = VALUE_NONE;
            self.line_start = i + 1;
            return false;
        }
        // The line without its CRLF.
        let len = i - 1 - self.line_start;
        if len == 0 {
            self.headers_end = i + 1;
            return true;
        }
        let start = self.line_start;
        self.line_start = i + 1;
        self.header_line(start, len, window(start));
        false
    }

    /// Feeds the eight bytes at `i..i + 8` (`word`, little-endian) at once
    /// when nothing in them can change the scan but `prev`: no line ends in
    /// them, no Content-Length value is being read, and the colon a
    /// Content-Length name would put at a fixed place is not among them.
    /// Returns false, having changed nothing, when the bytes must be fed one
    /// by one with [`step`](Self::step). The common case (the middle of a
    /// request line or a header value) then costs one step per eight bytes.
    #[inline(always)]
    pub fn skip_word(&mut self, i: u32, word: u64) -> bool {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        let i = u64::from(i);
        if self.value != VALUE_NONE {
            return false;
        }
        let lf = word ^ (ONES * u64::from(b'\n'));
        if lf.wrapping_sub(ONES) & !lf & HIGHS != 0 {
            return false;
        }
        let colon = self.line_start + CONTENT_LENGTH_COLON;
        if self.request_line_end != 0 && colon >= i && colon < i + 8 {
            return false;
        }
        self.prev = word >> 56;
        true
    }

    /// A header line other than a Content-Length value ended.
    #[inline(always)]
    fn header_line(&mut self, start: u64, len: u64, w: [u64; 3]) {
        let first = w[0] as u8;
        if first == b' ' || first == b'\t' {
            // Obsolete line folding continues the previous header.
            self.framing_unknown = 1;
            return;
        }
        let l = [lower_word(w[0]), lower_word(w[1]), lower_word(w[2])];
        if len > 11 && l[0] == TRACEPARENT[0] && l[1] & 0xff_ffff == TRACEPARENT[1] && ends_name(byte_of(&w, 11)) {
            self.traceparent_lines += 1;
            if self.traceparent_lines == 1 && byte_of(&w, 11) == b':' {
                self.traceparent_value = start + 12;
            }
        } else if (len > 14 && is_content_length(&w))
            || (len > 17
                && l[0] == TRANSFER_ENCODING[0]
                && l[1] == TRANSFER_ENCODING[1]
                && l[2] & 0xff == TRANSFER_ENCODING[2]
                && ends_name(byte_of(&w, 17)))
            || (len > 7 && l[0] & 0xff_ffff_ffff_ffff == UPGRADE && ends_name(byte_of(&w, 7)))
        {
            // "Content-Length :" (whitespace before the colon; a proper one
            // was taken at its colon), chunked and other codings, upgrades.
            self.framing_unknown = 1;
        }
    }

    #[inline(always)]
    fn content_length_value(&mut self, b: u8) {
        if b == b'\r' {
            return;
        }
        let ows = b == b' ' || b == b'\t';
        if b.is_ascii_digit() && self.value <= VALUE_DIGITS {
            if self.value != VALUE_DIGITS {
                // A second Content-Length line starts its own number.
                self.content_length = 0;
            }
            self.value = VALUE_DIGITS;
            self.content_length = self.content_length * 10 + u64::from(b - b'0');
            if self.content_length > MAX_CONTENT_LENGTH {
                self.framing_unknown = 1;
                self.content_length = MAX_CONTENT_LENGTH;
            }
        } else if ows && self.value == VALUE_LEADING_OWS {
        } else if ows {
            self.value = VALUE_TRAILING_OWS;
        } else {
            self.framing_unknown = 1;
            self.value = VALUE_TRAILING_OWS;
        }
    }

    /// Bytes of the request (header block and body) when the scan saw its
    /// whole header block and that block says where the body ends: a single
    /// plain Content-Length, or none (no body). None otherwise.
    #[inline(always)]
    pub fn request_len(&self) -> Option<u64> {
        if self.headers_end == 0 || self.framing_unknown != 0 || self.content_length_lines > 1 {
            return None;
        }
        Some(self.headers_end + self.content_length)
    }
}

/// The (raw) first bytes of a line are "content-length:" in any case.
#[inline(always)]
fn is_content_length(w: &[u64; 3]) -> bool {
    lower_word(w[0]) == CONTENT_LENGTH[0]
        && lower_word(w[1]) & 0xffff_ffff_ffff == CONTENT_LENGTH[1]
        && ends_name(byte_of(w, 14))
}

/// Trace identity read from a valid incoming `traceparent`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The W3C trace-flags byte.
    pub flags: u8,
}

impl Incoming {
    /// The W3C `sampled` trace flag.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Most spaces/tabs accepted between "traceparent:" and the value.
pub const MAX_OWS: usize = 8;
/// Bytes handed to `parse_traceparent`: "00-" 32 "-" 16 "-" 2 = 55, then
/// up to 8 bytes of optional whitespace and the CR that ends the line.
pub const VALUE_WINDOW: usize = 64;

/// Leading spaces/tabs of a header value (at most MAX_OWS; more is refused
/// by `parse_traceparent` because the value then does not fit its window).
#[inline(always)]
pub fn ows_len(head: &[u8; MAX_OWS]) -> u32 {
    let mut n = 0;
    let mut i = 0;
    while i < MAX_OWS {
        if head[i] != b' ' && head[i] != b'\t' {
            break;
        }
        n += 1;
        i += 1;
    }
    n
}

#[inline(always)]
fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Parses a version-00 traceparent value. `v` starts at the value's first
/// byte; `avail` is how many bytes of `v` were really received. The value
/// must be exactly `00-<32 lowercase hex>-<16 lowercase hex>-<2 lowercase
/// hex>`, followed by optional whitespace and the line's CR; ids must not be
/// all zero. Anything else is refused as a whole.
#[inline(always)]
pub fn parse_traceparent(v: &[u8; VALUE_WINDOW], avail: u32) -> Option<Incoming> {
    if v[0] != b'0' || v[1] != b'0' || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    // The line must end within what was received: whitespace, then CR.
    let mut ended = false;
    let mut k = 55;
    while k < VALUE_WINDOW {
        if k as u32 >= avail {
            return None;
        }
        let c = v[k];
        if c == b'\r' {
            ended = true;
            break;
        }
        if c != b' ' && c != b'\t' {
            return None;
        }
        k += 1;
    }
    if !ended {
        return None;
    }
    let mut out = Incoming::default();
    let mut any = 0u8;
    let mut i = 0;
    while i < 16 {
        let b = (hex_val(v[3 + 2 * i])? << 4) | hex_val(v[4 + 2 * i])?;
        out.trace_id[i] = b;
        any |= b;
        i += 1;
    }
    if any == 0 {
        return None;
    }
    any = 0;
    i = 0;
    while i < 8 {
        let b = (hex_val(v[36 + 2 * i])? << 4) | hex_val(v[37 + 2 * i])?;
        out.span_id[i] = b;
        any |= b;
        i += 1;
    }
    if any == 0 {
        return None;
    }
    out.flags = (hex_val(v[53])? << 4) | hex_val(v[54])?;
    Some(out)
}

/// Parses a whole `traceparent` header value as userspace holds it (spaces
/// and tabs around it allowed, no line end): the rule of
/// [`parse_traceparent`], applied to the value as if its line ended there.
pub fn parse_traceparent_value(value: &[u8]) -> Option<Incoming> {
    let start = value.iter().position(|c| !matches!(c, b' ' | b'\t')).unwrap_or(value.len());
    let end = value.iter().rposition(|c| !matches!(c, b' ' | b'\t')).map_or(start, |e| e + 1);
    let v = &value[start..end.max(start)];
    // A valid value is exactly this long; the window's CR ends its line.
    const LEN: usize = 55;
    if v.len() != LEN {
        return None;
    }
    let mut window = [0u8; VALUE_WINDOW];
    window[..LEN].copy_from_slice(v);
    window[LEN] = b'\r';
    parse_traceparent(&window, LEN as u32 + 1)
}

/// Length of the inserted header line (waggle_common::TRACEPARENT_LINE_LEN).
pub const LINE_LEN: usize = 70;

#[inline(always)]
fn hex_digit(n: u8) -> u8 {
    if n < 10 {
        b'0' + n
    } else {
        b'a' + (n - 10)
    }
}

/// The two lowercase hex digits of `b`, high nibble first: how W3C ids are
/// spelled.
#[inline(always)]
pub fn hex_byte(b: u8) -> [u8; 2] {
    [hex_digit(b >> 4), hex_digit(b & 0xf)]
}

/// `traceparent: 00-<trace>-<span>-<01|00>\r\n`.
#[inline(always)]
pub fn traceparent_line(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> [u8; LINE_LEN] {
    let mut out = [0u8; LINE_LEN];
    let prefix = b"traceparent: 00-";
    let mut i = 0;
    while i < prefix.len() {
        out[i] = prefix[i];
        i += 1;
    }
    i = 0;
    while i < 16 {
        out[16 + 2 * i] = hex_digit(trace_id[i] >> 4);
        out[17 + 2 * i] = hex_digit(trace_id[i] & 0xf);
        i += 1;
    }
    out[48] = b'-';
    i = 0;
    while i < 8 {
        out[49 + 2 * i] = hex_digit(span_id[i] >> 4);
        out[50 + 2 * i] = hex_digit(span_id[i] & 0xf);
        i += 1;
    }
    out[65] = b'-';
    out[66] = b'0';
    out[67] = if sampled { b'1' } else { b'0' };
    out[68] = b'\r';
    out[69] = b'\n';
    out
}

#[cfg(test)]
mod tests;
