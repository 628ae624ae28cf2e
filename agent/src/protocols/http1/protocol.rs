//! Http1Parser as the protocol layer drives it: each chunk to the request
//! or the response side, what a close completes, what idleness drops.

use waggle_common::{Direction, Role};

use super::{
    detect::{check_request_line, check_status_line, request_direction, DETECT_LINE_PATIENCE},
    parser::{Http1Parser, ReqState, RespBody, RespState},
};
use crate::model::{ParsedSpan, Protocol};
use crate::protocols::{Chunk, Confidence, Feed, ProtocolParser};

impl Http1Parser {
    /// For connections whose role the kernel did not know: the first full
    /// request line tells which side this process is.
    fn resolve_role(&mut self, c: &Chunk<'_>) {
        if check_request_line(c.bytes, c.is_truncated(), DETECT_LINE_PATIENCE) == Confidence::Yes {
            self.role = if c.direction == Direction::Ingress { Role::Server } else { Role::Client };
        } else if check_status_line(c.bytes) == Confidence::Yes {
            self.role = if c.direction == Direction::Egress { Role::Server } else { Role::Client };
        }
    }
}

impl ProtocolParser for Http1Parser {
    fn protocol(&self) -> Protocol {
        Protocol::Http1
    }

    fn on_data(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        if self.role == Role::Unknown {
            self.resolve_role(chunk);
        }
        match request_direction(self.role) {
            None => Feed::Continue,
            Some(dir) if dir == chunk.direction => self.on_request_chunk(chunk, out),
            Some(_) => self.on_response_chunk(chunk, out),
        }
    }

    fn recycle(self: Box<Self>) {
        super::parser::keep_spare(self);
    }

    fn on_close(&mut self, ts_ns: u64, out: &mut Vec<ParsedSpan>) {
        match std::mem::replace(&mut self.resp.state, RespState::Unsynced) {
            RespState::Body { exchange, framing: RespBody::Close } => self.finish(*exchange, ts_ns, out),
            RespState::Unframed { exchange } => {
                let end = self.resp.last_ns;
                self.finish(*exchange, end, out);
            }
            other => self.resp.state = other,
        }
        self.reset();
    }

    fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    fn buffered_bytes(&self) -> usize {
        let queued = self.pending.capacity() * std::mem::size_of::<super::span::PendingRequest>();
        self.req.head.buf.capacity() + self.resp.head.buf.capacity() + queued + self.req.memo.bytes()
    }

    fn on_idle(&mut self, older_than_ns: u64, out: &mut Vec<ParsedSpan>) {
        if self.req.last_ns < older_than_ns {
            match self.req.state {
                ReqState::Head => {
                    if !self.req.tentative {
                        self.dropped += 1;
                    }
                    self.req.head.reset();
                    self.req.tentative = false;
                    self.req.state = ReqState::Skip;
                }
                ReqState::Body { .. } => self.req.state = ReqState::Skip,
                ReqState::Skip | ReqState::Idle => {}
            }
        }
        if self.resp.last_ns < older_than_ns {
            let end = self.resp.last_ns;
            match std::mem::replace(&mut self.resp.state, RespState::Unsynced) {
                // The body stopped arriving long ago: what a close would
                // complete, without the close (lost close event, shutdown).
                RespState::Body { exchange, framing: RespBody::Close } | RespState::Unframed { exchange } => {
                    self.finish(*exchange, end, out);
                    self.resp.state = RespState::Idle;
                }
                RespState::Body { .. } => self.dropped += 1,
                RespState::Head => {
                    self.resp.head.reset();
                }
                other @ (RespState::Idle | RespState::Unsynced) => self.resp.state = other,
            }
        }
        let mut stale = 0u64;
        while self.pending.front().is_some_and(|r| r.start_ns < older_than_ns)
            && !matches!(self.resp.state, RespState::Head)
        {
            self.pending.pop_front();
            stale += 1;
        }
        if stale > 0 {
            self.dropped += stale;
            // A late response must not be paired with a newer request.
            self.resp.state = RespState::Unsynced;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_conn::*;
    use super::*;
    use crate::model::{SpanKind, SpanStatus};

    #[test]
    fn an_idle_keep_alive_connection_holds_one_pending_slot() {
        for role in [Role::Server, Role::Client] {
            let mut c = Conn::new(role);
            for _ in 0..3 {
                c.req(GET);
                c.resp(OK);
            }
            assert_eq!(c.take().len(), 3);
            assert_eq!(c.parser.pending.capacity(), 1, "{role:?}");
            // Pipelined requests still queue.
            c.req(GET);
            c.req(GET);
            c.resp(OK);
            c.resp(OK);
            assert_eq!(c.take().len(), 2);
        }
    }

    #[test]
    fn server_exchange_has_semconv_attributes() {
        let mut c = Conn::new(Role::Server);
        c.req(GET);
        let req_exit = c.t + 10;
        let req_tid = c.t as u32;
        c.resp(OK);
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.name, "GET /users/{id}");
        assert_eq!(span.start_ns, req_exit, "server span starts when the request was read");
        assert_eq!(span.end_ns, c.t + 10);
        assert_eq!(span.tid, req_tid);
        assert_eq!(span.status, SpanStatus::Unset);
        assert_eq!(span.attr("http.request.method"), Some(&s("GET")));
        assert_eq!(span.attr("url.path"), Some(&s("/users/42")));
        assert_eq!(span.attr("url.scheme"), Some(&s("http")));
        assert_eq!(span.attr("http.route"), Some(&s("/users/{id}")));
        assert_eq!(span.attr("http.response.status_code"), Some(&i(200)));
        assert_eq!(span.attr("network.protocol.version"), Some(&s("1.1")));
        assert_eq!(span.attr("user_agent.original"), Some(&s("curl/8.5")));
        assert_eq!(span.attr("http.response.body.size"), Some(&i(5)));
        assert_eq!(span.attr("http.request.body.size"), None);
        assert_eq!(span.attr("server.address"), Some(&s("api.example.com")));
        assert_eq!(span.attr("server.port"), Some(&i(8080)));
        assert_eq!(span.attr("error.type"), None);
        assert!(span.incoming_context.is_none());
        assert!(c.all_continue());
    }

    #[test]
    fn secrets_and_query_strings_never_leak() {
        for role in [Role::Server, Role::Client] {
            let mut c = Conn::new(role);
            c.req(GET);
            c.resp(OK);
            let spans = c.take();
            assert_eq!(spans.len(), 1);
            let dump = format!("{:?}", spans[0]);
            for secret in ["top-secret", "cookie-secret", "set-cookie-secret", "s3cr3t", "token="] {
                assert!(!dump.contains(secret), "{secret} leaked: {dump}");
            }
        }
    }

    #[test]
    fn client_exchange_times_status_and_host() {
        let mut c = Conn::new(Role::Client);
        c.req(b"POST /api/orders HTTP/1.1\r\nHost: orders.internal\r\nContent-Length: 11\r\n\r\n{\"a\":12345}");
        let write_enter = c.t;
        let tid = c.t as u32;
        c.resp(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        let spans = c.take();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.kind, SpanKind::Client);
        assert_eq!(span.name, "POST /api/orders");
        assert_eq!(span.start_ns, write_enter, "client span starts when the request write began");
        assert_eq!(span.end_ns, c.t + 10);
        assert_eq!(span.tid, tid);
        assert_eq!(span.status, SpanStatus::Error { description: "HTTP 404".into() });
        assert_eq!(span.attr("error.type"), Some(&s("404")));
        assert_eq!(span.attr("http.request.body.size"), Some(&i(11)));
        assert_eq!(span.attr("http.response.body.size"), Some(&i(0)));
        assert_eq!(span.attr("server.address"), Some(&s("orders.internal")));
        assert_eq!(span.attr("server.port"), None, "only what the bytes say");
    }

    #[test]
    fn error_status_depends_on_kind() {
        let run = |role, status: &str| {
            let mut c = Conn::new(role);
            c.req(b"GET /x HTTP/1.1\r\n\r\n");
            c.resp(format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes());
            c.take().remove(0)
        };
        assert_eq!(run(Role::Server, "404").status, SpanStatus::Unset);
        assert_eq!(run(Role::Server, "404").attr("error.type"), None);
        assert_eq!(run(Role::Server, "503").status, SpanStatus::Error { description: "HTTP 503".into() });
        assert_eq!(run(Role::Server, "503").attr("error.type"), Some(&s("503")));
        assert_eq!(run(Role::Client, "400").status, SpanStatus::Error { description: "HTTP 400".into() });
        assert_eq!(run(Role::Client, "302").status, SpanStatus::Unset);
    }

    #[test]
    fn unknown_methods_are_other() {
        let mut c = Conn::new(Role::Server);
        c.req(b"PROPFIND /dav/files HTTP/1.1\r\nHost: dav\r\n\r\n");
        c.resp(b"HTTP/1.1 207 Multi-Status\r\nContent-Length: 0\r\n\r\n");
        let span = c.take().remove(0);
        assert_eq!(span.attr("http.request.method"), Some(&s("_OTHER")));
        assert_eq!(span.attr("http.request.method_original"), Some(&s("PROPFIND")));
        assert_eq!(span.name, "HTTP /dav/files");
    }

    #[test]
    fn http_1_0_version_is_reported() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /old HTTP/1.0\r\n\r\n");
        c.resp(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi");
        let span = c.take().remove(0);
        assert_eq!(span.attr("network.protocol.version"), Some(&s("1.0")));
    }

    #[test]
    fn absolute_form_request_uses_path_and_authority() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET http://backend.local:9000/v1/things/77?secret=1 HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let span = c.take().remove(0);
        assert_eq!(span.name, "GET /v1/things/{id}");
        assert_eq!(span.attr("url.path"), Some(&s("/v1/things/77")));
        assert_eq!(span.attr("server.address"), Some(&s("backend.local")));
        assert_eq!(span.attr("server.port"), Some(&i(9000)));
    }

    #[test]
    fn keep_alive_many_exchanges() {
        let mut c = Conn::new(Role::Client);
        for n in 0..100 {
            c.req(format!("GET /items/{n} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
            c.resp(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}", n.to_string().len(), n).as_bytes());
        }
        let spans = c.take();
        assert_eq!(spans.len(), 100);
        assert!(spans.iter().all(|s| s.name == "GET /items/{id}"));
        assert!(spans.windows(2).all(|w| w[0].end_ns < w[1].start_ns));
        assert!(c.all_continue());
        assert!(c.parser.pending.is_empty());
    }

    #[test]
    fn pipelining_is_fifo() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz");
        c.req(b"HEAD /d HTTP/1.1\r\n\r\n");
        assert_eq!(c.parser.pending.len(), 4);
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nc");
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /a", "GET /b"]);
        c.resp(b"c");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["POST /c", "HEAD /d"]);
        assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(500)));
        assert!(matches!(spans[0].status, SpanStatus::Error { .. }));
        assert!(c.all_continue());
    }

    #[test]
    fn idle_drops_stale_state() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /slow HTTP/1.1\r\n\r\n");
        c.req(b"GET /partial HTTP/1.1\r\nHost:");
        let now = c.t + 10;
        c.parser.on_idle(now + 1, &mut c.out);
        assert!(c.take().is_empty());
        assert!(c.parser.pending.is_empty());
        assert!(c.parser.req.head.buf.is_empty());
        assert_eq!(c.parser.take_dropped(), 2);
        // A late response to a dropped request is not paired with a new one.
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        c.req(b"GET /new HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /new"]);
        assert_eq!(spans[0].attr("http.response.status_code"), Some(&i(202)));
    }

    #[test]
    fn idle_keeps_fresh_state() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /slow HTTP/1.1\r\n\r\n");
        c.parser.on_idle(0, &mut c.out);
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(names(&c.take()), ["GET /slow"]);
    }

    #[test]
    fn close_drops_incomplete_exchanges() {
        let mut c = Conn::new(Role::Server);
        c.req(b"GET /a HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345");
        c.close();
        assert!(c.take().is_empty(), "a half body is not a response");
        assert_eq!(c.parser.take_dropped(), 1);
    }

    #[test]
    fn unknown_role_is_learnt_from_the_request_direction() {
        let mut c = Conn::new(Role::Unknown);
        c.chunk(Direction::Egress, b"GET /out HTTP/1.1\r\n\r\n", 22);
        c.chunk(Direction::Ingress, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 38);
        let spans = c.take();
        assert_eq!(names(&spans), ["GET /out"]);
        assert_eq!(spans[0].kind, SpanKind::Client);
    }
}
