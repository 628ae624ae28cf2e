//! Application stacks of issue 14 end to end under the real agent: each is
//! real software from Debian's packages serving `GET /items/<id>` by
//! querying the `items` table of the db.rs harness and calling a small
//! python service (`tests/fixtures/ok_server.py`, the downstream):
//!
//! ```text
//! curl -> entry server (Apache + mod_php | Starman + PSGI)
//!           |-> database (mysqli -> MariaDB | DBI/DBD::Pg -> PostgreSQL)
//!           '-> downstream: python ok_server GET /inventory
//! ```
//!
//! N requests from N curl processes must give N traces and nothing else:
//! curl's CLIENT span as the root, the entry SERVER span as its child, the
//! SQL CLIENT spans and the HTTP CLIENT span as children of the entry span
//! (made by the worker process that served it), and the downstream's SERVER
//! span as the child of that HTTP CLIENT span, joined through the
//! `traceparent` the kernel inserted. Every span of the servers' processes
//! must be in one of those traces (no orphans), once (no duplicates).
//!
//! The servers start before the agent, the way the agent meets them on a
//! node: prefork workers already waiting in `accept()`, the database's
//! setup queries unseen.
//!
//! Like every e2e test: root only, serialised by the e2e lock.
use std::collections::BTreeSet;

use waggle_e2e::{
    apache::{Site, WORKERS},
    assert_not_leaked, curl,
    db::{MariaDb, Postgres, DB_NAME, MARIADB_PASSWORD, MARIADB_USER, PG_USER, SEED_ITEMS},
    describe, e2e_setup,
    env::child_pids,
    fixture,
    perl::STARMAN_WORKERS,
    wait_for_other_injectors, Agent, AgentOutput, ClientRun, Kind, OtlpReceiver, Protocol, Server, Span, StatusCode,
    SPAN_TIMEOUT,
};

/// Requests per stack: each of [`SEED_ITEMS`] twice.
const REQUESTS: usize = 6;
/// The entry route every stack serves.
const ROUTE: &str = "/items/{id}";
const DOWNSTREAM_PATH: &str = "/inventory";

/// A literal no one else sends, carried in the query string and in SQL.
fn secret(tag: &str) -> String {
    format!("secret-{tag}-{}", std::process::id())
}

/// One SQL CLIENT span the entry worker must make, in order. `None`
/// fields must be absent.
struct WantSql {
    system: &'static str,
    operation: Option<&'static str>,
    collection: Option<&'static str>,
    /// Sanitized text.
    text: Option<&'static str>,
    /// `db.response.returned_rows`, when the parser knows it.
    rows: Option<i64>,
}

impl WantSql {
    /// A `SELECT ... FROM items` returning one row.
    fn select_items(system: &'static str, text: &'static str) -> WantSql {
        WantSql { system, operation: Some("SELECT"), collection: Some("items"), text: Some(text), rows: Some(1) }
    }

    /// The span name: `{operation} {collection}`, else the operation, else
    /// the database system (the semantic conventions' fallbacks).
    fn name(&self) -> String {
        match (self.operation, self.collection) {
            (Some(op), Some(c)) => format!("{op} {c}"),
            (Some(op), None) => op.to_owned(),
            _ => self.system.to_owned(),
        }
    }
}

/// What one stack is, for [`assert_stack_traces`].
struct Stack<'a> {
    /// service.name of the entry server's spans.
    service: &'a str,
    /// The entry server and its workers.
    server: &'a Server,
    /// Who makes the request's calls: `None`, the worker that serves it;
    /// else a process the worker forks for the request, with one of these
    /// service names.
    forked_caller: Option<&'a [&'a str]>,
    server_pids: Vec<u32>,
    downstream: &'a Server,
    db_port: u16,
    /// The SQL spans of every request.
    sql: Vec<WantSql>,
    /// A call the worker makes first when it serves a request on the
    /// database connection an earlier request opened (DBI's
    /// `connect_cached` pings it).
    on_reused_connection: Option<WantSql>,
}

impl Stack<'_> {
    /// The SQL spans request `i` must have, given which worker served each
    /// request (the requests ran one after the other).
    fn sql_of(&self, traces: &[Trace], i: usize) -> Vec<&WantSql> {
        let reused = traces[..i].iter().any(|t| t.entry.pid() == traces[i].entry.pid());
        let first = self.on_reused_connection.as_ref().filter(|_| reused);
        first.into_iter().chain(&self.sql).collect()
    }
}

/// One request's spans.
struct Trace {
    curl: Span,
    entry: Span,
    sql: Vec<Span>,
    http: Span,
    downstream: Span,
}

fn items_url(server: &Server, id: i32, note: &str) -> String {
    server.url(&format!("/items/{id}?note={note}"))
}

/// The seed item requested by the `i`th request.
fn item(i: usize) -> (i32, &'static str, &'static str) {
    SEED_ITEMS[i % SEED_ITEMS.len()]
}

/// Runs the [`REQUESTS`] curls, one process each, and checks every reply.
#[track_caller]
fn run_requests(stack: &Stack, note: &str) -> Vec<ClientRun> {
    (0..REQUESTS)
        .map(|i| {
            let (id, name, _) = item(i);
            let run = curl(&["-f", &items_url(stack.server, id, note)]);
            assert!(
                run.status.success(),
                "request {i} to {} failed: {run:?}\nserver log:\n{}",
                stack.service,
                stack.server.log()
            );
            let v: serde_json::Value = serde_json::from_str(&run.stdout)
                .unwrap_or_else(|e| panic!("{} answered no JSON ({e}): {:?}", stack.service, run.stdout));
            assert_eq!(v["id"], id, "reply {v}");
            assert_eq!(v["name"], name, "the database's answer in the reply {v}");
            assert_eq!(v["downstream"], "ok", "the downstream's answer in the reply {v}");
            run
        })
        .collect()
}

fn is_entry(s: &Span, stack: &Stack) -> bool {
    s.is_server() && s.pid().is_some_and(|p| stack.server_pids.contains(&p))
}

fn on_port(s: &Span, port: u16) -> bool {
    s.attr_int("server.port") == Some(i64::from(port))
}

/// A span of one of the requests, whichever process made it: the servers'
/// processes, and any calls to the database or the downstream (a CGI
/// script's are made by a process that is gone at the end).
fn is_involved(s: &Span, stack: &Stack) -> bool {
    s.pid().is_some_and(|p| stack.server_pids.contains(&p) || p == stack.downstream.pid())
        || (s.is_client() && (on_port(s, stack.db_port) || on_port(s, stack.downstream.port())))
}

fn is_sql(s: &Span) -> bool {
    s.is_client() && s.attr("db.system.name").is_some()
}

fn is_downstream_call(s: &Span) -> bool {
    s.is_client() && s.attr_str("url.path") == Some(DOWNSTREAM_PATH)
}

/// Waits until every request's spans are in, stops the agent (which
/// flushes everything captured) and matches each request's trace.
#[track_caller]
fn collect(receiver: &OtlpReceiver, agent: Agent, stack: &Stack, runs: &[ClientRun]) -> (Vec<Trace>, AgentOutput) {
    let mut focus = stack.server_pids.clone();
    focus.push(stack.downstream.pid());
    focus.extend(runs.iter().map(|r| r.pid));
    receiver.focus(&focus);
    let n = runs.len();
    receiver.expect_spans(&format!("{n} requests through {}", stack.service), SPAN_TIMEOUT, |spans| {
        let count = |f: &dyn Fn(&Span) -> bool| spans.iter().filter(|s| f(s)).count();
        runs.iter().all(|r| count(&|s| s.pid() == Some(r.pid)) >= 1)
            && count(&|s| is_entry(s, stack)) >= n
            && count(&|s| is_sql(s) && on_port(s, stack.db_port)) >= n * stack.sql.len()
            && count(&|s| is_downstream_call(s) && on_port(s, stack.downstream.port())) >= n
            && count(&|s| s.is_server() && s.pid() == Some(stack.downstream.pid())) >= n
    });
    let out = agent.stop();
    let spans = receiver.spans();
    let ours: Vec<Span> = spans.iter().filter(|s| s.pid().is_some_and(|p| focus.contains(&p))).cloned().collect();
    let traces = runs.iter().map(|r| trace_of(&spans, &ours, stack, r)).collect();
    (traces, out)
}

/// The trace curl run `run` started, split into its parts; asserts its
/// shape (parents, kinds, counts) on the way.
#[track_caller]
fn trace_of(all: &[Span], ours: &[Span], stack: &Stack, run: &ClientRun) -> Trace {
    let curls: Vec<&Span> = ours.iter().filter(|s| s.pid() == Some(run.pid)).collect();
    assert_eq!(curls.len(), 1, "curl pid {} made one request:\n{}", run.pid, describe(ours));
    let curl = curls[0].clone();
    let mut trace: Vec<Span> = all.iter().filter(|s| s.trace_id == curl.trace_id).cloned().collect();
    trace.sort_by_key(|s| (s.start_ns, s.end_ns));
    let ctx = describe(&trace);
    assert_eq!(curl.kind, Kind::Client, "{ctx}");
    assert_eq!(curl.parent_span_id, "", "curl's CLIENT span is the root\n{ctx}");

    let take = |what: &str, f: &dyn Fn(&Span) -> bool| -> Vec<Span> {
        let v: Vec<Span> = trace.iter().filter(|s| f(s)).cloned().collect();
        assert!(
            !v.is_empty(),
            "no {what} in the trace of curl pid {}:\n{ctx}\nall spans of the test:\n{}",
            run.pid,
            describe(ours)
        );
        v
    };
    let one = |what: &str, f: &dyn Fn(&Span) -> bool| -> Span {
        let v = take(what, f);
        assert_eq!(v.len(), 1, "exactly one {what} in the trace:\n{ctx}");
        v[0].clone()
    };
    let entry = one("entry SERVER span", &|s| is_entry(s, stack));
    let sql = take("SQL CLIENT span", &|s| is_sql(s));
    let http = one("HTTP CLIENT span to the downstream", &is_downstream_call);
    let downstream = one("downstream SERVER span", &|s| s.is_server() && s.pid() == Some(stack.downstream.pid()));
    assert_eq!(
        trace.len(),
        3 + sql.len() + 1,
        "the trace holds curl, the entry, its SQL and HTTP calls and the downstream, nothing else:\n{ctx}"
    );

    assert_eq!(entry.parent_span_id, curl.span_id, "the entry SERVER span is curl's child (injected header)\n{ctx}");
    for s in sql.iter().chain([&http]) {
        assert_eq!(s.parent_span_id, entry.span_id, "a call of the request is the entry span's child: {s}\n{ctx}");
        match stack.forked_caller {
            None => assert_eq!(s.pid(), entry.pid(), "the worker that served the request makes its calls: {s}\n{ctx}"),
            Some(_) => {
                assert_eq!(s.pid(), http.pid(), "one process makes the request's calls: {s}\n{ctx}");
                assert!(
                    s.pid().is_some_and(|p| !stack.server_pids.contains(&p)),
                    "a process forked for the request makes its calls: {s}\n{ctx}"
                );
            }
        }
        assert!(
            entry.start_ns <= s.start_ns && s.end_ns <= entry.end_ns,
            "a call of the request lies inside the entry span: {s}\n{ctx}"
        );
    }
    assert_eq!(
        downstream.parent_span_id, http.span_id,
        "the downstream SERVER span is the HTTP CLIENT span's child (injected header)\n{ctx}"
    );
    Trace { curl, entry, sql, http, downstream }
}

/// The attributes of one request's spans.
#[track_caller]
fn assert_request(traces: &[Trace], stack: &Stack, i: usize, note: &str) {
    let t = &traces[i];
    let (id, _, _) = item(i);
    let path = format!("/items/{id}");
    let e = &t.entry;
    assert_eq!(e.name, format!("GET {ROUTE}"), "entry span name: {e}");
    assert_eq!(e.service_name, stack.service, "service.name: {e}");
    assert_eq!(e.attr_str("http.request.method"), Some("GET"), "{e}");
    assert_eq!(e.attr_str("http.route"), Some(ROUTE), "{e}");
    assert_eq!(e.attr_str("url.path"), Some(path.as_str()), "the query string is not exported: {e}");
    assert_eq!(e.attr_str("url.scheme"), Some("http"), "{e}");
    assert_eq!(e.attr_int("http.response.status_code"), Some(200), "{e}");
    assert_eq!(e.attr_int("server.port"), Some(i64::from(stack.server.port())), "{e}");
    assert_eq!(e.attr_str("client.address"), Some("127.0.0.1"), "{e}");
    assert!(e.attr_str("user_agent.original").is_some_and(|ua| ua.starts_with("curl/")), "{e}");
    assert_eq!(e.status_code, StatusCode::Unset, "{e}");
    assert!(!note.is_empty() && e.attr_str("url.path").is_some_and(|p| !p.contains(note)), "{e}");

    assert_eq!(t.curl.attr_str("url.path"), Some(path.as_str()), "{}", t.curl);
    assert_eq!(t.curl.attr_int("http.response.status_code"), Some(200), "{}", t.curl);

    let want_sql = stack.sql_of(traces, i);
    assert_eq!(t.sql.len(), want_sql.len(), "SQL spans of request {i}:\n{}", describe(&t.sql));
    for (s, want) in t.sql.iter().zip(want_sql) {
        assert_eq!(s.kind, Kind::Client, "{s}");
        assert_eq!(s.attr_str("db.system.name"), Some(want.system), "db.system.name of {s}");
        assert_eq!(s.attr_str("db.namespace"), Some(DB_NAME), "db.namespace of {s}");
        assert_eq!(s.attr_str("db.operation.name"), want.operation, "db.operation.name of {s}");
        assert_eq!(s.attr_str("db.collection.name"), want.collection, "db.collection.name of {s}");
        assert_eq!(s.attr_str("db.query.text"), want.text, "db.query.text of {s}");
        assert_eq!(s.name, want.name(), "name of {s}");
        assert_eq!(s.attr_str("server.address"), Some("127.0.0.1"), "{s}");
        assert_eq!(s.attr_int("server.port"), Some(i64::from(stack.db_port)), "{s}");
        assert_eq!(s.attr("error.type"), None, "{s}");
        assert_eq!(s.status_code, StatusCode::Unset, "{s}");
        if let Some(rows) = want.rows {
            assert_eq!(s.attr_int("db.response.returned_rows"), Some(rows), "{s}");
        }
        assert_caller_service(s, stack);
    }

    let h = &t.http;
    assert_eq!(h.name, format!("GET {DOWNSTREAM_PATH}"), "{h}");
    assert_eq!(h.attr_str("http.request.method"), Some("GET"), "{h}");
    assert_eq!(h.attr_int("server.port"), Some(i64::from(stack.downstream.port())), "{h}");
    assert_eq!(h.attr_int("http.response.status_code"), Some(200), "{h}");
    assert_caller_service(h, stack);
    let d = &t.downstream;
    assert_eq!(d.name, format!("GET {DOWNSTREAM_PATH}"), "{d}");
    assert_eq!(d.attr_str("url.path"), Some(DOWNSTREAM_PATH), "{d}");
    assert_eq!(d.attr_int("http.response.status_code"), Some(200), "{d}");
    assert_eq!(d.service_name, stack.downstream.service_name, "{d}");
}

#[track_caller]
fn assert_caller_service(s: &Span, stack: &Stack) {
    match stack.forked_caller {
        None => assert_eq!(s.service_name, stack.service, "{s}"),
        Some(names) => assert!(names.contains(&s.service_name.as_str()), "service.name in {names:?}: {s}"),
    }
}

/// N traces, one per request, each as [`trace_of`] and [`assert_request`]
/// say; every span of the servers' processes in one of them.
#[track_caller]
fn assert_stack_traces(
    receiver: &OtlpReceiver,
    agent: Agent,
    stack: &Stack,
    runs: &[ClientRun],
    note: &str,
) -> AgentOutput {
    let (traces, out) = collect(receiver, agent, stack, runs);
    for i in 0..traces.len() {
        assert_request(&traces, stack, i, note);
    }
    let trace_ids: BTreeSet<&str> = traces.iter().map(|t| t.curl.trace_id.as_str()).collect();
    assert_eq!(trace_ids.len(), runs.len(), "{} requests give {} traces", runs.len(), runs.len());
    let mut span_ids: Vec<&str> = Vec::new();
    for t in &traces {
        span_ids.extend([&t.curl, &t.entry, &t.http, &t.downstream].map(|s| s.span_id.as_str()));
        span_ids.extend(t.sql.iter().map(|s| s.span_id.as_str()));
    }
    let unique: BTreeSet<&str> = span_ids.iter().copied().collect();
    assert_eq!(unique.len(), span_ids.len(), "span ids repeat across the traces");

    // No orphans, no duplicates: the servers' processes and the calls to
    // the database and the downstream are exactly the spans of these traces.
    let spans = receiver.spans();
    let involved: Vec<Span> = spans.iter().filter(|s| is_involved(s, stack)).cloned().collect();
    let stray: Vec<Span> = involved.iter().filter(|s| !trace_ids.contains(s.trace_id.as_str())).cloned().collect();
    assert!(stray.is_empty(), "spans of the requests outside their traces:\n{}", describe(&stray));
    let in_traces: usize = traces.iter().map(|t| 3 + t.sql.len()).sum();
    assert_eq!(involved.len(), in_traces, "spans of the requests: those of the traces, once");
    assert!(receiver.rejected().is_empty(), "the receiver rejected exports: {:?}", receiver.rejected());
    out
}

/// The agent with propagation on (the default), after any other agent's
/// injector is gone.
#[track_caller]
fn start_agent(receiver: &OtlpReceiver) -> Agent {
    wait_for_other_injectors();
    Agent::start(&receiver.agent_args(Protocol::Grpc), &[])
}

/// The pids of a prefork server: the parent and its workers.
fn prefork_pids(server: &Server, workers: usize) -> Vec<u32> {
    let pids = server.pids();
    assert!(pids.len() > workers, "{} workers of pid {}: {:?}", workers, server.pid(), child_pids(server.pid()));
    pids
}

// 1. Apache 2.4 prefork + mod_php, mysqli prepared statements -> MariaDB,
//    file_get_contents -> python.

#[test]
#[ignore = "needs root, apache2 with mod_php, MariaDB and the agent binary: cargo xtask test runs it"]
fn apache_mod_php_mysqli_and_file_get_contents_give_one_trace_per_request() {
    let _guard = e2e_setup("apache_mod_php_mysqli_and_file_get_contents_give_one_trace_per_request");
    let db = MariaDb::start();
    let downstream = Server::python_ok_server();
    let php = std::fs::read(fixture("stacks/item.php")).unwrap_or_else(|e| panic!("item.php: {e}"));
    let site = Site::php()
        .file("item.php", php, false)
        .config("AliasMatch \"^/items/[0-9]+$\" \"{docroot}/item.php\"")
        .env("DB_PORT", db.port())
        .env("DB_USER", MARIADB_USER)
        .env("DB_PASSWORD", MARIADB_PASSWORD)
        .env("DB_NAME", DB_NAME)
        .env("DOWNSTREAM_PORT", downstream.port());
    let apache = Server::apache(&site);
    let stack = Stack {
        service: "apache2",
        server: &apache,
        forked_caller: None,
        server_pids: prefork_pids(&apache, WORKERS),
        downstream: &downstream,
        db_port: db.port(),
        // A connection per request: nothing before the statements.
        sql: vec![
            // COM_STMT_EXECUTE of the prepared statement (the prepare itself
            // gives no span), its row in the binary protocol.
            WantSql::select_items("mariadb", "SELECT name, price FROM items WHERE id = ?"),
            // COM_QUERY, its literals hidden.
            WantSql::select_items("mariadb", "SELECT count(*) FROM items WHERE price > ? AND name <> ?"),
        ],
        on_reused_connection: None,
    };
    let receiver = OtlpReceiver::start();
    let agent = start_agent(&receiver);

    let note = secret("php");
    let runs = run_requests(&stack, &note);
    let out = assert_stack_traces(&receiver, agent, &stack, &runs, &note);
    assert_not_leaked(&receiver, &out, &[&note, MARIADB_PASSWORD]);
}

// 2. Perl: Starman (prefork) + a PSGI app, DBI/DBD::Pg -> PostgreSQL,
//    HTTP::Tiny -> python.

#[test]
#[ignore = "needs root, starman, DBD::Pg, PostgreSQL and the agent binary: cargo xtask test runs it"]
fn starman_psgi_dbd_pg_and_http_tiny_give_one_trace_per_request() {
    let _guard = e2e_setup("starman_psgi_dbd_pg_and_http_tiny_give_one_trace_per_request");
    let pg = Postgres::start();
    let downstream = Server::python_ok_server();
    let starman = Server::starman(
        &fixture("stacks/shop.psgi"),
        &[
            ("DB_NAME", DB_NAME.to_owned()),
            ("DB_PORT", pg.port().to_string()),
            ("DB_USER", PG_USER.to_owned()),
            ("DOWNSTREAM_PORT", downstream.port().to_string()),
        ],
    );
    let stack = Stack {
        // Named after the application's .psgi file.
        service: "shop",
        server: &starman,
        forked_caller: None,
        server_pids: prefork_pids(&starman, STARMAN_WORKERS),
        downstream: &downstream,
        db_port: pg.port(),
        sql: vec![
            // DBD::Pg prepares a statement with placeholders on the server
            // (Parse/Bind/Execute, `?` turned into `$1`).
            WantSql::select_items("postgresql", "SELECT name, price FROM items WHERE id = $1"),
            // A simple query, its literals hidden.
            WantSql::select_items("postgresql", "SELECT count(*) FROM items WHERE price > ? AND name <> ?"),
        ],
        // connect_cached pings a cached handle before handing it out:
        // `/* DBD::Pg ping test v3.16.0 */`, a statement of nothing but a
        // comment, which the sanitizer drops; the server answers
        // EmptyQueryResponse.
        on_reused_connection: Some(WantSql {
            system: "postgresql",
            operation: None,
            collection: None,
            text: None,
            rows: None,
        }),
    };
    let receiver = OtlpReceiver::start();
    let agent = start_agent(&receiver);

    let note = secret("perl");
    let runs = run_requests(&stack, &note);
    let out = assert_stack_traces(&receiver, agent, &stack, &runs, &note);
    assert_not_leaked(&receiver, &out, &[&note]);
}

// 3. Perl CGI under Apache's mod_cgi: the calls come from the process the
//    worker forks for the request.

#[test]
#[ignore = "needs root, apache2, DBD::Pg, PostgreSQL and the agent binary: cargo xtask test runs it"]
fn apache_mod_cgi_perl_script_gives_one_trace_per_request() {
    let _guard = e2e_setup("apache_mod_cgi_perl_script_gives_one_trace_per_request");
    let pg = Postgres::start();
    let downstream = Server::python_ok_server();
    let cgi = std::fs::read(fixture("stacks/item.cgi")).unwrap_or_else(|e| panic!("item.cgi: {e}"));
    let site = Site::cgi()
        .file("item.cgi", cgi, true)
        .config("AliasMatch \"^/items/[0-9]+$\" \"{docroot}/item.cgi\"")
        .env("DB_PORT", pg.port())
        .env("DB_USER", PG_USER)
        .env("DB_NAME", DB_NAME)
        .env("DOWNSTREAM_PORT", downstream.port());
    let apache = Server::apache(&site);
    let stack = Stack {
        service: "apache2",
        server: &apache,
        // `perl .../item.cgi`, named after its script; when the script has
        // exited before the agent read its /proc entry, after the kernel's
        // task name (the script's file name).
        forked_caller: Some(&["item", "item.cgi"]),
        server_pids: prefork_pids(&apache, WORKERS),
        downstream: &downstream,
        db_port: pg.port(),
        sql: vec![
            WantSql::select_items("postgresql", "SELECT name, price FROM items WHERE id = $1"),
            WantSql::select_items("postgresql", "SELECT count(*) FROM items WHERE price > ? AND name <> ?"),
        ],
        on_reused_connection: None,
    };
    let receiver = OtlpReceiver::start();
    let agent = start_agent(&receiver);

    let note = secret("cgi");
    let runs = run_requests(&stack, &note);
    let out = assert_stack_traces(&receiver, agent, &stack, &runs, &note);
    assert_not_leaked(&receiver, &out, &[&note]);
}
