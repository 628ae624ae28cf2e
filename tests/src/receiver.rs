//! A real OTLP traces and metrics receiver: gRPC (tonic `TraceServiceServer`
//! and `MetricsServiceServer`) and http/protobuf (`POST /v1/traces`,
//! `POST /v1/metrics`, optionally gzip) on ephemeral 127.0.0.1 ports, served
//! from a private tokio runtime that dies with the receiver.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Read,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{header, HeaderMap, StatusCode as HttpStatus, Uri},
    response::IntoResponse,
};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        metrics_service_server::{MetricsService, MetricsServiceServer},
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    },
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::{any_value, AnyValue, KeyValue},
    metrics::v1::ResourceMetrics,
    trace::v1::{span, status, ResourceSpans},
};
use prost::Message;
use tokio::sync::oneshot;

/// OTLP bodies from the agent are small, but a 64 MiB cap keeps a broken
/// exporter from making the receiver allocate without bound.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// An attribute value, flattened: strings and ints are what the tests check;
/// everything else is kept as its debug text.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrVal {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    Other(String),
}

impl AttrVal {
    fn from_any(v: &AnyValue) -> AttrVal {
        match &v.value {
            Some(any_value::Value::StringValue(s)) => AttrVal::Str(s.clone()),
            Some(any_value::Value::IntValue(i)) => AttrVal::Int(*i),
            Some(any_value::Value::BoolValue(b)) => AttrVal::Bool(*b),
            Some(any_value::Value::DoubleValue(d)) => AttrVal::Double(*d),
            Some(other) => AttrVal::Other(format!("{other:?}")),
            None => AttrVal::Other(String::new()),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrVal::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            AttrVal::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl std::fmt::Display for AttrVal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttrVal::Str(s) => write!(f, "{s:?}"),
            AttrVal::Int(i) => write!(f, "{i}"),
            AttrVal::Bool(b) => write!(f, "{b}"),
            AttrVal::Double(d) => write!(f, "{d}"),
            AttrVal::Other(o) => write!(f, "<{o}>"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl Kind {
    fn from_proto(k: i32) -> Kind {
        match span::SpanKind::try_from(k) {
            Ok(span::SpanKind::Internal) => Kind::Internal,
            Ok(span::SpanKind::Server) => Kind::Server,
            Ok(span::SpanKind::Client) => Kind::Client,
            Ok(span::SpanKind::Producer) => Kind::Producer,
            Ok(span::SpanKind::Consumer) => Kind::Consumer,
            _ => Kind::Unspecified,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCode {
    Unset,
    Ok,
    Error,
}

/// One exported span with its resource, flattened for assertions.
#[derive(Clone, Debug)]
pub struct Span {
    pub service_name: String,
    pub resource: BTreeMap<String, AttrVal>,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: Kind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub status_code: StatusCode,
    pub status_message: String,
    pub attributes: BTreeMap<String, AttrVal>,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&AttrVal> {
        self.attributes.get(key)
    }
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(AttrVal::as_str)
    }
    pub fn attr_int(&self, key: &str) -> Option<i64> {
        self.attr(key).and_then(AttrVal::as_int)
    }
    pub fn resource_str(&self, key: &str) -> Option<&str> {
        self.resource.get(key).and_then(AttrVal::as_str)
    }
    pub fn resource_int(&self, key: &str) -> Option<i64> {
        self.resource.get(key).and_then(AttrVal::as_int)
    }
    /// `process.pid` of the span's resource.
    pub fn pid(&self) -> Option<u32> {
        self.resource_int("process.pid").and_then(|p| u32::try_from(p).ok())
    }
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_ns.saturating_sub(self.start_ns))
    }
    pub fn is_server(&self) -> bool {
        self.kind == Kind::Server
    }
    pub fn is_client(&self) -> bool {
        self.kind == Kind::Client
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{} pid={:?}] {:?} {:?} {:.1}ms status={:?}{} trace={} span={} parent={} {{",
            self.service_name,
            self.pid(),
            self.kind,
            self.name,
            self.duration().as_secs_f64() * 1000.0,
            self.status_code,
            if self.status_message.is_empty() { String::new() } else { format!("({})", self.status_message) },
            self.trace_id,
            self.span_id,
            if self.parent_span_id.is_empty() { "-" } else { &self.parent_span_id },
        )?;
        for (i, (k, v)) in self.attributes.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { "" } else { ", " })?;
        }
        write!(f, "}}")
    }
}

/// Spans [`describe`] renders at most: the agent sees the whole machine, and
/// a failure message with thousands of other processes' spans helps nobody.
pub const DESCRIBE_MAX: usize = 60;

/// Renders spans one per line (at most [`DESCRIBE_MAX`]), for failure
/// messages.
pub fn describe(spans: &[Span]) -> String {
    if spans.is_empty() {
        return "  (no spans)".to_owned();
    }
    let mut out = String::new();
    for s in spans.iter().take(DESCRIBE_MAX) {
        let _ = writeln!(out, "  {s}");
    }
    if spans.len() > DESCRIBE_MAX {
        let _ = writeln!(out, "  ... and {} more", spans.len() - DESCRIBE_MAX);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, AttrVal> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), kv.value.as_ref().map(AttrVal::from_any).unwrap_or(AttrVal::Other(String::new()))))
        .collect()
}

/// Flattens resource spans into [`Span`]s, in export order.
pub fn flatten(resource_spans: &[ResourceSpans]) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in resource_spans {
        let resource = rs.resource.as_ref().map(|r| attrs(&r.attributes)).unwrap_or_default();
        let service_name = resource.get("service.name").and_then(AttrVal::as_str).unwrap_or("").to_owned();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                let (status_code, status_message) = match &s.status {
                    Some(st) => (
                        match status::StatusCode::try_from(st.code) {
                            Ok(status::StatusCode::Ok) => StatusCode::Ok,
                            Ok(status::StatusCode::Error) => StatusCode::Error,
                            _ => StatusCode::Unset,
                        },
                        st.message.clone(),
                    ),
                    None => (StatusCode::Unset, String::new()),
                };
                out.push(Span {
                    service_name: service_name.clone(),
                    resource: resource.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name.clone(),
                    kind: Kind::from_proto(s.kind),
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                    status_code,
                    status_message,
                    attributes: attrs(&s.attributes),
                });
            }
        }
    }
    out
}

/// What the receiver has seen, shared with its request handlers.
#[derive(Default)]
struct Store {
    resource_spans: Vec<ResourceSpans>,
    /// Every metrics export, in arrival order.
    metric_exports: Vec<Vec<ResourceMetrics>>,
    grpc_requests: usize,
    http_requests: usize,
    /// Paths http/protobuf exports were POSTed to.
    http_paths: Vec<String>,
    /// Requests that could not be decoded, with the reason.
    rejected: Vec<String>,
    /// How long the http/protobuf side takes before it takes a request in
    /// and answers (a slow collector).
    answer_delay: Duration,
}

type Shared = Arc<Mutex<Store>>;

fn lock(store: &Shared) -> MutexGuard<'_, Store> {
    // A handler that panicked mid-push leaves a usable Vec behind; the
    // receiver must keep serving rather than cascade the poison.
    store.lock().unwrap_or_else(|e| e.into_inner())
}

struct GrpcService {
    store: Shared,
}

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut store = lock(&self.store);
        store.grpc_requests += 1;
        store.resource_spans.extend(req.resource_spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut store = lock(&self.store);
        store.grpc_requests += 1;
        store.metric_exports.push(req.resource_metrics);
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

fn decode_http_body<M: Message + Default>(headers: &HeaderMap, body: &[u8]) -> Result<M, String> {
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("");
    let decoded;
    let bytes = match encoding {
        "" | "identity" => body,
        "gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(MAX_BODY_BYTES as u64)
                .read_to_end(&mut out)
                .map_err(|e| format!("gunzip: {e}"))?;
            decoded = out;
            &decoded
        }
        other => return Err(format!("unsupported content-encoding {other:?}")),
    };
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ctype != "application/x-protobuf" {
        return Err(format!("content-type {ctype:?}, want application/x-protobuf"));
    }
    M::decode(bytes).map_err(|e| format!("protobuf decode: {e}"))
}

/// Any POST path is accepted (and recorded): whether the agent treats its
/// endpoint flag as a base URL or the full traces URL is checked by tests
/// through [`OtlpReceiver::http_paths`], not by refusing the data.
async fn http_export(State(store): State<Shared>, uri: Uri, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let path = uri.path().to_owned();
    let delay = lock(&store).answer_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if path == "/v1/metrics" {
        return match decode_http_body::<ExportMetricsServiceRequest>(&headers, &body) {
            Ok(req) => {
                let mut store = lock(&store);
                store.http_requests += 1;
                store.http_paths.push(path);
                store.metric_exports.push(req.resource_metrics);
                let resp = ExportMetricsServiceResponse { partial_success: None }.encode_to_vec();
                (HttpStatus::OK, [(header::CONTENT_TYPE, "application/x-protobuf")], resp)
            }
            Err(reason) => {
                lock(&store).rejected.push(format!("POST {path}: {reason}"));
                (HttpStatus::BAD_REQUEST, [(header::CONTENT_TYPE, "text/plain")], reason.into_bytes())
            }
        };
    }
    match decode_http_body::<ExportTraceServiceRequest>(&headers, &body) {
        Ok(req) => {
            let mut store = lock(&store);
            store.http_requests += 1;
            store.http_paths.push(path);
            store.resource_spans.extend(req.resource_spans);
            let resp = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
            (HttpStatus::OK, [(header::CONTENT_TYPE, "application/x-protobuf")], resp)
        }
        Err(reason) => {
            lock(&store).rejected.push(format!("POST {path}: {reason}"));
            (HttpStatus::BAD_REQUEST, [(header::CONTENT_TYPE, "text/plain")], reason.into_bytes())
        }
    }
}

/// OTLP traces receiver on two ephemeral ports (grpc and http/protobuf).
/// Stops serving when dropped.
pub struct OtlpReceiver {
    store: Shared,
    /// Pids whose spans failure messages list first (see [`Self::focus`]).
    focus: Mutex<Vec<u32>>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// OTLP transport the agent is told to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// Value of `--otlp-protocol` / `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

impl OtlpReceiver {
    #[track_caller]
    pub fn start() -> OtlpReceiver {
        Self::start_with(false, 0, Duration::ZERO)
    }

    /// A receiver whose http/protobuf side listens on `http_port` (a
    /// collector coming back where the agent was told it is).
    #[track_caller]
    pub fn start_on(http_port: u16) -> OtlpReceiver {
        Self::start_with(false, http_port, Duration::ZERO)
    }

    /// A receiver whose http/protobuf side accepts each request but takes
    /// it in and answers only after `delay` (an overloaded collector).
    #[track_caller]
    pub fn start_slow(delay: Duration) -> OtlpReceiver {
        Self::start_with(false, 0, delay)
    }

    /// A receiver whose http/protobuf side answers `Connection: close`, so
    /// every export arrives on a new connection that is gone by the time
    /// the agent processes its open (as with many collectors and proxies).
    #[track_caller]
    pub fn start_closing() -> OtlpReceiver {
        Self::start_with(true, 0, Duration::ZERO)
    }

    /// `http_port` 0: any free port.
    #[track_caller]
    fn start_with(close_each_connection: bool, http_port: u16, answer_delay: Duration) -> OtlpReceiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-receiver")
            .enable_all()
            .build()
            .expect("building the OTLP receiver's tokio runtime");
        let store: Shared = Arc::new(Mutex::new(Store { answer_delay, ..Store::default() }));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();

        // Bound with std and registered under `enter()` rather than inside
        // `block_on`, so a receiver can also be started from async code.
        let bind = |what: &str, port: u16| {
            let l = std::net::TcpListener::bind(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("binding the OTLP {what} listener: {e}"));
            l.set_nonblocking(true).unwrap_or_else(|e| panic!("OTLP {what} listener nonblocking: {e}"));
            l
        };
        let (grpc_std, http_std) = (bind("grpc", 0), bind("http", http_port));
        let grpc_addr = grpc_std.local_addr().expect("grpc listener address");
        let http_addr = http_std.local_addr().expect("http listener address");
        let (grpc_listener, http_listener) = {
            let _ctx = runtime.enter();
            (
                tokio::net::TcpListener::from_std(grpc_std).expect("registering the grpc listener"),
                tokio::net::TcpListener::from_std(http_std).expect("registering the http listener"),
            )
        };

        let grpc_service = TraceServiceServer::new(GrpcService { store: store.clone() })
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_BODY_BYTES);
        let grpc_metrics = MetricsServiceServer::new(GrpcService { store: store.clone() })
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_BODY_BYTES);
        let mut app = axum::Router::new()
            .fallback(axum::routing::post(http_export))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(store.clone());
        if close_each_connection {
            app = app.layer(axum::middleware::map_response(|mut response: axum::response::Response| async move {
                response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
                response
            }));
        }

        runtime.spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener);
            let grpc = tonic::transport::Server::builder()
                .add_service(grpc_service)
                .add_service(grpc_metrics)
                .serve_with_incoming(incoming);
            let http = axum::serve(http_listener, app);
            tokio::select! {
                r = grpc => eprintln!("otlp receiver: grpc server ended: {r:?}"),
                r = http => eprintln!("otlp receiver: http server ended: {r:?}"),
                _ = stop_rx => {}
            }
        });

        OtlpReceiver {
            store,
            focus: Mutex::default(),
            grpc_addr,
            http_addr,
            stop: Some(stop_tx),
            runtime: Some(runtime),
        }
    }

    /// Endpoint for the gRPC transport, e.g. `http://127.0.0.1:4317`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Base endpoint for http/protobuf, e.g. `http://127.0.0.1:4318`.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Full traces URL for http/protobuf (`.../v1/traces`).
    pub fn http_traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.http_addr)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Endpoint to hand the agent for `protocol`.
    pub fn endpoint(&self, protocol: Protocol) -> String {
        match protocol {
            Protocol::Grpc => self.grpc_endpoint(),
            Protocol::HttpProtobuf => self.http_endpoint(),
        }
    }

    /// Agent flags that point its exporter at this receiver.
    pub fn agent_args(&self, protocol: Protocol) -> Vec<String> {
        vec![
            "--otlp-endpoint".to_owned(),
            self.endpoint(protocol),
            "--otlp-protocol".to_owned(),
            protocol.as_str().to_owned(),
        ]
    }

    /// Every span received so far, flattened, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        flatten(&lock(&self.store).resource_spans)
    }

    /// The raw resource spans received so far.
    pub fn resource_spans(&self) -> Vec<ResourceSpans> {
        lock(&self.store).resource_spans.clone()
    }

    /// Debug text of everything received: for "this string never appears
    /// anywhere" checks that must cover every field, not just attributes.
    pub fn raw_dump(&self) -> String {
        format!("{:?}", lock(&self.store).resource_spans)
    }

    /// Every metrics export received so far (each a list of resource
    /// metrics), in arrival order.
    pub fn metric_exports(&self) -> Vec<Vec<ResourceMetrics>> {
        lock(&self.store).metric_exports.clone()
    }

    pub fn grpc_requests(&self) -> usize {
        lock(&self.store).grpc_requests
    }

    pub fn http_requests(&self) -> usize {
        lock(&self.store).http_requests
    }

    pub fn http_paths(&self) -> Vec<String> {
        lock(&self.store).http_paths.clone()
    }

    /// Export requests that failed to decode; tests assert this is empty.
    pub fn rejected(&self) -> Vec<String> {
        lock(&self.store).rejected.clone()
    }

    /// Polls (every 50 ms) until `predicate` holds for the spans received so
    /// far; returns them either way, with whether it held.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut predicate: impl FnMut(&[Span]) -> bool,
    ) -> Result<Vec<Span>, Vec<Span>> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if predicate(&spans) {
                return Ok(spans);
            }
            if Instant::now() >= deadline {
                return Err(spans);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Makes failure messages of [`expect_spans`](Self::expect_spans) list
    /// the spans of these processes (the ones the test started) rather than
    /// whatever else the machine was doing.
    pub fn focus(&self, pids: &[u32]) {
        *self.focus.lock().unwrap_or_else(|e| e.into_inner()) = pids.to_vec();
    }

    /// Like [`wait_for`](Self::wait_for) but panics with `what` and the spans
    /// received (those of the [`focus`](Self::focus) pids, when set) when the
    /// timeout passes.
    #[track_caller]
    pub fn expect_spans(&self, what: &str, timeout: Duration, predicate: impl FnMut(&[Span]) -> bool) -> Vec<Span> {
        match self.wait_for(timeout, predicate) {
            Ok(spans) => spans,
            Err(spans) => {
                let focus = self.focus.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let (label, shown) = if focus.is_empty() {
                    ("all spans".to_owned(), spans.clone())
                } else {
                    let ours: Vec<Span> =
                        spans.iter().filter(|s| s.pid().is_some_and(|p| focus.contains(&p))).cloned().collect();
                    (format!("spans of pids {focus:?}"), ours)
                };
                panic!(
                    "timed out after {timeout:?} waiting for {what}; received {} spans in {} grpc + {} http exports \
                     (rejected: {:?}); {label}:\n{}",
                    spans.len(),
                    self.grpc_requests(),
                    self.http_requests(),
                    self.rejected(),
                    describe(&shown)
                )
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.runtime.take() {
            // Not shutdown_timeout: that blocks, which panics when the
            // receiver is dropped inside async code.
            rt.shutdown_background();
        }
    }
}
