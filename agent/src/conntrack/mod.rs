//! Connection tracking: one state machine per traced TCP connection.
//!
//! Connections are keyed by the id the kernel (or the /proc seeding) minted
//! for them, so a descriptor number reused after close can never mix two
//! connections' bytes. Each connection goes through protocol detection, then
//! feeds its parser; completed exchanges come out as [`ConnSpan`]s carrying
//! the connection's identity for span assembly.
//!
//! Memory is bounded: the table holds at most `max_conns` connections (the
//! least recently active is evicted and counted), detection buffers at most
//! [`DETECT_BUFFER`] bytes, and each parser bounds its own state.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use lru::LruCache;
use waggle_common::{
    conn_event_flags, ConnEvent, ConnInfo, DataEvent, Direction, Role, SockKey, USERSPACE_CONN_ID_BIT,
};

use crate::{
    metrics::Metrics,
    model::{ConnMeta, ParsedSpan, Protocol},
    protocols::{self, Chunk, Detection, Feed, ParserConfig, ProtocolParser},
};

/// Bytes kept while a protocol is not yet recognisable (e.g. a client that
/// writes one byte at a time).
pub const DETECT_BUFFER: usize = 64;
/// Chunks a fresh connection may show before it is declared unknown and muted.
const DETECT_ATTEMPTS_FRESH: u32 = 4;
/// A connection joined mid-stream (seeded, or after lost sync) may be in the
/// middle of a large body: give it longer to reach a message boundary.
const DETECT_ATTEMPTS_MIDSTREAM: u32 = 64;
/// Bytes all connections may buffer together unless configured otherwise.
pub const DEFAULT_BUFFER_BUDGET: usize = 64 << 20;
/// Parser state older than this is dropped on idle ticks.
pub const IDLE_STATE_NS: u64 = 120_000_000_000;

#[derive(Debug)]
pub struct ConnSpan {
    pub span: ParsedSpan,
    pub conn: Arc<ConnMeta>,
}

/// What the tracker needs from the outside world: kernel maps and /proc.
/// A trait so the tracker's logic is testable without loading probes.
pub trait ConnEnvironment {
    /// Tell the kernel to stop copying payload for connection `conn_id` at
    /// `key`. The id matters: the descriptor may already belong to the next
    /// connection, which must not be silenced.
    fn mute(&mut self, key: SockKey, conn_id: u64);
    /// Tell the kernel to stop copying the TLS plaintext of connection
    /// `conn_id` (its ciphertext is never copied once the plaintext flows).
    fn mute_tls(&mut self, key: SockKey, conn_id: u64) {
        self.mute(key, conn_id);
    }
    /// Start tracking a descriptor in the kernel (after userspace verified it).
    fn track(&mut self, key: SockKey, info: ConnInfo);
    /// Forget connection `conn_id` at `key` in the kernel (process gone).
    fn forget(&mut self, key: SockKey, conn_id: u64);
    /// Addresses of a live TCP descriptor, None if it is not a TCP socket.
    fn socket_addrs(&mut self, pid: u32, fd: u32) -> Option<(SocketAddr, SocketAddr)>;
    /// True when `peer` is one of the agent's own sockets (its export traffic
    /// arriving at a collector on this node). `opened_ns` is when the
    /// connection was seen opening: a cached answer older than that is stale.
    fn is_own_socket(&mut self, peer: SocketAddr, opened_ns: u64) -> bool;
}

enum ParseState {
    /// `first`: direction, entry time and thread of the first buffered chunk
    /// (a joined request starts when its first byte was sent).
    Detecting {
        buf: Vec<u8>,
        first: Option<(Direction, u64, u32)>,
        attempts_left: u32,
    },
    Active(Box<dyn ProtocolParser>),
    /// The connection switched to TLS in-band (`resumes_after_tls`): its
    /// ciphertext is muted like `Muted`; the first TLS plaintext record
    /// makes the parser active again where it stopped.
    AwaitingTls(Box<dyn ProtocolParser>),
    Muted,
}

impl ParseState {
    /// Nothing buffered yet. A connection joined mid-stream (seeded, after
    /// lost sync or a dropped state) gets longer to reach a message start.
    fn detecting(midstream: bool) -> ParseState {
        let attempts_left = if midstream { DETECT_ATTEMPTS_MIDSTREAM } else { DETECT_ATTEMPTS_FRESH };
        ParseState::Detecting { buf: Vec::new(), first: None, attempts_left }
    }
}

struct Conn {
    meta: Arc<ConnMeta>,
    state: ParseState,
    last_active_ns: u64,
    /// Local address still to be looked up (done once, when first needed).
    local_pending: bool,
    /// Buffered bytes of this connection counted in `ConnTracker::buffered`.
    charged: usize,
    /// Its payload is TLS plaintext read at the library (`tls.rs`).
    tls: bool,
    /// What its ciphertext showed of the TLS handshake (the version).
    handshake: tls::Handshake,
}

pub struct ConnTracker {
    /// Least recently active first: eviction when full is O(1).
    conns: LruCache<u64, Conn>,
    /// Ordered: a process's descriptors are one range (forks, exits).
    by_key: BTreeMap<SockKey, u64>,
    parser_config: ParserConfig,
    metrics: Arc<Metrics>,
    max_conns: usize,
    next_user_id: u64,
    scratch: Vec<ParsedSpan>,
    detectors: &'static [&'static dyn protocols::ProtocolDetector],
    /// Bytes all connections may buffer together (detection buffers and
    /// parser state), and what they buffer now.
    buffer_budget: usize,
    buffered: usize,
}

/// Stops capture on a connection: the plaintext's own switch for TLS ones
/// (the ciphertext one may already be set from the handshake's bytes).
fn mute(tls: bool, env: &mut dyn ConnEnvironment, key: SockKey, conn_id: u64) {
    if tls {
        env.mute_tls(key, conn_id);
    } else {
        env.mute(key, conn_id);
    }
}

/// [`mute`], unless the connection's TLS handshake is being watched: then
/// the ciphertext flows a few chunks longer, until its ServerHello was seen
/// (`tls::Handshake::observe` says when the mute is due).
fn mute_conn(conn: &mut Conn, env: &mut dyn ConnEnvironment, key: SockKey, conn_id: u64) {
    if conn.tls || !conn.handshake.defers_mute() {
        mute(conn.tls, env, key, conn_id);
    }
}

pub fn sockaddr_from_event(family: u8, addr: &[u8; 16], port: u16) -> Option<SocketAddr> {
    let ip = match family as i32 {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        libc::AF_INET6 => {
            let v6 = Ipv6Addr::from(*addr);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The kernel's `ConnEnds::link_key` for a connection userspace tracks
/// (adopted from /proc or checked after an unverified open): 0 unless both
/// ends are known.
fn link_key(role: Role, local: Option<SocketAddr>, peer: Option<SocketAddr>) -> u64 {
    let (Some(local), Some(peer)) = (local, peer) else {
        return 0;
    };
    let mapped = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let (l, p) = (mapped(local), mapped(peer));
    match role {
        Role::Client => waggle_common::addr::link_hash(&l, local.port(), &p, peer.port()),
        Role::Server => waggle_common::addr::link_hash(&p, peer.port(), &l, local.port()),
        Role::Unknown => 0,
    }
}

impl ConnTracker {
    pub fn new(parser_config: ParserConfig, metrics: Arc<Metrics>, max_conns: usize) -> ConnTracker {
        ConnTracker {
            conns: LruCache::unbounded(),
            by_key: BTreeMap::new(),
            parser_config,
            metrics,
            max_conns: max_conns.max(16),
            next_user_id: 1,
            scratch: Vec::new(),
            detectors: protocols::DETECTORS,
            buffer_budget: DEFAULT_BUFFER_BUDGET,
            buffered: 0,
        }
    }

    /// Bytes all connections may buffer together; a connection whose
    /// buffers would take the total past it loses its parse state (counted)
    /// and starts over at its next message.
    pub fn with_buffer_budget(mut self, bytes: usize) -> Self {
        self.buffer_budget = bytes;
        self
    }

    /// Bytes the connections buffer now (detection buffers and parsers).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// A connection left the table: its buffers are freed.
    fn release(&mut self, conn: &Conn) {
        self.buffered = self.buffered.saturating_sub(conn.charged);
    }

    /// Brings connection `conn_id`'s charge up to date after it was fed.
    fn recharge(&mut self, conn_id: u64) {
        let Some(conn) = self.conns.peek_mut(&conn_id) else { return };
        let now = match &conn.state {
            ParseState::Detecting { buf, .. } => buf.capacity(),
            ParseState::Active(parser) | ParseState::AwaitingTls(parser) => parser.buffered_bytes(),
            ParseState::Muted => 0,
        };
        let others = self.buffered.saturating_sub(conn.charged);
        if others + now > self.buffer_budget {
            // Over budget: this connection, the one that grew, gives its
            // state up; its next message boundary starts it over.
            if let ParseState::Active(parser) = &mut conn.state {
                Metrics::add(&self.metrics.exchanges_dropped, parser.take_dropped());
                Metrics::add(&self.metrics.messages_skipped, parser.take_skipped());
            }
            conn.state = ParseState::detecting(true);
            conn.charged = 0;
            self.buffered = others;
            Metrics::inc(&self.metrics.buffers_dropped_over_budget);
            return;
        }
        conn.charged = now;
        self.buffered = others + now;
    }

    /// Use these detectors instead of [`protocols::DETECTORS`].
    pub fn with_detectors(mut self, detectors: &'static [&'static dyn protocols::ProtocolDetector]) -> Self {
        self.detectors = detectors;
        self
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    fn mint_user_id(&mut self) -> u64 {
        self.next_user_id += 1;
        USERSPACE_CONN_ID_BIT | self.next_user_id
    }

    fn insert(&mut self, meta: ConnMeta, midstream: bool, now_ns: u64) {
        if self.conns.len() >= self.max_conns {
            self.evict_oldest();
        }
        let key = SockKey { tgid: meta.pid, fd: meta.fd };
        if let Some(old) = self.by_key.insert(key, meta.conn_id) {
            // The descriptor was reused without us seeing the close (e.g. the
            // close event was lost): the old connection is over.
            if old != meta.conn_id {
                if let Some(conn) = self.conns.pop(&old) {
                    self.release(&conn);
                    Metrics::inc(&self.metrics.conns_replaced);
                }
            }
        }
        let local_pending = meta.local.is_none();
        self.conns.put(
            meta.conn_id,
            Conn {
                meta: Arc::new(meta),
                state: ParseState::detecting(midstream),
                last_active_ns: now_ns,
                local_pending,
                charged: 0,
                tls: false,
                handshake: tls::Handshake::default(),
            },
        );
        Metrics::inc(&self.metrics.conns_opened);
    }

    /// The agent's own export traffic: keep the connection in the table as
    /// muted, so payload the kernel queued before the mute took effect is
    /// recognised and ignored instead of adopted as a new connection.
    fn mute_own(&mut self, conn_id: u64, key: SockKey, env: &mut dyn ConnEnvironment) {
        if let Some(conn) = self.conns.get_mut(&conn_id) {
            conn.state = ParseState::Muted;
        }
        env.mute(key, conn_id);
        Metrics::inc(&self.metrics.conns_muted);
    }

    fn evict_oldest(&mut self) {
        if let Some((id, conn)) = self.conns.pop_lru() {
            self.release(&conn);
            let meta = conn.meta;
            let key = SockKey { tgid: meta.pid, fd: meta.fd };
            if self.by_key.get(&key) == Some(&id) {
                self.by_key.remove(&key);
            }
            Metrics::inc(&self.metrics.conns_evicted);
        }
    }

    /// A connection the kernel started tracking (accept/connect).
    pub fn on_open(&mut self, ev: &ConnEvent, env: &mut dyn ConnEnvironment) {
        let role = Role::from_u8(ev.role);
        let peer = sockaddr_from_event(ev.family, &ev.peer_addr, ev.peer_port);
        let key = SockKey { tgid: ev.tgid, fd: ev.fd };
        if let Some(existing) = self.by_key.get(&key).and_then(|id| self.conns.peek(id)) {
            // Seeding from /proc raced this open and already re-keyed the
            // kernel entry to a userspace id: that entry is this connection.
            let seeded = existing.meta.conn_id & USERSPACE_CONN_ID_BIT != 0;
            if seeded && (existing.meta.peer.is_none() || existing.meta.peer == peer) {
                return;
            }
        }
        // A socket the kernel read: both ends are known, and the kernel has
        // already skipped the agent's own connections.
        let from_socket = ev.flags & conn_event_flags::FROM_SOCKET != 0;
        let local = if from_socket { sockaddr_from_event(ev.family, &ev.local_addr, ev.local_port) } else { None };
        let own = !from_socket && role == Role::Server && peer.is_some_and(|p| env.is_own_socket(p, ev.ts_ns));
        let meta =
            ConnMeta { pid: ev.tgid, fd: ev.fd, conn_id: ev.conn_id, role, protocol: Protocol::Unknown, peer, local };
        self.insert(meta, false, ev.ts_ns);
        if own {
            self.mute_own(ev.conn_id, key, env);
        }
    }

    /// accept/connect on a descriptor the kernel could not classify.
    pub fn on_unverified(&mut self, ev: &ConnEvent, env: &mut dyn ConnEnvironment) {
        Metrics::inc(&self.metrics.conn_addr_lookups);
        let Some((local, peer)) = env.socket_addrs(ev.tgid, ev.fd) else {
            Metrics::inc(&self.metrics.conns_unverified_rejected);
            return;
        };
        let role = Role::from_u8(ev.role);
        if role == Role::Server && env.is_own_socket(peer, ev.ts_ns) {
            // Never tracked in the kernel, so nothing to mute there.
            Metrics::inc(&self.metrics.conns_muted);
            return;
        }
        let conn_id = self.mint_user_id();
        let key = SockKey { tgid: ev.tgid, fd: ev.fd };
        env.track(
            key,
            ConnInfo {
                conn_id,
                role: role as u8,
                family: ev.family,
                flags: 0,
                tls: 0,
                _pad: [0; 4],
                req_remaining: 0,
                link: link_key(role, Some(local), Some(peer)),
            },
        );
        let meta = ConnMeta {
            pid: ev.tgid,
            fd: ev.fd,
            conn_id,
            role,
            protocol: Protocol::Unknown,
            peer: Some(peer),
            local: Some(local),
        };
        self.insert(meta, false, ev.ts_ns);
    }

    /// A connection that existed before the agent (or was inherited through
    /// fork): it is tracked in the kernel under a userspace-minted id.
    pub fn seed(
        &mut self,
        key: SockKey,
        role: Role,
        local: SocketAddr,
        peer: SocketAddr,
        env: &mut dyn ConnEnvironment,
        now_ns: u64,
    ) {
        if role == Role::Server && env.is_own_socket(peer, now_ns) {
            return;
        }
        self.adopt(key, role, Some(local), Some(peer), env, now_ns);
    }

    /// Tracks `key` in the kernel under a fresh userspace id, as a
    /// connection joined mid-stream.
    fn adopt(
        &mut self,
        key: SockKey,
        role: Role,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
        env: &mut dyn ConnEnvironment,
        now_ns: u64,
    ) {
        let SockKey { tgid: pid, fd } = key;
        let conn_id = self.mint_user_id();
        let v6 = local.or(peer).is_some_and(|a| a.is_ipv6());
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
        let link = link_key(role, local, peer);
        env.track(
            key,
            ConnInfo { conn_id, role: role as u8, family, flags: 0, tls: 0, _pad: [0; 4], req_remaining: 0, link },
        );
        let meta = ConnMeta { pid, fd, conn_id, role, protocol: Protocol::Unknown, peer, local };
        self.insert(meta, true, now_ns);
    }

    /// A tracked process forked: the child holds the parent's connections
    /// under the same descriptors. The kernel copies them as the child is
    /// created (`on_inherit`, before this); the rest (no BTF, a table past
    /// the kernel's bound, an insert that failed) are copied here from the
    /// parent's entries (no /proc read). Returns how many were copied here.
    pub fn on_fork(&mut self, parent: u32, child: u32, env: &mut dyn ConnEnvironment, now_ns: u64) -> usize {
        let range = SockKey { tgid: parent, fd: 0 }..=SockKey { tgid: parent, fd: u32::MAX };
        let inherited: Vec<(u32, Role, Option<SocketAddr>, Option<SocketAddr>)> = self
            .by_key
            .range(range)
            .filter(|(key, _)| !self.by_key.contains_key(&SockKey { tgid: child, fd: key.fd }))
            .filter_map(|(_, id)| self.conns.peek(id))
            .map(|c| (c.meta.fd, c.meta.role, c.meta.local, c.meta.peer))
            .collect();
        for &(fd, role, local, peer) in &inherited {
            self.adopt(SockKey { tgid: child, fd }, role, local, peer, env, now_ns);
        }
        inherited.len()
    }

    /// The kernel copied the parent's connection on `ev.fd` to the child
    /// under a new id: it inherits the parent's addresses and role. Its
    /// parser starts over (the child's reads begin wherever the parent
    /// stopped).
    pub fn on_inherit(&mut self, ev: &ConnEvent, now_ns: u64) {
        let (child, parent) = (ev.tgid, ev.tid);
        let from = self.by_key.get(&SockKey { tgid: parent, fd: ev.fd }).and_then(|id| self.conns.peek(id));
        let (role, local, peer) = match from {
            Some(c) => (c.meta.role, c.meta.local, c.meta.peer),
            None => (Role::from_u8(ev.role), None, None),
        };
        let meta =
            ConnMeta { pid: child, fd: ev.fd, conn_id: ev.conn_id, role, protocol: Protocol::Unknown, peer, local };
        self.insert(meta, true, now_ns);
    }

    pub fn on_close(&mut self, ev: &ConnEvent, out: &mut Vec<ConnSpan>) {
        let Some(mut conn) = self.conns.pop(&ev.conn_id) else {
            return;
        };
        self.release(&conn);
        let key = SockKey { tgid: conn.meta.pid, fd: conn.meta.fd };
        if self.by_key.get(&key) == Some(&ev.conn_id) {
            self.by_key.remove(&key);
        }
        Metrics::inc(&self.metrics.conns_closed);
        if let ParseState::Active(parser) = &mut conn.state {
            parser.on_close(ev.ts_ns, &mut self.scratch);
            Metrics::add(&self.metrics.exchanges_dropped, parser.take_dropped());
            Metrics::add(&self.metrics.messages_skipped, parser.take_skipped());
            Self::wrap(&mut self.scratch, &conn, out);
        }
        if let ParseState::Active(parser) = conn.state {
            // The next connection's parser, perhaps.
            parser.recycle();
        }
    }

    /// The process exited: its descriptors closed without close() calls.
    pub fn on_process_exit(&mut self, tgid: u32, ts_ns: u64, env: &mut dyn ConnEnvironment, out: &mut Vec<ConnSpan>) {
        let range = SockKey { tgid, fd: 0 }..=SockKey { tgid, fd: u32::MAX };
        let keys: Vec<SockKey> = self.by_key.range(range).map(|(k, _)| *k).collect();
        for key in keys {
            let Some(id) = self.by_key.remove(&key) else { continue };
            if let Some(mut conn) = self.conns.pop(&id) {
                self.release(&conn);
                Metrics::inc(&self.metrics.conns_closed);
                if let ParseState::Active(parser) = &mut conn.state {
                    parser.on_close(ts_ns, &mut self.scratch);
                    Metrics::add(&self.metrics.exchanges_dropped, parser.take_dropped());
                    Metrics::add(&self.metrics.messages_skipped, parser.take_skipped());
                    Self::wrap(&mut self.scratch, &conn, out);
                }
            }
            env.forget(key, id);
        }
    }

    fn wrap(spans: &mut Vec<ParsedSpan>, conn: &Conn, out: &mut Vec<ConnSpan>) {
        if conn.tls {
            tls::mark_spans(spans, conn.handshake.version());
        }
        out.extend(spans.drain(..).map(|span| ConnSpan { span, conn: conn.meta.clone() }));
    }

    pub fn on_data(
        &mut self,
        header: &DataEvent,
        payload: &[u8],
        env: &mut dyn ConnEnvironment,
        out: &mut Vec<ConnSpan>,
    ) {
        self.feed(header, payload, env, out);
        self.recharge(header.conn_id);
    }

    fn feed(&mut self, header: &DataEvent, payload: &[u8], env: &mut dyn ConnEnvironment, out: &mut Vec<ConnSpan>) {
        let Some(direction) = Direction::from_u8(header.direction) else {
            Metrics::inc(&self.metrics.events_malformed);
            return;
        };
        if !self.conns.contains(&header.conn_id) {
            // The open event was lost (ring buffer full) or raced us: adopt the
            // connection from what the data event says, mid-stream.
            Metrics::inc(&self.metrics.data_events_untracked);
            let meta = ConnMeta {
                pid: header.tgid,
                fd: header.fd,
                conn_id: header.conn_id,
                role: Role::from_u8(header.role),
                protocol: Protocol::Unknown,
                peer: None,
                local: None,
            };
            self.insert(meta, true, header.exit_ns);
        }
        let Some(conn) = self.conns.get_mut(&header.conn_id) else {
            return;
        };
        conn.last_active_ns = header.exit_ns;
        let key = SockKey { tgid: conn.meta.pid, fd: conn.meta.fd };
        let conn_id = conn.meta.conn_id;
        match tls::step(conn.tls, header) {
            tls::Step::Feed if !conn.tls => {
                let from_server = match conn.meta.role {
                    Role::Client => Some(direction == Direction::Ingress),
                    Role::Server => Some(direction == Direction::Egress),
                    Role::Unknown => None,
                };
                if from_server.is_some_and(|s| conn.handshake.observe(s, payload)) {
                    mute(false, env, key, conn_id);
                }
            }
            tls::Step::Feed => {}
            tls::Step::Restart => {
                if conn.handshake.plaintext_started().is_none() {
                    Metrics::inc(&self.metrics.tls_version_unseen);
                }
                conn.tls = true;
                conn.state = match std::mem::replace(&mut conn.state, ParseState::Muted) {
                    ParseState::AwaitingTls(parser) => ParseState::Active(parser),
                    _ => ParseState::detecting(false),
                };
                Metrics::inc(&self.metrics.tls_conns);
            }
            tls::Step::Ignore => {
                Metrics::inc(&self.metrics.tls_ciphertext_ignored);
                return;
            }
        }
        let chunk = Chunk {
            direction,
            bytes: payload,
            total_len: header.total_len,
            enter_ns: header.enter_ns,
            exit_ns: header.exit_ns,
            tid: header.tid,
        };
        let feed = match &mut conn.state {
            ParseState::Muted | ParseState::AwaitingTls(_) => return,
            ParseState::Active(parser) => {
                let feed = parser.on_data(&chunk, &mut self.scratch);
                Metrics::add(&self.metrics.exchanges_dropped, parser.take_dropped());
                Metrics::add(&self.metrics.messages_skipped, parser.take_skipped());
                feed
            }
            ParseState::Detecting { buf, first, attempts_left } => {
                // Consecutive small writes in one direction are joined so a
                // request written a byte at a time is still recognised.
                let continuing = !buf.is_empty() && first.is_some_and(|(d, ..)| d == direction);
                if !continuing {
                    buf.clear();
                    *first = Some((direction, chunk.enter_ns, chunk.tid));
                }
                let (_, enter_ns, tid) = first.unwrap_or((direction, chunk.enter_ns, chunk.tid));
                let joined: Vec<u8>;
                let candidate = if continuing {
                    joined = [buf.as_slice(), payload].concat();
                    Chunk {
                        bytes: &joined,
                        total_len: (buf.len() as u64).saturating_add(chunk.total_len),
                        enter_ns,
                        tid,
                        ..chunk
                    }
                } else {
                    chunk
                };
                match protocols::detect(self.detectors, conn.meta.role, &candidate, &self.parser_config) {
                    Detection::Parser(mut parser) => {
                        let protocol = parser.protocol();
                        if conn.meta.role == Role::Server && protocol.is_database() {
                            conn.state = ParseState::Muted;
                            mute_conn(conn, env, key, conn_id);
                            Metrics::inc(&self.metrics.conns_muted);
                            return;
                        }
                        // No span holds the identity yet on a fresh
                        // connection: changed in place, not copied.
                        Arc::make_mut(&mut conn.meta).protocol = protocol;
                        let feed = parser.on_data(&candidate, &mut self.scratch);
                        Metrics::add(&self.metrics.exchanges_dropped, parser.take_dropped());
                        Metrics::add(&self.metrics.messages_skipped, parser.take_skipped());
                        conn.state = ParseState::Active(parser);
                        feed
                    }
                    Detection::NeedMore if candidate.bytes.len() < DETECT_BUFFER && !candidate.is_truncated() => {
                        let bytes = candidate.bytes.to_vec();
                        *buf = bytes;
                        return;
                    }
                    Detection::NeedMore | Detection::Unknown => {
                        buf.clear();
                        *first = None;
                        *attempts_left = attempts_left.saturating_sub(1);
                        if *attempts_left == 0 {
                            conn.state = ParseState::Muted;
                            mute_conn(conn, env, key, conn_id);
                            Metrics::inc(&self.metrics.protocol_unknown);
                            Metrics::inc(&self.metrics.conns_muted);
                        }
                        return;
                    }
                }
            }
        };
        match feed {
            Feed::Continue => {}
            Feed::LostSync(reason) => {
                tracing::debug!(
                    pid = conn.meta.pid,
                    protocol = conn.meta.protocol.as_str(),
                    reason,
                    "parser lost sync; re-detecting"
                );
                Metrics::inc(&self.metrics.parse_failures);
                conn.state = ParseState::detecting(true);
            }
            Feed::Opaque(reason) => {
                tracing::debug!(
                    pid = conn.meta.pid,
                    protocol = conn.meta.protocol.as_str(),
                    reason,
                    "connection became opaque; muting"
                );
                let switched_to_tls = match &conn.state {
                    ParseState::Active(parser) => parser.switched_to_tls(),
                    _ => false,
                };
                if switched_to_tls && !conn.tls {
                    conn.handshake.arm();
                }
                conn.state = match std::mem::replace(&mut conn.state, ParseState::Muted) {
                    ParseState::Active(parser) if parser.resumes_after_tls() && !conn.tls => {
                        ParseState::AwaitingTls(parser)
                    }
                    _ => ParseState::Muted,
                };
                mute_conn(conn, env, key, conn_id);
                Metrics::inc(&self.metrics.conns_muted);
            }
        }
        if !self.scratch.is_empty() {
            if conn.local_pending {
                conn.local_pending = false;
                Metrics::inc(&self.metrics.conn_addr_lookups);
                if let Some((local, peer)) = env.socket_addrs(conn.meta.pid, conn.meta.fd) {
                    // Only trust the lookup if the descriptor still is this
                    // connection (it may have been closed and reused).
                    if conn.meta.peer.is_none_or(|p| p == peer) {
                        // Copied only if a span still holds the old one.
                        let meta = Arc::make_mut(&mut conn.meta);
                        meta.local = Some(local);
                        meta.peer = Some(peer);
                    }
                }
            }
            Self::wrap(&mut self.scratch, conn, out);
        }
    }

    /// Periodic housekeeping: parsers drop stale half-finished exchanges.
    pub fn on_tick(&mut self, now_ns: u64, out: &mut Vec<ConnSpan>) {
        let older_than = now_ns.saturating_sub(IDLE_STATE_NS);
        for (_, conn) in self.conns.iter_mut() {
            if conn.last_active_ns < older_than {
                if let ParseState::Active(parser) = &mut conn.state {
                    parser.on_idle(older_than, &mut self.scratch);
                    Metrics::add(&self.metrics.exchanges_dropped, parser.take_dropped());
                    Metrics::add(&self.metrics.messages_skipped, parser.take_skipped());
                    Self::wrap(&mut self.scratch, conn, out);
                }
            }
        }
    }

    /// Shutdown: let every parser flush what a close would complete.
    pub fn flush_all(&mut self, now_ns: u64, out: &mut Vec<ConnSpan>) {
        for (_, conn) in self.conns.iter_mut() {
            if let ParseState::Active(parser) = &mut conn.state {
                parser.on_idle(now_ns, &mut self.scratch);
                Metrics::add(&self.metrics.exchanges_dropped, parser.take_dropped());
                Metrics::add(&self.metrics.messages_skipped, parser.take_skipped());
                Self::wrap(&mut self.scratch, conn, out);
            }
        }
    }
}

mod hello;
mod tls;

#[cfg(test)]
mod tests;
