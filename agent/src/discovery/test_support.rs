//! Child processes for discovery's tests: a Python interpreter that holds
//! sockets or serves HTTP, killed on drop.
use std::{
    fs,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use rustix::process::{kill_process, Pid, Signal};

/// Kills its process (and any extra pids it learned) on drop, so a failed
/// assertion never leaves a process behind.
pub(super) struct Guard {
    pub(super) child: Child,
    pub(super) extra: Vec<u32>,
}

impl Guard {
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for &pid in &self.extra {
            if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real interpreter, not a pyenv shim: the shim execs python later,
/// so /proc would briefly show bash.
pub(super) fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 must be installed for discovery tests");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

pub(super) fn spawn_python(args: &[&str], env: &[(&str, &str)]) -> Guard {
    let mut cmd = Command::new(python());
    cmd.args(args)
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Guard { child: cmd.spawn().unwrap(), extra: Vec::new() }
}

/// spawn() returns while the child's execve is still filling in argv
/// (see INCOMPLETE_RETRY_AFTER); tests that want a settled process wait.
pub(super) fn wait_exec_done(guard: &Guard) {
    wait_for("execve to finish", || fs::read(format!("/proc/{}/cmdline", guard.pid())).ok().filter(|c| !c.is_empty()));
}

pub(super) fn read_line(guard: &mut Guard) -> String {
    let stdout = guard.child.stdout.as_mut().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "child printed nothing");
    line
}

pub(super) fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const SOCKET_SCRIPT: &str = r#"
import os, socket, sys, time
family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
l = socket.socket(family)
l.bind(("::" if family == socket.AF_INET6 else "127.0.0.1", 0))
l.listen()
port = l.getsockname()[1]
c = socket.create_connection(("127.0.0.1", port))
a, _ = l.accept()
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
print(l.fileno(), c.fileno(), a.fileno(), port, c.getsockname()[1], child, flush=True)
time.sleep(60)
"#;

/// A Python process holding a listener, both ends of one connection to it,
/// and a forked child that inherited all three.
pub(super) struct SocketChild {
    pub(super) guard: Guard,
    pub(super) listen_fd: u32,
    pub(super) client_fd: u32,
    pub(super) accepted_fd: u32,
    pub(super) port: u16,
    pub(super) client_port: u16,
    pub(super) forked: u32,
}

pub(super) fn socket_child(family: &str) -> SocketChild {
    let mut guard = spawn_python(&["-c", SOCKET_SCRIPT, family], &[]);
    let line = read_line(&mut guard);
    let v: Vec<u32> = line.split_whitespace().map(|s| s.parse().unwrap()).collect();
    guard.extra.push(v[5]);
    SocketChild {
        guard,
        listen_fd: v[0],
        client_fd: v[1],
        accepted_fd: v[2],
        port: v[3] as u16,
        client_port: v[4] as u16,
        forked: v[5],
    }
}

pub(super) fn spawn_http_server(env: &[(&str, &str)]) -> Guard {
    let guard = spawn_python(&["-m", "http.server", "0", "--bind", "127.0.0.1"], env);
    wait_exec_done(&guard);
    guard
}
