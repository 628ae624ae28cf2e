//! Real servers to trace: Python's `http.server`, the fixture app
//! (`tests/fixtures/app.py`, a threaded HTTP/1.1 server with test routes) and
//! nginx. Each listens on a fresh 127.0.0.1 port, is ready (accepts TCP) when
//! the constructor returns, and is killed with its process group on drop.
use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::env::{can_connect, child_pids, fixture, free_port, poll_until, python, tail, Proc};

pub const NGINX_BIN: &str = "/usr/sbin/nginx";
pub const PHP_FPM_BIN: &str = "/usr/sbin/php-fpm8.2";
const READY_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Server {
    proc: Proc,
    port: u16,
    dir: tempfile::TempDir,
    /// service.name the agent should give this server's spans.
    pub service_name: &'static str,
}

impl Server {
    /// `python3 -m http.server --bind 127.0.0.1 PORT` serving a temp dir that
    /// holds `index.html` ("hello\n") and `data.txt` (1000 bytes).
    #[track_caller]
    pub fn python_http_server() -> Server {
        let dir = temp_dir("waggle-pyhttp-");
        write(&dir.path().join("index.html"), b"hello\n");
        write(&dir.path().join("data.txt"), &[b'x'; 1000]);
        Server::launch("http.server", dir, |port, dir| {
            let mut cmd = Command::new(python());
            cmd.args(["-m", "http.server", "--bind", "127.0.0.1"]).arg(port.to_string()).current_dir(dir);
            cmd
        })
    }

    /// [`python_http_server`](Self::python_http_server) started inside the
    /// cgroup whose `cgroup.procs` is `procs` (the shell moves itself there,
    /// then execs python, so the server is in it from its first
    /// instruction), with `env` added.
    #[track_caller]
    pub fn python_http_server_in_cgroup(procs: &Path, env: &[(&str, &str)]) -> Server {
        let dir = temp_dir("waggle-pyhttp-");
        write(&dir.path().join("index.html"), b"hello\n");
        Server::launch("http.server", dir, |port, dir| {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", "echo 0 > \"$1\" && shift && exec \"$@\"", "sh"])
                .arg(procs)
                .arg(python())
                .args(["-m", "http.server", "--bind", "127.0.0.1"])
                .arg(port.to_string())
                .current_dir(dir)
                .envs(env.iter().copied());
            cmd
        })
    }

    /// `tests/fixtures/ok_server.py` (service name `ok_server`): every GET
    /// gets 200 "ok", HTTP/1.1 with keep-alive, a thread per connection;
    /// the downstream service of the stack tests.
    #[track_caller]
    pub fn python_ok_server() -> Server {
        Server::ok_server(&[])
    }

    /// The same server accepting each connection and forking a child to
    /// serve it, which reads the request (accept-then-fork).
    #[track_caller]
    pub fn python_forking_ok_server() -> Server {
        Server::ok_server(&["fork"])
    }

    #[track_caller]
    fn ok_server(args: &'static [&'static str]) -> Server {
        let dir = temp_dir("waggle-ok-");
        Server::launch("ok_server", dir, move |port, _| {
            let mut cmd = Command::new(python());
            cmd.arg("-u").arg(fixture("ok_server.py")).arg(port.to_string()).args(args);
            cmd
        })
    }

    /// A python server answering every GET with 200 "ok", run by Debian's
    /// python3 as `nobody` (another uid than the agent's: reading its
    /// /proc/<pid>/environ then needs the agent's CAP_SYS_PTRACE), with
    /// `env` added.
    #[track_caller]
    pub fn python_ok_server_as_nobody(env: &[(&str, &str)]) -> Server {
        // Passed as text: nobody may not be able to read the checkout.
        let script = std::fs::read_to_string(fixture("ok_server.py")).unwrap_or_else(|e| panic!("ok_server.py: {e}"));
        let dir = temp_dir("waggle-nobody-");
        Server::launch("ok-server", dir, |port, _| {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "/usr/bin/python3", "-c", &script])
                .arg(port.to_string())
                .current_dir("/")
                .envs(env.iter().copied());
            cmd
        })
    }

    /// The fixture app (service name `app`): see `tests/fixtures/app.py` for
    /// its routes.
    #[track_caller]
    pub fn app() -> Server {
        let dir = temp_dir("waggle-app-");
        Server::launch("app", dir, |port, _| {
            let mut cmd = Command::new(python());
            cmd.arg("-u").arg(fixture("app.py")).arg(port.to_string());
            cmd
        })
    }

    /// nginx (one master, one worker) with `location /` returning "ok\n" and
    /// `location /missing` returning 404.
    #[track_caller]
    pub fn nginx() -> Server {
        Server::nginx_with_env(&[])
    }

    /// [`nginx`](Self::nginx) with `env` added to its environment (which
    /// nginx writes its process title over: `/proc/<pid>/environ` of the
    /// master and the worker no longer shows it).
    #[track_caller]
    pub fn nginx_with_env(env: &[(&str, &str)]) -> Server {
        assert!(Path::new(NGINX_BIN).is_file(), "{NGINX_BIN} not found: install nginx (apt-get install nginx-light)");
        let dir = temp_dir("waggle-nginx-");
        Server::launch("nginx", dir, |port, dir| {
            let conf = dir.join("nginx.conf");
            write(&conf, nginx_conf(dir, port).as_bytes());
            let mut cmd = Command::new(NGINX_BIN);
            // -e: nginx opens its error log before reading the config; keep
            // even that one in the temp dir.
            cmd.arg("-p").arg(dir).arg("-e").arg(dir.join("error.log")).arg("-c").arg(&conf);
            cmd.envs(env.iter().copied());
            cmd
        })
        .with_worker()
    }

    /// `tests/fixtures/env_rewriter.py`: the ok server, started with
    /// `OTEL_SERVICE_NAME=service_name`, which writes `rewritten` (as long)
    /// over that value in its environment area before it listens.
    #[track_caller]
    pub fn python_env_rewriter(service_name: &str, rewritten: &str) -> Server {
        let dir = temp_dir("waggle-envrw-");
        Server::launch("env_rewriter", dir, |port, _| {
            let mut cmd = Command::new(python());
            cmd.arg("-u")
                .arg(fixture("env_rewriter.py"))
                .arg(port.to_string())
                .arg(rewritten)
                .env("OTEL_SERVICE_NAME", service_name);
            cmd
        })
    }

    /// [`nginx`](Self::nginx) serving HTTPS with a self-signed certificate
    /// for 127.0.0.1 (`crate::tls::self_signed_cert`, in its temp dir:
    /// `cert.pem`, which clients may trust).
    #[track_caller]
    pub fn nginx_https() -> Server {
        Server::nginx_https_protocols("")
    }

    /// [`nginx_https`](Self::nginx_https) with TLS 1.3 on, as nginx has it
    /// by default from 1.23.4 (Debian 12's 1.22 stops at TLS 1.2).
    #[track_caller]
    pub fn nginx_https_tls13() -> Server {
        Server::nginx_https_protocols("\n        ssl_protocols TLSv1.2 TLSv1.3;")
    }

    /// `protocols`: extra directives after the certificate's.
    #[track_caller]
    fn nginx_https_protocols(protocols: &'static str) -> Server {
        assert!(Path::new(NGINX_BIN).is_file(), "{NGINX_BIN} not found: install nginx (apt-get install nginx-light)");
        let dir = temp_dir("waggle-nginx-tls-");
        let (cert, key) = crate::tls::self_signed_cert(dir.path());
        Server::launch("nginx", dir, |port, dir| {
            let conf = dir.join("nginx.conf");
            let tls = format!(
                "ssl_certificate {};\n        ssl_certificate_key {};{protocols}",
                cert.display(),
                key.display()
            );
            let locations = format!("{tls}\n        {NGINX_LOCATIONS}");
            write(&conf, nginx_conf_listen(dir, port, " ssl", &locations).as_bytes());
            let mut cmd = Command::new(NGINX_BIN);
            cmd.arg("-p").arg(dir).arg("-e").arg(dir.join("error.log")).arg("-c").arg(&conf);
            cmd
        })
        .with_worker()
    }

    /// `https://127.0.0.1:PORT{path}`.
    pub fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Debian's php-fpm 8.2 (service name `php-fpm8.2`) serving `script` as
    /// the only PHP file (`index.php` in its temp dir) over TCP FastCGI on
    /// 127.0.0.1: a private pool of two static workers, run as root (`-R`)
    /// in the foreground so its pid is the master's.
    #[track_caller]
    pub fn php_fpm(script: &str) -> Server {
        assert!(Path::new(PHP_FPM_BIN).is_file(), "{PHP_FPM_BIN} not found: install php-fpm (apt-get install php-fpm)");
        let dir = temp_dir("waggle-php-fpm-");
        write(&dir.path().join("index.php"), script.as_bytes());
        Server::launch("php-fpm8.2", dir, |port, dir| {
            let conf = dir.join("php-fpm.conf");
            let d = dir.display();
            let pool = format!(
                "[global]\npid = {d}/php-fpm.pid\nerror_log = {d}/php-fpm.log\ndaemonize = no\n\
                 [app]\nlisten = 127.0.0.1:{port}\npm = static\npm.max_children = 2\n\
                 catch_workers_output = yes\nphp_admin_value[error_log] = {d}/php-errors.log\n"
            );
            write(&conf, pool.as_bytes());
            let mut cmd = Command::new(PHP_FPM_BIN);
            // Debian's php.ini and conf.d load the extensions (pdo_mysql,
            // redis) the packages installed.
            cmd.args(["-R", "-F", "-y"]).arg(&conf);
            cmd
        })
    }

    /// nginx (one master, one worker) passing every request to `fpm` over
    /// FastCGI with Debian's `fastcgi_params`, `SCRIPT_FILENAME` its
    /// `index.php` (a front controller: the URI stays the request's).
    #[track_caller]
    pub fn nginx_fastcgi(fpm: &Server) -> Server {
        assert!(Path::new(NGINX_BIN).is_file(), "{NGINX_BIN} not found: install nginx (apt-get install nginx-light)");
        let dir = temp_dir("waggle-nginx-");
        let location = format!(
            "location / {{\n            include /etc/nginx/fastcgi_params;\n            \
             fastcgi_param SCRIPT_FILENAME {}/index.php;\n            \
             fastcgi_param SCRIPT_NAME /index.php;\n            \
             fastcgi_pass 127.0.0.1:{};\n        }}",
            fpm.dir().display(),
            fpm.port()
        );
        Server::launch("nginx", dir, |port, dir| {
            let conf = dir.join("nginx.conf");
            write(&conf, nginx_conf_with(dir, port, &location).as_bytes());
            let mut cmd = Command::new(NGINX_BIN);
            cmd.arg("-p").arg(dir).arg("-e").arg(dir.join("error.log")).arg("-c").arg(&conf);
            cmd
        })
        .with_worker()
    }

    #[track_caller]
    fn launch(service_name: &'static str, dir: tempfile::TempDir, build: impl Fn(u16, &Path) -> Command) -> Server {
        Server::launch_within(service_name, dir, READY_TIMEOUT, build)
    }

    /// Starts what `build` makes for a fresh port, its output in `dir`'s
    /// `server.log`, and waits up to `timeout` for it to accept.
    #[track_caller]
    pub(crate) fn launch_within(
        service_name: &'static str,
        dir: tempfile::TempDir,
        timeout: Duration,
        build: impl Fn(u16, &Path) -> Command,
    ) -> Server {
        // The port is free when picked but may be taken before the server
        // binds it: retry with another one a few times.
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = dir.path().join("server.log");
            let out = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
            let err = out.try_clone().unwrap_or_else(|e| panic!("dup server log: {e}"));
            let mut cmd = build(port, dir.path());
            cmd.stdin(Stdio::null()).stdout(out).stderr(err);
            let mut proc = Proc::spawn(service_name, &mut cmd);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut exited = None;
            let ready = poll_until(timeout, || {
                if can_connect(addr) {
                    return true;
                }
                exited = proc.try_wait();
                exited.is_some()
            });
            if ready && exited.is_none() {
                return Server { proc, port, dir, service_name };
            }
            last_err = match exited {
                Some(st) => format!("{service_name} exited with {st}; log:\n{}", tail(&log, 30)),
                None => format!("{service_name} did not accept on {addr} within {timeout:?}; log:\n{}", tail(&log, 30)),
            };
        }
        panic!("starting {service_name}: {last_err}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// nginx accepts on its master's listening socket before the master
    /// has forked its worker: a test that took `pids()` then would miss the
    /// worker, which serves every request (a test flaked so). Waits, as
    /// long as a start may take, until the worker is there.
    #[track_caller]
    fn with_worker(self) -> Server {
        let found = poll_until(READY_TIMEOUT, || !child_pids(self.pid()).is_empty());
        assert!(found, "{} (pid {}) forked no worker within {READY_TIMEOUT:?}", self.service_name, self.pid());
        self
    }

    /// Pid of the process we started (nginx: the master).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The started process and its direct children (nginx's worker).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        pids.extend(child_pids(self.pid()));
        pids
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's combined stdout/stderr (python's access log, nginx's
    /// startup errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

/// What [`Server::nginx`] and [`Server::nginx_https`] serve.
const NGINX_LOCATIONS: &str = "location / { return 200 \"ok\\n\"; }\n        location /missing { return 404; }";

fn nginx_conf(dir: &Path, port: u16) -> String {
    nginx_conf_with(dir, port, NGINX_LOCATIONS)
}

fn nginx_conf_with(dir: &Path, port: u16, locations: &str) -> String {
    nginx_conf_listen(dir, port, "", locations)
}

/// `listen_options` follow the address on the `listen` line (" ssl").
fn nginx_conf_listen(dir: &Path, port: u16, listen_options: &str, locations: &str) -> String {
    let d = dir.display();
    // `user root`: as root nginx would switch its worker to nobody, who
    // cannot enter the 0700 temp dir.
    format!(
        r#"daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port}{listen_options};
        {locations}
    }}
}}
"#
    )
}

#[track_caller]
fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap_or_else(|e| panic!("creating a temp dir: {e}"))
}

#[track_caller]
fn write(path: &PathBuf, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
