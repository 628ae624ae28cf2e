//! MySQL / MariaDB parser tests, most on traffic recorded from real clients
//! and servers (`../testdata/mysql`).
use waggle_common::Role;

use super::{
    fuzz_script,
    packets::{
        CLIENT_COMPRESS, CLIENT_CONNECT_WITH_DB, CLIENT_DEPRECATE_EOF, CLIENT_PROTOCOL_41, CLIENT_SECURE_CONNECTION,
        CLIENT_SSL, COM_INIT_DB, COM_QUERY, COM_QUIT, COM_STMT_CLOSE, COM_STMT_EXECUTE, COM_STMT_PREPARE,
    },
    parser::Phase,
    MysqlDetector, MysqlParser,
};
use crate::model::{AttrValue, ParsedSpan, SpanKind, SpanStatus};
use crate::protocols::sql::replay::{assert_absent, attr_int, attr_str, chunk, names, records, replay, Lcg};
use crate::protocols::sql::replay::{fuzz_captures_and_mutations, garbage_never_panics};
use crate::protocols::{Chunk, Confidence, Feed, ParserConfig, ProtocolDetector, ProtocolParser};

const CLI: &[u8] = include_bytes!("../testdata/mysql/mariadb_cli.bin");
const STMT: &[u8] = include_bytes!("../testdata/mysql/mariadb_stmt.bin");
const STMT_DEPRECATE_EOF: &[u8] = include_bytes!("../testdata/mysql/mariadb_stmt_deprecate_eof.bin");
const ALL: &[&[u8]] = &[CLI, STMT, STMT_DEPRECATE_EOF];

fn parser() -> MysqlParser {
    MysqlParser::new(Role::Client, &ParserConfig::default())
}

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut p = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
    p.extend_from_slice(payload);
    p
}

fn feed(p: &mut MysqlParser, k: usize, from_client: bool, bytes: &[u8], out: &mut Vec<ParsedSpan>) -> Feed {
    p.on_data(&chunk(k, from_client, bytes, usize::MAX, Role::Client), out)
}

fn status_code(span: &ParsedSpan) -> Option<&str> {
    attr_str(span, "db.response.status_code")
}

const CLI_SPANS: [&str; 11] = [
    "CREATE items",
    "INSERT items",
    "SELECT items",
    "UPDATE items",
    "SELECT missing_table",
    "SELECT",
    "SELECT",
    "BATCH SELECT",
    "SELECT seq_1_to_100",
    "SELECT shop.items",
    // (COM_INIT_DB and COM_QUIT give no span.)
    "",
];

#[test]
fn cli_session_text_protocol() {
    let r = replay(&mut parser(), &records(CLI), usize::MAX, Role::Client);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    assert_eq!(names(&r.spans), CLI_SPANS[..10]);
    let s = &r.spans;
    assert!(s.iter().all(|s| attr_str(s, "db.system.name") == Some("mariadb") && s.kind == SpanKind::Client));
    assert_eq!(attr_str(&s[0], "db.namespace"), Some("shop"));
    assert_eq!(attr_str(&s[1], "db.query.text"), Some("INSERT INTO items VALUES (?, ?, ?), (?, ?, ?)"));
    assert_eq!(attr_int(&s[1], "waggle.db.response.affected_rows"), Some(2));
    assert_eq!(attr_str(&s[2], "db.query.text"), Some("SELECT * FROM items WHERE name = ? AND id = ?"));
    assert_eq!(attr_int(&s[2], "db.response.returned_rows"), Some(1));
    assert_eq!(attr_str(&s[3], "db.query.text"), Some("UPDATE items SET price = ? WHERE id IN (?)"));
    assert_eq!(attr_int(&s[3], "waggle.db.response.affected_rows"), Some(2));
    assert_eq!(status_code(&s[4]), Some("1146"));
    assert_eq!(attr_str(&s[4], "error.type"), Some("1146"));
    assert_eq!(s[4].status, SpanStatus::Error { description: "MariaDB error 1146 (SQLSTATE 42S02)".into() });
    assert!(s.iter().enumerate().all(|(i, s)| i == 4 || s.status == SpanStatus::Unset));
    // COM_INIT_DB (`USE other`) moved the namespace.
    assert_eq!(attr_str(&s[5], "db.namespace"), Some("shop"));
    assert_eq!(attr_str(&s[6], "db.namespace"), Some("other"));
    assert_eq!(attr_int(&s[7], "db.operation.batch.size"), Some(2));
    assert_eq!(attr_int(&s[7], "db.response.returned_rows"), Some(2), "two result sets of one row");
    assert_eq!(attr_int(&s[8], "db.response.returned_rows"), Some(100));
    assert_eq!(attr_int(&s[9], "db.response.returned_rows"), Some(1));
    for secret in ["secret-widget", "O\\'Brien", "9.99", "19.5", "hunter2pw"] {
        assert_absent(s, secret);
    }
}

#[test]
fn large_result_beyond_capture_ends_at_the_next_command() {
    let recs = records(CLI);
    let r = replay(&mut parser(), &recs, 4096, Role::Client);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    assert_eq!(names(&r.spans), CLI_SPANS[..10]);
    let big = &r.spans[8];
    assert_eq!(big.attr("waggle.db.response.truncated"), Some(&AttrValue::Bool(true)));
    assert_eq!(big.attr("db.response.returned_rows"), None);
    let big_read = recs.iter().position(|(c, b)| !*c && b.len() > 4096).unwrap();
    assert_eq!(big.end_ns, 1000 * big_read as u64 + 500);
    assert_eq!(attr_int(&r.spans[9], "db.response.returned_rows"), Some(1));
}

fn check_stmt_capture(bin: &[u8], capture: usize) {
    let r = replay(&mut parser(), &records(bin), capture, Role::Client);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    let s = &r.spans;
    assert_eq!(
        names(s),
        [
            "SELECT items",
            "SELECT items",
            "UPDATE items",
            "SELECT missing_table",
            "mariadb",
            "mariadb",
            "BATCH",
            "SELECT seq_1_to_50",
            "SELECT items"
        ]
    );
    assert_eq!(attr_str(&s[0], "db.query.text"), Some("SELECT id, name FROM items WHERE id = ?"));
    assert_eq!(attr_int(&s[0], "db.response.returned_rows"), Some(1));
    assert_eq!(attr_int(&s[1], "db.response.returned_rows"), Some(1));
    assert_eq!(attr_str(&s[2], "db.query.text"), Some("UPDATE items SET price = ? WHERE id = ?"));
    assert_eq!(attr_int(&s[2], "waggle.db.response.affected_rows"), Some(1));
    // The failed prepare, the unknown id, and the id used after COM_STMT_CLOSE.
    assert_eq!(status_code(&s[3]), Some("1146"));
    assert_eq!(attr_str(&s[3], "db.query.text"), Some("SELECT * FROM missing_table WHERE id = ?"));
    for span in &s[4..6] {
        assert_eq!(status_code(span), Some("1243"));
        assert_eq!(span.attr("db.query.text"), None);
    }
    assert_eq!(attr_int(&s[6], "db.response.returned_rows"), Some(1));
    assert_eq!(attr_int(&s[6], "waggle.db.response.affected_rows"), Some(1));
    if capture >= 16 * 1024 {
        assert_eq!(attr_int(&s[7], "db.response.returned_rows"), Some(50));
    } else {
        assert_eq!(s[7].attr("waggle.db.response.truncated"), Some(&AttrValue::Bool(true)));
    }
    assert_eq!(attr_int(&s[8], "db.response.returned_rows"), Some(1));
    assert!(s.iter().all(|s| attr_str(s, "db.namespace") == Some("shop")));
    for secret in ["secret-widget", "5.25", "hunter2pw"] {
        assert_absent(s, secret);
    }
}

#[test]
fn prepared_statements_with_and_without_deprecate_eof() {
    for capture in [usize::MAX, 4096] {
        check_stmt_capture(STMT, capture);
        check_stmt_capture(STMT_DEPRECATE_EOF, capture);
    }
}

#[test]
fn joining_mid_stream_without_capabilities() {
    // Start at each command of the captures: result sets must still be
    // followed with the EOF style unknown.
    for bin in ALL {
        let recs = records(bin);
        let full = replay(&mut parser(), &recs, usize::MAX, Role::Client).spans;
        for start in 3..recs.len() {
            let (from_client, first) = &recs[start];
            if !*from_client || first[3] != 0 {
                continue;
            }
            let confidence = MysqlDetector.detect(Role::Client, &chunk(start, true, first, 4096, Role::Client));
            if confidence != Confidence::Yes {
                assert!(matches!(first[4], COM_INIT_DB | COM_QUIT | 0x0e), "{first:?}");
                continue;
            }
            let r = replay(&mut parser(), &recs[start..], usize::MAX, Role::Client);
            assert!(r.feeds.is_empty(), "start {start}: {:?}", r.feeds);
            // Same spans as the full replay's tail, minus what the
            // handshake and prepares taught.
            let tail = &full[full.len() - r.spans.len()..];
            let offset = 1000 * start as u64;
            for (got, want) in r.spans.iter().zip(tail) {
                assert_eq!(got.start_ns + offset, want.start_ns);
                assert_eq!(got.end_ns + offset, want.end_ns);
                assert_eq!(status_code(got), status_code(want));
                assert_eq!(got.attr("db.response.returned_rows"), want.attr("db.response.returned_rows"));
                assert_eq!(attr_str(got, "db.system.name"), Some("mysql"), "no greeting seen");
            }
        }
    }
}

#[test]
fn detector() {
    let d = MysqlDetector;
    for bin in ALL {
        let recs = records(bin);
        let (c, greeting) = &recs[0];
        assert!(!*c);
        assert_eq!(d.detect(Role::Client, &chunk(0, false, greeting, 4096, Role::Client)), Confidence::Yes);
        assert_eq!(d.detect(Role::Server, &chunk(0, false, greeting, 4096, Role::Server)), Confidence::Yes);
        // A greeting is not a command, and vice versa.
        assert_eq!(d.detect(Role::Client, &chunk(0, true, greeting, 4096, Role::Client)), Confidence::No);
        for (k, (c, bytes)) in recs.iter().enumerate().skip(1) {
            let got = d.detect(Role::Client, &chunk(k, *c, bytes, 4096, Role::Client));
            if *c
                && bytes[3] == 0
                && matches!(bytes[4], COM_QUERY | COM_STMT_PREPARE | COM_STMT_EXECUTE | COM_STMT_CLOSE)
            {
                assert_eq!(got, Confidence::Yes, "{bytes:?}");
            }
            if !*c {
                assert_eq!(got, Confidence::No, "{bytes:?}");
            }
        }
    }
    let no =
        |bytes: &[u8], from_client: bool| d.detect(Role::Client, &chunk(0, from_client, bytes, 4096, Role::Client));
    for text in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"POST /api HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        b"\x00\x00\x00\x3b\x00\x03\x00\x00user\x00postgres\x00database\x00shop\x00\x00",
        b"Q\x00\x00\x00\x0dSELECT 1;\x00",
        b"Q\x00\x00\x00\x16SELECT 1 FROM t;\x00",
        b"R\x00\x00\x00\x08\x00\x00\x00\x00S\x00\x00\x00\x16",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        assert_eq!(no(text, true), Confidence::No, "{text:?}");
        assert_eq!(no(text, false), Confidence::No, "{text:?}");
    }
    assert_eq!(no(b"\x05\x00", true), Confidence::NeedMore);
    let mut rng = Lcg(99);
    for _ in 0..20_000 {
        let len = 5 + rng.below(60) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        assert_ne!(no(&bytes, rng.below(2) == 0), Confidence::Yes, "{bytes:?}");
    }
}

#[test]
fn registered_detectors_pick_the_right_parser() {
    use crate::protocols::{detect, Detection, DETECTORS};
    let config = ParserConfig::default();
    let protocol = |from_client: bool, bytes: &[u8]| match detect(
        DETECTORS,
        Role::Client,
        &chunk(0, from_client, bytes, 4096, Role::Client),
        &config,
    ) {
        Detection::Parser(p) => Some(p.protocol()),
        Detection::NeedMore | Detection::Unknown => None,
    };
    let my = records(CLI);
    assert_eq!(protocol(false, &my[0].1), Some(crate::model::Protocol::Mysql), "greeting");
    assert_eq!(protocol(true, &my[3].1), Some(crate::model::Protocol::Mysql), "COM_QUERY mid-stream");
    let pg = records(include_bytes!("../testdata/postgres/psql_session.bin"));
    assert_eq!(protocol(true, &pg[0].1), Some(crate::model::Protocol::Postgres), "SSLRequest");
    assert_eq!(protocol(true, &pg[2].1), Some(crate::model::Protocol::Postgres), "StartupMessage");
    assert_eq!(protocol(true, &pg[4].1), Some(crate::model::Protocol::Postgres), "Q mid-stream");
    for http in [&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..], b"POST /q HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"]
    {
        assert_ne!(protocol(true, http), Some(crate::model::Protocol::Mysql));
        assert_ne!(protocol(true, http), Some(crate::model::Protocol::Postgres));
    }
}

fn greeting(version: &str) -> Vec<u8> {
    let mut g = vec![10];
    g.extend_from_slice(version.as_bytes());
    g.extend_from_slice(&[0, 1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0xff, 0xf7, 8, 2, 0, 0xff, 0x81, 21]);
    g.extend_from_slice(&[0; 10]);
    g.extend_from_slice(b"abcdefghijkl\0mysql_native_password\0");
    packet(0, &g)
}

fn handshake(caps: u32, db: Option<&str>) -> Vec<u8> {
    let mut h = caps.to_le_bytes().to_vec();
    h.extend_from_slice(&[0, 0, 0, 1, 33]);
    h.extend_from_slice(&[0; 23]);
    h.extend_from_slice(b"app\0");
    h.push(20);
    h.extend_from_slice(b"hunter2-scrambled-pw");
    if let Some(db) = db {
        h.extend_from_slice(db.as_bytes());
        h.push(0);
    }
    packet(1, &h)
}

const CAPS: u32 = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_CONNECT_WITH_DB;

/// The client's SSL request: capabilities with CLIENT_SSL, no user.
fn ssl_request() -> Vec<u8> {
    let mut ssl = (CAPS | CLIENT_SSL).to_le_bytes().to_vec();
    ssl.extend_from_slice(&[0, 0, 0, 1, 33]);
    ssl.extend_from_slice(&[0; 23]);
    packet(1, &ssl)
}

#[test]
fn oracle_mysql_greeting_and_handshake() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, 0, false, &greeting("8.0.36"), &mut out);
    feed(&mut p, 1, true, &handshake(CAPS, Some("inventory")), &mut out);
    feed(&mut p, 2, false, &packet(2, &[0, 0, 0, 2, 0, 0, 0]), &mut out);
    feed(&mut p, 3, true, &packet(0, b"\x03DELETE FROM stock WHERE qty = 0"), &mut out);
    feed(&mut p, 4, false, &packet(1, &[0, 3, 0, 2, 0, 0, 0]), &mut out);
    assert_eq!(names(&out), ["DELETE stock"]);
    assert_eq!(attr_str(&out[0], "db.system.name"), Some("mysql"));
    assert_eq!(attr_str(&out[0], "db.namespace"), Some("inventory"));
    assert_eq!(attr_int(&out[0], "waggle.db.response.affected_rows"), Some(3));
    assert_eq!(out[0].start_ns, 3000);
    assert_eq!(out[0].end_ns, 4500);
    assert_absent(&out, "hunter2");
}

#[test]
fn tls_and_compression_make_the_connection_opaque() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, 0, false, &greeting("8.0.36"), &mut out);
    assert!(matches!(feed(&mut p, 1, true, &ssl_request(), &mut out), Feed::Opaque(_)));
    assert!(p.resumes_after_tls(), "the SSL request: the plaintext read at the TLS library can follow");

    let mut p = parser();
    feed(&mut p, 0, false, &greeting("8.0.36"), &mut out);
    assert_eq!(feed(&mut p, 1, true, &handshake(CAPS | CLIENT_COMPRESS, None), &mut out), Feed::Continue);
    assert!(matches!(feed(&mut p, 2, false, &packet(2, &[0, 0, 0, 2, 0, 0, 0]), &mut out), Feed::Opaque(_)));
}

/// After the SSL request, the TLS plaintext (what the TLS probes read)
/// goes on where the plaintext stopped: the handshake response at seq 2
/// names the schema, and the greeting's MariaDB is kept.
#[test]
fn handshake_after_the_ssl_request_continues_in_tls_plaintext() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, 0, false, &greeting("5.5.5-10.11.6-MariaDB-0+deb12u1"), &mut out);
    assert!(matches!(feed(&mut p, 1, true, &ssl_request(), &mut out), Feed::Opaque(_)));
    let mut response = handshake(CAPS | CLIENT_SSL, Some("shop"));
    response[3] = 2;
    assert_eq!(feed(&mut p, 2, true, &response, &mut out), Feed::Continue);
    assert!(!p.resumes_after_tls());
    feed(&mut p, 3, false, &packet(3, &[0, 0, 0, 2, 0, 0, 0]), &mut out);
    feed(&mut p, 4, true, &packet(0, b"\x03DELETE FROM stock WHERE qty = 0"), &mut out);
    feed(&mut p, 5, false, &packet(1, &[0, 3, 0, 2, 0, 0, 0]), &mut out);
    assert_eq!(names(&out), ["DELETE stock"]);
    assert_eq!(attr_str(&out[0], "db.system.name"), Some("mariadb"));
    assert_eq!(attr_str(&out[0], "db.namespace"), Some("shop"));
}

#[test]
fn auth_switch_and_failed_login() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, 0, false, &greeting("8.0.36"), &mut out);
    feed(&mut p, 1, true, &handshake(CAPS, None), &mut out);
    feed(&mut p, 2, false, &packet(2, b"\xfecaching_sha2_password\0abcdefghijklmnopqrst\0"), &mut out);
    feed(&mut p, 3, true, &packet(3, b"scrambled-secret-xx"), &mut out);
    feed(&mut p, 4, false, &packet(4, b"\x01\x03"), &mut out);
    feed(&mut p, 5, false, &packet(5, &[0, 0, 0, 2, 0, 0, 0]), &mut out);
    assert_eq!(p.wire().phase, Phase::Command);
    feed(&mut p, 6, true, &packet(0, b"\x03SELECT 1"), &mut out);
    feed(
        &mut p,
        7,
        false,
        &[
            packet(1, b"\x01"),
            packet(2, b"\x03def\0\0\0\x011\0\x0c?\0\x01\0\0\0\x08\x81\0\0\0\0"),
            packet(3, b"\xfe\0\0\x02\0"),
            packet(4, b"\x011"),
            packet(5, b"\xfe\0\0\x02\0"),
        ]
        .concat(),
        &mut out,
    );
    assert_eq!(names(&out), ["SELECT"]);
    assert_eq!(attr_int(&out[0], "db.response.returned_rows"), Some(1));

    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, 0, false, &greeting("8.0.36"), &mut out);
    feed(&mut p, 1, true, &handshake(CAPS, None), &mut out);
    assert_eq!(
        feed(&mut p, 2, false, &packet(2, b"\xff\x15\x04#28000Access denied for user"), &mut out),
        Feed::Continue
    );
    assert!(out.is_empty());
}

#[test]
fn local_infile() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, 0, true, &packet(0, b"\x03LOAD DATA LOCAL INFILE '/tmp/secret.csv' INTO TABLE items"), &mut out);
    feed(&mut p, 1, false, &packet(1, b"\xfb/tmp/secret.csv"), &mut out);
    feed(&mut p, 2, true, &[packet(2, b"1,a\n2,b\n"), packet(3, b"")].concat(), &mut out);
    assert_eq!(feed(&mut p, 3, false, &packet(4, &[0, 2, 0, 2, 0, 0, 0]), &mut out), Feed::Continue);
    assert_eq!(names(&out), ["LOAD"]);
    assert_eq!(attr_int(&out[0], "waggle.db.response.affected_rows"), Some(2));
    assert_absent(&out, "secret.csv");
}

#[test]
fn pipelined_prepare_and_execute_last_statement() {
    // MariaDB Connector/C sends both at once; id 0xffffffff means "the
    // statement just prepared".
    let caps = CAPS | CLIENT_DEPRECATE_EOF;
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, 0, false, &greeting("5.5.5-10.11.6-MariaDB"), &mut out);
    feed(&mut p, 1, true, &handshake(caps, Some("shop")), &mut out);
    feed(&mut p, 2, false, &packet(2, &[0, 0, 0, 2, 0, 0, 0]), &mut out);
    let prepare = packet(0, b"\x16SELECT name FROM items WHERE id = ?");
    let mut exec = vec![COM_STMT_EXECUTE, 0xff, 0xff, 0xff, 0xff, 0, 1, 0, 0, 0, 0, 1, 3, 0];
    exec.extend_from_slice(&7i32.to_le_bytes());
    feed(&mut p, 3, true, &[prepare, packet(0, &exec)].concat(), &mut out);
    let coldef = b"\x03def\x04shop\x05items\x05items\x04name\x04name\x0c-\0\x90\x01\0\0\xfd\0\0\0\0\0";
    let resp = [
        packet(1, &[0, 9, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]),
        packet(2, b"\x03def\0\0\0\x01?\0\x0c?\0\0\0\0\0\x06\x80\0\0\0\0"),
        packet(3, coldef),
        packet(1, b"\x01"),
        packet(2, coldef),
        packet(3, b"\0\0\x05apple"),
        packet(4, &[0xfe, 0, 0, 2, 0, 0, 0]),
    ]
    .concat();
    assert_eq!(feed(&mut p, 4, false, &resp, &mut out), Feed::Continue);
    assert_eq!(names(&out), ["SELECT items"]);
    assert_eq!(attr_str(&out[0], "db.query.text"), Some("SELECT name FROM items WHERE id = ?"));
    assert_eq!(attr_int(&out[0], "db.response.returned_rows"), Some(1));
    assert_eq!(attr_str(&out[0], "db.system.name"), Some("mariadb"));
    assert!(p.conn().pending.is_empty());
}

#[test]
fn multi_packet_query_beyond_capture() {
    let mut p = parser();
    let mut out = Vec::new();
    // A 20 MB query: a full 0xffffff packet, then a continuation.
    let mut first = vec![0xff, 0xff, 0xff, 0, COM_QUERY];
    first.extend_from_slice(b"INSERT INTO blobs VALUES ('");
    first.resize(4096, b'z');
    let total = 4 + 0xff_ffff + 4 + 100;
    let c = Chunk { bytes: &first, total_len: total, ..chunk(0, true, &first, usize::MAX, Role::Client) };
    // The continuation header is in the uncaptured part: lost sync is
    // the honest answer for the client direction.
    assert!(matches!(p.on_data(&c, &mut out), Feed::LostSync(_)));
    // Written as two syscalls, the continuation is found.
    let mut p = parser();
    let c = Chunk { bytes: &first, total_len: 4 + 0xff_ffff, ..c };
    assert_eq!(p.on_data(&c, &mut out), Feed::Continue);
    let mut cont = packet(1, &[b'z'; 96]);
    cont.extend_from_slice(b"')");
    cont[0] = 98;
    assert_eq!(feed(&mut p, 1, true, &cont, &mut out), Feed::Continue);
    assert_eq!(feed(&mut p, 2, false, &packet(2, &[0, 1, 0, 2, 0, 0, 0]), &mut out), Feed::Continue);
    assert_eq!(names(&out), ["INSERT blobs"]);
    assert_eq!(out[0].attr("waggle.db.query.truncated"), Some(&AttrValue::Bool(true)));
    assert_eq!(attr_str(&out[0], "db.query.text"), Some("INSERT INTO blobs VALUES (?"));
}

#[test]
fn out_of_sequence_response_loses_sync() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, 0, true, &packet(0, b"\x03SELECT 1"), &mut out);
    assert!(matches!(feed(&mut p, 1, false, &packet(5, &[0, 0, 0, 2, 0, 0, 0]), &mut out), Feed::LostSync(_)));
}

#[test]
fn idle_and_close() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, 5, true, &packet(0, b"\x03SELECT SLEEP(100)"), &mut out);
    p.on_idle(10, &mut out);
    assert_eq!(p.conn().pending.len(), 1);
    p.on_idle(10_000, &mut out);
    assert!(p.conn().pending.is_empty() && out.is_empty());
    assert!(matches!(feed(&mut p, 20, false, &packet(1, &[0, 0, 0, 2, 0, 0, 0]), &mut out), Feed::LostSync(_)));

    let mut p = parser();
    feed(&mut p, 0, true, &packet(0, b"\x03SELECT * FROM big"), &mut out);
    let big = packet(1, &[1]);
    let c = Chunk { bytes: &big, total_len: 100_000, ..chunk(1, false, &big, usize::MAX, Role::Client) };
    p.on_data(&c, &mut out);
    assert!(p.conn().hunting);
    p.on_idle(10_000, &mut out);
    assert_eq!(names(&out), ["SELECT big"]);
    assert_eq!(out[0].end_ns, 1500);

    let mut p = parser();
    feed(&mut p, 0, true, &packet(0, b"\x03SELECT 1"), &mut out);
    feed(&mut p, 1, true, &packet(0, b"\x0e"), &mut out);
    p.on_close(5, &mut out);
    assert!(p.conn().pending.is_empty());
    assert_eq!(p.take_dropped(), 1, "the query, not the ping");
    assert_eq!(p.take_dropped(), 0);
}

#[test]
fn server_role_mirrors_directions() {
    let mut p = MysqlParser::new(Role::Server, &ParserConfig::default());
    let r = replay(&mut p, &records(CLI), usize::MAX, Role::Server);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    assert_eq!(names(&r.spans), CLI_SPANS[..10]);
    assert!(r.spans.iter().all(|s| s.kind == SpanKind::Server));
}

#[test]
fn fuzz_script_runs_captures_and_mutations() {
    fuzz_captures_and_mutations(ALL, fuzz_script, 2 * 20);
}

#[test]
fn never_panics_on_garbage_or_odd_captures() {
    garbage_never_panics(ALL, 3, &[1, 3, 4, 5, 9, 17, 100, 4096], &["secret-widget"], parser);
}
