//! Configuration: clap flags, the standard `OTEL_*` environment variables
//! (read through [`Env`] so tests never touch the process environment) and an
//! optional YAML file. Precedence: flag > environment > file > default.
use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

/// Source of environment variables.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// Full traces endpoint: for http/protobuf it ends in `/v1/traces`.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrintFormat {
    Text,
    Json,
}

/// OTEL_TRACES_SAMPLER for root spans the agent starts (parent-based: an
/// incoming sampled flag is respected).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub otlp: Option<OtlpConfig>,
    /// Print spans on stdout (default when no OTLP endpoint is configured).
    pub print: Option<PrintFormat>,
    /// The agent's own OTEL_RESOURCE_ATTRIBUTES, added to every resource.
    pub resource_attributes: Vec<(String, String)>,
    pub sampler: Sampler,
    /// Payload bytes the kernel copies per syscall (<= MAX_CAPTURE).
    pub capture_bytes: u32,
    pub ring_buffer_bytes: u32,
    /// Spans waiting for export before new ones are dropped (and counted).
    pub max_queued_spans: usize,
    pub max_export_batch: usize,
    pub export_interval: Duration,
    /// Export SQL text with literals (default: sanitized).
    pub raw_sql: bool,
    /// Inject traceparent into outgoing HTTP requests.
    pub propagation: bool,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<SocketAddr>,
    pub config_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            otlp: None,
            print: Some(PrintFormat::Text),
            resource_attributes: Vec::new(),
            sampler: Sampler::AlwaysOn,
            capture_bytes: waggle_common::MAX_CAPTURE as u32,
            ring_buffer_bytes: waggle_common::EVENTS_RINGBUF_BYTES,
            max_queued_spans: 65536,
            max_export_batch: 512,
            export_interval: Duration::from_millis(1000),
            raw_sql: false,
            propagation: true,
            metrics_addr: None,
            config_file: None,
        }
    }
}
