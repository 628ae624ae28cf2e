//! The PostgreSQL state machine: requests queued as they are written,
//! answered in order by the backend's messages, named statements and portals
//! remembered; it runs inside the SQL connection [`Shell`].
use super::messages::{
    parse_error, tag_counts, BackFraming, FrontFraming, Head, CANCEL_REQUEST, GSSENC_REQUEST, MAX_NAME,
    READY_FOR_QUERY, SSL_REQUEST,
};
use crate::model::Protocol;
use crate::{
    model::ParsedSpan,
    protocols::{
        sql::{
            analyze_query, cstr, Backslash, BoundedMap, Conn, DbError, Dialect, Frame, Outcome, Request, SharedQuery,
            Shell, Timing, Wire,
        },
        Chunk, Feed,
    },
};

pub const SYSTEM: &str = "postgresql";

/// Named statements remembered per connection.
pub const MAX_STATEMENTS: usize = 1024;
/// Bytes of statement text remembered per connection.
pub const STATEMENT_BUDGET: usize = 256 * 1024;
const MAX_PORTALS: usize = 256;

/// The PostgreSQL parser.
pub type PostgresParser = Shell<PostgresWire>;

/// One statement execution awaiting its response.
#[derive(Debug)]
pub struct Op {
    query: Option<SharedQuery>,
    start: Timing,
    rows: u64,
    /// CommandComplete tags seen (a `Q` may hold several statements).
    tags: u32,
    last_tag: Option<String>,
    error: Option<DbError>,
    copy_out: bool,
}

impl Op {
    fn new(query: Option<SharedQuery>, start: Timing) -> Op {
        Op { query, start, rows: 0, tags: 0, last_tag: None, error: None, copy_out: false }
    }
}

#[derive(Debug)]
pub enum Pending {
    Execute(Op),
    Query(Op),
    Sync,
    /// FunctionCall: answered by ReadyForQuery.
    Other,
}

impl Request for Pending {
    fn gives_span(&self) -> bool {
        matches!(self, Pending::Execute(_) | Pending::Query(_))
    }

    fn waiting_since_before(&self, ns: u64) -> bool {
        match self {
            Pending::Execute(op) | Pending::Query(op) => op.start.enter_ns < ns,
            Pending::Sync | Pending::Other => false,
        }
    }

    /// A Sync, a simple Query or a FunctionCall is answered with a
    /// ReadyForQuery.
    fn ends_batch(&self) -> bool {
        matches!(self, Pending::Query(_) | Pending::Sync | Pending::Other)
    }
}

/// What the PostgreSQL protocol keeps per connection besides the shell's state.
pub struct PostgresWire {
    /// An SSLRequest/GSSENCRequest awaits its one-byte answer.
    encryption_answer_pending: bool,
    /// The server answered `S`: a TLS handshake follows on the socket.
    tls_negotiated: bool,
    pub(super) statements: BoundedMap<Vec<u8>, SharedQuery>,
    portals: BoundedMap<Vec<u8>, Option<SharedQuery>>,
    /// From the server's `standard_conforming_strings` parameter status.
    backslash: Backslash,
}

fn query(conn: &Conn<PostgresWire>, backslash: Backslash, raw: &[u8], truncated: bool) -> SharedQuery {
    SharedQuery::new(analyze_query(raw, truncated, Dialect::Postgres, backslash, conn.raw_sql))
}

fn emit(conn: &Conn<PostgresWire>, op: &Op, end_ns: u64, outcome: Outcome, out: &mut Vec<ParsedSpan>) {
    let hint = op.last_tag.as_deref().and_then(|t| tag_counts(t, op.copy_out).0);
    conn.emit(op.query.as_deref(), hint, op.start, end_ns, outcome, out);
}

fn outcome_of(op: &Op) -> Outcome {
    let mut outcome = Outcome { error: op.error.clone(), ..Outcome::default() };
    if op.tags == 1 && op.error.is_none() {
        if let Some(tag) = &op.last_tag {
            let (_, returned, affected) = tag_counts(tag, op.copy_out);
            outcome.returned_rows = returned;
            outcome.affected_rows = affected;
        }
    }
    outcome
}

impl PostgresWire {
    /// `database` (else `user`) of a StartupMessage becomes the namespace.
    fn on_startup(conn: &mut Conn<Self>, body: &[u8]) {
        let mut pos = 0;
        let (mut user, mut database) = (None, None);
        while let Some(key) = cstr(body, &mut pos) {
            if key.is_empty() {
                break;
            }
            let Some(value) = cstr(body, &mut pos) else {
                break;
            };
            match key {
                b"user" => user = Some(value),
                b"database" => database = Some(value),
                _ => {}
            }
        }
        if let Some(db) = database.or(user).filter(|v| !v.is_empty() && v.len() <= MAX_NAME) {
            conn.namespace = Some(String::from_utf8_lossy(db).into_owned());
        }
    }
}

impl Wire for PostgresWire {
    type Request = Pending;
    type Front = FrontFraming;
    type Back = BackFraming;
    const PROTOCOL: &'static str = SYSTEM;
    const KIND: Protocol = Protocol::Postgres;
    const MAX_PENDING: usize = 4096;
    const TOO_MANY_PENDING: &'static str = "postgres: too many requests awaiting responses";
    const SEVERAL_IN_FLIGHT: &'static str = "postgres: response framing lost with several requests in flight";
    const UNANSWERED: &'static str = "postgres: requests unanswered for too long";

    fn buffered_bytes(&self) -> usize {
        self.statements.weight() + self.portals.weight()
    }

    fn switched_to_tls(&self) -> bool {
        self.tls_negotiated
    }

    fn new() -> Self {
        PostgresWire {
            encryption_answer_pending: false,
            tls_negotiated: false,
            statements: BoundedMap::new(MAX_STATEMENTS, STATEMENT_BUDGET),
            portals: BoundedMap::new(MAX_PORTALS, MAX_PORTALS),
            backslash: Backslash::Unknown,
        }
    }

    fn framing() -> (FrontFraming, BackFraming) {
        (FrontFraming { allow_untyped: true }, BackFraming)
    }

    fn on_request(&mut self, conn: &mut Conn<Self>, f: Frame<Head>, out: &mut Vec<ParsedSpan>) -> Result<(), Feed> {
        if conn.hunting && !conn.pending.pipelined() && conn.pending.batch_closed() {
            // A client that waits for each response only writes again once
            // it has read the whole previous one.
            let end_ns = conn.last_backend_exit;
            conn.end_hunt(self, end_ns, out);
        }
        let body = &f.body;
        match f.head {
            Head::Untyped(SSL_REQUEST | GSSENC_REQUEST) => self.encryption_answer_pending = true,
            Head::Untyped(CANCEL_REQUEST) => {}
            Head::Untyped(_) => Self::on_startup(conn, body),
            Head::Typed(b'Q') => {
                let mut pos = 0;
                let (text, truncated) = match cstr(body, &mut pos) {
                    Some(text) => (text, false),
                    None => (&body[..], true),
                };
                let query = query(conn, self.backslash, text, truncated || !f.complete());
                conn.push(Pending::Query(Op::new(Some(query), f.start)))?;
            }
            Head::Typed(b'P') => {
                let mut pos = 0;
                if let Some(name) = cstr(body, &mut pos) {
                    let rest = body.get(pos..).unwrap_or(&[]);
                    let (text, truncated) = match cstr(body, &mut pos) {
                        Some(text) => (text, false),
                        None => (rest, true),
                    };
                    let query = query(conn, self.backslash, text, truncated || !f.complete());
                    let weight = query.weight();
                    self.statements.insert(name.to_vec(), query, weight);
                }
            }
            Head::Typed(b'B') => {
                let mut pos = 0;
                match (cstr(body, &mut pos), cstr(body, &mut pos)) {
                    (Some(portal), Some(statement)) => {
                        let query = self.statements.get(&statement.to_vec()).cloned();
                        self.portals.insert(portal.to_vec(), query, 1);
                    }
                    // Names we cannot read: forget every binding rather than
                    // let a stale one label a later Execute.
                    _ => self.portals.clear(),
                }
            }
            Head::Typed(b'E') => {
                let mut pos = 0;
                let query =
                    cstr(body, &mut pos).and_then(|portal| self.portals.get(&portal.to_vec()).cloned().flatten());
                conn.push(Pending::Execute(Op::new(query, f.start)))?;
            }
            Head::Typed(b'S') => conn.push(Pending::Sync)?,
            Head::Typed(b'F') => conn.push(Pending::Other)?,
            Head::Typed(b'C') => {
                let mut pos = 1;
                if let Some(name) = cstr(body, &mut pos) {
                    match body.first() {
                        Some(b'S') => {
                            self.statements.remove(&name.to_vec());
                        }
                        Some(b'P') => {
                            self.portals.remove(&name.to_vec());
                        }
                        _ => {}
                    }
                }
            }
            // Flush, Describe, COPY data, passwords, Terminate: nothing to record.
            Head::Typed(_) => {}
        }
        Ok(())
    }

    fn before_response<'c>(&mut self, mut chunk: Chunk<'c>) -> Result<Chunk<'c>, Feed> {
        if self.encryption_answer_pending {
            self.encryption_answer_pending = false;
            match chunk.bytes.first() {
                Some(b'S') => {
                    self.tls_negotiated = true;
                    return Err(Feed::Opaque("postgres: TLS negotiated"));
                }
                Some(b'G') => return Err(Feed::Opaque("postgres: GSSAPI encryption negotiated")),
                Some(b'N') => {
                    chunk.bytes = &chunk.bytes[1..];
                    chunk.total_len = chunk.total_len.saturating_sub(1);
                }
                _ => return Err(Feed::LostSync("postgres: unexpected answer to an encryption request")),
            }
        }
        Ok(chunk)
    }

    fn on_response(&mut self, conn: &mut Conn<Self>, f: Frame<u8>, out: &mut Vec<ParsedSpan>) -> Result<(), Feed> {
        match f.head {
            // ParameterStatus: at start-up and after every SET of a reported
            // parameter.
            b'S' => {
                let mut pos = 0;
                if cstr(&f.body, &mut pos) == Some(&b"standard_conforming_strings"[..]) {
                    self.backslash = match cstr(&f.body, &mut pos) {
                        Some(b"on") => Backslash::Plain,
                        Some(b"off") => Backslash::Escapes,
                        _ => Backslash::Unknown,
                    };
                }
            }
            b'D' => {
                if let Some(Pending::Execute(op) | Pending::Query(op)) = conn.pending.front_mut() {
                    op.rows += 1;
                }
            }
            b'C' | b'I' | b's' => {
                let tag = (f.head == b'C').then(|| {
                    let mut pos = 0;
                    let raw = cstr(&f.body, &mut pos).unwrap_or(&f.body);
                    String::from_utf8_lossy(raw).into_owned()
                });
                match conn.pending.front_mut() {
                    Some(Pending::Execute(_)) => {
                        if let Some(Pending::Execute(mut op)) = conn.pending.pop() {
                            let suspended = f.head == b's';
                            if let Some(tag) = tag {
                                op.tags += 1;
                                op.last_tag = Some(tag);
                            }
                            let mut outcome = outcome_of(&op);
                            if suspended {
                                outcome.returned_rows = Some(op.rows);
                            }
                            emit(conn, &op, f.end_ns, outcome, out);
                        }
                    }
                    Some(Pending::Query(op)) => {
                        if let Some(tag) = tag {
                            op.tags += 1;
                            op.last_tag = Some(tag);
                        }
                    }
                    // A completion for a request we never saw (joined mid-stream).
                    _ => conn.drop_exchanges(1),
                }
            }
            b'E' => {
                let error = parse_error(&f.body);
                match conn.pending.front_mut() {
                    Some(Pending::Execute(_)) => {
                        if let Some(Pending::Execute(mut op)) = conn.pending.pop() {
                            op.error = Some(error);
                            emit(conn, &op, f.end_ns, outcome_of(&op), out);
                        }
                        // The server skips everything up to Sync.
                        while matches!(conn.pending.front(), Some(Pending::Execute(_))) {
                            conn.pending.pop();
                        }
                    }
                    Some(Pending::Query(op)) if op.error.is_none() => op.error = Some(error),
                    _ => {}
                }
            }
            b'Z' => {
                while let Some(p) = conn.pending.pop() {
                    match p {
                        // Skipped by the server after an error.
                        Pending::Execute(_) => continue,
                        Pending::Query(op) => {
                            emit(conn, &op, f.end_ns, outcome_of(&op), out);
                            break;
                        }
                        Pending::Sync | Pending::Other => break,
                    }
                }
            }
            b'G' | b'H' | b'W' => {
                if let Some(Pending::Execute(op) | Pending::Query(op)) = conn.pending.front_mut() {
                    op.copy_out = f.head == b'H';
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_hunted(&mut self, conn: &mut Conn<Self>, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) {
        if !chunk.is_truncated() && chunk.bytes.len() >= 6 {
            let tail = &chunk.bytes[chunk.bytes.len() - 6..];
            if tail[..5] == READY_FOR_QUERY && matches!(tail[5], b'I' | b'T' | b'E') {
                conn.end_hunt(self, chunk.exit_ns, out);
            }
        }
    }

    fn flush_hunted(&mut self, conn: &mut Conn<Self>, end_ns: u64, out: &mut Vec<ParsedSpan>) {
        let mut executes = Vec::new();
        while let Some(p) = conn.pending.pop() {
            match p {
                Pending::Execute(op) => executes.push(op),
                Pending::Query(op) => emit(conn, &op, end_ns, Outcome::cut(op.error.clone()), out),
                Pending::Sync | Pending::Other => {}
            }
        }
        match executes.as_slice() {
            [] => {}
            [op] => emit(conn, op, end_ns, Outcome::cut(op.error.clone()), out),
            several => {
                conn.drop_exchanges(several.len() as u64);
                conn.poison("postgres: response framing lost over several executes");
            }
        }
    }

    /// As for a new request (see `on_request`): only a client not seen
    /// pipelining is known to have read the whole response.
    fn idle_ends_hunt(&self, conn: &Conn<Self>) -> bool {
        !conn.pending.pipelined()
    }
}
