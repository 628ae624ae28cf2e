//! Load generators (wrk, h2load, pgbench) and the parsing of what they print.
use std::{path::Path, process::Command, time::Duration};

use anyhow::{anyhow, bail, Result};

use super::procs;

/// Slack on top of a load generator's own duration before it is killed.
const SLACK: Duration = Duration::from_secs(60);

/// One wrk run (closed loop: as fast as the server answers).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub duration_s: f64,
    pub errors: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// TCP connections this network namespace opened during the run
    /// (ActiveOpens of /proc/net/snmp): wrk's own, plus whatever else ran.
    pub tcp_opens: Option<u64>,
}

impl WrkResult {
    pub fn rps(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.requests as f64 / self.duration_s
        } else {
            0.0
        }
    }
}

pub struct Wrk<'a> {
    pub url: &'a str,
    pub threads: u32,
    pub connections: u32,
    pub seconds: f64,
    pub script: &'a Path,
    /// Extra request headers (`Connection: close` makes wrk reconnect for
    /// every request).
    pub headers: &'a [&'a str],
}

impl Wrk<'_> {
    pub fn run(&self) -> Result<WrkResult> {
        // wrk takes whole seconds; sub-second warm-ups round up to 1.
        let secs = self.seconds.ceil().max(1.0) as u64;
        let mut command = Command::new("wrk");
        command
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{secs}s"))
            .arg("--timeout")
            .arg("5s")
            .arg("-s")
            .arg(self.script);
        for header in self.headers {
            command.arg("-H").arg(header);
        }
        command.arg(self.url);
        let opens_before = procs::tcp_active_opens();
        let (status, stdout, stderr) = procs::run_captured("wrk", command, Duration::from_secs(secs) + SLACK)?;
        if !status.success() {
            bail!("wrk failed ({status}): {stderr}{stdout}");
        }
        let mut result = parse_wrk(&stdout).ok_or_else(|| anyhow!("no WRK_RESULT line in wrk's output:\n{stdout}"))?;
        result.tcp_opens = opens_before.zip(procs::tcp_active_opens()).map(|(a, b)| b.saturating_sub(a));
        if result.requests == 0 {
            bail!("wrk completed no request against {}:\n{stdout}", self.url);
        }
        Ok(result)
    }
}

/// The line bench/wrk_report.lua prints.
pub fn parse_wrk(stdout: &str) -> Option<WrkResult> {
    let line = stdout.lines().find(|l| l.starts_with("WRK_RESULT "))?;
    let get = |key: &str| -> Option<f64> {
        line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<f64>().ok())
    };
    Some(WrkResult {
        requests: get("requests")? as u64,
        duration_s: get("duration_us")? / 1e6,
        errors: get("errors")? as u64,
        p50_us: get("p50_us")?,
        p90_us: get("p90_us")?,
        p99_us: get("p99_us")?,
        max_us: get("max_us")?,
        tcp_opens: None,
    })
}

/// One h2load run at a fixed request rate (open loop per connection).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct H2loadResult {
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub rps: f64,
    pub mean_ms: f64,
}

pub fn h2load_fixed_rate(url: &str, connections: u32, rate: u32, seconds: f64) -> Result<H2loadResult> {
    let per_client = f64::from(rate) / f64::from(connections.max(1));
    let secs = seconds.ceil().max(1.0) as u64;
    let mut command = Command::new("h2load");
    command
        .args(["--h1", "-t", "1", "-c"])
        .arg(connections.to_string())
        .arg(format!("--rps={per_client}"))
        .arg("-D")
        .arg(secs.to_string())
        .arg(url);
    let (status, stdout, stderr) = procs::run_captured("h2load", command, Duration::from_secs(secs) + SLACK)?;
    if !status.success() {
        bail!("h2load failed ({status}): {stderr}{stdout}");
    }
    parse_h2load(&stdout).ok_or_else(|| anyhow!("could not read h2load's summary:\n{stdout}"))
}

/// From `finished in 10.00s, 19998.20 req/s, 1.2MB/s`,
/// `requests: 200000 total, 200000 started, 200000 done, 199990 succeeded, 10 failed, 10 errored, 0 timeout`
/// and `time for request:   180us  9.01ms  300us  ...` (min max mean sd).
pub fn parse_h2load(stdout: &str) -> Option<H2loadResult> {
    let finished = stdout.lines().find(|l| l.starts_with("finished in"))?;
    let rps = finished.split(',').nth(1)?.split_whitespace().next()?.parse().ok()?;
    let requests = stdout.lines().find(|l| l.starts_with("requests:"))?;
    let count = |what: &str| -> Option<u64> {
        requests.split(',').find_map(|part| part.trim().strip_suffix(what)?.trim().rsplit(' ').next()?.parse().ok())
    };
    let mean_ms = stdout
        .lines()
        .find(|l| l.starts_with("time for request:"))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(parse_duration_ms)
        .unwrap_or(0.0);
    Some(H2loadResult {
        succeeded: count("succeeded")?,
        failed: count("failed")?,
        errored: count("errored")?,
        rps,
        mean_ms,
    })
}

/// `250us`, `1.25ms`, `2.00s` as milliseconds.
fn parse_duration_ms(text: &str) -> Option<f64> {
    if let Some(v) = text.strip_suffix("us") {
        return v.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    if let Some(v) = text.strip_suffix("ms") {
        return v.parse().ok();
    }
    text.strip_suffix('s')?.parse::<f64>().ok().map(|v| v * 1000.0)
}

/// `pgbench -S -M prepared`: select-only transactions, prepared statements.
pub fn pgbench_select(port: u16, clients: u32, seconds: f64) -> Result<f64> {
    let secs = seconds.ceil().max(1.0) as u64;
    let mut command = Command::new("pgbench");
    command
        .args(["-S", "-M", "prepared", "-n", "-h", "127.0.0.1", "-U", "postgres", "-c"])
        .arg(clients.to_string())
        .args(["-j", "1", "-T"])
        .arg(secs.to_string())
        .arg("-p")
        .arg(port.to_string())
        .arg("postgres");
    let (status, stdout, stderr) = procs::run_captured("pgbench", command, Duration::from_secs(secs) + SLACK)?;
    if !status.success() {
        bail!("pgbench failed ({status}): {stderr}{stdout}");
    }
    parse_pgbench_tps(&stdout).ok_or_else(|| anyhow!("no tps line in pgbench's output:\n{stdout}"))
}

/// `tps = 12345.678901 (without initial connection time)`; older pgbench
/// versions print an `including connections establishing` line first.
pub fn parse_pgbench_tps(stdout: &str) -> Option<f64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("tps = ") && l.contains("without initial connection"))
        .or_else(|| stdout.lines().find(|l| l.starts_with("tps = ") && l.contains("excluding")))?;
    line.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_result_line() {
        let out = "Running 3s test @ http://127.0.0.1:8080/\n  1 threads and 32 connections\n\
                   WRK_RESULT requests=90000 duration_us=3000000 errors=2 p50_us=300 p90_us=420 p99_us=900 max_us=5000\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 90000);
        assert_eq!(r.errors, 2);
        assert!((r.rps() - 30000.0).abs() < 1e-6);
        assert_eq!((r.p50_us, r.p99_us), (300.0, 900.0));
        assert!(parse_wrk("Running 3s test\n").is_none());
    }

    #[test]
    fn h2load_summary() {
        let out = "starting benchmark...\n\
            finished in 10.00s, 19998.20 req/s, 1.23MB/s\n\
            requests: 200000 total, 200000 started, 200000 done, 199990 succeeded, 10 failed, 10 errored, 0 timeout\n\
            status codes: 199990 2xx, 0 3xx, 0 4xx, 0 5xx\n\
            traffic: 12.34MB (12939184) total, 5.72MB (6000000) headers (space savings 0.00%), 0B (0) data\n\
                                 min         max         mean         sd        +/- sd\n\
            time for request:      180us      9.01ms       310us       120us    95.00%\n";
        let r = parse_h2load(out).unwrap();
        assert_eq!((r.succeeded, r.failed, r.errored), (199990, 10, 10));
        assert!((r.rps - 19998.20).abs() < 1e-9);
        assert!((r.mean_ms - 0.31).abs() < 1e-9);
        assert_eq!(parse_duration_ms("2.5s"), Some(2500.0));
        assert!(parse_h2load("nothing").is_none());
    }

    #[test]
    fn pgbench_tps() {
        let out = "latency average = 0.321 ms\ninitial connection time = 12.3 ms\n\
                   tps = 12455.120934 (without initial connection time)\n";
        assert_eq!(parse_pgbench_tps(out), Some(12455.120934));
        let old =
            "tps = 11000.1 (including connections establishing)\ntps = 11111.5 (excluding connections establishing)\n";
        assert_eq!(parse_pgbench_tps(old), Some(11111.5));
        assert_eq!(parse_pgbench_tps("nothing"), None);
    }
}
