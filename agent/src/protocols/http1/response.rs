//! The response direction: status lines, response bodies by every framing
//! HTTP/1.x has, interim responses, upgrades, and responses whose end is
//! not visible.

use super::{
    chunked::ChunkedDecoder,
    detect::check_status_line,
    head::{parse_response_head, HeadError, ResponseHead},
    head_buf::HeadStep,
    parser::{Http1Parser, RespBody, RespState},
    span::Exchange,
};
use crate::model::ParsedSpan;
use crate::protocols::{Chunk, Confidence, Feed};

/// What a response head led to.
enum Accepted {
    /// Go on reading the chunk in the state the head set.
    Continue,
    /// The response's body (this many bytes of the chunk) was read with it.
    BodyDone(u64),
    /// The connection stops being HTTP/1 here.
    Feed(Feed),
}

impl Http1Parser {
    pub(super) fn on_response_chunk(&mut self, c: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        let bytes = c.bytes;
        let previous_ns = self.resp.last_ns;
        self.resp.last_ns = c.exit_ns;
        let mut off = 0;
        while off < bytes.len() {
            match &mut self.resp.state {
                RespState::Unsynced => {
                    let starts_response = off == 0 && check_status_line(bytes) == Confidence::Yes;
                    if starts_response && !self.pending.is_empty() {
                        self.resp.state = RespState::Idle;
                        continue;
                    }
                    if starts_response {
                        // A response to a request we never saw.
                        self.dropped += 1;
                    }
                    return Feed::Continue;
                }
                RespState::Unframed { .. } => {
                    // A new status line while requests wait ends the unframed
                    // response at the previous chunk.
                    if off == 0 && !self.pending.is_empty() && check_status_line(bytes) == Confidence::Yes {
                        if let RespState::Unframed { exchange } =
                            std::mem::replace(&mut self.resp.state, RespState::Idle)
                        {
                            self.finish(*exchange, previous_ns, out);
                        }
                        continue;
                    }
                    // More of the response: a size guessed from blind bytes
                    // was wrong.
                    if let RespState::Unframed { exchange } = &mut self.resp.state {
                        exchange.body_size_known = false;
                    }
                    return Feed::Continue;
                }
                RespState::Idle => {
                    while off < bytes.len() && matches!(bytes[off], b'\r' | b'\n') {
                        off += 1;
                    }
                    if off == bytes.len() {
                        break;
                    }
                    if self.pending.is_empty() {
                        // Response without a request (e.g. the request was
                        // before the agent started): drop it and skip to the
                        // next status line that has a request to answer.
                        self.dropped += 1;
                        self.resp.state = RespState::Unsynced;
                        return Feed::Continue;
                    }
                    self.resp.state = RespState::Head;
                }
                RespState::Head => {
                    let input = &bytes[off..];
                    let step = self.resp.head.push(input);
                    let view = if self.resp.head.buf.is_empty() { input } else { &self.resp.head.buf[..] };
                    if check_status_line(&view[..view.len().min(12)]) == Confidence::No {
                        return self.lost_sync("invalid status line");
                    }
                    match step {
                        HeadStep::Partial => off = bytes.len(),
                        HeadStep::TooLarge => return self.lost_sync("response head too large"),
                        HeadStep::Complete { in_buf, len, consumed } => {
                            let parsed = if in_buf {
                                parse_response_head(&self.resp.head.buf[..len])
                            } else {
                                parse_response_head(&input[..len])
                            };
                            off += consumed;
                            self.resp.head.reset();
                            let head = match parsed {
                                Ok(head) => head,
                                Err(HeadError::TooManyHeaders) => return self.lost_sync("too many response headers"),
                                Err(HeadError::Invalid(reason)) => return self.lost_sync(reason),
                            };
                            let visible = bytes.len().saturating_sub(off) as u64;
                            match self.accept_response(head, c.exit_ns, visible, out) {
                                Accepted::Feed(feed) => return feed,
                                Accepted::Continue => {}
                                Accepted::BodyDone(len) => off += len as usize,
                            }
                        }
                    }
                }
                RespState::Body { exchange, framing } => {
                    let input = &bytes[off..];
                    let done = match framing {
                        RespBody::Length(remaining) => {
                            let take = (*remaining).min(input.len() as u64);
                            *remaining -= take;
                            exchange.body_bytes += take;
                            off += take as usize;
                            *remaining == 0
                        }
                        RespBody::Chunked(dec) => {
                            let Ok(n) = dec.feed(input) else {
                                return self.lost_sync("invalid chunked response body");
                            };
                            off += n;
                            exchange.body_bytes = dec.body_bytes;
                            dec.is_done()
                        }
                        RespBody::Close => {
                            exchange.body_bytes = exchange.body_bytes.saturating_add(input.len() as u64);
                            off = bytes.len();
                            false
                        }
                    };
                    if done {
                        if let RespState::Body { exchange, .. } =
                            std::mem::replace(&mut self.resp.state, RespState::Idle)
                        {
                            self.finish(*exchange, c.exit_ns, out);
                        }
                    }
                }
            }
        }
        let blind = c.total_len.saturating_sub(bytes.len() as u64);
        if blind > 0 {
            self.response_blind(blind, c.exit_ns, out);
        }
        Feed::Continue
    }

    /// A complete response head for the oldest pending request; `visible`
    /// bytes of the chunk follow the head.
    fn accept_response(
        &mut self,
        head: ResponseHead,
        now_ns: u64,
        visible: u64,
        out: &mut Vec<ParsedSpan>,
    ) -> Accepted {
        let status = head.status;
        if (100..200).contains(&status) && status != 101 {
            // Interim (100 Continue, 103 Early Hints): the final response follows.
            self.resp.state = RespState::Idle;
            return Accepted::Continue;
        }
        let Some(req) = self.pending.pop_front() else {
            self.dropped += 1;
            self.resp.state = RespState::Unsynced;
            return Accepted::Continue;
        };
        let method = req.method();
        let is_head = method == "HEAD";
        let tunnel = method == "CONNECT" && (200..300).contains(&status);
        let mut exchange = Exchange { req, status: Some(status), body_bytes: 0, body_size_known: false };
        if status == 101 || tunnel {
            self.finish(exchange, now_ns, out);
            self.reset();
            return Accepted::Feed(Feed::Opaque(if tunnel { "http CONNECT tunnel" } else { "http protocol upgrade" }));
        }
        if is_head || status == 204 || status == 304 {
            self.resp.state = RespState::Idle;
            self.finish(exchange, now_ns, out);
            return Accepted::Continue;
        }
        let framing = if head.chunked {
            RespBody::Chunked(ChunkedDecoder::new())
        } else if head.other_encoding {
            RespBody::Close
        } else {
            match head.content_length {
                // The whole body is in this chunk (none at all, or a small
                // keep-alive response): finished here, as the body state
                // would on its first chunk, without boxing the exchange.
                Some(n) if n <= visible => {
                    exchange.body_bytes = n;
                    exchange.body_size_known = true;
                    self.resp.state = RespState::Idle;
                    self.finish(exchange, now_ns, out);
                    return Accepted::BodyDone(n);
                }
                Some(n) => RespBody::Length(n),
                None => RespBody::Close,
            }
        };
        exchange.body_size_known = true;
        self.resp.state = RespState::Body { exchange: Box::new(exchange), framing };
        Accepted::Continue
    }

    fn response_blind(&mut self, blind: u64, now_ns: u64, out: &mut Vec<ParsedSpan>) {
        match &mut self.resp.state {
            RespState::Unsynced => {}
            RespState::Unframed { exchange } => exchange.body_size_known = false,
            RespState::Idle => self.response_started_blind(),
            RespState::Head => {
                // Status line captured, the rest of the head not: the status is
                // known, the framing is not.
                let head = self.resp.head.complete_lines().and_then(|h| parse_response_head(&h).ok());
                self.resp.head.reset();
                match self.pending.pop_front() {
                    Some(req) => {
                        let exchange =
                            Exchange { req, status: head.map(|h| h.status), body_bytes: 0, body_size_known: false };
                        self.resp.state = RespState::Unframed { exchange: Box::new(exchange) };
                    }
                    None => {
                        self.dropped += 1;
                        self.resp.state = RespState::Unsynced;
                    }
                }
            }
            RespState::Body { exchange, framing } => match framing {
                RespBody::Length(remaining) => {
                    let overflow = blind > *remaining;
                    let take = blind.min(*remaining);
                    *remaining -= take;
                    exchange.body_bytes += take;
                    if *remaining == 0 {
                        if let RespState::Body { exchange, .. } =
                            std::mem::replace(&mut self.resp.state, RespState::Idle)
                        {
                            self.finish(*exchange, now_ns, out);
                        }
                        if overflow {
                            self.response_started_blind();
                        }
                    }
                }
                RespBody::Chunked(dec) => {
                    if dec.skip_blind(blind) {
                        exchange.body_bytes = dec.body_bytes;
                    } else {
                        // The end is not visible. If the blind bytes fit the
                        // chunk's rest and a bare last chunk, the size holds
                        // unless more response bytes follow (then it is
                        // dropped, see the Unframed arms).
                        let may_end = dec.blind_may_end_body(blind);
                        let body_bytes = dec.body_bytes;
                        if let RespState::Body { mut exchange, .. } =
                            std::mem::replace(&mut self.resp.state, RespState::Idle)
                        {
                            exchange.body_bytes = body_bytes;
                            exchange.body_size_known = may_end;
                            self.resp.state = RespState::Unframed { exchange };
                        }
                    }
                }
                RespBody::Close => exchange.body_bytes = exchange.body_bytes.saturating_add(blind),
            },
        }
    }

    /// A response began in uncaptured bytes: its request can never be
    /// answered visibly, and what follows is unknown.
    fn response_started_blind(&mut self) {
        if self.pending.pop_front().is_some() {
            self.dropped += 1;
        }
        self.resp.state = RespState::Unsynced;
    }
}

#[cfg(test)]
mod tests {
    use waggle_common::Role;

    use super::super::test_conn::*;
    use crate::protocols::{Feed, ProtocolParser};

    #[test]
    fn response_body_over_many_writes() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /f HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
        c.resp(b"0123");
        assert!(c.take().is_empty(), "not complete yet");
        c.resp(b"456");
        c.resp(b"789");
        let end = c.t + 10;
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].end_ns, end, "ends at the chunk that completed the body");
    }

    #[test]
    fn chunked_response() {
        let body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n";
        // Whole, and split at every position.
        for split in 0..body.len() {
            let mut c = Conn::new(Role::Server);
            c.req(b"GET /stream HTTP/1.1\r\n\r\n");
            c.resp(&body[..split]);
            assert!(c.take().is_empty(), "split {split}: not complete yet");
            c.resp(&body[split..]);
            let spans = c.take();
            assert_eq!(spans.len(), 1, "split {split}");
            assert_eq!(spans[0].attr("http.response.body.size"), Some(&i(12)));
            assert_eq!(spans[0].end_ns, c.t + 10);
            // The connection is still in sync.
            c.req(b"GET /again HTTP/1.1\r\n\r\n");
            c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(names(&c.take()), ["GET /again"], "split {split}");
            assert!(c.all_continue(), "split {split}");
        }
    }

    #[test]
    fn chunked_response_ends_at_last_chunk_write() {
        let mut c = Conn::new(Role::Client);
        c.req(b"GET /events HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        c.resp(b"3\r\nabc\r\n");
        c.resp(b"3\r\ndef\r\n");
        assert!(c.take().is_empty());
        c.resp(b"0\r\n\r\n");
        let end = c.t + 10;
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].end_ns, end);
        assert_eq!(spans[0].attr("http.response.body.size"), Some(&i(6)));
    }

    #[test]
    fn chunked_with_truncated_data_is_followed_exactly() {
        // Chunk headers all fall in captured bytes; data is partly blind.
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /big HTTP/1.1\r\n\r\n");
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2710\r\n";
        let mut first = head.to_vec();
        first.resize(4096, b'z');
        let data_in_first = 4096 - head.len();
        c.resp_truncated(&first, (head.len() + 10_000) as u64);
        assert_eq!(data_in_first + (10_000 - data_in_first), 10_000);
        c.resp(b"\r\n0\r\n\r\n");
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].attr("http.response.body.size"), Some(&i(10_000)));
        assert!(c.all_continue());
    }

    #[test]
    fn chunked_header_in_blind_region_falls_back() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /dump HTTP/1.1\r\n\r\n");
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n";
        let mut first = head.to_vec();
        first.extend_from_slice(b"1000\r\n");
        first.resize(4096, b'y');
        // 20000 bytes moved: several chunk-size lines were never captured.
        c.resp_truncated(&first, 20_000);
        c.resp_truncated(&[b'y'; 4096], 9000);
        let last_resp_exit = c.t + 10;
        assert!(c.take().is_empty(), "no invented end");
        // The next request ends the response at the last response write.
        c.req(b"GET /next HTTP/1.1\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /dump"]);
        assert_eq!(spans[0].end_ns, last_resp_exit);
        assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(200)));
        assert_eq!(spans[0].attr("http.response.body.size"), None, "size unknown, not invented");
        // And the next exchange is parsed normally.
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(names(&c.take()), ["GET /next"]);
        assert!(c.all_continue());
    }

    /// node's http server answers `res.end(body)` without a length with one
    /// writev: head, one chunk, `0\r\n\r\n`. A 5000-byte body passes the
    /// 4096-byte capture, so the last chunk is never seen.
    fn node_chunked_write(body: usize) -> (Vec<u8>, u64) {
        let mut w =
            format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n{body:x}\r\n")
                .into_bytes();
        let total = w.len() + body + 2 + 5;
        w.resize(4096, b'x');
        (w, total as u64)
    }

    #[test]
    fn chunked_body_ending_in_blind_bytes_keeps_its_size() {
        for (then_close, want) in [(false, 5000), (true, 5000)] {
            let mut c = Conn::new(Role::Server);
            c.req(b"GET /five-k HTTP/1.1\r\n\r\n");
            let (captured, total) = node_chunked_write(5000);
            c.resp_truncated(&captured, total);
            let write_exit = c.t + 10;
            assert!(c.take().is_empty(), "the end is not seen yet");
            if then_close {
                c.close();
            } else {
                c.req(b"GET /next HTTP/1.1\r\n\r\n");
            }
            let spans = c.take();
            assert_eq!(names(&spans), ["GET /five-k"]);
            assert_eq!(spans[0].attr("http.response.body.size"), Some(&i(want)));
            assert_eq!(spans[0].end_ns, write_exit);
            assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(200)));
        }
        // The next exchange on the connection is framed normally.
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /a HTTP/1.1\r\n\r\n");
        let (captured, total) = node_chunked_write(5000);
        c.resp_truncated(&captured, total);
        c.req(b"GET /b HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /a", "GET /b"]);
        assert_eq!(spans[1].attr("http.response.body.size"), Some(&i(2)));
        assert!(c.all_continue());
    }

    #[test]
    fn chunked_size_from_blind_bytes_is_dropped_when_more_follows() {
        // The same write, but more of the response arrives: the five blind
        // bytes were the start of another chunk (a short write), not the end.
        for more_blind in [false, true] {
            let mut c = Conn::new(Role::Server);
            c.req(b"GET /five-k HTTP/1.1\r\n\r\n");
            let (captured, total) = node_chunked_write(5000);
            c.resp_truncated(&captured, total);
            if more_blind {
                c.resp_truncated(b"", 100);
            } else {
                c.resp(b"xxxxxxxx\r\n0\r\n\r\n");
            }
            c.close();
            let spans = c.take();
            assert_eq!(spans.len(), 1);
            assert_eq!(spans[0].attr("http.response.body.size"), None, "more_blind={more_blind}");
        }
        // Blind bytes that cannot be the rest of the chunk and a bare last
        // chunk (one byte more or less) give no size either.
        for delta in [-1i64, 1] {
            let mut c = Conn::new(Role::Server);
            c.req(b"GET /five-k HTTP/1.1\r\n\r\n");
            let (captured, total) = node_chunked_write(5000);
            c.resp_truncated(&captured, total.saturating_add_signed(delta));
            c.close();
            let spans = c.take();
            assert_eq!(spans[0].attr("http.response.body.size"), None, "delta {delta}");
        }
    }

    #[test]
    fn chunked_fallback_ends_at_close_or_idle() {
        let unframed = |c: &mut Conn| {
            c.req(b"GET /dump HTTP/1.1\r\n\r\n");
            let mut first = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n".to_vec();
            first.resize(4096, b'y');
            c.resp_truncated(&first, 9000);
            c.t + 10
        };
        let mut c = Conn::new(Role::Server);
        let last = unframed(&mut c);
        c.close();
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].end_ns, last);

        let mut c = Conn::new(Role::Server);
        let last = unframed(&mut c);
        c.parser.on_idle(last + 1_000_000, &mut c.out);
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].end_ns, last);
    }

    #[test]
    fn invalid_chunked_body_loses_sync() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            c.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Feed::LostSync("invalid chunked response body")
        );
        assert!(c.take().is_empty());
        assert_eq!(c.parser.take_dropped(), 1);
    }

    #[test]
    fn close_delimited_response_ends_at_close() {
        for role in [Role::Server, Role::Client] {
            let mut c = Conn::new(role);
            c.req(b"GET /legacy HTTP/1.0\r\n\r\n");
            c.resp(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsome");
            c.resp_truncated(b" more", 5000);
            assert!(c.take().is_empty(), "role {role:?}: ends only at close");
            c.close();
            let spans = c.take();
            assert_eq!(spans.len(), 1);
            assert_eq!(spans[0].end_ns, c.t);
            assert_eq!(spans[0].attr("http.response.body.size"), Some(&i(5004)));
        }
        // HTTP/1.1 with Connection: close and no length.
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /x HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc");
        assert!(c.take().is_empty());
        c.close();
        assert_eq!(c.take().len(), 1);
    }

    #[test]
    fn bodiless_responses() {
        // HEAD: Content-Length describes the GET body, none follows.
        let mut c = Conn::new(Role::Server);
        c.req(b"HEAD /file HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
        c.req(b"GET /file HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n");
        c.req(b"DELETE /file HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 204 No Content\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["HEAD /file", "GET /file", "DELETE /file"]);
        assert_eq!(spans[0].attr("http.response.body.size"), None);
        assert!(c.all_continue());
    }

    #[test]
    fn expect_100_continue() {
        for role in [Role::Server, Role::Client] {
            let mut c = Conn::new(role);
            c.req(b"POST /upload HTTP/1.1\r\nContent-Length: 6\r\nExpect: 100-continue\r\n\r\n");
            c.resp(b"HTTP/1.1 100 Continue\r\n\r\n");
            assert!(c.take().is_empty(), "the interim response does not end the exchange");
            c.req(b"abcdef");
            c.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
            let spans = c.take();
            assert_eq!(names(&spans), ["POST /upload"]);
            assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(201)));
            assert_eq!(spans[0].attr("http.request.body.size"), Some(&i(6)));
            assert!(c.all_continue());
        }
        // Interim and final response in one write, 103 Early Hints too.
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /page HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(200)));
    }

    #[test]
    fn mid_stream_old_response_tail_after_new_request() {
        // Joined while an old response is still being written; a new request
        // arrives (pipelined client) before the old response's tail.
        let mut c = Conn::new(Role::Server);
        c.resp(b"more of an old body");
        c.req(b"GET /new HTTP/1.1\r\n\r\n");
        c.resp(b"rest of the old body");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(names(&c.take()), ["GET /new"]);
        assert!(c.all_continue());
    }

    #[test]
    fn response_without_request_is_dropped() {
        let mut c = Conn::new(Role::Client);
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(c.take().is_empty());
        assert_eq!(c.parser.take_dropped(), 1);
        assert!(c.all_continue());
    }

    #[test]
    fn upgrade_and_connect_make_the_stream_opaque() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        assert_eq!(
            c.resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"),
            Feed::Opaque("http protocol upgrade")
        );
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /ws"]);
        assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(101)));

        let mut c = Conn::new(Role::Client);
        c.req(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n");
        assert_eq!(c.resp(b"HTTP/1.1 200 Connection established\r\n\r\n"), Feed::Opaque("http CONNECT tunnel"));
        let spans = c.take();
        assert_eq!(names(&spans), ["CONNECT"]);
        assert_eq!(spans[0].attr("server.address"), Some(&s("db.internal")));
        assert_eq!(spans[0].attr("server.port"), Some(&i(5432)));
        assert_eq!(spans[0].attr("url.path"), None);
    }
}
