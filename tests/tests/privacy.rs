//! Privacy at default settings (issue 15): secrets planted everywhere real
//! traffic carries them (HTTP credentials, query strings, tokens and
//! addresses in paths, SQL literals under every quoting rule the server may
//! be in, database passwords, the traced processes' environment) never
//! reach the exporter, the span printer or the agent's log. Each part also
//! checks that its spans were made, so a capture that broke cannot pass.
use std::process::Command;

use waggle_e2e::{
    assert_not_leaked, client_spans,
    db::{pg_bin, MariaDb, Postgres, DB_NAME, MARIADB_PASSWORD},
    describe, e2e_setup, figure, run_client, server_spans, Agent, ClientRun, OtlpReceiver, Protocol, Server, Span,
    SPAN_TIMEOUT,
};

/// A secret that is one word of letters: a sanitizer that misreads a
/// literal shows it whole as an identifier (digits would be hidden as
/// numbers, and the needle would then miss the leak).
fn secret(tag: &str) -> String {
    let letters: String = std::process::id().to_string().bytes().map(|d| char::from(b'a' + (d - b'0'))).collect();
    format!("zq{tag}x{letters}")
}

/// The agent as users run it (defaults), exporting and printing JSON too.
fn agent(receiver: &OtlpReceiver) -> Agent {
    let mut args = receiver.agent_args(Protocol::HttpProtobuf);
    args.extend(["--print".to_owned(), "json".to_owned()]);
    Agent::start(&args, &[])
}

fn db_spans_of(spans: &[Span], pid: u32) -> Vec<Span> {
    spans.iter().filter(|s| s.pid() == Some(pid) && s.attr("db.system.name").is_some()).cloned().collect()
}

#[test]
#[ignore = "needs root and the agent binary: cargo xtask test runs it"]
fn http_credentials_queries_and_path_secrets_never_leave_the_agent() {
    let _guard = e2e_setup("http_credentials_queries_and_path_secrets_never_leave_the_agent");
    let app = Server::app();
    let receiver = OtlpReceiver::start();
    let agent = agent(&receiver);

    let (auth, cookie, query, env) = (secret("bearer"), secret("cookie"), secret("query"), secret("env"));
    let pid = std::process::id();
    // Shaped like what real paths carry: a random reset token, an API key,
    // a JWT, an e-mail address.
    let token = format!("Zx81kLq0pW3nB7vR2tY9uE5a{pid}");
    let key = format!("{:032x}", u128::from(pid) * 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    let jwt = format!("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI{pid}In0.c2lnbmF0dXJl");
    let email = format!("jane.doe.{pid}@example.com");
    let paths = [
        format!("/users/42?token={query}&password={query}"),
        format!("/reset/{token}"),
        format!("/api/keys/{key}/rotate"),
        format!("/auth/{jwt}"),
        format!("/users/{email}"),
    ];
    let urls: Vec<String> = paths.iter().map(|p| app.url(p)).collect();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-H", &format!("Authorization: Bearer {auth}"), "-H"])
        .arg(format!("Cookie: session={cookie}"))
        .args(urls.iter().flat_map(|u| ["-o", "/dev/null", u.as_str()]))
        // The traced client's environment: resources read only OTEL_*.
        .env("DB_PASSWORD", &env)
        .env("API_TOKEN", &env);
    let r = run_client("curl", &mut cmd, SPAN_TIMEOUT);
    r.assert_success();

    receiver.focus(&[app.pid(), r.pid]);
    let n = paths.len();
    receiver.expect_spans("a SERVER and a CLIENT span per request", SPAN_TIMEOUT, |s| {
        server_spans(s, app.pid()).len() >= n && client_spans(s, r.pid).len() >= n
    });
    let out = agent.stop();
    let spans = receiver.spans();
    let mut seen: Vec<String> = server_spans(&spans, app.pid())
        .iter()
        .chain(client_spans(&spans, r.pid).iter())
        .filter_map(|s| s.attr_str("url.path").map(str::to_owned))
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        ["/api/keys/REDACTED/rotate", "/auth/REDACTED", "/reset/REDACTED", "/users/42", "/users/REDACTED"],
        "url.path of both sides:\n{}",
        describe(&spans)
    );
    assert_not_leaked(
        &receiver,
        &out,
        &[&auth, &cookie, &query, &env, &token, &key, &jwt, &email, "Bearer", "session="],
    );
    figure(&format!(
        "privacy, HTTP: {} planted secrets (Authorization, Cookie, query string, path token, API key, JWT, \
         e-mail, environment) in {} requests: none in {} exported spans, the span printer or the log",
        10,
        n,
        spans.len()
    ));
}

#[track_caller]
fn run_sql(name: &str, cmd: &mut Command) -> ClientRun {
    let r = run_client(name, cmd, std::time::Duration::from_secs(60));
    r.assert_success();
    r
}

#[test]
#[ignore = "needs root, PostgreSQL, MariaDB and the agent binary: cargo xtask test runs it"]
fn sql_literals_under_every_quoting_rule_and_passwords_never_leave_the_agent() {
    let _guard = e2e_setup("sql_literals_under_every_quoting_rule_and_passwords_never_leave_the_agent");
    let pg = Postgres::start();
    let maria = MariaDb::start();
    // A role that logs in with a cleartext password message: the worst case
    // for what crosses the wire.
    let pg_password = secret("pgpass");
    run_sql("psql CREATE ROLE", pg.psql().args(["-c", &format!("CREATE ROLE privacy LOGIN PASSWORD '{pg_password}'")]));
    let hba = pg.dir().join("data").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap_or_else(|e| panic!("reading {}: {e}", hba.display()));
    std::fs::write(&hba, format!("host all privacy 127.0.0.1/32 password\n{rules}"))
        .unwrap_or_else(|e| panic!("writing {}: {e}", hba.display()));
    run_sql("psql reload", pg.psql().args(["-c", "SELECT pg_reload_conf()"]));

    let receiver = OtlpReceiver::start();
    let agent = agent(&receiver);
    let s: Vec<String> = ["one", "two", "three", "four", "five", "six", "seven"].iter().map(|t| secret(t)).collect();
    // PostgreSQL 16 digit separators (PostgreSQL 15 reads the tail as an
    // alias, but it is what the statement text carries either way).
    let card = "4111_2222_3333_4444";
    // One statement per -c: the server parses a multi-statement query
    // before its SET takes effect.
    let pg_sql = [
        "SET standard_conforming_strings = off".to_owned(),
        format!("SELECT 'it\\'s {}' AS a, E'{}\\n' AS b, $q${}$q$ AS c", s[0], s[1], s[2]),
        format!("SELECT {card}"),
        "SET standard_conforming_strings = on".to_owned(),
        format!("SELECT 'C:\\' AS p, '{}' AS q", s[3]),
    ];
    // Not ON_ERROR_STOP: PostgreSQL 15 rejects the digit separators ("trailing
    // junk ... at or near 4111_2222_3333_4444"), and that error message must
    // not carry them out either.
    let mut psql = Command::new(pg_bin("psql"));
    psql.args(["-X", "-q", "-h", "127.0.0.1", "-p", &pg.port().to_string()])
        .args(["-U", "privacy", "-d", DB_NAME])
        .args(pg_sql.iter().flat_map(|q| ["-c", q.as_str()]))
        .env("PGPASSWORD", &pg_password)
        .env("PGCONNECT_TIMEOUT", "10");
    let psql = run_client("psql", &mut psql, std::time::Duration::from_secs(60));
    assert!(psql.stdout.contains(&s[3]) && psql.stderr.contains("trailing junk"), "psql ran every statement: {psql:?}");

    let my_sql = format!(
        "SELECT 'it\\'s {s4}', \"{s5}\"; \
         SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'; \
         SELECT 'C:\\', '{s6}'; \
         SELECT 0x{hex};",
        s4 = s[4],
        s5 = s[5],
        s6 = s[6],
        hex = "5345435245544b4559",
    );
    let mariadb = run_sql("mariadb", maria.client().args(["-e", &my_sql]));

    receiver.focus(&[psql.pid, mariadb.pid]);
    receiver.expect_spans("the DB spans of psql (5) and mariadb (4)", SPAN_TIMEOUT, |sp| {
        db_spans_of(sp, psql.pid).len() >= 5 && db_spans_of(sp, mariadb.pid).len() >= 4
    });
    let out = agent.stop();
    let spans = receiver.spans();
    let mut texts: Vec<String> = db_spans_of(&spans, psql.pid)
        .iter()
        .chain(db_spans_of(&spans, mariadb.pid).iter())
        .filter_map(|sp| sp.attr_str("db.query.text").map(str::to_owned))
        .collect();
    texts.sort();
    for want in ["SELECT ? AS a, ? AS b, ? AS c", "SELECT ? AS p, ? AS q", "SELECT ?", "SELECT ?, ?"] {
        assert!(texts.iter().any(|t| t == want), "no statement reads {want:?}: {texts:#?}");
    }
    let mut needles: Vec<&str> = s.iter().map(String::as_str).collect();
    needles.extend([pg_password.as_str(), MARIADB_PASSWORD, "2222", "3333_4444", "5345435245544b4559"]);
    assert_not_leaked(&receiver, &out, &needles);
    figure(&format!(
        "privacy, SQL: {} planted secrets (literals with standard_conforming_strings off and on, E'' and dollar \
         quotes, NO_BACKSLASH_ESCAPES, digit separators, hex, a cleartext PostgreSQL password, the MariaDB \
         password) in {} statements: none in {} exported spans, the span printer or the log",
        needles.len(),
        texts.len(),
        spans.len()
    ));
}
