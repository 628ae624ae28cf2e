//! PostgreSQL under `pgbench -S -M prepared`, with and without the agent.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};

use crate::bench::{
    agent::AgentRun,
    ctx::{round_order, Ctx, TempDir},
    load,
    procs::{self, Proc},
};

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
                a.end_and_drain()?;
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
