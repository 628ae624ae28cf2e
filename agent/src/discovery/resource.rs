//! How one process's resource (service name and attributes) is built from
//! /proc (see the module docs of `discovery` for attribute precedence). The
//! reads run on the resolver's worker thread (`resource_cache`), never on
//! the event loop.
use std::{collections::BTreeMap, sync::Arc};

use super::{
    exec_env::{exec_env_of, ticks_to_ns, Lineage, SharedExecEnv},
    pod_resource::{fact_attributes, pod_service_name, service_attributes, PodContext, PodSeen},
    process_facts::{read_host_name, ProcessFacts},
    service_name::{basename, command_of, derive_service_name, Runtime},
};
use crate::model::{parse_resource_attributes_lossy, truncate_utf8, ProcessResource};

/// Attributes taken from one process's OTEL_RESOURCE_ATTRIBUTES.
const MAX_PROCESS_ATTRIBUTES: usize = 64;
/// Longest service name / attribute value kept (bytes, cut on a char boundary).
const MAX_VALUE_LEN: usize = 1024;
const MAX_SERVICE_NAME_LEN: usize = 256;

pub const ATTR_HOST_NAME: &str = "host.name";
pub const ATTR_EXECUTABLE_PATH: &str = "process.executable.path";
pub const ATTR_COMMAND: &str = "process.command";
pub const ATTR_RUNTIME_NAME: &str = "process.runtime.name";
pub const ATTR_CONTAINER_ID: &str = "container.id";
pub const ATTR_K8S_POD_UID: &str = "k8s.pod.uid";
/// What the agent knows of a process from the node and the kernel; the
/// process's own OTEL_RESOURCE_ATTRIBUTES cannot replace these (a workload
/// claiming another's container or host would misattribute its spans).
const NODE_ATTRIBUTES: [&str; 4] = [ATTR_HOST_NAME, ATTR_CONTAINER_ID, ATTR_K8S_POD_UID, "k8s.node.name"];
const ATTR_SERVICE_NAME: &str = "service.name";

/// One resolution: the resource and what it was built from.
pub(super) struct Resolved {
    pub(super) resource: Arc<ProcessResource>,
    /// Process start time (clock ticks since boot); None when unreadable.
    pub(super) start_time: Option<u64>,
    /// The process looked mid-exec (executable but no argv yet): resolve
    /// again shortly.
    pub(super) incomplete: bool,
    /// The pod it was built with (Kubernetes metadata on, process in a pod).
    pub(super) pod: Option<Arc<PodSeen>>,
}

/// Builds process resources; holds no per-process state, so the worker and
/// the event loop's overload fallback share one.
pub struct ResourceBuilder {
    pub host_name: String,
    pub extra_attributes: Vec<(String, String)>,
    agent_tgid: u32,
    pods: Option<PodContext>,
    /// The OTEL_* variables the kernel read at each exec.
    exec_env: Option<SharedExecEnv>,
}

impl ResourceBuilder {
    /// `extra_attributes`: the agent-wide resource attributes (lower
    /// precedence than the process's own; see the module docs).
    /// `agent_tgid`: the agent's own resource is named `waggle` whatever its
    /// command line.
    pub fn new(extra_attributes: Vec<(String, String)>, agent_tgid: u32) -> ResourceBuilder {
        ResourceBuilder { host_name: read_host_name(), extra_attributes, agent_tgid, pods: None, exec_env: None }
    }

    /// Kubernetes metadata: resources of processes in pods get their pod's
    /// attributes and service name (see `pod_resource`).
    pub fn with_pods(mut self, pods: Option<PodContext>) -> ResourceBuilder {
        self.pods = pods;
        self
    }

    /// The OTEL_* variables read at exec time win over /proc/<pid>/environ
    /// (see `exec_env`).
    pub fn with_exec_env(mut self, exec_env: Option<SharedExecEnv>) -> ResourceBuilder {
        self.exec_env = exec_env;
        self
    }

    /// The pod a cached resource was built with has other metadata now.
    pub(super) fn pod_is_stale(&self, seen: &PodSeen) -> bool {
        self.pods.as_ref().is_some_and(|pods| seen.is_stale(pods.directory.as_ref()))
    }

    /// Reads /proc/<pid> and builds its resource. Never fails: a process
    /// already gone is named by `comm` (the kernel's task name, NUL-padded),
    /// else `pid-<pid>`.
    pub(super) fn resolve(&self, pid: u32, comm: &[u8]) -> Resolved {
        let mut facts = match ProcessFacts::read(pid) {
            Ok(facts) => facts,
            Err(e) => {
                tracing::debug!(pid, error = %e, "process unreadable; using a pid-based resource");
                ProcessFacts::default()
            }
        };
        if facts.comm.is_empty() {
            let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
            facts.comm = String::from_utf8_lossy(&comm[..end]).into_owned();
        }
        // What the process was exec'd with beats what its environ area
        // shows now: servers write their titles over it.
        if let (Some(table), Some(start), Some(ppid)) = (&self.exec_env, facts.start_time, facts.ppid) {
            if let Some(env) = exec_env_of(table, pid, Lineage { start_ns: ticks_to_ns(start), ppid }) {
                facts.service_name = env.service_name;
                facts.resource_attributes = env.resource_attributes;
            }
        }
        // Kernel threads have neither exe nor argv; a user process with an
        // executable but no argv is most likely still inside execve.
        let incomplete = facts.exe_path.is_some() && facts.argv.is_empty();
        let start_time = facts.start_time;
        let pod = match (&self.pods, &facts.pod_uid) {
            (Some(pods), Some(uid)) => Some(Arc::new(PodSeen { uid: uid.clone(), facts: pods.directory.pod(uid) })),
            _ => None,
        };
        let resource = self.build(pid, facts, pod.as_ref().and_then(|p| p.facts.as_deref()));
        Resolved { resource: Arc::new(resource), start_time, incomplete, pod }
    }

    pub(super) fn build(
        &self,
        pid: u32,
        mut facts: ProcessFacts,
        pod: Option<&crate::model::PodFacts>,
    ) -> ProcessResource {
        let exe_path = facts.exe_path.as_deref().unwrap_or("");
        let exe_name = basename(exe_path);
        let executable_name = if !exe_name.is_empty() {
            exe_name.to_owned()
        } else if let Some(argv0) = facts.argv.first().map(|a| basename(command_of(a))).filter(|n| !n.is_empty()) {
            argv0.to_owned()
        } else if !facts.comm.is_empty() {
            facts.comm.clone()
        } else {
            format!("pid-{pid}")
        };

        let mut attrs: BTreeMap<String, String> = BTreeMap::new();
        if !self.host_name.is_empty() {
            attrs.insert(ATTR_HOST_NAME.into(), self.host_name.clone());
        }
        if !exe_path.is_empty() {
            attrs.insert(ATTR_EXECUTABLE_PATH.into(), truncate_utf8(exe_path, MAX_VALUE_LEN));
        }
        if let Some(argv0) = facts.argv.first() {
            let command = command_of(argv0);
            if !command.is_empty() {
                attrs.insert(ATTR_COMMAND.into(), truncate_utf8(command, MAX_VALUE_LEN));
            }
        }
        let argv0_name = facts.argv.first().map(|a| basename(command_of(a))).unwrap_or("");
        if let Some(runtime) = Runtime::detect(exe_name, argv0_name) {
            attrs.insert(ATTR_RUNTIME_NAME.into(), runtime.runtime_name(exe_name, argv0_name).into());
        }
        if let Some(id) = &facts.container_id {
            attrs.insert(ATTR_CONTAINER_ID.into(), id.clone());
        }
        if let Some(uid) = facts.pod_uid.take() {
            attrs.insert(ATTR_K8S_POD_UID.into(), uid);
        }
        for (k, v) in &self.extra_attributes {
            attrs.insert(k.clone(), v.clone());
        }
        if let Some(pod) = pod {
            service_attributes(pod, &mut attrs);
        }
        let own = facts
            .resource_attributes
            .as_deref()
            .map(|raw| {
                parse_resource_attributes_lossy(raw, |e| {
                    tracing::debug!(pid, error = %e, "skipping malformed resource attribute");
                })
            })
            .unwrap_or_default();
        let mut own_service_name = None;
        for (k, v) in own.into_iter().take(MAX_PROCESS_ATTRIBUTES) {
            if k == ATTR_SERVICE_NAME {
                own_service_name = Some(v);
            } else if NODE_ATTRIBUTES.contains(&k.as_str()) {
                tracing::debug!(pid, key = %k, "ignoring a process's own value for a node-level resource attribute");
            } else {
                attrs.insert(k, truncate_utf8(&v, MAX_VALUE_LEN));
            }
        }
        if let Some(pods) = &self.pods {
            for (k, v) in fact_attributes(pods, pod, facts.container_id.as_deref()) {
                attrs.insert(k.to_owned(), truncate_utf8(&v, MAX_VALUE_LEN));
            }
        }
        attrs.remove(ATTR_SERVICE_NAME);

        let service_name = if pid == self.agent_tgid && pid != 0 {
            "waggle".to_owned()
        } else {
            let derived = || {
                let name = derive_service_name(exe_name, &facts.argv);
                if !name.is_empty() {
                    name
                } else if !facts.comm.is_empty() {
                    facts.comm.clone()
                } else {
                    format!("pid-{pid}")
                }
            };
            facts
                .service_name
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().to_owned())
                .or(own_service_name.filter(|s| !s.is_empty()))
                .or_else(|| pod.and_then(pod_service_name))
                .unwrap_or_else(derived)
        };

        ProcessResource {
            service_name: truncate_utf8(&service_name, MAX_SERVICE_NAME_LEN),
            pid,
            executable_name: truncate_utf8(&executable_name, MAX_SERVICE_NAME_LEN),
            attributes: attrs.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::test_support::{python, spawn_http_server, spawn_python, wait_exec_done},
        *,
    };

    fn attr<'a>(r: &'a ProcessResource, key: &str) -> Option<&'a str> {
        r.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn resource(builder: &ResourceBuilder, pid: u32) -> Arc<ProcessResource> {
        builder.resolve(pid, &[]).resource
    }

    #[test]
    fn resource_resolved_mid_exec_is_provisional() {
        let mut provisional_seen = 0;
        let builder = ResourceBuilder::new(Vec::new(), 0);
        for _ in 0..10 {
            // Resolve the instant spawn() returns: often before argv exists.
            let child =
                spawn_python(&["-m", "http.server", "0", "--bind", "127.0.0.1"], &[("OTEL_SERVICE_NAME", "early")]);
            let early = builder.resolve(child.pid(), &[]);
            if early.resource.service_name != "early" {
                provisional_seen += 1;
                assert!(early.incomplete, "a resource read before argv must say it is provisional");
            }
            wait_exec_done(&child);
            let done = builder.resolve(child.pid(), &[]);
            assert_eq!(done.resource.service_name, "early");
            assert!(!done.incomplete, "final once argv is known");
        }
        eprintln!("provisional resources seen: {provisional_seen}/10");
    }

    #[test]
    fn resource_of_python_module() {
        let server = spawn_http_server(&[]);
        let builder = ResourceBuilder::new(Vec::new(), std::process::id());
        let r = resource(&builder, server.pid());
        assert_eq!(r.service_name, "http.server");
        assert_eq!(r.pid, server.pid());
        assert!(r.executable_name.starts_with("python"), "{r:?}");
        assert_eq!(attr(&r, ATTR_RUNTIME_NAME), Some("cpython"));
        assert_eq!(attr(&r, ATTR_COMMAND), Some(python()), "argv[0] only");
        assert!(attr(&r, ATTR_EXECUTABLE_PATH).unwrap().ends_with(&r.executable_name));
        assert_eq!(attr(&r, ATTR_HOST_NAME), Some(builder.host_name.as_str()));
        assert!(!builder.host_name.is_empty());
        assert!(r.attributes.iter().all(|(_, v)| !v.contains("http.server")), "no argv beyond argv[0]");
        assert!(r.attributes.windows(2).all(|w| w[0].0 < w[1].0), "sorted by key: {:?}", r.attributes);
        assert!(attr(&r, "service.name").is_none());
    }

    #[test]
    fn resource_honours_process_otel_env() {
        let named = spawn_http_server(&[("OTEL_SERVICE_NAME", "foo")]);
        let attributed = spawn_http_server(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=bar, deployment.environment=prod%20eu,team=own,broken=%zz,host.name=elsewhere,container.id=forged,k8s.pod.uid=forged",
        )]);
        let both = spawn_http_server(&[("OTEL_SERVICE_NAME", "foo"), ("OTEL_RESOURCE_ATTRIBUTES", "service.name=bar")]);
        let extra = vec![
            ("team".to_owned(), "agent".to_owned()),
            ("k8s.cluster.name".to_owned(), "c1".to_owned()),
            ("service.name".to_owned(), "ignored".to_owned()),
        ];
        let builder = ResourceBuilder::new(extra, 0);

        assert_eq!(resource(&builder, named.pid()).service_name, "foo");
        let r = resource(&builder, attributed.pid());
        assert_eq!(r.service_name, "bar");
        assert_eq!(attr(&r, "deployment.environment"), Some("prod eu"));
        assert_eq!(attr(&r, "team"), Some("own"), "the process's own attributes win");
        assert_eq!(attr(&r, ATTR_HOST_NAME), Some(builder.host_name.as_str()), "but not over the node's");
        assert_eq!((attr(&r, ATTR_CONTAINER_ID), attr(&r, ATTR_K8S_POD_UID)), (None, None));
        assert_eq!(attr(&r, "k8s.cluster.name"), Some("c1"));
        assert_eq!(attr(&r, "broken"), None);
        assert_eq!(attr(&r, "service.name"), None);
        assert_eq!(resource(&builder, both.pid()).service_name, "foo");
        // The agent-wide service.name never names a process.
        let plain = spawn_http_server(&[]);
        assert_eq!(resource(&builder, plain.pid()).service_name, "http.server");
    }

    #[test]
    fn resource_of_vanished_process_falls_back() {
        let mut child = spawn_http_server(&[]);
        let pid = child.pid();
        child.child.kill().unwrap();
        child.child.wait().unwrap();
        let builder = ResourceBuilder::new(vec![("a".into(), "b".into())], 0);
        let r = resource(&builder, pid);
        assert_eq!(r.service_name, format!("pid-{pid}"));
        assert_eq!(r.executable_name, format!("pid-{pid}"));
        assert_eq!(attr(&r, "a"), Some("b"));
        // The kernel's task name, when the open event gave one, beats the pid.
        let named = builder.resolve(pid, b"worker\0\0\0\0\0\0\0\0\0\0").resource;
        assert_eq!(named.service_name, "worker");
    }

    #[test]
    fn agent_resource_is_named_waggle() {
        let me = std::process::id();
        let builder = ResourceBuilder::new(Vec::new(), me);
        assert_eq!(resource(&builder, me).service_name, "waggle");
    }

    /// Resources of processes in pods (`pod_resource`), built from
    /// synthetic /proc facts.
    mod pods {
        use std::sync::Arc;

        use crate::discovery::{
            pod_resource::{
                tests::{web_pod, Pods, CONTAINER},
                PodContext, LABEL_NAME,
            },
            process_facts::ProcessFacts,
            ResourceBuilder,
        };
        use crate::model::{PodFacts, ProcessResource};

        fn context(pod: Option<PodFacts>) -> PodContext {
            let pods = pod.into_iter().map(|p| (p.uid.clone(), Arc::new(p))).collect();
            PodContext {
                directory: Arc::new(Pods(pods)),
                node_name: "node-1".into(),
                cluster_name: Some("prod-eu".into()),
            }
        }

        fn facts(service_name: Option<&str>, resource_attributes: Option<&str>) -> ProcessFacts {
            ProcessFacts {
                exe_path: Some("/usr/bin/python3.12".into()),
                argv: vec!["python3".into(), "-m".into(), "http.server".into()],
                container_id: Some(CONTAINER.into()),
                pod_uid: Some("uid-1".into()),
                service_name: service_name.map(Into::into),
                resource_attributes: resource_attributes.map(Into::into),
                ..Default::default()
            }
        }

        fn build(pod: Option<PodFacts>, facts: ProcessFacts) -> ProcessResource {
            let context = context(pod);
            let builder = ResourceBuilder::new(vec![("k8s.cluster.name".into(), "from-env".into())], 0)
                .with_pods(Some(context.clone()));
            let pod = facts.pod_uid.as_deref().and_then(|uid| context.directory.pod(uid));
            builder.build(4242, facts, pod.as_deref())
        }

        fn attr<'a>(r: &'a ProcessResource, key: &str) -> Option<&'a str> {
            r.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
        }

        #[test]
        fn pod_attributes_follow_the_semantic_conventions() {
            let forged =
                "k8s.pod.name=forged,k8s.namespace.name=forged,k8s.node.name=forged,service.version=9,team=web";
            let r = build(Some(web_pod()), facts(None, Some(forged)));
            let expected = [
                ("k8s.namespace.name", "shop"),
                ("k8s.pod.name", "web-5d8f7c9b4-x2x7q"),
                ("k8s.pod.uid", "uid-1"),
                ("k8s.container.name", "app"),
                ("k8s.node.name", "node-1"),
                ("k8s.replicaset.name", "web-5d8f7c9b4"),
                ("k8s.deployment.name", "web"),
                ("k8s.cluster.name", "prod-eu"),
                ("container.id", CONTAINER),
                ("service.namespace", "shop"),
                ("team", "web"),
            ];
            for (key, value) in expected {
                assert_eq!(attr(&r, key), Some(value), "{key} in {:?}", r.attributes);
            }
            assert_eq!(attr(&r, "service.version"), Some("9"), "the process describes its own version");
            let plain = build(Some(web_pod()), facts(None, None));
            assert_eq!(attr(&plain, "service.version"), Some("1.4.2"), "from app.kubernetes.io/version");

            // Pod not (yet) known: node-level attributes only.
            let unknown = build(None, facts(None, None));
            assert_eq!(attr(&unknown, "k8s.node.name"), Some("node-1"));
            assert_eq!(attr(&unknown, "k8s.pod.uid"), Some("uid-1"));
            assert_eq!(attr(&unknown, "k8s.pod.name"), None);
            assert_eq!(unknown.service_name, "http.server", "the executable rules");
        }

        #[test]
        fn service_name_precedence() {
            let named = |pod: PodFacts, env: Option<&str>, attrs: Option<&str>| {
                build(Some(pod), facts(env, attrs)).service_name
            };
            assert_eq!(named(web_pod(), Some("from-env"), Some("service.name=from-attrs")), "from-env");
            assert_eq!(named(web_pod(), None, Some("service.name=from-attrs")), "from-attrs");
            assert_eq!(named(web_pod(), None, None), "checkout", "the annotation");
            let mut pod = web_pod();
            pod.annotations.clear();
            assert_eq!(named(pod.clone(), None, None), "storefront", "the app.kubernetes.io/name label");
            pod.labels.remove(LABEL_NAME);
            assert_eq!(
                named(pod.clone(), None, None),
                "web",
                "the owning workload: the Deployment, not its ReplicaSet"
            );
            pod.owners.clear();
            assert_eq!(named(pod, None, None), "http.server", "then the executable rules");
        }
    }
}
