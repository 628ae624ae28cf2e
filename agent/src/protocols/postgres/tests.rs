//! PostgreSQL parser tests, most on traffic recorded from real clients and
//! servers (`../testdata/postgres`).
use waggle_common::Role;

use super::{fuzz_script, PostgresDetector, PostgresParser, MAX_STATEMENTS};
use crate::model::{AttrValue, ParsedSpan, SpanKind, SpanStatus};
use crate::protocols::sql::replay::{assert_absent, attr_int, attr_str, chunk, names, records, replay, Lcg};
use crate::protocols::sql::replay::{fuzz_captures_and_mutations, garbage_never_panics};
use crate::protocols::{Chunk, Confidence, Feed, ParserConfig, ProtocolDetector, ProtocolParser};

const PSQL_SESSION: &[u8] = include_bytes!("../testdata/postgres/psql_session.bin");
const PSQL_ERRORS: &[u8] = include_bytes!("../testdata/postgres/psql_errors.bin");
const PGBENCH_SIMPLE: &[u8] = include_bytes!("../testdata/postgres/pgbench_simple.bin");
const PGBENCH_EXTENDED: &[u8] = include_bytes!("../testdata/postgres/pgbench_extended.bin");
const PGBENCH_PREPARED: &[u8] = include_bytes!("../testdata/postgres/pgbench_prepared.bin");
const PGBENCH_PIPELINE: &[u8] = include_bytes!("../testdata/postgres/pgbench_pipeline.bin");
const PGBENCH_ERROR: &[u8] = include_bytes!("../testdata/postgres/pgbench_error.bin");
const ALL: &[&[u8]] =
    &[PSQL_SESSION, PSQL_ERRORS, PGBENCH_SIMPLE, PGBENCH_EXTENDED, PGBENCH_PREPARED, PGBENCH_PIPELINE, PGBENCH_ERROR];

fn parser() -> PostgresParser {
    PostgresParser::new(Role::Client, &ParserConfig::default())
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn q(text: &str) -> Vec<u8> {
    msg(b'Q', &[text.as_bytes(), b"\0"].concat())
}

fn feed(p: &mut PostgresParser, k: usize, from_client: bool, bytes: &[u8], out: &mut Vec<ParsedSpan>) -> Feed {
    p.on_data(&chunk(k, from_client, bytes, usize::MAX, Role::Client), out)
}

fn status_code(span: &ParsedSpan) -> Option<&str> {
    attr_str(span, "db.response.status_code")
}

#[test]
fn psql_session_gives_one_span_per_query() {
    let recs = records(PSQL_SESSION);
    let r = replay(&mut parser(), &recs, usize::MAX, Role::Client);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    assert_eq!(
        names(&r.spans),
        [
            "CREATE items",
            "INSERT items",
            "SELECT items",
            "UPDATE items",
            "SELECT missing_table",
            "BEGIN",
            "DELETE items",
            "COMMIT",
            "COPY items",
            "COPY items",
            "SELECT",
            "SELECT items"
        ]
    );
    let s = &r.spans;
    assert!(s.iter().all(|s| s.kind == SpanKind::Client && s.tid == 7));
    assert!(s.iter().all(|s| attr_str(s, "db.system.name") == Some("postgresql")));
    assert!(s.iter().all(|s| attr_str(s, "db.namespace") == Some("shop")));
    assert_eq!(attr_str(&s[1], "db.query.text"), Some("INSERT INTO items VALUES (?, ?, ?), (?, ?, ?);"));
    assert_eq!(attr_int(&s[1], "waggle.db.response.affected_rows"), Some(2));
    assert_eq!(attr_str(&s[2], "db.query.text"), Some("SELECT * FROM items WHERE name = ? AND id = ?;"));
    assert_eq!(attr_int(&s[2], "db.response.returned_rows"), Some(1));
    assert_eq!(attr_str(&s[2], "db.collection.name"), Some("items"));
    assert_eq!(attr_str(&s[2], "db.operation.name"), Some("SELECT"));
    assert_eq!(attr_str(&s[3], "db.query.text"), Some("UPDATE items SET price = ? WHERE id IN (?);"));
    assert_eq!(attr_int(&s[3], "waggle.db.response.affected_rows"), Some(2));
    assert_eq!(status_code(&s[4]), Some("42P01"));
    assert_eq!(attr_str(&s[4], "error.type"), Some("42P01"));
    assert_eq!(s[4].status, SpanStatus::Error { description: "SQLSTATE 42P01".into() });
    assert!(s.iter().enumerate().all(|(i, s)| i == 4 || s.status == SpanStatus::Unset));
    assert_eq!(attr_int(&s[6], "waggle.db.response.affected_rows"), Some(1));
    assert_eq!(attr_int(&s[8], "waggle.db.response.affected_rows"), Some(2), "COPY FROM");
    assert_eq!(attr_int(&s[9], "db.response.returned_rows"), Some(3), "COPY TO");
    assert_eq!(attr_int(&s[10], "db.response.returned_rows"), Some(100));
    assert_eq!(s[10].attr("waggle.db.response.truncated"), None);
    assert_eq!(attr_int(&s[11], "db.response.returned_rows"), Some(1));
    // Each span runs from its Q's write to the ReadyForQuery's read.
    let q_index = recs.iter().position(|(c, b)| *c && b.starts_with(b"Q\0\0\0G")).unwrap();
    assert_eq!(s[0].start_ns, 1000 * q_index as u64);
    assert_eq!(s[0].end_ns, 1000 * (q_index as u64 + 1) + 500);
    for secret in ["secret-widget", "O''Brien", "9.99", "19.5", "gadget"] {
        assert_absent(s, secret);
    }
}

#[test]
fn large_result_beyond_capture_is_hunted_not_lost() {
    let recs = records(PSQL_SESSION);
    let r = replay(&mut parser(), &recs, 4096, Role::Client);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    assert_eq!(r.spans.len(), 12);
    let big = &r.spans[10];
    assert_eq!(big.name, "SELECT");
    assert_eq!(big.attr("waggle.db.response.truncated"), Some(&AttrValue::Bool(true)));
    assert_eq!(big.attr("db.response.returned_rows"), None, "partial counts are not reported");
    // The response came in two reads (8192 + 2962 bytes): the second,
    // captured whole, ends in ReadyForQuery.
    let big_read = recs.iter().position(|(c, b)| !*c && b.len() > 4096).unwrap();
    assert!(!recs[big_read + 1].0 && recs[big_read + 1].1.ends_with(b"Z\0\0\0\x05I"));
    assert_eq!(big.end_ns, 1000 * (big_read as u64 + 1) + 500, "ends at the last read of the response");
    // Framing is back for the next query.
    assert_eq!(attr_int(&r.spans[11], "db.response.returned_rows"), Some(1));
    assert_eq!(r.spans[11].attr("waggle.db.response.truncated"), None);
}

#[test]
fn hunting_resolves_at_ready_for_query_in_an_untruncated_read() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, 0, true, &q("SELECT * FROM big"), &mut out);
    // First read: 4 KiB of 6000 captured, boundary lost.
    let mut resp = msg(b'T', &[0, 0]);
    for _ in 0..200 {
        resp.extend(msg(
            b'D',
            &[
                0, 1, 0, 0, 0, 20, b'x', b'x', b'x', b'x', b'x', b'x', b'x', b'x', b'x', b'x', b'x', b'x', b'x', b'x',
                b'x', b'x', b'x', b'x', b'x', b'x',
            ],
        ));
    }
    let first = &resp[..6000];
    let c = Chunk { bytes: &first[..4096], total_len: 6000, ..chunk(1, false, first, usize::MAX, Role::Client) };
    assert_eq!(p.on_data(&c, &mut out), Feed::Continue);
    assert!(out.is_empty());
    // Second read: the rest, small enough to be captured whole.
    let mut rest = resp[6000..].to_vec();
    rest.extend(msg(b'C', b"SELECT 200\0"));
    rest.extend(msg(b'Z', b"I"));
    assert_eq!(feed(&mut p, 2, false, &rest, &mut out), Feed::Continue);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].end_ns, 2500);
    assert_eq!(out[0].attr("waggle.db.response.truncated"), Some(&AttrValue::Bool(true)));
    // And the parser follows the next exchange normally.
    feed(&mut p, 3, true, &q("SELECT 1"), &mut out);
    feed(&mut p, 4, false, &[msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")].concat(), &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(attr_int(&out[1], "db.response.returned_rows"), Some(1));
}

#[test]
fn psql_errors_capture() {
    let r = replay(&mut parser(), &records(PSQL_ERRORS), usize::MAX, Role::Client);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    let codes: Vec<Option<&str>> = r.spans.iter().map(status_code).collect();
    assert_eq!(codes[..3], [Some("42P07"), Some("23505"), None]);
    assert_eq!(attr_int(&r.spans[2], "db.response.returned_rows"), Some(0));
    let copy = r.spans.iter().find(|s| s.name == "COPY items").unwrap();
    assert_eq!(status_code(copy), Some("23505"));
    assert_absent(&r.spans, "already exists");
    assert_absent(&r.spans, "Key (id)");
}

const TPCB: [&str; 7] = [
    "BEGIN",
    "UPDATE pgbench_accounts",
    "SELECT pgbench_accounts",
    "UPDATE pgbench_tellers",
    "UPDATE pgbench_branches",
    "INSERT pgbench_history",
    "END",
];

#[test]
fn pgbench_in_every_query_mode() {
    for (bin, mode) in [(PGBENCH_SIMPLE, "simple"), (PGBENCH_EXTENDED, "extended"), (PGBENCH_PREPARED, "prepared")] {
        // 256 bytes cuts the startup answer (framing is hunted back).
        for capture in [usize::MAX, 4096, 256] {
            let r = replay(&mut parser(), &records(bin), capture, Role::Client);
            assert!(r.feeds.is_empty(), "{mode}/{capture}: {:?}", r.feeds);
            let want: Vec<&str> = TPCB.iter().chain(TPCB.iter()).copied().collect();
            assert_eq!(names(&r.spans), want, "{mode}/{capture}");
            let select = &r.spans[2];
            assert_eq!(attr_int(select, "db.response.returned_rows"), Some(1), "{mode}/{capture}");
            assert_eq!(attr_int(&r.spans[1], "waggle.db.response.affected_rows"), Some(1), "{mode}/{capture}");
            if mode != "simple" {
                assert_eq!(
                    attr_str(&r.spans[1], "db.query.text"),
                    Some("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;")
                );
            }
            assert!(r.spans.iter().all(|s| s.status == SpanStatus::Unset));
        }
    }
}

#[test]
fn bind_parameters_never_leak() {
    let recs = records(PGBENCH_PREPARED);
    let r = replay(&mut parser(), &recs, usize::MAX, Role::Client);
    let mut checked = 0;
    // Parameter values as pgbench sent them in Bind messages.
    for (from_client, bytes) in &recs {
        if *from_client && bytes.first() == Some(&b'B') {
            let text = String::from_utf8_lossy(bytes);
            if let Some(value) = text.split(|c: char| !(c.is_ascii_digit() || c == '-')).find(|w| w.len() >= 4) {
                assert_absent(&r.spans, value);
                checked += 1;
            }
        }
    }
    assert!(checked >= 8);
}

#[test]
fn statements_prepared_before_the_agent_give_spans_without_text() {
    let recs = records(PGBENCH_PREPARED);
    // Join the connection at the second transaction's first Bind.
    let binds: Vec<usize> = recs.iter().enumerate().filter(|(_, (c, b))| *c && b[0] == b'B').map(|(i, _)| i).collect();
    let start = binds[7];
    let (from_client, first) = &recs[start];
    assert_eq!(
        PostgresDetector.detect(Role::Client, &chunk(start, *from_client, first, 4096, Role::Client)),
        Confidence::Yes
    );
    let r = replay(&mut parser(), &recs[start..], usize::MAX, Role::Client);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    assert_eq!(names(&r.spans), ["BEGIN", "UPDATE", "SELECT", "UPDATE", "UPDATE", "INSERT", "COMMIT"]);
    assert!(r.spans.iter().all(|s| s.attr("db.query.text").is_none() && s.attr("db.namespace").is_none()));
    assert!(r.spans.iter().all(|s| s.status == SpanStatus::Unset));
    assert_eq!(attr_int(&r.spans[2], "db.response.returned_rows"), Some(1));
}

#[test]
fn pipelined_executes_complete_in_order() {
    let r = replay(&mut parser(), &records(PGBENCH_PIPELINE), usize::MAX, Role::Client);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    assert_eq!(names(&r.spans), ["SELECT pgbench_accounts", "UPDATE pgbench_accounts", "SELECT"]);
    assert_eq!(attr_int(&r.spans[0], "db.response.returned_rows"), Some(1));
    assert_eq!(attr_int(&r.spans[1], "waggle.db.response.affected_rows"), Some(1));
    assert_eq!(attr_str(&r.spans[0], "db.query.text"), Some("SELECT abalance FROM pgbench_accounts WHERE aid = ?;"));
}

#[test]
fn parse_error_lands_on_the_execute() {
    let r = replay(&mut parser(), &records(PGBENCH_ERROR), usize::MAX, Role::Client);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    assert_eq!(names(&r.spans), ["SELECT missing_table"]);
    assert_eq!(status_code(&r.spans[0]), Some("42P01"));
    assert_eq!(attr_str(&r.spans[0], "db.query.text"), Some("SELECT * FROM missing_table WHERE id = ?;"));
}

#[test]
fn error_skips_the_rest_of_the_batch() {
    let mut p = parser();
    let mut out = Vec::new();
    let batch = [
        msg(b'P', b"\0SELECT 1\0\0\0"),
        msg(b'B', b"\0\0\0\0\0\0\0\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'P', b"\0SELECT nope\0\0\0"),
        msg(b'B', b"\0\0\0\0\0\0\0\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'P', b"\0SELECT 3\0\0\0"),
        msg(b'B', b"\0\0\0\0\0\0\0\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'S', b""),
    ]
    .concat();
    feed(&mut p, 0, true, &batch, &mut out);
    let resp = [
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'D', b"\0\x01\0\0\0\x011"),
        msg(b'C', b"SELECT 1\0"),
        msg(b'E', b"SERROR\0C42703\0Mcolumn \"nope\" does not exist\0\0"),
        msg(b'Z', b"I"),
    ]
    .concat();
    feed(&mut p, 1, false, &resp, &mut out);
    assert_eq!(names(&out), ["SELECT", "SELECT"]);
    assert_eq!(status_code(&out[0]), None);
    assert_eq!(status_code(&out[1]), Some("42703"));
    assert_eq!(attr_str(&out[1], "db.query.text"), Some("SELECT nope"));
    assert!(p.conn().pending.is_empty());
    // The next batch pairs up correctly.
    feed(&mut p, 2, true, &q("SELECT 2"), &mut out);
    feed(&mut p, 3, false, &[msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")].concat(), &mut out);
    assert_eq!(attr_str(&out[2], "db.query.text"), Some("SELECT ?"));
    assert_eq!(status_code(&out[2]), None);
}

#[test]
fn closed_and_unknown_statements() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, 0, true, &[msg(b'P', b"s1\0SELECT 1\0\0\0"), msg(b'S', b"")].concat(), &mut out);
    feed(&mut p, 1, false, &[msg(b'1', b""), msg(b'Z', b"I")].concat(), &mut out);
    let exec = |stmt: &[u8]| {
        let mut bind = vec![0];
        bind.extend_from_slice(stmt);
        bind.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        [msg(b'B', &bind), msg(b'E', b"\0\0\0\0\0"), msg(b'S', b"")].concat()
    };
    let done = [msg(b'2', b""), msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")].concat();
    feed(&mut p, 2, true, &exec(b"s1\0"), &mut out);
    feed(&mut p, 3, false, &done, &mut out);
    // Close the statement: a later Bind of it has no text.
    feed(&mut p, 4, true, &[msg(b'C', b"Ss1\0"), msg(b'S', b"")].concat(), &mut out);
    feed(&mut p, 5, false, &[msg(b'3', b""), msg(b'Z', b"I")].concat(), &mut out);
    feed(&mut p, 6, true, &exec(b"s1\0"), &mut out);
    feed(&mut p, 7, false, &done, &mut out);
    assert_eq!(names(&out), ["SELECT", "SELECT"]);
    assert_eq!(attr_str(&out[0], "db.query.text"), Some("SELECT ?"));
    assert_eq!(out[1].attr("db.query.text"), None);
    assert_eq!(attr_str(&out[1], "db.operation.name"), Some("SELECT"));
}

#[test]
fn statement_cache_is_bounded() {
    let mut p = parser();
    let mut out = Vec::new();
    for i in 0..3000 {
        let name = format!("stmt_{i}\0");
        let body = [name.as_bytes(), b"SELECT * FROM t WHERE a = $1\0\0\0"].concat();
        assert_eq!(feed(&mut p, i, true, &msg(b'P', &body), &mut out), Feed::Continue);
    }
    assert_eq!(p.wire().statements.len(), MAX_STATEMENTS);
    let mut big = Vec::new();
    for i in 0..200 {
        let name = format!("big_{i}\0");
        let text = format!("SELECT {} FROM t\0\0\0", "c".repeat(4000));
        big.push(msg(b'P', &[name.as_bytes(), text.as_bytes()].concat()));
    }
    for (i, m) in big.iter().enumerate() {
        feed(&mut p, i, true, m, &mut out);
    }
    assert!(p.wire().statements.len() < MAX_STATEMENTS, "the byte budget bounds big statements");
}

#[test]
fn encryption_negotiation() {
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    for (answer, want) in [(b'S', Feed::Opaque("postgres: TLS negotiated")), (b'N', Feed::Continue)] {
        let mut p = parser();
        let mut out = Vec::new();
        assert_eq!(feed(&mut p, 0, true, &ssl, &mut out), Feed::Continue);
        assert_eq!(feed(&mut p, 1, false, &[answer], &mut out), want);
        // `S`: a TLS handshake follows (the tracker watches for its version).
        assert_eq!(p.switched_to_tls(), answer == b'S');
    }
    let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, 0, true, &gss, &mut out);
    assert!(matches!(feed(&mut p, 1, false, b"G", &mut out), Feed::Opaque(_)));
    assert!(!p.switched_to_tls(), "GSSAPI encryption is not TLS");
    let mut p = parser();
    feed(&mut p, 0, true, &ssl, &mut out);
    assert!(matches!(feed(&mut p, 1, false, b"X", &mut out), Feed::LostSync(_)));
}

#[test]
fn cancel_request_is_ignored() {
    let mut cancel = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    cancel.extend_from_slice(&[0, 0, 0x30, 0x39, 1, 2, 3, 4]);
    assert_eq!(PostgresDetector.detect(Role::Client, &chunk(0, true, &cancel, 4096, Role::Client)), Confidence::Yes);
    let mut p = parser();
    let mut out = Vec::new();
    assert_eq!(feed(&mut p, 0, true, &cancel, &mut out), Feed::Continue);
    assert!(out.is_empty());
}

#[test]
fn server_role_mirrors_directions() {
    let mut p = PostgresParser::new(Role::Server, &ParserConfig::default());
    let r = replay(&mut p, &records(PSQL_SESSION), usize::MAX, Role::Server);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    assert_eq!(r.spans.len(), 12);
    assert!(r.spans.iter().all(|s| s.kind == SpanKind::Server));
    assert_eq!(r.spans[2].name, "SELECT items");
}

#[test]
fn truncated_query_text_is_marked_and_sanitized() {
    let text = format!("SELECT * FROM items WHERE name = '{}'", "secret".repeat(1000));
    let m = q(&text);
    let mut p = parser();
    let mut out = Vec::new();
    let c = Chunk { bytes: &m[..4096], total_len: m.len() as u64, ..chunk(0, true, &m, usize::MAX, Role::Client) };
    assert_eq!(p.on_data(&c, &mut out), Feed::Continue);
    feed(&mut p, 1, false, &[msg(b'C', b"SELECT 0\0"), msg(b'Z', b"I")].concat(), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(attr_str(&out[0], "db.query.text"), Some("SELECT * FROM items WHERE name = ?"));
    assert_eq!(out[0].attr("waggle.db.query.truncated"), Some(&AttrValue::Bool(true)));
    assert_absent(&out, "secret");
}

#[test]
fn raw_sql_mode_keeps_literals() {
    let mut p = PostgresParser::new(Role::Client, &ParserConfig { raw_sql: true, ..ParserConfig::default() });
    let mut out = Vec::new();
    feed(&mut p, 0, true, &q("SELECT * FROM t WHERE a = 'x'"), &mut out);
    feed(&mut p, 1, false, &[msg(b'C', b"SELECT 0\0"), msg(b'Z', b"I")].concat(), &mut out);
    assert_eq!(attr_str(&out[0], "db.query.text"), Some("SELECT * FROM t WHERE a = 'x'"));
}

#[test]
fn lost_frontend_framing_is_reported() {
    let mut p = parser();
    let mut out = Vec::new();
    // A Bind with a large parameter: Execute and Sync fall into the
    // uncaptured part of the write.
    let mut bind = b"\0\0\0\0\0\x01".to_vec();
    bind.extend_from_slice(&6000u32.to_be_bytes());
    bind.extend(std::iter::repeat_n(b'v', 6000));
    bind.extend_from_slice(&[0, 0]);
    let write = [msg(b'B', &bind), msg(b'E', b"\0\0\0\0\0"), msg(b'S', b"")].concat();
    let c = Chunk {
        bytes: &write[..4096],
        total_len: write.len() as u64,
        ..chunk(0, true, &write, usize::MAX, Role::Client)
    };
    assert!(matches!(p.on_data(&c, &mut out), Feed::LostSync(_)));
}

#[test]
fn pipelined_batches_with_lost_response_framing_are_dropped_and_reported() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, 0, true, &[q("SELECT * FROM a"), q("SELECT * FROM b")].concat(), &mut out);
    assert!(p.conn().pending.pipelined());
    let big = [msg(b'T', &[0, 0]), msg(b'D', &vec![0; 8000])].concat();
    let c = Chunk {
        bytes: &big[..4096],
        total_len: big.len() as u64 + 20,
        ..chunk(1, false, &big, usize::MAX, Role::Client)
    };
    assert_eq!(p.on_data(&c, &mut out), Feed::Continue);
    let tail = [msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")].concat();
    assert!(matches!(feed(&mut p, 2, false, &tail, &mut out), Feed::LostSync(_)));
    assert!(out.is_empty());
}

#[test]
fn idle_drops_unanswered_requests_and_flushes_hunts() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, 5, true, &q("SELECT pg_sleep(1000)"), &mut out);
    p.on_idle(10, &mut out);
    assert_eq!(p.conn().pending.len(), 1, "younger than the cut-off");
    p.on_idle(10_000, &mut out);
    assert!(p.conn().pending.is_empty());
    assert!(out.is_empty());
    assert!(matches!(feed(&mut p, 1, false, &msg(b'Z', b"I"), &mut out), Feed::LostSync(_)));

    let mut p = parser();
    feed(&mut p, 0, true, &q("SELECT * FROM big"), &mut out);
    let big = [msg(b'T', &[0, 0]), msg(b'D', &vec![0; 8000])].concat();
    let c = Chunk { bytes: &big[..4096], total_len: 9000, ..chunk(1, false, &big, usize::MAX, Role::Client) };
    p.on_data(&c, &mut out);
    p.on_idle(10_000, &mut out);
    assert_eq!(names(&out), ["SELECT big"]);
    assert_eq!(out[0].end_ns, 1500);
}

#[test]
fn drops_are_counted() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, 0, true, &[q("SELECT 1"), q("SELECT 2")].concat(), &mut out);
    p.on_close(1, &mut out);
    assert_eq!(p.take_dropped(), 2);
    assert_eq!(p.take_dropped(), 0);
    // A completion for a request never seen.
    let mut p = parser();
    feed(&mut p, 0, false, &[msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")].concat(), &mut out);
    assert_eq!(p.take_dropped(), 1);
    // Lost sync with a request in flight.
    let mut p = parser();
    feed(&mut p, 0, true, &q("SELECT 1"), &mut out);
    assert!(matches!(feed(&mut p, 1, true, b"\x01\0\0\0\x05x", &mut out), Feed::LostSync(_)));
    assert_eq!(p.take_dropped(), 1);
    assert!(out.is_empty());
    // Completed exchanges are not drops.
    let r = replay(&mut parser(), &records(PSQL_SESSION), usize::MAX, Role::Client);
    assert_eq!(r.spans.len(), 12);
}

#[test]
fn detector_accepts_protocol_openings() {
    let d = PostgresDetector;
    for bin in ALL {
        let recs = records(bin);
        let (c, first) = &recs[0];
        assert_eq!(d.detect(Role::Client, &chunk(0, *c, first, 4096, Role::Client)), Confidence::Yes);
        // And the DB server sees the same bytes as ingress.
        assert_eq!(d.detect(Role::Server, &chunk(0, *c, first, 4096, Role::Server)), Confidence::Yes);
        // Every request write of the captures is a place to resync.
        for (k, (c, bytes)) in recs.iter().enumerate() {
            if *c && matches!(bytes[0], b'Q' | b'P' | b'B') {
                assert_eq!(
                    d.detect(Role::Client, &chunk(k, *c, bytes, 4096, Role::Client)),
                    Confidence::Yes,
                    "{bytes:?}"
                );
            }
            if !*c {
                assert_eq!(d.detect(Role::Client, &chunk(k, *c, bytes, 4096, Role::Client)), Confidence::No);
            }
        }
    }
    let startup = &records(PSQL_SESSION)[2].1;
    assert_eq!(d.detect(Role::Client, &chunk(0, true, startup, 4096, Role::Client)), Confidence::Yes);
    assert_eq!(d.detect(Role::Client, &chunk(0, true, &startup[..3], 4096, Role::Client)), Confidence::NeedMore);
}

#[test]
fn detector_rejects_other_protocols_and_noise() {
    let d = PostgresDetector;
    let no = |bytes: &[u8]| d.detect(Role::Client, &chunk(0, true, bytes, 4096, Role::Client));
    for http in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"POST /api HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"PUT /x HTTP/1.1\r\n\r\n",
        b"PATCH /x HTTP/1.1\r\n\r\n",
        b"BIND /x HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        assert_eq!(no(http), Confidence::No, "{:?}", String::from_utf8_lossy(http));
    }
    // MySQL COM_QUERY and handshake packets.
    assert_eq!(no(b"\x09\x00\x00\x00\x03SELECT 1"), Confidence::No);
    assert_eq!(
        no(b"\x51\x00\x00\x00\x03SELECT * FROM t WHERE x = 1 AND y = 2 AND z = 3 ORDER BY a LIMIT 9"),
        Confidence::No
    );
    // TLS ClientHello.
    assert_eq!(no(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), Confidence::No);
    // A Q with binary garbage, a Q whose length overruns the write.
    assert_eq!(no(&msg(b'Q', b"\x01\x02\x03\0")), Confidence::No);
    assert_eq!(no(&q("SELECT 1")[..8]), Confidence::No);
    let mut rng = Lcg(42);
    for _ in 0..20_000 {
        let len = 1 + rng.below(64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        assert_ne!(no(&bytes), Confidence::Yes, "{bytes:?}");
    }
}

#[test]
fn fuzz_script_runs_captures_and_mutations() {
    fuzz_captures_and_mutations(ALL, fuzz_script, 2 * 20);
}

#[test]
fn never_panics_on_garbage_or_odd_captures() {
    garbage_never_panics(ALL, 7, &[1, 2, 5, 6, 9, 13, 40, 100, 4096], &["secret-widget", "O''Brien"], parser);
}

#[test]
fn string_literals_follow_the_servers_standard_conforming_strings() {
    let sql = "SELECT * FROM t WHERE a = 'x\\' AND b = 'secret'";
    let text_after = |status: Option<&str>| {
        let mut p = parser();
        let mut out = Vec::new();
        let mut k = 0;
        if let Some(value) = status {
            // Start-up: the server reports its parameters after the login.
            let login = [&[0u8, 3, 0, 0][..], b"user\0u\0\0"].concat();
            let startup = [&(login.len() as u32 + 4).to_be_bytes()[..], &login].concat();
            feed(&mut p, k, true, &startup, &mut out);
            let body = [&b"standard_conforming_strings\0"[..], value.as_bytes(), b"\0"].concat();
            let answer = [msg(b'R', &[0, 0, 0, 0]), msg(b'S', &body), msg(b'Z', b"I")].concat();
            feed(&mut p, k + 1, false, &answer, &mut out);
            k += 2;
        }
        feed(&mut p, k, true, &q(sql), &mut out);
        let done = [msg(b'C', b"SELECT 0\0"), msg(b'Z', b"I")].concat();
        feed(&mut p, k + 1, false, &done, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        attr_str(&out[0], "db.query.text").map(str::to_owned)
    };
    // on: 'x\' ends at its second quote, 'secret' is a literal of its own.
    assert_eq!(text_after(Some("on")).as_deref(), Some("SELECT * FROM t WHERE a = ? AND b = ?"));
    // off: the first literal runs to "b = " and secret is a bare word, as
    // the server reads it (the statement is broken there either way).
    assert_eq!(text_after(Some("off")).as_deref(), Some("SELECT * FROM t WHERE a = ?secret?"));
    // Not seen: hidden from the first ambiguous literal on.
    assert_eq!(text_after(None).as_deref(), Some("SELECT * FROM t WHERE a = ?"));
}
