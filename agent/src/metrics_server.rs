//! Prometheus/OpenMetrics endpoint for the agent's self-metrics, and the
//! look-up of recent traces behind `waggle trace <id>`.
//!
//! `GET /metrics` renders, at scrape time, every [`Metrics`] counter, the
//! kernel's per-CPU counters (as last published by the pipeline through a
//! [`KernelCounterCell`]) and a few gauges. Values are read when scraped, so
//! the hot path never does more than its existing relaxed atomic adds.
//!
//! `GET /healthz` and `GET /readyz` answer liveness and readiness probes
//! from [`Health`] (200 or 503, with the reason as text).
//!
//! `GET /traces/<trace-id>` answers loopback clients only: span names and
//! paths are application data, while /metrics is often exposed to a
//! cluster-wide Prometheus.
//!
//! The server is a bare hyper HTTP/1 server rather than a framework so that
//! what a (possibly hostile) client can hold is bounded: at most
//! [`MAX_CONNECTIONS`] connections, one request each, each with a deadline.
use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{text, DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinSet};
use waggle_common::{Counter, COUNTER_COUNT};

use crate::{
    export::waterfall::{encode_trace, parse_trace_id, SharedRecentTraces},
    health::{Health, Verdict},
    metrics::Metrics,
};

/// Scrapers open one connection at a time; more than this many at once is a
/// misconfiguration or abuse, and is refused rather than queued.
pub const MAX_CONNECTIONS: usize = 16;
/// A whole connection (headers in, body out) must finish within this.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// hyper's smallest allowed read buffer; a scrape request is a few hundred bytes.
const MAX_REQUEST_BUF: usize = 8192;
const METRIC_PREFIX: &str = "waggle";
const METRICS_PATH: &str = "/metrics";
const TRACES_PATH: &str = "/traces/";
/// Liveness and readiness, as a Kubernetes probe asks for them.
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";
/// The exposition `text::encode` produces (it ends with `# EOF`).
pub const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsServerError {
    #[error("binding the metrics endpoint to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the metrics endpoint's bound address: {0}")]
    LocalAddr(#[source] std::io::Error),
    #[error("starting the metrics endpoint's thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("starting the metrics endpoint's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Point-in-time values the pipeline publishes; exposed as gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    /// Connections in the userspace connection table (`ConnTracker::len`).
    ConnectionsTracked,
    /// Spans waiting in the export queue (`ExportHandle::queued`).
    ExportQueueSpans,
    /// Bytes the connections' buffers hold (`ConnTracker::buffered_bytes`).
    BufferedBytes,
    /// Processes the trace-selection rules keep traced / leave out, and
    /// exec'ed processes waiting for a decision.
    ProcessesTraced,
    ProcessesUntraced,
    SelectionPending,
    /// Pods the Kubernetes metadata store holds (`k8s::PodStore::pods_known`).
    KubePodsKnown,
}

impl Gauge {
    pub const ALL: [Gauge; 7] = [
        Gauge::ConnectionsTracked,
        Gauge::ExportQueueSpans,
        Gauge::BufferedBytes,
        Gauge::ProcessesTraced,
        Gauge::ProcessesUntraced,
        Gauge::SelectionPending,
        Gauge::KubePodsKnown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Gauge::ConnectionsTracked => "connections_tracked",
            Gauge::ExportQueueSpans => "export_queue_spans",
            Gauge::BufferedBytes => "buffered_bytes",
            Gauge::ProcessesTraced => "processes_traced",
            Gauge::ProcessesUntraced => "processes_untraced",
            Gauge::SelectionPending => "selection_decisions_pending",
            Gauge::KubePodsKnown => "kube_pods_known",
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            Gauge::ConnectionsTracked => "connections currently tracked by the agent",
            Gauge::ExportQueueSpans => "spans waiting in the export queue",
            Gauge::ProcessesTraced => "processes the trace-selection rules keep traced (set when rules are on)",
            Gauge::ProcessesUntraced => "processes the trace-selection rules leave out (set when rules are on)",
            Gauge::SelectionPending => "exec'ed processes waiting for their trace-selection decision",
            Gauge::KubePodsKnown => {
                "pods of this node the Kubernetes metadata store knows (unset without Kubernetes metadata)"
            }
            Gauge::BufferedBytes => {
                "bytes the connections' buffers hold (partial messages, statement caches), capped by --max-buffer-bytes"
            }
        }
    }
}

/// Sentinel for a gauge nobody has set: it is left out of the scrape rather
/// than reported as a misleading 0.
const GAUGE_UNSET: u64 = u64::MAX;

#[derive(Debug)]
struct Shared {
    kernel: [AtomicU64; COUNTER_COUNT as usize],
    /// Kernel counters are only reported once the pipeline has read them, so a
    /// scrape before the first read (or without probes) shows no false zeros.
    kernel_published: AtomicBool,
    gauges: [AtomicU64; Gauge::ALL.len()],
}

/// Latest kernel counters and gauges, written by the pipeline's tick and read
/// by scrapes. Cloning shares the same cell. Lock-free: a scrape never stalls
/// the pipeline.
#[derive(Debug, Clone)]
pub struct KernelCounterCell(Arc<Shared>);

impl Default for KernelCounterCell {
    fn default() -> Self {
        KernelCounterCell::new()
    }
}

impl KernelCounterCell {
    pub fn new() -> Self {
        KernelCounterCell(Arc::new(Shared {
            kernel: std::array::from_fn(|_| AtomicU64::new(0)),
            kernel_published: AtomicBool::new(false),
            gauges: std::array::from_fn(|_| AtomicU64::new(GAUGE_UNSET)),
        }))
    }

    /// Publishes the output of `Probes::kernel_counters()`. An empty slice (a
    /// failed read) keeps the previous values, so counters never go back.
    pub fn store(&self, counters: &[(Counter, u64)]) {
        if counters.is_empty() {
            return;
        }
        for &(counter, value) in counters {
            if let Some(slot) = self.0.kernel.get(counter as usize) {
                slot.store(value, Ordering::Relaxed);
            }
        }
        self.0.kernel_published.store(true, Ordering::Release);
    }

    pub fn set_gauge(&self, gauge: Gauge, value: u64) {
        // u64::MAX is the "unset" marker; no real gauge here gets near it.
        self.0.gauges[gauge as usize].store(value.min(GAUGE_UNSET - 1), Ordering::Relaxed);
    }

    fn kernel_counters(&self) -> Option<Vec<(Counter, u64)>> {
        if !self.0.kernel_published.load(Ordering::Acquire) {
            return None;
        }
        Some(Counter::ALL.iter().map(|&c| (c, self.0.kernel[c as usize].load(Ordering::Relaxed))).collect())
    }

    fn gauge(&self, gauge: Gauge) -> Option<u64> {
        match self.0.gauges[gauge as usize].load(Ordering::Relaxed) {
            GAUGE_UNSET => None,
            v => Some(v),
        }
    }
}

/// Reads every source at scrape time.
#[derive(Debug)]
struct AgentCollector {
    metrics: Arc<Metrics>,
    kernel: KernelCounterCell,
    recent: Option<SharedRecentTraces>,
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let agent = self.metrics.snapshot();
        for &(name, help, value) in &agent {
            encode_counter(&mut encoder, name, help, value)?;
        }
        if let Some(kernel) = self.kernel.kernel_counters() {
            for (counter, value) in kernel {
                let name = counter.name();
                // The pipeline mirrors some kernel counters into Metrics
                // (kernel_events_lost); a family may appear only once.
                if agent.iter().any(|(n, _, _)| *n == name) {
                    continue;
                }
                encode_counter(&mut encoder, name, counter.help(), value)?;
            }
        }
        for gauge in Gauge::ALL {
            if let Some(value) = self.kernel.gauge(gauge) {
                let metric = ConstGauge::new(value);
                let enc = encoder.encode_descriptor(gauge.name(), gauge.help(), None, metric.metric_type())?;
                metric.encode(enc)?;
            }
        }
        if let Some(bytes) = self.recent.as_ref().and_then(|r| r.with(|ring| ring.bytes())) {
            let metric = ConstGauge::new(bytes as u64);
            let help = "bytes the recent traces behind `waggle trace` hold, capped by --recent-traces-bytes";
            let enc = encoder.encode_descriptor("recent_traces_bytes", help, None, metric.metric_type())?;
            metric.encode(enc)?;
        }
        Ok(())
    }
}

/// The text encoder appends `_total` to counter names.
fn encode_counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    let enc = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(enc)
}

/// The agent's own metrics under `waggle_`; `app` (the application
/// metrics from spans) keeps its conventional names, unprefixed.
fn registry(
    metrics: Arc<Metrics>,
    kernel: KernelCounterCell,
    recent: Option<SharedRecentTraces>,
    app: Option<Box<dyn Collector>>,
) -> Registry {
    let mut registry = Registry::default();
    registry.sub_registry_with_prefix(METRIC_PREFIX).register_collector(Box::new(AgentCollector {
        metrics,
        kernel,
        recent,
    }));
    if let Some(app) = app {
        registry.register_collector(app);
    }
    registry
}

/// Renders the whole exposition, as served on `/metrics`.
pub fn render(metrics: Arc<Metrics>, kernel: KernelCounterCell) -> Result<String, std::fmt::Error> {
    render_registry(&registry(metrics, kernel, None, None))
}

/// What a connection's requests are answered from.
struct Served {
    registry: Registry,
    recent: Option<SharedRecentTraces>,
    health: Health,
}

fn render_registry(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::with_capacity(8192);
    text::encode(&mut body, registry)?;
    Ok(body)
}

/// A running metrics endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    /// Resolves (or is dropped) when the server's thread has stopped.
    stopped: oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl MetricsServer {
    /// The bound address (differs from the requested one for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until the server has stopped (after `shutdown` resolved).
    pub async fn join(self) {
        // Either value means the thread's runtime is gone: a drop is a panic.
        let _ = self.stopped.await;
        if self.thread.join().is_err() {
            tracing::warn!("metrics endpoint thread panicked");
        }
    }
}

/// Binds `addr` (failing if it cannot), then serves `GET /metrics` (and
/// `GET /traces/<id>` from `recent`) until `shutdown` resolves; in-flight
/// requests are cut off then.
///
/// The server runs on a thread of its own with its own small runtime, not
/// on the caller's: the pipeline owns its thread (the ring buffer's
/// readiness and the drain timer wake the thread that drains, with no
/// hand-off between threads), and the probes must still be answered (with
/// 503 from readiness) while that thread is stuck.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    kernel: KernelCounterCell,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<MetricsServer, MetricsServerError> {
    serve_with(addr, metrics, kernel, None, None, Health::new(), shutdown).await
}

/// [`serve`], with `app`'s metrics (the application metrics from spans)
/// on the same page, `GET /traces/<id>` answered from `recent` and the
/// probes from `health`.
pub async fn serve_with(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    kernel: KernelCounterCell,
    app: Option<Box<dyn Collector>>,
    recent: Option<SharedRecentTraces>,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<MetricsServer, MetricsServerError> {
    let has_recent = recent.is_some();
    let served = Arc::new(Served { registry: registry(metrics, kernel, recent.clone(), app), recent, health });
    let (bound_tx, bound_rx) = oneshot::channel();
    let (stopped_tx, stopped) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("waggle-metrics".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = bound_tx.send(Err(MetricsServerError::Runtime(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(source) => {
                        let _ = bound_tx.send(Err(MetricsServerError::Bind { addr, source }));
                        return;
                    }
                };
                let local_addr = match listener.local_addr() {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = bound_tx.send(Err(MetricsServerError::LocalAddr(e)));
                        return;
                    }
                };
                if bound_tx.send(Ok(local_addr)).is_err() {
                    return;
                }
                accept_loop(listener, served, shutdown).await;
            });
            let _ = stopped_tx.send(());
        })
        .map_err(MetricsServerError::Thread)?;
    let served_addr = match bound_rx.await {
        Ok(result) => result,
        // The thread ended without a word: it panicked.
        Err(_) => Err(MetricsServerError::Thread(std::io::Error::other("the metrics thread ended at start-up"))),
    };
    let local_addr = match served_addr {
        Ok(a) => a,
        Err(e) => {
            let _ = thread.join();
            return Err(e);
        }
    };
    tracing::info!(addr = %local_addr, path = METRICS_PATH, traces = has_recent, "serving agent metrics");
    Ok(MetricsServer { local_addr, stopped, thread })
}

async fn accept_loop(listener: TcpListener, served: Arc<Served>, shutdown: impl Future<Output = ()> + Send) {
    tokio::pin!(shutdown);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Per-connection failures (EMFILE, aborted handshakes):
                        // back off briefly instead of spinning on them.
                        tracing::debug!(error = %e, "accepting a metrics connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if conns.len() >= MAX_CONNECTIONS {
                    tracing::debug!(%peer, limit = MAX_CONNECTIONS, "refusing metrics connection: too many open");
                    continue;
                }
                conns.spawn(serve_connection(stream, peer, served.clone()));
            }
        }
    }
    conns.shutdown().await;
    tracing::debug!("metrics endpoint stopped");
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, served: Arc<Served>) {
    let service = service_fn(move |req: Request<Incoming>| {
        let served = served.clone();
        async move { Ok::<_, std::convert::Infallible>(respond(&req, peer, &served)) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BUF)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_DEADLINE, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics connection"),
        Err(_) => tracing::debug!(%peer, "metrics connection exceeded its deadline"),
    }
}

fn respond<B>(req: &Request<B>, peer: SocketAddr, served: &Served) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path != METRICS_PATH && path != HEALTHZ_PATH && path != READYZ_PATH && !path.starts_with(TRACES_PATH) {
        return plain(StatusCode::NOT_FOUND, "not found; metrics are at /metrics\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut().insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    if let Some(id) = path.strip_prefix(TRACES_PATH) {
        return look_up_trace(id, peer, served.recent.as_ref());
    }
    if path == HEALTHZ_PATH {
        return probe_answer(served.health.liveness());
    }
    if path == READYZ_PATH {
        return probe_answer(served.health.readiness());
    }
    match render_registry(&served.registry) {
        Ok(body) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS));
            resp
        }
        Err(e) => {
            tracing::warn!(error = %e, "encoding agent metrics");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n")
        }
    }
}

/// One trace from the ring as JSON; a 404 says how far back the ring reaches.
fn look_up_trace(id: &str, peer: SocketAddr, recent: Option<&SharedRecentTraces>) -> Response<Full<Bytes>> {
    if !peer.ip().to_canonical().is_loopback() {
        return plain(StatusCode::FORBIDDEN, "trace look-up answers loopback clients only\n");
    }
    let Some(recent) = recent else {
        return plain(StatusCode::NOT_FOUND, "this agent keeps no recent traces (--recent-traces-bytes is 0)\n");
    };
    let trace_id = match parse_trace_id(id) {
        Ok(trace_id) => trace_id,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let found = recent.with(|ring| match ring.get(&trace_id) {
        Some(spans) => Ok(spans),
        None => Err((ring.len(), ring.oldest_start())),
    });
    match found {
        Some(Ok(spans)) => {
            let mut resp = Response::new(Full::new(Bytes::from(encode_trace(&trace_id, &spans))));
            resp.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
            resp
        }
        Some(Err((kept, oldest))) => {
            let reach = match oldest.and_then(|t| std::time::SystemTime::now().duration_since(t).ok()) {
                Some(age) => format!(", the oldest from {}s ago", age.as_secs()),
                None => String::new(),
            };
            plain(
                StatusCode::NOT_FOUND,
                format!("trace {} is not among the {kept} recent traces this agent keeps{reach}: it is gone, or was never seen here\n", id.trim()),
            )
        }
        None => plain(StatusCode::INTERNAL_SERVER_ERROR, "the recent-traces ring is unusable after a panic\n"),
    }
}

fn probe_answer(verdict: Verdict) -> Response<Full<Bytes>> {
    let status = if verdict.ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    plain(status, format!("{}\n", verdict.detail))
}

fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

#[cfg(test)]
mod tests {
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
        let err = serve(addr, Arc::new(Metrics::default()), KernelCounterCell::new(), std::future::pending())
            .await
            .unwrap_err();
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
}
