//! The memcached connection state machine: command lines (and the data
//! blocks of storage commands) in, replies matched in order, spans out.
use std::sync::Arc;

use waggle_common::Role;

use crate::{
    model::{ParsedSpan, Protocol},
    protocols::{
        kv::{error, error_code, printable_key, Exchanges, KvParser, LineReader, Pending, Step, TextBuilder},
        sql::{Outcome, Timing},
        Chunk, Feed, ParserConfig, ProtocolParser,
    },
};

/// `db.system.name`.
pub const SYSTEM: &str = "memcached";
/// Bytes kept of a command or reply line (a get of many keys is long; what
/// is past this is not shown).
const LINE_KEEP: usize = 1024;
/// Largest data block accepted (memcached's item size limit is 1 MiB by
/// default, 1 GiB at most).
const MAX_BLOCK: u64 = 1 << 30;

/// How the reply to a command is framed, and what it counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// One line (`STORED`, `DELETED`, a number, `VERSION ...`, an error).
    Line,
    /// `VALUE` items (each with a data block) until `END`.
    Values,
    /// `STAT` lines until `END`.
    Stats,
}

/// Commands the parser knows: name, reply framing, and the positions of
/// keys (`None`: every word after the name).
const COMMANDS: &[(&str, Reply)] = &[
    ("get", Reply::Values),
    ("gets", Reply::Values),
    ("gat", Reply::Values),
    ("gats", Reply::Values),
    ("set", Reply::Line),
    ("add", Reply::Line),
    ("replace", Reply::Line),
    ("append", Reply::Line),
    ("prepend", Reply::Line),
    ("cas", Reply::Line),
    ("delete", Reply::Line),
    ("incr", Reply::Line),
    ("decr", Reply::Line),
    ("touch", Reply::Line),
    ("flush_all", Reply::Line),
    ("version", Reply::Line),
    ("verbosity", Reply::Line),
    ("stats", Reply::Stats),
];

/// The commands a detector may claim a connection on.
pub fn known(name: &[u8]) -> Option<Reply> {
    COMMANDS.iter().find(|(n, _)| n.as_bytes() == name).map(|(_, r)| *r)
}

fn is_storage(name: &str) -> bool {
    matches!(name, "set" | "add" | "replace" | "append" | "prepend" | "cas")
}

/// Which words after the command name are keys.
fn is_key(name: &str, i: usize) -> bool {
    match name {
        "get" | "gets" => true,
        // exptime first.
        "gat" | "gats" => i > 0,
        "flush_all" | "version" | "verbosity" | "stats" => false,
        _ => i == 0,
    }
}

/// A parsed command line.
struct Command {
    name: &'static str,
    reply: Reply,
    text: Arc<str>,
    truncated: bool,
    noreply: bool,
    /// Bytes of the data block that follows (storage commands).
    block: Option<u64>,
}

fn parse_command(line: &[u8], cut: bool, keys: bool) -> Result<Option<Command>, &'static str> {
    let mut words = line.split(|b| *b == b' ').filter(|w| !w.is_empty());
    let Some(first) = words.next() else {
        return Ok(None);
    };
    if first == b"quit" {
        // No reply, and the connection closes.
        return Ok(None);
    }
    let (name, reply) = match COMMANDS.iter().find(|(n, _)| n.as_bytes() == first) {
        Some((n, r)) => (*n, *r),
        None if first.iter().all(|b| b.is_ascii_lowercase() || *b == b'_') && first.len() <= 32 => {
            // Unknown to us (a newer command, or a typo the server answers
            // with ERROR): one reply line assumed.
            ("_OTHER", Reply::Line)
        }
        None => return Err("not a memcached command"),
    };
    let args: Vec<&[u8]> = words.collect();
    let noreply = args.last() == Some(&&b"noreply"[..]);
    let block = if is_storage(name) {
        let bytes = args.get(3).and_then(|w| std::str::from_utf8(w).ok()).and_then(|s| s.parse::<u64>().ok());
        match bytes {
            Some(n) if n <= MAX_BLOCK => Some(n),
            Some(_) => return Err("memcached data block too large"),
            // The server answers CLIENT_ERROR and reads no block.
            None => None,
        }
    } else {
        None
    };
    let mut text = TextBuilder::new(name);
    let n = args.len() - usize::from(noreply);
    for (i, w) in args.iter().take(n).enumerate() {
        match printable_key(w) {
            Some(k) if keys && is_key(name, i) => text.word(k),
            _ => text.word("?"),
        }
    }
    if noreply {
        text.word("noreply");
    }
    let truncated = cut || text.full();
    Ok(Some(Command { name, reply, text: text.finish(), truncated, noreply, block }))
}

/// What a pending command's reply has shown so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effect {
    reply: Reply,
    values: u64,
}

pub struct MemcachedParser {
    conn: Exchanges<Effect>,
    keys: bool,
    requests: LineReader,
    replies: LineReader,
    /// A storage command whose data block is being read.
    awaiting_block: Option<(Pending<Effect>, bool)>,
}

impl MemcachedParser {
    pub fn new(role: Role, config: &ParserConfig) -> Self {
        MemcachedParser {
            conn: Exchanges::new(role, SYSTEM),
            keys: config.cache_keys,
            requests: LineReader::new(LINE_KEEP),
            replies: LineReader::new(LINE_KEEP),
            awaiting_block: None,
        }
    }

    /// A complete command: queued for its reply, or (noreply) a span now.
    fn sent(&mut self, p: Pending<Effect>, noreply: bool, end_ns: u64, out: &mut Vec<ParsedSpan>) -> Result<(), Feed> {
        if noreply {
            self.conn.emit(&p, end_ns, Outcome::default(), Vec::new(), out);
            return Ok(());
        }
        self.conn.push(p)
    }

    fn frontend(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        let mut data = chunk.bytes;
        let mut gap = chunk.total_len.saturating_sub(chunk.bytes.len() as u64);
        loop {
            match self.requests.next(chunk, &mut data, &mut gap) {
                Step::Done => return Feed::Continue,
                Step::Lost(reason) => return Feed::LostSync(reason),
                Step::Block => {
                    if let Some((p, noreply)) = self.awaiting_block.take() {
                        if let Err(stop) = self.sent(p, noreply, chunk.exit_ns, out) {
                            return stop;
                        }
                    }
                }
                Step::Line => {
                    let start: Timing = self.requests.item_start();
                    let cmd = match parse_command(self.requests.line(), self.requests.line_cut(), self.keys) {
                        Ok(Some(cmd)) => cmd,
                        Ok(None) => continue,
                        Err(reason) => return Feed::LostSync(reason),
                    };
                    let p = Pending {
                        operation: Arc::from(cmd.name),
                        text: cmd.text,
                        truncated: cmd.truncated,
                        start,
                        effect: Effect { reply: cmd.reply, values: 0 },
                    };
                    match cmd.block {
                        Some(len) => {
                            self.requests.expect_block(len, 0);
                            self.awaiting_block = Some((p, cmd.noreply));
                        }
                        None => {
                            if let Err(stop) = self.sent(p, cmd.noreply, chunk.exit_ns, out) {
                                return stop;
                            }
                        }
                    }
                }
            }
        }
    }

    fn backend(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) {
        self.conn.last_backend_exit = chunk.exit_ns;
        if self.conn.hunting {
            return;
        }
        let mut data = chunk.bytes;
        let mut gap = chunk.total_len.saturating_sub(chunk.bytes.len() as u64);
        loop {
            match self.replies.next(chunk, &mut data, &mut gap) {
                Step::Done => return,
                Step::Lost(reason) => {
                    tracing::trace!(protocol = SYSTEM, reason, "reply framing lost; hunting for its end");
                    self.conn.hunting = true;
                    return;
                }
                // A value's data: counted when its VALUE line came.
                Step::Block => {}
                Step::Line => {
                    if let Err(reason) = self.on_reply_line(chunk.exit_ns, out) {
                        tracing::trace!(protocol = SYSTEM, reason, "unexpected reply; hunting for its end");
                        self.replies.force_lost();
                        self.conn.hunting = true;
                        return;
                    }
                }
            }
        }
    }

    fn on_reply_line(&mut self, end_ns: u64, out: &mut Vec<ParsedSpan>) -> Result<(), &'static str> {
        let line = self.replies.line();
        let Some(front) = self.conn.pending.front_mut() else {
            // A reply to nothing we saw (joined mid-stream).
            self.conn.drop_one();
            return Ok(());
        };
        let word = line.split(|b| *b == b' ').next().unwrap_or_default();
        let failed = matches!(word, b"ERROR" | b"CLIENT_ERROR" | b"SERVER_ERROR");
        if !failed {
            match (front.effect.reply, word) {
                (Reply::Values, b"VALUE") => {
                    let len = line
                        .split(|b| *b == b' ')
                        .nth(3)
                        .and_then(|w| std::str::from_utf8(w).ok())
                        .and_then(|s| s.parse::<u64>().ok())
                        .filter(|n| *n <= MAX_BLOCK)
                        .ok_or("bad VALUE line")?;
                    front.effect.values += 1;
                    self.replies.expect_block(len, 0);
                    return Ok(());
                }
                (Reply::Stats, b"STAT") => return Ok(()),
                (Reply::Values | Reply::Stats, b"END") | (Reply::Line, _) => {}
                (Reply::Values | Reply::Stats, _) => return Err("unexpected reply line"),
            }
        }
        let outcome = if failed {
            Outcome { error: Some(error(SYSTEM, error_code(word))), ..Outcome::default() }
        } else if front.effect.reply == Reply::Values {
            Outcome { returned_rows: Some(front.effect.values), ..Outcome::default() }
        } else {
            Outcome::default()
        };
        if let Some(p) = self.conn.pending.pop_front() {
            self.conn.emit(&p, end_ns, outcome, Vec::new(), out);
        }
        Ok(())
    }
}

impl KvParser for MemcachedParser {
    type Effect = Effect;
    fn exchanges(&mut self) -> &mut Exchanges<Effect> {
        &mut self.conn
    }
    fn on_frontend(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        self.frontend(chunk, out)
    }
    fn on_backend(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) {
        self.backend(chunk, out);
    }
    fn resync_replies(&mut self) {
        self.replies.resync();
    }
    fn clear_own(&mut self) {
        if self.awaiting_block.take().is_some() {
            self.conn.drop_one();
        }
    }
}

impl ProtocolParser for MemcachedParser {
    fn protocol(&self) -> Protocol {
        Protocol::Memcached
    }

    fn on_data(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        self.feed(chunk, out)
    }

    fn on_close(&mut self, _ts_ns: u64, out: &mut Vec<ParsedSpan>) {
        self.close(out);
    }

    fn on_idle(&mut self, older_than_ns: u64, out: &mut Vec<ParsedSpan>) {
        // memcached never blocks: a reply this late will not come.
        if self.idle(older_than_ns, out, |_| false) {
            self.conn.poison("memcached command unanswered");
        }
    }

    fn take_dropped(&mut self) -> u64 {
        self.conn.take_dropped()
    }

    fn buffered_bytes(&self) -> usize {
        self.conn.buffered_bytes() + self.requests.buffered_bytes() + self.replies.buffered_bytes()
    }
}
