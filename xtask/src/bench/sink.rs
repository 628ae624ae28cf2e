//! A minimal OTLP/HTTP receiver on loopback: accepts `POST /v1/traces`,
//! discards the body and answers 200 with an empty (valid) protobuf
//! response. Both waggle and the Python SDK export to it, so the two pay the
//! same export cost, while the receiver itself costs next to nothing (the
//! collector would run elsewhere in production).
//!
//! It counts requests and body bytes so the harness can check that each
//! tracer really exported something: an overhead figure for a tracer that
//! traced nothing would be meaningless.
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

/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;
/// Longest request head accepted (request line + headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct SinkStats {
    pub requests: AtomicU64,
    pub body_bytes: AtomicU64,
    pub bad_requests: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCount {
    pub requests: u64,
    pub body_bytes: u64,
}

impl SinkCount {
    pub fn since(self, earlier: SinkCount) -> SinkCount {
        SinkCount {
            requests: self.requests.saturating_sub(earlier.requests),
            body_bytes: self.body_bytes.saturating_sub(earlier.body_bytes),
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
        SinkCount {
            requests: self.stats.requests.load(Ordering::SeqCst),
            body_bytes: self.stats.body_bytes.load(Ordering::SeqCst),
        }
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
                stats.body_bytes.fetch_add(body, Ordering::SeqCst);
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

/// Reads one request and discards its body; returns the body size, or None
/// on a clean close before a request started.
fn read_request(r: &mut impl BufRead) -> std::io::Result<Option<u64>> {
    let bad = |msg: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned());
    let mut framing = Framing::Length(0);
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
            }
        }
    }
    match framing {
        Framing::Length(n) => {
            let copied = std::io::copy(&mut r.by_ref().take(n), &mut std::io::sink())?;
            if copied != n {
                return Err(bad("body shorter than content-length"));
            }
            Ok(Some(n))
        }
        Framing::Chunked => {
            let mut total = 0u64;
            loop {
                line.clear();
                r.by_ref().take(1024).read_line(&mut line)?;
                let size_text = line.trim().split(';').next().unwrap_or("");
                let size = u64::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
                if size == 0 {
                    // Trailers until the empty line.
                    loop {
                        line.clear();
                        if r.by_ref().take(MAX_HEAD_BYTES as u64).read_line(&mut line)? == 0 || line.trim().is_empty() {
                            return Ok(Some(total));
                        }
                    }
                }
                let copied = std::io::copy(&mut r.by_ref().take(size), &mut std::io::sink())?;
                if copied != size {
                    return Err(bad("chunk shorter than announced"));
                }
                total += size;
                line.clear();
                r.by_ref().take(2).read_line(&mut line)?;
            }
        }
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

    #[test]
    fn counts_posts_with_length_and_chunked_bodies_on_one_connection() {
        let sink = Sink::start().unwrap();
        let mut conn = TcpStream::connect(sink.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        let mut reply = [0u8; 128];
        let n = conn.read(&mut reply).unwrap();
        assert!(String::from_utf8_lossy(&reply[..n]).starts_with("HTTP/1.1 200 OK"));
        conn.write_all(
            b"POST /v1/traces HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
        )
        .unwrap();
        let n = conn.read(&mut reply).unwrap();
        assert!(String::from_utf8_lossy(&reply[..n]).starts_with("HTTP/1.1 200 OK"));
        assert_eq!(sink.count(), SinkCount { requests: 2, body_bytes: 12 });
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
        let a = SinkCount { requests: 3, body_bytes: 100 };
        let b = SinkCount { requests: 5, body_bytes: 160 };
        assert_eq!(b.since(a), SinkCount { requests: 2, body_bytes: 60 });
        assert_eq!(a.since(b), SinkCount::default());
    }
}
