//! RESP2/RESP3 framing: one direction of a Redis connection split into
//! top-level values, each reduced to its type, its first line and the
//! kept prefixes of its first elements. Bulk strings are skipped by count,
//! so values larger than the capture are framed by their length.
use crate::protocols::{kv::LineReader, kv::Step, sql::Timing, Chunk};

/// Nesting deeper than this is not what Redis sends: framing is lost.
pub const MAX_DEPTH: usize = 16;
/// Bytes kept of each element a span may need (command, subcommand, keys,
/// error code).
pub const LEAF_KEEP: usize = 64;
/// Top-level elements kept (a command's first arguments).
pub const MAX_LEAVES: usize = 24;
/// Longest bulk string accepted (Redis' own proto-max-bulk-len default).
const MAX_BULK: i64 = 512 << 20;
/// Most elements an aggregate may announce.
const MAX_ELEMENTS: i64 = 1 << 32;
/// Bytes kept of a top-level line (inline commands, error lines).
const LINE_KEEP: usize = 512;

/// One element of a top-level aggregate (or an inline command's word).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leaf {
    /// Kept prefix; empty for a null or a nested aggregate.
    pub bytes: Vec<u8>,
    /// `bytes` is only a prefix of the element.
    pub cut: bool,
    /// A nested aggregate or a null, not a string.
    pub not_text: bool,
}

impl Leaf {
    /// The whole element, when it is a string and was kept whole.
    pub fn text(&self) -> Option<&[u8]> {
        (!self.cut && !self.not_text).then_some(&self.bytes[..])
    }
}

/// A top-level value, as much of it as spans need.
#[derive(Clone, Debug, Default)]
pub struct Message {
    /// RESP type byte of the value (`*`, `+`, `-`, `$`, `>`, `%`, ...);
    /// `b'i'` for an inline command.
    pub kind: u8,
    /// A simple value's line (after the type byte), or a bulk's kept prefix.
    pub head: Vec<u8>,
    /// First [`MAX_LEAVES`] elements of an aggregate (or inline words).
    pub leaves: Vec<Leaf>,
    /// Elements of the aggregate (all of them, kept or not).
    pub count: u64,
    /// An inline command longer than what was kept.
    pub cut: bool,
    pub start: Timing,
    pub end_ns: u64,
}

#[derive(Debug)]
pub enum Framed {
    Message(Message),
    Lost(&'static str),
}

#[derive(Clone, Copy)]
struct Open {
    left: u64,
    /// A RESP3 attribute: it annotates the value that follows and is not
    /// an element of its parent.
    attribute: bool,
}

pub struct RespReader {
    lines: LineReader,
    /// Commands may be inline (the request direction).
    inline: bool,
    stack: Vec<Open>,
    msg: Option<Message>,
}

/// A RESP length: optional minus sign and up to 19 digits.
pub fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = digits.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
    Some(if neg { -v } else { v })
}

impl RespReader {
    pub fn new(inline: bool) -> Self {
        RespReader { lines: LineReader::new(LINE_KEEP), inline, stack: Vec::new(), msg: None }
    }

    pub fn resync(&mut self) {
        self.lines.resync();
        self.stack.clear();
        self.msg = None;
    }

    pub fn buffered_bytes(&self) -> usize {
        let msg = self
            .msg
            .as_ref()
            .map_or(0, |m| m.head.capacity() + m.leaves.iter().map(|l| l.bytes.capacity() + 32).sum::<usize>());
        self.lines.buffered_bytes() + self.stack.capacity() * 16 + msg
    }

    fn lose(&mut self, reason: &'static str, out: &mut Vec<Framed>) {
        self.stack.clear();
        self.msg = None;
        // Input is ignored until the owner resyncs.
        self.lines.force_lost();
        out.push(Framed::Lost(reason));
    }

    /// Feeds one chunk; finished values (and at most one `Lost`) go to `out`.
    pub fn push(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Framed>) {
        let mut data = chunk.bytes;
        let mut gap = chunk.total_len.saturating_sub(chunk.bytes.len() as u64);
        loop {
            match self.lines.next(chunk, &mut data, &mut gap) {
                Step::Done => return,
                Step::Lost(reason) => {
                    self.stack.clear();
                    self.msg = None;
                    out.push(Framed::Lost(reason));
                    return;
                }
                Step::Block => {
                    let leaf =
                        Leaf { bytes: self.lines.block().to_vec(), cut: self.lines.block_cut(), not_text: false };
                    self.element(leaf, chunk, out);
                }
                Step::Line => {
                    if let Err(reason) = self.on_line(chunk, out) {
                        self.lose(reason, out);
                        return;
                    }
                }
            }
        }
    }

    fn depth(&self) -> usize {
        self.stack.len()
    }

    fn on_line(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Framed>) -> Result<(), &'static str> {
        let line = self.lines.line();
        if self.msg.is_none() {
            if line.is_empty() && self.inline {
                // Redis skips empty lines between commands.
                return Ok(());
            }
            self.msg = Some(Message { start: self.lines.item_start(), ..Message::default() });
        }
        let Some((&t, rest)) = line.split_first() else {
            return Err("empty RESP line");
        };
        let top = self.depth() == 0;
        if top && self.inline && t != b'*' {
            let cut = self.lines.line_cut();
            let words: Vec<Leaf> = line
                .split(|b| b.is_ascii_whitespace())
                .filter(|w| !w.is_empty())
                .map(|w| Leaf {
                    bytes: w.iter().copied().take(LEAF_KEEP).collect(),
                    cut: w.len() > LEAF_KEEP,
                    not_text: false,
                })
                .collect();
            if let Some(msg) = &mut self.msg {
                msg.kind = b'i';
                msg.count = words.len() as u64;
                msg.leaves = words.into_iter().take(MAX_LEAVES).collect();
                msg.cut = cut;
            }
            self.finish(chunk, out);
            return Ok(());
        }
        if top && t != b'|' {
            if let Some(msg) = &mut self.msg {
                msg.kind = t;
            }
        }
        match t {
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                if rest.first() == Some(&b'?') {
                    return Err("streamed RESP3 aggregate");
                }
                let n = parse_int(rest).ok_or("bad aggregate length")?;
                if n == -1 && t == b'*' {
                    self.element(Leaf { not_text: true, ..Leaf::default() }, chunk, out);
                    return Ok(());
                }
                if !(0..=MAX_ELEMENTS).contains(&n) {
                    return Err("bad aggregate length");
                }
                let n = if matches!(t, b'%' | b'|') { 2 * n as u64 } else { n as u64 };
                if top && t != b'|' {
                    if let Some(msg) = &mut self.msg {
                        msg.count = n;
                    }
                }
                if n == 0 {
                    if t == b'|' {
                        return Ok(());
                    }
                    self.element(Leaf { not_text: true, ..Leaf::default() }, chunk, out);
                    return Ok(());
                }
                if self.depth() >= MAX_DEPTH {
                    return Err("RESP nesting too deep");
                }
                self.stack.push(Open { left: n, attribute: t == b'|' });
                Ok(())
            }
            b'$' | b'=' | b'!' => {
                if rest.first() == Some(&b'?') {
                    return Err("streamed RESP3 string");
                }
                let n = parse_int(rest).ok_or("bad bulk length")?;
                if n == -1 {
                    self.element(Leaf { not_text: true, ..Leaf::default() }, chunk, out);
                    return Ok(());
                }
                if !(0..=MAX_BULK).contains(&n) {
                    return Err("bad bulk length");
                }
                let keep = if self.keeps_next() { LEAF_KEEP } else { 0 };
                self.lines.expect_block(n as u64, keep);
                Ok(())
            }
            b'+' | b'-' | b':' | b',' | b'(' | b'#' | b'_' => {
                let cut = self.lines.line_cut();
                let keep = if self.depth() == 0 { LINE_KEEP } else { LEAF_KEEP };
                let bytes: Vec<u8> = rest.iter().copied().take(keep).collect();
                let cut = cut || rest.len() > keep;
                let not_text = t == b'_';
                self.element(Leaf { bytes, cut, not_text }, chunk, out);
                Ok(())
            }
            _ => Err("not RESP"),
        }
    }

    /// The next element is one a span may need.
    fn keeps_next(&self) -> bool {
        match (self.stack.as_slice(), &self.msg) {
            ([], _) => true,
            ([only], Some(msg)) => !only.attribute && msg.leaves.len() < MAX_LEAVES,
            _ => false,
        }
    }

    /// A complete element at the current depth.
    fn element(&mut self, leaf: Leaf, chunk: &Chunk<'_>, out: &mut Vec<Framed>) {
        match (self.stack.as_slice(), &mut self.msg) {
            ([], Some(msg)) => {
                msg.head = leaf.bytes;
            }
            ([only], Some(msg)) if !only.attribute && msg.leaves.len() < MAX_LEAVES => msg.leaves.push(leaf),
            _ => {}
        }
        loop {
            let Some(open) = self.stack.last_mut() else {
                self.finish(chunk, out);
                return;
            };
            open.left -= 1;
            if open.left > 0 {
                return;
            }
            let attribute = open.attribute;
            self.stack.pop();
            if attribute {
                // The annotated value follows; it is the element.
                return;
            }
            // A nested aggregate ended: it is one element of its parent.
            if let ([parent], Some(msg)) = (self.stack.as_slice(), &mut self.msg) {
                if !parent.attribute && msg.leaves.len() < MAX_LEAVES {
                    msg.leaves.push(Leaf { not_text: true, ..Leaf::default() });
                }
            }
        }
    }

    fn finish(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Framed>) {
        if let Some(mut msg) = self.msg.take() {
            msg.end_ns = chunk.exit_ns;
            out.push(Framed::Message(msg));
        }
    }
}
