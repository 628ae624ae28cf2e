//! The real kube client and runtime watcher against the test API endpoint
//! (`waggle_e2e::kube_api`), which sends what an API server sends: lists,
//! chunked watch events, bookmarks, watches that end, 410 Gone.
use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use waggle_e2e::kube_api::{replicaset_json, Collection, KubeApi, PodSpec};

use super::{start, PodStore};
use crate::{
    config::KubeSource,
    metrics::Metrics,
    model::{PodDirectory, WorkloadKind},
};

const NODE: &str = "node-1";
const WAIT: Duration = Duration::from_secs(20);

fn pod(name: &str, uid: &str, node: &str, owner: Option<(&str, &str)>) -> serde_json::Value {
    PodSpec {
        name,
        namespace: "shop",
        uid,
        node,
        labels: &[("app.kubernetes.io/name", "storefront")],
        annotations: &[],
        owner,
        containers: &[("app", "c0ffee")],
    }
    .to_json()
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn watching(api: &KubeApi, dir: &tempfile::TempDir) -> (Arc<PodStore>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let source = KubeSource::Kubeconfig(api.kubeconfig(dir.path()));
    let store = start(&source, NODE, metrics.clone()).await.expect("client from the kubeconfig");
    (store, metrics)
}

fn watches(api: &KubeApi, collection: Collection) -> Vec<waggle_e2e::kube_api::ApiRequest> {
    api.requests().into_iter().filter(|r| r.collection == collection && r.watch).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_this_node_with_their_owners_follow_the_watch() {
    let api = KubeApi::start();
    api.put(Collection::Pods, pod("web-5d8f7c9b4-x2x7q", "uid-web", NODE, Some(("ReplicaSet", "web-5d8f7c9b4"))));
    api.put(Collection::Pods, pod("elsewhere", "uid-other-node", "node-2", None));
    api.put(Collection::ReplicaSets, replicaset_json("web-5d8f7c9b4", "shop", "web"));
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = watching(&api, &dir).await;

    wait_until("the listed pod with its Deployment", || store.pod("uid-web").is_some_and(|p| p.owners.len() == 2))
        .await;
    let web = store.pod("uid-web").unwrap();
    assert_eq!((web.namespace.as_str(), web.name.as_str()), ("shop", "web-5d8f7c9b4-x2x7q"));
    assert_eq!(web.owners[0].kind, WorkloadKind::ReplicaSet);
    assert_eq!((web.owners[1].kind, web.owners[1].name.as_str()), (WorkloadKind::Deployment, "web"));
    assert_eq!(web.containers.get("c0ffee").map(String::as_str), Some("app"));
    assert!(store.pod("uid-other-node").is_none(), "another node's pod");
    let pod_list = api.requests().into_iter().find(|r| r.collection == Collection::Pods && !r.watch).unwrap();
    assert!(pod_list.query.contains("fieldSelector=spec.nodeName%3Dnode-1"), "{pod_list:?}");
    assert!(
        api.requests().iter().filter(|r| r.collection == Collection::ReplicaSets).all(|r| r.metadata_only),
        "ReplicaSets are read as metadata only"
    );

    // Watch events: a pod added, one of a Job of a CronJob, a deletion.
    wait_until("the pod watch", || !watches(&api, Collection::Pods).is_empty()).await;
    api.put(Collection::Pods, pod("report-29412345-abcde", "uid-job", NODE, Some(("Job", "report-29412345"))));
    wait_until("the Job's pod", || store.pod("uid-job").is_some()).await;
    let job = store.pod("uid-job").unwrap();
    assert_eq!((job.owners[1].kind, job.owners[1].name.as_str()), (WorkloadKind::CronJob, "report"));
    api.delete(Collection::Pods, "uid-job");
    wait_until("deletion removes the pod", || store.pod("uid-job").is_none()).await;
    assert_eq!(store.pods_known(), 1);
    assert_eq!(metrics.kube_watch_restarts.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_advance_resumed_watches_and_410_relists() {
    let api = KubeApi::start();
    api.put(Collection::Pods, pod("old", "uid-old", NODE, None));
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = watching(&api, &dir).await;
    wait_until("the first pod watch", || !watches(&api, Collection::Pods).is_empty()).await;
    assert!(store.pod("uid-old").is_some());

    // A bookmark, then the watch ends: the client resumes from the bookmark.
    let bookmark = api.bookmark(Collection::Pods);
    // Other collections' versions move too (one version space, as in etcd).
    api.put(Collection::ReplicaSets, replicaset_json("unrelated-1", "shop", "unrelated"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.end_watches();
    wait_until("a resumed pod watch", || watches(&api, Collection::Pods).len() >= 2).await;
    let resumed = &watches(&api, Collection::Pods)[1];
    assert_eq!(resumed.resource_version, bookmark.to_string(), "resumed from the bookmark: {resumed:?}");
    assert_eq!(metrics.kube_watch_restarts.load(Ordering::Relaxed), 0, "a resumed watch is no re-list");

    // History compacted while the watch is away: 410 Gone, then a re-list
    // that brings the pods as they are now.
    api.hold_watches();
    api.delete(Collection::Pods, "uid-old");
    api.put(Collection::Pods, pod("new", "uid-new", NODE, None));
    api.compact();
    api.end_watches();
    wait_until("the re-list after 410", || store.pod("uid-new").is_some() && store.pod("uid-old").is_none()).await;
    wait_until("the restart counted", || metrics.kube_watch_restarts.load(Ordering::Relaxed) >= 1).await;
    assert!(metrics.kube_watch_errors.load(Ordering::Relaxed) >= 1, "the 410 is an error");
    let lists = api.requests().into_iter().filter(|r| r.collection == Collection::Pods && !r.watch).count();
    assert!(lists >= 2, "listed again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_keeps_what_is_known_and_counts_errors() {
    let mut api = KubeApi::start();
    api.put(Collection::Pods, pod("web", "uid-web", NODE, None));
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = watching(&api, &dir).await;
    wait_until("the pod", || store.pod("uid-web").is_some()).await;
    api.stop();
    wait_until("errors counted", || metrics.kube_watch_errors.load(Ordering::Relaxed) >= 1).await;
    let before = Instant::now();
    assert!(store.pod("uid-web").is_some(), "still known");
    assert!(before.elapsed() < Duration::from_millis(50), "a lookup never waits on the API");
}
