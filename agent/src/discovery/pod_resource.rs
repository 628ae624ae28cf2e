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
pub(super) mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::{Workload, WorkloadKind};

    /// A directory of fixed pods.
    pub(in crate::discovery) struct Pods(pub(in crate::discovery) HashMap<String, Arc<PodFacts>>);

    impl PodDirectory for Pods {
        fn pod(&self, uid: &str) -> Option<Arc<PodFacts>> {
            self.0.get(uid).cloned()
        }
    }

    pub(in crate::discovery) const CONTAINER: &str = "c0ffee";

    pub(in crate::discovery) fn web_pod() -> PodFacts {
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
