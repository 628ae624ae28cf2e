//! The fixture services: A (python, calling B and PostgreSQL), B (node.js)
//! and a plain python HTTP server, each started and waited for.
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use waggle_e2e::{
    db::{venv_python, Postgres},
    env::{tail, wait_for_port_line},
    fixture, Proc,
};

pub const SERVICE_A: &str = "service-a";
pub const SERVICE_B: &str = "service-b";

pub const SERVICE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// node.js: `/usr/bin/node`, else `node` on PATH.
#[track_caller]
pub fn node() -> PathBuf {
    for candidate in ["/usr/bin/node", "/usr/local/bin/node", "/usr/bin/nodejs"] {
        if Path::new(candidate).is_file() {
            return PathBuf::from(candidate);
        }
    }
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("node")).find(|p| p.is_file()));
    found.unwrap_or_else(|| {
        panic!("node.js not found: install Debian package nodejs (`cargo xtask test` installs the e2e dependencies)")
    })
}

/// A fixture service that prints `port <n>` on stdout once it listens.
/// Killed with its process group on drop.
pub struct Service {
    pub proc: Proc,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Service {
    #[track_caller]
    pub fn start(name: &str, mut cmd: Command) -> Service {
        let dir = tempfile::Builder::new()
            .prefix(&format!("waggle-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir for {name}: {e}"));
        let out_path = dir.path().join("stdout");
        let err_path = dir.path().join("stderr");
        let out = File::create(&out_path).unwrap_or_else(|e| panic!("creating {}: {e}", out_path.display()));
        let err = File::create(&err_path).unwrap_or_else(|e| panic!("creating {}: {e}", err_path.display()));
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let mut proc = Proc::spawn(name, &mut cmd);
        match wait_for_port_line(&mut proc, &out_path, SERVICE_START_TIMEOUT) {
            Ok(port) => Service { proc, port, dir },
            Err(Some(st)) => panic!("{name} exited with {st} before listening; stderr:\n{}", tail(&err_path, 30)),
            Err(None) => {
                panic!("{name} printed no port within {SERVICE_START_TIMEOUT:?}; stderr:\n{}", tail(&err_path, 30))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// For a service serving HTTPS ([`start_a_https`]).
    pub fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    pub fn stderr(&self) -> String {
        tail(&self.dir.path().join("stderr"), 30)
    }
}

/// Service B. `OTEL_SERVICE_NAME` names it in the resource (the agent reads
/// the variable from /proc; nothing in the process uses it).
#[track_caller]
pub fn start_b() -> Service {
    let mut cmd = Command::new(node());
    cmd.arg(fixture("propagation/service_b.js")).env("OTEL_SERVICE_NAME", SERVICE_B);
    Service::start("service-b", cmd)
}

/// Service A, calling `b` and `pg`; `keepalive`: one connection to B opened
/// (and used once) at start-up, shared by every request.
#[track_caller]
pub fn start_a(b: &Service, pg: &Postgres, keepalive: bool) -> Service {
    Service::start("service-a", a_command(b, pg, keepalive))
}

/// Service A serving HTTPS with `cert`/`key` (its calls to B and PostgreSQL
/// stay plaintext).
#[track_caller]
pub fn start_a_https(b: &Service, pg: &Postgres, cert: &Path, key: &Path) -> Service {
    let mut cmd = a_command(b, pg, false);
    cmd.arg("--tls").arg(cert).arg(key);
    Service::start("service-a", cmd)
}

fn a_command(b: &Service, pg: &Postgres, keepalive: bool) -> Command {
    let mut cmd = Command::new(venv_python());
    cmd.arg("-u")
        .arg(fixture("propagation/service_a.py"))
        .arg(b.port.to_string())
        .arg(pg.port().to_string())
        .env("OTEL_SERVICE_NAME", SERVICE_A);
    if keepalive {
        cmd.arg("--keepalive");
    }
    cmd
}
