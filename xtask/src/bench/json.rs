//! Machine-readable results (bench/results/*.json), also what chart.py
//! reads. Numbers that could not be measured (NaN) are null.
use serde_json::{json, Value};

use super::{
    report::{
        highest_clean_rate, median, mib, ratio, summarize_conn_nginx, summarize_nginx, summarize_sdk,
        summarize_syscalls, targets, Outcome, Results, SdkSummary,
    },
    scenarios::{NginxRound, SdkRound},
};

fn section<T>(outcome: &Outcome<T>, f: impl FnOnce(&T) -> Value) -> Value {
    match outcome {
        Some(Ok(data)) => f(data),
        Some(Err(e)) => json!({ "error": e }),
        None => Value::Null,
    }
}

fn sdk_json(s: &SdkSummary) -> Value {
    json!({
        "none_rps": s.none_rps, "waggle_rps": s.waggle_rps, "sdk_rps": s.sdk_rps,
        "waggle_ratio": median(&s.waggle_ratios), "sdk_ratio": median(&s.sdk_ratios),
        "waggle_cost": s.waggle_cost(), "sdk_cost": s.sdk_cost(),
        "waggle_millicores": s.waggle_millicores, "spans_per_request": s.spans_per_request,
        "agent_cpu_us_per_span": s.waggle_cpu_us_per_span,
        "agent_cpu_us_per_request": s.waggle_cpu_us_per_request,
        "sdk_spans_per_request": s.sdk_spans_per_request,
        "events_lost": s.events_lost,
    })
}

fn sdk_section(rounds: &[SdkRound]) -> Value {
    sdk_json(&summarize_sdk(rounds))
}

/// Scenario 1, and the HTTPS scenario (its metrics-on fields are null).
fn nginx_json(rounds: &[NginxRound]) -> Value {
    let s = summarize_nginx(rounds);
    json!({
        "base_rps": s.base_rps, "agent_rps": s.agent_rps,
        "rps_ratio": median(&s.rps_ratios), "rps_ratios": s.rps_ratios,
        "floor_rps": s.floor_rps,
        "floor_ratio": (!s.floor_ratios.is_empty()).then(|| median(&s.floor_ratios)),
        "agent_to_floor_ratio": (!s.agent_to_floor_ratios.is_empty()).then(|| median(&s.agent_to_floor_ratios)),
        "p50_ratio": median(&s.p50_ratios), "p99_ratio": median(&s.p99_ratios),
        "agent_millicores": s.millicores, "millicores_per_10k_rps": s.millicores_per_10k,
        "agent_cpu_us_per_span": s.cpu_us_per_span,
        "peak_rss_mib": s.peak_rss_mib, "events_lost": s.events_lost,
        "spans_dropped": s.spans_dropped, "spans_per_request": s.spans_per_request,
        "metrics_on_cpu_us_per_span": s.metrics_cpu_us_per_span,
        "metrics_on_rps_ratio": (!s.metrics_rps_ratios.is_empty()).then(|| median(&s.metrics_rps_ratios)),
    })
}

pub fn to_json(res: &Results) -> Value {
    let nginx = section(&res.nginx, |rounds| nginx_json(rounds));
    let conn = section(&res.conn, |c| {
        let nginx = (!c.nginx.is_empty()).then(|| {
            let s = summarize_conn_nginx(c);
            json!({
                "base_cps": s.base_rps, "agent_cps": s.agent_rps,
                "rps_ratio": median(&s.rps_ratios), "rps_ratios": s.rps_ratios,
                "agent_millicores": s.millicores, "agent_cpu_us_per_connection": s.cpu_us_per_connection,
                "agent_cpu_us_per_span": s.cpu_us_per_span, "spans_per_connection": s.spans_per_connection,
                "events_lost": s.events_lost,
            })
        });
        let flask = (!c.flask.is_empty()).then(|| {
            let mut v = sdk_section(&c.flask);
            v["agent_cpu_us_per_connection"] = v["agent_cpu_us_per_request"].clone();
            v
        });
        json!({ "nginx": nginx, "flask": flask })
    });
    let postgres = section(&res.postgres, |rounds| {
        let ratios: Vec<f64> = rounds.iter().map(|r| ratio(r.agent_tps, r.base_tps)).collect();
        json!({
            "base_tps": median(&rounds.iter().map(|r| r.base_tps).collect::<Vec<_>>()),
            "agent_tps": median(&rounds.iter().map(|r| r.agent_tps).collect::<Vec<_>>()),
            "tps_ratio": median(&ratios), "tps_ratios": ratios,
            "agent_cpu_us_per_span": median(&rounds.iter().map(|r| r.run.cpu_us_per_span()).collect::<Vec<_>>()),
        })
    });
    let syscalls = section(&res.syscalls, |r| {
        Value::Array(
            summarize_syscalls(r)
                .iter()
                .map(|row| {
                    json!({"mode": row.mode, "none_ns": row.none, "empty_ns": row.empty, "waggle_ns": row.waggle,
                    "wall_none_ns": row.wall_none, "wall_waggle_ns": row.wall_waggle})
                })
                .collect(),
        )
    });
    let sustained = section(&res.sustained, |steps| {
        json!({
            "highest_clean_rate": highest_clean_rate(steps),
            "steps": steps.iter().map(|s| json!({
                "rate": s.rate, "achieved": s.achieved, "events_lost": s.lost(), "clean": s.clean(),
                "agent_millicores": s.run.millicores(), "peak_rss_mib": mib(s.run.peak_rss_kib),
                "agent_cpu_us_per_span": s.run.cpu_us_per_span(),
                "spans_dropped": s.run.counter("spans_dropped_queue_full"),
                "baseline_achieved": s.baseline_achieved,
            })).collect::<Vec<_>>(),
        })
    });
    let m = &res.machine;
    json!({
        "quick": res.quick, "rounds": res.rounds, "seconds": res.seconds,
        "machine": {
            "kernel": m.kernel, "cpu_model": m.cpu_model, "cores": m.cores, "memory_gib": m.memory_gib,
            "date_utc": m.date_utc, "commit": m.commit, "load_average": m.load_average,
        },
        "warnings": res.warnings,
        "targets": targets(res).iter().map(|v| json!({"target": v.target, "measured": v.measured, "met": v.met})).collect::<Vec<_>>(),
        "nginx": nginx, "flask": section(&res.flask, |r| sdk_section(r)), "conn": conn,
        "node": section(&res.node, |r| sdk_section(r)), "postgres": postgres, "syscalls": syscalls,
        "sustained": sustained, "https": section(&res.https, |rounds| nginx_json(rounds)),
        "idle": section(&res.idle, |steps| json!(steps.iter().map(|s| json!({
            "connections": s.connections, "rss_mib": mib(s.rss_kib), "bpf_memlock_mib": mib(s.bpf_memlock_kib),
            "agent_cpu_us_per_connection": s.cpu_us_per_connection, "conns_evicted": s.run.counter("conns_evicted"),
            "oldest_sample_spans": s.oldest_spans, "newest_sample_spans": s.newest_spans,
        })).collect::<Vec<_>>())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::sample_results;

    #[test]
    fn json_carries_summaries_and_failures() {
        let json = to_json(&sample_results());
        assert_eq!(json["sustained"]["highest_clean_rate"], 10_000);
        assert_eq!(json["postgres"]["error"], "initdb failed");
        assert!((json["nginx"]["rps_ratio"].as_f64().unwrap() - 0.965).abs() < 1e-9);
        // 1.8 s of CPU until drained for 600k spans: 3 µs each.
        assert!((json["nginx"]["agent_cpu_us_per_span"].as_f64().unwrap() - 3.0).abs() < 1e-9, "{}", json["nginx"]);
        let conn = &json["conn"]["nginx"];
        assert!((conn["agent_cpu_us_per_connection"].as_f64().unwrap() - 20.0).abs() < 1e-9, "{conn}");
        assert!((json["conn"]["flask"]["agent_cpu_us_per_connection"].as_f64().unwrap() - 120.0).abs() < 1e-9);
        assert!((json["node"]["sdk_cost"].as_f64().unwrap() - 0.4).abs() < 1e-9, "{}", json["node"]);
        // A window without spans has no CPU per span: null, not NaN.
        assert!(json["sustained"]["steps"][0]["agent_cpu_us_per_span"].is_null());
    }
}
