//! Processes the benchmark starts, and what /proc says about them.
//!
//! Every server, load generator and agent is held by a [`Proc`]: dropping it
//! (also on an error path) stops the process by its pid, politely first, then
//! with SIGKILL. As a second line of defence each child gets a parent-death
//! signal, so nothing outlives an xtask that was killed outright.
use std::{
    fs,
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

/// How long a process gets to exit after its stop signal before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(20);

/// A user to run a child as (PostgreSQL refuses to run as root).
#[derive(Clone, Copy, Debug)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// A running child, stopped by pid when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    stop_signal: i32,
    done: Option<ExitStatus>,
}

impl Proc {
    /// Starts `command`; `stop_signal` is what [`Proc::stop`] and the
    /// parent-death setting send (SIGINT for PostgreSQL's fast shutdown,
    /// SIGTERM for most servers).
    pub fn spawn(name: &str, mut command: Command, stop_signal: i32, run_as: Option<RunAs>) -> Result<Proc> {
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe syscalls (setgroups, setgid, setuid, prctl,
        // getppid, kill); it allocates nothing and touches no locks.
        unsafe {
            command.pre_exec(move || {
                if let Some(user) = run_as {
                    // Credentials first: changing them clears the
                    // parent-death signal, so it is set afterwards.
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(user.gid) != 0
                        || libc::setuid(user.uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, stop_signal as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() == 1 {
                    libc::kill(libc::getpid(), stop_signal);
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| format!("starting {name} ({command:?})"))?;
        tracing_line(&format!("started {name} (pid {})", child.id()));
        Ok(Proc { name: name.to_owned(), child, stop_signal, done: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's stdout/stderr handles, for reader threads.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Still running (not exited, or exited but not reaped by us yet)?
    pub fn is_running(&mut self) -> bool {
        if self.done.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.done = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// The exit status if the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.done
    }

    /// Waits for the child to exit on its own, up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
        self.done
    }

    /// Sends the stop signal, waits, then SIGKILLs; returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        self.signal(self.stop_signal);
        if let Some(status) = self.wait_timeout(STOP_GRACE) {
            return Ok(status);
        }
        tracing_line(&format!(
            "{} (pid {}) ignored its stop signal for {STOP_GRACE:?}: SIGKILL",
            self.name,
            self.pid()
        ));
        self.signal(libc::SIGKILL);
        let status = self.child.wait().with_context(|| format!("reaping {}", self.name))?;
        self.done = Some(status);
        Ok(status)
    }

    pub fn signal(&self, sig: i32) {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) on the pid of our own unreaped child: the pid
        // cannot have been recycled for another process yet.
        unsafe { libc::kill(pid, sig) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing_line(&format!("stopping {}: {e:#}", self.name));
        }
    }
}

/// Progress lines go to stderr, like the commands `cmd` echoes.
pub fn tracing_line(line: &str) {
    eprintln!("bench: {line}");
}

/// Runs a bounded command (a load generator) to completion, capturing its
/// output; it is killed if it runs past `timeout`.
pub fn run_captured(name: &str, command: Command, timeout: Duration) -> Result<(ExitStatus, String, String)> {
    run_captured_as(name, command, timeout, None)
}

/// [`run_captured`] as another user.
pub fn run_captured_as(
    name: &str,
    mut command: Command,
    timeout: Duration,
    run_as: Option<RunAs>,
) -> Result<(ExitStatus, String, String)> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    eprintln!("$ {}", display(&command));
    let mut proc = Proc::spawn(name, command, libc::SIGTERM, run_as)?;
    let stdout = proc.child.stdout.take().map(reader_thread);
    let stderr = proc.child.stderr.take().map(reader_thread);
    let status = match proc.wait_timeout(timeout) {
        Some(status) => status,
        None => {
            let _ = proc.stop();
            bail!("{name} did not finish within {timeout:?}; stopped it");
        }
    };
    let join = |h: Option<thread::JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok((status, join(stdout), join(stderr)))
}

fn reader_thread<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A command as a shell-like line, for the log.
pub fn display(command: &Command) -> String {
    let mut words: Vec<String> = command
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), crate::cmd::quote(&v.to_string_lossy()))))
        .collect();
    words.push(crate::cmd::quote(&command.get_program().to_string_lossy()));
    words.extend(command.get_args().map(|a| crate::cmd::quote(&a.to_string_lossy())));
    words.join(" ")
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat format"))
}

/// Fields 14 and 15 of /proc/PID/stat. The command name (field 2) may hold
/// spaces and parentheses, so counting starts after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Peak resident set size (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM")
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM...).
pub fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_status_kib(&status, key).ok_or_else(|| anyhow!("no {key} in /proc/{pid}/status"))
}

/// `Key:   1234 kB` from /proc/PID/status.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// TCP connections opened by this network namespace so far (ActiveOpens).
pub fn tcp_active_opens() -> Option<u64> {
    parse_snmp(&fs::read_to_string("/proc/net/snmp").ok()?, "Tcp", "ActiveOpens")
}

/// A counter from /proc/net/snmp, where each protocol has a line of names
/// followed by a line of values, both prefixed `Proto:`.
pub fn parse_snmp(snmp: &str, proto: &str, name: &str) -> Option<u64> {
    let prefix = format!("{proto}:");
    let mut lines = snmp.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let index = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts connections on `port`, or `proc` exits.
pub fn wait_port(port: u16, timeout: Duration, proc: &mut Proc) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = proc.exited() {
            bail!("{} exited ({status}) before listening on {addr}", proc.name());
        }
        if Instant::now() >= deadline {
            bail!("{} did not listen on {addr} within {timeout:?}", proc.name());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Other processes that attach eBPF programs and would skew a measurement:
/// `(pid, comm)` of every process named like an agent or tracer.
pub fn disturbing_processes(own: &[u32]) -> Vec<(u32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if own.contains(&pid) {
            continue;
        }
        let Ok(comm) = fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        if ["waggle", "bpftrace", "beyla", "coroot-node-age", "deepflow-agent", "pixie"]
            .iter()
            .any(|n| comm.starts_with(n))
        {
            found.push((pid, comm.to_owned()));
        }
    }
    found
}

/// (uid, gid) of a local user, from /etc/passwd.
pub fn lookup_user(name: &str) -> Result<RunAs> {
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    parse_passwd(&passwd, name).ok_or_else(|| anyhow!("user {name} not found in /etc/passwd"))
}

pub fn parse_passwd(passwd: &str, name: &str) -> Option<RunAs> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() != Some(&name) || fields.len() < 4 {
            return None;
        }
        Some(RunAs { uid: fields[2].parse().ok()?, gid: fields[3].parse().ok()? })
    })
}

/// chown -R for a directory tree the harness created.
pub fn chown_tree(path: &Path, user: RunAs) -> Result<()> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() {
        for entry in fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
            chown_tree(&entry?.path(), user)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_survive_odd_command_names() {
        let stat = "4242 (tokio) worker) S 1 4242 4242 0 -1 4194560 512 0 0 0 1234 567 0 0 20 0 3 0 100 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn status_values_in_kib() {
        let status = "Name:\twaggle\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(51234));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(40000));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn snmp_counters() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens\n\
                    Tcp: 1 200 120000 -1 48213 47002\nUdp: InDatagrams\nUdp: 7\n";
        assert_eq!(parse_snmp(snmp, "Tcp", "ActiveOpens"), Some(48213));
        assert_eq!(parse_snmp(snmp, "Tcp", "PassiveOpens"), Some(47002));
        assert_eq!(parse_snmp(snmp, "Tcp", "Nope"), None);
        assert_eq!(parse_snmp(snmp, "Icmp", "ActiveOpens"), None);
        assert!(tcp_active_opens().is_some());
    }

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\npostgres:x:104:110:PostgreSQL:/var/lib/postgresql:/bin/bash\n";
        let user = parse_passwd(passwd, "postgres").unwrap();
        assert_eq!((user.uid, user.gid), (104, 110));
        assert!(parse_passwd(passwd, "nobody").is_none());
    }

    #[test]
    fn dropped_proc_is_stopped_and_captured_runs_report_output() {
        let mut command = Command::new("sleep");
        command.arg("30");
        let mut proc = Proc::spawn("sleep", command, libc::SIGTERM, None).unwrap();
        let pid = proc.pid();
        assert!(proc.is_running());
        drop(proc);
        // Reaped: the pid no longer names a sleeping child of ours.
        let gone = fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains("(sleep)")).unwrap_or(true);
        assert!(gone, "pid {pid} still running after drop");

        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2; exit 3"]);
        let (status, out, err) = run_captured("sh", command, Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(out, "out\n");
        assert_eq!(err, "err\n");

        let mut command = Command::new("sleep");
        command.arg("30");
        let e = run_captured("sleep", command, Duration::from_millis(200)).unwrap_err().to_string();
        assert!(e.contains("did not finish"), "{e}");
    }

    #[test]
    fn own_cpu_is_readable() {
        let ticks = cpu_ticks(std::process::id()).unwrap();
        assert!(ticks < 1 << 40);
        assert!(peak_rss_kib(std::process::id()).unwrap() > 100);
    }
}
