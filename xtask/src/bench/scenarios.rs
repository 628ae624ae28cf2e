//! The throughput scenarios: saturated nginx, the Flask app with and without
//! tracing, PostgreSQL, and the sustained fixed-rate steps. Every scenario
//! alternates the order of its variants from round to round (baseline first,
//! then agent first, ...), so a slow drift of the machine (other work,
//! thermal) spreads over both sides.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};

use super::{
    agent::AgentRun,
    ctx::{round_order, Ctx, TempDir},
    load::{self, WrkResult},
    procs::{self, Proc},
    sink::SinkCount,
    syscalls::EmptyPrograms,
};

// ---------------------------------------------------------------- nginx

#[derive(Clone, Debug)]
pub struct NginxRound {
    pub base: WrkResult,
    /// The same load with empty programs on waggle's tracepoints (None when
    /// bpftrace could not attach them; the reason is in the warnings).
    pub floor: Option<WrkResult>,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NginxVariant {
    None,
    Waggle,
    Floor,
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
        let (mut base, mut agent, mut floor) = (None, None, None);
        for variant in round_order(i, &[NginxVariant::None, NginxVariant::Waggle, NginxVariant::Floor]) {
            if variant == NginxVariant::Floor {
                match EmptyPrograms::start(ctx) {
                    Ok(_programs) => {
                        wrk(ctx.warmup).run()?;
                        floor = Some(wrk(ctx.seconds).run()?);
                    }
                    Err(e) => ctx.warnings.push(format!("nginx round {}: no empty-program floor: {e:#}", i + 1)),
                }
            } else if variant == NginxVariant::Waggle {
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
        rounds.push(NginxRound { base, floor, agent, agent_requests, run });
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

#[cfg(test)]
mod tests {
    use super::*;

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
