//! The MySQL state machine: the connection phase (greeting, handshake,
//! authentication), then commands queued as they are written and answered in
//! order; prepared statements remembered by id. It runs inside the SQL
//! connection [`Shell`].
use super::{
    command::{CmdKind, Command, Resp, Step},
    packets::{
        handshake_schema, le32, ok_status, query_text, terminator_status, Head, PacketFraming, CLIENT_COMPRESS,
        CLIENT_DEPRECATE_EOF, CLIENT_PROTOCOL_41, CLIENT_SECURE_CONNECTION, CLIENT_SSL, CLIENT_ZSTD_COMPRESSION,
        COM_CHANGE_USER, COM_FIELD_LIST, COM_INIT_DB, COM_QUERY, COM_QUIT, COM_RESET_CONNECTION, COM_STMT_BULK_EXECUTE,
        COM_STMT_CLOSE, COM_STMT_EXECUTE, COM_STMT_FETCH, COM_STMT_PREPARE, COM_STMT_SEND_LONG_DATA, MAX_PACKET,
        SERVER_STATUS_NO_BACKSLASH_ESCAPES, SIMPLE_COMMANDS, SYSTEM_MARIADB,
    },
};
use crate::model::Protocol;
use crate::{
    model::ParsedSpan,
    protocols::{
        sql::{
            analyze_query, cstr, Backslash, BoundedMap, Conn, Dialect, Frame, Outcome, SharedQuery, Shell, Wire,
            MAX_QUERY_TEXT,
        },
        Feed,
    },
};

/// Protocol name (also for MariaDB, which speaks the same protocol), and
/// `db.system.name` unless the server greets as MariaDB.
pub const PROTOCOL: &str = "mysql";

/// Prepared statements remembered per connection.
pub const MAX_STATEMENTS: usize = 1024;
/// Bytes of statement text remembered per connection.
pub const STATEMENT_BUDGET: usize = 256 * 1024;

/// The MySQL / MariaDB parser.
pub type MysqlParser = Shell<MysqlWire>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Nothing seen yet (or joined mid-stream).
    Start,
    /// Server greeting seen; the handshake response comes next.
    Greeted,
    /// Authentication exchange until the server's OK.
    Auth,
    Command,
}

/// What the MySQL protocol keeps per connection besides the shell's state.
pub struct MysqlWire {
    pub(super) phase: Phase,
    /// Client capability flags from the handshake, when it was seen.
    caps: Option<u32>,
    statements: BoundedMap<u32, SharedQuery>,
    last_prepared: Option<u32>,
    /// From the status flags of the server's last OK or EOF.
    backslash: Backslash,
    /// The client's SSL request (seq 1) was seen: its real handshake
    /// response (seq 2) comes as TLS plaintext, if the TLS probes read it.
    tls_requested: bool,
}

/// What the status flags of an OK or EOF packet say about backslashes.
fn backslash_mode(body: &[u8]) -> Backslash {
    let status = match body.first() {
        Some(0x00) => ok_status(body).map(|(_, status)| status),
        Some(0xfe) => Some(terminator_status(body)),
        _ => None,
    };
    match status {
        Some(s) if s & SERVER_STATUS_NO_BACKSLASH_ESCAPES != 0 => Backslash::Plain,
        Some(_) => Backslash::Escapes,
        None => Backslash::Unknown,
    }
}

fn emit(conn: &Conn<MysqlWire>, cmd: &Command, end_ns: u64, outcome: Outcome, out: &mut Vec<ParsedSpan>) {
    conn.emit(cmd.query.as_deref(), None, cmd.start, end_ns, outcome, out);
}

/// The command's response is complete: emit its span if it has one.
fn finish(conn: &Conn<MysqlWire>, cmd: &Command, end_ns: u64, out: &mut Vec<ParsedSpan>) {
    match cmd.kind {
        CmdKind::Query | CmdKind::Execute => {
            let outcome = Outcome {
                returned_rows: (cmd.result_sets > 0 && cmd.error.is_none()).then_some(cmd.rows),
                affected_rows: (cmd.saw_ok && cmd.error.is_none()).then_some(cmd.affected),
                error: cmd.error.clone(),
                response_truncated: false,
            };
            emit(conn, cmd, end_ns, outcome, out);
        }
        CmdKind::Prepare if cmd.error.is_some() => {
            let outcome = Outcome { error: cmd.error.clone(), ..Outcome::default() };
            emit(conn, cmd, end_ns, outcome, out);
        }
        _ => {}
    }
}

/// Side effects of a completed command on connection state.
fn on_done(conn: &mut Conn<MysqlWire>, cmd: &Command, last: &[u8]) {
    match &cmd.kind {
        CmdKind::InitDb(schema) if last.first() == Some(&0x00) && !schema.is_empty() => {
            conn.namespace = Some(schema.clone());
        }
        CmdKind::ChangeUser(schema) if last.first() == Some(&0x00) => conn.namespace = schema.clone(),
        _ => {}
    }
}

impl MysqlWire {
    fn deprecate_eof(&self) -> Option<bool> {
        self.caps.map(|c| c & CLIENT_DEPRECATE_EOF != 0)
    }

    /// Returns whether the client asked for TLS.
    fn on_handshake_response(&mut self, conn: &mut Conn<Self>, body: &[u8]) -> bool {
        self.phase = Phase::Auth;
        let Some(caps) = le32(body, 0).filter(|c| c & CLIENT_PROTOCOL_41 != 0) else {
            return false;
        };
        if caps & CLIENT_SSL != 0 && !self.tls_requested {
            // The SSL request: the handshake response proper follows inside
            // TLS (seq 2), with the same capabilities.
            self.tls_requested = true;
            self.phase = Phase::Greeted;
            return true;
        }
        self.caps = Some(caps);
        if let Some(db) = handshake_schema(body, caps) {
            conn.namespace = Some(db);
        }
        false
    }

    fn on_command(&mut self, conn: &mut Conn<Self>, f: Frame<Head>) -> Result<(), Feed> {
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
                let query = query_text(body, self.caps).map(|t| {
                    SharedQuery::new(analyze_query(t, truncated, Dialect::MySql, self.backslash, conn.raw_sql))
                });
                let kind = if cmd == COM_QUERY { CmdKind::Query } else { CmdKind::Prepare };
                (kind, query, Resp::Start)
            }
            COM_STMT_EXECUTE | COM_STMT_BULK_EXECUTE => {
                // MariaDB: id 0xffffffff means the statement prepared last
                // (pipelined prepare + execute).
                let query = match le32(body, 1) {
                    Some(u32::MAX) => match conn.pending.iter().rev().find(|c| c.kind == CmdKind::Prepare) {
                        Some(prepare) => prepare.query.clone(),
                        None => self.last_prepared.and_then(|id| self.statements.get(&id).cloned()),
                    },
                    Some(id) => self.statements.get(&id).cloned(),
                    None => None,
                };
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
        conn.push(Command {
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
        })
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
}

impl Wire for MysqlWire {
    type Request = Command;
    type Front = PacketFraming;
    type Back = PacketFraming;
    const PROTOCOL: &'static str = PROTOCOL;
    const KIND: Protocol = Protocol::Mysql;
    /// MariaDB connectors pipeline a few commands.
    const MAX_PENDING: usize = 256;
    const TOO_MANY_PENDING: &'static str = "mysql: too many commands awaiting responses";
    const SEVERAL_IN_FLIGHT: &'static str = "mysql: response framing lost with several commands in flight";
    const UNANSWERED: &'static str = "mysql: commands unanswered for too long";

    fn buffered_bytes(&self) -> usize {
        self.statements.weight()
    }

    fn new() -> Self {
        MysqlWire {
            phase: Phase::Start,
            caps: None,
            statements: BoundedMap::new(MAX_STATEMENTS, STATEMENT_BUDGET),
            last_prepared: None,
            backslash: Backslash::Unknown,
            tls_requested: false,
        }
    }

    fn framing() -> (PacketFraming, PacketFraming) {
        (
            PacketFraming { keep: MAX_QUERY_TEXT + 16, continues: false },
            // Enough for greetings, OK/ERR/EOF packets and column counts.
            PacketFraming { keep: 256, continues: false },
        )
    }

    fn resumes_after_tls(&self) -> bool {
        self.tls_requested && self.phase == Phase::Greeted
    }

    fn on_request(&mut self, conn: &mut Conn<Self>, f: Frame<Head>, out: &mut Vec<ParsedSpan>) -> Result<(), Feed> {
        if f.head.continuation {
            if let Some(cmd) = conn.pending.back_mut() {
                cmd.next_seq = f.head.seq.wrapping_add(1);
            }
            return Ok(());
        }
        match self.phase {
            Phase::Greeted if f.head.seq == 1 || (self.tls_requested && f.head.seq == 2) => {
                return match self.on_handshake_response(conn, &f.body) {
                    true => Err(Feed::Opaque("mysql: TLS requested")),
                    false => Ok(()),
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
            return match conn.pending.back_mut() {
                Some(cmd) if cmd.state == Resp::LocalInfile || matches!(cmd.kind, CmdKind::ChangeUser(_)) => {
                    cmd.next_seq = f.head.seq.wrapping_add(1);
                    Ok(())
                }
                _ => Err(Feed::LostSync("mysql: unexpected client packet sequence")),
            };
        }
        if let Some(cmd) = conn.pending.back_mut() {
            if cmd.state == Resp::LocalInfile {
                // A file large enough for the sequence id to wrap to 0.
                cmd.next_seq = 1;
                return Ok(());
            }
        }
        self.phase = Phase::Command;
        if conn.hunting {
            // The client only writes a command after reading the whole
            // previous response.
            let end_ns = conn.last_backend_exit;
            conn.end_hunt(self, end_ns, out);
        }
        while conn.pending.front().is_some_and(|c| c.kind == CmdKind::Opaque || c.state == Resp::Drain) {
            conn.pending.pop();
        }
        self.on_command(conn, f)
    }

    fn on_response(&mut self, conn: &mut Conn<Self>, f: Frame<Head>, out: &mut Vec<ParsedSpan>) -> Result<(), Feed> {
        let body = &f.body;
        match self.phase {
            Phase::Start => {
                if f.head.seq == 0 && body.first() == Some(&10) {
                    let mut pos = 1;
                    if let Some(version) = cstr(body, &mut pos) {
                        if version.windows(7).any(|w| w == b"MariaDB") {
                            conn.system = SYSTEM_MARIADB;
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
                    self.backslash = backslash_mode(body);
                    if self.caps.is_some_and(|c| c & (CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION) != 0) {
                        return Err(Feed::Opaque("mysql: compressed protocol"));
                    }
                }
                return Ok(());
            }
            Phase::Command => {}
        }
        let deprecate_eof = self.deprecate_eof();
        let system = conn.system;
        let Some(cmd) = conn.pending.front_mut() else {
            return Ok(());
        };
        if cmd.state == Resp::Drain {
            return Ok(());
        }
        if f.head.seq != cmd.next_seq {
            return Err(Feed::LostSync("mysql: response packet out of sequence"));
        }
        cmd.next_seq = f.head.seq.wrapping_add(1);
        if f.head.continuation {
            return Ok(());
        }
        let prepared = (cmd.kind == CmdKind::Prepare && cmd.state == Resp::Start && body.first() == Some(&0x00))
            .then(|| le32(body, 1).zip(cmd.query.clone()))
            .flatten();
        let step = cmd.advance(body, f.head.len, deprecate_eof, system).map_err(Feed::LostSync)?;
        if let Some((id, query)) = prepared {
            let weight = query.weight();
            self.statements.insert(id, query, weight);
            self.last_prepared = Some(id);
        }
        if let Step::Done = step {
            let mode = backslash_mode(body);
            if mode != Backslash::Unknown {
                self.backslash = mode;
            }
            if let Some(cmd) = conn.pending.pop() {
                on_done(conn, &cmd, body);
                finish(conn, &cmd, f.end_ns, out);
            }
        }
        Ok(())
    }

    fn flush_hunted(&mut self, conn: &mut Conn<Self>, end_ns: u64, out: &mut Vec<ParsedSpan>) {
        if let Some(cmd) = conn.pending.pop() {
            if matches!(cmd.kind, CmdKind::Query | CmdKind::Execute) {
                emit(conn, &cmd, end_ns, Outcome::cut(cmd.error.clone()), out);
            }
        }
    }
}
