//! Application metrics end to end: the agent computes RED histograms, span
//! metrics and a service graph from the spans of real services, a real
//! Prometheus scrapes them (exemplar storage on), and what its HTTP API
//! answers matches the spans the OTLP receiver got; the same numbers also
//! arrive over OTLP (`OTEL_METRICS_EXPORTER=otlp`).
//!
//! ```text
//! curl -> front (python, tests/fixtures/metrics/front.py)
//!           '-> inventory (python, .../inventory.py) -> PostgreSQL (psycopg 3)
//! ```
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    time::Duration,
};

use opentelemetry_proto::tonic::{
    common::v1::{any_value, KeyValue},
    metrics::v1::{metric, ResourceMetrics},
};
use waggle_e2e::{
    curl,
    db::{venv_python, Postgres},
    e2e_setup,
    env::{free_port, tail, wait_for_port_line},
    fixture,
    prometheus::Prometheus,
    python,
    scrape::{counter, scrape},
    wait_for_other_injectors, Agent, OtlpReceiver, Proc, Protocol, Span, StatusCode, SPAN_TIMEOUT,
};

const CHECKOUTS: usize = 6;
const BROKEN: usize = 2;
const STALE: usize = 3;
const SLOW: usize = 3;
const ERRORS: usize = 4;

/// A fixture service that prints `port N` once it listens; killed on drop.
struct Service {
    proc: Proc,
    port: u16,
    dir: tempfile::TempDir,
}

impl Service {
    #[track_caller]
    fn start(name: &str, interpreter: &Path, script: &str, arg: u16) -> Service {
        let dir = tempfile::Builder::new()
            .prefix(&format!("waggle-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir for {name}: {e}"));
        let out_path = dir.path().join("stdout");
        let err_path = dir.path().join("stderr");
        let out = std::fs::File::create(&out_path).unwrap_or_else(|e| panic!("creating {}: {e}", out_path.display()));
        let err = std::fs::File::create(&err_path).unwrap_or_else(|e| panic!("creating {}: {e}", err_path.display()));
        let mut cmd = Command::new(interpreter);
        cmd.arg("-u").arg(fixture(script)).arg(arg.to_string()).env("OTEL_SERVICE_NAME", name);
        cmd.stdin(std::process::Stdio::null()).stdout(out).stderr(err);
        let mut proc = Proc::spawn(name, &mut cmd);
        match wait_for_port_line(&mut proc, &out_path, Duration::from_secs(30)) {
            Ok(port) => Service { proc, port, dir },
            Err(st) => panic!("{name} did not start ({st:?}); stderr:\n{}", tail(&err_path, 30)),
        }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn stderr(&self) -> String {
        tail(&self.dir.path().join("stderr"), 30)
    }
}

/// GETs `path` `n` times, asserting the status front answers.
#[track_caller]
fn hit(front: &Service, path: &str, n: usize, status: &str) {
    for _ in 0..n {
        let run = curl(&["-o", "/dev/null", "-w", "%{http_code}", &front.url(path)]);
        assert_eq!(run.stdout, status, "GET {path}: {run:?}\nfront:\n{}", front.stderr());
    }
}

fn of(spans: &[Span], pid: u32, server: bool) -> Vec<Span> {
    spans.iter().filter(|s| s.pid() == Some(pid) && s.is_server() == server).cloned().collect()
}

fn errors(spans: &[Span]) -> usize {
    spans.iter().filter(|s| s.status_code == StatusCode::Error).count()
}

#[test]
#[ignore = "needs root, PostgreSQL, Prometheus and the agent binary: cargo xtask test runs it"]
fn red_metrics_span_metrics_and_service_graph_reach_a_real_prometheus() {
    let _guard = e2e_setup("red_metrics_span_metrics_and_service_graph_reach_a_real_prometheus");
    let pg = Postgres::start();
    let receiver = OtlpReceiver::start();
    wait_for_other_injectors();
    let metrics_port = free_port();
    let mut args = receiver.agent_args(Protocol::HttpProtobuf);
    args.extend(["--metrics-addr".to_owned(), format!("127.0.0.1:{metrics_port}")]);
    let agent = Agent::start(&args, &[("OTEL_METRICS_EXPORTER", "otlp"), ("OTEL_METRIC_EXPORT_INTERVAL", "500")]);
    // After the agent: their sockets are tracked from the start.
    let inventory = Service::start("inventory", &venv_python(), "metrics/inventory.py", pg.port());
    let front = Service::start("front", &python(), "metrics/front.py", inventory.port);
    receiver.focus(&[front.pid(), inventory.pid()]);
    let prom = Prometheus::start(&[format!("127.0.0.1:{metrics_port}")]);

    // One request Prometheus sees before the rest, so the rest is an
    // increase it can compute a rate from.
    hit(&front, "/checkout", 1, "200");
    prom.expect_value(r#"sum(http_server_request_duration_seconds_count{service_name="front"})"#, 1.0);
    hit(&front, "/checkout", CHECKOUTS - 1, "200");
    hit(&front, "/broken", BROKEN, "502");
    hit(&front, "/stale", STALE, "200");
    hit(&front, "/slow", SLOW, "200");
    hit(&front, "/error", ERRORS, "500");

    // The spans first: what the metrics must agree with.
    let calls = CHECKOUTS + BROKEN + STALE;
    let total = calls + SLOW + ERRORS;
    let spans = receiver.expect_spans("every request's spans", SPAN_TIMEOUT, |spans| {
        of(spans, front.pid(), true).len() >= total
            && of(spans, front.pid(), false).len() >= calls
            && of(spans, inventory.pid(), true).len() >= calls
            && of(spans, inventory.pid(), false).len() >= CHECKOUTS
    });
    let front_server = of(&spans, front.pid(), true);
    let front_client = of(&spans, front.pid(), false);
    let inventory_server = of(&spans, inventory.pid(), true);
    let inventory_db: Vec<Span> =
        of(&spans, inventory.pid(), false).into_iter().filter(|s| s.attr_str("db.system.name").is_some()).collect();
    assert_eq!(front_server.len(), total, "{}", waggle_e2e::describe(&front_server));
    assert_eq!(front_client.len(), calls, "{}", waggle_e2e::describe(&front_client));
    assert_eq!(inventory_server.len(), calls, "{}", waggle_e2e::describe(&inventory_server));
    assert!(inventory_db.len() >= CHECKOUTS, "{}", waggle_e2e::describe(&inventory_db));
    // Each inventory request is the child of one of front's calls: the
    // service graph can pair every one.
    let client_ids: BTreeSet<(&str, &str)> =
        front_client.iter().map(|s| (s.trace_id.as_str(), s.span_id.as_str())).collect();
    for s in &inventory_server {
        assert!(client_ids.contains(&(s.trace_id.as_str(), s.parent_span_id.as_str())), "unpaired: {s}");
    }

    // Request counts per route, as the receiver saw them.
    let mut by_route: BTreeMap<String, usize> = BTreeMap::new();
    for s in &front_server {
        *by_route.entry(s.attr_str("http.route").unwrap_or("").to_owned()).or_default() += 1;
    }
    assert_eq!(by_route.get("/slow"), Some(&SLOW), "{by_route:?}");
    for (route, n) in &by_route {
        prom.expect_value(
            &format!(r#"sum(http_server_request_duration_seconds_count{{service_name="front",http_route="{route}"}})"#),
            *n as f64,
        );
    }
    prom.expect_value(
        r#"sum(traces_spanmetrics_calls_total{service="front",span_kind="SPAN_KIND_SERVER"})"#,
        total as f64,
    );
    // The rate: the requests after the first over the minute.
    let rate_query = r#"sum(rate(http_server_request_duration_seconds_count{service_name="front"}[1m]))"#;
    let mut rate = None;
    let positive = waggle_e2e::env::poll_until(Duration::from_secs(20), || {
        rate = prom.scalar(rate_query);
        rate.is_some_and(|r| r > 0.0)
    });
    assert!(positive, "{rate_query} = {rate:?}");

    // Errors: 5xx for SERVER spans, 4xx and 5xx for CLIENT spans.
    let server_errors = errors(&front_server);
    assert_eq!(server_errors, ERRORS + BROKEN, "{}", waggle_e2e::describe(&front_server));
    prom.expect_value(
        r#"sum(traces_spanmetrics_calls_total{service="front",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR"})"#,
        server_errors as f64,
    );
    prom.expect_value(
        r#"sum(http_server_request_duration_seconds_count{service_name="front",error_type=~"5.."})"#,
        server_errors as f64,
    );
    let client_errors = errors(&front_client);
    assert_eq!(client_errors, BROKEN + STALE, "{}", waggle_e2e::describe(&front_client));
    prom.expect_value(
        r#"sum(traces_spanmetrics_calls_total{service="front",span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_ERROR"})"#,
        client_errors as f64,
    );
    prom.expect_value(r#"sum(http_client_request_duration_seconds_count{service_name="front",http_response_status_code="404",error_type="404"})"#, STALE as f64);

    // The 300 ms handler: in (0.25, 0.5] by its spans and by the histogram.
    for s in front_server.iter().filter(|s| s.attr_str("http.route") == Some("/slow")) {
        let d = s.duration().as_secs_f64();
        assert!(d > 0.25 && d <= 0.5, "{s}");
    }
    let slow = r#"http_server_request_duration_seconds_bucket{service_name="front",http_route="/slow""#;
    prom.expect_value(&format!(r#"sum({slow},le="0.5"}})"#), SLOW as f64);
    prom.expect_value(&format!(r#"sum({slow},le="0.25"}})"#), 0.0);
    let p50 = prom.scalar(&format!("histogram_quantile(0.5, sum by (le) ({slow}}}))"));
    assert!(p50.is_some_and(|q| q > 0.25 && q <= 0.5), "median of /slow: {p50:?}");

    // Exemplars point at exported spans.
    let trace_ids: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    let span_ids: BTreeSet<(&str, &str)> = spans.iter().map(|s| (s.trace_id.as_str(), s.span_id.as_str())).collect();
    let mut exemplars = Vec::new();
    assert!(
        waggle_e2e::env::poll_until(Duration::from_secs(20), || {
            exemplars = prom.exemplars(r#"http_server_request_duration_seconds_bucket{service_name="front"}"#);
            !exemplars.is_empty()
        }),
        "no exemplars stored for front's requests; prometheus log:\n{}",
        prom.log()
    );
    for (labels, value) in &exemplars {
        let (Some(trace), Some(span)) = (labels["trace_id"].as_str(), labels["span_id"].as_str()) else {
            panic!("exemplar without trace_id/span_id: {labels}");
        };
        assert!(trace_ids.contains(trace), "exemplar trace {trace} is not among the exported spans");
        assert!(span_ids.contains(&(trace, span)), "exemplar span {trace}/{span} is not among the exported spans");
        assert!(*value > 0.0 && *value < 10.0, "exemplar value {value}");
    }
    let slow_exemplars = prom.exemplars(&format!("{slow}}}"));
    assert!(slow_exemplars.iter().any(|(_, v)| *v > 0.25), "{slow_exemplars:?}");

    // The service graph: front -> inventory -> postgresql.
    let edge = r#"{client="front",server="inventory"}"#;
    prom.expect_value(&format!("sum(traces_service_graph_request_total{edge})"), calls as f64);
    // A call failed when either side did: the 500s and the 404s.
    prom.expect_value(&format!("sum(traces_service_graph_request_failed_total{edge})"), (BROKEN + STALE) as f64);
    prom.expect_value(&format!("sum(traces_service_graph_request_server_seconds_count{edge})"), calls as f64);
    prom.expect_value(&format!("sum(traces_service_graph_request_client_seconds_count{edge})"), calls as f64);
    let db_edge = r#"{client="inventory",server="postgresql",connection_type="database"}"#;
    prom.expect_value(&format!("sum(traces_service_graph_request_total{db_edge})"), inventory_db.len() as f64);
    prom.expect_value(
        r#"sum(db_client_operation_duration_seconds_count{service_name="inventory",db_system_name="postgresql"})"#,
        inventory_db.len() as f64,
    );

    // The same numbers over OTLP, from the latest (cumulative) export.
    let server_duration = |route: &str| {
        let route = route.to_owned();
        move |attrs: &BTreeMap<String, String>| attrs.get("http.route") == Some(&route)
    };
    for (route, n) in &by_route {
        expect_otlp(&receiver, "http.server.request.duration", "front", server_duration(route), |p| {
            p.count == *n as u64
        });
    }
    // Buckets: (0.25, 0.5] holds every /slow request.
    let slow_point = expect_otlp(&receiver, "http.server.request.duration", "front", server_duration("/slow"), |p| {
        p.count == SLOW as u64
    });
    let i = slow_point.bounds.iter().position(|b| *b == 0.5).expect("a 0.5 s bound");
    assert_eq!(slow_point.buckets[i], SLOW as u64, "{slow_point:?}");
    assert_eq!(slow_point.buckets[..i].iter().sum::<u64>(), 0, "{slow_point:?}");
    for (trace, span) in &slow_point.exemplars {
        assert!(span_ids.contains(&(trace.as_str(), span.as_str())), "OTLP exemplar {trace}/{span} not exported");
    }
    assert!(!slow_point.exemplars.is_empty(), "{slow_point:?}");
    expect_otlp(
        &receiver,
        "traces.span.metrics.calls",
        "front",
        |a| {
            a.get("span.kind").map(String::as_str) == Some("SPAN_KIND_SERVER")
                && a.get("status.code").map(String::as_str) == Some("STATUS_CODE_ERROR")
        },
        |p| p.count == server_errors as u64,
    );
    expect_otlp(
        &receiver,
        "traces.span.metrics.calls",
        "front",
        |a| {
            a.get("span.kind").map(String::as_str) == Some("SPAN_KIND_CLIENT")
                && a.get("status.code").map(String::as_str) == Some("STATUS_CODE_ERROR")
        },
        |p| p.count == client_errors as u64,
    );
    let front_inventory = |a: &BTreeMap<String, String>| {
        a.get("client").map(String::as_str) == Some("front") && a.get("server").map(String::as_str) == Some("inventory")
    };
    expect_otlp(&receiver, "traces.service.graph.request", "waggle", front_inventory, |p| p.count == calls as u64);
    expect_otlp(&receiver, "traces.service.graph.request.failed", "waggle", front_inventory, |p| {
        p.count == (BROKEN + STALE) as u64
    });
    expect_otlp(
        &receiver,
        "traces.service.graph.request",
        "waggle",
        |a| {
            a.get("client").map(String::as_str) == Some("inventory")
                && a.get("server").map(String::as_str) == Some("postgresql")
        },
        |p| p.count == inventory_db.len() as u64,
    );
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());

    let body = scrape(metrics_port);
    assert_eq!(counter(&body, "metric_series_overflow"), 0, "{body}");
    let out = agent.stop();
    assert_eq!(out.counter("metric_series_overflow"), 0);
    drop(prom);
}

/// One data point of an OTLP export, flattened: a histogram's count,
/// buckets and exemplars, or a sum's value as `count`.
#[derive(Debug, Default)]
struct Point {
    count: u64,
    bounds: Vec<f64>,
    buckets: Vec<u64>,
    exemplars: Vec<(String, String)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn strings(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .filter_map(|kv| {
            let v = match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => s.clone(),
                any_value::Value::IntValue(i) => i.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), v))
        })
        .collect()
}

/// The points of `metric` for resource `service` in one export.
fn points(export: &[ResourceMetrics], metric: &str, service: &str) -> Vec<(BTreeMap<String, String>, Point)> {
    let mut out = Vec::new();
    for rm in export {
        let resource = strings(rm.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default());
        if resource.get("service.name").map(String::as_str) != Some(service) {
            continue;
        }
        for m in rm.scope_metrics.iter().flat_map(|s| &s.metrics).filter(|m| m.name == metric) {
            match &m.data {
                Some(metric::Data::Histogram(h)) => {
                    for p in &h.data_points {
                        let exemplars = p.exemplars.iter().map(|e| (hex(&e.trace_id), hex(&e.span_id))).collect();
                        let point = Point {
                            count: p.count,
                            bounds: p.explicit_bounds.clone(),
                            buckets: p.bucket_counts.clone(),
                            exemplars,
                        };
                        out.push((strings(&p.attributes), point));
                    }
                }
                Some(metric::Data::Sum(s)) => {
                    for p in &s.data_points {
                        let count = match p.value {
                            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(i)) => {
                                u64::try_from(i).unwrap_or(0)
                            }
                            _ => 0,
                        };
                        out.push((strings(&p.attributes), Point { count, ..Point::default() }));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Waits until the points of `metric` (resource `service`) in the latest
/// OTLP export whose attributes satisfy `which`, added up, satisfy `want`;
/// returns their sum.
#[track_caller]
fn expect_otlp(
    receiver: &OtlpReceiver,
    metric: &str,
    service: &str,
    which: impl Fn(&BTreeMap<String, String>) -> bool,
    want: impl Fn(&Point) -> bool,
) -> Point {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let exports = receiver.metric_exports();
        let found: Vec<(BTreeMap<String, String>, Point)> = exports
            .last()
            .map(|e| points(e, metric, service).into_iter().filter(|(a, _)| which(a)).collect())
            .unwrap_or_default();
        let mut total = Point::default();
        for (_, p) in &found {
            total.count += p.count;
            if total.buckets.is_empty() {
                total.bounds.clone_from(&p.bounds);
                total.buckets = vec![0; p.buckets.len()];
            }
            for (t, b) in total.buckets.iter_mut().zip(&p.buckets) {
                *t += b;
            }
            total.exemplars.extend(p.exemplars.iter().cloned());
        }
        if !found.is_empty() && want(&total) {
            return total;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "OTLP: the {metric} points of {service} in the latest of {} exports do not add up as expected: {found:?}",
            exports.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
