//! The tracker against a fake kernel and /proc: detection, muting, eviction, seeding.
use std::sync::atomic::Ordering;

use waggle_common::EventKind;

use super::*;
use crate::{
    model::{AttrValue, SpanKind, SpanStatus},
    protocols::{Confidence, ProtocolDetector},
};

/// A toy line protocol: the requester sends `REQ <name>`, the other side
/// answers anything; `BAD` loses sync, `TLS` makes the stream opaque.
struct LineDetector;
struct LineParser {
    role: Role,
    open: Option<(String, u64, u32)>,
    starttls: bool,
}

fn request_direction(role: Role) -> Direction {
    if role == Role::Server {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

impl ProtocolDetector for LineDetector {
    // Stands in for a real protocol; only its identity is checked.
    fn protocol(&self) -> Protocol {
        Protocol::Http1
    }
    fn detect(&self, role: Role, chunk: &Chunk<'_>) -> Confidence {
        if chunk.direction != request_direction(role) {
            return Confidence::No;
        }
        if chunk.bytes.starts_with(b"REQ ") {
            Confidence::Yes
        } else if b"REQ ".starts_with(chunk.bytes) {
            Confidence::NeedMore
        } else {
            Confidence::No
        }
    }
    fn new_parser(&self, role: Role, _config: &ParserConfig) -> Box<dyn ProtocolParser> {
        Box::new(LineParser { role, open: None, starttls: false })
    }
}

impl ProtocolParser for LineParser {
    fn protocol(&self) -> Protocol {
        Protocol::Http1
    }
    fn on_data(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        if chunk.bytes.starts_with(b"BAD") {
            return Feed::LostSync("bad");
        }
        if chunk.bytes.starts_with(b"TLS") {
            return Feed::Opaque("tls");
        }
        // An in-band switch to TLS (as MySQL's SSL request): the parser
        // keeps what it knows for the plaintext the TLS probes read.
        self.starttls = chunk.bytes.starts_with(b"STARTTLS");
        if self.starttls {
            return Feed::Opaque("starttls");
        }
        if chunk.direction == request_direction(self.role) {
            let name = String::from_utf8_lossy(chunk.bytes).into_owned();
            let start = if self.role == Role::Server { chunk.exit_ns } else { chunk.enter_ns };
            self.open = Some((name, start, chunk.tid));
        } else if let Some((name, start_ns, tid)) = self.open.take() {
            out.push(ParsedSpan {
                kind: if self.role == Role::Server { SpanKind::Server } else { SpanKind::Client },
                name: name.into(),
                start_ns,
                end_ns: chunk.exit_ns,
                status: SpanStatus::Unset,
                attributes: Vec::new(),
                incoming_context: None,
                incoming_tracestate: None,
                tid,
            });
        }
        Feed::Continue
    }
    fn on_close(&mut self, _ts_ns: u64, _out: &mut Vec<ParsedSpan>) {}
    fn resumes_after_tls(&self) -> bool {
        self.starttls
    }
}

static TEST_DETECTORS: &[&dyn ProtocolDetector] = &[&LineDetector];

#[derive(Default)]
struct FakeEnv {
    muted: Vec<SockKey>,
    /// The connection each mute named (the descriptor may be reused).
    muted_ids: Vec<u64>,
    tracked: Vec<(SockKey, ConnInfo)>,
    forgotten: Vec<SockKey>,
    forgotten_ids: Vec<u64>,
    own_ports: Vec<u16>,
    addrs: Option<(SocketAddr, SocketAddr)>,
    /// Calls that would cost syscalls or /proc reads in the live agent.
    lookups: usize,
    own_checks: usize,
    /// Connections whose TLS plaintext capture was switched off.
    muted_tls: Vec<u64>,
}

impl ConnEnvironment for FakeEnv {
    fn mute(&mut self, key: SockKey, conn_id: u64) {
        self.muted.push(key);
        self.muted_ids.push(conn_id);
    }
    fn mute_tls(&mut self, _key: SockKey, conn_id: u64) {
        self.muted_tls.push(conn_id);
    }
    fn track(&mut self, key: SockKey, info: ConnInfo) {
        self.tracked.push((key, info));
    }
    fn forget(&mut self, key: SockKey, conn_id: u64) {
        self.forgotten.push(key);
        self.forgotten_ids.push(conn_id);
    }
    fn socket_addrs(&mut self, _pid: u32, _fd: u32) -> Option<(SocketAddr, SocketAddr)> {
        self.lookups += 1;
        self.addrs
    }
    fn is_own_socket(&mut self, peer: SocketAddr, _opened_ns: u64) -> bool {
        self.own_checks += 1;
        self.own_ports.contains(&peer.port())
    }
}

fn tracker() -> (ConnTracker, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let t = ConnTracker::new(ParserConfig::default(), metrics.clone(), 1024).with_detectors(TEST_DETECTORS);
    (t, metrics)
}

fn open_event(kind: EventKind, pid: u32, fd: u32, conn_id: u64, role: Role, peer_port: u16) -> ConnEvent {
    let mut peer_addr = [0u8; 16];
    peer_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    ConnEvent {
        kind: kind as u8,
        role: role as u8,
        family: libc::AF_INET as u8,
        tgid: pid,
        tid: pid,
        fd,
        conn_id,
        ts_ns: 1,
        peer_addr,
        peer_port,
        ..Default::default()
    }
}

fn data(conn_id: u64, pid: u32, fd: u32, role: Role, dir: Direction, len: u64, t: u64) -> DataEvent {
    DataEvent {
        kind: EventKind::Data as u8,
        direction: dir as u8,
        role: role as u8,
        tgid: pid,
        tid: pid + 1,
        fd,
        conn_id,
        total_len: len,
        enter_ns: t,
        exit_ns: t + 10,
        ..Default::default()
    }
}

fn feed(t: &mut ConnTracker, env: &mut FakeEnv, ev: DataEvent, bytes: &[u8]) -> Vec<ConnSpan> {
    let mut out = Vec::new();
    t.on_data(&ev, bytes, env, &mut out);
    out
}

#[test]
fn server_exchange_carries_connection_identity() {
    let (mut t, _) = tracker();
    let mut env = FakeEnv::default();
    t.on_open(&open_event(EventKind::ConnOpen, 10, 5, 77, Role::Server, 40000), &mut env);
    assert!(feed(&mut t, &mut env, data(77, 10, 5, Role::Server, Direction::Ingress, 6, 100), b"REQ /a").is_empty());
    let spans = feed(&mut t, &mut env, data(77, 10, 5, Role::Server, Direction::Egress, 2, 200), b"OK");
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.span.name, "REQ /a");
    assert_eq!((s.span.start_ns, s.span.end_ns), (110, 210));
    assert_eq!(s.conn.pid, 10);
    assert_eq!(s.conn.protocol, Protocol::Http1);
    assert_eq!(s.conn.peer, Some("127.0.0.1:40000".parse().unwrap()));
}

#[test]
fn one_byte_writes_are_joined_for_detection() {
    let (mut t, _) = tracker();
    let mut env = FakeEnv::default();
    t.on_open(&open_event(EventKind::ConnOpen, 10, 5, 1, Role::Client, 80), &mut env);
    for (i, b) in b"REQ ".iter().enumerate() {
        let out =
            feed(&mut t, &mut env, data(1, 10, 5, Role::Client, Direction::Egress, 1, 100 + i as u64 * 100), &[*b]);
        assert!(out.is_empty());
    }
    let spans = feed(&mut t, &mut env, data(1, 10, 5, Role::Client, Direction::Ingress, 2, 1000), b"OK");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span.name, "REQ ");
    assert_eq!(spans[0].span.start_ns, 100, "starts when the first byte was written");
    assert!(env.muted.is_empty());
}

#[test]
fn unknown_protocol_is_muted_and_counted() {
    let (mut t, m) = tracker();
    let mut env = FakeEnv::default();
    t.on_open(&open_event(EventKind::ConnOpen, 10, 5, 1, Role::Server, 9), &mut env);
    for i in 0..DETECT_ATTEMPTS_FRESH {
        feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Ingress, 4, i as u64), b"SSH-");
    }
    assert_eq!(env.muted, vec![SockKey { tgid: 10, fd: 5 }]);
    assert_eq!(env.muted_ids, vec![1], "the mute names the connection, not just its descriptor");
    assert_eq!(m.protocol_unknown.load(Ordering::Relaxed), 1);
    // Muted connections produce nothing afterwards.
    assert!(feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Ingress, 6, 50), b"REQ /a").is_empty());
}

#[test]
fn lost_sync_is_counted_and_redetected() {
    let (mut t, m) = tracker();
    let mut env = FakeEnv::default();
    t.on_open(&open_event(EventKind::ConnOpen, 10, 5, 1, Role::Server, 9), &mut env);
    feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Ingress, 6, 1), b"REQ /a");
    feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Egress, 3, 2), b"BAD");
    assert_eq!(m.parse_failures.load(Ordering::Relaxed), 1);
    feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Ingress, 6, 3), b"REQ /b");
    let spans = feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Egress, 2, 4), b"OK");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span.name, "REQ /b");
}

#[test]
fn opaque_stream_mutes_in_kernel() {
    let (mut t, _) = tracker();
    let mut env = FakeEnv::default();
    t.on_open(&open_event(EventKind::ConnOpen, 10, 5, 1, Role::Server, 9), &mut env);
    feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Ingress, 6, 1), b"REQ /a");
    feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Egress, 3, 2), b"TLS");
    assert_eq!(env.muted.len(), 1);
}

#[test]
fn descriptor_reuse_and_lost_open_events() {
    let (mut t, m) = tracker();
    let mut env = FakeEnv::default();
    t.on_open(&open_event(EventKind::ConnOpen, 10, 5, 1, Role::Server, 9), &mut env);
    t.on_open(&open_event(EventKind::ConnOpen, 10, 5, 2, Role::Server, 10), &mut env);
    assert_eq!(t.len(), 1, "a reused descriptor replaces the old connection");
    assert_eq!(m.conns_replaced.load(Ordering::Relaxed), 1);
    // Data for a connection whose open we never saw is adopted.
    feed(&mut t, &mut env, data(3, 11, 6, Role::Server, Direction::Ingress, 6, 1), b"REQ /c");
    assert_eq!(m.data_events_untracked.load(Ordering::Relaxed), 1);
    let spans = feed(&mut t, &mut env, data(3, 11, 6, Role::Server, Direction::Egress, 2, 2), b"OK");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].conn.pid, 11);
}

#[test]
fn agent_export_traffic_is_never_traced() {
    let (mut t, _) = tracker();
    let mut env = FakeEnv { own_ports: vec![45000], ..Default::default() };
    t.on_open(&open_event(EventKind::ConnOpen, 10, 5, 1, Role::Server, 45000), &mut env);
    assert_eq!(env.muted, vec![SockKey { tgid: 10, fd: 5 }]);
    // Payload queued before the mute reached the kernel is ignored, not
    // adopted as a fresh connection.
    feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Ingress, 6, 1), b"REQ /v1/traces");
    let spans = feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Egress, 2, 2), b"OK");
    assert!(spans.is_empty());
}

/// An open event whose addresses the kernel read from the socket.
fn socket_open_event(pid: u32, fd: u32, conn_id: u64, role: Role, local_port: u16, peer_port: u16) -> ConnEvent {
    let mut ev = open_event(EventKind::ConnOpen, pid, fd, conn_id, role, peer_port);
    ev.flags = conn_event_flags::FROM_SOCKET;
    ev.local_addr[..4].copy_from_slice(&[10, 0, 0, 7]);
    ev.local_port = local_port;
    ev
}

#[test]
fn a_socket_the_kernel_read_costs_no_lookup() {
    let (mut t, m) = tracker();
    // Even a peer port the environment would call ours: the kernel has
    // already skipped the agent's own connections, so nothing is asked.
    let mut env = FakeEnv { own_ports: vec![45000], ..Default::default() };
    t.on_open(&socket_open_event(10, 5, 1, Role::Server, 8080, 45000), &mut env);
    feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Ingress, 6, 1), b"REQ /a");
    let spans = feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Egress, 2, 2), b"OK");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].conn.local, Some("10.0.0.7:8080".parse().unwrap()));
    assert_eq!(spans[0].conn.peer, Some("127.0.0.1:45000".parse().unwrap()));
    assert_eq!((env.lookups, env.own_checks), (0, 0));
    assert!(env.muted.is_empty());
    assert_eq!(m.conn_addr_lookups.load(Ordering::Relaxed), 0);

    // Without the kernel's reading, the first span costs one lookup.
    t.on_open(&open_event(EventKind::ConnOpen, 10, 6, 2, Role::Server, 45001), &mut env);
    feed(&mut t, &mut env, data(2, 10, 6, Role::Server, Direction::Ingress, 6, 3), b"REQ /b");
    feed(&mut t, &mut env, data(2, 10, 6, Role::Server, Direction::Egress, 2, 4), b"OK");
    assert_eq!((env.lookups, env.own_checks), (1, 1));
    assert_eq!(m.conn_addr_lookups.load(Ordering::Relaxed), 1);
}

#[test]
fn a_fork_copies_the_parents_connections() {
    let (mut t, _) = tracker();
    let mut env = FakeEnv::default();
    t.on_open(&socket_open_event(10, 5, 1, Role::Server, 8080, 40000), &mut env);
    t.on_open(&open_event(EventKind::ConnOpen, 10, 6, 2, Role::Client, 5432), &mut env);
    t.on_open(&open_event(EventKind::ConnOpen, 12, 5, 3, Role::Server, 40001), &mut env);
    let asked_before = (env.lookups, env.own_checks);
    assert_eq!(t.on_fork(10, 20, &mut env, 7), 2);
    assert_eq!(t.len(), 5);
    let keys: Vec<SockKey> = env.tracked.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, vec![SockKey { tgid: 20, fd: 5 }, SockKey { tgid: 20, fd: 6 }]);
    assert!(env.tracked.iter().all(|(_, info)| info.conn_id & USERSPACE_CONN_ID_BIT != 0));
    assert_eq!(env.tracked[0].1.role, Role::Server as u8);
    assert_eq!(env.tracked[1].1.role, Role::Client as u8);
    assert_eq!((env.lookups, env.own_checks), asked_before, "nothing read from /proc or the sockets");
    // The child's copy parses on its own and names the child.
    let id = env.tracked[0].1.conn_id;
    feed(&mut t, &mut env, data(id, 20, 5, Role::Server, Direction::Ingress, 6, 8), b"REQ /f");
    let spans = feed(&mut t, &mut env, data(id, 20, 5, Role::Server, Direction::Egress, 2, 9), b"OK");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].conn.pid, 20);
    assert_eq!(spans[0].conn.local, Some("10.0.0.7:8080".parse().unwrap()));
    assert_eq!(spans[0].conn.peer, Some("127.0.0.1:40000".parse().unwrap()));
}

#[test]
fn a_connection_the_kernel_copied_at_fork_is_the_childs_own_and_not_copied_again() {
    let (mut t, _) = tracker();
    let mut env = FakeEnv::default();
    t.on_open(&socket_open_event(10, 5, 1, Role::Server, 8080, 40000), &mut env);
    t.on_open(&open_event(EventKind::ConnOpen, 10, 6, 2, Role::Client, 5432), &mut env);
    // The kernel copied fd 5 (the accepted connection) under id 77; fd 6 it
    // did not (say the insert failed): userspace copies only that one.
    let mut inherited = open_event(EventKind::ConnInherited, 20, 5, 77, Role::Server, 0);
    inherited.tid = 10;
    t.on_inherit(&inherited, 6);
    assert_eq!(t.on_fork(10, 20, &mut env, 7), 1);
    let keys: Vec<SockKey> = env.tracked.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, vec![SockKey { tgid: 20, fd: 6 }], "the kernel's copy is not overwritten");
    // The parent closes its copy at once (accept-then-fork): the child's
    // connection lives on and parses the request it reads.
    let mut out = Vec::new();
    t.on_close(&open_event(EventKind::ConnClose, 10, 5, 1, Role::Server, 9), &mut out);
    feed(&mut t, &mut env, data(77, 20, 5, Role::Server, Direction::Ingress, 6, 8), b"REQ /f");
    let spans = feed(&mut t, &mut env, data(77, 20, 5, Role::Server, Direction::Egress, 2, 9), b"OK");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].conn.pid, 20);
    assert_eq!(spans[0].conn.local, Some("10.0.0.7:8080".parse().unwrap()));
    assert_eq!(spans[0].conn.peer, Some("127.0.0.1:40000".parse().unwrap()));
}

#[test]
fn close_and_exit_forget_connections() {
    let (mut t, _) = tracker();
    let mut env = FakeEnv::default();
    t.on_open(&open_event(EventKind::ConnOpen, 10, 5, 1, Role::Server, 9), &mut env);
    t.on_open(&open_event(EventKind::ConnOpen, 10, 6, 2, Role::Server, 9), &mut env);
    t.on_open(&open_event(EventKind::ConnOpen, 12, 6, 3, Role::Server, 9), &mut env);
    let mut out = Vec::new();
    t.on_close(&open_event(EventKind::ConnClose, 10, 5, 1, Role::Server, 9), &mut out);
    assert_eq!(t.len(), 2);
    t.on_process_exit(10, 5, &mut env, &mut out);
    assert_eq!(t.len(), 1);
    assert_eq!(env.forgotten, vec![SockKey { tgid: 10, fd: 6 }]);
    assert_eq!(env.forgotten_ids, vec![2]);
}

#[test]
fn seeded_connection_wins_over_racing_open() {
    let (mut t, _) = tracker();
    let mut env = FakeEnv::default();
    let local: SocketAddr = "127.0.0.1:80".parse().unwrap();
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    t.seed(SockKey { tgid: 10, fd: 5 }, Role::Server, local, peer, &mut env, 0);
    let (key, info) = env.tracked[0];
    assert_eq!(key, SockKey { tgid: 10, fd: 5 });
    assert!(info.conn_id & USERSPACE_CONN_ID_BIT != 0);
    t.on_open(&open_event(EventKind::ConnOpen, 10, 5, 99, Role::Server, 9), &mut env);
    assert_eq!(t.len(), 1);
    feed(&mut t, &mut env, data(info.conn_id, 10, 5, Role::Server, Direction::Ingress, 6, 1), b"REQ /s");
    let spans = feed(&mut t, &mut env, data(info.conn_id, 10, 5, Role::Server, Direction::Egress, 2, 2), b"OK");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].conn.local, Some(local));
}

#[test]
fn table_is_bounded() {
    let metrics = Arc::new(Metrics::default());
    let mut t = ConnTracker::new(ParserConfig::default(), metrics.clone(), 16).with_detectors(TEST_DETECTORS);
    let mut env = FakeEnv::default();
    for i in 0..40u32 {
        let mut ev = open_event(EventKind::ConnOpen, 10, i, u64::from(i) + 1, Role::Server, 9);
        ev.ts_ns = u64::from(i);
        t.on_open(&ev, &mut env);
    }
    assert_eq!(t.len(), 16);
    assert_eq!(metrics.conns_evicted.load(Ordering::Relaxed), 24);
}

#[test]
fn eviction_takes_the_least_recently_active() {
    let metrics = Arc::new(Metrics::default());
    let mut t = ConnTracker::new(ParserConfig::default(), metrics.clone(), 16).with_detectors(TEST_DETECTORS);
    let mut env = FakeEnv::default();
    for i in 0..16u32 {
        t.on_open(&open_event(EventKind::ConnOpen, 10, i, u64::from(i) + 1, Role::Server, 9), &mut env);
    }
    // Connection 1 (the oldest) is active again; connection 2 is now the
    // least recently active and goes when a 17th arrives.
    feed(&mut t, &mut env, data(1, 10, 0, Role::Server, Direction::Ingress, 6, 1), b"REQ /a");
    t.on_open(&open_event(EventKind::ConnOpen, 10, 99, 100, Role::Server, 9), &mut env);
    assert_eq!(metrics.conns_evicted.load(Ordering::Relaxed), 1);
    feed(&mut t, &mut env, data(1, 10, 0, Role::Server, Direction::Egress, 2, 2), b"OK");
    assert_eq!(metrics.data_events_untracked.load(Ordering::Relaxed), 0, "connection 1 was kept");
    feed(&mut t, &mut env, data(2, 10, 1, Role::Server, Direction::Ingress, 6, 3), b"REQ /b");
    assert_eq!(metrics.data_events_untracked.load(Ordering::Relaxed), 1, "connection 2 was evicted");
}

#[test]
fn buffers_beyond_the_budget_are_dropped_and_counted() {
    let metrics = Arc::new(Metrics::default());
    // Room for one detection buffer of a few bytes, not two.
    let mut t = ConnTracker::new(ParserConfig::default(), metrics.clone(), 1024)
        .with_detectors(TEST_DETECTORS)
        .with_buffer_budget(4);
    let mut env = FakeEnv::default();
    t.on_open(&open_event(EventKind::ConnOpen, 10, 5, 1, Role::Server, 9), &mut env);
    t.on_open(&open_event(EventKind::ConnOpen, 10, 6, 2, Role::Server, 9), &mut env);
    // "RE" needs more bytes before it can be recognised: it is buffered.
    feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Ingress, 2, 1), b"RE");
    assert_eq!(t.buffered_bytes(), 2);
    assert_eq!(metrics.buffers_dropped_over_budget.load(Ordering::Relaxed), 0);
    feed(&mut t, &mut env, data(2, 10, 6, Role::Server, Direction::Ingress, 3, 2), b"REQ");
    assert_eq!(metrics.buffers_dropped_over_budget.load(Ordering::Relaxed), 1, "the second buffer did not fit");
    assert_eq!(t.buffered_bytes(), 2);
    // The connection that gave its state up starts over at its next message.
    feed(&mut t, &mut env, data(2, 10, 6, Role::Server, Direction::Ingress, 6, 3), b"REQ /b");
    let spans = feed(&mut t, &mut env, data(2, 10, 6, Role::Server, Direction::Egress, 2, 4), b"OK");
    assert_eq!(spans.len(), 1);
    // Closing frees what a connection held.
    let mut out = Vec::new();
    t.on_close(&open_event(EventKind::ConnClose, 10, 5, 1, Role::Server, 9), &mut out);
    t.on_close(&open_event(EventKind::ConnClose, 10, 6, 2, Role::Server, 9), &mut out);
    assert_eq!(t.buffered_bytes(), 0);
}

/// The real detectors and HTTP/1 parser behind one open server connection
/// (pid 10, fd 5, id 77), and an assembler, for measuring the hot path.
struct HttpServer {
    t: ConnTracker,
    env: FakeEnv,
    assembler: crate::assembly::SpanAssembler,
    resource: Arc<crate::model::ProcessResource>,
}

fn http_server() -> HttpServer {
    use crate::{assembly::SpanAssembler, clock::Clock, config::Sampler, model::ProcessResource};
    let mut t = ConnTracker::new(ParserConfig::default(), Arc::new(Metrics::default()), 1024);
    let mut env = FakeEnv::default();
    t.on_open(&open_event(EventKind::ConnOpen, 10, 5, 77, Role::Server, 40000), &mut env);
    let resource = Arc::new(ProcessResource {
        service_name: "shop".into(),
        pid: 10,
        executable_name: "shop".into(),
        attributes: Vec::new(),
    });
    HttpServer { t, env, assembler: SpanAssembler::new(Clock::new(), Sampler::AlwaysOn, true), resource }
}

/// The hot path's allocation budget, measured on the real HTTP/1 parser and
/// the assembler: a record that finishes nothing allocates nothing, and a
/// keep-alive exchange of a path, host and user agent seen before allocates
/// only its attribute list and the boxed exchange while its response body
/// is read (the repeating strings are shared, `protocols/http1/strings.rs`;
/// 9 allocations before that); addresses and fixed words are shared, so
/// assembly allocates nothing.
#[test]
fn keep_alive_exchanges_stay_within_their_allocation_budget() {
    use crate::allocator::counting::allocations;
    let HttpServer { mut t, mut env, mut assembler, resource } = http_server();
    let head: &[u8] = b"GET /api/users/42 HTTP/1.1\r\nHost: shop.internal:8080\r\nUser-Agent: curl/8.5.0\r\n";
    let rest: &[u8] = b"Accept: */*\r\n\r\n";
    let response: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut out = Vec::with_capacity(4);
    let mut exchange = |i: u64, out: &mut Vec<ConnSpan>| -> (u64, u64, u64) {
        let t0 = i * 1000;
        let before = allocations();
        // The head arrives in two reads: the first finishes nothing.
        t.on_data(&data(77, 10, 5, Role::Server, Direction::Ingress, head.len() as u64, t0), head, &mut env, out);
        let partial = allocations() - before;
        t.on_data(&data(77, 10, 5, Role::Server, Direction::Ingress, rest.len() as u64, t0 + 1), rest, &mut env, out);
        t.on_data(
            &data(77, 10, 5, Role::Server, Direction::Egress, response.len() as u64, t0 + 2),
            response,
            &mut env,
            out,
        );
        let parsed = allocations() - before;
        assert_eq!(out.len(), 1, "exchange {i}");
        let ConnSpan { span, conn } = out.pop().unwrap();
        let before_assembly = allocations();
        let finished = assembler.assemble(span, &conn, Arc::clone(&resource), None).expect("sampled");
        let assembled = allocations() - before_assembly;
        drop(finished);
        (partial, parsed, assembled)
    };
    // Warm-up: buffers and tables reach their working size.
    for i in 0..16 {
        exchange(i, &mut out);
    }
    let (mut partial, mut parsed, mut assembled) = (0, 0, 0);
    const N: u64 = 100;
    for i in 16..16 + N {
        let (p, q, a) = exchange(i, &mut out);
        partial += p;
        parsed += q;
        assembled += a;
    }
    eprintln!(
        "allocations per exchange: partial head read {}, parsing {}, assembly {}",
        partial as f64 / N as f64,
        parsed as f64 / N as f64,
        assembled as f64 / N as f64
    );
    assert_eq!(partial, 0, "a read that finishes nothing must not allocate");
    assert!(parsed <= N, "parsing allocated {} per exchange", parsed as f64 / N as f64);
    assert!(assembled == 0, "assembly allocated {} per span", assembled as f64 / N as f64);
}

/// Time per keep-alive exchange through the tracker, the HTTP/1 parser and
/// the assembler (no kernel, no export):
/// `cargo test -p waggle --release --lib conntrack::tests::exchange_bench -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn exchange_bench() {
    let HttpServer { mut t, mut env, mut assembler, resource } = http_server();
    let request: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n";
    let response: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 12:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n";
    let mut out = Vec::with_capacity(4);
    const N: u64 = 200_000;
    let start = std::time::Instant::now();
    for i in 0..N {
        let t0 = i * 1000;
        t.on_data(
            &data(77, 10, 5, Role::Server, Direction::Ingress, request.len() as u64, t0),
            request,
            &mut env,
            &mut out,
        );
        t.on_data(
            &data(77, 10, 5, Role::Server, Direction::Egress, response.len() as u64, t0 + 2),
            response,
            &mut env,
            &mut out,
        );
        for ConnSpan { span, conn } in out.drain(..) {
            std::hint::black_box(assembler.assemble(span, &conn, Arc::clone(&resource), None));
        }
    }
    eprintln!("{:.0} ns per exchange (parse + assemble)", start.elapsed().as_nanos() as f64 / N as f64);
}

/// One nginx-like `Connection: close` connection through the tracker, the
/// HTTP/1 parser and the assembler: open (pid 10, a fresh id and
/// descriptor), request, response, close, assemble.
fn connection(h: &mut HttpServer, i: u64, out: &mut Vec<ConnSpan>) {
    let request: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nConnection: close\r\n\r\n";
    let response: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 12:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
    let (id, fd, t0) = (1000 + i, 100 + (i % 512) as u32, i * 1000);
    let mut open = open_event(EventKind::ConnOpen, 10, fd, id, Role::Server, 40000 + (i % 20000) as u16);
    open.ts_ns = t0;
    open.flags = waggle_common::conn_event_flags::FROM_SOCKET;
    open.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    open.local_port = 8080;
    h.t.on_open(&open, &mut h.env);
    h.t.on_data(
        &data(id, 10, fd, Role::Server, Direction::Ingress, request.len() as u64, t0 + 1),
        request,
        &mut h.env,
        out,
    );
    h.t.on_data(
        &data(id, 10, fd, Role::Server, Direction::Egress, response.len() as u64, t0 + 2),
        response,
        &mut h.env,
        out,
    );
    let close = ConnEvent { kind: EventKind::ConnClose as u8, ts_ns: t0 + 3, ..open };
    h.t.on_close(&close, out);
    for ConnSpan { span, conn } in out.drain(..) {
        std::hint::black_box(h.assembler.assemble(span, &conn, Arc::clone(&h.resource), None));
    }
}

/// A new connection's allocation budget, measured on the real HTTP/1
/// parser and the assembler: its table entry (the LRU node), its identity
/// (shared with its spans) and the span's attribute list: 3. (6 before the
/// identity was set in place when the protocol is recognised and closed
/// connections' parsers, a box and a one-slot request queue each, were
/// kept for new ones.)
#[test]
fn new_connections_stay_within_their_allocation_budget() {
    use crate::allocator::counting::allocations;
    let mut h = http_server();
    let mut out = Vec::with_capacity(4);
    // Warm-up: tables and string caches reach their working size.
    for i in 0..64 {
        connection(&mut h, i, &mut out);
    }
    const N: u64 = 100;
    let before = allocations();
    for i in 64..64 + N {
        connection(&mut h, i, &mut out);
    }
    let per_conn = (allocations() - before) as f64 / N as f64;
    eprintln!("allocations per connection: {per_conn}");
    assert!(per_conn <= 3.0, "a new connection allocated {per_conn} times");
}

/// Time per new connection (open, one exchange, close, assembly) through
/// the tracker, the HTTP/1 parser and the assembler (no kernel, no export):
/// `cargo test -p waggle --release --lib conntrack::tests::connection_bench -- --ignored --nocapture`;
/// `WAGGLE_BENCH_N` sets the number of connections (fewer under callgrind).
#[test]
#[ignore = "a measurement, not a check"]
fn connection_bench() {
    let mut h = http_server();
    let n: u64 = std::env::var("WAGGLE_BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let mut out = Vec::with_capacity(4);
    // Warm-up: tables and string caches reach their working size.
    for i in 0..1000 {
        connection(&mut h, i, &mut out);
    }
    let start = std::time::Instant::now();
    for i in 1000..1000 + n {
        connection(&mut h, i, &mut out);
    }
    eprintln!(
        "sizes: Conn {} ConnMeta {} Http1Parser {}",
        std::mem::size_of::<Conn>(),
        std::mem::size_of::<ConnMeta>(),
        std::mem::size_of::<crate::protocols::http1::Http1Parser>()
    );
    eprintln!(
        "{:.0} ns per connection (open, exchange, close, assemble)",
        start.elapsed().as_nanos() as f64 / n as f64
    );
}

/// A TLS connection: the handshake's ciphertext is declared unknown and
/// muted once the ServerHello went by (its version kept); the first
/// plaintext record starts the connection over, its spans say TLS and the
/// version, ciphertext read after it is ignored, and muting it again
/// switches off the plaintext (not the ciphertext) capture.
#[test]
fn tls_plaintext_starts_the_connection_over_and_marks_its_spans() {
    let (mut t, m) = tracker();
    let mut env = FakeEnv::default();
    t.on_open(&open_event(EventKind::ConnOpen, 10, 5, 1, Role::Server, 9), &mut env);
    for i in 0..DETECT_ATTEMPTS_FRESH {
        feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Ingress, 4, i as u64), b"\x16\x03\x01\x00");
    }
    assert!(env.muted_ids.is_empty(), "the mute waits for the ServerHello");
    let hello = hello::tests::tls13_server_flight();
    feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Egress, hello.len() as u64, 10), &hello);
    assert_eq!(env.muted_ids, vec![1]);
    let plain =
        |dir, len, at| DataEvent { flags: waggle_common::tls::DATA_TLS, ..data(1, 10, 5, Role::Server, dir, len, at) };
    assert!(feed(&mut t, &mut env, plain(Direction::Ingress, 6, 100), b"REQ /a").is_empty());
    // Ciphertext queued before the kernel knew: not parsed.
    assert!(feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Egress, 2, 150), b"OK").is_empty());
    assert_eq!(m.tls_ciphertext_ignored.load(Ordering::Relaxed), 1);
    let spans = feed(&mut t, &mut env, plain(Direction::Egress, 2, 200), b"OK");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span.name, "REQ /a");
    assert_eq!(spans[0].span.attr("tls.protocol.name"), Some(&AttrValue::from("tls")));
    assert_eq!(spans[0].span.attr("tls.protocol.version"), Some(&AttrValue::from("1.3")));
    assert_eq!(m.tls_conns.load(Ordering::Relaxed), 1);
    assert_eq!(m.tls_version_unseen.load(Ordering::Relaxed), 0);
    feed(&mut t, &mut env, plain(Direction::Ingress, 6, 300), b"REQ /b");
    feed(&mut t, &mut env, plain(Direction::Egress, 3, 400), b"TLS");
    assert_eq!(env.muted_tls, vec![1], "the plaintext's own switch");
    assert_eq!(env.muted_ids, vec![1], "the ciphertext switch is not touched again");
}

/// An in-band switch to TLS keeps the parser: the ciphertext is muted, and
/// the plaintext answers the request the parser saw before the switch.
#[test]
fn in_band_tls_switch_resumes_the_parser_with_the_plaintext() {
    let (mut t, m) = tracker();
    let mut env = FakeEnv::default();
    t.on_open(&open_event(EventKind::ConnOpen, 10, 5, 1, Role::Server, 9), &mut env);
    assert!(feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Ingress, 6, 10), b"REQ /a").is_empty());
    assert!(feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Ingress, 8, 20), b"STARTTLS").is_empty());
    assert!(env.muted_ids.is_empty(), "the handshake is watched");
    // A ServerHello cut to two bytes: no version, and the watch is over.
    assert!(feed(&mut t, &mut env, data(1, 10, 5, Role::Server, Direction::Egress, 2, 30), b"\x16\x03").is_empty());
    assert_eq!(env.muted_ids, vec![1], "the ciphertext is muted");
    let plain =
        DataEvent { flags: waggle_common::tls::DATA_TLS, ..data(1, 10, 5, Role::Server, Direction::Egress, 2, 40) };
    let spans = feed(&mut t, &mut env, plain, b"OK");
    assert_eq!(spans.len(), 1, "the parser from before the switch answered");
    assert_eq!(spans[0].span.name, "REQ /a");
    assert_eq!(spans[0].span.attr("tls.protocol.name"), Some(&AttrValue::from("tls")));
    assert_eq!(spans[0].span.attr("tls.protocol.version"), None, "not seen");
    assert_eq!(m.tls_conns.load(Ordering::Relaxed), 1);
    assert_eq!(m.tls_version_unseen.load(Ordering::Relaxed), 1);
}

/// A client reads the server's record header, then its body (OpenSSL
/// without read-ahead); a HelloRetryRequest and the ChangeCipherSpec after
/// it are passed over for the ServerHello (psql against PostgreSQL, whose
/// P-256 refuses the client's X25519 key share, as strace showed it). A
/// connection that is not TLS is muted at once.
#[test]
fn a_client_reads_the_version_from_the_server_hello_after_a_retry() {
    let (mut t, m) = tracker();
    let mut env = FakeEnv::default();
    t.on_open(&open_event(EventKind::ConnOpen, 10, 5, 1, Role::Client, 9), &mut env);
    let mut at = 0;
    let mut chunk = |t: &mut ConnTracker, env: &mut FakeEnv, dir, bytes: &[u8]| {
        at += 1;
        feed(t, env, data(1, 10, 5, Role::Client, dir, bytes.len() as u64, at), bytes)
    };
    let (retry, hello) = (hello::tests::tls13_retry_record(), hello::tests::tls13_after_retry_record());
    chunk(&mut t, &mut env, Direction::Egress, &hello::tests::client_hello_start());
    chunk(&mut t, &mut env, Direction::Ingress, &retry[..5]);
    chunk(&mut t, &mut env, Direction::Ingress, &retry[5..]);
    chunk(&mut t, &mut env, Direction::Egress, &hello::tests::client_hello_start());
    chunk(&mut t, &mut env, Direction::Ingress, b"\x14\x03\x03\x00\x01");
    chunk(&mut t, &mut env, Direction::Ingress, b"\x01");
    assert!(env.muted_ids.is_empty(), "after the retry, the ServerHello is still awaited");
    chunk(&mut t, &mut env, Direction::Ingress, &hello[..5]);
    chunk(&mut t, &mut env, Direction::Ingress, &hello[5..]);
    assert_eq!(env.muted_ids, vec![1], "unknown bytes: muted once the ServerHello was read");
    let plain =
        |dir, len, at| DataEvent { flags: waggle_common::tls::DATA_TLS, ..data(1, 10, 5, Role::Client, dir, len, at) };
    feed(&mut t, &mut env, plain(Direction::Egress, 6, 100), b"REQ /a");
    let spans = feed(&mut t, &mut env, plain(Direction::Ingress, 2, 200), b"OK");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span.attr("tls.protocol.version"), Some(&AttrValue::from("1.3")));
    feed(&mut t, &mut env, plain(Direction::Egress, 6, 300), b"REQ /b");
    let spans = feed(&mut t, &mut env, plain(Direction::Ingress, 2, 400), b"OK");
    assert_eq!(spans[0].span.attr("tls.protocol.version"), Some(&AttrValue::from("1.3")), "every span");
    assert_eq!(m.tls_version_unseen.load(Ordering::Relaxed), 0);

    // Not TLS: nothing is watched, the mute is not delayed.
    t.on_open(&open_event(EventKind::ConnOpen, 10, 6, 2, Role::Client, 9), &mut env);
    for i in 0..DETECT_ATTEMPTS_FRESH {
        feed(&mut t, &mut env, data(2, 10, 6, Role::Client, Direction::Egress, 4, 500 + u64::from(i)), b"SSH-");
    }
    assert_eq!(env.muted_ids, vec![1, 2]);
}
