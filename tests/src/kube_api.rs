//! A Kubernetes API endpoint for tests: serves pods and replicasets the way
//! a real API server does, over plain HTTP on loopback, reached through a
//! kubeconfig file by the real `kube` client (agent unit tests and e2e).
//!
//! What it speaks, as an API server sends it: lists (`kind: PodList`,
//! `metadata.resourceVersion`; `PartialObjectMetadataList` when the client
//! asks for metadata only with `Accept: ...;as=PartialObjectMetadataList`),
//! watches as chunked newline-delimited `{"type":"ADDED","object":{...}}`
//! events from a resource version (`ADDED`, `MODIFIED`, `DELETED`,
//! `BOOKMARK` with only `metadata.resourceVersion`), watches that end
//! ([`KubeApi::end_watches`]) and are resumed, and an `ERROR` event carrying
//! a `Status` with code 410 (reason `Expired`) for a watch resumed from a
//! version older than the last compaction ([`KubeApi::compact`]), which
//! forces a re-list. `fieldSelector=spec.nodeName=<node>` filters pods.
//! [`KubeApi::stop`] takes it away: connections are cut and refused after.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::Notify,
};

/// The two collections served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Collection {
    Pods,
    ReplicaSets,
}

impl Collection {
    fn kind(self) -> &'static str {
        match self {
            Collection::Pods => "Pod",
            Collection::ReplicaSets => "ReplicaSet",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Collection::Pods => "v1",
            Collection::ReplicaSets => "apps/v1",
        }
    }
}

/// One request the client made.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    pub collection: Collection,
    pub watch: bool,
    /// The `resourceVersion` query parameter (empty when absent).
    pub resource_version: String,
    /// The raw query string.
    pub query: String,
    pub metadata_only: bool,
}

struct Event {
    rv: u64,
    collection: Collection,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(Collection, String), Value>,
    log: Vec<Event>,
    /// Watches from a version below this get 410 Gone.
    compacted: u64,
    /// Bumped to end every open watch.
    generation: u64,
    /// Open watches send nothing (a stalled connection) until they end.
    held: bool,
    requests: Vec<ApiRequest>,
}

pub struct KubeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl KubeApi {
    #[track_caller]
    pub fn start() -> KubeApi {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("test API runtime");
        // Bound here (std), adopted by the runtime below: `start` may be
        // called from inside another runtime, where block_on panics.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the test API");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("test API address");
        let state = Arc::new(Mutex::new(State { rv: 1000, ..Default::default() }));
        let changed = Arc::new(Notify::new());
        let (s, c) = (state.clone(), changed.clone());
        runtime.spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else { return };
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, s.clone(), c.clone()));
            }
        });
        KubeApi { addr, state, changed, runtime: Some(runtime) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig naming this endpoint (no credentials) into `dir`.
    #[track_caller]
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\ncontexts:\n- name: test\n  \
             context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or replaces an object (ADDED or MODIFIED), keyed by its uid.
    pub fn put(&self, collection: Collection, mut object: Value) {
        let mut state = self.state();
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["kind"] = json!(collection.kind());
        object["apiVersion"] = json!(collection.api_version());
        let uid = object["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        let kind = if state.objects.insert((collection, uid), object.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        state.log.push(Event { rv, collection, kind, object });
        drop(state);
        self.changed.notify_waiters();
    }

    /// Deletes an object by uid (DELETED).
    pub fn delete(&self, collection: Collection, uid: &str) {
        let mut state = self.state();
        let Some(mut object) = state.objects.remove(&(collection, uid.to_owned())) else { return };
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.log.push(Event { rv, collection, kind: "DELETED", object });
        drop(state);
        self.changed.notify_waiters();
    }

    /// Sends a BOOKMARK at a new resource version to the collection's
    /// watches; returns that version.
    pub fn bookmark(&self, collection: Collection) -> u64 {
        let mut state = self.state();
        state.rv += 1;
        let rv = state.rv;
        let object = json!({"kind": collection.kind(), "apiVersion": collection.api_version(),
                            "metadata": {"resourceVersion": rv.to_string()}});
        state.log.push(Event { rv, collection, kind: "BOOKMARK", object });
        drop(state);
        self.changed.notify_waiters();
        rv
    }

    /// Every open watch ends (as an API server ends watches at their
    /// timeout); clients resume from the last version they saw.
    pub fn end_watches(&self) {
        let mut state = self.state();
        state.generation += 1;
        state.held = false;
        drop(state);
        self.changed.notify_waiters();
    }

    /// Open watches stall: they send nothing more until [`Self::end_watches`]
    /// (changes made meanwhile reach the client only by a resumed watch or
    /// a list).
    pub fn hold_watches(&self) {
        self.state().held = true;
    }

    /// Forgets history, as etcd compaction does: a watch resumed from any
    /// version handed out so far gets 410 Gone; a new list is needed.
    pub fn compact(&self) {
        let mut state = self.state();
        state.rv += 1;
        state.compacted = state.rv;
        let compacted = state.compacted;
        state.log.retain(|e| e.rv >= compacted);
    }

    pub fn requests(&self) -> Vec<ApiRequest> {
        self.state().requests.clone()
    }

    /// Waits until the requests made so far satisfy `done`.
    #[track_caller]
    pub fn wait_for_requests(&self, what: &str, timeout: Duration, done: impl Fn(&[ApiRequest]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if done(&requests) {
                return;
            }
            assert!(Instant::now() < deadline, "test API: no {what} within {timeout:?}; requests: {requests:#?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes the endpoint away: open connections are cut, new ones refused.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pod as the API server sends it, running on `node`; `containers` are
/// (name, runtime id) and get `containerd://` ids in the status.
pub struct PodSpec<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub node: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub annotations: &'a [(&'a str, &'a str)],
    /// The controller: (kind, name), e.g. ("ReplicaSet", "web-5d8f7c9b4").
    pub owner: Option<(&'a str, &'a str)>,
    pub containers: &'a [(&'a str, &'a str)],
}

impl PodSpec<'_> {
    pub fn to_json(&self) -> Value {
        let map = |pairs: &[(&str, &str)]| -> Value {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>().into()
        };
        let owners: Vec<Value> = self
            .owner
            .iter()
            .map(|(kind, name)| {
                json!({"apiVersion": if *kind == "Job" { "batch/v1" } else { "apps/v1" }, "kind": kind, "name": name,
                       "uid": format!("{name}-uid"), "controller": true, "blockOwnerDeletion": true})
            })
            .collect();
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .map(|(name, id)| {
                json!({"name": name, "state": {"running": {"startedAt": "2026-12-03T06:00:00Z"}}, "ready": true,
                       "restartCount": 0, "image": "docker.io/library/python:3.12",
                       "imageID": "docker.io/library/python@sha256:00", "containerID": format!("containerd://{id}"),
                       "started": true})
            })
            .collect();
        json!({
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid,
                         "creationTimestamp": "2026-12-03T06:00:00Z", "labels": map(self.labels),
                         "annotations": map(self.annotations), "ownerReferences": owners},
            "spec": {"nodeName": self.node, "containers": self.containers.iter()
                .map(|(name, _)| json!({"name": name, "image": "docker.io/library/python:3.12"})).collect::<Vec<_>>()},
            "status": {"phase": "Running", "podIP": "10.244.0.12", "containerStatuses": statuses}
        })
    }
}

/// A ReplicaSet owned by `deployment`.
pub fn replicaset_json(name: &str, namespace: &str, deployment: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": namespace, "uid": format!("{namespace}-{name}-uid"),
                     "labels": {"pod-template-hash": name.rsplit('-').next().unwrap_or_default()},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                                          "uid": format!("{deployment}-uid"), "controller": true,
                                          "blockOwnerDeletion": true}]},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": deployment}}},
        "status": {"replicas": 1}
    })
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// `spec.nodeName%3Dnode-1` → `node-1`.
fn node_selector(query: &str) -> Option<String> {
    let raw = query_param(query, "fieldSelector")?;
    let decoded = raw.replace("%3D", "=").replace("%3d", "=").replace("%2C", ",");
    decoded.strip_prefix("spec.nodeName=").map(str::to_owned)
}

fn visible(collection: Collection, object: &Value, node: Option<&str>) -> bool {
    collection != Collection::Pods || node.is_none_or(|n| object["spec"]["nodeName"].as_str() == Some(n))
}

/// The object as sent: whole, or its metadata only.
fn shaped(object: &Value, metadata_only: bool) -> Value {
    if metadata_only {
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]})
    } else {
        object.clone()
    }
}

async fn serve(conn: TcpStream, state: Arc<Mutex<State>>, changed: Arc<Notify>) {
    let mut conn = BufReader::new(conn);
    let mut request_line = String::new();
    if conn.read_line(&mut request_line).await.is_err() {
        return;
    }
    let mut accept = String::new();
    loop {
        let mut line = String::new();
        match conn.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("accept") {
                        accept = value.trim().to_owned();
                    }
                }
            }
        }
    }
    let target = request_line.split(' ').nth(1).unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let collection = match path {
        "/api/v1/pods" => Collection::Pods,
        "/apis/apps/v1/replicasets" => Collection::ReplicaSets,
        _ => {
            let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}"#;
            let _ = respond(conn.get_mut(), "404 Not Found", body).await;
            return;
        }
    };
    let watch = query_param(query, "watch").is_some_and(|v| v == "true" || v == "1");
    let metadata_only = accept.contains("as=PartialObjectMetadata");
    let resource_version = query_param(query, "resourceVersion").unwrap_or_default().to_owned();
    let node = node_selector(query);
    let request = ApiRequest {
        collection,
        watch,
        resource_version: resource_version.clone(),
        query: query.to_owned(),
        metadata_only,
    };
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    lock().requests.push(request);
    if !watch {
        let body = {
            let state = lock();
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((c, _), o)| *c == collection && visible(collection, o, node.as_deref()))
                .map(|(_, o)| shaped(o, metadata_only))
                .collect();
            let (kind, api_version) = if metadata_only {
                ("PartialObjectMetadataList".to_owned(), "meta.k8s.io/v1")
            } else {
                (format!("{}List", collection.kind()), collection.api_version())
            };
            json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": state.rv.to_string()},
                   "items": items})
            .to_string()
        };
        let _ = respond(conn.get_mut(), "200 OK", &body).await;
        return;
    }
    let _ = stream_watch(conn.get_mut(), collection, &resource_version, node, metadata_only, &state, &changed).await;
}

async fn respond(conn: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

async fn stream_watch(
    conn: &mut TcpStream,
    collection: Collection,
    from: &str,
    node: Option<String>,
    metadata_only: bool,
    state: &Mutex<State>,
    changed: &Notify,
) -> std::io::Result<()> {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let mut cursor: u64 = from.parse().unwrap_or(0);
    let generation = lock().generation;
    if cursor < lock().compacted {
        let status = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": format!("too old resource version: {cursor} ({})", lock().compacted),
            "reason": "Expired", "code": 410}});
        write_chunk(conn, &format!("{status}\n")).await?;
        return finish(conn).await;
    }
    loop {
        // Registered before looking, so a change in between still wakes us.
        let notified = changed.notified();
        let held = {
            let state = lock();
            state.held && state.generation == generation
        };
        if held {
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
            continue;
        }
        let (lines, ended) = {
            let state = lock();
            let lines: Vec<String> = state
                .log
                .iter()
                .filter(|e| e.rv > cursor && e.collection == collection)
                .filter(|e| e.kind == "BOOKMARK" || visible(collection, &e.object, node.as_deref()))
                .map(|e| {
                    let object = if e.kind == "BOOKMARK" { e.object.clone() } else { shaped(&e.object, metadata_only) };
                    format!("{}\n", json!({"type": e.kind, "object": object}))
                })
                .collect();
            cursor = state.log.iter().map(|e| e.rv).max().unwrap_or(cursor).max(cursor);
            (lines, state.generation != generation)
        };
        for line in lines {
            write_chunk(conn, &line).await?;
        }
        if ended {
            return finish(conn).await;
        }
        // The timeout only bounds a lost wake-up.
        let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
    }
}

async fn write_chunk(conn: &mut TcpStream, data: &str) -> std::io::Result<()> {
    conn.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes()).await?;
    conn.flush().await
}

async fn finish(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.write_all(b"0\r\n\r\n").await?;
    conn.shutdown().await
}
