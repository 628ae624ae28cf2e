//! Trace context over TLS: curl -> (HTTPS) A -> (HTTP) B and PostgreSQL,
//! A reading its requests through OpenSSL (Python's ssl module). A's SERVER
//! span comes from the TLS plaintext (the uprobes' data goes through the
//! same kernel trace-context path as a plaintext read), so an incoming
//! `traceparent` joins the trace and A's calls are its children; B joins
//! through the header the kernel injects into A's plaintext call.
use waggle_e2e::{db::Postgres, e2e_setup, tls::self_signed_cert, ClientRun, OtlpReceiver};

use crate::{
    agent_counters::{counter, scrape_until, start_agent},
    flows::{assert_children_of_a, assert_injected_into_b, assert_served, b_saw, curl_with_headers, flows, Flow, Pids},
    services::{start_a_https, start_b, Service},
    CALLER_SPAN, TRACE,
};

/// `curl --cacert CERT https://A/checkout` with `headers`.
pub fn curl_https_checkout(a: &Service, cert: &std::path::Path, headers: &[&str]) -> ClientRun {
    let cert = cert.to_string_lossy().into_owned();
    curl_with_headers(&["--cacert", &cert], headers, &a.https_url("/checkout"))
}

/// Service A over HTTPS with a certificate made for this test (in the
/// returned temp dir, which must outlive A; `cert.pem` is for curl).
#[track_caller]
pub fn start_a_tls(b: &Service, pg: &Postgres) -> (Service, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("waggle-service-a-tls-")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temp dir for A's certificate: {e}"));
    let (cert, key) = self_signed_cert(dir.path());
    (start_a_https(b, pg, &cert, &key), dir)
}

/// A's and curl's spans are HTTPS spans read from the plaintext; A's calls
/// are its children and B joins through the injected header.
#[track_caller]
pub fn assert_tls_flow(f: &Flow, seen: &[String]) {
    let ctx = f.render();
    for s in [&f.curl, &f.a_server] {
        assert_eq!(s.attr_str("url.scheme"), Some("https"), "url.scheme of {s}\n{ctx}");
        assert_eq!(s.attr_str("tls.protocol.name"), Some("tls"), "tls.protocol.name of {s}\n{ctx}");
        assert_eq!(s.attr_int("http.response.status_code"), Some(200), "{s}\n{ctx}");
    }
    for s in [&f.a_http, &f.b_server] {
        assert_eq!(s.attr_str("url.scheme"), Some("http"), "url.scheme of {s}\n{ctx}");
        assert_eq!(s.attr_str("tls.protocol.name"), None, "A -> B is plaintext: {s}\n{ctx}");
    }
    assert_children_of_a(f);
    assert_injected_into_b(f, seen);
}

/// Without an incoming header: curl's HTTPS request carries no
/// `traceparent` (the kernel cannot inject into TLS), so A's SERVER span
/// starts the trace and curl's CLIENT span is a trace of its own.
#[test]
#[ignore = "needs root, node, PostgreSQL, openssl and the agent binary: cargo xtask test runs it"]
fn https_server_span_roots_the_trace_and_its_calls_join_it() {
    let _guard = e2e_setup("https_server_span_roots_the_trace_and_its_calls_join_it");
    let pg = Postgres::start();
    let receiver = OtlpReceiver::start();
    let (agent, metrics_port) = start_agent(&receiver, true);
    let b = start_b();
    let (a, certs) = start_a_tls(&b, &pg);

    let run = curl_https_checkout(&a, &certs.path().join("cert.pem"), &[]);
    assert_served(&run, &a, &b);
    let seen = b_saw(&run);
    let f = flows(&receiver, &Pids { a: a.pid(), b: b.pid() }, &[&run]).pop().unwrap();
    let ctx = f.render();

    assert_eq!(f.a_server.parent_span_id, "", "A's server span is the root of its trace\n{ctx}");
    assert_eq!(f.curl.parent_span_id, "", "curl's client span is a root\n{ctx}");
    assert_ne!(f.curl.trace_id, f.a_server.trace_id, "nothing carried curl's context over TLS\n{ctx}");
    assert_tls_flow(&f, &seen);
    crate::flows::assert_one_trace(&receiver, &[a.pid(), b.pid()], &f.a_server.trace_id);

    // One injection (A -> B); nothing was injected into curl's TLS request.
    let body =
        scrape_until(metrics_port, "the injection into A -> B", |body| counter(body, "propagation_injected") >= 1);
    assert_eq!(counter(&body, "propagation_injected"), 1, "{body}");
    agent.stop();
}

/// The client sends its own `traceparent` inside TLS: A's SERVER span
/// joins it (trace id and parent span id), and so does everything below.
#[test]
#[ignore = "needs root, node, PostgreSQL, openssl and the agent binary: cargo xtask test runs it"]
fn traceparent_sent_over_https_joins_the_trace() {
    let _guard = e2e_setup("traceparent_sent_over_https_joins_the_trace");
    let pg = Postgres::start();
    let receiver = OtlpReceiver::start();
    let (agent, _) = start_agent(&receiver, true);
    let b = start_b();
    let (a, certs) = start_a_tls(&b, &pg);

    let header = format!("traceparent: 00-{TRACE}-{CALLER_SPAN}-01");
    let run = curl_https_checkout(&a, &certs.path().join("cert.pem"), &[&header]);
    assert_served(&run, &a, &b);
    let seen = b_saw(&run);
    let f = flows(&receiver, &Pids { a: a.pid(), b: b.pid() }, &[&run]).pop().unwrap();
    let ctx = f.render();

    assert_eq!(f.a_server.trace_id, TRACE, "A's server span joins the incoming trace\n{ctx}");
    assert_eq!(f.a_server.parent_span_id, CALLER_SPAN, "A's server span's parent is the incoming span\n{ctx}");
    assert_ne!(f.a_server.span_id, CALLER_SPAN, "{ctx}");
    assert_tls_flow(&f, &seen);
    assert_eq!(f.b_server.trace_id, TRACE, "{ctx}");
    crate::flows::assert_one_trace(&receiver, &[a.pid(), b.pid()], TRACE);
    agent.stop();
}
