//! Sends one encoded `ExportTraceServiceRequest` to the collector: gRPC over
//! one shared tonic `Channel`, or http/protobuf through one reqwest client,
//! with the OTLP retry rules (retryable failures are tried again with
//! exponential backoff while the export timeout allows).
//!
//! Exactly the configured headers are sent (`--otlp-headers` or
//! OTEL_EXPORTER_OTLP_HEADERS, resolved by config): nothing here reads the
//! environment. Header values are credentials and never logged.
use std::{sync::atomic::AtomicU64, time::Duration};

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, USER_AGENT};
use tokio::time::Instant;
use tonic::{
    client::Grpc,
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataMap,
    transport::Channel,
    Code, GrpcMethod, Status,
};

use super::super::ExportError;
use crate::config::{OtlpCompression, OtlpConfig, OtlpProtocol};
use crate::metrics::Metrics;

const USER_AGENT_VALUE: &str = concat!("waggle/", env!("CARGO_PKG_VERSION"));
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The OTLP signal a transport sends: its gRPC service. (The responses
/// are alike on the wire: field 1 is the partial success, whose count and
/// message have the same numbers for every signal.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn grpc_service(self) -> &'static str {
        match self {
            Signal::Traces => "opentelemetry.proto.collector.trace.v1.TraceService",
            Signal::Metrics => "opentelemetry.proto.collector.metrics.v1.MetricsService",
        }
    }

    fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }
}
/// A response body is read up to this size for a partial-success message;
/// a larger one is not decoded (so a broken collector can't make us buffer
/// without bound).
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// The OTLP exporters' recommended retry policy: 3 retries, backoff from
/// 100 ms doubling up to 1.6 s, up to 100 ms jitter, all within the timeout.
const MAX_RETRIES: u32 = 3;
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_millis(1600);
const MAX_JITTER_MS: u64 = 100;
/// A collector's Retry-After is honoured up to this (the timeout still bounds it).
const MAX_THROTTLE: Duration = Duration::from_secs(30);

/// What the collector said about an accepted request.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Accepted {
    /// Spans the collector rejected (partial success).
    pub rejected: u64,
    /// Its explanation or warning, if any.
    pub message: String,
}

/// Why a request failed after its retries. `retryable` says the collector
/// may take it later (unreachable, overloaded, no answer in time); a fatal
/// failure (bad request, auth) will not improve by waiting.
#[derive(Debug)]
pub(super) struct SendFailure {
    pub message: String,
    pub retryable: bool,
}

/// Why one attempt failed, and whether another may succeed.
enum AttemptError {
    Retry { message: String, after: Option<Duration> },
    Fatal(String),
}

pub(super) enum Transport {
    Grpc { client: Grpc<Channel>, metadata: MetadataMap, signal: Signal },
    Http { client: reqwest::Client, url: reqwest::Url, headers: HeaderMap },
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

impl Transport {
    /// Builds the shared transport; connections are opened lazily, so a
    /// collector that is down at start-up is not an error.
    pub(super) fn new(config: &OtlpConfig) -> Result<Transport, ExportError> {
        Transport::for_signal(config, Signal::Traces)
    }

    /// [`Transport::new`] for another signal.
    pub(super) fn for_signal(config: &OtlpConfig, signal: Signal) -> Result<Transport, ExportError> {
        let transport_err = |message: String| ExportError::Transport { endpoint: config.endpoint.clone(), message };
        let headers = header_map(config)?;
        let connect_timeout = CONNECT_TIMEOUT.min(config.timeout);
        Ok(match config.protocol {
            OtlpProtocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
                    .map_err(|e| transport_err(format!("invalid endpoint: {e}")))?
                    .user_agent(USER_AGENT_VALUE)
                    .map_err(|e| transport_err(format!("user agent: {e}")))?
                    .timeout(config.timeout)
                    .connect_timeout(connect_timeout)
                    .tcp_nodelay(true);
                let mut client = Grpc::new(endpoint.connect_lazy());
                if config.compression == OtlpCompression::Gzip {
                    client = client.send_compressed(CompressionEncoding::Gzip);
                }
                Transport::Grpc { client, metadata: MetadataMap::from_headers(headers), signal }
            }
            OtlpProtocol::HttpProtobuf => {
                let mut headers = headers;
                headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
                if config.compression == OtlpCompression::Gzip {
                    headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                }
                let url = reqwest::Url::parse(&config.endpoint)
                    .map_err(|e| transport_err(format!("invalid endpoint: {e}")))?;
                let client = reqwest::Client::builder()
                    .timeout(config.timeout)
                    .connect_timeout(connect_timeout)
                    .tcp_nodelay(true)
                    .build()
                    .map_err(|e| transport_err(format!("building the HTTP client: {e}")))?;
                Transport::Http { client, url, headers }
            }
        })
    }

    /// Whether the body handed to [`Transport::send`] must already be
    /// compressed (gRPC compresses its own frames).
    pub(super) fn wants_gzip_body(&self) -> bool {
        match self {
            Transport::Grpc { .. } => false,
            Transport::Http { headers, .. } => headers.contains_key(CONTENT_ENCODING),
        }
    }

    /// Sends `body` (an encoded request, gzipped for http when configured),
    /// retrying retryable failures until `timeout` has passed since the
    /// first attempt.
    /// Every failed attempt is counted in `attempts_failed`.
    pub(super) async fn send(
        &self,
        body: &Bytes,
        timeout: Duration,
        attempts_failed: &AtomicU64,
    ) -> Result<Accepted, SendFailure> {
        let start = Instant::now();
        let mut backoff = INITIAL_BACKOFF;
        let mut retries = 0;
        loop {
            let attempt = match self {
                Transport::Grpc { client, metadata, signal } => {
                    send_grpc(client.clone(), metadata, *signal, body.clone()).await
                }
                Transport::Http { client, url, headers } => send_http(client, url, headers, body.clone()).await,
            };
            let (message, after) = match attempt {
                Ok(accepted) => return Ok(accepted),
                Err(AttemptError::Fatal(message)) => {
                    Metrics::inc(attempts_failed);
                    return Err(SendFailure { message, retryable: false });
                }
                Err(AttemptError::Retry { message, after }) => (message, after),
            };
            Metrics::inc(attempts_failed);
            if retries == MAX_RETRIES {
                return Err(SendFailure { message, retryable: true });
            }
            retries += 1;
            let jitter = Duration::from_millis(rand::random_range(0..=MAX_JITTER_MS));
            let wait = after.map_or(backoff, |a| a.min(MAX_THROTTLE).max(backoff)) + jitter;
            if start.elapsed() + wait >= timeout {
                return Err(SendFailure { message, retryable: true });
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Passes the already encoded request through to tonic's framing (and its
/// compression); decodes the response with prost. The generated client
/// would take the request struct by value and encode it per attempt.
struct PreEncoded;

struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        dst.put_slice(&item);
        Ok(())
    }
}

struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ExportTraceServiceResponse>, Status> {
        ExportTraceServiceResponse::decode(src).map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = BytesEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

fn accepted(response: ExportTraceServiceResponse) -> Accepted {
    response
        .partial_success
        .map(|p| Accepted { rejected: u64::try_from(p.rejected_spans).unwrap_or(0), message: p.error_message })
        .unwrap_or_default()
}

async fn send_grpc(
    mut client: Grpc<Channel>,
    metadata: &MetadataMap,
    signal: Signal,
    body: Bytes,
) -> Result<Accepted, AttemptError> {
    let mut request = tonic::Request::new(body);
    *request.metadata_mut() = metadata.clone();
    request.extensions_mut().insert(GrpcMethod::new(signal.grpc_service(), "Export"));
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(signal.grpc_path());
    let result = match client.ready().await {
        Ok(()) => client.unary(request, path, PreEncoded).await,
        Err(e) => Err(Status::unavailable(format!("channel not ready: {e}"))),
    };
    match result {
        Ok(response) => Ok(accepted(response.into_inner())),
        Err(status) => {
            let message = format!("gRPC status {:?}: {}", status.code(), status.message());
            Err(match status.code() {
                // Retryable per the OTLP specification. RESOURCE_EXHAUSTED is
                // only with a RetryInfo detail, which is not parsed here.
                Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::OutOfRange
                | Code::Unavailable
                | Code::DataLoss => AttemptError::Retry { message, after: None },
                _ => AttemptError::Fatal(message),
            })
        }
    }
}

async fn send_http(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Accepted, AttemptError> {
    let sent = client.post(url.clone()).headers(headers.clone()).body(body).send().await;
    let mut response = match sent {
        Ok(response) => response,
        // Connection refused, reset, timed out: nothing was accepted.
        Err(e) => return Err(AttemptError::Retry { message: format!("HTTP request failed: {e}"), after: None }),
    };
    let status = response.status();
    if !status.is_success() {
        let message = format!("HTTP status {status}");
        let after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Err(match status.as_u16() {
            429 | 502 | 503 | 504 => AttemptError::Retry { message, after },
            _ => AttemptError::Fatal(message),
        });
    }
    // The spans are in; the body only says whether some were rejected.
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Ok(Accepted::default());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(ExportTraceServiceResponse::decode(body.as_slice()).map(accepted).unwrap_or_default())
}
