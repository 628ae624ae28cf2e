//! What a protocol parser is: the chunks it is fed, what it answers, and the
//! detector that creates it.
use waggle_common::{Direction, Role};

use crate::model::{ParsedSpan, Protocol};

/// One syscall's worth of payload on one connection.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub direction: Direction,
    /// The captured prefix of the payload.
    pub bytes: &'a [u8],
    /// Bytes the syscall transferred; `>= bytes.len()`.
    pub total_len: u64,
    /// CLOCK_MONOTONIC ns at syscall entry / exit.
    pub enter_ns: u64,
    pub exit_ns: u64,
    /// Thread that made the syscall.
    pub tid: u32,
}

impl Chunk<'_> {
    pub fn is_truncated(&self) -> bool {
        (self.bytes.len() as u64) < self.total_len
    }
}

/// What the connection manager should do after feeding a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Feed {
    /// Keep feeding this parser.
    Continue,
    /// The parser lost track of message boundaries and dropped its state; the
    /// connection goes back to detection at the next chunk.
    LostSync(&'static str),
    /// The stream is not (or no longer) this protocol, e.g. TLS after an
    /// upgrade: stop parsing and mute the connection.
    Opaque(&'static str),
}

/// How sure a detector is that a connection speaks its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Confidence {
    No,
    /// Plausible, but need more bytes to tell (e.g. a 3-byte first read).
    NeedMore,
    Yes,
}

/// Knobs parsers need; filled from the agent config.
#[derive(Clone, Debug, Default)]
pub struct ParserConfig {
    /// Export SQL text with literals intact (default false: sanitized).
    pub raw_sql: bool,
    /// Path segments to hide besides the built-in rules (`--redact-url-paths`).
    pub url_redaction: std::sync::Arc<super::http1::PathRedaction>,
    /// Show cache keys in Redis/memcached `db.query.text` (default false:
    /// keys are `?` like values).
    pub cache_keys: bool,
}

/// Recognises a protocol from the first chunk seen on a connection.
pub trait ProtocolDetector: Sync {
    fn protocol(&self) -> Protocol;
    /// `role` is the traced process's side. The chunk may be the first bytes of
    /// the connection, or the first bytes seen on a connection opened before
    /// the agent started (mid-stream).
    fn detect(&self, role: Role, chunk: &Chunk<'_>) -> Confidence;
    fn new_parser(&self, role: Role, config: &ParserConfig) -> Box<dyn ProtocolParser>;
}

/// Per-connection parser state machine.
pub trait ProtocolParser: Send {
    fn protocol(&self) -> Protocol;
    /// Feed the next chunk (either direction, in syscall order). Completed
    /// spans are pushed to `out`.
    fn on_data(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed;
    /// The connection closed at `ts_ns`: flush what a close completes (e.g. a
    /// close-delimited HTTP body). Incomplete exchanges are dropped, not
    /// invented.
    fn on_close(&mut self, ts_ns: u64, out: &mut Vec<ParsedSpan>);
    /// Nothing happened on the connection for a while: drop half-finished
    /// state older than `older_than_ns` (monotonic), emitting what is complete.
    fn on_idle(&mut self, _older_than_ns: u64, _out: &mut Vec<ParsedSpan>) {}
    /// Exchanges the parser saw but dropped without a span since the last
    /// call (a response with no request, requests still unanswered at close,
    /// idle or lost sync). The connection layer adds them to
    /// `Metrics::exchanges_dropped` so no drop goes uncounted.
    fn take_dropped(&mut self) -> u64 {
        0
    }
    /// Messages the parser read and turned into no span by design since the
    /// last call (Redis pub/sub pushes): `Metrics::messages_skipped`.
    fn take_skipped(&mut self) -> u64 {
        0
    }
    /// Heap bytes the parser holds for this connection (buffered heads and
    /// bodies, queued requests, statement caches): what the connection layer
    /// charges against the agent's buffer budget.
    fn buffered_bytes(&self) -> usize {
        0
    }
    /// Asked after the parser returned [`Feed::Opaque`]: true when the
    /// connection switched to TLS in-band (MySQL's SSL request) and the
    /// parser can go on with the plaintext the TLS probes read, so what
    /// the plaintext handshake told it (server version) is kept.
    fn resumes_after_tls(&self) -> bool {
        false
    }
    /// Asked after [`Feed::Opaque`]: true when the connection switched to
    /// TLS in-band (a TLS handshake follows), whether or not the parser
    /// resumes; the tracker then watches for the handshake's version.
    fn switched_to_tls(&self) -> bool {
        self.resumes_after_tls()
    }
    /// The connection closed and the tracker is done with the parser: a
    /// parser that keeps spares for the next connections (HTTP/1) takes it
    /// back; the rest are dropped.
    fn recycle(self: Box<Self>) {}
}
