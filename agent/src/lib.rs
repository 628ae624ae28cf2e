//! waggle: a zero-code distributed tracing agent.
//!
//! Pipeline, one module per stage:
//! [`probes`] (load/attach eBPF) → [`intake`] (decode ring-buffer records) →
//! [`conntrack`] (per-connection state) → [`protocols`] (parsers) →
//! [`linking`] (kernel trace ids) → [`assembly`] → [`export`] (OTLP or
//! terminal), driven by [`pipeline`].
//! [`discovery`] reads /proc, [`k8s`] watches the Kubernetes API for pod metadata, [`config`] merges flags/env/file, [`metrics`]
//! counts every drop, [`health`] answers liveness/readiness probes, [`span_metrics`] turns exported spans into RED
//! metrics and a service graph.
pub mod allocator;
pub mod assembly;
pub mod clock;
pub mod config;
pub mod conntrack;
pub mod discovery;
pub mod export;
pub mod health;
pub mod intake;
pub mod k8s;
pub mod linking;
pub mod metrics;
pub mod metrics_server;
pub mod model;
pub mod pipeline;
pub mod probes;
pub mod protocols;
pub mod selection;
pub mod span_metrics;

pub use config::Config;
pub use pipeline::{run, RunError};
pub mod cli;
