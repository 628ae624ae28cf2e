//! The agent never traces its own export traffic, whether the collector
//! keeps connections open or closes each one.
use super::*;

#[test]
#[ignore = "needs root and the agent binary: cargo xtask test runs it"]
fn agent_never_traces_its_own_export() {
    let _guard = e2e_setup("agent_never_traces_its_own_export");
    own_export_is_not_traced(OtlpReceiver::start(), false);
}

/// A collector that closes each connection: the agent's connection is gone
/// before the agent reads the collector's accept, so only the kernel, which
/// knew it from the agent's connect(), can tell it is the agent's.
#[test]
#[ignore = "needs root and the agent binary: cargo xtask test runs it"]
fn agent_never_traces_its_own_export_to_a_collector_that_closes_connections() {
    let _guard = e2e_setup("agent_never_traces_its_own_export_to_a_collector_that_closes_connections");
    own_export_is_not_traced(OtlpReceiver::start_closing(), true);
}

fn own_export_is_not_traced(receiver: OtlpReceiver, closing: bool) {
    let app = Server::app();
    let agent = Agent::start(&receiver.agent_args(Protocol::HttpProtobuf), &[]);
    let agent_pid = agent.pid();

    // Several rounds, each waiting for its span to be exported, so several
    // export batches travel while capture runs.
    let mut curl_pids = Vec::new();
    for i in 0..3 {
        let r = curl(&[&app.url(&format!("/users/{i}"))]);
        r.assert_success();
        curl_pids.push(r.pid);
        receiver.focus(&[&[app.pid()], &curl_pids[..]].concat());
        receiver.expect_spans(&format!("SERVER span {} of app", i + 1), SPAN_TIMEOUT, |s| {
            server_spans(s, app.pid()).len() > i
        });
    }
    // A feedback loop (export -> captured -> exported) would show by now:
    // the first exports finished before the last round's span was even
    // exported, and stop() drains every captured event and flushes the
    // spans before the agent exits.
    let output = agent.stop();
    let spans = receiver.spans();

    assert!(receiver.http_requests() >= 1, "the agent exported over http/protobuf");
    let paths = receiver.http_paths();
    assert!(paths.iter().all(|p| p == "/v1/traces"), "http/protobuf exports go to <endpoint>/v1/traces: {paths:?}");
    let receiver_port = i64::from(receiver.http_addr().port());
    let test_pid = std::process::id();
    for s in &spans {
        assert_ne!(s.pid(), Some(agent_pid), "a span of the agent itself: {s}");
        assert_ne!(s.pid(), Some(test_pid), "a span of the OTLP receiver (the agent's export traffic): {s}");
        // Other agents on the same machine (a developer's, another test run)
        // export to other receivers; their export traffic is fair game for
        // this agent. Ours is what reaches this receiver.
        let ours =
            s.pid() == Some(agent_pid) || s.pid() == Some(test_pid) || s.attr_int("server.port") == Some(receiver_port);
        assert!(
            !(ours && s.attr_str("url.path").is_some_and(|p| p.ends_with("/v1/traces"))),
            "a span of an OTLP export: {s}"
        );
        assert_ne!(s.attr_int("server.port"), Some(receiver_port), "a span of traffic to the receiver: {s}");
    }
    assert_eq!(server_spans(&spans, app.pid()).len(), 3, "{}", describe(&spans));
    for pid in curl_pids {
        assert_eq!(client_spans(&spans, pid).len(), 1, "{}", describe(&spans));
    }
    // Each export connection the receiver accepted was skipped in the
    // kernel, and the agent never looked at sockets itself: not for its own
    // traffic, not for any connection's addresses.
    let skipped = output.counter("kernel_own_conns_skipped");
    let connections = if closing { receiver.http_requests() as u64 } else { 1 };
    assert!(skipped >= connections, "{skipped} skipped of {connections} export connections: {}", output.stderr);
    assert_eq!(output.counter("own_socket_scans"), 0, "{}", output.stderr);
    assert_eq!(output.counter("conn_addr_lookups"), 0, "{}", output.stderr);
    assert_clean_receiver(&receiver);
}
