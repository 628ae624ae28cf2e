//! `--print tree`: spans wait, grouped by trace, until the trace looks
//! complete, then the trace is printed as one waterfall.
//!
//! Spans are exported as they end, so a trace's root (a span without a
//! parent) normally arrives last; the trace is printed [`GRACE`] after it,
//! which leaves time for spans of other processes still on their way. A
//! trace whose root is not traced here (the caller runs elsewhere) is
//! printed once no span of it arrived for [`IDLE`]. Spans arriving after
//! their trace was printed start a new group, printed the same way.
use std::{
    collections::{HashMap, VecDeque},
    io::Write,
    sync::Arc,
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

use super::{colour_stdout, render_trace, RenderOptions, TraceSpan};
use crate::{export::RateLimitedLog, metrics::Metrics};

/// After a trace's root arrived, how long other spans may still join it.
pub const GRACE: Duration = Duration::from_millis(500);
/// A trace without a root here is printed after this long without news.
pub const IDLE: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(100);
/// Traces waiting at once; past it the oldest is printed early (counted).
const MAX_PENDING_TRACES: usize = 4096;
/// Spans held per trace and in all; past them spans are counted, not held
/// (a waterfall shows a few dozen lines anyway).
const MAX_SPANS_PER_TRACE: usize = 1000;
const MAX_HELD_SPANS: usize = 100_000;
/// Batches in flight from the exporter to the printer.
const QUEUE_BATCHES: usize = 64;

struct Pending {
    spans: Vec<TraceSpan>,
    not_kept: usize,
    last_seen: Instant,
    root_seen: Option<Instant>,
}

/// A trace ready to print: its spans and how many more were not held.
type Ready = (Vec<TraceSpan>, usize);

/// Spans grouped by trace until each trace is ready to print.
pub(crate) struct Grouper {
    pending: HashMap<[u8; 16], Pending, foldhash::fast::RandomState>,
    /// Creation order of the pending traces, for printing the oldest early.
    arrival: VecDeque<[u8; 16]>,
    held: usize,
    metrics: Arc<Metrics>,
}

impl Grouper {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Grouper {
        Grouper { pending: HashMap::default(), arrival: VecDeque::new(), held: 0, metrics }
    }

    /// Holds `span`; returns a trace printed early to make room, if any.
    pub(crate) fn add(&mut self, span: TraceSpan, now: Instant) -> Option<Ready> {
        let mut early = None;
        if !self.pending.contains_key(&span.trace_id) && self.pending.len() >= MAX_PENDING_TRACES {
            early = self.arrival.pop_front().and_then(|id| self.take(&id));
            Metrics::inc(&self.metrics.tree_traces_printed_early);
        }
        let trace = self.pending.entry(span.trace_id).or_insert_with(|| {
            self.arrival.push_back(span.trace_id);
            Pending { spans: Vec::new(), not_kept: 0, last_seen: now, root_seen: None }
        });
        trace.last_seen = now;
        if span.parent_span_id.is_none() {
            trace.root_seen = Some(now);
        }
        if trace.spans.len() >= MAX_SPANS_PER_TRACE || self.held >= MAX_HELD_SPANS {
            trace.not_kept += 1;
            Metrics::inc(&self.metrics.tree_spans_not_kept);
        } else {
            trace.spans.push(span);
            self.held += 1;
        }
        early
    }

    fn take(&mut self, id: &[u8; 16]) -> Option<Ready> {
        let trace = self.pending.remove(id)?;
        self.held -= trace.spans.len();
        Some((trace.spans, trace.not_kept))
    }

    /// The traces ready at `now` (all of them when `all`), oldest first.
    pub(crate) fn take_ready(&mut self, now: Instant, all: bool) -> Vec<Ready> {
        let is_ready = |t: &Pending| {
            all || t.root_seen.is_some_and(|root| now.duration_since(root) >= GRACE)
                || now.duration_since(t.last_seen) >= IDLE
        };
        let ids: Vec<[u8; 16]> = self.pending.iter().filter(|(_, t)| is_ready(t)).map(|(id, _)| *id).collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let mut ready: Vec<Ready> = ids.iter().filter_map(|id| self.take(id)).collect();
        let pending = &self.pending;
        self.arrival.retain(|id| pending.contains_key(id));
        ready.sort_by_key(|(spans, _)| spans.iter().map(|s| s.start).min());
        ready
    }
}

/// Where the waterfalls go.
#[derive(Clone)]
pub(crate) enum TreeOutput {
    Stdout,
    #[cfg(test)]
    Memory(Arc<std::sync::Mutex<Vec<u8>>>),
}

impl TreeOutput {
    fn write(&self, text: &str) -> std::io::Result<()> {
        match self {
            TreeOutput::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())?;
                out.flush()
            }
            #[cfg(test)]
            TreeOutput::Memory(buf) => {
                buf.lock()
                    .map_err(|_| std::io::Error::other("test buffer poisoned"))?
                    .extend_from_slice(text.as_bytes());
                Ok(())
            }
        }
    }
}

/// The exporter's side of the tree printer.
pub struct TreePrinter {
    tx: mpsc::Sender<Vec<TraceSpan>>,
    task: JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl TreePrinter {
    /// Never waits: a printer behind a paused terminal loses the batch,
    /// counted in `tree_spans_not_kept`, and the export goes on.
    pub fn send(&self, batch: Vec<TraceSpan>) {
        let n = batch.len() as u64;
        if self.tx.try_send(batch).is_err() {
            Metrics::add(&self.metrics.tree_spans_not_kept, n);
        }
    }

    /// Prints every trace still waiting and stops.
    pub async fn finish(self) {
        drop(self.tx);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "tree printer task failed");
        }
    }
}

pub fn spawn_tree_printer(metrics: Arc<Metrics>) -> TreePrinter {
    spawn_with_output(
        TreeOutput::Stdout,
        RenderOptions { colour: colour_stdout(), ..RenderOptions::default() },
        metrics,
    )
}

pub(crate) fn spawn_with_output(out: TreeOutput, opts: RenderOptions, metrics: Arc<Metrics>) -> TreePrinter {
    let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
    let task = tokio::spawn(run(rx, out, opts, metrics.clone()));
    TreePrinter { tx, task, metrics }
}

async fn run(mut rx: mpsc::Receiver<Vec<TraceSpan>>, out: TreeOutput, opts: RenderOptions, metrics: Arc<Metrics>) {
    let mut grouper = Grouper::new(metrics);
    let mut errors = RateLimitedLog::new(Duration::from_secs(10));
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ready = tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => {
                    let now = Instant::now();
                    batch.into_iter().filter_map(|span| grouper.add(span, now)).collect()
                }
                None => break,
            },
            _ = ticker.tick() => grouper.take_ready(Instant::now(), false),
        };
        print(&out, &opts, ready, &mut errors).await;
    }
    print(&out, &opts, grouper.take_ready(Instant::now(), true), &mut errors).await;
}

/// Renders on this task, writes on a blocking thread: a paused terminal
/// stalls only the printer (whose queue then fills), never a runtime worker.
async fn print(out: &TreeOutput, opts: &RenderOptions, ready: Vec<Ready>, errors: &mut RateLimitedLog) {
    if ready.is_empty() {
        return;
    }
    let mut text = String::new();
    for (spans, not_kept) in &ready {
        render_trace(spans, *not_kept, opts, &mut text);
        text.push('\n');
    }
    let out = out.clone();
    let result = match tokio::task::spawn_blocking(move || out.write(&text)).await {
        Ok(result) => result,
        Err(e) => Err(std::io::Error::other(e.to_string())),
    };
    if let Err(e) = result {
        if let Some(suppressed) = errors.check() {
            tracing::warn!(error = %e, suppressed_errors = suppressed, "printing traces failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::tests::span;

    fn row(trace: u8, id: u8, parent: Option<u8>) -> TraceSpan {
        let mut s = TraceSpan::of(&span("GET /"));
        s.trace_id = [trace; 16];
        s.span_id = [id; 8];
        s.parent_span_id = parent.map(|p| [p; 8]);
        s
    }

    #[test]
    fn a_trace_waits_for_its_root_plus_grace_or_for_silence() {
        let mut g = Grouper::new(Arc::new(Metrics::default()));
        let t = Instant::now();
        assert!(g.add(row(1, 2, Some(1)), t).is_none());
        assert!(g.add(row(2, 5, Some(9)), t).is_none());
        assert!(g.add(row(1, 1, None), t + Duration::from_millis(10)).is_none());
        assert!(g.take_ready(t + Duration::from_millis(200), false).is_empty(), "root seen, grace not over");
        let ready = g.take_ready(t + Duration::from_millis(10) + GRACE, false);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].0.iter().map(|s| s.span_id[0]).collect::<Vec<_>>(), [2, 1]);
        // Trace 2's root is elsewhere: printed once nothing came for IDLE.
        assert!(g.take_ready(t + IDLE - Duration::from_millis(1), false).is_empty());
        assert_eq!(g.take_ready(t + IDLE, false).len(), 1);
        assert_eq!((g.pending.len(), g.arrival.len(), g.held), (0, 0, 0));
    }

    #[test]
    fn limits_print_early_and_count_what_is_not_kept() {
        let metrics = Arc::new(Metrics::default());
        let mut g = Grouper::new(metrics.clone());
        let t = Instant::now();
        for i in 0..MAX_SPANS_PER_TRACE + 3 {
            g.add(row(1, (i % 250) as u8, Some(0)), t);
        }
        assert_eq!(metrics.tree_spans_not_kept.load(std::sync::atomic::Ordering::Relaxed), 3);
        let mut early = None;
        for i in 0..MAX_PENDING_TRACES as u32 {
            let mut s = row(0, 1, None);
            s.trace_id[..4].copy_from_slice(&(i + 10).to_le_bytes());
            early = early.or(g.add(s, t));
        }
        let (spans, not_kept) = early.expect("the oldest trace is printed to make room");
        assert_eq!((spans.len(), not_kept), (MAX_SPANS_PER_TRACE, 3));
        assert_eq!(metrics.tree_traces_printed_early.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(g.pending.len(), MAX_PENDING_TRACES);
        assert_eq!(g.take_ready(t, true).len(), MAX_PENDING_TRACES);
        assert_eq!(g.held, 0);
    }

    #[tokio::test]
    async fn the_printer_prints_each_trace_once_as_a_tree_and_flushes_at_finish() {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let printer =
            spawn_with_output(TreeOutput::Memory(buf.clone()), RenderOptions::default(), Arc::new(Metrics::default()));
        printer.send(vec![row(1, 2, Some(1)), row(1, 1, None)]);
        printer.send(vec![row(2, 7, Some(3))]);
        let printed = || String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let deadline = Instant::now() + IDLE;
        while !printed().contains("trace ") && Instant::now() < deadline {
            tokio::time::sleep(TICK).await;
        }
        // Trace 1's root came: printed after GRACE; trace 2 waits for IDLE.
        let text = printed();
        assert_eq!(text.matches("trace ").count(), 1, "{text}");
        assert!(text.starts_with(&format!("trace {} · 2 spans", "01".repeat(16))), "{text}");
        printer.finish().await;
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("trace ").count(), 2, "{text}");
        assert!(text.contains(&format!("trace {} · 1 span ", "02".repeat(16))), "{text}");
    }
}
