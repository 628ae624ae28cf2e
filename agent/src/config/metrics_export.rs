//! OTLP export of the application metrics: `OTEL_METRICS_EXPORTER` and
//! `OTEL_METRIC_EXPORT_INTERVAL`, and the metrics signal's endpoint,
//! protocol, headers, timeout and compression, resolved by the same rules
//! (and flags) as the traces' with the `_METRICS_` variables in between.
use std::{path::Path, time::Duration};

use super::{
    file::{FileConfig, FileOtlp},
    otlp_signal,
    source::{env_var, file_key, first, flag, Source},
    values::{check_range, parse_number},
    CliArgs, ConfigError, Env, OtlpConfig,
};

/// OTEL_METRIC_EXPORT_INTERVAL's default (the OTel specification's).
pub const DEFAULT_METRIC_EXPORT_INTERVAL: Duration = Duration::from_secs(60);

/// What `OTEL_METRICS_EXPORTER` asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Exporters {
    pub(super) otlp: bool,
    pub(super) prometheus: bool,
    /// Listed `none`: no metrics at all unless a flag says otherwise.
    pub(super) none: bool,
}

fn parse_exporters(raw: &str, source: &Source) -> Result<Exporters, ConfigError> {
    let mut out = Exporters::default();
    for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name.to_ascii_lowercase().as_str() {
            "otlp" => out.otlp = true,
            "prometheus" => out.prometheus = true,
            "none" => out.none = true,
            other => {
                return Err(source
                    .invalid(format!("unsupported metrics exporter {other:?} (expected otlp, prometheus or none)")))
            }
        }
    }
    if out.none && (out.otlp || out.prometheus) {
        return Err(source.invalid("none cannot be combined with another exporter"));
    }
    Ok(out)
}

/// The resolved metrics export settings.
pub(super) struct MetricsExport {
    pub(super) exporters: Exporters,
    pub(super) otlp: Option<OtlpConfig>,
    pub(super) interval: Duration,
}

pub(super) fn resolve(
    args: &CliArgs,
    env: &dyn Env,
    file: &FileConfig,
    file_otlp: FileOtlp,
    path: Option<&Path>,
    sdk_disabled: bool,
) -> Result<MetricsExport, ConfigError> {
    let exporters = match first([
        flag(args.metrics_exporter.clone(), "metrics-exporter"),
        env_var(env, "OTEL_METRICS_EXPORTER"),
        file_key(file.metrics_exporter.clone(), "metrics_exporter", path),
    ]) {
        // Tracing disabled: what the environment or file asked for is off.
        Some((_, Source::Env(_) | Source::File { .. })) if sdk_disabled => Exporters::default(),
        Some((raw, source)) => parse_exporters(&raw, &source)?,
        // Off unless asked for: a traces-only collector would refuse them.
        None => Exporters::default(),
    };
    let interval = match first([
        flag(args.metric_export_interval.map(|v| v.to_string()), "metric-export-interval"),
        env_var(env, "OTEL_METRIC_EXPORT_INTERVAL"),
        file_key(file.metric_export_interval.map(|v| v.to_string()), "metric_export_interval", path),
    ]) {
        Some((raw, source)) => {
            Duration::from_millis(check_range(parse_number(&raw, &source)?, 100, 3_600_000, &source)?)
        }
        None => DEFAULT_METRIC_EXPORT_INTERVAL,
    };
    if !exporters.otlp {
        return Ok(MetricsExport { exporters, otlp: None, interval });
    }
    let otlp = otlp_signal::resolve(&otlp_signal::METRICS, args, env, file_otlp, path, false)?;
    if otlp.is_none() {
        return Err(ConfigError::Invalid {
            setting: "OTEL_METRICS_EXPORTER".into(),
            message:
                "otlp needs an OTLP endpoint (--otlp-endpoint, OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT or otlp.endpoint)"
                    .into(),
        });
    }
    Ok(MetricsExport { exporters, otlp, interval })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OtlpProtocol;

    fn source() -> Source {
        Source::Env("OTEL_METRICS_EXPORTER")
    }

    fn load(flags: &[&str], vars: &[(&str, &str)]) -> Result<crate::config::Config, ConfigError> {
        use clap::Parser;
        let mut argv = vec!["waggle"];
        argv.extend_from_slice(flags);
        let args = CliArgs::try_parse_from(argv).unwrap();
        let env: std::collections::HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        crate::config::Config::load(&args, &env)
    }

    #[test]
    fn metrics_go_beside_the_traces_and_only_when_asked_for() {
        let otlp = [("OTEL_METRICS_EXPORTER", "otlp")];
        // Off by default, even with an OTLP endpoint; app metrics follow
        // whoever can read them.
        let c = load(&["--otlp-endpoint", "http://c:4318"], &[]).unwrap();
        assert_eq!((c.metrics_otlp.is_some(), c.app_metrics), (false, false));
        let c = load(&["--otlp-endpoint", "http://c:4318"], &otlp).unwrap();
        let m = c.metrics_otlp.unwrap();
        assert_eq!(m.endpoint, "http://c:4318/v1/metrics");
        assert_eq!(m.protocol, OtlpProtocol::HttpProtobuf);
        assert!(c.app_metrics);
        assert_eq!(c.metric_export_interval, Duration::from_secs(60));
        // A traces URL names the collector; a metrics endpoint is used as is.
        let c = load(&["--otlp-endpoint", "http://c:4318/v1/traces"], &otlp).unwrap();
        assert_eq!(c.metrics_otlp.unwrap().endpoint, "http://c:4318/v1/metrics");
        let vars = [
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9999/custom"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-key=m"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-key=t"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
        ];
        let c = load(&[], &vars).unwrap();
        let m = c.metrics_otlp.unwrap();
        assert_eq!(m.endpoint, "http://m:9999/custom");
        assert_eq!(m.headers, vec![("x-key".to_owned(), "m".to_owned())]);
        assert_eq!(c.otlp.unwrap().headers, vec![("x-key".to_owned(), "t".to_owned())]);
        assert_eq!(c.metric_export_interval, Duration::from_millis(1500));
        // grpc: the endpoint as given.
        let c = load(&["--otlp-endpoint", "http://c:4317", "--otlp-protocol", "grpc"], &otlp).unwrap();
        assert_eq!(c.metrics_otlp.unwrap().endpoint, "http://c:4317");
        // Asked for without an endpoint: an error naming the variable.
        let e = load(&[], &otlp).unwrap_err().to_string();
        assert!(e.starts_with("OTEL_METRICS_EXPORTER: otlp needs an OTLP endpoint"), "{e}");
        // prometheus: served on the specification's default address.
        let c = load(&[], &[("OTEL_METRICS_EXPORTER", "prometheus")]).unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(c.app_metrics);
        // none keeps the agent's own metrics endpoint but computes nothing.
        let c = load(&["--metrics-addr", "127.0.0.1:9000"], &[("OTEL_METRICS_EXPORTER", "none")]).unwrap();
        assert!(!c.app_metrics);
        let c = load(&["--metrics-addr", "127.0.0.1:9000", "--app-metrics", "off"], &[]).unwrap();
        assert!(!c.app_metrics);
        let e = load(&[], &[("OTEL_METRIC_EXPORT_INTERVAL", "10")]).unwrap_err().to_string();
        assert!(e.starts_with("OTEL_METRIC_EXPORT_INTERVAL: "), "{e}");
        // Tracing disabled: no metric push from the environment either.
        let vars = [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ];
        assert!(load(&[], &vars).unwrap().metrics_otlp.is_none());
    }

    #[test]
    fn exporters_parse_lists_and_refuse_unknown_names() {
        assert_eq!(parse_exporters("otlp", &source()).unwrap(), Exporters { otlp: true, ..Default::default() });
        assert_eq!(
            parse_exporters(" OTLP , prometheus", &source()).unwrap(),
            Exporters { otlp: true, prometheus: true, none: false }
        );
        assert_eq!(parse_exporters("none", &source()).unwrap(), Exporters { none: true, ..Default::default() });
        let err = parse_exporters("otlp,console", &source()).unwrap_err().to_string();
        assert_eq!(
            err,
            "OTEL_METRICS_EXPORTER: unsupported metrics exporter \"console\" (expected otlp, prometheus or none)"
        );
        assert!(parse_exporters("none,otlp", &source()).is_err());
    }
}
