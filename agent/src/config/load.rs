//! [`Config::load`]: merges flags > environment > config file > defaults,
//! resolving each setting together with where it came from.
use std::{collections::BTreeMap, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use super::{
    file::{FileConfig, Scalar},
    otlp_signal,
    sampler::parse_sampler,
    source::{env_var, file_key, first, flag, Source},
    values::{check_range, parse_bool_env, parse_key_values, parse_networks, parse_number, parse_on_off, parse_print},
    CliArgs, Config, ConfigError, Env, PrintFormat, Sampler,
};
use crate::{protocols::http1::PathRedaction, selection::ResponseHeader};

const MAX_QUEUED_SPANS_LIMIT: usize = 1 << 20;
const MAX_EXPORT_BATCH_LIMIT: usize = 1 << 16;
const MAX_RING_BUFFER_BYTES: u32 = 1 << 30;
const MIN_RING_BUFFER_BYTES: u32 = 4096;
const MAX_METRIC_SERIES_LIMIT: usize = 1 << 20;

impl Config {
    /// Merges flags, environment, the `--config` file and defaults.
    pub fn load(args: &CliArgs, env: &dyn Env) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        let path = args.config.as_deref();
        let defaults = Config::default();
        let trace_rules = super::selection::resolve(args, env, file.trace.clone(), path)?;
        let file_otlp = file.otlp.clone().unwrap_or_default();

        // OTEL_SDK_DISABLED turns off what the environment and the file asked
        // for; explicit output flags are a later, more specific instruction.
        let sdk_disabled = match env_var(env, "OTEL_SDK_DISABLED") {
            Some((raw, source)) => parse_bool_env(&raw, &source)?,
            None => false,
        };
        let output_flags = args.otlp_endpoint.is_some() || args.print.is_some();
        let sdk_disabled = sdk_disabled && !output_flags;
        // Read before the file's fields are taken below.
        let metrics_export = super::metrics_export::resolve(
            args,
            env,
            &file,
            file.otlp.clone().unwrap_or_default(),
            path,
            sdk_disabled,
        )?;

        // --- OTLP ---
        let otlp = otlp_signal::resolve(&otlp_signal::TRACES, args, env, file_otlp, path, sdk_disabled)?;

        // --- printing ---
        let print = match first([flag(args.print.clone(), "print"), file_key(file.print, "print", path)]) {
            Some((raw, source)) => parse_print(&raw, &source)?,
            None if otlp.is_some() || sdk_disabled => None,
            None => Some(PrintFormat::Tree),
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
        let max_buffer_bytes = match first([
            flag(args.max_buffer_bytes.map(|v| v.to_string()), "max-buffer-bytes"),
            file_key(file.max_buffer_bytes.map(|v| v.to_string()), "max_buffer_bytes", path),
        ]) {
            Some((raw, source)) => check_range(parse_number(&raw, &source)?, 1 << 20, 1 << 40, &source)?,
            None => defaults.max_buffer_bytes,
        };
        let recent_traces_bytes = match first([
            flag(args.recent_traces_bytes.map(|v| v.to_string()), "recent-traces-bytes"),
            file_key(file.recent_traces_bytes.map(|v| v.to_string()), "recent_traces_bytes", path),
        ]) {
            // At most half of the one budget: the connections keep the rest.
            Some((raw, source)) => check_range(parse_number(&raw, &source)?, 0, max_buffer_bytes / 2, &source)?,
            None => defaults.recent_traces_bytes.min(max_buffer_bytes / 2),
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
        let cache_keys = args.cache_keys || file.cache_keys.unwrap_or(defaults.cache_keys);
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
        let trace_response_header = match first([
            flag(args.trace_response_header.clone(), "trace-response-header"),
            env_var(env, "WAGGLE_TRACE_RESPONSE_HEADER"),
            file_key(file.trace_response_header.map(Scalar::into_string), "trace_response_header", path),
        ]) {
            // Tracing disabled: no trace ids go out either.
            Some((raw, source)) => match ResponseHeader::parse(&raw).map_err(|e| source.invalid(e))? {
                _ if sdk_disabled => ResponseHeader::Off,
                mode => mode,
            },
            None => defaults.trace_response_header,
        };
        let tls = match first([
            flag(args.tls.clone(), "tls"),
            env_var(env, "WAGGLE_TLS"),
            file_key(file.tls.map(Scalar::into_string), "tls", path),
        ]) {
            Some((raw, source)) => parse_on_off(&raw, &source)?,
            None => defaults.tls,
        };
        let trusted_networks = match first([
            flag(args.trusted_networks.clone(), "trusted-networks"),
            env_var(env, "WAGGLE_TRUSTED_NETWORKS"),
            file_key(file.trusted_networks, "trusted_networks", path),
        ]) {
            Some((raw, source)) => Some(parse_networks(&raw, &source)?),
            None => defaults.trusted_networks,
        };
        let redact_url_paths = match first([
            flag(args.redact_url_paths.clone(), "redact-url-paths"),
            env_var(env, "WAGGLE_REDACT_URL_PATHS"),
            file_key(file.redact_url_paths, "redact_url_paths", path),
        ]) {
            Some((raw, source)) => Arc::new(PathRedaction::parse(&raw).map_err(|e| source.invalid(e))?),
            None => defaults.redact_url_paths,
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
        // OTEL_METRICS_EXPORTER=prometheus without an address: the OTel
        // specification's default for its Prometheus exporter.
        let metrics_addr = match metrics_addr {
            None if metrics_export.exporters.prometheus => Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            addr => addr,
        };
        let app_metrics = match first([
            flag(args.app_metrics.clone(), "app-metrics"),
            file_key(file.app_metrics.map(Scalar::into_string), "app_metrics", path),
        ]) {
            Some((raw, source)) => parse_on_off(&raw, &source)?,
            // Computing metrics nobody can read is waste.
            None => !metrics_export.exporters.none && (metrics_addr.is_some() || metrics_export.otlp.is_some()),
        };
        let metrics_max_series = match first([
            flag(args.metrics_max_series.map(|v| v.to_string()), "metrics-max-series"),
            file_key(file.metrics_max_series.map(|v| v.to_string()), "metrics_max_series", path),
        ]) {
            Some((raw, source)) => check_range(parse_number(&raw, &source)?, 1, MAX_METRIC_SERIES_LIMIT, &source)?,
            None => defaults.metrics_max_series,
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

        let kube = super::kube::resolve(
            args,
            env,
            super::kube::FileKube {
                mode: file.kube.map(Scalar::into_string),
                kubeconfig: file.kube_config,
                node_name: file.node_name,
                cluster_name: file.cluster_name,
            },
            path,
        )?;

        Ok(Config {
            otlp,
            print,
            resource_attributes: resource_attributes.into_iter().collect(),
            sampler,
            sampler_parent_based,
            capture_bytes,
            ring_buffer_bytes,
            max_queued_spans,
            max_buffer_bytes,
            recent_traces_bytes,
            max_export_batch,
            export_interval,
            raw_sql,
            cache_keys,
            propagation,
            propagation_unsafe_keepalive,
            trace_response_header,
            tls,
            trusted_networks,
            redact_url_paths,
            metrics_addr,
            app_metrics,
            metrics_max_series,
            metrics_otlp: metrics_export.otlp,
            metric_export_interval: metrics_export.interval,
            config_file: args.config.clone(),
            kube,
            log_filter,
            sdk_disabled,
            trace_rules,
        })
    }
}
