//! The resource of each traced process, cached per pid and built off the
//! event loop: reading /proc/<pid>/{stat,exe,cmdline,cgroup,environ} takes
//! tens to hundreds of microseconds (far more for a process with a huge
//! environment), which the loop must not spend while records wait in the
//! ring. The loop asks a worker thread through a bounded queue and never
//! blocks on it; a span whose resource is not built yet waits for it in the
//! pipeline. Only when the queue is full (thousands of new processes at
//! once) does the loop build a resource itself, counted.
//!
//! Kubernetes metadata may arrive after a process's first span (the pod
//! started before the watch listed it, or the API server is slow). A
//! resource remembers the pod facts it was built with; the once-a-second
//! revalidation also asks whether the directory now holds other facts for
//! that pod uid (an `Arc` comparison, on the worker) and, if so, builds the
//! resource again (`resources_rebuilt_for_pod`). So spans carry the pod's
//! metadata from about a second after it arrived; the earlier ones went out
//! with what was known.
use std::{
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use lru::LruCache;
use tokio::sync::mpsc;

use super::{
    exec_env::SharedExecEnv,
    pod_resource::{PodContext, PodSeen},
    process_facts::read_start_time,
    resource::{Resolved, ResourceBuilder},
};
use crate::{metrics::Metrics, model::ProcessResource};

/// Resources cached at most; the oldest (least recently revalidated) entry is
/// evicted beyond this.
pub const RESOURCE_CACHE_CAPACITY: usize = 4096;
/// Requests waiting for the worker at most; beyond, the loop resolves itself.
pub const RESOLVE_QUEUE_CAPACITY: usize = 1024;
/// How often a cached resource is checked against the process's start time.
/// Exit events remove entries promptly (`forget`); this catches a pid reused
/// after a missed exit without reading /proc on every span.
const REVALIDATE_AFTER: Duration = Duration::from_secs(1);
/// A process caught in the middle of execve already shows its new executable
/// but not yet its argv or environment (the kernel fills them in at the end
/// of exec; the parent of a vfork/posix_spawn is already running by then).
/// Such a resource is provisional: resolved again after this delay, at most
/// `INCOMPLETE_RETRIES` times (a process may legitimately have an empty argv).
const INCOMPLETE_RETRY_AFTER: Duration = Duration::from_millis(5);
const INCOMPLETE_RETRIES: u8 = 20;
/// The kernel's task name (comm), NUL-padded.
pub type Comm = [u8; 16];

enum Request {
    Resolve {
        pid: u32,
        comm: Comm,
    },
    /// Still the same process? Resolve again only if its start time changed.
    Revalidate {
        pid: u32,
        start_time: Option<u64>,
        comm: Comm,
        pod: Option<Arc<PodSeen>>,
    },
}

/// What the worker sends back; hand it to [`ResourceResolver::on_reply`].
pub struct ResourceReply(ReplyKind);

enum ReplyKind {
    Resolved { pid: u32, resolved: Resolved },
    StillValid { pid: u32 },
}

/// The worker's replies, for the event loop to wait on.
pub type ResourceReplies = mpsc::Receiver<ResourceReply>;

enum State {
    /// Asked of the worker; spans of this process wait.
    Pending,
    Ready {
        resource: Arc<ProcessResource>,
        start_time: Option<u64>,
        checked: Instant,
        /// Re-resolutions left while the process looked mid-exec; 0 = final.
        incomplete_retries: u8,
        /// The pod it was built with, to notice its metadata changing.
        pod: Option<Arc<PodSeen>>,
    },
}

struct Entry {
    state: State,
    comm: Comm,
    /// A request for this pid is with the worker.
    in_flight: bool,
    /// The process exited while its resource was being built: the entry
    /// goes when the reply has named the spans that waited for it.
    exited: bool,
}

/// What the loop has for a process right now.
pub enum Lookup {
    Ready(Arc<ProcessResource>),
    /// Being built; the reply will carry it (`on_reply`).
    Waiting,
}

/// The event loop's side: the cache, and the queue to the worker.
pub struct ResourceResolver {
    builder: Arc<ResourceBuilder>,
    requests: Option<mpsc::Sender<Request>>,
    /// Recency is refreshed only by inserting and revalidating (lookups
    /// peek), so the least recently revalidated entry is evicted first.
    cache: LruCache<u32, Entry>,
    metrics: Arc<Metrics>,
}

impl ResourceResolver {
    /// Starts the worker thread. `extra_attributes` and `agent_tgid`: see
    /// [`ResourceBuilder::new`]; `pods`: Kubernetes metadata, when on;
    /// `exec_env`: the OTEL_* variables the kernel read at exec, when on.
    pub fn spawn(
        extra_attributes: Vec<(String, String)>,
        agent_tgid: u32,
        pods: Option<PodContext>,
        exec_env: Option<SharedExecEnv>,
        metrics: Arc<Metrics>,
    ) -> (ResourceResolver, ResourceReplies) {
        Self::with_limits(
            ResourceBuilder::new(extra_attributes, agent_tgid).with_pods(pods).with_exec_env(exec_env),
            RESOURCE_CACHE_CAPACITY,
            RESOLVE_QUEUE_CAPACITY,
            metrics,
        )
    }

    fn with_limits(
        builder: ResourceBuilder,
        capacity: usize,
        queue: usize,
        metrics: Arc<Metrics>,
    ) -> (ResourceResolver, ResourceReplies) {
        let builder = Arc::new(builder);
        let (request_tx, request_rx) = mpsc::channel(queue.max(1));
        let (reply_tx, reply_rx) = mpsc::channel(queue.max(1));
        let worker_builder = Arc::clone(&builder);
        let worker_metrics = Arc::clone(&metrics);
        let requests = match std::thread::Builder::new()
            .name("waggle-resources".into())
            .spawn(move || work(&worker_builder, request_rx, reply_tx, &worker_metrics))
        {
            Ok(_) => Some(request_tx),
            Err(e) => {
                tracing::warn!(error = %e, "no resource worker thread: process resources are built on the event loop");
                None
            }
        };
        let resolver = ResourceResolver {
            builder,
            requests,
            cache: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
            metrics,
        };
        (resolver, reply_rx)
    }

    /// A process was seen opening a connection: start building its resource
    /// now, while it is alive (a short-lived client may be gone by the time
    /// its span is built). `comm` names it if /proc already is gone.
    pub fn observe(&mut self, pid: u32, comm: &[u8]) {
        if !self.cache.contains(&pid) {
            self.request(pid, comm_of(comm));
        }
    }

    /// The resource of `pid` if it is built, else `Waiting` (and it is being
    /// built). A cached resource is checked against the process's start time
    /// at most once per second, by the worker; the cached one serves
    /// meanwhile.
    pub fn lookup(&mut self, pid: u32) -> Lookup {
        let Some(entry) = self.cache.peek(&pid) else {
            return self.request(pid, [0; 16]);
        };
        let State::Ready { resource, start_time, checked, incomplete_retries, pod } = &entry.state else {
            return Lookup::Waiting;
        };
        let resource = Arc::clone(resource);
        if !entry.in_flight {
            let age = checked.elapsed();
            let (pid, comm, start_time) = (pid, entry.comm, *start_time);
            let request = if *incomplete_retries > 0 {
                (age >= INCOMPLETE_RETRY_AFTER).then_some(Request::Resolve { pid, comm })
            } else {
                (age >= REVALIDATE_AFTER).then(|| Request::Revalidate { pid, start_time, comm, pod: pod.clone() })
            };
            // A full queue only delays the check to a later lookup.
            if let Some(request) = request {
                if self.requests.as_ref().is_some_and(|tx| tx.try_send(request).is_ok()) {
                    if let Some(entry) = self.cache.peek_mut(&pid) {
                        entry.in_flight = true;
                    }
                }
            }
        }
        Lookup::Ready(resource)
    }

    /// Builds `pid`'s resource on the calling thread (the loop's fallback
    /// when spans cannot wait any longer), counted.
    pub fn resolve_now(&mut self, pid: u32) -> Arc<ProcessResource> {
        let comm = self.cache.peek(&pid).map(|e| e.comm).unwrap_or([0; 16]);
        Metrics::inc(&self.metrics.resources_resolved_inline);
        let resolved = self.builder.resolve(pid, &comm);
        let resource = Arc::clone(&resolved.resource);
        self.settle(pid, comm, resolved, INCOMPLETE_RETRIES);
        resource
    }

    /// Takes in a worker reply. Returns the process and its resource when
    /// one was built, so the spans that waited for it can go.
    pub fn on_reply(&mut self, reply: ResourceReply) -> Option<(u32, Arc<ProcessResource>)> {
        match reply.0 {
            ReplyKind::StillValid { pid } => {
                self.mark_checked(pid, false);
                None
            }
            ReplyKind::Resolved { pid, resolved } => {
                Metrics::inc(&self.metrics.resources_resolved);
                let resource = Arc::clone(&resolved.resource);
                // Not cached (evicted meanwhile, or forgotten after the
                // process exited): the reply still names what waited.
                let Some(entry) = self.cache.peek(&pid) else {
                    return Some((pid, resource));
                };
                if entry.exited {
                    self.cache.pop(&pid);
                    return Some((pid, resource));
                }
                let comm = entry.comm;
                let retries = match &entry.state {
                    State::Pending => INCOMPLETE_RETRIES,
                    // Gone before a provisional entry could be completed:
                    // what was read mid-exec (the executable) beats a bare
                    // `pid-<pid>`.
                    State::Ready { incomplete_retries, resource: provisional, .. }
                        if *incomplete_retries > 0 && resolved.start_time.is_none() =>
                    {
                        let provisional = Arc::clone(provisional);
                        self.mark_checked(pid, true);
                        return Some((pid, provisional));
                    }
                    State::Ready { incomplete_retries, .. } => incomplete_retries.saturating_sub(1),
                };
                self.settle(pid, comm, resolved, retries);
                Some((pid, resource))
            }
        }
    }

    /// The process exited: its entry goes now, or, while its resource is
    /// still being built, once the reply has come back.
    pub fn forget(&mut self, pid: u32) {
        match self.cache.peek_mut(&pid) {
            Some(entry) if matches!(entry.state, State::Pending) => entry.exited = true,
            Some(_) => {
                self.cache.pop(&pid);
            }
            None => {}
        }
    }

    /// The worker confirmed the cached resource (`final_`: and it stays as
    /// it is, provisional or not): checked now, the most recent entry.
    fn mark_checked(&mut self, pid: u32, final_: bool) {
        if let Some(entry) = self.cache.get_mut(&pid) {
            entry.in_flight = false;
            if let State::Ready { checked, incomplete_retries, .. } = &mut entry.state {
                *checked = Instant::now();
                if final_ {
                    *incomplete_retries = 0;
                }
            }
        }
    }

    /// Number of cached resources (built or being built).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    fn request(&mut self, pid: u32, comm: Comm) -> Lookup {
        let sent = self.requests.as_ref().is_some_and(|tx| tx.try_send(Request::Resolve { pid, comm }).is_ok());
        if !sent {
            // Queue full (or no worker): build it here rather than let spans
            // wait behind a queue that is not draining.
            self.cache.put(pid, Entry { state: State::Pending, comm, in_flight: false, exited: false });
            return Lookup::Ready(self.resolve_now(pid));
        }
        // At capacity, `put` evicts the least recently used entry.
        self.cache.put(pid, Entry { state: State::Pending, comm, in_flight: true, exited: false });
        Lookup::Waiting
    }

    fn settle(&mut self, pid: u32, comm: Comm, resolved: Resolved, retries_left: u8) {
        let incomplete_retries = if resolved.incomplete { retries_left } else { 0 };
        let state = State::Ready {
            resource: resolved.resource,
            start_time: resolved.start_time,
            checked: Instant::now(),
            incomplete_retries,
            pod: resolved.pod,
        };
        self.cache.put(pid, Entry { state, comm, in_flight: false, exited: false });
    }
}

fn comm_of(raw: &[u8]) -> Comm {
    let mut comm = [0; 16];
    let n = raw.len().min(comm.len());
    comm[..n].copy_from_slice(&raw[..n]);
    comm
}

/// The worker: builds what the loop asks for, in order, until the loop goes.
fn work(
    builder: &ResourceBuilder,
    mut requests: mpsc::Receiver<Request>,
    replies: mpsc::Sender<ResourceReply>,
    metrics: &Metrics,
) {
    while let Some(request) = requests.blocking_recv() {
        let reply = match request {
            Request::Resolve { pid, comm } => ReplyKind::Resolved { pid, resolved: builder.resolve(pid, &comm) },
            Request::Revalidate { pid, start_time, comm, pod } => match read_start_time(pid) {
                // The process is gone: late events of an exited process
                // still belong to it, keep the entry as it is.
                None => ReplyKind::StillValid { pid },
                current if current == start_time => match pod {
                    Some(pod) if builder.pod_is_stale(&pod) => {
                        Metrics::inc(&metrics.resources_rebuilt_for_pod);
                        tracing::debug!(pid, pod_uid = %pod.uid, "pod metadata changed; building the resource again");
                        ReplyKind::Resolved { pid, resolved: builder.resolve(pid, &comm) }
                    }
                    _ => ReplyKind::StillValid { pid },
                },
                _ => {
                    tracing::debug!(pid, "pid reused by a new process; resolving its resource again");
                    ReplyKind::Resolved { pid, resolved: builder.resolve(pid, &comm) }
                }
            },
        };
        if replies.blocking_send(ResourceReply(reply)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn resolver(capacity: usize, queue: usize) -> (ResourceResolver, ResourceReplies, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let (resolver, replies) =
            ResourceResolver::with_limits(ResourceBuilder::new(Vec::new(), 0), capacity, queue, metrics.clone());
        (resolver, replies, metrics)
    }

    fn next_reply(replies: &mut ResourceReplies) -> ResourceReply {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match replies.try_recv() {
                Ok(reply) => return reply,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("no reply from the resource worker: {e}"),
            }
        }
    }

    fn ready(lookup: Lookup) -> Arc<ProcessResource> {
        match lookup {
            Lookup::Ready(r) => r,
            Lookup::Waiting => panic!("resource not ready"),
        }
    }

    fn age(resolver: &mut ResourceResolver, pid: u32, by: Duration) {
        if let State::Ready { checked, .. } = &mut resolver.cache.peek_mut(&pid).unwrap().state {
            *checked -= by;
        }
    }

    #[test]
    fn resources_are_built_by_the_worker_and_cached() {
        let me = std::process::id();
        let (mut resolver, mut replies, metrics) = resolver(16, 16);
        resolver.observe(me, b"tester");
        assert!(matches!(resolver.lookup(me), Lookup::Waiting), "the loop never builds it itself");
        let (pid, built) = resolver.on_reply(next_reply(&mut replies)).expect("a resource");
        assert_eq!(pid, me);
        assert_eq!(built.pid, me);
        let cached = ready(resolver.lookup(me));
        assert!(Arc::ptr_eq(&built, &cached), "cached: the same Arc until forgotten");
        assert_eq!(metrics.resources_resolved.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.resources_resolved_inline.load(Ordering::Relaxed), 0);

        resolver.forget(me);
        assert!(matches!(resolver.lookup(me), Lookup::Waiting), "forgotten: built again");
        let (_, fresh) = resolver.on_reply(next_reply(&mut replies)).unwrap();
        assert!(!Arc::ptr_eq(&built, &fresh));
        assert_eq!(*built, *fresh);
    }

    #[test]
    fn resource_cache_detects_pid_reuse_and_is_bounded() {
        let me = std::process::id();
        let (mut resolver, mut replies, _) = resolver(2, 16);
        resolver.lookup(me);
        let (_, first) = resolver.on_reply(next_reply(&mut replies)).unwrap();
        // Pretend the cached entry belongs to an older process with this pid.
        if let State::Ready { start_time, .. } = &mut resolver.cache.peek_mut(&me).unwrap().state {
            *start_time = start_time.map(|t| t + 1);
        }
        age(&mut resolver, me, REVALIDATE_AFTER * 2);
        assert!(Arc::ptr_eq(&first, &ready(resolver.lookup(me))), "the cached one serves while it is checked");
        let (_, second) = resolver.on_reply(next_reply(&mut replies)).expect("a changed start time builds again");
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&second, &ready(resolver.lookup(me))));
        // Same start time after the interval: kept, and checked again later.
        age(&mut resolver, me, REVALIDATE_AFTER * 2);
        resolver.lookup(me);
        assert!(resolver.on_reply(next_reply(&mut replies)).is_none(), "still the same process");
        assert!(Arc::ptr_eq(&second, &ready(resolver.lookup(me))));

        let parent = std::os::unix::process::parent_id();
        resolver.lookup(parent);
        resolver.lookup(1);
        assert_eq!(resolver.cached(), 2);
        assert!(!resolver.cache.contains(&me), "the oldest entry is evicted");
        // Replies for evicted or forgotten entries still name the process.
        assert_eq!(resolver.on_reply(next_reply(&mut replies)).unwrap().0, parent);
        assert_eq!(resolver.on_reply(next_reply(&mut replies)).unwrap().0, 1);
    }

    #[test]
    fn exit_while_building_drops_the_entry_after_the_reply() {
        let me = std::process::id();
        let (mut resolver, mut replies, _) = resolver(16, 16);
        resolver.observe(me, b"tester");
        resolver.forget(me);
        assert_eq!(resolver.cached(), 1, "kept until the spans waiting for it are named");
        let (pid, resource) = resolver.on_reply(next_reply(&mut replies)).unwrap();
        assert_eq!((pid, resource.pid), (me, me));
        assert_eq!(resolver.cached(), 0);
    }

    #[test]
    fn a_full_queue_builds_on_the_loop_and_counts_it() {
        let me = std::process::id();
        let parent = std::os::unix::process::parent_id();
        let metrics = Arc::new(Metrics::default());
        let builder = Arc::new(ResourceBuilder::new(Vec::new(), 0));
        // A queue nobody drains, one slot.
        let (requests, _undrained) = mpsc::channel(1);
        let mut resolver = ResourceResolver {
            builder,
            requests: Some(requests),
            cache: LruCache::new(NonZeroUsize::new(16).unwrap()),
            metrics: metrics.clone(),
        };
        resolver.observe(me, b"tester");
        assert!(matches!(resolver.lookup(me), Lookup::Waiting));
        resolver.observe(parent, b"parent");
        let built = ready(resolver.lookup(parent));
        assert_eq!(built.pid, parent);
        assert_eq!(metrics.resources_resolved_inline.load(Ordering::Relaxed), 1);
    }
}
