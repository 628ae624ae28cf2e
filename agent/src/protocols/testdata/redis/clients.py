# Clients that recorded the redispy_* captures through record_proxy.py (proxy on 16380):
# python3 clients.py pipeline|resp3|pubsub|pubsub2|big   (redis-py 8.1, redis-server 7.0.15)
import redis, sys, threading, time
port = 16380
mode = sys.argv[1]
if mode == "pipeline":
    r = redis.Redis(port=port)
    p = r.pipeline(transaction=False)
    for i in range(5):
        p.set(f"pk:{i}", f"secret-pipe-{i}")
    p.get("pk:1"); p.hgetall("nohash"); p.incr("pk:0"); p.delete("pk:2"); p.mget("pk:3", "pk:4", "nokey")
    print(p.execute(raise_on_error=False))
    t = r.pipeline(transaction=True)
    t.set("tx:a", "secret-tx-a"); t.incr("tx:n"); t.get("tx:a")
    print(t.execute())
elif mode == "resp3":
    r = redis.Redis(port=port, protocol=3)
    r.set("r3:k", "secret-r3"); print(r.get("r3:k"))
    r.hset("r3:h", mapping={"a": "secret-h1", "b": "2"}); print(r.hgetall("r3:h"))
    r.sadd("r3:s", "x", "y"); print(r.smembers("r3:s"))
    r.zadd("r3:z", {"m": 1.5}); print(r.zscore("r3:z", "m"))
    try: r.lpush("r3:k", "x")
    except redis.ResponseError as e: print("err", e)
    print(r.exists("nope"))
elif mode in ("pubsub", "pubsub2"):
    r = redis.Redis(port=port, protocol=3 if mode == "pubsub" else 2)
    ps = r.pubsub()
    ps.subscribe("chan-1")
    got = []
    def pub():
        time.sleep(0.3)
        r2 = redis.Redis(port=16379)
        for i in range(3): r2.publish("chan-1", f"secret-msg-{i}")
    threading.Thread(target=pub).start()
    while len(got) < 4:
        m = ps.get_message(timeout=2)
        if m: got.append(m)
    ps.unsubscribe("chan-1")
    while True:
        m = ps.get_message(timeout=1)
        if m is None or m["type"] == "unsubscribe": break
    print(got)
    # the connection goes back to normal commands
    ps.connection.send_command("PING")
    print(ps.connection.read_response())
elif mode == "big":
    r = redis.Redis(port=port)
    r.set("big:1", "s" * 20000); print(len(r.get("big:1")))
    r.delete("big:l"); r.rpush("big:l", *[f"item-{i}" for i in range(1000)])
    print(len(r.lrange("big:l", 0, -1)))
    print(r.get("big:none"))
