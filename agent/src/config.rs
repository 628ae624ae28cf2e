//! Configuration: clap flags, the standard `OTEL_*` environment variables
//! (read through [`Env`] so tests never touch the process environment) and an
//! optional YAML file. Precedence: flag > environment > file > default.
//!
//! Every setting is resolved together with where it came from, so a bad value
//! is reported as one line naming the flag, variable or file key and the value.
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

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

impl fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
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
            .finish()
    }
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

impl Sampler {
    /// The threshold of `waggle_common::sampled_by_threshold`: the one rule
    /// the kernel (which decides for the traces it starts and propagates)
    /// and the agent share.
    pub fn threshold(self) -> u64 {
        match self {
            Sampler::AlwaysOn => u64::MAX,
            Sampler::AlwaysOff => 0,
            Sampler::TraceIdRatio(ratio) => waggle_common::ratio_threshold(ratio),
        }
    }
}

pub const DEFAULT_OTLP_TIMEOUT: Duration = Duration::from_millis(10_000);
pub const MAX_QUEUED_SPANS_LIMIT: usize = 1 << 20;
pub const MAX_EXPORT_BATCH_LIMIT: usize = 1 << 16;
pub const MAX_RING_BUFFER_BYTES: u32 = 1 << 30;
pub const MIN_RING_BUFFER_BYTES: u32 = 4096;
const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

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
    pub max_export_batch: usize,
    pub export_interval: Duration,
    /// Export SQL text with literals (default: sanitized).
    pub raw_sql: bool,
    /// Inject traceparent into outgoing HTTP requests.
    pub propagation: bool,
    /// Keep client sockets in the propagation sockmap for their lifetime, so
    /// every request of a keep-alive connection carries traceparent (their
    /// receive path then runs through the kernel's tcp_bpf code). Off: the
    /// first request of each connection only.
    pub propagation_unsafe_keepalive: bool,
    /// Peers whose incoming traceparent is honoured; None: every peer (the
    /// W3C default inside a cluster). Requests from other peers start a new
    /// trace.
    pub trusted_networks: Option<Vec<(IpAddr, u8)>>,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<SocketAddr>,
    pub config_file: Option<PathBuf>,
    /// OTEL_SERVICE_NAME: the agent's own name. Traced processes get their
    /// own service.name; this one names the agent's self-telemetry.
    pub agent_service_name: String,
    /// tracing-subscriber EnvFilter directives (--log-level, RUST_LOG).
    pub log_filter: String,
    /// OTEL_SDK_DISABLED=true took effect: no OTLP, no default printing,
    /// sampler always_off.
    pub sdk_disabled: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            otlp: None,
            print: Some(PrintFormat::Text),
            resource_attributes: Vec::new(),
            sampler: Sampler::AlwaysOn,
            sampler_parent_based: true,
            capture_bytes: waggle_common::MAX_CAPTURE as u32,
            ring_buffer_bytes: waggle_common::EVENTS_RINGBUF_BYTES,
            max_queued_spans: 65536,
            max_export_batch: 512,
            export_interval: Duration::from_millis(1000),
            raw_sql: false,
            propagation: true,
            propagation_unsafe_keepalive: false,
            trusted_networks: None,
            metrics_addr: None,
            config_file: None,
            agent_service_name: "waggle".to_owned(),
            log_filter: "info".to_owned(),
            sdk_disabled: false,
        }
    }
}

const AFTER_HELP: &str = "\
Precedence: command-line flag > environment variable > --config file > default.

Standard OpenTelemetry variables honoured:
  OTEL_EXPORTER_OTLP_ENDPOINT          collector base URL (http/protobuf: /v1/traces is appended)
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT   full traces URL, used as is
  OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL grpc | http/protobuf (http/json is not supported)
  OTEL_EXPORTER_OTLP_[TRACES_]HEADERS  key=value,key2=value2 (values percent-decoded)
  OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT  export timeout in milliseconds (default 10000)
  OTEL_RESOURCE_ATTRIBUTES             key=value,... added to every traced process's resource
  OTEL_SERVICE_NAME                    the agent's own name (default waggle); traced processes
                                       keep their own service.name
  OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG
  OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_SCHEDULE_DELAY (ms)
  OTEL_SDK_DISABLED=true               no OTLP export, no default printing, sampler always_off;
                                       explicit --otlp-endpoint / --print flags still apply
  RUST_LOG                             log filter, when --log-level is not given

Without an OTLP endpoint spans are printed on stdout (logs go to stderr).

Config file (YAML, unknown keys are an error):
  otlp: {endpoint: http://collector:4318, protocol: http/protobuf, headers: {key: value}, timeout: 10000}
  print: text | json | off          capture_bytes: 4096        ring_buffer_bytes: 16777216
  max_queued_spans: 65536           max_export_batch: 512      export_interval: 1000
  sampler: parentbased_traceidratio sampler_arg: 0.25          raw_sql: false
  propagation: on | off             metrics_addr: 0.0.0.0:9464 log_level: info
  resource_attributes: {deployment.environment.name: prod}";

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

    /// Print spans on stdout as text or JSON lines; off disables printing.
    /// Default: text without an OTLP endpoint, off with one
    #[arg(long, value_name = "text|json|off")]
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

    /// Inject W3C traceparent into outgoing HTTP requests [default: on]: the
    /// first request of each connection. unsafe-keepalive: every request of
    /// keep-alive connections too, by keeping client sockets in the kernel's
    /// sockmap for their lifetime (their receive path then runs through
    /// tcp_bpf: FIONREAD reports 0 on current kernels, and a missed FIN
    /// after an early response was seen)
    #[arg(long, value_name = "on|off|unsafe-keepalive")]
    pub propagation: Option<String>,

    /// Honour incoming traceparent only from peers in these networks
    /// (comma-separated CIDRs, e.g. 10.0.0.0/8,fd00::/8); requests from
    /// other peers start a new trace [default: every peer]
    #[arg(long, value_name = "CIDRS")]
    pub trusted_networks: Option<String>,

    /// Serve Prometheus metrics on this address, e.g. 0.0.0.0:9464
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,

    /// Extra resource attributes for every traced process, key=value,... (like OTEL_RESOURCE_ATTRIBUTES)
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub resource_attributes: Option<String>,

    /// Log filter (error, warn, info, debug, trace or tracing directives such as
    /// waggle=debug); RUST_LOG is used when this is absent [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Validate the configuration (flags, environment, file), print the
    /// effective settings and exit: 0 when valid, 2 with the error otherwise
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting}: {message}")]
    Invalid { setting: String, message: String },
    #[error("reading config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
}

/// Where a value came from; its Display names the setting in errors.
#[derive(Clone, Debug)]
enum Source {
    Flag(&'static str),
    Env(&'static str),
    File { key: &'static str, path: PathBuf },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "--{flag}"),
            Source::Env(var) => f.write_str(var),
            Source::File { key, path } => write!(f, "{key} in {}", path.display()),
        }
    }
}

impl Source {
    fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { setting: self.to_string(), message: message.into() }
    }
}

/// A raw value with its origin.
type Sourced<T> = Option<(T, Source)>;

/// A YAML scalar accepted where a string is expected (`version: 2`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::Str(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOtlp {
    endpoint: Option<String>,
    protocol: Option<String>,
    headers: Option<BTreeMap<String, Scalar>>,
    timeout: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    otlp: Option<FileOtlp>,
    print: Option<String>,
    capture_bytes: Option<u32>,
    ring_buffer_bytes: Option<u32>,
    max_queued_spans: Option<usize>,
    max_export_batch: Option<usize>,
    export_interval: Option<u64>,
    sampler: Option<String>,
    sampler_arg: Option<Scalar>,
    raw_sql: Option<bool>,
    propagation: Option<Scalar>,
    trusted_networks: Option<String>,
    metrics_addr: Option<String>,
    resource_attributes: Option<BTreeMap<String, Scalar>>,
    log_level: Option<String>,
}

impl FileConfig {
    fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let read_err = |source| ConfigError::ReadFile { path: path.to_owned(), source };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_CONFIG_FILE_BYTES {
            return Err(ConfigError::ParseFile {
                path: path.to_owned(),
                message: format!("file is {len} bytes, more than the {MAX_CONFIG_FILE_BYTES} allowed"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        serde_yaml_ng::from_str(&text)
            .map_err(|e| ConfigError::ParseFile { path: path.to_owned(), message: one_line(&e.to_string()) })
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Environment lookups: the OTel spec treats an empty value as unset.
fn env_var(env: &dyn Env, key: &'static str) -> Sourced<String> {
    env.var(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).map(|v| (v, Source::Env(key)))
}

/// Comma-separated CIDRs ("10.0.0.0/8", "fd00::/8"; a bare address is a
/// single host).
fn parse_networks(raw: &str, source: &Source) -> Result<Vec<(IpAddr, u8)>, ConfigError> {
    let mut nets = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (addr, prefix) = match part.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (part, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| source.invalid(format!("invalid network {part:?} (expected CIDR, e.g. 10.0.0.0/8)")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| source.invalid(format!("invalid prefix length in {part:?} (0..={max})")))?,
            None => max,
        };
        nets.push((addr, prefix));
    }
    if nets.is_empty() {
        return Err(source.invalid("no network given".to_owned()));
    }
    Ok(nets)
}

fn flag<T>(value: Option<T>, name: &'static str) -> Sourced<T> {
    value.map(|v| (v, Source::Flag(name)))
}

fn file_key<T>(value: Option<T>, key: &'static str, path: Option<&Path>) -> Sourced<T> {
    match (value, path) {
        (Some(v), Some(path)) => Some((v, Source::File { key, path: path.to_owned() })),
        _ => None,
    }
}

/// Parses `k=v,k2=v2` as used by OTEL_EXPORTER_OTLP_HEADERS and
/// OTEL_RESOURCE_ATTRIBUTES: entries trimmed, values percent-decoded.
/// Errors never echo a value: header values are credentials.
fn parse_key_values(raw: &str, source: &Source) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, entry) in raw.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let Some((key, value)) = entry.split_once('=') else {
            return Err(source.invalid(format!("entry {} is not key=value", i + 1)));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(source.invalid(format!("entry {} has an empty key", i + 1)));
        }
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .map_err(|_| source.invalid(format!("value of {key:?} is not valid UTF-8 once percent-decoded")))?;
        out.push((key.to_owned(), value.into_owned()));
    }
    Ok(out)
}

/// Header names must be valid HTTP header names (stored lower-case, as gRPC
/// metadata requires) and values visible ASCII, so they are valid both as
/// HTTP headers and as gRPC metadata.
fn validate_headers(headers: Vec<(String, String)>, source: &Source) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (key, value) in headers {
        let name = reqwest::header::HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| source.invalid(format!("invalid header name {key:?}")))?;
        let printable = value.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
        if !printable {
            // The value is a credential more often than not: name the header only.
            return Err(source
                .invalid(format!("value of header {:?} must be printable ASCII (value not shown)", name.as_str())));
        }
        let name = name.as_str().to_owned();
        out.retain(|(k, _)| *k != name);
        out.push((name, value));
    }
    Ok(out)
}

fn parse_protocol(raw: &str, source: &Source) -> Result<OtlpProtocol, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        "http/json" => Err(source.invalid(format!("protocol {raw:?} is not supported (use grpc or http/protobuf)"))),
        _ => Err(source.invalid(format!("unsupported protocol {raw:?} (use grpc or http/protobuf)"))),
    }
}

fn parse_print(raw: &str, source: &Source) -> Result<Option<PrintFormat>, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(Some(PrintFormat::Text)),
        "json" => Ok(Some(PrintFormat::Json)),
        "off" | "none" | "false" => Ok(None),
        _ => Err(source.invalid(format!("unknown format {raw:?} (use text, json or off)"))),
    }
}

fn parse_on_off(raw: &str, source: &Source) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(source.invalid(format!("expected on or off, got {raw:?}"))),
    }
}

fn parse_bool_env(raw: &str, source: &Source) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(source.invalid(format!("expected true or false, got {raw:?}"))),
    }
}

fn parse_number<T: std::str::FromStr>(raw: &str, source: &Source) -> Result<T, ConfigError> {
    raw.trim().parse().map_err(|_| source.invalid(format!("{raw:?} is not a valid number")))
}

fn check_range<T: PartialOrd + fmt::Display + Copy>(
    value: T,
    min: T,
    max: T,
    source: &Source,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(source.invalid(format!("{value} is out of range ({min}..={max})")));
    }
    Ok(value)
}

/// (sampler, parent_based) from an OTEL_TRACES_SAMPLER name and its argument.
fn parse_sampler(
    name: &str,
    name_source: &Source,
    arg: Option<&(String, Source)>,
) -> Result<(Sampler, bool), ConfigError> {
    let ratio = || -> Result<f64, ConfigError> {
        // The spec's default ratio is 1.0 when no argument is given.
        let Some((raw, source)) = arg else { return Ok(1.0) };
        let ratio: f64 =
            raw.trim().parse().map_err(|_| source.invalid(format!("{raw:?} is not a ratio between 0 and 1")))?;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(source.invalid(format!("{raw:?} is not a ratio between 0 and 1")));
        }
        Ok(ratio)
    };
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "always_on" => (Sampler::AlwaysOn, false),
        "always_off" => (Sampler::AlwaysOff, false),
        "traceidratio" => (Sampler::TraceIdRatio(ratio()?), false),
        "parentbased_always_on" => (Sampler::AlwaysOn, true),
        "parentbased_always_off" => (Sampler::AlwaysOff, true),
        "parentbased_traceidratio" => (Sampler::TraceIdRatio(ratio()?), true),
        _ => {
            return Err(name_source.invalid(format!(
                "unknown sampler {name:?} (use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio)"
            )))
        }
    })
}

/// Turns a configured endpoint into the URL exports go to.
/// `base` endpoints get `/v1/traces` appended for http/protobuf.
fn resolve_endpoint(
    raw: &str,
    source: &Source,
    protocol: OtlpProtocol,
    base: EndpointKind,
) -> Result<String, ConfigError> {
    let url = reqwest::Url::parse(raw.trim())
        .map_err(|e| source.invalid(format!("invalid endpoint {raw:?}: {e} (expected e.g. http://localhost:4318)")))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(source.invalid(format!(
                "endpoint {raw:?} uses TLS, which this build does not support (send to a local collector over http://)"
            )))
        }
        other => return Err(source.invalid(format!("endpoint {raw:?} has unsupported scheme {other:?} (use http://)"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(source.invalid(format!("endpoint {raw:?} has no host")));
    }
    let trimmed = raw.trim();
    Ok(match (protocol, base) {
        // gRPC has no URL path: the service path comes from the protobuf definition.
        (OtlpProtocol::Grpc, _) | (OtlpProtocol::HttpProtobuf, EndpointKind::Signal) => trimmed.to_owned(),
        (OtlpProtocol::HttpProtobuf, EndpointKind::Base) => {
            format!("{}/v1/traces", trimmed.trim_end_matches('/'))
        }
        (OtlpProtocol::HttpProtobuf, EndpointKind::BaseOrSignal) => {
            let path = url.path().trim_end_matches('/');
            if path.ends_with("/v1/traces") {
                trimmed.to_owned()
            } else {
                format!("{}/v1/traces", trimmed.trim_end_matches('/'))
            }
        }
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndpointKind {
    /// OTEL_EXPORTER_OTLP_ENDPOINT: always a base URL, per the spec.
    Base,
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: used as is.
    Signal,
    /// Flag / file: a base URL unless it already ends with /v1/traces.
    BaseOrSignal,
}

fn first<T>(candidates: impl IntoIterator<Item = Sourced<T>>) -> Sourced<T> {
    candidates.into_iter().flatten().next()
}

impl Config {
    /// Merges flags, environment, the `--config` file and defaults.
    pub fn load(args: &CliArgs, env: &dyn Env) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        let path = args.config.as_deref();
        let defaults = Config::default();
        let file_otlp = file.otlp.unwrap_or_default();

        // OTEL_SDK_DISABLED turns off what the environment and the file asked
        // for; explicit output flags are a later, more specific instruction.
        let sdk_disabled = match env_var(env, "OTEL_SDK_DISABLED") {
            Some((raw, source)) => parse_bool_env(&raw, &source)?,
            None => false,
        };
        let output_flags = args.otlp_endpoint.is_some() || args.print.is_some();
        let sdk_disabled = sdk_disabled && !output_flags;

        // --- OTLP ---
        let protocol = match first([
            flag(args.otlp_protocol.clone(), "otlp-protocol"),
            env_var(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
            env_var(env, "OTEL_EXPORTER_OTLP_PROTOCOL"),
            file_key(file_otlp.protocol, "otlp.protocol", path),
        ]) {
            Some((raw, source)) => parse_protocol(&raw, &source)?,
            // The OTel spec's default; the SDKs moved from grpc to it.
            None => OtlpProtocol::HttpProtobuf,
        };
        let endpoint = first([
            flag(args.otlp_endpoint.clone(), "otlp-endpoint").map(|(v, s)| ((v, EndpointKind::BaseOrSignal), s)),
            env_var(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").map(|(v, s)| ((v, EndpointKind::Signal), s)),
            env_var(env, "OTEL_EXPORTER_OTLP_ENDPOINT").map(|(v, s)| ((v, EndpointKind::Base), s)),
            file_key(file_otlp.endpoint, "otlp.endpoint", path).map(|(v, s)| ((v, EndpointKind::BaseOrSignal), s)),
        ]);
        let endpoint = match endpoint {
            Some((_, Source::Env(_) | Source::File { .. })) if sdk_disabled => None,
            Some(((raw, kind), source)) => Some(resolve_endpoint(&raw, &source, protocol, kind)?),
            None => None,
        };
        let headers = match first([
            flag(args.otlp_headers.clone(), "otlp-headers"),
            env_var(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
            env_var(env, "OTEL_EXPORTER_OTLP_HEADERS"),
        ]) {
            Some((raw, source)) => validate_headers(parse_key_values(&raw, &source)?, &source)?,
            None => match file_otlp.headers {
                Some(map) => {
                    let source =
                        Source::File { key: "otlp.headers", path: path.map(Path::to_owned).unwrap_or_default() };
                    let pairs = map.into_iter().map(|(k, v)| (k, v.into_string())).collect();
                    validate_headers(pairs, &source)?
                }
                None => Vec::new(),
            },
        };
        let timeout = match first([
            flag(args.otlp_timeout.map(|v| v.to_string()), "otlp-timeout"),
            env_var(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
            env_var(env, "OTEL_EXPORTER_OTLP_TIMEOUT"),
            file_key(file_otlp.timeout.map(|v| v.to_string()), "otlp.timeout", path),
        ]) {
            Some((raw, source)) => {
                let ms: u64 = parse_number(&raw, &source)?;
                Duration::from_millis(check_range(ms, 1, 3_600_000, &source)?)
            }
            None => DEFAULT_OTLP_TIMEOUT,
        };
        let otlp = endpoint.map(|endpoint| OtlpConfig { endpoint, protocol, headers, timeout });

        // --- printing ---
        let print = match first([flag(args.print.clone(), "print"), file_key(file.print, "print", path)]) {
            Some((raw, source)) => parse_print(&raw, &source)?,
            None if otlp.is_some() || sdk_disabled => None,
            None => Some(PrintFormat::Text),
        };

        // --- sampling ---
        let sampler_arg = first([
            flag(args.sampler_arg.clone(), "sampler-arg"),
            env_var(env, "OTEL_TRACES_SAMPLER_ARG"),
            file_key(file.sampler_arg.map(Scalar::into_string), "sampler_arg", path),
        ]);
        let (sampler, sampler_parent_based) = match first([
            flag(args.sampler.clone(), "sampler"),
            env_var(env, "OTEL_TRACES_SAMPLER"),
            file_key(file.sampler, "sampler", path),
        ]) {
            Some((raw, source)) => parse_sampler(&raw, &source, sampler_arg.as_ref())?,
            None => (defaults.sampler, defaults.sampler_parent_based),
        };
        // SDK disabled: no spans at all, whatever the parent says.
        let (sampler, sampler_parent_based) =
            if sdk_disabled { (Sampler::AlwaysOff, false) } else { (sampler, sampler_parent_based) };

        // --- capture and queues ---
        let capture_bytes = match first([
            flag(args.capture_bytes.map(|v| v.to_string()), "capture-bytes"),
            file_key(file.capture_bytes.map(|v| v.to_string()), "capture_bytes", path),
        ]) {
            Some((raw, source)) => {
                check_range(parse_number(&raw, &source)?, 1, waggle_common::MAX_CAPTURE as u32, &source)?
            }
            None => defaults.capture_bytes,
        };
        let ring_buffer_bytes = match first([
            flag(args.ring_buffer_bytes.map(|v| v.to_string()), "ring-buffer-bytes"),
            file_key(file.ring_buffer_bytes.map(|v| v.to_string()), "ring_buffer_bytes", path),
        ]) {
            Some((raw, source)) => {
                let bytes: u32 =
                    check_range(parse_number(&raw, &source)?, MIN_RING_BUFFER_BYTES, MAX_RING_BUFFER_BYTES, &source)?;
                // The kernel requires a power-of-two multiple of the page size.
                if !bytes.is_power_of_two() {
                    return Err(source.invalid(format!("{bytes} is not a power of two")));
                }
                bytes
            }
            None => defaults.ring_buffer_bytes,
        };
        let max_queued_spans = match first([
            flag(args.max_queued_spans.map(|v| v.to_string()), "max-queued-spans"),
            env_var(env, "OTEL_BSP_MAX_QUEUE_SIZE"),
            file_key(file.max_queued_spans.map(|v| v.to_string()), "max_queued_spans", path),
        ]) {
            Some((raw, source)) => check_range(parse_number(&raw, &source)?, 1, MAX_QUEUED_SPANS_LIMIT, &source)?,
            None => defaults.max_queued_spans,
        };
        let max_export_batch = match first([
            flag(args.max_export_batch.map(|v| v.to_string()), "max-export-batch"),
            env_var(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
            file_key(file.max_export_batch.map(|v| v.to_string()), "max_export_batch", path),
        ]) {
            Some((raw, source)) => check_range(parse_number(&raw, &source)?, 1, MAX_EXPORT_BATCH_LIMIT, &source)?,
            None => defaults.max_export_batch,
        };
        let export_interval = match first([
            flag(args.export_interval.map(|v| v.to_string()), "export-interval"),
            env_var(env, "OTEL_BSP_SCHEDULE_DELAY"),
            file_key(file.export_interval.map(|v| v.to_string()), "export_interval", path),
        ]) {
            Some((raw, source)) => {
                Duration::from_millis(check_range(parse_number(&raw, &source)?, 1, 60_000, &source)?)
            }
            None => defaults.export_interval,
        };

        // --- behaviour ---
        let raw_sql = args.raw_sql || file.raw_sql.unwrap_or(defaults.raw_sql);
        let propagation = match first([
            flag(args.propagation.clone(), "propagation"),
            file_key(file.propagation.map(Scalar::into_string), "propagation", path),
        ]) {
            Some((raw, _)) if raw.trim().eq_ignore_ascii_case("unsafe-keepalive") => (true, true),
            Some((raw, source)) => (parse_on_off(&raw, &source)?, false),
            None => (defaults.propagation, defaults.propagation_unsafe_keepalive),
        };
        // Tracing disabled: nothing may be sent downstream either.
        let (propagation, propagation_unsafe_keepalive) =
            (propagation.0 && !sdk_disabled, propagation.1 && !sdk_disabled);
        let trusted_networks = match first([
            flag(args.trusted_networks.clone(), "trusted-networks"),
            env_var(env, "WAGGLE_TRUSTED_NETWORKS"),
            file_key(file.trusted_networks, "trusted_networks", path),
        ]) {
            Some((raw, source)) => Some(parse_networks(&raw, &source)?),
            None => defaults.trusted_networks,
        };
        let metrics_addr = match first([
            flag(args.metrics_addr.clone(), "metrics-addr"),
            file_key(file.metrics_addr, "metrics_addr", path),
        ]) {
            Some((raw, source)) => Some(raw.trim().parse::<SocketAddr>().map_err(|_| {
                source.invalid(format!("invalid address {raw:?} (expected IP:PORT, e.g. 0.0.0.0:9464)"))
            })?),
            None => None,
        };

        // --- resource attributes: merged per key, higher precedence wins ---
        let mut resource_attributes: BTreeMap<String, String> = BTreeMap::new();
        if let Some(map) = file.resource_attributes {
            for (k, v) in map {
                if k.trim().is_empty() {
                    let source =
                        Source::File { key: "resource_attributes", path: path.map(Path::to_owned).unwrap_or_default() };
                    return Err(source.invalid("empty attribute key"));
                }
                resource_attributes.insert(k, v.into_string());
            }
        }
        for (raw, source) in
            [env_var(env, "OTEL_RESOURCE_ATTRIBUTES"), flag(args.resource_attributes.clone(), "resource-attributes")]
                .into_iter()
                .flatten()
        {
            resource_attributes.extend(parse_key_values(&raw, &source)?);
        }

        let agent_service_name =
            env_var(env, "OTEL_SERVICE_NAME").map(|(v, _)| v).unwrap_or(defaults.agent_service_name);

        let log_filter = match first([
            flag(args.log_level.clone(), "log-level"),
            env_var(env, "RUST_LOG"),
            file_key(file.log_level, "log_level", path),
        ]) {
            Some((raw, source)) => {
                tracing_subscriber::EnvFilter::builder()
                    .parse(raw.trim())
                    .map_err(|e| source.invalid(format!("invalid log filter {raw:?}: {e}")))?;
                raw.trim().to_owned()
            }
            None => defaults.log_filter,
        };

        Ok(Config {
            otlp,
            print,
            resource_attributes: resource_attributes.into_iter().collect(),
            sampler,
            sampler_parent_based,
            capture_bytes,
            ring_buffer_bytes,
            max_queued_spans,
            max_export_batch,
            export_interval,
            raw_sql,
            propagation,
            propagation_unsafe_keepalive,
            trusted_networks,
            metrics_addr,
            config_file: args.config.clone(),
            agent_service_name,
            log_filter,
            sdk_disabled,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use clap::Parser;

    use super::*;

    fn args(list: &[&str]) -> CliArgs {
        let mut argv = vec!["waggle"];
        argv.extend_from_slice(list);
        CliArgs::try_parse_from(argv).unwrap()
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn load(list: &[&str], pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(&args(list), &env(pairs))
    }

    fn err(list: &[&str], pairs: &[(&str, &str)]) -> String {
        let e = load(list, pairs).unwrap_err().to_string();
        assert!(!e.contains('\n'), "error must be one line: {e}");
        e
    }

    fn yaml(text: &str) -> tempfile_like::TempFile {
        tempfile_like::TempFile::new(text)
    }

    /// Minimal temp file helper (the agent crate has no tempfile dependency).
    mod tempfile_like {
        use std::{path::PathBuf, sync::atomic::AtomicU32, sync::atomic::Ordering};

        pub struct TempFile(pub PathBuf);
        static N: AtomicU32 = AtomicU32::new(0);

        impl TempFile {
            pub fn new(text: &str) -> TempFile {
                let path = std::env::temp_dir().join(format!(
                    "waggle-config-test-{}-{}.yaml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                let mut f = std::fs::File::create(&path).unwrap();
                super::Write::write_all(&mut f, text.as_bytes()).unwrap();
                TempFile(path)
            }
            pub fn arg(&self) -> String {
                self.0.display().to_string()
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_print_text_and_no_otlp() {
        let c = load(&[], &[]).unwrap();
        assert_eq!(c.otlp, None);
        assert_eq!(c.print, Some(PrintFormat::Text));
        assert_eq!(c.sampler, Sampler::AlwaysOn);
        assert!(c.sampler_parent_based);
        assert_eq!(c.agent_service_name, "waggle");
        assert_eq!(c.log_filter, "info");
        assert_eq!(c.capture_bytes, 4096);
        assert!(c.propagation);
        assert!(!c.raw_sql);
    }

    #[test]
    fn base_endpoint_gets_traces_path_and_http_protobuf_default() {
        let c = load(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).unwrap();
        let otlp = c.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(otlp.timeout, Duration::from_secs(10));
        // An endpoint turns the default printer off.
        assert_eq!(c.print, None);
    }

    #[test]
    fn traces_endpoint_is_used_as_is_and_beats_base() {
        let c = load(
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:9999/custom"),
            ],
        )
        .unwrap();
        assert_eq!(c.otlp.unwrap().endpoint, "http://traces:9999/custom");
    }

    #[test]
    fn grpc_endpoint_has_no_path_appended() {
        let c = load(
            &[],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
        )
        .unwrap();
        let otlp = c.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://collector:4317");
        assert_eq!(otlp.protocol, OtlpProtocol::Grpc);
    }

    #[test]
    fn flag_endpoint_keeps_explicit_traces_path() {
        let c = load(&["--otlp-endpoint", "http://c:4318/v1/traces"], &[]).unwrap();
        assert_eq!(c.otlp.unwrap().endpoint, "http://c:4318/v1/traces");
        let c = load(&["--otlp-endpoint", "http://c:4318/prefix"], &[]).unwrap();
        assert_eq!(c.otlp.unwrap().endpoint, "http://c:4318/prefix/v1/traces");
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let f = yaml(
            "otlp:\n  endpoint: http://file:4318\n  protocol: grpc\n  timeout: 1234\nsampler: always_off\ncapture_bytes: 100\n",
        );
        // File only.
        let c = load(&["--config", &f.arg()], &[]).unwrap();
        let otlp = c.otlp.clone().unwrap();
        assert_eq!(otlp.endpoint, "http://file:4318");
        assert_eq!(otlp.protocol, OtlpProtocol::Grpc);
        assert_eq!(otlp.timeout, Duration::from_millis(1234));
        assert_eq!((c.sampler, c.sampler_parent_based), (Sampler::AlwaysOff, false));
        assert_eq!(c.capture_bytes, 100);
        assert_eq!(c.config_file.as_deref(), Some(f.0.as_path()));

        // Env beats file.
        let e = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ];
        let c = load(&["--config", &f.arg()], &e).unwrap();
        let otlp = c.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://env:4318/v1/traces");
        assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(otlp.timeout, Duration::from_millis(500));
        assert_eq!((c.sampler, c.sampler_parent_based), (Sampler::TraceIdRatio(0.25), true));

        // Flags beat both.
        let c = load(
            &[
                "--config",
                &f.arg(),
                "--otlp-endpoint",
                "http://flag:4317",
                "--otlp-protocol",
                "grpc",
                "--otlp-timeout",
                "42",
                "--sampler",
                "always_on",
                "--capture-bytes",
                "7",
            ],
            &e,
        )
        .unwrap();
        let otlp = c.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://flag:4317");
        assert_eq!(otlp.protocol, OtlpProtocol::Grpc);
        assert_eq!(otlp.timeout, Duration::from_millis(42));
        assert_eq!((c.sampler, c.sampler_parent_based), (Sampler::AlwaysOn, false));
        assert_eq!(c.capture_bytes, 7);
    }

    #[test]
    fn signal_specific_env_beats_generic() {
        let c = load(
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=generic"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=traces"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "100"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "200"),
            ],
        )
        .unwrap();
        let otlp = c.otlp.unwrap();
        assert_eq!(otlp.protocol, OtlpProtocol::Grpc);
        assert_eq!(otlp.headers, vec![("b".to_owned(), "traces".to_owned())]);
        assert_eq!(otlp.timeout, Duration::from_millis(200));
    }

    #[test]
    fn headers_are_percent_decoded_lowercased_and_flag_wins() {
        let e = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Basic%20abc%3D%3D , x-tenant = t1"),
        ];
        let otlp = load(&[], &e).unwrap().otlp.unwrap();
        assert_eq!(
            otlp.headers,
            vec![("authorization".to_owned(), "Basic abc==".to_owned()), ("x-tenant".to_owned(), "t1".to_owned())]
        );
        let otlp = load(&["--otlp-headers", "x-only=flag"], &e).unwrap().otlp.unwrap();
        assert_eq!(otlp.headers, vec![("x-only".to_owned(), "flag".to_owned())]);
    }

    #[test]
    fn debug_output_redacts_header_values() {
        let c = load(&["--otlp-endpoint", "http://c:4318", "--otlp-headers", "authorization=Bearer%20s3cr3t"], &[])
            .unwrap();
        let dbg = format!("{c:?}");
        assert!(dbg.contains("authorization"), "{dbg}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
    }

    #[test]
    fn bad_header_errors_do_not_leak_values() {
        let e = err(&["--otlp-endpoint", "http://c:4318", "--otlp-headers", "authorization:Bearer s3cr3t"], &[]);
        assert_eq!(e, "--otlp-headers: entry 1 is not key=value");
        let e =
            err(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_HEADERS", "a=ok,bad key=x")]);
        assert_eq!(e, "OTEL_EXPORTER_OTLP_HEADERS: invalid header name \"bad key\"");
        let e = err(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_HEADERS", "k=s3cr%0At")]);
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_HEADERS: value of header \"k\""), "{e}");
        assert!(!e.contains("s3cr"), "{e}");
    }

    #[test]
    fn protocol_errors_name_setting_and_value() {
        let e = err(&[], &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]);
        assert_eq!(
            e,
            "OTEL_EXPORTER_OTLP_PROTOCOL: protocol \"http/json\" is not supported (use grpc or http/protobuf)"
        );
        let e = err(&["--otlp-protocol", "thrift"], &[]);
        assert_eq!(e, "--otlp-protocol: unsupported protocol \"thrift\" (use grpc or http/protobuf)");
    }

    #[test]
    fn endpoint_errors() {
        let e = err(&["--otlp-endpoint", "collector:4318"], &[]);
        assert!(e.starts_with("--otlp-endpoint: "), "{e}");
        assert!(e.contains("collector:4318"), "{e}");
        let e = err(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://saas.example:443")]);
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: endpoint \"https://saas.example:443\" uses TLS"), "{e}");
        let e = err(&[], &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url")]);
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: invalid endpoint \"not a url\""), "{e}");
    }

    #[test]
    fn numeric_range_errors() {
        assert_eq!(err(&["--capture-bytes", "0"], &[]), "--capture-bytes: 0 is out of range (1..=4096)");
        assert_eq!(err(&["--capture-bytes", "5000"], &[]), "--capture-bytes: 5000 is out of range (1..=4096)");
        assert_eq!(err(&["--ring-buffer-bytes", "12288"], &[]), "--ring-buffer-bytes: 12288 is not a power of two");
        assert_eq!(
            err(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")]),
            "OTEL_EXPORTER_OTLP_TIMEOUT: \"soon\" is not a valid number"
        );
        assert_eq!(err(&["--max-queued-spans", "0"], &[]), "--max-queued-spans: 0 is out of range (1..=1048576)");
        assert_eq!(
            err(&[], &[("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "-3")]),
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE: \"-3\" is not a valid number"
        );
        assert_eq!(load(&["--ring-buffer-bytes", "65536"], &[]).unwrap().ring_buffer_bytes, 65536);
        let c = load(&[], &[("OTEL_BSP_MAX_QUEUE_SIZE", "10"), ("OTEL_BSP_SCHEDULE_DELAY", "50")]).unwrap();
        assert_eq!((c.max_queued_spans, c.export_interval), (10, Duration::from_millis(50)));
    }

    #[test]
    fn sampler_parsing() {
        let c = load(&[], &[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.5")]).unwrap();
        assert_eq!((c.sampler, c.sampler_parent_based), (Sampler::TraceIdRatio(0.5), false));
        let c = load(&[], &[("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")]).unwrap();
        assert_eq!((c.sampler, c.sampler_parent_based), (Sampler::TraceIdRatio(1.0), true));
        let c = load(&[], &[("OTEL_TRACES_SAMPLER", "parentbased_always_off")]).unwrap();
        assert_eq!((c.sampler, c.sampler_parent_based), (Sampler::AlwaysOff, true));
        // The argument only matters to ratio samplers.
        let c = load(&[], &[("OTEL_TRACES_SAMPLER", "always_on"), ("OTEL_TRACES_SAMPLER_ARG", "junk")]).unwrap();
        assert_eq!(c.sampler, Sampler::AlwaysOn);
        assert_eq!(
            err(&[], &[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "1.5")]),
            "OTEL_TRACES_SAMPLER_ARG: \"1.5\" is not a ratio between 0 and 1"
        );
        let e = err(&["--sampler", "sometimes"], &[]);
        assert!(e.starts_with("--sampler: unknown sampler \"sometimes\""), "{e}");
    }

    #[test]
    fn print_rules() {
        let c = load(&["--otlp-endpoint", "http://c:4318", "--print", "json"], &[]).unwrap();
        assert_eq!(c.print, Some(PrintFormat::Json));
        assert!(c.otlp.is_some());
        assert_eq!(load(&["--print", "off"], &[]).unwrap().print, None);
        assert_eq!(err(&["--print", "xml"], &[]), "--print: unknown format \"xml\" (use text, json or off)");
    }

    #[test]
    fn sdk_disabled_turns_off_env_output_but_not_flags() {
        let e = [("OTEL_SDK_DISABLED", "true"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
        let c = load(&[], &e).unwrap();
        assert!(c.sdk_disabled);
        assert_eq!(c.otlp, None);
        assert_eq!(c.print, None);
        assert_eq!((c.sampler, c.sampler_parent_based), (Sampler::AlwaysOff, false));
        // Tracing disabled: nothing is injected downstream either.
        assert!(!c.propagation && !c.propagation_unsafe_keepalive);
        assert!(!load(&["--propagation", "unsafe-keepalive"], &[("OTEL_SDK_DISABLED", "true")]).unwrap().propagation);

        let c = load(&["--print", "text"], &e).unwrap();
        assert!(!c.sdk_disabled);
        assert_eq!(c.print, Some(PrintFormat::Text));
        assert!(c.otlp.is_some(), "explicit flags override OTEL_SDK_DISABLED as a whole");

        assert!(!load(&[], &[("OTEL_SDK_DISABLED", "false")]).unwrap().sdk_disabled);
        assert_eq!(
            err(&[], &[("OTEL_SDK_DISABLED", "yes please")]),
            "OTEL_SDK_DISABLED: expected true or false, got \"yes please\""
        );
    }

    #[test]
    fn propagation_modes_and_trusted_networks() {
        let c = load(&[], &[]).unwrap();
        assert!(c.propagation && !c.propagation_unsafe_keepalive);
        assert_eq!(c.trusted_networks, None);
        let c = load(&["--propagation", "unsafe-keepalive"], &[]).unwrap();
        assert!(c.propagation && c.propagation_unsafe_keepalive);
        let c = load(&["--trusted-networks", "10.0.0.0/8, 192.168.1.7,fd00::/8"], &[]).unwrap();
        assert_eq!(
            c.trusted_networks,
            Some(vec![
                ("10.0.0.0".parse().unwrap(), 8),
                ("192.168.1.7".parse().unwrap(), 32),
                ("fd00::".parse().unwrap(), 8)
            ])
        );
        let c = load(&[], &[("WAGGLE_TRUSTED_NETWORKS", "127.0.0.0/8")]).unwrap();
        assert_eq!(c.trusted_networks, Some(vec![("127.0.0.0".parse().unwrap(), 8)]));
        assert!(err(&["--trusted-networks", "10.0.0.0/33"], &[]).contains("prefix length"));
        assert!(err(&["--trusted-networks", "intranet"], &[]).contains("invalid network"));
        assert!(err(&["--trusted-networks", " , "], &[]).contains("no network"));
    }

    #[test]
    fn empty_env_values_count_as_unset() {
        let c = load(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "  "), ("OTEL_TRACES_SAMPLER", "")]).unwrap();
        assert_eq!(c.otlp, None);
        assert_eq!(c.sampler, Sampler::AlwaysOn);
    }

    #[test]
    fn resource_attributes_merge_per_key() {
        let f = yaml("resource_attributes:\n  a: file\n  b: 2\n  c: file\n");
        let c = load(
            &["--config", &f.arg(), "--resource-attributes", "c=flag"],
            &[("OTEL_RESOURCE_ATTRIBUTES", "b=env%20two,d=env"), ("OTEL_SERVICE_NAME", "agent-x")],
        )
        .unwrap();
        let attrs: Vec<(&str, &str)> = c.resource_attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(attrs, vec![("a", "file"), ("b", "env two"), ("c", "flag"), ("d", "env")]);
        assert_eq!(c.agent_service_name, "agent-x");
    }

    #[test]
    fn file_keys_and_errors() {
        let f = yaml(
            "otlp:\n  endpoint: http://f:4318\n  headers:\n    X-Api-Key: abc\nprint: json\nraw_sql: true\npropagation: off\nmetrics_addr: 127.0.0.1:9464\nmax_export_batch: 64\nexport_interval: 250\nlog_level: debug\n",
        );
        let c = load(&["--config", &f.arg()], &[]).unwrap();
        assert_eq!(c.otlp.as_ref().unwrap().headers, vec![("x-api-key".to_owned(), "abc".to_owned())]);
        assert_eq!(c.print, Some(PrintFormat::Json));
        assert!(c.raw_sql);
        assert!(!c.propagation);
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.max_export_batch, 64);
        assert_eq!(c.export_interval, Duration::from_millis(250));
        assert_eq!(c.log_filter, "debug");
        // RUST_LOG beats the file; --log-level beats RUST_LOG.
        assert_eq!(load(&["--config", &f.arg()], &[("RUST_LOG", "warn")]).unwrap().log_filter, "warn");
        assert_eq!(
            load(&["--config", &f.arg(), "--log-level", "trace"], &[("RUST_LOG", "warn")]).unwrap().log_filter,
            "trace"
        );

        let bad = yaml("otlp:\n  endpoint: http://f:4318\n  compression: gzip\n");
        let e = err(&["--config", &bad.arg()], &[]);
        assert!(e.starts_with(&format!("parsing config file {}: ", bad.arg())), "{e}");
        assert!(e.contains("unknown field `compression`"), "{e}");

        let bad = yaml("capture_bytes: 9999\n");
        assert_eq!(
            err(&["--config", &bad.arg()], &[]),
            format!("capture_bytes in {}: 9999 is out of range (1..=4096)", bad.arg())
        );

        let e = err(&["--config", "/nonexistent/waggle.yaml"], &[]);
        assert!(e.starts_with("reading config file /nonexistent/waggle.yaml: "), "{e}");
    }

    #[test]
    fn metrics_addr_and_log_filter_errors() {
        assert_eq!(
            err(&["--metrics-addr", "localhost"], &[]),
            "--metrics-addr: invalid address \"localhost\" (expected IP:PORT, e.g. 0.0.0.0:9464)"
        );
        let e = err(&["--log-level", "waggle=loud"], &[]);
        assert!(e.starts_with("--log-level: invalid log filter \"waggle=loud\""), "{e}");
        assert_eq!(err(&["--propagation", "maybe"], &[]), "--propagation: expected on or off, got \"maybe\"");
    }
}
