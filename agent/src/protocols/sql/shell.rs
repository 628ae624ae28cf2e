//! The connection shell of the SQL parsers: what PostgreSQL and MySQL do
//! alike around their protocol state machines. A protocol plugs in as a
//! [`Wire`]; the [`Shell`] frames both directions, keeps the requests awaiting
//! responses, counts the exchanges it drops, latches a loss of sync until the
//! next chunk can report it, hunts for the end of a response whose framing
//! was lost, and expires requests unanswered on idle.
use crate::model::Protocol;
use std::{collections::VecDeque, ops::Deref};

use waggle_common::{Direction, Role};

use super::{
    framer::{Frame, Framed, Framer, Framing, Timing},
    span::{DbSpan, Outcome},
    summary::QueryInfo,
};
use crate::{
    model::{ParsedSpan, SpanKind},
    protocols::{Chunk, Feed, ParserConfig, ProtocolParser},
};

/// The direction requests travel in: the traced process writes them as a
/// client and reads them as a DB server.
pub fn frontend_direction(role: Role) -> Direction {
    match role {
        Role::Server => Direction::Ingress,
        Role::Client | Role::Unknown => Direction::Egress,
    }
}

/// A request awaiting its response.
pub trait Request {
    /// Answered, it gives a span; dropped, it is counted.
    fn gives_span(&self) -> bool;
    /// Still expects an answer, and was sent before `ns`.
    fn waiting_since_before(&self, ns: u64) -> bool;
    /// It closes a batch: the server answers the requests up to it as one
    /// response. Must not change while the request is queued.
    fn ends_batch(&self) -> bool;
}

/// Requests awaiting responses, oldest first. Reading goes through
/// `Deref`; changes through the methods, which keep the batch count.
pub struct PendingQueue<R> {
    queue: VecDeque<R>,
    /// Requests in `queue` that close a batch.
    batches: usize,
    pipelined: bool,
}

impl<R: Request> PendingQueue<R> {
    fn new() -> Self {
        PendingQueue { queue: VecDeque::new(), batches: 0, pipelined: false }
    }

    fn push(&mut self, request: R) {
        if self.batches > 0 {
            self.pipelined = true;
        }
        if request.ends_batch() {
            self.batches += 1;
        }
        self.queue.push_back(request);
    }

    pub fn pop(&mut self) -> Option<R> {
        let request = self.queue.pop_front()?;
        if request.ends_batch() {
            self.batches -= 1;
        }
        Some(request)
    }

    pub fn front_mut(&mut self) -> Option<&mut R> {
        self.queue.front_mut()
    }

    pub fn back_mut(&mut self) -> Option<&mut R> {
        self.queue.back_mut()
    }

    /// Every batch sent so far is closed.
    pub fn batch_closed(&self) -> bool {
        self.queue.back().is_none_or(R::ends_batch)
    }

    /// More than one batch is in flight: a response that cannot be framed
    /// cannot be told apart from the next.
    pub fn several_batches(&self) -> bool {
        self.batches > 1 || !self.batch_closed()
    }

    /// The client has sent a batch before the previous one was answered
    /// (once seen, for good).
    pub fn pipelined(&self) -> bool {
        self.pipelined
    }

    /// Empties the queue; returns how many of its requests would have given
    /// spans.
    fn clear(&mut self) -> usize {
        let lost = self.queue.iter().filter(|r| r.gives_span()).count();
        self.queue.clear();
        self.batches = 0;
        lost
    }
}

impl<R> Deref for PendingQueue<R> {
    type Target = VecDeque<R>;

    fn deref(&self) -> &VecDeque<R> {
        &self.queue
    }
}

/// A protocol's state machine, as the [`Shell`] drives it.
pub trait Wire: Send + Sized {
    type Request: Request + Send;
    /// Framing of requests and of responses.
    type Front: Framing + Send;
    type Back: Framing + Send;
    /// [`ProtocolParser::protocol`], and `db.system.name` until the
    /// protocol learns better.
    const PROTOCOL: &'static str;
    /// Which protocol this is, for the connection's identity.
    const KIND: Protocol;
    /// Requests awaiting responses before the parser gives up on the
    /// connection, and the reason it gives then.
    const MAX_PENDING: usize;
    const TOO_MANY_PENDING: &'static str;
    /// Why a response whose framing was lost is dropped when it may answer
    /// several batches.
    const SEVERAL_IN_FLIGHT: &'static str;
    /// Why requests unanswered past the idle cut-off are dropped.
    const UNANSWERED: &'static str;

    fn new() -> Self;
    fn framing() -> (Self::Front, Self::Back);
    /// Heap bytes of the protocol's own caches (prepared statements).
    fn buffered_bytes(&self) -> usize {
        0
    }
    /// See [`ProtocolParser::resumes_after_tls`].
    fn resumes_after_tls(&self) -> bool {
        false
    }
    /// See [`ProtocolParser::switched_to_tls`].
    fn switched_to_tls(&self) -> bool {
        self.resumes_after_tls()
    }
    /// A request message; Err stops the chunk with that result.
    fn on_request(
        &mut self,
        conn: &mut Conn<Self>,
        frame: Frame<<Self::Front as Framing>::Head>,
        out: &mut Vec<ParsedSpan>,
    ) -> Result<(), Feed>;
    /// A response chunk before it is framed (bytes outside the framing).
    fn before_response<'c>(&mut self, chunk: Chunk<'c>) -> Result<Chunk<'c>, Feed> {
        Ok(chunk)
    }
    /// A response message; Err stops the chunk with that result.
    fn on_response(
        &mut self,
        conn: &mut Conn<Self>,
        frame: Frame<<Self::Back as Framing>::Head>,
        out: &mut Vec<ParsedSpan>,
    ) -> Result<(), Feed>;
    /// A response chunk while hunting: a chance to see the response end.
    fn on_hunted(&mut self, _conn: &mut Conn<Self>, _chunk: &Chunk<'_>, _out: &mut Vec<ParsedSpan>) {}
    /// The hunted response ended at `end_ns` and answered at most one batch:
    /// emit what it answered.
    fn flush_hunted(&mut self, conn: &mut Conn<Self>, end_ns: u64, out: &mut Vec<ParsedSpan>);
    /// Whether a quiet connection proves a hunted response over.
    fn idle_ends_hunt(&self, _conn: &Conn<Self>) -> bool {
        true
    }
}

/// The connection state every SQL protocol keeps, and the rules for it.
pub struct Conn<W: Wire> {
    pub kind: SpanKind,
    pub frontend: Direction,
    pub raw_sql: bool,
    /// `db.system.name`.
    pub system: &'static str,
    /// `db.namespace`.
    pub namespace: Option<String>,
    pub pending: PendingQueue<W::Request>,
    /// Response framing lost: looking for the end of the response.
    pub hunting: bool,
    pub last_backend_exit: u64,
    /// A drop to report (as LostSync) at the next chunk.
    poisoned: Option<&'static str>,
    /// Exchanges seen but dropped without a span, for `take_dropped`.
    dropped: u64,
}

impl<W: Wire> Conn<W> {
    fn new(role: Role, config: &ParserConfig) -> Self {
        Conn {
            kind: if role == Role::Server { SpanKind::Server } else { SpanKind::Client },
            frontend: frontend_direction(role),
            raw_sql: config.raw_sql,
            system: W::PROTOCOL,
            namespace: None,
            pending: PendingQueue::new(),
            hunting: false,
            last_backend_exit: 0,
            poisoned: None,
            dropped: 0,
        }
    }

    pub fn push(&mut self, request: W::Request) -> Result<(), Feed> {
        if self.pending.len() >= W::MAX_PENDING {
            return Err(Feed::LostSync(W::TOO_MANY_PENDING));
        }
        self.pending.push(request);
        Ok(())
    }

    /// Forgets every pending request, counting the ones that would have
    /// given spans.
    pub fn clear_pending(&mut self) {
        self.dropped += self.pending.clear() as u64;
    }

    /// Drops every pending request and reports `reason` as LostSync with
    /// the next chunk.
    pub fn poison(&mut self, reason: &'static str) {
        self.clear_pending();
        self.poisoned = Some(reason);
    }

    /// Counts exchanges dropped without a span.
    pub fn drop_exchanges(&mut self, n: u64) {
        self.dropped += n;
    }

    /// The response being hunted ended at `end_ns`.
    pub fn end_hunt(&mut self, wire: &mut W, end_ns: u64, out: &mut Vec<ParsedSpan>) {
        self.hunting = false;
        if self.pending.several_batches() {
            self.poison(W::SEVERAL_IN_FLIGHT);
            return;
        }
        wire.flush_hunted(self, end_ns, out);
    }

    /// Emits the span of an exchange started by the request at `start`.
    pub fn emit(
        &self,
        query: Option<&QueryInfo>,
        operation_hint: Option<&str>,
        start: Timing,
        end_ns: u64,
        outcome: Outcome,
        out: &mut Vec<ParsedSpan>,
    ) {
        out.push(
            DbSpan {
                kind: self.kind,
                system: self.system,
                namespace: self.namespace.as_deref(),
                query,
                operation_hint,
                start_ns: start.enter_ns,
                end_ns,
                tid: start.tid,
                outcome,
            }
            .build(),
        );
    }
}

/// A SQL protocol parser: the shell around a [`Wire`].
pub struct Shell<W: Wire> {
    conn: Conn<W>,
    wire: W,
    front: Framer<W::Front>,
    back: Framer<W::Back>,
    front_frames: Vec<Framed<<W::Front as Framing>::Head>>,
    back_frames: Vec<Framed<<W::Back as Framing>::Head>>,
}

impl<W: Wire> Shell<W> {
    pub fn new(role: Role, config: &ParserConfig) -> Self {
        let (front, back) = W::framing();
        Shell {
            conn: Conn::new(role, config),
            wire: W::new(),
            front: Framer::new(front),
            back: Framer::new(back),
            front_frames: Vec::new(),
            back_frames: Vec::new(),
        }
    }

    pub fn conn(&self) -> &Conn<W> {
        &self.conn
    }

    pub fn wire(&self) -> &W {
        &self.wire
    }

    fn on_frontend(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        self.front_frames.clear();
        self.front.push(chunk, &mut self.front_frames);
        for framed in self.front_frames.drain(..) {
            let result = match framed {
                Framed::Lost(reason) => Err(Feed::LostSync(reason)),
                Framed::Frame(frame) => self.wire.on_request(&mut self.conn, frame, out),
            };
            if let Err(stop) = result {
                return stop;
            }
        }
        Feed::Continue
    }

    fn on_backend(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        self.conn.last_backend_exit = chunk.exit_ns;
        let chunk = match self.wire.before_response(*chunk) {
            Ok(chunk) => chunk,
            Err(feed) => return feed,
        };
        if !self.conn.hunting {
            if self.back.is_lost() {
                // A hunt ended since the last response: this one starts at a
                // message boundary.
                self.back.resync();
            }
            self.back_frames.clear();
            self.back.push(&chunk, &mut self.back_frames);
            for framed in self.back_frames.drain(..) {
                match framed {
                    Framed::Frame(frame) => {
                        if let Err(stop) = self.wire.on_response(&mut self.conn, frame, out) {
                            return stop;
                        }
                    }
                    Framed::Lost(reason) => {
                        tracing::trace!(protocol = W::PROTOCOL, reason, "response framing lost; hunting for its end");
                        self.conn.hunting = true;
                        break;
                    }
                }
            }
            if !self.conn.hunting {
                return Feed::Continue;
            }
        }
        self.wire.on_hunted(&mut self.conn, &chunk, out);
        Feed::Continue
    }
}

impl<W: Wire> ProtocolParser for Shell<W> {
    fn protocol(&self) -> Protocol {
        W::KIND
    }

    fn on_data(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        if let Some(reason) = self.conn.poisoned.take() {
            return Feed::LostSync(reason);
        }
        let feed = if chunk.direction == self.conn.frontend {
            self.on_frontend(chunk, out)
        } else {
            self.on_backend(chunk, out)
        };
        let feed = match (feed, self.conn.poisoned.take()) {
            (Feed::Continue, Some(reason)) => Feed::LostSync(reason),
            (feed, _) => feed,
        };
        if feed != Feed::Continue {
            // The parser is about to be replaced: what it holds is lost.
            self.conn.clear_pending();
        }
        feed
    }

    fn on_close(&mut self, _ts_ns: u64, _out: &mut Vec<ParsedSpan>) {
        self.conn.clear_pending();
    }

    fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.conn.dropped)
    }

    fn buffered_bytes(&self) -> usize {
        let frames = self.front_frames.capacity() * std::mem::size_of::<Framed<<W::Front as Framing>::Head>>()
            + self.back_frames.capacity() * std::mem::size_of::<Framed<<W::Back as Framing>::Head>>();
        self.front.buffered_bytes() + self.back.buffered_bytes() + frames + self.wire.buffered_bytes()
    }

    fn resumes_after_tls(&self) -> bool {
        self.wire.resumes_after_tls()
    }

    fn switched_to_tls(&self) -> bool {
        self.wire.switched_to_tls()
    }

    fn on_idle(&mut self, older_than_ns: u64, out: &mut Vec<ParsedSpan>) {
        if self.conn.hunting && self.wire.idle_ends_hunt(&self.conn) && self.conn.last_backend_exit < older_than_ns {
            // Nothing more was read for a long time: the response being
            // read is over.
            let end_ns = self.conn.last_backend_exit;
            self.conn.end_hunt(&mut self.wire, end_ns, out);
        }
        if self.conn.pending.iter().any(|r| r.waiting_since_before(older_than_ns)) {
            self.conn.poison(W::UNANSWERED);
        }
    }
}
