//! Agent self-metrics. Every drop the agent makes is counted here; nothing is
//! discarded silently. Counters are cheap atomics shared by all stages.
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $help:literal,)*) => {
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $name: AtomicU64,)*
        }

        impl Metrics {
            /// (name, help, value) of every counter, for logs and Prometheus.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $help, self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    events_received: "ring-buffer records decoded",
    events_malformed: "ring-buffer records that failed to decode",
    data_events_untracked: "data events for connections the agent did not know",
    conns_opened: "connections tracked",
    conns_closed: "connections closed",
    conns_unverified_rejected: "accepted/connected descriptors that turned out not to be TCP",
    conns_muted: "connections muted (unknown protocol, TLS, own export traffic)",
    conns_evicted: "connection states dropped because the table was full",
    conns_replaced: "connection states dropped because their descriptor was reused without a close event (the close was lost)",
    conn_addr_lookups: "socket address lookups the agent made itself (pidfd + getsockname, or /proc): only for connections the kernel could not read (no BTF, or opened before the agent)",
    own_socket_scans: "scans of the agent's own sockets to recognise its export traffic (only where the kernel cannot recognise it)",
    buffers_dropped_over_budget: "connection parse states dropped because the connections' buffers together would exceed --max-buffer-bytes (the connection starts over at its next message)",
    http_strings_forgotten: "times the HTTP parser's table of shared paths, hosts and user agents was emptied because it reached its size limit (each value seen again then costs one allocation)",
    parse_failures: "payloads a protocol parser could not follow (lost sync, garbage)",
    exchanges_dropped: "request/response exchanges a parser saw but could not turn into a span (response without request, unanswered at close/idle)",
    messages_skipped: "messages a parser read and turned into no span by design (Redis pub/sub pushes and subscription commands)",
    protocol_unknown: "connections whose first bytes matched no protocol",
    tls_conns: "connections whose TLS plaintext the library probes delivered (their ciphertext's parse state was dropped)",
    tls_scans_dropped: "processes whose memory maps were not searched for TLS libraries because the scan queue was full (their library is probed only if another process maps it)",
    tls_version_unseen: "TLS connections whose ServerHello the agent did not see (older than the agent, or its bytes cut or muted): their spans carry no tls.protocol.version",
    tls_ciphertext_ignored: "payload records of a connection's ciphertext that arrived after its TLS plaintext (queued before the kernel knew): ignored",
    contexts_dropped_full: "kernel trace contexts dropped because the linker's table was full (their spans get fresh ids)",
    threads_dropped_full: "server requests not remembered per thread because the linker's thread table was full (client calls made while handling them start new traces)",
    resources_resolved: "process resources built by the resolver's worker thread (off the event loop)",
    resources_resolved_inline: "process resources built on the event loop because the resolver's queue, or the spans waiting for it, were full",
    resources_rebuilt_for_pod: "process resources built again because their pod's Kubernetes metadata arrived or changed after they were built",
    kube_watch_errors: "Kubernetes watch errors (API server unreachable, refused, or a watch answered 410 Gone); the watch retries with backoff",
    kube_watch_restarts: "Kubernetes re-lists after the first list (a watch's resource version expired, or the watch failed)",
    kube_pods_not_kept: "pods the Kubernetes metadata store did not keep because it was full (their spans go out without pod metadata)",
    kube_replicasets_not_kept: "ReplicaSets the Kubernetes metadata store did not keep because it was full (their pods' spans lack the Deployment)",
    spans_waited_for_resource: "spans held until their process's resource was built",
    spans_created: "spans assembled",
    spans_sampled_out: "spans dropped by the sampler",
    spans_dropped_queue_full: "spans dropped because the export queue was full",
    spans_exported: "spans handed successfully to the exporter",
    spans_export_failed: "spans in batches the exporter failed to send",
    otlp_attempts_failed: "OTLP export attempts that failed, every retry counted (while the collector is down the exporter holds its batch and retries it every few seconds)",
    kernel_events_lost: "events the kernel could not write (ring buffer full)",
    recent_traces_evicted: "traces dropped whole from the recent-traces ring behind `waggle trace` to stay within --recent-traces-bytes (oldest first)",
    tree_spans_not_kept: "spans the --print tree printer counted but did not show (its queue was full behind a paused terminal, or a trace passed 1000 spans)",
    tree_traces_printed_early: "traces the --print tree printer printed before they looked complete, to stay within 4096 waiting traces",
    metric_series_overflow: "span-metric observations recorded in their metric's overflow series (otel_metric_overflow=\"true\") because the metric had reached its series limit (--metrics-max-series)",
    service_graph_unpaired: "service-graph spans whose other side (caller or callee) did not arrive within 10 s: that peer is not traced, or its span was lost",
    service_graph_dropped_full: "service-graph spans not paired because the pairing table was full",
    selection_decisions: "trace-selection verdicts written into the kernel (start-up, exec, sweeps)",
    selection_verdict_map_full: "trace-selection verdicts the kernel's map refused (full): the process stays undecided, which means traced",
    selection_queue_full: "exec'ed processes not queued for a decision because the selection worker's queue was full (decided at its next /proc sweep, within a second; traced until then)",
    exec_env_recorded: "process execs whose OTEL_* environment the kernel reported (read at exec, before the process can write over it)",
    exec_env_with_otel: "process execs that set OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES",
    exec_env_evicted: "exec-time environments forgotten because their table was full (4096 execs with an OTEL_* variable, 32768 without): those processes are named from /proc/<pid>/environ again",
    metric_exports_failed: "OTLP metric exports that failed (the next export sends the cumulative values again)",
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(counter: &AtomicU64, n: u64) {
        // Most adds are of nothing (a parser that dropped and skipped
        // nothing, several times per record): no locked instruction then.
        if n != 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}
