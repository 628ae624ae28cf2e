//! One direction of a line-based protocol with counted blocks (RESP's bulk
//! strings, memcached's data blocks): CRLF-terminated lines, each possibly
//! followed by a block whose length the line announced. Lines keep a
//! bounded prefix; blocks are skipped by count, so a block longer than the
//! capture (a large cached value) costs nothing and loses nothing.
use crate::protocols::{sql::Timing, Chunk};

/// What [`LineReader::next`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A complete line is in [`LineReader::line`] (without its CR LF).
    Line,
    /// The announced block is over; its kept prefix is in
    /// [`LineReader::block`].
    Block,
    /// The chunk is used up.
    Done,
    /// A line fell (partly) into uncaptured bytes, or was longer than the
    /// reader allows: the position in the stream is unknown from here on.
    Lost(&'static str),
}

pub struct LineReader {
    line: Vec<u8>,
    /// Bytes of the current line seen so far (kept or not).
    line_seen: usize,
    /// Length of the last complete line, without CR LF.
    line_len: usize,
    /// Last byte of the current line seen (to strip a CR split from its LF).
    last_byte: u8,
    /// Longest line kept whole; longer ones keep this prefix.
    keep: usize,
    /// Longest line accepted at all (`None`: any, the rest is skipped).
    max_line: Option<usize>,
    /// The announced block: its length (data + CR LF) and bytes consumed.
    block_len: u64,
    block_done: u64,
    block: Vec<u8>,
    block_keep: usize,
    in_block: bool,
    /// The chunk that carried the first byte of the current item.
    item_start: Timing,
    lost: bool,
}

impl LineReader {
    pub fn new(keep: usize) -> Self {
        LineReader {
            line: Vec::new(),
            line_seen: 0,
            line_len: 0,
            last_byte: 0,
            keep,
            max_line: None,
            block_len: 0,
            block_done: 0,
            block: Vec::new(),
            block_keep: 0,
            in_block: false,
            item_start: Timing::default(),
            lost: false,
        }
    }

    /// Lines longer than `max` are garbage for this direction.
    pub fn set_max_line(&mut self, max: Option<usize>) {
        self.max_line = max;
    }

    /// The current line, or its first `keep` bytes.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// The line was longer than what [`Self::line`] holds.
    pub fn line_cut(&self) -> bool {
        self.line_len > self.line.len()
    }

    pub fn block(&self) -> &[u8] {
        &self.block
    }

    /// The block was longer than what [`Self::block`] holds.
    pub fn block_cut(&self) -> bool {
        self.block_len.saturating_sub(2) > self.block.len() as u64
    }

    /// Ignore input until [`Self::resync`] (the layer above lost framing).
    pub fn force_lost(&mut self) {
        let _ = self.lose("framing lost above");
    }

    /// Timing of the chunk where the last line or block began.
    pub fn item_start(&self) -> Timing {
        self.item_start
    }

    /// The line just returned announces a block of `len` bytes (CR LF
    /// follows it); keep its first `keep` bytes.
    pub fn expect_block(&mut self, len: u64, keep: usize) {
        self.in_block = true;
        self.block_len = len.saturating_add(2);
        self.block_done = 0;
        self.block.clear();
        self.block_keep = keep;
    }

    /// Nothing half-read.
    pub fn at_boundary(&self) -> bool {
        !self.lost && !self.in_block && self.line_seen == 0
    }

    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// The next byte starts an item again.
    pub fn resync(&mut self) {
        self.lost = false;
        self.in_block = false;
        self.line.clear();
        self.line_seen = 0;
    }

    pub fn buffered_bytes(&self) -> usize {
        self.line.capacity() + self.block.capacity()
    }

    /// Reads from `data` (the captured bytes still unread of `chunk`), then
    /// from `gap` (the chunk's uncaptured bytes still unaccounted for).
    pub fn next(&mut self, chunk: &Chunk<'_>, data: &mut &[u8], gap: &mut u64) -> Step {
        if self.lost {
            *data = &[];
            *gap = 0;
            return Step::Done;
        }
        while self.in_block {
            if self.block_done == 0 {
                self.item_start = Timing::of(chunk);
            }
            let left = self.block_len - self.block_done;
            if !data.is_empty() {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                // Keep a contiguous prefix of the data (never its CR LF).
                if self.block.len() as u64 == self.block_done {
                    let data_left = (self.block_len - 2).saturating_sub(self.block_done);
                    let room = self
                        .block_keep
                        .saturating_sub(self.block.len())
                        .min(take)
                        .min(usize::try_from(data_left).unwrap_or(usize::MAX));
                    self.block.extend_from_slice(&data[..room]);
                }
                self.block_done += take as u64;
                *data = &data[take..];
            } else if *gap > 0 {
                let take = left.min(*gap);
                self.block_done += take;
                *gap -= take;
            } else {
                return Step::Done;
            }
            if self.block_done == self.block_len {
                self.in_block = false;
                return Step::Block;
            }
        }
        while !data.is_empty() {
            if self.line_seen == 0 {
                self.line.clear();
                self.item_start = Timing::of(chunk);
            }
            let (piece, ends) = match data.iter().position(|b| *b == b'\n') {
                Some(i) => (&data[..i], true),
                None => (&data[..], false),
            };
            let room = self.keep.saturating_sub(self.line.len()).min(piece.len());
            self.line.extend_from_slice(&piece[..room]);
            self.line_seen += piece.len();
            if let Some(&b) = piece.last() {
                self.last_byte = b;
            }
            *data = &data[piece.len() + usize::from(ends)..];
            if self.max_line.is_some_and(|max| self.line_seen > max) {
                return self.lose("line too long");
            }
            if ends {
                let had_cr = self.line_seen > 0 && self.last_byte == b'\r';
                self.line_len = self.line_seen - usize::from(had_cr);
                self.line.truncate(self.line_len);
                self.line_seen = 0;
                return Step::Line;
            }
        }
        if *gap > 0 {
            return self.lose("line not captured");
        }
        Step::Done
    }

    fn lose(&mut self, reason: &'static str) -> Step {
        self.lost = true;
        self.line.clear();
        self.line_seen = 0;
        self.in_block = false;
        Step::Lost(reason)
    }
}
