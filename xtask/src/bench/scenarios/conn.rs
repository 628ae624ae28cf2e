//! A new connection for every request (`Connection: close`), the common case
//! of legacy services (HTTP/1.0 clients, CGI-style workers, closing
//! proxies): against nginx (no agent vs waggle) and against the gunicorn
//! sync Flask app (no tracing vs waggle vs the Python SDK). What the agent
//! pays per connection, not per request, shows here: agent CPU per new
//! connection is its CPU per span × the spans it made per connection.
use anyhow::{bail, Result};

use super::{
    flask::{start_gunicorn, FLASK_PATH, FLASK_WRK_CONNECTIONS, PYTHON_SDK},
    nginx::{Nginx, NGINX_WRK_CONNECTIONS, NGINX_WRK_THREADS},
    sdk::{sdk_rounds, SdkBench, SdkRound},
};
use crate::bench::{
    agent::AgentRun,
    ctx::{round_order, Ctx},
    load::{self, WrkResult},
    procs,
};

pub const CONNECTION_CLOSE: &str = "Connection: close";

#[derive(Clone, Debug)]
pub struct ConnRound {
    pub none: WrkResult,
    pub waggle: WrkResult,
    /// Connections made while the agent ran (warm-up included).
    pub waggle_requests: u64,
    pub run: AgentRun,
}

#[derive(Clone, Debug, Default)]
pub struct ConnResults {
    pub nginx: Vec<ConnRound>,
    pub flask: Vec<SdkRound>,
}

/// wrk's requests are its connections only if it really reconnected for
/// each: the kernel's count of opened connections must say so too.
fn check_reconnects(what: &str, r: &WrkResult) -> Result<()> {
    match r.tcp_opens {
        Some(opens) if (opens as f64) < 0.9 * r.requests as f64 => bail!(
            "{what}: wrk opened {opens} TCP connections for {} requests with `{CONNECTION_CLOSE}`: it did not \
             reconnect per request, so requests are not connections",
            r.requests
        ),
        _ => Ok(()),
    }
}

pub fn conn(ctx: &mut Ctx) -> Result<ConnResults> {
    let mut results = ConnResults { nginx: conn_nginx(ctx)?, flask: Vec::new() };
    let bench = SdkBench {
        label: "flask-close",
        sdk_name: PYTHON_SDK,
        path: FLASK_PATH,
        connections: FLASK_WRK_CONNECTIONS,
        headers: &[CONNECTION_CLOSE],
    };
    results.flask = sdk_rounds(ctx, &bench, start_gunicorn)?;
    for (i, round) in results.flask.iter().enumerate() {
        check_reconnects(&format!("flask-close round {}", i + 1), &round.none)?;
    }
    Ok(results)
}

fn conn_nginx(ctx: &mut Ctx) -> Result<Vec<ConnRound>> {
    let mut server = Nginx::start(ctx)?;
    let url = server.url();
    let script = ctx.bench_dir().join("wrk_report.lua");
    let wrk = |seconds: f64| load::Wrk {
        url: &url,
        threads: NGINX_WRK_THREADS,
        connections: NGINX_WRK_CONNECTIONS,
        seconds,
        script: &script,
        headers: &[CONNECTION_CLOSE],
    };
    let mut rounds = Vec::new();
    for i in 0..ctx.rounds {
        ctx.check_quiet(&format!("nginx-close round {}", i + 1));
        let (mut none, mut waggle) = (None, None);
        for with_agent in round_order(i, &[false, true]) {
            if with_agent {
                let mut a = ctx.start_agent("nginx-close")?;
                let warm = wrk(ctx.warmup).run()?;
                a.begin()?;
                let measured = wrk(ctx.seconds).run()?;
                a.end_and_drain()?;
                waggle = Some((measured, warm.requests + measured.requests, a.stop()?));
            } else {
                wrk(ctx.warmup).run()?;
                let measured = wrk(ctx.seconds).run()?;
                check_reconnects(&format!("nginx-close round {}", i + 1), &measured)?;
                none = Some(measured);
            }
            server.check_alive()?;
        }
        let (Some(none), Some((waggle, waggle_requests, run))) = (none, waggle) else {
            bail!("round {i} lost a variant");
        };
        procs::tracing_line(&format!(
            "nginx-close round {}: {:.0} conn/s without agent, {:.0} with waggle ({:.1} µs agent CPU per connection)",
            i + 1,
            none.rps(),
            waggle.rps(),
            run.cpu_us_per_request(waggle_requests)
        ));
        rounds.push(ConnRound { none, waggle, waggle_requests, run });
    }
    Ok(rounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_count_as_connections_only_when_wrk_reconnected() {
        let r = WrkResult { requests: 10_000, tcp_opens: Some(10_030), ..Default::default() };
        assert!(check_reconnects("x", &r).is_ok());
        // Keep-alive: 32 connections for 10k requests.
        let kept = WrkResult { tcp_opens: Some(32), ..r };
        let e = check_reconnects("nginx-close round 1", &kept).unwrap_err().to_string();
        assert!(e.contains("opened 32 TCP connections for 10000 requests"), "{e}");
        // No /proc/net/snmp: nothing to check against.
        assert!(check_reconnects("x", &WrkResult { tcp_opens: None, ..r }).is_ok());
    }
}
