//! Who a span is from on a Kubernetes node: processes started in real
//! cgroups shaped like each container runtime's layout get that
//! container's `container.id` and their pod's `k8s.pod.uid`, and a process
//! cannot claim another container or host through its own
//! `OTEL_RESOURCE_ATTRIBUTES`.
//!
//! The cgroups are made in this machine's cgroup v2 hierarchy under a
//! `waggle-e2e-<pid>` parent (kubelet's `--cgroup-root` nests the same way)
//! and removed at the end; no runtime or kubelet is involved, only the paths
//! they create.
//!
//! Kubernetes metadata: the agent's real kube client watches the test API
//! endpoint (`waggle_e2e::kube_api`, real list/watch JSON over loopback
//! HTTP, through a kubeconfig); spans carry the pod's attributes and service
//! name, and keep coming when the API server goes away.
use waggle_e2e::{
    cgroups::{container_id, Cgroups},
    curl, describe, e2e_setup,
    env::free_port,
    kube_api::{replicaset_json, Collection, KubeApi, PodSpec},
    scrape::{counter, sample, scrape_until},
    server_spans, Agent, OtlpReceiver, Protocol, Server, Span, SPAN_TIMEOUT,
};

const POD_UID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-90a1b2c3d4e5";

#[test]
#[ignore = "needs root, cgroup v2 and the agent binary: cargo xtask test runs it"]
fn processes_in_runtime_shaped_cgroups_get_their_container_and_pod() {
    let _guard = e2e_setup("processes_in_runtime_shaped_cgroups_get_their_container_and_pod");
    let systemd_uid = POD_UID.replace('-', "_");
    // (runtime and cgroup driver, path, container.id, k8s.pod.uid)
    let layouts = [
        (
            "containerd, systemd driver",
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid}.slice/cri-containerd-{}.scope",
                container_id(1)
            ),
            container_id(1),
            Some(POD_UID),
        ),
        (
            "CRI-O, systemd driver",
            format!("kubepods.slice/kubepods-pod{systemd_uid}.slice/crio-{}.scope", container_id(2)),
            container_id(2),
            Some(POD_UID),
        ),
        (
            "containerd, cgroupfs driver",
            format!("kubepods/besteffort/pod{POD_UID}/{}", container_id(3)),
            container_id(3),
            Some(POD_UID),
        ),
        ("docker", format!("system.slice/docker-{}.scope", container_id(4)), container_id(4), None),
    ];
    let cgroups = Cgroups::new();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);
    // The docker one also claims another container, pod and host.
    let forged = [("OTEL_RESOURCE_ATTRIBUTES", "container.id=forged,k8s.pod.uid=forged,host.name=forged,team=web")];
    let servers: Vec<Server> = layouts
        .iter()
        .enumerate()
        .map(|(i, (_, path, _, _))| {
            let env: &[(&str, &str)] = if i == 3 { &forged } else { &[] };
            Server::python_http_server_in_cgroup(&cgroups.make(path), env)
        })
        .collect();
    for server in &servers {
        curl(&[&server.url("/")]).assert_success();
    }
    let pids: Vec<u32> = servers.iter().map(Server::pid).collect();
    receiver.focus(&pids);
    let spans = receiver.expect_spans("a SERVER span from each server", SPAN_TIMEOUT, |spans| {
        pids.iter().all(|&p| !server_spans(spans, p).is_empty())
    });
    for ((what, path, container, pod), server) in layouts.iter().zip(&servers) {
        let ours: Vec<Span> = server_spans(&spans, server.pid());
        let span = &ours[0];
        let ctx = format!("{what} ({path})\n{}", describe(&ours));
        // The process is where the test put it: the assertion is on the agent.
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", server.pid())).unwrap_or_default();
        assert!(cgroup.contains(path.as_str()), "{ctx}\n/proc/<pid>/cgroup:\n{cgroup}");
        assert_eq!(span.resource_str("container.id"), Some(container.as_str()), "container.id, {ctx}");
        assert_eq!(span.resource_str("k8s.pod.uid"), *pod, "k8s.pod.uid, {ctx}");
    }
    let docker = &server_spans(&spans, servers[3].pid())[0];
    assert_eq!(docker.resource_str("team"), Some("web"), "the process's own attributes still count");
    assert_ne!(docker.resource_str("host.name"), Some("forged"), "but not over the node's host.name");
    drop(servers);
    agent.stop();
}

#[test]
#[ignore = "needs root, cgroup v2 and the agent binary: cargo xtask test runs it"]
fn spans_carry_kubernetes_metadata_and_keep_coming_without_the_api_server() {
    let _guard = e2e_setup("spans_carry_kubernetes_metadata_and_keep_coming_without_the_api_server");
    const NODE: &str = "e2e-node";
    const WEB_UID: &str = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9";
    const DB_UID: &str = "1c2d3e4f-5061-4728-93a4-b5c6d7e8f901";
    let (web_container, db_container) = (container_id(5), container_id(6));
    let mut api = KubeApi::start();
    api.put(
        Collection::Pods,
        PodSpec {
            name: "web-5d8f7c9b4-x2x7q",
            namespace: "shop",
            uid: WEB_UID,
            node: NODE,
            labels: &[("app.kubernetes.io/name", "storefront"), ("app.kubernetes.io/version", "1.4.2")],
            annotations: &[("resource.opentelemetry.io/service.name", "checkout")],
            owner: Some(("ReplicaSet", "web-5d8f7c9b4")),
            containers: &[("istio-proxy", "ee".repeat(32).as_str()), ("app", web_container.as_str())],
        }
        .to_json(),
    );
    api.put(Collection::ReplicaSets, replicaset_json("web-5d8f7c9b4", "shop", "web"));
    api.put(
        Collection::Pods,
        PodSpec {
            name: "ledger-0",
            namespace: "bank",
            uid: DB_UID,
            node: NODE,
            labels: &[("app.kubernetes.io/name", "ledger")],
            annotations: &[],
            owner: Some(("StatefulSet", "ledger")),
            containers: &[("db", db_container.as_str())],
        }
        .to_json(),
    );
    let kube_dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = api.kubeconfig(kube_dir.path());

    let cgroups = Cgroups::new();
    let receiver = OtlpReceiver::start();
    let metrics_port = free_port();
    let mut args = receiver.agent_args(Protocol::Grpc);
    args.extend(
        [
            "--kube-config",
            kubeconfig.to_str().expect("utf-8 path"),
            "--node-name",
            NODE,
            "--cluster-name",
            "e2e",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
        ]
        .map(str::to_owned),
    );
    let agent = Agent::start(&args, &[]);
    scrape_until(metrics_port, "both pods known", |body| sample(body, "waggle_kube_pods_known") == Some(2));

    let web_path = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{web_container}.scope",
        WEB_UID.replace('-', "_")
    );
    let db_path = format!("kubepods/besteffort/pod{DB_UID}/{db_container}");
    let web = Server::python_http_server_in_cgroup(&cgroups.make(&web_path), &[]);
    let db = Server::python_http_server_in_cgroup(&cgroups.make(&db_path), &[]);
    for server in [&web, &db] {
        curl(&[&server.url("/")]).assert_success();
    }
    receiver.focus(&[web.pid(), db.pid()]);
    let spans = receiver.expect_spans("a SERVER span from each pod's server", SPAN_TIMEOUT, |spans| {
        !server_spans(spans, web.pid()).is_empty() && !server_spans(spans, db.pid()).is_empty()
    });
    let web_span = &server_spans(&spans, web.pid())[0];
    let ctx = describe(&server_spans(&spans, web.pid()));
    assert_eq!(web_span.service_name, "checkout", "the annotation names the service: {ctx}");
    for (key, value) in [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "web-5d8f7c9b4-x2x7q"),
        ("k8s.pod.uid", WEB_UID),
        ("k8s.container.name", "app"),
        ("k8s.node.name", NODE),
        ("k8s.replicaset.name", "web-5d8f7c9b4"),
        ("k8s.deployment.name", "web"),
        ("k8s.cluster.name", "e2e"),
        ("container.id", web_container.as_str()),
        ("service.namespace", "shop"),
        ("service.version", "1.4.2"),
    ] {
        assert_eq!(web_span.resource_str(key), Some(value), "{key}: {ctx}");
    }
    let db_span = &server_spans(&spans, db.pid())[0];
    let ctx = describe(&server_spans(&spans, db.pid()));
    assert_eq!(db_span.service_name, "ledger", "the app.kubernetes.io/name label: {ctx}");
    assert_eq!(db_span.resource_str("k8s.statefulset.name"), Some("ledger"), "{ctx}");
    assert_eq!(db_span.resource_str("k8s.container.name"), Some("db"), "{ctx}");
    assert_eq!(db_span.resource_str("k8s.deployment.name"), None, "{ctx}");

    // A pod the API server tells about only after its process's first span:
    // that span has the cgroup's identity only; once the pod arrives, the
    // cached resource is built again and later spans carry the metadata.
    const LATE_UID: &str = "2d3e4f50-6172-4839-a4b5-c6d7e8f90123";
    let late_container = container_id(7);
    let late = Server::python_http_server_in_cgroup(
        &cgroups.make(&format!("kubepods/besteffort/pod{LATE_UID}/{late_container}")),
        &[],
    );
    curl(&[&late.url("/early")]).assert_success();
    receiver.focus(&[late.pid()]);
    let spans =
        receiver.expect_spans("the late pod's first span", SPAN_TIMEOUT, |s| !server_spans(s, late.pid()).is_empty());
    let early = &server_spans(&spans, late.pid())[0];
    assert_eq!(early.resource_str("k8s.pod.uid"), Some(LATE_UID), "{}", describe(std::slice::from_ref(early)));
    assert_eq!(early.resource_str("k8s.pod.name"), None, "not known yet: {}", describe(std::slice::from_ref(early)));
    let late_pod = PodSpec {
        name: "late-0",
        namespace: "shop",
        uid: LATE_UID,
        node: NODE,
        labels: &[],
        annotations: &[],
        owner: Some(("DaemonSet", "late")),
        containers: &[("main", late_container.as_str())],
    };
    api.put(Collection::Pods, late_pod.to_json());
    scrape_until(metrics_port, "the late pod known", |body| sample(body, "waggle_kube_pods_known") == Some(3));
    // Each request is a chance for the once-a-second revalidation.
    let deadline = std::time::Instant::now() + SPAN_TIMEOUT;
    let refreshed = loop {
        curl(&[&late.url("/later")]).assert_success();
        let with_metadata = |spans: &[Span]| {
            server_spans(spans, late.pid()).into_iter().find(|s| s.resource_str("k8s.pod.name") == Some("late-0"))
        };
        if let Ok(spans) = receiver.wait_for(std::time::Duration::from_millis(500), |s| with_metadata(s).is_some()) {
            break with_metadata(&spans).expect("just seen");
        }
        assert!(std::time::Instant::now() < deadline, "no span of the late pod with its metadata");
    };
    assert_eq!(
        refreshed.service_name,
        "late",
        "the DaemonSet names it: {}",
        describe(std::slice::from_ref(&refreshed))
    );
    assert_eq!(refreshed.resource_str("k8s.container.name"), Some("main"));
    let body = scrape_until(metrics_port, "the rebuild counted", |b| counter(b, "resources_rebuilt_for_pod") >= 1);
    assert!(counter(&body, "resources_rebuilt_for_pod") >= 1);
    drop(late);
    receiver.focus(&[web.pid(), db.pid()]);

    // The API server goes away: connections are refused from now on. Every
    // request still makes a span, with the metadata known before.
    api.stop();
    scrape_until(metrics_port, "the watch failing", |body| counter(body, "kube_watch_errors") >= 2);
    let before = server_spans(&receiver.spans(), web.pid()).len();
    const REQUESTS: usize = 20;
    for i in 0..REQUESTS {
        curl(&[&web.url(&format!("/after-{i}"))]).assert_success();
    }
    let spans = receiver.expect_spans("a span for every request made without the API server", SPAN_TIMEOUT, |spans| {
        server_spans(spans, web.pid()).len() >= before + REQUESTS
    });
    let after: Vec<Span> = server_spans(&spans, web.pid())
        .into_iter()
        .filter(|s| s.attr_str("url.path").is_some_and(|p| p.starts_with("/after-")))
        .collect();
    assert_eq!(after.len(), REQUESTS, "none lost, none doubled: {}", describe(&after));
    assert!(
        after.iter().all(|s| s.resource_str("k8s.pod.name") == Some("web-5d8f7c9b4-x2x7q")),
        "{}",
        describe(&after)
    );
    drop((web, db));
    let out = agent.stop();
    assert!(out.counter("kube_watch_errors") >= 2, "{}", out.stderr);
    assert_eq!(out.counter("spans_dropped_queue_full"), 0);
}
