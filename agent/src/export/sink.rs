//! What an exporter is ([`SpanSink`]), how exporting fails
//! ([`ExportError`]), and the rate limit on logging those failures.
use std::{
    future::Future,
    time::{Duration, Instant},
};

use crate::model::FinishedSpan;

/// Where finished spans go. `export` receives batches; `shutdown` flushes.
pub trait SpanSink: Send {
    /// On error, [`ExportError::failed_spans`] tells how many of the batch
    /// were lost (OTLP may deliver some resources' spans and not others).
    fn export(&mut self, batch: Vec<FinishedSpan>) -> impl Future<Output = Result<(), ExportError>> + Send;
    fn shutdown(&mut self) -> impl Future<Output = Result<(), ExportError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("exporting {spans} spans over OTLP: {message}")]
    Otlp { spans: usize, message: String },
    #[error("writing spans to stdout: {0}")]
    Stdout(#[from] std::io::Error),
    #[error("setting up the OTLP transport to {endpoint}: {message}")]
    Transport { endpoint: String, message: String },
    #[error("starting the exporter: not called from within a tokio runtime")]
    NoRuntime,
    #[error("flushing spans at shutdown: gave up after {timeout:?} with {pending} spans unsent")]
    ShutdownTimeout { timeout: Duration, pending: usize },
    #[error("exporter task failed: {0}")]
    Task(String),
}

impl ExportError {
    /// How many spans of a batch of `batch_len` this error lost.
    pub fn failed_spans(&self, batch_len: usize) -> usize {
        match self {
            ExportError::Otlp { spans, .. } => (*spans).min(batch_len),
            _ => batch_len,
        }
    }
}

/// Raised when the exporter shuts down. A sink that holds a batch for a
/// collector that is down gives it up then (counted as failed) instead of
/// waiting out its retry pauses.
#[derive(Debug, Default)]
pub struct Closing {
    closed: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl Closing {
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Sleeps for `pause`, or less when closing starts; true if it did.
    pub async fn pause(&self, pause: Duration) -> bool {
        let woken = self.wake.notified();
        tokio::pin!(woken);
        // Registered before the flag is read: a close() in between wakes it.
        woken.as_mut().enable();
        if self.is_closed() {
            return true;
        }
        tokio::select! {
            _ = woken => true,
            _ = tokio::time::sleep(pause) => self.is_closed(),
        }
    }
}

/// Logs at most once per interval; counts what it held back.
#[derive(Debug)]
pub(crate) struct RateLimitedLog {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    pub(crate) fn new(every: Duration) -> RateLimitedLog {
        RateLimitedLog { every, last: None, suppressed: 0 }
    }

    /// Some(number of suppressed events since the last log) when the caller
    /// should log now.
    pub(crate) fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_log_counts_suppressed() {
        let mut log = RateLimitedLog::new(Duration::from_secs(3600));
        assert_eq!(log.check(), Some(0));
        assert_eq!(log.check(), None);
        assert_eq!(log.check(), None);
        assert_eq!(log.suppressed, 2);
        let mut log = RateLimitedLog::new(Duration::ZERO);
        assert_eq!(log.check(), Some(0));
        assert_eq!(log.check(), Some(0));
    }
}
