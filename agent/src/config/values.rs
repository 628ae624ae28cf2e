//! Parsing and validating one raw setting value; errors name its [`Source`].
use std::{fmt, net::IpAddr};

use super::{source::Source, ConfigError, OtlpCompression, OtlpProtocol, PrintFormat};
use crate::model::parse_resource_attributes;

/// Comma-separated CIDRs ("10.0.0.0/8", "fd00::/8"; a bare address is a
/// single host).
pub(super) fn parse_networks(raw: &str, source: &Source) -> Result<Vec<(IpAddr, u8)>, ConfigError> {
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

/// Parses `k=v,k2=v2` as used by OTEL_EXPORTER_OTLP_HEADERS and
/// OTEL_RESOURCE_ATTRIBUTES, with the one parser traced processes' own
/// OTEL_RESOURCE_ATTRIBUTES go through ([`parse_resource_attributes`]).
/// Its errors never echo a value: header values are credentials.
pub(super) fn parse_key_values(raw: &str, source: &Source) -> Result<Vec<(String, String)>, ConfigError> {
    parse_resource_attributes(raw).map_err(|e| source.invalid(e.to_string()))
}

/// Header names must be valid HTTP header names (stored lower-case, as gRPC
/// metadata requires) and values visible ASCII, so they are valid both as
/// HTTP headers and as gRPC metadata.
pub(super) fn validate_headers(
    headers: Vec<(String, String)>,
    source: &Source,
) -> Result<Vec<(String, String)>, ConfigError> {
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

pub(super) fn parse_protocol(raw: &str, source: &Source) -> Result<OtlpProtocol, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        "http/json" => Err(source.invalid(format!("protocol {raw:?} is not supported (use grpc or http/protobuf)"))),
        _ => Err(source.invalid(format!("unsupported protocol {raw:?} (use grpc or http/protobuf)"))),
    }
}

pub(super) fn parse_compression(raw: &str, source: &Source) -> Result<OtlpCompression, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "gzip" => Ok(OtlpCompression::Gzip),
        "none" => Ok(OtlpCompression::None),
        _ => Err(source.invalid(format!("unsupported compression {raw:?} (use gzip or none)"))),
    }
}

/// Compression when none is configured: gzip when the endpoint is on another
/// host, none when it is this one. Names are not resolved: `localhost` is
/// local, any other name remote; literal addresses count by their value.
pub(super) fn default_compression(endpoint: &str) -> OtlpCompression {
    let url = reqwest::Url::parse(endpoint).ok();
    // host_str keeps an IPv6 literal's brackets; the URL parser has already
    // normalised IPv4 forms such as 127.1.
    let host = url.as_ref().and_then(reqwest::Url::host_str).unwrap_or("");
    let local = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        Err(_) => host.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
    };
    if local {
        OtlpCompression::None
    } else {
        OtlpCompression::Gzip
    }
}

pub(super) fn parse_print(raw: &str, source: &Source) -> Result<Option<PrintFormat>, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "tree" => Ok(Some(PrintFormat::Tree)),
        "text" => Ok(Some(PrintFormat::Text)),
        "json" => Ok(Some(PrintFormat::Json)),
        "off" | "none" | "false" => Ok(None),
        _ => Err(source.invalid(format!("unknown format {raw:?} (use tree, text, json or off)"))),
    }
}

pub(super) fn parse_on_off(raw: &str, source: &Source) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(source.invalid(format!("expected on or off, got {raw:?}"))),
    }
}

pub(super) fn parse_bool_env(raw: &str, source: &Source) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(source.invalid(format!("expected true or false, got {raw:?}"))),
    }
}

pub(super) fn parse_number<T: std::str::FromStr>(raw: &str, source: &Source) -> Result<T, ConfigError> {
    raw.trim().parse().map_err(|_| source.invalid(format!("{raw:?} is not a valid number")))
}

pub(super) fn check_range<T: PartialOrd + fmt::Display + Copy>(
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

/// Turns a configured endpoint into the URL a signal's exports go to:
/// `base` endpoints get `signal_path` (`/v1/traces`, `/v1/metrics`)
/// appended for http/protobuf; a flag or file URL naming the traces path is
/// the collector's, so the metrics go beside it.
pub(super) fn resolve_signal_endpoint(
    raw: &str,
    source: &Source,
    protocol: OtlpProtocol,
    base: EndpointKind,
    signal_path: &str,
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
            format!("{}{signal_path}", trimmed.trim_end_matches('/'))
        }
        (OtlpProtocol::HttpProtobuf, EndpointKind::BaseOrSignal) => {
            let path = url.path().trim_end_matches('/');
            let base = trimmed.trim_end_matches('/');
            if path.ends_with(signal_path) {
                trimmed.to_owned()
            } else if let Some(collector) = base.strip_suffix("/v1/traces") {
                format!("{collector}{signal_path}")
            } else {
                format!("{base}{signal_path}")
            }
        }
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EndpointKind {
    /// OTEL_EXPORTER_OTLP_ENDPOINT: always a base URL, per the spec.
    Base,
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: used as is.
    Signal,
    /// Flag / file: a base URL unless it already ends with /v1/traces.
    BaseOrSignal,
}
