//! Cache acceptance tests: the real agent watching a real `redis-server`
//! and `memcached` (Debian's packages, loopback, fresh ports) and real
//! clients (`redis-cli`, redis-py, plain sockets), asserting on the CONTENT
//! of the CLIENT spans it exports, and that a cache call made while a
//! traced HTTP server handles a request is that request's child.
//!
//! Like the SQL tests, every test needs root (ignored by plain `cargo
//! test`, run by `cargo xtask test`, failing without root), runs under the
//! e2e lock and picks spans by the pid of the client it started. Values and
//! keys sent are unique per run: finding one anywhere in the exported data
//! or the agent's output is a leak (keys are hidden by default).
use std::{fs::File, process::Command, time::Duration};

use waggle_e2e::{
    assert_not_leaked,
    cache::{cache_fixture, cache_script, CacheServer},
    db::venv_python,
    describe, e2e_setup,
    env::wait_for_port_line,
    run_client, Agent, ClientRun, Kind, OtlpReceiver, Proc, Protocol, Span, StatusCode, SPAN_TIMEOUT,
};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

fn secret(tag: &str) -> String {
    format!("secret-{tag}-{}", std::process::id())
}

/// CLIENT spans of `pid` with `db.system.name` = `system`, in start order.
fn cache_spans(spans: &[Span], pid: u32, system: &str) -> Vec<Span> {
    let mut out: Vec<Span> = spans
        .iter()
        .filter(|s| s.pid() == Some(pid) && s.is_client() && s.attr_str("db.system.name") == Some(system))
        .cloned()
        .collect();
    out.sort_by_key(|s| (s.start_ns, s.end_ns));
    out
}

fn all_of(spans: &[Span], pid: u32) -> Vec<Span> {
    spans.iter().filter(|s| s.pid() == Some(pid)).cloned().collect()
}

/// What one cache CLIENT span must say. `None` fields must be ABSENT.
struct Want<'a> {
    operation: &'a str,
    text: &'a str,
    namespace: Option<&'a str>,
    error: Option<&'a str>,
    returned: Option<i64>,
}

fn want<'a>(operation: &'a str, text: &'a str) -> Want<'a> {
    Want { operation, text, namespace: None, error: None, returned: None }
}

#[track_caller]
fn assert_cache_span(s: &Span, system: &str, port: u16, w: &Want) {
    assert_eq!(s.kind, Kind::Client, "{s}");
    assert_eq!(s.name, w.operation, "span name of {s}");
    assert_eq!(s.attr_str("db.system.name"), Some(system), "db.system.name of {s}");
    assert_eq!(s.attr_str("db.operation.name"), Some(w.operation), "db.operation.name of {s}");
    assert_eq!(s.attr_str("db.query.text"), Some(w.text), "db.query.text of {s}");
    assert_eq!(s.attr_str("db.namespace"), w.namespace, "db.namespace of {s}");
    assert_eq!(s.attr_str("error.type"), w.error, "error.type of {s}");
    assert_eq!(s.attr_str("db.response.status_code"), w.error, "db.response.status_code of {s}");
    assert_eq!(s.attr_int("db.response.returned_rows"), w.returned, "db.response.returned_rows of {s}");
    let status = if w.error.is_some() { StatusCode::Error } else { StatusCode::Unset };
    assert_eq!(s.status_code, status, "status of {s}");
    assert_eq!(s.attr_str("server.address"), Some("127.0.0.1"), "server.address of {s}");
    assert_eq!(s.attr_int("server.port"), Some(i64::from(port)), "server.port of {s}");
    assert!(s.attr("waggle.db.response.truncated").is_none(), "small reply marked truncated: {s}");
    assert!(s.start_ns > 0 && s.end_ns >= s.start_ns, "times of {s}");
}

#[track_caller]
fn exactly(spans: Vec<Span>, n: usize, what: &str, all: &[Span]) -> Vec<Span> {
    assert_eq!(
        spans.len(),
        n,
        "want exactly {n} {what}, got:\n{}\nall spans of the process:\n{}",
        describe(&spans),
        describe(all)
    );
    spans
}

/// Neither cache server traced itself.
#[track_caller]
fn assert_no_server_side_spans(spans: &[Span], server_pids: &[u32]) {
    let bad: Vec<Span> = spans
        .iter()
        .filter(|s| {
            s.pid().is_some_and(|p| server_pids.contains(&p)) || (s.is_server() && s.attr("db.system.name").is_some())
        })
        .cloned()
        .collect();
    assert!(bad.is_empty(), "cache server processes produced spans:\n{}", describe(&bad));
}

#[track_caller]
fn run(name: &str, cmd: &mut Command) -> ClientRun {
    run_client(name, cmd, CLIENT_TIMEOUT)
}

// 1. redis-cli: single commands, SELECT via -n, an error, and --pipe.

#[test]
#[ignore = "needs root, redis-server, redis-cli and the agent binary: cargo xtask test runs it"]
fn redis_cli_commands_pipeline_select_and_error() {
    let _guard = e2e_setup("redis_cli_commands_pipeline_select_and_error");
    let redis = CacheServer::redis();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);

    let secret = secret("cli");
    let set = run("redis-cli", redis.redis_cli().args(["SET", &format!("key-{secret}"), &secret]));
    set.assert_success();
    assert_eq!(set.stdout.trim(), "OK");
    let get = run("redis-cli", redis.redis_cli().args(["-n", "2", "GET", &format!("key-{secret}")]));
    get.assert_success();
    assert_eq!(get.stdout.trim(), "", "database 2 does not have the key");
    let wrong = run("redis-cli", redis.redis_cli().args(["LPUSH", &format!("key-{secret}"), "x"]));
    wrong.assert_success();
    assert!(wrong.stdout.contains("WRONGTYPE"), "{wrong:?}");
    // --pipe writes the commands in one go, then an ECHO of its own.
    let input = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("temp file: {e}"));
    let mut raw = Vec::new();
    for (k, v) in [("p:1", &secret), ("p:2", &secret), ("p:3", &secret)] {
        raw.extend_from_slice(format!("*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n", k.len(), v.len()).as_bytes());
    }
    raw.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$3\r\np:1\r\n");
    std::fs::write(input.path(), &raw).unwrap_or_else(|e| panic!("writing {}: {e}", input.path().display()));
    let stdin = File::open(input.path()).unwrap_or_else(|e| panic!("opening {}: {e}", input.path().display()));
    let mut pipe_cmd = redis.redis_cli();
    pipe_cmd.arg("--pipe");
    // run_client gives the client /dev/null as stdin: run this one by hand.
    let pipe = {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let out_path = dir.path().join("out");
        let out = File::create(&out_path).unwrap_or_else(|e| panic!("creating {}: {e}", out_path.display()));
        pipe_cmd.stdin(stdin).stdout(out.try_clone().unwrap_or_else(|e| panic!("dup: {e}"))).stderr(out);
        let mut proc = Proc::spawn("redis-cli --pipe", &mut pipe_cmd);
        let status = proc.wait_timeout(CLIENT_TIMEOUT).unwrap_or_else(|| panic!("redis-cli --pipe hung"));
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        assert!(status.success() && text.contains("errors: 0, replies: 4"), "redis-cli --pipe: {status:?}\n{text}");
        proc.pid()
    };

    let pids = [set.pid, get.pid, wrong.pid, pipe];
    receiver.focus(&pids);
    receiver.expect_spans("the redis-cli spans", SPAN_TIMEOUT, |s| {
        pids.iter().map(|p| cache_spans(s, *p, "redis").len()).sum::<usize>() >= 1 + 2 + 1 + 5
    });
    let out = agent.stop();
    let spans = receiver.spans();
    let port = redis.port();

    let s = exactly(cache_spans(&spans, set.pid, "redis"), 1, "spans of redis-cli SET", &all_of(&spans, set.pid));
    assert_cache_span(&s[0], "redis", port, &Want { namespace: Some("0"), ..want("SET", "SET ? ?") });
    let s = exactly(cache_spans(&spans, get.pid, "redis"), 2, "spans of redis-cli -n 2 GET", &all_of(&spans, get.pid));
    assert_cache_span(&s[0], "redis", port, &Want { namespace: Some("0"), ..want("SELECT", "SELECT ?") });
    assert_cache_span(&s[1], "redis", port, &Want { namespace: Some("2"), ..want("GET", "GET ?") });
    let s = exactly(cache_spans(&spans, wrong.pid, "redis"), 1, "spans of redis-cli LPUSH", &all_of(&spans, wrong.pid));
    assert_cache_span(
        &s[0],
        "redis",
        port,
        &Want { namespace: Some("0"), error: Some("WRONGTYPE"), ..want("LPUSH", "LPUSH ? ?") },
    );
    let s = exactly(cache_spans(&spans, pipe, "redis"), 5, "spans of redis-cli --pipe", &all_of(&spans, pipe));
    let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["SET", "SET", "SET", "GET", "ECHO"], "{}", describe(&s));
    // The four commands went in one write (they share their start); the
    // ECHO redis-cli adds to know when the replies are over came after.
    assert!(s[..4].iter().all(|x| x.start_ns == s[0].start_ns), "{}", describe(&s));
    assert!(s[4].start_ns > s[0].start_ns, "{}", describe(&s));
    for p in pids {
        let mine = all_of(&spans, p);
        assert_eq!(mine.len(), cache_spans(&spans, p, "redis").len(), "only cache spans:\n{}", describe(&mine));
    }
    assert_not_leaked(&receiver, &out, &[&secret]);
    assert_no_server_side_spans(&spans, &[redis.pid()]);
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
}

// 2. redis-py: single commands, a pipeline, MULTI/EXEC, an error, SELECT 2.

#[test]
#[ignore = "needs root, redis-server, redis-py (venv) and the agent binary: cargo xtask test runs it"]
fn redis_py_pipeline_transaction_error_and_select() {
    let _guard = e2e_setup("redis_py_pipeline_transaction_error_and_select");
    let redis = CacheServer::redis();
    let _ = venv_python();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::HttpProtobuf), &[]);

    let secret = secret("py");
    let r = run("redis_client.py", cache_script("redis_client.py").arg(redis.port().to_string()).arg(&secret));
    r.assert_success();
    assert_eq!(r.stdout.trim(), "ok");

    receiver.focus(&[r.pid]);
    receiver.expect_spans("15 redis spans of redis_client.py", SPAN_TIMEOUT, |s| {
        cache_spans(s, r.pid, "redis").len() >= 15
    });
    let out = agent.stop();
    let spans = receiver.spans();
    let mine = all_of(&spans, r.pid);
    let s = exactly(cache_spans(&spans, r.pid, "redis"), 15, "redis spans", &mine);
    assert_eq!(mine.len(), 15, "nothing but the 15 commands:\n{}", describe(&mine));
    let port = redis.port();
    let db0 = |op, text| Want { namespace: Some("0"), ..want(op, text) };
    let wants = [
        db0("SET", "SET ? ?"),
        db0("GET", "GET ?"),
        db0("GET", "GET ?"),
        db0("INCRBY", "INCRBY ? ?"),
        db0("INCRBY", "INCRBY ? ?"),
        db0("INCRBY", "INCRBY ? ?"),
        db0("INCRBY", "INCRBY ? ?"),
        db0("INCRBY", "INCRBY ? ?"),
        db0("MULTI", "MULTI"),
        db0("SET", "SET ? ?"),
        db0("GET", "GET ?"),
        db0("EXEC", "EXEC"),
        Want { error: Some("WRONGTYPE"), ..db0("LPUSH", "LPUSH ? ?") },
        db0("SELECT", "SELECT ?"),
        Want { namespace: Some("2"), ..want("SET", "SET ? ?") },
    ];
    for (i, w) in wants.iter().enumerate() {
        assert_cache_span(&s[i], "redis", port, w);
    }
    let pipeline = &s[3..8];
    assert!(pipeline.iter().all(|x| x.start_ns == pipeline[0].start_ns), "{}", describe(pipeline));
    // Queued inside MULTI, run by EXEC.
    let queued: Vec<bool> = s[8..12].iter().map(|x| x.attr("waggle.db.redis.queued").is_some()).collect();
    assert_eq!(queued, [false, true, true, false], "{}", describe(&s[8..12]));
    assert_not_leaked(&receiver, &out, &[&secret, "user:1", "db2:key"]);
    assert_no_server_side_spans(&spans, &[redis.pid()]);
    for x in &mine {
        waggle_e2e::assert_resource(x, "redis_client", r.pid);
    }
}

// 3. memcached: set/get/multi-get/miss/noreply/pipelined gets/errors.

#[test]
#[ignore = "needs root, memcached and the agent binary: cargo xtask test runs it"]
fn memcached_get_set_multiget_miss_noreply_and_errors() {
    let _guard = e2e_setup("memcached_get_set_multiget_miss_noreply_and_errors");
    let mc = CacheServer::memcached();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);

    let secret = secret("mc");
    let mut cmd = Command::new(waggle_e2e::python());
    cmd.arg("-u").arg(cache_fixture("memcached_client.py")).arg(mc.port().to_string()).arg(&secret);
    let r = run("memcached_client.py", &mut cmd);
    r.assert_success();
    assert_eq!(r.stdout.trim(), "ok");

    receiver.focus(&[r.pid]);
    receiver.expect_spans("10 memcached spans", SPAN_TIMEOUT, |s| cache_spans(s, r.pid, "memcached").len() >= 10);
    let out = agent.stop();
    let spans = receiver.spans();
    let mine = all_of(&spans, r.pid);
    let s = exactly(cache_spans(&spans, r.pid, "memcached"), 10, "memcached spans", &mine);
    assert_eq!(mine.len(), 10, "nothing but the 10 commands:\n{}", describe(&mine));
    let port = mc.port();
    let get = |text, hits| Want { returned: Some(hits), ..want("get", text) };
    let wants = [
        want("set", "set ? ? ? ?"),
        want("set", "set ? ? ? ? noreply"),
        get("get ?", 1),
        get("get ? ? ?", 2),
        get("get ?", 0),
        get("get ?", 1),
        get("get ?", 0),
        want("delete", "delete ?"),
        Want { error: Some("ERROR"), ..want("_OTHER", "_OTHER") },
        Want { error: Some("CLIENT_ERROR"), ..want("incr", "incr ? ?") },
    ];
    for (i, w) in wants.iter().enumerate() {
        assert_cache_span(&s[i], "memcached", port, w);
    }
    // The noreply set ends with its write, before the next get starts.
    assert!(s[1].end_ns <= s[2].start_ns, "{}", describe(&s[1..3]));
    // The pipelined gets share their write.
    assert_eq!(s[5].start_ns, s[6].start_ns, "{}", describe(&s[5..7]));
    assert_not_leaked(&receiver, &out, &[&secret]);
    assert_no_server_side_spans(&spans, &[mc.pid()]);
    for x in &mine {
        waggle_e2e::assert_resource(x, "memcached_client", r.pid);
    }
}

// 4. A traced HTTP server's cache calls are children of its SERVER span,
//    also when a thread the request started makes them (memcached).

#[test]
#[ignore = "needs root, redis-server, memcached, redis-py (venv) and the agent binary: cargo xtask test runs it"]
fn cache_calls_while_serving_a_request_are_its_children() {
    let _guard = e2e_setup("cache_calls_while_serving_a_request_are_its_children");
    let redis = CacheServer::redis();
    let mc = CacheServer::memcached();
    // The server starts (and imports redis-py) before the agent.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let out_path = dir.path().join("out");
    let out_file = File::create(&out_path).unwrap_or_else(|e| panic!("creating {}: {e}", out_path.display()));
    let err_file = out_file.try_clone().unwrap_or_else(|e| panic!("dup: {e}"));
    let mut cmd = cache_script("cache_server.py");
    cmd.arg(redis.port().to_string()).arg(mc.port().to_string()).stdout(out_file).stderr(err_file);
    let mut server = Proc::spawn("cache_server.py", &mut cmd);
    let port = wait_for_port_line(&mut server, &out_path, Duration::from_secs(30)).unwrap_or_else(|exit| {
        panic!("cache_server.py did not announce its port ({exit:?}):\n{}", waggle_e2e::env::tail(&out_path, 30))
    });
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);

    const REQUESTS: usize = 3;
    for _ in 0..REQUESTS {
        let c = waggle_e2e::curl(&[&format!("http://127.0.0.1:{port}/lookup")]);
        c.assert_success();
        assert_eq!(c.stdout.trim(), r#"{"redis": false, "memcached": false}"#);
    }

    let pid = server.pid();
    receiver.focus(&[pid]);
    receiver.expect_spans("3 SERVER spans with their cache calls", SPAN_TIMEOUT, |s| {
        waggle_e2e::server_spans(s, pid).len() >= REQUESTS
            && cache_spans(s, pid, "redis").len() >= REQUESTS
            && cache_spans(s, pid, "memcached").len() >= REQUESTS
    });
    let _out = agent.stop();
    let spans = receiver.spans();
    let mine = all_of(&spans, pid);
    let servers = exactly(waggle_e2e::server_spans(&spans, pid), REQUESTS, "SERVER spans", &mine);
    let redis_spans = exactly(cache_spans(&spans, pid, "redis"), REQUESTS, "redis spans", &mine);
    let mc_spans = exactly(cache_spans(&spans, pid, "memcached"), REQUESTS, "memcached spans", &mine);
    assert_eq!(mine.len(), 3 * REQUESTS, "a SERVER span and two cache calls per request:\n{}", describe(&mine));
    let mut parents: Vec<&str> = Vec::new();
    for child in redis_spans.iter().chain(&mc_spans) {
        let parent = servers
            .iter()
            .find(|p| p.span_id == child.parent_span_id)
            .unwrap_or_else(|| panic!("{child} has no SERVER parent among:\n{}", describe(&servers)));
        assert_eq!(parent.trace_id, child.trace_id, "{child} vs {parent}");
        assert!(parent.start_ns <= child.start_ns && child.end_ns <= parent.end_ns, "{child} outside {parent}");
        parents.push(&parent.span_id);
    }
    for x in &redis_spans {
        assert_cache_span(x, "redis", redis.port(), &Want { namespace: Some("0"), ..want("GET", "GET ?") });
    }
    for x in &mc_spans {
        assert_cache_span(x, "memcached", mc.port(), &Want { returned: Some(0), ..want("get", "get ?") });
    }
    // Each request has one call of each.
    parents.sort_unstable();
    parents.dedup();
    assert_eq!(parents.len(), REQUESTS, "each SERVER span is the parent of its own calls");
    assert_no_server_side_spans(&spans, &[redis.pid(), mc.pid()]);
}

// 5. Pub/sub: no span for subscriptions and pushes, counted; normal
//    commands after the last unsubscribe are spans again.

#[test]
#[ignore = "needs root, redis-server, redis-py (venv) and the agent binary: cargo xtask test runs it"]
fn redis_pubsub_pushes_give_no_spans_and_are_counted() {
    let _guard = e2e_setup("redis_pubsub_pushes_give_no_spans_and_are_counted");
    let redis = CacheServer::redis();
    let _ = venv_python();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);

    let secret = secret("pubsub");
    let r = run("redis_pubsub.py", cache_script("redis_pubsub.py").arg(redis.port().to_string()).arg(&secret));
    r.assert_success();
    assert_eq!(r.stdout.trim(), "ok");

    receiver.focus(&[r.pid]);
    receiver.expect_spans("PUBLISH x3 and PING", SPAN_TIMEOUT, |s| cache_spans(s, r.pid, "redis").len() >= 4);
    let out = agent.stop();
    let spans = receiver.spans();
    let mine = all_of(&spans, r.pid);
    let s = exactly(cache_spans(&spans, r.pid, "redis"), 4, "redis spans", &mine);
    assert_eq!(mine.len(), 4, "{}", describe(&mine));
    let port = redis.port();
    for x in &s[..3] {
        assert_cache_span(x, "redis", port, &Want { namespace: Some("0"), ..want("PUBLISH", "PUBLISH ? ?") });
    }
    assert_cache_span(&s[3], "redis", port, &Want { namespace: Some("0"), ..want("PING", "PING") });
    // SUBSCRIBE and UNSUBSCRIBE, and the five pushes (two confirmations,
    // three messages): nothing else on the machine speaks pub/sub.
    assert_eq!(out.counter("messages_skipped"), 7, "agent stderr:\n{}", out.stderr);
    assert_not_leaked(&receiver, &out, &[&secret]);
    assert_no_server_side_spans(&spans, &[redis.pid()]);
}
