//! node's HTTPS (OpenSSL linked statically into `/usr/bin/node`, TLS over
//! memory BIOs): the agent probes the executable itself and binds each SSL
//! object to its connection at the handshake write. A node server and a
//! node client (tests/fixtures/node_https_*.js), curl against the node
//! server, and node processes whose connections predate the agent.
//!
//! Like every e2e test: root, the e2e lock, spans picked by the pid of the
//! process the test started. Each test asserts exact span counts (nothing
//! from the handshakes or the ciphertext) and, for parallel connections,
//! that every request landed on its own connection on both sides.
use std::{
    collections::{BTreeMap, HashSet},
    io::{BufRead, BufReader, Write},
    process::{ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use waggle_e2e::{
    client_spans, curl_on_one_connection, describe, e2e_setup, env::wait_for_port_line, fixture, server_spans,
    tls::self_signed_cert, Agent, Kind, OtlpReceiver, Proc, Protocol, Span, SPAN_TIMEOUT,
};

/// The node binary the agent finds at start-up (official builds link
/// OpenSSL statically and export it).
fn node() -> &'static str {
    for candidate in ["/usr/bin/node", "/usr/local/bin/node"] {
        if std::path::Path::new(candidate).is_file() {
            return candidate;
        }
    }
    panic!("node.js not found in /usr/bin or /usr/local/bin (cargo xtask test installs the e2e dependencies)")
}

/// The node HTTPS server fixture and its certificate.
struct NodeServer {
    proc: Proc,
    port: u16,
    cert: String,
    _dir: tempfile::TempDir,
}

impl NodeServer {
    #[track_caller]
    fn start() -> NodeServer {
        let dir = tempfile::Builder::new().prefix("waggle-node-tls-").tempdir().expect("temp dir");
        let (cert, key) = self_signed_cert(dir.path());
        let out_path = dir.path().join("server.out");
        let out = std::fs::File::create(&out_path).expect("server.out");
        let err = out.try_clone().expect("server.out");
        let mut cmd = Command::new(node());
        cmd.arg(fixture("node_https_server.js")).arg(&cert).arg(&key).stdout(out).stderr(err);
        let mut proc = Proc::spawn("node_https_server.js", &mut cmd);
        let port = wait_for_port_line(&mut proc, &out_path, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("node did not listen ({e:?}):\n{}", waggle_e2e::env::tail(&out_path, 20)));
        NodeServer { proc, port, cert: cert.to_string_lossy().into_owned(), _dir: dir }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
}

/// The node HTTPS client fixture, driven line by line.
struct NodeClient {
    proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// One request as the client saw it: its path and its socket's local port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Done {
    path: String,
    local_port: i64,
}

impl NodeClient {
    #[track_caller]
    fn start(server: &NodeServer) -> NodeClient {
        let mut cmd = Command::new(node());
        cmd.arg(fixture("node_https_client.js"))
            .arg(server.port.to_string())
            .arg(&server.cert)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn("node_https_client.js", &mut cmd);
        let stdin = proc.child.stdin.take().expect("client stdin");
        let stdout = BufReader::new(proc.child.stdout.take().expect("client stdout"));
        NodeClient { proc, stdin, stdout }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Closes its stdin: it exits once its commands are done.
    #[track_caller]
    fn finish(self) {
        let NodeClient { mut proc, stdin, .. } = self;
        drop(stdin);
        let status = proc.wait_timeout(Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()), "node client (pid {}) failed: {status:?}", proc.pid());
    }

    /// Runs one command; the requests it made (status 200 and the echoed
    /// path checked here: the client's own view).
    #[track_caller]
    fn run(&mut self, command: &str) -> Vec<Done> {
        writeln!(self.stdin, "{command}").expect("writing to the node client");
        let mut done = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("reading the node client");
            assert!(n > 0, "the node client exited during {command:?}: {:?}", self.proc.try_wait());
            let line = line.trim();
            if line == "ok" {
                return done;
            }
            if line == "garbage sent" {
                continue;
            }
            // PATH LOCALPORT STATUS "BODY"
            let parts: Vec<&str> = line.splitn(4, ' ').collect();
            assert_eq!(parts.len(), 4, "node client line {line:?}");
            assert_eq!(parts[2], "200", "{line}");
            assert_eq!(parts[3], format!("\"ok {}\\n\"", parts[0]), "{line}");
            done.push(Done { path: parts[0].to_owned(), local_port: parts[1].parse().expect("local port") });
        }
    }
}

/// What an HTTPS span of the node server says on either side.
#[track_caller]
fn assert_node_span(s: &Span, kind: Kind, port: u16) {
    let path = s.attr_str("url.path").unwrap_or_default().to_owned();
    let method = if path.starts_with("/p") { "POST" } else { "GET" };
    assert_eq!(s.kind, kind, "{s}");
    assert_eq!(s.name, format!("{method} {path}"), "span name of {s}");
    assert_eq!(s.attr_str("http.request.method"), Some(method), "{s}");
    assert_eq!(s.attr_str("url.scheme"), Some("https"), "url.scheme of {s}");
    assert_eq!(s.attr_str("tls.protocol.name"), Some("tls"), "tls.protocol.name of {s}");
    assert_eq!(s.attr_int("http.response.status_code"), Some(200), "{s}");
    assert_eq!(s.attr_int("server.port"), Some(i64::from(port)), "{s}");
    // "ok <path>\n": the plaintext's body, not the ciphertext's records.
    assert_eq!(s.attr_int("http.response.body.size"), Some(path.len() as i64 + 4), "response size of {s}");
    if let Some(i) = path.strip_prefix("/p").and_then(|i| i.parse::<i64>().ok()) {
        assert_eq!(s.attr_int("http.request.body.size"), Some(10 + i), "request size of {s}");
    }
}

fn paths(spans: &[Span]) -> Vec<&str> {
    spans.iter().filter_map(|s| s.attr_str("url.path")).collect()
}

/// The connection's port on each side: the client span's own end, the
/// server span's peer.
fn by_path(spans: &[Span], port_attr: &str) -> BTreeMap<String, i64> {
    spans
        .iter()
        .map(|s| {
            let path = s.attr_str("url.path").unwrap_or_default().to_owned();
            let port = s.attr_int(port_attr).unwrap_or_else(|| panic!("no {port_attr} on {s}"));
            (path, port)
        })
        .collect()
}

/// Every request on its own connection, on both sides: the client span's
/// local port and the server span's peer port are the port the client's
/// socket had for that path (the mislabel check).
#[track_caller]
fn assert_on_their_connections(clients: &[Span], servers: &[Span], done: &[Done]) {
    let client_ports = by_path(clients, "network.local.port");
    let server_ports = by_path(servers, "network.peer.port");
    for d in done {
        assert_eq!(client_ports.get(&d.path), Some(&d.local_port), "client span of {d:?}:\n{}", describe(clients));
        assert_eq!(server_ports.get(&d.path), Some(&d.local_port), "server span of {d:?}:\n{}", describe(servers));
    }
}

// 1. node client → node server: three requests on one keep-alive
//    connection, then four parallel connections each with its own path
//    (handshakes interleaved in one event loop: the mislabel check), then
//    curl → node server (TLS 1.3 keep-alive and TLS 1.2), random bytes
//    over TLS, and one more request.

#[test]
#[ignore = "needs root, node, curl, openssl and the agent binary: cargo xtask test runs it"]
fn node_https_client_and_server_give_spans_on_both_sides() {
    let _guard = e2e_setup("node_https_client_and_server_give_spans_on_both_sides");
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);
    assert!(
        agent.stderr().lines().any(|l| l.contains("TLS library: plaintext read at its SSL calls")
            && l.contains("openssl-static")
            && l.contains(node())),
        "the agent did not probe {}:\n{}",
        node(),
        agent.stderr_tail(30)
    );
    let server = NodeServer::start();
    let mut client = NodeClient::start(&server);
    let (spid, cpid) = (server.pid(), client.pid());

    let mut keep = Vec::new();
    for path in ["/k1", "/k2", "/k3"] {
        keep.extend(client.run(&format!("keep {path}")));
    }
    assert!(keep.iter().all(|d| d.local_port == keep[0].local_port), "one keep-alive connection: {keep:?}");
    let parallel = client.run("parallel 4");
    let ports: HashSet<i64> = parallel.iter().map(|d| d.local_port).collect();
    assert_eq!(ports.len(), 4, "four connections: {parallel:?}");
    let urls = [server.url("/c1"), server.url("/c2"), server.url("/c3")];
    let curl = curl_on_one_connection(&["--cacert", &server.cert], &[&urls[0], &urls[1], &urls[2]]);
    // TLS 1.2 (its second flight is a handshake record too) on a new
    // connection, likely on the address of a freed SSL object.
    let curl12 =
        waggle_e2e::curl(&["--tls-max", "1.2", "--cacert", &server.cert, "-o", "/dev/null", &server.url("/c4")]);
    curl12.assert_success();

    receiver.focus(&[spid, cpid, curl.pid, curl12.pid]);
    receiver.expect_spans("11 SERVER spans of node, 7 CLIENT spans of node, 4 of curl", SPAN_TIMEOUT, |s| {
        server_spans(s, spid).len() >= 11
            && client_spans(s, cpid).len() >= 7
            && client_spans(s, curl.pid).len() >= 3
            && !client_spans(s, curl12.pid).is_empty()
    });
    // Garbage through SSL_write must not hurt the agent: the next request
    // is still traced (and the garbage gives no span: counts are exact).
    client.run("garbage");
    keep.extend(client.run("keep /k4"));
    receiver.expect_spans("the SERVER and CLIENT spans of /k4", SPAN_TIMEOUT, |s| {
        server_spans(s, spid).len() >= 12 && client_spans(s, cpid).len() >= 8
    });
    client.finish();
    let out = agent.stop();
    let spans = receiver.spans();

    let servers = server_spans(&spans, spid);
    let clients = client_spans(&spans, cpid);
    let curls = [client_spans(&spans, curl.pid), client_spans(&spans, curl12.pid)].concat();
    assert_eq!(servers.len(), 12, "node served 12 requests:\n{}", describe(&servers));
    assert_eq!(clients.len(), 8, "node sent 8 requests:\n{}", describe(&clients));
    assert_eq!(curls.len(), 4, "curl sent 4 requests:\n{}", describe(&curls));
    let other: Vec<&Span> = spans.iter().filter(|s| s.pid() == Some(cpid) && s.is_server()).collect();
    assert!(other.is_empty(), "the client serves nothing: {other:?}");
    for s in &servers {
        assert_node_span(s, Kind::Server, server.port);
    }
    for s in clients.iter().chain(&curls) {
        assert_node_span(s, Kind::Client, server.port);
    }
    let mut want: Vec<&str> = vec!["/k1", "/k2", "/k3", "/p0", "/p1", "/p2", "/p3", "/k4"];
    let mut got = paths(&clients);
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "{}", describe(&clients));
    let mut got = paths(&servers);
    got.sort_unstable();
    want.extend(["/c1", "/c2", "/c3", "/c4"]);
    want.sort_unstable();
    assert_eq!(got, want, "{}", describe(&servers));
    let agents: Vec<&str> = servers.iter().filter_map(|s| s.attr_str("user_agent.original")).collect();
    assert_eq!(agents.iter().filter(|a| a.starts_with("curl/")).count(), 4, "user agents: {agents:?}");

    assert_on_their_connections(&clients, &servers, &[&keep[..], &parallel[..]].concat());

    // Both ends of the keep-alive, parallel and garbage connections and
    // node's end of curl's were bound at their handshake; their ciphertext
    // was not copied.
    assert!(out.counter("kernel_tls_handshake_bound") >= 14, "{}", out.stderr);
    assert!(out.counter("kernel_tls_ciphertext_skipped") > 0, "{}", out.stderr);
    assert!(out.counter("tls_conns") >= 14, "{}", out.stderr);
}

// 2. A node server and client started before the agent, with a keep-alive
//    connection established before it: its later requests give no span
//    (the handshake that binds it was missed; counted), while new
//    connections of the same processes are traced.

#[test]
#[ignore = "needs root, node, openssl and the agent binary: cargo xtask test runs it"]
fn node_connections_from_before_the_agent_stay_muted() {
    let _guard = e2e_setup("node_connections_from_before_the_agent_stay_muted");
    let server = NodeServer::start();
    let mut client = NodeClient::start(&server);
    let (spid, cpid) = (server.pid(), client.pid());
    let before = client.run("keep /old1");

    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);
    let old = [client.run("keep /old2"), client.run("keep /old3")].concat();
    assert!(old.iter().all(|d| d.local_port == before[0].local_port), "the old connection was reused: {old:?}");
    let parallel = client.run("parallel 2");

    receiver.focus(&[spid, cpid]);
    receiver.expect_spans("2 SERVER and 2 CLIENT spans of the new connections", SPAN_TIMEOUT, |s| {
        server_spans(s, spid).len() >= 2 && client_spans(s, cpid).len() >= 2
    });
    client.finish();
    let out = agent.stop();
    let spans = receiver.spans();

    let ours: Vec<Span> = spans.iter().filter(|s| s.pid() == Some(spid) || s.pid() == Some(cpid)).cloned().collect();
    assert_eq!(ours.len(), 4, "only the new connections' requests:\n{}", describe(&ours));
    let servers = server_spans(&spans, spid);
    let clients = client_spans(&spans, cpid);
    assert_eq!(servers.len(), 2, "{}", describe(&servers));
    assert_eq!(clients.len(), 2, "{}", describe(&clients));
    for s in &servers {
        assert_node_span(s, Kind::Server, server.port);
    }
    for s in &clients {
        assert_node_span(s, Kind::Client, server.port);
    }
    assert_on_their_connections(&clients, &servers, &parallel);
    // The old connection's SSL calls found no connection (both ends, both
    // requests): counted, not guessed.
    assert!(out.counter("kernel_tls_no_conn") >= 4, "{}", out.stderr);
}
