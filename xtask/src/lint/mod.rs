//! `cargo xtask lint`: the house rules a review would otherwise have to
//! check by eye, run by `cargo xtask test` too.
//!
//! - rustfmt (`rustfmt.toml`) over every crate, the kernel and fuzz crates
//!   included (they are their own workspaces);
//! - clippy with `-D warnings` over the workspace's targets, the agent with
//!   its fuzz feature, and the kernel crate (checked for the host: the lints
//!   are about the source, and the host check needs no eBPF toolchain);
//! - no import circle between the files of the agent or the kernel crate;
//! - no source file over [`MAX_LINES`] lines, except the ones in
//!   [`LARGE_FILES`], each with the reason its single job is that big.
mod files;
mod imports;

use std::{fs, path::Path};

use anyhow::{bail, Context, Result};

use self::files::walk_files;
use crate::cmd::Cmd;

/// Longest source file before it must be split or listed in [`LARGE_FILES`].
pub const MAX_LINES: usize = 800;

/// Files allowed over [`MAX_LINES`]: (path from the repository root, why).
pub const LARGE_FILES: &[(&str, &str)] = &[];

/// Crates whose files must not import each other in a circle: (crate root).
const CIRCLE_FREE: &[&str] = &["agent/src", "ebpf/waggle-ebpf/src", "ebpf/waggle-common/src", "xtask/src"];

/// Folders whose `.rs` files are held to [`MAX_LINES`].
const SIZED: &[&str] = &["agent", "ebpf/waggle-ebpf/src", "ebpf/waggle-common/src", "xtask/src", "tests"];

/// Runs every check and reports each failure; fails if any failed.
pub fn run(root: &Path) -> Result<()> {
    let checks: [(&str, &dyn Fn() -> Result<()>); 4] = [
        ("rustfmt", &|| rustfmt(root)),
        ("clippy", &|| clippy(root)),
        ("import circles", &|| no_circles(root)),
        ("file sizes", &|| file_sizes(root)),
    ];
    let mut failed = Vec::new();
    for (name, check) in checks {
        match check() {
            Ok(()) => eprintln!("xtask: lint: {name}: ok"),
            Err(e) => {
                eprintln!("xtask: lint: {name}: FAILED: {e:#}");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The crates outside the root workspace, each its own workspace.
const OTHER_WORKSPACES: &[&str] = &["ebpf/waggle-ebpf", "fuzz"];

fn require_component(name: &str) -> Result<()> {
    let probe = std::process::Command::new("cargo").args([name, "--version"]).output();
    match probe {
        Ok(out) if out.status.success() => Ok(()),
        _ => bail!("`cargo {name}` is not installed; add it with `rustup component add {name}`"),
    }
}

fn rustfmt(root: &Path) -> Result<()> {
    require_component("fmt")?;
    Cmd::new("cargo").cwd(root).args(["fmt", "--all", "--check"]).run()?;
    for dir in OTHER_WORKSPACES {
        Cmd::new("cargo").cwd(root.join(dir)).args(["fmt", "--all", "--check"]).run()?;
    }
    Ok(())
}

fn clippy(root: &Path) -> Result<()> {
    require_component("clippy")?;
    let deny = ["--", "-D", "warnings"];
    Cmd::new("cargo").cwd(root).args(["clippy", "--workspace", "--all-targets", "--release"]).args(deny).run()?;
    Cmd::new("cargo")
        .cwd(root)
        .args(["clippy", "-p", "waggle", "--all-targets", "--release", "--features", "fuzz"])
        .args(deny)
        .run()?;
    // The kernel crate for the host: same source and lints, no build-std.
    let host = host_triple()?;
    let kernel = root.join("ebpf/waggle-ebpf");
    Cmd::new("cargo")
        .cwd(&kernel)
        .args(["clippy", "--release", "--target", &host, "--target-dir"])
        .arg(kernel.join("target/host-clippy"))
        .args(deny)
        .run()?;
    Ok(())
}

fn host_triple() -> Result<String> {
    let out = std::process::Command::new("rustc").arg("-vV").output().context("running `rustc -vV`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("host: ")).map(str::to_owned).context("`rustc -vV` printed no host triple")
}

fn no_circles(root: &Path) -> Result<()> {
    let mut report = String::new();
    for crate_root in CIRCLE_FREE {
        for circle in imports::circles(&root.join(crate_root))? {
            report.push_str("\n  circle:");
            for edge in circle {
                let show = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
                report.push_str(&format!("\n    {}:{} -> {}", show(&edge.from), edge.line, show(&edge.to)));
            }
        }
    }
    if !report.is_empty() {
        bail!("files import each other:{report}");
    }
    Ok(())
}

fn file_sizes(root: &Path) -> Result<()> {
    let mut too_big = Vec::new();
    for dir in SIZED {
        for path in walk_files(&root.join(dir))? {
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            let lines = fs::read_to_string(&path).with_context(|| format!("reading {relative}"))?.lines().count();
            let listed = LARGE_FILES.iter().any(|(p, _)| *p == relative);
            if lines > MAX_LINES && !listed {
                too_big.push(format!("{relative} ({lines} lines)"));
            }
        }
    }
    if !too_big.is_empty() {
        bail!(
            "over {MAX_LINES} lines: {}; split along its seams, or list it in xtask/src/lint/mod.rs LARGE_FILES with why",
            too_big.join(", ")
        );
    }
    Ok(())
}
