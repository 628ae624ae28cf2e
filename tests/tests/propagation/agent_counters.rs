//! The agent under test, started with its metrics endpoint, and the
//! propagation counters scraped from it.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use waggle_e2e::{env::free_port, wait_for_other_injectors, Agent, OtlpReceiver, Protocol};

/// Kernel counters reach the metrics endpoint on the agent's 1 s tick.
pub const COUNTER_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent exporting to `receiver` with its metrics endpoint on a fresh
/// port (returned).
#[track_caller]
pub fn start_agent(receiver: &OtlpReceiver, propagation: bool) -> (Agent, u16) {
    let extra: &[&str] = if propagation { &[] } else { &["--propagation", "off"] };
    start_agent_with(receiver, extra, &[])
}

/// [`start_agent`] with more arguments and environment (propagation on
/// unless `extra` turns it off).
#[track_caller]
pub fn start_agent_with(receiver: &OtlpReceiver, extra: &[&str], env: &[(&str, &str)]) -> (Agent, u16) {
    wait_for_other_injectors();
    let propagation = !extra.windows(2).any(|w| w == ["--propagation", "off"]);
    let metrics_port = free_port();
    let mut args = receiver.agent_args(Protocol::Grpc);
    args.extend(["--metrics-addr".to_owned(), format!("127.0.0.1:{metrics_port}")]);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let mut agent = Agent::start(&args, env);
    let stderr = agent.stderr();
    assert_eq!(
        stderr.contains("propagation on:"),
        propagation,
        "the agent's start-up log disagrees with --propagation {}; stderr:\n{}",
        if propagation { "on" } else { "off" },
        agent.stderr_tail(40)
    );
    assert!(agent.is_running(), "agent exited after start-up; stderr:\n{}", agent.stderr_tail(40));
    (agent, metrics_port)
}

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
