//! Host tests of the response rules: which sends get a trace header line.
use super::*;
extern crate std;
use std::{string::String, vec::Vec};

use crate::http::{parse_traceparent_value, tests::words};

fn head16(s: &[u8]) -> ([u8; 16], u64) {
    let mut b = [0u8; 16];
    let n = s.len().min(16);
    b[..n].copy_from_slice(&s[..n]);
    (b, s.len() as u64)
}

fn status(s: &[u8]) -> Option<u16> {
    let (b, n) = head16(s);
    status_code(&b, n)
}

fn scan(s: &[u8]) -> ResponseScan {
    let mut sc = ResponseScan::default();
    for (i, b) in s.iter().enumerate() {
        if sc.step(i as u32, *b, |at| words(s, at)) {
            break;
        }
    }
    sc
}

/// The kernel's way: eight bytes at a time where `skip_word` allows.
fn scan_by_words(s: &[u8]) -> ResponseScan {
    let mut sc = ResponseScan::default();
    let mut i = 0;
    while i < s.len() {
        if i + 8 <= s.len() && sc.skip_word(i as u32, u64::from_le_bytes(s[i..i + 8].try_into().unwrap())) {
            i += 8;
            continue;
        }
        if sc.step(i as u32, s[i], |at| words(s, at)) {
            break;
        }
        i += 1;
    }
    sc
}

/// Where the response (the status line and header block, then the body)
/// ends, as the kernel would count it for a request of `method`.
fn len_of(s: &[u8], head_request: bool) -> Option<u64> {
    response_len(status(s)?, head_request, &scan(s).head)
}

#[test]
fn status_lines_of_http1_only() {
    assert_eq!(status(b"HTTP/1.1 200 OK\r\n"), Some(200));
    assert_eq!(status(b"HTTP/1.0 404 Not Found\r\n"), Some(404));
    assert_eq!(status(b"HTTP/1.1 204\r\n\r\n"), Some(204));
    assert_eq!(status(b"HTTP/1.1 101 Switching Protocols\r\n"), Some(101));
    assert_eq!(status(b"HTTP/1.1 599 x\r\n"), Some(599));
    for not in [
        &b"HTTP/2 200\r\n\r\n\r\n"[..],
        b"HTTP/1.1 200",
        b"HTTP/1.1 600 x\r\n\r\n",
        b"HTTP/1.1 20x OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.x 200 OK\r\n\r\n",
        b"http/1.1 200 OK\r\n\r\n",
        b"\x16\x03\x03\x00\x10\x02\x00\x00\x0c\x03\x03\x00\x00\x00\x00\x00",
        b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64\x00",
        b"GET / HTTP/1.1\r\n\r\n",
        b"{\"HTTP/1.1 200 OK\r\n",
    ] {
        assert_eq!(status(not), None, "{}", String::from_utf8_lossy(not));
    }
}

#[test]
fn names_the_trace_headers_in_any_case_only() {
    for (block, lines) in [
        (&b"HTTP/1.1 200 OK\r\ntraceresponse: x\r\n\r\n"[..], 1),
        (b"HTTP/1.1 200 OK\r\nX-Trace-Id: abc\r\n\r\n", 1),
        (b"HTTP/1.1 200 OK\r\nx-trace-id:abc\r\nTRACERESPONSE : y\r\n\r\n", 2),
        (b"HTTP/1.1 200 OK\r\nX-TRACE-ID\t: abc\r\n\r\n", 1),
        (b"HTTP/1.1 200 OK\r\nX-Trace-Ids: abc\r\ntraceresponses: y\r\n\r\n", 0),
        (b"HTTP/1.1 200 OK\r\nX-Trace: abc\r\ntraceparent: y\r\nX-Trace-\r\nId: z\r\n\r\n", 0),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nX-Trace-Id: in body\r\n", 0),
        (b"HTTP/1.1 200 X-Trace-Id: in status\r\n\r\n", 0),
    ] {
        let sc = scan(block);
        assert_eq!(sc.trace_lines, lines, "{}", String::from_utf8_lossy(block));
        assert_eq!(scan_by_words(block), sc, "{}", String::from_utf8_lossy(block));
    }
}

#[test]
fn word_steps_scan_exactly_like_byte_steps() {
    let pieces: [&[u8]; 9] = [
        b"Content-Length: 42\r\n",
        b"X-Trace-Id: 0af7651916cd43dd8448eb211c80319c\r\n",
        b"traceresponse: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Server: SimpleHTTP/0.6 Python/3.11.2\r\n",
        b"x-trace-idx: no\r\n",
        b"Date: Thu, 03 Dec 2026 17:00:00 GMT\r\n",
        b"A: b\r\n",
        b"Content-Type: text/html; charset=utf-8\r\n",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2000 {
        let mut block: Vec<u8> = b"HTTP/1.1 200 OK\r\n".to_vec();
        // Status lines of every length shift the rest against the words.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        block.extend(std::iter::repeat_n(b'k', (seed % 9) as usize));
        block.extend_from_slice(b"\r\n");
        for k in 0..(seed >> 8) % 6 {
            block.extend_from_slice(pieces[((seed >> (12 + 4 * k)) % pieces.len() as u64) as usize]);
        }
        block.extend_from_slice(b"\r\nbody");
        assert_eq!(scan_by_words(&block), scan(&block), "{}", String::from_utf8_lossy(&block));
    }
}

#[test]
fn response_ends_are_counted_or_unknown() {
    let fixed = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(len_of(fixed, false), Some(fixed.len() as u64));
    assert_eq!(len_of(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false), Some(38));
    // Answers without a body, whatever their framing headers say.
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    assert_eq!(len_of(head, true), Some(head.len() as u64));
    for no_body in [
        &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let head_request = no_body.starts_with(b"HTTP/1.1 200");
        assert_eq!(len_of(no_body, head_request), Some(no_body.len() as u64), "{}", String::from_utf8_lossy(no_body));
    }
    for unknown in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        // Close-delimited: HTTP/1.0 servers (python's http.server) do this.
        b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nbody until close",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
    ] {
        assert_eq!(len_of(unknown, false), None, "{}", String::from_utf8_lossy(unknown));
    }
}

#[test]
fn boundaries_follow_what_sends_returned() {
    let mut b = ResponseBoundary::default();
    assert!(b.at_boundary());
    // A 100-byte response sent in three partial sends.
    b.sent(Some(Some(100)), 40);
    assert!(!b.at_boundary());
    b.sent(None, 50);
    assert_eq!(b.remaining, 10);
    b.sent(None, 10);
    assert!(b.at_boundary());
    // A response of unknown length ends boundaries for good.
    b.sent(Some(None), 30);
    b.sent(None, 30);
    b.sent(Some(Some(5)), 5);
    assert!(!b.at_boundary() && b.lost);
    // Sending past the counted end (a pipelined answer in the same send).
    let mut b = ResponseBoundary::default();
    b.sent(Some(Some(10)), 10);
    b.sent(None, 1);
    assert!(b.lost);
}

#[test]
fn decides_only_final_responses_without_their_own_id() {
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    assert_eq!(decide(200, &scan(ok), true), Ok(()));
    assert_eq!(decide(200, &scan(ok), false), Err(skip::NO_SERVER_SPAN));
    assert_eq!(decide(100, &scan(b"HTTP/1.1 100 Continue\r\n\r\n"), true), Err(skip::INTERIM));
    assert_eq!(decide(101, &scan(b"HTTP/1.1 101 Switching\r\n\r\n"), true), Err(skip::INTERIM));
    let own = b"HTTP/1.1 200 OK\r\nx-trace-id: mine\r\n\r\n";
    assert_eq!(decide(200, &scan(own), true), Err(skip::HAS_TRACE_HEADER));
    let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n";
    assert_eq!(decide(200, &scan(cut), true), Err(skip::HEADERS_INCOMPLETE));
}

#[test]
fn lines_carry_the_ids() {
    let trace = [0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c];
    let span = [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31];
    let line = traceresponse_line(&trace, &span, true);
    assert_eq!(&line[..], b"traceresponse: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n");
    let value = &line[b"traceresponse:".len()..TRACERESPONSE_LINE_LEN - 2];
    let parsed = parse_traceparent_value(value).unwrap();
    assert_eq!((parsed.trace_id, parsed.span_id, parsed.sampled()), (trace, span, true));
    assert!(traceresponse_line(&trace, &span, false).ends_with(b"-00\r\n"));
    assert_eq!(&x_trace_id_line(&trace)[..], b"X-Trace-Id: 0af7651916cd43dd8448eb211c80319c\r\n");
    // Lines the scan recognises as already there: never inserted twice.
    for line in [&traceresponse_line(&trace, &span, true)[..], &x_trace_id_line(&trace)[..]] {
        let block = [&b"HTTP/1.1 200 OK\r\n"[..], line, b"\r\n"].concat();
        assert_eq!(scan(&block).trace_lines, 1, "{:?}", String::from_utf8_lossy(&block));
    }
}
