//! OTLP export (grpc and http/protobuf), encoded straight from our spans.
//!
//! Each batch becomes ONE `ExportTraceServiceRequest` with one
//! `ResourceSpans` per traced process (every process has its own
//! service.name, process.pid, ...), encoded once into a reused buffer and
//! sent over one shared transport: a tonic `Channel` for grpc, one reqwest
//! client for http/protobuf. gzip is applied when configured (by default
//! when the collector is on another host).
//!
//! Files, each importing only those listed before it: `encode` (spans →
//! opentelemetry-proto types), `transport` (sending one encoded request,
//! retries), `sink` ([`OtlpSink`]), `metrics` ([`MetricsPush`]: the
//! application metrics, pushed every export interval).
mod encode;
mod metrics;
mod sink;
mod transport;

#[cfg(test)]
mod tests;

pub use encode::MAX_CACHED_RESOURCES;
pub use metrics::MetricsPush;
pub use sink::OtlpSink;
