//! A process's pod, as the Kubernetes API describes it, in its resource:
//! the OTel k8s semantic-convention attributes and the pod's say in the
//! service name.
//!
//! `service.name` precedence, highest first: the process's
//! OTEL_SERVICE_NAME; `service.name` in its OTEL_RESOURCE_ATTRIBUTES (both
//! are the application naming itself); the pod annotation
//! `resource.opentelemetry.io/service.name`; the pod label
//! `app.kubernetes.io/name`; the owning workload's name (the top of the
//! owner chain: the Deployment rather than its ReplicaSet, the CronJob
//! rather than its Job); then the executable rules (`service_name`).
//!
//! Attributes: `k8s.node.name` and `k8s.cluster.name` (configured) on every
//! resource while metadata is on; for a process whose pod is known,
//! `k8s.namespace.name`, `k8s.pod.name`, `k8s.container.name` (the
//! container whose runtime id the cgroup names) and one
//! `k8s.<kind>.name` per owner. These are facts the agent read from the
//! node and the API server: a process's own OTEL_RESOURCE_ATTRIBUTES cannot
//! replace them. `service.namespace` (the namespace) and `service.version`
//! (label `app.kubernetes.io/version`) describe the service instead, so
//! the process's own values win over them.
use std::{collections::BTreeMap, sync::Arc};

use crate::model::{PodDirectory, PodFacts};

pub const ANNOTATION_SERVICE_NAME: &str = "resource.opentelemetry.io/service.name";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_VERSION: &str = "app.kubernetes.io/version";

/// What resource building knows of the cluster: the pods, and this node.
#[derive(Clone)]
pub struct PodContext {
    pub directory: Arc<dyn PodDirectory>,
    pub node_name: String,
    pub cluster_name: Option<String>,
}

/// The pod a resource was built with, kept beside it in the cache so the
/// resolver can tell when the pod's metadata arrived or changed since.
#[derive(Debug)]
pub(super) struct PodSeen {
    pub(super) uid: String,
    pub(super) facts: Option<Arc<PodFacts>>,
}

impl PodSeen {
    /// The directory holds something else for this pod now (it appeared,
    /// changed or went).
    pub(super) fn is_stale(&self, directory: &dyn PodDirectory) -> bool {
        match (directory.pod(&self.uid), &self.facts) {
            (None, None) => false,
            (Some(now), Some(then)) => !Arc::ptr_eq(&now, then),
            _ => true,
        }
    }
}

/// Attributes the pod's metadata decides, over the process's own.
pub(super) fn fact_attributes(
    context: &PodContext,
    pod: Option<&PodFacts>,
    container_id: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut attrs = vec![("k8s.node.name", context.node_name.clone())];
    if let Some(cluster) = &context.cluster_name {
        attrs.push(("k8s.cluster.name", cluster.clone()));
    }
    let Some(pod) = pod else { return attrs };
    attrs.push(("k8s.namespace.name", pod.namespace.clone()));
    attrs.push(("k8s.pod.name", pod.name.clone()));
    if let Some(name) = container_id.and_then(|id| pod.containers.get(id)) {
        attrs.push(("k8s.container.name", name.clone()));
    }
    for owner in &pod.owners {
        attrs.push((owner.kind.name_attribute(), owner.name.clone()));
    }
    attrs
}

/// Attributes the pod suggests, under the process's own.
pub(super) fn service_attributes(pod: &PodFacts, attrs: &mut BTreeMap<String, String>) {
    if !pod.namespace.is_empty() {
        attrs.insert("service.namespace".into(), pod.namespace.clone());
    }
    if let Some(version) = pod.labels.get(LABEL_VERSION).filter(|v| !v.is_empty()) {
        attrs.insert("service.version".into(), version.clone());
    }
}

/// The pod's choice of service name, below the process's own.
pub(super) fn pod_service_name(pod: &PodFacts) -> Option<String> {
    let nonempty = |v: &String| !v.trim().is_empty();
    pod.annotations
        .get(ANNOTATION_SERVICE_NAME)
        .filter(|v| nonempty(v))
        .or_else(|| pod.labels.get(LABEL_NAME).filter(|v| nonempty(v)))
        .or_else(|| pod.owners.last().map(|w| &w.name))
        .map(|v| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{super::process_facts::ProcessFacts, super::resource::ResourceBuilder, *};
    use crate::model::{ProcessResource, Workload, WorkloadKind};

    struct Pods(HashMap<String, Arc<PodFacts>>);

    impl PodDirectory for Pods {
        fn pod(&self, uid: &str) -> Option<Arc<PodFacts>> {
            self.0.get(uid).cloned()
        }
    }

    const CONTAINER: &str = "c0ffee";

    fn web_pod() -> PodFacts {
        PodFacts {
            uid: "uid-1".into(),
            namespace: "shop".into(),
            name: "web-5d8f7c9b4-x2x7q".into(),
            labels: [(LABEL_NAME.into(), "storefront".into()), (LABEL_VERSION.into(), "1.4.2".into())].into(),
            annotations: [(ANNOTATION_SERVICE_NAME.into(), "checkout".into())].into(),
            containers: [(CONTAINER.into(), "app".into())].into(),
            owners: vec![
                Workload { kind: WorkloadKind::ReplicaSet, name: "web-5d8f7c9b4".into() },
                Workload { kind: WorkloadKind::Deployment, name: "web".into() },
            ],
        }
    }

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
        let forged = "k8s.pod.name=forged,k8s.namespace.name=forged,k8s.node.name=forged,service.version=9,team=web";
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
        let named = |pod: PodFacts, env: Option<&str>, attrs: Option<&str>| build(Some(pod), facts(env, attrs)).service_name;
        assert_eq!(named(web_pod(), Some("from-env"), Some("service.name=from-attrs")), "from-env");
        assert_eq!(named(web_pod(), None, Some("service.name=from-attrs")), "from-attrs");
        assert_eq!(named(web_pod(), None, None), "checkout", "the annotation");
        let mut pod = web_pod();
        pod.annotations.clear();
        assert_eq!(named(pod.clone(), None, None), "storefront", "the app.kubernetes.io/name label");
        pod.labels.remove(LABEL_NAME);
        assert_eq!(named(pod.clone(), None, None), "web", "the owning workload: the Deployment, not its ReplicaSet");
        pod.owners.clear();
        assert_eq!(named(pod, None, None), "http.server", "then the executable rules");
    }

    #[test]
    fn a_changed_pod_makes_what_was_built_stale() {
        let first = Arc::new(web_pod());
        let pods = Pods([("uid-1".to_owned(), first.clone())].into());
        let seen = PodSeen { uid: "uid-1".into(), facts: Some(first) };
        assert!(!seen.is_stale(&pods));
        let before = PodSeen { uid: "uid-1".into(), facts: None };
        assert!(before.is_stale(&pods), "metadata arrived after the resource was built");
        let changed = Pods([("uid-1".to_owned(), Arc::new(web_pod()))].into());
        assert!(seen.is_stale(&changed), "another Arc: the pod changed");
        assert!(seen.is_stale(&Pods(HashMap::new())), "the pod went");
    }
}
