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
                match bind(addr).await {
                    Ok((listener, local_addr)) => {
                        if bound_tx.send(Ok(local_addr)).is_ok() {
                            accept_loop(listener, served, shutdown).await;
                        }
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                    }
                }
            });
            let _ = stopped_tx.send(());
        })
        .map_err(MetricsServerError::Thread)?;
    let bound = bound_rx.await.unwrap_or_else(|_| {
        // The thread ended without a word: it panicked.
        Err(MetricsServerError::Thread(std::io::Error::other("the metrics thread ended at start-up")))
    });
    let local_addr = match bound {
        Ok(a) => a,
        Err(e) => {
            let _ = thread.join();
            return Err(e);
        }
    };
    tracing::info!(addr = %local_addr, path = METRICS_PATH, traces = has_recent, "serving agent metrics");
    Ok(MetricsServer { local_addr, stopped, thread })
}

/// The listener on `addr`, and the address it got (port 0 picks one).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), MetricsServerError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| MetricsServerError::Bind { addr, source })?;
    let local_addr = listener.local_addr().map_err(MetricsServerError::LocalAddr)?;
    Ok((listener, local_addr))
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
mod tests;
