//! The deployment examples in deploy/ stay coherent with the agent and with
//! each other.
//!
//! Kubernetes: the kustomize base (deploy/kubernetes), its overlays and the
//! Helm chart (deploy/helm/waggle) are rendered by the real tools (`kubectl
//! kustomize`, `helm template`; tests/src/k8s.rs says where they come
//! from), every rendered object validates against the Kubernetes OpenAPI
//! schemas (PyPI's kubernetes-validate, strict, offline), and each
//! rendering asserts least privilege (no privileged, exactly the
//! capabilities tests/tests/capabilities.rs runs the agent with), probes on
//! the health endpoints, RBAC verbs and resources, no control-plane
//! scheduling, a versioned image; the base and the chart render the same
//! pod spec; and the arguments and environment each rendering passes are
//! accepted by the real binary (`--check-config`). Tests that need the
//! tools are ignored by plain `cargo test` (`cargo xtask test` runs them);
//! none needs root.
use std::{collections::BTreeSet, process::Command};

use serde_yaml_ng::Value;
use waggle_e2e::{
    env::{agent_bin, workspace_root},
    k8s,
};

const CHART: &str = "deploy/helm/waggle";
/// What the DaemonSet adds after dropping ALL (and the order the manifests
/// list them in).
const CAPABILITIES: [&str; 5] = ["BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"];
/// The agent's health endpoints (agent/src/metrics_server/).
const LIVENESS_PATH: &str = "/healthz";
const READINESS_PATH: &str = "/readyz";
const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(workspace_root().join(path)).unwrap();
    k8s::documents(&text)
}

/// The base's DaemonSet as written (no rendering).
fn daemonset() -> Value {
    documents("deploy/kubernetes/base/daemonset.yaml")
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in deploy/kubernetes/base/daemonset.yaml")
}

fn workspace_version() -> String {
    let text = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    let line = text.lines().find(|l| l.starts_with("version = ")).expect("a workspace version in Cargo.toml");
    line.trim_start_matches("version = ").trim_matches('"').to_owned()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence().map(|s| s.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
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
    assert_eq!(strings(&security["capabilities"]["add"]), CAPABILITIES);
    assert_eq!(security["capabilities"]["drop"][0], Value::from("ALL"));
    let mounts: Vec<&str> =
        container["volumeMounts"].as_sequence().unwrap().iter().map(|m| m["mountPath"].as_str().unwrap()).collect();
    assert_eq!(mounts, ["/sys/kernel/tracing", "/sys/fs/cgroup"], "only what the agent uses");
}

/// The chart, its appVersion and the manifests' image tag are the release
/// version, so a release bumps them together.
#[test]
fn chart_and_image_carry_the_workspace_version() {
    let version = workspace_version();
    let chart = &documents("deploy/helm/waggle/Chart.yaml")[0];
    assert_eq!(chart["version"], Value::from(version.as_str()));
    assert_eq!(chart["appVersion"], Value::from(version.as_str()));
    let image = daemonset()["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    assert_eq!(image, Value::from(format!("waggle:{version}")));
}

/// One rendering of the manifests: what it is, the YAML and its objects.
struct Rendered {
    name: String,
    yaml: String,
    objects: Vec<Value>,
    /// Rendered with the defaults (so: no control-plane nodes).
    defaults: bool,
    /// The OTLP endpoint and protocol it should configure.
    otlp: (&'static str, &'static str),
}

impl Rendered {
    fn new(name: &str, yaml: String, defaults: bool, otlp: (&'static str, &'static str)) -> Rendered {
        let objects = k8s::documents(&yaml);
        Rendered { name: name.to_owned(), yaml, objects, defaults, otlp }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    #[track_caller]
    fn daemonset(&self) -> &Value {
        let all = self.of_kind("DaemonSet");
        assert_eq!(all.len(), 1, "{}: one DaemonSet", self.name);
        all[0]
    }
}

const BASE_OTLP: (&str, &str) = ("http://otel-collector.observability.svc:4318", "http/protobuf");
const HELM_VALUES_OTLP: (&str, &str) = ("http://jaeger-collector.tracing.svc:4317", "grpc");
/// `--set` values a platform team would change; `controlPlane=true` too.
const HELM_VALUES: &[&str] = &[
    "--set",
    "image.repository=registry.example.com/obs/waggle",
    "--set",
    "otlp.endpoint=http://jaeger-collector.tracing.svc:4317",
    "--set",
    "otlp.protocol=grpc",
    "--set",
    "extraArgs={--log-level,debug}",
    "--set",
    "resources.limits.memory=512Mi",
    "--set",
    "tolerations[0].key=dedicated,tolerations[0].operator=Exists,tolerations[0].effect=NoSchedule",
    "--set",
    "controlPlane=true",
];

/// The base, both overlays, the chart with its defaults and with values.
fn renderings() -> Vec<Rendered> {
    vec![
        Rendered::new("kustomize base", k8s::kustomize("deploy/kubernetes"), true, BASE_OTLP),
        Rendered::new(
            "overlay otel-collector",
            k8s::kustomize("deploy/kubernetes/overlays/otel-collector"),
            true,
            ("http://otel-collector-opentelemetry-collector.observability.svc:4317", "grpc"),
        ),
        Rendered::new(
            "overlay tempo",
            k8s::kustomize("deploy/kubernetes/overlays/tempo"),
            true,
            ("http://tempo.tempo.svc:4318", "http/protobuf"),
        ),
        Rendered::new("helm defaults", k8s::helm_template(CHART, "waggle", "waggle", &[]), true, BASE_OTLP),
        Rendered::new(
            "helm with values",
            k8s::helm_template(CHART, "tracing", "observability", HELM_VALUES),
            false,
            HELM_VALUES_OTLP,
        ),
    ]
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"].as_sequence()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

#[test]
#[ignore = "needs kubectl and helm (npm) and kubernetes-validate (PyPI): cargo xtask test runs it"]
fn every_rendered_object_validates_against_the_kubernetes_openapi_schemas() {
    for r in renderings() {
        assert!(!r.objects.is_empty(), "{}: nothing rendered", r.name);
        for version in k8s::SCHEMA_VERSIONS {
            if let Err(report) = k8s::validate(&r.yaml, version) {
                panic!("{} does not validate against Kubernetes {version}:\n{report}\n{}", r.name, r.yaml);
            }
        }
    }
    // The check can fail: a misspelt field under strict validation, and a
    // wrong type.
    let base = k8s::kustomize("deploy/kubernetes");
    let misspelt = base.replace("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true");
    assert_ne!(misspelt, base);
    let report = k8s::validate(&misspelt, "1.37.0").expect_err("an unknown field is refused");
    assert!(report.contains("readOnlyRootFileSystem"), "{report}");
    let wrong_type = base.replace("hostPID: true", "hostPID: \"yes\"");
    assert_ne!(wrong_type, base);
    k8s::validate(&wrong_type, "1.37.0").expect_err("a string for a boolean is refused");
    let lint = k8s::helm_lint(CHART);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
}

#[test]
#[ignore = "needs kubectl and helm (npm) and kubernetes-validate (PyPI): cargo xtask test runs it"]
fn every_rendering_runs_the_agent_with_least_privilege_and_probes_its_health_endpoints() {
    let version = workspace_version();
    for r in renderings() {
        let name = &r.name;
        let ds = r.daemonset();
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["hostPID"], Value::from(true), "{name}");
        for host in ["hostNetwork", "hostIPC"] {
            assert!(matches!(pod[host], Value::Null | Value::Bool(false)), "{name}: {host}");
        }
        assert!(pod["securityContext"]["privileged"].is_null(), "{name}");
        assert!(pod["initContainers"].is_null(), "{name}: no init containers to hold other rights");
        let containers = pod["containers"].as_sequence().unwrap();
        assert_eq!(containers.len(), 1, "{name}");
        let c = &containers[0];
        let security = &c["securityContext"];
        assert!(!r.yaml.contains("privileged: true"), "{name}: privileged somewhere");
        assert!(matches!(security["privileged"], Value::Null | Value::Bool(false)), "{name}");
        assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"], "{name}");
        assert_eq!(strings(&security["capabilities"]["add"]), CAPABILITIES, "{name}");
        assert_eq!(security["allowPrivilegeEscalation"], Value::from(false), "{name}");
        assert_eq!(security["readOnlyRootFilesystem"], Value::from(true), "{name}");
        assert_eq!(security["seccompProfile"]["type"], Value::from("RuntimeDefault"), "{name}");

        // Host mounts: tracefs and the cgroup root, read-only, nothing else.
        let mounts: Vec<(&str, &str, bool)> = c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|m| (m["name"].as_str().unwrap(), m["mountPath"].as_str().unwrap(), m["readOnly"] == true))
            .collect();
        assert_eq!(mounts, [("tracefs", "/sys/kernel/tracing", true), ("cgroup", "/sys/fs/cgroup", true)], "{name}");
        let volumes: Vec<(&str, &str)> = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), v["hostPath"]["path"].as_str().unwrap()))
            .collect();
        assert_eq!(volumes, [("tracefs", "/sys/kernel/tracing"), ("cgroup", "/sys/fs/cgroup")], "{name}");

        // Probes on the health endpoints, on the port --metrics-addr binds.
        let args = strings(&c["args"]);
        let at = args.iter().position(|a| *a == "--metrics-addr").unwrap_or_else(|| panic!("{name}: {args:?}"));
        let metrics_port: u64 = args[at + 1].rsplit_once(':').unwrap().1.parse().unwrap();
        let port_named = |p: &Value| -> u64 {
            match p {
                Value::Number(n) => n.as_u64().unwrap(),
                Value::String(s) => c["ports"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|port| port["name"] == s.as_str())
                    .unwrap_or_else(|| panic!("{name}: no container port named {s}"))["containerPort"]
                    .as_u64()
                    .unwrap(),
                other => panic!("{name}: probe port {other:?}"),
            }
        };
        for (probe, path) in [("livenessProbe", LIVENESS_PATH), ("readinessProbe", READINESS_PATH)] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], Value::from(path), "{name}: {probe}");
            assert_eq!(port_named(&get["port"]), metrics_port, "{name}: {probe} asks the --metrics-addr port");
            // Readiness fails after 5 s without a drain, liveness after 30 s
            // without a loop turn: the probes must not give up sooner.
            let period = c[probe]["periodSeconds"].as_u64().unwrap();
            let threshold = c[probe]["failureThreshold"].as_u64().unwrap();
            assert!(period * threshold >= 10, "{name}: {probe} fails after {}s", period * threshold);
        }

        // A versioned image, requests and a memory limit.
        let image = c["image"].as_str().unwrap();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert_eq!(tag, version, "{name}: {image}");
        for key in ["cpu", "memory"] {
            assert!(c["resources"]["requests"][key].is_string(), "{name}: requests.{key}");
        }
        assert!(c["resources"]["limits"]["memory"].is_string(), "{name}: limits.memory");
        assert!(c["resources"]["limits"]["cpu"].is_null(), "{name}: a CPU limit would throttle draining");

        // The kubelet expands $(NODE_NAME) only from entries before it.
        let env_names = c["env"].as_sequence().unwrap().iter().map(|e| e["name"].as_str().unwrap());
        let order: Vec<&str> = env_names.filter(|n| ["NODE_NAME", "OTEL_RESOURCE_ATTRIBUTES"].contains(n)).collect();
        assert_eq!(order, ["NODE_NAME", "OTEL_RESOURCE_ATTRIBUTES"], "{name}");
        // NODE_NAME (downward API) selects the pods the Kubernetes metadata
        // watch asks for: this node's.
        let node_name = c["env"].as_sequence().unwrap().iter().find(|e| e["name"] == "NODE_NAME").unwrap();
        assert_eq!(node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName", "{name}: {node_name:?}");

        // The OTLP endpoint this rendering is for.
        assert_eq!(env_value(c, "OTEL_EXPORTER_OTLP_ENDPOINT"), Some(r.otlp.0), "{name}");
        assert_eq!(env_value(c, "OTEL_EXPORTER_OTLP_PROTOCOL"), Some(r.otlp.1), "{name}");

        // Scheduling: by default never on the control plane, and no blanket
        // toleration.
        let tolerations = pod["tolerations"].as_sequence().cloned().unwrap_or_default();
        let excluded = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"]
            .as_sequence()
            .is_some_and(|terms| {
                !terms.is_empty()
                    && terms.iter().all(|t| {
                        t["matchExpressions"].as_sequence().is_some_and(|e| {
                            e.iter().any(|x| x["key"] == CONTROL_PLANE_LABEL && x["operator"] == "DoesNotExist")
                        })
                    })
            });
        let tolerates_control_plane = tolerations.iter().any(|t| t["key"].is_null() || t["key"] == CONTROL_PLANE_LABEL);
        if r.defaults {
            assert!(excluded, "{name}: control-plane nodes are not excluded: {:?}", pod["affinity"]);
            assert!(tolerations.is_empty(), "{name}: {tolerations:?}");
        } else {
            assert!(!excluded && tolerates_control_plane, "{name}: controlPlane=true: {pod:?}");
            assert!(tolerations.iter().any(|t| t["key"] == "dedicated"), "{name}: {tolerations:?}");
        }
    }
}

/// (apiGroup, resource, verb) for every rule of every role.
fn grants(r: &Rendered) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for role in r.of_kind("ClusterRole").into_iter().chain(r.of_kind("Role")) {
        for rule in role["rules"].as_sequence().unwrap() {
            assert!(rule["resourceNames"].is_null() && rule["nonResourceURLs"].is_null(), "{}: {rule:?}", r.name);
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        out.insert((group.to_owned(), resource.to_owned(), verb.to_owned()));
                    }
                }
            }
        }
    }
    out
}

#[test]
#[ignore = "needs kubectl and helm (npm) and kubernetes-validate (PyPI): cargo xtask test runs it"]
fn rbac_grants_get_list_watch_on_pods_replicasets_and_nodes_to_the_agents_service_account_only() {
    let mut expected = BTreeSet::new();
    for (group, resource) in [("", "pods"), ("", "nodes"), ("apps", "replicasets")] {
        for verb in ["get", "list", "watch"] {
            expected.insert((group.to_owned(), resource.to_owned(), verb.to_owned()));
        }
    }
    for r in renderings() {
        let name = &r.name;
        assert_eq!(grants(&r), expected, "{name}");
        let kinds: BTreeSet<&str> = r.objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        let allowed: BTreeSet<&str> =
            ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"].into();
        assert!(kinds.is_subset(&allowed), "{name}: {kinds:?}");
        assert!(r.of_kind("Role").is_empty() && r.of_kind("RoleBinding").is_empty(), "{name}");
        let ds = r.daemonset();
        let namespace = &ds["metadata"]["namespace"];
        let account = &ds["spec"]["template"]["spec"]["serviceAccountName"];
        let sa = r.of_kind("ServiceAccount");
        assert_eq!(sa.len(), 1, "{name}");
        assert_eq!((&sa[0]["metadata"]["name"], &sa[0]["metadata"]["namespace"]), (account, namespace), "{name}");
        let role = r.of_kind("ClusterRole")[0];
        let bindings = r.of_kind("ClusterRoleBinding");
        assert_eq!(bindings.len(), 1, "{name}");
        let binding = bindings[0];
        assert_eq!(binding["roleRef"]["kind"], Value::from("ClusterRole"), "{name}");
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"], "{name}");
        let subjects = binding["subjects"].as_sequence().unwrap();
        assert_eq!(subjects.len(), 1, "{name}: {subjects:?}");
        assert_eq!(subjects[0]["kind"], Value::from("ServiceAccount"), "{name}");
        assert_eq!((&subjects[0]["name"], &subjects[0]["namespace"]), (account, namespace), "{name}");
    }
}

/// The pod template without what legitimately differs: labels (Helm adds
/// its own) and the order of env entries (a strategic merge patch puts the
/// ones it sets first; `$(VAR)` order is checked elsewhere).
fn comparable_pod(ds: &Value) -> Value {
    let mut template = ds["spec"]["template"].clone();
    if let Some(meta) = template.get_mut("metadata").and_then(Value::as_mapping_mut) {
        meta.remove("labels");
    }
    if let Some(env) = template["spec"]["containers"][0].get_mut("env").and_then(Value::as_sequence_mut) {
        env.sort_by_key(|v| v["name"].as_str().map(str::to_owned));
    }
    template
}

#[test]
#[ignore = "needs kubectl and helm (npm) and kubernetes-validate (PyPI): cargo xtask test runs it"]
fn base_chart_and_overlays_render_the_same_pod() {
    let all = renderings();
    let by_name = |n: &str| all.iter().find(|r| r.name == n).unwrap().daemonset();
    let base = by_name("kustomize base");
    let chart = by_name("helm defaults");
    assert_eq!(comparable_pod(chart), comparable_pod(base), "the chart's defaults render the base's pod");
    assert_eq!(chart["spec"]["updateStrategy"], base["spec"]["updateStrategy"]);
    assert_eq!(chart["metadata"]["name"], base["metadata"]["name"]);
    // An overlay changes the endpoint and nothing else.
    for overlay in ["overlay otel-collector", "overlay tempo"] {
        let mut pod = comparable_pod(by_name(overlay));
        let env = pod["spec"]["containers"][0]["env"].as_sequence_mut().unwrap();
        for var in env.iter_mut() {
            let name = var["name"].as_str().unwrap().to_owned();
            if let Some(value) = env_value(&base["spec"]["template"]["spec"]["containers"][0], &name) {
                if name.starts_with("OTEL_EXPORTER_OTLP_") {
                    var["value"] = Value::from(value);
                }
            }
        }
        assert_eq!(pod, comparable_pod(base), "{overlay} differs from the base beyond the OTLP endpoint");
        assert_eq!(by_name(overlay)["metadata"], base["metadata"], "{overlay}");
    }
    // Values reach the pod: image, extra args after the metrics address,
    // resources; and labels select the pods.
    let custom = all.iter().find(|r| r.name == "helm with values").unwrap().daemonset();
    let c = &custom["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], Value::from(format!("registry.example.com/obs/waggle:{}", workspace_version())));
    assert_eq!(strings(&c["args"]), ["--metrics-addr", "0.0.0.0:9464", "--log-level", "debug"]);
    assert_eq!(c["resources"]["limits"]["memory"], Value::from("512Mi"));
    assert_eq!(custom["metadata"]["name"], Value::from("tracing-waggle"));
    assert_eq!(custom["metadata"]["namespace"], Value::from("observability"));
    for ds in [base, chart, custom] {
        let selector = ds["spec"]["selector"]["matchLabels"].as_mapping().unwrap();
        let labels = ds["spec"]["template"]["metadata"]["labels"].as_mapping().unwrap();
        for (k, v) in selector {
            assert_eq!(labels.get(k), Some(v), "pod labels match the selector");
        }
    }
}

#[test]
#[ignore = "needs kubectl and helm (npm) and the agent binary: cargo xtask test runs it"]
fn every_renderings_arguments_and_environment_are_valid_agent_config() {
    for r in renderings() {
        let container = &r.daemonset()["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = strings(&container["args"]);
        let mut cmd = Command::new(agent_bin());
        // The kubelet sets KUBERNETES_SERVICE_HOST in every pod: metadata on.
        cmd.args(&args).arg("--check-config").env_clear().env("KUBERNETES_SERVICE_HOST", "10.96.0.1");
        for var in container["env"].as_sequence().unwrap() {
            let name = var["name"].as_str().unwrap();
            // Values from the downward API and $(VAR) references are filled in by
            // the kubelet; a plausible value stands in for them here.
            let value = var["value"].as_str().unwrap_or("node-1").replace("$(NODE_NAME)", "node-1");
            cmd.env(name, value);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {}{}", r.name, stdout, String::from_utf8_lossy(&out.stderr));
        let (endpoint, protocol) = r.otlp;
        let expected = match protocol {
            "grpc" => format!("otlp: {endpoint} ({protocol})"),
            _ => format!("otlp: {endpoint}/v1/traces ({protocol})"),
        };
        assert!(stdout.contains(&expected), "{}: no {expected:?} in\n{stdout}", r.name);
        assert!(stdout.contains("metrics_addr: 0.0.0.0:9464"), "{}: {stdout}", r.name);
        assert!(stdout.contains("resource attribute: k8s.node.name=node-1"), "{}: {stdout}", r.name);
        assert!(stdout.contains("kubernetes metadata: InCluster, node node-1,"), "{}: {stdout}", r.name);
    }
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
