//! The deployment examples in deploy/ stay coherent with the agent: the
//! DaemonSet has what eBPF capture needs and no more, and the arguments and environment
//! it passes are accepted by the real binary (`--check-config`).
use std::process::Command;

use serde_yaml_ng::Value;
use waggle_e2e::env::{agent_bin, workspace_root};

fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(workspace_root().join(path)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
}

fn daemonset() -> Value {
    documents("deploy/kubernetes/waggle.yaml")
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in deploy/kubernetes/waggle.yaml")
}

#[test]
fn daemonset_has_what_capture_needs() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], Value::from(true), "kernel pids must match /proc");
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert!(matches!(security["privileged"], Value::Null | Value::Bool(false)), "not privileged: {security:?}");
    assert_eq!(security["allowPrivilegeEscalation"], Value::from(false));
    assert_eq!(security["readOnlyRootFilesystem"], Value::from(true));
    // The exact set tests/tests/capabilities.rs runs the agent with.
    let caps: Vec<&str> =
        security["capabilities"]["add"].as_sequence().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(caps, ["BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"]);
    assert_eq!(security["capabilities"]["drop"][0], Value::from("ALL"));
    let mounts: Vec<&str> =
        container["volumeMounts"].as_sequence().unwrap().iter().map(|m| m["mountPath"].as_str().unwrap()).collect();
    assert_eq!(mounts, ["/sys/kernel/tracing", "/sys/fs/cgroup"], "only what the agent uses");
}

#[test]
#[ignore = "needs the agent binary: cargo xtask test runs it"]
fn daemonset_arguments_and_environment_are_valid_agent_config() {
    let ds = daemonset();
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> =
        container["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    let mut cmd = Command::new(agent_bin());
    cmd.args(&args).arg("--check-config").env_clear();
    for var in container["env"].as_sequence().unwrap() {
        let name = var["name"].as_str().unwrap();
        // Values from the downward API and $(VAR) references are filled in by
        // the kubelet; a plausible value stands in for them here.
        let value = var["value"].as_str().unwrap_or("node-1").replace("$(NODE_NAME)", "node-1");
        cmd.env(name, value);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("otlp: http://otel-collector.observability.svc:4318/v1/traces (http/protobuf)"),
        "{stdout}"
    );
    assert!(stdout.contains("metrics_addr: 0.0.0.0:9464"), "{stdout}");
    assert!(stdout.contains("resource attribute: k8s.node.name=node-1"), "{stdout}");
}

#[test]
fn collector_example_receives_both_otlp_protocols() {
    let config = &documents("deploy/collector/otelcol.yaml")[0];
    let protocols = &config["receivers"]["otlp"]["protocols"];
    assert_eq!(protocols["grpc"]["endpoint"], Value::from("0.0.0.0:4317"));
    assert_eq!(protocols["http"]["endpoint"], Value::from("0.0.0.0:4318"));
    let pipeline = &config["service"]["pipelines"]["traces"];
    assert_eq!(pipeline["receivers"][0], Value::from("otlp"));
}
