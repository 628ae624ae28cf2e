// HTTP server for `cargo xtask bench`: the work of flask_app.py on Node.js's
// own http module, served bare, watched by waggle, and under
// `--require @opentelemetry/auto-instrumentations-node/register` (the
// in-process SDK a Node.js user would otherwise pick).
//
// Usage: node node_app.js PORT. Prints `port N` once it listens.
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');

const BLOCK = Buffer.alloc(4096, 0).map((_, i) => i % 256); // 4 KiB

function work(item) {
  const digest = crypto.createHash('sha256');
  for (let i = 0; i < 8; i++) digest.update(BLOCK);
  let squares = 0;
  for (let i = 0; i < 200; i++) squares += i * i;
  return JSON.stringify({ item, digest: digest.digest('hex').slice(0, 16), squares });
}

const server = http.createServer((req, res) => {
  const m = /^\/work\/(\d+)$/.exec(req.url);
  if (m === null) {
    res.writeHead(req.url === '/health' ? 200 : 404, { 'Content-Type': 'text/plain' });
    res.end(req.url === '/health' ? 'ok' : 'not found');
    return;
  }
  const body = work(Number(m[1]));
  res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
});

const port = Number(process.argv[2]);
server.listen(port, '127.0.0.1', () => console.log(`port ${port}`));

// The SDK's register hook handles SIGTERM by flushing, which stops Node's
// default exit on the signal: close the server so the process ends once the
// flush is done (the SDK also flushes on 'beforeExit').
process.on('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 5000).unref();
});
