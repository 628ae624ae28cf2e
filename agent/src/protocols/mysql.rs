//! MySQL / MariaDB client/server protocol (classic, uncompressed).
//!
//! The client is the application's side (role Client: Egress); a traced DB
//! server (role Server) sees the same packets with directions mirrored.
//!
//! # Spans
//! * One span per `COM_QUERY` and per `COM_STMT_EXECUTE` (also MariaDB's
//!   `COM_STMT_BULK_EXECUTE`), from the write of the command to the last
//!   packet of its response (OK, ERR, or the end of the last result set).
//! * `COM_STMT_PREPARE` remembers the statement text under the id the server
//!   answers with ([`MAX_STATEMENTS`] entries / [`STATEMENT_BUDGET`] bytes per
//!   connection); it gives a span only when it fails, so a statement that
//!   never ran is still visible. Executing an id whose prepare was never seen
//!   gives a span without text. Parameter values are never read.
//! * `COM_INIT_DB` updates `db.namespace` once the server accepts it;
//!   `COM_PING`, `COM_STMT_CLOSE`, `COM_QUIT` and friends give no span.
//! * `db.system.name` is `mariadb` when the server greeting's version says
//!   MariaDB, else `mysql` (also when the greeting was not seen).
//! * OK packets give `waggle.db.response.affected_rows`; result sets give
//!   `db.response.returned_rows` (summed over multiple result sets).
//! * ERR packets: `db.response.status_code` = `error.type` = the error number
//!   (`1146`), status ERROR with description `MySQL error 1146 (SQLSTATE
//!   42S02)`; the message text is not exported (it may echo values).
//! * TLS (`CLIENT_SSL` handshake) and compression make the connection opaque.
//!
//! # Captured prefixes
//! Packets are framed by their 3-byte lengths; cut bodies are skipped by
//! count. A lost boundary in the client direction is [`Feed::LostSync`]. In
//! the server direction (a large result set) the parser waits for the next
//! command: the classic protocol is request/response, so the response ended
//! with the last server read before it. The span is emitted then, marked
//! `waggle.db.response.truncated`, without row counts.
use std::collections::VecDeque;

use waggle_common::{Direction, Role};

use super::{
    sql::{
        analyze_query, cstr, looks_textual, plausible_sql_start, BoundedMap, DbError, DbSpan, Dialect, Frame, Framed,
        Framer, Framing, Outcome, SharedQuery, Timing, MAX_QUERY_TEXT,
    },
    Chunk, Confidence, Feed, ParserConfig, ProtocolDetector, ProtocolParser,
};
use crate::spans::{ParsedSpan, SpanKind};

/// Protocol name (also for MariaDB, which speaks the same protocol).
pub const PROTOCOL: &str = "mysql";
const SYSTEM_MYSQL: &str = "mysql";
const SYSTEM_MARIADB: &str = "mariadb";

/// Prepared statements remembered per connection.
pub const MAX_STATEMENTS: usize = 1024;
/// Bytes of statement text remembered per connection.
pub const STATEMENT_BUDGET: usize = 256 * 1024;
/// Commands awaiting responses (MariaDB connectors pipeline a few).
const MAX_PENDING: usize = 256;
/// A payload of exactly this length continues in the next packet.
const MAX_PACKET: u32 = 0xff_ffff;

const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_COMPRESS: u32 = 0x20;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x20_0000;
const CLIENT_DEPRECATE_EOF: u32 = 0x100_0000;
const CLIENT_ZSTD_COMPRESSION: u32 = 0x400_0000;
const CLIENT_QUERY_ATTRIBUTES: u32 = 0x800_0000;

const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_RESET_CONNECTION: u8 = 0x1f;
const COM_STMT_BULK_EXECUTE: u8 = 0xfa;
/// Commands answered by exactly one OK/ERR/EOF (or string) packet.
const SIMPLE_COMMANDS: &[u8] = &[0x07, 0x08, 0x09, 0x0c, 0x0d, 0x0e, 0x1a, 0x1b, 0x1f];

fn frontend_direction(role: Role) -> Direction {
    match role {
        Role::Server => Direction::Ingress,
        Role::Client | Role::Unknown => Direction::Egress,
    }
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Length-encoded integer at `b[at..]`: (value, bytes used).
fn lenenc(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *b.get(at)?;
    let wide = |n: usize| -> Option<(u64, usize)> {
        let s = b.get(at + 1..at + 1 + n)?;
        let mut v = 0u64;
        for (i, byte) in s.iter().enumerate() {
            v |= u64::from(*byte) << (8 * i);
        }
        Some((v, n + 1))
    };
    match first {
        0..=0xfa => Some((u64::from(first), 1)),
        0xfc => wide(2),
        0xfd => wide(3),
        0xfe => wide(8),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub len: u32,
    pub seq: u8,
}

struct PacketFraming {
    keep: usize,
}

impl Framing for PacketFraming {
    type Head = Head;

    fn header_len(&self, _first: u8) -> usize {
        4
    }

    fn parse_header(&mut self, h: &[u8]) -> Result<(Head, u64, usize), &'static str> {
        let len = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
        Ok((Head { len, seq: h[3] }, u64::from(len), self.keep))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing seen yet (or joined mid-stream).
    Start,
    /// Server greeting seen; the handshake response comes next.
    Greeted,
    /// Authentication exchange until the server's OK.
    Auth,
    Command,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum CmdKind {
    Query,
    Execute,
    Prepare,
    Fetch,
    InitDb(String),
    ChangeUser(Option<String>),
    FieldList,
    Simple,
    /// Unknown response shape: consumes server packets until the next command.
    Opaque,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resp {
    Start,
    ColumnDefs(u64),
    AfterDefs,
    Rows,
    LocalInfile,
    /// Packets left in a prepare answer's parameter/column definitions.
    Skip(u64),
    /// Ignore everything until the next command.
    Drain,
}

#[derive(Debug)]
struct Command {
    kind: CmdKind,
    query: Option<SharedQuery>,
    start: Timing,
    next_seq: u8,
    state: Resp,
    rows: u64,
    result_sets: u32,
    affected: u64,
    saw_ok: bool,
    error: Option<DbError>,
}

enum Step {
    More,
    Done,
}

pub struct MysqlDetector;

impl ProtocolDetector for MysqlDetector {
    fn name(&self) -> &'static str {
        PROTOCOL
    }

    fn detect(&self, role: Role, chunk: &Chunk<'_>) -> Confidence {
        let b = chunk.bytes;
        if b.len() < 5 {
            let plausible = b.len() < 4 || b[3] == 0;
            return if plausible && !b.is_empty() && !chunk.is_truncated() { Confidence::NeedMore } else { Confidence::No };
        }
        let len = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
        if b[3] != 0 || len == 0 || u64::from(len) + 4 > chunk.total_len {
            return Confidence::No;
        }
        let end = (len as usize + 4).min(b.len());
        let payload = &b[4..end];
        let complete = end == len as usize + 4;
        let yes = if chunk.direction == frontend_direction(role) {
            command_plausible(payload, len, complete)
        } else {
            greeting_plausible(payload, len, complete)
        };
        if yes {
            Confidence::Yes
        } else {
            Confidence::No
        }
    }

    fn new_parser(&self, role: Role, config: &ParserConfig) -> Box<dyn ProtocolParser> {
        Box::new(MysqlParser::new(role, config))
    }
}

/// Protocol-10 greeting: version text, thread id, 8 scramble bytes, a zero.
fn greeting_plausible(p: &[u8], len: u32, complete: bool) -> bool {
    if p[0] != 10 || !(20..=1024).contains(&len) {
        return false;
    }
    let mut pos = 1;
    let Some(version) = cstr(p, &mut pos) else {
        return false;
    };
    if version.is_empty() || version.len() > 100 || !version[0].is_ascii_digit() || !version.iter().all(|c| c.is_ascii_graphic()) {
        return false;
    }
    match p.get(pos + 12) {
        Some(filler) => *filler == 0,
        None => !complete,
    }
}

fn command_plausible(p: &[u8], len: u32, complete: bool) -> bool {
    match p[0] {
        COM_QUERY | COM_STMT_PREPARE => {
            let text = match query_text(p, None) {
                Some(t) => t,
                None => return false,
            };
            let text = if complete { text } else { &text[..text.len().min(256)] };
            !text.is_empty() && looks_textual(text) && plausible_sql_start(text)
        }
        COM_STMT_EXECUTE => {
            len >= 10 && p.get(5).is_some_and(|flags| flags & !0x0f == 0) && p.get(6..10).is_none_or(|it| it == [1, 0, 0, 0])
        }
        COM_STMT_CLOSE | COM_STMT_RESET => len == 5,
        COM_STMT_FETCH => len == 9,
        _ => false,
    }
}

/// The SQL text of a COM_QUERY / COM_STMT_PREPARE payload; `caps` decides
/// whether COM_QUERY carries query attributes (when unknown: a text cannot
/// start with a control byte, an attribute count can).
fn query_text(p: &[u8], caps: Option<u32>) -> Option<&[u8]> {
    let rest = p.get(1..)?;
    if p[0] != COM_QUERY {
        return Some(rest);
    }
    let attributes = match caps {
        Some(c) => c & CLIENT_QUERY_ATTRIBUTES != 0,
        None => rest.first().is_some_and(|b| *b < 0x20 && !b.is_ascii_whitespace()),
    };
    if !attributes {
        return Some(rest);
    }
    let (count, n1) = lenenc(rest, 0)?;
    let (_sets, n2) = lenenc(rest, n1)?;
    // With attributes present the text sits behind typed values we do not
    // decode: report the command without text.
    if count != 0 {
        return None;
    }
    rest.get(n1 + n2..)
}

fn parse_err(body: &[u8], system: &str) -> DbError {
    let code = le16(body, 1).unwrap_or(0);
    let state = (body.get(3) == Some(&b'#'))
        .then(|| body.get(4..9))
        .flatten()
        .filter(|s| s.iter().all(u8::is_ascii_alphanumeric))
        .map(|s| String::from_utf8_lossy(s).into_owned());
    let product = if system == SYSTEM_MARIADB { "MariaDB" } else { "MySQL" };
    let description = match state {
        Some(state) => format!("{product} error {code} (SQLSTATE {state})"),
        None => format!("{product} error {code}"),
    };
    DbError { code: code.to_string(), description }
}

/// Server status flags of an OK packet (0x00 or 0xfe header).
fn ok_status(body: &[u8]) -> Option<(u64, u16)> {
    let (affected, n1) = lenenc(body, 1)?;
    let (_insert_id, n2) = lenenc(body, 1 + n1)?;
    Some((affected, le16(body, 1 + n1 + n2)?))
}

/// Status flags of an EOF (short) or OK-with-0xfe (long) terminator.
fn terminator_status(body: &[u8]) -> u16 {
    if body.len() <= 5 {
        le16(body, 3).unwrap_or(0)
    } else {
        ok_status(body).map_or(0, |(_, s)| s)
    }
}

pub struct MysqlParser {
    kind: SpanKind,
    frontend: Direction,
    raw_sql: bool,
    front: Framer<PacketFraming>,
    back: Framer<PacketFraming>,
    system: &'static str,
    phase: Phase,
    /// Client capability flags from the handshake, when it was seen.
    caps: Option<u32>,
    namespace: Option<String>,
    statements: BoundedMap<u32, SharedQuery>,
    last_prepared: Option<u32>,
    pending: VecDeque<Command>,
    /// The previous packet in that direction had the maximum length.
    front_continues: bool,
    back_continues: bool,
    hunting: bool,
    last_backend_exit: u64,
    poisoned: Option<&'static str>,
    front_frames: Vec<Framed<Head>>,
    back_frames: Vec<Framed<Head>>,
}

impl MysqlParser {
    pub fn new(role: Role, config: &ParserConfig) -> MysqlParser {
        MysqlParser {
            kind: if role == Role::Server { SpanKind::Server } else { SpanKind::Client },
            frontend: frontend_direction(role),
            raw_sql: config.raw_sql,
            front: Framer::new(PacketFraming { keep: MAX_QUERY_TEXT + 16 }),
            // Enough for greetings, OK/ERR/EOF packets and column counts.
            back: Framer::new(PacketFraming { keep: 256 }),
            system: SYSTEM_MYSQL,
            phase: Phase::Start,
            caps: None,
            namespace: None,
            statements: BoundedMap::new(MAX_STATEMENTS, STATEMENT_BUDGET),
            last_prepared: None,
            pending: VecDeque::new(),
            front_continues: false,
            back_continues: false,
            hunting: false,
            last_backend_exit: 0,
            poisoned: None,
            front_frames: Vec::new(),
            back_frames: Vec::new(),
        }
    }

    fn deprecate_eof(&self) -> Option<bool> {
        self.caps.map(|c| c & CLIENT_DEPRECATE_EOF != 0)
    }

    fn emit(&self, cmd: &Command, end_ns: u64, outcome: Outcome, out: &mut Vec<ParsedSpan>) {
        out.push(
            DbSpan {
                kind: self.kind,
                system: self.system,
                namespace: self.namespace.as_deref(),
                query: cmd.query.as_deref(),
                operation_hint: None,
                start_ns: cmd.start.enter_ns,
                end_ns,
                tid: cmd.start.tid,
                outcome,
            }
            .build(),
        );
    }

    /// The command's response is complete: emit its span if it has one.
    fn finish(&mut self, cmd: Command, end_ns: u64, out: &mut Vec<ParsedSpan>) {
        match cmd.kind {
            CmdKind::Query | CmdKind::Execute => {
                let outcome = Outcome {
                    returned_rows: (cmd.result_sets > 0 && cmd.error.is_none()).then_some(cmd.rows),
                    affected_rows: (cmd.saw_ok && cmd.error.is_none()).then_some(cmd.affected),
                    error: cmd.error.clone(),
                    response_truncated: false,
                };
                self.emit(&cmd, end_ns, outcome, out);
            }
            CmdKind::Prepare if cmd.error.is_some() => {
                let outcome = Outcome { error: cmd.error.clone(), ..Outcome::default() };
                self.emit(&cmd, end_ns, outcome, out);
            }
            _ => {}
        }
    }

    fn on_frontend(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        let mut frames = std::mem::take(&mut self.front_frames);
        frames.clear();
        self.front.push(chunk, &mut frames);
        let mut feed = Feed::Continue;
        for framed in frames.drain(..) {
            let result = match framed {
                Framed::Lost(reason) => Err(Feed::LostSync(reason)),
                Framed::Frame(frame) => self.on_client_packet(frame, out),
            };
            if let Err(stop) = result {
                feed = stop;
                break;
            }
        }
        self.front_frames = frames;
        feed
    }

    /// Err stops parsing the chunk with that feed result.
    fn on_client_packet(&mut self, f: Frame<Head>, out: &mut Vec<ParsedSpan>) -> Result<(), Feed> {
        let continuation = self.front_continues;
        self.front_continues = f.head.len == MAX_PACKET;
        if continuation {
            if let Some(cmd) = self.pending.back_mut() {
                cmd.next_seq = f.head.seq.wrapping_add(1);
            }
            return Ok(());
        }
        match self.phase {
            Phase::Greeted if f.head.seq == 1 => {
                return match self.on_handshake_response(&f.body) {
                    Some(reason) => Err(Feed::Opaque(reason)),
                    None => Ok(()),
                };
            }
            Phase::Greeted | Phase::Auth if f.head.seq != 0 => {
                // Auth switch answers and other authentication data: never read.
                self.phase = Phase::Auth;
                return Ok(());
            }
            _ => {}
        }
        if f.head.seq != 0 {
            // LOCAL INFILE contents, or authentication data for COM_CHANGE_USER.
            return match self.pending.back_mut() {
                Some(cmd) if cmd.state == Resp::LocalInfile || matches!(cmd.kind, CmdKind::ChangeUser(_)) => {
                    cmd.next_seq = f.head.seq.wrapping_add(1);
                    Ok(())
                }
                _ => Err(Feed::LostSync("mysql: unexpected client packet sequence")),
            };
        }
        if let Some(cmd) = self.pending.back_mut() {
            if cmd.state == Resp::LocalInfile {
                // A file large enough for the sequence id to wrap to 0.
                cmd.next_seq = 1;
                return Ok(());
            }
        }
        self.phase = Phase::Command;
        if self.hunting {
            // The client only writes a command after reading the whole
            // previous response.
            self.resolve_hunt(self.last_backend_exit, out);
        }
        while self.pending.front().is_some_and(|c| c.kind == CmdKind::Opaque || c.state == Resp::Drain) {
            self.pending.pop_front();
        }
        self.on_command(f)
    }

    fn on_handshake_response(&mut self, body: &[u8]) -> Option<&'static str> {
        self.phase = Phase::Auth;
        let Some(caps) = le32(body, 0) else {
            return None;
        };
        if caps & CLIENT_PROTOCOL_41 == 0 {
            return None;
        }
        if caps & CLIENT_SSL != 0 {
            return Some("mysql: TLS requested");
        }
        self.caps = Some(caps);
        let mut pos = 32;
        if cstr(body, &mut pos).is_none() {
            return None;
        }
        // The auth response is skipped by its length, never read.
        if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            let Some((n, used)) = lenenc(body, pos) else {
                return None;
            };
            pos += used + usize::try_from(n).unwrap_or(usize::MAX / 2);
        } else if caps & CLIENT_SECURE_CONNECTION != 0 {
            pos += 1 + usize::from(*body.get(pos)?);
        } else if cstr(body, &mut pos).is_none() {
            return None;
        }
        if caps & CLIENT_CONNECT_WITH_DB != 0 {
            if let Some(db) = cstr(body, &mut pos).filter(|d| !d.is_empty() && d.len() <= 256) {
                self.namespace = Some(String::from_utf8_lossy(db).into_owned());
            }
        }
        None
    }

    fn on_command(&mut self, f: Frame<Head>) -> Result<(), Feed> {
        let body = &f.body;
        let Some(&cmd) = body.first() else {
            return Err(Feed::LostSync("mysql: empty command packet"));
        };
        let truncated = !f.complete() || f.head.len == MAX_PACKET;
        let (kind, query, state) = match cmd {
            COM_QUIT | COM_STMT_SEND_LONG_DATA => return Ok(()),
            COM_STMT_CLOSE => {
                if let Some(id) = le32(body, 1) {
                    self.statements.remove(&id);
                }
                return Ok(());
            }
            COM_QUERY | COM_STMT_PREPARE => {
                let query = query_text(body, self.caps)
                    .map(|t| SharedQuery::new(analyze_query(t, truncated, Dialect::MySql, self.raw_sql)));
                let kind = if cmd == COM_QUERY { CmdKind::Query } else { CmdKind::Prepare };
                (kind, query, Resp::Start)
            }
            COM_STMT_EXECUTE | COM_STMT_BULK_EXECUTE => {
                // MariaDB: id 0xffffffff means the statement prepared last
                // (pipelined prepare + execute).
                let id = le32(body, 1).map(|id| if id == u32::MAX { self.last_prepared } else { Some(id) }).flatten();
                let query = id.and_then(|id| self.statements.get(&id).cloned());
                (CmdKind::Execute, query, Resp::Start)
            }
            COM_STMT_FETCH => (CmdKind::Fetch, None, Resp::Rows),
            COM_INIT_DB => {
                let schema = String::from_utf8_lossy(&body[1..body.len().min(257)]).into_owned();
                (CmdKind::InitDb(schema), None, Resp::Start)
            }
            COM_CHANGE_USER => {
                self.statements.clear();
                (CmdKind::ChangeUser(self.change_user_schema(body)), None, Resp::Start)
            }
            COM_FIELD_LIST => (CmdKind::FieldList, None, Resp::Start),
            c if SIMPLE_COMMANDS.contains(&c) => {
                if c == COM_RESET_CONNECTION {
                    self.statements.clear();
                }
                (CmdKind::Simple, None, Resp::Start)
            }
            _ => (CmdKind::Opaque, None, Resp::Drain),
        };
        if self.pending.len() >= MAX_PENDING {
            return Err(Feed::LostSync("mysql: too many commands awaiting responses"));
        }
        self.pending.push_back(Command {
            kind,
            query,
            start: f.start,
            next_seq: f.head.seq.wrapping_add(1),
            state,
            rows: 0,
            result_sets: 0,
            affected: 0,
            saw_ok: false,
            error: None,
        });
        Ok(())
    }

    /// Schema named in a COM_CHANGE_USER (None when it cannot be read).
    fn change_user_schema(&self, body: &[u8]) -> Option<String> {
        let mut pos = 1;
        cstr(body, &mut pos)?;
        let secure = self.caps.is_none_or(|c| c & CLIENT_SECURE_CONNECTION != 0);
        if secure {
            pos += 1 + usize::from(*body.get(pos)?);
        } else {
            cstr(body, &mut pos)?;
        }
        let schema = cstr(body, &mut pos)?;
        (!schema.is_empty() && schema.len() <= 256).then(|| String::from_utf8_lossy(schema).into_owned())
    }

    fn on_backend(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        self.last_backend_exit = chunk.exit_ns;
        if self.hunting {
            return Feed::Continue;
        }
        let mut frames = std::mem::take(&mut self.back_frames);
        frames.clear();
        self.back.push(chunk, &mut frames);
        let mut feed = Feed::Continue;
        for framed in frames.drain(..) {
            match framed {
                Framed::Lost(reason) => {
                    tracing::trace!(reason, "mysql: response framing lost; waiting for the next command");
                    self.hunting = true;
                    break;
                }
                Framed::Frame(frame) => {
                    if let Err(stop) = self.on_server_packet(frame, out) {
                        feed = stop;
                        break;
                    }
                }
            }
        }
        self.back_frames = frames;
        feed
    }

    fn on_server_packet(&mut self, f: Frame<Head>, out: &mut Vec<ParsedSpan>) -> Result<(), Feed> {
        let continuation = self.back_continues;
        self.back_continues = f.head.len == MAX_PACKET;
        let body = &f.body;
        match self.phase {
            Phase::Start => {
                if f.head.seq == 0 && body.first() == Some(&10) {
                    let mut pos = 1;
                    if let Some(version) = cstr(body, &mut pos) {
                        if version.windows(7).any(|w| w == b"MariaDB") {
                            self.system = SYSTEM_MARIADB;
                        }
                    }
                    self.phase = Phase::Greeted;
                }
                return Ok(());
            }
            Phase::Greeted => return Ok(()),
            Phase::Auth => {
                if body.first() == Some(&0x00) {
                    self.phase = Phase::Command;
                    if self.caps.is_some_and(|c| c & (CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION) != 0) {
                        return Err(Feed::Opaque("mysql: compressed protocol"));
                    }
                }
                return Ok(());
            }
            Phase::Command => {}
        }
        let deprecate_eof = self.deprecate_eof();
        let Some(cmd) = self.pending.front_mut() else {
            return Ok(());
        };
        if cmd.state == Resp::Drain {
            return Ok(());
        }
        if f.head.seq != cmd.next_seq {
            return Err(Feed::LostSync("mysql: response packet out of sequence"));
        }
        cmd.next_seq = f.head.seq.wrapping_add(1);
        if continuation {
            return Ok(());
        }
        let prepared = (cmd.kind == CmdKind::Prepare && cmd.state == Resp::Start && body.first() == Some(&0x00))
            .then(|| le32(body, 1).zip(cmd.query.clone()))
            .flatten();
        let step = Self::advance(cmd, body, f.head.len, deprecate_eof, self.system).map_err(Feed::LostSync)?;
        if let Some((id, query)) = prepared {
            let weight = query.weight();
            self.statements.insert(id, query, weight);
            self.last_prepared = Some(id);
        }
        if let Step::Done = step {
            if let Some(cmd) = self.pending.pop_front() {
                self.on_done(&cmd, body);
                self.finish(cmd, f.end_ns, out);
            }
        }
        Ok(())
    }

    /// Side effects of a completed command on connection state.
    fn on_done(&mut self, cmd: &Command, last: &[u8]) {
        match &cmd.kind {
            CmdKind::InitDb(schema) if last.first() == Some(&0x00) && !schema.is_empty() => {
                self.namespace = Some(schema.clone());
            }
            CmdKind::ChangeUser(schema) if last.first() == Some(&0x00) => self.namespace = schema.clone(),
            _ => {}
        }
    }

    fn advance(cmd: &mut Command, body: &[u8], len: u32, deprecate_eof: Option<bool>, system: &str) -> Result<Step, &'static str> {
        let first = body.first().copied();
        if first == Some(0xff) && !matches!(cmd.state, Resp::ColumnDefs(_) | Resp::Skip(_)) {
            cmd.error = Some(parse_err(body, system));
            return Ok(Step::Done);
        }
        let is_terminator = first == Some(0xfe) && len < MAX_PACKET;
        match (&cmd.kind, cmd.state) {
            (CmdKind::Simple | CmdKind::InitDb(_), _) => Ok(Step::Done),
            (CmdKind::ChangeUser(_), _) => Ok(if first == Some(0x00) { Step::Done } else { Step::More }),
            (CmdKind::Opaque, _) | (_, Resp::Drain) => Ok(Step::More),
            (CmdKind::FieldList, _) => Ok(if is_terminator { Step::Done } else { Step::More }),
            (CmdKind::Prepare, Resp::Start) => {
                if first != Some(0x00) {
                    return Err("mysql: unexpected answer to COM_STMT_PREPARE");
                }
                // The caller records the statement id.
                let columns = u64::from(le16(body, 5).unwrap_or(0));
                let params = u64::from(le16(body, 7).unwrap_or(0));
                let eofs = |n: u64| u64::from(n > 0);
                let remaining = match deprecate_eof {
                    Some(true) => Some(columns + params),
                    Some(false) => Some(columns + params + eofs(columns) + eofs(params)),
                    None => None,
                };
                cmd.state = match remaining {
                    Some(0) => return Ok(Step::Done),
                    Some(n) => Resp::Skip(n),
                    None => Resp::Drain,
                };
                Ok(Step::More)
            }
            (_, Resp::Skip(n)) => {
                if n <= 1 {
                    Ok(Step::Done)
                } else {
                    cmd.state = Resp::Skip(n - 1);
                    Ok(Step::More)
                }
            }
            (_, Resp::Start) => match first {
                Some(0x00) => {
                    let (affected, status) = ok_status(body).unwrap_or((0, 0));
                    cmd.affected = cmd.affected.saturating_add(affected);
                    cmd.saw_ok = true;
                    Ok(if status & SERVER_MORE_RESULTS_EXISTS != 0 { Step::More } else { Step::Done })
                }
                Some(0xfb) if cmd.kind == CmdKind::Query => {
                    cmd.state = Resp::LocalInfile;
                    Ok(Step::More)
                }
                Some(0xfe) => Ok(if terminator_status(body) & SERVER_MORE_RESULTS_EXISTS != 0 { Step::More } else { Step::Done }),
                _ => {
                    let Some((count, used)) = lenenc(body, 0) else {
                        return Err("mysql: bad column count");
                    };
                    if count == 0 {
                        return Err("mysql: bad column count");
                    }
                    // A byte after the count: optional-metadata / MariaDB
                    // metadata-cache flag; 0 means no column definitions.
                    let metadata = body.get(used).is_none_or(|flag| *flag != 0);
                    cmd.result_sets += 1;
                    cmd.state = if metadata { Resp::ColumnDefs(count) } else { Resp::AfterDefs };
                    Ok(Step::More)
                }
            },
            (_, Resp::ColumnDefs(n)) => {
                cmd.state = if n <= 1 { Resp::AfterDefs } else { Resp::ColumnDefs(n - 1) };
                Ok(Step::More)
            }
            (_, Resp::AfterDefs) => {
                if is_terminator {
                    let intermediate = match deprecate_eof {
                        Some(deprecate) => !deprecate,
                        // An EOF is 5 bytes; an OK with 0xfe header at least 7.
                        None => body.len() <= 5 && len <= 5,
                    };
                    if intermediate {
                        if terminator_status(body) & SERVER_STATUS_CURSOR_EXISTS != 0 {
                            // Rows come later through COM_STMT_FETCH.
                            return Ok(Step::Done);
                        }
                        cmd.state = Resp::Rows;
                        return Ok(Step::More);
                    }
                    return Ok(Self::end_of_rows(cmd, body));
                }
                cmd.rows += 1;
                cmd.state = Resp::Rows;
                Ok(Step::More)
            }
            (_, Resp::Rows) => {
                if is_terminator {
                    return Ok(Self::end_of_rows(cmd, body));
                }
                cmd.rows += 1;
                Ok(Step::More)
            }
            (_, Resp::LocalInfile) => match first {
                Some(0x00) => {
                    cmd.affected = cmd.affected.saturating_add(ok_status(body).map_or(0, |(a, _)| a));
                    cmd.saw_ok = true;
                    Ok(Step::Done)
                }
                _ => Ok(Step::More),
            },
        }
    }

    fn end_of_rows(cmd: &mut Command, body: &[u8]) -> Step {
        if terminator_status(body) & SERVER_MORE_RESULTS_EXISTS != 0 {
            cmd.state = Resp::Start;
            Step::More
        } else {
            Step::Done
        }
    }

    /// The response being hunted ended at `end_ns` (the client moved on).
    fn resolve_hunt(&mut self, end_ns: u64, out: &mut Vec<ParsedSpan>) {
        self.hunting = false;
        self.back.resync();
        self.back_continues = false;
        match self.pending.len() {
            0 => {}
            1 => {
                if let Some(cmd) = self.pending.pop_front() {
                    if matches!(cmd.kind, CmdKind::Query | CmdKind::Execute) {
                        let outcome = Outcome { error: cmd.error.clone(), response_truncated: true, ..Outcome::default() };
                        self.emit(&cmd, end_ns, outcome, out);
                    }
                }
            }
            _ => {
                self.pending.clear();
                self.poisoned = Some("mysql: response framing lost with several commands in flight");
            }
        }
    }
}

impl ProtocolParser for MysqlParser {
    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn on_data(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        if let Some(reason) = self.poisoned.take() {
            return Feed::LostSync(reason);
        }
        let feed = if chunk.direction == self.frontend { self.on_frontend(chunk, out) } else { self.on_backend(chunk, out) };
        match (feed, self.poisoned.take()) {
            (Feed::Continue, Some(reason)) => Feed::LostSync(reason),
            (feed, _) => feed,
        }
    }

    fn on_close(&mut self, _ts_ns: u64, _out: &mut Vec<ParsedSpan>) {
        self.pending.clear();
    }

    fn on_idle(&mut self, older_than_ns: u64, out: &mut Vec<ParsedSpan>) {
        if self.hunting && self.last_backend_exit < older_than_ns {
            self.resolve_hunt(self.last_backend_exit, out);
        }
        if self.pending.iter().any(|c| c.start.enter_ns < older_than_ns && c.kind != CmdKind::Opaque && c.state != Resp::Drain) {
            self.pending.clear();
            self.poisoned = Some("mysql: commands unanswered for too long");
        }
    }
}

#[cfg(test)]
mod tests {}
