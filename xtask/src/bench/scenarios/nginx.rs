//! nginx saturated by wrk over keep-alive connections: no agent, waggle, and
//! the floor (empty programs on waggle's tracepoints). [`Nginx`] is also the
//! server of the per-connection, sustained and profile runs.
use std::{
    fs,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};

use crate::bench::{
    agent::AgentRun,
    ctx::{round_order, Ctx, TempDir},
    load::{self, WrkResult},
    procs::{self, Proc},
    syscalls::EmptyPrograms,
};

#[derive(Clone, Debug)]
pub struct NginxRound {
    pub base: WrkResult,
    /// The same load with empty programs on waggle's tracepoints (None when
    /// `waggle floor` could not attach them; the reason is in the warnings).
    pub floor: Option<WrkResult>,
    pub agent: WrkResult,
    /// Requests served while the agent ran (warm-up included), for spans/request.
    pub agent_requests: u64,
    pub run: AgentRun,
    /// The same load with the application metrics on (served on
    /// --metrics-addr; `run` has them off), and that agent's run.
    pub metrics: Option<(WrkResult, AgentRun)>,
}

/// What turns the application metrics on for the metrics-on variant. The
/// recent-traces ring behind `waggle trace`, which --metrics-addr also
/// turns on, stays off: this variant measures the metrics alone.
pub const METRICS_ON_ARGS: &[&str] =
    &["--metrics-addr", "127.0.0.1:0", "--app-metrics", "on", "--recent-traces-bytes", "0"];

pub const NGINX_WRK_THREADS: u32 = 1;
pub const NGINX_WRK_CONNECTIONS: u32 = 32;
/// nginx's worker_connections unless a scenario needs more.
const DEFAULT_CONNECTIONS: u32 = 4096;

/// nginx (one worker) and its temp directory, both removed on drop.
pub struct Nginx {
    proc: Proc,
    pub port: u16,
    scheme: &'static str,
    _dir: TempDir,
}

impl Nginx {
    pub fn start(ctx: &Ctx) -> Result<Nginx> {
        Nginx::start_with(ctx, false)
    }

    /// `tls`: HTTPS with a self-signed certificate made here (the HTTPS
    /// scenario).
    pub fn start_with(ctx: &Ctx, tls: bool) -> Result<Nginx> {
        Nginx::launch(ctx, tls, 1, DEFAULT_CONNECTIONS, &[])
    }

    /// `workers` workers with room for `per_worker` connections each, the
    /// kernel spreading new connections over them (`reuseport`), listening
    /// on the same port of `more_addrs` too (each loopback address gives
    /// its clients another ~28k ephemeral ports).
    pub fn start_many(ctx: &Ctx, workers: u32, per_worker: u32, more_addrs: &[&str]) -> Result<Nginx> {
        Nginx::launch(ctx, false, workers, per_worker, more_addrs)
    }

    fn launch(ctx: &Ctx, tls: bool, workers: u32, connections: u32, more_addrs: &[&str]) -> Result<Nginx> {
        let dir = TempDir::new("nginx")?;
        let port = procs::free_port()?;
        let template =
            fs::read_to_string(ctx.bench_dir().join("nginx.conf.tmpl")).context("reading bench/nginx.conf.tmpl")?;
        let (ssl, certs) = if tls { (" ssl", self_signed_cert(ctx, &dir.path)?) } else { ("", String::new()) };
        let reuseport = if workers > 1 { " reuseport" } else { "" };
        let more_listen: String =
            more_addrs.iter().map(|addr| format!("listen {addr}:{port} backlog=4096{reuseport}; ")).collect();
        let conf = template
            .replace("@DIR@", &dir.path.to_string_lossy())
            .replace("@PORT@", &port.to_string())
            .replace("@SSL@", &format!("{reuseport}{ssl}"))
            .replace("@WORKERS@", &workers.to_string())
            .replace("@CERTS@", &certs)
            .replace("@CONNECTIONS@", &connections.to_string())
            .replace("@NOFILE@", &(connections + connections / 4).to_string())
            .replace("@MORE_LISTEN@", &more_listen);
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
        Ok(Nginx { proc, port, scheme: if tls { "https" } else { "http" }, _dir: dir })
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}/", self.scheme, self.port)
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.proc.exited() {
            bail!("nginx exited ({status}) during the benchmark");
        }
        Ok(())
    }
}

/// A P-256 key and self-signed certificate for 127.0.0.1 in `dir`; the
/// nginx directives that use them.
fn self_signed_cert(ctx: &Ctx, dir: &std::path::Path) -> Result<String> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(ctx.log_file("openssl.log")?)
        .status()
        .context("running openssl req")?;
    if !status.success() {
        bail!("openssl req failed ({status}): see raw/openssl.log");
    }
    // TLS 1.3, which Debian 12's nginx 1.22 leaves off unless told.
    Ok(format!(
        "ssl_certificate {}; ssl_certificate_key {}; ssl_protocols TLSv1.2 TLSv1.3;",
        cert.display(),
        key.display()
    ))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NginxVariant {
    None,
    Waggle,
    WaggleMetrics,
    Floor,
}

pub fn nginx(ctx: &mut Ctx) -> Result<Vec<NginxRound>> {
    let server = Nginx::start(ctx)?;
    saturated(ctx, server, "nginx", true)
}

/// Rounds of `server` saturated by wrk: no agent, waggle, the floor and,
/// with `metrics`, waggle with the application metrics on. `label` names
/// the agent logs and the progress lines.
pub(super) fn saturated(ctx: &mut Ctx, mut server: Nginx, label: &str, metrics_on: bool) -> Result<Vec<NginxRound>> {
    let url = server.url();
    let script = ctx.bench_dir().join("wrk_report.lua");
    let wrk = |seconds: f64| load::Wrk {
        url: &url,
        threads: NGINX_WRK_THREADS,
        connections: NGINX_WRK_CONNECTIONS,
        seconds,
        script: &script,
        headers: &[],
    };
    let mut rounds = Vec::new();
    for i in 0..ctx.rounds {
        ctx.check_quiet(&format!("{label} round {}", i + 1));
        let (mut base, mut agent, mut floor, mut metrics) = (None, None, None, None);
        let all = [NginxVariant::None, NginxVariant::Waggle, NginxVariant::WaggleMetrics, NginxVariant::Floor];
        let variants: Vec<NginxVariant> =
            all.into_iter().filter(|v| metrics_on || *v != NginxVariant::WaggleMetrics).collect();
        for variant in round_order(i, &variants) {
            if variant == NginxVariant::Floor {
                match EmptyPrograms::start(ctx) {
                    Ok(_programs) => {
                        wrk(ctx.warmup).run()?;
                        floor = Some(wrk(ctx.seconds).run()?);
                    }
                    Err(e) => ctx.warnings.push(format!("{label} round {}: no empty-program floor: {e:#}", i + 1)),
                }
            } else if variant == NginxVariant::Waggle {
                let mut a = ctx.start_agent(label)?;
                let warm = wrk(ctx.warmup).run()?;
                a.begin()?;
                let measured = wrk(ctx.seconds).run()?;
                a.end_and_drain()?;
                let run = a.stop()?;
                agent = Some((measured, warm.requests + measured.requests, run));
            } else if variant == NginxVariant::WaggleMetrics {
                let mut a = ctx.start_agent_with("nginx-metrics", METRICS_ON_ARGS)?;
                wrk(ctx.warmup).run()?;
                a.begin()?;
                let measured = wrk(ctx.seconds).run()?;
                a.end_and_drain()?;
                metrics = Some((measured, a.stop()?));
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
            "{label} round {}: {:.0} rps without agent, {:.0} rps with waggle ({:.0} m agent CPU)",
            i + 1,
            base.rps(),
            agent.rps(),
            run.millicores()
        ));
        rounds.push(NginxRound { base, floor, agent, agent_requests, run, metrics });
    }
    Ok(rounds)
}
