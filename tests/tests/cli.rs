//! The agent's edge: bad configuration and missing privileges give one clear
//! line and a non-zero exit, never a panic or a backtrace.
//!
//! Every test runs the agent binary (`$WAGGLE_BIN`, see `env::agent_bin`):
//! plain `cargo test` reports them as ignored, `cargo xtask test` builds the
//! agent and runs them.
use std::process::{Command, Output};

use waggle_e2e::env::{agent_bin, require_root};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(agent_bin());
    cmd.args(args).env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn one_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {text}");
    assert!(!text.contains("panicked"), "{text}");
    lines[0].to_owned()
}

/// Arguments, environment, and a word the one-line error must contain.
type BadConfigCase<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
#[ignore = "needs the agent binary: cargo xtask test runs it"]
fn bad_configuration_is_one_line_and_exit_2() {
    let cases: [BadConfigCase; 5] = [
        (&["--otlp-protocol", "http/json"], &[], "http/json"),
        (&[], &[("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")], "OTEL_EXPORTER_OTLP_PROTOCOL"),
        (&["--capture-bytes", "999999"], &[], "capture"),
        (
            &[],
            &[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "lots")],
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (&["--config", "/nonexistent/waggle.yaml"], &[], "/nonexistent/waggle.yaml"),
    ];
    for (args, env, needle) in cases {
        let out = run(args, env);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {}", String::from_utf8_lossy(&out.stderr));
        let line = one_line(&out.stderr);
        assert!(line.starts_with("waggle: ") && line.contains(needle), "{args:?} {env:?}: {line}");
    }
}

#[test]
#[ignore = "needs the agent binary: cargo xtask test runs it"]
fn unknown_yaml_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("waggle.yaml");
    std::fs::write(&path, "otlp: {endpoint: http://c:4318}\nprpagation: off\n").unwrap();
    let out = run(&["--config", path.to_str().unwrap(), "--check-config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line(&out.stderr).contains("prpagation"));
}

#[test]
#[ignore = "needs root (to drop to nobody) and the agent binary: cargo xtask test runs it"]
fn without_privileges_the_agent_says_so_in_one_line() {
    require_root("without_privileges_the_agent_says_so_in_one_line");
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(agent_bin())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let line = one_line(
        &out.stderr
            .iter()
            .copied()
            .filter(|_| true)
            .collect::<Vec<u8>>()
            .split(|b| *b == b'\n')
            .filter(|l| l.starts_with(b"waggle: "))
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .collect::<Vec<u8>>(),
    );
    assert!(line.contains("root"), "{line}");
}
