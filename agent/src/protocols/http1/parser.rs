//! The per-connection HTTP/1.x state: where each direction is in its
//! stream, the requests waiting for responses, and what every path through
//! the state machine shares (ending an exchange, losing sync).

use std::{cell::RefCell, collections::VecDeque, sync::Arc};

use waggle_common::Role;

use super::{
    chunked::ChunkedDecoder,
    head::HeadMemo,
    head_buf::HeadBuf,
    redact::{PathRedaction, BUILT_IN_REDACTION},
    span::{build_span, Exchange, PendingRequest},
};
use crate::model::{ParsedSpan, SpanKind};
use crate::protocols::Feed;

/// Requests waiting for their responses on one connection (pipelining).
pub const MAX_PENDING: usize = 64;

#[derive(Debug)]
pub(super) enum ReqState {
    /// Position in the stream unknown (joined mid-stream, after an
    /// unfollowable body, after CONNECT): the next chunk starting with a
    /// full request line resynchronises.
    Skip,
    /// At a message boundary.
    Idle,
    /// Head bytes are arriving (some may be buffered in `head`).
    Head,
    Body {
        id: u64,
        framing: ReqBody,
    },
}

#[derive(Debug)]
pub(super) enum ReqBody {
    Length(u64),
    Chunked(ChunkedDecoder),
}

#[derive(Debug)]
pub(super) enum RespState {
    /// Joined mid-stream or after an unfollowable response: bytes are skipped
    /// until a chunk starts with a status line while a request is pending.
    Unsynced,
    Idle,
    Head,
    Body {
        exchange: Box<Exchange>,
        framing: RespBody,
    },
    /// The response's end is not visible: it ends at the last response chunk
    /// before the next request, close or idle.
    Unframed {
        exchange: Box<Exchange>,
    },
}

#[derive(Debug)]
pub(super) enum RespBody {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
}

pub(super) struct ReqSide {
    pub(super) state: ReqState,
    pub(super) head: HeadBuf,
    pub(super) head_start_ns: u64,
    pub(super) head_tid: u32,
    /// The current head started while resynchronising: if it turns out not
    /// to be a request, go back to skipping instead of losing sync.
    pub(super) tentative: bool,
    /// The first bytes of the current head passed the request-line check.
    pub(super) line_ok: bool,
    pub(super) last_ns: u64,
    /// The last request's Host and User-Agent.
    pub(super) memo: HeadMemo,
}

pub(super) struct RespSide {
    pub(super) state: RespState,
    pub(super) head: HeadBuf,
    /// exit_ns of the last response-direction chunk.
    pub(super) last_ns: u64,
}

/// Closed connections' parsers kept for new ones: a `Connection: close`
/// server opens one connection per request, and reusing a parser saves its
/// box and its request queue's slot (two allocations and two frees) per
/// connection. Bounded: a burst of closes frees what does not fit.
const SPARE_PARSERS: usize = 32;

thread_local! {
    /// Per thread: the tracker runs on one, so no lock is needed. Boxes,
    /// because the box itself is what is reused (it becomes the next
    /// connection's `Box<dyn ProtocolParser>`).
    #[allow(clippy::vec_box)]
    static SPARES: RefCell<Vec<Box<Http1Parser>>> = const { RefCell::new(Vec::new()) };
}

/// A spare parser (renewed, see [`Http1Parser::renewed`]), if one is kept.
pub(super) fn take_spare() -> Option<Box<Http1Parser>> {
    SPARES.try_with(|spares| spares.try_borrow_mut().ok()?.pop()).ok().flatten()
}

/// Keeps `parser` for a later connection if there is room.
pub(super) fn keep_spare(parser: Box<Http1Parser>) {
    let Some(parser) = parser.renewed() else { return };
    let _ = SPARES.try_with(|spares| {
        if let Ok(mut spares) = spares.try_borrow_mut() {
            if spares.len() < SPARE_PARSERS {
                spares.push(parser);
            }
        }
    });
}

/// Per-connection HTTP/1.x state machine.
pub struct Http1Parser {
    /// Traced process's side; Unknown until the first request line shows
    /// which direction carries requests.
    pub(super) role: Role,
    pub(super) pending: VecDeque<PendingRequest>,
    pub(super) next_id: u64,
    pub(super) req: ReqSide,
    pub(super) resp: RespSide,
    pub(super) dropped: u64,
    /// The operator's path templates; None: the built-in rules only.
    pub(super) redaction: Option<Arc<PathRedaction>>,
}

impl Http1Parser {
    pub fn new(role: Role) -> Http1Parser {
        // One slot, allocated once: VecDeque's first growth would take
        // four (~1 KiB), which every idle keep-alive connection would then
        // hold; only pipelining needs more.
        Http1Parser::with_queue(role, VecDeque::with_capacity(1))
    }

    /// A fresh parser whose request queue is `pending` (empty).
    fn with_queue(role: Role, pending: VecDeque<PendingRequest>) -> Http1Parser {
        Http1Parser {
            role,
            pending,
            next_id: 0,
            req: ReqSide {
                // The first request-direction chunk must itself start with a
                // request line: a connection may be joined mid-body.
                state: ReqState::Skip,
                head: HeadBuf::default(),
                head_start_ns: 0,
                head_tid: 0,
                tentative: false,
                line_ok: false,
                last_ns: 0,
                memo: HeadMemo::default(),
            },
            resp: RespSide { state: RespState::Idle, head: HeadBuf::default(), last_ns: 0 },
            dropped: 0,
            redaction: None,
        }
    }

    /// A closed connection's parser made fresh for the next connection: it
    /// keeps only its request queue's slot (emptied) and its Host and
    /// User-Agent memo (a new connection from the same client sends the
    /// same ones; the memo checks them before it answers, so a different
    /// client just replaces them). `None` when the queue grew past one slot
    /// (pipelining): that one is freed rather than kept.
    pub(super) fn renewed(mut self: Box<Self>) -> Option<Box<Http1Parser>> {
        if self.pending.capacity() > 1 {
            return None;
        }
        let mut pending = std::mem::take(&mut self.pending);
        pending.clear();
        let memo = std::mem::take(&mut self.req.memo);
        *self = Http1Parser::with_queue(Role::Unknown, pending);
        self.req.memo = memo;
        Some(self)
    }

    /// A renewed parser put to work for a connection on `role`'s side.
    pub(super) fn start(&mut self, role: Role, redaction: Arc<PathRedaction>) {
        self.role = role;
        self.set_redaction(redaction);
    }

    /// Hides the segments `redaction` names in paths, besides the built-in
    /// rules.
    pub fn with_redaction(mut self, redaction: Arc<PathRedaction>) -> Http1Parser {
        self.set_redaction(redaction);
        self
    }

    fn set_redaction(&mut self, redaction: Arc<PathRedaction>) {
        self.redaction = (redaction.templates() > 0).then_some(redaction);
    }

    fn span_kind(&self) -> SpanKind {
        if self.role == Role::Client {
            SpanKind::Client
        } else {
            SpanKind::Server
        }
    }

    /// Drops everything (lost sync, opaque, close): every exchange still in
    /// flight is counted as dropped.
    pub(super) fn reset(&mut self) {
        self.dropped += self.pending.len() as u64;
        self.pending.clear();
        if matches!(self.resp.state, RespState::Body { .. } | RespState::Unframed { .. }) {
            self.dropped += 1;
        }
        if matches!(self.req.state, ReqState::Head) && !self.req.tentative {
            self.dropped += 1;
        }
        self.req.state = ReqState::Skip;
        self.req.head.reset();
        self.req.tentative = false;
        self.req.line_ok = false;
        self.resp.state = RespState::Unsynced;
        self.resp.head.reset();
    }

    pub(super) fn lost_sync(&mut self, reason: &'static str) -> Feed {
        tracing::trace!(reason, "http1 parser lost sync");
        self.reset();
        Feed::LostSync(reason)
    }

    /// The path redaction request heads are read with.
    pub(super) fn redaction(redaction: Option<&PathRedaction>) -> &PathRedaction {
        redaction.unwrap_or(&BUILT_IN_REDACTION)
    }

    pub(super) fn finish(&mut self, exchange: Exchange, end_ns: u64, out: &mut Vec<ParsedSpan>) {
        match build_span(self.span_kind(), exchange, end_ns) {
            Some(span) => out.push(span),
            None => self.dropped += 1,
        }
    }
}
