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
//! HTTP rules the kernel applies are unit
//! tested below without either (the `http` module is the kernel's own file).
mod common;
use common::{load_probes, python, read_line, require_root, Proc};

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    process::{ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::sync::Mutex;
use waggle::{
    intake::{decode, RawEvent},
    probes::{ConnMaps, EventSource, ProbeConfig, Probes},
};
use waggle_common::{ctx_flags, Counter, DataEvent, Direction, SockKey, TraceCtxEvent};

/// Probes are machine-wide: tests in this file take turns.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn b64(s: &str) -> Vec<u8> {
    // Tiny decoder: the test has no base64 dependency and needs none.
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => panic!("bad base64 byte {c}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Records and answers HTTP/1.1 requests; `/chain/<port>` and
/// `/chain-thread/<port>` first call GET /leaf on 127.0.0.1:<port> from the
/// handling thread or from a thread it spawns.
const SERVER: &str = r#"
import base64, hashlib, json, socket, sys, threading

def read_message(s, buf):
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            return None
        buf += d
    i = buf.index(b"\r\n\r\n") + 4
    head, buf = buf[:i], buf[i:]
    n = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            n = int(v.strip())
        if k.strip().lower() == b"expect" and len(buf) < n:
            s.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    while len(buf) < n:
        d = s.recv(65536)
        if not d:
            return None
        buf += d
    return head, buf[:n], buf[n:]

def call(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /leaf HTTP/1.1\r\nHost: leaf\r\n\r\n")
    _, body, _ = read_message(s, b"")
    s.close()
    out = json.loads(body)
    out["caller_tid"] = threading.get_native_id()
    return out

def handle(conn):
    buf = b""
    while True:
        r = read_message(conn, buf)
        if r is None:
            break
        head, body, buf = r
        lines = head.split(b"\r\n")
        path = lines[0].split(b" ")[1].decode()
        out = {
            "tid": threading.get_native_id(),
            "sha": hashlib.sha256(body).hexdigest(),
            "len": len(body),
            "tp": sum(1 for l in lines[1:] if l.lower().startswith(b"traceparent")),
            "head": base64.b64encode(head).decode(),
        }
        if path.startswith("/raw"):
            out["body"] = base64.b64encode(body).decode()
        if path.startswith("/chain/"):
            out["leaf"] = call(int(path.split("/")[2]))
        if path.startswith("/chain-thread/"):
            t = threading.Thread(target=lambda: out.__setitem__("leaf", call(int(path.split("/")[2]))))
            t.start()
            t.join()
        reply = json.dumps(out).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(reply) + reply)
    conn.close()

lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", 0))
lst.listen(64)
print(lst.getsockname()[1], flush=True)
while True:
    c, _ = lst.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

/// Reads every connection to EOF and prints what arrived, keyed by the
/// client's port.
const SINK: &str = r#"
import base64, json, socket, sys, threading
out = threading.Lock()
def handle(c):
    port = c.getpeername()[1]
    data = b""
    while True:
        d = c.recv(65536)
        if not d:
            break
        data += d
    c.close()
    line = json.dumps({"port": port, "data": base64.b64encode(data).decode()}) + "\n"
    # One write per line: print() from several threads can interleave.
    with out:
        sys.stdout.write(line)
        sys.stdout.flush()
lst = socket.socket()
lst.bind(("127.0.0.1", 0))
lst.listen(16)
print(lst.getsockname()[1], flush=True)
while True:
    c, _ = lst.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

/// Client for the recording server: sends each request as the listed
/// writes (plain send, writev or sendmsg) on one keep-alive connection and
/// prints, per request, what it sent and what the server saw.
const WRITES: &str = r#"
import base64, json, os, socket, sys
port = int(sys.argv[1])
inner = b"GET / HTTP/1.1\r\nHost: inner\r\n\r\n"
def post(path, body):
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (path, len(body))
tp = b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
# A header block split over sends makes the request's end unknowable for
# the kernel, so nothing more is injected on the connection: those go last.
plans = [
    ("body-is-request-one-write", "send", [post(b"/raw/a", inner) + inner]),
    ("body-is-request-own-write", "send", [post(b"/raw/b", inner), inner]),
    ("writev", "writev", [post(b"/raw/v", inner), inner]),
    ("sendmsg", "sendmsg", [b"POST /raw/m HTT", b"P/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"]),
    ("has-traceparent", "send", [b"GET /raw/tp HTTP/1.1\r\nHost: x\r\n" + tp + b"\r\n"]),
    ("has-traceparent-upper", "send", [b"GET /raw/tp2 HTTP/1.1\r\nTRACEPARENT: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"]),
    ("after-keepalive", "send", [b"GET /raw/again HTTP/1.1\r\nHost: x\r\n\r\n"]),
    ("expect-100", "expect", [post(b"/raw/e", inner)[:-2] + b"Expect: 100-continue\r\n\r\n", inner]),
    ("header-split", "send", [b"GET /raw/split HTTP/1.1\r\n", b"Host: x\r\nX-A: 1\r\n", b"\r\n"]),
    ("request-line-split", "send", [b"GET /raw/spl", b"it2 HTTP/1.1\r\nHost: x\r\n\r\n"]),
    ("after-split", "send", [b"GET /raw/after HTTP/1.1\r\nHost: x\r\n\r\n"]),
]
s = socket.create_connection(("127.0.0.1", port))
buf = b""
def read_response():
    global buf
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    i = buf.index(b"\r\n\r\n") + 4
    head, buf = buf[:i], buf[i:]
    n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(buf) < n:
        buf += s.recv(65536)
    body, buf = buf[:n], buf[n:]
    return json.loads(body)
def read_interim():
    global buf
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    i = buf.index(b"\r\n\r\n") + 4
    assert buf.startswith(b"HTTP/1.1 100 "), buf
    buf = buf[i:]
for name, how, parts in plans:
    if how == "expect":
        # The body (itself a request) follows the interim response: the
        # exchange is still open, nothing may be injected into it.
        s.sendall(parts[0])
        read_interim()
        s.sendall(parts[1])
    elif how == "send":
        for p in parts:
            s.sendall(p)
    elif how == "writev":
        os.writev(s.fileno(), parts)
    else:
        s.sendmsg(parts)
    resp = read_response()
    print(json.dumps({"name": name, "sent": base64.b64encode(b"".join(parts)).decode(), "resp": resp}), flush=True)
"#;

/// Bytes that are not HTTP requests, to the sink; the last connection gets
/// a real request after the test muted it.
const NON_HTTP: &str = r#"
import os, socket, sys
port = int(sys.argv[1])
tls = bytes.fromhex("160301012c010001280303") + os.urandom(64) + b"GET / HTTP/1.1\r\n\r\n"
cases = [
    [tls],
    [os.urandom(3000)],
    [b"GET key\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"],
    [b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"],
    [b"SSH-2.0-OpenSSH_9.2\r\n", b"GET / HTTP/1.1\r\n\r\n"],
]
for parts in cases:
    s = socket.create_connection(("127.0.0.1", port))
    print(s.getsockname()[1], flush=True)
    for p in parts:
        s.sendall(p)
    s.shutdown(socket.SHUT_WR)
    s.close()
s = socket.create_connection(("127.0.0.1", port))
print(s.getsockname()[1], s.fileno(), flush=True)
sys.stdin.readline()
s.sendall(b"GET /muted HTTP/1.1\r\nHost: x\r\n\r\n")
s.shutdown(socket.SHUT_WR)
s.close()
print("done", flush=True)
"#;

/// Keep-alive requests with random bodies on several connections; checks
/// every answer itself and prints a summary.
const STRESS: &str = r#"
import hashlib, json, os, random, re, socket, sys, threading, base64
port, total, conns, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
inner = b"GET / HTTP/1.1\r\nHost: inner\r\n\r\n"
line = re.compile(rb"traceparent: 00-[0-9a-f]{32}-[0-9a-f]{16}-01\r\n")
lock = threading.Lock()
result = {"ok": 0, "bad": 0, "examples": []}
def worker(k, n):
    rnd = random.Random(seed * 1000 + k)
    s = socket.create_connection(("127.0.0.1", port))
    buf = b""
    for i in range(n):
        r = rnd.random()
        size = rnd.randint(0, 1024) if r < 0.5 else rnd.randint(1024, 16384) if r < 0.8 else rnd.randint(16384, 100 * 1024)
        body = bytearray(os.urandom(size))
        shape = rnd.random()
        if size >= len(inner) and shape < 0.15:
            body[:len(inner)] = inner
        elif size >= 2 * len(inner) and shape < 0.3:
            at = rnd.randint(0, size - len(inner))
            body[at:at + len(inner)] = inner
        body = bytes(body)
        method = b"POST" if size or rnd.random() < 0.5 else b"GET"
        head = b"%s /s/%d/%d HTTP/1.1\r\nHost: stress\r\nX-Seq: %d\r\nContent-Length: %d\r\n\r\n" % (method, k, i, i, size)
        how = rnd.random()
        if how < 0.4:
            s.sendall(head + body)
        elif how < 0.8:
            s.sendall(head)
            if body:
                s.sendall(body)
        else:
            os.writev(s.fileno(), [head, body])
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        j = buf.index(b"\r\n\r\n") + 4
        rhead, buf = buf[:j], buf[j:]
        m = int(re.search(rb"Content-Length: (\d+)", rhead).group(1))
        while len(buf) < m:
            buf += s.recv(65536)
        resp, buf = json.loads(buf[:m]), buf[m:]
        got = base64.b64decode(resp["head"])
        first = head.index(b"\r\n") + 2
        ok = resp["sha"] == hashlib.sha256(body).hexdigest() and resp["len"] == size and resp["tp"] == 1
        ok = ok and got[:first] == head[:first] and got[first + 70:] == head[first:] and line.fullmatch(got[first:first + 70]) is not None
        with lock:
            if ok:
                result["ok"] += 1
            else:
                result["bad"] += 1
                if len(result["examples"]) < 3:
                    result["examples"].append({"conn": k, "i": i, "size": size, "resp_len": resp["len"], "tp": resp["tp"], "head": got.decode("latin1")})
    s.close()
threads = [threading.Thread(target=worker, args=(k, total // conns)) for k in range(conns)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(result), flush=True)
"#;

/// Connects before the probes load, then sends a request when told to.
const EARLY_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print(s.fileno(), flush=True)
sys.stdin.readline()
s.sendall(b"GET /raw/early HTTP/1.1\r\nHost: x\r\n\r\n")
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(65536)
head, _, rest = buf.partition(b"\r\n\r\n")
n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
while len(rest) < n:
    rest += s.recv(65536)
print(rest[:n].decode(), flush=True)
sys.stdin.readline()
"#;

/// Owned copy of the records the tests look at.
#[derive(Debug, Clone)]
enum Ev {
    Data(DataEvent, Vec<u8>),
    Ctx(TraceCtxEvent),
}

struct Harness {
    probes: Probes,
    source: EventSource,
    maps: ConnMaps,
    events: Vec<Ev>,
    py: String,
}

impl Harness {
    #[track_caller]
    fn load(test: &str, propagation: bool) -> Harness {
        Harness::load_with(test, propagation, true)
    }

    /// `unsafe_keepalive`: false runs the kernel's FIONREAD-safe mode.
    /// Fails the test when not root or without the eBPF object.
    #[track_caller]
    fn load_with(test: &str, propagation: bool, unsafe_keepalive: bool) -> Harness {
        require_root(test);
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        wait_for_other_injectors();
        // Every request of a keep-alive connection is a candidate: these
        // tests check the injector's byte handling, not the FIONREAD-safe
        // mode (tested on its own below).
        let config = ProbeConfig {
            capture_bytes: 4096,
            ring_buffer_bytes: 8 << 20,
            agent_tgid: std::process::id(),
            propagation,
            unsafe_keepalive,
            ..ProbeConfig::default()
        };
        let (probes, source, maps) = load_probes(test, &config);
        assert!(probes.skipped().is_empty(), "programs skipped: {:?}", probes.skipped());
        assert_eq!(probes.injecting(), propagation);
        Harness { probes, source, maps, events: Vec::new(), py: python() }
    }

    fn drain(&mut self) {
        let events = &mut self.events;
        self.source.drain(usize::MAX, |record| match decode(record) {
            Ok(RawEvent::Data { header, payload }) => events.push(Ev::Data(header, payload.to_vec())),
            Ok(RawEvent::ServerCtx(e) | RawEvent::ClientCtx(e)) => events.push(Ev::Ctx(e)),
            Ok(_) => {}
            Err(e) => panic!("undecodable kernel record ({} bytes): {e}", record.len()),
        });
    }

    /// Drains until `done` holds on the events (or 10 s pass).
    async fn collect_until(&mut self, done: impl Fn(&[Ev]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.drain();
            if done(&self.events) || Instant::now() > deadline {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.source.readable()).await;
        }
    }

    fn counter(&self, c: Counter) -> u64 {
        self.probes.kernel_counters().iter().find(|(k, _)| *k == c).map(|(_, v)| *v).unwrap_or(0)
    }

    fn spawn(&self, script: &str, args: &[&str]) -> (Proc, BufReader<ChildStdout>, ChildStdin) {
        let mut child = Proc(
            Command::new(&self.py)
                .args(["-u", "-c", script])
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let out = BufReader::new(child.0.stdout.take().unwrap());
        let stdin = child.0.stdin.take().unwrap();
        (child, out, stdin)
    }

    /// A recording server (or sink) and its port.
    fn server(&self, script: &str) -> (Proc, u16, BufReader<ChildStdout>) {
        let (proc_, mut out, _) = self.spawn(script, &[]);
        let port = read_line(&mut out).parse().expect("server port");
        (proc_, port, out)
    }

    fn ctx_events(&self, kind_client: bool) -> Vec<TraceCtxEvent> {
        let kind = if kind_client { 8 } else { 7 };
        self.events
            .iter()
            .filter_map(|e| match e {
                Ev::Ctx(c) if c.kind == kind => Some(*c),
                _ => None,
            })
            .collect()
    }

    fn data_of(&self, tgid: u32, dir: Direction) -> Vec<(DataEvent, Vec<u8>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Ev::Data(h, p) if h.tgid == tgid && h.direction == dir as u8 => Some((*h, p.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Another waggle with propagation on (e2e tests, benchmarks on a shared
/// machine) claims new client sockets for its own sk_msg program and injects
/// its own ids into the processes these tests start: wait for it to finish.
fn wait_for_other_injectors() {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let others = waggle::probes::other_injectors();
        if others.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "another waggle_sk_msg program stays loaded (ids {others:?}): stop the other agent, it owns the sockets these tests inject into"
        );
        eprintln!("propagation_live: waiting for another agent's sk_msg program ({others:?}) to go away");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// (trace id, span id, flags) of a `traceparent: ...\r\n` line.
fn parse_line(line: &[u8]) -> ([u8; 16], [u8; 8], u8) {
    let text = std::str::from_utf8(line).unwrap();
    let value = text
        .strip_prefix("traceparent: ")
        .and_then(|v| v.strip_suffix("\r\n"))
        .unwrap_or_else(|| panic!("not a traceparent line: {text:?}"));
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    let bytes = |s: &str| -> Vec<u8> {
        assert!(s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "{s}");
        (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
    };
    let flags = bytes(parts[3])[0];
    (bytes(parts[1]).try_into().unwrap(), bytes(parts[2]).try_into().unwrap(), flags)
}

/// Splits what the server received around an inserted line right after the
/// request line: (received without the line, the line).
fn split_injected(received: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let first = received.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let line = received[first..first + 70].to_vec();
    let mut rest = received[..first].to_vec();
    rest.extend_from_slice(&received[first + 70..]);
    (rest, line)
}

fn traceparent_lines(head: &[u8]) -> usize {
    head.split(|b| *b == b'\n').filter(|l| l.to_ascii_lowercase().starts_with(b"traceparent")).count()
}

fn run_curl(args: &[&str]) -> (u32, Value) {
    let child =
        Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let mut child = Proc(child);
    let mut out = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(child.0.wait().unwrap().success(), "curl {args:?} failed");
    (pid, serde_json::from_str(&out).unwrap_or_else(|e| panic!("curl output {out:?}: {e}")))
}

fn head_of(resp: &Value) -> Vec<u8> {
    b64(resp["head"].as_str().unwrap())
}

fn received_of(resp: &Value) -> Vec<u8> {
    let mut all = head_of(resp);
    if let Some(body) = resp["body"].as_str() {
        all.extend(b64(body));
    }
    all
}

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
    h.maps.mute(SockKey { tgid: client.pid(), fd: muted_fd }).unwrap();
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
    // saw the connection established, so it is not in CLIENT_SOCKS.
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
        _pad: [0; 5],
        req_remaining: 0,
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

/// Prints the SO_COOKIE of a connection to argv[1] and holds it until stdin
/// closes (a traced process's client socket, for the sockmap checks).
const COOKIE_CLIENT: &str = r#"
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print(struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, 57, 8))[0], flush=True)
sys.stdin.read()
"#;

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
    assert!(cookies.contains(&traced_cookie), "a traced process's new client socket is in CLIENT_SOCKS: {cookies:?}");
    assert!(!cookies.contains(&own_cookie), "the agent's own socket entered CLIENT_SOCKS: {cookies:?}");
    assert!(!cookies.contains(&early_cookie), "a socket connected before the agent entered CLIENT_SOCKS: {cookies:?}");
    // Every socket in the map belongs to a process the probes trace: none
    // is the agent's, and each was counted on the way in.
    assert!(h.counter(Counter::SockmapAdded) > added_before);
    drop(own);
    drop(traced);
    drop(early);
}

/// Serves HTTP on its first port (answers every request with a body of the
/// size in its path, and says how many traceparent lines it saw) and, on
/// its second, sends the next size from argv to each new connection at
/// once (a server that speaks first).
const FIONREAD_SERVER: &str = r#"
import socket, sys, threading
sizes = [int(x) for x in sys.argv[1:]]
def http(c):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            return
        buf += d
    head = buf.split(b"\r\n\r\n")[0]
    lines = head.split(b"\r\n")
    size = int(lines[0].split(b" ")[1].split(b"/")[-1])
    tp = sum(1 for l in lines[1:] if l.lower().startswith(b"traceparent"))
    c.sendall(b"HTTP/1.1 200 OK\r\nX-Tp: %d\r\nContent-Length: %d\r\n\r\n" % (tp, size) + b"x" * size)
    c.recv(1)
    c.close()
def first(c, size):
    c.sendall(b"y" * size)
    c.recv(1)
    c.close()
a, b = socket.socket(), socket.socket()
for l in (a, b):
    l.bind(("127.0.0.1", 0))
    l.listen(16)
print(a.getsockname()[1], b.getsockname()[1], flush=True)
def serve_b():
    for size in sizes:
        c, _ = b.accept()
        threading.Thread(target=first, args=(c, size), daemon=True).start()
threading.Thread(target=serve_b, daemon=True).start()
while True:
    c, _ = a.accept()
    threading.Thread(target=http, args=(c,), daemon=True).start()
"#;

/// For each size: one request to the HTTP port, and one connection to the
/// speaking-first port; waits until every byte is there (MSG_PEEK), then
/// compares FIONREAD with it. Prints one JSON line per check.
const FIONREAD_CLIENT: &str = r#"
import fcntl, json, select, socket, struct, sys, termios, time
http_port, first_port = int(sys.argv[1]), int(sys.argv[2])
sizes = [int(x) for x in sys.argv[3:]]
def settle(s, want):
    # Everything that will arrive, arrived: peek until `want` bytes wait.
    deadline = time.time() + 20
    while True:
        select.select([s], [], [], 1)
        n = len(s.recv(want + 1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        if n >= want or time.time() > deadline:
            return n
def check(s, want, case, size):
    waiting = settle(s, want)
    fionread = struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    head = s.recv(256, socket.MSG_PEEK)
    tp = int(head.split(b"X-Tp: ")[1].split(b"\r")[0]) if b"X-Tp: " in head else None
    print(json.dumps({"case": case, "size": size, "waiting": waiting, "fionread": fionread, "tp": tp}), flush=True)
    s.sendall(b"!")
    s.close()
def conn(port):
    s = socket.socket()
    # SO_RCVBUFFORCE (root): room for the largest size to wait whole.
    s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
    s.connect(("127.0.0.1", port))
    return s
for size in sizes:
    s = conn(http_port)
    s.sendall(b"GET /size/%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
    head_len = len(b"HTTP/1.1 200 OK\r\nX-Tp: 1\r\nContent-Length: %d\r\n\r\n" % size)
    check(s, head_len + size, "request", size)
    check(conn(first_port), size, "server-first", size)
"#;

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
