//! Host tests of the kernel's FastCGI rules, on nginx 1.22 -> php-fpm 8.2
//! traffic recorded in the agent's test data.
extern crate std;
use std::vec::Vec;

use super::*;
use crate::http::Incoming;

const TRACEPARENT: &[u8] = include_bytes!("../../../../agent/src/protocols/testdata/fastcgi/traceparent.bin");
const GET: &[u8] = include_bytes!("../../../../agent/src/protocols/testdata/fastcgi/get.bin");

/// The bytes nginx sent (records from the client), concatenated.
fn client_bytes(bin: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 5 <= bin.len() {
        let len = u32::from_be_bytes([bin[i + 1], bin[i + 2], bin[i + 3], bin[i + 4]]) as usize;
        if bin[i] == b'>' {
            out.extend_from_slice(&bin[i + 5..i + 5 + len]);
        }
        i += 5 + len;
    }
    out
}

fn head16(b: &[u8]) -> ([u8; 16], u64) {
    let mut h = [0u8; 16];
    let n = b.len().min(16);
    h[..n].copy_from_slice(&b[..n]);
    (h, b.len() as u64)
}

/// Runs a scan over `b` as the kernel does, with zero-filled windows.
fn scan(b: &[u8]) -> ParamScan {
    let mut first = [0u8; HEADER_LEN];
    let n = b.len().min(HEADER_LEN);
    first[..n].copy_from_slice(&b[..n]);
    let mut s = ParamScan::new(&first);
    let read = |at: u32| {
        let mut w = [0u8; PAIR_WINDOW];
        for (i, slot) in w.iter_mut().enumerate() {
            *slot = b.get(at as usize + i).copied().unwrap_or(0);
        }
        w
    };
    for _ in 0..MAX_SCAN_PAIRS {
        if s.step(b.len() as u32, read) {
            break;
        }
    }
    s
}

fn value_window(b: &[u8], at: u32) -> [u8; VALUE_WINDOW] {
    let mut w = [0u8; VALUE_WINDOW];
    for (i, slot) in w.iter_mut().enumerate() {
        *slot = b.get(at as usize + i).copied().unwrap_or(0);
    }
    w
}

/// The pieces php-fpm reads: each record's 8-byte header, then its body.
fn fpm_reads(b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + HEADER_LEN <= b.len() {
        let h = Header::parse(b[i..i + 8].try_into().unwrap()).unwrap();
        out.push(&b[i..i + 8]);
        let end = (i + 8 + h.body_len() as usize).min(b.len());
        if end > i + 8 {
            out.push(&b[i + 8..end]);
        }
        i = end;
    }
    out
}

#[test]
fn begin_request_is_recognised_alone_or_with_its_body() {
    let b = client_bytes(GET);
    let (h, _) = head16(&b);
    assert!(is_begin_request(&h, 8), "php-fpm's 8-byte header read");
    assert!(is_begin_request(&h, b.len() as u64));
    // Not a begin: HTTP, another record type, a management record, a short read.
    assert!(!is_begin_request(&head16(b"GET / HTTP/1.1\r\n").0, 16));
    let mut params = h;
    params[1] = record::PARAMS;
    assert!(!is_begin_request(&params, 16));
    let mut mgmt = h;
    (mgmt[2], mgmt[3]) = (0, 0);
    assert!(!is_begin_request(&mgmt, 16));
    assert!(!is_begin_request(&h, 7));
    let mut bad_role = h;
    bad_role[9] = 9;
    assert!(!is_begin_request(&bad_role, 16));
    assert!(is_begin_request(&bad_role, 8), "the role is not read when the body was not");
    let mut version = h;
    version[0] = 2;
    assert!(!is_begin_request(&version, 16));
}

#[test]
fn traceparent_is_found_in_the_params_php_fpm_reads() {
    let b = client_bytes(TRACEPARENT);
    let reads = fpm_reads(&b);
    // BEGIN header, BEGIN body, PARAMS header, PARAMS content, ...
    let content = reads[3];
    // The read ends in the record's padding, which may cut the last pair.
    let s = scan(content);
    assert_eq!(s.found, 1);
    let at = s.value().unwrap();
    let inc = parse_traceparent_param(&value_window(content, at)).unwrap();
    assert_eq!(inc.trace_id[..4], [0x4b, 0xf9, 0x2f, 0x35]);
    assert_eq!(inc.span_id[..2], [0x00, 0xf0]);
    assert_eq!(inc.flags, 1);
    // The same content read together with its PARAMS header.
    let with_header = &b[16..16 + 8 + content.len()];
    assert_eq!(scan(with_header).value(), Some(at + 8));
}

#[test]
fn no_traceparent_without_the_header() {
    let b = client_bytes(GET);
    let s = scan(fpm_reads(&b)[3]);
    assert_eq!((s.found, s.value()), (0, None));
    assert!(s.pos as usize >= fpm_reads(&b)[3].len() - 8, "walked every pair");
}

fn pair(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for len in [name.len(), value.len()] {
        if len < 128 {
            out.push(len as u8);
        } else {
            out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
        }
    }
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    out
}

const TP: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn long_lengths_ambiguity_and_lies_are_handled() {
    // A 4-byte length before the traceparent.
    let mut b = pair(b"HTTP_COOKIE", &[b'c'; 300]);
    b.extend(pair(b"HTTP_TRACEPARENT", TP));
    let s = scan(&b);
    assert_eq!(s.found, 1);
    assert!(parse_traceparent_param(&value_window(&b, s.value().unwrap())).is_some());
    // Two of them: ambiguous, none taken.
    let mut two = b.clone();
    two.extend(pair(b"HTTP_TRACEPARENT", TP));
    assert_eq!(scan(&two).value(), None);
    // A wrong length is seen but not taken.
    let short = pair(b"HTTP_TRACEPARENT", &TP[..54]);
    assert_eq!(scan(&short).value(), None);
    // A length running past the bytes stops the walk.
    let mut lie = pair(b"A", b"b");
    lie.extend_from_slice(&[0x80 | 0x7f, 0xff, 0xff, 0xff, 0x01]);
    lie.extend(pair(b"HTTP_TRACEPARENT", TP));
    let s = scan(&lie);
    assert!(s.cut);
    assert_eq!(s.value(), None);
    // An invalid value is refused by the traceparent rule.
    let bad = pair(b"HTTP_TRACEPARENT", b"00-00000000000000000000000000000000-00f067aa0ba902b7-01");
    let s = scan(&bad);
    assert!(parse_traceparent_param(&value_window(&bad, s.value().unwrap())).is_none());
}

#[test]
fn scanning_garbage_is_bounded() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 0..400usize {
        let b: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let s = scan(&b);
        assert!(s.pos as usize <= b.len() || s.cut);
        let (h, n) = head16(&b);
        let _ = is_begin_request(&h, n);
    }
}

/// Runs a record walk over `reads` as the kernel does (a walk started by
/// the begin record at the start of the first read), and a pair scan over
/// each params content it points at; the steps it took and the values of
/// the HTTP_TRACEPARENT params it found.
fn walk(reads: &[&[u8]]) -> (Vec<WalkStep>, Vec<Incoming>) {
    let (head, _) = head16(reads[0]);
    let mut w = RecordWalk::begun(&head);
    let (mut steps, mut found) = (Vec::new(), Vec::new());
    for read in reads.iter().take(MAX_WALK_READS as usize) {
        let mut pos = 0;
        let header = |at: u32| {
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&read[at as usize..at as usize + HEADER_LEN]);
            h
        };
        for _ in 0..MAX_WALK_STEPS {
            let step = w.next(&mut pos, read.len() as u32, header);
            steps.push(step);
            match step {
                WalkStep::Record => {}
                WalkStep::Params { at, end } => {
                    let content = &read[at as usize..end as usize];
                    let s = scan(content);
                    if let Some(v) = s.value() {
                        found.extend(parse_traceparent_param(&value_window(content, v)));
                    }
                }
                WalkStep::More => break,
                WalkStep::End | WalkStep::Cut => return (steps, found),
            }
        }
    }
    (steps, found)
}

#[test]
fn the_walk_finds_the_params_in_php_fpms_reads_and_in_one_read() {
    use WalkStep::*;
    let b = client_bytes(TRACEPARENT);
    let reads = fpm_reads(&b);
    let content_len = u32::from_be_bytes([0, 0, b[20], b[21]]);
    let (steps, found) = walk(&reads[..5]);
    // BEGIN header, its body, PARAMS header, content (and padding), the
    // empty PARAMS record's header.
    assert_eq!(steps, [More, More, Record, More, Params { at: 0, end: content_len }, More, End]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].trace_id[..4], [0x4b, 0xf9, 0x2f, 0x35]);
    // A responder that reads everything at once.
    let (steps, found) = walk(&[&b]);
    assert_eq!(steps, [Record, Params { at: 24, end: 24 + content_len }, End]);
    assert_eq!(found.len(), 1);
    // No traceparent: the walk ends all the same.
    let g = client_bytes(GET);
    let (steps, found) = walk(&fpm_reads(&g)[..5]);
    assert_eq!(steps.last(), Some(&End));
    assert!(found.is_empty());
}

#[test]
fn the_walk_stops_where_it_cannot_follow() {
    use WalkStep::*;
    let b = client_bytes(TRACEPARENT);
    let reads = fpm_reads(&b);
    // The content read in two pieces.
    let (first, second) = reads[3].split_at(10);
    let (steps, found) = walk(&[reads[0], reads[1], reads[2], first, second]);
    assert_eq!(steps.last(), Some(&Cut));
    assert!(found.is_empty());
    // Bytes that are no record where a header belongs.
    let (steps, _) = walk(&[reads[0], reads[1], b"GET / HTTP/1.1\r\n"]);
    assert_eq!(steps.last(), Some(&Cut));
    // A short header read.
    let (steps, _) = walk(&[&b[..16], &b[16..20]]);
    assert_eq!(steps.last(), Some(&Cut));
    // A STDIN record right after the begin: no params, the walk ends.
    let mut stdin = b[..16].to_vec();
    stdin.extend_from_slice(&[1, record::STDIN, 0, 1, 0, 0, 0, 0]);
    let (steps, _) = walk(&[&stdin]);
    assert_eq!(steps, [End]);
    // Garbage never walks out of its read.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for len in 16..300usize {
        let mut g: Vec<u8> = b[..16].to_vec();
        g.extend((16..len).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        }));
        let (steps, _) = walk(&[&g]);
        assert!(steps.len() <= MAX_WALK_STEPS as usize);
    }
}
