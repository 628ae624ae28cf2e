//! Markdown sections of the three-way SDK comparisons (Flask, Node.js), of
//! the per-connection scenario, of nginx over HTTPS and of the idle
//! connections, and the cell formats every section of the report shares.
use std::fmt::Write as _;

use super::{
    report::{
        median, mib, summarize_conn_nginx, summarize_nginx, summarize_sdk, NginxSummary, Outcome, Results, SdkSummary,
    },
    scenarios::{
        CONNECTION_CLOSE, FLASK_WORKERS, FLASK_WRK_CONNECTIONS, IDLE_SAMPLE, NGINX_WRK_CONNECTIONS, NGINX_WRK_THREADS,
        NODE_WRK_CONNECTIONS,
    },
};

fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// `0.981 (0.975–0.990)` when there is more than one round.
pub fn ratio_cell(ratios: &[f64]) -> String {
    let m = median(ratios);
    if ratios.len() > 1 {
        let (lo, hi) = min_max(ratios);
        format!("{m:.3}× ({lo:.3}–{hi:.3})")
    } else {
        format!("{m:.3}×")
    }
}

pub fn f0(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.0}")
    } else {
        "n/a".into()
    }
}

/// Microseconds with one decimal (agent CPU per span or connection).
pub fn us1(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "n/a".into()
    }
}

/// An agent that traced less than one span per request was not doing the
/// work whose cost the table claims to show.
pub fn undertraced(md: &mut String, spans_per_request: f64) {
    if spans_per_request.is_nan() || spans_per_request < 1.0 {
        let _ = writeln!(
            md,
            "\n**Warning:** waggle produced {spans_per_request:.2} spans per request: it was not tracing every \
             request, so this is not the cost of full tracing (see the agent logs in raw/)."
        );
    }
}

pub fn outcome_note<T>(md: &mut String, outcome: &Outcome<T>) {
    let _ = match outcome {
        None => writeln!(md, "Not run."),
        Some(Err(e)) => writeln!(md, "**Failed:** {e}"),
        Some(Ok(_)) => writeln!(md, "No rounds."),
    };
}

/// No tracing vs waggle vs an SDK; `per_connection` when every request had
/// a connection of its own, so agent CPU per request is per new connection.
fn sdk_table(md: &mut String, s: &SdkSummary, sdk: &str, per_connection: bool) {
    let _ = writeln!(md, "| metric | no tracing | waggle | {sdk} |\n| --- | --- | --- | --- |");
    let _ = writeln!(md, "| throughput (req/s) | {} | {} | {} |", f0(s.none_rps), f0(s.waggle_rps), f0(s.sdk_rps));
    let _ = writeln!(md, "| throughput ratio | 1 | {} | {} |", ratio_cell(&s.waggle_ratios), ratio_cell(&s.sdk_ratios));
    let _ = writeln!(md, "| throughput cost | | {:.1} % | {:.1} % |", 100.0 * s.waggle_cost(), 100.0 * s.sdk_cost());
    let _ = writeln!(md, "| p50 latency (µs) | {} | {} | {} |", f0(s.none_p50), f0(s.waggle_p50), f0(s.sdk_p50));
    let _ = writeln!(md, "| p99 latency (µs) | {} | {} | {} |", f0(s.none_p99), f0(s.waggle_p99), f0(s.sdk_p99));
    let _ = writeln!(md, "| agent CPU (millicores) | | {} | (in-process) |", f0(s.waggle_millicores));
    let _ = writeln!(md, "| agent CPU per span (µs) | | {} | |", us1(s.waggle_cpu_us_per_span));
    if per_connection {
        let _ = writeln!(md, "| agent CPU per new connection (µs) | | {} | |", us1(s.waggle_cpu_us_per_request));
    }
    let _ = writeln!(
        md,
        "| spans per request | | {:.2} | {:.2} ({} OTLP exports) |",
        s.spans_per_request, s.sdk_spans_per_request, s.sdk_export_requests
    );
    let _ = writeln!(md, "| kernel events lost | | {} | |", s.events_lost);
    undertraced(md, s.spans_per_request);
    if s.sdk_spans_per_request < 1.0 {
        let _ = writeln!(
            md,
            "\n_The SDK delivered {:.2} spans per request (0 when its bodies could not be counted): it dropped \
             spans (batch queue full) or did not trace every request, so its cost is that of less work._",
            s.sdk_spans_per_request
        );
    }
}

pub fn flask_section(md: &mut String, res: &Results) {
    let _ = writeln!(md, "\n## 2. Python web app: waggle vs OpenTelemetry auto-instrumentation\n");
    let _ = writeln!(
        md,
        "Flask route hashing 32 KiB and building a small JSON body (bench/flask_app.py), gunicorn {FLASK_WORKERS} sync \
         workers (one connection per request); wrk -t1 -c{FLASK_WRK_CONNECTIONS}. The SDK run is \
         `opentelemetry-instrument` with the Flask instrumentation exporting OTLP/HTTP to the same local \
         receiver waggle exports to, batch delay 1 s like waggle's.\n"
    );
    match &res.flask {
        Some(Ok(rounds)) if !rounds.is_empty() => sdk_table(md, &summarize_sdk(rounds), "OpenTelemetry SDK", true),
        other => outcome_note(md, other),
    }
}

pub fn conn_section(md: &mut String, res: &Results) {
    let _ = writeln!(md, "\n## 3. A new connection per request (`{CONNECTION_CLOSE}`)\n");
    let _ = writeln!(
        md,
        "The nginx of scenario 1 (wrk -t{NGINX_WRK_THREADS} -c{NGINX_WRK_CONNECTIONS}) and the Flask app of scenario \
         2, with wrk sending `{CONNECTION_CLOSE}`: every request opens a TCP connection of its own (checked \
         against the kernel's ActiveOpens count), and the agent sees each connection open and close on both \
         ends. Agent CPU per new connection is its CPU per span × the spans it made per connection.\n"
    );
    let c = match &res.conn {
        Some(Ok(c)) => c,
        other => {
            outcome_note(md, other);
            return;
        }
    };
    if !c.nginx.is_empty() {
        let s = summarize_conn_nginx(c);
        let _ = writeln!(md, "| nginx | no agent | waggle | ratio |\n| --- | --- | --- | --- |");
        let _ = writeln!(
            md,
            "| connections/s (one request each) | {} | {} | {} |",
            f0(s.base_rps),
            f0(s.agent_rps),
            ratio_cell(&s.rps_ratios)
        );
        let _ = writeln!(md, "| agent CPU (millicores) | | {} | |", f0(s.millicores));
        let _ = writeln!(md, "| agent CPU per new connection (µs) | | {} | |", us1(s.cpu_us_per_connection));
        let _ = writeln!(md, "| agent CPU per span (µs) | | {} | |", us1(s.cpu_us_per_span));
        let _ = writeln!(md, "| spans exported per connection | | {:.2} | |", s.spans_per_connection);
        let _ = writeln!(md, "| kernel events lost | | {} | |", s.events_lost);
    }
    if !c.flask.is_empty() {
        let _ = writeln!(md, "\nFlask on gunicorn sync workers:\n");
        sdk_table(md, &summarize_sdk(&c.flask), "OpenTelemetry SDK", true);
    }
}

pub fn node_section(md: &mut String, res: &Results) {
    let _ = writeln!(md, "\n## 4. Node.js web app: waggle vs OpenTelemetry auto-instrumentation\n");
    let _ = writeln!(
        md,
        "bench/node_app.js, the Flask route's work on Node.js's own `http` module (one process); wrk -t1 \
         -c{NODE_WRK_CONNECTIONS}, keep-alive. The SDK run is `node --require \
         @opentelemetry/auto-instrumentations-node/register` (default instrumentations; versions in the machine \
         table) exporting OTLP/HTTP protobuf to the same receiver, batch delay 1 s, resource detectors \
         env, host, os, process and service instance (the cloud detectors would query addresses off this \
         machine).\n"
    );
    match &res.node {
        Some(Ok(rounds)) if !rounds.is_empty() => sdk_table(md, &summarize_sdk(rounds), "OpenTelemetry SDK", false),
        other => outcome_note(md, other),
    }
}

/// The head of a saturated-nginx table (scenarios 1 and 8): throughput,
/// latency and agent CPU.
pub fn nginx_rows(md: &mut String, s: &NginxSummary) {
    let _ = writeln!(md, "| metric | no agent | waggle | ratio |\n| --- | --- | --- | --- |");
    let rows = [
        ("throughput (req/s)", s.base_rps, s.agent_rps, &s.rps_ratios),
        ("p50 latency (µs)", s.base_p50, s.agent_p50, &s.p50_ratios),
        ("p99 latency (µs)", s.base_p99, s.agent_p99, &s.p99_ratios),
    ];
    for (name, base, agent, ratios) in rows {
        let _ = writeln!(md, "| {name} | {} | {} | {} |", f0(base), f0(agent), ratio_cell(ratios));
    }
    let _ = writeln!(md, "| agent CPU (millicores) | | {} | |", f0(s.millicores));
}

pub fn https_section(md: &mut String, res: &Results) {
    let _ = writeln!(md, "\n## 8. nginx over HTTPS (TLS plaintext read at OpenSSL)\n");
    let _ = writeln!(
        md,
        "The nginx of scenario 1 serving HTTPS (TLS 1.3, a self-signed P-256 certificate made by the harness); \
         wrk -t{NGINX_WRK_THREADS} -c{NGINX_WRK_CONNECTIONS} over `https://`, keep-alive. waggle reads both \
         sides' plaintext at `SSL_read`/`SSL_write` of libssl (uprobes) and skips the ciphertext in the \
         kernel. The floor: empty programs on waggle's syscall tracepoints (the uprobes have no empty twin). \
         The scenario fails when the agent rounds made fewer spans than requests.\n"
    );
    match &res.https {
        Some(Ok(rounds)) if !rounds.is_empty() => {
            let s = summarize_nginx(rounds);
            nginx_rows(md, &s);
            let _ = writeln!(md, "| agent CPU per span (µs) | | {} | |", us1(s.cpu_us_per_span));
            let _ = writeln!(md, "| kernel events lost | | {} | |", s.events_lost);
            let _ = writeln!(md, "| spans per request (2 = both sides traced) | | {:.2} | |", s.spans_per_request);
            undertraced(md, s.spans_per_request);
            if let Some(floor_rps) = s.floor_rps {
                let _ = writeln!(
                    md,
                    "\nThe floor: {} req/s, {} no agent; waggle reaches {} the floor.",
                    f0(floor_rps),
                    ratio_cell(&s.floor_ratios),
                    ratio_cell(&s.agent_to_floor_ratios)
                );
            }
        }
        other => outcome_note(md, other),
    }
}

pub fn idle_section(md: &mut String, res: &Results) {
    let _ = writeln!(md, "\n## 9. Open idle connections: the agent's memory\n");
    let _ = writeln!(
        md,
        "The harness opens N keep-alive connections to the nginx of scenario 1 (listening on five loopback \
         addresses for ephemeral ports), sends one request on each and leaves them all open: waggle traces \
         both ends, 2N connection ends. A fresh agent per step. RSS is VmRSS with all N open and their spans \
         exported; eBPF memory is the `memlock` of the agent's maps and programs (fixed at load, charged to \
         its cgroup, not in RSS). At the end one more request goes out on the {IDLE_SAMPLE} oldest and the \
         {IDLE_SAMPLE} newest connections: the spans that reached the receiver (2 per traced request) show \
         whether an idle connection is still known after N others opened.\n"
    );
    match &res.idle {
        Some(Ok(steps)) => {
            let _ = writeln!(
                md,
                "| connections | agent RSS | eBPF memory | agent CPU per connection opened | connection states evicted | spans: oldest / newest {IDLE_SAMPLE} (of {}) |\n| --- | --- | --- | --- | --- | --- |",
                2 * IDLE_SAMPLE
            );
            for s in steps {
                let _ = writeln!(
                    md,
                    "| {} | {:.1} MiB | {:.1} MiB | {} µs | {} | {} / {} |",
                    s.connections,
                    mib(s.rss_kib),
                    mib(s.bpf_memlock_kib),
                    us1(s.cpu_us_per_connection),
                    s.run.counter("conns_evicted"),
                    s.oldest_spans,
                    s.newest_spans
                );
            }
        }
        other => outcome_note(md, other),
    }
}
