//! Global allocator tuning.
//!
//! The agent allocates and frees small objects (spans, attributes, export
//! batches) at a high rate; mimalloc's size classes cost about 15-25 % less
//! CPU than glibc malloc at the same load (bench/README.md). Its defaults
//! commit arenas eagerly and purge freed pages after a second, which raised
//! peak RSS from 49 to 75 MiB at 5k req/s; committing lazily and purging at
//! once keeps it at 48 MiB for the same CPU saving.
//!
//! mimalloc reads `arena_eager_commit` when it creates its first arena, before
//! `main` runs, so setting it from `main` is too late: the agent re-executes
//! itself once (same pid, same arguments) with the options in its
//! environment. Options the operator set are kept.
use std::{ffi::OsStr, os::unix::process::CommandExt, process::Command};

/// Environment variables mimalloc reads at start-up, and our values.
pub const OPTIONS: [(&str, &str); 2] = [("MIMALLOC_ARENA_EAGER_COMMIT", "0"), ("MIMALLOC_PURGE_DELAY", "0")];

/// Re-executes the agent with [`OPTIONS`] unless they are all set already.
/// Returns (and the agent runs with mimalloc's defaults) only if that fails.
pub fn reexec_tuned() {
    if OPTIONS.iter().all(|(name, _)| std::env::var_os(name).is_some()) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let mut cmd = Command::new(&exe);
    cmd.arg0(&arg0).args(args);
    for (name, value) in OPTIONS {
        if std::env::var_os(name).is_none() {
            cmd.env(name, OsStr::new(value));
        }
    }
    // exec only returns on failure; then run untuned rather than not at all.
    let _ = cmd.exec();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_valid_mimalloc_settings() {
        for (name, value) in OPTIONS {
            assert!(name.starts_with("MIMALLOC_"));
            assert!(value.parse::<i64>().is_ok());
        }
    }
}
