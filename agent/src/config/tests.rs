//! `Config::load` end to end: precedence, every setting's parsing and the
//! one-line errors naming where a bad value came from.
use std::{collections::HashMap, io::Write, time::Duration};

use clap::Parser;

use super::*;

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

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
fn defaults_print_trees_and_no_otlp() {
    let c = load(&[], &[]).unwrap();
    assert_eq!(c.otlp, None);
    assert_eq!(c.print, Some(PrintFormat::Tree));
    assert_eq!(c.sampler, Sampler::AlwaysOn);
    assert!(c.sampler_parent_based);
    assert_eq!(c.log_filter, "info");
    assert_eq!(c.capture_bytes, 4096);
    assert!(c.propagation);
    assert!(!c.raw_sql);
    assert!(!c.cache_keys, "cache keys are hidden by default");
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
    let c =
        load(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])
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
    let c =
        load(&["--otlp-endpoint", "http://c:4318", "--otlp-headers", "authorization=Bearer%20s3cr3t"], &[]).unwrap();
    let dbg = format!("{c:?}");
    assert!(dbg.contains("authorization"), "{dbg}");
    assert!(!dbg.contains("s3cr3t"), "{dbg}");
}

#[test]
fn bad_header_errors_do_not_leak_values() {
    let e = err(&["--otlp-endpoint", "http://c:4318", "--otlp-headers", "authorization:Bearer s3cr3t"], &[]);
    assert_eq!(e, "--otlp-headers: entry 1 is not key=value");
    let e = err(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_HEADERS", "a=ok,bad key=x")]);
    assert_eq!(e, "OTEL_EXPORTER_OTLP_HEADERS: invalid header name \"bad key\"");
    let e = err(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_HEADERS", "k=s3cr%0At")]);
    assert!(e.starts_with("OTEL_EXPORTER_OTLP_HEADERS: value of header \"k\""), "{e}");
    assert!(!e.contains("s3cr"), "{e}");
}

#[test]
fn protocol_errors_name_setting_and_value() {
    let e = err(&[], &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]);
    assert_eq!(e, "OTEL_EXPORTER_OTLP_PROTOCOL: protocol \"http/json\" is not supported (use grpc or http/protobuf)");
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
    assert_eq!(load(&[], &[]).unwrap().max_buffer_bytes, 64 << 20);
    assert_eq!(load(&["--max-buffer-bytes", "134217728"], &[]).unwrap().max_buffer_bytes, 128 << 20);
    assert_eq!(
        err(&["--max-buffer-bytes", "4096"], &[]),
        "--max-buffer-bytes: 4096 is out of range (1048576..=1099511627776)"
    );
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
    assert_eq!(load(&["--print", "text"], &[]).unwrap().print, Some(PrintFormat::Text));
    assert_eq!(load(&["--print", "tree"], &[]).unwrap().print, Some(PrintFormat::Tree));
    assert_eq!(err(&["--print", "xml"], &[]), "--print: unknown format \"xml\" (use tree, text, json or off)");
}

#[test]
fn recent_traces_come_out_of_the_buffer_budget() {
    assert_eq!(load(&[], &[]).unwrap().recent_traces_bytes, 4 << 20);
    assert_eq!(load(&["--recent-traces-bytes", "0"], &[]).unwrap().recent_traces_bytes, 0);
    let c = load(&["--max-buffer-bytes", "4194304"], &[]).unwrap();
    assert_eq!(c.recent_traces_bytes, 2 << 20, "the default never takes more than half the budget");
    assert_eq!(
        err(&["--max-buffer-bytes", "4194304", "--recent-traces-bytes", "3000000"], &[]),
        "--recent-traces-bytes: 3000000 is out of range (0..=2097152)"
    );
    let f = yaml("recent_traces_bytes: 1048576\n");
    assert_eq!(load(&["--config", &f.arg()], &[]).unwrap().recent_traces_bytes, 1 << 20);
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
fn redact_url_paths_from_flag_env_and_file() {
    assert_eq!(load(&[], &[]).unwrap().redact_url_paths.templates(), 0);
    let c = load(&["--redact-url-paths", "/reset/*,/invite/*/accept"], &[]).unwrap();
    assert_eq!(c.redact_url_paths.apply("/invite/blue-fox/accept"), "/invite/REDACTED/accept");
    let c = load(&[], &[("WAGGLE_REDACT_URL_PATHS", "/reset/*")]).unwrap();
    assert_eq!(c.redact_url_paths.apply("/reset/sunflower"), "/reset/REDACTED");
    let file = yaml("redact_url_paths: /magic/*\n");
    let c = load(&["--config", &file.arg()], &[]).unwrap();
    assert_eq!(c.redact_url_paths.apply("/magic/word"), "/magic/REDACTED");
    assert!(err(&["--redact-url-paths", "/reset"], &[]).contains("no * segment"));
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
    // The agent's own OTEL_SERVICE_NAME is not a resource attribute of the processes it traces.
    assert_eq!(attrs, vec![("a", "file"), ("b", "env two"), ("c", "flag"), ("d", "env")]);
}

#[test]
fn file_keys_and_errors() {
    let f = yaml(
        "otlp:\n  endpoint: http://f:4318\n  headers:\n    X-Api-Key: abc\nprint: json\nraw_sql: true\ncache_keys: true\npropagation: off\nmetrics_addr: 127.0.0.1:9464\nmax_export_batch: 64\nexport_interval: 250\nlog_level: debug\n",
    );
    let c = load(&["--config", &f.arg()], &[]).unwrap();
    assert_eq!(c.otlp.as_ref().unwrap().headers, vec![("x-api-key".to_owned(), "abc".to_owned())]);
    assert_eq!(c.print, Some(PrintFormat::Json));
    assert!(c.raw_sql);
    assert!(c.cache_keys);
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

    let bad = yaml("otlp:\n  endpoint: http://f:4318\n  certificate: /etc/ca.pem\n");
    let e = err(&["--config", &bad.arg()], &[]);
    assert!(e.starts_with(&format!("parsing config file {}: ", bad.arg())), "{e}");
    assert!(e.contains("unknown field `certificate`"), "{e}");

    let bad = yaml("capture_bytes: 9999\n");
    assert_eq!(
        err(&["--config", &bad.arg()], &[]),
        format!("capture_bytes in {}: 9999 is out of range (1..=4096)", bad.arg())
    );

    let e = err(&["--config", "/nonexistent/waggle.yaml"], &[]);
    assert!(e.starts_with("reading config file /nonexistent/waggle.yaml: "), "{e}");
}

#[test]
fn default_compression_is_gzip_for_remote_endpoints_only() {
    use super::values::default_compression;
    for local in [
        "http://127.0.0.1:4318/v1/traces",
        "http://127.9.9.9:4317",
        "http://[::1]:4317",
        "http://[::ffff:127.0.0.1]:4317",
        "http://localhost:4318",
        "http://LocalHost.:4318",
    ] {
        assert_eq!(default_compression(local), OtlpCompression::None, "{local}");
    }
    for remote in
        ["http://10.1.2.3:4318", "http://collector.example:4317", "http://[fd00::1]:4317", "http://localhost.example:1"]
    {
        assert_eq!(default_compression(remote), OtlpCompression::Gzip, "{remote}");
    }
    // The loaded config applies it to the resolved endpoint.
    let c = load(&["--otlp-endpoint", "http://collector.example:4318"], &[]).unwrap();
    assert_eq!(c.otlp.unwrap().compression, OtlpCompression::Gzip);
    let c = load(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")]).unwrap();
    assert_eq!(c.otlp.unwrap().compression, OtlpCompression::None);
}

#[test]
fn compression_flag_beats_env_beats_file() {
    let f = yaml("otlp:\n  endpoint: http://127.0.0.1:4318\n  compression: gzip\n");
    let c = load(&["--config", &f.arg()], &[]).unwrap();
    assert_eq!(c.otlp.unwrap().compression, OtlpCompression::Gzip, "file beats the loopback default");
    let e = [("OTEL_EXPORTER_OTLP_COMPRESSION", "none")];
    assert_eq!(load(&["--config", &f.arg()], &e).unwrap().otlp.unwrap().compression, OtlpCompression::None);
    let e = [("OTEL_EXPORTER_OTLP_COMPRESSION", "none"), ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "GZIP")];
    assert_eq!(load(&["--config", &f.arg()], &e).unwrap().otlp.unwrap().compression, OtlpCompression::Gzip);
    let c = load(&["--config", &f.arg(), "--otlp-compression", "none"], &e).unwrap();
    assert_eq!(c.otlp.unwrap().compression, OtlpCompression::None);
    let remote = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://10.1.2.3:4318")];
    let c = load(&["--otlp-compression", "none"], &remote).unwrap();
    assert_eq!(c.otlp.unwrap().compression, OtlpCompression::None, "explicit none beats the remote default");

    assert_eq!(
        err(&["--otlp-endpoint", "http://c:4318", "--otlp-compression", "zstd"], &[]),
        "--otlp-compression: unsupported compression \"zstd\" (use gzip or none)"
    );
    let bad = yaml("otlp:\n  endpoint: http://c:4318\n  compression: brotli\n");
    assert_eq!(
        err(&["--config", &bad.arg()], &[]),
        format!("otlp.compression in {}: unsupported compression \"brotli\" (use gzip or none)", bad.arg())
    );
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

#[test]
fn trace_rules_from_flag_env_and_file_with_default_excludes() {
    use crate::selection::{default_excludes, Condition};
    // Defaults alone: no include, the default excludes.
    let c = load(&[], &[]).unwrap();
    assert!(c.trace_rules.include.is_empty());
    assert_eq!(c.trace_rules.exclude, default_excludes());

    let f = yaml("trace:\n  include: [\"exe=*/nginx\", \"port=8000-8999&namespace=shop\"]\n  exclude: [\"label:tier=batch\"]\n  default_excludes: false\n");
    let c = load(&["--config", &f.arg()], &[]).unwrap();
    assert_eq!(c.trace_rules.include.len(), 2);
    assert_eq!(c.trace_rules.include[1].conditions[0], Condition::Ports(vec![(8000, 8999)]));
    assert_eq!(c.trace_rules.exclude.len(), 1, "defaults off in the file");

    // The environment replaces the file's list whole; the flag beats both.
    let c = load(&["--config", &f.arg()], &[("WAGGLE_TRACE_INCLUDE", "exe=/usr/bin/python3*;port=80")]).unwrap();
    assert_eq!(
        c.trace_rules.include.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(),
        ["exe=/usr/bin/python3*", "port=80"]
    );
    let c = load(
        &["--config", &f.arg(), "--trace-include", "exe=/bin/x", "--trace-default-excludes", "on"],
        &[("WAGGLE_TRACE_INCLUDE", "port=80"), ("WAGGLE_TRACE_EXCLUDE", "exe=/bin/y")],
    )
    .unwrap();
    assert_eq!(c.trace_rules.include[0].text, "exe=/bin/x");
    assert_eq!(c.trace_rules.exclude.len(), 1 + default_excludes().len());
    assert_eq!(c.trace_rules.exclude[0].text, "exe=/bin/y");
    let c = load(&[], &[("WAGGLE_TRACE_DEFAULT_EXCLUDES", "off")]).unwrap();
    assert!(c.trace_rules.is_empty());

    // Errors name where the bad rule came from, in one line.
    assert!(err(&["--trace-include", "port=http"], &[]).starts_with("--trace-include: invalid port"));
    assert!(err(&[], &[("WAGGLE_TRACE_EXCLUDE", "user=root")]).starts_with("WAGGLE_TRACE_EXCLUDE: unknown condition"));
    let bad = yaml("trace:\n  exclude: [\"exe\"]\n");
    assert!(err(&["--config", &bad.arg()], &[]).contains("trace.exclude in"));
    assert!(err(&[], &[("WAGGLE_TRACE_DEFAULT_EXCLUDES", "maybe")]).contains("expected on or off"));
}

#[test]
fn tls_probes_default_on_and_switch_off_from_flag_env_and_file() {
    assert!(load(&[], &[]).unwrap().tls);
    assert!(!load(&["--tls", "off"], &[]).unwrap().tls);
    assert!(!load(&[], &[("WAGGLE_TLS", "off")]).unwrap().tls);
    // The flag wins over the environment.
    assert!(load(&["--tls", "on"], &[("WAGGLE_TLS", "off")]).unwrap().tls);
    assert!(err(&["--tls", "maybe"], &[]).contains("--tls"));
}

#[test]
fn kubernetes_metadata_is_on_in_a_pod_or_with_a_kubeconfig() {
    let off = load(&["--node-name", "n1"], &[]).unwrap().kube;
    assert_eq!(off.source, None, "outside a pod, nothing asked for");
    assert_eq!(off.node_name, "n1");
    let in_pod = load(&[], &[("KUBERNETES_SERVICE_HOST", "10.96.0.1"), ("NODE_NAME", "node-7")]).unwrap().kube;
    assert_eq!((in_pod.source, in_pod.node_name.as_str()), (Some(KubeSource::InCluster), "node-7"));
    let pod_env = [("KUBERNETES_SERVICE_HOST", "10.96.0.1")];
    assert_eq!(load(&["--kube", "off"], &pod_env).unwrap().kube.source, None);
    let file = load(&["--kube-config", "/k/config", "--cluster-name", "prod"], &pod_env).unwrap().kube;
    assert_eq!(file.source, Some(KubeSource::Kubeconfig("/k/config".into())), "an explicit kubeconfig wins");
    assert_eq!(file.cluster_name.as_deref(), Some("prod"));
    assert_eq!(load(&["--kube", "on"], &[]).unwrap().kube.source, Some(KubeSource::Infer));
    let f = yaml("kube: off\nkube_config: /x\nnode_name: from-file\ncluster_name: c\n");
    let from_file = load(&["--config", &f.arg()], &pod_env).unwrap().kube;
    assert_eq!((from_file.source, from_file.node_name.as_str()), (None, "from-file"));
    assert!(!load(&[], &[]).unwrap().kube.node_name.is_empty(), "the host name by default");
    assert_eq!(err(&["--kube", "maybe"], &[]), "--kube: expected auto, on or off, got \"maybe\"");
    assert!(err(&["--node-name", "a,b=c"], &[]).starts_with("--node-name: not a Kubernetes node name"));
}

#[test]
fn trace_response_header_globally_and_per_include_rule() {
    use crate::selection::{ProcessView, ResponseHeader};
    let c = load(&[], &[]).unwrap();
    assert_eq!(c.trace_response_header, ResponseHeader::Off);
    assert!(!c.trace_rules.response_header_wanted(c.trace_response_header));
    let f = yaml("trace_response_header: x-trace-id\n");
    let c = load(&["--config", &f.arg()], &[]).unwrap();
    assert_eq!(c.trace_response_header, ResponseHeader::XTraceId);
    let c = load(&["--config", &f.arg()], &[("WAGGLE_TRACE_RESPONSE_HEADER", "traceresponse")]).unwrap();
    assert_eq!(c.trace_response_header, ResponseHeader::TraceResponse);
    let c = load(
        &["--config", &f.arg(), "--trace-response-header", "off"],
        &[("WAGGLE_TRACE_RESPONSE_HEADER", "traceresponse")],
    )
    .unwrap();
    assert_eq!(c.trace_response_header, ResponseHeader::Off);
    // Per include rule: only the edge service gets it.
    let c = load(&["--trace-include", "exe=*/nginx&trace_response_header=traceresponse;exe=*/python3"], &[]).unwrap();
    assert_eq!(c.trace_response_header, ResponseHeader::Off);
    assert!(c.trace_rules.response_header_wanted(c.trace_response_header));
    let view = |exe| ProcessView { exe, ..ProcessView::default() };
    assert_eq!(
        c.trace_rules.response_header(&view("/usr/sbin/nginx"), ResponseHeader::Off),
        ResponseHeader::TraceResponse
    );
    assert_eq!(c.trace_rules.response_header(&view("/usr/bin/python3"), ResponseHeader::Off), ResponseHeader::Off);
    // Tracing disabled: no trace ids go out.
    let c = load(&["--trace-response-header", "traceresponse"], &[("OTEL_SDK_DISABLED", "true")]).unwrap();
    assert_eq!(c.trace_response_header, ResponseHeader::Off);
    assert_eq!(
        err(&["--trace-response-header", "yes"], &[]),
        "--trace-response-header: expected traceresponse, x-trace-id or off, got \"yes\""
    );
    let e = err(&["--trace-exclude", "exe=*/x&trace_response_header=off"], &[]);
    assert!(e.contains("belongs on an include rule"), "{e}");
    let e = err(&["--trace-include", "trace_response_header=traceresponse"], &[]);
    assert!(e.contains("has no condition"), "{e}");
}
