//! `cargo xtask fuzz`: coverage-guided fuzzing of the protocol parsers with
//! libFuzzer, on the stable toolchain (no cargo-fuzz, no nightly): waggle's
//! own crates are built with the sanitizer-coverage passes cargo-fuzz would
//! add, then each target runs for a bounded time. `cargo xtask test` runs it
//! briefly so the targets never rot; a crash fails the run and leaves the
//! input under target/fuzz-artifacts/<target>/.
//!
//! Only waggle's crates are instrumented (fuzz/rustc-coverage.sh, a
//! RUSTC_WRAPPER): the parsers are what is fuzzed, and the dependencies then
//! compile exactly as in the agent's release build, so the fuzz build shares
//! target/ with it and reuses them. Instrumenting the whole tree, as
//! cargo-fuzz does, cost 12 of CI's 53 minutes.
use std::path::Path;

use anyhow::{Context, Result};

use crate::cmd::{self, Cmd};

/// The libFuzzer targets in fuzz/fuzz_targets/: the protocol parsers, and
/// ring-buffer records through the tracker and linker (the kernel/user ABI).
pub const TARGETS: [&str; 7] = ["http1", "postgres", "mysql", "redis", "memcached", "fastcgi", "records"];

/// The crates fuzz/rustc-coverage.sh instruments: waggle, waggle-common and
/// the fuzz targets themselves.
const INSTRUMENTED_CRATES: &str = "waggle waggle_common waggle_fuzz";

/// Debug assertions and overflow checks in waggle's crates, as cargo-fuzz
/// builds them. Per-package profile settings also give these crates their
/// own artifact names, so the instrumented copies never replace the agent's.
const PROFILE_OVERRIDES: [&str; 4] = [
    "profile.release.package.waggle.debug-assertions=true",
    "profile.release.package.waggle.overflow-checks=true",
    "profile.release.package.waggle-common.debug-assertions=true",
    "profile.release.package.waggle-common.overflow-checks=true",
];

#[derive(Clone, Debug, clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only these targets (comma-separated, e.g. redis,memcached) [default: all]
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// Crate names rustc-coverage.sh instruments: the fuzz targets' binaries
/// are crates of their own.
fn fuzz_crate_names() -> String {
    let mut names = String::from(INSTRUMENTED_CRATES);
    for target in TARGETS {
        names.push(' ');
        names.push_str(target);
    }
    names
}

pub fn run(root: &Path, args: &FuzzArgs) -> Result<()> {
    if let Some(unknown) = args.only.iter().find(|t| !TARGETS.contains(&t.as_str())) {
        anyhow::bail!("unknown fuzz target {unknown:?}; the targets are {}", TARGETS.join(", "));
    }
    // The fuzz crate is a workspace of its own (libfuzzer-sys never enters
    // the agent's); with the agent's lock file its dependencies resolve to
    // the versions target/ already holds.
    let lock = root.join("fuzz/Cargo.lock");
    std::fs::copy(root.join("Cargo.lock"), &lock).with_context(|| format!("writing {}", lock.display()))?;
    let mut build = Cmd::new("cargo")
        .cwd(root)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .env("RUSTC_WRAPPER", root.join("fuzz/rustc-coverage.sh"))
        .env("WAGGLE_FUZZ_CRATES", fuzz_crate_names())
        .args(["build", "--release", "--manifest-path", "fuzz/Cargo.toml"]);
    for setting in PROFILE_OVERRIDES {
        build = build.args(["--config", setting]);
    }
    build.run()?;
    for target in TARGETS.into_iter().filter(|t| args.only.is_empty() || args.only.iter().any(|o| o == t)) {
        let corpus = root.join("target/fuzz-corpus").join(target);
        let artifacts = root.join("target/fuzz-artifacts").join(target);
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let binary = root.join("target/release").join(target);
        // New finds go to target/; the corpus kept in the repository
        // (fuzz/corpus/<target>, seeds and finds worth keeping) is read.
        let kept = root.join("fuzz/corpus").join(target);
        let mut run = Cmd::new(&binary)
            .cwd(root)
            .arg(format!("-max_total_time={}", args.seconds))
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(&corpus);
        if kept.is_dir() {
            run = run.arg(&kept);
        }
        run.run().with_context(|| format!("fuzz target {target} failed: see {}", artifacts.display()))?;
        cmd::out(&format!("fuzz target {target}: no crash in {} s", args.seconds));
    }
    Ok(())
}
