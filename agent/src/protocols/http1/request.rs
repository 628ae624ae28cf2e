//! The request direction: request heads, request bodies, and finding the
//! next request when the stream cannot be followed.

use waggle_common::Role;

use super::{
    chunked::ChunkedDecoder,
    detect::{check_request_line, check_request_line_with, DETECT_LINE_PATIENCE, LINE_CHECK_BYTES},
    head::{parse_request_head, HeadError, RequestHead},
    head_buf::HeadStep,
    parser::{Http1Parser, ReqBody, ReqState, RespState, MAX_PENDING},
    span::PendingRequest,
};
use crate::model::ParsedSpan;
use crate::protocols::{Chunk, Confidence, Feed};

impl Http1Parser {
    pub(super) fn on_request_chunk(&mut self, c: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        let bytes = c.bytes;
        self.req.last_ns = c.exit_ns;
        if matches!(self.req.state, ReqState::Skip) {
            let check = check_request_line(bytes, c.is_truncated(), usize::MAX);
            if bytes.is_empty() || check == Confidence::No {
                return Feed::Continue;
            }
            self.req.state = ReqState::Idle;
            // A complete, valid request line commits (a broken head after it
            // is lost sync); a mere prefix ("GE") is only a candidate.
            self.req.tentative = check == Confidence::NeedMore;
        }
        let mut off = 0;
        while off < bytes.len() {
            match &mut self.req.state {
                ReqState::Skip => break,
                ReqState::Idle => {
                    // Stray CRLF after a body is tolerated (RFC 9112 §2.2).
                    while off < bytes.len() && matches!(bytes[off], b'\r' | b'\n') {
                        off += 1;
                    }
                    if off == bytes.len() {
                        break;
                    }
                    self.req.state = ReqState::Head;
                    self.req.head_start_ns = if self.role == Role::Client { c.enter_ns } else { c.exit_ns };
                    self.req.head_tid = c.tid;
                    self.req.line_ok = false;
                }
                ReqState::Head => {
                    let input = &bytes[off..];
                    let step = self.req.head.push(input);
                    if !self.req.line_ok {
                        let view = if self.req.head.buf.is_empty() { input } else { &self.req.head.buf[..] };
                        let any_method = !self.req.tentative;
                        match check_request_line_with(
                            &view[..view.len().min(LINE_CHECK_BYTES)],
                            false,
                            DETECT_LINE_PATIENCE,
                            any_method,
                        ) {
                            Confidence::Yes => self.req.line_ok = true,
                            Confidence::NeedMore => {}
                            Confidence::No => match self.request_error("invalid request line") {
                                Some(feed) => return feed,
                                None => return Feed::Continue,
                            },
                        }
                    }
                    match step {
                        HeadStep::Partial => off = bytes.len(),
                        HeadStep::TooLarge => match self.request_error("request head too large") {
                            Some(feed) => return feed,
                            None => return Feed::Continue,
                        },
                        HeadStep::Complete { in_buf, len, consumed } => {
                            let redaction = Self::redaction(self.redaction.as_deref());
                            let parsed = if in_buf {
                                parse_request_head(&self.req.head.buf[..len], redaction, &mut self.req.memo)
                            } else {
                                parse_request_head(&input[..len], redaction, &mut self.req.memo)
                            };
                            off += consumed;
                            self.req.head.reset();
                            let head = match parsed {
                                Ok(head) => head,
                                Err(HeadError::TooManyHeaders) => {
                                    match self.request_error("too many request headers") {
                                        Some(feed) => return feed,
                                        None => return Feed::Continue,
                                    }
                                }
                                Err(HeadError::Invalid(reason)) => match self.request_error(reason) {
                                    Some(feed) => return feed,
                                    None => return Feed::Continue,
                                },
                            };
                            if let Some(feed) = self.accept_request(Some(head), true, out) {
                                return feed;
                            }
                        }
                    }
                }
                ReqState::Body { id, framing } => {
                    let id = *id;
                    let input = &bytes[off..];
                    match framing {
                        ReqBody::Length(remaining) => {
                            let take = (*remaining).min(input.len() as u64);
                            *remaining -= take;
                            off += take as usize;
                            if *remaining == 0 {
                                self.req.state = ReqState::Idle;
                            }
                        }
                        ReqBody::Chunked(dec) => {
                            let Ok(n) = dec.feed(input) else {
                                return self.lost_sync("invalid chunked request body");
                            };
                            off += n;
                            if dec.is_done() {
                                let size = dec.body_bytes;
                                self.req.state = ReqState::Idle;
                                self.set_request_body_size(id, size);
                            }
                        }
                    }
                }
            }
        }
        let blind = c.total_len.saturating_sub(bytes.len() as u64);
        if blind > 0 {
            if let Some(feed) = self.request_blind(blind, out) {
                return feed;
            }
        }
        Feed::Continue
    }

    /// A request head turned out invalid. While resynchronising that only
    /// means the chunk was not a request after all.
    fn request_error(&mut self, reason: &'static str) -> Option<Feed> {
        if self.req.tentative {
            self.req.head.reset();
            self.req.state = ReqState::Skip;
            self.req.tentative = false;
            None
        } else {
            Some(self.lost_sync(reason))
        }
    }

    /// A complete request head (or a placeholder when `head` is None: a
    /// request we know exists but cannot read, so its response is consumed
    /// without being matched to the wrong request).
    fn accept_request(
        &mut self,
        head: Option<RequestHead>,
        framing_known: bool,
        out: &mut Vec<ParsedSpan>,
    ) -> Option<Feed> {
        self.req.tentative = false;
        if let RespState::Unframed { .. } = self.resp.state {
            // The next request marks the end of a response we could not frame.
            let end = self.resp.last_ns;
            if let RespState::Unframed { exchange } = std::mem::replace(&mut self.resp.state, RespState::Idle) {
                self.finish(*exchange, end, out);
            }
        }
        if self.pending.len() >= MAX_PENDING {
            return Some(self.lost_sync("too many pipelined requests"));
        }
        let id = self.next_id;
        self.next_id += 1;
        let (next_state, body_size) = match &head {
            None => (ReqState::Skip, None),
            Some(_) if !framing_known => (ReqState::Skip, None),
            Some(h) if h.chunked => (ReqState::Body { id, framing: ReqBody::Chunked(ChunkedDecoder::new()) }, None),
            Some(h) => {
                let framing = match h.content_length {
                    Some(n) if n > 0 => ReqState::Body { id, framing: ReqBody::Length(n) },
                    _ => ReqState::Idle,
                };
                // A CONNECT tunnel carries opaque bytes once accepted; if it
                // is refused, the next request line resynchronises.
                let framing = if h.method == "CONNECT" { ReqState::Skip } else { framing };
                (framing, h.content_length)
            }
        };
        self.req.state = next_state;
        self.pending.push_back(PendingRequest {
            id,
            head,
            body_size,
            start_ns: self.req.head_start_ns,
            tid: self.req.head_tid,
        });
        None
    }

    fn set_request_body_size(&mut self, id: u64, size: u64) {
        if let Some(req) = self.pending.iter_mut().find(|r| r.id == id) {
            req.body_size = Some(size);
            return;
        }
        if let RespState::Body { exchange, .. } | RespState::Unframed { exchange } = &mut self.resp.state {
            if exchange.req.id == id {
                exchange.req.body_size = Some(size);
            }
        }
    }

    /// `blind` bytes the syscall moved were not captured.
    fn request_blind(&mut self, blind: u64, out: &mut Vec<ParsedSpan>) -> Option<Feed> {
        match &mut self.req.state {
            ReqState::Skip => {}
            ReqState::Idle => {
                // A request starts where we cannot see it. Keep a placeholder
                // so its response is not paired with a later request.
                self.push_placeholder();
            }
            ReqState::Head => {
                // The head continues past the capture: read what was captured
                // in full; the framing headers may be among the missing.
                let head = self.req.head.complete_lines().and_then(|h| {
                    parse_request_head(&h, Self::redaction(self.redaction.as_deref()), &mut self.req.memo).ok()
                });
                let tentative = self.req.tentative;
                self.req.head.reset();
                match head {
                    Some(head) => {
                        if let Some(feed) = self.accept_request(Some(head), false, out) {
                            return Some(feed);
                        }
                    }
                    None if tentative => {}
                    None => self.push_placeholder(),
                }
                self.req.state = ReqState::Skip;
                self.req.tentative = false;
            }
            ReqState::Body { id, framing } => {
                let id = *id;
                match framing {
                    ReqBody::Length(remaining) => {
                        if blind <= *remaining {
                            *remaining -= blind;
                            if *remaining == 0 {
                                self.req.state = ReqState::Idle;
                            }
                        } else {
                            self.req.state = ReqState::Idle;
                            self.push_placeholder();
                        }
                    }
                    ReqBody::Chunked(dec) => {
                        if !dec.skip_blind(blind) {
                            self.req.state = ReqState::Skip;
                        } else if dec.is_done() {
                            let size = dec.body_bytes;
                            self.req.state = ReqState::Idle;
                            self.set_request_body_size(id, size);
                        }
                    }
                }
            }
        }
        None
    }

    fn push_placeholder(&mut self) {
        self.req.state = ReqState::Skip;
        self.req.tentative = false;
        if self.pending.len() >= MAX_PENDING {
            // Nothing can be matched reliably any more; the idle sweep or
            // the next lost sync clears the queue.
            self.dropped += 1;
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push_back(PendingRequest { id, head: None, body_size: None, start_ns: self.req.last_ns, tid: 0 });
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        head_buf::{KEEP_HEAD_CAPACITY, MAX_HEAD_BYTES},
        test_conn::*,
    };
    use super::*;
    use crate::protocols::ProtocolParser;

    #[test]
    fn custom_methods_once_in_sync() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET / HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        c.req(b"NOTIFY /upnp/event HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /", "HTTP /upnp/event"]);
        assert_eq!(spans[1].attr("http.request.method_original"), Some(&s("NOTIFY")));
        assert!(c.all_continue());
        // Lower-case or over-long tokens are still garbage.
        assert_eq!(c.req(b"notify / HTTP/1.1\r\n\r\n"), Feed::LostSync("invalid request line"));
    }

    #[test]
    fn head_split_one_byte_per_write() {
        for role in [Role::Server, Role::Client] {
            let mut c = Conn::new(role);
            for b in GET.iter() {
                c.req(std::slice::from_ref(b));
            }
            for b in OK.iter() {
                c.resp(std::slice::from_ref(b));
            }
            let spans = c.take();
            assert_eq!(names(&spans), ["GET /users/{id}"], "role {role:?}");
            assert_eq!(spans[0].attr("user_agent.original"), Some(&s("curl/8.5")));
            assert_eq!(spans[0].attr("http.response.body.size"), Some(&i(5)));
            assert!(c.all_continue());
        }
    }

    #[test]
    fn server_span_starts_at_first_request_read() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /a HT");
        let first_exit = c.t + 10;
        let first_tid = c.t as u32;
        c.req(b"TP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 204 No Content\r\n\r\n");
        let span = c.take().remove(0);
        assert_eq!(span.start_ns, first_exit);
        assert_eq!(span.tid, first_tid);
    }

    #[test]
    fn large_heads_are_buffered_up_to_the_limit() {
        let mut c = Conn::new(Role::Server);
        let mut head = b"GET /big HTTP/1.1\r\n".to_vec();
        while head.len() < MAX_HEAD_BYTES - 200 {
            head.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        head.extend_from_slice(b"\r\n");
        assert!(head.len() <= MAX_HEAD_BYTES);
        // 4 KiB reads, all captured; too many headers for httparse.
        for part in head.chunks(4096) {
            c.req(part);
        }
        assert_eq!(c.feeds.last(), Some(&Feed::LostSync("too many request headers")));

        // Few, long headers: fine up to 64 KiB.
        let mut c = Conn::new(Role::Server);
        let mut head = b"GET /big HTTP/1.1\r\n".to_vec();
        let value = "v".repeat(MAX_HEAD_BYTES - 1000);
        head.extend_from_slice(format!("X-Long: {value}\r\nUser-Agent: ua\r\n\r\n").as_bytes());
        for part in head.chunks(4096) {
            c.req(part);
        }
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(c.all_continue());
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /big"]);
        assert_eq!(spans[0].attr("user_agent.original"), Some(&s("ua")));
        assert!(c.parser.req.head.buf.capacity() <= KEEP_HEAD_CAPACITY, "buffer shrinks after a huge head");
    }

    #[test]
    fn oversized_head_loses_sync() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /big HTTP/1.1\r\n");
        let filler = format!("X-Long: {}\r\n", "v".repeat(4000));
        let mut result = Feed::Continue;
        for _ in 0..20 {
            result = c.req(filler.as_bytes());
            if result != Feed::Continue {
                break;
            }
        }
        assert_eq!(result, Feed::LostSync("request head too large"));
        assert!(c.parser.req.head.buf.len() <= MAX_HEAD_BYTES + 1);
        assert!(c.take().is_empty());
    }

    #[test]
    fn content_length_counted_by_total_len() {
        // A 100 KB upload: every chunk captured to 4 KiB only.
        let mut c = Conn::new(Role::Server);
        let head = b"PUT /files/report.pdf HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
        let mut first = head.to_vec();
        first.resize(4096, b'%');
        c.req_truncated(&first, 60_000 + head.len() as u64);
        c.req_truncated(&[b'%'; 4096], 40_000);
        // Nothing left over: the next bytes are a response, then a request.
        c.resp_truncated(b"HTTP/1.1 201 Created\r\nContent-Length: 70000\r\n\r\n", 70_000 + 47);
        let spans = c.take();
        assert_eq!(names(&spans), ["PUT /files/report.pdf"]);
        assert_eq!(spans[0].attr("http.request.body.size"), Some(&i(100_000)));
        assert_eq!(spans[0].attr("http.response.body.size"), Some(&i(70_000)));
        assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(201)));
        // Keep-alive continues in sync.
        c.req(b"GET /next HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx");
        assert_eq!(names(&c.take()), ["GET /next"]);
        assert!(c.all_continue());
    }

    #[test]
    fn chunked_request_body() {
        let mut c = Conn::new(Role::Server);
        c.req(b"POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n");
        c.req(b"5\r\npedia\r\n0\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        c.req(b"GET /after HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["POST /upload", "GET /after"]);
        assert_eq!(spans[0].attr("http.request.body.size"), Some(&i(9)));
        assert!(c.all_continue());
    }

    #[test]
    fn pipeline_queue_is_bounded() {
        let mut c = Conn::new(Role::Client);
        for n in 0..MAX_PENDING {
            assert_eq!(c.req(format!("GET /{n} HTTP/1.1\r\n\r\n").as_bytes()), Feed::Continue);
        }
        assert_eq!(c.req(b"GET /overflow HTTP/1.1\r\n\r\n"), Feed::LostSync("too many pipelined requests"));
        assert!(c.parser.pending.is_empty());
        // The queued requests and the one that overflowed.
        assert_eq!(c.parser.take_dropped(), MAX_PENDING as u64 + 1);
    }

    #[test]
    fn mid_stream_join_resyncs_at_next_request() {
        // The agent starts while a POST body is being read and the previous
        // response is being written.
        let mut c = Conn::new(Role::Server);
        c.req(b"ody of an earlier request: GET /evil HTTP/1.1\r\n\r\n");
        c.req(b"GET /not-a-request is body text too\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        c.resp(b"tail of an old response");
        assert!(c.take().is_empty(), "nothing invented from the unknown prefix");
        assert!(c.all_continue());
        assert_eq!(c.parser.take_dropped(), 1, "the orphan response is counted");
        c.req(b"GET /fresh HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(names(&c.take()), ["GET /fresh"]);
        c.req(b"GET /again HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(names(&c.take()), ["GET /again"]);
        assert!(c.all_continue());
    }

    #[test]
    fn truncated_request_head_keeps_what_was_captured() {
        let mut c = Conn::new(Role::Server);
        let mut head = b"GET /reports/2024 HTTP/1.1\r\nHost: r.example\r\nCookie: ".to_vec();
        head.resize(4096, b'c');
        c.req_truncated(&head, 9000);
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /reports/{id}"]);
        assert_eq!(spans[0].attr("server.address"), Some(&s("r.example")));
        assert!(!format!("{:?}", spans[0]).contains("ccc"));
        // The request stream resynchronises at the next request line.
        c.req(b"GET /next HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(names(&c.take()), ["GET /next"]);
        assert!(c.all_continue());
    }

    #[test]
    fn unreadable_request_keeps_pairing_right() {
        // A request line longer than the capture: its response is consumed,
        // not paired with the next request.
        let mut c = Conn::new(Role::Server);
        let mut line = b"GET /".to_vec();
        line.resize(4096, b'a');
        c.req_truncated(&line, 5000);
        c.req(b"GET /second HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        c.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /second"]);
        assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(201)));
        assert_eq!(c.parser.take_dropped(), 1);
    }

    #[test]
    fn garbage_mid_stream_loses_sync() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET / HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(c.take().len(), 1);
        assert_eq!(c.req(&[0x16, 0x03, 0x01, 0x00, 0xa5, 0x01]), Feed::LostSync("invalid request line"));
        let mut c = Conn::new(Role::Server);
        c.req(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(c.resp(b"\x00\x01binary"), Feed::LostSync("invalid status line"));
        let mut c = Conn::new(Role::Server);
        c.req(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(c.resp(b"HTTP/1.1 002 Odd\r\n\r\n"), Feed::LostSync("invalid status code"));
        assert!(c.take().is_empty());
        let mut c = Conn::new(Role::Server);
        c.req(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(c.req(b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n"), Feed::LostSync("invalid request head"));
        let mut c = Conn::new(Role::Server);
        c.req(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            c.req(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Feed::LostSync("conflicting content-length")
        );
    }
}
