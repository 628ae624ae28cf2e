//! The resource (service name and attributes) of each traced process, built
//! from /proc and cached per pid (see the module docs of `discovery` for
//! attribute precedence).
use std::{
    collections::BTreeMap,
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use lru::LruCache;

use super::{
    process_facts::{read_host_name, read_start_time, ProcessFacts},
    service_name::{basename, command_of, derive_service_name, Runtime},
};
use crate::model::{parse_resource_attributes_lossy, truncate_utf8, ProcessResource};

/// Resources cached at most; the oldest (least recently revalidated) entry is
/// evicted beyond this.
pub const RESOURCE_CACHE_CAPACITY: usize = 4096;
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
/// Attributes taken from one process's OTEL_RESOURCE_ATTRIBUTES.
const MAX_PROCESS_ATTRIBUTES: usize = 64;
/// Longest service name / attribute value kept (bytes, cut on a char boundary).
const MAX_VALUE_LEN: usize = 1024;
const MAX_SERVICE_NAME_LEN: usize = 256;

pub const ATTR_HOST_NAME: &str = "host.name";
pub const ATTR_EXECUTABLE_PATH: &str = "process.executable.path";
pub const ATTR_COMMAND: &str = "process.command";
pub const ATTR_RUNTIME_NAME: &str = "process.runtime.name";
pub const ATTR_CONTAINER_ID: &str = "container.id";
const ATTR_SERVICE_NAME: &str = "service.name";

struct CacheEntry {
    resource: Arc<ProcessResource>,
    /// Process start time (clock ticks since boot); None when unreadable.
    start_time: Option<u64>,
    checked: Instant,
    /// Re-resolutions left while the process looked mid-exec; 0 = final.
    incomplete_retries: u8,
}

struct Resolved {
    resource: Arc<ProcessResource>,
    start_time: Option<u64>,
    incomplete: bool,
}

/// Builds and caches the resource of each traced process.
pub struct ResourceResolver {
    pub host_name: String,
    pub extra_attributes: Vec<(String, String)>,
    agent_tgid: u32,
    /// Recency is refreshed only by inserting and revalidating (lookups
    /// peek), so the least recently revalidated entry is evicted first.
    cache: LruCache<u32, CacheEntry>,
    /// Kernel-reported task names of processes seen opening connections, for
    /// when /proc is gone before the resource is built (same capacity; the
    /// least recently noted name goes first).
    comm_hints: LruCache<u32, String>,
}

impl ResourceResolver {
    /// `extra_attributes`: the agent-wide resource attributes (lower
    /// precedence than the process's own; see the module docs).
    /// `agent_tgid`: the agent's own resource is named `waggle` whatever its
    /// command line.
    pub fn new(extra_attributes: Vec<(String, String)>, agent_tgid: u32) -> ResourceResolver {
        Self::with_capacity(extra_attributes, agent_tgid, RESOURCE_CACHE_CAPACITY)
    }

    pub fn with_capacity(
        extra_attributes: Vec<(String, String)>,
        agent_tgid: u32,
        capacity: usize,
    ) -> ResourceResolver {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        ResourceResolver {
            host_name: read_host_name(),
            extra_attributes,
            agent_tgid,
            cache: LruCache::new(capacity),
            comm_hints: LruCache::new(capacity),
        }
    }

    /// The resource of `pid`, from the cache when the cached entry still
    /// belongs to the same process (start time checked at most once per
    /// second). Never fails: an unreadable process gets `pid-<pid>`.
    pub fn resource(&mut self, pid: u32) -> Arc<ProcessResource> {
        let now = Instant::now();
        let mut retries = INCOMPLETE_RETRIES;
        if let Some(entry) = self.cache.peek(&pid) {
            let age = now.duration_since(entry.checked);
            if entry.incomplete_retries > 0 {
                if age < INCOMPLETE_RETRY_AFTER {
                    return Arc::clone(&entry.resource);
                }
                retries = entry.incomplete_retries - 1;
            } else if age < REVALIDATE_AFTER {
                return Arc::clone(&entry.resource);
            } else {
                match read_start_time(pid) {
                    // Same process, or the process is gone (late events of an
                    // exited process still belong to it): keep the entry.
                    current if current.is_none() || current == entry.start_time => {
                        let resource = Arc::clone(&entry.resource);
                        self.touch(pid, now);
                        return resource;
                    }
                    _ => tracing::debug!(pid, "pid reused by a new process; resolving its resource again"),
                }
            }
        }
        let resolved = self.resolve(pid);
        if resolved.start_time.is_none() {
            // Gone before a provisional entry could be completed: what was
            // read mid-exec (the executable) beats a bare `pid-<pid>`.
            if let Some(entry) = self.cache.peek_mut(&pid).filter(|e| e.incomplete_retries > 0) {
                entry.incomplete_retries = 0;
                entry.checked = now;
                return Arc::clone(&entry.resource);
            }
        }
        let retries = if resolved.incomplete { retries } else { 0 };
        self.insert(pid, Arc::clone(&resolved.resource), resolved.start_time, now, retries);
        resolved.resource
    }

    pub fn forget(&mut self, pid: u32) {
        self.cache.pop(&pid);
        self.comm_hints.pop(&pid);
    }

    /// A process was seen opening a connection: resolve it now, while it is
    /// alive (a short-lived client may be gone by the time its span is
    /// built). `comm` (the kernel's task name) names it if /proc already is.
    pub fn observe(&mut self, pid: u32, comm: &[u8]) {
        let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
        let comm = String::from_utf8_lossy(&comm[..end]).into_owned();
        if !comm.is_empty() {
            self.comm_hints.put(pid, comm);
        }
        let _ = self.resource(pid);
    }

    /// Number of cached resources.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Revalidated: the entry becomes the most recent.
    fn touch(&mut self, pid: u32, now: Instant) {
        if let Some(entry) = self.cache.get_mut(&pid) {
            entry.checked = now;
        }
    }

    fn insert(
        &mut self,
        pid: u32,
        resource: Arc<ProcessResource>,
        start_time: Option<u64>,
        now: Instant,
        incomplete_retries: u8,
    ) {
        self.forget(pid);
        // At capacity, `put` evicts the least recently used entry.
        self.cache.put(pid, CacheEntry { resource, start_time, checked: now, incomplete_retries });
    }

    fn resolve(&self, pid: u32) -> Resolved {
        let mut facts = match ProcessFacts::read(pid) {
            Ok(facts) => facts,
            Err(e) => {
                tracing::debug!(pid, error = %e, "process unreadable; using a pid-based resource");
                ProcessFacts::default()
            }
        };
        if facts.comm.is_empty() {
            if let Some(comm) = self.comm_hints.peek(&pid) {
                facts.comm = comm.clone();
            }
        }
        // Kernel threads have neither exe nor argv; a user process with an
        // executable but no argv is most likely still inside execve.
        let incomplete = facts.exe_path.is_some() && facts.argv.is_empty();
        let start_time = facts.start_time;
        Resolved { resource: Arc::new(self.build(pid, facts)), start_time, incomplete }
    }

    fn build(&self, pid: u32, facts: ProcessFacts) -> ProcessResource {
        let exe_path = facts.exe_path.as_deref().unwrap_or("");
        let exe_name = basename(exe_path);
        let executable_name = if !exe_name.is_empty() {
            exe_name.to_owned()
        } else if let Some(argv0) = facts.argv.first().map(|a| basename(command_of(a))).filter(|n| !n.is_empty()) {
            argv0.to_owned()
        } else if !facts.comm.is_empty() {
            facts.comm.clone()
        } else {
            format!("pid-{pid}")
        };

        let mut attrs: BTreeMap<String, String> = BTreeMap::new();
        if !self.host_name.is_empty() {
            attrs.insert(ATTR_HOST_NAME.into(), self.host_name.clone());
        }
        if !exe_path.is_empty() {
            attrs.insert(ATTR_EXECUTABLE_PATH.into(), truncate_utf8(exe_path, MAX_VALUE_LEN));
        }
        if let Some(argv0) = facts.argv.first() {
            let command = command_of(argv0);
            if !command.is_empty() {
                attrs.insert(ATTR_COMMAND.into(), truncate_utf8(command, MAX_VALUE_LEN));
            }
        }
        let argv0_name = facts.argv.first().map(|a| basename(command_of(a))).unwrap_or("");
        if let Some(runtime) = Runtime::detect(exe_name, argv0_name) {
            attrs.insert(ATTR_RUNTIME_NAME.into(), runtime.runtime_name(exe_name, argv0_name).into());
        }
        if let Some(id) = facts.container_id {
            attrs.insert(ATTR_CONTAINER_ID.into(), id);
        }
        for (k, v) in &self.extra_attributes {
            attrs.insert(k.clone(), v.clone());
        }
        let own = facts
            .resource_attributes
            .as_deref()
            .map(|raw| {
                parse_resource_attributes_lossy(raw, |e| {
                    tracing::debug!(pid, error = %e, "skipping malformed resource attribute");
                })
            })
            .unwrap_or_default();
        let mut own_service_name = None;
        for (k, v) in own.into_iter().take(MAX_PROCESS_ATTRIBUTES) {
            if k == ATTR_SERVICE_NAME {
                own_service_name = Some(v);
            } else {
                attrs.insert(k, truncate_utf8(&v, MAX_VALUE_LEN));
            }
        }
        attrs.remove(ATTR_SERVICE_NAME);

        let service_name = if pid == self.agent_tgid && pid != 0 {
            "waggle".to_owned()
        } else {
            let derived = || {
                let name = derive_service_name(exe_name, &facts.argv);
                if !name.is_empty() {
                    name
                } else if !facts.comm.is_empty() {
                    facts.comm.clone()
                } else {
                    format!("pid-{pid}")
                }
            };
            facts
                .service_name
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().to_owned())
                .or(own_service_name.filter(|s| !s.is_empty()))
                .unwrap_or_else(derived)
        };

        ProcessResource {
            service_name: truncate_utf8(&service_name, MAX_SERVICE_NAME_LEN),
            pid,
            executable_name: truncate_utf8(&executable_name, MAX_SERVICE_NAME_LEN),
            attributes: attrs.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::test_support::{python, spawn_http_server, spawn_python, wait_exec_done},
        *,
    };

    fn attr<'a>(r: &'a ProcessResource, key: &str) -> Option<&'a str> {
        r.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn resource_resolved_mid_exec_is_provisional() {
        let mut provisional_seen = 0;
        for _ in 0..10 {
            // Resolve the instant spawn() returns: often before argv exists.
            let child =
                spawn_python(&["-m", "http.server", "0", "--bind", "127.0.0.1"], &[("OTEL_SERVICE_NAME", "early")]);
            let mut resolver = ResourceResolver::new(Vec::new(), 0);
            if resolver.resource(child.pid()).service_name != "early" {
                provisional_seen += 1;
            }
            wait_exec_done(&child);
            std::thread::sleep(INCOMPLETE_RETRY_AFTER * 2);
            let r = resolver.resource(child.pid());
            assert_eq!(r.service_name, "early");
            assert_eq!(resolver.cache.peek(&child.pid()).unwrap().incomplete_retries, 0, "final once argv is known");
        }
        eprintln!("provisional resources seen: {provisional_seen}/10");
    }

    #[test]
    fn resource_of_python_module() {
        let server = spawn_http_server(&[]);
        let mut resolver = ResourceResolver::new(Vec::new(), std::process::id());
        let r = resolver.resource(server.pid());
        assert_eq!(r.service_name, "http.server");
        assert_eq!(r.pid, server.pid());
        assert!(r.executable_name.starts_with("python"), "{r:?}");
        assert_eq!(attr(&r, ATTR_RUNTIME_NAME), Some("cpython"));
        assert_eq!(attr(&r, ATTR_COMMAND), Some(python()), "argv[0] only");
        assert!(attr(&r, ATTR_EXECUTABLE_PATH).unwrap().ends_with(&r.executable_name));
        assert_eq!(attr(&r, ATTR_HOST_NAME), Some(resolver.host_name.as_str()));
        assert!(!resolver.host_name.is_empty());
        assert!(r.attributes.iter().all(|(_, v)| !v.contains("http.server")), "no argv beyond argv[0]");
        assert!(r.attributes.windows(2).all(|w| w[0].0 < w[1].0), "sorted by key: {:?}", r.attributes);
        assert!(attr(&r, "service.name").is_none());

        // Cached: the same Arc until forgotten.
        let again = resolver.resource(server.pid());
        assert!(Arc::ptr_eq(&r, &again));
        resolver.forget(server.pid());
        let fresh = resolver.resource(server.pid());
        assert!(!Arc::ptr_eq(&r, &fresh));
        assert_eq!(*r, *fresh);
    }

    #[test]
    fn resource_honours_process_otel_env() {
        let named = spawn_http_server(&[("OTEL_SERVICE_NAME", "foo")]);
        let attributed = spawn_http_server(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=bar, deployment.environment=prod%20eu,team=own,broken=%zz",
        )]);
        let both = spawn_http_server(&[("OTEL_SERVICE_NAME", "foo"), ("OTEL_RESOURCE_ATTRIBUTES", "service.name=bar")]);
        let extra = vec![
            ("team".to_owned(), "agent".to_owned()),
            ("k8s.cluster.name".to_owned(), "c1".to_owned()),
            ("service.name".to_owned(), "ignored".to_owned()),
        ];
        let mut resolver = ResourceResolver::new(extra, 0);

        assert_eq!(resolver.resource(named.pid()).service_name, "foo");
        let r = resolver.resource(attributed.pid());
        assert_eq!(r.service_name, "bar");
        assert_eq!(attr(&r, "deployment.environment"), Some("prod eu"));
        assert_eq!(attr(&r, "team"), Some("own"), "the process's own attributes win");
        assert_eq!(attr(&r, "k8s.cluster.name"), Some("c1"));
        assert_eq!(attr(&r, "broken"), None);
        assert_eq!(attr(&r, "service.name"), None);
        assert_eq!(resolver.resource(both.pid()).service_name, "foo");
        // The agent-wide service.name never names a process.
        let plain = spawn_http_server(&[]);
        assert_eq!(resolver.resource(plain.pid()).service_name, "http.server");
    }

    #[test]
    fn resource_of_vanished_process_falls_back() {
        let mut child = spawn_http_server(&[]);
        let pid = child.pid();
        child.child.kill().unwrap();
        child.child.wait().unwrap();
        let mut resolver = ResourceResolver::new(vec![("a".into(), "b".into())], 0);
        let r = resolver.resource(pid);
        assert_eq!(r.service_name, format!("pid-{pid}"));
        assert_eq!(r.executable_name, format!("pid-{pid}"));
        assert_eq!(attr(&r, "a"), Some("b"));
    }

    #[test]
    fn resource_cache_detects_pid_reuse_and_is_bounded() {
        let me = std::process::id();
        let mut resolver = ResourceResolver::with_capacity(Vec::new(), 0, 2);
        let first = resolver.resource(me);
        assert_eq!(resolver.cache.peek(&me).unwrap().incomplete_retries, 0);
        // Pretend the cached entry belongs to an older process with this pid.
        let entry = resolver.cache.peek_mut(&me).unwrap();
        entry.start_time = entry.start_time.map(|t| t + 1);
        entry.checked = Instant::now() - REVALIDATE_AFTER * 2;
        let second = resolver.resource(me);
        assert!(!Arc::ptr_eq(&first, &second), "a changed start time must resolve again");
        // Same start time after the interval: kept.
        resolver.cache.peek_mut(&me).unwrap().checked = Instant::now() - REVALIDATE_AFTER * 2;
        assert!(Arc::ptr_eq(&second, &resolver.resource(me)));

        let parent = std::os::unix::process::parent_id();
        resolver.resource(parent);
        resolver.resource(1);
        assert_eq!(resolver.cached(), 2);
        assert!(!resolver.cache.contains(&me), "the oldest entry is evicted");
        assert!(resolver.cache.contains(&parent) && resolver.cache.contains(&1));
    }

    #[test]
    fn agent_resource_is_named_waggle() {
        let me = std::process::id();
        let mut resolver = ResourceResolver::new(Vec::new(), me);
        assert_eq!(resolver.resource(me).service_name, "waggle");
    }
}
