//! What the benchmark needs on the machine: real servers and load tools from
//! Debian's packages, the Python side from PyPI in a venv under target/.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{
    cmd::{self, Cmd},
    setup::{self, Apt},
    test::{missing_packages, Dep},
};

/// Debian packages (first name is installed when the command is missing).
pub const BENCH_DEPS: &[Dep] = &[
    Dep { packages: &["wrk"], command: Some("wrk") },
    Dep { packages: &["nghttp2-client"], command: Some("h2load") },
    Dep { packages: &["nginx-light", "nginx", "nginx-core", "nginx-full"], command: Some("nginx") },
    Dep { packages: &["postgresql"], command: Some("pgbench") },
    Dep { packages: &["bpftrace"], command: Some("bpftrace") },
    Dep { packages: &["bpftool"], command: Some("bpftool") },
    Dep { packages: &["linux-perf"], command: Some("perf") },
    Dep { packages: &["gcc"], command: Some("gcc") },
    Dep { packages: &["python3-venv"], command: None },
];

/// PyPI packages of the Python scenario (and the chart).
pub const PIP_PACKAGES: &[&str] = &[
    "flask",
    "gunicorn",
    "opentelemetry-distro",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-instrumentation-flask",
    "matplotlib",
];

/// Imports that prove the venv is complete.
const VENV_CHECK: &str = "import flask, gunicorn, matplotlib, opentelemetry.instrumentation.flask, \
                          opentelemetry.exporter.otlp.proto.http.trace_exporter, opentelemetry.distro";

/// The system Python the venv is made from: Debian's, so `python3-venv` is
/// the only thing it needs.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

pub fn ensure_packages(apt: &mut Apt) -> Result<()> {
    let names: Vec<&str> = BENCH_DEPS.iter().flat_map(|d| d.packages.iter().copied()).collect();
    let installed = setup::installed_packages(&names);
    let missing = missing_packages(BENCH_DEPS, |p| installed.contains(p), |c| cmd::find_program(c).is_some());
    if missing.is_empty() {
        eprintln!("bench: system packages: all present");
        return Ok(());
    }
    if cmd::find_program("apt-get").is_none() {
        bail!("missing: {}; install them (Debian package names) and run again", missing.join(" "));
    }
    apt.install(&missing)
}

/// Creates (or completes) the venv; returns its directory.
pub fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target").join("bench-venv");
    let python = venv.join("bin").join("python");
    if python.is_file() && Cmd::new(&python).args(["-c", VENV_CHECK]).probe().is_some() {
        eprintln!("bench: Python venv {}: complete", venv.display());
        return Ok(venv);
    }
    if !python.is_file() {
        let system = if Path::new(SYSTEM_PYTHON).is_file() { SYSTEM_PYTHON } else { "python3" };
        Cmd::new(system).args(["-m", "venv"]).arg(&venv).run().context("creating the benchmark venv")?;
    }
    Cmd::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(PIP_PACKAGES)
        .run()?;
    if Cmd::new(&python).args(["-c", VENV_CHECK]).probe().is_none() {
        bail!("the venv at {} still lacks a package after pip install", venv.display());
    }
    Ok(venv)
}

/// Compiles bench/syscall_loop.c into target/bench/.
pub fn build_syscall_loop(root: &Path) -> Result<PathBuf> {
    let out_dir = root.join("target").join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let bin = out_dir.join("syscall_loop");
    Cmd::new("gcc")
        .args(["-O2", "-Wall", "-Wextra", "-o"])
        .arg(&bin)
        .arg(root.join("bench").join("syscall_loop.c"))
        .run()?;
    Ok(bin)
}

/// `name version` of each tool, for the report.
pub fn tool_versions(venv: &Path) -> Vec<(String, String)> {
    let first_line = |cmd: Cmd| cmd.probe().and_then(|s| s.lines().next().map(str::to_owned));
    let mut tools = Vec::new();
    let mut add = |name: &str, version: Option<String>| {
        tools.push((name.to_owned(), version.unwrap_or_else(|| "?".into())));
    };
    // nginx -v prints on stderr.
    let nginx = cmd::find_program("nginx").and_then(|p| {
        std::process::Command::new(p)
            .arg("-v")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
    });
    add("nginx", nginx);
    // wrk -v exits 1 after printing its version.
    let wrk = std::process::Command::new("wrk").arg("-v").output().ok().and_then(|o| {
        String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.split(" Copyright").next().unwrap_or(l).to_owned())
    });
    add("wrk", wrk);
    add("h2load", first_line(Cmd::new("h2load").arg("--version")));
    add("pgbench", first_line(Cmd::new("pgbench").arg("--version")));
    add("bpftrace", first_line(Cmd::new("bpftrace").arg("--version")));
    let python = venv.join("bin").join("python");
    add("python", first_line(Cmd::new(&python).arg("--version")));
    add(
        "Python packages",
        first_line(Cmd::new(&python).args([
            "-c",
            "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in \
             ['flask', 'gunicorn', 'opentelemetry-sdk', 'opentelemetry-instrumentation-flask']))",
        ])),
    );
    tools
}
