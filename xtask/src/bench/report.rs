//! Summaries of the measurements, the verdict on each target of the
//! acceptance, and the JSON the chart script reads.
use serde_json::{json, Value};

use super::{
    profile::Profile,
    scenarios::{FlaskRound, NginxRound, PgRound, SustainedStep},
    syscalls::{Probe, SyscallResults, SYSCALL_MODES},
};

/// The targets from the acceptance.
pub const TARGET_THROUGHPUT_RATIO: f64 = 0.97;
pub const TARGET_MILLICORES_PER_10K: f64 = 50.0;
pub const TARGET_CLEAN_RATE: u32 = 20_000;
pub const TARGET_RSS_MIB_AT_10K: f64 = 60.0;
/// waggle's throughput cost at most this fraction of the SDK's.
pub const TARGET_COST_VS_SDK: f64 = 0.2;

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
    pub flask: Outcome<Vec<FlaskRound>>,
    pub postgres: Outcome<Vec<PgRound>>,
    pub syscalls: Outcome<SyscallResults>,
    pub sustained: Outcome<Vec<SustainedStep>>,
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
    pub peak_rss_mib: f64,
    pub events_lost: u64,
    pub spans_dropped: u64,
    pub spans_per_request: f64,
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
        peak_rss_mib: rounds.iter().map(|r| mib(r.run.peak_rss_kib)).fold(0.0, f64::max),
        events_lost: rounds.iter().map(|r| r.run.counter("kernel_events_lost")).sum(),
        spans_dropped: rounds.iter().map(|r| r.run.counter("spans_dropped_queue_full")).sum(),
        spans_per_request: ratio(spans as f64, requests as f64),
    }
}

#[derive(Clone, Debug, Default)]
pub struct FlaskSummary {
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
    pub spans_per_request: f64,
    pub sdk_export_requests: u64,
    pub events_lost: u64,
}

impl FlaskSummary {
    /// Throughput lost, as a fraction (0.02 = 2 %).
    pub fn waggle_cost(&self) -> f64 {
        1.0 - median(&self.waggle_ratios)
    }
    pub fn sdk_cost(&self) -> f64 {
        1.0 - median(&self.sdk_ratios)
    }
}

pub fn summarize_flask(rounds: &[FlaskRound]) -> FlaskSummary {
    let col = |f: &dyn Fn(&FlaskRound) -> f64| rounds.iter().map(f).collect::<Vec<f64>>();
    let spans: u64 = rounds.iter().map(|r| r.waggle_run.counter("spans_created")).sum();
    let requests: u64 = rounds.iter().map(|r| r.waggle_requests).sum();
    FlaskSummary {
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
        spans_per_request: ratio(spans as f64, requests as f64),
        sdk_export_requests: rounds.iter().map(|r| r.sdk_export.requests).sum(),
        events_lost: rounds.iter().map(|r| r.waggle_run.counter("kernel_events_lost")).sum(),
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
    let t = "waggle's throughput cost ≤ 1/5 of the Python SDK's".to_owned();
    match &res.flask {
        Some(Ok(rounds)) if !rounds.is_empty() => {
            let s = summarize_flask(rounds);
            let (w, k) = (s.waggle_cost(), s.sdk_cost());
            let met = if k <= 0.0 { None } else { Some(w <= TARGET_COST_VS_SDK * k) };
            out.push(Verdict {
                target: t,
                measured: format!("waggle {:.1} % vs SDK {:.1} % (ratio {:.2})", 100.0 * w, 100.0 * k, ratio(w, k)),
                met,
            });
        }
        _ => out.push(missing(&t)),
    }
    out
}

/// Machine-readable results (bench/results/*.json), also what chart.py reads.
pub fn to_json(res: &Results) -> Value {
    let err = |e: &String| json!({ "error": e });
    let nginx = match &res.nginx {
        Some(Ok(rounds)) => {
            let s = summarize_nginx(rounds);
            json!({
                "base_rps": s.base_rps, "agent_rps": s.agent_rps,
                "rps_ratio": median(&s.rps_ratios), "rps_ratios": s.rps_ratios,
                "floor_rps": s.floor_rps,
                "floor_ratio": (!s.floor_ratios.is_empty()).then(|| median(&s.floor_ratios)),
                "agent_to_floor_ratio": (!s.agent_to_floor_ratios.is_empty()).then(|| median(&s.agent_to_floor_ratios)),
                "p50_ratio": median(&s.p50_ratios), "p99_ratio": median(&s.p99_ratios),
                "agent_millicores": s.millicores, "millicores_per_10k_rps": s.millicores_per_10k,
                "peak_rss_mib": s.peak_rss_mib, "events_lost": s.events_lost,
                "spans_dropped": s.spans_dropped, "spans_per_request": s.spans_per_request,
            })
        }
        Some(Err(e)) => err(e),
        None => Value::Null,
    };
    let flask = match &res.flask {
        Some(Ok(rounds)) => {
            let s = summarize_flask(rounds);
            json!({
                "none_rps": s.none_rps, "waggle_rps": s.waggle_rps, "sdk_rps": s.sdk_rps,
                "waggle_ratio": median(&s.waggle_ratios), "sdk_ratio": median(&s.sdk_ratios),
                "waggle_cost": s.waggle_cost(), "sdk_cost": s.sdk_cost(),
                "waggle_millicores": s.waggle_millicores, "spans_per_request": s.spans_per_request,
            })
        }
        Some(Err(e)) => err(e),
        None => Value::Null,
    };
    let postgres = match &res.postgres {
        Some(Ok(rounds)) => {
            let ratios: Vec<f64> = rounds.iter().map(|r| ratio(r.agent_tps, r.base_tps)).collect();
            json!({
                "base_tps": median(&rounds.iter().map(|r| r.base_tps).collect::<Vec<_>>()),
                "agent_tps": median(&rounds.iter().map(|r| r.agent_tps).collect::<Vec<_>>()),
                "tps_ratio": median(&ratios), "tps_ratios": ratios,
            })
        }
        Some(Err(e)) => err(e),
        None => Value::Null,
    };
    let syscalls = match &res.syscalls {
        Some(Ok(r)) => Value::Array(
            summarize_syscalls(r)
                .iter()
                .map(|row| {
                    json!({"mode": row.mode, "none_ns": row.none, "empty_ns": row.empty, "waggle_ns": row.waggle,
                    "wall_none_ns": row.wall_none, "wall_waggle_ns": row.wall_waggle})
                })
                .collect(),
        ),
        Some(Err(e)) => err(e),
        None => Value::Null,
    };
    let sustained = match &res.sustained {
        Some(Ok(steps)) => json!({
            "highest_clean_rate": highest_clean_rate(steps),
            "steps": steps.iter().map(|s| json!({
                "rate": s.rate, "achieved": s.achieved, "events_lost": s.lost(), "clean": s.clean(),
                "agent_millicores": s.run.millicores(), "peak_rss_mib": mib(s.run.peak_rss_kib),
                "spans_dropped": s.run.counter("spans_dropped_queue_full"),
                "baseline_achieved": s.baseline_achieved,
            })).collect::<Vec<_>>(),
        }),
        Some(Err(e)) => err(e),
        None => Value::Null,
    };
    let m = &res.machine;
    json!({
        "quick": res.quick, "rounds": res.rounds, "seconds": res.seconds,
        "machine": {
            "kernel": m.kernel, "cpu_model": m.cpu_model, "cores": m.cores, "memory_gib": m.memory_gib,
            "date_utc": m.date_utc, "commit": m.commit, "load_average": m.load_average,
        },
        "warnings": res.warnings,
        "targets": targets(res).iter().map(|v| json!({"target": v.target, "measured": v.measured, "met": v.met})).collect::<Vec<_>>(),
        "nginx": nginx, "flask": flask, "postgres": postgres, "syscalls": syscalls, "sustained": sustained,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::bench::{agent::AgentRun, load::WrkResult, sink::SinkCount};

    fn wrk(requests: u64, p50: f64, p99: f64) -> WrkResult {
        WrkResult { requests, duration_s: 10.0, errors: 0, p50_us: p50, p90_us: p50, p99_us: p99, max_us: p99 }
    }

    fn agent_run(millicores: f64, rss_mib: u64, counters: &[(&str, u64)]) -> AgentRun {
        AgentRun {
            cpu_seconds: millicores / 100.0,
            wall_seconds: 10.0,
            peak_rss_kib: rss_mib * 1024,
            counters: counters.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
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

    /// Two nginx rounds, a Flask round, a failed PostgreSQL run and two
    /// sustained steps (the second losing events); shared with the markdown tests.
    pub fn sample_results() -> Results {
        let nginx = vec![
            NginxRound {
                base: wrk(300_000, 100.0, 400.0),
                floor: Some(wrk(240_000, 110.0, 450.0)),
                agent: wrk(288_000, 104.0, 440.0),
                agent_requests: 316_800,
                run: agent_run(150.0, 40, &[("spans_created", 633_600), ("kernel_events_lost", 0)]),
            },
            NginxRound {
                base: wrk(310_000, 100.0, 400.0),
                floor: None,
                agent: wrk(300_700, 102.0, 420.0),
                agent_requests: 330_000,
                run: agent_run(160.0, 42, &[("spans_created", 660_000)]),
            },
        ];
        let flask = vec![FlaskRound {
            none: wrk(10_000, 800.0, 2000.0),
            waggle: wrk(9_900, 808.0, 2020.0),
            waggle_requests: 10_900,
            waggle_run: agent_run(20.0, 30, &[("spans_created", 21_800)]),
            sdk: wrk(7_000, 1100.0, 3000.0),
            sdk_export: SinkCount { requests: 12, body_bytes: 1_000_000 },
        }];
        let steps = vec![
            SustainedStep {
                rate: 10_000,
                achieved: 9_995.0,
                failed: 0,
                run: agent_run(40.0, 45, &[]),
                baseline_achieved: None,
            },
            SustainedStep {
                rate: 20_000,
                achieved: 19_990.0,
                failed: 0,
                run: agent_run(80.0, 50, &[("kernel_events_lost", 12)]),
                baseline_achieved: None,
            },
        ];
        Results {
            quick: false,
            rounds: 2,
            seconds: 10.0,
            nginx: Some(Ok(nginx)),
            flask: Some(Ok(flask)),
            postgres: Some(Err("initdb failed".into())),
            sustained: Some(Ok(steps)),
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
        assert_eq!(verdicts.len(), 5);
        assert_eq!(verdicts[0].met, Some(false), "{:?}", verdicts[0]);
        assert_eq!(verdicts[0].measured, "0.965×");
        // 40 millicores at 9 995 rps: 40m per 10k.
        assert_eq!(verdicts[1].met, Some(true), "{:?}", verdicts[1]);
        assert_eq!(verdicts[1].measured, "40m");
        assert_eq!(verdicts[2].met, Some(false));
        assert!(verdicts[2].measured.starts_with("12 lost"), "{:?}", verdicts[2]);
        assert_eq!(verdicts[3].met, Some(true));
        // waggle 1 % vs SDK 30 %.
        assert_eq!(verdicts[4].met, Some(true), "{:?}", verdicts[4]);
        assert_eq!(highest_clean_rate(res.sustained.as_ref().unwrap().as_ref().unwrap()), Some(10_000));
    }

    #[test]
    fn json_carries_summaries_and_failures() {
        let json = to_json(&sample_results());
        assert_eq!(json["sustained"]["highest_clean_rate"], 10_000);
        assert_eq!(json["postgres"]["error"], "initdb failed");
        assert!((json["nginx"]["rps_ratio"].as_f64().unwrap() - 0.965).abs() < 1e-9);
    }
}
