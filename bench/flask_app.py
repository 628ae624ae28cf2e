"""Flask app for `cargo xtask bench`: one route doing a little real work.

Served by gunicorn sync workers, once bare, once watched by waggle and once
under `opentelemetry-instrument` (the in-process SDK a user would otherwise
pick). The work is fixed so the three runs differ only by the tracing.
"""
import hashlib
import json

from flask import Flask, Response

app = Flask(__name__)

_BLOCK = bytes(range(256)) * 16  # 4 KiB


@app.route("/work/<int:item>")
def work(item: int) -> Response:
    digest = hashlib.sha256()
    for _ in range(8):
        digest.update(_BLOCK)
    body = json.dumps({"item": item, "digest": digest.hexdigest()[:16], "squares": sum(i * i for i in range(200))})
    return Response(body, mimetype="application/json")


@app.route("/health")
def health() -> str:
    return "ok"
