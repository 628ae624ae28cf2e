//! The YAML config file (`--config`): its schema, keys mirroring the flags,
//! and reading it.
use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

use super::ConfigError;

const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// A YAML scalar accepted where a string is expected (`version: 2`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    pub(super) fn into_string(self) -> String {
        match self {
            Scalar::Str(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileOtlp {
    pub(super) endpoint: Option<String>,
    pub(super) protocol: Option<String>,
    pub(super) headers: Option<BTreeMap<String, Scalar>>,
    pub(super) timeout: Option<u64>,
    pub(super) compression: Option<String>,
}

/// `trace:`: which processes are traced (selection.rs).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTrace {
    pub(super) include: Option<Vec<String>>,
    pub(super) exclude: Option<Vec<String>>,
    pub(super) default_excludes: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) trace: Option<FileTrace>,
    pub(super) otlp: Option<FileOtlp>,
    pub(super) print: Option<String>,
    pub(super) capture_bytes: Option<u32>,
    pub(super) ring_buffer_bytes: Option<u32>,
    pub(super) max_queued_spans: Option<usize>,
    pub(super) max_buffer_bytes: Option<usize>,
    pub(super) recent_traces_bytes: Option<usize>,
    pub(super) max_export_batch: Option<usize>,
    pub(super) export_interval: Option<u64>,
    pub(super) sampler: Option<String>,
    pub(super) sampler_arg: Option<Scalar>,
    pub(super) raw_sql: Option<bool>,
    pub(super) cache_keys: Option<bool>,
    pub(super) propagation: Option<Scalar>,
    pub(super) trace_response_header: Option<Scalar>,
    pub(super) tls: Option<Scalar>,
    pub(super) trusted_networks: Option<String>,
    pub(super) redact_url_paths: Option<String>,
    pub(super) metrics_addr: Option<String>,
    pub(super) app_metrics: Option<Scalar>,
    pub(super) metrics_max_series: Option<usize>,
    pub(super) metrics_exporter: Option<String>,
    pub(super) metric_export_interval: Option<u64>,
    pub(super) resource_attributes: Option<BTreeMap<String, Scalar>>,
    pub(super) log_level: Option<String>,
    pub(super) kube: Option<Scalar>,
    pub(super) kube_config: Option<std::path::PathBuf>,
    pub(super) node_name: Option<String>,
    pub(super) cluster_name: Option<String>,
}

impl FileConfig {
    pub(super) fn read(path: &Path) -> Result<FileConfig, ConfigError> {
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
