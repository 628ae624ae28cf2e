//! HTTP/1.x recognition for trace-context propagation: which bytes start a
//! request, where its request line ends, whether its header block carries a
//! `traceparent`, and the W3C `traceparent` wire format.
//!
//! Pure functions over bytes, no aya: the kernel programs call them with
//! bytes they copied into maps or onto the stack, and the host tests include
//! this file (`agent/tests/propagation_live.rs` uses `#[path]`) so every rule
//! that decides whether application bytes get modified is unit-tested. The
//! shapes are chosen for the verifier: fixed-size arrays, constant indexes,
//! one byte per step in the header scan (driven by `bpf_loop`).

/// Bytes of a send/recv looked at to recognise a request start: the longest
/// method plus its space ("OPTIONS ", "CONNECT ") is 8.
pub const PEEK: usize = 8;

/// Methods that start an HTTP/1.x request, followed by their space, as
/// little-endian words with their lengths.
const METHODS: [(u64, u32); 9] = [
    (word(b"GET "), 4),
    (word(b"PUT "), 4),
    (word(b"POST "), 5),
    (word(b"HEAD "), 5),
    (word(b"PATCH "), 6),
    (word(b"TRACE "), 6),
    (word(b"DELETE "), 7),
    (word(b"OPTIONS "), 8),
    (word(b"CONNECT "), 8),
];

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
    u64::from_le_bytes([
        head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7],
    ]) & low_bytes(7)
        == HTTP1
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

/// "traceparent" lowercase, as two little-endian words (8 + 3 bytes).
const NAME_LO: u64 = word(b"tracepar");
const NAME_HI: u64 = word(b"ent");
const NAME_LEN: u8 = 11;
/// `HeaderScan::matched` once the current line cannot be a traceparent line.
const NO_MATCH: u8 = 0xff;

#[inline(always)]
fn name_byte(i: u8) -> u8 {
    if i < 8 {
        (NAME_LO >> (8 * u32::from(i))) as u8
    } else {
        (NAME_HI >> (8 * u32::from(i - 8))) as u8
    }
}

/// One pass over the start of a request, one byte per `step`.
///
/// Lines end at CRLF only; a bare LF is an ordinary byte, so a request line
/// that ends in one is never taken for HTTP/1.x (its CRLF-terminated "line"
/// does not end in " HTTP/1.x").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderScan {
    /// Index just past the request line's CRLF; 0 until seen.
    pub request_line_end: u32,
    /// Index just past the empty line that ends the header block; 0 until seen.
    pub headers_end: u32,
    /// Header lines whose name is `traceparent` (any case), including the
    /// malformed forms with whitespace before the colon.
    pub traceparent_lines: u32,
    /// Index just past "traceparent:" when the first such line has exactly
    /// that form; 0 otherwise.
    pub traceparent_value: u32,
    /// Bytes of the current line so far (its CR included).
    line_len: u32,
    /// Bytes of "traceparent" matched at the start of the current line, or
    /// NO_MATCH.
    matched: u8,
    prev: u8,
    _pad: [u8; 2],
}

impl HeaderScan {
    /// Feeds byte `b` at index `i` (indexes must be consecutive from 0).
    /// Returns true once the header block is complete: later bytes are body.
    #[inline(always)]
    pub fn step(&mut self, i: u32, b: u8) -> bool {
        if b == b'\n' && self.prev == b'\r' {
            if self.request_line_end == 0 {
                self.request_line_end = i + 1;
            } else if self.line_len == 1 {
                self.headers_end = i + 1;
                self.prev = b;
                return true;
            }
            self.line_len = 0;
            self.matched = 0;
            self.prev = b;
            return false;
        }
        // The request line itself is never a header.
        if self.request_line_end != 0
            && self.matched != NO_MATCH
            && u32::from(self.matched) == self.line_len
        {
            if self.matched < NAME_LEN {
                let lower = if b.is_ascii_uppercase() { b | 0x20 } else { b };
                self.matched = if lower == name_byte(self.matched) {
                    self.matched + 1
                } else {
                    NO_MATCH
                };
            } else {
                if b == b':' || b == b' ' || b == b'\t' {
                    self.traceparent_lines += 1;
                    if self.traceparent_lines == 1 && b == b':' {
                        self.traceparent_value = i + 1;
                    }
                }
                // "traceparent-x:" is another header.
                self.matched = NO_MATCH;
            }
        }
        self.line_len += 1;
        self.prev = b;
        false
    }

    /// The scanned bytes stop inside a header name that may still turn out
    /// to be `traceparent` (the rest arrives in a later write).
    #[inline(always)]
    pub fn name_cut_off(&self) -> bool {
        self.headers_end == 0
            && self.request_line_end != 0
            && self.matched != NO_MATCH
            && self.matched != 0
    }
}

/// Trace identity read from a valid incoming `traceparent`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The W3C trace-flags byte.
    pub flags: u8,
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
mod tests {
    use super::*;
    extern crate std;
    use std::{borrow::ToOwned, format, vec::Vec};

    fn head(s: &[u8]) -> (u64, u64) {
        let mut b = [0u8; 8];
        let n = s.len().min(8);
        b[..n].copy_from_slice(&s[..n]);
        (u64::from_le_bytes(b), s.len() as u64)
    }

    fn starts(s: &[u8]) -> bool {
        let (h, n) = head(s);
        is_request_start(h, n)
    }

    #[test]
    fn recognises_request_starts_only() {
        for m in [
            "GET", "PUT", "POST", "HEAD", "PATCH", "TRACE", "DELETE", "OPTIONS", "CONNECT",
        ] {
            assert!(starts(format!("{m} / HTTP/1.1\r\n").as_bytes()), "{m}");
            assert!(!starts(m.as_bytes()), "{m} without its space");
            assert!(!starts(format!("{m}x / HTTP/1.1").as_bytes()), "{m}x");
        }
        assert!(!starts(b"get / HTTP/1.1\r\n"));
        assert!(!starts(b"\x16\x03\x01\x02\x00\x01\x00\x01"));
        assert!(!starts(b"PRI * HTTP/2.0\r\n"));
        assert!(!starts(b"HTTP/1.1 200 OK\r\n"));
        assert!(!starts(b""));
        assert!(!starts(b"GE"));
        assert!(!starts(b" GET / HTTP/1.1"));
    }

    #[test]
    fn interim_responses_are_1xx_only() {
        let h = |s: &[u8]| {
            let mut b = [0u8; 16];
            let n = s.len().min(16);
            b[..n].copy_from_slice(&s[..n]);
            (b, s.len() as u64)
        };
        let (b, n) = h(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(is_interim_response(&b, n));
        let (b, n) = h(b"HTTP/1.1 103 Early Hints\r\n");
        assert!(is_interim_response(&b, n));
        let (b, n) = h(b"HTTP/1.1 200 OK\r\n");
        assert!(!is_interim_response(&b, n) && starts_http1(&b));
        let (b, n) = h(b"HTTP/1.0 101");
        assert!(is_interim_response(&b, n));
        let (b, n) = h(b"HTTP/1.1 1");
        assert!(is_interim_response(&b, n));
        let (b, n) = h(b"HTTP/1.1 ");
        assert!(!is_interim_response(&b, n));
        let (b, _) = h(b"HTTP/2 200");
        assert!(!starts_http1(&b));
    }

    fn scan(s: &[u8]) -> HeaderScan {
        let mut sc = HeaderScan::default();
        for (i, b) in s.iter().enumerate() {
            if sc.step(i as u32, *b) {
                break;
            }
        }
        sc
    }

    fn http1_line(s: &[u8], sc: &HeaderScan) -> bool {
        let end = sc.request_line_end as usize;
        if end < 12 {
            return false;
        }
        let tail: [u8; 10] = s[end - 11..end - 1].try_into().unwrap();
        request_line_is_http1(&tail)
    }

    #[test]
    fn finds_request_line_and_header_end() {
        let req = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\ntraceparent: y\r\n\r\n";
        let sc = scan(req);
        assert_eq!(sc.request_line_end, 21);
        assert_eq!(&req[..21], b"GET /a?b=c HTTP/1.1\r\n");
        assert!(http1_line(req, &sc));
        assert_eq!(sc.headers_end, 32);
        // The body's "traceparent" is not a header.
        assert_eq!(sc.traceparent_lines, 0);
        assert!(!sc.name_cut_off());

        let sc = scan(b"GET key\r\n");
        assert_eq!(sc.request_line_end, 9);
        assert!(!http1_line(b"GET key\r\n", &sc));
        let bare = b"GET / HTTP/1.1\nHost: x\r\n\r\n";
        let sc = scan(bare);
        assert_eq!(sc.request_line_end, 24);
        assert!(
            !http1_line(bare, &sc),
            "bare LF must not pass as a request line end"
        );
        assert_eq!(scan(b"GET / HTTP/1.1").request_line_end, 0);
        assert_eq!(scan(b"GET / HTTP/1.1\r").request_line_end, 0);
    }

    #[test]
    fn detects_traceparent_header_any_case() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\nTraceParent:  00-abc\r\n\r\n";
        let sc = scan(req);
        assert_eq!(sc.traceparent_lines, 1);
        assert_eq!(&req[sc.traceparent_value as usize..][..3], b"  0");
        let sc = scan(b"GET / HTTP/1.1\r\ntraceparent : x\r\n\r\n");
        assert_eq!((sc.traceparent_lines, sc.traceparent_value), (1, 0));
        let sc = scan(b"GET / HTTP/1.1\r\ntraceparent-x: y\r\nx-traceparent: z\r\n\r\n");
        assert_eq!(sc.traceparent_lines, 0);
        let sc = scan(b"GET / HTTP/1.1\r\ntraceparent: a\r\ntraceparent: b\r\n\r\n");
        assert_eq!(sc.traceparent_lines, 2);
        // The request line is not a header even if it looks like one.
        let sc = scan(b"traceparent: x\r\n\r\n");
        assert_eq!(sc.traceparent_lines, 0);
        // A header block cut inside a name that may become traceparent.
        assert!(scan(b"GET / HTTP/1.1\r\nHost: x\r\ntrace").name_cut_off());
        assert!(scan(b"GET / HTTP/1.1\r\nHost: x\r\ntraceparent").name_cut_off());
        assert!(!scan(b"GET / HTTP/1.1\r\nHost: x\r\n").name_cut_off());
        assert!(!scan(b"GET / HTTP/1.1\r\nHost: x\r\nAccept").name_cut_off());
    }

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn parse(after_colon: &str) -> Option<Incoming> {
        let bytes = after_colon.as_bytes();
        let mut ows = [0u8; MAX_OWS];
        let n = bytes.len().min(MAX_OWS);
        ows[..n].copy_from_slice(&bytes[..n]);
        let skip = ows_len(&ows) as usize;
        let rest = &bytes[skip.min(bytes.len())..];
        let mut v = [0u8; VALUE_WINDOW];
        let n = rest.len().min(VALUE_WINDOW);
        v[..n].copy_from_slice(&rest[..n]);
        parse_traceparent(&v, rest.len() as u32)
    }

    #[test]
    fn parses_valid_traceparent() {
        let got = parse(&format!(" {VALID}\r\n")).unwrap();
        assert_eq!(got.trace_id[0], 0x0a);
        assert_eq!(got.trace_id[15], 0x9c);
        assert_eq!(
            got.span_id,
            [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]
        );
        assert_eq!(got.flags, 1);
        let got = parse(&format!("{}\r\n", VALID.replace("-01", "-00"))).unwrap();
        assert_eq!(got.flags, 0);
        assert!(parse(&format!("\t {VALID}  \r\n")).is_some());
    }

    #[test]
    fn refuses_malformed_traceparent_as_a_whole() {
        let bad = [
            VALID.replacen("00-", "01-", 1),
            VALID.to_uppercase(),
            VALID.replace("0af7", "0AF7"),
            VALID.replace("0af7", "0ag7"),
            VALID.replace("-b7ad", "-b7a"),
            format!("{VALID}0"),
            format!("{VALID};x"),
            VALID.replace("b7ad6b7169203331", "0000000000000000"),
            VALID.replace(
                "0af7651916cd43dd8448eb211c80319c",
                "00000000000000000000000000000000",
            ),
            VALID[..54].to_owned(),
            VALID.replace('-', "_"),
        ];
        for b in &bad {
            assert!(parse(&format!(" {b}\r\n")).is_none(), "{b}");
        }
        // Cut off before the end of its line: not trusted.
        assert!(parse(&format!(" {VALID}")).is_none());
        assert!(parse(&format!(" {VALID}   ")).is_none());
        // Too much leading whitespace for the window.
        assert!(parse(&format!("{}{VALID}\r\n", " ".repeat(9))).is_none());
    }

    #[test]
    fn builds_the_inserted_line() {
        let trace: [u8; 16] = core::array::from_fn(|i| (i as u8) * 17);
        let span: [u8; 8] = [0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 0xff];
        let line = traceparent_line(&trace, &span, true);
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "traceparent: 00-00112233445566778899aabbccddeeff-deadbeef000102ff-01\r\n"
        );
        let line = traceparent_line(&trace, &span, false);
        assert!(line.ends_with(b"-00\r\n"));
        // What we insert parses back to the same ids.
        let v: Vec<u8> = line[13..].to_vec();
        let mut w = [0u8; VALUE_WINDOW];
        w[..v.len()].copy_from_slice(&v);
        let back = parse_traceparent(&w, v.len() as u32).unwrap();
        assert_eq!((back.trace_id, back.span_id, back.flags), (trace, span, 0));
    }
}
