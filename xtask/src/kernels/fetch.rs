//! Debian kernel images, cached under target/kernels/<name>/.
//!
//! Each Debian suite gets a private apt state (its own sources.list, lists
//! and caches under target/kernels/apt/<suite>/), so the host's sources and
//! package lists are never touched, and a Debian 12 host can fetch
//! bullseye's kernel too. The kernel's meta-package is resolved to the
//! current image package, whose .deb is downloaded and kept next to the
//! extracted vmlinuz; once both are there, no network is used.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::cmd::Cmd;

/// A kernel image ready to boot.
#[derive(Clone, Debug)]
pub struct Image {
    pub vmlinuz: PathBuf,
    /// The .deb it came from, e.g. `linux-image-6.1.0-57-cloud-amd64_6.1.192-3_amd64.deb`.
    pub deb: String,
}

/// The cached image of kernel `name`, downloading the package `meta`
/// depends on from `suite` first if needed.
pub fn image(dir: &Path, name: &str, suite: &str, meta: &str) -> Result<Image> {
    let home = dir.join(name);
    let vmlinuz = home.join("vmlinuz");
    let deb_note = home.join("deb");
    if let (true, Ok(deb)) = (vmlinuz.is_file(), fs::read_to_string(&deb_note)) {
        eprintln!("xtask: kernel {name}: cached ({})", deb.trim());
        return Ok(Image { vmlinuz, deb: deb.trim().to_owned() });
    }
    let apt = AptState::new(dir, suite)?;
    apt.update()?;
    let package = apt.resolve(meta)?;
    let debs = dir.join("debs");
    fs::create_dir_all(&debs)?;
    let deb = match find_deb(&debs, &package)? {
        Some(deb) => deb,
        None => {
            apt.cmd("apt-get").cwd(&debs).args(["download", &package]).run()?;
            find_deb(&debs, &package)?.with_context(|| format!("apt-get download {package} left no .deb"))?
        }
    };
    let unpacked = home.join("unpacked");
    let _ = fs::remove_dir_all(&unpacked);
    fs::create_dir_all(&unpacked)?;
    // Only the image: the modules would be hundreds of MB and the guest
    // needs none (serial, initramfs, BTF and bpffs are built in).
    Cmd::new("sh")
        .args(["-c", "dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" --wildcards './boot/vmlinuz-*'", "sh"])
        .arg(&deb)
        .arg(&unpacked)
        .run()?;
    let boot = unpacked.join("boot");
    let found = fs::read_dir(&boot)
        .with_context(|| format!("{} has no boot/ directory", deb.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .with_context(|| format!("no vmlinuz in {}", deb.display()))?;
    fs::rename(&found, &vmlinuz)?;
    let _ = fs::remove_dir_all(&unpacked);
    let name = deb.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    fs::write(&deb_note, format!("{name}\n"))?;
    Ok(Image { vmlinuz, deb: name })
}

fn find_deb(debs: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    Ok(fs::read_dir(debs)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix))))
}

/// The image package a meta-package depends on, from `apt-cache depends`.
pub fn depended_image(depends: &str) -> Option<String> {
    depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
}

struct AptState {
    root: PathBuf,
}

impl AptState {
    fn new(dir: &Path, suite: &str) -> Result<AptState> {
        let root = dir.join("apt").join(suite);
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(root.join(sub))?;
        }
        let sources = format!(
            "deb http://deb.debian.org/debian {suite} main\n\
             deb http://deb.debian.org/debian-security {suite}-security main\n"
        );
        fs::write(root.join("sources.list"), sources)?;
        Ok(AptState { root })
    }

    fn cmd(&self, program: &str) -> Cmd {
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        Cmd::new(program)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-q", "-o"])
            .arg(opt("Dir::Etc::SourceList", &self.root.join("sources.list")))
            .args(["-o", "Dir::Etc::SourceParts=-", "-o"])
            .arg(opt("Dir::State::Lists", &self.root.join("lists")))
            .arg("-o")
            .arg(opt("Dir::Cache", &self.root.join("cache")))
            // Files under target/ may not be readable by the _apt user.
            .args(["-o", "APT::Sandbox::User=root"])
            .args(["-o", "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"])
            .args(["-o", "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"])
    }

    fn update(&self) -> Result<()> {
        self.cmd("apt-get").arg("update").run()
    }

    fn resolve(&self, meta: &str) -> Result<String> {
        let cmd = self.cmd("apt-cache").args(["depends", meta]);
        let Some(text) = cmd.probe_loud() else {
            bail!("`{}` failed", cmd.display());
        };
        depended_image(&text).with_context(|| format!("{meta} depends on no linux-image package:\n{text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_package_resolves_to_its_image() {
        let text = "linux-image-6.12-cloud-amd64\n  Depends: linux-image-6.12.117+deb12-cloud-amd64\n";
        assert_eq!(depended_image(text).as_deref(), Some("linux-image-6.12.117+deb12-cloud-amd64"));
        assert_eq!(depended_image("linux-image-cloud-amd64\n  Depends: <nothing>\n"), None);
    }
}
