//! Exporters: OTLP (grpc, http/protobuf) through opentelemetry-otlp, or the
//! terminal printer when no endpoint is configured.
use std::future::Future;

use crate::spans::FinishedSpan;

pub mod otlp;
pub mod stdout;

/// Where finished spans go. `export` receives batches; `shutdown` flushes.
pub trait SpanSink: Send {
    fn export(&mut self, batch: Vec<FinishedSpan>) -> impl Future<Output = Result<(), ExportError>> + Send;
    fn shutdown(&mut self) -> impl Future<Output = Result<(), ExportError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("building the OTLP exporter for {endpoint}: {source}")]
    Build {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("exporting {spans} spans over OTLP: {message}")]
    Otlp { spans: usize, message: String },
    #[error("writing spans to stdout: {0}")]
    Stdout(#[from] std::io::Error),
}
