//! SQL acceptance tests: the real agent watching real PostgreSQL and MariaDB
//! servers (Debian's packages, loopback, temp data dirs) and real clients
//! (psql, pgbench, psycopg 3, the mariadb CLI, MySQL Connector/Python),
//! asserting on the CONTENT of the CLIENT spans it exports.
//!
//! Like the HTTP tests, every test needs root (ignored by plain `cargo test`,
//! run by `cargo xtask test`, failing without root) and runs under the e2e
//! lock, and picks spans by the pid of the client it started:
//! the agent sees every process on the machine. Servers and setup queries run
//! before the agent starts, so a client's spans are exactly its own actions.
//!
//! Literals the clients send are unique per run ([`secret`]): finding one
//! anywhere in the exported data or the agent's output means a leak.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Duration,
};

use waggle_e2e::{
    assert_not_leaked,
    db::{sql_script, MariaDb, Postgres, DB_NAME, MARIADB_PASSWORD, MARIADB_USER, PG_USER},
    describe, e2e_setup, run_client, Agent, ClientRun, Kind, OtlpReceiver, Proc, Protocol, Span, StatusCode,
    SPAN_TIMEOUT,
};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A literal no one else sends: letters and digits of this run.
fn secret(tag: &str) -> String {
    format!("secret-{tag}-{}", std::process::id())
}

/// CLIENT spans of `pid` that carry `db.system.name`.
fn db_spans(spans: &[Span], pid: u32) -> Vec<Span> {
    let mut out: Vec<Span> = spans
        .iter()
        .filter(|s| s.pid() == Some(pid) && s.is_client() && s.attr("db.system.name").is_some())
        .cloned()
        .collect();
    out.sort_by_key(|s| (s.start_ns, s.end_ns));
    out
}

/// Every span of `pid`, whatever its kind or protocol.
fn all_of(spans: &[Span], pid: u32) -> Vec<Span> {
    spans.iter().filter(|s| s.pid() == Some(pid)).cloned().collect()
}

/// What one DB CLIENT span must say. `None` fields must be ABSENT.
struct Want<'a> {
    system: &'a str,
    namespace: Option<&'a str>,
    operation: &'a str,
    collection: Option<&'a str>,
    text: Option<&'a str>,
    port: u16,
    /// SQLSTATE or MySQL error number; `None`: a success.
    error: Option<&'a str>,
}

#[track_caller]
fn assert_db_span(s: &Span, want: &Want) {
    assert_eq!(s.kind, Kind::Client, "{s}");
    assert_eq!(s.attr_str("db.system.name"), Some(want.system), "db.system.name of {s}");
    assert_eq!(s.attr_str("db.namespace"), want.namespace, "db.namespace of {s}");
    assert_eq!(s.attr_str("db.operation.name"), Some(want.operation), "db.operation.name of {s}");
    assert_eq!(s.attr_str("db.collection.name"), want.collection, "db.collection.name of {s}");
    assert_eq!(s.attr_str("db.query.text"), want.text, "db.query.text of {s}");
    let summary = match want.collection {
        Some(c) => format!("{} {c}", want.operation),
        None => want.operation.to_owned(),
    };
    // The summary is derived from the query text: without text there is
    // none, and the span is named after the operation alone.
    let want_summary = want.text.map(|_| summary.as_str());
    assert_eq!(s.attr_str("db.query.summary"), want_summary, "db.query.summary of {s}");
    assert_eq!(s.name, summary, "span name (= summary, else operation) of {s}");
    assert_eq!(s.attr_str("server.address"), Some("127.0.0.1"), "server.address of {s}");
    assert_eq!(s.attr_int("server.port"), Some(i64::from(want.port)), "server.port (int) of {s}");
    assert_eq!(s.attr_str("db.response.status_code"), want.error, "db.response.status_code of {s}");
    assert_eq!(s.attr_str("error.type"), want.error, "error.type of {s}");
    let status = if want.error.is_some() { StatusCode::Error } else { StatusCode::Unset };
    assert_eq!(s.status_code, status, "span status of {s}");
    assert!(s.attr("waggle.db.query.truncated").is_none(), "short statement marked truncated: {s}");
    assert!(s.start_ns > 0 && s.end_ns >= s.start_ns, "times of {s}");
}

/// The DB servers must not trace themselves by default: no span whose
/// resource is a server process (by pid, service name or executable), and
/// no SERVER-kind DB span from anyone.
#[track_caller]
fn assert_no_db_server_spans(spans: &[Span], server_pids: &[u32]) {
    const SERVER_EXES: [&str; 3] = ["postgres", "mariadbd", "mysqld"];
    let bad: Vec<Span> = spans
        .iter()
        .filter(|s| {
            s.pid().is_some_and(|p| server_pids.contains(&p))
                || SERVER_EXES.contains(&s.service_name.as_str())
                || s.resource_str("process.executable.name").is_some_and(|e| SERVER_EXES.contains(&e))
                || (s.is_server() && s.attr("db.system.name").is_some())
        })
        .cloned()
        .collect();
    assert!(bad.is_empty(), "DB server processes produced spans:\n{}", describe(&bad));
}

/// No text field of `s` (name, query text, summary, status message) holds a
/// digit run equal to `literal`: numeric literals are too short to search
/// the whole dump for, but the span's own text is where they would leak.
#[track_caller]
fn assert_number_hidden(s: &Span, literal: &str) {
    let texts = [
        Some(s.name.as_str()),
        s.attr_str("db.query.text"),
        s.attr_str("db.query.summary"),
        Some(s.status_message.as_str()),
    ];
    for t in texts.into_iter().flatten() {
        let hit = t.split(|c: char| !c.is_ascii_digit()).any(|run| run == literal);
        assert!(!hit, "numeric literal {literal} visible in {t:?} of {s}");
    }
}

/// The resource of every span of a client: checked last in each test, so a
/// resource problem (discovery) never hides what the SQL assertions say.
#[track_caller]
fn assert_resources(spans: &[Span], service: &str, pid: u32) {
    for s in spans {
        waggle_e2e::assert_resource(s, service, pid);
    }
}

#[track_caller]
fn assert_clean_receiver(receiver: &OtlpReceiver) {
    assert!(receiver.rejected().is_empty(), "the receiver rejected exports: {:?}", receiver.rejected());
}

/// Exactly `n` spans; returns them.
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

#[track_caller]
fn run(name: &str, cmd: &mut Command) -> ClientRun {
    run_client(name, cmd, CLIENT_TIMEOUT)
}

// 1. psql, one SELECT with literals: one CLIENT span, sanitized.

#[test]
#[ignore = "needs root, PostgreSQL and the agent binary: cargo xtask test runs it"]
fn psql_select_gives_one_sanitized_client_span() {
    let _guard = e2e_setup("psql_select_gives_one_sanitized_client_span");
    let pg = Postgres::start();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);

    let secret = secret("psql");
    let r = run(
        "psql",
        pg.psql().args(["-A", "-t", "-c", &format!("SELECT * FROM items WHERE id = 42 OR name = '{secret}'")]),
    );
    r.assert_success();
    assert_eq!(r.stdout.trim(), "42|answer|42.00", "psql output");

    receiver.focus(&[r.pid]);
    receiver.expect_spans("the CLIENT span of psql", SPAN_TIMEOUT, |s| !db_spans(s, r.pid).is_empty());
    let out = agent.stop();
    let spans = receiver.spans();

    let mine = all_of(&spans, r.pid);
    let s = &exactly(db_spans(&spans, r.pid), 1, "DB spans of psql", &mine)[0];
    assert_eq!(mine.len(), 1, "psql made one query, nothing else:\n{}", describe(&mine));
    assert_db_span(
        s,
        &Want {
            system: "postgresql",
            namespace: Some(DB_NAME),
            operation: "SELECT",
            collection: Some("items"),
            text: Some("SELECT * FROM items WHERE id = ? OR name = ?"),
            port: pg.port(),
            error: None,
        },
    );
    assert_eq!(s.attr_int("db.response.returned_rows"), Some(1), "{s}");
    assert_number_hidden(s, "42");
    assert_not_leaked(&receiver, &out, &[&secret]);
    assert_no_db_server_spans(&spans, &[pg.pid()]);
    assert_resources(&mine, "psql", r.pid);
    assert_clean_receiver(&receiver);
}

// 2. psql error: SQLSTATE on the span, status ERROR.

#[test]
#[ignore = "needs root, PostgreSQL and the agent binary: cargo xtask test runs it"]
fn psql_error_gives_sqlstate_and_error_status() {
    let _guard = e2e_setup("psql_error_gives_sqlstate_and_error_status");
    let pg = Postgres::start();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::HttpProtobuf), &[]);

    let secret = secret("missing");
    let r = run("psql", pg.psql().args(["-c", &format!("SELECT * FROM missing_table WHERE name = '{secret}'")]));
    assert_eq!(r.status.code(), Some(1), "psql should fail: {r:?}");
    assert!(r.stderr.contains("relation \"missing_table\" does not exist"), "psql stderr: {}", r.stderr);

    receiver.focus(&[r.pid]);
    receiver.expect_spans("the CLIENT span of psql", SPAN_TIMEOUT, |s| !db_spans(s, r.pid).is_empty());
    let out = agent.stop();
    let spans = receiver.spans();

    let mine = all_of(&spans, r.pid);
    let s = &exactly(db_spans(&spans, r.pid), 1, "DB spans of psql", &mine)[0];
    assert_eq!(mine.len(), 1, "{}", describe(&mine));
    assert_db_span(
        s,
        &Want {
            system: "postgresql",
            namespace: Some(DB_NAME),
            operation: "SELECT",
            collection: Some("missing_table"),
            text: Some("SELECT * FROM missing_table WHERE name = ?"),
            port: pg.port(),
            error: Some("42P01"),
        },
    );
    assert_eq!(s.status_message, "SQLSTATE 42P01", "{s}");
    // The server's message quotes the statement; it is not exported.
    assert_not_leaked(&receiver, &out, &[&secret, "does not exist"]);
    assert_no_db_server_spans(&spans, &[pg.pid()]);
    assert_resources(&mine, "psql", r.pid);
    assert_clean_receiver(&receiver);
}

// 3. pgbench in its three query modes: span count = transactions + setup.

/// Transactions per pgbench run (one client, one thread).
const PGBENCH_TRANSACTIONS: usize = 50;

/// Without `-n`, pgbench's setup connection runs exactly these before the
/// benchmark (pgbench.c, PostgreSQL 15: `GetTableInfo` only runs for the
/// built-in scripts, and the server version comes from the startup
/// ParameterStatus, not a query). The benchmark connection then sends one
/// statement per transaction of our one-statement script, nothing else. So
/// the band is exactly N..=N+3, and each side of it is asserted separately.
const PGBENCH_SETUP: [(&str, Option<&str>, &str); 3] = [
    ("VACUUM", None, "vacuum pgbench_branches"),
    ("VACUUM", None, "vacuum pgbench_tellers"),
    ("TRUNCATE", Some("pgbench_history"), "truncate pgbench_history"),
];

fn pgbench_mode(test: &str, mode: &str, protocol: Protocol) {
    let _guard = e2e_setup(test);
    let pg = Postgres::start();
    pg.pgbench_init();
    let script = pg.dir().join("select.sql");
    // pgbench substitutes :aid into the text in simple mode and binds it as
    // $1 in extended / prepared mode.
    std::fs::write(&script, "\\set aid random(1, 100000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n")
        .unwrap_or_else(|e| panic!("writing {}: {e}", script.display()));
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(protocol), &[]);

    let n = PGBENCH_TRANSACTIONS;
    let r = run(
        "pgbench",
        pg.pgbench().args(["-M", mode, "-c", "1", "-j", "1", "-t", &n.to_string(), "-f"]).arg(&script).arg(DB_NAME),
    );
    r.assert_success();
    assert!(
        r.stdout.contains(&format!("number of transactions actually processed: {n}/{n}")),
        "pgbench output:\n{}{}",
        r.stdout,
        r.stderr
    );

    receiver.focus(&[r.pid]);
    receiver.expect_spans(&format!("{} DB spans of pgbench", n + PGBENCH_SETUP.len()), SPAN_TIMEOUT, |s| {
        db_spans(s, r.pid).len() >= n + PGBENCH_SETUP.len()
    });
    agent.stop();
    let spans = receiver.spans();

    let mine = all_of(&spans, r.pid);
    let db = db_spans(&spans, r.pid);
    assert_eq!(mine.len(), db.len(), "pgbench spoke nothing but SQL:\n{}", describe(&mine));
    assert!(
        (n..=n + PGBENCH_SETUP.len()).contains(&db.len()),
        "span count {} outside {n}..={} ({n} transactions + pgbench's setup statements)",
        db.len(),
        n + PGBENCH_SETUP.len()
    );
    let text = if mode == "simple" {
        // The random :aid was sent as a literal: exact text = it is hidden.
        "SELECT abalance FROM pgbench_accounts WHERE aid = ?;"
    } else {
        // -M prepared: one Parse of a named statement, then only Bind/Execute;
        // every span still carries the statement's text.
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
    };
    let (selects, setup): (Vec<Span>, Vec<Span>) =
        db.into_iter().partition(|s| s.attr_str("db.collection.name") == Some("pgbench_accounts"));
    let selects = exactly(selects, n, "benchmark SELECT spans (one per transaction)", &mine);
    for s in &selects {
        assert_db_span(
            s,
            &Want {
                system: "postgresql",
                namespace: Some(DB_NAME),
                operation: "SELECT",
                collection: Some("pgbench_accounts"),
                text: Some(text),
                port: pg.port(),
                error: None,
            },
        );
        assert!(s.attr_int("db.response.returned_rows").is_some_and(|n| n <= 1), "{s}");
    }
    let setup = exactly(setup, PGBENCH_SETUP.len(), "setup statements", &mine);
    for (s, (op, collection, text)) in setup.iter().zip(PGBENCH_SETUP) {
        assert_db_span(
            s,
            &Want {
                system: "postgresql",
                namespace: Some(DB_NAME),
                operation: op,
                collection,
                text: Some(text),
                port: pg.port(),
                error: None,
            },
        );
    }
    // The setup ran first, on its own connection.
    let last_setup_end = setup.iter().map(|s| s.end_ns).max().unwrap_or(0);
    assert!(selects.iter().all(|s| s.start_ns >= last_setup_end), "setup after the benchmark?\n{}", describe(&mine));
    assert_no_db_server_spans(&spans, &[pg.pid()]);
    assert_resources(&mine, "pgbench", r.pid);
    assert_clean_receiver(&receiver);
}

#[test]
#[ignore = "needs root, PostgreSQL and the agent binary: cargo xtask test runs it"]
fn pgbench_simple_mode_span_per_transaction() {
    pgbench_mode("pgbench_simple_mode_span_per_transaction", "simple", Protocol::Grpc);
}

#[test]
#[ignore = "needs root, PostgreSQL and the agent binary: cargo xtask test runs it"]
fn pgbench_extended_mode_span_per_transaction() {
    pgbench_mode("pgbench_extended_mode_span_per_transaction", "extended", Protocol::HttpProtobuf);
}

#[test]
#[ignore = "needs root, PostgreSQL and the agent binary: cargo xtask test runs it"]
fn pgbench_prepared_mode_span_per_transaction_with_statement_text() {
    pgbench_mode("pgbench_prepared_mode_span_per_transaction_with_statement_text", "prepared", Protocol::Grpc);
}

// 4. psycopg 3, server-side parameters, prepared: one span per execute.

#[test]
#[ignore = "needs root, PostgreSQL and the agent binary: cargo xtask test runs it"]
fn psycopg_server_side_parameters_give_one_span_per_execute() {
    let _guard = e2e_setup("psycopg_server_side_parameters_give_one_span_per_execute");
    let pg = Postgres::start();
    let mut script = sql_script("psycopg_prepared.py");
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::HttpProtobuf), &[]);

    let secret = secret("psycopg");
    let count = 5;
    let r =
        run("psycopg_prepared", script.args([&pg.port().to_string(), DB_NAME, PG_USER, &count.to_string(), &secret]));
    r.assert_success();
    assert_eq!(r.stdout, format!("{}done\n", "rows 0\n".repeat(count)), "script output");

    receiver.focus(&[r.pid]);
    receiver.expect_spans(&format!("{count} DB spans of the psycopg client"), SPAN_TIMEOUT, |s| {
        db_spans(s, r.pid).len() >= count
    });
    let out = agent.stop();
    let spans = receiver.spans();

    let mine = all_of(&spans, r.pid);
    let db = exactly(db_spans(&spans, r.pid), count, "DB spans (autocommit: one per execute, nothing else)", &mine);
    assert_eq!(mine.len(), count, "{}", describe(&mine));
    for s in &db {
        assert_db_span(
            s,
            &Want {
                system: "postgresql",
                namespace: Some(DB_NAME),
                operation: "SELECT",
                collection: Some("items"),
                text: Some("SELECT name, price FROM items WHERE id = $1 AND name <> $2"),
                port: pg.port(),
                error: None,
            },
        );
        assert_eq!(s.attr_int("db.response.returned_rows"), Some(0), "{s}");
        for i in 0..count {
            assert_number_hidden(s, &(1000 + i).to_string());
        }
    }
    assert_not_leaked(&receiver, &out, &[&secret]);
    assert_no_db_server_spans(&spans, &[pg.pid()]);
    assert_resources(&mine, "psycopg_prepared", r.pid);
    assert_clean_receiver(&receiver);
}

// 5. A pooled connection opened (and a statement prepared) before the agent.

#[test]
#[ignore = "needs root, PostgreSQL and the agent binary: cargo xtask test runs it"]
fn pooled_connection_opened_before_agent_gives_spans() {
    let _guard = e2e_setup("pooled_connection_opened_before_agent_gives_spans");
    let pg = Postgres::start();
    let receiver = OtlpReceiver::start();
    let secret = secret("pooled");

    let mut cmd = sql_script("psycopg_pooled.py");
    cmd.args([&pg.port().to_string(), DB_NAME, PG_USER, &secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut client = Proc::spawn("psycopg_pooled", &mut cmd);
    let pid = client.pid();
    let mut stdin = client.child.stdin.take().unwrap();
    // The script exits (EOF here) on any failure: connect_timeout bounds it.
    let mut lines = BufReader::new(client.child.stdout.take().unwrap()).lines();
    let mut next_line = || lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(next_line(), "before", "the pooled client failed before the agent started");

    // Connection, startup message (database name) and Parse of the prepared
    // statement all happened before the agent existed.
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);
    writeln!(stdin, "go").unwrap();
    // UPDATE matches row 42; the prepared SELECT matches nothing.
    assert_eq!(next_line(), "after 1 0");
    assert!(client.wait_timeout(Duration::from_secs(20)).is_some_and(|s| s.success()), "the pooled client failed");

    receiver.focus(&[pid]);
    receiver.expect_spans("2 DB spans of the pooled client", SPAN_TIMEOUT, |s| db_spans(s, pid).len() >= 2);
    let out = agent.stop();
    let spans = receiver.spans();

    let mine = all_of(&spans, pid);
    let db = exactly(db_spans(&spans, pid), 2, "DB spans (the two queries after the pause)", &mine);
    assert_eq!(mine.len(), 2, "{}", describe(&mine));
    // The startup message went by before the agent: the database name is
    // unknown, and must never be guessed wrong.
    for s in &db {
        assert!(matches!(s.attr_str("db.namespace"), None | Some(DB_NAME)), "db.namespace of {s}");
    }
    let namespace = db[0].attr_str("db.namespace");
    // A new statement: its Parse is seen, so the text is known.
    assert_db_span(
        &db[0],
        &Want {
            system: "postgresql",
            namespace,
            operation: "UPDATE",
            collection: Some("items"),
            text: Some("UPDATE items SET price = price WHERE id = $1 AND name <> $2"),
            port: pg.port(),
            error: None,
        },
    );
    assert_eq!(db[0].attr_int("waggle.db.response.affected_rows"), Some(1), "{}", db[0]);
    // The statement prepared before the agent: Bind only, no text; the
    // operation comes from the CommandComplete tag.
    assert_db_span(
        &db[1],
        &Want {
            system: "postgresql",
            namespace: db[1].attr_str("db.namespace"),
            operation: "SELECT",
            collection: None,
            text: None,
            port: pg.port(),
            error: None,
        },
    );
    assert_eq!(db[1].attr_int("db.response.returned_rows"), Some(0), "{}", db[1]);
    assert_number_hidden(&db[0], "42");
    assert_not_leaked(&receiver, &out, &[&secret]);
    assert_no_db_server_spans(&spans, &[pg.pid()]);
    assert_resources(&mine, "psycopg_pooled", pid);
    assert_clean_receiver(&receiver);
}

// 6. MariaDB CLI: a sanitized SELECT, and an unknown table (error 1146).

#[test]
#[ignore = "needs root, MariaDB and the agent binary: cargo xtask test runs it"]
fn mariadb_cli_select_and_error() {
    let _guard = e2e_setup("mariadb_cli_select_and_error");
    let db = MariaDb::start();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::HttpProtobuf), &[]);

    let secret = secret("mariadb");
    let ok = run(
        "mariadb",
        db.client().args(["-e", &format!("SELECT id, name FROM items WHERE id = 7 OR name = '{secret}'")]),
    );
    ok.assert_success();
    assert_eq!(ok.stdout, "", "no row matches");
    let err = run("mariadb", db.client().args(["-e", &format!("SELECT * FROM missing_table WHERE name = '{secret}'")]));
    assert_eq!(err.status.code(), Some(1), "the query should fail: {err:?}");
    assert!(err.stderr.contains("ERROR 1146 (42S02)"), "mariadb stderr: {}", err.stderr);

    receiver.focus(&[ok.pid, err.pid]);
    receiver.expect_spans("the CLIENT spans of both mariadb runs", SPAN_TIMEOUT, |s| {
        !db_spans(s, ok.pid).is_empty() && !db_spans(s, err.pid).is_empty()
    });
    let out = agent.stop();
    let spans = receiver.spans();

    let mine = all_of(&spans, ok.pid);
    let s = &exactly(db_spans(&spans, ok.pid), 1, "DB spans of the first mariadb run", &mine)[0];
    assert_eq!(mine.len(), 1, "{}", describe(&mine));
    assert_db_span(
        s,
        &Want {
            system: "mariadb",
            namespace: Some(DB_NAME),
            operation: "SELECT",
            collection: Some("items"),
            text: Some("SELECT id, name FROM items WHERE id = ? OR name = ?"),
            port: db.port(),
            error: None,
        },
    );
    assert_eq!(s.attr_int("db.response.returned_rows"), Some(0), "{s}");
    assert_number_hidden(s, "7");

    let mine = all_of(&spans, err.pid);
    let s = &exactly(db_spans(&spans, err.pid), 1, "DB spans of the failing mariadb run", &mine)[0];
    assert_eq!(mine.len(), 1, "{}", describe(&mine));
    assert_db_span(
        s,
        &Want {
            system: "mariadb",
            namespace: Some(DB_NAME),
            operation: "SELECT",
            collection: Some("missing_table"),
            text: Some("SELECT * FROM missing_table WHERE name = ?"),
            port: db.port(),
            error: Some("1146"),
        },
    );
    assert!(s.status_message.contains("1146") && s.status_message.contains("42S02"), "status message of {s}");
    assert_not_leaked(&receiver, &out, &[&secret, "doesn't exist"]);
    assert_no_db_server_spans(&spans, &[db.pid()]);
    assert_resources(&all_of(&spans, ok.pid), "mariadb", ok.pid);
    assert_resources(&all_of(&spans, err.pid), "mariadb", err.pid);
    assert_clean_receiver(&receiver);
}

// 7. MariaDB server-side prepared statements: COM_STMT_PREPARE + 3 executes.

/// `SHOW GLOBAL STATUS` counters, read with the CLI (before or after the
/// agent runs, so they never show up as spans).
fn mariadb_status(db: &MariaDb, names: &[&str]) -> BTreeMap<String, u64> {
    let list: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    let r = run(
        "mariadb",
        db.client().args(["-N", "-e", &format!("SHOW GLOBAL STATUS WHERE Variable_name IN ({})", list.join(", "))]),
    );
    r.assert_success();
    r.stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), v.trim().parse().ok()?)))
        .collect()
}

#[test]
#[ignore = "needs root, MariaDB and the agent binary: cargo xtask test runs it"]
fn mariadb_prepared_statements_give_one_span_per_execute() {
    let _guard = e2e_setup("mariadb_prepared_statements_give_one_span_per_execute");
    let db = MariaDb::start();
    let mut script = sql_script("mysql_prepared.py");
    const COUNTERS: [&str; 2] = ["Com_stmt_prepare", "Com_stmt_execute"];
    let before = mariadb_status(&db, &COUNTERS);
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);

    let secret = secret("stmt");
    let count = 3;
    let port = db.port().to_string();
    let r = run(
        "mysql_prepared",
        script.args([port.as_str(), MARIADB_USER, MARIADB_PASSWORD, DB_NAME, &count.to_string(), &secret]),
    );
    r.assert_success();
    assert_eq!(r.stdout, "rows 0\nrows 0\nrows 0\ndone\n", "script output");

    let text = "SELECT name, price FROM items WHERE id = ? AND name <> ?";
    let is_stmt = |s: &Span| s.attr_str("db.query.text") == Some(text);
    receiver.focus(&[r.pid]);
    receiver.expect_spans("3 statement spans of the prepared-statement client", SPAN_TIMEOUT, |s| {
        db_spans(s, r.pid).iter().filter(|s| is_stmt(s)).count() >= count
    });
    let out = agent.stop();
    let spans = receiver.spans();

    // The server really executed prepared statements (not client-side
    // interpolation, whose sanitized text would look the same).
    let after = mariadb_status(&db, &COUNTERS);
    let delta = |k: &str| after.get(k).copied().unwrap_or(0).saturating_sub(before.get(k).copied().unwrap_or(0));
    assert_eq!(delta("com_stmt_prepare"), 1, "server counters before {before:?} after {after:?}");
    assert_eq!(delta("com_stmt_execute"), count as u64, "server counters before {before:?} after {after:?}");

    let mine = all_of(&spans, r.pid);
    let (stmts, session): (Vec<Span>, Vec<Span>) = db_spans(&spans, r.pid).into_iter().partition(|s| is_stmt(s));
    let stmts = exactly(stmts, count, "spans of COM_STMT_EXECUTE (the prepare succeeded: no span)", &mine);
    for s in &stmts {
        assert_db_span(
            s,
            &Want {
                system: "mariadb",
                namespace: Some(DB_NAME),
                operation: "SELECT",
                collection: Some("items"),
                text: Some(text),
                port: db.port(),
                error: None,
            },
        );
        assert_eq!(s.attr_int("db.response.returned_rows"), Some(0), "{s}");
        for i in 0..count {
            assert_number_hidden(s, &(700 + i).to_string());
        }
    }
    // Connector/Python's own session setup (SET NAMES, SET autocommit) goes
    // as COM_QUERY; nothing else may appear.
    assert!(session.len() <= 3, "unexpected extra spans:\n{}", describe(&session));
    for s in &session {
        assert_eq!(s.attr_str("db.operation.name"), Some("SET"), "only session SETs besides the statement: {s}");
        assert_eq!(s.status_code, StatusCode::Unset, "{s}");
    }
    assert_eq!(mine.len(), stmts.len() + session.len(), "{}", describe(&mine));
    assert_not_leaked(&receiver, &out, &[&secret, MARIADB_PASSWORD]);
    assert_no_db_server_spans(&spans, &[db.pid()]);
    assert_resources(&mine, "mysql_prepared", r.pid);
    assert_clean_receiver(&receiver);
}

// 8. The DB servers themselves give no spans by default.

#[test]
#[ignore = "needs root, PostgreSQL, MariaDB and the agent binary: cargo xtask test runs it"]
fn db_server_processes_give_no_spans() {
    let _guard = e2e_setup("db_server_processes_give_no_spans");
    let pg = Postgres::start();
    let maria = MariaDb::start();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::HttpProtobuf), &[]);

    let p = run("psql", pg.psql().args(["-c", "SELECT count(*) FROM items"]));
    p.assert_success();
    let m = run("mariadb", maria.client().args(["-e", "SELECT count(*) FROM items"]));
    m.assert_success();

    receiver.focus(&[p.pid, m.pid, pg.pid(), maria.pid()]);
    receiver.expect_spans("the CLIENT spans of psql and mariadb", SPAN_TIMEOUT, |s| {
        !db_spans(s, p.pid).is_empty() && !db_spans(s, m.pid).is_empty()
    });
    // The server side is parsed from the same exchanges, whose bytes were
    // all captured before the clients exited; stop() drains every captured
    // event and flushes the spans before the agent exits, so a server-side
    // span would be in the export.
    agent.stop();
    let spans = receiver.spans();

    for (client, pid, system, port) in
        [("psql", p.pid, "postgresql", pg.port()), ("mariadb", m.pid, "mariadb", maria.port())]
    {
        let mine = all_of(&spans, pid);
        let s = &exactly(db_spans(&spans, pid), 1, &format!("DB spans of {client}"), &mine)[0];
        assert_db_span(
            s,
            &Want {
                system,
                namespace: Some(DB_NAME),
                operation: "SELECT",
                collection: Some("items"),
                text: Some("SELECT count(*) FROM items"),
                port,
                error: None,
            },
        );
    }
    // Exactly one DB span per exchange in the whole export: no second copy
    // from the server's side under any name.
    for port in [pg.port(), maria.port()] {
        let on_port: Vec<Span> = spans
            .iter()
            .filter(|s| s.attr("db.system.name").is_some() && s.attr_int("server.port") == Some(i64::from(port)))
            .cloned()
            .collect();
        assert_eq!(on_port.len(), 1, "DB spans about port {port}:\n{}", describe(&on_port));
    }
    assert_no_db_server_spans(&spans, &[pg.pid(), maria.pid()]);
    assert_resources(&all_of(&spans, p.pid), "psql", p.pid);
    assert_resources(&all_of(&spans, m.pid), "mariadb", m.pid);
    assert_clean_receiver(&receiver);
}
