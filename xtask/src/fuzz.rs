//! `cargo xtask fuzz`: coverage-guided fuzzing of the protocol parsers with
//! libFuzzer, on the stable toolchain (no cargo-fuzz, no nightly): the fuzz
//! crate is built with the sanitizer-coverage passes cargo-fuzz would add,
//! then each target runs for a bounded time. `cargo xtask test` runs it
//! briefly so the targets never rot; a crash fails the run and leaves the
//! input under target/fuzz-artifacts/<target>/.
use std::path::Path;

use anyhow::{Context, Result};

use crate::cmd::{self, Cmd};

/// The libFuzzer targets in fuzz/fuzz_targets/: the protocol parsers, and
/// ring-buffer records through the tracker and linker (the kernel/user ABI).
pub const TARGETS: [&str; 7] = ["http1", "postgres", "mysql", "redis", "memcached", "fastcgi", "records"];

/// What cargo-fuzz passes to rustc for libFuzzer's coverage feedback.
const COVERAGE_RUSTFLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

#[derive(Clone, Debug, clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only these targets (comma-separated, e.g. redis,memcached) [default: all]
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

fn host_triple() -> Result<String> {
    let info = Cmd::new("rustc").arg("-vV").probe().context("running `rustc -vV`")?;
    info.lines().find_map(|l| l.strip_prefix("host: ")).map(str::to_owned).context("`rustc -vV` printed no host triple")
}

pub fn run(root: &Path, args: &FuzzArgs) -> Result<()> {
    if let Some(unknown) = args.only.iter().find(|t| !TARGETS.contains(&t.as_str())) {
        anyhow::bail!("unknown fuzz target {unknown:?}; the targets are {}", TARGETS.join(", "));
    }
    let host = host_triple()?;
    // An explicit --target keeps RUSTFLAGS away from build scripts and
    // proc-macros, as cargo-fuzz does.
    Cmd::new("cargo")
        .cwd(root)
        .env("RUSTFLAGS", COVERAGE_RUSTFLAGS)
        .args(["build", "--release", "--manifest-path", "fuzz/Cargo.toml", "--target", &host])
        .run()?;
    for target in TARGETS.into_iter().filter(|t| args.only.is_empty() || args.only.iter().any(|o| o == t)) {
        let corpus = root.join("target/fuzz-corpus").join(target);
        let artifacts = root.join("target/fuzz-artifacts").join(target);
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let binary = root.join("fuzz/target").join(&host).join("release").join(target);
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
