//! The binary's edge: parse arguments, build the config, init logging, run.
//! Errors become one line on stderr and a non-zero exit: 2 for usage and
//! configuration errors, 1 for failures while running.
use std::{future::Future, io::IsTerminal, process::ExitCode};

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{CliArgs, Config, ProcessEnv, Sampler};

const EXIT_USAGE: u8 = 2;
/// Exit code after a second SIGINT/SIGTERM cut the shutdown short.
const EXIT_INTERRUPTED: i32 = 130;

pub fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "trace") {
        return trace_main();
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "floor") {
        return floor_main();
    }
    // Usage errors exit 2 through clap; --help and --version exit 0.
    let args = CliArgs::parse();
    let config = match Config::load(&args, &ProcessEnv) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("waggle: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.check_config {
        println!("{}", describe_config(&config));
        return ExitCode::SUCCESS;
    }
    if let Err(e) = init_logging(&config.log_filter) {
        eprintln!("waggle: {e}");
        return ExitCode::FAILURE;
    }
    log_config(&config);

    // One thread runs the pipeline and the exporter, and its own epoll: the
    // ring buffer's readiness and the drain timer wake the thread that
    // drains, instead of a worker that would then wake this thread (a futex
    // wake and two context switches per drain). /proc reads, selection and
    // the metrics endpoint have threads of their own.
    let Some(runtime) = current_thread_runtime("waggle") else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal().map_err(|e| format!("installing signal handlers: {e}"))?;
        crate::run(config, shutdown).await.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waggle: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime every subcommand runs on, or None after one line on stderr
/// (prefixed `who`) saying why there is none.
fn current_thread_runtime(who: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("{who}: starting the async runtime: {e}");
            None
        }
    }
}

/// `waggle trace <id>`: one recent trace's waterfall from a running agent.
#[derive(Debug, clap::Parser)]
#[command(
    name = "waggle trace",
    bin_name = "waggle trace",
    about = "Print one recent trace as a waterfall, asked of the agent running on this machine",
    after_help = "The agent keeps the traces it exported last (--recent-traces-bytes, 4 MiB by default) and \
                  answers on its --metrics-addr to loopback clients only. Exit status: 0 printed, 1 not found \
                  or no agent answering, 2 usage."
)]
struct TraceArgs {
    /// The trace id: 32 hex digits, as in a span's trace= or a traceparent header
    trace_id: String,
    /// The agent's --metrics-addr; an unspecified address (0.0.0.0, ::) is asked on loopback
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    agent: String,
}

fn trace_main() -> ExitCode {
    let args = TraceArgs::parse_from(std::env::args_os().skip(1));
    if let Err(e) = crate::export::waterfall::parse_trace_id(&args.trace_id) {
        eprintln!("waggle trace: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let addr = match args.agent.parse::<std::net::SocketAddr>() {
        Ok(mut addr) => {
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            addr
        }
        Err(_) => {
            eprintln!("waggle trace: --agent {:?} is not IP:PORT (e.g. 127.0.0.1:9464)", args.agent);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let Some(runtime) = current_thread_runtime("waggle trace") else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(fetch_trace(addr, args.trace_id.trim())) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("waggle trace: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `waggle floor` (for `cargo xtask bench`): an empty program on every
/// tracepoint the agent uses, until SIGINT or SIGTERM. Prints one
/// `skipped CATEGORY:NAME: REASON` line per tracepoint it could not take,
/// then `attached N of M` and `ready`.
fn floor_main() -> ExitCode {
    let Some(runtime) = current_thread_runtime("waggle floor") else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        // Before `ready`: a signal sent as soon as it is printed is caught.
        let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| format!("installing signal handlers: {e}"))?;
        let mut terminate = signal(SignalKind::terminate()).map_err(|e| format!("installing signal handlers: {e}"))?;
        let floor = crate::probes::Floor::attach().map_err(|e| e.to_string())?;
        for (tracepoint, reason) in &floor.skipped {
            println!("skipped {tracepoint}: {reason}");
        }
        println!("attached {} of {}", floor.attached.len(), floor.attached.len() + floor.skipped.len());
        println!("ready");
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        drop(floor);
        Ok::<(), String>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waggle floor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The trace's waterfall, or one line saying why there is none.
async fn fetch_trace(addr: std::net::SocketAddr, trace_id: &str) -> Result<String, String> {
    use crate::export::waterfall::{colour_stdout, decode_trace, render_trace, RenderOptions};
    let url = format!("http://{addr}/traces/{trace_id}");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let resp = client.get(&url).send().await.map_err(|e| {
        // reqwest's own message names only the request; the cause is below.
        let mut cause: &dyn std::error::Error = &e;
        while let Some(source) = cause.source() {
            cause = source;
        }
        format!("no agent answered on {addr} ({cause}); start it with --metrics-addr, or pass its address with --agent")
    })?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| format!("reading the agent's answer from {url}: {e}"))?;
    if !status.is_success() {
        return Err(body.trim_end().to_owned());
    }
    let spans = decode_trace(&body).map_err(|e| e.to_string())?;
    let mut text = String::new();
    let opts = RenderOptions { colour: colour_stdout(), ..RenderOptions::default() };
    render_trace(&spans, 0, &opts, &mut text);
    Ok(text)
}

#[derive(Debug, thiserror::Error)]
enum LoggingError {
    #[error("log filter {filter:?}: {message}")]
    Filter { filter: String, message: String },
    #[error("installing the log subscriber: {0}")]
    Subscriber(#[from] tracing::subscriber::SetGlobalDefaultError),
    #[error("bridging `log` records into tracing: {0}")]
    LogBridge(#[from] tracing_log::log_tracer::SetLoggerError),
}

/// Logs go to stderr: stdout carries the printed spans.
fn init_logging(filter: &str) -> Result<(), LoggingError> {
    let env_filter = tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map_err(|e| LoggingError::Filter { filter: filter.to_owned(), message: e.to_string() })?;
    // Only forward `log` records (aya, aya-log) the filter could let through,
    // so disabled debug logging costs nothing in the libraries.
    let max_level = match env_filter.max_level_hint() {
        Some(level) => level_to_log(level),
        None => log::LevelFilter::Trace,
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(env_filter)
        .finish();
    tracing::subscriber::set_global_default(subscriber)?;
    tracing_log::LogTracer::init_with_filter(max_level)?;
    Ok(())
}

fn level_to_log(level: tracing_subscriber::filter::LevelFilter) -> log::LevelFilter {
    use tracing_subscriber::filter::LevelFilter;
    match level {
        LevelFilter::OFF => log::LevelFilter::Off,
        LevelFilter::ERROR => log::LevelFilter::Error,
        LevelFilter::WARN => log::LevelFilter::Warn,
        LevelFilter::INFO => log::LevelFilter::Info,
        LevelFilter::DEBUG => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

fn sampler_name(config: &Config) -> String {
    let root = match config.sampler {
        Sampler::AlwaysOn => "always_on".to_owned(),
        Sampler::AlwaysOff => "always_off".to_owned(),
        Sampler::TraceIdRatio(ratio) => format!("traceidratio({ratio})"),
    };
    format!("{}{root}", if config.sampler_parent_based { "parentbased_" } else { "" })
}

/// `--check-config` output: the effective settings, one per line, header
/// names but never header values (they are credentials).
fn describe_config(config: &Config) -> String {
    let otlp = match &config.otlp {
        Some(o) => {
            let names: Vec<&str> = o.headers.iter().map(|(k, _)| k.as_str()).collect();
            format!("{} ({}), headers: [{}], compression: {}", o.endpoint, o.protocol, names.join(", "), o.compression)
        }
        None => "none".to_owned(),
    };
    let mut lines = vec![
        "configuration is valid".to_owned(),
        format!("otlp: {otlp}"),
        format!("print: {:?}", config.print),
        format!("sampler: {}", sampler_name(config)),
        format!("capture_bytes: {}", config.capture_bytes),
        format!("ring_buffer_bytes: {}", config.ring_buffer_bytes),
        format!("max_queued_spans: {}", config.max_queued_spans),
        format!("max_buffer_bytes: {}", config.max_buffer_bytes),
        format!(
            "recent_traces_bytes: {}",
            match (config.recent_traces_bytes, config.metrics_addr) {
                (0, _) => "0 (waggle trace finds nothing)".to_owned(),
                (bytes, Some(_)) => format!("{bytes} (of max_buffer_bytes; served to loopback for waggle trace)"),
                (bytes, None) => format!("{bytes} (unused: no metrics_addr to serve waggle trace on)"),
            }
        ),
        format!("raw_sql: {}", config.raw_sql),
        format!("cache_keys: {}", config.cache_keys),
        format!("redact_url_paths: {} template(s) besides the built-in rules", config.redact_url_paths.templates()),
        format!(
            "propagation: {}",
            match (config.propagation, config.propagation_unsafe_keepalive) {
                (false, _) => "off",
                (true, false) => "on",
                (true, true) => "unsafe-keepalive",
            }
        ),
        format!(
            "trace_response_header: {} ({} include rule(s) set their own)",
            config.trace_response_header,
            config.trace_rules.include.iter().filter(|r| r.response_header.is_some()).count()
        ),
        format!("metrics_addr: {}", config.metrics_addr.map(|a| a.to_string()).unwrap_or_else(|| "none".into())),
        format!(
            "app_metrics: {} (at most {} series per metric)",
            if config.app_metrics { "on" } else { "off" },
            config.metrics_max_series
        ),
        match &config.metrics_otlp {
            Some(o) => format!(
                "metrics otlp: {} ({}) every {} ms",
                o.endpoint,
                o.protocol,
                config.metric_export_interval.as_millis()
            ),
            None => "metrics otlp: off".to_owned(),
        },
        format!(
            "kubernetes metadata: {}",
            match &config.kube.source {
                None => "off".to_owned(),
                Some(source) => format!(
                    "{source:?}, node {}, cluster {}",
                    config.kube.node_name,
                    config.kube.cluster_name.as_deref().unwrap_or("(unnamed)")
                ),
            }
        ),
    ];
    for (k, v) in &config.resource_attributes {
        lines.push(format!("resource attribute: {k}={v}"));
    }
    lines.join("\n")
}

fn log_config(config: &Config) {
    let sampler = sampler_name(config);
    tracing::info!(
        otlp_endpoint = config.otlp.as_ref().map(|o| o.endpoint.as_str()).unwrap_or("none"),
        otlp_protocol = config.otlp.as_ref().map(|o| o.protocol.to_string()).unwrap_or_default(),
        otlp_compression = config.otlp.as_ref().map(|o| o.compression.to_string()).unwrap_or_default(),
        // Header names only: the values are credentials.
        otlp_headers = ?config.otlp.as_ref().map(|o| o.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()),
        print = ?config.print,
        sampler = %sampler,
        capture_bytes = config.capture_bytes,
        raw_sql = config.raw_sql,
        cache_keys = config.cache_keys,
        redact_url_path_templates = config.redact_url_paths.templates(),
        propagation = config.propagation,
        trace_response_header = %config.trace_response_header,
        app_metrics = config.app_metrics,
        metrics_max_series = config.metrics_max_series,
        config_file = ?config.config_file,
        kube = ?config.kube.source,
        kube_node = %config.kube.node_name,
        "configuration loaded"
    );
    if config.sdk_disabled {
        tracing::warn!("OTEL_SDK_DISABLED=true: spans are neither exported nor printed");
    }
}

/// Resolves on the first SIGINT or SIGTERM. A second one exits at once, for
/// when the flush at shutdown takes too long for the operator.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "shutting down (send it again to exit at once)");
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
            eprintln!("waggle: second signal, exiting without finishing the flush");
            std::process::exit(EXIT_INTERRUPTED);
        });
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_valid_and_help_mentions_defaults() {
        CliArgs::command().debug_assert();
        let help = CliArgs::command().render_long_help().to_string();
        assert!(help.contains("--otlp-endpoint"), "{help}");
        assert!(help.contains("http/protobuf"), "{help}");
        assert!(help.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{help}");
        assert!(help.contains("OTEL_SDK_DISABLED"), "{help}");
    }

    #[test]
    fn bad_flag_values_are_usage_errors() {
        let e = CliArgs::try_parse_from(["waggle", "--capture-bytes", "lots"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = CliArgs::try_parse_from(["waggle", "--no-such-flag"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn log_levels_map_to_log_crate() {
        use tracing_subscriber::filter::LevelFilter;
        assert_eq!(level_to_log(LevelFilter::INFO), log::LevelFilter::Info);
        assert_eq!(level_to_log(LevelFilter::OFF), log::LevelFilter::Off);
        assert_eq!(level_to_log(LevelFilter::TRACE), log::LevelFilter::Trace);
    }
}
