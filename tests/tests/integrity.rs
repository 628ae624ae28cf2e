//! Traffic integrity ("torture") suite for the kernel's traceparent
//! injector (issue 8).
//!
//! With the real agent running (propagation on, the default), real clients
//! send hostile-but-legal HTTP/1.x traffic to a recording server
//! (`tests/fixtures/integrity/server.py`) that stores every byte it receives,
//! per connection, unaltered. Then:
//!
//! - raw-socket clients (`tests/fixtures/integrity/raw_client.py`, one with
//!   blocking sockets, one non-blocking with a 4 KiB send buffer against a
//!   server that reads some bodies slowly) play plans written here. What
//!   arrived must be byte for byte what the client wrote, except for at most
//!   one `traceparent: 00-<32 hex>-<16 hex>-<2 hex>\r\n` line right after the
//!   request line of a request that does not carry its own `traceparent`;
//!   and the return values of the send()/write()/sendmsg() calls of every
//!   write must add up to its length (a short write is followed by a call for
//!   exactly the unsent rest).
//! - high-level clients (curl, node's http, Java's HttpURLConnection and
//!   HttpClient, Go's net/http, nginx's proxy_pass driven by curl), whose
//!   exact header bytes are not ours: what arrived must parse as a sequence of
//!   HTTP/1.1 requests, each with exactly the method, path and body sent, at
//!   most one `traceparent`, which is the application's (exactly one, with its
//!   value) when the application set one, and otherwise, if present, the
//!   kernel's line right after the request line.
//!
//! Every difference is reported with the client, the case, the connection
//! and the first differing byte. The suite also asserts that the plain cases
//! (a single-write GET on a fresh or idle keep-alive connection, blocking
//! client) did get exactly one inserted line, so an injector that inserts
//! nothing cannot pass; the hostile cases may be skipped by the injector,
//! never corrupted.
//!
//! `WAGGLE_INTEGRITY_WITHOUT_AGENT=1` runs everything without the agent (a
//! control run of the harness itself: no line may be inserted then, and
//! none is required).
//!
//! `WAGGLE_INTEGRITY_CASES=split_head` runs only the raw cases (and
//! high-level clients) whose name contains the string, for example while
//! working on the injector; the run's totals are then not asserted.
//!
//! Run: `cargo xtask test -- integrity`, or with a built agent
//! `WAGGLE_BIN=$PWD/target/release/waggle cargo test --release -p waggle-e2e
//! --test integrity -- --nocapture`. Needs curl, node, javac/java, go and
//! nginx (`cargo xtask test` installs them).
use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use waggle_e2e::{
    e2e_setup,
    env::{poll_until, tail},
    fixture, python, run_client,
    servers::NGINX_BIN,
    wait_for_other_injectors, Agent, ClientRun, Proc,
};

/// `traceparent: 00-<32>-<16>-<2>\r\n`.
const LINE_LEN: usize = 70;
/// Requests the whole run must check.
const MIN_REQUESTS: u64 = 100_000;
const START_TIMEOUT: Duration = Duration::from_secs(30);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);
const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
/// Recordings are final once the peer closed; high-level clients close when
/// they exit.
const RECORDING_TIMEOUT: Duration = Duration::from_secs(20);
/// Failing case families per client printed with an example (all are
/// counted and listed in a file).
const MAX_PER_CLIENT: usize = 8;
const SEED: u64 = 0x81ce_7e57;
/// A request a body may look like.
const FAKE_REQUESTS: [&[u8]; 4] = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /y?z=1 HTTP/1.0\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: b\r\nUser-Agent: c\r\n\r\n",
];

// ---------------------------------------------------------------------------
// Deterministic randomness
// ---------------------------------------------------------------------------

/// splitmix64: the plans are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// In `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }

    /// An application's own traceparent value (distinct ids every call).
    fn app_traceparent(&mut self) -> String {
        format!("00-{:016x}{:016x}-{:016x}-01", self.next() | 1, self.next(), self.next() | 1)
    }
}

/// `n` random bytes; `request_like`: requests are pasted in at the start and
/// every few KiB.
fn body(rng: &mut Rng, n: usize, request_like: bool) -> Vec<u8> {
    let mut b = rng.bytes(n);
    if request_like {
        let mut at = 0;
        loop {
            let fake = FAKE_REQUESTS[rng.below(FAKE_REQUESTS.len())];
            if at + fake.len() > n {
                break;
            }
            b[at..at + fake.len()].copy_from_slice(fake);
            at += fake.len() + rng.range(0, 6000);
        }
    }
    b
}

/// A piece of body that starts with a complete request, `n` bytes (at least
/// the request).
fn request_like_piece(rng: &mut Rng, n: usize) -> Vec<u8> {
    let fake = FAKE_REQUESTS[rng.below(FAKE_REQUESTS.len())];
    let mut p = fake.to_vec();
    if n > p.len() {
        let extra = n - p.len();
        p.extend(body(rng, extra, true));
    }
    p
}

/// Printable filler for targets and header values.
fn filler(n: usize, salt: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-._~ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..n).map(|i| CHARS[(i * 7 + salt) % CHARS.len()] as char).collect()
}

/// A request target making `METHOD SP target SP VERSION CRLF` exactly
/// `line_len` bytes (at least "/"), starting with `prefix` when it fits.
fn target_for(method: &str, version: &str, line_len: usize, prefix: &str) -> String {
    let n = line_len.saturating_sub(method.len() + version.len() + 4).max(1);
    if n > prefix.len() {
        format!("{prefix}/{}", filler(n - prefix.len() - 1, line_len))
    } else {
        format!("/{}", filler(n - 1, line_len))
    }
}

// ---------------------------------------------------------------------------
// Raw requests and plans
// ---------------------------------------------------------------------------

enum Body {
    None,
    Cl(Vec<u8>),
    Chunked(Vec<Vec<u8>>),
}

/// One request's bytes and where its parts are.
#[derive(Clone)]
struct Req {
    bytes: Vec<u8>,
    /// Just past the request line's CRLF: the only place a line may be
    /// inserted.
    line_end: usize,
    /// Just past the header block's empty line.
    head_end: usize,
    /// Start of every chunk's data (chunked bodies).
    chunk_data: Vec<usize>,
    /// The application's own traceparent (any case) is in the header block.
    app_tp: bool,
    /// The answer the server gives.
    status: u32,
}

fn header(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

fn req(method: &str, target: &str, version: &str, headers: &[(String, String)], body: Body) -> Req {
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

fn host() -> (String, String) {
    header("Host", "127.0.0.1")
}

/// A plain GET with a Host and a User-Agent.
fn get(target: &str) -> Req {
    req("GET", target, "HTTP/1.1", &[host(), header("User-Agent", "integrity/1")], Body::None)
}

/// A request whose header block (request line to the empty line) is exactly
/// `head_len` bytes, padded with an `X-Fill` header.
fn req_with_head_len(method: &str, target: &str, head_len: usize, body: impl Fn() -> Body) -> Req {
    let base = req(method, target, "HTTP/1.1", &[host(), header("X-Fill", "")], body());
    let pad = head_len.checked_sub(base.head_end).unwrap_or_else(|| panic!("head of {head_len} bytes too short"));
    req(method, target, "HTTP/1.1", &[host(), header("X-Fill", filler(pad, head_len))], body())
}

#[derive(Clone, Copy, Debug)]
enum Sys {
    Send,
    Write,
    Sendmsg,
}

enum Op {
    /// One write: a single call with all pieces (sendmsg: as iovecs), then
    /// calls for the rest after a short write.
    Write(Sys, Vec<Vec<u8>>),
    /// Read this many final answers, each with this status.
    Read(u32, u32),
    /// Read a 100 Continue.
    Continue,
}

/// A request inside a connection's byte stream.
struct Mark {
    start: usize,
    line_end: usize,
    head_end: usize,
    app_tp: bool,
    /// A plain case: the injector must have inserted its line here.
    must_inject: bool,
}

/// One connection of a raw client's plan.
struct Conn {
    case: String,
    ops: Vec<Op>,
    marks: Vec<Mark>,
    len: usize,
    /// Requests sent with `send` are plain: they must be injected.
    plain: bool,
}

impl Conn {
    fn new(case: impl Into<String>) -> Conn {
        Conn { case: case.into(), ops: Vec::new(), marks: Vec::new(), len: 0, plain: false }
    }

    fn plain(case: impl Into<String>) -> Conn {
        Conn { plain: true, ..Conn::new(case) }
    }

    fn write(&mut self, sys: Sys, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.ops.push(Op::Write(sys, vec![bytes.to_vec()]));
        }
    }

    /// One sendmsg() with `bytes` cut into iovecs at `cuts`.
    fn writev(&mut self, bytes: &[u8], cuts: &[usize]) {
        self.len += bytes.len();
        self.ops.push(Op::Write(Sys::Sendmsg, pieces(bytes, cuts)));
    }

    fn mark(&mut self, r: &Req, start: usize) {
        self.marks.push(Mark {
            start,
            line_end: start + r.line_end,
            head_end: start + r.head_end,
            app_tp: r.app_tp,
            must_inject: self.plain && !r.app_tp,
        });
    }

    fn read(&mut self, n: usize, status: u32) {
        self.ops.push(Op::Read(u32::try_from(n).unwrap_or(u32::MAX), status));
    }

    /// Writes `r` cut at `cuts` (one write per piece), then reads its answer.
    fn send(&mut self, r: &Req, cuts: &[usize], sys: Sys) {
        self.mark(r, self.len);
        for p in pieces(&r.bytes, cuts) {
            self.write(sys, &p);
        }
        self.read(1, r.status);
    }

    /// Writes `reqs` back to back cut at `cuts` (offsets into their
    /// concatenation), then reads all answers.
    fn pipeline(&mut self, reqs: &[Req], cuts: &[usize], sys: Sys) {
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
    fn send_expect(&mut self, r: &Req, body_cuts: &[usize], sys: Sys) {
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
fn pieces(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
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
fn every(len: usize, piece: usize) -> Vec<usize> {
    (1..).map(|i| i * piece).take_while(|&c| c < len).collect()
}

fn sys_of(i: usize) -> Sys {
    [Sys::Send, Sys::Write, Sys::Sendmsg][i % 3]
}

// ---------------------------------------------------------------------------
// Raw cases
// ---------------------------------------------------------------------------

/// Plain single-write GETs on fresh connections and on idle keep-alive
/// connections: the injector must insert its line into every one sent with
/// send().
fn case_plain(conns: &mut Vec<Conn>) {
    for c in 0..20 {
        let mut conn = Conn::plain("plain/send");
        for i in 0..5 {
            conn.send(&get(&format!("/plain/{c}/{i}")), &[], Sys::Send);
        }
        conns.push(conn);
    }
    for (name, sys) in [("plain/write", Sys::Write), ("plain/sendmsg", Sys::Sendmsg)] {
        for c in 0..10 {
            let mut conn = Conn::new(name);
            for i in 0..3 {
                conn.send(&get(&format!("/plain/{c}/{i}")), &[], sys);
            }
            conns.push(conn);
        }
    }
}

/// Request lines of 16..=300 bytes, within 3 bytes of every power of two
/// from 64 to 65536, and a few random long ones; on fresh connections (GET,
/// POST with a body in the same write, no header at all) and all on one
/// keep-alive connection.
fn case_request_line_lengths(rng: &mut Rng, conns: &mut Vec<Conn>) {
    let mut lengths: Vec<usize> = (16..=300).collect();
    let mut p = 64;
    while p <= 65536 {
        lengths.extend(p - 3..=p + 3);
        p *= 2;
    }
    for _ in 0..6 {
        lengths.push(rng.range(301, 70_000));
    }
    lengths.sort_unstable();
    lengths.dedup();
    let mut keepalive = Conn::new("reqline_len/keepalive");
    keepalive.send(&get("/first"), &[], Sys::Send);
    for (i, &len) in lengths.iter().enumerate() {
        // Methods longer than GET only where the line has room for them.
        let version = if i % 7 == 3 { "HTTP/1.0" } else { "HTTP/1.1" };
        let method = if len < 24 { "GET" } else { ["GET", "DELETE", "OPTIONS", "GET", "HEAD"][i % 5] };
        let r = req(method, &target_for(method, version, len, "/len"), version, &[host()], Body::None);
        assert_eq!(r.line_end, len, "request line length");
        let mut conn = Conn::new(format!("reqline_len/{len}/{method}"));
        match sys_of(i) {
            Sys::Sendmsg => {
                let cut = rng.range(1, r.bytes.len() - 1);
                conn.mark(&r, 0);
                conn.writev(&r.bytes, &[cut]);
                conn.read(1, 200);
            }
            sys => conn.send(&r, &[], sys),
        }
        conns.push(conn);
        keepalive.send(&r, &[], Sys::Send);

        let post_target = target_for("POST", "HTTP/1.1", len.max(17), "/len");
        let r = req("POST", &post_target, "HTTP/1.1", &[host()], Body::Cl(body(rng, 1 + i % 97, i % 2 == 0)));
        let mut conn = Conn::new(format!("reqline_len/{}/POST+body", r.line_end));
        conn.send(&r, &[], Sys::Send);
        conns.push(conn);

        if len.is_power_of_two() || i % 10 == 0 {
            // No header: the request line is followed by the empty line.
            let r = req("GET", &target_for("GET", "HTTP/1.1", len, "/bare"), "HTTP/1.1", &[], Body::None);
            let mut conn = Conn::new(format!("reqline_len/{len}/no-headers"));
            conn.send(&r, &[], Sys::Send);
            conns.push(conn);
        }
    }
    conns.push(keepalive);
}

/// Header blocks (and whole messages) of lengths around 2048, 4096 and
/// 8192 bytes.
fn case_head_lengths(rng: &mut Rng, conns: &mut Vec<Conn>) {
    let mut keepalive = Conn::new("head_len/keepalive");
    keepalive.send(&get("/first"), &[], Sys::Send);
    for center in [2048, 4096, 8192] {
        for t in center - 6..=center + 6 {
            let rs = [
                ("GET", req_with_head_len("GET", &format!("/head/{t}"), t, || Body::None)),
                ("POST+64", {
                    let b = body(rng, 64, true);
                    req_with_head_len("POST", &format!("/head/{t}"), t, || Body::Cl(b.clone()))
                }),
                ("message", {
                    // Header block plus body exactly t bytes (the body's
                    // length changes the Content-Length digits: settle it).
                    let mut n = t - 60;
                    for _ in 0..3 {
                        n = t - req("POST", &format!("/msg/{t}"), "HTTP/1.1", &[host()], Body::Cl(vec![b'x'; n]))
                            .head_end;
                    }
                    let r = req("POST", &format!("/msg/{t}"), "HTTP/1.1", &[host()], Body::Cl(body(rng, n, true)));
                    assert_eq!(r.bytes.len(), t, "message length");
                    r
                }),
            ];
            for (what, r) in rs {
                let mut conn = Conn::new(format!("head_len/{t}/{what}"));
                conn.send(&r, &[], Sys::Send);
                conns.push(conn);
                keepalive.send(&r, &[], Sys::Write);
            }
        }
    }
    conns.push(keepalive);
}

/// Header blocks written in 2-3 writes, cut inside and right after the
/// request line, inside a header name (`trace|parent`), right before and
/// inside the final CRLF; with and without the application's own
/// traceparent (also in a later write, after a >4 KiB Cookie, mixed case).
fn case_split_heads(rng: &mut Rng, conns: &mut Vec<Conn>) {
    let cookie = || header("Cookie", format!("session={}", filler(4500, 3)));
    for variant in ["plain", "tp", "TraceParent", "tp-first", "cookie", "cookie-tp"] {
        for method in ["GET", "POST"] {
            for keepalive in [false, true] {
                let tp = rng.app_traceparent();
                let mut hs = vec![host(), header("User-Agent", "integrity/1")];
                match variant {
                    "tp" => hs.push(header("traceparent", tp)),
                    "TraceParent" => hs.push(header("TraceParent", tp)),
                    "tp-first" => hs.insert(0, header("traceparent", tp)),
                    "cookie" => hs.push(cookie()),
                    "cookie-tp" => {
                        hs.push(cookie());
                        hs.push(header("traceparent", tp));
                    }
                    _ => {}
                }
                hs.push(header("Accept", "*/*"));
                let b = if method == "POST" { Body::Cl(body(rng, 300, true)) } else { Body::None };
                let r = req(method, &format!("/split/{variant}"), "HTTP/1.1", &hs, b);
                let (le, he) = (r.line_end, r.head_end);
                let text = String::from_utf8_lossy(&r.bytes[..he]).into_owned();
                let name_cut = text
                    .to_ascii_lowercase()
                    .find("traceparent")
                    .map(|i| i + 5)
                    .unwrap_or_else(|| text.find("Host").unwrap_or(le) + 2);
                let cookie_cut = text.find("Cookie").map(|i| i + 4100);
                let mut schemes: Vec<(&str, Vec<usize>)> = vec![
                    ("reqline+1", vec![1]),
                    ("reqline+4", vec![4]),
                    ("reqline-mid", vec![le / 2]),
                    ("before-reqline-crlf", vec![le - 2]),
                    ("inside-reqline-crlf", vec![le - 1]),
                    ("after-reqline", vec![le]),
                    ("in-name", vec![name_cut]),
                    ("before-final-crlf", vec![he - 2]),
                    ("inside-final-crlf", vec![he - 1]),
                    ("after-reqline+in-name", vec![le, name_cut]),
                    ("reqline-mid+before-final-crlf", vec![le / 2, he - 2]),
                    ("after-reqline+before-final-crlf", vec![le, he - 2]),
                    ("after-head", vec![he]),
                ];
                if let Some(c) = cookie_cut {
                    schemes.push(("in-cookie", vec![c]));
                    schemes.push(("after-reqline+in-cookie", vec![le, c]));
                }
                for (i, (scheme, cuts)) in schemes.into_iter().enumerate() {
                    let mut conn = Conn::new(format!(
                        "split_head/{variant}/{method}/{scheme}{}",
                        if keepalive { "/keepalive" } else { "" }
                    ));
                    if keepalive {
                        conn.send(&get("/first"), &[], Sys::Send);
                    }
                    conn.send(&r, &cuts, sys_of(i));
                    // The connection goes on with a plain request.
                    conn.send(&get("/after"), &[], Sys::Send);
                    conns.push(conn);
                }
            }
        }
    }
}

/// Bodies that look like requests, written in pieces after the header
/// block: Content-Length and chunked (chunk data written on its own), with
/// `Expect: 100-continue`, and in the same write as the head.
fn case_request_like_bodies(rng: &mut Rng, conns: &mut Vec<Conn>) {
    for (k, piece) in [(2, 40), (3, 300), (4, 4000), (3, 5000), (6, 1500), (2, 70)] {
        for keepalive in [false, true] {
            let ps: Vec<Vec<u8>> = (0..k).map(|_| request_like_piece(rng, piece)).collect();
            let all: Vec<u8> = ps.concat();
            let cuts: Vec<usize> = ps
                .iter()
                .scan(0, |at, p| {
                    *at += p.len();
                    Some(*at)
                })
                .collect();
            let suffix = if keepalive { "/keepalive" } else { "" };
            let new = |what: &str| {
                let mut c = Conn::new(format!("request_like_body/{k}x{piece}/{what}{suffix}"));
                if keepalive {
                    c.send(&get("/first"), &[], Sys::Send);
                }
                c
            };

            let r = req("POST", "/body", "HTTP/1.1", &[host()], Body::Cl(all.clone()));
            let head_cuts: Vec<usize> =
                std::iter::once(r.head_end).chain(cuts.iter().map(|c| r.head_end + c)).collect();
            let mut conn = new("cl-pieces");
            conn.send(&r, &head_cuts, sys_of(k));
            conn.send(&get("/after"), &[], Sys::Send);
            conns.push(conn);

            // Head and first piece together, then the others.
            let mut conn = new("cl-head+piece");
            conn.send(&r, &head_cuts[1..], Sys::Send);
            conn.send(&get("/after"), &[], Sys::Send);
            conns.push(conn);

            // Chunked, every chunk's data (a request) written on its own.
            let r = req("POST", "/chunked", "HTTP/1.1", &[host()], Body::Chunked(ps.clone()));
            let mut ccuts = vec![r.head_end];
            for (i, &d) in r.chunk_data.iter().enumerate() {
                ccuts.push(d);
                ccuts.push(d + ps[i].len());
            }
            let mut conn = new("chunked-data-pieces");
            conn.send(&r, &ccuts, Sys::Send);
            conn.send(&get("/after"), &[], Sys::Send);
            conns.push(conn);

            // Each chunk (size line, data, CRLF) in one write.
            let mut conn = new("chunked-whole-chunks");
            let whole: Vec<usize> =
                std::iter::once(r.head_end).chain(r.chunk_data.iter().zip(&ps).map(|(d, p)| d + p.len() + 2)).collect();
            conn.send(&r, &whole, Sys::Write);
            conns.push(conn);

            // Expect: 100-continue, then the pieces.
            let tp = if k % 2 == 0 { vec![header("traceparent", rng.app_traceparent())] } else { vec![] };
            let mut hs = vec![host(), header("Expect", "100-continue")];
            hs.extend(tp);
            let r = req("POST", "/expect", "HTTP/1.1", &hs, Body::Cl(all.clone()));
            let mut conn = new("expect-pieces");
            conn.send_expect(&r, &cuts, Sys::Send);
            conn.send(&get("/after"), &[], Sys::Send);
            conns.push(conn);
        }
    }
}

/// Bodies of 100 KB to 1 MB, Content-Length and chunked, in one write, in
/// 64 KiB pieces, in 4097-byte pieces and in random pieces.
fn case_large_bodies(rng: &mut Rng, conns: &mut Vec<Conn>, slow: bool, prefix: &str) {
    for size in [100_000, 300_000, 1_048_576] {
        let data = body(rng, size, true);
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < size {
            let n = rng.range(1, 65536).min(size - at);
            chunks.push(data[at..at + n].to_vec());
            at += n;
        }
        let path = if slow { "/slow/large" } else { "/large" };
        for (enc, r) in [
            ("cl", req("POST", path, "HTTP/1.1", &[host()], Body::Cl(data.clone()))),
            ("chunked", req("PUT", path, "HTTP/1.1", &[host()], Body::Chunked(chunks))),
        ] {
            let len = r.bytes.len();
            let mut random = Vec::new();
            let mut c = 0;
            while c < len {
                c += rng.range(1, 50_000);
                random.push(c);
            }
            let schemes: Vec<(&str, Vec<usize>)> = vec![
                ("one-write", vec![]),
                ("head-then-body", vec![r.head_end]),
                ("64k-pieces", every(len, 65536)),
                ("4097-pieces", every(len, 4097)),
                ("random-pieces", random),
            ];
            for (i, (scheme, cuts)) in schemes.into_iter().enumerate() {
                let mut conn = Conn::new(format!("{prefix}large_body/{size}/{enc}/{scheme}"));
                conn.send(&r, &cuts, sys_of(i));
                conn.send(&get("/after"), &[], Sys::Send);
                conns.push(conn);
            }
        }
    }
}

/// The server answers 401 as soon as the header block is in; the client
/// reads that and keeps streaming its body (pieces that look like requests).
fn case_early_responses(rng: &mut Rng, conns: &mut Vec<Conn>, prefix: &str) {
    for variant in ["head-alone", "head+piece", "split-head", "chunked", "tp", "keepalive"] {
        let ps: Vec<Vec<u8>> = (0..10).map(|_| request_like_piece(rng, 30_000)).collect();
        let mut hs = vec![host()];
        if variant == "tp" {
            hs.push(header("traceparent", rng.app_traceparent()));
        }
        let r = if variant == "chunked" {
            req("POST", "/early401", "HTTP/1.1", &hs, Body::Chunked(ps.clone()))
        } else {
            req("POST", "/early401/upload", "HTTP/1.1", &hs, Body::Cl(ps.concat()))
        };
        let mut conn = Conn::new(format!("{prefix}early_401/{variant}"));
        if variant == "keepalive" {
            conn.send(&get("/first"), &[], Sys::Send);
        }
        let start = conn.len;
        conn.mark(&r, start);
        let first = if variant == "head+piece" { r.head_end + ps[0].len() } else { r.head_end };
        if variant == "split-head" {
            conn.write(Sys::Send, &r.bytes[..r.line_end]);
            conn.write(Sys::Send, &r.bytes[r.line_end..first]);
        } else {
            conn.write(Sys::Send, &r.bytes[..first]);
        }
        conn.read(1, 401);
        let rest = &r.bytes[first..];
        let cuts: Vec<usize> = if variant == "chunked" {
            r.chunk_data.iter().map(|d| d - first).collect()
        } else {
            every(rest.len(), 30_000)
        };
        for (i, p) in pieces(rest, &cuts).into_iter().enumerate() {
            conn.write(sys_of(i), &p);
        }
        conns.push(conn);
    }
}

/// Small requests of every kind, for pipelines.
fn small_request(rng: &mut Rng, i: usize) -> Req {
    match i % 5 {
        0 | 3 => get(&format!("/p/{i}")),
        1 => {
            let n = rng.range(0, 300);
            req("POST", &format!("/p/{i}"), "HTTP/1.1", &[host()], Body::Cl(body(rng, n, true)))
        }
        2 => req(
            "PUT",
            &format!("/p/{i}"),
            "HTTP/1.1",
            &[host(), header("X-N", i.to_string())],
            Body::Chunked(vec![body(rng, 10, false), FAKE_REQUESTS[0].to_vec()]),
        ),
        _ => {
            let n = rng.range(1, 200);
            req("DELETE", &format!("/p/{i}?q={}", filler(n, i)), "HTTP/1.1", &[host()], Body::None)
        }
    }
}

/// Several requests written back to back: in one write, one write each,
/// and cut at random points.
fn case_pipelines(rng: &mut Rng, conns: &mut Vec<Conn>, prefix: &str) {
    for n in [2, 3, 10, 50, 200] {
        let reqs: Vec<Req> = (0..n).map(|i| small_request(rng, i)).collect();
        let total: usize = reqs.iter().map(|r| r.bytes.len()).sum();
        let mut per_request = Vec::new();
        let mut at = 0;
        for r in &reqs {
            at += r.bytes.len();
            per_request.push(at);
        }
        let mut random = Vec::new();
        let mut c = 0;
        while c < total {
            c += rng.range(1, 700);
            random.push(c);
        }
        for (scheme, cuts) in [("one-write", vec![]), ("write-each", per_request), ("random-cuts", random)] {
            for keepalive in [false, true] {
                let mut conn =
                    Conn::new(format!("{prefix}pipeline/{n}/{scheme}{}", if keepalive { "/keepalive" } else { "" }));
                if keepalive {
                    conn.send(&get("/first"), &[], Sys::Send);
                }
                conn.pipeline(&reqs, &cuts, Sys::Send);
                conn.send(&get("/after"), &[], Sys::Send);
                conns.push(conn);
            }
        }
    }
}

/// `Expect: 100-continue` with and without the application's traceparent,
/// Content-Length and chunked.
fn case_expect(rng: &mut Rng, conns: &mut Vec<Conn>) {
    for (i, size) in [10, 5000, 70_000].into_iter().enumerate() {
        for tp in [false, true] {
            for chunked in [false, true] {
                let mut hs = vec![host(), header("Expect", "100-continue")];
                if tp {
                    hs.push(header("traceparent", rng.app_traceparent()));
                }
                let data = body(rng, size, true);
                let b = if chunked {
                    Body::Chunked(vec![data[..size / 2].to_vec(), data[size / 2..].to_vec()])
                } else {
                    Body::Cl(data)
                };
                let r = req("POST", "/expect", "HTTP/1.1", &hs, b);
                let mut conn = Conn::new(format!(
                    "expect/{size}/{}{}",
                    if chunked { "chunked" } else { "cl" },
                    if tp { "/tp" } else { "" }
                ));
                let body_len = r.bytes.len() - r.head_end;
                conn.send_expect(&r, &every(body_len, 4096), sys_of(i));
                conn.send(&get("/after"), &[], Sys::Send);
                conns.push(conn);
            }
        }
    }
}

/// Many small keep-alive requests, one write and one answer each.
fn case_bulk_pingpong(rng: &mut Rng, conns: &mut Vec<Conn>, prefix: &str, n_conns: usize, per_conn: usize) {
    for c in 0..n_conns {
        let mut conn = Conn::new(format!("{prefix}bulk/pingpong"));
        for i in 0..per_conn {
            let r = if i % 4 == 3 {
                let n = rng.range(1, 64);
                req("POST", &format!("/bulk/{c}/{i}"), "HTTP/1.1", &[host()], Body::Cl(body(rng, n, i % 8 == 3)))
            } else {
                get(&format!("/bulk/{c}/{i}"))
            };
            conn.send(&r, &[], sys_of(i / 4));
        }
        conns.push(conn);
    }
}

/// Many small keep-alive requests, pipelined in batches.
fn case_bulk_pipelined(
    rng: &mut Rng,
    conns: &mut Vec<Conn>,
    prefix: &str,
    n_conns: usize,
    batches: usize,
    batch: usize,
) {
    for c in 0..n_conns {
        let mut conn = Conn::new(format!("{prefix}bulk/pipelined"));
        for b in 0..batches {
            let reqs: Vec<Req> = (0..batch).map(|i| small_request(rng, c + b + i)).collect();
            // Batches alternate between one write and a few random cuts.
            let cuts = if b % 2 == 0 { vec![] } else { (0..3).map(|_| rng.range(1, batch * 40)).collect() };
            conn.pipeline(&reqs, &cuts, Sys::Send);
        }
        conns.push(conn);
    }
}

/// Heads far bigger than a 4 KiB send buffer (request lines up to 64 KiB,
/// a 60 KiB header block): the non-blocking client's short writes land
/// inside the header block.
fn case_big_heads(rng: &mut Rng, conns: &mut Vec<Conn>) {
    for len in [16_384, 32_771, 65_536, 65_539] {
        let r = req("GET", &target_for("GET", "HTTP/1.1", len, "/bighead"), "HTTP/1.1", &[host()], Body::None);
        let mut conn = Conn::new(format!("nb/big_head/reqline-{len}"));
        conn.send(&r, &[], Sys::Send);
        conn.send(&get("/after"), &[], Sys::Send);
        conns.push(conn);
    }
    for tp in [false, true] {
        let mut hs = vec![host(), header("Cookie", filler(60_000, 1))];
        if tp {
            hs.push(header("traceparent", rng.app_traceparent()));
        }
        let r = req("POST", "/slow/bighead", "HTTP/1.1", &hs, Body::Cl(body(rng, 200_000, true)));
        let mut conn = Conn::new(format!("nb/big_head/60k-headers{}", if tp { "/tp" } else { "" }));
        conn.send(&r, &[], Sys::Send);
        conns.push(conn);
    }
}

/// The blocking client's plan.
fn blocking_plan(rng: &mut Rng) -> Vec<Conn> {
    let mut conns = Vec::new();
    case_plain(&mut conns);
    case_request_line_lengths(rng, &mut conns);
    case_head_lengths(rng, &mut conns);
    case_split_heads(rng, &mut conns);
    case_request_like_bodies(rng, &mut conns);
    case_large_bodies(rng, &mut conns, false, "");
    case_early_responses(rng, &mut conns, "");
    case_pipelines(rng, &mut conns, "");
    case_expect(rng, &mut conns);
    case_bulk_pingpong(rng, &mut conns, "", 80, 250);
    case_bulk_pipelined(rng, &mut conns, "", 60, 10, 100);
    conns
}

/// The non-blocking client's plan (4 KiB send buffer; `/slow` bodies are
/// read slowly by the server).
fn nonblocking_plan(rng: &mut Rng) -> Vec<Conn> {
    let mut conns = Vec::new();
    case_big_heads(rng, &mut conns);
    case_large_bodies(rng, &mut conns, true, "nb/");
    case_early_responses(rng, &mut conns, "nb/");
    case_pipelines(rng, &mut conns, "nb/");
    let mut all = Vec::new();
    case_split_heads(rng, &mut all);
    case_request_like_bodies(rng, &mut all);
    // Every third of those is enough here.
    conns.extend(all.into_iter().step_by(3).map(|mut c| {
        c.case = format!("nb/{}", c.case);
        c
    }));
    case_bulk_pingpong(rng, &mut conns, "nb/", 40, 250);
    case_bulk_pipelined(rng, &mut conns, "nb/", 20, 10, 100);
    conns
}

/// Writes a plan in raw_client.py's format.
fn write_plan(path: &Path, conns: &[Conn]) {
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

// ---------------------------------------------------------------------------
// The recording server
// ---------------------------------------------------------------------------

/// server.py: prints `port N`, records each connection into its dir.
struct RecServer {
    proc: Proc,
    port: u16,
    dir: PathBuf,
    name: &'static str,
}

impl RecServer {
    #[track_caller]
    fn start(name: &'static str, work: &Path) -> RecServer {
        let dir = work.join(format!("rec-{name}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let out_path = work.join(format!("server-{name}.out"));
        let err_path = work.join(format!("server-{name}.err"));
        let mut cmd = Command::new(python());
        cmd.arg("-u").arg(fixture("integrity/server.py")).arg(&dir);
        let mut proc = spawn_logged(name, cmd, &out_path, &err_path);
        let mut port = None;
        let mut exited = None;
        poll_until(START_TIMEOUT, || {
            port = fs::read_to_string(&out_path).ok().and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("port ").and_then(|p| p.trim().parse::<u16>().ok()))
            });
            if port.is_some() {
                return true;
            }
            exited = proc.try_wait();
            exited.is_some()
        });
        match (port, exited) {
            (Some(port), _) => RecServer { proc, port, dir, name },
            (None, Some(st)) => panic!("recording server {name} exited with {st}; stderr:\n{}", tail(&err_path, 30)),
            (None, None) => panic!(
                "recording server {name} printed no port within {START_TIMEOUT:?}; stderr:\n{}",
                tail(&err_path, 30)
            ),
        }
    }

    /// Waits until every recorded connection was closed by its peer.
    #[track_caller]
    fn recordings(&mut self) -> Vec<Recording> {
        let open = |dir: &Path| -> Vec<String> {
            fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.ends_with(".part"))
                        .collect()
                })
                .unwrap_or_default()
        };
        let done = poll_until(RECORDING_TIMEOUT, || open(&self.dir).is_empty());
        assert!(
            done,
            "{}: connections still open {RECORDING_TIMEOUT:?} after the client finished: {:?}",
            self.name,
            open(&self.dir)
        );
        assert!(self.proc.try_wait().is_none(), "recording server {} died", self.name);
        let mut recs: Vec<Recording> = fs::read_dir(&self.dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.dir.display()))
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let stem = name.strip_suffix(".bin")?;
                let (seq, port) = stem.split_once('-')?;
                Some(Recording { seq: seq.parse().ok()?, port: port.parse().ok()?, path: e.path() })
            })
            .collect();
        recs.sort_by_key(|r| r.seq);
        recs
    }
}

struct Recording {
    seq: u64,
    port: u16,
    path: PathBuf,
}

impl Recording {
    fn bytes(&self) -> Vec<u8> {
        fs::read(&self.path).unwrap_or_else(|e| panic!("reading {}: {e}", self.path.display()))
    }
}

#[track_caller]
fn spawn_logged(name: &str, mut cmd: Command, out: &Path, err: &Path) -> Proc {
    let o = fs::File::create(out).unwrap_or_else(|e| panic!("creating {}: {e}", out.display()));
    let e = fs::File::create(err).unwrap_or_else(|e| panic!("creating {}: {e}", err.display()));
    cmd.stdin(Stdio::null()).stdout(o).stderr(e);
    Proc::spawn(name, &mut cmd)
}

// ---------------------------------------------------------------------------
// Checking
// ---------------------------------------------------------------------------

/// What one client's traffic came to.
#[derive(Default)]
struct Tally {
    requests: u64,
    connections: u64,
    injected: u64,
    /// Connections whose close waited out the client's timeout although
    /// every byte had arrived (counted, not failed, where the agent keeps
    /// sockets in its sockmap: see `KEEPS_SOCKETS`).
    close_stalls: u64,
    /// (family, message): the family groups failures of one kind of case.
    failures: Vec<(String, String)>,
}

impl Tally {
    fn fail(&mut self, family: impl Into<String>, msg: String) {
        self.failures.push((family.into(), msg));
    }
}

/// `traceparent: 00-<32 hex>-<16 hex>-<2 hex>\r\n` with non-zero ids, as
/// the kernel writes it.
fn is_injected_line(b: &[u8]) -> bool {
    if b.len() < LINE_LEN || !b.starts_with(b"traceparent: 00-") || &b[LINE_LEN - 2..LINE_LEN] != b"\r\n" {
        return false;
    }
    let v = &b[13..LINE_LEN - 2];
    let hex = |s: &[u8]| s.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    v.len() == 55
        && v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[3..35])
        && hex(&v[36..52])
        && hex(&v[53..55])
        && v[3..35].iter().any(|&c| c != b'0')
        && v[36..52].iter().any(|&c| c != b'0')
}

/// Bytes around `at`, escaped, with `|` at `at`.
fn snippet(b: &[u8], at: usize) -> String {
    let lo = at.saturating_sub(24);
    let hi = (at + 72).min(b.len());
    let mut s = String::from("\"");
    for (i, &c) in b[lo..hi].iter().enumerate() {
        if lo + i == at {
            s.push('|');
        }
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => {
                let _ = write!(s, "\\x{c:02x}");
            }
        }
    }
    if at >= hi {
        s.push('|');
    }
    s.push('"');
    if hi < b.len() {
        s.push_str("...");
    }
    s
}

/// The raw client's log line for one connection.
struct ConnLog {
    port: u16,
    /// Per write: its length, then every call's return value.
    sends: Vec<Vec<i64>>,
    error: Option<String>,
}

#[track_caller]
fn read_logs(path: &Path) -> HashMap<usize, ConnLog> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: bad line {l:?}: {e}", path.display()));
            let id = v["id"].as_u64().unwrap_or_else(|| panic!("no id in {l}")) as usize;
            let sends = v["sends"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| {
                            s.as_array().map(|x| x.iter().filter_map(|n| n.as_i64()).collect()).unwrap_or_default()
                        })
                        .collect()
                })
                .unwrap_or_default();
            let log = ConnLog {
                port: v["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
                sends,
                error: v["error"].as_str().map(str::to_owned),
            };
            (id, log)
        })
        .collect()
}

/// A raw case's family: its name up to the second `/` (after `nb/`).
fn family_of(case: &str) -> String {
    let (nb, rest) = case.strip_prefix("nb/").map_or(("", case), |r| ("nb/", r));
    let mut parts = rest.splitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => format!("{nb}{a}/{b}"),
        (Some(a), None) => format!("{nb}{a}"),
        _ => case.to_owned(),
    }
}

/// `WAGGLE_INTEGRITY_CASES`: run only the raw cases and high-level clients
/// whose name contains it (see the module doc).
fn case_filter() -> Option<String> {
    std::env::var("WAGGLE_INTEGRITY_CASES").ok().filter(|f| !f.is_empty())
}

/// The agent keeps client sockets in its sockmap for their lifetime (it
/// says so at start-up): every plain request must be injected into, not
/// only the first of each connection.
static EVERY_REQUEST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// The agent runs with `--propagation unsafe-keepalive`: client sockets stay
/// in the kernel's sockmap, whose tcp_bpf receive path was seen to miss a
/// peer's FIN after an early response (the reason that mode is opt-in and
/// named unsafe). A close that times out is then reported as a figure; the
/// bytes are still checked.
static KEEPS_SOCKETS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The control run: no agent (see the module doc).
fn without_agent() -> bool {
    std::env::var_os("WAGGLE_INTEGRITY_WITHOUT_AGENT").is_some()
}

/// Checks a raw client's connections against their recordings.
fn check_raw(client: &str, conns: &[Conn], logs: &HashMap<usize, ConnLog>, recs: Vec<Recording>, tally: &mut Tally) {
    // The client runs its connections one after the other, so the
    // recordings of one local port are in the order of its connections.
    let mut by_port: HashMap<u16, std::collections::VecDeque<Recording>> = HashMap::new();
    for r in recs {
        by_port.entry(r.port).or_default().push_back(r);
    }
    for (id, conn) in conns.iter().enumerate() {
        let what = format!("[{client}] {} (connection {id})", conn.case);
        let fam = family_of(&conn.case);
        let Some(log) = logs.get(&id) else {
            tally.fail(fam.as_str(), format!("{what}: the client never logged this connection"));
            continue;
        };
        if let Some(e) = log.error.as_deref().filter(|e| {
            let stall = e.starts_with("closing: timed out") && KEEPS_SOCKETS.load(std::sync::atomic::Ordering::Relaxed);
            tally.close_stalls += u64::from(stall);
            !stall
        }) {
            tally.fail(fam.as_str(), format!("{what}, local port {}: client error: {e}", log.port));
        }
        let Some(rec) = by_port.get_mut(&log.port).and_then(|q| q.pop_front()) else {
            if log.error.is_none() {
                tally.fail(fam.as_str(), format!("{what}: no recording for local port {}", log.port));
            }
            continue;
        };
        tally.connections += 1;
        // What the OS accepted, from the plan and the return values.
        let mut expected = Vec::with_capacity(conn.len);
        let mut writes = Vec::new();
        let mut w = 0;
        for op in &conn.ops {
            let Op::Write(sys, ps) = op else { continue };
            let len: usize = ps.iter().map(Vec::len).sum();
            let Some(rets) = log.sends.get(w) else { break };
            w += 1;
            let sum: i64 = rets.iter().skip(1).sum();
            if rets.first() != Some(&(len as i64)) || sum != len as i64 {
                tally.fail(
                    fam.as_str(),
                    format!(
                        "{what}: write {w} ({sys:?} of {len} bytes): the calls returned {:?}, adding up to {sum}",
                        &rets[1.min(rets.len())..]
                    ),
                );
            }
            let accepted = usize::try_from(sum.max(0)).unwrap_or(0).min(len);
            writes.push((expected.len(), accepted));
            let all = ps.concat();
            expected.extend_from_slice(&all[..accepted]);
        }
        let recorded = rec.bytes();
        match compare(conn, &expected, &recorded) {
            Ok((checked, injected, missing)) => {
                tally.requests += checked;
                tally.injected += injected;
                for m in missing.into_iter().filter(|_| !without_agent()) {
                    let mark = &conn.marks[m];
                    tally.fail(fam.as_str(), format!(
                        "{what}: request {} of {} (a plain single-write request, at byte {}) arrived without the inserted traceparent line: {}",
                        m + 1,
                        conn.marks.len(),
                        mark.start,
                        snippet(&recorded, mark.line_end.min(recorded.len()))
                    ));
                }
            }
            Err((e, r)) => {
                let m = conn.marks.iter().rposition(|m| m.start <= e).unwrap_or(0);
                let region = conn.marks.get(m).map_or("stream".to_owned(), |mk| {
                    let part = if e < mk.line_end {
                        "request line"
                    } else if e < mk.head_end {
                        "header block"
                    } else {
                        "body"
                    };
                    format!("request {} of {}, {part}, byte {} of the request", m + 1, conn.marks.len(), e - mk.start)
                });
                let write = writes.iter().position(|&(s, n)| e >= s && e < s + n.max(1)).map_or(String::new(), |i| {
                    format!(", write {} of {} (byte {} of it)", i + 1, writes.len(), e - writes[i].0)
                });
                tally.fail(fam.as_str(), format!(
                    "{what}, local port {}: first difference at byte {e} of what the client wrote ({region}{write}), byte {r} of what arrived ({} bytes written, {} arrived, {})\n    wrote:   {}\n    arrived: {}",
                    log.port,
                    expected.len(),
                    recorded.len(),
                    rec.path.display(),
                    snippet(&expected, e),
                    snippet(&recorded, r)
                ));
            }
        }
    }
}

/// Compares what arrived with what was written, allowing one inserted line
/// right after the request line of each request without its own
/// traceparent. Ok: (requests, inserted lines, indexes of plain requests
/// without an inserted line); Err: first differing offsets (written,
/// arrived).
fn compare(conn: &Conn, expected: &[u8], recorded: &[u8]) -> Result<(u64, u64, Vec<usize>), (usize, usize)> {
    let (mut i, mut j) = (0, 0);
    let mut injected = 0;
    let mut missing = Vec::new();
    let mut checked = 0;
    let same = |i: usize, j: usize, n: usize| -> Result<(), (usize, usize)> {
        let a = &expected[i..i + n];
        let b = &recorded[j..(j + n).min(recorded.len())];
        match a.iter().zip(b).position(|(x, y)| x != y) {
            Some(k) => Err((i + k, j + k)),
            None if b.len() < n => Err((i + b.len(), j + b.len())),
            None => Ok(()),
        }
    };
    for (k, m) in conn.marks.iter().enumerate() {
        if m.line_end > expected.len() {
            break;
        }
        checked += 1;
        if m.app_tp {
            continue;
        }
        let n = m.line_end - i;
        same(i, j, n)?;
        i += n;
        j += n;
        if is_injected_line(&recorded[j..]) {
            injected += 1;
            j += LINE_LEN;
        } else if m.must_inject && (k == 0 || EVERY_REQUEST.load(std::sync::atomic::Ordering::Relaxed)) {
            missing.push(k);
        }
    }
    same(i, j, expected.len() - i)?;
    j += expected.len() - i;
    if j < recorded.len() {
        return Err((expected.len(), j));
    }
    Ok((checked, injected, missing))
}

// ---------------------------------------------------------------------------
// High-level clients
// ---------------------------------------------------------------------------

/// One request of a high-level client's plan.
struct HlReq {
    /// The kind of request, for grouping failures.
    label: &'static str,
    method: &'static str,
    path: String,
    body: Option<Vec<u8>>,
    chunked: bool,
    expect: bool,
    headers: Vec<(String, String)>,
    /// The traceparent value the application set (must arrive, alone).
    app_tp: Option<String>,
}

/// A request of `method` (path filled in by `hl_plan`).
fn hl(
    label: &'static str,
    method: &'static str,
    body: Option<Vec<u8>>,
    flags: &str,
    headers: Vec<(String, String)>,
) -> HlReq {
    let app_tp = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("traceparent")).map(|(_, v)| v.clone());
    HlReq {
        label,
        method,
        path: String::new(),
        body,
        chunked: flags.contains('c'),
        expect: flags.contains('e'),
        headers,
        app_tp,
    }
}

/// What the high-level client `client` sends (paths `/hl/<client>/<n>...`,
/// unique). `nginx`: the application's traceparent travels to nginx as
/// `X-App-Traceparent`, which nginx's configuration turns into
/// `traceparent` (it drops the incoming one, which the kernel may have
/// inserted into curl's request).
fn hl_plan(rng: &mut Rng, client: &str, nginx: bool) -> Vec<HlReq> {
    let mut plan = Vec::new();
    let mut long_lines = Vec::new();
    for _ in 0..25 {
        plan.push(hl("GET", "GET", None, "", vec![]));
    }
    for i in 0..5 {
        let n = rng.range(1, 2000);
        plan.push(hl("POST", "POST", Some(body(rng, n, i % 2 == 0)), "", vec![]));
    }
    plan.push(hl("PUT", "PUT", Some(body(rng, 777, true)), "", vec![]));
    plan.push(hl("DELETE", "DELETE", None, "", vec![]));
    for n in [200, 20_000] {
        plan.push(hl("request-like body", "POST", Some(request_like_piece(rng, n)), "", vec![]));
    }
    for n in [300_000, 1_048_576] {
        plan.push(hl("large body", "POST", Some(body(rng, n, true)), "", vec![]));
    }
    plan.push(hl("chunked", "POST", Some(request_like_piece(rng, 5000)), "c", vec![]));
    plan.push(hl("chunked", "PUT", Some(body(rng, 200_000, true)), "c", vec![]));
    plan.push(hl("expect", "POST", Some(request_like_piece(rng, 50_000)), "e", vec![]));
    plan.push(hl("own traceparent", "GET", None, "", vec![header("traceparent", rng.app_traceparent())]));
    plan.push(hl(
        "own traceparent",
        "POST",
        Some(request_like_piece(rng, 3000)),
        "",
        vec![header("traceparent", rng.app_traceparent())],
    ));
    plan.push(hl("own traceparent", "GET", None, "", vec![header("TraceParent", rng.app_traceparent())]));
    plan.push(hl(
        "cookie + own traceparent",
        "GET",
        None,
        "",
        vec![header("Cookie", format!("s={}", filler(4600, 5))), header("traceparent", rng.app_traceparent())],
    ));
    plan.push(hl("cookie", "GET", None, "", vec![header("Cookie", format!("s={}", filler(4600, 6)))]));
    plan.push(hl("4 KB header", "GET", None, "", vec![header("X-Fill", filler(4000, 7))]));
    for len in [4093, 4094, 4095, 4096, 4097, 4098, 8190, 8191, 8192, 8193, 8194] {
        long_lines.push((plan.len(), len));
        plan.push(hl("long request line", "GET", None, "", vec![]));
    }
    for _ in 0..20 {
        plan.push(hl("GET", "GET", None, "", vec![]));
    }
    for (i, r) in plan.iter_mut().enumerate() {
        let prefix = format!("/hl/{client}/{i}");
        r.path = match long_lines.iter().find(|(at, _)| *at == i) {
            Some(&(_, len)) => target_for(r.method, "HTTP/1.1", len, &prefix),
            None => prefix,
        };
        if nginx {
            for h in &mut r.headers {
                if h.0.eq_ignore_ascii_case("traceparent") {
                    h.0 = "X-App-Traceparent".to_owned();
                }
            }
        }
    }
    plan
}

/// Writes the tab-separated plan the node, Java and Go clients read, and
/// the bodies next to it.
fn write_hl_plan(dir: &Path, plan: &[HlReq]) -> PathBuf {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let mut text = String::new();
    for (i, r) in plan.iter().enumerate() {
        let body = match &r.body {
            Some(b) => {
                let name = format!("body-{i}.bin");
                fs::write(dir.join(&name), b).unwrap_or_else(|e| panic!("writing a body: {e}"));
                name
            }
            None => "-".to_owned(),
        };
        let flags = format!("{}{}-", if r.chunked { "c" } else { "" }, if r.expect { "e" } else { "" });
        let _ = write!(text, "{}\t{}\t{body}\t{flags}", r.method, r.path);
        for (name, value) in &r.headers {
            let _ = write!(text, "\t{name}\t{value}");
        }
        text.push('\n');
    }
    let path = dir.join("plan.tsv");
    fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// curl arguments sending every request of `plan` to `base` over one
/// connection (`--next`), printing each status.
fn curl_args(plan: &[HlReq], plan_dir: &Path, base: &str) -> Vec<String> {
    let mut args = Vec::new();
    for (i, r) in plan.iter().enumerate() {
        if i > 0 {
            args.push("--next".to_owned());
        }
        args.extend(["-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}\\n"].map(str::to_owned));
        if r.method != "GET" {
            args.extend(["-X".to_owned(), r.method.to_owned()]);
        }
        if r.body.is_some() {
            args.extend(["--data-binary".to_owned(), format!("@{}", plan_dir.join(format!("body-{i}.bin")).display())]);
        }
        if r.chunked {
            args.extend(["-H".to_owned(), "Transfer-Encoding: chunked".to_owned()]);
        }
        if r.expect {
            args.extend(["-H".to_owned(), "Expect: 100-continue".to_owned()]);
        }
        for (name, value) in &r.headers {
            args.extend(["-H".to_owned(), format!("{name}: {value}")]);
        }
        args.push(format!("{base}{}", r.path));
    }
    args
}

/// A request as it arrived.
struct Parsed {
    offset: usize,
    method: String,
    target: String,
    /// (name, value, offset of the line).
    headers: Vec<(String, Vec<u8>, usize)>,
    body: Vec<u8>,
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn find(b: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    b.get(from..)?.windows(pat.len()).position(|w| w == pat).map(|p| p + from)
}

/// Parses `b` as a sequence of HTTP/1.1 requests, strictly. Err: (offset,
/// what is wrong).
fn parse_requests(b: &[u8]) -> (Vec<Parsed>, Option<(usize, String)>) {
    let mut out = Vec::new();
    let err = parse_into(b, &mut out).err();
    (out, err)
}

fn parse_into(b: &[u8], out: &mut Vec<Parsed>) -> Result<(), (usize, String)> {
    let mut at = 0;
    while at < b.len() {
        let start = at;
        let eol = find(b, at, b"\r\n").ok_or((at, "request line without CRLF".to_owned()))?;
        let line = &b[at..eol];
        let mut parts = line.split(|&c| c == b' ');
        let (Some(m), Some(t), Some(v), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err((at, "request line is not METHOD SP TARGET SP VERSION".to_owned()));
        };
        if m.is_empty()
            || !m.iter().all(u8::is_ascii_uppercase)
            || t.is_empty()
            || !t.iter().all(|&c| (0x21..0x7f).contains(&c))
            || v != b"HTTP/1.1"
        {
            return Err((at, "malformed request line".to_owned()));
        }
        at = eol + 2;
        let mut headers = Vec::new();
        loop {
            let eol = find(b, at, b"\r\n").ok_or((at, "header block without its end".to_owned()))?;
            if eol == at {
                at += 2;
                break;
            }
            let line = &b[at..eol];
            let colon = line.iter().position(|&c| c == b':').ok_or((at, "header line without ':'".to_owned()))?;
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            if name.is_empty() || !name.iter().all(|&c| is_tchar(c)) {
                return Err((at, "bad header name".to_owned()));
            }
            if let Some(k) = value.iter().position(|&c| (c < 0x20 && c != b'\t') || c == 0x7f) {
                return Err((at + colon + 1 + k, "control byte in a header value".to_owned()));
            }
            let trimmed: &[u8] = {
                let s = value.iter().position(|c| !b" \t".contains(c)).unwrap_or(value.len());
                let e = value.iter().rposition(|c| !b" \t".contains(c)).map_or(s, |e| e + 1);
                &value[s..e]
            };
            headers.push((String::from_utf8_lossy(name).to_ascii_lowercase(), trimmed.to_vec(), at));
            at = eol + 2;
        }
        let get = |n: &str| headers.iter().find(|h| h.0 == n).map(|h| h.1.clone());
        let mut body = Vec::new();
        if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
            loop {
                let eol = find(b, at, b"\r\n").ok_or((at, "chunk size without CRLF".to_owned()))?;
                let size_text = String::from_utf8_lossy(&b[at..eol]);
                let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| (at, format!("bad chunk size {size_text:?}")))?;
                at = eol + 2;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        let eol = find(b, at, b"\r\n").ok_or((at, "trailers without their end".to_owned()))?;
                        let empty = eol == at;
                        at = eol + 2;
                        if empty {
                            break;
                        }
                    }
                    break;
                }
                if at + size + 2 > b.len() || &b[at + size..at + size + 2] != b"\r\n" {
                    return Err((at, format!("chunk of {size} bytes not followed by CRLF")));
                }
                body.extend_from_slice(&b[at..at + size]);
                at += size + 2;
            }
        } else if let Some(cl) = get("content-length") {
            let n: usize = String::from_utf8_lossy(&cl).parse().map_err(|_| (at, "bad Content-Length".to_owned()))?;
            if at + n > b.len() {
                return Err((at, format!("body of {n} bytes cut off after {}", b.len() - at)));
            }
            body.extend_from_slice(&b[at..at + n]);
            at += n;
        }
        out.push(Parsed {
            offset: start,
            method: String::from_utf8_lossy(m).into_owned(),
            target: String::from_utf8_lossy(t).into_owned(),
            headers,
            body,
        });
    }
    Ok(())
}

/// Checks a high-level client's recordings against its plan.
fn check_hl(client: &str, plan: &[HlReq], recs: Vec<Recording>, tally: &mut Tally) {
    let by_path: HashMap<&str, usize> = plan.iter().enumerate().map(|(i, r)| (r.path.as_str(), i)).collect();
    let mut seen = vec![false; plan.len()];
    for rec in recs {
        let bytes = rec.bytes();
        if bytes.is_empty() {
            continue;
        }
        tally.connections += 1;
        let what = format!("[{client}] connection from port {} ({})", rec.port, rec.path.display());
        let (reqs, err) = parse_requests(&bytes);
        if let Some((at, why)) = err {
            let after = reqs.last().map_or("at the start".to_owned(), |p| {
                format!("after {} good requests, the last {}", reqs.len(), short(&p.target))
            });
            tally.fail(
                "unparsable stream",
                format!(
                    "{what}: not a sequence of HTTP/1.1 requests ({after}): {why} at byte {at}: {}",
                    snippet(&bytes, at)
                ),
            );
        }
        for p in reqs {
            let Some(&i) = by_path.get(p.target.as_str()) else {
                tally.fail(
                    "unexpected request",
                    format!("{what}: request at byte {} for {:?}, which the client never sent", p.offset, p.target),
                );
                continue;
            };
            let r = &plan[i];
            let case = format!(
                "[{client}] request {} {} ({} body bytes{}{})",
                r.method,
                short(&r.path),
                r.body.as_ref().map_or(0, Vec::len),
                if r.chunked { ", chunked" } else { "" },
                if r.app_tp.is_some() { ", own traceparent" } else { "" }
            );
            if std::mem::replace(&mut seen[i], true) {
                tally.fail(
                    r.label,
                    format!("{case}: arrived twice (again at byte {} of {})", p.offset, rec.path.display()),
                );
                continue;
            }
            tally.requests += 1;
            if p.method != r.method {
                tally.fail(r.label, format!("{case}: arrived as method {}", p.method));
            }
            let want = r.body.as_deref().unwrap_or(&[]);
            if p.body != want {
                let k = p.body.iter().zip(want).position(|(a, b)| a != b).unwrap_or(p.body.len().min(want.len()));
                tally.fail(
                    r.label,
                    format!(
                    "{case}: body differs from byte {k} ({} bytes arrived, {} sent)\n    sent:    {}\n    arrived: {}",
                    p.body.len(),
                    want.len(),
                    snippet(want, k),
                    snippet(&p.body, k)
                ),
                );
            }
            let tps: Vec<&(String, Vec<u8>, usize)> = p.headers.iter().filter(|h| h.0 == "traceparent").collect();
            match (&r.app_tp, tps.as_slice()) {
                (Some(v), [one]) if one.1 == v.as_bytes() => {}
                (Some(v), _) => tally.fail(
                    r.label,
                    format!(
                        "{case}: the application's traceparent {v} must arrive alone and unchanged; arrived: {:?}",
                        tps.iter().map(|h| String::from_utf8_lossy(&h.1).into_owned()).collect::<Vec<_>>()
                    ),
                ),
                (None, []) => {}
                (None, [one]) => {
                    let line_start = one.2;
                    let right_after = p.headers.first().is_some_and(|h| h.2 == line_start);
                    if right_after && is_injected_line(&bytes[line_start..]) {
                        tally.injected += 1;
                    } else {
                        tally.fail(r.label, format!(
                            "{case}: a traceparent the application did not set, not the kernel's line right after the request line: {}",
                            snippet(&bytes, line_start)
                        ));
                    }
                }
                (None, more) => tally.fail(
                    r.label,
                    format!(
                        "{case}: {} traceparent headers arrived: {:?}",
                        more.len(),
                        more.iter().map(|h| String::from_utf8_lossy(&h.1).into_owned()).collect::<Vec<_>>()
                    ),
                ),
            }
        }
    }
    let lost: Vec<String> = plan
        .iter()
        .zip(&seen)
        .filter(|(_, seen)| !**seen)
        .map(|(r, _)| format!("{} {} ({})", r.method, short(&r.path), r.label))
        .collect();
    if !lost.is_empty() {
        tally.fail(
            "never arrived",
            format!(
                "[{client}] {} of {} requests never arrived (or not intact enough to be told apart): {}",
                lost.len(),
                plan.len(),
                lost.join(", ")
            ),
        );
    }
}

/// A path cut short for messages.
fn short(p: &str) -> String {
    if p.len() > 60 {
        format!("{}...({} bytes)", &p[..40], p.len())
    } else {
        p.to_owned()
    }
}

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

/// The first of `candidates` that exists, else a panic naming the package.
#[track_caller]
fn tool(candidates: &[&str], package: &str) -> PathBuf {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "{} not found: install Debian package {package} (`cargo xtask test` installs the e2e dependencies)",
            candidates[0]
        )
    })
}

/// Compiles the Java client into `dir`.
#[track_caller]
fn build_java(javac: &Path, dir: &Path) {
    let mut cmd = Command::new(javac);
    cmd.arg("-d").arg(dir).arg(fixture("integrity/IntegrityClient.java"));
    let run = run_client("javac", &mut cmd, BUILD_TIMEOUT);
    assert!(run.status.success(), "javac failed: {}\n{}", run.stdout, run.stderr);
}

/// Builds the Go client into `dir/go_client`, offline, with caches in `dir`.
#[track_caller]
fn build_go(go: &Path, dir: &Path) -> PathBuf {
    let bin = dir.join("go_client");
    let mut cmd = Command::new(go);
    cmd.arg("build").arg("-o").arg(&bin).arg(fixture("integrity/go_client.go"));
    cmd.current_dir(dir)
        .env("HOME", dir)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GO111MODULE", "off");
    let run = run_client("go build", &mut cmd, BUILD_TIMEOUT);
    assert!(run.status.success(), "go build failed: {}\n{}", run.stdout, run.stderr);
    bin
}

/// nginx proxying everything to the recording server on `upstream` over
/// keep-alive HTTP/1.1 connections. The application's traceparent arrives
/// as X-App-Traceparent and leaves as traceparent; an incoming traceparent
/// (the kernel's, in curl's request) is dropped.
fn nginx_conf(dir: &Path, port: u16, upstream: u16) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 16m;
    client_body_buffer_size 2m;
    large_client_header_buffers 4 64k;
    upstream rec {{ server 127.0.0.1:{upstream}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://rec;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header traceparent $http_x_app_traceparent;
            proxy_set_header X-App-Traceparent "";
        }}
    }}
}}
"#
    )
}

// ---------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------

/// One client's run and its check.
struct Outcome {
    client: String,
    tally: Tally,
    note: String,
}

/// Plays `conns` with raw_client.py against a fresh recording server.
fn run_raw(client: &'static str, conns: &[Conn], work: &Path, extra: &[&str]) -> Outcome {
    let mut server = RecServer::start(client, work);
    let plan = work.join(format!("{client}.plan"));
    let log = work.join(format!("{client}.log"));
    write_plan(&plan, conns);
    let mut cmd = Command::new(python());
    cmd.arg("-u").arg(fixture("integrity/raw_client.py")).arg(&plan).arg(&log).arg(server.port.to_string()).args(extra);
    let run = run_client(client, &mut cmd, CLIENT_TIMEOUT);
    let mut tally = Tally::default();
    if !run.status.success() {
        tally.fail("client", format!("[{client}] exited with {}: {}", run.status, run.stderr));
    }
    let recs = server.recordings();
    if log.is_file() {
        check_raw(client, conns, &read_logs(&log), recs, &mut tally);
    }
    let note = run.stdout.lines().find(|l| l.starts_with("summary ")).unwrap_or("").to_owned();
    Outcome { client: client.to_owned(), tally, note }
}

/// Sends `plan` with a high-level client run by `run(port)` against a fresh
/// recording server.
fn run_hl(client: &'static str, work: &Path, plan: &[HlReq], run: impl FnOnce(u16) -> ClientRun) -> Outcome {
    let mut server = RecServer::start(client, work);
    let r = run(server.port);
    let mut tally = Tally::default();
    check_client_run(client, &r, plan, &mut tally);
    check_hl(client, plan, server.recordings(), &mut tally);
    Outcome { client: client.to_owned(), tally, note: String::new() }
}

/// The client got an answer 200 for every request (curl: one status line
/// per request; the others: `done ok=N failed=0`).
fn check_client_run(client: &str, run: &ClientRun, plan: &[HlReq], tally: &mut Tally) {
    let n = plan.len();
    let ok = if client == "curl" || client == "nginx" {
        let codes: Vec<&str> = run.stdout.lines().map(str::trim).collect();
        for (r, code) in plan.iter().zip(&codes) {
            if *code != "200" {
                tally.fail(r.label, format!("[{client}] request {} {} was answered {code}", r.method, short(&r.path)));
            }
        }
        codes.len() == n
    } else {
        run.stdout.lines().any(|l| l.trim() == format!("done ok={n} failed=0"))
    };
    if !run.status.success() || !ok {
        tally.fail(
            "client",
            format!(
                "[{client}] the client did not get {n} answers 200 (exit {}): stdout {:?}, stderr {}",
                run.status,
                short(&run.stdout.replace('\n', " ")),
                run.stderr
            ),
        );
    }
}

fn curl_run(plan: &[HlReq], plan_dir: &Path, base: &str) -> ClientRun {
    let mut cmd = Command::new("curl");
    cmd.args(curl_args(plan, plan_dir, base));
    run_client("curl", &mut cmd, CLIENT_TIMEOUT)
}

#[test]
#[ignore = "needs root, node, Java, Go, nginx and the agent binary: cargo xtask test runs it"]
fn integrity_injected_traffic_arrives_intact() {
    let _guard = e2e_setup("integrity_injected_traffic_arrives_intact");
    let started = Instant::now();
    let node = tool(&["/usr/bin/node", "/usr/local/bin/node", "/usr/bin/nodejs"], "nodejs");
    let javac = tool(&["/usr/bin/javac"], "default-jdk-headless");
    let java = tool(&["/usr/bin/java"], "default-jdk-headless");
    let go = tool(&["/usr/bin/go", "/usr/lib/go/bin/go"], "golang-go");
    tool(&[NGINX_BIN], "nginx-light");
    tool(&["/usr/bin/curl"], "curl");
    let work_dir = tempfile::Builder::new()
        .prefix("waggle-integrity-")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temp dir: {e}"));
    let work = work_dir.path();

    // Clients built and plans written before the agent starts.
    let java_dir = work.join("java");
    let go_dir = work.join("go");
    fs::create_dir_all(&go_dir).unwrap_or_else(|e| panic!("creating {}: {e}", go_dir.display()));
    let (go_bin, (mut blocking, mut nonblocking)) = std::thread::scope(|s| {
        let j = s.spawn(|| build_java(&javac, &java_dir));
        let g = s.spawn(|| build_go(&go, &go_dir));
        let mut rng = Rng(SEED);
        let plans = (blocking_plan(&mut rng), nonblocking_plan(&mut rng));
        j.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        (g.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), plans)
    });
    let mut rng = Rng(SEED ^ 0x5eed);
    let hl_clients = ["curl", "node", "java-urlconnection", "java-httpclient", "go", "nginx"];
    let filter = case_filter();
    if let Some(f) = &filter {
        blocking.retain(|c| c.case.contains(f.as_str()));
        nonblocking.retain(|c| c.case.contains(f.as_str()));
    }
    let hl: Vec<(&'static str, Vec<HlReq>, PathBuf)> = hl_clients
        .iter()
        .filter(|c| filter.as_ref().is_none_or(|f| c.contains(f.as_str())))
        .map(|&c| {
            let plan = hl_plan(&mut rng, c, c == "nginx");
            let file = write_hl_plan(&work.join(format!("plan-{c}")), &plan);
            (c, plan, file)
        })
        .collect();
    let prepared = started.elapsed();

    // Two passes: the agent as installed (on kernels that misreport
    // FIONREAD for sockmap sockets, only the first request of a connection
    // is injected into), then with every keep-alive request injected into,
    // so the injector meets every request boundary of every case.
    let passes: &[(&str, &[&str])] = if without_agent() {
        &[("no agent", &[])]
    } else {
        &[
            ("default", &["--print", "off"]),
            ("unsafe-keepalive", &["--print", "off", "--propagation", "unsafe-keepalive"]),
        ]
    };
    let mut outcomes: Vec<Outcome> = Vec::new();
    for (pass, args) in passes {
        // Each pass records into its own directory.
        let pass_dir = work.join(pass.replace(' ', "-"));
        fs::create_dir_all(&pass_dir).unwrap_or_else(|e| panic!("creating {}: {e}", pass_dir.display()));
        let work = pass_dir.as_path();
        wait_for_other_injectors();
        let agent = (!without_agent()).then(|| {
            let agent = Agent::start(args, &[]);
            let log = agent.stderr();
            assert!(log.contains("propagation on:"), "propagation is not on; agent stderr:\n{}", agent.stderr_tail(40));
            // Which requests the agent promises to inject into.
            let every = log.contains("sockets=\"for their lifetime\"");
            assert!(
                every || log.contains("sockets=\"until their first packet\""),
                "the agent did not say how long sockets stay in the sockmap:\n{}",
                agent.stderr_tail(40)
            );
            EVERY_REQUEST.store(every, std::sync::atomic::Ordering::Relaxed);
            KEEPS_SOCKETS.store(every, std::sync::atomic::Ordering::Relaxed);
            agent
        });
        let pass_outcomes: Vec<Outcome> = std::thread::scope(|s| {
            let b = (!blocking.is_empty()).then(|| s.spawn(|| run_raw("raw-blocking", &blocking, work, &[])));
            let nb = (!nonblocking.is_empty()).then(|| {
                s.spawn(|| run_raw("raw-nonblocking", &nonblocking, work, &["--nonblock", "--sndbuf", "4096"]))
            });
            let high = s.spawn(|| {
                let mut out = Vec::new();
                for (client, plan, file) in &hl {
                    let dir = file.parent().unwrap_or(work);
                    let o = match *client {
                        "curl" => {
                            run_hl(client, work, plan, |port| curl_run(plan, dir, &format!("http://127.0.0.1:{port}")))
                        }
                        "node" => run_hl(client, work, plan, |port| {
                            let mut cmd = Command::new(&node);
                            cmd.arg(fixture("integrity/node_client.js")).arg(port.to_string()).arg(file);
                            run_client("node", &mut cmd, CLIENT_TIMEOUT)
                        }),
                        "java-urlconnection" | "java-httpclient" => run_hl(client, work, plan, |port| {
                            let mut cmd = Command::new(&java);
                            cmd.arg("-cp")
                                .arg(&java_dir)
                                .arg("IntegrityClient")
                                .arg(client.trim_start_matches("java-"))
                                .arg(port.to_string())
                                .arg(file);
                            run_client(client, &mut cmd, CLIENT_TIMEOUT)
                        }),
                        "go" => run_hl(client, work, plan, |port| {
                            let mut cmd = Command::new(&go_bin);
                            cmd.arg(port.to_string()).arg(file);
                            run_client("go", &mut cmd, CLIENT_TIMEOUT)
                        }),
                        _ => run_hl(client, work, plan, |port| run_nginx(work, port, plan, dir)),
                    };
                    out.push(o);
                }
                out
            });
            let mut all: Vec<Outcome> = [b, nb]
                .into_iter()
                .flatten()
                .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect();
            all.extend(high.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
            all
        });
        if let Some(agent) = agent {
            agent.stop();
        }
        outcomes.extend(pass_outcomes.into_iter().map(|mut o| {
            o.client = format!("{pass}/{}", o.client);
            o
        }));
    }

    let mut total = Tally::default();
    let mut every_failure = String::new();
    for o in &outcomes {
        let t = &o.tally;
        println!(
            "integrity: {:<34} {:>7} requests {:>5} connections {:>6} inserted {:>3} differences {:>2} close stalls {}",
            o.client,
            t.requests,
            t.connections,
            t.injected,
            t.failures.len(),
            t.close_stalls,
            o.note
        );
        // Failures by family, most frequent first, and the first message of
        // each of the first few families.
        let mut families: Vec<(&str, usize)> = Vec::new();
        for (f, _) in &t.failures {
            match families.iter_mut().find(|(g, _)| g == f) {
                Some(e) => e.1 += 1,
                None => families.push((f, 1)),
            }
        }
        families.sort_by_key(|f| std::cmp::Reverse(f.1));
        if !families.is_empty() {
            let list: Vec<String> = families.iter().map(|(f, n)| format!("{f} x{n}")).collect();
            println!("    failing cases: {}", list.join(", "));
        }
        for (f, _) in families.iter().take(MAX_PER_CLIENT) {
            if let Some((_, m)) = t.failures.iter().find(|(g, _)| g == f) {
                println!("    DIFFERENCE {m}");
            }
        }
        for (f, m) in &t.failures {
            let _ = writeln!(every_failure, "[{f}] {m}");
        }
        total.requests += t.requests;
        total.connections += t.connections;
        total.injected += t.injected;
        total.failures.extend(t.failures.iter().cloned());
    }
    println!(
        "integrity: {} requests, {} connections, {} clients, {} traceparent lines inserted, {} differences ({:.0?}, {:.0?} of it preparing)",
        total.requests,
        total.connections,
        outcomes.len(),
        total.injected,
        total.failures.len(),
        started.elapsed(),
        prepared
    );
    if !total.failures.is_empty() {
        let file = work.join("failures.txt");
        fs::write(&file, &every_failure).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        let kept = work_dir.keep();
        println!(
            "integrity: every difference is listed in {}; plans, logs and recordings are kept in {} (delete it when done)",
            kept.join("failures.txt").display(),
            kept.display()
        );
    }
    assert!(
        !without_agent() || total.injected == 0,
        "{} lines were inserted although this run started no agent: another agent with propagation on is running",
        total.injected
    );
    assert!(total.failures.is_empty(), "{} differences (see above)", total.failures.len());
    if let Some(f) = filter {
        println!("integrity: only cases matching {f:?}: the totals were not checked");
        return;
    }
    let nb =
        outcomes.iter().find(|o| o.client.ends_with("raw-nonblocking")).map(|o| o.note.clone()).unwrap_or_default();
    let count = |key: &str| {
        nb.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    assert!(
        count("short=") + count("eagain=") > 0,
        "the non-blocking client never saw a short write or EAGAIN ({nb}): that case was not exercised"
    );
    assert!(total.requests >= MIN_REQUESTS, "only {} requests checked, want at least {MIN_REQUESTS}", total.requests);
}

/// nginx on a fresh port proxying to `upstream`, driven by curl; stopped
/// (with its upstream connections) before the recordings are read.
fn run_nginx(work: &Path, upstream: u16, plan: &[HlReq], plan_dir: &Path) -> ClientRun {
    let dir = work.join("nginx");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let mut last = String::new();
    for _ in 0..3 {
        let port = waggle_e2e::env::free_port();
        let conf = dir.join("nginx.conf");
        fs::write(&conf, nginx_conf(&dir, port, upstream))
            .unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        let mut cmd = Command::new(NGINX_BIN);
        cmd.arg("-p").arg(&dir).arg("-e").arg(dir.join("error.log")).arg("-c").arg(&conf);
        let mut proc = spawn_logged("nginx", cmd, &dir.join("out"), &dir.join("err"));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut exited = None;
        let ready = poll_until(START_TIMEOUT, || {
            if waggle_e2e::env::can_connect(addr) {
                return true;
            }
            exited = proc.try_wait();
            exited.is_some()
        });
        if ready && exited.is_none() {
            let run = curl_run(plan, plan_dir, &format!("http://127.0.0.1:{port}"));
            // Dropping the process kills nginx's group: its keep-alive
            // connections to the recording server close.
            drop(proc);
            return run;
        }
        last = format!("exited {exited:?}; error.log:\n{}", tail(&dir.join("error.log"), 20));
    }
    panic!("nginx did not start: {last}");
}
