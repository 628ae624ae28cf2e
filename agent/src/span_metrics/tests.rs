use std::{
    sync::atomic::Ordering,
    time::{Duration, UNIX_EPOCH},
};

use prometheus_client::{encoding::text, registry::Registry};

use super::*;
use crate::model::{Attribute, ProcessResource};

fn resource(service: &str, pid: u32) -> Arc<ProcessResource> {
    Arc::new(ProcessResource {
        service_name: service.into(),
        pid,
        executable_name: "python3".into(),
        attributes: vec![("host.name".into(), "node-1".into()), ("k8s.namespace.name".into(), "shop".into())],
    })
}

struct SpanSpec {
    service: &'static str,
    kind: SpanKind,
    name: &'static str,
    millis: u64,
    trace: u8,
    span: u8,
    parent: Option<u8>,
    attributes: Vec<Attribute>,
}

fn span(s: SpanSpec) -> FinishedSpan {
    let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let error = s.attributes.iter().find(|(k, _)| *k == "error.type").is_some();
    FinishedSpan {
        resource: resource(s.service, 100),
        trace_id: [s.trace; 16],
        span_id: [s.span; 8],
        parent_span_id: s.parent.map(|p| [p; 8]),
        tracestate: None,
        sampled: true,
        kind: s.kind,
        name: s.name.into(),
        start,
        end: start + Duration::from_millis(s.millis),
        status: if error { SpanStatus::Error { description: "x".into() } } else { SpanStatus::Unset },
        attributes: s.attributes,
    }
}

fn http_server(
    service: &'static str,
    route: &'static str,
    status: i64,
    millis: u64,
    ids: (u8, u8, Option<u8>),
) -> FinishedSpan {
    let mut attributes: Vec<Attribute> = vec![
        ("http.request.method", "GET".into()),
        ("url.path", "/x".into()),
        ("url.scheme", "http".into()),
        ("http.route", route.into()),
        ("http.response.status_code", AttrValue::Int(status)),
        ("network.protocol.version", "1.1".into()),
        ("http.response.body.size", AttrValue::Int(300)),
        ("server.address", "127.0.0.1".into()),
    ];
    if status >= 500 {
        attributes.push(("error.type", AttrValue::from(status.to_string())));
    }
    span(SpanSpec {
        service,
        kind: SpanKind::Server,
        name: "GET",
        millis,
        trace: ids.0,
        span: ids.1,
        parent: ids.2,
        attributes,
    })
}

fn http_client(service: &'static str, status: i64, millis: u64, trace: u8, span_id: u8) -> FinishedSpan {
    let mut attributes: Vec<Attribute> = vec![
        ("http.request.method", "GET".into()),
        ("url.scheme", "http".into()),
        ("http.response.status_code", AttrValue::Int(status)),
        ("server.address", "127.0.0.1".into()),
        ("server.port", AttrValue::Int(8080)),
    ];
    if status >= 400 {
        attributes.push(("error.type", AttrValue::from(status.to_string())));
    }
    span(SpanSpec {
        service,
        kind: SpanKind::Client,
        name: "GET",
        millis,
        trace,
        span: span_id,
        parent: None,
        attributes,
    })
}

fn db_client(service: &'static str, millis: u64, trace: u8, span_id: u8) -> FinishedSpan {
    span(SpanSpec {
        service,
        kind: SpanKind::Client,
        name: "SELECT items",
        millis,
        trace,
        span: span_id,
        parent: Some(1),
        attributes: vec![
            ("db.system.name", "postgresql".into()),
            ("db.operation.name", "SELECT".into()),
            ("db.collection.name", "items".into()),
            ("db.namespace", "shop".into()),
            ("db.query.text", "SELECT name FROM items WHERE id = ?".into()),
            ("server.address", "127.0.0.1".into()),
            ("server.port", AttrValue::Int(5432)),
        ],
    })
}

fn render(m: &Arc<SpanMetrics>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(m.collector());
    let mut out = String::new();
    text::encode(&mut out, &registry).unwrap();
    out
}

/// The value of the one sample line starting with `prefix` (name and
/// labels up to the value); the exemplar after ` # ` is ignored.
fn value(body: &str, prefix: &str) -> Option<f64> {
    let lines: Vec<&str> = body.lines().filter(|l| l.starts_with(prefix)).collect();
    assert!(lines.len() <= 1, "{prefix} matches {} lines:\n{body}", lines.len());
    let line = lines.first()?;
    let rest = line[prefix.len()..].split(" # ").next()?;
    rest.split_whitespace().last()?.parse().ok()
}

fn metrics() -> (Arc<SpanMetrics>, Arc<Metrics>) {
    let counters = Arc::new(Metrics::default());
    (Arc::new(SpanMetrics::new(DEFAULT_MAX_SERIES, counters.clone())), counters)
}

#[test]
fn http_server_duration_buckets_errors_and_exemplars() {
    let (m, _) = metrics();
    m.record(&[
        http_server("front", "/slow", 200, 300, (1, 1, None)),
        http_server("front", "/slow", 200, 310, (2, 2, None)),
        http_server("front", "/error", 500, 2, (3, 3, None)),
        http_server("front", "/error", 500, 2, (4, 4, None)),
        http_server("front", "/error", 500, 2, (5, 5, None)),
    ]);
    let body = render(&m);
    let slow = r#"service_name="front",k8s_namespace_name="shop",http_request_method="GET",http_route="/slow",http_response_status_code="200",url_scheme="http",network_protocol_version="1.1"}"#;
    let bucket = |le: &str| format!("http_server_request_duration_seconds_bucket{{le=\"{le}\",{slow}");
    assert_eq!(value(&body, &bucket("0.25")), Some(0.0), "{body}");
    assert_eq!(value(&body, &bucket("0.5")), Some(2.0), "{body}");
    assert_eq!(value(&body, &bucket("+Inf")), Some(2.0), "{body}");
    // The bucket holding both carries one of them as its exemplar: the
    // first of that second on /metrics (one update per bucket per second),
    // the latest for OTLP.
    let line = body.lines().find(|l| l.starts_with(&bucket("0.5"))).unwrap();
    assert!(
        line.contains(&format!(r#" # {{trace_id="{}",span_id="{}"}} 0.3"#, "01".repeat(16), "01".repeat(8))),
        "{line}"
    );
    let latest = m.visit(|f| {
        f.hist_series(&HTTP_SERVER_DURATION)
            .find(|(labels, _)| labels.otel_pairs().any(|(_, v)| v == ValRef::Str("/slow")))
            .and_then(|(_, hist)| hist.exemplars[HTTP_DURATION_BOUNDS.partition_point(|b| *b < 0.31)])
    });
    assert_eq!(latest.map(|e| (e.trace.span_id, e.value)), Some(([2; 8], 0.31)));
    let error = r#"http_server_request_duration_seconds_count{service_name="front",k8s_namespace_name="shop",http_request_method="GET",http_route="/error",http_response_status_code="500",error_type="500",url_scheme="http",network_protocol_version="1.1"}"#;
    assert_eq!(value(&body, error), Some(3.0), "{body}");
    assert!(body.contains("# TYPE http_server_request_duration_seconds histogram"), "{body}");
    assert!(body.contains("# UNIT http_server_request_duration_seconds seconds"), "{body}");
    // Response sizes: 300 bytes is in (256, 1024].
    assert_eq!(
        value(
            &body,
            r#"http_server_response_body_size_bytes_bucket{le="1024.0",service_name="front",k8s_namespace_name="shop",http_request_method="GET",http_route="/slow",http_response_status_code="200",url_scheme="http",network_protocol_version="1.1"}"#
        ),
        Some(2.0),
        "{body}"
    );
    // Tempo span metrics.
    assert_eq!(
        value(
            &body,
            r#"traces_spanmetrics_calls_total{service="front",span_name="GET",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR"}"#
        ),
        Some(3.0),
        "{body}"
    );
    assert_eq!(
        value(
            &body,
            r#"traces_spanmetrics_latency_bucket{le="0.256",service="front",span_name="GET",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET"}"#
        ),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        value(
            &body,
            r#"traces_spanmetrics_latency_bucket{le="0.512",service="front",span_name="GET",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET"}"#
        ),
        Some(2.0),
        "{body}"
    );
}

#[test]
fn client_errors_include_4xx_and_db_spans_get_their_own_histogram_and_edge() {
    let (m, _) = metrics();
    m.record(&[
        http_client("front", 404, 5, 1, 1),
        http_client("front", 503, 5, 2, 2),
        http_client("front", 200, 5, 3, 3),
        db_client("inventory", 3, 4, 4),
        db_client("inventory", 30, 5, 5),
    ]);
    let body = render(&m);
    let errors: f64 = body
        .lines()
        .filter(|l| {
            l.starts_with("traces_spanmetrics_calls_total{service=\"front\"") && l.contains("STATUS_CODE_ERROR")
        })
        .map(|l| l.split_whitespace().last().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(errors, 2.0, "{body}");
    let count_404 = r#"http_client_request_duration_seconds_count{service_name="front",k8s_namespace_name="shop",http_request_method="GET",http_response_status_code="404",error_type="404",server_address="127.0.0.1",server_port="8080",url_scheme="http"}"#;
    assert_eq!(value(&body, count_404), Some(1.0), "{body}");
    let db = |le: &str| {
        format!(
            r#"db_client_operation_duration_seconds_bucket{{le="{le}",service_name="inventory",k8s_namespace_name="shop",db_system_name="postgresql",db_operation_name="SELECT",db_collection_name="items",db_namespace="shop",server_address="127.0.0.1",server_port="5432"}}"#
        )
    };
    assert_eq!(value(&body, &db("0.005")), Some(1.0), "{body}");
    assert_eq!(value(&body, &db("0.05")), Some(2.0), "{body}");
    // Not an HTTP client metric.
    assert!(!body.contains(r#"http_client_request_duration_seconds_count{service_name="inventory""#), "{body}");
    let edge = r#"{client="inventory",server="postgresql",connection_type="database"}"#;
    assert_eq!(value(&body, &format!("traces_service_graph_request_total{edge}")), Some(2.0), "{body}");
    assert_eq!(value(&body, &format!("traces_service_graph_request_client_seconds_count{edge}")), Some(2.0));
    assert_eq!(value(&body, &format!("traces_service_graph_request_server_seconds_count{edge}")), Some(2.0));
}

#[test]
fn service_graph_pairs_client_and_server_across_batches_and_counts_the_unpaired() {
    let (m, counters) = metrics();
    let t0 = Instant::now();
    // front calls inventory twice (trace 7: client span 0x10 → server
    // parent 0x10; trace 8 fails on the server), once across batches.
    let inventory_ok = http_server("inventory", "/items", 200, 20, (7, 0x11, Some(0x10)));
    let inventory_failed = http_server("inventory", "/items", 500, 20, (8, 0x21, Some(0x20)));
    let orphan_server = http_server("inventory", "/items", 200, 20, (9, 0x31, Some(0x30)));
    let root = http_server("front", "/checkout", 200, 50, (7, 0x01, None));
    m.record_at(&[inventory_ok, root, inventory_failed, orphan_server], t0);
    m.record_at(&[http_client("front", 200, 25, 7, 0x10)], t0 + Duration::from_secs(1));
    m.record_at(&[http_client("front", 500, 25, 8, 0x20)], t0 + Duration::from_secs(2));
    let body = render(&m);
    let edge = r#"{client="front",server="inventory"}"#;
    assert_eq!(value(&body, &format!("traces_service_graph_request_total{edge}")), Some(2.0), "{body}");
    assert_eq!(value(&body, &format!("traces_service_graph_request_failed_total{edge}")), Some(1.0), "{body}");
    assert_eq!(value(&body, &format!("traces_service_graph_request_client_seconds_sum{edge}")), Some(0.05), "{body}");
    assert_eq!(value(&body, &format!("traces_service_graph_request_server_seconds_sum{edge}")), Some(0.04), "{body}");
    assert_eq!(counters.service_graph_unpaired.load(Ordering::Relaxed), 0);
    // The orphan's caller never comes: counted once it expires.
    m.record_at(&[], t0 + PAIRING_TTL + Duration::from_millis(1));
    assert_eq!(counters.service_graph_unpaired.load(Ordering::Relaxed), 1);
}

#[test]
fn series_past_the_limit_go_to_one_overflow_series_and_are_counted() {
    let counters = Arc::new(Metrics::default());
    let m = Arc::new(SpanMetrics::new(3, counters.clone()));
    let routes = ["/a", "/b", "/c", "/d", "/e"];
    let batch: Vec<FinishedSpan> =
        routes.iter().enumerate().map(|(i, r)| http_server("front", r, 200, 1, (i as u8 + 1, 1, None))).collect();
    m.record(&batch);
    m.record(&batch[..1]);
    let body = render(&m);
    assert_eq!(
        value(&body, r#"http_server_request_duration_seconds_count{otel_metric_overflow="true"}"#),
        Some(2.0),
        "{body}"
    );
    assert!(body.contains(r#"http_route="/c""#), "{body}");
    assert!(!body.contains(r#"http_route="/d""#), "{body}");
    // /a again is an existing series, not an overflow.
    let a_count = body
        .lines()
        .find(|l| l.starts_with("http_server_request_duration_seconds_count{") && l.contains(r#"http_route="/a""#))
        .unwrap();
    assert!(a_count.ends_with(" 2"), "{a_count}");
    // Body-size histograms overflow the same way: two overflowed per family
    // that saw the five routes (duration, response size), none for span metrics
    // (one span name).
    assert_eq!(counters.metric_series_overflow.load(Ordering::Relaxed), 4);
}

#[test]
fn nothing_recorded_renders_no_families() {
    let (m, _) = metrics();
    assert_eq!(render(&m), "# EOF\n");
}

/// Cost per span of `record` (every metric, the pairing table included),
/// by hand:
/// `cargo test -p waggle --release --lib span_metrics::tests::record_bench -- --ignored --nocapture`
#[test]
#[ignore = "micro-benchmark: run by hand"]
fn record_bench() {
    const N: usize = 512;
    let routes = ["/users/{id}", "/orders", "/checkout", "/health", "/items/{id}", "/cart", "/login", "/search"];
    let batch: Vec<FinishedSpan> = (0..N)
        .map(|i| match i % 4 {
            0 | 1 => http_server(
                "front",
                routes[i % routes.len()],
                200 + 300 * (i % 7 == 0) as i64,
                12,
                (i as u8, 1, Some(2)),
            ),
            2 => http_client("front", 200, 5, i as u8, 2),
            _ => db_client("inventory", 3, i as u8, 3),
        })
        .collect();
    let (m, _) = metrics();
    m.record(&batch);
    let mut best = f64::MAX;
    for _ in 0..200 {
        let t0 = Instant::now();
        m.record(&batch);
        best = best.min(t0.elapsed().as_secs_f64() * 1e9 / N as f64);
    }
    println!("span metrics: best of 200 batches of {N}: {best:.0} ns/span");
}
