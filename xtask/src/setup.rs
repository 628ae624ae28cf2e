//! `cargo xtask setup`: find a way to build Rust eBPF programs and install
//! what is missing.
//!
//! Two toolchain routes exist (see the README's Development section):
//! - route A, developer laptops: rustup's nightly with the `rust-src` component;
//! - route B, Debian 12 hosts whose rustup cannot fetch `rust-src`: Debian's
//!   `rustc-web` (which ships its `library/` source as `rust-web-src`) driven
//!   by rustup's cargo with `RUSTC_BOOTSTRAP=1`.
//!
//! Both need `bpf-linker`. As root on Debian with apt-get, missing pieces are
//! installed; otherwise setup fails with the exact commands to run.
//!
//! Detection is split into gathering [`Facts`] (which runs probes) and the
//! pure [`plan`], so the decisions are unit-tested. For trying the install
//! paths on a machine that already has everything, these environment
//! variables replace what is probed (use with `setup --dry-run`):
//! `XTASK_RUSTUP` (rustup program), `XTASK_DEBIAN_RUSTC` (Debian's rustc),
//! `XTASK_DEBIAN_RUST_SRC` (its library source), `XTASK_BPF_LINKER`
//! (bpf-linker path) and `XTASK_DPKG_QUERY` (dpkg-query program); point them
//! at a nonexistent path to simulate a fresh machine.
use std::{
    collections::BTreeSet,
    ffi::OsString,
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};

use crate::cmd::{self, Cmd};

/// Debian packages giving a rustc that ships its own `library/` source.
pub const DEBIAN_RUST_PACKAGES: &[&str] = &["rustc-web", "rust-web-src"];
/// Debian packages bpf-linker's `llvm-22` feature builds against.
pub const LLVM_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev"];
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
pub const DEFAULT_DEBIAN_RUSTC: &str = "/usr/bin/rustc";
pub const DEFAULT_DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library";
/// Oldest Debian rustc accepted for route B: Debian's plain `rustc` package
/// (1.63 on Debian 12) also installs /usr/bin/rustc but is too old for the
/// eBPF crate's dependencies.
pub const MIN_DEBIAN_RUSTC: (u32, u32) = (1, 85);

/// How the eBPF crate gets compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `cargo +nightly build -Z build-std=core ...`
    Nightly,
    /// `RUSTC=<rustc> RUSTC_BOOTSTRAP=1 cargo build -Z build-std=core ...`
    DebianRustc { rustc: PathBuf },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Linker {
    /// Found and `--version` works.
    Works {
        path: PathBuf,
        version: String,
    },
    /// Found but `--version` fails (e.g. its libLLVM is gone).
    Broken {
        path: PathBuf,
    },
    Missing,
}

/// What the machine offers, as probed.
#[derive(Clone, Debug)]
pub struct Facts {
    pub root: bool,
    /// apt-get exists and this is Debian (or a derivative).
    pub apt: bool,
    pub nightly_rust_src: bool,
    pub debian_rustc: PathBuf,
    /// `rustc --version` of `debian_rustc` as (major, minor, patch), when it runs.
    pub debian_rustc_version: Option<(u32, u32, u32)>,
    pub debian_rust_src: bool,
    pub linker: Linker,
    /// Installed packages among those setup may install.
    pub installed_packages: BTreeSet<String>,
}

impl Facts {
    fn can_install(&self) -> bool {
        self.root && self.apt
    }

    fn debian_route_ready(&self) -> bool {
        self.debian_rust_src && self.debian_rustc_version.is_some_and(|(ma, mi, _)| (ma, mi) >= MIN_DEBIAN_RUSTC)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    AptInstall(Vec<&'static str>),
    /// `cargo install --force bpf-linker` against Debian's LLVM 22.
    InstallBpfLinker,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub route: Route,
    pub actions: Vec<Action>,
}

/// Decides the route and what to install; `Err` carries instructions for a
/// human when this process cannot install what is missing.
pub fn plan(facts: &Facts) -> Result<Plan, String> {
    let mut apt: Vec<&'static str> = Vec::new();
    let mut actions = Vec::new();
    let mut instructions: Vec<String> = Vec::new();
    let sudo = if facts.root { "" } else { "sudo " };

    let route = if facts.nightly_rust_src {
        Some(Route::Nightly)
    } else if facts.debian_route_ready() {
        Some(Route::DebianRustc { rustc: facts.debian_rustc.clone() })
    } else if facts.can_install() {
        apt.extend(DEBIAN_RUST_PACKAGES);
        Some(Route::DebianRustc { rustc: facts.debian_rustc.clone() })
    } else {
        let mut text = String::from("No toolchain that can build eBPF programs was found. Either:\n");
        if facts.apt {
            text.push_str(&format!(
                "  - on Debian 12:\n      {sudo}apt-get update && {sudo}apt-get install -y {}\n",
                DEBIAN_RUST_PACKAGES.join(" ")
            ));
        }
        text.push_str("  - with rustup:\n      rustup toolchain install nightly --component rust-src");
        instructions.push(text);
        None
    };

    if !matches!(facts.linker, Linker::Works { .. }) {
        let what = match &facts.linker {
            Linker::Broken { path } => format!("bpf-linker at {} does not run", path.display()),
            _ => "bpf-linker was not found".to_owned(),
        };
        if facts.can_install() {
            apt.extend(LLVM_PACKAGES.iter().filter(|p| !facts.installed_packages.contains(**p)));
            actions.push(Action::InstallBpfLinker);
        } else if facts.apt {
            instructions.push(format!(
                "{what}. Install it with:\n      {sudo}apt-get update && {sudo}apt-get install -y {}\n      {}",
                LLVM_PACKAGES.join(" "),
                bpf_linker_install_cmd(false).display()
            ));
        } else {
            instructions.push(format!(
                "{what}. Install it with:\n      cargo install bpf-linker\n      \
                 (see https://github.com/aya-rs/bpf-linker for the LLVM it needs)"
            ));
        }
    }

    if !instructions.is_empty() {
        return Err(instructions.join("\n"));
    }
    let route = route.ok_or_else(|| "no toolchain route".to_owned())?;
    if !apt.is_empty() {
        actions.insert(0, Action::AptInstall(apt));
    }
    Ok(Plan { route, actions })
}

/// The command that builds and installs bpf-linker against Debian's LLVM 22
/// (`force` replaces a broken copy; without it cargo keeps the old one).
pub fn bpf_linker_install_cmd(force: bool) -> Cmd {
    let cmd = Cmd::new("cargo")
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .path_prepend(Path::new(LLVM_PREFIX).join("bin"))
        .args(["install", "bpf-linker", "--no-default-features", "--features", "llvm-22"]);
    if force {
        cmd.arg("--force")
    } else {
        cmd
    }
}

/// apt-get, run at most one `apt-get update` per xtask invocation.
pub struct Apt {
    updated: bool,
    dry_run: bool,
}

impl Apt {
    pub fn new(dry_run: bool) -> Apt {
        Apt { updated: false, dry_run }
    }

    pub fn install(&mut self, packages: &[&str]) -> Result<()> {
        if packages.is_empty() {
            return Ok(());
        }
        if !self.updated {
            self.execute(Cmd::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").arg("update"))?;
            self.updated = true;
        }
        self.execute(
            Cmd::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args(["install", "-y"]).args(packages),
        )
    }

    pub fn execute(&self, cmd: Cmd) -> Result<()> {
        if self.dry_run {
            eprintln!("$ {}    # dry run: not executed", cmd.display());
            return Ok(());
        }
        cmd.run()
    }
}

/// Packages among `names` that dpkg reports installed (empty without dpkg).
pub fn installed_packages(names: &[&str]) -> BTreeSet<String> {
    let dpkg = env_or("XTASK_DPKG_QUERY", "dpkg-query");
    if names.is_empty() || cmd::find_program(&dpkg.to_string_lossy()).is_none() {
        return BTreeSet::new();
    }
    // dpkg-query exits 1 when some name is unknown but still lists the rest.
    let listing = Cmd::new(&dpkg).args(["-W", "-f=${Package} ${Status}\\n"]).args(names).stdout_lenient();
    parse_dpkg_status(&listing.unwrap_or_default())
}

/// Parses `dpkg-query -W -f='${Package} ${Status}\n'` output: a package is
/// installed when its status reads `<want> ok installed`.
pub fn parse_dpkg_status(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let package = words.next()?;
            let status: Vec<&str> = words.collect();
            (status.len() == 3 && status[1] == "ok" && status[2] == "installed").then(|| package.to_owned())
        })
        .collect()
}

/// (major, minor, patch) from `rustc 1.96.0 (ac68faa20 2026-05-25) ...`.
pub fn parse_rustc_version(text: &str) -> Option<(u32, u32, u32)> {
    let version = text.strip_prefix("rustc ")?.split_whitespace().next()?;
    let version = version.split('-').next()?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

fn env_or(key: &str, default: &str) -> OsString {
    std::env::var_os(key).unwrap_or_else(|| default.into())
}

/// `$CARGO_HOME/bin`, where `cargo install` puts bpf-linker.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin"))
}

fn probe_linker() -> Linker {
    let path = match std::env::var_os("XTASK_BPF_LINKER") {
        Some(path) => cmd::find_program(&path.to_string_lossy()),
        None => cmd::find_program("bpf-linker").or_else(|| {
            cargo_bin_dir().map(|d| d.join("bpf-linker")).and_then(|p| cmd::find_program(&p.to_string_lossy()))
        }),
    };
    let Some(path) = path else {
        return Linker::Missing;
    };
    match Cmd::new(&path).arg("--version").probe_loud() {
        Some(version) => Linker::Works { path, version },
        None => Linker::Broken { path },
    }
}

fn probe_nightly_rust_src() -> bool {
    let rustup = env_or("XTASK_RUSTUP", "rustup");
    if cmd::find_program(&rustup.to_string_lossy()).is_none() {
        return false;
    }
    Cmd::new(rustup)
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .probe_loud()
        .is_some_and(|list| list.lines().any(|l| l.split_whitespace().next() == Some("rust-src")))
}

pub fn gather_facts() -> Facts {
    let debian_rustc = PathBuf::from(env_or("XTASK_DEBIAN_RUSTC", DEFAULT_DEBIAN_RUSTC));
    let debian_rust_src = PathBuf::from(env_or("XTASK_DEBIAN_RUST_SRC", DEFAULT_DEBIAN_RUST_SRC));
    let nightly_rust_src = probe_nightly_rust_src();
    let debian_rustc_version = if !nightly_rust_src && debian_rustc.is_file() {
        Cmd::new(&debian_rustc).arg("--version").probe_loud().as_deref().and_then(parse_rustc_version)
    } else {
        None
    };
    let linker = probe_linker();
    let apt = cmd::find_program("apt-get").is_some() && Path::new("/etc/debian_version").exists();
    let installed_packages = if apt && !matches!(linker, Linker::Works { .. }) {
        installed_packages(LLVM_PACKAGES)
    } else {
        BTreeSet::new()
    };
    Facts {
        root: cmd::is_root(),
        apt,
        nightly_rust_src,
        debian_rust_src: debian_rust_src.is_dir(),
        debian_rustc,
        debian_rustc_version,
        linker,
        installed_packages,
    }
}

/// What the build needs from setup.
#[derive(Clone, Debug)]
pub struct Toolchain {
    pub route: Route,
    /// Directory to put first on PATH so rustc finds bpf-linker.
    pub linker_dir: Option<PathBuf>,
}

/// Runs setup: probes, prints the decision, installs what's missing, then
/// checks the result (unless `dry_run`).
pub fn setup(apt: &mut Apt) -> Result<Toolchain> {
    let facts = gather_facts();
    let plan = match plan(&facts) {
        Ok(plan) => plan,
        Err(instructions) => bail!("{instructions}"),
    };
    describe(&facts, &plan);
    for action in &plan.actions {
        match action {
            Action::AptInstall(packages) => apt.install(packages)?,
            Action::InstallBpfLinker => apt.execute(bpf_linker_install_cmd(true))?,
        }
    }
    if apt.dry_run {
        return Ok(Toolchain { route: plan.route, linker_dir: None });
    }
    let linker = if plan.actions.is_empty() { facts.linker } else { recheck(&plan)? };
    let Linker::Works { path, .. } = linker else {
        bail!("bpf-linker still does not work after setup");
    };
    Ok(Toolchain { route: plan.route, linker_dir: path.parent().map(Path::to_owned) })
}

fn recheck(plan: &Plan) -> Result<Linker> {
    let after = gather_facts();
    if let Route::DebianRustc { rustc } = &plan.route {
        if !after.debian_route_ready() {
            bail!(
                "after installing {}: {} or {} is still missing or older than {}.{}",
                DEBIAN_RUST_PACKAGES.join(" "),
                rustc.display(),
                DEFAULT_DEBIAN_RUST_SRC,
                MIN_DEBIAN_RUSTC.0,
                MIN_DEBIAN_RUSTC.1
            );
        }
    }
    match after.linker {
        Linker::Works { .. } => Ok(after.linker),
        Linker::Broken { path } => bail!("the installed bpf-linker ({}) fails `--version`", path.display()),
        Linker::Missing => {
            let dir = cargo_bin_dir().map(|d| d.display().to_string()).unwrap_or_else(|| "~/.cargo/bin".into());
            bail!("bpf-linker is still not found after `cargo install` (looked on PATH and in {dir})")
        }
    }
}

fn describe(facts: &Facts, plan: &Plan) {
    match &plan.route {
        Route::Nightly => eprintln!("xtask: eBPF toolchain: route A, rustup nightly with rust-src"),
        Route::DebianRustc { rustc } => match facts.debian_rustc_version {
            Some((a, b, c)) if facts.debian_route_ready() => eprintln!(
                "xtask: eBPF toolchain: route B, Debian rustc {a}.{b}.{c} ({}) with RUSTC_BOOTSTRAP=1",
                rustc.display()
            ),
            _ => eprintln!("xtask: eBPF toolchain: route B, installing Debian's {}", DEBIAN_RUST_PACKAGES.join(" ")),
        },
    }
    match &facts.linker {
        Linker::Works { path, version } => eprintln!("xtask: linker: {version} ({})", path.display()),
        Linker::Broken { path } => eprintln!("xtask: linker: {} does not run; reinstalling", path.display()),
        Linker::Missing => eprintln!("xtask: linker: bpf-linker not found; installing"),
    }
    if plan.actions.is_empty() {
        eprintln!("xtask: setup: nothing to install");
    }
}

/// The eBPF crate's build command for `toolchain` (without output options).
pub fn ebpf_build_cmd(toolchain: &Toolchain, ebpf_dir: &Path) -> Cmd {
    let mut cmd = match &toolchain.route {
        Route::Nightly => Cmd::new("cargo").arg("+nightly"),
        Route::DebianRustc { rustc } => Cmd::new("cargo").env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1"),
    };
    if let Some(dir) = &toolchain.linker_dir {
        let path = std::env::var_os("PATH").unwrap_or_default();
        if !std::env::split_paths(&path).any(|p| &p == dir) {
            cmd = cmd.path_prepend(dir);
        }
    }
    cmd.cwd(ebpf_dir).args(["build", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn laptop() -> Facts {
        Facts {
            root: false,
            apt: false,
            nightly_rust_src: true,
            debian_rustc: PathBuf::from(DEFAULT_DEBIAN_RUSTC),
            debian_rustc_version: None,
            debian_rust_src: false,
            linker: Linker::Works { path: "/home/u/.cargo/bin/bpf-linker".into(), version: "bpf-linker 0.13.0".into() },
            installed_packages: BTreeSet::new(),
        }
    }

    fn fresh_debian_root() -> Facts {
        Facts {
            root: true,
            apt: true,
            nightly_rust_src: false,
            debian_rustc_version: None,
            linker: Linker::Missing,
            ..laptop()
        }
    }

    fn ready_debian() -> Facts {
        Facts {
            debian_rustc_version: Some((1, 96, 0)),
            debian_rust_src: true,
            linker: laptop().linker,
            ..fresh_debian_root()
        }
    }

    #[test]
    fn laptop_with_nightly_needs_nothing() {
        let plan = plan(&laptop()).unwrap();
        assert_eq!(plan, Plan { route: Route::Nightly, actions: vec![] });
    }

    #[test]
    fn nightly_wins_over_debian_rustc() {
        let facts = Facts { nightly_rust_src: true, ..ready_debian() };
        assert_eq!(plan(&facts).unwrap().route, Route::Nightly);
    }

    #[test]
    fn ready_debian_host_needs_nothing() {
        let plan = plan(&ready_debian()).unwrap();
        assert_eq!(plan.route, Route::DebianRustc { rustc: DEFAULT_DEBIAN_RUSTC.into() });
        assert!(plan.actions.is_empty());
    }

    #[test]
    fn fresh_debian_root_installs_everything_with_one_apt_call() {
        let plan = plan(&fresh_debian_root()).unwrap();
        assert_eq!(plan.route, Route::DebianRustc { rustc: DEFAULT_DEBIAN_RUSTC.into() });
        let mut expected: Vec<&str> = DEBIAN_RUST_PACKAGES.to_vec();
        expected.extend(LLVM_PACKAGES);
        assert_eq!(plan.actions, vec![Action::AptInstall(expected), Action::InstallBpfLinker]);
    }

    #[test]
    fn installed_llvm_packages_are_not_reinstalled() {
        let mut facts = Facts { linker: Linker::Broken { path: "/x/bpf-linker".into() }, ..ready_debian() };
        facts.installed_packages = ["llvm-22-dev", "zlib1g-dev"].iter().map(|s| s.to_string()).collect();
        let plan = plan(&facts).unwrap();
        assert_eq!(
            plan.actions,
            vec![Action::AptInstall(vec!["libpolly-22-dev", "libzstd-dev"]), Action::InstallBpfLinker]
        );
    }

    #[test]
    fn old_debian_rustc_is_replaced_by_rustc_web() {
        let facts = Facts { debian_rustc_version: Some((1, 63, 0)), ..ready_debian() };
        let plan = plan(&facts).unwrap();
        assert_eq!(plan.actions, vec![Action::AptInstall(DEBIAN_RUST_PACKAGES.to_vec())]);
    }

    #[test]
    fn rustc_without_source_is_not_a_route() {
        let facts = Facts { debian_rust_src: false, root: false, ..ready_debian() };
        let err = plan(&facts).unwrap_err();
        assert!(err.contains("sudo apt-get install -y rustc-web rust-web-src"), "{err}");
        assert!(err.contains("rustup toolchain install nightly --component rust-src"), "{err}");
    }

    #[test]
    fn non_root_debian_gets_exact_commands_for_everything() {
        let facts = Facts { root: false, ..fresh_debian_root() };
        let err = plan(&facts).unwrap_err();
        assert!(err.contains("sudo apt-get update && sudo apt-get install -y rustc-web rust-web-src"), "{err}");
        assert!(err.contains("bpf-linker was not found"), "{err}");
        assert!(
            err.contains(
                "sudo apt-get update && sudo apt-get install -y llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev"
            ),
            "{err}"
        );
        assert!(
            err.ends_with(
                "LLVM_PREFIX=/usr/lib/llvm-22 PATH=/usr/lib/llvm-22/bin:$PATH \
                 cargo install bpf-linker --no-default-features --features llvm-22"
            ),
            "{err}"
        );
    }

    #[test]
    fn laptop_without_linker_is_told_plain_cargo_install() {
        let facts = Facts { linker: Linker::Missing, ..laptop() };
        let err = plan(&facts).unwrap_err();
        assert!(err.contains("cargo install bpf-linker\n"), "{err}");
        assert!(!err.contains("apt-get"), "{err}");
        assert!(!err.contains("rustup toolchain install"), "{err}");
    }

    #[test]
    fn root_laptop_without_apt_cannot_install() {
        let facts = Facts { root: true, nightly_rust_src: false, ..laptop() };
        let err = plan(&facts).unwrap_err();
        assert!(err.contains("rustup toolchain install nightly --component rust-src"), "{err}");
        assert!(!err.contains("apt-get"), "{err}");
    }

    #[test]
    fn linker_install_command_uses_debian_llvm() {
        let shown = bpf_linker_install_cmd(true).display();
        assert_eq!(
            shown,
            "LLVM_PREFIX=/usr/lib/llvm-22 PATH=/usr/lib/llvm-22/bin:$PATH \
             cargo install bpf-linker --no-default-features --features llvm-22 --force"
        );
    }

    #[test]
    fn ebpf_build_commands_per_route() {
        let a = ebpf_build_cmd(&Toolchain { route: Route::Nightly, linker_dir: None }, Path::new("/r/ebpf"));
        assert_eq!(
            a.display(),
            "(cd /r/ebpf && cargo +nightly build --release --target bpfel-unknown-none -Z build-std=core)"
        );
        let b = ebpf_build_cmd(
            &Toolchain { route: Route::DebianRustc { rustc: "/usr/bin/rustc".into() }, linker_dir: None },
            Path::new("/r/ebpf"),
        );
        assert_eq!(
            b.display(),
            "(cd /r/ebpf && RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 cargo build --release --target bpfel-unknown-none -Z build-std=core)"
        );
    }

    #[test]
    fn linker_dir_off_path_is_prepended() {
        let toolchain = Toolchain { route: Route::Nightly, linker_dir: Some("/opt/xtask-test-linker".into()) };
        let shown = ebpf_build_cmd(&toolchain, Path::new("/r")).display();
        assert!(shown.contains("PATH=/opt/xtask-test-linker:$PATH cargo +nightly build"), "{shown}");
    }

    #[test]
    fn rustc_versions_parse() {
        assert_eq!(
            parse_rustc_version("rustc 1.96.0 (ac68faa20 2026-05-25) (built from a source tarball)"),
            Some((1, 96, 0))
        );
        assert_eq!(parse_rustc_version("rustc 1.97.0-nightly (abc 2026-05-15)"), Some((1, 97, 0)));
        assert_eq!(parse_rustc_version("cargo 1.95.0"), None);
        assert_eq!(parse_rustc_version("rustc x.y"), None);
    }

    #[test]
    fn dpkg_status_parsing() {
        let text = "llvm-22-dev install ok installed\n\
                    nginx deinstall ok config-files\n\
                    curl hold ok installed\n\
                    zlib1g-dev install ok not-installed\n";
        let installed: Vec<String> = parse_dpkg_status(text).into_iter().collect();
        assert_eq!(installed, ["curl", "llvm-22-dev"]);
    }
}
