//! Exporters: OTLP (grpc, http/protobuf, encoded straight from our spans),
//! and/or the terminal printer (span lines, or a waterfall per trace), and
//! the ring of recent traces behind `waggle trace`.
//!
//! The pipeline hands spans to [`ExportHandle::send`], which never blocks: a
//! bounded queue feeds one exporter task that batches spans (up to
//! `max_export_batch`, or whatever arrived within `export_interval` of the
//! first one) and hands each batch to the sinks. When the sinks are slow or the
//! collector is down the queue fills and new spans are dropped and counted, so
//! memory stays bounded and the capture path never waits on the network.
mod batcher;
pub mod otlp;
mod sink;
pub mod stdout;
pub mod waterfall;

#[cfg(test)]
pub(crate) use batcher::tests;
pub use batcher::{spawn_exporter, spawn_exporter_with, ExportHandle};
pub(crate) use sink::RateLimitedLog;
pub use sink::{ExportError, SpanSink};
