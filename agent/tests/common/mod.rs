//! Helpers shared by the live kernel tests (they load the real probes).
use std::{
    io::{BufRead, BufReader},
    process::{Child, ChildStdout, Command},
};

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
