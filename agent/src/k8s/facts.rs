//! What the agent keeps of the API server's Pod and ReplicaSet objects:
//! [`PodFacts`] (labels, annotations, container names by runtime id, the
//! owner chain) and, per ReplicaSet, the Deployment owning it.
//!
//! The owner chain is resolved from what the ClusterRole may read (pods,
//! replicasets, nodes): a ReplicaSet's owner comes from the ReplicaSet
//! itself; a Job's CronJob cannot be read (jobs are not in the role), so it
//! comes from the name the CronJob controller gives its Jobs:
//! `<cronjob>-<scheduled time in minutes since the epoch>` (8 or more digits
//! today; a hand-made Job named `migrate-2` is not mistaken for one).
use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::OwnerReference};

use crate::model::{PodFacts, Workload, WorkloadKind};

/// Fewest digits after the last `-` of a Job name for it to be read as a
/// CronJob's (minutes since 1970 have had 8 digits since 1979).
const CRONJOB_SUFFIX_MIN_DIGITS: usize = 8;
/// Labels/annotations kept per pod at most, and the longest value kept:
/// the store's memory stays bounded however a pod is annotated
/// (`kubectl.kubernetes.io/last-applied-configuration` can be large).
const MAX_PAIRS: usize = 64;
const MAX_VALUE_BYTES: usize = 1024;

/// A pod as the API server sent it, reduced to what is kept; its owner chain
/// is completed by the store (`with_owners`) because a ReplicaSet may arrive
/// after its pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    pub facts: PodFacts,
    /// The controlling owner reference (kind, name), if any.
    pub controller: Option<(String, String)>,
}

/// Reduces a Pod; None for a pod without a uid (never sent by a real API
/// server, whose objects always carry one).
pub fn pod_record(pod: &Pod) -> Option<PodRecord> {
    let meta = &pod.metadata;
    let uid = meta.uid.clone().filter(|u| !u.is_empty())?;
    let mut containers = BTreeMap::new();
    if let Some(status) = &pod.status {
        let all = [&status.init_container_statuses, &status.container_statuses, &status.ephemeral_container_statuses];
        for statuses in all.into_iter().flatten() {
            for status in statuses {
                if let Some(id) = status.container_id.as_deref().and_then(strip_runtime_scheme) {
                    containers.insert(id.to_owned(), status.name.clone());
                }
            }
        }
    }
    let facts = PodFacts {
        uid,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        labels: bounded(meta.labels.as_ref()),
        annotations: bounded(meta.annotations.as_ref()),
        containers,
        owners: Vec::new(),
    };
    Some(PodRecord { facts, controller: controller_of(meta.owner_references.as_deref()) })
}

/// `containerd://abc` → `abc` (also `cri-o://`, `docker://`); the cgroup path
/// names the bare id.
fn strip_runtime_scheme(id: &str) -> Option<&str> {
    let bare = id.split_once("://").map_or(id, |(_, rest)| rest);
    (!bare.is_empty()).then_some(bare)
}

fn bounded(map: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    map.into_iter()
        .flatten()
        .filter(|(_, v)| v.len() <= MAX_VALUE_BYTES)
        .take(MAX_PAIRS)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn controller_of(refs: Option<&[OwnerReference]>) -> Option<(String, String)> {
    let refs = refs?;
    // The controller reference when one is marked, else the first.
    let owner = refs.iter().find(|r| r.controller == Some(true)).or_else(|| refs.first())?;
    Some((owner.kind.clone(), owner.name.clone()))
}

/// The Deployment owning a ReplicaSet (given its owner references), if any.
pub fn replicaset_deployment(refs: Option<&[OwnerReference]>) -> Option<String> {
    controller_of(refs).filter(|(kind, _)| kind == "Deployment").map(|(_, name)| name)
}

/// The owner chain of a pod whose controller is `controller`, nearest first.
/// `deployment_of` answers for a ReplicaSet of the pod's namespace: None
/// when the ReplicaSet is unknown or not a Deployment's.
pub fn owner_chain(
    controller: Option<&(String, String)>,
    deployment_of: impl Fn(&str) -> Option<String>,
) -> Vec<Workload> {
    let Some((kind, name)) = controller else { return Vec::new() };
    let workload = |kind, name: &str| Workload { kind, name: name.to_owned() };
    match kind.as_str() {
        "ReplicaSet" => {
            let mut chain = vec![workload(WorkloadKind::ReplicaSet, name)];
            if let Some(deployment) = deployment_of(name) {
                chain.push(workload(WorkloadKind::Deployment, &deployment));
            }
            chain
        }
        "StatefulSet" => vec![workload(WorkloadKind::StatefulSet, name)],
        "DaemonSet" => vec![workload(WorkloadKind::DaemonSet, name)],
        "Job" => {
            let mut chain = vec![workload(WorkloadKind::Job, name)];
            if let Some(cronjob) = cronjob_of_job(name) {
                chain.push(workload(WorkloadKind::CronJob, cronjob));
            }
            chain
        }
        // Bare pods, static pods (owned by the Node) and custom controllers.
        _ => Vec::new(),
    }
}

/// `nightly-report-29312640` → `nightly-report`.
pub fn cronjob_of_job(job: &str) -> Option<&str> {
    let (base, suffix) = job.rsplit_once('-')?;
    let digits = suffix.len() >= CRONJOB_SUFFIX_MIN_DIGITS && suffix.bytes().all(|b| b.is_ascii_digit());
    (digits && !base.is_empty()).then_some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs_deployment(rs: &str) -> Option<String> {
        (rs == "web-7d4b9c").then(|| "web".to_owned())
    }

    fn chain(kind: &str, name: &str) -> Vec<(WorkloadKind, &'static str)> {
        owner_chain(Some(&(kind.to_owned(), name.to_owned())), rs_deployment)
            .into_iter()
            .map(|w| (w.kind, &*w.name.leak()))
            .collect()
    }

    #[test]
    fn owner_chains() {
        use WorkloadKind::*;
        assert_eq!(chain("ReplicaSet", "web-7d4b9c"), [(ReplicaSet, "web-7d4b9c"), (Deployment, "web")]);
        assert_eq!(chain("ReplicaSet", "orphan-rs"), [(ReplicaSet, "orphan-rs")], "unknown ReplicaSet");
        assert_eq!(chain("StatefulSet", "db"), [(StatefulSet, "db")]);
        assert_eq!(chain("DaemonSet", "agent"), [(DaemonSet, "agent")]);
        assert_eq!(chain("Job", "report-29312640"), [(Job, "report-29312640"), (CronJob, "report")]);
        assert_eq!(chain("Job", "migrate-2"), [(Job, "migrate-2")], "too few digits for a CronJob's");
        assert!(chain("Node", "node-1").is_empty(), "a static pod");
        assert!(owner_chain(None, rs_deployment).is_empty());
        assert_eq!(cronjob_of_job("a-b-12345678"), Some("a-b"));
        assert_eq!(cronjob_of_job("-12345678"), None);
        assert_eq!(cronjob_of_job("x-1234567a"), None);
    }

    #[test]
    fn pod_records_keep_container_ids_without_scheme_and_bound_values() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-7d4b9c-xk2p9", "namespace": "shop", "uid": "u-1",
                "labels": {"app.kubernetes.io/name": "storefront"},
                "annotations": {"big": "x".repeat(MAX_VALUE_BYTES + 1), "small": "y"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Other", "name": "not-it", "uid": "o-0"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c", "uid": "o-1", "controller": true}
                ]
            },
            "status": {
                "containerStatuses": [
                    {"name": "app", "containerID": "containerd://abc123", "image": "i", "imageID": "", "ready": true, "restartCount": 0},
                    {"name": "waiting", "image": "i", "imageID": "", "ready": false, "restartCount": 0}
                ],
                "initContainerStatuses": [
                    {"name": "init", "containerID": "cri-o://def456", "image": "i", "imageID": "", "ready": false, "restartCount": 0}
                ]
            }
        }))
        .unwrap();
        let record = pod_record(&pod).unwrap();
        assert_eq!(record.controller, Some(("ReplicaSet".into(), "web-7d4b9c".into())));
        let f = &record.facts;
        assert_eq!((f.uid.as_str(), f.namespace.as_str(), f.name.as_str()), ("u-1", "shop", "web-7d4b9c-xk2p9"));
        assert_eq!(f.containers.get("abc123").map(String::as_str), Some("app"));
        assert_eq!(f.containers.get("def456").map(String::as_str), Some("init"));
        assert_eq!(f.containers.len(), 2, "a container not started yet has no id");
        assert_eq!(f.annotations.keys().collect::<Vec<_>>(), ["small"], "oversized values are not kept");
        assert!(pod_record(&Pod::default()).is_none(), "no uid");
    }
}
