//! The real agent binary as a child process.
use std::{
    ffi::OsStr,
    fs::File,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use crate::env::{agent_bin, poll_until, tail, Proc};

/// The agent logs this (info level) once capture is running.
pub const READY_MARKER: &str = "waggle ready";
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Name of the agent's sk_msg program (agent/src/probes/mod.rs).
pub const SK_MSG_PROGRAM: &str = "waggle_sk_msg";
const OTHER_INJECTORS_TIMEOUT: Duration = Duration::from_secs(180);

/// Another agent with propagation on (a colleague's benchmark, the agent
/// crate's live tests) claims new client sockets for its own sk_msg program,
/// and the test's requests would carry its ids: waits until no other
/// `waggle_sk_msg` program is loaded.
#[track_caller]
pub fn wait_for_other_injectors() {
    let deadline = std::time::Instant::now() + OTHER_INJECTORS_TIMEOUT;
    loop {
        let others: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| p.name_as_str() == Some(SK_MSG_PROGRAM))
            .map(|p| p.id())
            .collect();
        if others.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "another {SK_MSG_PROGRAM} program stays loaded (ids {others:?}): stop the other agent, it owns the sockets these tests inject into"
        );
        eprintln!("waiting for another agent's {SK_MSG_PROGRAM} program ({others:?}) to go away");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A running agent. Its stdout/stderr go to files in a temp dir so neither
/// pipe can fill up and stall it. Dropped without `stop()`, it is killed.
pub struct Agent {
    proc: Proc,
    dir: tempfile::TempDir,
}

/// What a stopped agent printed.
#[derive(Debug)]
pub struct AgentOutput {
    pub stdout: String,
    pub stderr: String,
}

impl AgentOutput {
    /// A counter from the shutdown line (`waggle stopped`, which lists every
    /// counter above zero as `name=value`): 0 when it is not listed.
    #[track_caller]
    pub fn counter(&self, name: &str) -> u64 {
        let line = self.stderr.lines().rev().find(|l| l.contains("waggle stopped"));
        let line = line.unwrap_or_else(|| panic!("no shutdown line in the agent's stderr:\n{}", self.stderr));
        line.split(|c: char| c.is_whitespace() || c == '"')
            .find_map(|word| word.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    }
}

impl Agent {
    /// Spawns the agent with `args` and `env` (on top of the test's
    /// environment minus every `OTEL_*` variable, so tests are hermetic) and
    /// waits for [`READY_MARKER`] on stderr.
    #[track_caller]
    pub fn start<A: AsRef<OsStr>>(args: &[A], env: &[(&str, &str)]) -> Agent {
        Agent::start_bin(&agent_bin(), args, env)
    }

    /// [`start`](Self::start) with an explicit binary (the harness's own
    /// tests use stand-ins).
    #[track_caller]
    pub fn start_bin<A: AsRef<OsStr>>(bin: &std::path::Path, args: &[A], env: &[(&str, &str)]) -> Agent {
        Agent::start_bin_with(bin, args, env, None)
    }

    /// [`start`](Self::start), running `at_line.1` as soon as the agent's
    /// stderr shows `at_line.0`, before it is ready: for what happens while
    /// it starts.
    #[track_caller]
    pub fn start_racing<A: AsRef<OsStr>>(args: &[A], env: &[(&str, &str)], at_line: (&str, &mut dyn FnMut())) -> Agent {
        Agent::start_bin_with(&agent_bin(), args, env, Some(at_line))
    }

    #[track_caller]
    fn start_bin_with<A: AsRef<OsStr>>(
        bin: &std::path::Path,
        args: &[A],
        env: &[(&str, &str)],
        at_line: Option<(&str, &mut dyn FnMut())>,
    ) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("waggle-agent-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating the agent's temp dir: {e}"));
        let stdout =
            File::create(dir.path().join("stdout")).unwrap_or_else(|e| panic!("creating agent stdout file: {e}"));
        let stderr =
            File::create(dir.path().join("stderr")).unwrap_or_else(|e| panic!("creating agent stderr file: {e}"));
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("OTEL_") {
                cmd.env_remove(&key);
            }
        }
        // The ready line is logged at info: an inherited RUST_LOG=warn would
        // hide it. The test's own `env` may still override this.
        cmd.env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn("waggle", &mut cmd);
        let mut agent = Agent { proc, dir };
        if let Some((line, action)) = at_line {
            let stderr_path = agent.stderr_path();
            let seen = poll_until(READY_TIMEOUT, || {
                std::fs::read_to_string(&stderr_path).map(|s| s.contains(line)).unwrap_or(false)
            });
            assert!(seen, "the agent never logged {line:?}; stderr tail:\n{}", tail(&stderr_path, 40));
            action();
        }
        agent.wait_ready(bin);
        agent
    }

    #[track_caller]
    fn wait_ready(&mut self, bin: &std::path::Path) {
        let stderr_path = self.stderr_path();
        let mut exited = None;
        let ready = poll_until(READY_TIMEOUT, || {
            if std::fs::read_to_string(&stderr_path).map(|s| s.contains(READY_MARKER)).unwrap_or(false) {
                return true;
            }
            exited = self.proc.try_wait();
            exited.is_some()
        });
        if let Some(status) = exited {
            panic!(
                "agent {} exited with {status} before logging {READY_MARKER:?}; stderr tail:\n{}",
                bin.display(),
                tail(&stderr_path, 40)
            );
        }
        if !ready {
            panic!(
                "agent {} (pid {}) did not log {READY_MARKER:?} within {READY_TIMEOUT:?}; stderr tail:\n{}",
                bin.display(),
                self.pid(),
                tail(&stderr_path, 40)
            );
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn stdout_path(&self) -> PathBuf {
        self.dir.path().join("stdout")
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr")
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.stdout_path()).unwrap_or_default()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    pub fn stderr_tail(&self, lines: usize) -> String {
        tail(&self.stderr_path(), lines)
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        self.proc.try_wait().is_none()
    }

    /// Sends SIGTERM and asserts a clean exit (code 0) within
    /// [`STOP_TIMEOUT`]; returns what the agent printed.
    #[track_caller]
    pub fn stop(self) -> AgentOutput {
        self.stop_within(STOP_TIMEOUT)
    }

    /// [`stop`](Self::stop) with another deadline.
    #[track_caller]
    pub fn stop_within(mut self, timeout: Duration) -> AgentOutput {
        if let Some(status) = self.proc.try_wait() {
            panic!(
                "agent (pid {}) had already exited with {status}; stderr tail:\n{}",
                self.pid(),
                self.stderr_tail(40)
            );
        }
        let Ok(pid) = libc::pid_t::try_from(self.pid()) else {
            panic!("agent pid {} does not fit pid_t", self.pid());
        };
        // SAFETY: kill has no memory-safety preconditions; the pid is our own
        // child, not yet reaped (try_wait said it is running).
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM to agent pid {pid}: {}", std::io::Error::last_os_error());
        let Some(status) = self.proc.wait_timeout(timeout) else {
            panic!(
                "agent (pid {pid}) did not exit within {timeout:?} of SIGTERM; stderr tail:\n{}",
                self.stderr_tail(40)
            );
        };
        assert_eq!(
            status.code(),
            Some(0),
            "agent (pid {pid}) exited with {status} after SIGTERM; stderr tail:\n{}",
            self.stderr_tail(40)
        );
        AgentOutput { stdout: self.stdout(), stderr: self.stderr() }
    }
}
