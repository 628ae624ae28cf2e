//! Host tests of the kernel's FastCGI rules, on nginx 1.22 -> php-fpm 8.2
//! traffic recorded in the agent's test data.
extern crate std;
use std::vec::Vec;

use super::*;

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
