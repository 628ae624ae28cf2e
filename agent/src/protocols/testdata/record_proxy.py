# Recording TCP proxy: each connection's recv() chunks go to OUTDIR/<prefix>-<n>.bin as
# records: 1 byte direction ('>' client->server, '<' server->client), u32 BE length, bytes.
import socket, struct, sys, threading, itertools
listen_port, up_port, outdir, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
counter = itertools.count(1)
def handle(c):
    n = next(counter)
    u = socket.create_connection(("127.0.0.1", up_port))
    f = open(f"{outdir}/{prefix}-{n}.bin", "wb")
    lock = threading.Lock()
    def pump(src, dst, d):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with lock:
                    f.write(d + struct.pack(">I", len(data)) + data); f.flush()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try: dst.shutdown(socket.SHUT_WR)
            except OSError: pass
    t1 = threading.Thread(target=pump, args=(c, u, b">")); t2 = threading.Thread(target=pump, args=(u, c, b"<"))
    t1.start(); t2.start(); t1.join(); t2.join(); f.close(); c.close(); u.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", listen_port)); s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
