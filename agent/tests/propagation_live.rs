//! Trace-context propagation on a real kernel: the sk_msg injector, the
//! per-thread server context and the ids the kernel reports for both.
//!
//! A python HTTP/1.1 server (raw sockets, one thread per connection) answers
//! every request with what it received: the exact header block, the body's
//! hash (and the body itself for /raw paths) and how many traceparent lines
//! it saw. Clients are curl and python scripts; neither is this process,
//! which the probes never trace.
//!
//! Needs root and the eBPF object: ignored by plain `cargo test`, run by
//! `cargo xtask test`, failing with what is missing when either is. The pure
//! HTTP rules the kernel applies are unit tested without either in
//! waggle-common's `http` module (the kernel's own file).
//!
//! The tests are here; the python scripts, the probe harness and the decoding
//! of what arrived are in `propagation_live/`.
mod common;
#[path = "propagation_live/harness.rs"]
mod harness;
#[path = "propagation_live/scripts.rs"]
mod scripts;
#[path = "propagation_live/wire.rs"]
mod wire;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{python, read_line, require_root, Proc};
use serde_json::Value;
use tokio::sync::Mutex;
use waggle_common::{ctx_flags, Counter, Direction, SockKey, TraceCtxEvent};

use crate::{
    harness::{Ev, Harness},
    scripts::{COOKIE_CLIENT, EARLY_CLIENT, FIONREAD_CLIENT, FIONREAD_SERVER, NON_HTTP, SERVER, SINK, STRESS, WRITES},
    wire::{b64, head_of, hex, parse_line, received_of, run_curl, split_injected, traceparent_lines},
};

/// Probes are machine-wide: tests in this file take turns.
static SERIAL: Mutex<()> = Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the eBPF object: cargo xtask test runs it"]
async fn injects_once_at_request_starts_and_keeps_every_byte() {
    let _serial = SERIAL.lock().await;
    let mut h = Harness::load("injects_once_at_request_starts_and_keeps_every_byte", true);
    let (_server, port, _) = h.server(SERVER);
    let injected_before = h.counter(Counter::Injected);
    let has_tp_before = h.counter(Counter::SkipAlreadyHasTraceparent);

    // (1) curl: exactly one traceparent, right after the request line, with
    // the ids the kernel reports for curl's client span; nothing else differs.
    let (curl_pid, resp) = run_curl(&[&format!("http://127.0.0.1:{port}/one")]);
    let head = head_of(&resp);
    assert_eq!(resp["tp"], 1, "{}", String::from_utf8_lossy(&head));
    let (without, line) = split_injected(&head);
    assert!(head.starts_with(b"GET /one HTTP/1.1\r\ntraceparent: 00-"), "{}", String::from_utf8_lossy(&head));
    let (trace, span, flags) = parse_line(&line);
    assert_eq!(flags, 1);

    // (2) the application's own traceparent: the request arrives unchanged.
    let app_tp = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (curl2_pid, resp2) = run_curl(&["-H", app_tp, &format!("http://127.0.0.1:{port}/two")]);
    let head2 = head_of(&resp2);
    assert_eq!(resp2["tp"], 1);
    assert_eq!(traceparent_lines(&head2), 1);
    assert!(head2.windows(app_tp.len()).any(|w| w == app_tp.as_bytes()));

    // (3) (4) python: bodies that look like requests, split headers, iovecs.
    let (client, out, _stdin) = h.spawn(WRITES, &[&port.to_string()]);
    let client_pid = client.pid();
    let mut results: HashMap<String, (Vec<u8>, Value)> = HashMap::new();
    for line in out.lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let name = v["name"].as_str().unwrap().to_owned();
        results.insert(name, (b64(v["sent"].as_str().unwrap()), v["resp"].clone()));
    }
    drop(client);
    assert_eq!(results.len(), 11, "client results: {results:?}");

    h.collect_until(|ev| {
        let n =
            ev.iter().filter(|e| matches!(e, Ev::Ctx(c) if c.kind == 8 && c.flags & ctx_flags::INJECTED != 0)).count();
        n >= 7
    })
    .await;
    let clients = h.ctx_events(true);

    // curl: the ClientCtx carries the injected ids; its send (captured from
    // the user buffer, before injection) is the request minus the line.
    let cc =
        clients.iter().find(|c| c.tgid == curl_pid).unwrap_or_else(|| panic!("no ClientCtx for curl: {clients:?}"));
    assert_eq!((cc.trace_id, cc.span_id), (trace, span));
    assert_ne!(cc.flags & ctx_flags::INJECTED, 0);
    assert_ne!(cc.flags & ctx_flags::SAMPLED, 0);
    assert_eq!(cc.flags & ctx_flags::HAS_PARENT, 0, "curl has no server context");
    let sends = h.data_of(curl_pid, Direction::Egress);
    let (send, payload) = sends
        .iter()
        .find(|(d, _)| d.conn_id == cc.conn_id && d.enter_ns == cc.ts_ns)
        .unwrap_or_else(|| panic!("no curl send with the ClientCtx timestamp: {sends:?}"));
    assert_eq!(*payload, without, "the rest of curl's request must be byte-identical");
    assert_eq!(send.total_len as usize, without.len());

    // curl with its own traceparent: not injected, byte-identical.
    let cc2 = clients.iter().find(|c| c.tgid == curl2_pid);
    assert!(cc2.is_none_or(|c| c.flags & ctx_flags::INJECTED == 0), "{cc2:?}");
    let sends2 = h.data_of(curl2_pid, Direction::Egress);
    assert!(sends2.iter().any(|(_, p)| *p == head2), "curl's own traceparent request changed");

    let injected_ids = |pid: u32| -> Vec<([u8; 16], [u8; 8])> {
        clients
            .iter()
            .filter(|c| c.tgid == pid && c.flags & ctx_flags::INJECTED != 0)
            .map(|c| (c.trace_id, c.span_id))
            .collect()
    };
    let python_ids = injected_ids(client_pid);
    let expect_injected = |name: &str| {
        let (sent, resp) = &results[name];
        let received = received_of(resp);
        assert_eq!(traceparent_lines(&head_of(resp)), 1, "{name}: {}", String::from_utf8_lossy(&received));
        let (rest, line) = split_injected(&received);
        assert_eq!(&rest, sent, "{name}: bytes other than the header differ");
        let (t, s, _) = parse_line(&line);
        assert!(python_ids.contains(&(t, s)), "{name}: injected ids not reported");
    };
    let expect_untouched = |name: &str| {
        let (sent, resp) = &results[name];
        assert_eq!(&received_of(resp), sent, "{name}: request modified");
    };
    expect_injected("body-is-request-one-write");
    expect_injected("body-is-request-own-write");
    expect_injected("writev");
    expect_injected("after-keepalive");
    expect_injected("expect-100");
    // One sendmsg whose first iovec ends inside the request line: sk_msg
    // sees the whole message, so the line end is found.
    expect_injected("sendmsg");
    // The header block (or even the request line) spans writes: the kernel
    // never sees it whole, so it is untouched, and so is everything after
    // it on the connection (where that request ends is unknown).
    expect_untouched("header-split");
    expect_untouched("request-line-split");
    expect_untouched("after-split");
    expect_untouched("has-traceparent");
    expect_untouched("has-traceparent-upper");
    // Bodies: the body that is itself a request arrived as sent.
    for name in ["body-is-request-one-write", "body-is-request-own-write", "writev", "expect-100"] {
        let body = b64(results[name].1["body"].as_str().unwrap());
        assert_eq!(body, b"GET / HTTP/1.1\r\nHost: inner\r\n\r\n", "{name}");
    }
    assert_eq!(python_ids.len(), 6, "python injections: {python_ids:?}");

    assert!(h.counter(Counter::Injected) >= injected_before + 7);
    assert!(
        h.counter(Counter::SkipAlreadyHasTraceparent) >= has_tp_before + 3,
        "counters: {:?}",
        h.probes.kernel_counters()
    );

    // (5) TLS, binary, other text protocols and a muted connection: the
    // sink receives exactly what was sent.
    let (_sink, sink_port, mut sink_out) = h.server(SINK);
    let (client, mut out, mut stdin) = h.spawn(NON_HTTP, &[&sink_port.to_string()]);
    let mut ports = Vec::new();
    for _ in 0..5 {
        ports.push(read_line(&mut out).parse::<u16>().unwrap());
    }
    let last = read_line(&mut out);
    let mut last = last.split_whitespace().map(|x| x.parse::<u32>().unwrap());
    let (muted_port, muted_fd) = (last.next().unwrap() as u16, last.next().unwrap());
    let muted = SockKey { tgid: client.pid(), fd: muted_fd };
    let muted_id = h.maps.conn(muted).expect("the kernel tracks the connection to mute").conn_id;
    h.maps.mute(muted, muted_id).unwrap();
    writeln!(stdin, "go").unwrap();
    assert_eq!(read_line(&mut out), "done");
    ports.push(muted_port);
    let mut arrived: HashMap<u16, Vec<u8>> = HashMap::new();
    while arrived.len() < ports.len() {
        let v: Value = serde_json::from_str(&read_line(&mut sink_out)).unwrap();
        arrived.insert(v["port"].as_u64().unwrap() as u16, b64(v["data"].as_str().unwrap()));
    }
    let client_pid = client.pid();
    h.collect_until(|ev| {
        ev.iter()
            .filter(|e| matches!(e, Ev::Data(d, _) if d.tgid == client_pid && d.direction == Direction::Egress as u8))
            .count()
            >= 7
    })
    .await;
    let sent_by_port: HashMap<u64, Vec<u8>> = {
        // What the client wrote, per connection, as the kernel captured it
        // from its user buffers (the muted one is not captured: compare it
        // with the literal).
        let mut m: HashMap<u64, Vec<u8>> = HashMap::new();
        for (d, p) in h.data_of(client.pid(), Direction::Egress) {
            m.entry(d.conn_id).or_default().extend(p);
        }
        m
    };
    for port in &ports[..5] {
        let got = &arrived[port];
        assert_eq!(traceparent_lines(got), 0, "port {port}: {}", String::from_utf8_lossy(got));
        assert!(
            sent_by_port.values().any(|sent| sent == got),
            "port {port}: bytes changed on the way: {}",
            String::from_utf8_lossy(got)
        );
    }
    assert_eq!(arrived[&muted_port], b"GET /muted HTTP/1.1\r\nHost: x\r\n\r\n");
    let injected_non_http =
        h.ctx_events(true).iter().filter(|c| c.tgid == client.pid() && c.flags & ctx_flags::INJECTED != 0).count();
    assert_eq!(injected_non_http, 0);
    // The bodies written on their own (one after 100 Continue); the split
    // header block; what followed it, and "GET key"'s follow-up.
    let counters = h.probes.kernel_counters();
    assert!(h.counter(Counter::SkipInsideBody) >= 2, "{counters:?}");
    assert!(h.counter(Counter::SkipHeadersIncomplete) >= 1, "{counters:?}");
    assert!(h.counter(Counter::SkipBoundaryLost) >= 3, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the eBPF object: cargo xtask test runs it"]
async fn server_context_links_incoming_outgoing_and_spawned_threads() {
    let _serial = SERIAL.lock().await;
    let mut h = Harness::load("server_context_links_incoming_outgoing_and_spawned_threads", true);
    let (leaf, leaf_port, _) = h.server(SERVER);
    let (mid, mid_port, _) = h.server(SERVER);
    let incoming_before = h.counter(Counter::IncomingTraceparent);

    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let (_, resp) = run_curl(&[
        "-H",
        &format!("traceparent: 00-{trace}-{parent}-01"),
        &format!("http://127.0.0.1:{mid_port}/chain/{leaf_port}"),
    ]);
    let (_, resp_thread) = run_curl(&[
        "-H",
        &format!("traceparent: 00-{trace}-{parent}-00"),
        &format!("http://127.0.0.1:{mid_port}/chain-thread/{leaf_port}"),
    ]);
    let (_, resp_bad) = run_curl(&[
        "-H",
        &format!("traceparent: 00-{trace}-{parent}-1"),
        &format!("http://127.0.0.1:{mid_port}/chain/{leaf_port}"),
    ]);
    let (mid_pid, leaf_pid) = (mid.pid(), leaf.pid());
    h.collect_until(|ev| {
        ev.iter().filter(|e| matches!(e, Ev::Ctx(c) if c.kind == 7 && c.tgid == leaf_pid)).count() >= 3
    })
    .await;
    let servers = h.ctx_events(false);
    let clients = h.ctx_events(true);
    let server_ctx = |pid: u32, tid: u64| -> TraceCtxEvent {
        *servers
            .iter()
            .find(|c| c.tgid == pid && u64::from(c.tid) == tid)
            .unwrap_or_else(|| panic!("no ServerCtx for {pid}/{tid}: {servers:?}"))
    };
    let client_ctx = |pid: u32, tid: u64| -> TraceCtxEvent {
        *clients
            .iter()
            .find(|c| c.tgid == pid && u64::from(c.tid) == tid)
            .unwrap_or_else(|| panic!("no ClientCtx for {pid}/{tid}: {clients:?}"))
    };
    let tid = |v: &Value, k: &str| v[k].as_u64().unwrap();

    // Incoming traceparent honoured: same trace, the sender's span as parent.
    let s = server_ctx(mid_pid, tid(&resp, "tid"));
    assert_eq!(hex(&s.trace_id), trace);
    assert_eq!(hex(&s.parent_span_id), parent);
    assert_eq!(s.flags & (ctx_flags::HAS_PARENT | ctx_flags::SAMPLED), ctx_flags::HAS_PARENT | ctx_flags::SAMPLED);
    assert_ne!(s.span_id, [0; 8]);
    // The ServerCtx timestamp is the exit of the read that brought the request.
    let reads = h.data_of(mid_pid, Direction::Ingress);
    let read = reads
        .iter()
        .find(|(d, _)| d.conn_id == s.conn_id && d.exit_ns == s.ts_ns)
        .unwrap_or_else(|| panic!("no read matching the ServerCtx timestamp"));
    assert!(read.1.starts_with(b"GET /chain/"));
    // The handler's call: child of the server span, and what went on the wire.
    let c = client_ctx(mid_pid, tid(&resp, "tid"));
    assert_eq!(c.trace_id, s.trace_id);
    assert_eq!(c.parent_span_id, s.span_id);
    assert_ne!(c.flags & ctx_flags::HAS_PARENT, 0);
    assert_ne!(c.flags & ctx_flags::INJECTED, 0);
    assert_ne!(c.span_id, s.span_id);
    let leaf_head = head_of(&resp["leaf"]);
    let (_, line) = split_injected(&leaf_head);
    assert_eq!(parse_line(&line), (s.trace_id, c.span_id, 1));
    // ... and the leaf server joins the same trace under the client span.
    let l = server_ctx(leaf_pid, tid(&resp["leaf"], "tid"));
    assert_eq!((l.trace_id, l.parent_span_id), (s.trace_id, c.span_id));

    // A thread spawned while handling the request inherits its context;
    // sampled=0 is carried through.
    let s2 = server_ctx(mid_pid, tid(&resp_thread, "tid"));
    assert_eq!(hex(&s2.trace_id), trace);
    assert_eq!(s2.flags & ctx_flags::SAMPLED, 0);
    let caller = tid(&resp_thread["leaf"], "caller_tid");
    assert_ne!(caller, tid(&resp_thread, "tid"), "the call ran on a spawned thread");
    let c2 = client_ctx(mid_pid, caller);
    assert_eq!((c2.trace_id, c2.parent_span_id), (s2.trace_id, s2.span_id));
    assert_eq!(c2.flags & ctx_flags::SAMPLED, 0);
    let (_, line2) = split_injected(&head_of(&resp_thread["leaf"]));
    assert_eq!(parse_line(&line2), (s2.trace_id, c2.span_id, 0));

    // Malformed incoming traceparent: ignored entirely, a fresh trace.
    let s3 = server_ctx(mid_pid, tid(&resp_bad, "tid"));
    assert_ne!(hex(&s3.trace_id), trace);
    assert_eq!(s3.parent_span_id, [0; 8]);
    assert_eq!(s3.flags & ctx_flags::HAS_PARENT, 0);
    let c3 = client_ctx(mid_pid, tid(&resp_bad, "tid"));
    assert_eq!((c3.trace_id, c3.parent_span_id), (s3.trace_id, s3.span_id));

    // Two valid incoming at the mid server, three injected ones at the leaf.
    assert!(h.counter(Counter::IncomingTraceparent) >= incoming_before + 2 + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the eBPF object: cargo xtask test runs it"]
async fn stress_random_bodies_arrive_intact_with_one_traceparent_each() {
    let _serial = SERIAL.lock().await;
    let mut h = Harness::load("stress_random_bodies_arrive_intact_with_one_traceparent_each", true);
    let (_server, port, _) = h.server(SERVER);
    let injected_before = h.counter(Counter::Injected);
    // Several thousand requests, ~12 KB on average; WAGGLE_STRESS_REQUESTS
    // scales it for longer soaks.
    let total: u64 = std::env::var("WAGGLE_STRESS_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let started = Instant::now();
    let (_client, mut out, _stdin) = h.spawn(STRESS, &[&port.to_string(), &total.to_string(), "4", "7"]);
    // The summary is the only line the client prints, at the end. Events
    // are drained (and dropped) meanwhile, as the agent would: the kernel
    // injects only while the agent keeps up (its heartbeat).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(read_line(&mut out));
    });
    let summary = loop {
        h.source.drain(usize::MAX, |_| {});
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => break line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("stress client: {e}"),
        }
    };
    let v: Value = serde_json::from_str(&summary).unwrap_or_else(|e| panic!("stress client said {summary:?}: {e}"));
    eprintln!("stress: {} requests in {:?}: {v}", total, started.elapsed());
    assert_eq!(v["bad"], 0, "{v}\nkernel counters: {:?}", h.probes.kernel_counters());
    assert_eq!(v["ok"].as_u64().unwrap(), total);
    assert!(h.counter(Counter::Injected) >= injected_before + total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the eBPF object: cargo xtask test runs it"]
async fn propagation_off_modifies_nothing_but_still_reports_contexts() {
    let _serial = SERIAL.lock().await;
    let mut h = Harness::load("propagation_off_modifies_nothing_but_still_reports_contexts", false);
    assert!(!h.probes.attached().contains(&"waggle_sk_msg"));
    let (_server, port, _) = h.server(SERVER);
    let injected_before = h.counter(Counter::Injected);
    let (curl_pid, resp) = run_curl(&[&format!("http://127.0.0.1:{port}/off")]);
    let head = head_of(&resp);
    assert_eq!(resp["tp"], 0);
    h.collect_until(|ev| ev.iter().any(|e| matches!(e, Ev::Ctx(c) if c.tgid == curl_pid))).await;
    let sends = h.data_of(curl_pid, Direction::Egress);
    assert!(sends.iter().any(|(_, p)| *p == head), "curl's request changed with propagation off");
    let cc = h
        .ctx_events(true)
        .into_iter()
        .find(|c| c.tgid == curl_pid)
        .expect("ClientCtx is reported with propagation off");
    assert_eq!(cc.flags & ctx_flags::INJECTED, 0);
    assert_eq!(h.counter(Counter::Injected), injected_before);
    assert_eq!(h.counter(Counter::SkipNotInSockhash), 0, "nothing counted as skipped when off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the eBPF object: cargo xtask test runs it"]
async fn connections_from_before_the_agent_are_counted_not_injected() {
    let _serial = SERIAL.lock().await;
    require_root("connections_from_before_the_agent_are_counted_not_injected");
    // Server and client connection exist before the probes: sockops never
    // saw the connection established, so it is not in INJECT_SOCKS.
    let py = python();
    let mut server = Proc(Command::new(&py).args(["-u", "-c", SERVER]).stdout(Stdio::piped()).spawn().unwrap());
    let mut server_out = BufReader::new(server.0.stdout.take().unwrap());
    let port = read_line(&mut server_out);
    let mut client = Proc(
        Command::new(&py)
            .args(["-u", "-c", EARLY_CLIENT, &port])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(client.0.stdout.take().unwrap());
    let mut stdin = client.0.stdin.take().unwrap();
    let fd: u32 = read_line(&mut out).parse().unwrap();

    let mut h = Harness::load("connections_from_before_the_agent_are_counted_not_injected", true);
    // As userspace does for connections it finds in /proc.
    let key = SockKey { tgid: client.pid(), fd };
    let info = waggle_common::ConnInfo {
        conn_id: 42 | waggle_common::USERSPACE_CONN_ID_BIT,
        role: waggle_common::Role::Client as u8,
        family: libc::AF_INET as u8,
        flags: 0,
        tls: 0,
        _pad: [0; 4],
        req_remaining: 0,
        link: 0,
    };
    h.maps.track_conn(key, info).unwrap();
    writeln!(stdin, "go").unwrap();
    let resp: Value = serde_json::from_str(&read_line(&mut out)).unwrap();
    assert_eq!(resp["tp"], 0, "{resp}");
    assert_eq!(received_of(&resp), b"GET /raw/early HTTP/1.1\r\nHost: x\r\n\r\n");
    let pid = client.pid();
    h.collect_until(|ev| ev.iter().any(|e| matches!(e, Ev::Ctx(c) if c.tgid == pid))).await;
    let cc = h.ctx_events(true).into_iter().find(|c| c.tgid == pid).expect("ClientCtx for the early connection");
    assert_eq!(cc.conn_id, info.conn_id);
    assert_eq!(cc.flags & ctx_flags::INJECTED, 0);
    assert!(h.counter(Counter::SkipNotInSockhash) >= 1, "{:?}", h.probes.kernel_counters());
    // The whole request went out: the connection is at a request boundary.
    assert_eq!(
        h.maps.conn(key).map(|c| (c.req_remaining, c.flags & waggle_common::conn_flags::BOUNDARY_LOST)),
        Some((0, 0)),
        "a sent request without body leaves the connection at a boundary"
    );
    writeln!(stdin, "bye").unwrap();
}

fn own_cookie(s: &std::net::TcpStream) -> u64 {
    use std::os::fd::AsRawFd;
    let mut cookie = 0u64;
    let mut len = 8 as libc::socklen_t;
    // SAFETY: SO_COOKIE writes 8 bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_COOKIE, (&mut cookie as *mut u64).cast(), &mut len)
    };
    assert_eq!(rc, 0, "SO_COOKIE: {}", std::io::Error::last_os_error());
    cookie
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the eBPF object: cargo xtask test runs it"]
async fn only_sockets_of_traced_processes_enter_the_sockmap() {
    let _serial = SERIAL.lock().await;
    require_root("only_sockets_of_traced_processes_enter_the_sockmap");
    let py = python();
    // A server, and a client connection that predates the probes.
    let mut server = Proc(Command::new(&py).args(["-u", "-c", SINK]).stdout(Stdio::piped()).spawn().unwrap());
    let mut server_out = BufReader::new(server.0.stdout.take().unwrap());
    let port = read_line(&mut server_out);
    let mut early = Proc(
        Command::new(&py)
            .args(["-u", "-c", COOKIE_CLIENT, &port])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let early_cookie: u64 = read_line(&mut BufReader::new(early.0.stdout.take().unwrap())).parse().unwrap();

    // Sockets stay in the map for their lifetime in this mode, so the map
    // shows every socket that ever entered it.
    let h = Harness::load_with("only_sockets_of_traced_processes_enter_the_sockmap", true, true);
    assert_eq!(h.probes.sockmap_mode(), waggle_common::sockmap_mode::KEEP);
    let added_before = h.counter(Counter::SockmapAdded);
    let mut traced = Proc(
        Command::new(&py)
            .args(["-u", "-c", COOKIE_CLIENT, &port])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let traced_cookie: u64 = read_line(&mut BufReader::new(traced.0.stdout.take().unwrap())).parse().unwrap();
    // This process is the agent: its own sockets must never enter.
    let own = std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    let own_cookie = own_cookie(&own);

    let cookies = h.probes.client_sock_cookies();
    assert!(cookies.contains(&traced_cookie), "a traced process's new client socket is in INJECT_SOCKS: {cookies:?}");
    assert!(!cookies.contains(&own_cookie), "the agent's own socket entered INJECT_SOCKS: {cookies:?}");
    assert!(!cookies.contains(&early_cookie), "a socket connected before the agent entered INJECT_SOCKS: {cookies:?}");
    // Every socket in the map belongs to a process the probes trace: none
    // is the agent's, and each was counted on the way in.
    assert!(h.counter(Counter::SockmapAdded) > added_before);
    drop(own);
    drop(traced);
    drop(early);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the eBPF object: cargo xtask test runs it"]
async fn fionread_reports_the_bytes_waiting_on_watched_sockets() {
    let _serial = SERIAL.lock().await;
    // The default mode: whatever this kernel makes of FIONREAD on sockets
    // in a sockmap, the agent must keep it right.
    let mut h = Harness::load_with("fionread_reports_the_bytes_waiting_on_watched_sockets", true, false);
    let mode = h.probes.sockmap_mode();
    assert_ne!(mode, waggle_common::sockmap_mode::UNSET, "propagation must be on");
    let sizes: Vec<String> = [1usize, 2, 100, 1460, 4096, 65_536, 1 << 20].iter().map(|n| n.to_string()).collect();
    let size_args: Vec<&str> = sizes.iter().map(String::as_str).collect();
    let (_server, mut server_out, _) = h.spawn(FIONREAD_SERVER, &size_args);
    let ports = read_line(&mut server_out);
    let mut ports = ports.split_whitespace();
    let (http_port, first_port) = (ports.next().unwrap().to_owned(), ports.next().unwrap().to_owned());
    let added_before = h.counter(Counter::SockmapAdded);
    let mut args = vec![http_port.as_str(), first_port.as_str()];
    args.extend(size_args.iter());
    let (client, mut out, _stdin) = h.spawn(FIONREAD_CLIENT, &args);
    let mut checks = Vec::new();
    for _ in 0..2 * sizes.len() {
        let v: Value = serde_json::from_str(&read_line(&mut out)).unwrap();
        checks.push(v);
    }
    drop(client);
    for v in &checks {
        assert_eq!(v["fionread"], v["waiting"], "FIONREAD must equal the bytes waiting: {v} (all: {checks:?})");
    }
    // The client sockets really were in the sockmap, and the requests
    // really were injected into: the check is not vacuous.
    assert!(
        h.counter(Counter::SockmapAdded) >= added_before + 2 * sizes.len() as u64,
        "{:?}",
        h.probes.kernel_counters()
    );
    for v in checks.iter().filter(|v| v["case"] == "request") {
        assert_eq!(v["tp"], 1, "each first request carries one traceparent: {v}");
    }
    if mode == waggle_common::sockmap_mode::LEAVE_AT_FIRST_TRANSMIT {
        assert!(h.counter(Counter::SockmapLeft) >= 2 * sizes.len() as u64, "{:?}", h.probes.kernel_counters());
    }
    h.drain();
}
