use super::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
};

/// One raw HTTP/1.1 exchange; returns (status line, headers, body).
async fn request(addr: SocketAddr, method: &str, path: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_ascii_lowercase(), body.to_string())
}

async fn start(metrics: Arc<Metrics>, kernel: KernelCounterCell) -> (MetricsServer, oneshot::Sender<()>) {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = serve("127.0.0.1:0".parse().unwrap(), metrics, kernel, async move {
        let _ = stop_rx.await;
    })
    .await
    .unwrap();
    (server, stop_tx)
}

#[tokio::test]
async fn traces_are_served_to_loopback_only_and_a_missing_one_says_how_far_back_the_ring_reaches() {
    use crate::export::waterfall::{decode_trace, render_trace, RenderOptions, TraceSpan};
    let metrics = Arc::new(Metrics::default());
    let recent = SharedRecentTraces::new(1 << 20, metrics.clone());
    let span = TraceSpan::of(&crate::export::tests::span("GET /users/{id}"));
    let id = crate::model::hex(&span.trace_id);
    recent.with(|ring| ring.insert(span.clone()));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = serve_with(
        "127.0.0.1:0".parse().unwrap(),
        metrics,
        KernelCounterCell::new(),
        None,
        Some(recent.clone()),
        Health::new(),
        async move {
            let _ = stop_rx.await;
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr();

    let (status, headers, body) = request(addr, "GET", &format!("/traces/{id}")).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("content-type: application/json"), "{headers}");
    // What the waterfall shows survives the wire: the same tree.
    let tree = |spans: &[TraceSpan]| {
        let mut out = String::new();
        render_trace(spans, 0, &RenderOptions::default(), &mut out);
        out
    };
    assert_eq!(tree(&decode_trace(&body).unwrap()), tree(&[span]));

    let (status, _, body) = request(addr, "GET", "/traces/0af7651916cd43dd8448eb211c80319c").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(body.starts_with("trace 0af7651916cd43dd8448eb211c80319c is not among the 1 recent traces this agent keeps, the oldest from "), "{body}");
    let (status, _, body) = request(addr, "GET", "/traces/nope").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 400 Bad Request", "\"nope\" is not a trace id (32 hex digits, not all zero)\n")
    );
    let (_, _, body) = request(addr, "GET", "/metrics").await;
    assert!(sample(&body, "waggle_recent_traces_bytes").is_some_and(|b| b > 0), "{body}");

    // The peer check itself: what a pod-network client would get.
    let far: SocketAddr = "10.1.2.3:40000".parse().unwrap();
    let resp = look_up_trace(&id, far, Some(&recent));
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
    assert_eq!(look_up_trace(&id, mapped, Some(&recent)).status(), StatusCode::OK);
    assert_eq!(look_up_trace(&id, mapped, None).status(), StatusCode::NOT_FOUND);
    drop(stop_tx);
    server.join().await;
}

/// The value on the sample line of `name` (exactly one such line).
fn sample(body: &str, name: &str) -> Option<u64> {
    let prefix = format!("{name} ");
    let lines: Vec<&str> = body.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert!(lines.len() <= 1, "{name} appears {} times:\n{body}", lines.len());
    lines.first().map(|l| l[prefix.len()..].parse().unwrap())
}

#[tokio::test]
async fn metrics_server_scrape_reports_counters_kernel_counters_and_gauges() {
    let metrics = Arc::new(Metrics::default());
    Metrics::add(&metrics.parse_failures, 3);
    Metrics::inc(&metrics.spans_dropped_queue_full);
    metrics.kernel_events_lost.store(7, Ordering::Relaxed);
    let kernel = KernelCounterCell::new();
    let (server, stop) = start(metrics.clone(), kernel.clone()).await;

    // Before the pipeline published anything: no kernel counters, no gauges.
    let (status, headers, body) = request(server.local_addr(), "GET", "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains(&format!("content-type: {CONTENT_TYPE_OPENMETRICS}")), "{headers}");
    assert_eq!(sample(&body, "waggle_parse_failures_total"), Some(3));
    assert_eq!(sample(&body, "waggle_spans_dropped_queue_full_total"), Some(1));
    assert_eq!(sample(&body, "waggle_spans_exported_total"), Some(0));
    assert!(body.contains("# HELP waggle_parse_failures payloads a protocol parser could not follow"), "{body}");
    assert!(body.contains("# TYPE waggle_parse_failures counter\n"), "{body}");
    assert_eq!(sample(&body, "waggle_propagation_injected_total"), None);
    assert_eq!(sample(&body, "waggle_connections_tracked"), None);
    assert!(body.ends_with("# EOF\n"), "{body}");

    // Scrapes read live values.
    Metrics::add(&metrics.parse_failures, 2);
    kernel.store(&[(Counter::Injected, 11), (Counter::SkipPushFailed, 4), (Counter::EventsLost, 7)]);
    kernel.set_gauge(Gauge::ConnectionsTracked, 42);
    kernel.set_gauge(Gauge::ExportQueueSpans, 0);
    let (_, _, body) = request(server.local_addr(), "GET", "/metrics").await;
    assert_eq!(sample(&body, "waggle_parse_failures_total"), Some(5));
    assert_eq!(sample(&body, "waggle_propagation_injected_total"), Some(11));
    assert_eq!(sample(&body, "waggle_propagation_skipped_push_failed_total"), Some(4));
    assert_eq!(sample(&body, "waggle_kernel_map_insert_failed_total"), Some(0));
    assert!(body.contains("# HELP waggle_propagation_injected traceparent headers inserted"), "{body}");
    // Mirrored in Metrics and in the kernel: one family only (sample() asserts it).
    assert_eq!(sample(&body, "waggle_kernel_events_lost_total"), Some(7));
    assert_eq!(body.matches("# TYPE waggle_kernel_events_lost ").count(), 1, "{body}");
    assert_eq!(sample(&body, "waggle_connections_tracked"), Some(42));
    assert_eq!(sample(&body, "waggle_export_queue_spans"), Some(0));
    assert!(body.contains("# TYPE waggle_connections_tracked gauge\n"), "{body}");

    // A failed kernel read (empty) keeps the last values.
    kernel.store(&[]);
    let (_, _, body) = request(server.local_addr(), "GET", "/metrics").await;
    assert_eq!(sample(&body, "waggle_propagation_injected_total"), Some(11));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server.join()).await.unwrap();
}

#[tokio::test]
async fn metrics_server_other_paths_are_404_and_other_methods_405() {
    let (server, _stop) = start(Arc::new(Metrics::default()), KernelCounterCell::new()).await;
    let (status, _, body) = request(server.local_addr(), "GET", "/").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(!body.contains("waggle_"), "{body}");
    let (status, _, _) = request(server.local_addr(), "GET", "/metrics/extra").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, headers, _) = request(server.local_addr(), "POST", "/metrics").await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(headers.contains("allow: get, head"), "{headers}");
    // Query strings are ignored, as Prometheus may add some.
    let (status, _, body) = request(server.local_addr(), "GET", "/metrics?x=1").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("waggle_events_received_total 0"), "{body}");
}

#[tokio::test]
async fn health_endpoints_answer_200_or_503_with_the_reason() {
    let health = Health::new();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = serve_with(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Metrics::default()),
        KernelCounterCell::new(),
        None,
        None,
        health.clone(),
        async move {
            let _ = stop_rx.await;
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    // Loading: alive, not ready.
    let (status, headers, body) = request(addr, "GET", HEALTHZ_PATH).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("content-type: text/plain"), "{headers}");
    assert!(body.starts_with("starting: loading probes for "), "{body}");
    let (status, _, body) = request(addr, "GET", READYZ_PATH).await;
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 503 Service Unavailable", "probes not attached yet\n"));

    let now = crate::clock::Clock::now_monotonic_ns();
    health.attached(now);
    health.drained(5, now);
    let (status, _, body) = request(addr, "GET", READYZ_PATH).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.starts_with("probes attached, ring buffer drained ") && body.ends_with("(5 records drained)\n"),
        "{body}"
    );
    // The kubelet may send HEAD; a query string changes nothing.
    let (status, _, _) = request(addr, "HEAD", "/healthz?verbose").await;
    assert_eq!(status, "HTTP/1.1 200 OK");

    // A drain that stopped long ago (as a wedged loop would leave it).
    let long_ago = now.saturating_sub(crate::health::DRAIN_STALL.as_nanos() as u64 * 2);
    health.drained(0, long_ago);
    let (status, _, body) = request(addr, "GET", READYZ_PATH).await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(body.starts_with("draining stalled: the ring buffer was last drained "), "{body}");
    let (status, _, _) = request(addr, "POST", READYZ_PATH).await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    drop(stop_tx);
    server.join().await;
}

#[tokio::test]
async fn metrics_server_bind_failure_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err =
        serve(addr, Arc::new(Metrics::default()), KernelCounterCell::new(), std::future::pending()).await.unwrap_err();
    assert!(matches!(err, MetricsServerError::Bind { addr: a, .. } if a == addr), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("binding the metrics endpoint to {addr}: ")), "{msg}");
    assert!(msg.to_lowercase().contains("in use"), "{msg}");
}

#[tokio::test]
async fn metrics_server_stops_on_shutdown() {
    let (server, stop) = start(Arc::new(Metrics::default()), KernelCounterCell::new()).await;
    let addr = server.local_addr();
    // An idle connection that never sends a request must not keep it alive.
    let _idle = TcpStream::connect(addr).await.unwrap();
    drop(stop); // dropping the sender resolves the shutdown future too
    tokio::time::timeout(Duration::from_secs(5), server.join()).await.unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
}

/// The pipeline's runtime is single-threaded: the endpoint must answer
/// while that thread is busy or stuck, as the probes rely on.
#[test]
fn the_endpoint_answers_while_the_callers_runtime_thread_is_blocked() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (server, stop) = runtime.block_on(start(Arc::new(Metrics::default()), KernelCounterCell::new()));
    let addr = server.local_addr();
    let client = std::thread::spawn(move || {
        let answer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(request(addr, "GET", "/healthz"));
        answer.0
    });
    // This thread, the caller's only runtime thread, does nothing until
    // the client has its answer.
    let status = client.join().unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    drop(stop);
    runtime.block_on(server.join());
}

#[tokio::test]
async fn metrics_server_refuses_connections_beyond_the_limit() {
    let (server, _stop) = start(Arc::new(Metrics::default()), KernelCounterCell::new()).await;
    let addr = server.local_addr();
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // Let the accept loop take all of them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the connection over the limit is closed without a response");
    drop(idle);
    // Slots free up once the idle connections go away.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, _) = request(addr, "GET", "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
}
