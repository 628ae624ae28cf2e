//! The Node.js app (bench/node_app.js, the http module, one process) under
//! keep-alive load: no tracing, waggle, and the OpenTelemetry Node.js SDK
//! started with `--require @opentelemetry/auto-instrumentations-node/register`
//! (installed from npm into a prefix of the bench's own), exporting to the
//! same sink.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{anyhow, Result};

use super::sdk::{sdk_rounds, SdkBench, SdkRound, Tracing};
use crate::bench::{
    ctx::Ctx,
    deps,
    procs::{self, Proc},
};

pub const NODE_WRK_CONNECTIONS: u32 = 8;
pub const NODE_SDK: &str = "OpenTelemetry Node.js SDK";

fn start_node(ctx: &Ctx, prefix: &Path, variant: Tracing, port: u16) -> Result<Proc> {
    let node = crate::cmd::find_program("node").ok_or_else(|| anyhow!("node not found"))?;
    let mut command = Command::new(node);
    if variant == Tracing::Sdk {
        command
            .arg("--require")
            .arg(deps::NODE_SDK_REGISTER)
            .env("OTEL_SERVICE_NAME", "bench-node")
            .env("OTEL_TRACES_EXPORTER", "otlp")
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_LOGS_EXPORTER", "none")
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", ctx.sink.base_url())
            // Same cadence as waggle's default export interval.
            .env("OTEL_BSP_SCHEDULE_DELAY", "1000")
            // The default, `all`, includes the cloud detectors, which query
            // metadata addresses off this machine at start-up.
            .env("OTEL_NODE_RESOURCE_DETECTORS", "env,host,os,process,serviceinstance");
    }
    command
        .arg(ctx.bench_dir().join("node_app.js"))
        .arg(port.to_string())
        // `--require` resolves from the working directory: the npm prefix.
        .current_dir(prefix)
        .env_remove("NODE_OPTIONS")
        .stdin(Stdio::null())
        .stdout(ctx.log_file("node.log")?)
        .stderr(ctx.log_file("node.log")?);
    eprintln!("$ {}", procs::display(&command));
    let mut proc = Proc::spawn("node", command, libc::SIGTERM, None)?;
    procs::wait_port(port, Duration::from_secs(60), &mut proc)?;
    Ok(proc)
}

pub fn node(ctx: &mut Ctx) -> Result<Vec<SdkRound>> {
    let prefix = deps::ensure_node_modules(&ctx.root)?;
    let bench = SdkBench {
        label: "node",
        sdk_name: NODE_SDK,
        path: "/work/7",
        connections: NODE_WRK_CONNECTIONS,
        headers: &[],
    };
    sdk_rounds(ctx, &bench, |ctx, variant, port| start_node(ctx, &prefix, variant, port))
}
