//! What the Kubernetes API says about a pod on this node, as far as naming
//! spans and choosing what is traced care. Filled by the metadata watch
//! (`discovery/`), read by resource building and the trace-selection rules;
//! keyed by the pod uid that a process's cgroup names.
use std::collections::BTreeMap;

/// The workload that owns a pod, resolved through its owner chain
/// (ReplicaSet → Deployment, Job → CronJob).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
}

impl WorkloadKind {
    /// The OTel resource attribute naming a workload of this kind
    /// (`k8s.deployment.name`, ...).
    pub fn name_attribute(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "k8s.deployment.name",
            WorkloadKind::ReplicaSet => "k8s.replicaset.name",
            WorkloadKind::StatefulSet => "k8s.statefulset.name",
            WorkloadKind::DaemonSet => "k8s.daemonset.name",
            WorkloadKind::Job => "k8s.job.name",
            WorkloadKind::CronJob => "k8s.cronjob.name",
        }
    }
}

/// One pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Runtime container id (without the `containerd://` scheme) → the
    /// container's name in the pod spec.
    pub containers: BTreeMap<String, String>,
    /// Every workload up the owner chain, nearest first (a Deployment's pod:
    /// its ReplicaSet, then the Deployment).
    pub owners: Vec<Workload>,
}

/// Looks pods up by uid. The metadata watch implements it; a cluster-less
/// agent has none, and every lookup must be cheap and never block.
pub trait PodDirectory: Send + Sync {
    fn pod(&self, uid: &str) -> Option<std::sync::Arc<PodFacts>>;
}
