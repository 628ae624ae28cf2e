//! The export task: a bounded queue from the pipeline, batching by size and
//! time, and the configured sinks behind it.
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot, Notify},
    task::JoinHandle,
};

use super::{
    otlp,
    sink::Closing,
    stdout,
    waterfall::{spawn_tree_printer, SharedRecentTraces, TraceSpan, TreePrinter},
    ExportError, RateLimitedLog, SpanSink,
};
use crate::{
    config::{Config, PrintFormat},
    metrics::Metrics,
    model::FinishedSpan,
    span_metrics::SpanMetrics,
};

/// Export failures are logged at most this often (with a count of the
/// suppressed ones), never per span or per batch.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchSettings {
    pub queue: usize,
    pub max_batch: usize,
    pub interval: Duration,
}

impl BatchSettings {
    fn from_config(config: &Config) -> BatchSettings {
        BatchSettings {
            queue: config.max_queued_spans.max(1),
            max_batch: config.max_export_batch.max(1),
            interval: config.export_interval,
        }
    }
}

/// The pipeline's side of the exporter.
pub struct ExportHandle {
    metrics: Arc<Metrics>,
    /// None when there is nowhere to send spans (OTEL_SDK_DISABLED).
    inner: Option<Running>,
}

struct Running {
    tx: mpsc::Sender<FinishedSpan>,
    /// Rung when a full batch is queued: the exporter sleeps while a batch
    /// fills instead of waking for every span (a task wake-up, often a
    /// thread switch, cost more than the span's own export).
    batch_ready: Arc<Notify>,
    /// Spans the batch being filled still has room for.
    room: Arc<AtomicUsize>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ExportError>>,
    /// Spans of the batch currently inside a sink, for the shutdown count.
    in_flight: Arc<AtomicUsize>,
    closing: Arc<Closing>,
}

/// Starts the export stage described by `config`: the terminal printer if
/// `config.print` is set, OTLP if `config.otlp` is. Must be called from
/// within a tokio runtime (the exporter task and the gRPC channel live there).
pub fn spawn_exporter(config: &Config, metrics: Arc<Metrics>) -> Result<ExportHandle, ExportError> {
    spawn_exporter_with(config, metrics, None, None)
}

/// [`spawn_exporter`], with every exported span also kept in `recent` (for
/// `waggle trace`) and every batch counted into `span_metrics` before it
/// goes to the sinks.
pub fn spawn_exporter_with(
    config: &Config,
    metrics: Arc<Metrics>,
    recent: Option<SharedRecentTraces>,
    span_metrics: Option<Arc<SpanMetrics>>,
) -> Result<ExportHandle, ExportError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
    let _guard = runtime.enter();
    let (printer, tree) = match config.print {
        Some(PrintFormat::Tree) => (None, Some(spawn_tree_printer(metrics.clone()))),
        Some(format) => (Some(stdout::PrintSink::stdout(format)), None),
        None => (None, None),
    };
    let closing = Arc::new(Closing::default());
    let otlp = match &config.otlp {
        Some(otlp) => Some(otlp::OtlpSink::new(otlp, metrics.clone(), closing.clone())?),
        None => None,
    };
    if let Some(otlp) = &config.otlp {
        tracing::info!(endpoint = %otlp.endpoint, protocol = %otlp.protocol, timeout_ms = otlp.timeout.as_millis() as u64, "exporting spans over OTLP");
    }
    if printer.is_none() && tree.is_none() && otlp.is_none() && recent.is_none() {
        if span_metrics.is_none() {
            tracing::warn!("no OTLP endpoint and printing is off: spans are discarded (counted as sampled out)");
            return Ok(ExportHandle { metrics, inner: None });
        }
        tracing::info!("no OTLP endpoint and printing is off: spans only feed the application metrics");
    }
    let sinks = Sinks { printer, tree, recent, otlp, print_errors: RateLimitedLog::new(ERROR_LOG_INTERVAL) };
    Ok(spawn_batcher(sinks, BatchSettings::from_config(config), metrics, closing, span_metrics))
}

/// Starts the batching task in front of `sink` (tests pass their own sinks).
#[cfg(test)]
pub(crate) fn spawn_with_sink<S: SpanSink + 'static>(
    sink: S,
    settings: BatchSettings,
    metrics: Arc<Metrics>,
    closing: Arc<Closing>,
) -> ExportHandle {
    spawn_batcher(sink, settings, metrics, closing, None)
}

fn spawn_batcher<S: SpanSink + 'static>(
    sink: S,
    settings: BatchSettings,
    metrics: Arc<Metrics>,
    closing: Arc<Closing>,
    span_metrics: Option<Arc<SpanMetrics>>,
) -> ExportHandle {
    let (tx, rx) = mpsc::channel(settings.queue);
    let (stop_tx, stop_rx) = oneshot::channel();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let batch_ready = Arc::new(Notify::new());
    let room = Arc::new(AtomicUsize::new(settings.max_batch));
    let task = tokio::spawn(run_batcher(
        sink,
        Queue { rx, batch_ready: batch_ready.clone(), room: room.clone() },
        stop_rx,
        settings,
        metrics.clone(),
        in_flight.clone(),
        span_metrics,
    ));
    let running = Running { tx, batch_ready, room, stop: stop_tx, task, in_flight, closing };
    ExportHandle { metrics, inner: Some(running) }
}

impl ExportHandle {
    /// Never blocks; when the bounded queue (config.max_queued_spans) is full
    /// the span is dropped and metrics.spans_dropped_queue_full is incremented.
    pub fn send(&self, span: FinishedSpan) {
        let Some(running) = &self.inner else {
            Metrics::inc(&self.metrics.spans_sampled_out);
            return;
        };
        // Closed only if the exporter task died: the span is lost all the same.
        if running.tx.try_send(span).is_err() {
            Metrics::inc(&self.metrics.spans_dropped_queue_full);
            return;
        }
        if queued(&running.tx) >= running.room.load(Ordering::SeqCst) {
            running.batch_ready.notify_one();
        }
    }

    /// Spans waiting in the queue (not counting the batch being exported).
    pub fn queued(&self) -> usize {
        self.inner.as_ref().map_or(0, |r| queued(&r.tx))
    }

    /// Flush everything queued and shut the sinks down, giving up after
    /// `timeout`; spans still unsent then are counted in spans_export_failed.
    pub async fn shutdown(self, timeout: Duration) -> Result<(), ExportError> {
        let Some(Running { tx, stop, mut task, in_flight, closing, .. }) = self.inner else { return Ok(()) };
        // A batch held for a collector that is down is given up at once.
        closing.close();
        // Err means the task already ended; joining it reports why.
        let _ = stop.send(());
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(ExportError::Task(join.to_string())),
            Err(_) => {
                let pending = queued(&tx) + in_flight.load(Ordering::Relaxed);
                task.abort();
                Metrics::add(&self.metrics.spans_export_failed, pending as u64);
                Err(ExportError::ShutdownTimeout { timeout, pending })
            }
        }
    }
}

/// Spans in the queue (permits taken).
fn queued(tx: &mpsc::Sender<FinishedSpan>) -> usize {
    tx.max_capacity() - tx.capacity()
}

/// The exporter's side of the queue.
struct Queue {
    rx: mpsc::Receiver<FinishedSpan>,
    batch_ready: Arc<Notify>,
    room: Arc<AtomicUsize>,
}

impl Queue {
    /// Moves what is queued into `batch`, up to `max` spans, without waiting.
    fn take_ready(&mut self, batch: &mut Vec<FinishedSpan>, max: usize) {
        while batch.len() < max {
            match self.rx.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) => break,
            }
        }
    }
}

async fn run_batcher<S: SpanSink>(
    mut sink: S,
    mut queue: Queue,
    mut stop: oneshot::Receiver<()>,
    settings: BatchSettings,
    metrics: Arc<Metrics>,
    in_flight: Arc<AtomicUsize>,
    span_metrics: Option<Arc<SpanMetrics>>,
) -> Result<(), ExportError> {
    let mut errors = RateLimitedLog::new(ERROR_LOG_INTERVAL);
    let mut stopping = false;
    let mut batch: Vec<FinishedSpan> = Vec::with_capacity(settings.max_batch);
    loop {
        if !stopping {
            // Wait for the first span of a batch.
            tokio::select! {
                biased;
                _ = &mut stop => {
                    // After close() the receiver still yields what is queued.
                    stopping = true;
                    queue.rx.close();
                }
                n = queue.rx.recv_many(&mut batch, settings.max_batch) => {
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        if stopping {
            let room = settings.max_batch - batch.len();
            if room > 0 && queue.rx.recv_many(&mut batch, room).await == 0 && batch.is_empty() {
                break;
            }
        } else {
            // Fill the batch until it is full or the first span has waited
            // export_interval, asleep meanwhile: the sender rings
            // `batch_ready` once a full batch is queued.
            let deadline = tokio::time::Instant::now() + settings.interval;
            loop {
                queue.take_ready(&mut batch, settings.max_batch);
                if batch.len() >= settings.max_batch {
                    break;
                }
                queue.room.store(settings.max_batch - batch.len(), Ordering::SeqCst);
                // A span queued between take_ready and the store above
                // finds the old, larger room and does not ring: look again.
                // (Were a ring still missed, the batch would go out at the
                // deadline: late, never lost.)
                if queue.rx.len() >= settings.max_batch - batch.len() {
                    continue;
                }
                tokio::select! {
                    biased;
                    _ = &mut stop => {
                        stopping = true;
                        queue.rx.close();
                        break;
                    }
                    _ = queue.batch_ready.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => {
                        queue.take_ready(&mut batch, settings.max_batch);
                        break;
                    }
                }
            }
            // While this batch is exported, senders need not ring.
            queue.room.store(settings.max_batch, Ordering::SeqCst);
        }
        if batch.is_empty() {
            continue;
        }
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(settings.max_batch));
        // Counted before the sinks: a collector that is down must not
        // take the metrics with it.
        if let Some(span_metrics) = &span_metrics {
            span_metrics.record(&spans);
        }
        export_one(&mut sink, spans, &metrics, &in_flight, &mut errors).await;
    }
    sink.shutdown().await
}

async fn export_one<S: SpanSink>(
    sink: &mut S,
    batch: Vec<FinishedSpan>,
    metrics: &Metrics,
    in_flight: &AtomicUsize,
    errors: &mut RateLimitedLog,
) {
    let n = batch.len();
    in_flight.store(n, Ordering::Relaxed);
    let result = sink.export(batch).await;
    in_flight.store(0, Ordering::Relaxed);
    match result {
        Ok(()) => Metrics::add(&metrics.spans_exported, n as u64),
        Err(e) => {
            let failed = e.failed_spans(n);
            Metrics::add(&metrics.spans_export_failed, failed as u64);
            Metrics::add(&metrics.spans_exported, (n - failed) as u64);
            if let Some(suppressed) = errors.check() {
                tracing::warn!(error = %e, failed, suppressed_errors = suppressed, "exporting spans failed");
            }
        }
    }
}

/// The configured sinks. With OTLP, OTLP decides what counts as exported;
/// printing is then a side view whose failures are only logged.
struct Sinks {
    printer: Option<stdout::PrintSink>,
    tree: Option<TreePrinter>,
    recent: Option<SharedRecentTraces>,
    otlp: Option<otlp::OtlpSink>,
    print_errors: RateLimitedLog,
}

impl Sinks {
    /// The waterfall's view of the batch, for the tree printer and the ring
    /// of recent traces (one lock per batch).
    fn keep_trace_views(&self, batch: &[FinishedSpan]) {
        if self.tree.is_none() && self.recent.is_none() {
            return;
        }
        let views: Vec<TraceSpan> = batch.iter().map(TraceSpan::of).collect();
        match (&self.tree, &self.recent) {
            (Some(tree), Some(recent)) => {
                recent.with(|ring| views.iter().cloned().for_each(|v| ring.insert(v)));
                tree.send(views);
            }
            (Some(tree), None) => tree.send(views),
            (None, Some(recent)) => {
                recent.with(|ring| views.into_iter().for_each(|v| ring.insert(v)));
            }
            (None, None) => {}
        }
    }
}

impl SpanSink for Sinks {
    async fn export(&mut self, batch: Vec<FinishedSpan>) -> Result<(), ExportError> {
        self.keep_trace_views(&batch);
        let batch = match &self.printer {
            Some(printer) => {
                let (batch, result) = printer.print(batch).await;
                let (Some(batch), Some(_)) = (batch, &self.otlp) else {
                    // Print-only, or the batch died with the writer thread.
                    return result;
                };
                if let Err(e) = result {
                    if let Some(suppressed) = self.print_errors.check() {
                        tracing::warn!(error = %e, suppressed_errors = suppressed, "printing spans failed");
                    }
                }
                batch
            }
            None => batch,
        };
        match &mut self.otlp {
            Some(otlp) => otlp.export(batch).await,
            None => Ok(()),
        }
    }

    async fn shutdown(&mut self) -> Result<(), ExportError> {
        if let Some(tree) = self.tree.take() {
            tree.finish().await;
        }
        match &mut self.otlp {
            Some(otlp) => otlp.shutdown().await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        sync::{atomic::Ordering, Mutex},
        time::UNIX_EPOCH,
    };

    use tokio::sync::Notify;

    use super::*;
    use crate::model::{AttrValue, ProcessResource, SpanKind, SpanStatus};
    use std::time::Instant;

    pub(crate) fn span(name: &str) -> FinishedSpan {
        let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        FinishedSpan {
            resource: Arc::new(ProcessResource {
                service_name: "python-app".into(),
                pid: 4242,
                executable_name: "python3".into(),
                attributes: vec![("host.name".into(), "node-1".into())],
            }),
            trace_id: [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36],
            span_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
            parent_span_id: None,
            tracestate: None,
            sampled: true,
            kind: SpanKind::Server,
            name: name.to_owned().into(),
            start,
            end: start + Duration::from_micros(12_345),
            status: SpanStatus::Unset,
            attributes: vec![("http.response.status_code", AttrValue::Int(200))],
        }
    }

    /// Records batches; optionally blocks every export until released.
    #[derive(Clone, Default)]
    struct TestSink {
        batches: Arc<Mutex<Vec<Vec<String>>>>,
        gate: Option<Arc<Notify>>,
        fail: bool,
        shut_down: Arc<AtomicUsize>,
    }

    impl SpanSink for TestSink {
        async fn export(&mut self, batch: Vec<FinishedSpan>) -> Result<(), ExportError> {
            self.batches.lock().unwrap().push(batch.iter().map(|s| s.name.to_string()).collect());
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            if self.fail {
                return Err(ExportError::Otlp { spans: batch.len(), message: "collector down".into() });
            }
            Ok(())
        }

        async fn shutdown(&mut self) -> Result<(), ExportError> {
            self.shut_down.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn settings(queue: usize, max_batch: usize, interval_ms: u64) -> BatchSettings {
        BatchSettings { queue, max_batch, interval: Duration::from_millis(interval_ms) }
    }

    fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn batches_by_size_and_flushes_on_shutdown() {
        let metrics = Arc::new(Metrics::default());
        let sink = TestSink::default();
        // Long interval: only size and shutdown can end a batch.
        let handle = spawn_with_sink(sink.clone(), settings(100, 4, 60_000), metrics.clone(), Arc::default());
        for i in 0..10 {
            handle.send(span(&format!("s{i}")));
        }
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
        let batches = sink.batches.lock().unwrap().clone();
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![4, 4, 2], "{batches:?}");
        let names: Vec<String> = batches.concat();
        assert_eq!(names, (0..10).map(|i| format!("s{i}")).collect::<Vec<_>>(), "order kept");
        assert_eq!(get(&metrics.spans_exported), 10);
        assert_eq!(get(&metrics.spans_dropped_queue_full), 0);
        assert_eq!(sink.shut_down.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn partial_batch_goes_out_after_the_interval() {
        let metrics = Arc::new(Metrics::default());
        let sink = TestSink::default();
        let handle = spawn_with_sink(sink.clone(), settings(100, 512, 300), metrics.clone(), Arc::default());
        let sent = Instant::now();
        handle.send(span("lonely"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(sink.batches.lock().unwrap().is_empty(), "a partial batch waits for the interval");
        while sink.batches.lock().unwrap().is_empty() {
            assert!(sent.elapsed() < Duration::from_secs(10), "partial batch never exported");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(sent.elapsed() >= Duration::from_millis(300));
        assert_eq!(sink.batches.lock().unwrap().clone(), vec![vec!["lonely".to_owned()]]);
        while get(&metrics.spans_exported) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        handle.shutdown(Duration::from_secs(1)).await.unwrap();
        assert_eq!(get(&metrics.spans_exported), 1);
    }

    #[tokio::test]
    async fn a_full_batch_goes_out_at_once_although_the_exporter_sleeps_while_it_fills() {
        let metrics = Arc::new(Metrics::default());
        let sink = TestSink::default();
        // Long interval: only a full batch can end it early.
        let handle = spawn_with_sink(sink.clone(), settings(100, 4, 60_000), metrics.clone(), Arc::default());
        let started = Instant::now();
        for i in 0..4 {
            handle.send(span(&format!("s{i}")));
            // One span at a time, so the exporter is asleep in between.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while sink.batches.lock().unwrap().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10), "the full batch was not exported");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(sink.batches.lock().unwrap()[0], vec!["s0", "s1", "s2", "s3"]);
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
        assert_eq!(get(&metrics.spans_exported), 4);
    }

    #[tokio::test]
    async fn blocked_sink_leads_to_counted_drops_not_unbounded_memory() {
        let metrics = Arc::new(Metrics::default());
        let gate = Arc::new(Notify::new());
        let sink = TestSink { gate: Some(gate.clone()), ..Default::default() };
        let handle = spawn_with_sink(sink.clone(), settings(8, 4, 1), metrics.clone(), Arc::default());
        handle.send(span("first"));
        // Let the task take the first span into a batch and block in the sink.
        while sink.batches.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let in_sink = sink.batches.lock().unwrap()[0].len();
        for i in 0..1000 {
            handle.send(span(&format!("s{i}")));
        }
        assert_eq!(handle.queued(), 8, "queue never grows past its bound");
        assert_eq!(get(&metrics.spans_dropped_queue_full), 1000 - 8);
        assert_eq!(get(&metrics.spans_exported), 0);

        // A sink that never finishes: shutdown gives up and counts the rest.
        let err = handle.shutdown(Duration::from_millis(50)).await.unwrap_err();
        match err {
            ExportError::ShutdownTimeout { pending, .. } => assert_eq!(pending, 8 + in_sink),
            other => panic!("unexpected {other}"),
        }
        assert_eq!(get(&metrics.spans_export_failed), (8 + in_sink) as u64);
        // Every span is accounted for exactly once.
        let total = get(&metrics.spans_dropped_queue_full) + get(&metrics.spans_export_failed);
        assert_eq!(total, 1001);
    }

    #[tokio::test]
    async fn failed_exports_are_counted_not_fatal() {
        let metrics = Arc::new(Metrics::default());
        let sink = TestSink { fail: true, ..Default::default() };
        let handle = spawn_with_sink(sink.clone(), settings(100, 3, 60_000), metrics.clone(), Arc::default());
        for i in 0..7 {
            handle.send(span(&format!("s{i}")));
        }
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
        assert_eq!(get(&metrics.spans_export_failed), 7);
        assert_eq!(get(&metrics.spans_exported), 0);
        assert_eq!(sink.batches.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn no_sinks_counts_spans_as_sampled_out() {
        let metrics = Arc::new(Metrics::default());
        let config = Config { print: None, otlp: None, ..Config::default() };
        let handle = spawn_exporter(&config, metrics.clone()).unwrap();
        handle.send(span("x"));
        assert_eq!(get(&metrics.spans_sampled_out), 1);
        handle.shutdown(Duration::from_secs(1)).await.unwrap();
    }

    #[test]
    fn spawn_outside_runtime_is_an_error() {
        let metrics = Arc::new(Metrics::default());
        assert!(matches!(spawn_exporter(&Config::default(), metrics), Err(ExportError::NoRuntime)));
    }
}
