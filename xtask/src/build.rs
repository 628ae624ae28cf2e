//! `cargo xtask build`: the eBPF object first (its own workspace, target
//! bpfel-unknown-none), then the agent with the object's path in
//! `WAGGLE_EBPF_OBJECT` so agent/build.rs embeds it.
//!
//! Artifact paths are read from cargo's JSON messages rather than guessed, so
//! `CARGO_TARGET_DIR` or a `build.target-dir` setting are honoured.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{
    cmd::{self, Cmd},
    setup::{self, Toolchain},
};

/// Directory of the eBPF crate, relative to the repository root.
pub const EBPF_DIR: &str = "ebpf/waggle-ebpf";
/// Binary target of the eBPF crate: the object file has this name.
pub const EBPF_BIN: &str = "waggle";
/// Package and binary target of the agent.
pub const AGENT_PACKAGE: &str = "waggle";
pub const AGENT_BIN: &str = "waggle";
/// Variable agent/build.rs reads the object path from.
pub const OBJECT_ENV: &str = "WAGGLE_EBPF_OBJECT";
/// `e_machine` of eBPF ELF objects.
const EM_BPF: u16 = 247;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Release,
    Debug,
}

#[derive(Clone, Debug)]
pub struct Built {
    pub ebpf_object: PathBuf,
    pub agent_bin: PathBuf,
}

/// The repository root (the workspace holding xtask).
pub fn repo_root() -> PathBuf {
    // Runtime value first: cargo sets it for `cargo xtask`, and it stays right
    // if the checkout moved since xtask was compiled.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.parent().map(Path::to_owned).unwrap_or(manifest_dir)
}

pub fn build(root: &Path, toolchain: &Toolchain, profile: Profile) -> Result<Built> {
    let ebpf_object = build_ebpf(root, toolchain)?;
    let agent_bin = build_agent(root, &ebpf_object, profile)?;
    eprintln!("xtask: eBPF object: {}", ebpf_object.display());
    eprintln!("xtask: agent:       {}", agent_bin.display());
    Ok(Built { ebpf_object, agent_bin })
}

pub fn build_ebpf(root: &Path, toolchain: &Toolchain) -> Result<PathBuf> {
    let dir = root.join(EBPF_DIR);
    if !dir.join("Cargo.toml").is_file() {
        bail!("the eBPF crate is missing: no Cargo.toml in {}", dir.display());
    }
    let cmd = setup::ebpf_build_cmd(toolchain, &dir).arg("--message-format=json-render-diagnostics");
    let object = build_collecting(&cmd, EBPF_BIN)?;
    let object = object
        .with_context(|| format!("`{}` succeeded but reported no binary target named `{EBPF_BIN}`", cmd.display()))?;
    check_bpf_object(&object)?;
    Ok(object)
}

pub fn build_agent(root: &Path, ebpf_object: &Path, profile: Profile) -> Result<PathBuf> {
    let mut cmd = Cmd::new("cargo").cwd(root).env(OBJECT_ENV, ebpf_object).arg("build");
    if profile == Profile::Release {
        cmd = cmd.arg("--release");
    }
    let cmd = cmd.args(["-p", AGENT_PACKAGE, "--message-format=json-render-diagnostics"]);
    let bin = build_collecting(&cmd, AGENT_BIN)?;
    let bin = bin.with_context(|| format!("`{}` reported no binary named `{AGENT_BIN}`", cmd.display()))?;
    if !bin.is_file() {
        bail!("the agent binary {} is missing after `{}`", bin.display(), cmd.display());
    }
    Ok(bin)
}

/// Runs a cargo build with JSON messages on stdout and returns the
/// executable of the binary target `bin`.
fn build_collecting(cmd: &Cmd, bin: &str) -> Result<Option<PathBuf>> {
    let mut found = None;
    let status = cmd.run_lines(|line| {
        if let Some(path) = bin_executable(line, bin) {
            found = Some(path);
        } else if !line.starts_with('{') {
            // Build scripts' and tools' plain output: don't swallow it.
            cmd::out(line);
        }
    })?;
    cmd::check(cmd, status)?;
    Ok(found)
}

/// The `executable` of a `compiler-artifact` message for binary target `bin`.
pub fn bin_executable(line: &str, bin: &str) -> Option<PathBuf> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    let target = message.get("target")?;
    let is_bin = target.get("kind")?.as_array()?.iter().any(|k| k.as_str() == Some("bin"));
    if !is_bin || target.get("name")?.as_str()? != bin {
        return None;
    }
    message.get("executable")?.as_str().map(PathBuf::from)
}

/// Fails unless `path` is an ELF file for the eBPF machine: embedding
/// anything else would only fail later, at load time on a user's node.
pub fn check_bpf_object(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("the eBPF object {} is missing after the build", path.display()))?;
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        bail!("{} is not an ELF file", path.display());
    }
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    if machine != EM_BPF {
        bail!("{} is an ELF file for machine {machine}, not eBPF ({EM_BPF})", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_named_binary_artifact() {
        let bin = r#"{"reason":"compiler-artifact","package_id":"path+file:///r/agent#waggle@0.1.0","target":{"kind":["bin"],"crate_types":["bin"],"name":"waggle"},"filenames":["/r/target/release/waggle"],"executable":"/r/target/release/waggle","fresh":true}"#;
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"waggle"},"executable":null}"#;
        let other = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"xtask"},"executable":"/r/target/release/xtask"}"#;
        let finished = r#"{"reason":"build-finished","success":true}"#;
        assert_eq!(bin_executable(bin, "waggle"), Some(PathBuf::from("/r/target/release/waggle")));
        assert_eq!(bin_executable(lib, "waggle"), None);
        assert_eq!(bin_executable(other, "waggle"), None);
        assert_eq!(bin_executable(finished, "waggle"), None);
        assert_eq!(bin_executable("   Compiling waggle", "waggle"), None);
    }

    fn elf_with_machine(machine: u16) -> Vec<u8> {
        let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
        bytes.resize(18, 0);
        bytes.extend(machine.to_le_bytes());
        bytes.resize(64, 0);
        bytes
    }

    #[test]
    fn object_check_accepts_only_bpf_elf() {
        let dir = std::env::temp_dir().join(format!("xtask-objcheck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bpf = dir.join("bpf.o");
        std::fs::write(&bpf, elf_with_machine(EM_BPF)).unwrap();
        let x86 = dir.join("x86.o");
        std::fs::write(&x86, elf_with_machine(62)).unwrap();
        let text = dir.join("text");
        std::fs::write(&text, "not an object at all").unwrap();

        assert!(check_bpf_object(&bpf).is_ok());
        let err = check_bpf_object(&x86).unwrap_err().to_string();
        assert!(err.contains("machine 62"), "{err}");
        let err = check_bpf_object(&text).unwrap_err().to_string();
        assert!(err.contains("not an ELF"), "{err}");
        let err = check_bpf_object(&dir.join("absent")).unwrap_err().to_string();
        assert!(err.contains("missing after the build"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn repo_root_holds_the_workspace_manifest() {
        let root = repo_root();
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
        assert!(manifest.contains(EBPF_DIR), "the eBPF crate should be excluded from the workspace");
    }
}
