//! Many open, idle keep-alive connections: what they cost the agent in
//! memory. Client processes (this binary's hidden `bench-idle-client`,
//! each within the machine's open-files limit) open N connections to
//! nginx (both ends traced: 2N connection ends), send one request on each
//! and leave them open, as a pool of idle keep-alive connections does. Per
//! step, a fresh agent: its CPU per connection opened, its RSS with all N
//! open, the kernel memory of its maps, the table evictions it counted,
//! and whether a request on the oldest and on the newest idle connections
//! is still traced.
use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{ChildStdin, ChildStdout, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use super::nginx::Nginx;
use crate::bench::{
    agent::{Agent, AgentRun},
    ctx::Ctx,
    procs::{self, Proc},
};

/// nginx listens on its port of each of these, so N connections find
/// ephemeral ports (about 28k per destination address and port).
const ADDRS: &[&str] = &["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n";
/// nginx's `return 200 "ok\n"` ends with these bytes.
const RESPONSE_END: &[u8] = b"\r\n\r\nok\n";
/// Connections per client process and per nginx worker: both stay under
/// an open-files limit of 20000 (this machine's hard limit; raising it
/// takes CAP_SYS_RESOURCE, which containers often lack).
const PER_CLIENT: u32 = 12_500;
const PER_WORKER: u32 = 16_000;
/// Requests made on the oldest and on the newest connections at the end.
pub const IDLE_SAMPLE: usize = 500;
/// How long the spans of a sample may take to reach the sink.
const SAMPLE_WAIT: Duration = Duration::from_secs(5);

pub fn idle_steps(quick: bool) -> Vec<u32> {
    if quick {
        vec![2_000]
    } else {
        vec![10_000, 50_000, 100_000]
    }
}

#[derive(Clone, Debug, Default)]
pub struct IdleStep {
    pub connections: u32,
    /// Agent CPU while the connections opened (no byte sent yet), per
    /// connection (both of its ends are traced), µs.
    pub cpu_us_per_connection: f64,
    /// VmRSS with every connection open and its request's spans exported.
    pub rss_kib: u64,
    /// Memory the kernel charges for the agent's eBPF maps and programs
    /// (the `memlock` of each in /proc/PID/fdinfo): fixed at load, not RSS,
    /// but counted in the agent's cgroup.
    pub bpf_memlock_kib: u64,
    /// Spans that reached the sink for the requests on the oldest and on
    /// the newest [`IDLE_SAMPLE`] connections (2 per request when traced).
    pub oldest_spans: u64,
    pub newest_spans: u64,
    pub run: AgentRun,
}

pub fn idle(ctx: &mut Ctx) -> Result<Vec<IdleStep>> {
    let steps = idle_steps(ctx.quick);
    let most = steps.iter().copied().max().unwrap_or(0);
    // One spare worker: reuseport's spread is not exact.
    let workers = most.div_ceil(PER_WORKER) + 1;
    let mut server = Nginx::start_many(ctx, workers, PER_WORKER, &ADDRS[1..])?;
    let mut out = Vec::new();
    for n in steps {
        ctx.check_quiet(&format!("the {n} idle connections step"));
        let mut agent = ctx.start_agent(&format!("idle-{n}"))?;
        let step = one_step(ctx, &mut agent, server.port, n);
        // The clients are gone (their connections closed) when one_step
        // returns; the agent is stopped either way, so its counters reach
        // the report.
        let run = agent.stop()?;
        server.check_alive()?;
        let mut step = step?;
        step.run = run;
        procs::tracing_line(&format!(
            "idle {n}: agent RSS {} MiB with all open, {:.1} µs CPU per connection, {}+{} of {} sample spans, {} \
             connection states evicted",
            step.rss_kib / 1024,
            step.cpu_us_per_connection,
            step.oldest_spans,
            step.newest_spans,
            4 * IDLE_SAMPLE,
            step.run.counter("conns_evicted")
        ));
        out.push(step);
    }
    Ok(out)
}

fn one_step(ctx: &Ctx, agent: &mut Agent, port: u16, n: u32) -> Result<IdleStep> {
    let pid = agent.pid();
    let ticks0 = procs::cpu_ticks(pid)?;
    // One client after the other, so the first client holds the oldest
    // connections and the last the newest.
    let mut clients = Vec::new();
    let mut opened = 0;
    while opened < n {
        let count = PER_CLIENT.min(n - opened);
        let mut client = Client::spawn(port, count, opened as usize)?;
        client.wait_line("opened")?;
        clients.push(client);
        opened += count;
    }
    // The open events are taken in at the agent's next drain.
    thread::sleep(Duration::from_millis(1200));
    let ticks = procs::cpu_ticks(pid)?.saturating_sub(ticks0);
    let cpu_us_per_connection = 1e6 * ticks as f64 / procs::clock_ticks_per_second() / f64::from(n.max(1));

    let spans0 = ctx.sink.count().spans;
    for client in clients.iter_mut() {
        client.ask("all")?;
    }
    wait_spans(ctx, spans0, 2 * u64::from(n), Duration::from_secs(30));
    let rss_kib = procs::status_kib(pid, "VmRSS")?;
    let bpf_memlock_kib = bpf_memlock_kib(pid);

    let sample = IDLE_SAMPLE.min(n as usize / 2);
    if clients.is_empty() {
        bail!("no client for {n} connections");
    }
    let newest = clients.len() - 1;
    let spans0 = ctx.sink.count().spans;
    clients[0].ask(&format!("oldest {sample}"))?;
    let oldest_spans = wait_spans(ctx, spans0, 2 * sample as u64, SAMPLE_WAIT);
    let spans0 = ctx.sink.count().spans;
    clients[newest].ask(&format!("newest {sample}"))?;
    let newest_spans = wait_spans(ctx, spans0, 2 * sample as u64, SAMPLE_WAIT);
    drop(clients);
    Ok(IdleStep {
        connections: n,
        cpu_us_per_connection,
        rss_kib,
        bpf_memlock_kib,
        oldest_spans,
        newest_spans,
        run: AgentRun::default(),
    })
}

/// A `bench-idle-client` process; stopped (its connections closed) on drop.
struct Client {
    proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    fn spawn(port: u16, count: u32, offset: usize) -> Result<Client> {
        let exe = std::env::current_exe().context("finding this program to start idle clients")?;
        let mut command = Command::new(exe);
        command
            .args(["bench-idle-client", &port.to_string(), &count.to_string(), &offset.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn("idle client", command, libc::SIGTERM, None)?;
        let child = proc.child_mut();
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("idle client stdin not captured"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("idle client stdout not captured"))?);
        Ok(Client { proc, stdin, stdout })
    }

    fn wait_line(&mut self, want: &str) -> Result<()> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).context("reading an idle client's answer")?;
        if line.trim_end() != want {
            let status = self.proc.exited().map(|s| s.to_string()).unwrap_or_else(|| "running".into());
            bail!("idle client said {:?} instead of {want:?} ({status})", line.trim_end());
        }
        Ok(())
    }

    /// A request on the connections `what` names (`all`, `oldest M`, `newest M`).
    fn ask(&mut self, what: &str) -> Result<()> {
        writeln!(self.stdin, "{what}").context("writing to an idle client")?;
        self.stdin.flush().context("writing to an idle client")?;
        self.wait_line("done")
    }
}

/// `xtask bench-idle-client PORT COUNT OFFSET`: opens COUNT connections to
/// nginx on PORT (over [`ADDRS`], starting at OFFSET), says `opened`, then
/// per line on stdin makes one request on the connections it names and
/// says `done`; exits at the end of stdin.
pub fn client_main(port: u16, count: u32, offset: usize) -> Result<()> {
    let mut conns = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let addr = ADDRS[(offset + i) % ADDRS.len()];
        let conn = TcpStream::connect((addr, port)).with_context(|| format!("connection {i} to {addr}:{port}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).context("setting a read timeout")?;
        conns.push(conn);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "opened")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading a command")?;
        let which: &mut [TcpStream] = match line.split_once(' ') {
            None if line == "all" => &mut conns,
            Some(("oldest", m)) => {
                let m: usize = m.parse().context("oldest M")?;
                let m = m.min(conns.len());
                &mut conns[..m]
            }
            Some(("newest", m)) => {
                let m: usize = m.parse().context("newest M")?;
                let from = conns.len().saturating_sub(m);
                &mut conns[from..]
            }
            _ => bail!("unknown command {line:?}"),
        };
        for conn in which.iter_mut() {
            exchange(conn)?;
        }
        writeln!(out, "done")?;
        out.flush()?;
    }
    Ok(())
}

/// One request and its whole response.
fn exchange(conn: &mut TcpStream) -> Result<()> {
    conn.write_all(REQUEST).context("sending a request")?;
    let mut got = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !got.ends_with(RESPONSE_END) {
        let n = conn.read(&mut buf).context("reading a response")?;
        if n == 0 {
            bail!("nginx closed an idle connection ({} bytes of its response)", got.len());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// Waits until the sink has `want` spans more than `from`, or until no span
/// came for 1.5 s (an agent that evicted connections exports fewer), at
/// most `limit`; returns how many came.
fn wait_spans(ctx: &Ctx, from: u64, want: u64, limit: Duration) -> u64 {
    let start = Instant::now();
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let got = ctx.sink.count().spans.saturating_sub(from);
        if got != last {
            (last, last_change) = (got, Instant::now());
        }
        if got >= want || start.elapsed() > limit || last_change.elapsed() > Duration::from_millis(1500) {
            return got;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of `memlock:` over the process's descriptors (eBPF maps and
/// programs report it in their fdinfo).
fn bpf_memlock_kib(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    let bytes: u64 = dir
        .flatten()
        .filter_map(|entry| fs::read_to_string(entry.path()).ok())
        .filter_map(|info| memlock_bytes(&info))
        .sum();
    bytes / 1024
}

fn memlock_bytes(fdinfo: &str) -> Option<u64> {
    fdinfo.lines().find_map(|line| line.strip_prefix("memlock:")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_from_a_maps_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t9\nkey_size:\t8\n\
                      value_size:\t64\nmax_entries:\t65536\nmap_flags:\t0x0\nmap_extra:\t0x0\nmemlock:\t5767168\n\
                      map_id:\t42\nfrozen:\t0\n";
        assert_eq!(memlock_bytes(fdinfo), Some(5_767_168));
        assert_eq!(memlock_bytes("pos:\t0\nflags:\t02\n"), None);
    }

    #[test]
    fn steps_end_at_a_hundred_thousand() {
        assert_eq!(idle_steps(false).last(), Some(&100_000));
        assert!(idle_steps(true).iter().all(|&n| n <= 5_000), "quick stays quick");
    }
}
