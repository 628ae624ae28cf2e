//! A Python service in the kernel matrix's guests: Debian's python3 with
//! just the standard-library modules `http.server` needs, as compiled
//! bytecode (no sources: the initramfs carries no timestamps for Python to
//! check them against), and a small `http.server` app. It answers
//! `/py/...` with a fixed body, and `/py/own` with an `X-Trace-Id` of its
//! own.
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::cmd::Cmd;

/// Debian's interpreter (package python3.11-minimal), at the same path in
/// the guest so it finds its library beside it.
pub const PYTHON: &str = "/usr/bin/python3.11";
/// Where the app is in the guest.
pub const APP: &str = "srv/app.py";
/// The trace id the app sets on `/py/own`.
pub const OWN_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// The app: `python3.11 -I -S /srv/app.py PORT READY_FILE`.
pub fn app() -> String {
    format!(
        r#"import http.server, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"python\n"
        self.send_response(200)
        if self.path == "/py/own":
            self.send_header("X-Trace-Id", "{OWN_TRACE_ID}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
open(sys.argv[2], "w").close()
server.serve_forever()
"#
    )
}

/// Runs the app's code once on a port of its own, one request on it (some
/// modules are imported only then: encodings.idna at bind, for one), then
/// lists, as `source|compiled` lines, every module imported.
const LIST_MODULES: &str = r#"
import importlib.util, os, socket, sys, threading
import http.server
app = open(sys.argv[1]).read().split("server = ")[0]
exec(app)
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.handle_request, daemon=True).start()
with socket.create_connection(server.server_address) as c:
    c.sendall(b"GET /py/own HTTP/1.1\r\nHost: x\r\n\r\n")
    c.recv(4096)
server.server_close()
for m in list(sys.modules.values()):
    f = getattr(m, "__file__", None) or ""
    if f.endswith(".py") and f.startswith(sys.prefix):
        print(f + "|" + importlib.util.cache_from_source(f))
    elif f.endswith(".so"):
        print(f + "|" + f)
"#;

/// (guest path, host file) of every library file the app needs: each
/// module's bytecode where its source would be (`os.pyc` beside where
/// `os.py` was), extension modules as they are.
pub fn library_files(scratch: &Path) -> Result<Vec<(String, String)>> {
    let app_file = scratch.join("app.py");
    std::fs::write(&app_file, app())?;
    let out = Cmd::new(PYTHON)
        .args(["-I", "-S", "-c", LIST_MODULES])
        .arg(&app_file)
        .probe()
        .with_context(|| format!("{PYTHON} could not list the modules http.server needs (package python3.11)"))?;
    let mut files = Vec::new();
    for line in out.lines() {
        let Some((source, compiled)) = line.split_once('|') else { continue };
        let guest = match source.strip_suffix(".py") {
            Some(stem) => format!("{stem}.pyc"),
            None => source.to_owned(),
        };
        if !std::path::Path::new(compiled).is_file() {
            bail!("{compiled} is missing: Debian compiles the standard library at install (py3compile)");
        }
        files.push((guest.trim_start_matches('/').to_owned(), compiled.to_owned()));
    }
    if !files.iter().any(|(g, _)| g.ends_with("http/server.pyc")) {
        bail!("{PYTHON} listed no http/server module: {out}");
    }
    Ok(files)
}
