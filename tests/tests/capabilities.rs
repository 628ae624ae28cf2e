//! The agent runs with exactly the capabilities the DaemonSet grants
//! (`deploy/kubernetes/base/daemonset.yaml`), no more: every other capability is
//! dropped from its bounding set and `no_new_privs` is set, as Kubernetes
//! does with `capabilities: {drop: [ALL], add: [...]}` and
//! `allowPrivilegeEscalation: false`. Under them it still loads and
//! attaches every program, traces HTTP and SQL, injects `traceparent`, and
//! names a process of another user from its environment.
use std::{io::Write, os::unix::fs::PermissionsExt, time::Duration};

use serde_yaml_ng::Value;
use waggle_e2e::{
    client_spans, curl,
    db::Postgres,
    describe, e2e_setup,
    env::{agent_bin, run_client, workspace_root},
    server_spans, Agent, OtlpReceiver, Protocol, Server, SPAN_TIMEOUT,
};

/// Capability numbers (linux/capability.h) of the names the manifest uses.
fn cap_number(name: &str) -> u32 {
    match name {
        "DAC_READ_SEARCH" => 2,
        "NET_ADMIN" => 12,
        "SYS_PTRACE" => 19,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other} is not one this test knows: add its number"),
    }
}

/// The capabilities the DaemonSet adds (after dropping ALL).
fn manifest_capabilities() -> Vec<String> {
    let text = std::fs::read_to_string(workspace_root().join("deploy/kubernetes/base/daemonset.yaml")).unwrap();
    let ds = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in deploy/kubernetes/base/daemonset.yaml");
    let caps = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"];
    assert_eq!(caps["drop"], serde_yaml_ng::from_str::<Value>("[ALL]").unwrap());
    caps["add"].as_sequence().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect()
}

#[test]
#[ignore = "needs root, PostgreSQL and the agent binary: cargo xtask test runs it"]
fn the_agent_works_with_exactly_the_manifests_capabilities() {
    let _guard = e2e_setup("the_agent_works_with_exactly_the_manifests_capabilities");
    let caps = manifest_capabilities();
    let mask: u64 = caps.iter().map(|c| 1u64 << cap_number(c)).sum();
    let keep: Vec<String> = caps.iter().map(|c| format!("+{}", c.to_ascii_lowercase())).collect();
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("waggle-capped");
    let mut f = std::fs::File::create(&wrapper).unwrap();
    writeln!(
        f,
        "#!/bin/sh\nexec setpriv --no-new-privs --bounding-set -all,{} --inh-caps -all -- {} \"$@\"",
        keep.join(","),
        agent_bin().display()
    )
    .unwrap();
    drop(f);
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

    let pg = Postgres::start();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start_bin(&wrapper, &receiver.agent_args(Protocol::Grpc), &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap_or_else(|| panic!("no CapEff in /proc/<agent>/status:\n{status}"));
    assert_eq!(effective, mask, "the agent runs with exactly {caps:?}:\n{status}");
    let stderr = agent.stderr();
    assert!(stderr.contains("probes skipped count=0"), "every program attached:\n{stderr}");
    assert!(stderr.contains("propagation on:"), "sockops and sk_msg attached:\n{stderr}");

    // HTTP from curl to a server of another user, joined by the injected
    // traceparent; the server named by its own OTEL_SERVICE_NAME.
    let server = Server::python_ok_server_as_nobody(&[("OTEL_SERVICE_NAME", "capped-app")]);
    let r = curl(&[&server.url("/capped")]);
    r.assert_success();
    // SQL from psql.
    let sql = run_client("psql", pg.psql().args(["-c", "SELECT 1"]), Duration::from_secs(20));
    sql.assert_success();
    receiver.focus(&[r.pid, server.pid(), sql.pid]);
    let spans = receiver.expect_spans("curl's, the server's and psql's spans", SPAN_TIMEOUT, |s| {
        !client_spans(s, r.pid).is_empty()
            && !server_spans(s, server.pid()).is_empty()
            && !client_spans(s, sql.pid).is_empty()
    });
    let ctx = describe(&spans);
    let (client, served) = (&client_spans(&spans, r.pid)[0], &server_spans(&spans, server.pid())[0]);
    assert_eq!(served.attr_str("url.path"), Some("/capped"), "{ctx}");
    assert_eq!(served.service_name, "capped-app", "a process of another user is read from /proc\n{ctx}");
    assert_eq!(
        (served.trace_id.as_str(), served.parent_span_id.as_str()),
        (client.trace_id.as_str(), client.span_id.as_str()),
        "the server joined curl's trace through the injected traceparent\n{ctx}"
    );
    assert_eq!(client_spans(&spans, sql.pid)[0].attr_str("db.system.name"), Some("postgresql"), "{ctx}");
    let out = agent.stop();
    assert!(out.counter("propagation_injected") >= 1, "curl's request was injected:\n{}", out.stderr);
}
