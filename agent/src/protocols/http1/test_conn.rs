//! What the parser's tests share: a fake connection and a typical exchange.

use waggle_common::{Direction, Role};

use super::parser::Http1Parser;
use crate::model::{AttrValue, ParsedSpan};
use crate::protocols::{Chunk, Feed, ProtocolParser};

/// A fake connection: feeds chunks with advancing timestamps.
pub(super) struct Conn {
    pub(super) parser: Http1Parser,
    pub(super) role: Role,
    pub(super) t: u64,
    pub(super) out: Vec<ParsedSpan>,
    pub(super) feeds: Vec<Feed>,
}

impl Conn {
    pub(super) fn new(role: Role) -> Conn {
        Conn { parser: Http1Parser::new(role), role, t: 1_000, out: Vec::new(), feeds: Vec::new() }
    }

    pub(super) fn chunk(&mut self, direction: Direction, bytes: &[u8], total_len: u64) -> Feed {
        self.t += 100;
        let chunk = Chunk { direction, bytes, total_len, enter_ns: self.t, exit_ns: self.t + 10, tid: self.t as u32 };
        let feed = self.parser.on_data(&chunk, &mut self.out);
        self.feeds.push(feed.clone());
        feed
    }

    fn req_dir(&self) -> Direction {
        if self.role == Role::Client {
            Direction::Egress
        } else {
            Direction::Ingress
        }
    }

    fn resp_dir(&self) -> Direction {
        if self.role == Role::Client {
            Direction::Ingress
        } else {
            Direction::Egress
        }
    }

    pub(super) fn req(&mut self, bytes: &[u8]) -> Feed {
        self.chunk(self.req_dir(), bytes, bytes.len() as u64)
    }

    pub(super) fn resp(&mut self, bytes: &[u8]) -> Feed {
        self.chunk(self.resp_dir(), bytes, bytes.len() as u64)
    }

    pub(super) fn req_truncated(&mut self, bytes: &[u8], total: u64) -> Feed {
        self.chunk(self.req_dir(), bytes, total)
    }

    pub(super) fn resp_truncated(&mut self, bytes: &[u8], total: u64) -> Feed {
        self.chunk(self.resp_dir(), bytes, total)
    }

    pub(super) fn close(&mut self) {
        self.t += 100;
        self.parser.on_close(self.t, &mut self.out);
    }

    pub(super) fn take(&mut self) -> Vec<ParsedSpan> {
        std::mem::take(&mut self.out)
    }

    pub(super) fn all_continue(&self) -> bool {
        self.feeds.iter().all(|f| *f == Feed::Continue)
    }
}

pub(super) fn s(v: &str) -> AttrValue {
    AttrValue::from(v.to_owned())
}

pub(super) fn i(v: i64) -> AttrValue {
    AttrValue::Int(v)
}

pub(super) fn names(spans: &[ParsedSpan]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

pub(super) const GET: &[u8] = b"GET /users/42?token=s3cr3t HTTP/1.1\r\nHost: api.example.com:8080\r\nUser-Agent: curl/8.5\r\nAuthorization: Bearer top-secret\r\nCookie: session=cookie-secret\r\n\r\n";
pub(super) const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: sid=set-cookie-secret\r\n\r\nhello";
