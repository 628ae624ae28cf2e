//! Loads the real eBPF programs and checks what they report for real traffic:
//! python's http.server answering curl and a few scripted clients that use
//! sendmsg/recvmsg, writev/readv, UDP, threads and fork, plus a process whose
//! sockets predate the probes. File and pipe I/O must produce nothing. And
//! `waggle floor`, the benchmark's floor, takes the same tracepoints.
//!
//! Needs root and the eBPF object: ignored by plain `cargo test`, run by
//! `cargo xtask test`, failing with what is missing when either is.
mod common;
use common::{load_probes, python, read_line, require_root, Proc};

use std::{
    collections::BTreeSet,
    io::{BufReader, Read, Write},
    path::Path,
    process::{ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use waggle::{
    intake::{decode, RawEvent, Started},
    probes::{EventSource, ProbeConfig},
};
use waggle_common::{
    conn_event_flags, ConnEvent, Counter, DataEvent, Direction, ProcessEvent, Role, SockKey, SyscallId, TraceCtxEvent,
    FLOOR_PROGRAM,
};

/// Owned copy of a decoded record.
#[derive(Debug, Clone)]
enum Ev {
    Data(DataEvent, Vec<u8>),
    Open(ConnEvent),
    Close(ConnEvent),
    Unverified(ConnEvent),
    Inherited(ConnEvent),
    Fork(ProcessEvent),
    Exit(ProcessEvent),
    Thread(ProcessEvent),
    Ctx(TraceCtxEvent),
}

fn drain(source: &mut EventSource, events: &mut Vec<Ev>) {
    source.drain(usize::MAX, |record| {
        let ev = match decode(record) {
            Ok(RawEvent::Data { header, payload }) => Ev::Data(header, payload.to_vec()),
            Ok(RawEvent::ConnOpen(e)) => Ev::Open(e),
            Ok(RawEvent::ConnClose(e)) => Ev::Close(e),
            Ok(RawEvent::ConnUnverified(e)) => Ev::Unverified(e),
            Ok(RawEvent::ConnInherited(e)) => Ev::Inherited(e),
            Ok(RawEvent::ProcessFork(e)) => Ev::Fork(e),
            Ok(RawEvent::ProcessExit(e)) => Ev::Exit(e),
            Ok(RawEvent::ThreadStart(e)) => Ev::Thread(e),
            Ok(RawEvent::ServerCtx(e) | RawEvent::ClientCtx(e)) => Ev::Ctx(e),
            // The two records the kernel would otherwise send, in order.
            Ok(RawEvent::DataCtx { started: Started::Server(e) | Started::Client(e), header, payload }) => {
                events.push(Ev::Ctx(e));
                Ev::Data(header, payload.to_vec())
            }
            // Only with trace-selection rules, which these probes never have.
            Ok(RawEvent::ProcessExec(e)) => panic!("ProcessExec with trace selection off: {e:?}"),
            // Every exec on the machine sends one; these tests follow
            // connections, not environments.
            Ok(RawEvent::ExecEnv { .. }) => return,
            Err(e) => panic!("undecodable kernel record ({} bytes): {e}", record.len()),
        };
        events.push(ev);
    });
}

/// Waits (through `readable`, as the agent does) until `done` holds.
async fn collect_until(source: &mut EventSource, events: &mut Vec<Ev>, done: impl Fn(&[Ev]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        drain(source, events);
        if done(events) || Instant::now() > deadline {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), source.readable()).await;
    }
}

fn data<'a>(events: &'a [Ev], tgid: u32) -> impl Iterator<Item = (&'a DataEvent, &'a [u8])> + 'a {
    events.iter().filter_map(move |e| match e {
        Ev::Data(h, p) if h.tgid == tgid => Some((h, p.as_slice())),
        _ => None,
    })
}

fn opens(events: &[Ev], tgid: u32, role: Role) -> Vec<ConnEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            Ev::Open(c) if c.tgid == tgid && c.role == role as u8 => Some(*c),
            _ => None,
        })
        .collect()
}

fn closed(events: &[Ev], conn_id: u64) -> bool {
    events.iter().any(|e| matches!(e, Ev::Close(c) if c.conn_id == conn_id))
}

fn data_on(events: &[Ev], conn_id: u64, dir: Direction) -> Vec<&[u8]> {
    events
        .iter()
        .filter_map(|e| match e {
            Ev::Data(h, p) if h.conn_id == conn_id && h.direction == dir as u8 => Some(p.as_slice()),
            _ => None,
        })
        .collect()
}

/// A process whose listener and client socket exist before the probes load:
/// the kernel cannot tell they are TCP and must ask (ConnUnverified). It
/// accepts with a NULL address, as node/libuv does.
const LEGACY: &str = r#"
import ctypes, socket, sys, os
libc = ctypes.CDLL(None, use_errno=True)
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(8)
cli = socket.socket()
print(lst.getsockname()[1], flush=True)
sys.stdin.readline()
cli.connect(lst.getsockname())
fd = libc.accept(lst.fileno(), None, None)
print(fd, cli.fileno(), flush=True)
sys.stdin.readline()
"#;

/// Exercises the iovec syscalls, UDP, threads and fork.
const CLIENT: &str = r#"
import os, socket, sys, threading
port = int(sys.argv[1])
def finish(s):
    while s.recv(65536): pass
    s.close()
s = socket.create_connection(("127.0.0.1", port))
s.sendmsg([b"GET /sendmsg", b" HTTP/1.0\r\n\r\n"])
s.recv(5, socket.MSG_PEEK)
s.recvmsg(65536)
finish(s)
s = socket.create_connection(("127.0.0.1", port))
os.writev(s.fileno(), [b"GET /wr", b"itev HTTP/1.0\r\n\r\n"])
os.readv(s.fileno(), [bytearray(8), bytearray(65536)])
finish(s)
s = socket.create_connection(("127.0.0.1", port))
head = b"POST /big HTTP/1.0\r\nContent-Length: 5958\r\n\r\n"
os.writev(s.fileno(), [head + b"A" * (3000 - len(head)), b"B" * 3000])
finish(s)
s = socket.create_connection(("127.0.0.1", port))
with open(sys.argv[2], "rb") as f:
    os.sendfile(s.fileno(), f.fileno(), 0, 1 << 20)
finish(s)
l6 = socket.socket(socket.AF_INET6); l6.bind(("::1", 0)); l6.listen(1)
c6 = socket.create_connection(("::1", l6.getsockname()[1]))
a6, _ = l6.accept()
c6.sendall(b"ping6"); a6.recv(16)
c6.close(); a6.close(); l6.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("127.0.0.1", 9))
u.close()
t = threading.Thread(target=lambda: None); t.start(); t.join()
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print(pid, flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the eBPF object: cargo xtask test runs it"]
async fn probes_see_http_over_tcp_and_nothing_else() {
    require_root("probes_see_http_over_tcp_and_nothing_else");
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile_dir();
    let py = python();

    // Sockets that predate the probes.
    let mut legacy = Proc(
        Command::new(&py).args(["-u", "-c", LEGACY]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap(),
    );
    let mut legacy_out = BufReader::new(legacy.0.stdout.take().unwrap());
    let mut legacy_in: ChildStdin = legacy.0.stdin.take().unwrap();
    let legacy_port: u16 = read_line(&mut legacy_out).parse().unwrap();

    let config = ProbeConfig {
        capture_bytes: 4096,
        ring_buffer_bytes: 4 << 20,
        agent_tgid: std::process::id(),
        propagation: true,
        ..ProbeConfig::default()
    };
    let (probes, mut source, mut maps) = load_probes("probes_see_http_over_tcp_and_nothing_else", &config);
    assert!(probes.skipped().is_empty(), "programs skipped: {:?}", probes.skipped());
    assert!(probes.attached().contains(&"sys_enter_read"));

    // Server and a plain curl client.
    let mut server = Proc(
        Command::new(&py)
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut server_out = BufReader::new(server.0.stdout.take().unwrap());
    // "Serving HTTP on 127.0.0.1 port 43567 (http://127.0.0.1:43567/) ..."
    let banner = read_line(&mut server_out);
    let port: u16 = banner
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected http.server banner {banner:?}"));

    let curl =
        Command::new("curl").args(["-sS", "-o", "/dev/null", &format!("http://127.0.0.1:{port}/")]).spawn().unwrap();
    let curl_pid = curl.id();
    let status = Proc(curl).0.wait().unwrap();
    assert!(status.success(), "curl failed: {status}");

    // The agent's own traffic (this test process) is never captured.
    {
        let mut own = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        own.write_all(b"GET /own-traffic HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = Vec::new();
        own.read_to_end(&mut reply).unwrap();
        assert!(reply.starts_with(b"HTTP/1.0 404"));
    }

    let big_curl = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", &format!("http://127.0.0.1:{port}/big.bin")])
        .status()
        .unwrap();
    assert!(big_curl.success());

    let request_file = dir.join("request.txt");
    std::fs::write(&request_file, SENDFILE_REQUEST).unwrap();
    let client = Command::new(&py)
        .args(["-u", "-c", CLIENT, &port.to_string(), request_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(client.status.success(), "client script: {}", String::from_utf8_lossy(&client.stderr));
    let fork_child: u32 = String::from_utf8_lossy(&client.stdout).trim().parse().unwrap();

    // Files and pipes: never data events.
    let file = dir.join("file.txt");
    std::fs::write(&file, "GET /file-marker HTTP/1.1\r\n\r\n").unwrap();
    let cat = Command::new("cat").arg(&file).stdout(Stdio::piped()).spawn().unwrap();
    let cat_pid = cat.id();
    let mut cat = Proc(cat);
    let mut cat_out = Vec::new();
    cat.0.stdout.take().unwrap().read_to_end(&mut cat_out).unwrap();
    assert!(cat.0.wait().unwrap().success());
    assert!(cat_out.starts_with(b"GET /file-marker"));
    let pipe = Command::new("sh")
        .args(["-c", "printf 'GET /pipe-marker HTTP/1.1\\r\\n\\r\\n' | cat | cat > /dev/null"])
        .status()
        .unwrap();
    assert!(pipe.success());

    // Pre-agent sockets.
    writeln!(legacy_in, "go").unwrap();
    let fds = read_line(&mut legacy_out);
    let mut fds = fds.split_whitespace().map(|f| f.parse::<u32>().unwrap());
    let (accepted_fd, client_fd) = (fds.next().unwrap(), fds.next().unwrap());

    let server_pid = server.pid();
    let legacy_pid = legacy.pid();
    let client_pid_of = |events: &[Ev]| {
        events.iter().find_map(|e| match e {
            Ev::Fork(p) if p.tgid == fork_child => Some(p.parent_tgid),
            _ => None,
        })
    };
    let mut events = Vec::new();
    collect_until(&mut source, &mut events, |ev| {
        let curl_done = opens(ev, curl_pid, Role::Client).iter().all(|c| closed(ev, c.conn_id))
            && !opens(ev, curl_pid, Role::Client).is_empty();
        let script = client_pid_of(ev);
        let script_exited = script.is_some_and(|p| ev.iter().any(|e| matches!(e, Ev::Exit(x) if x.tgid == p)));
        // The pre-agent sockets: the listener predates the probes and its
        // accept passes no address; the kernel reads both from the socket.
        let legacy = ev.iter().filter(|e| matches!(e, Ev::Open(c) if c.tgid == legacy_pid)).count() >= 2;
        curl_done && script_exited && legacy
    })
    .await;
    eprintln!(
        "probes_live: {} events, {} programs attached: {}",
        events.len(),
        probes.attached().len(),
        probes.attached().join(",")
    );
    if std::env::var_os("PROBES_LIVE_DUMP").is_some() {
        for e in &events {
            match e {
                Ev::Data(h, p) => eprintln!(
                    "data tgid={} fd={} conn={:#x} sys={} dir={} role={} {}/{} {:?}",
                    h.tgid,
                    h.fd,
                    h.conn_id,
                    h.syscall,
                    h.direction,
                    h.role,
                    h.captured_len,
                    h.total_len,
                    String::from_utf8_lossy(&p[..p.len().min(40)])
                ),
                other => eprintln!("{other:?}"),
            }
        }
    }
    let summary = || format!("{} events: {:#?}", events.len(), events.iter().take(60).collect::<Vec<_>>());

    // curl: one client connection to the server, request out, response in.
    let curl_conns = opens(&events, curl_pid, Role::Client);
    assert_eq!(curl_conns.len(), 1, "curl opens: {}", summary());
    let cc = curl_conns[0];
    assert_eq!(cc.family, libc::AF_INET as u8);
    assert_eq!(cc.peer_port, port);
    assert_eq!(&cc.peer_addr[..4], &[127, 0, 0, 1]);
    // Both ends read from the socket: userspace looks nothing up.
    assert_eq!(cc.flags & conn_event_flags::FROM_SOCKET, conn_event_flags::FROM_SOCKET);
    assert_eq!(&cc.local_addr[..4], &[127, 0, 0, 1]);
    assert_ne!(cc.local_port, 0);
    let out = data_on(&events, cc.conn_id, Direction::Egress);
    assert!(out.iter().any(|p| p.starts_with(b"GET / HTTP/1.1\r\n")), "curl egress: {out:?}");
    let back = data_on(&events, cc.conn_id, Direction::Ingress);
    assert!(back.iter().any(|p| p.starts_with(b"HTTP/1.0 200")), "curl ingress: {back:?}");
    assert!(closed(&events, cc.conn_id), "curl close missing: {}", summary());

    // The server side of the same exchange.
    let server_conns = opens(&events, server_pid, Role::Server);
    assert_eq!(server_conns.len(), 6, "server accepts (2 curl + 4 script conns; not the agent's): {}", summary());
    let sc = server_conns
        .iter()
        .find(|c| data_on(&events, c.conn_id, Direction::Ingress).iter().any(|p| p.starts_with(b"GET / ")))
        .unwrap_or_else(|| panic!("no server conn carried curl's request: {}", summary()));
    assert_eq!(&sc.peer_addr[..4], &[127, 0, 0, 1]);
    assert_ne!(sc.conn_id, cc.conn_id);
    // The two ends of one connection, as each side's socket has them.
    assert_eq!((sc.local_port, sc.peer_port), (port, cc.local_port), "server {sc:?} client {cc:?}");
    assert_eq!(sc.flags & conn_event_flags::FROM_SOCKET, conn_event_flags::FROM_SOCKET);
    let replies = data_on(&events, sc.conn_id, Direction::Egress);
    assert!(
        replies.iter().any(|p| p.starts_with(b"HTTP/1.0 200") || p.starts_with(b"HTTP/1.1 200")),
        "server egress: {replies:?}"
    );
    // Payloads beyond the capture size: the first 4096 bytes, exactly.
    let body = data(&events, server_pid)
        .find(|(h, _)| h.direction == Direction::Egress as u8 && h.total_len == BIG_LEN as u64)
        .unwrap_or_else(|| panic!("no {BIG_LEN}-byte send of big.bin: {}", summary()));
    assert_eq!(body.0.captured_len, 4096);
    assert_eq!(body.1, &big_file()[..4096]);
    for c in &server_conns {
        assert!(closed(&events, c.conn_id), "server close missing for {}: {}", c.conn_id, summary());
    }

    // iovec syscalls: the payload is the iovecs concatenated.
    let script_pid = client_pid_of(&events).unwrap_or_else(|| panic!("no fork event: {}", summary()));
    let script_data: Vec<_> = data(&events, script_pid).collect();
    let sendmsg = script_data.iter().find(|(h, _)| h.syscall == SyscallId::Sendmsg as u8);
    let (h, p) = sendmsg.unwrap_or_else(|| panic!("no sendmsg event: {}", summary()));
    assert_eq!(*p, b"GET /sendmsg HTTP/1.0\r\n\r\n");
    assert_eq!(h.total_len, p.len() as u64);
    assert_eq!(h.direction, Direction::Egress as u8);
    let writev = script_data.iter().find(|(h, _)| h.syscall == SyscallId::Writev as u8);
    assert_eq!(writev.map(|(_, p)| *p), Some(&b"GET /writev HTTP/1.0\r\n\r\n"[..]));
    let readv = script_data.iter().find(|(h, _)| h.syscall == SyscallId::Readv as u8);
    let (h, p) = readv.unwrap_or_else(|| panic!("no readv event: {}", summary()));
    assert!(p.starts_with(b"HTTP/1.0 404"), "readv payload {:?}", String::from_utf8_lossy(p));
    assert!(p.len() > 8, "readv must continue into the second iovec");
    assert_eq!(h.captured_len as usize, p.len());
    assert_eq!(h.direction, Direction::Ingress as u8);
    assert!(h.exit_ns >= h.enter_ns && h.enter_ns > 0);
    assert!(script_data.iter().any(|(h, p)| h.syscall == SyscallId::Recvmsg as u8 && p.starts_with(b"HTTP/1.0 404")));
    // MSG_PEEK: the peeked bytes are read again by recvmsg, so not reported.
    assert!(
        !script_data.iter().any(|(h, p)| h.syscall == SyscallId::Recvfrom as u8 && *p == b"HTTP/"),
        "peeked bytes reported"
    );
    // sendfile: no user buffer, the event only says how many bytes went out.
    let sf = script_data.iter().find(|(h, _)| h.syscall == SyscallId::Sendfile as u8);
    let (h, p) = sf.unwrap_or_else(|| panic!("no sendfile event: {}", summary()));
    assert_eq!((h.captured_len, h.total_len, p.len()), (0, SENDFILE_REQUEST.len() as u64, 0));
    assert_eq!(h.direction, Direction::Egress as u8);
    // writev beyond the capture size: the prefix spans both iovecs.
    let big = script_data
        .iter()
        .find(|(h, _)| h.syscall == SyscallId::Writev as u8 && h.total_len == 6000)
        .unwrap_or_else(|| panic!("no 6000-byte writev: {}", summary()));
    assert_eq!(big.0.captured_len, 4096);
    assert!(big.1.starts_with(b"POST /big HTTP/1.0\r\n"));
    assert!(big.1[..3000].ends_with(b"AAAA"));
    assert!(big.1[3000..].iter().all(|b| *b == b'B') && big.1.len() == 4096);
    // IPv6: both ends in the script, addresses in network order.
    let v6: Vec<ConnEvent> = events
        .iter()
        .filter_map(|e| match e {
            Ev::Open(c) if c.tgid == script_pid && c.family == libc::AF_INET6 as u8 => Some(*c),
            _ => None,
        })
        .collect();
    assert_eq!(v6.len(), 2, "IPv6 opens: {v6:?}");
    let loopback6 = std::net::Ipv6Addr::LOCALHOST.octets();
    assert!(v6.iter().all(|c| c.peer_addr == loopback6 && c.local_addr == loopback6), "{v6:?}");
    let v6_client = v6.iter().find(|c| c.role == Role::Client as u8).unwrap();
    assert_eq!(data_on(&events, v6_client.conn_id, Direction::Egress), vec![&b"ping6"[..]]);
    let v6_server = v6.iter().find(|c| c.role == Role::Server as u8).unwrap();
    assert_eq!(data_on(&events, v6_server.conn_id, Direction::Ingress), vec![&b"ping6"[..]]);
    // Four TCP connections to the server and one over IPv6; the UDP
    // "connection" is not one.
    assert_eq!(opens(&events, script_pid, Role::Client).len(), 5, "{}", summary());
    assert!(!events.iter().any(|e| matches!(e, Ev::Unverified(_))), "the kernel read every socket itself");

    // Fork of a tracked process is reported once (the thread is not), and
    // both exits.
    let forks: Vec<_> = events.iter().filter(|e| matches!(e, Ev::Fork(p) if p.parent_tgid == script_pid)).collect();
    assert_eq!(forks.len(), 1, "forks: {forks:?}");
    assert!(events.iter().any(|e| matches!(e, Ev::Exit(p) if p.tgid == fork_child)));
    assert!(events.iter().any(|e| matches!(e, Ev::Exit(p) if p.tgid == script_pid)));

    // Pre-agent sockets (a listener the probes never saw created, accept
    // without an address, a socket() before the probes): the kernel tells
    // them from files by their socket, and reads both ends.
    let legacy_opens: Vec<ConnEvent> = events
        .iter()
        .filter_map(|e| match e {
            Ev::Open(c) if c.tgid == legacy_pid => Some(*c),
            _ => None,
        })
        .collect();
    let srv = legacy_opens.iter().find(|c| c.role == Role::Server as u8);
    let srv = srv.unwrap_or_else(|| panic!("no legacy server open: {legacy_opens:?}"));
    let cli = legacy_opens.iter().find(|c| c.role == Role::Client as u8);
    let cli = cli.unwrap_or_else(|| panic!("no legacy client open: {legacy_opens:?}"));
    assert_eq!(srv.fd, accepted_fd);
    assert_eq!((cli.fd, cli.peer_port), (client_fd, legacy_port));
    assert_eq!(&cli.peer_addr[..4], &[127, 0, 0, 1]);
    assert_eq!((srv.local_port, srv.peer_port), (legacy_port, cli.local_port), "{legacy_opens:?}");
    let key = SockKey { tgid: legacy_pid, fd: client_fd };
    assert_eq!(maps.conn(key).map(|i| i.conn_id), Some(cli.conn_id));
    maps.forget(key, cli.conn_id).unwrap();
    assert!(maps.conn(key).is_none());

    // Userspace can track, mute and forget a descriptor itself.
    let info = waggle_common::ConnInfo {
        conn_id: 7 | waggle_common::USERSPACE_CONN_ID_BIT,
        role: Role::Client as u8,
        family: 2,
        flags: 0,
        tls: 0,
        _pad: [0; 4],
        req_remaining: 0,
        link: 0,
    };
    maps.track_conn(key, info).unwrap();
    // A decision about the descriptor's previous connection (closed, fd
    // reused) must not touch the connection that holds it now.
    let previous = 6 | waggle_common::USERSPACE_CONN_ID_BIT;
    maps.mute(key, previous).unwrap();
    assert_eq!(maps.conn(key).map(|i| i.flags), Some(0), "muted by a stale connection id");
    maps.forget(key, previous).unwrap();
    assert!(maps.conn(key).is_some(), "forgotten by a stale connection id");
    maps.mute(key, info.conn_id).unwrap();
    assert_eq!(maps.conn(key).map(|i| i.flags), Some(waggle_common::conn_flags::MUTED));
    maps.forget(key, info.conn_id).unwrap();
    assert!(maps.conn(key).is_none());
    maps.forget(key, info.conn_id).unwrap();
    maps.mute(key, info.conn_id).unwrap();

    // Files and pipes stayed out.
    assert!(data(&events, cat_pid).next().is_none(), "cat produced data events");
    assert!(
        !events.iter().any(|e| matches!(e, Ev::Data(_, p) if p.windows(6).any(|w| w == b"marker"))),
        "file or pipe payload captured"
    );
    // The agent's own syscalls are never captured.
    let me = std::process::id();
    assert!(!events.iter().any(|e| match e {
        Ev::Data(h, _) => h.tgid == me,
        Ev::Open(c) | Ev::Close(c) | Ev::Unverified(c) | Ev::Inherited(c) => c.tgid == me,
        Ev::Fork(p) | Ev::Exit(p) | Ev::Thread(p) => p.tgid == me || p.parent_tgid == me,
        Ev::Ctx(c) => c.tgid == me,
    }));
    // ... nor is the server's side of it: the kernel knew the connection
    // from the agent's connect() before the server accepted it.
    assert!(
        !events.iter().any(|e| matches!(e, Ev::Data(_, p) if p.starts_with(b"GET /own-traffic"))),
        "the server's side of the agent's own connection was captured"
    );

    let counters = probes.kernel_counters();
    let get = |c: Counter| counters.iter().find(|(k, _)| *k == c).map(|(_, v)| *v).unwrap_or(0);
    assert!(get(Counter::DataEvents) >= 8, "counters: {counters:?}");
    assert!(get(Counter::ConnsOpened) >= 6, "counters: {counters:?}");
    assert_eq!(get(Counter::EventsLost), 0, "counters: {counters:?}");
    assert!(get(Counter::OwnConnsSkipped) >= 1, "counters: {counters:?}");
    assert_eq!(get(Counter::SocketUnreadable), 0, "counters: {counters:?}");
    assert!(get(Counter::DataTruncated) >= 2, "counters: {counters:?}");
    drop(legacy_in);
    drop(probes);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("waggle-probes-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<html>hello</html>\n").unwrap();
    std::fs::write(dir.join("big.bin"), big_file()).unwrap();
    assert!(Path::new(&dir).is_dir());
    dir
}

const BIG_LEN: usize = 10_000;
const SENDFILE_REQUEST: &str = "GET /sendfile HTTP/1.0\r\n\r\n";

/// Served as /big.bin: no byte repeats within 251, so an off-by-some copy shows.
fn big_file() -> Vec<u8> {
    (0..BIG_LEN).map(|i| (i % 251) as u8).collect()
}

// ---- `waggle floor`, the benchmark's floor (`cargo xtask bench`): an empty
// program on exactly the tracepoints the agent's own programs take, gone
// again once it is told to stop.

/// Loaded programs named `waggle_floor`.
fn floor_programs() -> usize {
    aya::programs::loaded_programs().filter_map(Result::ok).filter(|p| p.name_as_str() == Some(FLOOR_PROGRAM)).count()
}

#[test]
#[ignore = "needs root and the eBPF object; run by `cargo xtask test`"]
fn the_floor_takes_every_tracepoint_the_agent_takes_and_leaves_none_behind() {
    let (probes, _source, _maps) = load_probes("floor_live", &ProbeConfig::default());
    // The agent's tracepoint programs are named after their tracepoints;
    // the others (sockops, sk_msg, the second programs on sys_exit_read and
    // sched_process_exec) are not tracepoints of their own.
    let agent: BTreeSet<String> = probes
        .attached()
        .iter()
        .filter(|name| ["sys_", "sched_", "task_"].iter().any(|p| name.starts_with(p)) && !name.starts_with("waggle_"))
        .map(|name| name.to_string())
        .collect();
    drop(probes);
    assert!(agent.len() >= 30, "the agent attached only {agent:?}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_waggle"))
        .arg("floor")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting waggle floor");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut floor = Proc(child);
    let mut lines = BufReader::new(stdout);
    let mut printed = Vec::new();
    loop {
        // It prints no empty line: "" is the end of its output.
        let line = read_line(&mut lines);
        assert!(!line.is_empty(), "waggle floor stopped before `ready`: {printed:?}");
        if line == "ready" {
            break;
        }
        printed.push(line);
    }
    assert_eq!(
        printed,
        [format!("attached {0} of {0}", agent.len())],
        "skipped tracepoints, or a count unlike the agent's"
    );
    assert_eq!(floor_programs(), 1, "one floor program, attached to every tracepoint");

    // SAFETY: kill(2) on the child's pid, which `floor` still owns.
    assert_eq!(unsafe { libc::kill(floor.pid() as i32, libc::SIGINT) }, 0);
    let status = floor.0.wait().expect("waiting for waggle floor");
    assert!(status.success(), "waggle floor exited with {status}");
    assert_eq!(floor_programs(), 0, "the floor program outlived `waggle floor`");
}
