//! Application-server stacks under the real agent (issue 14): Tomcat 10
//! with JDBC (PostgreSQL through pgjdbc's server-side prepared statements,
//! MariaDB Connector/J) behind Tomcat's DBCP pool, and puma with a Rack app
//! using the pg gem; both call a python service over HTTP.
//!
//! ```text
//! curl -> Tomcat (servlet) | puma (Rack app)
//!           |-> PostgreSQL / MariaDB   (CLIENT spans, children of the request)
//!           '-> python ok_server        (HTTP CLIENT span; its SERVER span joins
//!                                        through the injected traceparent)
//! ```
//!
//! N curl requests must give N traces: curl's CLIENT span as the root, the
//! stack's SERVER span under it, the DB and HTTP CLIENT spans under that,
//! the python SERVER span under the HTTP CLIENT span, and no other span of
//! these processes anywhere (no duplicates, no orphans).
//!
//! Like every e2e test: root only, serialised by the e2e lock, real
//! software from Debian's packages. The app servers start after the agent,
//! as a deployment restarts them, so every socket they open is known from
//! its first byte; the databases and the python service start before.
use std::collections::{BTreeMap, BTreeSet};

use waggle_e2e::{
    assert_not_leaked, assert_resource, curl,
    db::{MariaDb, Postgres, DB_NAME},
    describe, e2e_setup,
    env::free_port,
    puma::{Puma, PUMA_TAG},
    tomcat::{ShopConfig, Tomcat},
    wait_for_other_injectors, Agent, ClientRun, OtlpReceiver, Protocol, Server, Span, StatusCode, SPAN_TIMEOUT,
};

/// Requests per stack: enough for pgjdbc's prepareThreshold (5) to be
/// crossed in the second request and for four more requests to run the
/// named statement by Bind/Execute alone.
const REQUESTS: usize = 6;
const ROUTE: &str = "/shop/items/{id}";
const PATH: &str = "/shop/items/42";
const DOWNSTREAM_ROUTE: &str = "/stock/{id}";
const DOWNSTREAM_PATH: &str = "/stock/42";
/// `Server::python_ok_server`'s service name.
const DOWNSTREAM_SERVICE: &str = "ok_server";

fn secret(tag: &str) -> String {
    format!("secret-{tag}-{}", std::process::id())
}

#[track_caller]
fn start_agent(receiver: &OtlpReceiver, extra: &[&str]) -> Agent {
    wait_for_other_injectors();
    let mut args = receiver.agent_args(Protocol::Grpc);
    args.extend(["--metrics-addr".to_owned(), format!("127.0.0.1:{}", free_port())]);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Agent::start(&args, &[])
}

/// `GET <url>` with curl, [`REQUESTS`] times, one after the other.
#[track_caller]
fn curl_items(url: &str, log: &dyn Fn() -> String) -> Vec<ClientRun> {
    (0..REQUESTS)
        .map(|_| {
            let run = curl(&["-f", url]);
            assert!(run.status.success(), "curl {url} failed: {run:?}\nserver log:\n{}", log());
            run
        })
        .collect()
}

fn of_pids(spans: &[Span], pids: &[u32]) -> Vec<Span> {
    let mut v: Vec<Span> = spans.iter().filter(|s| s.pid().is_some_and(|p| pids.contains(&p))).cloned().collect();
    v.sort_by_key(|s| (s.start_ns, s.end_ns));
    v
}

fn is_db(s: &Span) -> bool {
    s.is_client() && s.attr("db.system.name").is_some()
}

/// The DB CLIENT span's identity for counting: (system, name, query text).
fn db_key(s: &Span) -> (String, String, String) {
    (
        s.attr_str("db.system.name").unwrap_or_default().to_owned(),
        s.name.clone(),
        s.attr_str("db.query.text").unwrap_or("<none>").to_owned(),
    )
}

/// A multiset of expected DB spans: (system, name, text) -> count.
type DbWant = BTreeMap<(String, String, String), usize>;

fn db_want(items: &[(&str, &str, &str, usize)]) -> DbWant {
    let mut m = DbWant::new();
    for (system, name, text, n) in items {
        *m.entry(((*system).to_owned(), (*name).to_owned(), (*text).to_owned())).or_default() += n;
    }
    m
}

/// The processes of one stack test.
struct Stack {
    service: &'static str,
    pid: u32,
    port: u16,
    downstream: u32,
    downstream_port: u16,
    /// `user_agent.original` of the stack's HTTP client.
    client_agent: &'static str,
}

/// One request's spans, as found by trace.
struct Request {
    server: Span,
    http: Span,
    db: Vec<Span>,
}

/// Waits for the spans of `runs`, then asserts the one-trace-per-request
/// shape on all of them; returns each request's spans in curl order.
#[track_caller]
fn assert_traces(receiver: &OtlpReceiver, stack: &Stack, runs: &[ClientRun], db_per_request: usize) -> Vec<Request> {
    let n = runs.len();
    let curl_pids: Vec<u32> = runs.iter().map(|r| r.pid).collect();
    let mut pids = curl_pids.clone();
    pids.extend([stack.pid, stack.downstream]);
    receiver.focus(&pids);
    // Each request's server span ends after its own client calls, and the
    // downstream's server span ends before the HTTP client span it answers.
    receiver.expect_spans(&format!("{n} requests through {}", stack.service), SPAN_TIMEOUT, |all| {
        let count = |pid: u32, f: &dyn Fn(&Span) -> bool| all.iter().filter(|s| s.pid() == Some(pid) && f(s)).count();
        curl_pids.iter().all(|p| count(*p, &|s| s.is_client()) == 1)
            && count(stack.pid, &|s| s.is_server()) >= n
            && count(stack.pid, &is_db) >= n * db_per_request
            && count(stack.pid, &|s| s.is_client() && s.attr_str("url.path").is_some()) >= n
            && count(stack.downstream, &|s| s.is_server()) >= n
    });
    let spans = of_pids(&receiver.spans(), &pids);
    let ctx = describe(&spans);

    let mut seen_traces = BTreeSet::new();
    let mut out = Vec::new();
    for run in runs {
        let curl_spans = of_pids(&spans, &[run.pid]);
        assert_eq!(curl_spans.len(), 1, "curl pid {} made one request:\n{ctx}", run.pid);
        let root = &curl_spans[0];
        assert!(root.is_client() && root.parent_span_id.is_empty(), "curl's CLIENT span is the root: {root}\n{ctx}");
        assert!(seen_traces.insert(root.trace_id.clone()), "two requests share trace {}\n{ctx}", root.trace_id);
        let trace: Vec<Span> = spans.iter().filter(|s| s.trace_id == root.trace_id).cloned().collect();
        let tctx = describe(&trace);

        let servers: Vec<&Span> = trace.iter().filter(|s| s.pid() == Some(stack.pid) && s.is_server()).collect();
        assert_eq!(servers.len(), 1, "one {} SERVER span in the request's trace:\n{tctx}", stack.service);
        let server = servers[0].clone();
        assert_eq!(server.parent_span_id, root.span_id, "the SERVER span is curl's child:\n{tctx}");
        assert_http_span(&server, ROUTE, PATH, stack.port, "curl/");
        assert_resource(&server, stack.service, stack.pid);

        let mine: Vec<Span> =
            trace.iter().filter(|s| s.pid() == Some(stack.pid) && s.span_id != server.span_id).cloned().collect();
        for s in &mine {
            assert!(s.is_client(), "only CLIENT spans under the request: {s}\n{tctx}");
            assert_eq!(s.parent_span_id, server.span_id, "a child of the request's SERVER span: {s}\n{tctx}");
            assert!(
                server.start_ns <= s.start_ns && s.end_ns <= server.end_ns,
                "inside the SERVER span's time: {s}\n{tctx}"
            );
            assert_resource(s, stack.service, stack.pid);
        }
        let http: Vec<Span> = mine.iter().filter(|s| !is_db(s)).cloned().collect();
        assert_eq!(http.len(), 1, "one outgoing HTTP CLIENT span per request:\n{tctx}");
        let http = http.into_iter().next().unwrap_or_else(|| unreachable!());
        assert_http_span(&http, DOWNSTREAM_ROUTE, DOWNSTREAM_PATH, stack.downstream_port, stack.client_agent);

        let down: Vec<&Span> = trace.iter().filter(|s| s.pid() == Some(stack.downstream)).collect();
        assert_eq!(down.len(), 1, "one downstream span per request:\n{tctx}");
        let down = down[0];
        assert!(down.is_server(), "{down}");
        assert_eq!(down.parent_span_id, http.span_id, "downstream joins through the injected header:\n{tctx}");
        assert_http_span(down, DOWNSTREAM_ROUTE, DOWNSTREAM_PATH, stack.downstream_port, stack.client_agent);
        assert_resource(down, DOWNSTREAM_SERVICE, stack.downstream);

        for s in mine.iter().filter(|s| is_db(s)) {
            assert_eq!(s.attr_str("db.namespace"), Some(DB_NAME), "db.namespace of {s}");
            assert_eq!(s.attr_str("server.address"), Some("127.0.0.1"), "server.address of {s}");
            assert_eq!(s.status_code, StatusCode::Unset, "status of {s}");
            assert!(s.attr("error.type").is_none(), "error.type on {s}");
        }
        let db = mine.into_iter().filter(is_db).collect();
        out.push(Request { server, http, db });
    }

    // Nothing of these processes outside the requests' traces: no orphan,
    // no duplicate.
    let stray: Vec<Span> = spans.iter().filter(|s| !seen_traces.contains(&s.trace_id)).cloned().collect();
    assert!(stray.is_empty(), "spans outside the {n} request traces:\n{}\nall:\n{ctx}", describe(&stray));
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique:\n{ctx}");
    out
}

#[track_caller]
fn assert_http_span(s: &Span, route: &str, path: &str, port: u16, agent_prefix: &str) {
    assert_eq!(s.name, format!("GET {route}"), "name of {s}");
    assert_eq!(s.attr_str("http.request.method"), Some("GET"), "{s}");
    assert_eq!(s.attr_str("http.route"), Some(route), "{s}");
    assert_eq!(s.attr_str("url.path"), Some(path), "{s}");
    assert_eq!(s.attr_int("http.response.status_code"), Some(200), "{s}");
    assert_eq!(s.attr_int("server.port"), Some(i64::from(port)), "server.port of {s}");
    assert_eq!(s.status_code, StatusCode::Unset, "status of {s}");
    let ua = s.attr_str("user_agent.original").unwrap_or_default();
    assert!(ua.starts_with(agent_prefix), "user_agent.original {ua:?} of {s}");
}

#[track_caller]
fn assert_db(r: &Request, i: usize, want: &DbWant) {
    let mut got = DbWant::new();
    for s in &r.db {
        *got.entry(db_key(s)).or_default() += 1;
    }
    assert_eq!(&got, want, "DB spans of request {} (SERVER span {})\n{}", i + 1, r.server.span_id, describe(&r.db));
}

/// Makes PostgreSQL log every statement it runs (before the agent starts:
/// these psql calls are no test's spans), so a test can check from the
/// server's side which statements went out by name.
#[track_caller]
fn log_all_statements(pg: &Postgres) {
    let out = pg
        .psql()
        .args(["-c", "ALTER SYSTEM SET log_statement = 'all'", "-c", "SELECT pg_reload_conf()"])
        .output()
        .unwrap_or_else(|e| panic!("running psql: {e}"));
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
}

/// Lines of the PostgreSQL log saying that the named statement `name` was
/// executed with text `text`.
fn executions_of(pg: &Postgres, name: &str, text: &str) -> usize {
    let needle = format!("execute {name}: {text}");
    pg.log().lines().filter(|l| l.ends_with(&needle)).count()
}

/// Tomcat 10 + DBCP + pgjdbc + MariaDB Connector/J + HttpURLConnection.
///
/// The JDK keeps its connection to the python service alive between
/// requests, and by default only a connection's first request is injected
/// (README, "Keep-alive connections"): this test runs the agent with
/// `--propagation unsafe-keepalive`, the documented mode for such clients,
/// so that every request's downstream span must join (and the JDBC
/// connections, kept in the kernel's sockmap for their lifetime in that
/// mode, must still work).
#[test]
#[ignore = "needs root, tomcat10, PostgreSQL, MariaDB and the agent binary: cargo xtask test runs it"]
fn tomcat_servlet_jdbc_and_http_give_one_trace_per_request() {
    let _guard = e2e_setup("tomcat_servlet_jdbc_and_http_give_one_trace_per_request");
    let pg = Postgres::start();
    log_all_statements(&pg);
    let mariadb = MariaDb::start();
    let downstream = Server::python_ok_server();
    let receiver = OtlpReceiver::start();
    let agent = start_agent(&receiver, &["--propagation", "unsafe-keepalive"]);
    let secret = secret("tomcat");
    let tomcat = Tomcat::start(&ShopConfig {
        pg: &pg,
        mariadb: &mariadb,
        downstream: downstream.url(""),
        secret: secret.clone(),
    });

    let runs = curl_items(&tomcat.url(PATH), &|| tomcat.log());
    for r in &runs {
        assert_eq!(r.stdout, "apple pear answer 42.00 200 ok\n", "servlet reply");
    }
    let stack = Stack {
        service: "tomcat",
        pid: tomcat.pid(),
        port: tomcat.port(),
        downstream: downstream.pid(),
        downstream_port: downstream.port(),
        client_agent: "Java/",
    };
    let requests = assert_traces(&receiver, &stack, &runs, 5);
    let out = agent.stop();

    // Every request: three executions of the PostgreSQL statement (pgjdbc
    // rewrites `?` to `$1`; from the 5th execution on the pooled
    // connection it is the named statement S_1, and from the 7th only
    // Bind/Execute go out, so the text comes from the parser's cache),
    // DBCP's validation on borrow (pgjdbc's isValid sends an empty query:
    // a span named after the system, without text), and one MariaDB
    // query (Connector/J inlines the parameters client-side: the agent
    // replaced them).
    let every = [
        ("postgresql", "SELECT items", "SELECT name FROM items WHERE id = $1", 3),
        ("postgresql", "postgresql", "<none>", 1),
        ("mariadb", "SELECT items", "SELECT price FROM items WHERE id = ? AND name <> ?", 1),
    ];
    // The first request makes the pools: DBCP opens, validates and closes
    // one connection per pool to check its factory, then opens the one it
    // lends; each connection's set-up statements are the request's work.
    let mut first = every.to_vec();
    first.extend([
        ("postgresql", "SET", "SET extra_float_digits = ?", 2),
        ("postgresql", "SET", "SET application_name = ?", 2),
        ("postgresql", "postgresql", "<none>", 1),
        ("mariadb", "SET", "set autocommit=?, sql_mode = concat(@@sql_mode,?)", 2),
        (
            "mariadb",
            "SELECT",
            "SELECT @@max_allowed_packet,@@system_time_zone,@@time_zone,@@auto_increment_increment",
            2,
        ),
    ]);
    for (i, r) in requests.iter().enumerate() {
        assert_db(r, i, &db_want(if i == 0 { &first } else { &every }));
        for s in &r.db {
            assert_eq!(
                s.attr_int("server.port"),
                Some(i64::from(if s.attr_str("db.system.name") == Some("mariadb") {
                    mariadb.port()
                } else {
                    pg.port()
                })),
                "server.port of {s}"
            );
            if s.name == "SELECT items" {
                assert_eq!(s.attr_str("db.collection.name"), Some("items"), "{s}");
                assert_eq!(s.attr_str("db.operation.name"), Some("SELECT"), "{s}");
                assert_eq!(s.attr_int("db.response.returned_rows"), Some(1), "{s}");
            }
        }
        assert_eq!(r.http.attr_int("http.response.body.size"), Some(2), "{}", r.http);
    }
    // The premise, from the server's side: all executions but the first
    // four ran pgjdbc's named statement S_1.
    let named = executions_of(&pg, "S_1", "SELECT name FROM items WHERE id = $1");
    assert_eq!(named, 3 * REQUESTS - 4, "executions of S_1 in the PostgreSQL log:\n{}", pg.log());
    assert_not_leaked(&receiver, &out, &[&secret]);
}

/// puma (thread pool) + Rack + pg + Net::HTTP, with puma's request queueing
/// off: the pool thread that reads a request runs the app for it.
#[test]
#[ignore = "needs root, puma, PostgreSQL and the agent binary: cargo xtask test runs it"]
fn puma_rack_pg_and_http_give_one_trace_per_request() {
    let _guard = e2e_setup("puma_rack_pg_and_http_give_one_trace_per_request");
    let pg = Postgres::start();
    log_all_statements(&pg);
    let downstream = Server::python_ok_server();
    let receiver = OtlpReceiver::start();
    let agent = start_agent(&receiver, &[]);
    let secret = secret("puma");
    let puma = Puma::start(&pg, &downstream.url(""), &secret, false);

    let runs = curl_items(&puma.url(PATH), &|| puma.log());
    for r in &runs {
        assert_eq!(r.stdout, "answer 42.00 200 ok\n", "rack app reply");
    }
    let stack = Stack {
        service: PUMA_TAG,
        pid: puma.pid(),
        port: puma.port(),
        downstream: downstream.pid(),
        downstream_port: downstream.port(),
        client_agent: "Ruby",
    };
    let requests = assert_traces(&receiver, &stack, &runs, 2);
    let out = agent.stop();

    // Every request: one query with a bound parameter (unnamed statement,
    // text in its Parse) and one execution of the statement prepared by
    // name when the pooled connection was made (only Bind/Execute: the
    // text comes from the parser's cache).
    let every = db_want(&[
        ("postgresql", "SELECT items", "SELECT name FROM items WHERE id = $1", 1),
        ("postgresql", "SELECT items", "SELECT price FROM items WHERE id = $1 AND name <> $2", 1),
    ]);
    for (i, r) in requests.iter().enumerate() {
        assert_db(r, i, &every);
    }
    let named = executions_of(&pg, "item_price", "SELECT price FROM items WHERE id = $1 AND name <> $2");
    assert_eq!(named, REQUESTS, "executions of item_price in the PostgreSQL log:\n{}", pg.log());
    assert_not_leaked(&receiver, &out, &[&secret]);
}

/// puma with its defaults (`queue_requests` on). A request whose bytes are
/// not there when a pool thread first looks is read by puma's reactor
/// thread and run by a pool thread: the kernel links calls to the request
/// its thread read, so those calls cannot be the request's children
/// (README, "What is not linked"). What must hold anyway: every SERVER
/// span is curl's child, each request's calls are either all its children
/// or all roots of traces of their own (never another request's children),
/// each downstream SERVER span joins the HTTP CLIENT span that called it,
/// and nothing is lost or doubled.
#[test]
#[ignore = "needs root, puma, PostgreSQL and the agent binary: cargo xtask test runs it"]
fn puma_reactor_handoff_never_links_a_call_to_the_wrong_request() {
    let _guard = e2e_setup("puma_reactor_handoff_never_links_a_call_to_the_wrong_request");
    let pg = Postgres::start();
    let downstream = Server::python_ok_server();
    let receiver = OtlpReceiver::start();
    let agent = start_agent(&receiver, &[]);
    let puma = Puma::start(&pg, &downstream.url(""), &secret("puma"), true);

    let runs = curl_items(&puma.url(PATH), &|| puma.log());
    let n = runs.len();
    let curl_pids: Vec<u32> = runs.iter().map(|r| r.pid).collect();
    let mut pids = curl_pids.clone();
    pids.extend([puma.pid(), downstream.pid()]);
    receiver.focus(&pids);
    receiver.expect_spans("the requests through puma", SPAN_TIMEOUT, |all| {
        let count = |pid: u32, f: &dyn Fn(&Span) -> bool| all.iter().filter(|s| s.pid() == Some(pid) && f(s)).count();
        curl_pids.iter().all(|p| count(*p, &|s| s.is_client()) == 1)
            && count(puma.pid(), &|s| s.is_server()) >= n
            && count(puma.pid(), &|s| s.is_client()) >= 3 * n
            && count(downstream.pid(), &|s| s.is_server()) >= n
    });
    agent.stop();
    let spans = of_pids(&receiver.spans(), &pids);
    let ctx = describe(&spans);
    let of = |pid: u32, f: &dyn Fn(&Span) -> bool| -> Vec<Span> {
        spans.iter().filter(|s| s.pid() == Some(pid) && f(s)).cloned().collect()
    };
    let servers = of(puma.pid(), &|s| s.is_server());
    let clients = of(puma.pid(), &|s| s.is_client());
    let downs = of(downstream.pid(), &|_| true);
    assert_eq!(servers.len(), n, "one SERVER span per request:\n{ctx}");
    assert_eq!(clients.len(), 3 * n, "two DB and one HTTP CLIENT span per request:\n{ctx}");
    assert_eq!(downs.len(), n, "one downstream SERVER span per request:\n{ctx}");
    assert_eq!(spans.len(), 6 * n, "curl, SERVER, 3 CLIENT, downstream per request:\n{ctx}");

    let mut linked = 0;
    for run in &runs {
        let root = &of(run.pid, &|_| true)[0];
        assert!(root.parent_span_id.is_empty(), "curl's span is a root: {root}");
        let server: Vec<&Span> = servers.iter().filter(|s| s.parent_span_id == root.span_id).collect();
        assert_eq!(server.len(), 1, "one SERVER span under curl's {root}\n{ctx}");
        let server = server[0];
        assert_eq!(server.trace_id, root.trace_id, "{server}");
        // The request's calls run on one pool thread inside its SERVER span.
        let calls: Vec<&Span> =
            clients.iter().filter(|c| server.start_ns <= c.start_ns && c.end_ns <= server.end_ns).collect();
        assert_eq!(calls.len(), 3, "three calls inside {server}\n{ctx}");
        let children = calls.iter().filter(|c| c.parent_span_id == server.span_id).count();
        assert!(children == 0 || children == 3, "a request's calls are all its children or none:\n{ctx}");
        for c in &calls {
            if children == 3 {
                assert_eq!(c.trace_id, server.trace_id, "{c}");
            } else {
                assert!(
                    c.parent_span_id.is_empty(),
                    "a call not under its request is a root, never another's child: {c}\n{ctx}"
                );
                assert!(
                    spans
                        .iter()
                        .filter(|s| s.trace_id == c.trace_id)
                        .all(|s| s.span_id == c.span_id || s.parent_span_id == c.span_id),
                    "the unlinked call's trace holds only it and what it called: {c}\n{ctx}"
                );
            }
        }
        linked += usize::from(children == 3);
    }
    // Injection does not depend on the thread: every downstream span is the
    // child of one HTTP CLIENT span of puma.
    for d in &downs {
        let parent: Vec<&Span> = clients.iter().filter(|c| c.span_id == d.parent_span_id).collect();
        assert_eq!(parent.len(), 1, "downstream {d} joins a puma HTTP CLIENT span\n{ctx}");
        assert_eq!(parent[0].trace_id, d.trace_id, "{d}");
        assert_eq!(parent[0].attr_str("url.path"), Some(DOWNSTREAM_PATH), "{d}");
    }
    waggle_e2e::figure(&format!(
        "puma default queue_requests: {linked} of {n} requests ran their calls on the thread that read them"
    ));
}
