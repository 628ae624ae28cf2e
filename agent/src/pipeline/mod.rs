//! The agent's main loop: probes → intake → conntrack → parsers → assembly →
//! export. One task owns every stage's state, so the hot path takes no locks;
//! the exporter runs on its own task behind a bounded queue.
//!
//! This file is the loop and its stages; `env.rs` is what the connection
//! tracker asks of the kernel and /proc, `seed.rs` adopts sockets that
//! existed before the probes attached.
mod env;
#[cfg(any(test, feature = "fuzz"))]
mod fuzz;
mod seed;

#[cfg(any(test, feature = "fuzz"))]
pub use fuzz::fuzz_records;

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use waggle_common::Counter;

use self::env::LiveEnv;
use crate::{
    assembly::SpanAssembler,
    clock::Clock,
    config::Config,
    conntrack::{ConnSpan, ConnTracker},
    discovery::{self, Lookup, ResourceReplies, ResourceReply, ResourceResolver, SeedSocket, TlsLibrary, TlsScanner},
    export::{self, waterfall::SharedRecentTraces, ExportError, ExportHandle},
    health::Health,
    intake::{self, RawEvent, Started},
    linking::ContextLinker,
    metrics::Metrics,
    metrics_server::{self, Gauge, KernelCounterCell},
    model::{ConnMeta, ParsedSpan, ProcessResource, SpanIdentity},
    probes::{EventSource, ProbeConfig, ProbeError, Probes},
    protocols::ParserConfig,
    selection::{Decider, Selection},
    span_metrics::SpanMetrics,
};

/// Most records handled per wake-up before the loop yields to other work
/// (shutdown, ticks); the rest are taken on the next turn.
const DRAIN_BATCH: usize = 8192;
const TICK: Duration = Duration::from_secs(1);
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNS: usize = 65536;
/// Spans held for resources being built, at most; beyond, the loop builds
/// the resource itself (counted) rather than hold more.
const MAX_WAITING_SPANS: usize = 16384;
/// At shutdown, how long spans may still wait for the worker.
const SHUTDOWN_RESOURCE_WAIT: Duration = Duration::from_secs(2);

/// A finished span whose process's resource is still being built. Its
/// identity is decided when it finishes, as for any span: the linker's
/// state moves on while it waits.
struct Held {
    span: ParsedSpan,
    conn: Arc<ConnMeta>,
    identity: Option<SpanIdentity>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Probes(#[from] ProbeError),
    #[error("starting the exporter: {0}")]
    Export(#[from] ExportError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics_server::MetricsServerError),
    #[error("starting the trace-selection worker: {0}")]
    SelectionWorker(#[source] std::io::Error),
    #[error("waiting for kernel events: {0}")]
    Intake(#[source] std::io::Error),
}

struct Stages {
    tracker: ConnTracker,
    env: LiveEnv,
    assembler: SpanAssembler,
    linker: ContextLinker,
    resolver: ResourceResolver,
    /// The OTEL_* variables of each exec, for the resource worker.
    exec_env: discovery::SharedExecEnv,
    /// Spans waiting for their process's resource, per pid, in order.
    waiting: HashMap<u32, Vec<Held>, foldhash::fast::RandomState>,
    waiting_spans: usize,
    exporter: ExportHandle,
    metrics: Arc<Metrics>,
    pending: Vec<ConnSpan>,
    /// Latest kernel counters, published to the metrics endpoint.
    kernel_cell: KernelCounterCell,
    kernel_counters: Vec<(Counter, u64)>,
    /// The kernel reads each connection's socket (`Probes::reads_sockets`).
    reads_sockets: bool,
    /// Trace selection's worker, when rules are configured.
    selection: Option<Selection>,
    /// Finds the TLS libraries of processes that open connections.
    tls_scanner: Option<TlsScanner>,
    /// Kubernetes metadata, when on (for the pods-known gauge).
    pods: Option<Arc<crate::k8s::PodStore>>,
}

impl Stages {
    fn handle_record(&mut self, bytes: &[u8]) {
        Metrics::inc(&self.metrics.events_received);
        match intake::decode(bytes) {
            Err(e) => {
                Metrics::inc(&self.metrics.events_malformed);
                tracing::debug!(error = %e, "undecodable kernel record");
            }
            Ok(RawEvent::Data { header, payload }) => {
                self.tracker.on_data(&header, payload, &mut self.env, &mut self.pending)
            }
            Ok(RawEvent::DataCtx { started, header, payload }) => {
                match started {
                    Started::Server(ev) => self.linker.on_server_ctx(&ev),
                    Started::Client(ev) => self.linker.on_client_ctx(&ev),
                }
                self.tracker.on_data(&header, payload, &mut self.env, &mut self.pending)
            }
            Ok(RawEvent::ConnOpen(ev)) => {
                self.resolver.observe(ev.tgid, &ev.comm);
                if let Some(scanner) = &mut self.tls_scanner {
                    scanner.observe(ev.tgid);
                }
                self.tracker.on_open(&ev, &mut self.env)
            }
            Ok(RawEvent::ConnUnverified(ev)) => {
                self.resolver.observe(ev.tgid, &ev.comm);
                self.tracker.on_unverified(&ev, &mut self.env)
            }
            Ok(RawEvent::ConnClose(ev)) => self.tracker.on_close(&ev, &mut self.pending),
            Ok(RawEvent::ConnInherited(ev)) => self.tracker.on_inherit(&ev, ev.ts_ns),
            Ok(RawEvent::ProcessFork(ev)) => {
                self.linker.on_fork(ev.parent_tgid, ev.parent_tid, ev.tgid);
                if self.reads_sockets {
                    // Every connection the parent has was opened where the
                    // kernel saw it (or seeded at start-up): the tracker
                    // already knows what the child inherits.
                    self.tracker.on_fork(ev.parent_tgid, ev.tgid, &mut self.env, ev.ts_ns);
                } else {
                    let sockets = discovery::scan_process_sockets(ev.tgid);
                    self.seed(&sockets, ev.ts_ns);
                }
            }
            Ok(RawEvent::ThreadStart(ev)) => self.linker.on_thread_start(ev.tgid, ev.parent_tid, ev.tid),
            Ok(RawEvent::ProcessExec(ev)) => {
                if let Some(selection) = &self.selection {
                    selection.on_exec(ev.tgid);
                }
            }
            Ok(RawEvent::ExecEnv { header, service_name, resource_attributes }) => {
                if let Ok(mut table) = self.exec_env.lock() {
                    table.record(&discovery::ExecRecord {
                        tgid: header.tgid,
                        boot_ns: header.boot_ns,
                        service_name,
                        resource_attributes,
                    });
                }
            }
            Ok(RawEvent::ServerCtx(ev)) => self.linker.on_server_ctx(&ev),
            Ok(RawEvent::ClientCtx(ev)) => self.linker.on_client_ctx(&ev),
            Ok(RawEvent::ProcessExit(ev)) => {
                self.tracker.on_process_exit(ev.tgid, ev.ts_ns, &mut self.env, &mut self.pending);
                // Spans still pending for this pid take their resource
                // first; the cache entry goes after them.
                self.emit();
                self.resolver.forget(ev.tgid);
                self.linker.forget_process(ev.tgid);
                if let Some(scanner) = &mut self.tls_scanner {
                    scanner.forget(ev.tgid);
                }
            }
        }
        if !self.pending.is_empty() {
            self.emit();
        }
    }

    fn emit(&mut self) {
        // Drained in place: the buffer keeps its capacity from record to
        // record.
        let mut pending = std::mem::take(&mut self.pending);
        for ConnSpan { span, conn } in pending.drain(..) {
            let identity = self.linker.identity_for(&span, &conn);
            let pid = conn.pid;
            let held = Held { span, conn, identity };
            // Behind spans of the same process that are waiting already.
            let ready = if self.waiting.contains_key(&pid) {
                None
            } else {
                match self.resolver.lookup(pid) {
                    Lookup::Ready(resource) => Some(resource),
                    Lookup::Waiting => None,
                }
            };
            match ready {
                Some(resource) => self.finish(held, resource),
                None if self.waiting_spans >= MAX_WAITING_SPANS => {
                    // No room to hold more: build it here; what waited for
                    // this process goes first, in order.
                    let resource = self.resolver.resolve_now(pid);
                    self.release(pid, &resource);
                    self.finish(held, resource);
                }
                None => {
                    self.waiting.entry(pid).or_default().push(held);
                    self.waiting_spans += 1;
                    Metrics::inc(&self.metrics.spans_waited_for_resource);
                }
            }
        }
        self.pending = pending;
    }

    /// A resource came back from the worker: the spans that waited for it go.
    fn on_resource(&mut self, reply: ResourceReply) {
        if let Some((pid, resource)) = self.resolver.on_reply(reply) {
            self.release(pid, &resource);
        }
    }

    fn release(&mut self, pid: u32, resource: &Arc<ProcessResource>) {
        for held in self.waiting.remove(&pid).unwrap_or_default() {
            self.waiting_spans -= 1;
            self.finish(held, Arc::clone(resource));
        }
    }

    /// Shutdown: what still waits takes the worker's replies for a short
    /// while, then is built here.
    async fn release_all(&mut self, replies: &mut ResourceReplies) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_RESOURCE_WAIT;
        while !self.waiting.is_empty() {
            match tokio::time::timeout_at(deadline, replies.recv()).await {
                Ok(Some(reply)) => self.on_resource(reply),
                Ok(None) | Err(_) => break,
            }
        }
        let pids: Vec<u32> = self.waiting.keys().copied().collect();
        for pid in pids {
            let resource = self.resolver.resolve_now(pid);
            self.release(pid, &resource);
        }
    }

    fn finish(&mut self, held: Held, resource: Arc<ProcessResource>) {
        match self.assembler.assemble(held.span, &held.conn, resource, held.identity) {
            Some(finished) => {
                Metrics::inc(&self.metrics.spans_created);
                self.exporter.send(finished);
            }
            None => Metrics::inc(&self.metrics.spans_sampled_out),
        }
    }

    /// Start tracking sockets found in /proc (see `seed.rs`).
    fn seed(&mut self, sockets: &[SeedSocket], now_ns: u64) -> (usize, usize) {
        seed::seed_sockets(sockets, now_ns, &mut self.tracker, &mut self.env, &mut self.resolver)
    }

    fn tick(&mut self, probes: &Probes, last_lost: &mut u64) {
        let now = Clock::now_monotonic_ns();
        self.tracker.on_tick(now, &mut self.pending);
        self.linker.prune(now);
        self.emit();
        let kernel = probes.kernel_counters();
        self.kernel_cell.store(&kernel);
        self.kernel_cell.set_gauge(Gauge::ConnectionsTracked, self.tracker.len() as u64);
        self.kernel_cell.set_gauge(Gauge::ExportQueueSpans, self.exporter.queued() as u64);
        self.kernel_cell.set_gauge(Gauge::BufferedBytes, self.tracker.buffered_bytes() as u64);
        if let Some(pods) = &self.pods {
            self.kernel_cell.set_gauge(Gauge::KubePodsKnown, pods.pods_known() as u64);
        }
        let lost = kernel.iter().find(|(c, _)| *c == Counter::EventsLost).map(|(_, n)| *n).unwrap_or(0);
        if lost > *last_lost {
            tracing::warn!(
                lost = lost - *last_lost,
                total = lost,
                "kernel dropped events: ring buffer full (raise --ring-buffer-bytes or lower load)"
            );
            *last_lost = lost;
        }
        self.metrics.kernel_events_lost.store(lost, std::sync::atomic::Ordering::Relaxed);
        // The HTTP parser's string tables count in a static of their own (a
        // thread-local has no handle to the metrics): published here.
        self.metrics
            .http_strings_forgotten
            .store(crate::protocols::http1::strings_forgotten(), std::sync::atomic::Ordering::Relaxed);
        self.kernel_counters = kernel;
    }
}

fn rule_texts(rules: &[crate::selection::Rule]) -> String {
    rules.iter().map(|r| r.text.as_str()).collect::<Vec<_>>().join(";")
}

/// Takes one batch from the ring buffer; true when it was full (more may
/// be waiting). Every finished drain is progress for the readiness probe.
fn drain(source: &mut EventSource, stages: &mut Stages, health: &Health) -> bool {
    let handled = source.drain(DRAIN_BATCH, |record| stages.handle_record(record));
    health.drained(handled, Clock::now_monotonic_ns());
    handled >= DRAIN_BATCH
}

/// The next TLS library file the scanner found (never, without a scanner).
async fn next_tls_library(
    libraries: &mut Option<tokio::sync::mpsc::UnboundedReceiver<TlsLibrary>>,
) -> Option<TlsLibrary> {
    match libraries {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs the agent until `shutdown` resolves, then detaches the probes,
/// flushes pending spans and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let agent_pid = std::process::id();
    let kernel_cell = KernelCounterCell::new();
    let health = Health::new();
    // Dropping the sender (also on an early error return) stops the server.
    let (metrics_stop, metrics_stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Only worth keeping where `waggle trace` can ask for them; their bytes
    // come out of the one buffer budget.
    let recent = (config.metrics_addr.is_some() && config.recent_traces_bytes > 0)
        .then(|| SharedRecentTraces::new(config.recent_traces_bytes, metrics.clone()));
    let conn_buffer_budget =
        config.max_buffer_bytes.saturating_sub(recent.as_ref().map_or(0, |_| config.recent_traces_bytes));
    let span_metrics =
        config.app_metrics.then(|| Arc::new(SpanMetrics::new(config.metrics_max_series, metrics.clone())));
    let metrics_server = match config.metrics_addr {
        Some(addr) => Some(
            metrics_server::serve_with(
                addr,
                metrics.clone(),
                kernel_cell.clone(),
                span_metrics.as_ref().map(SpanMetrics::collector),
                recent.clone(),
                health.clone(),
                async move {
                    let _ = metrics_stop_rx.await;
                },
            )
            .await?,
        ),
        None => None,
    };
    // Trace selection: every running process is decided before the probes
    // attach, so none is seen undecided; the worker takes over after.
    let filter = !config.trace_rules.is_empty();
    // Kubernetes metadata first: namespace, label and annotation rules read
    // it (a pod not known yet is decided again by the worker's sweep).
    let pods = start_kube(&config.kube, &metrics).await;
    let pod_directory = pods.clone().map(|store| store as Arc<dyn crate::model::PodDirectory>);
    let response_header = response_header_setting(&config);
    let mut decider = Decider::new(Arc::new(config.trace_rules.clone()), pod_directory, agent_pid);
    if response_header & waggle_common::runtime::RESPONSE_PER_PROCESS != 0 {
        decider = decider.with_response_header(config.trace_response_header);
    }
    let initial_verdicts = if filter { decider.decide_all() } else { Vec::new() };
    let untraced_at_start: std::collections::HashSet<u32> =
        initial_verdicts.iter().filter(|(_, v)| !v.traced()).map(|(pid, _)| *pid).collect();
    let initial_verdicts: Vec<(u32, u8)> = initial_verdicts.into_iter().map(|(pid, v)| (pid, v.0)).collect();
    if filter {
        tracing::info!(
            include = %rule_texts(&config.trace_rules.include),
            exclude = %rule_texts(&config.trace_rules.exclude),
            processes = initial_verdicts.len(),
            untraced = untraced_at_start.len(),
            "trace selection on"
        );
    } else {
        tracing::info!("trace selection off: every process but the agent is traced");
    }
    let probe_config = ProbeConfig {
        capture_bytes: config.capture_bytes,
        ring_buffer_bytes: config.ring_buffer_bytes,
        agent_tgid: agent_pid,
        propagation: config.propagation,
        unsafe_keepalive: config.propagation_unsafe_keepalive,
        sample_threshold: config.sampler.threshold(),
        parent_based: config.sampler_parent_based,
        trusted_networks: config.trusted_networks.clone(),
        filter,
        initial_verdicts,
        tls: config.tls,
        response_header,
    };
    let (mut probes, mut source, maps) = Probes::load(&probe_config)?;
    let selection = match (filter, probes.take_verdict_map()) {
        (true, Some(map)) => Some(
            Selection::spawn(decider, map, metrics.clone(), kernel_cell.clone()).map_err(RunError::SelectionWorker)?,
        ),
        _ => None,
    };
    let (tls_scanner, mut tls_libraries) = if probes.tls_enabled() {
        let installed = discovery::installed_tls_libraries();
        if installed.is_empty() {
            tracing::info!(
                "TLS: no libssl in the usual library directories; those processes map are probed as they are found"
            );
        }
        for library in &installed {
            probes.attach_tls_library(library);
        }
        let (scanner, libraries) = TlsScanner::spawn(agent_pid, metrics.clone());
        (Some(scanner), Some(libraries))
    } else {
        (None, None)
    };
    let exporter = export::spawn_exporter_with(&config, metrics.clone(), recent, span_metrics.clone())?;
    let metrics_push = match (&config.metrics_otlp, &span_metrics) {
        (Some(otlp), Some(span_metrics)) => Some(export::otlp::MetricsPush::spawn(
            otlp,
            config.metric_export_interval,
            span_metrics.clone(),
            metrics.clone(),
        )?),
        _ => None,
    };
    let pod_context = pods.as_ref().map(|store| discovery::PodContext {
        directory: store.clone(),
        node_name: config.kube.node_name.clone(),
        cluster_name: config.kube.cluster_name.clone(),
    });
    let exec_env = discovery::ExecEnvTable::shared(metrics.clone());
    let exec_env_on = probes.attached().contains(&waggle_common::exec_env::PROGRAM);
    let (resolver, mut resource_replies) = ResourceResolver::spawn(
        config.resource_attributes.clone(),
        agent_pid,
        pod_context,
        exec_env_on.then(|| exec_env.clone()),
        metrics.clone(),
    );
    let mut stages = Stages {
        tracker: ConnTracker::new(
            ParserConfig {
                raw_sql: config.raw_sql,
                url_redaction: config.redact_url_paths.clone(),
                cache_keys: config.cache_keys,
            },
            metrics.clone(),
            MAX_CONNS,
        )
        .with_buffer_budget(conn_buffer_budget),
        env: LiveEnv::new(maps, metrics.clone()),
        reads_sockets: probes.reads_sockets(),
        assembler: SpanAssembler::new(Clock::new(), config.sampler, config.sampler_parent_based),
        linker: ContextLinker::new(metrics.clone()),
        resolver,
        exec_env,
        waiting: HashMap::default(),
        waiting_spans: 0,
        exporter,
        metrics: metrics.clone(),
        pending: Vec::new(),
        kernel_cell: kernel_cell.clone(),
        kernel_counters: Vec::new(),
        selection,
        tls_scanner,
        pods,
    };

    // Probes are attached first, so a connection opened during the scan is
    // seen by one or the other (or both: the kernel entry then wins).
    let mut sockets = discovery::scan_inet_sockets(agent_pid);
    // Sockets of processes the rules leave out are not tracked either.
    sockets.retain(|s| !untraced_at_start.contains(&s.pid));
    let (listeners, conns) = stages.seed(&sockets, Clock::now_monotonic_ns());
    tracing::info!(listeners, connections = conns, "tracking TCP sockets that existed before start-up");
    health.attached(Clock::now_monotonic_ns());
    tracing::info!(pid = agent_pid, "waggle ready");

    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_lost = 0u64;
    // The kernel wakes us only past a fill watermark (a wake-up per record
    // costs more than the record at high rates), so a short timer drains
    // what a quiet node leaves below it.
    let mut drain_ticker = tokio::time::interval(Duration::from_millis(waggle_common::DRAIN_INTERVAL_MS));
    drain_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After a full batch the loop comes back without waiting.
    let mut backlog = false;
    let result = loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break Ok(()),
            _ = ticker.tick() => {
                stages.tick(&probes, &mut last_lost);
                health.loop_turned(Clock::now_monotonic_ns());
            }
            Some(reply) = resource_replies.recv() => stages.on_resource(reply),
            Some(library) = next_tls_library(&mut tls_libraries) => probes.attach_tls_library(&library),
            ready = source.readable(), if !backlog => {
                if let Err(e) = ready {
                    break Err(RunError::Intake(e));
                }
                backlog = drain(&mut source, &mut stages, &health);
            }
            _ = std::future::ready(()), if backlog => {
                backlog = drain(&mut source, &mut stages, &health);
            }
            _ = drain_ticker.tick(), if !backlog => {
                backlog = drain(&mut source, &mut stages, &health);
            }
        }
    };

    tracing::info!("shutting down: detaching probes and flushing spans");
    stages.tick(&probes, &mut last_lost);
    drop(probes);
    source.drain(usize::MAX, |record| stages.handle_record(record));
    stages.tracker.flush_all(Clock::now_monotonic_ns(), &mut stages.pending);
    stages.emit();
    stages.release_all(&mut resource_replies).await;
    let Stages { exporter, kernel_counters, .. } = stages;
    if let Err(e) = exporter.shutdown(SHUTDOWN_FLUSH_TIMEOUT).await {
        tracing::warn!(error = %e, "flushing spans at shutdown");
    }
    // After the spans: their last batch is in the metrics it sends.
    if let Some(push) = metrics_push {
        push.shutdown(SHUTDOWN_FLUSH_TIMEOUT).await;
    }
    drop(metrics_stop);
    if let Some(server) = metrics_server {
        server.join().await;
    }
    // Every drop, the agent's and the kernel's, in one line for the operator.
    let counters: Vec<String> = metrics
        .snapshot()
        .into_iter()
        .map(|(name, _, v)| (name, v))
        .chain(kernel_counters.iter().filter(|(c, _)| *c != Counter::EventsLost).map(|(c, v)| (c.name(), *v)))
        .filter(|(_, v)| *v > 0)
        .map(|(name, v)| format!("{name}={v}"))
        .collect();
    tracing::info!(counters = %counters.join(" "), "waggle stopped");
    result
}

/// Kubernetes metadata, when configured: the store the watches fill. A
/// client that cannot be built is one warning, and the agent runs without
/// metadata; the API server itself is never waited for.
async fn start_kube(kube: &crate::config::KubeConfig, metrics: &Arc<Metrics>) -> Option<Arc<crate::k8s::PodStore>> {
    let source = kube.source.as_ref()?;
    match crate::k8s::start(source, &kube.node_name, metrics.clone()).await {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::warn!(error = %e, "Kubernetes metadata off: spans carry container.id and k8s.pod.uid only");
            None
        }
    }
}

/// The kernel's RUNTIME[RESPONSE_HEADER] for this configuration
/// (`waggle_common::runtime`): 0 when no process is set to get the header.
fn response_header_setting(config: &Config) -> u64 {
    let rules = &config.trace_rules;
    if config.sdk_disabled || !rules.response_header_wanted(config.trace_response_header) {
        return 0;
    }
    let per_process = rules.include.iter().any(|r| r.response_header.is_some());
    u64::from(config.trace_response_header.kernel_mode())
        | if per_process { waggle_common::runtime::RESPONSE_PER_PROCESS } else { 0 }
}
