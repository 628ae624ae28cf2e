//! Requests awaiting replies on a cache connection, matched in order (both
//! Redis and memcached answer commands in the order they were sent, so
//! pipelining is a FIFO), and the spans they become.
use std::{collections::VecDeque, sync::Arc};

use waggle_common::{Direction, Role};

use crate::{
    model::{Attribute, ParsedSpan, SpanKind},
    protocols::{
        sql::{frontend_direction, DbError, DbSpan, Outcome, QueryInfo, Timing},
        Feed,
    },
};

/// Commands awaiting replies before the parser gives up on the connection
/// (a pipeline deeper than this is not followed).
pub const MAX_PENDING: usize = 1024;
/// Longest `db.query.text`; longer texts end in ` ...`.
pub const MAX_TEXT: usize = 512;
/// Longest key kept in `db.query.text` (with keys enabled); longer ones
/// are `?`.
pub const KEY_KEEP: usize = 64;

/// A command sent and not answered yet. `E` is what its reply changes on the
/// connection (the protocol's own business).
pub struct Pending<E> {
    pub operation: Arc<str>,
    pub text: Arc<str>,
    /// The text stands for a longer command than it shows.
    pub truncated: bool,
    pub start: Timing,
    pub effect: E,
}

/// The connection state both cache parsers keep.
pub struct Exchanges<E> {
    pub kind: SpanKind,
    pub frontend: Direction,
    pub system: &'static str,
    /// `db.namespace`.
    pub namespace: Option<String>,
    pub pending: VecDeque<Pending<E>>,
    /// Reply framing lost: the reply being read ends at the last read before
    /// the next command (clients that do not pipeline only write after
    /// reading a whole reply).
    pub hunting: bool,
    pub last_backend_exit: u64,
    dropped: u64,
    skipped: u64,
    poisoned: Option<&'static str>,
}

impl<E> Exchanges<E> {
    pub fn new(role: Role, system: &'static str) -> Self {
        Exchanges {
            kind: if role == Role::Server { SpanKind::Server } else { SpanKind::Client },
            frontend: frontend_direction(role),
            system,
            namespace: None,
            pending: VecDeque::new(),
            hunting: false,
            last_backend_exit: 0,
            dropped: 0,
            skipped: 0,
            poisoned: None,
        }
    }

    pub fn push(&mut self, pending: Pending<E>) -> Result<(), Feed> {
        if self.pending.len() >= MAX_PENDING {
            self.poison("too many cache commands awaiting replies");
            return Err(Feed::LostSync("too many cache commands awaiting replies"));
        }
        self.pending.push_back(pending);
        Ok(())
    }

    /// Forgets every pending command, counting them as dropped.
    pub fn clear(&mut self) {
        self.dropped += self.pending.len() as u64;
        self.pending.clear();
    }

    /// Drops every pending command; `reason` is reported as LostSync with
    /// the next chunk.
    pub fn poison(&mut self, reason: &'static str) {
        self.clear();
        self.poisoned = Some(reason);
    }

    pub fn take_poison(&mut self) -> Option<&'static str> {
        self.poisoned.take()
    }

    /// An exchange seen and dropped without a span.
    pub fn drop_one(&mut self) {
        self.dropped += 1;
    }

    /// A message that gives no span by design (a pub/sub push).
    pub fn skip_one(&mut self) {
        self.skipped += 1;
    }

    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    pub fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
    }

    pub fn buffered_bytes(&self) -> usize {
        self.pending.iter().map(|p| p.text.len() + p.operation.len() + 96).sum::<usize>()
            + self.pending.capacity() * std::mem::size_of::<Pending<E>>()
    }

    /// The reply being hunted is over (the next command is being sent, or
    /// the connection went quiet): with one command in flight it answered
    /// that one; with several, which of them it answered is unknown.
    pub fn end_hunt(&mut self, out: &mut Vec<ParsedSpan>) {
        self.hunting = false;
        if self.pending.len() == 1 {
            if let Some(p) = self.pending.pop_front() {
                let end = self.last_backend_exit;
                self.emit(&p, end, Outcome::cut(None), Vec::new(), out);
            }
        } else {
            self.clear();
        }
    }

    /// The span of `p`, answered at `end_ns`.
    pub fn emit(
        &self,
        p: &Pending<E>,
        end_ns: u64,
        outcome: Outcome,
        extra: Vec<Attribute>,
        out: &mut Vec<ParsedSpan>,
    ) {
        let query = QueryInfo {
            text: Arc::clone(&p.text),
            truncated: p.truncated,
            operation: Some(Arc::clone(&p.operation)),
            collection: None,
            summary: None,
            statements: 1,
        };
        let mut span = DbSpan {
            kind: self.kind,
            system: self.system,
            namespace: self.namespace.as_deref(),
            query: Some(&query),
            operation_hint: None,
            start_ns: p.start.enter_ns,
            end_ns,
            tid: p.start.tid,
            outcome,
        }
        .build();
        span.attributes.extend(extra);
        out.push(span);
    }
}

/// An error reply's code, and a description that names only the code (the
/// message text may quote keys or values).
pub fn error(system: &str, code: String) -> DbError {
    DbError { description: format!("{system} error {code}"), code }
}

/// The word an error line starts with when it is an error code (upper-case
/// letters, digits and `_`, as Redis and memcached write them), else
/// `_OTHER`.
pub fn error_code(line: &[u8]) -> String {
    let word = line.split(|b| *b == b' ').next().unwrap_or_default();
    let ok = !word.is_empty()
        && word.len() <= 32
        && word[0].is_ascii_uppercase()
        && word.iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_');
    if ok {
        String::from_utf8_lossy(word).into_owned()
    } else {
        "_OTHER".to_owned()
    }
}

/// A key as `db.query.text` may show it: printable ASCII without spaces,
/// at most [`KEY_KEEP`] bytes; else None (shown as `?`).
pub fn printable_key(key: &[u8]) -> Option<&str> {
    if key.is_empty() || key.len() > KEY_KEEP || !key.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    std::str::from_utf8(key).ok()
}

/// Builds a query text word by word, bounded by [`MAX_TEXT`].
pub struct TextBuilder {
    text: String,
    full: bool,
}

impl TextBuilder {
    pub fn new(first: &str) -> Self {
        TextBuilder { text: first.to_owned(), full: false }
    }

    pub fn word(&mut self, w: &str) {
        if self.full {
            return;
        }
        if self.text.len() + 1 + w.len() > MAX_TEXT - 4 {
            self.text.push_str(" ...");
            self.full = true;
            return;
        }
        self.text.push(' ');
        self.text.push_str(w);
    }

    /// The text was cut at [`MAX_TEXT`].
    pub fn full(&self) -> bool {
        self.full
    }

    pub fn finish(self) -> Arc<str> {
        Arc::from(self.text)
    }
}
