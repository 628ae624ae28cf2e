//! Helpers shared by the live kernel tests (they load the real probes).
//!
//! Those tests are `#[ignore]`d, so plain `cargo test` reports them as
//! ignored; `cargo xtask test` runs them (`--include-ignored`), and there a
//! missing precondition (root, the eBPF object) fails the test with one line
//! saying what is missing.
use std::{
    io::{BufRead, BufReader},
    process::{Child, ChildStdout, Command},
};

use waggle::probes::{ConnMaps, EventSource, ProbeConfig, ProbeError, Probes};

/// Kills its process on drop, by pid, so a failing assertion leaves nothing
/// running.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Panics, naming what is missing, unless this process is root.
#[track_caller]
pub fn require_root(test: &str) {
    assert!(
        is_root(),
        "{test} needs root (it loads eBPF programs): run it as root, e.g. `sudo -E cargo xtask test`; \
         plain `cargo test` reports it as ignored"
    );
}

/// Checks for root, then loads the probes; a missing precondition or a
/// failed load fails the test with what to do about it.
#[track_caller]
pub fn load_probes(test: &str, config: &ProbeConfig) -> (Probes, EventSource, ConnMaps) {
    require_root(test);
    match Probes::load(config) {
        Ok(loaded) => loaded,
        Err(ProbeError::NotBuilt) => panic!(
            "{test} needs the eBPF object, and this build of the agent crate embeds none: \
             run it through `cargo xtask test` (or `cargo xtask build`, then set WAGGLE_EBPF_OBJECT to the object)"
        ),
        Err(e) => panic!("{test}: loading probes: {e}"),
    }
}

/// The real interpreter behind `python3` (a pyenv shim would re-exec, and the
/// pid we hold must be the pid the kernel reports).
pub fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is needed for this test");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn read_line(out: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line.trim().to_owned()
}
