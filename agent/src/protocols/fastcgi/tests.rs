//! FastCGI parser tests on traffic recorded between nginx 1.22 and php-fpm
//! 8.2 (`../testdata/fastcgi`, see its README entry).
use waggle_common::{Direction, Role};

use super::{fuzz_script, FastCgiDetector, FastCgiParser};
use crate::model::{AttrValue, ParsedSpan, SpanKind, SpanStatus};
use crate::protocols::sql::replay::{
    assert_absent, attr_int, attr_str, chunk, fuzz_captures_and_mutations, garbage_never_panics, records, replay,
};
use crate::protocols::{Chunk, Confidence, Feed, ParserConfig, ProtocolDetector, ProtocolParser};

const GET: &[u8] = include_bytes!("../testdata/fastcgi/get.bin");
const TRACEPARENT: &[u8] = include_bytes!("../testdata/fastcgi/traceparent.bin");
const NOT_FOUND: &[u8] = include_bytes!("../testdata/fastcgi/not_found.bin");
const STATUS_503: &[u8] = include_bytes!("../testdata/fastcgi/status_503.bin");
const POST: &[u8] = include_bytes!("../testdata/fastcgi/post.bin");
const BIG: &[u8] = include_bytes!("../testdata/fastcgi/big.bin");
const ALL: &[&[u8]] = &[GET, TRACEPARENT, NOT_FOUND, STATUS_503, POST, BIG];

fn parser(role: Role) -> FastCgiParser {
    FastCgiParser::new(role, &ParserConfig::default())
}

/// One capture replayed on one side; a close at the end.
fn spans(bin: &[u8], role: Role, capture: usize) -> Vec<ParsedSpan> {
    let mut p = parser(role);
    let r = replay(&mut p, &records(bin), capture, role);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    let mut spans = r.spans;
    p.on_close(u64::MAX, &mut spans);
    assert_eq!(p.take_dropped(), 0);
    spans
}

fn one(bin: &[u8], role: Role) -> ParsedSpan {
    let mut s = spans(bin, role, usize::MAX);
    assert_eq!(s.len(), 1, "{s:?}");
    s.pop().unwrap()
}

#[test]
fn a_php_fpm_request_is_one_server_span_named_by_method_and_route() {
    let s = one(GET, Role::Server);
    assert_eq!(s.kind, SpanKind::Server);
    assert_eq!(s.name, "GET /users/{id}/orders");
    assert_eq!(attr_str(&s, "http.request.method"), Some("GET"));
    assert_eq!(attr_str(&s, "url.path"), Some("/users/42/orders"), "query dropped");
    assert_eq!(attr_str(&s, "http.route"), Some("/users/{id}/orders"));
    assert_eq!(attr_str(&s, "url.scheme"), Some("http"));
    assert_eq!(attr_int(&s, "http.response.status_code"), Some(200), "no Status header: 200");
    assert_eq!(attr_str(&s, "network.protocol.name"), Some("fastcgi"));
    assert_eq!(attr_int(&s, "server.port"), Some(19100));
    assert_eq!(attr_str(&s, "client.address"), Some("127.0.0.1"));
    assert_eq!(attr_str(&s, "user_agent.original"), Some("curl-test/1.0"));
    assert_eq!(s.status, SpanStatus::Unset);
    assert_eq!(s.incoming_context, None);
    // Starts at the exit of the read that brought the BEGIN_REQUEST (the
    // kernel's ServerCtx stamp), ends with the END_REQUEST's write.
    let recs = records(GET);
    assert_eq!(s.start_ns, 500);
    assert_eq!(s.end_ns, 1000 * (recs.iter().rposition(|(c, _)| !c).unwrap() as u64) + 500);
}

#[test]
fn nginx_side_is_a_client_span_starting_at_its_write() {
    let s = one(GET, Role::Client);
    assert_eq!(s.kind, SpanKind::Client);
    assert_eq!(s.name, "GET /users/{id}/orders");
    assert_eq!(s.start_ns, 0, "the write's entry: the kernel's ClientCtx stamp");
    assert_eq!(s.attr("server.port"), None, "SERVER_PORT is nginx's, not the peer's");
}

#[test]
fn http_traceparent_is_the_incoming_context() {
    let s = one(TRACEPARENT, Role::Server);
    let ctx = s.incoming_context.expect("HTTP_TRACEPARENT");
    assert_eq!(crate::model::hex(&ctx.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(crate::model::hex(&ctx.span_id), "00f067aa0ba902b7");
    assert!(ctx.sampled);
    assert_eq!(one(TRACEPARENT, Role::Client).incoming_context, None);
}

#[test]
fn status_comes_from_the_status_header() {
    let s = one(NOT_FOUND, Role::Server);
    assert_eq!((attr_int(&s, "http.response.status_code"), &s.status), (Some(404), &SpanStatus::Unset));
    let c = one(NOT_FOUND, Role::Client);
    assert_eq!(attr_str(&c, "error.type"), Some("404"), "a client's 4xx is an error");
    let s = one(STATUS_503, Role::Server);
    assert_eq!(attr_int(&s, "http.response.status_code"), Some(503));
    assert_eq!(attr_str(&s, "error.type"), Some("503"));
    assert!(matches!(s.status, SpanStatus::Error { .. }));
}

#[test]
fn a_post_body_is_counted() {
    let s = one(POST, Role::Server);
    assert_eq!(s.name, "POST /submit");
    assert_eq!(attr_int(&s, "http.request.body.size"), Some(3000));
}

#[test]
fn a_response_larger_than_the_capture_still_ends() {
    let s = one(BIG, Role::Server);
    assert_eq!(s.attr("waggle.fastcgi.response.truncated"), None);
    for capture in [4096, 1000] {
        let s = spans(BIG, Role::Server, capture);
        assert_eq!(s.len(), 1, "capture {capture}");
        assert_eq!(s[0].name, "GET /big");
        assert_eq!(attr_int(&s[0], "http.response.status_code"), Some(200));
    }
}

/// The reads php-fpm makes: each record's header alone, then its body.
#[test]
fn php_fpm_read_pattern_gives_the_same_span() {
    let recs = records(TRACEPARENT);
    let from_nginx: Vec<u8> = recs.iter().filter(|(c, _)| *c).flat_map(|(_, b)| b.clone()).collect();
    let mut p = parser(Role::Server);
    let mut out = Vec::new();
    let mut at = 0;
    let mut k = 0u64;
    while at < from_nginx.len() {
        let body =
            usize::from(u16::from_be_bytes([from_nginx[at + 4], from_nginx[at + 5]])) + usize::from(from_nginx[at + 6]);
        for piece in [&from_nginx[at..at + 8], &from_nginx[at + 8..at + 8 + body]] {
            if piece.is_empty() {
                continue;
            }
            let c = Chunk {
                direction: Direction::Ingress,
                bytes: piece,
                total_len: piece.len() as u64,
                enter_ns: k,
                exit_ns: k + 1,
                tid: 3,
            };
            assert_eq!(p.on_data(&c, &mut out), Feed::Continue);
            k += 10;
        }
        at += 8 + body;
    }
    for (c, b) in recs.iter().filter(|(c, _)| !*c).map(|r| (false, &r.1)) {
        let c = Chunk {
            direction: if c { Direction::Ingress } else { Direction::Egress },
            bytes: b,
            total_len: b.len() as u64,
            enter_ns: k,
            exit_ns: k + 1,
            tid: 3,
        };
        assert_eq!(p.on_data(&c, &mut out), Feed::Continue);
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].start_ns, 1, "the BEGIN_REQUEST header's read");
    assert!(out[0].incoming_context.is_some());
}

fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    let mut r = vec![1, kind, (id >> 8) as u8, id as u8, (content.len() >> 8) as u8, content.len() as u8, 0, 0];
    r.extend_from_slice(content);
    r
}

fn nv(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![name.len() as u8, value.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(value.as_bytes());
    out
}

#[test]
fn multiplexed_requests_are_matched_by_id() {
    let begin = [0, 1, 1, 0, 0, 0, 0, 0];
    let mut req = Vec::new();
    for (id, uri) in [(1u16, "/a"), (2, "/b/7")] {
        req.extend(record(1, id, &begin));
        req.extend(record(
            4,
            id,
            &[nv("REQUEST_METHOD", "GET"), nv("REQUEST_URI", uri), nv("HTTP_COOKIE", "s3cret")].concat(),
        ));
    }
    req.extend(record(4, 2, b""));
    req.extend(record(4, 1, b""));
    let mut resp = record(6, 2, b"Status: 201 Created\r\n\r\n");
    resp.extend(record(6, 1, b"Content-type: text/plain\r\n\r\nok"));
    resp.extend(record(3, 1, &[0; 8]));
    resp.extend(record(3, 2, &[0; 8]));
    let mut p = parser(Role::Server);
    let mut out = Vec::new();
    assert_eq!(p.on_data(&chunk(0, true, &req, usize::MAX, Role::Server), &mut out), Feed::Continue);
    assert_eq!(p.on_data(&chunk(1, false, &resp, usize::MAX, Role::Server), &mut out), Feed::Continue);
    let got: Vec<(&str, Option<i64>)> =
        out.iter().map(|s| (s.name.as_str(), attr_int(s, "http.response.status_code"))).collect();
    assert_eq!(got, [("GET /a", Some(200)), ("GET /b/{id}", Some(201))]);
    assert_absent(&out, "s3cret");
}

#[test]
fn detector_claims_a_begin_request_from_the_web_server_only() {
    let recs = records(GET);
    let first = &recs[0].1;
    let c =
        |dir, bytes| Chunk { direction: dir, bytes, total_len: bytes.len() as u64, enter_ns: 0, exit_ns: 1, tid: 1 };
    assert_eq!(FastCgiDetector.detect(Role::Server, &c(Direction::Ingress, first)), Confidence::Yes);
    assert_eq!(FastCgiDetector.detect(Role::Server, &c(Direction::Ingress, &first[..8])), Confidence::Yes);
    assert_eq!(FastCgiDetector.detect(Role::Server, &c(Direction::Ingress, &first[..3])), Confidence::NeedMore);
    assert_eq!(FastCgiDetector.detect(Role::Client, &c(Direction::Egress, first)), Confidence::Yes);
    assert_eq!(FastCgiDetector.detect(Role::Server, &c(Direction::Egress, first)), Confidence::No);
    assert_eq!(FastCgiDetector.detect(Role::Server, &c(Direction::Ingress, b"GET / HTTP/1.1\r\n\r\n")), Confidence::No);
    assert_eq!(FastCgiDetector.detect(Role::Client, &c(Direction::Egress, b"*1\r\n$4\r\nPING\r\n")), Confidence::No);
}

#[test]
fn fuzz_harness_runs_captures_mutations_and_noise() {
    // Client and Unknown roles read the captures the right way round.
    fuzz_captures_and_mutations(ALL, fuzz_script, 2 * ALL.len());
}

#[test]
fn garbage_and_cut_captures_never_panic_or_leak() {
    garbage_never_panics(ALL, 9, &[1, 7, 64, 200, 4096], &["/tmp/fcgi-cap"], || parser(Role::Client));
}

#[test]
fn memory_stays_bounded_whatever_the_lengths_say() {
    let mut p = parser(Role::Server);
    let mut out = Vec::new();
    let begin = [0, 1, 0, 0, 0, 0, 0, 0];
    for id in 1..100u16 {
        let mut b = record(1, id, &begin);
        // A params stream far longer than the cap, over many records.
        b.extend(record(4, id, &[0x41; 60000]));
        b.extend(record(4, id, &[0x41; 60000]));
        p.on_data(&chunk(id as usize, true, &b, usize::MAX, Role::Server), &mut out);
    }
    assert!(p.buffered_bytes() <= super::MAX_IN_FLIGHT * (super::MAX_PARAMS + 4096 + 128), "{}", p.buffered_bytes());
    assert!(out.is_empty());
    assert!(p.take_dropped() > 0);
    let _ = AttrValue::Bool(true);
}
