//! Redis parser tests, most on traffic recorded from real clients and a
//! real redis-server 7.0 (`../testdata/redis`).
use waggle_common::Role;

use super::{fuzz_script, RedisDetector, RedisParser};
use crate::model::{AttrValue, ParsedSpan, SpanKind, SpanStatus};
use crate::protocols::sql::replay::{assert_absent, attr_str, chunk, names, records, replay, Lcg};
use crate::protocols::sql::replay::{fuzz_captures_and_mutations, garbage_never_panics};
use crate::protocols::{Chunk, Confidence, Feed, ParserConfig, ProtocolDetector, ProtocolParser};

const CLI_SESSION: &[u8] = include_bytes!("../testdata/redis/redis_cli_session.bin");
const PIPELINE: &[u8] = include_bytes!("../testdata/redis/redispy_pipeline.bin");
const RESP3: &[u8] = include_bytes!("../testdata/redis/redispy_resp3.bin");
const PUBSUB3: &[u8] = include_bytes!("../testdata/redis/redispy_pubsub_resp3.bin");
const PUBSUB2: &[u8] = include_bytes!("../testdata/redis/redispy_pubsub_resp2.bin");
const BIG: &[u8] = include_bytes!("../testdata/redis/redispy_big.bin");
const ALL: &[&[u8]] = &[CLI_SESSION, PIPELINE, RESP3, PUBSUB3, PUBSUB2, BIG];

/// The redis-py handshake (HELLO 3, then three CLIENT commands redis 7.0
/// does not know).
const HANDSHAKE: [&str; 4] = ["HELLO", "CLIENT MAINT_NOTIFICATIONS", "CLIENT SETINFO", "CLIENT SETINFO"];

fn parser() -> RedisParser {
    RedisParser::new(Role::Client, &ParserConfig::default())
}

fn with_keys() -> RedisParser {
    RedisParser::new(Role::Client, &ParserConfig { cache_keys: true, ..ParserConfig::default() })
}

fn text(s: &ParsedSpan) -> Option<&str> {
    attr_str(s, "db.query.text")
}

fn error_type(s: &ParsedSpan) -> Option<&str> {
    attr_str(s, "error.type")
}

fn queued(s: &ParsedSpan) -> bool {
    s.attr("waggle.db.redis.queued") == Some(&AttrValue::Bool(true))
}

/// Feeds `bytes` in pieces cut at `cuts`, all in direction `from_client`.
fn feed_split(
    p: &mut RedisParser,
    k: usize,
    from_client: bool,
    bytes: &[u8],
    cuts: &[usize],
    out: &mut Vec<ParsedSpan>,
) {
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        if cut > at {
            assert_eq!(
                p.on_data(&chunk(k, from_client, &bytes[at..cut], usize::MAX, Role::Client), out),
                Feed::Continue
            );
            at = cut;
        }
    }
}

/// Replays as the connection layer would: on lost sync the parser is
/// replaced by a fresh one once the detector recognises a chunk again.
fn replay_redetecting(recs: &[(bool, Vec<u8>)], capture: usize) -> (Vec<ParsedSpan>, usize, u64) {
    let mut spans = Vec::new();
    let mut parser: Option<RedisParser> = Some(parser());
    let mut losses = 0;
    let mut dropped = 0;
    for (k, (from_client, bytes)) in recs.iter().enumerate() {
        let c = chunk(k, *from_client, bytes, capture, Role::Client);
        if parser.is_none() && RedisDetector.detect(Role::Client, &c) == Confidence::Yes {
            parser = Some(self::parser());
        }
        if let Some(p) = &mut parser {
            let feed = p.on_data(&c, &mut spans);
            dropped += p.take_dropped();
            if feed != Feed::Continue {
                losses += 1;
                parser = None;
            }
        }
    }
    (spans, losses, dropped)
}

#[test]
fn redis_cli_session_gives_one_span_per_command() {
    let recs = records(CLI_SESSION);
    let mut p = parser();
    let r = replay(&mut p, &recs, usize::MAX, Role::Client);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    assert_eq!(
        names(&r.spans),
        [
            "COMMAND DOCS",
            "SET",
            "GET",
            "HSET",
            "HGETALL",
            "LPUSH",
            "GET",
            "INCR",
            "FOOBAR",
            "SELECT",
            "SET",
            "GET",
            "MULTI",
            "SET",
            "INCR",
            "EXEC",
            "CLIENT SETNAME",
            "MGET",
            "DEL"
        ]
    );
    let s = &r.spans;
    assert!(s.iter().all(|s| s.kind == SpanKind::Client && attr_str(s, "db.system.name") == Some("redis")));
    assert!(s.iter().all(|s| attr_str(s, "db.operation.name") == Some(s.name.as_str())));
    let texts: Vec<_> = s.iter().map(|s| text(s).unwrap_or_default()).collect();
    assert_eq!(texts[1], "SET ? ?");
    assert_eq!(texts[3], "HSET ? ? ? ? ?");
    assert_eq!(texts[9], "SELECT ?");
    assert_eq!(texts[16], "CLIENT SETNAME ?");
    assert_eq!(texts[17], "MGET ? ? ?");
    // SELECT 2 moves the spans after it (not itself) to database 2.
    let ns: Vec<_> = s.iter().map(|s| attr_str(s, "db.namespace").unwrap_or_default()).collect();
    assert!(ns[..10].iter().all(|n| *n == "0") && ns[10..].iter().all(|n| *n == "2"), "{ns:?}");
    // Errors: the code only, never the message.
    assert_eq!(error_type(&s[6]), Some("WRONGTYPE"));
    assert_eq!(attr_str(&s[6], "db.response.status_code"), Some("WRONGTYPE"));
    assert_eq!(s[6].status, SpanStatus::Error { description: "redis error WRONGTYPE".into() });
    assert_eq!(error_type(&s[8]), Some("ERR"));
    let errors: Vec<usize> = (0..s.len()).filter(|i| s[*i].status != SpanStatus::Unset).collect();
    assert_eq!(errors, [6, 8]);
    // MULTI/EXEC: the queued commands end at QUEUED, EXEC runs them.
    let queued: Vec<usize> = (0..s.len()).filter(|i| queued(&s[*i])).collect();
    assert_eq!(queued, [13, 14]);
    // Each span runs from its command's write to its reply's read.
    let set = recs.iter().position(|(c, b)| *c && b.starts_with(b"*3\r\n$3\r\nSET")).unwrap();
    assert_eq!((s[1].start_ns, s[1].end_ns), (1000 * set as u64, 1000 * (set as u64 + 1) + 500));
    for secret in ["secret-value-1", "v-secret-a", "secret-db2", "secret-tx", "app-secret", "user:1", "counter:1"] {
        assert_absent(s, secret);
    }
    assert_eq!((p.take_dropped(), p.take_skipped()), (0, 0));
}

#[test]
fn keys_are_shown_only_when_configured() {
    let r = replay(&mut with_keys(), &records(CLI_SESSION), usize::MAX, Role::Client);
    let texts: Vec<_> = r.spans.iter().map(|s| text(s).unwrap_or_default()).collect();
    assert_eq!(texts[1], "SET user:1 ?");
    assert_eq!(texts[2], "GET user:1");
    assert_eq!(texts[3], "HSET h:1 ? ? ? ?");
    assert_eq!(texts[9], "SELECT ?", "SELECT has no key");
    assert_eq!(texts[16], "CLIENT SETNAME ?", "container commands have no keys");
    assert_eq!(texts[17], "MGET user:1 missing k2");
    assert_eq!(texts[18], "DEL user:1 h:1");
    for secret in ["secret-value-1", "v-secret-a", "secret-db2", "secret-tx", "app-secret"] {
        assert_absent(&r.spans, secret);
    }
    // AUTH's password is never a key.
    let mut p = with_keys();
    let mut out = Vec::new();
    p.on_data(
        &chunk(0, true, b"*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$6\r\npa55wd\r\n", usize::MAX, Role::Client),
        &mut out,
    );
    p.on_data(&chunk(1, false, b"+OK\r\n", usize::MAX, Role::Client), &mut out);
    assert_eq!(text(&out[0]), Some("AUTH ? ?"));
}

#[test]
fn reply_larger_than_the_capture_ends_at_the_next_command() {
    // COMMAND DOCS is answered with 173 KB in reads of 64 KiB: cut at 4096
    // bytes, its lines fall into uncaptured bytes.
    let recs = records(CLI_SESSION);
    for capture in [4096, 1024, 200] {
        let mut p = parser();
        let r = replay(&mut p, &recs, capture, Role::Client);
        assert!(r.feeds.is_empty(), "capture {capture}: {:?}", r.feeds);
        assert_eq!(r.spans.len(), 19, "capture {capture}");
        let docs = &r.spans[0];
        assert_eq!(docs.name, "COMMAND DOCS");
        assert_eq!(docs.attr("waggle.db.response.truncated"), Some(&AttrValue::Bool(true)));
        // The last read of the reply is record 3.
        assert_eq!(docs.end_ns, 3500);
        assert!(r.spans[1..].iter().all(|s| s.attr("waggle.db.response.truncated").is_none()));
        assert_eq!(p.take_dropped(), 0);
    }
}

#[test]
fn values_larger_than_the_capture_are_framed_by_length() {
    let recs = records(BIG);
    let (spans, losses, dropped) = replay_redetecting(&recs, usize::MAX);
    assert_eq!((losses, dropped), (0, 0));
    let want = [&HANDSHAKE[..], &["SET", "GET", "DEL", "RPUSH", "LRANGE", "GET"]].concat();
    assert_eq!(names(&spans), want);
    assert!(text(&spans[7]).unwrap().starts_with("RPUSH ? ? ? ?"));
    assert!(text(&spans[7]).unwrap().len() <= crate::protocols::kv::MAX_TEXT);
    assert!(text(&spans[7]).unwrap().ends_with(" ..."), "long commands are cut: {:?}", text(&spans[7]));
    assert_eq!(spans[7].attr("waggle.db.query.truncated"), Some(&AttrValue::Bool(true)));
    // Cut at 4096 bytes: the 20 KB value of SET and GET is skipped by
    // count; RPUSH's 1002 arguments (two 6-8 KB writes) lose the command
    // framing; LRANGE's 14 KB reply is hunted to its end.
    let (spans, losses, dropped) = replay_redetecting(&recs, 4096);
    assert_eq!((losses, dropped), (1, 0), "RPUSH is lost (LostSync), nothing else");
    assert_eq!(names(&spans), [&HANDSHAKE[..], &["SET", "GET", "DEL", "LRANGE", "GET"]].concat());
    let set = &spans[4];
    assert_eq!(set.end_ns, 11_500, "SET ends at +OK (record 11)");
    assert!(set.attr("waggle.db.response.truncated").is_none());
    assert_eq!(spans[5].end_ns, 13_500);
    assert_eq!(spans[7].attr("waggle.db.response.truncated"), Some(&AttrValue::Bool(true)));
    assert_eq!(spans[7].end_ns, 20_500);
    assert_eq!(spans[8].end_ns, 22_500);
}

#[test]
fn pipelined_commands_match_replies_in_order() {
    let recs = records(PIPELINE);
    let r = replay(&mut parser(), &recs, usize::MAX, Role::Client);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    let want = [
        &HANDSHAKE[..],
        // redis-py sends INCR as INCRBY.
        &["SET", "SET", "SET", "SET", "SET", "GET", "HGETALL", "INCRBY", "DEL", "MGET"],
        &["MULTI", "SET", "INCRBY", "GET", "EXEC"],
    ]
    .concat();
    assert_eq!(names(&r.spans), want);
    let s = &r.spans;
    // Ten commands in one write, ten replies in one read.
    assert!(s[4..14].iter().all(|s| s.start_ns == 8000 && s.end_ns == 9500));
    assert_eq!(error_type(&s[11]), Some("ERR"), "INCRBY of a string");
    assert_eq!(error_type(&s[1]), Some("ERR"), "unknown subcommand");
    assert!(s[15..18].iter().all(queued));
    assert!(!queued(&s[18]) && !queued(&s[14]));
    assert_eq!(text(&s[13]), Some("MGET ? ? ?"));
    assert_absent(s, "secret-pipe");
    assert_absent(s, "secret-tx");
}

#[test]
fn resp3_replies_are_framed() {
    let r = replay(&mut parser(), &records(RESP3), usize::MAX, Role::Client);
    assert!(r.feeds.is_empty(), "{:?}", r.feeds);
    let want =
        [&HANDSHAKE[..], &["SET", "GET", "HSET", "HGETALL", "SADD", "SMEMBERS", "ZADD", "ZSCORE", "LPUSH", "EXISTS"]]
            .concat();
    assert_eq!(names(&r.spans), want);
    assert_eq!(error_type(&r.spans[12]), Some("WRONGTYPE"));
    assert_absent(&r.spans, "secret");
}

#[test]
fn resp3_attributes_nulls_and_bulk_errors() {
    let mut p = parser();
    let mut out = Vec::new();
    let cmds = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nLPOP\r\n$1\r\nl\r\n";
    p.on_data(&chunk(0, true, cmds, usize::MAX, Role::Client), &mut out);
    let replies: &[u8] =
        b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.5\r\n$1\r\nx\r\n!21\r\nSYNTAX invalid syntax\r\n_\r\n*-1\r\n";
    p.on_data(&chunk(1, false, replies, usize::MAX, Role::Client), &mut out);
    assert_eq!(names(&out), ["GET", "GET", "PING", "LPOP"]);
    assert_eq!(out[0].status, SpanStatus::Unset);
    assert_eq!(error_type(&out[1]), Some("SYNTAX"));
    assert_eq!(out[2].status, SpanStatus::Unset);
    assert_eq!(out[3].status, SpanStatus::Unset);
    assert_eq!(p.take_dropped(), 0);
}

#[test]
fn pubsub_pushes_give_no_spans_and_are_counted() {
    for (capture, skipped) in [(PUBSUB3, 7), (PUBSUB2, 7)] {
        let mut p = parser();
        let r = replay(&mut p, &records(capture), usize::MAX, Role::Client);
        assert!(r.feeds.is_empty(), "{:?}", r.feeds);
        let tail = ["PING"];
        let want: Vec<&str> =
            if capture == PUBSUB3 { [&HANDSHAKE[..], &tail].concat() } else { [&HANDSHAKE[2..], &tail].concat() };
        assert_eq!(names(&r.spans), want);
        // PING after the last unsubscribe is answered normally.
        let ping = r.spans.last().unwrap();
        assert_eq!(ping.status, SpanStatus::Unset);
        assert_eq!(ping.end_ns, ping.start_ns + 1500);
        // SUBSCRIBE, UNSUBSCRIBE and five pushes.
        assert_eq!((p.take_skipped(), p.take_dropped()), (skipped, 0));
        assert_absent(&r.spans, "secret-msg");
    }
}

#[test]
fn commands_split_at_every_byte_give_the_same_spans() {
    let cmds: &[u8] =
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nEXEC\r\n";
    let replies: &[u8] = b"+OK\r\n$5\r\nhello\r\n*2\r\n-ERR x\r\n%1\r\n+a\r\n:1\r\n";
    for i in 0..=cmds.len() {
        for j in [0, 1, 4, 7, 12, replies.len() - 1] {
            let mut p = parser();
            let mut out = Vec::new();
            feed_split(&mut p, 0, true, cmds, &[i], &mut out);
            feed_split(&mut p, 1, false, replies, &[j], &mut out);
            assert_eq!(names(&out), ["SET", "GET", "EXEC"], "split at {i}/{j}");
            assert_eq!(text(&out[0]), Some("SET ? ?"));
            assert!(out.iter().all(|s| s.status == SpanStatus::Unset), "split at {i}/{j}");
            assert_eq!(p.take_dropped(), 0);
        }
    }
    // Byte by byte.
    let mut p = parser();
    let mut out = Vec::new();
    let all: Vec<usize> = (1..cmds.len()).collect();
    feed_split(&mut p, 0, true, cmds, &all, &mut out);
    let all: Vec<usize> = (1..replies.len()).collect();
    feed_split(&mut p, 1, false, replies, &all, &mut out);
    assert_eq!(names(&out), ["SET", "GET", "EXEC"]);
}

#[test]
fn inline_commands_and_select_on_an_established_connection() {
    let mut p = parser();
    let mut out = Vec::new();
    p.on_data(&chunk(0, true, b"*2\r\n$6\r\nSELECT\r\n$1\r\n5\r\n", usize::MAX, Role::Client), &mut out);
    p.on_data(&chunk(1, false, b"+OK\r\n", usize::MAX, Role::Client), &mut out);
    p.on_data(&chunk(2, true, b"get secret-key\r\n", usize::MAX, Role::Client), &mut out);
    p.on_data(&chunk(3, false, b"$-1\r\n", usize::MAX, Role::Client), &mut out);
    // A failed SELECT keeps the database.
    p.on_data(&chunk(4, true, b"*2\r\n$6\r\nSELECT\r\n$2\r\n99\r\n", usize::MAX, Role::Client), &mut out);
    p.on_data(&chunk(5, false, b"-ERR DB index is out of range\r\n", usize::MAX, Role::Client), &mut out);
    p.on_data(&chunk(6, true, b"PING\r\n", usize::MAX, Role::Client), &mut out);
    p.on_data(&chunk(7, false, b"+PONG\r\n", usize::MAX, Role::Client), &mut out);
    assert_eq!(names(&out), ["SELECT", "GET", "SELECT", "PING"]);
    let ns: Vec<_> = out.iter().map(|s| attr_str(s, "db.namespace").unwrap()).collect();
    assert_eq!(ns, ["0", "5", "5", "5"]);
    assert_eq!(text(&out[1]), Some("GET ?"));
    assert_absent(&out, "secret-key");
}

#[test]
fn replies_without_commands_are_dropped_and_unanswered_commands_expire() {
    let mut p = parser();
    let mut out = Vec::new();
    // Joined mid-stream: a reply to a command we did not see.
    p.on_data(&chunk(0, false, b"+OK\r\n", usize::MAX, Role::Client), &mut out);
    assert_eq!((out.len(), p.take_dropped()), (0, 1));
    // A blocking command may wait past the idle cut-off; GET may not.
    p.on_data(&chunk(1, true, b"*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n", usize::MAX, Role::Client), &mut out);
    p.on_idle(10_000_000, &mut out);
    assert_eq!(
        p.on_data(&chunk(2, false, b"*2\r\n$1\r\nq\r\n$1\r\nv\r\n", usize::MAX, Role::Client), &mut out),
        Feed::Continue
    );
    assert_eq!(names(&out), ["BLPOP"]);
    p.on_data(&chunk(3, true, b"*2\r\n$3\r\nGET\r\n$1\r\nq\r\n", usize::MAX, Role::Client), &mut out);
    p.on_idle(10_000_000, &mut out);
    assert_eq!(p.take_dropped(), 1);
    assert!(matches!(p.on_data(&chunk(4, false, b"$-1\r\n", usize::MAX, Role::Client), &mut out), Feed::LostSync(_)));
    assert_eq!(out.len(), 1);
}

#[test]
fn detector_claims_resp_commands_only() {
    let d = RedisDetector;
    let c = |bytes: &'static [u8], from_client: bool| chunk(0, from_client, bytes, usize::MAX, Role::Client);
    assert_eq!(d.detect(Role::Client, &c(b"*1\r\n$4\r\nPING\r\n", true)), Confidence::Yes);
    assert_eq!(d.detect(Role::Client, &c(b"*3\r\n$3\r\nSET\r\n$1\r\nk", true)), Confidence::Yes);
    assert_eq!(d.detect(Role::Client, &c(b"*2\r\n$3\r\nGE", true)), Confidence::NeedMore);
    assert_eq!(d.detect(Role::Client, &c(b"*", true)), Confidence::NeedMore);
    assert_eq!(d.detect(Role::Server, &c(b"*1\r\n$4\r\nPING\r\n", false)), Confidence::Yes, "redis-server reads it");
    for no in [
        &b"*1\r\n$4\r\nPING\r\n"[..],
        b"PING\r\n",
        b"GET / HTTP/1.1\r\n",
        b"get foo\r\n",
        b"*0\r\n",
        b"*1\r\n$0\r\n\r\n",
        b"*1\r\n$4\r\n1BAD\r\n",
        b"*1\r\n$5\r\nPING\r\n",
        b"\0\0\0\x08\x04\xd2\x16\x2f",
    ] {
        let from_client = no != b"*1\r\n$4\r\nPING\r\n";
        assert_eq!(d.detect(Role::Client, &c(no, from_client)), Confidence::No, "{:?}", String::from_utf8_lossy(no));
    }
    let truncated = Chunk { total_len: 100, ..c(b"*2\r\n$3\r\nGE", true) };
    assert_eq!(d.detect(Role::Client, &truncated), Confidence::No);
    // Every capture starts with a command the detector claims.
    for bin in ALL {
        let recs = records(bin);
        assert_eq!(d.detect(Role::Client, &chunk(0, true, &recs[0].1, usize::MAX, Role::Client)), Confidence::Yes);
    }
}

#[test]
fn redis_server_side_is_parsed_mirrored() {
    let r = replay(
        &mut RedisParser::new(Role::Server, &ParserConfig::default()),
        &records(RESP3),
        usize::MAX,
        Role::Server,
    );
    assert_eq!(r.spans.len(), 14);
    assert!(r.spans.iter().all(|s| s.kind == SpanKind::Server));
}

#[test]
fn fuzz_harness_runs_captures_and_mutations() {
    fuzz_captures_and_mutations(ALL, fuzz_script, 2 * 20);
}

#[test]
fn garbage_and_cut_captures_never_panic_or_leak() {
    garbage_never_panics(
        ALL,
        5,
        &[1, 7, 64, 200, 4096],
        &["secret-value-1", "secret-pipe", "secret-r3", "secret-msg"],
        parser,
    );
    let mut rng = Lcg(3);
    let mut p = parser();
    let mut out = Vec::new();
    for k in 0..2000 {
        let n = rng.below(40) as usize;
        let bytes: Vec<u8> = (0..n).map(|_| b"*$+-:\r\n0123456789ab%>|_"[rng.below(23) as usize]).collect();
        if p.on_data(&chunk(k, rng.below(2) == 0, &bytes, 4096, Role::Client), &mut out) != Feed::Continue {
            p = parser();
        }
    }
}

#[test]
fn the_kept_fuzz_corpus_runs_clean() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/redis");
    let mut spans = 0;
    for entry in std::fs::read_dir(dir).expect("fuzz/corpus/redis") {
        spans += fuzz_script(&std::fs::read(entry.expect("corpus entry").path()).expect("corpus file"));
    }
    assert!(spans >= 40, "the seeds reach the span paths: {spans} spans");
}
