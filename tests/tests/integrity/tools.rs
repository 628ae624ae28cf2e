//! The external programs the suite drives: finding them, building the Java
//! and Go clients, and nginx's configuration.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use waggle_e2e::{fixture, run_client};

pub const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

/// The first of `candidates` that exists, else a panic naming the package.
#[track_caller]
pub fn tool(candidates: &[&str], package: &str) -> PathBuf {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "{} not found: install Debian package {package} (`cargo xtask test` installs the e2e dependencies)",
            candidates[0]
        )
    })
}

/// Compiles the Java client into `dir`.
#[track_caller]
pub fn build_java(javac: &Path, dir: &Path) {
    let mut cmd = Command::new(javac);
    cmd.arg("-d").arg(dir).arg(fixture("integrity/IntegrityClient.java"));
    let run = run_client("javac", &mut cmd, BUILD_TIMEOUT);
    assert!(run.status.success(), "javac failed: {}\n{}", run.stdout, run.stderr);
}

/// Builds the Go client into `dir/go_client`, offline, with caches in `dir`.
#[track_caller]
pub fn build_go(go: &Path, dir: &Path) -> PathBuf {
    let bin = dir.join("go_client");
    let mut cmd = Command::new(go);
    cmd.arg("build").arg("-o").arg(&bin).arg(fixture("integrity/go_client.go"));
    cmd.current_dir(dir)
        .env("HOME", dir)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GO111MODULE", "off");
    let run = run_client("go build", &mut cmd, BUILD_TIMEOUT);
    assert!(run.status.success(), "go build failed: {}\n{}", run.stdout, run.stderr);
    bin
}

/// nginx proxying everything to the recording server on `upstream` over
/// keep-alive HTTP/1.1 connections. The application's traceparent arrives
/// as X-App-Traceparent and leaves as traceparent; an incoming traceparent
/// (the kernel's, in curl's request) is dropped.
pub fn nginx_conf(dir: &Path, port: u16, upstream: u16) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 16m;
    client_body_buffer_size 2m;
    large_client_header_buffers 4 64k;
    upstream rec {{ server 127.0.0.1:{upstream}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://rec;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header traceparent $http_x_app_traceparent;
            proxy_set_header X-App-Traceparent "";
        }}
    }}
}}
"#
    )
}
