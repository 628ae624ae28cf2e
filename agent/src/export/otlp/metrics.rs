//! [`MetricsPush`]: the application metrics sent over OTLP every export
//! interval (cumulative, so a failed export loses nothing: the next one
//! carries the totals), and once more at shutdown.
use std::{io::Write, sync::Arc, time::Duration, time::SystemTime};

use bytes::Bytes;
use flate2::{write::GzEncoder, Compression};
use prost::Message;
use tokio::{sync::oneshot, task::JoinHandle};

use super::transport::{Signal, Transport};
use crate::{
    config::OtlpConfig,
    export::{ExportError, RateLimitedLog},
    metrics::Metrics,
    span_metrics::{export_request, SpanMetrics},
};

const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Metric requests are small and infrequent: gzip's default level.
const GZIP_LEVEL: u32 = 6;

/// The running push task.
pub struct MetricsPush {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

struct Pusher {
    transport: Transport,
    timeout: Duration,
    span_metrics: Arc<SpanMetrics>,
    metrics: Arc<Metrics>,
    errors: RateLimitedLog,
}

impl MetricsPush {
    /// Starts pushing every `interval`. Must be called within a tokio
    /// runtime; the collector being down at start-up is not an error.
    pub fn spawn(
        config: &OtlpConfig,
        interval: Duration,
        span_metrics: Arc<SpanMetrics>,
        metrics: Arc<Metrics>,
    ) -> Result<MetricsPush, ExportError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
        let _guard = runtime.enter();
        let transport = Transport::for_signal(config, Signal::Metrics)?;
        tracing::info!(endpoint = %config.endpoint, protocol = %config.protocol, interval_ms = interval.as_millis() as u64, "exporting application metrics over OTLP");
        let pusher = Pusher {
            transport,
            timeout: config.timeout,
            span_metrics,
            metrics,
            errors: RateLimitedLog::new(ERROR_LOG_INTERVAL),
        };
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(pusher.run(interval, stop_rx));
        Ok(MetricsPush { stop, task })
    }

    /// Sends the last values and stops, giving up after `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        let MetricsPush { stop, mut task } = self;
        let _ = stop.send(());
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "the last OTLP metric export did not finish in time"
            );
        }
    }
}

impl Pusher {
    async fn run(mut self, interval: Duration, mut stop: oneshot::Receiver<()>) {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = ticker.tick() => self.push().await,
            }
        }
        self.push().await;
    }

    async fn push(&mut self) {
        self.span_metrics.expire();
        let request = self.span_metrics.visit(|f| export_request(f, self.span_metrics.start, SystemTime::now()));
        if request.resource_metrics.is_empty() {
            return;
        }
        let body = match self.encode(&request) {
            Ok(body) => body,
            Err(e) => return self.failed(&format!("gzip: {e}")),
        };
        match self.transport.send(&body, self.timeout, &self.metrics.otlp_attempts_failed).await {
            Ok(accepted) if accepted.rejected > 0 => {
                self.failed(&format!("the collector rejected {} data points: {}", accepted.rejected, accepted.message))
            }
            Ok(_) => {}
            Err(failure) => self.failed(&failure.message),
        }
    }

    fn encode(
        &self,
        request: &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
    ) -> std::io::Result<Bytes> {
        let plain = request.encode_to_vec();
        if !self.transport.wants_gzip_body() {
            return Ok(Bytes::from(plain));
        }
        let mut gz = GzEncoder::new(Vec::new(), Compression::new(GZIP_LEVEL));
        gz.write_all(&plain)?;
        gz.finish().map(Bytes::from)
    }

    fn failed(&mut self, message: &str) {
        Metrics::inc(&self.metrics.metric_exports_failed);
        if let Some(suppressed) = self.errors.check() {
            tracing::warn!(error = %message, suppressed_errors = suppressed, "exporting application metrics over OTLP failed");
        }
    }
}
