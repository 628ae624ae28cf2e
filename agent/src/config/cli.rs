//! The command line: clap flags and the `--help` text that documents the
//! environment variables and the config file too.
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Precedence: command-line flag > environment variable > --config file > default.

Standard OpenTelemetry variables honoured:
  OTEL_EXPORTER_OTLP_ENDPOINT          collector base URL (http/protobuf: /v1/traces is appended)
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT   full traces URL, used as is
  OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL grpc | http/protobuf (http/json is not supported)
  OTEL_EXPORTER_OTLP_[TRACES_]HEADERS  key=value,key2=value2 (values percent-decoded)
  OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT  export timeout in milliseconds (default 10000)
  OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION gzip | none (default: gzip unless the endpoint is loopback)
  OTEL_RESOURCE_ATTRIBUTES             key=value,... added to every traced process's resource
  OTEL_SERVICE_NAME                    not read from the agent's environment: each traced process's
                                       own OTEL_SERVICE_NAME names its service
  OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG
  OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_SCHEDULE_DELAY (ms)
  OTEL_SDK_DISABLED=true               no OTLP export, no default printing, sampler always_off;
                                       explicit --otlp-endpoint / --print flags still apply
  OTEL_METRICS_EXPORTER                otlp | prometheus | none (application metrics; OTLP push is off unless set)
  OTEL_METRIC_EXPORT_INTERVAL          ms between OTLP metric exports (default 60000)
  OTEL_EXPORTER_OTLP_METRICS_*         ENDPOINT (used as is), PROTOCOL, HEADERS, TIMEOUT, COMPRESSION for metrics
  RUST_LOG                             log filter, when --log-level is not given
  NODE_NAME                            this node's Kubernetes name (--node-name)
  KUBERNETES_SERVICE_HOST              set in a pod: Kubernetes metadata is on (--kube auto)

Without an OTLP endpoint spans are printed on stdout as one waterfall per trace (logs go to stderr).

waggle trace <TRACE-ID> [--agent ADDR]
  prints one recent trace's waterfall, asked of a running agent's --metrics-addr
  (default 127.0.0.1:9464; the agent answers loopback clients only)

Config file (YAML, unknown keys are an error):
  otlp: {endpoint: http://collector:4318, protocol: http/protobuf, headers: {key: value}, timeout: 10000,
         compression: gzip}
  print: tree | text | json | off   capture_bytes: 4096        ring_buffer_bytes: 16777216
  max_queued_spans: 65536           max_export_batch: 512      export_interval: 1000
  max_buffer_bytes: 67108864        recent_traces_bytes: 4194304
  sampler: parentbased_traceidratio sampler_arg: 0.25          raw_sql: false
  cache_keys: false
  propagation: on | off             metrics_addr: 0.0.0.0:9464 log_level: info
  trace_response_header: traceresponse | x-trace-id | off
  tls: on | off
  app_metrics: on | off             metrics_max_series: 2000
  metrics_exporter: otlp            metric_export_interval: 60000
  redact_url_paths: /reset/*,/invite/*/accept
  resource_attributes: {deployment.environment.name: prod}
  trace: {include: [\"exe=*/nginx\", \"port=8000-8999&namespace=shop\"], exclude: [\"label:tier=batch\"],
          default_excludes: true}
  kube: auto | on | off             kube_config: /etc/waggle/kubeconfig
  node_name: node-1                 cluster_name: prod-eu

Choosing what is traced (rules: conditions joined by &, all must hold; lists separated by ;):
  exe=GLOB  port=80,8000-8999  namespace=GLOB  container=GLOB  label:KEY=GLOB  annotation:KEY=GLOB
  an include rule may add trace_response_header=traceresponse|x-trace-id|off (that process's setting)
  WAGGLE_TRACE_INCLUDE, WAGGLE_TRACE_EXCLUDE, WAGGLE_TRACE_DEFAULT_EXCLUDES=on|off
  Exclude wins over include; no include rule means every process not excluded.";

/// Command-line flags. Every setting is optional here so that an absent flag
/// falls through to the environment, the file and the default.
#[derive(Clone, Debug, Default, clap::Parser)]
#[command(
    name = "waggle",
    version,
    about = "Zero-code distributed tracing: captures HTTP and SQL traffic of unmodified processes with eBPF and exports OpenTelemetry spans",
    after_help = AFTER_HELP
)]
pub struct CliArgs {
    /// OTLP collector URL (e.g. http://localhost:4318). Enables OTLP export.
    /// For http/protobuf, /v1/traces is appended unless the URL already ends with it
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP protocol: grpc or http/protobuf. Default: http/protobuf, as the
    /// OpenTelemetry specification requires (collector ports: grpc 4317, http 4318)
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// Headers sent with every export, key=value,key2=value2 (values percent-decoded)
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub otlp_headers: Option<String>,

    /// OTLP export timeout in milliseconds [default: 10000]
    #[arg(long, value_name = "MS")]
    pub otlp_timeout: Option<u64>,

    /// Compress export requests: gzip or none. Default: gzip when the
    /// endpoint is on another host, none when it is loopback or localhost
    #[arg(long, value_name = "gzip|none")]
    pub otlp_compression: Option<String>,

    /// Print spans on stdout: tree (each trace as a waterfall once it is
    /// complete), text or JSON lines (one per span); off disables printing.
    /// Default: tree without an OTLP endpoint, off with one
    #[arg(long, value_name = "tree|text|json|off")]
    pub print: Option<String>,

    /// YAML config file; its keys mirror these flags (see below)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Payload bytes copied from the kernel per read/write, 1..=4096 [default: 4096]
    #[arg(long, value_name = "N")]
    pub capture_bytes: Option<u32>,

    /// Size of the kernel-to-agent ring buffer: a power of two, 4096..=1073741824 [default: 16777216]
    #[arg(long, value_name = "BYTES")]
    pub ring_buffer_bytes: Option<u32>,

    /// Spans waiting for export before new ones are dropped (and counted) [default: 65536]
    #[arg(long, value_name = "N")]
    pub max_queued_spans: Option<usize>,

    /// Bytes all connections' buffers may hold together (partial requests,
    /// statement caches); a connection past it starts over, counted [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    pub max_buffer_bytes: Option<usize>,

    /// Bytes of recent traces kept for `waggle trace <id>` (served to
    /// loopback clients on --metrics-addr); taken out of --max-buffer-bytes,
    /// 0 keeps none [default: 4194304]
    #[arg(long, value_name = "BYTES")]
    pub recent_traces_bytes: Option<usize>,

    /// Most spans per export request [default: 512]
    #[arg(long, value_name = "N")]
    pub max_export_batch: Option<usize>,

    /// Longest a span waits for its batch to fill, in milliseconds [default: 1000]
    #[arg(long, value_name = "MS")]
    pub export_interval: Option<u64>,

    /// Sampler for traces the agent starts: always_on, always_off, traceidratio,
    /// parentbased_always_on, parentbased_always_off, parentbased_traceidratio
    /// [default: parentbased_always_on]
    #[arg(long, value_name = "NAME")]
    pub sampler: Option<String>,

    /// Sampler argument: the ratio (0..=1) for the traceidratio samplers [default: 1.0]
    #[arg(long, value_name = "ARG")]
    pub sampler_arg: Option<String>,

    /// Export SQL statements with their literal values (default: literals are replaced by ?)
    #[arg(long)]
    pub raw_sql: bool,

    /// Show keys in Redis and memcached db.query.text (default: keys are
    /// replaced by ? like values; values are never shown)
    #[arg(long)]
    pub cache_keys: bool,

    /// Inject W3C traceparent into outgoing HTTP requests [default: on]: the
    /// first request of each connection. unsafe-keepalive: every request of
    /// keep-alive connections too, by keeping client sockets in the kernel's
    /// sockmap for their lifetime (their receive path then runs through
    /// tcp_bpf: FIONREAD reports 0 on current kernels, and a missed FIN
    /// after an early response was seen)
    #[arg(long, value_name = "on|off|unsafe-keepalive")]
    pub propagation: Option<String>,

    /// Insert the trace id into HTTP/1.x responses of traced servers, right
    /// after the status line: `traceresponse: 00-<trace-id>-<span-id>-<flags>`
    /// or `X-Trace-Id: <trace-id>` [default: off; env
    /// WAGGLE_TRACE_RESPONSE_HEADER; per include rule:
    /// trace_response_header=MODE]. Off by itself on kernels whose FIONREAD
    /// misreports sockets in a sockmap
    #[arg(long, value_name = "traceresponse|x-trace-id|off")]
    pub trace_response_header: Option<String>,

    /// Read the plaintext of TLS connections at the OpenSSL library
    /// (uprobes on SSL_read/SSL_write) [default: on; env WAGGLE_TLS]
    #[arg(long, value_name = "on|off")]
    pub tls: Option<String>,

    /// Honour incoming traceparent only from peers in these networks
    /// (comma-separated CIDRs, e.g. 10.0.0.0/8,fd00::/8); requests from
    /// other peers start a new trace [default: every peer]
    #[arg(long, value_name = "CIDRS")]
    pub trusted_networks: Option<String>,

    /// Hide more of request paths: comma-separated templates whose *
    /// segments become REDACTED in url.path and http.route, e.g.
    /// /reset/*,/invite/*/accept (tokens, keys and e-mail addresses in paths
    /// are always hidden)
    #[arg(long, value_name = "TEMPLATES")]
    pub redact_url_paths: Option<String>,

    /// Trace only processes matching one of these rules (`;`-separated;
    /// a rule is conditions joined by `&`: exe=GLOB, port=80,8000-8999,
    /// namespace=GLOB, container=GLOB, label:KEY=GLOB, annotation:KEY=GLOB)
    /// [default: every process not excluded]
    #[arg(long, value_name = "RULES")]
    pub trace_include: Option<String>,

    /// Never trace processes matching one of these rules (same syntax as
    /// --trace-include; wins over it), besides the default excludes
    #[arg(long, value_name = "RULES")]
    pub trace_exclude: Option<String>,

    /// Leave out kube-system and the node's own daemons (kubelet,
    /// containerd, dockerd, crio, runc, conmon, systemd*, ...) [default: on]
    #[arg(long, value_name = "on|off")]
    pub trace_default_excludes: Option<String>,

    /// Serve Prometheus metrics on this address, e.g. 0.0.0.0:9464: the
    /// agent's own counters and, unless --app-metrics off, the application
    /// metrics computed from spans (with exemplars)
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,

    /// Application metrics from every span: HTTP/DB duration histograms
    /// (OTel semantic conventions), Tempo span metrics and the service
    /// graph [default: on when --metrics-addr is set]
    #[arg(long, value_name = "on|off")]
    pub app_metrics: Option<String>,

    /// Series each application metric may have; label sets past it are
    /// counted in one series labelled otel_metric_overflow="true" [default: 2000]
    #[arg(long, value_name = "N")]
    pub metrics_max_series: Option<usize>,

    /// Metrics exporters, like OTEL_METRICS_EXPORTER: otlp (push the
    /// application metrics to the OTLP endpoint, /v1/metrics), prometheus
    /// (serve them on --metrics-addr, default 127.0.0.1:9464), none
    /// [default: none pushed]
    #[arg(long, value_name = "otlp,prometheus|none")]
    pub metrics_exporter: Option<String>,

    /// Milliseconds between OTLP metric exports, like OTEL_METRIC_EXPORT_INTERVAL [default: 60000]
    #[arg(long, value_name = "MS")]
    pub metric_export_interval: Option<u64>,

    /// Extra resource attributes for every traced process, key=value,... (like OTEL_RESOURCE_ATTRIBUTES)
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub resource_attributes: Option<String>,

    /// Kubernetes metadata (pod, namespace, workload, container names on
    /// every resource): auto (on when running in a pod, or with
    /// --kube-config), on, off [default: auto]
    #[arg(long, value_name = "auto|on|off")]
    pub kube: Option<String>,

    /// kubeconfig file for the Kubernetes API (turns metadata on); default:
    /// the pod's service account
    #[arg(long, value_name = "PATH")]
    pub kube_config: Option<PathBuf>,

    /// This node's Kubernetes name, whose pods are watched (the DaemonSet
    /// sets NODE_NAME from spec.nodeName) [default: $NODE_NAME, else the host name]
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,

    /// k8s.cluster.name on every resource when Kubernetes metadata is on
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,

    /// Log filter (error, warn, info, debug, trace or tracing directives such as
    /// waggle=debug); RUST_LOG is used when this is absent [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Validate the configuration (flags, environment, file), print the
    /// effective settings and exit: 0 when valid, 2 with the error otherwise
    #[arg(long)]
    pub check_config: bool,
}
