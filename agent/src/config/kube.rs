//! The Kubernetes metadata settings: whether the API is watched, through
//! which client configuration, for which node.
use std::path::{Path, PathBuf};

use super::{
    source::{env_var, file_key, first, flag},
    CliArgs, ConfigError, Env, KubeConfig, KubeSource,
};

/// The file's keys, taken out of [`super::file::FileConfig`].
pub(super) struct FileKube {
    pub(super) mode: Option<String>,
    pub(super) kubeconfig: Option<PathBuf>,
    pub(super) node_name: Option<String>,
    pub(super) cluster_name: Option<String>,
}

pub(super) fn resolve(
    args: &CliArgs,
    env: &dyn Env,
    file: FileKube,
    path: Option<&Path>,
) -> Result<KubeConfig, ConfigError> {
    let mode = match first([flag(args.kube.clone(), "kube"), file_key(file.mode, "kube", path)]) {
        Some((raw, source)) => match raw.trim().to_ascii_lowercase().as_str() {
            "auto" => None,
            "on" | "true" => Some(true),
            "off" | "false" => Some(false),
            _ => return Err(source.invalid(format!("expected auto, on or off, got {raw:?}"))),
        },
        None => None,
    };
    let kubeconfig =
        first([flag(args.kube_config.clone(), "kube-config"), file_key(file.kubeconfig, "kube_config", path)])
            .map(|(p, _)| p);
    let in_pod = env_var(env, "KUBERNETES_SERVICE_HOST").is_some();
    let source = match (mode, kubeconfig) {
        (Some(false), _) => None,
        (_, Some(path)) => Some(KubeSource::Kubeconfig(path)),
        (_, None) if in_pod => Some(KubeSource::InCluster),
        (Some(true), None) => Some(KubeSource::Infer),
        (None, None) => None,
    };
    let node_name = first([
        flag(args.node_name.clone(), "node-name"),
        env_var(env, "NODE_NAME"),
        file_key(file.node_name, "node_name", path),
    ]);
    let node_name = match node_name {
        Some((raw, source)) => {
            let name = raw.trim();
            // A DNS subdomain: also keeps the field selector well-formed.
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
            if !valid {
                return Err(source.invalid(format!("not a Kubernetes node name: {raw:?}")));
            }
            name.to_owned()
        }
        // kubelet names its node after the host unless told otherwise.
        None => rustix::system::uname().nodename().to_string_lossy().to_ascii_lowercase(),
    };
    let cluster_name =
        first([flag(args.cluster_name.clone(), "cluster-name"), file_key(file.cluster_name, "cluster_name", path)])
            .map(|(v, _)| v.trim().to_owned())
            .filter(|v| !v.is_empty());
    Ok(KubeConfig { source, node_name, cluster_name })
}
