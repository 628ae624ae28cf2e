//! The per-syscall cost: bench/syscall_loop.c timed with no programs, with
//! empty programs on waggle's tracepoints (bpftrace) and with waggle.
use std::{
    fs,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};

use super::{
    agent::AgentRun,
    ctx::{round_order, Ctx},
    procs::{self, Proc},
};
use crate::cmd::Cmd;

pub const SYSCALL_MODES: &[&str] = &["unix", "tcp-raw", "tcp-http"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    None,
    Empty,
    Waggle,
}

/// ns per syscall, one entry per round, for each mode and probe set.
#[derive(Clone, Debug, Default)]
pub struct SyscallResults {
    /// (mode, probe, ns per syscall) for every run.
    pub samples: Vec<(&'static str, Probe, LoopTiming)>,
    pub waggle_runs: Vec<AgentRun>,
    /// Why a probe set is missing (bpftrace could not attach, ...).
    pub notes: Vec<String>,
}

impl SyscallResults {
    /// CPU ns per syscall of every run of `mode` under `probe`.
    pub fn values(&self, mode: &str, probe: Probe) -> Vec<f64> {
        self.samples.iter().filter(|(m, p, _)| *m == mode && *p == probe).map(|(_, _, t)| t.cpu_ns).collect()
    }

    /// Wall-clock ns per syscall (includes time the loop was preempted).
    pub fn wall_values(&self, mode: &str, probe: Probe) -> Vec<f64> {
        self.samples.iter().filter(|(m, p, _)| *m == mode && *p == probe).map(|(_, _, t)| t.wall_ns).collect()
    }
}

/// The tracepoints waggle attaches to (agent/src/probes/load.rs `PROGRAMS`):
/// the floor is empty programs on exactly these.
pub const WAGGLE_TRACEPOINTS: &[&str] = &[
    "syscalls:sys_exit_read",
    "syscalls:sys_exit_write",
    "syscalls:sys_exit_recvfrom",
    "syscalls:sys_exit_sendto",
    "syscalls:sys_exit_readv",
    "syscalls:sys_exit_writev",
    "syscalls:sys_exit_recvmsg",
    "syscalls:sys_exit_sendmsg",
    "syscalls:sys_exit_sendfile64",
    "syscalls:sys_exit_socket",
    "syscalls:sys_exit_accept",
    "syscalls:sys_exit_accept4",
    "syscalls:sys_exit_connect",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_readv",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_recvmsg",
    "syscalls:sys_enter_sendmsg",
    "syscalls:sys_enter_sendfile64",
    "syscalls:sys_enter_socket",
    "syscalls:sys_enter_accept",
    "syscalls:sys_enter_accept4",
    "syscalls:sys_enter_connect",
    "syscalls:sys_enter_close",
    "task:task_newtask",
    "sched:sched_process_exit",
];

/// The bpftrace program: an empty action on every waggle tracepoint, and a
/// BEGIN probe that says when they are attached.
pub fn empty_programs_script() -> String {
    let probes: Vec<String> = WAGGLE_TRACEPOINTS.iter().map(|t| format!("tracepoint:{t}")).collect();
    format!("{} {{}}\nBEGIN {{ printf(\"ready\\n\"); }}\n", probes.join(",\n"))
}

/// bpftrace running empty programs, detached on drop.
/// Empty programs on every tracepoint waggle uses (bpftrace), running until
/// dropped: the floor any tracepoint-based agent pays.
pub struct EmptyPrograms {
    _proc: Proc,
}

impl EmptyPrograms {
    pub fn start(ctx: &Ctx) -> Result<EmptyPrograms> {
        ensure_tracefs()?;
        let script = ctx.raw_dir.join("empty-programs.bt");
        fs::write(&script, empty_programs_script()).context("writing the bpftrace script")?;
        let mut command = Command::new("bpftrace");
        command.arg(&script).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(ctx.log_file("bpftrace.log")?);
        eprintln!("$ {}", procs::display(&command));
        let mut proc = Proc::spawn("bpftrace", command, libc::SIGINT, None)?;
        let stdout = proc.child_mut().stdout.take().ok_or_else(|| anyhow!("bpftrace stdout not captured"))?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut attached = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = attaching_count(&line) {
                    attached = Some(n);
                }
                if line.trim() == "ready" {
                    let _ = tx.send(attached);
                }
            }
        });
        // bpftrace skips a tracepoint it cannot find with a warning and
        // runs on: without this check the floor is whatever subset attached
        // (none at all where tracefs was not mounted yet).
        let expected = WAGGLE_TRACEPOINTS.len() + 1;
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Some(n)) if n == expected => {}
            Ok(attached) => bail!(
                "bpftrace attached {} of its {expected} probes; see {}",
                attached.map_or_else(|| "an unknown number".to_owned(), |n| n.to_string()),
                ctx.raw_dir.join("bpftrace.log").display()
            ),
            Err(_) => {
                let status = proc.exited().map(|s| s.to_string()).unwrap_or_else(|| "still running".into());
                bail!(
                    "bpftrace did not attach its empty programs ({status}); see {}",
                    ctx.raw_dir.join("bpftrace.log").display()
                );
            }
        }
        thread::sleep(Duration::from_millis(200));
        Ok(EmptyPrograms { _proc: proc })
    }
}

/// N of bpftrace's "Attaching N probes..." line.
fn attaching_count(line: &str) -> Option<usize> {
    line.trim().strip_prefix("Attaching ")?.split(' ').next()?.parse().ok()
}

/// bpftrace finds tracepoints through tracefs, which the agent mounts when
/// it is missing: a floor measured before the first agent run of a fresh
/// machine would otherwise have no programs at all.
fn ensure_tracefs() -> Result<()> {
    const TRACEFS: &str = "/sys/kernel/tracing";
    if fs::metadata(format!("{TRACEFS}/events")).is_ok() {
        return Ok(());
    }
    Cmd::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]).run().context("mounting tracefs")
}

fn syscall_iterations(mode: &str, quick: bool) -> u64 {
    // About half a second per run on this machine class (unix ~1.5 us per
    // syscall, loopback TCP ~7 us).
    let full = match mode {
        "unix" => 200_000,
        "tcp-raw" => 40_000,
        _ => 20_000,
    };
    if quick {
        full / 2
    } else {
        full
    }
}

/// What syscall_loop reports, per syscall.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoopTiming {
    /// The thread's CPU time: the syscalls and the eBPF programs inside them.
    pub cpu_ns: f64,
    pub wall_ns: f64,
}

fn run_syscall_loop(ctx: &Ctx, mode: &'static str) -> Result<LoopTiming> {
    let mut command = Command::new(&ctx.syscall_loop);
    // CPU 0: the agent's userspace gets the other core.
    command.arg(mode).arg(syscall_iterations(mode, ctx.quick).to_string()).arg("0");
    let (status, stdout, stderr) = procs::run_captured("syscall_loop", command, Duration::from_secs(120))?;
    if !status.success() {
        bail!("syscall_loop {mode} failed ({status}): {stderr}");
    }
    parse_syscall_loop(&stdout).ok_or_else(|| anyhow!("unexpected syscall_loop output: {stdout}"))
}

pub fn parse_syscall_loop(stdout: &str) -> Option<LoopTiming> {
    let get = |key: &str| stdout.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.parse::<f64>().ok());
    Some(LoopTiming { cpu_ns: get("cpu_ns_per_syscall=")?, wall_ns: get("ns_per_syscall=")? })
}

pub fn syscalls(ctx: &mut Ctx) -> Result<SyscallResults> {
    let mut results = SyscallResults::default();
    // Syscall loops are short: more rounds than the other scenarios.
    let rounds = if ctx.quick { 1 } else { ctx.rounds.max(5) };
    for i in 0..rounds {
        for probe in round_order(i, &[Probe::None, Probe::Empty, Probe::Waggle]) {
            ctx.check_quiet(&format!("syscall round {}", i + 1));
            match probe {
                Probe::None => {
                    for &mode in SYSCALL_MODES {
                        results.samples.push((mode, probe, run_syscall_loop(ctx, mode)?));
                    }
                }
                Probe::Empty => {
                    if !results.notes.is_empty() {
                        continue;
                    }
                    // Without the floor the other two columns still stand.
                    let _programs = match EmptyPrograms::start(ctx) {
                        Ok(p) => p,
                        Err(e) => {
                            results.notes.push(format!("no empty-program floor: {e:#}"));
                            continue;
                        }
                    };
                    for &mode in SYSCALL_MODES {
                        results.samples.push((mode, probe, run_syscall_loop(ctx, mode)?));
                    }
                }
                Probe::Waggle => {
                    let mut a = ctx.start_agent("syscalls")?;
                    a.begin()?;
                    for &mode in SYSCALL_MODES {
                        results.samples.push((mode, probe, run_syscall_loop(ctx, mode)?));
                    }
                    a.end()?;
                    results.waggle_runs.push(a.stop()?);
                }
            }
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_program_script_covers_every_waggle_tracepoint() {
        let script = empty_programs_script();
        assert!(script.contains("tracepoint:syscalls:sys_enter_read,\n"));
        assert!(script.contains("tracepoint:sched:sched_process_exit {}"));
        assert_eq!(script.matches("tracepoint:").count(), WAGGLE_TRACEPOINTS.len());
        assert!(script.contains("BEGIN { printf(\"ready\\n\"); }"));
    }

    #[test]
    fn bpftrace_attach_line() {
        assert_eq!(attaching_count("Attaching 30 probes..."), Some(30));
        assert_eq!(attaching_count("Attaching 1 probe..."), Some(1));
        assert_eq!(attaching_count("ready"), None);
    }

    #[test]
    fn syscall_loop_output() {
        let out = "mode=unix syscalls=400000 elapsed_ns=614947026 ns_per_syscall=1537.4 cpu_ns_per_syscall=1400.5\n";
        assert_eq!(parse_syscall_loop(out), Some(LoopTiming { cpu_ns: 1400.5, wall_ns: 1537.4 }));
        assert_eq!(parse_syscall_loop("mode=unix ns_per_syscall=1537.4\n"), None);
        assert_eq!(parse_syscall_loop("oops"), None);
    }
}
