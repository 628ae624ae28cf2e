//! The encoding field by field, and the sink against real OTLP receivers
//! (a minimal HTTP/1.1 one and tonic's generated gRPC server).
use std::{
    collections::{HashMap, VecDeque},
    io::Read,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::{any_value, AnyValue, KeyValue},
    trace::v1::{span::SpanKind as ProtoKind, status::StatusCode, Span, Status},
};
use prost::Message;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

use super::encode::{proto_resource, valid_tracestate, Encoder};
use crate::{
    config::{OtlpCompression, OtlpConfig, OtlpProtocol},
    export::tests::span,
    metrics::Metrics,
    model::{AttrValue, FinishedSpan, ProcessResource, SpanKind, SpanStatus},
};

fn otlp_config(endpoint: String, protocol: OtlpProtocol) -> OtlpConfig {
    OtlpConfig {
        endpoint,
        protocol,
        headers: vec![("authorization".into(), "Bearer t0k3n".into()), ("x-tenant".into(), "blue".into())],
        timeout: Duration::from_secs(5),
        compression: OtlpCompression::None,
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

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), key_strindex: 0 }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_owned())
}

/// The request `encoder` writes for `batch`, decoded with the generated
/// types; the bytes must be exactly prost's encoding of it.
fn encode(encoder: &mut Encoder, batch: &[FinishedSpan]) -> ExportTraceServiceRequest {
    let mut bytes = Vec::new();
    encoder.encode(batch, &mut bytes);
    let request = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(request.encode_to_vec(), bytes, "the bytes prost writes for the same values");
    request
}

fn proto_span(span: FinishedSpan) -> Span {
    let mut request = encode(&mut Encoder::new(), &[span]);
    request.resource_spans.remove(0).scope_spans.remove(0).spans.remove(0)
}

#[test]
fn span_encoding_sets_every_field() {
    let mut server = span("GET /users/{id}");
    server.parent_span_id = Some([9, 8, 7, 6, 5, 4, 3, 2]);
    server.tracestate = Some(" vendor=abc ,\tother=1".into());
    server.status = SpanStatus::Error { description: "HTTP 503".into() };
    server.attributes.push(("http.request.method", AttrValue::Str("GET".into())));
    server.attributes.push(("tls", AttrValue::Bool(false)));
    server.attributes.push(("server.port", AttrValue::Int(-1)));
    assert_eq!(
        proto_span(server),
        Span {
            trace_id: vec![
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36
            ],
            span_id: vec![0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
            trace_state: "vendor=abc,other=1".into(),
            parent_span_id: vec![9, 8, 7, 6, 5, 4, 3, 2],
            // sampled | context has is-remote | parent is remote (a server
            // span's parent came over the wire)
            flags: 0x01 | 0x100 | 0x200,
            name: "GET /users/{id}".into(),
            kind: ProtoKind::Server as i32,
            start_time_unix_nano: 1_700_000_000_123_000_000,
            end_time_unix_nano: 1_700_000_000_135_345_000,
            attributes: vec![
                kv("http.response.status_code", any_value::Value::IntValue(200)),
                kv("http.request.method", s("GET")),
                kv("tls", any_value::Value::BoolValue(false)),
                kv("server.port", any_value::Value::IntValue(-1)),
            ],
            dropped_attributes_count: 0,
            events: vec![],
            dropped_events_count: 0,
            links: vec![],
            dropped_links_count: 0,
            status: Some(Status { message: "HTTP 503".into(), code: StatusCode::Error as i32 }),
        }
    );

    // A client span's parent is in the same process; no parent at all here.
    let mut client = span("SELECT users");
    client.kind = SpanKind::Client;
    client.sampled = false;
    client.tracestate = Some("Bad-Key=1".into());
    let p = proto_span(client);
    assert_eq!((p.kind, p.flags), (ProtoKind::Client as i32, 0x100));
    assert!(p.parent_span_id.is_empty() && p.trace_state.is_empty());
    assert_eq!(p.status, Some(Status { message: String::new(), code: StatusCode::Unset as i32 }));
    let mut client = span("SELECT users");
    client.kind = SpanKind::Client;
    client.parent_span_id = Some([1; 8]);
    assert_eq!(proto_span(client).flags, 0x01 | 0x100, "local parent");
}

#[test]
fn default_and_extreme_values_encode_like_prost() {
    let mut e = span("");
    e.start = std::time::UNIX_EPOCH;
    e.parent_span_id = Some([0; 8]);
    e.status = SpanStatus::Error { description: String::new() };
    e.attributes = vec![
        ("", AttrValue::from(String::new())),
        ("zero", AttrValue::Int(0)),
        ("min", AttrValue::Int(i64::MIN)),
        ("max", AttrValue::Int(i64::MAX)),
        ("yes", AttrValue::Bool(true)),
        ("long", AttrValue::from("x".repeat(70_000))),
    ];
    let p = proto_span(e);
    assert_eq!((p.name.as_str(), p.start_time_unix_nano, p.parent_span_id.len()), ("", 0, 0));
    assert_eq!(p.status, Some(Status { message: String::new(), code: StatusCode::Error as i32 }));
    assert_eq!(attr(&p.attributes, ""), Some(&s("")));
    assert_eq!(attr(&p.attributes, "zero"), Some(&any_value::Value::IntValue(0)));
    assert_eq!(attr(&p.attributes, "min"), Some(&any_value::Value::IntValue(i64::MIN)));
    assert_eq!(attr(&p.attributes, "max"), Some(&any_value::Value::IntValue(i64::MAX)));
    assert_eq!(attr(&p.attributes, "yes"), Some(&any_value::Value::BoolValue(true)));
    assert_eq!(str_attr(&p.attributes, "long").map(|v| v.len()), Some(70_000));

    // A large batch of many processes: every span, in order, per resource.
    let batch = bench_spans(2000);
    let request = encode(&mut Encoder::new(), &batch);
    assert_eq!(request.resource_spans.len(), 5);
    for (r, rs) in request.resource_spans.iter().enumerate() {
        assert_eq!(service(rs), format!("service-{r}"));
        let ids: Vec<u64> =
            rs.scope_spans[0].spans.iter().map(|s| u64::from_be_bytes(s.span_id.clone().try_into().unwrap())).collect();
        let expected: Vec<u64> = (0..2000u64).filter(|i| i % 5 == r as u64).map(|i| i + 1).collect();
        assert_eq!(ids, expected);
    }
}

#[test]
fn tracestate_is_exported_only_when_valid() {
    assert_eq!(valid_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    assert!(matches!(valid_tracestate("a=1,b=2"), std::borrow::Cow::Borrowed("a=1,b=2")), "clean: not copied");
    assert_eq!(valid_tracestate(" a=1 ,, b=2,"), "a=1,b=2");
    assert_eq!(valid_tracestate("a==1"), "a=1");
    assert_eq!(valid_tracestate(""), "");
    assert_eq!(valid_tracestate("tenant@sys=x,k_-*/9=v"), "tenant@sys=x,k_-*/9=v");
    for bad in ["A=1", "a=1,novalue", "a=b=c", "=v", "-a=1", "t@@s=1", "t@-s=1", "t@abcdefghijklmno=1"] {
        assert_eq!(valid_tracestate(bad), "", "{bad}");
    }
    let many: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
    assert_eq!(valid_tracestate(&many.join(",")), many[..32].join(","), "W3C: at most 32 members");
}

#[test]
fn resource_has_identity_and_process_attributes() {
    let r = proto_resource(&ProcessResource {
        service_name: "python-app".into(),
        pid: 4242,
        executable_name: "python3".into(),
        // A stray service.name in the attributes must not win.
        attributes: vec![("host.name".into(), "node-1".into()), ("service.name".into(), "wrong".into())],
    });
    assert_eq!(
        r.attributes,
        vec![
            kv("host.name", s("node-1")),
            kv("service.name", s("python-app")),
            kv("process.pid", any_value::Value::IntValue(4242)),
            kv("process.executable.name", s("python3")),
        ]
    );
    assert_eq!((r.dropped_attributes_count, r.entity_refs.len()), (0, 0));
    let no_exe = proto_resource(&ProcessResource { executable_name: String::new(), ..(*other_process()).clone() });
    assert!(no_exe.attributes.iter().all(|kv| kv.key != "process.executable.name"));
}

fn service(rs: &opentelemetry_proto::tonic::trace::v1::ResourceSpans) -> String {
    rs.resource.as_ref().and_then(|r| str_attr(&r.attributes, "service.name")).unwrap_or_default()
}

#[test]
fn one_request_per_batch_with_equal_resources_merged() {
    let mut encoder = Encoder::new();
    let a = span("a");
    let mut b = span("b");
    b.resource = Arc::new((*a.resource).clone()); // equal value, other Arc
    let mut c = span("c");
    c.resource = other_process();
    let request = encode(&mut encoder, &[a, c, b.clone()]);
    assert_eq!(request.resource_spans.len(), 2);
    let names: Vec<Vec<&str>> = request
        .resource_spans
        .iter()
        .map(|rs| rs.scope_spans[0].spans.iter().map(|s| s.name.as_str()).collect())
        .collect();
    assert_eq!(names, vec![vec!["a", "b"], vec!["c"]]);
    for rs in &request.resource_spans {
        assert_eq!(rs.scope_spans.len(), 1);
        let scope = rs.scope_spans[0].scope.as_ref().unwrap();
        assert_eq!((scope.name.as_str(), scope.version.as_str()), ("waggle", env!("CARGO_PKG_VERSION")));
        assert!(scope.attributes.is_empty() && rs.schema_url.is_empty() && rs.scope_spans[0].schema_url.is_empty());
    }
    assert_eq!(service(&request.resource_spans[1]), "billing");
    assert_eq!(request.resource_spans[0].resource, Some(proto_resource(&b.resource)));
    assert_eq!(encoder.cached_resources(), 2);
    // The next batch takes the cached form.
    let again = encode(&mut encoder, &[b]);
    assert_eq!(again.resource_spans[0].resource, Some(proto_resource(&span("x").resource)));
    assert_eq!(encoder.cached_resources(), 2);
}

#[test]
fn resource_cache_is_bounded() {
    let mut encoder = Encoder::with_capacity(2);
    let batch: Vec<FinishedSpan> = (0..3u32)
        .map(|i| {
            let mut s = span(&format!("s{i}"));
            s.resource = Arc::new(ProcessResource { pid: i, service_name: format!("svc{i}"), ..(*s.resource).clone() });
            s
        })
        .collect();
    let request = encode(&mut encoder, &batch);
    assert_eq!(encoder.cached_resources(), 2);
    let services: Vec<String> = request.resource_spans.iter().map(service).collect();
    assert_eq!(services, vec!["svc0", "svc1", "svc2"]);
    // svc0 was evicted and is rebuilt the same.
    let request = encode(&mut encoder, &batch[..1]);
    assert_eq!(request.resource_spans[0].resource, Some(proto_resource(&batch[0].resource)));
    assert_eq!(encoder.cached_resources(), 2);
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn str_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// One request as a receiver saw it.
struct Got {
    headers: HashMap<String, String>,
    request: ExportTraceServiceRequest,
}

/// What a test receiver records and how it answers.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    /// Answers to the first requests before the ones that succeed.
    failures: Arc<Mutex<VecDeque<Failure>>>,
    /// Spans reported rejected in each successful answer.
    rejected: i64,
}

#[derive(Clone, Copy, Debug)]
enum Failure {
    /// HTTP 503 / gRPC UNAVAILABLE.
    Retryable,
    /// HTTP 400 / gRPC INVALID_ARGUMENT.
    Fatal,
}

impl Receiver {
    fn failing(failures: &[Failure]) -> Receiver {
        Receiver { failures: Arc::new(Mutex::new(failures.iter().copied().collect())), ..Receiver::default() }
    }

    fn next_failure(&self) -> Option<Failure> {
        self.failures.lock().unwrap().pop_front()
    }

    fn response(&self) -> ExportTraceServiceResponse {
        let partial_success = (self.rejected > 0)
            .then(|| ExportTracePartialSuccess { rejected_spans: self.rejected, error_message: "span too old".into() });
        ExportTraceServiceResponse { partial_success }
    }

    fn requests(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

/// Checks one batch's requests: one request (after any failed attempts,
/// each a full copy) carrying one ResourceSpans per process, the right
/// resource attributes, spans and ids, and exactly the configured headers.
fn check_received(receiver: &Receiver, attempts: usize, protocol: OtlpProtocol) {
    let got = receiver.got.lock().unwrap();
    assert_eq!(got.len(), attempts, "requests ({protocol})");
    for Got { headers, request } in got.iter() {
        assert_eq!(headers.get("authorization").map(String::as_str), Some("Bearer t0k3n"), "{headers:?}");
        assert_eq!(headers.get("x-tenant").map(String::as_str), Some("blue"));
        assert!(headers.get("user-agent").is_some_and(|ua| ua.contains("waggle/")), "{headers:?}");
        assert_eq!(request.resource_spans.len(), 2, "one ResourceSpans per process");
        let mut services = Vec::new();
        for rs in &request.resource_spans {
            let resource = rs.resource.as_ref().unwrap();
            let scope_spans = &rs.scope_spans[0];
            assert_eq!(scope_spans.scope.as_ref().unwrap().name, "waggle");
            let service = service(rs);
            if service == "python-app" {
                assert_eq!(attr(&resource.attributes, "process.pid"), Some(&any_value::Value::IntValue(4242)));
                assert_eq!(str_attr(&resource.attributes, "host.name").as_deref(), Some("node-1"));
                let names: Vec<&str> = scope_spans.spans.iter().map(|s| s.name.as_str()).collect();
                assert_eq!(names, vec!["GET /a", "GET /b"]);
                let s = &scope_spans.spans[0];
                assert_eq!(crate::model::hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
                assert_eq!(crate::model::hex(&s.span_id), "00f067aa0ba902b7");
                assert_eq!(s.kind, ProtoKind::Server as i32);
                assert_eq!(attr(&s.attributes, "http.response.status_code"), Some(&any_value::Value::IntValue(200)));
            } else {
                assert_eq!(service, "billing");
                assert_eq!(str_attr(&resource.attributes, "deployment.environment.name").as_deref(), Some("prod"));
                assert_eq!(scope_spans.spans.len(), 1);
            }
            services.push(service);
        }
        assert_eq!(services, vec!["python-app", "billing"]);
    }
}

/// Three spans of two processes through the real exporter task; they make
/// one batch (sent before the current-thread runtime runs the batcher).
async fn export_three(config: OtlpConfig) -> Arc<Metrics> {
    let metrics = Arc::new(Metrics::default());
    let c = crate::Config {
        otlp: Some(config),
        print: None,
        export_interval: Duration::from_millis(10),
        ..crate::Config::default()
    };
    let handle = crate::export::spawn_exporter(&c, metrics.clone()).unwrap();
    let a = span("GET /a");
    let mut b = span("GET /b");
    b.resource = Arc::new((*a.resource).clone());
    let mut other = span("charge");
    other.resource = other_process();
    handle.send(a);
    handle.send(other);
    handle.send(b);
    handle.shutdown(Duration::from_secs(20)).await.unwrap();
    metrics
}

fn counts(metrics: &Arc<Metrics>) -> (u64, u64) {
    (metrics.spans_exported.load(Ordering::Relaxed), metrics.spans_export_failed.load(Ordering::Relaxed))
}

/// Minimal HTTP/1.1 OTLP receiver: reads requests (keep-alive), records
/// headers and the decoded (gunzipped) body, answers as `receiver` says.
async fn http_receiver(receiver: Receiver) -> SocketAddr {
    http_receiver_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), receiver)
}

fn http_receiver_on(listener: TcpListener, receiver: Receiver) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let receiver = receiver.clone();
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
                    if headers.get("content-encoding").map(String::as_str) == Some("gzip") {
                        assert_eq!(body[..2], [0x1f, 0x8b], "gzip magic");
                        let mut plain = Vec::new();
                        flate2::read::GzDecoder::new(body.as_slice()).read_to_end(&mut plain).unwrap();
                        body = plain;
                    }
                    let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                    receiver.got.lock().unwrap().push(Got { headers, request });
                    let reply = match receiver.next_failure() {
                        Some(Failure::Retryable) => {
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec()
                        }
                        Some(Failure::Fatal) => b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n".to_vec(),
                        None => {
                            let body = receiver.response().encode_to_vec();
                            let mut reply = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            reply.extend_from_slice(&body);
                            reply
                        }
                    };
                    reader.get_mut().write_all(&reply).await.unwrap();
                }
            });
        }
    });
    addr
}

async fn http_export(receiver: &Receiver, compression: OtlpCompression) -> Arc<Metrics> {
    let addr = http_receiver(receiver.clone()).await;
    let mut config = otlp_config(format!("http://{addr}/v1/traces"), OtlpProtocol::HttpProtobuf);
    config.compression = compression;
    export_three(config).await
}

#[tokio::test]
async fn http_protobuf_export_reaches_a_real_receiver() {
    let receiver = Receiver::default();
    let metrics = http_export(&receiver, OtlpCompression::None).await;
    assert_eq!(counts(&metrics), (3, 0));
    check_received(&receiver, 1, OtlpProtocol::HttpProtobuf);
    let got = receiver.got.lock().unwrap();
    let mut names: Vec<&str> = got[0].headers.keys().map(String::as_str).collect();
    names.sort_unstable();
    // Exactly the configured headers plus the transport's own.
    assert_eq!(names, ["accept", "authorization", "content-length", "content-type", "host", "user-agent", "x-tenant"]);
}

#[tokio::test]
async fn configured_headers_do_not_override_user_agent_or_content_type() {
    let receiver = Receiver::default();
    let addr = http_receiver(receiver.clone()).await;
    let mut config = otlp_config(format!("http://{addr}/v1/traces"), OtlpProtocol::HttpProtobuf);
    config.headers.push(("user-agent".into(), "evil/1".into()));
    config.headers.push(("content-type".into(), "text/plain".into()));
    assert_eq!(counts(&export_three(config).await), (3, 0));
    let got = receiver.got.lock().unwrap();
    assert!(got[0].headers["user-agent"].starts_with("waggle/"), "{:?}", got[0].headers);
    assert_eq!(got[0].headers["content-type"], "application/x-protobuf");
}

#[tokio::test]
async fn http_gzip_on_the_wire_when_configured() {
    let receiver = Receiver::default();
    let metrics = http_export(&receiver, OtlpCompression::Gzip).await;
    assert_eq!(counts(&metrics), (3, 0));
    check_received(&receiver, 1, OtlpProtocol::HttpProtobuf);
    assert_eq!(receiver.got.lock().unwrap()[0].headers.get("content-encoding").map(String::as_str), Some("gzip"));
}

#[tokio::test]
async fn http_retries_retryable_failures_only() {
    let receiver = Receiver::failing(&[Failure::Retryable]);
    assert_eq!(counts(&http_export(&receiver, OtlpCompression::None).await), (3, 0));
    check_received(&receiver, 2, OtlpProtocol::HttpProtobuf);

    let receiver = Receiver::failing(&[Failure::Fatal]);
    assert_eq!(counts(&http_export(&receiver, OtlpCompression::None).await), (0, 3));
    assert_eq!(receiver.requests(), 1, "400 is not retried");
}

#[tokio::test]
async fn partial_success_counts_rejected_spans_as_failed() {
    let receiver = Receiver { rejected: 1, ..Receiver::default() };
    assert_eq!(counts(&http_export(&receiver, OtlpCompression::None).await), (2, 1));
    let (_, metrics, _) = grpc_export(Receiver { rejected: 2, ..Receiver::default() }, OtlpCompression::None).await;
    assert_eq!(counts(&metrics), (1, 2));
}

struct GrpcReceiver(Receiver);

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
        self.0.got.lock().unwrap().push(Got { headers, request: request.into_inner() });
        match self.0.next_failure() {
            Some(Failure::Retryable) => Err(tonic::Status::unavailable("busy")),
            Some(Failure::Fatal) => Err(tonic::Status::invalid_argument("bad")),
            None => Ok(tonic::Response::new(self.0.response())),
        }
    }
}

/// A tonic OTLP server (accepting gzip) on an ephemeral port, counting
/// connections. Returns (receiver, address) and the connection count.
async fn grpc_receiver_with(receiver: Receiver) -> ((Receiver, SocketAddr), Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let incoming = tokio_stream_like::Accept { listener, count: connections.clone() };
    let service = TraceServiceServer::new(GrpcReceiver(receiver.clone()))
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
    ((receiver, addr), connections)
}

async fn grpc_export(receiver: Receiver, compression: OtlpCompression) -> (Receiver, Arc<Metrics>, usize) {
    let ((receiver, addr), connections) = grpc_receiver_with(receiver).await;
    let mut config = otlp_config(format!("http://{addr}"), OtlpProtocol::Grpc);
    config.compression = compression;
    let metrics = export_three(config).await;
    (receiver, metrics, connections.load(Ordering::Relaxed))
}

#[tokio::test]
async fn grpc_export_reaches_a_real_receiver_over_one_connection() {
    let (receiver, metrics, connections) = grpc_export(Receiver::default(), OtlpCompression::None).await;
    assert_eq!(counts(&metrics), (3, 0));
    check_received(&receiver, 1, OtlpProtocol::Grpc);
    assert_eq!(receiver.got.lock().unwrap()[0].headers.get("grpc-encoding"), None);
    assert_eq!(connections, 1);
}

#[tokio::test]
async fn grpc_gzip_on_the_wire_when_configured() {
    let (receiver, metrics, _) = grpc_export(Receiver::default(), OtlpCompression::Gzip).await;
    assert_eq!(counts(&metrics), (3, 0));
    check_received(&receiver, 1, OtlpProtocol::Grpc);
    let got = receiver.got.lock().unwrap();
    assert_eq!(got[0].headers.get("grpc-encoding").map(String::as_str), Some("gzip"), "{:?}", got[0].headers);
}

#[tokio::test]
async fn grpc_retries_unavailable_over_the_same_connection() {
    let (receiver, metrics, connections) =
        grpc_export(Receiver::failing(&[Failure::Retryable]), OtlpCompression::None).await;
    assert_eq!(counts(&metrics), (3, 0));
    check_received(&receiver, 2, OtlpProtocol::Grpc);
    assert_eq!(connections, 1);
    let (receiver, metrics, _) = grpc_export(Receiver::failing(&[Failure::Fatal]), OtlpCompression::None).await;
    assert_eq!(counts(&metrics), (0, 3));
    assert_eq!(receiver.requests(), 1, "INVALID_ARGUMENT is not retried");
}

#[tokio::test]
async fn encode_buffers_are_reused_across_batches() {
    use crate::export::SpanSink;
    let http = http_receiver(Receiver::default()).await;
    let ((grpc_receiver, grpc), _) = grpc_receiver_with(Receiver::default()).await;
    for (endpoint, protocol, compression) in [
        (format!("http://{http}/v1/traces"), OtlpProtocol::HttpProtobuf, OtlpCompression::None),
        (format!("http://{http}/v1/traces"), OtlpProtocol::HttpProtobuf, OtlpCompression::Gzip),
        (format!("http://{grpc}"), OtlpProtocol::Grpc, OtlpCompression::Gzip),
    ] {
        let mut config = otlp_config(endpoint, protocol);
        config.compression = compression;
        let mut sink = super::OtlpSink::new(&config, Arc::default(), Arc::default()).unwrap();
        assert_eq!(sink.kept_buffer_bytes(), 0);
        sink.export(bench_spans(100)).await.unwrap();
        let kept = sink.kept_buffer_bytes();
        assert!(kept >= 100 * 30, "{protocol} {compression}: {kept}");
        sink.export(bench_spans(100)).await.unwrap();
        assert_eq!(sink.kept_buffer_bytes(), kept, "{protocol} {compression}: same buffers, no growth");
        assert_eq!(sink.cached_resources(), 5);
    }
    assert_eq!(grpc_receiver.requests(), 2);
}

/// A port nothing listens on.
async fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// An exporter to `endpoint` sending batches of three, with a 500 ms timeout.
fn exporter_of_three(endpoint: String, protocol: OtlpProtocol) -> (crate::export::ExportHandle, Arc<Metrics>) {
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
    (crate::export::spawn_exporter(&c, metrics.clone()).unwrap(), metrics)
}

#[tokio::test]
async fn dead_collector_gives_counted_failures_and_no_panic() {
    for protocol in [OtlpProtocol::HttpProtobuf, OtlpProtocol::Grpc] {
        let addr = dead_port().await;
        let endpoint = match protocol {
            OtlpProtocol::Grpc => format!("http://{addr}"),
            OtlpProtocol::HttpProtobuf => format!("http://{addr}/v1/traces"),
        };
        let (handle, metrics) = exporter_of_three(endpoint, protocol);
        let mut other = span("other");
        other.resource = other_process();
        for i in 0..5 {
            handle.send(span(&format!("s{i}")));
        }
        handle.send(other);
        handle.shutdown(Duration::from_secs(20)).await.unwrap();
        assert_eq!(counts(&metrics), (0, 6), "{protocol}");
    }
}

#[tokio::test]
async fn a_batch_is_held_while_the_collector_is_down_and_delivered_when_it_is_back() {
    let addr = dead_port().await;
    let (handle, metrics) = exporter_of_three(format!("http://{addr}/v1/traces"), OtlpProtocol::HttpProtobuf);
    for i in 0..3 {
        handle.send(span(&format!("s{i}")));
    }
    let attempts = |m: &Metrics| m.otlp_attempts_failed.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while attempts(&metrics) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no failed attempt against a dead port");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Down for a while: the batch is neither sent nor given up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(counts(&metrics), (0, 0), "held, not dropped");
    let tried = attempts(&metrics);
    assert!(tried <= 8, "{tried} attempts in ~2 s: the retries must back off");

    let receiver = Receiver::default();
    http_receiver_on(TcpListener::bind(addr).await.unwrap(), receiver.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while counts(&metrics).0 < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the held batch never arrived: {:?}", counts(&metrics));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(counts(&metrics), (3, 0));
    assert_eq!(receiver.requests(), 1, "one request, after the collector came back");
}

/// Realistic spans for the encode micro-benchmark: 8 attributes, 5 processes.
fn bench_spans(n: usize) -> Vec<FinishedSpan> {
    let resources: Vec<Arc<ProcessResource>> = (0..5)
        .map(|i| {
            Arc::new(ProcessResource {
                service_name: format!("service-{i}"),
                pid: 1000 + i,
                executable_name: "python3".into(),
                attributes: vec![
                    ("host.name".into(), "node-1.cluster.local".into()),
                    ("deployment.environment.name".into(), "prod".into()),
                    ("service.version".into(), "1.4.2".into()),
                ],
            })
        })
        .collect();
    (0..n)
        .map(|i| {
            let mut s = span("GET /api/users/{id}");
            s.resource = resources[i % resources.len()].clone();
            // Ids and times vary as in real traffic (they don't compress).
            let mix = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            s.trace_id[..8].copy_from_slice(&mix.rotate_left(17).to_le_bytes());
            s.trace_id[8..].copy_from_slice(&mix.to_le_bytes());
            s.span_id = (i as u64 + 1).to_be_bytes();
            s.start += Duration::from_micros(137 * i as u64);
            s.end = s.start + Duration::from_micros(mix % 50_000);
            s.parent_span_id = (i % 2 == 0).then_some([7; 8]);
            s.attributes = vec![
                ("http.request.method", AttrValue::Str("GET".into())),
                ("url.path", AttrValue::from(format!("/api/users/{i}"))),
                ("http.route", AttrValue::Str("/api/users/{id}".into())),
                ("http.response.status_code", AttrValue::Int(200)),
                ("server.address", AttrValue::Str("users.internal".into())),
                ("server.port", AttrValue::Int(8080)),
                ("user_agent.original", AttrValue::Str("python-requests/2.31.0 (linux; x86_64)".into())),
                ("network.peer.is_tls", AttrValue::Bool(false)),
            ];
            s
        })
        .collect()
}

/// Encode cost per span, by hand:
/// `cargo test -p waggle --release --lib export::otlp::tests::encode_bench -- --ignored --nocapture`
#[test]
#[ignore = "micro-benchmark: run by hand"]
fn encode_bench() {
    use std::{io::Write, time::Instant};
    const N: usize = 10_000;
    let mut encoder = Encoder::new();
    let mut buf = Vec::new();
    let (mut encode, mut gzip1, mut gzip6) = (f64::MAX, f64::MAX, f64::MAX);
    let (mut packed1, mut packed6) = (0, 0);
    let per_span = |d: Duration| d.as_secs_f64() * 1e6 / N as f64;
    for _ in 0..20 {
        let batch = bench_spans(N);
        let t0 = Instant::now();
        buf.clear();
        encoder.encode(&batch, &mut buf);
        drop(batch);
        encode = encode.min(per_span(t0.elapsed()));
        for (level, best, size) in [(1, &mut gzip1, &mut packed1), (6, &mut gzip6, &mut packed6)] {
            let t = Instant::now();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
            gz.write_all(&buf).unwrap();
            *size = gz.finish().unwrap().len() / N;
            *best = best.min(per_span(t.elapsed()));
        }
    }
    println!(
        "new path, best of 20, us/span: group+encode+drop {encode:.3}; gzip level 1 {gzip1:.3}, level 6 {gzip6:.3}; \
         bytes/span: {} plain, {} / {} gzipped at level 1 / 6",
        buf.len() / N,
        packed1,
        packed6
    );
}

/// Just enough of a Stream over a TcpListener (no tokio-stream dependency),
/// counting accepted connections.
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
