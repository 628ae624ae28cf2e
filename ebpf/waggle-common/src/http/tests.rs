//! Host tests of the HTTP rules the kernel applies to application bytes.
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
    for m in ["GET", "PUT", "POST", "HEAD", "PATCH", "TRACE", "DELETE", "OPTIONS", "CONNECT"] {
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
    assert!(is_connect(head(b"CONNECT a:443 HTTP/1.1").0));
    assert!(!is_connect(head(b"GET / HTTP/1.1").0));
}

#[test]
fn method_words_are_the_methods_and_their_space() {
    let literal = [
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
    assert_eq!(METHODS, literal);
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

fn window<const N: usize>(s: &[u8], at: u64) -> [u8; N] {
    let mut out = [0u8; N];
    let from = (at as usize).min(s.len());
    let n = (s.len() - from).min(N);
    out[..n].copy_from_slice(&s[from..from + n]);
    out
}

pub(super) fn words(s: &[u8], at: u64) -> [u64; 3] {
    let b: [u8; NAME_WINDOW] = window(s, at);
    core::array::from_fn(|k| u64::from_le_bytes(b[8 * k..8 * k + 8].try_into().unwrap()))
}

fn scan(s: &[u8]) -> HeaderScan {
    let mut sc = HeaderScan::default();
    for (i, b) in s.iter().enumerate() {
        if sc.step(i as u32, *b, |at| words(s, at)) {
            break;
        }
    }
    sc
}

/// The kernel's way: eight bytes at a time where `skip_word` allows.
fn scan_by_words(s: &[u8]) -> HeaderScan {
    let mut sc = HeaderScan::default();
    for base in (0..s.len()).step_by(8) {
        if base + 8 <= s.len() {
            let word = u64::from_le_bytes(s[base..base + 8].try_into().unwrap());
            if sc.skip_word(base as u32, word) {
                continue;
            }
        }
        for (i, b) in s.iter().enumerate().skip(base).take(8) {
            if sc.step(i as u32, *b, |at| words(s, at)) {
                return sc;
            }
        }
    }
    sc
}

#[test]
fn word_steps_scan_exactly_like_byte_steps() {
    let mut cases: std::vec::Vec<std::vec::Vec<u8>> = std::vec![
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        b"POST /x HTTP/1.1\r\nContent-Length: 12\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\nbody".to_vec(),
        b"GET /a HTTP/1.1\r\ncontent-length : 5\r\nTransfer-Encoding: chunked\r\n folded\r\n\r\n".to_vec(),
        b"PUT /u HTTP/1.0\r\nContent-Length:  007 \r\nContent-Length: 7\r\nUpgrade: h2c\r\n\r\n".to_vec(),
    ];
    // Random header blocks built from the pieces the scan reacts to, at
    // every alignment against the eight-byte words.
    let pieces: [&[u8]; 14] = [
        b"Content-Length: 42\r\n",
        b"content-length:7\r\n",
        b"Content-Length : 1\r\n",
        b"Content-Length: 1 2\r\n",
        b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n",
        b"TraceParent :x\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Upgrade: websocket\r\n",
        b" folded\r\n",
        b"Host: example.com\r\n",
        b"X-Long-Header-Name-That-Spans-Words: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        b"\r\n",
        b"\n",
        b"\r",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let mut s = std::vec::Vec::from(&b"GET /"[..]);
        s.extend(std::iter::repeat_n(b'p', (next() % 17) as usize));
        s.extend_from_slice(b" HTTP/1.1\r\n");
        for _ in 0..next() % 8 {
            s.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
        }
        if next() % 4 != 0 {
            s.extend_from_slice(b"\r\nbody GET / HTTP/1.1\r\n");
        }
        cases.push(s);
    }
    for s in &cases {
        for len in 0..=s.len() {
            let prefix = &s[..len];
            assert_eq!(scan_by_words(prefix), scan(prefix), "{:?}", std::string::String::from_utf8_lossy(prefix));
        }
    }
}

fn request_len(s: &[u8]) -> Option<u64> {
    scan(s).request_len()
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
    assert_eq!(request_len(req), Some(32));

    let sc = scan(b"GET key\r\n");
    assert_eq!(sc.request_line_end, 9);
    assert!(!http1_line(b"GET key\r\n", &sc));
    let bare = b"GET / HTTP/1.1\nHost: x\r\n\r\n";
    let sc = scan(bare);
    assert_eq!(sc.request_line_end, 24);
    assert!(!http1_line(bare, &sc), "bare LF must not pass as a request line end");
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
    // A header block cut inside a name: not complete, so not usable.
    let cut = b"GET / HTTP/1.1\r\nHost: x\r\ntrace";
    assert_eq!((scan(cut).headers_end, request_len(cut)), (0, None));
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
    assert_eq!(got.span_id, [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]);
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
        VALID.replace("0af7651916cd43dd8448eb211c80319c", "00000000000000000000000000000000"),
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
fn parses_a_whole_header_value_by_the_same_rule() {
    let got = parse_traceparent_value(VALID.as_bytes()).unwrap();
    assert_eq!(Some(got), parse(&format!("{VALID}\r\n")));
    assert!(got.sampled());
    let unsampled = parse_traceparent_value(VALID.replace("-01", "-00").as_bytes()).unwrap();
    assert!(!unsampled.sampled());
    // Whitespace around the value, any amount of it.
    let padded = format!("{}{VALID}\t ", " ".repeat(20));
    assert_eq!(parse_traceparent_value(padded.as_bytes()), Some(got));
    let bad = [
        VALID.replacen("00-", "01-", 1),
        VALID.to_uppercase(),
        VALID.replace("0af7", "0ag7"),
        VALID.replace("-b7ad", "-b7a"),
        format!("{VALID}0"),
        format!("{VALID};x"),
        format!("{VALID} x"),
        format!("{VALID}\r"),
        VALID.replace("b7ad6b7169203331", "0000000000000000"),
        VALID.replace("0af7651916cd43dd8448eb211c80319c", "00000000000000000000000000000000"),
        VALID[..54].to_owned(),
        VALID.replace('-', "_"),
        " ".to_owned(),
        "".to_owned(),
    ];
    for b in &bad {
        assert_eq!(parse_traceparent_value(b.as_bytes()), None, "{b}");
    }
}

#[test]
fn hex_bytes_are_two_lowercase_digits() {
    let all: Vec<[u8; 2]> = [0x00, 0x09, 0x0a, 0x5f, 0xa0, 0xff].iter().map(|b| hex_byte(*b)).collect();
    assert_eq!(all, [*b"00", *b"09", *b"0a", *b"5f", *b"a0", *b"ff"]);
    for b in 0..=255u8 {
        let [h, l] = hex_byte(b);
        assert_eq!((hex_val(h).unwrap() << 4) | hex_val(l).unwrap(), b);
    }
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

#[test]
fn lowercases_ascii_letters_only() {
    let w = u64::from_le_bytes(*b"AZaz@[`{");
    assert_eq!(lower_word(w).to_le_bytes(), *b"azaz@[`{");
    let w = u64::from_le_bytes([0xc1, 0xda, b'Q', 0x80, 0xff, b'-', b'0', b'M']);
    assert_eq!(lower_word(w).to_le_bytes(), [0xc1, 0xda, b'q', 0x80, 0xff, b'-', b'0', b'm']);
}

#[test]
fn request_length_from_the_header_block() {
    let req = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length:  12 \r\n\r\nhello world!";
    assert_eq!(request_len(req), Some(req.len() as u64));
    assert_eq!(request_len(b"GET / HTTP/1.1\r\ncontent-LENGTH: 0\r\n\r\n"), Some(37));
    // Unknown framing: chunked, upgrades, malformed or repeated lengths.
    for bad in [
        &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length : 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nX-A: b\r\n c\r\nContent-Length: 1\r\n\r\n",
    ] {
        assert_eq!(request_len(bad), None, "{:?}", core::str::from_utf8(bad));
    }
    // Look-alike names are other headers.
    let alike = b"GET / HTTP/1.1\r\nX-Content-Length: 5\r\nContent-Lengths: 3\r\nUpgraded: 1\r\n\r\n";
    assert_eq!(request_len(alike), Some(72));
    // Incomplete header block: unknown.
    assert_eq!(request_len(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n"), None);
    // Names in any case, values with whitespace around.
    let ok = b"PUT /x HTTP/1.1\r\nCONTENT-LENGTH:\t7\t\r\n\r\n1234567";
    assert_eq!(request_len(ok), Some(ok.len() as u64));
}
