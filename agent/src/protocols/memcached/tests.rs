//! memcached parser tests, most on traffic recorded from real clients and a
//! real memcached 1.6 (`../testdata/memcached`).
use waggle_common::Role;

use super::{fuzz_script, MemcachedDetector, MemcachedParser};
use crate::model::{AttrValue, ParsedSpan, SpanKind, SpanStatus};
use crate::protocols::sql::replay::{assert_absent, attr_int, attr_str, chunk, names, records, replay};
use crate::protocols::sql::replay::{fuzz_captures_and_mutations, garbage_never_panics};
use crate::protocols::{Chunk, Confidence, Feed, ParserConfig, ProtocolDetector, ProtocolParser};

const SESSION: &[u8] = include_bytes!("../testdata/memcached/text_session.bin");
const PYMEMCACHE: &[u8] = include_bytes!("../testdata/memcached/pymemcache.bin");
const ALL: &[&[u8]] = &[SESSION, PYMEMCACHE];

fn parser() -> MemcachedParser {
    MemcachedParser::new(Role::Client, &ParserConfig::default())
}

fn with_keys() -> MemcachedParser {
    MemcachedParser::new(Role::Client, &ParserConfig { cache_keys: true, ..ParserConfig::default() })
}

fn text(s: &ParsedSpan) -> &str {
    attr_str(s, "db.query.text").unwrap_or_default()
}

fn hits(s: &ParsedSpan) -> Option<i64> {
    attr_int(s, "db.response.returned_rows")
}

#[test]
fn text_session_gives_one_span_per_command() {
    let recs = records(SESSION);
    let mut p = parser();
    let r = replay(&mut p, &recs, usize::MAX, Role::Client);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    let want = [
        "set",
        "get",
        "get",
        "gets",
        "add",
        "set",
        "incr",
        "decr",
        "incr",
        "touch",
        "gat",
        "append",
        "prepend",
        "cas",
        "delete",
        "delete",
        "set",
        "get",
        "_OTHER",
        "set",
        "_OTHER",
        "version",
        "verbosity",
        "set",
        "get",
        "stats",
        "flush_all",
    ];
    assert_eq!(names(&r.spans), want);
    let s = &r.spans;
    assert!(s.iter().all(|s| s.kind == SpanKind::Client && attr_str(s, "db.system.name") == Some("memcached")));
    assert!(s.iter().all(|s| s.attr("db.namespace").is_none()));
    assert_eq!(text(&s[0]), "set ? ? ? ?");
    assert_eq!(text(&s[3]), "gets ? ? ?");
    assert_eq!(text(&s[10]), "gat ? ? ?");
    assert_eq!(text(&s[16]), "set ? ? ? ? noreply");
    // Hits: one of one, none, one of three, two of two.
    assert_eq!([hits(&s[1]), hits(&s[2]), hits(&s[3]), hits(&s[10])], [Some(1), Some(0), Some(1), Some(2)]);
    assert_eq!(hits(&s[0]), None);
    // A noreply set ends with its write; the get after it is answered.
    let quiet = recs.iter().position(|(c, b)| *c && b.starts_with(b"set quiet")).unwrap() as u64;
    assert_eq!((s[16].start_ns, s[16].end_ns), (1000 * quiet, 1000 * quiet + 500));
    assert_eq!(hits(&s[17]), Some(1));
    // Errors: the unknown command, the bad data chunk and what the server
    // made of its tail.
    let errors: Vec<(usize, &str)> =
        (0..s.len()).filter_map(|i| attr_str(&s[i], "error.type").map(|e| (i, e))).collect();
    assert_eq!(errors, [(18, "ERROR"), (19, "CLIENT_ERROR"), (20, "ERROR")]);
    assert_eq!(s[19].status, SpanStatus::Error { description: "memcached error CLIENT_ERROR".into() });
    // NOT_STORED, EXISTS, NOT_FOUND are answers.
    assert!([4, 8, 13, 15].iter().all(|i| s[*i].status == SpanStatus::Unset));
    // "get big" was written before "set big" was answered.
    assert_eq!(s[24].start_ns, 44_000);
    assert_eq!((s[23].end_ns, s[24].end_ns), (45_500, 46_500));
    assert_eq!(hits(&s[24]), Some(1));
    for secret in ["secret-value-1", "secret-quiet", "user:1", "toolong"] {
        assert_absent(s, secret);
    }
    assert_eq!(p.take_dropped(), 0);
}

#[test]
fn keys_are_shown_only_when_configured() {
    let r = replay(&mut with_keys(), &records(SESSION), usize::MAX, Role::Client);
    let s = &r.spans;
    assert_eq!(text(&s[0]), "set user:1 ? ? ?");
    assert_eq!(text(&s[3]), "gets user:1 missing user:2");
    assert_eq!(text(&s[10]), "gat ? n user:1");
    assert_eq!(text(&s[6]), "incr n ?");
    assert_eq!(text(&s[21]), "version");
    assert_absent(s, "secret-value-1");
}

#[test]
fn pymemcache_noreply_and_multi_get() {
    let r = replay(&mut parser(), &records(PYMEMCACHE), usize::MAX, Role::Client);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    assert_eq!(names(&r.spans), ["set", "set", "get", "get", "incr", "add", "delete"]);
    let s = &r.spans;
    // Both sets were in one write; only the second waits for STORED.
    assert_eq!((s[0].start_ns, s[0].end_ns), (0, 500));
    assert_eq!((s[1].start_ns, s[1].end_ns), (0, 1500));
    assert_eq!(text(&s[3]), "get ? ? ?");
    assert_eq!(hits(&s[3]), Some(2));
    assert_absent(s, "secret-pm");
}

#[test]
fn values_larger_than_the_capture_are_skipped_by_count() {
    let recs = records(SESSION);
    for capture in [4096, 512, 64] {
        let mut p = parser();
        let r = replay(&mut p, &recs, capture, Role::Client);
        assert!(r.feeds.is_empty(), "capture {capture}: {:?}", r.feeds);
        assert_eq!(r.spans.len(), 27, "capture {capture}");
        // Its END fell into uncaptured bytes: the reply ends at the last
        // read before the next command, and a partial hit count is not
        // reported.
        let get_big = &r.spans[24];
        assert_eq!((get_big.name.as_str(), hits(get_big)), ("get", None), "capture {capture}");
        assert_eq!(get_big.attr("waggle.db.response.truncated"), Some(&AttrValue::Bool(true)));
        assert_eq!(get_big.end_ns, 46_500);
        assert_eq!(hits(&r.spans[17]), Some(1), "small values are counted whatever the capture");
        // The stats reply (2.2 KB of lines) is hunted when cut.
        let stats = &r.spans[25];
        assert_eq!(stats.end_ns, 48_500);
        assert_eq!(stats.attr("waggle.db.response.truncated").is_some(), capture < 2217, "capture {capture}");
        assert_eq!(p.take_dropped(), 0);
    }
}

#[test]
fn split_at_every_byte_gives_the_same_spans() {
    let cmds: &[u8] = b"set k 0 0 5\r\nhello\r\nget k j\r\ndelete k noreply\r\nincr n 1\r\n";
    let replies: &[u8] = b"STORED\r\nVALUE k 0 5\r\nhello\r\nEND\r\nSERVER_ERROR out of memory\r\n";
    for i in 0..=cmds.len() {
        for j in 0..=replies.len() {
            let mut p = parser();
            let mut out = Vec::new();
            for (k, part) in [&cmds[..i], &cmds[i..]].iter().enumerate() {
                if !part.is_empty() {
                    assert_eq!(p.on_data(&p_chunk(k, true, part), &mut out), Feed::Continue);
                }
            }
            for (k, part) in [&replies[..j], &replies[j..]].iter().enumerate() {
                if !part.is_empty() {
                    assert_eq!(p.on_data(&p_chunk(k + 2, false, part), &mut out), Feed::Continue);
                }
            }
            let mut got = names(&out);
            got.sort_unstable();
            assert_eq!(got, ["delete", "get", "incr", "set"], "split at {i}/{j}");
            let incr = out.iter().find(|s| s.name == "incr").unwrap();
            assert_eq!(attr_str(incr, "error.type"), Some("SERVER_ERROR"));
            assert_eq!(hits(out.iter().find(|s| s.name == "get").unwrap()), Some(1));
            assert_eq!(p.take_dropped(), 0);
        }
    }
}

fn p_chunk(k: usize, from_client: bool, b: &[u8]) -> Chunk<'_> {
    chunk(k, from_client, b, usize::MAX, Role::Client)
}

#[test]
fn detector_claims_memcached_commands_only() {
    let d = MemcachedDetector;
    let c = |b: &'static [u8]| p_chunk(0, true, b);
    for yes in [
        &b"get user:1\r\n"[..],
        b"get a b c\r\n",
        b"set k 0 60 5\r\nhello\r\n",
        b"set k 0 60 5 noreply\r\nhello\r\n",
        b"cas k 0 0 2 17\r\nxx\r\n",
        b"delete k\r\n",
        b"incr n 1\r\n",
        b"gat 30 a b\r\n",
        b"version\r\n",
        b"stats\r\n",
        b"stats slabs\r\n",
        b"flush_all\r\n",
    ] {
        assert_eq!(d.detect(Role::Client, &c(yes)), Confidence::Yes, "{:?}", String::from_utf8_lossy(yes));
    }
    for need in [&b"ge"[..], b"get user", b"set k 0 0"] {
        assert_eq!(d.detect(Role::Client, &c(need)), Confidence::NeedMore, "{:?}", String::from_utf8_lossy(need));
    }
    for no in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"set k x 0 5\r\n",
        b"get\r\n",
        b"get a\n",
        b"hello\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        b"EHLO mail\r\n",
        b"get a\x01b\r\n",
    ] {
        assert_eq!(d.detect(Role::Client, &c(no)), Confidence::No, "{:?}", String::from_utf8_lossy(no));
    }
    assert_eq!(d.detect(Role::Client, &p_chunk(0, false, b"get a\r\n")), Confidence::No, "replies are not claimed");
    let truncated = Chunk { total_len: 100, ..c(b"get user") };
    assert_eq!(d.detect(Role::Client, &truncated), Confidence::No);
}

#[test]
fn replies_without_commands_are_dropped_and_unanswered_commands_expire() {
    let mut p = parser();
    let mut out = Vec::new();
    p.on_data(&p_chunk(0, false, b"STORED\r\n"), &mut out);
    assert_eq!((out.len(), p.take_dropped()), (0, 1));
    p.on_data(&p_chunk(1, true, b"get a\r\n"), &mut out);
    p.on_idle(10_000_000, &mut out);
    assert_eq!(p.take_dropped(), 1);
    assert!(matches!(p.on_data(&p_chunk(2, false, b"END\r\n"), &mut out), Feed::LostSync(_)));
    assert!(out.is_empty());
    // An unexpected line in a get's reply: hunted to the next command.
    let mut p = parser();
    p.on_data(&p_chunk(3, true, b"get a\r\n"), &mut out);
    p.on_data(&p_chunk(4, false, b"WAT\r\n"), &mut out);
    p.on_data(&p_chunk(5, true, b"version\r\n"), &mut out);
    p.on_data(&p_chunk(6, false, b"VERSION 1.6.18\r\n"), &mut out);
    assert_eq!(names(&out), ["get", "version"]);
    assert_eq!(out[0].attr("waggle.db.response.truncated"), Some(&AttrValue::Bool(true)));
    assert_eq!(out[0].end_ns, 4500);
}

#[test]
fn fuzz_harness_runs_captures_and_mutations() {
    fuzz_captures_and_mutations(ALL, fuzz_script, 2 * 20);
}

#[test]
fn garbage_and_cut_captures_never_panic_or_leak() {
    garbage_never_panics(ALL, 9, &[1, 7, 64, 200, 4096], &["secret-value-1", "secret-quiet", "secret-pm"], parser);
}

#[test]
fn the_kept_fuzz_corpus_runs_clean() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/memcached");
    let mut spans = 0;
    for entry in std::fs::read_dir(dir).expect("fuzz/corpus/memcached") {
        spans += fuzz_script(&std::fs::read(entry.expect("corpus entry").path()).expect("corpus file"));
    }
    assert!(spans >= 40, "the seeds reach the span paths: {spans} spans");
}
