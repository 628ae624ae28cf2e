//! The test environment: root check, serialisation, paths, ports, processes.
use std::{
    fs::File,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

/// Held for the whole of one e2e test: only one agent may load probes at a
/// time, both within this test binary (the mutex) and across binaries or
/// people on the same machine (the flock).
pub struct E2eGuard {
    _flock: File,
    _mutex: MutexGuard<'static, ()>,
}

static SERIAL: Mutex<()> = Mutex::new(());

const LOCK_PATH: &str = "/tmp/waggle-e2e.lock";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Panics, naming what is missing, unless this process is root.
#[track_caller]
pub fn require_root(test: &str) {
    assert!(
        is_root(),
        "{test} needs root (it loads eBPF programs or changes users): run it as root, \
         e.g. `sudo -E cargo xtask test`; plain `cargo test` reports it as ignored"
    );
}

/// Starts an e2e test: the guard that serialises e2e tests. Panics when not
/// root: e2e tests are `#[ignore]`d for plain `cargo test` and run by
/// `cargo xtask test` (`--include-ignored`), where a test that cannot run
/// must fail, never pass.
#[track_caller]
pub fn e2e_setup(test: &str) -> E2eGuard {
    require_root(test);
    // A test that panicked while holding the mutex poisons it; the next test
    // must still run, the state behind it is ().
    let mutex = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .unwrap_or_else(|e| panic!("opening {LOCK_PATH}: {e}"));
    // SAFETY: the descriptor belongs to `file`, which outlives this call; the
    // lock is released when `file` is closed with the guard.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {LOCK_PATH}: {}", std::io::Error::last_os_error());
    E2eGuard { _flock: file, _mutex: mutex }
}

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// The agent binary: `$WAGGLE_BIN`, else `$CARGO_TARGET_DIR/release/waggle`,
/// else `<workspace>/target/release/waggle`.
#[track_caller]
pub fn agent_bin() -> PathBuf {
    let path = match std::env::var_os("WAGGLE_BIN") {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os("CARGO_TARGET_DIR") {
            Some(t) => PathBuf::from(t).join("release/waggle"),
            None => workspace_root().join("target/release/waggle"),
        },
    };
    assert!(
        path.is_file(),
        "agent binary {} not found: build it with `cargo xtask build` (release), or set WAGGLE_BIN to its absolute path",
        path.display()
    );
    path
}

/// The real Python interpreter. pyenv-style shims are shell scripts that
/// re-exec; resolving the interpreter once keeps `process.pid` of a spawned
/// script equal to the pid we hold and makes start-up fast.
#[track_caller]
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("WAGGLE_PYTHON") {
                return PathBuf::from(p);
            }
            for candidate in ["/usr/bin/python3", "/usr/local/bin/python3"] {
                if Path::new(candidate).is_file() {
                    return PathBuf::from(candidate);
                }
            }
            let out = Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .unwrap_or_else(|e| panic!("running python3 to find the interpreter: {e}"));
            assert!(out.status.success(), "python3 -c sys.executable failed: {out:?}");
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        })
        .clone()
}

/// A port that was free a moment ago (bind 127.0.0.1:0 and release).
#[track_caller]
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding 127.0.0.1:0: {e}"));
    l.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("local_addr: {e}"))
}

/// Waits until `proc` writes a `port N` line to `out_path` (a fixture
/// server announcing where it listens). `Err(Some(status))` when it exited
/// first, `Err(None)` when `timeout` passed.
pub fn wait_for_port_line(proc: &mut Proc, out_path: &Path, timeout: Duration) -> Result<u16, Option<ExitStatus>> {
    let mut port = None;
    let mut exited = None;
    poll_until(timeout, || {
        port = std::fs::read_to_string(out_path)
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("port ").and_then(|p| p.trim().parse::<u16>().ok())));
        if port.is_some() {
            return true;
        }
        exited = proc.try_wait();
        exited.is_some()
    });
    port.ok_or(exited)
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn can_connect(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// The last `n` lines of a file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    match File::open(path) {
        Ok(f) => {
            let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
            let start = lines.len().saturating_sub(n);
            lines[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A child process in its own process group, killed with the whole group on
/// drop (nginx workers and shell grandchildren go with it).
pub struct Proc {
    pub child: Child,
    pub name: String,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` as a new process-group leader.
    #[track_caller]
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        cmd.process_group(0);
        // A script a test has just written can be briefly "busy": a child
        // another test thread forked meanwhile holds the write descriptor
        // until its own exec closes it. That passes within milliseconds.
        let mut busy_retries = 50;
        let child = loop {
            match cmd.spawn() {
                Ok(child) => break child,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && busy_retries > 0 => {
                    busy_retries -= 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("spawning {name} ({cmd:?}): {e}"),
            }
        };
        Proc { child, name: name.to_owned(), exited: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    pub fn signal_group(&self, sig: libc::c_int) {
        let Ok(pgid) = libc::pid_t::try_from(self.pid()) else { return };
        // SAFETY: kill has no memory-safety preconditions; the negative pid
        // names the group this process leads (it was spawned with
        // process_group(0)), so only our own children are signalled.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }

    /// Waits up to `timeout` for exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.signal_group(libc::SIGKILL);
            let _ = self.child.wait();
        } else {
            // The leader is gone but members of its group may not be.
            self.signal_group(libc::SIGKILL);
        }
    }
}

/// Pids whose parent is `pid` (from /proc/*/stat).
pub fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // The command name is parenthesised and may contain spaces: fields
        // after the last ')' are state, ppid, ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Output of a short-lived client process.
#[derive(Debug)]
pub struct ClientRun {
    pub pid: u32,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ClientRun {
    #[track_caller]
    pub fn assert_success(&self) -> &ClientRun {
        assert!(
            self.status.success(),
            "client pid {} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.pid,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `cmd` to completion (bounded by `timeout`), keeping its pid.
#[track_caller]
pub fn run_client(name: &str, cmd: &mut Command, timeout: Duration) -> ClientRun {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let out = File::create(&out_path).unwrap_or_else(|e| panic!("creating {}: {e}", out_path.display()));
    let err = File::create(&err_path).unwrap_or_else(|e| panic!("creating {}: {e}", err_path.display()));
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let mut proc = Proc::spawn(name, cmd);
    let pid = proc.pid();
    let Some(status) = proc.wait_timeout(timeout) else {
        panic!("{name} (pid {pid}) did not finish within {timeout:?}; stderr:\n{}", tail(&err_path, 30));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    ClientRun { pid, status, stdout, stderr }
}

/// `curl -sS --max-time 10 <args>`.
#[track_caller]
pub fn curl(args: &[&str]) -> ClientRun {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10"]).args(args);
    run_client("curl", &mut cmd, Duration::from_secs(20))
}

/// curl fetching `urls` in one invocation (`extra` before them, e.g. a CA
/// file), bodies discarded, asserting it reused one connection for all of
/// them: the keep-alive case every protocol test needs.
#[track_caller]
pub fn curl_on_one_connection(extra: &[&str], urls: &[&str]) -> ClientRun {
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["-w", "%{num_connects}\n"]);
    for _ in urls {
        args.extend(["-o", "/dev/null"]);
    }
    args.extend(urls);
    let r = curl(&args);
    r.assert_success();
    let expected: String = (0..urls.len()).map(|i| if i == 0 { "1\n" } else { "0\n" }).collect();
    assert_eq!(r.stdout, expected, "curl should reuse one connection");
    r
}

/// [`run_client`] on a thread of its own, calling `sample` every `every`
/// while the client runs (to follow a gauge of the agent meanwhile).
#[track_caller]
pub fn run_client_sampling(
    name: &str,
    mut cmd: Command,
    timeout: Duration,
    every: Duration,
    mut sample: impl FnMut(),
) -> ClientRun {
    let thread_name = name.to_owned();
    let client = std::thread::spawn(move || run_client(&thread_name, &mut cmd, timeout));
    while !client.is_finished() {
        sample();
        std::thread::sleep(every);
    }
    client.join().unwrap_or_else(|_| panic!("the {name} thread panicked"))
}

/// A `Command` running fixture script `script` with the real interpreter.
pub fn python_script(script: &str) -> Command {
    let mut cmd = Command::new(python());
    // Unbuffered so a test reading the script's stdout sees lines at once.
    cmd.arg("-u").arg(fixture(script));
    cmd
}

/// A memory field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...) in bytes;
/// 0 when the process or the field is gone.
pub fn proc_memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `curl` copied to a path of its own, so an exe rule can select it and no
/// other curl (selection tests: `--trace-include exe=*/traced-curl`).
pub fn traced_curl(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("traced-curl");
    std::fs::copy("/usr/bin/curl", &path).unwrap_or_else(|e| panic!("copying /usr/bin/curl: {e}"));
    path
}
