//! Application metrics end to end: the agent computes RED histograms, span
//! metrics and a service graph from the spans of real services, a real
//! Prometheus scrapes them (exemplar storage on), and what its HTTP API
//! answers matches the spans the OTLP receiver got.
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
    let agent = Agent::start(&args, &[]);
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

    let body = scrape(metrics_port);
    assert_eq!(counter(&body, "metric_series_overflow"), 0, "{body}");
    let out = agent.stop();
    assert_eq!(out.counter("metric_series_overflow"), 0);
    drop(prom);
}
