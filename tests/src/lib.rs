//! Harness for waggle's end-to-end tests: the real agent binary
//! ([`Agent`]) watching real servers ([`Server`]) and clients (curl, Python
//! fixture scripts), exporting to a real OTLP receiver ([`OtlpReceiver`]).
//!
//! Every e2e test is `#[ignore = "needs root ..."]` (plain `cargo test`
//! reports it as ignored; `cargo xtask test` runs it with
//! `--include-ignored`) and starts with [`e2e_setup`], which fails the test
//! when not root and otherwise serialises the tests (they all load probes,
//! and an agent sees every process on the machine).
//!
//! The agent binary is `$WAGGLE_BIN` (set by `cargo xtask test`), else the
//! release build in the workspace's target dir.
pub mod agent;
pub mod apache;
pub mod cache;
pub mod cgroups;
pub mod db;
pub mod env;
pub mod k8s;
pub mod kube_api;
pub mod perl;
pub mod prometheus;
pub mod puma;
pub mod receiver;
pub mod scrape;
pub mod servers;
pub mod tls;
pub mod tomcat;

use std::time::Duration;

pub use agent::{wait_for_other_injectors, Agent, AgentOutput, SK_MSG_PROGRAM};
pub use env::{
    curl, curl_on_one_connection, e2e_setup, fixture, is_root, python, python_script, require_root, run_client,
    ClientRun, E2eGuard, Proc,
};
pub use receiver::{describe, AttrVal, Kind, OtlpReceiver, Protocol, Span, StatusCode};
pub use servers::Server;

/// How long tests wait for spans: exports are batched about every second,
/// so this is generous while still bounding a broken pipeline.
pub const SPAN_TIMEOUT: Duration = Duration::from_secs(10);

/// Spans whose resource `process.pid` is `pid`.
pub fn by_pid(spans: &[Span], pid: u32) -> Vec<Span> {
    spans.iter().filter(|s| s.pid() == Some(pid)).cloned().collect()
}

/// SERVER spans of process `pid`.
pub fn server_spans(spans: &[Span], pid: u32) -> Vec<Span> {
    spans.iter().filter(|s| s.is_server() && s.pid() == Some(pid)).cloned().collect()
}

/// CLIENT spans of process `pid`.
pub fn client_spans(spans: &[Span], pid: u32) -> Vec<Span> {
    spans.iter().filter(|s| s.is_client() && s.pid() == Some(pid)).cloned().collect()
}

/// Spans of any of `pids` whose `url.path` is `path`.
pub fn with_path(spans: &[Span], path: &str) -> Vec<Span> {
    spans.iter().filter(|s| s.attr_str("url.path") == Some(path)).cloned().collect()
}

/// Asserts the resource attributes every span must carry: `process.pid`
/// equal to `pid`, a non-empty `process.executable.name` and `host.name`,
/// and `service.name` equal to `service`.
#[track_caller]
pub fn assert_resource(span: &Span, service: &str, pid: u32) {
    assert_eq!(span.service_name, service, "service.name of {span}\nresource: {:?}", span.resource);
    assert_eq!(
        span.resource_int("process.pid"),
        Some(i64::from(pid)),
        "process.pid (int) of {span}\nresource: {:?}",
        span.resource
    );
    for key in ["process.executable.name", "host.name"] {
        assert!(
            span.resource_str(key).is_some_and(|v| !v.is_empty()),
            "resource of {span} lacks a non-empty {key}: {:?}",
            span.resource
        );
    }
}

/// Prints a test's figure (what it measured: load held, memory, drops) on
/// the real stderr, past the test harness's capture, so the run's log
/// shows it, and appends it to `target/figures.txt` for
/// `docs/reliability.md`.
pub fn figure(line: &str) {
    use std::io::Write;
    let line = format!("FIGURE {line}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    let path = env::workspace_root().join("target").join("figures.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(line.as_bytes());
    }
}

/// None of `needles` appears in anything exported nor in the agent's output
/// (its span printer on stdout, its logs on stderr).
#[track_caller]
pub fn assert_not_leaked(receiver: &OtlpReceiver, out: &AgentOutput, needles: &[&str]) {
    let dump = receiver.raw_dump();
    for needle in needles {
        for (what, text) in [("exported spans", &dump), ("agent stdout", &out.stdout), ("agent stderr", &out.stderr)] {
            assert!(!text.contains(needle), "secret {needle:?} leaked into the {what}");
        }
    }
}
