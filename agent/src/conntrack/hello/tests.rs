//! Records captured on this machine from OpenSSL 3.0's `s_server` and
//! `s_client -msg` over loopback (the P-256 certificate of a test run).
use super::*;

/// Parses the hex dumps below.
fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

/// TLS 1.3 (X25519): `supported_versions` says 0x0304, legacy says 1.2.
const TLS13_HEADER: &str = "16 03 03 00 7a";
const TLS13: &str = "02 00 00 76 03 03 dc 0b fa dc 9e fd 0d a1 c4 cc
    df c6 48 75 63 79 bb 54 af 4b 58 ce d9 57 10 85 15 9b 5c ad 2c 69 20 81 22 b3 c5 18 75 fd 8c 5d
    8d aa 32 71 44 05 72 53 41 01 f5 56 fd 38 f6 79 2c 6d ab 8a 5b 99 f0 13 02 00 00 2e 00 2b 00 02
    03 04 00 33 00 24 00 1d 00 20 10 d7 10 29 8a c7 7a 65 4f 40 fa 06 53 10 9e 34 b0 07 2f 32 d4 c5
    f6 a2 70 7b 89 3f 52 d6 31 7a";
/// What a TLS 1.3 server writes after its ServerHello in the same flight:
/// ChangeCipherSpec, then the first encrypted record's start.
const TLS13_FLIGHT_REST: &str = "14 03 03 00 01 01 17 03 03 00 17 9a 41 c2";

/// `s_client -tls1_2`: no `supported_versions`, the legacy version counts.
const TLS12_HEADER: &str = "16 03 03 00 41";
const TLS12: &str = "02 00 00 3d 03 03 e8 c0 9f b2 cb e8 e3 1e 7a 25
    bb 88 54 e3 f5 0e da d1 7c 8a ca 22 27 b6 44 4f 57 4e 47 52 44 01 00 c0 2c 00 00 15 ff 01 00 01
    00 00 0b 00 04 03 00 01 02 00 23 00 00 00 17 00 00";

/// `s_server -groups P-256` answering `s_client -groups X25519:P-256`: a
/// HelloRetryRequest (asking for a P-256 key share), then the ServerHello.
const RETRY_HEADER: &str = "16 03 03 00 58";
const RETRY: &str = "02 00 00 54 03 03 cf 21 ad 74 e5 9a 61 11 be 1d
    8c 02 1e 65 b8 91 c2 a2 11 16 7a bb 8c 5e 07 9e 09 e2 c8 a8 33 9c 20 4b 53 5d 77 9d e8 e9 90 d8
    50 90 a8 39 30 e9 36 53 db 70 8b 3a 60 41 09 5f a4 c1 c7 21 a8 bb d6 13 02 00 00 0c 00 2b 00 02
    03 04 00 33 00 02 00 17";
const AFTER_RETRY_HEADER: &str = "16 03 03 00 9b";
const AFTER_RETRY: &str = "02 00 00 97 03 03 4c bd c6 60 ab bc 29 5b 45 2b
    56 0e 28 ae 2f 6e 72 0b c9 2e 9b ff b0 a0 89 8b fa 71 48 16 67 3a 20 4b 53 5d 77 9d e8 e9 90 d8
    50 90 a8 39 30 e9 36 53 db 70 8b 3a 60 41 09 5f a4 c1 c7 21 a8 bb d6 13 02 00 00 4f 00 2b 00 02
    03 04 00 33 00 45 00 17 00 41 04 06 4d 0b 3f ef 23 27 e2 5b a6 6f 37 1b 5d 41 0a f1 1a cb ee b1
    1a 1a ea 77 b9 58 dd b8 ac ee 96 0c f7 4a 20 e2 f9 bb 31 e6 83 55 31 0b 74 5f 7c 26 18 80 c7 f8
    b7 01 82 3e b6 cb fb 34 e8 70 18";

/// The ClientHello record's start `s_client` wrote in the same runs.
const CLIENT_HELLO_START: &str = "16 03 01 01 24 01 00 01 20 03 03 a4 f6 42 c4";

fn record(header: &str, msg: &str) -> Vec<u8> {
    [hex(header), hex(msg)].concat()
}

/// A TLS 1.3 server's first write: ServerHello, ChangeCipherSpec, ...
pub(in crate::conntrack) fn tls13_server_flight() -> Vec<u8> {
    [record(TLS13_HEADER, TLS13), hex(TLS13_FLIGHT_REST)].concat()
}

pub(in crate::conntrack) fn tls13_retry_record() -> Vec<u8> {
    record(RETRY_HEADER, RETRY)
}

pub(in crate::conntrack) fn tls13_after_retry_record() -> Vec<u8> {
    record(AFTER_RETRY_HEADER, AFTER_RETRY)
}

pub(in crate::conntrack) fn client_hello_start() -> Vec<u8> {
    hex(CLIENT_HELLO_START)
}

#[test]
fn tls13_reads_supported_versions_over_the_legacy_version() {
    assert_eq!(server_hello(&hex(TLS13)), Hello::Version(0x0304));
    assert_eq!(server_hello_in_record(&record(TLS13_HEADER, TLS13)), Hello::Version(0x0304));
    // A server's write: the whole flight; only the first record counts.
    let flight = [record(TLS13_HEADER, TLS13), hex(TLS13_FLIGHT_REST)].concat();
    assert_eq!(server_hello_in_record(&flight), Hello::Version(0x0304));
    assert_eq!(version_name(0x0304), Some("1.3"));
}

#[test]
fn tls12_without_the_extension_gives_the_legacy_version() {
    assert_eq!(server_hello(&hex(TLS12)), Hello::Version(0x0303));
    assert_eq!(server_hello_in_record(&record(TLS12_HEADER, TLS12)), Hello::Version(0x0303));
    assert_eq!(version_name(0x0303), Some("1.2"));
}

#[test]
fn a_hello_retry_request_waits_for_the_real_server_hello() {
    assert_eq!(server_hello(&hex(RETRY)), Hello::Retry);
    assert_eq!(server_hello_in_record(&record(RETRY_HEADER, RETRY)), Hello::Retry);
    assert_eq!(server_hello(&hex(AFTER_RETRY)), Hello::Version(0x0304));
    assert_eq!(server_hello_in_record(&record(AFTER_RETRY_HEADER, AFTER_RETRY)), Hello::Version(0x0304));
    // A server's write after the retry may start with a ChangeCipherSpec.
    let ccs_first = [hex("14 03 03 00 01 01"), record(AFTER_RETRY_HEADER, AFTER_RETRY)].concat();
    assert_eq!(server_hello_in_record(&ccs_first), Hello::Version(0x0304));
    assert_eq!(server_hello_in_record(&ccs_first[..5]), Hello::Truncated);
    assert_eq!(lone_record_header(&hex("14 03 03 00 01")), Some(20), "a ChangeCipherSpec header read alone");
    assert_eq!(lone_record_header(&hex(RETRY_HEADER)), Some(22));
    assert_eq!(lone_record_header(&hex("14 03 03 00 01 01")), None, "a whole record");
}

#[test]
fn a_truncated_record_says_so_at_every_cut() {
    // TLS 1.3: up to the end of `supported_versions` (82 bytes into the
    // message, the key share after it); TLS 1.2: anywhere.
    for (full, known_at) in [(record(TLS13_HEADER, TLS13), 5 + 82), (record(TLS12_HEADER, TLS12), 5 + 0x41)] {
        for cut in 0..known_at {
            assert_eq!(server_hello_in_record(&full[..cut]), Hello::Truncated, "cut at {cut}");
        }
    }
    // TLS 1.3's extension is the last thing read: every cut before it.
    let msg = hex(TLS13);
    for cut in 0..msg.len() - 40 {
        assert_eq!(server_hello(&msg[..cut]), Hello::Truncated, "cut at {cut}");
    }
    // Cut inside the key share that follows it: the version is known.
    assert_eq!(server_hello(&msg[..msg.len() - 10]), Hello::Version(0x0304));
}

#[test]
fn garbage_and_other_records_are_not_a_server_hello() {
    assert_eq!(server_hello_in_record(b"HTTP/1.1 200 OK\r\n"), Hello::Other);
    assert_eq!(server_hello_in_record(b"S"), Hello::Other, "PostgreSQL's answer to SSLRequest");
    assert_eq!(server_hello_in_record(&hex(TLS13_FLIGHT_REST)), Hello::Other, "ChangeCipherSpec");
    assert_eq!(server_hello_in_record(&hex(CLIENT_HELLO_START)), Hello::Other, "the client's hello");
    assert_eq!(server_hello(&hex(TLS13_FLIGHT_REST)), Hello::Other);
    // A ServerHello whose version is not 3.x, or whose extension is malformed.
    let mut bad = hex(TLS13);
    bad[4] = 0x7f;
    assert_eq!(server_hello(&bad), Hello::Other);
    let mut bad = hex(TLS13);
    let at = bad.windows(4).position(|w| w == [0x00, 0x2b, 0x00, 0x02]).unwrap();
    bad[at + 3] = 3;
    assert_eq!(server_hello(&bad), Hello::Other);
    // Random bytes never panic.
    let mut x: u32 = 0x9e37_79b9;
    for len in 0..600 {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let _ = server_hello_in_record(&junk);
        let _ = server_hello(&junk);
    }
}

#[test]
fn client_hellos_and_lone_headers_are_recognised() {
    assert!(is_client_hello_record(&hex(CLIENT_HELLO_START)));
    assert!(is_client_hello_record(&hex("16 03 01 01 24")), "OpenSSL reads the header on its own");
    assert!(!is_client_hello_record(&record(TLS13_HEADER, TLS13)), "a ServerHello");
    assert!(!is_client_hello_record(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"), "PostgreSQL's SSLRequest");
    assert!(is_handshake_record(&hex(TLS13_HEADER)));
    assert_eq!(version_name(0x0300), None);
}
