//! Collecting a message head (start line and headers) across chunks, up to
//! a bound, without copying heads that arrive whole.

/// Largest request/response head (request line + headers) the parser buffers.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Head buffer capacity kept between messages; a connection that once saw a
/// huge head must not hold 64 KiB forever.
pub(super) const KEEP_HEAD_CAPACITY: usize = 4096;

/// Where the head ends (one past the empty line), scanning from `from`.
/// httparse accepts bare LF line endings, so this does too.
fn find_head_end(data: &[u8], from: usize) -> Option<usize> {
    for j in memchr::memchr_iter(b'\n', data.get(from..)?).map(|j| j + from) {
        match data.get(j + 1) {
            Some(b'\n') => return Some(j + 2),
            Some(b'\r') => match data.get(j + 2) {
                Some(b'\n') => return Some(j + 3),
                Some(_) => {}
                None => return None,
            },
            Some(_) => {}
            None => return None,
        }
    }
    None
}

/// Accumulates a message head across chunks. Heads that arrive whole in one
/// chunk (the common case) are parsed in place and never copied.
#[derive(Default)]
pub(super) struct HeadBuf {
    pub(super) buf: Vec<u8>,
    /// Where the terminator search resumes: heads written a byte at a time
    /// must not be rescanned from the start (that would be quadratic).
    scan_from: usize,
}

pub(super) enum HeadStep {
    Partial,
    TooLarge,
    /// The head is `len` bytes, in the buffer (`in_buf`) or at the start of
    /// the input; `consumed` input bytes belonged to it.
    Complete {
        in_buf: bool,
        len: usize,
        consumed: usize,
    },
}

impl HeadBuf {
    pub(super) fn push(&mut self, input: &[u8]) -> HeadStep {
        if self.buf.is_empty() {
            if let Some(end) = find_head_end(input, 0) {
                if end > MAX_HEAD_BYTES {
                    return HeadStep::TooLarge;
                }
                return HeadStep::Complete { in_buf: false, len: end, consumed: end };
            }
            if input.len() > MAX_HEAD_BYTES {
                return HeadStep::TooLarge;
            }
            self.buf.extend_from_slice(input);
            self.scan_from = self.buf.len().saturating_sub(2);
            return HeadStep::Partial;
        }
        let old = self.buf.len();
        // Copy only what can still belong to a head of legal size.
        let room = (MAX_HEAD_BYTES + 1).saturating_sub(old);
        self.buf.extend_from_slice(&input[..input.len().min(room)]);
        if let Some(end) = find_head_end(&self.buf, self.scan_from) {
            if end > MAX_HEAD_BYTES || end <= old {
                return HeadStep::TooLarge;
            }
            self.buf.truncate(end);
            return HeadStep::Complete { in_buf: true, len: end, consumed: end - old };
        }
        if self.buf.len() > MAX_HEAD_BYTES {
            return HeadStep::TooLarge;
        }
        self.scan_from = self.buf.len().saturating_sub(2);
        HeadStep::Partial
    }

    pub(super) fn reset(&mut self) {
        self.buf.clear();
        self.scan_from = 0;
        if self.buf.capacity() > KEEP_HEAD_CAPACITY {
            self.buf.shrink_to(KEEP_HEAD_CAPACITY);
        }
    }

    /// The buffered head bytes with the partial last line cut off and an
    /// empty line appended: what httparse needs to read the headers that
    /// were captured in full when the rest of the head is not visible.
    pub(super) fn complete_lines(&self) -> Option<Vec<u8>> {
        let last_lf = self.buf.iter().rposition(|&c| c == b'\n')?;
        let mut head = Vec::with_capacity(last_lf + 3);
        head.extend_from_slice(&self.buf[..=last_lf]);
        head.extend_from_slice(b"\r\n");
        Some(head)
    }
}
