//! Trace-context linking: gives each span the identity the kernel used.
//!
//! The kernel starts a context when a server request arrives (ServerCtx) and
//! when a client request leaves (ClientCtx, possibly with an injected
//! `traceparent`). Each event names its connection and the timestamp of the
//! syscall that carried the request's first bytes, which is exactly the
//! start of the span the parser later builds, so the two meet on
//! (connection id, start time).
//!
//! Calls without a kernel ClientCtx (SQL, or HTTP the kernel could not
//! classify) are linked through the thread: a client span started on a
//! thread while it handled a server request is that request's child.
use std::{collections::HashMap, sync::Arc};

/// Keys here are kernel-made (connection ids, times, pids): a fast hasher
/// is safe, and SipHash showed in the agent's profile.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use waggle_common::{ctx_flags, TraceCtxEvent};

use crate::metrics::Metrics;
use crate::model::{random_nonzero, ConnMeta, ParsedSpan, SpanIdentity, SpanKind};

/// Contexts whose span never showed up (parser disagreed, connection lost)
/// are dropped after this long.
const CTX_TTL_NS: u64 = 120_000_000_000;
/// Upper bound on remembered contexts (each a few dozen bytes).
const MAX_PENDING: usize = 65536;
const MAX_THREADS: usize = 65536;

impl SpanIdentity {
    fn from_event(ev: &TraceCtxEvent) -> SpanIdentity {
        SpanIdentity {
            trace_id: ev.trace_id,
            span_id: ev.span_id,
            parent_span_id: (ev.flags & ctx_flags::HAS_PARENT != 0).then_some(ev.parent_span_id),
            sampled: ev.flags & ctx_flags::SAMPLED != 0,
            injected: ev.flags & ctx_flags::INJECTED != 0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct ThreadServer {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    sampled: bool,
    since_ns: u64,
}

pub struct ContextLinker {
    /// (kind, conn_id, start ns) -> identity from the kernel.
    pending: FastMap<(bool, u64, u64), SpanIdentity>,
    /// (pid, tid) -> server request the thread is handling.
    threads: FastMap<(u32, u32), ThreadServer>,
    metrics: Arc<Metrics>,
}

fn is_server(kind: SpanKind) -> bool {
    kind == SpanKind::Server
}

impl ContextLinker {
    pub fn new(metrics: Arc<Metrics>) -> ContextLinker {
        ContextLinker { pending: FastMap::default(), threads: FastMap::default(), metrics }
    }

    /// Remembers the kernel's identity for the span starting at `key`;
    /// counted when the table is full.
    fn remember(&mut self, key: (bool, u64, u64), identity: SpanIdentity) {
        if self.pending.len() < MAX_PENDING {
            self.pending.insert(key, identity);
        } else {
            Metrics::inc(&self.metrics.contexts_dropped_full);
        }
    }

    pub fn on_server_ctx(&mut self, ev: &TraceCtxEvent) {
        let identity = SpanIdentity::from_event(ev);
        self.remember((true, ev.conn_id, ev.ts_ns), identity);
        if self.threads.len() >= MAX_THREADS && !self.threads.contains_key(&(ev.tgid, ev.tid)) {
            Metrics::inc(&self.metrics.threads_dropped_full);
        } else {
            self.threads.insert(
                (ev.tgid, ev.tid),
                ThreadServer {
                    trace_id: ev.trace_id,
                    span_id: ev.span_id,
                    sampled: identity.sampled,
                    since_ns: ev.ts_ns,
                },
            );
        }
    }

    pub fn on_client_ctx(&mut self, ev: &TraceCtxEvent) {
        self.remember((false, ev.conn_id, ev.ts_ns), SpanIdentity::from_event(ev));
    }

    /// The identity `span` must carry, if the kernel or its thread decided one.
    /// Call once per span, in completion order.
    pub fn identity_for(&mut self, span: &ParsedSpan, conn: &ConnMeta) -> Option<SpanIdentity> {
        let server = is_server(span.kind);
        let from_kernel = self.pending.remove(&(server, conn.conn_id, span.start_ns));
        if server {
            // The request is answered: the thread no longer works for it.
            let key = (conn.pid, span.tid);
            if let (Some(id), Some(thread)) = (from_kernel, self.threads.get(&key)) {
                if thread.span_id == id.span_id {
                    self.threads.remove(&key);
                }
            }
            return from_kernel;
        }
        if from_kernel.is_some() {
            return from_kernel;
        }
        let thread = self.threads.get(&(conn.pid, span.tid))?;
        if span.start_ns < thread.since_ns {
            return None;
        }
        Some(SpanIdentity {
            trace_id: thread.trace_id,
            span_id: random_nonzero::<8>(),
            parent_span_id: Some(thread.span_id),
            sampled: thread.sampled,
            injected: false,
        })
    }

    /// Process `child` was forked by thread `parent_tid` of `parent`: while
    /// that thread handles a request, the child works for it (a CGI script,
    /// a command run for the request), as the kernel decided for the
    /// child's HTTP calls; its other calls follow through here. The child
    /// keeps it until it exits or serves a request of its own.
    pub fn on_fork(&mut self, parent: u32, parent_tid: u32, child: u32) {
        self.hand_over((parent, parent_tid), (child, child));
    }

    /// Thread `tid` of process `pid` was created by thread `creator` while
    /// it handled a request: the new thread works for that request (a pool
    /// a servlet hands work to is not this; a thread started for the
    /// request is), as the kernel decided for its HTTP calls.
    pub fn on_thread_start(&mut self, pid: u32, creator: u32, tid: u32) {
        self.hand_over((pid, creator), (pid, tid));
    }

    /// `to` works for the request `from` handles, until it serves a request
    /// of its own or its process exits.
    fn hand_over(&mut self, from: (u32, u32), to: (u32, u32)) {
        let Some(&thread) = self.threads.get(&from) else { return };
        if self.threads.len() >= MAX_THREADS {
            Metrics::inc(&self.metrics.threads_dropped_full);
            return;
        }
        self.threads.insert(to, thread);
    }

    /// A thread's process is gone.
    pub fn forget_process(&mut self, pid: u32) {
        self.threads.retain(|(p, _), _| *p != pid);
    }

    /// Drops contexts whose spans never came.
    pub fn prune(&mut self, now_ns: u64) {
        let cutoff = now_ns.saturating_sub(CTX_TTL_NS);
        self.pending.retain(|(_, _, ts), _| *ts >= cutoff);
        self.threads.retain(|_, t| t.since_ns >= cutoff);
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use waggle_common::{EventKind, Role};

    use super::*;
    use crate::model::SpanStatus;

    fn ctx(kind: EventKind, conn_id: u64, ts: u64, tid: u32, span: u8, parent: Option<u8>, flags: u8) -> TraceCtxEvent {
        TraceCtxEvent {
            kind: kind as u8,
            flags: flags | if parent.is_some() { ctx_flags::HAS_PARENT } else { 0 },
            tgid: 100,
            tid,
            conn_id,
            ts_ns: ts,
            trace_id: [9; 16],
            span_id: [span; 8],
            parent_span_id: [parent.unwrap_or(0); 8],
            ..Default::default()
        }
    }

    fn span(kind: SpanKind, start: u64, tid: u32) -> ParsedSpan {
        ParsedSpan {
            kind,
            name: "x".into(),
            start_ns: start,
            end_ns: start + 1,
            status: SpanStatus::Unset,
            attributes: vec![],
            incoming_context: None,
            incoming_tracestate: None,
            tid,
        }
    }

    fn conn(conn_id: u64, role: Role) -> ConnMeta {
        ConnMeta { pid: 100, fd: 3, conn_id, role, protocol: crate::model::Protocol::Http1, peer: None, local: None }
    }

    #[test]
    fn server_http_and_sql_children_share_the_kernel_trace() {
        let mut l = ContextLinker::new(Arc::default());
        l.on_server_ctx(&ctx(EventKind::ServerCtx, 1, 1000, 7, 0xA, Some(0xE), ctx_flags::SAMPLED));
        l.on_client_ctx(&ctx(
            EventKind::ClientCtx,
            2,
            1500,
            7,
            0xB,
            Some(0xA),
            ctx_flags::SAMPLED | ctx_flags::INJECTED,
        ));
        // HTTP client call: the kernel's ids, injected.
        let http = l.identity_for(&span(SpanKind::Client, 1500, 7), &conn(2, Role::Client)).unwrap();
        assert_eq!((http.span_id, http.parent_span_id, http.injected), ([0xB; 8], Some([0xA; 8]), true));
        // SQL call on the same thread, no kernel ctx: child through the thread.
        let sql = l.identity_for(&span(SpanKind::Client, 1700, 7), &conn(3, Role::Client)).unwrap();
        assert_eq!(sql.trace_id, [9; 16]);
        assert_eq!(sql.parent_span_id, Some([0xA; 8]));
        // Another thread's call is not a child.
        assert!(l.identity_for(&span(SpanKind::Client, 1700, 8), &conn(4, Role::Client)).is_none());
        // The server span itself: kernel ids with the incoming parent; the thread is released.
        let srv = l.identity_for(&span(SpanKind::Server, 1000, 7), &conn(1, Role::Server)).unwrap();
        assert_eq!((srv.span_id, srv.parent_span_id), ([0xA; 8], Some([0xE; 8])));
        assert!(l.identity_for(&span(SpanKind::Client, 2000, 7), &conn(3, Role::Client)).is_none());
        assert_eq!(l.pending_len(), 0);
    }

    #[test]
    fn a_process_forked_while_serving_makes_the_requests_calls() {
        let mut l = ContextLinker::new(Arc::default());
        l.on_server_ctx(&ctx(EventKind::ServerCtx, 1, 1000, 7, 0xA, Some(0xE), ctx_flags::SAMPLED));
        // Thread 7 of pid 100 forks pid 300 (a CGI script); thread 8 forks 400.
        l.on_fork(100, 7, 300);
        l.on_fork(100, 8, 400);
        let child = |pid: u32| ConnMeta { pid, ..conn(3, Role::Client) };
        let sql = l.identity_for(&span(SpanKind::Client, 1500, 300), &child(300)).unwrap();
        assert_eq!((sql.trace_id, sql.parent_span_id), ([9; 16], Some([0xA; 8])));
        // A child of a thread that served nothing is no request's.
        assert!(l.identity_for(&span(SpanKind::Client, 1500, 400), &child(400)).is_none());
        // The parent answered: the child, still running for the request,
        // keeps it until it exits.
        l.identity_for(&span(SpanKind::Server, 1000, 7), &conn(1, Role::Server)).unwrap();
        assert!(l.identity_for(&span(SpanKind::Client, 2000, 300), &child(300)).is_some());
        l.forget_process(300);
        assert!(l.identity_for(&span(SpanKind::Client, 2100, 300), &child(300)).is_none());
    }

    #[test]
    fn a_thread_started_while_serving_makes_the_requests_calls() {
        let mut l = ContextLinker::new(Arc::default());
        l.on_server_ctx(&ctx(EventKind::ServerCtx, 1, 1000, 7, 0xA, Some(0xE), ctx_flags::SAMPLED));
        // Thread 7 of pid 100 starts thread 9; thread 8 (serving nothing) starts 10.
        l.on_thread_start(100, 7, 9);
        l.on_thread_start(100, 8, 10);
        let sql = l.identity_for(&span(SpanKind::Client, 1500, 9), &conn(3, Role::Client)).unwrap();
        assert_eq!((sql.trace_id, sql.parent_span_id), ([9; 16], Some([0xA; 8])));
        assert!(l.identity_for(&span(SpanKind::Client, 1500, 10), &conn(4, Role::Client)).is_none());
    }

    #[test]
    fn unmatched_contexts_expire() {
        let mut l = ContextLinker::new(Arc::default());
        l.on_server_ctx(&ctx(EventKind::ServerCtx, 1, 1000, 7, 0xA, None, ctx_flags::SAMPLED));
        l.prune(1000 + CTX_TTL_NS + 1);
        assert_eq!(l.pending_len(), 0);
        assert!(l.identity_for(&span(SpanKind::Client, 1500, 7), &conn(3, Role::Client)).is_none());
    }

    #[test]
    fn a_full_table_counts_what_it_drops() {
        let metrics = Arc::new(Metrics::default());
        let mut l = ContextLinker::new(metrics.clone());
        for i in 0..MAX_PENDING as u64 + 2 {
            l.on_client_ctx(&ctx(EventKind::ClientCtx, i + 1, 1000, 7, 0xB, None, ctx_flags::SAMPLED));
        }
        assert_eq!(l.pending_len(), MAX_PENDING);
        assert_eq!(metrics.contexts_dropped_full.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
