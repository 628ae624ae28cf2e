//! Configuration: clap flags, the standard `OTEL_*` environment variables
//! (read through [`Env`] so tests never touch the process environment) and an
//! optional YAML file. Precedence: flag > environment > file > default.
//!
//! Every setting is resolved together with where it came from, so a bad value
//! is reported as one line naming the flag, variable or file key and the value.
//!
//! Files, each importing only those listed before it: `source` (where a raw
//! value came from, the error naming it), `cli` (flags and `--help`),
//! `sampler`, `settings` (the resolved [`Config`]), `file` (the YAML schema),
//! `values` (parsing one value), `selection` (the trace include/exclude rules), `otlp_signal` (one OTLP signal's
//! endpoint and options), `metrics_export`, `kube` (Kubernetes metadata), `load` (the merge, [`Config::load`]).
mod cli;
mod file;
mod kube;
mod load;
mod metrics_export;
mod otlp_signal;
mod sampler;
mod selection;
mod settings;
mod source;
mod values;

#[cfg(test)]
mod tests;

pub use cli::CliArgs;
pub use sampler::Sampler;
pub use settings::{Config, KubeConfig, KubeSource, OtlpCompression, OtlpConfig, OtlpProtocol, PrintFormat};
pub use source::{ConfigError, Env, ProcessEnv};
