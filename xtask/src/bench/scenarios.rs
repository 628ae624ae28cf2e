//! The measurements. Every scenario alternates the order of its variants
//! from round to round (baseline first, then agent first, ...), so a slow
//! drift of the machine (other work, thermal) spreads over both sides.
use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use super::{
    agent::{Agent, AgentRun},
    load::{self, WrkResult},
    procs::{self, Proc},
    sink::{Sink, SinkCount},
};

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

    fn bench_dir(&self) -> PathBuf {
        self.root.join("bench")
    }

    /// A file in the raw directory for a server's output (kept for
    /// post-mortems, and out of the harness's own output).
    fn log_file(&self, name: &str) -> Result<Stdio> {
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
    fn check_quiet(&mut self, what: &str) {
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

    fn start_agent(&mut self, label: &str) -> Result<Agent> {
        self.runs += 1;
        let log = self.raw_dir.join(format!("agent-{:03}-{label}.log", self.runs));
        Agent::start(&self.agent_bin, &self.sink.base_url(), &log)
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

// ---------------------------------------------------------------- nginx

#[derive(Clone, Debug)]
pub struct NginxRound {
    pub base: WrkResult,
    pub agent: WrkResult,
    /// Requests served while the agent ran (warm-up included), for spans/request.
    pub agent_requests: u64,
    pub run: AgentRun,
}

pub const NGINX_WRK_THREADS: u32 = 1;
pub const NGINX_WRK_CONNECTIONS: u32 = 32;

/// nginx (one worker) and its temp directory, both removed on drop.
pub struct Nginx {
    proc: Proc,
    pub port: u16,
    _dir: TempDir,
}

impl Nginx {
    pub fn start(ctx: &Ctx) -> Result<Nginx> {
        let dir = TempDir::new("nginx")?;
        let port = procs::free_port()?;
        let template =
            fs::read_to_string(ctx.bench_dir().join("nginx.conf.tmpl")).context("reading bench/nginx.conf.tmpl")?;
        let conf = template.replace("@DIR@", &dir.path.to_string_lossy()).replace("@PORT@", &port.to_string());
        let conf_path = dir.path.join("nginx.conf");
        fs::write(&conf_path, conf).context("writing nginx.conf")?;
        let nginx = crate::cmd::find_program("nginx").ok_or_else(|| anyhow!("nginx not found"))?;
        let mut command = Command::new(nginx);
        command
            .arg("-p")
            .arg(&dir.path)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stderr(ctx.log_file("nginx.log")?);
        let mut proc = Proc::spawn("nginx", command, libc::SIGTERM, None)?;
        procs::wait_port(port, Duration::from_secs(20), &mut proc)?;
        Ok(Nginx { proc, port, _dir: dir })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.proc.exited() {
            bail!("nginx exited ({status}) during the benchmark");
        }
        Ok(())
    }
}

pub fn nginx(ctx: &mut Ctx) -> Result<Vec<NginxRound>> {
    let mut server = Nginx::start(ctx)?;
    let url = server.url();
    let script = ctx.bench_dir().join("wrk_report.lua");
    let wrk = |seconds: f64| load::Wrk {
        url: &url,
        threads: NGINX_WRK_THREADS,
        connections: NGINX_WRK_CONNECTIONS,
        seconds,
        script: &script,
    };
    let mut rounds = Vec::new();
    for i in 0..ctx.rounds {
        ctx.check_quiet(&format!("nginx round {}", i + 1));
        let (mut base, mut agent) = (None, None);
        for with_agent in round_order(i, &[false, true]) {
            if with_agent {
                let mut a = ctx.start_agent("nginx")?;
                let warm = wrk(ctx.warmup).run()?;
                a.begin()?;
                let measured = wrk(ctx.seconds).run()?;
                a.end()?;
                let run = a.stop()?;
                agent = Some((measured, warm.requests + measured.requests, run));
            } else {
                wrk(ctx.warmup).run()?;
                base = Some(wrk(ctx.seconds).run()?);
            }
            server.check_alive()?;
        }
        let (Some(base), Some((agent, agent_requests, run))) = (base, agent) else {
            bail!("round {i} lost a variant");
        };
        procs::tracing_line(&format!(
            "nginx round {}: {:.0} rps without agent, {:.0} rps with waggle ({:.0} m agent CPU)",
            i + 1,
            base.rps(),
            agent.rps(),
            run.millicores()
        ));
        rounds.push(NginxRound { base, agent, agent_requests, run });
    }
    Ok(rounds)
}

// ---------------------------------------------------------------- Flask

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PyVariant {
    None,
    Waggle,
    Sdk,
}

#[derive(Clone, Debug)]
pub struct FlaskRound {
    pub none: WrkResult,
    pub waggle: WrkResult,
    pub waggle_requests: u64,
    pub waggle_run: AgentRun,
    pub sdk: WrkResult,
    /// What the SDK delivered to the OTLP sink during its run.
    pub sdk_export: SinkCount,
}

pub const FLASK_WORKERS: u32 = 2;
pub const FLASK_WRK_CONNECTIONS: u32 = 4;

fn start_gunicorn(ctx: &Ctx, variant: PyVariant, port: u16) -> Result<Proc> {
    let bin = ctx.venv.join("bin");
    let mut command = match variant {
        PyVariant::Sdk => {
            let mut c = Command::new(bin.join("opentelemetry-instrument"));
            c.arg(bin.join("gunicorn"))
                .env("OTEL_SERVICE_NAME", "bench-flask")
                .env("OTEL_TRACES_EXPORTER", "otlp")
                .env("OTEL_METRICS_EXPORTER", "none")
                .env("OTEL_LOGS_EXPORTER", "none")
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", ctx.sink.base_url())
                // Same cadence as waggle's default export interval.
                .env("OTEL_BSP_SCHEDULE_DELAY", "1000");
            c
        }
        _ => Command::new(bin.join("gunicorn")),
    };
    command
        .args(["--workers", &FLASK_WORKERS.to_string(), "--worker-class", "sync", "--log-level", "warning"])
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--chdir")
        .arg(ctx.bench_dir())
        .arg("flask_app:app")
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null())
        .stdout(ctx.log_file("gunicorn.log")?)
        .stderr(ctx.log_file("gunicorn.log")?);
    eprintln!("$ {}", procs::display(&command));
    let mut proc = Proc::spawn("gunicorn", command, libc::SIGTERM, None)?;
    procs::wait_port(port, Duration::from_secs(60), &mut proc)?;
    Ok(proc)
}

pub fn flask(ctx: &mut Ctx) -> Result<Vec<FlaskRound>> {
    let script = ctx.bench_dir().join("wrk_report.lua");
    let mut rounds = Vec::new();
    for i in 0..ctx.rounds {
        ctx.check_quiet(&format!("flask round {}", i + 1));
        let mut none = None;
        let mut waggle = None;
        let mut sdk = None;
        for variant in round_order(i, &[PyVariant::None, PyVariant::Waggle, PyVariant::Sdk]) {
            let port = procs::free_port()?;
            let url = format!("http://127.0.0.1:{port}/work/7");
            let wrk = |seconds: f64| load::Wrk {
                url: &url,
                threads: 1,
                connections: FLASK_WRK_CONNECTIONS,
                seconds,
                script: &script,
            };
            let mut server = start_gunicorn(ctx, variant, port)?;
            match variant {
                PyVariant::Waggle => {
                    let mut a = ctx.start_agent("flask")?;
                    let warm = wrk(ctx.warmup).run()?;
                    a.begin()?;
                    let measured = wrk(ctx.seconds).run()?;
                    a.end()?;
                    let run = a.stop()?;
                    waggle = Some((measured, warm.requests + measured.requests, run));
                    server.stop()?;
                }
                PyVariant::None => {
                    wrk(ctx.warmup).run()?;
                    none = Some(wrk(ctx.seconds).run()?);
                    server.stop()?;
                }
                PyVariant::Sdk => {
                    let before = ctx.sink.count();
                    wrk(ctx.warmup).run()?;
                    let measured = wrk(ctx.seconds).run()?;
                    // Stopping flushes the workers' batch processors.
                    server.stop()?;
                    sdk = Some((measured, ctx.sink.count().since(before)));
                }
            }
        }
        let (Some(none), Some((waggle, waggle_requests, waggle_run)), Some((sdk, sdk_export))) = (none, waggle, sdk)
        else {
            bail!("round {i} lost a variant");
        };
        if sdk_export.requests == 0 {
            bail!(
                "the OpenTelemetry SDK run exported nothing to the OTLP sink: the SDK comparison would be void \
                 (check the venv's opentelemetry-instrument)"
            );
        }
        procs::tracing_line(&format!(
            "flask round {}: {:.0} rps bare, {:.0} with waggle, {:.0} with the OpenTelemetry SDK",
            i + 1,
            none.rps(),
            waggle.rps(),
            sdk.rps()
        ));
        rounds.push(FlaskRound { none, waggle, waggle_requests, waggle_run, sdk, sdk_export });
    }
    Ok(rounds)
}

// ---------------------------------------------------------------- PostgreSQL

#[derive(Clone, Debug)]
pub struct PgRound {
    pub base_tps: f64,
    pub agent_tps: f64,
    pub run: AgentRun,
}

pub const PGBENCH_CLIENTS: u32 = 4;

/// The newest PostgreSQL server binaries Debian installed.
pub fn postgres_bin_dir() -> Result<PathBuf> {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(base)
        .with_context(|| format!("listing {} (is postgresql installed?)", base.display()))?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").is_file() && bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| anyhow!("no PostgreSQL server under {}", base.display()))
}

pub fn postgres(ctx: &mut Ctx) -> Result<Vec<PgRound>> {
    let user = procs::lookup_user("postgres")?;
    let bin = postgres_bin_dir()?;
    let dir = TempDir::new("pg")?;
    let data = dir.path.join("data");
    procs::chown_tree(&dir.path, user)?;
    let mut initdb = Command::new(bin.join("initdb"));
    initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
    let (status, out, err) = procs::run_captured_as("initdb", initdb, Duration::from_secs(120), Some(user))?;
    if !status.success() {
        bail!("initdb failed ({status}): {err}{out}");
    }
    let port = procs::free_port()?;
    let mut command = Command::new(bin.join("postgres"));
    command
        .arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(&dir.path)
        .args(["-c", "listen_addresses=127.0.0.1", "-p", &port.to_string()])
        // A CPU-bound, read-only benchmark: durability settings don't matter.
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
        .args(["-c", "shared_buffers=128MB", "-c", "max_connections=50"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(ctx.log_file("postgres.log")?);
    eprintln!("$ {}", procs::display(&command));
    let mut server = Proc::spawn("postgres", command, libc::SIGINT, Some(user))?;
    procs::wait_port(port, Duration::from_secs(60), &mut server)?;

    let mut init = Command::new("pgbench");
    init.args(["-i", "-q", "-s", "1", "-h", "127.0.0.1", "-U", "postgres", "-p", &port.to_string(), "postgres"]);
    let (status, out, err) = procs::run_captured("pgbench -i", init, Duration::from_secs(300))?;
    if !status.success() {
        bail!("pgbench -i failed ({status}): {err}{out}");
    }

    let mut rounds = Vec::new();
    for i in 0..ctx.rounds {
        ctx.check_quiet(&format!("postgres round {}", i + 1));
        let (mut base, mut agent) = (None, None);
        for with_agent in round_order(i, &[false, true]) {
            if with_agent {
                let mut a = ctx.start_agent("postgres")?;
                load::pgbench_select(port, PGBENCH_CLIENTS, ctx.warmup)?;
                a.begin()?;
                let tps = load::pgbench_select(port, PGBENCH_CLIENTS, ctx.seconds)?;
                a.end()?;
                agent = Some((tps, a.stop()?));
            } else {
                load::pgbench_select(port, PGBENCH_CLIENTS, ctx.warmup)?;
                base = Some(load::pgbench_select(port, PGBENCH_CLIENTS, ctx.seconds)?);
            }
        }
        let (Some(base_tps), Some((agent_tps, run))) = (base, agent) else {
            bail!("round {i} lost a variant");
        };
        procs::tracing_line(&format!("postgres round {}: {base_tps:.0} tps without agent, {agent_tps:.0} with", i + 1));
        rounds.push(PgRound { base_tps, agent_tps, run });
    }
    server.stop()?;
    Ok(rounds)
}

// ---------------------------------------------------------------- per-syscall cost

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

/// The tracepoints waggle attaches to (agent/src/probes.rs `PROGRAMS`):
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
struct EmptyPrograms {
    _proc: Proc,
}

impl EmptyPrograms {
    fn start(ctx: &Ctx) -> Result<EmptyPrograms> {
        let script = ctx.raw_dir.join("empty-programs.bt");
        fs::write(&script, empty_programs_script()).context("writing the bpftrace script")?;
        let mut command = Command::new("bpftrace");
        command.arg(&script).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(ctx.log_file("bpftrace.log")?);
        eprintln!("$ {}", procs::display(&command));
        let mut proc = Proc::spawn("bpftrace", command, libc::SIGINT, None)?;
        let stdout = proc.child_mut().stdout.take().ok_or_else(|| anyhow!("bpftrace stdout not captured"))?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim() == "ready" {
                    let _ = tx.send(());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(()) => {}
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

// ---------------------------------------------------------------- sustained load

#[derive(Clone, Debug)]
pub struct SustainedStep {
    pub rate: u32,
    pub achieved: f64,
    pub failed: u64,
    pub run: AgentRun,
    /// Without the agent, could the machine reach this rate? Only measured
    /// when the agent run fell short of it.
    pub baseline_achieved: Option<f64>,
}

impl SustainedStep {
    pub fn reached(&self) -> bool {
        self.achieved >= 0.95 * f64::from(self.rate) && self.failed == 0
    }

    pub fn lost(&self) -> u64 {
        self.run.counter("kernel_events_lost")
    }

    pub fn clean(&self) -> bool {
        self.reached() && self.lost() == 0
    }
}

pub const SUSTAINED_CONNECTIONS: u32 = 40;

pub fn sustained_rates(quick: bool) -> Vec<u32> {
    if quick {
        vec![5_000, 10_000, 20_000]
    } else {
        vec![5_000, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 80_000]
    }
}

pub fn sustained(ctx: &mut Ctx) -> Result<Vec<SustainedStep>> {
    let mut server = Nginx::start(ctx)?;
    let url = server.url();
    let mut steps = Vec::new();
    for rate in sustained_rates(ctx.quick) {
        ctx.check_quiet(&format!("the {rate} req/s step"));
        let mut a = ctx.start_agent(&format!("sustained-{rate}"))?;
        a.begin()?;
        let r = load::h2load_fixed_rate(&url, SUSTAINED_CONNECTIONS, rate, ctx.seconds)?;
        a.end()?;
        let run = a.stop()?;
        server.check_alive()?;
        let mut step =
            SustainedStep { rate, achieved: r.rps, failed: r.failed + r.errored, run, baseline_achieved: None };
        if !step.reached() {
            let b = load::h2load_fixed_rate(&url, SUSTAINED_CONNECTIONS, rate, ctx.seconds)?;
            step.baseline_achieved = Some(b.rps);
        }
        procs::tracing_line(&format!(
            "sustained {rate} rps: achieved {:.0}, {} events lost, agent {:.0} m CPU, {} MiB peak RSS",
            step.achieved,
            step.lost(),
            step.run.millicores(),
            step.run.peak_rss_kib / 1024
        ));
        let clean = step.clean();
        steps.push(step);
        if !clean {
            break;
        }
    }
    Ok(steps)
}

// ---------------------------------------------------------------- profile

#[derive(Clone, Debug, Default)]
pub struct BpfProgStat {
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub seconds: f64,
    pub rps: f64,
    /// Kernel side: per waggle program, over the window (bpf_stats_enabled).
    pub bpf: Vec<BpfProgStat>,
    /// Userspace side: `perf report` top symbols of the agent (percent, symbol).
    pub perf_top: Vec<(f64, String)>,
    /// The agent's own functions by inclusive time (percent, function),
    /// from DWARF call graphs: which stage the self time above belongs to.
    pub perf_inclusive: Vec<(f64, String)>,
    pub agent_millicores: f64,
    pub notes: Vec<String>,
}

/// Turns kernel.bpf_stats_enabled on and restores it on drop.
struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let previous = fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(BpfStats { previous: previous.trim().to_owned() })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.previous);
    }
}

/// `bpftool -j prog show`: every loaded program.
fn bpf_progs() -> Result<String> {
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().context("running bpftool")?;
    if !out.status.success() {
        bail!("bpftool prog show failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Ids of the eBPF programs a process holds open, from
/// /proc/PID/fdinfo (`prog_id:` lines): exact even when other agents load
/// programs with the same names at the same time.
fn prog_ids_of(pid: u32) -> Result<Vec<u64>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))?.flatten() {
        if let Ok(info) = fs::read_to_string(entry.path()) {
            ids.extend(parse_fdinfo_prog_id(&info));
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

pub fn parse_fdinfo_prog_id(fdinfo: &str) -> Option<u64> {
    fdinfo.lines().find_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
}

/// The programs with these ids in bpftool's JSON, with their run stats.
pub fn parse_bpftool_progs(json: &str, ids: &[u64]) -> Result<Vec<BpfProgStat>> {
    let progs: serde_json::Value = serde_json::from_str(json).context("parsing bpftool's JSON")?;
    let list = progs.as_array().ok_or_else(|| anyhow!("bpftool's JSON is not a list"))?;
    Ok(list
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .map(|p| BpfProgStat {
            name: p["name"].as_str().unwrap_or("?").to_owned(),
            run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
            run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
        })
        .collect())
}

/// The agent's own functions among inclusive-time rows, once each (inlined
/// copies merged), hottest first.
pub fn waggle_frames(rows: &[(f64, String)], limit: usize) -> Vec<(f64, String)> {
    let mut out: Vec<(f64, String)> = Vec::new();
    for (pct, sym) in rows {
        let name = sym.trim_end_matches(" (inlined)").to_owned();
        let ours = name.starts_with("waggle::") || name.starts_with("<waggle::");
        if ours && !out.iter().any(|(_, n)| *n == name) {
            out.push((*pct, name));
        }
    }
    out.sort_by(|a, b| b.0.total_cmp(&a.0));
    out.truncate(limit);
    out
}

/// `perf report --stdio` lines like `    12.34%  waggle  [.] symbol`.
pub fn parse_perf_report(text: &str, limit: usize) -> Vec<(f64, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (pct, rest) = line.split_once('%')?;
            let pct: f64 = pct.trim().parse().ok()?;
            let symbol = rest.split_once("] ").map(|(_, s)| s).unwrap_or(rest).trim();
            // Wide symbol columns are padded and followed by `-  -` fillers.
            let symbol = symbol.split("  ").next().unwrap_or(symbol).trim();
            (!symbol.is_empty()).then(|| (pct, symbol.to_owned()))
        })
        .take(limit)
        .collect()
}

/// Saturated nginx with waggle, profiled: per-program kernel time from
/// bpf_stats, and a perf profile of the agent's userspace.
pub fn profile(ctx: &mut Ctx) -> Result<Profile> {
    let mut server = Nginx::start(ctx)?;
    let url = server.url();
    let script = ctx.bench_dir().join("wrk_report.lua");
    let mut profile = Profile { seconds: ctx.seconds, ..Default::default() };
    let stats = match BpfStats::enable() {
        Ok(s) => Some(s),
        Err(e) => {
            profile.notes.push(format!("no kernel-side stats: {e:#}"));
            None
        }
    };
    let mut a = ctx.start_agent("profile")?;
    let pid = a.pid();
    let ids = prog_ids_of(pid).unwrap_or_default();
    if ids.is_empty() {
        profile.notes.push(format!("no eBPF program ids in /proc/{pid}/fdinfo"));
    }
    let agent_progs = || bpf_progs().and_then(|j| parse_bpftool_progs(&j, &ids));
    let before = if stats.is_some() { agent_progs().unwrap_or_default() } else { Vec::new() };
    let perf_data = ctx.raw_dir.join("perf-agent.data");
    let perf = if crate::cmd::find_program("perf").is_some() {
        let mut command = Command::new("perf");
        command
            // DWARF unwinding: the release build has no frame pointers,
            // and without them allocator time cannot be attributed.
            .args(["record", "-F", "199", "--call-graph", "dwarf,16384", "-o"])
            .arg(&perf_data)
            .args(["-p", &pid.to_string(), "--", "sleep"])
            .arg(format!("{}", ctx.seconds.max(1.0)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Some(Proc::spawn("perf record", command, libc::SIGINT, None)?)
    } else {
        profile.notes.push("perf not installed: no userspace profile".into());
        None
    };
    let t0 = Instant::now();
    a.begin()?;
    let r = load::Wrk {
        url: &url,
        threads: NGINX_WRK_THREADS,
        connections: NGINX_WRK_CONNECTIONS,
        seconds: ctx.seconds,
        script: &script,
    }
    .run()?;
    a.end()?;
    let window = t0.elapsed().as_secs_f64();
    profile.rps = r.rps();
    if stats.is_some() {
        let after = agent_progs().unwrap_or_default();
        profile.bpf = after
            .into_iter()
            .map(|p| {
                let prev = before.iter().find(|b| b.name == p.name);
                BpfProgStat {
                    run_cnt: p.run_cnt.saturating_sub(prev.map_or(0, |b| b.run_cnt)),
                    run_time_ns: p.run_time_ns.saturating_sub(prev.map_or(0, |b| b.run_time_ns)),
                    name: p.name,
                }
            })
            .filter(|p| p.run_cnt > 0)
            .collect();
        profile.bpf.sort_by_key(|p| std::cmp::Reverse(p.run_time_ns));
        profile.seconds = window;
        if profile.bpf.is_empty() {
            profile.notes.push("bpftool listed no run counts for the agent's programs".into());
        }
    }
    drop(stats);
    if let Some(mut perf) = perf {
        if perf.wait_timeout(Duration::from_secs(30)).is_none() {
            perf.stop()?;
        }
        let report = |children: bool| -> Result<String, String> {
            let out = Command::new("perf")
                .args(["report", "--stdio", if children { "--children" } else { "--no-children" }])
                .args(["--sort", "symbol", "-g", "none", "--percent-limit", "1", "-i"])
                .arg(&perf_data)
                .stderr(Stdio::null())
                .output()
                .map_err(|e| format!("perf report: {e}"))?;
            if !out.status.success() {
                return Err(format!("perf report failed: {}", String::from_utf8_lossy(&out.stderr)));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        match report(false) {
            Ok(text) => profile.perf_top = parse_perf_report(&text, 15),
            Err(e) => profile.notes.push(e),
        }
        match report(true) {
            Ok(text) => profile.perf_inclusive = waggle_frames(&parse_perf_report(&text, usize::MAX), 15),
            Err(e) => profile.notes.push(e),
        }
    }
    let run = a.stop()?;
    profile.agent_millicores = run.millicores();
    server.check_alive()?;
    Ok(profile)
}

// ---------------------------------------------------------------- helpers

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

    #[test]
    fn empty_program_script_covers_every_waggle_tracepoint() {
        let script = empty_programs_script();
        assert!(script.contains("tracepoint:syscalls:sys_enter_read,\n"));
        assert!(script.contains("tracepoint:sched:sched_process_exit {}"));
        assert_eq!(script.matches("tracepoint:").count(), WAGGLE_TRACEPOINTS.len());
        assert!(script.contains("BEGIN { printf(\"ready\\n\"); }"));
    }

    #[test]
    fn syscall_loop_output() {
        let out = "mode=unix syscalls=400000 elapsed_ns=614947026 ns_per_syscall=1537.4 cpu_ns_per_syscall=1400.5\n";
        assert_eq!(parse_syscall_loop(out), Some(LoopTiming { cpu_ns: 1400.5, wall_ns: 1537.4 }));
        assert_eq!(parse_syscall_loop("mode=unix ns_per_syscall=1537.4\n"), None);
        assert_eq!(parse_syscall_loop("oops"), None);
    }

    #[test]
    fn agent_programs_are_picked_by_id() {
        let json = r#"[
            {"id":5,"type":"tracepoint","name":"sys_enter_read","run_time_ns":1,"run_cnt":1},
            {"id":9,"type":"tracepoint","name":"sys_exit_sendfi","run_time_ns":700,"run_cnt":7},
            {"id":10,"type":"tracepoint","name":"sys_enter_read","run_time_ns":300,"run_cnt":3},
            {"id":11,"type":"kprobe","name":"nostats"}
        ]"#;
        let progs = parse_bpftool_progs(json, &[9, 10, 11]).unwrap();
        let got: Vec<(&str, u64, u64)> = progs.iter().map(|p| (p.name.as_str(), p.run_cnt, p.run_time_ns)).collect();
        assert_eq!(got, [("sys_exit_sendfi", 7, 700), ("sys_enter_read", 3, 300), ("nostats", 0, 0)]);
        assert!(parse_bpftool_progs("{}", &[1]).is_err());

        let fdinfo = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_jited:\t1\nprog_id:\t1446\nrun_cnt:\t0\n";
        assert_eq!(parse_fdinfo_prog_id(fdinfo), Some(1446));
        assert_eq!(parse_fdinfo_prog_id("pos:\t0\nflags:\t02\nmap_id:\t3\n"), None);
    }

    #[test]
    fn inclusive_rows_keep_the_agents_functions_once() {
        let text = "    82.45%     0.00%  [.] tokio::runtime::park::CachedParkThread::block_on\n\
                    \x20   70.74%     1.60%  [.] waggle::pipeline::Stages::handle_record\n\
                    \x20   44.68%     3.19%  [.] waggle::conntrack::ConnTracker::on_data (inlined)\n\
                    \x20   40.00%     3.19%  [.] waggle::conntrack::ConnTracker::on_data\n\
                    \x20   38.30%     3.19%  [.] <waggle::protocols::http1::Http1Parser as waggle::protocols::ProtocolParser>::on_data\n\
                    \x20    3.19%     3.19%  [.] malloc\n";
        let rows = parse_perf_report(text, usize::MAX);
        assert_eq!(rows.len(), 6);
        let ours = waggle_frames(&rows, 10);
        let names: Vec<&str> = ours.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "waggle::pipeline::Stages::handle_record",
                "waggle::conntrack::ConnTracker::on_data",
                "<waggle::protocols::http1::Http1Parser as waggle::protocols::ProtocolParser>::on_data"
            ]
        );
        assert_eq!(ours[1].0, 44.68);
    }

    #[test]
    fn perf_report_top_symbols() {
        let text = "# Samples: 1K of event 'cpu-clock'\n#\n    21.50%  [k] _raw_spin_unlock_irqrestore\n\
                    \x20    9.10%  [.] waggle::conntrack::ConnTracker::on_data                    -      -\n\n";
        let top = parse_perf_report(text, 10);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0], (21.5, "_raw_spin_unlock_irqrestore".to_owned()));
        assert_eq!(top[1].1, "waggle::conntrack::ConnTracker::on_data");
    }

    #[test]
    fn sustained_step_verdicts() {
        let mut step = SustainedStep {
            rate: 10_000,
            achieved: 9_990.0,
            failed: 0,
            run: AgentRun::default(),
            baseline_achieved: None,
        };
        assert!(step.clean());
        step.run.counters.insert("kernel_events_lost".into(), 3);
        assert!(step.reached() && !step.clean());
        step.run.counters.clear();
        step.achieved = 8_000.0;
        assert!(!step.reached() && !step.clean());
    }
}
