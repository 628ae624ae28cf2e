//! The three-way comparison the Flask, Node.js and per-connection scenarios
//! share: the same app served bare, watched by waggle, and instrumented by
//! the OpenTelemetry SDK a user would otherwise pick, each variant on a
//! fresh server process (an SDK cannot be unloaded), in alternating order.
use anyhow::{bail, Result};

use crate::bench::{
    agent::AgentRun,
    ctx::{round_order, Ctx},
    load::{self, WrkResult},
    procs::{self, Proc},
    sink::SinkCount,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracing {
    None,
    Waggle,
    Sdk,
}

#[derive(Clone, Debug)]
pub struct SdkRound {
    pub none: WrkResult,
    pub waggle: WrkResult,
    /// Requests served while the agent ran (warm-up included), for spans/request.
    pub waggle_requests: u64,
    pub waggle_run: AgentRun,
    pub sdk: WrkResult,
    /// Requests served under the SDK, warm-up included (all of them are
    /// in `sdk_export`).
    pub sdk_requests: u64,
    /// What the SDK delivered to the OTLP sink, from its start to its
    /// shutdown flush.
    pub sdk_export: SinkCount,
}

/// One three-way scenario: which app, how it is loaded.
pub struct SdkBench<'a> {
    /// For progress lines, logs and agent log names (`flask`, `node`, ...).
    pub label: &'a str,
    /// The SDK, for messages (`OpenTelemetry Python SDK`).
    pub sdk_name: &'a str,
    /// Request path (`/work/7`).
    pub path: &'a str,
    pub connections: u32,
    pub headers: &'a [&'a str],
}

/// Runs `ctx.rounds` rounds; `start` serves the app for one variant on a
/// port and returns once it listens (stopping the process flushes an SDK).
pub fn sdk_rounds(
    ctx: &mut Ctx,
    bench: &SdkBench,
    mut start: impl FnMut(&Ctx, Tracing, u16) -> Result<Proc>,
) -> Result<Vec<SdkRound>> {
    let script = ctx.bench_dir().join("wrk_report.lua");
    let mut rounds = Vec::new();
    for i in 0..ctx.rounds {
        ctx.check_quiet(&format!("{} round {}", bench.label, i + 1));
        let (mut none, mut waggle, mut sdk) = (None, None, None);
        for variant in round_order(i, &[Tracing::None, Tracing::Waggle, Tracing::Sdk]) {
            let port = procs::free_port()?;
            let url = format!("http://127.0.0.1:{port}{}", bench.path);
            let wrk = |seconds: f64| load::Wrk {
                url: &url,
                threads: 1,
                connections: bench.connections,
                seconds,
                script: &script,
                headers: bench.headers,
            };
            let before = ctx.sink.count();
            let mut server = start(ctx, variant, port)?;
            match variant {
                Tracing::Waggle => {
                    let mut a = ctx.start_agent(bench.label)?;
                    let warm = wrk(ctx.warmup).run()?;
                    a.begin()?;
                    let measured = wrk(ctx.seconds).run()?;
                    a.end_and_drain()?;
                    let run = a.stop()?;
                    waggle = Some((measured, warm.requests + measured.requests, run));
                    server.stop()?;
                }
                Tracing::None => {
                    wrk(ctx.warmup).run()?;
                    none = Some(wrk(ctx.seconds).run()?);
                    server.stop()?;
                }
                Tracing::Sdk => {
                    let warm = wrk(ctx.warmup).run()?;
                    let measured = wrk(ctx.seconds).run()?;
                    // Stopping flushes the SDK's batch processors.
                    server.stop()?;
                    sdk = Some((measured, warm.requests + measured.requests, ctx.sink.count().since(before)));
                }
            }
        }
        let (Some(none), Some((waggle, waggle_requests, waggle_run)), Some((sdk, sdk_requests, sdk_export))) =
            (none, waggle, sdk)
        else {
            bail!("round {i} lost a variant");
        };
        if sdk_export.requests == 0 {
            bail!(
                "the {} run exported nothing to the OTLP sink: the SDK comparison would be void (see its log in raw/)",
                bench.sdk_name
            );
        }
        procs::tracing_line(&format!(
            "{} round {}: {:.0} rps bare, {:.0} with waggle ({:.0} m agent CPU), {:.0} with the {}",
            bench.label,
            i + 1,
            none.rps(),
            waggle.rps(),
            waggle_run.millicores(),
            sdk.rps(),
            bench.sdk_name
        ));
        rounds.push(SdkRound { none, waggle, waggle_requests, waggle_run, sdk, sdk_requests, sdk_export });
    }
    Ok(rounds)
}
