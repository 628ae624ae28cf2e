//! What the benchmark needs on the machine: real servers and load tools from
//! Debian's packages, the Python side from PyPI in a venv under target/, the
//! Node.js SDK from npm in a prefix in the user's cache directory.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::{
    cmd::{self, Cmd},
    setup::{self, Apt},
    test::{missing_packages, Dep},
};

/// Debian packages (first name is installed when the command is missing).
pub const BENCH_DEPS: &[Dep] = &[
    Dep { packages: &["wrk"], command: Some("wrk") },
    Dep { packages: &["openssl"], command: Some("openssl") },
    Dep { packages: &["nghttp2-client"], command: Some("h2load") },
    Dep { packages: &["nginx-light", "nginx", "nginx-core", "nginx-full"], command: Some("nginx") },
    Dep { packages: &["postgresql"], command: Some("pgbench") },
    Dep { packages: &["bpftool"], command: Some("bpftool") },
    Dep { packages: &["linux-perf"], command: Some("perf") },
    Dep { packages: &["gcc"], command: Some("gcc") },
    Dep { packages: &["python3-venv"], command: None },
    Dep { packages: &["nodejs"], command: Some("node") },
    Dep { packages: &["npm"], command: Some("npm") },
];

/// npm packages of the Node.js scenario, pinned so every run measures the
/// same SDK (and a present install is known complete without the registry).
pub const NPM_PACKAGES: &[(&str, &str)] =
    &[("@opentelemetry/auto-instrumentations-node", "0.81.2"), ("@opentelemetry/api", "1.9.1")];

/// The module `node --require` loads to start the SDK.
pub const NODE_SDK_REGISTER: &str = "@opentelemetry/auto-instrumentations-node/register";

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

/// Where the npm packages live: outside the work tree, so a fresh clone (as
/// CI makes for every run) finds them installed instead of unpacking 200
/// packages again; the pinned versions are checked before use.
pub fn node_prefix(root: &Path) -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".cache")));
    match cache {
        Some(dir) => dir.join("waggle").join("bench-node"),
        None => root.join("target").join("bench-node"),
    }
}

/// Installs [`NPM_PACKAGES`] into [`node_prefix`] (once: later runs find
/// them there); returns that prefix, the directory to start node in.
pub fn ensure_node_modules(root: &Path) -> Result<PathBuf> {
    let prefix = node_prefix(root);
    if NPM_PACKAGES.iter().all(|(name, version)| npm_version(&prefix, name).as_deref() == Some(*version)) {
        eprintln!("bench: npm packages in {}: complete", prefix.display());
        return Ok(prefix);
    }
    for program in ["node", "npm"] {
        if cmd::find_program(program).is_none() {
            bail!("{program} not found: the Node.js scenario needs Debian's nodejs and npm");
        }
    }
    fs::create_dir_all(&prefix).with_context(|| format!("creating {}", prefix.display()))?;
    let deps: serde_json::Map<String, serde_json::Value> =
        NPM_PACKAGES.iter().map(|(name, version)| ((*name).to_owned(), (*version).into())).collect();
    let manifest = serde_json::json!({ "name": "waggle-bench-node", "private": true, "dependencies": deps });
    let manifest_path = prefix.join("package.json");
    fs::write(&manifest_path, format!("{manifest:#}\n"))
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    let install = Cmd::new("npm").args(["install", "--no-audit", "--no-fund", "--prefix"]).arg(&prefix).run();
    if let Err(e) = install {
        let registry = Cmd::new("npm").args(["config", "get", "registry"]).probe().unwrap_or_else(|| "?".into());
        return Err(e.context(format!("npm install into {} (registry {registry})", prefix.display())));
    }
    for (name, version) in NPM_PACKAGES {
        let found = npm_version(&prefix, name);
        if found.as_deref() != Some(*version) {
            bail!("npm install left {name} at {found:?} in {}, not {version}", prefix.display());
        }
    }
    Ok(prefix)
}

/// The version of an installed npm package, from its package.json.
fn npm_version(prefix: &Path, name: &str) -> Option<String> {
    let text = fs::read_to_string(prefix.join("node_modules").join(name).join("package.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("version")?.as_str().map(str::to_owned)
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
pub fn tool_versions(root: &Path, venv: &Path) -> Vec<(String, String)> {
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
    add("node", first_line(Cmd::new("node").arg("--version")));
    let prefix = node_prefix(root);
    let npm: Vec<String> = ["@opentelemetry/auto-instrumentations-node", "@opentelemetry/sdk-node"]
        .iter()
        .filter_map(|name| Some(format!("{name} {}", npm_version(&prefix, name)?)))
        .collect();
    add("npm packages", (!npm.is_empty()).then(|| npm.join(", ")));
    tools
}
