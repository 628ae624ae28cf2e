//! Kubernetes metadata for the pods of this node, from the API server
//! through kube-rs: a watch of this node's pods and of the cluster's
//! ReplicaSets (`watch`) fills a bounded [`PodStore`] (`store`) from the
//! objects reduced to what naming spans needs (`facts`). Resource building
//! reads the store through [`crate::model::PodDirectory`], keyed by the pod
//! uid that a process's cgroup names.
//!
//! The RBAC the manifests grant is get/list/watch on pods, replicasets and
//! nodes, nothing else: a ReplicaSet's Deployment is read from the
//! ReplicaSet, a Job's CronJob from the Job's name (see `facts`).
//!
//! Starting never waits for the API server: a client is built from the
//! in-cluster service account or a kubeconfig file (local reads only) and
//! the watches run on their own tasks, retrying with backoff.
mod facts;
mod store;
mod watch;

#[cfg(test)]
mod tests;

use std::{path::PathBuf, sync::Arc};

pub use facts::{cronjob_of_job, owner_chain, pod_record, PodRecord};
pub use store::{PodStore, MAX_PODS, MAX_REPLICASETS};

use crate::{config::KubeSource, metrics::Metrics};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("in-cluster Kubernetes config: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("Kubernetes config: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Builds the client and starts the watches; returns the store they fill.
/// Must run inside the tokio runtime. An error (no service account, an
/// unreadable kubeconfig) means no metadata; the caller logs it and goes on.
pub async fn start(source: &KubeSource, node_name: &str, metrics: Arc<Metrics>) -> Result<Arc<PodStore>, KubeError> {
    let config = match source {
        KubeSource::InCluster => kube::Config::incluster()?,
        KubeSource::Kubeconfig(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|source| KubeError::Kubeconfig { path: path.clone(), source })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig { path: path.clone(), source })?
        }
        KubeSource::Infer => kube::Config::infer().await?,
    };
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)?;
    let store = Arc::new(PodStore::new(Arc::clone(&metrics)));
    watch::spawn_watches(client, node_name, Arc::clone(&store), metrics);
    tracing::info!(%server, node = node_name, "watching this node's pods and the cluster's ReplicaSets for Kubernetes metadata");
    Ok(store)
}
