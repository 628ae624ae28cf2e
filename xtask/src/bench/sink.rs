//! A minimal OTLP/HTTP receiver on loopback: accepts `POST /v1/traces`,
//! discards the body and answers 200 with an empty (valid) protobuf
//! response. Both waggle and the Python SDK export to it, so the two pay the
//! same export cost, while the receiver itself costs next to nothing (the
//! collector would run elsewhere in production).
//!
//! It counts requests, body bytes and the spans in each protobuf body
//! (bench/otlp.rs), so the harness can check that each tracer really
//! exported something (an overhead figure for a tracer that traced nothing
//! would be meaningless) and divide agent CPU by the spans it delivered.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use super::otlp;

/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;
/// Longest request head accepted (request line + headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bodies up to this size are kept to count their spans; larger ones are
/// only discarded (an exporter's batch is far smaller).
const MAX_COUNTED_BODY: u64 = 64 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct SinkStats {
    pub requests: AtomicU64,
    pub body_bytes: AtomicU64,
    pub spans: AtomicU64,
    /// Bodies whose spans could not be counted (compressed, JSON, too
    /// large, not protobuf).
    pub uncounted: AtomicU64,
    pub bad_requests: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCount {
    pub requests: u64,
    pub body_bytes: u64,
    pub spans: u64,
    pub uncounted: u64,
}

impl SinkCount {
    pub fn since(self, earlier: SinkCount) -> SinkCount {
        SinkCount {
            requests: self.requests.saturating_sub(earlier.requests),
            body_bytes: self.body_bytes.saturating_sub(earlier.body_bytes),
            spans: self.spans.saturating_sub(earlier.spans),
            uncounted: self.uncounted.saturating_sub(earlier.uncounted),
        }
    }
}

/// A read-only view of the sink's counters, for whoever must sample them
/// while the sink is borrowed elsewhere (the agent's measured window).
#[derive(Clone, Debug)]
pub struct SinkCounter(Arc<SinkStats>);

impl SinkCounter {
    pub fn count(&self) -> SinkCount {
        self.0.snapshot()
    }
}

impl SinkStats {
    fn snapshot(&self) -> SinkCount {
        SinkCount {
            requests: self.requests.load(Ordering::SeqCst),
            body_bytes: self.body_bytes.load(Ordering::SeqCst),
            spans: self.spans.load(Ordering::SeqCst),
            uncounted: self.uncounted.load(Ordering::SeqCst),
        }
    }
}

pub struct Sink {
    addr: SocketAddr,
    stats: Arc<SinkStats>,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Sink {
    pub fn start() -> Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the OTLP sink")?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(SinkStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let acceptor = {
            let (stats, stop) = (stats.clone(), stop.clone());
            thread::Builder::new()
                .name("otlp-sink".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                            let _ = conn.shutdown(Shutdown::Both);
                            continue;
                        }
                        active.fetch_add(1, Ordering::SeqCst);
                        let (stats, done) = (stats.clone(), active.clone());
                        let spawned = thread::Builder::new().name("otlp-sink-conn".into()).spawn(move || {
                            serve(conn, &stats);
                            done.fetch_sub(1, Ordering::SeqCst);
                        });
                        if spawned.is_err() {
                            // The closure never ran: give its slot back.
                            active.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                })
                .context("starting the OTLP sink thread")?
        };
        Ok(Sink { addr, stats, stop, acceptor: Some(acceptor) })
    }

    /// Base URL (`http://127.0.0.1:PORT`); exporters append `/v1/traces`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> SinkCount {
        self.stats.snapshot()
    }

    pub fn counter(&self) -> SinkCounter {
        SinkCounter(self.stats.clone())
    }

    pub fn bad_requests(&self) -> u64 {
        self.stats.bad_requests.load(Ordering::SeqCst)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Serves keep-alive requests on one connection until it closes or errs.
fn serve(conn: TcpStream, stats: &SinkStats) {
    let _ = conn.set_read_timeout(Some(IDLE_TIMEOUT));
    let Ok(mut writer) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    loop {
        match read_request(&mut reader) {
            Ok(Some(body)) => {
                stats.requests.fetch_add(1, Ordering::SeqCst);
                stats.body_bytes.fetch_add(body.len, Ordering::SeqCst);
                match body.spans {
                    Some(n) => stats.spans.fetch_add(n, Ordering::SeqCst),
                    None => stats.uncounted.fetch_add(1, Ordering::SeqCst),
                };
                let reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                if writer.write_all(reply).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(_) => {
                stats.bad_requests.fetch_add(1, Ordering::SeqCst);
                let _ = writer.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                return;
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
}

/// What one request delivered: its body size and, when the body was
/// uncompressed protobuf, the spans in it.
#[derive(Debug, PartialEq, Eq)]
struct Body {
    len: u64,
    spans: Option<u64>,
}

/// The body kept for counting, until it passes [`MAX_COUNTED_BODY`].
struct Kept {
    bytes: Vec<u8>,
    len: u64,
    countable: bool,
}

impl Kept {
    /// Appends the next `n` body bytes from `r`; false if fewer arrived.
    fn take(&mut self, r: &mut impl BufRead, n: u64) -> std::io::Result<bool> {
        self.len += n;
        self.countable &= self.len <= MAX_COUNTED_BODY;
        let copied = if self.countable {
            r.by_ref().take(n).read_to_end(&mut self.bytes)? as u64
        } else {
            self.bytes = Vec::new();
            std::io::copy(&mut r.by_ref().take(n), &mut std::io::sink())?
        };
        Ok(copied == n)
    }

    fn finish(self) -> Body {
        Body { len: self.len, spans: if self.countable { otlp::count_spans(&self.bytes) } else { None } }
    }
}

/// Reads one request and counts its body; None on a clean close before a
/// request started.
fn read_request(r: &mut impl BufRead) -> std::io::Result<Option<Body>> {
    let bad = |msg: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned());
    let mut framing = Framing::Length(0);
    // Only plain protobuf is counted: a gzip or JSON body is delivered
    // spans all the same, but of a number this sink does not decode.
    let mut countable = true;
    let mut head = 0usize;
    let mut line = String::new();
    let mut first = true;
    loop {
        line.clear();
        let n = r.by_ref().take((MAX_HEAD_BYTES - head) as u64 + 1).read_line(&mut line)?;
        if n == 0 {
            return if first { Ok(None) } else { Err(bad("connection closed inside a request head")) };
        }
        head += n;
        if head > MAX_HEAD_BYTES {
            return Err(bad("request head too long"));
        }
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if first {
            if !trimmed.contains(" HTTP/1.") {
                return Err(bad("not an HTTP/1.x request line"));
            }
            first = false;
            continue;
        }
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                framing = Framing::Length(value.parse().map_err(|_| bad("bad content-length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
                framing = Framing::Chunked;
            } else if name.eq_ignore_ascii_case("content-encoding") {
                countable &= value.eq_ignore_ascii_case("identity");
            } else if name.eq_ignore_ascii_case("content-type") {
                countable &= value.to_ascii_lowercase().contains("protobuf");
            }
        }
    }
    let mut body = Kept { bytes: Vec::new(), len: 0, countable };
    match framing {
        Framing::Length(n) => {
            if !body.take(r, n)? {
                return Err(bad("body shorter than content-length"));
            }
            Ok(Some(body.finish()))
        }
        Framing::Chunked => loop {
            line.clear();
            r.by_ref().take(1024).read_line(&mut line)?;
            let size_text = line.trim().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers until the empty line.
                loop {
                    line.clear();
                    if r.by_ref().take(MAX_HEAD_BYTES as u64).read_line(&mut line)? == 0 || line.trim().is_empty() {
                        return Ok(Some(body.finish()));
                    }
                }
            }
            if !body.take(r, size)? {
                return Err(bad("chunk shorter than announced"));
            }
            line.clear();
            r.by_ref().take(2).read_line(&mut line)?;
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(sink: &Sink, request: &[u8]) -> String {
        let mut conn = TcpStream::connect(sink.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(request).unwrap();
        let mut reply = vec![0u8; 256];
        let n = conn.read(&mut reply).unwrap();
        String::from_utf8_lossy(&reply[..n]).into_owned()
    }

    fn post(conn: &mut TcpStream, head: &str, body: &[u8]) {
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(body).unwrap();
        let mut reply = [0u8; 128];
        let n = conn.read(&mut reply).unwrap();
        assert!(String::from_utf8_lossy(&reply[..n]).starts_with("HTTP/1.1 200 OK"));
    }

    #[test]
    fn counts_posts_and_their_spans_with_length_and_chunked_bodies_on_one_connection() {
        let sink = Sink::start().unwrap();
        let mut conn = TcpStream::connect(sink.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let proto = "Content-Type: application/x-protobuf\r\n";
        let seven = otlp::tests::request(&[&[3, 4]]);
        post(&mut conn, &format!("POST /v1/traces HTTP/1.1\r\n{proto}Content-Length: {}\r\n\r\n", seven.len()), &seven);
        // The same message split over two chunks.
        let five = otlp::tests::request(&[&[2], &[3]]);
        let (a, b) = five.split_at(five.len() / 2);
        let mut chunked = format!("{:x}\r\n", a.len()).into_bytes();
        chunked.extend_from_slice(a);
        chunked.extend_from_slice(format!("\r\n{:x}\r\n", b.len()).as_bytes());
        chunked.extend_from_slice(b);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        post(&mut conn, &format!("POST /v1/traces HTTP/1.1\r\n{proto}Transfer-Encoding: chunked\r\n\r\n"), &chunked);
        // Delivered but not countable: gzip, and a body that is no protobuf.
        post(
            &mut conn,
            &format!("POST /v1/traces HTTP/1.1\r\n{proto}Content-Encoding: gzip\r\nContent-Length: 4\r\n\r\n"),
            b"\x1f\x8b\x08\x00",
        );
        post(&mut conn, "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", b"hello");
        let body_bytes = (seven.len() + five.len() + 4 + 5) as u64;
        assert_eq!(sink.count(), SinkCount { requests: 4, body_bytes, spans: 12, uncounted: 2 });
        assert_eq!(sink.counter().count(), sink.count());
        assert_eq!(sink.base_url(), format!("http://{}", sink.addr));
    }

    #[test]
    fn garbage_is_refused_and_counted() {
        let sink = Sink::start().unwrap();
        let reply = roundtrip(&sink, b"\x16\x03\x01 not http\r\n\r\n");
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        assert_eq!(sink.count().requests, 0);
        assert_eq!(sink.bad_requests(), 1);
    }

    #[test]
    fn count_differences() {
        let a = SinkCount { requests: 3, body_bytes: 100, spans: 40, uncounted: 0 };
        let b = SinkCount { requests: 5, body_bytes: 160, spans: 70, uncounted: 1 };
        assert_eq!(b.since(a), SinkCount { requests: 2, body_bytes: 60, spans: 30, uncounted: 1 });
        assert_eq!(a.since(b), SinkCount::default());
    }
}
