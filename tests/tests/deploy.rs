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
    documents("deploy/kubernetes/base/daemonset.yaml")
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in deploy/kubernetes/base/daemonset.yaml")
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

#[test]
fn collector_example_forwards_metrics_to_prometheus_with_exemplars() {
    let config = &documents("deploy/collector/otelcol.yaml")[0];
    let pipeline = &config["service"]["pipelines"]["metrics"];
    assert_eq!(pipeline["receivers"][0], Value::from("otlp"));
    let exporters: Vec<&str> =
        pipeline["exporters"].as_sequence().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert!(exporters.contains(&"prometheus"), "{exporters:?}");
    let prometheus = &config["exporters"]["prometheus"];
    assert_eq!(prometheus["enable_open_metrics"], Value::from(true), "exemplars need OpenMetrics");
    assert_eq!(prometheus["resource_to_telemetry_conversion"]["enabled"], Value::from(true));
}

/// The DaemonSet's pod labels, metrics port and scrape annotations agree
/// with the PodMonitor, the Service and the ServiceMonitor.
#[test]
fn kubernetes_scrape_examples_select_the_agents_metrics_port() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    let container = &pod["spec"]["containers"][0];
    let port = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a container port named metrics");
    assert_eq!(port["containerPort"], Value::from(9464));
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], Value::from("true"));
    assert_eq!(annotations["prometheus.io/port"], Value::from("9464"));
    assert_eq!(annotations["prometheus.io/path"], Value::from("/metrics"));
    let docs = documents("deploy/kubernetes/monitoring.yaml");
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("a {kind}"));
    let pod_monitor = find("PodMonitor");
    assert_eq!(&pod_monitor["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(pod_monitor["spec"]["podMetricsEndpoints"][0]["port"], Value::from("metrics"));
    let service = find("Service");
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], Value::from("metrics"));
    let service_monitor = find("ServiceMonitor");
    assert_eq!(&service_monitor["spec"]["selector"]["matchLabels"], &service["metadata"]["labels"]);
    assert_eq!(service_monitor["spec"]["endpoints"][0]["port"], service["spec"]["ports"][0]["name"]);
    for d in [pod_monitor, service, service_monitor] {
        assert_eq!(d["metadata"]["namespace"], ds["metadata"]["namespace"]);
    }
}

fn datasources() -> Vec<Value> {
    documents("deploy/grafana/provisioning/datasources/waggle.yaml")[0]["datasources"].as_sequence().unwrap().clone()
}

fn datasource(kind: &str) -> Value {
    datasources().into_iter().find(|d| d["type"] == kind).unwrap_or_else(|| panic!("a {kind} data source"))
}

/// The links between data sources name each other's uids, and the
/// exemplar label is the one the agent writes (`trace_id`).
#[test]
fn grafana_datasources_link_to_each_other_by_uid() {
    let uids: Vec<String> = datasources().iter().map(|d| d["uid"].as_str().unwrap().to_owned()).collect();
    let (prometheus, tempo, loki) = (datasource("prometheus"), datasource("tempo"), datasource("loki"));
    assert_eq!(uids.len(), 3, "{uids:?}");
    let exemplars = &prometheus["jsonData"]["exemplarTraceIdDestinations"][0];
    assert_eq!(exemplars["name"], Value::from("trace_id"));
    assert_eq!(exemplars["datasourceUid"], tempo["uid"]);
    let t = &tempo["jsonData"];
    assert_eq!(t["tracesToMetrics"]["datasourceUid"], prometheus["uid"]);
    assert_eq!(t["serviceMap"]["datasourceUid"], prometheus["uid"]);
    assert_eq!(t["nodeGraph"]["enabled"], Value::from(true));
    assert_eq!(t["tracesToLogsV2"]["datasourceUid"], loki["uid"]);
    assert_eq!(t["lokiSearch"]["datasourceUid"], loki["uid"]);
    let queries = t["tracesToMetrics"]["queries"].as_sequence().unwrap();
    assert!(
        queries.iter().any(|q| q["query"].as_str().unwrap().contains(r#"status_code="STATUS_CODE_ERROR""#)),
        "{queries:?}"
    );
    let derived = &loki["jsonData"]["derivedFields"][0];
    assert_eq!(derived["datasourceUid"], tempo["uid"]);
    assert!(derived["matcherRegex"].as_str().unwrap().contains("trace_id"));
    let provider = &documents("deploy/grafana/provisioning/dashboards/waggle.yaml")[0]["providers"][0];
    assert_eq!(provider["type"], Value::from("file"));
}

/// Metric families the agent exposes (agent/src/span_metrics), as
/// Prometheus names them.
const AGENT_METRICS: &[&str] = &[
    "http_server_request_duration_seconds",
    "http_client_request_duration_seconds",
    "db_client_operation_duration_seconds",
    "http_server_request_body_size_bytes",
    "http_server_response_body_size_bytes",
    "traces_spanmetrics_calls_total",
    "traces_spanmetrics_latency",
    "traces_service_graph_request_total",
    "traces_service_graph_request_failed_total",
    "traces_service_graph_request_server_seconds",
    "traces_service_graph_request_client_seconds",
];

/// Every PromQL expression of the dashboards (panels and variables) and
/// of the Tempo data source, with Grafana's variables filled in.
fn promql() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let fill = |e: &str| {
        e.replace("$__rate_interval", "1m")
            .replace("$$__tags", r#"service="front""#)
            .replace("$service", ".*")
            .replace("$route", ".*")
            .replace("$system", ".*")
    };
    for name in ["waggle-red.json", "waggle-database.json"] {
        let path = workspace_root().join("deploy/grafana/dashboards").join(name);
        let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                out.push((format!("{name}: {}", panel["title"]), fill(target["expr"].as_str().unwrap())));
            }
        }
        for var in dash["templating"]["list"].as_array().unwrap() {
            // label_values(SELECTOR, label) is Grafana's; SELECTOR is PromQL.
            let q = var["query"]["query"].as_str().unwrap();
            let inner = q.strip_prefix("label_values(").and_then(|r| r.rsplit_once(',')).map(|(s, _)| s).unwrap();
            out.push((format!("{name}: variable {}", var["name"]), fill(inner)));
        }
    }
    for q in datasource("tempo")["jsonData"]["tracesToMetrics"]["queries"].as_sequence().unwrap() {
        out.push((format!("tempo: {}", q["name"].as_str().unwrap()), fill(q["query"].as_str().unwrap())));
    }
    out
}

#[test]
fn dashboards_query_the_agents_metrics_through_the_provisioned_datasource() {
    let prometheus_uid = datasource("prometheus")["uid"].clone();
    let uid = prometheus_uid.as_str().unwrap();
    for name in ["waggle-red.json", "waggle-database.json"] {
        let path = workspace_root().join("deploy/grafana/dashboards").join(name);
        let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()), "{name}: no uid");
        let panels = dash["panels"].as_array().unwrap();
        assert!(panels.len() >= 4, "{name}: {} panels", panels.len());
        for panel in panels {
            assert_eq!(panel["datasource"]["uid"], uid, "{name}: {}", panel["title"]);
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(target["datasource"]["uid"], uid, "{name}: {}", panel["title"]);
            }
        }
        for var in dash["templating"]["list"].as_array().unwrap() {
            assert_eq!(var["datasource"]["uid"], uid, "{name}: variable {}", var["name"]);
        }
        // Duration panels let Grafana draw exemplars.
        assert!(
            panels.iter().flat_map(|p| p["targets"].as_array().unwrap()).any(|t| t["exemplar"] == true),
            "{name}: no panel shows exemplars"
        );
    }
    for (what, expr) in promql() {
        assert!(AGENT_METRICS.iter().any(|m| expr.contains(m)), "{what} uses none of the agent's metrics: {expr}");
        assert!(!expr.contains('$'), "{what}: unfilled variable in {expr}");
    }
    // The RED dashboard covers server, client, service graph and span metrics.
    let all: String = promql().into_iter().map(|(_, e)| e).collect();
    for m in [
        "http_server_request_duration_seconds_bucket",
        "error_type!=\"\"",
        "traces_service_graph_request_total",
        "db_client_operation_duration_seconds_bucket",
    ] {
        assert!(all.contains(m), "no query uses {m}");
    }
}

/// Each expression parses and evaluates in a real Prometheus (no data
/// needed: an empty result is a valid answer, a parse error is not).
#[test]
#[ignore = "needs Prometheus (Debian package prometheus): cargo xtask test runs it"]
fn every_promql_expression_is_accepted_by_prometheus() {
    let prom = waggle_e2e::prometheus::Prometheus::start(&[]);
    let exprs = promql();
    assert!(exprs.len() >= 15, "{}", exprs.len());
    for (what, expr) in exprs {
        if let Err(e) = prom.api("query", &[("query", &expr)]) {
            panic!("{what}: Prometheus refused {expr}: {e}");
        }
    }
    // And the check itself can fail.
    let refused = prom.api("query", &[("query", "sum(rate(x[5m])")]).unwrap_err();
    assert!(refused.contains("bad_data"), "{refused}");
}
