//! The watches: pods of this node (`spec.nodeName=<node>`) and the
//! cluster's ReplicaSets (metadata only: their owner is all that is kept),
//! each through kube-runtime's watcher on its own task. The watcher lists,
//! then watches from the list's resource version; it follows bookmarks,
//! resumes a watch that ended from the last version seen, re-lists when the
//! API server answers 410 Gone, and backs off (exponentially, up to tens of
//! seconds) while the API server errs or is unreachable. Every error and
//! every re-list after the first is counted.
//!
//! Nothing here is awaited by capture or export: the tasks write the
//! [`PodStore`], which readers consult without waiting.
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod};
use kube::{
    api::PartialObjectMeta,
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};

use super::{
    facts::{pod_record, replicaset_deployment, PodRecord},
    store::PodStore,
};
use crate::metrics::Metrics;

/// Starts both watches on the current tokio runtime; they run until the
/// runtime stops.
pub fn spawn_watches(client: Client, node_name: &str, store: Arc<PodStore>, metrics: Arc<Metrics>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let stream = watcher(pods, config).default_backoff();
    tokio::spawn(drive(stream, PodSink(Arc::clone(&store)), "pods", Arc::clone(&metrics)));

    // An Api of PartialObjectMeta asks for metadata only.
    let replicasets: Api<PartialObjectMeta<ReplicaSet>> = Api::all(client);
    let stream = watcher(replicasets, watcher::Config::default()).default_backoff();
    tokio::spawn(drive(stream, ReplicaSetSink(store), "replicasets", metrics));
}

/// Where one watch's events go.
trait Sink<K> {
    type Item;
    fn reduce(&self, object: &K) -> Option<Self::Item>;
    fn apply(&self, item: Self::Item);
    fn delete(&self, object: &K);
    fn replace(&self, items: Vec<Self::Item>);
    /// Most items a re-list buffers (the store's limit).
    fn limit(&self) -> usize;
}

async fn drive<K, S: Sink<K>>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    sink: S,
    what: &'static str,
    metrics: Arc<Metrics>,
) {
    let mut stream = std::pin::pin!(stream);
    let mut inits = 0u64;
    // Objects of a list in progress: they replace the store's at its end,
    // so objects deleted while the watch was away go.
    let mut listing: Option<Vec<S::Item>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => {
                inits += 1;
                if inits > 1 {
                    Metrics::inc(&metrics.kube_watch_restarts);
                    tracing::info!(watch = what, "re-listing (the watch's resource version expired, or it failed)");
                }
                listing = Some(Vec::new());
            }
            Ok(watcher::Event::InitApply(object)) => {
                if let (Some(list), Some(item)) = (listing.as_mut(), sink.reduce(&object)) {
                    // Past the limit the store would not keep it anyway;
                    // counting happens there, at replace.
                    if list.len() <= sink.limit() {
                        list.push(item);
                    }
                }
            }
            Ok(watcher::Event::InitDone) => {
                let items = listing.take().unwrap_or_default();
                tracing::info!(watch = what, objects = items.len(), "listed");
                sink.replace(items);
            }
            Ok(watcher::Event::Apply(object)) => {
                if let Some(item) = sink.reduce(&object) {
                    sink.apply(item);
                }
            }
            Ok(watcher::Event::Delete(object)) => sink.delete(&object),
            Err(e) => {
                Metrics::inc(&metrics.kube_watch_errors);
                tracing::warn!(watch = what, error = %e, "Kubernetes watch failed; retrying with backoff, spans go out with what is known");
            }
        }
    }
}

struct PodSink(Arc<PodStore>);

impl Sink<Pod> for PodSink {
    type Item = PodRecord;
    fn reduce(&self, pod: &Pod) -> Option<PodRecord> {
        pod_record(pod)
    }
    fn apply(&self, record: PodRecord) {
        self.0.apply_pod(record);
    }
    fn delete(&self, pod: &Pod) {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            self.0.delete_pod(uid);
        }
    }
    fn replace(&self, records: Vec<PodRecord>) {
        self.0.replace_pods(records);
    }
    fn limit(&self) -> usize {
        super::store::MAX_PODS
    }
}

struct ReplicaSetSink(Arc<PodStore>);

type RsItem = (String, String, Option<String>);

impl Sink<PartialObjectMeta<ReplicaSet>> for ReplicaSetSink {
    type Item = RsItem;
    fn reduce(&self, rs: &PartialObjectMeta<ReplicaSet>) -> Option<RsItem> {
        let meta = &rs.metadata;
        let deployment = replicaset_deployment(meta.owner_references.as_deref());
        Some((meta.namespace.clone()?, meta.name.clone()?, deployment))
    }
    fn apply(&self, (namespace, name, deployment): RsItem) {
        self.0.apply_replicaset(&namespace, &name, deployment);
    }
    fn delete(&self, rs: &PartialObjectMeta<ReplicaSet>) {
        if let (Some(namespace), Some(name)) = (&rs.metadata.namespace, &rs.metadata.name) {
            self.0.delete_replicaset(namespace, name);
        }
    }
    fn replace(&self, items: Vec<RsItem>) {
        self.0.replace_replicasets(items);
    }
    fn limit(&self) -> usize {
        super::store::MAX_REPLICASETS
    }
}
