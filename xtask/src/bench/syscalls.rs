//! The per-syscall cost: bench/syscall_loop.c timed with no programs, with
//! empty programs on waggle's tracepoints (`waggle floor`) and with waggle.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{anyhow, bail, Result};

use super::{
    agent::AgentRun,
    ctx::{round_order, Ctx},
    procs::{self, Proc},
};

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
    /// Why a probe set is missing (the floor could not attach, ...).
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

/// `waggle floor` running until dropped: one empty program (returning 0,
/// as waggle's own do) on every tracepoint the agent attaches, attached the
/// way the agent attaches its programs. bpftrace is no floor: its empty
/// probes return 1, and every hit then goes on into the perf-event path
/// (about +0.5 µs per hit on the CPU holding bpftrace's perf events, CPU 0,
/// where the syscall loop runs).
pub struct EmptyPrograms {
    _proc: Proc,
}

impl EmptyPrograms {
    pub fn start(ctx: &Ctx) -> Result<EmptyPrograms> {
        let mut command = Command::new(&ctx.agent_bin);
        command.arg("floor").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(ctx.log_file("floor.log")?);
        eprintln!("$ {}", procs::display(&command));
        let mut proc = Proc::spawn("waggle floor", command, libc::SIGINT, None)?;
        let stdout = proc.child_mut().stdout.take().ok_or_else(|| anyhow!("waggle floor's stdout not captured"))?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut report = FloorReport::default();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if report.read(&line) {
                    let _ = tx.send(report.clone());
                }
            }
        });
        let log = ctx.raw_dir.join("floor.log");
        match rx.recv_timeout(Duration::from_secs(120)) {
            // A floor on fewer tracepoints than waggle uses would flatter
            // waggle: refused, with the kernel's reasons.
            Ok(report) if report.skipped.is_empty() && report.attached.is_some_and(|(n, of)| n == of && n > 0) => {}
            Ok(report) => bail!(
                "waggle floor attached {} tracepoints; skipped: {}",
                report.attached.map_or_else(|| "an unknown number of".to_owned(), |(n, of)| format!("{n} of {of}")),
                report.skipped.join("; ")
            ),
            Err(_) => {
                let status = proc.exited().map(|s| s.to_string()).unwrap_or_else(|| "still running".into());
                bail!("waggle floor did not attach its empty programs ({status}); see {}", log.display());
            }
        }
        Ok(EmptyPrograms { _proc: proc })
    }
}

/// What `waggle floor` printed before `ready`.
#[derive(Clone, Debug, Default, PartialEq)]
struct FloorReport {
    /// (attached, tracepoints) of its `attached N of M` line.
    attached: Option<(usize, usize)>,
    /// Its `skipped CATEGORY:NAME: REASON` lines, without the prefix.
    skipped: Vec<String>,
}

impl FloorReport {
    /// Takes one line; true at `ready`.
    fn read(&mut self, line: &str) -> bool {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("attached ") {
            let mut numbers = rest.split(" of ").map(|n| n.trim().parse::<usize>().ok());
            if let (Some(Some(n)), Some(Some(of))) = (numbers.next(), numbers.next()) {
                self.attached = Some((n, of));
            }
        } else if let Some(rest) = line.strip_prefix("skipped ") {
            self.skipped.push(rest.to_owned());
        }
        line == "ready"
    }
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
    fn floor_report() {
        let mut report = FloorReport::default();
        assert!(!report.read("skipped syscalls:sys_enter_io_uring_setup: not found"));
        assert!(!report.read("attached 34 of 35"));
        assert!(report.read("ready"));
        assert_eq!(report.attached, Some((34, 35)));
        assert_eq!(report.skipped, ["syscalls:sys_enter_io_uring_setup: not found"]);
        let mut whole = FloorReport::default();
        assert!(!whole.read("attached 35 of 35\n"));
        assert_eq!(whole, FloorReport { attached: Some((35, 35)), skipped: vec![] });
    }

    #[test]
    fn syscall_loop_output() {
        let out = "mode=unix syscalls=400000 elapsed_ns=614947026 ns_per_syscall=1537.4 cpu_ns_per_syscall=1400.5\n";
        assert_eq!(parse_syscall_loop(out), Some(LoopTiming { cpu_ns: 1400.5, wall_ns: 1537.4 }));
        assert_eq!(parse_syscall_loop("mode=unix ns_per_syscall=1537.4\n"), None);
        assert_eq!(parse_syscall_loop("oops"), None);
    }
}
