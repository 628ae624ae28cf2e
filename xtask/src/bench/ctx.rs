//! What every scenario shares: the run's context (paths, the OTLP sink,
//! agent starts, the check for other tracers), the order of variants within
//! a round, and scratch directories.
use std::{fs, path::PathBuf, process::Stdio};

use anyhow::{Context, Result};

use super::{agent::Agent, procs, sink::Sink};

/// Everything the scenarios share.
pub struct Ctx {
    pub root: PathBuf,
    pub agent_bin: PathBuf,
    pub venv: PathBuf,
    pub syscall_loop: PathBuf,
    /// Raw logs (agent stderr, perf data) go here.
    pub raw_dir: PathBuf,
    pub sink: Sink,
    pub rounds: u32,
    /// Seconds per measured window.
    pub seconds: f64,
    /// Unmeasured load before each window.
    pub warmup: f64,
    pub quick: bool,
    runs: u32,
    /// Things that make the numbers less trustworthy, for the report.
    pub warnings: Vec<String>,
    /// Disturbing processes already reported.
    seen: Vec<u32>,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        root: PathBuf,
        agent_bin: PathBuf,
        venv: PathBuf,
        syscall_loop: PathBuf,
        raw_dir: PathBuf,
        rounds: u32,
        seconds: f64,
        quick: bool,
    ) -> Result<Ctx> {
        Ok(Ctx {
            root,
            agent_bin,
            venv,
            syscall_loop,
            raw_dir,
            sink: Sink::start()?,
            rounds,
            seconds,
            warmup: if quick { 0.5 } else { 1.0 },
            quick,
            runs: 0,
            warnings: Vec::new(),
            seen: Vec::new(),
        })
    }

    pub fn bench_dir(&self) -> PathBuf {
        self.root.join("bench")
    }

    /// A file in the raw directory for a server's output (kept for
    /// post-mortems, and out of the harness's own output).
    pub fn log_file(&self, name: &str) -> Result<Stdio> {
        let path = self.raw_dir.join(name);
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Stdio::from(file))
    }

    /// Looks for other eBPF tracers (another waggle, bpftrace, ...) before a
    /// round: they add their own cost to every variant, baseline included.
    pub fn check_quiet(&mut self, what: &str) {
        let found: Vec<(u32, String)> = procs::disturbing_processes(&[std::process::id()])
            .into_iter()
            .filter(|(pid, _)| !self.seen.contains(pid))
            .collect();
        if found.is_empty() {
            return;
        }
        self.seen.extend(found.iter().map(|(pid, _)| *pid));
        let list: Vec<String> = found.iter().map(|(pid, comm)| format!("{comm} (pid {pid})")).collect();
        let warning = format!("other tracers were running during {what}: {}", list.join(", "));
        procs::tracing_line(&warning);
        self.warnings.push(warning);
    }

    pub fn start_agent(&mut self, label: &str) -> Result<Agent> {
        self.start_agent_with(label, &[])
    }

    /// [`Ctx::start_agent`] with more arguments.
    pub fn start_agent_with(&mut self, label: &str, extra: &[&str]) -> Result<Agent> {
        self.runs += 1;
        let log = self.raw_dir.join(format!("agent-{:03}-{label}.log", self.runs));
        Agent::start_with(&self.agent_bin, &self.sink.base_url(), self.sink.counter(), &log, extra)
    }
}

/// Variant order for round `i`: the baseline leads on even rounds.
pub fn round_order<T: Copy>(i: u32, variants: &[T]) -> Vec<T> {
    let mut order = variants.to_vec();
    if i % 2 == 1 {
        order.reverse();
    }
    order
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("waggle-bench-{label}-{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("clearing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_alternates_between_rounds() {
        assert_eq!(round_order(0, &[1, 2, 3]), [1, 2, 3]);
        assert_eq!(round_order(1, &[1, 2, 3]), [3, 2, 1]);
        assert_eq!(round_order(2, &[false, true]), [false, true]);
    }
}
