//! One OTLP signal's endpoint, protocol, headers, timeout and compression:
//! the shared `--otlp-*` flags, then the signal's own variable
//! (`OTEL_EXPORTER_OTLP_TRACES_*`, `..._METRICS_*`), then the generic one,
//! then the file's `otlp.*` keys. Traces and metrics resolve by these same
//! rules, so they cannot drift apart.
use std::{path::Path, time::Duration};

use super::{
    file::FileOtlp,
    source::{env_var, file_key, first, flag, Source},
    values::{
        check_range, default_compression, parse_compression, parse_key_values, parse_number, parse_protocol,
        resolve_signal_endpoint, validate_headers, EndpointKind,
    },
    CliArgs, ConfigError, Env, OtlpConfig, OtlpProtocol,
};

const DEFAULT_OTLP_TIMEOUT: Duration = Duration::from_millis(10_000);

/// A signal's own variables and path.
pub(super) struct Signal {
    pub(super) protocol_var: &'static str,
    pub(super) endpoint_var: &'static str,
    pub(super) headers_var: &'static str,
    pub(super) timeout_var: &'static str,
    pub(super) compression_var: &'static str,
    /// Appended to a base endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub(super) path: &'static str,
}

pub(super) const TRACES: Signal = Signal {
    protocol_var: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    endpoint_var: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    headers_var: "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    timeout_var: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    compression_var: "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    path: "/v1/traces",
};

pub(super) const METRICS: Signal = Signal {
    protocol_var: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    endpoint_var: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    headers_var: "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    timeout_var: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    compression_var: "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    path: "/v1/metrics",
};

/// The signal's OTLP settings, or `None` when no endpoint is configured
/// (the other values are still checked).
/// With `flags_only_endpoint` (tracing disabled by `OTEL_SDK_DISABLED`), an
/// endpoint from the environment or the file does not count.
pub(super) fn resolve(
    signal: &Signal,
    args: &CliArgs,
    env: &dyn Env,
    file_otlp: FileOtlp,
    path: Option<&Path>,
    flags_only_endpoint: bool,
) -> Result<Option<OtlpConfig>, ConfigError> {
    let protocol = match first([
        flag(args.otlp_protocol.clone(), "otlp-protocol"),
        env_var(env, signal.protocol_var),
        env_var(env, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        file_key(file_otlp.protocol, "otlp.protocol", path),
    ]) {
        Some((raw, source)) => parse_protocol(&raw, &source)?,
        // The OTel spec's default; the SDKs moved from grpc to it.
        None => OtlpProtocol::HttpProtobuf,
    };
    let endpoint = first([
        flag(args.otlp_endpoint.clone(), "otlp-endpoint").map(|(v, s)| ((v, EndpointKind::BaseOrSignal), s)),
        env_var(env, signal.endpoint_var).map(|(v, s)| ((v, EndpointKind::Signal), s)),
        env_var(env, "OTEL_EXPORTER_OTLP_ENDPOINT").map(|(v, s)| ((v, EndpointKind::Base), s)),
        file_key(file_otlp.endpoint, "otlp.endpoint", path).map(|(v, s)| ((v, EndpointKind::BaseOrSignal), s)),
    ]);
    let endpoint = match endpoint {
        Some((_, Source::Env(_) | Source::File { .. })) if flags_only_endpoint => None,
        Some(((raw, kind), source)) => Some(resolve_signal_endpoint(&raw, &source, protocol, kind, signal.path)?),
        None => None,
    };
    let headers = match first([
        flag(args.otlp_headers.clone(), "otlp-headers"),
        env_var(env, signal.headers_var),
        env_var(env, "OTEL_EXPORTER_OTLP_HEADERS"),
    ]) {
        Some((raw, source)) => validate_headers(parse_key_values(&raw, &source)?, &source)?,
        None => match file_otlp.headers {
            Some(map) => {
                let source = Source::File { key: "otlp.headers", path: path.map(Path::to_owned).unwrap_or_default() };
                validate_headers(map.into_iter().map(|(k, v)| (k, v.into_string())).collect(), &source)?
            }
            None => Vec::new(),
        },
    };
    let timeout = match first([
        flag(args.otlp_timeout.map(|v| v.to_string()), "otlp-timeout"),
        env_var(env, signal.timeout_var),
        env_var(env, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        file_key(file_otlp.timeout.map(|v| v.to_string()), "otlp.timeout", path),
    ]) {
        Some((raw, source)) => Duration::from_millis(check_range(parse_number(&raw, &source)?, 1, 3_600_000, &source)?),
        None => DEFAULT_OTLP_TIMEOUT,
    };
    let compression = match first([
        flag(args.otlp_compression.clone(), "otlp-compression"),
        env_var(env, signal.compression_var),
        env_var(env, "OTEL_EXPORTER_OTLP_COMPRESSION"),
        file_key(file_otlp.compression, "otlp.compression", path),
    ]) {
        Some((raw, source)) => Some(parse_compression(&raw, &source)?),
        None => None,
    };
    // Every value is checked even without an endpoint: a typo is reported
    // before someone adds the endpoint and wonders.
    Ok(endpoint.map(|endpoint| {
        let compression = compression.unwrap_or_else(|| default_compression(&endpoint));
        OtlpConfig { endpoint, protocol, headers, timeout, compression }
    }))
}
