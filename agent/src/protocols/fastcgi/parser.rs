//! The FastCGI connection state machine: requests by id, their params and
//! response head buffered (bounded), a span at each `FCGI_END_REQUEST`.
use waggle_common::{
    fastcgi::{record, Header},
    Direction, Role,
};

use super::{
    params::{self, RequestParams},
    records::{Piece, RecordReader},
};
use crate::{
    model::{AttrValue, Attribute, ParsedSpan, Protocol, SpanKind},
    protocols::{
        http1::{infer_route, span_status as http_span_status, PathRedaction},
        sql::frontend_direction,
        Chunk, Feed, ParserConfig, ProtocolParser,
    },
};

/// Requests in flight on one connection (FastCGI multiplexes by id; nginx
/// and php-fpm use one at a time).
pub const MAX_IN_FLIGHT: usize = 16;
/// Params bytes kept per request: a request whose params are longer keeps
/// the pairs that fit.
pub const MAX_PARAMS: usize = 16 * 1024;
/// Bytes of the response head (CGI headers before the blank line) kept to
/// find `Status:`.
pub const MAX_RESPONSE_HEAD: usize = 4096;

struct Request {
    id: u16,
    start_ns: u64,
    tid: u32,
    params: Vec<u8>,
    /// A params byte was not captured or did not fit: later pairs are lost.
    params_cut: bool,
    /// The empty PARAMS record came: `params` is complete.
    params_done: bool,
    parsed: Option<RequestParams>,
    stdin_bytes: u64,
    head: Vec<u8>,
    /// The response head ended (or can no longer be read).
    head_done: bool,
    status: Option<u16>,
    stdout_bytes: u64,
    aborted: bool,
}

impl Request {
    fn new(id: u16, start_ns: u64, tid: u32) -> Request {
        Request {
            id,
            start_ns,
            tid,
            params: Vec::new(),
            params_cut: false,
            params_done: false,
            parsed: None,
            stdin_bytes: 0,
            head: Vec::new(),
            head_done: false,
            status: None,
            stdout_bytes: 0,
            aborted: false,
        }
    }

    fn finish_params(&mut self) {
        if self.parsed.is_none() {
            self.parsed = Some(params::parse(&self.params));
            self.params = Vec::new();
        }
        self.params_done = true;
    }

    fn on_stdout(&mut self, bytes: &[u8], missing: u64) {
        self.stdout_bytes += bytes.len() as u64 + missing;
        if self.head_done {
            return;
        }
        let room = MAX_RESPONSE_HEAD.saturating_sub(self.head.len());
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        if let Some(status) = response_status(&self.head) {
            self.status = status;
            self.head_done = true;
            self.head = Vec::new();
        } else if missing > 0 || self.head.len() >= MAX_RESPONSE_HEAD {
            self.head_done = true;
            self.head = Vec::new();
        }
    }
}

/// Once the CGI response head is complete: its `Status:` code, if any.
/// None while the head is still incomplete.
fn response_status(head: &[u8]) -> Option<Option<u16>> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| head.windows(2).position(|w| w == b"\n\n"))?;
    let status = head[..end].split(|&c| c == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (name, value) = line.split_at(line.iter().position(|&c| c == b':')?);
        if !name.eq_ignore_ascii_case(b"status") {
            return None;
        }
        let value = std::str::from_utf8(&value[1..]).ok()?.trim_start();
        let code: u16 = value.get(..3)?.parse().ok()?;
        (100..=999).contains(&code).then_some(code)
    });
    Some(status)
}

pub struct FastCgiParser {
    role: Role,
    redaction: std::sync::Arc<PathRedaction>,
    requests: Vec<Request>,
    frontend: RecordReader,
    backend: RecordReader,
    /// The response stream's framing was lost: requests in flight end at
    /// the last response bytes before the next request or the close.
    hunting: bool,
    last_backend_exit: u64,
    dropped: u64,
}

impl FastCgiParser {
    pub fn new(role: Role, config: &ParserConfig) -> Self {
        FastCgiParser {
            role,
            redaction: config.url_redaction.clone(),
            requests: Vec::new(),
            frontend: RecordReader::default(),
            backend: RecordReader::default(),
            hunting: false,
            last_backend_exit: 0,
            dropped: 0,
        }
    }

    fn request(&mut self, id: u16) -> Option<&mut Request> {
        self.requests.iter_mut().find(|r| r.id == id)
    }

    /// Span start: where the kernel's context for the request is stamped
    /// (a server's read exit, a client's write entry).
    fn start_ns(&self, chunk: &Chunk<'_>) -> u64 {
        if self.role == Role::Server {
            chunk.exit_ns
        } else {
            chunk.enter_ns
        }
    }

    fn on_frontend(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        let start_ns = self.start_ns(chunk);
        let missing = chunk.total_len.saturating_sub(chunk.bytes.len() as u64);
        let mut pieces = Vec::new();
        let framed = self.frontend.push(chunk.bytes, missing, |p| pieces.push(p));
        for piece in pieces {
            match piece {
                Piece::Start(h) if h.kind == record::BEGIN_REQUEST => {
                    if self.hunting {
                        // The previous responses ended where their bytes stopped.
                        self.flush_hunted(out);
                    }
                    if let Some(i) = self.requests.iter().position(|r| r.id == h.request_id) {
                        // A new request reuses the id: the old one never ended.
                        self.requests.remove(i);
                        self.dropped += 1;
                    }
                    if self.requests.len() >= MAX_IN_FLIGHT {
                        self.requests.remove(0);
                        self.dropped += 1;
                    }
                    self.requests.push(Request::new(h.request_id, start_ns, chunk.tid));
                }
                Piece::Start(h) if h.kind == record::PARAMS && h.content_len == 0 => {
                    if let Some(r) = self.request(h.request_id) {
                        r.finish_params();
                    }
                }
                Piece::Content(h, bytes, uncaptured) => self.on_frontend_content(h, bytes, uncaptured),
                Piece::Start(h) if h.kind == record::ABORT_REQUEST => {
                    if let Some(r) = self.request(h.request_id) {
                        r.aborted = true;
                    }
                }
                Piece::Start(_) | Piece::End(_) => {}
            }
        }
        match framed {
            Ok(()) => Feed::Continue,
            Err(reason) => Feed::LostSync(reason),
        }
    }

    fn on_frontend_content(&mut self, h: Header, bytes: &[u8], missing: u64) {
        let Some(r) = self.request(h.request_id) else {
            return;
        };
        match h.kind {
            record::PARAMS if !r.params_done => {
                if r.params_cut {
                    return;
                }
                let room = MAX_PARAMS - r.params.len();
                r.params.extend_from_slice(&bytes[..bytes.len().min(room)]);
                if bytes.len() > room || missing > 0 {
                    r.params_cut = true;
                }
            }
            record::STDIN => r.stdin_bytes += bytes.len() as u64 + missing,
            _ => {}
        }
    }

    fn on_backend(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) {
        self.last_backend_exit = chunk.exit_ns;
        if self.hunting {
            return;
        }
        let missing = chunk.total_len.saturating_sub(chunk.bytes.len() as u64);
        let mut pieces = Vec::new();
        let framed = self.backend.push(chunk.bytes, missing, |p| pieces.push(p));
        for piece in pieces {
            match piece {
                Piece::Content(h, bytes, uncaptured) if h.kind == record::STDOUT => {
                    if let Some(r) = self.request(h.request_id) {
                        r.on_stdout(bytes, uncaptured);
                    }
                }
                Piece::End(h) if h.kind == record::END_REQUEST => {
                    if let Some(i) = self.requests.iter().position(|r| r.id == h.request_id) {
                        let r = self.requests.remove(i);
                        self.emit(r, chunk.exit_ns, false, out);
                    } else {
                        // The end of a request we did not see begin.
                        self.dropped += 1;
                    }
                }
                _ => {}
            }
        }
        if let Err(reason) = framed {
            tracing::trace!(protocol = "fastcgi", reason, "response framing lost; hunting for its end");
            self.hunting = true;
        }
    }

    /// Ends the requests in flight when their response framing was lost:
    /// one request gets its span, ended at the last response bytes; with
    /// several, which bytes were whose is unknown, so they are dropped.
    fn flush_hunted(&mut self, out: &mut Vec<ParsedSpan>) {
        let requests = std::mem::take(&mut self.requests);
        if requests.len() == 1 {
            for r in requests {
                let end = self.last_backend_exit;
                self.emit(r, end, true, out);
            }
        } else {
            self.dropped += requests.len() as u64;
        }
        self.hunting = false;
        self.backend.resync();
    }

    fn emit(&mut self, mut r: Request, end_ns: u64, truncated: bool, out: &mut Vec<ParsedSpan>) {
        r.finish_params();
        match build_span(self.role, r, end_ns, truncated, &self.redaction) {
            Some(span) => out.push(span),
            None => self.dropped += 1,
        }
    }
}

fn build_span(role: Role, r: Request, end_ns: u64, truncated: bool, redaction: &PathRedaction) -> Option<ParsedSpan> {
    let p = r.parsed?;
    // A request without a method is no HTTP request (an authorizer's
    // probe, a management exchange): nothing to name the span by.
    let method = p.method?;
    let kind = if role == Role::Server { SpanKind::Server } else { SpanKind::Client };
    let path = p.path.map(|path| match redaction.apply(&path) {
        std::borrow::Cow::Borrowed(_) => path,
        std::borrow::Cow::Owned(hidden) => hidden,
    });
    let route = path.as_deref().map(infer_route);
    let name_method = if method == "_OTHER" { "HTTP" } else { method };
    let name = match &route {
        Some(route) => format!("{name_method} {route}"),
        None => name_method.to_owned(),
    };
    // A CGI response without a Status header is 200 OK (RFC 3875 6.3.3).
    let status = if !truncated || r.head_done || r.stdout_bytes > 0 { Some(r.status.unwrap_or(200)) } else { r.status };
    let mut attributes: Vec<Attribute> = Vec::with_capacity(14);
    attributes.push(("http.request.method", AttrValue::from(method)));
    if let Some(original) = p.method_original {
        attributes.push(("http.request.method_original", AttrValue::from(original)));
    }
    if let Some(path) = path {
        attributes.push(("url.path", AttrValue::from(path)));
    }
    attributes.push(("url.scheme", AttrValue::from(p.scheme.unwrap_or("http"))));
    if let Some(route) = route {
        attributes.push(("http.route", AttrValue::from(route)));
    }
    if let Some(status) = status {
        attributes.push(("http.response.status_code", AttrValue::Int(i64::from(status))));
    }
    attributes.push(("network.protocol.name", AttrValue::from("fastcgi")));
    if let Some(ua) = p.user_agent {
        attributes.push(("user_agent.original", AttrValue::from(ua)));
    }
    if let Some(size) = p.content_length.or((r.stdin_bytes > 0).then_some(r.stdin_bytes)) {
        attributes.push(("http.request.body.size", AttrValue::Int(i64::try_from(size).unwrap_or(i64::MAX))));
    }
    if kind == SpanKind::Server {
        // The web server's own name and port: where the user's request went.
        if let Some(name) = p.server_name {
            attributes.push(("server.address", AttrValue::from(name)));
        }
        if let Some(port) = p.server_port {
            attributes.push(("server.port", AttrValue::Int(i64::from(port))));
        }
        if let Some(client) = p.client_address {
            attributes.push(("client.address", AttrValue::from(client)));
        }
    }
    if truncated {
        attributes.push(("waggle.fastcgi.response.truncated", AttrValue::Bool(true)));
    }
    if r.aborted {
        attributes.push(("waggle.fastcgi.aborted", AttrValue::Bool(true)));
    }
    let status = http_span_status(kind, status, &mut attributes);
    Some(ParsedSpan {
        kind,
        name: name.into(),
        start_ns: r.start_ns,
        end_ns: end_ns.max(r.start_ns),
        status,
        attributes,
        incoming_context: if kind == SpanKind::Server { p.context } else { None },
        incoming_tracestate: if kind == SpanKind::Server { p.tracestate } else { None },
        tid: r.tid,
    })
}

impl ProtocolParser for FastCgiParser {
    fn protocol(&self) -> Protocol {
        Protocol::FastCgi
    }

    fn on_data(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        let frontend: Direction = frontend_direction(self.role);
        if chunk.direction == frontend {
            let feed = self.on_frontend(chunk, out);
            if feed != Feed::Continue {
                // Requests whose records can no longer be followed.
                self.dropped += self.requests.len() as u64;
                self.requests.clear();
            }
            feed
        } else {
            self.on_backend(chunk, out);
            Feed::Continue
        }
    }

    fn on_close(&mut self, _ts_ns: u64, out: &mut Vec<ParsedSpan>) {
        if self.hunting {
            self.flush_hunted(out);
        }
        self.dropped += self.requests.len() as u64;
        self.requests.clear();
    }

    fn on_idle(&mut self, older_than_ns: u64, out: &mut Vec<ParsedSpan>) {
        if self.hunting && self.last_backend_exit < older_than_ns {
            self.flush_hunted(out);
        }
        let before = self.requests.len();
        self.requests.retain(|r| r.start_ns >= older_than_ns);
        self.dropped += (before - self.requests.len()) as u64;
    }

    fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    fn buffered_bytes(&self) -> usize {
        self.requests.iter().map(|r| r.params.capacity() + r.head.capacity() + 128).sum()
    }
}
