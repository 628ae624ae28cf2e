//! Summaries of the measurements and the verdict on each target of the
//! acceptance.
use super::{
    profile::Profile,
    scenarios::{ConnResults, ConnRound, IdleStep, NginxRound, PgRound, SdkRound, SustainedStep},
    syscalls::{Probe, SyscallResults, SYSCALL_MODES},
};

/// The targets from the acceptance.
pub const TARGET_THROUGHPUT_RATIO: f64 = 0.97;
pub const TARGET_MILLICORES_PER_10K: f64 = 50.0;
pub const TARGET_CLEAN_RATE: u32 = 20_000;
pub const TARGET_RSS_MIB_AT_10K: f64 = 60.0;
/// Agent RSS with this many open idle connections at most [`TARGET_IDLE_RSS_MIB`].
pub const TARGET_IDLE_CONNECTIONS: u32 = 100_000;
pub const TARGET_IDLE_RSS_MIB: f64 = 200.0;
/// waggle's throughput cost at most this fraction of the SDK's.
pub const TARGET_COST_VS_SDK: f64 = 0.2;
/// Agent CPU per new connection (both ends traced), µs.
pub const TARGET_CPU_US_PER_CONNECTION: f64 = 5.0;
/// Agent CPU per span at a fixed 10k req/s, µs (50m per 10k req/s, two
/// spans per request).
pub const TARGET_CPU_US_PER_SPAN: f64 = 2.5;
/// The application metrics may cost at most this much more than spans
/// alone (issue 12: "within 10 %").
pub const TARGET_METRICS_ON_COST: f64 = 1.10;

#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub date_utc: String,
    pub commit: String,
    pub load_average: String,
    pub tools: Vec<(String, String)>,
}

/// A scenario's outcome: its data, or why it could not run.
pub type Outcome<T> = Option<Result<T, String>>;

#[derive(Default)]
pub struct Results {
    pub quick: bool,
    pub rounds: u32,
    pub seconds: f64,
    pub machine: Machine,
    pub warnings: Vec<String>,
    pub nginx: Outcome<Vec<NginxRound>>,
    pub flask: Outcome<Vec<SdkRound>>,
    pub conn: Outcome<ConnResults>,
    pub node: Outcome<Vec<SdkRound>>,
    pub postgres: Outcome<Vec<PgRound>>,
    pub syscalls: Outcome<SyscallResults>,
    pub sustained: Outcome<Vec<SustainedStep>>,
    /// nginx over HTTPS: its rounds have no metrics-on variant.
    pub https: Outcome<Vec<NginxRound>>,
    pub idle: Outcome<Vec<IdleStep>>,
    pub profile: Outcome<Profile>,
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The derived numbers, shared by the markdown, the JSON and the targets.
#[derive(Clone, Debug, Default)]
pub struct NginxSummary {
    pub base_rps: f64,
    pub agent_rps: f64,
    pub rps_ratios: Vec<f64>,
    /// Median throughput with empty programs on the same tracepoints, and
    /// per round: floor ÷ no agent, waggle ÷ floor (empty without a floor).
    pub floor_rps: Option<f64>,
    pub floor_ratios: Vec<f64>,
    pub agent_to_floor_ratios: Vec<f64>,
    pub p50_ratios: Vec<f64>,
    pub p99_ratios: Vec<f64>,
    pub base_p50: f64,
    pub agent_p50: f64,
    pub base_p99: f64,
    pub agent_p99: f64,
    pub millicores: f64,
    pub millicores_per_10k: f64,
    pub cpu_us_per_span: f64,
    pub peak_rss_mib: f64,
    pub events_lost: u64,
    pub spans_dropped: u64,
    pub spans_per_request: f64,
    /// Per round with the metrics-on variant: its throughput ÷ waggle's
    /// (metrics off), and its agent CPU per span.
    pub metrics_rps_ratios: Vec<f64>,
    pub metrics_cpu_us_per_span: Option<f64>,
}

pub fn summarize_nginx(rounds: &[NginxRound]) -> NginxSummary {
    let col = |f: &dyn Fn(&NginxRound) -> f64| rounds.iter().map(f).collect::<Vec<f64>>();
    let millicores = median(&col(&|r| r.run.millicores()));
    let agent_rps = median(&col(&|r| r.agent.rps()));
    let spans: u64 = rounds.iter().map(|r| r.run.counter("spans_created")).sum();
    let requests: u64 = rounds.iter().map(|r| r.agent_requests).sum();
    let with_floor: Vec<(&NginxRound, f64)> =
        rounds.iter().filter_map(|r| r.floor.as_ref().map(|f| (r, f.rps()))).collect();
    NginxSummary {
        base_rps: median(&col(&|r| r.base.rps())),
        agent_rps,
        rps_ratios: col(&|r| ratio(r.agent.rps(), r.base.rps())),
        floor_rps: (!with_floor.is_empty()).then(|| median(&with_floor.iter().map(|(_, f)| *f).collect::<Vec<_>>())),
        floor_ratios: with_floor.iter().map(|(r, f)| ratio(*f, r.base.rps())).collect(),
        agent_to_floor_ratios: with_floor.iter().map(|(r, f)| ratio(r.agent.rps(), *f)).collect(),
        p50_ratios: col(&|r| ratio(r.agent.p50_us, r.base.p50_us)),
        p99_ratios: col(&|r| ratio(r.agent.p99_us, r.base.p99_us)),
        base_p50: median(&col(&|r| r.base.p50_us)),
        agent_p50: median(&col(&|r| r.agent.p50_us)),
        base_p99: median(&col(&|r| r.base.p99_us)),
        agent_p99: median(&col(&|r| r.agent.p99_us)),
        millicores,
        millicores_per_10k: median(&col(&|r| ratio(r.run.millicores(), r.agent.rps() / 10_000.0))),
        cpu_us_per_span: median(&col(&|r| r.run.cpu_us_per_span())),
        peak_rss_mib: rounds.iter().map(|r| mib(r.run.peak_rss_kib)).fold(0.0, f64::max),
        events_lost: rounds.iter().map(|r| r.run.counter("kernel_events_lost")).sum(),
        spans_dropped: rounds.iter().map(|r| r.run.counter("spans_dropped_queue_full")).sum(),
        spans_per_request: ratio(spans as f64, requests as f64),
        metrics_rps_ratios: rounds
            .iter()
            .filter_map(|r| r.metrics.as_ref().map(|(m, _)| ratio(m.rps(), r.agent.rps())))
            .collect(),
        metrics_cpu_us_per_span: {
            let per_span: Vec<f64> =
                rounds.iter().filter_map(|r| r.metrics.as_ref().map(|(_, run)| run.cpu_us_per_span())).collect();
            (!per_span.is_empty()).then(|| median(&per_span))
        },
    }
}

#[derive(Clone, Debug, Default)]
pub struct SdkSummary {
    pub none_rps: f64,
    pub waggle_rps: f64,
    pub sdk_rps: f64,
    pub waggle_ratios: Vec<f64>,
    pub sdk_ratios: Vec<f64>,
    pub none_p50: f64,
    pub waggle_p50: f64,
    pub sdk_p50: f64,
    pub none_p99: f64,
    pub waggle_p99: f64,
    pub sdk_p99: f64,
    pub waggle_millicores: f64,
    pub waggle_cpu_us_per_span: f64,
    /// Agent CPU per span × its spans per request: per new connection when
    /// every request has its own (gunicorn sync, `Connection: close`).
    pub waggle_cpu_us_per_request: f64,
    pub spans_per_request: f64,
    pub sdk_export_requests: u64,
    /// Spans the SDK delivered per request served (below 1: it dropped some).
    pub sdk_spans_per_request: f64,
    pub events_lost: u64,
}

impl SdkSummary {
    /// Throughput lost, as a fraction (0.02 = 2 %).
    pub fn waggle_cost(&self) -> f64 {
        1.0 - median(&self.waggle_ratios)
    }
    pub fn sdk_cost(&self) -> f64 {
        1.0 - median(&self.sdk_ratios)
    }
}

pub fn summarize_sdk(rounds: &[SdkRound]) -> SdkSummary {
    let col = |f: &dyn Fn(&SdkRound) -> f64| rounds.iter().map(f).collect::<Vec<f64>>();
    let spans: u64 = rounds.iter().map(|r| r.waggle_run.counter("spans_created")).sum();
    let requests: u64 = rounds.iter().map(|r| r.waggle_requests).sum();
    let sdk_spans: u64 = rounds.iter().map(|r| r.sdk_export.spans).sum();
    let sdk_requests: u64 = rounds.iter().map(|r| r.sdk_requests).sum();
    SdkSummary {
        none_rps: median(&col(&|r| r.none.rps())),
        waggle_rps: median(&col(&|r| r.waggle.rps())),
        sdk_rps: median(&col(&|r| r.sdk.rps())),
        waggle_ratios: col(&|r| ratio(r.waggle.rps(), r.none.rps())),
        sdk_ratios: col(&|r| ratio(r.sdk.rps(), r.none.rps())),
        none_p50: median(&col(&|r| r.none.p50_us)),
        waggle_p50: median(&col(&|r| r.waggle.p50_us)),
        sdk_p50: median(&col(&|r| r.sdk.p50_us)),
        none_p99: median(&col(&|r| r.none.p99_us)),
        waggle_p99: median(&col(&|r| r.waggle.p99_us)),
        sdk_p99: median(&col(&|r| r.sdk.p99_us)),
        waggle_millicores: median(&col(&|r| r.waggle_run.millicores())),
        waggle_cpu_us_per_span: median(&col(&|r| r.waggle_run.cpu_us_per_span())),
        waggle_cpu_us_per_request: median(&col(&|r| r.waggle_run.cpu_us_per_request(r.waggle_requests))),
        spans_per_request: ratio(spans as f64, requests as f64),
        sdk_export_requests: rounds.iter().map(|r| r.sdk_export.requests).sum(),
        sdk_spans_per_request: ratio(sdk_spans as f64, sdk_requests as f64),
        events_lost: rounds.iter().map(|r| r.waggle_run.counter("kernel_events_lost")).sum(),
    }
}

/// nginx with a new connection per request.
#[derive(Clone, Debug, Default)]
pub struct ConnSummary {
    pub base_rps: f64,
    pub agent_rps: f64,
    pub rps_ratios: Vec<f64>,
    pub millicores: f64,
    pub cpu_us_per_connection: f64,
    pub cpu_us_per_span: f64,
    pub spans_per_connection: f64,
    pub events_lost: u64,
}

pub fn summarize_conn_nginx(c: &ConnResults) -> ConnSummary {
    let col = |f: &dyn Fn(&ConnRound) -> f64| c.nginx.iter().map(f).collect::<Vec<f64>>();
    ConnSummary {
        base_rps: median(&col(&|r| r.none.rps())),
        agent_rps: median(&col(&|r| r.waggle.rps())),
        rps_ratios: col(&|r| ratio(r.waggle.rps(), r.none.rps())),
        millicores: median(&col(&|r| r.run.millicores())),
        cpu_us_per_connection: median(&col(&|r| r.run.cpu_us_per_request(r.waggle_requests))),
        cpu_us_per_span: median(&col(&|r| r.run.cpu_us_per_span())),
        spans_per_connection: median(&col(&|r| ratio(r.run.counter("spans_created") as f64, r.waggle_requests as f64))),
        events_lost: c.nginx.iter().map(|r| r.run.counter("kernel_events_lost")).sum(),
    }
}

#[derive(Clone, Debug, Default)]
pub struct SyscallRow {
    pub mode: &'static str,
    /// Median CPU ns per syscall.
    pub none: f64,
    pub empty: f64,
    pub waggle: f64,
    /// Median wall-clock ns per syscall.
    pub wall_none: f64,
    pub wall_waggle: f64,
}

impl SyscallRow {
    pub fn empty_added(&self) -> f64 {
        self.empty - self.none
    }
    pub fn waggle_added(&self) -> f64 {
        self.waggle - self.none
    }
}

/// Best of the rounds: interference (other work on the CPU, other tracers)
/// only ever adds time to a tight loop, so the minimum is the estimate
/// closest to the loop's own cost.
pub fn best(values: &[f64]) -> f64 {
    values.iter().copied().filter(|x| x.is_finite()).reduce(f64::min).unwrap_or(f64::NAN)
}

pub fn summarize_syscalls(r: &SyscallResults) -> Vec<SyscallRow> {
    SYSCALL_MODES
        .iter()
        .map(|&mode| SyscallRow {
            mode,
            none: best(&r.values(mode, Probe::None)),
            empty: best(&r.values(mode, Probe::Empty)),
            waggle: best(&r.values(mode, Probe::Waggle)),
            wall_none: best(&r.wall_values(mode, Probe::None)),
            wall_waggle: best(&r.wall_values(mode, Probe::Waggle)),
        })
        .collect()
}

/// Highest fixed rate that was reached with no kernel event lost.
pub fn highest_clean_rate(steps: &[SustainedStep]) -> Option<u32> {
    steps.iter().filter(|s| s.clean()).map(|s| s.rate).max()
}

#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

pub fn targets(res: &Results) -> Vec<Verdict> {
    let mut out = Vec::new();
    let missing = |target: &str| Verdict { target: target.into(), measured: "not measured".into(), met: None };

    let t = format!("throughput ≥ {TARGET_THROUGHPUT_RATIO}× no-agent on saturated nginx");
    match &res.nginx {
        Some(Ok(rounds)) if !rounds.is_empty() => {
            let ratio = median(&summarize_nginx(rounds).rps_ratios);
            out.push(Verdict {
                target: t,
                measured: format!("{ratio:.3}×"),
                met: Some(ratio >= TARGET_THROUGHPUT_RATIO),
            });
        }
        _ => out.push(missing(&t)),
    }

    let steps = match &res.sustained {
        Some(Ok(steps)) => steps.as_slice(),
        _ => &[],
    };
    let at_10k = steps.iter().find(|s| s.rate == 10_000 && s.reached());
    let t = format!("agent ≤ {TARGET_MILLICORES_PER_10K}m CPU per 10k rps (fixed 10k rps)");
    match at_10k {
        Some(s) => {
            let m = s.run.millicores() * 10_000.0 / s.achieved;
            out.push(Verdict { target: t, measured: format!("{m:.0}m"), met: Some(m <= TARGET_MILLICORES_PER_10K) });
        }
        None => out.push(missing(&t)),
    }
    let t = format!("zero lost events at {}k rps", TARGET_CLEAN_RATE / 1000);
    match steps.iter().find(|s| s.rate == TARGET_CLEAN_RATE) {
        Some(s) if s.reached() => out.push(Verdict {
            target: t,
            measured: format!("{} lost at {:.0} rps", s.lost(), s.achieved),
            met: Some(s.lost() == 0),
        }),
        Some(s) => out.push(Verdict {
            target: t,
            measured: format!("rate not reached ({:.0} rps achieved)", s.achieved),
            met: Some(false),
        }),
        None if !steps.is_empty() => out.push(Verdict {
            target: t,
            measured: format!(
                "stopped below: highest clean rate {}",
                highest_clean_rate(steps).map_or("none".into(), |r| r.to_string())
            ),
            met: Some(false),
        }),
        None => out.push(missing(&t)),
    }
    let t = format!("RSS ≤ {TARGET_RSS_MIB_AT_10K} MB at 10k rps");
    match at_10k {
        Some(s) => {
            let m = mib(s.run.peak_rss_kib);
            out.push(Verdict { target: t, measured: format!("{m:.1} MiB"), met: Some(m <= TARGET_RSS_MIB_AT_10K) });
        }
        None => out.push(missing(&t)),
    }
    let t = format!("agent ≤ {TARGET_CPU_US_PER_SPAN} µs CPU per span (fixed 10k rps)");
    match at_10k.filter(|s| s.run.drained_spans > 0) {
        Some(s) => {
            let us = s.run.cpu_us_per_span();
            out.push(Verdict { target: t, measured: format!("{us:.1} µs"), met: Some(us <= TARGET_CPU_US_PER_SPAN) });
        }
        None => out.push(missing(&t)),
    }
    let t = format!("agent ≤ {TARGET_CPU_US_PER_CONNECTION} µs CPU per new connection (nginx, `Connection: close`)");
    match &res.conn {
        Some(Ok(c)) if !c.nginx.is_empty() => {
            let us = summarize_conn_nginx(c).cpu_us_per_connection;
            let flask = (!c.flask.is_empty()).then(|| summarize_sdk(&c.flask).waggle_cpu_us_per_request);
            out.push(Verdict {
                target: t,
                measured: match flask {
                    Some(f) => format!("{us:.1} µs (gunicorn sync Flask: {f:.1} µs)"),
                    None => format!("{us:.1} µs"),
                },
                met: us.is_finite().then_some(us <= TARGET_CPU_US_PER_CONNECTION),
            });
        }
        _ => out.push(missing(&t)),
    }
    out.push(sdk_verdict("the Python SDK's (Flask, gunicorn sync)", &res.flask));
    out.push(sdk_verdict("the Node.js SDK's (http, keep-alive)", &res.node));
    let t = format!(
        "application metrics on: agent CPU per span ≤ {TARGET_METRICS_ON_COST}× and throughput ≥ {:.2}× metrics off (saturated nginx)",
        1.0 / TARGET_METRICS_ON_COST
    );
    match &res.nginx {
        Some(Ok(rounds)) if !rounds.is_empty() => {
            let s = summarize_nginx(rounds);
            match s.metrics_cpu_us_per_span {
                Some(on) if !s.metrics_rps_ratios.is_empty() => {
                    let cpu = on / s.cpu_us_per_span;
                    let rps = median(&s.metrics_rps_ratios);
                    out.push(Verdict {
                        target: t,
                        measured: format!(
                            "CPU {cpu:.2}× ({on:.1} vs {:.1} µs), throughput {rps:.3}×",
                            s.cpu_us_per_span
                        ),
                        met: Some(cpu <= TARGET_METRICS_ON_COST && rps >= 1.0 / TARGET_METRICS_ON_COST),
                    });
                }
                _ => out.push(missing(&t)),
            }
        }
        _ => out.push(missing(&t)),
    }
    let t = format!("RSS ≤ {TARGET_IDLE_RSS_MIB} MB with {}k open idle connections", TARGET_IDLE_CONNECTIONS / 1000);
    match res.idle.as_ref().and_then(|r| r.as_ref().ok()) {
        Some(steps) => match steps.iter().find(|s| s.connections == TARGET_IDLE_CONNECTIONS) {
            Some(s) => {
                let m = mib(s.rss_kib);
                out.push(Verdict { target: t, measured: format!("{m:.1} MiB"), met: Some(m <= TARGET_IDLE_RSS_MIB) });
            }
            None => out.push(missing(&t)),
        },
        None => out.push(missing(&t)),
    }
    out
}

/// waggle's throughput cost against an SDK's: met when it is at most
/// [`TARGET_COST_VS_SDK`] of it; n/a when the SDK cost nothing measurable.
fn sdk_verdict(whose: &str, outcome: &Outcome<Vec<SdkRound>>) -> Verdict {
    let target = format!("waggle's throughput cost ≤ 1/5 of {whose}");
    match outcome {
        Some(Ok(rounds)) if !rounds.is_empty() => {
            let s = summarize_sdk(rounds);
            let (w, k) = (s.waggle_cost(), s.sdk_cost());
            Verdict {
                target,
                measured: format!("waggle {:.1} % vs SDK {:.1} % (ratio {:.2})", 100.0 * w, 100.0 * k, ratio(w, k)),
                met: if k <= 0.0 { None } else { Some(w <= TARGET_COST_VS_SDK * k) },
            }
        }
        _ => Verdict { target, measured: "not measured".into(), met: None },
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::bench::{agent::AgentRun, load::WrkResult, sink::SinkCount};

    fn wrk(requests: u64, p50: f64, p99: f64) -> WrkResult {
        WrkResult {
            requests,
            duration_s: 10.0,
            errors: 0,
            p50_us: p50,
            p90_us: p50,
            p99_us: p99,
            max_us: p99,
            tcp_opens: None,
        }
    }

    /// A 10-second window at `millicores`; until drained 1.2× its CPU, with
    /// `drained_spans` exported.
    fn agent_run(millicores: f64, rss_mib: u64, drained_spans: u64, counters: &[(&str, u64)]) -> AgentRun {
        AgentRun {
            cpu_seconds: millicores / 100.0,
            wall_seconds: 10.0,
            peak_rss_kib: rss_mib * 1024,
            drained_cpu_seconds: 1.2 * millicores / 100.0,
            drained_spans,
            counters: counters.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    fn sdk_round(none: u64, waggle: u64, millicores: f64, sdk: u64) -> SdkRound {
        SdkRound {
            none: wrk(none, 800.0, 2000.0),
            waggle: wrk(waggle, 808.0, 2020.0),
            waggle_requests: waggle + waggle / 10,
            waggle_run: agent_run(millicores, 30, 2 * waggle, &[("spans_created", 2 * (waggle + waggle / 10))]),
            sdk: wrk(sdk, 1100.0, 3000.0),
            sdk_requests: sdk + sdk / 10,
            sdk_export: SinkCount { requests: 12, body_bytes: 1_000_000, spans: sdk + sdk / 10, uncounted: 0 },
        }
    }

    #[test]
    fn best_is_the_finite_minimum() {
        assert_eq!(best(&[3.0, 1.5, 2.0]), 1.5);
        assert_eq!(best(&[f64::NAN, 4.0]), 4.0);
        assert!(best(&[]).is_nan());
    }

    #[test]
    fn median_handles_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
    }

    /// Two nginx rounds, a Flask round, a per-connection round, a Node.js
    /// round, a failed PostgreSQL run and two sustained steps (the second
    /// losing events); shared with the markdown and JSON tests.
    pub fn sample_results() -> Results {
        let nginx = vec![
            NginxRound {
                base: wrk(300_000, 100.0, 400.0),
                floor: Some(wrk(240_000, 110.0, 450.0)),
                agent: wrk(288_000, 104.0, 440.0),
                agent_requests: 316_800,
                run: agent_run(150.0, 40, 600_000, &[("spans_created", 633_600), ("kernel_events_lost", 0)]),
                metrics: Some((
                    wrk(285_000, 105.0, 445.0),
                    agent_run(155.0, 41, 600_000, &[("spans_created", 627_000)]),
                )),
            },
            NginxRound {
                base: wrk(310_000, 100.0, 400.0),
                floor: None,
                agent: wrk(300_700, 102.0, 420.0),
                agent_requests: 330_000,
                run: agent_run(160.0, 42, 640_000, &[("spans_created", 660_000)]),
                metrics: None,
            },
        ];
        // waggle 1 % vs SDK 30 %.
        let flask = vec![sdk_round(10_000, 9_900, 20.0, 7_000)];
        // 1.92 s of agent CPU until drained for 192k spans: 10 µs each, 2 spans
        // per connection: 20 µs; Flask: 2.4 s for 40k spans, 120 µs per connection.
        let conn = ConnResults {
            nginx: vec![ConnRound {
                none: wrk(100_000, 300.0, 900.0),
                waggle: wrk(80_000, 380.0, 1200.0),
                waggle_requests: 88_000,
                run: agent_run(160.0, 35, 192_000, &[("spans_created", 176_000)]),
            }],
            flask: vec![sdk_round(30_000, 20_000, 200.0, 15_000)],
        };
        // waggle 4 % vs SDK 40 %.
        let node = vec![sdk_round(100_000, 96_000, 100.0, 60_000)];
        let steps = vec![
            SustainedStep {
                rate: 10_000,
                achieved: 9_995.0,
                failed: 0,
                run: agent_run(40.0, 45, 0, &[]),
                baseline_achieved: None,
            },
            SustainedStep {
                rate: 20_000,
                achieved: 19_990.0,
                failed: 0,
                run: agent_run(80.0, 50, 400_000, &[("kernel_events_lost", 12)]),
                baseline_achieved: None,
            },
        ];
        Results {
            quick: false,
            rounds: 2,
            seconds: 10.0,
            nginx: Some(Ok(nginx)),
            flask: Some(Ok(flask)),
            conn: Some(Ok(conn)),
            node: Some(Ok(node)),
            postgres: Some(Err("initdb failed".into())),
            sustained: Some(Ok(steps)),
            idle: Some(Ok(vec![
                IdleStep { connections: 10_000, rss_kib: 80 * 1024, ..Default::default() },
                IdleStep { connections: 100_000, rss_kib: 250 * 1024, ..Default::default() },
            ])),
            ..Default::default()
        }
    }

    #[test]
    fn summaries_and_targets_follow_the_numbers() {
        let res = sample_results();
        let nginx = summarize_nginx(res.nginx.as_ref().unwrap().as_ref().unwrap());
        // Ratios 0.96 and 0.97: median 0.965.
        assert!((median(&nginx.rps_ratios) - 0.965).abs() < 1e-9, "{:?}", nginx.rps_ratios);
        assert!((nginx.spans_per_request - 2.0).abs() < 1e-9);
        // Only the first round had a floor: 240k of 300k, waggle 288k of 240k.
        assert_eq!(nginx.floor_ratios.len(), 1);
        assert!((nginx.floor_ratios[0] - 0.8).abs() < 1e-9, "{:?}", nginx.floor_ratios);
        assert!((nginx.agent_to_floor_ratios[0] - 1.2).abs() < 1e-9, "{:?}", nginx.agent_to_floor_ratios);
        assert_eq!(nginx.peak_rss_mib, 42.0);

        let verdicts = targets(&res);
        assert_eq!(verdicts.len(), 10);
        // Read at the 100k step only.
        assert_eq!((verdicts[9].met, verdicts[9].measured.as_str()), (Some(false), "250.0 MiB"), "{:?}", verdicts[9]);
        // Metrics on: the first round only, CPU per span 155/150 of metrics off's.
        assert_eq!(verdicts[8].met, Some(true), "{:?}", verdicts[8]);
        assert!(verdicts[8].measured.starts_with("CPU 1.0"), "{:?}", verdicts[8]);
        assert_eq!(verdicts[0].met, Some(false), "{:?}", verdicts[0]);
        assert_eq!(verdicts[0].measured, "0.965×");
        // 40 millicores at 9 995 rps: 40m per 10k.
        assert_eq!(verdicts[1].met, Some(true), "{:?}", verdicts[1]);
        assert_eq!(verdicts[1].measured, "40m");
        assert_eq!(verdicts[2].met, Some(false));
        assert!(verdicts[2].measured.starts_with("12 lost"), "{:?}", verdicts[2]);
        assert_eq!(verdicts[3].met, Some(true));
        // The 10k step exported no span in its window: no CPU per span.
        assert_eq!((verdicts[4].met, verdicts[4].measured.as_str()), (None, "not measured"), "{:?}", verdicts[4]);
        assert_eq!(verdicts[5].met, Some(false), "{:?}", verdicts[5]);
        assert_eq!(verdicts[5].measured, "20.0 µs (gunicorn sync Flask: 120.0 µs)");
        // Python: waggle 1 % vs SDK 30 %; Node.js: 4 % vs 40 %.
        assert_eq!(verdicts[6].met, Some(true), "{:?}", verdicts[6]);
        assert_eq!(verdicts[7].met, Some(true), "{:?}", verdicts[7]);
        assert_eq!(verdicts[7].measured, "waggle 4.0 % vs SDK 40.0 % (ratio 0.10)");
        let node = summarize_sdk(res.node.as_ref().unwrap().as_ref().unwrap());
        assert!((node.sdk_spans_per_request - 1.0).abs() < 1e-9);
        // 1.2 s of CPU until drained for 192k spans.
        assert!((node.waggle_cpu_us_per_span - 6.25).abs() < 1e-9);

        let mut res = res;
        if let Some(Ok(node)) = &mut res.node {
            node[0].sdk = node[0].none;
        }
        let v = targets(&res);
        assert_eq!(v[7].met, None, "an SDK that cost nothing gives no verdict: {:?}", v[7]);
        assert_eq!(highest_clean_rate(res.sustained.as_ref().unwrap().as_ref().unwrap()), Some(10_000));
    }
}
