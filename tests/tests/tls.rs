//! TLS acceptance tests: the real agent reading the plaintext of real TLS
//! traffic at OpenSSL (Debian's libssl3), nginx serving HTTPS to curl and
//! Python's urllib, psql and psycopg talking to PostgreSQL with
//! `sslmode=require`, and nothing from the TLS connections of processes
//! the selection rules leave out.
//! Certificates are made by each test (`openssl req`); clients verify them.
//!
//! Like every e2e test: root, the e2e lock, spans picked by the pid of the
//! process the test started. Each test also checks the TLS path was the
//! one that produced the spans (the agent's TLS counters) and that the
//! ciphertext produced nothing: every span of those processes is an
//! HTTP or SQL span with the right content.
use std::{process::Stdio, time::Duration};

use waggle_e2e::{
    client_spans, curl_on_one_connection,
    db::{sql_script, MariaDb, Postgres, DB_NAME, PG_USER},
    describe, e2e_setup,
    env::{poll_until, traced_curl},
    python_script, run_client, Agent, Kind, OtlpReceiver, Proc, Protocol, Server, Span, SPAN_TIMEOUT,
};

/// Every span of `pids`.
fn of(spans: &[Span], pids: &[u32]) -> Vec<Span> {
    let mut out: Vec<Span> = spans.iter().filter(|s| s.pid().is_some_and(|p| pids.contains(&p))).cloned().collect();
    out.sort_by_key(|s| (s.start_ns, s.end_ns));
    out
}

/// What an HTTPS span of nginx's test site says on either side;
/// `version`: the TLS version the handshake chose (read from its
/// ServerHello).
#[track_caller]
fn assert_https_span(s: &Span, kind: Kind, path: &str, port: u16, version: &str) {
    let status = if path == "/missing" { 404 } else { 200 };
    assert_eq!(s.kind, kind, "{s}");
    assert_eq!(s.name, format!("GET {path}"), "span name of {s}");
    assert_eq!(s.attr_str("http.request.method"), Some("GET"), "{s}");
    assert_eq!(s.attr_str("url.path"), Some(path), "{s}");
    assert_eq!(s.attr_str("url.scheme"), Some("https"), "url.scheme of {s}");
    assert_eq!(s.attr_str("tls.protocol.name"), Some("tls"), "tls.protocol.name of {s}");
    assert_eq!(s.attr_str("tls.protocol.version"), Some(version), "tls.protocol.version of {s}");
    assert_eq!(s.attr_int("http.response.status_code"), Some(status), "{s}");
    assert_eq!(s.attr_int("server.port"), Some(i64::from(port)), "{s}");
    if status == 200 {
        // "ok\n": the plaintext's body, not the ciphertext's record sizes.
        assert_eq!(s.attr_int("http.response.body.size"), Some(3), "http.response.body.size of {s}");
    }
}

// 1. nginx over HTTPS: a keep-alive curl connection with three requests,
//    and a urllib client (Python's ssl: the _ex functions).

#[test]
#[ignore = "needs root, nginx, openssl and the agent binary: cargo xtask test runs it"]
fn https_nginx_curl_and_urllib_give_spans_on_both_sides() {
    let _guard = e2e_setup("https_nginx_curl_and_urllib_give_spans_on_both_sides");
    let nginx = Server::nginx_https();
    let nginx_pids = nginx.pids();
    let cert = nginx.dir().join("cert.pem");
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);
    assert!(
        agent.stderr().contains("TLS library: plaintext read at its SSL calls"),
        "the agent did not probe libssl:\n{}",
        agent.stderr_tail(30)
    );

    let urls = [nginx.https_url("/"), nginx.https_url("/a"), nginx.https_url("/missing")];
    let cert_arg = cert.to_string_lossy().into_owned();
    let c = curl_on_one_connection(&["--cacert", &cert_arg], &[&urls[0], &urls[1], &urls[2]]);
    // The client stays until its stdin closes (see urllib_client.py).
    let mut py = Proc::spawn(
        "urllib_client",
        python_script("urllib_client.py")
            .arg(nginx.https_url("/py"))
            .env("SSL_CERT_FILE", &cert)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let py_pid = py.pid();

    receiver.focus(&[&nginx_pids[..], &[c.pid, py_pid]].concat());
    receiver.expect_spans("4 SERVER spans of nginx, 3 CLIENT spans of curl and 1 of urllib", SPAN_TIMEOUT, |s| {
        of(s, &nginx_pids).len() >= 4 && client_spans(s, c.pid).len() >= 3 && !client_spans(s, py_pid).is_empty()
    });
    drop(py.child.stdin.take());
    let status = py.wait_timeout(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "urllib_client (pid {py_pid}) failed: {status:?}");
    let out = agent.stop();
    let spans = receiver.spans();

    // Exactly these spans: nothing from the handshakes or the ciphertext.
    let servers = of(&spans, &nginx_pids);
    assert_eq!(servers.len(), 4, "nginx served 4 requests:\n{}", describe(&servers));
    let curls = of(&spans, &[c.pid]);
    assert_eq!(curls.len(), 3, "three requests on one connection, three spans:\n{}", describe(&curls));
    for (s, path) in curls.iter().zip(["/", "/a", "/missing"]) {
        assert_https_span(s, Kind::Client, path, nginx.port(), "1.2");
    }
    let pys = of(&spans, &[py_pid]);
    assert_eq!(pys.len(), 1, "{}", describe(&pys));
    assert_https_span(&pys[0], Kind::Client, "/py", nginx.port(), "1.2");
    for s in &servers {
        let path = s.attr_str("url.path").unwrap_or_default();
        assert!(["/", "/a", "/missing", "/py"].contains(&path), "{s}");
        assert_https_span(s, Kind::Server, path, nginx.port(), "1.2");
        assert_eq!(s.service_name, "nginx", "{s}");
    }
    let agents: Vec<&str> = servers.iter().filter_map(|s| s.attr_str("user_agent.original")).collect();
    assert_eq!(agents.iter().filter(|a| a.starts_with("curl/")).count(), 3, "user agents: {agents:?}");
    assert_eq!(agents.iter().filter(|a| a.starts_with("Python-urllib/")).count(), 1, "user agents: {agents:?}");

    // Four connections' plaintext came from the library (two ends each of
    // curl's and urllib's), and their ciphertext was not copied.
    assert!(out.counter("tls_conns") >= 4, "tls_conns: {}", out.stderr);
    assert!(out.counter("kernel_tls_ciphertext_skipped") > 0, "{}", out.stderr);
    assert_eq!(out.counter("tls_version_unseen"), 0, "every handshake was seen: {}", out.stderr);
}

// 1c. Trace selection over TLS: only a copy of curl is selected. nginx and
//     the system's curl call the same probed libssl, but the kernel leaves
//     untraced processes at its first step: no span and no TLS connection
//     from them; the selected curl's request to the same nginx is traced.

#[test]
#[ignore = "needs root, nginx, openssl and the agent binary: cargo xtask test runs it"]
fn tls_connections_of_untraced_processes_give_nothing() {
    let _guard = e2e_setup("tls_connections_of_untraced_processes_give_nothing");
    let nginx = Server::nginx_https();
    let nginx_pids = nginx.pids();
    let cert = nginx.dir().join("cert.pem").to_string_lossy().into_owned();
    let bin = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let traced_curl = traced_curl(bin.path());
    let receiver = OtlpReceiver::start();
    let mut args = receiver.agent_args(Protocol::HttpProtobuf);
    args.extend(["--trace-include".to_owned(), "exe=*/traced-curl".to_owned()]);
    let agent = Agent::start(&args, &[]);

    // The untraced curl first: two requests on one connection.
    let untraced = curl_on_one_connection(&["--cacert", &cert], &[&nginx.https_url("/u1"), &nginx.https_url("/u2")]);
    let traced = run_client(
        "traced-curl",
        std::process::Command::new(&traced_curl).args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &cert,
            "-o",
            "/dev/null",
            &nginx.https_url("/t"),
        ]),
        Duration::from_secs(20),
    );
    traced.assert_success();

    receiver.focus(&[&nginx_pids[..], &[untraced.pid, traced.pid]].concat());
    receiver.expect_spans("the selected curl's span", SPAN_TIMEOUT, |s| !client_spans(s, traced.pid).is_empty());
    let out = agent.stop();
    let spans = receiver.spans();
    let mine = of(&spans, &[traced.pid]);
    assert_eq!(mine.len(), 1, "{}", describe(&mine));
    assert_https_span(&mine[0], Kind::Client, "/t", nginx.port(), "1.2");
    let others = of(&spans, &[&nginx_pids[..], &[untraced.pid]].concat());
    assert!(others.is_empty(), "untraced nginx and curl gave spans:\n{}", describe(&others));
    // One TLS connection end reached the agent: the selected curl's.
    assert_eq!(out.counter("tls_conns"), 1, "{}", out.stderr);
}

// 1b. nginx with TLS 1.3 on: curl's default handshake is TLS 1.3 (the
//     version in the ServerHello's `supported_versions`), and curl limited
//     to TLS 1.2 (`--tlsv1.2 --tls-max 1.2`) gets 1.2; both ends say so.
//     The TLS 1.3 request is the first after the agent started, and often
//     arrives with the client's Finished: nginx's handshake reads it, and
//     only the SSL_set_fd probe names its connection.
//     (Debian 12's nginx default, in test 1, stops at TLS 1.2.)

#[test]
#[ignore = "needs root, nginx, openssl and the agent binary: cargo xtask test runs it"]
fn https_spans_carry_the_tls_version_the_handshake_chose() {
    let _guard = e2e_setup("https_spans_carry_the_tls_version_the_handshake_chose");
    let nginx = Server::nginx_https_tls13();
    let nginx_pids = nginx.pids();
    let cert = nginx.dir().join("cert.pem").to_string_lossy().into_owned();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);

    let (u13, u12) = (nginx.https_url("/"), nginx.https_url("/a"));
    let c13 = curl_on_one_connection(&["--cacert", &cert], &[&u13]);
    let c12 = curl_on_one_connection(&["--cacert", &cert, "--tlsv1.2", "--tls-max", "1.2"], &[&u12]);
    receiver.focus(&[&nginx_pids[..], &[c13.pid, c12.pid]].concat());
    receiver.expect_spans("2 SERVER spans of nginx and a CLIENT span of each curl", SPAN_TIMEOUT, |s| {
        of(s, &nginx_pids).len() >= 2 && !client_spans(s, c13.pid).is_empty() && !client_spans(s, c12.pid).is_empty()
    });
    let out = agent.stop();
    let spans = receiver.spans();

    let (curl13, curl12) = (of(&spans, &[c13.pid]), of(&spans, &[c12.pid]));
    assert_eq!((curl13.len(), curl12.len()), (1, 1), "{}{}", describe(&curl13), describe(&curl12));
    assert_https_span(&curl13[0], Kind::Client, "/", nginx.port(), "1.3");
    assert_https_span(&curl12[0], Kind::Client, "/a", nginx.port(), "1.2");
    let servers = of(&spans, &nginx_pids);
    assert_eq!(servers.len(), 2, "{}", describe(&servers));
    for s in &servers {
        let (path, version) = if s.attr_str("url.path") == Some("/") { ("/", "1.3") } else { ("/a", "1.2") };
        assert_https_span(s, Kind::Server, path, nginx.port(), version);
    }
    assert_eq!(out.counter("tls_version_unseen"), 0, "{}", out.stderr);
    // nginx hands each SSL object its descriptor: bound there, a TLS 1.3
    // request that its handshake's read already took (so its SSL_read did
    // no syscall) still has its connection.
    assert!(out.counter("kernel_tls_fd_bound") >= 2, "{}", out.stderr);
    assert_eq!(out.counter("kernel_tls_no_conn"), 0, "{}", out.stderr);
}

// 2. psql with sslmode=require against PostgreSQL with ssl=on: the SQL span
//    is the one plaintext gives.

#[test]
#[ignore = "needs root, PostgreSQL, openssl and the agent binary: cargo xtask test runs it"]
fn psql_over_tls_gives_the_sanitized_sql_span() {
    let _guard = e2e_setup("psql_over_tls_gives_the_sanitized_sql_span");
    let pg = Postgres::start_with_ssl();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::HttpProtobuf), &[]);

    // The answer proves the session is encrypted; the literal must not leak.
    let secret = format!("secret-tls-{}", std::process::id());
    let sql = format!("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND '{secret}' <> ''");
    let r = run_client(
        "psql",
        pg.psql().env("PGSSLMODE", "require").args(["-A", "-t", "-c", &sql]),
        Duration::from_secs(60),
    );
    r.assert_success();
    assert_eq!(r.stdout.trim(), "t", "the session must run over TLS");

    receiver.focus(&[r.pid]);
    receiver.expect_spans("the CLIENT span of psql", SPAN_TIMEOUT, |s| !client_spans(s, r.pid).is_empty());
    let out = agent.stop();
    let spans = receiver.spans();

    let mine = of(&spans, &[r.pid]);
    assert_eq!(mine.len(), 1, "psql made one query, nothing else:\n{}", describe(&mine));
    let s = &mine[0];
    assert_eq!(s.kind, Kind::Client, "{s}");
    assert_eq!(s.name, "SELECT pg_stat_ssl", "{s}");
    assert_eq!(s.attr_str("db.system.name"), Some("postgresql"), "{s}");
    assert_eq!(
        s.attr_str("db.query.text"),
        Some("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ? <> ?"),
        "{s}"
    );
    assert_eq!(s.attr_int("server.port"), Some(i64::from(pg.port())), "{s}");
    assert_eq!(s.attr_str("tls.protocol.name"), Some("tls"), "{s}");
    // Read from the ServerHello after PostgreSQL's `S`.
    assert_eq!(s.attr_str("tls.protocol.version"), Some("1.3"), "{s}");
    // The server's side (backends: children of the postmaster, gone now)
    // is not traced, over TLS as over plaintext.
    let server_side: Vec<Span> = spans.iter().filter(|s| s.service_name == "postgres").cloned().collect();
    assert!(server_side.is_empty(), "{}", describe(&server_side));
    waggle_e2e::assert_not_leaked(&receiver, &out, &[&secret]);
    assert!(out.counter("tls_conns") >= 1, "{}", out.stderr);
}

// 2b. psycopg 3 (libpq, libssl) with sslmode=require: its prepared
//     statements give the spans they give over plaintext (sql.rs).

#[test]
#[ignore = "needs root, PostgreSQL, psycopg, openssl and the agent binary: cargo xtask test runs it"]
fn psycopg_over_tls_gives_the_sanitized_sql_spans() {
    let _guard = e2e_setup("psycopg_over_tls_gives_the_sanitized_sql_spans");
    let pg = Postgres::start_with_ssl();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::HttpProtobuf), &[]);

    let secret = format!("secret-psycopg-tls-{}", std::process::id());
    // sslmode=require: the connection fails rather than going plaintext.
    let run = |count: usize, secret: &str| {
        let r = run_client(
            "psycopg_prepared",
            sql_script("psycopg_prepared.py").env("PGSSLMODE", "require").args([
                &pg.port().to_string(),
                DB_NAME,
                PG_USER,
                &count.to_string(),
                secret,
            ]),
            Duration::from_secs(60),
        );
        r.assert_success();
        r
    };
    // psycopg's binary wheel brings its own libssl (psycopg_binary.libs/),
    // which no process had mapped when the agent started: it is found in
    // the first client's memory map at its first connection and probed from
    // then on (README), too late for that one short connection. A first run
    // makes the agent probe it; the second is traced from its handshake.
    run(1, "warm-up");
    assert!(
        poll_until(Duration::from_secs(20), || agent.stderr().contains("psycopg_binary.libs")),
        "the agent never probed psycopg's own libssl:\n{}",
        agent.stderr_tail(30)
    );
    let count = 3;
    let r = run(count, &secret);
    assert_eq!(r.stdout, format!("{}done\n", "rows 0\n".repeat(count)), "script output");

    receiver.focus(&[r.pid]);
    receiver.expect_spans("the psycopg client's spans", SPAN_TIMEOUT, |s| client_spans(s, r.pid).len() >= count);
    let out = agent.stop();
    let mine = of(&receiver.spans(), &[r.pid]);
    assert_eq!(mine.len(), count, "one span per execute, nothing else:\n{}", describe(&mine));
    for s in &mine {
        assert_eq!(s.kind, Kind::Client, "{s}");
        assert_eq!(s.name, "SELECT items", "{s}");
        assert_eq!(s.attr_str("db.system.name"), Some("postgresql"), "{s}");
        assert_eq!(s.attr_str("db.namespace"), Some(DB_NAME), "{s}");
        assert_eq!(
            s.attr_str("db.query.text"),
            Some("SELECT name, price FROM items WHERE id = $1 AND name <> $2"),
            "{s}"
        );
        assert_eq!(s.attr_int("server.port"), Some(i64::from(pg.port())), "{s}");
        assert_eq!(s.attr_str("tls.protocol.name"), Some("tls"), "{s}");
        assert_eq!(s.attr_str("tls.protocol.version"), Some("1.3"), "{s}");
    }
    waggle_e2e::assert_not_leaked(&receiver, &out, &[&secret]);
    assert!(out.counter("tls_conns") >= 1, "{}", out.stderr);
}

// 3. mariadb --ssl against MariaDB with a TLS certificate: the SQL span is
//    the one plaintext gives (tests/tests/sql.rs, mariadb_cli_select_and_error).

#[test]
#[ignore = "needs root, MariaDB, openssl and the agent binary: cargo xtask test runs it"]
fn mariadb_over_tls_gives_the_sanitized_sql_span() {
    let _guard = e2e_setup("mariadb_over_tls_gives_the_sanitized_sql_span");
    let db = MariaDb::start_with_ssl();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::HttpProtobuf), &[]);

    // The second statement's answer proves the session is encrypted; the
    // literal of the first must not leak.
    let secret = format!("secret-tls-{}", std::process::id());
    let sql = format!("SELECT id, name FROM items WHERE id = 7 OR name = '{secret}'; SHOW STATUS LIKE 'Ssl_cipher'");
    let r = run_client("mariadb", db.client().args(["--ssl", "-e", &sql]), Duration::from_secs(60));
    r.assert_success();
    let cipher = r.stdout.lines().find_map(|l| l.strip_prefix("Ssl_cipher\t")).unwrap_or_default();
    assert!(!cipher.trim().is_empty(), "the session must run over TLS; mariadb printed {:?}", r.stdout);

    receiver.focus(&[r.pid]);
    receiver.expect_spans("the two CLIENT spans of mariadb", SPAN_TIMEOUT, |s| client_spans(s, r.pid).len() >= 2);
    let out = agent.stop();
    let spans = receiver.spans();

    let mine = of(&spans, &[r.pid]);
    assert_eq!(mine.len(), 2, "mariadb ran two statements, nothing else:\n{}", describe(&mine));
    let s = &mine[0];
    assert_eq!(s.kind, Kind::Client, "{s}");
    assert_eq!(s.name, "SELECT items", "{s}");
    assert_eq!(s.attr_str("db.system.name"), Some("mariadb"), "{s}");
    assert_eq!(s.attr_str("db.namespace"), Some(DB_NAME), "{s}");
    assert_eq!(s.attr_str("db.query.text"), Some("SELECT id, name FROM items WHERE id = ? OR name = ?"), "{s}");
    assert_eq!(s.attr_int("db.response.returned_rows"), Some(0), "{s}");
    assert_eq!(s.attr_int("server.port"), Some(i64::from(db.port())), "{s}");
    assert_eq!(s.attr_str("tls.protocol.name"), Some("tls"), "{s}");
    assert_eq!(s.attr_str("tls.protocol.version"), Some("1.3"), "{s}");
    let show = &mine[1];
    assert_eq!(show.attr_str("db.query.text"), Some("SHOW STATUS LIKE ?"), "{show}");
    assert_eq!(show.attr_str("tls.protocol.name"), Some("tls"), "{show}");
    // The server's side is not traced, over TLS as over plaintext.
    let server_side: Vec<Span> = spans.iter().filter(|s| s.pid() == Some(db.pid())).cloned().collect();
    assert!(server_side.is_empty(), "{}", describe(&server_side));
    waggle_e2e::assert_not_leaked(&receiver, &out, &[&secret]);
    assert!(out.counter("tls_conns") >= 1, "{}", out.stderr);
}

// 4. wget (GnuTLS: gnutls_record_send / gnutls_record_recv) against nginx
//    over HTTPS: two requests on one keep-alive connection.

#[test]
#[ignore = "needs root, nginx, wget, openssl and the agent binary: cargo xtask test runs it"]
fn wget_over_gnutls_gives_client_spans() {
    let _guard = e2e_setup("wget_over_gnutls_gives_client_spans");
    let nginx = Server::nginx_https();
    let nginx_pids = nginx.pids();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);
    let stderr = agent.stderr();
    assert!(
        stderr.lines().any(|l| l.contains("TLS library: plaintext read at its SSL calls") && l.contains("gnutls")),
        "the agent did not probe libgnutls:\n{}",
        agent.stderr_tail(30)
    );

    let ca = format!("--ca-certificate={}", nginx.dir().join("cert.pem").display());
    let r = run_client(
        "wget",
        std::process::Command::new("wget").args([
            "-q",
            "-O",
            "/dev/null",
            &ca,
            &nginx.https_url("/"),
            &nginx.https_url("/a"),
        ]),
        Duration::from_secs(30),
    );
    r.assert_success();

    receiver.focus(&[&nginx_pids[..], &[r.pid]].concat());
    receiver.expect_spans("2 CLIENT spans of wget and 2 SERVER spans of nginx", SPAN_TIMEOUT, |s| {
        client_spans(s, r.pid).len() >= 2 && of(s, &nginx_pids).len() >= 2
    });
    let out = agent.stop();
    let spans = receiver.spans();

    let mine = of(&spans, &[r.pid]);
    assert_eq!(mine.len(), 2, "two requests, two spans, nothing from the ciphertext:\n{}", describe(&mine));
    for (s, path) in mine.iter().zip(["/", "/a"]) {
        assert_https_span(s, Kind::Client, path, nginx.port(), "1.2");
        assert!(s.attr_str("user_agent.original").is_none_or(|a| a.starts_with("Wget/")), "{s}");
    }
    let servers = of(&spans, &nginx_pids);
    assert_eq!(servers.len(), 2, "{}", describe(&servers));
    for (s, path) in servers.iter().zip(["/", "/a"]) {
        assert_https_span(s, Kind::Server, path, nginx.port(), "1.2");
        assert!(s.attr_str("user_agent.original").is_some_and(|a| a.starts_with("Wget/")), "{s}");
    }
    assert!(out.counter("tls_conns") >= 2, "{}", out.stderr);
}
