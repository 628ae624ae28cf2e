//! [`OtlpSink`]: each batch becomes one encoded request (gzipped for
//! http/protobuf when configured) sent once, retried as OTLP allows.
use std::{io::Write, sync::Arc, time::Duration};

use bytes::Bytes;
use flate2::{write::GzEncoder, Compression};
use tokio::time::Instant;

use super::{
    encode::Encoder,
    transport::{Accepted, SendFailure, Transport},
};
use crate::{
    config::{OtlpConfig, OtlpProtocol},
    export::{sink::Closing, ExportError, SpanSink},
    metrics::Metrics,
    model::FinishedSpan,
};

/// gzip level for http/protobuf bodies. Measured on realistic spans
/// (`tests::encode_bench`): level 1 costs ~0.3 µs per span for 40 bytes,
/// level 6 (gzip's default, fixed by tonic for gRPC) ~1.7 µs for 35 bytes,
/// against ~0.4 µs to encode the span in the first place.
const GZIP_LEVEL: u32 = 1;
/// A collector's partial-success message is cut to this many characters in
/// our error (it is logged).
const MAX_COLLECTOR_MESSAGE_CHARS: usize = 200;
/// While the collector is unreachable (or keeps answering "try later") the
/// batch in hand is held and sent again after a pause growing from
/// `FIRST_HOLD_PAUSE` to `MAX_HOLD_PAUSE`, for at most `MAX_HOLD` per batch
/// (the OpenTelemetry Collector's `retry_on_failure` default). Meanwhile the
/// pipeline keeps queueing up to `--max-queued-spans` and counts what it
/// drops beyond: memory stays bounded, and what the queue holds is delivered
/// once the collector is back, instead of being thrown away batch after
/// batch at the retry rate.
const FIRST_HOLD_PAUSE: Duration = Duration::from_secs(1);
const MAX_HOLD_PAUSE: Duration = Duration::from_secs(5);
const MAX_HOLD: Duration = Duration::from_secs(300);

pub struct OtlpSink {
    transport: Transport,
    encoder: Encoder,
    timeout: Duration,
    /// The protobuf encoding of the current batch; kept across batches so
    /// its capacity is reused.
    plain: Vec<u8>,
    /// Its gzip form for http/protobuf with compression; kept likewise.
    packed: Vec<u8>,
    metrics: Arc<Metrics>,
    closing: Arc<Closing>,
    /// Since when the collector has been unreachable, if it is.
    outage_since: Option<Instant>,
}

impl OtlpSink {
    /// Builds the shared transport; connections are opened lazily, so a
    /// collector that is down at start-up is not an error.
    pub fn new(config: &OtlpConfig, metrics: Arc<Metrics>, closing: Arc<Closing>) -> Result<OtlpSink, ExportError> {
        let transport = Transport::new(config)?;
        if config.protocol == OtlpProtocol::HttpProtobuf && config.endpoint.contains(":4317") {
            tracing::warn!(endpoint = %config.endpoint, "port 4317 is the usual OTLP/gRPC port, but the protocol is http/protobuf (set --otlp-protocol grpc)");
        }
        Ok(OtlpSink {
            transport,
            encoder: Encoder::new(),
            timeout: config.timeout,
            plain: Vec::new(),
            packed: Vec::new(),
            metrics,
            closing,
            outage_since: None,
        })
    }

    /// Distinct resources with a cached encoding (for tests and metrics).
    pub fn cached_resources(&self) -> usize {
        self.encoder.cached_resources()
    }

    /// Capacity of the buffers kept for the next batch.
    #[cfg(test)]
    pub(super) fn kept_buffer_bytes(&self) -> usize {
        self.plain.capacity() + self.packed.capacity()
    }

    /// The batch as the bytes to send. The buffer moves into the returned
    /// `Bytes`; [`OtlpSink::reclaim`] takes it back once sent.
    fn encode(&mut self, batch: &[FinishedSpan]) -> Result<Bytes, String> {
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        self.encoder.encode(batch, &mut plain);
        if !self.transport.wants_gzip_body() {
            return Ok(Bytes::from(plain));
        }
        let mut packed = std::mem::take(&mut self.packed);
        packed.clear();
        let mut gz = GzEncoder::new(packed, Compression::new(GZIP_LEVEL));
        let written = gz.write_all(&plain).and_then(|()| gz.finish());
        self.plain = plain;
        written.map(Bytes::from).map_err(|e| format!("gzip: {e}"))
    }

    /// Takes the body's buffer back for the next batch when nothing else
    /// holds it any more (the transport has dropped its copies).
    fn reclaim(&mut self, body: Bytes) {
        if let Ok(buffer) = body.try_into_mut() {
            let buffer = Vec::from(buffer);
            if self.transport.wants_gzip_body() {
                self.packed = buffer;
            } else {
                self.plain = buffer;
            }
        }
    }

    /// Sends `body`, holding it through a collector outage (see `MAX_HOLD`).
    async fn send_holding(&mut self, body: &Bytes, spans: usize) -> Result<Accepted, SendFailure> {
        // The retries stop within the timeout, but an attempt started near
        // its end may run one more timeout: this is the hard stop so one
        // stuck request can't wedge the exporter.
        let hard_limit = self.timeout * 2 + Duration::from_secs(1);
        let held_since = Instant::now();
        let mut pause = FIRST_HOLD_PAUSE;
        loop {
            if self.outage_since.is_some() && self.closing.is_closed() {
                // Shutting down with the collector still away: no more tries.
                return Err(SendFailure {
                    message: "the collector was unreachable when the agent stopped".into(),
                    retryable: false,
                });
            }
            let sent = tokio::time::timeout(
                hard_limit,
                self.transport.send(body, self.timeout, &self.metrics.otlp_attempts_failed),
            )
            .await
            .unwrap_or_else(|_| {
                Metrics::inc(&self.metrics.otlp_attempts_failed);
                Err(SendFailure { message: format!("no answer within {hard_limit:?}"), retryable: true })
            });
            let failure = match sent {
                Err(failure) if failure.retryable => failure,
                other => {
                    if let Some(since) = self.outage_since.take() {
                        tracing::info!(
                            after_s = since.elapsed().as_secs(),
                            "the OTLP collector answers again: sending what the export queue held"
                        );
                    }
                    return other;
                }
            };
            if self.outage_since.is_none() {
                self.outage_since = Some(Instant::now());
                tracing::warn!(
                    error = %failure.message,
                    spans,
                    hold_s = MAX_HOLD.as_secs(),
                    "the OTLP collector is unreachable: holding this batch and retrying it every few seconds; \
                     new spans wait in the export queue up to --max-queued-spans, then are dropped and counted"
                );
            }
            if held_since.elapsed() + pause > MAX_HOLD {
                return Err(failure);
            }
            if self.closing.pause(pause).await {
                return Err(failure);
            }
            pause = (pause * 2).min(MAX_HOLD_PAUSE);
        }
    }
}

/// The collector's text, on one line and bounded.
fn clean(message: &str) -> String {
    message.chars().take(MAX_COLLECTOR_MESSAGE_CHARS).map(|c| if c.is_control() { ' ' } else { c }).collect()
}

impl SpanSink for OtlpSink {
    async fn export(&mut self, batch: Vec<FinishedSpan>) -> Result<(), ExportError> {
        let spans = batch.len();
        if spans == 0 {
            return Ok(());
        }
        let body = self.encode(&batch).map_err(|message| ExportError::Otlp { spans, message })?;
        drop(batch);
        let sent = self.send_holding(&body, spans).await;
        self.reclaim(body);
        match sent {
            Ok(accepted) if accepted.rejected > 0 => Err(ExportError::Otlp {
                spans: usize::try_from(accepted.rejected).unwrap_or(usize::MAX),
                message: format!(
                    "the collector rejected {} of {spans} spans: {}",
                    accepted.rejected,
                    clean(&accepted.message)
                ),
            }),
            Ok(accepted) => {
                if !accepted.message.is_empty() {
                    tracing::debug!(message = %clean(&accepted.message), "the collector accepted the spans with a warning");
                }
                Ok(())
            }
            Err(SendFailure { message, .. }) => Err(ExportError::Otlp { spans, message }),
        }
    }

    /// Batches are sent whole within `export`: nothing is left to flush.
    async fn shutdown(&mut self) -> Result<(), ExportError> {
        Ok(())
    }
}
