//! The nginx + php-fpm stack end to end: Debian's nginx passes each request
//! over TCP FastCGI to Debian's php-fpm 8.2, whose script queries MariaDB
//! through PDO, Redis through php-redis, and a python service over HTTP
//! (`file_get_contents`). Every curl request must give ONE trace:
//!
//! curl CLIENT -> nginx SERVER -> nginx CLIENT (FastCGI) -> php-fpm SERVER
//! -> { MySQL SELECT, Redis SET, Redis GET, HTTP CLIENT -> python SERVER }
//!
//! nginx's FastCGI request carries no traceparent of ours (records are
//! never rewritten): php-fpm's SERVER span joins through the kernel's
//! same-host link (LINKS), its DB/cache calls through the thread's server
//! context, and the python service through the header the kernel inserts
//! into PHP's outgoing request.
use std::{collections::HashMap, time::Duration};

use waggle_e2e::{
    cache::CacheServer,
    db::{MariaDb, DB_NAME, MARIADB_PASSWORD, MARIADB_USER},
    describe, e2e_setup,
    env::{tail, wait_for_port_line},
    fixture, python, Agent, Kind, OtlpReceiver, Proc, Protocol, Server, Span, StatusCode, SPAN_TIMEOUT,
};

const REQUESTS: usize = 3;

fn script(db_port: u16, redis_port: u16, downstream_port: u16, secret: &str) -> String {
    format!(
        r#"<?php
$db = new PDO("mysql:host=127.0.0.1;port={db_port};dbname={DB_NAME}", "{MARIADB_USER}", "{MARIADB_PASSWORD}");
$st = $db->prepare("SELECT name, price FROM items WHERE id = ?");
$st->execute([42]);
$row = $st->fetch();
$r = new Redis();
$r->connect("127.0.0.1", {redis_port});
$r->set("php:{secret}", "{secret}");
$v = $r->get("php:{secret}");
$down = file_get_contents("http://127.0.0.1:{downstream_port}/downstream");
header("Content-Type: text/plain");
echo $row["name"], " ", strlen($v), " ", $down, "\n";
"#
    )
}

fn one<'a>(spans: &[&'a Span], what: &str, pred: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().copied().filter(|s| pred(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "want exactly one {what} in the trace, got {}:\n{}",
        found.len(),
        describe(&spans.iter().map(|s| (*s).clone()).collect::<Vec<_>>())
    );
    found[0]
}

#[track_caller]
fn assert_child(child: &Span, parent: &Span) {
    assert_eq!(child.trace_id, parent.trace_id, "{child} is not in {parent}'s trace");
    assert_eq!(child.parent_span_id, parent.span_id, "{child} is not a child of {parent}");
}

#[test]
#[ignore = "needs root, nginx, php-fpm, MariaDB, Redis and the agent binary: cargo xtask test runs it"]
fn nginx_php_fpm_requests_are_one_trace_each() {
    let _guard = e2e_setup("nginx_php_fpm_requests_are_one_trace_each");
    let db = MariaDb::start();
    let redis = CacheServer::redis();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let out_path = dir.path().join("downstream.out");
    let out = std::fs::File::create(&out_path).unwrap_or_else(|e| panic!("{}: {e}", out_path.display()));
    let err = out.try_clone().unwrap_or_else(|e| panic!("dup: {e}"));
    let mut cmd = std::process::Command::new(python());
    cmd.arg("-u").arg(fixture("ok_server.py")).stdout(out).stderr(err);
    let mut downstream = Proc::spawn("ok_server.py", &mut cmd);
    let down_port = wait_for_port_line(&mut downstream, &out_path, Duration::from_secs(30))
        .unwrap_or_else(|exit| panic!("ok_server.py did not announce its port ({exit:?}):\n{}", tail(&out_path, 30)));
    let secret = format!("secret-php-{}", std::process::id());
    let fpm = Server::php_fpm(&script(db.port(), redis.port(), down_port, &secret));
    let nginx = Server::nginx_fastcgi(&fpm);

    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);
    let fpm_pids = fpm.pids();
    let nginx_pids = nginx.pids();
    let mut focus = fpm_pids.clone();
    focus.extend(&nginx_pids);
    focus.push(downstream.pid());
    receiver.focus(&focus);

    let mut curl_pids = Vec::new();
    for i in 0..REQUESTS {
        let c = waggle_e2e::curl(&["-sS", "-A", "waggle-php-e2e/1.0", &nginx.url(&format!("/shop/items/{}", 100 + i))]);
        c.assert_success();
        assert_eq!(c.stdout.trim(), format!("answer {} ok", secret.len()), "php said; fpm log:\n{}", fpm.log());
        curl_pids.push(c.pid);
    }

    let in_any = |s: &Span, pids: &[u32]| s.pid().is_some_and(|p| pids.contains(&p));
    let fpm_server = |s: &Span| s.is_server() && in_any(s, &fpm_pids);
    let spans =
        receiver.expect_spans("a php-fpm SERVER span and a python SERVER span per request", SPAN_TIMEOUT, |all| {
            all.iter().filter(|s| fpm_server(s)).count() >= REQUESTS
                && all.iter().filter(|s| s.is_server() && s.pid() == Some(downstream.pid())).count() >= REQUESTS
                && all.iter().filter(|s| s.is_server() && in_any(s, &nginx_pids)).count() >= REQUESTS
        });
    let out = agent.stop();
    assert!(!out.stderr.contains("panicked"), "agent:\n{}", out.stderr);

    // Every span of the processes this test started, by trace.
    let mut ours: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            in_any(s, &fpm_pids) || in_any(s, &nginx_pids) || in_any(s, &curl_pids) || s.pid() == Some(downstream.pid())
        })
        .collect();
    ours.sort_by_key(|s| s.start_ns);
    let mut traces: HashMap<&str, Vec<&Span>> = HashMap::new();
    for s in &ours {
        traces.entry(s.trace_id.as_str()).or_default().push(s);
    }
    let all: Vec<Span> = ours.iter().map(|s| (*s).clone()).collect();
    assert_eq!(traces.len(), REQUESTS, "want {REQUESTS} traces, got {}:\n{}", traces.len(), describe(&all));

    for (trace_id, t) in &traces {
        let fpm_span = one(t, "php-fpm SERVER span", fpm_server);
        let route = fpm_span.attr_str("http.route").unwrap_or_default();
        assert_eq!(route, "/shop/items/{id}", "{fpm_span}");
        assert_eq!(fpm_span.name, "GET /shop/items/{id}");
        assert_eq!(fpm_span.attr_str("network.protocol.name"), Some("fastcgi"), "{fpm_span}");
        assert_eq!(fpm_span.attr_int("http.response.status_code"), Some(200), "{fpm_span}");
        assert_eq!(fpm_span.attr_int("server.port"), Some(i64::from(nginx.port())), "{fpm_span}");
        assert_eq!(fpm_span.attr_str("user_agent.original"), Some("waggle-php-e2e/1.0"), "{fpm_span}");
        assert!(fpm_span.attr_str("url.path").is_some_and(|p| p.starts_with("/shop/items/1")), "{fpm_span}");
        assert_eq!(fpm_span.status_code, StatusCode::Unset);

        let nginx_server = one(t, "nginx SERVER span", |s| s.is_server() && in_any(s, &nginx_pids));
        let nginx_client = one(t, "nginx FastCGI CLIENT span", |s| s.is_client() && in_any(s, &nginx_pids));
        assert_eq!(nginx_client.name, "GET /shop/items/{id}", "{nginx_client}");
        assert_eq!(nginx_client.attr_str("network.protocol.name"), Some("fastcgi"), "{nginx_client}");
        assert_child(nginx_client, nginx_server);
        assert_child(fpm_span, nginx_client);
        let curl_span = one(t, "curl CLIENT span", |s| in_any(s, &curl_pids));
        assert_child(nginx_server, curl_span);

        let fpm_children: Vec<&Span> = t.iter().copied().filter(|s| s.is_client() && in_any(s, &fpm_pids)).collect();
        let select = one(&fpm_children, "MariaDB SELECT", |s| s.attr_str("db.system.name") == Some("mariadb"));
        assert_eq!(select.name, "SELECT items", "{select}");
        assert_eq!(select.attr_str("db.query.text"), Some("SELECT name, price FROM items WHERE id = ?"), "{select}");
        let set = one(&fpm_children, "Redis SET", |s| s.name == "SET");
        assert_eq!(set.attr_str("db.query.text"), Some("SET ? ?"), "{set}");
        let get = one(&fpm_children, "Redis GET", |s| s.name == "GET" && s.attr_str("db.system.name") == Some("redis"));
        assert_eq!(get.attr_str("db.query.text"), Some("GET ?"), "{get}");
        let http = one(&fpm_children, "HTTP CLIENT", |s| s.attr_str("http.request.method").is_some());
        for child in [select, set, get, http] {
            assert_child(child, fpm_span);
            assert!(
                child.start_ns >= fpm_span.start_ns && child.end_ns <= fpm_span.end_ns,
                "{child} outside {fpm_span}"
            );
        }
        let python_span = one(t, "python SERVER span", |s| s.is_server() && s.pid() == Some(downstream.pid()));
        assert_eq!(python_span.name, "GET /downstream");
        assert_child(python_span, http);

        // No duplicates, no orphans: one root (curl's), every other span's
        // parent is in the trace.
        let ids: Vec<&str> = t.iter().map(|s| s.span_id.as_str()).collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "duplicate span ids in trace {trace_id}");
        for s in t {
            if s.span_id != curl_span.span_id {
                assert!(ids.contains(&s.parent_span_id.as_str()), "orphan in trace {trace_id}: {s}");
            }
            assert!(s.kind == Kind::Server || s.kind == Kind::Client);
        }
    }
    // Values never leave the host.
    let dump = receiver.raw_dump();
    assert!(!dump.contains(&secret), "the cached value leaked");
}
