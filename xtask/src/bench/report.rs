//! Summaries, the markdown table, the JSON the chart script reads, and the
//! verdict on each target of the acceptance.
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::scenarios::{
    FlaskRound, NginxRound, PgRound, Probe, Profile, SustainedStep, SyscallResults, FLASK_WORKERS,
    FLASK_WRK_CONNECTIONS, NGINX_WRK_CONNECTIONS, NGINX_WRK_THREADS, PGBENCH_CLIENTS, SUSTAINED_CONNECTIONS,
    SYSCALL_MODES,
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

fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// `0.981 (0.975–0.990)` when there is more than one round.
fn ratio_cell(ratios: &[f64]) -> String {
    let m = median(ratios);
    if ratios.len() > 1 {
        let (lo, hi) = min_max(ratios);
        format!("{m:.3}× ({lo:.3}–{hi:.3})")
    } else {
        format!("{m:.3}×")
    }
}

fn f0(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.0}")
    } else {
        "n/a".into()
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The derived numbers, shared by the markdown, the JSON and the targets.
#[derive(Clone, Debug, Default)]
pub struct NginxSummary {
    pub base_rps: f64,
    pub agent_rps: f64,
    pub rps_ratios: Vec<f64>,
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
    NginxSummary {
        base_rps: median(&col(&|r| r.base.rps())),
        agent_rps,
        rps_ratios: col(&|r| ratio(r.agent.rps(), r.base.rps())),
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

fn verdict_word(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "n/a",
    }
}

pub fn markdown(res: &Results) -> String {
    let mut md = String::new();
    let m = &res.machine;
    let mode = if res.quick {
        format!("quick ({} round, {:.0} s per measurement: a smoke run, not for quoting)", res.rounds, res.seconds)
    } else {
        format!("full ({} rounds × {:.0} s per measurement, order alternating each round)", res.rounds, res.seconds)
    };
    let _ = writeln!(md, "# waggle overhead benchmark\n");
    let _ = writeln!(
        md,
        "Generated by `cargo xtask bench{}` on {}. Mode: {mode}.\n",
        if res.quick { " --quick" } else { "" },
        m.date_utc
    );
    let _ = writeln!(md, "| machine | |\n| --- | --- |");
    let _ = writeln!(md, "| CPU | {} ({} cores) |", m.cpu_model, m.cores);
    let _ = writeln!(md, "| memory | {:.0} GiB |", m.memory_gib);
    let _ = writeln!(md, "| kernel | {} |", m.kernel);
    let _ = writeln!(md, "| load average at start | {} |", m.load_average);
    let _ = writeln!(md, "| waggle commit | {} |", m.commit);
    for (tool, version) in &m.tools {
        let _ = writeln!(md, "| {tool} | {version} |");
    }
    if !res.warnings.is_empty() {
        let _ = writeln!(md, "\n**Warnings:**\n");
        for w in &res.warnings {
            let _ = writeln!(md, "- {w}");
        }
    }

    let _ = writeln!(md, "\n## Targets\n\n| target | measured | verdict |\n| --- | --- | --- |");
    for v in targets(res) {
        let _ = writeln!(md, "| {} | {} | {} |", v.target, v.measured, verdict_word(v.met));
    }

    let _ = writeln!(md, "\n## 1. nginx, saturated\n");
    let _ = writeln!(
        md,
        "nginx, 1 worker, `return 200 \"ok\\n\"`, no access log; wrk -t{NGINX_WRK_THREADS} -c{NGINX_WRK_CONNECTIONS}, keep-alive, \
         closed loop. Both processes are on this machine, so waggle traces both sides of every request \
         (a client and a server span): twice the work of a remote load generator.\n"
    );
    match &res.nginx {
        Some(Ok(rounds)) if !rounds.is_empty() => {
            let s = summarize_nginx(rounds);
            let _ = writeln!(md, "| metric | no agent | waggle | ratio |\n| --- | --- | --- | --- |");
            let _ = writeln!(
                md,
                "| throughput (req/s) | {} | {} | {} |",
                f0(s.base_rps),
                f0(s.agent_rps),
                ratio_cell(&s.rps_ratios)
            );
            let _ = writeln!(
                md,
                "| p50 latency (µs) | {} | {} | {} |",
                f0(s.base_p50),
                f0(s.agent_p50),
                ratio_cell(&s.p50_ratios)
            );
            let _ = writeln!(
                md,
                "| p99 latency (µs) | {} | {} | {} |",
                f0(s.base_p99),
                f0(s.agent_p99),
                ratio_cell(&s.p99_ratios)
            );
            let _ = writeln!(md, "| agent CPU (millicores) | | {} | |", f0(s.millicores));
            let _ = writeln!(md, "| agent CPU per 10k req/s | | {}m | |", f0(s.millicores_per_10k));
            let _ = writeln!(md, "| agent peak RSS | | {:.1} MiB | |", s.peak_rss_mib);
            let _ = writeln!(md, "| kernel events lost | | {} | |", s.events_lost);
            let _ = writeln!(md, "| spans dropped (export queue full) | | {} | |", s.spans_dropped);
            let _ = writeln!(md, "| spans per request (2 = both sides traced) | | {:.2} | |", s.spans_per_request);
            undertraced(&mut md, s.spans_per_request);
        }
        other => outcome_note(&mut md, other),
    }

    let _ = writeln!(md, "\n## 2. Python web app: waggle vs OpenTelemetry auto-instrumentation\n");
    let _ = writeln!(
        md,
        "Flask route hashing 32 KiB and building a small JSON body (bench/flask_app.py), gunicorn {FLASK_WORKERS} sync \
         workers (one connection per request); wrk -t1 -c{FLASK_WRK_CONNECTIONS}. The SDK run is \
         `opentelemetry-instrument` with the Flask instrumentation exporting OTLP/HTTP to the same local \
         receiver waggle exports to, batch delay 1 s like waggle's.\n"
    );
    match &res.flask {
        Some(Ok(rounds)) if !rounds.is_empty() => {
            let s = summarize_flask(rounds);
            let _ = writeln!(md, "| metric | no tracing | waggle | OpenTelemetry SDK |\n| --- | --- | --- | --- |");
            let _ =
                writeln!(md, "| throughput (req/s) | {} | {} | {} |", f0(s.none_rps), f0(s.waggle_rps), f0(s.sdk_rps));
            let _ = writeln!(
                md,
                "| throughput ratio | 1 | {} | {} |",
                ratio_cell(&s.waggle_ratios),
                ratio_cell(&s.sdk_ratios)
            );
            let _ = writeln!(
                md,
                "| throughput cost | | {:.1} % | {:.1} % |",
                100.0 * s.waggle_cost(),
                100.0 * s.sdk_cost()
            );
            let _ =
                writeln!(md, "| p50 latency (µs) | {} | {} | {} |", f0(s.none_p50), f0(s.waggle_p50), f0(s.sdk_p50));
            let _ =
                writeln!(md, "| p99 latency (µs) | {} | {} | {} |", f0(s.none_p99), f0(s.waggle_p99), f0(s.sdk_p99));
            let _ = writeln!(md, "| agent CPU (millicores) | | {} | (in-process) |", f0(s.waggle_millicores));
            let _ = writeln!(
                md,
                "| spans per request / OTLP exports | | {:.2} | {} exports |",
                s.spans_per_request, s.sdk_export_requests
            );
            let _ = writeln!(md, "| kernel events lost | | {} | |", s.events_lost);
            undertraced(&mut md, s.spans_per_request);
        }
        other => outcome_note(&mut md, other),
    }

    let _ = writeln!(md, "\n## 3. PostgreSQL, `pgbench -S -M prepared`\n");
    let _ = writeln!(md, "Select-only, prepared statements, scale 1, {PGBENCH_CLIENTS} clients over loopback TCP.\n");
    match &res.postgres {
        Some(Ok(rounds)) if !rounds.is_empty() => {
            let base = median(&rounds.iter().map(|r| r.base_tps).collect::<Vec<_>>());
            let agent = median(&rounds.iter().map(|r| r.agent_tps).collect::<Vec<_>>());
            let ratios: Vec<f64> = rounds.iter().map(|r| ratio(r.agent_tps, r.base_tps)).collect();
            let cpu = median(&rounds.iter().map(|r| r.run.millicores()).collect::<Vec<_>>());
            let spans: u64 = rounds.iter().map(|r| r.run.counter("spans_created")).sum();
            let lost: u64 = rounds.iter().map(|r| r.run.counter("kernel_events_lost")).sum();
            let _ = writeln!(md, "| metric | no agent | waggle | ratio |\n| --- | --- | --- | --- |");
            let _ = writeln!(md, "| transactions/s | {} | {} | {} |", f0(base), f0(agent), ratio_cell(&ratios));
            let _ = writeln!(md, "| agent CPU (millicores) | | {} | |", f0(cpu));
            let _ = writeln!(md, "| spans created (all rounds) | | {spans} | |");
            let _ = writeln!(md, "| kernel events lost | | {lost} | |");
        }
        other => outcome_note(&mut md, other),
    }

    let _ = writeln!(md, "\n## 4. Per-syscall cost\n");
    let _ = writeln!(
        md,
        "bench/syscall_loop.c pinned to CPU 0, 64-byte write/read pairs (tcp-http: HTTP request/response \
         ping-pong). *Empty programs*: bpftrace attaching programs with no body to the same {} tracepoints \
         waggle uses, the floor any tracepoint-based agent pays. `unix` is the cost every non-TCP I/O pays \
         (waggle's filter); `tcp-raw` a tracked but muted connection; `tcp-http` full capture. Figures are \
         the loop thread's CPU time per syscall (the eBPF programs run inside the syscall, so they are in it; \
         time the loop spent preempted is not), best of the rounds; wall-clock time is in the last column.\n",
        super::scenarios::WAGGLE_TRACEPOINTS.len()
    );
    match &res.syscalls {
        Some(Ok(r)) => {
            let _ = writeln!(
                md,
                "| mode | no programs (CPU ns/syscall) | empty programs | waggle | waggle above the floor | wall ns: none → waggle |\n| --- | --- | --- | --- | --- | --- |"
            );
            let cell = |total: f64, added: f64| {
                if total.is_finite() {
                    format!("{total:.0} ({added:+.0})")
                } else {
                    "n/a".to_owned()
                }
            };
            for row in summarize_syscalls(r) {
                let floor = row.waggle - row.empty;
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {} | {} | {} | {:.0} → {:.0} |",
                    row.mode,
                    row.none,
                    cell(row.empty, row.empty_added()),
                    cell(row.waggle, row.waggle_added()),
                    if floor.is_finite() { format!("{floor:+.0} ns") } else { "n/a".into() },
                    row.wall_none,
                    row.wall_waggle
                );
            }
            for n in &r.notes {
                let _ = writeln!(md, "\n_{n}_");
            }
            let lost: u64 = r.waggle_runs.iter().map(|x| x.counter("kernel_events_lost")).sum();
            let _ = writeln!(md, "\nKernel events lost during the waggle runs: {lost}.");
        }
        other => outcome_note(&mut md, other),
    }

    let _ = writeln!(md, "\n## 5. Sustained load: highest rate with no lost event\n");
    let _ = writeln!(
        md,
        "h2load --h1 -c{SUSTAINED_CONNECTIONS} at a fixed request rate against the nginx of scenario 1, stepping \
         up until a step loses a kernel event or cannot reach its rate. A step counts when ≥ 95 % of the rate \
         was achieved with no failed request.\n"
    );
    match &res.sustained {
        Some(Ok(steps)) => {
            let _ = writeln!(
                md,
                "| target rate | achieved | events lost | spans dropped | agent CPU | agent peak RSS | verdict |\n| --- | --- | --- | --- | --- | --- | --- |"
            );
            for s in steps {
                let verdict = if s.clean() {
                    "clean".to_owned()
                } else if !s.reached() {
                    match s.baseline_achieved {
                        Some(b) if b < 0.95 * f64::from(s.rate) => {
                            format!("not reached (machine limit: {b:.0} without agent)")
                        }
                        Some(b) => format!("not reached ({b:.0} without agent)"),
                        None => "not reached".into(),
                    }
                } else {
                    "events lost".into()
                };
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {} | {} | {:.0}m | {:.1} MiB | {verdict} |",
                    s.rate,
                    s.achieved,
                    s.lost(),
                    s.run.counter("spans_dropped_queue_full"),
                    s.run.millicores(),
                    mib(s.run.peak_rss_kib)
                );
            }
            let _ = writeln!(
                md,
                "\n**Highest clean rate: {}.**",
                highest_clean_rate(steps).map_or("none".into(), |r| format!("{r} req/s"))
            );
        }
        other => outcome_note(&mut md, other),
    }

    if let Some(outcome) = &res.profile {
        let _ = writeln!(md, "\n## Where the time goes (saturated nginx, waggle attached)\n");
        match outcome {
            Ok(p) => profile_markdown(&mut md, p),
            Err(e) => {
                let _ = writeln!(md, "Profile failed: {e}");
            }
        }
    }

    let _ = writeln!(
        md,
        "\n## Method\n\n\
         - Each scenario runs its variants in alternating order within every round (A B, B A, ...) in one \
         run; tables show medians (the per-syscall table: best of the rounds), ratios are medians of the \
         per-round ratios (min–max in brackets).\n\
         - Agent CPU is utime+stime of the agent process from /proc over the measured window only; eBPF \
         programs run in the context of the traced processes, so their cost shows as lost throughput, not \
         here (the per-syscall table and the profile give it separately). Peak RSS is VmHWM.\n\
         - The agent exports OTLP/HTTP to an in-process receiver of the harness that discards the payload.\n\
         - Reproduce: `cargo xtask bench` (about 10 minutes) or `cargo xtask bench --quick` (smoke run, \
         results in bench/results/quick/). Raw logs: bench/results/raw/."
    );
    md
}

/// An agent that traced less than one span per request was not doing the
/// work whose cost the table claims to show.
fn undertraced(md: &mut String, spans_per_request: f64) {
    if spans_per_request.is_nan() || spans_per_request < 1.0 {
        let _ = writeln!(
            md,
            "\n**Warning:** waggle produced {spans_per_request:.2} spans per request: it was not tracing every \
             request, so this is not the cost of full tracing (see the agent logs in raw/)."
        );
    }
}

fn outcome_note<T>(md: &mut String, outcome: &Outcome<T>) {
    let _ = match outcome {
        None => writeln!(md, "Not run."),
        Some(Err(e)) => writeln!(md, "**Failed:** {e}"),
        Some(Ok(_)) => writeln!(md, "No rounds."),
    };
}

fn profile_markdown(md: &mut String, p: &Profile) {
    let _ =
        writeln!(md, "{:.0} req/s over {:.1} s; agent userspace {:.0}m CPU.\n", p.rps, p.seconds, p.agent_millicores);
    if !p.bpf.is_empty() {
        let total_ns: u64 = p.bpf.iter().map(|b| b.run_time_ns).sum();
        let _ = writeln!(
            md,
            "Kernel side (`kernel.bpf_stats_enabled`): {:.0}m CPU in waggle's programs in total.\n\n\
             | program | runs/s | ns per run | CPU (millicores) |\n| --- | --- | --- | --- |",
            1000.0 * total_ns as f64 / 1e9 / p.seconds
        );
        for b in p.bpf.iter().take(12) {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.1} |",
                b.name,
                b.run_cnt as f64 / p.seconds,
                ratio(b.run_time_ns as f64, b.run_cnt as f64),
                1000.0 * b.run_time_ns as f64 / 1e9 / p.seconds
            );
        }
    }
    if !p.perf_top.is_empty() {
        let _ = writeln!(
            md,
            "\nAgent userspace, `perf record --call-graph dwarf`, self time, top symbols:\n\n| self % | symbol |\n| --- | --- |"
        );
        for (pct, sym) in &p.perf_top {
            let _ = writeln!(md, "| {pct:.1} | `{}` |", sym.replace('|', "\\|"));
        }
    }
    if !p.perf_inclusive.is_empty() {
        let _ = writeln!(
            md,
            "\nAgent userspace, inclusive time of waggle's own functions (where the self time above is \
             spent):\n\n| incl. % | function |\n| --- | --- |"
        );
        for (pct, sym) in &p.perf_inclusive {
            let _ = writeln!(md, "| {pct:.1} | `{}` |", sym.replace('|', "\\|"));
        }
    }
    for n in &p.notes {
        let _ = writeln!(md, "\n_{n}_");
    }
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
mod tests {
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

    fn sample_results() -> Results {
        let nginx = vec![
            NginxRound {
                base: wrk(300_000, 100.0, 400.0),
                agent: wrk(288_000, 104.0, 440.0),
                agent_requests: 316_800,
                run: agent_run(150.0, 40, &[("spans_created", 633_600), ("kernel_events_lost", 0)]),
            },
            NginxRound {
                base: wrk(310_000, 100.0, 400.0),
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
    fn markdown_carries_numbers_failures_and_verdicts() {
        let md = markdown(&sample_results());
        assert!(md.contains("| throughput (req/s) | 30500 | 29435 | 0.965× (0.960–0.970) |"), "{md}");
        assert!(md.contains("**Failed:** initdb failed"), "{md}");
        assert!(md.contains("| throughput ≥ 0.97× no-agent on saturated nginx | 0.965× | **missed** |"), "{md}");
        assert!(md.contains("**Highest clean rate: 10000 req/s.**"), "{md}");
        assert!(md.contains("| throughput cost | | 1.0 % | 30.0 % |"), "{md}");
        assert!(!md.contains("spans per request: it was not tracing"), "{md}");
        let mut res = sample_results();
        if let Some(Ok(rounds)) = &mut res.nginx {
            rounds.iter_mut().for_each(|r| r.run.counters.clear());
        }
        let md = markdown(&res);
        assert!(md.contains("waggle produced 0.00 spans per request"), "{md}");
        let json = to_json(&sample_results());
        assert_eq!(json["sustained"]["highest_clean_rate"], 10_000);
        assert_eq!(json["postgres"]["error"], "initdb failed");
        assert!((json["nginx"]["rps_ratio"].as_f64().unwrap() - 0.965).abs() < 1e-9);
    }
}
