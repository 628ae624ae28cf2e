//! OTLP export through opentelemetry-otlp (grpc and http/protobuf).
//!
//! An opentelemetry-otlp exporter carries exactly one resource, but every
//! traced process has its own (service.name, process.pid, ...). So the sink
//! keeps one exporter per distinct resource (a bounded LRU cache), all built
//! on ONE shared transport: a tonic `Channel` for grpc, one reqwest client for
//! http/protobuf. A node with many processes still holds one connection pool.
//!
//! opentelemetry-otlp also reads `OTEL_EXPORTER_OTLP_*` by itself. Endpoint,
//! protocol and timeout are passed explicitly (which wins there); headers it
//! would merge from the environment are overwritten on every request by the
//! interceptor / HTTP client wrapper below, so `--otlp-headers` really beats
//! the environment as documented.
use std::{borrow::Cow, collections::HashMap, fmt, num::NonZeroUsize, str::FromStr, sync::Arc, time::Duration};

use lru::LruCache;
use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind as OtelSpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue, Value,
};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::{
    trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks},
    Resource,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, USER_AGENT};
use tokio::task::JoinSet;
use tonic::{metadata::MetadataMap, service::Interceptor, transport::Channel};

use super::{ExportError, SpanSink};
use crate::{
    config::{OtlpConfig, OtlpProtocol},
    model::{AttrValue, FinishedSpan, ProcessResource, SpanKind, SpanStatus},
};

/// Distinct process resources with a live exporter; the least recently used
/// is dropped beyond this (a short-lived process's exporter is cheap to
/// rebuild: the transport is shared).
pub const MAX_CACHED_RESOURCES: usize = 1024;
/// Export requests (one per resource in a batch) in flight at once.
const MAX_CONCURRENT_REQUESTS: usize = 16;
const USER_AGENT_VALUE: &str = concat!("waggle/", env!("CARGO_PKG_VERSION"));
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Replaces the request metadata with exactly the configured headers.
#[derive(Clone)]
struct FixedMetadata(Arc<MetadataMap>);

impl Interceptor for FixedMetadata {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        *request.metadata_mut() = (*self.0).clone();
        Ok(request)
    }
}

/// The shared reqwest client, sending exactly the configured headers plus
/// the body's own content headers.
struct FixedHeadersClient {
    inner: reqwest::Client,
    headers: HeaderMap,
}

impl fmt::Debug for FixedHeadersClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values are credentials.
        f.debug_struct("FixedHeadersClient").field("headers", &self.headers.keys().collect::<Vec<_>>()).finish()
    }
}

#[async_trait::async_trait]
impl HttpClient for FixedHeadersClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (mut parts, body) = request.into_parts();
        let content_type = parts.headers.remove(CONTENT_TYPE);
        let content_encoding = parts.headers.remove(CONTENT_ENCODING);
        parts.headers = self.headers.clone();
        if let Some(v) = content_type {
            parts.headers.insert(CONTENT_TYPE, v);
        }
        if let Some(v) = content_encoding {
            parts.headers.insert(CONTENT_ENCODING, v);
        }
        self.inner.send_bytes(Request::from_parts(parts, body)).await
    }
}

enum Transport {
    Grpc { channel: Channel, metadata: Arc<MetadataMap> },
    Http { client: Arc<dyn HttpClient> },
}

pub struct OtlpSink {
    transport: Transport,
    endpoint: String,
    timeout: Duration,
    exporters: LruCache<Arc<ProcessResource>, Arc<opentelemetry_otlp::SpanExporter>>,
    scope: InstrumentationScope,
}

fn header_map(config: &OtlpConfig) -> Result<HeaderMap, ExportError> {
    let mut map = HeaderMap::new();
    for (key, value) in &config.headers {
        let bad = |what: &str| ExportError::Transport {
            endpoint: config.endpoint.clone(),
            message: format!("invalid header {what} for {key:?}"),
        };
        let name = HeaderName::from_bytes(key.as_bytes()).map_err(|_| bad("name"))?;
        let value = HeaderValue::from_str(value).map_err(|_| bad("value"))?;
        map.insert(name, value);
    }
    Ok(map)
}

impl OtlpSink {
    /// Builds the shared transport; connections are opened lazily, so a
    /// collector that is down at start-up is not an error.
    pub fn new(config: &OtlpConfig) -> Result<OtlpSink, ExportError> {
        let transport_err = |message: String| ExportError::Transport { endpoint: config.endpoint.clone(), message };
        let headers = header_map(config)?;
        let transport = match config.protocol {
            OtlpProtocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
                    .map_err(|e| transport_err(format!("invalid endpoint: {e}")))?
                    .user_agent(USER_AGENT_VALUE)
                    .map_err(|e| transport_err(format!("user agent: {e}")))?
                    .timeout(config.timeout)
                    .connect_timeout(CONNECT_TIMEOUT.min(config.timeout))
                    .tcp_nodelay(true);
                Transport::Grpc {
                    channel: endpoint.connect_lazy(),
                    metadata: Arc::new(MetadataMap::from_headers(headers)),
                }
            }
            OtlpProtocol::HttpProtobuf => {
                let mut headers = headers;
                headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
                let inner = reqwest::Client::builder()
                    .timeout(config.timeout)
                    .connect_timeout(CONNECT_TIMEOUT.min(config.timeout))
                    .tcp_nodelay(true)
                    .build()
                    .map_err(|e| transport_err(format!("building the HTTP client: {e}")))?;
                Transport::Http { client: Arc::new(FixedHeadersClient { inner, headers }) }
            }
        };
        if config.protocol == OtlpProtocol::HttpProtobuf && config.endpoint.contains(":4317") {
            tracing::warn!(endpoint = %config.endpoint, "port 4317 is the usual OTLP/gRPC port, but the protocol is http/protobuf (set --otlp-protocol grpc)");
        }
        Ok(OtlpSink {
            transport,
            endpoint: config.endpoint.clone(),
            timeout: config.timeout,
            exporters: LruCache::new(NonZeroUsize::new(MAX_CACHED_RESOURCES).unwrap_or(NonZeroUsize::MIN)),
            scope: instrumentation_scope(),
        })
    }

    fn build_exporter(&self, resource: &ProcessResource) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
        let built = match &self.transport {
            Transport::Grpc { channel, metadata } => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_channel(channel.clone())
                .with_interceptor(FixedMetadata(metadata.clone()))
                .with_protocol(Protocol::Grpc)
                .with_timeout(self.timeout)
                .with_retry_policy(RetryPolicy::recommended())
                .build(),
            Transport::Http { client } => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_shared_http_client(client.clone())
                .with_endpoint(self.endpoint.clone())
                .with_protocol(Protocol::HttpBinary)
                .with_timeout(self.timeout)
                .with_retry_policy(RetryPolicy::recommended())
                .build(),
        };
        let mut exporter = built.map_err(|source| ExportError::Build { endpoint: self.endpoint.clone(), source })?;
        exporter.set_resource(&to_resource(resource));
        Ok(exporter)
    }

    fn exporter_for(
        &mut self,
        resource: &Arc<ProcessResource>,
    ) -> Result<Arc<opentelemetry_otlp::SpanExporter>, ExportError> {
        if let Some(exporter) = self.exporters.get(resource) {
            return Ok(exporter.clone());
        }
        let exporter = Arc::new(self.build_exporter(resource)?);
        // At capacity, the least recently used exporter is dropped.
        self.exporters.put(resource.clone(), exporter.clone());
        Ok(exporter)
    }

    /// Distinct resources with a cached exporter (for tests and metrics).
    pub fn cached_resources(&self) -> usize {
        self.exporters.len()
    }
}

pub(crate) fn instrumentation_scope() -> InstrumentationScope {
    InstrumentationScope::builder("waggle").with_version(env!("CARGO_PKG_VERSION")).build()
}

/// The process's resource: its own attributes first, then the identity
/// attributes the agent knows for certain.
pub(crate) fn to_resource(resource: &ProcessResource) -> Resource {
    let mut identity = vec![
        KeyValue::new("service.name", resource.service_name.clone()),
        KeyValue::new("process.pid", i64::from(resource.pid)),
    ];
    if !resource.executable_name.is_empty() {
        identity.push(KeyValue::new("process.executable.name", resource.executable_name.clone()));
    }
    Resource::builder_empty()
        .with_attributes(resource.attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
        .with_attributes(identity)
        .build()
}

fn to_value(value: AttrValue) -> Value {
    match value {
        AttrValue::Str(s) => Value::from(s),
        AttrValue::Int(i) => Value::I64(i),
        AttrValue::Bool(b) => Value::Bool(b),
    }
}

/// FinishedSpan → the SDK's SpanData. A server span's parent came over the
/// wire (remote); a client span's parent is in the same process.
pub(crate) fn to_span_data(span: FinishedSpan, scope: &InstrumentationScope) -> SpanData {
    let flags = if span.sampled { TraceFlags::SAMPLED } else { TraceFlags::NOT_SAMPLED };
    // Parsers validate tracestate; one that still fails to parse is dropped
    // rather than failing the span.
    let trace_state = span.tracestate.as_deref().and_then(|s| TraceState::from_str(s).ok()).unwrap_or_default();
    let parent_span_is_remote = span.parent_span_id.is_some() && span.kind == SpanKind::Server;
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(span.trace_id),
            SpanId::from_bytes(span.span_id),
            flags,
            false,
            trace_state,
        ),
        parent_span_id: span.parent_span_id.map(SpanId::from_bytes).unwrap_or(SpanId::INVALID),
        parent_span_is_remote,
        span_kind: match span.kind {
            SpanKind::Server => OtelSpanKind::Server,
            SpanKind::Client => OtelSpanKind::Client,
        },
        name: Cow::Owned(span.name),
        start_time: span.start,
        end_time: span.end,
        attributes: span.attributes.into_iter().map(|(k, v)| KeyValue::new(k, to_value(v))).collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match span.status {
            SpanStatus::Unset => Status::Unset,
            SpanStatus::Error { description } => Status::Error { description: description.into() },
        },
        instrumentation_scope: scope.clone(),
    }
}

/// Groups a batch by resource value. Spans of one process usually share one
/// Arc, so the pointer is checked first and the value hashed once per Arc.
fn group_by_resource(
    batch: Vec<FinishedSpan>,
    scope: &InstrumentationScope,
) -> Vec<(Arc<ProcessResource>, Vec<SpanData>)> {
    let mut by_ptr: HashMap<*const ProcessResource, usize> = HashMap::new();
    let mut by_value: HashMap<Arc<ProcessResource>, usize> = HashMap::new();
    let mut groups: Vec<(Arc<ProcessResource>, Vec<SpanData>)> = Vec::new();
    for span in batch {
        let ptr = Arc::as_ptr(&span.resource);
        let index = match by_ptr.get(&ptr) {
            Some(&i) => i,
            None => {
                let i = *by_value.entry(span.resource.clone()).or_insert_with(|| {
                    groups.push((span.resource.clone(), Vec::new()));
                    groups.len() - 1
                });
                by_ptr.insert(ptr, i);
                i
            }
        };
        groups[index].1.push(to_span_data(span, scope));
    }
    groups
}

/// What went wrong in one batch: spans lost and the first reason.
#[derive(Default)]
struct Failures {
    spans: usize,
    first: Option<String>,
}

impl Failures {
    fn add(&mut self, spans: usize, message: String) {
        self.spans = self.spans.saturating_add(spans);
        self.first.get_or_insert(message);
    }

    fn record(&mut self, joined: Result<(usize, Result<(), String>), tokio::task::JoinError>) {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((n, Err(message))) => self.add(n, message),
            // A panicked export task: its span count is unknown here, so the
            // whole batch is reported failed (failed_spans caps it).
            Err(e) => self.add(usize::MAX, format!("export task: {e}")),
        }
    }
}

impl SpanSink for OtlpSink {
    async fn export(&mut self, batch: Vec<FinishedSpan>) -> Result<(), ExportError> {
        let groups = group_by_resource(batch, &self.scope);
        // The retry loop inside opentelemetry-otlp is bounded by the timeout,
        // but an attempt started near its end may run one more timeout: this
        // is the hard stop so one stuck request can't wedge the exporter.
        let hard_limit = self.timeout * 2 + Duration::from_secs(1);
        let mut failures = Failures::default();
        let mut in_flight: JoinSet<(usize, Result<(), String>)> = JoinSet::new();
        for (resource, spans) in groups {
            let n = spans.len();
            let exporter = match self.exporter_for(&resource) {
                Ok(exporter) => exporter,
                Err(e) => {
                    failures.add(n, e.to_string());
                    continue;
                }
            };
            if in_flight.len() >= MAX_CONCURRENT_REQUESTS {
                if let Some(joined) = in_flight.join_next().await {
                    failures.record(joined);
                }
            }
            in_flight.spawn(async move {
                let result = match tokio::time::timeout(hard_limit, exporter.export(spans)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {hard_limit:?}")),
                };
                (n, result)
            });
        }
        while let Some(joined) = in_flight.join_next().await {
            failures.record(joined);
        }
        match failures.first {
            None => Ok(()),
            Some(message) => Err(ExportError::Otlp { spans: failures.spans, message }),
        }
    }

    async fn shutdown(&mut self) -> Result<(), ExportError> {
        while let Some((_, exporter)) = self.exporters.pop_lru() {
            // Only fails if already shut down, which is what we want anyway.
            let _ = exporter.shutdown();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        sync::{atomic::Ordering, Mutex},
    };

    use opentelemetry_proto::tonic::{
        collector::trace::v1::{
            trace_service_server::{TraceService, TraceServiceServer},
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        },
        common::v1::{any_value, KeyValue as ProtoKeyValue},
        trace::v1::span::SpanKind as ProtoKind,
    };
    use prost::Message;
    use tokio::{
        io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
        net::TcpListener,
    };

    use super::*;
    use crate::{export::tests::span, metrics::Metrics};

    fn otlp_config(endpoint: String, protocol: OtlpProtocol) -> OtlpConfig {
        OtlpConfig {
            endpoint,
            protocol,
            headers: vec![("authorization".into(), "Bearer t0k3n".into()), ("x-tenant".into(), "blue".into())],
            timeout: Duration::from_secs(5),
        }
    }

    fn other_process() -> Arc<ProcessResource> {
        Arc::new(ProcessResource {
            service_name: "billing".into(),
            pid: 7,
            executable_name: "java".into(),
            attributes: vec![("deployment.environment.name".into(), "prod".into())],
        })
    }

    #[test]
    fn span_data_conversion() {
        let mut s = span("GET /users/{id}");
        s.parent_span_id = Some([9, 8, 7, 6, 5, 4, 3, 2]);
        s.tracestate = Some("vendor=abc".into());
        s.status = SpanStatus::Error { description: "HTTP 503".into() };
        s.attributes.push(("http.request.method", AttrValue::Str("GET".into())));
        s.attributes.push(("tls", AttrValue::Bool(false)));
        let (start, end) = (s.start, s.end);
        let d = to_span_data(s, &instrumentation_scope());
        assert_eq!(format!("{:032x}", d.span_context.trace_id()), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(format!("{:016x}", d.span_context.span_id()), "00f067aa0ba902b7");
        assert_eq!(format!("{:016x}", d.parent_span_id), "0908070605040302");
        assert!(d.parent_span_is_remote, "a server span's parent came over the wire");
        assert!(d.span_context.is_sampled());
        assert_eq!(d.span_context.trace_state().get("vendor"), Some("abc"));
        assert_eq!(d.span_kind, OtelSpanKind::Server);
        assert_eq!(d.name, "GET /users/{id}");
        assert_eq!((d.start_time, d.end_time), (start, end));
        assert_eq!(d.status, Status::Error { description: "HTTP 503".into() });
        assert_eq!(
            d.attributes,
            vec![
                KeyValue::new("http.response.status_code", 200i64),
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("tls", false),
            ]
        );
        assert_eq!(d.instrumentation_scope.name(), "waggle");
        assert_eq!(d.instrumentation_scope.version(), Some(env!("CARGO_PKG_VERSION")));

        let mut c = span("SELECT users");
        c.kind = SpanKind::Client;
        c.sampled = false;
        let d = to_span_data(c, &instrumentation_scope());
        assert_eq!(d.span_kind, OtelSpanKind::Client);
        assert_eq!(d.parent_span_id, SpanId::INVALID);
        assert!(!d.parent_span_is_remote);
        assert!(!d.span_context.is_sampled());
        assert_eq!(d.status, Status::Unset);
    }

    #[test]
    fn resource_has_identity_and_process_attributes() {
        let r = to_resource(&ProcessResource {
            service_name: "python-app".into(),
            pid: 4242,
            executable_name: "python3".into(),
            // A stray service.name in the attributes must not win.
            attributes: vec![("host.name".into(), "node-1".into()), ("service.name".into(), "wrong".into())],
        });
        let get = |k: &'static str| r.get(&opentelemetry::Key::from_static_str(k));
        assert_eq!(get("service.name"), Some(Value::from("python-app")));
        assert_eq!(get("process.pid"), Some(Value::I64(4242)));
        assert_eq!(get("process.executable.name"), Some(Value::from("python3")));
        assert_eq!(get("host.name"), Some(Value::from("node-1")));
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn grouping_merges_equal_resources_from_different_arcs() {
        let a = span("a");
        let mut b = span("b");
        b.resource = Arc::new((*a.resource).clone()); // equal value, other Arc
        let mut c = span("c");
        c.resource = other_process();
        let groups = group_by_resource(vec![a, c, b], &instrumentation_scope());
        assert_eq!(groups.len(), 2);
        let names: Vec<Vec<&str>> =
            groups.iter().map(|(_, spans)| spans.iter().map(|s| s.name.as_ref()).collect()).collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"]]);
        assert_eq!(groups[1].0.service_name, "billing");
    }

    #[test]
    fn lru_cache_is_bounded_and_evicts_least_recently_used() {
        let mut cache: LruCache<u32, u32> = LruCache::new(NonZeroUsize::new(2).unwrap());
        cache.put(1, 10);
        cache.put(2, 20);
        assert_eq!(cache.get(&1).copied(), Some(10)); // 1 is now more recent than 2
        cache.put(3, 30); // evicts 2
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&2).copied(), None);
        assert_eq!((cache.get(&1).copied(), cache.get(&3).copied()), (Some(10), Some(30)));
        cache.put(3, 31); // replacing an entry evicts nothing
        assert_eq!((cache.get(&1).copied(), cache.get(&3).copied()), (Some(10), Some(31)));
    }

    #[test]
    fn debug_of_http_client_hides_header_values() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer s3cr3t"));
        let client = FixedHeadersClient { inner: reqwest::Client::new(), headers };
        let dbg = format!("{client:?}");
        assert!(dbg.contains("authorization") && !dbg.contains("s3cr3t"), "{dbg}");
    }

    /// A port nothing listens on.
    async fn dead_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        addr
    }

    #[tokio::test]
    async fn dead_collector_gives_counted_failures_and_no_panic() {
        for protocol in [OtlpProtocol::HttpProtobuf, OtlpProtocol::Grpc] {
            let addr = dead_port().await;
            let endpoint = match protocol {
                OtlpProtocol::Grpc => format!("http://{addr}"),
                OtlpProtocol::HttpProtobuf => format!("http://{addr}/v1/traces"),
            };
            let mut config = otlp_config(endpoint, protocol);
            config.timeout = Duration::from_millis(500);
            let metrics = Arc::new(Metrics::default());
            let c = crate::Config {
                otlp: Some(config),
                print: None,
                max_export_batch: 3,
                export_interval: Duration::from_millis(10),
                ..crate::Config::default()
            };
            let handle = crate::export::spawn_exporter(&c, metrics.clone()).unwrap();
            let mut other = span("other");
            other.resource = other_process();
            for i in 0..5 {
                handle.send(span(&format!("s{i}")));
            }
            handle.send(other);
            handle.shutdown(Duration::from_secs(20)).await.unwrap();
            assert_eq!(metrics.spans_export_failed.load(Ordering::Relaxed), 6, "{protocol}");
            assert_eq!(metrics.spans_exported.load(Ordering::Relaxed), 0, "{protocol}");
        }
    }

    fn attr<'a>(attrs: &'a [ProtoKeyValue], key: &str) -> Option<&'a any_value::Value> {
        attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
    }

    fn str_attr(attrs: &[ProtoKeyValue], key: &str) -> Option<String> {
        match attr(attrs, key) {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        }
    }

    type Received = Arc<Mutex<Vec<(HashMap<String, String>, ExportTraceServiceRequest)>>>;

    /// Checks what a real receiver got: one request per resource, the right
    /// resource attributes, spans, ids, and exactly the configured headers.
    fn check_received(received: &Received, protocol: OtlpProtocol) {
        let got = received.lock().unwrap();
        assert_eq!(got.len(), 2, "one request per resource ({protocol})");
        let mut services = Vec::new();
        for (headers, request) in got.iter() {
            assert_eq!(headers.get("authorization").map(String::as_str), Some("Bearer t0k3n"), "{headers:?}");
            assert_eq!(headers.get("x-tenant").map(String::as_str), Some("blue"));
            assert!(headers.get("user-agent").is_some_and(|ua| ua.contains("waggle/")), "{headers:?}");
            assert_eq!(request.resource_spans.len(), 1);
            let rs = &request.resource_spans[0];
            let resource = rs.resource.as_ref().unwrap();
            let service = str_attr(&resource.attributes, "service.name").unwrap();
            let scope_spans = &rs.scope_spans[0];
            assert_eq!(scope_spans.scope.as_ref().unwrap().name, "waggle");
            if service == "python-app" {
                assert_eq!(attr(&resource.attributes, "process.pid"), Some(&any_value::Value::IntValue(4242)));
                assert_eq!(str_attr(&resource.attributes, "host.name").as_deref(), Some("node-1"));
                let names: Vec<&str> = scope_spans.spans.iter().map(|s| s.name.as_str()).collect();
                assert_eq!(names, vec!["GET /a", "GET /b"]);
                let s = &scope_spans.spans[0];
                assert_eq!(hex::encode(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
                assert_eq!(hex::encode(&s.span_id), "00f067aa0ba902b7");
                assert_eq!(s.kind, ProtoKind::Server as i32);
                assert_eq!(attr(&s.attributes, "http.response.status_code"), Some(&any_value::Value::IntValue(200)));
            } else {
                assert_eq!(service, "billing");
                assert_eq!(str_attr(&resource.attributes, "deployment.environment.name").as_deref(), Some("prod"));
                assert_eq!(scope_spans.spans.len(), 1);
            }
            services.push(service);
        }
        services.sort();
        assert_eq!(services, vec!["billing", "python-app"]);
    }

    mod hex {
        pub fn encode(bytes: &[u8]) -> String {
            crate::model::hex(bytes)
        }
    }

    async fn export_three(endpoint: String, protocol: OtlpProtocol) -> Arc<Metrics> {
        let metrics = Arc::new(Metrics::default());
        let c = crate::Config {
            otlp: Some(otlp_config(endpoint, protocol)),
            print: None,
            export_interval: Duration::from_millis(10),
            ..crate::Config::default()
        };
        let handle = crate::export::spawn_exporter(&c, metrics.clone()).unwrap();
        let a = span("GET /a");
        let mut b = span("GET /b");
        b.resource = a.resource.clone();
        let mut other = span("charge");
        other.resource = other_process();
        handle.send(a);
        handle.send(other);
        handle.send(b);
        handle.shutdown(Duration::from_secs(10)).await.unwrap();
        metrics
    }

    /// Minimal HTTP/1.1 OTLP receiver: reads requests (keep-alive), records
    /// headers and the decoded body, answers 200 with an empty response.
    async fn http_receiver(received: Received) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let received = received.clone();
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut headers = HashMap::new();
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        assert!(line.starts_with("POST /v1/traces "), "{line}");
                        loop {
                            line.clear();
                            reader.read_line(&mut line).await.unwrap();
                            let l = line.trim_end();
                            if l.is_empty() {
                                break;
                            }
                            let (k, v) = l.split_once(':').unwrap();
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                        }
                        let len: usize = headers["content-length"].parse().unwrap();
                        let mut body = vec![0; len];
                        reader.read_exact(&mut body).await.unwrap();
                        assert_eq!(headers["content-type"], "application/x-protobuf");
                        let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                        received.lock().unwrap().push((headers, request));
                        let reply =
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                        reader.get_mut().write_all(reply).await.unwrap();
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_protobuf_export_reaches_a_real_receiver() {
        let received: Received = Arc::default();
        let addr = http_receiver(received.clone()).await;
        let metrics = export_three(format!("http://{addr}/v1/traces"), OtlpProtocol::HttpProtobuf).await;
        assert_eq!(metrics.spans_exported.load(Ordering::Relaxed), 3);
        assert_eq!(metrics.spans_export_failed.load(Ordering::Relaxed), 0);
        check_received(&received, OtlpProtocol::HttpProtobuf);
    }

    struct GrpcReceiver(Received);

    #[tonic::async_trait]
    impl TraceService for GrpcReceiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let headers = request
                .metadata()
                .clone()
                .into_headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            self.0.lock().unwrap().push((headers, request.into_inner()));
            Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
        }
    }

    #[tokio::test]
    async fn grpc_export_reaches_a_real_receiver_over_one_connection() {
        let received: Received = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        let incoming = async_stream_of(listener, counted);
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(GrpcReceiver(received.clone())))
            .serve_with_incoming(incoming);
        let server = tokio::spawn(server);
        let metrics = export_three(format!("http://{addr}"), OtlpProtocol::Grpc).await;
        assert_eq!(metrics.spans_exported.load(Ordering::Relaxed), 3);
        check_received(&received, OtlpProtocol::Grpc);
        assert_eq!(connections.load(Ordering::Relaxed), 1, "two resources, one shared channel");
        server.abort();
    }

    /// Accepted connections as a stream for tonic, counting them.
    fn async_stream_of(
        listener: TcpListener,
        count: Arc<std::sync::atomic::AtomicUsize>,
    ) -> impl tokio_stream_like::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
        tokio_stream_like::Accept { listener, count }
    }

    /// Just enough of a Stream over a TcpListener (no tokio-stream dependency).
    mod tokio_stream_like {
        use std::{
            pin::Pin,
            sync::{atomic::AtomicUsize, atomic::Ordering, Arc},
            task::{Context, Poll},
        };

        pub use tonic::codegen::tokio_stream::Stream;

        pub struct Accept {
            pub listener: tokio::net::TcpListener,
            pub count: Arc<AtomicUsize>,
        }

        impl Stream for Accept {
            type Item = Result<tokio::net::TcpStream, std::io::Error>;
            fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
                match self.listener.poll_accept(cx) {
                    Poll::Ready(Ok((stream, _))) => {
                        self.count.fetch_add(1, Ordering::Relaxed);
                        Poll::Ready(Some(Ok(stream)))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}
