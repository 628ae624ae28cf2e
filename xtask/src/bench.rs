//! `cargo xtask bench`: what waggle costs the services it watches.
//!
//! Every scenario runs with and without the agent in alternating rounds in
//! one run, on real servers and load tools (Debian packages, PyPI, npm), and
//! the results land in bench/results/ as markdown, JSON and a PNG chart:
//!
//! 1. nginx saturated by wrk: throughput, p50/p99 latency, agent CPU per
//!    10k req/s and per span, peak RSS, lost events, and the floor (empty
//!    programs on the same tracepoints);
//! 2. a Flask app on gunicorn: no tracing vs waggle vs OpenTelemetry Python
//!    auto-instrumentation;
//! 3. a new connection per request (`Connection: close`) against nginx and
//!    the Flask app: throughput and agent CPU per new connection;
//! 4. a Node.js http app: no tracing vs waggle vs the OpenTelemetry Node.js
//!    SDK (`@opentelemetry/auto-instrumentations-node`);
//! 5. PostgreSQL under `pgbench -S -M prepared`;
//! 6. per-syscall cost of waggle vs empty programs on the same tracepoints;
//! 7. the highest fixed request rate at which no event is lost;
//! 8. nginx over HTTPS saturated by wrk (plaintext read at OpenSSL): no
//!    agent, waggle, the floor;
//!
//! plus a profile (per-program kernel time, perf of the agent) that names
//! the hot spots. Agent CPU per span divides the agent's CPU over a measured
//! window by the spans the harness's OTLP sink received in it. `--quick`
//! does one short round of everything so CI keeps the harness working; its
//! results go to bench/results/quick/.
mod agent;
mod ctx;
mod deps;
mod json;
mod load;
mod markdown;
mod otlp;
mod procs;
mod profile;
mod report;
mod scenarios;
mod sections;
mod sink;
mod syscalls;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use self::{
    ctx::Ctx,
    report::{Machine, Results},
};
use crate::{
    build::{self, Profile},
    cmd::{self, Cmd},
    setup::{self, Apt},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Nginx,
    Flask,
    /// A new connection per request against nginx and Flask.
    Conn,
    Node,
    Postgres,
    Syscalls,
    Sustained,
    /// nginx over HTTPS (TLS plaintext read at OpenSSL).
    Https,
    /// Up to 100k open idle keep-alive connections: the agent's memory.
    Idle,
    Profile,
}

#[derive(Clone, Debug, Default, clap::Args)]
pub struct BenchArgs {
    /// One short round of every scenario (a few seconds each): for CI, so the
    /// harness never rots. Results go to bench/results/quick/.
    #[arg(long)]
    pub quick: bool,
    /// Rounds per scenario [default: 1 with --quick, 5 otherwise].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: Option<u32>,
    /// Seconds per measurement [default: 2 with --quick, 10 otherwise].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: Option<u64>,
    /// Run only these scenarios (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Scenario>,
    /// Use this agent binary instead of building target/release/waggle.
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// Write results here [default: bench/results, or bench/results/quick with --quick].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

impl BenchArgs {
    fn wants(&self, s: Scenario) -> bool {
        if self.only.is_empty() {
            // The profile costs a run of its own; quick runs skip it.
            s != Scenario::Profile || !self.quick
        } else {
            self.only.contains(&s)
        }
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the benchmark loads eBPF programs (waggle and its floor), installs packages and runs PostgreSQL as its \
             own user: run it as root (sudo -E cargo xtask bench)"
        );
    }
    let started = Instant::now();
    let root = build::repo_root();
    let quick = args.quick;
    let rounds = args.rounds.unwrap_or(if quick { 1 } else { 5 });
    let seconds = args.seconds.unwrap_or(if quick { 2 } else { 10 }) as f64;
    let out_dir = args.out.clone().unwrap_or_else(|| {
        let results = root.join("bench").join("results");
        if quick {
            results.join("quick")
        } else {
            results
        }
    });
    // Raw logs belong to one run: the previous run's are cleared.
    let raw_dir = out_dir.join("raw");
    if raw_dir.is_dir() {
        fs::remove_dir_all(&raw_dir).with_context(|| format!("clearing {}", raw_dir.display()))?;
    }
    fs::create_dir_all(&raw_dir).with_context(|| format!("creating {}", raw_dir.display()))?;

    let mut apt = Apt::new(false);
    deps::ensure_packages(&mut apt)?;
    let venv = deps::ensure_venv(&root)?;
    let syscall_loop = deps::build_syscall_loop(&root)?;
    let agent_bin = match &args.agent {
        Some(path) => path.clone(),
        None => {
            let toolchain = setup::setup(&mut apt)?;
            build::build(&root, &toolchain, Profile::Release)?.agent_bin
        }
    };
    if !agent_bin.is_file() {
        bail!("agent binary {} not found", agent_bin.display());
    }
    // A private copy: a rebuild of target/release/waggle during the run
    // must not change the agent between rounds.
    let agent_dir = root.join("target").join("bench").join("agent");
    fs::create_dir_all(&agent_dir).with_context(|| format!("creating {}", agent_dir.display()))?;
    let agent_copy = agent_dir.join("waggle");
    fs::copy(&agent_bin, &agent_copy)
        .with_context(|| format!("copying {} to {}", agent_bin.display(), agent_copy.display()))?;
    let agent_bin = agent_copy;

    let mut results = Results { quick, rounds, seconds, machine: machine_info(&root), ..Default::default() };
    if let Some(load) = results.machine.load_average.split_whitespace().next().and_then(|l| l.parse::<f64>().ok()) {
        if load > 0.5 {
            results.warnings.push(format!(
                "the machine was not idle at start (1-minute load average {load:.2}): ratios are noisier"
            ));
        }
    }

    let mut ctx = Ctx::new(root.clone(), agent_bin, venv.clone(), syscall_loop, raw_dir, rounds, seconds, quick)?;
    if args.wants(Scenario::Nginx) {
        results.nginx = outcome(scenarios::nginx(&mut ctx));
    }
    if args.wants(Scenario::Flask) {
        results.flask = outcome(scenarios::flask(&mut ctx));
    }
    if args.wants(Scenario::Conn) {
        results.conn = outcome(scenarios::conn(&mut ctx));
    }
    if args.wants(Scenario::Node) {
        results.node = outcome(scenarios::node(&mut ctx));
    }
    if args.wants(Scenario::Postgres) {
        results.postgres = outcome(scenarios::postgres(&mut ctx));
    }
    if args.wants(Scenario::Syscalls) {
        results.syscalls = outcome(syscalls::syscalls(&mut ctx));
    }
    if args.wants(Scenario::Sustained) {
        results.sustained = outcome(scenarios::sustained(&mut ctx));
    }
    if args.wants(Scenario::Https) {
        results.https = outcome(scenarios::https(&mut ctx));
    }
    if args.wants(Scenario::Idle) {
        results.idle = outcome(scenarios::idle(&mut ctx));
    }
    if args.wants(Scenario::Profile) {
        results.profile = outcome(profile::profile(&mut ctx));
    }
    // Read after the scenarios: the Node.js one installs its packages first.
    results.machine.tools = deps::tool_versions(&root, &venv);
    results.warnings.append(&mut ctx.warnings);
    if ctx.sink.bad_requests() > 0 {
        results.warnings.push(format!("the OTLP sink refused {} malformed requests", ctx.sink.bad_requests()));
    }
    drop(ctx);

    let md = markdown::markdown(&results);
    let md_path = out_dir.join("latest.md");
    fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    let json_path = out_dir.join("latest.json");
    let json = serde_json::to_string_pretty(&json::to_json(&results))?;
    fs::write(&json_path, json + "\n").with_context(|| format!("writing {}", json_path.display()))?;
    let png_path = out_dir.join("latest.png");
    let chart = Cmd::new(venv.join("bin").join("python"))
        .arg(root.join("bench").join("chart.py"))
        .arg(&json_path)
        .arg(&png_path)
        .run();

    cmd::out(&md);
    eprintln!(
        "bench: wrote {}, {} and {} in {:.0} s",
        md_path.display(),
        json_path.display(),
        png_path.display(),
        started.elapsed().as_secs_f64()
    );
    chart.context("drawing the chart")?;
    let failed = failures(&results);
    if !failed.is_empty() {
        bail!("scenario(s) failed: {}", failed.join("; "));
    }
    Ok(())
}

/// The idle-connections scenario's client processes (`xtask bench-idle-client`).
pub fn idle_client(port: u16, count: u32, offset: usize) -> Result<()> {
    scenarios::idle_client(port, count, offset)
}

/// A scenario's error is kept (with its causes) for the report; the other
/// scenarios still run.
fn outcome<T>(r: Result<T>) -> report::Outcome<T> {
    Some(r.map_err(|e| format!("{e:#}")))
}

fn failures(res: &Results) -> Vec<String> {
    let mut failed = Vec::new();
    let mut check = |name: &str, err: Option<&String>| {
        if let Some(e) = err {
            failed.push(format!("{name}: {e}"));
        }
    };
    check("nginx", res.nginx.as_ref().and_then(|r| r.as_ref().err()));
    check("flask", res.flask.as_ref().and_then(|r| r.as_ref().err()));
    check("conn", res.conn.as_ref().and_then(|r| r.as_ref().err()));
    check("node", res.node.as_ref().and_then(|r| r.as_ref().err()));
    check("postgres", res.postgres.as_ref().and_then(|r| r.as_ref().err()));
    check("syscalls", res.syscalls.as_ref().and_then(|r| r.as_ref().err()));
    check("sustained", res.sustained.as_ref().and_then(|r| r.as_ref().err()));
    check("https", res.https.as_ref().and_then(|r| r.as_ref().err()));
    check("idle", res.idle.as_ref().and_then(|r| r.as_ref().err()));
    check("profile", res.profile.as_ref().and_then(|r| r.as_ref().err()));
    failed
}

/// The machine and the run; its tools are read after the scenarios.
fn machine_info(root: &Path) -> Machine {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory_gib =
        procs::parse_status_kib(&read("/proc/meminfo"), "MemTotal").unwrap_or(0) as f64 / (1024.0 * 1024.0);
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    let date_utc = Cmd::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).probe().unwrap_or_default();
    let commit = Cmd::new("git")
        .arg("-C")
        .arg(root)
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .probe()
        .unwrap_or_else(|| "unknown".into());
    let load_average = read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    Machine { kernel, cpu_model, cores, memory_gib, date_utc, commit, load_average, tools: Vec::new() }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn flags_parse_and_quick_skips_the_profile() {
        let w = Wrapper::try_parse_from(["bench", "--quick", "--only", "nginx,syscalls", "--rounds", "3"]).unwrap();
        assert!(w.args.quick);
        assert_eq!(w.args.rounds, Some(3));
        assert!(w.args.wants(Scenario::Nginx) && w.args.wants(Scenario::Syscalls));
        assert!(!w.args.wants(Scenario::Flask));

        let w = Wrapper::try_parse_from(["bench", "--only", "conn,node"]).unwrap();
        assert_eq!(w.args.only, [Scenario::Conn, Scenario::Node]);
        assert!(!w.args.wants(Scenario::Nginx));

        let w = Wrapper::try_parse_from(["bench", "--quick"]).unwrap();
        assert!(w.args.wants(Scenario::Sustained) && w.args.wants(Scenario::Conn) && w.args.wants(Scenario::Node));
        assert!(w.args.wants(Scenario::Https), "the quick set has the HTTPS scenario");
        assert!(!w.args.wants(Scenario::Profile));
        let w = Wrapper::try_parse_from(["bench"]).unwrap();
        assert!(w.args.wants(Scenario::Profile));
        assert!(Wrapper::try_parse_from(["bench", "--rounds", "0"]).is_err());
        assert!(Wrapper::try_parse_from(["bench", "--only", "redis"]).is_err());
    }

    #[test]
    fn failed_scenarios_are_named() {
        let res =
            Results { postgres: Some(Err("initdb failed".into())), nginx: Some(Ok(Vec::new())), ..Default::default() };
        assert_eq!(failures(&res), ["postgres: initdb failed"]);
    }
}
