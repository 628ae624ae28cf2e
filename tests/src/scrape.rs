//! The agent's metrics endpoint (`--metrics-addr`), scraped as Prometheus
//! would: counters a test waits on or checks.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

/// Kernel counters reach the metrics endpoint on the agent's 1 s tick.
pub const COUNTER_TIMEOUT: Duration = Duration::from_secs(10);

/// The body of `GET /metrics`. The scrape carries its own unsampled
/// `traceparent` so the kernel never injects into it: the test process is
/// traced too, and an injection here would count in
/// `waggle_propagation_injected_total`.
#[track_caller]
pub fn scrape(port: u16) -> String {
    let mut s =
        TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connecting to metrics port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap_or_else(|e| panic!("set_read_timeout: {e}"));
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap_or_else(|e| panic!("sending the scrape: {e}"));
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap_or_else(|e| panic!("reading the scrape: {e}"));
    assert!(resp.starts_with("HTTP/1.1 200"), "scrape of 127.0.0.1:{port}/metrics: {resp}");
    resp.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// Value of the unlabelled sample `name` in an exposition.
pub fn sample(body: &str, name: &str) -> Option<u64> {
    body.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some(name)).then(|| parts.next().and_then(|v| v.parse().ok())).flatten()
    })
}

/// Scrapes until `ready` holds (kernel counters are published on the
/// agent's tick); returns the last exposition.
#[track_caller]
pub fn scrape_until(port: u16, what: &str, mut ready: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + COUNTER_TIMEOUT;
    loop {
        let body = scrape(port);
        if ready(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "metrics never showed {what} within {COUNTER_TIMEOUT:?}:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn counter(body: &str, name: &str) -> u64 {
    sample(body, &format!("waggle_{name}_total")).unwrap_or(0)
}
