//! Running the waggle agent for one measurement: start it, wait until its
//! probes are attached (`waggle ready`), sample its CPU around the measured
//! window, stop it with SIGINT and read its counters from the
//! `waggle stopped` line it logs at exit. For agent CPU per span, the
//! measurement goes on past the window until the window's spans have been
//! exported, counting the spans the OTLP sink received.
use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use super::{
    procs::{self, Proc},
    sink::SinkCounter,
};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// After `waggle ready`, let the start-up scan and first allocations settle.
const SETTLE: Duration = Duration::from_millis(300);
/// After the load stops: the agent's export interval (1 s, a partial batch
/// waits that long) plus time for an agent that fell behind to catch up.
const DRAIN: Duration = Duration::from_millis(1300);

/// What one agent run cost and counted.
#[derive(Clone, Debug, Default)]
pub struct AgentRun {
    /// utime+stime over the measured window, seconds.
    pub cpu_seconds: f64,
    /// Wall-clock length of the measured window, seconds.
    pub wall_seconds: f64,
    /// VmHWM at the end of the run, KiB.
    pub peak_rss_kib: u64,
    /// utime+stime from the window's start until its spans were exported
    /// (the window plus [`DRAIN`]), seconds; 0 when not drained.
    pub drained_cpu_seconds: f64,
    /// Spans the OTLP sink received over that same time. An agent that lags
    /// under load exports part of a window's spans after it, and a
    /// windowed count would be short by that lag; spans of the warm-up still
    /// in the agent at the window's start are processed (CPU) and exported
    /// (spans) inside it, so both sides count them.
    pub drained_spans: u64,
    /// Counters from the `waggle stopped` line (only non-zero ones are printed).
    pub counters: BTreeMap<String, u64>,
}

impl AgentRun {
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Agent CPU in millicores over the window.
    pub fn millicores(&self) -> f64 {
        if self.wall_seconds > 0.0 {
            1000.0 * self.cpu_seconds / self.wall_seconds
        } else {
            0.0
        }
    }

    /// Agent CPU per exported span, µs (NaN when nothing was exported or
    /// the run was not drained).
    pub fn cpu_us_per_span(&self) -> f64 {
        if self.drained_spans > 0 {
            1e6 * self.drained_cpu_seconds / self.drained_spans as f64
        } else {
            f64::NAN
        }
    }

    /// Agent CPU per request, µs, for `requests` served while it ran: CPU per
    /// span × the spans it made per request (per new connection when each
    /// request had its own).
    pub fn cpu_us_per_request(&self, requests: u64) -> f64 {
        if requests > 0 {
            self.cpu_us_per_span() * self.counter("spans_created") as f64 / requests as f64
        } else {
            f64::NAN
        }
    }
}

enum LogEvent {
    Ready,
    Stopped(String),
}

pub struct Agent {
    proc: Proc,
    events: mpsc::Receiver<LogEvent>,
    reader: Option<thread::JoinHandle<Vec<String>>>,
    sink: SinkCounter,
    window_start: Option<(u64, Instant, u64)>,
    window: Option<(f64, f64)>,
    drained: Option<(f64, u64)>,
    log_path: PathBuf,
}

impl Agent {
    /// Starts the agent exporting OTLP to `otlp_base_url`; its stderr is
    /// copied to `log_path`. Returns once the probes are attached.
    /// `extra`: more arguments (the metrics-on variant's).
    pub fn start_with(
        bin: &Path,
        otlp_base_url: &str,
        sink: SinkCounter,
        log_path: &Path,
        extra: &[&str],
    ) -> Result<Agent> {
        let mut command = Command::new(bin);
        command
            .args(["--otlp-endpoint", otlp_base_url, "--log-level", "info"])
            .args(extra)
            // Spans go to the sink; nothing is printed.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1");
        eprintln!("$ {}", procs::display(&command));
        let mut proc = Proc::spawn("waggle", command, libc::SIGINT, None)?;
        let stderr = proc.child_mut().stderr.take().ok_or_else(|| anyhow!("agent stderr not captured"))?;
        let mut log = File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let (tx, events) = mpsc::channel();
        let reader = thread::spawn(move || {
            // The last lines are kept for error messages.
            let mut tail: Vec<String> = Vec::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                let event = if line.contains("waggle ready") {
                    Some(LogEvent::Ready)
                } else if line.contains("waggle stopped") {
                    Some(LogEvent::Stopped(line.clone()))
                } else {
                    None
                };
                if let Some(event) = event {
                    let _ = tx.send(event);
                }
                tail.push(line);
                if tail.len() > 40 {
                    tail.remove(0);
                }
            }
            tail
        });
        let mut agent = Agent {
            proc,
            events,
            reader: Some(reader),
            sink,
            window_start: None,
            window: None,
            drained: None,
            log_path: log_path.to_owned(),
        };
        agent.wait_ready()?;
        thread::sleep(SETTLE);
        Ok(agent)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.events.recv_timeout(Duration::from_millis(100)) {
                Ok(LogEvent::Ready) => return Ok(()),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.proc.wait_timeout(Duration::from_secs(5));
                    let tail = self.reader.take().and_then(|r| r.join().ok()).unwrap_or_default();
                    bail!(
                        "waggle exited ({}) before `waggle ready`; last log lines:\n{}",
                        status.map(|s| s.to_string()).unwrap_or_else(|| "still running".into()),
                        tail.join("\n")
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!("waggle not ready after {READY_TIMEOUT:?}; see {}", self.log_path.display());
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Starts the measured window (CPU is counted from here).
    pub fn begin(&mut self) -> Result<()> {
        self.window_start = Some((procs::cpu_ticks(self.pid())?, Instant::now(), self.sink.count().spans));
        Ok(())
    }

    /// Ends the measured window.
    pub fn end(&mut self) -> Result<()> {
        let (ticks0, t0, _) = self.window_start.ok_or_else(|| anyhow!("agent window ended before it began"))?;
        let ticks = procs::cpu_ticks(self.pid())?.saturating_sub(ticks0);
        self.window = Some((ticks as f64 / procs::clock_ticks_per_second(), t0.elapsed().as_secs_f64()));
        Ok(())
    }

    /// Ends the measured window (call it as the load stops), then waits
    /// until the window's spans are exported, for agent CPU per span.
    pub fn end_and_drain(&mut self) -> Result<()> {
        self.end()?;
        let (ticks0, _, spans0) = self.window_start.ok_or_else(|| anyhow!("agent drained before it began"))?;
        thread::sleep(DRAIN);
        let ticks = procs::cpu_ticks(self.pid())?.saturating_sub(ticks0);
        let spans = self.sink.count().spans.saturating_sub(spans0);
        self.drained = Some((ticks as f64 / procs::clock_ticks_per_second(), spans));
        Ok(())
    }

    /// Stops the agent (SIGINT: detach, flush, log counters) and reports.
    pub fn stop(mut self) -> Result<AgentRun> {
        let peak_rss_kib = procs::peak_rss_kib(self.pid()).unwrap_or(0);
        let status = self.proc.stop()?;
        let tail = self.reader.take().and_then(|r| r.join().ok()).unwrap_or_default();
        let stopped = self.events.try_iter().find_map(|event| match event {
            LogEvent::Stopped(line) => Some(line),
            LogEvent::Ready => None,
        });
        let Some(line) = stopped else {
            bail!("waggle exited ({status}) without its `waggle stopped` line; last log lines:\n{}", tail.join("\n"));
        };
        if !status.success() {
            bail!("waggle exited with {status}; last log lines:\n{}", tail.join("\n"));
        }
        let (cpu_seconds, wall_seconds) = self.window.unwrap_or((0.0, 0.0));
        let (drained_cpu_seconds, drained_spans) = self.drained.unwrap_or((0.0, 0));
        Ok(AgentRun {
            cpu_seconds,
            wall_seconds,
            peak_rss_kib,
            drained_cpu_seconds,
            drained_spans,
            counters: parse_counters(&line),
        })
    }
}

/// `name=value` pairs of the `waggle stopped` line. The counters field is
/// itself printed as `counters=events_received=5 spans_created=3 ...`.
pub fn parse_counters(line: &str) -> BTreeMap<String, u64> {
    let mut counters = BTreeMap::new();
    for token in line.split_whitespace() {
        let token = token.trim_matches('"');
        let Some((left, value)) = token.rsplit_once('=') else { continue };
        let name = left.rsplit('=').next().unwrap_or(left).trim_matches('"');
        let valid_name =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if let (true, Ok(value)) = (valid_name, value.parse::<u64>()) {
            counters.insert(name.to_owned(), value);
        }
    }
    counters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_the_stop_line() {
        let line = "2026-11-21T16:30:00.123456Z  INFO waggle::pipeline: waggle stopped \
                    counters=events_received=120 spans_created=40 spans_exported=40 kernel_events_lost=7";
        let counters = parse_counters(line);
        assert_eq!(counters.get("events_received"), Some(&120));
        assert_eq!(counters.get("spans_created"), Some(&40));
        assert_eq!(counters.get("kernel_events_lost"), Some(&7));
        assert_eq!(counters.len(), 4, "{counters:?}");
        // Quoted form (a Debug-formatted field) parses the same.
        let counters = parse_counters("waggle stopped counters=\"events_received=3 kernel_events_lost=0\"");
        assert_eq!(counters.get("events_received"), Some(&3));
        assert_eq!(counters.get("kernel_events_lost"), Some(&0));
    }

    #[test]
    fn millicores_over_the_window() {
        let run = AgentRun { cpu_seconds: 0.5, wall_seconds: 10.0, ..Default::default() };
        assert!((run.millicores() - 50.0).abs() < 1e-9);
        assert_eq!(AgentRun::default().millicores(), 0.0);
        assert_eq!(run.counter("missing"), 0);
        assert!(run.cpu_us_per_span().is_nan(), "not drained");
        // 0.6 s of CPU until drained, 120k spans exported: 5 µs each; at 2
        // spans per request (60k spans created for 30k requests), 10 µs per request.
        let mut run = AgentRun { drained_cpu_seconds: 0.6, drained_spans: 120_000, ..run };
        run.counters.insert("spans_created".into(), 60_000);
        assert!((run.cpu_us_per_span() - 5.0).abs() < 1e-9);
        assert!((run.cpu_us_per_request(30_000) - 10.0).abs() < 1e-9);
        assert!(run.cpu_us_per_request(0).is_nan());
    }
}
