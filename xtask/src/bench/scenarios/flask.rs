//! The Flask app (bench/flask_app.py) on gunicorn sync workers: no tracing,
//! waggle, and `opentelemetry-instrument` exporting to the same OTLP sink.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Result;

use super::sdk::{sdk_rounds, SdkBench, SdkRound, Tracing};
use crate::bench::{
    ctx::Ctx,
    procs::{self, Proc},
};

pub const FLASK_WORKERS: u32 = 2;
pub const FLASK_WRK_CONNECTIONS: u32 = 4;
pub const FLASK_PATH: &str = "/work/7";
pub const PYTHON_SDK: &str = "OpenTelemetry Python SDK";

/// gunicorn serving the app on `port`, once it listens.
pub fn start_gunicorn(ctx: &Ctx, variant: Tracing, port: u16) -> Result<Proc> {
    let bin = ctx.venv.join("bin");
    let mut command = match variant {
        Tracing::Sdk => {
            let mut c = Command::new(bin.join("opentelemetry-instrument"));
            c.arg(bin.join("gunicorn"))
                .env("OTEL_SERVICE_NAME", "bench-flask")
                .env("OTEL_TRACES_EXPORTER", "otlp")
                .env("OTEL_METRICS_EXPORTER", "none")
                .env("OTEL_LOGS_EXPORTER", "none")
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", ctx.sink.base_url())
                // Same cadence as waggle's default export interval.
                .env("OTEL_BSP_SCHEDULE_DELAY", "1000");
            c
        }
        _ => Command::new(bin.join("gunicorn")),
    };
    command
        .args(["--workers", &FLASK_WORKERS.to_string(), "--worker-class", "sync", "--log-level", "warning"])
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--chdir")
        .arg(ctx.bench_dir())
        .arg("flask_app:app")
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null())
        .stdout(ctx.log_file("gunicorn.log")?)
        .stderr(ctx.log_file("gunicorn.log")?);
    eprintln!("$ {}", procs::display(&command));
    let mut proc = Proc::spawn("gunicorn", command, libc::SIGTERM, None)?;
    procs::wait_port(port, Duration::from_secs(60), &mut proc)?;
    Ok(proc)
}

pub fn flask(ctx: &mut Ctx) -> Result<Vec<SdkRound>> {
    let bench = SdkBench {
        label: "flask",
        sdk_name: PYTHON_SDK,
        path: FLASK_PATH,
        connections: FLASK_WRK_CONNECTIONS,
        headers: &[],
    };
    sdk_rounds(ctx, &bench, start_gunicorn)
}
