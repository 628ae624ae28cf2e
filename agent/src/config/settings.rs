//! The resolved configuration the agent runs with, and its defaults.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use super::Sampler;
use crate::protocols::http1::PathRedaction;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        })
    }
}

/// Compression of OTLP export requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpCompression {
    None,
    Gzip,
}

impl fmt::Display for OtlpCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OtlpCompression::None => "none",
            OtlpCompression::Gzip => "gzip",
        })
    }
}

#[derive(Clone, PartialEq)]
pub struct OtlpConfig {
    /// Full traces endpoint: for http/protobuf it ends in `/v1/traces`.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Header names are lower-case; values may be credentials (never log them).
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// Unset, gzip when the endpoint is on another host (bandwidth costs
    /// there), none on loopback (where compressing only costs CPU).
    pub compression: OtlpCompression,
}

// Header values are usually credentials (`authorization=Bearer ...`), and the
// config is logged with `?config`: only the names are shown.
impl fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("OtlpConfig")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &format_args!("{names:?} (values redacted)"))
            .field("timeout", &self.timeout)
            .field("compression", &self.compression)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrintFormat {
    /// Each trace as an indented waterfall once it is complete.
    Tree,
    Text,
    Json,
}

/// Where the Kubernetes API client's configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeSource {
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, token and CA
    /// under /var/run/secrets/kubernetes.io/serviceaccount).
    InCluster,
    /// A kubeconfig file (`--kube-config`).
    Kubeconfig(PathBuf),
    /// `--kube on` outside a pod: `KUBECONFIG` or ~/.kube/config.
    Infer,
}

/// Kubernetes metadata (`crate::k8s`): on when running in a pod or given a
/// kubeconfig, unless `--kube off`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeConfig {
    /// None: metadata off.
    pub source: Option<KubeSource>,
    /// The node whose pods are watched (`spec.nodeName`); also
    /// `k8s.node.name` on every resource when metadata is on.
    pub node_name: String,
    /// `k8s.cluster.name` on every resource (the API does not know it).
    pub cluster_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub otlp: Option<OtlpConfig>,
    /// Print spans on stdout (default when no OTLP endpoint is configured).
    pub print: Option<PrintFormat>,
    /// The agent's own OTEL_RESOURCE_ATTRIBUTES, added to every resource.
    pub resource_attributes: Vec<(String, String)>,
    pub sampler: Sampler,
    /// False for the non-`parentbased_*` samplers: then `sampler` decides for
    /// every span and an incoming sampled flag is ignored.
    pub sampler_parent_based: bool,
    /// Payload bytes the kernel copies per syscall (<= MAX_CAPTURE).
    pub capture_bytes: u32,
    pub ring_buffer_bytes: u32,
    /// Spans waiting for export before new ones are dropped (and counted).
    pub max_queued_spans: usize,
    /// Bytes all connections' buffers and the recent traces may hold
    /// together.
    pub max_buffer_bytes: usize,
    /// Of `max_buffer_bytes`, what the ring of recent traces behind
    /// `waggle trace` may hold (only kept when the metrics endpoint runs).
    pub recent_traces_bytes: usize,
    pub max_export_batch: usize,
    pub export_interval: Duration,
    /// Export SQL text with literals (default: sanitized).
    pub raw_sql: bool,
    /// Show keys in Redis/memcached query text (default: `?`).
    pub cache_keys: bool,
    /// Inject traceparent into outgoing HTTP requests.
    pub propagation: bool,
    /// Keep client sockets in the propagation sockmap for their lifetime, so
    /// every request of a keep-alive connection carries traceparent (their
    /// receive path then runs through the kernel's tcp_bpf code). Off: the
    /// first request of each connection only.
    pub propagation_unsafe_keepalive: bool,
    /// `--trace-response-header` for traced processes no include rule sets
    /// it for (`trace_rules` carries the per-rule settings).
    pub trace_response_header: crate::selection::ResponseHeader,
    /// Read TLS plaintext at the OpenSSL library (uprobes).
    pub tls: bool,
    /// Peers whose incoming traceparent is honoured; None: every peer (the
    /// W3C default inside a cluster). Requests from other peers start a new
    /// trace.
    pub trusted_networks: Option<Vec<(IpAddr, u8)>>,
    /// Request path segments to hide besides the built-in rules.
    pub redact_url_paths: Arc<PathRedaction>,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<SocketAddr>,
    /// RED metrics, span metrics and the service graph from every exported
    /// span (`span_metrics`); on by default wherever they can be read.
    pub app_metrics: bool,
    /// Series per application metric before new label sets go to the
    /// overflow series.
    pub metrics_max_series: usize,
    /// Push the application metrics over OTLP (OTEL_METRICS_EXPORTER=otlp).
    pub metrics_otlp: Option<OtlpConfig>,
    /// OTEL_METRIC_EXPORT_INTERVAL.
    pub metric_export_interval: Duration,
    pub config_file: Option<PathBuf>,
    pub kube: KubeConfig,
    /// tracing-subscriber EnvFilter directives (--log-level, RUST_LOG).
    pub log_filter: String,
    /// OTEL_SDK_DISABLED=true took effect: no OTLP, no default printing,
    /// sampler always_off.
    pub sdk_disabled: bool,
    /// Which processes are traced (default excludes included when on).
    pub trace_rules: crate::selection::Rules,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            otlp: None,
            print: Some(PrintFormat::Tree),
            resource_attributes: Vec::new(),
            sampler: Sampler::AlwaysOn,
            sampler_parent_based: true,
            capture_bytes: waggle_common::MAX_CAPTURE as u32,
            ring_buffer_bytes: waggle_common::EVENTS_RINGBUF_BYTES,
            max_queued_spans: 65536,
            max_buffer_bytes: 64 << 20,
            recent_traces_bytes: 4 << 20,
            max_export_batch: 512,
            export_interval: Duration::from_millis(1000),
            raw_sql: false,
            cache_keys: false,
            propagation: true,
            propagation_unsafe_keepalive: false,
            trace_response_header: crate::selection::ResponseHeader::Off,
            tls: true,
            trusted_networks: None,
            redact_url_paths: Arc::default(),
            metrics_addr: None,
            app_metrics: false,
            metrics_max_series: crate::span_metrics::DEFAULT_MAX_SERIES,
            metrics_otlp: None,
            metric_export_interval: Duration::from_secs(60),
            config_file: None,
            kube: KubeConfig::default(),
            log_filter: "info".to_owned(),
            sdk_disabled: false,
            trace_rules: crate::selection::Rules { include: Vec::new(), exclude: crate::selection::default_excludes() },
        }
    }
}
