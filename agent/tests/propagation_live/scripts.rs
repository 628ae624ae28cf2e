//! The python servers and clients the tests run (`python3 -u -c SCRIPT`):
//! neither they nor curl are this process, which the probes never trace.

/// Records and answers HTTP/1.1 requests; `/chain/<port>` and
/// `/chain-thread/<port>` first call GET /leaf on 127.0.0.1:<port> from the
/// handling thread or from a thread it spawns.
pub const SERVER: &str = r#"
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
pub const SINK: &str = r#"
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
pub const WRITES: &str = r#"
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
pub const NON_HTTP: &str = r#"
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
pub const STRESS: &str = r#"
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
pub const EARLY_CLIENT: &str = r#"
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

/// Prints the SO_COOKIE of a connection to argv[1] and holds it until stdin
/// closes (a traced process's client socket, for the sockmap checks).
pub const COOKIE_CLIENT: &str = r#"
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print(struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, 57, 8))[0], flush=True)
sys.stdin.read()
"#;

/// Serves HTTP on its first port (answers every request with a body of the
/// size in its path, and says how many traceparent lines it saw) and, on
/// its second, sends the next size from argv to each new connection at
/// once (a server that speaks first).
pub const FIONREAD_SERVER: &str = r#"
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
pub const FIONREAD_CLIENT: &str = r#"
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
