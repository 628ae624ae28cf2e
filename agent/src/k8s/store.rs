//! The pods of this node and the ReplicaSets' Deployments, as last heard
//! from the API server: the [`PodDirectory`] that resource building reads.
//!
//! Writers are the watch task (one event at a time); readers are the
//! resource worker and the trace-selection rules. A read is one hash lookup
//! under a read lock that writers hold only to swap an entry, never across
//! an await or a network call, so a slow or absent API server cannot stall
//! a reader. What was known stays known while the API server is away.
//!
//! Memory is bounded: at most `max_pods` pods and `max_replicasets`
//! ReplicaSets are kept; what does not fit is counted
//! (`kube_pods_not_kept`, `kube_replicasets_not_kept`) and its spans go out
//! without the metadata.
use std::{
    collections::HashMap,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use super::facts::{owner_chain, PodRecord};
use crate::{
    metrics::Metrics,
    model::{PodDirectory, PodFacts},
};

/// Pods kept at most: a node runs at most a few hundred (kubelet's default
/// max-pods is 110).
pub const MAX_PODS: usize = 4096;
/// ReplicaSets kept at most (cluster-wide: only their names and owning
/// Deployment are kept, about 100 bytes each).
pub const MAX_REPLICASETS: usize = 65536;

/// (namespace, name) of a ReplicaSet.
type RsKey = (String, String);

/// A pod's controller reference (when a ReplicaSet) and its facts.
type PodEntry = (Option<RsKey>, Arc<PodFacts>);

#[derive(Default)]
struct Inner {
    /// uid → the pod's controller reference and its facts (owners resolved).
    pods: HashMap<String, PodEntry>,
    /// ReplicaSet → its Deployment (None: a ReplicaSet of no Deployment).
    replicasets: HashMap<RsKey, Option<String>>,
}

pub struct PodStore {
    inner: RwLock<Inner>,
    max_pods: usize,
    max_replicasets: usize,
    metrics: Arc<Metrics>,
}

impl PodStore {
    pub fn new(metrics: Arc<Metrics>) -> PodStore {
        PodStore::with_limits(MAX_PODS, MAX_REPLICASETS, metrics)
    }

    pub fn with_limits(max_pods: usize, max_replicasets: usize, metrics: Arc<Metrics>) -> PodStore {
        PodStore { inner: RwLock::default(), max_pods, max_replicasets, metrics }
    }

    /// Pods known now.
    pub fn pods_known(&self) -> usize {
        self.read().pods.len()
    }

    /// A pod was added or changed.
    pub fn apply_pod(&self, record: PodRecord) {
        let mut inner = self.write();
        if !inner.pods.contains_key(&record.facts.uid) && inner.pods.len() >= self.max_pods {
            Metrics::inc(&self.metrics.kube_pods_not_kept);
            return;
        }
        inner.put_pod(record);
    }

    pub fn delete_pod(&self, uid: &str) {
        self.write().pods.remove(uid);
    }

    /// A fresh list (start-up, or a re-list after the watch's resource
    /// version expired): it replaces every pod, so pods deleted while the
    /// watch was away go.
    pub fn replace_pods(&self, records: Vec<PodRecord>) {
        let mut inner = self.write();
        let mut old = std::mem::take(&mut inner.pods);
        for record in records {
            if inner.pods.len() >= self.max_pods {
                Metrics::inc(&self.metrics.kube_pods_not_kept);
                continue;
            }
            // Unchanged pods keep their Arc: resources built from it stay
            // valid (see `discovery::resource_cache`).
            if let Some(previous) = old.remove(&record.facts.uid) {
                inner.pods.insert(record.facts.uid.clone(), previous);
            }
            inner.put_pod(record);
        }
    }

    /// A ReplicaSet was added or changed: `deployment` owns it.
    pub fn apply_replicaset(&self, namespace: &str, name: &str, deployment: Option<String>) {
        let mut inner = self.write();
        let key = (namespace.to_owned(), name.to_owned());
        if inner.replicasets.get(&key) == Some(&deployment) {
            return;
        }
        if !inner.replicasets.contains_key(&key) && inner.replicasets.len() >= self.max_replicasets {
            Metrics::inc(&self.metrics.kube_replicasets_not_kept);
            return;
        }
        inner.replicasets.insert(key, deployment);
        inner.reresolve_owners(Some(namespace));
    }

    pub fn delete_replicaset(&self, namespace: &str, name: &str) {
        let mut inner = self.write();
        if inner.replicasets.remove(&(namespace.to_owned(), name.to_owned())).is_some() {
            inner.reresolve_owners(Some(namespace));
        }
    }

    /// A fresh list of ReplicaSets: (namespace, name, deployment).
    pub fn replace_replicasets(&self, all: Vec<(String, String, Option<String>)>) {
        let mut inner = self.write();
        inner.replicasets.clear();
        for (namespace, name, deployment) in all {
            if inner.replicasets.len() >= self.max_replicasets {
                Metrics::inc(&self.metrics.kube_replicasets_not_kept);
                continue;
            }
            inner.replicasets.insert((namespace, name), deployment);
        }
        inner.reresolve_owners(None);
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A writer that panicked left a consistent map (every write is one
        // insert or remove): keep serving it.
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    fn put_pod(&mut self, record: PodRecord) {
        let PodRecord { mut facts, controller } = record;
        facts.owners = self.owners_of(&facts.namespace, controller.as_ref());
        let unchanged = self.pods.get(&facts.uid).is_some_and(|(c, f)| *c == controller && **f == facts);
        if !unchanged {
            self.pods.insert(facts.uid.clone(), (controller, Arc::new(facts)));
        }
    }

    fn owners_of(&self, namespace: &str, controller: Option<&(String, String)>) -> Vec<crate::model::Workload> {
        owner_chain(controller, |rs| self.replicasets.get(&(namespace.to_owned(), rs.to_owned())).cloned().flatten())
    }

    /// Owner chains through a ReplicaSet of `namespace` (all when None)
    /// after the ReplicaSets changed; only pods whose chain changed get a
    /// new Arc.
    fn reresolve_owners(&mut self, namespace: Option<&str>) {
        let changed: Vec<(String, Vec<crate::model::Workload>)> = self
            .pods
            .iter()
            .filter(|(_, (controller, facts))| {
                namespace.is_none_or(|ns| facts.namespace == ns)
                    && controller.as_ref().is_some_and(|(kind, _)| kind == "ReplicaSet")
            })
            .filter_map(|(uid, (controller, facts))| {
                let owners = self.owners_of(&facts.namespace, controller.as_ref());
                (owners != facts.owners).then(|| (uid.clone(), owners))
            })
            .collect();
        for (uid, owners) in changed {
            if let Some((_, facts)) = self.pods.get_mut(&uid) {
                let mut updated = PodFacts::clone(facts);
                updated.owners = owners;
                *facts = Arc::new(updated);
            }
        }
    }
}

impl PodDirectory for PodStore {
    fn pod(&self, uid: &str) -> Option<Arc<PodFacts>> {
        self.read().pods.get(uid).map(|(_, facts)| Arc::clone(facts))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::model::{Workload, WorkloadKind};

    fn record(uid: &str, ns: &str, controller: Option<(&str, &str)>) -> PodRecord {
        PodRecord {
            facts: PodFacts { uid: uid.into(), namespace: ns.into(), name: format!("pod-{uid}"), ..Default::default() },
            controller: controller.map(|(k, n)| (k.into(), n.into())),
        }
    }

    fn owners(store: &PodStore, uid: &str) -> Vec<Workload> {
        store.pod(uid).unwrap().owners.clone()
    }

    #[test]
    fn replicasets_arriving_after_their_pods_complete_the_chain() {
        let store = PodStore::new(Arc::new(Metrics::default()));
        store.apply_pod(record("a", "shop", Some(("ReplicaSet", "web-1"))));
        store.apply_pod(record("b", "other", Some(("ReplicaSet", "web-1"))));
        let before = store.pod("a").unwrap();
        assert_eq!(before.owners, [Workload { kind: WorkloadKind::ReplicaSet, name: "web-1".into() }]);
        store.apply_replicaset("shop", "web-1", Some("web".into()));
        assert_eq!(owners(&store, "a")[1], Workload { kind: WorkloadKind::Deployment, name: "web".into() });
        assert_eq!(owners(&store, "b").len(), 1, "same name in another namespace is another ReplicaSet");
        assert!(!Arc::ptr_eq(&before, &store.pod("a").unwrap()), "a changed pod is a new Arc");
        let b = store.pod("b").unwrap();
        store.apply_pod(record("b", "other", Some(("ReplicaSet", "web-1"))));
        assert!(Arc::ptr_eq(&b, &store.pod("b").unwrap()), "an unchanged pod keeps its Arc");
        store.delete_replicaset("shop", "web-1");
        assert_eq!(owners(&store, "a").len(), 1);
        store.delete_pod("a");
        assert!(store.pod("a").is_none());
        assert_eq!(store.pods_known(), 1);
    }

    #[test]
    fn a_relist_replaces_and_limits_are_counted() {
        let metrics = Arc::new(Metrics::default());
        let store = PodStore::with_limits(2, 1, metrics.clone());
        store.apply_pod(record("a", "ns", None));
        store.apply_pod(record("b", "ns", None));
        store.apply_pod(record("c", "ns", None));
        assert!(store.pod("c").is_none());
        assert_eq!(metrics.kube_pods_not_kept.load(Ordering::Relaxed), 1);
        let a = store.pod("a").unwrap();
        store.replace_pods(vec![record("a", "ns", None), record("d", "ns", None), record("e", "ns", None)]);
        assert!(Arc::ptr_eq(&a, &store.pod("a").unwrap()));
        assert!(store.pod("b").is_none(), "gone from the new list");
        assert!(store.pod("d").is_some());
        assert_eq!(metrics.kube_pods_not_kept.load(Ordering::Relaxed), 2);
        store.replace_replicasets(vec![("ns".into(), "r1".into(), None), ("ns".into(), "r2".into(), None)]);
        store.apply_replicaset("ns", "r3", Some("d".into()));
        assert_eq!(metrics.kube_replicasets_not_kept.load(Ordering::Relaxed), 2);
    }
}
