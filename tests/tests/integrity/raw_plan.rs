//! A raw client's plan: requests built byte by byte (knowing where their
//! request line and header block end), connections as sequences of writes
//! and reads, and the binary plan file raw_client.py plays.
use std::{fs, path::Path};

use crate::rng::filler;

pub enum Body {
    None,
    Cl(Vec<u8>),
    Chunked(Vec<Vec<u8>>),
}

/// One request's bytes and where its parts are.
#[derive(Clone)]
pub struct Req {
    pub bytes: Vec<u8>,
    /// Just past the request line's CRLF: the only place a line may be
    /// inserted.
    pub line_end: usize,
    /// Just past the header block's empty line.
    pub head_end: usize,
    /// Start of every chunk's data (chunked bodies).
    pub chunk_data: Vec<usize>,
    /// The application's own traceparent (any case) is in the header block.
    pub app_tp: bool,
    /// The answer the server gives.
    pub status: u32,
}

pub fn header(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

pub fn req(method: &str, target: &str, version: &str, headers: &[(String, String)], body: Body) -> Req {
    let mut b = format!("{method} {target} {version}\r\n").into_bytes();
    let line_end = b.len();
    for (name, value) in headers {
        b.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    match &body {
        Body::None => {}
        Body::Cl(data) => b.extend_from_slice(format!("Content-Length: {}\r\n", data.len()).as_bytes()),
        Body::Chunked(_) => b.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    b.extend_from_slice(b"\r\n");
    let head_end = b.len();
    let mut chunk_data = Vec::new();
    match body {
        Body::None => {}
        Body::Cl(data) => b.extend(data),
        Body::Chunked(chunks) => {
            for c in chunks.iter().filter(|c| !c.is_empty()) {
                b.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                chunk_data.push(b.len());
                b.extend_from_slice(c);
                b.extend_from_slice(b"\r\n");
            }
            b.extend_from_slice(b"0\r\n\r\n");
        }
    }
    let app_tp = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("traceparent"));
    let status = if target.starts_with("/early401") { 401 } else { 200 };
    Req { bytes: b, line_end, head_end, chunk_data, app_tp, status }
}

pub fn host() -> (String, String) {
    header("Host", "127.0.0.1")
}

/// A plain GET with a Host and a User-Agent.
pub fn get(target: &str) -> Req {
    req("GET", target, "HTTP/1.1", &[host(), header("User-Agent", "integrity/1")], Body::None)
}

/// A request whose header block (request line to the empty line) is exactly
/// `head_len` bytes, padded with an `X-Fill` header.
pub fn req_with_head_len(method: &str, target: &str, head_len: usize, body: impl Fn() -> Body) -> Req {
    let base = req(method, target, "HTTP/1.1", &[host(), header("X-Fill", "")], body());
    let pad = head_len.checked_sub(base.head_end).unwrap_or_else(|| panic!("head of {head_len} bytes too short"));
    req(method, target, "HTTP/1.1", &[host(), header("X-Fill", filler(pad, head_len))], body())
}

#[derive(Clone, Copy, Debug)]
pub enum Sys {
    Send,
    Write,
    Sendmsg,
}

pub enum Op {
    /// One write: a single call with all pieces (sendmsg: as iovecs), then
    /// calls for the rest after a short write.
    Write(Sys, Vec<Vec<u8>>),
    /// Read this many final answers, each with this status.
    Read(u32, u32),
    /// Read a 100 Continue.
    Continue,
}

/// A request inside a connection's byte stream.
pub struct Mark {
    pub start: usize,
    pub line_end: usize,
    pub head_end: usize,
    pub app_tp: bool,
    /// A plain case: the injector must have inserted its line here.
    pub must_inject: bool,
}

/// One connection of a raw client's plan.
pub struct Conn {
    pub case: String,
    pub ops: Vec<Op>,
    pub marks: Vec<Mark>,
    pub len: usize,
    /// Requests sent with `send` are plain: they must be injected.
    pub plain: bool,
}

impl Conn {
    pub fn new(case: impl Into<String>) -> Conn {
        Conn { case: case.into(), ops: Vec::new(), marks: Vec::new(), len: 0, plain: false }
    }

    pub fn plain(case: impl Into<String>) -> Conn {
        Conn { plain: true, ..Conn::new(case) }
    }

    pub fn write(&mut self, sys: Sys, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.ops.push(Op::Write(sys, vec![bytes.to_vec()]));
        }
    }

    /// One sendmsg() with `bytes` cut into iovecs at `cuts`.
    pub fn writev(&mut self, bytes: &[u8], cuts: &[usize]) {
        self.len += bytes.len();
        self.ops.push(Op::Write(Sys::Sendmsg, pieces(bytes, cuts)));
    }

    pub fn mark(&mut self, r: &Req, start: usize) {
        self.marks.push(Mark {
            start,
            line_end: start + r.line_end,
            head_end: start + r.head_end,
            app_tp: r.app_tp,
            must_inject: self.plain && !r.app_tp,
        });
    }

    pub fn read(&mut self, n: usize, status: u32) {
        self.ops.push(Op::Read(u32::try_from(n).unwrap_or(u32::MAX), status));
    }

    /// Writes `r` cut at `cuts` (one write per piece), then reads its answer.
    pub fn send(&mut self, r: &Req, cuts: &[usize], sys: Sys) {
        self.mark(r, self.len);
        for p in pieces(&r.bytes, cuts) {
            self.write(sys, &p);
        }
        self.read(1, r.status);
    }

    /// Writes `reqs` back to back cut at `cuts` (offsets into their
    /// concatenation), then reads all answers.
    pub fn pipeline(&mut self, reqs: &[Req], cuts: &[usize], sys: Sys) {
        let mut all = Vec::new();
        for r in reqs {
            self.mark(r, self.len + all.len());
            all.extend_from_slice(&r.bytes);
        }
        for p in pieces(&all, cuts) {
            self.write(sys, &p);
        }
        self.read(reqs.len(), 200);
    }

    /// `Expect: 100-continue`: the header block, wait for 100, then the body
    /// cut at `body_cuts` (offsets into the body).
    pub fn send_expect(&mut self, r: &Req, body_cuts: &[usize], sys: Sys) {
        self.mark(r, self.len);
        self.write(sys, &r.bytes[..r.head_end]);
        self.ops.push(Op::Continue);
        for p in pieces(&r.bytes[r.head_end..], body_cuts) {
            self.write(sys, &p);
        }
        self.read(1, r.status);
    }
}

/// `bytes` cut at the (sorted, deduplicated, in-range) offsets `cuts`.
pub fn pieces(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().copied().filter(|&c| c > 0 && c < bytes.len()).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts {
        out.push(bytes[at..c].to_vec());
        at = c;
    }
    if at < bytes.len() || out.is_empty() {
        out.push(bytes[at..].to_vec());
    }
    out
}

/// Offsets cutting `len` bytes into pieces of `piece` bytes.
pub fn every(len: usize, piece: usize) -> Vec<usize> {
    (1..).map(|i| i * piece).take_while(|&c| c < len).collect()
}

pub fn sys_of(i: usize) -> Sys {
    [Sys::Send, Sys::Write, Sys::Sendmsg][i % 3]
}

/// Writes a plan in raw_client.py's format.
pub fn write_plan(path: &Path, conns: &[Conn]) {
    let mut out = b"WGPLAN1\n".to_vec();
    let u32le =
        |v: usize| u32::try_from(v).unwrap_or_else(|_| panic!("{v} does not fit the plan format")).to_le_bytes();
    out.extend(u32le(conns.len()));
    for (id, c) in conns.iter().enumerate() {
        out.extend(u32le(id));
        out.extend(u32le(c.ops.len()));
        for op in &c.ops {
            match op {
                Op::Write(sys, ps) => {
                    out.push(b'W');
                    out.push(*sys as u8);
                    out.extend(u32le(ps.len()));
                    for p in ps {
                        out.extend(u32le(p.len()));
                    }
                    for p in ps {
                        out.extend_from_slice(p);
                    }
                }
                Op::Read(n, status) => {
                    out.push(b'R');
                    out.extend(n.to_le_bytes());
                    out.extend(status.to_le_bytes());
                }
                Op::Continue => out.push(b'C'),
            }
        }
    }
    fs::write(path, out).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
