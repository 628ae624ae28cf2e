# Clients that recorded the captures through record_proxy.py (proxy on 21212), memcached 1.6.18:
# text_session: plain sockets; pymemcache: pymemcache 4.0 (see pymemcache_client below)
import socket, sys
s = socket.create_connection(("127.0.0.1", 21212))
f = s.makefile("rb")
def cmd(line, data=None, lines_until=None, noreply=False):
    out = line.encode() + b"\r\n"
    if data is not None: out += data + b"\r\n"
    s.sendall(out)
    if noreply: return
    resp = []
    while True:
        l = f.readline(); resp.append(l)
        if l.startswith(b"VALUE"):
            n = int(l.split()[3]); resp.append(f.read(n + 2)); continue
        if lines_until is None or l.strip() in (b"END", b"ERROR") or l.startswith(b"CLIENT_ERROR") or l.startswith(b"SERVER_ERROR"):
            break
    print(line[:40], [r[:40] for r in resp])
cmd("set user:1 0 0 14", b"secret-value-1")
cmd("get user:1", lines_until=True)
cmd("get missing", lines_until=True)
cmd("gets user:1 missing user:2", lines_until=True)
cmd("add user:1 0 0 3", b"abc")
cmd("set n 5 60 2", b"10")
cmd("incr n 5"); cmd("decr n 100"); cmd("incr missing 1")
cmd("touch n 120"); cmd("gat 30 n user:1", lines_until=True)
cmd("append user:1 0 0 3", b"-ap"); cmd("prepend user:1 0 0 3", b"pp-")
cmd("cas user:1 0 0 2 999", b"xx")
cmd("delete n"); cmd("delete n")
cmd("set quiet 0 0 12 noreply", b"secret-quiet", noreply=True)
cmd("get quiet", lines_until=True)
cmd("bogus command")
cmd("set bad 0 0 3", b"toolong")
cmd("version"); cmd("verbosity 1")
cmd("set big 0 0 20000", b"b" * 20000)
cmd("get big", lines_until=True)
cmd("stats", lines_until=True)
cmd("flush_all")
s.sendall(b"quit\r\n")

def pymemcache_client():
    from pymemcache.client.base import Client
    c = Client(("127.0.0.1", 21212))
    c.set("pm:1", "secret-pm-1")              # noreply by default
    c.set("pm:2", "secret-pm-2", noreply=False)
    print(c.get("pm:1"), c.get_many(["pm:1", "pm:2", "pm:none"]))
    print(c.incr("pm:n", 1), c.add("pm:2", "x", noreply=False), c.delete("pm:1", noreply=False))
    c.close()
